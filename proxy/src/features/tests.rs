use http::{HeaderMap, HeaderValue};
use proptest::prelude::*;

use super::*;

/// Monday 2024-01-01 00:00:00 UTC.
const MONDAY: u64 = 1_704_067_200;

fn desktop_get() -> RequestTraits {
    RequestTraits {
        api: false,
        static_asset: false,
        write: false,
        device: DeviceClass::Desktop,
    }
}

fn feature(features: &FeatureVector, name: &str) -> f32 {
    let index = FEATURE_NAMES.iter().position(|n| *n == name).unwrap();
    features.0[index]
}

fn table(mib: usize) -> FeatureTable {
    FeatureTable::with_memory_ceiling(mib * 1024 * 1024, 1800)
}

fn keep(profile: u16) -> impl FnOnce(&UserView<'_>) -> Assignment {
    move |_| Assignment {
        profile: ProfileIdx(profile),
        by_model: false,
    }
}

fn by_model(profile: u16) -> impl FnOnce(&UserView<'_>) -> Assignment {
    move |_| Assignment {
        profile: ProfileIdx(profile),
        by_model: true,
    }
}

#[test]
fn entry_is_one_cache_line() {
    assert_eq!(ENTRY_BYTES, 64);
    assert_eq!(hour_of_week(MONDAY), (0, false));
    assert_eq!(
        hour_of_week(MONDAY + 5 * 86_400 + 3 * 3_600),
        (5 * 24 + 3, true)
    );
}

#[test]
fn classification() {
    let mut headers = HeaderMap::new();
    let t = RequestTraits::classify(&Method::GET, "/api/items", &headers);
    assert!(t.api && !t.static_asset && !t.write);
    assert_eq!(t.device, DeviceClass::Automation, "no User-Agent");
    assert!(RequestTraits::classify(&Method::GET, "/v2/x", &headers).api);
    assert!(!RequestTraits::classify(&Method::GET, "/video", &headers).api);
    assert!(RequestTraits::classify(&Method::GET, "/static/app.min.JS", &headers).static_asset);
    assert!(!RequestTraits::classify(&Method::GET, "/.css", &headers).static_asset);
    assert!(!RequestTraits::classify(&Method::GET, "/download.php", &headers).static_asset);
    assert!(RequestTraits::classify(&Method::DELETE, "/x", &headers).write);
    headers.insert(
        "content-type",
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    assert!(RequestTraits::classify(&Method::POST, "/submit", &headers).api);

    let iphone =
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148";
    let android = "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 Chrome/120.0 Mobile Safari/537.36";
    let desktop = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36";
    let googlebot = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)";
    assert_eq!(device_class(iphone.as_bytes()), DeviceClass::Mobile);
    assert_eq!(device_class(android.as_bytes()), DeviceClass::Mobile);
    assert_eq!(device_class(desktop.as_bytes()), DeviceClass::Desktop);
    assert_eq!(device_class(googlebot.as_bytes()), DeviceClass::Automation);
    for tool in [
        "curl/8.5.0",
        "python-requests/2.31",
        "Go-http-client/1.1",
        "my-sdk/1.0",
        "",
    ] {
        assert_eq!(
            device_class(tool.as_bytes()),
            DeviceClass::Automation,
            "{tool}"
        );
    }
}

/// The rule as plain substring searches: what the one-pass [`device_class`] must agree with.
fn device_class_by_search(user_agent: &str) -> DeviceClass {
    if !user_agent.starts_with("Mozilla/") && !user_agent.starts_with("Opera") {
        return DeviceClass::Automation;
    }
    let automation = ["bot", "Bot", "spider", "crawl", "Headless"];
    let mobile = ["Mobi", "Android", "iPhone", "iPad"];
    if automation.iter().any(|mark| user_agent.contains(mark)) {
        DeviceClass::Automation
    } else if mobile.iter().any(|mark| user_agent.contains(mark)) {
        DeviceClass::Mobile
    } else {
        DeviceClass::Desktop
    }
}

proptest! {
    #[test]
    fn one_pass_device_class_agrees_with_substring_search(
        parts in proptest::collection::vec(
            prop_oneof![
                Just("Mozilla/5.0 "), Just("Opera/9"), Just("bot"), Just("Bo"), Just("t"),
                Just("spider"), Just("crawl"), Just("Headless"), Just("Mobi"), Just("Android"),
                Just("iPhone"), Just("iPad"), Just("i"), Just("M"), Just(" (X11; Linux) "),
                Just("é"), Just("b"),
            ],
            0..8,
        ),
    ) {
        let user_agent = parts.concat();
        prop_assert_eq!(
            device_class(user_agent.as_bytes()),
            device_class_by_search(&user_agent),
            "{}", user_agent
        );
    }
}

#[test]
fn features_follow_behavior() {
    let t = table(1);
    let user = UserKey(42);
    // A user active every weekday morning at 09:xx, one API write request per minute for an hour.
    for day in 0..5u64 {
        for minute in 0..60u64 {
            let now = MONDAY + day * 86_400 + 9 * 3_600 + minute * 60;
            let traits = RequestTraits {
                api: true,
                static_asset: false,
                write: true,
                device: DeviceClass::Automation,
            };
            t.on_request(user, now, traits, keep(1));
            t.on_response(user, 200, 5_000, minute % 10 == 0);
        }
    }
    let now = MONDAY + 4 * 86_400 + 9 * 3_600 + 59 * 60;
    let f = t.features_of(user, now).unwrap();
    assert!(f.0.iter().all(|v| v.is_finite()));
    let rate = feature(&f, "rate_per_min_log").exp_m1();
    assert!((0.9..=1.1).contains(&rate), "rate {rate}/min");
    assert!((feature(&f, "morning_share") - 1.0).abs() < 1e-6);
    assert_eq!(feature(&f, "night_share"), 0.0);
    assert_eq!(feature(&f, "weekend_share"), 0.0);
    assert!((feature(&f, "api_share") - 1.0).abs() < 1e-6);
    assert!((feature(&f, "write_share") - 1.0).abs() < 1e-6);
    assert!((feature(&f, "automation_share") - 1.0).abs() < 1e-6);
    assert_eq!(feature(&f, "mobile_share"), 0.0);
    // 5 distinct hours of the week with 60 requests each: the busiest holds a fifth.
    let peak = feature(&f, "hour_peak_share");
    assert!((0.19..=0.41).contains(&peak), "peak {peak}");
    let error = feature(&f, "error_share");
    assert!((0.02..=0.25).contains(&error), "error {error}");
    let response = feature(&f, "response_bytes_log").exp_m1();
    assert!((4_500.0..=5_001.0).contains(&response), "{response}");
    // Sessions start once a day: the gap is about 23 hours.
    let gap = feature(&f, "session_gap_log").exp_m1();
    assert!(
        (22.0 * 3_600.0..=24.0 * 3_600.0).contains(&gap),
        "gap {gap}"
    );
    // A week later the rate has decayed to ~0.
    let later = t.features_of(user, now + 7 * 86_400).unwrap();
    assert!(feature(&later, "rate_per_min_log") < 1e-3);
}

#[test]
fn timer_driven_user_has_a_high_peak_share() {
    let t = table(1);
    let user = UserKey(7);
    for week in 0..4u64 {
        for i in 0..100u64 {
            t.on_request(
                user,
                MONDAY + week * 7 * 86_400 + 3 * 3_600 + i,
                desktop_get(),
                keep(1),
            );
        }
    }
    let f = t
        .features_of(user, MONDAY + 3 * 7 * 86_400 + 3 * 3_600 + 100)
        .unwrap();
    assert!((feature(&f, "hour_peak_share") - 1.0).abs() < 1e-6);
    assert!((feature(&f, "night_share") - 1.0).abs() < 1e-6);
}

#[test]
fn counters_halve_without_overflow() {
    let t = table(1);
    let user = UserKey(9);
    for i in 0..100_000u64 {
        let traits = if i % 4 == 0 {
            RequestTraits {
                static_asset: true,
                ..desktop_get()
            }
        } else {
            desktop_get()
        };
        t.on_request(user, MONDAY + 5 * 86_400 + i / 10, traits, keep(1));
    }
    let f = t.features_of(user, MONDAY + 5 * 86_400 + 10_000).unwrap();
    let static_share = feature(&f, "static_share");
    assert!((0.2..=0.3).contains(&static_share), "{static_share}");
    assert!((feature(&f, "weekend_share") - 1.0).abs() < 0.01);
    assert!(f.0.iter().all(|v| v.is_finite() && *v >= 0.0));
}

#[test]
fn request_count_and_profile_gauge() {
    let t = table(1);
    let a = UserKey(1);
    let b = UserKey(2);
    let outcome = t.on_request(a, MONDAY, desktop_get(), |view| {
        assert_eq!(view.requests(), 1);
        assert_eq!(view.previous_profile(), None);
        keep(ProfileIdx::NEW.0)(view)
    });
    assert_eq!(
        outcome,
        RequestOutcome {
            profile: ProfileIdx::NEW,
            requests: 1
        }
    );
    t.on_request(b, MONDAY, desktop_get(), keep(0));
    assert_eq!(t.profile_user_counts()[0], 2);
    t.on_request(a, MONDAY + 1, desktop_get(), |view| {
        assert_eq!(view.previous_profile(), Some(ProfileIdx::NEW));
        keep(5)(view)
    });
    let counts = t.profile_user_counts();
    assert_eq!((counts[0], counts[5]), (1, 1));
    assert_eq!(t.len(), 2);
    // Unknown users: responses are ignored, no features.
    t.on_response(UserKey(999), 1, 1, true);
    assert!(t.features_of(UserKey(999), MONDAY).is_none());
}

#[test]
fn eviction_is_least_recently_seen_and_keeps_gauge_exact() {
    // One set when the ceiling is tiny: WAYS users fill it.
    let t = FeatureTable::with_memory_ceiling(TABLE_OVERHEAD_BYTES + SET_BYTES, 1800);
    assert_eq!(t.capacity(), WAYS);
    for i in 0..WAYS as u64 {
        t.on_request(UserKey(i), MONDAY + i, desktop_get(), keep(3));
    }
    // Touch user 0 so user 1 is the least recently seen.
    t.on_request(UserKey(0), MONDAY + 100, desktop_get(), keep(3));
    t.on_request(UserKey(1000), MONDAY + 101, desktop_get(), keep(4));
    assert!(
        t.features_of(UserKey(1), MONDAY + 101).is_none(),
        "user 1 evicted"
    );
    assert!(t.features_of(UserKey(0), MONDAY + 101).is_some());
    assert_eq!(t.len(), WAYS);
    let counts = t.profile_user_counts();
    assert_eq!((counts[3], counts[4]), (WAYS as u64 - 1, 1));
    assert_eq!(counts.iter().sum::<u64>(), WAYS as u64);
}

fn fill_and_check(mib: usize, users: u64) {
    let t = table(mib);
    let ceiling = mib * 1024 * 1024;
    assert!(
        t.memory_bytes() <= ceiling,
        "{} > {ceiling}",
        t.memory_bytes()
    );
    assert!(t.capacity() * USER_BYTES <= ceiling);
    // Most of the budget holds entries.
    assert!(
        t.capacity() * USER_BYTES >= ceiling * 9 / 10,
        "capacity {}",
        t.capacity()
    );
    for i in 0..users {
        // Keys are keyed hashes in production: spread them the same way here.
        let key = UserKey(i.wrapping_mul(0x2545_f491_4f6c_dd1d) ^ (i >> 3));
        t.on_request(key, MONDAY + i / 1000, desktop_get(), keep((i % 4) as u16));
    }
    let resident = t.len();
    assert!(resident <= t.capacity());
    assert!(resident as u64 <= users);
    assert!(resident * USER_BYTES <= ceiling);
    // Sampled eviction keeps the table nearly full.
    assert!(
        resident >= t.capacity() * 95 / 100,
        "{resident} of {}",
        t.capacity()
    );
    assert_eq!(t.profile_user_counts().iter().sum::<u64>(), resident as u64);
}

#[test]
fn many_distinct_users_stay_under_the_ceiling() {
    // 1 MiB holds ~16k users; send 4x as many (the same ratio as 1M users into 16 MiB).
    fill_and_check(1, 65_536);
}

#[test]
fn one_million_users_stay_under_the_default_ceiling() {
    // 1M distinct users into 16 MiB (~256k entries) — a few seconds in a debug build.
    fill_and_check(16, 1_000_000);
}

proptest! {
    #[test]
    fn features_are_finite_and_shares_bounded(
        steps in proptest::collection::vec((0u64..200_000, any::<bool>(), any::<bool>(), any::<bool>(), 0u64..10_000_000, any::<bool>()), 1..200)
    ) {
        let t = table(1);
        let user = UserKey(77);
        let mut now = MONDAY;
        for (advance, api, write, mobile, bytes, error) in steps {
            now += advance;
            let traits = RequestTraits { api, static_asset: !api, write, device: if mobile { DeviceClass::Mobile } else { DeviceClass::Desktop } };
            t.on_request(user, now, traits, keep(1));
            t.on_response(user, bytes, bytes, error);
        }
        let f = t.features_of(user, now).unwrap();
        for (i, v) in f.0.iter().enumerate() {
            prop_assert!(v.is_finite() && *v >= 0.0, "{} = {}", FEATURE_NAMES[i], v);
            if FEATURE_NAMES[i].ends_with("_share") {
                prop_assert!(*v <= 1.0 + 1e-6, "{} = {}", FEATURE_NAMES[i], v);
            }
        }
    }
}

#[test]
fn concurrent_requests_and_responses_lose_no_update() {
    // Two sets' worth of users in a table of one set: threads race on the same entry (requests
    // and responses), on evictions and on re-insertions; every count must still add up.
    let t = std::sync::Arc::new(FeatureTable::with_memory_ceiling(
        TABLE_OVERHEAD_BYTES + SET_BYTES,
        1800,
    ));
    let hot = UserKey(5);
    const THREADS: u64 = 4;
    const ROUNDS: u64 = 20_000;
    let handles: Vec<_> = (0..THREADS)
        .map(|thread| {
            let t = std::sync::Arc::clone(&t);
            std::thread::spawn(move || {
                for i in 0..ROUNDS {
                    // The hot user is seen every round and always recent, so it is never evicted.
                    t.on_request(hot, MONDAY + 1_000_000, desktop_get(), keep((i % 3) as u16));
                    t.on_response(hot, 0, 100, false);
                    let cold = UserKey(100 + (thread * ROUNDS + i) % (2 * WAYS as u64));
                    t.on_request(cold, MONDAY + i / 100, desktop_get(), keep(7));
                }
            })
        })
        .collect();
    for handle in handles {
        handle.join().unwrap();
    }
    let outcome = t.on_request(hot, MONDAY + 1_000_000, desktop_get(), keep(1));
    assert_eq!(u64::from(outcome.requests), THREADS * ROUNDS + 1);
    let f = t.features_of(hot, MONDAY + 1_000_000).unwrap();
    let response = feature(&f, "response_bytes_log").exp_m1();
    assert!((99.0..=101.0).contains(&response), "{response}");
    assert_eq!(t.len(), WAYS);
    let counts = t.profile_user_counts();
    assert_eq!(
        counts.iter().sum::<u64>(),
        WAYS as u64,
        "{:?}",
        &counts[..8]
    );
    assert_eq!(counts[1], 1, "the hot user is in its last profile");
    assert_eq!(counts[7], WAYS as u64 - 1);
}

#[test]
fn a_user_moved_from_its_home_way_keeps_its_state() {
    // One set; every key below has home way 0 (top bits clear), so each newcomer moves the
    // previous occupant of way 0 elsewhere in the set.
    let t = FeatureTable::with_memory_ceiling(TABLE_OVERHEAD_BYTES + SET_BYTES, 1800);
    let users: Vec<UserKey> = (1..=WAYS as u64).map(UserKey).collect();
    for (i, user) in users.iter().enumerate() {
        t.on_request(*user, MONDAY + i as u64, desktop_get(), keep(2));
        t.on_response(*user, 0, 1_000 * (i as u64 + 1), false);
    }
    for (i, user) in users.iter().enumerate() {
        let f = t.features_of(*user, MONDAY + 10).unwrap();
        let response = feature(&f, "response_bytes_log").exp_m1();
        let expected = 0.1 * 1_000.0 * (i as f32 + 1.0);
        assert!((response - expected).abs() < 1.0, "user {i}: {response}");
        let outcome = t.on_request(*user, MONDAY + 10 + i as u64, desktop_get(), keep(2));
        assert_eq!(outcome.requests, 2, "user {i}");
    }
    // A user whose home is another way, in a full set: the least recently seen (users[0])
    // leaves, everyone else stays.
    t.on_request(UserKey(u64::MAX), MONDAY + 30, desktop_get(), keep(3));
    assert!(t.features_of(users[0], MONDAY + 20).is_none());
    for user in &users[1..] {
        assert!(t.features_of(*user, MONDAY + 20).is_some());
    }
    assert_eq!(t.len(), WAYS);
    let counts = t.profile_user_counts();
    assert_eq!((counts[2], counts[3]), (WAYS as u64 - 1, 1));
}

#[test]
fn the_models_answer_is_offered_again_only_within_the_same_second() {
    let t = table(1);
    let user = UserKey(42);
    let answer = |view: &UserView<'_>| view.model_answer_this_second();
    let mut seen = None;
    t.on_request(user, MONDAY, desktop_get(), |view| {
        seen = Some(answer(view));
        by_model(3)(view)
    });
    assert_eq!(seen, Some(None), "a new user has no earlier answer");
    t.on_request(user, MONDAY, desktop_get(), |view| {
        seen = Some(answer(view));
        keep(3)(view)
    });
    assert_eq!(
        seen,
        Some(Some(ProfileIdx(3))),
        "same second, chosen by the model"
    );
    t.on_request(user, MONDAY, desktop_get(), |view| {
        seen = Some(answer(view));
        by_model(4)(view)
    });
    assert_eq!(seen, Some(None), "the previous profile came from a rule");
    t.on_request(user, MONDAY + 1, desktop_get(), |view| {
        seen = Some(answer(view));
        by_model(4)(view)
    });
    assert_eq!(seen, Some(None), "a new second asks the model again");
    assert_eq!(t.profile_user_counts()[4], 1);
    assert_eq!(t.profile_user_counts()[3], 0);
}

proptest! {
    /// An entry stores every field of a user's state exactly, whatever its value.
    #[test]
    fn entry_words_keep_every_field(
        key in any::<u64>(),
        (last_seen, requests) in (any::<u32>(), any::<u32>()),
        floats in proptest::array::uniform5(any::<f32>()),
        counters in proptest::array::uniform12(any::<u16>()),
        top_hours in proptest::array::uniform2(any::<u8>()),
        top_counts in proptest::array::uniform2(any::<u16>()),
        profile in 0u16..0x8000,
    ) {
        let state = UserState {
            key,
            last_seen,
            requests,
            rate_per_min: floats[0],
            request_bytes: floats[1],
            response_bytes: floats[2],
            error_share: floats[3],
            session_gap_secs: floats[4],
            day_parts: [counters[0], counters[1], counters[2], counters[3]],
            weekend: counters[4],
            api: counters[5],
            static_asset: counters[6],
            write: counters[7],
            mobile: counters[8],
            automation: counters[9],
            top_hours,
            top_counts: [counters[10], counters[11].max(top_counts[0])],
            profile,
        };
        let words = state.pack();
        prop_assert_eq!(words[7] & ENTRY_LOCKED, 0, "the lock bit stays clear");
        let back = UserState::unpack(words);
        prop_assert_eq!(format!("{state:?}"), format!("{back:?}"));
        // Through a real entry, lock and unlock included.
        let entry = Entry::empty();
        entry.lock().state = state;
        let stored = entry.lock().state;
        prop_assert_eq!(format!("{state:?}"), format!("{stored:?}"));
        prop_assert_eq!(entry.0[7].load(Ordering::Relaxed) & ENTRY_LOCKED, 0);
    }
}

/// The rule as string splits: what the bounded scan of [`is_static_path`] must agree with.
fn is_static_path_by_split(path: &str) -> bool {
    let last_segment = path.rsplit('/').next().unwrap_or("");
    match last_segment.rsplit_once('.') {
        Some((stem, extension)) if !stem.is_empty() && extension.len() <= 5 => STATIC_EXTENSIONS
            .iter()
            .any(|known| known.eq_ignore_ascii_case(extension)),
        _ => false,
    }
}

proptest! {
    #[test]
    fn bounded_static_path_scan_agrees_with_splitting(
        parts in proptest::collection::vec(
            prop_oneof![
                Just("/"), Just("."), Just("js"), Just("CSS"), Just("woff2"), Just("app"),
                Just("min"), Just("x"), Just("wasm"), Just("é"), Just("webm"), Just("..")
            ],
            0..8,
        ),
    ) {
        let path = parts.concat();
        prop_assert_eq!(is_static_path(&path), is_static_path_by_split(&path), "{}", path);
    }
}
