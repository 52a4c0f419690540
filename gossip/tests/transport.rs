//! Real QUIC on 127.0.0.1 (ports chosen at run time) and real temp-dir spools.

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use prescale_gossip::codec::{decode, encode, Limits, HEADER_LEN};
use prescale_gossip::messages::{
    Ack, AckOutcome, FleetPlan, Message, ModelUpdate, PlanUpdate, TierTarget,
};
use prescale_gossip::model::{Centroid, ProfileId, ProfileModel, FEATURE_DIM};
use prescale_gossip::{DevCa, NodeIdentity};

#[tokio::test]
async fn delivers_in_order_and_acks() {
    let ca = DevCa::generate().unwrap();
    let store = Arc::new(Store::default());
    let rx = receiver(&ca, loopback(), TestSink::new(store.clone())).await;
    let spool = tempfile::tempdir().unwrap();
    let tx = sender(&ca, "proxy-1", rx.local_addr().unwrap(), spool.path());
    for i in 1..=5 {
        assert_eq!(tx.submit(sketch(i * 10)).unwrap(), i);
    }
    assert!(
        tx.flush(Duration::from_secs(20)).await,
        "spool did not drain: {:?}",
        tx.stats()
    );
    assert_eq!(store.sequences("proxy-1"), vec![1, 2, 3, 4, 5]);
    assert_eq!(store.total_requests(), 150);
    assert_eq!(store.max_stores(), 1);
    let stored = store.sketches.lock().unwrap()[&("proxy-1".to_string(), 3)].clone();
    assert_eq!(stored.region, "eu");
    let st = tx.stats();
    assert_eq!(
        (st.acked, st.acked_duplicate, st.spooled, st.dropped),
        (5, 0, 0, 0)
    );
    assert!(st.connected);
    let rs = rx.stats();
    assert_eq!((rs.accepted, rs.duplicates, rs.rejected), (5, 0, 0));
    let nodes = rx.nodes();
    assert_eq!(nodes.len(), 1);
    assert_eq!(nodes[0].last_sequence, Some(5));
    assert!(std::fs::read_dir(spool.path()).unwrap().all(|e| !e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .ends_with(".sketch")));
}

#[tokio::test]
async fn exact_delivery_across_receiver_restart() {
    let ca = DevCa::generate().unwrap();
    let store = Arc::new(Store::default());
    // The first receiver stores sequence 3 and dies before acknowledging it.
    let mut sink = TestSink::new(store.clone());
    sink.hang_after_storing = Some(3);
    let rx = receiver(&ca, loopback(), sink).await;
    let addr = rx.local_addr().unwrap();
    let spool = tempfile::tempdir().unwrap();
    let tx = sender(&ca, "proxy-1", addr, spool.path());
    for i in 1..=5 {
        tx.submit(sketch(i)).unwrap();
    }
    assert!(wait_for(20, || store.sequences("proxy-1").contains(&3)).await);
    rx.shutdown().await;
    // Keep producing while the forecaster is down.
    for i in 6..=8 {
        tx.submit(sketch(i)).unwrap();
    }
    assert_eq!(store.sequences("proxy-1"), vec![1, 2, 3]);
    // Restart on the same port with a fresh receiver over the same store.
    let rx = receiver(&ca, addr, TestSink::new(store.clone())).await;
    assert!(
        tx.flush(Duration::from_secs(30)).await,
        "spool did not drain: {:?}",
        tx.stats()
    );
    assert_eq!(store.sequences("proxy-1"), (1..=8).collect::<Vec<_>>());
    assert_eq!(store.max_stores(), 1, "a sketch was stored twice");
    assert_eq!(store.total_requests(), (1..=8).sum::<u64>());
    // Sequence 3 was resent and recognised as already stored.
    assert_eq!(rx.stats().duplicates, 1);
    assert_eq!(rx.stats().accepted, 5);
    assert!(tx.stats().acked_duplicate >= 1);
}

#[tokio::test]
async fn sender_restart_keeps_spool_and_sequence() {
    let ca = DevCa::generate().unwrap();
    let store = Arc::new(Store::default());
    // Learn a free port, then leave nothing listening there.
    let addr = {
        let rx = receiver(&ca, loopback(), TestSink::new(store.clone())).await;
        let a = rx.local_addr().unwrap();
        rx.shutdown().await;
        a
    };
    let spool = tempfile::tempdir().unwrap();
    let tx = sender(&ca, "proxy-1", addr, spool.path());
    for _ in 0..3 {
        tx.submit(sketch(1)).unwrap();
    }
    tx.shutdown().await;
    let tx = sender(&ca, "proxy-1", addr, spool.path());
    assert_eq!(tx.pending(), vec![1, 2, 3]);
    let _rx = receiver(&ca, addr, TestSink::new(store.clone())).await;
    assert!(tx.flush(Duration::from_secs(30)).await);
    assert_eq!(tx.submit(sketch(1)).unwrap(), 4);
    assert!(tx.flush(Duration::from_secs(30)).await);
    assert_eq!(store.sequences("proxy-1"), vec![1, 2, 3, 4]);
}

#[tokio::test]
async fn a_wiped_spool_starts_a_new_epoch_and_its_sketches_are_stored() {
    let ca = DevCa::generate().unwrap();
    let store = Arc::new(Store::default());
    let rx = receiver(&ca, loopback(), TestSink::new(store.clone())).await;
    let addr = rx.local_addr().unwrap();
    let spool = tempfile::tempdir().unwrap();
    let spool_dir = spool.path().join("spool");
    let tx = sender(&ca, "proxy-1", addr, &spool_dir);
    for _ in 0..3 {
        tx.submit(sketch(1)).unwrap();
    }
    assert!(tx.flush(Duration::from_secs(20)).await);
    tx.shutdown().await;
    assert_eq!(store.sequences("proxy-1"), vec![1, 2, 3]);

    // The node's disk is replaced: no spool, no next-sequence. Started as a real node starts
    // (no test numbering), its sketches are above every sequence the receiver stored.
    std::fs::remove_dir_all(&spool_dir).unwrap();
    let mut config = sender_config(ca.identity("proxy-1").unwrap(), "proxy-1", addr, &spool_dir);
    std::fs::remove_file(spool_dir.join("next-sequence")).unwrap();
    config.backoff_min = Duration::from_millis(20);
    let tx = prescale_gossip::SketchSender::start(config).unwrap();
    let first = tx.submit(sketch(7)).unwrap();
    tx.submit(sketch(8)).unwrap();
    assert!(tx.flush(Duration::from_secs(20)).await);
    assert!(first > 3, "a new epoch: {first}");
    assert_eq!(store.sequences("proxy-1"), vec![1, 2, 3, first, first + 1]);
    assert_eq!(
        rx.stats().duplicates,
        0,
        "nothing acknowledged as a duplicate"
    );
}

#[tokio::test]
async fn spool_overflow_drops_oldest_and_counts() {
    let ca = DevCa::generate().unwrap();
    let store = Arc::new(Store::default());
    let addr = {
        let rx = receiver(&ca, loopback(), TestSink::new(store.clone())).await;
        let a = rx.local_addr().unwrap();
        rx.shutdown().await;
        a
    };
    let spool = tempfile::tempdir().unwrap();
    let mut cfg = sender_config(
        ca.identity("proxy-1").unwrap(),
        "proxy-1",
        addr,
        spool.path(),
    );
    cfg.spool_capacity = 3;
    let tx = prescale_gossip::SketchSender::start(cfg).unwrap();
    for _ in 0..5 {
        tx.submit(sketch(1)).unwrap();
    }
    let st = tx.stats();
    assert_eq!((st.dropped, st.spooled), (2, 3));
    assert_eq!(tx.pending(), vec![3, 4, 5]);
    let rx = receiver(&ca, addr, TestSink::new(store.clone())).await;
    assert!(tx.flush(Duration::from_secs(30)).await);
    assert_eq!(store.sequences("proxy-1"), vec![3, 4, 5]);
    // The forecaster learns about the loss from the sketches themselves.
    let last = store.sketches.lock().unwrap()[&("proxy-1".to_string(), 5)].sender;
    assert_eq!(last.dropped, 2);
    assert_eq!(rx.nodes()[0].dropped, 2);
    assert_eq!(tx.stats().dropped, 2);
}

#[tokio::test]
async fn peer_from_another_ca_is_refused() {
    let ca = DevCa::generate().unwrap();
    let other = DevCa::generate().unwrap();
    let store = Arc::new(Store::default());
    let rx = receiver(&ca, loopback(), TestSink::new(store.clone())).await;
    let addr = rx.local_addr().unwrap();

    // A client whose certificate comes from another CA (but which trusts ours): the server refuses.
    let foreign = other.issue("proxy-x").unwrap();
    let id = NodeIdentity::from_pem(
        ca.cert_pem().as_bytes(),
        foreign.cert_pem.as_bytes(),
        foreign.key_pem.as_bytes(),
    )
    .unwrap();
    let spool = tempfile::tempdir().unwrap();
    let tx = prescale_gossip::SketchSender::start(sender_config(id, "proxy-x", addr, spool.path()))
        .unwrap();
    tx.submit(sketch(1)).unwrap();
    assert!(wait_for(20, || rx.stats().handshake_failures >= 1).await);

    // A client of the other CA altogether: it refuses our server, and the server refuses it.
    let spool2 = tempfile::tempdir().unwrap();
    let tx2 = sender(&other, "proxy-y", addr, spool2.path());
    tx2.submit(sketch(1)).unwrap();
    assert!(wait_for(20, || tx2.stats().send_failures >= 2).await);

    // Meanwhile a legitimate node still gets through.
    let spool3 = tempfile::tempdir().unwrap();
    let good = sender(&ca, "proxy-1", addr, spool3.path());
    good.submit(sketch(1)).unwrap();
    assert!(good.flush(Duration::from_secs(20)).await);

    assert_eq!(store.sequences("proxy-x"), Vec::<u64>::new());
    assert_eq!(store.sequences("proxy-y"), Vec::<u64>::new());
    assert_eq!(store.sequences("proxy-1"), vec![1]);
    assert_eq!(tx.stats().acked, 0);
    assert_eq!(tx2.stats().acked, 0);
    assert_eq!(tx.pending(), vec![1], "a refused sketch must stay spooled");
}

/// A raw client with a valid certificate, for sending arbitrary bytes.
async fn raw_client(
    ca: &DevCa,
    addr: std::net::SocketAddr,
) -> (quinn::Endpoint, quinn::Connection) {
    let mut ep = quinn::Endpoint::client(loopback()).unwrap();
    ep.set_default_client_config(ca.identity("raw").unwrap().client_config().unwrap());
    let conn = ep.connect(addr, FORECASTER).unwrap().await.unwrap();
    (ep, conn)
}

async fn exchange(
    conn: &quinn::Connection,
    bytes: &[u8],
) -> Result<Vec<u8>, quinn::ReadToEndError> {
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    // The server may reset before reading everything; a failed write is part of the answer.
    let _ = send.write_all(bytes).await;
    let _ = send.finish();
    recv.read_to_end(1 << 20).await
}

#[tokio::test]
async fn garbage_is_rejected_counted_and_the_server_stays_up() {
    let ca = DevCa::generate().unwrap();
    let store = Arc::new(Store::default());
    let rx = receiver(&ca, loopback(), TestSink::new(store.clone())).await;
    let addr = rx.local_addr().unwrap();
    let (_ep, conn) = raw_client(&ca, addr).await;

    let limits = Limits::default();
    let mut oversized =
        encode(&Message::Sketch(sketch(1)), &limits).unwrap()[..HEADER_LEN].to_vec();
    oversized[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
    let not_a_sketch = encode(
        &Message::Ack(Ack {
            node: "raw".into(),
            sequence: 1,
            outcome: AckOutcome::Stored,
        }),
        &limits,
    )
    .unwrap();
    let mut trailing = encode(&Message::Sketch(sketch(1)), &limits).unwrap();
    trailing.extend_from_slice(b"tail");
    // Well-formed, but for a node the client's certificate ("raw") does not name.
    let mut impostor = sketch(1);
    impostor.node = "proxy-1".into();
    impostor.region = "eu".into();
    impostor.sequence = 1_000_000;
    let impostor = encode(&Message::Sketch(impostor), &limits).unwrap();
    let inputs: Vec<Vec<u8>> = vec![
        b"GET / HTTP/1.1\r\n\r\n".to_vec(),
        vec![0xff; 5000],
        oversized,
        not_a_sketch,
        trailing,
        b"PSKG".to_vec(),
        impostor,
    ];
    for (i, bytes) in inputs.iter().enumerate() {
        let answer = exchange(&conn, bytes).await;
        assert!(answer.is_err(), "input {i} got an answer: {answer:?}");
    }
    assert!(
        wait_for(10, || rx.stats().rejected == inputs.len() as u64).await,
        "{:?}",
        rx.stats()
    );

    // The same connection still works for a valid sketch, and so does a normal sender.
    let mut s = sketch(7);
    s.node = "raw".into();
    s.region = "eu".into();
    s.sequence = 1;
    let reply = exchange(&conn, &encode(&Message::Sketch(s), &limits).unwrap())
        .await
        .unwrap();
    match prescale_gossip::decode(&reply, &limits).unwrap() {
        Message::Ack(a) => assert_eq!((a.sequence, a.outcome), (1, AckOutcome::Stored)),
        other => panic!("expected an ack, got {other:?}"),
    }
    let spool = tempfile::tempdir().unwrap();
    let tx = sender(&ca, "proxy-1", addr, spool.path());
    tx.submit(sketch(1)).unwrap();
    assert!(tx.flush(Duration::from_secs(20)).await);
    assert_eq!(store.sequences("raw"), vec![1]);
    assert_eq!(store.sequences("proxy-1"), vec![1]);
    assert_eq!(rx.stats().rejected, inputs.len() as u64);
    assert_eq!(rx.stats().wrong_node, 1);
}

/// A sketch the forecaster refuses for good (wrong region, precision, time window, overflow)
/// leaves the node's spool with its reason; the node's later sketches are stored behind it,
/// and a resend of the refused one is not stored either.
#[tokio::test]
async fn a_refused_sketch_is_dropped_and_does_not_block_the_next() {
    let ca = DevCa::generate().unwrap();
    let store = Arc::new(Store::default());
    let mut sink = TestSink::new(store.clone());
    sink.refuse
        .insert(2, prescale_gossip::Refusal::UserCountPrecision);
    sink.refuse.insert(4, prescale_gossip::Refusal::WrongRegion);
    let rx = receiver(&ca, loopback(), sink).await;
    let spool = tempfile::tempdir().unwrap();
    let tx = sender(&ca, "proxy-1", rx.local_addr().unwrap(), spool.path());
    for i in 1..=5 {
        tx.submit(sketch(i)).unwrap();
    }
    assert!(
        tx.flush(Duration::from_secs(20)).await,
        "a refused sketch blocked the spool: {:?}",
        tx.stats()
    );
    assert_eq!(store.sequences("proxy-1"), vec![1, 3, 5]);
    let st = tx.stats();
    assert_eq!(
        (
            st.acked,
            st.refused,
            st.acked_duplicate,
            st.corrupt,
            st.spooled
        ),
        (5, 2, 0, 0, 0)
    );
    let rs = rx.stats();
    assert_eq!((rs.accepted, rs.rejected, rs.sink_errors), (3, 0, 0));
    assert_eq!(rs.refused(prescale_gossip::Refusal::UserCountPrecision), 1);
    assert_eq!(rs.refused(prescale_gossip::Refusal::WrongRegion), 1);
    assert_eq!(rs.refused(prescale_gossip::Refusal::CountOverflow), 0);
    assert_eq!(rx.nodes()[0].last_sequence, Some(5));

    // On the wire: the ack names the reason; a resend of the refused sequence is a duplicate
    // (taken as delivered), and the node's next sequence is stored.
    let (_ep, conn) = raw_client(&ca, rx.local_addr().unwrap()).await;
    let limits = Limits::default();
    for (sequence, expected) in [
        (
            2,
            AckOutcome::Refused(prescale_gossip::Refusal::UserCountPrecision),
        ),
        (2, AckOutcome::Duplicate),
        (3, AckOutcome::Stored),
    ] {
        let mut s = sketch(1);
        s.node = "raw".into();
        s.region = "eu".into();
        s.sequence = sequence;
        let answer = exchange(&conn, &encode(&Message::Sketch(s), &limits).unwrap())
            .await
            .expect("an ack");
        match decode(&answer, &limits).expect("an ack frame") {
            Message::Ack(a) => assert_eq!((a.sequence, a.outcome), (sequence, expected)),
            other => panic!("expected an ack, got {other:?}"),
        }
    }
    assert_eq!(store.sequences("raw"), vec![3]);
}

/// An interval with more measurements than one frame holds is spooled as several sketches, each
/// under the frame limit, and every entry is stored exactly once.
#[tokio::test]
async fn an_interval_too_big_for_one_frame_is_split_and_stored_whole() {
    let ca = DevCa::generate().unwrap();
    let store = Arc::new(Store::default());
    let rx = receiver(&ca, loopback(), TestSink::new(store.clone())).await;
    let spool = tempfile::tempdir().unwrap();
    let mut config = sender_config(
        ca.identity("proxy-1").unwrap(),
        "proxy-1",
        rx.local_addr().unwrap(),
        spool.path(),
    );
    config.limits.max_frame = 16 * 1024;
    let limits = config.limits;
    let tx = prescale_gossip::SketchSender::start(config).unwrap();
    let mut wide = prescale_gossip::Sketch::new("ignored", "ignored", 0, 10_000);
    for key in 0..400u64 {
        let e = wide.entry(prescale_gossip::EntryKey {
            profile: format!("profile-{}", key % 32),
            origin_region: format!("region-{}", key / 32),
            fleet: "web".into(),
        });
        e.requests = key + 1;
        for u in 0..20 {
            e.users.insert(key * 1000 + u);
        }
    }
    let whole = encode(&Message::Sketch(wide.clone()), &Limits::default()).unwrap();
    assert!(whole.len() > 2 * limits.max_frame, "{} bytes", whole.len());
    assert!(matches!(
        tx.submit(wide.clone()),
        Err(prescale_gossip::Error::Oversized { .. })
    ));
    let sequences = tx.submit_interval(wide.clone()).unwrap();
    assert!(sequences.len() >= 3, "{sequences:?}");
    assert!(tx.flush(Duration::from_secs(20)).await, "{:?}", tx.stats());
    assert_eq!(store.sequences("proxy-1"), sequences);
    assert_eq!(store.total_requests(), (1..=400).sum::<u64>());
    let stored = store.sketches.lock().unwrap().clone();
    let merged = prescale_gossip::Sketch::merge_entries(stored.values()).unwrap();
    assert_eq!(merged.len(), 400, "every entry in exactly one part");
    for part in stored.values() {
        assert_eq!((part.interval_start_ms, part.interval_end_ms), (0, 10_000));
        assert!(encode(&Message::Sketch(part.clone()), &limits).is_ok());
    }
    assert_eq!(tx.stats().acked, sequences.len() as u64);
}

/// A raw client presenting `identity`'s certificate.
async fn client_as(
    identity: &NodeIdentity,
    addr: std::net::SocketAddr,
) -> (quinn::Endpoint, quinn::Connection) {
    let mut ep = quinn::Endpoint::client(loopback()).unwrap();
    ep.set_default_client_config(identity.client_config().unwrap());
    let conn = ep.connect(addr, FORECASTER).unwrap().await.unwrap();
    (ep, conn)
}

/// One certificate holds at most its share of connections and each connection at most its
/// streams, however valid the certificate: the excess connection is closed with
/// `CLOSE_TOO_MANY`, the excess stream waits, and other nodes are served throughout.
#[tokio::test]
async fn a_peer_holds_only_its_share_of_connections_and_streams() {
    let ca = DevCa::generate().unwrap();
    let store = Arc::new(Store::default());
    let mut config =
        prescale_gossip::ReceiverConfig::new(loopback(), ca.identity(FORECASTER).unwrap());
    config.caps.connections_per_certificate = 2;
    config.caps.streams_per_connection = 2;
    let rx = prescale_gossip::SketchReceiver::start(config, Arc::new(TestSink::new(store.clone())))
        .unwrap();
    let addr = rx.local_addr().unwrap();
    let hog = ca.identity("hog").unwrap();
    let (_e1, first) = client_as(&hog, addr).await;
    let (_e2, second) = client_as(&hog, addr).await;
    let (_e3, third) = client_as(&hog, addr).await;
    match tokio::time::timeout(Duration::from_secs(5), third.closed()).await {
        Ok(quinn::ConnectionError::ApplicationClosed(close)) => assert_eq!(
            close.error_code,
            quinn::VarInt::from_u32(prescale_gossip::receiver::CLOSE_TOO_MANY)
        ),
        other => panic!("the third connection was not closed as too many: {other:?}"),
    }
    assert_eq!(rx.stats().refused_connections, 1);

    // Two streams left open mid-frame use up the first connection's credit: a third waits.
    let mut stalled = Vec::new();
    for _ in 0..2 {
        let (mut send, recv) = first.open_bi().await.unwrap();
        send.write_all(b"PS").await.unwrap();
        stalled.push((send, recv));
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(500), first.open_bi())
            .await
            .is_err(),
        "a third concurrent stream was granted"
    );

    // The other connection of the same certificate, and other nodes, are served meanwhile.
    let limits = Limits::default();
    let mut s = sketch(3);
    s.node = "hog".into();
    s.region = "eu".into();
    s.sequence = 1;
    let answer = exchange(&second, &encode(&Message::Sketch(s), &limits).unwrap())
        .await
        .expect("an ack");
    assert!(matches!(
        decode(&answer, &limits),
        Ok(Message::Ack(Ack { sequence: 1, .. }))
    ));
    let spool = tempfile::tempdir().unwrap();
    let tx = sender(&ca, "proxy-1", addr, spool.path());
    tx.submit(sketch(5)).unwrap();
    assert!(tx.flush(Duration::from_secs(20)).await, "{:?}", tx.stats());
    assert_eq!(store.sequences("proxy-1"), vec![1]);

    // A closed connection gives its slot back.
    first.close(0u32.into(), b"done");
    drop(stalled);
    let (_e4, fourth) = client_as(&hog, addr).await;
    assert!(
        tokio::time::timeout(Duration::from_millis(500), fourth.closed())
            .await
            .is_err(),
        "a connection within the cap was closed"
    );
    assert_eq!(rx.stats().refused_connections, 1);
}

#[tokio::test]
async fn sink_failures_are_retried_without_duplicates() {
    let ca = DevCa::generate().unwrap();
    let store = Arc::new(Store::default());
    let sink = TestSink::new(store.clone());
    sink.fail_first.store(2, Ordering::SeqCst);
    let rx = receiver(&ca, loopback(), sink).await;
    let spool = tempfile::tempdir().unwrap();
    let tx = sender(&ca, "proxy-1", rx.local_addr().unwrap(), spool.path());
    for _ in 0..3 {
        tx.submit(sketch(2)).unwrap();
    }
    assert!(tx.flush(Duration::from_secs(30)).await, "{:?}", tx.stats());
    assert_eq!(store.sequences("proxy-1"), vec![1, 2, 3]);
    assert_eq!(store.max_stores(), 1);
    assert_eq!(rx.stats().sink_errors, 2);
}

fn model(version: u64) -> ModelUpdate {
    ModelUpdate {
        region: "eu".into(),
        model: ProfileModel {
            format: ProfileModel::FORMAT,
            version,
            built_at: 1_700_000_000,
            mean: vec![0.0; FEATURE_DIM],
            scale: vec![1.0; FEATURE_DIM],
            centroids: vec![Centroid {
                id: ProfileId(1),
                name: "interactive".into(),
                center: vec![0.5; FEATURE_DIM],
                settings: None,
            }],
            anomaly_distance: None,
        },
    }
}

#[tokio::test]
async fn models_and_plans_flow_back_to_connected_nodes() {
    let ca = DevCa::generate().unwrap();
    let store = Arc::new(Store::default());
    let rx = receiver(&ca, loopback(), TestSink::new(store.clone())).await;
    // Published before the node connects: delivered on connect.
    rx.publish_model(model(3)).unwrap();
    let spool = tempfile::tempdir().unwrap();
    let tx = sender(&ca, "proxy-1", rx.local_addr().unwrap(), spool.path());
    let mut models = tx.models();
    let mut plans = tx.plans();
    tx.submit(sketch(1)).unwrap();
    assert!(tx.flush(Duration::from_secs(20)).await);
    tokio::time::timeout(Duration::from_secs(10), models.wait_for(|m| m.is_some()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(models.borrow().as_ref().unwrap().model.version, 3);

    // Published while connected: pushed. An older model is ignored.
    let plan = PlanUpdate {
        region: "eu".into(),
        version: 9,
        issued_at_ms: 1,
        fleets: vec![FleetPlan {
            fleet: "web".into(),
            tiers: vec![TierTarget {
                tier: "baseline".into(),
                instances: 4,
            }],
            shed_order: vec!["batch".into(), "interactive".into()],
            reasons: vec!["forecast p90 above capacity at 09:00".into()],
            backends: None,
            grants: Vec::new(),
        }],
    };
    rx.publish_plan(plan.clone()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), plans.wait_for(|p| p.is_some()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(plans.borrow().as_deref(), Some(&plan));
    rx.publish_model(model(5)).unwrap();
    tokio::time::timeout(
        Duration::from_secs(10),
        models.wait_for(|m| m.as_ref().is_some_and(|m| m.model.version == 5)),
    )
    .await
    .unwrap()
    .unwrap();
    rx.publish_model(model(4)).unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(models.borrow().as_ref().unwrap().model.version, 5);
    // An invalid model is refused at publish time.
    let mut bad = model(6);
    bad.model.scale[0] = 0.0;
    assert!(rx.publish_model(bad).is_err());
}
