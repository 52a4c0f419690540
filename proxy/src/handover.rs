//! Handing the proxy listener to a new binary (`prescale proxy --upgrade`): where the hand-over
//! socket and the node's instance lock live, taking the lock, and waiting for the old process to
//! let go of it.
//!
//! The listening socket crosses over by pingora's upgrade protocol: the new process binds the
//! hand-over socket and waits (pingora gives it 5 attempts a second apart); the old one, on
//! SIGQUIT, sends its listening file descriptors there, keeps accepting for pingora's close
//! timeout (5 s) while both processes accept on the same socket, then stops accepting and drains
//! the requests it has. No connection is refused meanwhile: the kernel queues them on the one
//! listening socket both processes hold.
//!
//! Nothing else a node binds or writes (admin listener, membership port, sketch spool) is
//! shared: the new process starts those once the old one has exited, which the instance lock
//! tells. It is an advisory `flock` on `SOCKET.lock`, taken before anything listens and held for
//! the process's life; the kernel releases it when the process ends, however it ends.
//!
//! Invariants: a running node holds its instance lock, so two nodes never run on one listener's
//! state at once; the default socket lives in a directory only this user may enter, since
//! whoever connects to the socket first hands the waiting process its listener.

use std::fs::{File, OpenOptions, TryLockError};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use prescale_config::Config;

/// Why the hand-over's socket or lock cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum HandoverError {
    /// Another node holds the instance lock.
    #[error(
        "another prescale node runs on this listener: it holds {} (to replace it without \
         closing the listener, start this one with --upgrade, then send the running one SIGQUIT)",
        lock.display()
    )]
    Held { lock: PathBuf },
    /// The lock file cannot be created or locked.
    #[error("instance lock {}: {source}", lock.display())]
    Lock {
        lock: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The default socket directory cannot be made, or others may enter it.
    #[error("hand-over directory {}: {reason} (set proxy.upgrade_socket to a path in a private directory)", dir.display())]
    Directory { dir: PathBuf, reason: String },
    /// The configured socket's directory does not exist.
    #[error("proxy.upgrade_socket {}: its directory does not exist", socket.display())]
    NoDirectory { socket: PathBuf },
}

/// Where a node's hand-over socket and instance lock are (see the module docs).
#[derive(Clone, Debug)]
pub struct Handover {
    socket: PathBuf,
    lock: PathBuf,
}

/// The instance lock, held until dropped (or the process ends).
#[derive(Debug)]
pub struct InstanceLock {
    _file: File,
}

impl Handover {
    /// `proxy.upgrade_socket`, or the default for `proxy.listen` (its directory made private
    /// when missing).
    pub fn for_config(config: &Config) -> Result<Self, HandoverError> {
        let socket = match &config.proxy.upgrade_socket {
            Some(socket) => {
                let dir = socket.parent().unwrap_or(Path::new("/"));
                if !dir.is_dir() {
                    return Err(HandoverError::NoDirectory {
                        socket: socket.clone(),
                    });
                }
                socket.clone()
            }
            None => {
                let listen = config.proxy.listen;
                private_dir()?.join(format!(
                    "prescale-{}-{}.upgrade",
                    listen.ip(),
                    listen.port()
                ))
            }
        };
        let mut lock = socket.clone().into_os_string();
        lock.push(".lock");
        Ok(Handover {
            socket,
            lock: PathBuf::from(lock),
        })
    }

    /// The socket a new process receives the listener on.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The instance lock's file.
    pub fn lock_path(&self) -> &Path {
        &self.lock
    }

    /// Takes the instance lock, or says who holds it.
    pub fn try_lock(&self) -> Result<InstanceLock, HandoverError> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&self.lock)
            .map_err(|source| HandoverError::Lock {
                lock: self.lock.clone(),
                source,
            })?;
        match file.try_lock() {
            Ok(()) => Ok(InstanceLock { _file: file }),
            Err(TryLockError::WouldBlock) => Err(HandoverError::Held {
                lock: self.lock.clone(),
            }),
            Err(TryLockError::Error(source)) => Err(HandoverError::Lock {
                lock: self.lock.clone(),
                source,
            }),
        }
    }

    /// Waits until the instance lock is free (the old process has exited), then takes it; says
    /// every `log_every` what it waits for.
    pub async fn wait_for_lock(&self, log_every: Duration) -> Result<InstanceLock, HandoverError> {
        let started = Instant::now();
        let mut logged = started;
        loop {
            match self.try_lock() {
                Ok(lock) => return Ok(lock),
                Err(HandoverError::Held { .. }) => {}
                Err(e) => return Err(e),
            }
            if logged.elapsed() >= log_every {
                logged = Instant::now();
                tracing::warn!(
                    lock = %self.lock.display(),
                    waited_secs = started.elapsed().as_secs(),
                    "serving on the handed-over listener; the old process still runs, so the admin \
                     listener, membership and sketch export wait for it to exit"
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Whether a new process waits on the socket for the listener (the socket file exists).
    pub fn has_waiting_process(&self) -> bool {
        std::fs::symlink_metadata(&self.socket).is_ok_and(|m| m.file_type().is_socket())
    }

    /// The socket path as pingora takes it.
    pub fn socket_text(&self) -> Result<String, HandoverError> {
        self.socket
            .to_str()
            .map(str::to_string)
            .ok_or_else(|| HandoverError::Directory {
                dir: self.socket.clone(),
                reason: "the path is not valid UTF-8".into(),
            })
    }
}

/// `$XDG_RUNTIME_DIR` (private by its specification), or the temp directory's `prescale-UID`,
/// made with mode 0700 when missing and refused when another user owns it or others may enter.
fn private_dir() -> Result<PathBuf, HandoverError> {
    if let Some(runtime) = std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from) {
        if runtime.is_absolute() && runtime.is_dir() {
            return Ok(runtime);
        }
    }
    let fail = |dir: &Path, reason: String| HandoverError::Directory {
        dir: dir.to_path_buf(),
        reason,
    };
    // This process's effective user owns its /proc entry.
    let uid = std::fs::metadata("/proc/self")
        .map_err(|e| {
            fail(
                Path::new("/proc/self"),
                format!("cannot tell this user: {e}"),
            )
        })?
        .uid();
    let dir = std::env::temp_dir().join(format!("prescale-{uid}"));
    match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(fail(&dir, format!("cannot create it: {e}"))),
    }
    let meta = std::fs::symlink_metadata(&dir).map_err(|e| fail(&dir, e.to_string()))?;
    if !meta.is_dir() {
        return Err(fail(&dir, "it is not a directory".into()));
    }
    if meta.uid() != uid {
        return Err(fail(
            &dir,
            format!("it belongs to user {}, not to this one ({uid})", meta.uid()),
        ));
    }
    if meta.mode() & 0o077 != 0 {
        return Err(fail(
            &dir,
            format!(
                "others may enter it (mode {:o}); expected 700",
                meta.mode() & 0o777
            ),
        ));
    }
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        prescale_config::parse_str(
            r#"
[identity]
secret = "handover-secret-0123456789"
[[regions]]
name = "eu"
[[fleets]]
name = "web"
region = "eu"
backends = ["127.0.0.1:9001"]
"#,
            "test.toml",
        )
        .expect("valid")
    }

    fn handover_in(dir: &Path) -> Handover {
        let mut config = config();
        config.proxy.upgrade_socket = Some(dir.join("upgrade.sock"));
        Handover::for_config(&config).expect("hand-over")
    }

    #[test]
    fn one_node_holds_the_lock_and_the_next_takes_it_once_released() {
        let dir = tempfile::tempdir().expect("temp dir");
        let handover = handover_in(dir.path());
        assert_eq!(handover.lock_path(), dir.path().join("upgrade.sock.lock"));
        let held = handover.try_lock().expect("first lock");
        let refused = handover.try_lock().expect_err("held");
        assert!(matches!(refused, HandoverError::Held { .. }), "{refused}");
        assert!(refused.to_string().contains("--upgrade"), "{refused}");
        drop(held);
        handover.try_lock().expect("free again");
    }

    #[test]
    fn a_waiting_process_is_a_socket_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let handover = handover_in(dir.path());
        assert!(!handover.has_waiting_process());
        std::fs::write(handover.socket(), b"").expect("plain file");
        assert!(!handover.has_waiting_process());
        std::fs::remove_file(handover.socket()).expect("remove");
        let _listener =
            std::os::unix::net::UnixListener::bind(handover.socket()).expect("bind socket");
        assert!(handover.has_waiting_process());
    }

    #[test]
    fn a_configured_socket_needs_its_directory() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = config();
        config.proxy.upgrade_socket = Some(dir.path().join("missing/upgrade.sock"));
        let e = Handover::for_config(&config).expect_err("no directory");
        assert!(e.to_string().contains("does not exist"), "{e}");
    }
}
