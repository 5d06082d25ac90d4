//! URLs, label names and byte sizes as they appear in configs.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A parsed absolute URL. Credentials in it are never displayed.
#[derive(Clone, PartialEq, Eq)]
pub struct ConfigUrl(pub url::Url);

impl ConfigUrl {
    pub fn parse(s: &str) -> Result<Self, String> {
        url::Url::parse(s)
            .map(ConfigUrl)
            .map_err(|e| format!("invalid URL {:?}: {e}", redact_unparsed(s)))
    }
    pub fn as_url(&self) -> &url::Url {
        &self.0
    }
    /// The URL with any password replaced by `<secret>`, for logs and errors.
    pub fn redacted(&self) -> String {
        let mut u = self.0.clone();
        if u.password().is_some() {
            let _ = u.set_password(Some(super::secret::REDACTED));
        }
        u.to_string()
    }
}

/// A URL that did not parse, for an error message: whatever precedes the last `@` (after any
/// `scheme://`) may be `user:password` and is shown as `<secret>`.
fn redact_unparsed(s: &str) -> String {
    let start = s.find("://").map_or(0, |i| i + 3);
    match s[start..].rfind('@') {
        Some(at) => format!(
            "{}{}{}",
            &s[..start],
            super::secret::REDACTED,
            &s[start + at..]
        ),
        None => s.to_owned(),
    }
}

impl fmt::Debug for ConfigUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.redacted())
    }
}

impl fmt::Display for ConfigUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl Serialize for ConfigUrl {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // A password in the URL is a secret too: shown only where secrets are revealed.
        if self.0.password().is_some() && !super::secret::reveal_probe() {
            return s.serialize_str(&self.redacted());
        }
        s.serialize_str(self.0.as_str())
    }
}

impl<'de> Deserialize<'de> for ConfigUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = super::duration::scalar_string(d)?;
        ConfigUrl::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// A Prometheus label name: `[a-zA-Z_][a-zA-Z0-9_]*`.
pub fn is_valid_label_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A Prometheus metric name: `[a-zA-Z_:][a-zA-Z0-9_:]*`.
pub fn is_valid_metric_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// A size in bytes written with a base-2 unit (`body_size_limit: 10MB`), as Prometheus's
/// `units.Base2Bytes`: `B`, `KB`/`KiB`, `MB`/`MiB`, ... `EB`/`EiB`, and `0`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub fn parse(s: &str) -> Result<Self, String> {
        if s == "0" {
            return Ok(ByteSize(0));
        }
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let n: u64 = num.parse().map_err(|_| format!("invalid size {s:?}"))?;
        let shift = match unit {
            "B" => 0,
            "KB" | "KiB" => 10,
            "MB" | "MiB" => 20,
            "GB" | "GiB" => 30,
            "TB" | "TiB" => 40,
            "PB" | "PiB" => 50,
            "EB" | "EiB" => 60,
            _ => {
                return Err(format!(
                    "invalid size {s:?}: unit must be one of B, KB, MB, GB, TB, PB, EB"
                ))
            }
        };
        n.checked_mul(1u64 << shift)
            .map(ByteSize)
            .ok_or_else(|| format!("size {s:?} is too large"))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        for (unit, shift) in [
            ("EiB", 60),
            ("PiB", 50),
            ("TiB", 40),
            ("GiB", 30),
            ("MiB", 20),
            ("KiB", 10),
        ] {
            if n != 0 && n % (1u64 << shift) == 0 {
                return write!(f, "{}{unit}", n >> shift);
            }
        }
        write!(f, "{n}B")
    }
}

impl fmt::Debug for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = super::duration::scalar_string(d)?;
        ByteSize::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unparsable_urls_do_not_echo_credentials() {
        for (bad, shown) in [
            (":pw-1@bad", "\"<secret>@bad\""),
            ("http://u:pw-1@[::1/x", "\"http://<secret>@[::1/x\""),
            ("http://u:pw-1@a@b:99999/", "\"http://<secret>@b:99999/\""),
            ("no-credentials", "\"no-credentials\""),
        ] {
            let e = ConfigUrl::parse(bad).unwrap_err();
            assert!(!e.contains("pw-1"), "{e}");
            assert!(e.starts_with(&format!("invalid URL {shown}")), "{e}");
        }
    }

    #[test]
    fn label_names() {
        assert!(is_valid_label_name("job"));
        assert!(is_valid_label_name("__address__"));
        assert!(!is_valid_label_name("1abc"));
        assert!(!is_valid_label_name("a:b"));
        assert!(!is_valid_label_name(""));
        assert!(is_valid_metric_name("a:b_c"));
    }

    #[test]
    fn sizes() {
        assert_eq!(ByteSize::parse("10MB").unwrap().0, 10 << 20);
        assert_eq!(ByteSize::parse("1KiB").unwrap().0, 1024);
        assert_eq!(ByteSize::parse("0").unwrap().0, 0);
        assert!(ByteSize::parse("10 MB").is_err());
        assert!(ByteSize::parse("1.5MB").is_err());
        assert_eq!(ByteSize(10 << 20).to_string(), "10MiB");
    }

    #[test]
    fn url_password_redacted() {
        let u = ConfigUrl::parse("http://user:pw@host:9009/push").unwrap();
        assert_eq!(u.to_string(), "http://user:%3Csecret%3E@host:9009/push");
        assert!(!format!("{u:?}").contains("pw@"));
    }
}
