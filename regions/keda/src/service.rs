//! KEDA's `ExternalScaler` service over a [`ScalerSource`]: each request's ScaledObject
//! metadata names a fleet, the source reads it, and the reading becomes KEDA's answer.
//!
//! - `GetMetricSpec`: one metric, `prescale-<region>-<fleet>`, whose target is the capacity of
//!   one instance in requests/s. KEDA's HPA (metric type `AverageValue`, KEDA's default) then
//!   runs `ceil(value / target)` replicas.
//! - `GetMetrics`: the fleet's forecast for the minute its cold-start lead ahead, in
//!   requests/s, at the bound the plan covers (`slo_upper`, the SLO quantile of the forecast
//!   interval), so KEDA sizes the fleet as prescale's own plan does: for the demand that will
//!   have arrived by the time an instance requested now is ready, with the same room for the
//!   forecast's error (sized for the point forecast, a fleet would have none).
//! - `IsActive`: the forecast at the lead is above zero, or the plan wants instances, or
//!   instances run (KEDA scales to zero only when none of these holds).
//! - `StreamIsActive`, `StreamMetricSpec`: the answer at once, then again whenever it changes
//!   (checked every [`StreamSettings::check_every`]) and at least every
//!   [`StreamSettings::repeat_every`]; a stream ends when the server shuts down.
//!
//! Fail-static: while the forecaster provisions nothing (forecast-only) or holds capacity for
//! lack of data, or has no forecast yet, `GetMetrics` and `IsActive` answer with an error
//! (FailedPrecondition, Unavailable). KEDA keeps the replicas it has on an error, so a problem
//! of the forecaster never makes it scale a fleet down.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, Response, Status};

use crate::metadata;
use crate::proto::external_scaler_server::ExternalScaler;
use crate::proto::{
    GetMetricSpecResponse, GetMetricsRequest, GetMetricsResponse, IsActiveResponse, MetricSpec,
    MetricValue, ScaledObjectRef,
};
use crate::source::{FleetReading, Hold, ScalerSource, SourceError};
use crate::stats::ScalerStats;
use crate::FleetRef;

/// How the streaming methods push.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamSettings {
    /// How often a stream reads the source again to see whether its answer changed.
    pub check_every: Duration,
    /// The longest time between two messages of a stream, changed or not.
    pub repeat_every: Duration,
}

impl Default for StreamSettings {
    /// Checked every second; repeated every 30 s (KEDA's default polling interval).
    fn default() -> Self {
        StreamSettings {
            check_every: Duration::from_secs(1),
            repeat_every: Duration::from_secs(30),
        }
    }
}

/// The gRPC service; serve it with [`crate::server::start`].
pub struct ScalerService {
    source: Arc<dyn ScalerSource>,
    stats: Arc<ScalerStats>,
    streams: StreamSettings,
    /// Turns true when the server shuts down; open streams end then.
    shutdown: watch::Receiver<bool>,
}

impl ScalerService {
    pub fn new(
        source: Arc<dyn ScalerSource>,
        stats: Arc<ScalerStats>,
        streams: StreamSettings,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        ScalerService {
            source,
            stats,
            streams,
            shutdown,
        }
    }

    /// The fleet the ScaledObject names, read from the source and mapped by `answer`.
    fn answer<T>(
        &self,
        object: &ScaledObjectRef,
        answer: fn(&FleetRef, &FleetReading) -> Result<T, Status>,
    ) -> Result<T, Status> {
        let fleet = fleet_of(object)?;
        read(self.source.as_ref(), &fleet, answer)
    }

    fn counted<T>(&self, method: &str, result: Result<T, Status>) -> Result<Response<T>, Status> {
        let code = result.as_ref().map_or_else(Status::code, |_| Code::Ok);
        self.stats.record(method, code);
        if let Err(status) = &result {
            tracing::debug!(method, code = ?status.code(), message = status.message(), "KEDA request refused");
        }
        result.map(Response::new)
    }

    /// A stream of `answer` for the ScaledObject's fleet: the first message at once (or the
    /// error instead of a stream), then on change and every `repeat_every`.
    fn watch<T>(
        &self,
        method: &str,
        object: &ScaledObjectRef,
        answer: fn(&FleetRef, &FleetReading) -> Result<T, Status>,
    ) -> Result<Response<ReceiverStream<Result<T, Status>>>, Status>
    where
        T: Clone + PartialEq + Send + 'static,
    {
        let opened = fleet_of(object).and_then(|fleet| {
            read(self.source.as_ref(), &fleet, answer).map(|first| (fleet, first))
        });
        let (fleet, first) = self.counted(method, opened)?.into_inner();
        let (tx, rx) = mpsc::channel(2);
        let source = Arc::clone(&self.source);
        let settings = self.streams;
        let mut shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            let mut last = first;
            if *shutdown.borrow() || tx.send(Ok(last.clone())).await.is_err() {
                return;
            }
            let mut last_sent = tokio::time::Instant::now();
            let mut tick = tokio::time::interval(settings.check_every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = tx.closed() => return,
                    changed = shutdown.changed() => {
                        if changed.is_err() || *shutdown.borrow() {
                            return;
                        }
                        continue;
                    }
                }
                match read(source.as_ref(), &fleet, answer) {
                    Ok(now) => {
                        if now != last || last_sent.elapsed() >= settings.repeat_every {
                            if tx.send(Ok(now.clone())).await.is_err() {
                                return;
                            }
                            last = now;
                            last_sent = tokio::time::Instant::now();
                        }
                    }
                    Err(status) => {
                        let _ = tx.send(Err(status)).await;
                        return;
                    }
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

fn fleet_of(object: &ScaledObjectRef) -> Result<FleetRef, Status> {
    metadata::parse(&object.scaler_metadata).map_err(|e| Status::invalid_argument(e.to_string()))
}

fn read<T>(
    source: &dyn ScalerSource,
    fleet: &FleetRef,
    answer: fn(&FleetRef, &FleetReading) -> Result<T, Status>,
) -> Result<T, Status> {
    let reading = source.reading(fleet).map_err(|e| match e {
        SourceError::NotFound(message) => Status::not_found(message),
        SourceError::Unavailable(message) => Status::unavailable(message),
    })?;
    answer(fleet, &reading)
}

/// An error when the plan is not to be acted on now.
fn check_hold(reading: &FleetReading) -> Result<(), Status> {
    match &reading.hold {
        None => Ok(()),
        Some(Hold::ForecastOnly) => Err(Status::failed_precondition(
            "the forecaster is in forecast-only mode: it plans and reports but provisions nothing \
             (POST /api/v1/mode {\"forecast_only\": false} on its admin API to provision)",
        )),
        Some(Hold::NoData(reason)) => Err(Status::unavailable(format!(
            "the forecaster holds capacity: {reason}"
        ))),
    }
}

fn no_forecast(fleet: &FleetRef) -> Status {
    Status::unavailable(format!(
        "no forecast yet for fleet `{}` of region `{}` at its cold-start lead",
        fleet.fleet, fleet.region
    ))
}

/// `GetMetricSpec`: the fleet's metric with the capacity of one instance as its target.
pub fn metric_spec(
    fleet: &FleetRef,
    reading: &FleetReading,
) -> Result<GetMetricSpecResponse, Status> {
    let capacity = reading.capacity_rps;
    if !(capacity.is_finite() && capacity > 0.0) {
        return Err(Status::unavailable(format!(
            "fleet `{}` of region `{}` has no usable capacity per instance ({capacity} req/s)",
            fleet.fleet, fleet.region
        )));
    }
    Ok(GetMetricSpecResponse {
        metric_specs: vec![MetricSpec {
            metric_name: fleet.metric_name(),
            // For KEDA versions before `targetSizeFloat`: rounded down, so they run at least
            // as many replicas as the exact target would.
            target_size: (capacity.floor() as i64).max(1),
            target_size_float: capacity,
        }],
    })
}

/// `GetMetrics`: requests/s forecast for the minute the fleet's cold-start lead ahead, at the
/// bound the plan covers.
pub fn metric_value(
    fleet: &FleetRef,
    reading: &FleetReading,
) -> Result<GetMetricsResponse, Status> {
    check_hold(reading)?;
    let forecast = reading.lead_forecast.ok_or_else(|| no_forecast(fleet))?;
    let rps = forecast.slo_upper / 60.0;
    if !rps.is_finite() {
        return Err(no_forecast(fleet));
    }
    let rps = rps.max(0.0);
    Ok(GetMetricsResponse {
        metric_values: vec![MetricValue {
            metric_name: fleet.metric_name(),
            // For KEDA versions before `metricValueFloat`: rounded up, the side of more replicas.
            metric_value: rps.ceil() as i64,
            metric_value_float: rps,
        }],
    })
}

/// `IsActive`: demand is forecast at the lead, or the plan wants instances, or some run.
pub fn is_active(fleet: &FleetRef, reading: &FleetReading) -> Result<IsActiveResponse, Status> {
    check_hold(reading)?;
    if reading.planned_instances > 0 || reading.running_instances > 0 {
        return Ok(IsActiveResponse { result: true });
    }
    let forecast = reading.lead_forecast.ok_or_else(|| no_forecast(fleet))?;
    Ok(IsActiveResponse {
        result: forecast.slo_upper > 0.0,
    })
}

/// The fleet of a `GetMetrics` request: its ScaledObject's, when the metric is that fleet's.
fn metrics_fleet(request: &GetMetricsRequest) -> Result<FleetRef, Status> {
    let object = request
        .scaled_object_ref
        .as_ref()
        .ok_or_else(|| Status::invalid_argument("scaledObjectRef: required"))?;
    let fleet = fleet_of(object)?;
    let expected = fleet.metric_name();
    if request.metric_name != expected {
        return Err(Status::invalid_argument(format!(
            "metricName: `{}` is not this ScaledObject's metric; expected `{expected}` (from GetMetricSpec)",
            request.metric_name
        )));
    }
    Ok(fleet)
}

#[tonic::async_trait]
impl ExternalScaler for ScalerService {
    async fn is_active(
        &self,
        request: Request<ScaledObjectRef>,
    ) -> Result<Response<IsActiveResponse>, Status> {
        let result = self.answer(request.get_ref(), is_active);
        self.counted("IsActive", result)
    }

    type StreamIsActiveStream = ReceiverStream<Result<IsActiveResponse, Status>>;

    async fn stream_is_active(
        &self,
        request: Request<ScaledObjectRef>,
    ) -> Result<Response<Self::StreamIsActiveStream>, Status> {
        self.watch("StreamIsActive", request.get_ref(), is_active)
    }

    async fn get_metric_spec(
        &self,
        request: Request<ScaledObjectRef>,
    ) -> Result<Response<GetMetricSpecResponse>, Status> {
        let result = self.answer(request.get_ref(), metric_spec);
        self.counted("GetMetricSpec", result)
    }

    async fn get_metrics(
        &self,
        request: Request<GetMetricsRequest>,
    ) -> Result<Response<GetMetricsResponse>, Status> {
        let result = metrics_fleet(request.get_ref())
            .and_then(|fleet| read(self.source.as_ref(), &fleet, metric_value));
        self.counted("GetMetrics", result)
    }

    type StreamMetricSpecStream = ReceiverStream<Result<GetMetricSpecResponse, Status>>;

    async fn stream_metric_spec(
        &self,
        request: Request<ScaledObjectRef>,
    ) -> Result<Response<Self::StreamMetricSpecStream>, Status> {
        self.watch("StreamMetricSpec", request.get_ref(), metric_spec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::LeadForecast;

    fn fleet() -> FleetRef {
        FleetRef {
            region: "eu".into(),
            fleet: "web".into(),
        }
    }

    fn reading(slo_upper: Option<f64>) -> FleetReading {
        FleetReading {
            lead_forecast: slo_upper.map(|slo_upper| LeadForecast {
                minute: 1_800_000_000,
                slo_upper,
            }),
            capacity_rps: 2.5,
            planned_instances: 0,
            running_instances: 0,
            hold: None,
        }
    }

    #[test]
    fn the_metric_is_the_slo_bound_at_the_lead_in_requests_per_second() {
        let answer = metric_value(&fleet(), &reading(Some(330.0))).expect("answer");
        assert_eq!(
            answer.metric_values,
            vec![MetricValue {
                metric_name: "prescale-eu-web".into(),
                metric_value: 6,
                metric_value_float: 5.5,
            }]
        );
    }

    #[test]
    fn the_target_is_the_capacity_of_one_instance() {
        let answer = metric_spec(&fleet(), &reading(None)).expect("answer");
        assert_eq!(
            answer.metric_specs,
            vec![MetricSpec {
                metric_name: "prescale-eu-web".into(),
                target_size: 2,
                target_size_float: 2.5,
            }]
        );
        let mut tiny = reading(None);
        tiny.capacity_rps = 0.4;
        assert_eq!(
            metric_spec(&fleet(), &tiny).expect("answer").metric_specs[0].target_size,
            1
        );
        tiny.capacity_rps = 0.0;
        assert_eq!(
            metric_spec(&fleet(), &tiny)
                .map(|_| ())
                .map_err(|s| s.code()),
            Err(Code::Unavailable)
        );
    }

    #[test]
    fn without_a_forecast_the_metric_is_unavailable_not_zero() {
        let status = metric_value(&fleet(), &reading(None)).expect_err("no forecast");
        assert_eq!(status.code(), Code::Unavailable);
        assert!(status.message().contains("no forecast yet"), "{status:?}");
        let status = metric_value(&fleet(), &reading(Some(f64::NAN))).expect_err("NaN");
        assert_eq!(status.code(), Code::Unavailable);
    }

    #[test]
    fn holding_or_forecast_only_answers_errors_so_keda_keeps_its_replicas() {
        let mut held = reading(Some(120.0));
        held.hold = Some(Hold::ForecastOnly);
        assert_eq!(
            metric_value(&fleet(), &held)
                .map(|_| ())
                .map_err(|s| s.code()),
            Err(Code::FailedPrecondition)
        );
        assert_eq!(
            is_active(&fleet(), &held).map(|_| ()).map_err(|s| s.code()),
            Err(Code::FailedPrecondition)
        );
        held.hold = Some(Hold::NoData("no data since 12:00".into()));
        let status = metric_value(&fleet(), &held).expect_err("held");
        assert_eq!(status.code(), Code::Unavailable);
        assert!(
            status.message().contains("no data since 12:00"),
            "{status:?}"
        );
        // The target does not depend on the plan being acted on.
        assert!(metric_spec(&fleet(), &held).is_ok());
    }

    #[test]
    fn active_with_forecast_demand_planned_or_running_instances() {
        let active = |r: &FleetReading| {
            is_active(&fleet(), r)
                .map(|a| a.result)
                .map_err(|s| s.code())
        };
        assert_eq!(active(&reading(Some(0.0))), Ok(false));
        assert_eq!(active(&reading(Some(0.5))), Ok(true));
        let mut planned = reading(Some(0.0));
        planned.planned_instances = 1;
        assert_eq!(active(&planned), Ok(true));
        let mut running = reading(None);
        running.running_instances = 2;
        assert_eq!(active(&running), Ok(true));
        assert_eq!(active(&reading(None)), Err(Code::Unavailable));
    }

    #[test]
    fn get_metrics_checks_its_object_and_metric_name() {
        let object = ScaledObjectRef {
            name: "web".into(),
            namespace: "default".into(),
            scaler_metadata: [("region", "eu"), ("fleet", "web")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        let request = |metric: &str, object: Option<ScaledObjectRef>| GetMetricsRequest {
            scaled_object_ref: object,
            metric_name: metric.into(),
        };
        assert!(metrics_fleet(&request("prescale-eu-web", Some(object.clone()))).is_ok());
        let status = metrics_fleet(&request("prescale-eu-api", Some(object.clone())))
            .expect_err("wrong metric");
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().starts_with("metricName:"), "{status:?}");
        let status = metrics_fleet(&request("prescale-eu-web", None)).expect_err("no object");
        assert!(
            status.message().starts_with("scaledObjectRef:"),
            "{status:?}"
        );
    }
}
