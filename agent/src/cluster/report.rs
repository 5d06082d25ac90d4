//! What target sharding tells people: the figures on the ring page and in `agentctl ring
//! status` ([`summary`]), and which agent scrapes a target and why ([`owners`], served as
//! `GET /agent/api/v1/ring/owner?target=...` and printed by `agentctl ring owner`).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::assign::{max_over_mean, member_seed, score};
use super::store::TargetKey;
use super::view::ShardState;
use crate::ring::render::{MemberTargets, TargetsSummary};

/// The ring page's figures for `state`.
pub fn summary(state: &ShardState) -> TargetsSummary {
    let a = &state.assignment;
    let counts = a.counts();
    let mut members: BTreeMap<String, MemberTargets> = BTreeMap::new();
    for (id, st) in &state.agents {
        members.insert(
            id.clone(),
            MemberTargets {
                targets: 0,
                active_series: st.active_series,
            },
        );
    }
    for (id, n) in a.members.iter().zip(&counts) {
        members.entry(id.clone()).or_default().targets = *n;
    }
    let assigned: std::collections::HashSet<TargetKey> = a
        .configs
        .iter()
        .flat_map(|c| c.keys.iter().copied())
        .collect();
    let unassigned = state
        .targets
        .values()
        .flat_map(|c| c.keys.iter())
        .filter(|k| !assigned.contains(k))
        .count();
    TargetsSummary {
        epoch: a.epoch,
        leader: a.leader.clone(),
        cap: a.cap,
        targets: state.target_count(),
        unassigned,
        balance: max_over_mean(&counts),
        members,
    }
}

/// One target matching a `ring owner` query.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OwnerAnswer {
    pub config: String,
    pub job: String,
    /// The scrape URL.
    pub url: String,
    /// Its key in the assignment.
    pub key: String,
    /// Its labels (without the reserved `__` ones).
    pub labels: BTreeMap<String, String>,
    /// The member the assignment gives it to, and that member's address.
    pub owner: Option<String>,
    pub owner_address: Option<String>,
    /// The assignment epoch, and the one since which it is on its owner.
    pub epoch: u64,
    pub since_epoch: Option<u64>,
    /// Handoff states other agents publish for it (`agent-2: releasing`, ...).
    pub handoff: Vec<String>,
    /// Why it is where it is, in a sentence or two.
    pub why: String,
}

/// The targets `query` names: a target key (16 hex digits), a scrape URL, an `__address__` or
/// an `instance` label value.
pub fn owners(state: &ShardState, query: &str) -> Vec<OwnerAnswer> {
    let q = query.trim();
    let by_key: Option<TargetKey> = q.parse().ok();
    let a = &state.assignment;
    let mut out = Vec::new();
    for (config, ct) in &state.targets {
        let owners_of = a.configs.iter().find(|c| &c.config == config);
        for ((j, i), key) in ct.positions().zip(&ct.keys) {
            let job = &ct.doc.jobs[j];
            let labels: BTreeMap<String, String> = job
                .labels(i)
                .map(|(n, v)| (n.to_owned(), v.to_owned()))
                .collect();
            let url = scrape_url(&labels);
            let hit = by_key == Some(*key)
                || url == q
                || labels.get("__address__").is_some_and(|v| v == q)
                || labels.get("instance").is_some_and(|v| v == q);
            if !hit {
                continue;
            }
            let place = owners_of.and_then(|c| {
                let at = c.keys.iter().position(|k| k == key)?;
                Some((c.owners[at], c.since[at]))
            });
            let owner = place.and_then(|(o, _)| a.members.get(o as usize).cloned());
            let owner_address = owner
                .as_ref()
                .and_then(|o| state.agents.get(o))
                .map(|s| s.addr.clone());
            let mut handoff = Vec::new();
            for (id, st) in &state.agents {
                if st.ready.contains(key) {
                    handoff.push(format!("{id}: ready (scrapes it, waits for its release)"));
                }
                if st.releasing.contains(key) {
                    handoff.push(format!("{id}: releasing (still writes it)"));
                }
                if let Some((_, last)) = st.released.iter().find(|(k, _)| k == key) {
                    handoff.push(match last {
                        Some(t) => format!("{id}: released (last scrape it wrote at {t} ms)"),
                        None => format!("{id}: released (it wrote none)"),
                    });
                }
            }
            let why = explain(state, *key, owner.as_deref(), place.map(|(_, s)| s));
            out.push(OwnerAnswer {
                config: config.clone(),
                job: job.job.clone(),
                url,
                key: key.to_string(),
                labels: labels
                    .into_iter()
                    .filter(|(n, _)| !n.starts_with("__"))
                    .collect(),
                owner,
                owner_address,
                epoch: a.epoch,
                since_epoch: place.map(|(_, s)| s),
                handoff,
                why,
            });
        }
    }
    out
}

/// The scrape URL of published labels (`Target::url`), built without the scrape config's own
/// `params` (the `__param_*` labels are in): enough to recognise a target by.
fn scrape_url(labels: &BTreeMap<String, String>) -> String {
    let l = crate::labels::Labels::from_pairs(labels.iter().map(|(n, v)| (n.as_str(), v.as_str())));
    crate::scrape::target::scrape_url(&l, &BTreeMap::new())
}

fn explain(state: &ShardState, key: TargetKey, owner: Option<&str>, since: Option<u64>) -> String {
    let a = &state.assignment;
    let Some(owner) = owner else {
        return if a.members.is_empty() {
            "not assigned: no agent is eligible (ACTIVE, alive by its heartbeat or its sharding key, in target sharding mode)".into()
        } else {
            format!(
                "not assigned yet: epoch {} does not include it (the leader assigns new targets as soon as it sees them)",
                a.epoch
            )
        };
    };
    let counts = a.counts();
    let held = a
        .members
        .iter()
        .position(|m| m == owner)
        .map_or(0, |i| counts[i]);
    // Where it stands among the owner's targets if the owner must give some up.
    let seed = member_seed(owner);
    let mine: Vec<u64> = a
        .configs
        .iter()
        .flat_map(|c| c.keys.iter().zip(&c.owners))
        .filter(|(_, &o)| a.members.get(o as usize).is_some_and(|m| m == owner))
        .map(|(k, _)| score(k.0, seed))
        .collect();
    let s = score(key.0, seed);
    let nth = mine.iter().filter(|&&x| x < s).count() + 1;
    format!(
        "on {owner} since epoch {} ({owner} holds {held} of at most {} targets). A target stays on its agent until that agent leaves, fails or is over the cap, and is then placed on the least-loaded agent with room; if {owner} had to give targets up, this one would be number {nth} of {held} to go (lowest rendezvous score first).",
        since.unwrap_or(a.epoch),
        a.cap
    )
}

/// How the route reads the sharding state: `None` when target sharding is off.
pub type StateSource = Option<Arc<dyn Fn() -> Arc<ShardState> + Send + Sync>>;

#[derive(Deserialize)]
struct OwnerQuery {
    target: Option<String>,
}

/// `GET /agent/api/v1/ring/owner?target=...`: `{"status":"success","data":[OwnerAnswer...]}`;
/// 400 without `target`, 404 when nothing matches or target sharding is off.
pub fn router(source: StateSource) -> Router {
    Router::new()
        .route("/agent/api/v1/ring/owner", get(owner_route))
        .with_state(Arc::new(source))
}

fn error(code: StatusCode, msg: String) -> Response {
    (
        code,
        Json(serde_json::json!({"status": "error", "error": msg})),
    )
        .into_response()
}

async fn owner_route(
    State(source): State<Arc<StateSource>>,
    Query(q): Query<OwnerQuery>,
) -> Response {
    let Some(source) = source.as_ref() else {
        return error(
            StatusCode::NOT_FOUND,
            "target sharding is off (scraping_service.sharding: configs): each config runs whole on the ring owner of its name".into(),
        );
    };
    let Some(target) = q.target.filter(|t| !t.trim().is_empty()) else {
        return error(
            StatusCode::BAD_REQUEST,
            "the query parameter target is required: a scrape URL, an address, an instance label or a target key".into(),
        );
    };
    let answers = owners(&source(), &target);
    if answers.is_empty() {
        return error(
            StatusCode::NOT_FOUND,
            format!("no published target matches {target:?} (by scrape URL, __address__, instance label or key)"),
        );
    }
    Json(serde_json::json!({"status": "success", "data": answers})).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::leader::compute;
    use crate::cluster::store::{AgentStatus, PublishedJob, PublishedTargets};
    use crate::cluster::view::ConfigTargets;

    fn state() -> ShardState {
        let job = PublishedJob {
            job: "node".into(),
            forced_error: None,
            targets: (1..=6)
                .map(|i| {
                    [
                        ("__address__", format!("10.0.0.{i}:9100")),
                        ("__metrics_path__", "/metrics".into()),
                        ("__param_module", "x y".into()),
                        ("__scheme__", "http".into()),
                        ("instance", format!("node-{i}")),
                        ("job", "node".into()),
                    ]
                    .into_iter()
                    .flat_map(|(n, v)| [n.to_owned(), v])
                    .collect()
                })
                .collect(),
        };
        let mut s = ShardState {
            targets: [(
                "team/a".to_owned(),
                Arc::new(ConfigTargets::new(PublishedTargets {
                    v: 1,
                    config: "team/a".into(),
                    jobs: vec![job],
                })),
            )]
            .into(),
            ..ShardState::default()
        };
        for (id, series) in [("agent-1", 120), ("agent-2", 80)] {
            s.agents.insert(
                id.into(),
                Arc::new(AgentStatus {
                    v: 1,
                    addr: format!("{id}:12345"),
                    epoch: 0,
                    ready: vec![],
                    releasing: vec![],
                    released: vec![],
                    started: vec![],
                    targets: 3,
                    active_series: series,
                    updated_ms: 0,
                }),
            );
        }
        let ids = vec!["agent-1".to_owned(), "agent-2".to_owned()];
        s.assignment = Arc::new(compute(&s, &ids, "agent-1", 0, 1.0).unwrap());
        s
    }

    #[test]
    fn summary_counts_targets_series_and_balance() {
        let t = summary(&state());
        assert_eq!(t.epoch, 1);
        assert_eq!(t.targets, 6);
        assert_eq!(t.unassigned, 0);
        assert_eq!(t.cap, 3);
        assert_eq!(t.balance, 1.0);
        assert_eq!(t.members["agent-1"].targets, 3);
        assert_eq!(t.members["agent-2"].active_series, 80);
    }

    #[test]
    fn owner_by_url_address_instance_or_key() {
        let s = state();
        let by_url = owners(&s, "http://10.0.0.3:9100/metrics?module=x+y");
        assert_eq!(by_url.len(), 1, "{by_url:?}");
        let a = &by_url[0];
        assert_eq!(a.config, "team/a");
        assert_eq!(a.labels["instance"], "node-3");
        assert!(a.owner.is_some());
        assert_eq!(
            a.owner_address.as_deref(),
            Some(&*format!("{}:12345", a.owner.as_ref().unwrap()))
        );
        assert!(a.why.contains("since epoch 1"), "{}", a.why);
        assert!(a.why.contains("of at most 3 targets"), "{}", a.why);
        assert_eq!(owners(&s, "10.0.0.3:9100"), by_url);
        assert_eq!(owners(&s, "node-3"), by_url);
        assert_eq!(owners(&s, &a.key), by_url);
        assert!(owners(&s, "nothing").is_empty());
    }

    #[test]
    fn an_unassigned_target_says_so() {
        let mut s = state();
        Arc::make_mut(&mut s.assignment).configs.clear();
        let a = &owners(&s, "node-1")[0];
        assert_eq!(a.owner, None);
        assert!(a.why.starts_with("not assigned yet"), "{}", a.why);
        assert_eq!(summary(&s).unassigned, 6);
    }
}
