//! The etcd v3 store (`etcd-client`, gRPC over HTTP/2, TLS optional; see [`transport`] for
//! the connection: failover across endpoints, TLS, certificate reload).
//!
//! - Values sit under the full key; a value's revision is etcd's `mod_revision`.
//! - CAS: `Txn(If(mod_revision(key) == v)).Then(Put)`, or `If(create_revision(key) == 0)` when
//!   the key must not exist. dskit compares `Version` instead; `mod_revision` is strictly
//!   stronger (a delete-and-recreate between read and write resets `Version` but never
//!   `mod_revision`), and both reject every conflicting write dskit rejects.
//! - Lists are paged (`PAGE` keys per request) at one pinned revision, so a large prefix never
//!   hits the gRPC message limit and the pages are one consistent snapshot.
//! - Every call is bounded by `dial_timeout`: with etcd down, a call fails after at most that
//!   long with [`KvError::EtcdTimeout`] naming the endpoints, instead of waiting for the channel
//!   to come back.
//! - Watches: a background task holds an etcd watch from the last revision it has reported
//!   (+1). When the stream breaks it re-creates the watch from that revision with backoff
//!   (`watch_backoff_min` doubling to `watch_backoff_max`), so changes made while it was
//!   disconnected are replayed in order. When etcd answers that the revision has been compacted,
//!   it re-lists the prefix and emits a synthetic `Put` per key and a `Delete` per key it knew
//!   that is gone, then watches on from the listing's revision.

use std::collections::BTreeSet;
use std::future::Future;
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, Txn, TxnOp, WatchOptions,
    WatchResponse,
};
use tokio::sync::mpsc;

mod transport;

use super::local::emit_resync;
use super::{
    prefix_end, BoxFuture, KeyValues, KvError, KvStore, Versioned, Watch, WatchEvent, WATCH_CHANNEL,
};
use crate::config::agent::EtcdSettings;
use crate::config::http::TlsSettings;
use crate::config::secret::Secret;

/// Keys per list request.
const PAGE: i64 = 500;

/// Connection settings (`kvstore.etcd` in the old agent's YAML, plus the watch backoff).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdConfig {
    /// `host:port` or `http://host:port`.
    pub endpoints: Vec<String>,
    /// Bound on connecting and on every call.
    pub dial_timeout: Duration,
    /// CAS attempts.
    pub max_retries: u32,
    pub username: String,
    pub password: Secret,
    /// TLS to every endpoint (`tls_enabled: true`); endpoints written `https://` use TLS
    /// anyway (the system roots when this is `None`).
    pub tls: Option<TlsSettings>,
    pub watch_backoff_min: Duration,
    pub watch_backoff_max: Duration,
}

impl Default for EtcdConfig {
    fn default() -> Self {
        EtcdConfig {
            endpoints: Vec::new(),
            dial_timeout: Duration::from_secs(10),
            max_retries: super::DEFAULT_CAS_RETRIES,
            username: String::new(),
            password: Secret::default(),
            tls: None,
            watch_backoff_min: Duration::from_millis(100),
            // A watch re-created at most a second after etcd returns: the ring and config
            // views catch up within about one heartbeat period (a retry a second against a
            // dead etcd costs nothing).
            watch_backoff_max: Duration::from_secs(1),
        }
    }
}

impl EtcdConfig {
    /// The connection settings of a validated `kvstore.etcd` block (the watch backoff stays at
    /// its default).
    pub fn from_settings(s: &EtcdSettings) -> EtcdConfig {
        EtcdConfig {
            endpoints: s.endpoints.clone(),
            dial_timeout: s.dial_timeout,
            max_retries: s.max_retries,
            username: s.username.clone(),
            password: s.password.clone(),
            tls: s.tls.clone(),
            ..EtcdConfig::default()
        }
    }
}

/// A [`KvStore`] on etcd v3. Cloning shares the connection.
#[derive(Clone)]
pub struct EtcdStore {
    client: Client,
    cfg: EtcdConfig,
    endpoints: String,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "etcd at {}", self.endpoints)
    }
}

impl EtcdStore {
    /// Builds the client. Without credentials nothing is sent yet (the channel connects on the
    /// first call); with credentials this authenticates, bounded by `dial_timeout`.
    pub async fn connect(cfg: EtcdConfig) -> Result<Self, KvError> {
        let endpoints = cfg.endpoints.join(",");
        let config_err = |message: String| KvError::EtcdConfig {
            endpoints: endpoints.clone(),
            message,
        };
        if cfg.endpoints.is_empty() {
            return Err(config_err("no endpoints configured".to_owned()));
        }
        let targets = cfg
            .endpoints
            .iter()
            .map(|e| transport::parse_endpoint(e, cfg.tls.is_some()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(config_err)?;
        let connector = transport::Connector::new(targets, cfg.tls.clone(), cfg.dial_timeout)
            .await
            .map_err(|e| config_err(e.to_string()))?;
        // HTTP/2 pings notice a silently dead connection (no RST, e.g. a partition), so a watch
        // does not sit on it forever; the next connection goes to another member.
        let channel = tonic::transport::Endpoint::from_static("http://etcd")
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5))
            .keep_alive_while_idle(true)
            .connect_with_connector_lazy(connector);
        let mut options = ConnectOptions::new();
        if !cfg.username.is_empty() {
            options = options.with_user(cfg.username.clone(), cfg.password.expose().to_owned());
        }
        let client = match tokio::time::timeout(
            cfg.dial_timeout,
            Client::from_channel(etcd_client::Channel::Tonic(channel), Some(options)),
        )
        .await
        {
            Ok(Ok(client)) => client,
            Ok(Err(source)) => {
                return Err(KvError::Etcd {
                    endpoints,
                    operation: "connect",
                    key: String::new(),
                    source,
                })
            }
            Err(_) => {
                return Err(KvError::EtcdTimeout {
                    endpoints,
                    operation: "connect",
                    key: String::new(),
                    timeout: cfg.dial_timeout,
                })
            }
        };
        Ok(EtcdStore {
            client,
            cfg,
            endpoints,
        })
    }

    /// Runs one etcd call (made anew by `make` for each attempt), bounded by `dial_timeout`,
    /// mapping errors to ones naming the endpoints, the operation and the key. A call that
    /// failed because a member was unavailable is repeated (50 ms doubling to 500 ms) while the
    /// bound allows, when `retry` says that is safe: a member killed, or an election under way,
    /// costs a short delay instead of a failed request.
    async fn call<T, Fut>(
        &self,
        operation: &'static str,
        key: &str,
        retry: Retry,
        mut make: impl FnMut() -> Fut,
    ) -> Result<T, KvError>
    where
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let deadline = tokio::time::Instant::now() + self.cfg.dial_timeout;
        let mut delay = Duration::from_millis(50);
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match tokio::time::timeout(left, make()).await {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(source)) => {
                    let again =
                        retry.allows(&source) && tokio::time::Instant::now() + delay < deadline;
                    if !again {
                        return Err(KvError::Etcd {
                            endpoints: self.endpoints.clone(),
                            operation,
                            key: key.to_owned(),
                            source,
                        });
                    }
                    tracing::debug!(endpoints = %self.endpoints, operation, key, error = %source, retry_in = ?delay, "etcd call failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_millis(500));
                }
                Err(_) => {
                    return Err(KvError::EtcdTimeout {
                        endpoints: self.endpoints.clone(),
                        operation,
                        key: key.to_owned(),
                        timeout: self.cfg.dial_timeout,
                    })
                }
            }
        }
    }

    /// Every key under `prefix` (values too when `values`), at one revision, paged. Returns
    /// that revision.
    async fn range(
        &self,
        prefix: &str,
        values: bool,
    ) -> Result<(u64, Vec<(String, Versioned)>), KvError> {
        // etcd's "all keys" range is ["\0", "\0"); a prefix range is [prefix, prefix_end).
        let end = prefix_end(prefix).unwrap_or_else(|| vec![0]);
        let mut start = if prefix.is_empty() {
            vec![0]
        } else {
            prefix.as_bytes().to_vec()
        };
        let mut revision = 0i64;
        let mut out = Vec::new();
        loop {
            let mut options = GetOptions::new().with_range(end.clone()).with_limit(PAGE);
            if !values {
                options = options.with_keys_only();
            }
            if revision > 0 {
                options = options.with_revision(revision);
            }
            let kv = self.client.kv_client();
            let resp = self
                .call("list", prefix, Retry::Unavailable, || {
                    let (mut kv, start, options) = (kv.clone(), start.clone(), options.clone());
                    async move { kv.get(start, Some(options)).await }
                })
                .await?;
            if revision == 0 {
                revision = resp.header().map_or(0, |h| h.revision());
            }
            for item in resp.kvs() {
                let key = key_string(item.key())?;
                out.push((
                    key,
                    Versioned {
                        value: item.value().to_vec(),
                        revision: to_revision(item.key(), item.mod_revision())?,
                    },
                ));
            }
            match resp.kvs().last() {
                Some(last) if resp.more() => {
                    start = last.key().to_vec();
                    start.push(0);
                }
                _ => break,
            }
        }
        Ok((u64::try_from(revision).unwrap_or(0), out))
    }
}

fn key_string(key: &[u8]) -> Result<String, KvError> {
    String::from_utf8(key.to_vec()).map_err(|_| KvError::KeyNotUtf8 {
        key: String::from_utf8_lossy(key).into_owned(),
    })
}

fn to_revision(key: &[u8], revision: i64) -> Result<u64, KvError> {
    u64::try_from(revision).map_err(|_| KvError::BadRevision {
        key: String::from_utf8_lossy(key).into_owned(),
        revision,
    })
}

impl KvStore for EtcdStore {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Versioned>, KvError>> {
        Box::pin(async move {
            let kv = self.client.kv_client();
            let resp = self
                .call("get", key, Retry::Unavailable, || {
                    let mut kv = kv.clone();
                    async move { kv.get(key, None).await }
                })
                .await?;
            match resp.kvs().first() {
                None => Ok(None),
                Some(item) => Ok(Some(Versioned {
                    value: item.value().to_vec(),
                    revision: to_revision(item.key(), item.mod_revision())?,
                })),
            }
        })
    }

    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<String>, KvError>> {
        Box::pin(async move {
            let (_, entries) = self.range(prefix, false).await?;
            Ok(entries.into_iter().map(|(k, _)| k).collect())
        })
    }

    fn list_values<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<KeyValues, KvError>> {
        Box::pin(async move {
            let (_, entries) = self.range(prefix, true).await?;
            Ok(entries.into_iter().map(|(k, v)| (k, v.value)).collect())
        })
    }

    fn put<'a>(&'a self, key: &'a str, value: Vec<u8>) -> BoxFuture<'a, Result<(), KvError>> {
        Box::pin(async move {
            let kv = self.client.kv_client();
            // Putting the same value again is harmless.
            self.call("put", key, Retry::Unavailable, || {
                let (mut kv, value) = (kv.clone(), value.clone());
                async move { kv.put(key, value, None).await }
            })
            .await?;
            Ok(())
        })
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<bool, KvError>> {
        Box::pin(async move {
            let kv = self.client.kv_client();
            let resp = self
                .call("delete", key, Retry::NotApplied, || {
                    let mut kv = kv.clone();
                    async move { kv.delete(key, None).await }
                })
                .await?;
            Ok(resp.deleted() > 0)
        })
    }

    fn delete_if_revision<'a>(
        &'a self,
        key: &'a str,
        expected: u64,
    ) -> BoxFuture<'a, Result<bool, KvError>> {
        Box::pin(async move {
            let Ok(rev) = i64::try_from(expected) else {
                return Ok(false);
            };
            // mod_revision = rev also means the key exists (an absent key compares as 0).
            let txn = Txn::new()
                .when([Compare::mod_revision(key, CompareOp::Equal, rev)])
                .and_then([TxnOp::delete(key, None)]);
            let kv = self.client.kv_client();
            let resp = self
                .call("conditional delete", key, Retry::NotApplied, || {
                    let (mut kv, txn) = (kv.clone(), txn.clone());
                    async move { kv.txn(txn).await }
                })
                .await?;
            Ok(resp.succeeded())
        })
    }

    fn put_if_revision<'a>(
        &'a self,
        key: &'a str,
        expected: Option<u64>,
        value: Vec<u8>,
    ) -> BoxFuture<'a, Result<bool, KvError>> {
        Box::pin(async move {
            let compare = match expected {
                None => Compare::create_revision(key, CompareOp::Equal, 0),
                Some(rev) => {
                    let Ok(rev) = i64::try_from(rev) else {
                        // No etcd revision is that large: the key cannot be at it.
                        return Ok(false);
                    };
                    Compare::mod_revision(key, CompareOp::Equal, rev)
                }
            };
            let txn = Txn::new()
                .when([compare])
                .and_then([TxnOp::put(key, value, None)]);
            let kv = self.client.kv_client();
            let resp = self
                .call("CAS", key, Retry::NotApplied, || {
                    let (mut kv, txn) = (kv.clone(), txn.clone());
                    async move { kv.txn(txn).await }
                })
                .await?;
            Ok(resp.succeeded())
        })
    }

    fn watch_prefix<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Watch, KvError>> {
        Box::pin(async move {
            // The listing fixes where the watch starts and which keys a later resync may have
            // to report as deleted. Failing here (etcd down) is reported to the caller.
            let (revision, entries) = self.range(prefix, false).await?;
            let known = entries.into_iter().map(|(k, _)| k).collect();
            let (tx, rx) = mpsc::channel(WATCH_CHANNEL);
            let task = tokio::spawn(run_watch(
                self.clone(),
                prefix.to_owned(),
                revision + 1,
                known,
                tx,
            ));
            Ok(Watch::new(rx, task))
        })
    }

    fn cas_retries(&self) -> u32 {
        self.cfg.max_retries
    }

    fn describe(&self) -> String {
        format!("etcd at {}", self.endpoints)
    }
}

/// When a failed call may be sent again.
#[derive(Debug, Clone, Copy)]
enum Retry {
    /// Reads, watches and unconditional puts: after any "unavailable" answer or broken
    /// connection.
    Unavailable,
    /// Transactions and deletes (a repeat is not harmless if the first one was applied): only
    /// when etcd says the request was not applied (`leader changed`, `no leader`: its error
    /// descriptions on the wire, which Go's client reads the same way) or no connection was
    /// made.
    NotApplied,
}

impl Retry {
    fn allows(self, e: &etcd_client::Error) -> bool {
        let status = match e {
            etcd_client::Error::GRpcStatus(s) => s,
            etcd_client::Error::TransportError(_) => return true,
            _ => return false,
        };
        if status.code() != tonic::Code::Unavailable {
            return false;
        }
        match self {
            Retry::Unavailable => true,
            Retry::NotApplied => {
                let m = status.message();
                m.contains("etcdserver: leader changed")
                    || m.contains("etcdserver: no leader")
                    || never_connected(status)
            }
        }
    }
}

/// Whether the error comes from a connection attempt that failed (our connector reports that
/// no endpoint accepted a connection as `ConnectionRefused`).
fn never_connected(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::ConnectionRefused {
                return true;
            }
        }
        cur = err.source();
    }
    false
}

/// Why one watch stream ended.
enum StreamEnd {
    /// The consumer dropped the [`Watch`]: stop.
    ConsumerGone,
    /// The stream broke or etcd cancelled it: re-create from `next` after a backoff.
    Broken(String),
    /// `next` was compacted away: re-list, then re-create.
    Compacted(i64),
}

async fn run_watch(
    store: EtcdStore,
    prefix: String,
    mut next: u64,
    mut known: BTreeSet<String>,
    tx: mpsc::Sender<WatchEvent>,
) {
    let min = store.cfg.watch_backoff_min;
    let max = store.cfg.watch_backoff_max.max(min);
    let mut delay = min;
    loop {
        let mut delivered = false;
        let end = watch_once(&store, &prefix, &mut next, &mut known, &tx, &mut delivered).await;
        if delivered {
            delay = min;
        }
        match end {
            StreamEnd::ConsumerGone => return,
            StreamEnd::Broken(reason) => {
                tracing::warn!(endpoints = %store.endpoints, prefix, next_revision = next, error = %reason, retry_in = ?delay, "etcd watch interrupted; reconnecting");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(max);
            }
            StreamEnd::Compacted(compacted) => {
                tracing::warn!(endpoints = %store.endpoints, prefix, next_revision = next, compacted, "etcd watch revision compacted; re-listing");
                match store.range(&prefix, true).await {
                    Ok((revision, entries)) => {
                        let Some(now) = emit_resync(&tx, &known, entries).await else {
                            return;
                        };
                        known = now;
                        next = revision + 1;
                        delay = min;
                    }
                    Err(err) => {
                        tracing::warn!(endpoints = %store.endpoints, prefix, error = %err, retry_in = ?delay, "etcd watch re-list failed; retrying");
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(max);
                    }
                }
            }
        }
    }
}

/// One etcd watch stream from `next` on; forwards its events until it ends.
async fn watch_once(
    store: &EtcdStore,
    prefix: &str,
    next: &mut u64,
    known: &mut BTreeSet<String>,
    tx: &mpsc::Sender<WatchEvent>,
    delivered: &mut bool,
) -> StreamEnd {
    let Ok(start) = i64::try_from(*next) else {
        return StreamEnd::Broken(format!("revision {next} out of range"));
    };
    let options = WatchOptions::new()
        .with_prefix()
        .with_start_revision(start)
        .with_progress_notify();
    let client = store.client.watch_client();
    let create = store.call("watch", prefix, Retry::Unavailable, || {
        let (mut client, options) = (client.clone(), options.clone());
        async move { client.watch(prefix, Some(options)).await }
    });
    let mut stream = tokio::select! {
        res = create => match res {
            Ok(stream) => stream,
            Err(err) => return StreamEnd::Broken(err.to_string()),
        },
        _ = tx.closed() => return StreamEnd::ConsumerGone,
    };
    loop {
        let msg = tokio::select! {
            msg = stream.message() => msg,
            _ = tx.closed() => return StreamEnd::ConsumerGone,
        };
        let resp: WatchResponse = match msg {
            Ok(Some(resp)) => resp,
            Ok(None) => return StreamEnd::Broken("stream closed by etcd".to_owned()),
            Err(err) => return StreamEnd::Broken(err.to_string()),
        };
        if resp.compact_revision() != 0 {
            return StreamEnd::Compacted(resp.compact_revision());
        }
        if resp.canceled() {
            return StreamEnd::Broken(format!("watch cancelled: {}", resp.cancel_reason()));
        }
        *delivered = true;
        if resp.events().is_empty() {
            // A progress notification says everything up to its header revision has been
            // sent; a "created" response says nothing about what is still to come.
            if !resp.created() {
                if let Some(rev) = resp.header().map(|h| h.revision()) {
                    if let Ok(rev) = u64::try_from(rev) {
                        *next = (*next).max(rev + 1);
                    }
                }
            }
            continue;
        }
        for event in resp.events() {
            let Some(kv) = event.kv() else { continue };
            let key = match key_string(kv.key()) {
                Ok(key) => key,
                Err(err) => {
                    tracing::warn!(endpoints = %store.endpoints, error = %err, "skipping watch event");
                    continue;
                }
            };
            let ev = match event.event_type() {
                EventType::Put => {
                    known.insert(key.clone());
                    WatchEvent::Put {
                        key,
                        value: kv.value().to_vec(),
                    }
                }
                EventType::Delete => {
                    known.remove(&key);
                    WatchEvent::Delete { key }
                }
            };
            if let Ok(rev) = u64::try_from(kv.mod_revision()) {
                *next = (*next).max(rev + 1);
            }
            if tx.send(ev).await.is_err() {
                return StreamEnd::ConsumerGone;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// A port nothing listens on: port 1 (tcpmux) is privileged and unused on loopback. A port
    /// bound and released instead could be taken by another process before the test connects.
    fn dead_endpoint() -> String {
        "127.0.0.1:1".to_owned()
    }

    #[tokio::test]
    async fn unreachable_etcd_fails_fast_naming_the_endpoint() {
        let ep = dead_endpoint();
        let store = EtcdStore::connect(EtcdConfig {
            endpoints: vec![ep.clone()],
            dial_timeout: Duration::from_millis(500),
            ..EtcdConfig::default()
        })
        .await
        .expect("lazy connect");
        let started = std::time::Instant::now();
        let err = store
            .get("configurations/a")
            .await
            .expect_err("unreachable");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
        // A refused connection fails at once; a black-holed one after `dial_timeout`.
        let text = err.to_string();
        assert!(
            text.starts_with(&format!("etcd at {ep}: get \"configurations/a\" ")),
            "{text}"
        );
        assert!(
            text.contains("Connection refused") || text.contains("got no answer within 500ms"),
            "{text}"
        );
        let err = store
            .watch_prefix("configurations/")
            .await
            .expect_err("unreachable");
        assert!(err.to_string().contains(&ep), "{err}");
    }

    #[tokio::test]
    async fn silent_etcd_times_out_naming_the_endpoint() {
        // Accepts TCP connections (the kernel does, from the backlog) but never speaks HTTP/2.
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let ep = listener.local_addr().expect("addr").to_string();
        let store = EtcdStore::connect(EtcdConfig {
            endpoints: vec![ep.clone()],
            dial_timeout: Duration::from_millis(500),
            ..EtcdConfig::default()
        })
        .await
        .expect("lazy connect");
        let started = std::time::Instant::now();
        let err = store
            .put("configurations/a", b"x".to_vec())
            .await
            .expect_err("silent");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(
            err.to_string(),
            format!(
                "etcd at {ep}: put \"configurations/a\" got no answer within 500ms \
                 (is etcd running and reachable?)"
            )
        );
        drop(listener);
    }

    #[tokio::test]
    async fn refuses_empty_endpoints_bad_endpoints_and_unreadable_certificates() {
        let err = EtcdStore::connect(EtcdConfig::default())
            .await
            .expect_err("empty");
        assert!(err.to_string().contains("no endpoints"), "{err}");
        let err = EtcdStore::connect(EtcdConfig {
            endpoints: vec!["a".into()],
            ..EtcdConfig::default()
        })
        .await
        .expect_err("no port");
        assert!(
            err.to_string().contains("is not [http[s]://]host:port"),
            "{err}"
        );
        let err = EtcdStore::connect(EtcdConfig {
            endpoints: vec!["a:1".into()],
            tls: Some(TlsSettings {
                ca: Some(crate::config::secret::SecretSource::File(
                    "/nonexistent/ca.pem".into(),
                )),
                ..Default::default()
            }),
            ..EtcdConfig::default()
        })
        .await
        .expect_err("tls");
        assert!(
            err.to_string()
                .contains("etcd at a:1: cannot read tls_config.ca_file /nonexistent/ca.pem"),
            "{err}"
        );
    }

    /// A transaction or delete is sent again only when etcd says it was not applied or no
    /// connection was made; a read or put after any "unavailable".
    #[test]
    fn retry_only_what_is_safe_to_repeat() {
        let status = |s: tonic::Status| etcd_client::Error::GRpcStatus(s);
        let changed = status(tonic::Status::unavailable("etcdserver: leader changed"));
        let no_leader = status(tonic::Status::unavailable("etcdserver: no leader"));
        let timed_out = status(tonic::Status::unavailable("etcdserver: request timed out"));
        let mut refused = tonic::Status::unavailable("tcp connect error");
        refused.set_source(std::sync::Arc::new(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "no endpoint accepted a connection",
        )));
        let refused = status(refused);
        let denied = status(tonic::Status::permission_denied(
            "etcdserver: permission denied",
        ));
        for e in [&changed, &no_leader, &timed_out, &refused] {
            assert!(Retry::Unavailable.allows(e), "{e}");
        }
        assert!(Retry::NotApplied.allows(&changed));
        assert!(Retry::NotApplied.allows(&no_leader));
        assert!(Retry::NotApplied.allows(&refused), "never sent");
        assert!(
            !Retry::NotApplied.allows(&timed_out),
            "may have been applied"
        );
        assert!(!Retry::Unavailable.allows(&denied));
        assert!(!Retry::NotApplied.allows(&denied));
    }
}
