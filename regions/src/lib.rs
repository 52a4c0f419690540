//! prescale-regions: the regional forecaster's core.
//!
//! * [`brain`]: the sans-IO, clock-free state machine (observe, set events, poll, next wakeup)
//!   that the live forecaster and `prescale replay` both drive;
//! * [`forecast`]: per-series forecasting (seasonal profile, augurs MSTL + AutoETS, naive
//!   fallbacks), rolling-origin model choice and calibrated intervals;
//! * [`planner`]: capacity tiers, scale-up/down rules and revenue-weighted allocation under a cap;
//! * [`replay`]: the policy simulator behind `prescale replay`, with [`trace`] parsing and
//!   [`plot`] drawing.
//!
//! Invariant: nothing under `brain`, `forecast` and `planner` reads a clock, a file or a socket.

pub mod brain;
pub mod error;
pub mod forecast;
pub mod ingest;
pub mod planner;
pub mod plot;
pub mod replay;
pub mod store;
pub mod trace;

pub use error::{Error, Result};
