//! Request traces: parsing `timestamp,requests` CSV files and the wide per-function Azure
//! Functions sample ([`TraceFile`], shared by `prescale replay` and `prescale load`), and turning
//! them into a uniform per-minute series ([`Trace`], the Azure functions summed).
//!
//! The step is inferred from the timestamps (the greatest common divisor of their differences).
//! Steps shorter than a minute are summed into minutes, longer steps are spread evenly over their
//! minutes. A step missing from the file is zero demand; the minutes it covers are marked absent
//! so that forecasters can tell an outage from a quiet minute. Access logs are read by
//! [`access_log`].

pub mod access_log;

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
    /// Read a trace file (`.gz` is decompressed); errors name the file and the line.
    pub fn from_path(path: &Path) -> Result<Trace> {
        Trace::from_file(read_trace_file(path)?, &path.display().to_string())
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
        Trace::from_file(parse_trace_file(reader, origin)?, origin)
    }

    /// Per-minute demand from a parsed file: steps shorter than a minute are summed, longer ones
    /// spread evenly; the Azure sample is summed over functions, minute 1 at unix time 0.
    pub fn from_file(file: TraceFile, origin: &str) -> Result<Trace> {
        let rows = match file {
            TraceFile::Steps(rows) => rows,
            TraceFile::Functions(functions) => {
                let mut requests = vec![0.0; functions.minutes];
                for function in &functions.functions {
                    for (total, count) in requests.iter_mut().zip(&function.per_minute) {
                        *total += *count as f64;
                    }
                }
                return Ok(Trace::from_minutes(0, requests));
            }
        };
        let fail = |line: usize, message: String| Error::TraceFormat {
            origin: origin.to_string(),
            line,
            message,
        };
        let step = rows.step_seconds;
        if !(60 % step == 0 || step % 60 == 0) {
            let line = rows.rows.get(1).map_or(1, |r| r.line);
            return Err(fail(
                line,
                format!(
                    "the inferred step of {step} s neither divides nor is a multiple of a minute"
                ),
            ));
        }
        let (first, last) = (rows.rows[0].timestamp, &rows.rows[rows.rows.len() - 1]);
        let span_minutes = (last.timestamp - first) / 60 + (step / 60).max(1);
        if span_minutes > MAX_TRACE_MINUTES {
            return Err(fail(last.line, format!("the trace spans {span_minutes} minutes, more than the {MAX_TRACE_MINUTES} a replay can simulate")));
        }
        let minutes = span_minutes as usize;
        let mut requests = vec![0.0; minutes];
        let mut present = vec![false; minutes];
        for row in &rows.rows {
            let offset = row.timestamp - first;
            if step >= 60 {
                let per = (step / 60) as usize;
                let begin = (offset / 60) as usize;
                for m in begin..(begin + per).min(minutes) {
                    requests[m] += row.requests / per as f64;
                    present[m] = true;
                }
            } else {
                let m = (offset / 60) as usize;
                requests[m] += row.requests;
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
    /// The first `minutes` minutes (all of it if shorter).
    pub fn first_minutes(&self, minutes: usize) -> Trace {
        let n = minutes.min(self.requests.len());
        Trace {
            start: self.start,
            step_seconds: self.step_seconds,
            requests: self.requests[..n].to_vec(),
            present: self.present[..n].to_vec(),
        }
    }

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

/// A trace file as written, before it becomes per-minute demand.
#[derive(Debug, Clone, PartialEq)]
pub enum TraceFile {
    /// `timestamp,requests` rows.
    Steps(StepRows),
    /// The wide per-function Azure Functions sample.
    Functions(FunctionTrace),
}

/// The rows of a `timestamp,requests` file: at least one, sorted, with the step inferred as the
/// greatest common divisor of the gaps (60 s for a single row).
#[derive(Debug, Clone, PartialEq)]
pub struct StepRows {
    pub step_seconds: i64,
    pub rows: Vec<StepRow>,
}

/// One row of a step trace and the line it came from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepRow {
    pub timestamp: i64,
    pub requests: f64,
    pub line: usize,
}

/// `HashFunction,HashApp,HashOwner,minute_1..minute_N`: per-minute counts of each function.
#[derive(Debug, Clone, PartialEq)]
pub struct FunctionTrace {
    /// The number of `minute_N` columns.
    pub minutes: usize,
    pub functions: Vec<FunctionRow>,
}

/// One function of the Azure sample.
#[derive(Debug, Clone, PartialEq)]
pub struct FunctionRow {
    /// The `HashFunction` value (never empty).
    pub name: String,
    pub line: usize,
    /// Invocations in each minute (`minutes` of them).
    pub per_minute: Vec<u32>,
}

/// Open and parse a trace file (`.gz` is decompressed).
pub fn read_trace_file(path: &Path) -> Result<TraceFile> {
    parse_trace_file(open_maybe_gzipped(path)?, &path.display().to_string())
}

/// A buffered reader of `path`, decompressed when its name ends in `.gz` (concatenated gzip
/// members too, as rotated logs are joined).
pub(crate) fn open_maybe_gzipped(path: &Path) -> Result<Box<dyn BufRead>> {
    let file = std::fs::File::open(path).map_err(|source| Error::TraceIo {
        path: path.to_path_buf(),
        source,
    })?;
    let gzipped = path
        .extension()
        .is_some_and(|ext| ext.eq_ignore_ascii_case("gz"));
    Ok(if gzipped {
        Box::new(std::io::BufReader::new(flate2::read::MultiGzDecoder::new(
            file,
        )))
    } else {
        Box::new(std::io::BufReader::new(file))
    })
}

/// Parse a step trace (the header `timestamp,requests` is optional) or the Azure sample (told
/// apart by its header). Every problem names the line; nothing here panics on input.
pub fn parse_trace_file(reader: impl BufRead, origin: &str) -> Result<TraceFile> {
    let fail = |line: usize, message: String| Error::TraceFormat {
        origin: origin.to_string(),
        line,
        message,
    };
    let mut lines = reader.lines().enumerate().map(|(i, l)| (i + 1, l));
    let (first_line, first) = loop {
        match lines.next() {
            None => return Err(fail(
                1,
                "the file is empty: expected a header `timestamp,requests` and at least one row"
                    .into(),
            )),
            Some((n, Err(e))) => return Err(fail(n, format!("cannot read: {e}"))),
            Some((n, Ok(text))) if !text.trim().is_empty() => break (n, text),
            Some(_) => continue,
        }
    };
    let first = first.trim().trim_start_matches('\u{feff}').to_string();
    let columns: Vec<&str> = first.split(',').map(str::trim).collect();
    if columns
        .first()
        .is_some_and(|c| c.eq_ignore_ascii_case("hashfunction"))
    {
        return parse_functions(lines, &columns, first_line, origin).map(TraceFile::Functions);
    }
    let mut rows: Vec<StepRow> = Vec::new();
    let header = first.starts_with(|c: char| c.is_ascii_alphabetic());
    if header {
        let lower: Vec<String> = columns.iter().map(|c| c.to_ascii_lowercase()).collect();
        if lower != ["timestamp", "requests"] {
            return Err(fail(
                first_line,
                format!(
                    "expected the header `timestamp,requests`, found `{}`",
                    clip(&first)
                ),
            ));
        }
    } else {
        rows.push(parse_step_row(&first, first_line, origin)?);
    }
    for (n, line) in lines {
        let text = line.map_err(|e| fail(n, format!("cannot read: {e}")))?;
        let text = text.trim();
        if text.is_empty() {
            continue;
        }
        let row = parse_step_row(text, n, origin)?;
        if let Some(previous) = rows.last() {
            if row.timestamp <= previous.timestamp {
                return Err(fail(
                    n,
                    format!(
                        "timestamp {} is not after the previous row's {}: the trace must be sorted by time with one row per step",
                        row.timestamp, previous.timestamp
                    ),
                ));
            }
        }
        rows.push(row);
    }
    if rows.is_empty() {
        return Err(fail(first_line + 1, "no data rows after the header".into()));
    }
    let step = rows
        .windows(2)
        .map(|w| w[1].timestamp - w[0].timestamp)
        .fold(0, gcd);
    Ok(TraceFile::Steps(StepRows {
        step_seconds: if step == 0 { 60 } else { step },
        rows,
    }))
}

fn parse_step_row(text: &str, line: usize, origin: &str) -> Result<StepRow> {
    let fail = |message: String| Error::TraceFormat {
        origin: origin.to_string(),
        line,
        message,
    };
    let mut fields = text.split(',').map(str::trim);
    let (Some(ts), Some(rq), None) = (fields.next(), fields.next(), fields.next()) else {
        return Err(fail(format!(
            "expected two fields `timestamp,requests`, found `{}`",
            clip(text)
        )));
    };
    let timestamp = parse_timestamp(ts).ok_or_else(|| {
        fail(format!(
            "timestamp `{}` is not a whole number of unix seconds",
            clip(ts)
        ))
    })?;
    let requests: f64 = rq
        .parse()
        .ok()
        .filter(|v: &f64| v.is_finite() && *v >= 0.0)
        .ok_or_else(|| {
            fail(format!(
                "requests `{}` is not a non-negative number",
                clip(rq)
            ))
        })?;
    Ok(StepRow {
        timestamp,
        requests,
        line,
    })
}

fn parse_functions(
    lines: impl Iterator<Item = (usize, std::io::Result<String>)>,
    columns: &[&str],
    header_line: usize,
    origin: &str,
) -> Result<FunctionTrace> {
    let fail = |line: usize, message: String| Error::TraceFormat {
        origin: origin.to_string(),
        line,
        message,
    };
    const LEADING: [&str; 3] = ["hashfunction", "hashapp", "hashowner"];
    let leading_ok = columns.len() > LEADING.len()
        && columns[..LEADING.len()]
            .iter()
            .zip(LEADING)
            .all(|(c, expected)| c.eq_ignore_ascii_case(expected));
    if !leading_ok {
        return Err(fail(
            header_line,
            "a wide Azure trace needs the columns HashFunction,HashApp,HashOwner,minute_1,..."
                .into(),
        ));
    }
    for (offset, column) in columns[LEADING.len()..].iter().enumerate() {
        let expected = format!("minute_{}", offset + 1);
        if !column.eq_ignore_ascii_case(&expected) {
            return Err(fail(
                header_line,
                format!(
                    "column {} should be `{expected}`, found `{}`",
                    offset + LEADING.len() + 1,
                    clip(column)
                ),
            ));
        }
    }
    let minutes = columns.len() - LEADING.len();
    let mut functions = Vec::new();
    for (n, line) in lines {
        let text = line.map_err(|e| fail(n, format!("cannot read: {e}")))?;
        let text = text.trim();
        if text.is_empty() {
            continue;
        }
        let fields: Vec<&str> = text.split(',').map(str::trim).collect();
        if fields.len() != minutes + LEADING.len() {
            return Err(fail(
                n,
                format!(
                    "expected {} fields, found {}",
                    minutes + LEADING.len(),
                    fields.len()
                ),
            ));
        }
        if fields[0].is_empty() {
            return Err(fail(n, "HashFunction is empty".into()));
        }
        let mut per_minute = Vec::with_capacity(minutes);
        for (m, field) in fields[LEADING.len()..].iter().enumerate() {
            let count: u32 = field.parse().map_err(|_| {
                fail(
                    n,
                    format!(
                        "minute_{} value `{}` is not a non-negative whole number",
                        m + 1,
                        clip(field)
                    ),
                )
            })?;
            per_minute.push(count);
        }
        functions.push(FunctionRow {
            name: fields[0].to_string(),
            line: n,
            per_minute,
        });
    }
    if functions.is_empty() {
        return Err(fail(
            header_line + 1,
            "no function rows after the header".into(),
        ));
    }
    Ok(FunctionTrace { minutes, functions })
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
