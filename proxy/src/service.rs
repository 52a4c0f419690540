//! The pingora `ProxyHttp` implementation: each hook does one step of the data flow and calls the
//! plain functions of the other modules.
//!
//! | phase                    | what happens here                                                  |
//! |--------------------------|--------------------------------------------------------------------|
//! | `request_filter`         | header limits, client address, identity → `UserKey`, origin region, |
//! |                          | feature update → profile, profile → fleet; early 4xx/503 answers    |
//! | `upstream_peer`          | a Ready, healthy, non-ejected, untried backend of the fleet        |
//! | `upstream_request_filter`| `X-Forwarded-For` / `X-Forwarded-Proto`, `X-Request-Id`, `Via`      |
//! | `upstream_response_filter`| status check, hop-by-hop fields out, `X-Request-Id` and `Via` in   |
//! | `fail_to_connect`        | passive ejection bookkeeping, retry on another backend             |
//! | `error_while_proxy`      | retry idempotent requests that got no response yet                 |
//! | `fail_to_proxy`          | 502 / 503 / 504 with a short body                                  |
//! | `logging`                | meters and the user's response features                            |
//!
//! The common request (plain HTTP/1.1 GET/HEAD) never gets here: the front door (`http1`) serves
//! it with the same [`RequestCtx`] bookkeeping; this is the general path for everything else.
//!
//! Invariants: every request is counted exactly once — in the meters once it has a profile and
//! fleet, else (malformed headers or identity) in the early-rejection counter; raw
//! identities never reach this module (only `UserKey`s); nothing here blocks or takes a lock on
//! the common path.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::modules::http::HttpModules;
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorSource, ErrorType};

use crate::access_log::{AccessEntry, RequestLine};
use crate::dataplane::{Admitted, DataPlane, Rejection};
use crate::fields::{visible_ascii, HeaderLookup};
use crate::fleet::{Attempt, BackendState, Fleet, FleetIdx, InFlight, Tried};
use crate::meters::{MeterKey, Observation};
use crate::request_head::{self, HeadError};
use crate::request_id::{RequestId, REQUEST_ID, VIA};

/// Per-request state carried between hooks.
pub struct RequestCtx {
    started: Instant,
    routed: Option<Routed>,
    /// Backends already tried (their identities).
    tried: Tried,
    attempts: u32,
    pub(crate) response_started: bool,
    /// The current attempt: its backend, counted in flight until the next attempt or the end.
    in_flight: Option<InFlight>,
    /// No usable response came from a backend (connect/read failure, timeout).
    upstream_failed: bool,
    /// Status for the client if the last failed attempt turns out to be the final one.
    pub(crate) failure_status: u16,
    /// Status we answered ourselves (rejections), when the request never reached a backend.
    pub(crate) local_status: Option<u16>,
    /// The path routing saw and the backend gets, when normalising changed the client's.
    normalized_path: Option<String>,
    /// The request failed on a timeout while the client had not sent its whole body: the
    /// client's stall (answered 408), not the backend's failure.
    client_stalled: bool,
    /// The request's `X-Request-Id`, chosen when its head is read (kept across retries, and on
    /// the proxy's own answers).
    pub(crate) request_id: Option<RequestId>,
    /// The client's peer address.
    pub(crate) peer_ip: Option<IpAddr>,
    /// The head as the access log shows it (only while the log is on).
    pub(crate) request_line: Option<Box<RequestLine>>,
    /// When the first attempt on a backend began.
    first_attempt: Option<Instant>,
}

impl RequestCtx {
    pub(crate) fn new() -> Self {
        RequestCtx {
            started: Instant::now(),
            routed: None,
            tried: Tried::new(),
            attempts: 0,
            response_started: false,
            in_flight: None,
            upstream_failed: false,
            failure_status: 502,
            local_status: None,
            normalized_path: None,
            client_stalled: false,
            request_id: None,
            peer_ip: None,
            request_line: None,
            first_attempt: None,
        }
    }

    /// Routes the request as admission decided.
    pub(crate) fn admitted(&mut self, admitted: &Admitted) -> Routed {
        let routed = Routed {
            user: admitted.user,
            meter: admitted.meter,
            fleet: admitted.fleet,
        };
        self.routed = Some(routed);
        routed
    }

    /// Books a request we answer ourselves: counted under its meter key when it got as far as a
    /// fleet, else as an early rejection.
    pub(crate) fn rejected(&mut self, plane: &DataPlane, rejection: &Rejection) {
        self.local_status = Some(rejection.status);
        match rejection.meter {
            Some(meter) => {
                self.routed = Some(Routed {
                    user: rejection.user,
                    meter,
                    fleet: meter_fleet(meter),
                })
            }
            None => plane.record_early_rejection(rejection.status),
        }
    }

    /// Ends the request: its in-flight count, then the meters and the user's response features,
    /// then its access-log line. `sent_status`: the status of the response the client got, if
    /// one was sent.
    pub(crate) fn finish(
        &mut self,
        plane: &DataPlane,
        sent_status: Option<u16>,
        bytes_in: u64,
        bytes_out: u64,
    ) {
        let backend = self.in_flight.take().map(|attempt| attempt.backend().addr);
        let status = self
            .local_status
            .filter(|_| !self.response_started)
            .or(sent_status)
            .unwrap_or(0);
        let latency = self.started.elapsed();
        if let Some(routed) = self.routed {
            let observation = Observation {
                status,
                upstream_failed: self.upstream_failed && !self.response_started,
                latency,
                bytes_in,
                bytes_out,
            };
            plane.record(routed.user, routed.meter, observation);
        }
        if let Some(log) = &plane.access_log {
            log.log(Box::new(AccessEntry {
                ended: SystemTime::now(),
                client: self.peer_ip,
                request: self.request_line.take(),
                status,
                body_bytes_sent: bytes_out,
                request_id: self.request_id,
                meter: self.routed.map(|routed| routed.meter),
                backend,
                upstream_time: self.first_attempt.map(|at| at.elapsed()),
                request_time: latency,
            }));
        }
    }

    /// Starts the next attempt on `fleet`: a Ready, healthy, untried backend, or, when none is
    /// left, the status for the client — how the last attempt failed (502, or 504 for a
    /// timeout), or 503 when nothing could be tried.
    pub(crate) fn begin_attempt(&mut self, fleet: &Fleet, user: u64) -> Result<&BackendState, u16> {
        let no_backend = if self.attempts > 0 {
            self.failure_status
        } else {
            503
        };
        if self.tried.is_full() {
            return Err(no_backend);
        }
        let Some(backend) = fleet.select(user, &self.tried) else {
            return Err(no_backend);
        };
        self.tried.insert(backend.id());
        self.attempts += 1;
        self.first_attempt.get_or_insert_with(Instant::now);
        // Replacing the guard ends the previous attempt's in-flight count.
        let guard = self.in_flight.insert(backend.begin());
        Ok(guard.backend())
    }

    /// The backend of the current attempt.
    pub(crate) fn backend(&self) -> Option<&Arc<BackendState>> {
        self.in_flight.as_ref().map(InFlight::backend)
    }

    /// Books the current attempt on `fleet` as failed with `e` (passive ejection, and the status
    /// a final failure answers with); returns whether the fleet allows another attempt.
    pub(crate) fn attempt_failed(&mut self, fleet: &Fleet, e: &Error) -> bool {
        self.upstream_failed = true;
        self.failure_status = failure_status(e);
        if let Some(backend) = self.backend() {
            fleet.record(backend, Attempt::Failed);
        }
        self.attempts <= fleet.retries()
    }
}

#[derive(Clone, Copy)]
pub(crate) struct Routed {
    pub(crate) user: u64,
    meter: MeterKey,
    pub(crate) fleet: FleetIdx,
}

pub struct ProxyService {
    pub plane: Arc<DataPlane>,
}

impl ProxyService {
    pub fn new(plane: Arc<DataPlane>) -> Self {
        ProxyService { plane }
    }

    /// Drops the client's fields the forwarding policy keeps from backends, and sets
    /// `X-Forwarded-For` (the client address, appended to a trusted peer's list) and
    /// `X-Forwarded-Proto` on a request for a backend.
    pub(crate) fn set_forwarding_headers(
        &self,
        peer_ip: Option<IpAddr>,
        trusted: bool,
        upstream_request: &mut pingora::http::RequestHeader,
    ) -> Result<()> {
        // Read before the client's copy is dropped.
        let forwarded_for = forwarded_for(&self.plane, peer_ip, &upstream_request.headers);
        let dropped: Vec<http::HeaderName> = upstream_request
            .headers
            .keys()
            .filter(|name| self.plane.forwarding.drops(name.as_str(), trusted))
            .cloned()
            .collect();
        for name in dropped {
            upstream_request.remove_header(&name);
        }
        if forwarded_for.is_empty() {
            upstream_request.remove_header(FORWARDED_FOR);
        } else {
            upstream_request.insert_header(FORWARDED_FOR, forwarded_for)?;
        }
        upstream_request.insert_header(FORWARDED_PROTO, forwarded_proto(&self.plane))?;
        Ok(())
    }
}

/// The protocol a message was received with, as `Via` names it (RFC 9110 §7.6.3).
fn via_protocol(version: http::Version) -> &'static str {
    match version {
        http::Version::HTTP_09 => "0.9",
        http::Version::HTTP_10 => "1.0",
        http::Version::HTTP_2 => "2",
        http::Version::HTTP_3 => "3",
        _ => "1.1",
    }
}

/// What the access log shows of a request head read by pingora.
fn request_line(request: &pingora::http::RequestHeader) -> RequestLine {
    let field = |name| request.headers.get(name).map(|v| v.as_bytes().into());
    RequestLine {
        method: request.method.as_str().into(),
        target: request.raw_path().into(),
        protocol: RequestLine::protocol_of(request.version),
        referer: field(http::header::REFERER),
        user_agent: field(http::header::USER_AGENT),
    }
}

/// The general path's view of [`request_head`]: the `Host` check for the request's version and
/// target, and the normalised path when it differs from the client's.
fn request_head_of(
    request: &pingora::http::RequestHeader,
) -> std::result::Result<Option<String>, HeadError> {
    let version = match request.version {
        http::Version::HTTP_2 | http::Version::HTTP_3 => request_head::Version::Http2,
        http::Version::HTTP_11 => request_head::Version::Http11,
        _ => request_head::Version::Http10,
    };
    let authority = request.uri.authority().map(|a| a.as_str().as_bytes());
    request_head::check_host(version, authority, &request.headers)?;
    Ok(match request_head::normalize_path(request.uri.path())? {
        std::borrow::Cow::Borrowed(_) => None,
        std::borrow::Cow::Owned(normal) => Some(normal),
    })
}

pub(crate) const FORWARDED_FOR: &str = "x-forwarded-for";
pub(crate) const FORWARDED_PROTO: &str = "x-forwarded-proto";

/// The `X-Forwarded-For` a backend gets: the client address, after the list a trusted peer sent
/// (all of its `X-Forwarded-For` fields, in order); empty when the peer address is unknown.
pub(crate) fn forwarded_for(
    plane: &DataPlane,
    peer_ip: Option<IpAddr>,
    headers: &(impl HeaderLookup + ?Sized),
) -> String {
    use std::fmt::Write as _;
    let Some(ip) = peer_ip else {
        return String::new();
    };
    let mut list = String::new();
    // An untrusted peer cannot tell the backend who the client is.
    if plane.trusts(peer_ip) {
        for value in headers.get_all(FORWARDED_FOR) {
            if let Some(text) = visible_ascii(value)
                .map(str::trim)
                .filter(|t| !t.is_empty())
            {
                list.push_str(text);
                list.push_str(", ");
            }
        }
    }
    let _ = write!(list, "{ip}");
    list
}

pub(crate) fn forwarded_proto(plane: &DataPlane) -> &'static str {
    if plane.tls {
        "https"
    } else {
        "http"
    }
}

#[async_trait]
impl ProxyHttp for ProxyService {
    type CTX = RequestCtx;

    /// No downstream modules: prescale does not compress responses (the default adds a disabled
    /// compression module, whose per-request context and filters cost time on every response).
    fn init_downstream_modules(&self, _modules: &mut HttpModules) {}

    fn new_ctx(&self) -> Self::CTX {
        RequestCtx::new()
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Self::CTX) -> Result<bool> {
        // A client that stops reading the response, or sending its body, is let go after these
        // (pingora waits forever by default), freeing the backend connection it holds.
        let timeouts = self.plane.client_timeouts;
        session.set_write_timeout(Some(timeouts.send));
        session.set_read_timeout(Some(timeouts.body));
        let peer_ip = peer_ip(session);
        let request = session.req_header();
        ctx.peer_ip = peer_ip;
        if self.plane.access_log.is_some() {
            ctx.request_line = Some(Box::new(request_line(request)));
        }
        // Chosen once from the client's fields: every attempt, and any answer of our own,
        // carries the same ID.
        ctx.request_id = self.plane.added_fields.request_id(
            self.plane.trusts(peer_ip),
            request
                .headers
                .get_all(REQUEST_ID)
                .iter()
                .map(|v| v.as_bytes()),
        );
        let path = match request_head_of(request) {
            Ok(path) => path,
            Err(e) => {
                let rejection = Rejection::early(400, e.message());
                ctx.rejected(&self.plane, &rejection);
                session.set_keepalive(None);
                let answer = Answer {
                    status: rejection.status,
                    message: rejection.message,
                    retry_after: None,
                    request_id: ctx.request_id.as_ref(),
                };
                respond(session, answer).await?;
                return Ok(true);
            }
        };
        let request = session.req_header();
        let routed_path = path.as_deref().unwrap_or_else(|| request.uri.path());
        let admission = match crate::http1::take_direct_admission() {
            Some(admitted) => Ok(admitted),
            None => self
                .plane
                .admit(&request.method, routed_path, &request.headers, peer_ip),
        };
        ctx.normalized_path = path;
        match admission {
            Ok(admitted) => {
                ctx.admitted(&admitted);
                Ok(false)
            }
            Err(rejection) => {
                ctx.rejected(&self.plane, &rejection);
                let answer = Answer {
                    status: rejection.status,
                    message: rejection.message,
                    retry_after: rejection.retry_after_secs,
                    request_id: ctx.request_id.as_ref(),
                };
                respond(session, answer).await?;
                Ok(true)
            }
        }
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut Self::CTX,
    ) -> Result<Box<HttpPeer>> {
        let Some(routed) = ctx.routed else {
            return Err(Error::explain(
                ErrorType::InternalError,
                "request was not routed",
            ));
        };
        let fleet = self.plane.fleets.get(routed.fleet);
        let backend = ctx.begin_attempt(fleet, routed.user).map_err(|status| {
            let mut e = Error::explain(
                ErrorType::HTTPStatus(status),
                "no healthy backend left to try",
            );
            e.set_retry(false);
            e
        })?;
        Ok(Box::new(backend.peer.clone()))
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut pingora::http::RequestHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        if let Some(path) = &ctx.normalized_path {
            let target = match upstream_request.uri.query() {
                Some(query) => format!("{path}?{query}"),
                None => path.clone(),
            };
            let uri = http::Uri::try_from(target).map_err(|e| {
                Error::because(
                    ErrorType::InternalError,
                    "normalised request target is not a URI",
                    e,
                )
            })?;
            upstream_request.set_uri(uri);
        }
        let peer_ip = peer_ip(session);
        let trusted = self.plane.trusts(peer_ip);
        self.set_forwarding_headers(peer_ip, trusted, upstream_request)?;
        if let Some(id) = &ctx.request_id {
            upstream_request.insert_header(REQUEST_ID, id.as_str())?;
        }
        if let Some(via) = self.plane.added_fields.via() {
            let received = via_protocol(session.req_header().version);
            upstream_request.append_header(VIA, format!("{received} {via}"))?;
        }
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        if !(100..=599).contains(&upstream_response.status.as_u16()) {
            // As on the direct path: the backend's failure, answered 502 (not retried: the
            // request was served once). The error's source is left unset so that it is counted
            // here only.
            if let Some(routed) = ctx.routed {
                ctx.attempt_failed(
                    self.plane.fleets.get(routed.fleet),
                    &Error::new(ErrorType::InvalidHTTPHeader),
                );
            }
            let mut e = Error::explain(
                ErrorType::HTTPStatus(502),
                "backend sent a status code outside 100-599",
            );
            e.set_retry(false);
            return Err(e);
        }
        if upstream_response.status.as_u16() != 101 {
            strip_hop_by_hop(upstream_response);
        }
        if let Some(id) = &ctx.request_id {
            upstream_response.insert_header(REQUEST_ID, id.as_str())?;
        }
        if let Some(via) = self.plane.added_fields.via() {
            let received = via_protocol(upstream_response.version);
            upstream_response.append_header(VIA, format!("{received} {via}"))?;
        }
        ctx.response_started = true;
        if let (Some(routed), Some(backend)) = (ctx.routed, ctx.backend()) {
            self.plane
                .fleets
                .get(routed.fleet)
                .record(backend, Attempt::Succeeded);
        }
        Ok(())
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Self::CTX,
        mut e: Box<Error>,
    ) -> Box<Error> {
        if let Some(routed) = ctx.routed {
            let fleet = self.plane.fleets.get(routed.fleet);
            // Nothing was sent: any request may go to another backend.
            e.set_retry(ctx.attempt_failed(fleet, &e));
        }
        e
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut Self::CTX,
        _client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("backend {}", peer._address));
        let Some(routed) = ctx.routed else { return e };
        let fleet = self.plane.fleets.get(routed.fleet);
        // A backend waiting for the rest of a body the client stopped sending times out through
        // no fault of its own: charging it would let slow uploads eject healthy backends.
        if is_timeout(e.etype()) && !session.as_mut().is_body_done() {
            ctx.client_stalled = true;
            e.set_retry(false);
            return e;
        }
        let attempts_left = e.esource() == &ErrorSource::Upstream && ctx.attempt_failed(fleet, &e);
        let retryable = attempts_left
            && session.req_header().method.is_idempotent()
            && !ctx.response_started
            && !session.as_ref().retry_buffer_truncated();
        e.set_retry(retryable);
        e
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut Self::CTX,
    ) -> FailToProxy
    where
        Self::CTX: Send + Sync,
    {
        let client_timed_out = is_timeout(e.etype())
            && (ctx.client_stalled || e.esource() == &ErrorSource::Downstream);
        let code = match e.etype() {
            ErrorType::HTTPStatus(code) => *code,
            _ if client_timed_out => 408,
            ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout => 504,
            _ => match e.esource() {
                ErrorSource::Upstream => 502,
                ErrorSource::Downstream => match e.etype() {
                    ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => 0,
                    _ => 400,
                },
                ErrorSource::Internal | ErrorSource::Unset => 500,
            },
        };
        let (message, retry_after) = failure_answer(code);
        ctx.local_status = Some(code);
        if code > 0 && !ctx.response_started {
            let answer = Answer {
                status: code,
                message,
                retry_after,
                request_id: ctx.request_id.as_ref(),
            };
            if let Err(write_error) = respond(session, answer).await {
                tracing::debug!(error = %write_error, "could not send error response");
            }
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut Self::CTX) {
        let sent_status = session.response_written().map(|r| r.status.as_u16());
        ctx.finish(
            &self.plane,
            sent_status,
            session.body_bytes_read() as u64,
            session.body_bytes_sent() as u64,
        );
    }

    fn suppress_error_log(&self, _session: &Session, _ctx: &Self::CTX, error: &Error) -> bool {
        // 503 "no healthy backend" is counted in metrics; logging each one would flood the log.
        matches!(error.etype(), ErrorType::HTTPStatus(503))
    }
}

/// The body and `Retry-After` of a response the proxy gives itself for `status`.
pub(crate) fn failure_answer(status: u16) -> (&'static str, Option<u32>) {
    match status {
        503 => (
            "no backend of the fleet can take the request (none healthy and ready, or all at max_connections_per_backend)\n",
            Some(1),
        ),
        502 => ("backend failed to answer\n", None),
        504 => ("backend timed out\n", None),
        408 => ("the request (its body) did not arrive in time\n", None),
        400 => ("bad request\n", None),
        500 => ("internal proxy error\n", None),
        _ => ("request failed\n", None),
    }
}

/// A read or write that timed out (a connect timeout happens before any body is read).
fn is_timeout(etype: &ErrorType) -> bool {
    matches!(etype, ErrorType::ReadTimedout | ErrorType::WriteTimedout)
}

fn failure_status(e: &Error) -> u16 {
    match e.etype() {
        ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout => 504,
        _ => 502,
    }
}

fn meter_fleet(meter: MeterKey) -> FleetIdx {
    FleetIdx(meter.fleet.0)
}

fn peer_ip(session: &Session) -> Option<IpAddr> {
    session
        .client_addr()
        .and_then(|addr| addr.as_inet())
        .map(|a| a.ip())
}

/// A response the proxy gives itself (on either path).
pub(crate) struct Answer<'a> {
    pub(crate) status: u16,
    pub(crate) message: &'static str,
    pub(crate) retry_after: Option<u32>,
    pub(crate) request_id: Option<&'a RequestId>,
}

/// Writes `answer` to the client: a plain-text response, or for a gRPC request
/// (`content-type: application/grpc…`) a trailers-only gRPC response (HTTP 200, `grpc-status`
/// as Envoy maps the HTTP status, the message in `grpc-message`), which gRPC clients read as a
/// status instead of failing to decode a text body.
async fn respond(session: &mut Session, answer: Answer<'_>) -> Result<()> {
    let message = answer.message;
    let grpc = session
        .req_header()
        .headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    if grpc {
        let mut header = ResponseHeader::build(200, Some(6))?;
        header.insert_header("content-type", "application/grpc")?;
        header.insert_header("grpc-status", grpc_status(answer.status).to_string())?;
        header.insert_header("grpc-message", grpc_message(message.trim_end()))?;
        if let Some(seconds) = answer.retry_after {
            header.insert_header("retry-after", seconds.to_string())?;
        }
        if let Some(id) = answer.request_id {
            header.insert_header(REQUEST_ID, id.as_str())?;
        }
        session.set_keepalive(None);
        return session.write_response_header(Box::new(header), true).await;
    }
    let mut header = ResponseHeader::build(answer.status, Some(5))?;
    header.insert_header("content-type", "text/plain; charset=utf-8")?;
    header.insert_header("content-length", message.len().to_string())?;
    header.insert_header("cache-control", "no-store")?;
    if let Some(seconds) = answer.retry_after {
        header.insert_header("retry-after", seconds.to_string())?;
    }
    if let Some(id) = answer.request_id {
        header.insert_header(REQUEST_ID, id.as_str())?;
    }
    session.set_keepalive(None);
    session
        .write_response_header(Box::new(header), false)
        .await?;
    session
        .write_response_body(Some(Bytes::from_static(message.as_bytes())), true)
        .await?;
    Ok(())
}

/// The gRPC status code for a response the proxy gives itself with HTTP `status` (the gRPC
/// project's HTTP mapping, as Envoy applies it to its own replies).
fn grpc_status(status: u16) -> u8 {
    match status {
        400 => 13,                   // INTERNAL
        401 => 16,                   // UNAUTHENTICATED
        403 => 7,                    // PERMISSION_DENIED
        404 => 12,                   // UNIMPLEMENTED
        429 | 502 | 503 | 504 => 14, // UNAVAILABLE
        _ => 2,                      // UNKNOWN
    }
}

/// `message` as `grpc-message` carries it: percent-encoded outside printable ASCII, and `%`.
fn grpc_message(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for byte in message.bytes() {
        match byte {
            b' '..=b'~' if byte != b'%' => out.push(char::from(byte)),
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

/// The backend's hop-by-hop fields stay with its connection, as on the direct path: `Keep-Alive`
/// and every field `Connection` names (RFC 9110 §7.6.1). `Connection` itself is pingora's to
/// write for the client's connection. Not applied to a 101, whose `Upgrade` must reach the client.
fn strip_hop_by_hop(response: &mut ResponseHeader) {
    let named: Vec<String> = response
        .headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(|token| token.trim().to_ascii_lowercase())
        .filter(|token| !token.is_empty() && token != "close" && token != "keep-alive")
        .collect();
    for name in named {
        response.remove_header(name.as_str());
    }
    response.remove_header("keep-alive");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_proxys_own_answers_map_to_grpc_statuses_with_encoded_messages() {
        assert_eq!(grpc_status(503), 14);
        assert_eq!(grpc_status(429), 14);
        assert_eq!(grpc_status(504), 14);
        assert_eq!(grpc_status(400), 13);
        assert_eq!(grpc_status(408), 2);
        assert_eq!(
            grpc_message("no backend (none healthy)"),
            "no backend (none healthy)"
        );
        assert_eq!(grpc_message("100% é"), "100%25 %C3%A9");
    }
}
