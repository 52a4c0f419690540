//! Request traces: parsing `timestamp,requests` CSV files (and the wide per-function Azure
//! Functions sample, summed) into a uniform per-minute series.
//!
//! The step is inferred from the timestamps (the greatest common divisor of their differences).
//! Steps shorter than a minute are summed into minutes, longer steps are spread evenly over their
//! minutes. A step missing from the file is zero demand; the minutes it covers are marked absent
//! so that forecasters can tell an outage from a quiet minute.

use std::io::BufRead;
use std::path::Path;

use crate::error::{Error, Result};

/// At most this many minutes (about 19 years) are simulated: a guard against absurd timestamps.
const MAX_TRACE_MINUTES: i64 = 10_000_000;

/// A per-minute request trace.
#[derive(Debug, Clone, PartialEq)]
pub struct Trace {
    /// Unix seconds at the start of minute 0.
    pub start: i64,
    /// Seconds between rows of the source file, as inferred.
    pub step_seconds: i64,
    /// Requests in each minute (missing minutes are zero).
    pub requests: Vec<f64>,
    /// Whether each minute was present in the file (false: a gap, e.g. an outage).
    pub present: Vec<bool>,
}

impl Trace {
    /// Read a trace file; errors name the file and the line.
    pub fn from_path(path: &Path) -> Result<Trace> {
        let file = std::fs::File::open(path).map_err(|source| Error::TraceIo {
            path: path.to_path_buf(),
            source,
        })?;
        Trace::parse(std::io::BufReader::new(file), &path.display().to_string())
    }

    /// Build a trace from per-minute request counts starting at `start` (all minutes present).
    pub fn from_minutes(start: i64, requests: Vec<f64>) -> Trace {
        let present = vec![true; requests.len()];
        Trace {
            start,
            step_seconds: 60,
            requests,
            present,
        }
    }

    /// Parse a trace from CSV text. `origin` names the source in error messages.
    pub fn parse(reader: impl BufRead, origin: &str) -> Result<Trace> {
        let fail = |line: usize, message: String| Error::TraceFormat {
            origin: origin.to_string(),
            line,
            message,
        };
        let mut lines = reader.lines().enumerate().map(|(i, l)| (i + 1, l));
        let header = loop {
            match lines.next() {
                None => return Err(fail(1, "the file is empty: expected a header `timestamp,requests` and at least one row".into())),
                Some((n, Err(e))) => return Err(fail(n, format!("cannot read: {e}"))),
                Some((n, Ok(text))) if !text.trim().is_empty() => break (n, text),
                Some(_) => continue,
            }
        };
        let columns: Vec<String> = header
            .1
            .split(',')
            .map(|c| c.trim().trim_start_matches('\u{feff}').to_ascii_lowercase())
            .collect();
        if columns.first().map(String::as_str) == Some("hashfunction") {
            return parse_azure_wide(lines, &columns, header.0, origin);
        }
        if columns != ["timestamp", "requests"] {
            return Err(fail(
                header.0,
                format!(
                    "expected the header `timestamp,requests`, found `{}`",
                    header.1.trim()
                ),
            ));
        }
        let mut rows: Vec<(i64, f64, usize)> = Vec::new();
        for (n, line) in lines {
            let text = line.map_err(|e| fail(n, format!("cannot read: {e}")))?;
            let text = text.trim();
            if text.is_empty() {
                continue;
            }
            let mut fields = text.split(',');
            let (Some(ts), Some(rq), None) = (fields.next(), fields.next(), fields.next()) else {
                return Err(fail(
                    n,
                    format!("expected two fields `timestamp,requests`, found `{text}`"),
                ));
            };
            let timestamp = parse_timestamp(ts.trim()).ok_or_else(|| {
                fail(
                    n,
                    format!(
                        "timestamp `{}` is not a whole number of unix seconds",
                        ts.trim()
                    ),
                )
            })?;
            let requests: f64 = rq
                .trim()
                .parse()
                .ok()
                .filter(|v: &f64| v.is_finite() && *v >= 0.0)
                .ok_or_else(|| {
                    fail(
                        n,
                        format!("requests `{}` is not a non-negative number", rq.trim()),
                    )
                })?;
            if let Some(&(previous, _, _)) = rows.last() {
                if timestamp <= previous {
                    return Err(fail(
                        n,
                        format!(
                            "timestamp {timestamp} is not after the previous row's {previous}: the trace must be sorted by time with one row per step"
                        ),
                    ));
                }
            }
            rows.push((timestamp, requests, n));
        }
        let Some(&(first, _, _)) = rows.first() else {
            return Err(fail(header.0 + 1, "no data rows after the header".into()));
        };
        let step = rows.windows(2).map(|w| w[1].0 - w[0].0).fold(0, gcd);
        let step = if step == 0 { 60 } else { step };
        if !(60 % step == 0 || step % 60 == 0) {
            let line = rows.get(1).map_or(header.0 + 1, |r| r.2);
            return Err(fail(
                line,
                format!(
                    "the inferred step of {step} s neither divides nor is a multiple of a minute"
                ),
            ));
        }
        let (last, _, last_line) = rows[rows.len() - 1];
        let span_minutes = (last - first) / 60 + (step / 60).max(1);
        if span_minutes > MAX_TRACE_MINUTES {
            return Err(fail(last_line, format!("the trace spans {span_minutes} minutes, more than the {MAX_TRACE_MINUTES} a replay can simulate")));
        }
        let minutes = span_minutes as usize;
        let mut requests = vec![0.0; minutes];
        let mut present = vec![false; minutes];
        for (timestamp, count, _) in rows {
            let offset = timestamp - first;
            if step >= 60 {
                let per = (step / 60) as usize;
                let begin = (offset / 60) as usize;
                for m in begin..(begin + per).min(minutes) {
                    requests[m] += count / per as f64;
                    present[m] = true;
                }
            } else {
                let m = (offset / 60) as usize;
                requests[m] += count;
                present[m] = true;
            }
        }
        Ok(Trace {
            start: first,
            step_seconds: step,
            requests,
            present,
        })
    }

    /// Number of minutes in the trace.
    pub fn len(&self) -> usize {
        self.requests.len()
    }

    /// Whether the trace has no minutes (never true for a parsed trace).
    pub fn is_empty(&self) -> bool {
        self.requests.is_empty()
    }

    /// Unix seconds at the start of minute `m`.
    pub fn minute_start(&self, m: usize) -> i64 {
        self.start + 60 * m as i64
    }

    /// Demand of each minute in requests per second.
    pub fn demand_rps(&self) -> Vec<f64> {
        self.requests.iter().map(|r| r / 60.0).collect()
    }

    /// Write the trace as `timestamp,requests` CSV, one row per present minute.
    pub fn to_csv(&self) -> String {
        let mut out = String::from("timestamp,requests\n");
        for (m, (r, p)) in self.requests.iter().zip(&self.present).enumerate() {
            if *p {
                out.push_str(&format!("{},{}\n", self.minute_start(m), r));
            }
        }
        out
    }
}

fn parse_timestamp(text: &str) -> Option<i64> {
    if let Ok(v) = text.parse::<i64>() {
        return Some(v);
    }
    let v: f64 = text.parse().ok()?;
    (v.is_finite() && v.fract() == 0.0 && v.abs() < 1e15).then_some(v as i64)
}

fn gcd(a: i64, b: i64) -> i64 {
    if b == 0 {
        a.abs()
    } else {
        gcd(b, a % b)
    }
}

/// The Azure Functions sample: `HashFunction,HashApp,HashOwner,minute_1..minute_N`, one row per
/// function; the trace is the sum over functions, minute 1 at unix time 0.
fn parse_azure_wide(
    lines: impl Iterator<Item = (usize, std::io::Result<String>)>,
    columns: &[String],
    header_line: usize,
    origin: &str,
) -> Result<Trace> {
    let fail = |line: usize, message: String| Error::TraceFormat {
        origin: origin.to_string(),
        line,
        message,
    };
    let minutes = columns.len().saturating_sub(3);
    if minutes == 0 || !columns[3..].iter().all(|c| c.starts_with("minute_")) {
        return Err(fail(
            header_line,
            "a wide Azure trace needs the columns HashFunction,HashApp,HashOwner,minute_1,..."
                .into(),
        ));
    }
    let mut requests = vec![0.0; minutes];
    let mut functions = 0usize;
    for (n, line) in lines {
        let text = line.map_err(|e| fail(n, format!("cannot read: {e}")))?;
        if text.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = text.trim().split(',').collect();
        if fields.len() != minutes + 3 {
            return Err(fail(
                n,
                format!("expected {} fields, found {}", minutes + 3, fields.len()),
            ));
        }
        for (m, field) in fields[3..].iter().enumerate() {
            let v: f64 = field
                .trim()
                .parse()
                .ok()
                .filter(|v: &f64| v.is_finite() && *v >= 0.0)
                .ok_or_else(|| {
                    fail(
                        n,
                        format!(
                            "minute_{} value `{field}` is not a non-negative number",
                            m + 1
                        ),
                    )
                })?;
            requests[m] += v;
        }
        functions += 1;
    }
    if functions == 0 {
        return Err(fail(
            header_line + 1,
            "no function rows after the header".into(),
        ));
    }
    let present = vec![true; minutes];
    Ok(Trace {
        start: 0,
        step_seconds: 60,
        requests,
        present,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Trace> {
        Trace::parse(text.as_bytes(), "test.csv")
    }

    fn line_of(err: Error) -> (usize, String) {
        match err {
            Error::TraceFormat { line, message, .. } => (line, message),
            other => panic!("unexpected error {other}"),
        }
    }

    #[test]
    fn per_minute_rows_with_a_gap_are_zero_filled_and_marked_absent() {
        let t = parse("timestamp,requests\n600,10\n660,20\n840,5\n").expect("valid");
        assert_eq!(t.start, 600);
        assert_eq!(t.step_seconds, 60);
        assert_eq!(t.requests, vec![10.0, 20.0, 0.0, 0.0, 5.0]);
        assert_eq!(t.present, vec![true, true, false, false, true]);
    }

    #[test]
    fn sub_minute_steps_are_summed_and_longer_steps_spread() {
        let t = parse("timestamp,requests\n0,1\n30,2\n60,4\n").expect("valid");
        assert_eq!(t.step_seconds, 30);
        assert_eq!(t.requests, vec![3.0, 4.0]);
        let t = parse("timestamp,requests\n0,10\n300,20\n").expect("valid");
        assert_eq!(t.step_seconds, 300);
        assert_eq!(t.len(), 10);
        assert!((t.requests[0] - 2.0).abs() < 1e-12 && (t.requests[9] - 4.0).abs() < 1e-12);
    }

    #[test]
    fn errors_name_the_line() {
        assert_eq!(line_of(parse("").unwrap_err()).0, 1);
        assert_eq!(line_of(parse("timestamp,requests\n").unwrap_err()).0, 2);
        let (line, msg) = line_of(parse("timestamp,requests\n0,1\n60,x\n").unwrap_err());
        assert_eq!(line, 3);
        assert!(msg.contains("`x`"), "{msg}");
        let (line, msg) = line_of(parse("timestamp,requests\n120,1\n60,1\n").unwrap_err());
        assert_eq!(line, 3);
        assert!(msg.contains("sorted"), "{msg}");
        let (line, _) = line_of(parse("time,count\n0,1\n").unwrap_err());
        assert_eq!(line, 1);
        let (line, _) = line_of(parse("timestamp,requests\n0,1,2\n").unwrap_err());
        assert_eq!(line, 2);
        let (line, _) = line_of(parse("timestamp,requests\n0,-1\n").unwrap_err());
        assert_eq!(line, 2);
        let (_, msg) = line_of(parse("timestamp,requests\n0,1\n45,1\n").unwrap_err());
        assert!(msg.contains("step"), "{msg}");
    }

    #[test]
    fn azure_wide_rows_are_summed_per_minute() {
        let t = parse("HashFunction,HashApp,HashOwner,minute_1,minute_2\na,b,c,1,2\nd,e,f,3,0\n")
            .expect("valid");
        assert_eq!(t.requests, vec![4.0, 2.0]);
    }
}
