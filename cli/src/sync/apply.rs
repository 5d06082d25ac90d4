//! Applying a plan: every change carries the hash it was planned against as `If-Match`
//! (`""` for a create: "must not exist"), so a config changed by someone else meanwhile is
//! reported as a conflict and never overwritten. Changes run concurrently, at most
//! [`CONCURRENCY`] at a time.

use std::sync::Arc;

use serde::Serialize;
use tokio::sync::Semaphore;

use super::plan::{Action, Plan, PlanItem};
use super::remote::Remote;
use super::SyncError;
use crate::client::ClientError;

/// Writes in flight at once.
pub const CONCURRENCY: usize = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Ok,
    /// The config changed since the plan (412); nothing was written.
    Conflict,
    /// Refused by the agent (4xx): the input's fault.
    Rejected,
    /// The agent or store failed or could not be reached.
    Failed,
}

/// What happened to one planned change.
#[derive(Debug, Clone, Serialize)]
pub struct ItemResult {
    pub name: String,
    pub action: Action,
    pub outcome: Outcome,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl ItemResult {
    /// `created a`, `conflict: …`.
    pub fn line(&self) -> String {
        let verb = match self.action {
            Action::Create => "created",
            Action::Update => "updated",
            Action::Delete => "deleted",
        };
        match (&self.outcome, &self.error) {
            (Outcome::Ok, _) => format!("{verb} {}", self.name),
            (o, e) => format!(
                "{}: {}: {}",
                match o {
                    Outcome::Conflict => "conflict",
                    Outcome::Rejected => "rejected",
                    _ => "failed",
                },
                self.name,
                e.as_deref().unwrap_or("unknown error")
            ),
        }
    }
}

/// Applies `plan` to `remote`, calling `on_result` as each change finishes (in completion
/// order). Returns the results in plan order.
pub async fn apply(
    remote: Arc<Remote>,
    plan: &Plan,
    mut on_result: impl FnMut(&ItemResult, usize, usize),
) -> Vec<ItemResult> {
    let total = plan.items.len();
    let sem = Arc::new(Semaphore::new(CONCURRENCY));
    let mut tasks = tokio::task::JoinSet::new();
    for (idx, item) in plan.items.iter().cloned().enumerate() {
        let remote = Arc::clone(&remote);
        let sem = Arc::clone(&sem);
        tasks.spawn(async move {
            // The semaphore is never closed, so acquiring only waits.
            let _permit = sem.acquire_owned().await.ok();
            (idx, apply_one(&remote, &item).await)
        });
    }
    let mut results: Vec<Option<ItemResult>> = vec![None; total];
    let mut done = 0;
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((idx, r)) => {
                done += 1;
                on_result(&r, done, total);
                if let Some(slot) = results.get_mut(idx) {
                    *slot = Some(r);
                }
            }
            Err(e) => tracing::error!(error = %e, "a config-sync task failed"),
        }
    }
    results
        .into_iter()
        .zip(&plan.items)
        .map(|(r, item)| {
            r.unwrap_or_else(|| ItemResult {
                name: item.name.clone(),
                action: item.action,
                outcome: Outcome::Failed,
                error: Some("the task did not finish".into()),
            })
        })
        .collect()
}

async fn apply_one(remote: &Remote, item: &PlanItem) -> ItemResult {
    let result = match (item.action, &item.source) {
        (Action::Create, Some(src)) => remote.put(src, Some("")).await.map(|_| ()),
        (Action::Update, Some(src)) => remote
            .put(src, item.hash_before.as_deref())
            .await
            .map(|_| ()),
        (Action::Delete, _) => remote.delete(&item.name, item.hash_before.as_deref()).await,
        (_, None) => Err(SyncError::Usage(format!(
            "planned change of {} has no file",
            item.name
        ))),
    };
    let result = match result {
        Err(SyncError::Client(ClientError::Conflict {
            after_retry: true, ..
        })) if already_applied(remote, item).await => Ok(()),
        r => r,
    };
    let (outcome, error) = match result {
        Ok(()) => (Outcome::Ok, None),
        Err(e) => {
            let outcome = match &e {
                SyncError::Client(ClientError::Conflict { .. }) => Outcome::Conflict,
                // A delete of a config that went away meanwhile also changed behind our back.
                SyncError::Client(ClientError::NotFound { .. }) => Outcome::Conflict,
                SyncError::Rejected(_) => Outcome::Rejected,
                SyncError::Client(c) if !c.is_unavailable() => Outcome::Rejected,
                _ => Outcome::Failed,
            };
            (outcome, Some(e.to_string()))
        }
    };
    ItemResult {
        name: item.name.clone(),
        action: item.action,
        outcome,
        error,
    }
}

/// After a retried write met a 412: whether the store already holds what we wrote (the first
/// attempt went through but its answer was lost).
async fn already_applied(remote: &Remote, item: &PlanItem) -> bool {
    match remote.hashes().await {
        Ok(h) => h.get(&item.name) == item.hash_after.as_ref(),
        Err(_) => false,
    }
}
