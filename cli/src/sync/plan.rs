//! The plan: what `config-sync` would change, decided by content hash alone (the store's
//! secrets are never read back), and the delete guard.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::str::FromStr;

use serde::Serialize;

use super::local::LocalConfig;
use super::SyncError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Create,
    Update,
    Delete,
}

impl Action {
    pub fn symbol(self) -> char {
        match self {
            Action::Create => '+',
            Action::Update => '~',
            Action::Delete => '-',
        }
    }
}

/// One change.
#[derive(Debug, Clone, Serialize)]
pub struct PlanItem {
    pub name: String,
    pub action: Action,
    /// The store's hash (the `If-Match` of updates and deletes); `None` for creates.
    pub hash_before: Option<String>,
    /// The local file's hash; `None` for deletes.
    pub hash_after: Option<String>,
    /// The file behind a create or update.
    #[serde(skip)]
    pub source: Option<LocalConfig>,
}

/// What a sync would do.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// Creates, updates and deletes, by name.
    pub items: Vec<PlanItem>,
    /// Local configs already stored with the same hash.
    pub unchanged: usize,
    /// Stored configs that are not in the directory and are kept (`--no-prune`).
    pub kept: usize,
    /// Configs in the store when planned.
    pub store_total: usize,
}

/// Counts by action.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub create: usize,
    pub update: usize,
    pub delete: usize,
    pub unchanged: usize,
    pub kept: usize,
}

/// Compares the directory with the store's hashes. With `prune`, stored configs that are not
/// in the directory are deleted.
pub fn plan(local: &[LocalConfig], remote: &BTreeMap<String, String>, prune: bool) -> Plan {
    let mut items = Vec::new();
    let mut unchanged = 0;
    let mut kept = 0;
    let mut seen = std::collections::HashSet::with_capacity(local.len());
    for c in local {
        seen.insert(c.name.as_str());
        match remote.get(&c.name) {
            Some(h) if *h == c.hash => unchanged += 1,
            before => items.push(PlanItem {
                name: c.name.clone(),
                action: if before.is_some() {
                    Action::Update
                } else {
                    Action::Create
                },
                hash_before: before.cloned(),
                hash_after: Some(c.hash.clone()),
                source: Some(c.clone()),
            }),
        }
    }
    for (name, h) in remote {
        if seen.contains(name.as_str()) {
            continue;
        }
        if prune {
            items.push(PlanItem {
                name: name.clone(),
                action: Action::Delete,
                hash_before: Some(h.clone()),
                hash_after: None,
                source: None,
            });
        } else {
            kept += 1;
        }
    }
    items.sort_by(|a, b| a.name.cmp(&b.name));
    Plan {
        items,
        unchanged,
        kept,
        store_total: remote.len(),
    }
}

impl Plan {
    pub fn counts(&self) -> Counts {
        let n = |a: Action| self.items.iter().filter(|i| i.action == a).count();
        Counts {
            create: n(Action::Create),
            update: n(Action::Update),
            delete: n(Action::Delete),
            unchanged: self.unchanged,
            kept: self.kept,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The terraform-like listing: `+ name`, `~ name`, `- name`, then the summary line.
    pub fn render_table(&self) -> String {
        let mut out = String::new();
        for i in &self.items {
            let _ = writeln!(out, "{} {}", i.action.symbol(), i.name);
        }
        out.push_str(&self.render_summary());
        out
    }

    /// `Plan: N to create, …` or `No changes. …`, and the kept configs.
    pub fn render_summary(&self) -> String {
        let mut out = String::new();
        let c = self.counts();
        if self.items.is_empty() {
            let _ = writeln!(out, "No changes. {} configs up to date.", c.unchanged);
        } else {
            let _ = writeln!(
                out,
                "Plan: {} to create, {} to update, {} to delete, {} unchanged.",
                c.create, c.update, c.delete, c.unchanged
            );
        }
        if c.kept > 0 {
            let _ = writeln!(
                out,
                "{} stored configs not in the directory are kept (--no-prune).",
                c.kept
            );
        }
        out
    }
}

/// `--max-delete`: a count, or a percentage of the configs in the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaxDelete {
    Count(usize),
    Percent(u32),
}

impl FromStr for MaxDelete {
    type Err = SyncError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || {
            SyncError::Usage(format!(
                "invalid --max-delete {s:?}: expected a count (10) or a percentage (50%)"
            ))
        };
        if let Some(p) = s.strip_suffix('%') {
            let p: u32 = p.trim().parse().map_err(|_| bad())?;
            if p > 100 {
                return Err(bad());
            }
            Ok(MaxDelete::Percent(p))
        } else {
            s.trim().parse().map(MaxDelete::Count).map_err(|_| bad())
        }
    }
}

impl MaxDelete {
    /// The largest number of deletes allowed from a store of `total` configs (percentages
    /// round down).
    pub fn limit(self, total: usize) -> usize {
        match self {
            MaxDelete::Count(n) => n,
            MaxDelete::Percent(p) => total.saturating_mul(p as usize) / 100,
        }
    }
}

/// The delete guard. Refuses (unless `allow_delete_all`):
/// * a directory without config files (unless nothing would be deleted: `--no-prune`, or an
///   empty store): the old tool deleted every config then;
/// * a plan deleting every config in the store;
/// * a plan deleting more than `max_delete`.
pub fn check_guard(
    plan: &Plan,
    local_count: usize,
    max_delete: MaxDelete,
    allow_delete_all: bool,
    prune: bool,
    dir: &std::path::Path,
    store: &str,
) -> Result<(), SyncError> {
    if allow_delete_all {
        return Ok(());
    }
    let deletes = plan.counts().delete;
    if local_count == 0 && prune && plan.store_total > 0 {
        return Err(SyncError::Guard(format!(
            "{} holds no .yml or .yaml files; refusing to sync, which would delete all {} configs in {store}. Check the path, or pass --allow-delete-all to really empty the store",
            dir.display(),
            plan.store_total
        )));
    }
    if deletes > 0 && deletes == plan.store_total {
        return Err(SyncError::Guard(format!(
            "the plan deletes all {deletes} configs in {store}; refusing without --allow-delete-all"
        )));
    }
    let limit = max_delete.limit(plan.store_total);
    if deletes > limit {
        let what = match max_delete {
            MaxDelete::Count(n) => format!("{n}"),
            MaxDelete::Percent(p) => format!("{p}% (= {limit} of {})", plan.store_total),
        };
        return Err(SyncError::Guard(format!(
            "the plan deletes {deletes} of {} configs in {store}, more than --max-delete {what}; pass --max-delete {deletes} (or --no-prune to keep them) if that is intended",
            plan.store_total
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn local(name: &str, body: &str) -> LocalConfig {
        LocalConfig::parse(name, Path::new(name), body.to_owned()).expect("valid")
    }

    fn remote(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(n, h)| ((*n).to_owned(), (*h).to_owned()))
            .collect()
    }

    #[test]
    fn plans_by_hash() {
        let a = local("a", "scrape_configs: []\n");
        let b = local("b", "write_stale_on_shutdown: true\n");
        let c = local("c", "host_filter: true\n");
        let r = remote(&[("a", &a.hash), ("b", "old"), ("z", "zz")]);
        let p = plan(&[a.clone(), b, c], &r, true);
        let got: Vec<(&str, Action)> = p
            .items
            .iter()
            .map(|i| (i.name.as_str(), i.action))
            .collect();
        assert_eq!(
            got,
            [
                ("b", Action::Update),
                ("c", Action::Create),
                ("z", Action::Delete)
            ]
        );
        assert_eq!(p.unchanged, 1);
        assert_eq!(p.items[0].hash_before.as_deref(), Some("old"));
        assert_eq!(p.items[2].hash_before.as_deref(), Some("zz"));
        assert_eq!(p.items[2].hash_after, None);
        insta::assert_snapshot!(p.render_table(), @r"
        ~ b
        + c
        - z
        Plan: 1 to create, 1 to update, 1 to delete, 1 unchanged.
        ");

        let p = plan(&[a], &r, false);
        assert_eq!(p.counts().kept, 2);
        assert_eq!(p.counts().delete, 0);
    }

    #[test]
    fn an_unchanged_store_plans_nothing() {
        let a = local("a", "scrape_configs: []\n");
        let p = plan(std::slice::from_ref(&a), &remote(&[("a", &a.hash)]), true);
        assert!(p.is_empty());
        assert_eq!(p.render_table(), "No changes. 1 configs up to date.\n");
    }

    #[test]
    fn max_delete_parses_and_limits() {
        assert_eq!(
            "50%".parse::<MaxDelete>().ok(),
            Some(MaxDelete::Percent(50))
        );
        assert_eq!("7".parse::<MaxDelete>().ok(), Some(MaxDelete::Count(7)));
        assert!("x".parse::<MaxDelete>().is_err());
        assert!("101%".parse::<MaxDelete>().is_err());
        assert_eq!(MaxDelete::Percent(50).limit(5), 2);
        assert_eq!(MaxDelete::Count(3).limit(1), 3);
    }

    #[test]
    fn the_guard_refuses_empty_dirs_wipes_and_large_deletes() {
        let dir = Path::new("cfg");
        let r = remote(&[("a", "1"), ("b", "2"), ("c", "3"), ("d", "4")]);
        let empty = plan(&[], &r, true);
        let guard = |p: &Plan, n, m, all, prune| check_guard(p, n, m, all, prune, dir, "store");
        assert!(matches!(
            guard(&empty, 0, MaxDelete::Percent(100), false, true),
            Err(SyncError::Guard(m)) if m.contains("holds no .yml")
        ));
        assert!(guard(&empty, 0, MaxDelete::Percent(50), true, true).is_ok());
        assert!(guard(
            &plan(&[], &r, false),
            0,
            MaxDelete::Percent(50),
            false,
            false
        )
        .is_ok());

        let keep_one = local("a", "scrape_configs: []\n");
        let p = plan(std::slice::from_ref(&keep_one), &r, true);
        assert_eq!(p.counts().delete, 3);
        assert!(matches!(
            guard(&p, 1, MaxDelete::Percent(50), false, true),
            Err(SyncError::Guard(m)) if m.contains("deletes 3 of 4") && m.contains("50% (= 2 of 4)")
        ));
        assert!(guard(&p, 1, MaxDelete::Count(3), false, true).is_ok());
        assert!(guard(&p, 1, MaxDelete::Percent(75), false, true).is_ok());
    }
}
