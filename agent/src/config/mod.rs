//! Configuration: agent.yaml and instance configs, parsed strictly then validated.
//!
//! Two stages, as everywhere in this crate: raw serde structs with `deny_unknown_fields`
//! (leaf values such as durations, regexes and URLs are checked while parsing, so their errors
//! carry a line and column), then validated types with defaults applied and cross-field rules
//! checked, with the old agent's error texts where it had them.

pub mod agent;
pub mod duration;
pub mod envsubst;
pub mod http;
pub mod ignored;
pub mod instance;
pub mod invalid;
pub mod kubernetes_selector;
pub mod load;
pub mod regex;
pub mod relabel;
pub mod reload;
pub mod remote_write;
pub mod scrape;
pub mod sd;
pub mod secret;
pub mod url;

pub use agent::{AgentConfig, AgentConfigRaw};
pub use instance::{GlobalConfig, InstanceConfig, InstanceConfigRaw};
pub use load::{ConfigError, Kind};
pub mod reference;
