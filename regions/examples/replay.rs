//! Replay a trace with the library alone (no proxy build needed), for exploring planner settings:
//!
//! `cargo run --release -p prescale-regions --example replay -- TRACE CAPACITY_RPS COLD_START_S
//! [SLO_TARGET [SCALE_DOWN_BAND [STABILIZATION_MINUTES]]]`
//!
//! Prints one JSON score per policy, like `prescale replay --json`. With
//! `REPLAY_DEBUG_DECISIONS=FROM-TO` (minutes from the trace start) the predictive policy's
//! decisions in that range are printed to stderr with their tiers and reasons; with
//! `REPLAY_DEBUG_VIOLATIONS=1` each policy's violated minutes (`minute:demand/ready`);
//! `REPLAY_EMPTY_HISTORY=1` starts from one instance (`--empty-history`), `REPLAY_EVENTS=FILE`
//! tells it of scheduled events (`--events`); `REPLAY_SWEEP=1`
//! prints the `--sweep` outcome as JSON instead.

use std::path::Path;
use std::process::ExitCode;

use prescale_regions::replay::{self, Policy, ReplaySettings};
use prescale_regions::trace::Trace;

const USAGE: &str = "usage: replay TRACE CAPACITY_RPS COLD_START_SECONDS [SLO_TARGET [SCALE_DOWN_BAND [STABILIZATION_MINUTES]]]";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [trace, capacity, cold_start, ..] = args.as_slice() else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    let (Ok(capacity_rps), Ok(cold_start_seconds)) = (capacity.parse(), cold_start.parse()) else {
        eprintln!("error: CAPACITY_RPS and COLD_START_SECONDS must be numbers\n{USAGE}");
        return ExitCode::from(2);
    };
    let trace = match Trace::from_path(Path::new(trace)) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let mut settings = ReplaySettings {
        capacity_rps,
        cold_start_seconds,
        ..ReplaySettings::default()
    };
    if let Some(v) = args.get(3).and_then(|s| s.parse().ok()) {
        settings.planner.slo_target = v;
    }
    if let Some(v) = args.get(4).and_then(|s| s.parse().ok()) {
        settings.planner.scale_down_band = v;
    }
    if let Some(v) = args.get(5).and_then(|s| s.parse().ok()) {
        settings.planner.stabilization_minutes = v;
    }
    if let Some(file) = std::env::var_os("REPLAY_EVENTS") {
        match replay::events::read_events_file(Path::new(&file), &trace) {
            Ok(events) => settings.events = events,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        }
    }
    if std::env::var_os("REPLAY_EMPTY_HISTORY").is_some() {
        settings.start = replay::FleetStart::OneInstance;
    }
    if std::env::var_os("REPLAY_SWEEP").is_some() {
        return match replay::sweep::sweep(&trace, &settings, &|_| {}) {
            Ok(outcome) => match serde_json::to_string(&outcome) {
                Ok(line) => {
                    println!("{line}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(1)
                }
            },
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(2)
            }
        };
    }
    let outcome = match replay::replay(&trace, &Policy::ALL, &settings, |_| {}) {
        Ok(outcome) => outcome,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some((from, to)) = std::env::var("REPLAY_DEBUG_DECISIONS")
        .ok()
        .and_then(|range| {
            let (a, b) = range.split_once('-')?;
            Some((a.parse::<i64>().ok()?, b.parse::<i64>().ok()?))
        })
    {
        for run in &outcome.runs {
            for d in &run.decisions {
                let minute = (d.at - trace.start) / 60;
                if (from..to).contains(&minute) {
                    eprintln!("{minute} {:?} {}", d.tiers, d.reason);
                }
            }
        }
    }
    if std::env::var_os("REPLAY_DEBUG_VIOLATIONS").is_some() {
        for run in &outcome.runs {
            let minutes: Vec<String> = run
                .ready
                .iter()
                .zip(&outcome.demand_rps)
                .enumerate()
                .filter(|(_, (r, d))| **d > **r as f64 * capacity_rps)
                .map(|(m, (r, d))| format!("{m}:{d:.0}/{r}"))
                .collect();
            eprintln!("{} {}", run.policy, minutes.join(" "));
        }
    }
    for score in &outcome.scores {
        match serde_json::to_string(score) {
            Ok(line) => println!("{line}"),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(1);
            }
        }
    }
    ExitCode::SUCCESS
}
