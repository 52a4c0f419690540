//! One access-log line from one [`AccessEntry`]: nginx's `combined` line with prescale's fields
//! after it, or a JSON object. Runs on the writer thread, never on the request path.
//!
//! Invariants: a line is exactly one line (every byte of client input that is not visible ASCII,
//! and `"` and `\`, is escaped as nginx escapes it, `\xHH`; JSON strings are JSON-escaped); a
//! missing value is `-` in a combined line and `null` in JSON; times are UTC.

use std::io::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::{AccessEntry, LogNames};

/// Appends `entry` as a combined line (newline included):
///
/// `CLIENT - - [TIME] "METHOD TARGET PROTOCOL" STATUS BYTES "REFERER" "USER-AGENT" request_id=ID
/// profile=P region=R fleet=F backend=ADDR upstream_time=S request_time=S`
pub fn combined(out: &mut Vec<u8>, entry: &AccessEntry, names: &LogNames) {
    match entry.client {
        Some(ip) => {
            let _ = write!(out, "{ip}");
        }
        None => out.push(b'-'),
    }
    out.extend_from_slice(b" - - [");
    write_time_local(out, entry.ended);
    out.extend_from_slice(b"] \"");
    match &entry.request {
        Some(request) => {
            escape_into(out, request.method.as_bytes());
            out.push(b' ');
            escape_into(out, &request.target);
            out.push(b' ');
            out.extend_from_slice(request.protocol.as_bytes());
        }
        None => out.push(b'-'),
    }
    let _ = write!(
        out,
        "\" {} {} \"",
        entry.logged_status(),
        entry.body_bytes_sent
    );
    let request = entry.request.as_deref();
    quoted_or_dash(out, request.and_then(|r| r.referer.as_deref()));
    out.extend_from_slice(b"\" \"");
    quoted_or_dash(out, request.and_then(|r| r.user_agent.as_deref()));
    out.extend_from_slice(b"\" request_id=");
    match &entry.request_id {
        Some(id) => escape_into(out, id.as_bytes()),
        None => out.push(b'-'),
    }
    out.extend_from_slice(b" profile=");
    value_or_dash(out, entry.meter.map(|m| names.profile(m)).as_deref());
    out.extend_from_slice(b" region=");
    value_or_dash(out, entry.meter.and_then(|m| names.region(m)));
    out.extend_from_slice(b" fleet=");
    value_or_dash(out, entry.meter.and_then(|m| names.fleet(m)));
    out.extend_from_slice(b" backend=");
    match entry.backend {
        Some(addr) => {
            let _ = write!(out, "{addr}");
        }
        None => out.push(b'-'),
    }
    out.extend_from_slice(b" upstream_time=");
    match entry.upstream_time {
        Some(time) => write_seconds(out, time),
        None => out.push(b'-'),
    }
    out.extend_from_slice(b" request_time=");
    write_seconds(out, entry.request_time);
    out.push(b'\n');
}

/// Appends `entry` as one JSON object and a newline.
pub fn json(out: &mut Vec<u8>, entry: &AccessEntry, names: &LogNames) {
    let request = entry.request.as_deref();
    let text = |bytes: Option<&[u8]>| bytes.map(|b| String::from_utf8_lossy(b).into_owned());
    let profile = entry.meter.map(|m| names.profile(m));
    let line = JsonLine {
        time: rfc3339(entry.ended),
        client: entry.client.map(|ip| ip.to_string()),
        method: request.map(|r| &*r.method),
        target: text(request.map(|r| &*r.target)),
        protocol: request.map(|r| r.protocol),
        status: entry.logged_status(),
        body_bytes_sent: entry.body_bytes_sent,
        referer: text(request.and_then(|r| r.referer.as_deref())),
        user_agent: text(request.and_then(|r| r.user_agent.as_deref())),
        request_id: entry.request_id.as_ref().map(|id| id.as_str()),
        profile: profile.as_deref(),
        region: entry.meter.and_then(|m| names.region(m)),
        fleet: entry.meter.and_then(|m| names.fleet(m)),
        backend: entry.backend.map(|addr| addr.to_string()),
        upstream_time: entry.upstream_time.map(|t| t.as_secs_f64()),
        request_time: entry.request_time.as_secs_f64(),
    };
    // Serialising plain strings and numbers into a Vec cannot fail.
    if serde_json::to_writer(&mut *out, &line).is_ok() {
        out.push(b'\n');
    }
}

#[derive(Serialize)]
struct JsonLine<'a> {
    time: String,
    client: Option<String>,
    method: Option<&'a str>,
    target: Option<String>,
    protocol: Option<&'a str>,
    status: u16,
    body_bytes_sent: u64,
    referer: Option<String>,
    user_agent: Option<String>,
    request_id: Option<&'a str>,
    profile: Option<&'a str>,
    region: Option<&'a str>,
    fleet: Option<&'a str>,
    backend: Option<String>,
    /// Seconds from the first attempt on a backend to the end of the response.
    upstream_time: Option<f64>,
    /// Seconds from the request's head to the end of its response.
    request_time: f64,
}

fn quoted_or_dash(out: &mut Vec<u8>, value: Option<&[u8]>) {
    match value {
        Some(bytes) => escape_into(out, bytes),
        None => out.push(b'-'),
    }
}

fn value_or_dash(out: &mut Vec<u8>, value: Option<&str>) {
    match value {
        Some(text) if !text.is_empty() => escape_into(out, text.as_bytes()),
        _ => out.push(b'-'),
    }
}

/// nginx's escaping of logged variables: `"`, `\`, and bytes outside visible ASCII and space
/// become `\xHH`.
fn escape_into(out: &mut Vec<u8>, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in bytes {
        if b == b'"' || b == b'\\' || !(0x20..0x7f).contains(&b) {
            out.extend_from_slice(&[
                b'\\',
                b'x',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 0xf)],
            ]);
        } else {
            out.push(b);
        }
    }
}

/// Seconds with millisecond resolution, as nginx's `$request_time`.
fn write_seconds(out: &mut Vec<u8>, time: Duration) {
    let millis = time.as_millis();
    let _ = write!(out, "{}.{:03}", millis / 1000, millis % 1000);
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// `DD/Mon/YYYY:HH:MM:SS +0000` (nginx's `$time_local`, in UTC).
fn write_time_local(out: &mut Vec<u8>, time: SystemTime) {
    let civil = CivilTime::of(time);
    let _ = write!(
        out,
        "{:02}/{}/{:04}:{:02}:{:02}:{:02} +0000",
        civil.day,
        MONTHS[usize::from(civil.month - 1)],
        civil.year,
        civil.hour,
        civil.minute,
        civil.second
    );
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ`.
fn rfc3339(time: SystemTime) -> String {
    let civil = CivilTime::of(time);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        civil.year, civil.month, civil.day, civil.hour, civil.minute, civil.second, civil.millis
    )
}

/// A UTC calendar time (proleptic Gregorian), from a `SystemTime` (before 1970: the epoch).
#[derive(Debug, PartialEq, Eq)]
struct CivilTime {
    year: i64,
    month: u8,
    day: u8,
    hour: u8,
    minute: u8,
    second: u8,
    millis: u16,
}

impl CivilTime {
    fn of(time: SystemTime) -> Self {
        let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
        let secs = since.as_secs() as i64;
        let (days, of_day) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
        let (year, month, day) = crate::ingest::parse::civil_from_days(days);
        CivilTime {
            year,
            month: month as u8,
            day: day as u8,
            hour: (of_day / 3600) as u8,
            minute: (of_day / 60 % 60) as u8,
            second: (of_day % 60) as u8,
            millis: since.subsec_millis() as u16,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64, millis: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_millis(millis)
    }

    #[test]
    fn calendar_times_match_known_dates() {
        let cases = [
            (0, "01/Jan/1970:00:00:00 +0000"),
            (951_782_400, "29/Feb/2000:00:00:00 +0000"),
            (1_700_000_000, "14/Nov/2023:22:13:20 +0000"),
            (4_107_542_399, "28/Feb/2100:23:59:59 +0000"),
            (4_133_980_799, "31/Dec/2100:23:59:59 +0000"),
            (1_709_208_000, "29/Feb/2024:12:00:00 +0000"),
        ];
        for (secs, expected) in cases {
            let mut out = Vec::new();
            write_time_local(&mut out, at(secs, 0));
            assert_eq!(String::from_utf8_lossy(&out), expected, "{secs}");
        }
        assert_eq!(rfc3339(at(1_700_000_000, 42)), "2023-11-14T22:13:20.042Z");
    }

    #[test]
    fn client_bytes_are_escaped_as_nginx_escapes_them() {
        let mut out = Vec::new();
        escape_into(&mut out, b"a \"b\" \\ \n\xff~");
        assert_eq!(
            String::from_utf8_lossy(&out),
            "a \\x22b\\x22 \\x5C \\x0A\\xFF~"
        );
    }

    #[test]
    fn seconds_have_millisecond_resolution() {
        let mut out = Vec::new();
        write_seconds(&mut out, Duration::from_micros(1_234_567));
        assert_eq!(String::from_utf8_lossy(&out), "1.234");
    }
}
