//! The one integration-test binary: modules per feature, shared helpers in `support`.

mod support;

mod agent;
mod api;
mod cli;
mod config_sync;
mod discovery;
mod kv;
mod remote_write;
mod wal;
mod wal_inspect;
