//! Reading TOML into a [`Config`]: syntax and type errors, then validation, each problem mapped
//! back to the line of the key it is about.

use std::ops::Range;
use std::path::Path;

use toml::de::{DeTable, DeValue};
use toml::Spanned;

use crate::error::{ConfigError, KeyPath, KeySegment, Problem};
use crate::schema::Config;
use crate::validate::validate;

/// Reads, parses and validates a config file.
pub fn load_file(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse_str(&text, &path.display().to_string())
}

/// Parses and validates config text; `origin` names it in errors (a file path or "embedded default").
pub fn parse_str(text: &str, origin: &str) -> Result<Config, ConfigError> {
    let config = deserialize(text).map_err(|problem| ConfigError::Invalid {
        origin: origin.to_string(),
        problems: vec![problem],
    })?;
    let mut problems = validate(&config);
    if problems.is_empty() {
        return Ok(config);
    }
    let index = LineIndex::new(text);
    for problem in &mut problems {
        problem.line = locate(text, &problem.key).map(|span| index.line_of(span.start));
    }
    Err(ConfigError::Invalid {
        origin: origin.to_string(),
        problems,
    })
}

/// The `[forecast]` and `[planner]` tables, for tools that only plan (e.g. `prescale replay`).
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrainConfig {
    #[serde(default)]
    pub forecast: crate::brain::ForecastConfig,
    #[serde(default)]
    pub planner: crate::brain::PlannerConfig,
}

/// Reads the `[forecast]` and `[planner]` tables from a file that holds only those two tables,
/// or from a whole prescale config (then validated as a whole, so a misspelt table is an error
/// either way).
pub fn load_brain_file(path: &Path) -> Result<BrainConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let origin = path.display().to_string();
    let only_brain = DeTable::parse(&text).is_ok_and(|table| {
        table
            .get_ref()
            .iter()
            .all(|(k, _)| matches!(k.get_ref().as_ref(), "forecast" | "planner"))
    });
    if !only_brain {
        let config = parse_str(&text, &origin)?;
        return Ok(BrainConfig {
            forecast: config.forecast,
            planner: config.planner,
        });
    }
    let brain: BrainConfig = deserialize(&text).map_err(|problem| ConfigError::Invalid {
        origin: origin.clone(),
        problems: vec![problem],
    })?;
    let mut problems = crate::validate::validate_brain(&brain.forecast, &brain.planner);
    if problems.is_empty() {
        return Ok(brain);
    }
    let index = LineIndex::new(&text);
    for problem in &mut problems {
        problem.line = locate(&text, &problem.key).map(|span| index.line_of(span.start));
    }
    Err(ConfigError::Invalid { origin, problems })
}

/// Validates an already-built config (e.g. the embedded default after `up` filled in its
/// backends); problems carry no line numbers.
pub fn check(config: &Config, origin: &str) -> Result<(), ConfigError> {
    let problems = validate(config);
    if problems.is_empty() {
        Ok(())
    } else {
        Err(ConfigError::Invalid {
            origin: origin.to_string(),
            problems,
        })
    }
}

fn deserialize<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, Problem> {
    let index = LineIndex::new(text);
    let deserializer = toml::Deserializer::parse(text).map_err(|e| Problem {
        key: KeyPath::root(),
        line: e.span().map(|s| index.line_of(s.start)),
        message: format!("invalid TOML: {}", e.message().trim_end()),
    })?;
    serde_path_to_error::deserialize(deserializer).map_err(|e| {
        let key = key_path_of(e.path());
        let inner = e.into_inner();
        let line = inner
            .span()
            .or_else(|| locate(text, &key))
            .map(|s| index.line_of(s.start));
        Problem {
            key,
            line,
            message: inner.message().trim_end().to_string(),
        }
    })
}

fn key_path_of(path: &serde_path_to_error::Path) -> KeyPath {
    use serde_path_to_error::Segment;
    KeyPath(
        path.iter()
            .filter_map(|segment| match segment {
                Segment::Seq { index } => Some(KeySegment::Index(*index)),
                Segment::Map { key } => Some(KeySegment::Key(key.clone())),
                Segment::Enum { .. } | Segment::Unknown => None,
            })
            .collect(),
    )
}

/// Span of the deepest part of `key` present in the document.
fn locate(text: &str, key: &KeyPath) -> Option<Range<usize>> {
    let root = DeTable::parse(text).ok()?;
    let mut best: Option<Range<usize>> = None;
    let document = DeValue::Table(root.into_inner());
    let mut current: &DeValue<'_> = &document;
    for segment in &key.0 {
        let next: Option<(&Spanned<DeValue<'_>>, Range<usize>)> = match (segment, current) {
            (KeySegment::Key(name), DeValue::Table(table)) => table
                .iter()
                .find(|(k, _)| k.get_ref().as_ref() == name.as_str())
                .map(|(k, v)| (v, k.span())),
            (KeySegment::Index(i), DeValue::Array(array)) => array.get(*i).map(|v| (v, v.span())),
            _ => None,
        };
        match next {
            Some((value, span)) => {
                best = Some(span);
                current = value.get_ref();
            }
            None => break,
        }
    }
    best
}

struct LineIndex {
    line_starts: Vec<usize>,
}

impl LineIndex {
    fn new(text: &str) -> Self {
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        LineIndex { line_starts }
    }

    fn line_of(&self, offset: usize) -> usize {
        match self.line_starts.binary_search(&offset) {
            Ok(i) => i + 1,
            Err(i) => i,
        }
    }
}
