//! Secrets (`password`, `bearer_token`, `credentials`, `client_secret`, ...): a type whose value
//! never appears in `Debug`, logs or serialized YAML, except inside [`reveal_secrets`], which the
//! KV store uses to keep the value (as the old agent stores it, in clear).

use std::cell::Cell;
use std::fmt;

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
        assert_eq!(reveal_secrets(|| serde_yaml::to_string(&s).unwrap()).trim(), "hunter2");
        assert_eq!(serde_yaml::to_string(&s).unwrap().trim(), "<secret>");
        assert_eq!(s.expose(), "hunter2");
    }
}
