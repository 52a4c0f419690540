//! The configuration schema: every section and key, with its default. Unknown keys are errors
//! (`deny_unknown_fields` everywhere). Cross-key rules live in `validate.rs`.

use std::net::SocketAddr;
use std::path::PathBuf;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::Secret;

/// The whole configuration file.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub node: NodeConfig,
    #[serde(default)]
    pub proxy: ProxyConfig,
    #[serde(default)]
    pub admin: AdminConfig,
    pub identity: IdentityConfig,
    #[serde(default)]
    pub network: NetworkConfig,
    #[serde(default)]
    pub geo: GeoConfig,
    /// DNS for the backends of fleets with `resolve = true`.
    #[serde(default)]
    pub resolver: ResolverConfig,
    /// At least one region.
    pub regions: Vec<RegionConfig>,
    /// At least one fleet in the node's region.
    pub fleets: Vec<FleetConfig>,
    /// Profile → fleet routing rules; a profile without a rule goes to its region's default fleet.
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    /// Per-profile revenue weight and priority; unlisted profiles get the defaults.
    #[serde(default)]
    pub profiles: Vec<ProfileConfig>,
    #[serde(default)]
    pub assignment: AssignmentConfig,
    #[serde(default)]
    pub profiling: ProfilingConfig,
    /// The forecaster's profile learning (sampled users, rebuilds, published models).
    #[serde(default)]
    pub learning: LearningConfig,
    /// This node's identity in the QUIC mesh (mutual TLS). Required by `[export]` and
    /// `[forecaster]`.
    #[serde(default)]
    pub mesh: Option<MeshConfig>,
    /// Shipping sketches from this proxy to its region's forecaster.
    #[serde(default)]
    pub export: Option<ExportConfig>,
    /// Running a regional forecaster (`prescale forecaster`).
    #[serde(default)]
    pub forecaster: Option<ForecasterConfig>,
    /// The forecaster's `POST /api/v1/ingest` (activity of services not behind the proxy).
    #[serde(default)]
    pub ingest: IngestConfig,
    #[serde(default)]
    pub forecast: crate::brain::ForecastConfig,
    #[serde(default)]
    pub planner: crate::brain::PlannerConfig,
}

/// This node's identity and the region whose fleets it serves.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// Name of this node in metrics and in the mesh.
    #[serde(default = "default_node_id")]
    pub id: String,
    /// Region whose fleets this node routes to. Optional when exactly one region is configured.
    #[serde(default)]
    pub region: Option<String>,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            id: default_node_id(),
            region: None,
        }
    }
}

fn default_node_id() -> String {
    "node-1".to_string()
}

/// The proxy listener and request-path limits.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyConfig {
    #[serde(default = "default_proxy_listen")]
    pub listen: SocketAddr,
    /// Worker threads of the proxy service; 0 = one per available core.
    #[serde(default)]
    pub threads: usize,
    /// Seconds in-flight requests get to finish after SIGTERM.
    #[serde(default = "default_grace_secs")]
    pub shutdown_grace_secs: u64,
    /// Requests whose header block is larger are answered 431.
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: usize,
    /// Seconds an idle client connection is kept open for its next request, and the time a
    /// request head may take to arrive once its first bytes have.
    #[serde(default = "default_keepalive_timeout_secs")]
    pub keepalive_timeout_secs: u64,
    /// Seconds a write to a client may wait for it to read (nginx's `send_timeout`): a client
    /// that stops reading a response is closed after it, freeing its backend connection.
    #[serde(default = "default_client_timeout_secs")]
    pub send_timeout_secs: u64,
    /// Seconds a read of a client's request body may wait for its next bytes (nginx's
    /// `client_body_timeout`).
    #[serde(default = "default_client_timeout_secs")]
    pub body_timeout_secs: u64,
    /// Served on the proxy listener with TLS when set (HTTP/2 negotiated by ALPN).
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// Accept cleartext HTTP/2 with prior knowledge (h2c, e.g. gRPC without TLS) beside
    /// HTTP/1.1 (told apart by the connection's first bytes: the HTTP/2 preface or a request
    /// line).
    #[serde(default)]
    pub h2c: bool,
    /// Pass request header fields whose names have underscores to backends (nginx's
    /// `underscores_in_headers`). Off: such fields are dropped, so that a backend that maps `-`
    /// and `_` alike (CGI, WSGI, Rack) cannot be handed `X_User_Id` for `X-User-Id`.
    #[serde(default)]
    pub underscores_in_headers: bool,
    /// Give every request an `X-Request-Id` (32 hex digits), sent to the backend and returned to
    /// the client; a trusted peer's (`network.trusted_proxies`) is kept. Off: the field passes
    /// like any other.
    #[serde(default = "default_true")]
    pub request_id: bool,
    /// The pseudonym in the `Via` field (RFC 9110 §7.6.3) added to requests to backends and to
    /// responses to clients, e.g. `1.1 prescale`; empty: no `Via`.
    #[serde(default = "default_via")]
    pub via: String,
    /// One line per request, written off the request path (absent: no access log).
    #[serde(default)]
    pub access_log: Option<AccessLogConfig>,
    /// Requests one client connection may carry; after the last one's response the connection
    /// closes (nginx's `keepalive_requests`, 1000 by default there too).
    #[serde(default = "default_keepalive_requests")]
    pub keepalive_requests: u32,
    /// Per-client-address limits (absent: none).
    #[serde(default)]
    pub client_limits: ClientLimitsConfig,
    /// The Unix socket on which a new binary started with `--upgrade` takes the proxy listener
    /// over from this one (on SIGQUIT), and beside it `PATH.lock`, held while a node runs.
    /// Absent: `prescale-HOST-PORT.upgrade` (the proxy listener's) in a directory only this
    /// user may enter, `$XDG_RUNTIME_DIR` or the temp directory's `prescale-UID`.
    #[serde(default)]
    pub upgrade_socket: Option<PathBuf>,
}

/// `[proxy.client_limits]`: what one client address may take (IPv6 by its /64, which one
/// subscriber holds). The request rate reads the client address the proxy resolved (a trusted
/// proxy's `X-Forwarded-For`); connections count the peer's.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClientLimitsConfig {
    /// Open connections per peer address (nginx's `limit_conn`); 0 = no limit. A connection
    /// beyond it is answered `status` and closed.
    #[serde(default)]
    pub connections: u32,
    /// Sustained requests per second per client address (nginx's `limit_req` rate); 0 = no
    /// limit. A request beyond it, and beyond `burst`, is answered `status` with `Retry-After`.
    #[serde(default)]
    pub requests_per_sec: f64,
    /// Requests beyond the rate a client may send at once (nginx's `burst`, served at once as
    /// with `nodelay`).
    #[serde(default)]
    pub burst: u32,
    /// The status of a refused request or connection: 429 or 503.
    #[serde(default = "default_client_limit_status")]
    pub status: u16,
}

impl Default for ClientLimitsConfig {
    fn default() -> Self {
        ClientLimitsConfig {
            connections: 0,
            requests_per_sec: 0.0,
            burst: 0,
            status: default_client_limit_status(),
        }
    }
}

fn default_keepalive_requests() -> u32 {
    1000
}

fn default_client_limit_status() -> u16 {
    429
}

/// `[proxy.access_log]`: where request lines go and in which format.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AccessLogConfig {
    /// The file lines are appended to (created when missing, reopened on SIGUSR1 for logrotate);
    /// `"-"`: standard output.
    pub path: PathBuf,
    #[serde(default)]
    pub format: AccessLogFormat,
    /// Lines waiting for the writer; when they are this many, further lines are dropped (and
    /// counted) rather than a request ever waiting for the disk.
    #[serde(default = "default_access_log_buffer_lines")]
    pub buffer_lines: usize,
}

impl AccessLogConfig {
    /// The `path` that means standard output.
    pub const STDOUT: &'static str = "-";

    /// Lines go to standard output rather than a file.
    pub fn is_stdout(&self) -> bool {
        self.path.as_os_str() == Self::STDOUT
    }
}

/// The line format of the access log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AccessLogFormat {
    /// nginx's `combined` line, then prescale's fields as `key=value` pairs.
    #[default]
    Combined,
    /// One JSON object per line.
    Json,
}

fn default_access_log_buffer_lines() -> usize {
    65_536
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            listen: default_proxy_listen(),
            threads: 0,
            shutdown_grace_secs: default_grace_secs(),
            max_header_bytes: default_max_header_bytes(),
            keepalive_timeout_secs: default_keepalive_timeout_secs(),
            send_timeout_secs: default_client_timeout_secs(),
            body_timeout_secs: default_client_timeout_secs(),
            tls: None,
            h2c: false,
            underscores_in_headers: false,
            request_id: true,
            via: default_via(),
            access_log: None,
            keepalive_requests: default_keepalive_requests(),
            client_limits: ClientLimitsConfig::default(),
            upgrade_socket: None,
        }
    }
}

fn default_via() -> String {
    "prescale".to_string()
}

fn default_proxy_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}
fn default_grace_secs() -> u64 {
    30
}
fn default_max_header_bytes() -> usize {
    16 * 1024
}
fn default_keepalive_timeout_secs() -> u64 {
    60
}
fn default_client_timeout_secs() -> u64 {
    60
}

/// The proxy listener's certificate and key, PEM files (a relative path is taken from the
/// working directory).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The certificate chain, the server's own certificate first.
    pub cert: PathBuf,
    /// The private key of that certificate, unencrypted: PKCS#8, PKCS#1 (RSA) or SEC1 (EC).
    pub key: PathBuf,
}

/// The admin HTTP listener (JSON API, metrics, health, dashboard).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    #[serde(default = "default_admin_listen")]
    pub listen: SocketAddr,
    /// When set, every admin request except `/healthz` and `/readyz` needs
    /// `Authorization: Bearer <token>`.
    #[serde(default)]
    pub token: Option<Secret>,
    /// Binding to a non-loopback address must be asked for explicitly.
    #[serde(default)]
    pub allow_non_loopback: bool,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: default_admin_listen(),
            token: None,
            allow_non_loopback: false,
        }
    }
}

fn default_admin_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9090))
}

/// How a request's user is identified. Raw identities are hashed with `secret` and never kept.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityConfig {
    /// Key of the identity hash (at least 16 bytes). Rotating it re-keys every user.
    pub secret: Secret,
    /// Sources tried in order; the first that yields an identity wins.
    #[serde(default = "default_identity_sources")]
    pub sources: Vec<IdentitySource>,
    /// Identities longer than this are rejected with 431.
    #[serde(default = "default_max_identity_len")]
    pub max_len: usize,
    /// Most users not yet in the per-user table that one client address (IPv6: its /64) brings
    /// in per second; past it, its requests are served as the address's user. 0: no limit.
    #[serde(default = "default_new_users_per_client_per_sec")]
    pub new_users_per_client_per_sec: u32,
}

fn default_new_users_per_client_per_sec() -> u32 {
    100
}

fn default_max_identity_len() -> usize {
    256
}

pub fn default_identity_sources() -> Vec<IdentitySource> {
    vec![
        IdentitySource::Header {
            name: "x-user-id".to_string(),
        },
        IdentitySource::Bearer { jwt: None },
        IdentitySource::ClientIp,
    ]
}

/// One place an identity can come from.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum IdentitySource {
    /// A request header holding the user id, e.g. `X-User-Id`.
    Header { name: String },
    /// A cookie holding a session or user id.
    Cookie { name: String },
    /// An API-key header; the key itself identifies the caller.
    ApiKey { header: String },
    /// `Authorization: Bearer <token>`: a JWT's `sub`, or the whole token when it is not a JWT.
    /// With `jwt` set, the JWT's signature (and expiry) is verified and a bad token is a 401.
    Bearer {
        #[serde(default)]
        jwt: Option<JwtVerification>,
    },
    /// The client address (after trusted X-Forwarded-For): every request has one.
    ClientIp,
}

/// Key material for verifying bearer JWTs. Exactly one of the keys.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct JwtVerification {
    /// Shared secret for HS256/HS384/HS512.
    #[serde(default)]
    pub hmac_secret: Option<Secret>,
    /// PEM file with an RSA public key for RS256/RS384/RS512.
    #[serde(default)]
    pub rsa_public_key_file: Option<PathBuf>,
    /// PEM file with an EC public key for ES256/ES384.
    #[serde(default)]
    pub ec_public_key_file: Option<PathBuf>,
    #[serde(default)]
    pub issuer: Option<String>,
    #[serde(default)]
    pub audience: Option<String>,
}

/// Which peers may tell us the client address.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkConfig {
    /// `X-Forwarded-For` is honoured only when the connection comes from one of these CIDRs.
    #[serde(default)]
    pub trusted_proxies: Vec<IpNet>,
}

/// Country lookup of client addresses.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GeoConfig {
    /// A MaxMind DB (GeoIP2/GeoLite2 Country or City, or a flat `country_code` database).
    /// Without one, every request is attributed to the fallback region.
    #[serde(default)]
    pub database: Option<PathBuf>,
    /// Region for addresses the database does not know and countries no region lists.
    /// Defaults to the node's region.
    #[serde(default)]
    pub fallback_region: Option<String>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RegionConfig {
    pub name: String,
    /// ISO 3166-1 alpha-2 country codes, upper case.
    #[serde(default)]
    pub countries: Vec<String>,
    /// Fleet for profiles without a route. Required when the region has several fleets.
    #[serde(default)]
    pub default_fleet: Option<String>,
}

/// A pool of interchangeable backends in one region.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FleetConfig {
    pub name: String,
    pub region: String,
    /// Static backends as `host:port`. Empty for a fleet with a `process` provisioner: its
    /// backends are the ones the provisioner starts. Required with a remote provisioner (`exec`,
    /// `webhook`, `kubernetes`): what the proxies route to (a Service, a load balancer).
    #[serde(default)]
    pub backends: Vec<String>,
    /// Who starts and stops this fleet's backends on the forecaster's plan. Without one the
    /// backends are the static `backends` and the forecaster plans and reports the fleet but
    /// provisions nothing.
    #[serde(default)]
    pub provisioner: Option<ProvisionerConfig>,
    #[serde(default)]
    pub load_balancing: LoadBalancing,
    #[serde(default)]
    pub health_check: HealthCheckConfig,
    #[serde(default)]
    pub timeouts: TimeoutConfig,
    /// Extra attempts on another backend for idempotent requests that failed to connect or
    /// got no response.
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// Consecutive failed requests after which a backend is ejected (passive health).
    #[serde(default = "default_eject_after")]
    pub eject_after_failures: u32,
    /// How long an ejected backend stays out before it is tried again.
    #[serde(default = "default_eject_secs")]
    pub eject_secs: u64,
    /// Requests/s one instance serves within the latency SLO.
    #[serde(default = "default_capacity_rps")]
    pub capacity_rps: f64,
    /// Seconds from requesting an instance until it serves.
    #[serde(default = "default_cold_start_secs")]
    pub cold_start_secs: u64,
    #[serde(default = "default_cost_per_instance_hour")]
    pub cost_per_instance_hour: f64,
    /// In-flight requests per healthy backend above which the fleet counts as saturated and
    /// lower-priority profiles are shed first. 0 = no admission control.
    #[serde(default)]
    pub max_in_flight_per_backend: u32,
    /// Requests (and so connections) one backend of this fleet may have at once (nginx's
    /// `max_conns`); a backend at it is passed over for the next one, and when all are, the
    /// request is answered 503. 0 = no limit.
    #[serde(default)]
    pub max_connections_per_backend: u32,
    /// How the proxy speaks to the backends: HTTP/1.1 or HTTP/2, in cleartext or over TLS.
    #[serde(default)]
    pub upstream: UpstreamConfig,
    /// Re-resolve the names in `backends` every `resolver.refresh_secs` through `[resolver]`,
    /// each address a backend; `false`: names are resolved once, at startup (every address).
    #[serde(default)]
    pub resolve: bool,
    /// The latency SLO requests of this fleet must meet (milliseconds, at
    /// `latency_slo_quantile`); what `capacity_rps` means and what `learn_capacity` learns against.
    #[serde(default)]
    pub latency_slo_ms: Option<u64>,
    #[serde(default = "default_latency_slo_quantile")]
    pub latency_slo_quantile: f64,
    /// Learn `capacity_rps` from the fleet's latency histograms against its load per instance
    /// (`capacity_rps` is the starting point until there is evidence). Needs `latency_slo_ms`.
    #[serde(default)]
    pub learn_capacity: bool,
    /// Most instances the planner may run for this fleet.
    #[serde(default)]
    pub max_instances: Option<u32>,
    /// Most the fleet may cost per hour (with `cost_per_instance_hour`).
    #[serde(default)]
    pub budget_per_hour: Option<f64>,
    /// Profiles whose instances need their own configuration: each gets its own warm sub-pool,
    /// sized from its own expected arrivals, instead of sharing the fleet's warm pool.
    #[serde(default)]
    pub warm_sub_pools: Vec<String>,
    /// What one instance offers (cores, MB, Mbps, IO ops/s). With it the live planner sizes the
    /// fleet on its binding resource: its profiles' requests times the resources their personas
    /// use per request, against these; absent: on requests per second alone.
    #[serde(default)]
    pub instance_resources: Option<InstanceResources>,
}

/// DNS for backends given by name (`[resolver]`), used by fleets with `resolve = true`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ResolverConfig {
    /// Name servers, `ip` (port 53) or `ip:port`, asked over UDP (TCP for long answers); empty:
    /// those of `/etc/resolv.conf`.
    #[serde(default)]
    pub nameservers: Vec<String>,
    /// Seconds between re-resolutions of every name; an answer is not kept longer than this,
    /// whatever its TTL.
    #[serde(default = "default_resolver_refresh_secs")]
    pub refresh_secs: u64,
    /// Milliseconds one query may take before it is sent again (twice at most per server).
    #[serde(default = "default_resolver_timeout_ms")]
    pub timeout_ms: u64,
}

impl Default for ResolverConfig {
    fn default() -> Self {
        ResolverConfig {
            nameservers: Vec::new(),
            refresh_secs: default_resolver_refresh_secs(),
            timeout_ms: default_resolver_timeout_ms(),
        }
    }
}

fn default_resolver_refresh_secs() -> u64 {
    30
}

fn default_resolver_timeout_ms() -> u64 {
    2000
}

impl ResolverConfig {
    /// The name servers as socket addresses (port 53 when none is given); `None` for an entry
    /// that is neither form.
    pub fn nameserver_addrs(&self) -> Vec<Option<std::net::SocketAddr>> {
        self.nameservers
            .iter()
            .map(|entry| {
                entry.parse::<std::net::SocketAddr>().ok().or_else(|| {
                    entry
                        .parse::<std::net::IpAddr>()
                        .ok()
                        .map(|ip| std::net::SocketAddr::new(ip, 53))
                })
            })
            .collect()
    }
}

/// How the proxy connects to a fleet's backends (`[fleets.upstream]`).
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    #[serde(default)]
    pub protocol: UpstreamProtocol,
    /// TLS to the backends; absent: cleartext.
    #[serde(default)]
    pub tls: Option<UpstreamTlsConfig>,
}

/// The HTTP version the proxy speaks to a fleet's backends.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamProtocol {
    /// HTTP/1.1 (over TLS too).
    #[default]
    Http1,
    /// HTTP/2 only: h2 over TLS, or h2c with prior knowledge in cleartext (gRPC backends).
    Http2,
    /// HTTP/2 when the backend offers it by ALPN, else HTTP/1.1 (needs `tls`).
    Auto,
}

/// TLS from the proxy to a fleet's backends.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTlsConfig {
    /// Name sent as SNI and checked against the backend's certificate; absent: the host part of
    /// each backend (its name, or its IP address).
    #[serde(default)]
    pub server_name: Option<String>,
    /// PEM file of the CA certificates backends' certificates must chain to; absent: the
    /// system's roots.
    #[serde(default)]
    pub ca_file: Option<std::path::PathBuf>,
    /// Check the backend's certificate and name (`false` accepts any certificate: testing only).
    #[serde(default = "default_true")]
    pub verify: bool,
    /// PEM certificate chain presented to backends that ask for one (with `client_key`).
    #[serde(default)]
    pub client_cert: Option<std::path::PathBuf>,
    /// PEM private key of `client_cert`.
    #[serde(default)]
    pub client_key: Option<std::path::PathBuf>,
}

/// Resources of one instance of a fleet (see `FleetConfig::instance_resources`).
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct InstanceResources {
    #[serde(default)]
    pub cpu_cores: f64,
    #[serde(default)]
    pub memory_mb: f64,
    #[serde(default)]
    pub network_mbps: f64,
    #[serde(default)]
    pub io_ops: f64,
}

/// How a fleet's backends are provisioned.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum ProvisionerConfig {
    /// Local processes started from a command template, each on a free loopback port.
    Process {
        /// Program and arguments. `{port}` (required), `{host}`, `{fleet}` and `{instance}`
        /// are replaced per instance, e.g. `["prescale", "backend", "--listen",
        /// "{host}:{port}", "--name", "{instance}"]`. A program without a `/` is looked up in
        /// `PATH`; `prescale` means this executable.
        command: Vec<String>,
        /// Address the processes listen on (loopback).
        #[serde(default = "default_process_host")]
        host: std::net::IpAddr,
        /// Seconds a started process has to pass the fleet's health check before it is
        /// stopped and counted as a failed start.
        #[serde(default = "default_ready_timeout_secs")]
        ready_timeout_secs: u64,
        /// Seconds a process gets after SIGTERM before it is killed.
        #[serde(default = "default_stop_timeout_secs")]
        stop_timeout_secs: u64,
    },
    /// A command run with the desired counts (arguments, and a JSON document on stdin) each
    /// time the plan's target changes; the instances run elsewhere and the proxies route to the
    /// fleet's `backends`.
    Exec {
        /// Program and arguments; the counts are appended (`--instances N --baseline N ...`).
        /// A program without a `/` is looked up in `PATH`.
        command: Vec<String>,
        /// Seconds the command may run before its process group is killed (a failed call).
        #[serde(default = "default_exec_timeout_secs")]
        timeout_secs: u64,
    },
    /// An HTTP POST of the desired state (JSON) to `url` each time the plan's target changes.
    Webhook {
        /// `http://` or `https://` URL.
        url: String,
        /// Name of the environment variable holding the HMAC-SHA256 key that signs each body
        /// (`X-Prescale-Signature`); absent: unsigned. The key itself never goes in the file.
        #[serde(default)]
        secret_env: Option<String>,
        /// Seconds one request may take (connect, send, answer).
        #[serde(default = "default_call_timeout_secs")]
        timeout_secs: u64,
    },
    /// The `replicas` of a Deployment or StatefulSet, set through the scale subresource.
    Kubernetes {
        #[serde(default = "default_namespace")]
        namespace: String,
        /// The Deployment to scale (or `statefulset`; exactly one of the two).
        #[serde(default)]
        deployment: Option<String>,
        /// The StatefulSet to scale.
        #[serde(default)]
        statefulset: Option<String>,
        /// A kubeconfig file (its current context); absent: the in-cluster service account.
        #[serde(default)]
        kubeconfig: Option<std::path::PathBuf>,
        /// Most replicas one change removes; the next step waits until the last one settled.
        #[serde(default = "default_scale_in_step")]
        scale_in_step: u32,
        /// Seconds one API request may take.
        #[serde(default = "default_call_timeout_secs")]
        timeout_secs: u64,
    },
}

impl ProvisionerConfig {
    /// The `kind` as written in the config.
    pub fn kind(&self) -> &'static str {
        match self {
            ProvisionerConfig::Process { .. } => "process",
            ProvisionerConfig::Exec { .. } => "exec",
            ProvisionerConfig::Webhook { .. } => "webhook",
            ProvisionerConfig::Kubernetes { .. } => "kubernetes",
        }
    }

    /// Whether the proxies route to the backends this provisioner starts (`process`) rather
    /// than to the fleet's configured `backends` (the remote kinds).
    pub fn supplies_backends(&self) -> bool {
        matches!(self, ProvisionerConfig::Process { .. })
    }
}

fn default_exec_timeout_secs() -> u64 {
    30
}
fn default_call_timeout_secs() -> u64 {
    10
}
fn default_namespace() -> String {
    "default".to_string()
}
fn default_scale_in_step() -> u32 {
    1
}

fn default_process_host() -> std::net::IpAddr {
    std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)
}
fn default_ready_timeout_secs() -> u64 {
    60
}
fn default_stop_timeout_secs() -> u64 {
    10
}

fn default_latency_slo_quantile() -> f64 {
    0.99
}

fn default_retries() -> u32 {
    1
}
fn default_eject_after() -> u32 {
    3
}
fn default_eject_secs() -> u64 {
    10
}
fn default_capacity_rps() -> f64 {
    100.0
}
fn default_cold_start_secs() -> u64 {
    60
}
fn default_cost_per_instance_hour() -> f64 {
    0.10
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LoadBalancing {
    #[default]
    RoundRobin,
    /// Consistent hashing on the user key: a user sticks to one backend while it is healthy.
    ConsistentHash,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckConfig {
    /// HTTP path probed with GET; a 2xx answer is healthy. Not used with `grpc_service`.
    #[serde(default = "default_health_path")]
    pub path: String,
    /// Check with the gRPC health protocol instead (`grpc.health.v1.Health/Check` for this
    /// service; "" asks about the server as a whole): healthy when it answers SERVING. Needs
    /// `upstream.protocol = "http2"`.
    #[serde(default)]
    pub grpc_service: Option<String>,
    #[serde(default = "default_health_interval_ms")]
    pub interval_ms: u64,
    #[serde(default = "default_health_timeout_ms")]
    pub timeout_ms: u64,
    /// Consecutive successes to mark a backend healthy again.
    #[serde(default = "default_one")]
    pub healthy_threshold: usize,
    /// Consecutive failures to mark it unhealthy.
    #[serde(default = "default_two")]
    pub unhealthy_threshold: usize,
}

impl Default for HealthCheckConfig {
    fn default() -> Self {
        HealthCheckConfig {
            path: default_health_path(),
            grpc_service: None,
            interval_ms: default_health_interval_ms(),
            timeout_ms: default_health_timeout_ms(),
            healthy_threshold: 1,
            unhealthy_threshold: 2,
        }
    }
}

fn default_health_path() -> String {
    "/healthz".to_string()
}
fn default_health_interval_ms() -> u64 {
    1000
}
fn default_health_timeout_ms() -> u64 {
    500
}
fn default_one() -> usize {
    1
}
fn default_two() -> usize {
    2
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TimeoutConfig {
    #[serde(default = "default_connect_ms")]
    pub connect_ms: u64,
    /// Longest wait for the backend's response headers or each read of its body.
    #[serde(default = "default_read_ms")]
    pub read_ms: u64,
    #[serde(default = "default_write_ms")]
    pub write_ms: u64,
    /// Longest an idle keep-alive connection to a backend is kept for reuse; below the
    /// backends' own keep-alive (Node.js and Apache close after 5 s), so that a request rarely
    /// meets a connection the backend has just closed.
    #[serde(default = "default_idle_ms")]
    pub idle_ms: u64,
}

impl Default for TimeoutConfig {
    fn default() -> Self {
        TimeoutConfig {
            connect_ms: default_connect_ms(),
            read_ms: default_read_ms(),
            write_ms: default_write_ms(),
            idle_ms: default_idle_ms(),
        }
    }
}

fn default_connect_ms() -> u64 {
    1000
}
fn default_read_ms() -> u64 {
    30_000
}
fn default_write_ms() -> u64 {
    30_000
}
fn default_idle_ms() -> u64 {
    4_000
}

/// Sends a profile's requests to a fleet (in every region that has a fleet of that name, or
/// only in `region`).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    pub profile: String,
    pub fleet: String,
    #[serde(default)]
    pub region: Option<String>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileConfig {
    pub name: String,
    /// Relative revenue per request: capacity goes to the highest revenue-weighted demand
    /// when a cap binds.
    #[serde(default = "default_revenue_weight")]
    pub revenue_weight: f64,
    /// Higher is more important; under saturation the lowest priority is shed first.
    #[serde(default = "default_priority")]
    pub priority: u8,
}

pub fn default_revenue_weight() -> f64 {
    1.0
}
pub fn default_priority() -> u8 {
    100
}

/// Profile assignment before (and besides) a learned model.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AssignmentConfig {
    /// Tried in order until one matches; users matching none get `default_profile`.
    #[serde(default)]
    pub rules: Vec<AssignmentRule>,
    #[serde(default = "default_profile_name")]
    pub default_profile: String,
    /// Users with fewer requests than this are in the `new` profile.
    #[serde(default = "default_new_user_min_requests")]
    pub new_user_min_requests: u32,
}

impl Default for AssignmentConfig {
    fn default() -> Self {
        AssignmentConfig {
            rules: Vec::new(),
            default_profile: default_profile_name(),
            new_user_min_requests: default_new_user_min_requests(),
        }
    }
}

fn default_profile_name() -> String {
    "default".to_string()
}
fn default_new_user_min_requests() -> u32 {
    3
}

/// A rule matches when every condition it sets matches.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AssignmentRule {
    pub profile: String,
    #[serde(default)]
    pub path_prefix: Option<String>,
    #[serde(default)]
    pub method: Option<String>,
    #[serde(default)]
    pub header: Option<HeaderMatch>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderMatch {
    pub name: String,
    /// Exact value; absent = the header only has to be present.
    #[serde(default)]
    pub value: Option<String>,
}

/// The per-user feature table.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ProfilingConfig {
    /// Turn inline profiling off entirely (every request then counts as the default profile).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Memory ceiling of the per-user table in MiB; least-recently-seen users are evicted.
    #[serde(default = "default_user_table_mib")]
    pub user_table_mib: usize,
    /// Idle seconds that end a session (for the session-gap feature).
    #[serde(default = "default_session_gap_secs")]
    pub session_gap_secs: u64,
}

impl Default for ProfilingConfig {
    fn default() -> Self {
        ProfilingConfig {
            enabled: true,
            user_table_mib: default_user_table_mib(),
            session_gap_secs: default_session_gap_secs(),
        }
    }
}

fn default_true() -> bool {
    true
}
fn default_user_table_mib() -> usize {
    64
}
fn default_session_gap_secs() -> u64 {
    1800
}

/// The forecaster's profile learning: which sampled users it keeps, when it rebuilds the
/// profile model it publishes to the region's proxies, and how it clusters.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LearningConfig {
    /// Learn and publish profile models (sampling, scheduled and on-demand builds).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Fewest sampled users a build needs; the first build runs once this many are sampled.
    #[serde(default = "default_learning_min_users")]
    pub min_users: usize,
    /// Most users whose latest feature vector is kept (130 to 290 bytes each); the least
    /// recently seen are evicted beyond it.
    #[serde(default = "default_learning_max_sampled_users")]
    pub max_sampled_users: usize,
    /// Node seconds after which a user not seen again is left out of builds (and dropped).
    #[serde(default = "default_learning_sample_max_age_secs")]
    pub sample_max_age_secs: u64,
    /// Node seconds between scheduled rebuilds.
    #[serde(default = "default_learning_rebuild_interval_secs")]
    pub rebuild_interval_secs: u64,
    /// Fewest profiles a build may choose (by silhouette score) when `k` is not set.
    #[serde(default = "default_learning_k_min")]
    pub k_min: usize,
    /// Most profiles a build may choose when `k` is not set.
    #[serde(default = "default_learning_k_max")]
    pub k_max: usize,
    /// A fixed number of profiles; when set, `k_min` and `k_max` are not used.
    #[serde(default)]
    pub k: Option<usize>,
    /// Seed of the clustering's randomness (same samples and seed, same model); absent: the
    /// profile builder's own default seed.
    #[serde(default)]
    pub seed: Option<u64>,
}

impl Default for LearningConfig {
    fn default() -> Self {
        LearningConfig {
            enabled: true,
            min_users: default_learning_min_users(),
            max_sampled_users: default_learning_max_sampled_users(),
            sample_max_age_secs: default_learning_sample_max_age_secs(),
            rebuild_interval_secs: default_learning_rebuild_interval_secs(),
            k_min: default_learning_k_min(),
            k_max: default_learning_k_max(),
            k: None,
            seed: None,
        }
    }
}

fn default_learning_min_users() -> usize {
    50
}
fn default_learning_max_sampled_users() -> usize {
    200_000
}
fn default_learning_sample_max_age_secs() -> u64 {
    7 * 86_400
}
fn default_learning_rebuild_interval_secs() -> u64 {
    3600
}
fn default_learning_k_min() -> usize {
    2
}
fn default_learning_k_max() -> usize {
    12
}

/// Certificates of this node for the QUIC mesh (`prescale certs` writes a dev set).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MeshConfig {
    /// PEM file of the CA every peer's certificate must be signed by.
    pub ca: PathBuf,
    /// PEM certificate of this node (its name is the certificate's DNS name).
    pub cert: PathBuf,
    /// PEM private key of this node.
    pub key: PathBuf,
    /// UDP address of this node's membership endpoint (SWIM over QUIC datagrams). Without it
    /// the node takes no part in membership.
    #[serde(default)]
    pub membership_listen: Option<SocketAddr>,
    /// Members to join through at start (any live member will do).
    #[serde(default)]
    pub seeds: Vec<SeedConfig>,
}

/// A member known in advance: its certificate name and membership address.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SeedConfig {
    pub name: String,
    pub addr: SocketAddr,
}

/// Where and how often this proxy ships sketches.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ExportConfig {
    /// QUIC address of the region's forecaster.
    pub forecaster: SocketAddr,
    /// Name in the forecaster's certificate.
    pub forecaster_name: String,
    /// Seconds per sketch.
    #[serde(default = "default_export_interval_secs")]
    pub interval_secs: u64,
    /// Directory of unacknowledged sketches (survives restarts).
    pub spool_dir: PathBuf,
    /// Most sketches kept unacknowledged; the oldest are dropped (and counted) beyond it.
    #[serde(default = "default_spool_max_sketches")]
    pub spool_max_sketches: usize,
}

fn default_export_interval_secs() -> u64 {
    10
}
fn default_spool_max_sketches() -> usize {
    8640
}

/// The regional forecaster.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ForecasterConfig {
    /// QUIC address proxies send sketches to.
    pub listen: SocketAddr,
    /// SQLite file of series, created on first start.
    pub database: PathBuf,
    /// Days of minute series kept.
    #[serde(default = "default_retention_days")]
    pub retention_days: u64,
    /// Seconds without a sketch after which a proxy is reported silent.
    #[serde(default = "default_silent_after_secs")]
    pub silent_after_secs: u64,
    /// Seconds after a minute ends that the brain waits for proxies still to report it; a
    /// minute is handed over sooner once every live proxy of the region has reported past it.
    /// Sketches of a minute that arrive later are counted and corrected into the brain.
    #[serde(default = "default_lateness_secs")]
    pub lateness_secs: u64,
    /// Plan and report but start or stop nothing (switchable at run time through
    /// `POST /api/v1/mode`).
    #[serde(default)]
    pub forecast_only: bool,
    /// TCP address of KEDA's external scaler (gRPC); absent: not served.
    #[serde(default)]
    pub keda_listen: Option<SocketAddr>,
    /// PEM certificate chain of the KEDA scaler's TLS (with `keda_tls_key`; both or neither).
    #[serde(default)]
    pub keda_tls_cert: Option<PathBuf>,
    /// PEM private key of the KEDA scaler's TLS.
    #[serde(default)]
    pub keda_tls_key: Option<PathBuf>,
}

fn default_lateness_secs() -> u64 {
    30
}

/// Limits of the forecaster's NDJSON ingest route (`POST /api/v1/ingest`).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct IngestConfig {
    /// Largest request body, bytes (the admin listener reads no more for this route).
    #[serde(default = "default_ingest_max_body_bytes")]
    pub max_body_bytes: usize,
    /// Longest line (one event), bytes.
    #[serde(default = "default_ingest_max_line_bytes")]
    pub max_line_bytes: usize,
    /// Most events (non-blank lines) in one batch.
    #[serde(default = "default_ingest_max_events")]
    pub max_events: usize,
    /// Memory ceiling of the ingest's own per-user feature table, MiB (as `profiling.user_table_mib`).
    #[serde(default = "default_ingest_user_table_mib")]
    pub user_table_mib: usize,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            max_body_bytes: default_ingest_max_body_bytes(),
            max_line_bytes: default_ingest_max_line_bytes(),
            max_events: default_ingest_max_events(),
            user_table_mib: default_ingest_user_table_mib(),
        }
    }
}

fn default_ingest_max_body_bytes() -> usize {
    8 * 1024 * 1024
}
fn default_ingest_max_line_bytes() -> usize {
    64 * 1024
}
fn default_ingest_max_events() -> usize {
    100_000
}
fn default_ingest_user_table_mib() -> usize {
    16
}

fn default_retention_days() -> u64 {
    30
}
fn default_silent_after_secs() -> u64 {
    60
}
