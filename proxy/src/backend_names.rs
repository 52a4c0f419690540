//! Backends by DNS name, re-resolved (fleets with `resolve = true`): every
//! `resolver.refresh_secs` each name in such a fleet's `backends` is looked up (A and AAAA)
//! through `[resolver]`'s name servers, or `/etc/resolv.conf`'s, and the fleet's set becomes
//! every address of every name plus the backends given as addresses
//! ([`Fleet::replace_resolved`]).
//!
//! Invariants:
//! - a name that fails to resolve (timeout, SERVFAIL, NXDOMAIN, no address) keeps the addresses
//!   it had: DNS trouble never empties a fleet; the failure is logged and counted;
//! - a backend whose address persists keeps its state (health, ejection, idle connections);
//! - an answer is never used longer than `refresh_secs`, whatever its TTL;
//! - the first round runs before the proxy listener opens ([`BackendNames::start`] waits for
//!   it), so a proxy does not start out answering 503 for want of a lookup;
//! - each round reads the fleet's `backends` as last applied, so a reload that changes them
//!   takes effect with the round it starts at once ([`Fleets::resolve_names_now`]).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::config::{
    LookupIpStrategy, NameServerConfig, NameServerConfigGroup, ResolverConfig as DnsConfig,
    ResolverOpts,
};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::xfer::Protocol;
use hickory_resolver::TokioResolver;
use prescale_config::{backend_host, ResolverConfig};

use crate::fleet::{Fleet, Fleets, ResolvedBackend};

/// A `backends` entry of a resolving fleet.
#[derive(Clone, Debug)]
enum Entry {
    Address(SocketAddr),
    Name { host: String, port: u16 },
}

/// A resolving fleet and what each of its names last resolved to.
struct NamedFleet {
    fleet: Arc<Fleet>,
    last: HashMap<String, Vec<IpAddr>>,
}

/// The re-resolution loop of the node's resolving fleets.
pub struct BackendNames {
    config: ResolverConfig,
    fleets: Vec<NamedFleet>,
    names_changed: Arc<tokio::sync::Notify>,
}

impl BackendNames {
    /// `None` when no fleet resolves.
    pub fn new(config: &ResolverConfig, fleets: &Fleets) -> Option<Self> {
        let named: Vec<NamedFleet> = fleets
            .iter()
            .filter(|fleet| fleet.config().resolve)
            .map(|fleet| NamedFleet {
                fleet: Arc::clone(fleet),
                last: HashMap::new(),
            })
            .collect();
        (!named.is_empty()).then(|| BackendNames {
            config: config.clone(),
            fleets: named,
            names_changed: fleets.names_changed(),
        })
    }

    /// Runs the loop on `runtime`, and waits (at most the time one round may take) for its first
    /// round to be applied.
    pub fn start(self, runtime: &tokio::runtime::Handle) {
        let (first_done, first) = std::sync::mpsc::channel();
        let patience = self.round_limit();
        runtime.spawn(self.run(first_done));
        if first.recv_timeout(patience).is_err() {
            tracing::warn!("the first resolution of backend names did not finish in {patience:?}; the proxy starts without it");
        }
    }

    /// The most one round can take: every name server tried twice per record type.
    fn round_limit(&self) -> Duration {
        let servers = self.config.nameservers.len().max(1) as u32;
        Duration::from_millis(self.config.timeout_ms) * 4 * servers + Duration::from_secs(1)
    }

    async fn run(mut self, first_done: std::sync::mpsc::Sender<()>) {
        let resolver = match self.resolver() {
            Ok(resolver) => resolver,
            Err(e) => {
                tracing::error!(error = %e, "cannot set up the DNS resolver; backends given by name stay unresolved");
                let _ = first_done.send(());
                return;
            }
        };
        let refresh = Duration::from_secs(self.config.refresh_secs);
        let mut first_done = Some(first_done);
        loop {
            for named in &mut self.fleets {
                refresh_fleet(&resolver, named).await;
            }
            if let Some(done) = first_done.take() {
                let _ = done.send(());
            }
            tokio::select! {
                _ = tokio::time::sleep(refresh) => {}
                _ = self.names_changed.notified() => {}
            }
        }
    }

    fn resolver(&self) -> Result<TokioResolver, hickory_resolver::ResolveError> {
        let provider = TokioConnectionProvider::default();
        let mut builder = if self.config.nameservers.is_empty() {
            TokioResolver::builder(provider)?
        } else {
            let servers: Vec<NameServerConfig> = self
                .config
                .nameserver_addrs()
                .into_iter()
                .flatten()
                .flat_map(|addr| {
                    [
                        NameServerConfig::new(addr, Protocol::Udp),
                        NameServerConfig::new(addr, Protocol::Tcp),
                    ]
                })
                .collect();
            let config =
                DnsConfig::from_parts(None, Vec::new(), NameServerConfigGroup::from(servers));
            TokioResolver::builder_with_config(config, provider)
        };
        let options: &mut ResolverOpts = builder.options_mut();
        let refresh = Duration::from_secs(self.config.refresh_secs);
        options.timeout = Duration::from_millis(self.config.timeout_ms);
        options.attempts = 2;
        options.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        options.positive_max_ttl = Some(refresh);
        options.negative_max_ttl = Some(refresh);
        Ok(builder.build())
    }
}

/// One round for one fleet: each name looked up, the set replaced when it changed.
async fn refresh_fleet(resolver: &TokioResolver, named: &mut NamedFleet) {
    let fleet_name = named.fleet.name.clone();
    let mut failed = false;
    let mut resolved = Vec::new();
    let entries: Vec<Entry> = named
        .fleet
        .config()
        .backends
        .iter()
        .filter_map(|b| entry(b))
        .collect();
    // Names a reload took out are forgotten (one put back later is looked up afresh).
    named.last.retain(|name, _| {
        entries
            .iter()
            .any(|e| matches!(e, Entry::Name { host, .. } if host == name))
    });
    for entry in &entries {
        match entry {
            Entry::Address(addr) => resolved.push(ResolvedBackend {
                addr: *addr,
                host: None,
            }),
            Entry::Name { host, port } => {
                // A fully qualified name: no search domains appended.
                let query = format!("{}.", host.trim_end_matches('.'));
                let ips = match resolver.lookup_ip(query.as_str()).await {
                    Ok(answer) => {
                        let mut ips: Vec<IpAddr> = answer.iter().collect();
                        ips.sort();
                        ips.dedup();
                        if ips.is_empty() {
                            None
                        } else {
                            Some(ips)
                        }
                    }
                    Err(e) => {
                        tracing::warn!(fleet = %fleet_name, name = %host, error = %e, "backend name did not resolve; its last addresses are kept");
                        None
                    }
                };
                let ips = match ips {
                    Some(ips) => {
                        if named.last.get(host) != Some(&ips) {
                            tracing::info!(fleet = %fleet_name, name = %host, addresses = ?ips, "backend name resolved");
                        }
                        named.last.insert(host.clone(), ips.clone());
                        ips
                    }
                    None => {
                        failed = true;
                        named.last.get(host).cloned().unwrap_or_default()
                    }
                };
                resolved.extend(ips.into_iter().map(|ip| ResolvedBackend {
                    addr: SocketAddr::new(ip, *port),
                    host: Some(host.clone()),
                }));
            }
        }
    }
    let counter = if failed {
        &named.fleet.dns.failed
    } else {
        &named.fleet.dns.succeeded
    };
    counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    named.fleet.replace_resolved(&resolved);
}

/// A `backends` entry as the resolver treats it (validation made every entry `host:port`).
fn entry(backend: &str) -> Option<Entry> {
    let port: u16 = backend.rsplit_once(':')?.1.parse().ok()?;
    let host = backend_host(backend);
    Some(match host.parse::<IpAddr>() {
        Ok(ip) => Entry::Address(SocketAddr::new(ip, port)),
        Err(_) => Entry::Name {
            host: host.to_string(),
            port,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_names_or_addresses() {
        assert!(matches!(
            entry("api.internal:8080"),
            Some(Entry::Name { ref host, port: 8080 }) if host == "api.internal"
        ));
        assert!(matches!(
            entry("[::1]:443"),
            Some(Entry::Address(addr)) if addr == "[::1]:443".parse().expect("addr")
        ));
        assert!(matches!(
            entry("10.0.0.5:80"),
            Some(Entry::Address(addr)) if addr.port() == 80
        ));
    }
}
