//! Direct forwarding of the common request: an HTTP/1.1 `GET` or `HEAD` with no body, no upgrade
//! and nothing but `keep-alive` / `close` in `Connection` ([`is_plain_request`]). Such a request
//! is proxied here, from the `request_filter` hook, on pingora's HTTP/1 client sessions and
//! connection pool; every other request (bodies, upgrades, HTTP/2 downstream, HTTP/1.0) takes
//! pingora-proxy's general path.
//!
//! Why: pingora-proxy runs every request through its general state machine (two channels and a
//! select loop between the downstream and upstream halves, cache and module phases). On small
//! responses that machinery was about a fifth of the proxy's CPU per request, and a plain request
//! needs none of it: send the header, read the response, write it back in one flush.
//!
//! Invariants:
//! - the policy is the general path's, through the same functions: backend choice and the tried
//!   set, in-flight guards, passive ejection ([`Attempt`]), retries on another backend only while
//!   nothing has reached the client and only up to the fleet's `retries`, the 502/503/504 answers
//!   and their bodies, `X-Forwarded-For` / `X-Forwarded-Proto`;
//! - hop-by-hop request headers never reach the backend;
//! - an upstream connection is kept idle (`upstream_pool`) only after a complete response whose
//!   framing and `Connection` header allow reuse;
//! - a reused connection that fails before any response byte is retried once on a new connection
//!   to the same backend, and is not counted against it (a backend may close idle connections).
//! - once a response byte is sent, an upstream failure ends the downstream connection (the client
//!   sees a truncated response, never a second one).

use http::{header, Method, Version};
use pingora::http::RequestHeader;
use pingora::protocols::http::v1::client::HttpSession as UpstreamSession;
use pingora::protocols::http::HttpTask;
use pingora::proxy::Session;
use pingora::{Error, ErrorType, Result};

use crate::fleet::{Attempt, Fleet};
use crate::service::{peer_ip, ProxyService, RequestCtx, Routed};

/// Request headers that describe the client's connection, not the request (RFC 9110 §7.6.1).
/// `transfer-encoding` and `upgrade` never get here ([`is_plain_request`]).
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "http2-settings",
];

/// Whether the request can take the direct path: HTTP/1.1 downstream, `GET` or `HEAD`, no body
/// (no `Transfer-Encoding`, no `Content-Length` but a single `0`), no `Upgrade` or `Expect`, and
/// a `Connection` header (if any) that names no other header.
pub(crate) fn is_plain_request(session: &Session) -> bool {
    if session.as_http1().is_none() {
        return false;
    }
    let request = session.req_header();
    if request.version != Version::HTTP_11
        || (request.method != Method::GET && request.method != Method::HEAD)
    {
        return false;
    }
    let headers = &request.headers;
    if headers.contains_key(header::TRANSFER_ENCODING)
        || headers.contains_key(header::UPGRADE)
        || headers.contains_key(header::EXPECT)
    {
        return false;
    }
    let mut lengths = headers.get_all(header::CONTENT_LENGTH).iter();
    match (lengths.next(), lengths.next()) {
        (None, _) => {}
        (Some(length), None) if length.as_bytes() == b"0" => {}
        _ => return false,
    }
    headers.get_all(header::CONNECTION).iter().all(|value| {
        value.as_bytes().split(|b| *b == b',').all(|token| {
            let token = token.trim_ascii();
            token.is_empty()
                || token.eq_ignore_ascii_case(b"keep-alive")
                || token.eq_ignore_ascii_case(b"close")
        })
    })
}

/// How one attempt on a backend ended before the client saw anything.
enum Failed {
    /// Nothing reached the client: another backend may be tried. `reused`: on a connection
    /// taken from the idle ones (which the backend may have closed meanwhile).
    BeforeResponse { error: Box<Error>, reused: bool },
    /// The response had begun: the downstream connection must end.
    AfterResponse(Box<Error>),
}

impl ProxyService {
    /// Proxies a request that [`is_plain_request`] accepted. `Ok(true)`: a response was sent
    /// (the backend's, or our 502/503/504); `Err`: the response was cut short.
    pub(crate) async fn forward_plain(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        routed: Routed,
    ) -> Result<bool> {
        let fleet = self.plane.fleets.get(routed.fleet);
        // Set after a reused connection failed before any response: the same backend once more,
        // without counting an attempt (the backend did nothing wrong); from then on only new
        // connections, so this happens at most once.
        let mut stale_retry: Option<usize> = None;
        let mut reuse = true;
        loop {
            let index = match stale_retry.take() {
                Some(index) => index,
                None => match ctx.begin_attempt(fleet, routed.user) {
                    Ok(index) => index,
                    Err(status) => return self.answer_failure(session, ctx, status).await,
                },
            };
            let request = self.upstream_request(session)?;
            match self
                .exchange(session, ctx, fleet, index, request, reuse)
                .await
            {
                Ok(()) => return Ok(true),
                Err(Failed::AfterResponse(e)) => return Err(e),
                Err(Failed::BeforeResponse { reused: true, .. }) => {
                    reuse = false;
                    stale_retry = Some(index);
                }
                Err(Failed::BeforeResponse { error, .. }) => {
                    tracing::debug!(%error, backend = %fleet.backend(index).addr, "attempt failed");
                    if !ctx.attempt_failed(fleet, &error) {
                        return self.answer_failure(session, ctx, ctx.failure_status).await;
                    }
                }
            }
        }
    }

    /// The request as the backend gets it: the client's header without hop-by-hop fields, with
    /// the forwarding headers.
    fn upstream_request(&self, session: &Session) -> Result<Box<RequestHeader>> {
        let mut request = Box::new(session.req_header().clone());
        // Most requests carry none: look before paying for eight removals.
        if request
            .headers
            .keys()
            .any(|name| HOP_BY_HOP.contains(&name.as_str()))
        {
            for name in HOP_BY_HOP {
                request.remove_header(name);
            }
        }
        self.set_forwarding_headers(peer_ip(session), &mut request)?;
        Ok(request)
    }

    /// One attempt: take an idle connection (when `reuse`) or connect, send the header, read the
    /// response and stream it back; a complete response leaves the connection idle for the next.
    async fn exchange(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        fleet: &Fleet,
        index: usize,
        request: Box<RequestHeader>,
        reuse: bool,
    ) -> std::result::Result<(), Failed> {
        let backend = fleet.backend(index);
        let peer = &backend.peer;
        let now = self.plane.now_secs();
        let idle = if reuse { backend.idle.take(now) } else { None };
        let reused = idle.is_some();
        let before = |error: Box<Error>| Failed::BeforeResponse { error, reused };
        let stream = match idle {
            Some(stream) => stream,
            None => self.transport.new_stream(peer).await.map_err(before)?,
        };
        let mut upstream = UpstreamSession::new_with_options(stream, peer);
        upstream.read_timeout = peer.options.read_timeout;
        upstream.write_timeout = peer.options.write_timeout;
        upstream
            .write_request_header(request)
            .await
            .map_err(|e| before(e.into_up()))?;
        let header = read_final_header(&mut upstream).await.map_err(before)?;

        fleet.record(index, Attempt::Succeeded);
        ctx.response_started = true;
        let mut done = header.is_end();
        let mut tasks = Vec::with_capacity(2);
        tasks.push(header);
        loop {
            if !done {
                // The first time round, a small body has usually arrived with the header: both
                // go out in one write.
                let body = upstream
                    .read_response_task()
                    .await
                    .map_err(|e| Failed::AfterResponse(e.into_up()))?;
                done = body.is_end();
                tasks.push(body);
            }
            session
                .write_response_tasks(std::mem::take(&mut tasks))
                .await
                .map_err(|e| Failed::AfterResponse(e.into_down()))?;
            if done {
                break;
            }
        }
        // Honours the backend's `Connection: close` and any framing doubt (then: no reuse).
        upstream.respect_keepalive();
        if let Some(stream) = upstream.reuse().await {
            backend.idle.put(stream, now);
        }
        Ok(())
    }

    /// Answers a request no backend served (502/503/504 with the general path's bodies).
    async fn answer_failure(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        status: u16,
    ) -> Result<bool> {
        let (message, retry_after) = crate::service::failure_answer(status);
        ctx.local_status = Some(status);
        crate::service::respond(session, status, message, retry_after).await?;
        Ok(true)
    }
}

/// The response header, past any informational (1xx) responses. A `101` is an error: the request
/// asked for no upgrade.
async fn read_final_header(upstream: &mut UpstreamSession) -> Result<HttpTask> {
    loop {
        let task = upstream
            .read_response_task()
            .await
            .map_err(|e| e.into_up())?;
        let HttpTask::Header(header, _) = &task else {
            return Err(Error::explain(
                ErrorType::InvalidHTTPHeader,
                "backend sent a body before a response header",
            )
            .into_up());
        };
        match header.status.as_u16() {
            101 => {
                return Err(Error::explain(
                    ErrorType::InvalidHTTPHeader,
                    "backend switched protocols on a request that asked for no upgrade",
                )
                .into_up())
            }
            100..=199 => continue,
            _ => return Ok(task),
        }
    }
}
