//! The one integration-test binary: modules per feature, shared helpers in `support`.

mod support;

mod agent;
mod cli;
mod discovery;
mod kv;
mod ring;
mod ring_browser;
mod wal;
