//! Applying a new config to a running data plane (SIGHUP, `POST /api/v1/reload`): which keys a
//! reload may change, the check of a new config against the running one, and the swap.
//!
//! A reload changes, without closing a client connection:
//! - `[[routes]]` and `[[profiles]]` (every profile's fleet, priority and revenue weight);
//! - `[assignment]` (rules, default profile, new-user threshold);
//! - `[identity]` `secret`, `sources` and `max_len`;
//! - the `backends` of a fleet whose backends come from the config (no provisioner that supplies
//!   them): a backend whose address stays keeps its state and connections, a new one starts
//!   Ready, one that leaves gets no new request and finishes those it has; with
//!   `resolve = true`, the names are resolved in a round started at once;
//! - a fleet's `retries`, `eject_after_failures`, `eject_secs`, `max_in_flight_per_backend` and
//!   `max_connections_per_backend` (read per request; a backend ejected stays so for the time it
//!   was given);
//! - a fleet's `health_check` (from its next round) and its `timeouts`, `load_balancing` and
//!   `upstream` (protocol and TLS, its files loaded before anything is swapped): every backend
//!   is rebuilt with its state and counters (`Fleet::reconfigure`); requests under way finish
//!   with the timeouts and connections they started with, and idle upstream connections close;
//! - `proxy.keepalive_requests`, `proxy.client_limits` (connections, rate, burst, status) and
//!   `identity.new_users_per_client_per_sec`: the limiters keep their state and counters (a
//!   connection opened while there was no connection limit is not counted by a new one).
//!
//! Any other difference (listeners, TLS, threads, regions, GeoIP, a fleet added or removed, a
//! fleet's provisioner, `resolve` or planning keys, the mesh, the forecaster...)
//! refuses the whole reload with the keys that
//! differ: they need a restart.
//!
//! Invariants: a reload is all or nothing — everything it installs (identity resolver, rules,
//! routing table, backend addresses) is built and checked before the first swap, and a refused
//! reload leaves the running config and counters as they were; reloads run one at a time; a
//! request sees either the old or the new value of each part (they are swapped one by one).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use prescale_config::Config;
use serde::Serialize;
use serde_json::Value;

use crate::dataplane::DataPlane;
use crate::error::ProxyError;
use crate::fleet::{static_backends, ResolvedBackend, Upstream};
use crate::identity::IdentityResolver;
use crate::profiles::{AssignmentRules, RuleError};

/// Keys a reload may change, as the refusal and the docs name them.
pub const RELOADABLE: &[&str] = &[
    "routes",
    "profiles",
    "assignment",
    "identity.secret",
    "identity.sources",
    "identity.max_len",
    "identity.new_users_per_client_per_sec",
    "fleets[].backends (fleets whose backends come from the config, addresses or names)",
    "fleets[].retries",
    "fleets[].eject_after_failures",
    "fleets[].eject_secs",
    "fleets[].max_in_flight_per_backend",
    "fleets[].max_connections_per_backend",
    "fleets[].timeouts",
    "fleets[].health_check",
    "fleets[].load_balancing",
    "fleets[].upstream",
    "proxy.keepalive_requests",
    "proxy.client_limits",
];

/// A fleet's keys that a reload applies to the fleet as it runs (`Fleet::reconfigure`).
const FLEET_RELOADABLE: &[&str] = &[
    "retries",
    "eject_after_failures",
    "eject_secs",
    "max_in_flight_per_backend",
    "max_connections_per_backend",
    "timeouts",
    "health_check",
    "load_balancing",
    "upstream",
];

/// Reloads since start, by outcome.
#[derive(Debug, Default)]
pub struct ReloadCounters {
    pub applied: AtomicU64,
    pub refused: AtomicU64,
    /// Unix seconds of the last reload applied (0: none).
    pub last_applied_secs: AtomicU64,
}

/// What a reload changed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ReloadOutcome {
    /// One entry per part that differs, e.g. `routes` or `fleets[web].backends: +1 -1 =2`;
    /// empty when the new config equals the running one.
    pub changed: Vec<String>,
}

/// Why a reload was refused (the running config stays).
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// Keys that differ from the running config and that only a restart applies.
    #[error("needs a restart to change: {}", keys.join(", "))]
    NeedsRestart { keys: Vec<String> },
    /// A part of the new config could not be built (a JWT key file, a backend name).
    #[error(transparent)]
    Build(#[from] ProxyError),
    #[error(transparent)]
    Rules(#[from] RuleError),
}

impl DataPlane {
    /// Applies `next` (already parsed and validated) in place of the running config, or refuses
    /// it whole; see the module docs for what it may change.
    pub fn reload(&self, next: &Config) -> Result<ReloadOutcome, ReloadError> {
        let result = self.reload_inner(next);
        let counter = match &result {
            Ok(_) => &self.reloads.applied,
            Err(_) => &self.reloads.refused,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        if result.is_ok() {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            self.reloads.last_applied_secs.store(now, Ordering::Relaxed);
        }
        result
    }

    /// Counts a reload refused before it got here (the file could not be read or is invalid).
    pub fn note_refused_reload(&self) {
        self.reloads.refused.fetch_add(1, Ordering::Relaxed);
    }

    fn reload_inner(&self, next: &Config) -> Result<ReloadOutcome, ReloadError> {
        let _serial = self.reload_lock().lock().unwrap_or_else(|p| p.into_inner());
        let running = self.config();
        let keys = restart_keys(&running, next);
        if !keys.is_empty() {
            return Err(ReloadError::NeedsRestart { keys });
        }

        // Build everything first.
        let identity_changed = !same(&running.identity.secret, &next.identity.secret)
            || !same(&running.identity.sources, &next.identity.sources)
            || running.identity.max_len != next.identity.max_len;
        let identity = match identity_changed {
            true => Some(IdentityResolver::new(&next.identity)?),
            false => None,
        };
        let rules_changed = !same(&running.assignment, &next.assignment);
        let registry = self.assigner.registry();
        for name in next
            .profiles
            .iter()
            .map(|p| p.name.as_str())
            .chain(next.routes.iter().map(|r| r.profile.as_str()))
        {
            registry.register(name).map_err(RuleError::from)?;
        }
        let rules = match rules_changed {
            true => Some(AssignmentRules::compile(&next.assignment, registry)?),
            false => None,
        };
        let table = self.routing_table(next)?;
        let mut backends: Vec<(Arc<crate::fleet::Fleet>, Vec<ResolvedBackend>)> = Vec::new();
        let mut upstreams: Vec<(String, Upstream)> = Vec::new();
        // Fleets with `resolve = true` whose names changed: resolved by the next round.
        let mut names: Vec<String> = Vec::new();
        for fleet in self.fleets.iter() {
            let Some(config) = next
                .fleets
                .iter()
                .find(|f| f.name == fleet.name && f.region == self.region)
            else {
                continue;
            };
            let was = running
                .fleets
                .iter()
                .find(|f| f.name == fleet.name && f.region == self.region);
            let new_backends = was.is_some_and(|was| was.backends != config.backends);
            if new_backends && config.resolve {
                names.push(fleet.name.clone());
            } else if new_backends && !fleet.is_provisioned() {
                backends.push((Arc::clone(fleet), static_backends(config)?));
            }
            if was.is_some_and(|was| !same(&was.upstream, &config.upstream)) {
                upstreams.push((fleet.name.clone(), Upstream::load(config)?));
            }
        }

        // Then swap, one part at a time.
        let mut changed = Vec::new();
        if let Some(identity) = identity {
            self.replace_identity(identity);
            changed.push("identity".to_string());
        }
        if let Some(rules) = rules {
            self.assigner.replace_rules(rules);
            changed.push("assignment".to_string());
        }
        if !same(&running.routes, &next.routes) {
            changed.push("routes".to_string());
        }
        if !same(&running.profiles, &next.profiles) {
            changed.push("profiles".to_string());
        }
        self.replace_config(next.clone());
        for fallback in self.store_routing(table) {
            tracing::warn!(profile = %fallback.profile, persona = %fallback.persona, fleet = %fallback.fleet, "reload: the persona's fleet is not in this region; the profile goes to the region's default fleet");
        }
        for fleet in self.fleets.iter() {
            let (Some(was), Some(now)) = (
                running
                    .fleets
                    .iter()
                    .find(|f| f.name == fleet.name && f.region == self.region),
                next.fleets
                    .iter()
                    .find(|f| f.name == fleet.name && f.region == self.region),
            ) else {
                continue;
            };
            let limits = |f: &prescale_config::FleetConfig| {
                (
                    f.retries,
                    f.eject_after_failures,
                    f.eject_secs,
                    f.max_in_flight_per_backend,
                    f.max_connections_per_backend,
                )
            };
            if same(was, now) {
                continue;
            }
            let limits_changed = limits(was) != limits(now);
            let upstream = upstreams
                .iter()
                .position(|(name, _)| *name == fleet.name)
                .map(|i| upstreams.swap_remove(i).1);
            let settings = fleet.reconfigure(now, upstream);
            if limits_changed {
                changed.push(format!("fleets[{}] limits", fleet.name));
            }
            for setting in settings {
                changed.push(format!("fleets[{}].{setting}", fleet.name));
            }
        }
        if !names.is_empty() {
            self.fleets.resolve_names_now();
            for name in names {
                changed.push(format!("fleets[{name}].backends: resolving"));
            }
        }
        for (fleet, resolved) in backends {
            let change = fleet.replace_resolved(&resolved);
            changed.push(format!(
                "fleets[{}].backends: +{} -{} ={}",
                fleet.name, change.added, change.removed, change.kept
            ));
        }
        self.set_limits(
            next.proxy.keepalive_requests,
            &next.proxy.client_limits,
            next.identity.new_users_per_client_per_sec,
        );
        if running.proxy.keepalive_requests != next.proxy.keepalive_requests {
            changed.push("proxy.keepalive_requests".to_string());
        }
        if !same(&running.proxy.client_limits, &next.proxy.client_limits) {
            changed.push("proxy.client_limits".to_string());
        }
        if running.identity.new_users_per_client_per_sec
            != next.identity.new_users_per_client_per_sec
        {
            changed.push("identity.new_users_per_client_per_sec".to_string());
        }
        Ok(ReloadOutcome { changed })
    }
}

/// Whether two config parts are equal, as they serialise (config types compare by value).
fn same<T: Serialize>(a: &T, b: &T) -> bool {
    serde_json::to_value(a).ok() == serde_json::to_value(b).ok()
}

/// The keys where `next` differs from `running` that a reload cannot change, as dotted paths
/// (`proxy.listen`, `fleets[web].timeouts.connect_ms`, `fleets` when one is added or removed).
pub fn restart_keys(running: &Config, next: &Config) -> Vec<String> {
    let mut before = comparable(running);
    let mut after = comparable(next);
    // The backends of a fleet that has them from the config (addresses, or names resolved)
    // may change; matched by name and region.
    let static_fleets: Vec<(String, String)> = running
        .fleets
        .iter()
        .filter(|f| {
            !f.provisioner
                .as_ref()
                .is_some_and(|p| p.supplies_backends())
        })
        .map(|f| (f.name.clone(), f.region.clone()))
        .collect();
    for value in [&mut before, &mut after] {
        if let Some(Value::Array(fleets)) = value.get_mut("fleets") {
            for fleet in fleets.iter_mut() {
                let key = (
                    fleet["name"].as_str().unwrap_or_default().to_string(),
                    fleet["region"].as_str().unwrap_or_default().to_string(),
                );
                let Some(object) = fleet.as_object_mut() else {
                    continue;
                };
                for reloadable in FLEET_RELOADABLE {
                    object.remove(*reloadable);
                }
                if static_fleets.contains(&key) {
                    object.remove("backends");
                }
            }
        }
    }
    let mut keys = Vec::new();
    diff("", &before, &after, &mut keys);
    keys
}

/// `config` as JSON without the keys a reload may change.
fn comparable(config: &Config) -> Value {
    let mut value = serde_json::to_value(config).unwrap_or(Value::Null);
    if let Some(object) = value.as_object_mut() {
        for key in ["routes", "profiles", "assignment"] {
            object.remove(key);
        }
    }
    if let Some(identity) = value.get_mut("identity").and_then(Value::as_object_mut) {
        for key in [
            "secret",
            "sources",
            "max_len",
            "new_users_per_client_per_sec",
        ] {
            identity.remove(key);
        }
    }
    if let Some(proxy) = value.get_mut("proxy").and_then(Value::as_object_mut) {
        proxy.remove("keepalive_requests");
        proxy.remove("client_limits");
    }
    value
}

/// Appends to `keys` the paths under `path` where `a` and `b` differ. Arrays of tables with a
/// `name` (fleets, regions) are matched by name; other arrays differ as a whole.
fn diff(path: &str, a: &Value, b: &Value, keys: &mut Vec<String>) {
    if a == b {
        return;
    }
    let join = |key: &str| match path {
        "" => key.to_string(),
        _ => format!("{path}.{key}"),
    };
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let mut names: Vec<&String> = x.keys().chain(y.keys()).collect();
            names.sort();
            names.dedup();
            for name in names {
                let null = Value::Null;
                diff(
                    &join(name),
                    x.get(name).unwrap_or(&null),
                    y.get(name).unwrap_or(&null),
                    keys,
                );
            }
        }
        (Value::Array(x), Value::Array(y)) if named(x) && named(y) => {
            let id = |v: &Value| {
                let name = v["name"].as_str().unwrap_or_default();
                match v.get("region").and_then(Value::as_str) {
                    Some(region) if path == "fleets" => format!("{name}@{region}"),
                    _ => name.to_string(),
                }
            };
            let ids = |list: &[Value]| list.iter().map(id).collect::<Vec<_>>();
            if ids(x) != ids(y) {
                keys.push(format!("{path} (added, removed or reordered)"));
                return;
            }
            for (p, q) in x.iter().zip(y) {
                diff(&format!("{path}[{}]", id(p)), p, q, keys);
            }
        }
        _ => keys.push(path.to_string()),
    }
}

fn named(list: &[Value]) -> bool {
    list.iter()
        .all(|v| v.get("name").is_some_and(Value::is_string))
}

#[cfg(test)]
mod tests;
