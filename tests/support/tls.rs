//! TLS for tests: a CA and the server and client certificates it issues (rcgen, generated per
//! test), written to files; and an HTTPS server for axum routers whose certificate can be
//! swapped while it runs, which tells each handler the client certificate of its connection.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use axum::extract::connect_info::Connected;
use axum::serve::IncomingStream;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A certificate authority.
pub struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

/// A certificate with its key, PEM-encoded.
#[derive(Clone)]
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: Vec<u8>,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, name);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().unwrap();
        let cert = p.self_signed(&key).unwrap();
        Ca { cert, key }
    }

    pub fn pem(&self) -> String {
        self.cert.pem()
    }

    fn issue(&self, cn: &str, names: &[&str], usage: ExtendedKeyUsagePurpose) -> Leaf {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        for n in names {
            p.subject_alt_names
                .push(match n.parse::<std::net::IpAddr>() {
                    Ok(ip) => SanType::IpAddress(ip),
                    Err(_) => SanType::DnsName((*n).try_into().unwrap()),
                });
        }
        p.extended_key_usages = vec![usage];
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &self.cert, &self.key).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().to_vec(),
        }
    }

    /// A server certificate for `names` (DNS names or IP addresses).
    pub fn server(&self, names: &[&str]) -> Leaf {
        self.issue(
            names.first().copied().unwrap_or("server"),
            names,
            ExtendedKeyUsagePurpose::ServerAuth,
        )
    }

    /// A client certificate with common name `cn`.
    pub fn client(&self, cn: &str) -> Leaf {
        self.issue(cn, &[], ExtendedKeyUsagePurpose::ClientAuth)
    }

    /// Writes the CA certificate to `dir/name`.
    pub fn write(&self, dir: &Path, name: &str) -> PathBuf {
        let p = dir.join(name);
        write_atomic(&p, self.pem().as_bytes());
        p
    }
}

/// Replaces `path` with `data` in one rename, as a certificate manager does.
pub fn write_atomic(path: &Path, data: &[u8]) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, data).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

impl Leaf {
    /// Writes `dir/<stem>.crt` and `dir/<stem>.key`.
    pub fn write(&self, dir: &Path, stem: &str) -> (PathBuf, PathBuf) {
        let cert = dir.join(format!("{stem}.crt"));
        let key = dir.join(format!("{stem}.key"));
        write_atomic(&cert, self.cert_pem.as_bytes());
        write_atomic(&key, self.key_pem.as_bytes());
        (cert, key)
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A server config presenting `leaf`; with `client_ca`, client certificates it issued are
/// required.
pub fn server_config(leaf: &Leaf, client_ca: Option<&Ca>) -> Arc<rustls::ServerConfig> {
    let certs = vec![CertificateDer::from(leaf.der.clone())];
    let key = PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap();
    let b = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap();
    let b = match client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(ca.cert.der().clone()).unwrap();
            b.with_client_cert_verifier(
                rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider(),
                )
                .build()
                .unwrap(),
            )
        }
        None => b.with_no_client_auth(),
    };
    let mut cfg = b.with_single_cert(certs, key).unwrap();
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(cfg)
}

/// The peer of a TLS connection: its address and the certificate it presented.
#[derive(Debug, Clone)]
pub struct TlsPeer {
    pub addr: SocketAddr,
    pub client_cert: Option<Vec<u8>>,
    /// The server name the client sent (SNI), if any.
    pub sni: Option<String>,
}

/// The TLS config a [`serve`]d server uses for new connections; replace it to rotate.
pub type SharedConfig = Arc<RwLock<Arc<rustls::ServerConfig>>>;

struct TlsListener {
    tcp: tokio::net::TcpListener,
    config: SharedConfig,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = TlsPeer;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((tcp, addr)) = self.tcp.accept().await else {
                continue;
            };
            let cfg = self.config.read().unwrap().clone();
            // A failed handshake (a client refusing our certificate) just drops that connection.
            if let Ok(tls) = tokio_rustls::TlsAcceptor::from(cfg).accept(tcp).await {
                let client_cert = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .map(|c| c.to_vec());
                let sni = tls.get_ref().1.server_name().map(str::to_owned);
                return (
                    tls,
                    TlsPeer {
                        addr,
                        client_cert,
                        sni,
                    },
                );
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(TlsPeer {
            addr: self.tcp.local_addr()?,
            client_cert: None,
            sni: None,
        })
    }
}

impl Connected<IncomingStream<'_, TlsListener>> for TlsPeer {
    fn connect_info(stream: IncomingStream<'_, TlsListener>) -> Self {
        stream.remote_addr().clone()
    }
}

/// Serves `router` over TLS on 127.0.0.1 with `config` (handlers can take
/// `ConnectInfo<TlsPeer>`); returns the address. Stops with the test's runtime.
pub async fn serve(router: axum::Router, config: SharedConfig) -> SocketAddr {
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    let listener = TlsListener { tcp, config };
    tokio::spawn(async move {
        let _ = axum::serve(
            listener,
            router.into_make_service_with_connect_info::<TlsPeer>(),
        )
        .await;
    });
    addr
}

/// A CA with etcd's server certificate and a client certificate, as files in a temp dir.
pub struct Pki {
    pub ca: Ca,
    pub dir: tempfile::TempDir,
}

impl Pki {
    /// A CA, etcd's certificate for `names`, and a client certificate, as files.
    pub fn new(names: &[&str]) -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new("etcd-ca");
        ca.write(dir.path(), "ca.pem");
        ca.server(names).write(dir.path(), "server");
        // etcd takes a client certificate's common name as the user when no password is
        // given: this one names no user, so only the password authenticates.
        ca.client("tls-client").write(dir.path(), "client");
        Pki { ca, dir }
    }

    pub fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    pub fn etcd_tls(&self, client_auth: bool) -> super::etcd::EtcdTls {
        super::etcd::EtcdTls {
            cert: self.dir.path().join("server.crt"),
            key: self.dir.path().join("server.key"),
            client_ca: client_auth.then(|| self.dir.path().join("ca.pem")),
        }
    }

    /// The agent.yaml TLS fields with the client certificate.
    pub fn fields(&self) -> String {
        format!(
            "tls_enabled: true\ntls_ca_path: {}\ntls_cert_path: {}\ntls_key_path: {}\n",
            self.path("ca.pem"),
            self.path("client.crt"),
            self.path("client.key")
        )
    }
}
