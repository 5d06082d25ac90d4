//! The ring value codec (dskit's `Proto` codec, ID `ringDesc`).
//!
//! Wire format of the value under `collectors/agent`:
//!
//! ```text
//! value = snappy_block( protobuf(ring.Desc) )
//! snappy_block = varint(uncompressed length) , { literal | copy }   -- the *block* format,
//!                not the framed/stream format (no "\xff\x06\0\0sNaPpY" header, no CRCs)
//! ```
//!
//! Decoding never panics on arbitrary bytes: every failure is an [`Error`] variant.

use prost::Message;

use super::model::Desc;
use super::Error;

/// Largest protobuf `Desc` accepted when decoding. A real ring is far smaller (1,000 members
/// with 128 tokens each is under 1 MiB); the cap stops a corrupt length header from making us
/// allocate gigabytes.
pub const MAX_DECODED_LEN: usize = 64 << 20;

/// Encodes a ring for the KV store: snappy block format of the protobuf bytes.
pub fn encode(desc: &Desc) -> Result<Vec<u8>, Error> {
    let proto = desc.encode_to_vec();
    snap::raw::Encoder::new()
        .compress_vec(&proto)
        .map_err(|source| Error::Encode {
            len: proto.len(),
            source,
        })
}

/// Decodes a value read from the KV store, then normalizes it like every reader must
/// (`id` back-filled from the map key, tokens sorted; see [`Desc::normalize`]).
///
/// A zero-length value is an error (it is not a snappy block; a missing key is the KV layer's
/// business), while the snappy encoding of zero bytes (`[0x00]`) is a ring with no members.
pub fn decode(bytes: &[u8]) -> Result<Desc, Error> {
    let len = snap::raw::decompress_len(bytes).map_err(|source| Error::Snappy {
        len: bytes.len(),
        source,
    })?;
    if len > MAX_DECODED_LEN {
        return Err(Error::TooLarge {
            len,
            max: MAX_DECODED_LEN,
        });
    }
    let proto = snap::raw::Decoder::new()
        .decompress_vec(bytes)
        .map_err(|source| Error::Snappy {
            len: bytes.len(),
            source,
        })?;
    let mut desc = Desc::decode(proto.as_slice()).map_err(|source| Error::Protobuf {
        len: proto.len(),
        source,
    })?;
    desc.normalize();
    Ok(desc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ring::model::{InstanceDesc, InstanceState};
    use proptest::prelude::*;

    fn fixture_path() -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/ring/desc-3-members.bin")
    }

    /// The ring behind `fixtures/ring/desc-3-members.bin`.
    fn three_members() -> Desc {
        let mut desc = Desc::default();
        let members = [
            (
                "agent-a",
                "10.0.0.1:12345",
                InstanceState::Active,
                vec![5u32, 1_000, 2_000_000_000],
                "zone-a",
            ),
            (
                "agent-b",
                "10.0.0.2:12345",
                InstanceState::Leaving,
                vec![42, 300_000, 4_000_000_000],
                "",
            ),
            (
                "agent-c",
                "10.0.0.3:12345",
                InstanceState::Joining,
                vec![],
                "zone-c",
            ),
        ];
        for (id, addr, state, tokens, zone) in members {
            desc.ingesters.insert(
                id.to_owned(),
                InstanceDesc {
                    addr: addr.to_owned(),
                    timestamp: 1_764_000_000,
                    state: state as i32,
                    tokens,
                    zone: zone.to_owned(),
                    registered_timestamp: 1_763_990_000,
                    id: id.to_owned(),
                },
            );
        }
        desc
    }

    #[test]
    fn golden_bytes_match_committed_fixture() {
        let encoded = encode(&three_members()).expect("encode");
        // Regenerate with AGENTCTL_BLESS=1 after a deliberate format change (there should be
        // none: this file is the compatibility contract).
        if std::env::var_os("AGENTCTL_BLESS").is_some() {
            std::fs::write(fixture_path(), &encoded).expect("write fixture");
        }
        let committed =
            std::fs::read(fixture_path()).expect("read fixtures/ring/desc-3-members.bin");
        // The protobuf bytes are the wire contract; compare them first so that a change in
        // the snap crate's compressor (same format, different bytes) is told apart from one.
        let unsnappy = |b: &[u8]| snap::raw::Decoder::new().decompress_vec(b).expect("snappy");
        assert_eq!(
            unsnappy(&encoded),
            unsnappy(&committed),
            "protobuf encoding changed"
        );
        assert_eq!(encoded, committed, "snappy output changed (same protobuf)");
        assert_eq!(decode(&committed).expect("decode fixture"), three_members());
    }

    fn varint(mut v: u64, out: &mut Vec<u8>) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }

    /// Appends a length-delimited field (wire type 2).
    fn field_bytes(field: u64, bytes: &[u8], out: &mut Vec<u8>) {
        varint(field << 3 | 2, out);
        varint(bytes.len() as u64, out);
        out.extend_from_slice(bytes);
    }

    /// Appends a varint field (wire type 0).
    fn field_varint(field: u64, v: u64, out: &mut Vec<u8>) {
        varint(field << 3, out);
        varint(v, out);
    }

    /// A snappy block holding `data` as a single literal, written from the format description
    /// (varint length, then tag byte `(len-1) << 2` for len <= 60, or `60 << 2` plus a one byte
    /// `len-1` for len <= 256), so the test does not depend on our encoder.
    fn snappy_literal(data: &[u8]) -> Vec<u8> {
        assert!(!data.is_empty() && data.len() <= 256);
        let mut out = Vec::new();
        varint(data.len() as u64, &mut out);
        if data.len() <= 60 {
            out.push(((data.len() - 1) as u8) << 2);
        } else {
            out.push(60 << 2);
            out.push((data.len() - 1) as u8);
        }
        out.extend_from_slice(data);
        out
    }

    /// A `Desc` as the old agent (gogo-protobuf, before field 9 existed) writes it: no `id`,
    /// packed tokens, zero-valued fields omitted, plus a reserved field 4 that readers skip.
    #[test]
    fn decodes_hand_built_old_agent_encoding() {
        let mut inst_a = Vec::new();
        field_bytes(1, b"10.0.0.1:9095", &mut inst_a); // addr
        field_varint(2, 1_700_000_000, &mut inst_a); // timestamp
                                                     // state ACTIVE = 0 is omitted (proto3 default)
        let mut packed = Vec::new();
        for t in [300u32, 7, 4_294_967_295] {
            // deliberately unsorted: readers re-sort
            varint(u64::from(t), &mut packed);
        }
        field_bytes(6, &packed, &mut inst_a); // tokens, packed
        field_bytes(7, b"eu-1", &mut inst_a); // zone
        field_varint(8, 1_699_999_000, &mut inst_a); // registered_timestamp

        let mut inst_b = Vec::new();
        field_bytes(1, b"10.0.0.2:9095", &mut inst_b);
        field_varint(2, 1_700_000_005, &mut inst_b);
        field_varint(3, 1, &mut inst_b); // LEAVING
        field_varint(4, 99, &mut inst_b); // reserved/unknown field: skipped
        let mut packed = Vec::new();
        varint(1_000, &mut packed);
        field_bytes(6, &packed, &mut inst_b);

        let mut desc = Vec::new();
        for (key, inst) in [("agent-a", &inst_a), ("agent-b", &inst_b)] {
            let mut entry = Vec::new();
            field_bytes(1, key.as_bytes(), &mut entry); // map key
            field_bytes(2, inst, &mut entry); // map value
            field_bytes(1, &entry, &mut desc); // Desc.ingesters
        }

        let decoded = decode(&snappy_literal(&desc)).expect("decode old agent bytes");
        assert_eq!(decoded.ingesters.len(), 2);
        let a = &decoded.ingesters["agent-a"];
        assert_eq!(a.id, "agent-a", "id back-filled from the map key");
        assert_eq!(a.addr, "10.0.0.1:9095");
        assert_eq!(a.timestamp, 1_700_000_000);
        assert_eq!(a.instance_state(), Some(InstanceState::Active));
        assert_eq!(a.tokens, vec![7, 300, 4_294_967_295], "tokens re-sorted");
        assert_eq!(a.zone, "eu-1");
        assert_eq!(a.registered_timestamp, 1_699_999_000);
        let b = &decoded.ingesters["agent-b"];
        assert_eq!(b.id, "agent-b");
        assert_eq!(b.instance_state(), Some(InstanceState::Leaving));
        assert_eq!(b.tokens, vec![1_000]);
        assert_eq!(b.zone, "");
        assert_eq!(b.registered_timestamp, 0);

        // Our encoder writes the same fields (plus id), so the old agent reads it back.
        let again = decode(&encode(&decoded).expect("encode")).expect("decode");
        assert_eq!(again, decoded);
    }

    #[test]
    fn unknown_state_is_kept_and_not_active() {
        let mut inst = Vec::new();
        field_varint(3, 7, &mut inst);
        let mut entry = Vec::new();
        field_bytes(1, b"x", &mut entry);
        field_bytes(2, &inst, &mut entry);
        let mut desc = Vec::new();
        field_bytes(1, &entry, &mut desc);
        let decoded = decode(&snappy_literal(&desc)).expect("decode");
        let x = &decoded.ingesters["x"];
        assert_eq!(x.instance_state(), None);
        assert_eq!(x.state_name(), "7");
        let again = decode(&encode(&decoded).expect("encode")).expect("decode");
        assert_eq!(again.ingesters["x"].state, 7);
    }

    #[test]
    fn empty_value_is_empty_ring() {
        // snappy of zero bytes is the single varint 0.
        assert_eq!(decode(&[0]).expect("decode"), Desc::default());
        assert!(matches!(decode(&[]), Err(Error::Snappy { len: 0, .. })));
    }

    #[test]
    fn framed_snappy_is_rejected() {
        let mut framed = b"\xff\x06\x00\x00sNaPpY".to_vec();
        framed.extend_from_slice(&[1, 5, 0, 0, 0, 0, 0, 0, 0]);
        assert!(decode(&framed).is_err());
    }

    #[test]
    fn huge_length_header_is_rejected_without_allocating() {
        let mut bytes = Vec::new();
        varint(u64::from(u32::MAX), &mut bytes);
        bytes.push(0);
        match decode(&bytes) {
            Err(Error::TooLarge { len, max }) => {
                assert_eq!(len, u32::MAX as usize);
                assert_eq!(max, MAX_DECODED_LEN);
            }
            other => panic!("expected TooLarge, got {other:?}"),
        }
    }

    #[test]
    fn bad_protobuf_is_a_typed_error() {
        // A valid snappy block whose content is a truncated length-delimited field.
        let err = decode(&snappy_literal(&[0x0a, 0x05, 0x01])).expect_err("must fail");
        assert!(matches!(err, Error::Protobuf { len: 3, .. }), "{err:?}");
        assert!(err.to_string().contains("ring.Desc"), "{err}");
    }

    fn arb_state() -> impl Strategy<Value = i32> {
        prop_oneof![4 => 0i32..=4, 1 => any::<i32>()]
    }

    fn arb_instance() -> impl Strategy<Value = InstanceDesc> {
        (
            ".{0,20}",
            any::<i64>(),
            arb_state(),
            proptest::collection::vec(any::<u32>(), 0..40),
            "[a-z0-9-]{0,8}",
            any::<i64>(),
        )
            .prop_map(
                |(addr, timestamp, state, tokens, zone, registered_timestamp)| InstanceDesc {
                    addr,
                    timestamp,
                    state,
                    tokens,
                    zone,
                    registered_timestamp,
                    id: String::new(),
                },
            )
    }

    fn arb_desc() -> impl Strategy<Value = Desc> {
        proptest::collection::btree_map(".{0,12}", arb_instance(), 0..6)
            .prop_map(|ingesters| Desc { ingesters })
    }

    proptest! {
        #[test]
        fn roundtrip(mut desc in arb_desc()) {
            let decoded = decode(&encode(&desc).expect("encode")).expect("decode");
            desc.normalize();
            prop_assert_eq!(decoded, desc);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode(&bytes);
        }

        #[test]
        fn arbitrary_protobuf_inside_valid_snappy_never_panics(
            bytes in proptest::collection::vec(any::<u8>(), 0..512)
        ) {
            let compressed = snap::raw::Encoder::new().compress_vec(&bytes).expect("compress");
            let _ = decode(&compressed);
        }

        #[test]
        fn mutated_encoding_never_panics(desc in arb_desc(), pos in any::<usize>(), byte in any::<u8>()) {
            let mut bytes = encode(&desc).expect("encode");
            if !bytes.is_empty() {
                let i = pos % bytes.len();
                bytes[i] = byte;
            }
            let _ = decode(&bytes);
        }
    }
}
