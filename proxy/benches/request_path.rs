//! The per-request core of the proxy without sockets, as `DataPlane::admit` and
//! `DataPlane::record` run it: identity hash → request classification → clock → feature update +
//! profile assignment (a model of 8 centroids) → meter record with the user (unique users and
//! the user sample) → the user's response features, per request (with the user's entry
//! prefetched between the identity hash and classification, as `admit` does).
//!
//! `one_thread`: ns per request on one core. `two_threads`: the same loop on two threads at
//! once over shared tables, reported as time per request *per thread* — equal to the
//! single-thread figure when throughput per thread does not drop.
//!
//! `request_path_learned/profiles_8` and `profiles_32`: the same one-thread loop with a learned
//! model as the forecaster publishes it — 8 or 32 centroids and an `anomaly_distance` (users
//! beyond it are `anomalous`), set at the 90th percentile of the warmed users' nearest
//! distances — each on a plane of its own, warmed the same way (how many users are anomalous is
//! printed). With `PRESCALE_BENCH_CPU_TIME=1` they are measured on-CPU too, at one thread.
//!
//! `request_path_many_keys`: the 32-profile learned model with clients from 30 origin regions, at
//! two threads, so the meters see some 32 × 31 × 2 keys: `sized` with the meters sized from
//! that key space (`meters::key_capacity`, as the data plane sizes them from its config),
//! `full` with meters of the 1024-key minimum already holding 1024 other keys, so that every
//! request is counted in the overflow cell — the path that took a global lock per request before
//! it was made lock-free. How many keys the requests touch is printed.
//!
//! Header fields are read as the front door reads them: `HeaderFields` over the fields parsed in
//! place (`httparse`), in the order a browser sends them.
//!
//! Like a proxy right after parsing a request, the header block is hot in cache (a small ring of
//! prepared requests), while each thread's requests come from exactly `USERS` distinct users,
//! so that their table entries are as cold as in production (the key from the identity hash is
//! mixed with a user number). On a loaded machine, set `PRESCALE_BENCH_CPU_TIME=1`: instead of
//! the criterion runs, it prints on-CPU ns per request (Linux `/proc/thread-self/schedstat`, over
//! long runs) at 1 and 2 threads, which other processes sharing the cores do not inflate.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use http::Method;
use prescale_config::{AssignmentConfig, AssignmentRule, IdentityConfig};
use prescale_gossip::model::{Centroid, ProfileId, ProfileModel, FEATURE_DIM};
use prescale_proxy::dataplane::CoarseClock;
use prescale_proxy::features::{FeatureTable, RequestTraits};
use prescale_proxy::fields::HeaderFields;
use prescale_proxy::geo::RegionId;
use prescale_proxy::identity::{IdentityResolver, UserKey};
use prescale_proxy::meters::{MeterFleet, MeterKey, Meters, Observation};
use prescale_proxy::profiles::{ProfileAssigner, ProfileIdx, ProfileRegistry, RequestFacts};

// The binary's allocator: the table's placement in memory (and so the cost of reaching an entry)
// depends on it.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const USERS: u64 = 200_000;
/// Prepared requests (kept small so the headers stay in cache, as after parsing).
const RING: usize = 256;
const USER_AGENTS: [&str; 4] = [
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148",
    "curl/8.5.0",
    "python-requests/2.31.0",
];
const PATHS: [&str; 4] = [
    "/api/v1/items",
    "/static/app.js",
    "/index.html",
    "/batch/export",
];

struct Plane {
    identity: IdentityResolver,
    assigner: ProfileAssigner,
    table: FeatureTable,
    meters: Meters,
    clock: CoarseClock,
    /// Origin regions the users come from (a user's is fixed by its number).
    regions: u64,
}

struct Request {
    method: Method,
    path: &'static str,
    fields: Vec<httparse::Header<'static>>,
}

impl Request {
    fn headers(&self) -> HeaderFields<'_> {
        HeaderFields::new(&self.fields)
    }
}

/// Where the learned-model cases put their anomaly distance: this quantile of the warmed users'
/// nearest distances, read once the warm-up is done (features drift as users keep sending, so
/// the share beyond it at their later requests is printed, not assumed).
const ANOMALY_QUANTILE: f64 = 0.9;

/// The plane of `one_thread` and `two_threads`: 8 centroids, no anomaly distance.
fn plane() -> Plane {
    let centers = (0..8u32)
        .map(|i| {
            (0..FEATURE_DIM)
                .map(|d| ((i as usize * 7 + d) % 5) as f32 * 0.3 - 0.6)
                .collect()
        })
        .collect();
    plane_with(model(centers, vec![0.5; FEATURE_DIM], 1, None))
}

/// The learned-model cases' feature means: the bench's responses are 512 bytes (ln 513 ≈ 6.2).
fn learned_mean() -> Vec<f32> {
    let mut mean = vec![0.5; FEATURE_DIM];
    mean[2] = 6.2;
    mean
}

/// `count` distinct centers for the learned-model cases.
fn learned_centers(count: u32) -> Vec<Vec<f32>> {
    (0..count as usize)
        .map(|i| {
            (0..FEATURE_DIM)
                .map(|d| ((i * 7 + d * 3 + i * d) % 11) as f32 * 0.15 - 0.75)
                .collect()
        })
        .collect()
}

fn model(
    centers: Vec<Vec<f32>>,
    mean: Vec<f32>,
    version: u64,
    anomaly_distance: Option<f32>,
) -> ProfileModel {
    let centroids = centers
        .into_iter()
        .enumerate()
        .map(|(i, center)| Centroid {
            id: ProfileId(i as u32),
            name: format!("learned-{i}"),
            center,
            settings: None,
        })
        .collect();
    ProfileModel {
        format: ProfileModel::FORMAT,
        version,
        built_at: 0,
        mean,
        scale: vec![1.5; FEATURE_DIM],
        centroids,
        anomaly_distance,
    }
}

fn plane_with(model: ProfileModel) -> Plane {
    plane_with_keys(model, 1, Meters::new())
}

fn plane_with_keys(model: ProfileModel, regions: u64, meters: Meters) -> Plane {
    let identity = IdentityResolver::new(&IdentityConfig {
        secret: "bench-secret-0123456789abcdef".into(),
        sources: prescale_config::default_identity_sources(),
        max_len: 256,
        new_users_per_client_per_sec: 100,
    })
    .expect("identity config");
    let registry = Arc::new(ProfileRegistry::with_builtins());
    let assigner = ProfileAssigner::new(
        &AssignmentConfig {
            rules: vec![AssignmentRule {
                profile: "batch".into(),
                path_prefix: Some("/batch".into()),
                method: None,
                header: None,
            }],
            default_profile: "default".into(),
            new_user_min_requests: 3,
        },
        registry,
    )
    .expect("assignment config");
    assigner.install_model(model).expect("valid model");
    Plane {
        identity,
        assigner,
        table: FeatureTable::with_memory_ceiling(64 * 1024 * 1024, 1800),
        meters,
        clock: CoarseClock::start(),
        regions,
    }
}

fn requests(seed: usize) -> Vec<Request> {
    (0..RING)
        .map(|i| {
            let n = i * 31 + seed;
            // Leaked once per prepared request: the fields borrow for the whole run.
            let id: &'static str = Box::leak(format!("user-{seed}-{i:08}").into_boxed_str());
            let field = |name: &'static str, value: &'static str| httparse::Header {
                name,
                value: value.as_bytes(),
            };
            let fields = vec![
                field("Host", "example.com"),
                field("User-Agent", USER_AGENTS[n % 4]),
                field("Accept", "*/*"),
                field("X-User-Id", id),
            ];
            Request {
                method: if n.is_multiple_of(5) {
                    Method::POST
                } else {
                    Method::GET
                },
                path: PATHS[n % 4],
                fields,
            }
        })
        .collect()
}

/// One request through the core, as `DataPlane::admit` and `DataPlane::record` do it; returns the
/// profile index so nothing is optimised away. `spread` picks one of `USERS` users (mixed into
/// the identity's key); `later` (seconds) is added to the clock so that a user's requests are
/// minutes apart, as in production, rather than all within the same second.
fn handle(plane: &Plane, request: &Request, spread: u64, later: u64, latency: Duration) -> u16 {
    let headers = request.headers();
    let Some(user) = user_key(plane, &headers, spread) else {
        return u16::MAX;
    };
    // As `DataPlane::admit`: the entry loads while the request is classified.
    plane.table.prefetch(user);
    let traits = RequestTraits::classify(&request.method, request.path, &headers);
    let facts = RequestFacts {
        method: &request.method,
        path: request.path,
        headers: &headers,
    };
    let now = plane.clock.unix_secs() + later;
    let outcome = plane.table.on_request(user, now, traits, |view| {
        plane.assigner.assign_reusing(
            view.requests(),
            view.model_answer_this_second(),
            || view.features(),
            &facts,
        )
    });
    let key = MeterKey {
        profile: outcome.profile,
        region: RegionId((spread % plane.regions) as u16),
        fleet: MeterFleet((spread / plane.regions % 2) as u16),
    };
    let observation = Observation {
        status: 200,
        upstream_failed: false,
        latency,
        bytes_in: 0,
        bytes_out: 512,
    };
    // As `DataPlane::record`: prefetch, meters with the user (unique users and the user sample),
    // then the user's response features.
    plane.table.prefetch(user);
    plane.meters.record_for_user(key, &observation, user.0);
    plane.table.on_response(
        user,
        observation.bytes_in,
        observation.bytes_out,
        observation.is_error(),
    );
    outcome.profile.0
}

/// The key of user `spread` (its request's identity hash mixed with the user number).
fn user_key(plane: &Plane, headers: &HeaderFields<'_>, spread: u64) -> Option<UserKey> {
    let client = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
    let user = plane.identity.resolve(headers, client).ok()?;
    Some(UserKey(user.0 ^ spread.wrapping_mul(0x9e37_79b9_7f4a_7c15)))
}

/// This thread's on-CPU time (Linux).
fn thread_cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let nanos: u64 = stat.split_whitespace().next()?.parse().ok()?;
    Some(Duration::from_nanos(nanos))
}

fn run(plane: &Plane, requests: &[Request], iterations: u64, start: u64) -> Duration {
    let began = Instant::now();
    for i in 0..iterations {
        let n = start.wrapping_add(i);
        // The user first, then its request: a user always sends the same prepared request, so
        // there are exactly `USERS` users per ring (picking both independently made the number
        // of distinct users grow without bound: a steady stream of new users and evictions).
        let spread = n.wrapping_mul(0x2545_f491_4f6c_dd1d) % USERS;
        let request = &requests[spread as usize % requests.len()];
        let later = n / 1000;
        let latency = Duration::from_micros(200 + n % 1000);
        black_box(handle(plane, request, spread, later, latency));
    }
    began.elapsed()
}

/// Runs `iterations` requests on each of `threads` threads and returns the on-CPU ns per
/// request of the slowest thread (`None` where schedstat is unavailable).
fn cpu_ns_per_request(
    plane: &Arc<Plane>,
    per_thread: &[Arc<Vec<Request>>],
    threads: usize,
    iterations: u64,
) -> Option<f64> {
    let barrier = Arc::new(Barrier::new(threads));
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (plane, requests, barrier) = (
                Arc::clone(plane),
                Arc::clone(&per_thread[t]),
                Arc::clone(&barrier),
            );
            std::thread::spawn(move || {
                barrier.wait();
                let before = thread_cpu_time()?;
                run(&plane, &requests, iterations, t as u64 * USERS / 2);
                let after = thread_cpu_time()?;
                Some(after.saturating_sub(before).as_nanos() as f64 / iterations as f64)
            })
        })
        .collect();
    handles
        .into_iter()
        .map(|h| h.join().ok().flatten())
        .try_fold(0f64, |worst, ns| Some(worst.max(ns?)))
}

fn bench(c: &mut Criterion) {
    let plane = Arc::new(plane());
    let per_thread: Vec<Arc<Vec<Request>>> = (0..2).map(|t| Arc::new(requests(t))).collect();
    // Warm the table with every thread's users, so that requests come from known users (the
    // steady state of a proxy) at one thread and at two alike.
    for (t, requests) in per_thread.iter().enumerate() {
        run(&plane, requests, 3 * USERS, t as u64 * USERS / 2);
    }
    if std::env::var_os("PRESCALE_BENCH_CPU_TIME").is_some() {
        for threads in [1, 2] {
            match cpu_ns_per_request(&plane, &per_thread, threads, 5_000_000) {
                Some(ns) => println!(
                    "request_path on-CPU: {threads} thread(s): {ns:.0} ns/request per thread"
                ),
                None => {
                    println!("request_path on-CPU: /proc/thread-self/schedstat is not available")
                }
            }
        }
        drop(plane);
        for count in LEARNED_CASES {
            let learned = Arc::new(warmed_learned_plane(count, &per_thread));
            match cpu_ns_per_request(&learned, &per_thread, 1, 5_000_000) {
                Some(ns) => println!(
                    "request_path on-CPU: learned model of {count} profiles with anomaly_distance: {ns:.0} ns/request"
                ),
                None => {
                    println!("request_path on-CPU: /proc/thread-self/schedstat is not available")
                }
            }
        }
        for (name, meters) in many_keys_cases() {
            let plane = Arc::new(many_keys_plane(meters, &per_thread));
            match cpu_ns_per_request(&plane, &per_thread, 2, 5_000_000) {
                Some(ns) => println!(
                    "request_path on-CPU: 32 profiles x {MANY_REGIONS} origin regions, meters {name}, 2 threads: {ns:.0} ns/request per thread"
                ),
                None => {
                    println!("request_path on-CPU: /proc/thread-self/schedstat is not available")
                }
            }
        }
        return;
    }

    let mut group = c.benchmark_group("request_path");
    group.throughput(Throughput::Elements(1));
    group.bench_function("one_thread", |b| {
        let mut offset = 0u64;
        b.iter_custom(|iterations| {
            offset = offset.wrapping_add(iterations);
            run(&plane, &per_thread[0], iterations, offset)
        })
    });
    group.bench_function("two_threads", |b| {
        let mut offset = 0u64;
        b.iter_custom(|iterations| {
            offset = offset.wrapping_add(iterations);
            two_threads(&plane, &per_thread, iterations, offset)
        })
    });
    group.finish();

    // Each stage alone over the same requests (where the time goes).
    let mut parts = c.benchmark_group("request_path_parts");
    parts.throughput(Throughput::Elements(1));
    let requests = &per_thread[0];
    let client = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
    let mut i = 0usize;
    let mut next = || {
        i = (i + 7) % requests.len();
        &requests[i]
    };
    parts.bench_function("identity", |b| {
        b.iter(|| plane.identity.resolve(&next().headers(), client).ok())
    });
    parts.bench_function("classify", |b| {
        b.iter(|| {
            let r = next();
            RequestTraits::classify(&r.method, r.path, &r.headers())
        })
    });
    let mut user = 0u64;
    parts.bench_function("features_and_assign", |b| {
        b.iter(|| {
            user = user.wrapping_add(1);
            let r = next();
            let headers = r.headers();
            let facts = RequestFacts {
                method: &r.method,
                path: r.path,
                headers: &headers,
            };
            let traits = RequestTraits::classify(&r.method, r.path, &headers);
            let key = UserKey((user % USERS).wrapping_mul(0x9e37_79b9_7f4a_7c15));
            plane
                .table
                .on_request(key, 1_704_067_200 + user / 1000, traits, |view| {
                    plane.assigner.assign_reusing(
                        view.requests(),
                        view.model_answer_this_second(),
                        || view.features(),
                        &facts,
                    )
                })
        })
    });
    let key = MeterKey {
        profile: ProfileIdx(3),
        region: RegionId(0),
        fleet: MeterFleet(0),
    };
    let observation = Observation {
        status: 200,
        upstream_failed: false,
        latency: Duration::from_micros(250),
        bytes_in: 0,
        bytes_out: 512,
    };
    let mut user = 0u64;
    parts.bench_function("meter_record", |b| {
        b.iter(|| {
            user = user.wrapping_add(0x9e37_79b9_7f4a_7c15);
            plane
                .meters
                .record_for_user(black_box(key), &observation, user)
        })
    });
    parts.finish();

    // A learned model of 8 and of 32 profiles with an anomaly distance, one plane each (one
    // 64 MiB table alive at a time besides the first plane's).
    let mut learned = c.benchmark_group("request_path_learned");
    learned.throughput(Throughput::Elements(1));
    for count in LEARNED_CASES {
        let learned_plane = warmed_learned_plane(count, &per_thread);
        learned.bench_function(format!("profiles_{count}"), |b| {
            let mut offset = 0u64;
            b.iter_custom(|iterations| {
                offset = offset.wrapping_add(iterations);
                run(&learned_plane, &per_thread[0], iterations, offset)
            })
        });
    }
    learned.finish();

    let mut many = c.benchmark_group("request_path_many_keys");
    many.throughput(Throughput::Elements(1));
    for (name, meters) in many_keys_cases() {
        let plane = Arc::new(many_keys_plane(meters, &per_thread));
        many.bench_function(format!("{name}_two_threads"), |b| {
            let mut offset = 0u64;
            b.iter_custom(|iterations| {
                offset = offset.wrapping_add(iterations);
                two_threads(&plane, &per_thread, iterations, offset)
            })
        });
    }
    many.finish();
}

/// Runs `iterations` requests on each of two threads at once; the slower thread's time (time
/// per request per thread).
fn two_threads(
    plane: &Arc<Plane>,
    per_thread: &[Arc<Vec<Request>>],
    iterations: u64,
    offset: u64,
) -> Duration {
    let barrier = Arc::new(Barrier::new(2));
    let handles: Vec<_> = (0..2)
        .map(|t| {
            let (plane, requests, barrier) = (
                Arc::clone(plane),
                Arc::clone(&per_thread[t]),
                Arc::clone(&barrier),
            );
            let start = offset.wrapping_add(t as u64 * USERS / 2);
            std::thread::spawn(move || {
                barrier.wait();
                run(&plane, &requests, iterations, start)
            })
        })
        .collect();
    handles
        .into_iter()
        .map(|h| h.join().unwrap_or_default())
        .max()
        .unwrap_or_default()
}

/// Origin regions of the many-keys cases.
const MANY_REGIONS: u64 = 30;

/// The many-keys cases: `(name, meters)`.
fn many_keys_cases() -> [(&'static str, Meters); 2] {
    let profiles = ProfileRegistry::with_builtins().len() + 32 + 1;
    [
        (
            "sized",
            Meters::with_capacity(prescale_proxy::meters::key_capacity(
                profiles,
                MANY_REGIONS as usize + 1,
                3,
            )),
        ),
        ("full", full_meters()),
    ]
}

/// Meters of the minimum capacity, filled with keys no request of the bench uses.
fn full_meters() -> Meters {
    let meters = Meters::new();
    for i in 0..prescale_proxy::meters::MIN_METER_KEYS as u16 {
        meters.register(MeterKey {
            profile: ProfileIdx(200 + i % 50),
            region: RegionId(1000 + i / 50),
            fleet: MeterFleet(9),
        });
    }
    meters
}

/// A plane of the 32-profile learned model over `MANY_REGIONS` origin regions, warmed.
fn many_keys_plane(meters: Meters, per_thread: &[Arc<Vec<Request>>]) -> Plane {
    let plane = plane_with_keys(
        model(learned_centers(32), learned_mean(), 1, None),
        MANY_REGIONS,
        meters,
    );
    for (t, requests) in per_thread.iter().enumerate() {
        run(&plane, requests, 3 * USERS, t as u64 * USERS / 2);
    }
    let snapshot = plane.meters.snapshot();
    let overflowed = snapshot
        .get(MeterKey::OVERFLOW)
        .map_or(0, |e| e.counts.requests);
    let touched = snapshot
        .entries
        .iter()
        .filter(|e| e.counts.requests > 0 && e.key != MeterKey::OVERFLOW)
        .count();
    eprintln!(
        "request_path_many_keys: {touched} keys with requests, capacity {}, {overflowed} requests in the overflow cell",
        plane.meters.capacity()
    );
    plane
}

/// Centroid counts of the learned-model cases.
const LEARNED_CASES: [u32; 2] = [8, 32];

/// A learned-model plane of `count` profiles with every thread's users warmed in (as the first
/// plane), whose model's anomaly distance is the [`ANOMALY_QUANTILE`] of those users' nearest
/// distances.
fn warmed_learned_plane(count: u32, per_thread: &[Arc<Vec<Request>>]) -> Plane {
    let plane = plane_with(model(learned_centers(count), learned_mean(), 1, None));
    for (t, requests) in per_thread.iter().enumerate() {
        run(&plane, requests, 3 * USERS, t as u64 * USERS / 2);
    }
    let compiled = plane.assigner.model().expect("installed");
    let now = plane.clock.unix_secs() + 3 * USERS / 1000;
    let mut distances: Vec<f32> = (0..USERS)
        .step_by(7)
        .filter_map(|spread| {
            let requests = &per_thread[0];
            let headers = requests[spread as usize % requests.len()].headers();
            let key = user_key(&plane, &headers, spread)?;
            let features = plane.table.features_of(key, now)?;
            Some(compiled.nearest_centroid(&features)?.distance)
        })
        .collect();
    distances.sort_by(f32::total_cmp);
    let threshold = distances[((distances.len() - 1) as f64 * ANOMALY_QUANTILE) as usize];
    plane
        .assigner
        .install_model(model(
            learned_centers(count),
            learned_mean(),
            2,
            Some(threshold),
        ))
        .expect("valid model");
    for (t, requests) in per_thread.iter().enumerate() {
        run(&plane, requests, USERS, t as u64 * USERS / 2 + 3 * USERS);
    }
    // What the case measures: how many of the warmed users the model calls anomalous.
    let counts = plane.table.profile_user_counts();
    let anomalous = plane
        .assigner
        .registry()
        .index_of(prescale_gossip::model::ANOMALOUS_PROFILE)
        .map_or(0, |p| counts[usize::from(p.0)]);
    let resident: u64 = counts.iter().sum();
    eprintln!(
        "request_path_learned: {count} profiles, anomaly_distance {threshold:.2}: {anomalous} of {resident} resident users anomalous"
    );
    plane
}

criterion_group!(benches, bench);
criterion_main!(benches);
