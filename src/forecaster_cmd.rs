//! `prescale forecaster`: the regional forecaster service — the QUIC receiver of proxies'
//! sketches, the SQLite series store behind it, the live driver that runs the brain and the
//! provisioners for the region (`live_cmd.rs`), and its admin API (`/api/v1/series`,
//! `/api/v1/nodes`, `/api/v1/plan`, `/api/v1/forecast`, `/api/v1/mode`, `/api/v1/report` from
//! `report_cmd.rs`, `POST /api/v1/ingest` from `ingest_cmd.rs`, the learned profiles from
//! `learning_cmd.rs`, `/metrics`). Also used
//! in-process by `prescale up`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, Context};
use prescale_config::Config;
use prescale_gossip::{NodeIdentity, ReceiverConfig, SketchReceiver};
use prescale_proxy::admin::{self, AdminRequest, AdminRoutes, Handler, MetricsSource, Readiness};
use prescale_regions::ingest::StoreSink;
use prescale_regions::store::SeriesQuery;

use crate::exit::CliError;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The configuration file; needs [mesh] and [forecaster] sections.
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
    /// Run the forecaster's clock (store minutes, planning ticks, drains) this many times faster,
    /// 1 to 1000; the region's proxies must use the same factor.
    #[arg(long, value_name = "X", default_value_t = 1.0)]
    speedup: f64,
}

/// A running forecaster: its receiver, store and live driver.
pub struct Forecaster {
    pub receiver: Arc<SketchReceiver<StoreSink>>,
    pub live: Option<Arc<crate::live_cmd::Live>>,
    pub sink: Arc<StoreSink>,
    /// `POST /api/v1/ingest`.
    pub ingest: Arc<crate::ingest_cmd::IngestService>,
    /// Profile learning: sampled users, model builds, publishing.
    pub learning: Arc<crate::learning_cmd::Learning>,
    /// Operator personas (`/api/v1/personas`), in the same database.
    pub personas: Arc<crate::personas_cmd::PersonaAdmin>,
    pub quic_addr: SocketAddr,
    silent_after: Duration,
}

/// Loads the mesh identity named by `[mesh]`.
pub fn mesh_identity(config: &Config) -> Result<NodeIdentity, CliError> {
    let mesh = config
        .mesh
        .as_ref()
        .ok_or_else(|| CliError::input(anyhow!("[mesh] (ca, cert, key) is required here")))?;
    NodeIdentity::load(&mesh.ca, &mesh.cert, &mesh.key).map_err(|e| {
        CliError::input(anyhow!(
            "[mesh]: cannot load {} / {} / {}: {e}",
            mesh.ca.display(),
            mesh.cert.display(),
            mesh.key.display()
        ))
    })
}

/// Opens the store, starts the receiver on the current tokio runtime and the live driver on its
/// own thread.
pub fn start(
    config: &Config,
    control: &tokio::runtime::Handle,
    options: crate::live_cmd::LiveOptions,
) -> Result<Forecaster, CliError> {
    let settings = config.forecaster.as_ref().ok_or_else(|| {
        CliError::input(anyhow!(
            "[forecaster] (listen, database) is required to run a forecaster"
        ))
    })?;
    let identity = mesh_identity(config)?;
    if let Some(parent) = settings
        .database
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
    {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("forecaster.database: cannot create {}", parent.display()))
            .map_err(CliError::input)?;
    }
    let region = config.node_region().ok_or_else(|| {
        CliError::input(anyhow!(
            "node.region: a forecaster stores the sketches of its own region only: name it"
        ))
    })?;
    let admission = prescale_regions::admission::Admission::new(region, settings.retention_days);
    let sink = Arc::new(
        StoreSink::open(&settings.database, admission, options.clock)
            .map_err(|e| CliError::input(anyhow!("forecaster.database: {e}")))?,
    );
    // Before the receiver starts, so that no stored sketch's samples are missed.
    let samples = crate::learning_cmd::attach_samples(config, &sink);
    let _guard = control.enter();
    let receiver = Arc::new(
        SketchReceiver::start(
            ReceiverConfig::new(settings.listen, identity),
            Arc::clone(&sink),
        )
        .map_err(|e| CliError::input(anyhow!("forecaster.listen {}: {e}", settings.listen)))?,
    );
    let quic_addr = receiver
        .local_addr()
        .map_err(|e| CliError::runtime(anyhow!("forecaster address: {e}")))?;
    let retention = Duration::from_secs(settings.retention_days * 86_400);
    let pruned = Arc::clone(&sink);
    let history_database = settings.database.clone();
    let clock = options.clock;
    let ingest_samples = samples
        .clone()
        .map(|table| table as Arc<dyn prescale_regions::ingest::SampleObserver>);
    let ingest = crate::ingest_cmd::start(
        config,
        &settings.database,
        settings.retention_days,
        clock,
        ingest_samples,
    )?;
    let personas = Arc::new(crate::personas_cmd::PersonaAdmin::open(
        config,
        &settings.database,
        clock,
    )?);
    control.spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(3600));
        loop {
            tick.tick().await;
            let sink = Arc::clone(&pruned);
            // Series minutes are node time.
            let now = clock.now_secs();
            match tokio::task::spawn_blocking(move || sink.prune(now, retention.as_secs())).await {
                Ok(Ok(rows)) if rows > 0 => tracing::info!(rows, "pruned series past retention"),
                Ok(Err(e)) => tracing::warn!(error = %e, "pruning the series store failed"),
                _ => {}
            }
            let database = history_database.clone();
            let cutoff = now.saturating_sub(retention.as_secs());
            let pruned_history = tokio::task::spawn_blocking(move || {
                prescale_regions::history::History::open(&database)?.prune(cutoff)
            });
            match pruned_history.await {
                Ok(Ok(rows)) if rows > 0 => {
                    tracing::info!(rows, "pruned capacity history past retention")
                }
                Ok(Err(e)) => tracing::warn!(error = %e, "pruning the capacity history failed"),
                _ => {}
            }
        }
    });
    tracing::info!(quic = %quic_addr, database = %settings.database.display(), "forecaster receiving sketches");
    let live = crate::live_cmd::start(
        config,
        Arc::clone(&receiver),
        Arc::clone(&sink.traffic),
        options,
    )?
    .map(Arc::new);
    // After the live driver and the ingest, which take every model it publishes.
    let publisher = Arc::new(crate::model_fanout::ModelFanOut {
        receiver: Arc::clone(&receiver),
        ingest: Arc::clone(&ingest),
        live: live.as_ref().map(|l| Arc::clone(&l.shared)),
        database: settings.database.clone(),
        configured: config.profiles.iter().map(|p| p.name.clone()).collect(),
    });
    let learning = Arc::new(crate::learning_cmd::start(
        config,
        samples,
        publisher,
        &settings.database,
        clock,
    )?);
    let republish = Arc::clone(&learning);
    personas.on_change(Arc::new(move || republish.republish()))?;
    Ok(Forecaster {
        receiver,
        live,
        sink,
        ingest,
        learning,
        personas,
        quic_addr,
        silent_after: Duration::from_secs(settings.silent_after_secs),
    })
}

impl Forecaster {
    /// Stops the live driver (and, when it was asked to, the instances it provisioned).
    pub fn stop(&self) {
        if let Some(live) = &self.live {
            live.stop();
        }
        self.learning.stop();
    }

    /// Admin routes: series, nodes, and the live driver's plan, forecast and mode.
    pub fn handlers(self: &Arc<Self>) -> Vec<Handler> {
        let forecaster = Arc::clone(self);
        let mut handlers: Vec<Handler> = self
            .live
            .as_ref()
            .map(|live| live.handlers())
            .unwrap_or_default();
        handlers.push(Arc::new(move |request: &AdminRequest| {
            if request.method != http::Method::GET {
                return None;
            }
            match request.path.as_str() {
                "/api/v1/series" => Some(forecaster.series(request)),
                "/api/v1/nodes" => Some(forecaster.nodes()),
                _ => None,
            }
        }));
        handlers.push(crate::report_cmd::admin_handler(
            self.sink.path().to_path_buf(),
        ));
        handlers.push(self.ingest.handler());
        handlers.extend(self.learning.handlers());
        handlers.push(self.personas.handler());
        handlers
    }

    fn series(&self, request: &AdminRequest) -> admin::AdminResponse {
        let number = |name: &str| -> Result<Option<u64>, String> {
            request
                .query_param(name)
                .map(|v| {
                    v.parse::<u64>()
                        .map_err(|_| format!("`{name}` must be unix seconds, got `{v}`"))
                })
                .transpose()
        };
        let (from, to) = match (number("from"), number("to")) {
            (Ok(from), Ok(to)) => (from, to),
            (Err(e), _) | (_, Err(e)) => {
                return admin::json_error(http::StatusCode::BAD_REQUEST, &e)
            }
        };
        let query = SeriesQuery {
            region: request.query_param("region"),
            profile: request.query_param("profile"),
            fleet: request.query_param("fleet"),
            from,
            to,
        };
        match self.sink.series(&query) {
            Ok(series) => admin::json(&serde_json::json!({
                "resolution_secs": 60,
                "series": series.into_iter().map(|(name, points)| {
                    let mut parts = name.splitn(3, '/');
                    serde_json::json!({
                        "region": parts.next(),
                        "profile": parts.next(),
                        "fleet": parts.next(),
                        "points": points,
                    })
                }).collect::<Vec<_>>(),
            })),
            Err(e) => admin::json_error(http::StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
        }
    }

    fn nodes(&self) -> admin::AdminResponse {
        let stored = match self.sink.nodes() {
            Ok(nodes) => nodes,
            Err(e) => {
                return admin::json_error(http::StatusCode::INTERNAL_SERVER_ERROR, &e.to_string())
            }
        };
        let now = SystemTime::now();
        let connected: Vec<String> = self.receiver.nodes().into_iter().map(|n| n.node).collect();
        let silent: Vec<String> = self
            .receiver
            .silent_nodes(now, self.silent_after)
            .into_iter()
            .map(|n| n.node)
            .collect();
        let now_ms = unix_secs() * 1000;
        let nodes: Vec<_> = stored
            .into_iter()
            .map(|n| {
                let quiet_ms = now_ms.saturating_sub(n.last_seen_ms);
                serde_json::json!({
                    "node": n.node,
                    "region": n.region,
                    "last_seen_ms": n.last_seen_ms,
                    "last_sequence": n.last_sequence,
                    "sketches": n.sketches,
                    "spool_backlog": n.spooled,
                    "spool_dropped": n.dropped,
                    "seen_since_start": connected.contains(&n.node),
                    "silent": silent.contains(&n.node) || quiet_ms > self.silent_after.as_millis() as u64,
                })
            })
            .collect();
        admin::json(&serde_json::json!({ "nodes": nodes }))
    }

    /// Routes that take larger bodies than the admin listener's default.
    pub fn body_limits(&self) -> Vec<admin::BodyLimit> {
        vec![self.ingest.body_limit()]
    }

    pub fn metrics(self: &Arc<Self>) -> Vec<MetricsSource> {
        let forecaster = Arc::clone(self);
        let mut sources: Vec<MetricsSource> = self
            .live
            .as_ref()
            .map(|l| vec![l.metrics()])
            .unwrap_or_default();
        sources.push(self.ingest.metrics());
        sources.push(self.learning.metrics());
        sources.push(Arc::new(move |out: &mut String| {
            let r = forecaster.receiver.stats();
            let s = &forecaster.sink.stats;
            let counters = [
                (
                    "prescale_forecaster_sketches_accepted_total",
                    "Sketches accepted from proxies.",
                    r.accepted,
                ),
                (
                    "prescale_forecaster_sketches_duplicate_total",
                    "Sketches received again and skipped.",
                    r.duplicates,
                ),
                (
                    "prescale_forecaster_frames_rejected_total",
                    "Malformed, oversized or unexpected frames rejected.",
                    r.rejected,
                ),
                (
                    "prescale_forecaster_wrong_node_total",
                    "Sketches whose node name did not match the sender's certificate.",
                    r.wrong_node,
                ),
                (
                    "prescale_forecaster_sink_errors_total",
                    "Sketches the store could not take (resent by the proxy).",
                    r.sink_errors,
                ),
                (
                    "prescale_forecaster_handshake_failures_total",
                    "QUIC/TLS handshakes refused (e.g. certificate not from the CA).",
                    r.handshake_failures,
                ),
                (
                    "prescale_forecaster_connections_refused_total",
                    "QUIC connections refused or closed over a per-peer or total cap.",
                    r.refused_connections,
                ),
                (
                    "prescale_forecaster_connections_total",
                    "QUIC connections accepted.",
                    r.connections,
                ),
                (
                    "prescale_forecaster_sketches_stored_total",
                    "Sketches committed to the series store.",
                    s.stored.load(Ordering::Relaxed),
                ),
                (
                    "prescale_forecaster_store_batches_total",
                    "Store transactions.",
                    s.batches.load(Ordering::Relaxed),
                ),
                (
                    "prescale_forecaster_store_failures_total",
                    "Sketches the store failed to write.",
                    s.failed.load(Ordering::Relaxed),
                ),
            ];
            for (name, help, value) in counters {
                admin::write_metric(out, name, "counter", help, value);
            }
            {
                use std::fmt::Write as _;
                let name = "prescale_forecaster_sketches_refused_total";
                let _ = writeln!(
                    out,
                    "# HELP {name} Sketches refused for good, by reason (the proxy drops them).\n# TYPE {name} counter"
                );
                for reason in prescale_gossip::Refusal::ALL {
                    let _ = writeln!(out, "{name}{{reason=\"{reason}\"}} {}", r.refused(reason));
                }
            }
            admin::write_metric(
                out,
                "prescale_forecaster_connected_nodes",
                "gauge",
                "Proxies connected now.",
                forecaster.receiver.connected(),
            );
        }));
        sources
    }

    pub fn readiness(self: &Arc<Self>) -> Readiness {
        let forecaster = Arc::clone(self);
        Arc::new(move || {
            forecaster
                .sink
                .nodes()
                .map(|_| ())
                .map_err(|e| format!("series store: {e}"))
        })
    }
}

pub fn run(args: Args) -> Result<(), CliError> {
    let config = prescale_config::load_file(&args.config).map_err(CliError::input)?;
    let control = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("prescale-forecaster")
        .enable_all()
        .build()
        .context("cannot start the forecaster runtime")?;
    let mut stop = crate::node_cmd::StopSignals::watch(&control).map_err(CliError::runtime)?;
    let options = crate::live_cmd::LiveOptions {
        clock: crate::node_cmd::node_clock(args.speedup)?,
        stop_instances_on_exit: false,
        print_decisions: false,
    };
    let forecaster = Arc::new(start(&config, control.handle(), options)?);
    let (stop_admin, admin_stop_rx) = tokio::sync::watch::channel(false);
    let mut handlers = forecaster.handlers();
    // `/api/v1/profiles` stays the proxy's alone (in `prescale up` the proxy in the process
    // answers it): the dashboard takes an answer there for "this node runs a proxy" and reads
    // the proxy's per-profile view from it. The learned model is at `/api/v1/profiles/model`.
    let mut metrics = forecaster.metrics();
    let (stop_keda, keda_stop_rx) = tokio::sync::watch::channel(false);
    if let Some(keda) = crate::keda_cmd::start(
        &config,
        forecaster.live.as_ref(),
        control.handle(),
        keda_stop_rx,
    )? {
        metrics.push(keda.metrics());
    }
    let region = config.node_region().unwrap_or_default().to_string();
    if let Some(membership) = crate::membership_cmd::start(
        &config,
        prescale_gossip::Role::Forecaster,
        &region,
        control.handle(),
    )? {
        handlers.extend(crate::membership_cmd::handlers(&membership));
        metrics.push(crate::membership_cmd::metrics(&membership));
        if let Some(live) = &forecaster.live {
            crate::membership_cmd::tell_live_driver(&membership, live, &region);
        }
        crate::membership_cmd::publish_totals(
            membership,
            Arc::clone(&forecaster.sink),
            config.node.id.clone(),
            region,
            Duration::from_secs(10),
            control.handle(),
        );
    }
    let routes = AdminRoutes {
        handlers,
        metrics,
        readiness: vec![forecaster.readiness()],
        dashboard: Some(prescale_proxy::dashboard::PAGE),
        token: config.admin.token.clone(),
        body_limits: forecaster.body_limits(),
    };
    let admin_addr = prescale_proxy::server::start_admin(
        config.admin.listen,
        routes,
        control.handle(),
        admin_stop_rx,
    )
    .map_err(CliError::input)?;
    tracing::info!(admin = %admin_addr, quic = %forecaster.quic_addr, "prescale forecaster running");
    control.block_on(stop.wait());
    // The fleet keeps serving: a forecaster that stops leaves its instances to the proxies and
    // adopts them at its next start.
    forecaster.stop();
    let _ = stop_keda.send(true);
    let _ = stop_admin.send(true);
    control.shutdown_timeout(Duration::from_secs(2));
    Ok(())
}

fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
