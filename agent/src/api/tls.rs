//! HTTPS for the agent's own server (`server.http_tls_config`, validated into
//! [`ServerTlsSettings`] by `agent/src/config/http.rs`).
//!
//! - The certificate, key and client CA files are read when the agent starts (an unreadable or
//!   invalid one stops the start with its path), and read again at most every
//!   [`RECHECK`] while connections arrive: when their contents changed, new connections use
//!   them (a rotated certificate needs no restart); connections already open keep theirs. A
//!   changed file that is not usable is logged and the previous ones stay in use.
//! - A config reload may change the settings ([`ServerTls::replace`]); it is refused when the
//!   new files are not usable.
//! - `client_auth_type` as in Go: `RequestClientCert` and `RequireAnyClientCert` take any
//!   certificate (its handshake signature is still checked), the `Verify` kinds check it
//!   against `client_ca_file`.
//! - rustls speaks TLS 1.2 and 1.3: a `min_version` of `TLS10` or `TLS11` means 1.2.
//! - Handshakes run concurrently, each bounded by [`HANDSHAKE_TIMEOUT`], so a client that
//!   connects and sends nothing holds up no one. A plain HTTP request on the HTTPS port gets
//!   Go's answer: `400 Client sent an HTTP request to an HTTPS server.`

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_rustls::server::TlsStream;

use crate::config::http::{ClientAuth, Curve, ServerTlsSettings};
use crate::httpclient::tls;

/// How often, at most, the files are read again to see whether they changed.
pub const RECHECK: Duration = Duration::from_secs(1);
/// How long a client has to complete its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the server's TLS config could not be built: names the field and file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("server.http_tls_config.{field} {path}: {message}")]
pub struct ServerTlsError {
    pub field: &'static str,
    pub path: String,
    pub message: String,
}

/// The contents of the files a config reads.
#[derive(Clone, PartialEq, Eq)]
struct Files {
    cert: Vec<u8>,
    key: Vec<u8>,
    client_ca: Option<Vec<u8>>,
}

impl Files {
    async fn read(s: &ServerTlsSettings) -> Result<Files, ServerTlsError> {
        let read = |field: &'static str, path: &std::path::Path| {
            let path = path.to_path_buf();
            async move {
                tokio::fs::read(&path).await.map_err(|e| ServerTlsError {
                    field,
                    path: path.display().to_string(),
                    message: format!("cannot read: {e}"),
                })
            }
        };
        Ok(Files {
            cert: read("cert_file", &s.cert_file).await?,
            key: read("key_file", &s.key_file).await?,
            client_ca: match &s.client_ca_file {
                Some(p) => Some(read("client_ca_file", p).await?),
                None => None,
            },
        })
    }
}

/// The server's TLS settings and the rustls config built from their files.
pub struct ServerTls {
    state: Mutex<State>,
}

struct State {
    settings: ServerTlsSettings,
    files: Files,
    config: Arc<rustls::ServerConfig>,
    next_check: Instant,
    /// A check (file reads) is under way: others use the current config meanwhile.
    checking: bool,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        f.debug_struct("ServerTls")
            .field("settings", &st.settings)
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Reads the files and builds the config; fails naming the field and file at fault.
    pub async fn load(settings: &ServerTlsSettings) -> Result<Arc<ServerTls>, ServerTlsError> {
        let files = Files::read(settings).await?;
        let config = build(settings, &files)?;
        Ok(Arc::new(ServerTls {
            state: Mutex::new(State {
                settings: settings.clone(),
                files,
                config,
                next_check: Instant::now() + RECHECK,
                checking: false,
            }),
        }))
    }

    /// Uses `settings` for new connections from now on, if their files make a usable config;
    /// otherwise keeps the current one and says why.
    pub async fn replace(&self, settings: &ServerTlsSettings) -> Result<(), ServerTlsError> {
        let files = Files::read(settings).await?;
        let config = build(settings, &files)?;
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.settings = settings.clone();
        st.files = files;
        st.config = config;
        st.next_check = Instant::now() + RECHECK;
        Ok(())
    }

    /// The config for a new connection: the files are read again when a check is due, and
    /// the config rebuilt when they changed.
    async fn current(&self) -> Arc<rustls::ServerConfig> {
        let settings = {
            let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
            if st.checking || Instant::now() < st.next_check {
                return st.config.clone();
            }
            st.checking = true;
            st.settings.clone()
        };
        let read = Files::read(&settings).await;
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.checking = false;
        st.next_check = Instant::now() + RECHECK;
        if st.settings != settings {
            // Replaced meanwhile by a reload.
            return st.config.clone();
        }
        match read {
            Ok(files) if files == st.files => {}
            Ok(files) => match build(&settings, &files) {
                Ok(config) => {
                    tracing::info!(cert_file = %settings.cert_file.display(), "server.http_tls_config: certificate files changed; new connections use them");
                    st.config = config;
                    st.files = files;
                }
                Err(e) => {
                    // Not again until the files change once more.
                    st.files = files;
                    tracing::warn!(error = %e, "server.http_tls_config: the changed files are not usable; new connections keep the ones loaded before");
                }
            },
            Err(e) => {
                tracing::warn!(error = %e, "server.http_tls_config: cannot read the files; new connections keep the ones loaded before")
            }
        }
        st.config.clone()
    }
}

fn invalid(field: &'static str, path: &std::path::Path, e: tls::TlsError) -> ServerTlsError {
    let message = match e {
        tls::TlsError::Invalid { message, .. } => message,
        other => other.to_string(),
    };
    ServerTlsError {
        field,
        path: path.display().to_string(),
        message,
    }
}

/// The rustls config for `s` with the contents of its files.
fn build(s: &ServerTlsSettings, f: &Files) -> Result<Arc<rustls::ServerConfig>, ServerTlsError> {
    let provider = {
        let mut p = (*tls::provider_with_suites(&s.cipher_suites)).clone();
        if !s.curves.is_empty() {
            use rustls::crypto::ring::kx_group;
            p.kx_groups = s
                .curves
                .iter()
                .map(|c| match c {
                    Curve::X25519 => kx_group::X25519,
                    Curve::P256 => kx_group::SECP256R1,
                    Curve::P384 => kx_group::SECP384R1,
                })
                .collect();
        }
        Arc::new(p)
    };
    let versions = tls::versions(s.min_version, s.max_version).map_err(|e| ServerTlsError {
        field: "max_version",
        path: String::new(),
        message: e.to_string(),
    })?;
    let certs = tls::certificates("cert_file", &f.cert)
        .map_err(|e| invalid("cert_file", &s.cert_file, e))?;
    let key =
        tls::private_key("key_file", &f.key).map_err(|e| invalid("key_file", &s.key_file, e))?;
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions)
        .map_err(|e| ServerTlsError {
            field: "min_version",
            path: String::new(),
            message: e.to_string(),
        })?;
    let ca_path = s
        .client_ca_file
        .as_deref()
        .unwrap_or(std::path::Path::new(""));
    let roots = match &f.client_ca {
        Some(pem) => Some(Arc::new(
            tls::root_store("client_ca_file", pem)
                .map_err(|e| invalid("client_ca_file", ca_path, e))?,
        )),
        None => None,
    };
    let verifier_err = |e: rustls::server::VerifierBuilderError| ServerTlsError {
        field: "client_ca_file",
        path: ca_path.display().to_string(),
        message: e.to_string(),
    };
    let builder = match (s.client_auth, roots) {
        (ClientAuth::None, _) => builder.with_no_client_auth(),
        (ClientAuth::Request, _) => builder.with_client_cert_verifier(Arc::new(AnyClientCert {
            provider: provider.clone(),
            mandatory: false,
        })),
        (ClientAuth::RequireAny, _) => builder.with_client_cert_verifier(Arc::new(AnyClientCert {
            provider: provider.clone(),
            mandatory: true,
        })),
        (ClientAuth::VerifyIfGiven, Some(roots)) => builder.with_client_cert_verifier(
            WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
                .allow_unauthenticated()
                .build()
                .map_err(verifier_err)?,
        ),
        (ClientAuth::RequireAndVerify, Some(roots)) => builder.with_client_cert_verifier(
            WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
                .build()
                .map_err(verifier_err)?,
        ),
        // Validation requires client_ca_file for these.
        (ClientAuth::VerifyIfGiven | ClientAuth::RequireAndVerify, None) => {
            return Err(ServerTlsError {
                field: "client_ca_file",
                path: String::new(),
                message: "required by client_auth_type".into(),
            })
        }
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| ServerTlsError {
            field: "key_file",
            path: s.key_file.display().to_string(),
            message: format!("does not match cert_file {}: {e}", s.cert_file.display()),
        })?;
    config.ignore_client_order = s.prefer_server_cipher_suites;
    // The server speaks HTTP/1.1.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// `RequestClientCert` / `RequireAnyClientCert`: any certificate, unverified (as in Go); the
/// handshake signature still proves the client holds its key.
#[derive(Debug)]
struct AnyClientCert {
    provider: Arc<CryptoProvider>,
    mandatory: bool,
}

impl ClientCertVerifier for AnyClientCert {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A listener that hands the server TLS connections, their handshakes done concurrently.
pub struct TlsListener {
    tcp: TcpListener,
    tls: Arc<ServerTls>,
    handshakes: JoinSet<Option<(TlsStream<TcpStream>, SocketAddr)>>,
}

impl TlsListener {
    pub fn new(tcp: TcpListener, tls: Arc<ServerTls>) -> Self {
        TlsListener {
            tcp,
            tls,
            handshakes: JoinSet::new(),
        }
    }
}

/// Go's answer to a plain HTTP request on an HTTPS port.
const PLAIN_HTTP_ANSWER: &[u8] =
    b"HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server.\n";

/// The first byte of a TLS handshake record.
const TLS_HANDSHAKE: u8 = 0x16;

async fn handshake(
    tls: Arc<ServerTls>,
    mut tcp: TcpStream,
    peer: SocketAddr,
) -> Option<(TlsStream<TcpStream>, SocketAddr)> {
    let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
    let mut first = [0u8; 1];
    match tokio::time::timeout_at(deadline, tcp.peek(&mut first)).await {
        Ok(Ok(1)) => {}
        _ => return None,
    }
    if first[0] != TLS_HANDSHAKE {
        let _ = tokio::time::timeout_at(deadline, async {
            let _ = tcp.write_all(PLAIN_HTTP_ANSWER).await;
            let _ = tcp.shutdown().await;
        })
        .await;
        return None;
    }
    let config = tls.current().await;
    match tokio::time::timeout_at(
        deadline,
        tokio_rustls::TlsAcceptor::from(config).accept(tcp),
    )
    .await
    {
        Ok(Ok(stream)) => Some((stream, peer)),
        Ok(Err(e)) => {
            tracing::info!(peer = %peer, error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::info!(peer = %peer, timeout = ?HANDSHAKE_TIMEOUT, "TLS handshake timed out");
            None
        }
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            tokio::select! {
                res = self.tcp.accept() => match res {
                    Ok((tcp, peer)) => {
                        let _ = tcp.set_nodelay(true);
                        self.handshakes.spawn(handshake(self.tls.clone(), tcp, peer));
                    }
                    Err(e) => {
                        // Out of file descriptors and the like: wait, as axum does.
                        tracing::warn!(error = %e, "accepting a connection failed");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                },
                Some(done) = self.handshakes.join_next(), if !self.handshakes.is_empty() => {
                    if let Ok(Some(conn)) = done {
                        return conn;
                    }
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}
