//! The scrape engine: exposition parsing, target label population, scrape loops and the
//! series cache.
pub mod appender;
pub mod assigned;
pub mod cache;
pub mod host_filter;
pub mod identity;
pub mod manager;
pub mod metadata;
pub mod parse;
pub mod scrape_loop;
pub mod target;
