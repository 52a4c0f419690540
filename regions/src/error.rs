//! The crate's one error type: what went wrong, with enough context (file, line, key) to fix it.

use std::path::PathBuf;

/// Errors of the regional forecaster and the replay simulator.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A trace file could not be read at all.
    #[error("cannot read trace {path}: {source}")]
    TraceIo {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A trace file was read but its content is not a usable trace.
    #[error("trace {origin}, line {line}: {message}")]
    TraceFormat {
        origin: String,
        line: usize,
        message: String,
    },
    /// Replay or planner settings that cannot be simulated.
    #[error("invalid setting {key}: {message}")]
    Setting { key: &'static str, message: String },
    /// A sketch the store refuses for good (see [`crate::admission`]).
    #[error(transparent)]
    Refused(#[from] crate::admission::Refused),
    /// The series store (SQLite) failed or holds data this build cannot read.
    #[error("series store: {what}{}", source.as_ref().map(|e| format!(": {e}")).unwrap_or_default())]
    Store {
        what: String,
        #[source]
        source: Option<rusqlite::Error>,
    },
    /// A scheduled event from outside (the admin API) that is not valid; `field` names the
    /// offending field (`scope.region`, `effect.factor`, …), `None` when the body as a whole is.
    #[error("{}{message}", field.as_ref().map(|f| format!("{f}: ")).unwrap_or_default())]
    EventInput {
        field: Option<String>,
        message: String,
    },
    /// No scheduled event has this id.
    #[error("no scheduled event `{id}`")]
    EventNotFound { id: String },
    /// A scheduled event with this id exists already.
    #[error("a scheduled event `{id}` exists already")]
    EventConflict { id: String },
    /// A replay's events file could not be read.
    #[error("cannot read events file {path}: {source}")]
    EventsFileIo {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A replay's events file holds something that is not a usable event.
    #[error("events file {path}: {message}")]
    EventsFile { path: PathBuf, message: String },
    /// Drawing the replay plot failed.
    #[error("cannot draw plot {path}: {message}")]
    Plot { path: PathBuf, message: String },
}

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
