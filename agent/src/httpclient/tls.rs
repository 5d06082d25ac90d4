//! rustls client configs from a validated `tls_config`, shared by every outbound connection
//! (HTTP clients, the etcd client).
//!
//! - `ca` / `ca_file` replaces the system roots (as Go does); without it the platform verifier
//!   checks against the system's trust store.
//! - `server_name`: the server's certificate is verified against this name instead of the URL's
//!   host. Scrapes send it as SNI too (transport.rs); reqwest's requests send the URL's host.
//! - `min_version` / `max_version`: rustls speaks TLS 1.2 and 1.3 only, so `TLS10`/`TLS11` as a
//!   minimum mean 1.2 (Go's client default minimum is 1.2 as well).
//! - `insecure_skip_verify`: any certificate is accepted, but the handshake signature is still
//!   checked so the session is bound to the presented key.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use crate::config::http::{TlsSettings, TlsVersion};
use crate::config::secret::SecretSource;

/// The PEM data of a `tls_config`, as read from its files or inline values.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Material {
    pub ca: Option<Vec<u8>>,
    pub cert: Option<Vec<u8>>,
    pub key: Option<Vec<u8>>,
}

impl std::fmt::Debug for Material {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Material")
            .field("ca", &self.ca.as_ref().map(Vec::len))
            .field("cert", &self.cert.as_ref().map(Vec::len))
            .field("key", &self.key.as_ref().map(|_| "<secret>"))
            .finish()
    }
}

/// Why a TLS config could not be built; `field` is the config field at fault.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read tls_config.{field} {path}: {source}")]
    Read {
        field: &'static str,
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid tls_config.{field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
}

fn read_err(field: &'static str, src: &SecretSource, source: std::io::Error) -> TlsError {
    TlsError::Read {
        field,
        path: src.path().map(Path::to_path_buf).unwrap_or_default(),
        source,
    }
}

/// `(field, source)` of each PEM a config uses, in a fixed order.
fn sources(t: &TlsSettings) -> [(&'static str, Option<&SecretSource>); 3] {
    [
        ("ca_file", t.ca.as_ref()),
        ("cert_file", t.client_cert.as_ref().map(|c| &c.cert)),
        ("key_file", t.client_cert.as_ref().map(|c| &c.key)),
    ]
}

impl Material {
    /// Reads the PEM data with blocking calls (building a client).
    pub fn load_blocking(t: &TlsSettings) -> Result<Material, TlsError> {
        let mut out = [None, None, None];
        for (slot, (field, src)) in out.iter_mut().zip(sources(t)) {
            if let Some(src) = src {
                *slot = Some(src.bytes_blocking().map_err(|e| read_err(field, src, e))?);
            }
        }
        let [ca, cert, key] = out;
        Ok(Material { ca, cert, key })
    }

    /// Reads the PEM data off the async workers (checking for rotated files).
    pub async fn load(t: &TlsSettings) -> Result<Material, TlsError> {
        let mut out = [None, None, None];
        for (slot, (field, src)) in out.iter_mut().zip(sources(t)) {
            if let Some(src) = src {
                *slot = Some(src.bytes().await.map_err(|e| read_err(field, src, e))?);
            }
        }
        let [ca, cert, key] = out;
        Ok(Material { ca, cert, key })
    }
}

/// The process's rustls provider (ring), installing it if nothing has.
pub fn provider() -> Arc<CryptoProvider> {
    super::ensure_crypto_provider();
    CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()))
}

/// The provider restricted to `suites` (Go names, validated by the config): the listed TLS 1.2
/// suites plus every TLS 1.3 suite (not configurable, as in Go). Empty: the provider as is.
pub fn provider_with_suites(suites: &[String]) -> Arc<CryptoProvider> {
    let base = provider();
    if suites.is_empty() {
        return base;
    }
    let mut p = (*base).clone();
    p.cipher_suites.retain(|s| match s {
        rustls::SupportedCipherSuite::Tls13(_) => true,
        rustls::SupportedCipherSuite::Tls12(_) => {
            let name = format!("{:?}", s.suite());
            suites.contains(&name)
        }
    });
    Arc::new(p)
}

/// Parses every certificate of a PEM bundle.
pub fn certificates(
    field: &'static str,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Invalid {
            field,
            message: format!("invalid PEM: {e}"),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Invalid {
            field,
            message: "no PEM certificate found".into(),
        });
    }
    Ok(certs)
}

/// Parses a PEM private key (PKCS#8, PKCS#1 or SEC1).
pub fn private_key(field: &'static str, pem: &[u8]) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| TlsError::Invalid {
        field,
        // The key's bytes never appear in the message.
        message: format!("invalid PEM private key: {e}"),
    })
}

/// A root store from a PEM bundle.
pub fn root_store(field: &'static str, pem: &[u8]) -> Result<rustls::RootCertStore, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in certificates(field, pem)? {
        roots.add(cert).map_err(|e| TlsError::Invalid {
            field,
            message: format!("invalid certificate: {e}"),
        })?;
    }
    Ok(roots)
}

/// The protocol versions between `min` and `max` that rustls has.
pub fn versions(
    min: Option<TlsVersion>,
    max: Option<TlsVersion>,
) -> Result<Vec<&'static rustls::SupportedProtocolVersion>, TlsError> {
    let min = min.unwrap_or(TlsVersion::Tls12);
    let max = max.unwrap_or(TlsVersion::Tls13);
    let out: Vec<_> = [
        (TlsVersion::Tls12, &rustls::version::TLS12),
        (TlsVersion::Tls13, &rustls::version::TLS13),
    ]
    .into_iter()
    .filter(|(v, _)| *v >= min && *v <= max)
    .map(|(_, p)| p)
    .collect();
    if out.is_empty() {
        return Err(TlsError::Invalid {
            field: "max_version",
            message: format!(
                "no TLS version between min_version {min:?} and max_version {max:?} is supported (only TLS12 and TLS13 are)"
            ),
        });
    }
    Ok(out)
}

/// `server_name` as rustls takes it: the name certificates are verified against, and the SNI
/// scrapes send (transport.rs).
pub fn server_name(t: &TlsSettings) -> Result<Option<ServerName<'static>>, TlsError> {
    t.server_name
        .as_ref()
        .map(|name| {
            ServerName::try_from(name.clone()).map_err(|e| TlsError::Invalid {
                field: "server_name",
                message: format!("{name:?}: {e}"),
            })
        })
        .transpose()
}

/// The rustls client config for `t` with the PEM data in `m`. `alpn` is offered as given (reqwest
/// leaves ALPN to a preconfigured config).
pub fn client_config(
    t: &TlsSettings,
    m: &Material,
    alpn: &[&[u8]],
) -> Result<rustls::ClientConfig, TlsError> {
    let provider = provider_with_suites(&t.cipher_suites);
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions(t.min_version, t.max_version)?)
        .map_err(|e| TlsError::Invalid {
            field: "min_version",
            message: e.to_string(),
        })?;
    let verifier: Arc<dyn ServerCertVerifier> = if t.insecure_skip_verify {
        Arc::new(NoVerify(provider.clone()))
    } else {
        let base: Arc<dyn ServerCertVerifier> = match &m.ca {
            Some(pem) => rustls::client::WebPkiServerVerifier::builder_with_provider(
                Arc::new(root_store("ca", pem)?),
                provider.clone(),
            )
            .build()
            .map_err(|e| TlsError::Invalid {
                field: "ca",
                message: e.to_string(),
            })?,
            None => system_verifier(&provider)?,
        };
        match server_name(t)? {
            Some(name) => Arc::new(FixedServerName { inner: base, name }),
            None => base,
        }
    };
    let builder = builder
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut cfg = match (&m.cert, &m.key) {
        (Some(cert), Some(key)) => builder
            .with_client_auth_cert(certificates("cert", cert)?, private_key("key", key)?)
            .map_err(|e| TlsError::Invalid {
                field: "cert",
                message: format!("client certificate: {e}"),
            })?,
        _ => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(cfg)
}

/// The verifier for the system's trust store, made once per process: loading the system roots
/// costs milliseconds, and every scrape job, SD provider and remote_write builds a client.
fn system_verifier(
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<dyn ServerCertVerifier>, TlsError> {
    static SYSTEM: std::sync::OnceLock<Arc<dyn ServerCertVerifier>> = std::sync::OnceLock::new();
    if let Some(v) = SYSTEM.get() {
        return Ok(v.clone());
    }
    let v: Arc<dyn ServerCertVerifier> = Arc::new(
        rustls_platform_verifier::Verifier::new(provider.clone()).map_err(|e| {
            TlsError::Invalid {
                field: "ca",
                message: format!("loading the system roots: {e}"),
            }
        })?,
    );
    Ok(SYSTEM.get_or_init(|| v).clone())
}

/// `insecure_skip_verify`: accepts any certificate, but still checks the handshake signature
/// so the session is at least bound to the presented key.
#[derive(Debug)]
struct NoVerify(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `server_name`: verifies the certificate against the configured name instead of the URL's.
#[derive(Debug)]
struct FixedServerName {
    inner: Arc<dyn ServerCertVerifier>,
    name: ServerName<'static>,
}

impl ServerCertVerifier for FixedServerName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner
            .verify_server_cert(end_entity, intermediates, &self.name, ocsp, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::secret::Secret;

    #[test]
    fn errors_name_the_field() {
        let t = TlsSettings {
            ca: Some(SecretSource::Inline(Secret::new("not a pem"))),
            ..Default::default()
        };
        let m = Material::load_blocking(&t).unwrap();
        assert_eq!(
            client_config(&t, &m, &[]).unwrap_err().to_string(),
            "invalid tls_config.ca: no PEM certificate found"
        );
        let t = TlsSettings {
            ca: Some(SecretSource::File("/nonexistent/ca.pem".into())),
            ..Default::default()
        };
        assert!(Material::load_blocking(&t)
            .unwrap_err()
            .to_string()
            .starts_with("cannot read tls_config.ca_file /nonexistent/ca.pem"));
        let t = TlsSettings {
            insecure_skip_verify: true,
            min_version: Some(TlsVersion::Tls13),
            ..Default::default()
        };
        let cfg = client_config(&t, &Material::default(), &[b"http/1.1"]).unwrap();
        assert_eq!(cfg.alpn_protocols, vec![b"http/1.1".to_vec()]);
        let names = |suites: &[&str]| {
            let owned: Vec<String> = suites.iter().map(|s| (*s).to_owned()).collect();
            provider_with_suites(&owned)
                .cipher_suites
                .iter()
                .map(|s| format!("{:?}", s.suite()))
                .collect::<Vec<_>>()
        };
        // Every Go name the config accepts is a suite rustls has, by the same name.
        let all = names(&crate::config::http::CIPHER_SUITES);
        for name in crate::config::http::CIPHER_SUITES {
            let want = if name.starts_with("TLS_ECDHE") {
                name.to_owned()
            } else {
                format!("TLS13_{}", &name[4..])
            };
            assert!(all.contains(&want), "{name}: {all:?}");
        }
        let one = names(&["TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"]);
        assert_eq!(
            one.iter()
                .filter(|n| !n.starts_with("TLS13_"))
                .collect::<Vec<_>>(),
            ["TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"]
        );
        let t = TlsSettings {
            max_version: Some(TlsVersion::Tls11),
            ..Default::default()
        };
        assert!(client_config(&t, &Material::default(), &[])
            .unwrap_err()
            .to_string()
            .contains("only TLS12 and TLS13"));
    }
}
