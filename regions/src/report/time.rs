//! Report times: parsing `--from`/`--to` (unix seconds or RFC 3339) and writing minutes as
//! UTC clock text. Every time here is node time (a sped-up node's clock runs ahead of the wall).

use super::ReportError;

/// Unix seconds from `input`: a whole number of seconds, or an RFC 3339 date-time such as
/// `2026-12-01T10:00:00Z` or `2026-12-01T11:00:00+01:00` (fractions of a second are dropped).
pub fn parse_time(input: &str) -> Result<u64, String> {
    let text = input.trim();
    if text.is_empty() {
        return Err("empty time: give unix seconds or RFC 3339 (2026-12-01T10:00:00Z)".into());
    }
    if text.bytes().all(|b| b.is_ascii_digit()) {
        return text
            .parse::<u64>()
            .map_err(|_| format!("`{text}` is too large for unix seconds"));
    }
    parse_rfc3339(text).ok_or_else(|| {
        format!("`{text}` is neither unix seconds nor RFC 3339 (e.g. 2026-12-01T10:00:00Z)")
    })
}

/// Checks a `[from, to)` pair named by the flags or parameters that gave it.
pub fn check_period(
    from: Option<u64>,
    to: Option<u64>,
    from_name: &str,
    to_name: &str,
) -> Result<(), ReportError> {
    if let (Some(from), Some(to)) = (from, to) {
        if from >= to {
            return Err(ReportError::Period(format!(
                "{from_name} {} is not before {to_name} {}",
                clock_text(from),
                clock_text(to)
            )));
        }
    }
    Ok(())
}

fn parse_rfc3339(text: &str) -> Option<u64> {
    let bytes = text.as_bytes();
    if bytes.len() < 20 {
        return None;
    }
    let number = |range: std::ops::Range<usize>| -> Option<i64> {
        let part = text.get(range)?;
        part.bytes()
            .all(|b| b.is_ascii_digit())
            .then(|| part.parse().ok())
            .flatten()
    };
    let separators_ok = bytes[4] == b'-'
        && bytes[7] == b'-'
        && matches!(bytes[10], b'T' | b't' | b' ')
        && bytes[13] == b':'
        && bytes[16] == b':';
    if !separators_ok {
        return None;
    }
    let (year, month, day) = (number(0..4)?, number(5..7)?, number(8..10)?);
    let (hour, minute, second) = (number(11..13)?, number(14..16)?, number(17..19)?);
    if !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let mut rest = &text[19..];
    if let Some(fraction) = rest.strip_prefix('.') {
        let digits = fraction.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        rest = &fraction[digits..];
    }
    let offset_secs = match rest {
        "Z" | "z" => 0,
        _ => {
            let sign = match rest.as_bytes().first()? {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let offset = rest.get(1..)?;
            let (h, m) = offset.split_once(':')?;
            if h.len() != 2 || m.len() != 2 {
                return None;
            }
            let (h, m): (i64, i64) = (h.parse().ok()?, m.parse().ok()?);
            if h > 23 || m > 59 {
                return None;
            }
            sign * (h * 3600 + m * 60)
        }
    };
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second.min(59) - offset_secs;
    u64::try_from(secs).ok()
}

pub(crate) fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm).
pub(crate) fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let yoe = year.rem_euclid(400);
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// A UTC calendar date and time of day.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CivilTime {
    pub year: i64,
    pub month: i64,
    pub day: i64,
    pub hour: u64,
    pub minute: u64,
    pub second: u64,
}

/// The UTC date and time of unix seconds (Howard Hinnant's algorithm).
pub fn civil_time(secs: u64) -> CivilTime {
    let days = (secs / 86_400) as i64;
    let of_day = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    CivilTime {
        year: yoe + era * 400 + i64::from(month <= 2),
        month,
        day,
        hour: of_day / 3600,
        minute: of_day % 3600 / 60,
        second: of_day % 60,
    }
}

/// `YYYY-MM-DD HH:MM` (UTC) of unix seconds.
pub fn clock_text(secs: u64) -> String {
    let t = civil_time(secs);
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}",
        t.year, t.month, t.day, t.hour, t.minute
    )
}

/// `HH:MM` (UTC) of unix seconds: axis labels within a day.
pub fn time_of_day_text(secs: u64) -> String {
    let of_day = secs % 86_400;
    format!("{:02}:{:02}", of_day / 3600, of_day % 3600 / 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unix_seconds_and_rfc3339_give_the_same_instant() {
        assert_eq!(parse_time("1796119200"), Ok(1_796_119_200));
        assert_eq!(parse_time("2026-12-01T10:00:00Z"), Ok(1_796_119_200));
        assert_eq!(parse_time("2026-12-01T11:00:00+01:00"), Ok(1_796_119_200));
        assert_eq!(
            parse_time("2026-12-01T09:30:00.250-00:30"),
            Ok(1_796_119_200)
        );
        assert_eq!(parse_time("1970-01-01T00:00:00Z"), Ok(0));
        assert_eq!(parse_time("2024-02-29T00:00:00Z"), Ok(1_709_164_800));
    }

    #[test]
    fn malformed_times_are_refused_with_the_input_named() {
        for bad in [
            "",
            "yesterday",
            "2026-13-01T00:00:00Z",
            "2026-02-30T00:00:00Z",
            "2026-12-01T10:00:00",
            "2026-12-01T24:00:00Z",
            "2026-12-01T10:00:00+1:00",
            "1969-12-31T23:59:59Z",
            "-5",
        ] {
            let err = parse_time(bad).expect_err(bad);
            assert!(err.contains(bad.trim()) || bad.is_empty(), "{bad}: {err}");
        }
    }

    #[test]
    fn clock_text_is_utc_minutes() {
        assert_eq!(clock_text(1_796_119_200), "2026-12-01 10:00");
        assert_eq!(clock_text(0), "1970-01-01 00:00");
        assert_eq!(time_of_day_text(1_796_119_200 + 3_660), "11:01");
    }

    #[test]
    fn a_period_must_run_forwards() {
        assert!(check_period(Some(10), Some(20), "--from", "--to").is_ok());
        assert!(check_period(None, Some(20), "--from", "--to").is_ok());
        let err = check_period(Some(20), Some(20), "--from", "--to").unwrap_err();
        assert!(err.to_string().contains("--from"), "{err}");
    }
}
