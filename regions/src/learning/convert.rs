//! The one conversion from the profile builder's [`LearnedModel`] to the [`ProfileModel`]
//! published to proxies.
//!
//! Invariant: what it returns has passed [`ProfileModel::validate`]; each centroid keeps its
//! learned profile's id and name and takes the settings given for it (the persona it was mapped
//! to, or `None`: the config's `[[profiles]]` entry of that name, else the defaults).

use prescale_gossip::model::{Centroid, ProfileId, ProfileModel, ProfileSettings};
use prescale_profiler::LearnedModel;

use super::error::LearningError;

/// `settings[i]` is what `learned.profiles[i]` gets; there must be one per profile.
pub fn to_profile_model(
    learned: &LearnedModel,
    version: u64,
    built_at: u64,
    settings: Vec<Option<ProfileSettings>>,
) -> Result<ProfileModel, LearningError> {
    if settings.len() != learned.profiles.len() {
        return Err(LearningError::SettingsCount {
            given: settings.len(),
            profiles: learned.profiles.len(),
        });
    }
    let centroids = learned
        .profiles
        .iter()
        .zip(settings)
        .map(|(profile, settings)| Centroid {
            id: ProfileId(profile.id),
            name: profile.name.clone(),
            center: profile.center.clone(),
            settings,
        })
        .collect();
    let model = ProfileModel {
        format: ProfileModel::FORMAT,
        version,
        built_at,
        mean: learned.mean.clone(),
        scale: learned.scale.clone(),
        centroids,
        anomaly_distance: Some(learned.anomaly_distance),
    };
    model.validate()?;
    Ok(model)
}

/// Settings for every profile of `learned` when no persona is mapped: all `None`.
pub fn no_settings(learned: &LearnedModel) -> Vec<Option<ProfileSettings>> {
    vec![None; learned.profiles.len()]
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use prescale_gossip::model::{ModelError, FEATURE_DIM};
    use prescale_profiler::{KScore, LearnedProfile, NameReason, Origin};

    /// A two-profile model as the builder would return it.
    pub(crate) fn learned(names: &[&str]) -> LearnedModel {
        let profiles = names
            .iter()
            .enumerate()
            .map(|(i, name)| LearnedProfile {
                id: i as u32 + 1,
                name: name.to_string(),
                center: vec![i as f32; FEATURE_DIM],
                center_raw: vec![0.5 + i as f32; FEATURE_DIM],
                population: 10 * (i + 1),
                reasons: vec![NameReason {
                    feature: "api_share".into(),
                    value: 0.9,
                    population_mean: 0.4,
                    z: 2.5,
                    word: "api".into(),
                }],
                origin: Origin::New,
            })
            .collect();
        LearnedModel {
            mean: vec![0.25; FEATURE_DIM],
            scale: vec![1.5; FEATURE_DIM],
            profiles,
            anomaly_distance: 9.0,
            next_id: names.len() as u32 + 1,
            k_scores: vec![KScore {
                k: names.len(),
                silhouette: 0.7,
            }],
            users: 30,
            fit_points: 30,
            anomalous_users: 1,
        }
    }

    #[test]
    fn converted_model_validates_and_keeps_ids_names_and_scaling() {
        let learned = learned(&["api-writers", "browsers"]);
        let model = to_profile_model(&learned, 7, 1_000, no_settings(&learned)).expect("valid");
        assert_eq!(model.format, ProfileModel::FORMAT);
        assert_eq!(model.version, 7);
        assert_eq!(model.built_at, 1_000);
        assert_eq!(model.mean, learned.mean);
        assert_eq!(model.scale, learned.scale);
        assert_eq!(model.anomaly_distance, Some(9.0));
        let ids: Vec<(u32, &str)> = model
            .centroids
            .iter()
            .map(|c| (c.id.0, c.name.as_str()))
            .collect();
        assert_eq!(ids, vec![(1, "api-writers"), (2, "browsers")]);
        assert_eq!(model.centroids[1].center, learned.profiles[1].center);
        assert!(model.centroids.iter().all(|c| c.settings.is_none()));
    }

    #[test]
    fn settings_go_to_their_profile() {
        let learned = learned(&["a", "b"]);
        let settings = ProfileSettings {
            persona: "buyers".into(),
            revenue_weight_milli: 3_000,
            priority: 200,
            fleet: None,
        };
        let model =
            to_profile_model(&learned, 1, 1, vec![None, Some(settings.clone())]).expect("valid");
        assert_eq!(model.centroids[0].settings, None);
        assert_eq!(model.centroids[1].settings, Some(settings));
        assert!(matches!(
            to_profile_model(&learned, 1, 1, vec![None]),
            Err(LearningError::SettingsCount {
                given: 1,
                profiles: 2
            })
        ));
    }

    #[test]
    fn a_model_that_fails_validation_is_refused() {
        let learned = learned(&["a", "new"]);
        assert!(matches!(
            to_profile_model(&learned, 1, 1, no_settings(&learned)),
            Err(LearningError::Invalid(ModelError::BadName(name))) if name == "new"
        ));
        let mut bad = self::learned(&["a"]);
        bad.scale[3] = 0.0;
        assert!(matches!(
            to_profile_model(&bad, 1, 1, no_settings(&bad)),
            Err(LearningError::Invalid(ModelError::BadScale {
                index: 3,
                ..
            }))
        ));
    }
}
