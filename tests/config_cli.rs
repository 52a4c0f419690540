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
    let cases: Vec<(&str, String, &str)> = vec![
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
}

#[test]
fn every_subcommand_has_help() {
    for sub in [
        "up",
        "proxy",
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
