//! Activity of services that are not behind the proxy, posted to the forecaster as NDJSON events
//! (`POST /api/v1/ingest`, served by the binary): each event is a request of its user, hashed,
//! placed, profiled and routed exactly as a proxied request is, and the batch becomes one sketch
//! per minute that the forecaster stores as it stores a proxy's.
//!
//! Owns: the ingest's own identity resolver, GeoIP lookup, per-user feature table (its memory
//! ceiling `ingest.user_table_mib`), profile assigner (the config's rules, and the models the
//! forecaster installs with [`Ingest::install_model`]), and the limits; parsing lives in
//! [`parse`], events → sketches in [`events`].
//!
//! Invariants:
//! - a batch is all or nothing: [`Ingest::parse`] checks every line and changes nothing, and
//!   only a batch that passed whole is handed to [`Ingest::build`], the one step that updates
//!   the feature table;
//! - raw user ids never leave [`parse`] (events carry [`crate::identity::UserKey`]s), and they
//!   are hashed by the proxy's identity rules, so an id ingested and the same id sent to a proxy
//!   under the same secret are one user;
//! - sketches are of the node [`Ingest::node`] (given by the binary: a name no proxy
//!   certificate can have) and the forecaster's region; their sequences are the store's to give.

pub mod events;
pub mod parse;

use std::sync::Arc;

use prescale_config::Config;
use prescale_gossip::model::ProfileModel;
use prescale_gossip::sketch::MAX_NAME_LEN;
use prescale_gossip::NodeClock;

pub use events::{Batch, BatchSummary};
pub use parse::{Event, LineError, Origin, Rejected};

use crate::error::ProxyError;
use crate::features::FeatureTable;
use crate::geo::GeoResolver;
use crate::identity::IdentityResolver;
use crate::profiles::{
    ModelSwap, ModelSwapError, ProfileAssigner, ProfileRegistry, RegistryFull, RuleError,
};

/// A hash of a batch's body, stable across builds and restarts (SipHash-1-3 under fixed keys):
/// stored with an idempotency key, it tells a retry from a new batch reusing the key. Not a
/// defence against someone forging collisions, who could as well send another key.
pub fn body_hash(body: &[u8]) -> u64 {
    use std::hash::Hasher;
    let mut hasher =
        siphasher::sip::SipHasher13::new_with_keys(0x696e_6765_7374_2d62, 0x6f64_792d_6861_7368);
    hasher.write(body);
    hasher.finish()
}

/// The `[ingest]` limits in force.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IngestLimits {
    pub max_body_bytes: usize,
    pub max_line_bytes: usize,
    pub max_events: usize,
}

/// What the binary decides for the ingest: under which node name batches are stored, and how
/// long the series keep minutes.
#[derive(Clone, Debug)]
pub struct IngestSettings {
    pub node: String,
    pub retention_secs: u64,
}

/// Why the ingest cannot start, or a batch cannot be turned into sketches.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("ingest: node.region is not set (and more than one region is configured)")]
    NoRegion,
    #[error("ingest: node name `{node}` is longer than {MAX_NAME_LEN} bytes")]
    NodeName { node: String },
    #[error("ingest: {0}")]
    Startup(#[source] ProxyError),
    #[error("ingest: profile registry: {0}")]
    Registry(#[source] RegistryFull),
    #[error("ingest: profile assignment: {0}")]
    Rules(#[source] RuleError),
    #[error("ingest: region `{region}` has no fleet")]
    NoFleets { region: String },
    #[error("ingest: no fleet for profile `{profile}` in region `{region}`")]
    NoFleet { profile: String, region: String },
    #[error("ingest: latency histogram: {0}")]
    Histogram(String),
    #[error("ingest: sketch of minute {minute}: {source}")]
    Sketch {
        minute: u64,
        #[source]
        source: prescale_gossip::Error,
    },
}

/// The forecaster's ingest of posted events. Share one (`Arc`); all methods take `&self`.
pub struct Ingest {
    node: String,
    region: String,
    identity: IdentityResolver,
    geo: GeoResolver,
    features: Option<FeatureTable>,
    assigner: ProfileAssigner,
    config: Arc<Config>,
    regions: Vec<String>,
    /// The fleets of the forecaster's region.
    fleets: Vec<String>,
    clock: NodeClock,
    retention_secs: u64,
    limits: IngestLimits,
}

impl std::fmt::Debug for Ingest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ingest")
            .field("node", &self.node)
            .field("region", &self.region)
            .field("identity", &self.identity)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl Ingest {
    /// Builds the ingest from the config (identity, `[[regions]]`, `geo`, `[[fleets]]`,
    /// `[[routes]]`, `[assignment]`, `[profiling]`, `[ingest]`), reading `clock` for the
    /// timestamp window.
    pub fn new(
        config: &Config,
        clock: NodeClock,
        settings: IngestSettings,
    ) -> Result<Self, IngestError> {
        let region = config
            .node_region()
            .ok_or(IngestError::NoRegion)?
            .to_string();
        if settings.node.len() > MAX_NAME_LEN {
            return Err(IngestError::NodeName {
                node: settings.node,
            });
        }
        let fleets: Vec<String> = config
            .fleets
            .iter()
            .filter(|f| f.region == region)
            .map(|f| f.name.clone())
            .collect();
        if fleets.is_empty() {
            return Err(IngestError::NoFleets { region });
        }
        let registry =
            Arc::new(ProfileRegistry::from_config(config).map_err(IngestError::Registry)?);
        let assigner =
            ProfileAssigner::new(&config.assignment, registry).map_err(IngestError::Rules)?;
        let features = config.profiling.enabled.then(|| {
            FeatureTable::with_memory_ceiling(
                config.ingest.user_table_mib.saturating_mul(1024 * 1024),
                config.profiling.session_gap_secs,
            )
        });
        Ok(Ingest {
            node: settings.node,
            identity: IdentityResolver::new(&config.identity).map_err(IngestError::Startup)?,
            geo: GeoResolver::open(config).map_err(IngestError::Startup)?,
            features,
            assigner,
            regions: config.regions.iter().map(|r| r.name.clone()).collect(),
            fleets,
            clock,
            retention_secs: settings.retention_secs,
            limits: IngestLimits {
                max_body_bytes: config.ingest.max_body_bytes,
                max_line_bytes: config.ingest.max_line_bytes,
                max_events: config.ingest.max_events,
            },
            config: Arc::new(config.clone()),
            region,
        })
    }

    /// The node name the batches are stored under.
    pub fn node(&self) -> &str {
        &self.node
    }

    pub fn limits(&self) -> IngestLimits {
        self.limits
    }

    /// Installs a profile model (the forecaster's learned one), as a proxy does.
    pub fn install_model(&self, model: ProfileModel) -> Result<ModelSwap, ModelSwapError> {
        self.assigner.install_model(model)
    }

    /// The installed model's version, if any.
    pub fn model_version(&self) -> Option<u64> {
        self.assigner.model_version()
    }

    /// Users in the ingest's feature table, and how many it can hold (0, 0 with profiling off).
    pub fn users_tracked(&self) -> (usize, usize) {
        self.features
            .as_ref()
            .map_or((0, 0), |t| (t.len(), t.capacity()))
    }

    /// Checks a whole body at the node clock's now: its events, or every bad line. Changes
    /// nothing.
    pub fn parse(&self, body: &[u8]) -> Result<Vec<Event>, Rejected> {
        self.parse_at(body, self.clock.now_secs())
    }

    /// [`Ingest::parse`] at node time `now_secs`.
    pub fn parse_at(&self, body: &[u8], now_secs: u64) -> Result<Vec<Event>, Rejected> {
        parse::parse_batch(
            body,
            &parse::ParseContext {
                identity: &self.identity,
                regions: &self.regions,
                fleets: &self.fleets,
                region: &self.region,
                now_secs,
                retention_secs: self.retention_secs,
                max_line_bytes: self.limits.max_line_bytes,
                max_events: self.limits.max_events,
            },
        )
    }
}

#[cfg(test)]
pub(crate) mod testing {
    //! A forecaster config and ingest for the unit tests of this module.

    use super::*;

    pub const NOW: u64 = 1_767_261_600; // 2026-01-01T10:00:00Z, a minute boundary

    pub fn config(extra: &str) -> Config {
        let mut config = prescale_config::parse_str(
            &format!(
                r#"
                [node]
                id = "fc-1"
                region = "eu"
                [identity]
                secret = "0123456789abcdef-test-secret"
                [[regions]]
                name = "eu"
                countries = ["GB", "SE", "DE"]
                default_fleet = "web"
                [[regions]]
                name = "asia"
                countries = ["CN"]
                [[fleets]]
                name = "web"
                region = "eu"
                backends = ["127.0.0.1:1"]
                [[fleets]]
                name = "batch"
                region = "eu"
                backends = ["127.0.0.1:2"]
                [[fleets]]
                name = "web-asia"
                region = "asia"
                backends = ["127.0.0.1:3"]
                [[routes]]
                profile = "exports"
                fleet = "batch"
                region = "eu"
                [ingest]
                user_table_mib = 1
                max_events = 50
                max_line_bytes = 1024
                {extra}
                "#
            ),
            "test.toml",
        )
        .unwrap_or_else(|e| panic!("test config: {e}"));
        config.geo.database = Some(
            std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../tests/data/geoip/GeoIP2-City-Test.mmdb"),
        );
        config
    }

    pub fn ingest(config: &Config) -> Ingest {
        Ingest::new(
            config,
            NodeClock::real(),
            IngestSettings {
                node: "ingest/fc-1".into(),
                retention_secs: 30 * 86_400,
            },
        )
        .unwrap_or_else(|e| panic!("ingest: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{config, ingest};
    use super::*;

    #[test]
    fn the_body_hash_is_fixed_across_builds() {
        // Stored with idempotency keys: a change would turn every retry after an upgrade into a
        // conflict.
        assert_eq!(body_hash(b"{\"user_id\":\"a\"}\n"), PINNED_HASH);
        assert_ne!(body_hash(b"a"), body_hash(b"b"));
    }

    const PINNED_HASH: u64 = 16_425_912_252_547_122_653;

    #[test]
    fn startup_problems_are_named() {
        let config = config("");
        let settings = |node: String| IngestSettings {
            node,
            retention_secs: 86_400,
        };
        let long = Ingest::new(
            &config,
            NodeClock::real(),
            settings("n".repeat(MAX_NAME_LEN + 1)),
        );
        assert!(matches!(long, Err(IngestError::NodeName { .. })));
        let mut no_geo = config.clone();
        no_geo.geo.database = Some("/nonexistent/geo.mmdb".into());
        let error = Ingest::new(&no_geo, NodeClock::real(), settings("ingest/x".into()))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(error.contains("geo.database"), "{error}");
        assert_eq!(ingest(&config).node(), "ingest/fc-1");
        assert_eq!(ingest(&config).limits().max_events, 50);
    }
}
