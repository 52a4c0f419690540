//! Fleets: the backend pools of the node's region, their load balancing (pingora's round robin or
//! Ketama consistent hashing on the user key), active health checks and passive ejection, and
//! per-backend in-flight counts.
//!
//! Invariants: a backend is chosen only when the active check says healthy and it is not ejected;
//! a request never goes twice to the same backend (retries pick another); in-flight counts go
//! back down when the request's guard drops, whatever path the request took.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pingora::lb::health_check::HttpHealthCheck;
use pingora::lb::selection::{Consistent, RoundRobin};
use pingora::lb::{Backend, LoadBalancer};
use pingora::upstreams::peer::HttpPeer;
use prescale_config::{FleetConfig, LoadBalancing, TimeoutConfig};
use serde::Serialize;

use crate::error::ProxyError;
use crate::upstream_pool::IdleConnections;

/// Idle keep-alive connections kept per backend (beyond that, released connections close).
pub const IDLE_CONNECTIONS_PER_BACKEND: usize = 512;
/// How long an upstream connection may wait idle for its next request.
pub const UPSTREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Index of a fleet in [`Fleets`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FleetIdx(pub u16);

/// What the proxy knows about one backend, beyond pingora's health state.
#[derive(Debug)]
pub struct BackendState {
    pub addr: SocketAddr,
    /// How pingora connects to it (address, timeouts, pool key), built once.
    pub peer: HttpPeer,
    /// Keep-alive connections of the direct path waiting for a request.
    pub idle: IdleConnections,
    /// The same backend as pingora's balancer knows it (for health look-ups).
    balancer_key: Backend,
    pub in_flight: AtomicU32,
    pub requests: AtomicU64,
    pub failures: AtomicU64,
    consecutive_failures: AtomicU32,
    /// Milliseconds since the fleet's epoch until which the backend is ejected (0 = not ejected).
    ejected_until_ms: AtomicU64,
}

enum Balancer {
    RoundRobin(Arc<LoadBalancer<RoundRobin>>),
    Consistent(Arc<LoadBalancer<Consistent>>),
}

/// One fleet of the node's region.
pub struct Fleet {
    pub name: String,
    pub config: FleetConfig,
    balancer: Balancer,
    backends: Vec<BackendState>,
    by_addr: HashMap<SocketAddr, usize>,
    epoch: std::time::Instant,
    in_flight: AtomicU32,
}

/// Outcome of one attempt on a backend, for passive health.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attempt {
    Succeeded,
    /// Could not connect, timed out, or the connection broke before a response.
    Failed,
}

impl Fleet {
    /// `worker_threads`: the proxy's threads (each gets its own idle upstream connections).
    pub fn new(config: &FleetConfig, worker_threads: usize) -> Result<Self, ProxyError> {
        let mut addrs = Vec::with_capacity(config.backends.len());
        for backend in &config.backends {
            let addr = resolve(backend).map_err(|source| ProxyError::Backend {
                fleet: config.name.clone(),
                backend: backend.clone(),
                source,
            })?;
            addrs.push(addr);
        }
        let health_check = health_check(config);
        let balancer = match config.load_balancing {
            LoadBalancing::RoundRobin => {
                let mut lb = LoadBalancer::<RoundRobin>::try_from_iter(addrs.iter().copied())
                    .map_err(|source| ProxyError::Backend {
                        fleet: config.name.clone(),
                        backend: format!("{addrs:?}"),
                        source,
                    })?;
                lb.set_health_check(health_check);
                Balancer::RoundRobin(Arc::new(lb))
            }
            LoadBalancing::ConsistentHash => {
                let mut lb = LoadBalancer::<Consistent>::try_from_iter(addrs.iter().copied())
                    .map_err(|source| ProxyError::Backend {
                        fleet: config.name.clone(),
                        backend: format!("{addrs:?}"),
                        source,
                    })?;
                lb.set_health_check(health_check);
                Balancer::Consistent(Arc::new(lb))
            }
        };
        let backends: Vec<BackendState> = addrs
            .iter()
            .map(|&addr| BackendState {
                addr,
                peer: backend_peer(addr, &config.timeouts),
                idle: IdleConnections::new(
                    IDLE_CONNECTIONS_PER_BACKEND,
                    worker_threads,
                    UPSTREAM_IDLE_TIMEOUT,
                ),
                balancer_key: Backend {
                    addr: pingora::protocols::l4::socket::SocketAddr::Inet(addr),
                    weight: 1,
                    ext: Default::default(),
                },
                in_flight: AtomicU32::new(0),
                requests: AtomicU64::new(0),
                failures: AtomicU64::new(0),
                consecutive_failures: AtomicU32::new(0),
                ejected_until_ms: AtomicU64::new(0),
            })
            .collect();
        let by_addr = addrs.iter().enumerate().map(|(i, a)| (*a, i)).collect();
        Ok(Fleet {
            name: config.name.clone(),
            config: config.clone(),
            balancer,
            backends,
            by_addr,
            epoch: std::time::Instant::now(),
            in_flight: AtomicU32::new(0),
        })
    }

    /// Picks a healthy, non-ejected backend not in `tried` (a bit set of backend indexes).
    /// `user_key` steers consistent hashing; round robin ignores it.
    pub fn select(&self, user_key: u64, tried: u64) -> Option<usize> {
        let now_ms = self.now_ms();
        let key = user_key.to_le_bytes();
        let accept = |backend: &Backend, healthy: bool| -> bool {
            if !healthy {
                return false;
            }
            let Some(index) = self.index_of(backend) else {
                return false;
            };
            tried & (1u64 << (index % 64)) == 0
                && self.backends[index]
                    .ejected_until_ms
                    .load(Ordering::Relaxed)
                    <= now_ms
        };
        let max_iterations = self.backends.len() * 2 + 1;
        let chosen = match &self.balancer {
            Balancer::RoundRobin(lb) => lb.select_with(&key, max_iterations, accept),
            Balancer::Consistent(lb) => lb.select_with(&key, max_iterations, accept),
        }?;
        self.index_of(&chosen)
    }

    fn index_of(&self, backend: &Backend) -> Option<usize> {
        let addr = backend.addr.as_inet()?;
        self.by_addr.get(addr).copied()
    }

    pub fn backend(&self, index: usize) -> &BackendState {
        &self.backends[index]
    }

    pub fn backends(&self) -> &[BackendState] {
        &self.backends
    }

    /// Starts counting a request against the fleet and the backend; the count drops with the guard.
    pub fn begin(self: &Arc<Self>, index: usize) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.backends[index]
            .in_flight
            .fetch_add(1, Ordering::Relaxed);
        self.backends[index]
            .requests
            .fetch_add(1, Ordering::Relaxed);
        InFlight {
            fleet: Arc::clone(self),
            index,
        }
    }

    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Passive health: enough consecutive failures eject the backend for `eject_secs`.
    pub fn record(&self, index: usize, attempt: Attempt) {
        let backend = &self.backends[index];
        match attempt {
            Attempt::Succeeded => {
                if backend.consecutive_failures.load(Ordering::Relaxed) != 0 {
                    backend.consecutive_failures.store(0, Ordering::Relaxed);
                }
            }
            Attempt::Failed => {
                backend.failures.fetch_add(1, Ordering::Relaxed);
                let failures = backend.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
                if failures >= self.config.eject_after_failures {
                    let until = self.now_ms() + self.config.eject_secs * 1000;
                    backend.ejected_until_ms.store(until, Ordering::Relaxed);
                    backend.consecutive_failures.store(0, Ordering::Relaxed);
                    tracing::warn!(fleet = %self.name, backend = %backend.addr, seconds = self.config.eject_secs, "backend ejected after consecutive failures");
                }
            }
        }
    }

    pub fn is_healthy(&self, index: usize) -> bool {
        let backend = &self.backends[index].balancer_key;
        match &self.balancer {
            Balancer::RoundRobin(lb) => lb.backends().ready(backend),
            Balancer::Consistent(lb) => lb.backends().ready(backend),
        }
    }

    pub fn is_ejected(&self, index: usize) -> bool {
        self.backends[index]
            .ejected_until_ms
            .load(Ordering::Relaxed)
            > self.now_ms()
    }

    /// Backends that are healthy and not ejected.
    pub fn available(&self) -> usize {
        (0..self.backends.len())
            .filter(|&i| self.is_healthy(i) && !self.is_ejected(i))
            .count()
    }

    /// Runs one round of active health checks on every backend.
    pub async fn check_health(&self) {
        match &self.balancer {
            Balancer::RoundRobin(lb) => lb.backends().run_health_check(true).await,
            Balancer::Consistent(lb) => lb.backends().run_health_check(true).await,
        }
    }

    pub fn health_interval(&self) -> Duration {
        Duration::from_millis(self.config.health_check.interval_ms)
    }

    fn now_ms(&self) -> u64 {
        // +1 so that "ejected until 0" always means not ejected.
        self.epoch.elapsed().as_millis() as u64 + 1
    }

    pub fn status(&self) -> FleetStatus {
        FleetStatus {
            name: self.name.clone(),
            region: self.config.region.clone(),
            load_balancing: match self.config.load_balancing {
                LoadBalancing::RoundRobin => "round_robin",
                LoadBalancing::ConsistentHash => "consistent_hash",
            },
            in_flight: self.in_flight(),
            available_backends: self.available(),
            backends: (0..self.backends.len())
                .map(|i| {
                    let b = &self.backends[i];
                    BackendStatus {
                        address: b.addr.to_string(),
                        healthy: self.is_healthy(i),
                        ejected: self.is_ejected(i),
                        in_flight: b.in_flight.load(Ordering::Relaxed),
                        requests: b.requests.load(Ordering::Relaxed),
                        failures: b.failures.load(Ordering::Relaxed),
                    }
                })
                .collect(),
        }
    }
}

/// Decrements the fleet's and backend's in-flight counts when dropped.
pub struct InFlight {
    fleet: Arc<Fleet>,
    index: usize,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.fleet.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.fleet.backends[self.index]
            .in_flight
            .fetch_sub(1, Ordering::Relaxed);
    }
}

#[derive(Debug, Serialize)]
pub struct FleetStatus {
    pub name: String,
    pub region: String,
    pub load_balancing: &'static str,
    pub in_flight: u32,
    pub available_backends: usize,
    pub backends: Vec<BackendStatus>,
}

#[derive(Debug, Serialize)]
pub struct BackendStatus {
    pub address: String,
    pub healthy: bool,
    pub ejected: bool,
    pub in_flight: u32,
    pub requests: u64,
    pub failures: u64,
}

fn health_check(config: &FleetConfig) -> Box<HttpHealthCheck> {
    let mut check = HttpHealthCheck::new("localhost", false);
    check.consecutive_success = config.health_check.healthy_threshold;
    check.consecutive_failure = config.health_check.unhealthy_threshold;
    let timeout = Duration::from_millis(config.health_check.timeout_ms);
    check.peer_template.options.connection_timeout = Some(timeout);
    check.peer_template.options.read_timeout = Some(timeout);
    // The path was validated to start with '/', so building the request header cannot fail;
    // if it ever did, the default `/` probe is kept and the problem logged.
    match pingora::http::RequestHeader::build("GET", config.health_check.path.as_bytes(), None) {
        Ok(mut req) => {
            if req.append_header("Host", "localhost").is_ok() {
                check.req = req;
            }
        }
        Err(e) => {
            tracing::error!(fleet = %config.name, error = %e, "invalid health check path; probing / instead")
        }
    }
    Box::new(check)
}

fn resolve(backend: &str) -> std::io::Result<SocketAddr> {
    use std::net::ToSocketAddrs;
    backend
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no address"))
}

/// All fleets of the node's region.
pub struct Fleets {
    fleets: Vec<Arc<Fleet>>,
}

impl Fleets {
    pub fn new(configs: &[&FleetConfig], worker_threads: usize) -> Result<Self, ProxyError> {
        let fleets = configs
            .iter()
            .map(|c| Fleet::new(c, worker_threads).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Fleets { fleets })
    }

    pub fn get(&self, index: FleetIdx) -> &Arc<Fleet> {
        &self.fleets[index.0 as usize]
    }

    pub fn index_of(&self, name: &str) -> Option<FleetIdx> {
        self.fleets
            .iter()
            .position(|f| f.name == name)
            .map(|i| FleetIdx(i as u16))
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Fleet>> {
        self.fleets.iter()
    }

    pub fn len(&self) -> usize {
        self.fleets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.fleets.is_empty()
    }
}

/// The pingora peer of a backend: plain HTTP/1.1 with the fleet's timeouts; pooled connections
/// idle for a minute at most.
fn backend_peer(addr: SocketAddr, timeouts: &TimeoutConfig) -> HttpPeer {
    let mut peer = HttpPeer::new(addr, false, String::new());
    peer.options.connection_timeout = Some(Duration::from_millis(timeouts.connect_ms));
    peer.options.read_timeout = Some(Duration::from_millis(timeouts.read_ms));
    peer.options.write_timeout = Some(Duration::from_millis(timeouts.write_ms));
    peer.options.idle_timeout = Some(UPSTREAM_IDLE_TIMEOUT);
    peer
}
