//! Service discovery: turns a scrape config's `*_sd_configs` into target groups, and keeps them
//! current. Each provider runs as a task. File, http and dns providers send their whole set of
//! groups when it changes; kubernetes and consul send only the groups that changed, by source
//! (a group without targets removes its source). One combiner per scrape config publishes the
//! union on a `watch` channel, so the scrape side always sees a full snapshot. Groups are
//! shared (`Arc`): a snapshot after one pod changed holds the same `Arc`s as the one before for
//! every other group, which is how the scrape side knows what it need not relabel again.
//!
//! A second `watch` channel says when every provider has reported once (its first discovery is
//! complete), so a reader that must not act on a half-discovered job (target sharding's
//! publisher) can wait for it. A provider reports: static targets at once; file, http and dns
//! with their first set (file and dns after their first attempt, even a failed one, as their
//! later sets; http after its first successful refresh); kubernetes and consul with an empty
//! batch of changes once their first discovery is complete (kubernetes: every watch has listed
//! and the resulting groups were sent; consul: the first catalog answer and every service it
//! watches answered). A provider that cannot reach its server has not reported.

pub mod consul;
pub mod dns;
pub mod file;
pub mod http;
pub mod kubernetes;

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::config::scrape::ScrapeConfig;

/// A set of labels of one target or group, as discovered (names are not yet relabelled).
pub type LabelSet = BTreeMap<String, String>;

/// Prometheus's `targetgroup.Group`: targets (each a label set with `__address__`) sharing
/// `labels`, identified by `source` so an update replaces the group with the same source.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TargetGroup {
    pub source: String,
    pub targets: Vec<LabelSet>,
    pub labels: LabelSet,
}

/// The JSON/YAML form of a target group (file_sd files, http_sd bodies).
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetGroupDoc {
    #[serde(default)]
    pub targets: Vec<String>,
    #[serde(default)]
    pub labels: Option<LabelSet>,
}

impl TargetGroupDoc {
    /// Validates label names and turns targets into `__address__` label sets.
    pub fn into_group(self, source: String, extra: (&str, &str)) -> Result<TargetGroup, String> {
        let mut labels = self.labels.unwrap_or_default();
        for name in labels.keys() {
            if !crate::config::url::is_valid_label_name(name) {
                return Err(format!("{name:?} is not a valid label name"));
            }
        }
        labels.insert(extra.0.to_owned(), extra.1.to_owned());
        let targets = self
            .targets
            .into_iter()
            .map(|t| LabelSet::from([("__address__".to_owned(), t)]))
            .collect();
        Ok(TargetGroup {
            source,
            targets,
            labels,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("job {job:?}: {kind} is not supported yet by this version of agentctl")]
    Unsupported { job: String, kind: String },
    #[error("job {job:?}: {source}")]
    Client {
        job: String,
        #[source]
        source: crate::httpclient::Error,
    },
    #[error("job {job:?}: kubernetes_sd_configs[{index}]: {source}")]
    Kubernetes {
        job: String,
        index: usize,
        #[source]
        source: kubernetes::client::Error,
    },
    #[error("job {job:?}: consul_sd_configs[{index}]: {source}")]
    Consul {
        job: String,
        index: usize,
        #[source]
        source: crate::httpclient::Error,
    },
}

/// The current targets of one scrape config.
pub type Targets = watch::Receiver<Arc<Vec<Arc<TargetGroup>>>>;

/// A scrape config's running discovery.
#[derive(Debug, Clone)]
pub struct Discovered {
    /// The union of every provider's groups; starts with the static targets and is updated as
    /// providers report.
    pub targets: Targets,
    /// Becomes `true` (and stays so) once every provider has reported once; `targets` holds
    /// what they reported by then. `true` at once for a job with static targets only.
    pub synced: watch::Receiver<bool>,
}

/// Starts the providers of `cfg`. `base_dir` resolves relative file paths. Providers stop
/// when `shutdown` is cancelled. Their tasks run in the current span (the scrape job's, see
/// agent/src/logging.rs).
pub fn start(
    cfg: &ScrapeConfig,
    base_dir: Option<&std::path::Path>,
    shutdown: CancellationToken,
) -> Result<Discovered, Error> {
    start_with(cfg, base_dir, shutdown, dns::Nameserver::System)
}

/// [`start`] with dns_sd lookups sent to `nameserver` (tests use a local server).
pub(crate) fn start_with(
    cfg: &ScrapeConfig,
    base_dir: Option<&std::path::Path>,
    shutdown: CancellationToken,
    nameserver: dns::Nameserver,
) -> Result<Discovered, Error> {
    if let Some(kind) = cfg.unsupported_sd_kinds.first() {
        return Err(Error::Unsupported {
            job: cfg.job_name.clone(),
            kind: kind.clone(),
        });
    }
    let providers = cfg.file_sd_configs.len()
        + cfg.http_sd_configs.len()
        + cfg.dns_sd_configs.len()
        + cfg.kubernetes_sd_configs.len()
        + cfg.consul_sd_configs.len()
        + usize::from(!cfg.static_configs.is_empty());
    // Providers are built before any is spawned, so an error starts nothing.
    let kube = cfg
        .kubernetes_sd_configs
        .iter()
        .enumerate()
        .map(|(index, k)| {
            kubernetes::Discovery::new(k, base_dir).map_err(|source| Error::Kubernetes {
                job: cfg.job_name.clone(),
                index,
                source,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let consuls = cfg
        .consul_sd_configs
        .iter()
        .enumerate()
        .map(|(index, c)| {
            consul::Discovery::new(c, base_dir).map_err(|source| Error::Consul {
                job: cfg.job_name.clone(),
                index,
                source,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let (tx, rx) = mpsc::channel::<(usize, Vec<TargetGroup>)>(16);
    let (ctx, crx) = mpsc::channel::<(usize, Vec<TargetGroup>)>(16);
    let mut slot = 0;
    let mut initial: Vec<Slot> = (0..providers).map(|_| Slot::List(Vec::new())).collect();
    let mut reported = vec![false; providers];
    if !cfg.static_configs.is_empty() {
        reported[slot] = true;
        initial[slot] = Slot::List(
            cfg.static_configs
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    Arc::new(TargetGroup {
                        source: i.to_string(),
                        targets: s
                            .targets
                            .iter()
                            .map(|t| LabelSet::from([("__address__".to_owned(), t.clone())]))
                            .collect(),
                        labels: s.labels.clone(),
                    })
                })
                .collect(),
        );
        slot += 1;
    }
    for f in &cfg.file_sd_configs {
        tokio::spawn(
            file::run(
                f.clone(),
                base_dir.map(|p| p.to_path_buf()),
                slot,
                tx.clone(),
                shutdown.clone(),
            )
            .in_current_span(),
        );
        slot += 1;
    }
    for h in &cfg.http_sd_configs {
        let provider = http::Provider::new(h, base_dir).map_err(|source| Error::Client {
            job: cfg.job_name.clone(),
            source,
        })?;
        tokio::spawn(
            provider
                .run(slot, tx.clone(), shutdown.clone())
                .in_current_span(),
        );
        slot += 1;
    }
    for d in &cfg.dns_sd_configs {
        let provider = dns::Provider::new(d, nameserver);
        tokio::spawn(
            provider
                .run(slot, tx.clone(), shutdown.clone())
                .in_current_span(),
        );
        slot += 1;
    }
    for k in kube {
        initial[slot] = Slot::Map(BTreeMap::new());
        let s = slot;
        tokio::spawn(
            k.run(ctx.clone(), move |g| (s, g), shutdown.clone())
                .in_current_span(),
        );
        slot += 1;
    }
    for c in consuls {
        initial[slot] = Slot::Map(BTreeMap::new());
        let s = slot;
        tokio::spawn(
            c.run(ctx.clone(), move |g| (s, g), shutdown.clone())
                .in_current_span(),
        );
        slot += 1;
    }
    drop(tx);
    drop(ctx);
    let (out_tx, out_rx) = watch::channel(Arc::new(flatten(&initial)));
    let (synced_tx, synced_rx) = watch::channel(reported.iter().all(|r| *r));
    let out = Outputs {
        targets: out_tx,
        synced: synced_tx,
        reported,
    };
    tokio::spawn(combine(initial, rx, crx, out, shutdown).in_current_span());
    Ok(Discovered {
        targets: out_rx,
        synced: synced_rx,
    })
}

/// One provider's current groups.
enum Slot {
    /// The whole set, as last sent (file, http, dns, static).
    List(Vec<Arc<TargetGroup>>),
    /// By source, updated by changed groups (kubernetes, consul).
    Map(BTreeMap<String, Arc<TargetGroup>>),
}

impl Slot {
    /// Replaces the whole set; returns whether anything changed. Groups equal to the one at
    /// the same position keep their `Arc`.
    fn replace(&mut self, groups: Vec<TargetGroup>) -> bool {
        let Slot::List(old) = self else {
            return false;
        };
        if old.len() == groups.len() && old.iter().zip(&groups).all(|(a, b)| **a == *b) {
            return false;
        }
        let new = groups
            .into_iter()
            .enumerate()
            .map(|(i, g)| match old.get(i) {
                Some(a) if **a == g => a.clone(),
                _ => Arc::new(g),
            })
            .collect();
        *old = new;
        true
    }

    /// Applies changed groups; a group without targets removes its source.
    fn update(&mut self, groups: Vec<TargetGroup>) -> bool {
        let Slot::Map(map) = self else {
            return false;
        };
        let mut changed = false;
        for g in groups {
            if g.targets.is_empty() {
                changed |= map.remove(&g.source).is_some();
                continue;
            }
            match map.get(&g.source) {
                Some(old) if **old == g => {}
                _ => {
                    map.insert(g.source.clone(), Arc::new(g));
                    changed = true;
                }
            }
        }
        changed
    }
}

fn flatten(slots: &[Slot]) -> Vec<Arc<TargetGroup>> {
    let mut out = Vec::new();
    for s in slots {
        match s {
            Slot::List(v) => out.extend(v.iter().cloned()),
            Slot::Map(m) => out.extend(m.values().cloned()),
        }
    }
    out
}

/// What the combiner publishes, and which providers have reported.
struct Outputs {
    targets: watch::Sender<Arc<Vec<Arc<TargetGroup>>>>,
    synced: watch::Sender<bool>,
    reported: Vec<bool>,
}

impl Outputs {
    /// A whole set from a file, http or dns provider: its first one is its report.
    fn whole(&mut self, slots: &mut [Slot], (i, groups): (usize, Vec<TargetGroup>)) -> bool {
        self.reported[i] = true;
        slots[i].replace(groups)
    }

    /// Changes from a kubernetes or consul provider: an empty batch is its report.
    fn changes(&mut self, slots: &mut [Slot], (i, groups): (usize, Vec<TargetGroup>)) -> bool {
        if groups.is_empty() {
            self.reported[i] = true;
        }
        slots[i].update(groups)
    }
}

async fn combine(
    mut slots: Vec<Slot>,
    mut whole: mpsc::Receiver<(usize, Vec<TargetGroup>)>,
    mut changes: mpsc::Receiver<(usize, Vec<TargetGroup>)>,
    mut out: Outputs,
    shutdown: CancellationToken,
) {
    let (mut whole_open, mut changes_open) = (true, true);
    while whole_open || changes_open {
        let changed = tokio::select! {
            _ = shutdown.cancelled() => return,
            msg = whole.recv(), if whole_open => match msg {
                Some(m) => out.whole(&mut slots, m),
                None => { whole_open = false; false }
            },
            msg = changes.recv(), if changes_open => match msg {
                Some(m) => out.changes(&mut slots, m),
                None => { changes_open = false; false }
            },
        };
        // Several providers may report at once; take what is queued before publishing.
        let mut more = false;
        while let Ok(m) = whole.try_recv() {
            more |= out.whole(&mut slots, m);
        }
        while let Ok(m) = changes.try_recv() {
            more |= out.changes(&mut slots, m);
        }
        if (changed || more) && out.targets.send(Arc::new(flatten(&slots))).is_err() {
            return;
        }
        // After the snapshot it covers: a reader that sees `true` reads a complete one.
        if !*out.synced.borrow() && out.reported.iter().all(|r| *r) {
            out.synced.send_replace(true);
        }
    }
}
