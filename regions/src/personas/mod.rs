//! Operator personas: what operators say about a kind of user (expected traffic pattern, cost
//! per request, revenue weight, priority, target fleet), kept versioned in the forecaster's
//! SQLite file, and the mapping of learned profiles onto them.
//!
//! * [`input`]: the document format and its checks ([`Persona::from_json`]); every error names
//!   its field, unknown fields are refused at every level.
//! * [`store`]: [`PersonaStore`], create / get (latest or a version) / list / update (a new
//!   version) / delete; versions of a name only ever rise, across deletion and re-creation.
//! * [`mapping`]: [`map_profiles`], pure: each learned profile gets exactly one persona (by
//!   rule, else by nearest traffic pattern) when there is at least one.
//!
//! Invariant: nothing here reads the clock (callers pass node time) or knows about HTTP.

pub mod input;
pub mod mapping;
pub mod store;

pub use input::{Access, Known, Persona, Resources, Traffic, MAX_DOCUMENT_BYTES};
pub use mapping::{map_profiles, BindingReason, PersonaBinding, ProfileCentroid};
pub use store::{PersonaStore, StoredPersona};

/// Errors of persona input, lookups and storage.
#[derive(Debug, thiserror::Error)]
pub enum PersonaError {
    /// A document from outside that is not a valid persona; `field` names the offending field
    /// (`traffic.peak_hours_utc[2]`, …), `None` when the body as a whole is wrong.
    #[error("{}{message}", field.as_ref().map(|f| format!("{f}: ")).unwrap_or_default())]
    Input {
        field: Option<String>,
        message: String,
    },
    /// A document over [`MAX_DOCUMENT_BYTES`].
    #[error("the persona document is {size} bytes; at most {max} are accepted")]
    TooLarge { size: usize, max: usize },
    /// No live persona has this name; `deleted`: the version it had when it was deleted.
    #[error("no persona `{name}`{}", deleted.map(|v| format!(" (deleted at version {v}; its versions stay readable with ?version=N)")).unwrap_or_default())]
    NotFound { name: String, deleted: Option<u64> },
    /// The name never had this version.
    #[error("persona `{name}` has no version {version}{}", match latest { Some(l) => format!(" (versions 1 to {l})"), None => " (it never existed)".to_string() })]
    VersionNotFound {
        name: String,
        version: u64,
        latest: Option<u64>,
    },
    /// A live persona of this name exists already.
    #[error("a persona `{name}` exists already (version {version}); PUT /api/v1/personas/{name} changes it")]
    Conflict { name: String, version: u64 },
    /// The database failed.
    #[error("personas: {what}: {source}")]
    Store {
        what: String,
        #[source]
        source: rusqlite::Error,
    },
    /// The database holds something this build cannot read (a newer schema, a broken row).
    #[error("personas: {what}")]
    Unreadable { what: String },
}
