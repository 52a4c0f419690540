//! The profile builder: learns behavior profiles from sampled user feature vectors, keeps their
//! ids and names stable across rebuilds, and says which profile a user belongs to.
//!
//! **Sans-IO and clock-free**, like `prescale-brain`: the dependencies are linfa (k-means),
//! ndarray, rand_xoshiro (the RNG linfa already uses), serde and thiserror — no async runtime,
//! database, filesystem, clock or network crate (not even `prescale-gossip`, which pulls quinn;
//! the wire's feature names and name rules are copied in [`naming`]). A model is a function of
//! the samples, the previous model and [`BuildParams`]: the same three give the identical model
//! (the seed drives every random choice). linfa's k-means assigns points on rayon's threads;
//! each point's result is written to its own slot, so that does not change the outcome.
//!
//! [`build`] in steps:
//! 1. **Validate**: `dim > 0`, `feature_names.len() == dim`, `features.len()` a multiple of
//!    `dim`, every value finite ([`BuildError::NonFinite`] names the index), at least
//!    `min_users` users, parameters in their ranges, a previous model consistent with `dim`.
//! 2. **Standardise**: per-dimension mean and population standard deviation in one f64 pass; a
//!    dimension with (near) zero spread gets scale 1 (`scaling`).
//! 3. **Fit**: a seeded uniform subsample of at most `max_fit_points` users, scaled into f64 —
//!    the only copy of sample data the build makes. linfa `KMeans` (k-means++ seeding, 3 runs
//!    keeping the lowest inertia, at most 50 iterations each) for each k tried. **k is
//!    the one with the highest mean silhouette** on a seeded subsample of `score_points` of the
//!    fit points (Euclidean distances in scaled space); ties go to the smaller k. `Fixed(k)`
//!    fits only k.
//! 4. **Assign**: one exact Lloyd step; a cluster with less than `1 - anomaly_quantile` of the fit
//!    points is dropped (the largest is always kept), so a small outlying group forms no profile.
//!    The **anomaly distance** is [`ANOMALY_FACTOR`] × the `anomaly_quantile`-quantile of the fit
//!    points' squared distances to their nearest kept centroid (at least
//!    [`MIN_ANOMALY_DISTANCE`]): clean clustered data flags next to nothing, a far group is
//!    flagged whole. Every sample then goes to its nearest centroid, or is anomalous beyond the
//!    distance (one pass, same arithmetic as [`LearnedModel::nearest`]).
//! 5. **Identity** against the previous model, in the new scaled space (previous centers from
//!    their `center_raw`): an optimal one-to-one assignment (Hungarian, cost = distance) where a
//!    pair counts only when the new center lies within the old profile's *region radius* — the
//!    RMS spread, around their own mean, of the fit points nearest to the old center. An
//!    unmatched center is `Split { from }` when its nearest old center was matched by another and
//!    it lies within 1.5 × that region's radius; `Merged { from }` when two or more old profiles
//!    that lost their match sent most of their region's points to it; else `New`. `Kept` keeps id
//!    and name; the others get fresh ids from `next_id` (larger profiles first), never reused.
//! 6. **Names** from the features whose centroid z-score stands out most (see [`naming`]).
//!
//! Bounds: time and memory at 1M samples are one standardisation pass and one assignment pass
//! over the caller's f32 input, plus the fit on the subsample (`max_fit_points × dim` f64, k-means
//! O(points · k · iterations) per k) and the silhouette's `score_points²/2` f32 distances. Nothing
//! is O(n²) in the number of samples.

mod build;
mod error;
mod fit;
mod hungarian;
mod identity;
mod model;
pub mod naming;
mod params;
mod sample;
mod scaling;

pub use build::{build, MIN_ANOMALY_DISTANCE};
pub use error::BuildError;
pub use model::{KScore, LearnedModel, LearnedProfile, NameReason, Nearest, Origin};
pub use params::{BuildParams, KChoice, ANOMALY_FACTOR, MAX_FIT_POINTS, MAX_K, MAX_SCORE_POINTS};

/// Row-major samples: `features.len() == users * dim`, all finite (else
/// [`BuildError::NonFinite`]).
#[derive(Clone, Copy, Debug)]
pub struct Samples<'a> {
    pub dim: usize,
    pub features: &'a [f32],
}

#[cfg(test)]
mod tests;
