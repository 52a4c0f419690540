//! Behavior profiles: their names and small indexes ([`ProfileRegistry`]), and the assignment of
//! a request's user to one ([`ProfileAssigner`]).
//!
//! Owns: the name ↔ [`ProfileIdx`] registry, the current [`ProfileModel`] (swapped atomically),
//! and the assignment policy.
//!
//! Assignment, in order (documented policy):
//! 1. a user with fewer than `assignment.new_user_min_requests` requests → `new`;
//! 2. the first matching `[[assignment.rules]]` entry (path prefix, method, header [= value]):
//!    rules are explicit operator intent, so they win over the learned model too;
//! 3. with a model: the nearest centroid in the model's scaled space (`(x - mean) / scale`,
//!    squared Euclidean distance, ties to the earlier centroid) — unless the model has an
//!    `anomaly_distance` and even that nearest squared distance is greater than it: then
//!    [`ANOMALOUS_PROFILE`] (a user unlike every learned profile is not forced into one; it is
//!    still the model's answer);
//! 4. `assignment.default_profile`.
//!
//! Invariants:
//! - a profile's index never changes and is never reused; the registry is append-only and
//!   bounded ([`MAX_PROFILES`]); `new` is index 0 and `default` index 1; `anomalous` is
//!   registered when the first model with an `anomaly_distance` is installed and keeps its index;
//! - only a model that passed [`ProfileModel::validate`] and is not older than the current one is
//!   ever installed; readers see either the old or the new model, never a mix;
//! - assignment takes no lock and does not allocate;
//! - the rules are replaced whole (a config reload): one assignment sees the old rules or the
//!   new ones, never a mix.

use std::sync::{Arc, Mutex};

use arc_swap::{ArcSwap, ArcSwapOption};
use http::{HeaderMap, HeaderName, Method};
use prescale_config::{AssignmentConfig, Config};
use prescale_gossip::model::{ModelError, ProfileModel, ANOMALOUS_PROFILE, FEATURE_DIM};

use crate::features::FeatureVector;
use crate::fields::HeaderLookup;

/// A profile's small, stable index (for meter keys and per-profile gauges).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct ProfileIdx(pub u16);

impl ProfileIdx {
    /// The builtin `new` profile: users with too little history.
    pub const NEW: ProfileIdx = ProfileIdx(0);
    /// The builtin `default` profile.
    pub const DEFAULT: ProfileIdx = ProfileIdx(1);
}

/// Most distinct profile names a node tracks (configured + learned, over its lifetime).
pub const MAX_PROFILES: usize = 256;

/// The registry is full: no more profile names can be indexed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("profile `{name}` cannot be registered: {max} profile names are already indexed")]
pub struct RegistryFull {
    pub name: String,
    pub max: usize,
}

/// Every profile name the node knows, each with a stable [`ProfileIdx`]. Append-only.
pub struct ProfileRegistry {
    names: ArcSwap<Vec<Arc<str>>>,
    append: Mutex<()>,
}

impl std::fmt::Debug for ProfileRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.names.load().iter()).finish()
    }
}

impl ProfileRegistry {
    /// A registry with the builtins (`new`, `default`) and every profile the config names
    /// (`[[profiles]]`, assignment rules and default, routes), in that order.
    pub fn from_config(config: &Config) -> Result<Self, RegistryFull> {
        let registry = ProfileRegistry::with_builtins();
        let configured = config
            .profiles
            .iter()
            .map(|p| p.name.as_str())
            .chain(config.assignment.rules.iter().map(|r| r.profile.as_str()))
            .chain(std::iter::once(config.assignment.default_profile.as_str()))
            .chain(config.routes.iter().map(|r| r.profile.as_str()));
        for name in configured {
            registry.register(name)?;
        }
        Ok(registry)
    }

    /// Only `new` (0) and `default` (1).
    pub fn with_builtins() -> Self {
        ProfileRegistry {
            names: ArcSwap::from_pointee(vec![Arc::from("new"), Arc::from("default")]),
            append: Mutex::new(()),
        }
    }

    /// The index of `name`, registering it if it is new.
    pub fn register(&self, name: &str) -> Result<ProfileIdx, RegistryFull> {
        if let Some(index) = self.index_of(name) {
            return Ok(index);
        }
        let _guard = self
            .append
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let current = self.names.load_full();
        if let Some(position) = current.iter().position(|n| &**n == name) {
            return Ok(ProfileIdx(position as u16));
        }
        if current.len() >= MAX_PROFILES {
            return Err(RegistryFull {
                name: name.to_string(),
                max: MAX_PROFILES,
            });
        }
        let mut next = Vec::with_capacity(current.len() + 1);
        next.extend(current.iter().cloned());
        next.push(Arc::from(name));
        let index = ProfileIdx((next.len() - 1) as u16);
        self.names.store(Arc::new(next));
        Ok(index)
    }

    pub fn index_of(&self, name: &str) -> Option<ProfileIdx> {
        self.names
            .load()
            .iter()
            .position(|n| &**n == name)
            .map(|i| ProfileIdx(i as u16))
    }

    /// The name of a profile index (`None` for an index this registry never gave out).
    pub fn name(&self, index: ProfileIdx) -> Option<Arc<str>> {
        self.names.load().get(usize::from(index.0)).cloned()
    }

    /// All names, indexed by [`ProfileIdx`].
    pub fn names(&self) -> Arc<Vec<Arc<str>>> {
        self.names.load_full()
    }

    pub fn len(&self) -> usize {
        self.names.load().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Why a model was not installed.
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum ModelSwapError {
    #[error("profile model rejected: {0}")]
    Invalid(#[from] ModelError),
    #[error("profile model version {offered} is older than the installed version {installed}")]
    Older { offered: u64, installed: u64 },
    #[error("profile model rejected: {0}")]
    Registry(#[from] RegistryFull),
}

/// What [`ProfileAssigner::install_model`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelSwap {
    /// The model is now in use.
    Installed { version: u64 },
    /// The same version was already installed (a redelivery): nothing changed.
    AlreadyInstalled { version: u64 },
}

/// A model prepared for fast assignment.
pub struct CompiledModel {
    /// The model as published (for admin output: version, centroids).
    pub model: ProfileModel,
    /// The registry index of each centroid's name, in `model.centroids` order.
    pub profile_of_centroid: Vec<ProfileIdx>,
    /// The registry index of [`ANOMALOUS_PROFILE`] when the model has an `anomaly_distance`.
    anomalous: Option<ProfileIdx>,
    /// `anomaly_distance`, or infinity without one (no distance is greater).
    anomaly_threshold: f32,
    mean: [f32; FEATURE_DIM],
    inverse_scale: [f32; FEATURE_DIM],
    /// The centers in blocks of [`LANES`], by dimension: `blocks[b][i][lane]` is dimension `i` of
    /// centroid `b * LANES + lane` (unused lanes of the last block are 0). The distances of a
    /// block's centroids are summed side by side, each in dimension order as one at a time
    /// would: the same numbers, in vector registers.
    blocks: Vec<[[f32; LANES]; FEATURE_DIM]>,
    centroid_count: usize,
}

/// Centroids whose distances are computed together.
const LANES: usize = 8;

/// The centers of `centers` in the block layout of [`CompiledModel`].
fn center_blocks(centers: &[[f32; FEATURE_DIM]]) -> Vec<[[f32; LANES]; FEATURE_DIM]> {
    centers
        .chunks(LANES)
        .map(|chunk| {
            let mut block = [[0f32; LANES]; FEATURE_DIM];
            for (lane, center) in chunk.iter().enumerate() {
                for (dimension, value) in center.iter().enumerate() {
                    block[dimension][lane] = *value;
                }
            }
            block
        })
        .collect()
}

/// The centroid nearest to a feature vector.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Nearest {
    /// Index into `model.centroids`.
    pub centroid: usize,
    /// Squared distance in the model's scaled space.
    pub distance: f32,
}

impl CompiledModel {
    /// `features` in the model's scaled space: `(x - mean) / scale` per dimension.
    pub fn scaled(&self, features: &FeatureVector) -> [f32; FEATURE_DIM] {
        let mut scaled = [0f32; FEATURE_DIM];
        for (i, value) in scaled.iter_mut().enumerate() {
            *value = (features.0[i] - self.mean[i]) * self.inverse_scale[i];
        }
        scaled
    }

    /// The centroid nearest to `features` and its squared scaled distance (`None` only when
    /// every distance is NaN).
    pub fn nearest_centroid(&self, features: &FeatureVector) -> Option<Nearest> {
        let scaled = self.scaled(features);
        let mut best: Option<Nearest> = None;
        for (block_index, block) in self.blocks.iter().enumerate() {
            let mut distances = [0f32; LANES];
            for (value, dimension) in scaled.iter().zip(block) {
                for (distance, center) in distances.iter_mut().zip(dimension) {
                    let d = value - center;
                    *distance += d * d;
                }
            }
            let first = block_index * LANES;
            let used = self.centroid_count.saturating_sub(first).min(LANES);
            for (lane, distance) in distances.iter().take(used).enumerate() {
                if distance.is_nan() {
                    continue;
                }
                if best.is_none_or(|best| *distance < best.distance) {
                    best = Some(Nearest {
                        centroid: first + lane,
                        distance: *distance,
                    });
                }
            }
        }
        best
    }

    /// The model's answer for `features`: the profile of the nearest centroid, or
    /// [`ANOMALOUS_PROFILE`]'s when that centroid is farther than `anomaly_distance`.
    pub fn nearest_profile(&self, features: &FeatureVector) -> Option<ProfileIdx> {
        let nearest = self.nearest_centroid(features)?;
        Some(match self.anomalous {
            Some(anomalous) if nearest.distance > self.anomaly_threshold => anomalous,
            _ => self.profile_of_centroid[nearest.centroid],
        })
    }

    /// The registry index of [`ANOMALOUS_PROFILE`] (`None`: the model has no anomaly distance).
    pub fn anomalous_profile(&self) -> Option<ProfileIdx> {
        self.anomalous
    }

    /// The squared scaled distance from `features` to every centroid, in `model.centroids`
    /// order (for admin output; allocates).
    pub fn distances(&self, features: &FeatureVector) -> Vec<f32> {
        let scaled = self.scaled(features);
        self.model
            .centroids
            .iter()
            .map(|c| {
                scaled
                    .iter()
                    .zip(&c.center)
                    .map(|(x, center)| (x - center) * (x - center))
                    .sum()
            })
            .collect()
    }
}

fn to_array(values: &[f32]) -> [f32; FEATURE_DIM] {
    let mut out = [0f32; FEATURE_DIM];
    for (slot, value) in out.iter_mut().zip(values) {
        *slot = *value;
    }
    out
}

/// A profile and where it came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Assignment {
    pub profile: ProfileIdx,
    /// The model's answer: its nearest centroid, or `anomalous` (else: new user, a rule, or the
    /// default).
    pub by_model: bool,
}

/// The parts of a request that assignment rules look at.
pub struct RequestFacts<'a, H: ?Sized = HeaderMap> {
    pub method: &'a Method,
    /// The URI path (no query).
    pub path: &'a str,
    pub headers: &'a H,
}

impl<H: ?Sized> Clone for RequestFacts<'_, H> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<H: ?Sized> Copy for RequestFacts<'_, H> {}

#[derive(Debug)]
struct CompiledRule {
    profile: ProfileIdx,
    path_prefix: Option<String>,
    method: Option<Method>,
    header: Option<(HeaderName, Option<String>)>,
}

impl CompiledRule {
    fn matches(&self, request: &RequestFacts<'_, impl HeaderLookup + ?Sized>) -> bool {
        if let Some(prefix) = &self.path_prefix {
            if !request.path.starts_with(prefix.as_str()) {
                return false;
            }
        }
        if let Some(method) = &self.method {
            if method != request.method {
                return false;
            }
        }
        if let Some((name, value)) = &self.header {
            let Some(actual) = request.headers.get(name.as_str()) else {
                return false;
            };
            if let Some(expected) = value {
                if actual != expected.as_bytes() {
                    return false;
                }
            }
        }
        true
    }
}

/// An assignment rule of the config cannot be compiled.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    #[error("assignment.rules[{index}].{field}: {reason}")]
    Invalid {
        index: usize,
        field: &'static str,
        reason: String,
    },
    #[error(transparent)]
    Registry(#[from] RegistryFull),
}

/// Assigns requests' users to profiles (see the module docs for the policy). Share one per node.
pub struct ProfileAssigner {
    registry: Arc<ProfileRegistry>,
    model: ArcSwapOption<CompiledModel>,
    install: Mutex<()>,
    /// The config's `[assignment]`, replaced whole by a reload.
    rules: ArcSwap<AssignmentRules>,
}

/// `[assignment]` compiled: the rules, the default profile and the new-user threshold.
#[derive(Debug)]
pub struct AssignmentRules {
    rules: Vec<CompiledRule>,
    default_profile: ProfileIdx,
    new_user_min_requests: u32,
}

impl AssignmentRules {
    /// Compiles `config`, registering its rule and default profile names in `registry`.
    pub fn compile(
        config: &AssignmentConfig,
        registry: &ProfileRegistry,
    ) -> Result<Self, RuleError> {
        let mut rules = Vec::with_capacity(config.rules.len());
        for (index, rule) in config.rules.iter().enumerate() {
            let method = match &rule.method {
                Some(m) => Some(
                    Method::from_bytes(m.to_ascii_uppercase().as_bytes()).map_err(|_| {
                        RuleError::Invalid {
                            index,
                            field: "method",
                            reason: format!("`{m}` is not an HTTP method"),
                        }
                    })?,
                ),
                None => None,
            };
            let header = match &rule.header {
                Some(h) => Some((
                    HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| RuleError::Invalid {
                        index,
                        field: "header.name",
                        reason: format!("`{}` is not a valid header name", h.name),
                    })?,
                    h.value.clone(),
                )),
                None => None,
            };
            rules.push(CompiledRule {
                profile: registry.register(&rule.profile)?,
                path_prefix: rule.path_prefix.clone(),
                method,
                header,
            });
        }
        let default_profile = registry.register(&config.default_profile)?;
        Ok(AssignmentRules {
            rules,
            default_profile,
            new_user_min_requests: config.new_user_min_requests,
        })
    }
}

impl ProfileAssigner {
    /// An assigner with the config's rules and no model yet. Rule and default profile names are
    /// registered in `registry`.
    pub fn new(
        config: &AssignmentConfig,
        registry: Arc<ProfileRegistry>,
    ) -> Result<Self, RuleError> {
        let rules = AssignmentRules::compile(config, &registry)?;
        Ok(ProfileAssigner {
            registry,
            model: ArcSwapOption::empty(),
            install: Mutex::new(()),
            rules: ArcSwap::from_pointee(rules),
        })
    }

    /// Replaces the `[assignment]` rules (a reload); requests see the new ones from their next
    /// assignment on.
    pub fn replace_rules(&self, rules: AssignmentRules) {
        self.rules.store(Arc::new(rules));
    }

    /// The profile for a request of a user with `requests` requests so far (this one included)
    /// whose current features `features` computes (only called when a model is consulted).
    pub fn assign(
        &self,
        requests: u32,
        features: impl FnOnce() -> FeatureVector,
        request: &RequestFacts<'_, impl HeaderLookup + ?Sized>,
    ) -> ProfileIdx {
        self.assign_reusing(requests, None, features, request)
            .profile
    }

    /// As [`ProfileAssigner::assign`], but when the model would be consulted and
    /// `model_answer_this_second` holds its answer for this user from earlier in the same second,
    /// that answer is taken instead of computing the features and the nearest centroid again
    /// (a user's features barely move within a second; a model swap is seen within one).
    pub fn assign_reusing(
        &self,
        requests: u32,
        model_answer_this_second: Option<ProfileIdx>,
        features: impl FnOnce() -> FeatureVector,
        request: &RequestFacts<'_, impl HeaderLookup + ?Sized>,
    ) -> Assignment {
        let by_rules = |profile| Assignment {
            profile,
            by_model: false,
        };
        let rules = self.rules.load();
        if requests < rules.new_user_min_requests {
            return by_rules(ProfileIdx::NEW);
        }
        if let Some(rule) = rules.rules.iter().find(|rule| rule.matches(request)) {
            return by_rules(rule.profile);
        }
        if let Some(profile) = model_answer_this_second {
            return Assignment {
                profile,
                by_model: true,
            };
        }
        let model = self.model.load();
        if let Some(model) = model.as_deref() {
            if let Some(profile) = model.nearest_profile(&features()) {
                return Assignment {
                    profile,
                    by_model: true,
                };
            }
        }
        by_rules(rules.default_profile)
    }

    /// Validates `model` and, unless it is older than the installed one, installs it atomically.
    /// Its centroid names (and `anomalous`, when it has an anomaly distance) are registered first,
    /// so a full registry rejects the model whole.
    pub fn install_model(&self, model: ProfileModel) -> Result<ModelSwap, ModelSwapError> {
        model.validate()?;
        let _guard = self
            .install
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(current) = self.model.load().as_deref() {
            let installed = current.model.version;
            if model.version < installed {
                return Err(ModelSwapError::Older {
                    offered: model.version,
                    installed,
                });
            }
            if model.version == installed {
                return Ok(ModelSwap::AlreadyInstalled { version: installed });
            }
        }
        let mut profile_of_centroid = Vec::with_capacity(model.centroids.len());
        for centroid in &model.centroids {
            profile_of_centroid.push(self.registry.register(&centroid.name)?);
        }
        let anomalous = match model.anomaly_distance {
            Some(_) => Some(self.registry.register(ANOMALOUS_PROFILE)?),
            None => None,
        };
        let mut inverse_scale = [0f32; FEATURE_DIM];
        for (slot, scale) in inverse_scale.iter_mut().zip(&model.scale) {
            *slot = 1.0 / scale;
        }
        let centers: Vec<[f32; FEATURE_DIM]> = model
            .centroids
            .iter()
            .map(|c| to_array(&c.center))
            .collect();
        let compiled = CompiledModel {
            anomalous,
            anomaly_threshold: model.anomaly_distance.unwrap_or(f32::INFINITY),
            mean: to_array(&model.mean),
            inverse_scale,
            blocks: center_blocks(&centers),
            centroid_count: centers.len(),
            profile_of_centroid,
            model,
        };
        let version = compiled.model.version;
        self.model.store(Some(Arc::new(compiled)));
        Ok(ModelSwap::Installed { version })
    }

    /// The profile by the config rules alone (inline profiling off: no history, no model).
    pub fn assign_by_rules(
        &self,
        request: &RequestFacts<'_, impl HeaderLookup + ?Sized>,
    ) -> ProfileIdx {
        let rules = self.rules.load();
        rules
            .rules
            .iter()
            .find(|rule| rule.matches(request))
            .map_or(rules.default_profile, |rule| rule.profile)
    }

    /// The installed model, if any.
    pub fn model(&self) -> Option<Arc<CompiledModel>> {
        self.model.load_full()
    }

    pub fn model_version(&self) -> Option<u64> {
        self.model.load().as_ref().map(|m| m.model.version)
    }

    pub fn registry(&self) -> &Arc<ProfileRegistry> {
        &self.registry
    }

    pub fn default_profile(&self) -> ProfileIdx {
        self.rules.load().default_profile
    }

    /// The name of a profile index (`"unknown"` for one the registry never gave out).
    pub fn name(&self, profile: ProfileIdx) -> Arc<str> {
        self.registry
            .name(profile)
            .unwrap_or_else(|| Arc::from("unknown"))
    }
}

#[cfg(test)]
mod tests;
