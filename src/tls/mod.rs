//! TLS with rustls (the ring provider): loading and checking certificates,
//! choosing one by SNI, session resumption, ALPN; and TLS to backends.

pub mod tickets;

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::server::{
    ClientHello, NoServerSessionStorage, ResolvesServerCert, ServerSessionMemoryCache,
};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
pub use tickets::{KeyMaterial, TicketKeys};
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// The crypto provider: ring builds with a C compiler alone (aws-lc-rs also
/// wants cmake and takes minutes here), and its ECDSA/AES-GCM are fast.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Key bytes that never show in a `Debug` print.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretDer(pub Vec<u8>);

impl fmt::Debug for SecretDer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<private key>")
    }
}

/// One certificate and key, read and checked when the config was loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateConfig {
    /// The `cert` path as written: the metric label.
    pub label: String,
    pub chain: Vec<Vec<u8>>,
    pub key: SecretDer,
    /// DNS names of the subject alternative names, lowercase; wildcards as
    /// `*.example.com`.
    pub names: Vec<String>,
    /// Unix time of the end-entity certificate's `notAfter`.
    pub not_after: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerTlsConfig {
    pub certificates: Vec<CertificateConfig>,
    pub session_resumption: bool,
    /// ALPN protocols advertised; none unless configured.
    pub alpn: Vec<String>,
    pub handshake_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendTlsConfig {
    pub server_name: String,
    /// DER certificates of the CA file; `None` means the webpki roots.
    pub ca: Option<Vec<Vec<u8>>>,
}

/// Why TLS material could not be loaded or a TLS config built; the message
/// names the file or certificate to fix.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not PEM: {detail}")]
    NotPem { path: String, detail: String },
    #[error("{path} holds no certificate")]
    NoCertificate { path: String },
    #[error("{path} holds no usable private key: {detail}")]
    NoKey { path: String, detail: String },
    #[error("key {key} does not match certificate {cert}: {detail}")]
    KeyMismatch {
        key: String,
        cert: String,
        detail: String,
    },
    #[error("{path}: cannot parse the certificate: {detail}")]
    Parse { path: String, detail: String },
    #[error("{label}: {detail}")]
    Certificate { label: String, detail: String },
    #[error("TLS setup: {0}")]
    Setup(String),
    #[error("CA certificate: {0}")]
    Ca(String),
    #[error("server_name {name:?}: {detail}")]
    ServerName { name: String, detail: String },
}

/// Reads a PEM chain and key; checks that they parse and match. The key may
/// be PKCS#8, PKCS#1 (RSA) or SEC1 (EC).
pub fn load_certificate(base: &Path, cert: &str, key: &str) -> Result<CertificateConfig, TlsError> {
    let cert_pem = std::fs::read(base.join(cert)).map_err(|source| TlsError::Read {
        what: "certificate",
        path: cert.to_string(),
        source,
    })?;
    let key_pem = std::fs::read(base.join(key)).map_err(|source| TlsError::Read {
        what: "key",
        path: key.to_string(),
        source,
    })?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::NotPem {
            path: cert.to_string(),
            detail: format!("{e:?}"),
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: cert.to_string(),
        });
    }
    let key_der = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::NoKey {
        path: key.to_string(),
        detail: format!("{e:?}"),
    })?;
    CertifiedKey::from_der(chain.clone(), key_der.clone_key(), &provider()).map_err(|e| {
        TlsError::KeyMismatch {
            key: key.to_string(),
            cert: cert.to_string(),
            detail: e.to_string(),
        }
    })?;
    let (_, parsed) =
        x509_parser::parse_x509_certificate(&chain[0]).map_err(|e| TlsError::Parse {
            path: cert.to_string(),
            detail: e.to_string(),
        })?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = parsed.subject_alternative_name() {
        for name in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(dns) = name {
                names.push(dns.to_ascii_lowercase());
            }
        }
    }
    Ok(CertificateConfig {
        label: cert.to_string(),
        chain: chain.iter().map(|c| c.to_vec()).collect(),
        key: SecretDer(key_der.secret_der().to_vec()),
        names,
        not_after: parsed.validity().not_after.timestamp(),
    })
}

/// Reads the CA certificates a backend's certificate must chain to.
pub fn load_ca(base: &Path, ca: &str) -> Result<Vec<Vec<u8>>, TlsError> {
    let pem = std::fs::read(base.join(ca)).map_err(|source| TlsError::Read {
        what: "CA file",
        path: ca.to_string(),
        source,
    })?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::NotPem {
            path: ca.to_string(),
            detail: format!("{e:?}"),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: ca.to_string(),
        });
    }
    Ok(certs.iter().map(|c| c.to_vec()).collect())
}

/// Chooses the certificate whose SAN names the client's SNI (exact first,
/// then `*.` wildcards); no SNI or no match gets the first one listed.
#[derive(Debug)]
struct BySni {
    keys: Vec<Arc<CertifiedKey>>,
    exact: HashMap<String, usize>,
    wildcard: HashMap<String, usize>,
}

impl BySni {
    fn pick(&self, sni: Option<&str>) -> usize {
        let Some(sni) = sni.map(str::to_ascii_lowercase) else {
            return 0;
        };
        if let Some(&i) = self.exact.get(&sni) {
            return i;
        }
        sni.split_once('.')
            .and_then(|(_, parent)| self.wildcard.get(parent).copied())
            .unwrap_or(0)
    }
}

impl ResolvesServerCert for BySni {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.keys[self.pick(hello.server_name())].clone())
    }
}

/// A listener's TLS, built once per config generation.
pub struct ListenerTls {
    acceptor: TlsAcceptor,
    /// The same config without ALPN, when ALPN is configured: a client that
    /// offers none of our protocols is served without ALPN (as nginx and
    /// HAProxy do), where rustls alone would refuse it.
    without_alpn: Option<Arc<ServerConfig>>,
    pub handshake_timeout: Duration,
}

impl ListenerTls {
    /// The server side of a handshake on `stream`.
    pub async fn accept(
        &self,
        stream: TcpStream,
    ) -> std::io::Result<tokio_rustls::server::TlsStream<TcpStream>> {
        let Some(without_alpn) = &self.without_alpn else {
            return self.acceptor.accept(stream).await;
        };
        let start =
            tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), stream)
                .await?;
        let ours = &self.acceptor.config().alpn_protocols;
        let overlap = match start.client_hello().alpn() {
            None => true,
            Some(mut offered) => offered.any(|p| ours.iter().any(|o| o.as_slice() == p)),
        };
        let config = if overlap {
            self.acceptor.config().clone()
        } else {
            without_alpn.clone()
        };
        start.into_stream(config).await
    }
}

/// What resumption needs that outlives a snapshot: the ticket keys (kept
/// across reloads, handed on at upgrade) and the session-ID cache of TLS
/// 1.2 clients without tickets (kept across reloads; a successor starts it
/// empty).
pub struct Resumption {
    pub tickets: Arc<TicketKeys>,
    cache: Arc<ServerSessionMemoryCache>,
}

impl Resumption {
    pub fn new(tickets: TicketKeys) -> Resumption {
        Resumption {
            tickets: Arc::new(tickets),
            cache: ServerSessionMemoryCache::new(16 * 1024),
        }
    }
}

pub fn listener_tls(
    config: &ListenerTlsConfig,
    resumption: &Resumption,
) -> Result<ListenerTls, TlsError> {
    let provider = provider();
    let mut resolver = BySni {
        keys: Vec::new(),
        exact: HashMap::new(),
        wildcard: HashMap::new(),
    };
    for (i, c) in config.certificates.iter().enumerate() {
        let chain = c
            .chain
            .iter()
            .map(|d| CertificateDer::from(d.clone()))
            .collect();
        let invalid = |detail: String| TlsError::Certificate {
            label: c.label.clone(),
            detail,
        };
        let key = PrivateKeyDer::try_from(c.key.0.clone()).map_err(|e| invalid(e.to_string()))?;
        let certified =
            CertifiedKey::from_der(chain, key, &provider).map_err(|e| invalid(e.to_string()))?;
        resolver.keys.push(Arc::new(certified));
        for name in &c.names {
            match name.strip_prefix("*.") {
                Some(parent) => resolver.wildcard.entry(parent.to_string()).or_insert(i),
                None => resolver.exact.entry(name.clone()).or_insert(i),
            };
        }
    }
    let mut server = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::Setup(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    if config.session_resumption {
        server.session_storage = resumption.cache.clone();
        server.ticketer = resumption.tickets.clone();
    } else {
        server.session_storage = Arc::new(NoServerSessionStorage {});
        server.send_tls13_tickets = 0;
    }
    // Same certificates, tickets and session cache: only ALPN differs.
    let without_alpn = (!config.alpn.is_empty()).then(|| Arc::new(server.clone()));
    server.alpn_protocols = config.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    Ok(ListenerTls {
        acceptor: TlsAcceptor::from(Arc::new(server)),
        without_alpn,
        handshake_timeout: config.handshake_timeout,
    })
}

/// A cluster's TLS to its backends.
pub struct BackendTls {
    pub connector: TlsConnector,
    pub server_name: ServerName<'static>,
}

pub fn backend_tls(config: &BackendTlsConfig) -> Result<BackendTls, TlsError> {
    let mut roots = RootCertStore::empty();
    match &config.ca {
        Some(certs) => {
            for der in certs {
                roots
                    .add(CertificateDer::from(der.clone()))
                    .map_err(|e| TlsError::Ca(e.to_string()))?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let client = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::Setup(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let server_name =
        ServerName::try_from(config.server_name.clone()).map_err(|e| TlsError::ServerName {
            name: config.server_name.clone(),
            detail: e.to_string(),
        })?;
    Ok(BackendTls {
        connector: TlsConnector::from(Arc::new(client)),
        server_name,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sni_picks_exact_then_wildcard_then_the_first() {
        let r = BySni {
            keys: Vec::new(),
            exact: [("a.example.com".to_string(), 1)].into(),
            wildcard: [("example.com".to_string(), 2)].into(),
        };
        assert_eq!(r.pick(Some("a.example.com")), 1);
        assert_eq!(r.pick(Some("A.Example.COM")), 1);
        assert_eq!(r.pick(Some("b.example.com")), 2);
        assert_eq!(r.pick(Some("x.b.example.com")), 0);
        assert_eq!(r.pick(Some("other.org")), 0);
        assert_eq!(r.pick(None), 0);
    }
}
