//! The profile model: the versioned format in which the forecaster publishes learned behavior
//! profiles (centroids in a scaled feature space) and proxies assign users to them.
//!
//! Invariants: `centroids[i].center.len() == FEATURE_DIM`, scaling vectors have `FEATURE_DIM`
//! entries with `scale > 0`; [`ProfileModel::validate`] checks them, and nothing should assign
//! with a model that did not pass it.

use serde::{Deserialize, Serialize};

/// Number of per-user features. Their meaning and order is [`FEATURE_NAMES`].
pub const FEATURE_DIM: usize = 16;

/// What each dimension of a [`FeatureVector`] measures, in order. Shares are in `[0, 1]`.
pub const FEATURE_NAMES: [&str; FEATURE_DIM] = [
    "rate_per_min_log",   // ln(1 + EWMA of requests per minute)
    "request_bytes_log",  // ln(1 + EWMA of request body bytes)
    "response_bytes_log", // ln(1 + EWMA of response body bytes)
    "error_share",        // EWMA of responses with status >= 500 (or upstream failure)
    "night_share",        // share of requests 00:00-06:00 UTC
    "morning_share",      // 06:00-12:00
    "afternoon_share",    // 12:00-18:00
    "evening_share",      // 18:00-24:00
    "weekend_share",      // share of requests on Saturday/Sunday
    "hour_peak_share",    // share of requests in the busiest hour-of-week (timer-driven users ~ 1)
    "api_share",          // path class: /api, /v1.. or JSON requests
    "static_share",       // path class: assets (.js .css .png ...)
    "write_share",        // POST/PUT/PATCH/DELETE
    "mobile_share",       // device class from User-Agent
    "automation_share",   // bots, CLIs, SDKs (curl, python-requests, Go-http-client, ...)
    "session_gap_log", // ln(1 + EWMA of seconds between sessions; a session ends after 30 min idle)
];

/// One user's behavior summary. Plain numbers, keyed elsewhere by a hashed user id only.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct FeatureVector(pub [f32; FEATURE_DIM]);

/// Stable identity of a learned profile: kept across rebuilds when a cluster persists.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ProfileId(pub u32);

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Centroid {
    pub id: ProfileId,
    /// Operator-facing name, e.g. "interactive-daytime", "scheduled-batch".
    pub name: String,
    /// Center in scaled space: `(raw - mean) / scale` per dimension.
    pub center: Vec<f32>,
    /// What the operator's persona for this profile sets; `None`: the config's `[[profiles]]`
    /// entry of that name, else the defaults.
    pub settings: Option<ProfileSettings>,
}

/// Settings a learned profile takes from the persona it was mapped to.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProfileSettings {
    /// Name of the persona the forecaster mapped the profile to.
    pub persona: String,
    /// Relative revenue per request, in thousandths.
    pub revenue_weight_milli: u64,
    /// Higher is more important; under saturation the lowest priority is shed first.
    pub priority: u8,
    /// Fleet the profile's requests go to (when the region has a fleet of that name and no
    /// `[[routes]]` entry names the profile).
    pub fleet: Option<String>,
}

/// A versioned set of centroids plus the feature scaling they were learned in.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProfileModel {
    /// Format version of this struct (see [`ProfileModel::FORMAT`]).
    pub format: u16,
    /// Monotonic model version assigned by the forecaster; proxies ignore older versions.
    pub version: u64,
    /// Unix seconds when the model was built.
    pub built_at: u64,
    pub mean: Vec<f32>,
    pub scale: Vec<f32>,
    pub centroids: Vec<Centroid>,
    /// Squared distance in scaled space beyond which even the nearest centroid is too far: such a
    /// user is assigned [`ANOMALOUS_PROFILE`]. `None`: every user takes its nearest centroid.
    pub anomaly_distance: Option<f32>,
}

/// Profile of users farther than [`ProfileModel::anomaly_distance`] from every centroid.
pub const ANOMALOUS_PROFILE: &str = "anomalous";

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ModelError {
    #[error("model format {found} is not supported (this build reads format {supported})")]
    UnsupportedFormat { found: u16, supported: u16 },
    #[error("model {field} has {found} entries, expected {expected}")]
    WrongDimension {
        field: &'static str,
        found: usize,
        expected: usize,
    },
    #[error("model scale[{index}] is {value}, must be finite and > 0")]
    BadScale { index: usize, value: f32 },
    #[error("model {field} contains a non-finite value")]
    NonFinite { field: &'static str },
    #[error("model has no centroids")]
    Empty,
    #[error("model has {found} centroids, at most {max} are allowed")]
    TooManyCentroids { found: usize, max: usize },
    #[error("model profile id {0} appears twice")]
    DuplicateId(u32),
    #[error("model profile name `{0}` appears twice")]
    DuplicateName(String),
    #[error("model profile name `{0}` is reserved or not a valid profile name")]
    BadName(String),
    #[error("model anomaly_distance is {0}, must be finite and > 0")]
    BadAnomalyDistance(f32),
    #[error("model profile `{profile}`: {reason}")]
    BadSettings { profile: String, reason: String },
}

impl ProfileModel {
    pub const FORMAT: u16 = 2;
    pub const MAX_CENTROIDS: usize = 64;

    pub fn validate(&self) -> Result<(), ModelError> {
        if self.format != Self::FORMAT {
            return Err(ModelError::UnsupportedFormat {
                found: self.format,
                supported: Self::FORMAT,
            });
        }
        check_dim("mean", &self.mean)?;
        check_dim("scale", &self.scale)?;
        for (index, &value) in self.scale.iter().enumerate() {
            if !(value.is_finite() && value > 0.0) {
                return Err(ModelError::BadScale { index, value });
            }
        }
        if self.centroids.is_empty() {
            return Err(ModelError::Empty);
        }
        if self.centroids.len() > Self::MAX_CENTROIDS {
            return Err(ModelError::TooManyCentroids {
                found: self.centroids.len(),
                max: Self::MAX_CENTROIDS,
            });
        }
        if let Some(distance) = self.anomaly_distance {
            if !(distance.is_finite() && distance > 0.0) {
                return Err(ModelError::BadAnomalyDistance(distance));
            }
        }
        let mut seen = std::collections::HashSet::new();
        let mut names = std::collections::HashSet::new();
        for c in &self.centroids {
            check_dim("centroid center", &c.center)?;
            if !seen.insert(c.id) {
                return Err(ModelError::DuplicateId(c.id.0));
            }
            if !valid_profile_name(&c.name) || RESERVED_PROFILES.contains(&c.name.as_str()) {
                return Err(ModelError::BadName(c.name.clone()));
            }
            if !names.insert(c.name.as_str()) {
                return Err(ModelError::DuplicateName(c.name.clone()));
            }
            if let Some(settings) = &c.settings {
                let bad = |reason: String| ModelError::BadSettings {
                    profile: c.name.clone(),
                    reason,
                };
                if !valid_profile_name(&settings.persona) {
                    return Err(bad(format!(
                        "persona `{}` is not a valid name",
                        settings.persona
                    )));
                }
                if let Some(fleet) = &settings.fleet {
                    if !valid_profile_name(fleet) {
                        return Err(bad(format!("fleet `{fleet}` is not a valid name")));
                    }
                }
            }
        }
        Ok(())
    }
}

/// Names a model may not give a learned profile: the proxy's builtins and the anomalous profile.
pub const RESERVED_PROFILES: [&str; 3] = ["new", "default", ANOMALOUS_PROFILE];

/// 1 to 64 bytes of ASCII letters, digits, `-`, `_` and `.`.
pub fn valid_profile_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn check_dim(field: &'static str, values: &[f32]) -> Result<(), ModelError> {
    if values.len() != FEATURE_DIM {
        return Err(ModelError::WrongDimension {
            field,
            found: values.len(),
            expected: FEATURE_DIM,
        });
    }
    if values.iter().any(|v| !v.is_finite()) {
        return Err(ModelError::NonFinite { field });
    }
    Ok(())
}
