//! Secrets (`password`, `bearer_token`, `credentials`, `client_secret`, ...): a type whose value
//! never appears in `Debug`, logs or serialized YAML, except inside [`reveal_secrets`], which the
//! KV store uses to keep the value (as the old agent stores it, in clear).

use std::cell::Cell;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// What a secret looks like wherever it is shown: the old agent's marker.
pub const REDACTED: &str = "<secret>";

thread_local! {
    static REVEAL: Cell<bool> = const { Cell::new(false) };
}

/// A secret string.
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    /// The value itself, for the one place that sends it (an HTTP header, a TLS key).
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if REVEAL.with(Cell::get) {
            s.serialize_str(&self.0)
        } else {
            s.serialize_str(REDACTED)
        }
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        super::duration::scalar_string(d).map(Secret)
    }
}

/// A value given inline or named by a file that is read at each use, so a rotated credential or
/// certificate is picked up without a restart. The one "inline or file" type of every validated
/// config (HTTP client credentials, PEM data, etcd and sigv4 secrets).
#[derive(Clone, PartialEq, Eq)]
pub enum SecretSource {
    Inline(Secret),
    File(PathBuf),
}

impl fmt::Debug for SecretSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretSource::Inline(_) => f.write_str(REDACTED),
            SecretSource::File(p) => write!(f, "file {}", p.display()),
        }
    }
}

impl SecretSource {
    /// The source of a pair of config fields (`password` / `password_file`): a non-empty file
    /// name wins, then a non-empty inline value; `None` when both are unset or empty.
    pub fn from_fields(inline: Option<&Secret>, file: Option<&str>) -> Option<SecretSource> {
        match (inline, file) {
            (_, Some(f)) if !f.is_empty() => Some(SecretSource::File(PathBuf::from(f))),
            (Some(s), _) if !s.is_empty() => Some(SecretSource::Inline(s.clone())),
            _ => None,
        }
    }

    /// The same source with a relative file name resolved against `base`.
    pub fn resolved(&self, base: Option<&Path>) -> SecretSource {
        match (self, base) {
            (SecretSource::File(p), Some(b)) if p.is_relative() => SecretSource::File(b.join(p)),
            _ => self.clone(),
        }
    }

    /// The file this value is read from, if any.
    pub fn path(&self) -> Option<&Path> {
        match self {
            SecretSource::File(p) => Some(p),
            SecretSource::Inline(_) => None,
        }
    }

    /// The raw bytes (PEM data), read from the file off the async workers.
    pub async fn bytes(&self) -> std::io::Result<Vec<u8>> {
        match self {
            SecretSource::Inline(s) => Ok(s.expose().as_bytes().to_vec()),
            SecretSource::File(p) => tokio::fs::read(p).await,
        }
    }

    /// The raw bytes, read with a blocking call: for building clients outside a request.
    pub fn bytes_blocking(&self) -> std::io::Result<Vec<u8>> {
        match self {
            SecretSource::Inline(s) => Ok(s.expose().as_bytes().to_vec()),
            SecretSource::File(p) => std::fs::read(p),
        }
    }

    /// The value as a credential: a file's contents with surrounding whitespace trimmed, as
    /// Prometheus reads `password_file` and `bearer_token_file`.
    pub async fn value(&self) -> std::io::Result<Secret> {
        match self {
            SecretSource::Inline(s) => Ok(s.clone()),
            SecretSource::File(p) => {
                let text = tokio::fs::read_to_string(p).await?;
                Ok(Secret::new(text.trim()))
            }
        }
    }
}

/// Whether secrets are being revealed on this thread (for types that hold a secret inside).
pub(crate) fn reveal_probe() -> bool {
    REVEAL.with(Cell::get)
}

/// Runs `f` with secrets serialized in clear, on this thread only.
pub fn reveal_secrets<T>(f: impl FnOnce() -> T) -> T {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            REVEAL.with(|r| r.set(self.0));
        }
    }
    let _restore = Restore(REVEAL.with(|r| r.replace(true)));
    f()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_shown_unless_revealed() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?}"), "<secret>");
        assert_eq!(serde_yaml::to_string(&s).unwrap().trim(), "<secret>");
        assert_eq!(
            reveal_secrets(|| serde_yaml::to_string(&s).unwrap()).trim(),
            "hunter2"
        );
        assert_eq!(serde_yaml::to_string(&s).unwrap().trim(), "<secret>");
        assert_eq!(s.expose(), "hunter2");
    }
}
