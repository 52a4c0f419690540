//! Accepted events → sketches. Each event is one request of its user, profiled and routed as the
//! proxy does a request — the feature table updated at the event's time, the assigner's rules and
//! installed model, the profile's route — and counted in the sketch of its minute as the exporter
//! counts a request: requests, errors (status ≥ 500), request bytes, latency, unique users and a
//! sample of the users' features as of the minute's end.
//!
//! Invariants: events are applied in timestamp order (ties in line order), so a user's features
//! see its events in the order they happened; there is one sketch per minute that holds events,
//! its interval exactly that minute (the store files a sketch under the minute its interval
//! starts in); every event lands in exactly one entry of one sketch.

use std::collections::{btree_map, BTreeMap, BTreeSet, HashMap, HashSet};

use hdrhistogram::Histogram;
use http::{HeaderMap, Method};
use prescale_gossip::{EntryKey, EntryStats, Sketch, SketchEntry};

use super::parse::{Event, Origin};
use super::{Ingest, IngestError};
use crate::features::RequestTraits;
use crate::identity::UserKey;
use crate::meters::{HISTOGRAM_MAX_MICROS, HISTOGRAM_SIGFIG};
use crate::profiles::{ProfileIdx, RequestFacts};

/// A batch ready for the store: one sketch per minute, and what it holds.
#[derive(Clone, Debug)]
pub struct Batch {
    /// In minute order; sequences are left to the store (0 here).
    pub sketches: Vec<Sketch>,
    pub summary: BatchSummary,
}

/// What a batch holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct BatchSummary {
    pub events: usize,
    /// Sketches: minutes the events fall in.
    pub minutes: usize,
    /// Distinct users.
    pub users: usize,
}

/// One entry of the minute being filled.
struct EntryAcc {
    requests: u64,
    errors: u64,
    bytes_in: u64,
    latency: Histogram<u64>,
    users: BTreeSet<u64>,
}

impl Ingest {
    /// Profiles, routes and counts `events` (updating the ingest's feature table): the sketches
    /// of the batch. Call only with a batch that passed [`Ingest::parse`] whole.
    pub fn build(&self, mut events: Vec<Event>) -> Result<Batch, IngestError> {
        events.sort_by_key(|e| (e.timestamp, e.line));
        let headers = HeaderMap::new();
        let model_fleets = self.model_fleets();
        let mut routes: HashMap<ProfileIdx, String> = HashMap::new();
        let mut users: HashSet<u64> = HashSet::new();
        let mut sketches = Vec::new();
        let mut minute: Option<u64> = None;
        let mut entries: BTreeMap<EntryKey, EntryAcc> = BTreeMap::new();
        for event in &events {
            let event_minute = event.timestamp / 60 * 60;
            if let Some(current) = minute.filter(|m| *m != event_minute) {
                sketches.push(self.sketch(current, std::mem::take(&mut entries))?);
            }
            minute = Some(event_minute);
            let profile = self.assign(event, &headers);
            let profile_name = self.assigner.name(profile);
            let fleet = match &event.fleet {
                Some(fleet) => fleet.clone(),
                None => match routes.get(&profile) {
                    Some(fleet) => fleet.clone(),
                    None => {
                        let fleet = self.route(&profile_name, &model_fleets)?;
                        routes.insert(profile, fleet.clone());
                        fleet
                    }
                },
            };
            let origin_region = match &event.origin {
                Origin::Region(name) => name.clone(),
                Origin::ClientIp(ip) => self.geo.name(self.geo.region_of(*ip)).to_string(),
            };
            let key = EntryKey {
                profile: profile_name.to_string(),
                origin_region,
                fleet,
            };
            let acc = match entries.entry(key) {
                btree_map::Entry::Occupied(entry) => entry.into_mut(),
                btree_map::Entry::Vacant(entry) => entry.insert(EntryAcc {
                    requests: 0,
                    errors: 0,
                    bytes_in: 0,
                    latency: Histogram::new_with_bounds(1, HISTOGRAM_MAX_MICROS, HISTOGRAM_SIGFIG)
                        .map_err(|e| IngestError::Histogram(e.to_string()))?,
                    users: BTreeSet::new(),
                }),
            };
            acc.requests += 1;
            acc.errors += u64::from(event.status >= 500);
            acc.bytes_in = acc.bytes_in.saturating_add(event.bytes_in);
            if let Some(ms) = event.latency_ms {
                // The meters' range: 1 µs to 60 s, values outside clamped to its ends.
                let micros = (ms * 1000.0)
                    .round()
                    .clamp(1.0, HISTOGRAM_MAX_MICROS as f64);
                acc.latency.saturating_record(micros as u64);
            }
            acc.users.insert(event.user.0);
            users.insert(event.user.0);
        }
        if let Some(current) = minute {
            sketches.push(self.sketch(current, entries)?);
        }
        Ok(Batch {
            summary: BatchSummary {
                events: events.len(),
                minutes: sketches.len(),
                users: users.len(),
            },
            sketches,
        })
    }

    /// The profile of an event's user, as [`crate::dataplane::DataPlane::admit`] picks a
    /// request's: a `GET` of the event's path without headers.
    fn assign(&self, event: &Event, headers: &HeaderMap) -> ProfileIdx {
        let method = Method::GET;
        let facts = RequestFacts {
            method: &method,
            path: &event.path,
            headers,
        };
        match &self.features {
            Some(table) => {
                let traits = RequestTraits::classify(&method, &event.path, headers);
                let outcome = table.on_request(event.user, event.timestamp, traits, |view| {
                    self.assigner.assign_reusing(
                        view.requests(),
                        view.model_answer_this_second(),
                        || view.features(),
                        &facts,
                    )
                });
                table.on_response(event.user, event.bytes_in, 0, event.status >= 500);
                outcome.profile
            }
            None => self.assigner.assign_by_rules(&facts),
        }
    }

    /// The fleet of a profile in the forecaster's region: a `[[routes]]` entry for it, else the
    /// fleet its learned profile's settings name (when the region has it), else the region's
    /// default fleet.
    fn route(
        &self,
        profile: &str,
        model_fleets: &HashMap<String, String>,
    ) -> Result<String, IngestError> {
        let routed = self.config.routes.iter().any(|r| {
            r.profile == profile
                && r.region
                    .as_deref()
                    .is_none_or(|region| region == self.region)
        });
        if !routed {
            if let Some(fleet) = model_fleets.get(profile) {
                return Ok(fleet.clone());
            }
        }
        self.config
            .fleet_for(&self.region, profile)
            .map(|f| f.name.clone())
            .ok_or_else(|| IngestError::NoFleet {
                profile: profile.to_string(),
                region: self.region.clone(),
            })
    }

    /// Profile → fleet from the installed model's settings, for fleets of the region.
    fn model_fleets(&self) -> HashMap<String, String> {
        let Some(model) = self.assigner.model() else {
            return HashMap::new();
        };
        model
            .model
            .centroids
            .iter()
            .filter_map(|c| {
                let fleet = c.settings.as_ref()?.fleet.as_ref()?;
                self.fleets
                    .contains(fleet)
                    .then(|| (c.name.clone(), fleet.clone()))
            })
            .collect()
    }

    /// The sketch of the minute starting at `minute` (unix seconds).
    fn sketch(
        &self,
        minute: u64,
        entries: BTreeMap<EntryKey, EntryAcc>,
    ) -> Result<Sketch, IngestError> {
        let start_ms = minute * 1000;
        let mut sketch = Sketch::new(
            self.node.clone(),
            self.region.clone(),
            start_ms,
            start_ms + 60_000,
        );
        let end_secs = minute + 60;
        for (key, acc) in entries {
            let mut stats = EntryStats {
                requests: acc.requests,
                errors: acc.errors,
                bytes_in: acc.bytes_in,
                ..EntryStats::default()
            };
            stats
                .set_latency(&acc.latency)
                .map_err(|source| IngestError::Sketch { minute, source })?;
            for user in acc.users {
                stats.users.insert(user);
                // As the exporter: the user's features at the end of the sketch's interval.
                let features = self
                    .features
                    .as_ref()
                    .and_then(|table| table.features_of(UserKey(user), end_secs));
                if let Some(features) = features {
                    stats.sample.offer(user, features);
                }
            }
            sketch.entries.push(SketchEntry { key, stats });
        }
        sketch
            .validate(usize::MAX)
            .map_err(|source| IngestError::Sketch { minute, source })?;
        Ok(sketch)
    }
}

#[cfg(test)]
mod tests;
