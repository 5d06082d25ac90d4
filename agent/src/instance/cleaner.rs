//! The WAL cleaner: removes the folders of instances that left this agent
//! (`wal_cleanup_age`, `wal_cleanup_period`; docs/compat.md, *WAL cleaner*).
//!
//! A config that moves to another agent, or is deleted, leaves its folder
//! `<wal_directory>/<dir_name(config)>/` (with `wal/` and maybe `remote_write/`) behind: the
//! WAL is kept on purpose, so a config that comes back soon resumes sending what it had not
//! sent. Every `wal_cleanup_period` the cleaner looks at the folders under `wal_directory` and
//! removes those that
//!
//! 1. are instance folders: directories holding a `wal/` directory (anything else, such as
//!    the embedded KV store's `kv.redb` file or a folder someone put there, is never touched);
//! 2. belong to no instance this agent runs or retries ([`InstanceManager::instance_names`], compared
//!    by [`dir_name`]);
//! 3. were last modified more than `wal_cleanup_age` ago: the newest modification time of any
//!    file in the folder (WAL segments, checkpoints, remote_write progress); the `wal/`
//!    directory's own time when it holds no file.
//!
//! The old agent looked at the last segment's time only; the newest of all files is at least
//! as recent, so this cleaner never removes a folder the old one would have kept.
//!
//! The removal itself runs while the instance manager holds off starts
//! ([`InstanceManager::unless_running`]), so a config assigned back to this agent at that
//! moment starts on a fresh WAL instead of on a half-removed one.

use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use super::dir_name;
use super::manager::InstanceManager;

/// The old agent's default `wal_cleanup_age`, also used when the age is zero (the old agent
/// replaced a non-positive age by the default rather than removing every idle folder).
pub const DEFAULT_CLEANUP_AGE: Duration = Duration::from_secs(12 * 3600);

/// A folder the cleaner could not inspect or remove.
#[derive(Debug, thiserror::Error)]
pub enum CleanerError {
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("removing abandoned WAL folder {path}: {source}")]
    Remove { path: PathBuf, source: io::Error },
}

impl CleanerError {
    pub fn path(&self) -> &Path {
        match self {
            CleanerError::Read { path, .. } | CleanerError::Remove { path, .. } => path,
        }
    }
}

/// The cleaner's metrics, with the old agent's names (`agent_prometheus_cleaner_*`).
#[derive(Clone)]
pub struct CleanerMetrics {
    storage_errors: Family<Vec<(String, String)>, Counter>,
    managed: Gauge,
    abandoned: Gauge,
    removed: Counter,
    remove_errors: Counter,
    duration: Histogram,
}

impl std::fmt::Debug for CleanerMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CleanerMetrics")
    }
}

impl CleanerMetrics {
    /// Registers the families in `registry` (counter names without `_total`:
    /// prometheus-client appends it).
    pub fn register(registry: &mut Registry) -> Self {
        let m = CleanerMetrics {
            storage_errors: Family::default(),
            managed: Gauge::default(),
            abandoned: Gauge::default(),
            removed: Counter::default(),
            remove_errors: Counter::default(),
            duration: Histogram::new(exponential_buckets(0.001, 4.0, 10)),
        };
        let p = "agent_prometheus_cleaner_";
        registry.register(
            format!("{p}storage_error"),
            "Errors encountered discovering local storage paths",
            m.storage_errors.clone(),
        );
        registry.register(
            format!("{p}managed_storage"),
            "Number of storage directories associated with managed instances",
            m.managed.clone(),
        );
        registry.register(
            format!("{p}abandoned_storage"),
            "Number of storage directories not associated with any managed instance",
            m.abandoned.clone(),
        );
        registry.register(
            format!("{p}success"),
            "Number of successfully removed abandoned WALs",
            m.removed.clone(),
        );
        registry.register(
            format!("{p}errors"),
            "Number of errors removing abandoned WALs",
            m.remove_errors.clone(),
        );
        registry.register(
            format!("{p}cleanup_seconds"),
            "Time spent performing each periodic WAL cleanup",
            m.duration.clone(),
        );
        m
    }

    fn storage_error(&self, path: &Path) {
        self.storage_errors
            .get_or_create(&vec![("storage".to_owned(), path.display().to_string())])
            .inc();
    }
}

/// An instance folder under `wal_directory`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceDir {
    /// The folder name (a [`dir_name`]).
    pub name: String,
    pub path: PathBuf,
    /// Time since the newest modification inside it (zero when that is in the future).
    pub idle: Duration,
}

/// What one scan found.
#[derive(Debug, Default)]
pub struct Scan {
    /// Instance folders of running instances.
    pub managed: Vec<InstanceDir>,
    /// Instance folders of no running instance, idle longer than the age: to remove.
    pub abandoned: Vec<InstanceDir>,
    /// Instance folders of no running instance, modified recently: kept for now.
    pub recent: Vec<InstanceDir>,
    pub errors: Vec<CleanerError>,
}

/// What one cleanup did.
#[derive(Debug, Default)]
pub struct Cleanup {
    pub removed: Vec<InstanceDir>,
    /// Abandoned folders left alone because their instance started meanwhile.
    pub started_meanwhile: Vec<InstanceDir>,
    pub errors: Vec<CleanerError>,
}

/// Sorts the folders of `wal_directory` (blocking file system reads). `running` holds the
/// [`dir_name`]s of the instances this agent runs. A missing `wal_directory` is an empty scan:
/// an agent that never ran an instance has none yet.
pub fn scan(
    wal_directory: &Path,
    running: &BTreeSet<String>,
    age: Duration,
    now: SystemTime,
) -> Scan {
    let mut out = Scan::default();
    let entries = match std::fs::read_dir(wal_directory) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return out,
        Err(source) => {
            out.errors.push(CleanerError::Read {
                path: wal_directory.to_owned(),
                source,
            });
            return out;
        }
    };
    for ent in entries {
        let ent = match ent {
            Ok(e) => e,
            Err(source) => {
                out.errors.push(CleanerError::Read {
                    path: wal_directory.to_owned(),
                    source,
                });
                continue;
            }
        };
        let path = ent.path();
        // file_type does not follow symlinks: a link to a folder elsewhere is not ours.
        let is_dir = ent.file_type().map(|t| t.is_dir()).unwrap_or(false);
        if !is_dir {
            continue;
        }
        let wal = path.join("wal");
        if !std::fs::symlink_metadata(&wal).is_ok_and(|m| m.is_dir()) {
            continue;
        }
        // A folder name that is not UTF-8 was not made by dir_name: not an instance folder.
        let Some(name) = ent.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        let newest = match newest_mtime(&path) {
            Ok(Some(t)) => t,
            Ok(None) => match std::fs::symlink_metadata(&wal).and_then(|m| m.modified()) {
                Ok(t) => t,
                Err(source) => {
                    out.errors.push(CleanerError::Read { path: wal, source });
                    continue;
                }
            },
            Err(e) => {
                out.errors.push(e);
                continue;
            }
        };
        let idle = now.duration_since(newest).unwrap_or(Duration::ZERO);
        let dir = InstanceDir { name, path, idle };
        if running.contains(&dir.name) {
            out.managed.push(dir);
        } else if idle > age {
            out.abandoned.push(dir);
        } else {
            out.recent.push(dir);
        }
    }
    for v in [&mut out.managed, &mut out.abandoned, &mut out.recent] {
        v.sort_by(|a, b| a.name.cmp(&b.name));
    }
    out
}

/// The newest modification time of the regular files under `dir` (recursively, symlinks not
/// followed), `None` when there is no file.
fn newest_mtime(dir: &Path) -> Result<Option<SystemTime>, CleanerError> {
    let read = |path: &Path, source| CleanerError::Read {
        path: path.to_owned(),
        source,
    };
    let mut newest: Option<SystemTime> = None;
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for ent in std::fs::read_dir(&d).map_err(|e| read(&d, e))? {
            let ent = ent.map_err(|e| read(&d, e))?;
            let path = ent.path();
            let meta = std::fs::symlink_metadata(&path).map_err(|e| read(&path, e))?;
            if meta.is_dir() {
                stack.push(path);
            } else if meta.is_file() {
                let t = meta.modified().map_err(|e| read(&path, e))?;
                newest = Some(newest.map_or(t, |n| n.max(t)));
            }
        }
    }
    Ok(newest)
}

/// One cleanup pass: scans `wal_directory`, then removes each abandoned folder unless its
/// instance started meanwhile. Logs each removal (folder and idle time) and each error (path).
pub async fn clean_once(
    manager: &InstanceManager,
    wal_directory: &Path,
    age: Duration,
    metrics: &CleanerMetrics,
) -> Cleanup {
    let started = std::time::Instant::now();
    let running: BTreeSet<String> = manager
        .instance_names()
        .iter()
        .map(|n| dir_name(n))
        .collect();
    let dir = wal_directory.to_owned();
    let scanned = {
        let now = manager.shared().clock.now();
        tokio::task::spawn_blocking(move || scan(&dir, &running, age, now)).await
    };
    let s = match scanned {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(wal_directory = %wal_directory.display(), error = %e, "WAL cleaner scan task failed");
            return Cleanup::default();
        }
    };
    metrics.managed.set(s.managed.len() as i64);
    metrics.abandoned.set(s.abandoned.len() as i64);
    let mut out = Cleanup {
        errors: s.errors,
        ..Default::default()
    };
    for e in &out.errors {
        metrics.storage_error(e.path());
        tracing::warn!(path = %e.path().display(), error = %e, "WAL cleaner could not inspect a folder; it is kept");
    }
    for d in &s.recent {
        tracing::debug!(folder = %d.path.display(), idle = ?d.idle, "WAL of no running instance kept until wal_cleanup_age");
    }
    for d in s.abandoned {
        let path = d.path.clone();
        let removed = manager
            .unless_running(&d.name, || async move {
                tokio::task::spawn_blocking(move || std::fs::remove_dir_all(&path)).await
            })
            .await;
        match removed {
            None => {
                tracing::info!(folder = %d.path.display(), "abandoned WAL kept: its instance started");
                out.started_meanwhile.push(d);
            }
            Some(Ok(Ok(()))) => {
                metrics.removed.inc();
                tracing::info!(folder = %d.path.display(), idle = ?d.idle, age = ?age, "abandoned WAL removed");
                out.removed.push(d);
            }
            Some(Ok(Err(source))) => {
                metrics.remove_errors.inc();
                let e = CleanerError::Remove {
                    path: d.path.clone(),
                    source,
                };
                tracing::error!(path = %d.path.display(), error = %e, "abandoned WAL could not be removed");
                out.errors.push(e);
            }
            Some(Err(join)) => {
                metrics.remove_errors.inc();
                let e = CleanerError::Remove {
                    path: d.path.clone(),
                    source: io::Error::other(join.to_string()),
                };
                tracing::error!(path = %d.path.display(), error = %e, "abandoned WAL could not be removed");
                out.errors.push(e);
            }
        }
    }
    metrics.duration.observe(started.elapsed().as_secs_f64());
    out
}

/// Runs the cleaner until `shutdown`: a pass every `period` (the first one `period` after the
/// start, as in the old agent), removing folders idle longer than `age`. A zero `period`
/// disables the cleaner; a zero `age` means [`DEFAULT_CLEANUP_AGE`]. The WAL directory and the
/// metrics are the manager's (`Shared::wal_directory`, `Shared::cleaner_metrics`).
pub async fn run(
    manager: Arc<InstanceManager>,
    age: Duration,
    period: Duration,
    shutdown: CancellationToken,
) {
    if period.is_zero() {
        tracing::info!("WAL cleaner disabled (wal_cleanup_period is 0)");
        return;
    }
    let age = if age.is_zero() {
        DEFAULT_CLEANUP_AGE
    } else {
        age
    };
    let wal_directory = manager.shared().wal_directory.clone();
    let metrics = manager.shared().cleaner_metrics.clone();
    tracing::info!(wal_directory = %wal_directory.display(), age = ?age, period = ?period, "WAL cleaner started");
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let done = clean_once(&manager, &wal_directory, age, &metrics).await;
        tracing::debug!(
            removed = done.removed.len(),
            errors = done.errors.len(),
            "WAL cleanup pass done"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Clock;
    use crate::config::GlobalConfig;
    use crate::instance::Shared;
    use std::fs;

    const HOUR: Duration = Duration::from_secs(3600);
    const AGE: Duration = Duration::from_secs(12 * 3600);

    /// Sets the modification time of every file under `dir` to `ago` before now.
    fn age_files(dir: &Path, ago: Duration) {
        let t = Clock::system().now() - ago;
        let mut stack = vec![dir.to_owned()];
        while let Some(d) = stack.pop() {
            for ent in fs::read_dir(&d).expect("read_dir") {
                let p = ent.expect("entry").path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    fs::File::options()
                        .write(true)
                        .open(&p)
                        .expect("open")
                        .set_modified(t)
                        .expect("set_modified");
                }
            }
        }
    }

    /// An instance folder as an instance leaves it: a segment and a remote_write progress file.
    fn instance_folder(root: &Path, name: &str, ago: Duration) -> PathBuf {
        let dir = root.join(name);
        fs::create_dir_all(dir.join("wal")).expect("mkdir");
        fs::create_dir_all(dir.join("remote_write")).expect("mkdir");
        fs::write(dir.join("wal").join("00000000"), b"segment").expect("write");
        fs::write(dir.join("remote_write").join("default"), b"1000").expect("write");
        age_files(&dir, ago);
        dir
    }

    fn names(v: &[InstanceDir]) -> Vec<&str> {
        v.iter().map(|d| d.name.as_str()).collect()
    }

    #[test]
    fn scan_sorts_folders() {
        let root = tempfile::tempdir().expect("tempdir");
        let r = root.path();
        // Not instance folders, however old.
        fs::write(r.join("kv.redb"), b"db").expect("write");
        fs::create_dir_all(r.join("notes").join("sub")).expect("mkdir");
        fs::write(r.join("notes").join("sub").join("f"), b"x").expect("write");
        age_files(r, 100 * HOUR);
        instance_folder(r, "old", 13 * HOUR);
        instance_folder(r, "team--a", 20 * HOUR);
        instance_folder(r, "running", 48 * HOUR);
        instance_folder(r, "recent", HOUR);
        // Old WAL, but a newer remote_write progress file: not idle.
        let mixed = instance_folder(r, "mixed", 13 * HOUR);
        fs::write(mixed.join("remote_write").join("default"), b"2000").expect("write");
        // An empty WAL folder takes the wal/ directory's own (fresh) time.
        fs::create_dir_all(r.join("empty").join("wal")).expect("mkdir");

        let running = BTreeSet::from(["running".to_owned()]);
        let s = scan(r, &running, AGE, Clock::system().now());
        assert!(s.errors.is_empty(), "{:?}", s.errors);
        assert_eq!(names(&s.abandoned), ["old", "team--a"]);
        assert_eq!(names(&s.managed), ["running"]);
        assert_eq!(names(&s.recent), ["empty", "mixed", "recent"]);
        let old = &s.abandoned[0];
        assert!(
            old.idle >= 13 * HOUR && old.idle < 14 * HOUR,
            "{:?}",
            old.idle
        );
    }

    #[test]
    fn scan_of_a_missing_directory_is_empty() {
        let root = tempfile::tempdir().expect("tempdir");
        let s = scan(
            &root.path().join("absent"),
            &BTreeSet::new(),
            AGE,
            Clock::system().now(),
        );
        assert!(s.errors.is_empty() && s.abandoned.is_empty() && s.managed.is_empty());
    }

    #[test]
    fn a_file_modified_in_the_future_is_not_idle() {
        let root = tempfile::tempdir().expect("tempdir");
        let dir = instance_folder(root.path(), "skewed", Duration::ZERO);
        fs::File::options()
            .write(true)
            .open(dir.join("wal").join("00000000"))
            .expect("open")
            .set_modified(Clock::system().now() + HOUR)
            .expect("set_modified");
        let s = scan(root.path(), &BTreeSet::new(), AGE, Clock::system().now());
        assert_eq!(names(&s.recent), ["skewed"]);
        assert_eq!(s.recent[0].idle, Duration::ZERO);
    }

    fn instance_config(name: &str) -> crate::config::InstanceConfig {
        crate::config::load::parse_instance_named("{}", Some(name), &GlobalConfig::default())
            .expect("config")
            .1
    }

    /// With a real instance manager: the running instance's folder is kept even when its files
    /// are old; the abandoned one is removed; recent, non-instance folders and kv.redb stay.
    #[tokio::test]
    async fn clean_once_with_a_running_instance() {
        let root = tempfile::tempdir().expect("tempdir");
        let r = root.path();
        let mut registry = Registry::default();
        let shared = Shared::new(r, "agent-1", &mut registry, Clock::system());
        let manager = InstanceManager::new(
            shared,
            Duration::from_secs(5),
            crate::config::agent::InstanceMode::Distinct,
        );
        manager.apply(instance_config("team/live")).await.unwrap();
        assert_eq!(manager.names(), ["team/live"]);
        // The instance starts in the background.
        manager.settled().await;
        let live = r.join("team--live");
        assert!(live.join("wal").is_dir());
        age_files(&live, 30 * HOUR);

        let gone = instance_folder(r, "team--gone", 13 * HOUR);
        let recent = instance_folder(r, "recent", HOUR);
        fs::write(r.join("kv.redb"), b"db").expect("write");
        fs::create_dir_all(r.join("other")).expect("mkdir");
        age_files(&r.join("other"), 100 * HOUR);
        fs::File::options()
            .write(true)
            .open(r.join("kv.redb"))
            .expect("open")
            .set_modified(Clock::system().now() - 100 * HOUR)
            .expect("set_modified");

        let metrics = manager.shared().cleaner_metrics.clone();
        let done = clean_once(&manager, r, AGE, &metrics).await;
        assert!(done.errors.is_empty(), "{:?}", done.errors);
        assert_eq!(names(&done.removed), ["team--gone"]);
        assert!(!gone.exists());
        assert!(live.join("wal").is_dir());
        assert!(recent.join("wal").is_dir());
        assert!(r.join("kv.redb").is_file());
        assert!(r.join("other").is_dir());
        assert_eq!(metrics.removed.get(), 1);
        assert_eq!(metrics.managed.get(), 1);

        // Once the instance stops, its old folder is abandoned too.
        manager.stop_all(false).await;
        age_files(&live, 30 * HOUR);
        let done = clean_once(&manager, r, AGE, &metrics).await;
        assert_eq!(names(&done.removed), ["team--live"]);
        assert!(!live.exists());
        assert!(recent.exists());
    }

    /// `run` with a short period removes an abandoned folder and stops on shutdown; a zero
    /// period returns at once.
    #[tokio::test]
    async fn run_cleans_periodically_and_stops() {
        let root = tempfile::tempdir().expect("tempdir");
        let r = root.path();
        let mut registry = Registry::default();
        let manager = InstanceManager::new(
            Shared::new(r, "a", &mut registry, Clock::system()),
            HOUR,
            crate::config::agent::InstanceMode::Distinct,
        );
        let gone = instance_folder(r, "gone", 13 * HOUR);

        let stop = CancellationToken::new();
        run(manager.clone(), AGE, Duration::ZERO, stop.clone()).await;
        assert!(gone.exists(), "a zero period disables the cleaner");

        let task = tokio::spawn(run(
            manager.clone(),
            AGE,
            Duration::from_millis(20),
            stop.clone(),
        ));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while gone.exists() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(!gone.exists());
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("run stops on shutdown")
            .expect("run task");
    }
}
