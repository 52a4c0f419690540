//! The sketch a proxy node ships every interval: per (profile, origin region, fleet) counters, a
//! latency histogram, a unique-user HyperLogLog and a sample of user features.
//!
//! Merging ([`EntryStats::merge`], [`Sketch::merge_entries`]) is what the forecaster does to
//! roll 10-second sketches into minute series: counts add (saturating), histograms merge,
//! HyperLogLogs take the register-wise max, samples take the bottom-k of the union.
//!
//! Invariants checked by [`Sketch::validate`] (the codec runs it on every decoded sketch):
//! node and region names are non-empty and at most [`MAX_NAME_LEN`] bytes; the interval is not
//! reversed; entry keys are unique; `errors <= requests`; every histogram is a well-formed,
//! bounded HdrHistogram V2 compressed blob.

use std::collections::{BTreeMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::histogram::LatencyHistogram;
use crate::hll::HyperLogLog;
use crate::model::FeatureVector;
use crate::sample::UserSample;

/// Longest node, region, fleet name accepted.
pub const MAX_NAME_LEN: usize = 128;

/// What one entry of a sketch is about.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct EntryKey {
    /// Profile name (names are stable across nodes; per-node profile indexes are not).
    pub profile: String,
    /// Region the requests came from (geo lookup), not the node's region.
    pub origin_region: String,
    /// Upstream pool the requests were routed to.
    pub fleet: String,
}

/// The measurements of one entry over one interval.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EntryStats {
    pub requests: u64,
    /// Responses with status >= 500 or upstream failure.
    pub errors: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Latency (the proxy's unit, microseconds) in HdrHistogram V2 compressed form.
    pub latency: LatencyHistogram,
    pub users: HyperLogLog,
    pub sample: UserSample,
}

impl EntryStats {
    /// Record one user's visit into the unique-user count and the feature sample (the proxy's
    /// exporter calls this for each user active in the interval).
    pub fn observe_user(&mut self, user: u64, features: FeatureVector) {
        self.users.insert(user);
        self.sample.offer(user, features);
    }

    /// Set the latency histogram from the proxy's snapshot.
    pub fn set_latency(&mut self, h: &hdrhistogram::Histogram<u64>) -> Result<()> {
        self.latency = LatencyHistogram::from_histogram(h)?;
        Ok(())
    }

    /// Add `other` into `self`: counts add, histograms merge, HLLs and samples union.
    pub fn merge(&mut self, other: &EntryStats) -> Result<()> {
        // Do the fallible parts first so a failed merge leaves `self` unchanged.
        let mut latency = self.latency.clone();
        latency.merge(&other.latency)?;
        let mut users = self.users.clone();
        users.merge(&other.users)?;
        self.latency = latency;
        self.users = users;
        self.requests = self.requests.saturating_add(other.requests);
        self.errors = self.errors.saturating_add(other.errors);
        self.bytes_in = self.bytes_in.saturating_add(other.bytes_in);
        self.bytes_out = self.bytes_out.saturating_add(other.bytes_out);
        self.sample.merge(&other.sample);
        Ok(())
    }
}

/// One (key, stats) pair of a sketch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SketchEntry {
    pub key: EntryKey,
    pub stats: EntryStats,
}

/// What a node's sender knew about its own backlog when the sketch was spooled; lets the
/// forecaster show each node's spool state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SenderState {
    /// Sketches waiting in the spool (this one included).
    pub spooled: u32,
    /// Sketches dropped from a full spool since the node started.
    pub dropped: u64,
}

/// One node's measurements over one interval. `(node, sequence)` identifies it for dedup.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sketch {
    pub node: String,
    /// The node's own region.
    pub region: String,
    /// Assigned by the sender, strictly increasing per node across restarts.
    pub sequence: u64,
    /// Interval start, unix milliseconds (inclusive).
    pub interval_start_ms: u64,
    /// Interval end, unix milliseconds (exclusive).
    pub interval_end_ms: u64,
    pub sender: SenderState,
    pub entries: Vec<SketchEntry>,
}

impl Sketch {
    /// An empty sketch for `[start, end)`; the sender fills in `node`, `sequence`, `sender`.
    pub fn new(
        node: impl Into<String>,
        region: impl Into<String>,
        interval_start_ms: u64,
        interval_end_ms: u64,
    ) -> Self {
        Self {
            node: node.into(),
            region: region.into(),
            sequence: 0,
            interval_start_ms,
            interval_end_ms,
            sender: SenderState::default(),
            entries: Vec::new(),
        }
    }

    /// The stats of `key`, created empty if absent.
    pub fn entry(&mut self, key: EntryKey) -> &mut EntryStats {
        let pos = match self.entries.iter().position(|e| e.key == key) {
            Some(pos) => pos,
            None => {
                self.entries.push(SketchEntry {
                    key,
                    stats: EntryStats::default(),
                });
                self.entries.len() - 1
            }
        };
        &mut self.entries[pos].stats
    }

    /// Total requests over all entries.
    pub fn total_requests(&self) -> u64 {
        self.entries
            .iter()
            .fold(0u64, |acc, e| acc.saturating_add(e.stats.requests))
    }

    /// Merge the entries of many sketches by key (the forecaster's roll-up).
    pub fn merge_entries<'a>(
        sketches: impl IntoIterator<Item = &'a Sketch>,
    ) -> Result<BTreeMap<EntryKey, EntryStats>> {
        let mut out: BTreeMap<EntryKey, EntryStats> = BTreeMap::new();
        for s in sketches {
            for e in &s.entries {
                match out.get_mut(&e.key) {
                    Some(acc) => acc.merge(&e.stats)?,
                    None => {
                        out.insert(e.key.clone(), e.stats.clone());
                    }
                }
            }
        }
        Ok(out)
    }

    /// Split into sketches of the same node, region and interval whose frames each fit
    /// `limits` (entries kept in order, each in exactly one part). A sketch that fits is returned
    /// whole, an empty one too. Merging the parts into minutes gives what the whole would have
    /// given, since every entry of an interval is in exactly one part. Fails only if one entry
    /// alone exceeds the frame limit.
    pub fn split_to_fit(self, limits: &crate::codec::Limits) -> Result<Vec<Sketch>> {
        let whole = encoded_len(&self)?;
        if whole <= limits.max_frame && self.entries.len() <= limits.max_entries {
            return Ok(vec![self]);
        }
        let Sketch {
            node,
            region,
            sequence,
            interval_start_ms,
            interval_end_ms,
            sender,
            entries,
        } = self;
        let empty = Sketch {
            node,
            region,
            sequence,
            interval_start_ms,
            interval_end_ms,
            sender,
            entries: Vec::new(),
        };
        // The entry count's varint grows with the count: leave room for its largest form.
        let budget = limits
            .max_frame
            .saturating_sub(encoded_len(&empty)? + VARINT_MAX_LEN);
        let mut parts = Vec::new();
        let mut current = empty.clone();
        let mut used = 0usize;
        for entry in entries {
            let size = encoded_len(&entry)?;
            if size > budget {
                return Err(Error::Oversized {
                    len: size,
                    max: budget,
                });
            }
            if !current.entries.is_empty()
                && (used + size > budget || current.entries.len() >= limits.max_entries)
            {
                parts.push(std::mem::replace(&mut current, empty.clone()));
                used = 0;
            }
            used += size;
            current.entries.push(entry);
        }
        parts.push(current);
        Ok(parts)
    }

    /// Check the invariants listed in the module docs.
    pub fn validate(&self, max_entries: usize) -> Result<()> {
        self.check(max_entries, true)
    }

    /// `deep` also parses every latency histogram (needed for input from the network; a
    /// [`LatencyHistogram`] built locally is valid by construction).
    pub(crate) fn check(&self, max_entries: usize, deep: bool) -> Result<()> {
        check_name("sketch node", &self.node, false)?;
        check_name("sketch region", &self.region, false)?;
        if self.interval_end_ms < self.interval_start_ms {
            return Err(Error::invalid("sketch", "interval ends before it starts"));
        }
        if self.entries.len() > max_entries {
            return Err(Error::invalid(
                "sketch",
                format!(
                    "{} entries exceed the limit of {max_entries}",
                    self.entries.len()
                ),
            ));
        }
        let mut keys = HashSet::with_capacity(self.entries.len());
        for e in &self.entries {
            check_name("entry profile", &e.key.profile, true)?;
            check_name("entry origin region", &e.key.origin_region, true)?;
            check_name("entry fleet", &e.key.fleet, true)?;
            if !keys.insert(&e.key) {
                return Err(Error::invalid(
                    "sketch",
                    format!("duplicate entry key {:?}", e.key),
                ));
            }
            if e.stats.errors > e.stats.requests {
                return Err(Error::invalid("sketch entry", "more errors than requests"));
            }
            if deep {
                e.stats
                    .latency
                    .validate()
                    .map_err(|err| Error::invalid("sketch entry latency", err.to_string()))?;
            }
        }
        Ok(())
    }
}

/// Longest postcard varint of a `usize` length.
const VARINT_MAX_LEN: usize = 10;

/// Size of `value`'s postcard encoding.
fn encoded_len<T: Serialize>(value: &T) -> Result<usize> {
    postcard::to_stdvec(value)
        .map(|bytes| bytes.len())
        .map_err(|e| Error::Malformed {
            what: "encode",
            detail: e.to_string(),
        })
}

pub(crate) fn check_name(what: &'static str, name: &str, allow_empty: bool) -> Result<()> {
    if name.is_empty() && !allow_empty {
        return Err(Error::invalid(what, "is empty"));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(Error::invalid(
            what,
            format!("is {} bytes, at most {MAX_NAME_LEN}", name.len()),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::FEATURE_DIM;

    fn key(p: u32) -> EntryKey {
        EntryKey {
            profile: format!("profile-{}", p),
            origin_region: "eu".into(),
            fleet: "web".into(),
        }
    }

    #[test]
    fn merge_entries_adds_counts_and_unions_users() {
        let mut a = Sketch::new("n1", "eu", 0, 10_000);
        let mut b = Sketch::new("n2", "eu", 0, 10_000);
        let mut h = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
        h.record(1000).unwrap();
        for (s, users) in [(&mut a, 0..100u64), (&mut b, 50..150u64)] {
            let st = s.entry(key(1));
            st.requests = 10;
            st.errors = 1;
            st.bytes_in = 100;
            st.bytes_out = 1000;
            st.set_latency(&h).unwrap();
            for u in users {
                st.observe_user(u, FeatureVector([0.5; FEATURE_DIM]));
            }
        }
        b.entry(key(2)).requests = 7;
        let merged = Sketch::merge_entries([&a, &b]).unwrap();
        let one = &merged[&key(1)];
        assert_eq!(
            (one.requests, one.errors, one.bytes_in, one.bytes_out),
            (20, 2, 200, 2000)
        );
        assert_eq!(one.latency.to_histogram().unwrap().len(), 2);
        assert!(
            (one.users.estimate() - 150.0).abs() < 8.0,
            "{}",
            one.users.estimate()
        );
        assert_eq!(merged[&key(2)].requests, 7);
    }

    #[test]
    fn split_parts_fit_and_hold_every_entry_once() {
        use crate::codec::{encode, Limits};
        use crate::messages::Message;
        let mut s = Sketch::new("n1", "eu", 0, 10_000);
        for p in 0..300 {
            let e = s.entry(key(p));
            e.requests = u64::from(p);
            for u in 0..(u64::from(p) % 40) {
                e.observe_user(u, FeatureVector([0.25; FEATURE_DIM]));
            }
        }
        let whole = s.clone().split_to_fit(&Limits::default()).expect("split");
        assert_eq!(whole, vec![s.clone()], "a sketch that fits stays whole");
        for (max_frame, max_entries) in [(8 * 1024, 4096), (64 * 1024, 7), (4 * 1024, 1)] {
            let limits = Limits {
                max_frame,
                max_entries,
            };
            let parts = s.clone().split_to_fit(&limits).expect("split");
            assert!(parts.len() > 1);
            let mut keys = Vec::new();
            for part in &parts {
                assert!(encode(&Message::Sketch(part.clone()), &limits).is_ok());
                assert_eq!((part.node.as_str(), part.interval_end_ms), ("n1", 10_000));
                keys.extend(part.entries.iter().map(|e| e.key.clone()));
            }
            let original: Vec<EntryKey> = s.entries.iter().map(|e| e.key.clone()).collect();
            assert_eq!(keys, original, "in order, each once");
            assert_eq!(
                parts.iter().map(Sketch::total_requests).sum::<u64>(),
                s.total_requests()
            );
        }
        let empty = Sketch::new("n1", "eu", 0, 10_000);
        let tiny = Limits {
            max_frame: 64,
            max_entries: 1,
        };
        assert_eq!(
            empty.clone().split_to_fit(&tiny).expect("empty"),
            vec![empty]
        );
        // One entry bigger than a whole frame cannot be split.
        assert!(matches!(
            s.split_to_fit(&Limits {
                max_frame: 200,
                max_entries: 4096
            }),
            Err(Error::Oversized { .. })
        ));
    }

    #[test]
    fn validate_catches_broken_invariants() {
        let mut s = Sketch::new("n1", "eu", 10, 20);
        s.entry(key(1)).requests = 1;
        assert!(s.validate(10).is_ok());
        let mut dup = s.clone();
        dup.entries.push(dup.entries[0].clone());
        assert!(dup.validate(10).is_err());
        let mut rev = s.clone();
        rev.interval_end_ms = 5;
        assert!(rev.validate(10).is_err());
        let mut errs = s.clone();
        errs.entries[0].stats.errors = 2;
        assert!(errs.validate(10).is_err());
        assert!(s.validate(0).is_err());
        let mut long = s.clone();
        long.node = "x".repeat(MAX_NAME_LEN + 1);
        assert!(long.validate(10).is_err());
    }
}
