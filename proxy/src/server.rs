//! Running the data plane: the pingora server on its own thread and runtimes, the control tasks
//! (active health checks) and the admin listener on a separate tokio runtime, and a graceful
//! shutdown that this process owns (pingora's `run_forever` would exit the process).
//!
//! Shutdown order: stop accepting on the proxy listener, wait until in-flight requests finish
//! (bounded by `proxy.shutdown_grace_secs`), then stop the control tasks and the admin listener.
//! A binary upgrade ([`StopKind::Upgrade`], [`ListenerSource::RunningProcess`]) first hands the
//! listener to the new process ([`crate::handover`]), then stops the same way.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::connectors::ConnectorOptions;
use pingora::listeners::tls::TlsSettings;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::{ExecutionPhase, RunArgs, Server, ShutdownSignal, ShutdownSignalWatch};
use pingora::services::listening::Service;
use pingora::tls::{version, ServerConfig};
use prescale_config::{Config, TlsConfig};
use tokio::sync::watch;

use crate::admin::{self, AdminRoutes};
use crate::backend_names::BackendNames;
use crate::dataplane::DataPlane;
use crate::error::ProxyError;
use crate::handover::Handover;
use crate::http1::FrontDoor;
use crate::service::ProxyService;

/// A running proxy: pingora thread + control runtime.
pub struct RunningProxy {
    pub plane: Arc<DataPlane>,
    pingora_stop: watch::Sender<Option<StopKind>>,
    pingora_thread: Option<JoinHandle<()>>,
    /// Set once pingora has stopped accepting (its shutdown has started).
    listener_closed: Arc<AtomicBool>,
    grace: Duration,
}

/// How the proxy stops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopKind {
    /// Stop accepting, drain (SIGTERM, SIGINT).
    Terminate,
    /// Send the listener to the process waiting on the hand-over socket, accept beside it for
    /// pingora's close timeout (5 s), then stop accepting and drain (SIGQUIT).
    Upgrade,
}

/// Where the proxy listener comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListenerSource {
    /// Bound by this process.
    Bind,
    /// Received from the running process on the hand-over socket (`--upgrade`); the process
    /// exits when none arrives within pingora's 5 attempts a second apart.
    RunningProcess,
}

/// The proxy's worker threads: `proxy.threads`, or one per core when it is 0.
pub fn worker_threads(config: &Config) -> usize {
    if config.proxy.threads == 0 {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    } else {
        config.proxy.threads
    }
}

/// Starts the proxy listener for `plane` (on its own threads), bound here or taken from the
/// running process by way of `handover`. Health checks run on `control`.
pub fn start_proxy(
    config: &Config,
    plane: Arc<DataPlane>,
    control: &tokio::runtime::Handle,
    listener: ListenerSource,
    handover: &Handover,
) -> Result<RunningProxy, ProxyError> {
    if listener == ListenerSource::Bind {
        // Fail early, with a clear message, when the port is taken (pingora would panic later).
        check_bindable(config.proxy.listen, "proxy")?;
    }

    let threads = worker_threads(config);
    let conf = ServerConf {
        threads,
        // One runtime per thread (no task stealing): cheaper scheduling per request; each thread
        // keeps its own idle upstream connections (`upstream_pool`).
        work_stealing: false,
        grace_period_seconds: Some(config.proxy.shutdown_grace_secs),
        graceful_shutdown_timeout_seconds: Some(1),
        upstream_keepalive_pool_size: 1024,
        upgrade_sock: handover.socket_text()?,
        ..ServerConf::default()
    };
    let opt = Opt {
        upgrade: listener == ListenerSource::RunningProcess,
        ..Opt::default()
    };
    if opt.upgrade {
        tracing::info!(
            socket = %handover.socket().display(),
            "waiting for the running process's listener (send it SIGQUIT)"
        );
    }
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    // Run by pingora before the listener starts, once it knows the listener's address: the
    // listening sockets received from the old process that no service claims are closed (one
    // left open would queue connections nobody accepts).
    let bootstrap = server.bootstrap_as_a_service();
    let mut phases = server.watch_execution_phase();

    // pingora-proxy's general path, behind the front door that serves plain HTTP/1.1 itself.
    let mut general =
        pingora::proxy::http_proxy(&server.configuration, ProxyService::new(Arc::clone(&plane)));
    let h2c = config.proxy.tls.is_none() && config.proxy.h2c;
    let mut options = pingora::apps::HttpServerOptions::default();
    options.h2c = h2c;
    // HTTP/2 client connections carry `proxy.keepalive_requests` streams, then get a GOAWAY.
    options.h2_max_requests = Some(plane.keepalive_requests_shared());
    general.server_options = Some(options);
    let front_door = FrontDoor::new(
        general,
        Arc::clone(&plane),
        ConnectorOptions::from_server_conf(&server.configuration),
        h2c,
        Duration::from_secs(config.proxy.keepalive_timeout_secs),
    );
    let mut proxy = Service::new("prescale proxy".to_string(), front_door);
    let addr = config.proxy.listen.to_string();
    match &config.proxy.tls {
        Some(tls) => proxy.add_tls_with_settings(&addr, None, tls_settings(tls)?),
        None => proxy.add_tcp(&addr),
    }
    server.add_service(proxy).add_dependency(&bootstrap);

    let listener_closed = Arc::new(AtomicBool::new(false));
    let closed = Arc::clone(&listener_closed);
    control.spawn(async move {
        use tokio::sync::broadcast::error::RecvError;
        loop {
            match phases.recv().await {
                Ok(ExecutionPhase::ShutdownStarted) | Err(RecvError::Closed) => break,
                Ok(_) | Err(RecvError::Lagged(_)) => {}
            }
        }
        closed.store(true, Ordering::Release);
    });

    for fleet in plane.fleets.iter() {
        let fleet = Arc::clone(fleet);
        control.spawn(async move {
            loop {
                fleet.check_health().await;
                tokio::time::sleep(fleet.health_interval()).await;
            }
        });
    }

    // Names are resolved before the listener opens (the pingora thread, below).
    if let Some(names) = BackendNames::new(&config.resolver, &plane.fleets) {
        names.start(control);
    }

    let sampled = Arc::clone(&plane);
    control.spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            sampled.sample_rates();
        }
    });

    let (pingora_stop, stop_rx) = watch::channel(None);
    let thread = std::thread::Builder::new()
        .name("pingora".into())
        .spawn(move || {
            server.run(RunArgs {
                shutdown_signal: Box::new(StopWatch(stop_rx)),
            });
        })
        .map_err(|e| ProxyError::Startup {
            what: "proxy thread",
            reason: e.to_string(),
        })?;
    Ok(RunningProxy {
        plane,
        pingora_stop,
        pingora_thread: Some(thread),
        listener_closed,
        grace: Duration::from_secs(config.proxy.shutdown_grace_secs),
    })
}

/// The longest an upgrade may take to send the listener and stop accepting: pingora's 5 connect
/// attempts a second apart, then its 5 s close timeout, with a margin.
const HANDOVER_LIMIT: Duration = Duration::from_secs(15);

impl RunningProxy {
    /// Stops accepting (after handing the listener over, for [`StopKind::Upgrade`]), then waits
    /// until in-flight requests are done or the grace period ends. Returns the number of
    /// requests still in flight when it gave up (0 = clean).
    pub fn drain(&mut self, how: StopKind) -> u32 {
        let _ = self.pingora_stop.send(Some(how));
        // While the listener is being handed over this process still accepts: requests it takes
        // meanwhile are drained like the others.
        let handover_deadline = Instant::now() + HANDOVER_LIMIT;
        while !self.listener_closed.load(Ordering::Acquire) && Instant::now() < handover_deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let deadline = Instant::now() + self.grace;
        // pingora stops its listeners as soon as it sees the signal; give it a moment before the
        // first count so a request accepted just before (its head still on the way) shows as in
        // flight.
        std::thread::sleep(Duration::from_millis(200));
        loop {
            let in_flight = self.plane.in_flight_requests();
            if in_flight == 0 || Instant::now() >= deadline {
                return in_flight;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether the pingora thread is still running (it exits on its own after the grace period).
    pub fn is_running(&self) -> bool {
        self.pingora_thread
            .as_ref()
            .is_some_and(|t| !t.is_finished())
    }
}

/// Binds the admin listener and serves `routes` on `control` until `shutdown`.
pub fn start_admin(
    listen: SocketAddr,
    routes: AdminRoutes,
    control: &tokio::runtime::Handle,
    shutdown: watch::Receiver<bool>,
) -> Result<SocketAddr, ProxyError> {
    let std_listener =
        std::net::TcpListener::bind(listen).map_err(|source| ProxyError::Listen {
            what: "admin",
            addr: listen,
            source,
        })?;
    let local = std_listener
        .local_addr()
        .map_err(|source| ProxyError::Listen {
            what: "admin",
            addr: listen,
            source,
        })?;
    std_listener
        .set_nonblocking(true)
        .map_err(|source| ProxyError::Listen {
            what: "admin",
            addr: listen,
            source,
        })?;
    let _guard = control.enter();
    let listener =
        tokio::net::TcpListener::from_std(std_listener).map_err(|source| ProxyError::Listen {
            what: "admin",
            addr: listen,
            source,
        })?;
    control.spawn(admin::serve(listener, Arc::new(routes), shutdown));
    Ok(local)
}

/// The proxy listener's TLS settings (ALPN h2, then http/1.1). The certificate chain and key are
/// loaded and paired here, so that a file that cannot be used is a startup error naming it;
/// pingora only gets the ready certificate (left to itself it would read the files again when
/// the listener starts, and panic on its own thread if they are bad).
fn tls_settings(tls: &TlsConfig) -> Result<TlsSettings, ProxyError> {
    let fail = |reason: String| ProxyError::Tls { reason };
    let path_text = |what: &str, path: &std::path::Path| {
        path.to_str().map(str::to_string).ok_or_else(|| {
            fail(format!(
                "{what} path `{}` is not valid UTF-8",
                path.display()
            ))
        })
    };
    let cert = path_text("cert", &tls.cert)?;
    let key = path_text("key", &tls.key)?;
    // Each file on its own first, for a message that names the one that is wrong.
    let first_cert = pingora::tls::load_pem_file_ca(&cert)
        .map_err(|e| fail(format!("cert `{cert}`: {}", pingora_reason(&e))))?;
    if first_cert.is_empty() {
        return Err(fail(format!(
            "cert `{cert}` holds no PEM certificate (`-----BEGIN CERTIFICATE-----`)"
        )));
    }
    let key_der = pingora::tls::load_pem_file_private_key(&key)
        .map_err(|e| fail(format!("key `{key}`: {}", pingora_reason(&e))))?;
    if key_der.is_empty() {
        return Err(fail(format!(
            "key `{key}` holds no unencrypted PEM private key (PKCS#8, PKCS#1 or SEC1)"
        )));
    }
    let (chain, private_key) = pingora::tls::load_certs_and_key_files(&cert, &key)
        .map_err(|e| {
            fail(format!(
                "cert `{cert}` / key `{key}`: {}",
                pingora_reason(&e)
            ))
        })?
        .ok_or_else(|| {
            fail(format!(
                "cert `{cert}` / key `{key}`: no certificate chain and private key found"
            ))
        })?;
    pingora::tls::install_default_crypto_provider();
    // The same protocol versions pingora's own listener setup uses.
    let server_config =
        ServerConfig::builder_with_protocol_versions(&[&version::TLS12, &version::TLS13])
            .with_no_client_auth()
            .with_single_cert(chain, private_key)
            .map_err(|e| {
                fail(format!(
                    "key `{key}` cannot serve certificate `{cert}`: {e}"
                ))
            })?;
    let mut settings = TlsSettings::intermediate(&cert, &key)
        .map_err(|e| fail(format!("cannot set up TLS: {}", pingora_reason(&e))))?;
    settings.set_cert_resolver(Arc::clone(&server_config.cert_resolver));
    settings.enable_h2();
    Ok(settings)
}

/// A pingora error as one line: its context and cause, without the error-type prefix.
fn pingora_reason(e: &pingora::Error) -> String {
    let context = e.context.as_ref().map(|c| c.as_str().to_string());
    let cause = e.cause.as_ref().map(|c| c.to_string());
    match (context, cause) {
        (Some(context), Some(cause)) => format!("{context}: {cause}"),
        (Some(only), None) | (None, Some(only)) => only,
        (None, None) => e.to_string(),
    }
}

fn check_bindable(addr: SocketAddr, what: &'static str) -> Result<(), ProxyError> {
    std::net::TcpListener::bind(addr)
        .map(drop)
        .map_err(|source| ProxyError::Listen { what, addr, source })
}

struct StopWatch(watch::Receiver<Option<StopKind>>);

#[async_trait]
impl ShutdownSignalWatch for StopWatch {
    async fn recv(&self) -> ShutdownSignal {
        let mut rx = self.0.clone();
        // A closed channel means the owner is gone: shut down as well.
        let how = match rx.wait_for(Option::is_some).await {
            Ok(how) => *how,
            Err(_) => None,
        };
        match how {
            Some(StopKind::Upgrade) => ShutdownSignal::GracefulUpgrade,
            Some(StopKind::Terminate) | None => ShutdownSignal::GracefulTerminate,
        }
    }
}
