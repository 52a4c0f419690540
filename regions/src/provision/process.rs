//! The `process` provisioner: each instance is a local process started from a command template
//! on a free loopback port, ready once it answers the fleet's health check, stopped with SIGTERM
//! (then SIGKILL after `stop_timeout`) once it has drained.
//!
//! Instances are recorded in the ledger as they change, so a forecaster that restarts (even after
//! SIGKILL) adopts the processes still running and healthy instead of starting the fleet again:
//! the processes run in their own process group, so a signal meant for the forecaster's terminal
//! does not take them down with it, and a clean shutdown stops them itself
//! ([`Provisioner::stop_all`]).
//!
//! Times: draining is measured in node time (`planner.drain_seconds`, so it scales with
//! `--speedup`) but lasts at least [`MIN_REAL_DRAIN`] of real time, so the proxies have been told
//! before the process stops; starting, readiness and stopping are real processes and take real
//! time (`ready_timeout_secs`, `stop_timeout_secs`).

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use prescale_gossip::{BackendPhase, PlannedBackend};

use super::{ProvisionTarget, Provisioner, ProvisionerError, ProvisionerStatus};
use crate::ledger::{InstanceRecord, Ledger};

/// A draining instance is stopped no sooner than this after it was marked, whatever the speedup.
pub const MIN_REAL_DRAIN: Duration = Duration::from_secs(2);
/// Longest pause between start attempts after repeated failures.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How often a ready instance is checked for having exited.
const EXIT_CHECK_EVERY: Duration = Duration::from_millis(200);

/// Everything the process provisioner needs to know about its fleet.
#[derive(Clone, Debug)]
pub struct ProcessSettings {
    pub region: String,
    pub fleet: String,
    /// Program and arguments with `{port}`, `{host}`, `{fleet}`, `{instance}` placeholders.
    pub command: Vec<String>,
    /// The program `prescale` in `command` stands for (this executable).
    pub self_exe: Option<PathBuf>,
    pub host: IpAddr,
    pub ready_timeout: Duration,
    pub stop_timeout: Duration,
    pub health_path: String,
    pub health_timeout: Duration,
    /// Drain time in node milliseconds.
    pub drain_ms: u64,
    /// The node clock's speed (node ms per real ms), to show real backoffs in node time.
    pub speed: f64,
}

enum Handle {
    /// Started by this process: waitable.
    Child(Child),
    /// Adopted after a restart: known by pid only.
    Adopted(u32),
}

impl Handle {
    fn pid(&self) -> u32 {
        match self {
            Handle::Child(c) => c.id(),
            Handle::Adopted(pid) => *pid,
        }
    }

    /// Whether the process has ended (and its exit status when we can know it).
    fn exited(&mut self) -> Option<String> {
        match self {
            Handle::Child(child) => match child.try_wait() {
                Ok(Some(status)) => Some(status.to_string()),
                Ok(None) => None,
                Err(e) => Some(format!("cannot be waited for: {e}")),
            },
            Handle::Adopted(pid) => (!process_alive(*pid)).then(|| "exited".to_string()),
        }
    }

    fn signal(&self, signal: &str) {
        let _ = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

struct Instance {
    name: String,
    address: SocketAddr,
    handle: Handle,
    phase: BackendPhase,
    since_ms: u64,
    ready_since_ms: Option<u64>,
    started: Instant,
    /// When draining began (real time), for the minimum real drain.
    drain_started: Option<Instant>,
    /// When SIGTERM was sent.
    stop_sent: Option<Instant>,
    last_exit_check: Instant,
}

/// Local processes as a fleet's backends.
pub struct ProcessProvisioner {
    settings: ProcessSettings,
    ledger: Ledger,
    instances: Vec<Instance>,
    next_number: u64,
    desired: u32,
    consecutive_failures: u32,
    retry_at: Option<Instant>,
    status: ProvisionerStatus,
}

impl ProcessProvisioner {
    /// A provisioner for one fleet; adopts the fleet's instances recorded in `ledger` that are
    /// still running and healthy (and forgets or stops the rest).
    pub fn new(settings: ProcessSettings, ledger: Ledger, now_ms: u64) -> Self {
        let mut provisioner = ProcessProvisioner {
            settings,
            ledger,
            instances: Vec::new(),
            next_number: 1,
            desired: 0,
            consecutive_failures: 0,
            retry_at: None,
            status: ProvisionerStatus {
                kind: "process",
                desired: 0,
                warming: 0,
                ready: 0,
                draining: 0,
                started_total: 0,
                adopted_total: 0,
                start_failures_total: 0,
                unexpected_exits_total: 0,
                stopped_total: 0,
                last_error: None,
                retry_at_ms: None,
                remote: None,
            },
        };
        provisioner.adopt(now_ms);
        provisioner
    }

    /// Instances serving or booting now (what a restarted brain starts from).
    pub fn serving(&self) -> u32 {
        self.instances
            .iter()
            .filter(|i| i.phase != BackendPhase::Draining)
            .count() as u32
    }

    fn adopt(&mut self, now_ms: u64) {
        let records = match self
            .ledger
            .instances(&self.settings.region, &self.settings.fleet)
        {
            Ok(records) => records,
            Err(e) => {
                self.error(now_ms, format!("cannot read the recorded instances: {e}"));
                return;
            }
        };
        for record in records {
            self.next_number = self
                .next_number
                .max(instance_number(&record.name).map_or(1, |n| n + 1));
            let address: Option<SocketAddr> = record.address.parse().ok();
            let phase = match record.phase.as_str() {
                "warming" => Some(BackendPhase::Warming),
                "ready" => Some(BackendPhase::Ready),
                "draining" => Some(BackendPhase::Draining),
                _ => None,
            };
            let alive = process_alive(record.pid) && cmdline_mentions(record.pid, &record.address);
            let healthy = address.is_some_and(|a| {
                health_check(a, &self.settings.health_path, self.settings.health_timeout).is_ok()
            });
            match (address, phase, alive, healthy) {
                (Some(address), Some(phase), true, true) => {
                    tracing::info!(fleet = %self.settings.fleet, instance = %record.name, %address, pid = record.pid, "adopted a running instance");
                    self.status.adopted_total += 1;
                    let phase = if phase == BackendPhase::Warming {
                        BackendPhase::Ready
                    } else {
                        phase
                    };
                    self.instances.push(Instance {
                        name: record.name.clone(),
                        address,
                        handle: Handle::Adopted(record.pid),
                        phase,
                        since_ms: if phase == BackendPhase::Ready {
                            record.ready_since_ms.unwrap_or(now_ms)
                        } else {
                            record.since_ms
                        },
                        ready_since_ms: record.ready_since_ms.or(Some(now_ms)),
                        started: Instant::now(),
                        drain_started: (phase == BackendPhase::Draining).then(Instant::now),
                        stop_sent: None,
                        last_exit_check: Instant::now(),
                    });
                    let instance = self.instances.last().map(|i| self.record_of(i));
                    if let Some(record) = instance {
                        self.persist(&record, now_ms);
                    }
                }
                _ => {
                    if alive {
                        // Ours but not answering: it cannot be trusted with traffic.
                        Handle::Adopted(record.pid).signal("KILL");
                    }
                    tracing::info!(fleet = %self.settings.fleet, instance = %record.name, "recorded instance is gone; forgetting it");
                    if let Err(e) =
                        self.ledger
                            .remove_instance(&record.region, &record.fleet, &record.name)
                    {
                        self.error(now_ms, format!("cannot forget {}: {e}", record.name));
                    }
                }
            }
        }
        self.refresh_counts();
    }

    fn record_of(&self, instance: &Instance) -> InstanceRecord {
        InstanceRecord {
            region: self.settings.region.clone(),
            fleet: self.settings.fleet.clone(),
            name: instance.name.clone(),
            address: instance.address.to_string(),
            pid: instance.handle.pid(),
            phase: phase_name(instance.phase).to_string(),
            since_ms: instance.since_ms,
            ready_since_ms: instance.ready_since_ms,
        }
    }

    fn persist(&mut self, record: &InstanceRecord, now_ms: u64) {
        if let Err(e) = self.ledger.put_instance(record) {
            self.error(now_ms, format!("cannot record {}: {e}", record.name));
        }
    }

    fn forget(&mut self, name: &str, now_ms: u64) {
        if let Err(e) =
            self.ledger
                .remove_instance(&self.settings.region, &self.settings.fleet, name)
        {
            self.error(now_ms, format!("cannot forget {name}: {e}"));
        }
    }

    fn error(&mut self, now_ms: u64, message: String) {
        tracing::warn!(fleet = %self.settings.fleet, %message, "provisioner");
        self.status.last_error = Some(ProvisionerError {
            at_ms: now_ms,
            message,
        });
    }

    fn failed_start(&mut self, now_ms: u64, message: String) {
        self.status.start_failures_total += 1;
        self.consecutive_failures += 1;
        let backoff = Duration::from_secs(1)
            .saturating_mul(1 << self.consecutive_failures.saturating_sub(1).min(5))
            .min(MAX_BACKOFF);
        self.retry_at = Some(Instant::now() + backoff);
        self.status.retry_at_ms =
            Some(now_ms + (backoff.as_secs_f64() * 1000.0 * self.settings.speed) as u64);
        self.error(now_ms, message);
    }

    fn command_for(&self, name: &str, port: u16) -> Result<Command, String> {
        let fill = |arg: &str| {
            arg.replace("{port}", &port.to_string())
                .replace("{host}", &self.settings.host.to_string())
                .replace("{fleet}", &self.settings.fleet)
                .replace("{instance}", name)
        };
        let program = self
            .settings
            .command
            .first()
            .ok_or_else(|| "the command is empty".to_string())?;
        let program = match (program.as_str(), &self.settings.self_exe) {
            ("prescale", Some(exe)) => exe.clone(),
            _ => PathBuf::from(fill(program)),
        };
        let mut command = Command::new(program);
        command
            .args(self.settings.command[1..].iter().map(|a| fill(a)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        {
            use std::os::unix::process::CommandExt;
            // Its own process group: a terminal's Ctrl-C reaches the forecaster, which stops
            // its instances after draining them, not the instances behind its back.
            command.process_group(0);
        }
        Ok(command)
    }

    fn start_one(&mut self, now_ms: u64) {
        let port = match free_port(self.settings.host) {
            Ok(port) => port,
            Err(e) => {
                self.failed_start(
                    now_ms,
                    format!("no free port on {}: {e}", self.settings.host),
                );
                return;
            }
        };
        let name = format!("{}-{}", self.settings.fleet, self.next_number);
        self.next_number += 1;
        let spawned = self
            .command_for(&name, port)
            .and_then(|mut c| c.spawn().map_err(|e| e.to_string()));
        match spawned {
            Ok(child) => {
                let address = SocketAddr::new(self.settings.host, port);
                tracing::info!(fleet = %self.settings.fleet, instance = %name, %address, pid = child.id(), "started an instance");
                self.status.started_total += 1;
                let instance = Instance {
                    name,
                    address,
                    handle: Handle::Child(child),
                    phase: BackendPhase::Warming,
                    since_ms: now_ms,
                    ready_since_ms: None,
                    started: Instant::now(),
                    drain_started: None,
                    stop_sent: None,
                    last_exit_check: Instant::now(),
                };
                let record = self.record_of(&instance);
                self.instances.push(instance);
                self.persist(&record, now_ms);
            }
            Err(e) => self.failed_start(
                now_ms,
                format!(
                    "cannot start `{}`: {e}",
                    self.settings.command.first().map_or("", String::as_str)
                ),
            ),
        }
    }

    /// Health of warming instances and exits of everyone; with `act`, also the stops that are
    /// due (drained instances, instances that never became ready).
    fn poll(&mut self, now_ms: u64, act: bool) {
        let mut index = 0;
        while index < self.instances.len() {
            let instance = &mut self.instances[index];
            let check_exit = instance.phase == BackendPhase::Warming
                || instance.stop_sent.is_some()
                || instance.last_exit_check.elapsed() >= EXIT_CHECK_EVERY;
            let exited = if check_exit {
                instance.last_exit_check = Instant::now();
                instance.handle.exited()
            } else {
                None
            };
            if let Some(status) = exited {
                let instance = self.instances.remove(index);
                let name = instance.name.clone();
                match (instance.phase, instance.stop_sent) {
                    (_, Some(_)) => {
                        self.status.stopped_total += 1;
                        tracing::info!(fleet = %self.settings.fleet, instance = %name, "instance stopped");
                    }
                    (BackendPhase::Warming, None) => self.failed_start(
                        now_ms,
                        format!("{name} exited before it was ready ({status})"),
                    ),
                    (_, None) => {
                        self.status.unexpected_exits_total += 1;
                        self.error(
                            now_ms,
                            format!(
                                "{name} at {} exited unexpectedly ({status}); replacing it",
                                instance.address
                            ),
                        );
                    }
                }
                self.forget(&name, now_ms);
                continue;
            }
            match instance.phase {
                BackendPhase::Warming => {
                    let address = instance.address;
                    let healthy = health_check(
                        address,
                        &self.settings.health_path,
                        self.settings.health_timeout,
                    )
                    .is_ok();
                    let instance = &mut self.instances[index];
                    if healthy {
                        instance.phase = BackendPhase::Ready;
                        instance.since_ms = now_ms;
                        instance.ready_since_ms = Some(now_ms);
                        tracing::info!(fleet = %self.settings.fleet, instance = %instance.name, %address, boot_ms = instance.started.elapsed().as_millis() as u64, "instance ready");
                        self.consecutive_failures = 0;
                        self.retry_at = None;
                        self.status.retry_at_ms = None;
                        let record = self.record_of(&self.instances[index]);
                        self.persist(&record, now_ms);
                    } else if act && instance.started.elapsed() >= self.settings.ready_timeout {
                        instance.handle.signal("KILL");
                        instance.stop_sent = Some(Instant::now());
                        let name = instance.name.clone();
                        let timeout = self.settings.ready_timeout;
                        self.failed_start(
                            now_ms,
                            format!(
                                "{name} did not pass GET {} within {} s; stopped",
                                self.settings.health_path,
                                timeout.as_secs()
                            ),
                        );
                    }
                }
                BackendPhase::Draining if act => {
                    let drain_due = now_ms >= instance.since_ms + self.settings.drain_ms
                        && instance
                            .drain_started
                            .is_none_or(|t| t.elapsed() >= MIN_REAL_DRAIN);
                    match instance.stop_sent {
                        None if drain_due => {
                            instance.handle.signal("TERM");
                            instance.stop_sent = Some(Instant::now());
                        }
                        Some(sent) if sent.elapsed() >= self.settings.stop_timeout => {
                            instance.handle.signal("KILL");
                        }
                        _ => {}
                    }
                }
                BackendPhase::Ready | BackendPhase::Draining => {}
            }
            index += 1;
        }
    }

    fn drain(&mut self, now_ms: u64, count: usize) {
        // Warming instances first (never routed to: stopped at once), newest first; then ready
        // ones, newest first, so long-lived instances keep their warm caches.
        let mut order: Vec<usize> = (0..self.instances.len())
            .filter(|&i| self.instances[i].phase != BackendPhase::Draining)
            .collect();
        order.sort_by_key(|&i| {
            let instance = &self.instances[i];
            (
                instance.phase != BackendPhase::Warming,
                std::cmp::Reverse(instance.started),
            )
        });
        for &i in order.iter().take(count) {
            let instance = &mut self.instances[i];
            if instance.phase == BackendPhase::Warming {
                instance.handle.signal("TERM");
                instance.stop_sent = Some(Instant::now());
            }
            instance.phase = BackendPhase::Draining;
            instance.since_ms = now_ms;
            instance.drain_started = Some(Instant::now());
            tracing::info!(fleet = %self.settings.fleet, instance = %instance.name, address = %instance.address, "draining an instance");
            let record = self.record_of(&self.instances[i]);
            self.persist(&record, now_ms);
        }
    }

    fn refresh_counts(&mut self) {
        let count = |phase| self.instances.iter().filter(|i| i.phase == phase).count() as u32;
        self.status.warming = count(BackendPhase::Warming);
        self.status.ready = count(BackendPhase::Ready);
        self.status.draining = count(BackendPhase::Draining);
        self.status.desired = self.desired;
    }
}

impl Provisioner for ProcessProvisioner {
    fn kind(&self) -> &'static str {
        "process"
    }

    fn reconcile(&mut self, now_ms: u64, target: &ProvisionTarget) {
        let desired = target.instances;
        self.desired = desired;
        self.poll(now_ms, true);
        let serving = self.serving();
        if serving > desired {
            self.drain(now_ms, (serving - desired) as usize);
        } else if serving < desired {
            let may_start = self.retry_at.is_none_or(|t| Instant::now() >= t);
            if may_start {
                // One at a time while failing (a broken command is not started N times a step).
                let missing = if self.consecutive_failures > 0 {
                    1
                } else {
                    desired - serving
                };
                for _ in 0..missing {
                    self.start_one(now_ms);
                    if self.consecutive_failures > 0 && self.retry_at.is_some() {
                        break;
                    }
                }
            }
        }
        self.refresh_counts();
    }

    fn observe(&mut self, now_ms: u64) {
        self.poll(now_ms, false);
        self.refresh_counts();
    }

    fn backends(&self) -> Option<Vec<PlannedBackend>> {
        Some(
            self.instances
                .iter()
                .filter(|i| i.stop_sent.is_none() || i.phase == BackendPhase::Draining)
                .map(|i| PlannedBackend {
                    address: i.address.to_string(),
                    phase: i.phase,
                    since_ms: i.since_ms,
                })
                .collect(),
        )
    }

    fn status(&self) -> ProvisionerStatus {
        self.status.clone()
    }

    fn stop_all(&mut self) {
        for instance in &self.instances {
            instance.handle.signal("TERM");
        }
        let deadline = Instant::now() + self.settings.stop_timeout;
        while Instant::now() < deadline {
            let all_gone = self
                .instances
                .iter_mut()
                .all(|i| i.handle.exited().is_some());
            if all_gone {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        for mut instance in std::mem::take(&mut self.instances) {
            if instance.handle.exited().is_none() {
                instance.handle.signal("KILL");
                if let Handle::Child(child) = &mut instance.handle {
                    let _ = child.wait();
                }
            }
            let _ = self.ledger.remove_instance(
                &self.settings.region,
                &self.settings.fleet,
                &instance.name,
            );
            self.status.stopped_total += 1;
        }
        self.refresh_counts();
    }
}

fn phase_name(phase: BackendPhase) -> &'static str {
    match phase {
        BackendPhase::Warming => "warming",
        BackendPhase::Ready => "ready",
        BackendPhase::Draining => "draining",
    }
}

fn instance_number(name: &str) -> Option<u64> {
    name.rsplit('-').next()?.parse().ok()
}

fn free_port(host: IpAddr) -> std::io::Result<u16> {
    Ok(TcpListener::bind((host, 0))?.local_addr()?.port())
}

/// Whether `pid` is a running (not zombie) process.
fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// Whether the command line of `pid` mentions the instance's port (a recycled pid will not).
fn cmdline_mentions(pid: u32, address: &str) -> bool {
    let port = address.rsplit(':').next().unwrap_or(address);
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|bytes| {
            bytes
                .split(|b| *b == 0)
                .any(|arg| String::from_utf8_lossy(arg).contains(port))
        })
        .unwrap_or(false)
}

/// `GET path` on `address`: Ok on a 2xx answer within `timeout`.
pub fn health_check(address: SocketAddr, path: &str, timeout: Duration) -> Result<(), String> {
    let mut stream =
        TcpStream::connect_timeout(&address, timeout).map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|_| stream.set_write_timeout(Some(timeout)))
        .map_err(|e| format!("socket: {e}"))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nUser-Agent: prescale-provisioner\r\n\r\n"
    )
    .map_err(|e| format!("send: {e}"))?;
    let mut head = [0u8; 12];
    let mut read = 0;
    while read < head.len() {
        match stream.read(&mut head[read..]) {
            Ok(0) => break,
            Ok(n) => read += n,
            Err(e) => return Err(format!("read: {e}")),
        }
    }
    // Read the rest (bounded) so closing does not reset a backend still writing its answer.
    let mut rest = [0u8; 1024];
    let mut drained = 0;
    while drained < 16 * 1024 {
        match stream.read(&mut rest) {
            Ok(0) | Err(_) => break,
            Ok(n) => drained += n,
        }
    }
    let line = String::from_utf8_lossy(&head[..read]);
    let status = line
        .strip_prefix("HTTP/1.")
        .and_then(|rest| rest.get(2..5))
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or_else(|| format!("not an HTTP answer: {line:?}"))?;
    if (200..300).contains(&status) {
        Ok(())
    } else {
        Err(format!("status {status}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(command: &[&str]) -> ProcessSettings {
        ProcessSettings {
            region: "local".into(),
            fleet: "web".into(),
            command: command.iter().map(|s| s.to_string()).collect(),
            self_exe: None,
            host: IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
            ready_timeout: Duration::from_secs(5),
            stop_timeout: Duration::from_secs(2),
            health_path: "/healthz".into(),
            health_timeout: Duration::from_millis(300),
            drain_ms: 0,
            speed: 1.0,
        }
    }

    /// A tiny HTTP server in python3 on the instance's port (python3 is on every machine here).
    fn python_backend() -> Vec<&'static str> {
        vec![
            "python3",
            "-c",
            "import http.server,sys\n\
             class H(http.server.BaseHTTPRequestHandler):\n\
             \x20 def do_GET(self):\n\
             \x20   self.send_response(200); self.send_header('Content-Length','2'); self.end_headers(); self.wfile.write(b'ok')\n\
             \x20 def log_message(self,*a): pass\n\
             http.server.HTTPServer(('127.0.0.1',int(sys.argv[1])),H).serve_forever()",
            "{port}",
        ]
    }

    fn target(instances: u32) -> ProvisionTarget {
        ProvisionTarget {
            region: "local".into(),
            fleet: "web".into(),
            instances,
            tiers: prescale_brain::planner::Tiers::default(),
            warm_pools: Vec::new(),
            plan_version: Some(1),
            reasons: Vec::new(),
        }
    }

    fn wait_for(
        what: &str,
        provisioner: &mut ProcessProvisioner,
        desired: u32,
        done: impl Fn(&ProvisionerStatus) -> bool,
    ) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            provisioner.reconcile(0, &target(desired));
            if done(&provisioner.status()) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {:?}",
                provisioner.status()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    #[test]
    fn starts_readies_replaces_and_drains_real_processes() {
        let db = tempfile::NamedTempFile::new().expect("db");
        let ledger = Ledger::open(db.path()).expect("ledger");
        let mut p = ProcessProvisioner::new(settings(&python_backend()), ledger, 0);
        wait_for("two ready instances", &mut p, 2, |s| s.ready == 2);
        let backends = p.backends().expect("process backends");
        assert_eq!(backends.len(), 2);
        assert!(backends.iter().all(|b| b.phase == BackendPhase::Ready));

        // One is killed behind our back: it is replaced.
        let victim = p.instances[0].handle.pid();
        Handle::Adopted(victim).signal("KILL");
        wait_for("a replacement", &mut p, 2, |s| {
            s.unexpected_exits_total == 1 && s.ready == 2
        });
        assert!(p
            .status()
            .last_error
            .is_some_and(|e| e.message.contains("exited unexpectedly")));

        // Scale in: one drains, is stopped after the minimum real drain, and is forgotten.
        p.reconcile(0, &target(1));
        assert_eq!(p.status().draining, 1);
        assert!(p
            .backends()
            .unwrap_or_default()
            .iter()
            .any(|b| b.phase == BackendPhase::Draining));
        wait_for("the drained instance to stop", &mut p, 1, |s| {
            s.draining == 0 && s.stopped_total == 1
        });
        assert_eq!(
            Ledger::open(db.path())
                .unwrap()
                .instances("local", "web")
                .unwrap()
                .len(),
            1
        );
        p.stop_all();
        assert!(Ledger::open(db.path())
            .unwrap()
            .instances("local", "web")
            .unwrap()
            .is_empty());
    }

    #[test]
    fn a_restarted_provisioner_adopts_what_still_runs() {
        let db = tempfile::NamedTempFile::new().expect("db");
        let mut first = ProcessProvisioner::new(
            settings(&python_backend()),
            Ledger::open(db.path()).unwrap(),
            0,
        );
        wait_for("one ready instance", &mut first, 1, |s| s.ready == 1);
        let address = first.backends().unwrap_or_default()[0].address.clone();
        // The forecaster dies without stopping anything.
        std::mem::forget(first);
        let mut second = ProcessProvisioner::new(
            settings(&python_backend()),
            Ledger::open(db.path()).unwrap(),
            0,
        );
        assert_eq!(second.status().adopted_total, 1);
        assert_eq!(second.serving(), 1);
        assert_eq!(second.backends().unwrap_or_default()[0].address, address);
        second.reconcile(0, &target(1));
        assert_eq!(second.status().started_total, 0, "nothing new was started");
        second.stop_all();
        assert!(health_check(address.parse().unwrap(), "/", Duration::from_millis(300)).is_err());
    }

    #[test]
    fn a_command_that_cannot_start_is_retried_with_backoff_and_counted() {
        let db = tempfile::NamedTempFile::new().expect("db");
        let mut p = ProcessProvisioner::new(
            settings(&["/nonexistent/backend", "{port}"]),
            Ledger::open(db.path()).unwrap(),
            0,
        );
        p.reconcile(1_000, &target(3));
        let status = p.status();
        assert_eq!(
            status.start_failures_total, 1,
            "one try while failing, not three"
        );
        assert_eq!(status.desired, 3, "a failure does not lower what is wanted");
        assert!(status.retry_at_ms.is_some_and(|t| t > 1_000));
        assert!(status
            .last_error
            .is_some_and(|e| e.message.contains("/nonexistent/backend")));
        // Within the backoff nothing is tried again.
        p.reconcile(1_000, &target(3));
        assert_eq!(p.status().start_failures_total, 1);
        // A process that exits at once is a failed start too.
        let mut p = ProcessProvisioner::new(
            settings(&["sh", "-c", "exit 3", "{port}"]),
            Ledger::open(db.path()).unwrap(),
            0,
        );
        wait_for("a failed start", &mut p, 1, |s| s.start_failures_total == 1);
        assert!(p
            .status()
            .last_error
            .is_some_and(|e| e.message.contains("exited before it was ready")));
    }
}
