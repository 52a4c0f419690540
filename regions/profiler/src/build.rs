//! `build`: samples in, a learned model out — the steps in order, each in its own module.

use std::collections::{HashMap, HashSet};

use ndarray::Array2;

use crate::fit::{self, ScoreSet};
use crate::identity::{self, Identity};
use crate::naming::{self, valid_profile_name, Word, RESERVED_PROFILES};
use crate::params::{BuildParams, ANOMALY_FACTOR, MAX_K};
use crate::sample;
use crate::scaling::{to_f32, Scaling};
use crate::{BuildError, KScore, LearnedModel, LearnedProfile, NameReason, Samples};

/// The anomaly distance never falls below this (scaled units²): with every fit point on its
/// centroid the quantile is 0, and a model must still have a positive threshold.
pub const MIN_ANOMALY_DISTANCE: f32 = 1e-6;

/// Learns profiles from `samples`; see the crate documentation for the steps and the criteria.
pub fn build(
    samples: Samples<'_>,
    feature_names: &[&str],
    previous: Option<&LearnedModel>,
    params: &BuildParams,
) -> Result<LearnedModel, BuildError> {
    // 1. Validate: shape, parameters, enough users, the previous model; finiteness is checked in
    //    the standardisation pass.
    let Samples { dim, features } = samples;
    if dim == 0 {
        return Err(BuildError::BadParams(
            "samples.dim is 0; every sample needs at least one feature".into(),
        ));
    }
    if feature_names.len() != dim {
        return Err(BuildError::WrongDimension {
            what: "feature_names",
            expected: dim,
            found: feature_names.len(),
        });
    }
    if features.len() % dim != 0 {
        return Err(BuildError::RaggedSamples {
            len: features.len(),
            dim,
        });
    }
    params.validate()?;
    let users = features.len() / dim;
    if users < params.min_users {
        return Err(BuildError::TooFewUsers {
            found: users,
            min: params.min_users,
        });
    }
    let checked = params.check(users)?;
    let old = match previous {
        Some(p) => check_previous(p, dim)?,
        None => Vec::new(),
    };
    let first_fresh_id = previous.map_or(1, |p| p.next_id);

    // 2. Standardise (one pass, f64 accumulators, rejects non-finite values).
    let scaling = Scaling::measure(dim, features)?;

    // 3. Fit: a seeded uniform subsample in f64 (the only copy of sample data), k-means per k,
    //    k chosen by the highest mean silhouette on the scoring subsample (ties: smaller k).
    let fit_index = sample::choose(
        users,
        params.max_fit_points,
        &mut sample::stream(params.seed, sample::FIT_SUBSAMPLE),
    );
    let fit_points = fit_index.len();
    let fit = Array2::from_shape_fn((fit_points, dim), |(i, d)| {
        (f64::from(features[fit_index[i] * dim + d]) - scaling.mean[d]) / scaling.scale[d]
    });
    drop(fit_index);
    let score_index = sample::choose(
        fit_points,
        params.score_points,
        &mut sample::stream(params.seed, sample::SCORE_SUBSAMPLE),
    );
    let score = ScoreSet::new(Array2::from_shape_fn((score_index.len(), dim), |(i, d)| {
        fit[[score_index[i], d]]
    }));
    let mut k_scores = Vec::with_capacity(checked.ks.len());
    let mut best: Option<(f64, Array2<f64>)> = None;
    for &k in &checked.ks {
        let centroids = fit::kmeans(fit.view(), k, params.seed)?;
        let silhouette = score.silhouette(centroids.view());
        k_scores.push(KScore { k, silhouette });
        if best.as_ref().is_none_or(|(s, _)| silhouette > *s) {
            best = Some((silhouette, centroids));
        }
    }
    drop(score);
    let Some((_, chosen)) = best else {
        return Err(BuildError::BadParams("no k to try".into()));
    };

    // 4. Refine (exact means), drop clusters below 1 - q of the fit points, and set the anomaly
    //    distance: ANOMALY_FACTOR × the q-quantile of the fit points' nearest squared distances.
    let q = params.anomaly_quantile;
    let mut refined = fit::refine(fit.view(), chosen.view(), 1.0 - q);
    let anomaly_distance = to_f32(ANOMALY_FACTOR * fit::quantile(&mut refined.fit_distances, q))
        .max(MIN_ANOMALY_DISTANCE);

    // 5. Identity against the previous model, in the new scaled space.
    let old_centers = Array2::from_shape_fn((old.len(), dim), |(i, d)| {
        (f64::from(old[i].center_raw[d]) - scaling.mean[d]) / scaling.scale[d]
    });
    let old_ids: Vec<u32> = old.iter().map(|p| p.id).collect();
    let identities = identity::identify(
        fit.view(),
        refined.centroids.view(),
        old_centers.view(),
        &old_ids,
    );
    drop(fit);

    // Fresh ids go to the larger new profiles first.
    let kn = refined.centroids.nrows();
    let mut fresh: Vec<usize> = (0..kn).filter(|&j| identities[j].kept.is_none()).collect();
    fresh.sort_by_key(|&j| (std::cmp::Reverse(refined.members[j]), j));
    let mut ids = vec![0u32; kn];
    let mut next_id = first_fresh_id;
    for &j in &fresh {
        ids[j] = next_id;
        next_id = next_id.checked_add(1).ok_or_else(|| {
            BuildError::BadPrevious(format!(
                "next_id {first_fresh_id} leaves no room for {} new profile ids",
                fresh.len()
            ))
        })?;
    }
    for (j, identity) in identities.iter().enumerate() {
        if let Some(i) = identity.kept {
            ids[j] = old[i].id;
        }
    }

    // 6. Names: kept profiles keep theirs; the others, by increasing id, spell their strongest
    //    features, made unique.
    let z_of = |j: usize| -> Vec<f64> {
        (0..dim)
            .map(|d| {
                if scaling.flat[d] {
                    0.0
                } else {
                    let raw = scaling.to_raw(d, refined.centroids[[j, d]]);
                    (raw - scaling.mean[d]) / scaling.std[d]
                }
            })
            .collect()
    };
    let reason = |j: usize, z: &[f64], word: &Word| NameReason {
        feature: feature_names[word.dim].to_string(),
        value: to_f32(scaling.to_raw(word.dim, refined.centroids[[j, word.dim]])),
        population_mean: to_f32(scaling.mean[word.dim]),
        z: to_f32(z[word.dim]),
        word: word.word.clone(),
    };
    let mut taken: HashSet<String> = identities
        .iter()
        .filter_map(|id| id.kept.map(|i| old[i].name.clone()))
        .collect();
    let mut names: Vec<String> = vec![String::new(); kn];
    let mut reasons: Vec<Vec<NameReason>> = vec![Vec::new(); kn];
    for (j, identity) in identities.iter().enumerate() {
        if let Some(i) = identity.kept {
            let z = z_of(j);
            names[j] = old[i].name.clone();
            // The old name's words, with today's numbers.
            reasons[j] = old[i]
                .reasons
                .iter()
                .filter_map(|r| {
                    let dim = feature_names.iter().position(|f| *f == r.feature)?;
                    let word = Word {
                        dim,
                        word: r.word.clone(),
                        z: z[dim],
                    };
                    Some(reason(j, &z, &word))
                })
                .collect();
        }
    }
    let mut by_id = fresh.clone();
    by_id.sort_by_key(|&j| ids[j]);
    for j in by_id {
        let z = z_of(j);
        let words = naming::words(feature_names, &z);
        names[j] = naming::unique(&naming::base_name(&words), &mut taken);
        reasons[j] = words.iter().map(|w| reason(j, &z, w)).collect();
    }

    let mut profiles: Vec<LearnedProfile> = identities
        .into_iter()
        .enumerate()
        .map(|(j, Identity { origin, .. })| LearnedProfile {
            id: ids[j],
            name: std::mem::take(&mut names[j]),
            center: (0..dim)
                .map(|d| to_f32(refined.centroids[[j, d]]))
                .collect(),
            center_raw: (0..dim)
                .map(|d| to_f32(scaling.to_raw(d, refined.centroids[[j, d]])))
                .collect(),
            population: 0,
            reasons: std::mem::take(&mut reasons[j]),
            origin,
        })
        .collect();
    profiles.sort_by_key(|p| p.id);
    let mut model = LearnedModel {
        mean: scaling.mean.iter().map(|&m| m as f32).collect(),
        scale: scaling.scale.iter().map(|&s| s as f32).collect(),
        profiles,
        anomaly_distance,
        next_id,
        k_scores,
        users,
        fit_points,
        anomalous_users: 0,
    };

    // Populations: one pass over every sample with the model's own assignment, so they agree
    // with `LearnedModel::nearest` exactly.
    let mut population = vec![0usize; model.profiles.len()];
    let mut anomalous = 0usize;
    let mut buf = vec![0.0f64; dim];
    for row in features.chunks_exact(dim) {
        match model.nearest_with(row, &mut buf).profile {
            Some(i) => population[i] += 1,
            None => anomalous += 1,
        }
    }
    for (p, n) in model.profiles.iter_mut().zip(population) {
        p.population = n;
    }
    model.anomalous_users = anomalous;
    Ok(model)
}

/// The previous model's profiles, after checking they can anchor identities in `dim` features.
fn check_previous(previous: &LearnedModel, dim: usize) -> Result<Vec<&LearnedProfile>, BuildError> {
    let bad = |s: String| Err(BuildError::BadPrevious(s));
    if previous.profiles.len() > MAX_K {
        return bad(format!(
            "{} profiles, at most {MAX_K} are allowed",
            previous.profiles.len()
        ));
    }
    let mut ids = HashMap::new();
    let mut names = HashSet::new();
    for p in &previous.profiles {
        if p.center_raw.len() != dim {
            return Err(BuildError::WrongDimension {
                what: "previous model profile center_raw",
                expected: dim,
                found: p.center_raw.len(),
            });
        }
        if p.center_raw.iter().any(|v| !v.is_finite()) {
            return bad(format!("profile {} has a non-finite center_raw", p.id));
        }
        if ids.insert(p.id, ()).is_some() {
            return bad(format!("profile id {} appears twice", p.id));
        }
        if p.id >= previous.next_id {
            return bad(format!(
                "profile id {} is not below next_id {}",
                p.id, previous.next_id
            ));
        }
        if !valid_profile_name(&p.name) || RESERVED_PROFILES.contains(&p.name.as_str()) {
            return bad(format!("profile name `{}` is reserved or invalid", p.name));
        }
        if !names.insert(p.name.as_str()) {
            return bad(format!("profile name `{}` appears twice", p.name));
        }
    }
    Ok(previous.profiles.iter().collect())
}
