//! Plans from the region's forecaster as the proxy applies them ([`crate::dataplane::DataPlane::apply_plan`]):
//! what came of a plan, per fleet, and why a plan or a fleet's part of it was refused.
//!
//! Invariants: a refused plan, or a refused part of one, changes nothing (the fleet keeps its
//! last set: fail-static); only a plan for the node's own region and newer than the applied one
//! is applied.

use std::fmt;

use serde::Serialize;

/// Why a plan, or one fleet's part of it, was not applied.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("plan for region `{plan}` ignored: this node serves region `{node}`")]
    OtherRegion { plan: String, node: String },
    #[error("plan version {version} ignored: version {applied} is applied already")]
    NotNewer { version: u64, applied: u64 },
    #[error("fleet `{fleet}`: planned backend `{address}` is not an ip:port address; the fleet keeps its backends")]
    BadAddress { fleet: String, address: String },
    #[error("fleet `{fleet}`: planned backend `{address}` is listed twice; the fleet keeps its backends")]
    DuplicateAddress { fleet: String, address: String },
    #[error("fleet `{fleet}` has static backends (no provisioner): a plan does not replace them")]
    StaticFleet { fleet: String },
}

/// Backends of a fleet per phase.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PhaseCounts {
    pub ready: usize,
    pub warming: usize,
    pub draining: usize,
}

/// How a fleet's set changed: backends new to it, kept (with their state), and gone.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SetChange {
    pub added: usize,
    pub kept: usize,
    pub removed: usize,
}

/// What one fleet made of its part of a plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FleetOutcome {
    /// Provisioned fleet: its set is now the plan's.
    Replaced(SetChange),
    /// Provisioned fleet, the plan lists no backends: the set stays.
    Kept,
    /// Static fleet: its backends are the config's (`ignored_backends`: the plan listed some).
    Static { ignored_backends: bool },
    /// The plan's backends could not be used: the set stays.
    Refused(PlanError),
}

/// One fleet named in an applied plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FleetApplied {
    pub fleet: String,
    pub outcome: FleetOutcome,
    /// The fleet's backends after the plan.
    pub phases: PhaseCounts,
}

/// An applied plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlanApplied {
    pub version: u64,
    pub issued_at_ms: u64,
    pub fleets: Vec<FleetApplied>,
    /// Fleets the plan names that this node does not have (not an error: reported).
    pub unknown_fleets: Vec<String>,
}

/// The version and issue time of the plan last applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct PlanStamp {
    pub version: u64,
    pub issued_at_ms: u64,
}

impl fmt::Display for PlanApplied {
    /// One line: per fleet its backends by phase and what the plan did to its set.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, fleet) in self.fleets.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            let p = fleet.phases;
            write!(
                f,
                "{}: {} ready, {} warming, {} draining",
                fleet.fleet, p.ready, p.warming, p.draining
            )?;
            match &fleet.outcome {
                FleetOutcome::Replaced(c) => write!(
                    f,
                    " ({} added, {} kept, {} removed)",
                    c.added, c.kept, c.removed
                )?,
                FleetOutcome::Kept => f.write_str(" (no backends planned: kept)")?,
                FleetOutcome::Static { .. } => f.write_str(" (static)")?,
                FleetOutcome::Refused(e) => write!(f, " (refused: {e})")?,
            }
        }
        if self.fleets.is_empty() {
            f.write_str("no fleet of this node")?;
        }
        Ok(())
    }
}
