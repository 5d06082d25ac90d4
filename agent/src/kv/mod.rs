//! KV store layer: the [`KvStore`] trait and its etcd, embedded and in-memory implementations,
//! the config value codec ([`codec`]) and the config store on top ([`configstore`]).
//!
//! # Keys and values
//!
//! Keys are full keys, exactly as they sit in etcd: `configurations/<name>` for instance configs
//! (the name may contain `/`), `collectors/agent` for the hash ring. Values are opaque bytes; the
//! config store writes gzip(YAML) (see [`codec`]), the ring writes snappy(protobuf). All three
//! backends store the same keys and bytes, so moving between them is a plain copy of keys and
//! values.
//!
//! # Revisions
//!
//! Every value carries a `revision`: the store-wide revision of the write that last modified the
//! key (etcd's `mod_revision`). The embedded and in-memory stores keep one counter that grows by
//! one per applied write, like etcd. [`KvStore::put_if_revision`] compares against it, which is
//! what `<dyn KvStore>::cas` is built on (an inherent method of `dyn KvStore`, because its
//! generic callback cannot be part of an object-safe trait: call it through an
//! `Arc<dyn KvStore>` or a `&dyn KvStore`).
//!
//! # Watches
//!
//! [`KvStore::watch_prefix`] starts at the store's current revision (no initial listing) and
//! reports every later change under the prefix, deletes included, in revision order. When a
//! backend cannot replay what it missed (etcd compaction while disconnected, a lagging local
//! subscriber), the watch re-lists the prefix and reports a synthetic [`WatchEvent::Put`] for every
//! key that exists and a [`WatchEvent::Delete`] for every key it had seen that is gone, so the
//! consumer's view converges. Dropping the [`Watch`] stops its background task. To follow a single
//! key (the ring's `collectors/agent`), watch it as a prefix and ignore the other keys.

pub mod codec;
pub mod configstore;
mod embedded;
mod etcd;
mod local;
#[cfg(any(test, feature = "test-util"))]
pub mod testing;

use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

pub use embedded::{EmbeddedStore, DB_FILE as EMBEDDED_DB_FILE};
pub use etcd::{EtcdConfig, EtcdStore};
pub use local::InMemoryStore;

/// A boxed, sendable future: what the object-safe [`KvStore`] methods return.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Keys with their values, sorted by key.
pub type KeyValues = Vec<(String, Vec<u8>)>;

/// How many deferred writes ([`KvStore::put_if_revision_deferred`]) the embedded store keeps in
/// memory at most before it writes them to disk (about 5 minutes of ring heartbeats at the
/// default 5 s period).
pub const DEFERRED_WRITES_MAX: u32 = 60;

/// Default number of CAS attempts (dskit's etcd `max_retries` default).
pub const DEFAULT_CAS_RETRIES: u32 = 10;

/// A value with the revision of the write that last modified it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    pub value: Vec<u8>,
    /// Store-wide revision of the last write to this key (etcd `mod_revision`); never 0.
    pub revision: u64,
}

/// One change reported by a watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    Put { key: String, value: Vec<u8> },
    Delete { key: String },
}

impl WatchEvent {
    pub fn key(&self) -> &str {
        match self {
            WatchEvent::Put { key, .. } | WatchEvent::Delete { key } => key,
        }
    }
}

/// Errors from any KV backend. Each names the store (etcd endpoints or embedded path) and, where
/// there is one, the key.
#[derive(Debug, thiserror::Error)]
pub enum KvError {
    #[error("etcd at {endpoints}: {operation}{} got no answer within {timeout:?} (is etcd running and reachable?)", on_key(.key))]
    EtcdTimeout {
        endpoints: String,
        operation: &'static str,
        key: String,
        timeout: Duration,
    },
    #[error("etcd at {endpoints}: {operation}{} failed: {source}", on_key(.key))]
    Etcd {
        endpoints: String,
        operation: &'static str,
        key: String,
        #[source]
        source: etcd_client::Error,
    },
    #[error("etcd at {endpoints}: {message}")]
    EtcdConfig { endpoints: String, message: String },
    #[error("embedded KV store at {path} is locked by another process")]
    EmbeddedLocked { path: PathBuf },
    #[error("embedded KV store at {path}: {operation} failed: {source}")]
    Embedded {
        path: PathBuf,
        operation: &'static str,
        #[source]
        source: Box<redb::Error>,
    },
    #[error("embedded KV store at {path}: {message}")]
    EmbeddedIo { path: PathBuf, message: String },
    #[error("the {store} KV store is not supported; use etcd or the embedded store")]
    Unsupported { store: &'static str },
    #[error("key {key:?} holds a value whose revision is out of range: {revision}")]
    BadRevision { key: String, revision: i64 },
    #[error("key is not valid UTF-8: {key:?}")]
    KeyNotUtf8 { key: String },
    #[error("{store}: background task failed: {message}")]
    Task { store: String, message: String },
}

/// ` "key"` for an error message, nothing for operations on no key (connect).
fn on_key(key: &str) -> String {
    if key.is_empty() {
        String::new()
    } else {
        format!(" {key:?}")
    }
}

/// An error from `<dyn KvStore>::cas`: the store failed, the callback refused, or every
/// attempt lost the race.
#[derive(Debug, thiserror::Error)]
pub enum CasError<E> {
    #[error(transparent)]
    Kv(#[from] KvError),
    #[error("{0}")]
    Callback(E),
    #[error("failed to CAS {key:?}: value changed concurrently on each of {attempts} attempts")]
    TooManyConflicts { key: String, attempts: u32 },
}

/// What a successful `<dyn KvStore>::cas` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CasOutcome {
    /// The key did not exist and now holds the callback's value.
    Created,
    /// The key existed and now holds the callback's value.
    Updated,
    /// The callback returned `None`: nothing was written.
    Unchanged,
}

/// The KV operations the agent needs. Object safe: use it as `Arc<dyn KvStore>`.
pub trait KvStore: Send + Sync + fmt::Debug {
    /// The value of `key` and its revision, `None` when absent.
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Versioned>, KvError>>;

    /// All keys starting with `prefix`, sorted.
    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<String>, KvError>>;

    /// All keys starting with `prefix` with their values, sorted by key, in one round trip.
    fn list_values<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<KeyValues, KvError>>;

    /// Unconditionally sets `key` to `value`.
    fn put<'a>(&'a self, key: &'a str, value: Vec<u8>) -> BoxFuture<'a, Result<(), KvError>>;

    /// Deletes `key`; `true` when it existed.
    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<bool, KvError>>;

    /// Deletes `key` only if its current revision is `expected`, atomically (a write in between
    /// is a conflict, not a lost update). `true` when deleted, `false` when the key is absent or
    /// at another revision.
    fn delete_if_revision<'a>(
        &'a self,
        key: &'a str,
        expected: u64,
    ) -> BoxFuture<'a, Result<bool, KvError>>;

    /// Sets `key` to `value` only if its current revision is `expected` (`None` = the key must
    /// not exist). `true` when written, `false` on a conflict.
    fn put_if_revision<'a>(
        &'a self,
        key: &'a str,
        expected: Option<u64>,
        value: Vec<u8>,
    ) -> BoxFuture<'a, Result<bool, KvError>>;

    /// [`KvStore::put_if_revision`] for a value the next write of the same kind replaces (a
    /// ring heartbeat): the store may apply it at once but write it to disk later, so a crash
    /// of the process or the machine may lose it. Reads, watches and CAS see it like any
    /// write. The embedded store keeps such writes in memory until its next ordinary write, a
    /// clean close, or [`DEFERRED_WRITES_MAX`] of them; etcd and the in-memory store write every
    /// write the same way (this default).
    fn put_if_revision_deferred<'a>(
        &'a self,
        key: &'a str,
        expected: Option<u64>,
        value: Vec<u8>,
    ) -> BoxFuture<'a, Result<bool, KvError>> {
        self.put_if_revision(key, expected, value)
    }

    /// Watches every key under `prefix` from the current revision on; see the module docs.
    fn watch_prefix<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Watch, KvError>>;

    /// Number of CAS attempts `<dyn KvStore>::cas` makes (etcd: `max_retries`).
    fn cas_retries(&self) -> u32 {
        DEFAULT_CAS_RETRIES
    }

    /// A short description for logs and errors: `etcd at a:2379,b:2379`, `embedded KV store at
    /// /var/lib/agent/kv`, `in-memory KV store`.
    fn describe(&self) -> String;
}

impl dyn KvStore {
    /// Read-modify-write of `key`. `f` gets the current value (`None` when absent) and returns
    /// the new value, or `None` to write nothing. On a conflict (someone else wrote in between)
    /// `f` is called again with the fresh value, up to [`KvStore::cas_retries`] attempts.
    pub async fn cas<E, F>(&self, key: &str, f: F) -> Result<CasOutcome, CasError<E>>
    where
        F: FnMut(Option<&[u8]>) -> Result<Option<Vec<u8>>, E>,
    {
        self.cas_with(key, false, f).await
    }

    /// [`cas`](Self::cas) whose write is deferred: see [`KvStore::put_if_revision_deferred`].
    pub async fn cas_deferred<E, F>(&self, key: &str, f: F) -> Result<CasOutcome, CasError<E>>
    where
        F: FnMut(Option<&[u8]>) -> Result<Option<Vec<u8>>, E>,
    {
        self.cas_with(key, true, f).await
    }

    async fn cas_with<E, F>(
        &self,
        key: &str,
        deferred: bool,
        mut f: F,
    ) -> Result<CasOutcome, CasError<E>>
    where
        F: FnMut(Option<&[u8]>) -> Result<Option<Vec<u8>>, E>,
    {
        let attempts = self.cas_retries().max(1);
        let mut round_trip = Duration::ZERO;
        for attempt in 0..attempts {
            if attempt > 0 {
                // Contenders that retry at once tend to collide again; a random pause spreads
                // them out (dskit's consul client does the same with `cas_retry_delay`).
                tokio::time::sleep(cas_backoff(attempt, round_trip)).await;
            }
            let started = std::time::Instant::now();
            let current = self.get(key).await?;
            let next =
                f(current.as_ref().map(|v| v.value.as_slice())).map_err(CasError::Callback)?;
            let Some(next) = next else {
                return Ok(CasOutcome::Unchanged);
            };
            let expected = current.as_ref().map(|v| v.revision);
            let written = if deferred {
                self.put_if_revision_deferred(key, expected, next).await?
            } else {
                self.put_if_revision(key, expected, next).await?
            };
            if written {
                return Ok(if current.is_some() {
                    CasOutcome::Updated
                } else {
                    CasOutcome::Created
                });
            }
            round_trip = started.elapsed();
            tracing::debug!(key, store = %self.describe(), "CAS conflict, retrying");
        }
        Err(CasError::TooManyConflicts {
            key: key.to_owned(),
            attempts,
        })
    }
}

/// A random pause before retry `attempt` (>= 1), in `[0, base * 2^(attempt-1))` capped at 1 s,
/// where `base` is the larger of 5 ms and the last attempt's read-and-write round trip. The round
/// trip is the window in which contenders collide, so a slow store (etcd under load) gets a
/// wider spread instead of the same collisions again.
fn cas_backoff(attempt: u32, round_trip: Duration) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    let base_us = (round_trip.as_micros() as u64).max(5_000);
    let ceiling_us = base_us
        .saturating_mul(1 << attempt.saturating_sub(1).min(8))
        .min(1_000_000);
    // RandomState is seeded per instance from OS randomness: enough for jitter, no extra crate.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(attempt);
    Duration::from_micros(h.finish() % ceiling_us)
}

/// Capacity of the channel between a watch's background task and its consumer. A slow consumer
/// back-pressures the task (and with it the etcd stream), never loses events.
const WATCH_CHANNEL: usize = 256;

/// A running watch. Events arrive in revision order; dropping it stops the background task.
#[derive(Debug)]
pub struct Watch {
    rx: mpsc::Receiver<WatchEvent>,
    task: JoinHandle<()>,
}

impl Watch {
    fn new(rx: mpsc::Receiver<WatchEvent>, task: JoinHandle<()>) -> Self {
        Watch { rx, task }
    }

    /// The next change; `None` only when the store itself has gone away.
    pub async fn recv(&mut self) -> Option<WatchEvent> {
        self.rx.recv().await
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Which KV store to use, as given to `--kv`:
///
/// - `etcd://host:port[,host:port...]` — etcd v3 at these endpoints (plain HTTP/2),
/// - `etcds://host:port[,host:port...]` — the same over TLS (the system roots; callers add
///   certificates and credentials to the [`EtcdConfig`]),
/// - `embedded:PATH` — the embedded, durable store in directory `PATH`,
/// - `inmemory` — a process-local store that forgets everything on exit,
/// - `consul://host:port` — recognised so the error can say it is not supported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvSpec {
    Etcd(Box<EtcdConfig>),
    Embedded(PathBuf),
    InMemory,
    Consul(String),
}

/// Why a `--kv` value could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KvSpecError {
    #[error("invalid KV store {spec:?}: {reason}; expected etcd://host:port[,host:port], etcds://host:port[,host:port], embedded:PATH or inmemory")]
    Invalid { spec: String, reason: String },
}

impl FromStr for KvSpec {
    type Err = KvSpecError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = |reason: &str| KvSpecError::Invalid {
            spec: s.to_owned(),
            reason: reason.to_owned(),
        };
        if s == "inmemory" {
            return Ok(KvSpec::InMemory);
        }
        if let Some(path) = s.strip_prefix("embedded:") {
            if path.is_empty() {
                return Err(invalid(
                    "the embedded store needs a directory after \"embedded:\"",
                ));
            }
            return Ok(KvSpec::Embedded(PathBuf::from(path)));
        }
        let etcd = s
            .strip_prefix("etcd://")
            .map(|r| (r, false))
            .or_else(|| s.strip_prefix("etcds://").map(|r| (r, true)));
        if let Some((rest, tls)) = etcd {
            let mut endpoints = Vec::new();
            for ep in rest.split(',') {
                validate_host_port(ep).map_err(|reason| invalid(&reason))?;
                endpoints.push(ep.to_owned());
            }
            return Ok(KvSpec::Etcd(Box::new(EtcdConfig {
                endpoints,
                tls: tls.then(crate::config::http::TlsSettings::default),
                ..EtcdConfig::default()
            })));
        }
        if let Some(rest) = s.strip_prefix("consul://") {
            return Ok(KvSpec::Consul(rest.to_owned()));
        }
        if s == "consul" {
            return Ok(KvSpec::Consul(String::new()));
        }
        Err(invalid("unknown store"))
    }
}

fn validate_host_port(ep: &str) -> Result<(), String> {
    if ep.is_empty() {
        return Err("empty etcd endpoint".to_owned());
    }
    let Some((host, port)) = ep.rsplit_once(':') else {
        return Err(format!("etcd endpoint {ep:?} has no port (want host:port)"));
    };
    if host.is_empty() {
        return Err(format!("etcd endpoint {ep:?} has no host"));
    }
    if host.contains('/') || host.contains('@') {
        return Err(format!("etcd endpoint {ep:?} is not host:port"));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => Err(format!("etcd endpoint {ep:?} has an invalid port {port:?}")),
    }
}

impl fmt::Display for KvSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KvSpec::Etcd(cfg) => {
                let scheme = if cfg.tls.is_some() { "etcds" } else { "etcd" };
                write!(f, "{scheme}://{}", cfg.endpoints.join(","))
            }
            KvSpec::Embedded(path) => write!(f, "embedded:{}", path.display()),
            KvSpec::InMemory => f.write_str("inmemory"),
            KvSpec::Consul(host) if host.is_empty() => f.write_str("consul"),
            KvSpec::Consul(host) => write!(f, "consul://{host}"),
        }
    }
}

/// Opens the store `spec` names. etcd connects lazily (the first call fails fast if it is
/// unreachable); the embedded store opens (and locks) its directory now.
pub async fn connect(spec: &KvSpec) -> Result<Arc<dyn KvStore>, KvError> {
    match spec {
        KvSpec::Etcd(cfg) => Ok(Arc::new(EtcdStore::connect((**cfg).clone()).await?)),
        KvSpec::Embedded(path) => Ok(Arc::new(EmbeddedStore::open(path.clone()).await?)),
        KvSpec::InMemory => Ok(Arc::new(InMemoryStore::new())),
        KvSpec::Consul(_) => Err(KvError::Unsupported { store: "consul" }),
    }
}

/// Opens the store a validated `kvstore` block selects. The embedded store lives in
/// `embedded.path`, else in `wal_directory` (its file is `kv.redb`, which no instance WAL
/// folder can clash with).
pub async fn open(
    backend: &crate::config::agent::KvBackend,
    wal_directory: &std::path::Path,
) -> Result<Arc<dyn KvStore>, KvError> {
    use crate::config::agent::KvBackend;
    let spec = match backend {
        KvBackend::Etcd(e) => KvSpec::Etcd(Box::new(EtcdConfig::from_settings(e))),
        KvBackend::InMemory => KvSpec::InMemory,
        KvBackend::Embedded { dir } => KvSpec::Embedded(
            dir.as_ref()
                .map_or_else(|| wal_directory.to_owned(), PathBuf::from),
        ),
        KvBackend::Unused(store) => return Err(KvError::Unsupported { store }),
    };
    connect(&spec).await
}

/// [`open`], retried with backoff (250 ms doubling up to 30 s) while the store is unreachable
/// (etcd down at start). `on_error` hears each failure (and whether it is retried). Gives up,
/// returning `None`, on an error retrying cannot fix (an unsupported store, a bad etcd
/// setting) or when `shutdown` is cancelled.
pub async fn open_retrying(
    backend: &crate::config::agent::KvBackend,
    wal_directory: &std::path::Path,
    shutdown: &tokio_util::sync::CancellationToken,
    mut on_error: impl FnMut(&KvError, Option<Duration>),
) -> Option<Arc<dyn KvStore>> {
    let mut delay = Duration::from_millis(250);
    loop {
        match open(backend, wal_directory).await {
            Ok(store) => return Some(store),
            Err(e @ (KvError::Unsupported { .. } | KvError::EtcdConfig { .. })) => {
                on_error(&e, None);
                return None;
            }
            Err(e) => on_error(&e, Some(delay)),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(30));
    }
}

/// Exclusive upper bound of the keys starting with `prefix` (etcd's `range_end` rule): the
/// prefix with its last byte below 0xff incremented and the rest dropped; `None` = no bound.
pub(crate) fn prefix_end(prefix: &str) -> Option<Vec<u8>> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_specs() {
        assert_eq!("inmemory".parse::<KvSpec>(), Ok(KvSpec::InMemory));
        assert_eq!(
            "embedded:/var/lib/kv".parse::<KvSpec>(),
            Ok(KvSpec::Embedded(PathBuf::from("/var/lib/kv")))
        );
        let KvSpec::Etcd(cfg) = "etcd://a:2379,10.0.0.2:2380"
            .parse::<KvSpec>()
            .expect("valid spec")
        else {
            panic!("not etcd");
        };
        assert_eq!(cfg.endpoints, vec!["a:2379", "10.0.0.2:2380"]);
        assert_eq!(cfg.dial_timeout, Duration::from_secs(10));
        assert_eq!(cfg.max_retries, 10);
        assert_eq!(
            "consul://c:8500".parse::<KvSpec>(),
            Ok(KvSpec::Consul("c:8500".into()))
        );
    }

    #[test]
    fn rejects_bad_specs_with_reasons() {
        for (spec, reason) in [
            ("etcd://", "empty etcd endpoint"),
            ("etcd://host", "has no port"),
            ("etcd://host:0", "invalid port"),
            ("etcd://host:99999", "invalid port"),
            ("etcd://a:1,", "empty etcd endpoint"),
            ("etcd://:2379", "has no host"),
            ("embedded:", "needs a directory"),
            ("redis://x", "unknown store"),
            ("", "unknown store"),
        ] {
            let err = spec.parse::<KvSpec>().expect_err(spec).to_string();
            assert!(err.contains(reason), "{spec}: {err}");
            assert!(err.contains("etcd://host:port"), "{spec}: {err}");
        }
    }

    #[test]
    fn spec_display_round_trips() {
        for s in [
            "inmemory",
            "embedded:/tmp/x",
            "etcd://a:1,b:2",
            "consul://c:8500",
        ] {
            let spec: KvSpec = s.parse().expect("valid");
            assert_eq!(spec.to_string(), s);
        }
    }

    #[tokio::test]
    async fn consul_is_refused_clearly() {
        let err = connect(&KvSpec::Consul("c:8500".into()))
            .await
            .expect_err("consul");
        assert_eq!(
            err.to_string(),
            "the consul KV store is not supported; use etcd or the embedded store"
        );
    }

    /// A store kind agentctl has no backend for is its own error, not an etcd setting.
    #[tokio::test]
    async fn an_unused_store_kind_does_not_open() {
        let err = open(
            &crate::config::agent::KvBackend::Unused("multi"),
            std::path::Path::new("/nonexistent"),
        )
        .await
        .expect_err("multi");
        assert_eq!(
            err.to_string(),
            "the multi KV store is not supported; use etcd or the embedded store"
        );
    }

    #[test]
    fn prefix_end_follows_etcd() {
        assert_eq!(prefix_end("a/"), Some(b"a0".to_vec()));
        assert_eq!(prefix_end(""), None);
        assert_eq!(prefix_end("ab\u{7f}"), Some(b"ab\x80".to_vec()));
    }

    proptest! {
        #[test]
        fn spec_parse_never_panics(s in ".{0,40}") {
            let _ = s.parse::<KvSpec>();
        }
    }
}
