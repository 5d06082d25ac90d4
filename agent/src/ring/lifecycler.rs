//! The lifecycler: this agent's membership in the ring (dskit's `Lifecycler`, reproduced).
//!
//! State machine of the entry `<ring_prefix>agent` → `ingesters[<id>]`:
//!
//! ```text
//! start ── register (one CAS) ──► PENDING ── join_after ──► JOINING ── observe_period ──► ACTIVE
//!            │ entry present: adopt its tokens and state      (skipped when observe_period = 0)
//!            │   JOINING → PENDING, LEAVING → ACTIVE (tokens topped up / trimmed to num_tokens)
//!            │ tokens file with >= num_tokens tokens → ACTIVE at once
//! leave():  any state ──► LEAVING ── hook (hand-over) ── final_sleep ── unregister (CAS delete)
//! ```
//!
//! Every `heartbeat_period` a CAS sets `timestamp = now` on this member's entry (re-adding it,
//! with `registered_timestamp = now`, when someone removed it). Every write is a read-modify-
//! write that changes only this member's entry (see [`super::store::modify_ring`]); the others
//! are kept as read.
//!
//! **Auto-forget** (not in the old agent): on its heartbeat, an ACTIVE member that has reached
//! the KV store without failure for at least `heartbeat_timeout` removes every member whose
//! heartbeat is older than `auto_forget_unhealthy_periods × heartbeat_timeout`. The removal is
//! part of the heartbeat's CAS, so it is decided again on the fresh value at every attempt and
//! exactly one member's write removes a dead entry. The "without failure for a heartbeat
//! timeout" guard keeps a member that just got the KV store back after an outage (when every
//! heartbeat in the ring is old) from removing members that have not had a chance to
//! heartbeat yet.
//!
//! KV failures never stop the lifecycler: registration is retried with backoff, a failed
//! heartbeat is logged with the store's description and the next one is tried on schedule.

use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, SystemTime};

use tokio::sync::{watch, Mutex};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::clock::{unix_secs, Clock};
use crate::config::agent::LifecyclerConfig;
use crate::kv::KvStore;

use super::lookup::{heartbeat_age_nanos, members_to_forget};
use super::model::{Desc, InstanceDesc, InstanceState};
use super::store::{modify_ring, modify_ring_deferred, ring_key, RingStoreError};
use super::tokens::{generate_tokens, load_tokens_file, save_tokens_file, TokenRng};

/// Everything the lifecycler needs, resolved (identity decided, durations parsed).
#[derive(Debug, Clone)]
pub struct LifecyclerSettings {
    /// Full ring key, e.g. `collectors/agent`.
    pub ring_key: String,
    /// Instance ID (the map key in the ring).
    pub id: String,
    /// `host:port` advertised; ownership is decided by it, so it must be unique.
    pub addr: String,
    pub zone: String,
    pub num_tokens: usize,
    pub heartbeat_period: Duration,
    pub heartbeat_timeout: Duration,
    pub observe_period: Duration,
    pub join_after: Duration,
    pub final_sleep: Duration,
    pub tokens_file_path: Option<PathBuf>,
    pub unregister_on_shutdown: bool,
    /// 0 disables auto-forget.
    pub auto_forget_unhealthy_periods: u32,
}

impl LifecyclerSettings {
    /// Settings from the validated config. The ID defaults to the host name; the address to
    /// `lifecycler.address` or else this host's outbound IPv4 address (127.0.0.1 when there is
    /// no route), with `lifecycler.port` or else `default_port` (the port peers reach this
    /// agent on).
    pub fn from_config(cfg: &LifecyclerConfig, default_port: u16) -> Self {
        let host = cfg.address.clone().unwrap_or_else(default_address);
        let port = cfg.port.unwrap_or(default_port);
        LifecyclerSettings {
            ring_key: ring_key(&cfg.ring_prefix),
            id: cfg.id.clone().unwrap_or_else(hostname),
            addr: join_host_port(&host, port),
            zone: cfg.availability_zone.clone(),
            num_tokens: cfg.num_tokens as usize,
            heartbeat_period: cfg.heartbeat_period.as_std(),
            heartbeat_timeout: cfg.heartbeat_timeout.as_std(),
            observe_period: cfg.observe_period.as_std(),
            join_after: cfg.join_after.as_std(),
            final_sleep: cfg.final_sleep.as_std(),
            tokens_file_path: cfg.tokens_file_path.as_ref().map(PathBuf::from),
            unregister_on_shutdown: cfg.unregister_on_shutdown,
            auto_forget_unhealthy_periods: cfg.auto_forget_unhealthy_periods,
        }
    }
}

#[cfg(test)]
impl LifecyclerSettings {
    /// Settings for tests: ring `key`, `id` at `{id}:80`, 16 tokens, no waits, heartbeats an
    /// hour apart and judged after 60 s, nothing forgotten, the entry kept at shutdown.
    /// Tests override what they exercise with struct update syntax.
    pub(crate) fn for_test(key: &str, id: &str) -> Self {
        LifecyclerSettings {
            ring_key: key.into(),
            id: id.into(),
            addr: format!("{id}:80"),
            zone: String::new(),
            num_tokens: 16,
            heartbeat_period: Duration::from_secs(3600),
            heartbeat_timeout: Duration::from_secs(60),
            observe_period: Duration::ZERO,
            join_after: Duration::ZERO,
            final_sleep: Duration::ZERO,
            tokens_file_path: None,
            unregister_on_shutdown: false,
            auto_forget_unhealthy_periods: 0,
        }
    }
}

fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// The host name (`os.Hostname()` in the old agent), read from the kernel.
fn hostname() -> String {
    crate::host::kernel_hostname()
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|s| !s.is_empty()))
        .unwrap_or_else(|| "agentctl".to_owned())
}

/// The IPv4 address the kernel would use to reach a private network. A UDP `connect` only
/// selects a route; no packet is sent.
fn default_address() -> String {
    let probe = || -> std::io::Result<std::net::IpAddr> {
        let sock = std::net::UdpSocket::bind("0.0.0.0:0")?;
        sock.connect("10.255.255.254:9")?;
        Ok(sock.local_addr()?.ip())
    };
    match probe() {
        Ok(ip) if !ip.is_unspecified() => ip.to_string(),
        _ => "127.0.0.1".to_owned(),
    }
}

/// What one heartbeat did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeartbeatReport {
    /// The entry was missing (forgotten by someone) and was added again.
    pub re_added: bool,
    /// Members this heartbeat removed (auto-forget), with their heartbeat age in seconds.
    pub forgotten: Vec<(String, u64)>,
}

/// Whether this member's ring writes (its registration, then its heartbeats) reach the KV
/// store. While they do not, nobody's do (the store is down or unreachable from here) and the
/// heartbeat ages in the ring say nothing about the members; right after they land again, every
/// other member still needs up to one heartbeat period to refresh its own. The cluster uses
/// this to not move configs away from members that are only "unhealthy" because the store was
/// gone (see [`crate::cluster::heartbeat_grace`]).
///
/// Registration counts like a heartbeat: an agent started while the store is down fails to
/// register (`Failing`), and its first ring write that lands is a recovery (`RecoveredAt`). It
/// has never seen the others heartbeat, but what it saw, the store failing, is what the members
/// that ran through the outage saw: their heartbeats are as old as the outage, and it gives them
/// the same grace those members give each other, rather than judging them dead and running
/// every config they run a second time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvHealth {
    /// Every ring write since the start landed (or none was tried yet).
    Ok,
    /// The last registration attempt or heartbeat failed.
    Failing,
    /// Ring writes land again since this instant, after failing.
    RecoveredAt(Instant),
}

impl KvHealth {
    /// The grace to give heartbeats at `now` (see [`HeartbeatGrace`]): none while every write
    /// landed or once a heartbeat timeout has passed since the store came back; while writes
    /// fail, every heartbeat counts as made now (nobody could heartbeat); after they land again,
    /// a heartbeat older than the store's return counts as made then, for one heartbeat
    /// timeout.
    pub fn grace(self, heartbeat_timeout: Duration, now: SystemTime) -> Option<HeartbeatGrace> {
        match self {
            KvHealth::Ok => None,
            KvHealth::Failing => Some(HeartbeatGrace {
                from: unix_secs(now),
                until: None,
            }),
            KvHealth::RecoveredAt(at) => {
                let since = at.elapsed();
                if since >= heartbeat_timeout {
                    return None;
                }
                let back = now.checked_sub(since).unwrap_or(now);
                Some(HeartbeatGrace {
                    from: unix_secs(back),
                    until: Some(unix_secs(back + heartbeat_timeout)),
                })
            }
        }
    }
}

/// This member's ring writes failing ([`KvHealth::Failing`]): since when (the first failure
/// of this run of failures, by the lifecycler's clock) and the latest error. For the ring page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvOutage {
    pub since: SystemTime,
    pub error: String,
}

/// How an agent judges heartbeats during and just after a KV store outage
/// ([`KvHealth::grace`]): a member whose last heartbeat is older than `from` counts as having
/// heartbeated at `from`. The cluster decides config ownership with it
/// ([`crate::cluster::heartbeat_grace`]) and the ring page shows it, so that what an operator
/// reads is what the agent acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeartbeatGrace {
    /// Unix seconds: the store's return, or now while this agent's writes still fail.
    pub from: i64,
    /// Unix seconds when the grace ends (the store's return plus the heartbeat timeout);
    /// `None` while this agent's writes still fail.
    pub until: Option<i64>,
}

impl HeartbeatGrace {
    /// Whether a member with this heartbeat is judged by the grace rather than by its
    /// heartbeat.
    pub fn covers(&self, timestamp: i64) -> bool {
        timestamp < self.from
    }

    /// `desc` as judged: heartbeats older than `from` raised to it.
    pub fn apply(&self, desc: &mut Desc) {
        for member in desc.ingesters.values_mut() {
            if self.covers(member.timestamp) {
                member.timestamp = self.from;
            }
        }
    }
}

/// This member's view of its own entry. Guarded by one async mutex that every ring write
/// holds, so a heartbeat never writes back a state that a concurrent `leave()` replaced.
struct Local {
    state: InstanceState,
    tokens: Vec<u32>,
    registered_at: i64,
    registered: bool,
    leaving: bool,
    rng: TokenRng,
    /// Since when every KV write succeeded (the auto-forget guard); `None` after a failure.
    kv_ok_since: Option<Instant>,
}

struct Inner {
    store: Arc<dyn KvStore>,
    s: LifecyclerSettings,
    /// Heartbeat and registration timestamps; ages of the other members.
    clock: Clock,
    local: Mutex<Local>,
    state_tx: watch::Sender<InstanceState>,
    kv_health_tx: watch::Sender<KvHealth>,
    kv_outage_tx: watch::Sender<Option<KvOutage>>,
}

/// A running lifecycler. Dropping it stops heartbeating without leaving (like a crash);
/// call [`Lifecycler::leave`] for a graceful exit.
pub struct Lifecycler {
    inner: Arc<Inner>,
    stop: CancellationToken,
    task: StdMutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Lifecycler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lifecycler")
            .field("id", &self.inner.s.id)
            .field("addr", &self.inner.s.addr)
            .field("state", &self.state())
            .finish()
    }
}

/// Exponential backoff from 100 ms to `max`, for retrying KV writes.
struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    fn new(max: Duration) -> Self {
        Backoff {
            next: Duration::from_millis(100),
            max: max.max(Duration::from_millis(100)),
        }
    }

    fn next(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        d
    }
}

/// Attempts of the leave and unregister writes before giving up (shutdown must not hang on a
/// dead KV store; the entry then ages out and is auto-forgotten).
const SHUTDOWN_WRITE_ATTEMPTS: u32 = 5;

impl Lifecycler {
    /// Starts the lifecycler in the background: register, auto-join, heartbeat. `clock`
    /// stamps its heartbeats and judges the other members' ages.
    pub fn start(
        store: Arc<dyn KvStore>,
        settings: LifecyclerSettings,
        clock: Clock,
    ) -> Lifecycler {
        let (state_tx, _) = watch::channel(InstanceState::Pending);
        let inner = Arc::new(Inner {
            store,
            s: settings,
            clock,
            local: Mutex::new(Local {
                state: InstanceState::Pending,
                tokens: Vec::new(),
                registered_at: 0,
                registered: false,
                leaving: false,
                rng: TokenRng::from_entropy(),
                kv_ok_since: None,
            }),
            state_tx,
            kv_health_tx: watch::channel(KvHealth::Ok).0,
            kv_outage_tx: watch::channel(None).0,
        });
        let stop = CancellationToken::new();
        let task = tokio::spawn({
            let inner = inner.clone();
            let stop = stop.clone();
            async move {
                tokio::select! {
                    _ = stop.cancelled() => {}
                    _ = inner.run() => {}
                }
            }
        });
        Lifecycler {
            inner,
            stop,
            task: StdMutex::new(Some(task)),
        }
    }

    pub fn id(&self) -> &str {
        &self.inner.s.id
    }

    pub fn addr(&self) -> &str {
        &self.inner.s.addr
    }

    pub fn settings(&self) -> &LifecyclerSettings {
        &self.inner.s
    }

    /// The state this member last wrote (or is writing) to the ring.
    pub fn state(&self) -> InstanceState {
        *self.inner.state_tx.borrow()
    }

    /// Follows [`Lifecycler::state`].
    pub fn subscribe_state(&self) -> watch::Receiver<InstanceState> {
        self.inner.state_tx.subscribe()
    }

    /// Follows whether this member's heartbeats reach the KV store.
    pub fn subscribe_kv_health(&self) -> watch::Receiver<KvHealth> {
        self.inner.kv_health_tx.subscribe()
    }

    /// Follows since when and why this member's ring writes fail (`None` while they land).
    pub fn subscribe_kv_outage(&self) -> watch::Receiver<Option<KvOutage>> {
        self.inner.kv_outage_tx.subscribe()
    }

    /// This member's tokens, sorted.
    pub async fn tokens(&self) -> Vec<u32> {
        self.inner.local.lock().await.tokens.clone()
    }

    /// One heartbeat now (the background loop does this every `heartbeat_period`).
    pub async fn heartbeat(&self) -> Result<HeartbeatReport, RingStoreError> {
        self.inner.heartbeat().await
    }

    /// Graceful exit: state LEAVING (heartbeats continue), then `hook` (the cluster notifies
    /// peers and hands configs over there), `final_sleep`, stop heartbeating, and remove the
    /// entry when `unregister_on_shutdown`. KV failures are logged and retried a few times,
    /// never fatal: shutdown always completes.
    pub async fn leave<F, Fut>(&self, hook: F)
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = ()>,
    {
        let inner = &self.inner;
        {
            let mut local = inner.local.lock().await;
            local.leaving = true;
            inner.set_state(&mut local, InstanceState::Leaving);
            if local.registered {
                inner
                    .write_with_retries(&mut local, "leave", |inner, local, desc| {
                        inner.write_entry(desc, local);
                        true
                    })
                    .await;
            }
        }
        tracing::info!(id = %inner.s.id, "ring state LEAVING; handing over");
        hook().await;
        if !inner.s.final_sleep.is_zero() {
            tokio::time::sleep(inner.s.final_sleep).await;
        }
        self.stop.cancel();
        let task = self.task.lock().ok().and_then(|mut t| t.take());
        if let Some(task) = task {
            let _ = task.await;
        }
        if inner.s.unregister_on_shutdown {
            let mut local = inner.local.lock().await;
            if local.registered {
                let id = inner.s.id.clone();
                inner
                    .write_with_retries(&mut local, "unregister", |_, _, desc| {
                        desc.ingesters.remove(&id).is_some()
                    })
                    .await;
                tracing::info!(id = %inner.s.id, "removed from the ring");
            }
        }
    }
}

impl Drop for Lifecycler {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Warns when a heartbeat landed more than half a `heartbeat_timeout` after the previous one:
/// peers judge this agent dead at a full timeout, so this is the early sign, split into the
/// two causes an operator can act on: the timer firing late (this process's async workers were
/// busy) and the ring write itself taking long (the KV store is slow or contended).
fn late_heartbeat(s: &LifecyclerSettings, gap: Duration, timer_late: Duration, write: Duration) {
    if s.heartbeat_timeout.is_zero() || gap <= s.heartbeat_timeout / 2 {
        return;
    }
    tracing::warn!(
        id = %s.id,
        since_last = ?gap,
        timer_late = ?timer_late,
        write = ?write,
        heartbeat_timeout = ?s.heartbeat_timeout,
        "ring heartbeat landed late: peers judge a member dead once its heartbeat is heartbeat_timeout old (timer_late: this agent's runtime was busy; write: the KV store was slow)"
    );
}

impl Inner {
    fn set_state(&self, local: &mut Local, state: InstanceState) {
        local.state = state;
        self.state_tx.send_replace(state);
    }

    /// Writes this member's entry from `local`, with `timestamp = now`. A missing entry is
    /// added with `registered_timestamp = now`. Returns whether it was missing.
    fn write_entry(&self, desc: &mut Desc, local: &Local) -> bool {
        let now = self.clock.unix_secs();
        let mut re_added = false;
        let entry = desc.ingesters.entry(self.s.id.clone()).or_insert_with(|| {
            re_added = true;
            InstanceDesc {
                registered_timestamp: now,
                ..Default::default()
            }
        });
        entry.id.clone_from(&self.s.id);
        entry.addr.clone_from(&self.s.addr);
        entry.zone.clone_from(&self.s.zone);
        entry.tokens.clone_from(&local.tokens);
        entry.set_instance_state(local.state);
        entry.timestamp = now;
        if !re_added && entry.registered_timestamp == 0 {
            entry.registered_timestamp = local.registered_at;
        }
        re_added
    }

    /// A ring write retried with backoff, a bounded number of times (used on shutdown).
    async fn write_with_retries<F>(&self, local: &mut Local, action: &'static str, mut f: F)
    where
        F: FnMut(&Inner, &Local, &mut Desc) -> bool,
    {
        let mut backoff = Backoff::new(self.s.heartbeat_period);
        for attempt in 1..=SHUTDOWN_WRITE_ATTEMPTS {
            let loc: &Local = local;
            match modify_ring(self.store.as_ref(), &self.s.ring_key, action, |d| {
                f(self, loc, d)
            })
            .await
            {
                Ok(_) => return,
                Err(e) => {
                    tracing::warn!(
                        store = %self.store.describe(),
                        id = %self.s.id,
                        attempt,
                        error = %e,
                        "ring {action} failed"
                    );
                    tokio::time::sleep(backoff.next()).await;
                }
            }
        }
        tracing::error!(
            store = %self.store.describe(),
            id = %self.s.id,
            "giving up on ring {action}; the entry will age out"
        );
    }

    async fn run(self: Arc<Self>) {
        let mut backoff = Backoff::new(self.s.heartbeat_period);
        loop {
            match self.register().await {
                Ok(()) => break,
                Err(e) => {
                    self.kv_failed(&e);
                    tracing::warn!(
                        store = %self.store.describe(),
                        id = %self.s.id,
                        error = %e,
                        "cannot register in the ring; retrying"
                    );
                    tokio::time::sleep(backoff.next()).await;
                }
            }
        }
        let period = self.s.heartbeat_period.max(Duration::from_millis(10));
        let mut ticker = tokio::time::interval_at(Instant::now() + period, period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut next_transition = match self.state_tx.borrow().to_owned() {
            InstanceState::Pending => Some(Instant::now() + self.s.join_after),
            _ => None,
        };
        let mut backoff = Backoff::new(self.s.heartbeat_period);
        let mut landed = Instant::now();
        loop {
            let transition_at = next_transition;
            tokio::select! {
                due = ticker.tick() => {
                    let started = Instant::now();
                    match self.heartbeat().await {
                        Ok(_) => {
                            let now = Instant::now();
                            late_heartbeat(&self.s, now - landed, started - due, now - started);
                            landed = now;
                        }
                        Err(e) => tracing::warn!(
                            store = %self.store.describe(),
                            id = %self.s.id,
                            error = %e,
                            "ring heartbeat failed; configs stay where they are and joins/leaves wait until the store answers"
                        ),
                    }
                }
                _ = sleep_until_opt(transition_at), if transition_at.is_some() => {
                    match self.transition().await {
                        Ok(next) => {
                            next_transition = next;
                            backoff = Backoff::new(self.s.heartbeat_period);
                        }
                        Err(e) => {
                            tracing::warn!(
                                store = %self.store.describe(),
                                id = %self.s.id,
                                error = %e,
                                "ring state change failed; retrying"
                            );
                            next_transition = Some(Instant::now() + backoff.next());
                        }
                    }
                }
            }
        }
    }

    /// The initial CAS (dskit `initRing`).
    async fn register(&self) -> Result<(), RingStoreError> {
        // Read before taking the state, on the blocking pool.
        let file_tokens = match self.s.tokens_file_path.clone() {
            None => None,
            Some(path) => {
                match tokio::task::spawn_blocking(move || load_tokens_file(&path)).await {
                    Ok(Ok(t)) => t,
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "ignoring the tokens file");
                        None
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "ignoring the tokens file: its reader failed");
                        None
                    }
                }
            }
        };
        let mut local = self.local.lock().await;
        if local.leaving {
            return Ok(());
        }
        let num = self.s.num_tokens;
        let mut adopted: Option<(InstanceState, Vec<u32>, i64)> = None;
        let mut gen_error = None;
        let rng = local.rng.clone();
        let mut rng_used = rng.clone();
        modify_ring(self.store.as_ref(), &self.s.ring_key, "register", |desc| {
            rng_used = rng.clone();
            let now = self.clock.unix_secs();
            let (state, tokens, registered_at) = match desc.ingesters.get(&self.s.id) {
                None => {
                    let tokens = file_tokens.clone().unwrap_or_default();
                    let state = if num > 0 && tokens.len() >= num {
                        InstanceState::Active
                    } else {
                        InstanceState::Pending
                    };
                    (state, tokens, now)
                }
                Some(existing) => {
                    let mut tokens = existing.tokens.clone();
                    tokens.sort_unstable();
                    let registered = if existing.registered_timestamp == 0 {
                        now
                    } else {
                        existing.registered_timestamp
                    };
                    let state = match existing.instance_state() {
                        Some(InstanceState::Active) => InstanceState::Active,
                        Some(InstanceState::Leaving) => {
                            // A restart after a graceful leave without unregistering: back to
                            // ACTIVE with exactly num_tokens tokens.
                            tokens.truncate(num);
                            if tokens.len() < num {
                                let taken = desc.all_tokens();
                                match generate_tokens(num - tokens.len(), &taken, &mut rng_used) {
                                    Ok(more) => tokens.extend(more),
                                    Err(e) => {
                                        gen_error = Some(e);
                                        return false;
                                    }
                                }
                                tokens.sort_unstable();
                            }
                            InstanceState::Active
                        }
                        // JOINING was interrupted: join again. LEFT and states this version
                        // does not know are treated the same way.
                        _ => InstanceState::Pending,
                    };
                    (state, tokens, registered)
                }
            };
            let candidate = Local {
                state,
                tokens: tokens.clone(),
                registered_at,
                registered: true,
                leaving: false,
                rng: rng.clone(),
                kv_ok_since: None,
            };
            self.write_entry(desc, &candidate);
            adopted = Some((state, tokens, registered_at));
            true
        })
        .await?;
        if let Some(e) = gen_error {
            tracing::error!(error = %e, "cannot top up tokens");
        }
        if let Some((state, tokens, registered_at)) = adopted {
            local.tokens = tokens;
            local.registered_at = registered_at;
            local.registered = true;
            local.rng = rng_used;
            local.kv_ok_since = Some(Instant::now());
            self.set_state(&mut local, state);
            tracing::info!(
                id = %self.s.id,
                addr = %self.s.addr,
                state = %state,
                tokens = local.tokens.len(),
                "registered in the ring"
            );
            self.kv_landed(
                "registered after failing to reach the KV store: the members' heartbeats (as old as the outage) get a grace of one heartbeat_timeout",
            );
            if state == InstanceState::Active {
                let tokens = local.tokens.clone();
                drop(local);
                self.save_tokens(tokens).await;
            }
        }
        Ok(())
    }

    /// The next step of auto-join; returns when the following one is due (`None`: done).
    async fn transition(&self) -> Result<Option<Instant>, RingStoreError> {
        let state = self.local.lock().await.state;
        match state {
            InstanceState::Pending => self.auto_join().await,
            InstanceState::Joining => self.observe_done().await,
            _ => Ok(None),
        }
    }

    /// PENDING → JOINING (with `observe_period`) or ACTIVE: take the missing tokens.
    async fn auto_join(&self) -> Result<Option<Instant>, RingStoreError> {
        let mut local = self.local.lock().await;
        if local.leaving || local.state != InstanceState::Pending {
            return Ok(None);
        }
        let target = if self.s.observe_period.is_zero() {
            InstanceState::Active
        } else {
            InstanceState::Joining
        };
        let mut gen_error = None;
        let mut new_tokens = Vec::new();
        let mut rng = local.rng.clone();
        let loc: &Local = &local;
        let outcome = modify_ring(self.store.as_ref(), &self.s.ring_key, "join", |desc| {
            rng = loc.rng.clone();
            let mut tokens = loc.tokens.clone();
            let need = self.s.num_tokens.saturating_sub(tokens.len());
            let taken: Vec<u32> = desc
                .ingesters
                .iter()
                .filter(|(id, _)| **id != self.s.id)
                .flat_map(|(_, i)| i.tokens.iter().copied())
                .chain(tokens.iter().copied())
                .collect();
            match generate_tokens(need, &taken, &mut rng) {
                Ok(more) => tokens.extend(more),
                Err(e) => {
                    gen_error = Some(e);
                    return false;
                }
            }
            tokens.sort_unstable();
            let candidate = Local {
                state: target,
                tokens: tokens.clone(),
                ..copy_local(loc)
            };
            self.write_entry(desc, &candidate);
            new_tokens = tokens;
            true
        })
        .await;
        outcome?;
        if let Some(e) = gen_error {
            tracing::error!(id = %self.s.id, error = %e, "cannot generate tokens");
            return Ok(None);
        }
        local.tokens = new_tokens;
        local.rng = rng;
        self.set_state(&mut local, target);
        tracing::info!(id = %self.s.id, state = %target, tokens = local.tokens.len(), "joined the ring");
        if target == InstanceState::Active {
            let tokens = local.tokens.clone();
            drop(local);
            self.save_tokens(tokens).await;
            Ok(None)
        } else {
            Ok(Some(Instant::now() + self.s.observe_period))
        }
    }

    /// End of `observe_period`: tokens also claimed by a member with a smaller ID (the one the
    /// lookup prefers) are replaced and JOINING is observed again; otherwise → ACTIVE.
    async fn observe_done(&self) -> Result<Option<Instant>, RingStoreError> {
        let mut local = self.local.lock().await;
        if local.leaving || local.state != InstanceState::Joining {
            return Ok(None);
        }
        let mut result: Option<(InstanceState, Vec<u32>)> = None;
        let mut rng = local.rng.clone();
        let loc: &Local = &local;
        modify_ring(self.store.as_ref(), &self.s.ring_key, "activate", |desc| {
            rng = loc.rng.clone();
            let lost: std::collections::HashSet<u32> = desc
                .ingesters
                .iter()
                .filter(|(id, _)| id.as_str() < self.s.id.as_str())
                .flat_map(|(_, i)| i.tokens.iter().copied())
                .filter(|t| loc.tokens.binary_search(t).is_ok())
                .collect();
            let (state, tokens) = if lost.is_empty() {
                (InstanceState::Active, loc.tokens.clone())
            } else {
                let mut kept: Vec<u32> = loc
                    .tokens
                    .iter()
                    .copied()
                    .filter(|t| !lost.contains(t))
                    .collect();
                let taken = desc.all_tokens();
                if let Ok(more) = generate_tokens(lost.len(), &taken, &mut rng) {
                    kept.extend(more);
                }
                kept.sort_unstable();
                (InstanceState::Joining, kept)
            };
            let candidate = Local {
                state,
                tokens: tokens.clone(),
                ..copy_local(loc)
            };
            self.write_entry(desc, &candidate);
            result = Some((state, tokens));
            true
        })
        .await?;
        let Some((state, tokens)) = result else {
            return Ok(None);
        };
        local.tokens = tokens;
        local.rng = rng;
        self.set_state(&mut local, state);
        if state == InstanceState::Active {
            tracing::info!(id = %self.s.id, "ring state ACTIVE");
            let tokens = local.tokens.clone();
            drop(local);
            self.save_tokens(tokens).await;
            Ok(None)
        } else {
            tracing::warn!(id = %self.s.id, "some tokens are also held by another member; replaced them, observing again");
            Ok(Some(Instant::now() + self.s.observe_period))
        }
    }

    async fn heartbeat(&self) -> Result<HeartbeatReport, RingStoreError> {
        let mut local = self.local.lock().await;
        if !local.registered {
            return Ok(HeartbeatReport::default());
        }
        let forget = local.state == InstanceState::Active
            && self.s.auto_forget_unhealthy_periods > 0
            && local
                .kv_ok_since
                .is_some_and(|t| t.elapsed() >= self.s.heartbeat_timeout);
        let mut report = HeartbeatReport::default();
        let loc: &Local = &local;
        // Deferred: a crash may lose the newest heartbeats (the embedded store writes them with
        // its next ordinary write), and this agent registers again when it starts.
        let result =
            modify_ring_deferred(self.store.as_ref(), &self.s.ring_key, "heartbeat", |desc| {
                // Decided again on every attempt's fresh value: only the write that lands counts.
                report = HeartbeatReport::default();
                if forget {
                    let now = self.clock.now();
                    for id in members_to_forget(
                        desc,
                        now,
                        self.s.heartbeat_timeout,
                        self.s.auto_forget_unhealthy_periods,
                    ) {
                        if id == self.s.id {
                            continue;
                        }
                        if let Some(dead) = desc.ingesters.remove(&id) {
                            let age =
                                heartbeat_age_nanos(dead.timestamp, now).max(0) / 1_000_000_000;
                            report
                                .forgotten
                                .push((id, age.min(u64::MAX as i128) as u64));
                        }
                    }
                }
                report.re_added = self.write_entry(desc, loc);
                true
            })
            .await;
        if let Err(e) = result {
            local.kv_ok_since = None;
            self.kv_failed(&e);
            return Err(e);
        }
        self.kv_landed(
            "ring heartbeats land again; members' heartbeat ages get a grace of one heartbeat_timeout",
        );
        if local.kv_ok_since.is_none() {
            local.kv_ok_since = Some(Instant::now());
        }
        if report.re_added {
            local.registered_at = self.clock.unix_secs();
            tracing::warn!(id = %self.s.id, "own ring entry was missing (forgotten?); added it again");
        }
        for (id, age) in &report.forgotten {
            let last_heartbeat_age = Duration::from_secs(*age);
            tracing::warn!(id = %id, last_heartbeat_age = ?last_heartbeat_age, "forgot unhealthy ring member");
        }
        Ok(report)
    }

    /// A registration attempt or heartbeat failed: [`KvHealth::Failing`], and the
    /// [`KvOutage`] (its start kept, its error replaced).
    fn kv_failed(&self, error: &dyn std::fmt::Display) {
        let now = self.clock.now();
        self.kv_outage_tx.send_modify(|o| {
            let since = o.as_ref().map_or(now, |o| o.since);
            *o = Some(KvOutage {
                since,
                error: error.to_string(),
            });
        });
        self.kv_health_tx.send_if_modified(|h| {
            let was = *h;
            *h = KvHealth::Failing;
            was != KvHealth::Failing
        });
    }

    /// A registration or heartbeat landed: after failures, [`KvHealth::RecoveredAt`] now, logged
    /// with `msg`.
    fn kv_landed(&self, msg: &'static str) {
        self.kv_outage_tx.send_if_modified(|o| o.take().is_some());
        self.kv_health_tx.send_if_modified(|h| {
            if *h == KvHealth::Failing {
                tracing::info!(store = %self.store.describe(), id = %self.s.id, "{msg}");
                *h = KvHealth::RecoveredAt(Instant::now());
                true
            } else {
                false
            }
        });
    }

    /// Writes the tokens file (fsync, rename) on the blocking pool, with the state released:
    /// only this lifecycler's own task saves, so saves keep their order.
    async fn save_tokens(&self, tokens: Vec<u32>) {
        let Some(path) = self.s.tokens_file_path.clone() else {
            return;
        };
        match tokio::task::spawn_blocking(move || save_tokens_file(&path, &tokens)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot save the tokens file"),
            Err(e) => tracing::warn!(error = %e, "cannot save the tokens file: its writer failed"),
        }
    }
}

fn copy_local(l: &Local) -> Local {
    Local {
        state: l.state,
        tokens: l.tokens.clone(),
        registered_at: l.registered_at,
        registered: l.registered,
        leaving: l.leaving,
        rng: l.rng.clone(),
        kv_ok_since: l.kv_ok_since,
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::testing::{FaultyStore, Op};
    use crate::kv::InMemoryStore;
    use crate::ring::store::read_ring;

    const KEY: &str = "collectors/agent";

    fn unix_now() -> i64 {
        Clock::system().unix_secs()
    }

    fn start(store: &Arc<dyn KvStore>, s: LifecyclerSettings) -> Lifecycler {
        Lifecycler::start(store.clone(), s, Clock::system())
    }

    fn settings(id: &str) -> LifecyclerSettings {
        LifecyclerSettings {
            addr: format!("{id}:9095"),
            zone: "z1".into(),
            heartbeat_period: Duration::from_millis(50),
            heartbeat_timeout: Duration::from_secs(1),
            unregister_on_shutdown: true,
            auto_forget_unhealthy_periods: 2,
            ..LifecyclerSettings::for_test(KEY, id)
        }
    }

    async fn wait_state(l: &Lifecycler, want: InstanceState) {
        let mut rx = l.subscribe_state();
        tokio::time::timeout(Duration::from_secs(5), rx.wait_for(|s| *s == want))
            .await
            .unwrap_or_else(|_| panic!("{} never reached {want}", l.id()))
            .expect("state channel");
    }

    fn member(state: InstanceState, tokens: Vec<u32>, timestamp: i64) -> InstanceDesc {
        InstanceDesc {
            addr: "other:1".into(),
            timestamp,
            state: state as i32,
            tokens,
            zone: "z9".into(),
            registered_timestamp: 42,
            id: String::new(),
        }
    }

    async fn seed(store: &Arc<dyn KvStore>, id: &str, inst: InstanceDesc) {
        modify_ring(store.as_ref(), KEY, "seed", |d| {
            d.ingesters.insert(id.into(), inst.clone());
            true
        })
        .await
        .expect("seed");
    }

    #[tokio::test]
    async fn registers_joins_and_leaves() {
        let store: Arc<dyn KvStore> = Arc::new(InMemoryStore::new());
        let mut s = settings("a");
        s.observe_period = Duration::from_millis(100);
        let l = start(&store, s);
        wait_state(&l, InstanceState::Joining).await;
        wait_state(&l, InstanceState::Active).await;
        let ring = read_ring(store.as_ref(), KEY).await.expect("ring");
        let me = &ring.ingesters["a"];
        assert_eq!(me.tokens.len(), 16);
        assert_eq!(me.tokens, l.tokens().await);
        assert_eq!((me.addr.as_str(), me.zone.as_str()), ("a:9095", "z1"));
        assert!(me.registered_timestamp > 0);

        let (hook_tx, hook_rx) = tokio::sync::oneshot::channel();
        let store2 = store.clone();
        l.leave(|| async move {
            // During the hook the entry says LEAVING.
            let ring = read_ring(store2.as_ref(), KEY).await.expect("ring");
            let _ = hook_tx.send(ring.ingesters["a"].instance_state());
        })
        .await;
        assert_eq!(
            hook_rx.await.expect("hook ran"),
            Some(InstanceState::Leaving)
        );
        assert!(read_ring(store.as_ref(), KEY)
            .await
            .expect("ring")
            .ingesters
            .is_empty());
    }

    #[tokio::test]
    async fn adopts_an_existing_entry() {
        let store: Arc<dyn KvStore> = Arc::new(InMemoryStore::new());
        let now = unix_now();
        // A LEAVING entry with 3 tokens comes back ACTIVE with exactly num_tokens.
        seed(
            &store,
            "a",
            member(InstanceState::Leaving, vec![10, 20, 30], now),
        )
        .await;
        // A JOINING entry goes back to PENDING and then joins, keeping its tokens.
        seed(&store, "b", member(InstanceState::Joining, vec![5, 6], now)).await;
        let mut sb = settings("b");
        sb.join_after = Duration::from_secs(3600);
        let a = start(&store, settings("a"));
        let b = start(&store, sb);
        wait_state(&a, InstanceState::Active).await;
        // b starts out PENDING locally; wait for its registration to land in the ring.
        let ring = loop {
            let ring = read_ring(store.as_ref(), KEY).await.expect("ring");
            if ring.ingesters["b"].addr == "b:9095" {
                break ring;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        assert_eq!(b.state(), InstanceState::Pending);
        let ea = &ring.ingesters["a"];
        assert_eq!(ea.instance_state(), Some(InstanceState::Active));
        assert_eq!(ea.tokens.len(), 16);
        assert!(
            [10, 20, 30].iter().all(|t| ea.tokens.contains(t)),
            "kept its tokens"
        );
        assert_eq!(ea.registered_timestamp, 42, "registration time kept");
        assert_eq!(
            (ea.addr.as_str(), ea.zone.as_str()),
            ("a:9095", "z1"),
            "addr and zone overwritten"
        );
        let eb = &ring.ingesters["b"];
        assert_eq!(eb.instance_state(), Some(InstanceState::Pending));
        assert_eq!(eb.tokens, vec![5, 6]);
    }

    #[tokio::test]
    async fn tokens_file_is_used_and_saved() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("tokens.json");
        let file_tokens: Vec<u32> = (1..=16).map(|i| i * 1000).collect();
        save_tokens_file(&path, &file_tokens).expect("write");
        let store: Arc<dyn KvStore> = Arc::new(InMemoryStore::new());
        let mut s = settings("a");
        s.tokens_file_path = Some(path.clone());
        s.join_after = Duration::from_secs(3600);
        let l = start(&store, s);
        // Enough tokens in the file: ACTIVE at once, without waiting for join_after.
        wait_state(&l, InstanceState::Active).await;
        assert_eq!(l.tokens().await, file_tokens);

        let path2 = dir.path().join("new.json");
        let mut s = settings("b");
        s.tokens_file_path = Some(path2.clone());
        let l2 = start(&store, s);
        wait_state(&l2, InstanceState::Active).await;
        // Saved on the blocking pool once ACTIVE.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let saved = loop {
            if let Some(t) = load_tokens_file(&path2).expect("read") {
                break t;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "tokens file never saved"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        assert_eq!(saved, l2.tokens().await);
        assert!(
            saved.iter().all(|t| !file_tokens.contains(t)),
            "avoids taken tokens"
        );
    }

    #[tokio::test]
    async fn heartbeat_merges_and_re_adds() {
        let store: Arc<dyn KvStore> = Arc::new(InMemoryStore::new());
        let mut s = settings("a");
        s.heartbeat_period = Duration::from_secs(3600); // heartbeats by hand only
        let l = start(&store, s);
        wait_state(&l, InstanceState::Active).await;
        // Someone else writes their entry; our heartbeat must keep it byte for byte.
        let other = InstanceDesc {
            id: "z".into(),
            ..member(InstanceState::Joining, vec![7], unix_now())
        };
        seed(&store, "z", other.clone()).await;
        let report = l.heartbeat().await.expect("heartbeat");
        assert_eq!(report, HeartbeatReport::default());
        let ring = read_ring(store.as_ref(), KEY).await.expect("ring");
        assert_eq!(ring.ingesters["z"], other);
        // Forgotten: the next heartbeat adds the entry back with the same tokens.
        let tokens = l.tokens().await;
        assert!(crate::ring::forget(&store, KEY, "a").await.expect("forget"));
        let report = l.heartbeat().await.expect("heartbeat");
        assert!(report.re_added);
        let ring = read_ring(store.as_ref(), KEY).await.expect("ring");
        assert_eq!(ring.ingesters["a"].tokens, tokens);
        assert_eq!(
            ring.ingesters["a"].instance_state(),
            Some(InstanceState::Active)
        );
        assert_eq!(ring.ingesters["z"], other);
    }

    /// Two healthy members race to heartbeat; a dead member is removed by exactly one of them.
    /// Paused time: the auto-forget guard's heartbeat timeout passes by `advance`, and the
    /// members' clock follows it.
    #[tokio::test(start_paused = true)]
    async fn auto_forget_happens_exactly_once() {
        let store: Arc<dyn KvStore> = Arc::new(InMemoryStore::new());
        let clock = Clock::following_tokio(
            std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        );
        let now = || clock.unix_secs();
        let mut sa = settings("a");
        sa.heartbeat_period = Duration::from_secs(3600);
        sa.heartbeat_timeout = Duration::from_secs(2);
        let mut sb = settings("b");
        sb.heartbeat_period = Duration::from_secs(3600);
        sb.heartbeat_timeout = Duration::from_secs(2);
        let a = Lifecycler::start(store.clone(), sa, clock);
        let b = Lifecycler::start(store.clone(), sb, clock);
        wait_state(&a, InstanceState::Active).await;
        wait_state(&b, InstanceState::Active).await;
        // 2 periods × 2 s timeout: 10 s old is dead, 1 s old is merely unhealthy.
        seed(
            &store,
            "dead",
            member(InstanceState::Active, vec![1], now() - 10),
        )
        .await;
        seed(
            &store,
            "slow",
            member(InstanceState::Active, vec![2], now() - 1),
        )
        .await;
        // Right after start the guard holds: no member forgets before a heartbeat timeout of
        // working KV access.
        assert!(a.heartbeat().await.expect("hb").forgotten.is_empty());
        tokio::time::advance(Duration::from_millis(2100)).await;
        seed(
            &store,
            "slow",
            member(InstanceState::Active, vec![2], now()),
        )
        .await;
        let (ra, rb) = tokio::join!(a.heartbeat(), b.heartbeat());
        let (ra, rb) = (ra.expect("a"), rb.expect("b"));
        let forgotten: Vec<_> = ra
            .forgotten
            .iter()
            .chain(&rb.forgotten)
            .map(|(id, _)| id.clone())
            .collect();
        assert_eq!(forgotten, vec!["dead".to_owned()], "a: {ra:?} b: {rb:?}");
        let ring = read_ring(store.as_ref(), KEY).await.expect("ring");
        assert_eq!(
            ring.ingesters.keys().collect::<Vec<_>>(),
            vec!["a", "b", "slow"]
        );
    }

    /// Before the next conditional write, another writer adds its own member to the ring: the
    /// CAS must re-run on the fresh value and keep that member.
    fn intruder_before_next_cas(store: &FaultyStore) {
        store.before(Op::PutIfRevision, false, |inner| {
            Box::pin(async move {
                modify_ring(inner.as_ref(), KEY, "intruder", |d| {
                    d.ingesters.insert(
                        "intruder".into(),
                        member(InstanceState::Active, vec![99], unix_now()),
                    );
                    true
                })
                .await
                .expect("intruder write");
            })
        });
    }

    /// Failed heartbeats report `Failing`; the first one that lands again reports
    /// `RecoveredAt` (the cluster's grace), and the member is not forgotten or re-added.
    #[tokio::test]
    async fn kv_health_follows_heartbeats_through_an_outage() {
        let sw = FaultyStore::new(Arc::new(InMemoryStore::new()));
        let store: Arc<dyn KvStore> = sw.clone();
        let mut s = settings("a");
        s.heartbeat_period = Duration::from_secs(3600);
        let l = start(&store, s);
        wait_state(&l, InstanceState::Active).await;
        let health = l.subscribe_kv_health();
        assert_eq!(*health.borrow(), KvHealth::Ok);
        l.heartbeat().await.expect("heartbeat");
        assert_eq!(*health.borrow(), KvHealth::Ok);

        sw.set_down(true);
        assert!(l.heartbeat().await.is_err());
        assert_eq!(*health.borrow(), KvHealth::Failing);
        assert!(l.heartbeat().await.is_err());
        assert_eq!(*health.borrow(), KvHealth::Failing);

        sw.set_down(false);
        let report = l.heartbeat().await.expect("heartbeat after the outage");
        assert!(
            !report.re_added && report.forgotten.is_empty(),
            "{report:?}"
        );
        assert!(matches!(*health.borrow(), KvHealth::RecoveredAt(_)));
        // Later heartbeats keep the recovery instant (the grace runs from it).
        let at = *health.borrow();
        l.heartbeat().await.expect("heartbeat");
        assert_eq!(*health.borrow(), at);
    }

    /// Started while the store is down: failed registrations report `Failing`, and the
    /// registration that finally lands is the recovery (the cluster's grace runs from it, as for
    /// the members that ran through the outage). Started with the store up: `Ok` throughout.
    #[tokio::test]
    async fn a_registration_after_failures_is_a_recovery() {
        let sw = FaultyStore::new(Arc::new(InMemoryStore::new()));
        sw.set_down(true);
        let store: Arc<dyn KvStore> = sw.clone();
        let mut s = settings("late");
        s.heartbeat_period = Duration::from_secs(3600);
        let l = start(&store, s);
        let mut health = l.subscribe_kv_health();
        tokio::time::timeout(
            Duration::from_secs(5),
            health.wait_for(|h| *h == KvHealth::Failing),
        )
        .await
        .expect("a failed registration reports Failing")
        .expect("health channel");
        assert_eq!(l.state(), InstanceState::Pending);

        let before = Instant::now();
        sw.set_down(false);
        wait_state(&l, InstanceState::Active).await;
        match *health.borrow() {
            KvHealth::RecoveredAt(at) => assert!(at >= before, "recovered before the store was up"),
            other => panic!("after registering once the store is back: {other:?}"),
        }

        let fine: Arc<dyn KvStore> = Arc::new(InMemoryStore::new());
        let l = start(&fine, settings("early"));
        wait_state(&l, InstanceState::Active).await;
        assert_eq!(*l.subscribe_kv_health().borrow(), KvHealth::Ok);
    }

    #[tokio::test]
    async fn a_lost_cas_race_keeps_the_other_writers_member() {
        let racing = FaultyStore::new(Arc::new(InMemoryStore::new()));
        intruder_before_next_cas(&racing);
        let store: Arc<dyn KvStore> = racing.clone();
        let mut s = settings("a");
        s.heartbeat_period = Duration::from_secs(3600);
        s.join_after = Duration::from_secs(3600);
        // Registration loses the race: the intruder is kept and "a" is registered.
        let l = start(&store, s);
        let ring = loop {
            let ring = read_ring(store.as_ref(), KEY).await.expect("ring");
            if ring.ingesters.contains_key("a") {
                break ring;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        assert_eq!(
            ring.ingesters.keys().collect::<Vec<_>>(),
            vec!["a", "intruder"]
        );
        // A heartbeat loses the race against a second write of the intruder: same result.
        store.delete(KEY).await.expect("reset");
        intruder_before_next_cas(&racing);
        let report = l.heartbeat().await.expect("heartbeat");
        assert!(report.re_added);
        let ring = read_ring(store.as_ref(), KEY).await.expect("ring");
        assert_eq!(
            ring.ingesters.keys().collect::<Vec<_>>(),
            vec!["a", "intruder"]
        );
    }

    /// Paused time: 300 ms are six heartbeat periods, passed without sleeping.
    #[tokio::test(start_paused = true)]
    async fn a_dropped_lifecycler_stops_heartbeating_and_stays() {
        let store: Arc<dyn KvStore> = Arc::new(InMemoryStore::new());
        let clock = Clock::following_tokio(std::time::SystemTime::UNIX_EPOCH);
        let l = Lifecycler::start(store.clone(), settings("a"), clock);
        wait_state(&l, InstanceState::Active).await;
        drop(l);
        tokio::task::yield_now().await;
        let before = read_ring(store.as_ref(), KEY).await.expect("ring");
        tokio::time::advance(Duration::from_millis(300)).await;
        let after = read_ring(store.as_ref(), KEY).await.expect("ring");
        assert_eq!(before, after, "no heartbeat after drop");
        assert_eq!(
            after.ingesters["a"].instance_state(),
            Some(InstanceState::Active)
        );
    }

    #[test]
    fn settings_from_config() {
        let cfg = crate::config::AgentConfig::embedded_default()
            .scraping_service
            .lifecycler;
        let s = LifecyclerSettings::from_config(&cfg, 12345);
        assert_eq!(s.ring_key, "collectors/agent");
        assert!(s.addr.ends_with(":12345"), "{}", s.addr);
        assert!(!s.id.is_empty());
        assert_eq!(join_host_port("::1", 80), "[::1]:80");
    }
}
