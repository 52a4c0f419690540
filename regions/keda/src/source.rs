//! Where the scaler's answers come from: a [`ScalerSource`] reads, for one fleet, the forecast
//! at its cold-start lead, the capacity of one instance and what runs now. The binary
//! implements it over the live driver's view; tests implement it with fixed readings.

use crate::FleetRef;

/// The fleet's forecast for the minute its cold-start lead ahead.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LeadForecast {
    /// Unix seconds (node time) of the forecast minute's start.
    pub minute: i64,
    /// The bound the plan covers (the SLO quantile of the forecast), requests per minute.
    pub slo_upper: f64,
}

/// Why the fleet's plan is not to be acted on now. KEDA is then answered with an error, which
/// makes it keep the replicas it has: the scaler never becomes a cause of scale-down.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Hold {
    /// The forecaster plans and reports but provisions nothing.
    ForecastOnly,
    /// The forecaster holds capacity (its data stopped, or has not started); the reason.
    NoData(String),
}

/// One fleet as the source sees it now.
#[derive(Clone, Debug, PartialEq)]
pub struct FleetReading {
    /// None until the forecaster has a forecast at the fleet's lead.
    pub lead_forecast: Option<LeadForecast>,
    /// Requests/s one instance serves within the SLO (configured or learned).
    pub capacity_rps: f64,
    /// Instances the plan wants serving.
    pub planned_instances: u32,
    /// Instances serving or starting now.
    pub running_instances: u32,
    pub hold: Option<Hold>,
}

/// Why a source has no reading for a fleet.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SourceError {
    /// The region or fleet is not one this forecaster plans (gRPC NotFound).
    #[error("{0}")]
    NotFound(String),
    /// Nothing can answer for it now, e.g. no live driver runs (gRPC Unavailable).
    #[error("{0}")]
    Unavailable(String),
}

/// Answers for the fleets a ScaledObject can name.
pub trait ScalerSource: Send + Sync + 'static {
    fn reading(&self, fleet: &FleetRef) -> Result<FleetReading, SourceError>;
}
