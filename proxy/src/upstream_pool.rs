//! Idle upstream connections of one backend for the direct path (`http1`): bounded stacks of
//! keep-alive streams with the time they went idle, one stack per worker thread, reused last in,
//! first out: the most recently used connection serves the next request, so under a falling load
//! the surplus goes unused, reaches the idle timeout and is closed, rather than every connection
//! being kept barely alive in turn.
//!
//! Why not pingora's pool: taking a connection back from it locks an async mutex, checks the
//! socket's peer with a `getpeername` call, and every release spawns a task that watches the idle
//! connection. Per request on small responses that was several percent of the proxy's CPU. A
//! stack here is a plain mutex that only its own worker thread takes on the request path (the
//! reaper and `clear` take it rarely), so it is never contended there.
//!
//! Invariants: at most `capacity` connections wait per backend (a release beyond that closes the
//! connection); a thread reuses only connections it released itself (with per-thread runtimes,
//! those its own event loop watches); a connection idle longer than the idle timeout, or that has become readable
//! while idle (closed by the backend, or unexpected bytes), is never handed out, and
//! [`IdleConnections::reap`] (the fleet's health-check round) closes those past the timeout
//! that no request came for. Times are milliseconds of the fleet's monotonic clock (real time,
//! whatever the node clock's speed-up). A connection
//! the backend closed so recently that the close is not yet seen can still be handed out: the
//! direct path retries such a failure once on a new connection (see `http1`).

use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Waker};
use std::time::Duration;

use pingora::protocols::Stream;
use std::sync::{Mutex, MutexGuard};
use tokio::io::AsyncReadExt;

/// Idle keep-alive connections to one backend, one queue per proxy worker thread.
/// A connection waiting, with the fleet-clock millisecond it went idle.
struct IdleStream {
    stream: Stream,
    idle_since_ms: u64,
}

pub struct IdleConnections {
    stripes: Box<[Mutex<Vec<IdleStream>>]>,
    per_stripe: usize,
    idle_timeout_ms: u64,
}

static NEXT_THREAD_STRIPE: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// This thread's queue number (modulo the stripe count). Only the proxy's worker threads
    /// handle requests, so with one stripe per worker each has its own queue.
    static THREAD_STRIPE: usize = NEXT_THREAD_STRIPE.fetch_add(1, Ordering::Relaxed);
}

impl std::fmt::Debug for IdleConnections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdleConnections")
            .field("idle", &self.len())
            .field("stripes", &self.stripes.len())
            .finish()
    }
}

impl IdleConnections {
    /// At most `capacity` idle connections in all, shared out over `stripes` queues (one per
    /// worker thread: a connection is reused on the thread whose event loop watches it).
    pub fn new(capacity: usize, stripes: usize, idle_timeout: Duration) -> Self {
        let stripes = stripes.max(1);
        let per_stripe = (capacity / stripes).max(1);
        IdleConnections {
            stripes: (0..stripes)
                .map(|_| Mutex::new(Vec::with_capacity(per_stripe.min(64))))
                .collect(),
            per_stripe,
            idle_timeout_ms: (idle_timeout.as_millis() as u64).max(1),
        }
    }

    fn own_stripe(&self) -> MutexGuard<'_, Vec<IdleStream>> {
        let stripe = THREAD_STRIPE.with(|s| *s) % self.stripes.len();
        lock(&self.stripes[stripe])
    }

    /// An idle connection of this thread still fit for a request, if any (`now_ms` on the
    /// fleet's clock).
    pub fn take(&self, now_ms: u64) -> Option<Stream> {
        let mut stack = self.own_stripe();
        while let Some(IdleStream {
            mut stream,
            idle_since_ms,
        }) = stack.pop()
        {
            if now_ms.saturating_sub(idle_since_ms) > self.idle_timeout_ms {
                // Everything below went idle earlier still: all past the timeout.
                stack.clear();
                return None;
            }
            if still_quiet(&mut stream) {
                return Some(stream);
            }
        }
        None
    }

    /// Keeps `stream` for a later request on this thread; closes it when the queue is full.
    pub fn put(&self, stream: Stream, now_ms: u64) {
        let mut stack = self.own_stripe();
        // A full stack: the stream is dropped, which closes the connection.
        if stack.len() < self.per_stripe {
            stack.push(IdleStream {
                stream,
                idle_since_ms: now_ms,
            });
        }
    }

    /// Closes the connections idle past the timeout at `now_ms`, on every thread; the others
    /// wait on. Returns how many were closed.
    pub fn reap(&self, now_ms: u64) -> usize {
        let mut closed = 0;
        for stripe in self.stripes.iter() {
            let mut stack = lock(stripe);
            // Oldest at the bottom: the expired ones are a prefix.
            let expired = stack
                .iter()
                .take_while(|idle| now_ms.saturating_sub(idle.idle_since_ms) > self.idle_timeout_ms)
                .count();
            // Dropped outside the lock (closing is a system call).
            let gone: Vec<IdleStream> = stack.drain(..expired).collect();
            drop(stack);
            closed += gone.len();
        }
        closed
    }

    /// Closes every idle connection, on all threads (the backend gets no more requests).
    pub fn clear(&self) {
        for stripe in self.stripes.iter() {
            let gone = std::mem::take(&mut *lock(stripe));
            drop(gone);
        }
    }

    /// Connections waiting, on all threads.
    pub fn len(&self) -> usize {
        self.stripes.iter().map(|stripe| lock(stripe).len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A stack's lock; a thread that panicked holding it left a valid stack (every change is one
/// `Vec` call), so a poisoned lock is taken as it is.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
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

#[cfg(test)]
mod tests {
    use super::*;
    use pingora::protocols::l4::stream::Stream as L4Stream;
    use tokio::io::AsyncWriteExt;
    use tokio::net::{TcpListener, TcpStream};

    /// A connected pair: the pool's side (as pingora streams it) and the backend's side.
    async fn pair(listener: &TcpListener) -> (Stream, TcpStream) {
        let addr = listener.local_addr().expect("addr");
        let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let client: Stream = Box::new(L4Stream::from(client.expect("connect")));
        (client, accepted.expect("accept").0)
    }

    #[tokio::test(flavor = "current_thread")]
    async fn connections_are_reused_on_their_thread_while_fresh_and_quiet() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let idle = IdleConnections::new(8, 2, Duration::from_secs(60));
        let now = 1_000_000;

        let (stream, _backend) = pair(&listener).await;
        idle.put(stream, now);
        assert_eq!(idle.len(), 1);
        // A thread on another stripe has its own stack. (Stripes are dealt to threads in turn,
        // over every test's threads: a few are tried until one lands on the other stripe.)
        let mine = THREAD_STRIPE.with(|s| *s) % 2;
        let other_took = std::thread::scope(|s| {
            (0..16).find_map(|_| {
                s.spawn(|| {
                    (THREAD_STRIPE.with(|s| *s) % 2 != mine).then(|| idle.take(now).is_some())
                })
                .join()
                .expect("thread")
            })
        });
        assert_eq!(
            other_took,
            Some(false),
            "another stripe's thread takes nothing"
        );
        assert!(
            idle.take(now).is_some(),
            "this thread's connection is reused"
        );
        assert!(idle.is_empty());

        // Idle for longer than the timeout: closed, not handed out.
        let (stream, _backend) = pair(&listener).await;
        idle.put(stream, now);
        assert!(idle.take(now + 60_001).is_none());

        // Closed by the backend while idle: not handed out.
        let (stream, backend) = pair(&listener).await;
        idle.put(stream, now);
        drop(backend);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(idle.take(now).is_none());

        // Bytes while idle (a backend out of step): not handed out.
        let (stream, mut backend) = pair(&listener).await;
        idle.put(stream, now);
        backend
            .write_all(b"HTTP/1.1 200 OK\r\n\r\n")
            .await
            .expect("write");
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(idle.take(now).is_none());
        assert!(idle.is_empty());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn reaping_closes_only_connections_idle_past_the_timeout() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let idle = IdleConnections::new(8, 1, Duration::from_millis(4_000));
        let (old, mut old_backend) = pair(&listener).await;
        let (fresh, _fresh_backend) = pair(&listener).await;
        idle.put(old, 1_000);
        idle.put(fresh, 4_000);
        assert_eq!(idle.reap(5_001), 1);
        assert_eq!(idle.len(), 1);
        // The backend sees the reaped connection closed.
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(
            Duration::from_secs(5),
            tokio::io::AsyncReadExt::read(&mut old_backend, &mut byte),
        )
        .await
        .expect("closed in time");
        assert_eq!(read.expect("read"), 0);
        assert!(idle.take(5_001).is_some(), "the fresh one is still reused");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn the_most_recently_idle_connection_is_reused_first() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let idle = IdleConnections::new(8, 1, Duration::from_millis(4_000));
        let (older, _a) = pair(&listener).await;
        let (newer, _b) = pair(&listener).await;
        let newer_port = newer
            .get_socket_digest()
            .and_then(|d| d.local_addr().and_then(|a| a.as_inet()).map(|a| a.port()));
        idle.put(older, 1_000);
        idle.put(newer, 2_000);
        let taken = idle.take(2_500).expect("a connection");
        let taken_port = taken
            .get_socket_digest()
            .and_then(|d| d.local_addr().and_then(|a| a.as_inet()).map(|a| a.port()));
        assert_eq!(taken_port, newer_port, "last in, first out");
        // The older one, unused, is reaped once past the timeout.
        assert_eq!(idle.reap(5_001), 1);
        assert!(idle.is_empty());
    }

    #[test]
    fn the_capacity_is_shared_out_over_the_threads() {
        let idle = IdleConnections::new(512, 4, Duration::from_secs(60));
        assert_eq!(idle.stripes.len(), 4);
        assert_eq!(idle.per_stripe, 128);
        let one = IdleConnections::new(512, 0, Duration::from_secs(60));
        assert_eq!(one.stripes.len(), 1);
    }
}
