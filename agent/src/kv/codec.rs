//! The config value codec, byte-compatible with the old agent (`agentConfig/yaml`):
//!
//! ```text
//! value = gzip(yaml)     RFC 1952, one member, default level, no file name, mtime 0
//! value = ""             (zero length) the config is deleted
//! ```
//!
//! Decoding accepts any valid gzip stream (any level, with or without a name or mtime, and
//! several concatenated members, as Go's `gzip.Reader` does), so values written by the old
//! agent, by `gzip` or by `etcdctl put` of such a file decode alike. The YAML must be UTF-8.

use std::io::{Read, Write};

use flate2::read::MultiGzDecoder;
use flate2::write::GzEncoder;
use flate2::Compression;

/// A value that is not gzip(UTF-8 YAML), with the key it was read from.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("value of {key:?} is not valid gzip: {source}")]
    Gzip {
        key: String,
        #[source]
        source: std::io::Error,
    },
    /// More than [`MAX_DECODED_LEN`] bytes after gunzip: a corrupt value or a gzip bomb (gzip
    /// expands up to ~1000:1, so a 1.5 MiB etcd value could otherwise take 1.5 GB).
    #[error("value of {key:?} is larger than {max} bytes after gunzip")]
    TooLarge { key: String, max: usize },
    #[error("value of {key:?} is not UTF-8 YAML after gunzip: {source}")]
    Utf8 {
        key: String,
        #[source]
        source: std::string::FromUtf8Error,
    },
}

/// Largest YAML accepted when decoding a value. The API refuses bodies over 4 MiB; configs
/// written by other tools may be larger, but not by this much.
pub const MAX_DECODED_LEN: usize = 64 << 20;

/// gzip of the YAML text, as the old agent stores it.
pub fn encode_config(yaml: &str) -> Vec<u8> {
    let mut enc = GzEncoder::new(
        Vec::with_capacity(yaml.len() / 3 + 32),
        Compression::default(),
    );
    // Writing into a Vec cannot fail; the match keeps this total without an unwrap.
    match enc.write_all(yaml.as_bytes()).and_then(|()| enc.finish()) {
        Ok(bytes) => bytes,
        Err(err) => unreachable_io(err),
    }
}

#[cold]
fn unreachable_io(err: std::io::Error) -> Vec<u8> {
    // An in-memory gzip encoder has no I/O that can fail; if flate2 ever reported one, an empty
    // value would be read back as "deleted", so fail loudly instead.
    panic!("gzip into memory failed: {err}")
}

/// The YAML stored in `value` (read from `key`), or `None` for a zero-length value (deleted).
pub fn decode_config(key: &str, value: &[u8]) -> Result<Option<String>, CodecError> {
    if value.is_empty() {
        return Ok(None);
    }
    let mut out = Vec::with_capacity(value.len().saturating_mul(4).min(MAX_DECODED_LEN));
    // One byte over the limit tells "exactly at the limit" from "over it".
    MultiGzDecoder::new(value)
        .take(MAX_DECODED_LEN as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|source| CodecError::Gzip {
            key: key.to_owned(),
            source,
        })?;
    if out.len() > MAX_DECODED_LEN {
        return Err(CodecError::TooLarge {
            key: key.to_owned(),
            max: MAX_DECODED_LEN,
        });
    }
    String::from_utf8(out)
        .map(Some)
        .map_err(|source| CodecError::Utf8 {
            key: key.to_owned(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const YAML: &str =
        "scrape_configs:\n- job_name: from-cli\n  static_configs:\n  - targets: [localhost:9090]\n";

    /// `printf '%s' "$YAML" | gzip -9 -n`: the gzip CLI at another level than ours.
    const FROM_GZIP_CLI: [u8; 93] = [
        0x1f, 0x8b, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0x03, 0x45, 0xca, 0xc1, 0x09, 0xc0,
        0x20, 0x0c, 0x05, 0xd0, 0xbb, 0x53, 0xfc, 0x05, 0x04, 0xaf, 0xba, 0x4a, 0x29, 0x92, 0x06,
        0xb5, 0x16, 0x35, 0xc5, 0x64, 0x7f, 0x7a, 0xec, 0x3b, 0x3f, 0xe5, 0x4d, 0x6f, 0xc9, 0x2c,
        0xab, 0xf6, 0xa6, 0xc9, 0x79, 0x3c, 0x72, 0xe5, 0x45, 0xb3, 0x24, 0xd4, 0x2d, 0xd3, 0xf3,
        0xe8, 0x0e, 0x50, 0x23, 0xeb, 0xfc, 0x37, 0xc0, 0xc3, 0x68, 0xb7, 0x62, 0x9a, 0x70, 0x0c,
        0x61, 0x1a, 0xb7, 0xa8, 0xa5, 0x18, 0x62, 0x38, 0xdd, 0x07, 0x30, 0x1e, 0x85, 0x37, 0x55,
        0x00, 0x00, 0x00,
    ];

    #[test]
    fn decodes_gzip_cli_output() {
        assert_eq!(
            decode_config("configurations/cli", &FROM_GZIP_CLI).expect("decode"),
            Some(YAML.to_owned())
        );
    }

    #[test]
    fn decodes_other_levels_and_concatenated_members() {
        let mut enc = GzEncoder::new(Vec::new(), Compression::fast());
        enc.write_all(b"a: 1\n").expect("write");
        let mut two = enc.finish().expect("finish");
        two.extend(encode_config("b: 2\n"));
        assert_eq!(
            decode_config("k", &two).expect("decode"),
            Some("a: 1\nb: 2\n".to_owned())
        );
    }

    #[test]
    fn encoding_is_one_gzip_member_with_go_header() {
        let bytes = encode_config(YAML);
        // Magic, deflate, no flags (no name), mtime 0: what Go's gzip.Writer writes by default.
        assert_eq!(&bytes[..8], &[0x1f, 0x8b, 0x08, 0, 0, 0, 0, 0]);
        assert_eq!(
            decode_config("k", &bytes).expect("decode"),
            Some(YAML.to_owned())
        );
    }

    #[test]
    fn empty_value_means_deleted() {
        assert_eq!(decode_config("k", b"").expect("decode"), None);
    }

    #[test]
    fn corrupt_values_name_the_key() {
        let err = decode_config("configurations/bad", b"not gzip").expect_err("corrupt");
        assert!(err.to_string().contains("configurations/bad"), "{err}");
        let mut truncated = encode_config(YAML);
        truncated.truncate(truncated.len() - 6);
        let err = decode_config("configurations/cut", &truncated).expect_err("truncated");
        assert!(err.to_string().contains("configurations/cut"), "{err}");
        let err =
            decode_config("configurations/bin", &encode_bytes(&[0xff, 0xfe])).expect_err("utf8");
        assert!(err.to_string().contains("not UTF-8"), "{err}");
    }

    #[test]
    fn a_gzip_bomb_is_refused_without_inflating_it_all() {
        // 65 MiB of spaces compress to ~65 KiB; decoding stops one byte past the limit.
        let mut enc = GzEncoder::new(Vec::new(), Compression::default());
        let chunk = vec![b' '; 1 << 20];
        for _ in 0..65 {
            enc.write_all(&chunk).expect("write");
        }
        let bomb = enc.finish().expect("finish");
        assert!(bomb.len() < 1 << 20, "{}", bomb.len());
        let err = decode_config("configurations/bomb", &bomb).expect_err("too large");
        assert!(
            matches!(
                err,
                CodecError::TooLarge {
                    max: MAX_DECODED_LEN,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("configurations/bomb"), "{err}");
    }

    fn encode_bytes(raw: &[u8]) -> Vec<u8> {
        let mut enc = GzEncoder::new(Vec::new(), Compression::default());
        enc.write_all(raw).expect("write");
        enc.finish().expect("finish")
    }

    proptest! {
        #[test]
        fn round_trips(s in "\\PC{0,200}") {
            let decoded = decode_config("k", &encode_config(&s)).expect("decode");
            prop_assert_eq!(decoded, Some(s));
        }

        #[test]
        fn never_panics_on_garbage(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = decode_config("k", &bytes);
        }
    }
}
