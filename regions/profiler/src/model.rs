//! What a build returns: the learned model, its profiles and how they got their names and ids,
//! and the assignment of a user to a profile.
//!
//! Invariants of a model returned by `build`: `mean.len() == scale.len() ==` every center's
//! length; `scale` finite and > 0; `anomaly_distance` finite and > 0; ids unique and below
//! `next_id`; names valid profile names, unique, never reserved; populations plus
//! `anomalous_users` equal `users`; profiles sorted by id.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LearnedModel {
    /// Per dimension, feature units.
    pub mean: Vec<f32>,
    /// Per dimension, finite and > 0: scaled = (raw - mean) / scale.
    pub scale: Vec<f32>,
    pub profiles: Vec<LearnedProfile>,
    /// Squared distance in scaled space beyond which a user belongs to no profile; > 0.
    pub anomaly_distance: f32,
    /// The next unused profile id (ids are never reused).
    pub next_id: u32,
    /// The criterion per k tried, ascending k.
    pub k_scores: Vec<KScore>,
    /// Samples given.
    pub users: usize,
    /// Samples the clusters were fitted on.
    pub fit_points: usize,
    /// Samples beyond `anomaly_distance` of every centroid.
    pub anomalous_users: usize,
}

/// Mean silhouette of the clustering with `k` clusters on the scoring subsample (−1 to 1).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KScore {
    pub k: usize,
    pub silhouette: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LearnedProfile {
    pub id: u32,
    /// A valid profile name, never `new`, `default` or `anomalous`.
    pub name: String,
    /// Scaled space.
    pub center: Vec<f32>,
    /// Feature units.
    pub center_raw: Vec<f32>,
    /// Samples nearest to it, anomalous ones excluded.
    pub population: usize,
    /// Why it has its name: one entry per word, with the current numbers.
    pub reasons: Vec<NameReason>,
    pub origin: Origin,
}

/// The evidence for one word of a profile's name.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NameReason {
    pub feature: String,
    /// The centroid's value, feature units.
    pub value: f32,
    pub population_mean: f32,
    /// `(value - population_mean) / population standard deviation`.
    pub z: f32,
    pub word: String,
}

/// Where a profile comes from, relative to the previous model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Origin {
    New,
    /// The same profile as `previous` (same id and name).
    Kept {
        previous: u32,
    },
    /// Split off profile `from`, which another new profile kept.
    Split {
        from: u32,
    },
    /// Several previous profiles that lost their match now gather here.
    Merged {
        from: Vec<u32>,
    },
}

/// The nearest profile of a user.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Nearest {
    /// Index into `profiles`; `None` when beyond `anomaly_distance` (anomalous), when the model
    /// has no profile, or when the features do not fit the model (wrong length, not finite).
    pub profile: Option<usize>,
    /// Squared distance in scaled space to the nearest centroid (infinite without one).
    pub distance: f32,
}

impl LearnedModel {
    /// Index into `profiles` of the nearest centroid and its squared scaled distance; `profile`
    /// is `None` when beyond `anomaly_distance` → anomalous. `features.len()` must be the
    /// model's dimension; any other length gives `None` and an infinite distance.
    pub fn nearest(&self, features: &[f32]) -> Nearest {
        let mut scaled = vec![0.0f64; self.mean.len()];
        self.nearest_with(features, &mut scaled)
    }

    /// [`LearnedModel::nearest`] with a caller's buffer of `dim` values (no allocation).
    /// Arithmetic is f64 on the model's f32 numbers, so extreme inputs cannot overflow.
    pub(crate) fn nearest_with(&self, features: &[f32], scaled: &mut [f64]) -> Nearest {
        let none = Nearest {
            profile: None,
            distance: f32::INFINITY,
        };
        if features.len() != self.mean.len()
            || self.scale.len() != self.mean.len()
            || scaled.len() != self.mean.len()
        {
            return none;
        }
        for (d, s) in scaled.iter_mut().enumerate() {
            *s = (f64::from(features[d]) - f64::from(self.mean[d])) / f64::from(self.scale[d]);
        }
        let mut best: Option<(usize, f64)> = None;
        for (i, p) in self.profiles.iter().enumerate() {
            if p.center.len() != scaled.len() {
                return none;
            }
            let d: f64 = p
                .center
                .iter()
                .zip(scaled.iter())
                .map(|(&c, &x)| (f64::from(c) - x) * (f64::from(c) - x))
                .sum();
            if best.is_none_or(|(_, b)| d < b) {
                best = Some((i, d));
            }
        }
        match best {
            Some((i, d)) if d.is_finite() => Nearest {
                profile: (d <= f64::from(self.anomaly_distance)).then_some(i),
                distance: d as f32,
            },
            _ => none,
        }
    }
}
