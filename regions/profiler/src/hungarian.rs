//! Optimal one-to-one assignment (Kuhn–Munkres with potentials, O(n³)) for the identity match
//! of at most 64 × 64 centroids. No locked crate offers one, so it is kept here, small.
//!
//! Invariant: for a square `n × n` matrix of finite costs, `assign` returns a permutation whose
//! total cost is minimal; ties are broken deterministically by the scan order.

/// `cost` is row-major `n × n`, finite. Returns, for each row, its column.
pub(crate) fn assign(cost: &[f64], n: usize) -> Vec<usize> {
    debug_assert_eq!(cost.len(), n * n);
    let a = |i: usize, j: usize| cost[(i - 1) * n + (j - 1)];
    // 1-based, with column 0 as the virtual start; p[j] = row matched to column j.
    let mut u = vec![0.0f64; n + 1];
    let mut v = vec![0.0f64; n + 1];
    let mut p = vec![0usize; n + 1];
    let mut way = vec![0usize; n + 1];
    for i in 1..=n {
        p[0] = i;
        let mut j0 = 0;
        let mut minv = vec![f64::INFINITY; n + 1];
        let mut used = vec![false; n + 1];
        loop {
            used[j0] = true;
            let i0 = p[j0];
            let mut delta = f64::INFINITY;
            let mut j1 = 0;
            for j in 1..=n {
                if !used[j] {
                    let cur = a(i0, j) - u[i0] - v[j];
                    if cur < minv[j] {
                        minv[j] = cur;
                        way[j] = j0;
                    }
                    if minv[j] < delta {
                        delta = minv[j];
                        j1 = j;
                    }
                }
            }
            if j1 == 0 {
                // Unreachable with finite costs; leave the rest unassigned rather than loop.
                break;
            }
            for j in 0..=n {
                if used[j] {
                    u[p[j]] += delta;
                    v[j] -= delta;
                } else {
                    minv[j] -= delta;
                }
            }
            j0 = j1;
            if p[j0] == 0 {
                break;
            }
        }
        loop {
            let j1 = way[j0];
            p[j0] = p[j1];
            j0 = j1;
            if j0 == 0 {
                break;
            }
        }
    }
    let mut row_to_col = vec![0usize; n];
    for j in 1..=n {
        if p[j] > 0 {
            row_to_col[p[j] - 1] = j - 1;
        }
    }
    row_to_col
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn total(cost: &[f64], n: usize, perm: &[usize]) -> f64 {
        (0..n).map(|i| cost[i * n + perm[i]]).sum()
    }

    fn brute(cost: &[f64], n: usize) -> f64 {
        fn go(cost: &[f64], n: usize, row: usize, used: &mut Vec<bool>, acc: f64, best: &mut f64) {
            if row == n {
                *best = best.min(acc);
                return;
            }
            for j in 0..n {
                if !used[j] {
                    used[j] = true;
                    go(cost, n, row + 1, used, acc + cost[row * n + j], best);
                    used[j] = false;
                }
            }
        }
        let mut best = f64::INFINITY;
        go(cost, n, 0, &mut vec![false; n], 0.0, &mut best);
        best
    }

    #[test]
    fn picks_the_cheap_diagonal_over_greedy() {
        // Greedy takes (0,0)=1 and is left with (1,1)=10; optimal is 2 + 3.
        let cost = [1.0, 2.0, 3.0, 10.0];
        assert_eq!(assign(&cost, 2), vec![1, 0]);
    }

    proptest! {
        #[test]
        fn matches_brute_force(n in 1usize..=6, seed in prop::collection::vec(0u32..1000, 36)) {
            let cost: Vec<f64> = seed.iter().take(n * n).map(|&c| f64::from(c) / 7.0).collect();
            let perm = assign(&cost, n);
            let mut seen = vec![false; n];
            for &j in &perm {
                prop_assert!(j < n && !seen[j]);
                seen[j] = true;
            }
            prop_assert!((total(&cost, n, &perm) - brute(&cost, n)).abs() < 1e-9);
        }
    }
}
