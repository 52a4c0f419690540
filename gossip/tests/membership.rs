//! Membership over real QUIC datagrams on loopback: members discover each other through one
//! seed, forecasters exchange region totals, a crashed proxy is reported silent, a member killed
//! and restarted on its address is back at once, a peer with a certificate from another CA never
//! becomes a member, and a peer cannot claim a member name its certificate does not carry.

use std::net::SocketAddr;
use std::time::Duration;

use prescale_gossip::membership::{MemberId, Membership, MembershipConfig, RegionTotals, Role};
use prescale_gossip::DevCa;

mod common;

use common::{fast, member, wait_for};

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

/// A member on a runtime of its own, so that it can be killed without a word: shutting the
/// runtime down drops every task (the QUIC drivers included) before any close frame leaves the
/// socket, as with SIGKILL, so the peers' connections to it stay open until their idle timeout.
struct Killable {
    runtime: tokio::runtime::Runtime,
    member: Membership,
}

impl Killable {
    fn start(config: MembershipConfig) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let member = {
            let _guard = runtime.enter();
            Membership::start(fast(config)).unwrap()
        };
        Self { runtime, member }
    }

    async fn kill(self) {
        tokio::task::spawn_blocking(move || {
            let Killable { runtime, member } = self;
            runtime.shutdown_timeout(Duration::from_secs(5));
            drop(member);
        })
        .await
        .unwrap();
    }
}

/// Start a member bound to `bind`, retrying while the port of a member just killed is released.
async fn member_at(
    ca: &DevCa,
    name: &str,
    role: Role,
    region: &str,
    bind: SocketAddr,
) -> Membership {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let cfg = MembershipConfig::new(
            name,
            role,
            region,
            bind,
            ca.member_identity(name, role, region).unwrap(),
        );
        match Membership::start(fast(cfg)) {
            Ok(m) => return m,
            Err(e)
                if tokio::time::Instant::now() < deadline && e.to_string().contains("in use") =>
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("member {name} on {bind}: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_member_restarted_on_its_address_rejoins_promptly() {
    let ca = DevCa::generate().unwrap();
    // The seed everyone joined through is the one that crashes; on restart it joins through the
    // other forecaster, whose only way back to it is the address of the dead process.
    let victim = Killable::start(MembershipConfig::new(
        "fc-eu",
        Role::Forecaster,
        "eu",
        "127.0.0.1:0".parse().unwrap(),
        ca.member_identity("fc-eu", Role::Forecaster, "eu").unwrap(),
    ));
    let addr = victim.member.local_addr().unwrap();
    let old_bump = victim.member.id().bump;
    let fc_us = member(&ca, "fc-us", Role::Forecaster, "us");
    let px = member(&ca, "proxy-eu-1", Role::Proxy, "eu");
    for m in [&fc_us, &px] {
        m.join("fc-eu", addr).unwrap();
    }
    assert!(
        wait_for(20, || [&victim.member, &fc_us, &px]
            .iter()
            .all(|m| m.alive(None).len() == 2))
        .await,
        "views: {:?}",
        [&victim.member, &fc_us, &px]
            .iter()
            .map(|m| names(m.alive(None)))
            .collect::<Vec<_>>()
    );

    victim.kill().await;
    let killed = std::time::Instant::now();
    let restarted = member_at(&ca, "fc-eu", Role::Forecaster, "eu", addr).await;
    assert_ne!(
        restarted.id().bump,
        old_bump,
        "a restart must be a new incarnation"
    );
    restarted
        .join("fc-us", fc_us.local_addr().unwrap())
        .unwrap();
    let new_bump = restarted.id().bump;
    let sees_new = |m: &Membership| {
        m.members()
            .iter()
            .any(|s| s.id.name == "fc-eu" && s.alive && s.id.bump == new_bump)
    };
    // Far below the 30 s QUIC idle timeout after which a connection to the dead process would
    // be given up on by itself.
    let rejoined = wait_for(5, || {
        sees_new(&fc_us) && sees_new(&px) && restarted.alive(None).len() == 2
    })
    .await;
    let took = killed.elapsed();
    eprintln!("restarted member seen alive everywhere after {took:?}");
    assert!(
        rejoined,
        "after {took:?}: fc-us {:?}, proxy {:?}, restarted {:?}",
        fc_us.members(),
        px.members(),
        restarted.members()
    );
}

/// A foca announce from `claimed`, addressed to the member `to` at `to_addr`, as a peer built to
/// lie about its name would send it.
fn announce_from(claimed: &str, addr: SocketAddr, to: &str, to_addr: SocketAddr) -> bytes::Bytes {
    let header = foca::Header {
        src: MemberId {
            name: claimed.to_string(),
            role: Role::Proxy,
            region: "eu".into(),
            addr,
            bump: 1,
        },
        src_incarnation: 0,
        dst: MemberId {
            name: to.to_string(),
            role: Role::Forecaster,
            region: String::new(),
            addr: to_addr,
            bump: 0,
        },
        message: foca::Message::Announce,
    };
    let mut buf = Vec::new();
    foca::Codec::encode_header(&mut foca::PostcardCodec, &header, &mut buf).unwrap();
    buf.into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_cannot_claim_another_members_name() {
    let ca = DevCa::generate().unwrap();
    // This build refuses to start a member under a name its own certificate does not carry.
    let err = Membership::start(MembershipConfig::new(
        "proxy-b",
        Role::Proxy,
        "eu",
        "127.0.0.1:0".parse().unwrap(),
        ca.member_identity("proxy-a", Role::Proxy, "eu").unwrap(),
    ))
    .err()
    .expect("a member started under another node's name");
    assert!(err.to_string().contains("\"proxy-b\""), "{err}");

    // A peer with a valid certificate for proxy-a, speaking foca over QUIC itself.
    let fc = member(&ca, "fc-eu", Role::Forecaster, "eu");
    let fc_addr = fc.local_addr().unwrap();
    let good = member(&ca, "proxy-b", Role::Proxy, "eu");
    good.join("fc-eu", fc_addr).unwrap();
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(
        ca.member_identity("proxy-a", Role::Proxy, "eu")
            .unwrap()
            .client_config()
            .unwrap(),
    );
    let own = endpoint.local_addr().unwrap();
    let conn = endpoint.connect(fc_addr, "fc-eu").unwrap().await.unwrap();

    // It claims to be proxy-b (a real member) and proxy-c (an unknown name): neither is taken.
    for _ in 0..20 {
        for claimed in ["proxy-b", "proxy-c"] {
            conn.send_datagram(announce_from(claimed, own, "fc-eu", fc_addr))
                .unwrap();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        wait_for(10, || fc.stats().wrong_identity >= 40).await,
        "{:?}",
        fc.stats()
    );
    assert!(wait_for(10, || names(fc.alive(None)) == vec!["proxy-b"]).await);
    let members = fc.members();
    assert!(
        members.iter().all(|m| m.id.name != "proxy-c"),
        "{members:?}"
    );
    // proxy-b is known only as the real one (its address, its incarnation).
    let b = members.iter().find(|m| m.id.name == "proxy-b").unwrap();
    assert_eq!(b.id, good.id().clone(), "{members:?}");
    assert_eq!(fc.stats().bad_packets, 0, "the datagrams were well-formed");

    // The same datagram under its own name is admitted: the name alone made the difference.
    conn.send_datagram(announce_from("proxy-a", own, "fc-eu", fc_addr))
        .unwrap();
    assert!(
        wait_for(10, || fc.members().iter().any(|m| m.id.name == "proxy-a")).await,
        "{:?}",
        fc.members()
    );
    assert_eq!(
        fc.members()
            .iter()
            .find(|m| m.id.name == "proxy-b")
            .unwrap()
            .id,
        good.id().clone()
    );
    conn.close(0u32.into(), b"done");
}
