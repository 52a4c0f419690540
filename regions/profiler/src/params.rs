//! Build parameters, their defaults and their checks.
//!
//! Invariant: a [`CheckedParams`] has a non-empty, ascending list of k values to try, each in
//! `1..=MAX_K` and at most the number of users; every size and quantile is in its stated range.

use serde::{Deserialize, Serialize};

use crate::BuildError;

/// The most profiles a model may have (`prescale_gossip::model::ProfileModel::MAX_CENTROIDS`).
pub const MAX_K: usize = 64;
/// The silhouette keeps all pairwise distances of its points (`n²/2` f32): 5 000 points, 50 MB.
pub const MAX_SCORE_POINTS: usize = 5_000;
/// The fit subsample is held in f64 (`points × dim × 8` bytes): 1 000 000 × 16 dims, 128 MB.
pub const MAX_FIT_POINTS: usize = 1_000_000;

/// How many clusters to fit.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum KChoice {
    /// Exactly this many (1 to [`MAX_K`], at most the number of users).
    Fixed(usize),
    /// Every k in `min..=max` (2 ≤ min ≤ max ≤ [`MAX_K`]) is fitted; the one with the highest
    /// mean silhouette wins. Values above the number of users are not tried.
    Range { min: usize, max: usize },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BuildParams {
    /// Default `Range { min: 2, max: 12 }`.
    pub k: KChoice,
    /// Fewer sampled users → [`BuildError::TooFewUsers`]. Default 50.
    pub min_users: usize,
    /// k-means is fit on at most this many users (a uniform, seeded subsample); at least the
    /// largest k, at most [`MAX_FIT_POINTS`]. Default 100 000.
    pub max_fit_points: usize,
    /// The silhouette is computed on at most this many of the fit points; 2 to
    /// [`MAX_SCORE_POINTS`]. Default 2 000.
    pub score_points: usize,
    /// In `[0.5, 1]`. Two uses, one idea — the top `1 - q` of users may be anywhere:
    /// the anomaly distance is [`ANOMALY_FACTOR`] times the q-quantile of the fit points'
    /// squared distances to their nearest centroid, and a cluster holding less than `1 - q` of
    /// the fit points is not a profile (its users count as anomalous or join a near profile).
    /// Default 0.99: up to 1% of users can be outliers without moving the threshold, and a
    /// behavior shared by fewer than 1% of users does not get its own profile.
    pub anomaly_quantile: f64,
    /// All randomness (subsamples, k-means++ seeding) comes from this seed.
    pub seed: u64,
}

/// Squared-distance factor over the anomaly quantile (twice the distance): for Gaussian clusters
/// in 16 dimensions the 99th percentile of the squared distance is 32, and 4 × 32 is exceeded with a
/// probability far below 1e-9; a group flagged lies clearly outside every profile.
pub const ANOMALY_FACTOR: f64 = 4.0;

impl Default for BuildParams {
    fn default() -> Self {
        BuildParams {
            k: KChoice::Range { min: 2, max: 12 },
            min_users: 50,
            max_fit_points: 100_000,
            score_points: 2_000,
            anomaly_quantile: 0.99,
            seed: 0x7072_6573_6361_6c65,
        }
    }
}

/// Parameters that passed [`BuildParams::check`], with the k values to try for `users` users.
#[derive(Debug)]
pub(crate) struct CheckedParams {
    pub ks: Vec<usize>,
}

impl BuildParams {
    /// Checks the parameters on their own (no samples needed).
    pub fn validate(&self) -> Result<(), BuildError> {
        let bad = |s: String| Err(BuildError::BadParams(s));
        let max_k = match self.k {
            KChoice::Fixed(k) => {
                if k == 0 || k > MAX_K {
                    return bad(format!("k = Fixed({k}) must be in 1..={MAX_K}"));
                }
                k
            }
            KChoice::Range { min, max } => {
                if min < 2 {
                    return bad(format!(
                        "k range min = {min} must be at least 2 (the silhouette compares \
                         clusters; use Fixed(1) for one profile)"
                    ));
                }
                if min > max || max > MAX_K {
                    return bad(format!(
                        "k range {min}..={max} must satisfy min <= max <= {MAX_K}"
                    ));
                }
                max
            }
        };
        if self.min_users == 0 {
            return bad("min_users must be at least 1".into());
        }
        if self.max_fit_points < max_k || self.max_fit_points > MAX_FIT_POINTS {
            return bad(format!(
                "max_fit_points = {} must be in {max_k}..={MAX_FIT_POINTS} (at least the largest k)",
                self.max_fit_points
            ));
        }
        if self.score_points < 2 || self.score_points > MAX_SCORE_POINTS {
            return bad(format!(
                "score_points = {} must be in 2..={MAX_SCORE_POINTS}",
                self.score_points
            ));
        }
        if !(self.anomaly_quantile >= 0.5 && self.anomaly_quantile <= 1.0) {
            return bad(format!(
                "anomaly_quantile = {} must be in [0.5, 1]",
                self.anomaly_quantile
            ));
        }
        Ok(())
    }

    /// Checks the parameters against `users` samples (already at least `min_users`).
    pub(crate) fn check(&self, users: usize) -> Result<CheckedParams, BuildError> {
        self.validate()?;
        let ks: Vec<usize> = match self.k {
            KChoice::Fixed(k) => {
                if k > users {
                    return Err(BuildError::BadParams(format!(
                        "k = Fixed({k}) exceeds the {users} sampled users"
                    )));
                }
                vec![k]
            }
            KChoice::Range { min, max } => {
                if min > users {
                    return Err(BuildError::BadParams(format!(
                        "k range min = {min} exceeds the {users} sampled users"
                    )));
                }
                (min..=max.min(users)).collect()
            }
        };
        Ok(CheckedParams { ks })
    }
}
