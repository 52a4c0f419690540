//! prescale-config: the configuration schema (serde, TOML), its defaults, and validation whose
//! errors name the key, the line and what is expected.
//!
//! Invariants: a [`Config`] returned by [`load_file`], [`parse_str`] or [`embedded_default`] has
//! passed validation (names resolve, numbers are in range). This crate does no network IO.

pub mod brain;
mod error;
mod load;
mod schema;
mod secret;
mod validate;

pub use error::{ConfigError, KeyPath, KeySegment, Problem};
pub use load::{check, load_brain_file, load_file, parse_str, BrainConfig};
pub use schema::*;
pub use secret::Secret;
pub use validate::{backend_host, is_name, BUILTIN_PROFILES};

/// The configuration `prescale up` runs with when given no file: one region, one fleet whose
/// backends the forecaster's process provisioner starts (demo backends, this executable).
pub const EMBEDDED_DEFAULT: &str = include_str!("embedded-default.toml");

/// The embedded default, validated.
pub fn embedded_default() -> Result<Config, ConfigError> {
    let config: Config = toml::from_str(EMBEDDED_DEFAULT).map_err(|e| ConfigError::Invalid {
        origin: "embedded default".to_string(),
        problems: vec![Problem {
            key: KeyPath::root(),
            line: None,
            message: e.message().to_string(),
        }],
    })?;
    check(&config, "embedded default")?;
    Ok(config)
}

impl Config {
    /// The region whose fleets this node routes to (validated to exist).
    pub fn node_region(&self) -> Option<&str> {
        match &self.node.region {
            Some(region) => Some(region.as_str()),
            None if self.regions.len() == 1 => Some(self.regions[0].name.as_str()),
            None => None,
        }
    }

    /// Region for clients the GeoIP database cannot place.
    pub fn fallback_region(&self) -> Option<&str> {
        self.geo
            .fallback_region
            .as_deref()
            .or_else(|| self.node_region())
    }

    /// Revenue weight and priority of a profile (configured, or the defaults).
    pub fn profile_settings(&self, profile: &str) -> (f64, u8) {
        self.profiles
            .iter()
            .find(|p| p.name == profile)
            .map(|p| (p.revenue_weight, p.priority))
            .unwrap_or((default_revenue_weight(), default_priority()))
    }

    /// The fleet a profile's requests go to in `region`: its route, else the region's default.
    pub fn fleet_for(&self, region: &str, profile: &str) -> Option<&FleetConfig> {
        let routed = self
            .routes
            .iter()
            .find(|r| r.profile == profile && r.region.as_deref() == Some(region))
            .or_else(|| {
                self.routes
                    .iter()
                    .find(|r| r.profile == profile && r.region.is_none())
            })
            .map(|r| r.fleet.as_str());
        let name = routed.or_else(|| {
            let region_config = self.regions.iter().find(|r| r.name == region)?;
            region_config.default_fleet.as_deref().or_else(|| {
                self.fleets
                    .iter()
                    .find(|f| f.region == region)
                    .map(|f| f.name.as_str())
            })
        })?;
        self.fleets
            .iter()
            .find(|f| f.region == region && f.name == name)
    }
}

#[cfg(test)]
mod tests;
