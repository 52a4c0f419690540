//! End-to-end: three proxies in two regions ship sketches over QUIC (mutual TLS) to two
//! forecasters; the stored minute series add up to exactly the requests served, also across a
//! forecaster SIGKILL and restart; a proxy with a certificate from another CA is refused.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

fn loopback() -> SocketAddr {
    format!("127.0.0.1:{}", free_port()).parse().expect("addr")
}

fn udp_port() -> u16 {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp bind");
    socket.local_addr().expect("addr").port()
}

fn write_certs(dir: &Path, nodes: &[&str]) {
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

struct Paths {
    certs: PathBuf,
    root: PathBuf,
    /// Membership addresses of the two forecasters, the seeds every node joins through.
    seed: SocketAddr,
    us_seed: SocketAddr,
}

fn common_sections(
    node: &str,
    region: &str,
    backend: SocketAddr,
    certs: &Path,
    seeds: (SocketAddr, SocketAddr),
) -> String {
    let (seed, us_seed) = seeds;
    let membership: SocketAddr = match node {
        "fc-eu" => seed,
        "fc-us" => us_seed,
        _ => format!("127.0.0.1:{}", udp_port()).parse().expect("addr"),
    };
    format!(
        r#"
[node]
id = "{node}"
region = "{region}"

[identity]
secret = "mesh-e2e-secret-0123456789"

[[regions]]
name = "eu"
countries = ["DE"]

[[regions]]
name = "us"
countries = ["US"]

[[fleets]]
name = "web"
region = "eu"
backends = ["{backend}"]

[[fleets]]
name = "web"
region = "us"
backends = ["{backend}"]

[[profiles]]
name = "batch"

[assignment]
new_user_min_requests = 0
rules = [{{ path_prefix = "/batch", profile = "batch" }}, {{ path_prefix = "/api", profile = "interactive" }}]

[mesh]
ca = "{ca}"
cert = "{cert}"
key = "{key}"
membership_listen = "{membership}"
seeds = [{{ name = "fc-eu", addr = "{seed}" }}, {{ name = "fc-us", addr = "{us_seed}" }}]
"#,
        ca = certs.join("ca.pem").display(),
        cert = certs.join(format!("{node}.pem")).display(),
        key = certs.join(format!("{node}.key.pem")).display(),
    )
}

struct Forecaster {
    proc: Proc,
    admin: SocketAddr,
    quic: SocketAddr,
    config: PathBuf,
    log: PathBuf,
}

fn start_forecaster(
    paths: &Paths,
    node: &str,
    region: &str,
    backend: SocketAddr,
    quic: Option<SocketAddr>,
) -> Forecaster {
    let admin = loopback();
    let quic = quic.unwrap_or_else(|| format!("127.0.0.1:{}", udp_port()).parse().expect("addr"));
    let text = format!(
        "{}\n[admin]\nlisten = \"{admin}\"\n\n[forecaster]\nlisten = \"{quic}\"\ndatabase = \"{}\"\nsilent_after_secs = 5\n",
        common_sections(node, region, backend, &paths.certs, (paths.seed, paths.us_seed)),
        paths.root.join(format!("{node}.db")).display()
    );
    let config = paths.root.join(format!("{node}.toml"));
    std::fs::write(&config, text).expect("write config");
    let log = paths.root.join(format!("{node}.log"));
    let proc = start(
        node,
        &["forecaster", "--config", config.to_str().expect("utf8")],
        &log,
    );
    wait_for_status(admin, "/readyz", 200, Duration::from_secs(20), &log);
    Forecaster {
        proc,
        admin,
        quic,
        config,
        log,
    }
}

impl Forecaster {
    fn restart(&mut self) {
        let log = self.log.with_extension("restart.log");
        self.proc = start(
            "forecaster again",
            &[
                "forecaster",
                "--config",
                self.config.to_str().expect("utf8"),
            ],
            &log,
        );
        wait_for_status(self.admin, "/readyz", 200, Duration::from_secs(20), &log);
    }

    /// Requests stored per profile, over all minutes, regions and fleets.
    fn stored(&self, profile: &str) -> u64 {
        let r = get(
            self.admin,
            &format!("/api/v1/series?profile={profile}"),
            &[],
        );
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()["series"]
            .as_array()
            .expect("series")
            .iter()
            .flat_map(|s| s["points"].as_array().cloned().unwrap_or_default())
            .map(|p| p["requests"].as_u64().unwrap_or(0))
            .sum()
    }

    fn metric(&self, name: &str) -> f64 {
        metric_sum(&get(self.admin, "/metrics", &[]).text(), name, &[])
    }
}

struct ProxyNode {
    _proc: Proc,
    proxy: SocketAddr,
    admin: SocketAddr,
}

fn start_proxy_node(
    paths: &Paths,
    certs: &Path,
    node: &str,
    region: &str,
    backend: SocketAddr,
    forecaster: &Forecaster,
    forecaster_name: &str,
) -> ProxyNode {
    let proxy = loopback();
    let admin = loopback();
    let text = format!(
        "{}\n[proxy]\nlisten = \"{proxy}\"\nthreads = 1\n\n[admin]\nlisten = \"{admin}\"\n\n[export]\nforecaster = \"{}\"\nforecaster_name = \"{forecaster_name}\"\ninterval_secs = 1\nspool_dir = \"{}\"\n",
        common_sections(node, region, backend, certs, (paths.seed, paths.us_seed)),
        forecaster.quic,
        paths.root.join(format!("{node}-spool")).display()
    );
    let config = paths.root.join(format!("{node}.toml"));
    std::fs::write(&config, text).expect("write config");
    let log = paths.root.join(format!("{node}.log"));
    let proc = start(
        node,
        &["proxy", "--config", config.to_str().expect("utf8")],
        &log,
    );
    wait_for_status(admin, "/readyz", 200, Duration::from_secs(20), &log);
    wait_for_listener(proxy, Duration::from_secs(20), &log);
    ProxyNode {
        _proc: proc,
        proxy,
        admin,
    }
}

fn send(node: &ProxyNode, path: &str, users: usize, per_user: usize) -> u64 {
    let mut sent = 0;
    for user in 0..users {
        for _ in 0..per_user {
            let r = get(
                node.proxy,
                path,
                &[("X-User-Id", &format!("{path}-{user}"))],
            );
            assert_eq!(r.status, 200, "{}", r.text());
            sent += 1;
        }
    }
    sent
}

fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn series_add_up_exactly_across_a_forecaster_crash() {
    let dir = tempfile::tempdir().expect("tempdir");
    let seed: SocketAddr = format!("127.0.0.1:{}", udp_port()).parse().expect("addr");
    let paths = Paths {
        certs: dir.path().join("certs"),
        root: dir.path().to_path_buf(),
        seed,
        us_seed: format!("127.0.0.1:{}", udp_port()).parse().expect("addr"),
    };
    write_certs(
        &paths.certs,
        &["fc-eu", "fc-us", "p-eu-1", "p-eu-2", "p-us-1"],
    );
    let rogue_certs = dir.path().join("rogue-certs");
    write_certs(&rogue_certs, &["p-rogue"]);
    let (_backend, backend) = start_backend("web", None, &[]);

    let mut fc_eu = start_forecaster(&paths, "fc-eu", "eu", backend, None);
    let fc_us = start_forecaster(&paths, "fc-us", "us", backend, None);
    let eu1 = start_proxy_node(
        &paths,
        &paths.certs,
        "p-eu-1",
        "eu",
        backend,
        &fc_eu,
        "fc-eu",
    );
    let eu2 = start_proxy_node(
        &paths,
        &paths.certs,
        "p-eu-2",
        "eu",
        backend,
        &fc_eu,
        "fc-eu",
    );
    let us1 = start_proxy_node(
        &paths,
        &paths.certs,
        "p-us-1",
        "us",
        backend,
        &fc_us,
        "fc-us",
    );

    let mut eu_batch = send(&eu1, "/batch/a", 4, 5) + send(&eu2, "/batch/b", 3, 2);
    let mut eu_interactive = send(&eu1, "/api/a", 5, 3);
    let us_batch = send(&us1, "/batch/c", 2, 4);
    let us_interactive = send(&us1, "/api/c", 6, 1);
    wait_until("first series", Duration::from_secs(30), || {
        fc_eu.stored("batch") == eu_batch && fc_eu.stored("interactive") == eu_interactive
    });

    // Membership: every member is known everywhere, and each forecaster's region totals reach
    // the other one (the global view).
    let alive_members = |admin| {
        let members = get(admin, "/api/v1/members", &[]).json();
        members["members"]
            .as_array()
            .map_or(0, |m| m.iter().filter(|m| m["alive"] == true).count())
    };
    wait_until(
        "the other members alive at the US forecaster",
        Duration::from_secs(30),
        || alive_members(fc_us.admin) >= 4,
    );
    wait_until(
        "EU totals at the US forecaster",
        Duration::from_secs(40),
        || {
            let regions = get(fc_us.admin, "/api/v1/regions", &[]).json();
            regions["regions"].as_array().is_some_and(|r| {
                r.iter()
                    .any(|t| t["region"] == "eu" && t["forecaster"] == "fc-eu")
            })
        },
    );

    // Crash the EU forecaster, keep serving, bring it back on the same address and database.
    fc_eu.proc.signal("KILL");
    fc_eu.proc.wait_exit(Duration::from_secs(10));
    eu_batch += send(&eu1, "/batch/a", 4, 3) + send(&eu2, "/batch/d", 2, 2);
    eu_interactive += send(&eu2, "/api/d", 3, 3);
    std::thread::sleep(Duration::from_millis(1500));
    let quic = fc_eu.quic;
    fc_eu.restart();
    assert_eq!(fc_eu.quic, quic);
    wait_until("series after the restart", Duration::from_secs(60), || {
        fc_eu.stored("batch") >= eu_batch && fc_eu.stored("interactive") >= eu_interactive
    });
    // Settled: nothing more arrives, nothing was counted twice.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(fc_eu.stored("batch"), eu_batch);
    assert_eq!(fc_eu.stored("interactive"), eu_interactive);
    wait_until("US series", Duration::from_secs(30), || {
        fc_us.stored("batch") == us_batch && fc_us.stored("interactive") == us_interactive
    });
    assert_eq!(
        fc_us.stored("batch"),
        us_batch,
        "the US forecaster holds only US traffic"
    );

    let nodes = get(fc_eu.admin, "/api/v1/nodes", &[]).json();
    let names: Vec<&str> = nodes["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .filter_map(|n| n["node"].as_str())
        .collect();
    assert_eq!(names, ["p-eu-1", "p-eu-2"], "{nodes}");

    // A proxy whose certificate comes from another CA is refused.
    let rogue = start_proxy_node(
        &paths,
        &rogue_certs,
        "p-rogue",
        "eu",
        backend,
        &fc_eu,
        "fc-eu",
    );
    send(&rogue, "/batch/rogue", 2, 2);
    wait_until("a refused handshake", Duration::from_secs(20), || {
        fc_eu.metric("prescale_forecaster_handshake_failures_total") >= 1.0
    });
    assert_eq!(
        fc_eu.stored("batch"),
        eu_batch,
        "nothing from the rogue proxy is stored"
    );
    let rogue_metrics = get(rogue.admin, "/metrics", &[]).text();
    assert!(
        metric_sum(&rogue_metrics, "prescale_export_acked_total", &[]) == 0.0,
        "{rogue_metrics}"
    );
}
