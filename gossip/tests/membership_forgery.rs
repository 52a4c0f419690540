//! Membership against a member that lies, over real QUIC datagrams on loopback. The liar holds a
//! valid certificate of the cluster's CA (a proxy of region "us") and speaks foca itself: it
//! cannot pose as another role or region than its certificate binds, cannot evict another member
//! or pin it down with updates about it, cannot publish another region's totals, and cannot grow
//! a member's memory or crowd the others out by flooding it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use foca::{Codec, Header, Incarnation, Member, Message, PostcardCodec, State};
use prescale_gossip::membership::{MemberId, Membership, MembershipConfig, RegionTotals, Role};
use prescale_gossip::DevCa;

mod common;

use common::{member, wait_for};

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// A foca packet: header, piggybacked updates, custom broadcast items.
fn packet(
    src: &MemberId,
    dst: &MemberId,
    message: Message<MemberId>,
    updates: &[Member<MemberId>],
    broadcasts: &[Vec<u8>],
) -> Bytes {
    let header = Header {
        src: src.clone(),
        src_incarnation: 0,
        dst: dst.clone(),
        message,
    };
    let mut buf = Vec::new();
    PostcardCodec.encode_header(&header, &mut buf).unwrap();
    if !updates.is_empty() {
        buf.extend_from_slice(&(updates.len() as u16).to_be_bytes());
        for u in updates {
            PostcardCodec.encode_member(u, &mut buf).unwrap();
        }
    }
    for item in broadcasts {
        buf.extend_from_slice(&(item.len() as u16).to_be_bytes());
        buf.extend_from_slice(item);
    }
    buf.into()
}

/// A peer with a valid certificate that speaks foca by hand: it answers pings (so that the
/// members keep it alive and keep reading what it says) and sends whatever it is told to.
struct Forger {
    endpoint: quinn::Endpoint,
    id: MemberId,
    responder: tokio::task::JoinHandle<()>,
}

impl Forger {
    fn start(identity: prescale_gossip::NodeIdentity, claims: (Role, &str)) -> Self {
        let mut endpoint = quinn::Endpoint::server(
            identity.server_config().unwrap(),
            "127.0.0.1:0".parse().unwrap(),
        )
        .unwrap();
        endpoint.set_default_client_config(identity.client_config().unwrap());
        let id = MemberId {
            name: "proxy-us-1".into(),
            role: claims.0,
            region: claims.1.into(),
            addr: endpoint.local_addr().unwrap(),
            bump: now_ms(),
        };
        let responder = {
            let (endpoint, id) = (endpoint.clone(), id.clone());
            tokio::spawn(async move {
                while let Some(incoming) = endpoint.accept().await {
                    let id = id.clone();
                    tokio::spawn(async move {
                        let Ok(conn) = incoming.await else { return };
                        while let Ok(data) = conn.read_datagram().await {
                            let Ok(header) =
                                Codec::<MemberId>::decode_header(&mut PostcardCodec, &data[..])
                            else {
                                continue;
                            };
                            if let Message::Ping(n) = header.message {
                                let ack = packet(&id, &header.src, Message::Ack(n), &[], &[]);
                                let _ = conn.send_datagram(ack);
                            }
                        }
                    });
                }
            })
        };
        Self {
            endpoint,
            id,
            responder,
        }
    }

    async fn connect(&self, to: &Membership) -> quinn::Connection {
        self.endpoint
            .connect(to.local_addr().unwrap(), &to.id().name)
            .unwrap()
            .await
            .unwrap()
    }
}

impl Drop for Forger {
    fn drop(&mut self) {
        self.responder.abort();
        self.endpoint.close(0u32.into(), b"done");
    }
}

fn knows(m: &Membership, name: &str) -> bool {
    m.members().iter().any(|s| s.id.name == name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn role_and_region_are_bound_to_the_certificate() {
    let ca = DevCa::generate().unwrap();
    let start = |identity, role, region| {
        Membership::start(MembershipConfig::new(
            "proxy-us-1",
            role,
            region,
            "127.0.0.1:0".parse().unwrap(),
            identity,
        ))
        .err()
        .map(|e| e.to_string())
    };
    // A certificate binding no role and region cannot start a member, nor one claiming
    // another role or region than its certificate binds.
    let err = start(ca.identity("proxy-us-1").unwrap(), Role::Proxy, "us").unwrap();
    assert!(err.contains("prescale:role:proxy"), "{err}");
    let us_proxy = || ca.member_identity("proxy-us-1", Role::Proxy, "us").unwrap();
    let err = start(us_proxy(), Role::Proxy, "eu").unwrap();
    assert!(err.contains("region \"us\""), "{err}");
    assert!(start(us_proxy(), Role::Forecaster, "us").is_some());

    let fc = member(&ca, "fc-eu", Role::Forecaster, "eu");
    // Peers doing foca by hand: one whose certificate binds proxy/us, one binding nothing.
    let bound = Forger::start(us_proxy(), (Role::Proxy, "us"));
    let unbound = Forger::start(ca.identity("proxy-us-1").unwrap(), (Role::Proxy, "us"));
    let to_bound = bound.connect(&fc).await;
    let to_unbound = unbound.connect(&fc).await;
    let lies = [
        (Role::Proxy, "eu"),
        (Role::Forecaster, "us"),
        (Role::Forecaster, "eu"),
    ];
    for _ in 0..10 {
        for (role, region) in lies {
            let mut src = bound.id.clone();
            src.role = role;
            src.region = region.into();
            to_bound
                .send_datagram(packet(&src, fc.id(), Message::Announce, &[], &[]))
                .unwrap();
        }
        to_unbound
            .send_datagram(packet(&unbound.id, fc.id(), Message::Announce, &[], &[]))
            .unwrap();
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    assert!(
        wait_for(10, || fc.stats().wrong_identity >= 40).await,
        "{:?}",
        fc.stats()
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!knows(&fc, "proxy-us-1"), "{:?}", fc.members());
    assert_eq!(fc.stats().bad_packets, 0, "the datagrams were well-formed");

    // What the certificate binds is admitted, with that role and region.
    to_bound
        .send_datagram(packet(&bound.id, fc.id(), Message::Announce, &[], &[]))
        .unwrap();
    assert!(
        wait_for(10, || fc.alive(None) == vec![bound.id.clone()]).await,
        "{:?}",
        fc.members()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updates_about_another_member_cannot_evict_it_or_pin_it_down() {
    let ca = DevCa::generate().unwrap();
    let fc = member(&ca, "fc-eu", Role::Forecaster, "eu");
    let victim = member(&ca, "proxy-eu-1", Role::Proxy, "eu");
    victim.join("fc-eu", fc.local_addr().unwrap()).unwrap();
    assert!(wait_for(20, || knows(&fc, "proxy-eu-1") && knows(&victim, "fc-eu")).await);
    let forger = Forger::start(
        ca.member_identity("proxy-us-1", Role::Proxy, "us").unwrap(),
        (Role::Proxy, "us"),
    );
    let conn = forger.connect(&fc).await;
    conn.send_datagram(packet(&forger.id, fc.id(), Message::Announce, &[], &[]))
        .unwrap();
    assert!(wait_for(10, || knows(&fc, "proxy-us-1")).await);

    let v = victim.id().clone();
    let pinned = |f: fn(&mut MemberId)| {
        let mut id = v.clone();
        f(&mut id);
        id
    };
    // The victim's identity as the forger would have it: winning over every identity the
    // victim could renew to, or at another address, role or region.
    let forged_ids = [
        pinned(|id| id.bump = u64::MAX),
        pinned(|id| id.bump += 3_600_000),
        pinned(|id| id.addr = "127.0.0.1:9".parse().unwrap()),
        pinned(|id| id.role = Role::Forecaster),
        pinned(|id| id.region = "us".into()),
    ];
    let mut me_pinned = fc.id().clone();
    me_pinned.bump = u64::MAX;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(4);
    let mut round: Incarnation = 0;
    let mut samples = 0;
    while tokio::time::Instant::now() < deadline {
        round += 1;
        let mut updates = vec![
            // Irrefutable: a suspicion (or "down") at the highest incarnation.
            Member::new(v.clone(), Incarnation::MAX, State::Suspect),
            Member::new(v.clone(), Incarnation::MAX, State::Down),
            // Refutable, and refuted by the victim each time: a suspicion far above its
            // incarnation, and "down" at it.
            Member::new(v.clone(), 1000 + round, State::Suspect),
            Member::new(v.clone(), 1000 + round, State::Down),
            Member::new(me_pinned.clone(), 0, State::Alive),
        ];
        for id in &forged_ids {
            updates.push(Member::new(id.clone(), 0, State::Alive));
            updates.push(Member::new(id.clone(), 0, State::Down));
        }
        conn.send_datagram(packet(&forger.id, fc.id(), Message::Gossip, &updates, &[]))
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let seen = fc.members();
        let status = seen.iter().find(|m| m.id.name == "proxy-eu-1");
        assert!(
            status.is_some_and(|m| m.alive && m.id == v),
            "round {round}: the victim is no longer the live member it is: {seen:?}"
        );
        assert!(
            victim
                .members()
                .iter()
                .any(|m| m.id.name == "fc-eu" && m.alive && m.id == *fc.id()),
            "round {round}: {:?}",
            victim.members()
        );
        samples += 1;
    }
    assert!(samples >= 20, "{samples}");
    let stats = fc.stats();
    assert!(stats.forged_updates >= 20, "{stats:?}");
    assert_eq!(stats.wrong_identity, 0, "{stats:?}");
    // The forger stayed a member all along, so everything it said was heard.
    assert!(
        fc.alive(None).iter().any(|m| m.name == "proxy-us-1"),
        "{:?}",
        fc.members()
    );
}

fn totals(region: &str, forecaster: &str, version: u64, requests: u64) -> RegionTotals {
    RegionTotals {
        region: region.into(),
        forecaster: forecaster.into(),
        version,
        period_start_ms: 1_700_000_000_000,
        requests: vec![("interactive".into(), requests)],
        proxies: 1,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn region_totals_are_taken_only_from_a_member_of_their_region() {
    let ca = DevCa::generate().unwrap();
    let fc_eu = member(&ca, "fc-eu", Role::Forecaster, "eu");
    let fc_us = member(&ca, "fc-us", Role::Forecaster, "us");
    fc_us.join("fc-eu", fc_eu.local_addr().unwrap()).unwrap();
    assert!(wait_for(20, || knows(&fc_eu, "fc-us") && knows(&fc_us, "fc-eu")).await);
    let real = totals("eu", "fc-eu", 10, 100);
    fc_eu.publish_totals(real.clone()).unwrap();
    assert!(wait_for(20, || fc_us.region_totals() == vec![real.clone()]).await);
    // A member publishes only its own region's totals, under its own name.
    assert!(fc_us.publish_totals(totals("eu", "fc-us", 11, 1)).is_err());
    assert!(fc_us.publish_totals(totals("us", "fc-eu", 11, 1)).is_err());

    let forger = Forger::start(
        ca.member_identity("proxy-us-1", Role::Proxy, "us").unwrap(),
        (Role::Proxy, "us"),
    );
    let conn = forger.connect(&fc_us).await;
    let forged = |t: RegionTotals| postcard::to_stdvec(&t).unwrap();
    // eu's totals from a member of us, naming eu's forecaster, newer than eu's own; and us
    // totals at a version no clock reaches, which would hold every later one off.
    let items = [
        forged(totals("eu", "fc-eu", now_ms(), 999_999)),
        forged(totals("us", "fc-us", u64::MAX, 999_999)),
    ];
    for _ in 0..10 {
        conn.send_datagram(packet(
            &forger.id,
            fc_us.id(),
            Message::Broadcast,
            &[],
            &items,
        ))
        .unwrap();
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    assert!(
        wait_for(10, || fc_us.stats().forged_totals >= 20).await,
        "{:?}",
        fc_us.stats()
    );
    assert_eq!(fc_us.region_totals(), vec![real.clone()]);
    assert_eq!(fc_us.stats().bad_packets, 0, "{:?}", fc_us.stats());
    // Nothing of it was passed on.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(fc_eu.region_totals(), vec![real.clone()]);
    assert_eq!(fc_eu.stats().forged_totals, 0, "{:?}", fc_eu.stats());

    // The same datagram carrying us totals the forger's region may publish is taken: the
    // region made the difference.
    let own = totals("us", "fc-us", 5, 7);
    conn.send_datagram(packet(
        &forger.id,
        fc_us.id(),
        Message::Broadcast,
        &[],
        &[forged(own.clone())],
    ))
    .unwrap();
    assert!(
        wait_for(10, || fc_us.region_totals()
            == vec![real.clone(), own.clone()])
        .await,
        "{:?}",
        fc_us.region_totals()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_member_is_held_to_its_rate_and_the_others_stay() {
    let ca = DevCa::generate().unwrap();
    let fc = member(&ca, "fc-eu", Role::Forecaster, "eu");
    let px = member(&ca, "proxy-eu-1", Role::Proxy, "eu");
    px.join("fc-eu", fc.local_addr().unwrap()).unwrap();
    assert!(wait_for(20, || knows(&fc, "proxy-eu-1") && knows(&px, "fc-eu")).await);
    let forger = Forger::start(
        ca.member_identity("proxy-us-1", Role::Proxy, "us").unwrap(),
        (Role::Proxy, "us"),
    );
    let conn = forger.connect(&fc).await;
    let gossip = packet(&forger.id, fc.id(), Message::Announce, &[], &[]);
    let flood = tokio::spawn(async move {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
        while tokio::time::Instant::now() < deadline {
            for _ in 0..200 {
                if conn.send_datagram_wait(gossip.clone()).await.is_err() {
                    return;
                }
            }
            tokio::task::yield_now().await;
        }
    });
    let mut samples = 0;
    while !flood.is_finished() {
        assert!(
            fc.alive(None).iter().any(|m| m.name == "proxy-eu-1"),
            "{:?}",
            fc.members()
        );
        samples += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(samples >= 20, "{samples}");
    let stats = fc.stats();
    // Three seconds of flood reach the agent as at most a burst plus three seconds of the
    // default allowance (64 + 3 × 200), next to the honest member's few datagrams.
    let handed_on = stats.packets_in - stats.rate_limited - stats.queue_full;
    assert!(stats.rate_limited > 10 * handed_on, "{stats:?}");
    assert!(handed_on < 1_500, "{stats:?}");
    assert!(
        px.alive(None).iter().any(|m| m.name == "fc-eu"),
        "{stats:?} {:?}",
        px.members()
    );
}
