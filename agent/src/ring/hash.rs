//! Key hashing: which point of the ring a config name lands on.
//!
//! The old agent hashes the config name (the KV key without prefix, raw UTF-8 bytes, e.g.
//! `team/a`) with Go's `fnv.New32`, which is **FNV-1** (multiply, then xor), not FNV-1a:
//!
//! ```text
//! h = 2166136261
//! for b in bytes { h = h * 16777619 mod 2^32; h = h ^ b }
//! ```

const OFFSET_BASIS: u32 = 2_166_136_261;
const PRIME: u32 = 16_777_619;

/// 32-bit FNV-1 of `bytes`.
pub fn fnv1_32(bytes: &[u8]) -> u32 {
    bytes
        .iter()
        .fold(OFFSET_BASIS, |h, &b| h.wrapping_mul(PRIME) ^ u32::from(b))
}

/// The ring key of a config name.
pub fn key_hash(name: &str) -> u32 {
    fnv1_32(name.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_vectors() {
        assert_eq!(fnv1_32(b""), 0x811c_9dc5);
        assert_eq!(fnv1_32(b"a"), 0x050c_5d7e);
        assert_eq!(fnv1_32(b"foobar"), 0x31f0_b262);
        assert_eq!(key_hash("foobar"), 0x31f0_b262);
    }

    #[test]
    fn is_not_fnv1a() {
        // FNV-1a of "a" is 0xe40c292c; getting it would mean the operations are swapped.
        assert_ne!(fnv1_32(b"a"), 0xe40c_292c);
    }

    #[test]
    fn hashes_raw_bytes_of_nested_names() {
        // `team/a` (URL `team%2Fa`) is hashed as the six bytes, slash included.
        assert_eq!(key_hash("team/a"), fnv1_32(b"team/a"));
        assert_ne!(key_hash("team/a"), key_hash("team%2Fa"));
    }
}
