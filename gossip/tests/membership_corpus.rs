//! Replays the membership fuzz seed corpus (`fuzz/corpus/membership/`) through
//! `membership::screen_untrusted`, the function the fuzz target runs, as a normal test.
//!
//! A file is "clean" when, as a datagram from the scene's sender, it is accepted with nothing
//! refused, or when it is one region totals item that decodes. `valid-*` files must be clean,
//! `invalid-*` files must not; any other file (e.g. one a fuzzer added) just must not panic.
//! `write_seed_corpus` (ignored) regenerates the seeds:
//! `cargo test -p prescale-gossip --test membership_corpus -- --ignored`.

use std::path::PathBuf;

use foca::{Codec, Header, Incarnation, Member, Message, PostcardCodec, State};
use prescale_gossip::fuzz_checks;
use prescale_gossip::membership::{
    screen_untrusted, MemberId, RegionTotals, Role, ScreenScene, UntrustedVerdict,
};

fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/membership")
}

fn clean(v: &UntrustedVerdict) -> bool {
    let datagram = v
        .datagram
        .as_ref()
        .is_ok_and(|r| r.forged_updates == 0 && r.forged_totals == 0 && r.malformed_totals == 0);
    datagram || v.totals.is_some()
}

fn check(name: &str, bytes: &[u8]) -> Option<bool> {
    let verdict = screen_untrusted(bytes);
    if let Ok(report) = &verdict.datagram {
        assert!(report.rewrite_is_final, "{name}: {report:?}");
    }
    if name.starts_with("valid-") {
        assert!(clean(&verdict), "{name}: {verdict:?}");
        Some(true)
    } else if name.starts_with("invalid-") {
        assert!(!clean(&verdict), "{name}: {verdict:?}");
        Some(false)
    } else {
        None
    }
}

#[test]
fn corpus_replays_without_panic() {
    let (mut valid, mut invalid) = (0, 0);
    for entry in std::fs::read_dir(corpus_dir()).expect("corpus directory") {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        match check(&name, &std::fs::read(&path).unwrap()) {
            Some(true) => valid += 1,
            Some(false) => invalid += 1,
            None => {}
        }
    }
    assert!(
        valid >= 6 && invalid >= 12,
        "corpus too small: {valid} valid, {invalid} invalid"
    );
}

#[test]
fn seeds_behave_as_named() {
    // The generator itself is checked too, so a change that breaks a seed shows up here even
    // before the corpus is regenerated.
    for (name, bytes) in seeds() {
        check(name, &bytes);
    }
}

#[test]
#[ignore = "regenerates the committed seed corpus"]
fn write_seed_corpus() {
    fuzz_checks::write_corpus(&corpus_dir(), &seeds());
}

fn packet(
    src: &MemberId,
    dst: &MemberId,
    message: Message<MemberId>,
    updates: Option<&[Member<MemberId>]>,
    broadcasts: &[Vec<u8>],
) -> Vec<u8> {
    let header = Header {
        src: src.clone(),
        src_incarnation: 1,
        dst: dst.clone(),
        message,
    };
    let mut buf = Vec::new();
    PostcardCodec.encode_header(&header, &mut buf).unwrap();
    if let Some(updates) = updates {
        buf.extend_from_slice(&(updates.len() as u16).to_be_bytes());
        for u in updates {
            PostcardCodec.encode_member(u, &mut buf).unwrap();
        }
    }
    for item in broadcasts {
        buf.extend_from_slice(&(item.len() as u16).to_be_bytes());
        buf.extend_from_slice(item);
    }
    buf
}

fn totals(region: &str, forecaster: &str, version: u64) -> Vec<u8> {
    postcard::to_stdvec(&RegionTotals {
        region: region.into(),
        forecaster: forecaster.into(),
        version,
        period_start_ms: 1_699_999_940_000,
        requests: vec![("interactive".into(), 1200), ("batch".into(), 40)],
        proxies: 3,
    })
    .unwrap()
}

fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let ScreenScene {
        me,
        sender,
        other,
        now_ms,
        ..
    } = ScreenScene::fixed();
    let with = |base: &MemberId, f: fn(&mut MemberId)| {
        let mut id = base.clone();
        f(&mut id);
        id
    };
    let stranger = with(&other, |id| id.name = "proxy-eu-7".into());
    let honest = [
        Member::new(other.clone(), 2, State::Alive),
        Member::new(other.clone(), 3, State::Suspect),
        Member::new(stranger.clone(), 0, State::Alive),
        Member::new(me.clone(), 0, State::Suspect),
    ];
    let gossip = packet(&sender, &me, Message::Gossip, Some(&honest), &[]);
    let one = |m: Member<MemberId>| packet(&sender, &me, Message::Gossip, Some(&[m]), &[]);
    let broadcast = |items: &[Vec<u8>]| packet(&sender, &me, Message::Broadcast, None, items);
    let as_sender =
        |f: fn(&mut MemberId)| packet(&with(&sender, f), &me, Message::Announce, None, &[]);
    let mut oversized = gossip.clone();
    oversized.resize(1100, 0);
    let mut trailing = packet(&sender, &me, Message::Announce, None, &[]);
    trailing.push(0);
    vec![
        (
            "valid-announce",
            packet(&sender, &me, Message::Announce, None, &[]),
        ),
        (
            "valid-ping",
            packet(&sender, &me, Message::Ping(7), Some(&honest[..1]), &[]),
        ),
        ("valid-gossip", gossip.clone()),
        (
            "valid-feed",
            packet(&sender, &me, Message::Feed, Some(&honest[..3]), &[]),
        ),
        (
            "valid-down-relayed-as-suspicion",
            one(Member::new(other.clone(), 2, State::Down)),
        ),
        (
            "valid-ack-with-totals",
            packet(
                &sender,
                &me,
                Message::Ack(7),
                Some(&honest[..2]),
                &[totals("us", "fc-us", now_ms)],
            ),
        ),
        (
            "valid-broadcast-own-region",
            broadcast(&[totals("us", "fc-us", 5)]),
        ),
        ("valid-totals-item", totals("us", "fc-us", 5)),
        ("invalid-empty", vec![]),
        ("invalid-http", b"GET / HTTP/1.1\r\n\r\n".to_vec()),
        (
            "invalid-wrong-name",
            as_sender(|id| id.name = "proxy-us-2".into()),
        ),
        (
            "invalid-wrong-role",
            as_sender(|id| id.role = Role::Forecaster),
        ),
        (
            "invalid-wrong-region",
            as_sender(|id| id.region = "eu".into()),
        ),
        (
            "invalid-truncated-updates",
            gossip[..gossip.len() - 3].to_vec(),
        ),
        ("invalid-trailing-byte", trailing),
        ("invalid-oversized", oversized),
        (
            "invalid-irrefutable-incarnation",
            one(Member::new(other.clone(), Incarnation::MAX, State::Suspect)),
        ),
        (
            "invalid-identity-pinned",
            one(Member::new(
                with(&other, |id| id.bump = u64::MAX),
                0,
                State::Alive,
            )),
        ),
        (
            "invalid-identity-ahead",
            one(Member::new(
                with(&other, |id| id.bump += 24 * 3_600_000),
                0,
                State::Down,
            )),
        ),
        (
            "invalid-role-of-another",
            one(Member::new(
                with(&other, |id| id.role = Role::Forecaster),
                0,
                State::Alive,
            )),
        ),
        (
            "invalid-region-of-another",
            one(Member::new(
                with(&other, |id| id.region = "us".into()),
                0,
                State::Alive,
            )),
        ),
        (
            "invalid-unusable-name",
            one(Member::new(
                with(&stranger, |id| id.name = "a b".into()),
                0,
                State::Alive,
            )),
        ),
        (
            "invalid-newer-self",
            one(Member::new(
                with(&sender, |id| id.bump += 1),
                0,
                State::Alive,
            )),
        ),
        (
            "invalid-totals-of-another-region",
            broadcast(&[totals("eu", "fc-eu", 5)]),
        ),
        (
            "invalid-totals-from-the-future",
            broadcast(&[totals("us", "fc-us", u64::MAX)]),
        ),
        ("invalid-totals-garbage", broadcast(&[vec![0xff; 12]])),
        ("invalid-broadcast-framing", {
            let mut p = broadcast(&[totals("us", "fc-us", 5)]);
            let at = p.len() - totals("us", "fc-us", 5).len() - 2;
            p[at] = 0xff;
            p
        }),
    ]
}
