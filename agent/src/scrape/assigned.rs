//! Targets assigned to this agent (target sharding), as a scrape job takes them instead of
//! running discovery.
//!
//! In `scraping_service.sharding: targets` another agent discovers a config's targets and an
//! assignment gives each to one agent (see `agent/src/cluster/mod.rs`). The scrape manager of
//! an instance then asks an [`AssignedSource`] for each job's targets: a `watch` of
//! [`AssignedJob`], whose targets are diffed by key as discovered ones are. Each target comes
//! with a [`Mode`]: a loop that **holds** scrapes without appending them (the target is being
//! handed over to this agent and another agent still writes it), or **writes**. A key in
//! [`AssignedJob::release`] is handed over to another agent: its loop stops without staleness
//! markers (the series go on there), the instance's remote_write delivers what it appended,
//! and [`LoopEvent::Released`] reports the scrape time of its last appended scrape.

use std::sync::Arc;

use tokio::sync::watch;

use super::target::Target;

/// Whether a loop appends its scrapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Scrape at the target's phase and keep the last few results (body and scrape time),
    /// appending nothing.
    Hold,
    /// Append the held scrapes whose scrape time is later than `after_ms` (all of them when
    /// `None`), then append every scrape.
    Write { after_ms: Option<i64> },
}

/// One assigned target.
#[derive(Debug, Clone, PartialEq)]
pub struct AssignedTarget {
    /// Its key in the assignment (stable across agents).
    pub key: u64,
    pub target: Arc<Target>,
    pub mode: Mode,
}

/// A job's assigned targets.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AssignedJob {
    pub targets: Vec<AssignedTarget>,
    /// Keys being handed over to another agent (see the module docs).
    pub release: Vec<u64>,
    /// Fails every scrape of the job without contacting the targets (`target_limit`, judged
    /// by the agent that sees the whole job).
    pub forced_error: Option<String>,
}

/// What the loops of assigned targets report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoopEvent {
    /// A holding loop's first successful scrape: this agent can reach the target.
    Scraped { key: u64 },
    /// A released loop stopped and what it appended was delivered (or refused for good);
    /// `last_ms` is the scrape time of its last appended scrape.
    Released { key: u64, last_ms: Option<i64> },
}

/// Resolves once what an instance appended so far has been delivered (or refused for good) by
/// every remote_write queue of the instance.
pub type Barrier =
    Arc<dyn Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> + Send + Sync>;

/// Where an instance's scrape jobs get their targets in target sharding mode.
pub trait AssignedSource: Send + Sync + std::fmt::Debug {
    /// The assigned targets of job `job` of instance `instance`.
    fn subscribe(&self, instance: &str, job: &str) -> watch::Receiver<Arc<AssignedJob>>;

    /// A loop's report.
    fn event(&self, event: LoopEvent);
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Mutex;
    use std::time::Duration;

    use super::*;
    use crate::clock::Clock;
    use crate::labels::Labels;
    use crate::scrape::appender::{is_stale_nan, MemoryStorage};
    use crate::scrape::manager::ScrapeManager;
    use crate::scrape::target::{from_full_labels, populate_labels};

    /// Records what the loops report; one watch per job.
    #[derive(Debug, Default)]
    struct FakeSource {
        jobs: Mutex<HashMap<String, watch::Sender<Arc<AssignedJob>>>>,
        events: Mutex<Vec<LoopEvent>>,
    }

    impl AssignedSource for FakeSource {
        fn subscribe(&self, _instance: &str, job: &str) -> watch::Receiver<Arc<AssignedJob>> {
            self.jobs
                .lock()
                .unwrap()
                .entry(job.to_owned())
                .or_insert_with(|| watch::channel(Arc::new(AssignedJob::default())).0)
                .subscribe()
        }

        fn event(&self, event: LoopEvent) {
            self.events.lock().unwrap().push(event);
        }
    }

    impl FakeSource {
        fn set(&self, job: &str, value: AssignedJob) {
            self.jobs.lock().unwrap()[job].send_replace(Arc::new(value));
        }

        fn events(&self) -> Vec<LoopEvent> {
            self.events.lock().unwrap().clone()
        }
    }

    async fn wait(what: &str, mut f: impl FnMut() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !f() {
            assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// A target answering `c <n>` with n counting its requests.
    async fn counting_target() -> (String, Arc<AtomicU64>) {
        let hits = Arc::new(AtomicU64::new(0));
        let h = hits.clone();
        let app = axum::Router::new().route(
            "/metrics",
            axum::routing::get(move || async move {
                format!("c {}\n", h.fetch_add(1, Ordering::SeqCst) + 1)
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        (addr.to_string(), hits)
    }

    #[tokio::test]
    async fn hold_then_write_after_the_cutoff_then_release_without_staleness_markers() {
        let (addr, hits) = counting_target().await;
        let yaml = format!(
            "scrape_configs:\n  - job_name: j\n    scrape_interval: 200ms\n    scrape_timeout: 100ms\n    static_configs: [{{targets: ['{addr}']}}]\n"
        );
        let (_, cfg) =
            crate::config::load::parse_instance(&yaml, &crate::config::GlobalConfig::default())
                .expect("valid");
        let sc = cfg.scrape_configs[0].clone();
        let t = populate_labels(
            &Labels::from_pairs::<_, &str, &str>([]),
            &Labels::from_pairs([("__address__", addr.as_str())]),
            &sc,
            false,
        )
        .unwrap()
        .unwrap();
        let target = Arc::new(from_full_labels(&t.full_labels, &sc).unwrap());
        let storage = Arc::new(MemoryStorage::new());
        let source = Arc::new(FakeSource::default());
        let barriers = Arc::new(AtomicU64::new(0));
        let b = barriers.clone();
        let barrier: Barrier = Arc::new(move || {
            b.fetch_add(1, Ordering::SeqCst);
            Box::pin(async {})
        });
        let m = ScrapeManager::new("i", storage.clone(), None)
            .with_clock(Clock::system())
            .with_assigned(source.clone(), barrier);
        m.apply(std::slice::from_ref(&sc)).await.unwrap();
        let held = |mode| AssignedJob {
            targets: vec![AssignedTarget {
                key: 1,
                target: target.clone(),
                mode,
            }],
            ..AssignedJob::default()
        };
        source.set("j", held(Mode::Hold));

        // Held: scraped (reported once), nothing appended.
        wait("first held scrape", || !source.events().is_empty()).await;
        assert_eq!(source.events(), vec![LoopEvent::Scraped { key: 1 }]);
        wait("two held scrapes", || hits.load(Ordering::SeqCst) >= 2).await;
        assert!(storage.samples().is_empty(), "a held scrape was appended");
        let cutoff = Clock::system().unix_millis();
        wait("a scrape after the cutoff", || {
            hits.load(Ordering::SeqCst) >= 4
        })
        .await;
        assert!(storage.samples().is_empty());
        assert_eq!(source.events().len(), 1, "scraped reported once");

        // Write: the held scrapes after the cutoff are appended at their own times.
        source.set(
            "j",
            held(Mode::Write {
                after_ms: Some(cutoff),
            }),
        );
        wait("held scrapes written", || {
            !storage.samples_named("c").is_empty()
        })
        .await;
        let c = storage.samples_named("c");
        assert!(c.iter().all(|(_, t, _)| *t > cutoff), "{c:?}");
        assert!(
            c.iter().all(|(_, _, v)| *v >= 3.0),
            "scrapes 1-2 were before the cutoff: {c:?}"
        );
        let n = c.len();
        wait("writing as usual", || {
            storage.samples_named("c").len() > n + 1
        })
        .await;

        // Release: stopped without staleness markers, reported with its last appended scrape.
        source.set(
            "j",
            AssignedJob {
                release: vec![1],
                ..AssignedJob::default()
            },
        );
        wait("released", || source.events().len() == 2).await;
        let last = storage.samples_named("up").iter().map(|(_, t, _)| *t).max();
        assert_eq!(
            source.events()[1],
            LoopEvent::Released {
                key: 1,
                last_ms: last
            }
        );
        assert_eq!(barriers.load(Ordering::SeqCst), 1);
        assert!(storage.samples().iter().all(|(_, _, v)| !is_stale_nan(*v)));

        // A target that is simply gone gets its staleness markers.
        source.set(
            "j",
            AssignedJob {
                targets: vec![AssignedTarget {
                    key: 2,
                    target: target.clone(),
                    mode: Mode::Write { after_ms: None },
                }],
                ..AssignedJob::default()
            },
        );
        let before = storage.samples_named("up").len();
        wait("key 2 writes", || {
            storage.samples_named("up").len() > before
        })
        .await;
        source.set("j", AssignedJob::default());
        wait("staleness markers", || {
            storage.samples().iter().any(|(_, _, v)| is_stale_nan(*v))
        })
        .await;
        m.stop(false).await;
    }

    #[test]
    fn a_target_rebuilt_from_its_full_labels_is_the_same_target() {
        let yaml = "scrape_configs:
  - job_name: j
    scheme: https
    params: {module: [http_2xx]}
    static_configs: [{targets: ['a', 'b:9'], labels: {env: prod, __meta_x: y}}]
    relabel_configs:
      - {source_labels: [env], target_label: stage}
      - {source_labels: [__address__], regex: 'b:9', target_label: __param_target, replacement: 'x y'}
";
        let (_, cfg) =
            crate::config::load::parse_instance(yaml, &crate::config::GlobalConfig::default())
                .expect("valid");
        let sc = &cfg.scrape_configs[0];
        let group = Labels::from_pairs(
            sc.static_configs[0]
                .labels
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str())),
        );
        for addr in ["a", "b:9"] {
            let t = populate_labels(
                &group,
                &Labels::from_pairs([("__address__", addr)]),
                sc,
                false,
            )
            .expect("valid")
            .expect("kept");
            let again = from_full_labels(&t.full_labels, sc).expect("valid");
            assert_eq!(again.labels, t.labels);
            assert_eq!(again.full_labels, t.full_labels);
            assert_eq!(again.url, t.url);
            assert_eq!(again.interval, t.interval);
            assert_eq!(again.timeout, t.timeout);
            assert_eq!(again.discovered_labels, t.full_labels);
        }
    }
}
