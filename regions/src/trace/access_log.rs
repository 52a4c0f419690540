//! Access logs as traces: the lines of an nginx or Apache log in the `common` or `combined`
//! format (`.gz` too), counted per minute of their time, so an operator replays their own
//! traffic without a conversion step.
//!
//! A line is `HOST IDENT USER [DD/Mon/YYYY:HH:MM:SS ±HHMM] "REQUEST" STATUS BYTES` and, in the
//! combined format, `"REFERER" "USER-AGENT"` and anything else after (nginx's custom formats
//! that start like `combined` parse too). Each line is one request at its `[time]` (converted to
//! UTC by its offset); lines may be out of order, as servers log a request when it ends. Bytes
//! are read as bytes: a log with non-UTF-8 user agents parses.
//!
//! A line that does not parse is counted and skipped, and the first [`MAX_REPORTED_BAD_LINES`]
//! are reported with their number and reason ([`BadLines`]); a log without any parseable line is
//! an error naming its first line's problem, so a file in another format is refused rather than
//! replayed as silence. Blank lines are ignored. A minute without lines is a minute without
//! requests (every minute of the span is present).

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::Path;

use super::{open_maybe_gzipped, Trace, MAX_TRACE_MINUTES};
use crate::error::{Error, Result};
use crate::report::time::{days_from_civil, days_in_month};

/// Bad lines reported by number; the rest are only counted.
pub const MAX_REPORTED_BAD_LINES: usize = 20;

/// Longest line read (a line this long is bad, and is skipped without being held whole).
const MAX_LINE_BYTES: usize = 64 * 1024;

/// A per-minute trace read from an access log, with what was skipped.
#[derive(Debug, Clone, PartialEq)]
pub struct AccessLogTrace {
    pub trace: Trace,
    /// Requests counted (parseable lines).
    pub requests: u64,
    pub bad: BadLines,
}

/// Lines that do not parse as an access log entry.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BadLines {
    pub count: u64,
    /// The first [`MAX_REPORTED_BAD_LINES`] of them, in file order.
    pub first: Vec<BadLine>,
}

/// One line that does not parse, by number (1-based) and why.
#[derive(Debug, Clone, PartialEq)]
pub struct BadLine {
    pub line: u64,
    pub reason: String,
}

impl std::fmt::Display for BadLines {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} line(s) skipped", self.count)?;
        for bad in &self.first {
            write!(f, "\n  line {}: {}", bad.line, bad.reason)?;
        }
        if self.count > self.first.len() as u64 {
            write!(f, "\n  and {} more", self.count - self.first.len() as u64)?;
        }
        Ok(())
    }
}

/// Open and parse an access log (`.gz` is decompressed, also when several files were
/// concatenated); errors name the file.
pub fn read_access_log(path: &Path) -> Result<AccessLogTrace> {
    parse_access_log(open_maybe_gzipped(path)?, &path.display().to_string())
}

/// Parse access log lines into per-minute requests. `origin` names the source in errors.
pub fn parse_access_log(mut reader: impl BufRead, origin: &str) -> Result<AccessLogTrace> {
    let fail = |line: u64, message: String| Error::TraceFormat {
        origin: origin.to_string(),
        line: usize::try_from(line).unwrap_or(usize::MAX),
        message,
    };
    // Requests per minute (unix minute), not one entry per line: a log of a billion lines
    // holds only its minutes.
    let mut per_minute: BTreeMap<i64, u64> = BTreeMap::new();
    let mut counted = 0u64;
    let mut bad = BadLines::default();
    let mut buf = Vec::new();
    let mut number = 0u64;
    let mut earliest: Option<(i64, u64)> = None;
    let mut latest: Option<(i64, u64)> = None;
    loop {
        buf.clear();
        number += 1;
        let read = read_bounded_line(&mut reader, &mut buf)
            .map_err(|e| fail(number, format!("cannot read: {e}")))?;
        let parsed = match read {
            LineRead::End => break,
            LineRead::TooLong => Err(format!("longer than {MAX_LINE_BYTES} bytes")),
            LineRead::Line => {
                let line = trim_ascii(&buf);
                if line.is_empty() {
                    continue;
                }
                parse_line(line)
            }
        };
        match parsed {
            Ok(time) => {
                if earliest.is_none_or(|(t, _)| time < t) {
                    earliest = Some((time, number));
                }
                if latest.is_none_or(|(t, _)| time > t) {
                    latest = Some((time, number));
                }
                *per_minute.entry(time.div_euclid(60)).or_default() += 1;
                counted += 1;
            }
            Err(reason) => {
                bad.count += 1;
                if bad.first.len() < MAX_REPORTED_BAD_LINES {
                    bad.first.push(BadLine {
                        line: number,
                        reason,
                    });
                }
            }
        }
    }
    let (Some((first, first_line)), Some((last, last_line))) = (earliest, latest) else {
        return Err(match bad.first.first() {
            Some(b) => fail(
                b.line,
                format!(
                    "not an access log line in the common or combined format ({}); no line of the file is",
                    b.reason
                ),
            ),
            None => fail(1, "the access log is empty".into()),
        });
    };
    let start = first.div_euclid(60) * 60;
    let minutes = (last.div_euclid(60) * 60 - start) / 60 + 1;
    if minutes > MAX_TRACE_MINUTES {
        return Err(fail(
            last_line,
            format!(
                "its time is {minutes} minutes after line {first_line}'s; at most {MAX_TRACE_MINUTES} minutes can be replayed"
            ),
        ));
    }
    let mut requests = vec![0.0; minutes as usize];
    for (minute, count) in per_minute {
        requests[(minute - start / 60) as usize] = count as f64;
    }
    Ok(AccessLogTrace {
        trace: Trace::from_minutes(start, requests),
        requests: counted,
        bad,
    })
}

enum LineRead {
    Line,
    TooLong,
    End,
}

/// Reads one line (without its `\n`) into `buf`, at most [`MAX_LINE_BYTES`] of it; a longer
/// line is consumed to its end and reported as too long.
fn read_bounded_line(reader: &mut impl BufRead, buf: &mut Vec<u8>) -> std::io::Result<LineRead> {
    let mut any = false;
    let mut too_long = false;
    loop {
        let available = match reader.fill_buf() {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if available.is_empty() {
            return Ok(match (any, too_long) {
                (false, _) => LineRead::End,
                (true, true) => LineRead::TooLong,
                (true, false) => LineRead::Line,
            });
        }
        any = true;
        let (chunk, found_end) = match available.iter().position(|&b| b == b'\n') {
            Some(at) => (&available[..at], Some(at + 1)),
            None => (available, None),
        };
        if !too_long {
            if buf.len() + chunk.len() > MAX_LINE_BYTES {
                too_long = true;
                buf.clear();
            } else {
                buf.extend_from_slice(chunk);
            }
        }
        let used = found_end.unwrap_or(available.len());
        reader.consume(used);
        if found_end.is_some() {
            return Ok(if too_long {
                LineRead::TooLong
            } else {
                LineRead::Line
            });
        }
    }
}

fn trim_ascii(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |at| at + 1);
    &bytes[start..end]
}

/// The unix time of one log line, or why it is not an entry.
fn parse_line(line: &[u8]) -> std::result::Result<i64, String> {
    let open = line
        .iter()
        .position(|&b| b == b'[')
        .ok_or("no `[time]` field")?;
    let prefix: Vec<&[u8]> = line[..open]
        .split(|&b| b == b' ')
        .filter(|f| !f.is_empty())
        .collect();
    if prefix.len() < 3 {
        return Err("expected `HOST IDENT USER` before the `[time]` field".into());
    }
    let rest = &line[open + 1..];
    let close = rest
        .iter()
        .position(|&b| b == b']')
        .ok_or("the `[time]` field is not closed")?;
    let time = parse_time(&rest[..close])?;
    let rest = rest[close + 1..]
        .strip_prefix(b" \"")
        .ok_or("expected ` \"REQUEST\"` after the `[time]` field")?;
    let end = quoted_end(rest).ok_or("the `\"REQUEST\"` field is not closed")?;
    let mut fields = rest[end + 1..]
        .split(|&b| b == b' ')
        .filter(|f| !f.is_empty());
    let status = fields.next().ok_or("no status after the request")?;
    if !(status.len() == 3 && status.iter().all(u8::is_ascii_digit)) {
        return Err(format!(
            "status `{}` is not three digits",
            String::from_utf8_lossy(status)
        ));
    }
    let bytes = fields.next().ok_or("no byte count after the status")?;
    if !(bytes == b"-" || (!bytes.is_empty() && bytes.iter().all(u8::is_ascii_digit))) {
        return Err(format!(
            "byte count `{}` is neither a number nor `-`",
            String::from_utf8_lossy(bytes)
        ));
    }
    Ok(time)
}

/// Where the quoted field starting at `text` ends (its closing `"`), skipping `\"` and `\\`
/// (Apache's escapes; nginx writes `\x22`).
fn quoted_end(text: &[u8]) -> Option<usize> {
    let mut at = 0;
    while at < text.len() {
        match text[at] {
            b'\\' => at += 2,
            b'"' => return Some(at),
            _ => at += 1,
        }
    }
    None
}

const MONTHS: [&[u8; 3]; 12] = [
    b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec",
];

/// `DD/Mon/YYYY:HH:MM:SS ±HHMM` (nginx's `$time_local`, Apache's `%t`) as unix seconds.
fn parse_time(text: &[u8]) -> std::result::Result<i64, String> {
    let shown = || String::from_utf8_lossy(text).into_owned();
    let bad = || format!("time `{}` is not `DD/Mon/YYYY:HH:MM:SS +HHMM`", shown());
    let [d1, d2, b'/', m1, m2, m3, b'/', y1, y2, y3, y4, b':', h1, h2, b':', n1, n2, b':', s1, s2, b' ', sign, z1, z2, z3, z4] =
        text
    else {
        return Err(bad());
    };
    let digits = |ds: &[u8]| -> Option<i64> {
        ds.iter().try_fold(0i64, |acc, &d| {
            d.is_ascii_digit().then(|| acc * 10 + i64::from(d - b'0'))
        })
    };
    let number = |ds: &[u8]| digits(ds).ok_or_else(bad);
    let day = number(&[*d1, *d2])?;
    let month = MONTHS
        .iter()
        .position(|m| m.eq_ignore_ascii_case(&[*m1, *m2, *m3]))
        .ok_or_else(bad)? as i64
        + 1;
    let year = number(&[*y1, *y2, *y3, *y4])?;
    let (hour, minute, second) = (
        number(&[*h1, *h2])?,
        number(&[*n1, *n2])?,
        number(&[*s1, *s2])?,
    );
    let (zone_hours, zone_minutes) = (number(&[*z1, *z2])?, number(&[*z3, *z4])?);
    let sign = match sign {
        b'+' => 1,
        b'-' => -1,
        _ => return Err(bad()),
    };
    if day < 1 || day > days_in_month(year, month) {
        return Err(format!("time `{}`: no such day", shown()));
    }
    // 60: a leap second, counted in the minute it ends.
    if hour > 23 || minute > 59 || second > 60 || zone_hours > 23 || zone_minutes > 59 {
        return Err(format!("time `{}`: no such time of day or offset", shown()));
    }
    let offset = sign * (zone_hours * 3600 + zone_minutes * 60);
    Ok(
        days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second.min(59)
            - offset,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<AccessLogTrace> {
        parse_access_log(text.as_bytes(), "test.log")
    }

    const COMBINED: &str = r#"203.0.113.7 - - [10/Oct/2000:13:55:36 -0700] "GET /apache_pb.gif HTTP/1.0" 200 2326 "http://www.example.com/start.html" "Mozilla/4.08 [en] (Win98; I ;Nav)""#;

    #[test]
    fn combined_and_common_lines_count_in_their_utc_minute() {
        let text = format!(
            "{COMBINED}\n\
             ::1 - frank [10/Oct/2000:20:55:59 +0000] \"POST /api HTTP/1.1\" 201 -\n\
             10.0.0.1 - - [10/Oct/2000:22:56:00 +0200] \"GET / HTTP/1.1\" 304 0 \"-\" \"curl/8\"\n"
        );
        let log = parse(&text).unwrap();
        assert_eq!(log.requests, 3);
        assert_eq!(log.bad, BadLines::default());
        // 2000-10-10T20:55:36Z
        assert_eq!(log.trace.start, 971_211_300);
        assert_eq!(log.trace.requests, vec![2.0, 1.0]);
        assert_eq!(log.trace.present, vec![true, true]);
        assert_eq!(log.trace.step_seconds, 60);
    }

    #[test]
    fn prescales_own_combined_lines_parse() {
        // As the proxy's access log writes them: combined, then its own fields.
        let text = "127.0.0.1 - - [03/Dec/2026:23:10:00 +0000] \"POST /api/items HTTP/1.1\" 200 \
                    12 \"-\" \"e2e \\x22agent\\x22\" request_id=0123abcd profile=interactive \
                    region=eu fleet=web backend=127.0.0.1:9001 upstream_time=0.002 \
                    request_time=0.003\n\
                    127.0.0.1 - - [03/Dec/2026:23:10:01 +0000] \"-\" 431 0 \"-\" \"-\" \
                    request_id=- profile=- region=- fleet=- backend=- upstream_time=- \
                    request_time=0.000\n";
        let log = parse(text).unwrap();
        assert_eq!(log.requests, 2, "{:?}", log.bad);
        assert_eq!(log.trace.requests, vec![2.0]);
    }

    #[test]
    fn out_of_order_lines_and_gaps_are_minutes_of_their_own() {
        let line = |time: &str| format!("h - - [{time} +0000] \"GET / HTTP/1.1\" 200 5\n");
        let text = [
            line("01/Jan/2024:00:03:10"),
            line("01/Jan/2024:00:00:59"),
            line("01/Jan/2024:00:03:00"),
            "\n".into(),
        ]
        .concat();
        let log = parse(&text).unwrap();
        assert_eq!(log.trace.requests, vec![1.0, 0.0, 0.0, 2.0]);
    }

    #[test]
    fn bad_lines_are_counted_and_reported_by_number() {
        let mut text = format!("{COMBINED}\n");
        text.push_str("not a log line\n");
        text.push_str(
            "h - - [31/Feb/2024:00:00:00 +0000] \"GET / HTTP/1.1\" 200 5\n\
             h - - [01/Jan/2024:00:00:00 +0000] \"GET / HTTP/1.1\" 2000 5\n\
             h - - [01/Jan/2024:00:00:00 +0000] \"GET / HTTP/1.1 200 5\n\
             h - - [01/Foo/2024:00:00:00 +0000] \"GET / HTTP/1.1\" 200 5\n",
        );
        for _ in 0..30 {
            text.push_str("garbage\n");
        }
        let log = parse(&text).unwrap();
        assert_eq!(log.requests, 1);
        assert_eq!(log.bad.count, 35);
        assert_eq!(log.bad.first.len(), MAX_REPORTED_BAD_LINES);
        let lines: Vec<u64> = log.bad.first.iter().map(|b| b.line).take(5).collect();
        assert_eq!(lines, vec![2, 3, 4, 5, 6]);
        assert!(
            log.bad.first[1].reason.contains("no such day"),
            "{:?}",
            log.bad
        );
        assert!(
            log.bad.first[2].reason.contains("three digits"),
            "{:?}",
            log.bad
        );
        assert!(
            log.bad.first[3].reason.contains("not closed"),
            "{:?}",
            log.bad
        );
        let shown = log.bad.to_string();
        assert!(shown.starts_with("35 line(s) skipped"), "{shown}");
        assert!(shown.ends_with("and 15 more"), "{shown}");
    }

    #[test]
    fn escaped_quotes_and_non_utf8_bytes_parse() {
        let mut bytes =
            br#"h - - [01/Jan/2024:00:00:00 +0000] "GET /a\"b HTTP/1.1" 200 5 "-" "agent "#
                .to_vec();
        bytes.extend_from_slice(&[0xff, 0xfe, b'"', b'\n']);
        let log = parse_access_log(&bytes[..], "x").unwrap();
        assert_eq!(log.requests, 1);
        assert_eq!(log.bad.count, 0);
    }

    #[test]
    fn a_file_in_another_format_is_refused_naming_its_first_line() {
        let err = parse("timestamp,requests\n0,5\n60,7\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("line 1") && err.contains("common or combined"),
            "{err}"
        );
        let err = parse("\n\n").unwrap_err().to_string();
        assert!(err.contains("empty"), "{err}");
    }

    #[test]
    fn an_overlong_line_is_bad_and_never_held_whole() {
        let long = "x".repeat(MAX_LINE_BYTES + 10);
        let text = format!("{long}\n{COMBINED}\n{long}");
        let log = parse(&text).unwrap();
        assert_eq!(log.requests, 1);
        assert_eq!(log.bad.count, 2);
        assert_eq!(log.bad.first[0].line, 1);
        assert_eq!(log.bad.first[1].line, 3);
        assert!(log.bad.first[0].reason.contains("longer than"));
    }

    #[test]
    fn a_span_too_long_to_replay_is_refused() {
        let text = "h - - [01/Jan/1980:00:00:00 +0000] \"GET / HTTP/1.1\" 200 5\n\
                    h - - [01/Jan/9000:00:00:00 +0000] \"GET / HTTP/1.1\" 200 5\n";
        let err = parse(text).unwrap_err().to_string();
        assert!(
            err.contains("line 2") && err.contains("after line 1"),
            "{err}"
        );
    }

    #[test]
    fn gzipped_logs_are_read() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log.gz");
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        writeln!(gz, "{COMBINED}").unwrap();
        std::fs::write(&path, gz.finish().unwrap()).unwrap();
        let log = read_access_log(&path).unwrap();
        assert_eq!(log.requests, 1);
    }

    #[test]
    fn any_bytes_never_panic() {
        for seed in 0u64..2000 {
            let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
            let len = (seed % 90) as usize;
            let mut bytes: Vec<u8> = COMBINED.as_bytes().to_vec();
            for _ in 0..len.min(bytes.len()) {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let at = (state % bytes.len() as u64) as usize;
                bytes[at] = (state >> 32) as u8;
            }
            bytes.truncate((state % (bytes.len() as u64 + 1)) as usize);
            let _ = parse_access_log(&bytes[..], "x");
        }
    }
}
