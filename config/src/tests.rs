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
