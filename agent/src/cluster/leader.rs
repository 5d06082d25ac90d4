//! The assignment leader: the ring owner of [`LEADER_KEY`] assigns every published target to
//! an eligible member ([`super::assign`]) and writes `sharding/assignment` with the next epoch,
//! by compare-and-swap (two agents that both believe they lead during a ring change cannot both
//! write an epoch).
//!
//! Eligible: an ACTIVE ring member that publishes an agent key (it runs in target sharding
//! mode) and is alive: its heartbeat (with the KV-outage grace of [`super::heartbeat_grace`]
//! already applied to the ring it is given) or its agent key is at most `heartbeat_timeout` old
//! (see `agent/src/cluster/liveness.rs`: a heartbeat can lose the ring key's CAS race for
//! longer than that while its member is alive). LEAVING members are not eligible, so a
//! graceful leave moves exactly the leaver's targets; a dead member stops being eligible
//! `heartbeat_timeout` after its last heartbeat or key write.
//!
//! The leader recomputes when the ring's topology or health changes, when a config's targets or
//! an agent key change, and writes only when the result differs from the assignment in the
//! store. Once a minute it also removes what nobody else will: agent keys of members gone from
//! the ring for [`AGENT_KEY_RETENTION`], targets of configs that no longer exist, and orphaned
//! chunks.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::assign::{assign, Members};
use super::liveness;
use super::store::{self, AssignmentDoc, ConfigOwners, Expect, Layout, TargetKey, FORMAT_VERSION};
use super::view::ShardState;
use crate::clock::{self, Clock};
use crate::kv::configstore::ConfigStore;
use crate::kv::KvStore;
use crate::ring::lookup::{Operation, Ring};

/// The ring key whose owner is the assignment leader (hashed with FNV-1 like a config name).
pub const LEADER_KEY: &str = "__target_assignment__";

/// How long the key of an agent that left the ring is kept (its last `released` entries are
/// still read by the agents that took its targets over).
pub const AGENT_KEY_RETENTION: Duration = Duration::from_secs(600);

/// The members eligible for targets, sorted by ID (see the module docs).
pub fn eligible(ring: &Ring, state: &ShardState, now: SystemTime) -> Vec<String> {
    let mut ids: Vec<String> = ring
        .instances()
        .iter()
        .filter(|m| Operation::Write.allows(m.instance_state()))
        .filter(|m| match state.agents.get(&m.id) {
            Some(st) => liveness::alive(m, Some(st), ring.heartbeat_timeout(), now),
            None => false,
        })
        .map(|m| m.id.clone())
        .collect();
    ids.sort();
    ids
}

/// The next assignment for `state`'s targets over `eligible` (sorted IDs), or `None` when it
/// would not change the one in `state` (or there is no member to assign to).
pub fn compute(
    state: &ShardState,
    eligible: &[String],
    leader: &str,
    now_ms: i64,
    load_factor: f64,
) -> Option<AssignmentDoc> {
    if eligible.is_empty() {
        return None;
    }
    let prev = &state.assignment;
    let members = Members::new(eligible.iter().cloned());
    // The previous owner (as an index into the new members) and since-epoch of every key.
    let mut before: HashMap<TargetKey, (Option<u32>, u64)> = HashMap::new();
    for c in &prev.configs {
        for ((k, &o), &since) in c.keys.iter().zip(&c.owners).zip(&c.since) {
            let owner = prev
                .members
                .get(o as usize)
                .and_then(|id| members.index_of(id));
            before.insert(*k, (owner, since));
        }
    }
    // Every distinct key once (a 64-bit collision makes two targets one unit).
    let mut index: HashMap<TargetKey, usize> = HashMap::new();
    let mut keys: Vec<u64> = Vec::new();
    let mut previous: Vec<Option<u32>> = Vec::new();
    for ct in state.targets.values() {
        for k in &ct.keys {
            index.entry(*k).or_insert_with(|| {
                keys.push(k.0);
                previous.push(before.get(k).and_then(|(o, _)| *o));
                keys.len() - 1
            });
        }
    }
    let plan = assign(&keys, &members, &previous, load_factor);
    // Saturating: the epochs come from the KV store. At the end of the range no plan can be
    // newer than the last one, which agents need to take it: said once per plan.
    let newest = prev
        .epoch
        .max(state.agents.values().map(|a| a.epoch).max().unwrap_or(0));
    if newest == u64::MAX {
        tracing::error!("target assignment epoch in the KV store is at its maximum (a corrupt value?); agents will not take new plans until sharding/assignment and sharding/agents/* are removed from it");
    }
    let epoch = newest.saturating_add(1);
    let configs: Vec<ConfigOwners> = state
        .targets
        .iter()
        .map(|(name, ct)| {
            let owners: Vec<u32> = ct
                .keys
                .iter()
                .map(|k| plan.owners[index[k]].unwrap_or(0))
                .collect();
            let since = ct
                .keys
                .iter()
                .zip(&owners)
                .map(|(k, &o)| match before.get(k) {
                    Some((Some(p), s)) if *p == o => *s,
                    _ => epoch,
                })
                .collect();
            ConfigOwners {
                config: name.clone(),
                keys: ct.keys.clone(),
                owners,
                since,
            }
        })
        .collect();
    let same = prev.members == members.ids()
        && prev.configs.len() == configs.len()
        && prev
            .configs
            .iter()
            .zip(&configs)
            .all(|(a, b)| a.config == b.config && a.keys == b.keys && a.owners == b.owners);
    if same && prev.epoch > 0 {
        return None;
    }
    Some(AssignmentDoc {
        v: FORMAT_VERSION,
        epoch,
        published_ms: now_ms,
        leader: leader.to_owned(),
        cap: plan.cap,
        members: members.ids().to_vec(),
        configs,
    })
}

/// What the leader needs from the cluster around it.
pub struct LeaderContext {
    pub kv: Arc<dyn KvStore>,
    pub layout: Layout,
    pub configs: Arc<ConfigStore>,
    /// This agent's ring ID and advertised address (ownership is decided by address).
    pub id: String,
    pub addr: String,
    pub clock: Clock,
    pub load_factor: f64,
    /// The ring to decide on, with the KV-outage heartbeat grace applied.
    pub ring: Box<dyn Fn() -> Ring + Send + Sync>,
}

/// Runs until `shutdown`: recomputes on every change of `ring` or `view` (see the module docs).
pub async fn run(
    cx: LeaderContext,
    mut ring: watch::Receiver<Arc<crate::ring::model::Desc>>,
    mut view: watch::Receiver<Arc<ShardState>>,
    shutdown: CancellationToken,
) {
    let mut next_gc = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut leading = false;
    // What the last computation was given: most view changes are other agents' handoff lists,
    // which do not change the assignment, and a computation is O(targets).
    let mut last_inputs: Option<Inputs> = None;
    // When a member alive now stops being alive unless seen again (nothing else wakes us then).
    let mut recheck: Option<tokio::time::Instant> = None;
    loop {
        let wake = recheck.map_or(next_gc, |r| r.min(next_gc));
        tokio::select! {
            _ = shutdown.cancelled() => return,
            r = ring.changed() => if r.is_err() { return },
            v = view.changed() => if v.is_err() { return },
            _ = tokio::time::sleep_until(wake) => {}
        }
        // Coalesce a burst (a config owner publishing many configs, a member's key and its
        // ring entry written one after the other).
        tokio::time::sleep(Duration::from_millis(50)).await;
        let r = (cx.ring)();
        let now = cx.clock.now();
        recheck = None;
        let is_leader = r.owns(LEADER_KEY, &cx.addr, now).unwrap_or(false);
        if is_leader != leading {
            leading = is_leader;
            tracing::info!(leader = is_leader, "target assignment leadership changed");
        }
        if !is_leader {
            last_inputs = None;
            continue;
        }
        let state = view.borrow_and_update().clone();
        let members = eligible(&r, &state, now);
        recheck =
            liveness::next_expiry(&r, &state.agents, now).map(|d| tokio::time::Instant::now() + d);
        let inputs = Inputs::of(&state, &members);
        if last_inputs.as_ref() != Some(&inputs) {
            let (st, m, id, lf) = (state.clone(), members, cx.id.clone(), cx.load_factor);
            let now_ms = clock::unix_millis(now);
            // O(targets) of CPU: off the async workers (heartbeats, the API, scrapes).
            let doc = tokio::task::spawn_blocking(move || compute(&st, &m, &id, now_ms, lf))
                .await
                .ok()
                .flatten();
            last_inputs = Some(inputs);
            if let Some(doc) = doc {
                publish(&cx, &state, doc).await;
                // Whatever the outcome, the view brings the assignment in the store, and
                // with it another computation.
                last_inputs = None;
            }
        }
        if tokio::time::Instant::now() >= next_gc {
            next_gc = tokio::time::Instant::now() + Duration::from_secs(60);
            if let Err(e) = gc(&cx, &r, &state, now).await {
                tracing::warn!(error = %e, "sharding: removing stale keys failed");
            }
        }
    }
}

/// Everything [`compute`] reads, by identity: the published targets and the assignment (the
/// view replaces a value's `Arc` when it changes; the snapshot is kept, so no address is
/// reused meanwhile), and the eligible members. Agents' keys matter only through eligibility,
/// and their epochs only once something is written.
struct Inputs {
    state: Arc<ShardState>,
    members: Vec<String>,
}

impl Inputs {
    fn of(state: &Arc<ShardState>, members: &[String]) -> Self {
        Inputs {
            state: state.clone(),
            members: members.to_vec(),
        }
    }
}

impl PartialEq for Inputs {
    fn eq(&self, other: &Self) -> bool {
        let (a, b) = (&self.state, &other.state);
        self.members == other.members
            && Arc::ptr_eq(&a.assignment, &b.assignment)
            && a.targets.len() == b.targets.len()
            && a.targets
                .iter()
                .zip(&b.targets)
                .all(|((n, x), (m, y))| n == m && Arc::ptr_eq(x, y))
    }
}

/// Writes `doc` if the store still holds the assignment it was computed from.
async fn publish(cx: &LeaderContext, state: &ShardState, doc: AssignmentDoc) {
    let key = cx.layout.assignment_key();
    let current = match store::read::<AssignmentDoc>(&*cx.kv, &cx.layout, &key).await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the target assignment; not writing a new one");
            return;
        }
    };
    let expect = match &current {
        Some((c, rev)) if c.epoch == state.assignment.epoch => Expect::Revision(Some(*rev)),
        None if state.assignment.epoch == 0 => Expect::Revision(None),
        // The view is behind the store: its watch brings the newer value, and a recompute.
        _ => return,
    };
    let counts = doc.counts();
    match store::write(&*cx.kv, &cx.layout, &key, &doc, expect).await {
        Ok(true) => tracing::info!(
            epoch = doc.epoch,
            members = doc.members.len(),
            targets = counts.iter().sum::<usize>(),
            cap = doc.cap,
            "target assignment written"
        ),
        Ok(false) => tracing::debug!(
            epoch = doc.epoch,
            "target assignment changed concurrently; recomputing"
        ),
        Err(e) => tracing::warn!(error = %e, "cannot write the target assignment"),
    }
}

async fn gc(
    cx: &LeaderContext,
    ring: &Ring,
    state: &ShardState,
    now: SystemTime,
) -> Result<(), store::StoreError> {
    let in_ring: BTreeSet<&str> = ring.instances().iter().map(|m| m.id.as_str()).collect();
    let now_ms = clock::unix_millis(now);
    for (id, st) in &state.agents {
        let age = Duration::from_millis(now_ms.saturating_sub(st.updated_ms).max(0) as u64);
        if !in_ring.contains(id.as_str()) && age > AGENT_KEY_RETENTION {
            tracing::info!(agent = %id, "removing the sharding key of an agent gone from the ring");
            store::delete(&*cx.kv, &cx.layout, &cx.layout.agent_key(id)).await?;
        }
    }
    match cx.configs.list().await {
        Ok(names) => {
            let names: BTreeSet<String> = names.into_iter().collect();
            for config in state.targets.keys() {
                if !names.contains(config) {
                    tracing::info!(config = %config, "removing the targets of a deleted config");
                    store::delete(&*cx.kv, &cx.layout, &cx.layout.targets_key(config)).await?;
                }
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot list configs for the sharding cleanup"),
    }
    let removed = store::gc_chunks(&*cx.kv, &cx.layout).await?;
    if !removed.is_empty() {
        tracing::info!(
            digests = removed.len(),
            "removed orphaned sharding value parts"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::store::{AgentStatus, PublishedJob, PublishedTargets};
    use crate::cluster::view::ConfigTargets;
    use crate::ring::model::{Desc, InstanceDesc, InstanceState};

    fn targets(config: &str, n: usize) -> Arc<ConfigTargets> {
        Arc::new(ConfigTargets::new(PublishedTargets {
            v: 1,
            config: config.into(),
            jobs: vec![PublishedJob {
                job: "j".into(),
                forced_error: None,
                targets: (0..n)
                    .map(|i| vec!["__address__".into(), format!("{config}-{i}:1")])
                    .collect(),
            }],
        }))
    }

    fn status(epoch: u64) -> Arc<AgentStatus> {
        Arc::new(AgentStatus {
            v: 1,
            epoch,
            ..AgentStatus::default()
        })
    }

    fn state(configs: &[(&str, usize)], agents: &[&str]) -> ShardState {
        ShardState {
            targets: configs
                .iter()
                .map(|(c, n)| ((*c).to_owned(), targets(c, *n)))
                .collect(),
            assignment: Arc::new(AssignmentDoc::empty()),
            agents: agents
                .iter()
                .map(|a| ((*a).to_owned(), status(0)))
                .collect(),
        }
    }

    fn ids(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn first_assignment_then_nothing_until_something_changes() {
        let mut s = state(&[("a", 30), ("b", 10)], &["x", "y"]);
        let doc = compute(&s, &ids(&["x", "y"]), "x", 5, 1.0).expect("first");
        assert_eq!(doc.epoch, 1);
        assert_eq!(doc.counts(), vec![20, 20]);
        assert_eq!(doc.cap, 20);
        assert!(doc.configs.iter().all(|c| c.since.iter().all(|&e| e == 1)));
        doc.validate().unwrap();
        s.assignment = Arc::new(doc.clone());
        assert!(compute(&s, &ids(&["x", "y"]), "x", 6, 1.0).is_none());

        // A third member: the cap falls to 14, epoch 2; kept targets keep since = 1.
        let doc2 = compute(&s, &ids(&["x", "y", "z"]), "x", 7, 1.0).expect("join");
        assert_eq!(doc2.epoch, 2);
        assert_eq!(doc2.counts().iter().sum::<usize>(), 40);
        assert!(doc2.counts().iter().all(|&c| c <= 14));
        let kept = doc2
            .configs
            .iter()
            .flat_map(|c| c.since.iter())
            .filter(|&&e| e == 1)
            .count();
        assert_eq!(kept, 40 - doc2.counts()[2], "only z's targets are new");
    }

    #[test]
    fn the_epoch_stays_above_what_agents_applied_after_a_reset() {
        let mut s = state(&[("a", 4)], &["x"]);
        s.agents.insert("x".into(), status(41));
        assert_eq!(compute(&s, &ids(&["x"]), "x", 0, 1.0).unwrap().epoch, 42);
        assert!(
            compute(&s, &[], "x", 0, 1.0).is_none(),
            "nobody to assign to"
        );
    }

    fn member(id: &str, state: InstanceState, ts: i64) -> InstanceDesc {
        InstanceDesc {
            addr: format!("{id}:1"),
            timestamp: ts,
            state: state as i32,
            tokens: vec![crate::ring::hash::key_hash(id)],
            zone: String::new(),
            registered_timestamp: 0,
            id: id.into(),
        }
    }

    /// A graceful leave at the moment a live member's heartbeat has lost the ring key's CAS race
    /// for longer than heartbeat_timeout (its agent key, a plain put, is fresh): only the
    /// leaver's targets move. Judged by heartbeats alone, that member's targets moved too.
    #[test]
    fn a_graceful_leave_moves_only_the_leavers_targets_while_a_heartbeat_is_late() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let now_ms = 1_000_000;
        let timeout = Duration::from_secs(15);
        let all = ["a", "b", "c", "d"];
        let mut s = state(&[("big", 300), ("small", 100)], &all);
        for id in all {
            s.agents.insert(
                id.into(),
                Arc::new(AgentStatus {
                    updated_ms: now_ms - 2_000,
                    ..(*status(1)).clone()
                }),
            );
        }
        let mut d = Desc::default();
        for id in all {
            d.ingesters
                .insert(id.into(), member(id, InstanceState::Active, 999));
        }
        let ring = Ring::new(d.clone(), timeout);
        let first = compute(&s, &eligible(&ring, &s, now), "a", now_ms, 1.0).expect("first");
        assert_eq!(first.counts(), vec![100, 100, 100, 100]);
        s.assignment = Arc::new(first.clone());

        // d leaves gracefully; c's last heartbeat that landed is 20 s old.
        d.ingesters.get_mut("d").unwrap().state = InstanceState::Leaving as i32;
        d.ingesters.get_mut("c").unwrap().timestamp = 980;
        let ring = Ring::new(d, timeout);
        let members = eligible(&ring, &s, now);
        assert_eq!(members, ids(&["a", "b", "c"]));
        let next = compute(&s, &members, "a", now_ms, 1.0).expect("leave");
        let owner = |doc: &AssignmentDoc| -> HashMap<u64, String> {
            doc.configs
                .iter()
                .flat_map(|c| {
                    c.keys
                        .iter()
                        .zip(&c.owners)
                        .map(|(k, &o)| (k.0, doc.members[o as usize].clone()))
                })
                .collect()
        };
        let (before, after) = (owner(&first), owner(&next));
        let moved: BTreeSet<u64> = before
            .iter()
            .filter(|(k, o)| after.get(*k) != Some(*o))
            .map(|(k, _)| *k)
            .collect();
        let leavers: BTreeSet<u64> = before
            .iter()
            .filter(|(_, o)| *o == "d")
            .map(|(k, _)| *k)
            .collect();
        assert_eq!(moved, leavers, "only the leaver's targets move");

        // Once c's key is as old as its heartbeat, c is dead: its targets move too.
        s.agents.insert(
            "c".into(),
            Arc::new(AgentStatus {
                updated_ms: now_ms - 16_000,
                ..(*status(1)).clone()
            }),
        );
        assert_eq!(eligible(&ring, &s, now), ids(&["a", "b"]));
    }

    #[test]
    fn eligible_members_are_healthy_active_and_publish_a_key() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let mut d = Desc::default();
        for m in [
            member("ok", InstanceState::Active, 1_000),
            member("leaving", InstanceState::Leaving, 1_000),
            member("dead", InstanceState::Active, 900),
            member("old-mode", InstanceState::Active, 1_000),
        ] {
            d.ingesters.insert(m.id.clone(), m);
        }
        let ring = Ring::new(d, Duration::from_secs(10));
        let s = state(&[], &["ok", "leaving", "dead"]);
        assert_eq!(eligible(&ring, &s, now), ids(&["ok"]));
    }
}
