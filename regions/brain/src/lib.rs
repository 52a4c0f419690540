//! prescale-brain: the forecasting and planning core of the regional forecaster, sans-IO and
//! clock-free, in the manner of quinn-proto.
//!
//! * [`brain`]: the state machine (observe, set events, poll, next wakeup) that the live
//!   forecaster and `prescale replay` both drive;
//! * [`forecast`]: per-series forecasting (seasonal profile, augurs MSTL + AutoETS, naive
//!   fallbacks), rolling-origin model choice and calibrated intervals;
//! * [`planner`]: capacity tiers, scale-up/down rules, revenue-weighted allocation under a cap and
//!   the capacity learner.
//!
//! Invariant, kept by the compiler: this crate depends on no async runtime, database, socket or
//! clock (see its `Cargo.toml`); every input carries its time and every output is a value.

#![forbid(unsafe_code)]

pub mod brain;
pub mod forecast;
pub mod planner;
