//! Lock-free request meters per (profile, origin region, fleet): request, error and byte counters,
//! status classes, and latency in atomic log-linear buckets.
//!
//! Owns: the meter cells, the bucket scheme, snapshots and their deltas.
//!
//! Invariants:
//! - recording takes no lock and allocates nothing once a key's cell exists: a key's cell is found
//!   by lock-free probing of a fixed slot table (`OnceLock` slots); only the first sighting of a
//!   key takes the insert lock to allocate its cell; once the meters hold their key capacity
//!   (sized from the config's profiles × origin regions × fleets, [`key_capacity`]), further keys
//!   are counted in one overflow cell ([`MeterKey::OVERFLOW`]) without taking any lock, so
//!   recording never fails and never waits;
//! - every cell is striped: each thread records into its own cache-padded stripe, so two threads
//!   never contend on a cache line; snapshots sum the stripes;
//! - counters are cumulative and never reset (Prometheus counters are monotonic); interval values
//!   come from [`MeterSnapshot::delta`];
//! - latency buckets cover 1 µs to 60 s with [`SUB_BUCKETS`] linear sub-buckets per power of two:
//!   a bucket's midpoint is within 0.79 % of any value in it; values outside the range are
//!   clamped to the end buckets and counted (`clamped_low`, `clamped_high`);
//! - unique users are HyperLogLog registers per key (atomic max, no lock), taken and reset by the
//!   sketch exporter once per interval ([`Meters::take_users`]);
//! - the per-key user sample is a min-hash under a salt that changes at every take, so each
//!   interval samples a fresh uniform subset of the key's users (with one fixed hash the same
//!   few users won every interval and the rest were never sampled); the request path reads the
//!   salt with one relaxed load.

use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use hdrhistogram::Histogram;
use prescale_gossip::HyperLogLog;

use crate::geo::RegionId;
use crate::profiles::ProfileIdx;

/// A fleet as the meters see it (the index the routing table gives it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MeterFleet(pub u16);

/// What a meter is kept per.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MeterKey {
    pub profile: ProfileIdx,
    /// Origin region of the client.
    pub region: RegionId,
    pub fleet: MeterFleet,
}

impl MeterKey {
    /// Where requests of keys beyond the key capacity are counted.
    pub const OVERFLOW: MeterKey = MeterKey {
        profile: ProfileIdx(u16::MAX),
        region: RegionId(u16::MAX),
        fleet: MeterFleet(u16::MAX),
    };

    fn slot_hash(self) -> u64 {
        let packed = u64::from(self.profile.0)
            | u64::from(self.region.0) << 16
            | u64::from(self.fleet.0) << 32;
        packed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (packed >> 7)
    }
}

/// Most distinct keys metered individually.
/// Fewest keys a meter set holds (what it holds when nothing is known of the key space).
pub const MIN_METER_KEYS: usize = 1024;
/// Most keys a meter set holds, whatever the config (a key's cell is some 14 KiB per stripe,
/// allocated at its first request).
pub const MAX_METER_KEYS: usize = 16_384;

/// Keys to hold for `profiles` × `origin_regions` × `fleets` (each count including its
/// "unknown"/"none" value): the whole key space, within [`MIN_METER_KEYS`]..=[`MAX_METER_KEYS`].
pub fn key_capacity(profiles: usize, origin_regions: usize, fleets: usize) -> usize {
    profiles
        .saturating_mul(origin_regions)
        .saturating_mul(fleets)
        .clamp(MIN_METER_KEYS, MAX_METER_KEYS)
}

/// Smallest latency distinguished: 1 µs.
pub const MIN_LATENCY_NS: u64 = 1_000;
/// Largest latency distinguished: 60 s.
pub const MAX_LATENCY_NS: u64 = 60_000_000_000;
const SUB_BUCKET_BITS: u32 = 6;
/// Linear sub-buckets per power of two.
pub const SUB_BUCKETS: usize = 1 << SUB_BUCKET_BITS;
const MIN_EXPONENT: u32 = 63 - MIN_LATENCY_NS.leading_zeros();
const MAX_EXPONENT: u32 = 63 - MAX_LATENCY_NS.leading_zeros();
/// Number of latency buckets.
pub const BUCKETS: usize = (MAX_EXPONENT - MIN_EXPONENT + 1) as usize * SUB_BUCKETS;

/// The bucket of a latency in nanoseconds (already clamped to the range).
fn bucket_index(nanos: u64) -> usize {
    let exponent = 63 - nanos.leading_zeros();
    let sub = (nanos >> (exponent - SUB_BUCKET_BITS)) as usize & (SUB_BUCKETS - 1);
    (exponent - MIN_EXPONENT) as usize * SUB_BUCKETS + sub
}

/// The value (nanoseconds) a bucket stands for: its midpoint.
fn bucket_midpoint(index: usize) -> u64 {
    let exponent = MIN_EXPONENT + (index / SUB_BUCKETS) as u32;
    let sub = (index % SUB_BUCKETS) as u64;
    let shift = exponent - SUB_BUCKET_BITS;
    let lower = (SUB_BUCKETS as u64 + sub) << shift;
    lower + ((1u64 << shift) >> 1)
}

/// One finished request, as the meters record it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Observation {
    /// Status sent to the client (0 if none was sent).
    pub status: u16,
    /// No usable response came from upstream (connect/read failure, timeout): an error whatever
    /// status was then sent.
    pub upstream_failed: bool,
    pub latency: Duration,
    /// Request body bytes received.
    pub bytes_in: u64,
    /// Response body bytes sent.
    pub bytes_out: u64,
}

impl Observation {
    /// 5xx or an upstream failure.
    pub fn is_error(&self) -> bool {
        self.upstream_failed || self.status >= 500
    }
}

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    errors: AtomicU64,
    upstream_failures: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    /// 1xx, 2xx, 3xx, 4xx, 5xx.
    status_classes: [AtomicU64; 5],
    clamped_low: AtomicU64,
    clamped_high: AtomicU64,
}

#[repr(align(128))]
struct Stripe {
    counters: Counters,
    buckets: Box<[AtomicU64]>,
}

impl Stripe {
    fn new() -> Self {
        Stripe {
            counters: Counters::default(),
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn record(&self, observation: &Observation) {
        let c = &self.counters;
        c.requests.fetch_add(1, Ordering::Relaxed);
        if observation.is_error() {
            c.errors.fetch_add(1, Ordering::Relaxed);
        }
        if observation.upstream_failed {
            c.upstream_failures.fetch_add(1, Ordering::Relaxed);
        }
        if observation.bytes_in > 0 {
            c.bytes_in
                .fetch_add(observation.bytes_in, Ordering::Relaxed);
        }
        if observation.bytes_out > 0 {
            c.bytes_out
                .fetch_add(observation.bytes_out, Ordering::Relaxed);
        }
        if let 100..=599 = observation.status {
            c.status_classes[usize::from(observation.status / 100 - 1)]
                .fetch_add(1, Ordering::Relaxed);
        }
        let nanos = u64::try_from(observation.latency.as_nanos()).unwrap_or(u64::MAX);
        let clamped = if nanos < MIN_LATENCY_NS {
            c.clamped_low.fetch_add(1, Ordering::Relaxed);
            MIN_LATENCY_NS
        } else if nanos > MAX_LATENCY_NS {
            c.clamped_high.fetch_add(1, Ordering::Relaxed);
            MAX_LATENCY_NS
        } else {
            nanos
        };
        self.buckets[bucket_index(clamped)].fetch_add(1, Ordering::Relaxed);
    }
}

/// Precision of the per-key unique-user HyperLogLog registers (1024 registers, ≈3 % error).
pub const USER_HLL_PRECISION: u8 = HyperLogLog::DEFAULT_PRECISION;

/// The meter of one key: one stripe per recording thread slot, plus the unique-user registers
/// of the current export interval.
struct MeterCell {
    key: MeterKey,
    stripes: Box<[Stripe]>,
    users: Box<[AtomicU8]>,
    /// A min-hash sample of this interval's users: slot `i` keeps the user with the smallest
    /// salted hash among those hashing to `i` (0 = empty).
    sample: [AtomicU64; USER_SAMPLE_SLOTS],
}

/// Users sampled per key and interval (for the forecaster's profile learning).
pub const USER_SAMPLE_SLOTS: usize = 8;

/// The user's rank in the sample under `salt`: a full-avalanche mix (murmur3's finalizer), so a
/// new salt orders the users independently of the last one.
fn sample_hash(user: u64, salt: u64) -> u64 {
    let mut x = user ^ salt;
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

/// The salt after `salt` (SplitMix64's step: every salt differs in about half its bits).
fn next_salt(salt: u64) -> u64 {
    let mut z = salt.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A first salt that differs between processes (so proxies sharing an identity secret do not
/// sample the same users), from the standard library's per-process random hasher keys.
fn initial_salt() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(0x7361_6d70_6c65); // "sample"
    hasher.finish()
}

impl MeterCell {
    fn new(key: MeterKey, stripes: usize) -> Self {
        MeterCell {
            key,
            stripes: (0..stripes).map(|_| Stripe::new()).collect(),
            users: (0..1usize << USER_HLL_PRECISION)
                .map(|_| AtomicU8::new(0))
                .collect(),
            sample: Default::default(),
        }
    }

    fn sample_user(&self, user: u64, salt: u64) {
        if user == 0 {
            return;
        }
        let hash = sample_hash(user, salt);
        let slot = &self.sample[(hash % USER_SAMPLE_SLOTS as u64) as usize];
        let mut current = slot.load(Ordering::Relaxed);
        while current != user && (current == 0 || hash < sample_hash(current, salt)) {
            match slot.compare_exchange_weak(current, user, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => break,
                Err(actual) => current = actual,
            }
        }
    }

    fn take_sample(&self) -> Vec<u64> {
        self.sample
            .iter()
            .map(|slot| slot.swap(0, Ordering::Relaxed))
            .filter(|u| *u != 0)
            .collect()
    }

    fn record_user(&self, user: u64) {
        let (index, rank) = HyperLogLog::register_of(USER_HLL_PRECISION, user);
        let register = &self.users[index];
        // Most requests come from users already counted: read before writing.
        if register.load(Ordering::Relaxed) < rank {
            register.fetch_max(rank, Ordering::Relaxed);
        }
    }

    /// The unique-user registers since the last take, reset to zero (`None` when empty).
    fn take_users(&self) -> Option<Vec<u8>> {
        let registers: Vec<u8> = self
            .users
            .iter()
            .map(|r| r.swap(0, Ordering::Relaxed))
            .collect();
        registers.iter().any(|r| *r > 0).then_some(registers)
    }

    fn read(&self) -> MeterEntry {
        let mut counts = MeterCounts::default();
        let mut buckets = vec![0u64; BUCKETS];
        for stripe in self.stripes.iter() {
            let c = &stripe.counters;
            let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
            counts.requests += load(&c.requests);
            counts.errors += load(&c.errors);
            counts.upstream_failures += load(&c.upstream_failures);
            counts.bytes_in += load(&c.bytes_in);
            counts.bytes_out += load(&c.bytes_out);
            for (total, class) in counts.status_classes.iter_mut().zip(&c.status_classes) {
                *total += load(class);
            }
            counts.clamped_low += load(&c.clamped_low);
            counts.clamped_high += load(&c.clamped_high);
            for (total, bucket) in buckets.iter_mut().zip(stripe.buckets.iter()) {
                *total += load(bucket);
            }
        }
        MeterEntry {
            key: self.key,
            counts,
            buckets,
        }
    }
}

static NEXT_THREAD_STRIPE: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// This thread's stripe number (taken modulo the stripe count of a meter set).
    static THREAD_STRIPE: usize = NEXT_THREAD_STRIPE.fetch_add(1, Ordering::Relaxed);
}

/// All meters of a node. Share one (`Arc`); recording takes `&self`.
pub struct Meters {
    /// Twice the key capacity, so probing finds a key or an empty slot within a few steps.
    slots: Box<[OnceLock<Box<MeterCell>>]>,
    capacity: usize,
    insert: Mutex<()>,
    overflow: MeterCell,
    stripes: usize,
    keys: AtomicUsize,
    /// The user sample's salt for the current interval (changed by [`Meters::take_users`]).
    sample_salt: AtomicU64,
}

impl std::fmt::Debug for Meters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Meters")
            .field("keys", &self.keys.load(Ordering::Relaxed))
            .field("stripes", &self.stripes)
            .finish()
    }
}

impl Default for Meters {
    fn default() -> Self {
        Self::new()
    }
}

impl Meters {
    /// Meters of [`MIN_METER_KEYS`] keys with one stripe per available core (at most 16).
    pub fn new() -> Self {
        Self::with_capacity(MIN_METER_KEYS)
    }

    /// Meters holding `keys` keys (within [`MIN_METER_KEYS`]..=[`MAX_METER_KEYS`]), one stripe
    /// per available core (at most 16).
    pub fn with_capacity(keys: usize) -> Self {
        let cores = std::thread::available_parallelism().map_or(4, usize::from);
        Self::with_capacity_and_stripes(keys, cores.min(16))
    }

    /// Meters of [`MIN_METER_KEYS`] keys with `stripes` stripes per key (threads beyond that
    /// share stripes).
    pub fn with_stripes(stripes: usize) -> Self {
        Self::with_capacity_and_stripes(MIN_METER_KEYS, stripes)
    }

    pub fn with_capacity_and_stripes(keys: usize, stripes: usize) -> Self {
        let stripes = stripes.max(1);
        let capacity = keys.clamp(MIN_METER_KEYS, MAX_METER_KEYS);
        Meters {
            slots: (0..capacity * 2).map(|_| OnceLock::new()).collect(),
            capacity,
            insert: Mutex::new(()),
            overflow: MeterCell::new(MeterKey::OVERFLOW, stripes),
            stripes,
            keys: AtomicUsize::new(0),
            sample_salt: AtomicU64::new(initial_salt()),
        }
    }

    /// Records one finished request.
    pub fn record(&self, key: MeterKey, observation: &Observation) {
        let cell = self.cell(key);
        let stripe = THREAD_STRIPE.with(|s| *s) % self.stripes;
        cell.stripes[stripe].record(observation);
    }

    /// Records one finished request of `user` (also counted as a unique user of the key for
    /// the current export interval).
    pub fn record_for_user(&self, key: MeterKey, observation: &Observation, user: u64) {
        let cell = self.cell(key);
        let stripe = THREAD_STRIPE.with(|s| *s) % self.stripes;
        cell.stripes[stripe].record(observation);
        cell.record_user(user);
        cell.sample_user(user, self.sample_salt.load(Ordering::Relaxed));
    }

    /// Unique users per key since the previous call, as a HyperLogLog and a small sample of
    /// user keys; resets both, and salts the next interval's sample afresh. (One caller: the
    /// sketch exporter.)
    pub fn take_users(&self) -> Vec<IntervalUsers> {
        // The new salt first: a request recorded between the two steps lands in this interval's
        // sample or the next one's, ranked under the salt it is compared with.
        let salt = self.sample_salt.load(Ordering::Relaxed);
        self.sample_salt.store(next_salt(salt), Ordering::Relaxed);
        let mut out = Vec::new();
        let cells = self
            .slots
            .iter()
            .filter_map(|slot| slot.get())
            .map(|c| &**c);
        for cell in cells.chain(std::iter::once(&self.overflow)) {
            let sample = cell.take_sample();
            if let Some(registers) = cell.take_users() {
                // Registers only ever hold ranks from `register_of`: rebuilding cannot fail.
                if let Ok(unique) = HyperLogLog::from_registers(USER_HLL_PRECISION, &registers) {
                    out.push(IntervalUsers {
                        key: cell.key,
                        unique,
                        sample,
                    });
                }
            }
        }
        out
    }

    /// Creates the cell of `key` ahead of traffic (e.g. for every configured route at start),
    /// so the first request of the key does not take the insert lock.
    pub fn register(&self, key: MeterKey) {
        let _ = self.cell(key);
    }

    /// Distinct keys metered (the overflow cell not included).
    pub fn key_count(&self) -> usize {
        self.keys.load(Ordering::Relaxed)
    }

    /// Keys this meter set holds before counting further keys in the overflow cell.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    fn cell(&self, key: MeterKey) -> &MeterCell {
        let slots = self.slots.len();
        let start = key.slot_hash() as usize;
        for probe in 0..slots {
            match self.slots[(start + probe) % slots].get() {
                Some(cell) if cell.key == key => return cell,
                Some(_) => continue,
                // Full: an unseen key goes to the overflow cell without the insert lock.
                None if self.keys.load(Ordering::Relaxed) >= self.capacity => {
                    return &self.overflow
                }
                None => return self.insert(key),
            }
        }
        &self.overflow
    }

    /// First sighting of a key: under the insert lock, probe again and fill the first empty slot.
    #[cold]
    fn insert(&self, key: MeterKey) -> &MeterCell {
        if key == MeterKey::OVERFLOW {
            return &self.overflow;
        }
        let _guard = self
            .insert
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let slots = self.slots.len();
        let start = key.slot_hash() as usize;
        for probe in 0..slots {
            let slot = &self.slots[(start + probe) % slots];
            match slot.get() {
                Some(cell) if cell.key == key => return cell,
                Some(_) => continue,
                None => {
                    if self.keys.load(Ordering::Relaxed) >= self.capacity {
                        return &self.overflow;
                    }
                    self.keys.fetch_add(1, Ordering::Relaxed);
                    return slot.get_or_init(|| Box::new(MeterCell::new(key, self.stripes)));
                }
            }
        }
        &self.overflow
    }

    /// The cumulative counts and latency buckets of every key (and of the overflow cell when it
    /// has counted anything), sorted by key.
    pub fn snapshot(&self) -> MeterSnapshot {
        let mut entries: Vec<MeterEntry> = self
            .slots
            .iter()
            .filter_map(|slot| slot.get())
            .map(|cell| cell.read())
            .collect();
        let overflow = self.overflow.read();
        if overflow.counts.requests > 0 {
            entries.push(overflow);
        }
        entries.sort_by_key(|e| e.key);
        MeterSnapshot { entries }
    }
}

/// The users of one key over one export interval.
#[derive(Clone, Debug)]
pub struct IntervalUsers {
    pub key: MeterKey,
    pub unique: HyperLogLog,
    /// Up to [`USER_SAMPLE_SLOTS`] user keys, a uniform sample of the interval's distinct users
    /// (drawn afresh every interval).
    pub sample: Vec<u64>,
}

/// Counters of one key (cumulative in a snapshot, per interval in a delta).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MeterCounts {
    pub requests: u64,
    /// 5xx responses and upstream failures.
    pub errors: u64,
    pub upstream_failures: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// 1xx, 2xx, 3xx, 4xx, 5xx.
    pub status_classes: [u64; 5],
    /// Latencies below 1 µs (counted in the lowest bucket).
    pub clamped_low: u64,
    /// Latencies above 60 s (counted in the highest bucket).
    pub clamped_high: u64,
}

impl MeterCounts {
    fn minus(&self, earlier: &MeterCounts) -> MeterCounts {
        let mut classes = [0u64; 5];
        for (i, class) in classes.iter_mut().enumerate() {
            *class = self.status_classes[i].saturating_sub(earlier.status_classes[i]);
        }
        MeterCounts {
            requests: self.requests.saturating_sub(earlier.requests),
            errors: self.errors.saturating_sub(earlier.errors),
            upstream_failures: self
                .upstream_failures
                .saturating_sub(earlier.upstream_failures),
            bytes_in: self.bytes_in.saturating_sub(earlier.bytes_in),
            bytes_out: self.bytes_out.saturating_sub(earlier.bytes_out),
            status_classes: classes,
            clamped_low: self.clamped_low.saturating_sub(earlier.clamped_low),
            clamped_high: self.clamped_high.saturating_sub(earlier.clamped_high),
        }
    }
}

/// p50 / p95 / p99 latency.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Quantiles {
    pub p50: Duration,
    pub p95: Duration,
    pub p99: Duration,
}

/// One key's counts and latency distribution.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MeterEntry {
    pub key: MeterKey,
    pub counts: MeterCounts,
    buckets: Vec<u64>,
}

/// Significant figures of the exported HdrHistograms.
pub const HISTOGRAM_SIGFIG: u8 = 3;
/// Upper bound (µs) of the exported HdrHistograms.
pub const HISTOGRAM_MAX_MICROS: u64 = MAX_LATENCY_NS / 1_000;

impl MeterEntry {
    /// Latencies recorded.
    pub fn latency_count(&self) -> u64 {
        self.buckets.iter().sum()
    }

    /// The latency distribution as an HdrHistogram in microseconds (1 µs to 60 s, 3 significant
    /// figures), each bucket recorded at its midpoint. Built on demand (it is the larger form).
    pub fn histogram(&self) -> Histogram<u64> {
        // Constant bounds (1 µs..60 s, 3 significant figures) that hdrhistogram accepts: this
        // cannot fail at run time (a unit test constructs it).
        #[allow(clippy::expect_used)]
        let mut histogram =
            Histogram::<u64>::new_with_bounds(1, HISTOGRAM_MAX_MICROS, HISTOGRAM_SIGFIG)
                .expect("constant histogram bounds are valid");
        for (index, &count) in self.buckets.iter().enumerate() {
            if count > 0 {
                let micros =
                    ((bucket_midpoint(index) + 500) / 1_000).clamp(1, HISTOGRAM_MAX_MICROS);
                let _ = histogram.record_n(micros, count);
            }
        }
        histogram
    }

    /// The latency at quantile `q` (0..=1) from the buckets (within 0.79 %); zero when empty.
    pub fn latency_at_quantile(&self, q: f64) -> Duration {
        let total = self.latency_count();
        if total == 0 {
            return Duration::ZERO;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).clamp(1, total);
        let mut seen = 0u64;
        for (index, &count) in self.buckets.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return Duration::from_nanos(bucket_midpoint(index));
            }
        }
        Duration::from_nanos(MAX_LATENCY_NS)
    }

    /// p50 / p95 / p99 (for admin output).
    pub fn quantiles(&self) -> Quantiles {
        Quantiles {
            p50: self.latency_at_quantile(0.50),
            p95: self.latency_at_quantile(0.95),
            p99: self.latency_at_quantile(0.99),
        }
    }

    /// Latency counts per bucket, with each bucket's midpoint in nanoseconds (for Prometheus
    /// histograms with custom boundaries).
    pub fn latency_buckets(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.buckets
            .iter()
            .enumerate()
            .filter(|(_, &c)| c > 0)
            .map(|(i, &c)| (bucket_midpoint(i), c))
    }
}

/// The meters at one moment: cumulative since start, sorted by key.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MeterSnapshot {
    pub entries: Vec<MeterEntry>,
}

impl MeterSnapshot {
    pub fn get(&self, key: MeterKey) -> Option<&MeterEntry> {
        self.entries
            .binary_search_by_key(&key, |e| e.key)
            .ok()
            .map(|i| &self.entries[i])
    }

    /// What happened between `previous` (an earlier snapshot of the same meters) and this one:
    /// per key, counts and latency buckets of the interval. Keys without requests in the
    /// interval are left out.
    pub fn delta(&self, previous: &MeterSnapshot) -> MeterSnapshot {
        let entries = self
            .entries
            .iter()
            .filter_map(|now| {
                let entry = match previous.get(now.key) {
                    Some(before) => MeterEntry {
                        key: now.key,
                        counts: now.counts.minus(&before.counts),
                        buckets: now
                            .buckets
                            .iter()
                            .zip(&before.buckets)
                            .map(|(a, b)| a.saturating_sub(*b))
                            .collect(),
                    },
                    None => now.clone(),
                };
                (entry.counts.requests > 0).then_some(entry)
            })
            .collect();
        MeterSnapshot { entries }
    }
}

#[cfg(test)]
mod tests;
