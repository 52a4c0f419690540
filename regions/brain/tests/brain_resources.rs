//! A fleet sized on its binding resource: each minute's demand is the most of its requests and,
//! per resource, what its profiles use of it in the requests an instance serves.

use prescale_brain::brain::{Brain, FleetKey, FleetProfile, FleetSpec, Resources};
use prescale_brain::planner::CapacityModel;
use prescale_config::brain::{ForecastConfig, PlannerConfig};

const START: i64 = 28_000_000 / 1440 * 1440;

fn spec(instance: Option<Resources>) -> FleetSpec {
    FleetSpec {
        key: FleetKey {
            region: "eu".into(),
            fleet: "web".into(),
        },
        profiles: ["render", "upload", "browse"]
            .iter()
            .map(|p| FleetProfile {
                name: p.to_string(),
                revenue_weight: 1.0,
            })
            .collect(),
        capacity: CapacityModel {
            rps_per_instance: 100.0,
            cold_start_seconds: 120.0,
            cost_per_instance_hour: 1.0,
        },
        max_instances: None,
        budget_per_hour: None,
        initial_instances: 1,
        learn_capacity: None,
        warm_sub_pools: Vec::new(),
        instance_resources: instance,
    }
}

fn key() -> FleetKey {
    FleetKey {
        region: "eu".into(),
        fleet: "web".into(),
    }
}

/// 30 minutes of 600 requests/minute per profile; the next minute's forecast point.
fn forecast(brain: &mut Brain) -> f64 {
    for m in START..START + 30 {
        for profile in ["render", "upload", "browse"] {
            brain.observe(m * 60 + 60, "eu", profile, m * 60, 600.0);
        }
    }
    let now = (START + 30) * 60;
    brain
        .fleet_forecast(&key(), now, START + 31)
        .expect("forecast")
        .point
}

fn instance() -> Resources {
    Resources {
        cpu_cores: 4.0,
        memory_mb: 8192.0,
        network_mbps: 1000.0,
        io_ops: 0.0,
    }
}

#[test]
fn without_instance_resources_the_fleet_is_sized_on_requests() {
    let mut brain = Brain::new(ForecastConfig::default(), PlannerConfig::default());
    brain.add_fleet(spec(None));
    brain.set_profile_resources(
        "eu",
        "render",
        Some(Resources {
            cpu_cores: 1.0,
            ..Resources::default()
        }),
    );
    let point = forecast(&mut brain);
    assert!((point - 1800.0).abs() < 50.0, "{point}");
}

#[test]
fn the_binding_resource_sizes_the_fleet() {
    let mut brain = Brain::new(ForecastConfig::default(), PlannerConfig::default());
    brain.add_fleet(spec(Some(instance())));
    // render: 0.2 cores per req/s; 600 req/min = 10 req/s → 2 cores of an instance's 4, which
    // serves 100 req/s: 50 req/s worth of cpu = 3000 requests/minute.
    brain.set_profile_resources(
        "eu",
        "render",
        Some(Resources {
            cpu_cores: 0.2,
            ..Resources::default()
        }),
    );
    // upload: 2 Mbps per req/s → 20 Mbps of 1000: 1 % of an instance = 60 requests/minute of
    // network — less than its own requests; memory and io unused.
    brain.set_profile_resources(
        "eu",
        "upload",
        Some(Resources {
            network_mbps: 2.0,
            ..Resources::default()
        }),
    );
    // browse uses nothing per persona: it counts by its requests only.
    let point = forecast(&mut brain);
    // cpu: 3000 (render) vs requests 1800 vs network 60: cpu binds.
    assert!((point - 3000.0).abs() < 80.0, "{point}");
}

#[test]
fn resources_binding_on_different_profiles_take_the_most_not_the_sum() {
    let mut brain = Brain::new(ForecastConfig::default(), PlannerConfig::default());
    brain.add_fleet(spec(Some(instance())));
    brain.set_profile_resources(
        "eu",
        "render",
        Some(Resources {
            cpu_cores: 0.2,
            ..Resources::default()
        }),
    );
    brain.set_profile_resources(
        "eu",
        "upload",
        Some(Resources {
            memory_mb: 1638.4,
            ..Resources::default()
        }),
    );
    // render cpu: 3000; upload memory: 10 req/s × 1638.4 MB = 16384 of 8192 MB = 2 instances
    // = 200 req/s worth = 12000/minute. The most is memory, 12000 — not 3000 + 12000.
    let point = forecast(&mut brain);
    assert!((point - 12_000.0).abs() < 300.0, "{point}");
}

#[test]
fn a_late_addition_to_a_minute_adds_only_what_its_binding_demand_grew() {
    let mut brain = Brain::new(ForecastConfig::default(), PlannerConfig::default());
    brain.add_fleet(spec(Some(instance())));
    brain.set_profile_resources(
        "eu",
        "render",
        Some(Resources {
            cpu_cores: 0.2,
            ..Resources::default()
        }),
    );
    let now = (START + 1) * 60;
    // Requests of browse first (600), then render's (cpu 3000 equivalent): the minute is 3000,
    // not 3600.
    brain.observe(now, "eu", "browse", START * 60, 600.0);
    brain.observe(now, "eu", "render", START * 60, 600.0);
    // A late correction of browse: the requests (1800) still do not bind.
    brain.observe(now, "eu", "browse", START * 60, 600.0);
    brain.poll(now);
    let view = brain
        .fleet_forecast(&key(), now, START + 1)
        .expect("forecast");
    assert!((view.point - 3000.0).abs() < 1.0, "{view:?}");
}
