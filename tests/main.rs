//! The one integration-test binary: modules per feature, shared helpers in `support`.

mod support;

mod abuse;
mod agent;
mod api;
mod azuread;
mod ci_examples;
mod cli;
mod cluster;
mod config_sync;
mod consul_sd;
mod differential;
mod discovery;
mod etcd_tls;
mod http_client;
mod ignored_fields;
mod kubernetes_sd;
mod kv;
mod mixin;
mod package;
mod progress;
mod reliability;
mod remote_write;
mod remote_write_e2e;
mod replay;
mod ring;
mod ring_browser;
mod scrape;
mod sd_vmagent;
mod server_tls;
mod shared_reload;
mod sigv4;
mod slow;
mod wal;
mod wal_inspect;
mod wal_to_remote;
