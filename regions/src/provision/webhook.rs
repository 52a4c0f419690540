//! The `webhook` provisioner: POSTs the desired state of a fleet as JSON to a URL each time the
//! plan's target changes (and again after a failure). The instances run wherever the receiver
//! puts them; the proxies keep routing to the fleet's `backends`.
//!
//! The request: `POST url` (http or https; HTTP/1.1, the machine's root certificates for https)
//! with the body [`super::ProvisionTarget`] serialized — `region`, `fleet`, `instances` (the
//! serving count the plan wants), `tiers` (`baseline`, `predictive`, `burst`, `guard`,
//! `warm_pool`, `total`), `warm_pools`, `plan_version`, `reasons` — and the headers
//! `Content-Type: application/json`, `Idempotency-Key: REGION/FLEET/PLAN_VERSION`,
//! `X-Prescale-Plan-Version: PLAN_VERSION` and, with a secret, `X-Prescale-Signature:
//! sha256=HEX`: the HMAC-SHA256 of the exact body bytes under the key read from the
//! environment variable `secret_env` names (ring's HMAC; the key is never logged or shown).
//!
//! Idempotency: one change of capacity goes out under one plan version, and every retry of it
//! sends the same body under the same version, so a receiver that applies at most one change
//! per `Idempotency-Key` applies each change exactly once, even when an answer was lost.
//!
//! The answer: any 2xx is success; its body may carry the actual counts, `{"ready": N,
//! "warming": N, "draining": N}` (any of them; a body that is not such a document is noted as a
//! warning and ignored). Anything else — another status, no answer within `timeout_secs`, a
//! connection that fails — is a failed call, retried with backoff and jitter
//! ([`super::remote`]).

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;

use super::remote::{excerpt, parse_counts, with_causes, CallError, Outcome, RemoteBackend};
use super::{ProvisionTarget, SetupError};

/// Most of an answer's body read.
const ANSWER_LIMIT: usize = 64 * 1024;

/// An HMAC key; its bytes are never printed.
#[derive(Clone)]
pub struct WebhookSecret(Vec<u8>);

impl WebhookSecret {
    /// The key in environment variable `name` (its bytes as they are); an unset or empty
    /// variable is a setup error naming `secret_env`.
    pub fn from_env(name: &str) -> Result<Self, SetupError> {
        match std::env::var_os(name) {
            Some(value) if !value.is_empty() => {
                use std::os::unix::ffi::OsStrExt;
                Ok(WebhookSecret(value.as_bytes().to_vec()))
            }
            Some(_) => Err(SetupError::config(
                "secret_env",
                format!("the environment variable {name} is empty; it must hold the HMAC key"),
            )),
            None => Err(SetupError::config(
                "secret_env",
                format!("the environment variable {name} is not set; it must hold the HMAC key"),
            )),
        }
    }

    pub fn from_bytes(key: &[u8]) -> Self {
        WebhookSecret(key.to_vec())
    }
}

impl std::fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebhookSecret(<redacted>)")
    }
}

/// The `webhook` provisioner's settings.
#[derive(Clone, Debug)]
pub struct WebhookSettings {
    pub url: String,
    pub secret: Option<WebhookSecret>,
    /// How long one request may take, connecting and the answer included.
    pub timeout: Duration,
}

/// Posts the desired state; see the module docs.
pub struct WebhookBackend {
    url: http::Uri,
    shown_url: String,
    key: Option<ring::hmac::Key>,
    timeout: Duration,
    runtime: tokio::runtime::Runtime,
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl WebhookBackend {
    pub fn new(settings: WebhookSettings) -> Result<Self, SetupError> {
        let url: http::Uri = settings
            .url
            .parse()
            .map_err(|e| SetupError::config("url", format!("`{}`: {e}", settings.url)))?;
        let https = match url.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => {
                return Err(SetupError::config(
                    "url",
                    format!("`{}` is not an http:// or https:// URL", settings.url),
                ))
            }
        };
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let builder = hyper_rustls::HttpsConnectorBuilder::new();
        let tls = match builder.with_provider_and_native_roots(provider.clone()) {
            Ok(tls) => tls,
            Err(e) if https => {
                return Err(SetupError::config(
                    "url",
                    format!("an https:// URL needs the machine's root certificates: {e}"),
                ))
            }
            // Plain http never uses TLS: an empty trust store will do.
            Err(_) => {
                let config = rustls::ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()
                    .map_err(|e| SetupError::config("url", format!("TLS: {e}")))?
                    .with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth();
                hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(config)
            }
        };
        let connector = tls.https_or_http().enable_http1().build();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|source| SetupError::Io {
                what: "start the webhook's runtime",
                source,
            })?;
        let client = Client::builder(hyper_util::rt::TokioExecutor::new()).build(connector);
        Ok(WebhookBackend {
            url,
            shown_url: settings.url,
            key: settings
                .secret
                .map(|s| ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &s.0)),
            timeout: settings.timeout,
            runtime,
            client,
        })
    }
}

/// `sha256=HEX`: the signature header's value for `body` under `key`.
pub fn signature(key: &ring::hmac::Key, body: &[u8]) -> String {
    let tag = ring::hmac::sign(key, body);
    let mut text = String::with_capacity(7 + 64);
    text.push_str("sha256=");
    for byte in tag.as_ref() {
        text.push_str(&format!("{byte:02x}"));
    }
    text
}

impl RemoteBackend for WebhookBackend {
    fn kind(&self) -> &'static str {
        "webhook"
    }

    fn apply(&mut self, target: &ProvisionTarget) -> Result<Outcome, CallError> {
        let body = serde_json::to_vec(target)
            .map_err(|e| CallError::failed(format!("cannot write the target document: {e}")))?;
        let version = target.plan_version.unwrap_or_default();
        let mut request = http::Request::post(self.url.clone())
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(
                http::header::USER_AGENT,
                concat!("prescale/", env!("CARGO_PKG_VERSION")),
            )
            .header(
                "idempotency-key",
                format!("{}/{}/{version}", target.region, target.fleet),
            )
            .header("x-prescale-plan-version", version.to_string());
        if let Some(key) = &self.key {
            request = request.header("x-prescale-signature", signature(key, &body));
        }
        let request = request
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| CallError::failed(format!("cannot build the request: {e}")))?;
        let started = Instant::now();
        let client = self.client.clone();
        let url = &self.shown_url;
        let timeout = self.timeout;
        let answer = self.runtime.block_on(async move {
            tokio::time::timeout(timeout, async move {
                let response = client
                    .request(request)
                    .await
                    .map_err(|e| format!("POST {url}: {}", with_causes(&e)))?;
                let status = response.status();
                let body = Limited::new(response.into_body(), ANSWER_LIMIT)
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .map_err(|e| format!("reading the answer (at most {ANSWER_LIMIT} bytes): {e}"));
                Ok::<_, String>((status, body))
            })
            .await
        });
        let (status, body) = match answer {
            Err(_) => {
                return Err(CallError::timed_out(format!(
                    "POST {url}: no answer within {} s",
                    self.timeout.as_secs()
                )))
            }
            Ok(Err(message)) => return Err(CallError::failed(message)),
            Ok(Ok(answer)) => answer,
        };
        if !status.is_success() {
            let text = match &body {
                Ok(body) => excerpt(String::from_utf8_lossy(body).trim(), 512),
                Err(why) => why.clone(),
            };
            return Err(CallError::failed(format!(
                "POST {url} answered {status}: {text}"
            )));
        }
        // The receiver took the change; an answer that cannot be read only costs the counts.
        let (counts, warning) = match body.and_then(|b| parse_counts(&b)) {
            Ok(counts) => (counts, None),
            Err(why) => (None, Some(format!("POST {url} answer: {why}"))),
        };
        Ok(Outcome {
            counts,
            reached: true,
            note: format!(
                "POST {url} answered {status} in {} ms for {} instances",
                started.elapsed().as_millis(),
                target.instances
            ),
            warning,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prescale_brain::planner::Tiers;
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::TcpListener;

    fn target() -> ProvisionTarget {
        ProvisionTarget {
            region: "eu".into(),
            fleet: "web".into(),
            instances: 3,
            tiers: Tiers {
                baseline: 1,
                predictive: 2,
                total: 3,
                ..Tiers::default()
            },
            warm_pools: Vec::new(),
            plan_version: Some(7),
            reasons: vec!["because".into()],
        }
    }

    /// The head lines and body of a request as the test server got it.
    type Received = (Vec<String>, Vec<u8>);

    /// A one-request HTTP server: answers `status` with `body` and hands back the request.
    fn serve_once(
        status: &'static str,
        body: &'static str,
    ) -> (String, std::thread::JoinHandle<Received>) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
        let handle = std::thread::spawn(move || {
            let (stream, _) = listener.accept().expect("accept");
            let mut reader = BufReader::new(stream);
            let mut head = Vec::new();
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).expect("line");
                let line = line.trim_end().to_string();
                if line.is_empty() {
                    break;
                }
                head.push(line);
            }
            let length = head
                .iter()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().unwrap())
                })
                .unwrap_or(0);
            let mut request_body = vec![0; length];
            reader.read_exact(&mut request_body).expect("body");
            let mut stream = reader.into_inner();
            // A client that stopped reading (an answer too long) may have closed already.
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            (head, request_body)
        });
        (url, handle)
    }

    fn backend(url: &str, secret: Option<&[u8]>) -> WebhookBackend {
        WebhookBackend::new(WebhookSettings {
            url: url.to_string(),
            secret: secret.map(WebhookSecret::from_bytes),
            timeout: Duration::from_secs(5),
        })
        .expect("backend")
    }

    fn header<'a>(head: &'a [String], name: &str) -> Option<&'a str> {
        head.iter().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    #[test]
    fn posts_the_signed_desired_state_and_reads_the_counts_answered() {
        let (url, server) = serve_once("200 OK", r#"{"ready": 2, "warming": 1}"#);
        let outcome = backend(&url, Some(b"hook-key"))
            .apply(&target())
            .expect("success");
        let (head, body) = server.join().expect("server");
        assert!(head[0].starts_with("POST /hook HTTP/1.1"), "{head:?}");
        assert_eq!(header(&head, "idempotency-key"), Some("eu/web/7"));
        assert_eq!(header(&head, "x-prescale-plan-version"), Some("7"));
        assert_eq!(header(&head, "content-type"), Some("application/json"));
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"hook-key");
        let signed = header(&head, "x-prescale-signature").expect("signature");
        let hex = signed.strip_prefix("sha256=").expect("sha256=");
        let tag: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        ring::hmac::verify(&key, &body, &tag).expect("a valid signature of the body");
        let document: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(document["instances"], 3);
        assert_eq!(document["plan_version"], 7);
        assert_eq!(document["tiers"]["baseline"], 1);
        assert_eq!(
            outcome.counts,
            Some(super::super::remote::Counts {
                ready: 2,
                warming: 1,
                draining: 0
            })
        );
    }

    #[test]
    fn an_unsigned_hook_sends_no_signature_and_an_error_status_fails_with_the_body() {
        let (url, server) = serve_once("503 Service Unavailable", r#"{"error":"scaler busy"}"#);
        let e = backend(&url, None).apply(&target()).expect_err("failure");
        let (head, _) = server.join().expect("server");
        assert_eq!(header(&head, "x-prescale-signature"), None);
        assert!(!e.timed_out);
        assert!(
            e.message.contains("503") && e.message.contains("scaler busy"),
            "{}",
            e.message
        );
    }

    #[test]
    fn a_receiver_that_does_not_answer_times_out_and_one_that_is_gone_fails() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
        let mut b = WebhookBackend::new(WebhookSettings {
            url: url.clone(),
            secret: None,
            timeout: Duration::from_millis(300),
        })
        .expect("backend");
        let e = b.apply(&target()).expect_err("timeout");
        assert!(
            e.timed_out && e.message.contains("no answer within"),
            "{}",
            e.message
        );
        drop(listener);
        let e = b.apply(&target()).expect_err("refused");
        assert!(!e.timed_out, "{}", e.message);
        assert!(e.message.contains(&url), "{}", e.message);
    }

    #[test]
    fn a_taken_change_whose_answer_is_too_long_succeeds_without_counts() {
        let long: &'static str = Box::leak("x".repeat(ANSWER_LIMIT + 10).into_boxed_str());
        let (url, server) = serve_once("200 OK", long);
        let outcome = backend(&url, None).apply(&target()).expect("success");
        server.join().expect("server");
        assert_eq!(outcome.counts, None);
        assert!(
            outcome
                .warning
                .as_deref()
                .is_some_and(|w| w.contains("at most")),
            "{outcome:?}"
        );
    }

    #[test]
    fn secrets_stay_out_of_debug_output() {
        let settings = WebhookSettings {
            url: "http://127.0.0.1:1/".into(),
            secret: Some(WebhookSecret::from_bytes(b"very-secret-key")),
            timeout: Duration::from_secs(1),
        };
        let shown = format!("{settings:?}");
        assert!(!shown.contains("very-secret-key"), "{shown}");
        assert!(shown.contains("redacted"), "{shown}");
        let missing = WebhookSecret::from_env("PRESCALE_TEST_SURELY_UNSET_VARIABLE").unwrap_err();
        assert!(missing.to_string().starts_with("secret_env:"), "{missing}");
    }
}
