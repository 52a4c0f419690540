//! A bounded, mergeable sample of user feature vectors, keyed by hashed user IDs only.
//!
//! It is a *bottom-k* sample: every user gets a fixed pseudo-random priority derived from its
//! hashed key, and the sample keeps the `capacity` users with the lowest priority. That makes it
//! a uniform sample of distinct users (a user offered many times is one candidate, its latest
//! features kept), deterministic, and exactly mergeable: the merge of two samples equals the
//! sample of the union of their offers, which a classic reservoir (algorithm R) is not.
//!
//! Invariants: `items.len() <= capacity <= MAX_CAPACITY`; items are sorted by strictly
//! increasing priority (so user keys are unique); every feature is finite. Decoding checks them.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::hash::mix64;
use crate::model::{FeatureVector, FEATURE_DIM};

/// Salt so the sample's priorities are independent of the HyperLogLog's register choice.
const PRIORITY_SALT: u64 = 0x9e37_79b9_7f4a_7c15;

fn priority(user: u64) -> u64 {
    mix64(user ^ PRIORITY_SALT)
}

/// One sampled user: a hashed key (never a raw identity) and its features.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct SampledUser {
    /// Keyed hash of the user identity. Fixed 8 bytes on the wire (a random u64 would take 10
    /// as a varint).
    #[serde(with = "fixed_u64")]
    pub user: u64,
    pub features: FeatureVector,
}

mod fixed_u64 {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
        v.to_le_bytes().serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        <[u8; 8]>::deserialize(d).map(u64::from_le_bytes)
    }
}

/// Bottom-k sample of users. See the module docs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "SampleWire", into = "SampleWire")]
pub struct UserSample {
    capacity: u16,
    offered: u64,
    /// Sorted by `priority(user)`, strictly increasing.
    items: Vec<SampledUser>,
}

#[derive(Serialize, Deserialize)]
struct SampleWire {
    capacity: u16,
    offered: u64,
    items: Vec<SampledUser>,
}

impl UserSample {
    /// Upper bound accepted on the wire.
    pub const MAX_CAPACITY: u16 = 1024;
    /// 8 users × 72 bytes keeps a profile entry within its 2 KiB budget.
    pub const DEFAULT_CAPACITY: u16 = 8;

    pub fn new(capacity: u16) -> Result<Self> {
        if capacity > Self::MAX_CAPACITY {
            return Err(Error::Argument(format!(
                "sample capacity {capacity} exceeds {}",
                Self::MAX_CAPACITY
            )));
        }
        Ok(Self {
            capacity,
            offered: 0,
            items: Vec::new(),
        })
    }

    pub fn capacity(&self) -> u16 {
        self.capacity
    }

    /// How many offers this sample (and everything merged into it) has seen.
    pub fn offered(&self) -> u64 {
        self.offered
    }

    /// The sampled users, in priority order.
    pub fn items(&self) -> &[SampledUser] {
        &self.items
    }

    /// Offer one user's current features. Returns whether the user is in the sample afterwards.
    /// Non-finite features are replaced by 0 so the sample always encodes.
    pub fn offer(&mut self, user: u64, features: FeatureVector) -> bool {
        self.offered = self.offered.saturating_add(1);
        let mut features = features;
        for f in features.0.iter_mut() {
            if !f.is_finite() {
                *f = 0.0;
            }
        }
        self.place(SampledUser { user, features }, true)
    }

    /// Insert or update an item, keeping the bottom-`capacity` by priority.
    fn place(&mut self, item: SampledUser, replace: bool) -> bool {
        let pr = priority(item.user);
        match self.items.binary_search_by_key(&pr, |i| priority(i.user)) {
            Ok(pos) => {
                if replace {
                    self.items[pos] = item;
                }
                true
            }
            Err(pos) => {
                if pos >= usize::from(self.capacity) {
                    return false;
                }
                self.items.insert(pos, item);
                self.items.truncate(usize::from(self.capacity));
                true
            }
        }
    }

    /// Union with `other`: the result is the bottom-k of both (k = this sample's capacity).
    /// For a user in both, this sample's features are kept.
    pub fn merge(&mut self, other: &UserSample) {
        self.offered = self.offered.saturating_add(other.offered);
        for item in &other.items {
            self.place(*item, false);
        }
    }
}

impl Default for UserSample {
    fn default() -> Self {
        Self {
            capacity: Self::DEFAULT_CAPACITY,
            offered: 0,
            items: Vec::new(),
        }
    }
}

impl From<UserSample> for SampleWire {
    fn from(s: UserSample) -> Self {
        SampleWire {
            capacity: s.capacity,
            offered: s.offered,
            items: s.items,
        }
    }
}

impl TryFrom<SampleWire> for UserSample {
    type Error = Error;

    fn try_from(w: SampleWire) -> Result<Self> {
        if w.capacity > Self::MAX_CAPACITY {
            return Err(Error::invalid(
                "user sample",
                format!("capacity {} too large", w.capacity),
            ));
        }
        if w.items.len() > usize::from(w.capacity) {
            return Err(Error::invalid("user sample", "more items than capacity"));
        }
        if (w.items.len() as u64) > w.offered {
            return Err(Error::invalid("user sample", "more items than offers"));
        }
        let mut prev: Option<u64> = None;
        for item in &w.items {
            let pr = priority(item.user);
            if prev.is_some_and(|p| p >= pr) {
                return Err(Error::invalid(
                    "user sample",
                    "items not in strictly increasing priority",
                ));
            }
            prev = Some(pr);
            if item.features.0.iter().any(|f| !f.is_finite()) {
                return Err(Error::invalid("user sample", "non-finite feature"));
            }
        }
        debug_assert_eq!(FeatureVector([0.0; FEATURE_DIM]).0.len(), FEATURE_DIM);
        Ok(UserSample {
            capacity: w.capacity,
            offered: w.offered,
            items: w.items,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fv(x: f32) -> FeatureVector {
        FeatureVector([x; FEATURE_DIM])
    }

    #[test]
    fn keeps_at_most_capacity_distinct_users() {
        let mut s = UserSample::new(8).unwrap();
        for round in 0..3 {
            for u in 0..1000u64 {
                s.offer(u, fv(round as f32));
            }
        }
        assert_eq!(s.items().len(), 8);
        assert_eq!(s.offered(), 3000);
        let users: std::collections::HashSet<u64> = s.items().iter().map(|i| i.user).collect();
        assert_eq!(users.len(), 8);
        // Latest features win for a re-offered user.
        assert!(s.items().iter().all(|i| i.features == fv(2.0)));
    }

    #[test]
    fn merge_equals_sample_of_union() {
        let mut a = UserSample::new(16).unwrap();
        let mut b = UserSample::new(16).unwrap();
        let mut all = UserSample::new(16).unwrap();
        for u in 0..500u64 {
            a.offer(u, fv(1.0));
            all.offer(u, fv(1.0));
        }
        for u in 300..900u64 {
            b.offer(u, fv(1.0));
            all.offer(u, fv(1.0));
        }
        a.merge(&b);
        assert_eq!(a.items(), all.items());
        assert_eq!(a.offered(), all.offered());
    }

    #[test]
    fn sample_is_roughly_uniform() {
        // Users 0..10_000 split in two halves: a 1024 sample should hit each half ~half the time.
        let mut s = UserSample::new(1024).unwrap();
        for u in 0..10_000u64 {
            s.offer(u, fv(0.0));
        }
        let low = s.items().iter().filter(|i| i.user < 5_000).count();
        assert!(
            (412..=612).contains(&low),
            "{low} of 1024 from the lower half"
        );
    }

    #[test]
    fn non_finite_features_are_zeroed() {
        let mut s = UserSample::default();
        let mut f = fv(1.0);
        f.0[3] = f32::NAN;
        s.offer(1, f);
        assert_eq!(s.items()[0].features.0[3], 0.0);
    }

    #[test]
    fn roundtrip_and_rejects_invalid() {
        let mut s = UserSample::default();
        for u in 0..100u64 {
            s.offer(u, fv(u as f32));
        }
        let bytes = postcard::to_stdvec(&s).unwrap();
        assert_eq!(postcard::from_bytes::<UserSample>(&bytes).unwrap(), s);

        let mut items = s.items().to_vec();
        items.reverse();
        let bad = SampleWire {
            capacity: 8,
            offered: 100,
            items,
        };
        assert!(postcard::from_bytes::<UserSample>(&postcard::to_stdvec(&bad).unwrap()).is_err());
        let bad = SampleWire {
            capacity: 1,
            offered: 100,
            items: s.items().to_vec(),
        };
        assert!(postcard::from_bytes::<UserSample>(&postcard::to_stdvec(&bad).unwrap()).is_err());
        let mut nan = s.items()[..1].to_vec();
        nan[0].features.0[0] = f32::INFINITY;
        let bad = SampleWire {
            capacity: 8,
            offered: 100,
            items: nan,
        };
        assert!(postcard::from_bytes::<UserSample>(&postcard::to_stdvec(&bad).unwrap()).is_err());
    }
}
