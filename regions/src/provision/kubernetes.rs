//! The `kubernetes` provisioner: sets the `replicas` of a Deployment or StatefulSet through its
//! scale subresource (kube's client, rustls on ring) and reads the workload's status back as
//! the fleet's counts. The pods run in the cluster; the proxies keep routing to the fleet's
//! `backends` (the Service in front of them).
//!
//! Credentials: the kubeconfig file `kubeconfig` names (its current context), or, without one,
//! the pod's in-cluster service account. The account needs `get` on the workload
//! (`deployments` or `statefulsets` in `apps`) and `patch` on its `scale` subresource.
//!
//! A call, for a target of N instances: `GET` the workload (`spec.replicas`, `status`). Scaling
//! out (N ≥ replicas) is one `PATCH …/scale` to N. Scaling in removes at most `scale_in_step`
//! replicas per change, and takes the next step only once the last one settled — the
//! controller observed it (`status.observedGeneration`), no replica above `spec.replicas` is
//! left (`status.replicas`) and none is terminating (`status.terminatingReplicas`) — so a
//! PodDisruptionBudget's room is not spent at once; until then the call reports a step taken,
//! and the worker calls again a little later ([`super::remote::STEP_EVERY`]).
//!
//! Counts, read after every call and every [`super::remote::READ_EVERY`] between them (in
//! forecast-only mode too: reading changes nothing): ready = `status.readyReplicas` (at most
//! `spec.replicas`), warming = the rest of `spec.replicas`, draining = replicas above
//! `spec.replicas` plus terminating ones. Only the replica count decides whether a new call is
//! needed (a change of tiers alone is not one).

use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use kube::api::{Api, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};

use super::remote::{with_causes, CallError, Counts, Outcome, RemoteBackend};
use super::{ProvisionTarget, SetupError};

/// Which kind of workload a fleet is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkloadKind {
    Deployment,
    StatefulSet,
}

impl WorkloadKind {
    fn resource(self) -> &'static str {
        match self {
            WorkloadKind::Deployment => "deployments",
            WorkloadKind::StatefulSet => "statefulsets",
        }
    }
}

/// The `kubernetes` provisioner's settings.
#[derive(Clone, Debug)]
pub struct KubernetesSettings {
    pub namespace: String,
    pub kind: WorkloadKind,
    pub name: String,
    /// A kubeconfig file; `None`: the in-cluster service account.
    pub kubeconfig: Option<PathBuf>,
    /// Most replicas one change removes.
    pub scale_in_step: u32,
    /// How long one call (its requests together) may take.
    pub timeout: Duration,
}

/// The workload's replicas as read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Replicas {
    spec: u32,
    status: u32,
    ready: u32,
    terminating: u32,
    /// The controller has seen the latest spec.
    observed: bool,
}

impl Replicas {
    fn counts(&self) -> Counts {
        let ready = self.ready.min(self.spec);
        Counts {
            ready,
            warming: self.spec - ready,
            draining: self.status.saturating_sub(self.spec) + self.terminating,
        }
    }

    /// The last change is done: nothing above the spec is left or going.
    fn settled(&self) -> bool {
        self.observed && self.status <= self.spec && self.terminating == 0
    }
}

fn count(value: Option<i32>) -> u32 {
    value.unwrap_or(0).max(0) as u32
}

fn observed(generation: Option<i64>, observed_generation: Option<i64>) -> bool {
    match (generation, observed_generation) {
        (Some(generation), Some(observed)) => observed >= generation,
        // An API that does not report generations cannot say otherwise.
        _ => true,
    }
}

/// Scales one workload; see the module docs.
pub struct KubernetesBackend {
    settings: KubernetesSettings,
    runtime: tokio::runtime::Runtime,
    client: kube::Client,
}

impl KubernetesBackend {
    /// Reads the kubeconfig (or the in-cluster environment) and builds the client; nothing is
    /// sent yet.
    pub fn new(settings: KubernetesSettings) -> Result<Self, SetupError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|source| SetupError::Io {
                what: "start the Kubernetes client's runtime",
                source,
            })?;
        let mut config = match &settings.kubeconfig {
            Some(path) => {
                let file = Kubeconfig::read_from(path).map_err(|e| {
                    SetupError::config("kubeconfig", format!("{}: {e}", path.display()))
                })?;
                runtime
                    .block_on(kube::Config::from_custom_kubeconfig(
                        file,
                        &KubeConfigOptions::default(),
                    ))
                    .map_err(|e| {
                        SetupError::config("kubeconfig", format!("{}: {e}", path.display()))
                    })?
            }
            None => kube::Config::incluster().map_err(|e| {
                SetupError::config(
                    "kubeconfig",
                    format!("not set, and this is not a pod with a service account ({e}); set kubeconfig to a kubeconfig file"),
                )
            })?,
        };
        config.connect_timeout = Some(settings.timeout);
        config.read_timeout = Some(settings.timeout);
        config.write_timeout = Some(settings.timeout);
        // Failures are retried (and counted) by the provisioner, not inside one call.
        config.default_retry = false;
        let client = runtime
            .block_on(async { kube::Client::try_from(config) })
            .map_err(|e| SetupError::config("kubeconfig", format!("cannot build a client: {e}")))?;
        Ok(KubernetesBackend {
            settings,
            runtime,
            client,
        })
    }

    fn what(&self) -> String {
        format!(
            "{}/{} in namespace {}",
            self.settings.kind.resource(),
            self.settings.name,
            self.settings.namespace
        )
    }

    async fn read_replicas(&self) -> Result<Replicas, kube::Error> {
        let name = &self.settings.name;
        let namespace = &self.settings.namespace;
        match self.settings.kind {
            WorkloadKind::Deployment => {
                let api: Api<Deployment> = Api::namespaced(self.client.clone(), namespace);
                let d = api.get(name).await?;
                let spec = d.spec.as_ref().and_then(|s| s.replicas);
                let status = d.status.unwrap_or_default();
                Ok(Replicas {
                    // The API's default for a Deployment without `replicas`.
                    spec: spec.map_or(1, |r| r.max(0) as u32),
                    status: count(status.replicas),
                    ready: count(status.ready_replicas),
                    terminating: count(status.terminating_replicas),
                    observed: observed(d.metadata.generation, status.observed_generation),
                })
            }
            WorkloadKind::StatefulSet => {
                let api: Api<StatefulSet> = Api::namespaced(self.client.clone(), namespace);
                let s = api.get(name).await?;
                let spec = s.spec.as_ref().and_then(|s| s.replicas);
                let status = s.status.unwrap_or_default();
                Ok(Replicas {
                    spec: spec.map_or(1, |r| r.max(0) as u32),
                    status: status.replicas.max(0) as u32,
                    ready: count(status.ready_replicas),
                    terminating: 0,
                    observed: observed(s.metadata.generation, status.observed_generation),
                })
            }
        }
    }

    async fn patch_replicas(&self, replicas: u32) -> Result<(), kube::Error> {
        let patch = Patch::Merge(serde_json::json!({ "spec": { "replicas": replicas } }));
        let params = PatchParams::default();
        let name = &self.settings.name;
        let namespace = &self.settings.namespace;
        match self.settings.kind {
            WorkloadKind::Deployment => {
                let api: Api<Deployment> = Api::namespaced(self.client.clone(), namespace);
                api.patch_scale(name, &params, &patch).await?;
            }
            WorkloadKind::StatefulSet => {
                let api: Api<StatefulSet> = Api::namespaced(self.client.clone(), namespace);
                api.patch_scale(name, &params, &patch).await?;
            }
        }
        Ok(())
    }

    /// One call toward `instances`: the outcome, or what failed.
    async fn step(&self, instances: u32) -> Result<Outcome, String> {
        let what = self.what();
        let before = self
            .read_replicas()
            .await
            .map_err(|e| format!("GET {what}: {}", with_causes(&e)))?;
        let next = if instances >= before.spec {
            instances
        } else if before.settled() {
            instances.max(before.spec.saturating_sub(self.settings.scale_in_step))
        } else {
            return Ok(Outcome {
                counts: Some(before.counts()),
                reached: false,
                note: format!(
                    "{what}: waiting for the last scale-in step to settle (spec {}, status {}, terminating {}) before going on to {instances}",
                    before.spec, before.status, before.terminating
                ),
                warning: None,
            });
        };
        if next == before.spec {
            return Ok(Outcome {
                counts: Some(before.counts()),
                reached: true,
                note: format!("{what}: already at {next} replicas"),
                warning: None,
            });
        }
        self.patch_replicas(next)
            .await
            .map_err(|e| format!("PATCH {what}/scale to {next} replicas: {}", with_causes(&e)))?;
        let after = self
            .read_replicas()
            .await
            .map_err(|e| format!("GET {what} after scaling to {next}: {}", with_causes(&e)))?;
        let reached = next == instances;
        Ok(Outcome {
            counts: Some(after.counts()),
            reached,
            note: if reached {
                format!("{what}: replicas {} → {next}", before.spec)
            } else {
                format!(
                    "{what}: replicas {} → {next} (a scale-in step of at most {}; {instances} wanted)",
                    before.spec, self.settings.scale_in_step
                )
            },
            warning: None,
        })
    }
}

impl RemoteBackend for KubernetesBackend {
    fn kind(&self) -> &'static str {
        "kubernetes"
    }

    fn capacity_key(target: &ProvisionTarget) -> String {
        target.instances.to_string()
    }

    fn apply(&mut self, target: &ProvisionTarget) -> Result<Outcome, CallError> {
        let timeout = self.settings.timeout;
        let result = self
            .runtime
            .block_on(async { tokio::time::timeout(timeout, self.step(target.instances)).await });
        match result {
            Err(_) => Err(CallError::timed_out(format!(
                "{}: no answer within {} s",
                self.what(),
                timeout.as_secs()
            ))),
            Ok(Err(message)) => Err(CallError::failed(message)),
            Ok(Ok(outcome)) => Ok(outcome),
        }
    }

    fn read(&mut self) -> Option<Result<Counts, CallError>> {
        let timeout = self.settings.timeout;
        let what = self.what();
        let result = self
            .runtime
            .block_on(async { tokio::time::timeout(timeout, self.read_replicas()).await });
        Some(match result {
            Err(_) => Err(CallError::timed_out(format!(
                "GET {what}: no answer within {} s",
                timeout.as_secs()
            ))),
            Ok(Err(e)) => Err(CallError::failed(format!(
                "GET {what}: {}",
                with_causes(&e)
            ))),
            Ok(Ok(replicas)) => Ok(replicas.counts()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prescale_brain::planner::Tiers;
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::TcpListener;
    use std::sync::{Arc, Mutex};

    /// A fake API server for one Deployment: `GET` of the deployment, `PATCH` of its scale
    /// subresource (a merge patch of `spec.replicas`). The status follows the spec two `GET`s
    /// after a change (pods take a moment to go), with `ready` pods at most.
    #[derive(Default)]
    struct Fake {
        spec: i64,
        status: i64,
        ready: i64,
        /// `GET`s left before the status catches up with the spec.
        lag: u32,
        patches: Vec<i64>,
        forbid: bool,
    }

    fn serve(fake: Arc<Mutex<Fake>>) -> std::net::SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let fake = Arc::clone(&fake);
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(stream);
                    loop {
                        let mut line = String::new();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        let mut parts = line.split_whitespace();
                        let (method, path) = (
                            parts.next().unwrap_or("").to_string(),
                            parts.next().unwrap_or("").to_string(),
                        );
                        let mut length = 0;
                        loop {
                            let mut header = String::new();
                            reader.read_line(&mut header).unwrap_or(0);
                            let header = header.trim_end();
                            if header.is_empty() {
                                break;
                            }
                            if let Some(v) =
                                header.to_ascii_lowercase().strip_prefix("content-length:")
                            {
                                length = v.trim().parse().unwrap_or(0);
                            }
                        }
                        let mut body = vec![0; length];
                        if reader.read_exact(&mut body).is_err() {
                            return;
                        }
                        let path = path.split('?').next().unwrap_or("").to_string();
                        let (status, answer) = answer(&fake, &method, &path, &body);
                        let stream = reader.get_mut();
                        let _ = write!(
                            stream,
                            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{answer}",
                            answer.len()
                        );
                    }
                });
            }
        });
        addr
    }

    fn answer(fake: &Mutex<Fake>, method: &str, path: &str, body: &[u8]) -> (&'static str, String) {
        let mut f = fake.lock().unwrap();
        let base = "/apis/apps/v1/namespaces/shop/deployments/web";
        if f.forbid {
            return (
                "403 Forbidden",
                r#"{"kind":"Status","apiVersion":"v1","status":"Failure","message":"deployments.apps \"web\" is forbidden","reason":"Forbidden","code":403}"#.into(),
            );
        }
        match (method, path) {
            ("GET", p) if p == base => {
                if f.lag > 0 {
                    f.lag -= 1;
                } else {
                    f.status = f.spec;
                }
                let ready = f.ready.min(f.status);
                (
                    "200 OK",
                    serde_json::json!({
                        "apiVersion": "apps/v1", "kind": "Deployment",
                        "metadata": { "name": "web", "namespace": "shop" },
                        "spec": { "replicas": f.spec },
                        "status": { "replicas": f.status, "readyReplicas": ready }
                    })
                    .to_string(),
                )
            }
            ("PATCH", p) if p == format!("{base}/scale") => {
                let patch: serde_json::Value = serde_json::from_slice(body).unwrap();
                let replicas = patch["spec"]["replicas"].as_i64().unwrap();
                f.patches.push(replicas);
                f.spec = replicas;
                // The read right after the patch and the next call's first one still see the
                // old pods.
                f.lag = 2;
                (
                    "200 OK",
                    serde_json::json!({
                        "apiVersion": "autoscaling/v1", "kind": "Scale",
                        "metadata": { "name": "web", "namespace": "shop" },
                        "spec": { "replicas": f.spec }, "status": { "replicas": f.status }
                    })
                    .to_string(),
                )
            }
            _ => (
                "404 Not Found",
                r#"{"kind":"Status","apiVersion":"v1","status":"Failure","code":404}"#.into(),
            ),
        }
    }

    fn kubeconfig(dir: &std::path::Path, addr: std::net::SocketAddr) -> PathBuf {
        let path = dir.join("kubeconfig");
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://{addr}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\ncurrent-context: fake\nusers:\n- name: fake\n  user:\n    token: test-token\n"
            ),
        )
        .expect("write kubeconfig");
        path
    }

    fn target(instances: u32) -> ProvisionTarget {
        ProvisionTarget {
            region: "eu".into(),
            fleet: "web".into(),
            instances,
            tiers: Tiers {
                total: instances,
                ..Tiers::default()
            },
            warm_pools: Vec::new(),
            plan_version: Some(1),
            reasons: Vec::new(),
        }
    }

    #[test]
    fn scales_out_at_once_and_in_by_steps_that_wait_for_the_last_one() {
        let fake = Arc::new(Mutex::new(Fake {
            spec: 2,
            status: 2,
            ready: 100,
            ..Fake::default()
        }));
        let addr = serve(Arc::clone(&fake));
        let dir = tempfile::tempdir().expect("temp dir");
        let mut k = KubernetesBackend::new(KubernetesSettings {
            namespace: "shop".into(),
            kind: WorkloadKind::Deployment,
            name: "web".into(),
            kubeconfig: Some(kubeconfig(dir.path(), addr)),
            scale_in_step: 2,
            timeout: Duration::from_secs(5),
        })
        .expect("backend");
        assert_eq!(
            k.read().expect("readable").expect("read"),
            Counts {
                ready: 2,
                warming: 0,
                draining: 0
            }
        );
        let out = k.apply(&target(7)).expect("scale out");
        assert!(out.reached, "{out:?}");
        assert_eq!(fake.lock().unwrap().patches, [7]);
        // The pods come up.
        let mut reads = 0;
        while k.read().expect("readable").expect("read").ready < 7 {
            reads += 1;
            assert!(reads < 5, "the fake's status never caught up");
        }

        // 7 → 2 with steps of 2: 5, then (once settled) 3, then 2.
        let mut outcomes = Vec::new();
        for _ in 0..10 {
            let out = k.apply(&target(2)).expect("scale in");
            let reached = out.reached;
            outcomes.push(out);
            if reached {
                break;
            }
        }
        assert_eq!(fake.lock().unwrap().patches, [7, 5, 3, 2]);
        assert!(outcomes.last().is_some_and(|o| o.reached));
        assert!(
            outcomes
                .iter()
                .any(|o| o.note.contains("waiting for the last scale-in step")),
            "the second step waited for the first: {outcomes:?}"
        );
        // The last step's pod is still going, then ready replicas come back as the counts.
        fake.lock().unwrap().ready = 1;
        assert_eq!(
            k.read().expect("readable").expect("read"),
            Counts {
                ready: 1,
                warming: 1,
                draining: 1
            }
        );
        assert_eq!(
            k.read().expect("readable").expect("read"),
            Counts {
                ready: 1,
                warming: 1,
                draining: 0
            }
        );
        fake.lock().unwrap().forbid = true;
        let e = k.apply(&target(4)).expect_err("forbidden");
        assert!(e.message.contains("forbidden"), "{}", e.message);
    }

    #[test]
    fn a_kubeconfig_that_cannot_be_used_names_the_key() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("kubeconfig");
        std::fs::write(&path, "clusters: [not, a, kubeconfig").expect("write");
        let settings = KubernetesSettings {
            namespace: "shop".into(),
            kind: WorkloadKind::StatefulSet,
            name: "db".into(),
            kubeconfig: Some(path),
            scale_in_step: 1,
            timeout: Duration::from_secs(1),
        };
        let e = KubernetesBackend::new(settings).err().expect("refused");
        assert!(e.to_string().starts_with("kubeconfig:"), "{e}");
    }
}
