//! The envelope and the bounded codec.
//!
//! A frame is a fixed 12-byte header followed by a postcard body:
//!
//! ```text
//! 0..4   magic  b"PSKG"
//! 4..6   format version, u16 little-endian (this build: FORMAT_VERSION)
//! 6      message kind (MessageKind)
//! 7      flags, must be 0 (reserved)
//! 8..12  body length, u32 little-endian
//! 12..   body: postcard encoding of the kind's struct, exactly `length` bytes
//! ```
//!
//! Invariants: [`decode`] never panics and never allocates on the strength of a declared length
//! before checking it against [`Limits::max_frame`]; it rejects, with a typed [`Error`], bad
//! magic, unknown versions, kinds and flags, truncated or oversized frames, bodies that do not
//! parse or leave trailing bytes, and payloads that break their invariants
//! ([`Message::validate`]). [`encode`] refuses to produce a frame its own decoder would reject
//! for size.

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::messages::{Message, MessageKind};

pub const MAGIC: [u8; 4] = *b"PSKG";
pub const FORMAT_VERSION: u16 = 1;
pub const HEADER_LEN: usize = 12;

/// Size limits applied when encoding and decoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest body accepted, in bytes (the header is extra).
    pub max_frame: usize,
    /// Most entries in one sketch.
    pub max_entries: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_frame: 1024 * 1024,
            max_entries: 4096,
        }
    }
}

/// A checked frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    pub version: u16,
    pub kind: MessageKind,
    pub body_len: usize,
}

/// Parse and check the first [`HEADER_LEN`] bytes of `bytes`.
pub fn decode_header(bytes: &[u8], limits: &Limits) -> Result<FrameHeader> {
    if bytes.len() < HEADER_LEN {
        return Err(Error::Truncated {
            needed: HEADER_LEN,
            got: bytes.len(),
        });
    }
    if bytes[0..4] != MAGIC {
        return Err(Error::BadMagic);
    }
    let version = u16::from_le_bytes([bytes[4], bytes[5]]);
    if version != FORMAT_VERSION {
        return Err(Error::UnknownVersion {
            found: version,
            supported: FORMAT_VERSION,
        });
    }
    let kind = MessageKind::try_from(bytes[6])?;
    if bytes[7] != 0 {
        return Err(Error::Malformed {
            what: "header",
            detail: format!("reserved flags {:#x} set", bytes[7]),
        });
    }
    let body_len = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize;
    if body_len > limits.max_frame {
        return Err(Error::Oversized {
            len: body_len,
            max: limits.max_frame,
        });
    }
    Ok(FrameHeader {
        version,
        kind,
        body_len,
    })
}

/// Decode a whole frame (header and exactly its body).
pub fn decode(bytes: &[u8], limits: &Limits) -> Result<Message> {
    let header = decode_header(bytes, limits)?;
    let body = &bytes[HEADER_LEN..];
    if body.len() < header.body_len {
        return Err(Error::Truncated {
            needed: HEADER_LEN + header.body_len,
            got: bytes.len(),
        });
    }
    if body.len() > header.body_len {
        return Err(Error::Malformed {
            what: "frame",
            detail: format!(
                "{} bytes after the declared body",
                body.len() - header.body_len
            ),
        });
    }
    decode_body(&header, body, limits)
}

/// Decode a body whose header was already checked by [`decode_header`].
pub fn decode_body(header: &FrameHeader, body: &[u8], limits: &Limits) -> Result<Message> {
    if body.len() != header.body_len {
        return Err(Error::Truncated {
            needed: header.body_len,
            got: body.len(),
        });
    }
    let msg = match header.kind {
        MessageKind::Sketch => Message::Sketch(parse(body, "sketch")?),
        MessageKind::Ack => Message::Ack(parse(body, "ack")?),
        MessageKind::ModelUpdate => Message::ModelUpdate(parse(body, "model update")?),
        MessageKind::PlanUpdate => Message::PlanUpdate(parse(body, "plan update")?),
    };
    msg.validate(limits.max_entries)?;
    Ok(msg)
}

fn parse<T: DeserializeOwned>(body: &[u8], what: &'static str) -> Result<T> {
    let (value, rest) = postcard::take_from_bytes::<T>(body).map_err(|e| Error::Malformed {
        what,
        detail: e.to_string(),
    })?;
    if !rest.is_empty() {
        return Err(Error::Malformed {
            what,
            detail: format!("{} trailing bytes", rest.len()),
        });
    }
    Ok(value)
}

/// Encode `msg` as one frame. Fails if the body would exceed `limits.max_frame` or the message
/// breaks its own invariants.
pub fn encode(msg: &Message, limits: &Limits) -> Result<Vec<u8>> {
    msg.check(limits.max_entries, false)?;
    let mut out = vec![0u8; HEADER_LEN];
    let written = match msg {
        Message::Sketch(m) => append(&mut out, m)?,
        Message::Ack(m) => append(&mut out, m)?,
        Message::ModelUpdate(m) => append(&mut out, m)?,
        Message::PlanUpdate(m) => append(&mut out, m)?,
    };
    if written > limits.max_frame {
        return Err(Error::Oversized {
            len: written,
            max: limits.max_frame,
        });
    }
    let len = u32::try_from(written).map_err(|_| Error::Oversized {
        len: written,
        max: limits.max_frame,
    })?;
    out[0..4].copy_from_slice(&MAGIC);
    out[4..6].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    out[6] = msg.kind() as u8;
    out[7] = 0;
    out[8..12].copy_from_slice(&len.to_le_bytes());
    Ok(out)
}

fn append<T: Serialize>(out: &mut Vec<u8>, value: &T) -> Result<usize> {
    let before = out.len();
    let taken = std::mem::take(out);
    *out = postcard::to_extend(value, taken).map_err(|e| Error::Malformed {
        what: "encode",
        detail: e.to_string(),
    })?;
    Ok(out.len() - before)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::{Ack, AckOutcome};
    use crate::sketch::{EntryKey, Sketch};

    fn sketch() -> Message {
        let mut s = Sketch::new("node-1", "eu", 1_000, 11_000);
        s.sequence = 42;
        let e = s.entry(EntryKey {
            profile: format!("profile-{}", 3),
            origin_region: "us".into(),
            fleet: "api".into(),
        });
        e.requests = 100;
        e.errors = 3;
        for u in 0..50 {
            e.users.insert(u);
        }
        Message::Sketch(s)
    }

    #[test]
    fn roundtrip() {
        let limits = Limits::default();
        let m = sketch();
        let bytes = encode(&m, &limits).unwrap();
        assert_eq!(&bytes[..4], b"PSKG");
        assert_eq!(decode(&bytes, &limits).unwrap(), m);
        let ack = Message::Ack(Ack {
            node: "n".into(),
            sequence: 9,
            outcome: AckOutcome::Duplicate,
        });
        assert_eq!(
            decode(&encode(&ack, &limits).unwrap(), &limits).unwrap(),
            ack
        );
    }

    #[test]
    fn rejects_with_typed_errors() {
        let limits = Limits::default();
        let good = encode(&sketch(), &limits).unwrap();
        assert!(matches!(
            decode(&good[..5], &limits),
            Err(Error::Truncated { .. })
        ));
        assert!(matches!(
            decode(&good[..good.len() - 1], &limits),
            Err(Error::Truncated { .. })
        ));
        let mut bad = good.clone();
        bad[0] = b'X';
        assert!(matches!(decode(&bad, &limits), Err(Error::BadMagic)));
        let mut bad = good.clone();
        bad[4] = 2;
        assert!(matches!(
            decode(&bad, &limits),
            Err(Error::UnknownVersion { found: 2, .. })
        ));
        let mut bad = good.clone();
        bad[6] = 99;
        assert!(matches!(decode(&bad, &limits), Err(Error::UnknownKind(99))));
        let mut bad = good.clone();
        bad[7] = 1;
        assert!(matches!(
            decode(&bad, &limits),
            Err(Error::Malformed { .. })
        ));
        let mut bad = good.clone();
        bad.push(0);
        assert!(matches!(
            decode(&bad, &limits),
            Err(Error::Malformed { .. })
        ));
        // Declared length far beyond the limit: rejected from the header alone.
        let mut bad = good[..HEADER_LEN].to_vec();
        bad[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            decode(&bad, &limits),
            Err(Error::Oversized { .. })
        ));
        let small = Limits {
            max_frame: 16,
            ..limits
        };
        assert!(matches!(
            decode(&good, &small),
            Err(Error::Oversized { .. })
        ));
        assert!(matches!(
            encode(&sketch(), &small),
            Err(Error::Oversized { .. })
        ));
        // A valid sketch body under the Ack kind does not parse as an ack.
        let mut bad = good.clone();
        bad[6] = MessageKind::Ack as u8;
        assert!(decode(&bad, &limits).is_err());
    }

    #[test]
    fn every_truncation_and_bit_flip_is_handled() {
        let limits = Limits::default();
        let good = encode(&sketch(), &limits).unwrap();
        for cut in 0..good.len() {
            assert!(decode(&good[..cut], &limits).is_err());
        }
        for i in 0..good.len() {
            for bit in 0..8 {
                let mut b = good.clone();
                b[i] ^= 1 << bit;
                let _ = decode(&b, &limits);
            }
        }
    }
}
