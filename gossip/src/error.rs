//! The crate's one error type. Decoding failures are typed variants (so callers and tests can
//! tell truncated from oversized from unknown-version input); IO and TLS failures carry the
//! context of what was being done.

use std::path::PathBuf;

/// Everything that can go wrong in `prescale-gossip`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Fewer bytes than the envelope header or its declared body length.
    #[error("truncated frame: need {needed} bytes, got {got}")]
    Truncated { needed: usize, got: usize },
    /// The first bytes are not this protocol's magic.
    #[error("not a prescale gossip frame (bad magic)")]
    BadMagic,
    /// A format version this build does not read.
    #[error("frame format version {found} is not supported (this build reads {supported})")]
    UnknownVersion { found: u16, supported: u16 },
    /// A message kind this build does not know.
    #[error("unknown message kind {0}")]
    UnknownKind(u8),
    /// The declared or actual body length exceeds the configured limit.
    #[error("frame body of {len} bytes exceeds the limit of {max} bytes")]
    Oversized { len: usize, max: usize },
    /// Bytes that do not parse as the declared message, or trailing bytes after it.
    #[error("malformed {what}: {detail}")]
    Malformed { what: &'static str, detail: String },
    /// A message that parses but breaks an invariant (bad HLL register, duplicate key, ...).
    #[error("invalid {what}: {detail}")]
    Invalid { what: &'static str, detail: String },
    /// Two sketches that cannot be merged (different HLL precision, ...).
    #[error("cannot merge: {0}")]
    Merge(String),
    /// A histogram could not be serialized or deserialized.
    #[error("latency histogram: {0}")]
    Histogram(String),
    /// A filesystem operation failed.
    #[error("{context} {}: {error}", path.display())]
    Io {
        context: &'static str,
        path: PathBuf,
        error: std::io::Error,
    },
    /// Another process (or another spool in this one) holds the spool directory.
    #[error(
        "spool {} is in use by another sender (it holds {}); each node needs a spool directory of its own",
        dir.display(),
        lock.display()
    )]
    SpoolInUse { dir: PathBuf, lock: PathBuf },
    /// Certificates or keys could not be generated, loaded or used.
    #[error("tls: {0}")]
    Tls(String),
    /// A bad argument (node name, config value).
    #[error("invalid argument: {0}")]
    Argument(String),
    /// The QUIC transport failed (bind, connect, stream).
    #[error("transport: {0}")]
    Transport(String),
    /// The peer answered something other than what the protocol expects.
    #[error("protocol: {0}")]
    Protocol(String),
    /// The peer reset the stream instead of answering (see `receiver::RESET_*`).
    #[error("peer rejected the message (stream reset with code {code})")]
    PeerRejected { code: u64 },
    /// The caller-provided sink failed to store a sketch (now; the node resends it).
    #[error("sink: {0}")]
    Sink(String),
    /// The sink will never store this sketch (the node is told, and drops it).
    #[error("sketch refused ({reason}): {detail}")]
    Refused {
        reason: crate::messages::Refusal,
        detail: String,
    },
}

impl Error {
    pub(crate) fn io(
        context: &'static str,
        path: impl Into<PathBuf>,
        error: std::io::Error,
    ) -> Self {
        Error::Io {
            context,
            path: path.into(),
            error,
        }
    }

    pub(crate) fn invalid(what: &'static str, detail: impl Into<String>) -> Self {
        Error::Invalid {
            what,
            detail: detail.into(),
        }
    }

    /// For sinks: wrap any error as a sink failure (the sketch is not acknowledged).
    pub fn sink(e: impl std::fmt::Display) -> Self {
        Error::Sink(e.to_string())
    }

    pub(crate) fn transport(e: impl std::fmt::Display) -> Self {
        Error::Transport(e.to_string())
    }

    pub(crate) fn tls(e: impl std::fmt::Display) -> Self {
        Error::Tls(e.to_string())
    }

    /// True for errors that mean "the bytes we received are bad" (as opposed to local failures).
    pub fn is_decode_error(&self) -> bool {
        matches!(
            self,
            Error::Truncated { .. }
                | Error::BadMagic
                | Error::UnknownVersion { .. }
                | Error::UnknownKind(_)
                | Error::Oversized { .. }
                | Error::Malformed { .. }
                | Error::Invalid { .. }
        )
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
