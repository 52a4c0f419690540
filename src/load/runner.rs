//! Drives a [`Schedule`] against the target as real HTTP/1.1 traffic: open-loop (each request
//! is sent at its scheduled time, whatever the previous ones are doing), with at most
//! `concurrency` requests in flight over a keep-alive connection pool. Sends that could not
//! start on time are counted as late; sends still pending when the run ends, as unsent.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request, Uri};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::report::{Counts, Stats, StatusClasses, Summary};
use super::schedule::{Schedule, ScheduledSend, UserRef};

/// A send that starts later than this after its scheduled time counts as late.
pub const LATE_AFTER: Duration = Duration::from_millis(10);

/// Sends still waiting this long after the end of the run are given up (counted as unsent).
const END_GRACE: Duration = Duration::from_millis(250);

const X_USER_ID: HeaderName = HeaderName::from_static("x-user-id");

type HttpClient = Client<HttpConnector, Empty<Bytes>>;

/// Everything about a run except the schedule.
pub struct RunSettings {
    pub target: Uri,
    /// Describes the schedule in the summary.
    pub mode: String,
    /// Upper bound on the run's length.
    pub duration: Duration,
    pub concurrency: usize,
    pub request_timeout: Duration,
    pub progress_every: Duration,
    /// Identities of `UserRef::Named` users.
    pub named_users: Vec<HeaderValue>,
}

/// Runs the schedule to its end (or `duration`, or Ctrl-C) and summarises what happened.
pub async fn run(settings: RunSettings, schedule: Schedule) -> anyhow::Result<Summary> {
    let window = schedule
        .natural_length()
        .map_or(settings.duration, |n| n.min(settings.duration));
    let stats = Arc::new(Stats::new()?);
    let client = http_client(settings.concurrency);
    let permits = Arc::new(Semaphore::new(settings.concurrency));
    let named_users = Arc::new(settings.named_users);

    let start = Instant::now();
    let progress = tokio::spawn(print_progress(
        Arc::clone(&stats),
        start,
        settings.progress_every,
    ));

    let deadline = start + window + END_GRACE;
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    let mut was_interrupted = false;
    let mut distinct_users: HashSet<UserRef> = HashSet::new();
    let mut scheduled = 0u64;
    let mut unsent = 0u64;
    let mut sends = schedule.take_while(|send| send.at < window);
    for ScheduledSend { at, user } in sends.by_ref() {
        scheduled += 1;
        let due = start + at;
        if due > Instant::now() {
            tokio::select! {
                _ = tokio::time::sleep_until(due) => {}
                _ = &mut interrupted => {
                    was_interrupted = true;
                    // Its time has not come: it was never due, so it is neither sent nor unsent.
                    scheduled -= 1;
                    break;
                }
            }
        }
        let permit = match Arc::clone(&permits).try_acquire_owned() {
            Ok(permit) => Some(permit),
            Err(_) => tokio::select! {
                permit = Arc::clone(&permits).acquire_owned() => permit.ok(),
                _ = tokio::time::sleep_until(deadline) => None,
                _ = &mut interrupted => { was_interrupted = true; None }
            },
        };
        let Some(permit) = permit.filter(|_| !was_interrupted && Instant::now() < deadline) else {
            unsent += 1;
            break;
        };
        if Instant::now().saturating_duration_since(due) > LATE_AFTER {
            stats.late.fetch_add(1, Ordering::Relaxed);
        }
        distinct_users.insert(user);
        let request = build_request(&settings.target, user_identity(user, &named_users));
        stats.sent.fetch_add(1, Ordering::Relaxed);
        stats.in_flight.fetch_add(1, Ordering::Relaxed);
        let task = RequestTask {
            client: client.clone(),
            stats: Arc::clone(&stats),
            timeout: settings.request_timeout,
        };
        tokio::spawn(async move {
            task.send(request).await;
            drop(permit);
        });
    }
    if !was_interrupted {
        let remaining = sends.count() as u64;
        scheduled += remaining;
        unsent += remaining;
    }
    // An interrupted run is judged on the part that ran; a run that fell behind, on how long
    // sending actually took.
    let planned_window = if was_interrupted {
        start.elapsed()
    } else {
        window
    };
    let send_window = start.elapsed().max(planned_window);

    // Let in-flight requests finish; each is bounded by its own timeout.
    let all_permits = u32::try_from(settings.concurrency).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(
        settings.request_timeout + Duration::from_secs(1),
        permits.acquire_many(all_permits),
    )
    .await;
    progress.abort();

    let counts = stats.counts();
    let seconds = send_window.as_secs_f64().max(f64::EPSILON);
    Ok(Summary {
        target: settings.target.to_string(),
        mode: settings.mode,
        duration_secs: seconds,
        requests_scheduled: scheduled,
        requests_sent: counts.sent,
        requests_finished: counts.finished(),
        target_rps: scheduled as f64 / planned_window.as_secs_f64().max(f64::EPSILON),
        achieved_rps: counts.sent as f64 / seconds,
        status: StatusClasses {
            ok: counts.status_classes[0],
            redirect: counts.status_classes[1],
            client_error: counts.status_classes[2],
            server_error: counts.status_classes[3],
            errors: counts.errors,
        },
        timeouts: counts.timeouts,
        latency_ms: stats.latency(),
        late_sends: counts.late,
        late_after_ms: u64::try_from(LATE_AFTER.as_millis()).unwrap_or(u64::MAX),
        unsent,
        distinct_users: distinct_users.len() as u64,
        first_error: stats.first_error(),
        interrupted: was_interrupted,
    })
}

fn http_client(concurrency: usize) -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(Duration::from_secs(5)));
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(concurrency)
        .pool_idle_timeout(Duration::from_secs(30))
        .build(connector)
}

fn user_identity(user: UserRef, named_users: &[HeaderValue]) -> Option<HeaderValue> {
    match user {
        UserRef::Numbered(number) => HeaderValue::try_from(format!("user-{number}")).ok(),
        UserRef::Named(index) => named_users.get(index as usize).cloned(),
    }
}

fn build_request(target: &Uri, identity: Option<HeaderValue>) -> Request<Empty<Bytes>> {
    let mut request = Request::new(Empty::new());
    *request.uri_mut() = target.clone();
    if let Some(identity) = identity {
        request.headers_mut().insert(X_USER_ID, identity);
    }
    request
}

struct RequestTask {
    client: HttpClient,
    stats: Arc<Stats>,
    timeout: Duration,
}

impl RequestTask {
    async fn send(self, request: Request<Empty<Bytes>>) {
        let started = Instant::now();
        let exchange = async {
            let response = self.client.request(request).await?;
            let status = response.status();
            let mut body = response.into_body();
            while let Some(frame) = body.frame().await {
                frame?;
            }
            Ok::<_, anyhow::Error>(status)
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(Ok(status)) => self.stats.record_response(status, started.elapsed()),
            Ok(Err(error)) => self.stats.record_error(error_chain(&error)),
            Err(_) => self.stats.record_timeout(self.timeout),
        }
        self.stats.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The error and its causes on one line (hyper's top-level messages alone are vague).
fn error_chain(error: &anyhow::Error) -> String {
    error
        .chain()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(": ")
}

async fn print_progress(stats: Arc<Stats>, start: Instant, every: Duration) {
    let mut ticks = tokio::time::interval_at(start + every, every);
    let mut previous = Counts::default();
    let mut previous_at = start;
    loop {
        let now = ticks.tick().await;
        let counts = stats.counts();
        let rate = (counts.sent - previous.sent) as f64
            / now
                .saturating_duration_since(previous_at)
                .as_secs_f64()
                .max(f64::EPSILON);
        let [ok, redirect, client_error, server_error] = counts.status_classes;
        eprintln!(
            "load: {:>6.1}s  sent {} ({rate:.1} req/s)  2xx {ok} 3xx {redirect} 4xx {client_error} \
             5xx {server_error} errors {}  in-flight {}  late {}",
            now.saturating_duration_since(start).as_secs_f64(),
            counts.sent,
            counts.errors,
            stats.in_flight.load(Ordering::Relaxed),
            counts.late,
        );
        previous = counts;
        previous_at = now;
    }
}
