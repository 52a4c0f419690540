//! The operator's kit (`deploy/`) against the real thing: promtool checks and unit-tests the
//! alert rules; Debian's Prometheus scrapes a running `prescale up`, evaluates the rules and the
//! dashboard's queries on what it scraped, and every metric the rules and the dashboard name is
//! one that node exports; the configs inside the Kubernetes ConfigMap pass
//! `prescale check-config`, its render script runs, and the manifests agree with the configs;
//! the systemd units, the Kubernetes containers and the image's command run the binary with
//! flags it has.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde::Deserialize;

use common::{
    bin, get, loopback, repo_path, up_args, wait_for_status, write_certs, BackendReaper, Proc,
};

const RULES: &str = "deploy/prometheus/prescale-alerts.yml";
const RULE_TESTS: &str = "deploy/prometheus/prescale-alerts.test.yml";
const DASHBOARD: &str = "deploy/grafana/prescale.json";
const KUBERNETES: &str = "deploy/kubernetes";
const UNITS: [&str; 2] = ["prescale-proxy", "prescale-forecaster"];

/// A program from Debian's packages on PATH, or a failure that says how to install it.
fn tool(name: &str, install: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| panic!("`{name}` is not installed: {install}"))
}

fn promtool() -> PathBuf {
    tool(
        "promtool",
        "run `scripts/ensure-deps.sh --test` (Debian's prometheus package)",
    )
}

fn output_text(out: &Output) -> String {
    format!(
        "{}\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn read(relative: &str) -> String {
    std::fs::read_to_string(repo_path(relative)).unwrap_or_else(|e| panic!("{relative}: {e}"))
}

fn yaml(relative: &str) -> serde_yaml::Value {
    serde_yaml::from_str(&read(relative)).unwrap_or_else(|e| panic!("{relative}: {e}"))
}

/// Every string in a YAML or JSON tree (keys excluded).
fn yaml_strings(value: &serde_yaml::Value, out: &mut Vec<String>) {
    match value {
        serde_yaml::Value::String(s) => out.push(s.clone()),
        serde_yaml::Value::Sequence(items) => items.iter().for_each(|v| yaml_strings(v, out)),
        serde_yaml::Value::Mapping(map) => map.values().for_each(|v| yaml_strings(v, out)),
        serde_yaml::Value::Tagged(tagged) => yaml_strings(&tagged.value, out),
        _ => {}
    }
}

fn json_strings(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::String(s) => out.push(s.clone()),
        serde_json::Value::Array(items) => items.iter().for_each(|v| json_strings(v, out)),
        serde_json::Value::Object(map) => map.values().for_each(|v| json_strings(v, out)),
        _ => {}
    }
}

/// The `prescale_…` metric names a text mentions.
fn metric_names(text: &str) -> BTreeSet<String> {
    let bytes = text.as_bytes();
    let mut names = BTreeSet::new();
    let mut from = 0;
    while let Some(found) = text[from..].find("prescale_") {
        let start = from + found;
        let mut end = start + "prescale_".len();
        while end < bytes.len()
            && (bytes[end].is_ascii_lowercase()
                || bytes[end].is_ascii_digit()
                || bytes[end] == b'_')
        {
            end += 1;
        }
        let standalone =
            start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        if standalone && end > start + "prescale_".len() {
            names.insert(text[start..end].to_string());
        }
        from = end;
    }
    names
}

/// The alert names of the shipped rules (every rule is an alert).
fn alert_names() -> Vec<String> {
    let rules = yaml(RULES);
    rules["groups"]
        .as_sequence()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_sequence().cloned().unwrap_or_default())
        .map(|r| {
            r["alert"]
                .as_str()
                .expect("every rule is an alert")
                .to_string()
        })
        .collect()
}

fn dashboard() -> serde_json::Value {
    serde_json::from_str(&read(DASHBOARD)).unwrap_or_else(|e| panic!("{DASHBOARD}: {e}"))
}

/// Every metric the rules and the dashboard name, with the files naming it.
fn kit_metrics() -> BTreeMap<String, BTreeSet<&'static str>> {
    let mut named: BTreeMap<String, BTreeSet<&'static str>> = BTreeMap::new();
    let mut rule_strings = Vec::new();
    yaml_strings(&yaml(RULES), &mut rule_strings);
    let mut dashboard_strings = Vec::new();
    json_strings(&dashboard(), &mut dashboard_strings);
    for (file, strings) in [(RULES, rule_strings), (DASHBOARD, dashboard_strings)] {
        for name in strings.iter().flat_map(|s| metric_names(s)) {
            named.entry(name).or_default().insert(file);
        }
    }
    named
}

/// Family names (`# TYPE`) and sample names of a Prometheus text exposition.
fn exported_metrics(exposition: &str) -> BTreeSet<String> {
    exposition
        .lines()
        .filter_map(|line| match line.strip_prefix("# TYPE ") {
            Some(rest) => rest.split_whitespace().next(),
            None if line.starts_with('#') => None,
            None => line.split(['{', ' ']).next(),
        })
        .filter(|name| !name.is_empty())
        .map(str::to_string)
        .collect()
}

#[test]
fn alert_rules_pass_promtool_check_and_their_unit_tests() {
    let promtool = promtool();
    let dir = repo_path("deploy/prometheus");
    for args in [
        ["check", "rules", "prescale-alerts.yml"],
        ["test", "rules", "prescale-alerts.test.yml"],
        ["check", "config", "prometheus.yml"],
    ] {
        let out = Command::new(&promtool)
            .args(args)
            .current_dir(&dir)
            .output()
            .expect("run promtool");
        assert!(
            out.status.success(),
            "promtool {}: {}",
            args.join(" "),
            output_text(&out)
        );
    }

    // Every alert has a unit test in which it fires (the quiet cases are the series of the
    // same tests that an exact list of expected alerts leaves out).
    let tests = yaml(RULE_TESTS);
    let firing: BTreeSet<String> = tests["tests"]
        .as_sequence()
        .expect("tests")
        .iter()
        .flat_map(|t| {
            t["alert_rule_test"]
                .as_sequence()
                .cloned()
                .unwrap_or_default()
        })
        .filter(|case| {
            case["exp_alerts"]
                .as_sequence()
                .is_some_and(|a| !a.is_empty())
        })
        .filter_map(|case| case["alertname"].as_str().map(str::to_string))
        .collect();
    for alert in alert_names() {
        assert!(
            firing.contains(&alert),
            "{RULE_TESTS} has no case in which {alert} fires"
        );
    }
}

/// Percent-encoding of a query parameter.
fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `GET path` on Prometheus's HTTP API: the JSON answer, whatever its status.
fn prometheus_api(prometheus: SocketAddr, path: &str) -> Option<serde_json::Value> {
    let response = common::try_request(prometheus, "GET", path, &[], b"").ok()?;
    serde_json::from_slice(&response.body).ok()
}

/// Polls `done` every 250 ms until it holds; fails after `timeout` naming `what` with the logs.
fn poll(what: &str, timeout: Duration, logs: &[&Path], mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        if Instant::now() > deadline {
            let logs: String = logs
                .iter()
                .map(|log| {
                    let text = std::fs::read_to_string(log).unwrap_or_default();
                    let tail: String = text
                        .lines()
                        .rev()
                        .take(40)
                        .collect::<Vec<_>>()
                        .into_iter()
                        .rev()
                        .collect::<Vec<_>>()
                        .join("\n");
                    format!("--- {} (last lines)\n{tail}\n", log.display())
                })
                .collect();
            panic!("timed out after {timeout:?} waiting for {what}\n{logs}");
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// A dashboard expression as Grafana would send it with every variable at "All".
fn grafana_expr(expr: &str) -> String {
    expr.replace("$__rate_interval", "1m")
        .replace("$fleet", ".*")
        .replace("$region", ".*")
}

#[test]
fn prometheus_scrapes_a_running_node_that_exports_every_metric_the_kit_names() {
    let prometheus_bin = tool(
        "prometheus",
        "run `scripts/ensure-deps.sh --test` (Debian's prometheus package)",
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let run = dir.path().join("run");
    std::fs::create_dir_all(&run).expect("run dir");
    let run = run.canonicalize().expect("canonical run dir");
    // The demo backends `up` starts run in its working directory; gone with the test.
    let _reaper = BackendReaper::by_cwd(&run);

    let (proxy, admin) = (loopback(), loopback());
    let up_log = dir.path().join("up.log");
    let args = up_args(&dir.path().join("state"), proxy, admin, None, None);
    let mut up = Proc {
        child: Command::new(bin())
            .args(&args)
            .current_dir(&run)
            .env("PRESCALE_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&up_log).expect("log file"))
            .spawn()
            .expect("spawn prescale up"),
        name: "up".into(),
    };
    wait_for_status(admin, "/readyz", 200, Duration::from_secs(60), &up_log);

    // Traffic of the embedded default's profiles: `interactive` (/api), `batch` (/batch) and
    // the users' first requests (`new`).
    let paths = ["/api/items", "/batch/export", "/"];
    let sent = 30;
    for i in 0..sent {
        let user = format!("user-{}", i % 5);
        let r = get(proxy, paths[i % paths.len()], &[("x-user-id", &user)]);
        assert_eq!(r.status, 200, "{}", r.text());
    }

    // Debian's Prometheus, scraping the node's admin listener every second and evaluating the
    // kit's alert rules on what it scrapes.
    let prometheus = loopback();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - '{}'\n\
             scrape_configs:\n  - job_name: prescale\n    static_configs:\n      - targets: ['{admin}']\n",
            repo_path(RULES).display()
        ),
    )
    .expect("write prometheus.yml");
    let prometheus_log = dir.path().join("prometheus.log");
    // Killed when dropped, also when an assertion below fails.
    let _prometheus = Proc {
        child: Command::new(&prometheus_bin)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address={prometheus}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&prometheus_log).expect("log file"))
            .spawn()
            .expect("spawn prometheus"),
        name: "prometheus".into(),
    };
    let logs = [prometheus_log.as_path(), up_log.as_path()];

    // A query through its HTTP API returns prescale_requests_total: every request sent.
    let query =
        |expr: &str| prometheus_api(prometheus, &format!("/api/v1/query?query={}", encode(expr)));
    let mut last = None;
    poll(
        "prescale_requests_total in Prometheus to count every request sent",
        Duration::from_secs(120),
        &logs,
        || {
            let Some(answer) = query("prescale_requests_total") else {
                return false;
            };
            let result = answer["data"]["result"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let total: f64 = result
                .iter()
                .filter(|series| series["metric"]["job"] == "prescale")
                .filter_map(|series| series["value"][1].as_str()?.parse::<f64>().ok())
                .sum();
            last = Some(answer);
            !result.is_empty() && total == sent as f64
        },
    );
    let answer = last.expect("an answer");
    assert_eq!(answer["status"], "success", "{answer}");

    // Every metric the rules and the dashboard name is one the node exports.
    let exposition = get(admin, "/metrics", &[]).text();
    let exported = exported_metrics(&exposition);
    let missing: Vec<String> = kit_metrics()
        .into_iter()
        .filter(|(name, _)| !exported.contains(name))
        .map(|(name, files)| {
            format!(
                "{name} (in {})",
                files.into_iter().collect::<Vec<_>>().join(", ")
            )
        })
        .collect();
    assert!(
        missing.is_empty(),
        "the kit names metrics a running `prescale up` does not export:\n  {}",
        missing.join("\n  ")
    );

    // Every dashboard query evaluates in Prometheus; those over metrics the node has samples of
    // return data.
    let sampled: BTreeSet<String> = exposition
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.split(['{', ' ']).next())
        .map(str::to_string)
        .collect();
    let dashboard = dashboard();
    let targets: Vec<(String, String)> = dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .flat_map(|panel| {
            let title = panel["title"].as_str().unwrap_or("?").to_string();
            panel["targets"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .filter_map(move |t| Some((title.clone(), t["expr"].as_str()?.to_string())))
        })
        .collect();
    assert!(
        targets.len() >= 20,
        "the dashboard has {} queries",
        targets.len()
    );
    for (title, expr) in &targets {
        let expr = grafana_expr(expr);
        let has_samples = metric_names(&expr)
            .iter()
            .all(|name| sampled.contains(name));
        poll(
            &format!("the dashboard's panel `{title}` to evaluate: {expr}"),
            Duration::from_secs(60),
            &logs,
            || {
                let answer = query(&expr).unwrap_or_default();
                answer["status"] == "success"
                    && (!has_samples
                        || answer["data"]["result"]
                            .as_array()
                            .is_some_and(|r| !r.is_empty()))
            },
        );
    }
    // Its variables: label values Prometheus knows.
    for (variable, want) in [("fleet", "web"), ("region", "local")] {
        let definition = dashboard["templating"]["list"]
            .as_array()
            .expect("templating")
            .iter()
            .find(|v| v["name"] == variable)
            .and_then(|v| v["definition"].as_str())
            .unwrap_or_else(|| panic!("variable {variable}"))
            .to_string();
        let inner = definition
            .strip_prefix("label_values(")
            .and_then(|s| s.strip_suffix(')'))
            .unwrap_or_else(|| panic!("{definition} is not label_values(METRIC, LABEL)"));
        let (metric, label) = inner.split_once(',').expect("METRIC, LABEL");
        let path = format!(
            "/api/v1/label/{}/values?match[]={}",
            label.trim(),
            encode(metric.trim())
        );
        poll(
            &format!("the values of ${variable} ({definition}) to include {want}"),
            Duration::from_secs(60),
            &logs,
            || {
                prometheus_api(prometheus, &path).is_some_and(|answer| {
                    answer["data"]
                        .as_array()
                        .is_some_and(|values| values.iter().any(|v| v == want))
                })
            },
        );
    }

    // Prometheus loaded every alert rule and evaluates each without error on the node's series.
    let alerts = alert_names();
    let mut rules = serde_json::Value::Null;
    poll(
        "every alert rule to be evaluated",
        Duration::from_secs(60),
        &logs,
        || {
            rules = prometheus_api(prometheus, "/api/v1/rules").unwrap_or_default();
            let loaded: Vec<&serde_json::Value> = rules["data"]["groups"]
                .as_array()
                .map(|groups| {
                    groups
                        .iter()
                        .flat_map(|g| g["rules"].as_array().into_iter().flatten())
                        .collect()
                })
                .unwrap_or_default();
            loaded.len() == alerts.len() && loaded.iter().all(|r| r["health"] != "unknown")
        },
    );
    for rule in rules["data"]["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|g| g["rules"].as_array().into_iter().flatten())
    {
        assert_eq!(
            rule["health"], "ok",
            "alert {} does not evaluate: {}",
            rule["name"], rule["lastError"]
        );
    }

    up.signal("TERM");
    let status = up.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "up exited with {status}");
}

/// Every document of every manifest the kustomization lists (and it lists every manifest).
fn manifests() -> Vec<serde_yaml::Value> {
    let kustomization = yaml(&format!("{KUBERNETES}/kustomization.yaml"));
    let listed: BTreeSet<String> = kustomization["resources"]
        .as_sequence()
        .expect("resources")
        .iter()
        .map(|r| r.as_str().expect("file name").to_string())
        .collect();
    let present: BTreeSet<String> = std::fs::read_dir(repo_path(KUBERNETES))
        .expect("deploy/kubernetes")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|name| name.ends_with(".yaml") && name != "kustomization.yaml")
        .collect();
    assert_eq!(listed, present, "kustomization.yaml's resources");
    let mut docs = Vec::new();
    for file in &listed {
        let text = read(&format!("{KUBERNETES}/{file}"));
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let value = serde_yaml::Value::deserialize(doc)
                .unwrap_or_else(|e| panic!("{KUBERNETES}/{file}: {e}"));
            if !value.is_null() {
                docs.push(value);
            }
        }
    }
    docs
}

fn find<'a>(docs: &'a [serde_yaml::Value], kind: &str, name: &str) -> &'a serde_yaml::Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in {KUBERNETES}"))
}

fn str_of<'a>(value: &'a serde_yaml::Value, what: &str) -> &'a str {
    value
        .as_str()
        .unwrap_or_else(|| panic!("{what} is not a string: {value:?}"))
}

fn seq(value: &serde_yaml::Value) -> Vec<serde_yaml::Value> {
    value.as_sequence().cloned().unwrap_or_default()
}

fn toml_of(text: &str, what: &str) -> toml::Table {
    toml::from_str(text).unwrap_or_else(|e| panic!("{what}: {e}"))
}

fn toml_str<'a>(table: &'a toml::Table, table_name: &str, key: &str) -> &'a str {
    table
        .get(table_name)
        .and_then(|t| t.get(key))
        .and_then(|v| v.as_str())
        .unwrap_or_else(|| panic!("{table_name}.{key} is not set"))
}

fn port_of(address: &str) -> u16 {
    address
        .rsplit_once(':')
        .and_then(|(_, port)| port.parse().ok())
        .unwrap_or_else(|| panic!("{address} has no port"))
}

/// The port numbered `name` of a workload's containers.
fn container_port(workload: &serde_yaml::Value, name: &str) -> u64 {
    seq(&workload["spec"]["template"]["spec"]["containers"])
        .iter()
        .flat_map(|c| seq(&c["ports"]))
        .find(|p| p["name"] == name)
        .and_then(|p| p["containerPort"].as_u64())
        .unwrap_or_else(|| panic!("no container port `{name}`"))
}

fn mounts(container: &serde_yaml::Value) -> Vec<(String, String)> {
    seq(&container["volumeMounts"])
        .iter()
        .map(|m| {
            (
                str_of(&m["name"], "volumeMounts.name").to_string(),
                str_of(&m["mountPath"], "volumeMounts.mountPath").to_string(),
            )
        })
        .collect()
}

fn run_check_config(path: &Path) -> Output {
    Command::new(bin())
        .args(["check-config", path.to_str().expect("utf-8 path")])
        .output()
        .expect("run check-config")
}

#[test]
fn kubernetes_configs_pass_check_config_and_the_manifests_agree_with_them() {
    let dir = tempfile::tempdir().expect("temp dir");
    let docs = manifests();
    let namespace = str_of(
        &find(&docs, "Namespace", "prescale")["metadata"]["name"],
        "namespace",
    );
    for doc in docs.iter().filter(|d| d["kind"] != "Namespace") {
        assert_eq!(
            doc["metadata"]["namespace"], namespace,
            "{:?} {:?} is outside the namespace",
            doc["kind"], doc["metadata"]["name"]
        );
    }

    // The configs inside the ConfigMap are valid as written.
    let config_map = find(&docs, "ConfigMap", "prescale-config");
    let config_dir = dir.path().join("config");
    std::fs::create_dir_all(&config_dir).expect("config dir");
    for file in ["proxy.toml", "forecaster.toml", "render-config.sh"] {
        let text = str_of(&config_map["data"][file], file);
        std::fs::write(config_dir.join(file), text).expect("write");
    }
    for file in ["proxy.toml", "forecaster.toml"] {
        let out = run_check_config(&config_dir.join(file));
        assert!(
            out.status.success(),
            "check-config of the ConfigMap's {file}: {}",
            output_text(&out)
        );
    }
    let proxy = toml_of(
        str_of(&config_map["data"]["proxy.toml"], "proxy.toml"),
        "proxy.toml",
    );
    let forecaster = toml_of(
        str_of(&config_map["data"]["forecaster.toml"], "forecaster.toml"),
        "forecaster.toml",
    );

    // The render script, as the init containers run it: the pod's name as node id, the secrets
    // from the environment, and (for a proxy) a mesh certificate for that name.
    let forecaster_name = toml_str(&forecaster, "node", "id");
    let mesh = dir.path().join("mesh");
    write_certs(&mesh, &[forecaster_name]);
    let bin_dir = Path::new(bin()).parent().expect("bin dir").to_path_buf();
    let path = std::env::join_paths(std::iter::once(bin_dir).chain(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    )))
    .expect("PATH");
    let render = |role: &str, out: &Path, secret: &str| {
        Command::new("sh")
            .arg(config_dir.join("render-config.sh"))
            .arg(role)
            .env("PATH", &path)
            .env("RENDER_OUT", out)
            .env("RENDER_CONFIG_DIR", &config_dir)
            .env("RENDER_MESH_CA_DIR", &mesh)
            .env("POD_NAME", "prescale-proxy-7d4b9c8f6d-x2x9z")
            .env("IDENTITY_SECRET", secret)
            .env("ADMIN_TOKEN", "0123456789abcdef0123456789abcdef")
            .output()
            .expect("run render-config.sh")
    };
    let secret = "fedcba9876543210fedcba9876543210";
    let rendered = dir.path().join("proxy-run");
    let out = render("proxy", &rendered, secret);
    assert!(
        out.status.success(),
        "render-config.sh proxy: {}",
        output_text(&out)
    );
    let text = std::fs::read_to_string(rendered.join("prescale.toml")).expect("rendered config");
    let running = toml_of(&text, "rendered proxy config");
    assert_eq!(
        toml_str(&running, "node", "id"),
        "prescale-proxy-7d4b9c8f6d-x2x9z"
    );
    assert_eq!(toml_str(&running, "identity", "secret"), secret);
    assert_eq!(
        toml_str(&running, "admin", "token"),
        "0123456789abcdef0123456789abcdef"
    );
    for file in ["ca.pem", "node.pem", "node.key.pem"] {
        assert!(
            rendered.join("certs").join(file).is_file(),
            "{file} was not written"
        );
    }
    assert!(
        !rendered.join("certs/ca.key.pem").exists(),
        "the CA key was left beside the config"
    );
    // The rendered mesh paths are the ones the script writes, under the pod's /run/prescale.
    for key in ["ca", "cert", "key"] {
        let path = toml_str(&running, "mesh", key);
        let file = path
            .strip_prefix("/run/prescale/")
            .unwrap_or_else(|| panic!("mesh.{key} = {path}"));
        assert!(
            rendered.join(file).is_file(),
            "mesh.{key} = {path} is not what the script wrote"
        );
    }
    let out = render("forecaster", &dir.path().join("forecaster-run"), secret);
    assert!(
        out.status.success(),
        "render-config.sh forecaster: {}",
        output_text(&out)
    );
    let out = render(
        "proxy",
        &dir.path().join("bad-run"),
        "a\"quote-in-the-secret",
    );
    assert_eq!(
        out.status.code(),
        Some(2),
        "a secret that would break the TOML: {}",
        output_text(&out)
    );

    // Both roles plan and route the same region, fleets and profiles.
    for table in ["regions", "fleets", "profiles", "assignment"] {
        assert_eq!(
            proxy.get(table),
            forecaster.get(table),
            "`{table}` differs between proxy.toml and forecaster.toml"
        );
    }
    assert_eq!(
        toml_str(&proxy, "export", "forecaster_name"),
        forecaster_name
    );

    let proxies = find(&docs, "Deployment", "prescale-proxy");
    let stateful = find(&docs, "StatefulSet", "prescale-forecaster");
    let backend = find(&docs, "Deployment", "backend");

    // Every Service selects the pods of a workload.
    let workloads: Vec<&serde_yaml::Value> = docs
        .iter()
        .filter(|d| d["kind"] == "Deployment" || d["kind"] == "StatefulSet")
        .collect();
    for service in docs.iter().filter(|d| d["kind"] == "Service") {
        let selector = service["spec"]["selector"].as_mapping().expect("selector");
        assert!(
            workloads.iter().any(|w| {
                let labels = &w["spec"]["template"]["metadata"]["labels"];
                selector
                    .iter()
                    .all(|(k, v)| &labels[k.as_str().unwrap_or("")] == v)
            }),
            "Service {:?} selects no workload's pods",
            service["metadata"]["name"]
        );
    }

    // The fixed cluster IPs are the addresses in the configs.
    let quic = find(&docs, "Service", "prescale-forecaster-quic");
    let quic_port = &seq(&quic["spec"]["ports"])[0];
    assert_eq!(quic_port["protocol"], "UDP", "QUIC is UDP");
    assert_eq!(
        format!(
            "{}:{}",
            str_of(&quic["spec"]["clusterIP"], "clusterIP"),
            quic_port["port"].as_u64().expect("port")
        ),
        toml_str(&proxy, "export", "forecaster"),
        "export.forecaster is the forecaster's QUIC Service"
    );
    assert_eq!(
        container_port(stateful, "quic"),
        u64::from(port_of(toml_str(&forecaster, "forecaster", "listen")))
    );
    let backend_service = find(&docs, "Service", "backend");
    let backend_address = format!(
        "{}:{}",
        str_of(&backend_service["spec"]["clusterIP"], "clusterIP"),
        seq(&backend_service["spec"]["ports"])[0]["port"]
            .as_u64()
            .expect("port")
    );
    for config in [&proxy, &forecaster] {
        let fleets = config["fleets"].as_array().expect("fleets");
        assert!(
            fleets.iter().all(|f| f["backends"]
                .as_array()
                .is_some_and(|b| b.iter().any(|b| b.as_str() == Some(&backend_address)))),
            "every fleet's backend is the backend Service {backend_address}"
        );
    }
    assert_eq!(
        container_port(backend, "http"),
        u64::from(port_of(&backend_address)),
        "the backend listens where its Service sends"
    );

    // Listeners and ports agree.
    assert_eq!(
        container_port(proxies, "http"),
        u64::from(port_of(toml_str(&proxy, "proxy", "listen")))
    );
    assert_eq!(
        container_port(proxies, "admin"),
        u64::from(port_of(toml_str(&proxy, "admin", "listen")))
    );
    assert_eq!(
        container_port(stateful, "admin"),
        u64::from(port_of(toml_str(&forecaster, "admin", "listen")))
    );

    // The render script's mounts: the ConfigMap, the mesh CA, the run directory; the proxy's
    // spool and the forecaster's database and certificates on volumes.
    let init = &seq(&proxies["spec"]["template"]["spec"]["initContainers"])[0];
    let init_mounts = mounts(init);
    for path in [
        "/etc/prescale/config",
        "/etc/prescale/mesh-ca",
        "/run/prescale",
    ] {
        assert!(
            init_mounts.iter().any(|(_, p)| p == path),
            "the proxy's init container mounts no {path}"
        );
    }
    let under_a_mount = |container: &serde_yaml::Value, path: &str| {
        mounts(container)
            .iter()
            .any(|(_, m)| Path::new(path).starts_with(m))
    };
    let proxy_container = &seq(&proxies["spec"]["template"]["spec"]["containers"])[0];
    assert!(
        under_a_mount(proxy_container, toml_str(&proxy, "export", "spool_dir")),
        "the spool is on no volume"
    );
    // The root file system is read-only: the instance lock needs a volume too.
    assert!(
        under_a_mount(proxy_container, toml_str(&proxy, "proxy", "upgrade_socket")),
        "proxy.upgrade_socket is on no volume"
    );
    let forecaster_container = &seq(&stateful["spec"]["template"]["spec"]["containers"])[0];
    let database = toml_str(&forecaster, "forecaster", "database");
    let claims = seq(&stateful["spec"]["volumeClaimTemplates"]);
    let claim = str_of(&claims[0]["metadata"]["name"], "claim");
    assert!(
        mounts(forecaster_container)
            .iter()
            .any(|(name, path)| name == claim && Path::new(database).starts_with(path)),
        "forecaster.database {database} is not on the volume claim `{claim}`"
    );
    let mesh_items: Vec<String> = seq(&stateful["spec"]["template"]["spec"]["volumes"])
        .iter()
        .filter(|v| v["name"] == "mesh")
        .flat_map(|v| seq(&v["secret"]["items"]))
        .map(|i| str_of(&i["path"], "items.path").to_string())
        .collect();
    for key in ["ca", "cert", "key"] {
        let path = toml_str(&forecaster, "mesh", key);
        let file = Path::new(path)
            .file_name()
            .and_then(|f| f.to_str())
            .expect("file name");
        assert!(
            under_a_mount(forecaster_container, path),
            "mesh.{key} {path} is on no volume"
        );
        assert!(
            mesh_items.iter().any(|i| i == file),
            "mesh.{key}: {file} is not in the mesh Secret's items"
        );
    }

    // The headless Service of the StatefulSet, and the ScaledObject pointing at the scaler.
    let headless_name = str_of(&stateful["spec"]["serviceName"], "serviceName");
    let headless = find(&docs, "Service", headless_name);
    assert_eq!(
        headless["spec"]["clusterIP"], "None",
        "the StatefulSet's Service is headless"
    );
    let scaled = find(&docs, "ScaledObject", "backend");
    assert_eq!(scaled["spec"]["scaleTargetRef"]["kind"], "Deployment");
    assert_eq!(
        scaled["spec"]["scaleTargetRef"]["name"],
        backend["metadata"]["name"]
    );
    let trigger = &seq(&scaled["spec"]["triggers"])[0];
    assert_eq!(trigger["type"], "external");
    let keda_port = port_of(toml_str(&forecaster, "forecaster", "keda_listen"));
    assert_eq!(container_port(stateful, "keda"), u64::from(keda_port));
    assert_eq!(
        str_of(&trigger["metadata"]["scalerAddress"], "scalerAddress"),
        format!(
            "{}-0.{headless_name}.{namespace}.svc.cluster.local:{keda_port}",
            str_of(&stateful["metadata"]["name"], "name")
        )
    );
    let (region, fleet) = (
        str_of(&trigger["metadata"]["region"], "region"),
        str_of(&trigger["metadata"]["fleet"], "fleet"),
    );
    let fleet_config = forecaster["fleets"]
        .as_array()
        .expect("fleets")
        .iter()
        .find(|f| f["name"].as_str() == Some(fleet) && f["region"].as_str() == Some(region))
        .unwrap_or_else(|| {
            panic!("the ScaledObject's fleet {region}/{fleet} is not in forecaster.toml")
        });
    assert_eq!(
        scaled["spec"]["maxReplicaCount"].as_i64(),
        fleet_config["max_instances"].as_integer(),
        "maxReplicaCount is the fleet's max_instances"
    );
    assert_eq!(
        scaled["spec"]["minReplicaCount"].as_i64(),
        forecaster["planner"]["baseline_instances"].as_integer(),
        "minReplicaCount is the planner's baseline"
    );
    assert!(
        backend["spec"]["replicas"].is_null(),
        "KEDA owns the backend's replicas"
    );
}

/// Checks that `args` (a subcommand and its arguments) name flags the subcommand has, and that
/// clap accepts them with their values.
fn check_flags(what: &str, args: &[String]) {
    let subcommand = args
        .first()
        .unwrap_or_else(|| panic!("{what}: no subcommand"));
    let help = Command::new(bin())
        .args([subcommand.as_str(), "--help"])
        .output()
        .expect("run --help");
    assert!(
        help.status.success(),
        "{what}: `prescale {subcommand}` is no subcommand: {}",
        output_text(&help)
    );
    let help = String::from_utf8_lossy(&help.stdout).into_owned();
    let flags: Vec<&str> = args
        .iter()
        .filter(|a| a.starts_with("--"))
        .map(|a| a.split('=').next().unwrap_or(a))
        .collect();
    for flag in &flags {
        assert!(
            help.contains(&format!("{flag} ")) || help.contains(&format!("{flag}\n")),
            "{what}: `prescale {subcommand}` has no flag {flag}:\n{help}"
        );
    }
    // The whole argument list parses (values included): clap reaches the trailing --help only
    // after every argument before it was accepted.
    let parsed = Command::new(bin())
        .args(args)
        .arg("--help")
        .output()
        .expect("run with --help");
    assert!(
        parsed.status.success(),
        "{what}: prescale {}: {}",
        args.join(" "),
        output_text(&parsed)
    );
}

/// `Key=value` lines of a unit file's section-less view.
fn unit_values<'a>(unit: &'a str, key: &str) -> Vec<&'a str> {
    unit.lines()
        .filter_map(|line| line.strip_prefix(key)?.strip_prefix('='))
        .collect()
}

#[test]
fn systemd_units_containers_and_the_image_use_flags_the_binary_has() {
    let dir = tempfile::tempdir().expect("temp dir");
    let analyze = tool("systemd-analyze", "install Debian's systemd package");
    for unit_name in UNITS {
        let file = format!("deploy/systemd/{unit_name}.service");
        let unit = read(&file);
        let mut commands = 0;
        for key in ["ExecStartPre", "ExecStart"] {
            for line in unit_values(&unit, key) {
                let words: Vec<String> = line.split_whitespace().map(str::to_string).collect();
                assert!(
                    words.first().is_some_and(|w| w.ends_with("/prescale")),
                    "{file}: {key} runs {line}"
                );
                check_flags(&format!("{file} {key}"), &words[1..]);
                commands += 1;
            }
        }
        assert!(commands >= 2, "{file}: no ExecStart");
        assert!(
            unit_values(&unit, "ExecReload").is_empty(),
            "{file}: the config is a credential copied at start: a reload would read the old copy"
        );
        assert_eq!(unit_values(&unit, "Restart"), ["on-failure"], "{file}");

        // systemd itself accepts the unit (with the built binary in place of the installed one).
        let copy = dir.path().join(format!("{unit_name}.service"));
        std::fs::write(&copy, unit.replace("/usr/local/bin/prescale", bin())).expect("write unit");
        let out = Command::new(&analyze)
            .arg("verify")
            .arg(&copy)
            .output()
            .expect("run systemd-analyze");
        let complaints: Vec<String> = String::from_utf8_lossy(&out.stderr)
            .lines()
            .filter(|l| l.contains(&format!("{unit_name}.service")))
            .map(str::to_string)
            .collect();
        assert!(
            out.status.success() && complaints.is_empty(),
            "systemd-analyze verify {file}: {}",
            output_text(&out)
        );

        // The config the unit loads as its credential `prescale.toml` is valid, and the files it
        // names under the credentials directory are ones the unit loads.
        let credentials: BTreeMap<&str, &str> = unit_values(&unit, "LoadCredential")
            .into_iter()
            .filter_map(|v| v.split_once(':'))
            .collect();
        let source = credentials
            .get("prescale.toml")
            .unwrap_or_else(|| panic!("{file}: no prescale.toml credential"));
        let shipped = format!(
            "deploy/systemd/{}",
            Path::new(source)
                .file_name()
                .and_then(|f| f.to_str())
                .expect("file name")
        );
        let out = run_check_config(&repo_path(&shipped));
        assert!(
            out.status.success(),
            "check-config {shipped}: {}",
            output_text(&out)
        );
        let config = toml_of(&read(&shipped), &shipped);
        for key in ["ca", "cert", "key"] {
            let path = toml_str(&config, "mesh", key);
            let name = path
                .strip_prefix(&format!("/run/credentials/{unit_name}.service/"))
                .unwrap_or_else(|| {
                    panic!("{shipped}: mesh.{key} = {path} is not a credential of {file}")
                });
            assert!(
                credentials.contains_key(name),
                "{shipped}: mesh.{key}: {file} loads no credential {name}"
            );
        }
        let state = format!(
            "/var/lib/{}",
            unit_values(&unit, "StateDirectory")
                .first()
                .expect("StateDirectory")
        );
        let kept = config
            .get("export")
            .and_then(|e| e.get("spool_dir"))
            .or_else(|| config.get("forecaster").and_then(|f| f.get("database")))
            .and_then(|v| v.as_str())
            .unwrap_or_else(|| {
                panic!("{shipped}: neither export.spool_dir nor forecaster.database")
            });
        assert!(
            Path::new(kept).starts_with(&state),
            "{shipped}: {kept} is outside the unit's StateDirectory {state}"
        );
    }

    // The image: the binary as entrypoint, a command it accepts, a user that is not root (the
    // one the manifests run as), cmake in the builder.
    let containerfile = read("deploy/Containerfile");
    let instruction = |name: &str| -> Vec<String> {
        let line = containerfile
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .unwrap_or_else(|| panic!("deploy/Containerfile has no {name}"));
        serde_json::from_str(line).unwrap_or_else(|e| panic!("{name} {line}: {e}"))
    };
    let entrypoint = instruction("ENTRYPOINT");
    assert!(
        entrypoint.len() == 1 && entrypoint[0].ends_with("/prescale"),
        "ENTRYPOINT {entrypoint:?}"
    );
    check_flags("deploy/Containerfile CMD", &instruction("CMD"));
    let user = containerfile
        .lines()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("USER");
    let uid: u64 = user
        .split(':')
        .next()
        .and_then(|u| u.parse().ok())
        .expect("numeric USER");
    assert_ne!(uid, 0, "the image runs as root");
    assert!(
        containerfile.contains("cmake"),
        "the builder installs cmake"
    );

    // The Kubernetes containers that run the image.
    let docs = manifests();
    let mut containers = 0;
    for workload in docs
        .iter()
        .filter(|d| d["kind"] == "Deployment" || d["kind"] == "StatefulSet")
    {
        let spec = &workload["spec"]["template"]["spec"];
        assert_eq!(
            spec["securityContext"]["runAsUser"].as_u64(),
            Some(uid),
            "{:?}",
            workload["metadata"]["name"]
        );
        for container in seq(&spec["containers"]) {
            if !str_of(&container["image"], "image").starts_with("prescale:") {
                continue;
            }
            let args: Vec<String> = seq(&container["args"])
                .iter()
                .map(|a| str_of(a, "args").to_string())
                .collect();
            check_flags(
                &format!(
                    "{:?} container {:?}",
                    workload["metadata"]["name"], container["name"]
                ),
                &args,
            );
            containers += 1;
        }
    }
    assert_eq!(containers, 3, "proxy, forecaster and backend containers");
}
