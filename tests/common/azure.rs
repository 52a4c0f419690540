//! The Azure Functions sample as the profile-learning tests see it: the wide per-minute CSV
//! (`HashFunction,HashApp,HashOwner,minute_1..`), a labelling of each function derived from its
//! own series, and the agreement measures (purity, adjusted Rand index) between that labelling
//! and learned profiles.
//!
//! The labelling only uses what a behavior profile could be expected to see:
//! - `rare`: active (at least one invocation) in at most 14 of the 1,440 minutes;
//! - `steady`: active in at least 80 % of the minutes;
//! - `periodic`: at least 80 % of the gaps between consecutive active minutes are one and the same
//!   gap of 2 minutes or more (a timer: every 5, 10, 60 minutes…);
//! - `bursty`: everything else (active in irregular stretches).

use std::collections::BTreeMap;
use std::path::Path;

/// One function: its identity (the hash column) and invocations per minute.
pub struct Function {
    pub id: String,
    pub per_minute: Vec<u32>,
}

pub fn read_functions(path: &Path) -> Vec<Function> {
    let text = std::fs::read_to_string(path).expect("read the Azure sample");
    let mut lines = text.lines();
    let header = lines.next().expect("header");
    assert!(header.starts_with("HashFunction,HashApp,HashOwner,minute_1"));
    lines
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let mut fields = line.split(',');
            let id = fields.next().expect("HashFunction").to_string();
            let per_minute = fields
                .skip(2)
                .map(|f| f.trim().parse::<u32>().expect("count"))
                .collect();
            Function { id, per_minute }
        })
        .collect()
}

pub fn label(per_minute: &[u32]) -> &'static str {
    let active: Vec<usize> = per_minute
        .iter()
        .enumerate()
        .filter(|(_, c)| **c > 0)
        .map(|(i, _)| i)
        .collect();
    if active.len() <= 14 {
        return "rare";
    }
    if active.len() * 5 >= per_minute.len() * 4 {
        return "steady";
    }
    let mut gaps: BTreeMap<usize, usize> = BTreeMap::new();
    for pair in active.windows(2) {
        *gaps.entry(pair[1] - pair[0]).or_default() += 1;
    }
    let total: usize = gaps.values().sum();
    let (gap, count) = gaps
        .iter()
        .max_by_key(|(gap, count)| (**count, std::cmp::Reverse(**gap)))
        .map(|(g, c)| (*g, *c))
        .unwrap_or((0, 0));
    if gap >= 2 && count * 5 >= total * 4 {
        "periodic"
    } else {
        "bursty"
    }
}

/// Share of items whose cluster's most common label is their own.
pub fn purity(labels: &[&str], clusters: &[String]) -> f64 {
    let mut table: BTreeMap<&str, BTreeMap<&str, usize>> = BTreeMap::new();
    for (label, cluster) in labels.iter().zip(clusters) {
        *table
            .entry(cluster.as_str())
            .or_default()
            .entry(label)
            .or_default() += 1;
    }
    let majority: usize = table
        .values()
        .map(|by_label| by_label.values().copied().max().unwrap_or(0))
        .sum();
    majority as f64 / labels.len().max(1) as f64
}

/// Adjusted Rand index (Hubert & Arabie): 1 for identical partitions, ~0 for independent ones.
pub fn adjusted_rand_index(labels: &[&str], clusters: &[String]) -> f64 {
    let pairs = |n: usize| (n * n.saturating_sub(1) / 2) as f64;
    let mut table: BTreeMap<(&str, &str), usize> = BTreeMap::new();
    let mut by_label: BTreeMap<&str, usize> = BTreeMap::new();
    let mut by_cluster: BTreeMap<&str, usize> = BTreeMap::new();
    for (label, cluster) in labels.iter().zip(clusters) {
        *table.entry((label, cluster.as_str())).or_default() += 1;
        *by_label.entry(label).or_default() += 1;
        *by_cluster.entry(cluster.as_str()).or_default() += 1;
    }
    let index: f64 = table.values().map(|&n| pairs(n)).sum();
    let a: f64 = by_label.values().map(|&n| pairs(n)).sum();
    let b: f64 = by_cluster.values().map(|&n| pairs(n)).sum();
    let total = pairs(labels.len());
    let expected = a * b / total;
    let max = (a + b) / 2.0;
    if (max - expected).abs() < f64::EPSILON {
        return 1.0;
    }
    (index - expected) / (max - expected)
}

/// The share of the most common label: the purity a single cluster would reach.
pub fn majority_share(labels: &[&str]) -> f64 {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for label in labels {
        *counts.entry(label).or_default() += 1;
    }
    counts.values().copied().max().unwrap_or(0) as f64 / labels.len().max(1) as f64
}
