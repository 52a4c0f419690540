//! End-to-end: three proxies in two regions ship sketches over QUIC (mutual TLS) to two
//! forecasters; the stored minute series add up to exactly the requests served, also across a
//! forecaster SIGKILL and restart (after which it rejoins the membership promptly) and across a
//! cut of a proxy's path to its forecaster; a proxy with a certificate from another CA is
//! refused.

mod common;

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::*;

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
    forecaster: SocketAddr,
    forecaster_name: &str,
) -> ProxyNode {
    let proxy = loopback();
    let admin = loopback();
    let text = format!(
        "{}\n[proxy]\nlisten = \"{proxy}\"\nthreads = 1\n\n[admin]\nlisten = \"{admin}\"\n\n[export]\nforecaster = \"{}\"\nforecaster_name = \"{forecaster_name}\"\ninterval_secs = 1\nspool_dir = \"{}\"\n",
        common_sections(node, region, backend, certs, (paths.seed, paths.us_seed)),
        forecaster,
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
    // NAME:ROLE:REGION: membership takes only the role and region a certificate binds.
    write_certs(
        &paths.certs,
        &[
            "fc-eu:forecaster:eu",
            "fc-us:forecaster:us",
            "p-eu-1:proxy:eu",
            "p-eu-2:proxy:eu",
            "p-us-1:proxy:us",
        ],
    );
    let rogue_certs = dir.path().join("rogue-certs");
    write_certs(&rogue_certs, &["p-rogue:proxy:eu"]);
    let (_backend, backend) = start_backend("web", None, &[]);

    let mut fc_eu = start_forecaster(&paths, "fc-eu", "eu", backend, None);
    let fc_us = start_forecaster(&paths, "fc-us", "us", backend, None);
    let eu1 = start_proxy_node(
        &paths,
        &paths.certs,
        "p-eu-1",
        "eu",
        backend,
        fc_eu.quic,
        "fc-eu",
    );
    let eu2 = start_proxy_node(
        &paths,
        &paths.certs,
        "p-eu-2",
        "eu",
        backend,
        fc_eu.quic,
        "fc-eu",
    );
    let us1 = start_proxy_node(
        &paths,
        &paths.certs,
        "p-us-1",
        "us",
        backend,
        fc_us.quic,
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
    assert!(fc_us.metric("prescale_membership_alive_members") >= 4.0);
    assert!(fc_us.metric("prescale_membership_packets_in_total") > 0.0);
    assert_eq!(
        fc_us.metric("prescale_membership_wrong_identity_total"),
        0.0
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
    // The restarted forecaster is back in the membership (it sees every other member, so their
    // answers reach it) long before the 30 s idle timeout of the connections to the dead process.
    let restarted = Instant::now();
    wait_until(
        "the restarted forecaster to see the other members",
        Duration::from_secs(15),
        || alive_members(fc_eu.admin) >= 4,
    );
    eprintln!(
        "restarted forecaster saw all members alive {:?} after it was ready",
        restarted.elapsed()
    );
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
        fc_eu.quic,
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

/// A UDP relay on loopback (port chosen at run time) between QUIC clients and one server, that
/// can be cut (every datagram dropped, both ways) and healed. Each client address gets its own
/// upstream socket, so the server sees one peer per client, as through a NAT.
struct UdpRelay {
    addr: SocketAddr,
    state: Arc<RelayState>,
    threads: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

#[derive(Default)]
struct RelayState {
    cut: AtomicBool,
    stop: AtomicBool,
    forwarded: AtomicU64,
    dropped: AtomicU64,
}

impl RelayState {
    /// Whether a datagram may pass now (and count it either way).
    fn pass(&self) -> bool {
        if self.cut.load(Ordering::SeqCst) {
            self.dropped.fetch_add(1, Ordering::SeqCst);
            false
        } else {
            self.forwarded.fetch_add(1, Ordering::SeqCst);
            true
        }
    }
}

impl UdpRelay {
    fn start(server: SocketAddr) -> Self {
        let listen = UdpSocket::bind("127.0.0.1:0").expect("relay bind");
        listen
            .set_read_timeout(Some(Duration::from_millis(50)))
            .expect("timeout");
        let addr = listen.local_addr().expect("relay addr");
        let state = Arc::new(RelayState::default());
        let threads = Arc::new(Mutex::new(Vec::new()));
        let main = {
            let state = Arc::clone(&state);
            let threads = Arc::clone(&threads);
            std::thread::spawn(move || {
                let mut upstreams: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
                let mut buf = vec![0u8; 65_536];
                while !state.stop.load(Ordering::SeqCst) {
                    let Ok((n, client)) = listen.recv_from(&mut buf) else {
                        continue;
                    };
                    let upstream = upstreams.entry(client).or_insert_with(|| {
                        let up = UdpSocket::bind("127.0.0.1:0").expect("upstream bind");
                        up.connect(server).expect("upstream connect");
                        up.set_read_timeout(Some(Duration::from_millis(50)))
                            .expect("timeout");
                        let up = Arc::new(up);
                        let back = listen.try_clone().expect("clone relay socket");
                        let (state, up2) = (Arc::clone(&state), Arc::clone(&up));
                        let thread = std::thread::spawn(move || {
                            let mut buf = vec![0u8; 65_536];
                            while !state.stop.load(Ordering::SeqCst) {
                                // Errors (e.g. ICMP refusals while the server is down) are
                                // what a lossy path does: drop and go on.
                                if let Ok(n) = up2.recv(&mut buf) {
                                    if state.pass() {
                                        let _ = back.send_to(&buf[..n], client);
                                    }
                                }
                            }
                        });
                        threads.lock().expect("threads").push(thread);
                        up
                    });
                    if state.pass() {
                        let _ = upstream.send(&buf[..n]);
                    }
                }
            })
        };
        threads.lock().expect("threads").push(main);
        Self {
            addr,
            state,
            threads,
        }
    }

    fn cut(&self) {
        self.state.cut.store(true, Ordering::SeqCst);
    }

    fn heal(&self) {
        self.state.cut.store(false, Ordering::SeqCst);
    }

    fn forwarded(&self) -> u64 {
        self.state.forwarded.load(Ordering::SeqCst)
    }

    fn dropped(&self) -> u64 {
        self.state.dropped.load(Ordering::SeqCst)
    }
}

impl Drop for UdpRelay {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        // The main thread may still add an upstream thread while it notices the stop.
        loop {
            let Some(thread) = self.threads.lock().expect("threads").pop() else {
                break;
            };
            let _ = thread.join();
        }
    }
}

#[test]
fn a_cut_proxy_path_heals_without_loss_or_duplicates() {
    let dir = tempfile::tempdir().expect("tempdir");
    let paths = Paths {
        certs: dir.path().join("certs"),
        root: dir.path().to_path_buf(),
        seed: format!("127.0.0.1:{}", udp_port()).parse().expect("addr"),
        us_seed: format!("127.0.0.1:{}", udp_port()).parse().expect("addr"),
    };
    write_certs(&paths.certs, &["fc-eu:forecaster:eu", "p-eu-1:proxy:eu"]);
    let (_backend, backend) = start_backend("web", None, &[]);
    let fc_eu = start_forecaster(&paths, "fc-eu", "eu", backend, None);
    // The proxy reaches its forecaster's QUIC listener only through the relay.
    let relay = UdpRelay::start(fc_eu.quic);
    let proxy = start_proxy_node(
        &paths,
        &paths.certs,
        "p-eu-1",
        "eu",
        backend,
        relay.addr,
        "fc-eu",
    );
    let proxy_metric =
        |name: &str| metric_sum(&get(proxy.admin, "/metrics", &[]).text(), name, &[]);

    let mut batch = send(&proxy, "/batch/a", 3, 4);
    let mut interactive = send(&proxy, "/api/a", 4, 2);
    wait_until("series before the cut", Duration::from_secs(30), || {
        fc_eu.stored("batch") == batch && fc_eu.stored("interactive") == interactive
    });
    assert!(
        relay.forwarded() > 0,
        "the sketches did not go through the relay"
    );

    // Cut: the proxy keeps serving, and its sketches pile up in the spool.
    relay.cut();
    let acked = proxy_metric("prescale_export_acked_total");
    let failures = proxy_metric("prescale_export_send_failures_total");
    let cut_at = Instant::now();
    let mut rounds = 0;
    // Until the sender has given up on its connection and failed to make a new one (the
    // default ack and connect timeout is 10 s), keep sending a little every second.
    while proxy_metric("prescale_export_send_failures_total") < failures + 2.0 {
        assert!(
            cut_at.elapsed() < Duration::from_secs(60),
            "the sender did not notice the cut: {}",
            get(proxy.admin, "/metrics", &[]).text()
        );
        batch += send(&proxy, &format!("/batch/cut-{rounds}"), 2, 2);
        interactive += send(&proxy, &format!("/api/cut-{rounds}"), 1, 3);
        rounds += 1;
        std::thread::sleep(Duration::from_secs(1));
    }
    batch += send(&proxy, "/batch/late", 2, 3);
    wait_until(
        "sketches spooled during the cut",
        Duration::from_secs(10),
        || proxy_metric("prescale_export_spooled") >= 3.0,
    );
    assert_eq!(proxy_metric("prescale_export_acked_total"), acked);
    assert!(fc_eu.stored("batch") < batch);
    assert!(relay.dropped() > 0);
    eprintln!(
        "cut for {:?}: {} datagrams dropped, {} sketches spooled",
        cut_at.elapsed(),
        relay.dropped(),
        proxy_metric("prescale_export_spooled")
    );

    // Heal: every spooled sketch arrives, each counted once.
    relay.heal();
    let healed = Instant::now();
    wait_until("series after healing", Duration::from_secs(60), || {
        fc_eu.stored("batch") >= batch && fc_eu.stored("interactive") >= interactive
    });
    eprintln!("delivered {:?} after healing", healed.elapsed());
    wait_until("the spool to drain", Duration::from_secs(10), || {
        proxy_metric("prescale_export_spooled") == 0.0
    });
    // Settled: nothing more arrives, nothing was counted twice.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(fc_eu.stored("batch"), batch);
    assert_eq!(fc_eu.stored("interactive"), interactive);
    assert_eq!(proxy_metric("prescale_export_dropped_total"), 0.0);
}

/// A proxy that ships its sketches to another region's forecaster is refused for good: each of
/// its sketches is answered with the reason and leaves its spool (not resent ahead of every
/// later one), the forecaster stores none of them, and the region's own proxy is unaffected.
#[test]
fn a_proxy_of_another_region_is_refused_and_never_stuck() {
    let dir = tempfile::tempdir().expect("tempdir");
    let paths = Paths {
        certs: dir.path().join("certs"),
        root: dir.path().to_path_buf(),
        seed: format!("127.0.0.1:{}", udp_port()).parse().expect("addr"),
        us_seed: format!("127.0.0.1:{}", udp_port()).parse().expect("addr"),
    };
    write_certs(
        &paths.certs,
        &["fc-eu:forecaster:eu", "p-eu-1:proxy:eu", "p-us-1:proxy:us"],
    );
    let (_backend, backend) = start_backend("web", None, &[]);
    let fc_eu = start_forecaster(&paths, "fc-eu", "eu", backend, None);
    let astray = start_proxy_node(
        &paths,
        &paths.certs,
        "p-us-1",
        "us",
        backend,
        fc_eu.quic,
        "fc-eu",
    );
    let own = start_proxy_node(
        &paths,
        &paths.certs,
        "p-eu-1",
        "eu",
        backend,
        fc_eu.quic,
        "fc-eu",
    );
    let sent_astray = send(&astray, "/api/astray", 3, 4);
    let sent_own = send(&own, "/batch/own", 2, 5);
    let astray_metric =
        |name: &str| metric_sum(&get(astray.admin, "/metrics", &[]).text(), name, &[]);
    let refused = |fc: &Forecaster| {
        metric_sum(
            &get(fc.admin, "/metrics", &[]).text(),
            "prescale_forecaster_sketches_refused_total",
            &[("reason", "wrong_region")],
        )
    };
    wait_until(
        "the astray proxy's sketches refused and its own region's stored",
        Duration::from_secs(30),
        || {
            refused(&fc_eu) >= 3.0
                && astray_metric("prescale_export_refused_total") >= 3.0
                && fc_eu.stored("batch") == sent_own
        },
    );
    assert!(sent_astray > 0);
    assert_eq!(fc_eu.stored("interactive"), 0, "no astray request stored");
    // Sketches keep leaving the astray proxy's spool: it never holds more than the one in
    // flight, and nothing was dropped or taken for corrupt.
    assert!(astray_metric("prescale_export_spooled") <= 1.0);
    assert_eq!(astray_metric("prescale_export_dropped_total"), 0.0);
    assert_eq!(astray_metric("prescale_export_corrupt_total"), 0.0);
    assert_eq!(fc_eu.metric("prescale_forecaster_sink_errors_total"), 0.0);
    let log = std::fs::read_to_string(&fc_eu.log).expect("forecaster log");
    assert!(
        log.contains("this forecaster stores region `eu`"),
        "the forecaster's log names the mismatch"
    );
}
