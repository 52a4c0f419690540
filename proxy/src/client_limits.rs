//! Per-client-address limits (`proxy.client_limits`): open connections per peer address, and a
//! request rate per client address, as nginx's `limit_conn` and `limit_req` (with `nodelay`).
//!
//! Owns: the open-connection counts ([`ConnectionLimiter`], with a guard per connection), the
//! per-client rate state ([`RateLimiter`], GCRA: one theoretical arrival time per client), and
//! their refusal counters.
//!
//! Invariants:
//! - clients are keyed by [`ClientKey`]: an IPv4 address, or an IPv6 address's /64 (what one
//!   subscriber holds), so a client cannot escape its limit by rotating the low bits;
//! - a connection counts from [`ConnectionLimiter::open`] until its [`ConnectionSlot`] drops, and
//!   a client's entry exists only while it has a connection open (memory follows open
//!   connections);
//! - [`RateLimiter::allow`] admits a client's request when, after it, the client is at most
//!   `burst` requests ahead of its rate: over any window of `t` seconds a client is admitted at
//!   most `rate × t + burst + 1` requests; a refused request does not use up the allowance;
//! - a client's rate entry is dropped once it holds no allowance debt (its theoretical arrival
//!   time has passed): memory follows clients active within the last `(burst + 1) / rate` s.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use dashmap::DashMap;

/// A client as the limits see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ClientKey(u128);

impl ClientKey {
    pub fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => ClientKey(u128::from(u32::from(v4))),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => ClientKey(u128::from(u32::from(v4))),
                // The /64 prefix, marked apart from every IPv4 key.
                None => ClientKey((u128::from(v6) >> 64) | 1 << 127),
            },
        }
    }
}

/// Open connections per peer address.
#[derive(Debug)]
pub struct ConnectionLimiter {
    /// 0: no limit (connections are not counted). A reload may change it.
    per_client: AtomicU32,
    open: Arc<DashMap<ClientKey, u32>>,
    refused: AtomicU64,
}

/// One open connection of a client; dropping it closes the count.
#[derive(Debug)]
pub struct ConnectionSlot {
    key: ClientKey,
    open: Arc<DashMap<ClientKey, u32>>,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        // The entry goes with the client's last connection.
        self.open.remove_if_mut(&self.key, |_, count| {
            *count = count.saturating_sub(1);
            *count == 0
        });
    }
}

impl ConnectionLimiter {
    /// `per_client` 0: no limit.
    pub fn new(per_client: u32) -> Self {
        ConnectionLimiter {
            per_client: AtomicU32::new(per_client),
            open: Arc::new(DashMap::new()),
            refused: AtomicU64::new(0),
        }
    }

    /// A new limit (a reload). Connections opened while there was none are not counted.
    pub fn set_limit(&self, per_client: u32) {
        self.per_client.store(per_client, Ordering::Relaxed);
    }

    pub fn is_limited(&self) -> bool {
        self.per_client.load(Ordering::Relaxed) > 0
    }

    /// Counts a new connection from `peer` (`Ok(None)`: no limit, nothing counted), or refuses
    /// it (counted) when the peer already has the limit open.
    pub fn open(&self, peer: IpAddr) -> Result<Option<ConnectionSlot>, Refused> {
        let per_client = self.per_client.load(Ordering::Relaxed);
        if per_client == 0 {
            return Ok(None);
        }
        let key = ClientKey::of(peer);
        let mut count = self.open.entry(key).or_insert(0);
        if *count >= per_client {
            drop(count);
            self.refused.fetch_add(1, Ordering::Relaxed);
            return Err(Refused);
        }
        *count += 1;
        Ok(Some(ConnectionSlot {
            key,
            open: Arc::clone(&self.open),
        }))
    }

    /// Connections refused since start.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Clients with a connection open.
    pub fn clients(&self) -> usize {
        self.open.len()
    }
}

/// A connection refused: its client has the limit open already.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refused;

/// How long a refused client should wait before its next request is admitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryAfter {
    pub secs: u32,
}

/// A request rate per client address (GCRA).
#[derive(Debug)]
pub struct RateLimiter {
    /// Microseconds of allowance one request takes (1 / rate); 0: no limit. A reload may change
    /// it and the tolerance (each request reads both; clients keep their arrival times).
    interval_us: AtomicU64,
    /// How far ahead of its rate a client may be (burst × interval).
    tolerance_us: AtomicU64,
    /// Per client: the theoretical arrival time (µs since `epoch`) of its next request.
    arrivals: Arc<DashMap<ClientKey, AtomicU64>>,
    epoch: Instant,
    limited: AtomicU64,
}

/// How often entries without debt are dropped.
const SWEEP_INTERVAL: Duration = Duration::from_secs(5);

impl RateLimiter {
    /// `per_sec` 0: no limit. Starts a thread that drops idle clients' entries while the
    /// limiter lives.
    pub fn start(per_sec: f64, burst: u32) -> std::io::Result<Arc<Self>> {
        let limiter = Arc::new(Self::new(per_sec, burst));
        let weak = Arc::downgrade(&limiter);
        std::thread::Builder::new()
            .name("client-rate-sweep".into())
            .spawn(move || sweep_while_alive(weak))?;
        Ok(limiter)
    }

    fn new(per_sec: f64, burst: u32) -> Self {
        let limiter = RateLimiter {
            interval_us: AtomicU64::new(0),
            tolerance_us: AtomicU64::new(0),
            arrivals: Arc::new(DashMap::new()),
            epoch: Instant::now(),
            limited: AtomicU64::new(0),
        };
        limiter.set_rate(per_sec, burst);
        limiter
    }

    /// A new rate and burst (a reload); `per_sec` 0 (or not finite): no limit.
    pub fn set_rate(&self, per_sec: f64, burst: u32) {
        let interval_us = if per_sec > 0.0 && per_sec.is_finite() {
            ((1e6 / per_sec).round() as u64).max(1)
        } else {
            0
        };
        self.tolerance_us
            .store(interval_us * u64::from(burst), Ordering::Relaxed);
        self.interval_us.store(interval_us, Ordering::Relaxed);
    }

    pub fn is_limited(&self) -> bool {
        self.interval_us.load(Ordering::Relaxed) > 0
    }

    fn now_us(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }

    /// Admits one request of `client` now, or says how long until one would be.
    pub fn allow(&self, client: IpAddr) -> Result<(), RetryAfter> {
        self.allow_at(ClientKey::of(client), self.now_us())
    }

    fn allow_at(&self, key: ClientKey, now_us: u64) -> Result<(), RetryAfter> {
        let interval_us = self.interval_us.load(Ordering::Relaxed);
        if interval_us == 0 {
            return Ok(());
        }
        let tolerance_us = self.tolerance_us.load(Ordering::Relaxed);
        let check = |arrival: &AtomicU64| {
            let mut seen = arrival.load(Ordering::Relaxed);
            loop {
                let due = seen.max(now_us);
                if due - now_us > tolerance_us {
                    let wait_us = due - now_us - tolerance_us;
                    return Err(RetryAfter {
                        secs: wait_us.div_ceil(1_000_000).clamp(1, u64::from(u32::MAX)) as u32,
                    });
                }
                match arrival.compare_exchange_weak(
                    seen,
                    due + interval_us,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => return Ok(()),
                    Err(now_seen) => seen = now_seen,
                }
            }
        };
        let result = match self.arrivals.get(&key) {
            Some(arrival) => check(&arrival),
            None => check(&self.arrivals.entry(key).or_insert(AtomicU64::new(0))),
        };
        if result.is_err() {
            self.limited.fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    /// Requests refused since start.
    pub fn limited(&self) -> u64 {
        self.limited.load(Ordering::Relaxed)
    }

    /// Clients with an entry (those active recently).
    pub fn clients(&self) -> usize {
        self.arrivals.len()
    }

    /// Drops the entries of clients whose allowance is whole again.
    fn sweep_at(&self, now_us: u64) {
        self.arrivals
            .retain(|_, arrival| arrival.load(Ordering::Relaxed) > now_us);
    }
}

fn sweep_while_alive(limiter: Weak<RateLimiter>) {
    loop {
        std::thread::sleep(SWEEP_INTERVAL);
        let Some(limiter) = limiter.upgrade() else {
            return;
        };
        limiter.sweep_at(limiter.now_us());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("ip")
    }

    #[test]
    fn ipv6_clients_are_their_64_and_mapped_ipv4_is_ipv4() {
        assert_eq!(
            ClientKey::of(ip("2001:db8:1:2::1")),
            ClientKey::of(ip("2001:db8:1:2:ffff::9"))
        );
        assert_ne!(
            ClientKey::of(ip("2001:db8:1:2::1")),
            ClientKey::of(ip("2001:db8:1:3::1"))
        );
        assert_eq!(
            ClientKey::of(ip("::ffff:192.0.2.1")),
            ClientKey::of(ip("192.0.2.1"))
        );
        assert_ne!(ClientKey::of(ip("::")), ClientKey::of(ip("0.0.0.0")));
    }

    #[test]
    fn connections_count_until_their_slot_drops() {
        let limiter = ConnectionLimiter::new(2);
        let open = |peer: &str| limiter.open(ip(peer));
        let a = open("192.0.2.1").expect("first").expect("counted");
        let b = open("192.0.2.1").expect("second").expect("counted");
        assert_eq!(open("192.0.2.1").err(), Some(Refused));
        assert!(open("192.0.2.2").is_ok(), "another client");
        assert_eq!(limiter.refused(), 1);
        drop(a);
        let c = open("192.0.2.1").expect("room again");
        drop((b, c));
        assert_eq!(limiter.clients(), 0, "no entry without an open connection");

        // A reload: a higher limit makes room, 0 counts nothing.
        let a = open("192.0.2.1").expect("first");
        let b = open("192.0.2.1").expect("second");
        limiter.set_limit(3);
        let c = open("192.0.2.1").expect("room under the new limit");
        assert_eq!(open("192.0.2.1").err(), Some(Refused));
        limiter.set_limit(0);
        assert!(!limiter.is_limited());
        assert!(
            matches!(open("192.0.2.1"), Ok(None)),
            "no limit: not counted"
        );
        drop((a, b, c));
        assert_eq!(limiter.clients(), 0);
    }

    #[test]
    fn a_rate_admits_its_burst_then_one_per_interval() {
        // 10 per second, burst 3: 4 at once, then one each 100 ms.
        let limiter = RateLimiter::new(10.0, 3);
        let key = ClientKey::of(ip("192.0.2.1"));
        let at = |ms: u64| limiter.allow_at(key, ms * 1000);
        for _ in 0..4 {
            assert_eq!(at(1000), Ok(()));
        }
        assert_eq!(at(1000), Err(RetryAfter { secs: 1 }));
        assert_eq!(at(1050), Err(RetryAfter { secs: 1 }));
        assert_eq!(at(1100), Ok(()));
        assert_eq!(at(1100), Err(RetryAfter { secs: 1 }));
        // Another client has its own allowance.
        assert_eq!(
            limiter.allow_at(ClientKey::of(ip("192.0.2.2")), 1_100_000),
            Ok(())
        );
        // Idle long enough: the whole burst again, and the entry can go.
        limiter.sweep_at(10_000_000);
        assert_eq!(limiter.clients(), 0);
        for _ in 0..4 {
            assert_eq!(at(10_000), Ok(()));
        }
        assert_eq!(limiter.limited(), 3);
    }

    #[test]
    fn over_any_window_a_client_gets_at_most_rate_times_window_plus_burst() {
        let limiter = RateLimiter::new(50.0, 5);
        let key = ClientKey::of(ip("192.0.2.9"));
        // A client hammering every millisecond for 2 s.
        let admitted = (0..2000u64)
            .filter(|ms| limiter.allow_at(key, ms * 1000).is_ok())
            .count();
        // 50/s × 2 s + 5 + 1 = 106 at most; and the limiter is not stricter than its rate.
        assert!((100..=106).contains(&admitted), "{admitted}");
    }

    #[test]
    fn a_new_rate_applies_to_the_next_request_and_zero_is_no_limit() {
        let limiter = RateLimiter::new(0.0, 0);
        let key = ClientKey::of(ip("192.0.2.4"));
        assert!(!limiter.is_limited());
        assert!((0..100).all(|_| limiter.allow_at(key, 0).is_ok()));
        limiter.set_rate(1.0, 0);
        assert_eq!(limiter.allow_at(key, 0), Ok(()));
        assert_eq!(limiter.allow_at(key, 0), Err(RetryAfter { secs: 1 }));
        limiter.set_rate(0.0, 0);
        assert_eq!(limiter.allow_at(key, 0), Ok(()));
        assert_eq!(limiter.limited(), 1, "the count survives a change");
    }

    #[test]
    fn a_slow_rate_says_how_long_to_wait() {
        let limiter = RateLimiter::new(0.1, 0);
        let key = ClientKey::of(ip("192.0.2.3"));
        assert_eq!(limiter.allow_at(key, 0), Ok(()));
        assert_eq!(
            limiter.allow_at(key, 1_000_000),
            Err(RetryAfter { secs: 9 })
        );
    }
}
