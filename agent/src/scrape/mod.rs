//! The scrape engine: exposition parsing, scrape loops and the series cache.
pub mod target;
