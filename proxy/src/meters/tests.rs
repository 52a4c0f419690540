use std::sync::Arc;

use proptest::prelude::*;

use super::*;

fn key(profile: u16, region: u16, fleet: u16) -> MeterKey {
    MeterKey {
        profile: ProfileIdx(profile),
        region: RegionId(region),
        fleet: MeterFleet(fleet),
    }
}

fn ok(latency: Duration) -> Observation {
    Observation {
        status: 200,
        upstream_failed: false,
        latency,
        bytes_in: 10,
        bytes_out: 100,
    }
}

fn one_bucket_entry(nanos: u64, count: u64) -> MeterEntry {
    let mut buckets = vec![0; BUCKETS];
    buckets[bucket_index(nanos.clamp(MIN_LATENCY_NS, MAX_LATENCY_NS))] = count;
    MeterEntry {
        key: key(0, 0, 0),
        counts: MeterCounts::default(),
        buckets,
    }
}

#[test]
fn bucket_scheme_covers_the_range() {
    assert_eq!(BUCKETS, 27 * 64);
    assert!(bucket_index(MIN_LATENCY_NS) < bucket_index(MIN_LATENCY_NS + 16));
    assert!(bucket_index(MAX_LATENCY_NS) < BUCKETS);
    // Buckets are ordered and midpoints increase.
    let mut previous = 0;
    for index in bucket_index(MIN_LATENCY_NS)..=bucket_index(MAX_LATENCY_NS) {
        let mid = bucket_midpoint(index);
        assert!(mid > previous);
        assert_eq!(bucket_index(mid), index);
        previous = mid;
    }
}

#[test]
fn counts_status_classes_errors_and_bytes() {
    let meters = Meters::with_stripes(2);
    let k = key(2, 1, 0);
    meters.record(k, &ok(Duration::from_millis(5)));
    meters.record(
        k,
        &Observation {
            status: 404,
            ..ok(Duration::from_millis(1))
        },
    );
    meters.record(
        k,
        &Observation {
            status: 503,
            ..ok(Duration::from_millis(1))
        },
    );
    meters.record(
        k,
        &Observation {
            status: 502,
            upstream_failed: true,
            ..ok(Duration::from_millis(1))
        },
    );
    meters.record(
        k,
        &Observation {
            status: 0,
            upstream_failed: true,
            ..ok(Duration::from_nanos(10))
        },
    );
    meters.record(k, &ok(Duration::from_secs(3_600)));
    meters.record(key(0, 0, 0), &ok(Duration::from_millis(1)));
    assert_eq!(meters.key_count(), 2);
    let snapshot = meters.snapshot();
    assert_eq!(snapshot.entries.len(), 2);
    let entry = snapshot.get(k).unwrap();
    let c = entry.counts;
    assert_eq!(c.requests, 6);
    assert_eq!(c.errors, 3);
    assert_eq!(c.upstream_failures, 2);
    assert_eq!(c.status_classes, [0, 2, 0, 1, 2]);
    assert_eq!((c.bytes_in, c.bytes_out), (60, 600));
    assert_eq!((c.clamped_low, c.clamped_high), (1, 1));
    assert_eq!(entry.latency_count(), 6);
    assert_eq!(entry.histogram().len(), 6);
    assert!(snapshot.get(key(9, 9, 9)).is_none());
}

#[test]
fn snapshots_are_cumulative_and_deltas_give_intervals() {
    let meters = Meters::with_stripes(4);
    let k = key(1, 0, 0);
    for _ in 0..10 {
        meters.record(k, &ok(Duration::from_millis(2)));
    }
    let first = meters.snapshot();
    for _ in 0..5 {
        meters.record(k, &ok(Duration::from_millis(200)));
    }
    meters.record(key(3, 0, 0), &ok(Duration::from_millis(1)));
    let second = meters.snapshot();
    assert_eq!(
        second.get(k).unwrap().counts.requests,
        15,
        "counters never reset"
    );
    let delta = second.delta(&first);
    let interval = delta.get(k).unwrap();
    assert_eq!(interval.counts.requests, 5);
    assert_eq!(interval.counts.bytes_out, 500);
    let p50 = interval.quantiles().p50.as_secs_f64();
    assert!((p50 - 0.2).abs() / 0.2 < 0.01, "{p50}");
    let histogram = interval.histogram();
    assert_eq!(histogram.len(), 5);
    assert!((histogram.value_at_quantile(0.5) as f64 - 200_000.0).abs() / 200_000.0 < 0.01);
    // A key new in the interval is included whole; an idle key is left out.
    assert_eq!(delta.get(key(3, 0, 0)).unwrap().counts.requests, 1);
    assert!(second.delta(&second).entries.is_empty());
}

#[test]
fn quantiles() {
    let meters = Meters::with_stripes(1);
    let k = key(0, 0, 0);
    for ms in 1..=100u64 {
        meters.record(k, &ok(Duration::from_millis(ms)));
    }
    let q = meters.snapshot().get(k).unwrap().quantiles();
    for (got, expected) in [(q.p50, 50.0), (q.p95, 95.0), (q.p99, 99.0)] {
        let got = got.as_secs_f64() * 1_000.0;
        assert!(
            (got - expected).abs() / expected < 0.01,
            "{got} vs {expected}"
        );
    }
    assert_eq!(
        MeterEntry {
            key: k,
            counts: MeterCounts::default(),
            buckets: vec![0; BUCKETS]
        }
        .quantiles(),
        Quantiles::default()
    );
}

#[test]
fn keys_beyond_the_limit_go_to_overflow() {
    let meters = Meters::with_stripes(1);
    for i in 0..(MIN_METER_KEYS as u16 + 10) {
        meters.record(key(i % 256, i / 256, 0), &ok(Duration::from_millis(1)));
    }
    assert_eq!(meters.key_count(), MIN_METER_KEYS);
    let snapshot = meters.snapshot();
    assert_eq!(snapshot.entries.len(), MIN_METER_KEYS + 1);
    assert_eq!(
        snapshot.get(MeterKey::OVERFLOW).unwrap().counts.requests,
        10
    );
    let total: u64 = snapshot.entries.iter().map(|e| e.counts.requests).sum();
    assert_eq!(total, MIN_METER_KEYS as u64 + 10);
}

/// Once full, an unseen key is counted in the overflow cell without the insert lock: recording
/// completes while another thread holds that lock.
#[test]
fn the_overflow_path_takes_no_lock() {
    let meters = Arc::new(Meters::with_stripes(1));
    for i in 0..MIN_METER_KEYS as u16 {
        meters.record(key(i % 256, i / 256, 0), &ok(Duration::from_millis(1)));
    }
    let held = meters.insert.lock().unwrap();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let recorder = {
        let meters = Arc::clone(&meters);
        std::thread::spawn(move || {
            for i in 0..100u16 {
                meters.record(key(i, 200, 1), &ok(Duration::from_millis(1)));
            }
            done_tx.send(()).unwrap();
        })
    };
    let finished = done_rx.recv_timeout(Duration::from_secs(10)).is_ok();
    drop(held);
    recorder.join().unwrap();
    assert!(
        finished,
        "recording an unseen key at capacity waited for the insert lock"
    );
    assert_eq!(
        meters
            .snapshot()
            .get(MeterKey::OVERFLOW)
            .unwrap()
            .counts
            .requests,
        100
    );
}

#[test]
fn the_capacity_comes_from_the_key_space() {
    assert_eq!(key_capacity(4, 3, 2), MIN_METER_KEYS);
    assert_eq!(key_capacity(40, 31, 4), 4960);
    assert_eq!(key_capacity(256, 256, 256), MAX_METER_KEYS);
    let meters = Meters::with_capacity_and_stripes(key_capacity(40, 31, 4), 1);
    assert_eq!(meters.capacity(), 4960);
    for i in 0..5000u16 {
        meters.record(key(i % 40, i / 40, 0), &ok(Duration::from_millis(1)));
    }
    assert_eq!(meters.key_count(), 4960);
    assert_eq!(
        meters
            .snapshot()
            .get(MeterKey::OVERFLOW)
            .unwrap()
            .counts
            .requests,
        40
    );
}

#[test]
fn concurrent_recording_loses_nothing() {
    let meters = Arc::new(Meters::with_stripes(2));
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let meters = Arc::clone(&meters);
            std::thread::spawn(move || {
                for i in 0..10_000u64 {
                    meters.record(
                        key((i % 3) as u16, t, 0),
                        &ok(Duration::from_micros(i % 5_000 + 1)),
                    );
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let snapshot = meters.snapshot();
    let total: u64 = snapshot.entries.iter().map(|e| e.counts.requests).sum();
    assert_eq!(total, 40_000);
    assert_eq!(
        snapshot
            .entries
            .iter()
            .map(MeterEntry::latency_count)
            .sum::<u64>(),
        40_000
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]
    #[test]
    fn bucket_midpoint_within_one_percent(nanos in MIN_LATENCY_NS..=MAX_LATENCY_NS) {
        let mid = bucket_midpoint(bucket_index(nanos)) as f64;
        let error = (mid - nanos as f64).abs() / nanos as f64;
        prop_assert!(error <= 0.0079, "{nanos}: {mid} ({error})");
    }

    #[test]
    fn quantile_of_single_value_within_one_percent(nanos in MIN_LATENCY_NS..=MAX_LATENCY_NS) {
        let entry = one_bucket_entry(nanos, 3);
        let got = entry.latency_at_quantile(0.99).as_nanos() as f64;
        prop_assert!((got - nanos as f64).abs() / nanos as f64 <= 0.01);
        // The exported histogram (µs) is within 1 % too, above its 1 µs resolution.
        if nanos >= 100_000 {
            let h = entry.histogram();
            let micros = nanos as f64 / 1_000.0;
            prop_assert!((h.value_at_quantile(0.5) as f64 - micros).abs() / micros <= 0.01);
        }
    }

    #[test]
    fn out_of_range_values_clamp(nanos in prop_oneof![0u64..MIN_LATENCY_NS, (MAX_LATENCY_NS + 1)..u64::MAX]) {
        let meters = Meters::with_stripes(1);
        let k = key(0, 0, 0);
        meters.record(k, &ok(Duration::from_nanos(nanos)));
        let entry = meters.snapshot().get(k).unwrap().clone();
        prop_assert_eq!(entry.counts.clamped_low + entry.counts.clamped_high, 1);
        prop_assert_eq!(entry.latency_count(), 1);
    }
}

#[test]
fn user_samples_rotate_over_the_whole_population() {
    const POPULATION: u64 = 300;
    const INTERVALS: usize = 200;
    let meters = Meters::with_stripes(2);
    let keys = [key(2, 0, 0), key(3, 1, 0)];
    // User keys are keyed hashes in the proxy: spread them the same way.
    let users: Vec<u64> = (1..=POPULATION)
        .map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
        .collect();
    let mut seen = [
        std::collections::HashSet::new(),
        std::collections::HashSet::new(),
    ];
    let mut repeated_whole_sample = 0;
    let mut previous: Vec<Vec<u64>> = vec![Vec::new(); keys.len()];
    for interval in 0..INTERVALS {
        for (k, meter_key) in keys.iter().enumerate() {
            for (i, user) in users.iter().enumerate() {
                // Some users send several requests: a user is sampled once whatever its count.
                for _ in 0..1 + (i + interval + k) % 3 {
                    meters.record_for_user(*meter_key, &ok(Duration::from_millis(1)), *user);
                }
            }
        }
        let taken = meters.take_users();
        assert_eq!(taken.len(), keys.len(), "interval {interval}");
        for users_of_key in taken {
            let k = keys
                .iter()
                .position(|key| *key == users_of_key.key)
                .expect("a recorded key");
            let mut sample = users_of_key.sample.clone();
            assert!(
                !sample.is_empty() && sample.len() <= USER_SAMPLE_SLOTS,
                "interval {interval}: {} sampled",
                sample.len()
            );
            sample.sort_unstable();
            sample.dedup();
            assert_eq!(
                sample.len(),
                users_of_key.sample.len(),
                "a user sampled twice"
            );
            for user in &sample {
                assert!(users.contains(user), "sampled a user that sent nothing");
                seen[k].insert(*user);
            }
            if sample == previous[k] {
                repeated_whole_sample += 1;
            }
            previous[k] = sample;
        }
    }
    // 8 of 300 per interval: over 200 intervals a user is missed with probability about
    // (1 - 8/300)^200 < 1 %. With one fixed hash the union stayed at the first 8.
    for (k, seen) in seen.iter().enumerate() {
        assert!(
            seen.len() as u64 >= POPULATION * 9 / 10,
            "key {k}: {} of {POPULATION} users ever sampled",
            seen.len()
        );
    }
    assert!(
        repeated_whole_sample <= 2,
        "{repeated_whole_sample} intervals sampled exactly the users of the one before"
    );
}

#[test]
fn one_interval_samples_its_users_under_one_salt() {
    // Within an interval the sample is a min-hash: recording the same users again, in another
    // order, keeps the same sample.
    let meters = Meters::with_stripes(1);
    let k = key(2, 0, 0);
    let users: Vec<u64> = (1..=100u64)
        .map(|i| i.wrapping_mul(0x2545_f491_4f6c_dd1d))
        .collect();
    for user in &users {
        meters.record_for_user(k, &ok(Duration::from_millis(1)), *user);
    }
    for user in users.iter().rev() {
        meters.record_for_user(k, &ok(Duration::from_millis(1)), *user);
    }
    let salt = meters.sample_salt.load(Ordering::Relaxed);
    let taken = meters.take_users();
    let mut sample = taken[0].sample.clone();
    sample.sort_unstable();
    let mut expected: Vec<u64> = (0..USER_SAMPLE_SLOTS as u64)
        .filter_map(|slot| {
            users
                .iter()
                .copied()
                .filter(|u| sample_hash(*u, salt) % USER_SAMPLE_SLOTS as u64 == slot)
                .min_by_key(|u| sample_hash(*u, salt))
        })
        .collect();
    expected.sort_unstable();
    assert_eq!(sample, expected);
    assert_ne!(meters.sample_salt.load(Ordering::Relaxed), salt);
}
