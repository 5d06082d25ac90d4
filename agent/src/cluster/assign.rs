//! Target assignment in target sharding mode: which agent scrapes which target.
//!
//! Pure code: the leader (see `agent/src/cluster/mod.rs`) feeds it the published targets, the
//! eligible members and the previous assignment, and writes what it returns.
//!
//! # The rule
//!
//! * **Capacity cap.** With `T` targets and `N` eligible members, every member holds at most
//!   `cap = ceil(T × load_factor / N)` targets (`load_factor` ≥ 1; 1 by default), so the busiest
//!   member holds at most `cap / (T / N)` of the average.
//! * **Sticky.** A target stays with its previous owner while that owner is eligible and within
//!   the cap. Nothing else moves it.
//! * **Eviction.** A member over the cap (a join lowered it, or targets were added while it was
//!   full) gives up the targets with the lowest rendezvous score for it: the ones a stateless
//!   rendezvous hash would have moved away from it first.
//! * **Placement.** New targets, targets whose owner left, and evicted ones are placed in
//!   ascending key order, each on the least-loaded member below the cap, the highest rendezvous
//!   score among equally loaded ones. Filling the least loaded first keeps every member within
//!   one target of the others, so a later join has to evict only what fills the new member.
//!   (Placing on the highest-scored member with room instead leaves some members well below
//!   the cap; a join then evicts more than the new member can take and the rest moves between
//!   old members: 1.6 times the ideal movement at 100 agents in `agent/src/cluster/sim.rs`.)
//!
//! The rendezvous score of target key `k` for a member is [`score`]`(k, member_seed(id))`:
//!
//! ```text
//! member_seed(id) = xxHash64(seed 0, id as UTF-8)
//! score(k, s)     = fmix64(k XOR s)        (MurmurHash3's 64-bit finalizer)
//! ```
//!
//! Written out because it decides which targets an over-full member gives up, and `agentctl ring
//! owner` recomputes it to say so: it must be the same on every agent and every version.
//!
//! A join therefore moves what fills the new member (about `T / (N + 1)`), a graceful leave or
//! a failure moves exactly the leaver's targets, and a change of the target set moves nothing
//! unless it lowers the cap below what a member holds. The figures, measured against
//! config-level FNV-1 and stateless rendezvous, are in `agent/src/cluster/sim.rs`.

/// Rendezvous score of target `key` for the member with seed `seed` (see the module docs).
pub fn score(key: u64, seed: u64) -> u64 {
    let mut h = key ^ seed;
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    h
}

/// The rendezvous seed of a member ID.
pub fn member_seed(id: &str) -> u64 {
    twox_hash::XxHash64::oneshot(0, id.as_bytes())
}

/// The eligible members, in a fixed order (indexes refer to it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Members {
    ids: Vec<String>,
    seeds: Vec<u64>,
}

impl Members {
    pub fn new<I, S>(ids: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let ids: Vec<String> = ids.into_iter().map(Into::into).collect();
        let seeds = ids.iter().map(|id| member_seed(id)).collect();
        Members { ids, seeds }
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    pub fn ids(&self) -> &[String] {
        &self.ids
    }

    pub fn index_of(&self, id: &str) -> Option<u32> {
        self.ids.iter().position(|m| m == id).map(|i| i as u32)
    }

    /// The member with the highest score for `key` (stateless rendezvous); `None` when empty.
    pub fn best(&self, key: u64) -> Option<u32> {
        (0..self.seeds.len())
            .max_by_key(|&m| score(key, self.seeds[m]))
            .map(|m| m as u32)
    }

    /// Members ordered by their score for `key`, best first.
    pub fn ranked(&self, key: u64) -> Vec<u32> {
        let mut order: Vec<u32> = (0..self.ids.len() as u32).collect();
        order.sort_by_key(|&m| std::cmp::Reverse(score(key, self.seeds[m as usize])));
        order
    }
}

/// The capacity of each member for `targets` targets over `members` members.
pub fn capacity(targets: usize, members: usize, load_factor: f64) -> usize {
    if members == 0 {
        return 0;
    }
    if load_factor <= 1.0 {
        return targets.div_ceil(members);
    }
    ((targets as f64 * load_factor) / members as f64).ceil() as usize
}

/// The result of [`assign`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The owner of each key (an index into the members), in the order the keys were given;
    /// `None` only when there are no members.
    pub owners: Vec<Option<u32>>,
    /// Targets per member.
    pub counts: Vec<usize>,
    pub cap: usize,
}

impl Plan {
    /// The busiest member's load over the average (1.0 when empty).
    pub fn max_over_mean(&self) -> f64 {
        max_over_mean(&self.counts)
    }
}

/// `max / mean` of `counts` (1.0 for an empty or all-zero list).
pub fn max_over_mean(counts: &[usize]) -> f64 {
    let total: usize = counts.iter().sum();
    if counts.is_empty() || total == 0 {
        return 1.0;
    }
    let max = counts.iter().copied().max().unwrap_or(0);
    max as f64 * counts.len() as f64 / total as f64
}

/// Assigns `keys` (distinct target keys) to `members` (see the module docs). `previous[i]` is
/// the previous owner of `keys[i]` as an index into `members`, `None` for a new target or one
/// whose owner is no longer eligible.
pub fn assign(keys: &[u64], members: &Members, previous: &[Option<u32>], load_factor: f64) -> Plan {
    debug_assert_eq!(keys.len(), previous.len());
    let n = members.len();
    if n == 0 {
        return Plan {
            owners: vec![None; keys.len()],
            counts: Vec::new(),
            cap: 0,
        };
    }
    let cap = capacity(keys.len(), n, load_factor);
    let mut owners: Vec<Option<u32>> = previous
        .iter()
        .map(|p| p.filter(|&m| (m as usize) < n))
        .collect();
    let mut held: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (i, o) in owners.iter().enumerate() {
        if let Some(m) = o {
            held[*m as usize].push(i);
        }
    }
    let mut counts: Vec<usize> = held.iter().map(Vec::len).collect();
    for (m, mine) in held.iter_mut().enumerate() {
        if mine.len() <= cap {
            continue;
        }
        let seed = members.seeds[m];
        mine.sort_by_key(|&i| (score(keys[i], seed), keys[i]));
        let excess = mine.len() - cap;
        for &i in &mine[..excess] {
            owners[i] = None;
        }
        counts[m] = cap;
    }
    let mut unplaced: Vec<usize> = (0..keys.len()).filter(|&i| owners[i].is_none()).collect();
    unplaced.sort_by_key(|&i| keys[i]);
    for i in unplaced {
        let key = keys[i];
        // (count, score, member): the lowest count wins, then the highest score.
        let mut best: Option<(usize, u64, usize)> = None;
        for (m, &seed) in members.seeds.iter().enumerate() {
            let c = counts[m];
            if c >= cap || best.is_some_and(|(bc, _, _)| c > bc) {
                continue;
            }
            let s = score(key, seed);
            if best.is_none_or(|(bc, bs, _)| c < bc || s > bs) {
                best = Some((c, s, m));
            }
        }
        // cap × n >= keys.len(), so some member always has room.
        let (_, _, m) = best.expect("total capacity covers every target");
        owners[i] = Some(m as u32);
        counts[m] += 1;
    }
    Plan {
        owners,
        counts,
        cap,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ring::tokens::TokenRng;

    fn keys(n: usize, seed: u64) -> Vec<u64> {
        let mut rng = TokenRng::with_seed(seed);
        (0..n).map(|_| rng.next_u64()).collect()
    }

    fn members(n: usize) -> Members {
        Members::new((1..=n).map(|i| format!("agent-{i:02}")))
    }

    /// The previous owners of `keys` under `plan` (made over `from`), as indexes into `to`.
    fn carry(plan: &Plan, from: &Members, to: &Members) -> Vec<Option<u32>> {
        plan.owners
            .iter()
            .map(|o| o.and_then(|m| to.index_of(&from.ids()[m as usize])))
            .collect()
    }

    #[test]
    fn score_and_seed_are_pinned() {
        // `agentctl ring owner` and every agent recompute these: they must never change.
        assert_eq!(member_seed(""), 0xef46_db37_51d8_e999);
        assert_eq!(score(0, 0), 0);
        assert_eq!(score(1, 0), 0xb456_bcfc_34c2_cb2c);
        assert_eq!(
            score(0x1234, member_seed("agent-01")),
            score(0x1234 ^ member_seed("agent-01"), 0)
        );
    }

    #[test]
    fn empty_inputs() {
        let p = assign(&[1, 2], &Members::default(), &[None, None], 1.0);
        assert_eq!(p.owners, vec![None, None]);
        let p = assign(&[], &members(3), &[], 1.0);
        assert_eq!(p.counts, vec![0, 0, 0]);
        assert_eq!(p.max_over_mean(), 1.0);
    }

    #[test]
    fn cap_holds_and_everything_is_placed() {
        for (t, n) in [(1, 1), (7, 3), (10, 4), (1000, 7), (1001, 10)] {
            let ks = keys(t, t as u64);
            let m = members(n);
            let p = assign(&ks, &m, &vec![None; t], 1.0);
            assert!(p.owners.iter().all(Option::is_some));
            assert_eq!(p.cap, t.div_ceil(n));
            assert!(
                p.counts.iter().all(|&c| c <= p.cap),
                "{t}/{n}: {:?}",
                p.counts
            );
            assert_eq!(p.counts.iter().sum::<usize>(), t);
        }
    }

    #[test]
    fn same_input_same_plan_whatever_the_key_order() {
        let ks = keys(500, 1);
        let m = members(5);
        let a = assign(&ks, &m, &vec![None; ks.len()], 1.0);
        let mut rev = ks.clone();
        rev.reverse();
        let b = assign(&rev, &m, &vec![None; rev.len()], 1.0);
        for (i, k) in ks.iter().enumerate() {
            let j = rev.iter().position(|x| x == k).unwrap();
            assert_eq!(a.owners[i], b.owners[j]);
        }
    }

    #[test]
    fn unchanged_input_moves_nothing() {
        let ks = keys(1000, 2);
        let m = members(7);
        let a = assign(&ks, &m, &vec![None; ks.len()], 1.0);
        let b = assign(&ks, &m, &a.owners, 1.0);
        assert_eq!(a, b);
    }

    #[test]
    fn a_join_moves_only_onto_the_new_member_and_a_leave_only_the_leavers() {
        let ks = keys(10_000, 3);
        let nine = members(9);
        let ten = members(10);
        let before = assign(&ks, &nine, &vec![None; ks.len()], 1.0);
        let after = assign(&ks, &ten, &carry(&before, &nine, &ten), 1.0);
        let new = ten.index_of("agent-10").unwrap();
        let mut moved = 0;
        for (b, a) in before.owners.iter().zip(&after.owners) {
            let b = ten.index_of(&nine.ids()[b.unwrap() as usize]);
            if b != *a {
                moved += 1;
                assert_eq!(*a, Some(new), "a target moved between old members");
            }
        }
        assert_eq!(moved, after.counts[new as usize]);
        assert!(moved <= 1000, "{moved}");

        // agent-03 leaves: only its targets move.
        let left = Members::new(ten.ids().iter().filter(|id| *id != "agent-03").cloned());
        let gone = ten.index_of("agent-03").unwrap();
        let after_leave = assign(&ks, &left, &carry(&after, &ten, &left), 1.0);
        for (b, a) in after.owners.iter().zip(&after_leave.owners) {
            let b = b.unwrap();
            let a_id = &left.ids()[a.unwrap() as usize];
            if b != gone {
                assert_eq!(
                    &ten.ids()[b as usize],
                    a_id,
                    "a target of a member that stayed moved"
                );
            }
        }
    }

    #[test]
    fn evicts_the_lowest_scored_targets() {
        let ks = keys(100, 4);
        let one = members(1);
        let all_on_one = vec![Some(0); ks.len()];
        let two = members(2);
        let p = assign(&ks, &two, &all_on_one, 1.0);
        assert_eq!(p.counts, vec![50, 50]);
        let seed = member_seed("agent-01");
        let kept_min = ks
            .iter()
            .zip(&p.owners)
            .filter(|(_, o)| **o == Some(0))
            .map(|(k, _)| score(*k, seed))
            .min()
            .unwrap();
        let evicted_max = ks
            .iter()
            .zip(&p.owners)
            .filter(|(_, o)| **o == Some(1))
            .map(|(k, _)| score(*k, seed))
            .max()
            .unwrap();
        assert!(evicted_max < kept_min);
        drop(one);
    }

    #[test]
    fn load_factor_allows_slack() {
        assert_eq!(capacity(1000, 10, 1.0), 100);
        assert_eq!(capacity(1000, 10, 1.05), 105);
        assert_eq!(capacity(1001, 10, 1.0), 101);
        assert_eq!(capacity(5, 0, 1.0), 0);
    }
}
