//! Admission by grant: while a fleet's instance cap or budget binds, the forecaster grants each
//! profile a rate (highest revenue-weighted demand first) and this proxy admits each profile up
//! to its part of that rate, shedding the rest with a 503 and `Retry-After`.
//!
//! Invariant: a profile is never shed while a lower-revenue profile is admitted on this proxy. A
//! profile past its own grant borrows from the grants of lower-revenue profiles, lowest first,
//! and may run their buckets into debt (down to minus one second's worth), which they repay
//! before they are admitted again: so when capacity runs short it is the lowest-revenue traffic
//! that goes, even when that profile had just spent its own tokens. Profiles without a grant of
//! their own (not in the plan) only borrow.
//!
//! Cost: nothing on the request path while no grant is in force (one `ArcSwapOption` load);
//! while one is, a short mutex section per request of the fleet (a degraded mode, not the
//! common path).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use serde::Serialize;

use crate::profiles::{ProfileIdx, MAX_PROFILES};

/// One profile's grant on this proxy.
#[derive(Clone, Debug, PartialEq)]
pub struct GrantEntry {
    pub profile: ProfileIdx,
    pub name: String,
    /// Relative revenue per request, thousandths.
    pub revenue_weight_milli: u64,
    /// Requests per minute of node time this proxy may admit.
    pub requests_per_minute: f64,
}

/// The grants in force on one fleet, with their token buckets.
#[derive(Debug)]
pub struct GrantTable {
    entries: Vec<GrantEntry>,
    /// Index into `entries` per profile, `usize::MAX` for profiles without a grant.
    slot: Vec<usize>,
    /// Revenue of profiles without a grant (they only borrow).
    ungranted_revenue: Vec<u64>,
    /// Entries by revenue, lowest first: the order grants are borrowed from.
    by_revenue: Vec<usize>,
    /// Real seconds per node second (the node clock's speed), so rates hold under `--speedup`.
    speed: f64,
    buckets: Mutex<Buckets>,
}

#[derive(Debug)]
struct Buckets {
    tokens: Vec<f64>,
    last: Instant,
}

/// What admission decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GrantDecision {
    /// Within the profile's own grant.
    Granted,
    /// Past its own grant, taken from a lower-revenue profile's.
    Borrowed,
    /// No grant left at or below its revenue: shed.
    Shed,
}

impl GrantTable {
    /// A table for `entries`; `revenue_of` gives the revenue weight (thousandths) of profiles
    /// without a grant; `speed` is the node clock's speed.
    pub fn new(
        entries: Vec<GrantEntry>,
        revenue_of: impl Fn(ProfileIdx) -> u64,
        speed: f64,
    ) -> Self {
        let mut slot = vec![usize::MAX; MAX_PROFILES];
        for (i, e) in entries.iter().enumerate() {
            if let Some(s) = slot.get_mut(usize::from(e.profile.0)) {
                *s = i;
            }
        }
        let ungranted_revenue = (0..MAX_PROFILES)
            .map(|p| revenue_of(ProfileIdx(p as u16)))
            .collect();
        let mut by_revenue: Vec<usize> = (0..entries.len()).collect();
        by_revenue.sort_by_key(|&i| (entries[i].revenue_weight_milli, entries[i].name.clone()));
        // Start with a second's worth of tokens: a fresh grant admits at once.
        let tokens = entries.iter().map(|e| burst(e, speed)).collect();
        GrantTable {
            entries,
            slot,
            ungranted_revenue,
            by_revenue,
            speed: if speed.is_finite() && speed >= 1.0 {
                speed
            } else {
                1.0
            },
            buckets: Mutex::new(Buckets {
                tokens,
                last: Instant::now(),
            }),
        }
    }

    pub fn entries(&self) -> &[GrantEntry] {
        &self.entries
    }

    fn revenue(&self, profile: ProfileIdx) -> u64 {
        match self.slot.get(usize::from(profile.0)) {
            Some(&i) if i != usize::MAX => self.entries[i].revenue_weight_milli,
            _ => self
                .ungranted_revenue
                .get(usize::from(profile.0))
                .copied()
                .unwrap_or(0),
        }
    }

    /// Admit one request of `profile` now, or shed it.
    pub fn admit(&self, profile: ProfileIdx) -> GrantDecision {
        self.admit_at(profile, Instant::now())
    }

    fn admit_at(&self, profile: ProfileIdx, now: Instant) -> GrantDecision {
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let elapsed = now.saturating_duration_since(buckets.last).as_secs_f64();
        buckets.last = now;
        for (i, e) in self.entries.iter().enumerate() {
            let rate = e.requests_per_minute / 60.0 * self.speed;
            buckets.tokens[i] = (buckets.tokens[i] + rate * elapsed).min(burst(e, self.speed));
        }
        if let Some(&own) = self.slot.get(usize::from(profile.0)) {
            if own != usize::MAX && buckets.tokens[own] >= 1.0 {
                buckets.tokens[own] -= 1.0;
                return GrantDecision::Granted;
            }
        }
        let revenue = self.revenue(profile);
        for &i in &self.by_revenue {
            if self.entries[i].revenue_weight_milli >= revenue {
                break;
            }
            if buckets.tokens[i] > -burst(&self.entries[i], self.speed) {
                buckets.tokens[i] -= 1.0;
                return GrantDecision::Borrowed;
            }
        }
        GrantDecision::Shed
    }
}

/// A second's worth of the grant (at least one request), the most a quiet bucket saves up.
fn burst(entry: &GrantEntry, speed: f64) -> f64 {
    (entry.requests_per_minute / 60.0 * speed.max(1.0)).max(1.0)
}

/// Requests shed per profile on one fleet, since the node started.
#[derive(Debug)]
pub struct ShedCounters(Box<[AtomicU64]>);

impl Default for ShedCounters {
    fn default() -> Self {
        ShedCounters((0..MAX_PROFILES).map(|_| AtomicU64::new(0)).collect())
    }
}

impl ShedCounters {
    pub fn add(&self, profile: ProfileIdx) {
        if let Some(c) = self.0.get(usize::from(profile.0)) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn get(&self, profile: ProfileIdx) -> u64 {
        self.0
            .get(usize::from(profile.0))
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }
}

/// A grant as `/api/v1/fleets` shows it.
#[derive(Debug, Serialize)]
pub struct GrantStatus {
    pub profile: String,
    pub revenue_weight: f64,
    pub requests_per_minute: f64,
    pub shed: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn entry(profile: u16, name: &str, revenue: u64, rpm: f64) -> GrantEntry {
        GrantEntry {
            profile: ProfileIdx(profile),
            name: name.into(),
            revenue_weight_milli: revenue,
            requests_per_minute: rpm,
        }
    }

    #[test]
    fn a_high_revenue_profile_past_its_grant_takes_from_the_lowest_first() {
        // interactive (3.0) 60/min, batch (0.5) 60/min, default (1.0) 60/min: a second's worth
        // (1 token) each, and each lower bucket can be borrowed a second's worth into debt.
        let table = GrantTable::new(
            vec![
                entry(1, "interactive", 3000, 60.0),
                entry(2, "batch", 500, 60.0),
                entry(3, "default", 1000, 60.0),
            ],
            |_| 1000,
            1.0,
        );
        let t = Instant::now();
        assert_eq!(table.admit_at(ProfileIdx(1), t), GrantDecision::Granted);
        // Its own token is spent: it borrows batch's (the lowest) before default's, batch's
        // into debt.
        assert_eq!(table.admit_at(ProfileIdx(1), t), GrantDecision::Borrowed);
        assert_eq!(table.admit_at(ProfileIdx(2), t), GrantDecision::Shed);
        assert_eq!(table.admit_at(ProfileIdx(1), t), GrantDecision::Borrowed);
        assert_eq!(table.admit_at(ProfileIdx(1), t), GrantDecision::Borrowed);
        assert_eq!(table.admit_at(ProfileIdx(3), t), GrantDecision::Shed);
        assert_eq!(table.admit_at(ProfileIdx(1), t), GrantDecision::Borrowed);
        // Nothing left at or below interactive's revenue.
        assert_eq!(table.admit_at(ProfileIdx(1), t), GrantDecision::Shed);
        // Batch can never borrow from above, and repays its debt before it is admitted again.
        let later = t + Duration::from_secs(1);
        assert_eq!(table.admit_at(ProfileIdx(2), later), GrantDecision::Shed);
        let even_later = t + Duration::from_secs(2);
        assert_eq!(
            table.admit_at(ProfileIdx(2), even_later),
            GrantDecision::Granted
        );
        assert_eq!(
            table.admit_at(ProfileIdx(2), even_later),
            GrantDecision::Shed
        );
    }

    #[test]
    fn buckets_refill_at_the_granted_rate_scaled_by_the_speedup() {
        let table = GrantTable::new(vec![entry(1, "batch", 500, 600.0)], |_| 0, 60.0);
        let t = Instant::now();
        // 600 a node-minute at 60×: 600 a real second, and a second's worth saved up.
        let mut admitted = 0;
        for _ in 0..1000 {
            if table.admit_at(ProfileIdx(1), t) != GrantDecision::Shed {
                admitted += 1;
            }
        }
        assert_eq!(admitted, 600);
        let mut refilled = 0;
        for _ in 0..1000 {
            if table.admit_at(ProfileIdx(1), t + Duration::from_millis(100)) != GrantDecision::Shed
            {
                refilled += 1;
            }
        }
        assert!((59..=61).contains(&refilled), "{refilled}");
    }

    #[test]
    fn profiles_without_a_grant_only_borrow_from_lower_revenue() {
        let table = GrantTable::new(
            vec![entry(1, "batch", 500, 60.0)],
            |p| if p.0 == 9 { 2000 } else { 100 },
            1.0,
        );
        let t = Instant::now();
        // Profile 7 (revenue 0.1) has no grant and nothing below it.
        assert_eq!(table.admit_at(ProfileIdx(7), t), GrantDecision::Shed);
        // Profile 9 (revenue 2.0) borrows batch's.
        assert_eq!(table.admit_at(ProfileIdx(9), t), GrantDecision::Borrowed);
        assert_eq!(table.admit_at(ProfileIdx(1), t), GrantDecision::Shed);
    }
}
