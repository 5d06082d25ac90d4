//! The scrape engine: exposition parsing, target label population, scrape loops and the
//! series cache.
pub mod parse;
pub mod target;
pub mod appender;
pub mod cache;
pub mod scrape_loop;
