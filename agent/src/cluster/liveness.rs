//! Whether a ring member is alive for target sharding: its ring heartbeat **or** its agent key
//! (`sharding/agents/<id>`, see `agent/src/cluster/store.rs`), whichever is newer, is at most
//! `heartbeat_timeout` old.
//!
//! Why not the heartbeat alone: every heartbeat is a compare-and-swap of the one ring key all
//! members write (the old agent's ring format). With many members heartbeating often and a
//! store whose writes are slow (etcd's fsync on a busy disk), a live member's heartbeat can lose
//! that race on every retry for longer than `heartbeat_timeout` (measured by
//! `tests/sharding.rs`'s 10-agent test: ten lost attempts in a row, 21 s between two landed
//! heartbeats at a 15 s timeout, and the warning `ring heartbeat landed late` in
//! `agent/src/ring/lifecycler.rs`). Judged by the heartbeat alone, that member's targets move
//! as from a dead agent, on top of whatever change is under way (a graceful leave in that test
//! once moved 2,369 targets instead of the leaver's 1,000). The agent key is written with a plain put (no
//! race) at least every [`key_refresh`], so a live member stays alive; a dead one writes
//! neither and stops being alive within `heartbeat_timeout` of its death, as before.
//!
//! Used alike by the assignment leader (eligible members), the handoff (live peers) and an
//! agent's own fence, so that they agree on who is alive.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::store::AgentStatus;
use crate::ring::lookup::Ring;
use crate::ring::model::InstanceDesc;

/// The longest time between two writes of an agent key (without a change, for its load figures).
pub const STATUS_REFRESH: Duration = Duration::from_secs(10);

/// How often an agent rewrites its key when nothing changed: often enough that a live agent's
/// key is never near `heartbeat_timeout` old (a third of it), at most [`STATUS_REFRESH`].
pub fn key_refresh(heartbeat_timeout: Duration) -> Duration {
    if heartbeat_timeout.is_zero() {
        return STATUS_REFRESH;
    }
    (heartbeat_timeout / 3).clamp(Duration::from_millis(100), STATUS_REFRESH)
}

/// When (Unix ms) `member` was last seen: its ring heartbeat (whole seconds) or its agent key's
/// `updated_ms`, the newer.
pub fn last_seen_ms(member: &InstanceDesc, status: Option<&AgentStatus>) -> i64 {
    let heartbeat = member.timestamp.saturating_mul(1000);
    status.map_or(heartbeat, |s| heartbeat.max(s.updated_ms))
}

/// Whether `member` is alive at `now` (see the module docs). A zero timeout disables the check.
pub fn alive(
    member: &InstanceDesc,
    status: Option<&AgentStatus>,
    heartbeat_timeout: Duration,
    now: SystemTime,
) -> bool {
    // Saturating: the timestamps come from the KV store, and one far in the past must read as
    // old, not wrap around to young.
    heartbeat_timeout.is_zero()
        || crate::clock::unix_millis(now).saturating_sub(last_seen_ms(member, status))
            <= i64::try_from(heartbeat_timeout.as_millis()).unwrap_or(i64::MAX)
}

/// How long until the first member alive at `now` stops being alive unless it is seen again:
/// when to look again (a member that dies writes nothing, so nothing else wakes anyone then).
/// `None` when nobody is alive or the timeout is zero.
pub fn next_expiry(
    ring: &Ring,
    agents: &BTreeMap<String, Arc<AgentStatus>>,
    now: SystemTime,
) -> Option<Duration> {
    let timeout = ring.heartbeat_timeout();
    if timeout.is_zero() {
        return None;
    }
    let now_ms = crate::clock::unix_millis(now);
    ring.instances()
        .iter()
        .map(|m| {
            last_seen_ms(m, agents.get(&m.id).map(|a| &**a))
                .saturating_add(i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX))
        })
        .filter(|&until| until >= now_ms)
        .min()
        .map(|until| Duration::from_millis(until.abs_diff(now_ms).saturating_add(1)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ring::model::{Desc, InstanceState};

    fn member(id: &str, heartbeat_s: i64) -> InstanceDesc {
        InstanceDesc {
            addr: format!("{id}:1"),
            timestamp: heartbeat_s,
            state: InstanceState::Active as i32,
            tokens: vec![crate::ring::hash::key_hash(id)],
            zone: String::new(),
            registered_timestamp: 0,
            id: id.into(),
        }
    }

    fn status(updated_ms: i64) -> Arc<AgentStatus> {
        Arc::new(AgentStatus {
            v: 1,
            updated_ms,
            ..AgentStatus::default()
        })
    }

    #[test]
    fn the_newer_of_heartbeat_and_key_counts() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let t = Duration::from_secs(15);
        // Heartbeat 20 s old (its CAS kept losing), key written 2 s ago: alive.
        let m = member("a", 980);
        assert!(!alive(&m, None, t, now));
        assert!(alive(&m, Some(&status(998_000)), t, now));
        // Both old: dead.
        assert!(!alive(&m, Some(&status(984_000)), t, now));
        // A fresh heartbeat with an old key: alive (the heartbeat alone, as before).
        assert!(alive(&member("b", 999), Some(&status(900_000)), t, now));
        assert!(alive(&m, None, Duration::ZERO, now), "no timeout: always");
    }

    #[test]
    fn wakes_when_the_first_live_member_would_expire() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let mut d = Desc::default();
        for m in [member("a", 999), member("b", 980), member("dead", 900)] {
            d.ingesters.insert(m.id.clone(), m);
        }
        let ring = Ring::new(d, Duration::from_secs(15));
        let mut agents = BTreeMap::new();
        agents.insert("b".to_owned(), status(996_500));
        // b: key at 996.5 s + 15 s = 1011.5 s; a: heartbeat at 999 s + 15 s = 1014 s.
        assert_eq!(
            next_expiry(&ring, &agents, now),
            Some(Duration::from_millis(11_501))
        );
        assert_eq!(key_refresh(Duration::from_secs(15)), Duration::from_secs(5));
        assert_eq!(key_refresh(Duration::from_secs(60)), STATUS_REFRESH);
    }

    /// Timestamps come from the KV store: one at either end of the range is very old or very
    /// new, never an overflow (a debug build panicked; a release build took the oldest for
    /// alive).
    #[test]
    fn timestamps_at_the_ends_of_the_range_neither_overflow_nor_wrap() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let t = Duration::from_secs(15);
        assert!(!alive(&member("old", i64::MIN), None, t, now));
        assert!(alive(&member("new", i64::MAX), None, t, now));
        assert!(alive(&member("a", 0), Some(&status(i64::MAX)), t, now));
        let mut d = Desc::default();
        for m in [member("old", i64::MIN), member("new", i64::MAX)] {
            d.ingesters.insert(m.id.clone(), m);
        }
        let ring = Ring::new(d, t);
        let far = next_expiry(&ring, &BTreeMap::new(), now).expect("one alive");
        assert!(far > Duration::from_secs(1 << 40), "{far:?}");
    }
}
