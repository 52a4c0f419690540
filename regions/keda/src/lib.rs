//! KEDA's external scaler, served by prescale's forecaster: the gRPC API of KEDA's
//! `externalscaler.proto` (vendored in `proto/`, compiled by the build script with protox, no
//! `protoc`), answered from the forecast at each fleet's cold-start lead so that KEDA's HPA
//! scales a fleet ahead of its demand rather than behind it.
//!
//! The crate owns the gRPC service only. What a fleet's forecast and capacity are comes from a
//! [`ScalerSource`] (the binary implements it over the live driver's view); [`service`] maps a
//! reading to KEDA's messages, [`metadata`] checks a ScaledObject's trigger metadata,
//! [`server`] binds and serves it (TLS optional), [`stats`] counts requests by outcome.

pub mod metadata;
pub mod proto;
pub mod server;
pub mod service;
pub mod source;
pub mod stats;

pub use metadata::FleetRef;
pub use server::{RunningScaler, ScalerListen, TlsFiles};
pub use service::{ScalerService, StreamSettings};
pub use source::{FleetReading, Hold, LeadForecast, ScalerSource, SourceError};
pub use stats::ScalerStats;

/// Errors of starting the scaler's server.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read the TLS certificate {}: {source}", path.display())]
    ReadCert {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read the TLS private key {}: {source}", path.display())]
    ReadKey {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the TLS certificate and key cannot be used: {source}")]
    Tls {
        #[source]
        source: tonic::transport::Error,
    },
}
