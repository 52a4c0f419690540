//! `prescale load`: sends real HTTP/1.1 traffic with many user identities (`X-User-Id`) to a
//! target, open-loop, from one of three demand sources — a constant rate over uniform users, a
//! `timestamp,requests` trace, or the Azure Functions per-function sample — and reports the
//! achieved rate, status classes and latency percentiles.
//!
//! This file owns the arguments and their validation. The demand files are read in
//! `load/traces.rs`, turned into timed sends in `load/schedule.rs`, sent in `load/runner.rs` and
//! summarised in `load/report.rs`.

#[path = "load/report.rs"]
mod report;
#[path = "load/runner.rs"]
mod runner;
#[path = "load/schedule.rs"]
mod schedule;
#[path = "load/traces.rs"]
mod traces;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::ArgGroup;
use http::Uri;

use crate::exit::CliError;
use schedule::Schedule;

const DEFAULT_USERS: u64 = 1000;

#[derive(clap::Args, Debug)]
#[command(group(ArgGroup::new("demand").required(true).args(["rps", "trace", "azure"])))]
pub struct Args {
    /// URL every request is sent to (http:// only), e.g. http://127.0.0.1:8080/
    #[arg(long, value_name = "URL", value_parser = parse_target)]
    target: Uri,

    /// Send at this constant rate (requests per second) over `--users` uniform users.
    #[arg(long, value_name = "N", value_parser = parse_positive,
          allow_negative_numbers = true)]
    rps: Option<f64>,

    /// Replay a `timestamp,requests` CSV trace (unix seconds, requests per step; `.gz` is fine).
    #[arg(long, value_name = "FILE")]
    trace: Option<PathBuf>,

    /// Replay the Azure Functions per-minute CSV
    /// (`HashFunction,HashApp,HashOwner,minute_1..`): every function is one user.
    #[arg(long, value_name = "FILE")]
    azure: Option<PathBuf>,

    /// With `--azure`: send this fraction (0 < P ≤ 1) of each function's requests, keeping at
    /// least one request in every minute the function was active, so every function keeps its
    /// pattern in time while the heavy ones shrink [default: 1].
    #[arg(long, value_name = "P", requires = "azure", value_parser = parse_fraction,
          allow_negative_numbers = true)]
    scale: Option<f64>,

    /// Number of distinct users (`user-0` .. `user-<N-1>`) for `--rps` and `--trace`
    /// [default: 1000].
    #[arg(long, value_name = "N", conflicts_with = "azure",
          value_parser = clap::value_parser!(u64).range(1..))]
    users: Option<u64>,

    /// Replay a trace this many times faster than real time (60: a minute per second).
    #[arg(long, value_name = "X", conflicts_with = "rps", value_parser = parse_positive,
          allow_negative_numbers = true)]
    speedup: Option<f64>,

    /// Longest run time, e.g. 30s, 5m, 1h, 500ms. A trace ends earlier if it is shorter.
    #[arg(long, value_name = "D", default_value = "60s", value_parser = parse_duration)]
    duration: Duration,

    /// Most requests in flight at once; sends beyond it wait and are counted as late.
    #[arg(long, value_name = "N", default_value_t = 256,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    concurrency: u32,

    /// Give up on a request (counted as an error) after this long.
    #[arg(long, value_name = "D", default_value = "30s", value_parser = parse_duration)]
    timeout: Duration,

    /// Seed for choosing users and phases, for repeatable runs [default: random].
    #[arg(long, value_name = "N")]
    seed: Option<u64>,

    /// Interval between progress lines on stderr.
    #[arg(long, value_name = "D", default_value = "5s", value_parser = parse_duration)]
    progress: Duration,

    /// Print the summary as one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> Result<(), CliError> {
    let seed = args.seed.unwrap_or_else(rand::random);
    let users = args.users.unwrap_or(DEFAULT_USERS);
    let speedup = args.speedup.unwrap_or(1.0);
    let (schedule, mode, named_users) = if let Some(rps) = args.rps {
        let mode = format!("uniform {rps} req/s over {users} users");
        (Schedule::uniform(rps, users, seed), mode, Vec::new())
    } else if let Some(path) = &args.trace {
        let trace = traces::read_step_trace(path).map_err(CliError::input)?;
        let mode = format!(
            "trace {} ({} steps of {} s) at {speedup}x over {users} users",
            path.display(),
            trace.steps.len(),
            trace.step_secs
        );
        (
            Schedule::trace(&trace, speedup, users, seed),
            mode,
            Vec::new(),
        )
    } else if let Some(path) = &args.azure {
        let trace = traces::read_azure_trace(path).map_err(CliError::input)?;
        let scale = args.scale.unwrap_or(1.0);
        let mode = format!(
            "azure {} ({} functions x {} minutes) at {speedup}x, scale {scale}",
            path.display(),
            trace.functions.len(),
            trace.minutes
        );
        let names = trace
            .functions
            .iter()
            .map(|function| function.identity.clone())
            .collect();
        (Schedule::azure(trace, speedup, scale, seed), mode, names)
    } else {
        return Err(CliError::input(anyhow::anyhow!(
            "give one of --rps, --trace or --azure"
        )));
    };

    let settings = runner::RunSettings {
        target: args.target,
        mode,
        duration: args.duration,
        concurrency: usize::try_from(args.concurrency).unwrap_or(usize::MAX),
        request_timeout: args.timeout,
        progress_every: args.progress,
        named_users,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .thread_name("load-worker")
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let summary = runtime.block_on(runner::run(settings, schedule))?;
    runtime.shutdown_timeout(Duration::from_secs(1));

    if args.json {
        let line = serde_json::to_string(&summary).context("encoding the summary")?;
        println!("{line}");
    } else {
        println!("{summary}");
    }
    Ok(())
}

fn parse_target(text: &str) -> Result<Uri, String> {
    let uri: Uri = text
        .parse()
        .map_err(|e| format!("`{text}` is not a URL: {e}"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => return Err("https is not supported; use an http:// URL".into()),
        _ => return Err(format!("`{text}` must start with http://")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("`{text}` has no host"));
    }
    Ok(uri)
}

fn parse_positive(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(value) if value.is_finite() && value > 0.0 => Ok(value),
        _ => Err(format!("`{text}` is not a positive number")),
    }
}

fn parse_fraction(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(value) if value.is_finite() && value > 0.0 && value <= 1.0 => Ok(value),
        _ => Err(format!("`{text}` is not a fraction in (0, 1]")),
    }
}

/// Parses `500ms`, `30s`, `5m`, `1h` or a bare number of seconds; fractions are allowed.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(split);
    let seconds_per_unit = match unit.trim() {
        "ms" => 0.001,
        "" | "s" => 1.0,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        other => {
            return Err(format!(
                "unknown unit `{other}` in `{text}`; use ms, s, m or h"
            ))
        }
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration like 30s, 5m or 500ms"))?;
    let seconds = value * seconds_per_unit;
    if !(0.001..=366.0 * 86_400.0).contains(&seconds) {
        return Err(format!("`{text}` must be at least 1ms and at most a year"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_common_units() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("12"), Ok(Duration::from_secs(12)));
        for bad in [
            "0.0000001s",
            "",
            "0s",
            "-1s",
            "5 parsecs",
            "s",
            "1e400",
            "1..2s",
            "99999999h",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn targets_must_be_plain_http_urls() {
        assert!(parse_target("http://127.0.0.1:8080/").is_ok());
        assert!(parse_target("http://localhost:8080/api?x=1").is_ok());
        assert!(parse_target("https://example.com/").is_err());
        assert!(parse_target("127.0.0.1:8080").is_err());
        assert!(parse_target("not a url").is_err());
    }

    #[test]
    fn rates_must_be_positive() {
        assert_eq!(parse_positive("2.5"), Ok(2.5));
        for bad in ["0", "-1", "inf", "NaN", "lots"] {
            assert!(parse_positive(bad).is_err(), "{bad}");
        }
    }
}
