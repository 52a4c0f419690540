//! A fleet's instances as tier sets: which running instance belongs to the baseline, the
//! predictive and burst tiers, the reactive guard, the warm pool (and which warm sub-pool), or is
//! draining — so an operator sees each tier as the instances it is, with their own phases.
//!
//! The rule: instances keep the order they were started in. The newest serving instances, as many
//! as the plan's warm pool, are the warm pool (dedicated sub-pools first, then the shared one);
//! the others, oldest first, fill the baseline, then the predictive tier up to its size, the
//! burst tier up to predictive + burst, the guard up to its size; serving instances beyond every
//! tier (kept through a cold start's no-shrink window, or not yet drained) are `held`. It is the
//! order scale-in takes them back in: newest first, so the warm pool and the top tiers go first
//! and the baseline stays.

use prescale_brain::brain::WarmPool;
use prescale_brain::planner::Tiers;
use prescale_gossip::{BackendPhase, PlannedBackend};
use serde::Serialize;

/// One tier's instances.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TierSet {
    /// `baseline`, `predictive`, `burst`, `guard`, `warm_pool`, `held` or `draining`.
    pub tier: &'static str,
    /// The warm sub-pool's profile (`None` for the shared pool and the other tiers).
    pub profile: Option<String>,
    pub warming: u32,
    pub ready: u32,
    pub draining: u32,
    pub instances: Vec<PlannedBackend>,
}

impl TierSet {
    fn new(tier: &'static str, profile: Option<String>, instances: Vec<PlannedBackend>) -> Self {
        let count = |phase| instances.iter().filter(|b| b.phase == phase).count() as u32;
        TierSet {
            tier,
            profile,
            warming: count(BackendPhase::Warming),
            ready: count(BackendPhase::Ready),
            draining: count(BackendPhase::Draining),
            instances,
        }
    }
}

/// `backends` (in the order they were started) as tier sets under `tiers`; empty sets are left
/// out.
pub fn tier_sets(
    tiers: &Tiers,
    warm_pools: &[WarmPool],
    backends: &[PlannedBackend],
) -> Vec<TierSet> {
    let (serving, draining): (Vec<&PlannedBackend>, Vec<&PlannedBackend>) = backends
        .iter()
        .partition(|b| b.phase != BackendPhase::Draining);
    let warm = (tiers.warm_pool as usize).min(serving.len());
    let (rest, warm_instances) = serving.split_at(serving.len() - warm);
    let mut sets = Vec::new();
    let mut next = 0;
    let mut take = |up_to: usize| {
        let end = up_to.clamp(next, rest.len());
        let part: Vec<PlannedBackend> = rest[next..end].iter().map(|b| (*b).clone()).collect();
        next = end;
        part
    };
    let baseline = tiers.baseline as usize;
    let predictive = baseline.max(tiers.predictive as usize);
    let burst = predictive.max((tiers.predictive + tiers.burst) as usize);
    let guard = burst.max(tiers.guard as usize);
    for (tier, up_to) in [
        ("baseline", baseline),
        ("predictive", predictive),
        ("burst", burst),
        ("guard", guard),
        ("held", usize::MAX),
    ] {
        sets.push(TierSet::new(tier, None, take(up_to)));
    }
    // The warm pool's instances, newest last, split as the plan splits the pool.
    let mut warm_iter = warm_instances.iter();
    let pools: Vec<(Option<String>, usize)> = if warm_pools.is_empty() {
        vec![(None, warm)]
    } else {
        warm_pools
            .iter()
            .map(|p| (p.profile.clone(), p.instances as usize))
            .collect()
    };
    let mut assigned = 0;
    for (i, (profile, n)) in pools.iter().enumerate() {
        let n = if i + 1 == pools.len() {
            warm - assigned
        } else {
            (*n).min(warm - assigned)
        };
        assigned += n;
        let part: Vec<PlannedBackend> = warm_iter.by_ref().take(n).map(|b| (*b).clone()).collect();
        sets.push(TierSet::new("warm_pool", profile.clone(), part));
    }
    sets.push(TierSet::new(
        "draining",
        None,
        draining.into_iter().cloned().collect(),
    ));
    sets.retain(|s| !s.instances.is_empty());
    sets
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend(port: u16, phase: BackendPhase) -> PlannedBackend {
        PlannedBackend {
            address: format!("127.0.0.1:{port}"),
            phase,
            since_ms: u64::from(port),
        }
    }

    fn tiers(baseline: u32, predictive: u32, burst: u32, guard: u32, warm_pool: u32) -> Tiers {
        Tiers {
            baseline,
            predictive,
            burst,
            guard,
            warm_pool,
            total: baseline.max(predictive + burst).max(guard),
        }
    }

    fn ports(set: &TierSet) -> Vec<u16> {
        set.instances
            .iter()
            .map(|b| b.address.rsplit(':').next().unwrap().parse().unwrap())
            .collect()
    }

    #[test]
    fn oldest_instances_are_the_baseline_and_the_newest_the_warm_pool() {
        let backends: Vec<PlannedBackend> = (1..=7)
            .map(|p| {
                backend(
                    p,
                    if p == 7 {
                        BackendPhase::Warming
                    } else {
                        BackendPhase::Ready
                    },
                )
            })
            .chain([backend(8, BackendPhase::Draining)])
            .collect();
        let sets = tier_sets(&tiers(2, 4, 1, 0, 2), &[], &backends);
        let by_tier: Vec<(&str, Vec<u16>)> = sets.iter().map(|s| (s.tier, ports(s))).collect();
        assert_eq!(
            by_tier,
            vec![
                ("baseline", vec![1, 2]),
                ("predictive", vec![3, 4]),
                ("burst", vec![5]),
                ("warm_pool", vec![6, 7]),
                ("draining", vec![8]),
            ]
        );
        let warm = sets.iter().find(|s| s.tier == "warm_pool").unwrap();
        assert_eq!((warm.ready, warm.warming), (1, 1));
    }

    #[test]
    fn warm_sub_pools_get_their_own_instances_and_extra_instances_are_held() {
        let backends: Vec<PlannedBackend> =
            (1..=6).map(|p| backend(p, BackendPhase::Ready)).collect();
        let pools = [
            WarmPool {
                profile: Some("premium".into()),
                instances: 1,
            },
            WarmPool {
                profile: None,
                instances: 1,
            },
        ];
        let sets = tier_sets(&tiers(1, 2, 0, 0, 2), &pools, &backends);
        let by_tier: Vec<(&str, Option<String>, Vec<u16>)> = sets
            .iter()
            .map(|s| (s.tier, s.profile.clone(), ports(s)))
            .collect();
        assert_eq!(
            by_tier,
            vec![
                ("baseline", None, vec![1]),
                ("predictive", None, vec![2]),
                ("held", None, vec![3, 4]),
                ("warm_pool", Some("premium".into()), vec![5]),
                ("warm_pool", None, vec![6]),
            ]
        );
    }

    #[test]
    fn every_instance_is_in_exactly_one_set() {
        for n in 0..12u16 {
            for warm in 0..4 {
                let backends: Vec<PlannedBackend> =
                    (1..=n).map(|p| backend(p, BackendPhase::Ready)).collect();
                let sets = tier_sets(&tiers(2, 3, 2, 6, warm), &[], &backends);
                let mut all: Vec<u16> = sets.iter().flat_map(ports).collect();
                all.sort();
                assert_eq!(all, (1..=n).collect::<Vec<_>>(), "n {n} warm {warm}");
            }
        }
    }
}
