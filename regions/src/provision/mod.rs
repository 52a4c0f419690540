//! Provisioners: what turns a fleet's planned instance count into running backends. One trait,
//! chosen per fleet in config (`[fleets.provisioner]`); [`process`] is the local one (real
//! processes from a command template on free loopback ports).
//!
//! The call contract, as the live driver keeps it: [`Provisioner::reconcile`] is called on every
//! driver step with the node time and the instances the plan wants serving (warming and ready
//! ones count; draining ones do not); it returns quickly (bounded health checks, no waiting for
//! a process); [`Provisioner::backends`] is what the proxies are told afterwards.
//!
//! Invariants every provisioner keeps: a failure (a start that fails, a process that exits, a
//! health check that never passes) is retried with backoff, counted and shown in
//! [`ProvisionerStatus`], and never shrinks capacity: the wanted count stays what the plan said,
//! and a replacement is started for an instance that died. A backend is stopped only after it
//! drained: marked draining (the proxies stop sending new requests) for the drain time first.

pub mod process;

use prescale_gossip::PlannedBackend;
use serde::Serialize;

pub use process::{ProcessProvisioner, ProcessSettings};

/// Drives one fleet's instances toward the planned count.
pub trait Provisioner: Send {
    /// The config name of this provisioner (`process`, ...).
    fn kind(&self) -> &'static str;

    /// Steer toward `desired` serving instances at node time `now_ms`: start what is missing,
    /// drain what is extra, stop what has drained, replace what died.
    fn reconcile(&mut self, now_ms: u64, desired: u32);

    /// Forecast-only mode: watch health and exits so the status tells the truth, but start and
    /// stop nothing (instances draining stay draining).
    fn observe(&mut self, now_ms: u64);

    /// Every instance with its phase, as the proxies must see it.
    fn backends(&self) -> Vec<PlannedBackend>;

    /// Counts, failures and the last error, for the API and metrics.
    fn status(&self) -> ProvisionerStatus;

    /// Stop every instance now (a clean shutdown of the forecaster; in-flight requests get the
    /// instances' own grace period).
    fn stop_all(&mut self);
}

/// A provisioner error as the API shows it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ProvisionerError {
    /// Node time, unix ms.
    pub at_ms: u64,
    pub message: String,
}

/// What a provisioner reports.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ProvisionerStatus {
    pub kind: &'static str,
    /// Serving instances the plan wants.
    pub desired: u32,
    pub warming: u32,
    pub ready: u32,
    pub draining: u32,
    /// Instances started (or adopted after a restart) since this process began.
    pub started_total: u64,
    pub adopted_total: u64,
    /// Starts that failed: the command could not run, the process exited before it was ready,
    /// or it did not pass its health check in time.
    pub start_failures_total: u64,
    /// Ready instances that exited without being asked to (then replaced).
    pub unexpected_exits_total: u64,
    pub stopped_total: u64,
    pub last_error: Option<ProvisionerError>,
    /// While backing off after failures: when the next start may be tried (node time, unix ms).
    pub retry_at_ms: Option<u64>,
}
