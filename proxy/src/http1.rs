//! The front door of the proxy listener: every client connection arrives here first. The common
//! request — HTTP/1.1 `GET`, `HEAD`, `POST`, `PUT`, `PATCH`, `DELETE` or `OPTIONS`, without a body
//! or with a `Content-Length` one of at most [`DIRECT_BODY_LIMIT`], no upgrade or `Expect`,
//! nothing but `keep-alive` / `close` in `Connection`, an origin-form target — is parsed in place
//! (`httparse`), its body read whole (each read within `proxy.body_timeout_secs`, else 408, as
//! nginx's request buffering and `client_body_timeout`), and proxied on our own idle upstream
//! connections (`upstream_pool`), the response head rewritten and its body passed through
//! unchanged. Every other request (chunked or larger bodies among them), and HTTP/2 (TLS ALPN
//! `h2`, or the h2c preface when enabled), is handed to pingora-proxy's general path
//! (`service`) with the bytes already read put back in front (`Rewind`); once that request is
//! done the connection comes back here. So is a direct-path request admitted to a fleet whose
//! backends speak TLS or HTTP/2: it goes with its admission ([`take_direct_admission`]), so
//! that it is admitted once.
//!
//! Why: pingora's HTTP/1 sessions build an `http::HeaderMap` and several owned copies of each
//! head, and pingora-proxy runs each request through a state machine of channels and phases. On
//! small responses that machinery cost more CPU per request than the kernel's share of a loopback
//! exchange; a plain request needs a parse, a decision and two writes.
//!
//! Invariants:
//! - the policy is the general path's, through the same functions: admission (`DataPlane::admit`
//!   on the same header fields), backend choice, the tried set and in-flight guards
//!   ([`RequestCtx`]), passive ejection, retries on another backend only while nothing has reached
//!   the client and only up to the fleet's `retries` (a `POST` or `PATCH` only when no connection
//!   was made for it), the 408/502/503/504 answers and their bodies,
//!   the `Host` check, the normalised path and the fields a backend never gets
//!   ([`request_head`]), `X-Forwarded-For` / `X-Forwarded-Proto`, the request ID and `Via` on
//!   the request and its response ([`request_id`](crate::request_id)), and the meters;
//! - hop-by-hop fields never cross: not the client's to the backend, nor the backend's
//!   (`Connection`, `Keep-Alive`, the fields `Connection` names) to the client;
//! - a response is framed as the backend framed it (length, chunked, or until close); when its
//!   end is the backend closing, the client connection closes after it too;
//! - an upstream connection is kept idle only after a complete HTTP/1.1 response whose framing
//!   and `Connection` allow reuse and after which nothing more arrived, and only while its
//!   backend is Ready (a draining backend's connections close as its requests finish);
//! - a reused upstream connection that fails before any response byte is retried once on a new
//!   connection to the same backend, and is not counted against it;
//! - once a response byte is sent, a failure ends the client connection (the client sees a
//!   truncated response, never a second one);
//! - an idle client connection closes when the server shuts down or after
//!   `proxy.keepalive_timeout_secs` (60 s by default, pingora's keep-alive); a request head must
//!   be complete within that time of its first bytes, and within `proxy.max_header_bytes` + 8 KiB
//!   (else 431), on both paths: the general path is handed only complete heads;
//! - every write to the client waits at most `proxy.send_timeout_secs`.

use std::cell::Cell;
use std::io;
use std::mem::MaybeUninit;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use http::{Method, StatusCode};
use pingora::apps::{HttpServerApp, ServerApp};
use pingora::connectors::{ConnectorOptions, TransportConnector};
use pingora::protocols::http::ServerSession;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::TlsRef;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType, ALPN,
};
use pingora::proxy::HttpProxy;
use pingora::server::ShutdownWatch;
use pingora::{Error, ErrorType};
use pingora_timeout::fast_timeout::fast_timeout;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use crate::access_log::RequestLine;
use crate::chunked::ChunkedScanner;
use crate::dataplane::{Admitted, DataPlane, Rejection};
use crate::fields::HeaderFields;
use crate::fleet::{Attempt, BackendState, Fleet};
use crate::request_head::{self, HeadError};
use crate::request_id::{RequestId, REQUEST_ID};
use crate::service::{
    failure_answer, forwarded_for, forwarded_proto, Answer, ProxyService, RequestCtx,
    FORWARDED_FOR, FORWARDED_PROTO,
};

/// Room for the request line beyond `proxy.max_header_bytes` of fields: a request head not
/// complete within both is answered 431 (as nginx's 8 KiB `large_client_header_buffers`).
const REQUEST_LINE_LIMIT: usize = 8 * 1024;
/// Request bodies up to this size with a `Content-Length` are read whole and sent to the backend
/// with their head in one write (nginx buffers request bodies too: `proxy_request_buffering`);
/// a larger body, or a chunked one, takes the general path, which streams it.
const DIRECT_BODY_LIMIT: usize = 64 * 1024;
/// How long a refused connection's bytes are read and dropped after its answer (as nginx's
/// lingering close), and how many at most.
const LINGER: Duration = Duration::from_secs(1);
/// How long a connection accepted before a shutdown may take to send its first request.
const FIRST_REQUEST_AT_SHUTDOWN: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 64 * 1024;
/// Longest response head accepted from a backend.
const RESPONSE_HEAD_LIMIT: usize = 64 * 1024;
/// Header fields parsed in place (pingora's own limit); a head with more goes to the general path
/// (requests) or is an error (responses). The field slots are not initialised before parsing.
const MAX_FIELDS: usize = 256;
const READ_SIZE: usize = 16 * 1024;
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Request fields that describe the client's connection, not the request (RFC 9110 §7.6.1).
/// `transfer-encoding` and `upgrade` never reach the direct path.
const REQUEST_HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "http2-settings",
];

/// The request line a backend gets, and the ID it carries.
#[derive(Clone, Copy)]
struct UpstreamRequest<'a> {
    method: &'a str,
    target: UpstreamTarget<'a>,
    request_id: Option<&'a RequestId>,
}

/// The target a backend gets: the normalised path and the client's query, unchanged.
#[derive(Clone, Copy)]
struct UpstreamTarget<'a> {
    path: &'a str,
    query: Option<&'a str>,
}

/// Response fields that describe the backend's connection.
const RESPONSE_HOP_BY_HOP: [&str; 4] = ["connection", "keep-alive", "proxy-connection", "upgrade"];

/// The proxy listener's application: the direct path, and the general one behind it.
pub struct FrontDoor {
    general: Arc<HttpProxy<ProxyService>>,
    plane: Arc<DataPlane>,
    /// New upstream connections (idle ones wait per backend).
    transport: TransportConnector,
    h2c: bool,
    /// How long an idle client connection waits for its next request, and a request head may
    /// take once begun (`proxy.keepalive_timeout_secs`).
    keepalive: Duration,
    /// Most bytes of a request head: `proxy.max_header_bytes` and the request line.
    head_limit: usize,
}

impl FrontDoor {
    pub fn new(
        general: HttpProxy<ProxyService>,
        plane: Arc<DataPlane>,
        connector_options: ConnectorOptions,
        h2c: bool,
        keepalive: Duration,
    ) -> Self {
        FrontDoor {
            general: Arc::new(general),
            transport: TransportConnector::new(Some(connector_options)),
            h2c,
            keepalive,
            head_limit: plane.max_header_bytes() + REQUEST_LINE_LIMIT,
            plane,
        }
    }
}

#[async_trait]
impl ServerApp for FrontDoor {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        // Held for the connection's life: its place in the peer's connection count.
        let _slot = match peer_ip(&stream).map(|peer| self.plane.client_connections.open(peer)) {
            Some(Err(_refused)) => {
                self.refuse_connection(stream).await;
                return None;
            }
            Some(Ok(slot)) => slot,
            None => None,
        };
        if matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) {
            return ServerApp::process_new(&self.general, stream, shutdown).await;
        }
        self.serve(stream, shutdown).await;
        None
    }

    async fn cleanup(&self) {
        ServerApp::cleanup(&*self.general).await;
    }
}

/// One client connection and its buffers (kept for all its requests).
struct Connection {
    stream: Stream,
    peer_ip: Option<IpAddr>,
    /// Bytes from the client not yet used: the start of the next request head.
    input: Vec<u8>,
    /// The request as the backend gets it.
    upstream_request: Vec<u8>,
    /// Bytes from the backend.
    response: Vec<u8>,
    /// Bytes for the client (response head and the first body bytes, or our own answer).
    output: Vec<u8>,
    /// Field lines the proxy adds to the backend's response head (`X-Request-Id`, `Via`).
    response_fields: ResponseFields,
    /// When the first bytes of the request head being read arrived (unix seconds): the whole
    /// head must arrive within the keep-alive timeout of them.
    head_started_secs: u64,
}

/// What the front door makes of the bytes at the start of `input`.
enum Parsed {
    /// Not a whole request head yet.
    Partial,
    /// Not a whole request head within the head limit.
    TooLarge,
    /// The general path takes this request.
    General,
    /// The general path takes this request, admitted here to a fleet only it can reach.
    GeneralAdmitted(Admitted),
    /// Answered here (`head_len` bytes of `input` were the request).
    Rejected {
        head_len: usize,
        rejection: Rejection,
        head_only: bool,
        noted: Noted,
    },
    /// To be forwarded; `upstream_request` holds its head, and its body (`request.body_len`
    /// bytes) follows the head in `input`.
    Admitted {
        head_len: usize,
        admitted: Admitted,
        request: DirectRequest,
        client_close: bool,
        noted: Noted,
    },
}

tokio::task_local! {
    /// The admission of the request the direct path is handing to the general path, if it made
    /// one: admission has effects (rate limits, the user's features), so it happens once.
    static DIRECT_ADMISSION: Cell<Option<Admitted>>;
}

/// The admission the direct path made for the request the general path is now serving (taken:
/// a second call returns `None`).
pub(crate) fn take_direct_admission() -> Option<Admitted> {
    DIRECT_ADMISSION.try_with(Cell::take).ok().flatten()
}

/// What the direct path needs to know of an admitted request.
#[derive(Clone, Copy, Debug)]
struct DirectRequest {
    /// A `HEAD`: the response has no body.
    head_only: bool,
    /// The method may be sent again after a failure (RFC 9110 §9.2.2): `POST` and `PATCH` are
    /// never sent to a second backend once a byte of them went to one.
    idempotent: bool,
    /// Bytes of `Content-Length` body (at most [`DIRECT_BODY_LIMIT`]).
    body_len: usize,
}

/// What a parsed head leaves for the rest of its request: its ID, and its access-log line.
struct Noted {
    request_id: Option<RequestId>,
    line: Option<Box<RequestLine>>,
}

impl Noted {
    fn into_ctx(self, peer_ip: Option<IpAddr>) -> RequestCtx {
        let mut ctx = RequestCtx::new();
        ctx.peer_ip = peer_ip;
        ctx.request_id = self.request_id;
        ctx.request_line = self.line;
        ctx
    }
}

/// How one attempt on a backend ended, when it did not end well.
enum Failed {
    /// Nothing reached the client: another backend may be tried. `stale`: a connection taken
    /// from the idle ones failed before any response byte, other than by timing out (the
    /// backend closed it meanwhile; not the backend's fault). A timeout, or a bad response, on a
    /// reused connection is the backend's. `request_sent`: a byte of the request may have
    /// reached the backend (false only when no connection was made).
    BeforeResponse {
        error: Box<Error>,
        stale: bool,
        request_sent: bool,
    },
    /// The response had begun: the client connection must end.
    AfterResponse { error: Box<Error>, sent: Sent },
}

/// A response on its way to the client.
#[derive(Clone, Copy)]
struct Sent {
    status: u16,
    body_bytes: u64,
    /// The client connection may carry another request.
    keep_client: bool,
}

impl FrontDoor {
    async fn serve(self: &Arc<Self>, stream: Stream, shutdown: &ShutdownWatch) {
        let mut shutdown = shutdown.clone();
        let h2c = self.h2c && stream.get_ssl_digest().is_none();
        let mut conn = Connection {
            peer_ip: peer_ip(&stream),
            stream,
            input: Vec::with_capacity(4096),
            upstream_request: Vec::with_capacity(1024),
            response: Vec::with_capacity(READ_SIZE),
            output: Vec::with_capacity(1024),
            response_fields: ResponseFields::default(),
            head_started_secs: 0,
        };
        let mut first = true;
        // Requests this connection has carried (`proxy.keepalive_requests`).
        let mut served: u32 = 0;
        loop {
            let mut need_bytes = conn.input.is_empty();
            if !need_bytes {
                // The start of a pipelined request is already here.
                conn.head_started_secs = self.plane.now_secs();
            }
            let parsed = loop {
                if need_bytes
                    && !conn
                        .read_request_bytes(&mut shutdown, &self.plane, self.keepalive, first)
                        .await
                {
                    return;
                }
                need_bytes = true;
                if first && h2c && conn.input.starts_with(&H2_PREFACE[..4]) {
                    if conn.input.len() < H2_PREFACE.len() && H2_PREFACE.starts_with(&conn.input) {
                        continue;
                    }
                    if conn.input.starts_with(H2_PREFACE) {
                        let stream = Box::new(Rewind::new(conn.stream, conn.input));
                        ServerApp::process_new(&self.general, stream, &shutdown).await;
                        return;
                    }
                }
                match self.parse(
                    &conn.input,
                    conn.peer_ip,
                    &mut conn.upstream_request,
                    &mut conn.response_fields,
                ) {
                    Parsed::Partial if conn.input.len() < self.head_limit => continue,
                    Parsed::Partial => break Parsed::TooLarge,
                    parsed => break parsed,
                }
            };
            first = false;
            match parsed {
                Parsed::TooLarge => {
                    // Never handed over: every head pingora parses is complete, so the
                    // whole-head deadline above holds on both paths.
                    let rejection = Rejection::early(431, "request header fields too large\n");
                    // No head to take an ID from: a new one.
                    let noted = Noted {
                        request_id: self
                            .plane
                            .added_fields
                            .request_id(false, std::iter::empty()),
                        line: None,
                    };
                    let mut ctx = noted.into_ctx(conn.peer_ip);
                    ctx.rejected(&self.plane, &rejection);
                    let answer = Answer {
                        status: rejection.status,
                        message: rejection.message,
                        retry_after: None,
                        request_id: ctx.request_id.as_ref(),
                    };
                    conn.answer(self.plane.client_timeouts.send, answer, false)
                        .await;
                    ctx.finish(&self.plane, None, 0, 0);
                    return;
                }
                Parsed::Partial | Parsed::General | Parsed::GeneralAdmitted(_) => {
                    let admitted = match parsed {
                        Parsed::GeneralAdmitted(admitted) => Some(admitted),
                        _ => None,
                    };
                    served = served.saturating_add(1);
                    let last = served >= self.plane.keepalive_requests();
                    match self.hand_over(conn, &shutdown, last, admitted).await {
                        Some(back) => conn = back,
                        None => return,
                    }
                }
                Parsed::Rejected {
                    head_len,
                    rejection,
                    head_only,
                    noted,
                } => {
                    conn.input.drain(..head_len);
                    let mut ctx = noted.into_ctx(conn.peer_ip);
                    ctx.rejected(&self.plane, &rejection);
                    let answer = Answer {
                        status: rejection.status,
                        message: rejection.message,
                        retry_after: rejection.retry_after_secs,
                        request_id: ctx.request_id.as_ref(),
                    };
                    conn.answer(self.plane.client_timeouts.send, answer, head_only)
                        .await;
                    ctx.finish(&self.plane, None, 0, 0);
                    return;
                }
                Parsed::Admitted {
                    head_len,
                    admitted,
                    request,
                    client_close,
                    noted,
                } => {
                    conn.input.drain(..head_len);
                    served = served.saturating_add(1);
                    let close = client_close
                        || *shutdown.borrow()
                        || served >= self.plane.keepalive_requests();
                    let ctx = noted.into_ctx(conn.peer_ip);
                    if !self
                        .forward(&mut conn, ctx, &admitted, request, close)
                        .await
                    {
                        return;
                    }
                    // The body stayed in place for retries.
                    conn.input.drain(..request.body_len);
                }
            }
        }
    }

    /// Reads a request head at the start of `input` and, when it is one for the direct path,
    /// admits it and writes the upstream request.
    fn parse(
        &self,
        input: &[u8],
        peer_ip: Option<IpAddr>,
        upstream: &mut Vec<u8>,
        response_fields: &mut ResponseFields,
    ) -> Parsed {
        let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_FIELDS];
        let mut request = httparse::Request::new(&mut []);
        let head_len = match request.parse_with_uninit_headers(input, &mut fields) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Parsed::Partial,
            // Malformed, or more fields than we parse here: the general path answers.
            Err(_) => return Parsed::General,
        };
        if request.version != Some(1) {
            return Parsed::General;
        }
        let method = match request.method {
            Some("GET") => Method::GET,
            Some("HEAD") => Method::HEAD,
            Some("POST") => Method::POST,
            Some("PUT") => Method::PUT,
            Some("PATCH") => Method::PATCH,
            Some("DELETE") => Method::DELETE,
            Some("OPTIONS") => Method::OPTIONS,
            _ => return Parsed::General,
        };
        let Some(target) = request.path else {
            return Parsed::General;
        };
        // Origin form in visible ASCII; anything else is the general path's to judge.
        if !target.starts_with('/') || !target.bytes().all(|b| (0x21..0x7f).contains(&b)) {
            return Parsed::General;
        }
        let headers = HeaderFields::new(request.headers);
        let mut client_close = false;
        let mut lengths = 0;
        let mut body_len = 0;
        for field in headers.iter() {
            let name = field.name;
            if name.eq_ignore_ascii_case("transfer-encoding")
                || name.eq_ignore_ascii_case("upgrade")
                || name.eq_ignore_ascii_case("expect")
            {
                return Parsed::General;
            }
            if name.eq_ignore_ascii_case("content-length") {
                lengths += 1;
                // One length of plain digits, small enough to read whole; anything else
                // (lists, signs, large bodies) is the general path's to judge or stream.
                match direct_body_len(field.value) {
                    Some(len) if lengths == 1 => body_len = len,
                    _ => return Parsed::General,
                }
            } else if name.eq_ignore_ascii_case("connection") {
                for token in field.value.split(|b| *b == b',') {
                    let token = token.trim_ascii();
                    if token.eq_ignore_ascii_case(b"close") {
                        client_close = true;
                    } else if !token.is_empty() && !token.eq_ignore_ascii_case(b"keep-alive") {
                        // It names fields to drop: the general path does that.
                        return Parsed::General;
                    }
                }
            }
        }
        let head_only = method == Method::HEAD;
        let request_id = self.plane.added_fields.request_id(
            self.plane.trusts(peer_ip),
            headers
                .iter()
                .filter(|f| f.name.eq_ignore_ascii_case(REQUEST_ID))
                .map(|f| f.value),
        );
        let noted = Noted {
            request_id,
            line: self
                .plane
                .access_log
                .is_some()
                .then(|| Box::new(request_line(method.as_str(), target, &headers))),
        };
        let refused = |e: HeadError, noted| Parsed::Rejected {
            head_len,
            rejection: Rejection::early(400, e.message()),
            head_only,
            noted,
        };
        if let Err(e) = request_head::check_host(request_head::Version::Http11, None, &headers) {
            return refused(e, noted);
        }
        let (path, query) = match target.split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (target, None),
        };
        let path = match request_head::normalize_path(path) {
            Ok(path) => path,
            Err(e) => return refused(e, noted),
        };
        match self.plane.admit(&method, &path, &headers, peer_ip) {
            Err(rejection) => Parsed::Rejected {
                head_len,
                rejection,
                head_only,
                noted,
            },
            Ok(admitted) if self.plane.fleets.get(admitted.fleet).general_path_only() => {
                Parsed::GeneralAdmitted(admitted)
            }
            Ok(admitted) => {
                let request = UpstreamRequest {
                    method: method.as_str(),
                    target: UpstreamTarget { path: &path, query },
                    request_id: noted.request_id.as_ref(),
                };
                self.write_upstream_request(upstream, response_fields, request, headers, peer_ip);
                Parsed::Admitted {
                    head_len,
                    admitted,
                    request: DirectRequest {
                        head_only,
                        idempotent: method.is_idempotent(),
                        body_len,
                    },
                    client_close,
                    noted,
                }
            }
        }
    }

    /// The request as the backend gets it: the normalised target, the client's fields without
    /// hop-by-hop ones and those the forwarding policy drops, with the forwarding fields, the
    /// request ID and `Via`; and the fields its response will get.
    fn write_upstream_request(
        &self,
        out: &mut Vec<u8>,
        response_fields: &mut ResponseFields,
        request: UpstreamRequest<'_>,
        headers: HeaderFields<'_>,
        peer_ip: Option<IpAddr>,
    ) {
        let UpstreamRequest {
            method,
            target,
            request_id,
        } = request;
        out.clear();
        out.extend_from_slice(method.as_bytes());
        out.push(b' ');
        out.extend_from_slice(target.path.as_bytes());
        if let Some(query) = target.query {
            out.push(b'?');
            out.extend_from_slice(query.as_bytes());
        }
        out.extend_from_slice(b" HTTP/1.1\r\n");
        let trusted = self.plane.trusts(peer_ip);
        let added = &self.plane.added_fields;
        for field in headers.iter() {
            let name = field.name;
            if REQUEST_HOP_BY_HOP
                .iter()
                .any(|hop| name.eq_ignore_ascii_case(hop))
                || self.plane.forwarding.drops(name, trusted)
                || (request_id.is_some() && name.eq_ignore_ascii_case(REQUEST_ID))
            {
                continue;
            }
            push_field(out, name.as_bytes(), field.value);
        }
        response_fields.lines.clear();
        response_fields.replaces_request_id = request_id.is_some();
        if let Some(id) = request_id {
            push_field(out, REQUEST_ID.as_bytes(), id.as_bytes());
            push_field(
                &mut response_fields.lines,
                REQUEST_ID.as_bytes(),
                id.as_bytes(),
            );
        }
        if let Some(via) = added.via() {
            for target in [&mut *out, &mut response_fields.lines] {
                target.extend_from_slice(b"via: 1.1 ");
                target.extend_from_slice(via.as_bytes());
                target.extend_from_slice(b"\r\n");
            }
        }
        let forwarded = forwarded_for(&self.plane, peer_ip, &headers);
        if !forwarded.is_empty() {
            push_field(out, FORWARDED_FOR.as_bytes(), forwarded.as_bytes());
        }
        push_field(
            out,
            FORWARDED_PROTO.as_bytes(),
            forwarded_proto(&self.plane).as_bytes(),
        );
        out.extend_from_slice(b"\r\n");
    }

    /// Answers a connection beyond its peer's `proxy.client_limits.connections` with the limit's
    /// status and closes it (an HTTP/2 one is closed without an answer). The client's first
    /// bytes are read and dropped for a moment after the answer, so that closing with them
    /// unread does not reset the connection before the client has read it.
    async fn refuse_connection(&self, mut stream: Stream) {
        if matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) {
            return;
        }
        let status = self.plane.client_limit_status();
        let reason = StatusCode::from_u16(status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("");
        let message = "too many connections from this client address\n";
        let answer = format!(
            "HTTP/1.1 {status} {reason}\r\ncontent-type: text/plain; charset=utf-8\r\n\
             content-length: {}\r\ncache-control: no-store\r\nretry-after: 1\r\n\
             connection: close\r\n\r\n{message}",
            message.len()
        );
        let send = self.plane.client_timeouts.send;
        if write_all(&mut stream, answer.as_bytes(), Some(send))
            .await
            .is_err()
        {
            return;
        }
        let _ = fast_timeout(send.min(LINGER), AsyncWriteExt::shutdown(&mut stream)).await;
        let mut sink = Vec::with_capacity(READ_SIZE);
        let deadline = tokio::time::Instant::now() + LINGER;
        while sink.len() < LINGER_BYTES {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match fast_timeout(left, stream.read_buf(&mut sink)).await {
                Ok(Ok(read)) if read > 0 => {}
                _ => break,
            }
        }
    }

    /// Gives the connection, with what was read of it, to the general path for one request;
    /// returns it (and what that path left unread) when it may carry another (`last`: it may
    /// not). `admitted`: the request was admitted here already.
    async fn hand_over(
        &self,
        mut conn: Connection,
        shutdown: &ShutdownWatch,
        last: bool,
        admitted: Option<Admitted>,
    ) -> Option<Connection> {
        let input = std::mem::take(&mut conn.input);
        let mut session = ServerSession::new_http1(Box::new(Rewind::new(conn.stream, input)));
        session.set_keepalive(if *shutdown.borrow() || last {
            None
        } else {
            Some(self.keepalive.as_secs())
        });
        let reused = DIRECT_ADMISSION
            .scope(
                Cell::new(admitted),
                self.general.process_new_http(session, shutdown),
            )
            .await?;
        let (stream, _settings) = reused.consume();
        let rewind = stream.into_any().downcast::<Rewind>().ok()?;
        (conn.stream, conn.input) = rewind.into_parts();
        Some(conn)
    }

    /// Reads the body of the admitted request (at the start of `conn.input`, where it stays) and
    /// forwards it with its head in `conn.upstream_request`, with retries; answers 408 when the body does
    /// not arrive in time, and 502/503/504 when no backend served it. Returns whether the
    /// client connection may carry another request.
    async fn forward(
        &self,
        conn: &mut Connection,
        mut ctx: RequestCtx,
        admitted: &Admitted,
        request: DirectRequest,
        close: bool,
    ) -> bool {
        let routed = ctx.admitted(admitted);
        let fleet = self.plane.fleets.get(routed.fleet);
        let head_only = request.head_only;
        let body_len = request.body_len;
        if body_len > 0 {
            if let Err(timed_out) = conn
                .read_body(body_len, self.plane.client_timeouts.body)
                .await
            {
                if timed_out {
                    ctx.local_status = Some(408);
                    let (message, retry_after) = failure_answer(408);
                    let answer = Answer {
                        status: 408,
                        message,
                        retry_after,
                        request_id: ctx.request_id.as_ref(),
                    };
                    conn.answer(self.plane.client_timeouts.send, answer, head_only)
                        .await;
                }
                ctx.finish(&self.plane, None, 0, 0);
                return false;
            }
        }
        let bytes_in = body_len as u64;
        // Set after a reused connection failed before any response: the same backend once more,
        // without counting an attempt (the backend did nothing wrong); from then on only new
        // connections, so this happens at most once.
        let mut stale_retry = false;
        let mut reuse = true;
        let failure = loop {
            if !std::mem::take(&mut stale_retry) {
                if let Err(status) = ctx.begin_attempt(fleet, routed.user) {
                    break status;
                }
            }
            let Some(backend) = ctx.backend() else {
                break 503;
            };
            let result = self
                .exchange(conn, backend, fleet, reuse, request, close)
                .await;
            match result {
                Ok(sent) => {
                    ctx.response_started = true;
                    ctx.finish(&self.plane, Some(sent.status), bytes_in, sent.body_bytes);
                    return sent.keep_client;
                }
                Err(Failed::AfterResponse { error, sent }) => {
                    tracing::debug!(%error, "response cut short");
                    ctx.response_started = true;
                    ctx.finish(&self.plane, Some(sent.status), bytes_in, sent.body_bytes);
                    return false;
                }
                Err(Failed::BeforeResponse {
                    stale: true,
                    request_sent,
                    error,
                }) => {
                    if request_sent && !request.idempotent {
                        // As nginx: a POST that may have reached the backend is not sent again,
                        // and a connection the backend closed while idle is not its failure.
                        tracing::debug!(%error, backend = %backend.addr, "non-idempotent request on a closed idle connection");
                        break 502;
                    }
                    reuse = false;
                    stale_retry = true;
                }
                Err(Failed::BeforeResponse {
                    error,
                    request_sent,
                    ..
                }) => {
                    tracing::debug!(%error, backend = %backend.addr, "attempt failed");
                    let attempts_left = ctx.attempt_failed(fleet, &error);
                    if !attempts_left || (request_sent && !request.idempotent) {
                        break ctx.failure_status;
                    }
                }
            }
        };
        ctx.local_status = Some(failure);
        let (message, retry_after) = failure_answer(failure);
        let answer = Answer {
            status: failure,
            message,
            retry_after,
            request_id: ctx.request_id.as_ref(),
        };
        conn.answer(self.plane.client_timeouts.send, answer, head_only)
            .await;
        ctx.finish(&self.plane, None, bytes_in, 0);
        false
    }

    /// One attempt on `backend`: take an idle connection (when `reuse`) or connect, send the
    /// request, read the response head and pass the response to the client; a complete response
    /// leaves the connection idle for the next request (while the backend is Ready). Once the
    /// result is `Ok` or `AfterResponse`, the response has begun.
    async fn exchange(
        &self,
        conn: &mut Connection,
        backend: &BackendState,
        fleet: &Fleet,
        reuse: bool,
        request: DirectRequest,
        close: bool,
    ) -> Result<Sent, Failed> {
        let head_only = request.head_only;
        let peer = &backend.peer;
        let read_timeout = peer.options.read_timeout;
        let send_timeout = self.plane.client_timeouts.send;
        // Idle connections age in real time (the fleet's clock), not on the node's clock.
        let now = fleet.now_ms();
        let idle = if reuse { backend.idle.take(now) } else { None };
        let reused = idle.is_some();
        // Before any response byte: stale when a reused connection failed other than by time.
        let before_any = |error: Box<Error>| Failed::BeforeResponse {
            stale: reused
                && !matches!(
                    error.etype(),
                    ErrorType::ReadTimedout | ErrorType::WriteTimedout
                ),
            error,
            request_sent: true,
        };
        let backend_fault = |error: Box<Error>| Failed::BeforeResponse {
            error,
            stale: false,
            request_sent: true,
        };
        let mut upstream =
            match idle {
                Some(stream) => stream,
                None => self.transport.new_stream(peer).await.map_err(|error| {
                    Failed::BeforeResponse {
                        error,
                        stale: false,
                        request_sent: false,
                    }
                })?,
            };
        // Head and body in one vectored write: the body is not copied behind the head.
        write_all_vectored(
            &mut upstream,
            [&conn.upstream_request, &conn.input[..request.body_len]],
            peer.options.write_timeout,
        )
        .await
        .map_err(before_any)?;

        conn.response.clear();
        let head = loop {
            match final_response_head(
                &mut conn.response,
                head_only,
                close,
                &conn.response_fields,
                &mut conn.output,
            )
            .map_err(backend_fault)?
            {
                Some(head) => break head,
                None if conn.response.len() > RESPONSE_HEAD_LIMIT => {
                    return Err(backend_fault(invalid("backend response head too large")));
                }
                None => {
                    let nothing_yet = conn.response.is_empty();
                    let failed = |error| {
                        if nothing_yet {
                            before_any(error)
                        } else {
                            backend_fault(error)
                        }
                    };
                    let read = read_some(&mut upstream, &mut conn.response, read_timeout)
                        .await
                        .map_err(failed)?;
                    if read == 0 {
                        return Err(failed(Error::explain(
                            ErrorType::ConnectionClosed,
                            "backend closed the connection before responding",
                        )));
                    }
                }
            }
        };

        let mut sent = Sent {
            status: head.status,
            body_bytes: 0,
            keep_client: !head.close_client,
        };
        let mut framing = head.framing;
        let mut reusable = head.reusable;
        // The body bytes that came with the head go out in the same write; a framing error in
        // them is found before anything reaches the client (a 502, and the backend's failure).
        let arrived = &conn.response[head.len..];
        let (take, mut done) = framing.advance(arrived).map_err(backend_fault)?;
        fleet.record(backend, Attempt::Succeeded);
        if take < arrived.len() {
            // More than the response: the backend is out of step.
            reusable = false;
        }
        conn.output.extend_from_slice(&arrived[..take]);
        sent.body_bytes += take as u64;
        let after = |error: Box<Error>| Failed::AfterResponse { error, sent };
        write_all(&mut conn.stream, &conn.output, Some(send_timeout))
            .await
            .map_err(after)?;
        while !done {
            conn.response.clear();
            let read = read_some(&mut upstream, &mut conn.response, read_timeout)
                .await
                .map_err(|error| Failed::AfterResponse { error, sent })?;
            let (take, finished) = if read == 0 {
                framing
                    .at_close()
                    .map_err(|error| Failed::AfterResponse { error, sent })?;
                (0, true)
            } else {
                framing
                    .advance(&conn.response)
                    .map_err(|error| Failed::AfterResponse { error, sent })?
            };
            if take < conn.response.len() {
                reusable = false;
            }
            done = finished;
            if take > 0 {
                sent.body_bytes += take as u64;
                write_all(&mut conn.stream, &conn.response[..take], Some(send_timeout))
                    .await
                    .map_err(|error| Failed::AfterResponse { error, sent })?;
            }
        }
        // A draining backend gets no more requests: its connection closes instead.
        if reusable && backend.is_ready() {
            backend.idle.put(upstream, fleet.now_ms());
        }
        Ok(sent)
    }
}

impl Connection {
    /// Reads more of a request into `input` (`plane` tells the time). Waiting for a new request
    /// (nothing buffered) ends when the server shuts down or after `keepalive`; a head begun must
    /// be complete within `keepalive`. Returns false when the connection is done: closed, broken,
    /// idle too long, too slow to send a head, or shutting down.
    ///
    /// A connection's `first` request is not cut short by a shutdown: the client connected while
    /// the listener was open (during a binary upgrade, to this process rather than the new one)
    /// and sends its request next; it gets [`FIRST_REQUEST_AT_SHUTDOWN`] to arrive.
    async fn read_request_bytes(
        &mut self,
        shutdown: &mut ShutdownWatch,
        plane: &DataPlane,
        keepalive: Duration,
        first: bool,
    ) -> bool {
        if self.input.capacity() - self.input.len() < 1024 {
            self.input.reserve(4096);
        }
        let waiting_for_new_request = self.input.is_empty();
        let stopping = *shutdown.borrow();
        if waiting_for_new_request && stopping && !first {
            return false;
        }
        let limit = if !waiting_for_new_request {
            // The rest of a head shares the deadline of its first bytes (no trickling forever).
            let spent = plane.now_secs().saturating_sub(self.head_started_secs);
            match keepalive.as_secs().checked_sub(spent) {
                Some(left) if left > 0 => Duration::from_secs(left),
                _ => return false,
            }
        } else if stopping {
            keepalive.min(FIRST_REQUEST_AT_SHUTDOWN)
        } else {
            keepalive
        };
        let read = fast_timeout(limit, self.stream.read_buf(&mut self.input));
        let result = if waiting_for_new_request && !stopping {
            let raced = tokio::select! {
                biased;
                result = read => Some(result),
                _ = shutdown.changed() => None,
            };
            match raced {
                Some(result) => result,
                None if first => {
                    let limit = keepalive.min(FIRST_REQUEST_AT_SHUTDOWN);
                    fast_timeout(limit, self.stream.read_buf(&mut self.input)).await
                }
                None => return false,
            }
        } else {
            read.await
        };
        let more = matches!(result, Ok(Ok(read)) if read > 0);
        if more && waiting_for_new_request {
            self.head_started_secs = plane.now_secs();
        }
        more
    }

    /// Reads until `input` holds `len` bytes of request body, each read waiting at most
    /// `timeout` (nginx's `client_body_timeout`). `Err(true)`: the client stalled; `Err(false)`:
    /// it closed the connection or the read failed.
    async fn read_body(&mut self, len: usize, timeout: Duration) -> Result<(), bool> {
        while self.input.len() < len {
            self.input.reserve(len - self.input.len());
            match fast_timeout(timeout, self.stream.read_buf(&mut self.input)).await {
                Ok(Ok(read)) if read > 0 => {}
                Ok(_) => return Err(false),
                Err(_) => return Err(true),
            }
        }
        Ok(())
    }

    /// Sends a response of our own (then the connection closes).
    async fn answer(&mut self, send_timeout: Duration, answer: Answer<'_>, head_only: bool) {
        use std::fmt::Write as _;
        let Answer {
            status,
            message,
            retry_after,
            request_id,
        } = answer;
        let reason = StatusCode::from_u16(status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("");
        let mut head = format!(
            "HTTP/1.1 {status} {reason}\r\ncontent-type: text/plain; charset=utf-8\r\n\
             content-length: {}\r\ncache-control: no-store\r\n",
            message.len()
        );
        if let Some(seconds) = retry_after {
            let _ = write!(head, "retry-after: {seconds}\r\n");
        }
        if let Some(id) = request_id {
            let _ = write!(head, "{REQUEST_ID}: {}\r\n", id.as_str());
        }
        head.push_str("connection: close\r\n\r\n");
        self.output.clear();
        self.output.extend_from_slice(head.as_bytes());
        if !head_only {
            self.output.extend_from_slice(message.as_bytes());
        }
        if let Err(error) = write_all(&mut self.stream, &self.output, Some(send_timeout)).await {
            tracing::debug!(%error, "could not send our answer");
        }
    }
}

/// How the end of a response body is found.
enum Framing {
    /// No body (HEAD, 204, 304) or no bytes left of a `Content-Length` body.
    Length(u64),
    Chunked(ChunkedScanner),
    /// The body ends when the backend closes the connection.
    UntilClose,
}

impl Framing {
    /// Takes the body's share of `bytes`: how many belong to the body, and whether it is
    /// complete after them.
    fn advance(&mut self, bytes: &[u8]) -> Result<(usize, bool), Box<Error>> {
        match self {
            Framing::Length(left) => {
                let take = (*left).min(bytes.len() as u64);
                *left -= take;
                Ok((take as usize, *left == 0))
            }
            Framing::Chunked(scanner) => match scanner.feed(bytes) {
                Ok(Some(end)) => Ok((end, true)),
                Ok(None) => Ok((bytes.len(), false)),
                Err(e) => Err(invalid(e.0)),
            },
            Framing::UntilClose => Ok((bytes.len(), false)),
        }
    }

    /// The backend closed the connection: the end of a body framed by the close, else an error.
    fn at_close(&self) -> Result<(), Box<Error>> {
        match self {
            Framing::UntilClose => Ok(()),
            _ => Err(Error::explain(
                ErrorType::ConnectionClosed,
                "backend closed the connection in the middle of the body",
            )),
        }
    }
}

/// A parsed response head; the client's version of it is in the output buffer.
struct ResponseHead {
    len: usize,
    status: u16,
    /// 1xx: skipped (the request asked for nothing the client would wait on).
    informational: bool,
    framing: Framing,
    /// The upstream connection may carry another request after this response.
    reusable: bool,
    /// The client connection ends after this response.
    close_client: bool,
}

/// The final response head at the start of `response`, past any informational (1xx) heads, which
/// are dropped from `response`; the client's version of it is in `out`. `None`: not complete yet.
fn final_response_head(
    response: &mut Vec<u8>,
    head_only: bool,
    close: bool,
    added: &ResponseFields,
    out: &mut Vec<u8>,
) -> Result<Option<ResponseHead>, Box<Error>> {
    loop {
        match parse_response_head(response, head_only, close, added, out)? {
            Some(head) if head.informational => {
                response.drain(..head.len);
            }
            head => return Ok(head),
        }
    }
}

/// Parses a response head at the start of `bytes` and writes the client's version of it, with
/// the fields in `added`, to `out`. `None`: not complete yet.
fn parse_response_head(
    bytes: &[u8],
    head_only: bool,
    close: bool,
    added: &ResponseFields,
    out: &mut Vec<u8>,
) -> Result<Option<ResponseHead>, Box<Error>> {
    let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_FIELDS];
    let mut response = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut response,
        bytes,
        &mut fields,
    );
    let len = match parsed {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => {
            return Err(Error::explain(
                ErrorType::InvalidHTTPHeader,
                format!("backend sent a malformed response head: {e}"),
            ))
        }
    };
    let status = response.code.unwrap_or(0);
    if !(100..=599).contains(&status) {
        return Err(invalid("backend sent a status code outside 100-599"));
    }
    if status == 101 {
        return Err(invalid(
            "backend switched protocols on a request that asked for no upgrade",
        ));
    }
    if (100..200).contains(&status) {
        return Ok(Some(ResponseHead {
            len,
            status,
            informational: true,
            framing: Framing::Length(0),
            reusable: false,
            close_client: false,
        }));
    }
    let fields = &*response.headers;
    let mut backend_close = response.version != Some(1);
    let mut chunked = None;
    let mut length: Option<u64> = None;
    for field in fields {
        let name = field.name;
        if name.eq_ignore_ascii_case("transfer-encoding") {
            // The last coding of the last field decides (RFC 9112 §6.3).
            let last = field
                .value
                .rsplit(|b| *b == b',')
                .map(<[u8]>::trim_ascii)
                .find(|t| !t.is_empty());
            chunked = Some(last.is_some_and(|t| t.eq_ignore_ascii_case(b"chunked")));
        } else if name.eq_ignore_ascii_case("content-length") {
            let value = std::str::from_utf8(field.value.trim_ascii())
                .ok()
                .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or_else(|| invalid("backend sent an invalid Content-Length"))?;
            if length.is_some_and(|known| known != value) {
                return Err(invalid("backend sent conflicting Content-Length fields"));
            }
            length = Some(value);
        } else if name.eq_ignore_ascii_case("connection")
            && tokens(field.value).any(|t| t.eq_ignore_ascii_case(b"close"))
        {
            backend_close = true;
        }
    }
    if chunked.is_some() && length.is_some() {
        // RFC 9112 §6.3: a sign of response splitting or smuggling, handled as an error.
        return Err(invalid(
            "backend sent both Transfer-Encoding and Content-Length",
        ));
    }
    let framing = if head_only || status == 204 || status == 304 {
        Framing::Length(0)
    } else {
        match (chunked, length) {
            (Some(true), _) => Framing::Chunked(ChunkedScanner::new()),
            (Some(false), _) => Framing::UntilClose,
            (None, Some(length)) => Framing::Length(length),
            (None, None) => Framing::UntilClose,
        }
    };
    let until_close = matches!(framing, Framing::UntilClose);
    let close_client = close || until_close;

    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(response.reason.unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for field in fields {
        let name = field.name;
        let hop_by_hop = RESPONSE_HOP_BY_HOP
            .iter()
            .any(|hop| name.eq_ignore_ascii_case(hop))
            || nominated_by_connection(fields, name);
        let replaced = added.replaces_request_id && name.eq_ignore_ascii_case(REQUEST_ID);
        if !hop_by_hop && !replaced {
            push_field(out, name.as_bytes(), field.value);
        }
    }
    out.extend_from_slice(&added.lines);
    if close_client {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    Ok(Some(ResponseHead {
        len,
        status,
        informational: false,
        framing,
        reusable: !backend_close && !until_close,
        close_client,
    }))
}

/// The comma-separated tokens of a field value, trimmed, empty ones left out.
/// The body length of a `Content-Length` value the direct path reads whole: plain digits, at
/// most [`DIRECT_BODY_LIMIT`].
fn direct_body_len(value: &[u8]) -> Option<usize> {
    if value.is_empty() || value.len() > 7 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let len = value
        .iter()
        .fold(0usize, |n, digit| n * 10 + usize::from(digit - b'0'));
    (len <= DIRECT_BODY_LIMIT).then_some(len)
}

/// What the access log shows of a head parsed here.
fn request_line(method: &str, target: &str, headers: &HeaderFields<'_>) -> RequestLine {
    let field = |name: &str| {
        headers
            .iter()
            .find(|f| f.name.eq_ignore_ascii_case(name))
            .map(|f| f.value.into())
    };
    RequestLine {
        method: method.into(),
        target: target.as_bytes().into(),
        protocol: "HTTP/1.1",
        referer: field("referer"),
        user_agent: field("user-agent"),
    }
}

fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|b| *b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
}

/// Whether a `Connection` field of `fields` names the field `name`.
fn nominated_by_connection(fields: &[httparse::Header<'_>], name: &str) -> bool {
    fields
        .iter()
        .filter(|f| f.name.eq_ignore_ascii_case("connection"))
        .any(|f| tokens(f.value).any(|t| t.eq_ignore_ascii_case(name.as_bytes())))
}

/// Field lines the proxy adds to a backend's response head for the client.
#[derive(Debug, Default)]
struct ResponseFields {
    /// Whole field lines (`name: value\r\n`).
    lines: Vec<u8>,
    /// The backend's own `X-Request-Id` is left out (the request's is among `lines`).
    replaces_request_id: bool,
}

fn push_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

fn invalid(what: &'static str) -> Box<Error> {
    Error::explain(ErrorType::InvalidHTTPHeader, what)
}

/// Writes all of `bytes` and flushes, within `limit` when one is set.
/// Writes both parts in order, as few writes as the stream takes, within `limit`.
async fn write_all_vectored(
    stream: &mut Stream,
    parts: [&[u8]; 2],
    limit: Option<Duration>,
) -> pingora::Result<()> {
    let [mut first, mut second] = parts;
    let write = async {
        while !first.is_empty() || !second.is_empty() {
            let slices = [io::IoSlice::new(first), io::IoSlice::new(second)];
            let written = stream.write_vectored(&slices).await?;
            if written == 0 {
                return Err(io::Error::from(io::ErrorKind::WriteZero));
            }
            let from_first = written.min(first.len());
            first = &first[from_first..];
            second = &second[written - from_first..];
        }
        stream.flush().await
    };
    let result = match limit {
        Some(limit) => fast_timeout(limit, write)
            .await
            .map_err(|_| Error::explain(ErrorType::WriteTimedout, "write timed out"))?,
        None => write.await,
    };
    result.map_err(|e| Error::because(ErrorType::WriteError, "write failed", e))
}

async fn write_all(
    stream: &mut Stream,
    bytes: &[u8],
    limit: Option<Duration>,
) -> pingora::Result<()> {
    write_all_vectored(stream, [bytes, &[]], limit).await
}

/// Reads what is there (at least one byte, or 0 at the end) into `buf`, within `limit` when set.
async fn read_some(
    stream: &mut Stream,
    buf: &mut Vec<u8>,
    limit: Option<Duration>,
) -> pingora::Result<usize> {
    if buf.capacity() - buf.len() < READ_SIZE / 4 {
        buf.reserve(READ_SIZE);
    }
    let read = stream.read_buf(buf);
    let result = match limit {
        Some(limit) => fast_timeout(limit, read)
            .await
            .map_err(|_| Error::explain(ErrorType::ReadTimedout, "backend read timed out"))?,
        None => read.await,
    };
    result.map_err(|e| Error::because(ErrorType::ReadError, "backend read failed", e))
}

fn peer_ip(stream: &Stream) -> Option<IpAddr> {
    stream
        .get_socket_digest()
        .and_then(|digest| digest.peer_addr().and_then(|a| a.as_inet()).map(|a| a.ip()))
}

/// A client connection with bytes already read from it put back in front, for the general path.
#[derive(Debug)]
struct Rewind {
    inner: Stream,
    replay: Vec<u8>,
    position: usize,
}

impl Rewind {
    fn new(inner: Stream, replay: Vec<u8>) -> Self {
        Rewind {
            inner,
            replay,
            position: 0,
        }
    }

    /// The connection, and the put-back bytes nobody has read.
    fn into_parts(mut self) -> (Stream, Vec<u8>) {
        self.replay.drain(..self.position);
        (self.inner, self.replay)
    }
}

impl AsyncRead for Rewind {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.position < this.replay.len() {
            let n = (this.replay.len() - this.position).min(buf.remaining());
            buf.put_slice(&this.replay[this.position..this.position + n]);
            this.position += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Rewind {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[async_trait]
impl Shutdown for Rewind {
    async fn shutdown(&mut self) {
        Shutdown::shutdown(&mut *self.inner).await;
    }
}

impl UniqueID for Rewind {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for Rewind {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<pingora::protocols::tls::SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for Rewind {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for Rewind {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest);
    }
}

impl GetSocketDigest for Rewind {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest);
    }
}

/// Peeking is not offered: the general path then reads (h2c detection treats the stream as
/// HTTP/2, which is why only a stream that starts with the preface is handed over for h2c).
#[async_trait]
impl Peek for Rewind {}

/// The backend's side of one exchange as the direct path reads it, without sockets: the response
/// head at the start of `stream` (after any 1xx), then the body split into reads at `cuts`.
/// Returns the client's head and the body bytes passed on, or why the response is refused.
/// For the fuzz target and the corpus test (`proxy/fuzz`): no input may panic, and a complete
/// answer never takes more bytes than `stream` holds.
#[doc(hidden)]
pub fn read_backend_response(
    stream: &[u8],
    head_only: bool,
    cuts: &[usize],
) -> Result<(Vec<u8>, Vec<u8>), String> {
    let mut response = stream.to_vec();
    let mut head_out = Vec::new();
    let head = final_response_head(
        &mut response,
        head_only,
        false,
        &ResponseFields::default(),
        &mut head_out,
    )
    .map_err(|e| e.to_string())?
    .ok_or_else(|| "incomplete head".to_string())?;
    let mut framing = head.framing;
    let mut body = Vec::new();
    let after_head = &response[head.len..];
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (after_head.len() + 1)).collect();
    points.sort_unstable();
    points.push(after_head.len());
    let mut start = 0;
    for point in points {
        let read = &after_head[start..point];
        let (take, done) = framing.advance(read).map_err(|e| e.to_string())?;
        assert!(take <= read.len(), "framing took more than was read");
        body.extend_from_slice(&read[..take]);
        if done {
            return Ok((head_out, body));
        }
        start = point;
    }
    // The stream ended before the body did: as the backend closing the connection.
    framing.at_close().map_err(|e| e.to_string())?;
    Ok((head_out, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(bytes: &[u8], head_only: bool) -> (ResponseHead, String) {
        let mut out = Vec::new();
        let head = parse_response_head(
            bytes,
            head_only,
            false,
            &ResponseFields::default(),
            &mut out,
        )
        .expect("valid")
        .expect("complete");
        (head, String::from_utf8(out).expect("text"))
    }

    #[test]
    fn response_heads_are_framed_as_the_backend_framed_them() {
        let (h, out) = head(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive, x-trace\r\nKeep-Alive: timeout=5\r\nX-Trace: 1\r\nX-Kept: y\r\n\r\nhello",
            false,
        );
        assert!(matches!(h.framing, Framing::Length(5)));
        assert!(h.reusable && !h.close_client);
        assert_eq!(
            out,
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Kept: y\r\n\r\n"
        );

        let (h, out) = head(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            false,
        );
        assert!(matches!(h.framing, Framing::Chunked(_)));
        assert!(h.reusable);
        assert!(out.contains("Transfer-Encoding: gzip, chunked"), "{out}");

        // No length, no coding: the body runs until the backend closes; so does the client's.
        let (h, out) = head(b"HTTP/1.1 200 OK\r\n\r\n", false);
        assert!(matches!(h.framing, Framing::UntilClose));
        assert!(!h.reusable && h.close_client);
        assert!(out.ends_with("connection: close\r\n\r\n"));

        // HEAD, 204 and 304 have no body whatever the fields say.
        let (h, _) = head(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", true);
        assert!(matches!(h.framing, Framing::Length(0)));
        let (h, _) = head(
            b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n",
            false,
        );
        assert!(matches!(h.framing, Framing::Length(0)));

        // HTTP/1.0 or `Connection: close`: the backend's connection is not kept.
        let (h, _) = head(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", false);
        assert!(!h.reusable);
        let (h, _) = head(
            b"HTTP/1.1 200 OK\r\nConnection: Close\r\nContent-Length: 0\r\n\r\n",
            false,
        );
        assert!(!h.reusable && !h.close_client);

        let (h, _) = head(b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n", false);
        assert!(h.informational);
    }

    #[test]
    fn bad_response_heads_are_errors() {
        for bad in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: five\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
            b"NOT HTTP\r\n\r\n",
            // Both framings: response splitting or smuggling (RFC 9112 §6.3).
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 9\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nTransfer-Encoding: identity\r\n\r\n",
            b"HTTP/1.1 600 Beyond\r\nContent-Length: 0\r\n\r\n",
            b"HTTP/1.1 099 Below\r\nContent-Length: 0\r\n\r\n",
        ] {
            let mut out = Vec::new();
            assert!(
                parse_response_head(bad, false, false, &ResponseFields::default(), &mut out)
                    .is_err(),
                "{bad:?}"
            );
        }
        let mut out = Vec::new();
        assert!(parse_response_head(
            b"HTTP/1.1 200 OK\r\nX: y",
            false,
            false,
            &ResponseFields::default(),
            &mut out
        )
        .expect("no error yet")
        .is_none());
    }

    #[test]
    fn as_many_response_fields_as_pingora_takes() {
        let many = |n: usize| {
            let mut head = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n".to_vec();
            for i in 0..n {
                head.extend_from_slice(format!("Set-Cookie: c{i}=v\r\n").as_bytes());
            }
            head.extend_from_slice(b"\r\n");
            head
        };
        let mut out = Vec::new();
        let head = parse_response_head(
            &many(MAX_FIELDS - 1),
            false,
            false,
            &ResponseFields::default(),
            &mut out,
        )
        .expect("within the limit")
        .expect("complete");
        assert_eq!(head.status, 200);
        assert_eq!(
            String::from_utf8_lossy(&out).matches("Set-Cookie").count(),
            MAX_FIELDS - 1
        );
        assert!(parse_response_head(
            &many(MAX_FIELDS),
            false,
            false,
            &ResponseFields::default(),
            &mut out
        )
        .is_err());
    }

    #[test]
    fn only_plain_small_lengths_are_read_on_the_direct_path() {
        assert_eq!(direct_body_len(b"0"), Some(0));
        assert_eq!(direct_body_len(b"1024"), Some(1024));
        assert_eq!(direct_body_len(b"65536"), Some(DIRECT_BODY_LIMIT));
        assert_eq!(direct_body_len(b"0000001"), Some(1));
        for general in [
            &b"65537"[..],
            b"",
            b"+1",
            b"-1",
            b"1,1",
            b"1 ",
            b"0x10",
            b"99999999999",
        ] {
            assert_eq!(direct_body_len(general), None, "{general:?}");
        }
    }

    #[test]
    fn length_framing_takes_exactly_the_body() {
        let mut framing = Framing::Length(5);
        assert_eq!(framing.advance(b"hel").unwrap(), (3, false));
        assert_eq!(framing.advance(b"loHTTP").unwrap(), (2, true));
    }
}
