//! The demo backend's listener: accepts TCP connections, serves HTTP/1.1 and cleartext HTTP/2
//! (prior knowledge) on the same port, and shuts down gracefully on SIGTERM/SIGINT — it stops
//! accepting, lets in-flight requests finish within a bounded grace period, then returns.

use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::watch;

use super::service::Backend;

/// SIGTERM and SIGINT, installed before the backend announces its port so that a parent
/// process signalling right after reading the port never hits the default (fatal) action.
pub struct ShutdownSignals {
    terminate: Signal,
    interrupt: Signal,
}

impl ShutdownSignals {
    pub fn install() -> std::io::Result<Self> {
        Ok(ShutdownSignals {
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
        })
    }

    async fn received(&mut self) -> &'static str {
        tokio::select! {
            _ = self.terminate.recv() => "SIGTERM",
            _ = self.interrupt.recv() => "SIGINT",
        }
    }
}

/// How a graceful shutdown ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Drained {
    /// Every connection finished its in-flight requests.
    Completely,
    /// The grace period ran out with connections still open.
    GraceExpired,
}

/// Serves until a shutdown signal arrives, then drains connections for at most `grace`.
pub async fn serve(
    listener: TcpListener,
    backend: Arc<Backend>,
    mut signals: ShutdownSignals,
    grace: Duration,
) -> Drained {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).keep_alive(true);
    builder.http2().timer(TokioTimer::new());
    let builder = Arc::new(builder);

    // Every connection task holds a receiver; the sender's `closed()` resolves once all are gone.
    let (shutdown_sender, shutdown_receiver) = watch::channel(false);

    let signal_name = loop {
        tokio::select! {
            biased;
            name = signals.received() => break name,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    let _ = stream.set_nodelay(true);
                    let connection = ConnectionTask {
                        builder: Arc::clone(&builder),
                        backend: Arc::clone(&backend),
                        shutdown: shutdown_receiver.clone(),
                    };
                    tokio::spawn(connection.run(stream));
                }
                Err(error) => {
                    // Typically EMFILE under overload: back off instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
        }
    };
    drop(listener);
    tracing::info!(
        signal = signal_name,
        "stopped accepting; draining in-flight requests"
    );
    let _ = shutdown_sender.send(true);
    drop(shutdown_receiver);
    match tokio::time::timeout(grace, shutdown_sender.closed()).await {
        Ok(()) => Drained::Completely,
        Err(_) => Drained::GraceExpired,
    }
}

struct ConnectionTask {
    builder: Arc<auto::Builder<TokioExecutor>>,
    backend: Arc<Backend>,
    shutdown: watch::Receiver<bool>,
}

impl ConnectionTask {
    async fn run(mut self, stream: tokio::net::TcpStream) {
        let backend = self.backend;
        let service = service_fn(move |request| Arc::clone(&backend).handle(request));
        let connection = self.builder.serve_connection(TokioIo::new(stream), service);
        tokio::pin!(connection);
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(error) = result {
                    tracing::debug!(%error, "connection ended with an error");
                }
            }
            _ = self.shutdown.changed() => {
                connection.as_mut().graceful_shutdown();
                if let Err(error) = connection.await {
                    tracing::debug!(%error, "connection ended with an error while draining");
                }
            }
        }
        drop(self.shutdown);
    }
}
