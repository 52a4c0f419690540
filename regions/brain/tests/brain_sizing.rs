//! Sizing from the profiles: a fleet whose profiles follow different shapes (a diurnal profile
//! and an hourly timer) is sized by the sum of its profiles' forecasts once that sum has beaten
//! the fleet total's own forecast at the lead time; a fleet of one profile is sized by its total.

use prescale_brain::brain::{Brain, FleetKey, FleetProfile, FleetSpec};
use prescale_brain::planner::CapacityModel;
use prescale_config::brain::{ForecastConfig, PlannerConfig};

fn spec(profiles: &[&str]) -> FleetSpec {
    FleetSpec {
        key: FleetKey {
            region: "eu".into(),
            fleet: "web".into(),
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
        initial_instances: 2,
        learn_capacity: None,
        warm_sub_pools: Vec::new(),
        instance_resources: None,
    }
}

/// Interactive: a diurnal curve that grows by a quarter every day (a launch's audience
/// building up). Timer: a burst in the first two minutes of every hour, the same every day. The
/// total's level moves with interactive alone, so scaling the total's shape to its level
/// over-scales the timer's bursts; each profile scaled on its own does not.
fn demand(profile: &str, minute: i64) -> f64 {
    match profile {
        "interactive" => {
            let phase = (minute % 1440) as f64 / 1440.0 * std::f64::consts::TAU;
            let day = (minute / 1440 - START / 1440) as f64;
            (300.0 + 200.0 * phase.sin()) * (1.0 + 0.25 * day)
        }
        _ => {
            if minute % 60 < 2 {
                900.0
            } else {
                20.0
            }
        }
    }
}

/// A day boundary, unix minutes.
const START: i64 = 28_000_000 / 1440 * 1440;

fn run(profiles: &[&str], days: i64) -> Brain {
    let mut brain = Brain::new(ForecastConfig::default(), PlannerConfig::default());
    brain.add_fleet(spec(profiles));
    for m in START..START + days * 1440 {
        brain.poll(m * 60);
        for p in profiles {
            brain.observe(m * 60 + 60, "eu", p, m * 60, demand(p, m));
        }
    }
    brain
}

fn key() -> FleetKey {
    FleetKey {
        region: "eu".into(),
        fleet: "web".into(),
    }
}

#[test]
fn different_profile_shapes_size_the_fleet_by_the_sum_of_their_forecasts() {
    let brain = run(&["interactive", "timer"], 4);
    let status = brain.fleet_status(&key()).expect("status");
    let sizing = &status.sizing;
    eprintln!("{sizing:?}");
    let (total, sum) = (
        sizing.fleet_total_error.expect("scored"),
        sizing.sum_of_profiles_error.expect("scored"),
    );
    assert!(sum < total, "{sizing:?}");
    assert_eq!(sizing.method, "sum_of_profiles", "{sizing:?}");
    assert!(
        status
            .reason
            .contains("sized by the sum of 2 profile forecasts"),
        "{}",
        status.reason
    );
}

#[test]
fn a_single_profile_fleet_is_sized_by_its_total() {
    let brain = run(&["interactive"], 1);
    let status = brain.fleet_status(&key()).expect("status");
    assert_eq!(status.sizing.method, "fleet_total");
    assert_eq!(status.sizing.sum_of_profiles_error, None);
}
