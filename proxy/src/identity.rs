//! Who sent a request: the configured identity sources, tried in order, turned into a
//! [`UserKey`] by a keyed hash.
//!
//! Owns: parsing of the identity sources (header, cookie, API-key header, bearer token — a JWT's
//! `sub`, verified when key material is configured — and the client address), their validation,
//! and the keyed PRF (SipHash-1-3, keyed from `identity.secret`) that turns an identity into a
//! `UserKey`.
//!
//! Invariants:
//! - raw identities never leave this module: they are not stored, logged or put in an error
//!   (errors name the source and the reason, never the value);
//! - every source kind hashes under its own domain tag, so `header:alice` and `cookie:alice`
//!   are different users; equal inputs under the same secret always give the same key;
//! - the common header path does not allocate.
//!
//! Rules, in order of the configured sources: a source that is absent is skipped; a source that
//! is present but unusable is an error (it does not fall through to the next source, which would
//! silently re-attribute the request). When no configured source yields an identity, the client
//! address is used, so every request has a user.

use std::hash::Hasher;
use std::net::IpAddr;
use std::path::Path;

use http::HeaderName;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use prescale_config::{IdentityConfig, IdentitySource, JwtVerification};
use siphasher::sip::SipHasher13;

use crate::error::ProxyError;
use crate::fields::HeaderLookup;

/// A user as the proxy knows it: a keyed hash of an identity. Stable for a given secret.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UserKey(pub u64);

/// Which kind of source an identity came from (also its hash domain).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceKind {
    Header,
    Cookie,
    ApiKey,
    /// The `sub` claim of a bearer JWT.
    BearerSubject,
    /// A bearer token that is not a JWT, hashed whole.
    BearerToken,
    ClientIp,
}

impl SourceKind {
    fn domain_tag(self) -> u8 {
        match self {
            SourceKind::Header => 1,
            SourceKind::Cookie => 2,
            SourceKind::ApiKey => 3,
            SourceKind::BearerSubject => 4,
            SourceKind::BearerToken => 5,
            SourceKind::ClientIp => 6,
        }
    }

    /// Short name for errors and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            SourceKind::Header => "header",
            SourceKind::Cookie => "cookie",
            SourceKind::ApiKey => "api key",
            SourceKind::BearerSubject | SourceKind::BearerToken => "bearer token",
            SourceKind::ClientIp => "client address",
        }
    }
}

/// Why a request's identity was refused. Never carries the identity itself.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// Empty, non-visible-ASCII or control bytes, ambiguous, or a malformed JWT (400).
    #[error("malformed {} identity: {reason}", kind.as_str())]
    Malformed {
        kind: SourceKind,
        reason: &'static str,
    },
    /// A JWT whose signature, expiry, issuer or audience does not verify (401).
    #[error("{} rejected: {reason}", kind.as_str())]
    Unauthorized {
        kind: SourceKind,
        reason: &'static str,
    },
    /// An identity longer than `identity.max_len` (431).
    #[error("{} identity is longer than {max_len} bytes", kind.as_str())]
    TooLong { kind: SourceKind, max_len: usize },
}

impl IdentityError {
    /// The HTTP status to answer with.
    pub fn status(&self) -> u16 {
        match self {
            IdentityError::Malformed { .. } => 400,
            IdentityError::Unauthorized { .. } => 401,
            IdentityError::TooLong { .. } => 431,
        }
    }
}

/// Longest bearer token accepted at all (a JWT is usually far longer than a user id; its `sub`
/// must still fit `identity.max_len`).
pub const MAX_BEARER_TOKEN_LEN: usize = 8192;

/// JWT verification settings compiled from a [`JwtVerification`].
struct JwtVerifier {
    key: DecodingKey,
    validation: Validation,
}

enum CompiledSource {
    Header(HeaderName),
    Cookie(String),
    ApiKey(HeaderName),
    Bearer(Option<Box<JwtVerifier>>),
    ClientIp,
}

/// Resolves a request's [`UserKey`] from the configured sources. Build once at start; share.
pub struct IdentityResolver {
    key0: u64,
    key1: u64,
    sources: Vec<CompiledSource>,
    max_len: usize,
}

impl std::fmt::Debug for IdentityResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The keys are secret: never print them.
        f.debug_struct("IdentityResolver")
            .field("sources", &self.sources.len())
            .field("max_len", &self.max_len)
            .finish()
    }
}

impl IdentityResolver {
    /// Compiles the sources and loads JWT key material. A missing or unreadable key file, or one
    /// that is not a PEM key of the expected kind, is an error naming the source.
    pub fn new(config: &IdentityConfig) -> Result<Self, ProxyError> {
        let (key0, key1) = derive_keys(config.secret.expose().as_bytes());
        let mut sources = Vec::with_capacity(config.sources.len());
        for (index, source) in config.sources.iter().enumerate() {
            sources.push(match source {
                IdentitySource::Header { name } => {
                    CompiledSource::Header(header_name(index, name)?)
                }
                IdentitySource::Cookie { name } => {
                    if name.is_empty()
                        || !name.bytes().all(is_visible_ascii)
                        || name.contains(['=', ';'])
                    {
                        return Err(ProxyError::IdentitySource {
                            index,
                            reason: "cookie name must be visible ASCII without `=` or `;`"
                                .to_string(),
                        });
                    }
                    CompiledSource::Cookie(name.clone())
                }
                IdentitySource::ApiKey { header } => {
                    CompiledSource::ApiKey(header_name(index, header)?)
                }
                IdentitySource::Bearer { jwt: None } => CompiledSource::Bearer(None),
                IdentitySource::Bearer { jwt: Some(jwt) } => {
                    CompiledSource::Bearer(Some(Box::new(JwtVerifier::new(index, jwt)?)))
                }
                IdentitySource::ClientIp => CompiledSource::ClientIp,
            });
        }
        Ok(IdentityResolver {
            key0,
            key1,
            sources,
            max_len: config.max_len,
        })
    }

    /// The user of a request: the first configured source present in `headers`, else the client
    /// address. `client_ip` is the address after trusted `X-Forwarded-For` handling.
    pub fn resolve(
        &self,
        headers: &(impl HeaderLookup + ?Sized),
        client_ip: IpAddr,
    ) -> Result<UserKey, IdentityError> {
        for source in &self.sources {
            let found = match source {
                CompiledSource::Header(name) => {
                    self.header_identity(headers, name, SourceKind::Header)?
                }
                CompiledSource::ApiKey(name) => {
                    self.header_identity(headers, name, SourceKind::ApiKey)?
                }
                CompiledSource::Cookie(name) => self.cookie_identity(headers, name)?,
                CompiledSource::Bearer(verifier) => {
                    self.bearer_identity(headers, verifier.as_deref())?
                }
                CompiledSource::ClientIp => Some(self.client_ip_key(client_ip)),
            };
            if let Some(key) = found {
                return Ok(key);
            }
        }
        Ok(self.client_ip_key(client_ip))
    }

    /// The key of a client address alone (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn client_ip_key(&self, client_ip: IpAddr) -> UserKey {
        let octets = match client_ip.to_canonical() {
            IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
            IpAddr::V6(v6) => v6.octets(),
        };
        self.hash(SourceKind::ClientIp, &octets)
    }

    /// The key of an identity a service not behind the proxy reports (the forecaster's ingest
    /// route): checked and hashed as the first configured source that carries a user id would
    /// (header, cookie and API key under their own domains, bearer under the JWT subject's), so
    /// a user id ingested and the same id in that source of a proxied request are one user. With
    /// only `client_ip` configured: the header domain.
    pub(crate) fn reported_key(&self, identity: &[u8]) -> Result<UserKey, IdentityError> {
        let kind = self
            .sources
            .iter()
            .find_map(|source| match source {
                CompiledSource::Header(_) => Some(SourceKind::Header),
                CompiledSource::Cookie(_) => Some(SourceKind::Cookie),
                CompiledSource::ApiKey(_) => Some(SourceKind::ApiKey),
                CompiledSource::Bearer(_) => Some(SourceKind::BearerSubject),
                CompiledSource::ClientIp => None,
            })
            .unwrap_or(SourceKind::Header);
        self.checked_hash(kind, identity)
    }

    fn hash(&self, kind: SourceKind, identity: &[u8]) -> UserKey {
        let mut hasher = SipHasher13::new_with_keys(self.key0, self.key1);
        hasher.write_u8(kind.domain_tag());
        hasher.write(identity);
        UserKey(hasher.finish())
    }

    fn checked_hash(&self, kind: SourceKind, identity: &[u8]) -> Result<UserKey, IdentityError> {
        check_identity(kind, identity, self.max_len)?;
        Ok(self.hash(kind, identity))
    }

    fn header_identity(
        &self,
        headers: &(impl HeaderLookup + ?Sized),
        name: &HeaderName,
        kind: SourceKind,
    ) -> Result<Option<UserKey>, IdentityError> {
        let mut values = headers.get_all(name.as_str());
        let Some(value) = values.next() else {
            return Ok(None);
        };
        if values.next().is_some() {
            return Err(IdentityError::Malformed {
                kind,
                reason: "the header appears more than once",
            });
        }
        self.checked_hash(kind, trim_ascii_whitespace(value))
            .map(Some)
    }

    fn cookie_identity(
        &self,
        headers: &(impl HeaderLookup + ?Sized),
        name: &str,
    ) -> Result<Option<UserKey>, IdentityError> {
        for header in headers.get_all("cookie") {
            for pair in header.split(|&b| b == b';') {
                let pair = trim_ascii_whitespace(pair);
                let Some(eq) = pair.iter().position(|&b| b == b'=') else {
                    continue;
                };
                if &pair[..eq] != name.as_bytes() {
                    continue;
                }
                let mut value = trim_ascii_whitespace(&pair[eq + 1..]);
                if value.len() >= 2 && value[0] == b'"' && value[value.len() - 1] == b'"' {
                    value = &value[1..value.len() - 1];
                }
                return self.checked_hash(SourceKind::Cookie, value).map(Some);
            }
        }
        Ok(None)
    }

    fn bearer_identity(
        &self,
        headers: &(impl HeaderLookup + ?Sized),
        verifier: Option<&JwtVerifier>,
    ) -> Result<Option<UserKey>, IdentityError> {
        let mut values = headers.get_all("authorization");
        let Some(value) = values.next() else {
            return Ok(None);
        };
        let Some(token) = bearer_token(value) else {
            return Ok(None);
        };
        if values.next().is_some() {
            return Err(IdentityError::Malformed {
                kind: SourceKind::BearerToken,
                reason: "the Authorization header appears more than once",
            });
        }
        if token.len() > MAX_BEARER_TOKEN_LEN {
            return Err(IdentityError::TooLong {
                kind: SourceKind::BearerToken,
                max_len: MAX_BEARER_TOKEN_LEN,
            });
        }
        check_identity(SourceKind::BearerToken, token, MAX_BEARER_TOKEN_LEN)?;
        match verifier {
            Some(verifier) => {
                let subject = verifier.verified_subject(token)?;
                self.checked_hash(SourceKind::BearerSubject, subject.as_bytes())
                    .map(Some)
            }
            None => match unverified_subject(token) {
                Some(subject) => self
                    .checked_hash(SourceKind::BearerSubject, subject.as_bytes())
                    .map(Some),
                None => self.checked_hash_token(token).map(Some),
            },
        }
    }

    /// An opaque bearer token is hashed whole; its length limit is the token limit, not
    /// `max_len` (tokens are routinely longer than user ids).
    fn checked_hash_token(&self, token: &[u8]) -> Result<UserKey, IdentityError> {
        Ok(self.hash(SourceKind::BearerToken, token))
    }
}

/// Derives the two SipHash keys from the configured secret (itself hashed under two fixed,
/// distinct keys, so any secret length works and the raw secret is not kept).
fn derive_keys(secret: &[u8]) -> (u64, u64) {
    const DERIVE_K0: (u64, u64) = (0x7072_6573_6361_6c65, 0x6964_656e_7469_7479); // "prescale" "identity"
    const DERIVE_K1: (u64, u64) = (0x6b65_7931_2d64_6572, 0x6976_6174_696f_6e21);
    let mut a = SipHasher13::new_with_keys(DERIVE_K0.0, DERIVE_K0.1);
    a.write(secret);
    let mut b = SipHasher13::new_with_keys(DERIVE_K1.0, DERIVE_K1.1);
    b.write(secret);
    (a.finish(), b.finish())
}

fn header_name(index: usize, name: &str) -> Result<HeaderName, ProxyError> {
    HeaderName::from_bytes(name.as_bytes()).map_err(|_| ProxyError::IdentitySource {
        index,
        reason: format!("`{name}` is not a valid HTTP header name"),
    })
}

fn is_visible_ascii(b: u8) -> bool {
    (0x21..=0x7e).contains(&b)
}

fn trim_ascii_whitespace(bytes: &[u8]) -> &[u8] {
    bytes.trim_ascii()
}

/// Length first (an oversized value is 431 whatever it contains), then content.
fn check_identity(
    source: SourceKind,
    identity: &[u8],
    max_len: usize,
) -> Result<(), IdentityError> {
    if identity.len() > max_len {
        return Err(IdentityError::TooLong {
            kind: source,
            max_len,
        });
    }
    if identity.is_empty() {
        return Err(IdentityError::Malformed {
            kind: source,
            reason: "it is empty",
        });
    }
    if !identity.iter().copied().all(is_visible_ascii) {
        return Err(IdentityError::Malformed {
            kind: source,
            reason: "it contains bytes other than visible ASCII",
        });
    }
    Ok(())
}

/// The token of `Bearer <token>` (scheme case-insensitive); `None` for other schemes.
fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    const SCHEME: &[u8] = b"bearer";
    let value = trim_ascii_whitespace(value);
    if value.len() < SCHEME.len() || !value[..SCHEME.len()].eq_ignore_ascii_case(SCHEME) {
        return None;
    }
    let rest = &value[SCHEME.len()..];
    if rest.is_empty() {
        // `Bearer` with no token: present but empty.
        return Some(rest);
    }
    if rest[0] != b' ' && rest[0] != b'\t' {
        return None; // e.g. `BearerX`: not this scheme
    }
    Some(trim_ascii_whitespace(rest))
}

#[derive(serde::Deserialize)]
struct SubjectClaim {
    #[serde(default)]
    sub: Option<String>,
}

/// The `sub` of a token shaped like a JWT, without verification (no key configured: the subject
/// only attributes traffic, it authorises nothing). `None` when the token is not such a JWT.
fn unverified_subject(token: &[u8]) -> Option<String> {
    use base64::Engine;
    let mut parts = token.split(|&b| b == b'.');
    let (_header, payload, _signature) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    let claim: SubjectClaim = serde_json::from_slice(&json).ok()?;
    claim.sub
}

impl JwtVerifier {
    fn new(index: usize, config: &JwtVerification) -> Result<Self, ProxyError> {
        let key_error = |reason: String| ProxyError::JwtKey { index, reason };
        let (key, algorithms) = match (
            &config.hmac_secret,
            &config.rsa_public_key_file,
            &config.ec_public_key_file,
        ) {
            (Some(secret), None, None) => (
                DecodingKey::from_secret(secret.expose().as_bytes()),
                vec![Algorithm::HS256, Algorithm::HS384, Algorithm::HS512],
            ),
            (None, Some(path), None) => {
                let pem = read_key_file(path).map_err(key_error)?;
                let key = DecodingKey::from_rsa_pem(&pem).map_err(|e| {
                    key_error(format!(
                        "`{}` is not a PEM RSA public key: {e}",
                        path.display()
                    ))
                })?;
                (
                    key,
                    vec![
                        Algorithm::RS256,
                        Algorithm::RS384,
                        Algorithm::RS512,
                        Algorithm::PS256,
                        Algorithm::PS384,
                        Algorithm::PS512,
                    ],
                )
            }
            (None, None, Some(path)) => {
                let pem = read_key_file(path).map_err(key_error)?;
                let key = DecodingKey::from_ec_pem(&pem).map_err(|e| {
                    key_error(format!(
                        "`{}` is not a PEM EC public key: {e}",
                        path.display()
                    ))
                })?;
                (key, vec![Algorithm::ES256, Algorithm::ES384])
            }
            _ => {
                return Err(key_error(
                    "set exactly one of hmac_secret, rsa_public_key_file, ec_public_key_file"
                        .to_string(),
                ))
            }
        };
        let mut validation = Validation::new(Algorithm::HS256);
        validation.algorithms = algorithms;
        validation.leeway = 30;
        let mut required = vec!["exp", "sub"];
        if let Some(issuer) = &config.issuer {
            validation.set_issuer(&[issuer]);
            required.push("iss");
        }
        match &config.audience {
            Some(audience) => {
                validation.set_audience(&[audience]);
                required.push("aud");
            }
            // No audience configured: do not reject tokens that name one.
            None => validation.validate_aud = false,
        }
        validation.set_required_spec_claims(&required);
        Ok(JwtVerifier { key, validation })
    }

    fn verified_subject(&self, token: &[u8]) -> Result<String, IdentityError> {
        use jsonwebtoken::errors::ErrorKind;
        const SOURCE: SourceKind = SourceKind::BearerSubject;
        match jsonwebtoken::decode::<SubjectClaim>(token, &self.key, &self.validation) {
            Ok(data) => data
                .claims
                .sub
                .ok_or(IdentityError::Unauthorized { kind: SOURCE, reason: "the token has no subject" }),
            Err(e) => Err(match e.kind() {
                ErrorKind::InvalidToken | ErrorKind::Base64(_) | ErrorKind::Json(_) | ErrorKind::Utf8(_) => {
                    IdentityError::Malformed { kind: SOURCE, reason: "the token is not a well-formed JWT" }
                }
                ErrorKind::ExpiredSignature => {
                    IdentityError::Unauthorized { kind: SOURCE, reason: "the token has expired" }
                }
                ErrorKind::ImmatureSignature => {
                    IdentityError::Unauthorized { kind: SOURCE, reason: "the token is not valid yet" }
                }
                ErrorKind::InvalidIssuer => {
                    IdentityError::Unauthorized { kind: SOURCE, reason: "the token's issuer is not accepted" }
                }
                ErrorKind::InvalidAudience => {
                    IdentityError::Unauthorized { kind: SOURCE, reason: "the token's audience is not accepted" }
                }
                ErrorKind::InvalidAlgorithm => IdentityError::Unauthorized {
                    kind: SOURCE,
                    reason: "the token's algorithm does not match the configured key",
                },
                ErrorKind::MissingRequiredClaim(_) | ErrorKind::InvalidClaimFormat(_) => IdentityError::Unauthorized {
                    kind: SOURCE,
                    reason: "the token lacks a required claim (exp, sub, iss or aud) or has a malformed one",
                },
                _ => IdentityError::Unauthorized { kind: SOURCE, reason: "the token's signature does not verify" },
            }),
        }
    }
}

fn read_key_file(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read key file `{}`: {e}", path.display()))
}

#[cfg(test)]
mod tests;
