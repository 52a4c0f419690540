//! Certificates and the QUIC crypto configs for mutual TLS.
//!
//! Every node (proxy or forecaster) has one certificate, signed by the deployment's CA, whose
//! subject alternative name is the node's name; it serves as both client and server identity.
//! A node trusts exactly the configured CA: servers require a client certificate chained to
//! it, clients verify the server's certificate against it and the expected node name. Nothing
//! else (no system roots) is trusted.
//!
//! [`write_dev_certs`] writes a development CA and node certificates (`prescale certs`);
//! [`DevCa`] does the same in memory for tests. Invariants: node names are DNS-label text
//! (`[A-Za-z0-9-.]`, 1..=63 bytes per label); key files are written owner-only on Unix.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use crate::error::{Error, Result};

/// ALPN protocol id of this protocol.
pub const ALPN: &[u8] = b"prescale-gossip/1";

const CA_COMMON_NAME: &str = "prescale dev CA";

/// Check a node name is usable as a certificate DNS name and a file name.
pub fn check_node_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    if ok {
        Ok(())
    } else {
        Err(Error::Argument(format!(
            "node name {name:?} must be a DNS name: letters, digits, '-' and '.', labels of 1 to 63 characters"
        )))
    }
}

/// Whether the end-entity certificate `cert` is valid for the DNS name `node` (a subject
/// alternative name, as [`DevCa::issue`] writes it). Anything unparsable is "not valid".
pub(crate) fn cert_is_for(cert: &CertificateDer<'_>, node: &str) -> bool {
    let Ok(name) = ServerName::try_from(node) else {
        return false;
    };
    match webpki::EndEntityCert::try_from(cert) {
        Ok(ee) => ee.verify_is_valid_for_subject_name(&name).is_ok(),
        Err(_) => false,
    }
}

/// The end-entity certificate a QUIC peer presented (already verified against the CA by the
/// handshake), if any.
pub(crate) fn peer_certificate(conn: &quinn::Connection) -> Option<CertificateDer<'static>> {
    conn.peer_identity()
        .and_then(|any| any.downcast::<Vec<CertificateDer<'static>>>().ok())
        .and_then(|chain| chain.first().cloned())
}

fn ca_params() -> Result<CertificateParams> {
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(Error::tls)?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, CA_COMMON_NAME);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok(params)
}

/// A certificate authority held in memory.
pub struct DevCa {
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
    key_pem: String,
}

/// A node certificate and its private key, PEM-encoded.
#[derive(Clone)]
pub struct IssuedCert {
    pub cert_pem: String,
    pub key_pem: String,
}

impl DevCa {
    /// Generate a fresh CA (ECDSA P-256).
    pub fn generate() -> Result<Self> {
        let key = KeyPair::generate().map_err(Error::tls)?;
        let params = ca_params()?;
        let cert = params.self_signed(&key).map_err(Error::tls)?;
        let key_pem = key.serialize_pem();
        Ok(Self {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
            key_pem,
        })
    }

    /// Re-open a CA written by [`write_dev_certs`] so more nodes can be issued under it.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self> {
        let key = KeyPair::from_pem(key_pem).map_err(Error::tls)?;
        Ok(Self {
            cert_pem: cert_pem.to_string(),
            issuer: Issuer::new(ca_params()?, key),
            key_pem: key_pem.to_string(),
        })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// Issue a certificate for `node` (SAN = node name; usable as client and server).
    pub fn issue(&self, node: &str) -> Result<IssuedCert> {
        check_node_name(node)?;
        let key = KeyPair::generate().map_err(Error::tls)?;
        let mut params = CertificateParams::new(vec![node.to_string()]).map_err(Error::tls)?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, node);
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params.signed_by(&key, &self.issuer).map_err(Error::tls)?;
        Ok(IssuedCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Issue a certificate for `node` and return it as a ready identity trusting this CA.
    pub fn identity(&self, node: &str) -> Result<NodeIdentity> {
        let issued = self.issue(node)?;
        NodeIdentity::from_pem(
            self.cert_pem.as_bytes(),
            issued.cert_pem.as_bytes(),
            issued.key_pem.as_bytes(),
        )
    }
}

/// Paths written by [`write_dev_certs`].
#[derive(Clone, Debug)]
pub struct DevCertFiles {
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    /// `(node, cert, key)` for each node.
    pub nodes: Vec<(String, PathBuf, PathBuf)>,
}

/// Write a development CA (`ca.pem`, `ca.key.pem`) and, for each node, `NODE.pem` and
/// `NODE.key.pem` into `out_dir` (created if missing). An existing CA in `out_dir` is reused,
/// so nodes can be added later; existing node files are overwritten.
pub fn write_dev_certs(out_dir: &Path, node_names: &[String]) -> Result<DevCertFiles> {
    if node_names.is_empty() {
        return Err(Error::Argument("at least one node name is needed".into()));
    }
    for n in node_names {
        check_node_name(n)?;
    }
    fs::create_dir_all(out_dir).map_err(|e| Error::io("creating directory", out_dir, e))?;
    let ca_cert = out_dir.join("ca.pem");
    let ca_key = out_dir.join("ca.key.pem");
    let ca = if ca_cert.exists() && ca_key.exists() {
        let c = fs::read_to_string(&ca_cert).map_err(|e| Error::io("reading", &ca_cert, e))?;
        let k = fs::read_to_string(&ca_key).map_err(|e| Error::io("reading", &ca_key, e))?;
        DevCa::from_pem(&c, &k)?
    } else {
        let ca = DevCa::generate()?;
        write_file(&ca_cert, ca.cert_pem(), false)?;
        write_file(&ca_key, ca.key_pem(), true)?;
        ca
    };
    let mut nodes = Vec::new();
    for n in node_names {
        let issued = ca.issue(n)?;
        let cert = out_dir.join(format!("{n}.pem"));
        let key = out_dir.join(format!("{n}.key.pem"));
        write_file(&cert, &issued.cert_pem, false)?;
        write_file(&key, &issued.key_pem, true)?;
        nodes.push((n.clone(), cert, key));
    }
    Ok(DevCertFiles {
        ca_cert,
        ca_key,
        nodes,
    })
}

fn write_file(path: &Path, contents: &str, secret: bool) -> Result<()> {
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = secret;
    let mut f = opts
        .open(path)
        .map_err(|e| Error::io("creating", path, e))?;
    std::io::Write::write_all(&mut f, contents.as_bytes())
        .map_err(|e| Error::io("writing", path, e))
}

/// A node's TLS identity: the CA it trusts, its certificate chain and key.
pub struct NodeIdentity {
    ca: Vec<CertificateDer<'static>>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl Clone for NodeIdentity {
    fn clone(&self) -> Self {
        Self {
            ca: self.ca.clone(),
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl std::fmt::Debug for NodeIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeIdentity")
            .field("ca_certs", &self.ca.len())
            .field("chain", &self.chain.len())
            .finish()
    }
}

impl NodeIdentity {
    /// Load PEM files: the CA certificate(s) to trust, this node's certificate chain, its key.
    pub fn load(ca: &Path, cert: &Path, key: &Path) -> Result<Self> {
        let read = |p: &Path| fs::read(p).map_err(|e| Error::io("reading", p, e));
        Self::from_pem(&read(ca)?, &read(cert)?, &read(key)?)
    }

    /// Parse PEM bytes (see [`NodeIdentity::load`]).
    pub fn from_pem(ca: &[u8], cert: &[u8], key: &[u8]) -> Result<Self> {
        let certs = |pem: &[u8], what: &str| -> Result<Vec<CertificateDer<'static>>> {
            let v = CertificateDer::pem_slice_iter(pem)
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|e| Error::Tls(format!("{what}: {e}")))?;
            if v.is_empty() {
                return Err(Error::Tls(format!("{what}: no certificate found")));
            }
            Ok(v)
        };
        let ca = certs(ca, "CA certificate")?;
        let chain = certs(cert, "node certificate")?;
        let key =
            PrivateKeyDer::from_pem_slice(key).map_err(|e| Error::Tls(format!("node key: {e}")))?;
        Ok(Self { ca, chain, key })
    }

    /// Fail unless this node's certificate is valid for the name `node`: peers check the names
    /// a node uses (in sketches, in membership) against the certificate it presents.
    pub fn check_name(&self, node: &str) -> Result<()> {
        match self.chain.first() {
            Some(cert) if cert_is_for(cert, node) => Ok(()),
            _ => Err(Error::Tls(format!(
                "the node certificate is not valid for the node name {node:?} (its subject alternative names must include it)"
            ))),
        }
    }

    fn roots(&self) -> Result<Arc<rustls::RootCertStore>> {
        let mut roots = rustls::RootCertStore::empty();
        for c in &self.ca {
            roots
                .add(c.clone())
                .map_err(|e| Error::Tls(format!("CA certificate: {e}")))?;
        }
        Ok(Arc::new(roots))
    }

    /// Server side: requires client certificates chained to the CA.
    pub fn server_config(&self) -> Result<quinn::ServerConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            self.roots()?,
            provider.clone(),
        )
        .build()
        .map_err(Error::tls)?;
        let mut tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(Error::tls)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .map_err(Error::tls)?;
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls).map_err(Error::tls)?;
        let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        cfg.transport_config(Arc::new(transport()));
        Ok(cfg)
    }

    /// Client side: verifies the server against the CA, presents this node's certificate.
    pub fn client_config(&self) -> Result<quinn::ClientConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(Error::tls)?
            .with_root_certificates(self.roots()?)
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())
            .map_err(Error::tls)?;
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).map_err(Error::tls)?;
        let mut cfg = quinn::ClientConfig::new(Arc::new(crypto));
        cfg.transport_config(Arc::new(transport()));
        Ok(cfg)
    }
}

/// The transport settings of every prescale QUIC connection (the receiver narrows its own).
pub(crate) fn transport() -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(Duration::from_secs(5)));
    if let Ok(idle) = quinn::IdleTimeout::try_from(Duration::from_secs(30)) {
        t.max_idle_timeout(Some(idle));
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_names_are_checked() {
        for ok in ["fc-eu-1", "proxy1.eu", "a"] {
            assert!(check_node_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-a", "a..b", "a/b", "../x", "a b", "é"] {
            assert!(check_node_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn writes_loadable_certs_and_reuses_ca() {
        let dir = tempfile::tempdir().unwrap();
        let files = write_dev_certs(dir.path(), &["fc-eu".into(), "proxy-1".into()]).unwrap();
        let ca_before = fs::read(&files.ca_cert).unwrap();
        for (_, cert, key) in &files.nodes {
            let id = NodeIdentity::load(&files.ca_cert, cert, key).unwrap();
            id.server_config().unwrap();
            id.client_config().unwrap();
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&files.ca_key).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "CA key readable by others: {mode:o}");
        }
        let eu = NodeIdentity::load(&files.ca_cert, &files.nodes[0].1, &files.nodes[0].2).unwrap();
        eu.check_name("fc-eu").unwrap();
        assert!(eu.check_name("proxy-1").is_err());
        assert!(eu.check_name("fc-eu.evil").is_err());
        assert!(eu.check_name("not a name").is_err());
        let again = write_dev_certs(dir.path(), &["proxy-2".into()]).unwrap();
        assert_eq!(fs::read(&again.ca_cert).unwrap(), ca_before);
        assert!(write_dev_certs(dir.path(), &["../evil".into()]).is_err());
        assert!(write_dev_certs(dir.path(), &[]).is_err());
    }
}
