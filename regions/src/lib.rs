//! prescale-regions: the regional forecaster's IO shell around the sans-IO brain
//! (`prescale-brain`, re-exported as [`brain`], [`forecast`] and [`planner`]).
//!
//! * [`store`] and [`ingest`]: the SQLite series store and the sketch sink that writes it;
//!   [`admission`]: what that sink takes (region, precision, time window, counts);
//! * [`ledger`]: provisioned instances, plan versions and decisions, in the same file;
//! * [`history`]: the capacity history (each minute's instances, demand and lead-time
//!   forecast, the outlook of the coming day) that reports and the dashboard read;
//! * [`events`]: scheduled events operators create through the admin API, in the same file;
//! * [`personas`]: operator personas (versioned, in the same file) and the mapping of learned
//!   profiles onto them;
//! * [`live`]: the live driver that feeds the brain complete minutes, polls it, steers the
//!   [`provision`]ers and publishes plans;
//! * [`replay`]: the policy simulator behind `prescale replay`, with [`trace`] parsing and
//!   [`plot`] drawing;
//! * [`report`]: capacity reports built from the history, the store and the ledger.
//! * [`learning`]: the profile learning service (sampled users, model builds, publishing).
//!
//! Invariant: decisions are made only in `prescale-brain`; this crate feeds it and carries its
//! decisions out.

pub mod admission;
pub mod error;
pub mod events;
pub mod history;
pub mod ingest;
pub mod learning;
pub mod ledger;
pub mod live;
pub mod personas;
pub mod plot;
pub mod provision;
pub mod replay;
pub mod report;
pub mod store;
pub mod trace;

pub use error::{Error, Result};
/// The sans-IO core, re-exported: the same code this crate's live driver and replay run.
pub use prescale_brain::{brain, forecast, planner};
