//! Persona documents from outside (the admin API, and the stored copies read back): parsing with
//! every unknown field refused by name at every level, then field-by-field checks whose errors
//! name the field (`resources.cpu_share`, `traffic.peak_hours_utc[2]`, `match_profiles[0]`, …).
//!
//! Two levels of checks: [`Persona::from_json`] runs the document's own rules (types, ranges,
//! name syntax, duplicates, sizes) and then [`Persona::check_known`], which asks the regions and
//! fleets it names to exist in the config ([`Known`]). A stored persona is read back with the
//! first level only, so a region or fleet removed from the config later leaves it readable.
//!
//! Invariant: a [`Persona`] handed out by this module has passed the first level.

use std::collections::HashSet;

use prescale_gossip::model::valid_profile_name;
use serde::{Deserialize, Serialize};

use super::PersonaError;

/// Largest persona document accepted, bytes: a document at every limit below (description,
/// tags, patterns, all 24 hours, every access class) is under 8 KiB, pretty-printed; the admin
/// listener itself takes bodies up to 1 MiB.
pub const MAX_DOCUMENT_BYTES: usize = 64 * 1024;
/// Longest `description`, bytes.
pub const MAX_DESCRIPTION_BYTES: usize = 1024;
/// Most `tags`.
pub const MAX_TAGS: usize = 32;
/// Most `match_profiles` patterns (as many as tags).
pub const MAX_MATCH_PATTERNS: usize = 32;
/// Largest `revenue_weight`: `round(revenue_weight × 1000)` must be an exact integer in an f64
/// (below 2^53) to become the model's `revenue_weight_milli`.
pub const MAX_REVENUE_WEIGHT: f64 = 1e12;

/// What one request of the persona costs the backend that serves it, as the operator states it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// Share of one CPU core busy per request (e.g. 0.02).
    pub cpu_share: f64,
    /// Memory per request in flight, MB.
    pub memory_mb: f64,
    /// Network per request, Mbit/s while it is served.
    pub network_mbps: f64,
    /// Storage operations per request.
    pub io_ops: f64,
}

/// A class of access a persona is expected to make; all but `interactive` are the proxy's
/// path/method/device classes (`*_share` features), `interactive` is "not automation".
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Access {
    Api,
    Static,
    Write,
    Mobile,
    Automation,
    Interactive,
}

impl Access {
    /// Every class's name, as in documents.
    pub const NAMES: [&'static str; 6] = [
        "api",
        "static",
        "write",
        "mobile",
        "automation",
        "interactive",
    ];

    /// The class's name, as in documents.
    pub fn name(self) -> &'static str {
        match self {
            Access::Api => "api",
            Access::Static => "static",
            Access::Write => "write",
            Access::Mobile => "mobile",
            Access::Automation => "automation",
            Access::Interactive => "interactive",
        }
    }
}

/// The traffic a persona is expected to send.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Traffic {
    /// Hours of the day (UTC, 0 to 23) its requests peak in, no duplicates; empty: flat.
    pub peak_hours_utc: Vec<u8>,
    /// Origin regions its requests are expected from (config regions); empty: anywhere.
    pub regions: Vec<String>,
    /// Access classes it makes, at least one, no duplicates.
    pub access: Vec<Access>,
}

/// An operator persona as checked: what learned profiles mapped to it take (revenue weight,
/// priority, fleet) and what it is expected to look like (traffic, resources).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Persona {
    /// [`valid_profile_name`]: 1 to 64 ASCII letters, digits, `.`, `-`, `_`.
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub resources: Resources,
    pub traffic: Traffic,
    /// At most [`MAX_TAGS`], each a valid name, no duplicates.
    pub tags: Vec<String>,
    /// Finite, 0 to [`MAX_REVENUE_WEIGHT`].
    pub revenue_weight: f64,
    pub priority: u8,
    /// Fleet the mapped profiles' requests go to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fleet: Option<String>,
    /// Learned profile names this persona takes by rule (`*` matches any run of characters);
    /// empty: none, the profile is mapped by pattern only (and the field left out of documents).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub match_profiles: Vec<String>,
}

/// Names a persona may refer to: the config's regions and fleets (of any region).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Known {
    pub regions: Vec<String>,
    pub fleets: Vec<String>,
}

/// The document as it comes in; every field is checked after this by [`Persona::checked`]
/// (required ones are `Option`s here so that a missing one is named like any other error).
#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a persona document (a JSON object)")]
struct Document {
    name: Option<String>,
    description: Option<String>,
    resources: Option<ResourcesDocument>,
    traffic: Option<TrafficDocument>,
    tags: Option<Vec<String>>,
    revenue_weight: Option<f64>,
    priority: Option<i64>,
    fleet: Option<String>,
    match_profiles: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "an object with cpu_share, memory_mb, network_mbps and io_ops"
)]
struct ResourcesDocument {
    cpu_share: Option<f64>,
    memory_mb: Option<f64>,
    network_mbps: Option<f64>,
    io_ops: Option<f64>,
}

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "an object with peak_hours_utc, regions and access"
)]
struct TrafficDocument {
    peak_hours_utc: Option<Vec<i64>>,
    regions: Option<Vec<String>>,
    access: Option<Vec<Access>>,
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> PersonaError {
    PersonaError::Input {
        field: Some(field.into()),
        message: message.into(),
    }
}

const NAME_RULE: &str = "expected 1 to 64 ASCII letters, digits, '.', '-' or '_'";

fn check_name(field: &str, value: &str, what: &str) -> Result<(), PersonaError> {
    if valid_profile_name(value) {
        Ok(())
    } else {
        Err(invalid(
            field,
            format!("`{value}` is not a valid {what}; {NAME_RULE}"),
        ))
    }
}

/// Whether `pattern` is a valid `match_profiles` entry: 1 to 64 bytes of name characters or `*`.
pub fn valid_pattern(pattern: &str) -> bool {
    !pattern.is_empty()
        && pattern.len() <= 64
        && pattern
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'*'))
}

/// The first duplicate of `items` as (its index, the value).
fn first_duplicate<T: Eq + std::hash::Hash>(items: &[T]) -> Option<(usize, &T)> {
    let mut seen = HashSet::new();
    items
        .iter()
        .enumerate()
        .find(|(_, item)| !seen.insert(*item))
}

fn required<T>(field: &str, value: Option<T>, what: &str) -> Result<T, PersonaError> {
    value.ok_or_else(|| invalid(field, format!("required ({what})")))
}

fn non_negative(field: &str, value: Option<f64>) -> Result<f64, PersonaError> {
    let value = required(field, value, "a number >= 0")?;
    if value.is_finite() && value >= 0.0 {
        Ok(value)
    } else {
        Err(invalid(
            field,
            format!("must be a finite number >= 0, got {value}"),
        ))
    }
}

/// Parses `body` as a document; a type error or an unknown field is reported at its path.
fn document(body: &[u8]) -> Result<Document, PersonaError> {
    if body.len() > MAX_DOCUMENT_BYTES {
        return Err(PersonaError::TooLarge {
            size: body.len(),
            max: MAX_DOCUMENT_BYTES,
        });
    }
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| PersonaError::Input {
            field: None,
            message: format!("the body is not a JSON persona document: {e}"),
        })?;
    // serde takes a struct from an array too (fields by position): only objects are documents.
    let serde_json::Value::Object(map) = &value else {
        return Err(PersonaError::Input {
            field: None,
            message: format!(
                "the body must be a JSON object (a persona document), got {}",
                kind_of(&value)
            ),
        });
    };
    for (key, what) in [
        ("resources", "cpu_share, memory_mb, network_mbps, io_ops"),
        ("traffic", "peak_hours_utc, regions, access"),
    ] {
        match map.get(key) {
            None | Some(serde_json::Value::Null | serde_json::Value::Object(_)) => {}
            Some(other) => {
                return Err(invalid(
                    key,
                    format!("must be an object with {what}, got {}", kind_of(other)),
                ))
            }
        }
    }
    serde_path_to_error::deserialize::<_, Document>(value).map_err(|e| PersonaError::Input {
        field: path_text(e.path()),
        message: e.into_inner().to_string(),
    })
}

fn kind_of(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// `traffic.access[1]`, or `None` for the document itself.
fn path_text(path: &serde_path_to_error::Path) -> Option<String> {
    use serde_path_to_error::Segment;
    let mut text = String::new();
    for segment in path.iter() {
        match segment {
            Segment::Seq { index } => text.push_str(&format!("[{index}]")),
            Segment::Map { key } => {
                if !text.is_empty() {
                    text.push('.');
                }
                text.push_str(key);
            }
            Segment::Enum { .. } | Segment::Unknown => {}
        }
    }
    (!text.is_empty()).then_some(text)
}

impl Persona {
    /// Parses and checks an API body. `path_name`: the name of the persona being replaced (an
    /// update; the body's `name` may be left out or must be the same), `None` for a creation
    /// (the body's `name` is required).
    pub fn from_json(
        body: &[u8],
        path_name: Option<&str>,
        known: &Known,
    ) -> Result<Persona, PersonaError> {
        let persona = Self::checked(document(body)?, path_name)?;
        persona.check_known(known)?;
        Ok(persona)
    }

    /// A document as stored under `name`, checked like an API body but against no config.
    pub(crate) fn from_stored(body: &[u8], name: &str) -> Result<Persona, PersonaError> {
        let persona = Self::checked(document(body)?, Some(name))?;
        Ok(persona)
    }

    /// The regions and fleets the persona names exist in `known`.
    pub fn check_known(&self, known: &Known) -> Result<(), PersonaError> {
        let list = |names: &[String]| {
            if names.is_empty() {
                "none".to_string()
            } else {
                names.join(", ")
            }
        };
        for (i, region) in self.traffic.regions.iter().enumerate() {
            if !known.regions.contains(region) {
                return Err(invalid(
                    format!("traffic.regions[{i}]"),
                    format!(
                        "unknown region `{region}` (known: {})",
                        list(&known.regions)
                    ),
                ));
            }
        }
        if let Some(fleet) = &self.fleet {
            if !known.fleets.contains(fleet) {
                return Err(invalid(
                    "fleet",
                    format!("unknown fleet `{fleet}` (known: {})", list(&known.fleets)),
                ));
            }
        }
        Ok(())
    }

    fn checked(doc: Document, path_name: Option<&str>) -> Result<Persona, PersonaError> {
        let name = match (doc.name, path_name) {
            (Some(name), None) => {
                check_name("name", &name, "persona name")?;
                name
            }
            (None, None) => return Err(invalid("name", "required")),
            (Some(name), Some(path)) if name != path => {
                return Err(invalid(
                    "name",
                    format!("`{name}` does not match the persona `{path}` of the path; leave it out or repeat it"),
                ))
            }
            (_, Some(path)) => {
                check_name("name", path, "persona name")?;
                path.to_string()
            }
        };
        if let Some(description) = &doc.description {
            if description.len() > MAX_DESCRIPTION_BYTES {
                return Err(invalid(
                    "description",
                    format!(
                        "{} bytes; at most {MAX_DESCRIPTION_BYTES}",
                        description.len()
                    ),
                ));
            }
        }
        let r = required(
            "resources",
            doc.resources,
            r#"e.g. {"cpu_share": 0.02, "memory_mb": 64, "network_mbps": 0.5, "io_ops": 3}"#,
        )?;
        let resources = Resources {
            cpu_share: non_negative("resources.cpu_share", r.cpu_share)?,
            memory_mb: non_negative("resources.memory_mb", r.memory_mb)?,
            network_mbps: non_negative("resources.network_mbps", r.network_mbps)?,
            io_ops: non_negative("resources.io_ops", r.io_ops)?,
        };
        let traffic = checked_traffic(required(
            "traffic",
            doc.traffic,
            r#"e.g. {"peak_hours_utc": [9, 10], "regions": [], "access": ["api"]}"#,
        )?)?;
        let tags = required("tags", doc.tags, "a list of names, may be empty")?;
        if tags.len() > MAX_TAGS {
            return Err(invalid(
                "tags",
                format!("{} tags; at most {MAX_TAGS}", tags.len()),
            ));
        }
        for (i, tag) in tags.iter().enumerate() {
            check_name(&format!("tags[{i}]"), tag, "tag")?;
        }
        if let Some((i, tag)) = first_duplicate(&tags) {
            return Err(invalid(
                format!("tags[{i}]"),
                format!("`{tag}` appears twice"),
            ));
        }
        let revenue_weight = required(
            "revenue_weight",
            doc.revenue_weight,
            "relative revenue per request, a number >= 0",
        )?;
        if !(revenue_weight.is_finite() && (0.0..=MAX_REVENUE_WEIGHT).contains(&revenue_weight)) {
            return Err(invalid(
                "revenue_weight",
                format!(
                    "must be a finite number from 0 to {MAX_REVENUE_WEIGHT}, got {revenue_weight}"
                ),
            ));
        }
        let priority = required("priority", doc.priority, "a whole number from 0 to 255")?;
        let priority = u8::try_from(priority).map_err(|_| {
            invalid(
                "priority",
                format!("must be a whole number from 0 to 255, got {priority}"),
            )
        })?;
        if let Some(fleet) = &doc.fleet {
            check_name("fleet", fleet, "fleet name")?;
        }
        let match_profiles = match doc.match_profiles {
            None => Vec::new(),
            Some(patterns) if patterns.is_empty() => {
                return Err(invalid(
                    "match_profiles",
                    "empty; give at least one pattern or leave the field out",
                ))
            }
            Some(patterns) => patterns,
        };
        if match_profiles.len() > MAX_MATCH_PATTERNS {
            return Err(invalid(
                "match_profiles",
                format!(
                    "{} patterns; at most {MAX_MATCH_PATTERNS}",
                    match_profiles.len()
                ),
            ));
        }
        for (i, pattern) in match_profiles.iter().enumerate() {
            if !valid_pattern(pattern) {
                return Err(invalid(
                    format!("match_profiles[{i}]"),
                    format!("`{pattern}` is not a valid pattern; expected 1 to 64 ASCII letters, digits, '.', '-', '_' or '*' (any run of characters)"),
                ));
            }
        }
        if let Some((i, pattern)) = first_duplicate(&match_profiles) {
            return Err(invalid(
                format!("match_profiles[{i}]"),
                format!("`{pattern}` appears twice"),
            ));
        }
        Ok(Persona {
            name,
            description: doc.description,
            resources,
            traffic,
            tags,
            revenue_weight,
            priority,
            fleet: doc.fleet,
            match_profiles,
        })
    }
}

fn checked_traffic(doc: TrafficDocument) -> Result<Traffic, PersonaError> {
    let hours = required(
        "traffic.peak_hours_utc",
        doc.peak_hours_utc,
        "hours of the day 0 to 23, may be empty",
    )?;
    let regions = required(
        "traffic.regions",
        doc.regions,
        "origin region names, may be empty",
    )?;
    let access = required(
        "traffic.access",
        doc.access,
        "some of api, static, write, mobile, automation, interactive",
    )?;
    let mut peak_hours_utc = Vec::with_capacity(hours.len());
    for (i, &hour) in hours.iter().enumerate() {
        match u8::try_from(hour) {
            Ok(h) if h <= 23 => peak_hours_utc.push(h),
            _ => {
                return Err(invalid(
                    format!("traffic.peak_hours_utc[{i}]"),
                    format!("{hour} is not an hour of the day (0 to 23, UTC)"),
                ))
            }
        }
    }
    if let Some((i, hour)) = first_duplicate(&peak_hours_utc) {
        return Err(invalid(
            format!("traffic.peak_hours_utc[{i}]"),
            format!("hour {hour} appears twice"),
        ));
    }
    for (i, region) in regions.iter().enumerate() {
        check_name(&format!("traffic.regions[{i}]"), region, "region name")?;
    }
    if let Some((i, region)) = first_duplicate(&regions) {
        return Err(invalid(
            format!("traffic.regions[{i}]"),
            format!("`{region}` appears twice"),
        ));
    }
    if access.is_empty() {
        return Err(invalid(
            "traffic.access",
            format!("empty; name at least one of {}", Access::NAMES.join(", ")),
        ));
    }
    if let Some((i, class)) = first_duplicate(&access) {
        return Err(invalid(
            format!("traffic.access[{i}]"),
            format!("`{}` appears twice", class.name()),
        ));
    }
    Ok(Traffic {
        peak_hours_utc,
        regions,
        access,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn known() -> Known {
        Known {
            regions: vec!["eu".into(), "us".into()],
            fleets: vec!["batch".into(), "web".into()],
        }
    }

    pub(crate) fn valid() -> Value {
        json!({
            "name": "batch-exports",
            "description": "nightly export jobs",
            "resources": {"cpu_share": 0.02, "memory_mb": 64, "network_mbps": 0.5, "io_ops": 3},
            "traffic": {
                "peak_hours_utc": [1, 2, 3],
                "regions": ["eu"],
                "access": ["api", "write", "automation"]
            },
            "tags": ["batch"],
            "revenue_weight": 0.2,
            "priority": 20,
            "fleet": "batch",
            "match_profiles": ["scheduled-*"]
        })
    }

    fn with(mut body: Value, path: &[&str], value: Value) -> Value {
        let mut at = &mut body;
        for key in &path[..path.len() - 1] {
            at = &mut at[*key];
        }
        at[path[path.len() - 1]] = value;
        body
    }

    fn without(mut body: Value, path: &[&str]) -> Value {
        let mut at = &mut body;
        for key in &path[..path.len() - 1] {
            at = &mut at[*key];
        }
        at.as_object_mut()
            .expect("object")
            .remove(path[path.len() - 1]);
        body
    }

    fn parse(body: &Value) -> Result<Persona, PersonaError> {
        Persona::from_json(body.to_string().as_bytes(), None, &known())
    }

    /// The error of `body` (which must be rejected): its field and its text.
    fn rejected(body: &[u8], path_name: Option<&str>) -> (Option<String>, String) {
        match Persona::from_json(body, path_name, &known()) {
            Err(e @ PersonaError::Input { .. }) => {
                let text = e.to_string();
                let PersonaError::Input { field, .. } = e else {
                    unreachable!()
                };
                (field, text)
            }
            other => panic!("expected an input error, got {other:?}"),
        }
    }

    #[test]
    fn the_documented_example_parses() {
        let persona = parse(&valid()).expect("valid");
        assert_eq!(
            persona,
            Persona {
                name: "batch-exports".into(),
                description: Some("nightly export jobs".into()),
                resources: Resources {
                    cpu_share: 0.02,
                    memory_mb: 64.0,
                    network_mbps: 0.5,
                    io_ops: 3.0
                },
                traffic: Traffic {
                    peak_hours_utc: vec![1, 2, 3],
                    regions: vec!["eu".into()],
                    access: vec![Access::Api, Access::Write, Access::Automation],
                },
                tags: vec!["batch".into()],
                revenue_weight: 0.2,
                priority: 20,
                fleet: Some("batch".into()),
                match_profiles: vec!["scheduled-*".into()],
            }
        );
    }

    #[test]
    fn optional_fields_may_be_left_out_and_limits_are_inclusive() {
        let mut body = valid();
        for key in ["description", "fleet", "match_profiles"] {
            body = without(body, &[key]);
        }
        let body = with(body, &["traffic", "peak_hours_utc"], json!([]));
        let body = with(body, &["traffic", "regions"], json!([]));
        let body = with(body, &["tags"], json!([]));
        let persona = parse(&body).expect("valid");
        assert_eq!(
            (
                persona.description,
                persona.fleet,
                persona.match_profiles.len()
            ),
            (None, None, 0)
        );
        let full: Vec<String> = (0..MAX_TAGS).map(|i| format!("t{i}")).collect();
        let patterns: Vec<String> = (0..MAX_MATCH_PATTERNS).map(|i| format!("p{i}-*")).collect();
        let body = with(valid(), &["tags"], json!(full));
        let body = with(body, &["match_profiles"], json!(patterns));
        let body = with(
            body,
            &["description"],
            json!("d".repeat(MAX_DESCRIPTION_BYTES)),
        );
        let body = with(
            body,
            &["traffic", "peak_hours_utc"],
            json!((0..24).collect::<Vec<_>>()),
        );
        let body = with(
            body,
            &["traffic", "access"],
            json!([
                "api",
                "static",
                "write",
                "mobile",
                "automation",
                "interactive"
            ]),
        );
        let body = with(body, &["priority"], json!(255));
        let body = with(body, &["revenue_weight"], json!(MAX_REVENUE_WEIGHT));
        let body = with(body, &["name"], json!("N".repeat(64)));
        let persona = parse(&body).expect("valid at every limit");
        assert_eq!(persona.priority, 255);
        let pretty = serde_json::to_string_pretty(&body).expect("json");
        assert!(pretty.len() < MAX_DOCUMENT_BYTES / 8, "{}", pretty.len());
        // null is the same as leaving an optional field out.
        let body = with(valid(), &["fleet"], Value::Null);
        assert_eq!(parse(&body).expect("valid").fleet, None);
    }

    #[test]
    fn every_validation_error_names_its_field() {
        let cases: Vec<(Value, &str)> = vec![
            (without(valid(), &["name"]), "name"),
            (with(valid(), &["name"], json!("")), "name"),
            (with(valid(), &["name"], json!("has space")), "name"),
            (with(valid(), &["name"], json!("x".repeat(65))), "name"),
            (with(valid(), &["name"], json!(7)), "name"),
            (
                with(valid(), &["description"], json!("d".repeat(1025))),
                "description",
            ),
            (with(valid(), &["description"], json!(["a"])), "description"),
            (without(valid(), &["resources"]), "resources"),
            (with(valid(), &["resources"], json!(1)), "resources"),
            (
                without(valid(), &["resources", "io_ops"]),
                "resources.io_ops",
            ),
            (
                with(valid(), &["resources", "cpu_share"], json!(-0.1)),
                "resources.cpu_share",
            ),
            (
                with(valid(), &["resources", "cpu_share"], json!("1")),
                "resources.cpu_share",
            ),
            (
                with(valid(), &["resources", "memory_mb"], json!(-1)),
                "resources.memory_mb",
            ),
            (
                with(valid(), &["resources", "network_mbps"], json!(null)),
                "resources.network_mbps",
            ),
            (
                with(valid(), &["resources", "io_ops"], json!(-3)),
                "resources.io_ops",
            ),
            (
                with(valid(), &["resources", "disk"], json!(1)),
                "resources.disk",
            ),
            (without(valid(), &["traffic"]), "traffic"),
            (without(valid(), &["traffic", "access"]), "traffic.access"),
            (without(valid(), &["traffic", "regions"]), "traffic.regions"),
            (
                without(valid(), &["traffic", "peak_hours_utc"]),
                "traffic.peak_hours_utc",
            ),
            (
                with(valid(), &["traffic", "peak_hours_utc"], json!([1, 24])),
                "traffic.peak_hours_utc[1]",
            ),
            (
                with(valid(), &["traffic", "peak_hours_utc"], json!([-1])),
                "traffic.peak_hours_utc[0]",
            ),
            (
                with(valid(), &["traffic", "peak_hours_utc"], json!([1.5])),
                "traffic.peak_hours_utc[0]",
            ),
            (
                with(valid(), &["traffic", "peak_hours_utc"], json!([3, 4, 3])),
                "traffic.peak_hours_utc[2]",
            ),
            (
                with(valid(), &["traffic", "peak_hours_utc"], json!(3)),
                "traffic.peak_hours_utc",
            ),
            (
                with(valid(), &["traffic", "regions"], json!(["mars"])),
                "traffic.regions[0]",
            ),
            (
                with(valid(), &["traffic", "regions"], json!(["eu", "eu"])),
                "traffic.regions[1]",
            ),
            (
                with(valid(), &["traffic", "regions"], json!(["e u"])),
                "traffic.regions[0]",
            ),
            (
                with(valid(), &["traffic", "regions"], json!([1])),
                "traffic.regions[0]",
            ),
            (
                with(valid(), &["traffic", "access"], json!([])),
                "traffic.access",
            ),
            (
                with(valid(), &["traffic", "access"], json!(["api", "telepathy"])),
                "traffic.access[1]",
            ),
            (
                with(valid(), &["traffic", "access"], json!(["api", "api"])),
                "traffic.access[1]",
            ),
            (
                with(valid(), &["traffic", "weekend"], json!(true)),
                "traffic.weekend",
            ),
            (without(valid(), &["tags"]), "tags"),
            (
                with(
                    valid(),
                    &["tags"],
                    json!((0..33).map(|i| format!("t{i}")).collect::<Vec<_>>()),
                ),
                "tags",
            ),
            (with(valid(), &["tags"], json!(["ok", "not ok"])), "tags[1]"),
            (with(valid(), &["tags"], json!(["a", "a"])), "tags[1]"),
            (with(valid(), &["tags"], json!("batch")), "tags"),
            (without(valid(), &["revenue_weight"]), "revenue_weight"),
            (
                with(valid(), &["revenue_weight"], json!(-0.5)),
                "revenue_weight",
            ),
            (
                with(valid(), &["revenue_weight"], json!(2e12)),
                "revenue_weight",
            ),
            (
                with(valid(), &["revenue_weight"], json!("high")),
                "revenue_weight",
            ),
            (without(valid(), &["priority"]), "priority"),
            (with(valid(), &["priority"], json!(256)), "priority"),
            (with(valid(), &["priority"], json!(-1)), "priority"),
            (with(valid(), &["priority"], json!(2.5)), "priority"),
            (with(valid(), &["fleet"], json!("gpu")), "fleet"),
            (with(valid(), &["fleet"], json!("a/b")), "fleet"),
            (with(valid(), &["fleet"], json!(3)), "fleet"),
            (
                with(valid(), &["match_profiles"], json!([])),
                "match_profiles",
            ),
            (
                with(valid(), &["match_profiles"], json!(["ok-*", "no/slash"])),
                "match_profiles[1]",
            ),
            (
                with(valid(), &["match_profiles"], json!([""])),
                "match_profiles[0]",
            ),
            (
                with(valid(), &["match_profiles"], json!(["a*", "a*"])),
                "match_profiles[1]",
            ),
            (
                with(
                    valid(),
                    &["match_profiles"],
                    json!((0..33).map(|i| format!("p{i}")).collect::<Vec<_>>()),
                ),
                "match_profiles",
            ),
            (
                with(valid(), &["match_profiles"], json!("scheduled-*")),
                "match_profiles",
            ),
            (with(valid(), &["version"], json!(2)), "version"),
            (with(valid(), &["created_at"], json!(2)), "created_at"),
        ];
        for (body, field) in cases {
            let (got, text) = rejected(body.to_string().as_bytes(), None);
            assert_eq!(got.as_deref(), Some(field), "{body}: {text}");
            assert!(text.starts_with(&format!("{field}: ")), "{body}: {text}");
        }
        let (_, text) = rejected(
            with(valid(), &["color"], json!("red"))
                .to_string()
                .as_bytes(),
            None,
        );
        assert!(text.contains("unknown field `color`"), "{text}");
        let (_, text) = rejected(
            with(valid(), &["traffic", "regions"], json!(["mars"]))
                .to_string()
                .as_bytes(),
            None,
        );
        assert!(text.contains("mars") && text.contains("eu, us"), "{text}");
        let (_, text) = rejected(
            without(valid(), &["resources", "io_ops"])
                .to_string()
                .as_bytes(),
            None,
        );
        assert!(text.contains("io_ops"), "{text}");
    }

    #[test]
    fn an_update_takes_its_name_from_the_path() {
        let body = without(valid(), &["name"]);
        let persona =
            Persona::from_json(body.to_string().as_bytes(), Some("batch-exports"), &known())
                .expect("valid");
        assert_eq!(persona.name, "batch-exports");
        let persona = Persona::from_json(
            valid().to_string().as_bytes(),
            Some("batch-exports"),
            &known(),
        )
        .expect("the same name may be repeated");
        assert_eq!(persona.name, "batch-exports");
        let (field, text) = rejected(valid().to_string().as_bytes(), Some("other"));
        assert_eq!(field.as_deref(), Some("name"));
        assert!(text.contains("does not match"), "{text}");
        let (field, _) = rejected(body.to_string().as_bytes(), Some("bad name"));
        assert_eq!(field.as_deref(), Some("name"));
    }

    #[test]
    fn a_body_that_is_not_a_json_object_says_so() {
        for body in [&b"name=x"[..], b"", b"{\"name\": ", b"\xff\xfe", b"{} {}"] {
            let (field, text) = rejected(body, None);
            assert_eq!(field, None, "{text}");
            assert!(text.contains("not a JSON persona document"), "{text}");
        }
        for body in [&b"[1, 2]"[..], b"\"batch\"", b"null"] {
            let (field, text) = rejected(body, None);
            assert_eq!(field, None);
            assert!(text.contains("must be a JSON object"), "{text}");
        }
        // Not positional fields either, for the nested objects.
        for key in ["resources", "traffic"] {
            let body = with(valid(), &[key], json!([0.1, 64, 0.5, 3]));
            let (field, text) = rejected(body.to_string().as_bytes(), None);
            assert_eq!(field.as_deref(), Some(key), "{text}");
            assert!(text.contains("must be an object"), "{text}");
        }
        let mut huge = valid().to_string().into_bytes();
        huge.resize(MAX_DOCUMENT_BYTES + 1, b' ');
        assert!(matches!(
            Persona::from_json(&huge, None, &known()),
            Err(PersonaError::TooLarge { size, max }) if size == MAX_DOCUMENT_BYTES + 1 && max == MAX_DOCUMENT_BYTES
        ));
    }

    #[test]
    fn a_stored_document_reads_back_without_the_config() {
        let persona = parse(&valid()).expect("valid");
        let text = serde_json::to_vec(&persona).expect("json");
        // The region and fleet are gone from the config: still readable.
        assert_eq!(
            Persona::from_stored(&text, "batch-exports").expect("readable"),
            persona
        );
        assert!(persona.check_known(&Known::default()).is_err());
    }
}
