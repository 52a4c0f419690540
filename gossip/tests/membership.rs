//! Membership over real QUIC datagrams on loopback: members discover each other through one
//! seed, forecasters exchange region totals, a crashed proxy is reported silent, and a peer with
//! a certificate from another CA never becomes a member.

use std::time::Duration;

use prescale_gossip::membership::{Membership, MembershipConfig, RegionTotals, Role};
use prescale_gossip::DevCa;

fn fast(mut c: MembershipConfig) -> MembershipConfig {
    c.swim.probe_period = Duration::from_millis(200);
    c.swim.probe_rtt = Duration::from_millis(100);
    c.swim.suspect_to_down_after = Duration::from_millis(800);
    c.swim.periodic_gossip = Some(foca::PeriodicParams {
        frequency: Duration::from_millis(100),
        num_members: 3.try_into().unwrap(),
    });
    c.swim.periodic_announce = Some(foca::PeriodicParams {
        frequency: Duration::from_millis(500),
        num_members: 1.try_into().unwrap(),
    });
    c
}

fn member(ca: &DevCa, name: &str, role: Role, region: &str) -> Membership {
    let cfg = MembershipConfig::new(
        name,
        role,
        region,
        "127.0.0.1:0".parse().unwrap(),
        ca.identity(name).unwrap(),
    );
    Membership::start(fast(cfg)).unwrap()
}

async fn wait_for(secs: u64, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while tokio::time::Instant::now() < deadline {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cond()
}

fn names(ids: Vec<prescale_gossip::MemberId>) -> Vec<String> {
    ids.into_iter().map(|m| m.name).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_discover_exchange_totals_and_detect_silence() {
    let ca = DevCa::generate().unwrap();
    let fc_eu = member(&ca, "fc-eu", Role::Forecaster, "eu");
    let fc_us = member(&ca, "fc-us", Role::Forecaster, "us");
    let px_eu = member(&ca, "proxy-eu-1", Role::Proxy, "eu");
    let px_us = member(&ca, "proxy-us-1", Role::Proxy, "us");
    let seed = fc_eu.local_addr().unwrap();
    for m in [&fc_us, &px_eu, &px_us] {
        m.join("fc-eu", seed).unwrap();
    }
    let all = [&fc_eu, &fc_us, &px_eu, &px_us];
    assert!(
        wait_for(20, || all.iter().all(|m| m.alive(None).len() == 3)).await,
        "views: {:?}",
        all.iter().map(|m| names(m.alive(None))).collect::<Vec<_>>()
    );
    assert_eq!(
        names(fc_us.alive(Some(Role::Proxy))),
        vec!["proxy-eu-1", "proxy-us-1"]
    );
    assert_eq!(fc_eu.alive(Some(Role::Forecaster))[0].region, "us");

    // Each forecaster publishes its region's totals; every member learns both.
    let totals = |region: &str, n: u64| RegionTotals {
        region: region.into(),
        forecaster: format!("fc-{region}"),
        version: 1,
        period_start_ms: 1_700_000_000_000,
        requests: vec![("interactive".to_string(), n), ("batch".to_string(), n * 2)],
        proxies: 1,
    };
    fc_eu.publish_totals(totals("eu", 100)).unwrap();
    fc_us.publish_totals(totals("us", 7)).unwrap();
    assert!(
        wait_for(20, || all.iter().all(|m| m.region_totals().len() == 2)).await,
        "{:?}",
        all.iter()
            .map(|m| m.region_totals().len())
            .collect::<Vec<_>>()
    );
    assert_eq!(fc_us.region_totals()[0], totals("eu", 100));
    // A newer version replaces the old one everywhere; an older one is ignored.
    let mut newer = totals("eu", 500);
    newer.version = 2;
    fc_eu.publish_totals(newer.clone()).unwrap();
    assert!(wait_for(20, || fc_us.region_totals()[0] == newer).await);
    fc_eu.publish_totals(totals("eu", 1)).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(fc_us.region_totals()[0], newer);

    // A proxy crashes: both forecasters report it silent, and only it.
    px_us.stop().await;
    let silent = |f: &Membership| names(f.silent_proxies().into_iter().map(|m| m.id).collect());
    assert!(
        wait_for(20, || [&fc_eu, &fc_us]
            .iter()
            .all(|f| silent(f) == vec!["proxy-us-1"]
                && names(f.alive(Some(Role::Proxy))) == vec!["proxy-eu-1"]))
        .await,
        "{:?}",
        fc_eu.members()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_from_another_ca_cannot_join() {
    let ca = DevCa::generate().unwrap();
    let other = DevCa::generate().unwrap();
    let fc = member(&ca, "fc-eu", Role::Forecaster, "eu");
    let good = member(&ca, "proxy-eu-1", Role::Proxy, "eu");
    let rogue = member(&other, "proxy-rogue", Role::Proxy, "eu");
    let seed = fc.local_addr().unwrap();
    good.join("fc-eu", seed).unwrap();
    rogue.join("fc-eu", seed).unwrap();
    assert!(wait_for(20, || names(fc.alive(None)) == vec!["proxy-eu-1"]).await);
    // Give the rogue the same time again to get in; it must never be known, in any state.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        fc.members().iter().all(|m| m.id.name != "proxy-rogue"),
        "{:?}",
        fc.members()
    );
    assert!(good.members().iter().all(|m| m.id.name != "proxy-rogue"));
    assert!(rogue.members().is_empty());
    assert_eq!(fc.stats().bad_packets, 0);
}
