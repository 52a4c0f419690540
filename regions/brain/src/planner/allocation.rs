//! Allocation under a cap: when a region's instance cap or budget binds, profiles are served in
//! order of revenue weight (highest first), and the ones left short are named in the order they
//! are shed (lowest revenue first).

use serde::Serialize;

/// One profile's demand on a fleet.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProfileNeed {
    pub profile: String,
    /// Instances its forecast needs.
    pub instances: f64,
    /// Revenue per request, relative to other profiles.
    pub revenue_weight: f64,
}

/// The outcome: instances granted per profile, and which to shed first.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Allocation {
    /// Instances granted, in the order of the input.
    pub granted: Vec<(String, f64)>,
    /// Profiles not fully served, lowest revenue weight first: shed (or queue) them in this order.
    pub shed_order: Vec<String>,
}

/// Share `cap` instances among `needs` by revenue weight.
pub fn allocate_under_cap(needs: &[ProfileNeed], cap: f64) -> Allocation {
    let mut order: Vec<usize> = (0..needs.len()).collect();
    let weight = |i: usize| {
        if needs[i].revenue_weight.is_finite() {
            needs[i].revenue_weight
        } else {
            0.0
        }
    };
    order.sort_by(|&a, &b| {
        weight(b)
            .total_cmp(&weight(a))
            .then_with(|| needs[a].profile.cmp(&needs[b].profile))
    });
    let mut remaining = if cap.is_finite() { cap.max(0.0) } else { 0.0 };
    let mut granted = vec![0.0; needs.len()];
    for &i in &order {
        let want = if needs[i].instances.is_finite() {
            needs[i].instances.max(0.0)
        } else {
            0.0
        };
        let give = want.min(remaining);
        granted[i] = give;
        remaining -= give;
    }
    let shed_order = order
        .iter()
        .rev()
        .filter(|&&i| granted[i] + 1e-9 < needs[i].instances)
        .map(|&i| needs[i].profile.clone())
        .collect();
    Allocation {
        granted: needs
            .iter()
            .zip(granted)
            .map(|(n, g)| (n.profile.clone(), g))
            .collect(),
        shed_order,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn need(profile: &str, instances: f64, revenue_weight: f64) -> ProfileNeed {
        ProfileNeed {
            profile: profile.into(),
            instances,
            revenue_weight,
        }
    }

    #[test]
    fn the_highest_revenue_is_served_first_and_the_lowest_shed_first() {
        let needs = [
            need("batch", 5.0, 0.2),
            need("interactive", 6.0, 3.0),
            need("bursty", 4.0, 1.0),
        ];
        let a = allocate_under_cap(&needs, 8.0);
        assert_eq!(a.granted[1].1, 6.0);
        assert_eq!(a.granted[2].1, 2.0);
        assert_eq!(a.granted[0].1, 0.0);
        assert_eq!(
            a.shed_order,
            vec!["batch".to_string(), "bursty".to_string()]
        );
    }
}
