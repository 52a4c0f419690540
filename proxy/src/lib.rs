//! prescale-proxy: the pingora data plane. Per request: identity → keyed hash → `UserKey`;
//! client address → region; per-user features → profile; profile → fleet → backend; and, when
//! the response is done, lock-free meters. Also the node's admin HTTP and the sketch exporter.
//!
//! Invariants: raw identities never leave `identity` (only `UserKey`s do); the request path takes
//! no lock and allocates nothing in `meters` once a meter key exists; this crate never forecasts
//! or plans, it applies the models and plans it is given.

// No unsafe code but the memory hints in `hints` (a cache prefetch, huge-page advice): they read
// and write no memory.
#![deny(unsafe_code)]

pub mod access_log;
pub mod admin;
mod backend_names;
mod chunked;
pub mod client_ip;
pub mod client_limits;
pub mod dashboard;
pub mod dataplane;
pub mod error;
pub mod exporter;
pub mod features;
pub mod fields;
pub mod fleet;
pub mod geo;
pub mod grants;
pub mod handover;
mod hints;
mod http1;
pub mod identity;
pub mod ingest;
pub mod lookup;
pub mod meters;
pub mod new_users;
pub mod plan;
pub mod profiles;
pub mod reload;
pub mod request_head;
pub mod request_id;
pub mod server;
pub mod service;
pub mod upstream_pool;

/// For the fuzz target and its corpus test only.
#[doc(hidden)]
pub use http1::read_backend_response;
