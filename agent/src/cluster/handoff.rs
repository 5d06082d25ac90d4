//! Make-before-break handoff of targets between agents, as pure logic: [`Handoffs`] takes
//! assignment epochs, scrape and flush outcomes and the other agents' published states, and
//! returns [`Action`]s for the scrape loops. The runtime (`agent/src/cluster/mod.rs`) performs
//! them and publishes [`Handoffs::published`] in this agent's `sharding/agents/<id>` key.
//!
//! # The invariant
//!
//! At any time at most one agent appends samples for a target: its **writer**. A receiver
//! refuses a sample older than the newest it has for a series, together with the whole batch it
//! came in, so two agents appending for one target for a while is not safe even at the same
//! scrape phase (their queues deliver in either order). The writer changes hands at a scrape
//! slot both sides can name, and the new writer appends only after the old one's last samples
//! were delivered.
//!
//! # The protocol, for target X moving from A (its writer) to B (its owner in epoch E)
//!
//! 1. A applies E: X is no longer its own; it keeps writing and lists X as `releasing`.
//! 2. B applies E: it starts X's scrape loop at once, at X's identity-derived phase, **holding**
//!    the scrapes (body and scrape time) instead of appending them ([`Action::Hold`]).
//! 3. B's first successful scrape ([`Handoffs::scraped`]) proves it reaches X: B lists X as
//!    `ready`.
//! 4. A sees B ready (B is X's owner in A's epoch): A stops X's loop without staleness markers
//!    (the series go on), waits until every remote_write queue of the instance has delivered
//!    what it appended ([`Action::Release`]), and lists X as `released` with the scrape time of
//!    its last appended scrape, `t_A` ([`Handoffs::flushed`]).
//! 5. B decides it is the writer when **every live agent has applied B's epoch and none lists X
//!    as `releasing`** (so nobody else writes X); it appends its held scrapes later than
//!    `t_A + interval / 2` ([`Action::Write`]), the slot after A's last one, and from then on
//!    appends as usual. B's scrape of A's last slot, if it has one, is dropped.
//!
//! Step 5 is also how a target starts on its first owner (nobody releases it) and how it fails
//! over (its writer died: it is no longer live, and the leader moved its targets once its
//! heartbeat was older than heartbeat_timeout). `t_A` is the largest `released` time any agent,
//! live or not, lists for X, this one included (a target that comes back); agents' keys stay
//! in the store after they leave, so a leaver's last `released` entries are still read.
//!
//! # A writer judged dead that is not
//!
//! Under load (a slow host, a slow KV store) a live agent's heartbeat can look stale to the
//! leader, which moves its targets; their new owners do not wait for a "dead" writer. Two rules
//! keep the target to one writer then:
//!
//! * **Fencing** ([`Handoffs::fence`]): an agent whose own heartbeat, as the ring shows it, is
//!   older than most of `heartbeat_timeout` stops writing every target (a release: stopped,
//!   flushed, listed `released`) and starts none, so it has stopped before anyone can judge it
//!   dead. With a fresh heartbeat again it writes the targets it still owns after their
//!   `released` time.
//! * **`started`**: an agent lists the targets it began writing (for as long as `released`
//!   entries are kept). A writer still releasing X stops at once when X's owner lists X as
//!   `started`, instead of waiting for a `ready` that never comes (the owner writes already).
//!
//! "Live" is a ring member with a fresh heartbeat and an agent key; an agent's published
//! `epoch` is the assignment epoch its `releasing` list was computed for (both in one write).
//! A peer at a higher epoch than B's means B is behind: B waits until it has caught up.
//!
//! # Timeouts (from the target's scrape interval I)
//!
//! * A writer that sees no `ready` for [`release_timeout`] (`3 I + 5 s`: B cannot reach X, or
//!   died) releases X anyway: it stops, flushes and lists `released`, so B proceeds cleanly when
//!   it gets there.
//! * An incoming target undecided for [`decide_timeout`] (`release_timeout + 2 I + 5 s`: the KV
//!   store is down, or a peer cannot publish) is written anyway, keeping only scrapes later than
//!   `release_timeout + I / 2` after B applied E (A has stopped by then on its own).
//! * `released` entries are kept for `2 × decide_timeout`: long enough for any owner to decide.
//!
//! Chains are covered because the decision is about who writes, not about epochs: X moving
//! A→B→C while A still writes: B drops its hold (it appended nothing), C handshakes with A.
//! X moving back to A while A is releasing: A simply stays the writer.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use tokio::time::Instant;

use super::store::{AgentStatus, TargetKey};

/// How long a writer waits for the new owner's `ready` before releasing anyway.
pub fn release_timeout(interval: Duration) -> Duration {
    interval * 3 + Duration::from_secs(5)
}

/// How long an incoming target may stay undecided before this agent writes it anyway.
pub fn decide_timeout(interval: Duration) -> Duration {
    release_timeout(interval) + interval * 2 + Duration::from_secs(5)
}

fn keep_released(interval: Duration) -> Duration {
    decide_timeout(interval) * 2
}

fn half_ms(interval: Duration) -> i64 {
    (interval.as_millis() / 2) as i64
}

/// What an agent publishes about its handoffs (the lists of its agent key, sorted).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Published {
    pub ready: Vec<TargetKey>,
    pub releasing: Vec<TargetKey>,
    pub released: Vec<(TargetKey, Option<i64>)>,
    pub started: Vec<TargetKey>,
}

/// What the scrape loops must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Start the target's loop, holding its scrapes instead of appending them.
    Hold(TargetKey),
    /// Become the writer: append the held scrapes with a scrape time later than `after_ms`
    /// (all of them when `None`), then append as usual.
    Write {
        key: TargetKey,
        after_ms: Option<i64>,
    },
    /// Stop the loop without staleness markers, wait until what it appended is delivered, then
    /// call [`Handoffs::flushed`] with the scrape time of its last appended scrape.
    Release(TargetKey),
    /// Stop a holding loop (it appended nothing).
    Drop(TargetKey),
}

#[derive(Debug, Clone, PartialEq)]
enum State {
    /// Assigned here, not yet the writer: scraping and holding.
    Incoming {
        ready: bool,
    },
    Writing,
    /// Still the writer, but `owner` owns it now.
    Releasing {
        owner: String,
    },
    /// Stopped; waiting for the flush.
    Flushing,
}

#[derive(Debug, Clone)]
struct Entry {
    state: State,
    interval: Duration,
    /// When the current state began.
    since: Instant,
    /// The same instant on the wall clock, Unix ms.
    since_ms: i64,
}

#[derive(Debug, Clone, PartialEq)]
struct Released {
    last_ms: Option<i64>,
    expires: Instant,
}

/// What the other agents publish, indexed for the decisions.
#[derive(Debug, Default)]
pub struct Peers {
    /// Live peers' epochs.
    epochs: Vec<u64>,
    /// Targets live peers list as `releasing`.
    releasing: HashSet<TargetKey>,
    /// Who lists each target as `ready` (live peers).
    ready: HashMap<TargetKey, Vec<String>>,
    /// The latest `released` time any agent lists, live or not.
    released: HashMap<TargetKey, Option<i64>>,
    /// Who lists each target as `started` (any agent: one judged dead may still be writing).
    started: HashMap<TargetKey, Vec<String>>,
}

impl Peers {
    /// From every agent key in the store but this agent's own, with whether its agent is live.
    pub fn new<'a>(statuses: impl IntoIterator<Item = (&'a str, &'a AgentStatus, bool)>) -> Self {
        let mut p = Peers::default();
        for (id, st, live) in statuses {
            for (k, last) in &st.released {
                let e = p.released.entry(*k).or_insert(*last);
                *e = (*e).max(*last);
            }
            for k in &st.started {
                p.started.entry(*k).or_default().push(id.to_owned());
            }
            if !live {
                continue;
            }
            p.epochs.push(st.epoch);
            p.releasing.extend(st.releasing.iter().copied());
            for k in &st.ready {
                p.ready.entry(*k).or_default().push(id.to_owned());
            }
        }
        p
    }

    /// Another agent lists the target as `releasing` (a live one) or `released` (any): it
    /// was written elsewhere and is being, or was, handed over.
    pub fn handing_over(&self, key: TargetKey) -> bool {
        self.releasing.contains(&key) || self.released.contains_key(&key)
    }

    /// Some live peer has applied a higher epoch than `epoch`.
    fn ahead_of(&self, epoch: u64) -> bool {
        self.epochs.iter().any(|&e| e > epoch)
    }

    fn all_applied(&self, epoch: u64) -> bool {
        self.epochs.iter().all(|&e| e == epoch)
    }
}

/// The handoff state of every target this agent writes, holds or releases.
#[derive(Debug, Default)]
pub struct Handoffs {
    epoch: u64,
    targets: HashMap<TargetKey, Entry>,
    released: HashMap<TargetKey, Released>,
    /// Targets this agent began writing, until when they are listed as `started`.
    started: HashMap<TargetKey, Instant>,
    /// This agent's own heartbeat is too old to prove it is live (see [`Handoffs::fence`]).
    fenced: bool,
    /// Set when the published lists changed since [`Handoffs::take_dirty`].
    dirty: bool,
}

impl Handoffs {
    pub fn new() -> Self {
        Handoffs::default()
    }

    /// The assignment epoch applied last.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    fn set(&mut self, key: TargetKey, state: State, interval: Duration, now: Instant, now_ms: i64) {
        if state == State::Writing {
            self.started.insert(key, now + keep_released(interval));
        } else {
            self.started.remove(&key);
        }
        self.targets.insert(
            key,
            Entry {
                state,
                interval,
                since: now,
                since_ms: now_ms,
            },
        );
        self.dirty = true;
    }

    /// Applies epoch `epoch`, in which this agent owns `mine` (each with its scrape interval)
    /// and `owner_of` tells who owns any other target.
    pub fn apply_epoch(
        &mut self,
        epoch: u64,
        mine: &HashMap<TargetKey, Duration>,
        owner_of: impl Fn(TargetKey) -> Option<String>,
        now: Instant,
        now_ms: i64,
    ) -> Vec<Action> {
        let mut actions = Vec::new();
        self.epoch = epoch;
        self.dirty = true;
        let known: Vec<TargetKey> = self.targets.keys().copied().collect();
        for key in known {
            let entry = &self.targets[&key];
            let interval = entry.interval;
            let is_mine = mine.contains_key(&key);
            match (&entry.state, is_mine) {
                (State::Incoming { .. }, false) => {
                    self.targets.remove(&key);
                    actions.push(Action::Drop(key));
                }
                (State::Writing, false) => {
                    // In no config's assignment (`None`): the target is gone, which the runtime
                    // handles (stop with staleness markers, then `forget`).
                    if let Some(owner) = owner_of(key) {
                        self.set(key, State::Releasing { owner }, interval, now, now_ms);
                    }
                }
                (State::Releasing { owner }, false) => {
                    if let Some(new_owner) = owner_of(key).filter(|o| o != owner) {
                        // A new owner: it gets the full wait again.
                        self.set(
                            key,
                            State::Releasing { owner: new_owner },
                            interval,
                            now,
                            now_ms,
                        );
                    }
                }
                (State::Releasing { .. }, true) => {
                    self.set(key, State::Writing, interval, now, now_ms)
                }
                // Flushing and coming back: handled when the flush ends (`flushed`).
                _ => {}
            }
        }
        for (&key, &interval) in mine {
            if !self.targets.contains_key(&key) {
                self.set(key, State::Incoming { ready: false }, interval, now, now_ms);
                actions.push(Action::Hold(key));
            }
        }
        actions
    }

    /// A holding loop scraped its target successfully.
    pub fn scraped(&mut self, key: TargetKey) {
        if let Some(Entry {
            state: State::Incoming { ready },
            ..
        }) = self.targets.get_mut(&key)
        {
            if !*ready {
                *ready = true;
                self.dirty = true;
            }
        }
    }

    /// A released loop's appends were delivered; `last_ms` is the scrape time of its last
    /// appended scrape. `mine`: whether this agent owns the target again by now.
    pub fn flushed(
        &mut self,
        key: TargetKey,
        last_ms: Option<i64>,
        mine: bool,
        now: Instant,
        now_ms: i64,
    ) -> Vec<Action> {
        let Some(entry) = self.targets.get(&key) else {
            return Vec::new();
        };
        if entry.state != State::Flushing {
            return Vec::new();
        }
        let interval = entry.interval;
        self.targets.remove(&key);
        self.released.insert(
            key,
            Released {
                last_ms,
                expires: now + keep_released(interval),
            },
        );
        self.dirty = true;
        if mine {
            self.set(key, State::Incoming { ready: false }, interval, now, now_ms);
            return vec![Action::Hold(key)];
        }
        Vec::new()
    }

    /// The target is gone (no longer discovered, or its config deleted); the runtime stopped it.
    pub fn forget(&mut self, key: TargetKey) {
        self.started.remove(&key);
        if self.targets.remove(&key).is_some() {
            self.dirty = true;
        }
    }

    /// Decides what can be decided given the peers' published states (see the module docs).
    pub fn evaluate(&mut self, peers: &Peers, now: Instant) -> Vec<Action> {
        let mut actions = Vec::new();
        let behind = peers.ahead_of(self.epoch);
        let agreed = !behind && peers.all_applied(self.epoch);
        let keys: Vec<TargetKey> = self.targets.keys().copied().collect();
        for key in keys {
            let entry = &self.targets[&key];
            let waited = now.saturating_duration_since(entry.since);
            let interval = entry.interval;
            match &entry.state {
                // Fenced: peers may take its targets over any moment; it writes none.
                State::Incoming { .. } if self.fenced => {}
                State::Incoming { .. } => {
                    let released = self.released_ms(key, peers);
                    let after_ms = if agreed && !peers.releasing.contains(&key) {
                        // Saturating: `t` comes from a peer's entry in the KV store.
                        released.map(|t| t.saturating_add(half_ms(interval)))
                    } else if waited >= decide_timeout(interval) {
                        tracing::warn!(target_key = %key, waited = ?waited,
                            "handoff undecided (KV store unreachable or a peer not publishing); writing the target anyway");
                        let own = entry.since_ms
                            + release_timeout(interval).as_millis() as i64
                            + half_ms(interval);
                        Some(released.map_or(own, |t| t.saturating_add(half_ms(interval)).max(own)))
                    } else {
                        continue;
                    };
                    self.set(key, State::Writing, interval, now, 0);
                    actions.push(Action::Write { key, after_ms });
                }
                State::Releasing { owner } => {
                    let listed = |lists: &HashMap<TargetKey, Vec<String>>| {
                        lists
                            .get(&key)
                            .is_some_and(|ids| ids.iter().any(|id| id == owner))
                    };
                    // The owner writes already: it judged this agent dead (a stale heartbeat)
                    // and took the target over. Every sample appended from now on would be a
                    // second writer's: stop at once.
                    let taken = listed(&peers.started);
                    if taken {
                        tracing::warn!(target_key = %key, owner = %owner,
                            "the new owner took the target over without a handoff (this agent's heartbeat was judged stale); stopping it now");
                    }
                    if !taken && !listed(&peers.ready) {
                        if waited < release_timeout(interval) {
                            continue;
                        }
                        tracing::warn!(target_key = %key, owner = %owner, waited = ?waited,
                            "new owner not ready; releasing the target anyway");
                    }
                    self.set(key, State::Flushing, interval, now, 0);
                    actions.push(Action::Release(key));
                }
                State::Writing | State::Flushing => {}
            }
        }
        let before = self.released.len() + self.started.len();
        self.released.retain(|_, r| r.expires > now);
        self.started.retain(|_, expires| *expires > now);
        if self.released.len() + self.started.len() != before {
            self.dirty = true;
        }
        actions
    }

    /// Whether this agent can still prove it is live: `fenced` when its own heartbeat, as the
    /// ring shows it, is close enough to `heartbeat_timeout` that the others may judge it dead
    /// and take its targets over (without a handoff: a dead writer is not waited for). Fenced,
    /// it stops writing every target at once (released as in a handoff: stopped without
    /// staleness markers, flushed, listed `released`) and starts writing none; once its
    /// heartbeat is fresh again, the targets it still owns are written again after their
    /// `released` time, as any incoming target.
    pub fn fence(&mut self, fenced: bool, now: Instant) -> Vec<Action> {
        if fenced == self.fenced {
            return Vec::new();
        }
        self.fenced = fenced;
        if !fenced {
            tracing::debug!("this agent's heartbeat is fresh; it may write targets");
            return Vec::new();
        }
        let writing: Vec<(TargetKey, Duration)> = self
            .targets
            .iter()
            .filter(|(_, e)| matches!(e.state, State::Writing | State::Releasing { .. }))
            .map(|(k, e)| (*k, e.interval))
            .collect();
        if writing.is_empty() {
            // Starting (not in the ring yet) or nothing written: nothing to stop.
            tracing::debug!("this agent's heartbeat is not fresh; it writes no target");
            return Vec::new();
        }
        tracing::warn!(
            targets = writing.len(),
            "this agent is about to be judged dead (neither its ring heartbeat nor its sharding key landed for most of heartbeat_timeout: the KV store or this host is slow); it stops writing its targets until one is fresh again, so that no target gets two writers"
        );
        let mut actions = Vec::new();
        for (key, interval) in writing {
            self.set(key, State::Flushing, interval, now, 0);
            actions.push(Action::Release(key));
        }
        actions
    }

    /// Whether this agent is fenced (see [`Handoffs::fence`]).
    pub fn fenced(&self) -> bool {
        self.fenced
    }

    /// The latest released time of `key`, from the peers or this agent's own entries.
    fn released_ms(&self, key: TargetKey, peers: &Peers) -> Option<i64> {
        let theirs = peers.released.get(&key).copied().flatten();
        let ours = self.released.get(&key).and_then(|r| r.last_ms);
        theirs.max(ours)
    }

    /// The earliest instant a timeout can change something (for the runtime's timer).
    pub fn next_deadline(&self) -> Option<Instant> {
        let targets = self.targets.values().filter_map(|e| match e.state {
            State::Incoming { .. } => Some(e.since + decide_timeout(e.interval)),
            State::Releasing { .. } => Some(e.since + release_timeout(e.interval)),
            _ => None,
        });
        targets
            .chain(self.released.values().map(|r| r.expires))
            .chain(self.started.values().copied())
            .min()
    }

    /// Whether the published lists changed since the last call.
    pub fn take_dirty(&mut self) -> bool {
        std::mem::take(&mut self.dirty)
    }

    /// The lists of this agent's key, sorted.
    pub fn published(&self) -> Published {
        let mut ready = Vec::new();
        let mut releasing = Vec::new();
        for (k, e) in &self.targets {
            match e.state {
                State::Incoming { ready: true } => ready.push(*k),
                // Until its last samples are delivered (`flushed`), a released target is still
                // this agent's: the next writer must wait for its `released` entry.
                State::Releasing { .. } | State::Flushing => releasing.push(*k),
                _ => {}
            }
        }
        let mut released: Vec<(TargetKey, Option<i64>)> =
            self.released.iter().map(|(k, r)| (*k, r.last_ms)).collect();
        let mut started: Vec<TargetKey> = self.started.keys().copied().collect();
        ready.sort();
        releasing.sort();
        released.sort();
        started.sort();
        Published {
            ready,
            releasing,
            released,
            started,
        }
    }

    /// Targets this agent writes (including those it is releasing).
    pub fn writing(&self) -> usize {
        self.targets
            .values()
            .filter(|e| matches!(e.state, State::Writing | State::Releasing { .. }))
            .count()
    }

    /// Whether the target is written here (appending).
    pub fn is_writer(&self, key: TargetKey) -> bool {
        self.targets
            .get(&key)
            .is_some_and(|e| matches!(e.state, State::Writing | State::Releasing { .. }))
    }

    /// The state of `key` for `agentctl ring owner`: `incoming`, `ready`, `writing`,
    /// `releasing`, `flushing`, `released`, or `None`.
    pub fn describe(&self, key: TargetKey) -> Option<&'static str> {
        match self.targets.get(&key).map(|e| &e.state) {
            Some(State::Incoming { ready: false }) => Some("incoming"),
            Some(State::Incoming { ready: true }) => Some("ready"),
            Some(State::Writing) => Some("writing"),
            Some(State::Releasing { .. }) => Some("releasing"),
            Some(State::Flushing) => Some("flushing"),
            None => self.released.contains_key(&key).then_some("released"),
        }
    }

    /// Nothing left to hand over: no target releasing or flushing (a leaving agent may go).
    pub fn handed_over(&self) -> bool {
        !self
            .targets
            .values()
            .any(|e| matches!(e.state, State::Releasing { .. } | State::Flushing))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const I: Duration = Duration::from_secs(5);
    const X: TargetKey = TargetKey(0x10);
    const Y: TargetKey = TargetKey(0x20);

    /// One simulated agent: its handoffs and what it publishes.
    struct Agent {
        id: &'static str,
        h: Handoffs,
        live: bool,
    }

    impl Agent {
        fn new(id: &'static str) -> Agent {
            Agent {
                id,
                h: Handoffs::new(),
                live: true,
            }
        }

        fn status(&self) -> AgentStatus {
            let Published {
                ready,
                releasing,
                released,
                started,
            } = self.h.published();
            AgentStatus {
                v: 1,
                addr: self.id.into(),
                epoch: self.h.epoch(),
                ready,
                releasing,
                released,
                started,
                targets: self.h.writing(),
                active_series: 0,
                updated_ms: 0,
            }
        }
    }

    /// The peers of `me` among `all`.
    fn peers(all: &[&Agent], me: &str) -> Peers {
        let statuses: Vec<(String, AgentStatus, bool)> = all
            .iter()
            .filter(|a| a.id != me)
            .map(|a| (a.id.to_owned(), a.status(), a.live))
            .collect();
        Peers::new(statuses.iter().map(|(id, s, l)| (id.as_str(), s, *l)))
    }

    fn mine(keys: &[TargetKey]) -> HashMap<TargetKey, Duration> {
        keys.iter().map(|k| (*k, I)).collect()
    }

    fn owner(of: &'static str) -> impl Fn(TargetKey) -> Option<String> {
        move |_| Some(of.to_owned())
    }

    /// A writes X at epoch 1 (first assignment, nobody else around).
    fn a_writes_x(t0: Instant) -> Agent {
        let mut a = Agent::new("a");
        let acts = a.h.apply_epoch(1, &mine(&[X]), owner("a"), t0, 0);
        assert_eq!(acts, vec![Action::Hold(X)]);
        let acts = a.h.evaluate(&Peers::default(), t0);
        assert_eq!(
            acts,
            vec![Action::Write {
                key: X,
                after_ms: None
            }]
        );
        assert!(a.h.is_writer(X));
        a
    }

    #[test]
    fn a_new_target_is_written_once_every_live_agent_applied_the_epoch() {
        let t0 = Instant::now();
        let mut a = Agent::new("a");
        let b = Agent::new("b"); // still at epoch 0
        assert_eq!(
            a.h.apply_epoch(1, &mine(&[X]), owner("a"), t0, 0),
            vec![Action::Hold(X)]
        );
        assert!(
            a.h.evaluate(&peers(&[&a, &b], "a"), t0).is_empty(),
            "b has not applied 1"
        );
        let mut b = b;
        b.h.apply_epoch(1, &HashMap::new(), owner("a"), t0, 0);
        assert_eq!(
            a.h.evaluate(&peers(&[&a, &b], "a"), t0),
            vec![Action::Write {
                key: X,
                after_ms: None
            }]
        );
    }

    #[test]
    fn make_before_break_with_the_cutoff_after_the_old_writers_last_scrape() {
        let t0 = Instant::now();
        let mut a = a_writes_x(t0);
        let mut b = Agent::new("b");
        // Epoch 2 moves X to b. b applies first: it holds, and must wait for a.
        assert_eq!(
            b.h.apply_epoch(2, &mine(&[X]), owner("b"), t0, 0),
            vec![Action::Hold(X)]
        );
        assert!(b.h.evaluate(&peers(&[&a, &b], "b"), t0).is_empty());
        assert!(a
            .h
            .apply_epoch(2, &HashMap::new(), owner("b"), t0, 0)
            .is_empty());
        assert_eq!(a.h.published().releasing, vec![X], "a lists X releasing");
        assert!(a.h.is_writer(X), "a keeps writing until b is ready");
        // b has applied 2 and a too, but a releases X: b keeps holding.
        assert!(b.h.evaluate(&peers(&[&a, &b], "b"), t0).is_empty());
        assert!(
            a.h.evaluate(&peers(&[&a, &b], "a"), t0).is_empty(),
            "b not ready yet"
        );
        // b's first successful scrape.
        b.h.scraped(X);
        assert_eq!(b.h.published().ready, vec![X]);
        assert_eq!(
            a.h.evaluate(&peers(&[&a, &b], "a"), t0),
            vec![Action::Release(X)]
        );
        assert_eq!(a.h.describe(X), Some("flushing"));
        assert!(!a.h.handed_over());
        assert_eq!(
            a.h.published().releasing,
            vec![X],
            "a lists X until it is flushed"
        );
        assert!(
            b.h.evaluate(&peers(&[&a, &b], "b"), t0).is_empty(),
            "a's last samples are not delivered yet: b keeps holding"
        );
        // a's last appended scrape was at 1_000_000 ms, now delivered.
        assert!(a.h.flushed(X, Some(1_000_000), false, t0, 0).is_empty());
        assert_eq!(a.h.published().released, vec![(X, Some(1_000_000))]);
        assert!(a.h.handed_over());
        assert_eq!(
            b.h.evaluate(&peers(&[&a, &b], "b"), t0),
            vec![Action::Write {
                key: X,
                after_ms: Some(1_002_500)
            }]
        );
        assert!(b.h.is_writer(X));
        assert!(
            b.h.published().ready.is_empty(),
            "b no longer lists X ready"
        );
    }

    #[test]
    fn a_dead_writer_is_not_waited_for() {
        let t0 = Instant::now();
        let mut a = a_writes_x(t0);
        a.live = false;
        let mut b = Agent::new("b");
        b.h.apply_epoch(2, &mine(&[X]), owner("b"), t0, 0);
        // a still lists nothing (it never saw epoch 2) and is not live: b writes at once.
        assert_eq!(
            b.h.evaluate(&peers(&[&a, &b], "b"), t0),
            vec![Action::Write {
                key: X,
                after_ms: None
            }]
        );
    }

    #[test]
    fn a_writer_judged_dead_stops_as_soon_as_the_new_owner_writes() {
        let t0 = Instant::now();
        let mut a = a_writes_x(t0);
        let mut b = Agent::new("b");
        // a's heartbeat looked stale: epoch 2 gives X to b, which does not wait for a.
        a.live = false;
        b.h.apply_epoch(2, &mine(&[X]), owner("b"), t0, 0);
        assert_eq!(
            b.h.evaluate(&peers(&[&a, &b], "b"), t0),
            vec![Action::Write {
                key: X,
                after_ms: None
            }]
        );
        assert_eq!(b.h.published().started, vec![X]);
        // a is alive after all: it applies epoch 2 and would wait for a `ready` that never
        // comes (b writes already) until its release timeout. b's `started` stops it at once.
        a.live = true;
        assert!(a
            .h
            .apply_epoch(2, &HashMap::new(), owner("b"), t0, 0)
            .is_empty());
        assert_eq!(
            a.h.evaluate(&peers(&[&a, &b], "a"), t0),
            vec![Action::Release(X)]
        );
        assert!(!a.h.is_writer(X));
        // A `started` entry of a member that is not X's owner in a's epoch does not count.
        let mut c = Agent::new("c");
        let mut a2 = a_writes_x(t0);
        a2.h.apply_epoch(2, &HashMap::new(), owner("c"), t0, 0);
        c.h.apply_epoch(2, &mine(&[X]), owner("c"), t0, 0);
        assert!(a2.h.evaluate(&peers(&[&a2, &b, &c], "a"), t0).is_empty());
    }

    #[test]
    fn a_fenced_agent_stops_writing_and_writes_again_after_its_own_release() {
        let t0 = Instant::now();
        let mut a = a_writes_x(t0);
        assert_eq!(a.h.published().started, vec![X]);
        // Its own heartbeat is about to look stale: it stops X (flushing, still listed as
        // releasing until delivered).
        assert_eq!(a.h.fence(true, t0), vec![Action::Release(X)]);
        assert!(a.h.fenced());
        assert!(!a.h.is_writer(X));
        assert!(a.h.published().started.is_empty());
        assert_eq!(a.h.published().releasing, vec![X]);
        assert!(a.h.fence(true, t0).is_empty(), "fencing twice does nothing");
        // Delivered; X is still its own: it holds, and while fenced never writes, not even
        // after the undecided timeout.
        assert_eq!(
            a.h.flushed(X, Some(10_000), true, t0, 0),
            vec![Action::Hold(X)]
        );
        assert!(a
            .h
            .evaluate(&Peers::default(), t0 + decide_timeout(I) + I)
            .is_empty());
        // Fresh again: it writes X after its last delivered scrape.
        assert!(a.h.fence(false, t0).is_empty());
        assert_eq!(
            a.h.evaluate(&Peers::default(), t0),
            vec![Action::Write {
                key: X,
                after_ms: Some(12_500)
            }]
        );
    }

    #[test]
    fn a_released_entry_of_an_agent_that_left_still_gives_the_cutoff() {
        let t0 = Instant::now();
        let mut a = a_writes_x(t0);
        let mut b = Agent::new("b");
        a.h.apply_epoch(2, &HashMap::new(), owner("b"), t0, 0);
        b.h.apply_epoch(2, &mine(&[X]), owner("b"), t0, 0);
        // a gives up waiting (b cannot scrape X yet) and releases; then a leaves the ring.
        let late = t0 + release_timeout(I);
        assert_eq!(
            a.h.evaluate(&peers(&[&a, &b], "a"), late),
            vec![Action::Release(X)]
        );
        a.h.flushed(X, Some(7_000), false, late, 0);
        a.live = false;
        assert_eq!(
            b.h.evaluate(&peers(&[&a, &b], "b"), late),
            vec![Action::Write {
                key: X,
                after_ms: Some(9_500)
            }]
        );
    }

    #[test]
    fn a_peer_ahead_means_this_agent_is_behind_and_waits() {
        let t0 = Instant::now();
        let mut a = Agent::new("a");
        let mut b = Agent::new("b");
        a.h.apply_epoch(1, &mine(&[X]), owner("a"), t0, 0);
        // b is at epoch 2 already (where X may well be b's): a must not start writing X.
        b.h.apply_epoch(2, &mine(&[X]), owner("b"), t0, 0);
        assert!(a.h.evaluate(&peers(&[&a, &b], "a"), t0).is_empty());
        // a catches up: X is not its own, it drops the hold.
        assert_eq!(
            a.h.apply_epoch(2, &HashMap::new(), owner("b"), t0, 0),
            vec![Action::Drop(X)]
        );
        assert_eq!(
            b.h.evaluate(&peers(&[&a, &b], "b"), t0),
            vec![Action::Write {
                key: X,
                after_ms: None
            }]
        );
    }

    #[test]
    fn a_chain_of_moves_handshakes_with_whoever_writes() {
        let t0 = Instant::now();
        let mut a = a_writes_x(t0);
        let mut b = Agent::new("b");
        let mut c = Agent::new("c");
        a.h.apply_epoch(2, &HashMap::new(), owner("b"), t0, 0);
        b.h.apply_epoch(2, &mine(&[X]), owner("b"), t0, 0);
        c.h.apply_epoch(2, &HashMap::new(), owner("b"), t0, 0);
        b.h.scraped(X);
        // Before a reacts, epoch 3 moves X on to c.
        assert_eq!(
            b.h.apply_epoch(3, &HashMap::new(), owner("c"), t0, 0),
            vec![Action::Drop(X)]
        );
        assert!(a
            .h
            .apply_epoch(3, &HashMap::new(), owner("c"), t0, 0)
            .is_empty());
        assert_eq!(
            c.h.apply_epoch(3, &mine(&[X]), owner("c"), t0, 0),
            vec![Action::Hold(X)]
        );
        // a waits for c (b's old ready no longer counts: b is not the owner).
        assert!(a.h.evaluate(&peers(&[&a, &b, &c], "a"), t0).is_empty());
        assert!(c.h.evaluate(&peers(&[&a, &b, &c], "c"), t0).is_empty());
        c.h.scraped(X);
        assert_eq!(
            a.h.evaluate(&peers(&[&a, &b, &c], "a"), t0),
            vec![Action::Release(X)]
        );
        a.h.flushed(X, Some(5_000), false, t0, 0);
        assert_eq!(
            c.h.evaluate(&peers(&[&a, &b, &c], "c"), t0),
            vec![Action::Write {
                key: X,
                after_ms: Some(7_500)
            }]
        );
    }

    #[test]
    fn moving_back_while_releasing_keeps_writing() {
        let t0 = Instant::now();
        let mut a = a_writes_x(t0);
        a.h.apply_epoch(2, &HashMap::new(), owner("b"), t0, 0);
        assert_eq!(a.h.describe(X), Some("releasing"));
        assert!(a
            .h
            .apply_epoch(3, &mine(&[X]), owner("a"), t0, 0)
            .is_empty());
        assert_eq!(a.h.describe(X), Some("writing"));
        assert!(a.h.published().releasing.is_empty());
    }

    #[test]
    fn moving_back_while_flushing_holds_again_and_cuts_after_its_own_release() {
        let t0 = Instant::now();
        let mut a = a_writes_x(t0);
        let mut b = Agent::new("b");
        a.h.apply_epoch(2, &HashMap::new(), owner("b"), t0, 0);
        b.h.apply_epoch(2, &mine(&[X]), owner("b"), t0, 0);
        b.h.scraped(X);
        assert_eq!(
            a.h.evaluate(&peers(&[&a, &b], "a"), t0),
            vec![Action::Release(X)]
        );
        // Epoch 3 gives X back to a while it flushes.
        assert!(a
            .h
            .apply_epoch(3, &mine(&[X]), owner("a"), t0, 0)
            .is_empty());
        assert_eq!(
            b.h.apply_epoch(3, &HashMap::new(), owner("a"), t0, 0),
            vec![Action::Drop(X)]
        );
        assert_eq!(
            a.h.flushed(X, Some(4_000), true, t0, 0),
            vec![Action::Hold(X)]
        );
        assert_eq!(
            a.h.evaluate(&peers(&[&a, &b], "a"), t0),
            vec![Action::Write {
                key: X,
                after_ms: Some(6_500)
            }]
        );
    }

    #[test]
    fn undecided_after_the_timeout_writes_with_a_conservative_cutoff() {
        let t0 = Instant::now();
        let mut a = a_writes_x(t0);
        let mut b = Agent::new("b");
        a.h.apply_epoch(2, &HashMap::new(), owner("b"), t0, 0);
        b.h.apply_epoch(2, &mine(&[X]), owner("b"), t0, 1_000_000);
        // The store goes away: b never sees a's release. Before the timeout b waits.
        let stale = peers(&[&a, &b], "b");
        assert!(b
            .h
            .evaluate(&stale, t0 + decide_timeout(I) - Duration::from_millis(1))
            .is_empty());
        let acts = b.h.evaluate(&stale, t0 + decide_timeout(I));
        // a stops on its own after release_timeout (20 s); b keeps what came after + I/2.
        assert_eq!(
            acts,
            vec![Action::Write {
                key: X,
                after_ms: Some(1_022_500)
            }]
        );
        // Only its `started` entry expires later.
        assert_eq!(
            b.h.next_deadline(),
            Some(t0 + decide_timeout(I) + keep_released(I))
        );
    }

    #[test]
    fn deadlines_and_released_entries_expire() {
        let t0 = Instant::now();
        let mut a = a_writes_x(t0);
        a.h.apply_epoch(2, &HashMap::new(), owner("b"), t0, 0);
        assert_eq!(a.h.next_deadline(), Some(t0 + release_timeout(I)));
        a.h.evaluate(&Peers::default(), t0 + release_timeout(I));
        a.h.flushed(X, None, false, t0 + release_timeout(I), 0);
        let expiry = t0 + release_timeout(I) + keep_released(I);
        assert_eq!(a.h.next_deadline(), Some(expiry));
        assert!(a.h.take_dirty());
        a.h.evaluate(&Peers::default(), expiry);
        assert!(a.h.take_dirty());
        assert_eq!(a.h.published(), Published::default());
        assert_eq!(a.h.describe(X), None);
    }

    #[test]
    fn forget_drops_any_state_and_unknown_events_are_ignored() {
        let t0 = Instant::now();
        let mut a = a_writes_x(t0);
        a.h.scraped(Y);
        assert!(a.h.flushed(Y, Some(1), false, t0, 0).is_empty());
        a.h.forget(X);
        assert_eq!(a.h.writing(), 0);
        assert_eq!(a.h.describe(X), None);
    }
}
