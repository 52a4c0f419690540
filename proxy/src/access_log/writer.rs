//! The access log's writer thread: takes queued entries, formats them in batches and appends
//! each batch with one write; opens the file again when asked.
//!
//! Invariants: the thread is the only writer of the sink; it never blocks on the queue but
//! polls it every [`POLL_INTERVAL`], so a request's send never has to wake it (a wake-up is a
//! system call and, on a proxy pinned to one core, a context switch per request); each poll
//! takes every waiting line, in batches of at most [`BATCH_BYTES`] (plus one line) each written
//! with one write, so a line reaches the file within about one interval of its request's end
//! when the disk keeps up; reopen and close requests are seen at the next poll.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{AccessEntry, AccessLogError, LogNames, Shared};

/// How long the writer sleeps between polls of the queue.
pub const POLL_INTERVAL: Duration = Duration::from_millis(20);
/// A batch is written once it is this large, even while more lines wait.
const BATCH_BYTES: usize = 64 * 1024;
/// Write failures are logged at most this often.
const WARN_INTERVAL: Duration = Duration::from_secs(10);

/// Where lines go.
pub enum Sink {
    Stdout,
    File { path: PathBuf, file: File },
}

impl Sink {
    pub fn open(path: PathBuf) -> Result<Self, AccessLogError> {
        match open_append(&path) {
            Ok(file) => Ok(Sink::File { path, file }),
            Err(source) => Err(AccessLogError::Open { path, source }),
        }
    }

    fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            Sink::Stdout => {
                let mut out = std::io::stdout().lock();
                out.write_all(bytes)?;
                out.flush()
            }
            Sink::File { file, .. } => file.write_all(bytes),
        }
    }

    /// Opens the path again; on failure the current file stays.
    fn reopen(&mut self) -> Option<std::io::Result<()>> {
        let Sink::File { path, file } = self else {
            return None;
        };
        Some(open_append(path).map(|new| *file = new))
    }
}

fn open_append(path: &PathBuf) -> std::io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

pub struct Writer {
    pub received: Receiver<Box<AccessEntry>>,
    pub sink: Sink,
    pub format: fn(&mut Vec<u8>, &AccessEntry, &LogNames),
    pub names: LogNames,
    pub shared: Arc<Shared>,
}

impl Writer {
    pub fn run(mut self) {
        let mut batch = Vec::with_capacity(BATCH_BYTES + 4096);
        let mut last_warned: Option<Instant> = None;
        loop {
            // Read before draining: a close asked for now finds every line already queued.
            let closing = self.shared.closing.load(Ordering::Relaxed);
            if self.shared.reopen_requested.swap(false, Ordering::Relaxed) {
                self.reopen();
            }
            let mut disconnected = false;
            loop {
                let mut lines = 0u64;
                while batch.len() < BATCH_BYTES {
                    match self.received.try_recv() {
                        Ok(entry) => {
                            (self.format)(&mut batch, &entry, &self.names);
                            lines += 1;
                        }
                        Err(TryRecvError::Empty) => break,
                        Err(TryRecvError::Disconnected) => {
                            disconnected = true;
                            break;
                        }
                    }
                }
                if lines == 0 {
                    break;
                }
                self.write_batch(&batch, lines, &mut last_warned);
                batch.clear();
            }
            if closing || disconnected {
                return;
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    fn write_batch(&mut self, batch: &[u8], lines: u64, last_warned: &mut Option<Instant>) {
        let counters = &self.shared.counters;
        match self.sink.write_all(batch) {
            Ok(()) => {
                counters.written.fetch_add(lines, Ordering::Relaxed);
            }
            Err(error) => {
                counters
                    .dropped_write_error
                    .fetch_add(lines, Ordering::Relaxed);
                if last_warned.is_none_or(|at| at.elapsed() >= WARN_INTERVAL) {
                    *last_warned = Some(Instant::now());
                    tracing::warn!(%error, lines, "access log lines could not be written");
                }
            }
        }
    }

    fn reopen(&mut self) {
        let counters = &self.shared.counters;
        match self.sink.reopen() {
            None => {
                tracing::info!("SIGUSR1: the access log goes to standard output; nothing to reopen")
            }
            Some(Ok(())) => {
                counters.reopens.fetch_add(1, Ordering::Relaxed);
                tracing::info!("access log reopened");
            }
            Some(Err(error)) => {
                counters.reopen_failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%error, "access log could not be reopened; writing to the file already open");
            }
        }
    }
}
