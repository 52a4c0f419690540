//! Cross-key rules: names resolve, numbers are in range, nothing ambiguous. Every problem names
//! its key and says what is expected. Validation never stops at the first problem.

use std::collections::HashSet;
use std::io::Read;
use std::path::Path;

use rustls_pki_types::pem::{Error as PemError, SectionKind};

use crate::error::{KeyPath, Problem};
use crate::schema::{Config, FleetConfig, IdentitySource, UpstreamProtocol};

/// Profiles that exist without being configured.
pub const BUILTIN_PROFILES: [&str; 2] = ["new", "default"];

/// Most lines `proxy.access_log.buffer_lines` may hold (each waiting line is a small allocation).
const MAX_ACCESS_LOG_BUFFER_LINES: usize = 1 << 20;
/// Longest `proxy.upgrade_socket`: a Unix socket path (`sun_path`) has 107 bytes and a NUL.
const MAX_UPGRADE_SOCKET_LEN: usize = 107;

pub fn validate(config: &Config) -> Vec<Problem> {
    let mut v = Validator {
        problems: Vec::new(),
    };
    v.node_and_regions(config);
    v.listeners(config);
    v.proxy_tls(config);
    v.identity(config);
    v.fleets(config);
    v.resolver(config);
    v.routes_and_profiles(config);
    v.profiling(config);
    v.learning(config);
    v.ingest(config);
    v.mesh(config);
    v.brain(&config.forecast, &config.planner);
    v.problems
}

/// Problems of the `[forecast]` and `[planner]` tables alone.
pub fn validate_brain(
    forecast: &crate::brain::ForecastConfig,
    planner: &crate::brain::PlannerConfig,
) -> Vec<Problem> {
    let mut v = Validator {
        problems: Vec::new(),
    };
    v.brain(forecast, planner);
    v.problems
}

struct Validator {
    problems: Vec<Problem>,
}

impl Validator {
    fn problem(&mut self, key: KeyPath, message: impl Into<String>) {
        self.problems.push(Problem {
            key,
            line: None,
            message: message.into(),
        });
    }

    /// The brain's own checks say `table.key = value: expected …`; keep the key as a path.
    fn brain(
        &mut self,
        forecast: &crate::brain::ForecastConfig,
        planner: &crate::brain::PlannerConfig,
    ) {
        for text in forecast.problems().into_iter().chain(planner.problems()) {
            let (key, message) = match text.split_once(" = ") {
                Some((key, rest)) => (
                    key.split('.')
                        .fold(KeyPath::root(), |at, part| at.key(part)),
                    rest.to_string(),
                ),
                None => (KeyPath::root(), text.clone()),
            };
            self.problem(key, message);
        }
    }

    fn node_and_regions(&mut self, config: &Config) {
        let root = KeyPath::root();
        if config.node.id.trim().is_empty() {
            self.problem(root.key("node").key("id"), "must not be empty");
        }
        if config.regions.is_empty() {
            self.problem(
                root.key("regions"),
                "at least one [[regions]] entry is required",
            );
        }
        let mut names = HashSet::new();
        let mut countries = HashSet::new();
        for (i, region) in config.regions.iter().enumerate() {
            let at = root.key("regions").index(i);
            if !is_name(&region.name) {
                self.problem(at.key("name"), name_expectation(&region.name));
            } else if !names.insert(region.name.as_str()) {
                self.problem(
                    at.key("name"),
                    format!("region `{}` is defined twice", region.name),
                );
            }
            for (j, country) in region.countries.iter().enumerate() {
                let key = at.key("countries").index(j);
                if country.len() != 2 || !country.bytes().all(|b| b.is_ascii_uppercase()) {
                    self.problem(
                        key,
                        format!("`{country}` is not an ISO 3166-1 alpha-2 code (two upper-case letters, e.g. \"DE\")"),
                    );
                } else if !countries.insert(country.as_str()) {
                    self.problem(
                        key,
                        format!("country `{country}` is listed in more than one region"),
                    );
                }
            }
            let fleets: Vec<&str> = config
                .fleets
                .iter()
                .filter(|f| f.region == region.name)
                .map(|f| f.name.as_str())
                .collect();
            match &region.default_fleet {
                Some(fleet) if !fleets.contains(&fleet.as_str()) => self.problem(
                    at.key("default_fleet"),
                    format!("fleet `{fleet}` is not a fleet of region `{}` (its fleets: {})", region.name, list(&fleets)),
                ),
                None if fleets.len() > 1 => self.problem(
                    at.key("default_fleet"),
                    format!(
                        "region `{}` has several fleets ({}); set default_fleet to the one for profiles without a route",
                        region.name,
                        list(&fleets)
                    ),
                ),
                _ => {}
            }
        }
        let region_names: Vec<&str> = config.regions.iter().map(|r| r.name.as_str()).collect();
        match &config.node.region {
            Some(region) if !region_names.contains(&region.as_str()) => self.problem(
                root.key("node").key("region"),
                format!(
                    "region `{region}` is not defined in [[regions]] (defined: {})",
                    list(&region_names)
                ),
            ),
            None if config.regions.len() > 1 => self.problem(
                root.key("node").key("region"),
                format!(
                    "several regions are defined ({}); say which one this node serves",
                    list(&region_names)
                ),
            ),
            _ => {}
        }
        if let Some(node_region) = config.node_region() {
            if !config.fleets.iter().any(|f| f.region == node_region) {
                self.problem(
                    root.key("fleets"),
                    format!("the node's region `{node_region}` has no fleet; add a [[fleets]] entry with region = \"{node_region}\""),
                );
            }
        }
        if let Some(fallback) = &config.geo.fallback_region {
            if !region_names.contains(&fallback.as_str()) {
                self.problem(
                    root.key("geo").key("fallback_region"),
                    format!(
                        "region `{fallback}` is not defined in [[regions]] (defined: {})",
                        list(&region_names)
                    ),
                );
            }
        }
        if let Some(db) = &config.geo.database {
            if db.as_os_str().is_empty() {
                self.problem(
                    root.key("geo").key("database"),
                    "must be a path to a MaxMind DB file",
                );
            }
        }
    }

    fn listeners(&mut self, config: &Config) {
        let root = KeyPath::root();
        if !config.admin.listen.ip().is_loopback() && !config.admin.allow_non_loopback {
            self.problem(
                root.key("admin").key("listen"),
                format!(
                    "{} is not a loopback address; the admin API stays on loopback unless admin.allow_non_loopback = true (and then set admin.token)",
                    config.admin.listen
                ),
            );
        }
        if config.admin.allow_non_loopback && config.admin.token.is_none() {
            self.problem(
                root.key("admin").key("token"),
                "required when admin.allow_non_loopback = true",
            );
        }
        if let Some(token) = &config.admin.token {
            if token.expose().len() < 16 {
                self.problem(
                    root.key("admin").key("token"),
                    "must be at least 16 characters",
                );
            }
        }
        if config.admin.listen == config.proxy.listen && config.proxy.listen.port() != 0 {
            self.problem(
                root.key("admin").key("listen"),
                "must differ from proxy.listen",
            );
        }
        if config.proxy.max_header_bytes < 1024 || config.proxy.max_header_bytes > 1024 * 1024 {
            self.problem(
                root.key("proxy").key("max_header_bytes"),
                format!(
                    "{} is out of range; expected 1024 to 1048576",
                    config.proxy.max_header_bytes
                ),
            );
        }
        for (key, value) in [
            (
                "keepalive_timeout_secs",
                config.proxy.keepalive_timeout_secs,
            ),
            ("send_timeout_secs", config.proxy.send_timeout_secs),
            ("body_timeout_secs", config.proxy.body_timeout_secs),
        ] {
            if !(1..=3600).contains(&value) {
                self.problem(
                    root.key("proxy").key(key),
                    format!("{value} is out of range; expected 1 to 3600 seconds"),
                );
            }
        }
        let via = &config.proxy.via;
        let tchar = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
        if via.len() > 64 || !via.chars().all(tchar) {
            self.problem(
                root.key("proxy").key("via"),
                format!(
                    "`{via}` is not a pseudonym for Via: expected up to 64 letters, digits or \
                     !#$%&'*+-.^_`|~ (RFC 9110 token), or \"\" for no Via"
                ),
            );
        }
        if let Some(log) = &config.proxy.access_log {
            let at = root.key("proxy").key("access_log");
            if log.path.as_os_str().is_empty() {
                self.problem(
                    at.key("path"),
                    "expected a file path, or \"-\" for standard output",
                );
            } else if !log.is_stdout() && log.path.is_dir() {
                self.problem(
                    at.key("path"),
                    format!("{} is a directory; expected a file", log.path.display()),
                );
            }
            if !(1..=MAX_ACCESS_LOG_BUFFER_LINES).contains(&log.buffer_lines) {
                self.problem(
                    at.key("buffer_lines"),
                    format!(
                        "{} is out of range; expected 1 to {MAX_ACCESS_LOG_BUFFER_LINES} lines",
                        log.buffer_lines
                    ),
                );
            }
        }
        if config.proxy.keepalive_requests == 0 {
            self.problem(
                root.key("proxy").key("keepalive_requests"),
                "must be at least 1 (requests per client connection)",
            );
        }
        let limits = &config.proxy.client_limits;
        let at = root.key("proxy").key("client_limits");
        let rate = limits.requests_per_sec;
        if !(rate.is_finite() && (0.0..=1_000_000.0).contains(&rate)) {
            self.problem(
                at.key("requests_per_sec"),
                format!("{rate} is out of range; expected 0 (no limit) to 1000000 requests/s"),
            );
        }
        if limits.burst > 1_000_000 {
            self.problem(at.key("burst"), "expected 0 to 1000000 requests");
        } else if limits.burst > 0 && rate == 0.0 {
            self.problem(
                at.key("burst"),
                "a burst needs a rate: set requests_per_sec too (0 means no limit)",
            );
        }
        if !matches!(limits.status, 429 | 503) {
            self.problem(
                at.key("status"),
                format!(
                    "{} is not a status for a refused client; expected 429 or 503",
                    limits.status
                ),
            );
        }
        if let Some(socket) = &config.proxy.upgrade_socket {
            let at = root.key("proxy").key("upgrade_socket");
            // sun_path holds 108 bytes with its terminating NUL; `.lock` is added beside it.
            let len = socket.as_os_str().len();
            if !socket.is_absolute() {
                self.problem(at, format!("{} is not an absolute path", socket.display()));
            } else if len > MAX_UPGRADE_SOCKET_LEN {
                self.problem(
                    at,
                    format!(
                        "{} is {len} bytes long; a Unix socket path may have at most {MAX_UPGRADE_SOCKET_LEN}",
                        socket.display()
                    ),
                );
            } else if socket.is_dir() {
                self.problem(
                    at,
                    format!(
                        "{} is a directory; expected a socket path",
                        socket.display()
                    ),
                );
            }
        }
        if config.proxy.threads > 1024 {
            self.problem(
                root.key("proxy").key("threads"),
                "expected 0 (one per core) to 1024",
            );
        }
    }

    /// `[proxy] tls`: both files must be readable PEM with a certificate chain and an unencrypted
    /// private key. The pair itself (does the key belong to the certificate, is the algorithm
    /// supported) is checked when the listener is built.
    fn proxy_tls(&mut self, config: &Config) {
        let Some(tls) = &config.proxy.tls else {
            return;
        };
        let at = KeyPath::root().key("proxy");
        if config.proxy.h2c {
            self.problem(
                at.key("h2c"),
                "applies to a plain (cleartext) listener only; with proxy.tls HTTP/2 is negotiated by ALPN, so remove `h2c = true`",
            );
        }
        if let Err(message) = check_pem_file(&tls.cert, PemContent::Certificate) {
            self.problem(at.key("tls").key("cert"), message);
        }
        if let Err(message) = check_pem_file(&tls.key, PemContent::PrivateKey) {
            self.problem(at.key("tls").key("key"), message);
        }
    }

    fn identity(&mut self, config: &Config) {
        let at = KeyPath::root().key("identity");
        if config.identity.secret.expose().len() < 16 {
            self.problem(at.key("secret"), "must be at least 16 bytes (it keys the identity hash; generate one with `openssl rand -hex 32`)");
        }
        if config.identity.sources.is_empty() {
            self.problem(
                at.key("sources"),
                "at least one identity source is required (e.g. { kind = \"client_ip\" })",
            );
        }
        if !(8..=4096).contains(&config.identity.max_len) {
            self.problem(
                at.key("max_len"),
                format!(
                    "{} is out of range; expected 8 to 4096",
                    config.identity.max_len
                ),
            );
        }
        for (i, source) in config.identity.sources.iter().enumerate() {
            let key = at.key("sources").index(i);
            match source {
                IdentitySource::Header { name } | IdentitySource::ApiKey { header: name } => {
                    if !is_header_name(name) {
                        self.problem(key, format!("`{name}` is not a valid HTTP header name"));
                    }
                }
                IdentitySource::Cookie { name } => {
                    if name.is_empty() || name.contains([';', '=', ' ']) {
                        self.problem(
                            key.key("name"),
                            format!("`{name}` is not a valid cookie name"),
                        );
                    }
                }
                IdentitySource::Bearer { jwt: Some(jwt) } => {
                    let keys = [
                        jwt.hmac_secret.is_some(),
                        jwt.rsa_public_key_file.is_some(),
                        jwt.ec_public_key_file.is_some(),
                    ]
                    .iter()
                    .filter(|set| **set)
                    .count();
                    if keys != 1 {
                        self.problem(
                            key.key("jwt"),
                            "set exactly one of hmac_secret, rsa_public_key_file, ec_public_key_file",
                        );
                    }
                    if let Some(secret) = &jwt.hmac_secret {
                        if secret.expose().len() < 16 {
                            self.problem(
                                key.key("jwt").key("hmac_secret"),
                                "must be at least 16 bytes",
                            );
                        }
                    }
                }
                IdentitySource::Bearer { jwt: None } | IdentitySource::ClientIp => {}
            }
        }
    }

    fn fleets(&mut self, config: &Config) {
        let region_names: Vec<&str> = config.regions.iter().map(|r| r.name.as_str()).collect();
        let mut seen = HashSet::new();
        for (i, fleet) in config.fleets.iter().enumerate() {
            let at = KeyPath::root().key("fleets").index(i);
            if !is_name(&fleet.name) {
                self.problem(at.key("name"), name_expectation(&fleet.name));
            } else if !seen.insert((fleet.region.as_str(), fleet.name.as_str())) {
                self.problem(
                    at.key("name"),
                    format!(
                        "fleet `{}` is defined twice in region `{}`",
                        fleet.name, fleet.region
                    ),
                );
            }
            if !region_names.contains(&fleet.region.as_str()) {
                self.problem(
                    at.key("region"),
                    format!(
                        "region `{}` is not defined in [[regions]] (defined: {})",
                        fleet.region,
                        list(&region_names)
                    ),
                );
            }
            match &fleet.provisioner {
                None if fleet.backends.is_empty() => self.problem(
                    at.key("backends"),
                    "at least one backend (\"host:port\") is required, or a [fleets.provisioner]",
                ),
                Some(p) if p.supplies_backends() && !fleet.backends.is_empty() => self.problem(
                    at.key("backends"),
                    "a fleet with a process provisioner gets its backends from it; leave `backends` empty",
                ),
                Some(p) if !p.supplies_backends() && fleet.backends.is_empty() => self.problem(
                    at.key("backends"),
                    format!(
                        "required with a `{}` provisioner: the addresses the proxies route to (\"host:port\" of the Service or load balancer in front of the instances it scales)",
                        p.kind()
                    ),
                ),
                _ => {}
            }
            if let Some(provisioner) = &fleet.provisioner {
                self.provisioner(at.key("provisioner"), provisioner);
            }
            let mut backends = HashSet::new();
            for (j, backend) in fleet.backends.iter().enumerate() {
                let key = at.key("backends").index(j);
                if let Err(why) = check_host_port(backend) {
                    self.problem(
                        key,
                        format!(
                            "`{backend}` {why}; expected \"host:port\", e.g. \"10.0.0.5:8080\""
                        ),
                    );
                } else if !backends.insert(backend.as_str()) {
                    self.problem(key, format!("backend `{backend}` is listed twice"));
                }
            }
            let hc = &fleet.health_check;
            if let Some(service) = &hc.grpc_service {
                if fleet.upstream.protocol != UpstreamProtocol::Http2 {
                    self.problem(
                        at.key("health_check").key("grpc_service"),
                        "the gRPC health protocol needs HTTP/2 to the backends: set upstream = { protocol = \"http2\" } (h2c, or h2 with tls)",
                    );
                }
                if service.len() > 1024 || service.chars().any(char::is_control) {
                    self.problem(
                        at.key("health_check").key("grpc_service"),
                        "expected a service name of at most 1024 bytes without control characters",
                    );
                }
            }
            if !hc.path.starts_with('/') {
                self.problem(
                    at.key("health_check").key("path"),
                    format!("`{}` must start with '/'", hc.path),
                );
            }
            if !(50..=3_600_000).contains(&hc.interval_ms) {
                self.problem(
                    at.key("health_check").key("interval_ms"),
                    "expected 50 to 3600000",
                );
            }
            if hc.timeout_ms == 0 || hc.timeout_ms > hc.interval_ms.max(1) * 10 {
                self.problem(
                    at.key("health_check").key("timeout_ms"),
                    "expected 1 to 10 × interval_ms",
                );
            }
            if hc.healthy_threshold == 0 || hc.unhealthy_threshold == 0 {
                let key = if hc.healthy_threshold == 0 {
                    "healthy_threshold"
                } else {
                    "unhealthy_threshold"
                };
                self.problem(at.key("health_check").key(key), "must be at least 1");
            }
            for (name, value) in [
                ("connect_ms", fleet.timeouts.connect_ms),
                ("read_ms", fleet.timeouts.read_ms),
                ("write_ms", fleet.timeouts.write_ms),
                ("idle_ms", fleet.timeouts.idle_ms),
            ] {
                if !(1..=3_600_000).contains(&value) {
                    self.problem(
                        at.key("timeouts").key(name),
                        format!("{value} is out of range; expected 1 to 3600000 ms"),
                    );
                }
            }
            self.upstream(&at, fleet);
            if fleet.retries > 10 {
                self.problem(
                    at.key("retries"),
                    format!("{} is out of range; expected 0 to 10", fleet.retries),
                );
            }
            if fleet.eject_after_failures == 0 {
                self.problem(at.key("eject_after_failures"), "must be at least 1");
            }
            if !(fleet.capacity_rps.is_finite() && fleet.capacity_rps > 0.0) {
                self.problem(
                    at.key("capacity_rps"),
                    format!(
                        "{} must be a number > 0 (requests/s per instance)",
                        fleet.capacity_rps
                    ),
                );
            }
            if !(fleet.cost_per_instance_hour.is_finite() && fleet.cost_per_instance_hour >= 0.0) {
                self.problem(
                    at.key("cost_per_instance_hour"),
                    format!("{} must be a number >= 0", fleet.cost_per_instance_hour),
                );
            }
            if fleet.cold_start_secs > 86_400 {
                self.problem(at.key("cold_start_secs"), "expected 0 to 86400 seconds");
            }
            if let Some(ms) = fleet.latency_slo_ms {
                if !(1..=600_000).contains(&ms) {
                    self.problem(
                        at.key("latency_slo_ms"),
                        format!("{ms} is out of range; expected 1 to 600000 ms"),
                    );
                }
            }
            if !(fleet.latency_slo_quantile > 0.0 && fleet.latency_slo_quantile < 1.0) {
                self.problem(
                    at.key("latency_slo_quantile"),
                    format!(
                        "{} must be a share in (0, 1), e.g. 0.99",
                        fleet.latency_slo_quantile
                    ),
                );
            }
            if fleet.learn_capacity && fleet.latency_slo_ms.is_none() {
                self.problem(
                    at.key("learn_capacity"),
                    "needs latency_slo_ms: capacity is learned against a latency SLO",
                );
            }
            if fleet.max_instances == Some(0) {
                self.problem(at.key("max_instances"), "must be at least 1");
            }
            if let Some(budget) = fleet.budget_per_hour {
                if !(budget.is_finite() && budget > 0.0) {
                    self.problem(
                        at.key("budget_per_hour"),
                        format!("{budget} must be a number > 0"),
                    );
                }
            }
            if let Some(resources) = &fleet.instance_resources {
                let at = at.key("instance_resources");
                let amounts = [
                    ("cpu_cores", resources.cpu_cores),
                    ("memory_mb", resources.memory_mb),
                    ("network_mbps", resources.network_mbps),
                    ("io_ops", resources.io_ops),
                ];
                for (key, value) in amounts {
                    if !(value.is_finite() && value >= 0.0) {
                        self.problem(at.key(key), format!("{value} must be a number >= 0"));
                    }
                }
                if amounts.iter().all(|(_, v)| *v <= 0.0) {
                    self.problem(
                        at,
                        "names no resource: give at least one of cpu_cores, memory_mb, network_mbps, io_ops > 0",
                    );
                }
            }
            let profiles: Vec<&str> = config.profiles.iter().map(|p| p.name.as_str()).collect();
            let mut seen = HashSet::new();
            for (j, profile) in fleet.warm_sub_pools.iter().enumerate() {
                let at = at.key("warm_sub_pools").index(j);
                if !profiles.contains(&profile.as_str()) {
                    self.problem(
                        at,
                        format!(
                            "profile `{profile}` is not defined in [[profiles]] (defined: {})",
                            list(&profiles)
                        ),
                    );
                } else if !seen.insert(profile.as_str()) {
                    self.problem(at, format!("profile `{profile}` is listed twice"));
                }
            }
        }
    }

    fn provisioner(&mut self, at: KeyPath, provisioner: &crate::ProvisionerConfig) {
        match provisioner {
            crate::ProvisionerConfig::Process {
                command,
                host,
                ready_timeout_secs,
                stop_timeout_secs,
            } => {
                if command.is_empty() || command[0].trim().is_empty() {
                    self.problem(
                        at.key("command"),
                        "expected a program and its arguments, e.g. [\"prescale\", \"backend\", \"--listen\", \"{host}:{port}\"]",
                    );
                } else if !command.iter().any(|a| a.contains("{port}")) {
                    self.problem(
                        at.key("command"),
                        "no argument holds `{port}`: each instance must be told the port it listens on",
                    );
                }
                for (j, arg) in command.iter().enumerate() {
                    if let Some(unknown) = unknown_placeholder(arg) {
                        self.problem(
                            at.key("command").index(j),
                            format!(
                                "`{{{unknown}}}` is not a placeholder; expected {{port}}, {{host}}, {{fleet}} or {{instance}}"
                            ),
                        );
                    }
                }
                if !host.is_loopback() {
                    self.problem(
                        at.key("host"),
                        format!("{host} is not a loopback address; local processes listen on loopback, e.g. 127.0.0.1"),
                    );
                }
                if !(1..=3600).contains(ready_timeout_secs) {
                    self.problem(at.key("ready_timeout_secs"), "expected 1 to 3600 seconds");
                }
                if !(1..=600).contains(stop_timeout_secs) {
                    self.problem(at.key("stop_timeout_secs"), "expected 1 to 600 seconds");
                }
            }
            crate::ProvisionerConfig::Exec {
                command,
                timeout_secs,
            } => {
                if command.is_empty() || command[0].trim().is_empty() {
                    self.problem(
                        at.key("command"),
                        "expected a program and its arguments, e.g. [\"/usr/local/bin/scale-fleet\", \"--cluster\", \"prod\"]",
                    );
                }
                if !(1..=3600).contains(timeout_secs) {
                    self.problem(at.key("timeout_secs"), "expected 1 to 3600 seconds");
                }
            }
            crate::ProvisionerConfig::Webhook {
                url,
                secret_env,
                timeout_secs,
            } => {
                if let Err(why) = check_http_url(url) {
                    self.problem(at.key("url"), format!("`{url}` {why}"));
                }
                if let Some(name) = secret_env {
                    if !is_env_name(name) {
                        self.problem(
                            at.key("secret_env"),
                            format!("`{name}` is not an environment variable name; expected letters, digits and '_', not starting with a digit (the name of the variable holding the key, not the key)"),
                        );
                    }
                }
                if !(1..=300).contains(timeout_secs) {
                    self.problem(at.key("timeout_secs"), "expected 1 to 300 seconds");
                }
            }
            crate::ProvisionerConfig::Kubernetes {
                namespace,
                deployment,
                statefulset,
                kubeconfig,
                scale_in_step,
                timeout_secs,
            } => {
                if !is_k8s_name(namespace, 63) {
                    self.problem(
                        at.key("namespace"),
                        format!("`{namespace}` is not a Kubernetes namespace name; expected 1 to 63 of a-z, 0-9, '-', starting and ending with a letter or digit"),
                    );
                }
                match (deployment, statefulset) {
                    (None, None) => self.problem(
                        at.key("deployment"),
                        "the workload to scale is required: `deployment = \"NAME\"` or `statefulset = \"NAME\"`",
                    ),
                    (Some(_), Some(_)) => self.problem(
                        at.key("statefulset"),
                        "one workload per fleet: set `deployment` or `statefulset`, not both",
                    ),
                    (Some(name), None) | (None, Some(name)) => {
                        if !is_k8s_name(name, 253) {
                            let key = if deployment.is_some() {
                                "deployment"
                            } else {
                                "statefulset"
                            };
                            self.problem(
                                at.key(key),
                                format!("`{name}` is not a Kubernetes object name; expected 1 to 253 of a-z, 0-9, '-', '.', starting and ending with a letter or digit"),
                            );
                        }
                    }
                }
                if let Some(path) = kubeconfig {
                    if let Err(e) = std::fs::metadata(path).and_then(|m| {
                        if m.is_file() {
                            Ok(())
                        } else {
                            Err(std::io::Error::other("not a file"))
                        }
                    }) {
                        self.problem(
                            at.key("kubeconfig"),
                            format!("cannot read {}: {e}", path.display()),
                        );
                    }
                }
                if !(1..=1000).contains(scale_in_step) {
                    self.problem(
                        at.key("scale_in_step"),
                        "expected 1 to 1000 replicas per scale-in step",
                    );
                }
                if !(1..=300).contains(timeout_secs) {
                    self.problem(at.key("timeout_secs"), "expected 1 to 300 seconds");
                }
            }
        }
    }

    fn routes_and_profiles(&mut self, config: &Config) {
        let mut profile_names = HashSet::new();
        for (i, profile) in config.profiles.iter().enumerate() {
            let at = KeyPath::root().key("profiles").index(i);
            if !is_name(&profile.name) {
                self.problem(at.key("name"), name_expectation(&profile.name));
            } else if !profile_names.insert(profile.name.as_str()) {
                self.problem(
                    at.key("name"),
                    format!("profile `{}` is defined twice", profile.name),
                );
            }
            if !(profile.revenue_weight.is_finite() && profile.revenue_weight >= 0.0) {
                self.problem(
                    at.key("revenue_weight"),
                    format!("{} must be a number >= 0", profile.revenue_weight),
                );
            }
        }
        let region_names: Vec<&str> = config.regions.iter().map(|r| r.name.as_str()).collect();
        let mut routed = HashSet::new();
        for (i, route) in config.routes.iter().enumerate() {
            let at = KeyPath::root().key("routes").index(i);
            if !is_name(&route.profile) {
                self.problem(at.key("profile"), name_expectation(&route.profile));
            }
            if !routed.insert((route.profile.as_str(), route.region.as_deref())) {
                self.problem(
                    at.key("profile"),
                    format!(
                        "profile `{}` has two routes for the same region",
                        route.profile
                    ),
                );
            }
            let regions: Vec<&str> = match &route.region {
                Some(region) if !region_names.contains(&region.as_str()) => {
                    self.problem(
                        at.key("region"),
                        format!(
                            "region `{region}` is not defined in [[regions]] (defined: {})",
                            list(&region_names)
                        ),
                    );
                    continue;
                }
                Some(region) => vec![region.as_str()],
                None => region_names.clone(),
            };
            let missing: Vec<&str> = regions
                .iter()
                .copied()
                .filter(|r| {
                    !config
                        .fleets
                        .iter()
                        .any(|f| f.region == *r && f.name == route.fleet)
                })
                .collect();
            if !missing.is_empty() {
                self.problem(
                    at.key("fleet"),
                    format!(
                        "fleet `{}` does not exist in region(s) {}; define it there or set routes.region",
                        route.fleet,
                        list(&missing)
                    ),
                );
            }
        }
        let assignment = KeyPath::root().key("assignment");
        if !is_name(&config.assignment.default_profile) {
            self.problem(
                assignment.key("default_profile"),
                name_expectation(&config.assignment.default_profile),
            );
        }
        if config.assignment.new_user_min_requests > 1_000_000 {
            self.problem(
                assignment.key("new_user_min_requests"),
                "expected 0 to 1000000",
            );
        }
        for (i, rule) in config.assignment.rules.iter().enumerate() {
            let at = assignment.key("rules").index(i);
            if !is_name(&rule.profile) {
                self.problem(at.key("profile"), name_expectation(&rule.profile));
            }
            if rule.path_prefix.is_none() && rule.method.is_none() && rule.header.is_none() {
                self.problem(
                    at.clone(),
                    "a rule needs at least one of path_prefix, method, header",
                );
            }
            if let Some(prefix) = &rule.path_prefix {
                if !prefix.starts_with('/') {
                    self.problem(
                        at.key("path_prefix"),
                        format!("`{prefix}` must start with '/'"),
                    );
                }
            }
            if let Some(method) = &rule.method {
                if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
                    self.problem(
                        at.key("method"),
                        format!("`{method}` is not an HTTP method in upper case (e.g. \"POST\")"),
                    );
                }
            }
            if let Some(header) = &rule.header {
                if !is_header_name(&header.name) {
                    self.problem(
                        at.key("header").key("name"),
                        format!("`{}` is not a valid HTTP header name", header.name),
                    );
                }
            }
        }
    }

    fn mesh(&mut self, config: &Config) {
        let root = KeyPath::root();
        if (config.export.is_some() || config.forecaster.is_some()) && config.mesh.is_none() {
            let needed_by = if config.export.is_some() {
                "[export]"
            } else {
                "[forecaster]"
            };
            self.problem(
                root.key("mesh"),
                format!("{needed_by} needs [mesh] with ca, cert and key (`prescale certs --out DIR --node NAME` writes a dev set)"),
            );
        }
        if let Some(export) = &config.export {
            let at = root.key("export");
            if !(1..=60).contains(&export.interval_secs) || 60 % export.interval_secs != 0 {
                self.problem(
                    at.key("interval_secs"),
                    format!("{} is not a divisor of 60 (sketches are merged into minutes): use 1, 2, 5, 10, 15, 20, 30 or 60", export.interval_secs),
                );
            }
            if export.forecaster_name.trim().is_empty() {
                self.problem(
                    at.key("forecaster_name"),
                    "must be the DNS name in the forecaster's certificate",
                );
            }
            if !(1..=1_000_000).contains(&export.spool_max_sketches) {
                self.problem(at.key("spool_max_sketches"), "expected 1 to 1000000");
            }
        }
        if let Some(forecaster) = &config.forecaster {
            let at = root.key("forecaster");
            if forecaster.retention_days == 0 || forecaster.retention_days > 3650 {
                self.problem(at.key("retention_days"), "expected 1 to 3650");
            }
            if !(1..=3600).contains(&forecaster.lateness_secs) {
                self.problem(at.key("lateness_secs"), "expected 1 to 3600 seconds");
            }
            if forecaster.silent_after_secs == 0 {
                self.problem(at.key("silent_after_secs"), "must be at least 1");
            }
            self.keda_tls(forecaster, &at);
        }
    }

    /// `forecaster.keda_tls_cert` / `keda_tls_key`: only with `keda_listen`, both or neither,
    /// each a readable PEM file of its kind.
    fn keda_tls(&mut self, forecaster: &crate::schema::ForecasterConfig, at: &KeyPath) {
        let pair = [
            (
                "keda_tls_cert",
                &forecaster.keda_tls_cert,
                PemContent::Certificate,
            ),
            (
                "keda_tls_key",
                &forecaster.keda_tls_key,
                PemContent::PrivateKey,
            ),
        ];
        if forecaster.keda_listen.is_none() {
            for (key, path, _) in pair {
                if path.is_some() {
                    self.problem(
                        at.key(key),
                        "applies to KEDA's scaler only: set forecaster.keda_listen too, or remove it",
                    );
                }
            }
            return;
        }
        self.pem_pair(at, &pair, |other| {
            format!("required with forecaster.{other}: the scaler's TLS needs a certificate and its key")
        });
    }

    /// A certificate and its key given together: both or neither (`missing` says why one is
    /// required, given the other's key), each a readable PEM file of its kind.
    fn pem_pair(
        &mut self,
        at: &KeyPath,
        pair: &[(&str, &Option<std::path::PathBuf>, PemContent); 2],
        missing: impl Fn(&str) -> String,
    ) {
        for (i, (key, path, content)) in pair.iter().enumerate() {
            let (other, other_path, _) = &pair[1 - i];
            match path {
                None if other_path.is_some() => self.problem(at.key(key), missing(other)),
                None => {}
                Some(path) => {
                    if let Err(message) = check_pem_file(path, *content) {
                        self.problem(at.key(key), message);
                    }
                }
            }
        }
    }

    /// `[resolver]` and each fleet's `resolve`: name servers that are addresses, sane intervals,
    /// and names to resolve where `resolve` is on.
    fn resolver(&mut self, config: &Config) {
        let at = KeyPath::root().key("resolver");
        let resolver = &config.resolver;
        for (i, (entry, addr)) in resolver
            .nameservers
            .iter()
            .zip(resolver.nameserver_addrs())
            .enumerate()
        {
            if addr.is_none() {
                self.problem(
                    at.key("nameservers").index(i),
                    format!("`{entry}` is not an IP address or ip:port (e.g. \"10.0.0.2\" or \"10.0.0.2:53\")"),
                );
            }
        }
        if !(1..=3600).contains(&resolver.refresh_secs) {
            self.problem(at.key("refresh_secs"), "expected 1 to 3600 seconds");
        }
        if !(1..=60_000).contains(&resolver.timeout_ms) {
            self.problem(at.key("timeout_ms"), "expected 1 to 60000 ms");
        }
        for (i, fleet) in config.fleets.iter().enumerate() {
            if !fleet.resolve {
                continue;
            }
            let key = KeyPath::root().key("fleets").index(i).key("resolve");
            if fleet
                .provisioner
                .as_ref()
                .is_some_and(|p| p.supplies_backends())
            {
                self.problem(
                    key,
                    "a process provisioner's backends are the addresses it starts; there is no name to resolve",
                );
            } else if !fleet.backends.iter().any(|b| {
                check_host_port(b).is_ok() && backend_host(b).parse::<std::net::IpAddr>().is_err()
            }) {
                self.problem(
                    key,
                    "no backend is given by name (\"host:port\" with a DNS name), so there is nothing to re-resolve",
                );
            }
        }
    }

    /// `[fleets.upstream]`: a protocol the transport can carry, TLS files that hold what their
    /// key says, and a name to verify each backend's certificate against.
    fn upstream(&mut self, fleet_at: &KeyPath, fleet: &FleetConfig) {
        let upstream = &fleet.upstream;
        let at = fleet_at.key("upstream");
        let Some(tls) = &upstream.tls else {
            if upstream.protocol == UpstreamProtocol::Auto {
                self.problem(
                    at.key("protocol"),
                    "`auto` picks HTTP/2 or HTTP/1.1 by ALPN, which needs [fleets.upstream.tls]; for cleartext HTTP/2 (h2c) use \"http2\"",
                );
            }
            return;
        };
        let at = at.key("tls");
        match &tls.server_name {
            Some(name) => {
                if let Err(why) = check_server_name(name) {
                    self.problem(at.key("server_name"), format!("`{name}` {why}"));
                }
            }
            None => {
                for (j, backend) in fleet.backends.iter().enumerate() {
                    let host = backend_host(backend);
                    if check_host_port(backend).is_ok() && check_server_name(host).is_err() {
                        self.problem(
                            fleet_at.key("backends").index(j),
                            format!("`{host}` cannot be checked against a certificate (not a DNS name or IP address); set upstream.tls.server_name"),
                        );
                    }
                }
            }
        }
        if let Some(ca) = &tls.ca_file {
            if !tls.verify {
                self.problem(
                    at.key("ca_file"),
                    "has no effect with verify = false (no certificate is checked); remove one of them",
                );
            } else if let Err(message) = check_pem_file(ca, PemContent::Certificate) {
                self.problem(at.key("ca_file"), message);
            }
        }
        let pair = [
            ("client_cert", &tls.client_cert, PemContent::Certificate),
            ("client_key", &tls.client_key, PemContent::PrivateKey),
        ];
        self.pem_pair(&at, &pair, |other| {
            format!("required with upstream.tls.{other}: a client certificate needs its key, and a key its certificate")
        });
    }

    fn profiling(&mut self, config: &Config) {
        let at = KeyPath::root().key("profiling");
        if !(1..=65_536).contains(&config.profiling.user_table_mib) {
            self.problem(
                at.key("user_table_mib"),
                format!(
                    "{} is out of range; expected 1 to 65536 MiB",
                    config.profiling.user_table_mib
                ),
            );
        }
        if !(60..=7 * 86_400).contains(&config.profiling.session_gap_secs) {
            self.problem(at.key("session_gap_secs"), "expected 60 to 604800 seconds");
        }
    }

    fn ingest(&mut self, config: &Config) {
        let at = KeyPath::root().key("ingest");
        let ingest = &config.ingest;
        if !(64 * 1024..=256 * 1024 * 1024).contains(&ingest.max_body_bytes) {
            self.problem(
                at.key("max_body_bytes"),
                format!(
                    "{} is out of range; expected 65536 (64 KiB) to 268435456 (256 MiB)",
                    ingest.max_body_bytes
                ),
            );
        }
        // An event may carry a 256-byte user id and every optional field.
        if !(1024..=16 * 1024 * 1024).contains(&ingest.max_line_bytes) {
            self.problem(
                at.key("max_line_bytes"),
                format!(
                    "{} is out of range; expected 1024 to 16777216 (16 MiB)",
                    ingest.max_line_bytes
                ),
            );
        } else if ingest.max_line_bytes > ingest.max_body_bytes {
            self.problem(
                at.key("max_line_bytes"),
                format!(
                    "{} is larger than ingest.max_body_bytes ({}); a line must fit in a body",
                    ingest.max_line_bytes, ingest.max_body_bytes
                ),
            );
        }
        if !(1..=10_000_000).contains(&ingest.max_events) {
            self.problem(
                at.key("max_events"),
                format!(
                    "{} is out of range; expected 1 to 10000000",
                    ingest.max_events
                ),
            );
        }
        if !(1..=65_536).contains(&ingest.user_table_mib) {
            self.problem(
                at.key("user_table_mib"),
                format!(
                    "{} is out of range; expected 1 to 65536 MiB",
                    ingest.user_table_mib
                ),
            );
        }
    }
}

impl Validator {
    fn learning(&mut self, config: &Config) {
        let at = KeyPath::root().key("learning");
        let l = &config.learning;
        // A published model holds at most 64 profiles (`ProfileModel::MAX_CENTROIDS`).
        const MAX_K: usize = 64;
        const MAX_SAMPLED: usize = 10_000_000;
        if !(1..=MAX_SAMPLED).contains(&l.max_sampled_users) {
            self.problem(
                at.key("max_sampled_users"),
                format!(
                    "{} is out of range; expected 1 to {MAX_SAMPLED} users",
                    l.max_sampled_users
                ),
            );
        }
        let largest_k = match l.k {
            Some(k) => {
                if !(1..=MAX_K).contains(&k) {
                    self.problem(
                        at.key("k"),
                        format!("{k} is out of range; expected 1 to {MAX_K} profiles"),
                    );
                }
                k
            }
            None => {
                if !(2..=MAX_K).contains(&l.k_min) {
                    self.problem(
                        at.key("k_min"),
                        format!(
                            "{} is out of range; expected 2 to {MAX_K} profiles (the silhouette score compares at least two)",
                            l.k_min
                        ),
                    );
                }
                if !(l.k_min..=MAX_K).contains(&l.k_max) {
                    self.problem(
                        at.key("k_max"),
                        format!(
                            "{} is out of range; expected k_min ({}) to {MAX_K} profiles",
                            l.k_max, l.k_min
                        ),
                    );
                }
                l.k_max
            }
        };
        if l.min_users < largest_k.max(2) || l.min_users > l.max_sampled_users {
            self.problem(
                at.key("min_users"),
                format!(
                    "{} is out of range; expected at least {} (the most profiles a build may make{}) and at most max_sampled_users ({})",
                    l.min_users,
                    largest_k.max(2),
                    if l.k.is_some() { ", `k`" } else { ", `k_max`" },
                    l.max_sampled_users
                ),
            );
        }
        if !(60..=90 * 86_400).contains(&l.sample_max_age_secs) {
            self.problem(
                at.key("sample_max_age_secs"),
                "expected 60 to 7776000 seconds (90 days)",
            );
        }
        if !(60..=30 * 86_400).contains(&l.rebuild_interval_secs) {
            self.problem(
                at.key("rebuild_interval_secs"),
                "expected 60 to 2592000 seconds (30 days)",
            );
        }
    }
}

/// What a PEM file named in the config must hold.
#[derive(Clone, Copy, PartialEq, Eq)]
enum PemContent {
    Certificate,
    PrivateKey,
}

/// Certificate and key files are small; anything larger is not one (and is not read whole).
const MAX_PEM_BYTES: u64 = 1024 * 1024;

/// Private key kinds the proxy listener can load: PKCS#8, PKCS#1 (RSA) and SEC1 (EC).
const PRIVATE_KEY_KINDS: [SectionKind; 3] = [
    SectionKind::PrivateKey,
    SectionKind::RsaPrivateKey,
    SectionKind::EcPrivateKey,
];

/// Checks that `path` is a readable PEM file whose blocks are well formed (base64 of one DER
/// value) and that it holds what `want` says; the error says what is wrong and what is expected.
fn check_pem_file(path: &Path, want: PemContent) -> Result<(), String> {
    let shown = path.display();
    let expected = match want {
        PemContent::Certificate => "a PEM certificate chain (`-----BEGIN CERTIFICATE-----`)",
        PemContent::PrivateKey => {
            "an unencrypted PEM private key (`-----BEGIN PRIVATE KEY-----`, `RSA PRIVATE KEY` or `EC PRIVATE KEY`)"
        }
    };
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|file| file.take(MAX_PEM_BYTES + 1).read_to_end(&mut bytes))
        .map_err(|e| format!("cannot read `{shown}`: {e}; expected {expected}"))?;
    if bytes.len() as u64 > MAX_PEM_BYTES {
        return Err(format!(
            "`{shown}` is larger than 1 MiB, too large for a certificate or key file; expected {expected}"
        ));
    }
    let Ok(text) = std::str::from_utf8(&bytes) else {
        let hint = if bytes.first() == Some(&0x30) {
            " (it looks like binary DER; convert it, e.g. `openssl x509 -inform der` or `openssl pkey -inform der`)"
        } else {
            ""
        };
        return Err(format!(
            "`{shown}` is not a PEM file{hint}; expected {expected}"
        ));
    };
    let blocks = pem_sections(&bytes, text).map_err(|why| format!("`{shown}`: {why}"))?;
    if blocks.is_empty() && !text.contains("-----BEGIN ") {
        return Err(format!(
            "`{shown}` is not a PEM file (no `-----BEGIN …-----` line); expected {expected}"
        ));
    }
    let found = || {
        if blocks.is_empty() {
            return "no block the TLS library reads".to_string();
        }
        blocks
            .iter()
            .map(|kind| format!("`{}`", pem_label(*kind)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    match want {
        PemContent::Certificate => {
            if !blocks.contains(&SectionKind::Certificate) {
                return Err(format!(
                    "`{shown}` holds no certificate (found {}); expected {expected}",
                    found()
                ));
            }
        }
        PemContent::PrivateKey => {
            if !blocks.iter().any(|kind| PRIVATE_KEY_KINDS.contains(kind)) {
                let why = if text.contains("-----BEGIN ENCRYPTED PRIVATE KEY-----") {
                    "holds an encrypted private key, which the proxy cannot use (decrypt it with `openssl pkey`)".to_string()
                } else {
                    format!("holds no private key (found {})", found())
                };
                return Err(format!("`{shown}` {why}; expected {expected}"));
            }
        }
    }
    Ok(())
}

/// The kinds of the PEM blocks in `bytes` (rustls's PEM reader, which skips blocks of other
/// labels and text outside blocks), after checking that each holds a single DER value. `text` is
/// the same bytes, for naming what went wrong.
fn pem_sections(bytes: &[u8], text: &str) -> Result<Vec<SectionKind>, String> {
    let mut reader = bytes;
    let mut kinds = Vec::new();
    loop {
        match rustls_pki_types::pem::from_buf(&mut reader) {
            Ok(Some((kind, der))) => {
                if !is_single_der_value(&der) {
                    return Err(format!(
                        "a `{}` PEM block does not hold a DER-encoded value",
                        pem_label(kind)
                    ));
                }
                kinds.push(kind);
            }
            Ok(None) => return Ok(kinds),
            Err(PemError::MissingSectionEnd { end_marker }) => {
                return Err(format!(
                    "a PEM block has no `-----END {}-----` line",
                    String::from_utf8_lossy(&end_marker)
                ))
            }
            Err(PemError::IllegalSectionStart { line }) => {
                return Err(format!(
                    "`{}` is not a well-formed `-----BEGIN …-----` line",
                    String::from_utf8_lossy(&line).trim()
                ))
            }
            Err(PemError::Base64Decode(_)) if text.contains("Proc-Type:") => {
                return Err(
                    "a PEM block has headers (`Proc-Type`), as legacy encrypted keys do; expected plain base64"
                        .to_string(),
                )
            }
            Err(PemError::Base64Decode(why)) => {
                return Err(format!("a PEM block is not valid base64 ({why})"))
            }
            Err(other) => return Err(format!("not a well-formed PEM file ({other})")),
        }
    }
}

/// The `LABEL` of `-----BEGIN LABEL-----` for the kinds the proxy's files may hold.
fn pem_label(kind: SectionKind) -> &'static str {
    match kind {
        SectionKind::Certificate => "CERTIFICATE",
        SectionKind::PrivateKey => "PRIVATE KEY",
        SectionKind::RsaPrivateKey => "RSA PRIVATE KEY",
        SectionKind::EcPrivateKey => "EC PRIVATE KEY",
        SectionKind::PublicKey => "PUBLIC KEY",
        SectionKind::Crl => "X509 CRL",
        SectionKind::Csr => "CERTIFICATE REQUEST",
        _ => "other",
    }
}

/// Whether `der` is exactly one DER SEQUENCE (certificates and keys all are).
fn is_single_der_value(der: &[u8]) -> bool {
    let (Some(&0x30), Some(&first)) = (der.first(), der.get(1)) else {
        return false;
    };
    let (header, length) = if first < 0x80 {
        (2, usize::from(first))
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 || der.len() < 2 + count {
            return false;
        }
        let length = der[2..2 + count]
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        (2 + count, length)
    };
    header.checked_add(length) == Some(der.len())
}

/// Names of regions, fleets and profiles appear in metrics labels and URLs.
/// The first `{name}` in `arg` that is not one of the process provisioner's placeholders.
fn unknown_placeholder(arg: &str) -> Option<&str> {
    let mut rest = arg;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        let close = after.find('}')?;
        let name = &after[..close];
        if !matches!(name, "port" | "host" | "fleet" | "instance") {
            return Some(name);
        }
        rest = &after[close + 1..];
    }
    None
}

/// An `http://` or `https://` URL with a host (and no credentials in it).
fn check_http_url(url: &str) -> Result<(), &'static str> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or("is not an http:// or https:// URL")?;
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("has whitespace in it");
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.contains('@') {
        return Err("carries credentials; sign the body with secret_env instead");
    }
    let (host, port) = match authority.strip_prefix('[') {
        Some(bracketed) => {
            let (address, after) = bracketed.split_once(']').ok_or("has an unclosed [")?;
            if address.parse::<std::net::Ipv6Addr>().is_err() {
                return Err("has an invalid IPv6 host");
            }
            if !after.is_empty() && !after.starts_with(':') {
                return Err("has an invalid host");
            }
            (None, after.strip_prefix(':'))
        }
        None => match authority.split_once(':') {
            Some((host, port)) => (Some(host), Some(port)),
            None => (Some(authority), None),
        },
    };
    if let Some(port) = port {
        if !matches!(port.parse::<u16>(), Ok(p) if p > 0) {
            return Err("has an invalid port");
        }
    }
    if let Some(host) = host {
        if host.is_empty() {
            return Err("has no host");
        }
        if !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        {
            return Err("has an invalid host");
        }
    }
    Ok(())
}

/// A POSIX environment variable name.
fn is_env_name(name: &str) -> bool {
    !name.is_empty()
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && !name.as_bytes()[0].is_ascii_digit()
}

/// A Kubernetes object name (RFC 1123 label when `max` is 63, subdomain when 253).
fn is_k8s_name(name: &str, max: usize) -> bool {
    let bytes = name.as_bytes();
    !name.is_empty()
        && name.len() <= max
        && bytes.iter().all(|&b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || (max > 63 && b == b'.')
        })
        && bytes[0].is_ascii_alphanumeric()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
}

pub fn is_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        && name.as_bytes()[0].is_ascii_alphanumeric()
}

fn name_expectation(name: &str) -> String {
    format!("`{name}` is not a valid name; expected 1 to 64 of a-z, 0-9, '-', '_', starting with a letter or digit")
}

fn is_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// The host part of a `host:port` backend, without an IPv6 address's brackets.
pub fn backend_host(value: &str) -> &str {
    let host = value.rsplit_once(':').map_or(value, |(host, _)| host);
    host.trim_start_matches('[').trim_end_matches(']')
}

/// Whether `name` can be sent as SNI and checked against a certificate: a DNS name or an IP
/// address, as rustls takes it.
fn check_server_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("is empty");
    }
    rustls_pki_types::ServerName::try_from(name)
        .map(|_| ())
        .map_err(|_| "is not a DNS name or an IP address")
}

fn check_host_port(value: &str) -> Result<(), &'static str> {
    let (host, port) = value.rsplit_once(':').ok_or("has no port")?;
    let port: u16 = port.parse().map_err(|_| "has an invalid port")?;
    if port == 0 {
        return Err("has port 0");
    }
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err("has no host");
    }
    if host.parse::<std::net::IpAddr>().is_err()
        && !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
    {
        return Err("has an invalid host");
    }
    Ok(())
}

fn list(names: &[&str]) -> String {
    if names.is_empty() {
        "none".to_string()
    } else {
        names
            .iter()
            .map(|n| format!("`{n}`"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[cfg(test)]
mod pem_tests {
    use super::*;

    #[test]
    fn der_check_wants_exactly_one_sequence() {
        assert!(is_single_der_value(&[0x30, 0x00]));
        assert!(is_single_der_value(&[0x30, 0x01, 0x05]));
        let mut long = vec![0x30, 0x81, 0x80];
        long.resize(3 + 0x80, 0);
        assert!(is_single_der_value(&long));
        let mut longer = vec![0x30, 0x82, 0x01, 0x00];
        longer.resize(4 + 0x100, 0);
        assert!(is_single_der_value(&longer));
        for bad in [
            &[][..],
            &[0x30],
            &[0x30, 0x02, 0x05],
            &[0x30, 0x00, 0x00],
            &[0x31, 0x00],
            &[0x30, 0x80],
            &[0x30, 0x85, 1, 0, 0, 0, 0],
            &[0x30, 0x82, 0x01],
        ] {
            assert!(!is_single_der_value(bad), "{bad:?} accepted");
        }
    }

    const CERT: &str = "-----BEGIN CERTIFICATE-----\nMAA=\n-----END CERTIFICATE-----\n";
    const KEY: &str = "-----BEGIN PRIVATE KEY-----\nMAA=\n-----END PRIVATE KEY-----\n";

    #[test]
    fn pem_blocks_are_listed_and_malformed_ones_named() {
        let sections = |text: &str| pem_sections(text.as_bytes(), text);
        let text = format!("Bag Attributes: ignored\n{CERT}between\n{KEY}");
        assert_eq!(
            sections(&text),
            Ok(vec![SectionKind::Certificate, SectionKind::PrivateKey])
        );
        assert_eq!(sections("no blocks here\n"), Ok(Vec::new()));
        let mismatched = CERT.replace("END CERTIFICATE", "END PRIVATE KEY");
        let cases = [
            (mismatched.as_str(), "no `-----END CERTIFICATE-----`"),
            ("-----BEGIN CERTIFICATE-----\nMAA=\n", "no `-----END CERTIFICATE-----`"),
            (
                "-----BEGIN CERTIFICATE-----\nMAA=\n-----BEGIN CERTIFICATE-----\n",
                "no `-----END CERTIFICATE-----`",
            ),
            (
                "-----BEGIN CERTIFICATE-----\nM*A=\n-----END CERTIFICATE-----\n",
                "not valid base64",
            ),
            (
                "-----BEGIN CERTIFICATE-----\nTWFu\n-----END CERTIFICATE-----\n",
                "`CERTIFICATE` PEM block does not hold a DER-encoded value",
            ),
            (
                "-----BEGIN CERTIFICATE-----\nMAAwAA==\n-----END CERTIFICATE-----\n",
                "does not hold a DER-encoded value",
            ),
            (
                "-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nMAA=\n-----END RSA PRIVATE KEY-----\n",
                "has headers (`Proc-Type`)",
            ),
            ("-----BEGIN CERTIFICATE\nMAA=\n", "not a well-formed"),
        ];
        for (text, expected) in cases {
            match sections(text) {
                Err(message) => assert!(message.contains(expected), "{message}"),
                Ok(kinds) => panic!("{text:?} accepted: {kinds:?}"),
            }
        }
    }

    #[test]
    fn pem_files_must_hold_what_their_key_says() {
        let dir = tempfile::tempdir().expect("tempdir");
        let write = |name: &str, bytes: &[u8]| {
            let path = dir.path().join(name);
            std::fs::write(&path, bytes).expect("write");
            path
        };
        let cert = write("cert.pem", CERT.as_bytes());
        let key = write("key.pem", KEY.as_bytes());
        let both = write("both.pem", format!("{CERT}{KEY}").as_bytes());
        let rsa = write(
            "rsa.pem",
            KEY.replace("PRIVATE KEY", "RSA PRIVATE KEY").as_bytes(),
        );
        let encrypted = write(
            "encrypted.pem",
            KEY.replace("PRIVATE KEY", "ENCRYPTED PRIVATE KEY")
                .as_bytes(),
        );
        let der = write("cert.der", &[0x30, 0x00, 0xff]);
        let text = write("notes.txt", b"just text\n");
        let big = write("big.pem", &vec![b'a'; 1024 * 1024 + 1]);
        assert_eq!(check_pem_file(&cert, PemContent::Certificate), Ok(()));
        assert_eq!(check_pem_file(&both, PemContent::Certificate), Ok(()));
        assert_eq!(check_pem_file(&key, PemContent::PrivateKey), Ok(()));
        assert_eq!(check_pem_file(&both, PemContent::PrivateKey), Ok(()));
        assert_eq!(check_pem_file(&rsa, PemContent::PrivateKey), Ok(()));
        let cases = [
            (
                &key,
                PemContent::Certificate,
                "holds no certificate (found `PRIVATE KEY`)",
            ),
            (
                &cert,
                PemContent::PrivateKey,
                "holds no private key (found `CERTIFICATE`)",
            ),
            (&encrypted, PemContent::PrivateKey, "encrypted private key"),
            (&der, PemContent::Certificate, "binary DER"),
            (&text, PemContent::PrivateKey, "is not a PEM file"),
            (&big, PemContent::Certificate, "larger than 1 MiB"),
            (
                &dir.path().join("missing.pem"),
                PemContent::Certificate,
                "cannot read",
            ),
        ];
        for (path, want, expected) in cases {
            match check_pem_file(path, want) {
                Err(message) => assert!(
                    message.contains(expected) && message.contains(&*path.to_string_lossy()),
                    "{message}"
                ),
                Ok(()) => panic!("{} accepted", path.display()),
            }
        }
    }

    #[test]
    fn learning_keys_are_checked() {
        let base = "[identity]\nsecret = \"0123456789abcdef0123\"\n[[regions]]\nname = \"eu\"\n[[fleets]]\nname = \"web\"\nregion = \"eu\"\nbackends = [\"127.0.0.1:9001\"]\n";
        let config = crate::parse_str(base, "t.toml").expect("valid");
        assert!(config.learning.enabled);
        assert_eq!(config.learning.max_sampled_users, 200_000);
        let bad = format!(
            "{base}[learning]\nmin_users = 5\nk_max = 8\nk_min = 9\nrebuild_interval_secs = 1\n"
        );
        let problems = match crate::parse_str(&bad, "t.toml") {
            Ok(_) => panic!("accepted {bad}"),
            Err(e) => e.problems().to_vec(),
        };
        let keys: Vec<String> = problems.iter().map(|p| p.key.to_string()).collect();
        for key in [
            "learning.k_max",
            "learning.min_users",
            "learning.rebuild_interval_secs",
        ] {
            assert!(keys.iter().any(|k| k == key), "{key} not in {keys:?}");
        }
        let fixed = format!("{base}[learning]\nmin_users = 5\nk = 3\n");
        assert!(crate::parse_str(&fixed, "t.toml").is_ok());
    }
}
