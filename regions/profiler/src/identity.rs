//! Stable identity: which new centroid is which profile of the previous model.
//!
//! Everything happens in the new scaled space; previous centers come from their `center_raw`, so
//! a change of mean or scale between builds does not move them.
//!
//! - **Region of an old profile**: the new fit points whose nearest old center is it; its
//!   *radius* is their root-mean-square distance to their own mean (at least [`MIN_RADIUS`]).
//!   It measures how far the old profile's users now spread, whatever the new clustering.
//! - **Match**: an optimal one-to-one assignment (Hungarian, cost = Euclidean distance) between
//!   new and old centers; a pair is the same profile only when the new center lies within the old
//!   region's radius. Pairs beyond it are forbidden, and the assignment first maximises the
//!   number of allowed pairs, then minimises their total distance.
//! - An unmatched new center is a **Split** of old profile `i` when `i` is its nearest old center,
//!   `i` matched another new center, and it lies within [`REGION_FACTOR`] × `i`'s radius.
//! - Otherwise it is **Merged** from the old profiles that lost their match and whose users
//!   went to it — most of their region's points are nearest to it among the new centers — when
//!   there are at least two of them.
//! - Otherwise it is **New**.
//!
//! Invariant: each old profile is matched to at most one new one, and a `Split`/`Merged` never
//! keeps an old id (the caller gives it a fresh one).

use ndarray::{Array2, ArrayView2};

use crate::fit::{nearest, row_slice};
use crate::hungarian;
use crate::Origin;

/// Below this (scaled units, where the population's standard deviation is 1) distances are f32
/// rounding, not movement: a region of identical users still matches its own center.
pub(crate) const MIN_RADIUS: f64 = 1e-3;
/// How far beyond an old region's radius a split-off center may sit.
pub(crate) const REGION_FACTOR: f64 = 1.5;

/// The identity of one new centroid.
#[derive(Debug, PartialEq)]
pub(crate) struct Identity {
    pub origin: Origin,
    /// Index into the previous profiles when kept.
    pub kept: Option<usize>,
}

fn distance(a: &[f64], b: &[f64]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y) * (x - y))
        .sum::<f64>()
        .sqrt()
}

/// Each point's old region, and each region's radius.
fn regions(points: ArrayView2<'_, f64>, old: ArrayView2<'_, f64>) -> (Vec<usize>, Vec<f64>) {
    let (m, dim) = points.dim();
    let ko = old.nrows();
    let mut labels = Vec::with_capacity(m);
    let mut sums = Array2::<f64>::zeros((ko, dim));
    let mut counts = vec![0usize; ko];
    let mut buf = vec![0.0; dim];
    for row in points.rows() {
        let p = row_slice(&row, &mut buf);
        let (i, _) = nearest(old, p);
        labels.push(i);
        counts[i] += 1;
        sums.row_mut(i)
            .iter_mut()
            .zip(p)
            .for_each(|(s, &x)| *s += x);
    }
    for (i, &n) in counts.iter().enumerate() {
        if n > 0 {
            sums.row_mut(i).mapv_inplace(|s| s / n as f64);
        }
    }
    let mut sq = vec![0.0f64; ko];
    for (row, &i) in points.rows().into_iter().zip(&labels) {
        let p = row_slice(&row, &mut buf);
        sq[i] += p
            .iter()
            .zip(sums.row(i))
            .map(|(x, c)| (x - c) * (x - c))
            .sum::<f64>();
    }
    let radius = sq
        .iter()
        .zip(&counts)
        .map(|(&s, &n)| {
            let r = if n > 0 { (s / n as f64).sqrt() } else { 0.0 };
            r.max(MIN_RADIUS)
        })
        .collect();
    (labels, radius)
}

/// For each old region, the new center most of its points are nearest to (`None`: no points).
fn successors(
    points: ArrayView2<'_, f64>,
    new: ArrayView2<'_, f64>,
    region: &[usize],
    ko: usize,
) -> Vec<Option<usize>> {
    let kn = new.nrows();
    let mut counts = vec![0usize; ko * kn];
    let mut buf = vec![0.0; points.ncols()];
    for (row, &i) in points.rows().into_iter().zip(region) {
        let p = row_slice(&row, &mut buf);
        let (j, _) = nearest(new, p);
        counts[i * kn + j] += 1;
    }
    (0..ko)
        .map(|i| {
            let row = &counts[i * kn..(i + 1) * kn];
            let (j, &n) = row
                .iter()
                .enumerate()
                .max_by_key(|&(j, &n)| (n, std::cmp::Reverse(j)))?;
            (n > 0).then_some(j)
        })
        .collect()
}

/// Identities of `new` (rows) against `old` (rows, ids `old_ids`), judged on the fit `points`.
pub(crate) fn identify(
    points: ArrayView2<'_, f64>,
    new: ArrayView2<'_, f64>,
    old: ArrayView2<'_, f64>,
    old_ids: &[u32],
) -> Vec<Identity> {
    let kn = new.nrows();
    let ko = old.nrows();
    if ko == 0 {
        return (0..kn)
            .map(|_| Identity {
                origin: Origin::New,
                kept: None,
            })
            .collect();
    }
    let (region, radius) = regions(points, old);
    let new_rows: Vec<Vec<f64>> = new.rows().into_iter().map(|r| r.to_vec()).collect();
    let old_rows: Vec<Vec<f64>> = old.rows().into_iter().map(|r| r.to_vec()).collect();
    // dist[j * ko + i]: new j to old i.
    let dist: Vec<f64> = new_rows
        .iter()
        .flat_map(|a| old_rows.iter().map(move |b| distance(a, b)))
        .collect();
    let allowed = |j: usize, i: usize| dist[j * ko + i] <= radius[i];

    let n = kn.max(ko);
    let max_allowed = (0..kn)
        .flat_map(|j| (0..ko).map(move |i| (j, i)))
        .filter(|&(j, i)| allowed(j, i))
        .map(|(j, i)| dist[j * ko + i])
        .fold(0.0f64, f64::max);
    // Above any sum of allowed costs: the assignment takes as many allowed pairs as it can.
    let forbidden = (kn.min(ko) as f64 + 1.0) * (max_allowed + 1.0);
    let mut cost = vec![0.0f64; n * n];
    for j in 0..kn {
        for i in 0..ko {
            cost[j * n + i] = if allowed(j, i) {
                dist[j * ko + i]
            } else {
                forbidden
            };
        }
    }
    let assignment = hungarian::assign(&cost, n);
    let mut new_match: Vec<Option<usize>> = vec![None; kn];
    let mut old_match: Vec<Option<usize>> = vec![None; ko];
    for (j, &i) in assignment.iter().enumerate().take(kn) {
        if i < ko && allowed(j, i) {
            new_match[j] = Some(i);
            old_match[i] = Some(j);
        }
    }

    let nearest_old = |j: usize| {
        (0..ko)
            .min_by(|&a, &b| dist[j * ko + a].total_cmp(&dist[j * ko + b]))
            .unwrap_or(0)
    };
    let successor = successors(points, new, &region, ko);
    (0..kn)
        .map(|j| {
            if let Some(i) = new_match[j] {
                return Identity {
                    origin: Origin::Kept {
                        previous: old_ids[i],
                    },
                    kept: Some(i),
                };
            }
            let i = nearest_old(j);
            if old_match[i].is_some() && dist[j * ko + i] <= REGION_FACTOR * radius[i] {
                return Identity {
                    origin: Origin::Split { from: old_ids[i] },
                    kept: None,
                };
            }
            let mut from: Vec<u32> = (0..ko)
                .filter(|&i| old_match[i].is_none() && successor[i] == Some(j))
                .map(|i| old_ids[i])
                .collect();
            if from.len() >= 2 {
                from.sort_unstable();
                return Identity {
                    origin: Origin::Merged { from },
                    kept: None,
                };
            }
            Identity {
                origin: Origin::New,
                kept: None,
            }
        })
        .collect()
}
