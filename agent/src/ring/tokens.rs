//! Token generation and the optional tokens file.
//!
//! A joining member draws `num_tokens` (default 128) uniform random `u32` values, rejecting
//! any already held by another member or drawn earlier, and keeps them sorted ascending (as
//! dskit's `RandomTokenGenerator` does).
//!
//! Tokens file (`tokens_file_path`), JSON, the same as dskit's `tokens.go`:
//!
//! ```text
//! {"tokens":[12,345,6789]}
//! ```
//!
//! written to `<path>.tmp` and renamed over `<path>` so a crash never leaves half a file.

use std::collections::HashSet;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::Error;

/// The default `lifecycler.num_tokens`.
pub const DEFAULT_NUM_TOKENS: usize = 128;

/// The generator tokens are drawn with (see `agent/src/rng.rs`).
pub type TokenRng = crate::rng::Rng;

/// Draws `n` distinct tokens that are not in `taken`, sorted ascending.
pub fn generate_tokens(n: usize, taken: &[u32], rng: &mut TokenRng) -> Result<Vec<u32>, Error> {
    let mut used: HashSet<u32> = taken.iter().copied().collect();
    let free = (1u64 << 32) - used.len() as u64;
    if n as u64 > free {
        return Err(Error::NotEnoughTokens { wanted: n, free });
    }
    let mut tokens = Vec::with_capacity(n);
    while tokens.len() < n {
        let t = rng.next_u32();
        if used.insert(t) {
            tokens.push(t);
        }
    }
    tokens.sort_unstable();
    Ok(tokens)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokensFile {
    tokens: Vec<u32>,
}

/// Reads a tokens file. `Ok(None)` when it does not exist (first start); the tokens come
/// back sorted ascending.
pub fn load_tokens_file(path: &Path) -> Result<Option<Vec<u32>>, Error> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(Error::TokensFileRead {
                path: path.to_owned(),
                source,
            })
        }
    };
    let mut file: TokensFile =
        serde_json::from_slice(&bytes).map_err(|source| Error::TokensFileParse {
            path: path.to_owned(),
            source,
        })?;
    file.tokens.sort_unstable();
    Ok(Some(file.tokens))
}

/// Writes a tokens file atomically: `<path>.tmp`, fsync, rename.
pub fn save_tokens_file(path: &Path, tokens: &[u32]) -> Result<(), Error> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    // Written by hand rather than through serde: it cannot fail, so no error path to invent.
    let list: Vec<String> = tokens.iter().map(u32::to_string).collect();
    let body = format!("{{\"tokens\":[{}]}}", list.join(","));
    let write = |p: &Path| -> std::io::Result<()> {
        let mut f = std::fs::File::create(p)?;
        f.write_all(body.as_bytes())?;
        f.sync_all()
    };
    write(&tmp).map_err(|source| Error::TokensFileWrite {
        path: tmp.clone(),
        source,
    })?;
    std::fs::rename(&tmp, path).map_err(|source| Error::TokensFileWrite {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn generates_sorted_distinct_tokens_avoiding_taken() {
        let mut rng = TokenRng::with_seed(7);
        let taken = generate_tokens(1000, &[], &mut rng).expect("first");
        let mine = generate_tokens(DEFAULT_NUM_TOKENS, &taken, &mut rng).expect("second");
        assert_eq!(mine.len(), DEFAULT_NUM_TOKENS);
        assert!(mine.windows(2).all(|w| w[0] < w[1]), "sorted and distinct");
        let taken: HashSet<u32> = taken.into_iter().collect();
        assert!(mine.iter().all(|t| !taken.contains(t)));
    }

    #[test]
    fn different_seeds_differ_and_same_seed_repeats() {
        let a = generate_tokens(16, &[], &mut TokenRng::with_seed(1)).expect("a");
        let b = generate_tokens(16, &[], &mut TokenRng::with_seed(2)).expect("b");
        let a2 = generate_tokens(16, &[], &mut TokenRng::with_seed(1)).expect("a2");
        assert_ne!(a, b);
        assert_eq!(a, a2);
        let t1 = generate_tokens(16, &[], &mut TokenRng::from_entropy()).expect("t1");
        assert_eq!(t1.len(), 16);
    }

    #[test]
    fn generator_reaches_the_whole_range() {
        // Tokens should cover all four quarters of the u32 space evenly-ish.
        let tokens = generate_tokens(4000, &[], &mut TokenRng::with_seed(3)).expect("gen");
        let mut quarters = [0usize; 4];
        for t in tokens {
            quarters[(t >> 30) as usize] += 1;
        }
        assert!(
            quarters.iter().all(|&q| (800..1200).contains(&q)),
            "{quarters:?}"
        );
    }

    #[test]
    fn tokens_file_roundtrip_and_format() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("tokens.json");
        assert_eq!(load_tokens_file(&path).expect("missing is ok"), None);
        save_tokens_file(&path, &[30, 10, 20]).expect("save");
        assert_eq!(
            std::fs::read_to_string(&path).expect("read"),
            r#"{"tokens":[30,10,20]}"#
        );
        assert!(!dir.path().join("tokens.json.tmp").exists());
        assert_eq!(
            load_tokens_file(&path).expect("load"),
            Some(vec![10, 20, 30])
        );
    }

    #[test]
    fn tokens_file_errors_name_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("tokens.json");
        std::fs::write(&path, "{\"tokens\": [1, -2]}").expect("write");
        let err = load_tokens_file(&path).expect_err("bad json");
        assert!(matches!(err, Error::TokensFileParse { .. }));
        assert!(err.to_string().contains("tokens.json"), "{err}");

        let missing_dir = dir.path().join("nope").join("tokens.json");
        let err = save_tokens_file(&missing_dir, &[1]).expect_err("no dir");
        assert!(err.to_string().contains("tokens.json.tmp"), "{err}");
    }

    proptest! {
        #[test]
        fn generated_tokens_never_collide(seed in any::<u64>(), n in 0usize..300,
                                          taken in proptest::collection::vec(any::<u32>(), 0..300)) {
            let tokens = generate_tokens(n, &taken, &mut TokenRng::with_seed(seed)).expect("gen");
            prop_assert_eq!(tokens.len(), n);
            prop_assert!(tokens.windows(2).all(|w| w[0] < w[1]));
            prop_assert!(tokens.iter().all(|t| !taken.contains(t)));
        }
    }
}
