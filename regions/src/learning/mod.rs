//! Profile learning on the forecaster: the users the proxies' sketches sample are kept in a
//! bounded [`samples::SampleTable`] (fed by the sketch sink after each commit, through
//! [`crate::ingest::SampleObserver`]); the [`service::LearningService`] thread builds a profile
//! model from them with `prescale-profiler` (on a schedule of node time and on demand), stores
//! it in the forecaster's database ([`models`]), converts it to the wire's `ProfileModel`
//! ([`convert`]) and publishes it to the region's proxies over QUIC.
//!
//! Invariants: building never blocks the sketch writer (it runs on a copy of the samples, on its
//! own thread); published versions strictly increase across restarts; a failed build keeps the
//! model in force; profile IDs and names carry over from the previous model (the builder's job,
//! given the stored previous model).

pub mod convert;
pub mod error;
pub mod models;
pub mod samples;
pub mod service;

pub use error::LearningError;
pub use models::{ModelStore, StoredModel};
pub use samples::SampleTable;
pub use service::{LearningService, LearningSettings, ModelPublisher};

impl crate::ingest::SampleObserver for SampleTable {
    fn observe(&self, sketch: &prescale_gossip::Sketch) {
        SampleTable::observe(self, sketch);
    }
}
