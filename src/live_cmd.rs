//! Wiring of the live driver into `prescale forecaster` and `prescale up`: the brain's fleets
//! and provisioners from config, the plan publisher (the QUIC receiver's push to proxies), the
//! driver thread on the node clock, and the admin routes `/api/v1/plan`, `/api/v1/forecast`,
//! `POST /api/v1/mode` and the scheduled events (`/api/v1/events`, `/api/v1/events/{id}`: kept
//! in the forecaster's database, applied by the driver after each change), with the driver's
//! metrics.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::anyhow;
use prescale_config::{Config, FleetConfig, ProvisionerConfig};
use prescale_gossip::{NodeClock, SketchReceiver};
use prescale_proxy::admin::{self, AdminRequest, Handler, MetricsSource};
use prescale_regions::brain::{Brain, FleetKey, FleetProfile, FleetSpec, Resources};
use prescale_regions::events::{EventInput, EventStore};
use prescale_regions::history::History;
use prescale_regions::ingest::StoreSink;
use prescale_regions::ledger::{DecisionRecord, Ledger};
use prescale_regions::live::{
    CompletenessRule, FleetView, LiveDriver, LiveFleet, LiveSettings, LiveShared, LiveView,
    VIEW_HORIZONS,
};
use prescale_regions::planner::capacity::LatencySlo;
use prescale_regions::planner::CapacityModel;
use prescale_regions::provision::applied::AppliedStore;
use prescale_regions::provision::remote::{FleetRef, RemoteBackend};
use prescale_regions::provision::webhook::WebhookSecret;
use prescale_regions::provision::{
    ExecBackend, ExecSettings, KubernetesBackend, KubernetesSettings, ProcessProvisioner,
    ProcessSettings, Provisioner, RemoteProvisioner, SetupError, WebhookBackend, WebhookSettings,
    WorkloadKind,
};
use prescale_regions::store::SeriesStore;

use crate::exit::CliError;

/// How the node runs its driver.
#[derive(Clone, Copy)]
pub struct LiveOptions {
    pub clock: NodeClock,
    /// Stop the provisioned instances when the node stops (`up`); a standalone forecaster
    /// leaves them serving and adopts them at its next start.
    pub stop_instances_on_exit: bool,
    /// Print each decision to stdout as it is made (`up`).
    pub print_decisions: bool,
}

/// A running driver.
pub struct Live {
    pub shared: Arc<LiveShared>,
    stop: Arc<AtomicBool>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// The scheduled events as the admin API changes them (the driver reads its own connection).
    events: Mutex<EventStore>,
    /// Regions an event's scope may name (the config's).
    regions: Vec<String>,
    /// Node time for the events' created/updated stamps.
    clock: NodeClock,
    /// The capacity history as `/api/v1/history` reads it (the driver writes its own).
    history: Mutex<History>,
    /// Status of services beside the driver (KEDA's scaler) shown in `/api/v1/plan`, by key.
    extras: Mutex<Vec<(&'static str, PlanExtra)>>,
}

/// A status `/api/v1/plan` shows beside the driver's view.
pub type PlanExtra = Box<dyn Fn() -> serde_json::Value + Send + Sync>;

impl Live {
    /// Shows `status()` under `key` in `/api/v1/plan`.
    pub fn show_in_plan(&self, key: &'static str, status: PlanExtra) {
        self.extras
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((key, status));
    }

    /// `GET /api/v1/plan`: the driver's view, with the statuses shown beside it.
    fn plan(&self) -> admin::AdminResponse {
        let mut plan = match serde_json::to_value(self.shared.view()) {
            Ok(v) => v,
            Err(e) => {
                return admin::json_error(
                    http::StatusCode::INTERNAL_SERVER_ERROR,
                    &format!("cannot encode the plan: {e}"),
                )
            }
        };
        if let Some(object) = plan.as_object_mut() {
            for (key, status) in self.extras.lock().unwrap_or_else(|p| p.into_inner()).iter() {
                object.insert(key.to_string(), status());
            }
        }
        admin::json(&plan)
    }

    /// Stops the driver (and, for `up`, its instances) and waits for it.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
        let thread = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(thread) = thread {
            let _ = thread.join();
        }
    }
}

/// The brain's view of a fleet: every profile the config routes to it, with revenue weights.
fn fleet_spec(config: &Config, region: &str, fleet: &FleetConfig) -> FleetSpec {
    let mut names: Vec<String> = prescale_config::BUILTIN_PROFILES
        .iter()
        .map(|s| s.to_string())
        .collect();
    names.push(config.assignment.default_profile.clone());
    names.extend(config.profiles.iter().map(|p| p.name.clone()));
    names.extend(config.assignment.rules.iter().map(|r| r.profile.clone()));
    names.sort();
    names.dedup();
    let profiles = names
        .into_iter()
        .filter(|name| {
            config
                .fleet_for(region, name)
                .is_some_and(|f| f.name == fleet.name)
        })
        .map(|name| FleetProfile {
            revenue_weight: config.profile_settings(&name).0,
            name,
        })
        .collect();
    FleetSpec {
        key: FleetKey {
            region: region.to_string(),
            fleet: fleet.name.clone(),
        },
        profiles,
        capacity: CapacityModel {
            rps_per_instance: fleet.capacity_rps,
            cold_start_seconds: fleet.cold_start_secs as f64,
            cost_per_instance_hour: fleet.cost_per_instance_hour,
        },
        max_instances: fleet.max_instances,
        budget_per_hour: fleet.budget_per_hour,
        initial_instances: 0,
        learn_capacity: fleet
            .learn_capacity
            .then_some(fleet.latency_slo_ms)
            .flatten()
            .map(|ms| LatencySlo {
                seconds: ms as f64 / 1000.0,
                quantile: fleet.latency_slo_quantile,
            }),
        warm_sub_pools: fleet.warm_sub_pools.clone(),
        instance_resources: fleet.instance_resources.map(|r| Resources {
            cpu_cores: r.cpu_cores,
            memory_mb: r.memory_mb,
            network_mbps: r.network_mbps,
            io_ops: r.io_ops,
        }),
    }
}

fn provisioner(
    config: &Config,
    region: &str,
    fleet: &FleetConfig,
    database: &Path,
    clock: &NodeClock,
) -> Result<Option<Box<dyn Provisioner>>, CliError> {
    let Some(provisioner) = &fleet.provisioner else {
        return Ok(None);
    };
    let index = config
        .fleets
        .iter()
        .position(|f| std::ptr::eq(f, fleet))
        .unwrap_or_default();
    // A setting that cannot be used is bad input (exit 2), named as in the file.
    let setup_error = |e: SetupError| match e {
        SetupError::Config { key, message } => CliError::input(anyhow!(
            "fleets[{index}].provisioner.{key}: {message} (fleet `{}`)",
            fleet.name
        )),
        io @ SetupError::Io { .. } => CliError::runtime(anyhow!("fleet `{}`: {io}", fleet.name)),
    };
    let fleet_ref = FleetRef {
        region: region.to_string(),
        fleet: fleet.name.clone(),
    };
    let applied = || {
        AppliedStore::open(database)
            .map_err(|e| CliError::input(anyhow!("forecaster.database: {e}")))
    };
    match provisioner {
        ProvisionerConfig::Process {
            command,
            host,
            ready_timeout_secs,
            stop_timeout_secs,
        } => {
            let ledger = Ledger::open(database)
                .map_err(|e| CliError::input(anyhow!("forecaster.database: {e}")))?;
            let settings = ProcessSettings {
                region: region.to_string(),
                fleet: fleet.name.clone(),
                command: command.clone(),
                self_exe: std::env::current_exe().ok(),
                host: *host,
                ready_timeout: Duration::from_secs(*ready_timeout_secs),
                stop_timeout: Duration::from_secs(*stop_timeout_secs),
                health_path: fleet.health_check.path.clone(),
                health_timeout: Duration::from_millis(fleet.health_check.timeout_ms),
                drain_ms: u64::from(config.planner.drain_seconds) * 1000,
                speed: clock.speed(),
            };
            Ok(Some(Box::new(ProcessProvisioner::new(
                settings,
                ledger,
                clock.now_ms(),
            ))))
        }
        ProvisionerConfig::Exec {
            command,
            timeout_secs,
        } => {
            let backend = ExecBackend::new(ExecSettings {
                command: command.clone(),
                timeout: Duration::from_secs(*timeout_secs),
            })
            .map_err(setup_error)?;
            start_remote(backend, fleet_ref, *clock, applied()?)
        }
        ProvisionerConfig::Webhook {
            url,
            secret_env,
            timeout_secs,
        } => {
            let secret = secret_env
                .as_deref()
                .map(WebhookSecret::from_env)
                .transpose()
                .map_err(setup_error)?;
            let backend = WebhookBackend::new(WebhookSettings {
                url: url.clone(),
                secret,
                timeout: Duration::from_secs(*timeout_secs),
            })
            .map_err(setup_error)?;
            start_remote(backend, fleet_ref, *clock, applied()?)
        }
        ProvisionerConfig::Kubernetes {
            namespace,
            deployment,
            statefulset,
            kubeconfig,
            scale_in_step,
            timeout_secs,
        } => {
            let (kind, name) = match (deployment, statefulset) {
                (Some(name), _) => (WorkloadKind::Deployment, name.clone()),
                (None, Some(name)) => (WorkloadKind::StatefulSet, name.clone()),
                (None, None) => {
                    return Err(setup_error(SetupError::Config {
                        key: "deployment",
                        message: "the workload to scale is required".into(),
                    }))
                }
            };
            let backend = KubernetesBackend::new(KubernetesSettings {
                namespace: namespace.clone(),
                kind,
                name,
                kubeconfig: kubeconfig.clone(),
                scale_in_step: *scale_in_step,
                timeout: Duration::from_secs(*timeout_secs),
            })
            .map_err(setup_error)?;
            start_remote(backend, fleet_ref, *clock, applied()?)
        }
    }
}

/// Starts a remote provisioner's worker for its fleet.
fn start_remote<B: RemoteBackend>(
    backend: B,
    fleet: FleetRef,
    clock: NodeClock,
    store: AppliedStore,
) -> Result<Option<Box<dyn Provisioner>>, CliError> {
    let name = fleet.fleet.clone();
    let provisioner =
        RemoteProvisioner::start(backend, fleet, clock, Some(store)).map_err(|e| {
            CliError::runtime(anyhow!("fleet `{name}`: cannot start its provisioner: {e}"))
        })?;
    Ok(Some(Box::new(provisioner)))
}

/// Builds and starts the driver of the forecaster's region, if it has fleets.
pub fn start(
    config: &Config,
    receiver: Arc<SketchReceiver<StoreSink>>,
    traffic: Arc<prescale_regions::ingest::NodeTraffic>,
    options: LiveOptions,
) -> Result<Option<Live>, CliError> {
    let settings = config.forecaster.as_ref().ok_or_else(|| {
        CliError::input(anyhow!("[forecaster] is required to run the live driver"))
    })?;
    let Some(region) = config.node_region().map(str::to_string) else {
        return Ok(None);
    };
    let fleets_of_region: Vec<&FleetConfig> = config
        .fleets
        .iter()
        .filter(|f| f.region == region)
        .collect();
    if fleets_of_region.is_empty() {
        return Ok(None);
    }
    let mut fleets = Vec::new();
    for fleet in &fleets_of_region {
        fleets.push(LiveFleet {
            spec: fleet_spec(config, &region, fleet),
            provisioner: provisioner(config, &region, fleet, &settings.database, &options.clock)?,
            static_backends: fleet.backends.len() as u32,
        });
    }
    let store = SeriesStore::open(&settings.database)
        .map_err(|e| CliError::input(anyhow!("forecaster.database: {e}")))?;
    let ledger = Ledger::open(&settings.database)
        .map_err(|e| CliError::input(anyhow!("forecaster.database: {e}")))?;
    let longest_lead = fleets_of_region
        .iter()
        .map(|f| f.cold_start_secs / 60 + 1)
        .max()
        .unwrap_or(1);
    let live_settings = LiveSettings {
        region: region.clone(),
        rule: CompletenessRule {
            lateness_ms: settings.lateness_secs * 1000,
            silent_after_ms: settings.silent_after_secs * 1000,
        },
        history_minutes: u64::from(config.forecast.history_days) * 1440,
        forecast_only: settings.forecast_only,
        cold_minutes: longest_lead + u64::from(config.planner.stabilization_minutes) + 1,
    };
    let open_events = || {
        EventStore::open(&settings.database)
            .map_err(|e| CliError::input(anyhow!("forecaster.database: {e}")))
    };
    let (driver_events, admin_events) = (open_events()?, open_events()?);
    let open_history = || {
        History::open(&settings.database)
            .map_err(|e| CliError::input(anyhow!("forecaster.database: {e}")))
    };
    let (driver_history, admin_history) = (open_history()?, open_history()?);
    let brain = Brain::new(config.forecast.clone(), config.planner.clone());
    let publisher = Arc::clone(&receiver);
    let mut driver = LiveDriver::new(
        live_settings,
        brain,
        store,
        ledger,
        fleets,
        Box::new(move |plan| publisher.publish_plan(plan).map_err(|e| e.to_string())),
    );
    driver.use_events(driver_events);
    driver.use_history(driver_history);
    driver.use_traffic(traffic);
    if options.print_decisions {
        driver.on_decision(Box::new(|d: &DecisionRecord| {
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            let _ = writeln!(
                out,
                "{} plan {}/{}: {} — {}",
                clock_text(d.at_ms),
                d.region,
                d.fleet,
                d.action,
                d.reason
            );
            let _ = out.flush();
        }));
    }
    let shared = driver.shared();
    let stop = Arc::new(AtomicBool::new(false));
    let thread = driver
        .spawn(
            options.clock,
            Arc::clone(&stop),
            options.stop_instances_on_exit,
        )
        .map_err(|e| CliError::runtime(anyhow!("cannot start the live driver: {e}")))?;
    tracing::info!(%region, speedup = options.clock.speed(), "live driver running");
    Ok(Some(Live {
        shared,
        stop,
        thread: Mutex::new(Some(thread)),
        events: Mutex::new(admin_events),
        regions: config.regions.iter().map(|r| r.name.clone()).collect(),
        clock: options.clock,
        history: Mutex::new(admin_history),
        extras: Mutex::new(Vec::new()),
    }))
}

/// `YYYY-MM-DD HH:MM:SS` (UTC) of unix milliseconds.
pub fn clock_text(ms: u64) -> String {
    let t = prescale_regions::report::time::civil_time(ms / 1000);
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
        t.year, t.month, t.day, t.hour, t.minute, t.second
    )
}

impl Live {
    /// `GET /api/v1/plan`, `GET /api/v1/forecast`, `POST /api/v1/mode`, and the scheduled
    /// events: `GET`/`POST /api/v1/events`, `GET`/`PUT`/`DELETE /api/v1/events/{id}`.
    pub fn handlers(self: &Arc<Self>) -> Vec<Handler> {
        let live = Arc::clone(self);
        vec![Arc::new(move |request: &AdminRequest| {
            if request.path == EVENTS_PATH {
                return Some(live.events_collection(request));
            }
            if let Some(id) = request
                .path
                .strip_prefix(EVENTS_PATH)
                .and_then(|rest| rest.strip_prefix('/'))
            {
                return Some(live.event_item(request, id));
            }
            match (request.method.clone(), request.path.as_str()) {
                (http::Method::GET, "/api/v1/plan") => Some(live.plan()),
                (http::Method::GET, "/api/v1/forecast") => Some(live.forecast(request)),
                (http::Method::GET, "/api/v1/history") => Some(live.history(request)),
                (http::Method::POST, "/api/v1/mode") => Some(live.set_mode(request)),
                (_, "/api/v1/plan" | "/api/v1/forecast" | "/api/v1/history" | "/api/v1/mode") => {
                    Some(admin::json_error(
                        http::StatusCode::METHOD_NOT_ALLOWED,
                        "GET /api/v1/plan, GET /api/v1/forecast, GET /api/v1/history, POST /api/v1/mode",
                    ))
                }
                _ => None,
            }
        })]
    }

    fn forecast(&self, request: &AdminRequest) -> admin::AdminResponse {
        let view = self.shared.view();
        if let Some(region) = request.query_param("region") {
            if region != view.region {
                return admin::json_error(
                    http::StatusCode::NOT_FOUND,
                    &format!(
                        "region `{region}` is not planned here (this forecaster plans `{}`)",
                        view.region
                    ),
                );
            }
        }
        let profile = request.query_param("profile");
        let fleet = request.query_param("fleet");
        if let Some(name) = &fleet {
            if !view.fleets.iter().any(|f| &f.fleet == name) {
                return admin::json_error(
                    http::StatusCode::NOT_FOUND,
                    &format!("no fleet `{name}` in region `{}`", view.region),
                );
            }
        }
        let fleets: Vec<_> = view
            .fleets
            .iter()
            .filter(|f| fleet.as_ref().is_none_or(|n| &f.fleet == n) && profile.is_none())
            .map(|f| serde_json::json!({ "fleet": f.fleet, "points": f.forecast }))
            .collect();
        let series: Vec<_> = view
            .series
            .iter()
            .filter(|s| profile.as_ref().is_none_or(|p| &s.profile == p) && fleet.is_none())
            .map(|s| serde_json::json!({ "profile": s.profile, "points": s.forecast }))
            .collect();
        if let Some(name) = &profile {
            if series.is_empty() {
                return admin::json_error(
                    http::StatusCode::NOT_FOUND,
                    &format!(
                        "no forecast yet for profile `{name}` in region `{}`",
                        view.region
                    ),
                );
            }
        }
        admin::json(&serde_json::json!({
            "region": view.region,
            "at_ms": view.at_ms,
            "unit": "requests per minute",
            "horizons_minutes": VIEW_HORIZONS,
            "fleets": fleets,
            "profiles": series,
        }))
    }

    /// `GET /api/v1/history?fleet=F[&region=R][&from=S&to=S | &minutes=N]`: a fleet's recorded
    /// minutes (capacity, demand, lead-time forecast), by default the last
    /// [`HISTORY_DEFAULT_MINUTES`] before now.
    fn history(&self, request: &AdminRequest) -> admin::AdminResponse {
        let bad = |message: String| admin::json_error(http::StatusCode::BAD_REQUEST, &message);
        let view = self.shared.view();
        if let Some(region) = request.query_param("region") {
            if region != view.region {
                return admin::json_error(
                    http::StatusCode::NOT_FOUND,
                    &format!(
                        "region `{region}` is not planned here (this forecaster plans `{}`)",
                        view.region
                    ),
                );
            }
        }
        let Some(fleet) = request.query_param("fleet") else {
            return bad("fleet: required (one of the region's fleets)".to_string());
        };
        if !view.fleets.iter().any(|f| f.fleet == fleet) {
            return admin::json_error(
                http::StatusCode::NOT_FOUND,
                &format!("no fleet `{fleet}` in region `{}`", view.region),
            );
        }
        let seconds = |name: &str| -> Result<Option<u64>, String> {
            request
                .query_param(name)
                .map(|v| {
                    v.parse::<u64>().map_err(|_| {
                        format!("{name}: expected unix seconds (a whole number), got `{v}`")
                    })
                })
                .transpose()
        };
        let (from, to, minutes) = match (seconds("from"), seconds("to"), seconds("minutes")) {
            (Ok(f), Ok(t), Ok(m)) => (f, t, m),
            (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => return bad(e),
        };
        if minutes.is_some() && (from.is_some() || to.is_some()) {
            return bad("minutes: give either minutes or from/to, not both".to_string());
        }
        let now = self.clock.now_ms() / 1000 / 60 * 60 + 60;
        let (from, to) = match (from, to, minutes) {
            (_, _, Some(m)) if m == 0 || m > HISTORY_MAX_MINUTES => {
                return bad(format!(
                    "minutes: between 1 and {HISTORY_MAX_MINUTES}, got {m}"
                ))
            }
            (_, _, Some(m)) => (now.saturating_sub(m * 60), now),
            (from, to, None) => {
                let to = to.unwrap_or(now);
                let from = from.unwrap_or(to.saturating_sub(HISTORY_DEFAULT_MINUTES * 60));
                if from >= to {
                    return bad(format!("from: must be before to ({from} >= {to})"));
                }
                if to - from > HISTORY_MAX_MINUTES * 60 {
                    return bad(format!(
                        "to: at most {HISTORY_MAX_MINUTES} minutes after from"
                    ));
                }
                (from, to)
            }
        };
        let minutes = self
            .history
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .fleet_minutes(&view.region, &fleet, from, to);
        match minutes {
            Ok(minutes) => admin::json(&serde_json::json!({
                "region": view.region,
                "fleet": fleet,
                "from": from,
                "to": to,
                "unit": "requests per minute",
                "minutes": minutes,
            })),
            Err(e) => {
                tracing::warn!(error = %e, "capacity history: the database failed");
                admin::json_error(http::StatusCode::INTERNAL_SERVER_ERROR, &e.to_string())
            }
        }
    }

    fn event_store(&self) -> std::sync::MutexGuard<'_, EventStore> {
        self.events.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `GET /api/v1/events` (all, by start), `POST /api/v1/events` (create → 201).
    fn events_collection(&self, request: &AdminRequest) -> admin::AdminResponse {
        match request.method {
            http::Method::GET => match self.event_store().list() {
                Ok(events) => admin::json(&serde_json::json!({ "events": events })),
                Err(e) => event_error(e),
            },
            http::Method::POST => {
                let input = match EventInput::from_json(&request.body, &self.regions) {
                    Ok(input) => input,
                    Err(e) => return event_error(e),
                };
                let created = self.event_store().create(&input, self.clock.now_ms());
                match created {
                    Ok(event) => {
                        self.shared.events_changed();
                        tracing::info!(id = %event.id, tag = %event.tag, start = event.start, end = event.end, "scheduled event created");
                        admin::json_with_status(http::StatusCode::CREATED, &event)
                    }
                    Err(e) => event_error(e),
                }
            }
            _ => method_not_allowed("GET, POST", "GET or POST /api/v1/events"),
        }
    }

    /// `GET`, `PUT` (replace → 200) and `DELETE` (→ 200 with the deleted event) of one event.
    fn event_item(&self, request: &AdminRequest, id: &str) -> admin::AdminResponse {
        match request.method {
            http::Method::GET => match self.event_store().get(id) {
                Ok(event) => admin::json(&event),
                Err(e) => event_error(e),
            },
            http::Method::PUT => {
                let mut store = self.event_store();
                // An unknown id is a 404 whatever the body holds.
                if let Err(e) = store.get(id) {
                    return event_error(e);
                }
                let input = match EventInput::from_json(&request.body, &self.regions) {
                    Ok(input) => input,
                    Err(e) => return event_error(e),
                };
                match store.update(id, &input, self.clock.now_ms()) {
                    Ok(event) => {
                        drop(store);
                        self.shared.events_changed();
                        tracing::info!(id = %event.id, version = event.version, "scheduled event updated");
                        admin::json(&event)
                    }
                    Err(e) => event_error(e),
                }
            }
            http::Method::DELETE => {
                let deleted = self.event_store().delete(id);
                match deleted {
                    Ok(event) => {
                        self.shared.events_changed();
                        tracing::info!(id = %event.id, "scheduled event deleted");
                        admin::json(&event)
                    }
                    Err(e) => event_error(e),
                }
            }
            _ => method_not_allowed("GET, PUT, DELETE", "GET, PUT or DELETE /api/v1/events/{id}"),
        }
    }

    fn set_mode(&self, request: &AdminRequest) -> admin::AdminResponse {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Mode {
            forecast_only: bool,
        }
        match serde_json::from_slice::<Mode>(&request.body) {
            Ok(mode) => {
                self.shared.set_forecast_only(mode.forecast_only);
                tracing::info!(forecast_only = mode.forecast_only, "mode changed");
                admin::json(&serde_json::json!({ "forecast_only": mode.forecast_only }))
            }
            Err(e) => admin::json_error(
                http::StatusCode::BAD_REQUEST,
                &format!("expected {{\"forecast_only\": true|false}}: {e}"),
            ),
        }
    }

    pub fn metrics(self: &Arc<Self>) -> MetricsSource {
        let live = Arc::clone(self);
        Arc::new(move |out: &mut String| {
            use std::fmt::Write;
            let s = &live.shared.stats;
            let load = |v: &std::sync::atomic::AtomicU64| v.load(Ordering::Relaxed);
            let rows = [
                ("prescale_live_minutes_observed_total", "counter", "Complete minutes handed to the brain.", load(&s.minutes_observed)),
                ("prescale_live_minutes_absent_total", "counter", "Minutes no sketch covered (missing data, not zero demand).", load(&s.minutes_absent)),
                ("prescale_live_late_minutes_total", "counter", "Minutes corrected after hand-over because sketches came late.", load(&s.late_minutes)),
                ("prescale_live_late_requests_total", "counter", "Requests that arrived after their minute was handed to the brain (then corrected).", load(&s.late_requests)),
                ("prescale_live_ticks_total", "counter", "Driver steps.", load(&s.ticks)),
                ("prescale_live_decisions_total", "counter", "Plan decisions (scale-up, drain, remove).", load(&s.decisions)),
                ("prescale_live_plans_published_total", "counter", "Plan versions pushed to the proxies.", load(&s.plans_published)),
                ("prescale_live_plan_publish_failures_total", "counter", "Plans that could not be pushed (retried).", load(&s.publish_failures)),
                ("prescale_live_store_failures_total", "counter", "Store or ledger reads and writes of the driver that failed.", load(&s.store_failures)),
                ("prescale_live_event_syncs_total", "counter", "Times the driver re-read the scheduled events and handed them to the brain (at start and after each change).", load(&s.event_syncs)),
            ];
            for (name, kind, help, value) in rows {
                admin::write_metric(out, name, kind, help, value);
            }
            let _ = writeln!(out, "# HELP prescale_live_tick_seconds_last Duration of the last driver step.\n# TYPE prescale_live_tick_seconds_last gauge\nprescale_live_tick_seconds_last {}", load(&s.last_tick_micros) as f64 / 1e6);
            let view = live.shared.view();
            let _ = writeln!(out, "# HELP prescale_forecast_only Whether the forecaster only plans and reports (provisions nothing).\n# TYPE prescale_forecast_only gauge\nprescale_forecast_only {}", u8::from(view.forecast_only));
            let _ = writeln!(out, "# HELP prescale_live_holding Whether the driver holds capacity for lack of data.\n# TYPE prescale_live_holding gauge\nprescale_live_holding{{region=\"{}\"}} {}", view.region, u8::from(view.holding.is_some()));
            let active = view.events.iter().filter(|e| e.active).count();
            let _ = writeln!(out, "# HELP prescale_scheduled_events Scheduled events of the region the plan takes into account, running now or yet to come.\n# TYPE prescale_scheduled_events gauge");
            for (state, n) in [("active", active), ("upcoming", view.events.len() - active)] {
                let _ = writeln!(
                    out,
                    "prescale_scheduled_events{{region=\"{}\",state=\"{state}\"}} {n}",
                    view.region
                );
            }
            fleet_family(
                out,
                &view,
                "prescale_plan_instances",
                "gauge",
                "Instances the plan wants serving per fleet.",
                |f| Some(f.planned.to_string()),
            );
            let _ = writeln!(out, "# HELP prescale_fleet_instances Instances per fleet and state.\n# TYPE prescale_fleet_instances gauge");
            for f in &view.fleets {
                for (state, n) in [
                    ("warming", f.instances.warming),
                    ("ready", f.instances.ready),
                    ("draining", f.instances.draining),
                ] {
                    let _ = writeln!(out, "prescale_fleet_instances{{region=\"{}\",fleet=\"{}\",state=\"{state}\"}} {n}", view.region, f.fleet);
                }
            }
            fleet_family(
                out,
                &view,
                "prescale_fleet_ready_instances",
                "gauge",
                "Ready instances per fleet (the ready capacity's count).",
                |f| Some(f.instances.ready.to_string()),
            );
            fleet_family(
                out,
                &view,
                "prescale_fleet_demand_requests",
                "gauge",
                "Requests of the fleet's profiles in the last minute handed to the brain.",
                |f| f.accuracy.last.as_ref().map(|l| l.demand.to_string()),
            );
            let _ = writeln!(out, "# HELP prescale_fleet_forecast_requests The forecast made one lead time ahead of the last handed minute (requests in it): point and interval bounds.\n# TYPE prescale_fleet_forecast_requests gauge");
            for f in &view.fleets {
                if let Some(forecast) = f.accuracy.last.as_ref().and_then(|l| l.forecast.as_ref()) {
                    for (bound, v) in [
                        ("point", forecast.point),
                        ("lower", forecast.lower),
                        ("upper", forecast.upper),
                    ] {
                        let _ = writeln!(out, "prescale_fleet_forecast_requests{{region=\"{}\",fleet=\"{}\",bound=\"{bound}\"}} {v}", view.region, f.fleet);
                    }
                }
            }
            fleet_family(
                out,
                &view,
                "prescale_forecast_minutes_total",
                "counter",
                "Handed minutes that had a forecast recorded one lead time before them.",
                |f| Some(f.accuracy.minutes_scored.to_string()),
            );
            fleet_family(
                out,
                &view,
                "prescale_forecast_misses_total",
                "counter",
                "Of those, minutes whose demand fell outside the forecast's interval.",
                |f| Some(f.accuracy.misses.to_string()),
            );
            let _ = writeln!(out, "# HELP prescale_provisioner_start_failures_total Instance starts that failed, or remote provisioner calls that failed or timed out (retried with backoff).\n# TYPE prescale_provisioner_start_failures_total counter");
            for f in &view.fleets {
                if let Some(p) = &f.provisioner {
                    let _ = writeln!(out, "prescale_provisioner_start_failures_total{{region=\"{}\",fleet=\"{}\",provisioner=\"{}\"}} {}", view.region, f.fleet, p.kind, p.start_failures_total);
                }
            }
            let _ = writeln!(out, "# HELP prescale_provisioner_calls_total Calls of the remote provisioners (exec, webhook, kubernetes): `apply` carries a target out (or a step of it), `read` reads the remote side's counts; by outcome (ok, error, timeout; failures are retried with backoff).\n# TYPE prescale_provisioner_calls_total counter");
            for f in &view.fleets {
                let Some((p, remote)) = f
                    .provisioner
                    .as_ref()
                    .and_then(|p| p.remote.as_ref().map(|r| (p, r)))
                else {
                    continue;
                };
                for (call, counts) in [("apply", &remote.calls), ("read", &remote.reads)] {
                    for (outcome, n) in [
                        ("ok", counts.ok),
                        ("error", counts.error),
                        ("timeout", counts.timeout),
                    ] {
                        let _ = writeln!(out, "prescale_provisioner_calls_total{{region=\"{}\",fleet=\"{}\",provisioner=\"{}\",call=\"{call}\",outcome=\"{outcome}\"}} {n}", view.region, f.fleet, p.kind);
                    }
                }
            }
            let _ = writeln!(out, "# HELP prescale_provisioner_pending Whether a remote provisioner has a target it has not carried out yet (being called for, stepped toward or retried).\n# TYPE prescale_provisioner_pending gauge");
            for f in &view.fleets {
                if let Some((p, remote)) = f
                    .provisioner
                    .as_ref()
                    .and_then(|p| p.remote.as_ref().map(|r| (p, r)))
                {
                    let _ = writeln!(out, "prescale_provisioner_pending{{region=\"{}\",fleet=\"{}\",provisioner=\"{}\"}} {}", view.region, f.fleet, p.kind, u8::from(remote.pending.is_some()));
                }
            }
            let _ = writeln!(out, "# HELP prescale_provisioner_unexpected_exits_total Ready instances that exited on their own (replaced).\n# TYPE prescale_provisioner_unexpected_exits_total counter");
            for f in &view.fleets {
                if let Some(p) = &f.provisioner {
                    let _ = writeln!(out, "prescale_provisioner_unexpected_exits_total{{region=\"{}\",fleet=\"{}\",provisioner=\"{}\"}} {}", view.region, f.fleet, p.kind, p.unexpected_exits_total);
                }
            }
        })
    }
}

/// Writes one metric family with a sample per fleet (`value` None: no sample for that fleet).
fn fleet_family(
    out: &mut String,
    view: &LiveView,
    name: &str,
    kind: &str,
    help: &str,
    value: impl Fn(&FleetView) -> Option<String>,
) {
    use std::fmt::Write;
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    for f in &view.fleets {
        if let Some(v) = value(f) {
            let _ = writeln!(
                out,
                "{name}{{region=\"{}\",fleet=\"{}\"}} {v}",
                view.region, f.fleet
            );
        }
    }
}

const EVENTS_PATH: &str = "/api/v1/events";
/// Minutes `/api/v1/history` answers by default, and at most (a week).
const HISTORY_DEFAULT_MINUTES: u64 = 180;
const HISTORY_MAX_MINUTES: u64 = 10_080;

/// An event store or input error as the admin API answers it: 400 naming the field, 404 for an
/// unknown id, 409 for a taken id, 500 when the database fails.
fn event_error(e: prescale_regions::Error) -> admin::AdminResponse {
    use prescale_regions::Error;
    let status = match &e {
        Error::EventInput { .. } => http::StatusCode::BAD_REQUEST,
        Error::EventNotFound { .. } => http::StatusCode::NOT_FOUND,
        Error::EventConflict { .. } => http::StatusCode::CONFLICT,
        _ => {
            tracing::warn!(error = %e, "scheduled events: the database failed");
            http::StatusCode::INTERNAL_SERVER_ERROR
        }
    };
    admin::json_error(status, &e.to_string())
}

pub(crate) fn method_not_allowed(allow: &'static str, message: &str) -> admin::AdminResponse {
    let mut response = admin::json_error(http::StatusCode::METHOD_NOT_ALLOWED, message);
    response
        .headers_mut()
        .insert(http::header::ALLOW, http::HeaderValue::from_static(allow));
    response
}
