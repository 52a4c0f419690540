//! Routing a profile to a fleet at run time (`Brain::route_profile`): a profile the proxies send
//! to a fleet counts in that fleet's total from then on and in no other fleet of the region.

use prescale_brain::brain::{Brain, FleetKey, FleetProfile, FleetSpec};
use prescale_brain::planner::CapacityModel;
use prescale_config::brain::{ForecastConfig, PlannerConfig};

fn spec(fleet: &str, profiles: &[&str]) -> FleetSpec {
    FleetSpec {
        key: FleetKey {
            region: "eu".into(),
            fleet: fleet.into(),
        },
        profiles: profiles
            .iter()
            .map(|p| FleetProfile {
                name: p.to_string(),
                revenue_weight: 1.0,
            })
            .collect(),
        capacity: CapacityModel {
            rps_per_instance: 1.0,
            cold_start_seconds: 120.0,
            cost_per_instance_hour: 1.0,
        },
        max_instances: None,
        budget_per_hour: None,
        initial_instances: 1,
        learn_capacity: None,
        warm_sub_pools: Vec::new(),
        instance_resources: None,
    }
}

fn key(fleet: &str) -> FleetKey {
    FleetKey {
        region: "eu".into(),
        fleet: fleet.into(),
    }
}

fn names(brain: &Brain, fleet: &str) -> Vec<(String, f64)> {
    brain
        .fleet_spec(&key(fleet))
        .expect("fleet")
        .profiles
        .iter()
        .map(|p| (p.name.clone(), p.revenue_weight))
        .collect()
}

#[test]
fn a_routed_profile_joins_its_fleet_and_leaves_the_others() {
    let mut brain = Brain::new(ForecastConfig::default(), PlannerConfig::default());
    brain.add_fleet(spec("web", &["default", "new"]));
    brain.add_fleet(spec("batch", &["batch"]));

    assert!(brain.route_profile("eu", "scheduled-automated", "batch", 0.25));
    assert_eq!(
        names(&brain, "batch"),
        vec![
            ("batch".to_string(), 1.0),
            ("scheduled-automated".to_string(), 0.25)
        ]
    );
    assert!(!brain
        .fleet_spec(&key("web"))
        .unwrap()
        .serves("eu", "scheduled-automated"));
    // The same route again changes nothing; a new weight is taken.
    assert!(!brain.route_profile("eu", "scheduled-automated", "batch", 0.25));
    assert!(brain.route_profile("eu", "scheduled-automated", "batch", 2.0));

    // Re-routed to web: it leaves batch (which keeps its own profile).
    assert!(brain.route_profile("eu", "scheduled-automated", "web", 2.0));
    assert!(!brain
        .fleet_spec(&key("batch"))
        .unwrap()
        .serves("eu", "scheduled-automated"));
    assert!(brain
        .fleet_spec(&key("web"))
        .unwrap()
        .serves("eu", "scheduled-automated"));

    // A fleet's last profile is never taken away (an empty list would mean every profile).
    assert!(brain.route_profile("eu", "batch", "web", 1.0));
    assert_eq!(names(&brain, "batch"), vec![("batch".to_string(), 1.0)]);

    // Unknown fleets and other regions change nothing.
    assert!(!brain.route_profile("eu", "x", "nope", 1.0));
    assert!(!brain.route_profile("us", "x", "web", 1.0));
}

#[test]
fn observations_after_routing_count_in_the_new_fleet_only() {
    let mut brain = Brain::new(ForecastConfig::default(), PlannerConfig::default());
    brain.add_fleet(spec("web", &["default"]));
    brain.add_fleet(spec("batch", &["batch"]));
    let start = 28_000_000 / 1440 * 1440;
    brain.route_profile("eu", "learned-1", "batch", 1.0);
    for m in start..start + 30 {
        brain.observe(m * 60 + 60, "eu", "learned-1", m * 60, 50.0);
        brain.observe(m * 60 + 60, "eu", "default", m * 60, 5.0);
    }
    let now = (start + 30) * 60;
    let batch = brain
        .fleet_forecast(&key("batch"), now, start + 31)
        .expect("batch forecast");
    let web = brain
        .fleet_forecast(&key("web"), now, start + 31)
        .expect("web forecast");
    assert!(batch.point > 40.0, "batch forecast {batch:?}");
    assert!(web.point < 10.0, "web forecast {web:?}");
}
