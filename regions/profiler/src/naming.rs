//! Profile names from dominant features.
//!
//! For each profile the z-score of its centroid against the whole population is taken per
//! feature (`(center_raw - mean) / std`; flat features score 0). Features with `|z| ≥` [`MIN_Z`]
//! that have a word for their direction, strongest first, give up to two words joined by `-`
//! (`scheduled-automated`); none gives [`PLAIN_NAME`]. Words come from [`WORDS`], keyed by the
//! feature names of `prescale_gossip::model::FEATURE_NAMES` (copied here: this crate does not
//! depend on gossip); a feature not in the table reads `<feature>-high` / `<feature>-low`.
//!
//! Invariants: every name is 1–64 bytes of `[A-Za-z0-9._-]`, never `new`, `default` or
//! `anomalous`, and unique within the model (later ones get `-2`, `-3`, …).

use std::collections::HashSet;

/// The proxy's builtin profiles and the anomalous one (`prescale_gossip::model::RESERVED_PROFILES`).
pub const RESERVED_PROFILES: [&str; 3] = ["new", "default", "anomalous"];

/// `prescale_gossip::model::valid_profile_name`: 1 to 64 bytes of ASCII letters, digits, `-`,
/// `_` and `.`.
pub fn valid_profile_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// A feature needs at least this |z| to name a profile: half a population standard deviation.
pub const MIN_Z: f64 = 0.5;
/// The name of a profile no feature sets apart (e.g. the only profile of a k = 1 model).
pub const PLAIN_NAME: &str = "typical";
/// Words per name at most.
const MAX_WORDS: usize = 2;
/// Bytes a word may take, so that two words, a `-` and a `-NN` suffix fit in 64.
const MAX_WORD: usize = 29;

/// Feature name → (word when high, word when low). `None`: that direction names nothing (a low
/// share of something is not a behavior worth a name).
pub const WORDS: [(&str, Option<&str>, Option<&str>); 16] = [
    ("rate_per_min_log", Some("heavy"), Some("light")),
    ("request_bytes_log", Some("uploading"), None),
    ("response_bytes_log", Some("downloading"), None),
    ("error_share", Some("failing"), None),
    ("night_share", Some("night"), None),
    ("morning_share", Some("morning"), None),
    ("afternoon_share", Some("daytime"), None),
    ("evening_share", Some("evening"), None),
    ("weekend_share", Some("weekend"), Some("weekday")),
    ("hour_peak_share", Some("scheduled"), None),
    ("api_share", Some("api"), None),
    ("static_share", Some("browsing"), None),
    ("write_share", Some("writing"), None),
    ("mobile_share", Some("mobile"), Some("desktop")),
    ("automation_share", Some("automated"), Some("interactive")),
    ("session_gap_log", Some("occasional"), Some("continuous")),
];

/// One word of a name and the feature behind it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Word {
    pub dim: usize,
    pub word: String,
    pub z: f64,
}

/// The word for `feature` in the direction of `z`, if it has one.
pub(crate) fn word_for(feature: &str, z: f64) -> Option<String> {
    match WORDS.iter().find(|(name, _, _)| *name == feature) {
        Some((_, high, low)) => {
            let w = if z > 0.0 { high } else { low };
            w.map(str::to_string)
        }
        None => {
            let clean: String = feature
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                        c
                    } else {
                        '_'
                    }
                })
                .collect();
            let suffix = if z > 0.0 { "-high" } else { "-low" };
            let stem: String = clean.chars().take(MAX_WORD - suffix.len()).collect();
            Some(format!("{stem}{suffix}"))
        }
    }
}

/// The strongest words of a centroid with z-scores `z` (one per feature).
pub(crate) fn words(feature_names: &[&str], z: &[f64]) -> Vec<Word> {
    let mut order: Vec<usize> = (0..z.len()).filter(|&d| z[d].abs() >= MIN_Z).collect();
    // Strongest first; equal strength keeps feature order.
    order.sort_by(|&a, &b| z[b].abs().total_cmp(&z[a].abs()).then(a.cmp(&b)));
    let mut out: Vec<Word> = Vec::with_capacity(MAX_WORDS);
    for d in order {
        let Some(word) = word_for(feature_names[d], z[d]) else {
            continue;
        };
        if out.iter().any(|w| w.word == word) {
            continue;
        }
        out.push(Word {
            dim: d,
            word,
            z: z[d],
        });
        if out.len() == MAX_WORDS {
            break;
        }
    }
    out
}

/// The base name the words spell.
pub(crate) fn base_name(words: &[Word]) -> String {
    if words.is_empty() {
        return PLAIN_NAME.to_string();
    }
    words
        .iter()
        .map(|w| w.word.as_str())
        .collect::<Vec<_>>()
        .join("-")
}

/// `base`, or `base-2`, `base-3`, … : the first that is valid, not reserved and not in `taken`;
/// it is added to `taken`.
pub(crate) fn unique(base: &str, taken: &mut HashSet<String>) -> String {
    let usable = |name: &str, taken: &HashSet<String>| {
        valid_profile_name(name) && !RESERVED_PROFILES.contains(&name) && !taken.contains(name)
    };
    let base = if valid_profile_name(base) {
        base
    } else {
        PLAIN_NAME
    };
    let mut name = base.to_string();
    let mut n = 2u32;
    while !usable(&name, taken) {
        let suffix = format!("-{n}");
        let stem: String = base.chars().take(64 - suffix.len()).collect();
        name = format!("{stem}{suffix}");
        n += 1;
    }
    taken.insert(name.clone());
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The 16 names of `prescale_gossip::model::FEATURE_NAMES`, in order.
    const GOSSIP_FEATURE_NAMES: [&str; 16] = [
        "rate_per_min_log",
        "request_bytes_log",
        "response_bytes_log",
        "error_share",
        "night_share",
        "morning_share",
        "afternoon_share",
        "evening_share",
        "weekend_share",
        "hour_peak_share",
        "api_share",
        "static_share",
        "write_share",
        "mobile_share",
        "automation_share",
        "session_gap_log",
    ];

    #[test]
    fn the_table_covers_the_wire_features_in_order() {
        let names: Vec<&str> = WORDS.iter().map(|(n, _, _)| *n).collect();
        assert_eq!(names, GOSSIP_FEATURE_NAMES);
    }

    #[test]
    fn strongest_two_words_with_a_word_for_their_direction() {
        let mut z = vec![0.0; 16];
        z[9] = 2.5; // hour_peak_share high
        z[14] = 1.5; // automation_share high
        z[3] = -3.0; // error_share low: no word
        z[0] = 0.4; // below MIN_Z
        let w = words(&GOSSIP_FEATURE_NAMES, &z);
        assert_eq!(base_name(&w), "scheduled-automated");
        z[14] = -1.5;
        z[6] = 1.0;
        assert_eq!(
            base_name(&words(&GOSSIP_FEATURE_NAMES, &z)),
            "scheduled-interactive"
        );
        assert_eq!(
            base_name(&words(&GOSSIP_FEATURE_NAMES, &[0.1; 16])),
            PLAIN_NAME
        );
    }

    #[test]
    fn unknown_features_fall_back_and_stay_valid() {
        assert_eq!(word_for("latency", 1.0).as_deref(), Some("latency-high"));
        assert_eq!(
            word_for("p99 latency/ms", -1.0).as_deref(),
            Some("p99_latency_ms-low")
        );
        let long = "x".repeat(100);
        let w = words(&[&long, &long], &[2.0, -2.0]);
        let name = base_name(&w);
        assert!(valid_profile_name(&name), "{name}");
    }

    #[test]
    fn unique_suffixes_and_avoids_reserved() {
        let mut taken = HashSet::new();
        assert_eq!(unique("api", &mut taken), "api");
        assert_eq!(unique("api", &mut taken), "api-2");
        assert_eq!(unique("api", &mut taken), "api-3");
        assert_eq!(unique("new", &mut taken), "new-2");
        assert_eq!(unique("anomalous", &mut taken), "anomalous-2");
        let long = "a".repeat(64);
        assert_eq!(unique(&long, &mut taken), long);
        let second = unique(&long, &mut taken);
        assert!(
            valid_profile_name(&second) && second.ends_with("-2"),
            "{second}"
        );
    }
}
