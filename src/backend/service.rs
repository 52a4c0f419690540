//! Request handling of the demo backend: the echo body, `/healthz`, injected latency
//! (`--latency-ms`, `?sleep_ms=`) and injected failures (`--fail-rate`).
//!
//! With `--record-users` it also tallies requests per `X-User-Id` and reports the tally at
//! `GET /_backend/users`, so end-to-end tests can check which users reached which backend.
//!
//! Everything that does not depend on the request (the fixed body, the failure body, the
//! backend-name header) is built once at start, so the hot path only clones reference-counted
//! buffers.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Incoming};
use rand::Rng;
use serde::Serialize;

/// The longest delay a request may ask for with `?sleep_ms=`.
pub const MAX_SLEEP: Duration = Duration::from_secs(60);

/// The path of the per-user tally (only served with `--record-users`).
pub const USERS_PATH: &str = "/_backend/users";

/// Most distinct users the tally keeps; later newcomers are only counted in `untracked`.
const MAX_TRACKED_USERS: usize = 100_000;

/// Response header naming the backend that answered, for clients that do not parse the body.
const BACKEND_HEADER: HeaderName = HeaderName::from_static("x-backend");
const X_USER_ID: HeaderName = HeaderName::from_static("x-user-id");
const APPLICATION_JSON: HeaderValue = HeaderValue::from_static("application/json");
const TEXT_PLAIN: HeaderValue = HeaderValue::from_static("text/plain");

/// How the backend behaves, as given on the command line.
#[derive(Debug, Clone)]
pub struct Behavior {
    /// Reported in every response body and in the `x-backend` header.
    pub name: String,
    /// Delay applied to every response except `/healthz` (unless `?sleep_ms=` overrides it).
    pub latency: Duration,
    /// Fraction of requests (0..=1) answered with 500.
    pub fail_rate: f64,
    /// Answer a fixed tiny body instead of the echo (for benchmarks).
    pub fixed_body: bool,
    /// Tally requests per `X-User-Id`, served at [`USERS_PATH`].
    pub record_users: bool,
}

/// The shared, immutable state of the backend's request handler.
#[derive(Debug)]
pub struct Backend {
    behavior: Behavior,
    name_header: HeaderValue,
    fixed_body: Bytes,
    failure_body: Bytes,
    user_tally: Option<Mutex<UserTally>>,
}

/// Requests per user identity, bounded in memory.
#[derive(Debug, Default, Serialize)]
struct UserTally {
    /// Requests answered (other than `/healthz` and the tally itself).
    requests: u64,
    /// Requests without an `X-User-Id` header.
    anonymous: u64,
    /// Requests from users first seen after the tally was full.
    untracked: u64,
    users: HashMap<String, u64>,
}

impl UserTally {
    fn record(&mut self, user: Option<&HeaderValue>) {
        self.requests += 1;
        let Some(user) = user else {
            self.anonymous += 1;
            return;
        };
        let user = String::from_utf8_lossy(user.as_bytes());
        if let Some(count) = self.users.get_mut(user.as_ref()) {
            *count += 1;
        } else if self.users.len() < MAX_TRACKED_USERS {
            self.users.insert(user.into_owned(), 1);
        } else {
            self.untracked += 1;
        }
    }
}

/// The response body type of every answer.
pub type ResponseBody = Full<Bytes>;

#[derive(Serialize)]
struct Echo<'a> {
    backend: &'a str,
    method: &'a str,
    path: &'a str,
    query: Option<&'a str>,
    version: &'static str,
    /// Every request header by (lower-case) name; repeated fields joined with ", ".
    headers: BTreeMap<&'a str, Cow<'a, str>>,
    body_bytes: u64,
    /// FNV-1a (64 bits, hex) of the body, so a client can check it arrived unchanged.
    body_fnv1a: String,
}

impl Backend {
    pub fn new(behavior: Behavior) -> anyhow::Result<Self> {
        let name_header = HeaderValue::from_str(&behavior.name).map_err(|_| {
            anyhow::anyhow!("--name must be printable ASCII without control characters")
        })?;
        let fixed_body = Bytes::from(json_line(&serde_json::json!({ "backend": behavior.name })));
        let failure_body = Bytes::from(json_line(
            &serde_json::json!({ "backend": behavior.name, "error": "injected failure" }),
        ));
        let user_tally = behavior
            .record_users
            .then(|| Mutex::new(UserTally::default()));
        Ok(Backend {
            behavior,
            name_header,
            fixed_body,
            failure_body,
            user_tally,
        })
    }

    /// Answers one request. Never fails: every problem becomes an HTTP status.
    pub async fn handle(
        self: Arc<Self>,
        request: Request<Incoming>,
    ) -> Result<Response<ResponseBody>, Infallible> {
        if request.uri().path() == "/healthz" {
            return Ok(self.respond(StatusCode::OK, TEXT_PLAIN, Bytes::from_static(b"ok")));
        }
        if let Some(tally) = &self.user_tally {
            if request.uri().path() == USERS_PATH {
                let body = match tally.lock() {
                    Ok(tally) => json_line(&*tally),
                    Err(_) => b"{}\n".to_vec(),
                };
                return Ok(self.respond(StatusCode::OK, APPLICATION_JSON, Bytes::from(body)));
            }
            if let Ok(mut tally) = tally.lock() {
                tally.record(request.headers().get(&X_USER_ID));
            }
        }
        let delay = match requested_sleep(request.uri().query()) {
            Ok(Some(sleep)) => sleep,
            Ok(None) => self.behavior.latency,
            Err(message) => {
                return Ok(self.respond(
                    StatusCode::BAD_REQUEST,
                    TEXT_PLAIN,
                    Bytes::from_static(message.as_bytes()),
                ));
            }
        };
        let (parts, body) = request.into_parts();
        let drained = drain(body).await;
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        if self.should_fail() {
            return Ok(self.respond(
                StatusCode::INTERNAL_SERVER_ERROR,
                APPLICATION_JSON,
                self.failure_body.clone(),
            ));
        }
        if self.behavior.fixed_body {
            return Ok(self.respond(StatusCode::OK, APPLICATION_JSON, self.fixed_body.clone()));
        }
        let echo = Echo {
            backend: &self.behavior.name,
            method: parts.method.as_str(),
            path: parts.uri.path(),
            query: parts.uri.query(),
            version: version_name(parts.version),
            headers: parts
                .headers
                .keys()
                .filter_map(|name| Some((name.as_str(), header_text(&parts.headers, name)?)))
                .collect(),
            body_bytes: drained.length,
            body_fnv1a: format!("{:016x}", drained.fnv1a),
        };
        let body = json_line(&echo);
        // HEAD answers carry the headers of the GET answer but no body.
        let body = if parts.method == Method::HEAD {
            Bytes::new()
        } else {
            Bytes::from(body)
        };
        Ok(self.respond(StatusCode::OK, APPLICATION_JSON, body))
    }

    fn should_fail(&self) -> bool {
        let rate = self.behavior.fail_rate;
        rate > 0.0 && rand::rng().random::<f64>() < rate
    }

    fn respond(
        &self,
        status: StatusCode,
        content_type: HeaderValue,
        body: Bytes,
    ) -> Response<ResponseBody> {
        let mut response = Response::new(Full::new(body));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, content_type);
        headers.insert(BACKEND_HEADER, self.name_header.clone());
        response
    }
}

/// Serialises a value as one line of JSON. Serialising our own plain structs cannot fail; the
/// fallback keeps the handler panic-free regardless.
fn json_line(value: &impl Serialize) -> Vec<u8> {
    let mut line = serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
    line.push(b'\n');
    line
}

/// A request body read to its end: its length and FNV-1a hash.
struct Drained {
    length: u64,
    fnv1a: u64,
}

/// FNV-1a's 64-bit offset basis; [`fnv1a`] continues a hash from it.
const FNV1A_BASIS: u64 = 0xcbf2_9ce4_8422_2325;

/// Continues an FNV-1a (64-bit) hash over `bytes`.
fn fnv1a(mut hash: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// Reads and discards the request body so the connection can be reused.
async fn drain(mut body: Incoming) -> Drained {
    let mut drained = Drained {
        length: 0,
        fnv1a: FNV1A_BASIS,
    };
    if body.is_end_stream() {
        return drained;
    }
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Some(data) = frame.data_ref() {
                    drained.length += data.len() as u64;
                    drained.fnv1a = fnv1a(drained.fnv1a, data);
                }
            }
            Err(_) => break,
        }
    }
    drained
}

/// The `sleep_ms` query parameter, if present, bounded to [`MAX_SLEEP`].
fn requested_sleep(query: Option<&str>) -> Result<Option<Duration>, &'static str> {
    let Some(query) = query else { return Ok(None) };
    let Some(value) = query
        .split('&')
        .find_map(|pair| pair.strip_prefix("sleep_ms="))
    else {
        return Ok(None);
    };
    let millis: u64 = value
        .parse()
        .map_err(|_| "sleep_ms must be a whole number of milliseconds\n")?;
    Ok(Some(Duration::from_millis(millis).min(MAX_SLEEP)))
}

/// A header's value as text (lossy for non-UTF-8 bytes); repeated headers are joined with ", ".
fn header_text<'a>(headers: &'a http::HeaderMap, name: &HeaderName) -> Option<Cow<'a, str>> {
    let mut values = headers.get_all(name).iter();
    let first = String::from_utf8_lossy(values.next()?.as_bytes());
    let mut joined: Option<String> = None;
    for value in values {
        let text = joined.get_or_insert_with(|| first.to_string());
        text.push_str(", ");
        text.push_str(&String::from_utf8_lossy(value.as_bytes()));
    }
    Some(joined.map(Cow::Owned).unwrap_or(first))
}

fn version_name(version: Version) -> &'static str {
    match version {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_3 => "HTTP/3",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    const X_FORWARDED_FOR: http::HeaderName = http::HeaderName::from_static("x-forwarded-for");
    use super::*;

    #[test]
    fn body_hash_is_fnv1a_64() {
        assert_eq!(fnv1a(FNV1A_BASIS, b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(FNV1A_BASIS, b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(
            fnv1a(fnv1a(FNV1A_BASIS, b"fo"), b"o"),
            fnv1a(FNV1A_BASIS, b"foo")
        );
    }

    #[test]
    fn sleep_parameter_is_found_among_others_and_bounded() {
        assert_eq!(requested_sleep(None), Ok(None));
        assert_eq!(requested_sleep(Some("a=1")), Ok(None));
        assert_eq!(
            requested_sleep(Some("a=1&sleep_ms=250")),
            Ok(Some(Duration::from_millis(250)))
        );
        assert_eq!(
            requested_sleep(Some("sleep_ms=999999999")),
            Ok(Some(MAX_SLEEP))
        );
        assert!(requested_sleep(Some("sleep_ms=soon")).is_err());
        assert!(requested_sleep(Some("sleep_ms=-1")).is_err());
    }

    #[test]
    fn repeated_headers_are_joined() {
        let mut headers = http::HeaderMap::new();
        headers.append(X_FORWARDED_FOR, HeaderValue::from_static("10.0.0.1"));
        assert_eq!(
            header_text(&headers, &X_FORWARDED_FOR).as_deref(),
            Some("10.0.0.1")
        );
        headers.append(X_FORWARDED_FOR, HeaderValue::from_static("10.0.0.2"));
        assert_eq!(
            header_text(&headers, &X_FORWARDED_FOR).as_deref(),
            Some("10.0.0.1, 10.0.0.2")
        );
        assert_eq!(header_text(&headers, &X_USER_ID), None);
    }

    #[test]
    fn the_user_tally_is_bounded() {
        let mut tally = UserTally::default();
        tally.record(Some(&HeaderValue::from_static("alice")));
        tally.record(Some(&HeaderValue::from_static("alice")));
        tally.record(None);
        assert_eq!(
            (tally.requests, tally.anonymous, tally.users["alice"]),
            (3, 1, 2)
        );
        for n in 0..MAX_TRACKED_USERS {
            tally.record(Some(&HeaderValue::from_str(&format!("u{n}")).unwrap()));
        }
        assert_eq!(tally.users.len(), MAX_TRACKED_USERS);
        assert_eq!(tally.untracked, 1);
    }

    #[test]
    fn names_that_cannot_be_headers_are_rejected() {
        let behavior = Behavior {
            name: "bad\nname".into(),
            latency: Duration::ZERO,
            fail_rate: 0.0,
            fixed_body: false,
            record_users: false,
        };
        assert!(Backend::new(behavior).is_err());
    }
}
