//! What the remote provisioners (`exec`, `webhook`, `kubernetes`) share: a worker thread per
//! fleet that carries targets out, so the live driver's step never waits on a command or a
//! network call.
//!
//! The driver's side ([`RemoteProvisioner`], the [`Provisioner`] the driver holds) only puts the
//! latest [`ProvisionTarget`] in a slot shared with the worker and reads the worker's results;
//! the worker ([`RemoteBackend`], one per kind) makes the calls:
//!
//! * a target goes out once a plan version carries it, and again only when its capacity changed
//!   (each kind says what counts: [`RemoteBackend::capacity_key`]) or after a failure;
//! * a failed or timed-out call is retried with exponential backoff (1 s doubling to 30 s, each
//!   pause drawn from its upper half, so fleets that failed together do not retry together),
//!   counted (`calls.error`, `calls.timeout`, and `start_failures_total`) and shown as the last
//!   error; the target it retries is the one it first tried, with its plan version and body, as
//!   long as the plan asks for the same capacity (a receiver that applied a call whose answer
//!   was lost sees the same plan version again);
//! * a call that took only a step toward its target (Kubernetes' scale-in steps) is followed by
//!   the next after [`STEP_EVERY`];
//! * a kind that can read the remote side without changing it (Kubernetes) is read every
//!   [`READ_EVERY`], in forecast-only mode too; nothing else is called in forecast-only mode.
//!
//! Never a cause of scale-down: a failure leaves the counts and the last carried-out target as
//! they were (the brain's own count of instances is not touched by a provisioner at all). The
//! last carried-out target is kept in the database ([`super::applied`]), so a restarted
//! forecaster starts from it: the brain's fleet starts at its instances (and the cold window
//! keeps them), and the same capacity is not asked for again.
//!
//! Counts: what the remote side reported (a command's or receiver's answer, the workload's
//! status); a call carried out whose answer had none counts its target's instances as ready
//! (`assumed`, as does a restart from the stored target); before either, none (`unknown`).

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use prescale_gossip::{NodeClock, PlannedBackend};
use rand::Rng;
use serde::Serialize;

use super::applied::{AppliedRecord, AppliedStore};
use super::{ProvisionTarget, Provisioner, ProvisionerError, ProvisionerStatus};

/// First pause after a failed call; it doubles with each further failure …
pub const MIN_BACKOFF: Duration = Duration::from_secs(1);
/// … up to this.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How often a readable remote side is read when nothing else is due.
pub const READ_EVERY: Duration = Duration::from_secs(2);
/// Pause before the next step toward a target a call reached only part of the way.
pub const STEP_EVERY: Duration = Duration::from_secs(2);
/// How long [`Provisioner::stop_all`] waits for a worker in the middle of a call.
const STOP_WAIT: Duration = Duration::from_secs(2);

/// Instances as the remote side reports them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub warming: u32,
    pub ready: u32,
    pub draining: u32,
}

/// What one successful call achieved.
#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    /// Counts the remote side reported in its answer, if it did.
    pub counts: Option<Counts>,
    /// The target is carried out; `false`: a step was taken toward it (call again).
    pub reached: bool,
    /// What was done, for the log and the status.
    pub note: String,
    /// Something the answer got wrong that did not undo the call (e.g. counts that could not be
    /// read), shown as the last error without counting a failure.
    pub warning: Option<String>,
}

/// Why a call failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallError {
    /// It did not finish within its timeout (and was abandoned or killed).
    pub timed_out: bool,
    pub message: String,
}

impl CallError {
    pub fn failed(message: impl Into<String>) -> Self {
        CallError {
            timed_out: false,
            message: message.into(),
        }
    }

    pub fn timed_out(message: impl Into<String>) -> Self {
        CallError {
            timed_out: true,
            message: message.into(),
        }
    }
}

/// One kind of remote provisioner: the calls, made on the worker thread (each bounded by the
/// kind's own timeout).
pub trait RemoteBackend: Send + 'static {
    /// The config name (`exec`, `webhook`, `kubernetes`).
    fn kind(&self) -> &'static str;

    /// What of a target this kind acts on: two targets with the same key need no new call. By
    /// default the instances, tiers and warm pools (what the document sent describes).
    fn capacity_key(target: &ProvisionTarget) -> String
    where
        Self: Sized,
    {
        serde_json::json!({
            "instances": target.instances,
            "tiers": target.tiers,
            "warm_pools": target.warm_pools,
        })
        .to_string()
    }

    /// Carry `target` out (or take the next step toward it).
    fn apply(&mut self, target: &ProvisionTarget) -> Result<Outcome, CallError>;

    /// Read the remote side's counts without changing anything; `None`: this kind cannot.
    fn read(&mut self) -> Option<Result<Counts, CallError>> {
        None
    }
}

/// Calls of one sort by outcome.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CallCounts {
    pub ok: u64,
    pub error: u64,
    pub timeout: u64,
}

impl CallCounts {
    fn count(&mut self, result: &Result<(), &CallError>) {
        match result {
            Ok(()) => self.ok += 1,
            Err(e) if e.timed_out => self.timeout += 1,
            Err(_) => self.error += 1,
        }
    }
}

/// A target as the status shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TargetView {
    pub plan_version: u64,
    pub instances: u32,
    /// Node time it was carried out (for a pending target: when it was first tried, if yet).
    pub at_ms: Option<u64>,
}

/// The remote part of a provisioner's status (`/api/v1/plan`, metrics).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RemoteStatus {
    /// Calls that carry a target out (or a step of it).
    pub calls: CallCounts,
    /// Reads of the remote side's counts (kinds that can be read).
    pub reads: CallCounts,
    /// The last target carried out.
    pub applied: Option<TargetView>,
    /// A target asked for and not carried out yet (being called for, stepped toward or
    /// retried); `None` when the plan's target is carried out or none was issued yet.
    pub pending: Option<TargetView>,
    /// Where `warming`/`ready`/`draining` come from: `reported`, `assumed` (the last target
    /// carried out counts as ready; the remote side reported nothing) or `unknown`.
    pub counts: &'static str,
    /// What the last successful call did.
    pub last_note: Option<String>,
}

/// A target carried out, as the worker remembers it.
#[derive(Clone, Debug)]
struct Applied {
    plan_version: u64,
    instances: u32,
    capacity: String,
    at_ms: u64,
}

/// The slot between the driver and the worker.
struct State {
    /// The plan's latest target (driver → worker).
    wanted: Option<ProvisionTarget>,
    /// `false` in forecast-only mode: the worker carries nothing out.
    active: bool,
    stop: bool,
    /// The target being carried out (first tried with this version and body); retried as is
    /// while the plan asks for the same capacity.
    pinned: Option<(ProvisionTarget, String, u64)>,
    applied: Option<Applied>,
    counts: Option<Counts>,
    counts_reported: bool,
    calls: CallCounts,
    reads: CallCounts,
    consecutive_failures: u32,
    retry_at: Option<Instant>,
    step_at: Option<Instant>,
    next_read: Instant,
    last_error: Option<ProvisionerError>,
    last_read_error: Option<String>,
    last_note: Option<String>,
    exited: bool,
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Where a fleet is, for the worker's logs and records.
#[derive(Clone, Debug)]
pub struct FleetRef {
    pub region: String,
    pub fleet: String,
}

/// A remote provisioner as the live driver holds it. See the module docs.
pub struct RemoteProvisioner {
    kind: &'static str,
    shared: Arc<Shared>,
    capacity_key: fn(&ProvisionTarget) -> String,
    speed: f64,
    now_ms: u64,
    worker: Option<std::thread::JoinHandle<()>>,
}

impl RemoteProvisioner {
    /// Starts the worker for `fleet` with `backend`. The fleet starts from what `store` says
    /// was last carried out (by the same kind), then from one read of the remote side where the
    /// kind can be read (made here, bounded by the kind's timeout).
    pub fn start<B: RemoteBackend>(
        mut backend: B,
        fleet: FleetRef,
        clock: NodeClock,
        store: Option<AppliedStore>,
    ) -> std::io::Result<Self> {
        let kind = backend.kind();
        let now_ms = clock.now_ms();
        let mut last_error = None;
        let applied = match store.as_ref().map(|s| s.get(&fleet.region, &fleet.fleet)) {
            Some(Ok(Some(record))) if record.kind == kind => Some(Applied {
                plan_version: record.plan_version,
                instances: record.instances,
                capacity: record.capacity,
                at_ms: record.at_ms,
            }),
            Some(Err(e)) => {
                last_error = Some(ProvisionerError {
                    at_ms: now_ms,
                    message: format!("cannot read the last target carried out: {e}"),
                });
                None
            }
            _ => None,
        };
        let mut counts = applied.as_ref().map(|a| Counts {
            ready: a.instances,
            ..Counts::default()
        });
        let mut counts_reported = false;
        let mut reads = CallCounts::default();
        if let Some(read) = backend.read() {
            reads.count(&read.as_ref().map(|_| ()));
            match read {
                Ok(read) => {
                    counts = Some(read);
                    counts_reported = true;
                }
                Err(e) => {
                    tracing::warn!(fleet = %fleet.fleet, provisioner = kind, error = %e.message, "cannot read the fleet's instances");
                    last_error = Some(ProvisionerError {
                        at_ms: now_ms,
                        message: format!("read: {}", e.message),
                    });
                }
            }
        }
        if let Some(a) = &applied {
            tracing::info!(fleet = %fleet.fleet, provisioner = kind, plan_version = a.plan_version, instances = a.instances, "starting from the last target carried out");
        }
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                wanted: None,
                active: false,
                stop: false,
                pinned: None,
                applied,
                counts,
                counts_reported,
                calls: CallCounts::default(),
                reads,
                consecutive_failures: 0,
                retry_at: None,
                step_at: None,
                next_read: Instant::now() + READ_EVERY,
                last_error,
                last_read_error: None,
                last_note: None,
                exited: false,
            }),
            wake: Condvar::new(),
        });
        let worker_shared = Arc::clone(&shared);
        let worker = std::thread::Builder::new()
            .name(format!("provision-{}", fleet.fleet))
            .spawn(move || {
                let worker = Worker {
                    shared: worker_shared,
                    fleet,
                    clock,
                    store,
                };
                worker.run(&mut backend);
            })?;
        Ok(RemoteProvisioner {
            kind,
            shared,
            capacity_key: B::capacity_key,
            speed: clock.speed(),
            now_ms,
            worker: Some(worker),
        })
    }

    fn set_active(&mut self, now_ms: u64, active: bool, target: Option<&ProvisionTarget>) {
        self.now_ms = now_ms;
        let mut state = self.shared.lock();
        let mut wake = state.active != active;
        state.active = active;
        if let Some(target) = target {
            let key = self.capacity_key;
            let changed = state
                .wanted
                .as_ref()
                .is_none_or(|w| w.plan_version.is_none() || key(w) != key(target));
            if state.wanted.as_ref() != Some(target) {
                state.wanted = Some(target.clone());
            }
            if changed {
                // A new capacity is tried at once (after any backoff), not after a step pause
                // meant for the previous one.
                state.step_at = None;
                wake = true;
            }
        }
        drop(state);
        if wake {
            self.shared.wake.notify_all();
        }
    }
}

impl Provisioner for RemoteProvisioner {
    fn kind(&self) -> &'static str {
        self.kind
    }

    fn reconcile(&mut self, now_ms: u64, target: &ProvisionTarget) {
        self.set_active(now_ms, true, Some(target));
    }

    fn observe(&mut self, now_ms: u64) {
        self.set_active(now_ms, false, None);
    }

    fn backends(&self) -> Option<Vec<PlannedBackend>> {
        None
    }

    fn status(&self) -> ProvisionerStatus {
        let state = self.shared.lock();
        let counts = state.counts.unwrap_or_default();
        let key = self.capacity_key;
        let pending = match (&state.wanted, &state.applied) {
            (Some(w), applied) if w.plan_version.is_some() => {
                let carried_out = applied.as_ref().is_some_and(|a| a.capacity == key(w));
                (!carried_out).then(|| {
                    let pinned = state
                        .pinned
                        .as_ref()
                        .filter(|(_, capacity, _)| *capacity == key(w));
                    TargetView {
                        plan_version: pinned
                            .and_then(|(p, _, _)| p.plan_version)
                            .or(w.plan_version)
                            .unwrap_or_default(),
                        instances: w.instances,
                        at_ms: pinned.map(|(_, _, at)| *at),
                    }
                })
            }
            _ => None,
        };
        let now = Instant::now();
        let retry_at_ms = state
            .retry_at
            .filter(|&t| t > now && pending.is_some())
            .map(|t| self.now_ms + ((t - now).as_secs_f64() * 1000.0 * self.speed) as u64);
        ProvisionerStatus {
            kind: self.kind,
            desired: state
                .wanted
                .as_ref()
                .map(|w| w.instances)
                .or(state.applied.as_ref().map(|a| a.instances))
                .unwrap_or(0),
            warming: counts.warming,
            ready: counts.ready,
            draining: counts.draining,
            started_total: 0,
            adopted_total: 0,
            start_failures_total: state.calls.error + state.calls.timeout,
            unexpected_exits_total: 0,
            stopped_total: 0,
            last_error: state.last_error.clone(),
            retry_at_ms,
            remote: Some(RemoteStatus {
                calls: state.calls,
                reads: state.reads,
                applied: state.applied.as_ref().map(|a| TargetView {
                    plan_version: a.plan_version,
                    instances: a.instances,
                    at_ms: Some(a.at_ms),
                }),
                pending,
                counts: match (state.counts, state.counts_reported) {
                    (Some(_), true) => "reported",
                    (Some(_), false) => "assumed",
                    (None, _) => "unknown",
                },
                last_note: state.last_note.clone(),
            }),
        }
    }

    fn stop_all(&mut self) {
        self.shared.lock().stop = true;
        self.shared.wake.notify_all();
        let deadline = Instant::now() + STOP_WAIT;
        while !self.shared.lock().exited && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        match self.worker.take() {
            Some(worker) if self.shared.lock().exited => {
                let _ = worker.join();
            }
            // In the middle of a call: it ends by its own timeout, and nothing waits for it.
            _ => {}
        }
    }
}

impl Drop for RemoteProvisioner {
    fn drop(&mut self) {
        self.shared.lock().stop = true;
        self.shared.wake.notify_all();
    }
}

/// What the worker does next.
enum Job {
    Apply(ProvisionTarget, String),
    Read,
    Wait(Option<Instant>),
}

struct Worker {
    shared: Arc<Shared>,
    fleet: FleetRef,
    clock: NodeClock,
    store: Option<AppliedStore>,
}

impl Worker {
    fn run<B: RemoteBackend>(&self, backend: &mut B) {
        let mut can_read = true;
        let mut state = self.shared.lock();
        while !state.stop {
            let now_ms = self.clock.now_ms();
            match next_job(
                &mut state,
                B::capacity_key,
                can_read,
                Instant::now(),
                now_ms,
            ) {
                Job::Wait(until) => {
                    state = match until {
                        Some(until) => {
                            let wait = until.saturating_duration_since(Instant::now());
                            self.shared
                                .wake
                                .wait_timeout(state, wait)
                                .map(|(s, _)| s)
                                .unwrap_or_else(|p| p.into_inner().0)
                        }
                        None => self
                            .shared
                            .wake
                            .wait(state)
                            .unwrap_or_else(|p| p.into_inner()),
                    };
                }
                Job::Apply(target, capacity) => {
                    drop(state);
                    let result = backend.apply(&target);
                    state = self.shared.lock();
                    let carried_out =
                        self.record_apply(&mut state, backend.kind(), &target, capacity, result);
                    if let Some(record) = carried_out {
                        // Written without the lock: the driver's step never waits on SQLite.
                        drop(state);
                        let written = self.persist(&record);
                        state = self.shared.lock();
                        if let Err(message) = written {
                            state.last_error = Some(ProvisionerError {
                                at_ms: self.clock.now_ms(),
                                message,
                            });
                        }
                    }
                }
                Job::Read => {
                    drop(state);
                    let result = backend.read();
                    state = self.shared.lock();
                    match result {
                        Some(result) => self.record_read(&mut state, backend.kind(), result),
                        None => can_read = false,
                    }
                }
            }
        }
        state.exited = true;
    }

    fn record_apply(
        &self,
        state: &mut State,
        kind: &'static str,
        target: &ProvisionTarget,
        capacity: String,
        result: Result<Outcome, CallError>,
    ) -> Option<AppliedRecord> {
        state.calls.count(&result.as_ref().map(|_| ()));
        let now_ms = self.clock.now_ms();
        let version = target.plan_version.unwrap_or_default();
        match result {
            Ok(outcome) => {
                state.consecutive_failures = 0;
                state.retry_at = None;
                tracing::info!(fleet = %self.fleet.fleet, provisioner = kind, plan_version = version, instances = target.instances, note = %outcome.note, "provisioner call carried out");
                if let Some(counts) = outcome.counts {
                    state.counts = Some(counts);
                    state.counts_reported = true;
                } else if outcome.reached {
                    // Carried out and nothing said otherwise: counted as ready.
                    state.counts = Some(Counts {
                        ready: target.instances,
                        ..Counts::default()
                    });
                    state.counts_reported = false;
                }
                if let Some(warning) = outcome.warning {
                    tracing::warn!(fleet = %self.fleet.fleet, provisioner = kind, %warning, "provisioner answer");
                    state.last_error = Some(ProvisionerError {
                        at_ms: now_ms,
                        message: warning,
                    });
                }
                state.last_note = Some(outcome.note);
                if !outcome.reached {
                    state.step_at = Some(Instant::now() + STEP_EVERY);
                    return None;
                }
                state.step_at = None;
                state.pinned = None;
                state.applied = Some(Applied {
                    plan_version: version,
                    instances: target.instances,
                    capacity: capacity.clone(),
                    at_ms: now_ms,
                });
                Some(AppliedRecord {
                    kind: kind.to_string(),
                    plan_version: version,
                    instances: target.instances,
                    capacity,
                    at_ms: now_ms,
                })
            }
            Err(e) => {
                state.consecutive_failures += 1;
                let pause = backoff(state.consecutive_failures);
                state.retry_at = Some(Instant::now() + pause);
                let message = format!(
                    "plan version {version} ({} instances): {}",
                    target.instances, e.message
                );
                tracing::warn!(fleet = %self.fleet.fleet, provisioner = kind, timed_out = e.timed_out, retry_in_ms = pause.as_millis() as u64, %message, "provisioner call failed; keeping the last target");
                state.last_error = Some(ProvisionerError {
                    at_ms: now_ms,
                    message,
                });
                None
            }
        }
    }

    fn record_read(
        &self,
        state: &mut State,
        kind: &'static str,
        result: Result<Counts, CallError>,
    ) {
        state.reads.count(&result.as_ref().map(|_| ()));
        state.next_read = Instant::now() + READ_EVERY;
        match result {
            Ok(counts) => {
                state.counts = Some(counts);
                state.counts_reported = true;
                state.last_read_error = None;
            }
            Err(e) => {
                // Once per distinct error, not every READ_EVERY while the API is down.
                if state.last_read_error.as_deref() != Some(e.message.as_str()) {
                    tracing::warn!(fleet = %self.fleet.fleet, provisioner = kind, error = %e.message, "cannot read the fleet's instances; keeping the last counts");
                    state.last_read_error = Some(e.message.clone());
                }
                state.last_error = Some(ProvisionerError {
                    at_ms: self.clock.now_ms(),
                    message: format!("read: {}", e.message),
                });
            }
        }
    }

    /// Keeps `record` as the fleet's last target carried out.
    fn persist(&self, record: &AppliedRecord) -> Result<(), String> {
        let Some(store) = &self.store else {
            return Ok(());
        };
        store
            .put(&self.fleet.region, &self.fleet.fleet, record)
            .map_err(|e| {
                tracing::warn!(fleet = %self.fleet.fleet, error = %e, "cannot record the target carried out");
                format!("cannot record the target carried out: {e}")
            })
    }
}

/// The worker's next job: carry the wanted target out when it is not yet and nothing holds it
/// back, else read when due, else wait for whichever comes first.
fn next_job(
    state: &mut State,
    capacity_key: fn(&ProvisionTarget) -> String,
    can_read: bool,
    now: Instant,
    now_ms: u64,
) -> Job {
    let mut wake_at: Option<Instant> = None;
    let mut sooner = |t: Instant| {
        wake_at = Some(wake_at.map_or(t, |w| w.min(t)));
    };
    if state.active {
        if let Some(wanted) = state.wanted.as_ref().filter(|w| w.plan_version.is_some()) {
            let capacity = capacity_key(wanted);
            let carried_out = state
                .applied
                .as_ref()
                .is_some_and(|a| a.capacity == capacity);
            if !carried_out {
                let held_until = [state.retry_at, state.step_at].into_iter().flatten().max();
                match held_until {
                    Some(t) if t > now => sooner(t),
                    _ => {
                        let target = match &state.pinned {
                            Some((pinned, pinned_capacity, _)) if *pinned_capacity == capacity => {
                                pinned.clone()
                            }
                            _ => {
                                state.pinned = Some((wanted.clone(), capacity.clone(), now_ms));
                                wanted.clone()
                            }
                        };
                        return Job::Apply(target, capacity);
                    }
                }
            }
        }
    }
    if can_read {
        if state.next_read <= now {
            return Job::Read;
        }
        sooner(state.next_read);
    }
    Job::Wait(wake_at)
}

/// Counts in a command's output or a receiver's answer: empty (none), or a JSON object with
/// any of `ready`, `warming`, `draining` (whole numbers; other fields are ignored).
pub fn parse_counts(answer: &[u8]) -> Result<Option<Counts>, String> {
    #[derive(serde::Deserialize)]
    struct Reported {
        ready: Option<u32>,
        warming: Option<u32>,
        draining: Option<u32>,
    }
    let text = String::from_utf8_lossy(answer);
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    let reported: Reported = serde_json::from_str(text).map_err(|e| {
        format!(
            "the answer is not a counts document ({{\"ready\": N, \"warming\": N, \"draining\": N}}): {e}; ignored: {}",
            excerpt(text, 200)
        )
    })?;
    if reported.ready.is_none() && reported.warming.is_none() && reported.draining.is_none() {
        return Ok(None);
    }
    Ok(Some(Counts {
        ready: reported.ready.unwrap_or(0),
        warming: reported.warming.unwrap_or(0),
        draining: reported.draining.unwrap_or(0),
    }))
}

/// At most `max` bytes of `text` (cut at a character boundary), marked when cut.
pub fn excerpt(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes in all)", &text[..end], text.len())
}

/// The pause after `failures` consecutive failures: 1 s doubling to 30 s, drawn from the upper
/// half of that.
fn backoff(failures: u32) -> Duration {
    let full = MIN_BACKOFF
        .saturating_mul(1 << failures.saturating_sub(1).min(5))
        .min(MAX_BACKOFF);
    let half = full / 2;
    half + half.mul_f64(rand::rng().random::<f64>())
}

/// An error with its causes, as one line.
pub(super) fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let line = cause.to_string();
        if !text.contains(&line) {
            text.push_str(": ");
            text.push_str(&line);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use prescale_brain::planner::Tiers;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// A backend that fails while `failures` is above zero (counting it down), takes `steps`
    /// partial steps before it reaches a target, and records every target it is given.
    struct Scripted {
        failures: Arc<AtomicU32>,
        calls: Arc<Mutex<Vec<ProvisionTarget>>>,
        steps: u32,
    }

    impl RemoteBackend for Scripted {
        fn kind(&self) -> &'static str {
            "scripted"
        }

        fn apply(&mut self, target: &ProvisionTarget) -> Result<Outcome, CallError> {
            self.calls.lock().unwrap().push(target.clone());
            if self.failures.load(Ordering::SeqCst) > 0 {
                self.failures.fetch_sub(1, Ordering::SeqCst);
                return Err(CallError::failed("receiver said 503"));
            }
            let reached = self.steps == 0;
            self.steps = self.steps.saturating_sub(1);
            Ok(Outcome {
                counts: None,
                reached,
                note: "done".into(),
                warning: None,
            })
        }
    }

    fn target(instances: u32, version: u64) -> ProvisionTarget {
        ProvisionTarget {
            region: "local".into(),
            fleet: "web".into(),
            instances,
            tiers: Tiers {
                baseline: 1,
                predictive: instances.saturating_sub(1),
                total: instances,
                ..Tiers::default()
            },
            warm_pools: Vec::new(),
            plan_version: Some(version),
            reasons: vec![format!("reason of version {version}")],
        }
    }

    struct Harness {
        p: RemoteProvisioner,
        calls: Arc<Mutex<Vec<ProvisionTarget>>>,
        failures: Arc<AtomicU32>,
    }

    impl Harness {
        fn calls(&self) -> Vec<(u32, Option<u64>)> {
            self.calls
                .lock()
                .unwrap()
                .iter()
                .map(|t| (t.instances, t.plan_version))
                .collect()
        }
    }

    fn start(steps: u32, store: Option<AppliedStore>) -> Harness {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let failures = Arc::new(AtomicU32::new(0));
        let backend = Scripted {
            failures: Arc::clone(&failures),
            calls: Arc::clone(&calls),
            steps,
        };
        let fleet = FleetRef {
            region: "local".into(),
            fleet: "web".into(),
        };
        let p = RemoteProvisioner::start(backend, fleet, NodeClock::real(), store).expect("start");
        Harness { p, calls, failures }
    }

    fn applied_version(s: &ProvisionerStatus) -> Option<u64> {
        s.remote
            .as_ref()
            .and_then(|r| r.applied.as_ref())
            .map(|a| a.plan_version)
    }

    /// Reconciles `t` every 20 ms until `done` holds (at most 20 s).
    fn wait_for(
        what: &str,
        p: &mut RemoteProvisioner,
        t: &ProvisionTarget,
        mut done: impl FnMut(&ProvisionerStatus) -> bool,
    ) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            p.reconcile(0, t);
            let status = p.status();
            if done(&status) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {status:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn a_target_goes_out_once_and_again_only_when_its_capacity_changes() {
        let mut h = start(0, None);
        assert_eq!(h.p.status().remote.expect("remote").counts, "unknown");
        wait_for("the first call", &mut h.p, &target(3, 7), |s| {
            applied_version(s) == Some(7)
        });
        // New plan versions with the same capacity (another fleet changed), new reasons: no call.
        for version in 8..20 {
            let mut same = target(3, version);
            same.reasons = vec!["other words".into()];
            h.p.reconcile(0, &same);
        }
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(h.calls(), [(3, Some(7))]);
        let status = h.p.status();
        assert_eq!((status.desired, status.ready), (3, 3));
        let remote = status.remote.expect("remote");
        assert_eq!(remote.counts, "assumed");
        assert_eq!(remote.calls.ok, 1);
        assert!(remote.pending.is_none());

        wait_for("the second call", &mut h.p, &target(5, 20), |s| {
            applied_version(s) == Some(20)
        });
        assert_eq!(h.calls(), [(3, Some(7)), (5, Some(20))]);
        h.p.stop_all();
    }

    #[test]
    fn forecast_only_calls_nothing_and_a_target_without_a_plan_version_waits() {
        let mut h = start(0, None);
        let mut unversioned = target(2, 1);
        unversioned.plan_version = None;
        h.p.reconcile(0, &unversioned);
        std::thread::sleep(Duration::from_millis(200));
        assert!(h.calls().is_empty(), "no plan version, no call");
        // Forecast-only: the target is known but nothing goes out.
        h.p.observe(0);
        h.shared_wanted(target(2, 1));
        h.p.observe(0);
        std::thread::sleep(Duration::from_millis(200));
        assert!(h.calls().is_empty());
        assert!(h.p.status().remote.expect("remote").pending.is_some());
        wait_for("the call once active", &mut h.p, &target(2, 1), |s| {
            s.ready == 2
        });
        assert_eq!(h.calls(), [(2, Some(1))]);
        h.p.stop_all();
    }

    impl Harness {
        /// Puts `t` in the slot as the driver would have before switching to forecast-only.
        fn shared_wanted(&self, t: ProvisionTarget) {
            self.p.shared.lock().wanted = Some(t);
            self.p.shared.wake.notify_all();
        }
    }

    #[test]
    fn failures_are_retried_with_the_first_version_and_never_lower_the_counts() {
        let mut h = start(0, None);
        wait_for("four instances", &mut h.p, &target(4, 1), |s| s.ready == 4);
        // The receiver fails twice on the way down to 2: meanwhile the counts and the carried-out
        // target stay where they were.
        h.failures.store(2, Ordering::SeqCst);
        wait_for("two instances", &mut h.p, &target(2, 2), |s| {
            if s.ready != 2 {
                assert_eq!(s.ready, 4, "a failure never lowers the counts: {s:?}");
                assert_eq!(applied_version(s), Some(1));
            }
            s.ready == 2
        });
        assert_eq!(
            h.calls(),
            [(4, Some(1)), (2, Some(2)), (2, Some(2)), (2, Some(2))]
        );
        let status = h.p.status();
        assert_eq!(status.start_failures_total, 2);
        assert!(status.retry_at_ms.is_none());
        let remote = status.remote.expect("remote");
        assert_eq!((remote.calls.ok, remote.calls.error), (2, 2));
        assert_eq!(remote.applied.map(|a| a.plan_version), Some(2));
        assert!(status.last_error.is_some_and(|e| {
            e.message.contains("receiver said 503") && e.message.contains("plan version 2")
        }));
        h.p.stop_all();
    }

    #[test]
    fn retries_of_a_failing_target_keep_its_first_version() {
        let mut h = start(0, None);
        h.failures.store(2, Ordering::SeqCst);
        let first = target(3, 4);
        wait_for("a first failure", &mut h.p, &first, |s| {
            s.start_failures_total == 1
        });
        let pending =
            h.p.status()
                .remote
                .expect("remote")
                .pending
                .expect("pending");
        assert_eq!((pending.plan_version, pending.instances), (4, 3));
        assert!(h.p.status().retry_at_ms.is_some());
        // The plan moves on to version 5 with the same capacity while the receiver is down.
        wait_for("the target carried out", &mut h.p, &target(3, 5), |s| {
            s.ready == 3
        });
        assert_eq!(h.calls(), [(3, Some(4)), (3, Some(4)), (3, Some(4))]);
        h.p.stop_all();
    }

    #[test]
    fn a_target_reached_in_steps_is_called_again_until_it_is() {
        let mut h = start(2, None);
        let t = target(1, 3);
        wait_for("the target reached", &mut h.p, &t, |s| {
            applied_version(s) == Some(3)
        });
        assert_eq!(h.calls(), [(1, Some(3)); 3]);
        h.p.stop_all();
    }

    #[test]
    fn a_restart_starts_from_the_last_target_carried_out() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("series.db");
        let mut h = start(0, Some(AppliedStore::open(&path).unwrap()));
        wait_for("the call", &mut h.p, &target(6, 9), |s| s.ready == 6);
        h.p.stop_all();
        drop(h);
        let mut restarted = start(0, Some(AppliedStore::open(&path).unwrap()));
        let status = restarted.p.status();
        assert_eq!(status.ready, 6, "the fleet starts where it was: {status:?}");
        assert_eq!(status.remote.expect("remote").counts, "assumed");
        // The same capacity under the next version is not asked for again.
        restarted.p.reconcile(0, &target(6, 10));
        std::thread::sleep(Duration::from_millis(200));
        assert!(restarted.calls().is_empty());
        restarted.p.stop_all();
    }

    #[test]
    fn counts_in_an_answer_are_read_or_refused_by_name() {
        assert_eq!(parse_counts(b"").unwrap(), None);
        assert_eq!(parse_counts(b"  \n").unwrap(), None);
        assert_eq!(parse_counts(b"{\"accepted\": true}").unwrap(), None);
        assert_eq!(
            parse_counts(b"{\"ready\": 3, \"warming\": 2, \"note\": \"ok\"}\n").unwrap(),
            Some(Counts {
                ready: 3,
                warming: 2,
                draining: 0
            })
        );
        let refused = parse_counts(b"{\"ready\": -1}").unwrap_err();
        assert!(refused.contains("not a counts document"), "{refused}");
        let refused = parse_counts(b"scaled to 3").unwrap_err();
        assert!(refused.contains("scaled to 3"), "{refused}");
        assert_eq!(excerpt("abcdef", 3), "abc… (6 bytes in all)");
    }

    #[test]
    fn backoff_doubles_to_its_cap_with_jitter_in_the_upper_half() {
        for failures in 1..10 {
            let full = MIN_BACKOFF
                .saturating_mul(1 << (failures - 1).min(5))
                .min(MAX_BACKOFF);
            for _ in 0..50 {
                let pause = backoff(failures);
                assert!(pause >= full / 2 && pause <= full, "{failures}: {pause:?}");
            }
        }
        assert!(backoff(20) <= MAX_BACKOFF);
    }
}
