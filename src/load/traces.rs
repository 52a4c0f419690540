//! The two demand files `prescale load` replays, as it needs them: the step trace
//! (`timestamp,requests`) at its own resolution and the Azure Functions sample with every function
//! a user. Parsing is `prescale_regions::trace`'s, shared with `prescale replay` (`.gz` is
//! decompressed; every problem names the file and line).

use std::path::Path;

use anyhow::bail;
use http::HeaderValue;
use prescale_regions::trace::{read_trace_file, TraceFile};

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

/// Reads a step trace file (`.gz` is decompressed).
pub fn read_step_trace(path: &Path) -> anyhow::Result<StepTrace> {
    step_trace(read_trace_file(path)?, &path.display().to_string())
}

fn step_trace(file: TraceFile, source: &str) -> anyhow::Result<StepTrace> {
    let rows = match file {
        TraceFile::Steps(rows) => rows,
        TraceFile::Functions(_) => {
            bail!("{source} is the per-function Azure sample: replay it with --azure")
        }
    };
    if rows.rows.len() < 2 {
        bail!("{source}: a single row cannot tell the step length; need two");
    }
    let first = rows.rows[0].timestamp;
    if first < 0 {
        bail!(
            "{source}, line {}: timestamp {first} is before 1970",
            rows.rows[0].line
        );
    }
    Ok(StepTrace {
        step_secs: rows.step_seconds as u64,
        steps: rows
            .rows
            .iter()
            .map(|r| ((r.timestamp - first) as u64, r.requests))
            .collect(),
    })
}

/// Reads the Azure Functions per-minute CSV (`.gz` is decompressed).
pub fn read_azure_trace(path: &Path) -> anyhow::Result<AzureTrace> {
    azure_trace(read_trace_file(path)?, &path.display().to_string())
}

fn azure_trace(file: TraceFile, source: &str) -> anyhow::Result<AzureTrace> {
    let TraceFile::Functions(trace) = file else {
        bail!(
            "{source} is not the per-function Azure sample (header `HashFunction,HashApp,HashOwner,minute_1,...`): replay it with --trace"
        );
    };
    let functions = trace
        .functions
        .into_iter()
        .map(|f| {
            let identity = HeaderValue::from_str(&format!("fn-{}", f.name)).map_err(|_| {
                anyhow::anyhow!(
                    "{source}, line {}: HashFunction is not usable as a user id",
                    f.line
                )
            })?;
            Ok(AzureFunction {
                identity,
                per_minute: f.per_minute,
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(AzureTrace {
        functions,
        minutes: trace.minutes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use prescale_regions::trace::parse_trace_file;
    use std::io::BufRead;

    /// Parses `timestamp,requests` lines: an optional header, then unix seconds and a non-negative
    /// count per line, timestamps strictly increasing. Blank lines are ignored.
    fn parse_step_trace(reader: impl BufRead, source: &str) -> anyhow::Result<StepTrace> {
        step_trace(parse_trace_file(reader, source)?, source)
    }

    /// Parses the wide CSV `HashFunction,HashApp,HashOwner,minute_1..minute_N`.
    fn parse_azure_trace(reader: impl BufRead, source: &str) -> anyhow::Result<AzureTrace> {
        azure_trace(parse_trace_file(reader, source)?, source)
    }

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
        assert!(message("timestamp,requests\n10,1\n20,x\n").contains("line 3"));
        assert!(message("timestamp,requests\n10,1\n20,-1\n").contains("non-negative"));
        assert!(message("timestamp,requests\n10,1,3\n").contains("line 2"));
        assert!(message("timestamp,requests\n20,1\n10,1\n").contains("not after"));
        assert!(message("timestamp,requests\n20,1\n20,1\n").contains("line 3"));
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
        assert!(message(&format!("{header}a,b,c,1\n")).contains("line 2"));
        assert!(message(&format!("{header}a,b,c,1,2,3\n")).contains("line 2"));
        assert!(message(&format!("{header}a,b,c,1,2\na,b,c,1,x\n")).contains("line 3"));
        assert!(message(&format!("{header},b,c,1,2\n")).contains("HashFunction is empty"));
        assert!(message("HashFunction,HashApp,minute_1\n").contains("line 1"));
        assert!(message("HashFunction,HashApp,HashOwner,minute_2\n").contains("minute_1"));
        assert!(message(header).contains("no function rows"));
    }
}
