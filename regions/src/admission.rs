//! What the forecaster's store takes from a proxy: the checks a well-formed sketch must pass
//! before it is queued for the store, each failure a [`Refusal`] the proxy is told.
//!
//! A sketch that passes the codec can still poison the region's series or block its sender: a
//! region the forecaster does not plan for, unique-user counts at another HyperLogLog precision
//! (they cannot be merged into the region's rows, so every later merge of that row would fail),
//! minutes the store prunes at once or minutes far in the future, counts that do not fit the
//! store's 64-bit signed integers. Each is refused for good, with its reason, rather than failing
//! the store (which would make the proxy resend it ahead of all its later sketches forever).
//! Counts that overflow only once added to a stored row are refused by the store itself
//! ([`crate::store`]).
//!
//! Pure: the caller passes the node time to check against.

use prescale_gossip::{HyperLogLog, Refusal, Sketch};

/// How far ahead of the forecaster's clock a sketch's interval may start: clock skew between
/// a proxy and its forecaster, with room to spare (node time; at a speed-up both run from the
/// machine's boot and agree to within a few seconds).
pub const MAX_AHEAD_MS: u64 = 10 * 60 * 1000;

/// The forecaster's rules for sketches. See the module docs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Admission {
    /// The forecaster's region: the only one whose sketches it stores.
    pub region: String,
    /// The HyperLogLog precision of every unique-user count of the region.
    pub user_count_precision: u8,
    /// Series are kept this long (node time); older intervals are refused.
    pub retention_ms: u64,
}

/// A refusal and what exactly was wrong (for the forecaster's log).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{reason}: {detail}")]
pub struct Refused {
    pub reason: Refusal,
    pub detail: String,
}

impl Refused {
    fn new(reason: Refusal, detail: impl Into<String>) -> Self {
        Refused {
            reason,
            detail: detail.into(),
        }
    }
}

impl From<Refused> for prescale_gossip::Error {
    fn from(r: Refused) -> Self {
        prescale_gossip::Error::Refused {
            reason: r.reason,
            detail: r.detail,
        }
    }
}

/// Largest count the store can hold (SQLite integers are signed 64-bit).
pub const MAX_COUNT: u64 = i64::MAX as u64;

impl Admission {
    /// The rules of a forecaster of `region` keeping `retention_days` of series, at the
    /// precision every proxy of this build writes.
    pub fn new(region: impl Into<String>, retention_days: u64) -> Self {
        Admission {
            region: region.into(),
            user_count_precision: HyperLogLog::DEFAULT_PRECISION,
            retention_ms: retention_days.saturating_mul(86_400_000),
        }
    }

    /// Whether the store takes `sketch` at node time `now_ms`.
    pub fn check(&self, sketch: &Sketch, now_ms: u64) -> Result<(), Refused> {
        if sketch.region != self.region {
            return Err(Refused::new(
                Refusal::WrongRegion,
                format!(
                    "sketch {}#{} is of region `{}`, this forecaster stores region `{}` (check the proxy's node.region and export.forecaster)",
                    sketch.node, sketch.sequence, sketch.region, self.region
                ),
            ));
        }
        let oldest = now_ms.saturating_sub(self.retention_ms);
        if sketch.interval_start_ms < oldest {
            return Err(Refused::new(
                Refusal::BeyondRetention,
                format!(
                    "sketch {}#{} starts at {} ms, before the retention's start at {oldest} ms",
                    sketch.node, sketch.sequence, sketch.interval_start_ms
                ),
            ));
        }
        if sketch.interval_start_ms > now_ms.saturating_add(MAX_AHEAD_MS) {
            return Err(Refused::new(
                Refusal::InTheFuture,
                format!(
                    "sketch {}#{} starts at {} ms, {} s ahead of this forecaster's clock (at most {} s allowed: check the proxy's clock)",
                    sketch.node,
                    sketch.sequence,
                    sketch.interval_start_ms,
                    (sketch.interval_start_ms - now_ms) / 1000,
                    MAX_AHEAD_MS / 1000
                ),
            ));
        }
        for entry in &sketch.entries {
            let key = &entry.key;
            let precision = entry.stats.users.precision();
            if precision != self.user_count_precision {
                return Err(Refused::new(
                    Refusal::UserCountPrecision,
                    format!(
                        "sketch {}#{} entry {}/{}/{} counts users at HyperLogLog precision {precision}, the region's is {}",
                        sketch.node,
                        sketch.sequence,
                        key.profile,
                        key.origin_region,
                        key.fleet,
                        self.user_count_precision
                    ),
                ));
            }
            let stats = &entry.stats;
            for (what, value) in [
                ("requests", stats.requests),
                ("errors", stats.errors),
                ("bytes_in", stats.bytes_in),
                ("bytes_out", stats.bytes_out),
            ] {
                if value > MAX_COUNT {
                    return Err(Refused::new(
                        Refusal::CountOverflow,
                        format!(
                            "sketch {}#{} entry {}/{}/{}: {what} {value} exceeds the store's largest count {MAX_COUNT}",
                            sketch.node, sketch.sequence, key.profile, key.origin_region, key.fleet
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prescale_gossip::EntryKey;

    const NOW: u64 = 1_800_000_000_000;

    fn rules() -> Admission {
        Admission::new("eu", 7)
    }

    fn sketch(region: &str, start_ms: u64) -> Sketch {
        let mut s = Sketch::new("proxy-1", region, start_ms, start_ms + 10_000);
        let e = s.entry(EntryKey {
            profile: "browsing".into(),
            origin_region: "eu".into(),
            fleet: "web".into(),
        });
        e.requests = 10;
        e.users.insert(1);
        s
    }

    fn reason(result: Result<(), Refused>) -> Option<Refusal> {
        result.err().map(|r| r.reason)
    }

    #[test]
    fn a_sketch_of_the_region_within_the_window_is_taken() {
        assert_eq!(
            reason(rules().check(&sketch("eu", NOW - 60_000), NOW)),
            None
        );
        // Exactly at both ends of the window.
        let oldest = NOW - 7 * 86_400_000;
        assert_eq!(reason(rules().check(&sketch("eu", oldest), NOW)), None);
        assert_eq!(
            reason(rules().check(&sketch("eu", NOW + MAX_AHEAD_MS), NOW)),
            None
        );
        // An empty sketch (a quiet interval) carries no user counts to check.
        let quiet = Sketch::new("proxy-1", "eu", NOW, NOW + 10_000);
        assert_eq!(reason(rules().check(&quiet, NOW)), None);
    }

    #[test]
    fn each_poison_is_refused_with_its_reason() {
        let r = rules();
        assert_eq!(
            reason(r.check(&sketch("us", NOW), NOW)),
            Some(Refusal::WrongRegion)
        );
        assert_eq!(
            reason(r.check(&sketch("eu", NOW - 7 * 86_400_000 - 1), NOW)),
            Some(Refusal::BeyondRetention)
        );
        assert_eq!(
            reason(r.check(&sketch("eu", NOW + MAX_AHEAD_MS + 1), NOW)),
            Some(Refusal::InTheFuture)
        );
        let mut coarse = sketch("eu", NOW);
        coarse.entries[0].stats.users = HyperLogLog::new(12).expect("precision");
        let refused = r.check(&coarse, NOW).expect_err("other precision");
        assert_eq!(refused.reason, Refusal::UserCountPrecision);
        assert!(refused.detail.contains("precision 12"), "{refused}");
        for field in 0..4 {
            let mut big = sketch("eu", NOW);
            let stats = &mut big.entries[0].stats;
            let value = MAX_COUNT + 1;
            match field {
                0 => stats.requests = value,
                1 => {
                    stats.requests = u64::MAX;
                    stats.errors = value
                }
                2 => stats.bytes_in = value,
                _ => stats.bytes_out = value,
            }
            assert_eq!(
                reason(r.check(&big, NOW)),
                Some(Refusal::CountOverflow),
                "field {field}"
            );
        }
        // Near the epoch the window's start does not wrap around.
        assert_eq!(reason(r.check(&sketch("eu", 0), 1_000)), None);
    }
}
