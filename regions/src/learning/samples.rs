//! The sample table: the latest feature vector of every user the proxies' sketches sampled, the
//! input of each profile build.
//!
//! Owns, per sampled user key (the proxies' keyed hash, never a raw identity): its latest
//! [`FeatureVector`], the node time it was last seen at (the end of the sketch interval it came
//! in) and the sketch entry (profile, origin region, fleet) it came in.
//!
//! Invariants:
//! - at most `max_users` users are held. Beyond it the least recently *updated* user of the
//!   user's shard is evicted: every update appends `(user, stamp)` to the shard's queue and the
//!   slot keeps its latest stamp, so eviction pops the queue's front until a stamp is current
//!   (stale ones are skipped and dropped). The queue is compacted when it holds more than twice
//!   the users, so an insert is O(1) amortised and never scans the table;
//! - samples of the `new` profile's entries are skipped: those users have too little history
//!   for their features to say anything;
//! - a sample older than the one held for a user (a late, resent sketch) does not replace it;
//! - locks are per shard and held only to update a slot or copy one shard out, so the sketch
//!   writer never waits behind a build: [`SampleTable::snapshot`] copies under the locks, the
//!   build runs on the copy.
//!
//! Memory per user: a hash map bucket of 97 bytes (key 8, features 64, last seen 8, stamp 8,
//! entry pointer 8, control byte 1) at 1.14 to 2.3 buckets per user (load factor 7/8, capacity
//! doubling), plus one or two queue stamps of 16 bytes (with the queue's own doubling): 130 to
//! 290 bytes, so the default bound of 200 000 users takes 26 to 58 MB.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use prescale_gossip::model::{FeatureVector, FEATURE_DIM};
use prescale_gossip::{EntryKey, Sketch};

/// The proxy's builtin profile of users with fewer than `assignment.new_user_min_requests`
/// requests (see `prescale_config::BUILTIN_PROFILES`).
pub const NEW_PROFILE: &str = "new";

/// Most shards; a table gets one shard per 1024 users of its bound, up to this many.
const MAX_SHARDS: usize = 16;
const USERS_PER_SHARD: usize = 1024;

/// Counters of the table (the forecaster's `/metrics`).
#[derive(Debug, Default)]
pub struct SampleStats {
    /// Sampled users taken from sketches (updates of a held user included).
    pub observed: AtomicU64,
    /// Sampled users skipped because their entry was the `new` profile's.
    pub skipped_new: AtomicU64,
    /// Users evicted to stay within the bound.
    pub evicted: AtomicU64,
    /// Users dropped at a build because they were not seen within the maximum age.
    pub expired: AtomicU64,
}

/// The users a build runs on, copied out of the table.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SampleSnapshot {
    /// The users' keys, sorted, so the same table gives the same build input.
    pub users: Vec<u64>,
    /// Row-major features: `users.len() * FEATURE_DIM` values, row `i` is `users[i]`'s.
    pub features: Vec<f32>,
    /// How many of the users came in each profile's entries (their latest sample's).
    pub by_profile: BTreeMap<String, usize>,
    /// Users dropped from the table by this snapshot for being too old.
    pub expired: usize,
}

/// See the module docs.
pub struct SampleTable {
    shards: Box<[Mutex<Shard>]>,
    /// Entry keys shared by the slots that came in them (one allocation per entry, not per user).
    labels: Mutex<HashSet<Arc<EntryKey>>>,
    len: AtomicUsize,
    max_users: usize,
    pub stats: SampleStats,
}

struct Shard {
    users: HashMap<u64, Slot>,
    /// Update order, oldest first; an item whose stamp is not its user's current one is stale.
    order: VecDeque<Stamp>,
    next_stamp: u64,
    capacity: usize,
}

struct Slot {
    features: FeatureVector,
    last_seen: u64,
    stamp: u64,
    entry: Arc<EntryKey>,
}

#[derive(Clone, Copy)]
struct Stamp {
    user: u64,
    stamp: u64,
}

/// What [`Shard::insert`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Inserted {
    Added {
        evicted: bool,
    },
    Updated,
    /// The held sample is newer.
    Kept,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section leaves its shard consistent between statements that can panic
    // (none allocate halfway through an update), so a poisoned lock's data is still valid.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl SampleTable {
    /// A table holding at most `max_users` users (at least 1).
    pub fn new(max_users: usize) -> Self {
        let max_users = max_users.max(1);
        let shards = (max_users / USERS_PER_SHARD).clamp(1, MAX_SHARDS);
        // Split the bound exactly: shard i gets one more while the remainder lasts.
        let shards: Vec<Mutex<Shard>> = (0..shards)
            .map(|i| {
                let capacity = max_users / shards + usize::from(i < max_users % shards);
                Mutex::new(Shard {
                    users: HashMap::new(),
                    order: VecDeque::new(),
                    next_stamp: 0,
                    capacity,
                })
            })
            .collect();
        SampleTable {
            shards: shards.into_boxed_slice(),
            labels: Mutex::new(HashSet::new()),
            len: AtomicUsize::new(0),
            max_users,
            stats: SampleStats::default(),
        }
    }

    /// Users held now.
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn max_users(&self) -> usize {
        self.max_users
    }

    fn shard(&self, user: u64) -> &Mutex<Shard> {
        // User keys are keyed hashes: their high bits are uniform already.
        let index = ((user >> 32) as usize) % self.shards.len();
        &self.shards[index]
    }

    fn label(&self, key: &EntryKey) -> Arc<EntryKey> {
        let mut labels = lock(&self.labels);
        if let Some(label) = labels.get(key) {
            return Arc::clone(label);
        }
        let label = Arc::new(key.clone());
        labels.insert(Arc::clone(&label));
        label
    }

    /// Takes the sampled users of every entry of a committed sketch, seen at the end of its
    /// interval (node time, seconds).
    pub fn observe(&self, sketch: &Sketch) {
        let seen_at = sketch.interval_end_ms / 1000;
        for entry in &sketch.entries {
            let items = entry.stats.sample.items();
            if items.is_empty() {
                continue;
            }
            if entry.key.profile == NEW_PROFILE {
                self.stats
                    .skipped_new
                    .fetch_add(items.len() as u64, Ordering::Relaxed);
                continue;
            }
            let label = self.label(&entry.key);
            for item in items {
                self.insert(item.user, item.features, seen_at, &label);
            }
        }
    }

    /// Records `user`'s features as of `seen_at` (node seconds), having come in `entry`.
    pub fn insert(&self, user: u64, features: FeatureVector, seen_at: u64, entry: &Arc<EntryKey>) {
        self.stats.observed.fetch_add(1, Ordering::Relaxed);
        let outcome = lock(self.shard(user)).insert(user, features, seen_at, entry);
        if let Inserted::Added { evicted } = outcome {
            if evicted {
                self.stats.evicted.fetch_add(1, Ordering::Relaxed);
            } else {
                self.len.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Drops the users last seen before `now - max_age` (node seconds) and copies the rest out,
    /// one shard lock at a time.
    pub fn snapshot(&self, now: u64, max_age: u64) -> SampleSnapshot {
        let oldest = now.saturating_sub(max_age);
        let mut rows: Vec<(u64, FeatureVector)> = Vec::with_capacity(self.len());
        let mut by_label: HashMap<*const EntryKey, (Arc<EntryKey>, usize)> = HashMap::new();
        let mut expired = 0usize;
        for shard in self.shards.iter() {
            let mut shard = lock(shard);
            let before = shard.users.len();
            shard.users.retain(|_, slot| slot.last_seen >= oldest);
            expired += before - shard.users.len();
            rows.reserve(shard.users.len());
            for (&user, slot) in &shard.users {
                rows.push((user, slot.features));
                by_label
                    .entry(Arc::as_ptr(&slot.entry))
                    .or_insert_with(|| (Arc::clone(&slot.entry), 0))
                    .1 += 1;
            }
        }
        if expired > 0 {
            self.len.fetch_sub(expired, Ordering::Relaxed);
            self.stats
                .expired
                .fetch_add(expired as u64, Ordering::Relaxed);
        }
        let mut by_profile = BTreeMap::new();
        for (label, count) in by_label.into_values() {
            *by_profile.entry(label.profile.clone()).or_insert(0) += count;
        }
        // Labels no slot (and no insert under way) points to: the set's reference is the last.
        lock(&self.labels).retain(|label| Arc::strong_count(label) > 1);
        rows.sort_unstable_by_key(|(user, _)| *user);
        let mut snapshot = SampleSnapshot {
            users: Vec::with_capacity(rows.len()),
            features: Vec::with_capacity(rows.len() * FEATURE_DIM),
            by_profile,
            expired,
        };
        for (user, features) in rows {
            snapshot.users.push(user);
            snapshot.features.extend_from_slice(&features.0);
        }
        snapshot
    }
}

impl Shard {
    fn insert(
        &mut self,
        user: u64,
        features: FeatureVector,
        seen_at: u64,
        entry: &Arc<EntryKey>,
    ) -> Inserted {
        let stamp = self.next_stamp;
        let outcome = match self.users.get_mut(&user) {
            Some(slot) if slot.last_seen > seen_at => return Inserted::Kept,
            Some(slot) => {
                slot.features = features;
                slot.last_seen = seen_at;
                slot.stamp = stamp;
                if !Arc::ptr_eq(&slot.entry, entry) {
                    slot.entry = Arc::clone(entry);
                }
                Inserted::Updated
            }
            None => {
                let evicted = self.users.len() >= self.capacity && self.evict_oldest();
                self.users.insert(
                    user,
                    Slot {
                        features,
                        last_seen: seen_at,
                        stamp,
                        entry: Arc::clone(entry),
                    },
                );
                Inserted::Added { evicted }
            }
        };
        self.next_stamp += 1;
        self.order.push_back(Stamp { user, stamp });
        if self.order.len() > 2 * self.users.len() + 16 {
            self.compact();
        }
        outcome
    }

    /// Removes the least recently updated user; false when there was none.
    fn evict_oldest(&mut self) -> bool {
        while let Some(Stamp { user, stamp }) = self.order.pop_front() {
            if self
                .users
                .get(&user)
                .is_some_and(|slot| slot.stamp == stamp)
            {
                self.users.remove(&user);
                return true;
            }
        }
        false
    }

    /// Drops the queue's stale stamps (paid for by the pushes that made them stale).
    fn compact(&mut self) {
        let users = &self.users;
        self.order
            .retain(|s| users.get(&s.user).is_some_and(|slot| slot.stamp == s.stamp));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prescale_gossip::EntryStats;

    fn fv(x: f32) -> FeatureVector {
        FeatureVector([x; FEATURE_DIM])
    }

    fn entry(profile: &str) -> Arc<EntryKey> {
        Arc::new(EntryKey {
            profile: profile.to_string(),
            origin_region: "eu".to_string(),
            fleet: "web".to_string(),
        })
    }

    /// A user key whose high bits spread users over the shards.
    fn key(i: u64) -> u64 {
        i.wrapping_mul(0x9e37_79b9_7f4a_7c15)
    }

    #[test]
    fn holds_at_most_the_bound_and_evicts_the_least_recently_updated() {
        let table = SampleTable::new(100);
        let e = entry("default");
        for i in 0..100 {
            table.insert(key(i), fv(i as f32), 1_000, &e);
        }
        // Refresh user 0: user 1 is now the least recently updated.
        table.insert(key(0), fv(0.5), 1_001, &e);
        table.insert(key(1000), fv(9.0), 1_002, &e);
        assert_eq!(table.len(), 100);
        assert_eq!(table.stats.evicted.load(Ordering::Relaxed), 1);
        let snap = table.snapshot(1_002, 3_600);
        assert_eq!(snap.users.len(), 100);
        assert!(snap.users.contains(&key(0)));
        assert!(
            !snap.users.contains(&key(1)),
            "user 1 should have been evicted"
        );
        assert!(snap.users.contains(&key(1000)));
        let row = snap.users.iter().position(|u| *u == key(0)).unwrap();
        assert_eq!(
            snap.features[row * FEATURE_DIM],
            0.5,
            "latest features kept"
        );
    }

    #[test]
    fn many_inserts_keep_the_bound_and_the_queue_small() {
        let table = SampleTable::new(5_000);
        assert!(table.shards.len() > 1);
        let e = entry("default");
        for round in 0..4u64 {
            for i in 0..20_000u64 {
                table.insert(key(i % 7_000), fv(round as f32), round * 10 + 1, &e);
            }
        }
        assert!(table.len() <= 5_000, "{} users held", table.len());
        let held: usize = table.shards.iter().map(|s| lock(s).users.len()).sum();
        assert_eq!(held, table.len());
        for shard in table.shards.iter() {
            let shard = lock(shard);
            assert!(shard.users.len() <= shard.capacity);
            assert!(shard.order.len() <= 2 * shard.users.len() + 17);
        }
        let total: usize = table.shards.iter().map(|s| lock(s).capacity).sum();
        assert_eq!(total, 5_000);
    }

    #[test]
    fn old_users_are_dropped_at_snapshot() {
        let table = SampleTable::new(1_000);
        let e = entry("default");
        table.insert(key(1), fv(1.0), 100, &e);
        table.insert(key(2), fv(2.0), 5_000, &e);
        let snap = table.snapshot(5_000, 3_600);
        assert_eq!(snap.users, vec![key(2)]);
        assert_eq!(snap.expired, 1);
        assert_eq!(table.len(), 1);
        assert_eq!(table.stats.expired.load(Ordering::Relaxed), 1);
        // Exactly at the age limit still counts.
        let snap = table.snapshot(5_000 + 3_600, 3_600);
        assert_eq!(snap.users, vec![key(2)]);
    }

    #[test]
    fn a_late_sample_does_not_replace_a_newer_one() {
        let table = SampleTable::new(10);
        let e = entry("default");
        table.insert(key(1), fv(2.0), 200, &e);
        table.insert(key(1), fv(1.0), 100, &e);
        let snap = table.snapshot(200, 3_600);
        assert_eq!(snap.features[0], 2.0);
    }

    #[test]
    fn observe_skips_the_new_profile_and_counts_by_profile() {
        let table = SampleTable::new(1_000);
        let mut sketch = Sketch::new("p1", "eu", 60_000, 70_000);
        for (profile, users) in [("new", 0..5u64), ("default", 10..14), ("batch", 20..22)] {
            let stats: &mut EntryStats = sketch.entry(EntryKey {
                profile: profile.to_string(),
                origin_region: "eu".to_string(),
                fleet: "web".to_string(),
            });
            for u in users {
                stats.observe_user(key(u), fv(u as f32));
            }
        }
        table.observe(&sketch);
        assert_eq!(table.len(), 6);
        assert_eq!(table.stats.skipped_new.load(Ordering::Relaxed), 5);
        let snap = table.snapshot(70, 3_600);
        assert_eq!(snap.by_profile.get("default"), Some(&4));
        assert_eq!(snap.by_profile.get("batch"), Some(&2));
        assert!(!snap.by_profile.contains_key("new"));
        assert!(snap.users.windows(2).all(|w| w[0] < w[1]), "sorted by key");
        assert_eq!(snap.features.len(), 6 * FEATURE_DIM);
        // One label per entry, shared by its users.
        assert_eq!(lock(&table.labels).len(), 2);
    }

    #[test]
    fn unused_labels_are_released_at_snapshot() {
        let table = SampleTable::new(1);
        let mut first = Sketch::new("p1", "eu", 0, 10_000);
        first
            .entry(EntryKey {
                profile: "a".into(),
                origin_region: "eu".into(),
                fleet: "web".into(),
            })
            .observe_user(key(1), fv(1.0));
        table.observe(&first);
        let mut second = Sketch::new("p1", "eu", 10_000, 20_000);
        second
            .entry(EntryKey {
                profile: "b".into(),
                origin_region: "eu".into(),
                fleet: "web".into(),
            })
            .observe_user(key(2), fv(1.0));
        table.observe(&second);
        assert_eq!(lock(&table.labels).len(), 2);
        let snap = table.snapshot(20, 3_600);
        assert_eq!(snap.by_profile.keys().collect::<Vec<_>>(), vec!["b"]);
        assert_eq!(lock(&table.labels).len(), 1);
    }
}
