//! Target sharding's KV layout and value codec.
//!
//! # Keys (in the config store, next to `configurations/`: see [`Layout`])
//!
//! | key | written by | value |
//! |---|---|---|
//! | `sharding/targets/<config>` | the config's owner on the ring, which runs its service discovery | [`PublishedTargets`] |
//! | `sharding/assignment` | the assignment leader, compare-and-swap | [`AssignmentDoc`] |
//! | `sharding/agents/<id>` | each agent in target sharding mode | [`AgentStatus`] |
//! | `sharding/chunks/<digest>/<i>` | the writer of a value over [`MAX_VALUE`] | part `i` of it |
//!
//! # Values
//!
//! ```text
//! value    = gzip(JSON)                              the whole value (starts 1f 8b)
//!          | {"chunked":{"digest":D,"parts":n,"bytes":b}}    a manifest (starts `{`)
//! part i   = bytes [i × MAX_VALUE, (i+1) × MAX_VALUE) of gzip(JSON)
//! D        = xxHash64(seed 0, gzip(JSON)) as 16 lower-case hex digits
//! ```
//!
//! etcd refuses requests over 1.5 MiB by default (`--max-request-bytes`), so a value whose
//! gzip is larger than [`MAX_VALUE`] (1 MiB) is split: the parts are written first, under a
//! digest of the whole, then the key itself with the manifest; a reader of the manifest fetches
//! the parts and checks the digest. The writer deletes the parts of the value it replaced; parts
//! nothing refers to (a writer that died between the two steps) are removed by [`gc_chunks`].
//! A reader that finds a part gone (replaced meanwhile) gets [`StoreError::Changed`] and reads
//! the key again.
//!
//! Target keys ([`TargetKey`]) are written as 16 hex digits, so tools that read JSON numbers as
//! doubles (jq) do not round them.

use std::collections::BTreeSet;
use std::io::Read;

use flate2::read::MultiGzDecoder;
use flate2::write::GzEncoder;
use flate2::Compression;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::kv::{KvError, KvStore};

/// Where target sharding's keys live: `<prefix>targets/<config>`, `<prefix>assignment`,
/// `<prefix>agents/<id>`, `<prefix>chunks/<digest>/<i>`.
///
/// The prefix sits next to the config prefix (`kvstore.prefix`): `configurations/` gives
/// `sharding/`, `prod/configurations/` gives `prod/sharding/` ([`Layout::for_config_prefix`]),
/// so clusters that share an etcd under different prefixes do not share sharding keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    prefix: String,
}

impl Default for Layout {
    fn default() -> Self {
        Layout::new(DEFAULT_PREFIX)
    }
}

/// The prefix next to the old agent's default config prefix, `configurations/`.
pub const DEFAULT_PREFIX: &str = "sharding/";

impl Layout {
    pub fn new(prefix: impl Into<String>) -> Self {
        Layout {
            prefix: prefix.into(),
        }
    }

    /// The layout next to config prefix `config_prefix` (see
    /// [`crate::config::agent::sharding_prefix`]).
    pub fn for_config_prefix(config_prefix: &str) -> Self {
        Layout::new(crate::config::agent::sharding_prefix(config_prefix))
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn targets_prefix(&self) -> String {
        format!("{}targets/", self.prefix)
    }

    pub fn targets_key(&self, config: &str) -> String {
        format!("{}targets/{config}", self.prefix)
    }

    pub fn agents_prefix(&self) -> String {
        format!("{}agents/", self.prefix)
    }

    pub fn agent_key(&self, id: &str) -> String {
        format!("{}agents/{id}", self.prefix)
    }

    pub fn assignment_key(&self) -> String {
        format!("{}assignment", self.prefix)
    }

    pub fn chunks_prefix(&self) -> String {
        format!("{}chunks/", self.prefix)
    }

    fn chunk_key(&self, digest: &str, part: usize) -> String {
        format!("{}chunks/{digest}/{part}", self.prefix)
    }
}

/// The largest value written as one KV value (below etcd's default 1.5 MiB request limit,
/// leaving room for the key and the request's framing).
pub const MAX_VALUE: usize = 1 << 20;

/// The largest JSON accepted after gunzip (a corrupt value or a gzip bomb otherwise). A
/// million targets with Kubernetes-sized label sets stay well below it.
pub const MAX_DECODED: usize = 1 << 30;

/// The version written in every value; a reader refuses a higher one by name.
pub const FORMAT_VERSION: u32 = 1;

/// A target's key in the assignment: stable across agents and versions (see [`target_key`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TargetKey(pub u64);

impl std::fmt::Display for TargetKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl std::str::FromStr for TargetKey {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s.len() != 16 {
            return Err(format!("target key {s:?} is not 16 hex digits"));
        }
        u64::from_str_radix(s, 16)
            .map(TargetKey)
            .map_err(|_| format!("target key {s:?} is not 16 hex digits"))
    }
}

impl Serialize for TargetKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for TargetKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = std::borrow::Cow::<'de, str>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The key of the target with `labels` (its full labels after relabelling, sorted by name,
/// `__meta_*` excluded) in scrape job `job` of config `config`:
///
/// ```text
/// xxHash64(seed 0, config ‖ 0 ‖ job ‖ 0 ‖ (name ‖ 0 ‖ value ‖ 0)*)
/// ```
///
/// Distinct targets share a key only by a 64-bit collision, which is harmless: everything
/// keyed by it (owner, handoff) treats such a pair as one unit, and both are scraped.
pub fn target_key<'a>(
    config: &str,
    job: &str,
    labels: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> TargetKey {
    use std::hash::Hasher;
    let mut h = twox_hash::XxHash64::with_seed(0);
    for part in [config, job] {
        h.write(part.as_bytes());
        h.write(&[0]);
    }
    for (n, v) in labels {
        h.write(n.as_bytes());
        h.write(&[0]);
        h.write(v.as_bytes());
        h.write(&[0]);
    }
    TargetKey(h.finish())
}

/// `sharding/targets/<config>`: the targets of one config, as its service discovery and
/// `relabel_configs` produced them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PublishedTargets {
    pub v: u32,
    pub config: String,
    pub jobs: Vec<PublishedJob>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PublishedJob {
    pub job: String,
    /// Set when every scrape of the job's targets must fail (`target_limit exceeded ...`),
    /// which only the discovering agent, seeing the whole job, can judge.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forced_error: Option<String>,
    /// Each target's full labels, sorted by name, flattened: `[name, value, name, value, ...]`.
    pub targets: Vec<Vec<String>>,
}

impl PublishedJob {
    /// The label pairs of target `i`.
    pub fn labels(&self, i: usize) -> impl Iterator<Item = (&str, &str)> {
        self.targets[i]
            .chunks_exact(2)
            .map(|p| (p[0].as_str(), p[1].as_str()))
    }
}

impl PublishedTargets {
    /// Every target's key, with its job index and index within the job.
    pub fn keys(&self) -> impl Iterator<Item = (usize, usize, TargetKey)> + '_ {
        self.jobs.iter().enumerate().flat_map(move |(j, job)| {
            (0..job.targets.len())
                .map(move |i| (j, i, target_key(&self.config, &job.job, job.labels(i))))
        })
    }

    pub fn len(&self) -> usize {
        self.jobs.iter().map(|j| j.targets.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// `sharding/assignment`: which member scrapes which target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AssignmentDoc {
    pub v: u32,
    /// +1 per write; agents act on the highest they have seen.
    pub epoch: u64,
    /// Wall clock of the leader when it wrote this epoch, Unix milliseconds.
    pub published_ms: i64,
    /// The ID of the member that wrote it.
    pub leader: String,
    /// The cap every member was held to.
    pub cap: usize,
    /// The eligible members; owners index this list.
    pub members: Vec<String>,
    pub configs: Vec<ConfigOwners>,
}

/// The owners of one config's targets. The three lists are parallel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfigOwners {
    pub config: String,
    pub keys: Vec<TargetKey>,
    pub owners: Vec<u32>,
    /// The epoch since which each target is on its owner.
    pub since: Vec<u64>,
}

impl AssignmentDoc {
    /// An empty assignment at epoch 0 (what a store without one means).
    pub fn empty() -> Self {
        AssignmentDoc {
            v: FORMAT_VERSION,
            epoch: 0,
            published_ms: 0,
            leader: String::new(),
            cap: 0,
            members: Vec::new(),
            configs: Vec::new(),
        }
    }

    /// Targets per member, in `members` order.
    pub fn counts(&self) -> Vec<usize> {
        let mut c = vec![0; self.members.len()];
        for cfg in &self.configs {
            for &o in &cfg.owners {
                if let Some(n) = c.get_mut(o as usize) {
                    *n += 1;
                }
            }
        }
        c
    }

    /// Checks the parallel lists and owner indexes, so readers can index without checks.
    pub fn validate(&self) -> Result<(), String> {
        for c in &self.configs {
            if c.keys.len() != c.owners.len() || c.keys.len() != c.since.len() {
                return Err(format!(
                    "config {:?}: {} keys, {} owners, {} since epochs",
                    c.config,
                    c.keys.len(),
                    c.owners.len(),
                    c.since.len()
                ));
            }
            if let Some(o) = c.owners.iter().find(|&&o| o as usize >= self.members.len()) {
                return Err(format!(
                    "config {:?}: owner index {o} but {} members",
                    c.config,
                    self.members.len()
                ));
            }
        }
        Ok(())
    }
}

impl Default for AssignmentDoc {
    fn default() -> Self {
        AssignmentDoc::empty()
    }
}

/// `sharding/agents/<id>`: what one agent does, for the others (handoffs) and for the ring page.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AgentStatus {
    pub v: u32,
    /// The agent's advertised address (as in the ring).
    pub addr: String,
    /// The highest assignment epoch it has applied.
    pub epoch: u64,
    /// Targets it was assigned, can scrape, and waits to be released to it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ready: Vec<TargetKey>,
    /// Targets it still writes although another member owns them (waiting for a `ready`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub releasing: Vec<TargetKey>,
    /// Targets it stopped writing, with the scrape time (Unix ms) of the last scrape it
    /// appended (`None`: it never appended one); every sample up to it was delivered.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub released: Vec<(TargetKey, Option<i64>)>,
    /// Targets it began writing recently (kept as long as `released` entries), so that an
    /// agent still writing one of them (it was judged dead, or is still waiting for a `ready`)
    /// stops at once.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub started: Vec<TargetKey>,
    /// Targets it writes samples for.
    pub targets: usize,
    /// Active series in its WAL storage.
    pub active_series: u64,
    /// Unix ms of this write.
    pub updated_ms: i64,
}

/// Errors of this layer; each names the key.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Kv(#[from] KvError),
    #[error("{key}: {reason}")]
    Corrupt { key: String, reason: String },
    #[error("{key}: written by a newer agentctl (format version {version}, this one reads {FORMAT_VERSION})")]
    NewerVersion { key: String, version: u32 },
    #[error("{key}: changed while being read (part {part} of {digest} is gone); read it again")]
    Changed {
        key: String,
        digest: String,
        part: usize,
    },
}

impl StoreError {
    fn corrupt(key: &str, reason: impl std::fmt::Display) -> Self {
        StoreError::Corrupt {
            key: key.to_owned(),
            reason: reason.to_string(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Manifest {
    chunked: ChunkRef,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct ChunkRef {
    digest: String,
    parts: usize,
    bytes: usize,
}

/// What one value becomes in the store: the bytes of the key itself, and parts to write first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    pub head: Vec<u8>,
    pub parts: Vec<(String, Vec<u8>)>,
}

/// gzip(JSON) of `value`.
pub fn gzip_json<T: Serialize>(value: &T) -> Vec<u8> {
    let mut enc = GzEncoder::new(Vec::new(), Compression::default());
    // Serialising these types (no maps with non-string keys) into memory cannot fail; were it
    // ever to, writing an empty or partial value would be worse than stopping.
    if let Err(e) = serde_json::to_writer(&mut enc, value) {
        panic!("encoding a sharding value into memory failed: {e}");
    }
    match enc.finish() {
        Ok(v) => v,
        Err(e) => panic!("gzip into memory failed: {e}"),
    }
}

/// Encodes `value` (see the module docs), splitting it when larger than `max`.
pub fn encode<T: Serialize>(layout: &Layout, value: &T, max: usize) -> Encoded {
    let gz = gzip_json(value);
    if gz.len() <= max {
        return Encoded {
            head: gz,
            parts: Vec::new(),
        };
    }
    let digest = format!("{:016x}", twox_hash::XxHash64::oneshot(0, &gz));
    let parts: Vec<(String, Vec<u8>)> = gz
        .chunks(max)
        .enumerate()
        .map(|(i, c)| (layout.chunk_key(&digest, i), c.to_vec()))
        .collect();
    let manifest = Manifest {
        chunked: ChunkRef {
            digest,
            parts: parts.len(),
            bytes: gz.len(),
        },
    };
    Encoded {
        head: serde_json::to_vec(&manifest).unwrap_or_default(),
        parts,
    }
}

fn manifest(key: &str, head: &[u8]) -> Result<Option<ChunkRef>, StoreError> {
    match head.first() {
        Some(b'{') => serde_json::from_slice::<Manifest>(head)
            .map(|m| Some(m.chunked))
            .map_err(|e| StoreError::corrupt(key, format!("not a chunk manifest: {e}"))),
        _ => Ok(None),
    }
}

/// The digests of the parts a head refers to (none for a whole value).
fn referenced_digest(head: &[u8]) -> Option<String> {
    manifest("", head).ok().flatten().map(|m| m.digest)
}

fn decode_json<T: DeserializeOwned>(key: &str, gz: &[u8]) -> Result<T, StoreError> {
    let mut json = Vec::new();
    MultiGzDecoder::new(gz)
        .take(MAX_DECODED as u64 + 1)
        .read_to_end(&mut json)
        .map_err(|e| StoreError::corrupt(key, format!("not gzip: {e}")))?;
    if json.len() > MAX_DECODED {
        return Err(StoreError::corrupt(
            key,
            format!("larger than {MAX_DECODED} bytes after gunzip"),
        ));
    }
    #[derive(Deserialize)]
    struct Version {
        #[serde(default)]
        v: u32,
    }
    if let Ok(Version { v }) = serde_json::from_slice::<Version>(&json) {
        if v > FORMAT_VERSION {
            return Err(StoreError::NewerVersion {
                key: key.to_owned(),
                version: v,
            });
        }
    }
    serde_json::from_slice(&json).map_err(|e| StoreError::corrupt(key, e))
}

/// Values larger than this are decoded on a blocking thread, off the async workers.
const DECODE_INLINE: usize = 64 << 10;

async fn decode_off_workers<T: DeserializeOwned + Send + 'static>(
    key: &str,
    gz: Vec<u8>,
) -> Result<T, StoreError> {
    if gz.len() <= DECODE_INLINE {
        return decode_json(key, &gz);
    }
    let k = key.to_owned();
    tokio::task::spawn_blocking(move || decode_json(&k, &gz))
        .await
        .map_err(|e| StoreError::corrupt(key, format!("decoding task failed: {e}")))?
}

/// Decodes the value `head` of `key` (from a read or a watch event), fetching its parts when
/// it is a manifest.
pub async fn decode<T: DeserializeOwned + Send + 'static>(
    kv: &dyn KvStore,
    layout: &Layout,
    key: &str,
    head: &[u8],
) -> Result<T, StoreError> {
    let Some(m) = manifest(key, head)? else {
        return decode_off_workers(key, head.to_vec()).await;
    };
    let mut gz = Vec::with_capacity(m.bytes.min(MAX_DECODED));
    for part in 0..m.parts {
        let Some(v) = kv.get(&layout.chunk_key(&m.digest, part)).await? else {
            return Err(StoreError::Changed {
                key: key.to_owned(),
                digest: m.digest,
                part,
            });
        };
        gz.extend_from_slice(&v.value);
    }
    if gz.len() != m.bytes || format!("{:016x}", twox_hash::XxHash64::oneshot(0, &gz)) != m.digest {
        return Err(StoreError::corrupt(
            key,
            format!("parts of {} do not match their digest", m.digest),
        ));
    }
    decode_off_workers(key, gz).await
}

/// Reads and decodes `key`: `None` when absent; with the key's revision (for [`write`]).
pub async fn read<T: DeserializeOwned + Send + 'static>(
    kv: &dyn KvStore,
    layout: &Layout,
    key: &str,
) -> Result<Option<(T, u64)>, StoreError> {
    let Some(v) = kv.get(key).await? else {
        return Ok(None);
    };
    let value = decode(kv, layout, key, &v.value).await?;
    Ok(Some((value, v.revision)))
}

/// How [`write`] treats what is in the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Overwrite whatever is there.
    Any,
    /// Write only if the key is at this revision (`None`: absent); a compare-and-swap.
    Revision(Option<u64>),
}

/// Writes `value` under `key` (parts first), then deletes the parts of the value it replaced.
/// `false` when `expect` did not hold (nothing written but the new parts, removed again).
pub async fn write<T: Serialize>(
    kv: &dyn KvStore,
    layout: &Layout,
    key: &str,
    value: &T,
    expect: Expect,
) -> Result<bool, StoreError> {
    let enc = encode(layout, value, MAX_VALUE);
    write_encoded(kv, layout, key, enc, expect).await
}

/// [`write`] of an already encoded value.
pub async fn write_encoded(
    kv: &dyn KvStore,
    layout: &Layout,
    key: &str,
    enc: Encoded,
    expect: Expect,
) -> Result<bool, StoreError> {
    let old = kv.get(key).await?;
    for (k, v) in &enc.parts {
        kv.put(k, v.clone()).await?;
    }
    let written = match expect {
        Expect::Any => {
            kv.put(key, enc.head.clone()).await?;
            true
        }
        Expect::Revision(rev) => kv.put_if_revision(key, rev, enc.head.clone()).await?,
    };
    let new_digest = referenced_digest(&enc.head);
    let old_digest = old.as_ref().and_then(|o| referenced_digest(&o.value));
    if written {
        if let Some(d) = old_digest.filter(|d| Some(d) != new_digest.as_ref()) {
            delete_parts(kv, layout, &d).await?;
        }
    } else if let Some(d) = new_digest {
        // Our parts were for nothing, unless the value that won refers to the same ones.
        let current = kv.get(key).await?;
        if current.and_then(|c| referenced_digest(&c.value)).as_ref() != Some(&d) {
            delete_parts(kv, layout, &d).await?;
        }
    }
    Ok(written)
}

async fn delete_parts(kv: &dyn KvStore, layout: &Layout, digest: &str) -> Result<(), KvError> {
    for k in kv
        .list(&format!("{}{digest}/", layout.chunks_prefix()))
        .await?
    {
        kv.delete(&k).await?;
    }
    Ok(())
}

/// Deletes `key` and the parts its value refers to.
pub async fn delete(kv: &dyn KvStore, layout: &Layout, key: &str) -> Result<bool, StoreError> {
    let old = kv.get(key).await?;
    let existed = kv.delete(key).await?;
    if let Some(d) = old.and_then(|o| referenced_digest(&o.value)) {
        delete_parts(kv, layout, &d).await?;
    }
    Ok(existed)
}

/// Removes parts no sharding key refers to (left by a writer that died between writing the
/// parts and the key). Returns the digests removed.
pub async fn gc_chunks(kv: &dyn KvStore, layout: &Layout) -> Result<Vec<String>, StoreError> {
    let chunks = layout.chunks_prefix();
    let mut referenced = BTreeSet::new();
    for (k, v) in kv.list_values(layout.prefix()).await? {
        if !k.starts_with(&chunks) {
            if let Some(d) = referenced_digest(&v) {
                referenced.insert(d);
            }
        }
    }
    let mut orphans = BTreeSet::new();
    for k in kv.list(&chunks).await? {
        if let Some(d) = k[chunks.len()..].split('/').next() {
            if !referenced.contains(d) {
                orphans.insert(d.to_owned());
            }
        }
    }
    for d in &orphans {
        delete_parts(kv, layout, d).await?;
    }
    Ok(orphans.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::InMemoryStore;
    use crate::ring::tokens::TokenRng;

    static L: std::sync::LazyLock<Layout> = std::sync::LazyLock::new(Layout::default);

    #[test]
    fn the_layout_sits_next_to_the_config_prefix() {
        assert_eq!(
            Layout::for_config_prefix("configurations/").prefix(),
            "sharding/"
        );
        assert_eq!(
            Layout::for_config_prefix("prod/configurations/").prefix(),
            "prod/sharding/"
        );
        assert_eq!(
            Layout::for_config_prefix("prod/configs").prefix(),
            "prod/sharding/"
        );
        assert_eq!(Layout::for_config_prefix("cfg/").prefix(), "sharding/");
        let l = Layout::new("p/sharding/");
        assert_eq!(l.targets_key("team/a"), "p/sharding/targets/team/a");
        assert_eq!(l.agent_key("a1"), "p/sharding/agents/a1");
        assert_eq!(l.assignment_key(), "p/sharding/assignment");
        assert_eq!(l.chunks_prefix(), "p/sharding/chunks/");
    }

    fn job(n: usize, seed: u64) -> PublishedJob {
        let mut rng = TokenRng::with_seed(seed);
        PublishedJob {
            job: "node".into(),
            forced_error: None,
            targets: (0..n)
                .map(|i| {
                    let ip = format!("10.{}.{}.{}:9100", (i >> 16) & 255, (i >> 8) & 255, i & 255);
                    vec![
                        "__address__".into(),
                        ip.clone(),
                        "__metrics_path__".into(),
                        "/metrics".into(),
                        "__scheme__".into(),
                        "http".into(),
                        "__scrape_interval__".into(),
                        "15s".into(),
                        "__scrape_timeout__".into(),
                        "10s".into(),
                        "instance".into(),
                        ip,
                        "job".into(),
                        "node".into(),
                        "namespace".into(),
                        format!("ns-{}", i % 40),
                        "pod".into(),
                        format!("node-exporter-{:x}", rng.next_u32()),
                    ]
                })
                .collect(),
        }
    }

    #[test]
    fn target_keys_are_pinned_and_separate_fields() {
        let k = target_key("c", "j", [("__address__", "a:1")]);
        assert_eq!(
            k.0,
            twox_hash::XxHash64::oneshot(0, b"c\0j\0__address__\0a:1\0")
        );
        assert_ne!(
            target_key("c", "j", [("a", "b")]),
            target_key("c", "j", [("ab", "")])
        );
        assert_ne!(target_key("cj", "", []), target_key("c", "j", []));
        assert_eq!(k.to_string().parse::<TargetKey>(), Ok(k));
        assert_eq!(TargetKey(255).to_string(), "00000000000000ff");
        assert!("ff".parse::<TargetKey>().is_err());
        assert!("zzzzzzzzzzzzzzzz".parse::<TargetKey>().is_err());
    }

    #[test]
    fn values_round_trip_with_keys_as_hex() {
        let doc = AssignmentDoc {
            v: 1,
            epoch: 7,
            published_ms: 1_700_000_000_000,
            leader: "a".into(),
            cap: 2,
            members: vec!["a".into(), "b".into()],
            configs: vec![ConfigOwners {
                config: "c".into(),
                keys: vec![TargetKey(u64::MAX), TargetKey(1)],
                owners: vec![0, 1],
                since: vec![3, 7],
            }],
        };
        let gz = gzip_json(&doc);
        let mut json = String::new();
        MultiGzDecoder::new(&gz[..])
            .read_to_string(&mut json)
            .unwrap();
        assert!(json.contains("\"ffffffffffffffff\""), "{json}");
        assert_eq!(decode_json::<AssignmentDoc>("k", &gz).unwrap(), doc);
        assert_eq!(doc.counts(), vec![1, 1]);
        doc.validate().unwrap();
        let mut bad = doc.clone();
        bad.configs[0].owners[1] = 2;
        assert!(bad.validate().unwrap_err().contains("owner index 2"));
    }

    #[test]
    fn a_newer_format_is_refused_by_name() {
        let gz = gzip_json(&serde_json::json!({"v": 2, "epoch": 1}));
        let err = decode_json::<AssignmentDoc>("sharding/assignment", &gz).unwrap_err();
        assert_eq!(
            err.to_string(),
            "sharding/assignment: written by a newer agentctl (format version 2, this one reads 1)"
        );
        let err = decode_json::<AssignmentDoc>("k", b"nope").unwrap_err();
        assert!(err.to_string().starts_with("k: not gzip"), "{err}");
    }

    #[test]
    fn compressed_size_per_target() {
        // Kubernetes-like node_exporter targets (9 labels): the figure in the module docs.
        let n = 20_000;
        let targets = PublishedTargets {
            v: 1,
            config: "big".into(),
            jobs: vec![job(n, 1)],
        };
        let gz = gzip_json(&targets);
        let per = gz.len() as f64 / n as f64;
        println!(
            "SHARDING_KV targets={n} gzip_bytes={} bytes_per_target={per:.1}",
            gz.len()
        );
        // About 75,000 such targets fit in one 1 MiB value.
        assert!(per < 16.0, "{per}");

        // The assignment carries keys and owners only.
        let mut rng = TokenRng::with_seed(9);
        let doc = AssignmentDoc {
            configs: vec![ConfigOwners {
                config: "big".into(),
                keys: (0..n).map(|_| TargetKey(rng.next_u64())).collect(),
                owners: (0..n).map(|i| (i % 10) as u32).collect(),
                since: (0..n).map(|i| 1 + (i % 3) as u64).collect(),
            }],
            members: (0..10).map(|i| format!("agent-{i}")).collect(),
            ..AssignmentDoc::empty()
        };
        let gz = gzip_json(&doc);
        let per = gz.len() as f64 / n as f64;
        println!(
            "SHARDING_KV assignment targets={n} gzip_bytes={} bytes_per_target={per:.1}",
            gz.len()
        );
        assert!(per < 12.0, "{per}");
    }

    /// Writes with a small part size, so the chunked paths run on small values.
    async fn write_small<T: Serialize>(kv: &dyn KvStore, key: &str, v: &T, e: Expect) -> bool {
        write_encoded(
            kv,
            &Layout::default(),
            key,
            encode(&Layout::default(), v, 2048),
            e,
        )
        .await
        .unwrap()
    }

    fn targets(config: &str, n: usize, seed: u64) -> PublishedTargets {
        PublishedTargets {
            v: 1,
            config: config.into(),
            jobs: vec![job(n, seed)],
        }
    }

    #[tokio::test]
    async fn large_values_are_chunked_below_the_limit_and_read_back() {
        let kv = InMemoryStore::new();
        let big = targets("big", 1000, 1);
        let enc = encode(&Layout::default(), &big, 2048);
        assert!(enc.parts.len() >= 4, "{}", enc.parts.len());
        assert!(enc.parts.iter().all(|(_, p)| p.len() <= 2048));
        assert!(enc.head.len() < 200);
        assert!(encode(&Layout::default(), &big, MAX_VALUE).parts.is_empty());
        let key = L.targets_key("big");
        assert!(write_small(&kv, &key, &big, Expect::Any).await);
        let (back, _) = read::<PublishedTargets>(&kv, &L, &key)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(back, big);

        // Replacing it removes the old parts; a small value needs none.
        let small = targets("big", 3, 2);
        assert!(write_small(&kv, &key, &small, Expect::Any).await);
        assert!(kv.list(&L.chunks_prefix()).await.unwrap().is_empty());
        assert_eq!(
            read::<PublishedTargets>(&kv, &L, &key)
                .await
                .unwrap()
                .unwrap()
                .0,
            small
        );
    }

    #[tokio::test]
    async fn compare_and_swap_and_lost_races_leave_no_parts() {
        let kv = InMemoryStore::new();
        let big = targets("c", 1000, 3);
        assert!(write_small(&kv, &L.assignment_key(), &big, Expect::Revision(None)).await);
        let rev = kv.get(&L.assignment_key()).await.unwrap().unwrap().revision;
        let parts_before = kv.list(&L.chunks_prefix()).await.unwrap();
        assert!(!parts_before.is_empty());
        // A stale expectation loses and cleans up its own parts, keeping the winner's.
        let other = targets("c", 1000, 4);
        assert!(!write_small(&kv, &L.assignment_key(), &other, Expect::Revision(None)).await);
        assert_eq!(kv.list(&L.chunks_prefix()).await.unwrap(), parts_before);
        // Losing with the very same content keeps the parts the winner refers to.
        assert!(!write_small(&kv, &L.assignment_key(), &big, Expect::Revision(None)).await);
        assert_eq!(kv.list(&L.chunks_prefix()).await.unwrap(), parts_before);
        assert!(
            write_small(
                &kv,
                &L.assignment_key(),
                &other,
                Expect::Revision(Some(rev))
            )
            .await
        );
        let (back, _) = read::<PublishedTargets>(&kv, &L, &L.assignment_key())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(back, other);
        let parts_after = kv.list(&L.chunks_prefix()).await.unwrap();
        assert!(parts_after.iter().all(|p| !parts_before.contains(p)));
        assert!(delete(&kv, &L, &L.assignment_key()).await.unwrap());
        assert!(kv.list(L.prefix()).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn missing_parts_and_orphans() {
        let kv = InMemoryStore::new();
        let key = L.targets_key("c");
        write_small(&kv, &key, &targets("c", 1000, 5), Expect::Any).await;
        let head = kv.get(&key).await.unwrap().unwrap().value;
        let parts = kv.list(&L.chunks_prefix()).await.unwrap();
        kv.delete(&parts[1]).await.unwrap();
        let err = decode::<PublishedTargets>(&kv, &L, &key, &head)
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Changed { part: 1, .. }), "{err}");
        assert!(err.to_string().contains("read it again"), "{err}");

        // A writer that died after its parts: gc removes them and nothing else.
        for (k, v) in encode(&Layout::default(), &targets("d", 1000, 6), 2048).parts {
            kv.put(&k, v).await.unwrap();
        }
        let removed = gc_chunks(&kv, &L).await.unwrap();
        assert_eq!(removed.len(), 1);
        let left = kv.list(&L.chunks_prefix()).await.unwrap();
        assert_eq!(
            left.len(),
            parts.len() - 1,
            "c's remaining parts are referenced"
        );
    }
}
