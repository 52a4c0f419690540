//! Idle upstream connections of one backend for the direct path (`forward`): a bounded lock-free
//! queue of keep-alive streams with the second they went idle.
//!
//! Why not pingora's pool: taking a connection back from it locks an async mutex, checks the
//! socket's peer with a `getpeername` call, and every release spawns a task that watches the idle
//! connection. Per request on small responses that was several percent of the proxy's CPU.
//!
//! Invariants: at most `capacity` connections wait per backend (a release beyond that closes the
//! connection); a connection idle longer than the idle timeout, or that has become readable
//! while idle (closed by the backend, or unexpected bytes), is never handed out. A connection
//! the backend closed so recently that the close is not yet seen can still be handed out: the
//! direct path retries such a failure once on a new connection (see `forward`).

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Waker};
use std::time::Duration;

use crossbeam_queue::ArrayQueue;
use pingora::protocols::Stream;
use tokio::io::AsyncReadExt;

/// Idle keep-alive connections to one backend.
pub struct IdleConnections {
    queue: ArrayQueue<(Stream, u64)>,
    idle_timeout_secs: u64,
}

impl std::fmt::Debug for IdleConnections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdleConnections")
            .field("idle", &self.queue.len())
            .field("capacity", &self.queue.capacity())
            .finish()
    }
}

impl IdleConnections {
    pub fn new(capacity: usize, idle_timeout: Duration) -> Self {
        IdleConnections {
            queue: ArrayQueue::new(capacity.max(1)),
            idle_timeout_secs: idle_timeout.as_secs().max(1),
        }
    }

    /// An idle connection still fit for a request, if any (`now` in unix seconds).
    pub fn take(&self, now: u64) -> Option<Stream> {
        while let Some((mut stream, idle_since)) = self.queue.pop() {
            if now.saturating_sub(idle_since) > self.idle_timeout_secs {
                continue;
            }
            if still_quiet(&mut stream) {
                return Some(stream);
            }
        }
        None
    }

    /// Keeps `stream` for a later request; closes it when the queue is full.
    pub fn put(&self, stream: Stream, now: u64) {
        // A full queue hands the stream back: dropping it closes the connection.
        let _ = self.queue.push((stream, now));
    }

    /// Connections waiting.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
}

/// Whether an idle connection has nothing to read: a backend never speaks first on an idle
/// HTTP/1 connection, so readable means closed (EOF), broken, or out of step.
fn still_quiet(stream: &mut Stream) -> bool {
    let mut byte = [0u8; 1];
    // `unconstrained`: the cooperative budget must not make a ready read look pending.
    let read = pin!(tokio::task::unconstrained(stream.read(&mut byte)));
    read.poll(&mut Context::from_waker(Waker::noop()))
        .is_pending()
}
