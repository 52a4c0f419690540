use std::collections::HashSet;

use prescale_gossip::{FleetPlan, PlanUpdate};

use super::*;
use crate::dataplane::DataPlane;
use crate::plan::PlanStamp;

/// A fleet config: static with `backends`, or provisioned (no backends) when `provisioned`.
fn fleet_config(load_balancing: &str, backends: &[String], provisioned: bool) -> FleetConfig {
    let mut config = serde_json::json!({
        "name": "web",
        "region": "eu",
        "backends": backends,
        "load_balancing": load_balancing,
        "retries": 10,
    });
    if provisioned {
        config["provisioner"] = serde_json::json!({
            "kind": "process",
            "command": ["prescale", "backend", "--listen", "{host}:{port}"],
        });
    }
    serde_json::from_value(config).expect("valid fleet config")
}

fn provisioned(load_balancing: &str) -> Fleet {
    Fleet::new(&fleet_config(load_balancing, &[], true), 2).expect("fleet")
}

fn addresses(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("10.0.{}.{}:8080", i / 200, i % 200 + 1))
        .collect()
}

fn planned(address: &str, phase: BackendPhase, since_ms: u64) -> PlannedBackend {
    PlannedBackend {
        address: address.to_string(),
        phase,
        since_ms,
    }
}

fn state_of(fleet: &Fleet, address: &str) -> Arc<BackendState> {
    let addr: SocketAddr = address.parse().expect("address");
    Arc::clone(fleet.backends().get(&addr).expect("backend in the set"))
}

/// Every backend `select` returns over `rounds` fresh requests (user keys 0..rounds).
fn chosen(fleet: &Fleet, rounds: u64) -> HashSet<SocketAddr> {
    (0..rounds)
        .filter_map(|user| fleet.select(user, &Tried::new()))
        .map(|b| b.addr)
        .collect()
}

#[test]
fn the_tried_list_holds_as_many_backends_as_a_request_may_try() {
    let mut tried = Tried::new();
    assert!(tried.is_empty());
    for id in 1..=MAX_ATTEMPTS as u64 {
        assert!(tried.insert(id));
        assert!(tried.insert(id), "inserting twice is no second entry");
    }
    assert_eq!(tried.len(), MAX_ATTEMPTS);
    assert!(tried.is_full());
    assert!(!tried.insert(99), "full: no room for another attempt");
    assert!((1..=MAX_ATTEMPTS as u64).all(|id| tried.contains(id)));
    assert!(!tried.contains(99));
}

#[test]
fn applying_a_plan_adds_keeps_and_removes_backends() {
    let fleet = provisioned("round_robin");
    assert!(fleet.backends().is_empty());
    assert!(fleet.select(1, &Tried::new()).is_none());

    let [a, b, c] = ["10.1.0.1:80", "10.1.0.2:80", "10.1.0.3:80"];
    let change = fleet
        .apply_backends(&[
            planned(a, BackendPhase::Ready, 1_000),
            planned(b, BackendPhase::Ready, 1_000),
        ])
        .expect("applied");
    assert_eq!(
        change,
        SetChange {
            added: 2,
            kept: 0,
            removed: 0
        }
    );
    let kept = state_of(&fleet, a);
    let dropped = state_of(&fleet, b);
    // History on `a`: a request, a failure, an ejection.
    drop(Arc::clone(&kept).begin());
    for _ in 0..fleet.config().eject_after_failures {
        fleet.record(&kept, Attempt::Failed);
    }
    assert!(fleet.is_ejected(&kept));

    let change = fleet
        .apply_backends(&[
            planned(a, BackendPhase::Draining, 2_000),
            planned(c, BackendPhase::Warming, 2_000),
        ])
        .expect("applied");
    assert_eq!(
        change,
        SetChange {
            added: 1,
            kept: 1,
            removed: 1
        }
    );
    let set = fleet.backends();
    let listed: Vec<String> = set.backends().iter().map(|s| s.addr.to_string()).collect();
    assert_eq!(listed, [a, c]);
    let after = state_of(&fleet, a);
    assert!(Arc::ptr_eq(&kept, &after), "the same state object is kept");
    assert_eq!(after.id(), kept.id());
    assert_eq!(after.requests.load(Ordering::Relaxed), 1);
    assert_eq!(
        after.failures.load(Ordering::Relaxed),
        u64::from(fleet.config().eject_after_failures)
    );
    assert!(fleet.is_ejected(&after), "ejection survives the swap");
    assert_eq!(after.phase(), BackendPhase::Draining);
    assert_eq!(after.since_ms(), 2_000);
    assert_eq!(after.ready_since_ms(), Some(1_000));
    let new = state_of(&fleet, c);
    assert_eq!(new.phase(), BackendPhase::Warming);
    assert_eq!(new.ready_since_ms(), None);
    assert!(new.is_healthy(), "a new backend starts healthy");
    assert!(set.get(&b.parse().expect("address")).is_none());
    // Only this test holds the removed one now: with it go its idle connections.
    assert_eq!(Arc::strong_count(&dropped), 1);

    let status = fleet.status();
    assert!(status.provisioned);
    assert_eq!(status.backends[0].state, "draining");
    assert_eq!(status.backends[0].state_since_ms, 2_000);
    assert_eq!(status.backends[0].ready_since_ms, Some(1_000));
    assert!(status.backends[0].ejected);
    assert_eq!(status.backends[1].state, "warming");
    assert_eq!(status.backends[1].ready_since_ms, None);

    // An unusable list changes nothing.
    for bad in [
        vec![planned("not an address", BackendPhase::Ready, 3_000)],
        vec![
            planned(c, BackendPhase::Ready, 3_000),
            planned(c, BackendPhase::Ready, 3_000),
        ],
    ] {
        assert!(fleet.apply_backends(&bad).is_err());
        assert!(Arc::ptr_eq(&set, &fleet.backends()));
        assert_eq!(new.phase(), BackendPhase::Warming);
    }
}

#[test]
fn warming_and_draining_backends_are_never_selected() {
    for load_balancing in ["round_robin", "consistent_hash"] {
        let fleet = provisioned(load_balancing);
        let [warming, ready, draining] = ["10.2.0.1:80", "10.2.0.2:80", "10.2.0.3:80"];
        fleet
            .apply_backends(&[
                planned(warming, BackendPhase::Warming, 1),
                planned(ready, BackendPhase::Ready, 1),
                planned(draining, BackendPhase::Draining, 1),
            ])
            .expect("applied");
        let only_ready: HashSet<SocketAddr> = [ready.parse().expect("address")].into();
        assert_eq!(chosen(&fleet, 500), only_ready, "{load_balancing}");
        assert_eq!(fleet.available(), 1);

        // Once the ready one is tried, nothing is left (the others are not fallbacks).
        let mut tried = Tried::new();
        tried.insert(state_of(&fleet, ready).id());
        assert!(fleet.select(7, &tried).is_none(), "{load_balancing}");

        // The ready one drains: nothing is selectable and the fleet has no available backend.
        fleet
            .apply_backends(&[
                planned(warming, BackendPhase::Ready, 2),
                planned(ready, BackendPhase::Draining, 2),
            ])
            .expect("applied");
        let now_ready: HashSet<SocketAddr> = [warming.parse().expect("address")].into();
        assert_eq!(chosen(&fleet, 500), now_ready, "{load_balancing}");
        fleet
            .apply_backends(&[planned(warming, BackendPhase::Draining, 3)])
            .expect("applied");
        assert!(chosen(&fleet, 500).is_empty(), "{load_balancing}");
        assert_eq!(fleet.available(), 0);
    }
}

#[test]
fn a_backend_draining_in_a_set_still_loaded_is_not_selected() {
    let fleet = provisioned("round_robin");
    let address = "10.3.0.1:80";
    fleet
        .apply_backends(&[planned(address, BackendPhase::Ready, 1)])
        .expect("applied");
    // A request that loaded the old set just before the swap still sees the phase change.
    let old = fleet.backends();
    fleet
        .apply_backends(&[planned(address, BackendPhase::Draining, 2)])
        .expect("applied");
    let key = 1u64.to_le_bytes();
    let Selection::RoundRobin(selection) = &old.selection else {
        panic!("round robin");
    };
    assert!(old
        .pick(selection.iter(&key), &Tried::new(), 1, 0)
        .is_none());
}

#[test]
fn an_in_flight_guard_taken_before_a_swap_counts_down_after_it() {
    let fleet = provisioned("round_robin");
    let [a, b] = ["10.4.0.1:80", "10.4.0.2:80"];
    fleet
        .apply_backends(&[planned(a, BackendPhase::Ready, 1)])
        .expect("applied");
    let backend = fleet.select(1, &Tried::new()).expect("a backend");
    let guard = backend.begin();
    let state = Arc::clone(guard.backend());
    assert_eq!(fleet.in_flight(), 1);
    assert_eq!(state.in_flight.load(Ordering::Relaxed), 1);

    // The backend drains, then leaves the set, while the request is in flight.
    fleet
        .apply_backends(&[
            planned(a, BackendPhase::Draining, 2),
            planned(b, BackendPhase::Ready, 2),
        ])
        .expect("applied");
    assert_eq!(state_of(&fleet, a).in_flight.load(Ordering::Relaxed), 1);
    fleet
        .apply_backends(&[planned(b, BackendPhase::Ready, 3)])
        .expect("applied");
    assert_eq!(fleet.in_flight(), 1);
    assert_eq!(fleet.status().in_flight, 1);

    drop(guard);
    assert_eq!(fleet.in_flight(), 0);
    assert_eq!(state.in_flight.load(Ordering::Relaxed), 0);
    assert_eq!(state.requests.load(Ordering::Relaxed), 1);
    assert_eq!(
        Arc::strong_count(&state),
        1,
        "the removed backend is gone with the last request on it"
    );
}

#[test]
fn with_100_backends_retries_never_repeat_and_every_backend_is_reachable() {
    let all = addresses(100);
    for load_balancing in ["round_robin", "consistent_hash"] {
        let static_fleet =
            Fleet::new(&fleet_config(load_balancing, &all, false), 2).expect("fleet");
        let planned_fleet = provisioned(load_balancing);
        planned_fleet
            .apply_backends(
                &all.iter()
                    .map(|a| planned(a, BackendPhase::Ready, 1))
                    .collect::<Vec<_>>(),
            )
            .expect("applied");
        for fleet in [&static_fleet, &planned_fleet] {
            assert_eq!(fleet.available(), 100);
            // Every backend is some request's first choice.
            assert_eq!(chosen(fleet, 20_000).len(), 100, "{load_balancing}");
            // A request's attempts go to as many different backends as it may make.
            let mut reached = HashSet::new();
            for user in 0..200u64 {
                let mut tried = Tried::new();
                let mut this_request = HashSet::new();
                while !tried.is_full() {
                    let backend = fleet
                        .select(user, &tried)
                        .unwrap_or_else(|| panic!("{load_balancing}: a backend is left"));
                    assert!(
                        this_request.insert(backend.id()),
                        "{load_balancing}: backend {} tried twice",
                        backend.addr
                    );
                    assert!(!tried.contains(backend.id()));
                    tried.insert(backend.id());
                    reached.insert(backend.addr);
                }
                assert_eq!(this_request.len(), MAX_ATTEMPTS);
            }
            assert_eq!(
                reached.len(),
                100,
                "{load_balancing}: retries reach every backend"
            );
        }
    }
}

#[test]
fn consistent_hashing_keeps_users_on_their_backend_across_plans() {
    let fleet = provisioned("consistent_hash");
    let all = addresses(11);
    let (serving, newcomer) = all.split_at(10);
    let mut plan: Vec<PlannedBackend> = serving
        .iter()
        .map(|a| planned(a, BackendPhase::Ready, 1))
        .collect();
    fleet.apply_backends(&plan).expect("applied");
    let first: Vec<SocketAddr> = (0..100)
        .map(|u| fleet.select(u, &Tried::new()).expect("backend").addr)
        .collect();
    let set = fleet.backends();

    // The same plan again: the same set, ring and all.
    fleet.apply_backends(&plan).expect("applied");
    assert!(Arc::ptr_eq(&set, &fleet.backends()));

    // A warming newcomer makes a new set and ring, without moving any user.
    plan.push(planned(&newcomer[0], BackendPhase::Warming, 2));
    let change = fleet.apply_backends(&plan).expect("applied");
    assert_eq!(change.added, 1);
    assert!(!Arc::ptr_eq(&set, &fleet.backends()));
    for (user, addr) in first.iter().enumerate() {
        let again = fleet.select(user as u64, &Tried::new()).expect("backend");
        assert_eq!(again.addr, *addr);
    }
}

#[test]
fn passive_failures_eject_and_successes_reset_the_count() {
    let all = addresses(2);
    let fleet = Fleet::new(&fleet_config("round_robin", &all, false), 1).expect("fleet");
    let first = state_of(&fleet, &all[0]);
    for _ in 1..fleet.config().eject_after_failures {
        fleet.record(&first, Attempt::Failed);
    }
    fleet.record(&first, Attempt::Succeeded);
    fleet.record(&first, Attempt::Failed);
    assert!(!fleet.is_ejected(&first));
    for _ in 1..fleet.config().eject_after_failures {
        fleet.record(&first, Attempt::Failed);
    }
    assert!(fleet.is_ejected(&first));
    let others: HashSet<SocketAddr> = [all[1].parse().expect("address")].into();
    assert_eq!(chosen(&fleet, 50), others);
    assert_eq!(fleet.available(), 1);
}

#[test]
fn health_verdicts_flip_after_their_thresholds() {
    let fleet = Fleet::new(&fleet_config("round_robin", &addresses(1), false), 1).expect("fleet");
    let backend = state_of(&fleet, &addresses(1)[0]);
    assert!(backend.is_healthy(), "starts healthy");
    // Unhealthy after 3 consecutive failures; a pass in between restarts the count.
    assert_eq!(backend.observe_check(false, 2, 3), None);
    assert_eq!(backend.observe_check(false, 2, 3), None);
    assert_eq!(backend.observe_check(true, 2, 3), None);
    assert_eq!(backend.observe_check(false, 2, 3), None);
    assert_eq!(backend.observe_check(false, 2, 3), None);
    assert_eq!(backend.observe_check(false, 2, 3), Some(false));
    assert!(!backend.is_healthy());
    assert!(fleet.select(1, &Tried::new()).is_none());
    assert_eq!(fleet.available(), 0);
    // Healthy again after 2 consecutive passes.
    assert_eq!(backend.observe_check(true, 2, 3), None);
    assert_eq!(backend.observe_check(false, 2, 3), None);
    assert_eq!(backend.observe_check(true, 2, 3), None);
    assert_eq!(backend.observe_check(true, 2, 3), Some(true));
    assert!(fleet.select(1, &Tried::new()).is_some());
}

/// A backend that answers every request with `200 OK` (one request per connection).
async fn healthy_backend() -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let _ = stream.read(&mut buf).await;
                let _ = stream
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                    )
                    .await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_checks_take_a_dead_backend_out_after_the_threshold() {
    let live = healthy_backend().await;
    // A port with nothing listening.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port");
    let mut config = fleet_config("round_robin", &[live.to_string(), dead.to_string()], false);
    config.health_check.unhealthy_threshold = 2;
    config.health_check.timeout_ms = 2_000;
    let fleet = Fleet::new(&config, 1).expect("fleet");
    assert_eq!(fleet.available(), 2, "backends start healthy");
    fleet.check_health().await;
    assert_eq!(fleet.available(), 2, "one failure is below the threshold");
    fleet.check_health().await;
    assert_eq!(fleet.available(), 1);
    assert!(state_of(&fleet, &live.to_string()).is_healthy());
    assert!(!state_of(&fleet, &dead.to_string()).is_healthy());
    let only_live: HashSet<SocketAddr> = [live].into();
    assert_eq!(chosen(&fleet, 20), only_live);
}

#[test]
fn a_static_fleet_keeps_its_backends_whatever_a_plan_says() {
    let all = addresses(2);
    let fleet = Fleet::new(&fleet_config("round_robin", &all, false), 1).expect("fleet");
    assert!(!fleet.is_provisioned());
    let before = fleet.backends();
    assert!(before
        .backends()
        .iter()
        .all(|b| b.phase() == BackendPhase::Ready && b.ready_since_ms().is_some()));
    let plan = [planned("10.9.0.1:80", BackendPhase::Ready, 5)];
    assert_eq!(
        fleet.apply_plan(Some(&plan), 3),
        FleetOutcome::Static {
            ignored_backends: true
        }
    );
    assert!(matches!(
        fleet.apply_backends(&plan),
        Err(PlanError::StaticFleet { .. })
    ));
    assert!(Arc::ptr_eq(&before, &fleet.backends()));
    assert_eq!(fleet.plan_version(), Some(3));
    assert_eq!(fleet.available(), 2);
}

fn plane() -> DataPlane {
    let config = prescale_config::parse_str(
        r#"
        [node]
        region = "eu"
        [identity]
        secret = "0123456789abcdef0123"
        [[regions]]
        name = "eu"
        countries = ["GB"]
        default_fleet = "web"
        [[regions]]
        name = "us"
        countries = ["US"]
        [[fleets]]
        name = "web"
        region = "eu"
        [fleets.provisioner]
        kind = "process"
        command = ["prescale", "backend", "--listen", "{host}:{port}"]
        [[fleets]]
        name = "static"
        region = "eu"
        backends = ["127.0.0.1:1"]
        "#,
        "test",
    )
    .expect("valid test config");
    DataPlane::new(&config).expect("data plane")
}

fn plan(region: &str, version: u64, backends: Option<Vec<PlannedBackend>>) -> PlanUpdate {
    let part = |fleet: &str, backends: Option<Vec<PlannedBackend>>| FleetPlan {
        fleet: fleet.to_string(),
        tiers: Vec::new(),
        shed_order: Vec::new(),
        reasons: Vec::new(),
        backends,
        grants: Vec::new(),
    };
    PlanUpdate {
        region: region.to_string(),
        version,
        issued_at_ms: version * 1_000,
        fleets: vec![
            part("web", backends.clone()),
            part("static", backends),
            part("gpu", None),
        ],
    }
}

#[test]
fn the_data_plane_applies_only_newer_plans_of_its_region() {
    let plane = plane();
    let web = Arc::clone(plane.fleets.get(plane.fleets.index_of("web").expect("web")));
    let statics = Arc::clone(
        plane
            .fleets
            .get(plane.fleets.index_of("static").expect("static")),
    );
    assert!(plane.applied_plan().is_none());
    assert_eq!(
        web.available(),
        0,
        "a provisioned fleet starts without backends"
    );
    let mut metrics = String::new();
    plane.write_metrics(&mut metrics);
    assert!(metrics.contains("\nprescale_plan_version 0\n"), "{metrics}");

    let two = vec![
        planned("127.0.0.1:9001", BackendPhase::Ready, 10),
        planned("127.0.0.1:9002", BackendPhase::Warming, 10),
    ];
    let applied = plane
        .apply_plan(&plan("eu", 5, Some(two)))
        .expect("applied");
    assert_eq!(applied.version, 5);
    assert_eq!(applied.unknown_fleets, ["gpu"]);
    assert_eq!(applied.fleets.len(), 2);
    assert_eq!(
        applied.fleets[0].outcome,
        FleetOutcome::Replaced(SetChange {
            added: 2,
            kept: 0,
            removed: 0
        })
    );
    assert_eq!(
        applied.fleets[0].phases,
        PhaseCounts {
            ready: 1,
            warming: 1,
            draining: 0
        }
    );
    assert_eq!(
        applied.fleets[1].outcome,
        FleetOutcome::Static {
            ignored_backends: true
        }
    );
    assert!(applied
        .to_string()
        .contains("web: 1 ready, 1 warming, 0 draining"));
    assert_eq!(web.available(), 1);
    assert_eq!(
        statics.backends().len(),
        1,
        "the static fleet ignores plan backends"
    );
    assert_eq!(
        plane.applied_plan(),
        Some(PlanStamp {
            version: 5,
            issued_at_ms: 5_000
        })
    );
    let set = web.backends();

    // Another region's plan, or one not newer, is refused and changes nothing.
    let other = plane.apply_plan(&plan("us", 9, Some(Vec::new())));
    assert_eq!(
        other,
        Err(PlanError::OtherRegion {
            plan: "us".into(),
            node: "eu".into()
        })
    );
    assert!(other.unwrap_err().to_string().contains("`us`"));
    for version in [5, 4] {
        assert_eq!(
            plane.apply_plan(&plan("eu", version, Some(Vec::new()))),
            Err(PlanError::NotNewer {
                version,
                applied: 5
            })
        );
    }
    assert!(Arc::ptr_eq(&set, &web.backends()));
    assert_eq!(plane.applied_plan().map(|p| p.version), Some(5));

    // A newer plan without backends for the fleet keeps its set.
    let applied = plane.apply_plan(&plan("eu", 6, None)).expect("applied");
    assert_eq!(applied.fleets[0].outcome, FleetOutcome::Kept);
    assert!(Arc::ptr_eq(&set, &web.backends()));
    assert_eq!(web.plan_version(), Some(6));

    let mut metrics = String::new();
    plane.write_metrics(&mut metrics);
    for line in [
        "prescale_plan_version 6",
        "prescale_backend_state{fleet=\"web\",backend=\"127.0.0.1:9001\",state=\"ready\"} 1",
        "prescale_backend_state{fleet=\"web\",backend=\"127.0.0.1:9001\",state=\"warming\"} 0",
        "prescale_backend_state{fleet=\"web\",backend=\"127.0.0.1:9002\",state=\"warming\"} 1",
        "prescale_backend_state{fleet=\"static\",backend=\"127.0.0.1:1\",state=\"ready\"} 1",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "{line} not in\n{metrics}"
        );
    }
}
