//! The learning service: one dedicated thread that builds profile models from the sample table,
//! stores them and publishes them to the region's proxies, on a schedule and on demand.
//!
//! When it builds (node time, the forecaster's clock):
//! - at start, the newest stored model is loaded and republished (proxies keep it, the next
//!   build keeps its IDs and names); the first scheduled build comes one rebuild interval after
//!   the start, since the sample table starts empty;
//! - with no model yet, as soon as `min_users` users are sampled; after a failed attempt, not
//!   again before a tenth of the rebuild interval has passed (so a failing build is not retried
//!   on every poll);
//! - with a model, every rebuild interval after the last attempt;
//! - on demand ([`LearningService::rebuild`]), answered when the build is done.
//!
//! [`LearningService::republish`] (a persona changed) stores the model in force again as a new
//! version, unchanged, and publishes it: the publisher maps it onto the personas as they are now,
//! and the proxies, which install a version once, take the new settings.
//!
//! Invariants: one build at a time (`busy` is claimed before a build starts, and an on-demand
//! request that finds it claimed is refused, never queued); a build reads a copy of the samples,
//! so the sketch writer never waits for it; a failed build (too few users, clustering error,
//! storage error) keeps the current model and is counted and recorded with its reason; a model
//! is stored before it is published, so a published version is never reused.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use prescale_gossip::model::{ProfileModel, ProfileSettings, FEATURE_DIM, FEATURE_NAMES};
use prescale_gossip::{ModelUpdate, SketchReceiver, SketchSink};
use prescale_profiler::{BuildError, BuildParams, KChoice, KScore, NameReason, Origin, Samples};
use serde::Serialize;

use super::convert::{no_settings, to_profile_model};
use super::error::LearningError;
use super::models::{ModelStore, StoredModel};
use super::samples::SampleTable;

/// How often (real time) the thread checks whether a build is due.
const POLL: Duration = Duration::from_millis(200);

/// Node seconds now (the forecaster's node clock).
pub type NodeNow = Arc<dyn Fn() -> u64 + Send + Sync>;

/// Where models go: the forecaster's QUIC receiver, which pushes them to the region's proxies.
pub trait ModelPublisher: Send + Sync + 'static {
    /// Publishes `update` and answers the model as it was sent (a publisher may add each
    /// profile's settings; the admin view shows those).
    fn publish(&self, update: ModelUpdate) -> Result<ProfileModel, String>;
}

impl<S: SketchSink> ModelPublisher for SketchReceiver<S> {
    fn publish(&self, update: ModelUpdate) -> Result<ProfileModel, String> {
        let model = update.model.clone();
        self.publish_model(update).map_err(|e| e.to_string())?;
        Ok(model)
    }
}

/// What the service needs from the `[learning]` section.
#[derive(Clone, Debug, PartialEq)]
pub struct LearningSettings {
    /// The region whose proxies the models are for.
    pub region: String,
    pub rebuild_interval_secs: u64,
    pub sample_max_age_secs: u64,
    /// The builder's parameters; `params.min_users` is `learning.min_users`.
    pub params: BuildParams,
}

impl LearningSettings {
    pub fn from_config(config: &prescale_config::LearningConfig, region: &str) -> Self {
        let defaults = BuildParams::default();
        LearningSettings {
            region: region.to_string(),
            rebuild_interval_secs: config.rebuild_interval_secs,
            sample_max_age_secs: config.sample_max_age_secs,
            params: BuildParams {
                k: match config.k {
                    Some(k) => KChoice::Fixed(k),
                    None => KChoice::Range {
                        min: config.k_min,
                        max: config.k_max,
                    },
                },
                min_users: config.min_users,
                seed: config.seed.unwrap_or(defaults.seed),
                ..defaults
            },
        }
    }
}

/// Why a build ran.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    /// The first model, once enough users were sampled.
    Initial,
    /// The rebuild interval passed.
    Scheduled,
    /// `POST /api/v1/profiles/rebuild`.
    OnDemand,
}

/// How a build ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BuildOutcome {
    Built,
    TooFewUsers,
    Failed,
}

impl BuildOutcome {
    pub const ALL: [BuildOutcome; 3] = [
        BuildOutcome::Built,
        BuildOutcome::TooFewUsers,
        BuildOutcome::Failed,
    ];

    pub fn label(self) -> &'static str {
        match self {
            BuildOutcome::Built => "built",
            BuildOutcome::TooFewUsers => "too_few_users",
            BuildOutcome::Failed => "failed",
        }
    }
}

/// One build attempt, as the admin view shows the last one.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BuildRecord {
    pub trigger: Trigger,
    /// Node time the build started, unix seconds.
    pub started_at: u64,
    pub duration_secs: f64,
    pub outcome: BuildOutcome,
    /// Sampled users the build ran on (after dropping those past the maximum age).
    pub users: usize,
    /// Those users by the profile whose entry their latest sample came in.
    pub users_by_profile: BTreeMap<String, usize>,
    /// Users dropped by this build for not being seen within `learning.sample_max_age_secs`.
    pub expired_users: usize,
    /// The version built.
    pub version: Option<u64>,
    /// Why the build failed.
    pub error: Option<String>,
    /// Why a built model could not be pushed to the proxies (it is stored, and pushed again at
    /// the next start or build).
    pub publish_error: Option<String>,
}

/// A learned profile as the admin view shows it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ProfileView {
    pub id: u32,
    pub name: String,
    pub origin: Origin,
    /// Sampled users nearest to it (anomalous ones excluded).
    pub population: usize,
    /// The centroid in feature units, by feature name.
    pub centroid: BTreeMap<String, f32>,
    /// Why it has its name.
    pub reasons: Vec<NameReason>,
    /// What its persona sets (`None`: the config's `[[profiles]]` entry, else the defaults).
    pub settings: Option<ProfileSettings>,
}

/// The current model as the admin view shows it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ModelView {
    pub version: u64,
    /// Node time of the build, unix seconds.
    pub built_at: u64,
    /// Profiles in the model.
    pub k: usize,
    /// The silhouette score of each number of profiles tried.
    pub k_scores: Vec<KScore>,
    pub users: usize,
    pub fit_points: usize,
    pub anomalous_users: usize,
    /// `anomalous_users / users`.
    pub anomalous_share: f64,
    /// Squared scaled distance beyond which a user is anomalous.
    pub anomaly_distance: f32,
    pub profiles: Vec<ProfileView>,
}

impl ModelView {
    /// `sent`: the model as last published, whose settings are shown when it is `stored`'s
    /// version (the stored copy carries none: settings come from the personas at publishing).
    pub fn of(stored: &StoredModel, sent: Option<&ProfileModel>) -> Self {
        let settings_from = sent
            .filter(|m| m.version == stored.version)
            .unwrap_or(&stored.published);
        let learned = &stored.learned;
        let profiles = learned
            .profiles
            .iter()
            .map(|p| ProfileView {
                id: p.id,
                name: p.name.clone(),
                origin: p.origin.clone(),
                population: p.population,
                centroid: FEATURE_NAMES
                    .iter()
                    .zip(&p.center_raw)
                    .map(|(name, value)| (name.to_string(), *value))
                    .collect(),
                reasons: p.reasons.clone(),
                settings: settings_from
                    .centroids
                    .iter()
                    .find(|c| c.id.0 == p.id)
                    .and_then(|c| c.settings.clone()),
            })
            .collect();
        ModelView {
            version: stored.version,
            built_at: stored.built_at,
            k: learned.profiles.len(),
            k_scores: learned.k_scores.clone(),
            users: learned.users,
            fit_points: learned.fit_points,
            anomalous_users: learned.anomalous_users,
            anomalous_share: share(learned.anomalous_users, learned.users),
            anomaly_distance: learned.anomaly_distance,
            profiles,
        }
    }
}

fn share(part: usize, whole: usize) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

/// When the next build comes.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum NextBuild {
    /// No model yet: once `users_needed` more users are sampled, and not before `not_before`
    /// (node seconds) after a failed attempt.
    WhenSampled {
        users_needed: usize,
        not_before: Option<u64>,
    },
    /// At node time `at` (unix seconds).
    Scheduled { at: u64 },
}

/// Builds counted by outcome.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct BuildCounts {
    pub built: u64,
    pub too_few_users: u64,
    pub failed: u64,
}

impl BuildCounts {
    pub fn of(&self, outcome: BuildOutcome) -> u64 {
        match outcome {
            BuildOutcome::Built => self.built,
            BuildOutcome::TooFewUsers => self.too_few_users,
            BuildOutcome::Failed => self.failed,
        }
    }
}

/// `GET /api/v1/profiles/model`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LearningStatus {
    pub region: String,
    /// The current model's version (what the region's proxies are sent).
    pub model_version: Option<u64>,
    pub model: Option<ModelView>,
    pub last_build: Option<BuildRecord>,
    /// The last time the model in force was published again for a persona change.
    pub last_republish: Option<Republished>,
    /// Whether a build is running now.
    pub building: bool,
    pub sampled_users: usize,
    pub max_sampled_users: usize,
    pub min_users: usize,
    /// Node time now, unix seconds.
    pub now: u64,
    pub next_build: NextBuild,
    pub builds: BuildCounts,
    /// Models stored but not pushed for an error.
    pub publish_failures: u64,
    /// Why the stored model could not be loaded at start (the service then started without one).
    pub load_error: Option<String>,
}

/// What `/metrics` shows.
#[derive(Clone, Debug, PartialEq)]
pub struct LearningMetrics {
    pub model_version: Option<u64>,
    pub sampled_users: usize,
    pub profiles: usize,
    /// Of the current model's build.
    pub anomalous_users: usize,
    pub anomalous_share: f64,
    pub builds: BuildCounts,
    pub last_build_secs: Option<f64>,
    pub publish_failures: u64,
    pub samples_observed: u64,
    pub samples_skipped_new: u64,
    pub samples_evicted: u64,
    pub samples_expired: u64,
}

/// A model in force published again ([`LearningService::republish`]).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Republished {
    /// The version the unchanged model was stored and published as.
    pub version: u64,
    /// The version it republished.
    pub of_version: u64,
    /// Node time of the republishing, unix seconds.
    pub at: u64,
    /// Why it could not be pushed (it is stored, and pushed again at the next start or build).
    pub publish_error: Option<String>,
}

/// Why republishing gave no new version.
#[derive(Debug, thiserror::Error)]
pub enum RepublishError {
    #[error("storing the model again failed: {0}")]
    Store(#[source] LearningError),
    #[error("still waiting after {0:?}; see GET /api/v1/profiles/model")]
    TimedOut(Duration),
    #[error("the learning service has stopped")]
    Stopped,
}

/// An on-demand build that was made.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Rebuilt {
    pub build: BuildRecord,
    pub model: ModelView,
}

/// Why an on-demand build gave no model.
#[derive(Debug, thiserror::Error)]
pub enum RebuildError {
    #[error("a profile build is already running")]
    Busy,
    /// The build ran and failed; the current model stays. `storage`: the model could not be
    /// stored (the forecaster's fault), else the samples gave no model.
    #[error("{reason}")]
    Failed {
        outcome: BuildOutcome,
        reason: String,
        storage: bool,
    },
    #[error("the build is still running after {0:?}; see GET /api/v1/profiles/model")]
    TimedOut(Duration),
    #[error("the learning service has stopped")]
    Stopped,
}

type Reply = mpsc::Sender<Result<Rebuilt, RebuildError>>;
type RepublishReply = mpsc::Sender<Result<Option<Republished>, RepublishError>>;

enum Command {
    Rebuild(Reply),
    Republish(RepublishReply),
    Stop,
}

#[derive(Default)]
struct Stats {
    built: AtomicU64,
    too_few_users: AtomicU64,
    failed: AtomicU64,
    publish_failures: AtomicU64,
    /// Microseconds of the last build, plus one (0: no build yet).
    last_build_micros: AtomicU64,
}

impl Stats {
    fn counts(&self) -> BuildCounts {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        BuildCounts {
            built: g(&self.built),
            too_few_users: g(&self.too_few_users),
            failed: g(&self.failed),
        }
    }
}

struct State {
    current: Option<Arc<StoredModel>>,
    /// The model as last published (with the publisher's settings).
    sent: Option<Arc<ProfileModel>>,
    last_republish: Option<Republished>,
    last_build: Option<BuildRecord>,
    /// With a model: the next scheduled build. Without: the earliest retry after a failure.
    next_build_at: Option<u64>,
    load_error: Option<String>,
}

struct Shared {
    settings: LearningSettings,
    table: Arc<SampleTable>,
    state: Mutex<State>,
    busy: AtomicBool,
    stats: Stats,
    now: NodeNow,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Critical sections only replace whole values, so a poisoned lock's data is consistent.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A running service. [`LearningService::stop`] (or dropping it) ends its thread.
pub struct LearningService {
    shared: Arc<Shared>,
    commands: mpsc::Sender<Command>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

struct Worker {
    shared: Arc<Shared>,
    store: ModelStore,
    publisher: Arc<dyn ModelPublisher>,
}

impl LearningService {
    /// Loads and republishes the newest stored model, then starts the thread.
    pub fn start(
        settings: LearningSettings,
        table: Arc<SampleTable>,
        store: ModelStore,
        publisher: Arc<dyn ModelPublisher>,
        now: NodeNow,
    ) -> Result<Self, LearningError> {
        let started_at = now();
        let (current, load_error) = match store.latest() {
            Ok(model) => (model.map(Arc::new), None),
            Err(e) => {
                tracing::error!(error = %e, "the stored profile model cannot be loaded; starting without one");
                (None, Some(e.to_string()))
            }
        };
        let next_build_at = current
            .as_ref()
            .map(|_| started_at + settings.rebuild_interval_secs);
        let shared = Arc::new(Shared {
            settings,
            table,
            state: Mutex::new(State {
                current: current.clone(),
                sent: None,
                last_republish: None,
                last_build: None,
                next_build_at,
                load_error,
            }),
            busy: AtomicBool::new(false),
            stats: Stats::default(),
            now,
        });
        let worker = Worker {
            shared: Arc::clone(&shared),
            store,
            publisher,
        };
        if let Some(model) = &current {
            tracing::info!(
                version = model.version,
                profiles = model.published.centroids.len(),
                "republishing the stored profile model"
            );
            match worker.publish(model) {
                Ok(sent) => lock(&shared.state).sent = Some(Arc::new(sent)),
                Err(e) => {
                    tracing::warn!(version = model.version, error = %e, "republishing the stored profile model failed")
                }
            }
        }
        let (commands, receiver) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("profile-learning".into())
            .spawn(move || worker.run(receiver))
            .map_err(LearningError::Thread)?;
        Ok(LearningService {
            shared,
            commands,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Builds now on the service's thread and waits up to `wait` for the outcome.
    pub fn rebuild(&self, wait: Duration) -> Result<Rebuilt, RebuildError> {
        if self
            .shared
            .busy
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return Err(RebuildError::Busy);
        }
        let (reply, answer) = mpsc::channel();
        if self.commands.send(Command::Rebuild(reply)).is_err() {
            self.shared.busy.store(false, Ordering::Release);
            return Err(RebuildError::Stopped);
        }
        match answer.recv_timeout(wait) {
            Ok(result) => result,
            Err(mpsc::RecvTimeoutError::Timeout) => Err(RebuildError::TimedOut(wait)),
            Err(mpsc::RecvTimeoutError::Disconnected) => Err(RebuildError::Stopped),
        }
    }

    /// Stores the model in force again as a new version and publishes it (its persona
    /// settings are mapped afresh), after any build running; `None` when there is no model yet
    /// (the first build maps the personas). Waits up to `wait`.
    pub fn republish(&self, wait: Duration) -> Result<Option<Republished>, RepublishError> {
        let (reply, answer) = mpsc::channel();
        self.commands
            .send(Command::Republish(reply))
            .map_err(|_| RepublishError::Stopped)?;
        match answer.recv_timeout(wait) {
            Ok(result) => result,
            Err(mpsc::RecvTimeoutError::Timeout) => Err(RepublishError::TimedOut(wait)),
            Err(mpsc::RecvTimeoutError::Disconnected) => Err(RepublishError::Stopped),
        }
    }

    /// The admin view.
    pub fn status(&self) -> LearningStatus {
        let now = (self.shared.now)();
        let sampled = self.shared.table.len();
        let min_users = self.shared.settings.params.min_users;
        let state = lock(&self.shared.state);
        let next_build = match (&state.current, state.next_build_at) {
            (Some(_), Some(at)) => NextBuild::Scheduled { at },
            (_, not_before) => NextBuild::WhenSampled {
                users_needed: min_users.saturating_sub(sampled),
                not_before,
            },
        };
        LearningStatus {
            region: self.shared.settings.region.clone(),
            model_version: state.current.as_ref().map(|m| m.version),
            model: state
                .current
                .as_deref()
                .map(|m| ModelView::of(m, state.sent.as_deref())),
            last_build: state.last_build.clone(),
            last_republish: state.last_republish.clone(),
            building: self.shared.busy.load(Ordering::Acquire),
            sampled_users: sampled,
            max_sampled_users: self.shared.table.max_users(),
            min_users,
            now,
            next_build,
            builds: self.shared.stats.counts(),
            publish_failures: self.shared.stats.publish_failures.load(Ordering::Relaxed),
            load_error: state.load_error.clone(),
        }
    }

    pub fn metrics(&self) -> LearningMetrics {
        let (model_version, profiles, anomalous_users, anomalous_share) = {
            let state = lock(&self.shared.state);
            match state.current.as_deref() {
                Some(m) => (
                    Some(m.version),
                    m.learned.profiles.len(),
                    m.learned.anomalous_users,
                    share(m.learned.anomalous_users, m.learned.users),
                ),
                None => (None, 0, 0, 0.0),
            }
        };
        let s = &self.shared.table.stats;
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let micros = g(&self.shared.stats.last_build_micros);
        LearningMetrics {
            model_version,
            sampled_users: self.shared.table.len(),
            profiles,
            anomalous_users,
            anomalous_share,
            builds: self.shared.stats.counts(),
            last_build_secs: (micros > 0).then(|| (micros - 1) as f64 / 1e6),
            publish_failures: g(&self.shared.stats.publish_failures),
            samples_observed: g(&s.observed),
            samples_skipped_new: g(&s.skipped_new),
            samples_evicted: g(&s.evicted),
            samples_expired: g(&s.expired),
        }
    }

    /// The current model, if any.
    pub fn current(&self) -> Option<Arc<StoredModel>> {
        lock(&self.shared.state).current.clone()
    }

    /// Ends the thread (after the build it is running, if any) and waits for it.
    pub fn stop(&self) {
        let _ = self.commands.send(Command::Stop);
        let thread = lock(&self.thread).take();
        if let Some(thread) = thread {
            let _ = thread.join();
        }
    }
}

impl Drop for LearningService {
    fn drop(&mut self) {
        let _ = self.commands.send(Command::Stop);
    }
}

impl Worker {
    fn run(mut self, commands: mpsc::Receiver<Command>) {
        loop {
            match commands.recv_timeout(POLL) {
                Ok(Command::Rebuild(reply)) => {
                    // `rebuild` claimed `busy` before sending.
                    let result = self.build(Trigger::OnDemand);
                    self.shared.busy.store(false, Ordering::Release);
                    let _ = reply.send(result);
                }
                Ok(Command::Republish(reply)) => {
                    let _ = reply.send(self.republish());
                }
                Ok(Command::Stop) | Err(mpsc::RecvTimeoutError::Disconnected) => return,
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
            let Some(trigger) = self.due((self.shared.now)()) else {
                continue;
            };
            if self
                .shared
                .busy
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                let _ = self.build(trigger);
                self.shared.busy.store(false, Ordering::Release);
            }
        }
    }

    fn due(&self, now: u64) -> Option<Trigger> {
        let state = lock(&self.shared.state);
        match (&state.current, state.next_build_at) {
            (None, retry) => (self.shared.table.len() >= self.shared.settings.params.min_users
                && retry.is_none_or(|at| now >= at))
            .then_some(Trigger::Initial),
            (Some(_), Some(at)) => (now >= at).then_some(Trigger::Scheduled),
            (Some(_), None) => None,
        }
    }

    fn build(&mut self, trigger: Trigger) -> Result<Rebuilt, RebuildError> {
        let clock = Instant::now();
        let settings = &self.shared.settings;
        let now = (self.shared.now)();
        let snapshot = self
            .shared
            .table
            .snapshot(now, settings.sample_max_age_secs);
        let previous = lock(&self.shared.state).current.clone();
        let made = self.make(now, &snapshot.features, previous.as_deref());
        let duration = clock.elapsed();
        self.shared
            .stats
            .last_build_micros
            .store(duration.as_micros() as u64 + 1, Ordering::Relaxed);
        let mut record = BuildRecord {
            trigger,
            started_at: now,
            duration_secs: duration.as_secs_f64(),
            outcome: BuildOutcome::Built,
            users: snapshot.users.len(),
            users_by_profile: snapshot.by_profile,
            expired_users: snapshot.expired,
            version: None,
            error: None,
            publish_error: None,
        };
        let interval = self.shared.settings.rebuild_interval_secs;
        match made {
            Ok(stored) => {
                self.shared.stats.built.fetch_add(1, Ordering::Relaxed);
                record.version = Some(stored.version);
                let sent = match self.publish(&stored) {
                    Ok(sent) => Some(Arc::new(sent)),
                    Err(e) => {
                        tracing::warn!(version = stored.version, error = %e, "publishing the profile model failed");
                        record.publish_error = Some(e);
                        None
                    }
                };
                tracing::info!(
                    version = stored.version,
                    profiles = stored.published.centroids.len(),
                    users = record.users,
                    anomalous = stored.learned.anomalous_users,
                    seconds = record.duration_secs,
                    ?trigger,
                    "profile model built"
                );
                let view = ModelView::of(&stored, sent.as_deref());
                let mut state = lock(&self.shared.state);
                state.current = Some(Arc::new(stored));
                state.sent = sent;
                state.next_build_at = Some(now + interval);
                state.last_build = Some(record.clone());
                Ok(Rebuilt {
                    build: record,
                    model: view,
                })
            }
            Err(e) => {
                let outcome = match &e {
                    LearningError::Build(BuildError::TooFewUsers { .. }) => {
                        self.shared
                            .stats
                            .too_few_users
                            .fetch_add(1, Ordering::Relaxed);
                        BuildOutcome::TooFewUsers
                    }
                    _ => {
                        self.shared.stats.failed.fetch_add(1, Ordering::Relaxed);
                        BuildOutcome::Failed
                    }
                };
                let reason = e.to_string();
                let storage = matches!(
                    e,
                    LearningError::Database { .. }
                        | LearningError::Decode { .. }
                        | LearningError::Encode { .. }
                        | LearningError::Thread(_)
                );
                tracing::warn!(error = %reason, users = record.users, ?trigger, "profile build failed; the current model stays");
                record.outcome = outcome;
                record.error = Some(reason.clone());
                let mut state = lock(&self.shared.state);
                // Without a model, retry sooner than a full interval: the first model matters.
                let wait = if state.current.is_some() {
                    interval
                } else {
                    (interval / 10).max(1)
                };
                state.next_build_at = Some(now + wait);
                state.last_build = Some(record);
                Err(RebuildError::Failed {
                    outcome,
                    reason,
                    storage,
                })
            }
        }
    }

    fn make(
        &mut self,
        now: u64,
        features: &[f32],
        previous: Option<&StoredModel>,
    ) -> Result<StoredModel, LearningError> {
        let learned = prescale_profiler::build(
            Samples {
                dim: FEATURE_DIM,
                features,
            },
            &FEATURE_NAMES,
            previous.map(|p| &p.learned),
            &self.shared.settings.params,
        )?;
        // Persona settings are not mapped yet: every profile takes the config's or the defaults.
        self.store.save(now, &learned, |version| {
            to_profile_model(&learned, version, now, no_settings(&learned))
        })
    }

    /// The model in force, stored again as the next version and published.
    fn republish(&mut self) -> Result<Option<Republished>, RepublishError> {
        let Some(current) = lock(&self.shared.state).current.clone() else {
            return Ok(None);
        };
        let learned = &current.learned;
        let stored = self
            .store
            .save(current.built_at, learned, |version| {
                to_profile_model(learned, version, current.built_at, no_settings(learned))
            })
            .map_err(RepublishError::Store)?;
        let (sent, publish_error) = match self.publish(&stored) {
            Ok(sent) => (Some(Arc::new(sent)), None),
            Err(e) => {
                tracing::warn!(version = stored.version, error = %e, "republishing the profile model failed");
                (None, Some(e))
            }
        };
        let republished = Republished {
            version: stored.version,
            of_version: current.version,
            at: (self.shared.now)(),
            publish_error,
        };
        tracing::info!(
            version = stored.version,
            of_version = current.version,
            "profile model published again for a persona change"
        );
        let mut state = lock(&self.shared.state);
        state.current = Some(Arc::new(stored));
        state.sent = sent;
        state.last_republish = Some(republished.clone());
        Ok(Some(republished))
    }

    fn publish(&self, stored: &StoredModel) -> Result<ProfileModel, String> {
        let result = self.publisher.publish(ModelUpdate {
            region: self.shared.settings.region.clone(),
            model: stored.published.clone(),
        });
        if result.is_err() {
            self.shared
                .stats
                .publish_failures
                .fetch_add(1, Ordering::Relaxed);
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::learning::convert::tests::learned;
    use prescale_gossip::model::{FeatureVector, ProfileModel};
    use prescale_gossip::EntryKey;

    #[derive(Default)]
    struct Published(Mutex<Vec<ModelUpdate>>);

    impl ModelPublisher for Published {
        fn publish(&self, update: ModelUpdate) -> Result<ProfileModel, String> {
            let model = update.model.clone();
            lock(&self.0).push(update);
            Ok(model)
        }
    }

    impl Published {
        fn versions(&self) -> Vec<u64> {
            lock(&self.0).iter().map(|u| u.model.version).collect()
        }
    }

    struct Rig {
        service: LearningService,
        published: Arc<Published>,
        table: Arc<SampleTable>,
        clock: Arc<AtomicU64>,
    }

    fn settings(min_users: usize) -> LearningSettings {
        let config = prescale_config::LearningConfig {
            min_users,
            ..Default::default()
        };
        LearningSettings::from_config(&config, "eu")
    }

    fn start(path: &std::path::Path, min_users: usize, table: Arc<SampleTable>) -> Rig {
        let clock = Arc::new(AtomicU64::new(1_000_000));
        let now = Arc::clone(&clock);
        let published = Arc::new(Published::default());
        let service = LearningService::start(
            settings(min_users),
            Arc::clone(&table),
            ModelStore::open(path).expect("open"),
            published.clone(),
            Arc::new(move || now.load(Ordering::Relaxed)),
        )
        .expect("start");
        Rig {
            service,
            published,
            table,
            clock,
        }
    }

    /// `per_group` users in each of two clearly different behaviors (API-writing automation and
    /// browsers loading assets), seen at `seen_at`.
    fn fill(table: &SampleTable, per_group: u64, seen_at: u64) {
        let entry = Arc::new(EntryKey {
            profile: "default".into(),
            origin_region: "eu".into(),
            fleet: "web".into(),
        });
        for i in 0..2 * per_group {
            // Small, uniform-looking noise per user and feature.
            let noise = |d: u64| {
                let h = (i * 31 + d).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 40;
                (h % 1000) as f32 / 1000.0 * 0.2
            };
            let mut f = [0.0f32; FEATURE_DIM];
            for (d, v) in f.iter_mut().enumerate() {
                *v = noise(d as u64);
            }
            let automation = i % 2 == 0;
            f[0] += if automation { 4.0 } else { 1.5 }; // rate_per_min_log
            f[1] += if automation { 6.0 } else { 0.0 }; // request_bytes_log
            f[2] += if automation { 3.0 } else { 9.0 }; // response_bytes_log
            f[10] += if automation { 0.75 } else { 0.05 }; // api_share
            f[11] += if automation { 0.0 } else { 0.7 }; // static_share
            f[12] += if automation { 0.7 } else { 0.0 }; // write_share
            f[14] += if automation { 0.8 } else { 0.0 }; // automation_share
            f[15] += 3.0;
            table.insert(
                i.wrapping_mul(0x9e37_79b9_7f4a_7c15),
                FeatureVector(f),
                seen_at,
                &entry,
            );
        }
    }

    /// Stores a model of two profiles (built at node time 10) in the database at `path`.
    fn store_a_model(path: &std::path::Path) {
        let stored = learned(&["api-writers", "browsers"]);
        ModelStore::open(path)
            .expect("open")
            .save(10, &stored, |version| {
                to_profile_model(&stored, version, 10, no_settings(&stored))
            })
            .expect("save");
    }

    fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn ids(model: &ModelView) -> Vec<(u32, String)> {
        let mut ids: Vec<(u32, String)> = model
            .profiles
            .iter()
            .map(|p| (p.id, p.name.clone()))
            .collect();
        ids.sort();
        ids
    }

    #[test]
    fn first_build_once_enough_users_then_on_demand_and_across_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("series.db");
        let table = Arc::new(SampleTable::new(1_000));
        let rig = start(&path, 40, Arc::clone(&table));
        fill(&table, 10, 1_000_000);
        std::thread::sleep(3 * POLL);
        assert!(rig.published.versions().is_empty(), "20 users < min_users");
        assert!(matches!(
            rig.service.status().next_build,
            NextBuild::WhenSampled {
                users_needed: 20,
                not_before: None
            }
        ));
        fill(&table, 40, 1_000_000);
        wait_for("the first model", || !rig.published.versions().is_empty());
        let status = rig.service.status();
        assert_eq!(status.model_version, Some(1));
        let first = status.model.expect("model");
        assert_eq!(first.k, 2, "two behaviors: {:?}", first.k_scores);
        assert_eq!(first.users, 80);
        assert_eq!(
            status.last_build.as_ref().map(|b| b.trigger),
            Some(Trigger::Initial)
        );
        assert_eq!(
            status.next_build,
            NextBuild::Scheduled {
                at: 1_000_000 + 3600
            }
        );
        let update = lock(&rig.published.0)[0].clone();
        assert_eq!(update.region, "eu");
        update.model.validate().expect("published model validates");
        assert_eq!(update.model.format, ProfileModel::FORMAT);

        let again = rig
            .service
            .rebuild(Duration::from_secs(20))
            .expect("rebuild");
        assert_eq!(again.model.version, 2);
        assert_eq!(again.build.trigger, Trigger::OnDemand);
        assert_eq!(
            ids(&again.model),
            ids(&first),
            "same samples, same profiles"
        );
        assert_eq!(rig.published.versions(), vec![1, 2]);
        rig.service.stop();

        // A restart on the same database: the stored model is republished, versions go on.
        let rig = start(&path, 40, Arc::new(SampleTable::new(1_000)));
        assert_eq!(rig.published.versions(), vec![2]);
        assert_eq!(rig.service.status().model_version, Some(2));
        fill(&rig.table, 40, 1_000_000);
        let third = rig
            .service
            .rebuild(Duration::from_secs(20))
            .expect("rebuild");
        assert_eq!(third.model.version, 3);
        assert_eq!(ids(&third.model), ids(&first));
        // Node time passes the interval: a scheduled build follows without a request.
        rig.clock.fetch_add(3_600, Ordering::Relaxed);
        wait_for("the scheduled build", || {
            rig.published.versions().last() == Some(&4)
        });
        assert_eq!(
            rig.service.status().last_build.map(|b| b.trigger),
            Some(Trigger::Scheduled)
        );
        let metrics = rig.service.metrics();
        assert_eq!(metrics.model_version, Some(4));
        assert_eq!(metrics.builds.built, 2);
        assert!(metrics.last_build_secs.is_some());
        rig.service.stop();
    }

    #[test]
    fn a_failed_build_keeps_the_model_and_says_why() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("series.db");
        store_a_model(&path);
        let rig = start(&path, 40, Arc::new(SampleTable::new(1_000)));
        fill(&rig.table, 5, 1_000_000);
        match rig.service.rebuild(Duration::from_secs(20)) {
            Err(RebuildError::Failed {
                outcome, reason, ..
            }) => {
                assert_eq!(outcome, BuildOutcome::TooFewUsers);
                assert!(reason.contains("10"), "{reason}");
            }
            other => panic!("expected a failed build, got {other:?}"),
        }
        let status = rig.service.status();
        assert_eq!(status.model_version, Some(1));
        assert_eq!(status.builds.too_few_users, 1);
        let last = status.last_build.expect("recorded");
        assert_eq!(last.outcome, BuildOutcome::TooFewUsers);
        assert!(last.error.is_some());
        assert_eq!(last.users, 10);
        assert_eq!(rig.published.versions(), vec![1], "only the republish");
        rig.service.stop();
    }

    #[test]
    fn an_on_demand_build_is_refused_while_one_runs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let rig = start(
            &dir.path().join("series.db"),
            40,
            Arc::new(SampleTable::new(10)),
        );
        rig.service.shared.busy.store(true, Ordering::Release);
        assert!(matches!(
            rig.service.rebuild(Duration::from_secs(1)),
            Err(RebuildError::Busy)
        ));
        rig.service.shared.busy.store(false, Ordering::Release);
        rig.service.stop();
        assert!(matches!(
            rig.service.rebuild(Duration::from_secs(1)),
            Err(RebuildError::Stopped)
        ));
    }

    #[test]
    fn republishing_stores_the_model_in_force_again_under_a_new_version() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("series.db");
        let rig = start(&path, 1_000, Arc::new(SampleTable::new(10)));
        assert_eq!(
            rig.service
                .republish(Duration::from_secs(20))
                .expect("answered"),
            None,
            "no model yet: nothing to republish"
        );
        assert!(rig.published.versions().is_empty());
        rig.service.stop();

        store_a_model(&path);
        let rig = start(&path, 1_000, Arc::new(SampleTable::new(10)));
        let before = rig.service.status().model.expect("stored model");
        rig.clock.store(1_000_500, Ordering::Relaxed);
        let again = rig
            .service
            .republish(Duration::from_secs(20))
            .expect("answered")
            .expect("republished");
        assert_eq!(
            again,
            Republished {
                version: 2,
                of_version: 1,
                at: 1_000_500,
                publish_error: None
            }
        );
        assert_eq!(rig.published.versions(), vec![1, 2], "start, then again");
        let status = rig.service.status();
        assert_eq!(status.model_version, Some(2));
        assert_eq!(status.last_republish, Some(again));
        let after = status.model.expect("model");
        assert_eq!(ids(&after), ids(&before), "same profiles, same ids");
        assert_eq!(after.built_at, before.built_at, "not a new build");
        assert!(status.last_build.is_none(), "no build ran");
        rig.service.stop();
        // The new version is what a restart finds.
        let rig = start(&path, 1_000, Arc::new(SampleTable::new(10)));
        assert_eq!(rig.published.versions(), vec![2]);
        rig.service.stop();
    }

    #[test]
    fn settings_follow_the_config() {
        let config = prescale_config::LearningConfig {
            k: Some(4),
            seed: Some(7),
            min_users: 99,
            ..Default::default()
        };
        let s = LearningSettings::from_config(&config, "eu");
        assert_eq!(s.params.k, KChoice::Fixed(4));
        assert_eq!(s.params.seed, 7);
        assert_eq!(s.params.min_users, 99);
        let s = LearningSettings::from_config(&Default::default(), "eu");
        assert_eq!(s.params.k, KChoice::Range { min: 2, max: 12 });
        assert_eq!(s.params.seed, BuildParams::default().seed);
        assert_eq!(s.rebuild_interval_secs, 3600);
    }
}
