//! The agentctl daemon library: configuration, KV store, hash ring, scraping, write-ahead log,
//! remote_write, cluster membership and the HTTP API.
// Denied everywhere but in two audited modules: `labels::thin` (a one-word shared byte string,
// see agent/src/labels/thin.rs for why) and `labels::symbols` (the table of label pairs with
// lock-free reads, agent/src/labels/symbols.rs).
#![deny(unsafe_code)]

pub mod api;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod daemon;
pub mod discovery;
pub mod host;
pub mod httpclient;
pub mod instance;
pub mod kv;
pub mod labels;
pub mod logging;
pub mod notify;
pub mod relabel;
pub mod remote_write;
pub mod ring;
pub mod rng;
pub mod scrape;
pub mod telemetry;
pub mod wal;

#[cfg(test)]
mod fuzz;
