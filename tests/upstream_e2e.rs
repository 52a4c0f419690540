//! Upstreams as operators write them, through the real binary: backends by name over TLS
//! (SNI, verification against a CA bundle, a client certificate, a refused certificate of
//! another CA, and the same kind of certificate reached with `verify = false`), HTTP/2 to
//! backends (by ALPN over TLS, h2c by prior knowledge), gRPC end to end (unary calls, error
//! statuses in trailers, a server stream) to an h2c and a TLS backend, and backend names
//! re-resolved through a name server of the test's own whose answers change.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use prescale_gossip::tls::DevCa;
use prescale_keda::proto::external_scaler_client::ExternalScalerClient;
use prescale_keda::proto::external_scaler_server::{ExternalScaler, ExternalScalerServer};
use prescale_keda::proto::{
    GetMetricSpecResponse, GetMetricsRequest, GetMetricsResponse, IsActiveResponse, MetricValue,
    ScaledObjectRef,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A proxy process with its config directory.
struct Node {
    _proc: Proc,
    proxy: SocketAddr,
    admin: SocketAddr,
    log: PathBuf,
}

fn loopback_addr() -> SocketAddr {
    format!("127.0.0.1:{}", free_port()).parse().expect("addr")
}

/// Starts `prescale proxy` with region `eu`, `[proxy]` lines `proxy_extra`, and `fleets` (TOML
/// of `[[fleets]]` tables and anything after them) written into `dir`.
fn start_proxy(dir: &Path, proxy_extra: &str, fleets: &str) -> Node {
    let proxy = loopback_addr();
    let admin = loopback_addr();
    let text = format!(
        r#"
[node]
id = "upstream-1"
region = "eu"

[proxy]
listen = "{proxy}"
threads = 2
{proxy_extra}

[admin]
listen = "{admin}"

[identity]
secret = "upstream-secret-0123456789"

[[regions]]
name = "eu"
countries = ["DE"]
default_fleet = "web"

{fleets}
"#
    );
    let path = dir.join("prescale.toml");
    std::fs::write(&path, text).expect("write config");
    let log = dir.join("proxy.log");
    let proc = start(
        "proxy",
        &["proxy", "--config", path.to_str().expect("utf8")],
        &log,
    );
    wait_for_status(admin, "/readyz", 200, Duration::from_secs(20), &log);
    wait_for_listener(proxy, Duration::from_secs(20), &log);
    Node {
        _proc: proc,
        proxy,
        admin,
        log,
    }
}

/// Replaces `from` with `to` in the running proxy's config file (`start_proxy`'s, in `dir`),
/// reloads it, and returns what the reload says changed.
fn reload_replacing(dir: &Path, admin: SocketAddr, from: &str, to: &str) -> serde_json::Value {
    let path = dir.join("prescale.toml");
    let text = std::fs::read_to_string(&path).expect("config");
    let next = text.replace(from, to);
    assert_ne!(next, text, "the config has no {from:?}");
    std::fs::write(&path, next).expect("write config");
    let r = request(admin, "POST", "/api/v1/reload", &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["changed"].clone()
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write PEM");
    path.display().to_string()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// A server's TLS config: the certificate `cert_pem`/`key_pem`, ALPN h2 and http/1.1, and when
/// `client_ca` is given a client certificate it issued is required.
fn server_tls(cert_pem: &str, key_pem: &str, client_ca: Option<&str>) -> rustls::ServerConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = vec![CertificateDer::from_pem_slice(cert_pem.as_bytes()).expect("cert")];
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).expect("key");
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .expect("versions");
    let builder = match client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            roots
                .add(CertificateDer::from_pem_slice(ca.as_bytes()).expect("ca"))
                .expect("root");
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .expect("client verifier");
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(chain, key).expect("server cert");
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config
}

/// What a TLS backend saw: one line per request (`METHOD PATH VERSION sni=… client_cert=…
/// body=…`) and the handshakes it refused.
#[derive(Default)]
struct Seen {
    requests: Mutex<Vec<String>>,
    failed_handshakes: Mutex<u32>,
}

impl Seen {
    fn requests(&self) -> Vec<String> {
        self.requests.lock().expect("lock").clone()
    }
}

/// An HTTPS backend (HTTP/1.1 and h2 by ALPN) that answers each request with the line it
/// records in `seen`.
async fn tls_backend(config: rustls::ServerConfig, seen: Arc<Seen>) -> SocketAddr {
    use http_body_util::BodyExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let seen = Arc::clone(&seen);
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    *seen.failed_handshakes.lock().expect("lock") += 1;
                    return;
                };
                let (_, connection) = tls.get_ref();
                let sni = connection.server_name().unwrap_or("-").to_string();
                let client_cert = connection
                    .peer_certificates()
                    .is_some_and(|certs| !certs.is_empty());
                let service = hyper::service::service_fn(
                    move |request: http::Request<hyper::body::Incoming>| {
                        let seen = Arc::clone(&seen);
                        let sni = sni.clone();
                        async move {
                            let method = request.method().clone();
                            let path = request.uri().path().to_string();
                            let version = request.version();
                            let body = request.into_body().collect().await?.to_bytes();
                            let line = format!(
                            "{method} {path} {version:?} sni={sni} client_cert={client_cert} body={}",
                            body.len()
                        );
                            seen.requests.lock().expect("lock").push(line.clone());
                            Ok::<_, hyper::Error>(http::Response::new(http_body_util::Full::new(
                                bytes::Bytes::from(line),
                            )))
                        }
                    },
                );
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                .await;
            });
        }
    });
    addr
}

#[test]
fn tls_backends_are_verified_by_name_and_ca_and_get_the_client_certificate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = DevCa::generate().expect("CA");
    let other_ca = DevCa::generate().expect("other CA");
    let server = ca.issue("localhost").expect("server cert");
    let impostor = other_ca.issue("localhost").expect("impostor cert");
    let client = ca.issue("proxy-client").expect("client cert");
    let ca_file = write(dir.path(), "ca.pem", ca.cert_pem());
    let client_cert = write(dir.path(), "client.pem", &client.cert_pem);
    let client_key = write(dir.path(), "client.key.pem", &client.key_pem);

    let runtime = runtime();
    let genuine = Arc::new(Seen::default());
    let fake = Arc::new(Seen::default());
    let unchecked = Arc::new(Seen::default());
    let (genuine_addr, fake_addr, unchecked_addr) = runtime.block_on(async {
        (
            tls_backend(
                server_tls(&server.cert_pem, &server.key_pem, Some(ca.cert_pem())),
                Arc::clone(&genuine),
            )
            .await,
            tls_backend(
                server_tls(&impostor.cert_pem, &impostor.key_pem, None),
                Arc::clone(&fake),
            )
            .await,
            tls_backend(
                server_tls(&impostor.cert_pem, &impostor.key_pem, None),
                Arc::clone(&unchecked),
            )
            .await,
        )
    });
    let tls = format!(
        "ca_file = \"{ca_file}\", client_cert = \"{client_cert}\", client_key = \"{client_key}\""
    );
    // web: HTTP/2 when offered (auto); legacy: the same backend over HTTP/1.1; fake: a backend
    // whose certificate another CA issued, by address with the name to verify set (one address:
    // `localhost` may also stand for ::1, where nothing listens). Health checks every 200 ms
    // except on fake, whose one startup check cannot mark it down, so that its requests reach
    // the handshake.
    let fleets = format!(
        r#"
[[fleets]]
name = "web"
region = "eu"
backends = ["localhost:{genuine}"]
health_check = {{ interval_ms = 200, timeout_ms = 1000 }}
upstream = {{ protocol = "auto", tls = {{ {tls} }} }}

[[fleets]]
name = "legacy"
region = "eu"
backends = ["localhost:{genuine}"]
health_check = {{ interval_ms = 200, timeout_ms = 1000 }}
upstream = {{ protocol = "http1", tls = {{ {tls} }} }}

[[fleets]]
name = "fake"
region = "eu"
backends = ["127.0.0.1:{fake}"]
retries = 0
health_check = {{ interval_ms = 600000, timeout_ms = 1000 }}
upstream = {{ tls = {{ server_name = "localhost", {tls} }} }}

[[fleets]]
name = "unchecked"
region = "eu"
backends = ["127.0.0.1:{unchecked}"]
health_check = {{ interval_ms = 600000, timeout_ms = 1000 }}
upstream = {{ tls = {{ server_name = "localhost", verify = false }} }}

[[profiles]]
name = "legacy"
[[profiles]]
name = "fake"
[[profiles]]
name = "unchecked"

[[routes]]
profile = "legacy"
fleet = "legacy"
[[routes]]
profile = "fake"
fleet = "fake"
[[routes]]
profile = "unchecked"
fleet = "unchecked"

[assignment]
new_user_min_requests = 0
rules = [{{ path_prefix = "/legacy", profile = "legacy" }}, {{ path_prefix = "/fake", profile = "fake" }}, {{ path_prefix = "/unchecked", profile = "unchecked" }}]
"#,
        genuine = genuine_addr.port(),
        fake = fake_addr.port(),
        unchecked = unchecked_addr.port(),
    );
    // Four requests from this address at once (the burst and one), and (almost) no refill: a
    // request admitted twice
    // (on the direct path, then again on the general one) would run out early.
    let node = start_proxy(
        dir.path(),
        "client_limits = { requests_per_sec = 0.001, burst = 3 }",
        &fleets,
    );

    // A plain GET and a POST with a body, both of the direct path's kind, reach the backend over
    // TLS as HTTP/2 with the backend's name as SNI and the client certificate.
    let r = get(node.proxy, "/api/items", &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.text(),
        "GET /api/items HTTP/2.0 sni=localhost client_cert=true body=0"
    );
    let body = vec![b'x'; 3000];
    let r = request(node.proxy, "POST", "/api/orders", &[], &body);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.text(),
        "POST /api/orders HTTP/2.0 sni=localhost client_cert=true body=3000"
    );
    // protocol = "http1" stays HTTP/1.1 over TLS.
    let r = get(node.proxy, "/legacy/page", &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.text(),
        "GET /legacy/page HTTP/1.1 sni=localhost client_cert=true body=0"
    );
    // Health checks go over the backend's TLS peer too.
    wait_until("health checks over TLS", Duration::from_secs(10), || {
        genuine
            .requests()
            .iter()
            .any(|l| l.starts_with("GET /healthz HTTP/2.0 sni=localhost client_cert=true"))
    });

    // A certificate from another CA is refused: the client gets 502 and nothing reaches it.
    let r = get(node.proxy, "/fake/x", &[]);
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(fake.requests().is_empty(), "{:?}", fake.requests());
    assert!(*fake.failed_handshakes.lock().expect("lock") >= 1);
    // The four requests above were each admitted once: the fifth is the first refused.
    let r = get(node.proxy, "/api/items", &[]);
    assert_eq!(r.status, 429, "{}", r.text());
    // Logged once the failed request is over, just after its answer went out.
    wait_until(
        "the log to name the certificate problem",
        Duration::from_secs(5),
        || {
            std::fs::read_to_string(&node.log)
                .unwrap_or_default()
                .contains("invalid peer certificate")
        },
    );
    wait_until(
        "the refused backend's 502 counted",
        Duration::from_secs(5),
        || {
            let metrics = get(node.admin, "/metrics", &[]).text();
            metric_sum(
                &metrics,
                "prescale_requests_total",
                &[("fleet", "fake"), ("status", "5xx")],
            ) >= 1.0
        },
    );

    // The rate limit lifted by a reload; then `verify = false` reaches a backend whose
    // certificate no trusted CA issued (the same kind of certificate `fake` was refused for).
    assert_eq!(
        reload_replacing(
            dir.path(),
            node.admin,
            "client_limits = { requests_per_sec = 0.001, burst = 3 }",
            ""
        ),
        serde_json::json!(["proxy.client_limits"])
    );
    let r = get(node.proxy, "/unchecked/x", &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.text(),
        "GET /unchecked/x HTTP/1.1 sni=localhost client_cert=false body=0"
    );
    assert!(std::fs::read_to_string(&node.log)
        .unwrap_or_default()
        .contains("upstream.tls.verify = false"));
}

#[test]
fn unusable_upstream_tls_files_stop_the_proxy_naming_the_fleet_and_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = DevCa::generate().expect("CA");
    let cert = ca.issue("proxy-client").expect("cert");
    let other = ca.issue("someone-else").expect("other");
    let cert_file = write(dir.path(), "client.pem", &cert.cert_pem);
    let other_key = write(dir.path(), "other.key.pem", &other.key_pem);
    let config = dir.path().join("bad.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[identity]
secret = "upstream-secret-0123456789"
[[regions]]
name = "eu"
countries = ["DE"]
[[fleets]]
name = "web"
region = "eu"
backends = ["localhost:8443"]
upstream = {{ tls = {{ client_cert = "{cert_file}", client_key = "{other_key}" }} }}
"#
        ),
    )
    .expect("write");
    let out = std::process::Command::new(bin())
        .args(["proxy", "--config", config.to_str().expect("utf8")])
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("fleet `web`"), "{stderr}");
    assert!(stderr.contains("other.key.pem"), "{stderr}");
}

/// A KEDA external scaler used as a gRPC backend: `GetMetrics` answers the metric name's length
/// and the backend's `tag`; `IsActive` on the object `missing` is NotFound; `StreamIsActive`
/// sends three answers and ends. `GetMetrics` echoes the call's `x-tier` metadata as
/// `x-tier-seen`.
struct EchoScaler {
    tag: &'static str,
}

#[tonic::async_trait]
impl ExternalScaler for EchoScaler {
    async fn is_active(
        &self,
        request: tonic::Request<ScaledObjectRef>,
    ) -> Result<tonic::Response<IsActiveResponse>, tonic::Status> {
        if request.get_ref().name == "missing" {
            return Err(tonic::Status::not_found("no scaled object `missing`"));
        }
        Ok(tonic::Response::new(IsActiveResponse { result: true }))
    }

    type StreamIsActiveStream =
        tokio_stream::wrappers::ReceiverStream<Result<IsActiveResponse, tonic::Status>>;

    async fn stream_is_active(
        &self,
        _request: tonic::Request<ScaledObjectRef>,
    ) -> Result<tonic::Response<Self::StreamIsActiveStream>, tonic::Status> {
        let (send, receive) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            for i in 0..3 {
                let _ = send.send(Ok(IsActiveResponse { result: i % 2 == 0 })).await;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        Ok(tonic::Response::new(
            tokio_stream::wrappers::ReceiverStream::new(receive),
        ))
    }

    async fn get_metric_spec(
        &self,
        _request: tonic::Request<ScaledObjectRef>,
    ) -> Result<tonic::Response<GetMetricSpecResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("not in this test"))
    }

    type StreamMetricSpecStream =
        tokio_stream::wrappers::ReceiverStream<Result<GetMetricSpecResponse, tonic::Status>>;

    async fn stream_metric_spec(
        &self,
        _request: tonic::Request<ScaledObjectRef>,
    ) -> Result<tonic::Response<Self::StreamMetricSpecStream>, tonic::Status> {
        Err(tonic::Status::unimplemented("not in this test"))
    }

    async fn get_metrics(
        &self,
        request: tonic::Request<GetMetricsRequest>,
    ) -> Result<tonic::Response<GetMetricsResponse>, tonic::Status> {
        let name = request.get_ref().metric_name.clone();
        let mut response = tonic::Response::new(GetMetricsResponse {
            metric_values: vec![MetricValue {
                metric_name: format!("{}:{name}", self.tag),
                metric_value: 0,
                metric_value_float: name.len() as f64,
            }],
        });
        if let Some(tier) = request.metadata().get("x-tier") {
            response.metadata_mut().insert("x-tier-seen", tier.clone());
        }
        Ok(response)
    }
}

/// Serves an [`EchoScaler`] and the gRPC health protocol on a loopback port, over TLS when
/// `tls` holds a certificate and key; the reporter sets what the health service answers.
async fn grpc_backend(
    tag: &'static str,
    tls: Option<(&str, &str)>,
) -> (SocketAddr, tonic_health::server::HealthReporter) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let mut builder = tonic::transport::Server::builder();
    if let Some((cert, key)) = tls {
        builder = builder
            .tls_config(
                tonic::transport::ServerTlsConfig::new()
                    .identity(tonic::transport::Identity::from_pem(cert, key)),
            )
            .expect("server TLS");
    }
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status(GRPC_SERVICE, tonic_health::ServingStatus::Serving)
        .await;
    let service = WithHealth {
        health,
        scaler: ExternalScalerServer::new(EchoScaler { tag }),
    };
    tokio::spawn(builder.serve_with_incoming(
        service,
        tonic::transport::server::TcpIncoming::from(listener),
    ));
    (addr, reporter)
}

/// The health service's calls to `health`, every other call to `scaler` (tonic's own router is
/// behind a feature the workspace does not build).
#[derive(Clone)]
struct WithHealth<H> {
    health: H,
    scaler: ExternalScalerServer<EchoScaler>,
}

type GrpcRequest = tonic::codegen::http::Request<tonic::body::Body>;
type GrpcResponse = tonic::codegen::http::Response<tonic::body::Body>;

impl<H> tonic::codegen::Service<GrpcRequest> for WithHealth<H>
where
    H: tonic::codegen::Service<
        GrpcRequest,
        Response = GrpcResponse,
        Error = std::convert::Infallible,
        Future = tonic::codegen::BoxFuture<GrpcResponse, std::convert::Infallible>,
    >,
{
    type Response = GrpcResponse;
    type Error = std::convert::Infallible;
    type Future = tonic::codegen::BoxFuture<GrpcResponse, std::convert::Infallible>;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        // Both generated servers are always ready.
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: GrpcRequest) -> Self::Future {
        match request.uri().path().starts_with("/grpc.health.v1.Health/") {
            true => self.health.call(request),
            false => self.scaler.call(request),
        }
    }
}

/// The service name the backends' health service reports on.
const GRPC_SERVICE: &str = "externalscaler.ExternalScaler";

fn object(name: &str) -> ScaledObjectRef {
    ScaledObjectRef {
        name: name.into(),
        namespace: "shop".into(),
        scaler_metadata: Default::default(),
    }
}

#[test]
fn grpc_passes_through_to_h2c_and_tls_backends() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = DevCa::generate().expect("CA");
    let server = ca.issue("localhost").expect("server cert");
    let ca_file = write(dir.path(), "ca.pem", ca.cert_pem());
    let runtime = runtime();
    let (cleartext, secure) = runtime.block_on(async {
        (
            grpc_backend("h2c", None).await.0,
            grpc_backend("tls", Some((&server.cert_pem, &server.key_pem)))
                .await
                .0,
        )
    });
    // gRPC backends answer a plain GET of the health path with an HTTP 200 carrying a gRPC
    // status, which is enough for the check to pass.
    let fleets = format!(
        r#"
[[fleets]]
name = "web"
region = "eu"
backends = ["{cleartext}"]
upstream = {{ protocol = "http2" }}

[[fleets]]
name = "secure"
region = "eu"
backends = ["localhost:{secure}"]
upstream = {{ protocol = "http2", tls = {{ ca_file = "{ca_file}" }} }}

[[profiles]]
name = "secure"
[[routes]]
profile = "secure"
fleet = "secure"

[assignment]
new_user_min_requests = 0
rules = [{{ header = {{ name = "x-tier", value = "tls" }}, profile = "secure" }}]
"#,
        secure = secure.port(),
    );
    let node = start_proxy(dir.path(), "h2c = true", &fleets);
    let endpoint = format!("http://{}", node.proxy);
    runtime.block_on(async {
        let channel = tonic::transport::Channel::from_shared(endpoint)
            .expect("endpoint")
            .connect()
            .await
            .expect("connect to the proxy");
        let mut client = ExternalScalerClient::new(channel);
        for (tier, tag) in [("plain", "h2c"), ("tls", "tls")] {
            let mut call = tonic::Request::new(GetMetricsRequest {
                scaled_object_ref: Some(object("web")),
                metric_name: "requests-per-second".into(),
            });
            call.metadata_mut()
                .insert("x-tier", tier.parse().expect("metadata"));
            let response = client.get_metrics(call).await.expect("GetMetrics");
            assert_eq!(
                response
                    .metadata()
                    .get("x-tier-seen")
                    .and_then(|v| v.to_str().ok()),
                Some(tier)
            );
            let values = response.into_inner().metric_values;
            assert_eq!(values.len(), 1);
            assert_eq!(values[0].metric_name, format!("{tag}:requests-per-second"));
            assert_eq!(values[0].metric_value_float, 19.0);

            // An error status travels in the response's trailers and arrives whole.
            let mut call = tonic::Request::new(object("missing"));
            call.metadata_mut()
                .insert("x-tier", tier.parse().expect("metadata"));
            let status = client.is_active(call).await.expect_err("NotFound");
            assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}");
            assert_eq!(status.message(), "no scaled object `missing`");

            // A server stream: every message, then its end.
            let mut call = tonic::Request::new(object("web"));
            call.metadata_mut()
                .insert("x-tier", tier.parse().expect("metadata"));
            let mut stream = client
                .stream_is_active(call)
                .await
                .expect("StreamIsActive")
                .into_inner();
            let mut results = Vec::new();
            while let Some(message) = stream.message().await.expect("stream message") {
                results.push(message.result);
            }
            assert_eq!(results, [true, false, true], "tier {tier}");
        }
    });
    // Counted when each response is logged, just after it went out.
    wait_until(
        "the TLS fleet's calls counted",
        Duration::from_secs(5),
        || {
            let metrics = get(node.admin, "/metrics", &[]).text();
            metric_sum(&metrics, "prescale_requests_total", &[("fleet", "secure")]) >= 3.0
        },
    );
}

/// A name server for one zone: `A` queries for `name` get `addresses` (TTL 1 s) or, while
/// `failing`, SERVFAIL; other names NXDOMAIN; other types an empty answer.
struct Zone {
    name: String,
    addresses: Mutex<Vec<std::net::Ipv4Addr>>,
    failing: std::sync::atomic::AtomicBool,
    queries: std::sync::atomic::AtomicU64,
}

impl Zone {
    fn set(&self, addresses: &[&str]) {
        *self.addresses.lock().expect("lock") = addresses
            .iter()
            .map(|a| a.parse().expect("IPv4 address"))
            .collect();
    }

    /// The answer to one query (`None`: not a query this server can read).
    fn answer(&self, query: &[u8]) -> Option<Vec<u8>> {
        if query.len() < 12 || query[2] & 0x80 != 0 {
            return None;
        }
        // The question: labels up to the root, then type and class.
        let mut at = 12;
        let mut labels = Vec::new();
        loop {
            let len = usize::from(*query.get(at)?);
            at += 1;
            if len == 0 {
                break;
            }
            labels.push(String::from_utf8_lossy(query.get(at..at + len)?).to_ascii_lowercase());
            at += len;
        }
        let qtype = u16::from_be_bytes([*query.get(at)?, *query.get(at + 1)?]);
        let question_end = at + 4;
        query.get(..question_end)?;
        self.queries
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let known = labels.join(".") == self.name;
        let failing = self.failing.load(std::sync::atomic::Ordering::Relaxed);
        let addresses = self.addresses.lock().expect("lock").clone();
        let answers: Vec<std::net::Ipv4Addr> = if known && !failing && qtype == 1 {
            addresses
        } else {
            Vec::new()
        };
        let rcode = match (known, failing) {
            (_, true) => 2,
            (false, _) => 3,
            (true, false) => 0,
        };
        let mut out = Vec::with_capacity(question_end + 16 * answers.len());
        out.extend_from_slice(&query[..2]);
        out.push(0x81 | (query[2] & 0x01)); // QR, opcode 0, AA, RD as asked
        out.push(0x80 | rcode); // RA
        out.extend_from_slice(&[0, 1]);
        out.extend_from_slice(&(answers.len() as u16).to_be_bytes());
        out.extend_from_slice(&[0, 0, 0, 0]);
        out.extend_from_slice(&query[12..question_end]);
        for ip in answers {
            out.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 1, 0, 4]);
            out.extend_from_slice(&ip.octets());
        }
        Some(out)
    }
}

async fn name_server(zone: Arc<Zone>) -> SocketAddr {
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = socket.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut buf = [0u8; 1500];
        loop {
            let Ok((len, from)) = socket.recv_from(&mut buf).await else {
                return;
            };
            if let Some(answer) = zone.answer(&buf[..len]) {
                let _ = socket.send_to(&answer, from).await;
            }
        }
    });
    addr
}

/// An HTTP backend on `addr` that answers every request with `name`.
async fn named_backend(addr: SocketAddr, name: &'static str) {
    let listener = tokio::net::TcpListener::bind(addr).await.expect("bind");
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |_request| async move {
                    Ok::<_, hyper::Error>(http::Response::new(http_body_util::Full::new(
                        bytes::Bytes::from(name),
                    )))
                });
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                .await;
            });
        }
    });
}

/// Which backends answered `count` requests.
fn answered_by(proxy: SocketAddr, count: usize) -> std::collections::BTreeSet<String> {
    (0..count)
        .map(|_| {
            let r = get(proxy, "/api/x", &[]);
            assert_eq!(r.status, 200, "{}", r.text());
            r.text()
        })
        .collect()
}

#[test]
fn backend_names_are_re_resolved_and_every_address_is_used() {
    let dir = tempfile::tempdir().expect("tempdir");
    let runtime = runtime();
    let zone = Arc::new(Zone {
        name: "api.prescale.test".into(),
        addresses: Mutex::new(Vec::new()),
        failing: Default::default(),
        queries: Default::default(),
    });
    zone.set(&["127.0.0.2"]);
    // Two backends on one port at two loopback addresses: the name decides which are used.
    let port = free_port();
    let dns = runtime.block_on(async {
        named_backend(format!("127.0.0.2:{port}").parse().expect("addr"), "two").await;
        named_backend(format!("127.0.0.3:{port}").parse().expect("addr"), "three").await;
        name_server(Arc::clone(&zone)).await
    });
    let fleets = format!(
        r#"
[[fleets]]
name = "web"
region = "eu"
backends = ["api.prescale.test:{port}"]
resolve = true

[resolver]
nameservers = ["{dns}"]
refresh_secs = 1
timeout_ms = 500
"#
    );
    let node = start_proxy(dir.path(), "", &fleets);
    // Resolved before the listener opened: the first requests are served.
    assert_eq!(answered_by(node.proxy, 4), ["two".to_string()].into());

    // A second address joins within a refresh or two, and both take requests.
    zone.set(&["127.0.0.2", "127.0.0.3"]);
    wait_until("both addresses to serve", Duration::from_secs(10), || {
        answered_by(node.proxy, 6).len() == 2
    });

    // The first leaves: only the second serves.
    zone.set(&["127.0.0.3"]);
    wait_until(
        "only the remaining address to serve",
        Duration::from_secs(10),
        || answered_by(node.proxy, 6) == ["three".to_string()].into(),
    );

    // While the name server fails, the last addresses stay and the failures are counted.
    zone.failing
        .store(true, std::sync::atomic::Ordering::Relaxed);
    wait_until(
        "failed resolutions to be counted",
        Duration::from_secs(10),
        || {
            let metrics = get(node.admin, "/metrics", &[]).text();
            metric_sum(
                &metrics,
                "prescale_backend_resolutions_total",
                &[("fleet", "web"), ("result", "failed")],
            ) >= 2.0
        },
    );
    assert_eq!(answered_by(node.proxy, 6), ["three".to_string()].into());
    let metrics = get(node.admin, "/metrics", &[]).text();
    assert!(
        metric_sum(
            &metrics,
            "prescale_backend_resolutions_total",
            &[("fleet", "web"), ("result", "succeeded")],
        ) >= 3.0
    );
    assert!(zone.queries.load(std::sync::atomic::Ordering::Relaxed) >= 4);
    let log = std::fs::read_to_string(&node.log).unwrap_or_default();
    assert!(log.contains("backend name did not resolve"), "{log}");

    // A reload puts an address and another name (not resolving) in place of the name: the
    // name's addresses leave.
    assert_eq!(
        reload_replacing(
            dir.path(),
            node.admin,
            &format!("backends = [\"api.prescale.test:{port}\"]"),
            &format!("backends = [\"127.0.0.2:{port}\", \"other.prescale.test:{port}\"]"),
        ),
        serde_json::json!(["fleets[web].backends: resolving"])
    );
    wait_until(
        "the reloaded address to be the only one serving",
        Duration::from_secs(10),
        || answered_by(node.proxy, 6) == ["two".to_string()].into(),
    );
}

#[test]
fn grpc_health_checks_follow_what_the_backend_reports() {
    let dir = tempfile::tempdir().expect("tempdir");
    let runtime = runtime();
    let (backend, reporter) = runtime.block_on(grpc_backend("h2c", None));
    let fleets = format!(
        r#"
[[fleets]]
name = "web"
region = "eu"
backends = ["{backend}"]
upstream = {{ protocol = "http2" }}
health_check = {{ grpc_service = "{GRPC_SERVICE}", interval_ms = 100, timeout_ms = 500, unhealthy_threshold = 1 }}
"#
    );
    let node = start_proxy(dir.path(), "h2c = true", &fleets);
    let healthy = || {
        let metrics = get(node.admin, "/metrics", &[]).text();
        metric_sum(&metrics, "prescale_backend_healthy", &[("fleet", "web")])
    };
    let call = || {
        runtime.block_on(async {
            let channel = tonic::transport::Channel::from_shared(format!("http://{}", node.proxy))
                .expect("endpoint")
                .connect()
                .await
                .expect("connect to the proxy");
            ExternalScalerClient::new(channel)
                .is_active(tonic::Request::new(object("web")))
                .await
        })
    };
    assert_eq!(healthy(), 1.0);
    assert!(call().expect("IsActive while serving").into_inner().result);

    runtime.block_on(
        reporter.set_service_status(GRPC_SERVICE, tonic_health::ServingStatus::NotServing),
    );
    wait_until(
        "NOT_SERVING to mark the backend unhealthy",
        Duration::from_secs(10),
        || healthy() == 0.0,
    );
    // The proxy's 503 reaches the gRPC client as a status it can read.
    let refused = call().expect_err("no healthy backend");
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    assert!(
        refused.message().starts_with("no backend of the fleet"),
        "{refused:?}"
    );
    let log = std::fs::read_to_string(&node.log).unwrap_or_default();
    assert!(log.contains("NOT_SERVING"), "{log}");

    runtime
        .block_on(reporter.set_service_status(GRPC_SERVICE, tonic_health::ServingStatus::Serving));
    wait_until(
        "SERVING to mark it healthy again",
        Duration::from_secs(10),
        || healthy() == 1.0,
    );
    assert!(
        call()
            .expect("IsActive once serving again")
            .into_inner()
            .result
    );
}

/// `proxy.keepalive_requests` holds for HTTP/2 clients too: after that many streams a
/// connection gets a GOAWAY (streams accepted finish), and the next request needs a new
/// connection, which is served.
#[test]
fn an_http2_client_connection_carries_keepalive_requests_streams() {
    let dir = tempfile::tempdir().expect("tempdir");
    let runtime = runtime();
    let backend = loopback_addr();
    runtime.block_on(named_backend(backend, "one"));
    let fleets = format!(
        r#"
[[fleets]]
name = "web"
region = "eu"
backends = ["{backend}"]
"#
    );
    let node = start_proxy(dir.path(), "h2c = true\nkeepalive_requests = 3", &fleets);
    let proxy = node.proxy;
    let outcomes = runtime.block_on(async move {
        let stream = tokio::net::TcpStream::connect(proxy)
            .await
            .expect("connect");
        let (mut sender, connection) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(stream),
        )
        .await
        .expect("h2c handshake");
        let connection = tokio::spawn(connection);
        let mut outcomes = Vec::new();
        for _ in 0..6 {
            let request = http::Request::get(format!("http://{proxy}/x"))
                .body(http_body_util::Empty::<bytes::Bytes>::new())
                .expect("request");
            let outcome = match sender.ready().await {
                Err(e) => Err(e.to_string()),
                Ok(()) => sender
                    .send_request(request)
                    .await
                    .map(|r| r.status().as_u16())
                    .map_err(|e| e.to_string()),
            };
            outcomes.push(outcome);
        }
        // The proxy closes the connection once its streams are done.
        let closed = tokio::time::timeout(Duration::from_secs(10), connection).await;
        (outcomes, closed.is_ok())
    });
    let (outcomes, closed) = outcomes;
    assert_eq!(outcomes[..3], [Ok(200), Ok(200), Ok(200)], "{outcomes:?}");
    assert!(
        outcomes[3..].iter().all(Result::is_err),
        "streams beyond the limit on one connection: {outcomes:?}"
    );
    assert!(closed, "the connection stayed open");
    let (status, version, _) = h2c_get(proxy, "/x", "u");
    assert_eq!((status, version), (200, http::Version::HTTP_2));
}
