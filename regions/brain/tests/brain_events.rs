//! Scheduled events on top of the forecast: a multiplier applies inside its window only, and a
//! "learn from the last event with the same tag" event uses what the last one actually did.

use prescale_brain::brain::{
    Brain, EventEffect, EventScope, FleetKey, FleetProfile, FleetSpec, ScheduledEvent,
};
use prescale_brain::planner::CapacityModel;
use prescale_config::brain::{ForecastConfig, PlannerConfig};

fn brain() -> (Brain, FleetKey) {
    let key = FleetKey {
        region: "eu".into(),
        fleet: "web".into(),
    };
    let mut brain = Brain::new(ForecastConfig::default(), PlannerConfig::default());
    brain.add_fleet(FleetSpec {
        key: key.clone(),
        profiles: vec![FleetProfile {
            name: "interactive".into(),
            revenue_weight: 1.0,
        }],
        capacity: CapacityModel {
            rps_per_instance: 1.0,
            cold_start_seconds: 60.0,
            cost_per_instance_hour: 1.0,
        },
        max_instances: None,
        budget_per_hour: None,
        initial_instances: 2,
        learn_capacity: None,
        warm_sub_pools: Vec::new(),
        instance_resources: None,
    });
    (brain, key)
}

fn feed(brain: &mut Brain, minutes: std::ops::Range<i64>, requests: impl Fn(i64) -> f64) {
    for m in minutes {
        brain.poll(m * 60);
        brain.observe(m * 60 + 60, "eu", "interactive", m * 60, requests(m));
    }
    brain.poll(0);
}

#[test]
fn a_multiplier_applies_inside_its_window_only() {
    let (mut brain, key) = brain();
    feed(&mut brain, 0..180, |_| 100.0);
    brain.set_event(ScheduledEvent {
        id: "sale".into(),
        tag: "sale".into(),
        scope: EventScope::Profile {
            profile: "interactive".into(),
        },
        start: 200 * 60,
        end: 230 * 60,
        effect: EventEffect::Multiplier { factor: 3.0 },
    });
    let now = 180 * 60;
    let inside = brain
        .fleet_forecast(&key, now, 210)
        .expect("forecast")
        .point;
    let outside = brain
        .fleet_forecast(&key, now, 190)
        .expect("forecast")
        .point;
    assert!((outside - 100.0).abs() < 1.0, "{outside}");
    assert!((inside - 300.0).abs() < 3.0, "{inside}");
}

#[test]
fn learn_from_tag_uses_the_last_event_with_that_tag() {
    let (mut brain, key) = brain();
    let launch = |id: &str, start: i64, effect| ScheduledEvent {
        id: id.into(),
        tag: "launch".into(),
        scope: EventScope::All,
        start: start * 60,
        end: (start + 30) * 60,
        effect,
    };
    // The first launch is announced without a multiplier; traffic doubles while it runs.
    brain.set_event(launch(
        "first",
        120,
        EventEffect::Multiplier { factor: 1.0 },
    ));
    feed(&mut brain, 0..200, |m| {
        if (120..150).contains(&m) {
            200.0
        } else {
            100.0
        }
    });
    let learned = brain
        .learned_multiplier("launch")
        .expect("the finished event taught its tag");
    assert!((learned - 2.0).abs() < 0.35, "learned {learned}");
    brain.set_event(launch("second", 260, EventEffect::LearnFromTag));
    let with_event = brain
        .fleet_forecast(&key, 200 * 60, 270)
        .expect("forecast")
        .point;
    brain.remove_event("second");
    let without = brain
        .fleet_forecast(&key, 200 * 60, 270)
        .expect("forecast")
        .point;
    assert!(
        (with_event / without - learned).abs() < 1e-6,
        "{with_event} vs {without} x {learned}"
    );
}

/// A fleet's series keeps its demand without the event: once its level has caught up with a
/// 4x campaign, the forecast inside the campaign is 4x the demand before it, not 16x (the level
/// that adapted to the campaign, multiplied by the campaign again), and after the campaign it
/// is back at the demand before it.
#[test]
fn a_running_event_is_not_counted_twice_once_the_level_catches_up() {
    let (mut brain, key) = brain();
    brain.set_event(ScheduledEvent {
        id: "campaign".into(),
        tag: "campaign".into(),
        scope: EventScope::All,
        start: 300 * 60,
        end: 420 * 60,
        effect: EventEffect::Multiplier { factor: 4.0 },
    });
    feed(&mut brain, 0..400, |m| {
        if (300..420).contains(&m) {
            400.0
        } else {
            100.0
        }
    });
    let inside = brain
        .fleet_forecast(&key, 400 * 60, 410)
        .expect("forecast")
        .point;
    assert!(
        (inside - 400.0).abs() < 20.0,
        "inside the campaign: {inside}"
    );
    let after = brain
        .fleet_forecast(&key, 400 * 60, 440)
        .expect("forecast")
        .point;
    assert!((after - 100.0).abs() < 10.0, "after the campaign: {after}");
}
