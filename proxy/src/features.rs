//! The per-user feature table: compact behavior state for each recently seen user, updated on
//! every request and response, from which the [`FeatureVector`] of `prescale_gossip::model` is
//! derived.
//!
//! Owns: the bounded table (a set-associative cache: the user key picks a set of [`WAYS`] entries;
//! a new user replaces the least-recently-seen entry of its set — a sampled LRS — and is placed at
//! its home way, so that most lookups read a single cache line), each user's
//! state, the request classification (path class, device class), and the per-profile user gauge.
//!
//! Invariants:
//! - the memory ceiling is hard: all entries are allocated once at construction, their number
//!   computed from `profiling.user_table_mib` and the real entry size; [`FeatureTable::memory_bytes`]
//!   never exceeds the ceiling and the table never grows;
//! - an entry is 64 bytes (one cache line, plus an 8-byte tag and an eighth of its set's
//!   insertion lock) and holds only a hashed `UserKey` and numbers;
//! - time is passed in (unix seconds), never read here;
//! - the per-profile user gauge counts each resident user once, in the profile it was last
//!   assigned; it is kept incrementally (on assignment change and eviction), never by scanning;
//! - every entry is its own lock (a bit of its last word), held only for a few arithmetic
//!   operations — the profile assignment (a model's nearest-centroid search) runs between two
//!   holds, on a copy of the state, and its result is stored by the second: two threads serving different users never write the same line (a lock per
//!   shard of sets was written by every thread in turn, and at 2 threads that line traffic cost
//!   a quarter of the per-request time); a set's insertion lock is taken only to insert a user;
//!   the user gauge is striped per thread (cache-padded) and summed when read; nothing on the
//!   per-request path allocates;
//! - the model's answer for a user is offered again for the user's further requests of the same
//!   second ([`UserView::model_answer_this_second`]): a burst of requests (a page and its assets)
//!   pays for one feature vector and one nearest-centroid search, and a new model is in effect
//!   for every user within a second of its swap.
//!
//! Counters are 16-bit and halve together when the busiest reaches [`COUNTER_HALVING_AT`], which
//! keeps shares exact in ratio and weights recent behavior more.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

use http::Method;
use prescale_config::ProfilingConfig;
pub use prescale_gossip::model::{FeatureVector, FEATURE_DIM, FEATURE_NAMES};

use crate::fields::HeaderLookup;
use crate::identity::UserKey;
use crate::profiles::{Assignment, ProfileIdx, MAX_PROFILES};

/// Entries per set: a new user evicts the least recently seen of these.
pub const WAYS: usize = 8;
/// Time constant of the request-rate EWMA, in seconds.
pub const RATE_TAU_SECS: f32 = 600.0;
/// Weight of the newest observation in the bytes / error EWMAs.
pub const EWMA_ALPHA: f32 = 0.1;
/// Weight of the newest session gap in its EWMA.
pub const GAP_ALPHA: f32 = 0.3;
/// When the request total reaches this, every counter is halved.
pub const COUNTER_HALVING_AT: u16 = 32_768;

/// Device class from the User-Agent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceClass {
    Desktop,
    Mobile,
    /// Bots, CLIs, SDKs, HTTP libraries, and requests without a User-Agent.
    Automation,
}

/// What one request looks like, for the features (computed once per request, no allocation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestTraits {
    pub api: bool,
    pub static_asset: bool,
    pub write: bool,
    pub device: DeviceClass,
}

const STATIC_EXTENSIONS: [&str; 20] = [
    "js", "mjs", "css", "png", "jpg", "jpeg", "gif", "svg", "ico", "webp", "avif", "woff", "woff2",
    "ttf", "otf", "map", "mp4", "webm", "mp3", "wasm",
];

impl RequestTraits {
    /// Classifies a request: API (path `/api…`, `/v<digit>…`, `/graphql…`, or a JSON body), static
    /// asset (a known file extension), write (POST/PUT/PATCH/DELETE), and device class.
    pub fn classify(method: &Method, path: &str, headers: &(impl HeaderLookup + ?Sized)) -> Self {
        let api = is_api_path(path)
            || headers
                .get("content-type")
                .is_some_and(|v| v.starts_with(b"application/json"));
        let static_asset = !api && is_static_path(path);
        let write = matches!(
            *method,
            Method::POST | Method::PUT | Method::PATCH | Method::DELETE
        );
        let user_agent = headers.get("user-agent").unwrap_or(b"");
        RequestTraits {
            api,
            static_asset,
            write,
            device: device_class(user_agent),
        }
    }
}

fn is_api_path(path: &str) -> bool {
    let bytes = path.as_bytes();
    path.starts_with("/api")
        || path.starts_with("/graphql")
        || (bytes.len() >= 3 && bytes[1] == b'v' && bytes[2].is_ascii_digit() && bytes[0] == b'/')
}

/// Whether the last segment of `path` has a stem and a known static extension. Only the last six
/// bytes can hold a dot and an extension of at most five: nothing before them is read.
fn is_static_path(path: &str) -> bool {
    let bytes = path.as_bytes();
    let tail = bytes.len().saturating_sub(6);
    let Some(dot) = (tail..bytes.len())
        .rev()
        .find(|&i| matches!(bytes[i], b'.' | b'/'))
    else {
        return false;
    };
    // A slash first means no extension; the stem must not be empty.
    if bytes[dot] != b'.' || dot == 0 || bytes[dot - 1] == b'/' {
        return false;
    }
    let extension = &bytes[dot + 1..];
    STATIC_EXTENSIONS
        .iter()
        .any(|known| known.as_bytes().eq_ignore_ascii_case(extension))
}

/// Device class of a User-Agent string.
///
/// Browsers announce themselves as `Mozilla/…` (or old Opera as `Opera…`); everything else — no
/// User-Agent, HTTP libraries (`curl/`, `python-requests/`, `Go-http-client/`, …), SDKs and CLIs
/// (`name/version`) — is automation, as are browser-like strings of bots, crawlers and headless
/// browsers.
///
/// Marks of automation: `bot`, `Bot`, `spider`, `crawl`, `Headless`; of a mobile device: `Mobi`,
/// `Android`, `iPhone`, `iPad` (automation wins). One pass over the bytes: only bytes that can
/// start a mark are looked at further (nine substring searches cost a third of the per-request
/// profiling time).
pub fn device_class(user_agent: &[u8]) -> DeviceClass {
    if !user_agent.starts_with(b"Mozilla/") && !user_agent.starts_with(b"Opera") {
        return DeviceClass::Automation;
    }
    let mut mobile = false;
    for (i, byte) in user_agent.iter().enumerate() {
        if !MARK_START[usize::from(*byte)] {
            continue;
        }
        let rest = &user_agent[i..];
        match byte {
            b'b' | b'B' if rest[1..].starts_with(b"ot") => return DeviceClass::Automation,
            b's' if rest.starts_with(b"spider") => return DeviceClass::Automation,
            b'c' if rest.starts_with(b"crawl") => return DeviceClass::Automation,
            b'H' if rest.starts_with(b"Headless") => return DeviceClass::Automation,
            b'M' if rest.starts_with(b"Mobi") => mobile = true,
            b'A' if rest.starts_with(b"Android") => mobile = true,
            b'i' if rest.starts_with(b"iPhone") || rest.starts_with(b"iPad") => mobile = true,
            _ => {}
        }
    }
    if mobile {
        DeviceClass::Mobile
    } else {
        DeviceClass::Desktop
    }
}

/// The first bytes of the marks [`device_class`] looks for.
const MARK_START: [bool; 256] = {
    let mut table = [false; 256];
    let starts = *b"bBscHMAi";
    let mut i = 0;
    while i < starts.len() {
        table[starts[i] as usize] = true;
        i += 1;
    }
    table
};

/// Hour of the week (0 = Monday 00:00-01:00 UTC) and whether it is Saturday/Sunday.
fn hour_of_week(unix_secs: u64) -> (u8, bool) {
    let day = unix_secs / 86_400;
    let weekday = (day + 3) % 7; // 1970-01-01 was a Thursday; Monday = 0
    let hour = (unix_secs % 86_400) / 3_600;
    ((weekday * 24 + hour) as u8, weekday >= 5)
}

/// The rate EWMA's decay over `elapsed` seconds (exactly 1 for none: requests of the same second
/// skip the `exp`).
fn decay_over(elapsed: u32) -> f32 {
    if elapsed == 0 {
        1.0
    } else {
        (-(elapsed as f32) / RATE_TAU_SECS).exp()
    }
}

/// One user's state, as worked on (the table stores it packed in an [`Entry`]); `requests == 0`
/// marks an empty slot.
#[derive(Clone, Copy, Debug, Default)]
struct UserState {
    key: u64,
    /// Unix seconds (u32 lasts until 2106).
    last_seen: u32,
    /// Requests seen (saturating); 0 = empty slot.
    requests: u32,
    rate_per_min: f32,
    request_bytes: f32,
    response_bytes: f32,
    error_share: f32,
    session_gap_secs: f32,
    /// Requests per day-part: night, morning, afternoon, evening (UTC).
    day_parts: [u16; 4],
    weekend: u16,
    api: u16,
    static_asset: u16,
    write: u16,
    mobile: u16,
    automation: u16,
    /// Misra–Gries top-2 tracker of the busiest hour-of-week.
    top_hours: [u8; 2],
    top_counts: [u16; 2],
    /// The profile index (low 8 bits) and [`BY_MODEL`].
    profile: u16,
}

/// One user's slot: [`UserState`] packed in eight atomic words, exactly one cache line. The top
/// bit of the last word is the entry's lock: whoever sets it may read and write the other words
/// (relaxed loads and stores: plain moves) until it clears it with the updated last word. A
/// user's lock is on the user's own line, so threads serving different users share no written
/// line.
#[repr(C, align(64))]
struct Entry([AtomicU64; 8]);

const ENTRY_LOCKED: u64 = 1 << 63;

impl Entry {
    fn empty() -> Self {
        Entry(std::array::from_fn(|_| AtomicU64::new(0)))
    }

    /// The key and request count, unlocked (a hint: re-check under the lock).
    fn peek_identity(&self) -> (u64, u32) {
        (
            self.0[0].load(Ordering::Relaxed),
            (self.0[1].load(Ordering::Relaxed) >> 32) as u32,
        )
    }

    /// The last-seen second, unlocked (a hint, for choosing whom to evict).
    fn peek_last_seen(&self) -> u32 {
        self.0[1].load(Ordering::Relaxed) as u32
    }

    fn lock(&self) -> EntryGuard<'_> {
        let last = &self.0[7];
        let mut spins = 0u32;
        let mut current = last.load(Ordering::Relaxed);
        loop {
            if current & ENTRY_LOCKED == 0 {
                match last.compare_exchange_weak(
                    current,
                    current | ENTRY_LOCKED,
                    Ordering::Acquire,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => break,
                    Err(actual) => current = actual,
                }
                continue;
            }
            // Held for a few arithmetic operations; yield if its holder was preempted.
            spins += 1;
            if spins < 64 {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
            current = last.load(Ordering::Relaxed);
        }
        let mut words = [0u64; 8];
        for (word, atomic) in words.iter_mut().zip(&self.0).take(7) {
            *word = atomic.load(Ordering::Relaxed);
        }
        words[7] = current;
        EntryGuard {
            entry: self,
            state: UserState::unpack(words),
        }
    }
}

/// A locked entry and its state; the state is written back and the entry unlocked on drop.
struct EntryGuard<'a> {
    entry: &'a Entry,
    state: UserState,
}

impl Drop for EntryGuard<'_> {
    fn drop(&mut self) {
        let words = self.state.pack();
        for (atomic, word) in self.entry.0.iter().zip(words).take(7) {
            atomic.store(word, Ordering::Relaxed);
        }
        self.entry.0[7].store(words[7] & !ENTRY_LOCKED, Ordering::Release);
    }
}

/// Set in [`UserState::profile`] when the model (not a rule or the default) chose the profile.
const BY_MODEL: u16 = 1 << 8;
/// Set in [`UserState::profile`] once a profile was stored for the user, i.e. once the user is
/// counted in the per-profile gauge (a user evicted before its first assignment was stored is
/// in none).
const ASSIGNED: u16 = 1 << 9;
const _: () = assert!(MAX_PROFILES <= 256);

/// Size of one table entry in bytes.
pub const ENTRY_BYTES: usize = std::mem::size_of::<Entry>();
const _: () = assert!(ENTRY_BYTES == 64);
/// Bytes of one set: its entries, its line of tags, its insertion lock.
pub const SET_BYTES: usize =
    WAYS * ENTRY_BYTES + std::mem::size_of::<Tags>() + std::mem::size_of::<Mutex<()>>();
/// Bytes per user the ceiling is divided by (rounded up).
pub const USER_BYTES: usize = SET_BYTES.div_ceil(WAYS);

impl UserState {
    /// The state in the eight words of an [`Entry`] (the lock bit clear).
    fn pack(&self) -> [u64; 8] {
        let f = |x: f32| u64::from(x.to_bits());
        let h = |x: u16| u64::from(x);
        [
            self.key,
            u64::from(self.last_seen) | u64::from(self.requests) << 32,
            f(self.rate_per_min) | f(self.request_bytes) << 32,
            f(self.response_bytes) | f(self.error_share) << 32,
            f(self.session_gap_secs) | h(self.day_parts[0]) << 32 | h(self.day_parts[1]) << 48,
            h(self.day_parts[2])
                | h(self.day_parts[3]) << 16
                | h(self.weekend) << 32
                | h(self.api) << 48,
            h(self.static_asset)
                | h(self.write) << 16
                | h(self.mobile) << 32
                | h(self.automation) << 48,
            u64::from(self.top_hours[0])
                | u64::from(self.top_hours[1]) << 8
                | h(self.top_counts[0]) << 16
                | h(self.top_counts[1]) << 32
                | h(self.profile & 0x7fff) << 48,
        ]
    }

    fn unpack(words: [u64; 8]) -> Self {
        let f = |x: u64| f32::from_bits(x as u32);
        let h = |x: u64| x as u16;
        UserState {
            key: words[0],
            last_seen: words[1] as u32,
            requests: (words[1] >> 32) as u32,
            rate_per_min: f(words[2]),
            request_bytes: f(words[2] >> 32),
            response_bytes: f(words[3]),
            error_share: f(words[3] >> 32),
            session_gap_secs: f(words[4]),
            day_parts: [
                h(words[4] >> 32),
                h(words[4] >> 48),
                h(words[5]),
                h(words[5] >> 16),
            ],
            weekend: h(words[5] >> 32),
            api: h(words[5] >> 48),
            static_asset: h(words[6]),
            write: h(words[6] >> 16),
            mobile: h(words[6] >> 32),
            automation: h(words[6] >> 48),
            top_hours: [words[7] as u8, (words[7] >> 8) as u8],
            top_counts: [h(words[7] >> 16), h(words[7] >> 32)],
            profile: h(words[7] >> 48) & 0x7fff,
        }
    }

    fn profile_index(&self) -> usize {
        usize::from(self.profile & 0xff)
    }

    fn profile(&self) -> ProfileIdx {
        ProfileIdx(self.profile & 0xff)
    }

    fn total(&self) -> u32 {
        self.day_parts.iter().map(|&c| u32::from(c)).sum()
    }

    fn observe_request(&mut self, now: u64, traits: RequestTraits, session_gap: u64) {
        let now32 = now.min(u64::from(u32::MAX)) as u32;
        if self.requests == 0 {
            self.rate_per_min = 60.0 / RATE_TAU_SECS;
        } else {
            let elapsed = now32.saturating_sub(self.last_seen);
            let decay = decay_over(elapsed);
            self.rate_per_min = self.rate_per_min * decay + 60.0 / RATE_TAU_SECS;
            if u64::from(elapsed) > session_gap {
                let gap = elapsed as f32;
                self.session_gap_secs = if self.session_gap_secs == 0.0 {
                    gap
                } else {
                    self.session_gap_secs + GAP_ALPHA * (gap - self.session_gap_secs)
                };
            }
        }
        self.last_seen = self.last_seen.max(now32);
        self.requests = self.requests.saturating_add(1);

        if self.total() + 1 >= u32::from(COUNTER_HALVING_AT) {
            self.halve_counters();
        }
        let (hour, weekend) = hour_of_week(now);
        self.day_parts[usize::from(hour % 24 / 6)] += 1;
        self.weekend += u16::from(weekend);
        self.api += u16::from(traits.api);
        self.static_asset += u16::from(traits.static_asset);
        self.write += u16::from(traits.write);
        self.mobile += u16::from(traits.device == DeviceClass::Mobile);
        self.automation += u16::from(traits.device == DeviceClass::Automation);
        self.count_hour(hour);
    }

    /// Misra–Gries with two counters: a hit increments; a miss takes a free counter, or else
    /// decrements both (the estimate never exceeds an hour's true count, and an hour holding a
    /// third of the requests or more is always tracked).
    fn count_hour(&mut self, hour: u8) {
        for i in 0..2 {
            if self.top_counts[i] > 0 && self.top_hours[i] == hour {
                self.top_counts[i] += 1;
                return;
            }
        }
        if let Some(free) = self.top_counts.iter().position(|&c| c == 0) {
            self.top_hours[free] = hour;
            self.top_counts[free] = 1;
            return;
        }
        for count in &mut self.top_counts {
            *count -= 1;
        }
    }

    fn halve_counters(&mut self) {
        for c in self.day_parts.iter_mut().chain(self.top_counts.iter_mut()) {
            *c /= 2;
        }
        for c in [
            &mut self.weekend,
            &mut self.api,
            &mut self.static_asset,
            &mut self.write,
            &mut self.mobile,
            &mut self.automation,
        ] {
            *c /= 2;
        }
    }

    fn observe_response(&mut self, request_bytes: u64, response_bytes: u64, is_error: bool) {
        self.request_bytes += EWMA_ALPHA * (request_bytes as f32 - self.request_bytes);
        self.response_bytes += EWMA_ALPHA * (response_bytes as f32 - self.response_bytes);
        self.error_share += EWMA_ALPHA * (f32::from(u8::from(is_error)) - self.error_share);
    }

    /// The feature vector, in [`FEATURE_NAMES`] order, with the rate decayed to `now`.
    fn features(&self, now: u64) -> FeatureVector {
        let total = self.total().max(1) as f32;
        let share = |count: u16| (f32::from(count) / total).min(1.0);
        let elapsed = (now.min(u64::from(u32::MAX)) as u32).saturating_sub(self.last_seen);
        let rate = self.rate_per_min * decay_over(elapsed);
        let top = self.top_counts[0].max(self.top_counts[1]);
        FeatureVector([
            rate.max(0.0).ln_1p(),
            self.request_bytes.max(0.0).ln_1p(),
            self.response_bytes.max(0.0).ln_1p(),
            self.error_share.clamp(0.0, 1.0),
            share(self.day_parts[0]),
            share(self.day_parts[1]),
            share(self.day_parts[2]),
            share(self.day_parts[3]),
            share(self.weekend),
            share(top),
            share(self.api),
            share(self.static_asset),
            share(self.write),
            share(self.mobile),
            share(self.automation),
            self.session_gap_secs.max(0.0).ln_1p(),
        ])
    }
}

/// A user's state during assignment (inside [`FeatureTable::on_request`]).
pub struct UserView<'a> {
    state: &'a UserState,
    now: u64,
    /// The user's previous request came in the same second as this one.
    same_second: bool,
}

impl UserView<'_> {
    /// Requests seen from this user (this one included).
    pub fn requests(&self) -> u32 {
        self.state.requests
    }

    /// The user's current feature vector (computed on demand).
    pub fn features(&self) -> FeatureVector {
        self.state.features(self.now)
    }

    /// The profile assigned at the user's previous request (`None` for a new entry).
    pub fn previous_profile(&self) -> Option<ProfileIdx> {
        (self.state.requests > 1).then_some(self.state.profile())
    }

    /// The model's answer for this user at a previous request of the same second, if there was
    /// one (see [`crate::profiles::ProfileAssigner::assign_reusing`]).
    pub fn model_answer_this_second(&self) -> Option<ProfileIdx> {
        (self.same_second && self.state.profile & BY_MODEL != 0).then_some(self.state.profile())
    }
}

/// A resident user, read by [`FeatureTable::resident`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ResidentUser {
    /// Requests seen (saturating).
    pub requests: u32,
    /// Unix seconds of the last request.
    pub last_seen: u64,
    /// The profile assigned at the last request.
    pub profile: ProfileIdx,
    /// Whether the model (not a rule, the new-user threshold or the default) chose it.
    pub by_model: bool,
    /// The current feature vector (rate decayed to the time asked for).
    pub features: FeatureVector,
}

/// What [`FeatureTable::on_request`] decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestOutcome {
    pub profile: ProfileIdx,
    /// Requests seen from this user (this one included).
    pub requests: u32,
}

/// The key of each way of a set, side by side (one cache line: finding a user away from its home
/// way touches this line and then only its own entry; at its home way, the usual case, only the
/// entry: see [`FeatureTable::find`]). 0 = empty way. Written only under the set's insertion lock.
#[repr(C, align(64))]
struct Tags([AtomicU64; WAYS]);

/// Stripes of the user gauge: each thread counts into its own.
const GAUGE_STRIPES: usize = 16;

/// One thread's part of the gauge. Counters wrap: a stripe may go "below zero" (users it added
/// another thread evicted); the wrapping sum over stripes is exact.
#[repr(align(128))]
struct GaugeStripe {
    resident: AtomicU32,
    profile_users: [AtomicU32; MAX_PROFILES],
}

static NEXT_THREAD_STRIPE: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static THREAD_STRIPE: usize = NEXT_THREAD_STRIPE.fetch_add(1, Ordering::Relaxed) % GAUGE_STRIPES;
}

/// The bounded per-user table. Share one per node (`Arc`); all methods take `&self`.
pub struct FeatureTable {
    /// `WAYS` entries per set, set after set.
    entries: Box<[Entry]>,
    tags: Box<[Tags]>,
    /// Taken to insert a user into a set (and move its home way's occupant); never on the path of
    /// a resident user.
    insertion: Box<[Mutex<()>]>,
    gauge: Box<[GaugeStripe]>,
    session_gap_secs: u64,
    memory_bytes: usize,
}

impl std::fmt::Debug for FeatureTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FeatureTable")
            .field("sets", &self.tags.len())
            .field("capacity", &self.capacity())
            .field("memory_bytes", &self.memory_bytes)
            .finish()
    }
}

/// Bytes of the table besides its sets (the striped gauge).
pub const TABLE_OVERHEAD_BYTES: usize = GAUGE_STRIPES * std::mem::size_of::<GaugeStripe>();

impl FeatureTable {
    /// A table within `profiling.user_table_mib`.
    pub fn new(config: &ProfilingConfig) -> Self {
        Self::with_memory_ceiling(
            config.user_table_mib.saturating_mul(1024 * 1024),
            config.session_gap_secs,
        )
    }

    /// A table whose entries and bookkeeping fit in `ceiling_bytes` (at least one set).
    pub fn with_memory_ceiling(ceiling_bytes: usize, session_gap_secs: u64) -> Self {
        let set_count = (ceiling_bytes.saturating_sub(TABLE_OVERHEAD_BYTES) / SET_BYTES).max(1);
        let gauge = (0..GAUGE_STRIPES)
            .map(|_| GaugeStripe {
                resident: AtomicU32::new(0),
                profile_users: std::array::from_fn(|_| AtomicU32::new(0)),
            })
            .collect();
        // Reserved, advised, then written: the entries are read at random, and huge pages spare
        // most of the TLB misses that would cost.
        let mut entries = Vec::with_capacity(set_count * WAYS);
        crate::hints::advise_huge_pages(entries.as_ptr() as usize, set_count * WAYS * ENTRY_BYTES);
        entries.extend((0..set_count * WAYS).map(|_| Entry::empty()));
        FeatureTable {
            entries: entries.into_boxed_slice(),
            tags: (0..set_count)
                .map(|_| Tags(std::array::from_fn(|_| AtomicU64::new(0))))
                .collect(),
            insertion: (0..set_count).map(|_| Mutex::new(())).collect(),
            gauge,
            session_gap_secs,
            memory_bytes: TABLE_OVERHEAD_BYTES + set_count * SET_BYTES,
        }
    }

    /// Most users the table holds.
    pub fn capacity(&self) -> usize {
        self.entries.len()
    }

    /// Bytes the table uses (entries plus bookkeeping): fixed at construction.
    pub fn memory_bytes(&self) -> usize {
        self.memory_bytes
    }

    /// Users currently held.
    pub fn len(&self) -> usize {
        self.gauge.iter().fold(0u32, |sum, stripe| {
            sum.wrapping_add(stripe.resident.load(Ordering::Relaxed))
        }) as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn set_index(&self, user: UserKey) -> usize {
        // The key is already a keyed hash: its bits are uniform (the home way uses the top ones).
        (user.0 % self.tags.len() as u64) as usize
    }

    fn set(&self, set: usize) -> &[Entry] {
        &self.entries[set * WAYS..(set + 1) * WAYS]
    }

    /// This thread's stripe of the user gauge.
    fn gauge(&self) -> &GaugeStripe {
        &self.gauge[THREAD_STRIPE.with(|s| *s)]
    }

    /// Starts loading `user`'s entry (its home way) into the cache, reading no memory. Call it as
    /// soon as the key is known and do other work before [`FeatureTable::on_request`]: the entry
    /// of a user not seen for a while is a memory round trip away (about 40 % of the request
    /// path's time when it is waited for).
    pub fn prefetch(&self, user: UserKey) {
        let index = self.set_index(user) * WAYS + home_way(user);
        crate::hints::prefetch_line(address_of(&self.entries[0]) + index * ENTRY_BYTES);
    }

    /// The way of `user` in `set`, if resident (unlocked: a hint, re-checked under the entry's
    /// lock). A user enters its set at its [`home_way`] and stays there until a newer user of the
    /// same home moves it, so the home entry is checked first: it carries the key itself, so on
    /// a hit the entry is the only line read (on a cold set that saves a dependent memory round
    /// trip for the tags).
    fn find(&self, set: usize, user: UserKey) -> Option<usize> {
        let home = home_way(user);
        let tag = tag_of(user);
        let (key, requests) = self.set(set)[home].peek_identity();
        if tags_match(key, requests, tag) {
            return Some(home);
        }
        self.tags[set]
            .0
            .iter()
            .position(|t| t.load(Ordering::Relaxed) == tag)
    }

    /// `user`'s entry, locked, if resident.
    fn locked(&self, set: usize, user: UserKey) -> Option<EntryGuard<'_>> {
        // A way found unlocked may have been given to another user before the lock is taken: look
        // again (an insertion in progress holds the set's insertion lock, so this ends).
        for _ in 0..4 {
            if let Some(guard) = self.lock_found(set, user)? {
                return Some(guard);
            }
        }
        let _insertions = lock(&self.insertion[set]);
        self.lock_found(set, user).flatten()
    }

    /// Finds `user` in `set` and locks that entry: `None` when not found, `Some(None)` when the
    /// entry turned out to hold someone else by the time it was locked.
    fn lock_found(&self, set: usize, user: UserKey) -> Option<Option<EntryGuard<'_>>> {
        let way = self.find(set, user)?;
        let guard = self.set(set)[way].lock();
        Some(tags_match(guard.state.key, guard.state.requests, tag_of(user)).then_some(guard))
    }

    /// Inserts `user` into `set` at its home way (the set's least recently seen user, or an empty
    /// way, makes room; the home way's occupant moves there) and returns its new entry, locked;
    /// or the user's entry if another thread inserted it first.
    fn insert(&self, set: usize, user: UserKey) -> EntryGuard<'_> {
        let _insertions = lock(&self.insertion[set]);
        if let Some(guard) = self.lock_found(set, user).flatten() {
            return guard;
        }
        let entries = self.set(set);
        let tags = &self.tags[set].0;
        let home = home_way(user);
        let gauge = self.gauge();
        // An empty way, else the least recently seen (only new users pay for this scan).
        let victim = match tags.iter().position(|t| t.load(Ordering::Relaxed) == 0) {
            Some(empty) => empty,
            None => entries
                .iter()
                .enumerate()
                .min_by_key(|(_, e)| e.peek_last_seen())
                .map_or(0, |(i, _)| i),
        };
        let mut home_guard = entries[home].lock();
        let replaced = if victim == home {
            home_guard.state
        } else {
            // The new user takes the victim's place in the set, but at its home way: whoever is
            // there moves to the victim's way (the same users stay resident either way).
            let mut victim_guard = entries[victim].lock();
            let replaced = victim_guard.state;
            victim_guard.state = home_guard.state;
            tags[victim].store(tags[home].load(Ordering::Relaxed), Ordering::Relaxed);
            replaced
        };
        if replaced.requests == 0 {
            gauge.resident.fetch_add(1, Ordering::Relaxed);
        } else if replaced.profile & ASSIGNED != 0 {
            gauge.profile_users[replaced.profile_index()].fetch_sub(1, Ordering::Relaxed);
        }
        home_guard.state = UserState {
            key: user.0,
            ..UserState::default()
        };
        tags[home].store(tag_of(user), Ordering::Relaxed);
        home_guard
    }

    /// A request from `user` arrived at `now` (unix seconds): updates its state (creating it,
    /// evicting the least recently seen user of its set if needed), then lets `assign` pick the
    /// profile from the user's view and records it for the gauge.
    pub fn on_request(
        &self,
        user: UserKey,
        now: u64,
        traits: RequestTraits,
        assign: impl FnOnce(&UserView<'_>) -> Assignment,
    ) -> RequestOutcome {
        let set = self.set_index(user);
        let guard = match self.locked(set, user) {
            Some(guard) => guard,
            None => self.insert(set, user),
        };
        self.record(set, user, guard, now, traits, assign)
    }

    /// As [`FeatureTable::on_request`], but a user not resident is inserted only when
    /// `admit_new` agrees (the per-client new-user limit); `None` when it does not (nothing was
    /// recorded).
    pub fn on_request_if_admitted(
        &self,
        user: UserKey,
        now: u64,
        traits: RequestTraits,
        admit_new: impl FnOnce() -> bool,
        assign: impl FnOnce(&UserView<'_>) -> Assignment,
    ) -> Option<RequestOutcome> {
        let set = self.set_index(user);
        let guard = match self.locked(set, user) {
            Some(guard) => guard,
            None if admit_new() => self.insert(set, user),
            None => return None,
        };
        Some(self.record(set, user, guard, now, traits, assign))
    }

    /// Updates the user's state under its entry's lock, then assigns with the lock released
    /// (the nearest-centroid search of a learned model must not hold a user's line while other
    /// requests of the user wait), then locks again to store the profile, if the user is still
    /// resident.
    fn record(
        &self,
        set: usize,
        user: UserKey,
        mut guard: EntryGuard<'_>,
        now: u64,
        traits: RequestTraits,
        assign: impl FnOnce(&UserView<'_>) -> Assignment,
    ) -> RequestOutcome {
        let state = &mut guard.state;
        let same_second = state.requests > 0 && u64::from(state.last_seen) == now;
        state.observe_request(now, traits, self.session_gap_secs);
        let seen = *state;
        drop(guard);
        let assignment = assign(&UserView {
            state: &seen,
            now,
            same_second,
        });
        let new_index = usize::from(assignment.profile.0) % MAX_PROFILES;
        if let Some(mut guard) = self.locked(set, user) {
            let gauge = self.gauge();
            let state = &mut guard.state;
            let old_index = state.profile_index();
            if state.profile & ASSIGNED == 0 {
                gauge.profile_users[new_index].fetch_add(1, Ordering::Relaxed);
            } else if old_index != new_index {
                gauge.profile_users[old_index].fetch_sub(1, Ordering::Relaxed);
                gauge.profile_users[new_index].fetch_add(1, Ordering::Relaxed);
            }
            state.profile =
                new_index as u16 | ASSIGNED | if assignment.by_model { BY_MODEL } else { 0 };
        }
        RequestOutcome {
            profile: ProfileIdx(new_index as u16),
            requests: seen.requests,
        }
    }

    /// The response to a request of `user` is done: request and response body bytes, and whether
    /// it failed (status >= 500 or no response from upstream). A user evicted meanwhile is ignored.
    pub fn on_response(
        &self,
        user: UserKey,
        request_bytes: u64,
        response_bytes: u64,
        is_error: bool,
    ) {
        if let Some(mut guard) = self.locked(self.set_index(user), user) {
            guard
                .state
                .observe_response(request_bytes, response_bytes, is_error);
        }
    }

    /// A user's current features (rate decayed to `now`), if the user is resident.
    pub fn features_of(&self, user: UserKey, now: u64) -> Option<FeatureVector> {
        self.locked(self.set_index(user), user)
            .map(|guard| guard.state.features(now))
    }

    /// A resident user's state as the admin user lookup shows it (read-only; not for the
    /// request path).
    pub fn resident(&self, user: UserKey, now: u64) -> Option<ResidentUser> {
        self.locked(self.set_index(user), user)
            .map(|guard| ResidentUser {
                requests: guard.state.requests,
                last_seen: u64::from(guard.state.last_seen),
                profile: guard.state.profile(),
                by_model: guard.state.profile & BY_MODEL != 0,
                features: guard.state.features(now),
            })
    }

    /// Resident users per profile, indexed by [`ProfileIdx`] (length [`MAX_PROFILES`]).
    pub fn profile_user_counts(&self) -> Vec<u64> {
        (0..MAX_PROFILES)
            .map(|profile| {
                let sum = self.gauge.iter().fold(0u32, |sum, stripe| {
                    sum.wrapping_add(stripe.profile_users[profile].load(Ordering::Relaxed))
                });
                u64::from(sum)
            })
            .collect()
    }
}

/// A user's tag: its key with the top bit set, so it is never 0 (the empty mark). Keys are
/// keyed hashes; two that differ only in the top bit sharing a tag is a 2^-63 event per pair.
fn tag_of(user: UserKey) -> u64 {
    user.0 | 1 << 63
}

/// The way a user is put in when it enters its set (see [`find`]).
fn home_way(user: UserKey) -> usize {
    const _: () = assert!(WAYS.is_power_of_two());
    // The top bits: the set index hardly depends on them.
    (user.0 >> (64 - WAYS.trailing_zeros())) as usize
}

/// Whether an entry with `key` and `requests` is the user of `tag` (an empty entry is nobody's).
fn tags_match(key: u64, requests: u32, tag: u64) -> bool {
    requests != 0 && tag_of(UserKey(key)) == tag
}

fn lock(insertion: &Mutex<()>) -> MutexGuard<'_, ()> {
    // The lock guards no data of its own: a panic while holding it leaves nothing to repair.
    insertion
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The address of `value` (for prefetch arithmetic; never dereferenced).
fn address_of<T>(value: &T) -> usize {
    value as *const T as usize
}

#[cfg(test)]
mod tests;
