//! Reloading a running node's config: SIGHUP and `POST /api/v1/reload` re-read the file the
//! node started with (with the same command-line overrides), validate it, and hand it to
//! [`DataPlane::reload`], which applies it whole or refuses it whole. The outcome is logged,
//! counted (`prescale_config_reloads_total`) and, for the admin call, answered.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use prescale_config::Config;
use prescale_proxy::admin::{self, AdminRequest, AdminResponse, Handler};
use prescale_proxy::dataplane::DataPlane;
use prescale_proxy::reload::{ReloadError, ReloadOutcome};

/// Turns a config as read from the file into the one the node runs (command-line overrides),
/// validated.
pub type Prepare = Box<dyn Fn(Config) -> anyhow::Result<Config> + Send + Sync>;

/// Where a reload reads the config: the file the node started with, prepared as at start.
pub struct ConfigSource {
    /// `None`: the node runs the embedded default (nothing to re-read).
    pub path: Option<PathBuf>,
    pub prepare: Prepare,
}

/// Why a reload did not apply.
#[derive(Debug)]
pub enum ReloadFailure {
    NoFile,
    /// The file cannot be read, or its config is invalid.
    Invalid(anyhow::Error),
    Refused(ReloadError),
}

impl std::fmt::Display for ReloadFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReloadFailure::NoFile => f.write_str(
                "the node runs the embedded default config: there is no file to re-read",
            ),
            ReloadFailure::Invalid(e) => write!(f, "{e:#}"),
            ReloadFailure::Refused(e) => write!(f, "{e}"),
        }
    }
}

impl ConfigSource {
    /// Re-reads and applies the config.
    pub fn reload(&self, plane: &DataPlane) -> Result<ReloadOutcome, ReloadFailure> {
        let Some(path) = &self.path else {
            plane.note_refused_reload();
            return Err(ReloadFailure::NoFile);
        };
        let next = prescale_config::load_file(path)
            .map_err(anyhow::Error::from)
            .and_then(|config| (self.prepare)(config))
            .map_err(|e| {
                plane.note_refused_reload();
                ReloadFailure::Invalid(e)
            })?;
        plane.reload(&next).map_err(ReloadFailure::Refused)
    }

    /// Reloads and logs the outcome (`trigger`: what asked for it).
    pub fn reload_logged(
        &self,
        plane: &DataPlane,
        trigger: &str,
    ) -> Result<ReloadOutcome, ReloadFailure> {
        let result = self.reload(plane);
        let file = self
            .path
            .as_ref()
            .map_or_else(|| "-".to_string(), |p| p.display().to_string());
        match &result {
            Ok(outcome) if outcome.changed.is_empty() => {
                tracing::info!(trigger, %file, "config reloaded: nothing changed")
            }
            Ok(outcome) => {
                tracing::info!(trigger, %file, changed = %outcome.changed.join("; "), "config reloaded")
            }
            Err(e) => {
                tracing::error!(trigger, %file, error = %e, "config reload refused; the running config stays")
            }
        }
        result
    }
}

/// SIGHUP reloads the config (as nginx does). Watched whatever the config, so that the signal
/// never ends the process.
pub fn watch_reload_signal(
    control: &tokio::runtime::Runtime,
    source: Arc<ConfigSource>,
    plane: Arc<DataPlane>,
) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hangup = {
        let _guard = control.enter();
        signal(SignalKind::hangup()).context("cannot watch SIGHUP")?
    };
    control.spawn(async move {
        while hangup.recv().await.is_some() {
            let (source, plane) = (Arc::clone(&source), Arc::clone(&plane));
            // Reading the file and resolving backend names block: off the runtime's thread.
            let _ =
                tokio::task::spawn_blocking(move || source.reload_logged(&plane, "SIGHUP")).await;
        }
    });
    Ok(())
}

/// `POST /api/v1/reload`: 200 with what changed; 400 when the file cannot be read or is
/// invalid; 409 when it changes keys only a restart applies (listed) or there is no file.
pub fn handler(source: Arc<ConfigSource>, plane: Arc<DataPlane>) -> Handler {
    Arc::new(move |request: &AdminRequest| {
        if request.path != "/api/v1/reload" {
            return None;
        }
        if request.method != http::Method::POST {
            return Some(crate::live_cmd::method_not_allowed(
                "POST",
                "POST /api/v1/reload",
            ));
        }
        Some(respond(source.reload_logged(&plane, "POST /api/v1/reload")))
    })
}

fn respond(result: Result<ReloadOutcome, ReloadFailure>) -> AdminResponse {
    use http::StatusCode;
    match result {
        Ok(outcome) => admin::json(&serde_json::json!({
            "result": "applied",
            "changed": outcome.changed,
        })),
        Err(ReloadFailure::Refused(ReloadError::NeedsRestart { keys })) => {
            let body = serde_json::json!({
                "result": "refused",
                "error": ReloadError::NeedsRestart { keys: keys.clone() }.to_string(),
                "restart_needed": keys,
            });
            let mut response = admin::json(&body);
            *response.status_mut() = StatusCode::CONFLICT;
            response
        }
        Err(e @ ReloadFailure::NoFile) => refused(StatusCode::CONFLICT, &e),
        Err(e) => refused(StatusCode::BAD_REQUEST, &e),
    }
}

fn refused(status: http::StatusCode, e: &ReloadFailure) -> AdminResponse {
    let mut response = admin::json(&serde_json::json!({
        "result": "refused",
        "error": e.to_string(),
    }));
    *response.status_mut() = status;
    response
}
