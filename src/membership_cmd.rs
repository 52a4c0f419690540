//! Wiring of cluster membership into `proxy`, `forecaster` and `up`: start the SWIM member when
//! `[mesh] membership_listen` is set, join the seeds, let forecasters publish their region's
//! totals, and serve `/api/v1/members` and `/api/v1/regions`.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::anyhow;
use prescale_config::Config;
use prescale_gossip::{Membership, MembershipConfig, NodeIdentity, RegionTotals, Role};
use prescale_proxy::admin::{self, AdminRequest, Handler};
use prescale_regions::ingest::StoreSink;

use crate::exit::CliError;

/// Starts this node's member, if configured. Seeds that are this node are skipped.
pub fn start(
    config: &Config,
    role: Role,
    region: &str,
    control: &tokio::runtime::Handle,
) -> Result<Option<Arc<Membership>>, CliError> {
    let Some(mesh) = &config.mesh else {
        return Ok(None);
    };
    let Some(bind) = mesh.membership_listen else {
        return Ok(None);
    };
    let identity = NodeIdentity::load(&mesh.ca, &mesh.cert, &mesh.key).map_err(|e| {
        CliError::input(anyhow!("[mesh]: cannot load the membership identity: {e}"))
    })?;
    let membership = {
        let _guard = control.enter();
        Membership::start(MembershipConfig::new(
            config.node.id.clone(),
            role,
            region,
            bind,
            identity,
        ))
        .map_err(|e| CliError::input(anyhow!("mesh.membership_listen {bind}: {e}")))?
    };
    for seed in mesh.seeds.iter().filter(|s| s.name != config.node.id) {
        if let Err(e) = membership.join(&seed.name, seed.addr) {
            tracing::warn!(seed = %seed.name, error = %e, "cannot join membership seed");
        }
    }
    Ok(Some(Arc::new(membership)))
}

/// Lets the live driver count the region's proxies membership knows alive as live (it then waits
/// for their sketches of a minute, up to the lateness bound, even when they have gone quiet).
pub fn tell_live_driver(membership: &Arc<Membership>, live: &crate::live_cmd::Live, region: &str) {
    let membership = Arc::clone(membership);
    let region = region.to_string();
    live.shared.use_membership(Box::new(move || {
        membership
            .alive(Some(Role::Proxy))
            .into_iter()
            .filter(|m| m.region == region)
            .map(|m| m.name)
            .collect()
    }));
}

/// Every `every`, the forecaster publishes its region's requests per profile over the last
/// complete minute.
pub fn publish_totals(
    membership: Arc<Membership>,
    sink: Arc<StoreSink>,
    node: String,
    region: String,
    every: Duration,
    control: &tokio::runtime::Handle,
) {
    control.spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            let now_ms = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0);
            let to = now_ms / 60_000 * 60;
            let from = to.saturating_sub(60);
            let sink = Arc::clone(&sink);
            let own = region.clone();
            let totals = tokio::task::spawn_blocking(move || {
                let requests = sink.totals_by_profile(&own, from, to)?;
                let proxies = sink
                    .nodes()?
                    .iter()
                    .filter(|n| n.region == own && n.last_seen_ms >= from * 1000)
                    .count() as u32;
                Ok::<_, prescale_regions::Error>((requests, proxies))
            })
            .await;
            let (mut requests, proxies) = match totals {
                Ok(Ok(totals)) => totals,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "region totals not computed");
                    continue;
                }
                Err(_) => continue,
            };
            // One datagram: the busiest profiles first, as many as fit.
            requests.truncate(prescale_gossip::membership::MAX_TOTALS_PROFILES.min(16));
            let totals = RegionTotals {
                region: region.clone(),
                forecaster: node.clone(),
                version: now_ms,
                period_start_ms: from * 1000,
                requests,
                proxies,
            };
            if let Err(e) = membership.publish_totals(totals) {
                tracing::warn!(error = %e, "region totals not published");
            }
        }
    });
}

/// Membership counters for `/metrics`.
pub fn metrics(membership: &Arc<Membership>) -> admin::MetricsSource {
    let membership = Arc::clone(membership);
    Arc::new(move |out: &mut String| {
        let s = membership.stats();
        let alive = membership.members().iter().filter(|m| m.alive).count();
        let counters = [
            (
                "prescale_membership_packets_in_total",
                "Membership datagrams received.",
                s.packets_in,
            ),
            (
                "prescale_membership_packets_out_total",
                "Membership datagrams sent.",
                s.packets_out,
            ),
            (
                "prescale_membership_bad_packets_total",
                "Membership datagrams that could not be decoded.",
                s.bad_packets,
            ),
            (
                "prescale_membership_wrong_identity_total",
                "Membership datagrams claiming a name, role or region their connection's certificate does not carry.",
                s.wrong_identity,
            ),
            (
                "prescale_membership_forged_updates_total",
                "Updates about other members refused (irrefutable incarnation, identity ahead of the clock, role or region against the certificate).",
                s.forged_updates,
            ),
            (
                "prescale_membership_forged_totals_total",
                "Region totals refused: from a member of another region, or ahead of the clock.",
                s.forged_totals,
            ),
            (
                "prescale_membership_rate_limited_total",
                "Membership datagrams dropped because their peer certificate exceeded its rate.",
                s.rate_limited,
            ),
            (
                "prescale_membership_queue_full_total",
                "Membership datagrams dropped because the queue to the agent was full.",
                s.queue_full,
            ),
        ];
        for (name, help, value) in counters {
            admin::write_metric(out, name, "counter", help, value);
        }
        admin::write_metric(
            out,
            "prescale_membership_alive_members",
            "gauge",
            "Other members seen alive.",
            alive,
        );
    })
}

/// `/api/v1/members` and `/api/v1/regions`.
pub fn handlers(membership: &Arc<Membership>) -> Vec<Handler> {
    let membership = Arc::clone(membership);
    vec![Arc::new(move |request: &AdminRequest| {
        if request.method != http::Method::GET {
            return None;
        }
        match request.path.as_str() {
            "/api/v1/members" => {
                let members: Vec<_> = membership
                    .members()
                    .into_iter()
                    .map(|m| {
                        serde_json::json!({
                            "name": m.id.name,
                            "role": format!("{:?}", m.id.role).to_lowercase(),
                            "region": m.id.region,
                            "address": m.id.addr.to_string(),
                            "alive": m.alive,
                            "state_for_secs": m.since.elapsed().as_secs(),
                        })
                    })
                    .collect();
                let silent: Vec<String> = membership
                    .silent_proxies()
                    .into_iter()
                    .map(|m| m.id.name)
                    .collect();
                Some(admin::json(&serde_json::json!({
                    "self": membership.id().name,
                    "members": members,
                    "silent_proxies": silent,
                })))
            }
            "/api/v1/regions" => {
                let regions: Vec<_> = membership
                    .region_totals()
                    .into_iter()
                    .map(|t| {
                        serde_json::json!({
                            "region": t.region,
                            "forecaster": t.forecaster,
                            "period_start_ms": t.period_start_ms,
                            "proxies": t.proxies,
                            "requests": t.requests.iter().map(|(_, n)| n).sum::<u64>(),
                            "requests_by_profile": t.requests.into_iter().collect::<std::collections::BTreeMap<_, _>>(),
                        })
                    })
                    .collect();
                Some(admin::json(&serde_json::json!({ "regions": regions })))
            }
            _ => None,
        }
    })]
}
