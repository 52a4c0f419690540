use super::*;

const MINIMAL: &str = r#"
[identity]
secret = "0123456789abcdef0123"

[[regions]]
name = "eu"
countries = ["DE", "FR"]

[[fleets]]
name = "web"
region = "eu"
backends = ["127.0.0.1:9001"]
"#;

fn problems(text: &str) -> Vec<Problem> {
    match parse_str(text, "test.toml") {
        Ok(_) => panic!("expected the config to be rejected:\n{text}"),
        Err(e) => e.problems().to_vec(),
    }
}

fn only_problem(text: &str) -> Problem {
    let p = problems(text);
    assert_eq!(p.len(), 1, "expected exactly one problem, got {p:?}");
    p.into_iter().next().unwrap_or_else(|| unreachable!())
}

#[test]
fn minimal_config_gets_defaults() {
    let c = parse_str(MINIMAL, "test.toml").expect("valid");
    assert_eq!(c.node_region(), Some("eu"));
    assert_eq!(c.fallback_region(), Some("eu"));
    assert_eq!(c.proxy.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(c.admin.listen.to_string(), "127.0.0.1:9090");
    assert_eq!(c.identity.sources, default_identity_sources());
    assert_eq!(c.fleets[0].health_check.path, "/healthz");
    assert_eq!(
        c.fleet_for("eu", "anything").map(|f| f.name.as_str()),
        Some("web")
    );
    assert_eq!(c.profile_settings("nobody"), (1.0, 100));
}

#[test]
fn embedded_default_is_valid_and_provisions_its_fleet() {
    let c = embedded_default().expect("valid");
    assert!(c.fleets[0].backends.is_empty());
    match &c.fleets[0].provisioner {
        Some(crate::ProvisionerConfig::Process { command, .. }) => {
            assert_eq!(command[0], "prescale");
            assert!(command.iter().any(|a| a.contains("{port}")));
        }
        other => panic!("expected a process provisioner, got {other:?}"),
    }
}

#[test]
fn unknown_key_names_key_and_line() {
    let text = format!("{MINIMAL}\n[proxy]\nlisten = \"127.0.0.1:1\"\nlisen = 3\n");
    let p = only_problem(&text);
    assert!(p.message.contains("unknown field `lisen`"), "{p}");
    let expected_line = text
        .lines()
        .position(|l| l.starts_with("lisen"))
        .map(|i| i + 1);
    assert_eq!(p.line, expected_line, "{p}");
}

#[test]
fn wrong_type_names_key() {
    let text = MINIMAL.replace(
        "backends = [\"127.0.0.1:9001\"]",
        "backends = [\"127.0.0.1:9001\"]\ncapacity_rps = \"fast\"",
    );
    let p = only_problem(&text);
    assert_eq!(p.key.to_string(), "fleets[0].capacity_rps", "{p}");
    assert!(p.line.is_some());
}

#[test]
fn missing_required_section() {
    let text = MINIMAL.replace("[identity]\nsecret = \"0123456789abcdef0123\"\n", "");
    let p = only_problem(&text);
    assert!(p.message.contains("identity"), "{p}");
}

#[test]
fn validation_problems_name_key_and_line() {
    let text = MINIMAL.replace("region = \"eu\"\nbackends", "region = \"us\"\nbackends");
    let all = problems(&text);
    let p = all
        .iter()
        .find(|p| p.key.to_string() == "fleets[0].region")
        .expect("region problem");
    assert!(p.message.contains("`us` is not defined"), "{p}");
    let expected_line = text
        .lines()
        .position(|l| l == "region = \"us\"")
        .map(|i| i + 1);
    assert_eq!(p.line, expected_line);
}

#[test]
fn many_bad_values_are_all_reported() {
    let text = r#"
[node]
region = "mars"
[admin]
listen = "0.0.0.0:9090"
[identity]
secret = "short"
sources = [{ kind = "header", name = "bad header" }]
[[regions]]
name = "EU"
countries = ["germany"]
[[fleets]]
name = "web"
region = "EU"
backends = ["nohost", "127.0.0.1:0"]
capacity_rps = -1.0
health_check = { path = "healthz" }
[[routes]]
profile = "batch"
fleet = "missing"
"#;
    let keys: Vec<String> = problems(text).iter().map(|p| p.key.to_string()).collect();
    for expected in [
        "node.region",
        "admin.listen",
        "identity.secret",
        "identity.sources[0]",
        "regions[0].name",
        "regions[0].countries[0]",
        "fleets[0].backends[0]",
        "fleets[0].backends[1]",
        "fleets[0].capacity_rps",
        "fleets[0].health_check.path",
        "routes[0].fleet",
    ] {
        assert!(
            keys.iter().any(|k| k == expected),
            "missing a problem for {expected}; got {keys:?}"
        );
    }
}

#[test]
fn several_fleets_need_a_default() {
    let text = format!("{MINIMAL}\n[[fleets]]\nname = \"batch\"\nregion = \"eu\"\nbackends = [\"127.0.0.1:9002\"]\n");
    let p = only_problem(&text);
    assert_eq!(p.key.to_string(), "regions[0].default_fleet");
    let fixed = text.replace(
        "countries = [\"DE\", \"FR\"]",
        "countries = [\"DE\", \"FR\"]\ndefault_fleet = \"web\"",
    );
    let c = parse_str(&fixed, "t").expect("valid with default_fleet");
    assert_eq!(c.fleet_for("eu", "x").map(|f| f.name.as_str()), Some("web"));
}

#[test]
fn routes_pick_fleets_per_region() {
    let text = format!(
        "{MINIMAL}default_fleet = \"web\"\n[[fleets]]\nname = \"batch\"\nregion = \"eu\"\nbackends = [\"127.0.0.1:9002\"]\n[[routes]]\nprofile = \"batch\"\nfleet = \"batch\"\n"
    )
    .replace("default_fleet = \"web\"\n[[fleets]]\nname = \"batch\"", "[[fleets]]\nname = \"batch\"")
    .replace("countries = [\"DE\", \"FR\"]", "countries = [\"DE\", \"FR\"]\ndefault_fleet = \"web\"");
    let c = parse_str(&text, "t").expect("valid");
    assert_eq!(
        c.fleet_for("eu", "batch").map(|f| f.name.as_str()),
        Some("batch")
    );
    assert_eq!(
        c.fleet_for("eu", "interactive").map(|f| f.name.as_str()),
        Some("web")
    );
}

#[test]
fn jwt_needs_exactly_one_key() {
    let text = MINIMAL.replace(
        "secret = \"0123456789abcdef0123\"",
        "secret = \"0123456789abcdef0123\"\nsources = [{ kind = \"bearer\", jwt = { issuer = \"me\" } }]",
    );
    let p = only_problem(&text);
    assert_eq!(p.key.to_string(), "identity.sources[0].jwt");
}

#[test]
fn invalid_toml_reports_line() {
    let p = only_problem("[identity\nsecret = 1\n");
    assert_eq!(p.line, Some(1));
    assert!(p.message.starts_with("invalid TOML"), "{p}");
}

#[test]
fn display_lists_every_problem() {
    let err = parse_str("[identity]\nsecret = \"x\"\n[[regions]]\nname = \"a\"\n[[fleets]]\nname = \"w\"\nregion = \"a\"\nbackends = []\n", "f.toml")
        .expect_err("invalid");
    let text = err.to_string();
    assert!(text.starts_with("f.toml: 2 problems:"), "{text}");
    assert!(text.contains("line 2: `identity.secret`"), "{text}");
    assert!(text.contains("`fleets[0].backends`"), "{text}");
}

/// MINIMAL with a forecaster (and the mesh it needs) whose table ends with `extra`.
fn with_forecaster(extra: &str) -> String {
    format!(
        "{MINIMAL}\n[mesh]\nca = \"ca.pem\"\ncert = \"n.pem\"\nkey = \"n.key.pem\"\n\n[forecaster]\nlisten = \"127.0.0.1:7400\"\ndatabase = \"series.db\"\n{extra}"
    )
}

#[test]
fn keda_listen_is_optional() {
    let c = parse_str(&with_forecaster(""), "t").expect("valid");
    let f = c.forecaster.expect("forecaster");
    assert_eq!(f.keda_listen, None);
    assert_eq!((f.keda_tls_cert, f.keda_tls_key), (None, None));
    let c = parse_str(&with_forecaster("keda_listen = \"0.0.0.0:7500\"\n"), "t").expect("valid");
    assert_eq!(
        c.forecaster
            .and_then(|f| f.keda_listen)
            .map(|a| a.to_string()),
        Some("0.0.0.0:7500".to_string())
    );
    let p = only_problem(&with_forecaster("keda_listen = \"port 7500\"\n"));
    assert_eq!(p.key.to_string(), "forecaster.keda_listen", "{p}");
}

/// Paths of a PEM certificate and a PEM key file, each one stub block (what validation checks:
/// the files exist and hold the sections their keys name).
struct StubPems {
    cert: String,
    key: String,
}

fn stub_pems(dir: &std::path::Path) -> StubPems {
    let write = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).expect("write");
        path.display().to_string()
    };
    StubPems {
        cert: write(
            "cert.pem",
            "-----BEGIN CERTIFICATE-----\nMAA=\n-----END CERTIFICATE-----\n",
        ),
        key: write(
            "key.pem",
            "-----BEGIN PRIVATE KEY-----\nMAA=\n-----END PRIVATE KEY-----\n",
        ),
    }
}

#[test]
fn keda_tls_needs_both_files_and_keda_listen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let StubPems { cert, key } = stub_pems(dir.path());
    let listen = "keda_listen = \"127.0.0.1:7500\"\n";
    let both = format!("{listen}keda_tls_cert = \"{cert}\"\nkeda_tls_key = \"{key}\"\n");
    let c = parse_str(&with_forecaster(&both), "t").expect("valid with both files");
    assert!(c.forecaster.is_some_and(|f| f.keda_tls_key.is_some()));

    let p = only_problem(&with_forecaster(&format!(
        "{listen}keda_tls_cert = \"{cert}\"\n"
    )));
    assert_eq!(p.key.to_string(), "forecaster.keda_tls_key", "{p}");
    assert!(
        p.message.contains("required with forecaster.keda_tls_cert"),
        "{p}"
    );

    let p = only_problem(&with_forecaster(&format!(
        "{listen}keda_tls_key = \"{key}\"\n"
    )));
    assert_eq!(p.key.to_string(), "forecaster.keda_tls_cert", "{p}");

    let p = only_problem(&with_forecaster(&format!("keda_tls_cert = \"{cert}\"\n")));
    assert_eq!(p.key.to_string(), "forecaster.keda_tls_cert", "{p}");
    assert!(p.message.contains("keda_listen"), "{p}");

    let swapped = format!("{listen}keda_tls_cert = \"{key}\"\nkeda_tls_key = \"{cert}\"\n");
    let keys: Vec<String> = problems(&with_forecaster(&swapped))
        .iter()
        .map(|p| p.key.to_string())
        .collect();
    assert_eq!(
        keys,
        ["forecaster.keda_tls_cert", "forecaster.keda_tls_key"]
    );

    let missing = format!("{listen}keda_tls_cert = \"{cert}\"\nkeda_tls_key = \"nowhere.pem\"\n");
    let p = only_problem(&with_forecaster(&missing));
    assert_eq!(p.key.to_string(), "forecaster.keda_tls_key", "{p}");
    assert!(p.message.contains("nowhere.pem"), "{p}");
}

/// MINIMAL's fleet with `provisioner` (an inline table) beside its static backend.
fn with_provisioner(provisioner: &str) -> String {
    MINIMAL.replace(
        "backends = [\"127.0.0.1:9001\"]",
        &format!("backends = [\"127.0.0.1:9001\"]\nprovisioner = {provisioner}"),
    )
}

#[test]
fn remote_provisioners_parse_with_their_defaults() {
    let c = parse_str(
        &with_provisioner(
            r#"{ kind = "exec", command = ["/usr/local/bin/scale", "--pool", "web"] }"#,
        ),
        "t",
    )
    .expect("valid exec");
    let p = c.fleets[0].provisioner.as_ref().expect("provisioner");
    assert_eq!(
        p,
        &crate::ProvisionerConfig::Exec {
            command: vec!["/usr/local/bin/scale".into(), "--pool".into(), "web".into()],
            timeout_secs: 30,
        }
    );
    assert!(!p.supplies_backends());
    assert_eq!(p.kind(), "exec");

    let c = parse_str(
        &with_provisioner(r#"{ kind = "webhook", url = "https://scaler.internal:8443/v1/desired", secret_env = "SCALER_KEY" }"#),
        "t",
    )
    .expect("valid webhook");
    assert!(matches!(
        c.fleets[0].provisioner,
        Some(crate::ProvisionerConfig::Webhook { timeout_secs: 10, ref secret_env, .. }) if secret_env.as_deref() == Some("SCALER_KEY")
    ));

    let c = parse_str(
        &with_provisioner(r#"{ kind = "kubernetes", deployment = "web" }"#),
        "t",
    )
    .expect("valid kubernetes");
    assert_eq!(
        c.fleets[0].provisioner,
        Some(crate::ProvisionerConfig::Kubernetes {
            namespace: "default".into(),
            deployment: Some("web".into()),
            statefulset: None,
            kubeconfig: None,
            scale_in_step: 1,
            timeout_secs: 10,
        })
    );
}

#[test]
fn remote_provisioner_problems_name_their_keys() {
    let cases = [
        (
            MINIMAL.replace(
                "backends = [\"127.0.0.1:9001\"]",
                "provisioner = { kind = \"webhook\", url = \"http://127.0.0.1:1/\" }",
            ),
            "fleets[0].backends",
            "required with a `webhook` provisioner",
        ),
        (
            with_provisioner(r#"{ kind = "exec", command = [] }"#),
            "fleets[0].provisioner.command",
            "expected a program",
        ),
        (
            with_provisioner(r#"{ kind = "exec", command = ["x"], timeout_secs = 0 }"#),
            "fleets[0].provisioner.timeout_secs",
            "1 to 3600",
        ),
        (
            with_provisioner(r#"{ kind = "webhook", url = "ftp://example.com/" }"#),
            "fleets[0].provisioner.url",
            "not an http:// or https:// URL",
        ),
        (
            with_provisioner(r#"{ kind = "webhook", url = "https://user:pw@example.com/" }"#),
            "fleets[0].provisioner.url",
            "credentials",
        ),
        (
            with_provisioner(r#"{ kind = "webhook", url = "http://example.com:0/" }"#),
            "fleets[0].provisioner.url",
            "invalid port",
        ),
        (
            with_provisioner(r#"{ kind = "webhook", url = "http://[::1/" }"#),
            "fleets[0].provisioner.url",
            "unclosed",
        ),
        (
            with_provisioner(
                r#"{ kind = "webhook", url = "http://a/", secret_env = "sk-live-123" }"#,
            ),
            "fleets[0].provisioner.secret_env",
            "not an environment variable name",
        ),
        (
            with_provisioner(r#"{ kind = "kubernetes" }"#),
            "fleets[0].provisioner.deployment",
            "required",
        ),
        (
            with_provisioner(r#"{ kind = "kubernetes", deployment = "a", statefulset = "b" }"#),
            "fleets[0].provisioner.statefulset",
            "not both",
        ),
        (
            with_provisioner(r#"{ kind = "kubernetes", statefulset = "Web_1" }"#),
            "fleets[0].provisioner.statefulset",
            "not a Kubernetes object name",
        ),
        (
            with_provisioner(r#"{ kind = "kubernetes", deployment = "web", namespace = "-shop" }"#),
            "fleets[0].provisioner.namespace",
            "not a Kubernetes namespace name",
        ),
        (
            with_provisioner(r#"{ kind = "kubernetes", deployment = "web", scale_in_step = 0 }"#),
            "fleets[0].provisioner.scale_in_step",
            "1 to 1000",
        ),
        (
            with_provisioner(
                r#"{ kind = "kubernetes", deployment = "web", kubeconfig = "/nonexistent/kubeconfig" }"#,
            ),
            "fleets[0].provisioner.kubeconfig",
            "/nonexistent/kubeconfig",
        ),
        (
            with_provisioner(r#"{ kind = "kubernetes", deployment = "web", replicas = 3 }"#),
            "fleets[0].provisioner",
            "replicas",
        ),
    ];
    for (text, key, message) in cases {
        let p = only_problem(&text);
        assert_eq!(p.key.to_string(), key, "{p}\n{text}");
        assert!(p.message.contains(message), "{p}");
    }
    for url in [
        "http://127.0.0.1:8080/hook",
        "https://[::1]:8443/",
        "https://scaler.example.com",
        "http://a/b?c=d",
    ] {
        let text = with_provisioner(&format!(r#"{{ kind = "webhook", url = "{url}" }}"#));
        assert!(parse_str(&text, "t").is_ok(), "{url} should be valid");
    }
}

#[test]
fn ingest_limits_have_defaults_and_are_checked() {
    let c = parse_str(MINIMAL, "test.toml").expect("valid");
    assert_eq!(c.ingest.max_body_bytes, 8 * 1024 * 1024);
    assert_eq!(c.ingest.max_line_bytes, 64 * 1024);
    assert_eq!(c.ingest.max_events, 100_000);
    assert_eq!(c.ingest.user_table_mib, 16);
    let p = only_problem(&format!(
        "{MINIMAL}\n[ingest]\nmax_body_bytes = 100000\nmax_line_bytes = 200000\n"
    ));
    assert_eq!(p.key.to_string(), "ingest.max_line_bytes");
    assert!(p.message.contains("max_body_bytes"), "{}", p.message);
    let keys: Vec<String> = problems(&format!(
        "{MINIMAL}\n[ingest]\nmax_body_bytes = 10\nmax_events = 0\nuser_table_mib = 0\n"
    ))
    .iter()
    .map(|p| p.key.to_string())
    .collect();
    for expected in [
        "ingest.max_body_bytes",
        "ingest.max_events",
        "ingest.user_table_mib",
    ] {
        assert!(keys.iter().any(|k| k == expected), "{expected}: {keys:?}");
    }
}

#[test]
fn instance_resources_are_checked_and_read() {
    let with = |resources: &str| {
        MINIMAL.replace(
            "backends = [\"127.0.0.1:9001\"]",
            &format!("backends = [\"127.0.0.1:9001\"]\ninstance_resources = {resources}"),
        )
    };
    let c = parse_str(&with("{ cpu_cores = 2, memory_mb = 4096 }"), "t").expect("valid");
    let r = c.fleets[0].instance_resources.expect("resources");
    assert_eq!((r.cpu_cores, r.memory_mb, r.io_ops), (2.0, 4096.0, 0.0));
    let p = only_problem(&with("{ cpu_cores = -1, memory_mb = 10 }"));
    assert_eq!(p.key.to_string(), "fleets[0].instance_resources.cpu_cores");
    let p = only_problem(&with("{ cpu_cores = 0 }"));
    assert_eq!(p.key.to_string(), "fleets[0].instance_resources");
    assert!(p.message.contains("at least one"), "{}", p.message);
    let p = only_problem(&with("{ gpus = 1 }"));
    assert!(p.message.contains("gpus"), "{}", p.message);
}

#[test]
fn access_log_is_off_by_default_and_checked_when_set() {
    let c = parse_str(MINIMAL, "test.toml").expect("valid");
    assert!(c.proxy.access_log.is_none());

    let on = format!("{MINIMAL}\n[proxy.access_log]\npath = \"-\"\nformat = \"json\"\n");
    let c = parse_str(&on, "test.toml").expect("valid");
    let log = c.proxy.access_log.expect("set");
    assert!(log.is_stdout());
    assert_eq!(log.format, crate::AccessLogFormat::Json);
    assert_eq!(log.buffer_lines, 65_536);

    let p = only_problem(&format!(
        "{MINIMAL}\n[proxy.access_log]\npath = \"a.log\"\nformat = \"clf\"\n"
    ));
    assert!(
        p.message.contains("combined") && p.message.contains("json"),
        "{p}"
    );
    let p = only_problem(&format!(
        "{MINIMAL}\n[proxy.access_log]\npath = \"a.log\"\nbuffer_lines = 0\n"
    ));
    assert_eq!(p.key.to_string(), "proxy.access_log.buffer_lines", "{p}");
    let dir = std::env::temp_dir();
    let p = only_problem(&format!(
        "{MINIMAL}\n[proxy.access_log]\npath = {:?}\n",
        dir.display().to_string()
    ));
    assert_eq!(p.key.to_string(), "proxy.access_log.path", "{p}");
    assert!(p.message.contains("directory"), "{p}");
    let p = only_problem(&format!("{MINIMAL}\n[proxy.access_log]\npath = \"\"\n"));
    assert_eq!(p.key.to_string(), "proxy.access_log.path", "{p}");
}

#[test]
fn client_limits_default_to_none_and_are_checked() {
    let c = parse_str(MINIMAL, "test.toml").expect("valid");
    assert_eq!(c.proxy.keepalive_requests, 1000);
    assert_eq!(c.proxy.client_limits.status, 429);
    assert_eq!(c.proxy.client_limits.connections, 0);
    assert_eq!(c.fleets[0].max_connections_per_backend, 0);
    let with = |table: &str| format!("{MINIMAL}\n[proxy.client_limits]\n{table}\n");
    let c = parse_str(
        &with("connections = 10\nrequests_per_sec = 5.5\nburst = 20\nstatus = 503"),
        "test.toml",
    )
    .expect("valid");
    assert_eq!(c.proxy.client_limits.requests_per_sec, 5.5);
    for (table, key) in [
        ("status = 403", "proxy.client_limits.status"),
        ("burst = 5", "proxy.client_limits.burst"),
        (
            "requests_per_sec = -1.0",
            "proxy.client_limits.requests_per_sec",
        ),
        (
            "requests_per_sec = nan",
            "proxy.client_limits.requests_per_sec",
        ),
    ] {
        let p = only_problem(&with(table));
        assert_eq!(p.key.to_string(), key, "{table}: {p}");
    }
    let p = only_problem(&format!("[proxy]\nkeepalive_requests = 0\n{MINIMAL}"));
    assert_eq!(p.key.to_string(), "proxy.keepalive_requests", "{p}");
}

#[test]
fn the_upgrade_socket_is_an_absolute_path_short_enough_for_a_unix_socket() {
    let c = parse_str(MINIMAL, "test.toml").expect("valid");
    assert_eq!(c.proxy.upgrade_socket, None);
    let set = format!("[proxy]\nupgrade_socket = \"/run/prescale/upgrade.sock\"\n{MINIMAL}");
    let c = parse_str(&set, "test.toml").expect("valid");
    assert_eq!(
        c.proxy.upgrade_socket.as_deref(),
        Some(std::path::Path::new("/run/prescale/upgrade.sock"))
    );
    let long = format!("/run/{}.sock", "x".repeat(110));
    for (value, says) in [
        ("upgrade.sock".to_string(), "not an absolute path"),
        (long, "at most 107"),
        ("/".to_string(), "is a directory"),
    ] {
        let p = only_problem(&format!("[proxy]\nupgrade_socket = \"{value}\"\n{MINIMAL}"));
        assert_eq!(p.key.to_string(), "proxy.upgrade_socket", "{p}");
        assert!(p.to_string().contains(says), "{value}: {p}");
    }
}

/// MINIMAL's fleet with `backends` and an `upstream` inline table.
fn with_upstream(backends: &str, upstream: &str) -> String {
    MINIMAL.replace(
        "backends = [\"127.0.0.1:9001\"]",
        &format!("backends = {backends}\nupstream = {upstream}"),
    )
}

#[test]
fn upstream_protocols_and_tls_are_checked() {
    let c = parse_str(MINIMAL, "t").expect("valid");
    assert_eq!(c.fleets[0].upstream, UpstreamConfig::default());
    assert_eq!(c.fleets[0].upstream.protocol, UpstreamProtocol::Http1);

    let dir = tempfile::tempdir().expect("tempdir");
    let StubPems { cert, key } = stub_pems(dir.path());
    let named = r#"["api.internal:443", "10.0.0.5:443", "[::1]:443"]"#;
    let c = parse_str(
        &with_upstream(
            named,
            &format!(
                "{{ protocol = \"auto\", tls = {{ ca_file = \"{cert}\", client_cert = \"{cert}\", client_key = \"{key}\" }} }}"
            ),
        ),
        "t",
    )
    .expect("valid: names and addresses are server names");
    let tls = c.fleets[0].upstream.tls.as_ref().expect("tls");
    assert!(tls.verify);
    assert_eq!(tls.server_name, None);
    // h2c with prior knowledge needs no TLS.
    parse_str(&with_upstream(named, "{ protocol = \"http2\" }"), "t").expect("h2c");

    for (upstream, key, says) in [
        (
            "{ protocol = \"auto\" }".to_string(),
            "fleets[0].upstream.protocol",
            "needs [fleets.upstream.tls]",
        ),
        (
            "{ tls = { server_name = \"\" } }".to_string(),
            "fleets[0].upstream.tls.server_name",
            "is empty",
        ),
        (
            "{ tls = { server_name = \"bad name\" } }".to_string(),
            "fleets[0].upstream.tls.server_name",
            "not a DNS name",
        ),
        (
            format!("{{ tls = {{ client_cert = \"{cert}\" }} }}"),
            "fleets[0].upstream.tls.client_key",
            "required with upstream.tls.client_cert",
        ),
        (
            format!("{{ tls = {{ client_key = \"{key}\" }} }}"),
            "fleets[0].upstream.tls.client_cert",
            "required with upstream.tls.client_key",
        ),
        (
            format!("{{ tls = {{ ca_file = \"{cert}\", verify = false }} }}"),
            "fleets[0].upstream.tls.ca_file",
            "no effect with verify = false",
        ),
        (
            format!("{{ tls = {{ ca_file = \"{key}\" }} }}"),
            "fleets[0].upstream.tls.ca_file",
            "holds no certificate",
        ),
        (
            "{ tls = { ca_file = \"nowhere.pem\" } }".to_string(),
            "fleets[0].upstream.tls.ca_file",
            "nowhere.pem",
        ),
        (
            "{ protocol = \"http3\" }".to_string(),
            "fleets[0].upstream.protocol",
            "http3",
        ),
    ] {
        let p = only_problem(&with_upstream(named, &upstream));
        assert_eq!(p.key.to_string(), key, "{upstream}: {p}");
        assert!(p.message.contains(says), "{upstream}: {p}");
    }
}

#[test]
fn resolver_and_resolving_fleets_are_checked() {
    let c = parse_str(MINIMAL, "t").expect("valid");
    assert_eq!(c.resolver, ResolverConfig::default());
    assert!(!c.fleets[0].resolve);
    let named = MINIMAL.replace(
        "backends = [\"127.0.0.1:9001\"]",
        "backends = [\"api.internal:8080\", \"10.0.0.9:8080\"]\nresolve = true",
    );
    let with_resolver = |table: &str| format!("{named}\n[resolver]\n{table}\n");
    let c = parse_str(
        &with_resolver("nameservers = [\"10.0.0.2\", \"[::1]:5353\"]\nrefresh_secs = 5"),
        "t",
    )
    .expect("valid");
    assert_eq!(
        c.resolver.nameserver_addrs(),
        [
            Some("10.0.0.2:53".parse().expect("addr")),
            Some("[::1]:5353".parse().expect("addr"))
        ]
    );
    for (table, key) in [
        (
            "nameservers = [\"dns.internal\"]",
            "resolver.nameservers[0]",
        ),
        ("refresh_secs = 0", "resolver.refresh_secs"),
        ("timeout_ms = 0", "resolver.timeout_ms"),
    ] {
        let p = only_problem(&with_resolver(table));
        assert_eq!(p.key.to_string(), key, "{table}: {p}");
    }
    let p = only_problem(&MINIMAL.replace(
        "backends = [\"127.0.0.1:9001\"]",
        "backends = [\"127.0.0.1:9001\"]\nresolve = true",
    ));
    assert_eq!(p.key.to_string(), "fleets[0].resolve", "{p}");
    assert!(p.message.contains("nothing to re-resolve"), "{p}");
}

#[test]
fn a_grpc_health_check_needs_http2_and_a_plain_service_name() {
    let grpc = |upstream: &str, service: &str| {
        MINIMAL.replace(
            "backends = [\"127.0.0.1:9001\"]",
            &format!(
                "backends = [\"127.0.0.1:9001\"]\n{upstream}\nhealth_check = {{ grpc_service = \"{service}\" }}"
            ),
        )
    };
    let c = parse_str(
        &grpc("upstream = { protocol = \"http2\" }", "shop.Cart"),
        "t",
    )
    .expect("valid: h2c to gRPC backends");
    assert_eq!(
        c.fleets[0].health_check.grpc_service.as_deref(),
        Some("shop.Cart")
    );
    assert_eq!(
        parse_str(MINIMAL, "t").expect("valid").fleets[0]
            .health_check
            .grpc_service,
        None
    );
    let p = only_problem(&grpc("", ""));
    assert_eq!(
        p.key.to_string(),
        "fleets[0].health_check.grpc_service",
        "{p}"
    );
    assert!(p.to_string().contains("HTTP/2"), "{p}");
    let p = only_problem(&grpc(
        "upstream = { protocol = \"http2\" }",
        "bad\\u0001name",
    ));
    assert_eq!(
        p.key.to_string(),
        "fleets[0].health_check.grpc_service",
        "{p}"
    );
}
