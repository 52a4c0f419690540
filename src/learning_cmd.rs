//! The forecaster's profile learning, wired into the process: the sample table hooked to the
//! sketch sink, the learning service publishing through the QUIC receiver, its admin routes
//! (`GET /api/v1/profiles/model`, `POST /api/v1/profiles/rebuild`; `GET /api/v1/profiles` is
//! the proxy's, see `forecaster_cmd::run`) and its `prescale_learning_*` metrics.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::anyhow;
use prescale_config::Config;
use prescale_gossip::NodeClock;
use prescale_proxy::admin::{self, AdminRequest, Handler, MetricsSource};
use prescale_regions::ingest::StoreSink;
use prescale_regions::learning::service::{BuildOutcome, RebuildError};
use prescale_regions::learning::{
    LearningService, LearningSettings, ModelPublisher, ModelStore, SampleTable,
};

use crate::exit::CliError;

const MODEL_PATH: &str = "/api/v1/profiles/model";
const REBUILD_PATH: &str = "/api/v1/profiles/rebuild";

/// Longest an on-demand build is waited for before the answer says it is still running.
const REBUILD_WAIT: Duration = Duration::from_secs(60);
/// Longest a persona change waits for the model in force to be published again (behind a build
/// that is running, if any); past it the republishing still happens, unwaited.
const REPUBLISH_WAIT: Duration = Duration::from_secs(15);

/// The learning of a running forecaster; `service` is `None` when `learning.enabled = false`.
pub struct Learning {
    service: Option<LearningService>,
    region: String,
}

/// Makes the sample table and hooks it to `sink`, so that every sketch the sink stores from now
/// on has its sampled users taken. Call before the receiver starts. `None` when learning is off.
pub fn attach_samples(config: &Config, sink: &StoreSink) -> Option<Arc<SampleTable>> {
    if !config.learning.enabled {
        return None;
    }
    let table = Arc::new(SampleTable::new(config.learning.max_sampled_users));
    if !sink.set_observer(table.clone()) {
        tracing::warn!("the sketch sink has an observer already; profile learning gets no samples");
    }
    Some(table)
}

/// Starts the learning service (when `samples` is given): loads and republishes the stored
/// model, then builds on its own thread.
pub fn start(
    config: &Config,
    samples: Option<Arc<SampleTable>>,
    publisher: Arc<dyn ModelPublisher>,
    database: &Path,
    clock: NodeClock,
) -> Result<Learning, CliError> {
    let region = config.node_region().unwrap_or_default().to_string();
    let Some(table) = samples else {
        tracing::info!("profile learning is off (learning.enabled = false)");
        return Ok(Learning {
            service: None,
            region,
        });
    };
    let store = ModelStore::open(database)
        .map_err(|e| CliError::input(anyhow!("forecaster.database: {e}")))?;
    let service = LearningService::start(
        LearningSettings::from_config(&config.learning, &region),
        table,
        store,
        publisher,
        Arc::new(move || clock.now_secs()),
    )
    .map_err(|e| CliError::runtime(anyhow!("profile learning: {e}")))?;
    Ok(Learning {
        service: Some(service),
        region,
    })
}

impl Learning {
    /// Ends the service's thread.
    pub fn stop(&self) {
        if let Some(service) = &self.service {
            service.stop();
        }
    }

    /// Publishes the model in force again, as a new version, so that its profiles take the
    /// personas as they are now (after a persona change).
    pub fn republish(&self) {
        let Some(service) = &self.service else { return };
        match service.republish(REPUBLISH_WAIT) {
            Ok(Some(republished)) => tracing::info!(
                version = republished.version,
                of_version = republished.of_version,
                "personas changed: the profile model in force is published again"
            ),
            Ok(None) => tracing::info!(
                "personas changed; no profile model yet (the first build maps the personas)"
            ),
            Err(e) => {
                tracing::warn!(error = %e, "personas changed but the profile model was not published again")
            }
        }
    }

    /// `GET /api/v1/profiles/model` and `POST /api/v1/profiles/rebuild`.
    pub fn handlers(self: &Arc<Self>) -> Vec<Handler> {
        let learning = Arc::clone(self);
        vec![Arc::new(move |request: &AdminRequest| {
            match request.path.as_str() {
                MODEL_PATH if request.method == http::Method::GET => Some(learning.status()),
                MODEL_PATH => Some(method_not_allowed("GET", MODEL_PATH)),
                REBUILD_PATH if request.method == http::Method::POST => Some(learning.rebuild()),
                REBUILD_PATH => Some(method_not_allowed("POST", REBUILD_PATH)),
                _ => None,
            }
        })]
    }

    fn status(&self) -> admin::AdminResponse {
        let Some(service) = &self.service else {
            return admin::json(&serde_json::json!({
                "enabled": false,
                "region": self.region,
                "model_version": null,
            }));
        };
        match serde_json::to_value(service.status()) {
            Ok(mut body) => {
                if let Some(object) = body.as_object_mut() {
                    object.insert("enabled".into(), true.into());
                }
                admin::json(&body)
            }
            Err(e) => admin::json_error(
                http::StatusCode::INTERNAL_SERVER_ERROR,
                &format!("cannot encode the learning status: {e}"),
            ),
        }
    }

    fn rebuild(&self) -> admin::AdminResponse {
        let Some(service) = &self.service else {
            return admin::json_error(
                http::StatusCode::CONFLICT,
                "profile learning is off (learning.enabled = false)",
            );
        };
        match service.rebuild(REBUILD_WAIT) {
            Ok(rebuilt) => admin::json(&serde_json::json!({
                "version": rebuilt.model.version,
                "build": rebuilt.build,
                "model": rebuilt.model,
            })),
            Err(RebuildError::Busy) => admin::json_error(
                http::StatusCode::CONFLICT,
                "a profile build is already running; try again when it is done",
            ),
            Err(RebuildError::Failed {
                outcome,
                reason,
                storage,
            }) => {
                let status = if storage {
                    http::StatusCode::INTERNAL_SERVER_ERROR
                } else {
                    http::StatusCode::UNPROCESSABLE_ENTITY
                };
                admin::json_with_status(
                    status,
                    &serde_json::json!({
                        "error": format!("no model was built, the current one stays: {reason}"),
                        "outcome": outcome,
                    }),
                )
            }
            Err(e @ RebuildError::TimedOut(_)) => admin::json_with_status(
                http::StatusCode::ACCEPTED,
                &serde_json::json!({ "error": e.to_string() }),
            ),
            Err(e @ RebuildError::Stopped) => {
                admin::json_error(http::StatusCode::SERVICE_UNAVAILABLE, &e.to_string())
            }
        }
    }

    pub fn metrics(self: &Arc<Self>) -> MetricsSource {
        let learning = Arc::clone(self);
        Arc::new(move |out: &mut String| {
            use std::fmt::Write;
            admin::write_metric(
                out,
                "prescale_learning_enabled",
                "gauge",
                "Whether the forecaster learns profile models (learning.enabled).",
                u8::from(learning.service.is_some()),
            );
            let Some(service) = &learning.service else {
                return;
            };
            let m = service.metrics();
            let gauges: [(&str, &str, String); 5] = [
                (
                    "prescale_learning_model_version",
                    "Version of the profile model in force (0: none yet).",
                    m.model_version.unwrap_or(0).to_string(),
                ),
                (
                    "prescale_learning_sampled_users",
                    "Users whose latest feature sample is held for the next build.",
                    m.sampled_users.to_string(),
                ),
                (
                    "prescale_learning_profiles",
                    "Profiles in the model in force.",
                    m.profiles.to_string(),
                ),
                (
                    "prescale_learning_anomalous_users",
                    "Sampled users farther than the anomaly distance from every profile, in the build of the model in force.",
                    m.anomalous_users.to_string(),
                ),
                (
                    "prescale_learning_anomalous_share",
                    "Share of the sampled users that were anomalous, in the build of the model in force.",
                    m.anomalous_share.to_string(),
                ),
            ];
            for (name, help, value) in gauges {
                admin::write_metric(out, name, "gauge", help, value);
            }
            let _ = writeln!(
                out,
                "# HELP prescale_learning_builds_total Profile builds by outcome (built, too_few_users, failed).\n# TYPE prescale_learning_builds_total counter"
            );
            for outcome in BuildOutcome::ALL {
                let _ = writeln!(
                    out,
                    "prescale_learning_builds_total{{outcome=\"{}\"}} {}",
                    outcome.label(),
                    m.builds.of(outcome)
                );
            }
            if let Some(seconds) = m.last_build_secs {
                admin::write_metric(
                    out,
                    "prescale_learning_last_build_seconds",
                    "gauge",
                    "Duration of the last profile build.",
                    seconds,
                );
            }
            let counters = [
                (
                    "prescale_learning_publish_failures_total",
                    "Models stored but not pushed to the proxies for an error.",
                    m.publish_failures,
                ),
                (
                    "prescale_learning_samples_observed_total",
                    "Sampled users taken from stored sketches.",
                    m.samples_observed,
                ),
                (
                    "prescale_learning_samples_skipped_new_total",
                    "Sampled users skipped because they were in the `new` profile.",
                    m.samples_skipped_new,
                ),
                (
                    "prescale_learning_samples_evicted_total",
                    "Sampled users evicted to stay within learning.max_sampled_users.",
                    m.samples_evicted,
                ),
                (
                    "prescale_learning_samples_expired_total",
                    "Sampled users dropped for not being seen within learning.sample_max_age_secs.",
                    m.samples_expired,
                ),
            ];
            for (name, help, value) in counters {
                admin::write_metric(out, name, "counter", help, value);
            }
        })
    }
}

fn method_not_allowed(allow: &'static str, path: &str) -> admin::AdminResponse {
    let mut response = admin::json_error(
        http::StatusCode::METHOD_NOT_ALLOWED,
        &format!("{path} takes {allow}"),
    );
    response
        .headers_mut()
        .insert(http::header::ALLOW, http::HeaderValue::from_static(allow));
    response
}
