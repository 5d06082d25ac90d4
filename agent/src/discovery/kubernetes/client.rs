//! Where the Kubernetes API is and the HTTP client that reaches it: `api_server` with the
//! block's HTTP client fields, the pod's service account (in-cluster config), or a kubeconfig
//! file. Errors name the variable, file or field at fault.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::config::http::{
    Auth, BasicAuth, HttpClientConfig, HttpClientSettings, TlsConfig, TlsSettings,
};
use crate::config::sd::{KubernetesApi, KubernetesSd};
use crate::config::secret::{Secret, SecretSource};
use crate::httpclient::{self, HttpClient};

/// The service account directory of a pod.
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("unable to load in-cluster configuration, KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT must be defined")]
    NotInCluster,
    #[error("cannot read the service account token {path}: {source}")]
    Token {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("could not determine the pod's namespace: reading {path}: {source}")]
    OwnNamespace {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("could not read own namespace name (empty file {0})")]
    EmptyOwnNamespace(PathBuf),
    #[error("kubeconfig_file {path}: {message}")]
    Kubeconfig { path: PathBuf, message: String },
    #[error("invalid Kubernetes API URL {url:?}: {message}")]
    Url { url: String, message: String },
    #[error("{0}")]
    Client(#[from] httpclient::Error),
}

/// How to reach the API: its base URL and a client carrying the credentials.
#[derive(Debug, Clone)]
pub struct Connection {
    /// Without a trailing `/`; request paths (`/api/v1/pods`) are appended.
    pub base: String,
    /// `base` with any password in it replaced, for logs.
    pub shown_base: String,
    pub client: HttpClient,
    /// The pod's own namespace, read when `namespaces.own_namespace` is set (in-cluster only).
    pub own_namespace: Option<String>,
}

/// What the in-cluster config reads from the environment and the disk; tests point it elsewhere.
#[derive(Debug, Clone)]
pub struct Environment {
    pub service_host: Option<String>,
    pub service_port: Option<String>,
    pub service_account_dir: PathBuf,
}

impl Environment {
    pub fn from_process() -> Self {
        Environment {
            service_host: std::env::var("KUBERNETES_SERVICE_HOST")
                .ok()
                .filter(|s| !s.is_empty()),
            service_port: std::env::var("KUBERNETES_SERVICE_PORT")
                .ok()
                .filter(|s| !s.is_empty()),
            service_account_dir: PathBuf::from(SERVICE_ACCOUNT_DIR),
        }
    }
}

pub fn user_agent() -> String {
    format!("agentctl/{}", env!("CARGO_PKG_VERSION"))
}

fn options(base_dir: Option<&Path>) -> httpclient::Options {
    httpclient::Options {
        // Watches last minutes; every request sets its own timeout.
        timeout: None,
        base_dir: base_dir.map(Path::to_path_buf),
        gzip: true,
        user_agent: Some(user_agent()),
        ..httpclient::Options::default()
    }
}

fn trim_base(url: &str) -> String {
    url.trim_end_matches('/').to_owned()
}

/// Resolves the API access of `sd`. Relative paths are taken from `base_dir`.
pub fn connect(
    sd: &KubernetesSd,
    base_dir: Option<&Path>,
    env: &Environment,
) -> Result<Connection, Error> {
    match &sd.api {
        KubernetesApi::Server { url, http_client } => Ok(Connection {
            base: trim_base(url.as_url().as_str()),
            shown_base: trim_base(&url.redacted()),
            client: HttpClient::new(http_client, &options(base_dir))?,
            own_namespace: None,
        }),
        KubernetesApi::InCluster => in_cluster(sd.own_namespace, env),
        KubernetesApi::Kubeconfig(path) => {
            let path = match base_dir {
                Some(b) if Path::new(path).is_relative() => b.join(path),
                _ => PathBuf::from(path),
            };
            kubeconfig(&path)
        }
    }
}

/// client-go's `InClusterConfig`: `https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT`,
/// the service account token (re-read on every request, so rotated tokens are used) and its CA.
fn in_cluster(own_namespace: bool, env: &Environment) -> Result<Connection, Error> {
    let (Some(host), Some(port)) = (&env.service_host, &env.service_port) else {
        return Err(Error::NotInCluster);
    };
    let dir = &env.service_account_dir;
    let token = dir.join("token");
    if let Err(source) = std::fs::metadata(&token) {
        return Err(Error::Token {
            path: token,
            source,
        });
    }
    let ca = dir.join("ca.crt");
    let tls = if ca.exists() {
        TlsSettings {
            ca: Some(SecretSource::File(ca)),
            ..TlsSettings::default()
        }
    } else {
        // client-go goes on with the system roots too.
        tracing::warn!(path = %ca.display(), "kubernetes_sd: no service account CA; verifying the API server with the system roots");
        TlsSettings::default()
    };
    let settings = HttpClientSettings {
        auth: Auth::Authorization {
            kind: "Bearer".into(),
            credentials: Some(SecretSource::File(token)),
        },
        tls,
        ..HttpClientSettings::default()
    };
    let own = if own_namespace {
        let path = dir.join("namespace");
        let ns = std::fs::read_to_string(&path).map_err(|source| Error::OwnNamespace {
            path: path.clone(),
            source,
        })?;
        if ns.is_empty() {
            return Err(Error::EmptyOwnNamespace(path));
        }
        Some(ns)
    } else {
        None
    };
    tracing::info!("kubernetes_sd: using pod service account via in-cluster config");
    let base = format!("https://{}", super::targets::join_host_port(host, port));
    Ok(Connection {
        shown_base: base.clone(),
        base,
        client: HttpClient::new(&settings, &options(None))?,
        own_namespace: own,
    })
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "kebab-case")]
struct Kubeconfig {
    clusters: Vec<Named<KubeCluster>>,
    users: Vec<Named<KubeUser>>,
    contexts: Vec<Named<KubeContext>>,
    current_context: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Named<T: Default> {
    name: String,
    #[serde(alias = "cluster", alias = "user", alias = "context")]
    value: T,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "kebab-case")]
struct KubeCluster {
    server: String,
    certificate_authority: String,
    certificate_authority_data: String,
    insecure_skip_tls_verify: bool,
    tls_server_name: String,
    proxy_url: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "kebab-case")]
struct KubeUser {
    client_certificate: String,
    client_certificate_data: String,
    client_key: String,
    client_key_data: String,
    token: String,
    #[serde(rename = "tokenFile")]
    token_file: String,
    username: String,
    password: String,
    exec: Option<serde_yaml::Value>,
    auth_provider: Option<serde_yaml::Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct KubeContext {
    cluster: String,
    user: String,
}

fn decode_b64(field: &str, s: &str) -> Result<String, String> {
    let bytes = base64_decode(s).ok_or_else(|| format!("{field} is not valid base64"))?;
    String::from_utf8(bytes).map_err(|_| format!("{field} is not PEM text"))
}

/// Standard base64 (with or without padding, whitespace ignored).
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' | b'\n' | b'\r' | b' ' | b'\t' => continue,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

/// A kubeconfig file's current context: server, CA, client certificate, token or basic auth.
/// Paths inside the file are relative to its directory. Credential plugins (`exec`,
/// `auth-provider`) are refused with an error naming them.
fn kubeconfig(path: &Path) -> Result<Connection, Error> {
    let err = |message: String| Error::Kubeconfig {
        path: path.to_path_buf(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let kc: Kubeconfig = serde_yaml::from_str(&text).map_err(|e| err(e.to_string()))?;
    if kc.current_context.is_empty() {
        return Err(err("no current-context".into()));
    }
    let ctx = kc
        .contexts
        .iter()
        .find(|c| c.name == kc.current_context)
        .ok_or_else(|| err(format!("context {:?} not found", kc.current_context)))?;
    let cluster = kc
        .clusters
        .iter()
        .find(|c| c.name == ctx.value.cluster)
        .ok_or_else(|| err(format!("cluster {:?} not found", ctx.value.cluster)))?;
    let default_user = Named::default();
    let user = if ctx.value.user.is_empty() {
        &default_user
    } else {
        kc.users
            .iter()
            .find(|u| u.name == ctx.value.user)
            .ok_or_else(|| err(format!("user {:?} not found", ctx.value.user)))?
    };
    let (c, u) = (&cluster.value, &user.value);
    if c.server.is_empty() {
        return Err(err(format!("cluster {:?} has no server", cluster.name)));
    }
    if u.exec.is_some() || u.auth_provider.is_some() {
        return Err(err(format!(
            "user {:?} uses a credential plugin (exec or auth-provider), which agentctl does not run; use a token, tokenFile or client certificate",
            user.name
        )));
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    let file = |p: &str| -> String {
        if Path::new(p).is_relative() {
            dir.join(p).display().to_string()
        } else {
            p.to_owned()
        }
    };
    let mut tls = TlsConfig {
        insecure_skip_verify: c.insecure_skip_tls_verify,
        ..TlsConfig::default()
    };
    if !c.certificate_authority_data.is_empty() {
        tls.ca = Some(
            decode_b64("certificate-authority-data", &c.certificate_authority_data).map_err(err)?,
        );
    } else if !c.certificate_authority.is_empty() {
        tls.ca_file = Some(file(&c.certificate_authority));
    }
    if !c.tls_server_name.is_empty() {
        tls.server_name = Some(c.tls_server_name.clone());
    }
    if !u.client_certificate_data.is_empty() {
        tls.cert =
            Some(decode_b64("client-certificate-data", &u.client_certificate_data).map_err(err)?);
    } else if !u.client_certificate.is_empty() {
        tls.cert_file = Some(file(&u.client_certificate));
    }
    if !u.client_key_data.is_empty() {
        tls.key = Some(Secret::new(
            decode_b64("client-key-data", &u.client_key_data).map_err(err)?,
        ));
    } else if !u.client_key.is_empty() {
        tls.key_file = Some(file(&u.client_key));
    }
    let mut cfg = HttpClientConfig {
        tls_config: Some(tls),
        ..HttpClientConfig::default()
    };
    if !u.token_file.is_empty() {
        cfg.bearer_token_file = Some(file(&u.token_file));
    } else if !u.token.is_empty() {
        cfg.bearer_token = Some(Secret::new(u.token.clone()));
    } else if !u.username.is_empty() {
        cfg.basic_auth = Some(BasicAuth {
            username: u.username.clone(),
            password: Some(Secret::new(u.password.clone())),
            ..BasicAuth::default()
        });
    }
    if !c.proxy_url.is_empty() {
        cfg.proxy_url = Some(
            crate::config::url::ConfigUrl::parse(&c.proxy_url)
                .map_err(|e| err(format!("proxy-url: {e}")))?,
        );
    }
    let settings = cfg.settings().map_err(err)?;
    url::Url::parse(&c.server).map_err(|e| Error::Url {
        url: c.server.clone(),
        message: e.to_string(),
    })?;
    let base = trim_base(&c.server);
    Ok(Connection {
        shown_base: crate::config::url::ConfigUrl::parse(&base)
            .map(|u| trim_base(&u.redacted()))
            .unwrap_or_else(|_| base.clone()),
        base,
        client: HttpClient::new(&settings, &options(Some(dir)))?,
        own_namespace: None,
    })
}

/// Request timeouts: a list page, and how long a watch may stay silent beyond the
/// `timeoutSeconds` it asked the server for before it is considered dead.
pub const LIST_TIMEOUT: Duration = Duration::from_secs(120);
pub const WATCH_SILENCE_GRACE: Duration = Duration::from_secs(60);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64() {
        assert_eq!(base64_decode("aGVsbG8=").unwrap(), b"hello");
        assert_eq!(base64_decode("aGVsbG8").unwrap(), b"hello");
        assert_eq!(base64_decode("aGVs\nbG8=").unwrap(), b"hello");
        assert!(base64_decode("a*b").is_none());
    }

    #[test]
    fn in_cluster_needs_the_environment_and_a_token() {
        let dir = tempfile::tempdir().unwrap();
        let mut env = Environment {
            service_host: None,
            service_port: None,
            service_account_dir: dir.path().to_path_buf(),
        };
        assert_eq!(
            in_cluster(false, &env).unwrap_err().to_string(),
            "unable to load in-cluster configuration, KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT must be defined"
        );
        env.service_host = Some("10.0.0.1".into());
        env.service_port = Some("443".into());
        let e = in_cluster(false, &env).unwrap_err().to_string();
        assert!(
            e.starts_with("cannot read the service account token"),
            "{e}"
        );
        std::fs::write(dir.path().join("token"), "t0k3n\n").unwrap();
        let c = in_cluster(false, &env).unwrap();
        assert_eq!(c.base, "https://10.0.0.1:443");
        assert_eq!(c.own_namespace, None);
        let e = in_cluster(true, &env).unwrap_err().to_string();
        assert!(
            e.starts_with("could not determine the pod's namespace"),
            "{e}"
        );
        std::fs::write(dir.path().join("namespace"), "").unwrap();
        assert!(in_cluster(true, &env)
            .unwrap_err()
            .to_string()
            .starts_with("could not read own namespace name (empty file"));
        std::fs::write(dir.path().join("namespace"), "monitoring").unwrap();
        env.service_host = Some("fd00::1".into());
        let c = in_cluster(true, &env).unwrap();
        assert_eq!(c.own_namespace.as_deref(), Some("monitoring"));
        assert_eq!(c.base, "https://[fd00::1]:443");
    }

    #[test]
    fn kubeconfig_current_context_and_refusals() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("config");
        let write = |s: &str| std::fs::write(&p, s).unwrap();
        write("apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: https://k8s.example:6443/\n    insecure-skip-tls-verify: true\nusers:\n- name: u\n  user:\n    token: abc\ncontexts:\n- name: ctx\n  context:\n    cluster: c\n    user: u\n    namespace: x\ncurrent-context: ctx\n");
        let c = kubeconfig(&p).unwrap();
        assert_eq!(c.base, "https://k8s.example:6443");
        write("clusters: []\ncontexts: []\n");
        assert!(kubeconfig(&p)
            .unwrap_err()
            .to_string()
            .ends_with("no current-context"));
        write("apiVersion: v1\nclusters:\n- name: c\n  cluster:\n    server: https://k\nusers:\n- name: u\n  user:\n    exec:\n      command: aws\ncontexts:\n- name: ctx\n  context:\n    cluster: c\n    user: u\ncurrent-context: ctx\n");
        let e = kubeconfig(&p).unwrap_err().to_string();
        assert!(e.contains("credential plugin"), "{e}");
        assert!(kubeconfig(&dir.path().join("missing"))
            .unwrap_err()
            .to_string()
            .starts_with("kubeconfig_file "));
    }
}
