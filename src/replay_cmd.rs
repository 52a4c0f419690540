//! `prescale replay`: simulate scaling policies on a request trace and score them (the logic is
//! in `prescale_regions::replay`; this only parses arguments and prints).

use std::path::PathBuf;

use anyhow::Context;
use prescale_regions::replay::events::read_events_file;
use prescale_regions::replay::progress::ReplayProgress;
use prescale_regions::replay::sweep::{self, SweepOutcome};
use prescale_regions::replay::{self, FleetStart, Policy, PolicyScore, ReplaySettings};
use prescale_regions::trace::access_log::read_access_log;
use prescale_regions::trace::Trace;

use crate::exit::CliError;

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum PolicyArg {
    Predictive,
    Reactive,
    Oracle,
    All,
}

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Trace file: CSV `timestamp,requests` (unix seconds, requests in that step; the step is
    /// inferred), or the wide Azure Functions per-function sample (summed).
    #[arg(long, value_name = "FILE", required_unless_present = "access_log")]
    trace: Option<PathBuf>,
    /// Instead of a trace: an nginx or Apache access log in the common or combined format
    /// (`.gz` too), counted per minute; lines that do not parse are skipped and reported by
    /// number on stderr.
    #[arg(long, value_name = "FILE", conflicts_with = "trace")]
    access_log: Option<PathBuf>,
    /// Policy to simulate.
    #[arg(long, value_enum, default_value = "all")]
    policy: PolicyArg,
    /// Requests per second one instance serves.
    #[arg(long)]
    capacity_rps: f64,
    /// Seconds from requesting an instance until it is ready.
    #[arg(long)]
    cold_start: f64,
    /// The reactive (HPA) policy's target utilization.
    #[arg(long, default_value_t = 0.7)]
    target_utilization: f64,
    /// Forecasting and planning settings for the predictive policy: the `[forecast]` and
    /// `[planner]` tables of a prescale config (a whole config, or a file with only those).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Start the reactive and predictive fleets with one instance (the predictive one has no
    /// history either way), and also score each policy's first day alone: a new service's day
    /// one.
    #[arg(long)]
    empty_history: bool,
    /// Instead of one run per policy: the cost / violation frontier of the predictive policy over
    /// `[planner] slo_target` (0.9-0.999, its other settings from --config) against the reactive
    /// (HPA) policy over its target utilization (0.5-0.9), and which HPA points it dominates.
    #[arg(long, conflicts_with_all = ["policy", "target_utilization", "empty_history"])]
    sweep: bool,
    /// Scheduled events the predictive policy is told of, as the live forecaster is told of
    /// those of `/api/v1/events`: a JSON array of objects in that API's form (`tag`, `start`,
    /// `end` in unix seconds, `scope` `{"kind":"all"}`, `effect` a multiplier or
    /// `learn_from_tag`); each policy is also scored inside each event.
    #[arg(long, value_name = "FILE")]
    events: Option<PathBuf>,
    /// Print the scores as a JSON array, one object per policy (with --sweep: one object with
    /// the points and the verdicts).
    #[arg(long)]
    json: bool,
    /// Draw demand, ready capacity per policy and violation minutes to FILE (.svg or .png); with
    /// --sweep, the frontier: violation minutes against cost.
    #[arg(long, value_name = "FILE")]
    plot: Option<PathBuf>,
}

pub fn run(args: Args) -> Result<(), CliError> {
    let (trace, source) = match (&args.trace, &args.access_log) {
        (Some(path), _) => (Trace::from_path(path).map_err(CliError::input)?, path),
        (None, Some(path)) => {
            let log = read_access_log(path).map_err(CliError::input)?;
            eprintln!(
                "{}: {} requests over {} minutes",
                path.display(),
                log.requests,
                log.trace.len()
            );
            if log.bad.count > 0 {
                eprintln!("{}: {}", path.display(), log.bad);
            }
            (log.trace, path)
        }
        (None, None) => {
            return Err(CliError::input(anyhow::anyhow!(
                "give --trace FILE or --access-log FILE"
            )))
        }
    };
    let policies: Vec<Policy> = match args.policy {
        PolicyArg::Predictive => vec![Policy::Predictive],
        PolicyArg::Reactive => vec![Policy::Reactive],
        PolicyArg::Oracle => vec![Policy::Oracle],
        PolicyArg::All => Policy::ALL.to_vec(),
    };
    let brain = match &args.config {
        Some(path) => prescale_config::load_brain_file(path).map_err(CliError::input)?,
        None => prescale_config::BrainConfig::default(),
    };
    let events = match &args.events {
        Some(path) => read_events_file(path, &trace).map_err(CliError::input)?,
        None => Vec::new(),
    };
    let settings = ReplaySettings {
        capacity_rps: args.capacity_rps,
        cold_start_seconds: args.cold_start,
        target_utilization: args.target_utilization,
        forecast: brain.forecast,
        planner: brain.planner,
        start: if args.empty_history {
            FleetStart::OneInstance
        } else {
            FleetStart::SizedToFirstMinute
        },
        events,
    };
    settings.validate().map_err(CliError::input)?;
    let title = format!(
        "{}: {} req/s per instance, {} s cold start",
        source.file_name().map_or_else(
            || source.display().to_string(),
            |n| n.to_string_lossy().into_owned()
        ),
        args.capacity_rps,
        args.cold_start
    );
    if args.sweep {
        return run_sweep(&trace, &settings, &title, &args);
    }
    let progress = ReplayProgress::new(trace.len() as u64 * policies.len() as u64);
    let outcome = replay::replay(&trace, &policies, &settings, |done| progress.update(done))
        .map_err(CliError::input)?;
    progress.finish();
    if let Some(path) = &args.plot {
        prescale_regions::plot::draw(&outcome, args.capacity_rps, &title, path)
            .map_err(CliError::runtime)?;
    }
    if args.json {
        let text =
            serde_json::to_string_pretty(&outcome.scores).context("encoding the scores as JSON")?;
        println!("{text}");
    } else {
        print_table(&outcome.scores, trace.len());
    }
    Ok(())
}

fn run_sweep(
    trace: &Trace,
    settings: &ReplaySettings,
    title: &str,
    args: &Args,
) -> Result<(), CliError> {
    let points = (sweep::SLO_TARGETS.len() + sweep::TARGET_UTILIZATIONS.len()) as u64;
    let progress = ReplayProgress::new(trace.len() as u64 * points);
    let outcome =
        sweep::sweep(trace, settings, &|done| progress.update(done)).map_err(CliError::input)?;
    progress.finish();
    if let Some(path) = &args.plot {
        prescale_regions::plot::draw_frontier(&outcome, &format!("frontier of {title}"), path)
            .map_err(CliError::runtime)?;
    }
    if args.json {
        let text = serde_json::to_string_pretty(&outcome).context("encoding the sweep as JSON")?;
        println!("{text}");
    } else {
        print_sweep(&outcome);
    }
    Ok(())
}

fn print_sweep(outcome: &SweepOutcome) {
    println!(
        "{} minutes simulated; oracle {:.1} instance-minutes",
        outcome.minutes, outcome.oracle_instance_minutes
    );
    println!(
        "{:<11} {:<23} {:>15} {:>11} {:>17} {:>15}",
        "policy", "setting", "violation min", "unserved", "instance-minutes", "cost vs oracle"
    );
    for p in &outcome.points {
        println!(
            "{:<11} {:<23} {:>15} {:>10.4}% {:>17.1} {:>15.3}",
            p.policy,
            format!("{} {}", p.setting, p.value),
            p.slo_violation_minutes,
            p.unserved_fraction * 100.0,
            p.instance_minutes,
            p.cost_vs_oracle
        );
    }
    println!();
    println!("each HPA point against the cheapest predictive point that dominates it");
    println!("(no more violation minutes and no more cost, and fewer of one)");
    let dominated = outcome
        .hpa
        .iter()
        .filter(|v| v.dominated_by_slo_target.is_some())
        .count();
    for (verdict, hpa) in outcome.hpa.iter().zip(outcome.reactive()) {
        let by = verdict.dominated_by_slo_target.and_then(|slo| {
            outcome
                .predictive()
                .find(|p| p.value == slo)
                .map(|p| (slo, p))
        });
        let against = match by {
            Some((slo, p)) => format!(
                "dominated by slo_target {slo}: {} violation min, {:.3}x its cost",
                p.slo_violation_minutes,
                p.instance_minutes / hpa.instance_minutes
            ),
            None => "not dominated".to_string(),
        };
        println!(
            "HPA target utilization {:<4} {:>6} violation min  {against}",
            hpa.value, hpa.slo_violation_minutes
        );
    }
    println!(
        "the predictive frontier dominates HPA's at {dominated} of {} targets",
        outcome.hpa.len()
    );
}

fn print_table(scores: &[PolicyScore], minutes: usize) {
    println!("{minutes} minutes simulated");
    println!(
        "{:<11} {:>15} {:>11} {:>17} {:>15} {:>6}",
        "policy", "violation min", "unserved", "instance-minutes", "cost vs oracle", "MASE"
    );
    for s in scores {
        let mase = s
            .forecast_mase
            .map_or_else(|| "-".to_string(), |m| format!("{m:.3}"));
        println!(
            "{:<11} {:>15} {:>10.4}% {:>17.1} {:>15.3} {:>6}",
            s.policy,
            s.slo_violation_minutes,
            s.unserved_fraction * 100.0,
            s.instance_minutes,
            s.cost_vs_oracle,
            mase
        );
    }
    print_events(scores);
    let Some(minutes) = scores
        .iter()
        .find_map(|s| s.first_day.as_ref().map(|d| d.minutes))
    else {
        return;
    };
    println!();
    println!("first day alone ({minutes} minutes), from one instance and no history");
    println!(
        "{:<11} {:>15} {:>11} {:>17} {:>15}",
        "policy", "violation min", "unserved", "instance-minutes", "cost vs oracle"
    );
    for s in scores {
        if let Some(day) = &s.first_day {
            println!(
                "{:<11} {:>15} {:>10.4}% {:>17.1} {:>15.3}",
                s.policy,
                day.slo_violation_minutes,
                day.unserved_fraction * 100.0,
                day.instance_minutes,
                day.cost_vs_oracle
            );
        }
    }
}

/// Violation minutes of each policy inside each event's window.
fn print_events(scores: &[PolicyScore]) {
    let Some(first) = scores.first().filter(|s| !s.events.is_empty()) else {
        return;
    };
    println!();
    println!("inside each scheduled event: violation minutes (ready instance-minutes)");
    print!("{:<16} {:<16} {:>8}", "event", "tag", "minutes");
    for s in scores {
        print!(" {:>22}", s.policy);
    }
    println!();
    for (i, event) in first.events.iter().enumerate() {
        print!("{:<16} {:<16} {:>8}", event.id, event.tag, event.minutes);
        for s in scores {
            let window = &s.events[i];
            print!(
                " {:>22}",
                format!(
                    "{} ({:.0})",
                    window.slo_violation_minutes, window.ready_instance_minutes
                )
            );
        }
        println!();
    }
}
