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
//! - an entry is 64 bytes (one cache line, plus an 8-byte tag) and holds only a hashed `UserKey`
//!   and numbers;
//! - time is passed in (unix seconds), never read here;
//! - the per-profile user gauge counts each resident user once, in the profile it was last
//!   assigned; it is kept incrementally (on assignment change and eviction), never by scanning;
//! - locks are striped (one per shard, cache-line padded), held only for a few arithmetic
//!   operations, and nothing on the per-request path allocates;
//! - the model's answer for a user is offered again for the user's further requests of the same
//!   second ([`UserView::model_answer_this_second`]): a burst of requests (a page and its assets)
//!   pays for one feature vector and one nearest-centroid search, and a new model is in effect
//!   for every user within a second of its swap.
//!
//! Counters are 16-bit and halve together when the busiest reaches [`COUNTER_HALVING_AT`], which
//! keeps shares exact in ratio and weights recent behavior more.

use std::sync::{Mutex, MutexGuard};

use http::Method;

use crate::fields::HeaderLookup;
use prescale_config::ProfilingConfig;
pub use prescale_gossip::model::{FeatureVector, FEATURE_DIM, FEATURE_NAMES};

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

fn is_static_path(path: &str) -> bool {
    let last_segment = path.rsplit('/').next().unwrap_or("");
    match last_segment.rsplit_once('.') {
        Some((stem, extension)) if !stem.is_empty() && extension.len() <= 5 => STATIC_EXTENSIONS
            .iter()
            .any(|known| known.eq_ignore_ascii_case(extension)),
        _ => false,
    }
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

/// One user's state. Exactly one cache line; `requests == 0` marks an empty slot.
#[derive(Clone, Copy, Debug, Default)]
#[repr(C, align(64))]
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

/// Set in [`UserState::profile`] when the model (not a rule or the default) chose the profile.
const BY_MODEL: u16 = 1 << 8;
const _: () = assert!(MAX_PROFILES <= 256);

/// Size of one table entry in bytes (what the memory ceiling is divided by).
pub const ENTRY_BYTES: usize = std::mem::size_of::<UserState>();
const _: () = assert!(ENTRY_BYTES == 64);
/// Bytes per user the ceiling is divided by: the entry plus its tag.
pub const USER_BYTES: usize = ENTRY_BYTES + std::mem::size_of::<u64>();

impl UserState {
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

/// What [`FeatureTable::on_request`] decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestOutcome {
    pub profile: ProfileIdx,
    /// Requests seen from this user (this one included).
    pub requests: u32,
}

#[repr(align(128))]
struct Shard {
    inner: Mutex<ShardInner>,
    /// Address of `inner.entries[0]`, for [`FeatureTable::prefetch`] (the boxed slice never moves
    /// or grows, so the address stays valid for the table's life).
    entries_at: usize,
}

struct ShardInner {
    entries: Box<[UserState]>,
    /// The key of each entry, side by side per set (one cache line per set), so finding a user
    /// away from its home way touches one line of tags and then only its own entry (at its home
    /// way, the usual case, only the entry: see [`find`]). 0 = empty way.
    tags: Box<[u64]>,
    resident: u32,
    /// Resident users per profile (this shard's part of the gauge).
    profile_users: Box<[u32; MAX_PROFILES]>,
}

/// The bounded per-user table. Share one per node (`Arc`); all methods take `&self`.
pub struct FeatureTable {
    shards: Box<[Shard]>,
    sets_per_shard: usize,
    session_gap_secs: u64,
    memory_bytes: usize,
}

impl std::fmt::Debug for FeatureTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FeatureTable")
            .field("shards", &self.shards.len())
            .field("capacity", &self.capacity())
            .field("memory_bytes", &self.memory_bytes)
            .finish()
    }
}

/// Bytes of one shard besides its entries (the padded lock and the profile gauge).
const SHARD_OVERHEAD_BYTES: usize =
    std::mem::size_of::<Shard>() + std::mem::size_of::<[u32; MAX_PROFILES]>();

impl FeatureTable {
    /// A table within `profiling.user_table_mib`.
    pub fn new(config: &ProfilingConfig) -> Self {
        Self::with_memory_ceiling(
            config.user_table_mib.saturating_mul(1024 * 1024),
            config.session_gap_secs,
        )
    }

    /// A table whose entries and bookkeeping fit in `ceiling_bytes` (at least one shard of one set).
    pub fn with_memory_ceiling(ceiling_bytes: usize, session_gap_secs: u64) -> Self {
        let set_bytes = WAYS * USER_BYTES;
        // About 64 KiB of entries per shard, at most 1024 shards (power of two).
        let mut shard_count = (ceiling_bytes / (64 * 1024))
            .clamp(1, 1024)
            .next_power_of_two();
        while shard_count > 1 && shard_count * (SHARD_OVERHEAD_BYTES + set_bytes) > ceiling_bytes {
            shard_count /= 2;
        }
        let entry_budget = ceiling_bytes.saturating_sub(shard_count * SHARD_OVERHEAD_BYTES);
        let sets_per_shard = (entry_budget / set_bytes / shard_count).max(1);
        let shards: Box<[Shard]> = (0..shard_count)
            .map(|_| {
                let entries = vec![UserState::default(); sets_per_shard * WAYS].into_boxed_slice();
                Shard {
                    entries_at: entries.as_ptr() as usize,
                    inner: Mutex::new(ShardInner {
                        entries,
                        tags: vec![0u64; sets_per_shard * WAYS].into_boxed_slice(),
                        resident: 0,
                        profile_users: Box::new([0; MAX_PROFILES]),
                    }),
                }
            })
            .collect();
        let memory_bytes = shard_count * (SHARD_OVERHEAD_BYTES + sets_per_shard * set_bytes);
        FeatureTable {
            shards,
            sets_per_shard,
            session_gap_secs,
            memory_bytes,
        }
    }

    /// Most users the table holds.
    pub fn capacity(&self) -> usize {
        self.shards.len() * self.sets_per_shard * WAYS
    }

    /// Bytes the table uses (entries plus bookkeeping): fixed at construction.
    pub fn memory_bytes(&self) -> usize {
        self.memory_bytes
    }

    /// Users currently held.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|shard| lock(shard).resident as usize)
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn locate(&self, user: UserKey) -> (&Shard, usize) {
        // The key is already a keyed hash: its bits are uniform. Mix once more so that shard and
        // set use independent bits whatever the shard count.
        let mixed = user.0.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let shard = (mixed >> 40) as usize & (self.shards.len() - 1);
        let set = (user.0 % self.sets_per_shard as u64) as usize;
        (&self.shards[shard], set * WAYS)
    }

    /// Starts loading `user`'s entry (its home way) into the cache, without the lock. Call it as
    /// soon as the key is known and do other work before [`FeatureTable::on_request`]: the entry
    /// of a user not seen for a while is a memory round trip away (about 40 % of the request
    /// path's time when it is waited for).
    pub fn prefetch(&self, user: UserKey) {
        let (shard, set_start) = self.locate(user);
        let offset = (set_start + home_way(user)) * ENTRY_BYTES;
        crate::prefetch::prefetch_line(shard.entries_at.wrapping_add(offset));
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
        let (shard, set_start) = self.locate(user);
        let mut guard = lock(shard);
        let inner = &mut *guard;
        let tags = &mut inner.tags[set_start..set_start + WAYS];
        let set = &mut inner.entries[set_start..set_start + WAYS];
        let home = home_way(user);
        let slot = match find(tags, set, user) {
            Some(slot) => slot,
            None => {
                // An empty way, else the least recently seen (only new users pay for this scan).
                let victim = match tags.iter().position(|&t| t == 0) {
                    Some(empty) => {
                        inner.resident += 1;
                        empty
                    }
                    None => {
                        let oldest = set
                            .iter()
                            .enumerate()
                            .min_by_key(|(_, e)| e.last_seen)
                            .map_or(0, |(i, _)| i);
                        let old = set[oldest].profile_index();
                        inner.profile_users[old] = inner.profile_users[old].saturating_sub(1);
                        oldest
                    }
                };
                // The new user takes the victim's place in the set, but at its home way: whoever
                // is there moves to the victim's way (the same users stay resident either way).
                tags[victim] = tags[home];
                set[victim] = set[home];
                tags[home] = tag_of(user);
                set[home] = UserState {
                    key: user.0,
                    ..UserState::default()
                };
                home
            }
        };
        let state = &mut set[slot];
        let same_second = state.requests > 0 && u64::from(state.last_seen) == now;
        state.observe_request(now, traits, self.session_gap_secs);
        let assignment = assign(&UserView {
            state,
            now,
            same_second,
        });
        let new_index = usize::from(assignment.profile.0) % MAX_PROFILES;
        let old_index = state.profile_index();
        if state.requests == 1 {
            inner.profile_users[new_index] += 1;
        } else if old_index != new_index {
            inner.profile_users[old_index] = inner.profile_users[old_index].saturating_sub(1);
            inner.profile_users[new_index] += 1;
        }
        state.profile = new_index as u16 | if assignment.by_model { BY_MODEL } else { 0 };
        RequestOutcome {
            profile: ProfileIdx(new_index as u16),
            requests: state.requests,
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
        let (shard, set_start) = self.locate(user);
        let mut guard = lock(shard);
        let inner = &mut *guard;
        let set = &inner.entries[set_start..set_start + WAYS];
        if let Some(slot) = find(&inner.tags[set_start..set_start + WAYS], set, user) {
            inner.entries[set_start + slot].observe_response(
                request_bytes,
                response_bytes,
                is_error,
            );
        }
    }

    /// A user's current features (rate decayed to `now`), if the user is resident.
    pub fn features_of(&self, user: UserKey, now: u64) -> Option<FeatureVector> {
        let (shard, set_start) = self.locate(user);
        let guard = lock(shard);
        let set = &guard.entries[set_start..set_start + WAYS];
        find(&guard.tags[set_start..set_start + WAYS], set, user)
            .map(|slot| set[slot].features(now))
    }

    /// Resident users per profile, indexed by [`ProfileIdx`] (length [`MAX_PROFILES`]).
    pub fn profile_user_counts(&self) -> Vec<u64> {
        let mut totals = vec![0u64; MAX_PROFILES];
        for shard in self.shards.iter() {
            let guard = lock(shard);
            for (total, count) in totals.iter_mut().zip(guard.profile_users.iter()) {
                *total += u64::from(*count);
            }
        }
        totals
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
    // The top bits: neither the shard nor the set index depends much on them.
    (user.0 >> (64 - WAYS.trailing_zeros())) as usize
}

/// The way of `user` in a set, if resident. A user enters its set at its [`home_way`] and stays
/// there until a newer user of the same home moves it, so the home entry is checked first: it
/// carries the key itself, so on a hit the entry is the only line read (the tag line is not
/// needed, and on a cold set that saves a dependent memory round trip).
fn find(tags: &[u64], set: &[UserState], user: UserKey) -> Option<usize> {
    let home = home_way(user);
    let tag = tag_of(user);
    if tags_match(set[home].key, set[home].requests, tag) {
        return Some(home);
    }
    tags.iter().position(|&t| t == tag)
}

/// Whether an entry with `key` and `requests` is the user of `tag` (an empty entry is nobody's).
fn tags_match(key: u64, requests: u32, tag: u64) -> bool {
    requests != 0 && tag_of(UserKey(key)) == tag
}

fn lock(shard: &Shard) -> MutexGuard<'_, ShardInner> {
    // A panic while holding the lock cannot leave an entry half-written in a way that matters
    // (every field is a plain number): keep serving.
    shard
        .inner
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests;
