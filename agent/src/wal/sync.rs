//! The WAL's disk thread: every fsync of a live WAL runs on it, never on the path of a commit
//! (as Prometheus's WAL hands the fsync of a completed segment to its own goroutine).
//!
//! One thread per WAL, started by [`Wal::open`](super::Wal::open), ending when the WAL and
//! every [`SyncHandle`] are dropped (after a last fsync of what was written). It
//! - fsyncs a completed segment once, then closes it (segment rotation only hands the file
//!   over);
//! - fsyncs the WAL directory when a new segment is started (its entry becomes durable);
//! - fsyncs the segment being written every `interval` when something was written since the
//!   last fsync, and on request ([`SyncHandle::sync`], [`SyncHandle::sync_blocking`]).
//!
//! Jobs run in the order they were sent, so a completed segment is durable before any later
//! fsync of the segments after it returns. An fsync that failed is logged and returned by the
//! next requested sync.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use super::segment::{fsync_file, FaultsHook};
use super::WalError;

enum Reply {
    Blocking(mpsc::Sender<Result<(), WalError>>),
    Async(tokio::sync::oneshot::Sender<Result<(), WalError>>),
}

enum Job {
    /// The segment now written (a clone of the writer's handle); the directory is fsynced.
    Current { file: File, path: PathBuf },
    /// A completed segment: fsynced once, then closed.
    Completed { file: File, path: PathBuf },
    /// fsync the segment being written now and answer.
    Sync(Reply),
}

/// The writer's side: hands segments to the thread and counts what it wrote.
pub(crate) struct Syncer {
    tx: mpsc::Sender<Job>,
    /// Bumped after every write to the segment being written.
    written: Arc<AtomicU64>,
}

/// Asks the WAL's disk thread for an fsync without holding the WAL.
#[derive(Clone)]
pub struct SyncHandle {
    tx: mpsc::Sender<Job>,
}

impl std::fmt::Debug for SyncHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SyncHandle")
    }
}

fn gone() -> WalError {
    WalError::Io {
        path: PathBuf::from("<wal>"),
        source: std::io::Error::other("the WAL's disk thread has stopped"),
    }
}

impl SyncHandle {
    /// fsyncs everything committed before the call (waits for the disk thread; the caller
    /// holds no lock). For async code.
    pub async fn sync(&self) -> Result<(), WalError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.tx
            .send(Job::Sync(Reply::Async(tx)))
            .map_err(|_| gone())?;
        rx.await.unwrap_or_else(|_| Err(gone()))
    }

    /// [`sync`](Self::sync) for blocking code (never on an async worker).
    pub fn sync_blocking(&self) -> Result<(), WalError> {
        let (tx, rx) = mpsc::channel();
        self.tx
            .send(Job::Sync(Reply::Blocking(tx)))
            .map_err(|_| gone())?;
        rx.recv().unwrap_or_else(|_| Err(gone()))
    }
}

impl Syncer {
    /// Starts the thread for a WAL in `dir` whose segment being written is `file` at `path`.
    pub(crate) fn spawn(
        dir: &Path,
        file: &File,
        path: PathBuf,
        interval: Duration,
        faults: FaultsHook,
    ) -> Result<Syncer, WalError> {
        let (tx, rx) = mpsc::channel();
        let written = Arc::new(AtomicU64::new(0));
        let file = file.try_clone().map_err(|e| WalError::io(&path, e))?;
        let mut thread = Thread {
            dir: dir.to_owned(),
            faults,
            current: Some((file, path)),
            written: written.clone(),
            synced: 0,
            failed: None,
        };
        std::thread::Builder::new()
            .name("wal-sync".into())
            .spawn(move || thread.run(rx, interval))
            .map_err(|e| WalError::io(dir, e))?;
        Ok(Syncer { tx, written })
    }

    pub(crate) fn handle(&self) -> SyncHandle {
        SyncHandle {
            tx: self.tx.clone(),
        }
    }

    /// Something was written to the segment being written.
    pub(crate) fn wrote(&self) {
        self.written.fetch_add(1, Ordering::Release);
    }

    /// Segment rotation: `old` is complete (padded), `new` is the segment written from now on.
    pub(crate) fn rotate(
        &self,
        old: File,
        old_path: PathBuf,
        new: &File,
        new_path: PathBuf,
    ) -> Result<(), WalError> {
        let new = new.try_clone().map_err(|e| WalError::io(&new_path, e))?;
        // A send fails only when the thread has gone, which it does only when this sender is
        // dropped: not while the writer exists.
        let _ = self.tx.send(Job::Completed {
            file: old,
            path: old_path,
        });
        let _ = self.tx.send(Job::Current {
            file: new,
            path: new_path,
        });
        Ok(())
    }
}

struct Thread {
    dir: PathBuf,
    faults: FaultsHook,
    current: Option<(File, PathBuf)>,
    written: Arc<AtomicU64>,
    /// `written` at the last fsync of the current segment.
    synced: u64,
    /// An fsync failed since the last requested sync.
    failed: Option<WalError>,
}

impl Thread {
    fn run(&mut self, rx: mpsc::Receiver<Job>, interval: Duration) {
        let mut next = std::time::Instant::now() + interval;
        loop {
            let wait = next.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(wait) {
                Ok(Job::Completed { file, path }) => {
                    let res = fsync_file(&self.faults, &file, &path);
                    self.note(res);
                }
                Ok(Job::Current { file, path }) => {
                    self.current = Some((file, path));
                    // The writer may have written to the new segment already: the next
                    // periodic fsync takes it whatever `written` says.
                    self.synced = u64::MAX;
                    let res = self.sync_dir();
                    self.note(res);
                }
                Ok(Job::Sync(reply)) => {
                    let res = self.sync_current(true);
                    let res = match self.failed.take() {
                        Some(e) => Err(e),
                        None => res,
                    };
                    match reply {
                        Reply::Blocking(tx) => {
                            let _ = tx.send(res);
                        }
                        Reply::Async(tx) => {
                            let _ = tx.send(res);
                        }
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    next = std::time::Instant::now() + interval;
                    let res = self.sync_current(false);
                    self.note(res);
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    // The WAL was closed: make what it wrote durable.
                    let res = self.sync_current(false);
                    self.note(res);
                    return;
                }
            }
        }
    }

    fn note(&mut self, res: Result<(), WalError>) {
        if let Err(e) = res {
            // A WAL directory removed under a stopped WAL (its files already gone) is not an
            // error worth a line.
            if !matches!(&e, WalError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
            {
                tracing::error!(dir = %self.dir.display(), error = %e, "WAL fsync failed");
            }
            self.failed = Some(e);
        }
    }

    fn sync_dir(&self) -> Result<(), WalError> {
        if let Some(f) = &self.faults {
            f.fsync(&self.dir).map_err(|e| WalError::io(&self.dir, e))?;
        }
        File::open(&self.dir)
            .and_then(|f| f.sync_all())
            .map_err(|e| WalError::io(&self.dir, e))
    }

    /// fsyncs the segment being written if it was written since the last fsync (or `always`).
    fn sync_current(&mut self, always: bool) -> Result<(), WalError> {
        let written = self.written.load(Ordering::Acquire);
        if written == self.synced && !always {
            return Ok(());
        }
        let Some((file, path)) = &self.current else {
            return Ok(());
        };
        fsync_file(&self.faults, file, path)?;
        self.synced = written;
        Ok(())
    }
}
