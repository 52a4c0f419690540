//! The admin HTTP listener: routing to JSON handlers, `/metrics` assembled from every registered
//! source, `/healthz`, `/readyz`, the dashboard at `/`, and bearer-token checks.
//!
//! Handlers are plain functions of a request to an optional response, so the proxy and the
//! forecaster can each contribute routes without knowing about each other (and tests can call
//! them without a socket). Invariants: with a token configured, nothing but `/healthz`,
//! `/readyz` and the dashboard page answers without it (401) — the page holds no data and asks
//! for the token before it reads the API, and `/readyz` without the token says only "not ready"
//! (its reasons name fleets); with no token, a request naming any host but this listener is 421
//! (the DNS-rebinding guard, [`AdminRoutes::misdirected`]); a handler's panic-free `None` means
//! "not mine"; unknown paths are 404 with a JSON error. The token is a [`Secret`]: never printed.
//! A request that needs the token and lacks it is refused before its body is read; connections
//! are capped ([`MAX_CONNECTIONS`]) and heads and bodies have deadlines ([`HEAD_TIMEOUT`],
//! [`BODY_TIMEOUT`]), so slow or many clients cannot hold the listener.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::watch;

use prescale_config::Secret;

/// Largest admin request body accepted (personas and events are small JSON documents); a
/// route that takes more says so in [`AdminRoutes::body_limits`].
const MAX_BODY_BYTES: usize = 1024 * 1024;

/// Admin connections served at once.
pub const MAX_CONNECTIONS: usize = 256;
/// A request head must arrive within this (and an idle connection closes after it).
pub const HEAD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// A request body must arrive within this.
pub const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// A route that accepts a larger body than [`MAX_BODY_BYTES`] (the forecaster's NDJSON ingest):
/// only for this method and exact path, and only for a request that carries the token when one
/// is configured (anyone else is answered 401 before its body is read).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BodyLimit {
    pub method: Method,
    pub path: &'static str,
    pub max_bytes: usize,
}

/// A request as handlers see it: method, path, query and the whole (bounded) body.
pub struct AdminRequest {
    pub method: Method,
    pub path: String,
    pub query: Option<String>,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl AdminRequest {
    /// The value of query parameter `name`, percent-decoded.
    pub fn query_param(&self, name: &str) -> Option<String> {
        let query = self.query.as_deref()?;
        query.split('&').find_map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(key) == name).then(|| percent_decode(value))
        })
    }
}

pub type AdminResponse = Response<Full<Bytes>>;

/// Answers the requests it owns, `None` for the rest.
pub type Handler = Arc<dyn Fn(&AdminRequest) -> Option<AdminResponse> + Send + Sync>;
/// Appends Prometheus text exposition lines.
pub type MetricsSource = Arc<dyn Fn(&mut String) + Send + Sync>;
/// Whether the node is ready to serve (e.g. at least one healthy backend per fleet).
pub type Readiness = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// Everything the admin listener serves.
#[derive(Clone, Default)]
pub struct AdminRoutes {
    pub handlers: Vec<Handler>,
    pub metrics: Vec<MetricsSource>,
    pub readiness: Vec<Readiness>,
    pub dashboard: Option<&'static str>,
    pub token: Option<Secret>,
    /// Routes whose bodies may be larger than the default limit.
    pub body_limits: Vec<BodyLimit>,
}

impl AdminRoutes {
    /// Answers one request; the routing the listener applies, callable without a socket.
    pub fn respond(&self, request: &AdminRequest) -> AdminResponse {
        match (request.method.clone(), request.path.as_str()) {
            (Method::GET, "/healthz") => return text(StatusCode::OK, "ok\n"),
            (Method::GET, "/readyz") => {
                let problems: Vec<String> = self
                    .readiness
                    .iter()
                    .filter_map(|check| check().err())
                    .collect();
                return if problems.is_empty() {
                    text(StatusCode::OK, "ready\n")
                } else if self.authorised(request) {
                    text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        &format!("not ready: {}\n", problems.join("; ")),
                    )
                } else {
                    // The problems name fleets: only a caller with the token may read them.
                    text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
                };
            }
            (Method::GET, "/") => {
                if let Some(page) = self.dashboard {
                    let mut response =
                        Response::new(Full::new(Bytes::from_static(page.as_bytes())));
                    response.headers_mut().insert(
                        header::CONTENT_TYPE,
                        http::HeaderValue::from_static("text/html; charset=utf-8"),
                    );
                    return response;
                }
            }
            _ => {}
        }
        if !self.authorised(request) {
            return unauthorized();
        }
        if request.method == Method::GET && request.path == "/metrics" {
            let mut out = String::with_capacity(16 * 1024);
            for source in &self.metrics {
                source(&mut out);
            }
            let mut response = Response::new(Full::new(Bytes::from(out)));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            return response;
        }
        for handler in &self.handlers {
            if let Some(response) = handler(request) {
                return response;
            }
        }
        json_error(
            StatusCode::NOT_FOUND,
            &format!("no admin endpoint {} {}", request.method, request.path),
        )
    }

    /// Whether `request` may read everything: no token is configured, or it carries the token.
    fn authorised(&self, request: &AdminRequest) -> bool {
        self.authorised_headers(&request.headers)
    }

    fn authorised_headers(&self, headers: &http::HeaderMap) -> bool {
        match &self.token {
            Some(token) => bearer_matches(headers, token.expose()),
            None => true,
        }
    }

    /// The most body bytes read for a request: a [`BodyLimit`] of its method and path when it is
    /// authorised, else [`MAX_BODY_BYTES`].
    pub fn body_limit(&self, method: &Method, path: &str, headers: &http::HeaderMap) -> usize {
        self.body_limits
            .iter()
            .find(|limit| limit.method == method && limit.path == path)
            .filter(|_| self.authorised_headers(headers))
            .map_or(MAX_BODY_BYTES, |limit| limit.max_bytes)
    }

    /// The DNS-rebinding guard: with no token configured, a request whose `Host` (or HTTP/2
    /// `:authority`) names anything but this listener gets 421, so a web page whose name was
    /// rebound to the loopback address cannot read or drive the API from a browser. Accepted
    /// names: `localhost`, any loopback IP literal, and the listener's own IP (`local`), each with
    /// or without a port. A request with no `Host` at all (HTTP/1.0) is accepted: browsers always
    /// send one. With a token configured the token is the guard, and any name is accepted.
    pub fn misdirected(
        &self,
        local: SocketAddr,
        authority: Option<&str>,
        headers: &http::HeaderMap,
    ) -> Option<AdminResponse> {
        if self.token.is_some() {
            return None;
        }
        let named = authority.into_iter().map(str::to_string).chain(
            headers
                .get_all(header::HOST)
                .iter()
                .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned()),
        );
        for host in named {
            if !host_names_listener(&host, local) {
                return Some(json_error(
                    StatusCode::MISDIRECTED_REQUEST,
                    &format!(
                        "Host `{host}` is not this admin listener ({local}); without admin.token only localhost, a loopback address or {} are accepted",
                        local.ip()
                    ),
                ));
            }
        }
        None
    }
}

/// Whether `host` (`name`, `name:port`, `[v6]` or `[v6]:port`) is `localhost`, a loopback IP
/// literal, or `local`'s IP.
fn host_names_listener(host: &str, local: SocketAddr) -> bool {
    let host = host.trim();
    let (name, port) = if let Some(rest) = host.strip_prefix('[') {
        match rest.split_once(']') {
            Some((inside, after)) => (inside, after.strip_prefix(':')),
            None => return false,
        }
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) => (name, Some(port)),
            None => (host, None),
        }
    };
    if port.is_some_and(|port| port.parse::<u16>().is_err()) {
        return false;
    }
    if name.eq_ignore_ascii_case("localhost") {
        return true;
    }
    match name.parse::<std::net::IpAddr>() {
        Ok(ip) => ip.is_loopback() || ip == local.ip(),
        Err(_) => false,
    }
}

/// Serves `routes` on `listener` until `shutdown` turns true: at most [`MAX_CONNECTIONS`] at once
/// (a connection beyond them is closed at once, and logged), each request head within
/// [`HEAD_TIMEOUT`] (also the longest an idle keep-alive connection waits), each body within
/// [`BODY_TIMEOUT`].
pub async fn serve(
    listener: TcpListener,
    routes: Arc<AdminRoutes>,
    mut shutdown: watch::Receiver<bool>,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.changed() => break,
        };
        let (stream, _peer): (_, SocketAddr) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let local = match stream.local_addr() {
            Ok(local) => local,
            Err(e) => {
                tracing::warn!(error = %e, "admin connection has no local address; closed");
                continue;
            }
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            tracing::warn!(
                limit = MAX_CONNECTIONS,
                "admin connection refused: the listener holds its most connections"
            );
            continue;
        };
        let routes = Arc::clone(&routes);
        tokio::spawn(async move {
            let _slot = slot;
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let routes = Arc::clone(&routes);
                handle(routes, local, req)
            });
            let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEAD_TIMEOUT);
            builder
                .http2()
                .timer(hyper_util::rt::TokioTimer::new())
                .keep_alive_interval(Some(HEAD_TIMEOUT))
                .keep_alive_timeout(HEAD_TIMEOUT);
            if let Err(e) = builder
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(error = %e, "admin connection ended with an error");
            }
        });
    }
}

fn handle(
    routes: Arc<AdminRoutes>,
    local: SocketAddr,
    req: Request<Incoming>,
) -> Pin<Box<dyn Future<Output = Result<AdminResponse, Infallible>> + Send>> {
    Box::pin(async move {
        let (parts, body) = req.into_parts();
        let authority = parts.uri.authority().map(|a| a.as_str());
        if let Some(response) = routes.misdirected(local, authority, &parts.headers) {
            return Ok(response);
        }
        // Refused before a byte of the body is read.
        if !is_public(&parts.method, parts.uri.path()) && !routes.authorised_headers(&parts.headers)
        {
            return Ok(unauthorized());
        }
        let limit = routes.body_limit(&parts.method, parts.uri.path(), &parts.headers);
        let collected = tokio::time::timeout(BODY_TIMEOUT, Limited::new(body, limit).collect());
        let body = match collected.await {
            Ok(Ok(collected)) => collected.to_bytes(),
            Ok(Err(_)) => {
                return Ok(json_error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    &format!("request body larger than {limit} bytes"),
                ))
            }
            Err(_) => {
                return Ok(json_error(
                    StatusCode::REQUEST_TIMEOUT,
                    &format!("request body not complete within {BODY_TIMEOUT:?}"),
                ))
            }
        };
        let request = AdminRequest {
            method: parts.method,
            path: parts.uri.path().to_string(),
            query: parts.uri.query().map(str::to_string),
            headers: parts.headers,
            body,
        };
        // Handlers may touch SQLite or build models: keep them off the async workers.
        let answered = tokio::task::spawn_blocking(move || routes.respond(&request)).await;
        Ok(answered.unwrap_or_else(|_| {
            json_error(StatusCode::INTERNAL_SERVER_ERROR, "admin handler failed")
        }))
    })
}

fn unauthorized() -> AdminResponse {
    let mut response = json_error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        http::HeaderValue::from_static("Bearer"),
    );
    response
}

/// Routes that answer without the token (what they show without it is limited in `respond`).
fn is_public(method: &Method, path: &str) -> bool {
    method == Method::GET && matches!(path, "/healthz" | "/readyz" | "/")
}

fn bearer_matches(headers: &http::HeaderMap, token: &str) -> bool {
    let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let Some(given) = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
    else {
        return false;
    };
    constant_time_eq(given.trim().as_bytes(), token.as_bytes())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// One unlabelled Prometheus sample with its `HELP` and `TYPE` lines (`kind`: `counter` or
/// `gauge`).
pub fn write_metric(
    out: &mut String,
    name: &str,
    kind: &str,
    help: &str,
    value: impl std::fmt::Display,
) {
    use std::fmt::Write as _;
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
    );
}

/// A JSON response with status 200.
pub fn json<T: Serialize>(value: &T) -> AdminResponse {
    json_with_status(StatusCode::OK, value)
}

pub fn json_with_status<T: Serialize>(status: StatusCode, value: &T) -> AdminResponse {
    match serde_json::to_vec_pretty(value) {
        Ok(body) => {
            let mut response = Response::new(Full::new(Bytes::from(body)));
            *response.status_mut() = status;
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            );
            response
        }
        Err(e) => json_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("cannot encode response: {e}"),
        ),
    }
}

/// `{"error": message}` with `status`.
pub fn json_error(status: StatusCode, message: &str) -> AdminResponse {
    #[derive(Serialize)]
    struct ErrorBody<'a> {
        error: &'a str,
    }
    let body = serde_json::to_vec(&ErrorBody { error: message }).unwrap_or_else(|_| b"{}".to_vec());
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

fn text(status: StatusCode, body: &str) -> AdminResponse {
    let mut response = Response::new(Full::new(Bytes::copy_from_slice(body.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(
        method: Method,
        path: &str,
        query: Option<&str>,
        token: Option<&str>,
    ) -> AdminRequest {
        let mut headers = http::HeaderMap::new();
        if let Some(token) = token {
            headers.insert(
                header::AUTHORIZATION,
                format!("Bearer {token}").parse().expect("header"),
            );
        }
        AdminRequest {
            method,
            path: path.into(),
            query: query.map(str::to_string),
            headers,
            body: Bytes::new(),
        }
    }

    #[test]
    fn token_guards_everything_but_health_and_the_page() {
        let routes = AdminRoutes {
            token: Some("0123456789abcdef".into()),
            dashboard: Some("<!doctype html>"),
            ..Default::default()
        };
        assert_eq!(
            routes
                .respond(&request(Method::GET, "/healthz", None, None))
                .status(),
            200
        );
        assert_eq!(
            routes
                .respond(&request(Method::GET, "/", None, None))
                .status(),
            200
        );
        assert_eq!(
            routes
                .respond(&request(Method::GET, "/metrics", None, None))
                .status(),
            401
        );
        assert_eq!(
            routes
                .respond(&request(Method::GET, "/metrics", None, Some("wrong")))
                .status(),
            401
        );
        assert_eq!(
            routes
                .respond(&request(
                    Method::GET,
                    "/metrics",
                    None,
                    Some("0123456789abcdef")
                ))
                .status(),
            200
        );
        assert_eq!(
            routes
                .respond(&request(
                    Method::GET,
                    "/nope",
                    None,
                    Some("0123456789abcdef")
                ))
                .status(),
            404
        );
    }

    #[test]
    fn readiness_reports_problems() {
        let routes = AdminRoutes {
            readiness: vec![Arc::new(|| {
                Err("fleet web has no healthy backend".to_string())
            })],
            ..Default::default()
        };
        assert_eq!(
            routes
                .respond(&request(Method::GET, "/readyz", None, None))
                .status(),
            503
        );
    }

    #[test]
    fn readiness_reasons_need_the_token_when_one_is_set() {
        let body = |response: AdminResponse| {
            let collected = complete_now(response.into_body().collect()).expect("full body");
            String::from_utf8_lossy(&collected.to_bytes()).into_owned()
        };
        let routes = AdminRoutes {
            token: Some("0123456789abcdef".into()),
            readiness: vec![Arc::new(|| {
                Err("fleet web has no healthy backend".to_string())
            })],
            ..Default::default()
        };
        let anonymous = routes.respond(&request(Method::GET, "/readyz", None, None));
        assert_eq!(anonymous.status(), 503);
        assert_eq!(body(anonymous), "not ready\n");
        let authorised = routes.respond(&request(
            Method::GET,
            "/readyz",
            None,
            Some("0123456789abcdef"),
        ));
        assert_eq!(authorised.status(), 503);
        assert!(body(authorised).contains("fleet web"));
        let open = AdminRoutes {
            token: None,
            ..routes
        };
        assert!(
            body(open.respond(&request(Method::GET, "/readyz", None, None))).contains("fleet web")
        );
    }

    /// Collects a body that is already complete (`Full`) without a runtime.
    fn complete_now<F: Future>(future: F) -> F::Output {
        let mut future = std::pin::pin!(future);
        let mut context = std::task::Context::from_waker(std::task::Waker::noop());
        loop {
            if let std::task::Poll::Ready(output) = future.as_mut().poll(&mut context) {
                return output;
            }
        }
    }

    #[test]
    fn without_a_token_only_the_listeners_own_names_are_accepted() {
        let local: SocketAddr = "127.0.0.2:9090".parse().expect("addr");
        let open = AdminRoutes::default();
        let with_host = |host: &str| {
            let mut headers = http::HeaderMap::new();
            headers.insert(header::HOST, host.parse().expect("host"));
            headers
        };
        for host in [
            "127.0.0.2:9090",
            "127.0.0.1",
            "127.1.2.3:80",
            "localhost:9090",
            "LOCALHOST",
            "[::1]:9090",
            "[::1]",
        ] {
            assert!(
                open.misdirected(local, None, &with_host(host)).is_none(),
                "{host} refused"
            );
        }
        assert!(open
            .misdirected(local, None, &http::HeaderMap::new())
            .is_none());
        for host in [
            "attacker.example:9090",
            "attacker.example",
            "10.0.0.1:9090",
            "localhost.attacker.example",
            "127.0.0.1:notaport",
            "[::1",
            "",
        ] {
            let response = open
                .misdirected(local, None, &with_host(host))
                .unwrap_or_else(|| panic!("{host:?} accepted"));
            assert_eq!(response.status(), 421);
        }
        assert!(open
            .misdirected(local, Some("evil.example:9090"), &with_host("127.0.0.1"))
            .is_some());
        let guarded = AdminRoutes {
            token: Some("0123456789abcdef".into()),
            ..Default::default()
        };
        assert!(guarded
            .misdirected(local, None, &with_host("admin.example:9090"))
            .is_none());
    }

    #[test]
    fn query_params_are_decoded() {
        let r = request(
            Method::GET,
            "/x",
            Some("region=eu%2Dwest&profile=a+b&bad=%zz&end=%"),
            None,
        );
        assert_eq!(r.query_param("region").as_deref(), Some("eu-west"));
        assert_eq!(r.query_param("profile").as_deref(), Some("a b"));
        assert_eq!(r.query_param("bad").as_deref(), Some("%zz"));
        assert_eq!(r.query_param("end").as_deref(), Some("%"));
        assert_eq!(r.query_param("missing"), None);
    }

    #[test]
    fn a_larger_body_limit_holds_only_for_its_route_and_the_token() {
        let routes = AdminRoutes {
            token: Some("0123456789abcdef".into()),
            body_limits: vec![BodyLimit {
                method: Method::POST,
                path: "/api/v1/ingest",
                max_bytes: 8 << 20,
            }],
            ..Default::default()
        };
        let with_token = request(Method::POST, "/x", None, Some("0123456789abcdef")).headers;
        let limit = |method: Method, path: &str, headers: &http::HeaderMap| {
            routes.body_limit(&method, path, headers)
        };
        assert_eq!(limit(Method::POST, "/api/v1/ingest", &with_token), 8 << 20);
        assert_eq!(
            limit(Method::POST, "/api/v1/ingest", &http::HeaderMap::new()),
            MAX_BODY_BYTES
        );
        assert_eq!(
            limit(Method::PUT, "/api/v1/ingest", &with_token),
            MAX_BODY_BYTES
        );
        assert_eq!(
            limit(Method::POST, "/api/v1/ingest/x", &with_token),
            MAX_BODY_BYTES
        );
    }
}
