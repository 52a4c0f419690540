//! The `exec` provisioner: runs a configured command each time the plan's target changes (and
//! again after a failure), with the desired counts as arguments and the desired state as a JSON
//! document on stdin. The instances run wherever the command puts them; the proxies keep routing
//! to the fleet's `backends`.
//!
//! The call, exactly: the configured program and arguments, then
//! `--region R --fleet F --instances N --baseline N --predictive N --burst N --guard N
//! --warm-pool N --total N --plan-version V` (`--instances` is the serving count the plan wants,
//! what to scale to; the tiers are how the plan arrived at it). Its stdin is the same JSON
//! document the webhook posts ([`super::ProvisionTarget`] serialized: `region`, `fleet`,
//! `instances`, `tiers`, `warm_pools`, `plan_version`, `reasons`), followed by a newline.
//!
//! Exit 0 is success. On stdout the command may print the actual counts,
//! `{"ready": N, "warming": N, "draining": N}` (any of them; anything else on stdout that is not
//! empty is noted as a warning and ignored). A non-zero exit is a failed call whose stderr (the
//! first 2 KiB) is the error in the status; so is a command still running after
//! `timeout_secs`, whose whole process group (it runs in its own) is killed. Failed calls are
//! retried with backoff ([`super::remote`]).

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::remote::{excerpt, parse_counts, CallError, Outcome, RemoteBackend};
use super::{ProvisionTarget, SetupError};

/// Most of a command's stderr kept for the error.
const STDERR_KEPT: usize = 2048;
/// Most of a command's stdout read for counts.
const STDOUT_KEPT: usize = 64 * 1024;
/// How long output is waited for after the command exited (a background child it left behind
/// may hold the pipes open).
const OUTPUT_GRACE: Duration = Duration::from_millis(500);

/// The `exec` provisioner's settings.
#[derive(Clone, Debug)]
pub struct ExecSettings {
    /// Program and arguments; the counts are appended.
    pub command: Vec<String>,
    /// How long one run may take.
    pub timeout: Duration,
}

/// Runs the command; see the module docs.
pub struct ExecBackend {
    settings: ExecSettings,
}

impl ExecBackend {
    pub fn new(settings: ExecSettings) -> Result<Self, SetupError> {
        if settings.command.first().is_none_or(|p| p.trim().is_empty()) {
            return Err(SetupError::config(
                "command",
                "expected a program and its arguments",
            ));
        }
        Ok(ExecBackend { settings })
    }

    fn program(&self) -> &str {
        self.settings.command.first().map_or("", String::as_str)
    }
}

/// The arguments appended to the command for `target`.
pub fn arguments(target: &ProvisionTarget) -> Vec<String> {
    let t = &target.tiers;
    let mut args = vec![
        "--region".to_string(),
        target.region.clone(),
        "--fleet".to_string(),
        target.fleet.clone(),
    ];
    for (name, value) in [
        ("--instances", target.instances),
        ("--baseline", t.baseline),
        ("--predictive", t.predictive),
        ("--burst", t.burst),
        ("--guard", t.guard),
        ("--warm-pool", t.warm_pool),
        ("--total", t.total),
    ] {
        args.push(name.to_string());
        args.push(value.to_string());
    }
    args.push("--plan-version".to_string());
    args.push(target.plan_version.unwrap_or_default().to_string());
    args
}

/// Reads `pipe` to its end on its own thread, keeping at most `max` bytes; the flag says the
/// end was reached.
fn collect(mut pipe: impl Read + Send + 'static, max: usize) -> Arc<Mutex<(Vec<u8>, bool)>> {
    let out = Arc::new(Mutex::new((Vec::new(), false)));
    let sink = Arc::clone(&out);
    std::thread::spawn(move || {
        let mut buffer = [0u8; 4096];
        loop {
            match pipe.read(&mut buffer) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let mut out = sink.lock().unwrap_or_else(|p| p.into_inner());
                    let room = max.saturating_sub(out.0.len());
                    out.0.extend_from_slice(&buffer[..n.min(room)]);
                }
            }
        }
        sink.lock().unwrap_or_else(|p| p.into_inner()).1 = true;
    });
    out
}

/// What was collected, once the reader finished or `until` passed.
fn collected(buffer: &Arc<Mutex<(Vec<u8>, bool)>>, until: Instant) -> Vec<u8> {
    loop {
        {
            let out = buffer.lock().unwrap_or_else(|p| p.into_inner());
            if out.1 || Instant::now() >= until {
                return out.0.clone();
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn kill_group(pid: u32) {
    // The command runs in its own process group (its pid): everything it started goes too.
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{pid}")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

impl RemoteBackend for ExecBackend {
    fn kind(&self) -> &'static str {
        "exec"
    }

    fn apply(&mut self, target: &ProvisionTarget) -> Result<Outcome, CallError> {
        let program = self.program().to_string();
        let mut document = serde_json::to_vec(target)
            .map_err(|e| CallError::failed(format!("cannot write the target document: {e}")))?;
        document.push(b'\n');
        let mut command = Command::new(&program);
        command
            .args(&self.settings.command[1..])
            .args(arguments(target))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        {
            use std::os::unix::process::CommandExt;
            command.process_group(0);
        }
        let mut child = command
            .spawn()
            .map_err(|e| CallError::failed(format!("cannot start `{program}`: {e}")))?;
        let started = Instant::now();
        if let Some(mut stdin) = child.stdin.take() {
            // On its own thread: a command that never reads its stdin must not stall us.
            std::thread::spawn(move || {
                let _ = stdin.write_all(&document);
            });
        }
        let stdout = child.stdout.take().map(|p| collect(p, STDOUT_KEPT));
        let stderr = child.stderr.take().map(|p| collect(p, STDERR_KEPT));
        let deadline = started + self.settings.timeout;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() >= deadline => {
                    kill_group(child.id());
                    let _ = child.wait();
                    let stderr = stderr
                        .as_ref()
                        .map(|b| collected(b, Instant::now() + OUTPUT_GRACE))
                        .unwrap_or_default();
                    return Err(CallError::timed_out(format!(
                        "`{program}` did not finish within {} s; its process group was killed{}",
                        self.settings.timeout.as_secs(),
                        stderr_text(&stderr)
                    )));
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(10)),
                Err(e) => {
                    kill_group(child.id());
                    return Err(CallError::failed(format!(
                        "`{program}` cannot be waited for: {e}"
                    )));
                }
            }
        };
        let until = Instant::now() + OUTPUT_GRACE;
        let stderr = stderr
            .as_ref()
            .map(|b| collected(b, until))
            .unwrap_or_default();
        if !status.success() {
            return Err(CallError::failed(format!(
                "`{program}` {status}{}",
                stderr_text(&stderr)
            )));
        }
        let stdout = stdout
            .as_ref()
            .map(|b| collected(b, until))
            .unwrap_or_default();
        let (counts, warning) = match parse_counts(&stdout) {
            Ok(counts) => (counts, None),
            Err(why) => (None, Some(format!("`{program}` stdout: {why}"))),
        };
        Ok(Outcome {
            counts,
            reached: true,
            note: format!(
                "`{program}` ran for {} instances in {} ms",
                target.instances,
                started.elapsed().as_millis()
            ),
            warning,
        })
    }
}

/// `: <stderr>` (trimmed, bounded), or `` when it said nothing.
fn stderr_text(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let text = text.trim();
    if text.is_empty() {
        " (nothing on stderr)".to_string()
    } else {
        format!("; stderr: {}", excerpt(text, STDERR_KEPT))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prescale_brain::planner::Tiers;

    fn target() -> ProvisionTarget {
        ProvisionTarget {
            region: "eu".into(),
            fleet: "web".into(),
            instances: 5,
            tiers: Tiers {
                baseline: 1,
                predictive: 2,
                burst: 1,
                guard: 0,
                warm_pool: 1,
                total: 5,
            },
            warm_pools: Vec::new(),
            plan_version: Some(42),
            reasons: vec!["p99 forecast 9 req/s".into()],
        }
    }

    fn backend(script: &str, timeout: Duration) -> ExecBackend {
        ExecBackend::new(ExecSettings {
            command: vec!["sh".into(), "-c".into(), script.into(), "scale".into()],
            timeout,
        })
        .expect("backend")
    }

    #[test]
    fn the_command_gets_the_counts_as_arguments_and_the_document_on_stdin() {
        let dir = tempfile::tempdir().expect("temp dir");
        let args = dir.path().join("args");
        let stdin = dir.path().join("stdin");
        let script = format!(
            "printf '%s\\n' \"$@\" > {}; cat > {}; echo '{{\"ready\": 4, \"warming\": 1}}'",
            args.display(),
            stdin.display()
        );
        let outcome = backend(&script, Duration::from_secs(10))
            .apply(&target())
            .expect("success");
        assert_eq!(
            outcome.counts,
            Some(super::super::remote::Counts {
                ready: 4,
                warming: 1,
                draining: 0
            })
        );
        assert!(outcome.reached && outcome.warning.is_none());
        let args = std::fs::read_to_string(&args).expect("args");
        assert_eq!(
            args.lines().collect::<Vec<_>>(),
            [
                "--region",
                "eu",
                "--fleet",
                "web",
                "--instances",
                "5",
                "--baseline",
                "1",
                "--predictive",
                "2",
                "--burst",
                "1",
                "--guard",
                "0",
                "--warm-pool",
                "1",
                "--total",
                "5",
                "--plan-version",
                "42"
            ]
        );
        let document: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&stdin).expect("stdin")).expect("json");
        assert_eq!(document["instances"], 5);
        assert_eq!(document["plan_version"], 42);
        assert_eq!(document["tiers"]["predictive"], 2);
        assert_eq!(document["reasons"][0], "p99 forecast 9 req/s");
    }

    #[test]
    fn a_failing_command_is_an_error_with_its_stderr() {
        let e = backend(
            "echo 'quota exceeded for pool web' >&2; exit 3",
            Duration::from_secs(10),
        )
        .apply(&target())
        .expect_err("failure");
        assert!(!e.timed_out);
        assert!(e.message.contains("exit status: 3"), "{}", e.message);
        assert!(
            e.message.contains("quota exceeded for pool web"),
            "{}",
            e.message
        );

        let e = ExecBackend::new(ExecSettings {
            command: vec!["/nonexistent/scaler".into()],
            timeout: Duration::from_secs(1),
        })
        .expect("backend")
        .apply(&target())
        .expect_err("cannot start");
        assert!(e.message.contains("/nonexistent/scaler"), "{}", e.message);
    }

    #[test]
    fn a_command_past_its_timeout_is_killed_with_its_children() {
        let dir = tempfile::tempdir().expect("temp dir");
        let pid_file = dir.path().join("child.pid");
        let script = format!("sleep 60 & echo $! > {}; wait", pid_file.display());
        let e = backend(&script, Duration::from_millis(500))
            .apply(&target())
            .expect_err("timeout");
        assert!(e.timed_out, "{}", e.message);
        assert!(e.message.contains("did not finish within"), "{}", e.message);
        let pid = std::fs::read_to_string(&pid_file).expect("pid");
        let pid = pid.trim();
        // The background sleep was in the command's group: it is gone (or a zombie being reaped).
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let alive = state
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next())
                .is_some_and(|s| s != "Z" && s != "X");
            if !alive {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the command's child {pid} still runs"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn stdout_that_is_not_counts_is_a_warning_not_a_failure() {
        let outcome = backend("echo 'scaled web to 5'", Duration::from_secs(10))
            .apply(&target())
            .expect("success");
        assert_eq!(outcome.counts, None);
        assert!(outcome
            .warning
            .is_some_and(|w| w.contains("not a counts document") && w.contains("scaled web to 5")));
    }
}
