//! The node's data-plane state and its two per-request operations: [`DataPlane::admit`] (who is
//! this, where from, which profile, which fleet — or why not) and [`DataPlane::record`] (what
//! happened). Models and plans from the forecaster are installed here
//! ([`DataPlane::install_model`], [`DataPlane::apply_plan`]). Also what the admin listener shows
//! of it: profiles, fleets, metrics, readiness.
//!
//! Invariants: `admit` and `record` do no IO; the routing table always has an entry for every
//! profile index the registry has handed out (built at start, rebuilt when a model is installed;
//! the request path only looks fleet and priority up by index); a profile's fleet, priority and
//! revenue weight come from the config naming it, else from its learned centroid's persona
//! settings, else the defaults (`rebuild_routes`); a request is recorded under the same meter
//! key it was admitted with; a plan is applied only when it is for the node's region and newer
//! than the last one applied, and nothing but a plan changes a provisioned fleet's backends (no
//! plan, or no forecaster, leaves the last set in place).

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicU16, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use http::Method;
use prescale_config::Config;
use prescale_gossip::model::{ProfileModel, ProfileSettings, FEATURE_NAMES};
use prescale_gossip::NodeClock;
use prescale_gossip::{BackendPhase, PlanUpdate};
use serde::Serialize;

use crate::access_log::{AccessLog, LogNames};
use crate::admin::{self, AdminRequest, Handler, MetricsSource, Readiness};
use crate::client_ip::ClientIpResolver;
use crate::client_limits::{ConnectionLimiter, RateLimiter};
use crate::error::ProxyError;
use crate::features::{FeatureTable, RequestTraits, UserView};
use crate::fields::HeaderLookup;
use crate::fleet::{phase_name, FleetIdx, Fleets};
use crate::geo::{GeoResolver, RegionId};
use crate::grants::{GrantDecision, GrantEntry, GrantTable};
use crate::identity::IdentityResolver;
use crate::meters::{MeterFleet, MeterKey, MeterSnapshot, Meters, Observation};
use crate::new_users::NewUserLimiter;
use crate::plan::{FleetApplied, PlanApplied, PlanError, PlanStamp};
use crate::profiles::{
    ModelSwap, ModelSwapError, ProfileAssigner, ProfileIdx, ProfileRegistry, RequestFacts,
    MAX_PROFILES,
};
use crate::request_head::ForwardingPolicy;
use crate::request_id::AddedFields;

/// How far back `/api/v1/profiles` looks for request rates.
const RATE_WINDOW: Duration = Duration::from_secs(60);

/// A profile's fleet, priority and revenue weight, and where they came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProfileRouting {
    pub fleet: FleetIdx,
    pub fleet_source: SettingSource,
    pub priority: u8,
    /// Relative revenue per request, thousandths (for profiles without a grant of their own).
    pub revenue_weight_milli: u64,
    /// Where `priority` and `revenue_weight_milli` came from.
    pub settings_source: SettingSource,
}

/// Where a profile's fleet or priority came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SettingSource {
    /// A `[[routes]]` entry naming the profile (fleets).
    Route,
    /// A `[[profiles]]` entry naming the profile (priority, revenue weight).
    Config,
    /// The persona the forecaster mapped the learned profile to (`Centroid::settings`).
    Persona,
    /// Nothing names the profile: the region's default fleet, the default priority and revenue.
    Default,
}

/// Every registered profile's fleet, priority and routing, built before it is installed.
pub(crate) struct RoutingTable {
    routes: Vec<FleetIdx>,
    priorities: Vec<u8>,
    routing: Vec<ProfileRouting>,
    fallbacks: Vec<FleetFallback>,
}

/// A persona fleet the node's region does not have: the profile went to the default fleet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FleetFallback {
    pub profile: String,
    pub persona: String,
    pub fleet: String,
}

/// A revenue weight in thousandths (negative weights count as none).
fn revenue_milli(weight: f64) -> u64 {
    (weight * 1000.0).max(0.0) as u64
}

/// A request the proxy will forward.
#[derive(Clone, Copy, Debug)]
pub struct Admitted {
    pub user: u64,
    pub meter: MeterKey,
    pub fleet: FleetIdx,
}

/// A request the proxy answers itself.
#[derive(Clone, Copy, Debug)]
pub struct Rejection {
    pub status: u16,
    pub message: &'static str,
    pub retry_after_secs: Option<u32>,
    /// Where it is counted (known once the request got as far as a fleet).
    pub meter: Option<MeterKey>,
    pub user: u64,
}

impl Rejection {
    pub(crate) fn early(status: u16, message: &'static str) -> Self {
        Rejection {
            status,
            message,
            retry_after_secs: None,
            meter: None,
            user: 0,
        }
    }
}

/// Waits on a client, both request paths.
#[derive(Clone, Copy, Debug)]
pub struct ClientTimeouts {
    /// One write of response bytes.
    pub send: Duration,
    /// One read of request body bytes.
    pub body: Duration,
}

pub struct DataPlane {
    pub node_id: String,
    pub region: String,
    /// `[identity]`'s secret, sources and length limit (replaced whole by a reload).
    identity: ArcSwap<IdentityResolver>,
    client_ips: ClientIpResolver,
    pub geo: GeoResolver,
    features: Option<FeatureTable>,
    pub assigner: ProfileAssigner,
    pub meters: Meters,
    pub fleets: Fleets,
    /// Fleet per profile index.
    routes: ArcSwap<Vec<FleetIdx>>,
    /// Priority per profile index (admission under saturation).
    priorities: ArcSwap<Vec<u8>>,
    /// Every profile's fleet, priority and revenue with where each came from (admin output and
    /// grant tables; rebuilt with `routes` and `priorities`).
    routing: ArcSwap<Vec<ProfileRouting>>,
    /// The running config (a reload swaps it; routing reads `routes` and `profiles` from it).
    config: ArcSwap<Config>,
    /// Serialises reloads, and route rebuilds against them.
    reload_lock: Mutex<()>,
    /// Reloads applied and refused since start.
    pub reloads: crate::reload::ReloadCounters,
    max_header_bytes: usize,
    pub tls: bool,
    /// Which client fields a backend never gets (`proxy.underscores_in_headers`).
    pub forwarding: ForwardingPolicy,
    /// `X-Request-Id` and `Via` (`proxy.request_id`, `proxy.via`).
    pub added_fields: AddedFields,
    /// `proxy.access_log` (`None`: off; nothing is copied for it on the request path).
    pub access_log: Option<AccessLog>,
    /// `proxy.client_limits.connections` (0: no limit; a reload may change it).
    pub client_connections: ConnectionLimiter,
    /// `proxy.client_limits.requests_per_sec` and `burst` (0: no limit; a reload may change
    /// them).
    client_rate: Arc<RateLimiter>,
    /// `proxy.client_limits.status` (a reload may change it).
    client_limit_status: AtomicU16,
    /// `proxy.keepalive_requests` (a reload may change it; connections read it per request, and
    /// pingora's HTTP/2 server per stream).
    keepalive_requests: Arc<AtomicU32>,
    /// How long a write to a client, and a read of its request body, may wait
    /// (`proxy.send_timeout_secs`, `proxy.body_timeout_secs`).
    pub client_timeouts: ClientTimeouts,
    /// `identity.new_users_per_client_per_sec` (0: no limit; a reload may change it).
    new_users: NewUserLimiter,
    rate_samples: Mutex<VecDeque<(Instant, MeterSnapshot)>>,
    /// The request path's time (features).
    clock: CoarseClock,
    /// Requests answered before they had a user or a profile (400, 401, 431, other 4xx).
    rejected_early: [AtomicU64; 4],
    /// The last plan applied (held while one is applied, so plans apply one at a time).
    plan: Mutex<Option<PlanStamp>>,
}

const EARLY_STATUSES: [u16; 3] = [400, 401, 431];

impl std::fmt::Debug for DataPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The config's secrets print as `<redacted>` and the resolver prints no key material.
        f.debug_struct("DataPlane")
            .field("node_id", &self.node_id)
            .field("region", &self.region)
            .field("identity", &**self.identity.load())
            .field("tls", &self.tls)
            .field("max_header_bytes", &self.max_header_bytes)
            .field("config", &**self.config.load())
            .finish_non_exhaustive()
    }
}

impl DataPlane {
    /// A data plane on the wall clock.
    pub fn new(config: &Config) -> Result<Self, ProxyError> {
        Self::with_clock(config, NodeClock::real())
    }

    /// A data plane whose features and sketches read `clock` (`--speedup`).
    pub fn with_clock(config: &Config, clock: NodeClock) -> Result<Self, ProxyError> {
        let region = config
            .node_region()
            .ok_or_else(|| ProxyError::UnknownRegion {
                key: "node.region",
                region: String::new(),
            })?
            .to_string();
        let registry =
            Arc::new(
                ProfileRegistry::from_config(config).map_err(|e| ProxyError::Startup {
                    what: "profile registry",
                    reason: e.to_string(),
                })?,
            );
        let configured_profiles = registry.len();
        let assigner = ProfileAssigner::new(&config.assignment, registry).map_err(|e| {
            ProxyError::Startup {
                what: "profile assignment",
                reason: e.to_string(),
            }
        })?;
        let fleet_configs: Vec<_> = config
            .fleets
            .iter()
            .filter(|f| f.region == region)
            .collect();
        let fleets = Fleets::new(&fleet_configs, crate::server::worker_threads(config))?;
        // Every key the meters can see: configured and learned profiles (with the default),
        // origin regions (with the unknown one), this region's fleets (with "none").
        let learned = if config.learning.enabled {
            config.learning.k.unwrap_or(config.learning.k_max)
        } else {
            0
        };
        let meter_keys = crate::meters::key_capacity(
            configured_profiles + learned + 1,
            config.regions.len() + 1,
            fleet_configs.len() + 1,
        );
        let geo = GeoResolver::open(config)?;
        let access_log = match &config.proxy.access_log {
            Some(log) => Some(AccessLog::start(
                log,
                LogNames {
                    profiles: Arc::clone(assigner.registry()),
                    regions: geo.region_names().to_vec(),
                    fleets: fleets.iter().map(|f| f.name.clone()).collect(),
                },
            )?),
            None => None,
        };
        let limits = &config.proxy.client_limits;
        let client_rate =
            RateLimiter::start(limits.requests_per_sec, limits.burst).map_err(|e| {
                ProxyError::Startup {
                    what: "the client rate limiter's sweep thread",
                    reason: e.to_string(),
                }
            })?;
        let config = Arc::new(config.clone());
        let plane = DataPlane {
            node_id: config.node.id.clone(),
            identity: ArcSwap::from_pointee(IdentityResolver::new(&config.identity)?),
            client_ips: ClientIpResolver::new(&config.network),
            geo,
            features: config
                .profiling
                .enabled
                .then(|| FeatureTable::new(&config.profiling)),
            assigner,
            meters: Meters::with_capacity(meter_keys),
            fleets,
            routes: ArcSwap::from_pointee(Vec::new()),
            priorities: ArcSwap::from_pointee(Vec::new()),
            routing: ArcSwap::from_pointee(Vec::new()),
            max_header_bytes: config.proxy.max_header_bytes,
            tls: config.proxy.tls.is_some(),
            forwarding: ForwardingPolicy {
                underscores: config.proxy.underscores_in_headers,
            },
            added_fields: AddedFields::new(config.proxy.request_id, &config.proxy.via),
            access_log,
            client_connections: ConnectionLimiter::new(config.proxy.client_limits.connections),
            client_rate,
            client_limit_status: AtomicU16::new(config.proxy.client_limits.status),
            keepalive_requests: Arc::new(AtomicU32::new(config.proxy.keepalive_requests)),
            new_users: NewUserLimiter::new(config.identity.new_users_per_client_per_sec),
            client_timeouts: ClientTimeouts {
                send: Duration::from_secs(config.proxy.send_timeout_secs),
                body: Duration::from_secs(config.proxy.body_timeout_secs),
            },
            rate_samples: Mutex::new(VecDeque::new()),
            clock: CoarseClock::on(clock),
            rejected_early: Default::default(),
            plan: Mutex::new(None),
            region,
            config: ArcSwap::new(config),
            reload_lock: Mutex::new(()),
            reloads: Default::default(),
        };
        // No model yet: no persona settings, so nothing falls back.
        plane.rebuild_routes()?;
        Ok(plane)
    }

    /// Recomputes every registered profile's fleet, priority and revenue weight. For each, in
    /// order: a `[[routes]]` entry naming the profile (for this region or every region) sets the
    /// fleet and a `[[profiles]]` entry the priority and revenue (operator intent wins); else,
    /// for a profile of the installed model, its centroid's persona settings — a fleet only when
    /// this region has a fleet of that name, else the region's default (returned as a
    /// [`FleetFallback`] for the caller to log); else the defaults. `anomalous` has no centroid:
    /// the region's default fleet and the default priority unless the config names it.
    fn rebuild_routes(&self) -> Result<Vec<FleetFallback>, ProxyError> {
        let _serial = self.reload_lock.lock().unwrap_or_else(|p| p.into_inner());
        let table = self.routing_table(&self.config.load())?;
        Ok(self.store_routing(table))
    }

    /// The routing of every registered profile under `config` (see
    /// [`DataPlane::rebuild_routes`]), computed without installing it.
    pub(crate) fn routing_table(&self, config: &Config) -> Result<RoutingTable, ProxyError> {
        let names = self.assigner.registry().names();
        let model = self.assigner.model();
        let mut table = RoutingTable {
            routes: Vec::with_capacity(names.len()),
            priorities: Vec::with_capacity(names.len()),
            routing: Vec::with_capacity(names.len()),
            fallbacks: Vec::new(),
        };
        for name in names.iter() {
            let persona = model.as_ref().and_then(|m| {
                m.model
                    .centroids
                    .iter()
                    .find(|c| *c.name == **name)
                    .and_then(|c| c.settings.as_ref())
            });
            let resolved = self.route_profile(config, name, persona, &mut table.fallbacks)?;
            table.routes.push(resolved.fleet);
            table.priorities.push(resolved.priority);
            table.routing.push(resolved);
        }
        Ok(table)
    }

    /// Installs a routing table; returns its fallbacks, for the caller to log.
    pub(crate) fn store_routing(&self, table: RoutingTable) -> Vec<FleetFallback> {
        self.routes.store(Arc::new(table.routes));
        self.priorities.store(Arc::new(table.priorities));
        self.routing.store(Arc::new(table.routing));
        table.fallbacks
    }

    /// One profile's row of [`DataPlane::rebuild_routes`].
    fn route_profile(
        &self,
        config: &Config,
        name: &str,
        persona: Option<&ProfileSettings>,
        fallbacks: &mut Vec<FleetFallback>,
    ) -> Result<ProfileRouting, ProxyError> {
        let no_fleet = || ProxyError::Startup {
            what: "routing table",
            reason: format!("no fleet for profile `{name}` in region `{}`", self.region),
        };
        // Without a route naming the profile this is the region's default fleet.
        let configured_fleet = config
            .fleet_for(&self.region, name)
            .and_then(|f| self.fleets.index_of(&f.name))
            .ok_or_else(no_fleet)?;
        let routed = config.routes.iter().any(|r| {
            r.profile == name
                && r.region
                    .as_deref()
                    .is_none_or(|region| region == self.region)
        });
        let (fleet, fleet_source) = if routed {
            (configured_fleet, SettingSource::Route)
        } else {
            match persona.and_then(|p| p.fleet.as_deref().map(|fleet| (p, fleet))) {
                Some((persona, wanted)) => match self.fleets.index_of(wanted) {
                    Some(fleet) => (fleet, SettingSource::Persona),
                    None => {
                        fallbacks.push(FleetFallback {
                            profile: name.to_string(),
                            persona: persona.persona.clone(),
                            fleet: wanted.to_string(),
                        });
                        (configured_fleet, SettingSource::Default)
                    }
                },
                None => (configured_fleet, SettingSource::Default),
            }
        };
        let configured = config.profiles.iter().find(|p| p.name == name);
        let (priority, revenue_weight_milli, source) = match (configured, persona) {
            (Some(p), _) => (
                p.priority,
                revenue_milli(p.revenue_weight),
                SettingSource::Config,
            ),
            (None, Some(persona)) => (
                persona.priority,
                persona.revenue_weight_milli,
                SettingSource::Persona,
            ),
            (None, None) => (
                prescale_config::default_priority(),
                revenue_milli(prescale_config::default_revenue_weight()),
                SettingSource::Default,
            ),
        };
        Ok(ProfileRouting {
            fleet,
            fleet_source,
            priority,
            revenue_weight_milli,
            settings_source: source,
        })
    }

    /// Installs a profile model published by the forecaster and routes its profiles (see
    /// [`DataPlane::rebuild_routes`]); a persona fleet this region lacks is logged once per model.
    pub fn install_model(&self, model: ProfileModel) -> Result<ModelSwap, ModelSwapError> {
        let swap = self.assigner.install_model(model)?;
        if let ModelSwap::Installed { version } = swap {
            match self.rebuild_routes() {
                Ok(fallbacks) => {
                    for f in fallbacks {
                        tracing::warn!(
                            model_version = version,
                            profile = %f.profile,
                            persona = %f.persona,
                            fleet = %f.fleet,
                            region = %self.region,
                            "persona names a fleet this region does not have; the profile goes to the region's default fleet"
                        );
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "routing table not rebuilt after model install")
                }
            }
        }
        Ok(swap)
    }

    /// Applies a plan from the forecaster: refused whole when it is for another region or not
    /// newer than the plan applied last; otherwise each fleet it names takes its part
    /// ([`crate::fleet::Fleet::apply_plan`]: a provisioned fleet replaces its backends with the
    /// plan's when it lists them, a static fleet keeps its own) and fleets this node does not
    /// have are reported, not an error.
    pub fn apply_plan(&self, plan: &PlanUpdate) -> Result<PlanApplied, PlanError> {
        if plan.region != self.region {
            return Err(PlanError::OtherRegion {
                plan: plan.region.clone(),
                node: self.region.clone(),
            });
        }
        let mut applied = self.plan.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(last) = *applied {
            if plan.version <= last.version {
                return Err(PlanError::NotNewer {
                    version: plan.version,
                    applied: last.version,
                });
            }
        }
        let mut fleets = Vec::new();
        let mut unknown_fleets = Vec::new();
        for part in &plan.fleets {
            let Some(index) = self.fleets.index_of(&part.fleet) else {
                unknown_fleets.push(part.fleet.clone());
                continue;
            };
            let fleet = self.fleets.get(index);
            let outcome = fleet.apply_plan(part.backends.as_deref(), plan.version);
            fleet.set_grants(self.grant_table(&part.grants));
            fleets.push(FleetApplied {
                fleet: fleet.name.clone(),
                outcome,
                phases: fleet.phase_counts(),
            });
        }
        *applied = Some(PlanStamp {
            version: plan.version,
            issued_at_ms: plan.issued_at_ms,
        });
        Ok(PlanApplied {
            version: plan.version,
            issued_at_ms: plan.issued_at_ms,
            fleets,
            unknown_fleets,
        })
    }

    /// This proxy's part of a fleet's grants: its listed share, or an even one when it is not
    /// listed; grants for profiles this node has never heard of are left out.
    fn grant_table(&self, grants: &[prescale_gossip::ProfileGrant]) -> Option<GrantTable> {
        if grants.is_empty() {
            return None;
        }
        let registry = self.assigner.registry();
        let entries = grants
            .iter()
            .filter_map(|g| {
                let profile = registry.index_of(&g.profile)?;
                let mine = g
                    .shares
                    .iter()
                    .find(|s| s.node == self.node_id)
                    .map(|s| s.requests_per_minute as f64)
                    .unwrap_or_else(|| {
                        g.requests_per_minute as f64 / (g.shares.len() as f64 + 1.0)
                    });
                Some(GrantEntry {
                    profile,
                    name: g.profile.clone(),
                    revenue_weight_milli: g.revenue_weight_milli,
                    requests_per_minute: mine,
                })
            })
            .collect();
        let routing = self.routing.load();
        let revenue_of = |p: ProfileIdx| {
            routing
                .get(usize::from(p.0))
                .map_or(0, |r| r.revenue_weight_milli)
        };
        Some(GrantTable::new(
            entries,
            revenue_of,
            self.node_clock().speed(),
        ))
    }

    /// The version and issue time of the last plan applied.
    pub fn applied_plan(&self) -> Option<PlanStamp> {
        *self.plan.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The node clock (exporter intervals and sketch times).
    pub fn node_clock(&self) -> NodeClock {
        self.clock.node()
    }

    /// Unix seconds of the request path's coarse clock.
    pub fn now_secs(&self) -> u64 {
        self.clock.unix_secs()
    }

    /// Whether `ip` may tell us the client address (X-Forwarded-For).
    pub fn trusts(&self, ip: Option<IpAddr>) -> bool {
        ip.is_some_and(|ip| self.client_ips.is_trusted(ip))
    }

    /// `proxy.keepalive_requests`: requests one client connection carries before it is closed.
    pub fn keepalive_requests(&self) -> u32 {
        self.keepalive_requests.load(Ordering::Relaxed)
    }

    /// The same value, shared with pingora's HTTP/2 server (streams per client connection).
    pub fn keepalive_requests_shared(&self) -> Arc<AtomicU32> {
        Arc::clone(&self.keepalive_requests)
    }

    /// `proxy.client_limits.status`: the status of a request refused by a client limit.
    pub fn client_limit_status(&self) -> u16 {
        self.client_limit_status.load(Ordering::Relaxed)
    }

    /// Held by a reload from its check to its last swap.
    pub(crate) fn reload_lock(&self) -> &Mutex<()> {
        &self.reload_lock
    }

    pub(crate) fn replace_identity(&self, identity: IdentityResolver) {
        self.identity.store(Arc::new(identity));
    }

    pub(crate) fn replace_config(&self, config: Config) {
        self.config.store(Arc::new(config));
    }

    pub(crate) fn set_limits(
        &self,
        keepalive_requests: u32,
        client: &prescale_config::ClientLimitsConfig,
        new_users_per_sec: u32,
    ) {
        self.keepalive_requests
            .store(keepalive_requests, Ordering::Relaxed);
        self.client_limit_status
            .store(client.status, Ordering::Relaxed);
        self.client_connections.set_limit(client.connections);
        self.client_rate
            .set_rate(client.requests_per_sec, client.burst);
        self.new_users.set_per_sec(new_users_per_sec);
    }

    /// The config running now (the one started with, or the last reload applied).
    pub fn config(&self) -> Arc<Config> {
        self.config.load_full()
    }

    /// `proxy.max_header_bytes`: larger header blocks are answered 431.
    pub fn max_header_bytes(&self) -> usize {
        self.max_header_bytes
    }

    /// Decides what happens to a request: forward (to which fleet, counted under which key) or
    /// answer it here.
    pub fn admit(
        &self,
        method: &Method,
        path: &str,
        headers: &(impl HeaderLookup + ?Sized),
        peer: Option<IpAddr>,
    ) -> Result<Admitted, Rejection> {
        if headers.wire_len() > self.max_header_bytes {
            return Err(Rejection::early(431, "request header fields too large\n"));
        }
        let peer = peer.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        let client_ip = self
            .client_ips
            .client_ip(peer, headers)
            .map_err(|e| Rejection::early(e.status(), "malformed X-Forwarded-For\n"))?;
        if let Err(wait) = self.client_rate.allow(client_ip) {
            return Err(Rejection {
                retry_after_secs: Some(wait.secs),
                ..Rejection::early(
                    self.client_limit_status(),
                    "too many requests from this client address; retry later\n",
                )
            });
        }
        let mut user = self
            .identity
            .load()
            .resolve(headers, client_ip)
            .map_err(|e| Rejection::early(e.status(), identity_message(e.status())))?;
        if let Some(table) = &self.features {
            // The user's entry loads while the region and the request's traits are worked out.
            table.prefetch(user);
        }
        let origin = self.geo.region_of(client_ip);
        let facts = RequestFacts {
            method,
            path,
            headers,
        };
        let profile = match &self.features {
            Some(table) => {
                let traits = RequestTraits::classify(method, path, headers);
                let now = self.clock.unix_secs();
                let assign = |view: &UserView<'_>| {
                    self.assigner.assign_reusing(
                        view.requests(),
                        view.model_answer_this_second(),
                        || view.features(),
                        &facts,
                    )
                };
                let address_user = || self.identity.load().client_ip_key(client_ip);
                let admit_new = || {
                    self.new_users.per_sec() == 0
                        || user == address_user()
                        || self.new_users.allow(client_ip, now)
                };
                match table.on_request_if_admitted(user, now, traits, admit_new, assign) {
                    Some(outcome) => outcome.profile,
                    // Past its new-user budget: the client is the user its address is.
                    None => {
                        user = address_user();
                        table.on_request(user, now, traits, assign).profile
                    }
                }
            }
            None => self.assigner.assign_by_rules(&facts),
        };
        let routes = self.routes.load();
        let fleet_idx = routes
            .get(usize::from(profile.0))
            .copied()
            .unwrap_or(FleetIdx(0));
        let meter = MeterKey {
            profile,
            region: origin,
            fleet: MeterFleet(fleet_idx.0),
        };
        let fleet = self.fleets.get(fleet_idx);
        if let Some(grants) = fleet.grant_table().as_ref() {
            if grants.admit(profile) == GrantDecision::Shed {
                fleet.grant_shed.add(profile);
                return Err(Rejection {
                    status: 503,
                    message: "fleet at its capacity cap: higher-revenue traffic is served first; retry shortly\n",
                    retry_after_secs: Some(1),
                    meter: Some(meter),
                    user: user.0,
                });
            }
        }
        let per_backend = fleet.max_in_flight_per_backend();
        if per_backend > 0 {
            let priority = self
                .priorities
                .load()
                .get(usize::from(profile.0))
                .copied()
                .unwrap_or(100);
            let capacity = f64::from(per_backend) * fleet.available() as f64;
            // Low priorities see a smaller share of the fleet, so they are shed first as it fills.
            let admit_below = capacity * (0.6 + 0.4 * f64::from(priority) / 255.0);
            if f64::from(fleet.in_flight()) >= admit_below {
                return Err(Rejection {
                    status: 503,
                    message:
                        "fleet saturated: lower-priority traffic is shed first; retry shortly\n",
                    retry_after_secs: Some(1),
                    meter: Some(meter),
                    user: user.0,
                });
            }
        }
        Ok(Admitted {
            user: user.0,
            meter,
            fleet: fleet_idx,
        })
    }

    /// Counts a request answered before it had a user or profile (no meter key yet).
    pub fn record_early_rejection(&self, status: u16) {
        let slot = EARLY_STATUSES
            .iter()
            .position(|s| *s == status)
            .unwrap_or(EARLY_STATUSES.len());
        self.rejected_early[slot].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Records a finished request.
    pub fn record(&self, user: u64, meter: MeterKey, observation: Observation) {
        if let Some(table) = &self.features {
            // A millisecond of other requests may have pushed the entry out of the cache.
            table.prefetch(crate::identity::UserKey(user));
        }
        self.meters.record_for_user(meter, &observation, user);
        if let Some(table) = &self.features {
            table.on_response(
                crate::identity::UserKey(user),
                observation.bytes_in,
                observation.bytes_out,
                observation.is_error(),
            );
        }
    }

    /// Requests currently being forwarded.
    pub fn in_flight_requests(&self) -> u32 {
        self.fleets.iter().map(|f| f.in_flight()).sum()
    }

    /// Keeps the last minute of meter snapshots for request rates; call every few seconds.
    pub fn sample_rates(&self) {
        let now = Instant::now();
        let snapshot = self.meters.snapshot();
        let mut samples = self.rate_samples.lock().unwrap_or_else(|p| p.into_inner());
        samples.push_back((now, snapshot));
        while samples.len() > 2
            && samples
                .front()
                .is_some_and(|(t, _)| now.duration_since(*t) > RATE_WINDOW)
        {
            samples.pop_front();
        }
    }

    /// Profile, origin region and fleet names of a meter key (as sketches carry them).
    pub fn meter_labels(&self, key: MeterKey) -> (String, String, String) {
        (
            self.profile_name(key.profile).to_string(),
            self.region_name(key.region).to_string(),
            self.fleet_name(key.fleet).to_string(),
        )
    }

    /// A resident user's current features (for the exporter's sample).
    pub fn user_features(
        &self,
        user: u64,
        now_secs: u64,
    ) -> Option<prescale_gossip::model::FeatureVector> {
        self.features
            .as_ref()?
            .features_of(crate::identity::UserKey(user), now_secs)
    }

    fn profile_name(&self, profile: ProfileIdx) -> Arc<str> {
        self.assigner.name(profile)
    }

    fn region_name(&self, region: RegionId) -> &str {
        if region.0 == u16::MAX {
            "other"
        } else {
            self.geo.name(region)
        }
    }

    fn fleet_name(&self, fleet: MeterFleet) -> &str {
        if usize::from(fleet.0) < self.fleets.len() {
            &self.fleets.get(FleetIdx(fleet.0)).name
        } else {
            "other"
        }
    }

    /// Per-profile summary for `/api/v1/profiles`, and the installed model's profiles.
    pub fn profiles_report(&self) -> ProfilesReport {
        let snapshot = self.meters.snapshot();
        let oldest = {
            let samples = self.rate_samples.lock().unwrap_or_else(|p| p.into_inner());
            samples.front().map(|(t, s)| (t.elapsed(), s.clone()))
        };
        let users = self
            .features
            .as_ref()
            .map(|t| t.profile_user_counts())
            .unwrap_or_else(|| vec![0; MAX_PROFILES]);
        let model = self.assigner.model();
        let names = self.assigner.registry().names();
        let routing = self.routing.load();
        let mut profiles = Vec::with_capacity(names.len());
        for (index, name) in names.iter().enumerate() {
            let profile = ProfileIdx(index as u16);
            let entries: Vec<_> = snapshot
                .entries
                .iter()
                .filter(|e| e.key.profile == profile)
                .collect();
            let requests: u64 = entries.iter().map(|e| e.counts.requests).sum();
            let errors: u64 = entries.iter().map(|e| e.counts.errors).sum();
            let mut histogram: Option<hdrhistogram::Histogram<u64>> = None;
            for entry in &entries {
                let h = entry.histogram();
                match &mut histogram {
                    Some(total) => {
                        let _ = total.add(&h);
                    }
                    None => histogram = Some(h),
                }
            }
            let quantile = |q: f64| {
                histogram
                    .as_ref()
                    .filter(|h| !h.is_empty())
                    .map(|h| h.value_at_quantile(q) as f64 / 1000.0)
            };
            let request_rate = match &oldest {
                Some((age, earlier)) if age.as_secs_f64() >= 1.0 => {
                    let before: u64 = earlier
                        .entries
                        .iter()
                        .filter(|e| e.key.profile == profile)
                        .map(|e| e.counts.requests)
                        .sum();
                    Some(requests.saturating_sub(before) as f64 / age.as_secs_f64())
                }
                _ => None,
            };
            let centroid = model.as_ref().and_then(|m| {
                m.profile_of_centroid
                    .iter()
                    .position(|p| *p == profile)
                    .map(|i| m.model.centroids[i].center.clone())
            });
            profiles.push(ProfileSummary {
                id: index as u16,
                name: name.to_string(),
                model_version: model.as_ref().map(|m| m.model.version),
                users: users.get(index).copied().unwrap_or(0),
                requests,
                request_rate,
                error_rate: if requests == 0 {
                    0.0
                } else {
                    errors as f64 / requests as f64
                },
                latency_ms: LatencySummary {
                    p50: quantile(0.5),
                    p95: quantile(0.95),
                    p99: quantile(0.99),
                },
                centroid,
                routing: routing.get(index).map(|r| self.routing_report(r)),
            });
        }
        let model_report = model.as_ref().map(|m| {
            let summary_of = |profile: ProfileIdx| profiles.get(usize::from(profile.0));
            let learned = m
                .model
                .centroids
                .iter()
                .zip(&m.profile_of_centroid)
                .map(|(centroid, &profile)| {
                    let summary = summary_of(profile);
                    LearnedProfileReport {
                        id: centroid.id.0,
                        index: profile.0,
                        name: centroid.name.clone(),
                        population: summary.map_or(0, |s| s.users),
                        request_rate: summary.and_then(|s| s.request_rate),
                        latency_ms: summary.map(|s| s.latency_ms).unwrap_or_default(),
                        centroid: FeatureMap::of(
                            centroid
                                .center
                                .iter()
                                .zip(m.model.scale.iter().zip(&m.model.mean))
                                .map(|(center, (scale, mean))| center * scale + mean),
                        ),
                        persona: centroid.settings.clone(),
                        routing: summary.and_then(|s| s.routing.clone()),
                    }
                })
                .collect();
            let anomalous = m.anomalous_profile().map(|profile| {
                let summary = summary_of(profile);
                AnomalousReport {
                    index: profile.0,
                    population: summary.map_or(0, |s| s.users),
                    request_rate: summary.and_then(|s| s.request_rate),
                    latency_ms: summary.map(|s| s.latency_ms).unwrap_or_default(),
                    routing: summary.and_then(|s| s.routing.clone()),
                }
            });
            ModelReport {
                version: m.model.version,
                built_at: m.model.built_at,
                anomaly_distance: m.model.anomaly_distance,
                profiles: learned,
                anomalous,
            }
        });
        ProfilesReport {
            node: self.node_id.clone(),
            region: self.region.clone(),
            model_version: model.as_ref().map(|m| m.model.version),
            feature_names: FEATURE_NAMES.to_vec(),
            users_tracked: self.features.as_ref().map(|t| t.len()).unwrap_or(0),
            user_capacity: self.features.as_ref().map(|t| t.capacity()).unwrap_or(0),
            profiles,
            model: model_report,
        }
    }

    fn routing_report(&self, routing: &ProfileRouting) -> RoutingReport {
        RoutingReport {
            fleet: self.fleets.get(routing.fleet).name.clone(),
            fleet_source: routing.fleet_source,
            priority: routing.priority,
            revenue_weight_milli: routing.revenue_weight_milli,
            settings_source: routing.settings_source,
        }
    }

    /// The admin routes of the data plane.
    pub fn admin_handlers(self: &Arc<Self>) -> Vec<Handler> {
        let plane = Arc::clone(self);
        vec![Arc::new(move |request: &AdminRequest| {
            if request.method != http::Method::GET {
                return None;
            }
            match request.path.as_str() {
                "/api/v1/profiles" => Some(admin::json(&plane.profiles_report())),
                "/api/v1/users/lookup" => Some(crate::lookup::respond(
                    &crate::lookup::LookupContext {
                        identity: &plane.identity.load(),
                        table: plane.features.as_ref(),
                        assigner: &plane.assigner,
                        now_secs: plane.now_secs(),
                    },
                    request,
                )),
                "/api/v1/fleets" => {
                    let plan = plane.applied_plan();
                    Some(admin::json(&FleetsReport {
                        region: plane.region.clone(),
                        plan_version: plan.map(|p| p.version),
                        plan_issued_at_ms: plan.map(|p| p.issued_at_ms),
                        fleets: plane.fleets.iter().map(|f| f.status()).collect(),
                    }))
                }
                _ => None,
            }
        })]
    }

    /// Readiness: every fleet has at least one Ready, healthy, non-ejected backend.
    pub fn readiness(self: &Arc<Self>) -> Readiness {
        let plane = Arc::clone(self);
        Arc::new(move || {
            let empty: Vec<&str> = plane
                .fleets
                .iter()
                .filter(|f| f.available() == 0)
                .map(|f| f.name.as_str())
                .collect();
            if empty.is_empty() {
                Ok(())
            } else {
                Err(format!(
                    "no ready, healthy backend in fleet(s) {}",
                    empty.join(", ")
                ))
            }
        })
    }

    pub fn metrics_source(self: &Arc<Self>) -> MetricsSource {
        let plane = Arc::clone(self);
        Arc::new(move |out: &mut String| plane.write_metrics(out))
    }

    /// Prometheus text exposition of the data plane.
    pub fn write_metrics(&self, out: &mut String) {
        let snapshot = self.meters.snapshot();
        const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];
        let labels = |key: MeterKey| {
            format!(
                "profile=\"{}\",region=\"{}\",fleet=\"{}\"",
                self.profile_name(key.profile),
                self.region_name(key.region),
                self.fleet_name(key.fleet)
            )
        };
        out.push_str("# HELP prescale_requests_total Requests by profile, origin region, fleet and status class.\n");
        out.push_str("# TYPE prescale_requests_total counter\n");
        for entry in &snapshot.entries {
            let l = labels(entry.key);
            let mut classified = 0;
            for (class, count) in CLASSES.iter().zip(entry.counts.status_classes) {
                classified += count;
                if count > 0 {
                    let _ = writeln!(
                        out,
                        "prescale_requests_total{{{l},status=\"{class}\"}} {count}"
                    );
                }
            }
            let unanswered = entry.counts.requests.saturating_sub(classified);
            if unanswered > 0 {
                let _ = writeln!(
                    out,
                    "prescale_requests_total{{{l},status=\"none\"}} {unanswered}"
                );
            }
        }
        out.push_str("# HELP prescale_request_errors_total Requests that got a 5xx or no response from upstream.\n");
        out.push_str("# TYPE prescale_request_errors_total counter\n");
        for entry in &snapshot.entries {
            let _ = writeln!(
                out,
                "prescale_request_errors_total{{{}}} {}",
                labels(entry.key),
                entry.counts.errors
            );
        }
        out.push_str("# HELP prescale_request_bytes_total Request body bytes received.\n");
        out.push_str("# TYPE prescale_request_bytes_total counter\n");
        for entry in &snapshot.entries {
            let _ = writeln!(
                out,
                "prescale_request_bytes_total{{{}}} {}",
                labels(entry.key),
                entry.counts.bytes_in
            );
        }
        out.push_str("# HELP prescale_response_bytes_total Response body bytes sent.\n");
        out.push_str("# TYPE prescale_response_bytes_total counter\n");
        for entry in &snapshot.entries {
            let _ = writeln!(
                out,
                "prescale_response_bytes_total{{{}}} {}",
                labels(entry.key),
                entry.counts.bytes_out
            );
        }
        const BOUNDS: [f64; 16] = [
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            30.0, 60.0,
        ];
        out.push_str("# HELP prescale_request_duration_seconds Time from request arrival to the end of the response.\n");
        out.push_str("# TYPE prescale_request_duration_seconds histogram\n");
        for entry in &snapshot.entries {
            let l = labels(entry.key);
            let mut cumulative = [0u64; BOUNDS.len()];
            let mut sum = 0.0;
            let mut count = 0u64;
            for (nanos, n) in entry.latency_buckets() {
                let seconds = nanos as f64 / 1e9;
                sum += seconds * n as f64;
                count += n;
                for (slot, bound) in cumulative.iter_mut().zip(BOUNDS) {
                    if seconds <= bound {
                        *slot += n;
                    }
                }
            }
            for (bound, c) in BOUNDS.iter().zip(cumulative) {
                let _ = writeln!(
                    out,
                    "prescale_request_duration_seconds_bucket{{{l},le=\"{bound}\"}} {c}"
                );
            }
            let _ = writeln!(
                out,
                "prescale_request_duration_seconds_bucket{{{l},le=\"+Inf\"}} {count}"
            );
            let _ = writeln!(out, "prescale_request_duration_seconds_sum{{{l}}} {sum}");
            let _ = writeln!(
                out,
                "prescale_request_duration_seconds_count{{{l}}} {count}"
            );
        }
        out.push_str("# HELP prescale_profile_users Users in the per-user table currently assigned to each profile.\n");
        out.push_str("# TYPE prescale_profile_users gauge\n");
        if let Some(table) = &self.features {
            let counts = table.profile_user_counts();
            for (index, name) in self.assigner.registry().names().iter().enumerate() {
                let _ = writeln!(
                    out,
                    "prescale_profile_users{{profile=\"{name}\"}} {}",
                    counts.get(index).copied().unwrap_or(0)
                );
            }
            out.push_str(
                "# HELP prescale_user_table_entries Users resident in the per-user table.\n",
            );
            out.push_str("# TYPE prescale_user_table_entries gauge\n");
            let _ = writeln!(out, "prescale_user_table_entries {}", table.len());
            out.push_str("# HELP prescale_user_table_capacity Most users the table holds (its memory ceiling).\n");
            out.push_str("# TYPE prescale_user_table_capacity gauge\n");
            let _ = writeln!(out, "prescale_user_table_capacity {}", table.capacity());
        }
        if self.new_users.per_sec() > 0 || self.new_users.limited() > 0 {
            let limiter = &self.new_users;
            out.push_str("# HELP prescale_new_users_limited_total Requests whose new user was not taken into the per-user table because its client address had brought in identity.new_users_per_client_per_sec new users this second (served as the address's user).\n");
            out.push_str("# TYPE prescale_new_users_limited_total counter\n");
            let _ = writeln!(
                out,
                "prescale_new_users_limited_total {}",
                limiter.limited()
            );
        }
        out.push_str("# HELP prescale_rejected_requests_total Requests answered before identity and profile were known (malformed or oversized headers, bad identity).\n");
        out.push_str("# TYPE prescale_rejected_requests_total counter\n");
        for (i, label) in ["400", "401", "431", "other"].iter().enumerate() {
            let n = self.rejected_early[i].load(std::sync::atomic::Ordering::Relaxed);
            let _ = writeln!(
                out,
                "prescale_rejected_requests_total{{status=\"{label}\"}} {n}"
            );
        }
        out.push_str("# HELP prescale_config_reloads_total Config reloads (SIGHUP, POST /api/v1/reload) by result (refused: the running config stayed).\n");
        out.push_str("# TYPE prescale_config_reloads_total counter\n");
        for (result, counter) in [
            ("applied", &self.reloads.applied),
            ("refused", &self.reloads.refused),
        ] {
            let _ = writeln!(
                out,
                "prescale_config_reloads_total{{result=\"{result}\"}} {}",
                counter.load(Ordering::Relaxed)
            );
        }
        out.push_str("# HELP prescale_config_last_reload_timestamp_seconds Unix time of the last reload applied (0: none since start).\n");
        out.push_str("# TYPE prescale_config_last_reload_timestamp_seconds gauge\n");
        let _ = writeln!(
            out,
            "prescale_config_last_reload_timestamp_seconds {}",
            self.reloads.last_applied_secs.load(Ordering::Relaxed)
        );
        if let Some(log) = &self.access_log {
            log.write_metrics(out);
        }
        let connections = &self.client_connections;
        let rate = &self.client_rate;
        let show_connections = connections.is_limited() || connections.refused() > 0;
        let show_rate = rate.is_limited() || rate.limited() > 0;
        if show_connections || show_rate {
            out.push_str("# HELP prescale_client_limited_total Requests (limit=\"requests\") and connections (limit=\"connections\") refused by proxy.client_limits.\n");
            out.push_str("# TYPE prescale_client_limited_total counter\n");
            if show_connections {
                let _ = writeln!(
                    out,
                    "prescale_client_limited_total{{limit=\"connections\"}} {}",
                    connections.refused()
                );
            }
            if show_rate {
                let _ = writeln!(
                    out,
                    "prescale_client_limited_total{{limit=\"requests\"}} {}",
                    rate.limited()
                );
            }
            out.push_str("# HELP prescale_client_limit_clients Client addresses the limits hold state for (with an open connection; with a request rate debt).\n");
            out.push_str("# TYPE prescale_client_limit_clients gauge\n");
            if show_connections {
                let _ = writeln!(
                    out,
                    "prescale_client_limit_clients{{limit=\"connections\"}} {}",
                    connections.clients()
                );
            }
            if show_rate {
                let _ = writeln!(
                    out,
                    "prescale_client_limit_clients{{limit=\"requests\"}} {}",
                    rate.clients()
                );
            }
        }
        out.push_str("# HELP prescale_profile_model_version Version of the installed profile model (0: rules only).\n");
        out.push_str("# TYPE prescale_profile_model_version gauge\n");
        let _ = writeln!(
            out,
            "prescale_profile_model_version {}",
            self.assigner.model_version().unwrap_or(0)
        );
        out.push_str("# HELP prescale_plan_version Version of the last plan applied from the forecaster (0: none).\n");
        out.push_str("# TYPE prescale_plan_version gauge\n");
        let _ = writeln!(
            out,
            "prescale_plan_version {}",
            self.applied_plan().map_or(0, |p| p.version)
        );
        // One snapshot of each fleet's set, so every backend metric describes the same backends.
        let sets: Vec<_> = self.fleets.iter().map(|f| (f, f.backends())).collect();
        out.push_str("# HELP prescale_backend_state A backend's phase (1 for the current one): warming ones get no requests, draining ones only finish theirs.\n");
        out.push_str("# TYPE prescale_backend_state gauge\n");
        for (fleet, set) in &sets {
            for backend in set.backends() {
                let current = backend.phase();
                for phase in [
                    BackendPhase::Warming,
                    BackendPhase::Ready,
                    BackendPhase::Draining,
                ] {
                    let _ = writeln!(
                        out,
                        "prescale_backend_state{{fleet=\"{}\",backend=\"{}\",state=\"{}\"}} {}",
                        fleet.name,
                        backend.addr,
                        phase_name(phase),
                        u8::from(phase == current)
                    );
                }
            }
        }
        out.push_str("# HELP prescale_backend_healthy Whether a backend passes active health checks and is not ejected.\n");
        out.push_str("# TYPE prescale_backend_healthy gauge\n");
        for (fleet, set) in &sets {
            for backend in set.backends() {
                let up = u8::from(backend.is_healthy() && !fleet.is_ejected(backend));
                let _ = writeln!(
                    out,
                    "prescale_backend_healthy{{fleet=\"{}\",backend=\"{}\"}} {up}",
                    fleet.name, backend.addr
                );
            }
        }
        if self.fleets.iter().any(|f| f.config().resolve) {
            out.push_str("# HELP prescale_backend_resolutions_total Rounds of re-resolving a fleet's backend names (resolve = true), by result: failed when a name did not resolve and kept its last addresses.\n");
            out.push_str("# TYPE prescale_backend_resolutions_total counter\n");
            for fleet in self.fleets.iter().filter(|f| f.config().resolve) {
                for (result, counter) in [
                    ("succeeded", &fleet.dns.succeeded),
                    ("failed", &fleet.dns.failed),
                ] {
                    let _ = writeln!(
                        out,
                        "prescale_backend_resolutions_total{{fleet=\"{}\",result=\"{result}\"}} {}",
                        fleet.name,
                        counter.load(std::sync::atomic::Ordering::Relaxed)
                    );
                }
            }
        }
        out.push_str("# HELP prescale_grant_shed_total Requests shed because their profile's grant (and every lower-revenue one) was used up while the fleet's cap binds.\n");
        out.push_str("# TYPE prescale_grant_shed_total counter\n");
        let names = self.assigner.registry().names();
        for fleet in self.fleets.iter() {
            for (index, name) in names.iter().enumerate() {
                let n = fleet.grant_shed.get(ProfileIdx(index as u16));
                if n > 0 {
                    let _ = writeln!(
                        out,
                        "prescale_grant_shed_total{{fleet=\"{}\",profile=\"{name}\"}} {n}",
                        fleet.name
                    );
                }
            }
        }
        out.push_str("# HELP prescale_grant_requests_per_minute This proxy's grant per profile while the fleet's cap binds.\n");
        out.push_str("# TYPE prescale_grant_requests_per_minute gauge\n");
        for fleet in self.fleets.iter() {
            if let Some(table) = fleet.grants() {
                for e in table.entries() {
                    let _ = writeln!(
                        out,
                        "prescale_grant_requests_per_minute{{fleet=\"{}\",profile=\"{}\"}} {}",
                        fleet.name, e.name, e.requests_per_minute
                    );
                }
            }
        }
        out.push_str("# HELP prescale_backend_in_flight Requests being forwarded to a backend.\n");
        out.push_str("# TYPE prescale_backend_in_flight gauge\n");
        for (fleet, set) in &sets {
            for backend in set.backends() {
                let n = backend.in_flight.load(std::sync::atomic::Ordering::Relaxed);
                let _ = writeln!(
                    out,
                    "prescale_backend_in_flight{{fleet=\"{}\",backend=\"{}\"}} {n}",
                    fleet.name, backend.addr
                );
            }
        }
        out.push_str("# HELP prescale_backend_failures_total Failed attempts (connect, timeout, broken response) per backend.\n");
        out.push_str("# TYPE prescale_backend_failures_total counter\n");
        for (fleet, set) in &sets {
            for backend in set.backends() {
                let n = backend.failures.load(std::sync::atomic::Ordering::Relaxed);
                let _ = writeln!(
                    out,
                    "prescale_backend_failures_total{{fleet=\"{}\",backend=\"{}\"}} {n}",
                    fleet.name, backend.addr
                );
            }
        }
    }
}

fn identity_message(status: u16) -> &'static str {
    match status {
        401 => "identity token rejected\n",
        431 => "identity too long\n",
        _ => "malformed identity\n",
    }
}

/// How often [`CoarseClock`] refreshes its time.
pub const COARSE_CLOCK_TICK: Duration = Duration::from_millis(100);

/// Node-time unix seconds for the request path: one relaxed load instead of a clock read per
/// request. A background thread refreshes it from the node clock every [`COARSE_CLOCK_TICK`]
/// of real time and exits once the clock is dropped; if that thread cannot be started, every
/// read asks the node clock.
#[derive(Debug)]
pub struct CoarseClock {
    secs: Arc<AtomicU64>,
    ticking: bool,
    node: NodeClock,
}

impl CoarseClock {
    /// A coarse reading of the wall clock.
    pub fn start() -> Self {
        Self::on(NodeClock::real())
    }

    /// A coarse reading of `node` (which may run faster than real time).
    pub fn on(node: NodeClock) -> Self {
        let secs = Arc::new(AtomicU64::new(node.now_secs()));
        let shared = Arc::downgrade(&secs);
        let ticking = std::thread::Builder::new()
            .name("prescale-clock".into())
            .spawn(move || loop {
                std::thread::sleep(COARSE_CLOCK_TICK);
                let Some(secs) = shared.upgrade() else { break };
                secs.store(node.now_secs(), Ordering::Relaxed);
            })
            .is_ok();
        if !ticking {
            tracing::warn!("coarse clock thread not started: reading the system clock per request");
        }
        CoarseClock {
            secs,
            ticking,
            node,
        }
    }

    /// Unix seconds, at most one tick old.
    pub fn unix_secs(&self) -> u64 {
        if self.ticking {
            self.secs.load(Ordering::Relaxed)
        } else {
            self.node.now_secs()
        }
    }

    /// The node clock this reads.
    pub fn node(&self) -> NodeClock {
        self.node
    }
}

#[derive(Debug, Serialize)]
pub struct ProfilesReport {
    pub node: String,
    pub region: String,
    pub model_version: Option<u64>,
    pub feature_names: Vec<&'static str>,
    pub users_tracked: usize,
    pub user_capacity: usize,
    pub profiles: Vec<ProfileSummary>,
    /// The installed model and its profiles (null before the first model).
    pub model: Option<ModelReport>,
}

#[derive(Debug, Serialize)]
pub struct ProfileSummary {
    pub id: u16,
    pub name: String,
    pub model_version: Option<u64>,
    pub users: u64,
    /// Requests since the node started.
    pub requests: u64,
    /// Requests/s over the last minute (null until a few seconds of samples exist).
    pub request_rate: Option<f64>,
    pub error_rate: f64,
    pub latency_ms: LatencySummary,
    /// The profile's centroid in the model's scaled feature space (null without a model).
    pub centroid: Option<Vec<f32>>,
    /// Where its requests go and how they rank under saturation.
    pub routing: Option<RoutingReport>,
}

#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct LatencySummary {
    pub p50: Option<f64>,
    pub p95: Option<f64>,
    pub p99: Option<f64>,
}

/// A profile's fleet, priority and revenue weight as routed, with their sources.
#[derive(Clone, Debug, Serialize)]
pub struct RoutingReport {
    pub fleet: String,
    /// `route`, `persona` or `default`.
    pub fleet_source: SettingSource,
    pub priority: u8,
    pub revenue_weight_milli: u64,
    /// Where priority and revenue weight came from: `config` (`[[profiles]]`), `persona` or
    /// `default`.
    pub settings_source: SettingSource,
}

/// The installed profile model.
#[derive(Debug, Serialize)]
pub struct ModelReport {
    pub version: u64,
    /// Unix seconds.
    pub built_at: u64,
    /// Squared scaled distance beyond which a user is `anomalous` (null: never).
    pub anomaly_distance: Option<f32>,
    pub profiles: Vec<LearnedProfileReport>,
    /// Users farther than `anomaly_distance` from every centroid (null without one).
    pub anomalous: Option<AnomalousReport>,
}

/// One centroid of the installed model, as this proxy sees its users.
#[derive(Debug, Serialize)]
pub struct LearnedProfileReport {
    /// The model's profile id (stable across rebuilds).
    pub id: u32,
    /// This node's index of the profile (the `id` in `profiles`).
    pub index: u16,
    pub name: String,
    /// Resident users currently assigned to it.
    pub population: u64,
    pub request_rate: Option<f64>,
    pub latency_ms: LatencySummary,
    /// The centroid in feature units (`center × scale + mean`), by feature name.
    pub centroid: FeatureMap,
    /// The persona settings the forecaster attached (null: none).
    pub persona: Option<ProfileSettings>,
    pub routing: Option<RoutingReport>,
}

/// The `anomalous` profile of a model with an anomaly distance.
#[derive(Debug, Serialize)]
pub struct AnomalousReport {
    pub index: u16,
    pub population: u64,
    pub request_rate: Option<f64>,
    pub latency_ms: LatencySummary,
    pub routing: Option<RoutingReport>,
}

/// Feature values as a JSON object keyed by feature name, in [`FEATURE_NAMES`] order.
#[derive(Clone, Debug, PartialEq)]
pub struct FeatureMap(pub Vec<(&'static str, f32)>);

impl FeatureMap {
    /// `values` in [`FEATURE_NAMES`] order.
    pub fn of(values: impl IntoIterator<Item = f32>) -> Self {
        FeatureMap(FEATURE_NAMES.iter().copied().zip(values).collect())
    }
}

impl Serialize for FeatureMap {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (name, value) in &self.0 {
            map.serialize_entry(name, value)?;
        }
        map.end()
    }
}

#[derive(Debug, Serialize)]
struct FleetsReport {
    region: String,
    /// The last plan applied (null before the first).
    plan_version: Option<u64>,
    plan_issued_at_ms: Option<u64>,
    fleets: Vec<crate::fleet::FleetStatus>,
}

#[cfg(test)]
mod tests;
