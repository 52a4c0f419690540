//! The per-client limit on new users (`identity.new_users_per_client_per_sec`): how many users
//! not yet in the per-user table one client address may bring in a second. A client that sends a
//! fresh `X-User-Id` on every request would otherwise churn the table, evicting real users and
//! their history; past its limit, its requests are still served, as the user its address is (one
//! entry for the client, whatever ids it claims).
//!
//! Owns: the budgets, in a fixed array of slots chosen by a hash of the client address (IPv6 by
//! its /64, which one subscriber holds); each slot is one atomic word (node second, count in
//! that second), so the check takes no lock and allocates nothing.
//!
//! Invariants: a slot admits at most `per_sec` new users in a node second; addresses that share
//! a slot share its budget (with [`SLOTS`] slots, a few thousand busy clients rarely collide,
//! and a collision only makes the limit stricter); `limited` counts every refusal.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// Budget slots (a power of two).
pub const SLOTS: usize = 4096;

pub struct NewUserLimiter {
    /// 0: no limit. A reload may change it.
    per_sec: AtomicU32,
    /// Per slot: node second (high 32 bits), new users admitted in it (low 32).
    slots: Box<[AtomicU64]>,
    limited: AtomicU64,
}

impl std::fmt::Debug for NewUserLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewUserLimiter")
            .field("per_sec", &self.per_sec())
            .field("limited", &self.limited())
            .finish_non_exhaustive()
    }
}

impl NewUserLimiter {
    /// `per_sec` 0: no limit.
    pub fn new(per_sec: u32) -> Self {
        NewUserLimiter {
            per_sec: AtomicU32::new(per_sec),
            slots: (0..SLOTS).map(|_| AtomicU64::new(0)).collect(),
            limited: AtomicU64::new(0),
        }
    }

    /// A new limit (a reload).
    pub fn set_per_sec(&self, per_sec: u32) {
        self.per_sec.store(per_sec, Ordering::Relaxed);
    }

    /// Whether `client` may bring in one more new user at node second `now_secs` (and counts it
    /// when it may).
    pub fn allow(&self, client: IpAddr, now_secs: u64) -> bool {
        let per_sec = self.per_sec();
        if per_sec == 0 {
            return true;
        }
        let slot = &self.slots[slot_of(client)];
        let second = now_secs & 0xffff_ffff;
        let mut current = slot.load(Ordering::Relaxed);
        loop {
            let (at, count) = (current >> 32, current & 0xffff_ffff);
            let next = if at != second {
                second << 32 | 1
            } else if count < u64::from(per_sec) {
                current + 1
            } else {
                self.limited.fetch_add(1, Ordering::Relaxed);
                return false;
            };
            match slot.compare_exchange_weak(current, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return true,
                Err(seen) => current = seen,
            }
        }
    }

    /// New users refused since start.
    pub fn limited(&self) -> u64 {
        self.limited.load(Ordering::Relaxed)
    }

    pub fn per_sec(&self) -> u32 {
        self.per_sec.load(Ordering::Relaxed)
    }
}

fn slot_of(client: IpAddr) -> usize {
    let bits: u64 = match client {
        IpAddr::V4(v4) => u64::from(u32::from(v4)),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => u64::from(u32::from(v4)),
            None => (u128::from(v6) >> 64) as u64 ^ 0x6666_0000_0000_0000,
        },
    };
    // Fibonacci hashing: neighbouring addresses land far apart.
    (bits.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 52) as usize & (SLOTS - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_client_gets_its_budget_every_second() {
        let limiter = NewUserLimiter::new(3);
        let a: IpAddr = "203.0.113.7".parse().unwrap();
        let b: IpAddr = "198.51.100.1".parse().unwrap();
        assert_ne!(slot_of(a), slot_of(b));
        for _ in 0..3 {
            assert!(limiter.allow(a, 100));
        }
        assert!(!limiter.allow(a, 100));
        assert!(!limiter.allow(a, 100));
        assert!(limiter.allow(b, 100), "another client has its own budget");
        assert!(limiter.allow(a, 101), "a new second, a new budget");
        assert_eq!(limiter.limited(), 2);
        let unlimited = NewUserLimiter::new(0);
        assert!((0..10).all(|_| unlimited.allow(a, 100)));
        limiter.set_per_sec(0);
        assert!(
            (0..10).all(|_| limiter.allow(a, 100)),
            "a reload took the limit off"
        );
    }

    #[test]
    fn an_ipv6_subscriber_is_one_client() {
        let limiter = NewUserLimiter::new(2);
        let first: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let rotated: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        assert_eq!(slot_of(first), slot_of(rotated));
        assert!(limiter.allow(first, 5));
        assert!(limiter.allow(rotated, 5));
        assert!(!limiter.allow(first, 5));
        let mapped: IpAddr = "::ffff:203.0.113.7".parse().unwrap();
        assert_eq!(slot_of(mapped), slot_of("203.0.113.7".parse().unwrap()));
    }

    #[test]
    fn concurrent_clients_never_exceed_the_budget() {
        let limiter = std::sync::Arc::new(NewUserLimiter::new(1_000));
        let client: IpAddr = "192.0.2.1".parse().unwrap();
        let admitted: u32 = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    let limiter = &limiter;
                    s.spawn(move || (0..1_000).filter(|_| limiter.allow(client, 7)).count() as u32)
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(admitted, 1_000);
        assert_eq!(limiter.limited(), 3_000);
    }
}
