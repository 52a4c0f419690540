//! What a request head must be before it is admitted, the same for both request paths: its
//! `Host` (RFC 9112 §3.2), the path that routing and assignment rules see (RFC 3986 §6.2.2:
//! unreserved characters percent-decoded, dot segments removed), and which client fields never
//! reach a backend (the forwarding fields the proxy owns, names with underscores).
//!
//! Invariants:
//! - an HTTP/1.1 request has exactly one `Host`; no request's `Host` carries userinfo or
//!   disagrees with the authority of an absolute-form target (or HTTP/2's `:authority`), and a
//!   request with neither is refused; every refusal is a 400 saying which rule it broke;
//! - [`normalize_path`] is idempotent, never returns a path with a dot segment or an escaped
//!   unreserved character, borrows when the path is already normal, and refuses a malformed
//!   escape or an escaped NUL; the backend gets the normalised path, so what routing decided on
//!   is what the backend serves;
//! - [`ForwardingPolicy::drops`] answers the same for a name on both paths.

use std::borrow::Cow;

use crate::chunked::hex_value;
use crate::fields::HeaderLookup;
use crate::service::{FORWARDED_FOR, FORWARDED_PROTO};

/// Why a request head is refused (each a 400).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    #[error("an HTTP/1.1 request needs a Host header field")]
    NoHost,
    #[error("more than one Host header field")]
    ManyHosts,
    #[error("the Host header field is not a host[:port]")]
    BadHost,
    #[error("the Host header field carries userinfo")]
    HostUserinfo,
    #[error("the Host header field disagrees with the request target's authority")]
    HostMismatch,
    #[error("the request target has a malformed percent-escape")]
    BadEscape,
    #[error("the request target has an escaped NUL")]
    EscapedNul,
}

impl HeadError {
    /// The response body.
    pub fn message(self) -> &'static str {
        match self {
            HeadError::NoHost => "bad request: an HTTP/1.1 request needs a Host header field\n",
            HeadError::ManyHosts => "bad request: more than one Host header field\n",
            HeadError::BadHost => "bad request: the Host header field is not a host[:port]\n",
            HeadError::HostUserinfo => "bad request: the Host header field carries userinfo\n",
            HeadError::HostMismatch => {
                "bad request: the Host header field disagrees with the request target\n"
            }
            HeadError::BadEscape => "bad request: malformed percent-escape in the request target\n",
            HeadError::EscapedNul => "bad request: escaped NUL in the request target\n",
        }
    }
}

/// The HTTP version of the request, as far as `Host` is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    /// HTTP/1.0 and earlier: `Host` is optional.
    Http10,
    Http11,
    /// `:authority` carries the authority; `Host` is optional.
    Http2,
}

/// Checks `Host` against RFC 9112 §3.2 (and RFC 9113 §8.3.1): `authority` is the authority of an
/// absolute-form target or HTTP/2's `:authority`, when there is one.
pub fn check_host(
    version: Version,
    authority: Option<&[u8]>,
    headers: &(impl HeaderLookup + ?Sized),
) -> Result<(), HeadError> {
    let mut hosts = headers.get_all("host");
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(HeadError::ManyHosts);
    }
    let Some(host) = host else {
        return match (version, authority) {
            (Version::Http11, _) => Err(HeadError::NoHost),
            (Version::Http2, None) => Err(HeadError::NoHost),
            _ => Ok(()),
        };
    };
    let host = host.trim_ascii();
    check_authority(host)?;
    if let Some(authority) = authority {
        check_authority(authority)?;
        if !authority.eq_ignore_ascii_case(host) {
            return Err(HeadError::HostMismatch);
        }
    }
    Ok(())
}

/// `host[:port]` (RFC 3986 §3.2.2: a reg-name, IPv4 or a bracketed IP literal), empty allowed
/// (RFC 9112 §3.2: an authority without a host).
fn check_authority(value: &[u8]) -> Result<(), HeadError> {
    if value.contains(&b'@') {
        return Err(HeadError::HostUserinfo);
    }
    let (host, port) = if let Some(rest) = value.strip_prefix(b"[") {
        let Some(end) = rest.iter().position(|&b| b == b']') else {
            return Err(HeadError::BadHost);
        };
        let literal = &rest[..end];
        if literal.is_empty()
            || !literal
                .iter()
                .all(|&b| b.is_ascii_hexdigit() || matches!(b, b':' | b'.' | b'v' | b'V'))
        {
            return Err(HeadError::BadHost);
        }
        match &rest[end + 1..] {
            [] => (literal, None),
            [b':', port @ ..] => (literal, Some(port)),
            _ => return Err(HeadError::BadHost),
        }
    } else {
        match value.iter().rposition(|&b| b == b':') {
            Some(colon) => (&value[..colon], Some(&value[colon + 1..])),
            None => (value, None),
        }
    };
    let reg_name = |b: u8| {
        b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'%'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
            )
    };
    if !value.starts_with(b"[") && !host.iter().all(|&b| reg_name(b)) {
        return Err(HeadError::BadHost);
    }
    if let Some(port) = port {
        if port.len() > 5 || !port.iter().all(u8::is_ascii_digit) {
            return Err(HeadError::BadHost);
        }
    }
    Ok(())
}

/// The path routing sees: unreserved characters percent-decoded, the remaining escapes'
/// hex digits upper-cased, dot segments removed (RFC 3986 §5.2.4). `path` is the part of an
/// origin-form target before `?`.
pub fn normalize_path(path: &str) -> Result<Cow<'_, str>, HeadError> {
    if is_normal(path.as_bytes()) {
        return Ok(Cow::Borrowed(path));
    }
    let decoded = decode_unreserved(path.as_bytes())?;
    let normal = remove_dot_segments(&decoded);
    // Only ASCII went in (escapes of non-unreserved bytes stay escaped).
    Ok(Cow::Owned(String::from_utf8(normal).unwrap_or_default()))
}

/// Whether `path` is already normal: every escape well-formed, upper-case, of a byte that
/// stays escaped, and no dot segment.
fn is_normal(path: &[u8]) -> bool {
    let mut segment_start = true;
    for (i, &b) in path.iter().enumerate() {
        match b {
            b'%' => {
                let escape = path.get(i + 1..i + 3);
                let stays = escape.is_some_and(|e| {
                    e.iter()
                        .all(|d| d.is_ascii_digit() || (b'A'..=b'F').contains(d))
                        && hex_value(e[0]).zip(hex_value(e[1])).is_some_and(|(h, l)| {
                            let byte = h << 4 | l;
                            byte != 0 && !is_unreserved(byte)
                        })
                });
                if !stays {
                    return false;
                }
                segment_start = false;
            }
            b'.' if segment_start => {
                let rest = &path[i..];
                if rest == b"."
                    || rest == b".."
                    || rest.starts_with(b"./")
                    || rest.starts_with(b"../")
                {
                    return false;
                }
                segment_start = false;
            }
            b'/' => segment_start = true,
            _ => segment_start = false,
        }
    }
    true
}

fn is_unreserved(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~')
}

fn decode_unreserved(path: &[u8]) -> Result<Vec<u8>, HeadError> {
    let mut out = Vec::with_capacity(path.len());
    let mut i = 0;
    while i < path.len() {
        if path[i] != b'%' {
            out.push(path[i]);
            i += 1;
            continue;
        }
        let (Some(&high), Some(&low)) = (path.get(i + 1), path.get(i + 2)) else {
            return Err(HeadError::BadEscape);
        };
        let (Some(h), Some(l)) = (hex_value(high), hex_value(low)) else {
            return Err(HeadError::BadEscape);
        };
        let byte = h << 4 | l;
        if byte == 0 {
            return Err(HeadError::EscapedNul);
        }
        if is_unreserved(byte) {
            out.push(byte);
        } else {
            out.push(b'%');
            out.push(high.to_ascii_uppercase());
            out.push(low.to_ascii_uppercase());
        }
        i += 3;
    }
    Ok(out)
}

/// RFC 3986 §5.2.4 on an absolute path (or an empty one).
fn remove_dot_segments(path: &[u8]) -> Vec<u8> {
    let mut input = path;
    let mut out: Vec<u8> = Vec::with_capacity(path.len());
    let pop_segment = |out: &mut Vec<u8>| {
        let cut = out.iter().rposition(|&b| b == b'/').unwrap_or(0);
        out.truncate(cut);
    };
    while !input.is_empty() {
        if let Some(rest) = input.strip_prefix(b"../") {
            input = rest;
        } else if let Some(rest) = input.strip_prefix(b"./") {
            input = rest;
        } else if input.starts_with(b"/./") {
            input = &input[2..];
        } else if input == b"/." {
            input = b"/";
        } else if input.starts_with(b"/../") {
            input = &input[3..];
            pop_segment(&mut out);
        } else if input == b"/.." {
            input = b"/";
            pop_segment(&mut out);
        } else if input == b"." || input == b".." {
            input = b"";
        } else {
            let start = usize::from(input[0] == b'/');
            let end = input[start..]
                .iter()
                .position(|&b| b == b'/')
                .map_or(input.len(), |p| p + start);
            out.extend_from_slice(&input[..end]);
            input = &input[end..];
        }
    }
    out
}

/// Fields from the client that a backend never gets, beside the hop-by-hop ones.
#[derive(Clone, Copy, Debug)]
pub struct ForwardingPolicy {
    /// Pass names with underscores (`proxy.underscores_in_headers`).
    pub underscores: bool,
}

/// Forwarding fields the proxy sets itself (`X-Forwarded-For`, `X-Forwarded-Proto`).
pub const SET_BY_PROXY: [&str; 2] = [FORWARDED_FOR, FORWARDED_PROTO];
/// Forwarding fields passed only from a trusted peer (`proxy`'s `trusted_proxies`).
pub const FROM_TRUSTED_ONLY: [&str; 4] = [
    "x-forwarded-host",
    "x-forwarded-port",
    "x-real-ip",
    "forwarded",
];

impl ForwardingPolicy {
    /// Whether the client's field `name` is left out of the backend's request (the proxy's own
    /// `X-Forwarded-For` and `X-Forwarded-Proto` are added after).
    pub fn drops(&self, name: &str, peer_trusted: bool) -> bool {
        (!self.underscores && name.contains('_'))
            || SET_BY_PROXY.iter().any(|f| name.eq_ignore_ascii_case(f))
            || (!peer_trusted
                && FROM_TRUSTED_ONLY
                    .iter()
                    .any(|f| name.eq_ignore_ascii_case(f)))
    }
}

#[cfg(test)]
mod tests;
