//! `prescale proxy`, `prescale up` and `prescale check-config`: load the config, build the data
//! plane, start the proxy and admin listeners, and shut down gracefully on SIGTERM/SIGINT.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context};
use prescale_config::Config;
use prescale_gossip::{NodeClock, SenderConfig, SketchSender};
use prescale_proxy::admin::AdminRoutes;
use prescale_proxy::dataplane::DataPlane;
use prescale_proxy::handover::Handover;
use prescale_proxy::server::{start_admin, start_proxy, ListenerSource, RunningProxy, StopKind};

use crate::exit::CliError;
use crate::reload_cmd::ConfigSource;

#[derive(clap::Args, Debug)]
pub struct ProxyArgs {
    /// The configuration file (TOML); see the README's configuration reference.
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
    /// Run the node's clock (sketch intervals, the time of day users are seen at, and an
    /// in-process forecaster's minutes and ticks) this many times faster, 1 to 1000; every node
    /// of a region must use the same factor.
    #[arg(long, value_name = "X", default_value_t = 1.0)]
    speedup: f64,
    /// Take the proxy listener over from the node running this config (a binary upgrade):
    /// start this, then send the running one SIGQUIT within 5 s; the admin listener, membership
    /// and export start once it has drained and exited (README: "Binary upgrade").
    #[arg(long)]
    upgrade: bool,
}

#[derive(clap::Args, Debug)]
pub struct CheckConfigArgs {
    /// The configuration file to validate.
    file: PathBuf,
}

#[derive(clap::Args, Debug)]
pub struct UpArgs {
    /// Proxy listener (default 127.0.0.1:8080).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    proxy_listen: SocketAddr,
    /// Admin listener: API, metrics, dashboard (default 127.0.0.1:9090).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9090")]
    admin_listen: SocketAddr,
    /// A configuration file to run all-in-one instead of the embedded default; the in-process
    /// forecaster, mesh certificates and export are added where the file has none.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Backends always on (the planner's baseline; the embedded default's is 2); the forecaster
    /// starts more ahead of forecast demand and stops them when it passes.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=16))]
    backends: Option<u32>,
    /// Where the forecaster's database, the sketch spool and dev certificates live (kept across
    /// runs, so series continue). Default: the system temp directory's `prescale-up`.
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Run the whole loop (sketch intervals, store minutes, planning ticks, drains, the time of
    /// day users are seen at) this many times faster than real time, 1 to 1000.
    #[arg(long, value_name = "X", default_value_t = 1.0)]
    speedup: f64,
    /// Seed the store with past demand (`timestamp,requests` CSV, `.gz` too), moved by whole
    /// days so that it ends before now, so forecasts exist from the first minute.
    #[arg(long, value_name = "TRACE")]
    history: Option<PathBuf>,
    /// KEDA's external scaler (gRPC) listener; default: a loopback port chosen at start (or the
    /// config's `forecaster.keda_listen`), printed with the other addresses.
    #[arg(long, value_name = "ADDR")]
    keda: Option<SocketAddr>,
}

pub fn check_config(args: CheckConfigArgs) -> Result<(), CliError> {
    let config = prescale_config::load_file(&args.file).map_err(CliError::input)?;
    // Things only the data plane can check (GeoIP database, JWT keys) are part of validity too.
    DataPlane::new(&config)
        .map_err(|e| CliError::input(anyhow!("{}: {e}", args.file.display())))?;
    println!(
        "{}: ok — node `{}` in region `{}`, {} region(s), {} fleet(s), {} route(s)",
        args.file.display(),
        config.node.id,
        config.node_region().unwrap_or("?"),
        config.regions.len(),
        config.fleets.len(),
        config.routes.len()
    );
    Ok(())
}

pub fn proxy(args: ProxyArgs) -> Result<(), CliError> {
    let config = prescale_config::load_file(&args.config).map_err(CliError::input)?;
    let options = crate::live_cmd::LiveOptions {
        clock: node_clock(args.speedup)?,
        stop_instances_on_exit: false,
        print_decisions: false,
    };
    let source = ConfigSource {
        path: Some(args.config),
        prepare: Box::new(Ok),
    };
    let listener = if args.upgrade {
        ListenerSource::RunningProcess
    } else {
        ListenerSource::Bind
    };
    run_node(config, None, options, source, listener)
}

/// The node clock for `--speedup X`.
pub fn node_clock(speedup: f64) -> Result<NodeClock, CliError> {
    NodeClock::with_speed(speedup).map_err(|e| CliError::input(anyhow!("--speedup {speedup}: {e}")))
}

pub fn up(args: UpArgs) -> Result<(), CliError> {
    let clock = node_clock(args.speedup)?;
    let (config, origin) = match &args.config {
        Some(path) => (
            prescale_config::load_file(path).map_err(CliError::input)?,
            path.display().to_string(),
        ),
        None => (
            prescale_config::embedded_default().map_err(CliError::input)?,
            "embedded default".to_string(),
        ),
    };
    let overrides = UpOverrides {
        proxy_listen: args.proxy_listen,
        admin_listen: args.admin_listen,
        backends: args.backends,
        state: args
            .state_dir
            .clone()
            .unwrap_or_else(|| std::env::temp_dir().join("prescale-up")),
        keda: args.keda,
        origin,
    };
    let config = overrides.apply(config).map_err(CliError::input)?;
    if let Some(history) = &args.history {
        seed_history(&config, history, &clock)?;
    }
    let banner = where_to_look(&config, &clock);
    let options = crate::live_cmd::LiveOptions {
        clock,
        stop_instances_on_exit: true,
        print_decisions: true,
    };
    let source = ConfigSource {
        path: args.config.clone(),
        prepare: Box::new(move |config| overrides.apply(config)),
    };
    run_node(config, Some(banner), options, source, ListenerSource::Bind)
}

/// What `up`'s command line changes in the config it runs, applied again to a reloaded file.
struct UpOverrides {
    proxy_listen: SocketAddr,
    admin_listen: SocketAddr,
    backends: Option<u32>,
    state: PathBuf,
    keda: Option<SocketAddr>,
    origin: String,
}

impl UpOverrides {
    /// The listeners, the baseline and the in-process forecaster (with its certificates and
    /// export) set on `config`, then the whole checked.
    fn apply(&self, mut config: Config) -> anyhow::Result<Config> {
        config.proxy.listen = self.proxy_listen;
        config.admin.listen = self.admin_listen;
        if let Some(n) = self.backends {
            config.planner.baseline_instances = n;
        }
        attach_local_forecaster(&mut config, &self.state)?;
        if let Some(forecaster) = config.forecaster.as_mut() {
            match self.keda {
                Some(addr) => forecaster.keda_listen = Some(addr),
                None => {
                    forecaster
                        .keda_listen
                        .get_or_insert(SocketAddr::from(([127, 0, 0, 1], 0)));
                }
            }
        }
        prescale_config::check(&config, &self.origin)?;
        Ok(config)
    }
}

/// Writes the trace's minutes into the store as past demand of the default profile of the
/// node's first fleet, moved by whole days so that its last minute ends before node now.
fn seed_history(
    config: &Config,
    path: &std::path::Path,
    clock: &NodeClock,
) -> Result<(), CliError> {
    let trace = prescale_regions::trace::Trace::from_path(path)
        .map_err(|e| CliError::input(anyhow!("--history: {e}")))?;
    if trace.is_empty() {
        return Err(CliError::input(anyhow!(
            "--history {}: the trace has no minutes",
            path.display()
        )));
    }
    let settings = config
        .forecaster
        .as_ref()
        .ok_or_else(|| CliError::input(anyhow!("--history needs the in-process forecaster")))?;
    let region = config.node_region().unwrap_or_default().to_string();
    let fleet = config
        .fleets
        .iter()
        .find(|f| f.region == region)
        .map(|f| f.name.clone())
        .ok_or_else(|| CliError::input(anyhow!("--history: region `{region}` has no fleet")))?;
    let now = clock.now_secs() as i64 / 60 * 60;
    let end = trace.minute_start(trace.len() - 1) + 60;
    let shift = (now - end).div_euclid(86_400) * 86_400;
    let points: Vec<(u64, u64)> = (0..trace.len())
        .filter(|&m| trace.present[m])
        .filter_map(|m| {
            let minute = trace.minute_start(m) + shift;
            (minute >= 0).then(|| (minute as u64, trace.requests[m].round().max(0.0) as u64))
        })
        .collect();
    if let Some(parent) = settings.database.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))
            .map_err(CliError::runtime)?;
    }
    let mut store = prescale_regions::store::SeriesStore::open(&settings.database)
        .map_err(|e| CliError::input(anyhow!("forecaster.database: {e}")))?;
    let written = store
        .seed_history(&region, &config.assignment.default_profile, &fleet, &points)
        .map_err(|e| CliError::runtime(anyhow!("--history: {e}")))?;
    println!(
        "history: {written} minutes of {} seeded as `{}` demand of fleet `{fleet}` ({} to {}, moved by {} days)",
        path.display(),
        config.assignment.default_profile,
        crate::live_cmd::clock_text(((trace.start + shift).max(0) as u64) * 1000),
        crate::live_cmd::clock_text(((end + shift).max(0) as u64) * 1000),
        shift / 86_400
    );
    Ok(())
}

/// Gives the `up` node an in-process forecaster and points its exporter at it, with dev mesh
/// certificates in `state/certs` (made once); a config file's own sections are kept.
fn attach_local_forecaster(config: &mut Config, state: &std::path::Path) -> anyhow::Result<()> {
    let node = config.node.id.clone();
    if config.mesh.is_none() {
        let certs = state.join("certs");
        let cert = certs.join(format!("{node}.pem"));
        let key = certs.join(format!("{node}.key.pem"));
        if !(cert.exists() && key.exists() && certs.join("ca.pem").exists()) {
            prescale_gossip::write_dev_certs(&certs, std::slice::from_ref(&node))
                .with_context(|| format!("cannot write dev certificates to {}", certs.display()))?;
        }
        config.mesh = Some(prescale_config::MeshConfig {
            ca: certs.join("ca.pem"),
            cert,
            key,
            membership_listen: None,
            seeds: Vec::new(),
        });
    }
    if config.forecaster.is_some() && config.export.is_some() {
        return Ok(());
    }
    config
        .forecaster
        .get_or_insert(prescale_config::ForecasterConfig {
            listen: "127.0.0.1:0".parse()?,
            database: state.join("series.db"),
            retention_days: 30,
            silent_after_secs: 60,
            lateness_secs: 30,
            forecast_only: false,
            keda_listen: None,
            keda_tls_cert: None,
            keda_tls_key: None,
        });
    config.export.get_or_insert(prescale_config::ExportConfig {
        // Port 0: the in-process forecaster's address, known once it is bound.
        forecaster: "127.0.0.1:0".parse()?,
        forecaster_name: node,
        interval_secs: 10,
        spool_dir: state.join("spool"),
        spool_max_sketches: 8640,
    });
    Ok(())
}

/// What `up` prints once it serves, given the KEDA scaler's address when it runs.
type Banner = Box<dyn FnOnce(Option<&crate::keda_cmd::Keda>) -> String>;

fn where_to_look(config: &Config, clock: &NodeClock) -> Banner {
    let proxy = config.proxy.listen;
    let admin = config.admin.listen;
    let region = config.node_region().unwrap_or_default();
    let fleets = config
        .fleets
        .iter()
        .filter(|f| f.region == region)
        .map(|f| match &f.provisioner {
            Some(p) if p.supplies_backends() => {
                format!("fleet `{}`, backends started by the forecaster", f.name)
            }
            Some(p) => format!(
                "fleet `{}` ({} backends, scaled through the `{}` provisioner)",
                f.name,
                f.backends.len(),
                p.kind()
            ),
            None => format!("fleet `{}` ({} static backends)", f.name, f.backends.len()),
        })
        .collect::<Vec<_>>()
        .join("; ");
    let speed = if clock.speed() > 1.0 {
        format!(" (time runs {}× faster)", clock.speed())
    } else {
        String::new()
    };
    let first_fleet = config
        .fleets
        .iter()
        .find(|f| f.region == region)
        .map(|f| f.name.clone())
        .unwrap_or_default();
    let region = region.to_string();
    let identity = identity_hint(&config.identity.sources);
    Box::new(move |keda: Option<&crate::keda_cmd::Keda>| {
        let keda = keda
            .map(|k| {
                let tls = if k.running.tls { ", TLS" } else { "" };
                format!(
                    "\n\x20 keda       {}  → KEDA external scaler (gRPC{tls}; trigger metadata region={region}, fleet={first_fleet})",
                    k.local_addr()
                )
            })
            .unwrap_or_default();
        format!(
            "prescale is up{speed}.\n\
             \x20 proxy      http://{proxy}/  → {fleets}\n\
             \x20 dashboard  http://{admin}/{keda}\n\
             {identity}\
             \x20 try:\n\
             \x20   curl -H 'X-User-Id: alice' http://{proxy}/api/items\n\
             \x20   curl -H 'X-User-Id: bob' http://{proxy}/batch/export\n\
             \x20   prescale load --target http://{proxy}/ --rps 50 --users 200 --duration 30s\n\
             \x20   curl http://{admin}/api/v1/plan\n\
             \x20   curl http://{admin}/api/v1/fleets\n\
             \x20   curl http://{admin}/metrics\n\
             \x20 plan changes are printed below as they happen; stop with Ctrl-C."
        )
    })
}

/// The banner's identity line: which configured sources a client can assert at will, and how
/// to switch to a verified one (empty when every source is verified or an address).
fn identity_hint(sources: &[prescale_config::IdentitySource]) -> String {
    use prescale_config::IdentitySource;
    let asserted: Vec<String> = sources
        .iter()
        .filter_map(|source| match source {
            IdentitySource::Header { name } => Some(format!("header {name}")),
            IdentitySource::Cookie { name } => Some(format!("cookie {name}")),
            IdentitySource::ApiKey { header } => Some(format!("API key {header}")),
            IdentitySource::Bearer { jwt: None } => Some("unverified bearer tokens".to_string()),
            IdentitySource::Bearer { jwt: Some(_) } | IdentitySource::ClientIp => None,
        })
        .collect();
    if asserted.is_empty() {
        return String::new();
    }
    format!(
        "\x20 identity   {} are client-asserted (any client can claim any user); to verify users,\n\
         \x20            set [identity] sources = [{{ kind = \"bearer\", jwt = {{ hmac_secret = \"…\" }} }}, {{ kind = \"client_ip\" }}]\n\
         \x20            or trust these only from your gateway (README: \"Who the user is\")\n",
        asserted.join(", ")
    )
}

/// Runs proxy + admin (+ the sketch exporter, + an in-process forecaster for `up`) until
/// SIGTERM/SIGINT, then drains; on SIGQUIT hands the listener to a process started with
/// `--upgrade` first. Holds the node's instance lock throughout; with
/// [`ListenerSource::RunningProcess`] it serves on the received listener at once and starts
/// everything else once the old process has exited (its lock is free).
fn run_node(
    config: Config,
    banner: Option<Banner>,
    options: crate::live_cmd::LiveOptions,
    source: ConfigSource,
    listener: ListenerSource,
) -> Result<(), CliError> {
    let handover = Handover::for_config(&config).map_err(CliError::input)?;
    let mut instance_lock = match listener {
        ListenerSource::Bind => Some(handover.try_lock().map_err(CliError::input)?),
        ListenerSource::RunningProcess => None,
    };
    let plane = Arc::new(DataPlane::with_clock(&config, options.clock).map_err(CliError::input)?);
    let control = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("prescale-control")
        .enable_all()
        .build()
        .context("cannot start the control runtime")?;
    let mut stop = StopSignals::watch(&control).map_err(CliError::runtime)?;
    let mut quit = {
        use tokio::signal::unix::{signal, SignalKind};
        let _guard = control.enter();
        signal(SignalKind::quit()).context("cannot watch SIGQUIT")?
    };
    let mut proxy = None;
    if listener == ListenerSource::RunningProcess {
        let mut taken_over = start_proxy(
            &config,
            Arc::clone(&plane),
            control.handle(),
            listener,
            &handover,
        )
        .map_err(CliError::input)?;
        let waited = control.block_on(async {
            tokio::select! {
                lock = handover.wait_for_lock(Duration::from_secs(10)) => Some(lock),
                _ = stop.wait() => None,
            }
        });
        match waited {
            Some(lock) => {
                instance_lock = Some(lock.map_err(CliError::input)?);
                tracing::info!(
                    "the old process has exited; starting the admin listener and the rest"
                );
            }
            None => {
                tracing::info!("stopped before the old process exited: draining");
                finish_draining(&mut taken_over, StopKind::Terminate);
                if let Some(log) = &plane.access_log {
                    log.close(Duration::from_secs(5));
                }
                return Ok(());
            }
        }
        proxy = Some(taken_over);
    }
    watch_reopen_signal(&control, Arc::clone(&plane)).map_err(CliError::runtime)?;
    let source = Arc::new(source);
    crate::reload_cmd::watch_reload_signal(&control, Arc::clone(&source), Arc::clone(&plane))
        .map_err(CliError::runtime)?;
    let mut handlers = plane.admin_handlers();
    handlers.push(crate::reload_cmd::handler(source, Arc::clone(&plane)));
    let mut metrics = vec![plane.metrics_source()];
    let mut readiness = vec![plane.readiness(), listener_readiness(config.proxy.listen)];

    // A forecaster in the same process (`up`, or a config with both roles).
    let forecaster = match &config.forecaster {
        Some(_) => {
            let forecaster = Arc::new(crate::forecaster_cmd::start(
                &config,
                control.handle(),
                options,
            )?);
            handlers.extend(forecaster.handlers());
            metrics.extend(forecaster.metrics());
            readiness.push(forecaster.readiness());
            Some(forecaster)
        }
        None => None,
    };
    let (stop_keda, keda_stop_rx) = tokio::sync::watch::channel(false);
    let keda = match &forecaster {
        Some(f) => {
            match crate::keda_cmd::start(&config, f.live.as_ref(), control.handle(), keda_stop_rx) {
                Ok(keda) => keda,
                Err(e) => {
                    // `up` stops what its driver may have started already.
                    f.stop();
                    return Err(e);
                }
            }
        }
        None => None,
    };
    if let Some(keda) = &keda {
        metrics.push(keda.metrics());
    }

    let role = if forecaster.is_some() {
        prescale_gossip::Role::Forecaster
    } else {
        prescale_gossip::Role::Proxy
    };
    if let Some(membership) =
        crate::membership_cmd::start(&config, role, &plane.region, control.handle())?
    {
        handlers.extend(crate::membership_cmd::handlers(&membership));
        metrics.push(crate::membership_cmd::metrics(&membership));
        if let Some(forecaster) = &forecaster {
            if let Some(live) = &forecaster.live {
                crate::membership_cmd::tell_live_driver(&membership, live, &plane.region);
            }
            crate::membership_cmd::publish_totals(
                membership,
                Arc::clone(&forecaster.sink),
                config.node.id.clone(),
                plane.region.clone(),
                Duration::from_secs(10),
                control.handle(),
            );
        }
    }

    let (stop_exporter, exporter_stop_rx) = tokio::sync::watch::channel(false);
    let exporter = match &config.export {
        Some(export) => {
            let identity = crate::forecaster_cmd::mesh_identity(&config)?;
            let forecaster_addr = match (&forecaster, export.forecaster.port()) {
                (Some(f), 0) => f.quic_addr,
                _ => export.forecaster,
            };
            let mut sender_config = SenderConfig::new(
                config.node.id.clone(),
                plane.region.clone(),
                forecaster_addr,
                export.forecaster_name.clone(),
                identity,
                export.spool_dir.clone(),
            );
            sender_config.spool_capacity = export.spool_max_sketches;
            let sender = {
                let _guard = control.enter();
                Arc::new(SketchSender::start(sender_config).map_err(|e| {
                    CliError::input(anyhow!("[export]: cannot start the sketch sender: {e}"))
                })?)
            };
            metrics.push(sender_metrics(Arc::clone(&sender)));
            let task = control.spawn(prescale_proxy::exporter::run(
                Arc::clone(&plane),
                Arc::clone(&sender),
                Duration::from_secs(export.interval_secs),
                exporter_stop_rx,
            ));
            Some((sender, task))
        }
        None => None,
    };

    let (stop_admin, admin_stop_rx) = tokio::sync::watch::channel(false);
    let routes = AdminRoutes {
        handlers,
        metrics,
        readiness,
        dashboard: Some(prescale_proxy::dashboard::PAGE),
        token: config.admin.token.clone(),
        body_limits: forecaster
            .as_ref()
            .map(|f| f.body_limits())
            .unwrap_or_default(),
    };
    let admin_addr = start_admin(config.admin.listen, routes, control.handle(), admin_stop_rx)
        .map_err(CliError::input)?;
    let mut proxy = match proxy {
        Some(proxy) => proxy,
        None => start_proxy(
            &config,
            Arc::clone(&plane),
            control.handle(),
            listener,
            &handover,
        )
        .map_err(CliError::input)?,
    };
    tracing::info!(proxy = %config.proxy.listen, admin = %admin_addr, node = %config.node.id, "prescale node running");
    if let Some(banner) = banner {
        println!("{}", banner(keda.as_ref()));
        let _ = std::io::stdout().flush();
    }

    let how = control.block_on(async {
        loop {
            tokio::select! {
                _ = stop.wait() => return StopKind::Terminate,
                _ = quit.recv() => {
                    if new_process_waits(&handover).await {
                        return StopKind::Upgrade;
                    }
                    tracing::error!(
                        socket = %handover.socket().display(),
                        "SIGQUIT: no process waits for the listener on the hand-over socket \
                         (start the new binary with `prescale proxy --upgrade` first); still serving"
                    );
                }
            }
        }
    });
    if how == StopKind::Upgrade {
        tracing::info!(socket = %handover.socket().display(), "SIGQUIT: handing the listener over, then draining");
    } else {
        tracing::info!("shutting down: draining in-flight requests");
    }
    finish_draining(&mut proxy, how);
    if let Some(log) = &plane.access_log {
        // Every request has ended: its line is queued; write them all before exiting.
        log.close(Duration::from_secs(5));
    }
    if let Some((sender, task)) = exporter {
        // The last partial interval is spooled, then we give delivery a moment; whatever is not
        // acknowledged stays in the spool and is sent after the next start.
        let _ = stop_exporter.send(true);
        control.block_on(async {
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
            sender.flush(Duration::from_secs(3)).await
        });
    }
    if let Some(forecaster) = &forecaster {
        forecaster.stop();
    }
    let _ = stop_keda.send(true);
    let _ = stop_admin.send(true);
    control.shutdown_timeout(Duration::from_secs(1));
    tracing::info!("stopped");
    // Released last: a process taking over starts its admin listener and the rest after this.
    drop(instance_lock);
    Ok(())
}

/// Drains `proxy` (`how` it stops), warning when the grace period ends first.
fn finish_draining(proxy: &mut RunningProxy, how: StopKind) {
    let left = proxy.drain(how);
    if left > 0 {
        tracing::warn!(
            in_flight = left,
            "grace period over with requests still in flight"
        );
    }
}

/// Whether a process started with `--upgrade` waits on the hand-over socket, allowing it 5 s to
/// bind it (it may have been started just before the signal).
async fn new_process_waits(handover: &Handover) -> bool {
    for _ in 0..50 {
        if handover.has_waiting_process() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

fn sender_metrics(sender: Arc<SketchSender>) -> prescale_proxy::admin::MetricsSource {
    Arc::new(move |out: &mut String| {
        let s = sender.stats();
        let rows = [
            (
                "prescale_export_spooled",
                "gauge",
                "Sketches waiting in the spool for an acknowledgement.",
                s.spooled,
            ),
            (
                "prescale_export_dropped_total",
                "counter",
                "Sketches dropped because the spool was full.",
                s.dropped,
            ),
            (
                "prescale_export_corrupt_total",
                "counter",
                "Spooled sketches discarded as unreadable or rejected.",
                s.corrupt,
            ),
            (
                "prescale_export_refused_total",
                "counter",
                "Sketches the forecaster refused for good (wrong region, precision, time window, overflow); see its log.",
                s.refused,
            ),
            (
                "prescale_export_sent_total",
                "counter",
                "Sketch send attempts, resends included.",
                s.sent,
            ),
            (
                "prescale_export_acked_total",
                "counter",
                "Acknowledgements received.",
                s.acked,
            ),
            (
                "prescale_export_send_failures_total",
                "counter",
                "Failed sends or connection attempts.",
                s.send_failures,
            ),
        ];
        for (name, kind, help, value) in rows {
            prescale_proxy::admin::write_metric(out, name, kind, help, value);
        }
    })
}

/// SIGUSR1 reopens the access log (as logrotate's `postrotate` sends, and as nginx does). It is
/// watched even without a log file, so that the signal never ends the process.
fn watch_reopen_signal(
    control: &tokio::runtime::Runtime,
    plane: Arc<DataPlane>,
) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut reopen = {
        let _guard = control.enter();
        signal(SignalKind::user_defined1()).context("cannot watch SIGUSR1")?
    };
    control.spawn(async move {
        while reopen.recv().await.is_some() {
            match &plane.access_log {
                Some(log) => log.reopen(),
                None => tracing::info!("SIGUSR1: no access log is configured; nothing to reopen"),
            }
        }
    });
    Ok(())
}

/// SIGTERM and SIGINT, watched from before anything listens: a stop asked for while the node is
/// still starting is carried out, gracefully, once it has started (without the handlers the
/// signal's default action would kill the process).
pub struct StopSignals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl StopSignals {
    pub fn watch(runtime: &tokio::runtime::Runtime) -> anyhow::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        let _guard = runtime.enter();
        Ok(StopSignals {
            term: signal(SignalKind::terminate()).context("cannot watch SIGTERM")?,
            int: signal(SignalKind::interrupt()).context("cannot watch SIGINT")?,
        })
    }

    /// Until one of them arrives (or has arrived since [`StopSignals::watch`]).
    pub async fn wait(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}

/// Ready once the proxy listener accepts connections (pingora binds it on its own thread, after
/// the admin listener is up). The first accepted connection settles it: the listener stays bound
/// until shutdown, and probing it again would only add connections to the proxy's log.
fn listener_readiness(listen: std::net::SocketAddr) -> prescale_proxy::admin::Readiness {
    let accepted = Arc::new(std::sync::atomic::AtomicBool::new(false));
    Arc::new(move || {
        use std::sync::atomic::Ordering;
        if accepted.load(Ordering::Relaxed) {
            return Ok(());
        }
        let mut target = listen;
        if target.ip().is_unspecified() {
            target.set_ip(match target {
                std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            });
        }
        match std::net::TcpStream::connect_timeout(&target, Duration::from_millis(200)) {
            Ok(_) => {
                accepted.store(true, Ordering::Relaxed);
                Ok(())
            }
            Err(e) => Err(format!(
                "proxy listener {listen} does not accept connections yet: {e}"
            )),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::identity_hint;
    use prescale_config::{IdentitySource, JwtVerification};

    #[test]
    fn the_banner_names_client_asserted_sources_and_how_to_verify() {
        let hint = identity_hint(&prescale_config::default_identity_sources());
        assert!(
            hint.contains("header x-user-id, unverified bearer tokens are client-asserted"),
            "{hint}"
        );
        assert!(hint.contains(r#"jwt = { hmac_secret = "…" }"#), "{hint}");
        let verified = IdentitySource::Bearer {
            jwt: Some(JwtVerification {
                hmac_secret: Some("a-secret-of-enough-bytes".into()),
                rsa_public_key_file: None,
                ec_public_key_file: None,
                issuer: None,
                audience: None,
            }),
        };
        assert_eq!(identity_hint(&[verified, IdentitySource::ClientIp]), "");
    }
}
