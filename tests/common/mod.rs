//! Helpers for end-to-end tests: free loopback ports, the real `prescale` binary as child
//! processes (killed when dropped), and a small HTTP/1.1 client over plain TCP that can also send
//! the malformed requests a well-behaved client library refuses to build.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_prescale")
}

pub fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local addr").port()
}

/// A child process killed (SIGKILL) when dropped, unless it already exited.
pub struct Proc {
    pub child: Child,
    pub name: String,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status();
        assert!(
            status.map(|s| s.success()).unwrap_or(false),
            "kill -{signal} {} failed",
            self.name
        );
    }

    /// Waits for the process to exit; panics after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not exit within {timeout:?}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Starts `prescale backend` on a free port (or `port`), waiting for its `listening on` line.
pub fn start_backend(name: &str, port: Option<u16>, extra: &[&str]) -> (Proc, SocketAddr) {
    let listen = format!("127.0.0.1:{}", port.unwrap_or(0));
    let mut child = Command::new(bin())
        .args([
            "backend",
            "--listen",
            &listen,
            "--name",
            name,
            "--threads",
            "1",
        ])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn prescale backend");
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("read backend address");
    let addr: SocketAddr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("backend printed {line:?}"))
        .parse()
        .expect("backend address");
    (
        Proc {
            child,
            name: format!("backend {name}"),
        },
        addr,
    )
}

/// Starts `prescale ARGS...` with stderr captured into a file (returned path) for diagnostics.
pub fn start(name: &str, args: &[&str], log: &Path) -> Proc {
    let log_file = std::fs::File::create(log).expect("create log file");
    let child = Command::new(bin())
        .args(args)
        .env("PRESCALE_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log_file)
        .spawn()
        .expect("spawn prescale");
    Proc {
        child,
        name: name.to_string(),
    }
}

/// Polls `GET path` on `addr` until it answers `status`; panics with the process log otherwise.
pub fn wait_for_status(addr: SocketAddr, path: &str, status: u16, timeout: Duration, log: &Path) {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(response) = try_request(addr, "GET", path, &[], b"") {
            if response.status == status {
                return;
            }
        }
        if Instant::now() > deadline {
            let log = std::fs::read_to_string(log).unwrap_or_default();
            panic!("{addr}{path} did not answer {status} within {timeout:?}; log:\n{log}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Polls `done` every 200 ms until it holds; panics naming `what` after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Waits until `addr` accepts TCP connections; panics with the process log otherwise.
pub fn wait_for_listener(addr: SocketAddr, timeout: Duration, log: &Path) {
    let deadline = Instant::now() + timeout;
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        if Instant::now() > deadline {
            let log = std::fs::read_to_string(log).unwrap_or_default();
            panic!("{addr} did not accept connections within {timeout:?}; log:\n{log}");
        }
        std::thread::sleep(Duration::from_millis(30));
    }
}

#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("response is not JSON ({e}): {}", self.text()))
    }
}

pub fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> HttpResponse {
    request(addr, "GET", path, headers, b"")
}

pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> HttpResponse {
    try_request(addr, method, path, headers, body)
        .unwrap_or_else(|e| panic!("{method} {addr}{path}: {e}"))
}

pub fn try_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<HttpResponse> {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if !body.is_empty() || method == "POST" || method == "PUT" {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    let mut raw = head.into_bytes();
    raw.extend_from_slice(body);
    raw_request(addr, &raw)
}

/// Sends raw bytes and parses whatever HTTP/1.1 response comes back (the server closes).
pub fn raw_request(addr: SocketAddr, raw: &[u8]) -> std::io::Result<HttpResponse> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    stream.write_all(raw)?;
    read_http1_response(&mut BufReader::new(stream), false)
}

/// One client connection kept open across requests (HTTP/1.1 keep-alive).
pub struct KeepAliveClient {
    reader: BufReader<TcpStream>,
}

impl KeepAliveClient {
    pub fn connect(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .expect("read timeout");
        KeepAliveClient {
            reader: BufReader::new(stream),
        }
    }

    /// Sends one request (`raw`, complete) and reads its response; `head`: a HEAD request,
    /// whose response has no body whatever its `Content-Length`.
    pub fn send(&mut self, raw: &[u8], head: bool) -> HttpResponse {
        self.write(raw);
        self.receive(head)
    }

    /// Sends bytes without waiting for anything.
    pub fn write(&mut self, raw: &[u8]) {
        self.reader.get_mut().write_all(raw).expect("write request");
    }

    /// Reads the next response.
    pub fn receive(&mut self, head: bool) -> HttpResponse {
        read_http1_response(&mut self.reader, head).expect("read response")
    }

    /// The connection itself (nothing is left buffered between responses).
    pub fn into_stream(self) -> TcpStream {
        self.reader.into_inner()
    }
}

/// Reads one HTTP/1.1 response: framed by `Content-Length`, chunked, or (neither) up to the close.
pub fn read_http1_response(
    reader: &mut BufReader<TcpStream>,
    head: bool,
) -> std::io::Result<HttpResponse> {
    let mut status_line = String::new();
    reader.read_line(&mut status_line)?;
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {status_line:?}")))?;
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            break;
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            headers.push((name.trim().to_string(), value.trim().to_string()));
        }
    }
    let find = |name: &str| {
        headers
            .iter()
            .find(|(n, _): &&(String, String)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    let mut body = Vec::new();
    let length = find("content-length").and_then(|v| v.parse::<usize>().ok());
    let chunked = find("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
    match (head, length, chunked) {
        (true, _, _) => {}
        (false, Some(length), _) => {
            body.resize(length, 0);
            reader.read_exact(&mut body)?;
        }
        (false, None, true) => loop {
            let mut size_line = String::new();
            reader.read_line(&mut size_line)?;
            let size = usize::from_str_radix(size_line.trim().split(';').next().unwrap_or("0"), 16)
                .map_err(|e| std::io::Error::other(format!("bad chunk size {size_line:?}: {e}")))?;
            if size == 0 {
                // Trailer fields, up to the empty line.
                loop {
                    let mut trailer = String::new();
                    if reader.read_line(&mut trailer)? == 0 || trailer.trim_end().is_empty() {
                        break;
                    }
                }
                break;
            }
            let mut chunk = vec![0; size];
            reader.read_exact(&mut chunk)?;
            body.extend_from_slice(&chunk);
            let mut crlf = [0u8; 2];
            reader.read_exact(&mut crlf)?;
        },
        (false, None, false) => {
            reader.read_to_end(&mut body)?;
        }
    }
    Ok(HttpResponse {
        status,
        headers,
        body,
    })
}

/// The value of the Prometheus sample `name{labels}` where every `label="value"` in `want` matches;
/// the sum over all matching series.
pub fn metric_sum(metrics: &str, name: &str, want: &[(&str, &str)]) -> f64 {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, labels) = match series.split_once('{') {
                Some((m, rest)) => (m, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            if metric != name {
                return None;
            }
            let all = want
                .iter()
                .all(|(k, v)| labels.split(',').any(|pair| pair == format!("{k}=\"{v}\"")));
            all.then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}

/// `GET path` over cleartext HTTP/2 with prior knowledge (h2c): status, HTTP version, body.
pub fn h2c_get(addr: SocketAddr, path: &str, user: &str) -> (u16, http::Version, Vec<u8>) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        use http_body_util::BodyExt;
        let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let (mut sender, connection) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(stream),
        )
        .await
        .expect("h2c handshake");
        tokio::spawn(connection);
        let request = http::Request::get(format!("http://{addr}{path}"))
            .header("x-user-id", user)
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .expect("request");
        let response = sender.send_request(request).await.expect("h2 response");
        let status = response.status().as_u16();
        let version = response.version();
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes()
            .to_vec();
        (status, version, body)
    })
}

/// A self-signed certificate for `localhost` and `127.0.0.1`, made at test time, with its PEM
/// files written to a directory.
pub struct TestCert {
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    pub der: rustls::pki_types::CertificateDer<'static>,
}

/// Makes a fresh self-signed certificate and writes `NAME.pem` and `NAME.key.pem` into `dir`.
pub fn self_signed_cert(dir: &Path, name: &str) -> TestCert {
    let rcgen::CertifiedKey { cert, signing_key } =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .expect("generate a self-signed certificate");
    let cert_path = dir.join(format!("{name}.pem"));
    let key_path = dir.join(format!("{name}.key.pem"));
    std::fs::write(&cert_path, cert.pem()).expect("write certificate");
    std::fs::write(&key_path, signing_key.serialize_pem()).expect("write key");
    TestCert {
        cert_path,
        key_path,
        der: cert.der().clone(),
    }
}

/// A rustls client that trusts exactly `trusted` and offers `alpn` (most preferred first).
pub fn tls_client(
    trusted: &[rustls::pki_types::CertificateDer<'static>],
    alpn: &[&[u8]],
) -> std::sync::Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in trusted {
        roots.add(cert.clone()).expect("add a trusted certificate");
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    std::sync::Arc::new(config)
}

/// Connects to `addr` and completes a TLS handshake for `localhost`.
pub async fn tls_connect(
    addr: SocketAddr,
    client: std::sync::Arc<rustls::ClientConfig>,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = rustls::pki_types::ServerName::try_from("localhost")
        .map_err(std::io::Error::other)?
        .to_owned();
    tokio::time::timeout(
        Duration::from_secs(10),
        tokio_rustls::TlsConnector::from(client).connect(name, tcp),
    )
    .await
    .map_err(|_| std::io::Error::other("TLS handshake timed out"))?
}

/// The protocol the server picked by ALPN on a client TLS connection.
pub fn negotiated_alpn(
    stream: &tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
) -> Option<Vec<u8>> {
    stream.get_ref().1.alpn_protocol().map(<[u8]>::to_vec)
}

/// An HTTPS response: status, the HTTP version it came over, and body.
#[derive(Debug)]
pub struct HttpsResponse {
    pub status: u16,
    pub version: http::Version,
    pub body: Vec<u8>,
}

impl HttpsResponse {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "response is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// Awaits a response (from a request sender of either HTTP version) and reads its body.
pub async fn read_response<B>(
    send: impl std::future::Future<Output = hyper::Result<http::Response<B>>>,
) -> HttpsResponse
where
    B: hyper::body::Body,
    B::Error: std::fmt::Debug,
{
    use http_body_util::BodyExt;
    let response = send.await.expect("response");
    let status = response.status().as_u16();
    let version = response.version();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("response body")
        .to_bytes()
        .to_vec();
    HttpsResponse {
        status,
        version,
        body,
    }
}

/// A `GET` request for `path` with `headers`, addressed to `https://localhost:PORT`.
pub fn https_request(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> http::Request<http_body_util::Empty<bytes::Bytes>> {
    let mut request = http::Request::get(format!("https://localhost:{}{path}", addr.port()));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.body(http_body_util::Empty::new()).expect("request")
}

/// `GET path` over a new TLS connection that offers only `http/1.1`.
pub async fn https1_get(
    addr: SocketAddr,
    client: std::sync::Arc<rustls::ClientConfig>,
    path: &str,
    headers: &[(&str, &str)],
) -> HttpsResponse {
    let stream = tls_connect(addr, client).await.expect("TLS handshake");
    assert_eq!(
        negotiated_alpn(&stream).as_deref(),
        Some(&b"http/1.1"[..]),
        "ALPN for an http/1.1-only client"
    );
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .expect("HTTP/1.1 handshake");
    tokio::spawn(connection);
    let mut request = https_request(addr, path, headers);
    // HTTP/1.1 wants Host (the URI carries it for HTTP/2).
    request.headers_mut().insert(
        http::header::HOST,
        http::HeaderValue::from_str(&format!("localhost:{}", addr.port())).expect("host"),
    );
    read_response(sender.send_request(request)).await
}

/// A loopback address with a port that was free a moment ago.
pub fn loopback() -> SocketAddr {
    format!("127.0.0.1:{}", free_port()).parse().expect("addr")
}

/// A UDP loopback port that was free a moment ago.
pub fn udp_port() -> u16 {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp bind");
    socket.local_addr().expect("addr").port()
}

/// `prescale certs` for `nodes` into `dir`.
pub fn write_certs(dir: &Path, nodes: &[&str]) {
    let mut command = Command::new(bin());
    command.args(["certs", "--out", dir.to_str().expect("utf8")]);
    for node in nodes {
        command.args(["--node", node]);
    }
    let out = command.output().expect("run certs");
    assert!(
        out.status.success(),
        "certs: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64
}

/// Node time of a clock at `speedup` (above 1), as every process of the machine reads it: it runs
/// from the machine's boot.
pub fn node_now_ms(speedup: f64) -> u64 {
    let uptime: f64 = std::fs::read_to_string("/proc/uptime")
        .expect("/proc/uptime")
        .split_whitespace()
        .next()
        .and_then(|s| s.parse().ok())
        .expect("uptime");
    wall_ms() + ((speedup - 1.0) * uptime * 1000.0) as u64
}

/// Kills, when dropped, the demo backends a test's provisioner started (a forecaster that is
/// killed, or leaves its instances serving, does not stop them): every `backend` process whose
/// command line carries `marker`, or whose working directory is `cwd`.
pub struct BackendReaper {
    marker: Option<String>,
    cwd: Option<PathBuf>,
}

impl BackendReaper {
    pub fn by_marker(marker: &str) -> Self {
        BackendReaper {
            marker: Some(marker.to_string()),
            cwd: None,
        }
    }

    pub fn by_cwd(cwd: &Path) -> Self {
        BackendReaper {
            marker: None,
            cwd: Some(cwd.to_path_buf()),
        }
    }

    pub fn pids(&self) -> Vec<u32> {
        let mut pids = Vec::new();
        for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
                continue;
            };
            let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            let ours = match (&self.marker, &self.cwd) {
                (Some(marker), _) => text.contains(marker.as_str()),
                (None, Some(cwd)) => {
                    std::fs::read_link(entry.path().join("cwd")).is_ok_and(|d| &d == cwd)
                }
                (None, None) => false,
            };
            if ours && text.contains(" backend ") {
                pids.push(pid);
            }
        }
        pids
    }

    /// The pid of the backend listening on `address`.
    pub fn pid_of(&self, address: &str) -> Option<u32> {
        self.pids().into_iter().find(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(address))
                .unwrap_or(false)
        })
    }
}

impl Drop for BackendReaper {
    fn drop(&mut self) {
        for pid in self.pids() {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
    }
}

/// Arguments of `prescale up --speedup 60` on `proxy` and `admin` with its state in `state`, and
/// a config file and a history trace when given.
pub fn up_args(
    state: &Path,
    proxy: SocketAddr,
    admin: SocketAddr,
    config: Option<&Path>,
    history: Option<&Path>,
) -> Vec<String> {
    let mut args = vec![
        "up".to_string(),
        "--state-dir".into(),
        state.display().to_string(),
        "--speedup".into(),
        "60".into(),
        "--proxy-listen".into(),
        proxy.to_string(),
        "--admin-listen".into(),
        admin.to_string(),
    ];
    if let Some(config) = config {
        args.extend(["--config".into(), config.display().to_string()]);
    }
    if let Some(history) = history {
        args.extend(["--history".into(), history.display().to_string()]);
    }
    args
}

/// Starts `prescale ARGS` with stdout (where `up` prints its banner and decisions) and stderr
/// in files.
pub fn start_with_stdout(name: &str, args: &[&str], out: &Path, log: &Path) -> Proc {
    let child = Command::new(bin())
        .args(args)
        .env("PRESCALE_LOG", "info")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(out).expect("stdout file"))
        .stderr(std::fs::File::create(log).expect("log file"))
        .spawn()
        .expect("spawn prescale");
    Proc {
        child,
        name: name.to_string(),
    }
}

/// A fleet `web` in region `local` whose instances the `process` provisioner starts as demo
/// backends named after `marker` (so a [`BackendReaper`] finds them).
pub fn provisioned_fleet(marker: &str, capacity_rps: f64, cold_start_secs: u64) -> String {
    format!(
        r#"
[[fleets]]
name = "web"
region = "local"
capacity_rps = {capacity_rps}
cold_start_secs = {cold_start_secs}
health_check = {{ interval_ms = 200, timeout_ms = 300 }}

[fleets.provisioner]
kind = "process"
command = ["prescale", "backend", "--listen", "{{host}}:{{port}}", "--name", "{marker}-{{instance}}", "--threads", "1", "--grace-secs", "5"]
"#
    )
}

/// Writes a single-node config (`up-1` in region `local`) with `rest` (fleets, profiles, ...)
/// to `dir/up.toml`.
pub fn up_config(dir: &Path, rest: &str) -> PathBuf {
    let path = dir.join("up.toml");
    std::fs::write(
        &path,
        format!(
            "[node]\nid = \"up-1\"\nregion = \"local\"\n\n[identity]\nsecret = \"live-e2e-secret-0123456789\"\n\n[[regions]]\nname = \"local\"\n{rest}"
        ),
    )
    .expect("write config");
    path
}

/// Demand of the daily pattern at unix second `t`: 30 requests a minute, a ramp over 3 minutes
/// from `ramp` (minute of the day) to 480, held for 8 minutes.
pub fn daily(t: u64, ramp: u64) -> u64 {
    let since = ((t / 60) % 1440 + 1440 - ramp) % 1440;
    match since {
        0..=2 => 30 + 150 * since,
        3..=10 => 480,
        _ => 30,
    }
}

/// A `timestamp,requests` trace of [`daily`] for `minutes` from unix second `start`.
pub fn write_trace(path: &Path, start: u64, minutes: u64, ramp: u64) {
    let mut text = String::from("timestamp,requests\n");
    for m in 0..minutes {
        let t = start + m * 60;
        text.push_str(&format!("{t},{}\n", daily(t, ramp)));
    }
    std::fs::write(path, text).expect("write trace");
}
pub mod azure;
