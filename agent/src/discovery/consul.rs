//! `consul_sd_configs`: services from Consul's catalog, as Prometheus 2.49 discovers them.
//!
//! Without `services`, or with `tags`, the catalog's service list
//! (`/v1/catalog/services`) is watched with blocking queries and every service that has all
//! `tags` is watched; otherwise exactly the listed services are. Each service is watched with
//! blocking queries on `/v1/health/service/<name>` (`tag` per configured tag, `node-meta`,
//! `stale` with `allow_stale`, `index` from the last `X-Consul-Index`, `wait=120000ms`), at
//! most once per `refresh_interval`, and becomes one target group whose source is its name:
//!
//! - group labels `__meta_consul_service`, `__meta_consul_dc` (the configured datacenter, or the
//!   agent's from `/v1/agent/self`);
//! - per instance `__address__` (service address, else node address, `:` service port),
//!   `__meta_consul_address`, `__meta_consul_node`, `__meta_consul_namespace`,
//!   `__meta_consul_partition`, `__meta_consul_tags` (the tags joined and surrounded by
//!   `tag_separator`), `__meta_consul_service_address`, `__meta_consul_service_port`,
//!   `__meta_consul_service_id`, `__meta_consul_health` (the checks' aggregate: maintenance,
//!   critical, warning, passing), `__meta_consul_metadata_<key>`,
//!   `__meta_consul_service_metadata_<key>`, `__meta_consul_tagged_address_<key>`.
//!
//! A failed request is logged and retried after 15 s; the service keeps its previous targets.
//! The token goes in `X-Consul-Token`; the datacenter, namespace and partition as `dc`, `ns` and
//! `partition` parameters. As the Consul client library Prometheus uses, `token`, `namespace`
//! and `partition` fall back to `CONSUL_HTTP_TOKEN` (or the file in `CONSUL_HTTP_TOKEN_FILE`),
//! `CONSUL_NAMESPACE` and `CONSUL_PARTITION`.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::kubernetes::targets::{join_host_port, sanitize};
use super::{LabelSet, TargetGroup};
use crate::config::sd::ConsulSd;
use crate::httpclient::{self, HttpClient};

/// How long a blocking query may wait on the server.
const WATCH_TIMEOUT: Duration = Duration::from_secs(120);
/// Wait after a failed request.
pub const RETRY_INTERVAL: Duration = Duration::from_secs(15);

/// One `consul_sd_config`, ready to run.
pub struct Discovery {
    cfg: ConsulSd,
    client: HttpClient,
    /// `scheme://server` plus the path prefix.
    base: String,
    token: Option<String>,
    namespace: String,
    partition: String,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct ServiceEntry {
    #[serde(rename = "Node")]
    node: Option<Node>,
    #[serde(rename = "Service")]
    service: Option<AgentService>,
    #[serde(rename = "Checks")]
    checks: Vec<HealthCheck>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "PascalCase")]
struct Node {
    node: String,
    address: String,
    #[serde(deserialize_with = "null_as_default")]
    tagged_addresses: BTreeMap<String, String>,
    #[serde(deserialize_with = "null_as_default")]
    meta: BTreeMap<String, String>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "PascalCase")]
struct AgentService {
    #[serde(rename = "ID")]
    id: String,
    #[serde(deserialize_with = "null_as_default")]
    tags: Vec<String>,
    #[serde(deserialize_with = "null_as_default")]
    meta: BTreeMap<String, String>,
    port: i64,
    address: String,
    namespace: String,
    partition: String,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "PascalCase")]
struct HealthCheck {
    #[serde(rename = "CheckID")]
    check_id: String,
    status: String,
}

fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// The Consul client's `HealthChecks.AggregatedStatus`: maintenance > critical > warning >
/// passing; an unknown status gives "".
fn aggregated_status(checks: &[HealthCheck]) -> &'static str {
    let (mut warning, mut critical, mut maintenance) = (false, false, false);
    for c in checks {
        if c.check_id == "_node_maintenance" || c.check_id.starts_with("_service_maintenance:") {
            maintenance = true;
            continue;
        }
        match c.status.as_str() {
            "passing" => {}
            "warning" => warning = true,
            "critical" => critical = true,
            _ => return "",
        }
    }
    if maintenance {
        "maintenance"
    } else if critical {
        "critical"
    } else if warning {
        "warning"
    } else {
        "passing"
    }
}

/// Go's `url.QueryEscape`.
fn query_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// Go's `url.PathEscape` for one path segment.
fn path_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z'
            | b'a'..=b'z'
            | b'0'..=b'9'
            | b'-'
            | b'_'
            | b'.'
            | b'~'
            | b'$'
            | b'&'
            | b'+'
            | b','
            | b';'
            | b'='
            | b':'
            | b'@' => out.push(b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// Whether a service is watched: listed in `services` (or none listed) and carrying every one of
/// `tags`.
pub fn should_watch(
    services: &[String],
    tags: &[String],
    name: &str,
    service_tags: &[String],
) -> bool {
    (services.is_empty() || services.iter().any(|s| s == name))
        && tags.iter().all(|t| service_tags.contains(t))
}

fn env_nonempty(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

impl Discovery {
    pub fn new(cfg: &ConsulSd, base_dir: Option<&Path>) -> Result<Self, httpclient::Error> {
        let client = HttpClient::new(
            &cfg.http_client,
            &httpclient::Options {
                timeout: Some(WATCH_TIMEOUT + Duration::from_secs(15)),
                base_dir: base_dir.map(Path::to_path_buf),
                gzip: true,
                user_agent: Some(super::kubernetes::client::user_agent()),
                ..httpclient::Options::default()
            },
        )?;
        // The Consul client library: `scheme://` in the address wins, a path after it is the
        // prefix.
        let (mut scheme, mut server, mut prefix) = (
            cfg.scheme.clone(),
            cfg.server.clone(),
            cfg.path_prefix.clone(),
        );
        if let Some((s, rest)) = cfg.server.split_once("://") {
            if s == "https" {
                scheme = "https".into();
            }
            server = rest.to_owned();
            if let Some((host, path)) = rest.split_once('/') {
                server = host.to_owned();
                prefix = format!("/{path}");
            }
        }
        let token = cfg
            .token
            .as_ref()
            .map(|t| t.expose().to_owned())
            .or_else(|| {
                env_nonempty("CONSUL_HTTP_TOKEN_FILE")
                    .and_then(|f| std::fs::read_to_string(f).ok())
                    .map(|t| t.trim().to_owned())
                    .filter(|t| !t.is_empty())
            })
            .or_else(|| env_nonempty("CONSUL_HTTP_TOKEN"));
        let namespace = if cfg.namespace.is_empty() {
            env_nonempty("CONSUL_NAMESPACE").unwrap_or_default()
        } else {
            cfg.namespace.clone()
        };
        let partition = if cfg.partition.is_empty() {
            env_nonempty("CONSUL_PARTITION").unwrap_or_default()
        } else {
            cfg.partition.clone()
        };
        Ok(Discovery {
            base: format!("{scheme}://{server}{prefix}"),
            cfg: cfg.clone(),
            client,
            token,
            namespace,
            partition,
        })
    }

    /// The URL of `path` with the query parameters sorted by name, as Go encodes them.
    fn url(&self, path: &str, mut params: Vec<(&'static str, String)>) -> String {
        if !self.cfg.datacenter.is_empty() {
            params.push(("dc", self.cfg.datacenter.clone()));
        }
        if !self.namespace.is_empty() {
            params.push(("ns", self.namespace.clone()));
        }
        if !self.partition.is_empty() {
            params.push(("partition", self.partition.clone()));
        }
        params.sort_by_key(|(k, _)| *k);
        let q: Vec<String> = params
            .iter()
            .map(|(k, v)| format!("{k}={}", query_escape(v)))
            .collect();
        if q.is_empty() {
            format!("{}{path}", self.base)
        } else {
            format!("{}{path}?{}", self.base, q.join("&"))
        }
    }

    /// The parameters of a blocking query from `index`.
    fn blocking(&self, index: u64) -> Vec<(&'static str, String)> {
        let mut p = vec![("wait", format!("{}ms", WATCH_TIMEOUT.as_millis()))];
        if index != 0 {
            p.push(("index", index.to_string()));
        }
        if self.cfg.allow_stale {
            p.push(("stale", String::new()));
        }
        for (k, v) in &self.cfg.node_meta {
            p.push(("node-meta", format!("{k}:{v}")));
        }
        p
    }

    /// GET `url`: the body and the `X-Consul-Index` (0 when absent). Errors read as the Consul
    /// client's (`Unexpected response code: 500 (body)`).
    async fn get(&self, url: &str) -> Result<(bytes::Bytes, u64), String> {
        let mut rb = self.client.get(url);
        if let Some(t) = &self.token {
            rb = rb.header("X-Consul-Token", t);
        }
        let resp = self.client.send(rb).await.map_err(|e| e.to_string())?;
        let status = resp.status();
        let index = resp
            .headers()
            .get("X-Consul-Index")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let body = resp.bytes().await.map_err(|e| e.to_string())?;
        if status != reqwest::StatusCode::OK {
            return Err(format!(
                "Unexpected response code: {} ({})",
                status.as_u16(),
                String::from_utf8_lossy(&body).trim()
            ));
        }
        Ok((body, index))
    }

    /// The agent's datacenter (`Config.Datacenter` of `/v1/agent/self`).
    pub async fn agent_datacenter(&self) -> Result<String, String> {
        let (body, _) = self.get(&self.url("/v1/agent/self", Vec::new())).await?;
        let v: serde_json::Value =
            serde_json::from_slice(&body).map_err(|e| format!("decoding /v1/agent/self: {e}"))?;
        match v.get("Config").and_then(|c| c.get("Datacenter")) {
            Some(serde_json::Value::String(dc)) => Ok(dc.clone()),
            Some(other) => Err(format!("invalid value '{other}' for Config.Datacenter")),
            None => Err("invalid value '<nil>' for Config.Datacenter".into()),
        }
    }

    /// Runs until `shutdown`, sending each changed group through `tx` (wrapped by `wrap`).
    /// Once the first catalog answer and every service it watches have answered, an empty
    /// batch says the first discovery is complete.
    pub async fn run<M, F>(self, tx: mpsc::Sender<M>, wrap: F, shutdown: CancellationToken)
    where
        M: Send + 'static,
        F: Fn(Vec<TargetGroup>) -> M + Send + Sync + 'static,
    {
        let shown = self.base.clone();
        let dc = if self.cfg.datacenter.is_empty() {
            loop {
                let r = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    r = self.agent_datacenter() => r,
                };
                match r {
                    Ok(dc) => break dc,
                    Err(e) => {
                        tracing::error!(server = %shown, error = %e, "consul_sd: error retrieving datacenter name");
                        tokio::select! {
                            _ = shutdown.cancelled() => return,
                            _ = tokio::time::sleep(RETRY_INTERVAL) => {}
                        }
                    }
                }
            }
        } else {
            self.cfg.datacenter.clone()
        };
        let this = std::sync::Arc::new((self, dc));
        let wrap = std::sync::Arc::new(wrap);
        let (d, _) = &*this;
        if !d.cfg.services.is_empty() && d.cfg.tags.is_empty() {
            let mut firsts = Vec::new();
            for name in d.cfg.services.clone() {
                let (first, answered) = oneshot::channel();
                firsts.push(answered);
                tokio::spawn(
                    watch_service(
                        this.clone(),
                        name,
                        tx.clone(),
                        wrap.clone(),
                        first,
                        shutdown.clone(),
                    )
                    .in_current_span(),
                );
            }
            report_when_answered(firsts, &tx, &*wrap, &shutdown).await;
            shutdown.cancelled().await;
            return;
        }
        let mut ticker = tokio::time::interval(d.cfg.refresh_interval.as_std());
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_index = 0u64;
        let mut watched: HashMap<String, CancellationToken> = HashMap::new();
        // Stops the service watchers when this loop ends for any reason.
        let local = shutdown.child_token();
        let _stop_all = local.clone().drop_guard();
        // Until the first discovery is reported: the first answers of the services watched.
        let mut firsts: Option<Vec<oneshot::Receiver<()>>> = Some(Vec::new());
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = ticker.tick() => {}
            }
            let url = d.url("/v1/catalog/services", d.blocking(last_index));
            let r = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = d.get(&url) => r,
            };
            let (body, index) = match r.and_then(|(b, i)| {
                serde_json::from_slice::<BTreeMap<String, Option<Vec<String>>>>(&b)
                    .map(|m| (m, i))
                    .map_err(|e| format!("decoding the service list: {e}"))
            }) {
                Ok(x) => x,
                Err(e) => {
                    tracing::error!(server = %shown, error = %e, "consul_sd: error refreshing service list");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(RETRY_INTERVAL) => {}
                    }
                    continue;
                }
            };
            if index == last_index {
                continue;
            }
            last_index = index;
            for (name, tags) in &body {
                let tags = tags.as_deref().unwrap_or_default();
                if !should_watch(&d.cfg.services, &d.cfg.tags, name, tags)
                    || watched.contains_key(name)
                {
                    continue;
                }
                let stop = local.child_token();
                let (first, answered) = oneshot::channel();
                if let Some(f) = firsts.as_mut() {
                    f.push(answered);
                }
                tokio::spawn(
                    watch_service(
                        this.clone(),
                        name.clone(),
                        tx.clone(),
                        wrap.clone(),
                        first,
                        stop.clone(),
                    )
                    .in_current_span(),
                );
                watched.insert(name.clone(), stop);
            }
            let gone: Vec<String> = watched
                .keys()
                .filter(|n| !body.contains_key(*n))
                .cloned()
                .collect();
            for name in gone {
                if let Some(stop) = watched.remove(&name) {
                    stop.cancel();
                }
                let empty = TargetGroup {
                    source: name,
                    ..TargetGroup::default()
                };
                if tx.send(wrap(vec![empty])).await.is_err() {
                    return;
                }
            }
            if watched.is_empty() && tx.send(wrap(vec![TargetGroup::default()])).await.is_err() {
                return;
            }
            if let Some(f) = firsts.take() {
                let (tx, wrap, stop) = (tx.clone(), wrap.clone(), local.clone());
                tokio::spawn(
                    async move { report_when_answered(f, &tx, &*wrap, &stop).await }
                        .in_current_span(),
                );
            }
        }
    }
}

/// Sends the empty batch that reports the first discovery once every service watcher in
/// `firsts` has sent its first group (or stopped).
async fn report_when_answered<M, F>(
    firsts: Vec<oneshot::Receiver<()>>,
    tx: &mpsc::Sender<M>,
    wrap: &F,
    stop: &CancellationToken,
) where
    F: Fn(Vec<TargetGroup>) -> M,
{
    for answered in firsts {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = answered => {}
        }
    }
    let _ = tx.send(wrap(Vec::new())).await;
}

async fn watch_service<M, F>(
    this: std::sync::Arc<(Discovery, String)>,
    name: String,
    tx: mpsc::Sender<M>,
    wrap: std::sync::Arc<F>,
    first: oneshot::Sender<()>,
    stop: CancellationToken,
) where
    F: Fn(Vec<TargetGroup>) -> M,
{
    // Fired once this service's first answer was sent on (or dropped if it stops before).
    let mut first = Some(first);
    let (d, dc) = &*this;
    let mut ticker = tokio::time::interval(d.cfg.refresh_interval.as_std());
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_index = 0u64;
    let path = format!("/v1/health/service/{}", path_escape(&name));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let mut params = d.blocking(last_index);
        for t in &d.cfg.tags {
            params.push(("tag", t.clone()));
        }
        let url = d.url(&path, params);
        let r = tokio::select! {
            _ = stop.cancelled() => return,
            r = d.get(&url) => r,
        };
        let (entries, index) = match r.and_then(|(b, i)| {
            serde_json::from_slice::<Option<Vec<ServiceEntry>>>(&b)
                .map(|e| (e.unwrap_or_default(), i))
                .map_err(|e| format!("decoding the service's nodes: {e}"))
        }) {
            Ok(x) => x,
            Err(e) => {
                tracing::error!(server = %d.base, service = %name, error = %e, "consul_sd: error refreshing service");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(RETRY_INTERVAL) => {}
                }
                continue;
            }
        };
        if index != last_index {
            last_index = index;
            let group = service_group(&name, dc, &d.cfg.tag_separator, &entries);
            if tx.send(wrap(vec![group])).await.is_err() {
                return;
            }
        }
        if let Some(f) = first.take() {
            let _ = f.send(());
        }
    }
}

fn service_group(name: &str, dc: &str, sep: &str, entries: &[ServiceEntry]) -> TargetGroup {
    let mut labels = LabelSet::new();
    labels.insert("__meta_consul_service".into(), name.to_owned());
    labels.insert("__meta_consul_dc".into(), dc.to_owned());
    let default_node = Node::default();
    let default_service = AgentService::default();
    let targets = entries
        .iter()
        .map(|e| {
            let node = e.node.as_ref().unwrap_or(&default_node);
            let svc = e.service.as_ref().unwrap_or(&default_service);
            let host = if svc.address.is_empty() {
                &node.address
            } else {
                &svc.address
            };
            let mut t = LabelSet::new();
            let mut set = |k: &str, v: String| {
                t.insert(k.to_owned(), v);
            };
            set("__address__", join_host_port(host, svc.port));
            set("__meta_consul_address", node.address.clone());
            set("__meta_consul_node", node.node.clone());
            set("__meta_consul_namespace", svc.namespace.clone());
            set("__meta_consul_partition", svc.partition.clone());
            set(
                "__meta_consul_tags",
                format!("{sep}{}{sep}", svc.tags.join(sep)),
            );
            set("__meta_consul_service_address", svc.address.clone());
            set("__meta_consul_service_port", svc.port.to_string());
            set("__meta_consul_service_id", svc.id.clone());
            set(
                "__meta_consul_health",
                aggregated_status(&e.checks).to_owned(),
            );
            for (k, v) in &node.meta {
                set(
                    &format!("__meta_consul_metadata_{}", sanitize(k)),
                    v.clone(),
                );
            }
            for (k, v) in &svc.meta {
                set(
                    &format!("__meta_consul_service_metadata_{}", sanitize(k)),
                    v.clone(),
                );
            }
            for (k, v) in &node.tagged_addresses {
                set(
                    &format!("__meta_consul_tagged_address_{}", sanitize(k)),
                    v.clone(),
                );
            }
            t
        })
        .collect();
    TargetGroup {
        source: name.to_owned(),
        targets,
        labels,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(id: &str, status: &str) -> HealthCheck {
        HealthCheck {
            check_id: id.into(),
            status: status.into(),
        }
    }

    #[test]
    fn aggregated_health() {
        assert_eq!(aggregated_status(&[]), "passing");
        assert_eq!(aggregated_status(&[check("a", "passing")]), "passing");
        assert_eq!(
            aggregated_status(&[check("a", "passing"), check("b", "warning")]),
            "warning"
        );
        assert_eq!(
            aggregated_status(&[check("a", "critical"), check("b", "warning")]),
            "critical"
        );
        assert_eq!(
            aggregated_status(&[check("_node_maintenance", "x"), check("b", "critical")]),
            "maintenance"
        );
        assert_eq!(
            aggregated_status(&[check("_service_maintenance:web", "critical")]),
            "maintenance"
        );
        assert_eq!(aggregated_status(&[check("a", "bogus")]), "");
    }

    #[test]
    fn escaping_as_go() {
        assert_eq!(query_escape("rack_name:2304"), "rack_name%3A2304");
        assert_eq!(query_escape("a b*~"), "a+b%2A~");
        assert_eq!(path_escape("we b/x"), "we%20b%2Fx");
    }
}
