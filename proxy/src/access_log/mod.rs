//! The access log: one line per request, in nginx's `combined` format (with prescale's fields
//! after it) or as JSON, to a file or standard output (`proxy.access_log`).
//!
//! Owns: what a request leaves behind for its line ([`RequestLine`], [`AccessEntry`]), the
//! bounded queue between the request path and the writer thread, and the log's counters.
//!
//! Invariants:
//! - a request never waits for the log: [`AccessLog::log`] is one non-blocking send into a queue
//!   of `proxy.access_log.buffer_lines`; when the queue is full the line is dropped and counted
//!   (`prescale_access_log_dropped_total{reason="queue_full"}`), as is a line the writer could not
//!   write (`reason="write_error"`); every line is either written or counted as dropped;
//! - formatting and writing happen on the writer thread ([`writer`]), which polls the queue (a
//!   request never wakes it); lines are written in the order requests ended on each worker
//!   thread;
//! - a [`AccessLog::reopen`] (SIGUSR1, as logrotate sends) makes the writer open the path again
//!   within [`writer::POLL_INTERVAL`]; lines already written stay in the old file, later ones go
//!   to the new one; if the path cannot be opened, the old file is kept and the failure counted;
//! - [`AccessLog::close`] writes every queued line before it returns (or its timeout ends).

mod format;
mod writer;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use prescale_config::{AccessLogConfig, AccessLogFormat};

use crate::meters::MeterKey;
use crate::profiles::ProfileRegistry;
use crate::request_id::RequestId;

/// What a request's line needs of its head, copied when the head is read (only while the log
/// is on).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestLine {
    pub method: Box<str>,
    /// The target as the client sent it (before normalising).
    pub target: Box<[u8]>,
    /// `HTTP/1.0`, `HTTP/1.1` or `HTTP/2.0` (as nginx writes them).
    pub protocol: &'static str,
    pub referer: Option<Box<[u8]>>,
    pub user_agent: Option<Box<[u8]>>,
}

impl RequestLine {
    /// The `protocol` text of an HTTP version.
    pub fn protocol_of(version: http::Version) -> &'static str {
        match version {
            http::Version::HTTP_09 => "HTTP/0.9",
            http::Version::HTTP_10 => "HTTP/1.0",
            http::Version::HTTP_2 => "HTTP/2.0",
            http::Version::HTTP_3 => "HTTP/3.0",
            _ => "HTTP/1.1",
        }
    }
}

/// One request, as its line tells it.
#[derive(Clone, Debug)]
pub struct AccessEntry {
    /// When the request ended (its line's time).
    pub ended: SystemTime,
    /// The peer address of the client connection.
    pub client: Option<IpAddr>,
    /// `None` when the head was never read whole (431).
    pub request: Option<Box<RequestLine>>,
    /// The status the client got; 0 when it got no response (logged as 499, nginx's "client
    /// closed the request").
    pub status: u16,
    pub body_bytes_sent: u64,
    pub request_id: Option<RequestId>,
    /// Profile, origin region and fleet, once the request had them.
    pub meter: Option<MeterKey>,
    /// The backend of the last attempt.
    pub backend: Option<SocketAddr>,
    /// From the first attempt on a backend to the end of the response.
    pub upstream_time: Option<Duration>,
    /// From the request's head to the end of its response.
    pub request_time: Duration,
}

impl AccessEntry {
    fn logged_status(&self) -> u16 {
        if self.status == 0 {
            499
        } else {
            self.status
        }
    }
}

/// The names a line shows for a [`MeterKey`]'s indices.
pub struct LogNames {
    pub profiles: Arc<ProfileRegistry>,
    /// Origin regions by `RegionId`.
    pub regions: Vec<String>,
    /// This region's fleets by index (fixed for the process's life).
    pub fleets: Vec<String>,
}

impl LogNames {
    fn profile(&self, meter: MeterKey) -> Arc<str> {
        if meter == MeterKey::OVERFLOW {
            return Arc::from("-");
        }
        self.profiles
            .name(meter.profile)
            .unwrap_or_else(|| Arc::from("unknown"))
    }

    fn region(&self, meter: MeterKey) -> Option<&str> {
        Some(
            self.regions
                .get(usize::from(meter.region.0))
                .map_or("unknown", String::as_str),
        )
    }

    fn fleet(&self, meter: MeterKey) -> Option<&str> {
        self.fleets
            .get(usize::from(meter.fleet.0))
            .map(String::as_str)
    }
}

/// The access log cannot be started.
#[derive(Debug, thiserror::Error)]
pub enum AccessLogError {
    #[error("proxy.access_log.path: cannot open `{}` for appending: {source}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("proxy.access_log: cannot start the writer thread: {0}")]
    Thread(#[source] std::io::Error),
}

/// The log's counters (all since start).
#[derive(Debug, Default)]
struct Counters {
    written: AtomicU64,
    dropped_queue_full: AtomicU64,
    dropped_write_error: AtomicU64,
    reopens: AtomicU64,
    reopen_failures: AtomicU64,
}

/// What the request path and the writer share.
#[derive(Debug, Default)]
struct Shared {
    counters: Counters,
    reopen_requested: AtomicBool,
    closing: AtomicBool,
}

/// The handle the data plane holds: cheap to call from every request.
pub struct AccessLog {
    queue: SyncSender<Box<AccessEntry>>,
    shared: Arc<Shared>,
    writer: Mutex<Option<JoinHandle<()>>>,
    target: String,
}

impl std::fmt::Debug for AccessLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessLog")
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

impl AccessLog {
    /// Opens the log's file (or standard output) and starts its writer thread.
    pub fn start(config: &AccessLogConfig, names: LogNames) -> Result<Self, AccessLogError> {
        let sink = if config.is_stdout() {
            writer::Sink::Stdout
        } else {
            writer::Sink::open(config.path.clone())?
        };
        let (queue, received) = sync_channel(config.buffer_lines);
        let shared = Arc::new(Shared::default());
        let format = match config.format {
            AccessLogFormat::Combined => format::combined,
            AccessLogFormat::Json => format::json,
        };
        let writer = writer::Writer {
            received,
            sink,
            format,
            names,
            shared: Arc::clone(&shared),
        };
        let handle = std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || writer.run())
            .map_err(AccessLogError::Thread)?;
        Ok(AccessLog {
            queue,
            shared,
            writer: Mutex::new(Some(handle)),
            target: if config.is_stdout() {
                "standard output".into()
            } else {
                config.path.display().to_string()
            },
        })
    }

    /// Queues a request's line; never waits (a full queue drops it, counted).
    pub fn log(&self, entry: Box<AccessEntry>) {
        match self.queue.try_send(entry) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.shared
                    .counters
                    .dropped_queue_full
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Asks the writer to open the log's path again (after logrotate moved the file).
    pub fn reopen(&self) {
        self.shared.reopen_requested.store(true, Ordering::Relaxed);
    }

    /// Where lines go, for messages.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// Writes every queued line and stops the writer; waits at most `timeout`. Lines logged
    /// after this are dropped (counted).
    pub fn close(&self, timeout: Duration) {
        self.shared.closing.store(true, Ordering::Relaxed);
        let Some(handle) = self.writer.lock().ok().and_then(|mut w| w.take()) else {
            return;
        };
        let deadline = Instant::now() + timeout;
        while !handle.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        if handle.is_finished() {
            let _ = handle.join();
        } else {
            tracing::warn!(target = %self.target, "access log writer did not finish in time");
        }
    }

    /// Prometheus text for the log's counters.
    pub fn write_metrics(&self, out: &mut String) {
        use std::fmt::Write as _;
        let c = &self.shared.counters;
        let load = |n: &AtomicU64| n.load(Ordering::Relaxed);
        out.push_str("# HELP prescale_access_log_lines_total Access log lines written.\n");
        out.push_str("# TYPE prescale_access_log_lines_total counter\n");
        let _ = writeln!(out, "prescale_access_log_lines_total {}", load(&c.written));
        out.push_str("# HELP prescale_access_log_dropped_total Access log lines lost: the queue to the writer was full (the disk or stdout kept up too slowly), or the write failed.\n");
        out.push_str("# TYPE prescale_access_log_dropped_total counter\n");
        let _ = writeln!(
            out,
            "prescale_access_log_dropped_total{{reason=\"queue_full\"}} {}",
            load(&c.dropped_queue_full)
        );
        let _ = writeln!(
            out,
            "prescale_access_log_dropped_total{{reason=\"write_error\"}} {}",
            load(&c.dropped_write_error)
        );
        out.push_str("# HELP prescale_access_log_reopens_total Times the access log file was opened again (SIGUSR1), by result.\n");
        out.push_str("# TYPE prescale_access_log_reopens_total counter\n");
        let _ = writeln!(
            out,
            "prescale_access_log_reopens_total{{result=\"ok\"}} {}",
            load(&c.reopens)
        );
        let _ = writeln!(
            out,
            "prescale_access_log_reopens_total{{result=\"failed\"}} {}",
            load(&c.reopen_failures)
        );
    }
}

impl Drop for AccessLog {
    fn drop(&mut self) {
        self.close(Duration::from_secs(2));
    }
}

#[cfg(test)]
mod tests;
