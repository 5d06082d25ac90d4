//! The consistent hash ring: model, codec, token generation and lookup.
//!
//! The model, codec, lookup and rendering are pure: no KV access, no clock reads (callers pass
//! `now`), no I/O except the tokens file. [`store`] reads and CASes the ring in the KV store,
//! [`lifecycler`] keeps this agent's membership, [`view`] follows the ring through a watch, and
//! [`http`] serves `/debug/ring`. The ring is the value under `collectors/agent` (see [`codec`] for the
//! bytes, [`model`] for the protobuf schema); [`lookup`] decides who owns a config name the way
//! the old agent does; [`render`] turns a ring into the ring page, its JSON and a terminal
//! table.

pub mod codec;
pub mod hash;
pub mod http;
pub mod lifecycler;
pub mod lookup;
pub mod model;
pub mod render;
pub mod store;
pub mod tokens;
pub mod view;

use std::path::PathBuf;

pub use codec::{decode, encode};
pub use hash::{fnv1_32, key_hash};
pub use lifecycler::{HeartbeatReport, Lifecycler, LifecyclerSettings};
pub use lookup::{members_to_forget, ownership, Operation, Ring};
pub use model::{Desc, InstanceDesc, InstanceState};
pub use store::{forget, modify_ring, read_ring, ring_key, RingStoreError};
pub use tokens::{
    generate_tokens, load_tokens_file, save_tokens_file, TokenRng, DEFAULT_NUM_TOKENS,
};
pub use view::RingView;

/// Errors of the ring module. The two lookup errors keep the old agent's texts, which
/// operators search for.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("ring value ({len} bytes) is not a snappy block: {source}")]
    Snappy {
        len: usize,
        #[source]
        source: snap::Error,
    },
    #[error("ring value claims {len} bytes uncompressed, more than the {max} byte limit")]
    TooLarge { len: usize, max: usize },
    #[error("ring value ({len} bytes uncompressed) is not a protobuf ring.Desc: {source}")]
    Protobuf {
        len: usize,
        #[source]
        source: prost::DecodeError,
    },
    #[error("cannot snappy-compress a ring of {len} protobuf bytes: {source}")]
    Encode {
        len: usize,
        #[source]
        source: snap::Error,
    },
    #[error("empty ring")]
    EmptyRing,
    #[error(
        "at least 1 healthy replica required, could only find 0 - unhealthy instances: {}",
        .unhealthy.join(",")
    )]
    NoHealthyReplica {
        /// Addresses of the members the lookup walked, in walk order.
        unhealthy: Vec<String>,
    },
    #[error("cannot generate {wanted} tokens: only {free} token values are free")]
    NotEnoughTokens { wanted: usize, free: u64 },
    #[error("reading tokens file {}: {source}", .path.display())]
    TokensFileRead {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("tokens file {} is not JSON {{\"tokens\":[...]}}: {source}", .path.display())]
    TokensFileParse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("writing tokens file {}: {source}", .path.display())]
    TokensFileWrite {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}
