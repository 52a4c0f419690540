//! Provisioners: what turns a fleet's plan into capacity. One trait, chosen per fleet in config
//! (`[fleets.provisioner]`): [`process`] runs the instances itself (real processes from a command
//! template on free loopback ports); the remote ones ask something else to run them — [`exec`]
//! (a command given the desired counts), [`webhook`] (an HTTP POST of the desired state) and
//! [`kubernetes`] (the `replicas` of a Deployment or StatefulSet through the scale subresource),
//! all three on the machinery of [`remote`].
//!
//! The call contract, as the live driver keeps it: [`Provisioner::reconcile`] is called on every
//! driver step (at least every 200 ms of real time) with the node time and the fleet's
//! [`ProvisionTarget`]: the serving instances the plan wants (warming and ready ones count;
//! draining ones do not), its tiers and warm pool, the plan version that carries them and the
//! plan's reasons. It returns quickly: bounded health checks, no waiting for a process, and no
//! remote call on the driver's thread (the remote provisioners hand the target to a worker
//! thread and pick its results up at later steps). [`Provisioner::backends`] is what the proxies
//! are told afterwards: the instances a `process` provisioner runs, or `None` for the remote
//! kinds, whose fleets keep the `backends` of their config (a Kubernetes Service, a load
//! balancer) in the proxies.
//!
//! Invariants every provisioner keeps: a failure (a start that fails, a process that exits, a
//! health check that never passes, a call that fails or times out) is retried with backoff,
//! counted and shown in [`ProvisionerStatus`], and never shrinks capacity: the wanted count stays
//! what the plan said (a remote provisioner keeps asking for its last target; the brain's own
//! count of instances is not touched by a failure), and a replacement is started for an instance
//! that died. A backend is stopped only after it drained: marked draining (the proxies stop
//! sending new requests) for the drain time first. In forecast-only mode
//! ([`Provisioner::observe`]) nothing is started, stopped or asked for.

pub mod applied;
pub mod exec;
pub mod kubernetes;
pub mod process;
pub mod remote;
pub mod webhook;

use prescale_brain::brain::WarmPool;
use prescale_brain::planner::Tiers;
use prescale_gossip::PlannedBackend;
use serde::Serialize;

pub use exec::{ExecBackend, ExecSettings};
pub use kubernetes::{KubernetesBackend, KubernetesSettings, WorkloadKind};
pub use process::{ProcessProvisioner, ProcessSettings};
pub use remote::{RemoteProvisioner, RemoteStatus};
pub use webhook::{WebhookBackend, WebhookSettings};

/// What the plan asks of one fleet, as the live driver hands it to the fleet's provisioner at
/// every step (built from the brain's fleet status after the cold-start floor is applied).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ProvisionTarget {
    pub region: String,
    pub fleet: String,
    /// Serving instances the plan wants (warming and ready ones count; draining ones do not):
    /// what the provisioner steers to.
    pub instances: u32,
    /// The plan's tiers: baseline, predictive, burst, guard, warm pool, and their total.
    pub tiers: Tiers,
    /// How the warm pool is shared out (dedicated sub-pools first, then the shared one).
    pub warm_pools: Vec<WarmPool>,
    /// The version of the plan that carries this target (`None` until a plan was issued).
    pub plan_version: Option<u64>,
    /// Why the plan is what it is.
    pub reasons: Vec<String>,
}

/// A provisioner that cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// A setting that cannot be used: `key` names it, relative to the fleet's `provisioner`
    /// table (e.g. `kubeconfig`).
    #[error("{key}: {message}")]
    Config { key: &'static str, message: String },
    /// The machine refused something the provisioner needs (a thread, a runtime).
    #[error("cannot {what}: {source}")]
    Io {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

impl SetupError {
    pub(crate) fn config(key: &'static str, message: impl Into<String>) -> Self {
        SetupError::Config {
            key,
            message: message.into(),
        }
    }
}

/// Drives one fleet's instances toward the planned count.
pub trait Provisioner: Send {
    /// The config name of this provisioner (`process`, ...).
    fn kind(&self) -> &'static str;

    /// Steer toward `target` (its `instances` serving) at node time `now_ms`: start what is
    /// missing, drain what is extra, stop what has drained, replace what died — or, for a remote
    /// provisioner, have the target carried out. Returns without waiting on anything outside.
    fn reconcile(&mut self, now_ms: u64, target: &ProvisionTarget);

    /// Forecast-only mode: watch health and exits (or read the remote side's counts, where it
    /// can be read without changing anything) so the status tells the truth, but start, stop
    /// and ask for nothing (instances draining stay draining).
    fn observe(&mut self, now_ms: u64);

    /// Every instance with its phase, as the proxies must see it; `None` when the proxies keep
    /// routing to the fleet's configured `backends` (the remote kinds).
    fn backends(&self) -> Option<Vec<PlannedBackend>>;

    /// Counts, failures and the last error, for the API and metrics.
    fn status(&self) -> ProvisionerStatus;

    /// Stop every instance now (a clean shutdown of the forecaster; in-flight requests get the
    /// instances' own grace period). The remote kinds leave the fleet as it is (its instances
    /// are not prescale's to stop) and only end their worker.
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
    /// Instances started (or adopted after a restart) since this process began (`process`
    /// only: the remote kinds start nothing themselves).
    pub started_total: u64,
    pub adopted_total: u64,
    /// Starts that failed: the command could not run, the process exited before it was ready,
    /// or it did not pass its health check in time; for the remote kinds, calls that failed or
    /// timed out.
    pub start_failures_total: u64,
    /// Ready instances that exited without being asked to (then replaced; `process` only).
    pub unexpected_exits_total: u64,
    pub stopped_total: u64,
    pub last_error: Option<ProvisionerError>,
    /// While backing off after failures: when the next start or call may be tried (node time,
    /// unix ms).
    pub retry_at_ms: Option<u64>,
    /// The remote kinds' calls and what they last carried out; `None` for `process`.
    pub remote: Option<RemoteStatus>,
}
