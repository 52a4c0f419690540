//! The forecaster's persona admin routes over the persona store in its database:
//! `GET`/`POST /api/v1/personas` (list the live personas / create one → 201) and
//! `GET [?version=N]`/`PUT`/`DELETE /api/v1/personas/{name}`.
//!
//! Answers: 400 naming the field or parameter for bad input, 404 for an unknown name or
//! version, 409 when a created name is live already, 405 with `Allow` for other methods, 413
//! for a document over [`MAX_DOCUMENT_BYTES`] (64 KiB, within the listener's 1 MiB), 500 when
//! the database fails. Regions and fleets a persona names must be the config's.
//!
//! A change (create, update, delete) is answered once the change hook has run: the forecaster
//! republishes the learned model in force so that its profiles take the personas as they are now.
//!
//! [`MAX_DOCUMENT_BYTES`]: prescale_regions::personas::MAX_DOCUMENT_BYTES

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use anyhow::anyhow;
use prescale_config::Config;
use prescale_gossip::model::valid_profile_name;
use prescale_gossip::NodeClock;
use prescale_proxy::admin::{self, AdminRequest, AdminResponse, Handler};
use prescale_regions::personas::{Known, Persona, PersonaError, PersonaStore};

use crate::exit::CliError;

const PERSONAS_PATH: &str = "/api/v1/personas";

/// The persona store as the admin API changes it.
pub struct PersonaAdmin {
    store: Mutex<PersonaStore>,
    /// The config's regions and fleets, which personas may name.
    known: Known,
    /// Node time for the versions' `created_at` and `deleted_at`.
    clock: NodeClock,
    /// Run after every change that was stored.
    changed: OnceLock<ChangeHook>,
}

/// What runs after a persona change was stored.
pub type ChangeHook = Arc<dyn Fn() + Send + Sync>;

impl PersonaAdmin {
    /// Opens the personas' tables in the forecaster's database.
    pub fn open(config: &Config, database: &Path, clock: NodeClock) -> Result<Self, CliError> {
        let store = PersonaStore::open(database)
            .map_err(|e| CliError::input(anyhow!("forecaster.database: {e}")))?;
        let mut fleets: Vec<String> = config.fleets.iter().map(|f| f.name.clone()).collect();
        fleets.sort();
        fleets.dedup();
        Ok(PersonaAdmin {
            store: Mutex::new(store),
            known: Known {
                regions: config.regions.iter().map(|r| r.name.clone()).collect(),
                fleets,
            },
            clock,
            changed: OnceLock::new(),
        })
    }

    /// Sets what runs after each stored change (once; a second hook is refused).
    pub fn on_change(&self, hook: ChangeHook) -> Result<(), CliError> {
        self.changed
            .set(hook)
            .map_err(|_| CliError::runtime(anyhow!("the persona change hook is set already")))
    }

    fn notify_changed(&self) {
        if let Some(hook) = self.changed.get() {
            hook();
        }
    }

    fn store(&self) -> MutexGuard<'_, PersonaStore> {
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The admin handler of `/api/v1/personas` and `/api/v1/personas/{name}`.
    pub fn handler(self: &Arc<Self>) -> Handler {
        let personas = Arc::clone(self);
        Arc::new(move |request: &AdminRequest| {
            if request.path == PERSONAS_PATH {
                return Some(personas.collection(request));
            }
            let name = request
                .path
                .strip_prefix(PERSONAS_PATH)
                .and_then(|rest| rest.strip_prefix('/'))?;
            Some(personas.item(request, name))
        })
    }

    /// `GET` (the live personas by name) and `POST` (create → 201).
    fn collection(&self, request: &AdminRequest) -> AdminResponse {
        let allow = "GET, POST";
        if !matches!(request.method, http::Method::GET | http::Method::POST) {
            return method_not_allowed(allow, "GET or POST /api/v1/personas");
        }
        if let Err(message) = query_params(request, &[]) {
            return bad_request(&message);
        }
        match request.method {
            http::Method::GET => match self.store().list() {
                Ok(personas) => admin::json(&serde_json::json!({ "personas": personas })),
                Err(e) => persona_error(e),
            },
            _ => {
                let persona = match Persona::from_json(&request.body, None, &self.known) {
                    Ok(persona) => persona,
                    Err(e) => return persona_error(e),
                };
                let created = self.store().create(&persona, self.clock.now_ms());
                match created {
                    Ok(stored) => {
                        tracing::info!(name = %stored.persona.name, version = stored.version, "persona created");
                        self.notify_changed();
                        let mut response =
                            admin::json_with_status(http::StatusCode::CREATED, &stored);
                        if let Ok(location) = http::HeaderValue::from_str(&format!(
                            "{PERSONAS_PATH}/{}",
                            stored.persona.name
                        )) {
                            response
                                .headers_mut()
                                .insert(http::header::LOCATION, location);
                        }
                        response
                    }
                    Err(e) => persona_error(e),
                }
            }
        }
    }

    /// `GET [?version=N]`, `PUT` (a new version → 200) and `DELETE` (→ 200 with what was
    /// deleted) of one persona.
    fn item(&self, request: &AdminRequest, name: &str) -> AdminResponse {
        let allow = "GET, PUT, DELETE";
        if !matches!(
            request.method,
            http::Method::GET | http::Method::PUT | http::Method::DELETE
        ) {
            return method_not_allowed(allow, "GET, PUT or DELETE /api/v1/personas/{name}");
        }
        if !valid_profile_name(name) {
            return bad_request(&format!(
                "`{name}` in the path is not a valid persona name; expected 1 to 64 ASCII letters, digits, '.', '-' or '_'"
            ));
        }
        let allowed: &[&str] = if request.method == http::Method::GET {
            &["version"]
        } else {
            &[]
        };
        let params = match query_params(request, allowed) {
            Ok(params) => params,
            Err(message) => return bad_request(&message),
        };
        match request.method {
            http::Method::GET => {
                let version = match params.first() {
                    None => None,
                    Some((_, value)) => match value.parse::<u64>() {
                        Ok(v) if v >= 1 => Some(v),
                        _ => {
                            return bad_request(&format!(
                                "version: expected a version number (a whole number from 1), got `{value}`"
                            ))
                        }
                    },
                };
                match self.store().get(name, version) {
                    Ok(stored) => admin::json(&stored),
                    Err(e) => persona_error(e),
                }
            }
            http::Method::PUT => {
                let mut store = self.store();
                // An unknown name is a 404 whatever the body holds.
                if let Err(e) = store.get(name, None) {
                    return persona_error(e);
                }
                let persona = match Persona::from_json(&request.body, Some(name), &self.known) {
                    Ok(persona) => persona,
                    Err(e) => return persona_error(e),
                };
                let updated = store.update(&persona, self.clock.now_ms());
                drop(store);
                match updated {
                    Ok(stored) => {
                        tracing::info!(name = %stored.persona.name, version = stored.version, "persona updated");
                        self.notify_changed();
                        admin::json(&stored)
                    }
                    Err(e) => persona_error(e),
                }
            }
            _ => {
                let deleted = self.store().delete(name, self.clock.now_ms());
                match deleted {
                    Ok(stored) => {
                        tracing::info!(name = %stored.persona.name, version = stored.version, "persona deleted");
                        self.notify_changed();
                        admin::json(&stored)
                    }
                    Err(e) => persona_error(e),
                }
            }
        }
    }
}

/// The query's parameters, each of which must be in `allowed` and given once; otherwise the
/// message of the 400 to answer. Keys are compared as sent (no percent-decoding: every known
/// key is plain).
fn query_params(request: &AdminRequest, allowed: &[&str]) -> Result<Vec<(String, String)>, String> {
    let mut params: Vec<(String, String)> = Vec::new();
    let pairs = request
        .query
        .as_deref()
        .unwrap_or_default()
        .split('&')
        .filter(|pair| !pair.is_empty());
    for pair in pairs {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if !allowed.contains(&key) {
            let expected = if allowed.is_empty() {
                "this route takes none".to_string()
            } else {
                format!("expected {}", allowed.join(", "))
            };
            return Err(format!("unknown query parameter `{key}` ({expected})"));
        }
        if params.iter().any(|(k, _)| k == key) {
            return Err(format!("{key}: given more than once"));
        }
        params.push((key.to_string(), value.to_string()));
    }
    Ok(params)
}

/// A persona error as the admin API answers it.
fn persona_error(e: PersonaError) -> AdminResponse {
    let status = match &e {
        PersonaError::Input { .. } => http::StatusCode::BAD_REQUEST,
        PersonaError::TooLarge { .. } => http::StatusCode::PAYLOAD_TOO_LARGE,
        PersonaError::NotFound { .. } | PersonaError::VersionNotFound { .. } => {
            http::StatusCode::NOT_FOUND
        }
        PersonaError::Conflict { .. } => http::StatusCode::CONFLICT,
        PersonaError::Store { .. } | PersonaError::Unreadable { .. } => {
            tracing::warn!(error = %e, "personas: the database failed");
            http::StatusCode::INTERNAL_SERVER_ERROR
        }
    };
    admin::json_error(status, &e.to_string())
}

fn bad_request(message: &str) -> AdminResponse {
    admin::json_error(http::StatusCode::BAD_REQUEST, message)
}

fn method_not_allowed(allow: &'static str, message: &str) -> AdminResponse {
    let mut response = admin::json_error(http::StatusCode::METHOD_NOT_ALLOWED, message);
    response
        .headers_mut()
        .insert(http::header::ALLOW, http::HeaderValue::from_static(allow));
    response
}
