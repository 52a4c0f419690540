//! Wiring of KEDA's external scaler (`prescale-keda`) into the forecaster and `prescale up`:
//! the scaler's source over the live driver's view, the gRPC server on the node's runtime
//! (started when `forecaster.keda_listen` is set, stopped with the node), and its metric
//! `prescale_keda_requests_total{method,outcome}`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::anyhow;
use prescale_config::Config;
use prescale_keda::{
    FleetReading, FleetRef, Hold, LeadForecast, RunningScaler, ScalerListen, ScalerService,
    ScalerSource, ScalerStats, SourceError, StreamSettings, TlsFiles,
};
use prescale_proxy::admin::MetricsSource;
use prescale_regions::live::LiveShared;

use crate::exit::CliError;
use crate::live_cmd::Live;

/// A scaler being served, with its counters.
pub struct Keda {
    pub running: RunningScaler,
    stats: Arc<ScalerStats>,
}

/// The fleets of the forecaster's region as the live driver shows them.
struct LiveSource {
    region: String,
    /// Each fleet's configured capacity per instance, until the plan has its own figure.
    configured_capacity: HashMap<String, f64>,
    live: Option<Arc<LiveShared>>,
}

impl ScalerSource for LiveSource {
    fn reading(&self, fleet: &FleetRef) -> Result<FleetReading, SourceError> {
        if fleet.region != self.region {
            return Err(SourceError::NotFound(format!(
                "region `{}` is not planned here (this forecaster plans `{}`)",
                fleet.region, self.region
            )));
        }
        let Some(&configured) = self.configured_capacity.get(&fleet.fleet) else {
            return Err(SourceError::NotFound(format!(
                "no fleet `{}` in region `{}`",
                fleet.fleet, self.region
            )));
        };
        let Some(live) = &self.live else {
            return Err(SourceError::Unavailable(format!(
                "no live driver runs for region `{}` on this forecaster",
                self.region
            )));
        };
        let view = live.view();
        let Some(planned) = view.fleets.iter().find(|f| f.fleet == fleet.fleet) else {
            return Err(SourceError::Unavailable(format!(
                "the live driver has not planned fleet `{}` yet",
                fleet.fleet
            )));
        };
        let hold = if view.forecast_only {
            Some(Hold::ForecastOnly)
        } else {
            view.holding.clone().map(Hold::NoData)
        };
        Ok(FleetReading {
            lead_forecast: planned.lead_forecast.as_ref().map(|p| LeadForecast {
                minute: p.minute,
                slo_upper: p.slo_upper,
            }),
            capacity_rps: planned
                .capacity
                .as_ref()
                .map_or(configured, |c| c.rps_per_instance),
            planned_instances: planned.planned,
            running_instances: planned.instances.ready + planned.instances.warming,
            hold,
        })
    }
}

/// Starts the scaler when `forecaster.keda_listen` is set; it stops when `shutdown` turns
/// true (or its sender is dropped).
pub fn start(
    config: &Config,
    live: Option<&Arc<Live>>,
    control: &tokio::runtime::Handle,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> Result<Option<Keda>, CliError> {
    let Some(settings) = &config.forecaster else {
        return Ok(None);
    };
    let Some(addr) = settings.keda_listen else {
        return Ok(None);
    };
    let tls = match (&settings.keda_tls_cert, &settings.keda_tls_key) {
        (Some(cert), Some(key)) => Some(TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
        }),
        // Validation allows both or neither.
        _ => None,
    };
    let region = config.node_region().unwrap_or_default().to_string();
    let source = LiveSource {
        configured_capacity: config
            .fleets
            .iter()
            .filter(|f| f.region == region)
            .map(|f| (f.name.clone(), f.capacity_rps))
            .collect(),
        region,
        live: live.map(|l| Arc::clone(&l.shared)),
    };
    let stats = Arc::new(ScalerStats::default());
    let service = ScalerService::new(
        Arc::new(source),
        Arc::clone(&stats),
        StreamSettings::default(),
        shutdown.clone(),
    );
    let listen_tls = tls.is_some();
    let listen = ScalerListen { addr, tls };
    let running =
        prescale_keda::server::start(&listen, service, shutdown, control).map_err(|e| {
            use prescale_keda::Error;
            let key = match &e {
                Error::Bind { .. } => "forecaster.keda_listen",
                Error::ReadCert { .. } => "forecaster.keda_tls_cert",
                Error::ReadKey { .. } => "forecaster.keda_tls_key",
                Error::Tls { .. } => "forecaster.keda_tls_cert / forecaster.keda_tls_key",
            };
            CliError::input(anyhow!("{key}: {e}"))
        })?;
    if let Some(live) = live {
        let (stats, tls) = (Arc::clone(&stats), listen_tls);
        let local = running.local_addr;
        live.show_in_plan(
            "keda",
            Box::new(move || {
                let requests: Vec<serde_json::Value> = stats
                    .counts()
                    .into_iter()
                    .filter(|(_, _, n)| *n > 0)
                    .map(|(method, outcome, n)| {
                        serde_json::json!({ "method": method, "outcome": outcome, "count": n })
                    })
                    .collect();
                serde_json::json!({ "listen": local.to_string(), "tls": tls, "requests": requests })
            }),
        );
    }
    Ok(Some(Keda { running, stats }))
}

impl Keda {
    pub fn local_addr(&self) -> SocketAddr {
        self.running.local_addr
    }

    pub fn metrics(&self) -> MetricsSource {
        let stats = Arc::clone(&self.stats);
        Arc::new(move |out: &mut String| {
            use std::fmt::Write;
            let _ = writeln!(out, "# HELP prescale_keda_requests_total Requests KEDA made of the external scaler, by method and outcome (`ok` or the gRPC status; a stream counts once, when opened).\n# TYPE prescale_keda_requests_total counter");
            for (method, outcome, n) in stats.counts() {
                let _ = writeln!(
                    out,
                    "prescale_keda_requests_total{{method=\"{method}\",outcome=\"{outcome}\"}} {n}"
                );
            }
        })
    }
}
