//! Reading the two demand files `prescale load` replays: the step trace (`timestamp,requests`,
//! optionally gzip-compressed) and the Azure Functions per-minute wide CSV. Every problem is an
//! error naming the file and line; nothing here panics on input.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;

use anyhow::{anyhow, bail, Context};
use flate2::read::MultiGzDecoder;
use http::HeaderValue;

/// A demand trace: request counts per fixed-length step.
#[derive(Debug, Clone, PartialEq)]
pub struct StepTrace {
    /// The step length in seconds, inferred as the smallest gap between consecutive timestamps.
    pub step_secs: u64,
    /// `(seconds since the first row, requests in that step)`, strictly increasing in time.
    /// Missing steps (gaps) have no entry: zero demand.
    pub steps: Vec<(u64, f64)>,
}

/// The Azure Functions sample: every function is one user with its own per-minute counts.
#[derive(Debug, Clone)]
pub struct AzureTrace {
    pub functions: Vec<AzureFunction>,
    /// The number of `minute_N` columns.
    pub minutes: usize,
}

#[derive(Debug, Clone)]
pub struct AzureFunction {
    /// The user identity sent in `X-User-Id`: `fn-` followed by the HashFunction value.
    pub identity: HeaderValue,
    /// Invocations in each minute.
    pub per_minute: Vec<u32>,
}

fn open(path: &Path) -> anyhow::Result<Box<dyn BufRead>> {
    let file = File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let gzipped = path
        .extension()
        .is_some_and(|ext| ext.eq_ignore_ascii_case("gz"));
    Ok(if gzipped {
        Box::new(BufReader::new(MultiGzDecoder::new(file)))
    } else {
        Box::new(BufReader::new(file))
    })
}

/// Reads a step trace file (`.gz` is decompressed).
pub fn read_step_trace(path: &Path) -> anyhow::Result<StepTrace> {
    parse_step_trace(open(path)?, &path.display().to_string())
}

/// Parses `timestamp,requests` lines: an optional header, then unix seconds and a non-negative
/// count per line, timestamps strictly increasing. Blank lines are ignored.
pub fn parse_step_trace(reader: impl BufRead, source: &str) -> anyhow::Result<StepTrace> {
    let mut rows: Vec<(u64, f64)> = Vec::new();
    for (index, line) in reader.lines().enumerate() {
        let number = index + 1;
        let line = line.with_context(|| format!("{source}:{number}: cannot read line"))?;
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if number == 1 && line.starts_with(|c: char| c.is_ascii_alphabetic()) {
            let header: Vec<&str> = line.split(',').map(str::trim).collect();
            if header != ["timestamp", "requests"] {
                bail!("{source}:1: expected the header `timestamp,requests`, found `{line}`");
            }
            continue;
        }
        let row = parse_step_row(line)
            .map_err(|reason| anyhow!("{source}:{number}: {reason} (line `{}`)", clip(line)))?;
        if let Some(&(previous, _)) = rows.last() {
            if row.0 <= previous {
                bail!(
                    "{source}:{number}: timestamp {} is not after the previous one ({previous}); \
                     the trace must be sorted by time without duplicates",
                    row.0
                );
            }
        }
        rows.push(row);
    }
    let Some(&(first, _)) = rows.first() else {
        bail!("{source}: the trace has no data rows");
    };
    let step_secs = rows
        .windows(2)
        .map(|pair| pair[1].0 - pair[0].0)
        .min()
        .ok_or_else(|| anyhow!("{source}: a single row cannot tell the step length; need two"))?;
    let steps = rows
        .into_iter()
        .map(|(ts, count)| (ts - first, count))
        .collect();
    Ok(StepTrace { step_secs, steps })
}

fn parse_step_row(line: &str) -> Result<(u64, f64), String> {
    let mut fields = line.split(',').map(str::trim);
    let (Some(timestamp), Some(requests), None) = (fields.next(), fields.next(), fields.next())
    else {
        return Err("expected two fields `timestamp,requests`".into());
    };
    let timestamp: u64 = timestamp
        .parse()
        .map_err(|_| format!("timestamp `{}` is not whole unix seconds", clip(timestamp)))?;
    let requests: f64 = requests
        .parse()
        .ok()
        .filter(|count: &f64| count.is_finite() && *count >= 0.0)
        .ok_or_else(|| format!("requests `{}` is not a non-negative number", clip(requests)))?;
    Ok((timestamp, requests))
}

/// Reads the Azure Functions per-minute CSV (`.gz` is decompressed).
pub fn read_azure_trace(path: &Path) -> anyhow::Result<AzureTrace> {
    parse_azure_trace(open(path)?, &path.display().to_string())
}

/// Parses the wide CSV `HashFunction,HashApp,HashOwner,minute_1..minute_N`.
pub fn parse_azure_trace(reader: impl BufRead, source: &str) -> anyhow::Result<AzureTrace> {
    const LEADING: [&str; 3] = ["HashFunction", "HashApp", "HashOwner"];
    let mut lines = reader.lines().enumerate();
    let header = match lines.next() {
        Some((_, line)) => line.with_context(|| format!("{source}:1: cannot read line"))?,
        None => bail!("{source}: the file is empty"),
    };
    let columns: Vec<&str> = header.trim().split(',').map(str::trim).collect();
    if columns.len() <= LEADING.len() || columns[..LEADING.len()] != LEADING {
        bail!(
            "{source}:1: expected the header `HashFunction,HashApp,HashOwner,minute_1,...`, \
             found `{}`",
            clip(header.trim())
        );
    }
    for (offset, column) in columns[LEADING.len()..].iter().enumerate() {
        let expected = format!("minute_{}", offset + 1);
        if *column != expected {
            bail!(
                "{source}:1: column {} should be `{expected}`, found `{column}`",
                offset + 4
            );
        }
    }
    let minutes = columns.len() - LEADING.len();

    let mut functions = Vec::new();
    for (index, line) in lines {
        let number = index + 1;
        let line = line.with_context(|| format!("{source}:{number}: cannot read line"))?;
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let function = parse_azure_row(line, minutes)
            .map_err(|reason| anyhow!("{source}:{number}: {reason}"))?;
        functions.push(function);
    }
    if functions.is_empty() {
        bail!("{source}: the file has no function rows");
    }
    Ok(AzureTrace { functions, minutes })
}

fn parse_azure_row(line: &str, minutes: usize) -> Result<AzureFunction, String> {
    let mut fields = line.split(',').map(str::trim);
    let hash_function = fields.next().unwrap_or_default();
    if hash_function.is_empty() {
        return Err("HashFunction is empty".into());
    }
    let identity = HeaderValue::from_str(&format!("fn-{hash_function}")).map_err(|_| {
        format!(
            "HashFunction `{}` is not usable as a user id",
            clip(hash_function)
        )
    })?;
    // HashApp and HashOwner are not needed: the function is the user.
    let (Some(_app), Some(_owner)) = (fields.next(), fields.next()) else {
        return Err(format!("expected {} fields, found fewer", minutes + 3));
    };
    let mut per_minute = Vec::with_capacity(minutes);
    for (offset, field) in fields.enumerate() {
        if offset >= minutes {
            return Err(format!("more than the header's {} fields", minutes + 3));
        }
        let count: u32 = field.parse().map_err(|_| {
            format!(
                "minute_{} value `{}` is not a non-negative whole number",
                offset + 1,
                clip(field)
            )
        })?;
        per_minute.push(count);
    }
    if per_minute.len() != minutes {
        return Err(format!(
            "expected {} fields, found {}",
            minutes + 3,
            per_minute.len() + 3
        ));
    }
    Ok(AzureFunction {
        identity,
        per_minute,
    })
}

/// Shortens a quoted piece of input so error messages stay one readable line.
fn clip(text: &str) -> String {
    const LIMIT: usize = 60;
    if text.chars().count() <= LIMIT {
        text.to_string()
    } else {
        let head: String = text.chars().take(LIMIT).collect();
        format!("{head}…")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(text: &str) -> anyhow::Result<StepTrace> {
        parse_step_trace(text.as_bytes(), "t.csv")
    }

    fn azure(text: &str) -> anyhow::Result<AzureTrace> {
        parse_azure_trace(text.as_bytes(), "a.csv")
    }

    #[test]
    fn step_trace_infers_the_step_and_keeps_gaps() {
        let trace = step("timestamp,requests\n1000,5\n1060,6\n1240,7\n").unwrap();
        assert_eq!(trace.step_secs, 60);
        assert_eq!(trace.steps, vec![(0, 5.0), (60, 6.0), (240, 7.0)]);
    }

    #[test]
    fn step_trace_header_is_optional_and_crlf_is_fine() {
        let trace = step("10,1\r\n11,2.5\r\n\r\n").unwrap();
        assert_eq!(trace.step_secs, 1);
        assert_eq!(trace.steps, vec![(0, 1.0), (1, 2.5)]);
    }

    #[test]
    fn step_trace_errors_name_the_line() {
        let message = |text: &str| format!("{:#}", step(text).unwrap_err());
        assert!(message("timestamp,requests\n10,1\n20,x\n").contains("t.csv:3:"));
        assert!(message("timestamp,requests\n10,1\n20,-1\n").contains("non-negative"));
        assert!(message("timestamp,requests\n10,1,3\n").contains("t.csv:2:"));
        assert!(message("timestamp,requests\n20,1\n10,1\n").contains("not after"));
        assert!(message("timestamp,requests\n20,1\n20,1\n").contains("t.csv:3:"));
        assert!(message("time,count\n20,1\n").contains("header"));
        assert!(message("timestamp,requests\n").contains("no data rows"));
        assert!(message("timestamp,requests\n10,1\n").contains("single row"));
    }

    #[test]
    fn azure_rows_become_users_with_per_minute_counts() {
        let trace = azure(
            "HashFunction,HashApp,HashOwner,minute_1,minute_2\nabc,app,own,1,0\ndef,app,own,0,3\n",
        )
        .unwrap();
        assert_eq!(trace.minutes, 2);
        assert_eq!(trace.functions.len(), 2);
        assert_eq!(trace.functions[0].identity, "fn-abc");
        assert_eq!(trace.functions[1].per_minute, vec![0, 3]);
    }

    #[test]
    fn azure_errors_name_the_line() {
        let header = "HashFunction,HashApp,HashOwner,minute_1,minute_2\n";
        let message = |text: &str| format!("{:#}", azure(text).unwrap_err());
        assert!(message(&format!("{header}a,b,c,1\n")).contains("a.csv:2:"));
        assert!(message(&format!("{header}a,b,c,1,2,3\n")).contains("a.csv:2:"));
        assert!(message(&format!("{header}a,b,c,1,2\na,b,c,1,x\n")).contains("a.csv:3:"));
        assert!(message(&format!("{header},b,c,1,2\n")).contains("HashFunction is empty"));
        assert!(message("HashFunction,HashApp,minute_1\n").contains("a.csv:1:"));
        assert!(message("HashFunction,HashApp,HashOwner,minute_2\n").contains("minute_1"));
        assert!(message(header).contains("no function rows"));
    }
}
