//! Clustering of the fit subsample: linfa k-means for each k tried, the mean silhouette that
//! picks k, and the refinement of the chosen centroids.
//!
//! Invariants: every k-means run is seeded from the build's seed and bounded ([`RUNS`] runs of at
//! most [`MAX_ITERATIONS`] iterations); the silhouette is O(score_points²) on a bounded subsample,
//! never over all samples; the criterion is the highest mean silhouette, ties go to the smaller k.

use linfa::traits::Fit;
use linfa::DatasetBase;
use linfa_clustering::KMeans;
use ndarray::{Array2, ArrayView2};

use crate::sample;
use crate::BuildError;

/// k-means++ seedings per k; the run with the lowest inertia is kept.
pub(crate) const RUNS: usize = 3;
/// Lloyd iterations per run at most (well-separated data converges in ~10).
pub(crate) const MAX_ITERATIONS: u64 = 50;
/// Convergence: the centroids moved less than this (Euclidean, scaled units) in one iteration.
const TOLERANCE: f64 = 1e-3;

/// `k` centroids (rows, scaled space) fitted on `points`.
pub(crate) fn kmeans(
    points: ArrayView2<'_, f64>,
    k: usize,
    seed: u64,
) -> Result<Array2<f64>, BuildError> {
    let dataset = DatasetBase::from(points);
    let model = KMeans::params_with_rng(k, sample::kmeans_rng(seed, k))
        .n_runs(RUNS)
        .max_n_iterations(MAX_ITERATIONS)
        .tolerance(TOLERANCE)
        .fit(&dataset)
        .map_err(|source| BuildError::Clustering { k, source })?;
    Ok(model.centroids().clone())
}

/// Index of the nearest row of `centroids` to `point` and the squared distance (first wins ties).
pub(crate) fn nearest(centroids: ArrayView2<'_, f64>, point: &[f64]) -> (usize, f64) {
    let mut best = (0, f64::INFINITY);
    for (i, c) in centroids.rows().into_iter().enumerate() {
        let d: f64 = c.iter().zip(point).map(|(a, b)| (a - b) * (a - b)).sum();
        if d < best.1 {
            best = (i, d);
        }
    }
    best
}

/// Pairwise Euclidean distances of the scoring points, kept once for every k tried.
pub(crate) struct ScoreSet {
    points: Array2<f64>,
    /// Upper triangle, row by row: (0,1), (0,2), …, (1,2), …
    dists: Vec<f32>,
}

impl ScoreSet {
    pub fn new(points: Array2<f64>) -> ScoreSet {
        let n = points.nrows();
        let mut dists = Vec::with_capacity(n * n.saturating_sub(1) / 2);
        for i in 0..n {
            let a = points.row(i);
            for j in i + 1..n {
                let b = points.row(j);
                let d2: f64 = a.iter().zip(b.iter()).map(|(x, y)| (x - y) * (x - y)).sum();
                dists.push(d2.sqrt() as f32);
            }
        }
        ScoreSet { points, dists }
    }

    pub fn len(&self) -> usize {
        self.points.nrows()
    }

    /// Mean silhouette of the scoring points labelled by their nearest of `centroids`.
    ///
    /// Per point: `a` = mean distance to the other points of its cluster, `b` = the smallest mean
    /// distance to the points of another cluster, `s = (b - a) / max(a, b)`; a point alone in its
    /// cluster, or with no other cluster present, scores 0 (so k = 1 scores 0).
    pub fn silhouette(&self, centroids: ArrayView2<'_, f64>) -> f64 {
        let n = self.len();
        let k = centroids.nrows();
        if n < 2 {
            return 0.0;
        }
        let labels: Vec<usize> = self
            .points
            .rows()
            .into_iter()
            .map(|row| match row.as_slice() {
                Some(p) => nearest(centroids, p).0,
                None => nearest(centroids, &row.to_vec()).0,
            })
            .collect();
        let mut counts = vec![0usize; k];
        for &l in &labels {
            counts[l] += 1;
        }
        // sums[i * k + c]: total distance of point i to the points of cluster c.
        let mut sums = vec![0.0f64; n * k];
        let mut index = 0;
        for i in 0..n {
            for j in i + 1..n {
                let d = f64::from(self.dists[index]);
                index += 1;
                sums[i * k + labels[j]] += d;
                sums[j * k + labels[i]] += d;
            }
        }
        let mut total = 0.0;
        for i in 0..n {
            let own = labels[i];
            if counts[own] < 2 {
                continue;
            }
            let a = sums[i * k + own] / (counts[own] - 1) as f64;
            let b = (0..k)
                .filter(|&c| c != own && counts[c] > 0)
                .map(|c| sums[i * k + c] / counts[c] as f64)
                .fold(f64::INFINITY, f64::min);
            if !b.is_finite() {
                continue;
            }
            let denominator = a.max(b);
            if denominator > 0.0 {
                total += (b - a) / denominator;
            }
        }
        total / n as f64
    }
}

/// The clusters kept after refinement, in scaled space.
pub(crate) struct Refined {
    /// Rows: centroid = exact mean of its fit members.
    pub centroids: Array2<f64>,
    /// Fit points nearest to each centroid (before anomalies are taken out).
    pub members: Vec<usize>,
    /// Each fit point's squared distance to its nearest kept centroid.
    pub fit_distances: Vec<f64>,
}

/// One exact Lloyd step on the chosen centroids, then drops clusters holding fewer than
/// `min_share` of the fit points (the largest is always kept) and empty ones; the dropped
/// clusters' points then belong to their nearest kept centroid or are anomalous.
pub(crate) fn refine(
    points: ArrayView2<'_, f64>,
    centroids: ArrayView2<'_, f64>,
    min_share: f64,
) -> Refined {
    let (m, dim) = points.dim();
    let k = centroids.nrows();
    let mut sums = Array2::<f64>::zeros((k, dim));
    let mut counts = vec![0usize; k];
    let mut buf = vec![0.0; dim];
    for row in points.rows() {
        let p = row_slice(&row, &mut buf);
        let (c, _) = nearest(centroids, p);
        counts[c] += 1;
        let mut s = sums.row_mut(c);
        s.iter_mut().zip(p).for_each(|(a, &x)| *a += x);
    }
    let largest = (0..k)
        .max_by_key(|&c| (counts[c], std::cmp::Reverse(c)))
        .unwrap_or(0);
    let keep: Vec<usize> = (0..k)
        .filter(|&c| counts[c] > 0 && (c == largest || counts[c] as f64 >= min_share * m as f64))
        .collect();
    let mut kept = Array2::<f64>::zeros((keep.len(), dim));
    for (row, &c) in keep.iter().enumerate() {
        let n = counts[c] as f64;
        kept.row_mut(row)
            .iter_mut()
            .zip(sums.row(c))
            .for_each(|(a, &s)| *a = s / n);
    }
    let mut members = vec![0usize; keep.len()];
    let mut fit_distances = Vec::with_capacity(m);
    for row in points.rows() {
        let p = row_slice(&row, &mut buf);
        let (c, d) = nearest(kept.view(), p);
        members[c] += 1;
        fit_distances.push(d);
    }
    Refined {
        centroids: kept,
        members,
        fit_distances,
    }
}

/// A row as a slice (rows of a standard-layout array are contiguous; otherwise copied to `buf`).
pub(crate) fn row_slice<'s>(
    row: &'s ndarray::ArrayView1<'_, f64>,
    buf: &'s mut [f64],
) -> &'s [f64] {
    match row.to_slice() {
        Some(s) => s,
        None => {
            buf.iter_mut().zip(row.iter()).for_each(|(b, &x)| *b = x);
            buf
        }
    }
}

/// The `q`-quantile (nearest rank) of `values`; 0 for none.
pub(crate) fn quantile(values: &mut [f64], q: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let rank = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len()) - 1;
    let (_, v, _) = values.select_nth_unstable_by(rank, f64::total_cmp);
    *v
}
