//! Every message of the protocol. Proxies send [`Message::Sketch`]; the forecaster answers each
//! with an [`Ack`] and pushes [`ModelUpdate`]s and [`PlanUpdate`]s the other way. Plans are
//! generic data here: this crate carries them and does not interpret them.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::model::ProfileModel;
use crate::sketch::{check_name, Sketch};

/// Longest reason string accepted in a plan.
pub const MAX_REASON_LEN: usize = 1024;

/// What the receiver did with a sketch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AckOutcome {
    /// The sink accepted it.
    Stored,
    /// It (or a later sequence of the same node) was already stored; nothing was done.
    Duplicate,
    /// The sink will never store it, for this reason: the node drops it from its spool (and
    /// counts it) rather than resending it ahead of every later sketch forever.
    Refused(Refusal),
}

/// Why a forecaster refuses a well-formed sketch for good. Resending cannot help: each is a
/// mismatch between the sender and the forecaster that an operator fixes in configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Refusal {
    /// The sketch's region is not the forecaster's.
    WrongRegion,
    /// A unique-user count is not at the region's HyperLogLog precision, so it cannot be merged
    /// into the region's series.
    UserCountPrecision,
    /// Its interval is older than the forecaster keeps series for.
    BeyondRetention,
    /// Its interval starts further ahead of the forecaster's clock than clock skew explains.
    InTheFuture,
    /// Adding its counts to the series would overflow them.
    CountOverflow,
}

impl Refusal {
    /// Every reason, in a fixed order (for counters indexed by reason).
    pub const ALL: [Refusal; 5] = [
        Refusal::WrongRegion,
        Refusal::UserCountPrecision,
        Refusal::BeyondRetention,
        Refusal::InTheFuture,
        Refusal::CountOverflow,
    ];

    /// A stable snake_case name (metrics label, logs).
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::WrongRegion => "wrong_region",
            Refusal::UserCountPrecision => "user_count_precision",
            Refusal::BeyondRetention => "beyond_retention",
            Refusal::InTheFuture => "in_the_future",
            Refusal::CountOverflow => "count_overflow",
        }
    }

    /// Position in [`Refusal::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The receiver's answer to one sketch, sent only after the sink accepted it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    pub node: String,
    pub sequence: u64,
    pub outcome: AckOutcome,
}

/// A new profile model, published by the forecaster of `region`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelUpdate {
    pub region: String,
    pub model: ProfileModel,
}

/// Desired instances of one tier (e.g. "baseline", "predictive", "burst", "warm").
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TierTarget {
    pub tier: String,
    pub instances: u32,
}

/// Most backends one fleet plan may list.
pub const MAX_PLANNED_BACKENDS: usize = 4096;
/// Most profile grants one fleet plan may list.
pub const MAX_GRANTS: usize = 256;
/// Most proxies one grant may be split over.
pub const MAX_GRANT_SHARES: usize = 1024;

/// Where a provisioned backend is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendPhase {
    /// Requested, not yet passing its health check: never routed to.
    Warming,
    /// Serving: routed to while the proxy's own health check agrees.
    Ready,
    /// Marked for removal: no new requests; in-flight ones finish before it is stopped.
    Draining,
}

/// One backend of a provisioned fleet as the forecaster's provisioner sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedBackend {
    /// `ip:port` the proxy connects to.
    pub address: String,
    pub phase: BackendPhase,
    /// Unix milliseconds when it entered `phase`.
    pub since_ms: u64,
}

/// Capacity granted to one profile when the fleet's cap binds: each proxy admits the profile's
/// requests up to its share and sheds the rest, lowest revenue first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProfileGrant {
    pub profile: String,
    /// Relative revenue per request (proxies shed the lowest first).
    pub revenue_weight_milli: u64,
    /// Requests per minute the whole region may send this profile to the fleet.
    pub requests_per_minute: u64,
    /// Each proxy's part of it, by its share of the profile's recent requests; a proxy not
    /// listed takes an even share.
    pub shares: Vec<NodeShare>,
}

/// One proxy's part of a grant.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeShare {
    pub node: String,
    pub requests_per_minute: u64,
}

/// The plan for one fleet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetPlan {
    pub fleet: String,
    pub tiers: Vec<TierTarget>,
    /// Profiles to shed first when the fleet is saturated, first shed first.
    pub shed_order: Vec<String>,
    /// Human-readable reasons for this plan.
    pub reasons: Vec<String>,
    /// The fleet's provisioned backends, all of them (a proxy replaces its set with this list);
    /// `None` for a fleet whose backends are static in the proxies' config.
    pub backends: Option<Vec<PlannedBackend>>,
    /// Per-profile grants while a cap binds; empty when every profile is admitted.
    pub grants: Vec<ProfileGrant>,
}

/// A capacity plan for a region, versioned so proxies ignore stale ones.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanUpdate {
    pub region: String,
    /// Monotonic per region.
    pub version: u64,
    /// Unix milliseconds.
    pub issued_at_ms: u64,
    pub fleets: Vec<FleetPlan>,
}

/// Any message of the protocol.
#[derive(Clone, Debug, PartialEq)]
pub enum Message {
    Sketch(Sketch),
    Ack(Ack),
    ModelUpdate(ModelUpdate),
    PlanUpdate(PlanUpdate),
}

impl Message {
    pub fn kind(&self) -> MessageKind {
        match self {
            Message::Sketch(_) => MessageKind::Sketch,
            Message::Ack(_) => MessageKind::Ack,
            Message::ModelUpdate(_) => MessageKind::ModelUpdate,
            Message::PlanUpdate(_) => MessageKind::PlanUpdate,
        }
    }

    /// Check the invariants of the payload (the codec runs this after parsing).
    pub fn validate(&self, max_entries: usize) -> Result<()> {
        self.check(max_entries, true)
    }

    /// [`Message::validate`] without re-parsing locally built histograms (used when encoding).
    pub(crate) fn check(&self, max_entries: usize, deep: bool) -> Result<()> {
        match self {
            Message::Sketch(s) => s.check(max_entries, deep),
            Message::Ack(a) => check_name("ack node", &a.node, false),
            Message::ModelUpdate(m) => {
                check_name("model region", &m.region, false)?;
                m.model
                    .validate()
                    .map_err(|e| Error::invalid("model", e.to_string()))?;
                for c in &m.model.centroids {
                    check_name("model centroid name", &c.name, true)?;
                }
                Ok(())
            }
            Message::PlanUpdate(p) => {
                check_name("plan region", &p.region, false)?;
                for f in &p.fleets {
                    check_name("plan fleet", &f.fleet, false)?;
                    for t in &f.tiers {
                        check_name("plan tier", &t.tier, false)?;
                    }
                    if let Some(backends) = &f.backends {
                        if backends.len() > MAX_PLANNED_BACKENDS {
                            return Err(Error::invalid(
                                "plan backends",
                                format!(
                                    "{} backends, at most {MAX_PLANNED_BACKENDS}",
                                    backends.len()
                                ),
                            ));
                        }
                        let mut seen = std::collections::HashSet::with_capacity(backends.len());
                        for b in backends {
                            let addr: std::net::SocketAddr = b.address.parse().map_err(|_| {
                                Error::invalid(
                                    "plan backend",
                                    format!("`{}` is not an ip:port address", b.address),
                                )
                            })?;
                            if !seen.insert(addr) {
                                return Err(Error::invalid(
                                    "plan backend",
                                    format!("`{addr}` listed twice"),
                                ));
                            }
                        }
                    }
                    if f.grants.len() > MAX_GRANTS {
                        return Err(Error::invalid(
                            "plan grants",
                            format!("{} grants, at most {MAX_GRANTS}", f.grants.len()),
                        ));
                    }
                    for p in &f.shed_order {
                        check_name("plan shed profile", p, false)?;
                    }
                    for g in &f.grants {
                        check_name("plan grant profile", &g.profile, false)?;
                        if g.shares.len() > MAX_GRANT_SHARES {
                            return Err(Error::invalid(
                                "plan grant shares",
                                format!("{} shares, at most {MAX_GRANT_SHARES}", g.shares.len()),
                            ));
                        }
                        for share in &g.shares {
                            check_name("plan grant node", &share.node, false)?;
                        }
                    }
                    if let Some(r) = f.reasons.iter().find(|r| r.len() > MAX_REASON_LEN) {
                        return Err(Error::invalid(
                            "plan reason",
                            format!("{} bytes, at most {MAX_REASON_LEN}", r.len()),
                        ));
                    }
                }
                Ok(())
            }
        }
    }
}

/// The message kind byte of the envelope.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum MessageKind {
    Sketch = 1,
    Ack = 2,
    ModelUpdate = 3,
    PlanUpdate = 4,
}

impl TryFrom<u8> for MessageKind {
    type Error = Error;

    fn try_from(b: u8) -> Result<Self> {
        Ok(match b {
            1 => MessageKind::Sketch,
            2 => MessageKind::Ack,
            3 => MessageKind::ModelUpdate,
            4 => MessageKind::PlanUpdate,
            other => return Err(Error::UnknownKind(other)),
        })
    }
}
