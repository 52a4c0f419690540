//! Number and text formatting shared by the HTML and Markdown renderers, so both show the same
//! figures the same way.

use crate::history::OutlookPoint;

/// `12,345,678`.
pub fn int(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A number with `decimals` places, thousands separated.
pub fn num(x: f64, decimals: usize) -> String {
    if !x.is_finite() {
        return "–".into();
    }
    let text = format!("{:.*}", decimals, x.abs());
    let (whole, fraction) = text.split_once('.').unwrap_or((&text, ""));
    let sign = if x < 0.0 && text.bytes().any(|b| b.is_ascii_digit() && b != b'0') {
        "-"
    } else {
        ""
    };
    let whole = whole
        .parse::<u64>()
        .map(int)
        .unwrap_or_else(|_| whole.to_string());
    if fraction.is_empty() {
        format!("{sign}{whole}")
    } else {
        format!("{sign}{whole}.{fraction}")
    }
}

/// A share as a percentage (`12.35 %`), `–` when undefined.
pub fn percent(share: Option<f64>) -> String {
    share.map_or_else(|| "–".into(), |s| format!("{} %", num(s * 100.0, 2)))
}

/// A ratio such as MASE (`0.583`), `–` when undefined.
pub fn ratio(value: Option<f64>) -> String {
    value.map_or_else(|| "–".into(), |v| num(v, 3))
}

/// Money in the fleets' configured unit: cents above 1, four places below.
pub fn money(x: f64) -> String {
    num(x, if x.abs() >= 1.0 || x == 0.0 { 2 } else { 4 })
}

/// An optional number with `decimals` places, `–` when missing.
pub fn opt(value: Option<f64>, decimals: usize) -> String {
    value.map_or_else(|| "–".into(), |v| num(v, decimals))
}

/// `1 minute`, `5 minutes`.
pub fn minutes(n: i64) -> String {
    if n == 1 {
        "1 minute".into()
    } else {
        format!("{n} minutes")
    }
}

/// The outlook points a rendered report lists: every tenth minute of the coming hour, then
/// every hour (the JSON keeps every point).
pub fn outlook_rows(points: &[OutlookPoint], issued_at: u64) -> Vec<&OutlookPoint> {
    let hour_end = issued_at / 60 * 60 + 3600;
    points
        .iter()
        .filter(|p| p.minute >= hour_end || (p.minute / 60).is_multiple_of(10))
        .collect()
}

/// The fewest and the most instances of the outlook, with the first minute of the most.
pub fn outlook_range(points: &[OutlookPoint]) -> Option<(u32, u32, u64)> {
    let fewest = points.iter().map(|p| p.instances).min()?;
    let most = points
        .iter()
        .max_by(|a, b| a.instances.cmp(&b.instances).then(b.minute.cmp(&a.minute)))?;
    Some((fewest, most.instances, most.minute))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_grouped_and_rounded() {
        assert_eq!(int(0), "0");
        assert_eq!(int(1234), "1,234");
        assert_eq!(int(1_234_567), "1,234,567");
        assert_eq!(num(1234.5678, 2), "1,234.57");
        assert_eq!(num(-0.001, 2), "0.00");
        assert_eq!(num(-12.5, 1), "-12.5");
        assert_eq!(percent(Some(0.12345)), "12.35 %");
        assert_eq!(percent(None), "–");
        assert_eq!(money(0.05), "0.0500");
        assert_eq!(money(12.345), "12.35");
        assert_eq!(ratio(Some(0.5834)), "0.583");
        assert_eq!(minutes(1), "1 minute");
        assert_eq!(minutes(2), "2 minutes");
    }

    #[test]
    fn the_outlook_is_listed_every_ten_minutes_then_hourly() {
        let issued = 1_796_119_230; // 10:00:30
        let point = |minute: u64, instances: u32| OutlookPoint {
            minute,
            point: 1.0,
            lower: 0.0,
            upper: 2.0,
            slo_upper: 3.0,
            instances,
        };
        let mut points: Vec<OutlookPoint> =
            (1..=60).map(|m| point(1_796_119_200 + m * 60, 1)).collect();
        points
            .extend((2..=24).map(|h| point(1_796_119_200 + h * 3600, if h == 5 { 4 } else { 2 })));
        let rows = outlook_rows(&points, issued);
        assert_eq!(rows.len(), 6 + 23);
        assert_eq!(rows[0].minute, 1_796_119_200 + 600);
        assert_eq!(
            outlook_range(&points),
            Some((1, 4, 1_796_119_200 + 5 * 3600))
        );
        assert_eq!(outlook_range(&[]), None);
    }
}
