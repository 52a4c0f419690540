//! Requests the scaler answered, by method and outcome, for `prescale_keda_requests_total`.
//! A stream counts once, when it is opened (with the outcome of its opening).

use std::sync::atomic::{AtomicU64, Ordering};

/// The service's methods, as KEDA's proto names them.
pub const METHODS: [&str; 5] = [
    "IsActive",
    "StreamIsActive",
    "GetMetricSpec",
    "GetMetrics",
    "StreamMetricSpec",
];

/// Outcomes: `ok`, or the gRPC status the request was answered with.
pub const OUTCOMES: [&str; 5] = [
    "ok",
    "invalid_argument",
    "not_found",
    "unavailable",
    "failed_precondition",
];

/// Counters of requests by method and outcome.
#[derive(Debug, Default)]
pub struct ScalerStats {
    counts: [[AtomicU64; OUTCOMES.len()]; METHODS.len()],
}

impl ScalerStats {
    /// Counts one request of `method` answered with `code` (`Ok` for a success). Codes the
    /// service never answers with are not counted.
    pub fn record(&self, method: &str, code: tonic::Code) {
        let outcome = match code {
            tonic::Code::Ok => "ok",
            tonic::Code::InvalidArgument => "invalid_argument",
            tonic::Code::NotFound => "not_found",
            tonic::Code::Unavailable => "unavailable",
            tonic::Code::FailedPrecondition => "failed_precondition",
            _ => return,
        };
        let m = METHODS.iter().position(|&n| n == method);
        let o = OUTCOMES.iter().position(|&n| n == outcome);
        if let (Some(m), Some(o)) = (m, o) {
            self.counts[m][o].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Every (method, outcome, count), zeros included, in a fixed order.
    pub fn counts(&self) -> Vec<(&'static str, &'static str, u64)> {
        let mut out = Vec::with_capacity(METHODS.len() * OUTCOMES.len());
        for (m, method) in METHODS.iter().enumerate() {
            for (o, outcome) in OUTCOMES.iter().enumerate() {
                out.push((*method, *outcome, self.counts[m][o].load(Ordering::Relaxed)));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_counted_by_method_and_outcome() {
        let stats = ScalerStats::default();
        stats.record("GetMetrics", tonic::Code::Ok);
        stats.record("GetMetrics", tonic::Code::Ok);
        stats.record("IsActive", tonic::Code::NotFound);
        let count = |method, outcome| {
            stats
                .counts()
                .into_iter()
                .find(|(m, o, _)| *m == method && *o == outcome)
                .map(|(_, _, n)| n)
        };
        assert_eq!(count("GetMetrics", "ok"), Some(2));
        assert_eq!(count("IsActive", "not_found"), Some(1));
        assert_eq!(count("GetMetricSpec", "ok"), Some(0));
        assert_eq!(stats.counts().len(), METHODS.len() * OUTCOMES.len());
    }
}
