//! How the proxy connects to one fleet's backends (`[fleets.upstream]`): the HTTP version
//! (HTTP/1.1; HTTP/2 as h2 over TLS or h2c by prior knowledge; or either by ALPN) and TLS (the
//! server name sent as SNI and verified, the CA roots, a client certificate). Read at startup,
//! and by a reload that changes it, into [`Upstream`], from which every backend's pingora peer
//! is built.
//!
//! Invariants:
//! - certificate verification is off only when the config says `verify = false`: the server
//!   name is never empty (pingora skips verification for an empty SNI);
//! - every certificate and key handed to pingora was parsed here first, with the parsers
//!   pingora uses (they panic on bad input inside a connection), so a file that cannot be used
//!   is a startup error naming the fleet and the file;
//! - a fleet whose backends need TLS or HTTP/2 is served by the general path only
//!   ([`Upstream::general_path_only`]): the direct path speaks cleartext HTTP/1.1.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use pingora::protocols::tls::{CaType, ALPN};
use pingora::upstreams::peer::HttpPeer;
use pingora::utils::tls::{parse_x509, CertKey, WrappedX509};
use prescale_config::{FleetConfig, TimeoutConfig, UpstreamProtocol, UpstreamTlsConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::error::ProxyError;

/// Concurrent streams the proxy opens on one HTTP/2 connection to a backend before it opens
/// another (pingora's default is one, which would make HTTP/2 a connection per request).
const H2_STREAMS_PER_CONNECTION: usize = 128;

/// What every peer of one fleet shares: protocol and TLS material.
#[derive(Debug)]
pub struct Upstream {
    protocol: UpstreamProtocol,
    tls: Option<UpstreamTls>,
}

#[derive(Debug)]
struct UpstreamTls {
    /// Overrides the backend's own host as SNI and verified name.
    server_name: Option<String>,
    verify: bool,
    /// The roots backends' certificates must chain to (`None`: the system's).
    ca: Option<Arc<CaType>>,
    client: Option<Arc<CertKey>>,
}

impl Upstream {
    /// Reads the fleet's `upstream` settings and loads its TLS files.
    pub fn load(config: &FleetConfig) -> Result<Self, ProxyError> {
        let fail = |reason: String| ProxyError::Upstream {
            fleet: config.name.clone(),
            reason,
        };
        let tls = match &config.upstream.tls {
            None => None,
            Some(tls) => Some(load_tls(tls).map_err(fail)?),
        };
        if tls.as_ref().is_some_and(|t| !t.verify) {
            tracing::warn!(fleet = %config.name, "upstream.tls.verify = false: backends' certificates are not checked");
        }
        Ok(Upstream {
            protocol: config.upstream.protocol,
            tls,
        })
    }

    /// Plain HTTP/1.1, the direct path's only upstream protocol.
    pub fn cleartext_http1() -> Self {
        Upstream {
            protocol: UpstreamProtocol::Http1,
            tls: None,
        }
    }

    /// Requests to these backends must take the general path (TLS or HTTP/2).
    pub fn general_path_only(&self) -> bool {
        self.tls.is_some() || self.protocol != UpstreamProtocol::Http1
    }

    /// The peer of the backend at `addr`; `host`: the name the config gave it (its SNI and
    /// verified name unless `server_name` is set; absent: its IP address).
    pub fn peer(&self, addr: SocketAddr, host: Option<&str>, timeouts: &TimeoutConfig) -> HttpPeer {
        let sni = match &self.tls {
            None => String::new(),
            Some(tls) => match (&tls.server_name, host) {
                (Some(name), _) => name.clone(),
                (None, Some(host)) => host.to_string(),
                (None, None) => addr.ip().to_string(),
            },
        };
        let mut peer = HttpPeer::new(addr, self.tls.is_some(), sni);
        peer.options.connection_timeout = Some(Duration::from_millis(timeouts.connect_ms));
        peer.options.read_timeout = Some(Duration::from_millis(timeouts.read_ms));
        peer.options.write_timeout = Some(Duration::from_millis(timeouts.write_ms));
        peer.options.idle_timeout = Some(Duration::from_millis(timeouts.idle_ms));
        peer.options.alpn = match self.protocol {
            UpstreamProtocol::Http1 => ALPN::H1,
            UpstreamProtocol::Http2 => ALPN::H2,
            UpstreamProtocol::Auto => ALPN::H2H1,
        };
        if self.protocol != UpstreamProtocol::Http1 {
            peer.options.max_h2_streams = H2_STREAMS_PER_CONNECTION;
        }
        if let Some(tls) = &self.tls {
            peer.options.verify_cert = tls.verify;
            peer.options.verify_hostname = tls.verify;
            peer.options.ca = tls.ca.clone();
            peer.client_cert_key = tls.client.clone();
        }
        peer
    }
}

fn load_tls(tls: &UpstreamTlsConfig) -> Result<UpstreamTls, String> {
    let ca = match &tls.ca_file {
        None => None,
        Some(path) => {
            let certs = read_certificates("ca_file", path)?;
            let mut roots = rustls::RootCertStore::empty();
            for cert in &certs {
                roots
                    .add(CertificateDer::from(cert.as_slice()))
                    .map_err(|e| {
                        format!(
                            "upstream.tls.ca_file `{}`: a certificate cannot be a trust root: {e}",
                            path.display()
                        )
                    })?;
            }
            let wrapped: Vec<WrappedX509> = certs
                .into_iter()
                .map(|der| WrappedX509::new(der, parse_x509))
                .collect();
            Some(Arc::from(wrapped.into_boxed_slice()))
        }
    };
    let client = match (&tls.client_cert, &tls.client_key) {
        (Some(cert_path), Some(key_path)) => {
            Some(Arc::new(load_client_identity(cert_path, key_path)?))
        }
        // Validation requires both or neither.
        _ => None,
    };
    Ok(UpstreamTls {
        server_name: tls.server_name.clone(),
        verify: tls.verify,
        ca,
        client,
    })
}

/// The DER certificates of a PEM file, each checked to parse as X.509 (at least one).
fn read_certificates(key: &str, path: &Path) -> Result<Vec<Vec<u8>>, String> {
    let shown = path.display();
    let iter = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("upstream.tls.{key} `{shown}`: {e}"))?;
    let mut certs = Vec::new();
    for cert in iter {
        let cert = cert.map_err(|e| format!("upstream.tls.{key} `{shown}`: {e}"))?;
        if let Err(e) = x509_parser::parse_x509_certificate(cert.as_ref()) {
            return Err(format!(
                "upstream.tls.{key} `{shown}`: certificate {} is not valid X.509: {e}",
                certs.len() + 1
            ));
        }
        certs.push(cert.to_vec());
    }
    if certs.is_empty() {
        return Err(format!(
            "upstream.tls.{key} `{shown}` holds no PEM certificate (`-----BEGIN CERTIFICATE-----`)"
        ));
    }
    Ok(certs)
}

/// The client certificate chain and its key, checked to belong together.
fn load_client_identity(cert_path: &Path, key_path: &Path) -> Result<CertKey, String> {
    let certs = read_certificates("client_cert", cert_path)?;
    let shown = key_path.display();
    let key = PrivateKeyDer::from_pem_file(key_path)
        .map_err(|e| format!("upstream.tls.client_key `{shown}`: {e}"))?;
    let key_der = key.secret_der().to_vec();
    // pingora turns the stored bytes back into a key this way when it connects.
    if PrivateKeyDer::try_from(key_der.clone()).is_err() {
        return Err(format!(
            "upstream.tls.client_key `{shown}`: not a PKCS#8, PKCS#1 or SEC1 private key"
        ));
    }
    let chain: Vec<CertificateDer<'static>> = certs
        .iter()
        .map(|der| CertificateDer::from(der.clone()))
        .collect();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("upstream.tls: {e}"))?
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_client_auth_cert(chain, key)
        .map_err(|e| {
            format!(
                "upstream.tls.client_key `{shown}` cannot sign for client_cert `{}`: {e}",
                cert_path.display()
            )
        })?;
    Ok(CertKey::new(certs, key_der))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fleet(upstream: &str, dir: &Path) -> FleetConfig {
        let text = format!(
            r#"
[identity]
secret = "0123456789abcdef0123"
[[regions]]
name = "eu"
countries = ["DE"]
[[fleets]]
name = "web"
region = "eu"
backends = ["api.internal:443"]
upstream = {upstream}
"#
        );
        let path = dir.join("c.toml");
        std::fs::write(&path, &text).expect("write config");
        prescale_config::load_file(&path)
            .expect("valid config")
            .fleets
            .remove(0)
    }

    fn pem_files(dir: &Path) -> (String, String, String) {
        let rcgen::CertifiedKey { cert, signing_key } =
            rcgen::generate_simple_self_signed(vec!["api.internal".to_string()])
                .expect("certificate");
        let other = rcgen::KeyPair::generate().expect("key");
        let write = |name: &str, text: String| {
            let path = dir.join(name);
            std::fs::write(&path, text).expect("write");
            path.display().to_string()
        };
        (
            write("cert.pem", cert.pem()),
            write("key.pem", signing_key.serialize_pem()),
            write("other-key.pem", other.serialize_pem()),
        )
    }

    #[test]
    fn peers_carry_the_fleets_protocol_and_tls() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert, key, _) = pem_files(dir.path());
        let config = fleet(
            &format!("{{ protocol = \"auto\", tls = {{ ca_file = \"{cert}\", client_cert = \"{cert}\", client_key = \"{key}\" }} }}"),
            dir.path(),
        );
        let upstream = Upstream::load(&config).expect("loads");
        assert!(upstream.general_path_only());
        let addr: SocketAddr = "10.0.0.5:443".parse().expect("addr");
        let peer = upstream.peer(addr, Some("api.internal"), &config.timeouts);
        assert_eq!(peer.sni, "api.internal");
        assert!(peer.options.verify_cert && peer.options.verify_hostname);
        assert_eq!(peer.options.alpn, ALPN::H2H1);
        assert_eq!(peer.options.ca.as_ref().map(|ca| ca.len()), Some(1));
        assert!(peer.client_cert_key.is_some());
        // Without a name, the address is the name verified: never an empty SNI.
        assert_eq!(upstream.peer(addr, None, &config.timeouts).sni, "10.0.0.5");

        let h2c = Upstream::load(&fleet("{ protocol = \"http2\" }", dir.path())).expect("h2c");
        let peer = h2c.peer(addr, Some("api.internal"), &config.timeouts);
        assert!(h2c.general_path_only());
        assert_eq!(peer.sni, "");
        assert_eq!(peer.options.alpn, ALPN::H2);
        assert!(peer.options.max_h2_streams > 1);
        assert!(!Upstream::cleartext_http1().general_path_only());
    }

    #[test]
    fn unusable_tls_files_name_the_fleet_and_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert, key, other_key) = pem_files(dir.path());
        let bad_der = dir.path().join("bad.pem");
        // A PEM block that passes the config's structure check but is no certificate.
        std::fs::write(
            &bad_der,
            "-----BEGIN CERTIFICATE-----\nMAA=\n-----END CERTIFICATE-----\n",
        )
        .expect("write");
        let bad_der = bad_der.display().to_string();
        for (upstream, says) in [
            (
                format!("{{ tls = {{ ca_file = \"{bad_der}\" }} }}"),
                "ca_file",
            ),
            (
                format!("{{ tls = {{ client_cert = \"{bad_der}\", client_key = \"{key}\" }} }}"),
                "client_cert",
            ),
            (
                format!("{{ tls = {{ client_cert = \"{cert}\", client_key = \"{other_key}\" }} }}"),
                "cannot sign for client_cert",
            ),
        ] {
            let config = fleet(&upstream, dir.path());
            let e = Upstream::load(&config).expect_err("refused").to_string();
            assert!(e.starts_with("fleet `web`"), "{e}");
            assert!(e.contains(says), "{upstream}: {e}");
        }
    }
}
