//! Mapping learned profiles onto personas: pure functions of the personas and the profiles'
//! centroids (feature units, [`FEATURE_NAMES`] order).
//!
//! [`FEATURE_NAMES`]: prescale_gossip::model::FEATURE_NAMES
//!
//! For each profile, in order:
//! 1. **Rule**: the personas whose `match_profiles` has a pattern matching the profile's name
//!    (`*` matches any run of characters, everything else itself); several → the first by
//!    persona name, the others listed in [`BindingReason::Rule::also_matched`].
//! 2. **Nearest pattern**, when no rule matches: the persona (any persona, with or without
//!    rules) whose expected traffic pattern is nearest the centroid by [`pattern_distance`];
//!    equal distances → the first by name.
//!
//! Invariants: with at least one persona, every profile whose `center_raw` is [`FEATURE_DIM`]
//! finite numbers gets exactly one binding; a profile with a malformed centroid can be bound by
//! a rule only (it is left out otherwise). No personas → no bindings. The result does not
//! depend on the order the personas are given in.

use prescale_gossip::model::{ProfileSettings, FEATURE_DIM};
use serde::Serialize;

use super::input::{Access, Persona};

/// A learned profile as the mapping needs it.
#[derive(Clone, Copy, Debug)]
pub struct ProfileCentroid<'a> {
    pub name: &'a str,
    /// The centroid in feature units, [`FEATURE_NAMES`](prescale_gossip::model::FEATURE_NAMES)
    /// order.
    pub center_raw: &'a [f32],
}

/// Why a profile was bound to its persona.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum BindingReason {
    /// `pattern` of the persona's `match_profiles` matched the profile's name; `also_matched`:
    /// the other personas whose rules matched too (later by name), by name.
    Rule {
        pattern: String,
        also_matched: Vec<String>,
    },
    /// No rule matched; the persona's expected pattern is the nearest, at `distance`
    /// ([`pattern_distance`], 0 to 2).
    NearestPattern { distance: f64 },
}

/// A learned profile and the persona it takes its settings from.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PersonaBinding {
    pub profile: String,
    pub persona: String,
    pub by: BindingReason,
    /// What the profile's centroid carries in the published model.
    pub settings: ProfileSettings,
}

/// Indexes into [`FEATURE_NAMES`](prescale_gossip::model::FEATURE_NAMES) of the day-part
/// shares: night (00-06 UTC), morning (06-12), afternoon (12-18), evening (18-24).
const DAY_PARTS: [usize; 4] = [4, 5, 6, 7];
/// Indexes of the api, static, write, mobile and automation shares.
const ACCESS_SHARES: [usize; 5] = [10, 11, 12, 13, 14];
/// The access classes in the order [`access_vector`] lays them out.
const ACCESS_ORDER: [Access; 6] = [
    Access::Api,
    Access::Static,
    Access::Write,
    Access::Mobile,
    Access::Automation,
    Access::Interactive,
];

/// Whether `name` matches `pattern`, where `*` stands for any run of characters (also none).
pub fn glob_matches(pattern: &str, name: &str) -> bool {
    let (p, n) = (pattern.as_bytes(), name.as_bytes());
    let (mut pi, mut ni) = (0, 0);
    // The last `*` seen and the name position it was tried at: backtrack there on a mismatch.
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ni));
            pi += 1;
        } else if pi < p.len() && p[pi] == n[ni] {
            pi += 1;
            ni += 1;
        } else if let Some((sp, sn)) = star {
            pi = sp + 1;
            ni = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&b| b == b'*')
}

/// The persona's expected share of each day part: its peak hours spread evenly over the parts
/// they fall in; no peak hours: flat (a quarter each).
pub fn day_part_weights(persona: &Persona) -> [f64; 4] {
    let hours = &persona.traffic.peak_hours_utc;
    if hours.is_empty() {
        return [0.25; 4];
    }
    let mut weights = [0.0; 4];
    for &hour in hours {
        weights[usize::from(hour / 6).min(3)] += 1.0 / hours.len() as f64;
    }
    weights
}

/// The persona's target per access class ([`ACCESS_ORDER`]): 1 when it names the class, else 0.
fn access_targets(persona: &Persona) -> [f64; 6] {
    ACCESS_ORDER.map(|class| f64::from(u8::from(persona.traffic.access.contains(&class))))
}

/// What a centroid shows of the compared features, or `None` when it is not [`FEATURE_DIM`]
/// finite numbers.
struct Observed {
    /// Day-part shares, normalized to sum to 1 (a quarter each when they are all 0).
    day_parts: [f64; 4],
    /// Access shares in [`ACCESS_ORDER`], clamped to `[0, 1]`; interactive = 1 − automation.
    access: [f64; 6],
}

fn observed(center_raw: &[f32]) -> Option<Observed> {
    if center_raw.len() != FEATURE_DIM || center_raw.iter().any(|v| !v.is_finite()) {
        return None;
    }
    let share = |i: usize| f64::from(center_raw[i]).clamp(0.0, 1.0);
    let raw = DAY_PARTS.map(share);
    let total: f64 = raw.iter().sum();
    let day_parts = if total > 0.0 {
        raw.map(|v| v / total)
    } else {
        [0.25; 4]
    };
    let shares = ACCESS_SHARES.map(share);
    Some(Observed {
        day_parts,
        access: access_vector(shares),
    })
}

fn access_vector(shares: [f64; 5]) -> [f64; 6] {
    let [api, stat, write, mobile, automation] = shares;
    [api, stat, write, mobile, automation, 1.0 - automation]
}

/// How far a centroid's traffic pattern is from the persona's expectation, 0 (the same) to 2:
///
/// * **when**: the total variation distance between the persona's [`day_part_weights`] and the
///   centroid's day-part shares (normalized to sum to 1): half the sum of absolute differences,
///   0 to 1;
/// * **what**: the mean over the six access classes of |target − share|, where the target is 1
///   for a class the persona names and 0 otherwise, and the interactive share is 1 − the
///   automation share; 0 to 1. Absolute differences make naming both `automation` and
///   `interactive` (or neither) add the same for every centroid: no preference.
///
/// `None` when `center_raw` is not [`FEATURE_DIM`] finite numbers.
pub fn pattern_distance(persona: &Persona, center_raw: &[f32]) -> Option<f64> {
    let seen = observed(center_raw)?;
    Some(distance_to(persona, &seen))
}

fn distance_to(persona: &Persona, seen: &Observed) -> f64 {
    let when: f64 = day_part_weights(persona)
        .iter()
        .zip(&seen.day_parts)
        .map(|(want, got)| (want - got).abs())
        .sum::<f64>()
        / 2.0;
    let what: f64 = access_targets(persona)
        .iter()
        .zip(&seen.access)
        .map(|(want, got)| (want - got).abs())
        .sum::<f64>()
        / ACCESS_ORDER.len() as f64;
    when + what
}

/// The settings a profile bound to `persona` carries.
pub fn settings_of(persona: &Persona) -> ProfileSettings {
    ProfileSettings {
        persona: persona.name.clone(),
        // In range: a checked persona's weight is at most MAX_REVENUE_WEIGHT (1e12).
        revenue_weight_milli: (persona.revenue_weight * 1000.0).round() as u64,
        priority: persona.priority,
        fleet: persona.fleet.clone(),
    }
}

/// Binds each profile to one persona (see the module docs); bindings in the order of
/// `profiles`.
pub fn map_profiles(personas: &[Persona], profiles: &[ProfileCentroid<'_>]) -> Vec<PersonaBinding> {
    let mut by_name: Vec<&Persona> = personas.iter().collect();
    by_name.sort_by(|a, b| a.name.cmp(&b.name));
    let mut bindings = Vec::with_capacity(profiles.len());
    for profile in profiles {
        let mut matched = by_name.iter().filter_map(|persona| {
            persona
                .match_profiles
                .iter()
                .find(|pattern| glob_matches(pattern, profile.name))
                .map(|pattern| (*persona, pattern))
        });
        let chosen = match matched.next() {
            Some((persona, pattern)) => Some((
                persona,
                BindingReason::Rule {
                    pattern: pattern.clone(),
                    also_matched: matched.map(|(p, _)| p.name.clone()).collect(),
                },
            )),
            None => observed(profile.center_raw).and_then(|seen| {
                let mut best: Option<(&Persona, f64)> = None;
                for persona in &by_name {
                    let distance = distance_to(persona, &seen);
                    // Strictly nearer only: on a tie the earlier name stays.
                    if best.is_none_or(|(_, d)| distance < d) {
                        best = Some((persona, distance));
                    }
                }
                best.map(|(persona, distance)| {
                    (persona, BindingReason::NearestPattern { distance })
                })
            }),
        };
        if let Some((persona, by)) = chosen {
            bindings.push(PersonaBinding {
                profile: profile.name.to_string(),
                persona: persona.name.clone(),
                by,
                settings: settings_of(persona),
            });
        }
    }
    bindings
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::personas::input::{Resources, Traffic};
    use prescale_gossip::model::FEATURE_NAMES;
    use proptest::prelude::*;

    fn persona(name: &str, hours: &[u8], access: &[Access], rules: &[&str]) -> Persona {
        Persona {
            name: name.into(),
            description: None,
            resources: Resources {
                cpu_share: 0.01,
                memory_mb: 16.0,
                network_mbps: 0.1,
                io_ops: 1.0,
            },
            traffic: Traffic {
                peak_hours_utc: hours.to_vec(),
                regions: Vec::new(),
                access: access.to_vec(),
            },
            tags: Vec::new(),
            revenue_weight: 1.0,
            priority: 100,
            fleet: None,
            match_profiles: rules.iter().map(|r| r.to_string()).collect(),
        }
    }

    /// A centroid with the given day-part shares and api/static/write/mobile/automation shares
    /// (other features at plausible values that the mapping ignores).
    fn centroid(day_parts: [f32; 4], access: [f32; 5]) -> Vec<f32> {
        let mut c = vec![0.0f32; FEATURE_DIM];
        c[0] = 2.5;
        c[1] = 3.0;
        c[2] = 7.0;
        c[8] = 0.3;
        c[9] = 0.2;
        c[15] = 5.0;
        for (i, v) in DAY_PARTS.iter().zip(day_parts) {
            c[*i] = v;
        }
        for (i, v) in ACCESS_SHARES.iter().zip(access) {
            c[*i] = v;
        }
        c
    }

    fn batch() -> Persona {
        persona(
            "batch-exports",
            &[1, 2, 3],
            &[Access::Api, Access::Write, Access::Automation],
            &["scheduled-*"],
        )
    }

    fn shoppers() -> Persona {
        persona(
            "shoppers",
            &[12, 13, 19, 20],
            &[Access::Static, Access::Mobile, Access::Interactive],
            &[],
        )
    }

    #[test]
    fn the_feature_indexes_are_the_named_features() {
        let names = |idx: &[usize]| idx.iter().map(|&i| FEATURE_NAMES[i]).collect::<Vec<_>>();
        assert_eq!(
            names(&DAY_PARTS),
            [
                "night_share",
                "morning_share",
                "afternoon_share",
                "evening_share"
            ]
        );
        assert_eq!(
            names(&ACCESS_SHARES),
            [
                "api_share",
                "static_share",
                "write_share",
                "mobile_share",
                "automation_share"
            ]
        );
    }

    #[test]
    fn globs_match_whole_names() {
        for (pattern, name, expected) in [
            ("scheduled-*", "scheduled-batch", true),
            ("scheduled-*", "scheduled-", true),
            ("scheduled-*", "unscheduled-batch", false),
            ("scheduled-*", "scheduled", false),
            ("*-batch", "nightly-batch", true),
            ("*-batch", "nightly-batch-2", false),
            ("a*b*c", "aXXbYYc", true),
            ("a*b*c", "abc", true),
            ("a*b*c", "aXXcYYb", false),
            ("a*c", "abcbc", true),
            ("*", "anything.at_all", true),
            ("**", "x", true),
            ("exact", "exact", true),
            ("exact", "exactly", false),
            ("Exact", "exact", false),
            ("*api*", "heavy-api-users", true),
        ] {
            assert_eq!(glob_matches(pattern, name), expected, "{pattern} vs {name}");
        }
    }

    #[test]
    fn no_personas_no_bindings() {
        let c = centroid([0.25; 4], [0.5; 5]);
        let profiles = [ProfileCentroid {
            name: "scheduled-batch",
            center_raw: &c,
        }];
        assert!(map_profiles(&[], &profiles).is_empty());
    }

    #[test]
    fn a_rule_wins_over_the_pattern_and_several_rules_take_the_first_name() {
        // Daytime, interactive: the shoppers' pattern, but the name matches batch's rule.
        let c = centroid([0.0, 0.1, 0.5, 0.4], [0.1, 0.8, 0.0, 0.7, 0.0]);
        let profiles = [ProfileCentroid {
            name: "scheduled-nightly",
            center_raw: &c,
        }];
        let personas = [shoppers(), batch()];
        let bindings = map_profiles(&personas, &profiles);
        assert_eq!(bindings.len(), 1);
        assert_eq!(bindings[0].persona, "batch-exports");
        assert_eq!(
            bindings[0].by,
            BindingReason::Rule {
                pattern: "scheduled-*".into(),
                also_matched: vec![]
            }
        );
        // Shoppers also claim it (second pattern), and a later name too: batch-exports is first.
        let mut greedy = shoppers();
        greedy.match_profiles = vec!["nothing".into(), "*-nightly".into()];
        let mut zeta = shoppers();
        zeta.name = "zeta".into();
        zeta.match_profiles = vec!["*".into()];
        let bindings = map_profiles(&[zeta, greedy, batch()], &profiles);
        assert_eq!(bindings[0].persona, "batch-exports");
        assert_eq!(
            bindings[0].by,
            BindingReason::Rule {
                pattern: "scheduled-*".into(),
                also_matched: vec!["shoppers".into(), "zeta".into()]
            }
        );
    }

    #[test]
    fn without_a_rule_the_nearest_pattern_wins() {
        let night_bot = centroid([0.8, 0.1, 0.05, 0.05], [0.95, 0.0, 0.6, 0.0, 0.9]);
        let day_human = centroid([0.05, 0.15, 0.45, 0.35], [0.1, 0.7, 0.05, 0.8, 0.02]);
        let profiles = [
            ProfileCentroid {
                name: "automated-night",
                center_raw: &night_bot,
            },
            ProfileCentroid {
                name: "interactive-daytime",
                center_raw: &day_human,
            },
        ];
        let personas = [shoppers(), batch()];
        let bindings = map_profiles(&personas, &profiles);
        let chosen: Vec<(&str, &str)> = bindings
            .iter()
            .map(|b| (b.profile.as_str(), b.persona.as_str()))
            .collect();
        assert_eq!(
            chosen,
            vec![
                ("automated-night", "batch-exports"),
                ("interactive-daytime", "shoppers")
            ]
        );
        // The distance given is the documented one, computed by hand for the night bot:
        // when: weights [1,0,0,0] vs [0.8,0.1,0.05,0.05] → (0.2+0.1+0.05+0.05)/2 = 0.2;
        // what: targets api,write,automation = 1 → |1-.95|+|0-0|+|1-.6|+|0-0|+|1-.9|+|0-.1| = 0.65 / 6.
        let BindingReason::NearestPattern { distance } = bindings[0].by else {
            panic!("{:?}", bindings[0].by)
        };
        let expected = 0.2 + 0.65 / 6.0;
        assert!(
            (distance - expected).abs() < 1e-6,
            "{distance} vs {expected}"
        );
        assert!(
            distance < pattern_distance(&shoppers(), &night_bot).expect("well formed"),
            "the other persona is farther"
        );
    }

    #[test]
    fn equal_distances_go_to_the_first_name_whatever_the_order_given() {
        let c = centroid([0.25; 4], [0.5; 5]);
        let profiles = [ProfileCentroid {
            name: "mixed",
            center_raw: &c,
        }];
        let mut a = shoppers();
        a.name = "alpha".into();
        let mut b = shoppers();
        b.name = "beta".into();
        for personas in [[a.clone(), b.clone()], [b, a]] {
            let bindings = map_profiles(&personas, &profiles);
            assert_eq!(bindings[0].persona, "alpha");
        }
    }

    #[test]
    fn empty_peak_hours_mean_flat_and_day_parts_normalize() {
        let flat = persona("flat", &[], &[Access::Api], &[]);
        assert_eq!(day_part_weights(&flat), [0.25; 4]);
        let weights = day_part_weights(&persona("p", &[0, 5, 6, 23], &[Access::Api], &[]));
        assert_eq!(weights, [0.5, 0.25, 0.0, 0.25]);
        // Unnormalized shares (a centroid of new users, summing to 0.5) compare as normalized.
        let half = centroid([0.125; 4], [1.0, 0.0, 0.0, 0.0, 0.0]);
        let whole = centroid([0.25; 4], [1.0, 0.0, 0.0, 0.0, 0.0]);
        assert_eq!(
            pattern_distance(&flat, &half),
            pattern_distance(&flat, &whole)
        );
        // All zero: treated as flat.
        let none = centroid([0.0; 4], [1.0, 0.0, 0.0, 0.0, 0.0]);
        assert_eq!(
            pattern_distance(&flat, &none),
            pattern_distance(&flat, &whole)
        );
    }

    #[test]
    fn naming_both_automation_and_interactive_is_no_preference() {
        let both = persona("both", &[], &[Access::Automation, Access::Interactive], &[]);
        let bot = centroid([0.25; 4], [0.0, 0.0, 0.0, 0.0, 1.0]);
        let human = centroid([0.25; 4], [0.0, 0.0, 0.0, 0.0, 0.0]);
        let half = centroid([0.25; 4], [0.0, 0.0, 0.0, 0.0, 0.5]);
        let d = |c: &[f32]| pattern_distance(&both, c).expect("well formed");
        assert_eq!(d(&bot), d(&human));
        assert_eq!(d(&bot), d(&half));
    }

    #[test]
    fn a_malformed_centroid_is_bound_by_rule_only() {
        let short = vec![0.5f32; FEATURE_DIM - 1];
        let mut nan = centroid([0.25; 4], [0.5; 5]);
        nan[5] = f32::NAN;
        let profiles = [
            ProfileCentroid {
                name: "scheduled-x",
                center_raw: &short,
            },
            ProfileCentroid {
                name: "other",
                center_raw: &short,
            },
            ProfileCentroid {
                name: "other-nan",
                center_raw: &nan,
            },
        ];
        let bindings = map_profiles(&[batch(), shoppers()], &profiles);
        assert_eq!(bindings.len(), 1);
        assert_eq!(
            (bindings[0].profile.as_str(), bindings[0].persona.as_str()),
            ("scheduled-x", "batch-exports")
        );
        assert_eq!(pattern_distance(&batch(), &short), None);
    }

    #[test]
    fn the_settings_come_from_the_persona() {
        let mut p = batch();
        p.revenue_weight = 0.2;
        p.priority = 20;
        p.fleet = Some("batch".into());
        assert_eq!(
            settings_of(&p),
            ProfileSettings {
                persona: "batch-exports".into(),
                revenue_weight_milli: 200,
                priority: 20,
                fleet: Some("batch".into()),
            }
        );
        for (weight, milli) in [
            (0.0, 0),
            (2.5, 2500),
            (0.0004, 0),
            (0.0006, 1),
            (1e12, 1_000_000_000_000_000),
        ] {
            p.revenue_weight = weight;
            assert_eq!(settings_of(&p).revenue_weight_milli, milli, "{weight}");
        }
        let c = centroid([0.25; 4], [0.5; 5]);
        let bindings = map_profiles(
            &[p.clone()],
            &[ProfileCentroid {
                name: "any",
                center_raw: &c,
            }],
        );
        assert_eq!(bindings[0].settings, settings_of(&p));
    }

    fn arb_persona() -> impl Strategy<Value = Persona> {
        (
            "[a-e]{1,3}",
            proptest::collection::btree_set(0u8..24, 0..5),
            proptest::collection::btree_set(0usize..6, 1..4),
            proptest::option::of("[a-c]\\*"),
        )
            .prop_map(|(name, hours, access, rule)| {
                let access: Vec<Access> = access.into_iter().map(|i| ACCESS_ORDER[i]).collect();
                let hours: Vec<u8> = hours.into_iter().collect();
                let rules: Vec<&str> = rule.iter().map(String::as_str).collect();
                persona(&name, &hours, &access, &rules)
            })
    }

    proptest! {
        #[test]
        fn every_profile_gets_one_persona_independent_of_order(
            personas in proptest::collection::vec(arb_persona(), 1..6),
            centers in proptest::collection::vec(proptest::collection::vec(0.0f32..1.0, FEATURE_DIM), 1..6),
            names in proptest::collection::vec("[a-d][a-z]{0,3}", 6),
        ) {
            // Distinct persona names, as the store guarantees.
            let mut seen = std::collections::HashSet::new();
            let personas: Vec<Persona> = personas.into_iter().filter(|p| seen.insert(p.name.clone())).collect();
            let profiles: Vec<ProfileCentroid<'_>> = centers
                .iter()
                .zip(&names)
                .map(|(c, n)| ProfileCentroid { name: n, center_raw: c })
                .collect();
            let bindings = map_profiles(&personas, &profiles);
            prop_assert_eq!(bindings.len(), profiles.len());
            let mut reversed = personas.clone();
            reversed.reverse();
            prop_assert_eq!(&map_profiles(&reversed, &profiles), &bindings);
            for (binding, profile) in bindings.iter().zip(&profiles) {
                prop_assert_eq!(&binding.profile, profile.name);
                match &binding.by {
                    BindingReason::Rule { pattern, .. } => {
                        prop_assert!(glob_matches(pattern, profile.name));
                    }
                    BindingReason::NearestPattern { distance } => {
                        prop_assert!((0.0..=2.0).contains(distance));
                        for p in &personas {
                            prop_assert!(!p.match_profiles.iter().any(|r| glob_matches(r, profile.name)));
                            let d = pattern_distance(p, profile.center_raw).expect("well formed");
                            prop_assert!(*distance <= d);
                            if d == *distance {
                                prop_assert!(binding.persona <= p.name);
                            }
                        }
                    }
                }
            }
        }
    }
}
