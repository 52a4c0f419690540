//! The learning service's one error type: building, converting, storing and publishing models.

use prescale_gossip::model::ModelError;
use prescale_profiler::BuildError;

#[derive(Debug, thiserror::Error)]
pub enum LearningError {
    /// The profile builder could not make a model from the samples.
    #[error("{0}")]
    Build(#[from] BuildError),
    /// The converted model does not pass the format's checks (a builder bug, never published).
    #[error("the built model is not publishable: {0}")]
    Invalid(#[from] ModelError),
    /// The settings handed to the conversion do not match the model's profiles.
    #[error("{given} profile settings given for a model of {profiles} profiles")]
    SettingsCount { given: usize, profiles: usize },
    /// The learned models table (SQLite) failed.
    #[error("learned models: {what}: {source}")]
    Database {
        what: String,
        #[source]
        source: rusqlite::Error,
    },
    /// A stored model could not be read back.
    #[error("learned model version {version}: {what}: {source}")]
    Decode {
        version: u64,
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    /// A model could not be encoded for storage.
    #[error("cannot encode the {what}: {source}")]
    Encode {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    /// The service's thread could not be started.
    #[error("cannot start the learning thread: {0}")]
    Thread(#[source] std::io::Error),
}

pub(crate) fn database(what: impl Into<String>, source: rusqlite::Error) -> LearningError {
    LearningError::Database {
        what: what.into(),
        source,
    }
}
