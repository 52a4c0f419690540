//! Certificates and the QUIC crypto configs for mutual TLS.
//!
//! Every node (proxy or forecaster) has one certificate, signed by the deployment's CA, whose
//! subject alternative name is the node's name; it serves as both client and server identity.
//! A node trusts exactly the configured CA: servers require a client certificate chained to
//! it, clients verify the server's certificate against it and the expected node name. Nothing
//! else (no system roots) is trusted.
//!
//! A certificate for cluster membership also binds the node's role and region, as two URI
//! subject alternative names (RFC 5280 `uniformResourceIdentifier`, next to the DNS name):
//!
//! ```text
//! prescale:role:proxy          or  prescale:role:forecaster
//! prescale:region:REGION       REGION: 1 to 64 of A-Z a-z 0-9 - _ .
//! ```
//!
//! Exactly one of each; a certificate with none, several, or an unknown role binds nothing and
//! cannot take part in membership (its node refuses to start a member, its peers drop its
//! datagrams). Other `prescale:` URIs are ignored, so later builds may add keys. With openssl, an
//! operator's own CA issues such a certificate with
//! `subjectAltName = DNS:edge-1, URI:prescale:role:proxy, URI:prescale:region:eu`.
//! Certificates without them still carry sketches.
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
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use x509_parser::extensions::GeneralName;

use crate::error::{Error, Result};
use crate::membership::Role;

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

/// Prefix of the URI subject alternative name binding a member's role.
pub const ROLE_URI_PREFIX: &str = "prescale:role:";
/// Prefix of the URI subject alternative name binding a member's region.
pub const REGION_URI_PREFIX: &str = "prescale:region:";

/// Check a region name is usable in a certificate URI without escaping.
pub fn check_region_name(region: &str) -> Result<()> {
    let ok = !region.is_empty()
        && region.len() <= 64
        && region
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(Error::Argument(format!(
            "region name {region:?} must be 1 to 64 letters, digits, '-', '_' or '.'"
        )))
    }
}

/// The membership role and region a certificate binds its node to.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct MemberBinding {
    pub role: Role,
    pub region: String,
}

impl MemberBinding {
    pub fn new(role: Role, region: impl Into<String>) -> Result<Self> {
        let region = region.into();
        check_region_name(&region)?;
        Ok(Self { role, region })
    }

    fn uris(&self) -> [String; 2] {
        [
            format!("{ROLE_URI_PREFIX}{}", self.role.as_str()),
            format!("{REGION_URI_PREFIX}{}", self.region),
        ]
    }
}

/// Why a certificate binds no membership role and region.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BindingError {
    #[error("the certificate cannot be parsed")]
    Unparsable,
    #[error("the certificate carries no `{0}` URI subject alternative name")]
    Missing(&'static str),
    #[error("the certificate carries several `{0}` URI subject alternative names")]
    Several(&'static str),
    #[error("the certificate's URI {0:?} names no known role or no valid region")]
    BadValue(String),
}

/// The role and region bound by the URI subject alternative names of `cert` (see the module
/// docs for the format).
pub fn cert_member_binding(
    cert: &CertificateDer<'_>,
) -> std::result::Result<MemberBinding, BindingError> {
    let uris = san_uris(cert.as_ref()).ok_or(BindingError::Unparsable)?;
    let mut role = None;
    let mut region = None;
    for uri in uris {
        if let Some(value) = uri.strip_prefix(ROLE_URI_PREFIX) {
            if role.is_some() {
                return Err(BindingError::Several(ROLE_URI_PREFIX));
            }
            role = Some(
                value
                    .parse::<Role>()
                    .map_err(|_| BindingError::BadValue(uri.into()))?,
            );
        } else if let Some(value) = uri.strip_prefix(REGION_URI_PREFIX) {
            if region.is_some() {
                return Err(BindingError::Several(REGION_URI_PREFIX));
            }
            check_region_name(value).map_err(|_| BindingError::BadValue(uri.into()))?;
            region = Some(value.to_string());
        }
    }
    Ok(MemberBinding {
        role: role.ok_or(BindingError::Missing(ROLE_URI_PREFIX))?,
        region: region.ok_or(BindingError::Missing(REGION_URI_PREFIX))?,
    })
}

/// The URI subject alternative names of a DER certificate (none if it has no such extension),
/// or `None` if it does not parse as X.509 or carries the extension twice.
fn san_uris(der: &[u8]) -> Option<Vec<&str>> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let Some(names) = cert.subject_alternative_name().ok()? else {
        return Some(Vec::new());
    };
    Some(
        names
            .value
            .general_names
            .iter()
            .filter_map(|name| match name {
                GeneralName::URI(uri) => Some(*uri),
                _ => None,
            })
            .collect(),
    )
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

    /// Issue a certificate for `node` (SAN = node name; usable as client and server). It binds
    /// no membership role or region: see [`DevCa::issue_member`].
    pub fn issue(&self, node: &str) -> Result<IssuedCert> {
        self.issue_with(node, None)
    }

    /// Issue a certificate for `node` that also binds its membership role and region.
    pub fn issue_member(&self, node: &str, member: &MemberBinding) -> Result<IssuedCert> {
        self.issue_with(node, Some(member))
    }

    fn issue_with(&self, node: &str, member: Option<&MemberBinding>) -> Result<IssuedCert> {
        check_node_name(node)?;
        let key = KeyPair::generate().map_err(Error::tls)?;
        let mut params = CertificateParams::new(vec![node.to_string()]).map_err(Error::tls)?;
        if let Some(member) = member {
            check_region_name(&member.region)?;
            for uri in member.uris() {
                let uri = uri.try_into().map_err(Error::tls)?;
                params.subject_alt_names.push(SanType::URI(uri));
            }
        }
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
        self.identity_of(self.issue(node)?)
    }

    /// [`DevCa::identity`] with a certificate that binds `node`'s membership role and region.
    pub fn member_identity(&self, node: &str, role: Role, region: &str) -> Result<NodeIdentity> {
        self.identity_of(self.issue_member(node, &MemberBinding::new(role, region)?)?)
    }

    fn identity_of(&self, issued: IssuedCert) -> Result<NodeIdentity> {
        NodeIdentity::from_pem(
            self.cert_pem.as_bytes(),
            issued.cert_pem.as_bytes(),
            issued.key_pem.as_bytes(),
        )
    }
}

/// A node to write a certificate for: `NAME`, or `NAME:ROLE:REGION` for a certificate that
/// also binds its membership role (`proxy` or `forecaster`) and region.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeSpec {
    pub name: String,
    pub member: Option<MemberBinding>,
}

impl std::str::FromStr for NodeSpec {
    type Err = Error;

    fn from_str(spec: &str) -> Result<Self> {
        let mut parts = spec.split(':');
        let name = parts.next().unwrap_or_default();
        check_node_name(name)?;
        let member = match (parts.next(), parts.next(), parts.next()) {
            (None, _, _) => None,
            (Some(role), Some(region), None) => Some(MemberBinding::new(role.parse()?, region)?),
            _ => {
                return Err(Error::Argument(format!(
                    "node {spec:?} must be NAME or NAME:ROLE:REGION (ROLE proxy or forecaster)"
                )))
            }
        };
        Ok(Self {
            name: name.to_string(),
            member,
        })
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
/// `NODE.key.pem` into `out_dir` (created if missing). Each node is a [`NodeSpec`]: `NAME`, or
/// `NAME:ROLE:REGION` for a certificate that can take part in membership. An existing CA in
/// `out_dir` is reused, so nodes can be added later; existing node files are overwritten.
pub fn write_dev_certs(out_dir: &Path, nodes: &[String]) -> Result<DevCertFiles> {
    if nodes.is_empty() {
        return Err(Error::Argument("at least one node name is needed".into()));
    }
    let specs = nodes
        .iter()
        .map(|n| n.parse::<NodeSpec>())
        .collect::<Result<Vec<_>>>()?;
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
    for spec in specs {
        let n = spec.name;
        let issued = ca.issue_with(&n, spec.member.as_ref())?;
        let cert = out_dir.join(format!("{n}.pem"));
        let key = out_dir.join(format!("{n}.key.pem"));
        write_file(&cert, &issued.cert_pem, false)?;
        write_file(&key, &issued.key_pem, true)?;
        nodes.push((n, cert, key));
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

    /// The membership role and region this node's certificate binds.
    pub fn member_binding(&self) -> std::result::Result<MemberBinding, BindingError> {
        cert_member_binding(self.chain.first().ok_or(BindingError::Unparsable)?)
    }

    /// Fail unless this node's certificate binds exactly `role` and `region`: membership peers
    /// drop datagrams whose sender claims a role or region its certificate does not carry.
    pub fn check_member(&self, role: Role, region: &str) -> Result<()> {
        let wanted = MemberBinding {
            role,
            region: region.to_string(),
        };
        match self.member_binding() {
            Ok(bound) if bound == wanted => Ok(()),
            Ok(bound) => Err(Error::Tls(format!(
                "the node certificate binds membership role {} and region {:?}, not {} and {region:?}",
                bound.role.as_str(),
                bound.region,
                role.as_str()
            ))),
            Err(e) => Err(Error::Tls(format!(
                "the node certificate cannot take part in membership: {e} (it needs the URIs {ROLE_URI_PREFIX}{} and {REGION_URI_PREFIX}{region}; `prescale certs --node NAME:{}:{region}` writes such a certificate)",
                role.as_str(),
                role.as_str()
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

    /// A certificate under `ca` with `uris` as its URI subject alternative names.
    fn with_uris(ca: &DevCa, uris: &[&str]) -> CertificateDer<'static> {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["n1".to_string()]).unwrap();
        for uri in uris {
            params
                .subject_alt_names
                .push(SanType::URI((*uri).try_into().unwrap()));
        }
        params.signed_by(&key, &ca.issuer).unwrap().der().clone()
    }

    #[test]
    fn role_and_region_are_read_from_uri_names() {
        let ca = DevCa::generate().unwrap();
        let binding = |uris: &[&str]| cert_member_binding(&with_uris(&ca, uris));
        let eu_proxy = MemberBinding::new(Role::Proxy, "eu").unwrap();
        assert_eq!(
            binding(&["prescale:role:proxy", "prescale:region:eu"]),
            Ok(eu_proxy.clone())
        );
        // Other URIs, and `prescale:` keys this build does not know, are ignored.
        assert_eq!(
            binding(&[
                "spiffe://example.org/edge",
                "prescale:zone:a",
                "prescale:region:eu",
                "prescale:role:proxy"
            ]),
            Ok(eu_proxy)
        );
        assert_eq!(binding(&[]), Err(BindingError::Missing(ROLE_URI_PREFIX)));
        assert_eq!(
            binding(&["prescale:role:proxy"]),
            Err(BindingError::Missing(REGION_URI_PREFIX))
        );
        assert_eq!(
            binding(&[
                "prescale:role:proxy",
                "prescale:role:forecaster",
                "prescale:region:eu"
            ]),
            Err(BindingError::Several(ROLE_URI_PREFIX))
        );
        assert_eq!(
            binding(&[
                "prescale:role:proxy",
                "prescale:region:eu",
                "prescale:region:us"
            ]),
            Err(BindingError::Several(REGION_URI_PREFIX))
        );
        for bad in [
            "prescale:role:router",
            "prescale:role:",
            "prescale:role:Proxy",
        ] {
            assert!(
                matches!(
                    binding(&[bad, "prescale:region:eu"]),
                    Err(BindingError::BadValue(_))
                ),
                "{bad}"
            );
        }
        assert!(matches!(
            binding(&["prescale:role:proxy", "prescale:region:"]),
            Err(BindingError::BadValue(_))
        ));
    }

    #[test]
    fn broken_certificates_bind_nothing_and_never_panic() {
        let ca = DevCa::generate().unwrap();
        let der = with_uris(&ca, &["prescale:role:proxy", "prescale:region:eu"]);
        let bytes = der.as_ref();
        for cut in 0..bytes.len() {
            assert_eq!(san_uris(&bytes[..cut]), None, "cut at {cut}");
        }
        for at in 0..bytes.len() {
            let mut flipped = bytes.to_vec();
            flipped[at] ^= 0xff;
            let _ = san_uris(&flipped);
        }
        assert_eq!(san_uris(b"not a certificate"), None);
        assert_eq!(
            cert_member_binding(&CertificateDer::from(vec![
                0x30, 0x84, 0xff, 0xff, 0xff, 0xff
            ])),
            Err(BindingError::Unparsable)
        );
    }

    #[test]
    fn identities_bind_membership_only_when_asked_to() {
        let ca = DevCa::generate().unwrap();
        let member = ca.member_identity("fc-eu", Role::Forecaster, "eu").unwrap();
        member.check_name("fc-eu").unwrap();
        member.check_member(Role::Forecaster, "eu").unwrap();
        let err = member
            .check_member(Role::Proxy, "eu")
            .unwrap_err()
            .to_string();
        assert!(err.contains("forecaster") && err.contains("proxy"), "{err}");
        assert!(member.check_member(Role::Forecaster, "us").is_err());
        let plain = ca.identity("fc-eu").unwrap();
        let err = plain
            .check_member(Role::Forecaster, "eu")
            .unwrap_err()
            .to_string();
        assert!(err.contains("prescale:region:eu"), "{err}");
        assert!(ca.member_identity("fc-eu", Role::Proxy, "e u").is_err());
    }

    #[test]
    fn node_specs_name_a_node_and_optionally_its_role_and_region() {
        let spec = |s: &str| s.parse::<NodeSpec>();
        assert_eq!(spec("fc-eu").unwrap().member, None);
        assert_eq!(
            spec("fc-eu:forecaster:eu").unwrap(),
            NodeSpec {
                name: "fc-eu".into(),
                member: Some(MemberBinding::new(Role::Forecaster, "eu").unwrap()),
            }
        );
        for bad in [
            "fc-eu:router:eu",
            "fc-eu:proxy",
            "fc-eu:proxy:eu:x",
            "fc-eu:proxy:e u",
            "fc eu:proxy:eu",
            ":proxy:eu",
        ] {
            assert!(spec(bad).is_err(), "{bad}");
        }

        let dir = tempfile::tempdir().unwrap();
        let files = write_dev_certs(
            dir.path(),
            &["fc-eu:forecaster:eu".into(), "proxy-1".into()],
        )
        .unwrap();
        let names: Vec<&str> = files.nodes.iter().map(|(n, _, _)| n.as_str()).collect();
        assert_eq!(names, ["fc-eu", "proxy-1"]);
        let load = |i: usize| {
            NodeIdentity::load(&files.ca_cert, &files.nodes[i].1, &files.nodes[i].2).unwrap()
        };
        load(0).check_member(Role::Forecaster, "eu").unwrap();
        assert!(load(1).member_binding().is_err());
        assert!(write_dev_certs(dir.path(), &["fc-eu:forecaster".into()]).is_err());
    }
}
