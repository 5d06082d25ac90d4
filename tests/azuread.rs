//! remote_write with `azuread` against a local Azure AD token endpoint and a local instance
//! metadata service (the agent finds them through the Azure SDKs' own variables,
//! `AZURE_AUTHORITY_HOST` and `AZURE_POD_IDENTITY_AUTHORITY_HOST`): the client-credentials and
//! managed-identity forms each fetch a token with the right parameters, and every write carries
//! it. Azure AD itself and a real metadata service cannot be reached from here.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::Router;

use crate::support::agent::Agent;

const CLIENT_ID: &str = "00000000-0000-0000-0000-0000000000a1";
const MSI_CLIENT_ID: &str = "00000000-0000-0000-0000-0000000000b2";
const TENANT: &str = "contoso.onmicrosoft.com";
const SECRET: &str = "sec-azure-client-11";

#[derive(Default)]
struct Seen {
    /// Problems with token requests (wrong parameters).
    errors: Vec<String>,
    oauth_tokens: usize,
    msi_tokens: usize,
    /// `Authorization` of each write.
    writes: BTreeMap<String, usize>,
}

type Shared = Arc<Mutex<Seen>>;

async fn oauth_token(
    State(seen): State<Shared>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    axum::Form(form): axum::Form<BTreeMap<String, String>>,
) -> (StatusCode, [(&'static str, &'static str); 1], String) {
    // The secret comes in the form or as HTTP Basic (the oauth2 client tries the header first).
    let basic = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .map(str::to_owned);
    let expected_basic = {
        use base64_engine::encode;
        encode(&format!("{CLIENT_ID}:{SECRET}"))
    };
    let secret_ok = form.get("client_secret").map(String::as_str) == Some(SECRET)
        || basic.as_deref() == Some(expected_basic.as_str());
    let client_ok = form.get("client_id").map(String::as_str) == Some(CLIENT_ID) || basic.is_some();
    let mut s = seen.lock().unwrap();
    let problem = if tenant != TENANT {
        Some(format!("tenant {tenant}"))
    } else if form.get("grant_type").map(String::as_str) != Some("client_credentials") {
        Some(format!("grant_type in {form:?}"))
    } else if form.get("scope").map(String::as_str) != Some("https://monitor.azure.com//.default") {
        Some(format!("scope in {form:?}"))
    } else if !secret_ok || !client_ok {
        Some(format!("credentials: {form:?} {basic:?}"))
    } else {
        None
    };
    if let Some(p) = problem {
        s.errors.push(p);
        return (
            StatusCode::UNAUTHORIZED,
            [("content-type", "application/json")],
            r#"{"error":"invalid_client"}"#.into(),
        );
    }
    s.oauth_tokens += 1;
    (
        StatusCode::OK,
        [("content-type", "application/json")],
        r#"{"token_type":"Bearer","expires_in":3599,"ext_expires_in":3599,"access_token":"tok-oauth"}"#.into(),
    )
}

async fn msi_token(
    State(seen): State<Shared>,
    Query(q): Query<BTreeMap<String, String>>,
    headers: HeaderMap,
) -> (StatusCode, [(&'static str, &'static str); 1], String) {
    let mut s = seen.lock().unwrap();
    let ok = headers.get("metadata").and_then(|v| v.to_str().ok()) == Some("true")
        && q.get("api-version").map(String::as_str) == Some("2018-02-01")
        && q.get("resource").map(String::as_str) == Some("https://monitor.azure.com/")
        && q.get("client_id").map(String::as_str) == Some(MSI_CLIENT_ID);
    if !ok {
        s.errors.push(format!("metadata request {q:?} {headers:?}"));
        return (
            StatusCode::BAD_REQUEST,
            [("content-type", "application/json")],
            "{}".into(),
        );
    }
    s.msi_tokens += 1;
    (
        StatusCode::OK,
        [("content-type", "application/json")],
        r#"{"access_token":"tok-msi","expires_in":"86399","expires_on":"1999999999","resource":"https://monitor.azure.com/","token_type":"Bearer"}"#.into(),
    )
}

async fn write(State(seen): State<Shared>, headers: HeaderMap) -> StatusCode {
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("<none>")
        .to_owned();
    *seen.lock().unwrap().writes.entry(auth).or_default() += 1;
    StatusCode::OK
}

/// The fake Azure endpoints on their own thread and runtime.
fn serve(seen: Shared) -> SocketAddr {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let app = Router::new()
                .route("/{tenant}/oauth2/v2.0/token", post(oauth_token))
                .route("/metadata/identity/oauth2/token", get(msi_token))
                .route("/write", post(write))
                .with_state(seen);
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(l.local_addr().unwrap()).unwrap();
            let _ = axum::serve(l, app).await;
        });
    });
    rx.recv().unwrap()
}

/// Base64 for the expected HTTP Basic value (standard alphabet, padded).
mod base64_engine {
    pub fn encode(s: &str) -> String {
        const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let b = s.as_bytes();
        let mut out = String::new();
        for c in b.chunks(3) {
            let n = (c[0] as u32) << 16
                | (*c.get(1).unwrap_or(&0) as u32) << 8
                | *c.get(2).unwrap_or(&0) as u32;
            for i in 0..4 {
                if i <= c.len() {
                    out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }
}

#[test]
fn remote_write_with_azuread_client_credentials_and_managed_identity() {
    let seen: Shared = Arc::default();
    let addr = serve(seen.clone());
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::builder(dir.path())
        .env("AZURE_AUTHORITY_HOST", format!("http://{addr}"))
        .env(
            "AZURE_POD_IDENTITY_AUTHORITY_HOST",
            format!("http://{addr}"),
        )
        .start();
    let config = format!(
        "scrape_configs:
  - job_name: self
    scrape_interval: 1s
    static_configs:
      - targets: ['{target}']
remote_write:
  - name: oauth
    url: http://{addr}/write
    queue_config: {{batch_send_deadline: 1s}}
    azuread:
      cloud: AzurePublic
      oauth:
        client_id: {CLIENT_ID}
        client_secret: {SECRET}
        tenant_id: {TENANT}
  - name: msi
    url: http://{addr}/write
    queue_config: {{batch_send_deadline: 1s}}
    azuread:
      managed_identity:
        client_id: {MSI_CLIENT_ID}
",
        target = agent.addr()
    );
    let r = agent.put_config("azure", &config);
    assert_eq!(r.status, 201, "{r:?}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        {
            let s = seen.lock().unwrap();
            assert!(s.errors.is_empty(), "bad token requests: {:?}", s.errors);
            let n = |k: &str| s.writes.get(k).copied().unwrap_or(0);
            if n("Bearer tok-oauth") >= 3 && n("Bearer tok-msi") >= 3 {
                assert_eq!(s.writes.len(), 2, "writes without a token: {:?}", s.writes);
                // Cached: one token each for all those writes.
                assert_eq!((s.oauth_tokens, s.msi_tokens), (1, 1));
                break;
            }
            assert!(
                Instant::now() < deadline,
                "writes seen: {:?}\nagent log:\n{}",
                s.writes,
                agent.log()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        !agent.log().contains(SECRET),
        "the client secret in the log"
    );
    let r = agent.req("GET", "/agent/api/v1/configs/azure", &[], "");
    assert!(
        r.body.contains(CLIENT_ID) && !r.body.contains(SECRET),
        "{r:?}"
    );

    // Prometheus's validation texts.
    let bad = config.replace(
        &format!("client_id: {MSI_CLIENT_ID}"),
        "client_id: not-a-uuid",
    );
    let r = agent.put_config("azure-bad", &bad);
    assert_eq!(r.status, 400, "{r:?}");
    assert!(
        r.body
            .contains("the provided Azure Managed Identity client_id is invalid"),
        "{r:?}"
    );
}
