//! The crate's one error type for things that stop the proxy from starting: a GeoIP database
//! that cannot be used, JWT key material that cannot be loaded, a region that does not exist.
//! Per-request problems have their own small types that map to an HTTP status
//! ([`crate::identity::IdentityError`], [`crate::client_ip::ClientIpError`]); a plan from the
//! forecaster that is not applied says why with [`crate::plan::PlanError`].
//!
//! Invariant: messages name the file or config key and what is wrong with it, never a raw
//! identity or secret.

use std::path::PathBuf;

/// A startup error of the data plane.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// `geo.database` cannot be opened or is not a usable country database.
    #[error("geo.database `{}`: {reason}", path.display())]
    GeoDatabase { path: PathBuf, reason: String },
    /// A region named in the config (e.g. the fallback region) is not defined.
    #[error("{key}: region `{region}` is not defined in [[regions]]")]
    UnknownRegion { key: &'static str, region: String },
    /// More regions are configured than the meters can index.
    #[error("regions: {count} regions are configured, at most {max} are supported")]
    TooManyRegions { count: usize, max: usize },
    /// The key material of a bearer-JWT source cannot be loaded.
    #[error("identity.sources[{index}].jwt: {reason}")]
    JwtKey { index: usize, reason: String },
    /// An identity source that cannot be used as configured (e.g. an invalid header name).
    #[error("identity.sources[{index}]: {reason}")]
    IdentitySource { index: usize, reason: String },
    /// A fleet backend address that cannot be resolved or used.
    #[error("fleet `{fleet}`: backend `{backend}`: {source}")]
    Backend {
        fleet: String,
        backend: String,
        #[source]
        source: std::io::Error,
    },
    /// A listener that cannot be bound (address in use, permission).
    #[error("cannot listen on {addr} ({what}): {source}")]
    Listen {
        what: &'static str,
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// TLS material for the proxy listener that cannot be used.
    #[error("proxy.tls: {reason}")]
    Tls { reason: String },
    /// A fleet's `upstream` settings (its TLS files) that cannot be used.
    #[error("fleet `{fleet}`: {reason}")]
    Upstream { fleet: String, reason: String },
    /// The access log's file cannot be opened, or its writer started.
    #[error(transparent)]
    AccessLog(#[from] crate::access_log::AccessLogError),
    /// The binary upgrade's socket or instance lock cannot be used.
    #[error(transparent)]
    Handover(#[from] crate::handover::HandoverError),
    /// A runtime or thread the proxy needs could not be started.
    #[error("cannot start {what}: {reason}")]
    Startup { what: &'static str, reason: String },
}
