//! Service discovery: turns a scrape config's `*_sd_configs` into target groups, and keeps them
//! current. Each provider (static, file, http, dns) runs as a task and sends its whole set of
//! groups when it changes; one combiner per scrape config publishes the union on a `watch`
//! channel, so the scrape side always sees a full snapshot and diffs it against its targets.

pub mod dns;
pub mod file;
pub mod http;

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

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
}

/// The current targets of one scrape config.
pub type Targets = watch::Receiver<Arc<Vec<TargetGroup>>>;

/// Starts the providers of `cfg`. `base_dir` resolves relative file paths. The returned
/// receiver holds the union of every provider's groups; it starts empty and is updated as
/// providers report. Providers stop when `shutdown` is cancelled.
pub fn start(
    cfg: &ScrapeConfig,
    base_dir: Option<&std::path::Path>,
    shutdown: CancellationToken,
) -> Result<Targets, Error> {
    start_with(cfg, base_dir, shutdown, dns::Nameserver::System)
}

/// [`start`] with dns_sd lookups sent to `nameserver` (tests use a local server).
pub(crate) fn start_with(
    cfg: &ScrapeConfig,
    base_dir: Option<&std::path::Path>,
    shutdown: CancellationToken,
    nameserver: dns::Nameserver,
) -> Result<Targets, Error> {
    if let Some(kind) = cfg.unsupported_sd_kinds.first() {
        return Err(Error::Unsupported {
            job: cfg.job_name.clone(),
            kind: kind.clone(),
        });
    }
    let providers = cfg.file_sd_configs.len()
        + cfg.http_sd_configs.len()
        + cfg.dns_sd_configs.len()
        + usize::from(!cfg.static_configs.is_empty());
    let (tx, rx) = mpsc::channel::<(usize, Vec<TargetGroup>)>(16);
    let mut slot = 0;
    let mut initial = vec![Vec::new(); providers];
    if !cfg.static_configs.is_empty() {
        initial[slot] = cfg
            .static_configs
            .iter()
            .enumerate()
            .map(|(i, s)| TargetGroup {
                source: i.to_string(),
                targets: s
                    .targets
                    .iter()
                    .map(|t| LabelSet::from([("__address__".to_owned(), t.clone())]))
                    .collect(),
                labels: s.labels.clone(),
            })
            .collect();
        slot += 1;
    }
    for f in &cfg.file_sd_configs {
        tokio::spawn(file::run(
            f.clone(),
            base_dir.map(|p| p.to_path_buf()),
            slot,
            tx.clone(),
            shutdown.clone(),
        ));
        slot += 1;
    }
    for h in &cfg.http_sd_configs {
        let provider = http::Provider::new(h, base_dir).map_err(|source| Error::Client {
            job: cfg.job_name.clone(),
            source,
        })?;
        tokio::spawn(provider.run(slot, tx.clone(), shutdown.clone()));
        slot += 1;
    }
    for d in &cfg.dns_sd_configs {
        let provider = dns::Provider::new(d, nameserver);
        tokio::spawn(provider.run(slot, tx.clone(), shutdown.clone()));
        slot += 1;
    }
    drop(tx);
    let flat: Vec<TargetGroup> = initial.iter().flatten().cloned().collect();
    let (out_tx, out_rx) = watch::channel(Arc::new(flat));
    tokio::spawn(combine(initial, rx, out_tx, shutdown));
    Ok(out_rx)
}

async fn combine(
    mut slots: Vec<Vec<TargetGroup>>,
    mut rx: mpsc::Receiver<(usize, Vec<TargetGroup>)>,
    out: watch::Sender<Arc<Vec<TargetGroup>>>,
    shutdown: CancellationToken,
) {
    loop {
        let (i, groups) = tokio::select! {
            _ = shutdown.cancelled() => return,
            msg = rx.recv() => match msg {
                Some(m) => m,
                None => return,
            },
        };
        if slots[i] == groups {
            continue;
        }
        slots[i] = groups;
        // Several providers may report at once; take what is queued before publishing.
        while let Ok((j, g)) = rx.try_recv() {
            slots[j] = g;
        }
        let flat: Vec<TargetGroup> = slots.iter().flatten().cloned().collect();
        if out.send(Arc::new(flat)).is_err() {
            return;
        }
    }
}
