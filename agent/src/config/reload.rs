//! What a config reload (`/-/reload`, SIGHUP) may change while the agent runs.
//!
//! Unlike the old agent, which left and rejoined the ring with new tokens on any change in
//! `scraping_service` (docs/compat.md, *Config reload*), a reload here never touches ring membership or the config
//! store. Fields that would need that are refused, naming them, and the running config stays:
//!
//! | needs a restart | applied live |
//! |---|---|
//! | `metrics.wal_directory` | `metrics.global` (instances re-validated and reloaded by content) |
//! | `metrics.scraping_service.enabled`, `.sharding` | `metrics.instance_mode` (configs regrouped) |
//! | `metrics.scraping_service.kvstore` | `metrics.wal_cleanup_age`, `metrics.wal_cleanup_period` |
//! | `metrics.scraping_service.lifecycler` (ring store, tokens, heartbeats, id, address) | `metrics.instance_restart_backoff` |
//! | | `metrics.scraping_service.reshard_interval`, `dangerous_allow_reading_files` |
//! | | `metrics.configs` (without the scraping service) |
//!
//! `server.http_tls_config` is applied live (new connections use the new certificates and
//! settings) while the server keeps serving HTTPS; turning HTTPS on or off needs a restart.
//! The rest of `server` and the ignored blocks (`integrations`, `logs`, `traces`) are not used by agentctl
//! (listen address and log level come from flags), so changing them changes nothing.
//! `reshard_timeout` and `cluster_reshard_event_timeout` are accepted and unused, as at start.

use super::agent::{AgentConfig, KvBackend};

/// The differences between the running config and a reloaded one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReloadPlan {
    /// Fields that changed and cannot be applied without a restart.
    pub restart_required: Vec<&'static str>,
    /// Fields that changed and are applied live.
    pub changed: Vec<&'static str>,
}

/// Compares the running config `old` with `new`.
pub fn plan(old: &AgentConfig, new: &AgentConfig) -> ReloadPlan {
    let (o, n) = (&old.scraping_service, &new.scraping_service);
    let mut p = ReloadPlan::default();
    let mut restart = |changed: bool, field| {
        if changed {
            p.restart_required.push(field);
        }
    };
    restart(
        old.http_tls.is_some() != new.http_tls.is_some(),
        "server.http_tls_config",
    );
    restart(
        old.wal_directory != new.wal_directory,
        "metrics.wal_directory",
    );
    restart(o.enabled != n.enabled, "metrics.scraping_service.enabled");
    restart(
        o.sharding != n.sharding,
        "metrics.scraping_service.sharding",
    );
    restart(
        o.kvstore != n.kvstore || o.config_prefix != n.config_prefix,
        "metrics.scraping_service.kvstore",
    );
    restart(
        o.lifecycler.ring_kvstore != n.lifecycler.ring_kvstore
            || o.lifecycler.ring_prefix != n.lifecycler.ring_prefix,
        "metrics.scraping_service.lifecycler.ring.kvstore",
    );
    restart(
        o.lifecycler.heartbeat_timeout != n.lifecycler.heartbeat_timeout,
        "metrics.scraping_service.lifecycler.ring.heartbeat_timeout",
    );
    let rest_of = |l: &super::agent::LifecyclerConfig| super::agent::LifecyclerConfig {
        ring_kvstore: KvBackend::InMemory,
        ring_prefix: String::new(),
        heartbeat_timeout: Default::default(),
        ..l.clone()
    };
    restart(
        rest_of(&o.lifecycler) != rest_of(&n.lifecycler),
        "metrics.scraping_service.lifecycler",
    );

    let mut live = |changed: bool, field| {
        if changed {
            p.changed.push(field);
        }
    };
    live(
        old.http_tls.is_some() && old.http_tls != new.http_tls,
        "server.http_tls_config",
    );
    live(old.global != new.global, "metrics.global");
    live(
        old.instance_mode != new.instance_mode,
        "metrics.instance_mode",
    );
    live(
        old.wal_cleanup_age != new.wal_cleanup_age,
        "metrics.wal_cleanup_age",
    );
    live(
        old.wal_cleanup_period != new.wal_cleanup_period,
        "metrics.wal_cleanup_period",
    );
    live(
        old.instance_restart_backoff != new.instance_restart_backoff,
        "metrics.instance_restart_backoff",
    );
    live(
        o.reshard_interval != n.reshard_interval,
        "metrics.scraping_service.reshard_interval",
    );
    live(
        o.reshard_timeout != n.reshard_timeout,
        "metrics.scraping_service.reshard_timeout",
    );
    live(
        o.cluster_reshard_event_timeout != n.cluster_reshard_event_timeout,
        "metrics.scraping_service.cluster_reshard_event_timeout",
    );
    live(
        o.dangerous_allow_reading_files != n.dangerous_allow_reading_files,
        "metrics.scraping_service.dangerous_allow_reading_files",
    );
    live(old.configs != new.configs, "metrics.configs");
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load::parse_agent;

    fn cfg(yaml: &str) -> AgentConfig {
        parse_agent(yaml).expect("valid agent config").1
    }

    const BASE: &str = "metrics:\n  wal_directory: /w\n  scraping_service:\n    enabled: true\n    kvstore:\n      store: etcd\n      etcd:\n        endpoints: ['127.0.0.1:2379']\n";

    #[test]
    fn nothing_changed_is_an_empty_plan() {
        assert_eq!(plan(&cfg(BASE), &cfg(BASE)), ReloadPlan::default());
    }

    #[test]
    fn live_fields_are_listed_as_changed() {
        let new = cfg(&format!(
            "{BASE}    reshard_interval: 5s\n  instance_mode: distinct\n  wal_cleanup_period: 1m\n  global:\n    external_labels:\n      a: b\n"
        ));
        let p = plan(&cfg(BASE), &new);
        assert!(p.restart_required.is_empty(), "{p:?}");
        assert_eq!(
            p.changed,
            [
                "metrics.global",
                "metrics.instance_mode",
                "metrics.wal_cleanup_period",
                "metrics.scraping_service.reshard_interval"
            ]
        );
    }

    #[test]
    fn store_and_ring_changes_need_a_restart() {
        let other_store = BASE.replace("127.0.0.1:2379", "127.0.0.1:2380");
        let p = plan(&cfg(BASE), &cfg(&other_store));
        // Without its own ring kvstore, the ring uses the config store: both change.
        assert_eq!(
            p.restart_required,
            [
                "metrics.scraping_service.kvstore",
                "metrics.scraping_service.lifecycler.ring.kvstore"
            ]
        );
        let tokens = format!("{BASE}    lifecycler:\n      num_tokens: 64\n");
        assert_eq!(
            plan(&cfg(BASE), &cfg(&tokens)).restart_required,
            ["metrics.scraping_service.lifecycler"]
        );
        let wal = BASE.replace("/w", "/other");
        assert_eq!(
            plan(&cfg(BASE), &cfg(&wal)).restart_required,
            ["metrics.wal_directory"]
        );
    }

    #[test]
    fn https_settings_reload_live_but_turning_https_on_or_off_needs_a_restart() {
        let tls = |auth: &str| {
            cfg(&format!(
                "server:\n  http_tls_config:\n    cert_file: /c.pem\n    key_file: /k.pem\n    client_auth_type: {auth}\n{BASE}"
            ))
        };
        let p = plan(&tls("NoClientCert"), &tls("RequireAnyClientCert"));
        assert_eq!(p.changed, ["server.http_tls_config"], "{p:?}");
        assert!(p.restart_required.is_empty(), "{p:?}");
        for (old, new) in [
            (cfg(BASE), tls("NoClientCert")),
            (tls("NoClientCert"), cfg(BASE)),
        ] {
            let p = plan(&old, &new);
            assert_eq!(p.restart_required, ["server.http_tls_config"], "{p:?}");
        }
    }
}
