//! The admin user lookup, `GET /api/v1/users/lookup?id=RAW`: what this proxy knows of one user,
//! and why the model sees the user as it does.
//!
//! Owns: turning the raw id into the user's key (through
//! [`IdentityResolver::reported_key`], the one function that hashes an identity reported outside
//! a request, so the key is the one the request path gives that id in the first configured
//! source that carries a user id), the read of the user's table entry, and the explanation
//! against the installed model (the nearest centroids, the anomaly threshold, the features that
//! contribute most to the distance to the chosen centroid).
//!
//! Invariants: the raw id is never stored, logged or echoed back — answers and errors name the
//! user by its key (hex) only; a user that is not resident is a 404, never an empty 200; a
//! missing, empty, oversized or unusable `id` is a 400 saying which; the lookup reads the table
//! and the model and changes neither. Who may ask: the admin listener's bearer token guards this
//! route as it guards every data route ([`crate::admin`]).

use http::StatusCode;
use serde::Serialize;

use crate::admin::{self, AdminRequest, AdminResponse};
use crate::dataplane::FeatureMap;
use crate::features::{FeatureTable, FEATURE_NAMES};
use crate::identity::{IdentityError, IdentityResolver, UserKey};
use crate::profiles::{CompiledModel, ProfileAssigner};

/// Centroids listed by distance.
pub const NEAREST_LISTED: usize = 3;
/// Features listed as contributing most to the distance.
pub const REASONS_LISTED: usize = 3;

/// What a lookup reads.
pub struct LookupContext<'a> {
    pub identity: &'a IdentityResolver,
    /// `None` when per-user profiling is off.
    pub table: Option<&'a FeatureTable>,
    pub assigner: &'a ProfileAssigner,
    /// Node-time unix seconds (features are decayed to it).
    pub now_secs: u64,
}

/// Why a lookup has no answer. Never carries the raw id.
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    #[error("query parameter `id` is missing: ask /api/v1/users/lookup?id=<the user's id>")]
    MissingId,
    #[error("query parameter `id` is empty")]
    EmptyId,
    #[error("query parameter `id` is longer than {max_len} bytes (identity.max_len)")]
    TooLong { max_len: usize },
    #[error("query parameter `id` is not a usable user id: {0}")]
    BadId(#[source] IdentityError),
    #[error("per-user profiling is off on this proxy (profiling.enabled = false): it keeps no users to look up")]
    ProfilingOff,
    #[error(
        "user {user} is not resident in this proxy's user table (never seen here, or evicted)"
    )]
    NotResident { user: String },
}

impl LookupError {
    pub fn status(&self) -> StatusCode {
        match self {
            LookupError::MissingId
            | LookupError::EmptyId
            | LookupError::TooLong { .. }
            | LookupError::BadId(_) => StatusCode::BAD_REQUEST,
            LookupError::ProfilingOff => StatusCode::CONFLICT,
            LookupError::NotResident { .. } => StatusCode::NOT_FOUND,
        }
    }
}

/// One resident user.
#[derive(Debug, Serialize)]
pub struct UserReport {
    /// The user's key (the keyed hash of its id), hex.
    pub user: String,
    /// Always true in an answer (a user that is not resident is a 404).
    pub resident: bool,
    /// Requests seen (saturating).
    pub requests: u32,
    /// Unix seconds (node time) of the last request.
    pub last_seen: u64,
    pub last_seen_secs_ago: u64,
    /// The profile assigned at the last request.
    pub profile: String,
    /// This node's index of it.
    pub profile_index: u16,
    /// Whether the model chose it (else the new-user threshold, a rule or the default).
    pub by_model: bool,
    /// The user's features now, by name, in feature units.
    pub features: FeatureMap,
    /// The installed model's view of these features (null without a model).
    pub model: Option<ModelView>,
}

/// How the installed model sees a user's current features.
#[derive(Debug, Serialize)]
pub struct ModelView {
    pub version: u64,
    /// Squared scaled distance beyond which even the nearest centroid is too far (null: never).
    pub anomaly_distance: Option<f32>,
    /// The nearest centroids (up to [`NEAREST_LISTED`]), nearest first.
    pub nearest: Vec<CentroidDistance>,
    /// The profile the model answers for these features now (a centroid's name or `anomalous`;
    /// null only for features no distance can be computed for).
    pub answer: Option<String>,
    /// Why the user is where it is: the features contributing most to its distance to the
    /// chosen centroid — its current profile's when that is a centroid of the model, else the
    /// nearest.
    pub why: Option<Why>,
}

#[derive(Debug, Serialize)]
pub struct CentroidDistance {
    pub name: String,
    /// The model's profile id.
    pub id: u32,
    /// Squared distance in the model's scaled space.
    pub distance: f32,
}

#[derive(Debug, Serialize)]
pub struct Why {
    pub centroid: String,
    pub distance: f32,
    /// Up to [`REASONS_LISTED`] features, largest contribution first.
    pub features: Vec<Contribution>,
}

/// One feature's part of a squared scaled distance.
#[derive(Debug, Serialize)]
pub struct Contribution {
    pub feature: &'static str,
    /// The user's value, feature units.
    pub value: f32,
    /// The centroid's value, feature units.
    pub centroid_value: f32,
    /// `(value - centroid_value) / scale`.
    pub scaled_difference: f32,
    /// Its square: this feature's term of the distance.
    pub contribution: f32,
    /// `contribution / distance`.
    pub share: f32,
}

/// Looks up the user whose raw id is `raw_id`.
pub fn lookup(
    context: &LookupContext<'_>,
    raw_id: Option<&str>,
) -> Result<UserReport, LookupError> {
    let raw_id = raw_id.ok_or(LookupError::MissingId)?;
    if raw_id.is_empty() {
        return Err(LookupError::EmptyId);
    }
    let key = context
        .identity
        .reported_key(raw_id.as_bytes())
        .map_err(|e| match e {
            IdentityError::TooLong { max_len, .. } => LookupError::TooLong { max_len },
            other => LookupError::BadId(other),
        })?;
    let table = context.table.ok_or(LookupError::ProfilingOff)?;
    let user = hex(key);
    let resident = table
        .resident(key, context.now_secs)
        .ok_or_else(|| LookupError::NotResident { user: user.clone() })?;
    let model = context
        .assigner
        .model()
        .map(|m| model_view(&m, &resident.features, resident.profile));
    Ok(UserReport {
        user,
        resident: true,
        requests: resident.requests,
        last_seen: resident.last_seen,
        last_seen_secs_ago: context.now_secs.saturating_sub(resident.last_seen),
        profile: context.assigner.name(resident.profile).to_string(),
        profile_index: resident.profile.0,
        by_model: resident.by_model,
        features: FeatureMap::of(resident.features.0),
        model,
    })
}

/// The admin answer: the report, or the error as `{"error": ...}` with its status.
pub fn respond(context: &LookupContext<'_>, request: &AdminRequest) -> AdminResponse {
    match lookup(context, request.query_param("id").as_deref()) {
        Ok(report) => admin::json(&report),
        Err(e) => admin::json_error(e.status(), &e.to_string()),
    }
}

fn hex(key: UserKey) -> String {
    format!("{:016x}", key.0)
}

fn model_view(
    model: &CompiledModel,
    features: &crate::features::FeatureVector,
    profile: crate::profiles::ProfileIdx,
) -> ModelView {
    let centroids = &model.model.centroids;
    let distances = model.distances(features);
    let mut order: Vec<usize> = (0..distances.len()).collect();
    // Stable: ties keep the earlier centroid first, as assignment does.
    order.sort_by(|&a, &b| distances[a].total_cmp(&distances[b]));
    let nearest = order
        .iter()
        .take(NEAREST_LISTED)
        .map(|&i| CentroidDistance {
            name: centroids[i].name.clone(),
            id: centroids[i].id.0,
            distance: distances[i],
        })
        .collect();
    let answer = model.nearest_profile(features).map(|p| {
        model
            .profile_of_centroid
            .iter()
            .position(|c| *c == p)
            .map_or_else(
                || prescale_gossip::model::ANOMALOUS_PROFILE.to_string(),
                |i| centroids[i].name.clone(),
            )
    });
    let chosen = model
        .profile_of_centroid
        .iter()
        .position(|c| *c == profile)
        .or_else(|| order.first().copied());
    let why = chosen.map(|i| {
        let scaled = model.scaled(features);
        let center = &centroids[i].center;
        let distance = distances[i];
        let mut terms: Vec<Contribution> = (0..FEATURE_NAMES.len())
            .map(|d| {
                let difference = scaled[d] - center[d];
                let contribution = difference * difference;
                Contribution {
                    feature: FEATURE_NAMES[d],
                    value: features.0[d],
                    centroid_value: center[d] * model.model.scale[d] + model.model.mean[d],
                    scaled_difference: difference,
                    contribution,
                    share: if distance > 0.0 {
                        contribution / distance
                    } else {
                        0.0
                    },
                }
            })
            .collect();
        terms.sort_by(|a, b| b.contribution.total_cmp(&a.contribution));
        terms.truncate(REASONS_LISTED);
        Why {
            centroid: centroids[i].name.clone(),
            distance,
            features: terms,
        }
    });
    ModelView {
        version: model.model.version,
        anomaly_distance: model.model.anomaly_distance,
        nearest,
        answer,
        why,
    }
}

#[cfg(test)]
mod tests;
