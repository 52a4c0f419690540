//! Where a learned profile model goes when the learning service publishes it: each profile is
//! mapped to the operator's personas (`prescale_regions::personas::map_profiles`) and takes their
//! settings; the model then goes to the region's proxies over QUIC, to the NDJSON ingest (so
//! ingested users are assigned exactly as proxied ones), and the settings to the live driver
//! (revenue weights and resources per request for the planner).
//!
//! Invariants: every consumer gets the same model (settings included); a profile the config
//! names in `[[profiles]]` keeps the config's revenue weight in the planner (operator intent wins,
//! as on the proxies); the stored copy of a model is the learned one, the published one carries the
//! persona settings as they were at publishing (a persona change republishes the model in force
//! as a new version, `LearningService::republish`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use prescale_gossip::model::ProfileModel;
use prescale_gossip::ModelUpdate;
use prescale_gossip::SketchReceiver;
use prescale_regions::brain::Resources;
use prescale_regions::ingest::StoreSink;
use prescale_regions::learning::ModelPublisher;
use prescale_regions::live::{LiveShared, RuntimeProfile};
use prescale_regions::personas::{map_profiles, Persona, PersonaStore, ProfileCentroid};

pub struct ModelFanOut {
    pub receiver: Arc<SketchReceiver<StoreSink>>,
    pub ingest: Arc<crate::ingest_cmd::IngestService>,
    pub live: Option<Arc<LiveShared>>,
    /// The forecaster's database, where personas are kept.
    pub database: PathBuf,
    /// Profiles the config's `[[profiles]]` names: their revenue weight stays the config's.
    pub configured: Vec<String>,
}

impl ModelPublisher for ModelFanOut {
    fn publish(&self, mut update: ModelUpdate) -> Result<ProfileModel, String> {
        let personas = PersonaStore::open(&self.database)
            .and_then(|store| store.current())
            .map_err(|e| format!("personas: {e}"))?;
        let runtime = apply_personas(&mut update.model, &personas, &self.configured);
        update
            .model
            .validate()
            .map_err(|e| format!("model with persona settings: {e}"))?;
        if let Err(e) = self.ingest.install_model(update.model.clone()) {
            tracing::warn!(error = %e, "the NDJSON ingest refused the profile model");
        }
        if let Some(live) = &self.live {
            live.set_profile_settings(runtime);
        }
        let sent = update.model.clone();
        self.receiver
            .publish_model(update)
            .map_err(|e| e.to_string())?;
        Ok(sent)
    }
}

/// Sets each centroid's persona settings and returns what the planner takes from them.
fn apply_personas(
    model: &mut ProfileModel,
    personas: &[Persona],
    configured: &[String],
) -> BTreeMap<String, RuntimeProfile> {
    let raw: Vec<Vec<f32>> = model
        .centroids
        .iter()
        .map(|c| {
            c.center
                .iter()
                .zip(model.scale.iter().zip(&model.mean))
                .map(|(x, (scale, mean))| x * scale + mean)
                .collect()
        })
        .collect();
    let centroids: Vec<ProfileCentroid<'_>> = model
        .centroids
        .iter()
        .zip(&raw)
        .map(|(c, raw)| ProfileCentroid {
            name: &c.name,
            center_raw: raw,
        })
        .collect();
    let bindings = map_profiles(personas, &centroids);
    let mut runtime = BTreeMap::new();
    for centroid in &mut model.centroids {
        let binding = bindings.iter().find(|b| b.profile == centroid.name);
        centroid.settings = binding.map(|b| b.settings.clone());
        let Some(binding) = binding else { continue };
        let persona = personas.iter().find(|p| p.name == binding.persona);
        let resources = persona.map(|p| Resources {
            cpu_cores: p.resources.cpu_share,
            memory_mb: p.resources.memory_mb,
            network_mbps: p.resources.network_mbps,
            io_ops: p.resources.io_ops,
        });
        let revenue_weight = (!configured.contains(&centroid.name))
            .then(|| binding.settings.revenue_weight_milli as f64 / 1000.0);
        runtime.insert(
            centroid.name.clone(),
            RuntimeProfile {
                revenue_weight,
                resources,
            },
        );
    }
    runtime
}

#[cfg(test)]
mod tests {
    use super::*;
    use prescale_gossip::model::{Centroid, ProfileId, FEATURE_DIM};

    fn persona(json: &str) -> Persona {
        let known = prescale_regions::personas::Known {
            regions: vec!["local".into()],
            fleets: vec!["web".into(), "batch".into()],
        };
        Persona::from_json(json.as_bytes(), None, &known).expect("persona")
    }

    #[test]
    fn profiles_take_their_personas_settings_and_resources() {
        let mut model = ProfileModel {
            format: ProfileModel::FORMAT,
            version: 1,
            built_at: 0,
            mean: vec![0.0; FEATURE_DIM],
            scale: vec![1.0; FEATURE_DIM],
            centroids: vec![
                Centroid {
                    id: ProfileId(1),
                    name: "scheduled-automated".into(),
                    center: vec![0.1; FEATURE_DIM],
                    settings: None,
                },
                Centroid {
                    id: ProfileId(2),
                    name: "heavy-api".into(),
                    center: vec![0.5; FEATURE_DIM],
                    settings: None,
                },
            ],
            anomaly_distance: Some(10.0),
        };
        let batch = persona(
            r#"{"name":"batch-jobs","resources":{"cpu_share":0.2,"memory_mb":64,"network_mbps":1,"io_ops":2},
                "traffic":{"peak_hours_utc":[1,2],"regions":[],"access":["automation"]},"tags":[],
                "revenue_weight":0.25,"priority":20,"fleet":"batch","match_profiles":["scheduled-*"]}"#,
        );
        let runtime = apply_personas(&mut model, &[batch], &["heavy-api".to_string()]);
        let settings = model.centroids[0].settings.as_ref().expect("settings");
        assert_eq!(settings.persona, "batch-jobs");
        assert_eq!(settings.fleet.as_deref(), Some("batch"));
        assert_eq!(settings.revenue_weight_milli, 250);
        let scheduled = &runtime["scheduled-automated"];
        assert_eq!(scheduled.revenue_weight, Some(0.25));
        assert_eq!(scheduled.resources.map(|r| r.cpu_cores), Some(0.2));
        // The only persona is the nearest for every profile; a configured profile keeps the
        // config's revenue weight in the planner.
        assert_eq!(runtime["heavy-api"].revenue_weight, None);
        model.validate().expect("valid with settings");
    }

    #[test]
    fn without_personas_nothing_is_set() {
        let mut model = ProfileModel {
            format: ProfileModel::FORMAT,
            version: 1,
            built_at: 0,
            mean: vec![0.0; FEATURE_DIM],
            scale: vec![1.0; FEATURE_DIM],
            centroids: vec![Centroid {
                id: ProfileId(1),
                name: "typical".into(),
                center: vec![0.0; FEATURE_DIM],
                settings: None,
            }],
            anomaly_distance: None,
        };
        assert!(apply_personas(&mut model, &[], &[]).is_empty());
        assert!(model.centroids[0].settings.is_none());
    }
}
