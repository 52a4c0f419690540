//! Request IDs and `Via` (RFC 9110 §7.6.3): the fields the proxy adds to every forwarded request
//! and to the backend's response, on both paths alike.
//!
//! Owns: `X-Request-Id` generation, the check of an ID a trusted peer sent, and the `Via` value.
//!
//! Invariants: a generated ID is 32 lowercase hex digits, unique within the process (a random
//! prefix per thread and a counter per thread, so the request path takes no lock and shares no
//! atomic); an ID is only ever taken from a trusted peer, and only when it sent exactly one of
//! 1 to [`MAX_TRUSTED_LEN`] visible ASCII characters; otherwise the request gets a new one.

use std::cell::Cell;
use std::hash::{BuildHasher, Hasher};

/// The request ID field.
pub const REQUEST_ID: &str = "x-request-id";
/// The `Via` field.
pub const VIA: &str = "via";
/// The longest request ID taken from a trusted peer.
pub const MAX_TRUSTED_LEN: usize = 128;
const GENERATED_LEN: usize = 32;

/// One request's ID, kept inline (no allocation on the request path).
#[derive(Clone, Copy)]
pub struct RequestId {
    bytes: [u8; MAX_TRUSTED_LEN],
    len: u8,
}

impl std::fmt::Debug for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("RequestId").field(&self.as_str()).finish()
    }
}

thread_local! {
    /// This thread's random prefix and its next counter value.
    static NEXT_ID: Cell<(u64, u64)> = Cell::new((random_prefix(), 0));
}

fn random_prefix() -> u64 {
    // Each `RandomState` is seeded from the OS once per thread and then varied per instance:
    // random enough that two threads' or two processes' prefixes do not collide in practice.
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(std::process::id() as u64);
    hasher.finish()
}

impl RequestId {
    /// A new ID, unique within the process.
    pub fn generate() -> Self {
        let (prefix, counter) = NEXT_ID.with(|next| {
            let (prefix, counter) = next.get();
            next.set((prefix, counter.wrapping_add(1)));
            (prefix, counter)
        });
        let mut bytes = [0u8; MAX_TRUSTED_LEN];
        write_hex(&mut bytes[..16], prefix);
        write_hex(&mut bytes[16..GENERATED_LEN], counter);
        RequestId {
            bytes,
            len: GENERATED_LEN as u8,
        }
    }

    /// A trusted peer's ID, if it is 1 to [`MAX_TRUSTED_LEN`] visible ASCII characters.
    pub fn from_trusted(value: &[u8]) -> Option<Self> {
        if value.is_empty()
            || value.len() > MAX_TRUSTED_LEN
            || !value.iter().all(|b| (0x21..=0x7e).contains(b))
        {
            return None;
        }
        let mut bytes = [0u8; MAX_TRUSTED_LEN];
        bytes[..value.len()].copy_from_slice(value);
        Some(RequestId {
            bytes,
            len: value.len() as u8,
        })
    }

    /// The ID as sent.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }

    /// The ID as text (always visible ASCII).
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(self.as_bytes()).unwrap_or_default()
    }
}

fn write_hex(out: &mut [u8], value: u64) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = DIGITS[((value >> (60 - 4 * i)) & 0xf) as usize];
    }
}

/// The fields the proxy adds (`proxy.request_id`, `proxy.via`).
#[derive(Clone, Debug)]
pub struct AddedFields {
    request_ids: bool,
    /// The `Via` pseudonym, if any.
    via: Option<Box<str>>,
}

impl AddedFields {
    /// From `proxy.request_id` and `proxy.via` (empty: no `Via`).
    pub fn new(request_ids: bool, via: &str) -> Self {
        AddedFields {
            request_ids,
            via: (!via.is_empty()).then(|| via.into()),
        }
    }

    /// The pseudonym for `Via`, if one is added.
    pub fn via(&self) -> Option<&str> {
        self.via.as_deref()
    }

    /// The ID of a request whose `X-Request-Id` values are `sent`: a trusted peer's single valid
    /// one, else a new one; `None` when request IDs are off.
    pub fn request_id<'a>(
        &self,
        peer_trusted: bool,
        mut sent: impl Iterator<Item = &'a [u8]>,
    ) -> Option<RequestId> {
        if !self.request_ids {
            return None;
        }
        if peer_trusted {
            if let (Some(only), None) = (sent.next(), sent.next()) {
                if let Some(id) = RequestId::from_trusted(only) {
                    return Some(id);
                }
            }
        }
        Some(RequestId::generate())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_are_32_hex_digits_and_unique_across_threads() {
        let ids: Vec<String> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    scope.spawn(|| {
                        (0..1000)
                            .map(|_| RequestId::generate().as_str().to_string())
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().expect("thread"))
                .collect()
        });
        let unique: std::collections::HashSet<&String> = ids.iter().collect();
        assert_eq!(unique.len(), ids.len());
        assert!(ids
            .iter()
            .all(|id| id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())));
    }

    #[test]
    fn only_a_trusted_peers_single_valid_id_is_kept() {
        let fields = AddedFields::new(true, "prescale");
        let kept = |trusted: bool, sent: &[&[u8]]| {
            fields
                .request_id(trusted, sent.iter().copied())
                .expect("on")
                .as_str()
                .to_string()
        };
        assert_eq!(kept(true, &[b"abc-123"]), "abc-123");
        for (trusted, sent) in [
            (false, vec![&b"abc-123"[..]]),
            (true, vec![]),
            (true, vec![&b"a"[..], &b"b"[..]]),
            (true, vec![&b"has space"[..]]),
            (true, vec![&[b'x'; MAX_TRUSTED_LEN + 1][..]]),
        ] {
            let id = kept(trusted, &sent);
            assert_eq!(id.len(), 32, "{sent:?}: {id}");
        }
        assert!(AddedFields::new(false, "")
            .request_id(true, std::iter::empty())
            .is_none());
        assert_eq!(AddedFields::new(false, "").via(), None);
        assert_eq!(fields.via(), Some("prescale"));
    }
}
