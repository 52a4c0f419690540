//! `prescale proxy`, `prescale up` and `prescale check-config`: load the config, build the data
//! plane, start the proxy and admin listeners, and shut down gracefully on SIGTERM/SIGINT.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context};
use prescale_config::Config;
use prescale_gossip::{SenderConfig, SketchSender};
use prescale_proxy::admin::AdminRoutes;
use prescale_proxy::dataplane::DataPlane;
use prescale_proxy::server::{start_admin, start_proxy};

use crate::exit::CliError;

#[derive(clap::Args, Debug)]
pub struct ProxyArgs {
    /// The configuration file (TOML); see the README's configuration reference.
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
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
    /// Demo backends to start.
    #[arg(long, value_name = "N", default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=16))]
    backends: u16,
    /// Where the forecaster's database, the sketch spool and dev certificates live (kept across
    /// runs, so series continue). Default: the system temp directory's `prescale-up`.
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
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
    run_node(config, None)
}

pub fn up(args: UpArgs) -> Result<(), CliError> {
    let mut children = DemoBackends::default();
    let mut addresses = Vec::new();
    for i in 0..args.backends {
        let (child, addr) =
            spawn_demo_backend(&format!("demo-{}", i + 1)).map_err(CliError::runtime)?;
        children.0.push(child);
        addresses.push(addr.to_string());
    }
    let mut config = prescale_config::embedded_default(&addresses).map_err(CliError::input)?;
    config.proxy.listen = args.proxy_listen;
    config.admin.listen = args.admin_listen;
    let state = args
        .state_dir
        .unwrap_or_else(|| std::env::temp_dir().join("prescale-up"));
    attach_local_forecaster(&mut config, &state).map_err(CliError::runtime)?;
    prescale_config::check(&config, "embedded default").map_err(CliError::input)?;
    let banner = where_to_look(&config, &addresses);
    run_node(config, Some(banner))
    // `children` drops here: the demo backends are stopped with the node.
}

/// Gives the `up` node an in-process forecaster and points its exporter at it, with dev mesh
/// certificates in `state/certs` (made once).
fn attach_local_forecaster(config: &mut Config, state: &std::path::Path) -> anyhow::Result<()> {
    let node = config.node.id.clone();
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
    config.forecaster = Some(prescale_config::ForecasterConfig {
        listen: "127.0.0.1:0".parse()?,
        database: state.join("series.db"),
        retention_days: 30,
        silent_after_secs: 60,
    });
    config.export = Some(prescale_config::ExportConfig {
        // Port 0: the in-process forecaster's address, known once it is bound.
        forecaster: "127.0.0.1:0".parse()?,
        forecaster_name: node,
        interval_secs: 10,
        spool_dir: state.join("spool"),
        spool_max_sketches: 8640,
    });
    Ok(())
}

/// Child processes started by `up`, stopped (SIGTERM, then kill) when dropped.
#[derive(Default)]
struct DemoBackends(Vec<Child>);

impl Drop for DemoBackends {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
        }
        for child in &mut self.0 {
            for _ in 0..50 {
                if matches!(child.try_wait(), Ok(Some(_))) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn spawn_demo_backend(name: &str) -> anyhow::Result<(Child, SocketAddr)> {
    let exe = std::env::current_exe().context("cannot find the prescale executable")?;
    let mut child = Command::new(exe)
        .args([
            "backend",
            "--listen",
            "127.0.0.1:0",
            "--name",
            name,
            "--latency-ms",
            "2",
            "--grace-secs",
            "5",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("cannot start a demo backend")?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow!("demo backend has no stdout"))?;
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .context("cannot read the demo backend's address")?;
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| anyhow!("demo backend printed {line:?} instead of its address"))?;
    Ok((child, addr))
}

fn where_to_look(config: &Config, backends: &[String]) -> String {
    let proxy = config.proxy.listen;
    let admin = config.admin.listen;
    format!(
        "prescale is up.\n\
         \x20 proxy      http://{proxy}/  → fleet `web` with demo backends {}\n\
         \x20 dashboard  http://{admin}/\n\
         \x20 try:\n\
         \x20   curl -H 'X-User-Id: alice' http://{proxy}/api/items\n\
         \x20   curl -H 'X-User-Id: bob' http://{proxy}/batch/export\n\
         \x20   prescale load --target http://{proxy}/ --rps 50 --users 200 --duration 30s\n\
         \x20   curl http://{admin}/api/v1/profiles\n\
         \x20   curl http://{admin}/api/v1/fleets\n\
         \x20   curl http://{admin}/metrics\n\
         \x20 stop with Ctrl-C.",
        backends.join(", ")
    )
}

/// Runs proxy + admin (+ the sketch exporter, + an in-process forecaster for `up`) until
/// SIGTERM/SIGINT, then drains.
fn run_node(config: Config, banner: Option<String>) -> Result<(), CliError> {
    let plane = Arc::new(DataPlane::new(&config).map_err(CliError::input)?);
    let control = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("prescale-control")
        .enable_all()
        .build()
        .context("cannot start the control runtime")?;
    let mut handlers = plane.admin_handlers();
    let mut metrics = vec![plane.metrics_source()];
    let mut readiness = vec![plane.readiness(), listener_readiness(config.proxy.listen)];

    // A forecaster in the same process (`up`, or a config with both roles).
    let forecaster = match &config.forecaster {
        Some(_) => {
            let forecaster = Arc::new(crate::forecaster_cmd::start(&config, control.handle())?);
            handlers.extend(forecaster.handlers());
            metrics.push(forecaster.metrics());
            readiness.push(forecaster.readiness());
            Some(forecaster)
        }
        None => None,
    };

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
    };
    let admin_addr = start_admin(config.admin.listen, routes, control.handle(), admin_stop_rx)
        .map_err(CliError::input)?;
    let mut proxy =
        start_proxy(&config, Arc::clone(&plane), control.handle()).map_err(CliError::input)?;
    tracing::info!(proxy = %config.proxy.listen, admin = %admin_addr, node = %config.node.id, "prescale node running");
    if let Some(banner) = banner {
        println!("{banner}");
        let _ = std::io::stdout().flush();
    }

    control
        .block_on(wait_for_signal())
        .map_err(CliError::runtime)?;
    tracing::info!("shutting down: draining in-flight requests");
    let left = proxy.drain();
    if left > 0 {
        tracing::warn!(
            in_flight = left,
            "grace period over with requests still in flight"
        );
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
    let _ = stop_admin.send(true);
    control.shutdown_timeout(Duration::from_secs(1));
    tracing::info!("stopped");
    Ok(())
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

pub async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
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
