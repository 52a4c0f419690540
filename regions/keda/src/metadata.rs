//! A ScaledObject's trigger metadata as prescale reads it: which fleet of which region the
//! ScaledObject scales. `region` and `fleet` are required; KEDA's own trigger keys (it passes
//! every key of the trigger's metadata, `scalerAddress` included) are let through; any other
//! key is an error naming it, so a typo is not silently ignored.

use std::collections::HashMap;

/// Keys of the trigger metadata that KEDA itself reads and passes on with the rest.
pub const KEDA_KEYS: [&str; 3] = ["scalerAddress", "enableTLS", "unsafeSsl"];
/// The keys prescale reads.
pub const PRESCALE_KEYS: [&str; 2] = ["region", "fleet"];

/// The fleet a ScaledObject scales.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct FleetRef {
    pub region: String,
    pub fleet: String,
}

impl FleetRef {
    /// The one metric the scaler reports for the fleet: `prescale-<region>-<fleet>`.
    pub fn metric_name(&self) -> String {
        format!("prescale-{}-{}", self.region, self.fleet)
    }
}

/// Trigger metadata prescale cannot use: the key and what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("scalerMetadata.{key}: {message}")]
pub struct MetadataError {
    pub key: String,
    pub message: String,
}

/// Reads the fleet out of a ScaledObject's trigger metadata. Every problem is reported by its
/// key: unknown keys first (in name order, so the answer is the same on every call), then a
/// missing or empty `region` or `fleet`.
pub fn parse(metadata: &HashMap<String, String>) -> Result<FleetRef, MetadataError> {
    let mut unknown: Vec<&String> = metadata
        .keys()
        .filter(|k| !PRESCALE_KEYS.contains(&k.as_str()) && !KEDA_KEYS.contains(&k.as_str()))
        .collect();
    unknown.sort();
    if let Some(key) = unknown.first() {
        return Err(MetadataError {
            key: (*key).clone(),
            message: format!(
                "unknown key; prescale reads `region` and `fleet` (KEDA's own {} are let through)",
                KEDA_KEYS.map(|k| format!("`{k}`")).join(", ")
            ),
        });
    }
    let required = |key: &str| -> Result<String, MetadataError> {
        match metadata.get(key).map(|v| v.trim()) {
            Some(value) if !value.is_empty() => Ok(value.to_string()),
            Some(_) => Err(MetadataError {
                key: key.to_string(),
                message: "must not be empty".to_string(),
            }),
            None => Err(MetadataError {
                key: key.to_string(),
                message: format!(
                    "required: the {key} of the fleet to scale, as in prescale's config"
                ),
            }),
        }
    };
    Ok(FleetRef {
        region: required("region")?,
        fleet: required("fleet")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn region_and_fleet_name_the_fleet() {
        let fleet = parse(&map(&[
            ("region", "eu"),
            ("fleet", "web"),
            ("scalerAddress", "prescale-forecaster:7500"),
            ("enableTLS", "true"),
        ]))
        .expect("valid");
        assert_eq!(
            fleet,
            FleetRef {
                region: "eu".into(),
                fleet: "web".into()
            }
        );
        assert_eq!(fleet.metric_name(), "prescale-eu-web");
    }

    #[test]
    fn a_missing_key_is_named() {
        let e = parse(&map(&[("region", "eu")])).expect_err("no fleet");
        assert_eq!(e.key, "fleet");
        assert!(
            e.to_string().starts_with("scalerMetadata.fleet: required"),
            "{e}"
        );
        let e = parse(&map(&[("fleet", "web")])).expect_err("no region");
        assert_eq!(e.key, "region");
    }

    #[test]
    fn an_empty_value_is_named() {
        let e = parse(&map(&[("region", " "), ("fleet", "web")])).expect_err("empty");
        assert_eq!(e.key, "region");
        assert!(e.message.contains("empty"), "{e}");
    }

    #[test]
    fn an_unknown_key_is_named_before_missing_ones() {
        let e =
            parse(&map(&[("fleeet", "web"), ("region", "eu"), ("zone", "a")])).expect_err("typo");
        assert_eq!(e.key, "fleeet");
        assert!(e.message.contains("unknown key"), "{e}");
    }
}
