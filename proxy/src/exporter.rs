//! The sketch exporter: every interval (aligned to the wall clock, so intervals nest in
//! minutes) it turns the meters' delta into a [`Sketch`] — counts, latency histogram, unique-user
//! HyperLogLog and a sample of users' feature vectors per (profile, origin region, fleet) — and
//! hands it to the QUIC sender, which spools it (split into several sketches when one would
//! exceed the frame limit) until the forecaster acknowledges it. Profile
//! models and plans pushed back by the forecaster are installed and applied here.
//!
//! Invariants: every request recorded in the meters lands in exactly one sketch (the delta of
//! consecutive cumulative snapshots); sketches carry hashed user keys only; when the forecaster
//! goes quiet or away, the last model and plan stay in force.

use std::sync::Arc;
use std::time::Duration;

use prescale_gossip::{EntryKey, Sketch, SketchSender};
use tokio::sync::watch;

use crate::dataplane::DataPlane;
use crate::meters::{MeterKey, MeterSnapshot};
use crate::plan::PlanError;

/// Builds the sketch of `[start_ms, end_ms)` from the meters' delta and interval users.
pub fn build_sketch(
    plane: &DataPlane,
    delta: &MeterSnapshot,
    start_ms: u64,
    end_ms: u64,
) -> Sketch {
    let mut sketch = Sketch::new(
        plane.node_id.clone(),
        plane.region.clone(),
        start_ms,
        end_ms,
    );
    let now_secs = end_ms / 1000;
    for entry in &delta.entries {
        let key = entry_key(plane, entry.key);
        let stats = sketch.entry(key);
        stats.requests = entry.counts.requests;
        stats.errors = entry.counts.errors.min(entry.counts.requests);
        stats.bytes_in = entry.counts.bytes_in;
        stats.bytes_out = entry.counts.bytes_out;
        if let Err(e) = stats.set_latency(&entry.histogram()) {
            tracing::warn!(error = %e, "latency histogram left out of the sketch");
        }
    }
    for users in plane.meters.take_users() {
        // Users of a key whose requests are still in flight at the boundary are counted with the
        // key once it has requests; a key without requests in this interval gets none.
        if !delta.entries.iter().any(|e| e.key == users.key) {
            continue;
        }
        let stats = sketch.entry(entry_key(plane, users.key));
        stats.users = users.unique;
        for user in users.sample {
            if let Some(features) = plane.user_features(user, now_secs) {
                stats.sample.offer(user, features);
            }
        }
    }
    sketch
}

fn entry_key(plane: &DataPlane, key: MeterKey) -> EntryKey {
    let (profile, origin_region, fleet) = plane.meter_labels(key);
    EntryKey {
        profile,
        origin_region,
        fleet,
    }
}

/// Runs until `shutdown`: one sketch per `interval`, then a last one for the partial interval.
pub async fn run(
    plane: Arc<DataPlane>,
    sender: Arc<SketchSender>,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let clock = plane.node_clock();
    let interval_ms = interval.as_millis().max(1) as u64;
    let mut previous = plane.meters.snapshot();
    let mut start_ms = clock.now_ms();
    let mut models = sender.models();
    let mut models_open = true;
    let mut plans = sender.plans();
    let mut plans_open = true;
    // A model and a plan that came before this task started (a watch receiver only reports
    // changes after it was made).
    install_latest_model(&plane, &models);
    apply_latest_plan(&plane, &mut plans);
    loop {
        let now = clock.now_ms();
        let boundary = (now / interval_ms + 1) * interval_ms;
        let stop = tokio::select! {
            _ = tokio::time::sleep(clock.real_until(boundary)) => false,
            _ = shutdown.changed() => true,
            changed = models.changed(), if models_open => {
                match changed {
                    Ok(()) => install_latest_model(&plane, &models),
                    // The sender is gone: no more models will come (and `changed` would return
                    // at once forever).
                    Err(_) => models_open = false,
                }
                continue;
            }
            changed = plans.changed(), if plans_open => {
                match changed {
                    Ok(()) => apply_latest_plan(&plane, &mut plans),
                    // No more plans: the last one applied stays in force.
                    Err(_) => plans_open = false,
                }
                continue;
            }
        };
        let end_ms = if stop { clock.now_ms() } else { boundary };
        let current = plane.meters.snapshot();
        let delta = current.delta(&previous);
        // Sent even when nothing was served: an empty sketch tells the forecaster this node has
        // reported through `end_ms`, so a quiet interval counts as zero demand, not missing data.
        let sketch = build_sketch(&plane, &delta, start_ms, end_ms.max(start_ms + 1));
        let submit_to = Arc::clone(&sender);
        let spooled = match tokio::task::spawn_blocking(move || submit_to.submit_interval(sketch))
            .await
        {
            Ok(Ok(sequences)) => {
                tracing::debug!(?sequences, "sketch spooled");
                true
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "sketch could not be spooled; the next one will carry its counts");
                false
            }
            Err(e) => {
                tracing::error!(error = %e, "sketch spooling task failed; the next one will carry its counts");
                false
            }
        };
        if spooled {
            previous = current;
            start_ms = end_ms;
        }
        if stop {
            break;
        }
    }
}

fn install_latest_model(
    plane: &DataPlane,
    models: &watch::Receiver<Option<Arc<prescale_gossip::ModelUpdate>>>,
) {
    let update = models.borrow().clone();
    let Some(update) = update else { return };
    match plane.install_model(update.model.clone()) {
        Ok(swap) => tracing::info!(?swap, "profile model from the forecaster"),
        Err(e) => tracing::warn!(error = %e, "profile model from the forecaster rejected"),
    }
}

fn apply_latest_plan(
    plane: &DataPlane,
    plans: &mut watch::Receiver<Option<Arc<prescale_gossip::PlanUpdate>>>,
) {
    let update = plans.borrow_and_update().clone();
    let Some(plan) = update else { return };
    match plane.apply_plan(&plan) {
        Ok(applied) => {
            tracing::info!(
                version = applied.version,
                issued_at_ms = applied.issued_at_ms,
                fleets = %applied,
                "plan from the forecaster applied"
            );
            if !applied.unknown_fleets.is_empty() {
                tracing::warn!(
                    version = applied.version,
                    fleets = %applied.unknown_fleets.join(", "),
                    "plan names fleets this node does not have; their parts were ignored"
                );
            }
        }
        Err(e @ PlanError::NotNewer { .. }) => {
            tracing::debug!(error = %e, "plan from the forecaster not applied")
        }
        Err(e) => tracing::warn!(error = %e, "plan from the forecaster not applied"),
    }
}
