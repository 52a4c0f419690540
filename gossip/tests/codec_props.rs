//! Property tests: every valid message round-trips exactly; arbitrary and mutated bytes never
//! panic the decoder and are rejected with a decode error.

use proptest::prelude::*;

use prescale_gossip::codec::{decode, encode, Limits};
use prescale_gossip::messages::{
    Ack, AckOutcome, BackendPhase, FleetPlan, Message, ModelUpdate, NodeShare, PlanUpdate,
    PlannedBackend, ProfileGrant, Refusal, TierTarget,
};
use prescale_gossip::model::{Centroid, FeatureVector, ProfileId, ProfileModel, FEATURE_DIM};
use prescale_gossip::{EntryKey, HyperLogLog, LatencyHistogram, Sketch, UserSample};

fn name() -> impl Strategy<Value = String> {
    "[a-z][a-z0-9-]{0,15}"
}

fn histogram() -> impl Strategy<Value = LatencyHistogram> {
    prop::collection::vec(1u64..10_000_000, 0..200).prop_map(|values| {
        let mut h = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
        for v in values {
            h.record(v).unwrap();
        }
        LatencyHistogram::from_histogram(&h).unwrap()
    })
}

fn hll() -> impl Strategy<Value = HyperLogLog> {
    (
        4u8..=12,
        prop::collection::vec(any::<u64>(), 0..600),
        0u64..3000,
    )
        .prop_map(|(p, users, extra)| {
            let mut h = HyperLogLog::new(p).unwrap();
            for u in users {
                h.insert(u);
            }
            for u in 0..extra {
                h.insert(u);
            }
            h
        })
}

fn features() -> impl Strategy<Value = FeatureVector> {
    prop::array::uniform16(-1e6f32..1e6).prop_map(FeatureVector)
}

fn sample() -> impl Strategy<Value = UserSample> {
    (
        0u16..32,
        prop::collection::vec((any::<u64>(), features()), 0..64),
    )
        .prop_map(|(cap, offers)| {
            let mut s = UserSample::new(cap).unwrap();
            for (u, f) in offers {
                s.offer(u, f);
            }
            s
        })
}

fn sketch() -> impl Strategy<Value = Sketch> {
    let entry = (
        (any::<u32>(), name(), name()),
        (any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>()),
        histogram(),
        hll(),
        sample(),
    );
    (
        name(),
        name(),
        any::<u64>(),
        any::<u64>(),
        0u64..1_000_000,
        any::<(u32, u64)>(),
        prop::collection::vec(entry, 0..6),
    )
        .prop_map(
            |(node, region, seq, start, len, (spooled, dropped), entries)| {
                let mut s = Sketch::new(node, region, start, start.saturating_add(len));
                s.sequence = seq;
                s.sender.spooled = spooled;
                s.sender.dropped = dropped;
                for ((p, o, f), (req, err, bi, bo), lat, users, sample) in entries {
                    let st = s.entry(EntryKey {
                        profile: format!("profile-{}", p),
                        origin_region: o,
                        fleet: f,
                    });
                    st.requests = req.max(err);
                    st.errors = err.min(req);
                    st.bytes_in = bi;
                    st.bytes_out = bo;
                    st.latency = lat;
                    st.users = users;
                    st.sample = sample;
                }
                s
            },
        )
}

fn model() -> impl Strategy<Value = ModelUpdate> {
    (
        name(),
        any::<u64>(),
        any::<u64>(),
        prop::collection::btree_set(any::<u32>(), 1..8),
    )
        .prop_map(|(region, version, built_at, ids)| ModelUpdate {
            region,
            model: ProfileModel {
                format: ProfileModel::FORMAT,
                version,
                built_at,
                mean: vec![0.25; FEATURE_DIM],
                scale: vec![2.0; FEATURE_DIM],
                centroids: ids
                    .into_iter()
                    .map(|id| Centroid {
                        id: ProfileId(id),
                        name: format!("p{id}"),
                        center: vec![id as f32; FEATURE_DIM],
                        settings: None,
                    })
                    .collect(),
                anomaly_distance: None,
            },
        })
}

fn plan() -> impl Strategy<Value = PlanUpdate> {
    let fleet = (
        name(),
        prop::collection::vec((name(), any::<u32>()), 0..4),
        prop::collection::vec(name(), 0..5),
        prop::collection::vec(".{0,40}", 0..3),
        prop::option::of(prop::collection::vec(
            (any::<[u8; 4]>(), 1u16.., 0u8..3, any::<u64>()),
            0..4,
        )),
        prop::collection::vec(
            (
                name(),
                any::<u64>(),
                any::<u64>(),
                prop::collection::vec((name(), any::<u64>()), 0..3),
            ),
            0..3,
        ),
    )
        .prop_map(
            |(fleet, tiers, shed, reasons, backends, grants)| FleetPlan {
                fleet,
                tiers: tiers
                    .into_iter()
                    .map(|(tier, instances)| TierTarget { tier, instances })
                    .collect(),
                shed_order: shed,
                reasons,
                backends: backends.map(|list| {
                    let mut seen = std::collections::HashSet::new();
                    list.into_iter()
                        .filter(|(ip, port, _, _)| seen.insert((*ip, *port)))
                        .map(|(ip, port, phase, since_ms)| PlannedBackend {
                            address: std::net::SocketAddr::from((ip, port)).to_string(),
                            phase: [
                                BackendPhase::Warming,
                                BackendPhase::Ready,
                                BackendPhase::Draining,
                            ][phase as usize],
                            since_ms,
                        })
                        .collect()
                }),
                grants: grants
                    .into_iter()
                    .map(
                        |(profile, revenue_weight_milli, requests_per_minute, shares)| {
                            ProfileGrant {
                                profile,
                                revenue_weight_milli,
                                requests_per_minute,
                                shares: shares
                                    .into_iter()
                                    .map(|(node, requests_per_minute)| NodeShare {
                                        node,
                                        requests_per_minute,
                                    })
                                    .collect(),
                            }
                        },
                    )
                    .collect(),
            },
        );
    (
        name(),
        any::<u64>(),
        any::<u64>(),
        prop::collection::vec(fleet, 0..4),
    )
        .prop_map(|(region, version, issued_at_ms, fleets)| PlanUpdate {
            region,
            version,
            issued_at_ms,
            fleets,
        })
}

fn message() -> impl Strategy<Value = Message> {
    prop_oneof![
        sketch().prop_map(Message::Sketch),
        (name(), any::<u64>(), 0..Refusal::ALL.len() + 2).prop_map(|(node, sequence, which)| {
            Message::Ack(Ack {
                node,
                sequence,
                outcome: match which {
                    0 => AckOutcome::Duplicate,
                    1 => AckOutcome::Stored,
                    n => AckOutcome::Refused(Refusal::ALL[n - 2]),
                },
            })
        }),
        model().prop_map(Message::ModelUpdate),
        plan().prop_map(Message::PlanUpdate),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn roundtrip(msg in message()) {
        let limits = Limits::default();
        let bytes = encode(&msg, &limits).unwrap();
        prop_assert_eq!(decode(&bytes, &limits).unwrap(), msg);
    }

    #[test]
    fn arbitrary_bytes_are_rejected(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let err = decode(&bytes, &Limits::default()).unwrap_err();
        prop_assert!(err.is_decode_error(), "{}", err);
    }

    #[test]
    fn mutated_frames_never_panic(msg in message(), edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8), cut in any::<prop::sample::Index>()) {
        let limits = Limits::default();
        let mut bytes = encode(&msg, &limits).unwrap();
        for (at, b) in edits {
            let i = at.index(bytes.len());
            bytes[i] = b;
        }
        // Either it still decodes (a harmless edit) or it is a typed decode error.
        if let Err(e) = decode(&bytes, &limits) {
            prop_assert!(e.is_decode_error(), "{}", e);
        }
        let cut = cut.index(bytes.len());
        if let Err(e) = decode(&bytes[..cut], &limits) {
            prop_assert!(e.is_decode_error(), "{}", e);
        } else {
            prop_assert!(false, "a strict prefix decoded");
        }
    }
}
