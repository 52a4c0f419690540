//! What `prescale load` measured: the counters and latency histogram filled by request tasks,
//! and the end-of-run summary (text for people, one JSON object for tools).

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use hdrhistogram::Histogram;
use http::StatusCode;
use serde::Serialize;

/// The slowest latency the histogram tracks precisely; slower answers are clamped to it.
const HIGHEST_TRACKED_MICROS: u64 = 3_600_000_000;

/// Counters shared by the scheduler, the request tasks and the progress printer.
#[derive(Debug)]
pub struct Stats {
    pub sent: AtomicU64,
    pub late: AtomicU64,
    /// Requests sent and not yet answered.
    pub in_flight: AtomicU64,
    status_classes: [AtomicU64; 4],
    errors: AtomicU64,
    timeouts: AtomicU64,
    latency_micros: Mutex<Histogram<u64>>,
    first_error: Mutex<Option<String>>,
}

/// A consistent-enough reading of the counters for a progress line.
#[derive(Debug, Clone, Copy, Default)]
pub struct Counts {
    pub sent: u64,
    pub late: u64,
    /// Responses by class: 2xx, 3xx, 4xx, 5xx.
    pub status_classes: [u64; 4],
    /// Requests without a usable response (connection failures, timeouts, odd statuses).
    pub errors: u64,
    pub timeouts: u64,
}

impl Counts {
    pub fn finished(&self) -> u64 {
        self.status_classes.iter().sum::<u64>() + self.errors
    }
}

impl Stats {
    pub fn new() -> anyhow::Result<Self> {
        let histogram = Histogram::new_with_bounds(1, HIGHEST_TRACKED_MICROS, 3)?;
        Ok(Stats {
            sent: AtomicU64::new(0),
            late: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            status_classes: Default::default(),
            errors: AtomicU64::new(0),
            timeouts: AtomicU64::new(0),
            latency_micros: Mutex::new(histogram),
            first_error: Mutex::new(None),
        })
    }

    pub fn record_response(&self, status: StatusCode, latency: Duration) {
        match status.as_u16() / 100 {
            class @ 2..=5 => {
                self.status_classes[usize::from(class - 2)].fetch_add(1, Ordering::Relaxed);
            }
            _ => self.record_error(format!("unexpected status {status}")),
        }
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        if let Ok(mut histogram) = self.latency_micros.lock() {
            histogram.saturating_record(micros.clamp(1, HIGHEST_TRACKED_MICROS));
        }
    }

    pub fn record_error(&self, message: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut first) = self.first_error.lock() {
            first.get_or_insert(message);
        }
    }

    pub fn record_timeout(&self, timeout: Duration) {
        self.timeouts.fetch_add(1, Ordering::Relaxed);
        self.record_error(format!("no complete response within {timeout:?}"));
    }

    pub fn counts(&self) -> Counts {
        Counts {
            sent: self.sent.load(Ordering::Relaxed),
            late: self.late.load(Ordering::Relaxed),
            status_classes: self
                .status_classes
                .each_ref()
                .map(|c| c.load(Ordering::Relaxed)),
            errors: self.errors.load(Ordering::Relaxed),
            timeouts: self.timeouts.load(Ordering::Relaxed),
        }
    }

    pub fn latency(&self) -> LatencyMillis {
        let Ok(histogram) = self.latency_micros.lock() else {
            return LatencyMillis::default();
        };
        if histogram.is_empty() {
            return LatencyMillis::default();
        }
        let millis = |micros: u64| micros as f64 / 1000.0;
        LatencyMillis {
            p50: millis(histogram.value_at_quantile(0.50)),
            p95: millis(histogram.value_at_quantile(0.95)),
            p99: millis(histogram.value_at_quantile(0.99)),
            max: millis(histogram.max()),
            mean: histogram.mean() / 1000.0,
        }
    }

    pub fn first_error(&self) -> Option<String> {
        self.first_error.lock().ok().and_then(|first| first.clone())
    }
}

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct LatencyMillis {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct StatusClasses {
    #[serde(rename = "2xx")]
    pub ok: u64,
    #[serde(rename = "3xx")]
    pub redirect: u64,
    #[serde(rename = "4xx")]
    pub client_error: u64,
    #[serde(rename = "5xx")]
    pub server_error: u64,
    pub errors: u64,
}

/// The end-of-run summary; `--json` prints it as one object.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub target: String,
    /// What was replayed, e.g. `uniform 100 req/s over 1000 users`.
    pub mode: String,
    /// The sending window: the planned run length, or longer if sending fell behind.
    pub duration_secs: f64,
    /// Requests the schedule asked for within the run.
    pub requests_scheduled: u64,
    pub requests_sent: u64,
    /// Responses and errors received (in-flight requests still pending at exit are not counted).
    pub requests_finished: u64,
    pub target_rps: f64,
    pub achieved_rps: f64,
    pub status: StatusClasses,
    /// Errors that were timeouts (included in `status.errors`).
    pub timeouts: u64,
    /// Latency of requests that got a response, from send to the end of the body.
    pub latency_ms: LatencyMillis,
    /// Requests sent more than `late_after_ms` after their scheduled time.
    pub late_sends: u64,
    pub late_after_ms: u64,
    /// Scheduled requests never sent because the run ended (or was interrupted) first: sending
    /// had fallen more than a quarter second behind by the end of the run.
    pub unsent: u64,
    pub distinct_users: u64,
    pub first_error: Option<String>,
    pub interrupted: bool,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.status;
        let l = &self.latency_ms;
        writeln!(f, "prescale load → {} ({})", self.target, self.mode)?;
        writeln!(
            f,
            "  requests   {} sent of {} scheduled in {:.2} s, {} finished",
            self.requests_sent, self.requests_scheduled, self.duration_secs, self.requests_finished
        )?;
        writeln!(
            f,
            "  rate       {:.1} req/s achieved (target {:.1} req/s)",
            self.achieved_rps, self.target_rps
        )?;
        writeln!(
            f,
            "  status     2xx {}  3xx {}  4xx {}  5xx {}  errors {} (timeouts {})",
            s.ok, s.redirect, s.client_error, s.server_error, s.errors, self.timeouts
        )?;
        writeln!(
            f,
            "  latency    p50 {:.2} ms  p95 {:.2} ms  p99 {:.2} ms  max {:.2} ms  mean {:.2} ms",
            l.p50, l.p95, l.p99, l.max, l.mean
        )?;
        writeln!(
            f,
            "  schedule   {} late sends (> {} ms behind), {} unsent",
            self.late_sends, self.late_after_ms, self.unsent
        )?;
        write!(f, "  users      {} distinct", self.distinct_users)?;
        if let Some(error) = &self.first_error {
            write!(f, "\n  first error: {error}")?;
        }
        if self.interrupted {
            write!(f, "\n  interrupted before the end of the run")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_are_classified_and_timed() {
        let stats = Stats::new().unwrap();
        stats.record_response(StatusCode::OK, Duration::from_millis(2));
        stats.record_response(StatusCode::NOT_FOUND, Duration::from_millis(4));
        stats.record_response(StatusCode::BAD_GATEWAY, Duration::from_millis(8));
        stats.record_timeout(Duration::from_secs(1));
        let counts = stats.counts();
        assert_eq!(counts.status_classes, [1, 0, 1, 1]);
        assert_eq!(
            (counts.errors, counts.timeouts, counts.finished()),
            (1, 1, 4)
        );
        let latency = stats.latency();
        assert!((3.9..=4.1).contains(&latency.p50), "{latency:?}");
        assert!((7.9..=8.1).contains(&latency.max), "{latency:?}");
        assert!(stats.first_error().is_some_and(|e| e.contains("1s")));
    }
}
