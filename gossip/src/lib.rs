//! prescale-gossip: the versioned wire types exchanged between proxies and forecasters, their
//! bounded codec, the QUIC (mutual TLS) transport, the spool for at-least-once delivery, and
//! membership. It knows nothing about forecasting: models and plans are payloads it carries.
//!
//! Map:
//! - wire types: [`sketch`] ([`Sketch`] and its entries), [`hll`], [`sample`], [`histogram`],
//!   [`messages`] ([`Ack`], [`ModelUpdate`], [`PlanUpdate`]), [`model`] (the profile model).
//! - [`codec`]: the envelope (magic, version, kind, length) and bounded decoding.
//! - [`tls`]: dev certificates and the mutual-TLS QUIC configs.
//! - [`spool`]: the sender's bounded on-disk spool.
//! - [`sender`] ([`SketchSender`], proxy side) and [`receiver`] ([`SketchReceiver`],
//!   forecaster side): at-least-once delivery with acks, exactly-once into the sink by dedup.
//! - [`clock`]: the node clock with a speed factor (`--speedup`).
//! - [`membership`]: foca SWIM over QUIC datagrams; silent proxies; per-region totals.
//!
//! Invariants across the crate: no `unsafe`; nothing received from the network can panic it
//! (every decode path returns [`Error`]); every buffer sized from the network is bounded first.

#![forbid(unsafe_code)]

pub mod clock;
pub mod codec;
pub mod error;
mod frame_io;
#[doc(hidden)]
pub mod fuzz_checks;
mod hash;
pub mod histogram;
pub mod hll;
pub mod membership;
pub mod messages;
pub mod model;
pub mod receiver;
pub mod sample;
pub mod sender;
pub mod sketch;
pub mod spool;
pub mod tls;

pub use clock::NodeClock;
pub use codec::{decode, encode, Limits};
pub use error::{Error, Result};
pub use histogram::LatencyHistogram;
pub use hll::HyperLogLog;
pub use membership::{MemberId, MemberStatus, Membership, MembershipConfig, RegionTotals, Role};
pub use messages::{
    Ack, AckOutcome, BackendPhase, FleetPlan, Message, MessageKind, ModelUpdate, NodeShare,
    PlanUpdate, PlannedBackend, ProfileGrant, Refusal, TierTarget,
};
pub use receiver::{
    NodeStatus, PeerCaps, ReceiverConfig, ReceiverStatsSnapshot, SketchReceiver, SketchSink,
};
pub use sample::{SampledUser, UserSample};
pub use sender::{SenderConfig, SenderStatsSnapshot, SketchSender};
pub use sketch::{EntryKey, EntryStats, SenderState, Sketch, SketchEntry};
pub use tls::{write_dev_certs, DevCa, NodeIdentity};
