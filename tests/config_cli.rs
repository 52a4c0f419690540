//! `prescale check-config` and `prescale proxy` on bad input: exit status 2 and a message that
//! names the key (and the line), or the broken file.

mod common;

use std::process::Command;

use common::*;

const GOOD: &str = r#"
[node]
region = "eu"

[identity]
secret = "check-config-secret-0123"

[[regions]]
name = "eu"
countries = ["DE"]

[[fleets]]
name = "web"
region = "eu"
backends = ["127.0.0.1:9001"]
"#;

fn check(text: &str) -> (i32, String, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("c.toml");
    std::fs::write(&path, text).expect("write");
    let out = Command::new(bin())
        .args(["check-config", path.to_str().expect("utf8")])
        .output()
        .expect("run");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn good_config_passes() {
    let (code, stdout, stderr) = check(GOOD);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("ok"), "{stdout}");
}

#[test]
fn every_bad_config_exits_2_naming_the_key() {
    let with_geo = |file: &str| {
        GOOD.replace(
            "[[regions]]",
            &format!(
                "[geo]\ndatabase = \"{}\"\n\n[[regions]]",
                repo_path(&format!("tests/data/geoip/{file}")).display()
            ),
        )
    };
    let mut cases: Vec<(&str, String, &str)> = vec![
        (
            "unknown key",
            GOOD.replace("[node]", "[node]\nzone = \"a\""),
            "node.zone",
        ),
        (
            "unknown section",
            format!("{GOOD}\n[proxyy]\nlisten = \"127.0.0.1:1\"\n"),
            "proxyy",
        ),
        (
            "bad listen address",
            format!("{GOOD}\n[proxy]\nlisten = \"localhost\"\n"),
            "proxy.listen",
        ),
        (
            "keep-alive timeout of zero",
            format!("{GOOD}\n[proxy]\nkeepalive_timeout_secs = 0\n"),
            "proxy.keepalive_timeout_secs",
        ),
        (
            "short secret",
            GOOD.replace("check-config-secret-0123", "short"),
            "identity.secret",
        ),
        (
            "undefined node region",
            GOOD.replace(
                "region = \"eu\"\n\n[identity]",
                "region = \"mars\"\n\n[identity]",
            ),
            "node.region",
        ),
        (
            "fleet in unknown region",
            GOOD.replace("region = \"eu\"\nbackends", "region = \"us\"\nbackends"),
            "fleets[0].region",
        ),
        (
            "backend without port",
            GOOD.replace("127.0.0.1:9001", "127.0.0.1"),
            "fleets[0].backends[0]",
        ),
        (
            "negative capacity",
            GOOD.replace("backends = [", "capacity_rps = -5.0\nbackends = ["),
            "fleets[0].capacity_rps",
        ),
        (
            "capacity learned without a latency SLO",
            GOOD.replace("backends = [", "learn_capacity = true\nbackends = ["),
            "fleets[0].learn_capacity",
        ),
        (
            "warm sub-pool for an undefined profile",
            GOOD.replace(
                "backends = [",
                "warm_sub_pools = [\"nobody\"]\nbackends = [",
            ),
            "fleets[0].warm_sub_pools[0]",
        ),
        (
            "planner SLO target out of range",
            format!("{GOOD}\n[planner]\nslo_target = 1.5\n"),
            "planner.slo_target",
        ),
        (
            "lowercase country",
            GOOD.replace("[\"DE\"]", "[\"de\"]"),
            "regions[0].countries[0]",
        ),
        (
            "route to missing fleet",
            format!("{GOOD}\n[[routes]]\nprofile = \"batch\"\nfleet = \"gpu\"\n"),
            "routes[0].fleet",
        ),
        (
            "provisioner of an unknown kind",
            GOOD.replace(
                "backends = [\"127.0.0.1:9001\"]",
                "provisioner = { kind = \"docker\", command = [\"x\"] }",
            ),
            "fleets[0].provisioner",
        ),
        (
            "provisioner command without {port}",
            GOOD.replace(
                "backends = [\"127.0.0.1:9001\"]",
                "provisioner = { kind = \"process\", command = [\"prescale\", \"backend\"] }",
            ),
            "fleets[0].provisioner.command",
        ),
        (
            "provisioner command with an unknown placeholder",
            GOOD.replace(
                "backends = [\"127.0.0.1:9001\"]",
                "provisioner = { kind = \"process\", command = [\"prescale\", \"{port}\", \"{prot}\"] }",
            ),
            "fleets[0].provisioner.command[2]",
        ),
        (
            "provisioner beside static backends",
            GOOD.replace(
                "backends = [\"127.0.0.1:9001\"]",
                "backends = [\"127.0.0.1:9001\"]\nprovisioner = { kind = \"process\", command = [\"b\", \"{port}\"] }",
            ),
            "fleets[0].backends",
        ),
        (
            "provisioner on a public address",
            GOOD.replace(
                "backends = [\"127.0.0.1:9001\"]",
                "provisioner = { kind = \"process\", command = [\"b\", \"{port}\"], host = \"10.0.0.1\" }",
            ),
            "fleets[0].provisioner.host",
        ),
        (
            "provisioner with a zero ready timeout",
            GOOD.replace(
                "backends = [\"127.0.0.1:9001\"]",
                "provisioner = { kind = \"process\", command = [\"b\", \"{port}\"], ready_timeout_secs = 0 }",
            ),
            "fleets[0].provisioner.ready_timeout_secs",
        ),
        (
            "remote provisioner without backends",
            GOOD.replace(
                "backends = [\"127.0.0.1:9001\"]",
                "provisioner = { kind = \"exec\", command = [\"/usr/local/bin/scale\"] }",
            ),
            "fleets[0].backends",
        ),
        (
            "exec provisioner with an empty command",
            GOOD.replace(
                "backends = [\"127.0.0.1:9001\"]",
                "backends = [\"127.0.0.1:9001\"]\nprovisioner = { kind = \"exec\", command = [] }",
            ),
            "fleets[0].provisioner.command",
        ),
        (
            "webhook to a URL that is not http",
            GOOD.replace(
                "backends = [\"127.0.0.1:9001\"]",
                "backends = [\"127.0.0.1:9001\"]\nprovisioner = { kind = \"webhook\", url = \"scaler.internal/desired\" }",
            ),
            "fleets[0].provisioner.url",
        ),
        (
            "webhook secret in place of its variable's name",
            GOOD.replace(
                "backends = [\"127.0.0.1:9001\"]",
                "backends = [\"127.0.0.1:9001\"]\nprovisioner = { kind = \"webhook\", url = \"https://scaler.internal/\", secret_env = \"s3cr3t-value!\" }",
            ),
            "fleets[0].provisioner.secret_env",
        ),
        (
            "kubernetes without a workload",
            GOOD.replace(
                "backends = [\"127.0.0.1:9001\"]",
                "backends = [\"127.0.0.1:9001\"]\nprovisioner = { kind = \"kubernetes\", namespace = \"shop\" }",
            ),
            "fleets[0].provisioner.deployment",
        ),
        (
            "kubernetes with a missing kubeconfig",
            GOOD.replace(
                "backends = [\"127.0.0.1:9001\"]",
                "backends = [\"127.0.0.1:9001\"]\nprovisioner = { kind = \"kubernetes\", deployment = \"web\", kubeconfig = \"/nonexistent/kubeconfig\" }",
            ),
            "fleets[0].provisioner.kubeconfig",
        ),
        (
            "kubernetes scale-in step of zero",
            GOOD.replace(
                "backends = [\"127.0.0.1:9001\"]",
                "backends = [\"127.0.0.1:9001\"]\nprovisioner = { kind = \"kubernetes\", deployment = \"web\", scale_in_step = 0 }",
            ),
            "fleets[0].provisioner.scale_in_step",
        ),
        (
            "forecaster lateness of zero",
            format!(
                "{GOOD}\n[forecaster]\nlisten = \"127.0.0.1:7400\"\ndatabase = \"/tmp/x.db\"\nlateness_secs = 0\n"
            ),
            "forecaster.lateness_secs",
        ),
        (
            "forecast_only that is not a boolean",
            format!(
                "{GOOD}\n[forecaster]\nlisten = \"127.0.0.1:7400\"\ndatabase = \"/tmp/x.db\"\nforecast_only = \"yes\"\n"
            ),
            "forecaster.forecast_only",
        ),
        (
            "bad load balancing",
            GOOD.replace("backends = [", "load_balancing = \"random\"\nbackends = ["),
            "fleets[0].load_balancing",
        ),
        (
            "identity source kind",
            GOOD.replace(
                "secret = \"check-config-secret-0123\"",
                "secret = \"check-config-secret-0123\"\nsources = [{ kind = \"telepathy\" }]",
            ),
            "identity.sources[0]",
        ),
        (
            "admin on public address",
            format!("{GOOD}\n[admin]\nlisten = \"0.0.0.0:9090\"\n"),
            "admin.listen",
        ),
        (
            "rule without condition",
            format!("{GOOD}\n[assignment]\nrules = [{{ profile = \"x\" }}]\n"),
            "assignment.rules[0]",
        ),
        ("not toml", "this is not toml".to_string(), "line 1"),
        (
            "missing geo database",
            with_geo("does-not-exist.mmdb"),
            "geo.database",
        ),
        (
            "corrupt geo database (search tree)",
            with_geo("MaxMind-DB-test-broken-search-tree-24.mmdb"),
            "geo.database",
        ),
        (
            "corrupt geo database (pointers)",
            with_geo("MaxMind-DB-test-broken-pointers-24.mmdb"),
            "geo.database",
        ),
        (
            "corrupt geo database (node count)",
            with_geo("GeoIP2-City-Test-Invalid-Node-Count.mmdb"),
            "geo.database",
        ),
        (
            "geo database without countries",
            with_geo("GeoLite2-ASN-Test.mmdb"),
            "geo.database",
        ),
    ];
    let tls_files = tempfile::tempdir().expect("tempdir");
    let tls = TlsFiles::new(tls_files.path());
    let with_tls = |cert: &std::path::Path, key: &std::path::Path| tls.config(cert, key);
    let missing = tls_files.path().join("missing.pem");
    cases.extend([
        (
            "missing TLS certificate",
            with_tls(&missing, &tls.key),
            "proxy.tls.cert",
        ),
        (
            "missing TLS key",
            with_tls(&tls.cert, &missing),
            "proxy.tls.key",
        ),
        (
            "TLS certificate is a directory",
            with_tls(tls_files.path(), &tls.key),
            "proxy.tls.cert",
        ),
        (
            "TLS certificate is not PEM",
            with_tls(&tls.not_pem, &tls.key),
            "proxy.tls.cert",
        ),
        (
            "TLS key is not PEM",
            with_tls(&tls.cert, &tls.not_pem),
            "proxy.tls.key",
        ),
        (
            "TLS key is binary",
            with_tls(&tls.cert, &tls.binary),
            "proxy.tls.key",
        ),
        (
            "TLS certificate file holds a key",
            with_tls(&tls.key, &tls.key),
            "proxy.tls.cert",
        ),
        (
            "TLS key file holds a certificate",
            with_tls(&tls.cert, &tls.cert),
            "proxy.tls.key",
        ),
        (
            "TLS certificate with broken base64",
            with_tls(&tls.broken_cert, &tls.key),
            "proxy.tls.cert",
        ),
        (
            "TLS certificate without END line",
            with_tls(&tls.truncated_cert, &tls.key),
            "proxy.tls.cert",
        ),
        (
            "encrypted TLS key",
            with_tls(&tls.cert, &tls.encrypted_key),
            "proxy.tls.key",
        ),
        (
            "TLS without a key",
            format!(
                "{GOOD}\n[proxy]\ntls = {{ cert = \"{}\" }}\n",
                tls.cert.display()
            ),
            "proxy.tls",
        ),
        (
            "h2c beside TLS",
            with_tls(&tls.cert, &tls.key).replace("[proxy]\n", "[proxy]\nh2c = true\n"),
            "proxy.h2c",
        ),
    ]);
    let mut failures = Vec::new();
    for (what, text, key) in &cases {
        let (code, _stdout, stderr) = check(text);
        if code != 2 || !stderr.contains(key) {
            failures.push(format!(
                "{what}: exit {code}, expected 2 and a message naming `{key}`; stderr:\n{stderr}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// PEM files for the proxy's TLS listener, good and bad, made at test time.
struct TlsFiles {
    cert: std::path::PathBuf,
    key: std::path::PathBuf,
    /// The key of another certificate.
    other_key: std::path::PathBuf,
    not_pem: std::path::PathBuf,
    binary: std::path::PathBuf,
    broken_cert: std::path::PathBuf,
    truncated_cert: std::path::PathBuf,
    encrypted_key: std::path::PathBuf,
}

impl TlsFiles {
    fn new(dir: &std::path::Path) -> Self {
        let good = self_signed_cert(dir, "good");
        let other = self_signed_cert(dir, "other");
        let cert_pem = std::fs::read_to_string(&good.cert_path).expect("read cert");
        let write = |name: &str, bytes: &[u8]| {
            let path = dir.join(name);
            std::fs::write(&path, bytes).expect("write");
            path
        };
        // A character that is not base64 in the middle of the body.
        let mut broken = cert_pem.clone().into_bytes();
        let middle = cert_pem.find('\n').expect("newline") + 10;
        broken[middle] = b'*';
        let truncated = cert_pem
            .lines()
            .filter(|l| !l.starts_with("-----END"))
            .collect::<Vec<_>>()
            .join("\n");
        TlsFiles {
            cert: good.cert_path,
            key: good.key_path,
            other_key: other.key_path,
            not_pem: write("not.pem", b"this is not a certificate\n"),
            binary: write("binary.der", good.der.as_ref()),
            broken_cert: write("broken.pem", &broken),
            truncated_cert: write("truncated.pem", truncated.as_bytes()),
            encrypted_key: write(
                "encrypted.key.pem",
                b"-----BEGIN ENCRYPTED PRIVATE KEY-----\nMAA=\n-----END ENCRYPTED PRIVATE KEY-----\n",
            ),
        }
    }

    /// The good config with `[proxy] tls` set to `cert` and `key`.
    fn config(&self, cert: &std::path::Path, key: &std::path::Path) -> String {
        format!(
            "{GOOD}\n[proxy]\ntls = {{ cert = \"{}\", key = \"{}\" }}\n",
            cert.display(),
            key.display()
        )
    }
}

#[test]
fn good_tls_config_passes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tls = TlsFiles::new(dir.path());
    let (code, stdout, stderr) = check(&tls.config(&tls.cert, &tls.key));
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("ok"), "{stdout}");
}

/// `prescale proxy` refuses TLS material it cannot serve with, before listening: exit status 2
/// and a message naming the key. A key that belongs to another certificate is only found out
/// when the listener is built.
#[test]
fn prescale_proxy_exits_2_on_unusable_tls_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tls = TlsFiles::new(dir.path());
    let missing = dir.path().join("missing.pem");
    let cases = [
        ("missing certificate", &missing, &tls.key, "proxy.tls.cert"),
        ("key is not PEM", &tls.cert, &tls.not_pem, "proxy.tls.key"),
        (
            "key of another certificate",
            &tls.cert,
            &tls.other_key,
            "proxy.tls",
        ),
    ];
    let mut failures = Vec::new();
    for (what, cert, key, named) in cases {
        // Free ports, so that only the TLS files can be what stops it.
        let text = tls.config(cert, key).replace(
            "[proxy]\n",
            &format!(
                "[admin]\nlisten = \"127.0.0.1:0\"\n\n[proxy]\nlisten = \"127.0.0.1:{}\"\n",
                free_port()
            ),
        );
        let path = dir.path().join("proxy.toml");
        std::fs::write(&path, text).expect("write config");
        let log = dir.path().join("proxy.log");
        let mut proc = start(
            "proxy",
            &["proxy", "--config", path.to_str().expect("utf8")],
            &log,
        );
        let status = proc.wait_exit(std::time::Duration::from_secs(20));
        let stderr = std::fs::read_to_string(&log).unwrap_or_default();
        if status.code() != Some(2) || !stderr.contains(named) || stderr.contains("panicked") {
            failures.push(format!(
                "{what}: {status}, expected exit status 2 and a message naming `{named}`; stderr:\n{stderr}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// A config `up` starts from whose fleet has `provisioner` (inline) beside a static backend.
fn up_with_provisioner(dir: &std::path::Path, provisioner: &str) -> std::path::PathBuf {
    let path = dir.join("up.toml");
    std::fs::write(
        &path,
        GOOD.replace(
            "region = \"eu\"\n\n[identity]",
            "id = \"up-1\"\nregion = \"eu\"\n\n[identity]",
        )
        .replace(
            "backends = [\"127.0.0.1:9001\"]",
            &format!("backends = [\"127.0.0.1:9001\"]\nprovisioner = {provisioner}"),
        ),
    )
    .expect("write");
    path
}

#[test]
fn provisioner_settings_only_a_start_can_check_exit_2_naming_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, "clusters: [this is not, a kubeconfig").expect("write");
    let cases = [
        (
            "webhook secret variable that is not set",
            "{ kind = \"webhook\", url = \"http://127.0.0.1:9/\", secret_env = \"PRESCALE_TEST_UNSET_HOOK_KEY\" }".to_string(),
            "fleets[0].provisioner.secret_env",
            "PRESCALE_TEST_UNSET_HOOK_KEY",
        ),
        (
            "kubeconfig that is not one",
            format!(
                "{{ kind = \"kubernetes\", deployment = \"web\", kubeconfig = \"{}\" }}",
                kubeconfig.display()
            ),
            "fleets[0].provisioner.kubeconfig",
            "kubeconfig",
        ),
        (
            "kubernetes outside a cluster without a kubeconfig",
            "{ kind = \"kubernetes\", deployment = \"web\" }".to_string(),
            "fleets[0].provisioner.kubeconfig",
            "service account",
        ),
    ];
    let mut failures = Vec::new();
    for (what, provisioner, key, detail) in cases {
        let config = up_with_provisioner(dir.path(), &provisioner);
        let state = dir.path().join("state");
        let (proxy, admin) = (loopback(), loopback());
        let out = Command::new(bin())
            .args(up_args(&state, proxy, admin, Some(&config), None))
            .env_remove("PRESCALE_TEST_UNSET_HOOK_KEY")
            .env_remove("KUBERNETES_SERVICE_HOST")
            .output()
            .expect("run up");
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.code() != Some(2) || !stderr.contains(key) || !stderr.contains(detail) {
            failures.push(format!(
                "{what}: {}, expected exit status 2 and a message naming `{key}` ({detail}); stderr:\n{stderr}",
                out.status
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn problems_carry_line_numbers() {
    let text = GOOD.replace("backends = [", "capacity_rps = 0.0\nbackends = [");
    let (code, _, stderr) = check(&text);
    assert_eq!(code, 2);
    let line = text
        .lines()
        .position(|l| l.starts_with("capacity_rps"))
        .map(|i| i + 1)
        .expect("line");
    assert!(
        stderr.contains(&format!("line {line}: `fleets[0].capacity_rps`")),
        "{stderr}"
    );
}

#[test]
fn missing_file_and_bad_arguments_exit_2() {
    let out = Command::new(bin())
        .args(["check-config", "/nonexistent/prescale.toml"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/prescale.toml"));
    let out = Command::new(bin()).args(["proxy"]).output().expect("run");
    assert_eq!(
        out.status.code(),
        Some(2),
        "missing --config is a usage error"
    );
    let out = Command::new(bin())
        .args(["proxy", "--config", "/nonexistent.toml"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    for speedup in ["0.5", "5000", "nan"] {
        let out = Command::new(bin())
            .args(["up", "--speedup", speedup])
            .output()
            .expect("run");
        assert_eq!(out.status.code(), Some(2), "--speedup {speedup}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("--speedup"),
            "--speedup {speedup}"
        );
    }
    let out = Command::new(bin())
        .args(["up", "--history", "/nonexistent/history.csv"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--history"));
}

#[test]
fn every_subcommand_has_help() {
    for sub in [
        "up",
        "proxy",
        "forecaster",
        "check-config",
        "backend",
        "load",
        "replay",
        "certs",
    ] {
        let out = Command::new(bin())
            .args([sub, "--help"])
            .output()
            .expect("run");
        assert!(out.status.success(), "{sub} --help failed");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("Usage"),
            "{sub} --help has no usage"
        );
    }
}
