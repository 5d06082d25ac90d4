//! `instance_mode`: which configs share one running instance (docs/compat.md, *Instance modes*).
//!
//! * `distinct`: one instance per config, named by the config name.
//! * `shared` (the default, as in the old agent): configs whose settings other than `name` and
//!   `scrape_configs` are equal run as ONE instance — one WAL, one remote_write queue per
//!   endpoint, one set of scrape loops — named by the group hash.
//!
//! The group hash, written out:
//!
//! ```text
//! for each remote_write rw:  rw.name := md5hex(json(rw with name unset))[..6]
//! sort remote_write by name
//! group := md5hex(yaml({host_filter, host_filter_relabel_configs, remote_write,
//!                       wal_truncate_frequency, min_wal_time, max_wal_time,
//!                       remote_flush_deadline, write_stale_on_shutdown}))   // 32 hex digits
//! ```
//!
//! Every field is written with its default applied and secrets in clear (a changed password is
//! another group), so configs that mean the same settings land in the same group however they
//! are spelled. The group instance's config is the first member's (by name) with:
//! `name = group`, `scrape_configs` = every member's scrape configs concatenated in member-name
//! order, and each remote_write named `<group[..6]>-<md5hex(json(rw with name unset))[..6]>`,
//! sorted by that name.
//!
//! Compatibility: the JSON and YAML written here are this project's serialisations, not Go's,
//! so a group hash (hence the WAL folder `<wal_directory>/<group>/` and the
//! `instance_group_name` label) differs from the one the old agent computed for the same
//! configs. An agent migrating from the old one therefore starts each group on a fresh WAL;
//! the old folders are removed by the WAL cleaner after `wal_cleanup_age`. The grouping
//! itself — which configs share an instance — is the old agent's.

use std::collections::{BTreeMap, BTreeSet};

use md5::Digest;
use serde::Serialize;

use crate::config::agent::InstanceMode;
use crate::config::duration::GoDuration;
use crate::config::relabel::{RelabelConfig, RelabelConfigRaw};
use crate::config::remote_write::RemoteWriteConfigRaw;
use crate::config::InstanceConfig;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GroupError {
    /// Two members of a group define the same job: the merged instance could not tell their
    /// targets apart. The API refuses such a PUT (`found multiple scrape configs with job
    /// name`); this catches configs written to the KV store directly.
    #[error("config {config:?} cannot join instance group {group}: job name {job:?} is also used by config {other:?} (in instance_mode shared, job names must be unique across the configs of a group)")]
    DuplicateJob {
        config: String,
        group: String,
        job: String,
        other: String,
    },
    #[error("instance group {group} has no configs")]
    Empty { group: String },
}

/// md5 of `json(rw)` with the name unset, first 6 hex digits.
fn rw_hash6(rw: &RemoteWriteConfigRaw) -> String {
    let unnamed = RemoteWriteConfigRaw {
        name: None,
        ..rw.clone()
    };
    unnamed.content_hash6()
}

fn relabel_raw(r: &RelabelConfig) -> RelabelConfigRaw {
    RelabelConfigRaw {
        source_labels: Some(r.source_labels.clone()),
        separator: Some(r.separator.clone()),
        regex: Some(r.regex.clone()),
        modulus: Some(r.modulus),
        target_label: Some(r.target_label.clone()),
        replacement: Some(r.replacement.clone()),
        action: Some(r.action),
    }
}

/// What is hashed: the instance config without `name` and `scrape_configs`, defaults applied.
#[derive(Serialize)]
struct Groupable {
    host_filter: bool,
    host_filter_relabel_configs: Vec<RelabelConfigRaw>,
    remote_write: Vec<RemoteWriteConfigRaw>,
    wal_truncate_frequency: GoDuration,
    min_wal_time: GoDuration,
    max_wal_time: GoDuration,
    remote_flush_deadline: GoDuration,
    write_stale_on_shutdown: bool,
}

/// The group hash of `cfg` (32 lowercase hex digits), as described in the module docs.
pub fn group_hash(cfg: &InstanceConfig) -> String {
    let mut remote_write: Vec<RemoteWriteConfigRaw> = cfg
        .remote_write
        .iter()
        .map(|rw| RemoteWriteConfigRaw {
            name: Some(rw_hash6(rw.as_written())),
            ..rw.as_written().clone()
        })
        .collect();
    remote_write.sort_by(|a, b| a.name.cmp(&b.name));
    let g = Groupable {
        host_filter: cfg.host_filter,
        host_filter_relabel_configs: cfg
            .host_filter_relabel_configs
            .iter()
            .map(relabel_raw)
            .collect(),
        remote_write,
        wal_truncate_frequency: cfg.wal_truncate_frequency,
        min_wal_time: cfg.min_wal_time,
        max_wal_time: cfg.max_wal_time,
        remote_flush_deadline: cfg.remote_flush_deadline,
        write_stale_on_shutdown: cfg.write_stale_on_shutdown,
    };
    // Serialising plain data cannot fail; an empty document would still hash consistently.
    let yaml =
        crate::config::secret::reveal_secrets(|| serde_yaml::to_string(&g)).unwrap_or_default();
    hex::encode(md5::Md5::digest(yaml.as_bytes()))
}

/// The config the group `group` runs for `members` (any order; all with hash `group`).
pub fn merge(group: &str, members: &[&InstanceConfig]) -> Result<InstanceConfig, GroupError> {
    let mut sorted: Vec<&InstanceConfig> = members.to_vec();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    let Some(first) = sorted.first() else {
        return Err(GroupError::Empty {
            group: group.to_owned(),
        });
    };
    let prefix: String = group.chars().take(6).collect();
    let mut remote_write: Vec<_> = first
        .remote_write
        .iter()
        .map(|rw| {
            let raw = RemoteWriteConfigRaw {
                name: None,
                ..rw.as_written().clone()
            };
            rw.renamed(format!("{prefix}-{}", rw_hash6(&raw)))
        })
        .collect();
    remote_write.sort_by(|a, b| a.name.cmp(&b.name));
    let mut jobs: BTreeMap<&str, &str> = BTreeMap::new();
    let mut scrape_configs = Vec::new();
    for m in &sorted {
        for sc in &m.scrape_configs {
            if let Some(other) = jobs.insert(&sc.job_name, &m.name) {
                return Err(GroupError::DuplicateJob {
                    config: m.name.clone(),
                    group: group.to_owned(),
                    job: sc.job_name.clone(),
                    other: other.to_owned(),
                });
            }
            scrape_configs.push(sc.clone());
        }
    }
    Ok(InstanceConfig {
        name: group.to_owned(),
        scrape_configs,
        remote_write,
        ..(*first).clone()
    })
}

/// What the instance layer must do after a membership change.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Start, update in place or restart the instance `cfg.name` with `cfg`.
    Run(InstanceConfig),
    /// Stop the instance of this name (its last member left).
    Stop(String),
}

#[derive(Debug, Clone)]
struct Member {
    instance: String,
    cfg: InstanceConfig,
}

/// Which config belongs to which instance. Pure bookkeeping: it says what to run and stop,
/// the [`super::manager::InstanceManager`] does it.
#[derive(Debug, Clone)]
pub struct Groups {
    mode: InstanceMode,
    members: BTreeMap<String, Member>,
}

impl Groups {
    pub fn new(mode: InstanceMode) -> Self {
        Groups {
            mode,
            members: BTreeMap::new(),
        }
    }

    pub fn mode(&self) -> InstanceMode {
        self.mode
    }

    /// The instance `cfg` belongs to in the current mode.
    pub fn instance_for(&self, cfg: &InstanceConfig) -> String {
        match self.mode {
            InstanceMode::Distinct => cfg.name.clone(),
            InstanceMode::Shared => group_hash(cfg),
        }
    }

    /// The instance config `instance` should run given its members; `None` when it has none.
    fn desired(&self, instance: &str) -> Result<Option<InstanceConfig>, GroupError> {
        let members: Vec<&InstanceConfig> = self
            .members
            .values()
            .filter(|m| m.instance == instance)
            .map(|m| &m.cfg)
            .collect();
        match (self.mode, members.as_slice()) {
            (_, []) => Ok(None),
            (InstanceMode::Distinct, [one]) => Ok(Some((*one).clone())),
            (_, all) => merge(instance, all).map(Some),
        }
    }

    fn action(&self, instance: &str) -> Result<Action, GroupError> {
        Ok(match self.desired(instance)? {
            Some(cfg) => Action::Run(cfg),
            None => Action::Stop(instance.to_owned()),
        })
    }

    /// Adds or replaces the config `cfg.name`. On a job-name clash within its group nothing
    /// changes and the error says which configs clash.
    pub fn apply(&mut self, cfg: InstanceConfig) -> Result<Vec<Action>, GroupError> {
        let name = cfg.name.clone();
        let instance = self.instance_for(&cfg);
        let before = self.members.insert(
            name.clone(),
            Member {
                instance: instance.clone(),
                cfg,
            },
        );
        let mut actions = Vec::new();
        match self.action(&instance) {
            Ok(a) => actions.push(a),
            Err(e) => {
                match before {
                    Some(b) => self.members.insert(name, b),
                    None => self.members.remove(&name),
                };
                return Err(e);
            }
        }
        if let Some(old) = before.filter(|b| b.instance != instance) {
            // Removing a member cannot create a clash.
            if let Ok(a) = self.action(&old.instance) {
                actions.push(a);
            }
        }
        Ok(actions)
    }

    /// Removes the config `name`; `None` when it is not a member.
    pub fn remove(&mut self, name: &str) -> Option<Action> {
        let old = self.members.remove(name)?;
        self.action(&old.instance).ok()
    }

    /// Switches the mode and regroups every config: the instances to run and stop, and the
    /// configs that could not be placed (dropped from the membership, with the reason).
    pub fn set_mode(&mut self, mode: InstanceMode) -> (Vec<Action>, Vec<GroupError>) {
        let old_instances = self.instance_names();
        self.mode = mode;
        let all: Vec<InstanceConfig> = std::mem::take(&mut self.members)
            .into_values()
            .map(|m| m.cfg)
            .collect();
        let mut rejected = Vec::new();
        for cfg in all {
            let name = cfg.name.clone();
            let instance = self.instance_for(&cfg);
            self.members.insert(name.clone(), Member { instance, cfg });
            let inst = &self.members[&name].instance;
            if let Err(e) = self.desired(inst) {
                self.members.remove(&name);
                rejected.push(e);
            }
        }
        let new_instances = self.instance_names();
        let mut actions: Vec<Action> = old_instances
            .difference(&new_instances)
            .map(|i| Action::Stop(i.clone()))
            .collect();
        for i in &new_instances {
            if let Ok(a) = self.action(i) {
                actions.push(a);
            }
        }
        (actions, rejected)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.members.contains_key(name)
    }

    /// The member config names, sorted.
    pub fn config_names(&self) -> Vec<String> {
        self.members.keys().cloned().collect()
    }

    /// The instance names (config names in distinct mode, group hashes in shared mode).
    pub fn instance_names(&self) -> BTreeSet<String> {
        self.members.values().map(|m| m.instance.clone()).collect()
    }

    /// The instance the config `name` runs in.
    pub fn instance_of(&self, name: &str) -> Option<&str> {
        self.members.get(name).map(|m| m.instance.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::GlobalConfig;

    fn cfg(name: &str, yaml: &str) -> InstanceConfig {
        crate::config::load::parse_instance_named(yaml, Some(name), &GlobalConfig::default())
            .expect("valid test config")
            .1
    }

    const RW_A: &str = "  - url: http://a.example/push\n";
    const RW_B: &str = "  - url: http://b.example/push\n    remote_timeout: 5s\n";

    fn with_job(job: &str, rws: &[&str]) -> String {
        format!(
            "scrape_configs:\n  - job_name: {job}\n    static_configs:\n      - targets: ['127.0.0.1:1']\nremote_write:\n{}",
            rws.concat()
        )
    }

    #[test]
    fn name_and_scrape_configs_do_not_change_the_group() {
        let a = cfg("a", &with_job("x", &[RW_A]));
        let b = cfg("b", &with_job("y", &[RW_A]));
        let h = group_hash(&a);
        assert_eq!(h.len(), 32);
        assert!(h.chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(h, group_hash(&b));
        // Generated remote_write names embed the config name; they are not part of the hash.
        assert_ne!(a.remote_write[0].name, b.remote_write[0].name);
        // An explicit remote_write name does not matter either.
        let named = cfg(
            "c",
            &with_job("z", &["  - url: http://a.example/push\n    name: mine\n"]),
        );
        assert_eq!(h, group_hash(&named));
    }

    #[test]
    fn remote_write_order_is_irrelevant_and_contents_matter() {
        let ab = cfg("a", &with_job("x", &[RW_A, RW_B]));
        let ba = cfg("b", &with_job("x", &[RW_B, RW_A]));
        assert_eq!(group_hash(&ab), group_hash(&ba));
        let only_a = cfg("c", &with_job("x", &[RW_A]));
        assert_ne!(group_hash(&ab), group_hash(&only_a));
        let other_timeout = cfg(
            "d",
            &with_job(
                "x",
                &["  - url: http://a.example/push\n    remote_timeout: 6s\n"],
            ),
        );
        assert_ne!(group_hash(&only_a), group_hash(&other_timeout));
        // Settings outside remote_write split groups too; a default spelled out does not.
        let flush = cfg(
            "e",
            &format!("{}remote_flush_deadline: 10s\n", with_job("x", &[RW_A])),
        );
        assert_ne!(group_hash(&only_a), group_hash(&flush));
        let spelled = cfg(
            "f",
            &format!("{}wal_truncate_frequency: 60m\n", with_job("x", &[RW_A])),
        );
        assert_eq!(group_hash(&only_a), group_hash(&spelled));
    }

    #[test]
    fn secrets_are_part_of_the_group() {
        let p = |pw: &str| {
            cfg(
                "a",
                &with_job(
                    "x",
                    &[&format!("  - url: http://a.example/push\n    basic_auth:\n      username: u\n      password: {pw}\n")],
                ),
            )
        };
        assert_ne!(group_hash(&p("one")), group_hash(&p("two")));
    }

    #[test]
    fn merge_names_the_group_concatenates_jobs_in_member_order_and_renames_remote_writes() {
        let b = cfg("b", &with_job("jb", &[RW_B, RW_A]));
        let a = cfg("a", &with_job("ja", &[RW_A, RW_B]));
        let g = group_hash(&a);
        let merged = merge(&g, &[&b, &a]).unwrap();
        assert_eq!(merged.name, g);
        let jobs: Vec<&str> = merged
            .scrape_configs
            .iter()
            .map(|s| s.job_name.as_str())
            .collect();
        assert_eq!(jobs, ["ja", "jb"]);
        let names: Vec<&str> = merged
            .remote_write
            .iter()
            .map(|r| r.name.as_str())
            .collect();
        let mut expected = vec![
            format!("{}-{}", &g[..6], rw_hash6(a.remote_write[0].as_written())),
            format!("{}-{}", &g[..6], rw_hash6(a.remote_write[1].as_written())),
        ];
        expected.sort();
        assert_eq!(names, expected);
        assert!(merged
            .remote_write
            .iter()
            .all(|r| r.as_written().name.is_none()));
        // Member order does not change the result.
        assert_eq!(merge(&g, &[&a, &b]).unwrap(), merged);
    }

    #[test]
    fn a_job_name_used_twice_in_a_group_is_refused() {
        let a = cfg("a", &with_job("same", &[RW_A]));
        let b = cfg("b", &with_job("same", &[RW_A]));
        let g = group_hash(&a);
        let e = merge(&g, &[&a, &b]).unwrap_err();
        assert_eq!(
            e,
            GroupError::DuplicateJob {
                config: "b".into(),
                group: g.clone(),
                job: "same".into(),
                other: "a".into()
            }
        );
        let mut groups = Groups::new(InstanceMode::Shared);
        groups.apply(a).unwrap();
        assert!(groups.apply(b).is_err());
        assert_eq!(groups.config_names(), ["a"]);
    }

    fn run_jobs(actions: &[Action]) -> Vec<(String, Vec<String>)> {
        actions
            .iter()
            .map(|a| match a {
                Action::Run(c) => (
                    c.name.clone(),
                    c.scrape_configs
                        .iter()
                        .map(|s| s.job_name.clone())
                        .collect(),
                ),
                Action::Stop(n) => (n.clone(), vec!["<stop>".into()]),
            })
            .collect()
    }

    #[test]
    fn shared_members_update_the_group_instance_and_the_last_one_stops_it() {
        let mut groups = Groups::new(InstanceMode::Shared);
        let a = cfg("a", &with_job("ja", &[RW_A]));
        let g = group_hash(&a);
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();

        assert_eq!(
            run_jobs(&groups.apply(a).unwrap()),
            [(g.clone(), s(&["ja"]))]
        );
        assert_eq!(
            run_jobs(&groups.apply(cfg("b", &with_job("jb", &[RW_A]))).unwrap()),
            [(g.clone(), s(&["ja", "jb"]))]
        );
        assert_eq!(groups.config_names(), ["a", "b"]);
        assert_eq!(groups.instance_names().len(), 1);
        assert_eq!(groups.instance_of("b"), Some(g.as_str()));

        // A member changing its jobs updates the same instance.
        assert_eq!(
            run_jobs(&groups.apply(cfg("b", &with_job("jb2", &[RW_A]))).unwrap()),
            [(g.clone(), s(&["ja", "jb2"]))]
        );

        // A member changing its remote_write moves to another group; the old one loses its jobs.
        let moved = cfg("b", &with_job("jb2", &[RW_B]));
        let g2 = group_hash(&moved);
        assert_ne!(g, g2);
        assert_eq!(
            run_jobs(&groups.apply(moved).unwrap()),
            [(g2.clone(), s(&["jb2"])), (g.clone(), s(&["ja"]))]
        );

        // Removing a member of a two-member group updates; removing the last stops.
        groups.apply(cfg("c", &with_job("jc", &[RW_A]))).unwrap();
        assert_eq!(
            run_jobs(&[groups.remove("a").unwrap()]),
            [(g.clone(), s(&["jc"]))]
        );
        assert_eq!(groups.remove("c"), Some(Action::Stop(g.clone())));
        assert_eq!(groups.remove("c"), None);
        assert_eq!(groups.remove("b"), Some(Action::Stop(g2)));
        assert!(groups.instance_names().is_empty());
    }

    #[test]
    fn distinct_runs_each_config_unchanged_under_its_own_name() {
        let mut groups = Groups::new(InstanceMode::Distinct);
        let a = cfg("a", &with_job("j", &[RW_A]));
        let b = cfg("b", &with_job("j", &[RW_A]));
        assert_eq!(groups.apply(a.clone()).unwrap(), [Action::Run(a.clone())]);
        // The same job name in two configs is fine: they are separate instances.
        assert_eq!(groups.apply(b.clone()).unwrap(), [Action::Run(b)]);
        assert_eq!(groups.remove("a"), Some(Action::Stop("a".into())));
    }

    #[test]
    fn switching_modes_regroups_everything() {
        let mut groups = Groups::new(InstanceMode::Distinct);
        let a = cfg("a", &with_job("ja", &[RW_A]));
        let g = group_hash(&a);
        groups.apply(a).unwrap();
        groups.apply(cfg("b", &with_job("jb", &[RW_A]))).unwrap();
        groups.apply(cfg("c", &with_job("ja", &[RW_A]))).unwrap();
        let (actions, rejected) = groups.set_mode(InstanceMode::Shared);
        // "c" clashes with "a" on job "ja" once they share an instance.
        assert_eq!(rejected.len(), 1);
        assert_eq!(groups.config_names(), ["a", "b"]);
        let mut runs = run_jobs(&actions);
        runs.sort();
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let mut want = vec![
            ("a".to_owned(), s(&["<stop>"])),
            ("b".to_owned(), s(&["<stop>"])),
            ("c".to_owned(), s(&["<stop>"])),
            (g.clone(), s(&["ja", "jb"])),
        ];
        want.sort();
        assert_eq!(runs, want);

        let (actions, rejected) = groups.set_mode(InstanceMode::Distinct);
        assert!(rejected.is_empty());
        let mut runs = run_jobs(&actions);
        runs.sort();
        let mut want = vec![
            ("a".to_owned(), s(&["ja"])),
            ("b".to_owned(), s(&["jb"])),
            (g, s(&["<stop>"])),
        ];
        want.sort();
        assert_eq!(runs, want);
    }

    proptest::proptest! {
        /// Any order and any names of the same remote_writes, any name and jobs: one group.
        #[test]
        fn the_group_ignores_order_names_and_jobs(
            ports in proptest::collection::btree_set(1u16..2000, 1..5),
            seed in proptest::num::u64::ANY,
            job in "[a-z]{1,8}",
        ) {
            let rws: Vec<String> = ports
                .iter()
                .map(|p| format!("  - url: http://127.0.0.1:{p}/push\n"))
                .collect();
            let mut shuffled: Vec<String> = rws
                .iter()
                .enumerate()
                .map(|(i, rw)| format!("{rw}    name: n{i}x{seed}\n"))
                .collect();
            shuffled.rotate_left((seed % rws.len() as u64) as usize);
            if seed % 2 == 0 {
                shuffled.reverse();
            }
            let refs: Vec<&str> = rws.iter().map(String::as_str).collect();
            let srefs: Vec<&str> = shuffled.iter().map(String::as_str).collect();
            let a = cfg("a", &with_job("x", &refs));
            let b = cfg(&format!("b{seed}"), &with_job(&job, &srefs));
            proptest::prop_assert_eq!(group_hash(&a), group_hash(&b));
            let g = group_hash(&a);
            // Both members merge into one config whatever their remote_write order was.
            if job != "x" {
                let merged = merge(&g, &[&a, &b]).unwrap();
                proptest::prop_assert_eq!(merged.remote_write.len(), ports.len());
                proptest::prop_assert_eq!(merged.scrape_configs.len(), 2);
            }
        }
    }
}
