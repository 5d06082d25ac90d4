//! The ring value stored under `collectors/agent`: protobuf `ring.Desc` of dskit's `ring.proto`.
//!
//! Field numbers are the wire contract with the old agent and must never change:
//!
//! ```text
//! message Desc {
//!   map<string, InstanceDesc> ingesters = 1;   // key = instance ID
//!   reserved 2;
//! }
//! message InstanceDesc {
//!   string addr = 1;                  // host:port, the identity used for ownership
//!   int64 timestamp = 2;              // last heartbeat, unix seconds
//!   InstanceState state = 3;
//!   reserved 4, 5;
//!   repeated uint32 tokens = 6;       // packed, sorted ascending
//!   string zone = 7;
//!   int64 registered_timestamp = 8;   // unix seconds, 0 = unknown
//!   string id = 9;                    // same as the map key; old writers leave it empty
//! }
//! enum InstanceState { ACTIVE = 0; LEAVING = 1; PENDING = 2; JOINING = 3; LEFT = 4; }
//! ```
//!
//! The map is a `BTreeMap` so that encoding is deterministic (entries sorted by instance ID);
//! protobuf readers accept map entries in any order.

use std::collections::BTreeMap;

/// The whole ring: every member, keyed by instance ID.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Desc {
    #[prost(btree_map = "string, message", tag = "1")]
    pub ingesters: BTreeMap<String, InstanceDesc>,
}

/// One ring member.
#[derive(Clone, PartialEq, prost::Message)]
pub struct InstanceDesc {
    #[prost(string, tag = "1")]
    pub addr: String,
    /// Last heartbeat, unix seconds.
    #[prost(int64, tag = "2")]
    pub timestamp: i64,
    /// Raw [`InstanceState`] value; kept as `i32` so an unknown state from a newer writer
    /// survives a read-modify-write. Read it with [`InstanceDesc::instance_state`].
    #[prost(enumeration = "InstanceState", tag = "3")]
    pub state: i32,
    #[prost(uint32, repeated, packed = "true", tag = "6")]
    pub tokens: Vec<u32>,
    #[prost(string, tag = "7")]
    pub zone: String,
    /// Unix seconds, 0 = unknown.
    #[prost(int64, tag = "8")]
    pub registered_timestamp: i64,
    #[prost(string, tag = "9")]
    pub id: String,
}

/// Membership state of an instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum InstanceState {
    Active = 0,
    Leaving = 1,
    Pending = 2,
    Joining = 3,
    Left = 4,
}

impl InstanceState {
    /// The protobuf enum name, as the old agent's ring page shows it.
    pub fn as_str(self) -> &'static str {
        match self {
            InstanceState::Active => "ACTIVE",
            InstanceState::Leaving => "LEAVING",
            InstanceState::Pending => "PENDING",
            InstanceState::Joining => "JOINING",
            InstanceState::Left => "LEFT",
        }
    }
}

impl std::fmt::Display for InstanceState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl InstanceDesc {
    /// The state, or `None` for a value this version does not know. Unknown states are
    /// never treated as ACTIVE (prost's generated getter would default them to ACTIVE).
    pub fn instance_state(&self) -> Option<InstanceState> {
        InstanceState::try_from(self.state).ok()
    }

    /// The state's name; unknown values print as the number, like Go's `String()` does.
    pub fn state_name(&self) -> String {
        match self.instance_state() {
            Some(s) => s.as_str().to_owned(),
            None => self.state.to_string(),
        }
    }

    pub fn set_instance_state(&mut self, state: InstanceState) {
        self.state = state as i32;
    }
}

impl Desc {
    /// Every token held by any member (unsorted, duplicates kept): the "taken" set a joining
    /// member must avoid.
    pub fn all_tokens(&self) -> Vec<u32> {
        self.ingesters
            .values()
            .flat_map(|i| i.tokens.iter().copied())
            .collect()
    }

    /// What every reader does after decoding: the map key is the instance's identity, so `id`
    /// is set from it (old writers leave field 9 empty), and tokens are sorted ascending
    /// because lookup relies on it and not every writer guarantees it.
    pub fn normalize(&mut self) {
        for (key, inst) in self.ingesters.iter_mut() {
            if inst.id != *key {
                inst.id.clone_from(key);
            }
            inst.tokens.sort_unstable();
        }
    }
}
