//! Client address → country → configured region.
//!
//! Owns: the MaxMind DB reader (opened and checked once at start) and the country → region map.
//!
//! Invariants:
//! - a database that is missing, truncated, corrupt (bad metadata, node count, search tree, data
//!   pointers) or has no country field is a startup error ([`ProxyError::GeoDatabase`]) naming
//!   the file and the problem; it is never discovered on the request path;
//! - both schemas are understood: GeoIP2/GeoLite2 (`country.iso_code`, falling back to
//!   `registered_country.iso_code`; Country and City databases) and the flat `country_code`
//!   schema; which one a file uses is detected at open;
//! - [`GeoResolver::region_of`] never fails and never panics: an unknown address, a record
//!   without a country, a country no region lists, or a lookup error all give the fallback region;
//!   without a database every address is in the fallback region;
//! - a [`RegionId`] is an index into the configured regions, stable for the process's life.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use maxminddb::{PathElement, Reader, WithinOptions};
use prescale_config::Config;

use crate::error::ProxyError;

/// A configured region, as a small index (for meter keys). See [`GeoResolver::name`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RegionId(pub u16);

/// Most regions a node can index (meter arrays are sized by it).
pub const MAX_REGIONS: usize = 64;

/// Which record layout the database uses for the country.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CountrySchema {
    /// GeoIP2/GeoLite2: `country.iso_code` (or `registered_country.iso_code`).
    GeoIp2,
    /// Flat databases: a top-level `country_code`.
    Flat,
}

const GEOIP2_COUNTRY: [PathElement<'static>; 2] =
    [PathElement::Key("country"), PathElement::Key("iso_code")];
const GEOIP2_REGISTERED: [PathElement<'static>; 2] = [
    PathElement::Key("registered_country"),
    PathElement::Key("iso_code"),
];
const FLAT_COUNTRY: [PathElement<'static>; 1] = [PathElement::Key("country_code")];

/// No region for this country (entry of the country table).
const UNMAPPED: u16 = u16::MAX;

/// Networks inspected at open to detect the schema.
const SCHEMA_PROBE_NETWORKS: usize = 512;

struct Database {
    reader: Reader<Vec<u8>>,
    schema: CountrySchema,
}

/// Maps client addresses to regions. Build once at start; share (it is read-only).
pub struct GeoResolver {
    database: Option<Database>,
    region_names: Vec<String>,
    /// Country (`A..Z` × `A..Z`) → region index, or [`UNMAPPED`].
    country_regions: Vec<u16>,
    fallback: RegionId,
}

impl std::fmt::Debug for GeoResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GeoResolver")
            .field(
                "database_type",
                &self
                    .database
                    .as_ref()
                    .map(|d| d.reader.metadata.database_type.as_str()),
            )
            .field("schema", &self.schema())
            .field("regions", &self.region_names)
            .field("fallback", &self.fallback)
            .finish()
    }
}

impl GeoResolver {
    /// Opens `geo.database` (when set), checks it thoroughly, and builds the country → region
    /// map from `[[regions]]`.
    pub fn open(config: &Config) -> Result<Self, ProxyError> {
        let region_names: Vec<String> = config.regions.iter().map(|r| r.name.clone()).collect();
        if region_names.len() > MAX_REGIONS {
            return Err(ProxyError::TooManyRegions {
                count: region_names.len(),
                max: MAX_REGIONS,
            });
        }
        let fallback_name = config.fallback_region().unwrap_or_default();
        let fallback = region_names
            .iter()
            .position(|name| name == fallback_name)
            .ok_or_else(|| ProxyError::UnknownRegion {
                key: "geo.fallback_region",
                region: fallback_name.to_string(),
            })?;
        let mut country_regions = vec![UNMAPPED; 26 * 26];
        for (index, region) in config.regions.iter().enumerate() {
            for country in &region.countries {
                if let Some(slot) = country_slot(country.as_bytes()) {
                    country_regions[slot] = index as u16;
                }
            }
        }
        let database = match &config.geo.database {
            Some(path) => Some(open_database(path)?),
            None => None,
        };
        Ok(GeoResolver {
            database,
            region_names,
            country_regions,
            fallback: RegionId(fallback as u16),
        })
    }

    /// The region of a client address (the fallback region when it cannot be placed).
    pub fn region_of(&self, ip: IpAddr) -> RegionId {
        match self.country_of(ip).and_then(|code| country_slot(&code)) {
            Some(slot) => match self.country_regions[slot] {
                UNMAPPED => self.fallback,
                index => RegionId(index),
            },
            None => self.fallback,
        }
    }

    /// The ISO country code the database gives for `ip`, upper case; `None` when unknown.
    pub fn country_of(&self, ip: IpAddr) -> Option<[u8; 2]> {
        let database = self.database.as_ref()?;
        let ip = ip.to_canonical();
        if ip.is_ipv6() && database.reader.metadata.ip_version == 4 {
            return None;
        }
        let lookup = database.reader.lookup(ip).ok()?;
        if !lookup.has_data() {
            return None;
        }
        let code: Option<&str> = match database.schema {
            CountrySchema::GeoIp2 => lookup
                .decode_path::<&str>(&GEOIP2_COUNTRY)
                .ok()
                .flatten()
                .or_else(|| {
                    lookup
                        .decode_path::<&str>(&GEOIP2_REGISTERED)
                        .ok()
                        .flatten()
                }),
            CountrySchema::Flat => lookup.decode_path::<&str>(&FLAT_COUNTRY).ok().flatten(),
        };
        match code?.as_bytes() {
            &[a, b] if a.is_ascii_alphabetic() && b.is_ascii_alphabetic() => {
                Some([a.to_ascii_uppercase(), b.to_ascii_uppercase()])
            }
            _ => None,
        }
    }

    /// Name of a region.
    pub fn name(&self, region: RegionId) -> &str {
        self.region_names
            .get(usize::from(region.0))
            .map_or("unknown", String::as_str)
    }

    /// The index of a configured region by name.
    pub fn region_id(&self, name: &str) -> Option<RegionId> {
        self.region_names
            .iter()
            .position(|n| n == name)
            .map(|i| RegionId(i as u16))
    }

    /// The configured region names, indexed by [`RegionId`].
    pub fn region_names(&self) -> &[String] {
        &self.region_names
    }

    pub fn fallback(&self) -> RegionId {
        self.fallback
    }

    /// The detected schema; `None` without a database.
    pub fn schema(&self) -> Option<CountrySchema> {
        self.database.as_ref().map(|d| d.schema)
    }

    /// `database_type` from the database's metadata; `None` without a database.
    pub fn database_type(&self) -> Option<&str> {
        self.database
            .as_ref()
            .map(|d| d.reader.metadata.database_type.as_str())
    }
}

fn country_slot(code: &[u8]) -> Option<usize> {
    match code {
        &[a, b] if a.is_ascii_uppercase() && b.is_ascii_uppercase() => {
            Some(usize::from(a - b'A') * 26 + usize::from(b - b'A'))
        }
        _ => None,
    }
}

fn open_database(path: &Path) -> Result<Database, ProxyError> {
    let fail = |reason: String| ProxyError::GeoDatabase {
        path: PathBuf::from(path),
        reason,
    };
    let bytes = std::fs::read(path).map_err(|e| fail(format!("cannot read the file: {e}")))?;
    {
        let borrowed = Reader::from_source(bytes.as_slice()).map_err(|e| {
            fail(format!(
                "not a valid MaxMind DB (corrupt or truncated metadata): {e}"
            ))
        })?;
        // The reader can panic on some corrupt trees (arithmetic on bad pointers): contain that
        // here, at start, so it becomes an error instead of a crash.
        let checked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            check_structure(&borrowed, &bytes)
        }));
        match checked {
            Ok(Ok(())) => {}
            Ok(Err(reason)) => return Err(fail(format!("corrupt database: {reason}"))),
            Err(_) => {
                return Err(fail(
                    "corrupt database: its search tree or data pointers are invalid".to_string(),
                ))
            }
        }
    }
    let reader = Reader::from_source(bytes).map_err(|e| {
        fail(format!(
            "not a valid MaxMind DB (corrupt or truncated metadata): {e}"
        ))
    })?;
    let schema = detect_schema(&reader).map_err(fail)?;
    Ok(Database { reader, schema })
}

/// Checks what lookups rely on: the metadata, that the search tree fits in the file, the data
/// section separator, every node of the tree (no cycles, no pointer outside the file), and that
/// every record a network points to decodes. (Like the reader's own `verify`, minus its
/// insistence on a non-empty description, which real flat databases lack.)
fn check_structure(reader: &Reader<&[u8]>, bytes: &[u8]) -> Result<(), String> {
    let metadata = &reader.metadata;
    if metadata.binary_format_major_version != 2 {
        return Err(format!(
            "binary format version {} (expected 2)",
            metadata.binary_format_major_version
        ));
    }
    if metadata.ip_version != 4 && metadata.ip_version != 6 {
        return Err(format!(
            "ip_version {} (expected 4 or 6)",
            metadata.ip_version
        ));
    }
    // The reader indexes the search tree without bounds checks of its own: make sure the tree
    // the metadata describes fits in the file before anything walks it.
    let tree_bytes =
        usize::try_from(u64::from(metadata.node_count) * u64::from(metadata.record_size) / 4)
            .map_err(|_| "the search tree is larger than memory".to_string())?;
    let separator = bytes.get(tree_bytes..tree_bytes.saturating_add(16));
    if metadata.node_count == 0 || separator.is_none() {
        return Err(format!(
            "its search tree ({} nodes of {} bits) does not fit in the {}-byte file",
            metadata.node_count,
            metadata.record_size,
            bytes.len()
        ));
    }
    if separator.is_some_and(|s| s.iter().any(|&b| b != 0)) {
        return Err("the data section separator is missing (wrong node count?)".to_string());
    }
    let max_networks = (metadata.node_count as usize).saturating_mul(3);
    let mut decoded = std::collections::HashSet::new();
    let networks = reader
        .networks(WithinOptions::default().include_networks_without_data())
        .map_err(|e| e.to_string())?;
    for (count, lookup) in networks.enumerate() {
        if count > max_networks {
            return Err("the search tree has a cycle".to_string());
        }
        let lookup = lookup.map_err(|e| e.to_string())?;
        if let Some(offset) = lookup.offset() {
            if decoded.insert(offset) {
                lookup
                    .decode::<serde::de::IgnoredAny>()
                    .map_err(|e| e.to_string())?;
            }
        }
    }
    Ok(())
}

/// Looks at the first records that carry data and picks the schema whose country field they
/// have. A database with neither (e.g. an ASN database) is not a country database.
fn detect_schema(reader: &Reader<Vec<u8>>) -> Result<CountrySchema, String> {
    let database_type = &reader.metadata.database_type;
    let networks = reader
        .networks(WithinOptions::default())
        .map_err(|e| format!("cannot iterate the database's networks: {e}"))?;
    let (mut geoip2, mut flat) = (0usize, 0usize);
    for lookup in networks.take(SCHEMA_PROBE_NETWORKS) {
        let lookup = lookup.map_err(|e| format!("corrupt database: {e}"))?;
        let has =
            |path: &[PathElement<'_>]| matches!(lookup.decode_path::<&str>(path), Ok(Some(_)));
        if has(&GEOIP2_COUNTRY) || has(&GEOIP2_REGISTERED) {
            geoip2 += 1;
        }
        if has(&FLAT_COUNTRY) {
            flat += 1;
        }
    }
    if geoip2 == 0 && flat == 0 {
        return Err(format!(
            "unsupported database type `{database_type}`: its records have neither `country.iso_code` \
             (GeoIP2/GeoLite2 Country or City) nor `country_code`; a country database is needed"
        ));
    }
    Ok(if geoip2 >= flat {
        CountrySchema::GeoIp2
    } else {
        CountrySchema::Flat
    })
}

#[cfg(test)]
mod tests;
