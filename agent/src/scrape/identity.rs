//! A target's identity: what it is, independently of the labels attached to its series.
//!
//! The identity is the scrape job's name plus the scrape URL ([`Target::url`]), which is built
//! from exactly the target's scheme, address, metrics path and params after relabelling. Two
//! targets of a job with the same identity scrape the same endpoint; they differ only in their
//! other labels (the same address listed in two static groups with different labels, say).
//! Both are scraped, as Prometheus does, since their series differ; [`count_collisions`] counts
//! them so an operator can see it.

use std::collections::HashMap;
use std::fmt;

use super::target::Target;

/// A target's identity within a scrape job (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TargetIdentity<'a> {
    pub job: &'a str,
    pub url: &'a str,
}

impl<'a> TargetIdentity<'a> {
    pub fn new(job: &'a str, url: &'a str) -> Self {
        TargetIdentity { job, url }
    }
}

/// `job=<job> url=<url>`, with the job quoted when it has spaces or quotes.
impl fmt::Display for TargetIdentity<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.job.contains([' ', '"']) || self.job.is_empty() {
            write!(f, "job={:?} url={}", self.job, self.url)
        } else {
            write!(f, "job={} url={}", self.job, self.url)
        }
    }
}

impl Target {
    /// This target's identity in the scrape job `job` (the job's `job_name`, which the target's
    /// `job` label may no longer be after relabelling).
    pub fn identity<'a>(&'a self, job: &'a str) -> TargetIdentity<'a> {
        TargetIdentity::new(job, &self.url)
    }
}

/// The number of targets that share their identity with at least one other target: 0 when
/// every identity is unique; two targets with one identity count 2.
pub fn count_collisions<'a>(identities: impl IntoIterator<Item = TargetIdentity<'a>>) -> usize {
    let mut seen: HashMap<TargetIdentity<'a>, usize> = HashMap::new();
    for id in identities {
        *seen.entry(id).or_default() += 1;
    }
    seen.values().filter(|&&n| n > 1).sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scrape::target::populate_labels;

    fn targets(yaml: &str) -> (String, Vec<Target>) {
        let (_, cfg) =
            crate::config::load::parse_instance(yaml, &crate::config::GlobalConfig::default())
                .expect("valid");
        let sc = &cfg.scrape_configs[0];
        let mut out = Vec::new();
        for group in &sc.static_configs {
            let gl = crate::labels::Labels::from_pairs(
                group.labels.iter().map(|(k, v)| (k.as_str(), v.as_str())),
            );
            for t in &group.targets {
                let tl = crate::labels::Labels::from_pairs([("__address__", t.as_str())]);
                if let Some(t) = populate_labels(&gl, &tl, sc, false).expect("target") {
                    out.push(t);
                }
            }
        }
        (sc.job_name.clone(), out)
    }

    #[test]
    fn identity_is_job_and_url_after_relabelling() {
        let (job, ts) = targets(
            "scrape_configs:
  - job_name: j
    params: {module: [x]}
    static_configs:
      - targets: ['a:1']
        labels: {env: prod}
      - targets: ['a:1']
        labels: {env: dev}
      - targets: ['a:1', 'b:1']
    relabel_configs:
      - source_labels: [env]
        regex: dev
        target_label: __metrics_path__
        replacement: /dev
",
        );
        let ids: Vec<String> = ts.iter().map(|t| t.identity(&job).to_string()).collect();
        assert_eq!(
            ids,
            [
                "job=j url=http://a:1/metrics?module=x",
                "job=j url=http://a:1/dev?module=x",
                "job=j url=http://a:1/metrics?module=x",
                "job=j url=http://b:1/metrics?module=x",
            ]
        );
        // env=prod and the unlabelled a:1 share an identity: both are targets, and both count.
        assert_eq!(count_collisions(ts.iter().map(|t| t.identity(&job))), 2);
        assert_eq!(
            count_collisions(ts[1..2].iter().map(|t| t.identity(&job))),
            0
        );
        assert_eq!(ts[0].identity(&job), ts[2].identity(&job));
        assert_ne!(ts[0].identity(&job), ts[1].identity(&job));
    }

    #[test]
    fn display_quotes_odd_job_names() {
        assert_eq!(
            TargetIdentity::new("my job", "http://a/m").to_string(),
            "job=\"my job\" url=http://a/m"
        );
    }
}
