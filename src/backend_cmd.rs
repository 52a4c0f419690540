//! `prescale backend`: a fast demo HTTP backend for demos, end-to-end tests and benchmarks.
//!
//! It answers HTTP/1.1 and cleartext HTTP/2 on one port with a small JSON body naming itself and
//! echoing the method, path and the forwarding/identity headers it received, so tests can check
//! where a request landed. This file owns the arguments and the process lifecycle; request
//! handling is in `backend/service.rs`, the listener and graceful shutdown in `backend/server.rs`.

#[path = "backend/server.rs"]
mod server;
#[path = "backend/service.rs"]
mod service;

use std::io::Write;
use std::net::{SocketAddr, ToSocketAddrs};
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context};

use crate::exit::CliError;

/// The longest `--latency-ms` accepted, in milliseconds.
const MAX_LATENCY_MS: u64 = 60_000;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Address to listen on; port 0 picks a free port. Prints `listening on ADDR` once bound.
    #[arg(long, value_name = "ADDR", value_parser = parse_listen_addr)]
    listen: SocketAddr,

    /// Delay every response (except /healthz) by this many milliseconds (at most 60000).
    /// `?sleep_ms=N` on a request overrides it for that request.
    #[arg(long, value_name = "N", default_value_t = 0,
          value_parser = clap::value_parser!(u64).range(..=MAX_LATENCY_MS))]
    latency_ms: u64,

    /// Fraction of requests (0 to 1) answered with 500 Internal Server Error.
    #[arg(long, value_name = "P", default_value_t = 0.0, value_parser = parse_fraction,
          allow_negative_numbers = true)]
    fail_rate: f64,

    /// Name reported in responses (default: the bound address).
    #[arg(long, value_name = "NAME")]
    name: Option<String>,

    /// Worker threads, 1 to 1024 (default: the available parallelism).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1024))]
    threads: Option<u16>,

    /// Answer a fixed tiny JSON body (`{"backend":NAME}`) instead of the echo, for benchmarks.
    #[arg(long)]
    fixed_body: bool,

    /// Tally requests per X-User-Id and serve the tally as JSON at GET /_backend/users.
    #[arg(long)]
    record_users: bool,

    /// Seconds to let in-flight requests finish after SIGTERM/SIGINT.
    #[arg(long, value_name = "SECONDS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(..=86_400))]
    grace_secs: u64,
}

pub fn run(args: Args) -> Result<(), CliError> {
    let threads = match args.threads {
        Some(threads) => usize::from(threads),
        None => std::thread::available_parallelism().map_or(1, NonZeroUsize::get),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name("backend-worker")
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let outcome = runtime.block_on(serve(args));
    runtime.shutdown_timeout(Duration::from_secs(1));
    outcome
}

async fn serve(args: Args) -> Result<(), CliError> {
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| CliError::runtime(anyhow!("--listen {}: cannot bind: {e}", args.listen)))?;
    let local_addr = listener.local_addr().context("reading the bound address")?;
    let behavior = service::Behavior {
        name: args.name.unwrap_or_else(|| local_addr.to_string()),
        latency: Duration::from_millis(args.latency_ms),
        fail_rate: args.fail_rate,
        fixed_body: args.fixed_body,
        record_users: args.record_users,
    };
    let backend = Arc::new(service::Backend::new(behavior).map_err(CliError::input)?);
    let signals = server::ShutdownSignals::install().context("installing signal handlers")?;

    announce(local_addr).context("writing to stdout")?;
    tracing::info!(%local_addr, "demo backend serving HTTP/1.1 and h2c");

    let grace = Duration::from_secs(args.grace_secs);
    match server::serve(listener, backend, signals, grace).await {
        server::Drained::Completely => tracing::info!("all in-flight requests finished"),
        server::Drained::GraceExpired => {
            tracing::warn!(
                grace_secs = args.grace_secs,
                "grace period expired; exiting anyway"
            )
        }
    }
    Ok(())
}

/// Prints the one line a parent process reads to learn the port.
fn announce(local_addr: SocketAddr) -> std::io::Result<()> {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "listening on {local_addr}")?;
    stdout.flush()
}

fn parse_listen_addr(text: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = text.parse() {
        return Ok(addr);
    }
    let expected = "expected HOST:PORT, e.g. 127.0.0.1:8081 or 127.0.0.1:0";
    match text.to_socket_addrs() {
        Ok(mut addrs) => addrs
            .next()
            .ok_or_else(|| format!("`{text}` resolves to no address")),
        Err(e) => Err(format!("{e}; {expected}")),
    }
}

fn parse_fraction(text: &str) -> Result<f64, String> {
    let value: f64 = text
        .parse()
        .map_err(|_| format!("`{text}` is not a number"))?;
    if (0.0..=1.0).contains(&value) {
        Ok(value)
    } else {
        Err(format!("{value} is outside 0..=1"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fractions_outside_zero_to_one_are_rejected() {
        assert_eq!(parse_fraction("0"), Ok(0.0));
        assert_eq!(parse_fraction("1"), Ok(1.0));
        assert_eq!(parse_fraction("0.25"), Ok(0.25));
        assert!(parse_fraction("1.5").is_err());
        assert!(parse_fraction("-0.1").is_err());
        assert!(parse_fraction("NaN").is_err());
        assert!(parse_fraction("half").is_err());
    }

    #[test]
    fn listen_addresses_need_a_port() {
        assert!(parse_listen_addr("127.0.0.1:0").is_ok());
        assert!(parse_listen_addr("[::1]:8080").is_ok());
        assert!(parse_listen_addr("127.0.0.1").is_err());
        assert!(parse_listen_addr("not an address").is_err());
    }
}
