//! Durations in the two syntaxes the old agent's configs use.
//!
//! * [`PromDuration`] is Prometheus's `model.Duration`: `<n>y<n>w<n>d<n>h<n>m<n>s<n>ms`, each
//!   unit at most once, in that order, integers only (`1y` = 365 days, `1w` = 7 days), and the
//!   bare `0`. `1.5h`, `1h 30m` and `30` are errors. Used by scrape, SD and remote_write fields.
//! * [`GoDuration`] is Go's `time.Duration` as yaml.v2 reads it: a sequence of decimal numbers
//!   with units `ns us µs ms s m h`, fractions allowed (`1.5h`), optional sign, and `0`. Used by
//!   the agent's own fields (`wal_truncate_frequency`, `reshard_interval`, the lifecycler).

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

const MS: u64 = 1;
const SEC: u64 = 1000 * MS;
const MIN: u64 = 60 * SEC;
const HOUR: u64 = 60 * MIN;
const DAY: u64 = 24 * HOUR;
const WEEK: u64 = 7 * DAY;
const YEAR: u64 = 365 * DAY;

/// A Prometheus duration, stored in milliseconds.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct PromDuration(u64);

impl PromDuration {
    pub const fn from_millis(ms: u64) -> Self {
        PromDuration(ms)
    }
    pub const fn from_secs(s: u64) -> Self {
        PromDuration(s * SEC)
    }
    pub const fn millis(self) -> u64 {
        self.0
    }
    pub const fn is_zero(self) -> bool {
        self.0 == 0
    }
    pub fn as_std(self) -> Duration {
        Duration::from_millis(self.0)
    }

    /// Parses the Prometheus syntax; the error text is Prometheus's.
    pub fn parse(s: &str) -> Result<Self, String> {
        if s.is_empty() {
            return Err("empty duration string".to_owned());
        }
        if s == "0" {
            return Ok(PromDuration(0));
        }
        let invalid = || format!("not a valid duration string: {s:?}");
        // Units in the only order Prometheus accepts; "ms" must be tried before "m".
        const UNITS: [(&str, u64); 7] = [
            ("y", YEAR),
            ("w", WEEK),
            ("d", DAY),
            ("h", HOUR),
            ("m", MIN),
            ("s", SEC),
            ("ms", MS),
        ];
        let bytes = s.as_bytes();
        let mut pos = 0;
        let mut next_unit = 0;
        let mut total: u64 = 0;
        while pos < bytes.len() {
            let start = pos;
            while pos < bytes.len() && bytes[pos].is_ascii_digit() {
                pos += 1;
            }
            if pos == start {
                return Err(invalid());
            }
            let n: u64 = s[start..pos].parse().map_err(|_| "duration out of range".to_owned())?;
            let rest = &s[pos..];
            let idx = (next_unit..UNITS.len())
                .find(|&i| {
                    let (u, _) = UNITS[i];
                    // "m" must not swallow the "m" of "ms".
                    rest.starts_with(u) && !(u == "m" && rest.starts_with("ms"))
                })
                .ok_or_else(invalid)?;
            let (unit, mult) = UNITS[idx];
            pos += unit.len();
            next_unit = idx + 1;
            total = n
                .checked_mul(mult)
                .and_then(|v| total.checked_add(v))
                .filter(|&v| v <= i64::MAX as u64)
                .ok_or_else(|| "duration out of range".to_owned())?;
        }
        Ok(PromDuration(total))
    }
}

impl fmt::Display for PromDuration {
    /// Prometheus's `Duration.String()`: `0s` for zero; years and weeks only when exact.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut ms = self.0;
        if ms == 0 {
            return f.write_str("0s");
        }
        for (unit, mult, exact) in [
            ("y", YEAR, true),
            ("w", WEEK, true),
            ("d", DAY, false),
            ("h", HOUR, false),
            ("m", MIN, false),
            ("s", SEC, false),
            ("ms", MS, false),
        ] {
            if exact && ms % mult != 0 {
                continue;
            }
            let v = ms / mult;
            if v > 0 {
                write!(f, "{v}{unit}")?;
                ms -= v * mult;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for PromDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Serialize for PromDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PromDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = scalar_string(d)?;
        PromDuration::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// A Go `time.Duration`, stored in nanoseconds (non-negative: negative values are rejected
/// because no field of the agent accepts them).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct GoDuration(u64);

impl GoDuration {
    pub const fn from_secs(s: u64) -> Self {
        GoDuration(s * 1_000_000_000)
    }
    pub const fn from_millis(ms: u64) -> Self {
        GoDuration(ms * 1_000_000)
    }
    pub const fn nanos(self) -> u64 {
        self.0
    }
    pub const fn is_zero(self) -> bool {
        self.0 == 0
    }
    pub fn as_std(self) -> Duration {
        Duration::from_nanos(self.0)
    }

    /// Parses Go's `time.ParseDuration` syntax; error texts follow Go's.
    pub fn parse(s: &str) -> Result<Self, String> {
        let invalid = || format!("time: invalid duration {s:?}");
        let mut rest = s;
        let negative = if let Some(r) = rest.strip_prefix('-') {
            rest = r;
            true
        } else {
            rest = rest.strip_prefix('+').unwrap_or(rest);
            false
        };
        if rest == "0" {
            return Ok(GoDuration(0));
        }
        if rest.is_empty() {
            return Err(invalid());
        }
        let mut total: u128 = 0;
        while !rest.is_empty() {
            let num_len = rest
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .unwrap_or(rest.len());
            let num = &rest[..num_len];
            if num.is_empty() || num == "." || num.matches('.').count() > 1 {
                return Err(invalid());
            }
            let (whole, fraction) = num.split_once('.').unwrap_or((num, ""));
            rest = &rest[num_len..];
            let unit_len = rest
                .find(|c: char| c.is_ascii_digit() || c == '.')
                .unwrap_or(rest.len());
            let unit = &rest[..unit_len];
            let mult: u128 = match unit {
                "ns" => 1,
                "us" | "µs" | "μs" => 1_000,
                "ms" => 1_000_000,
                "s" => 1_000_000_000,
                "m" => 60_000_000_000,
                "h" => 3_600_000_000_000,
                "" => return Err(format!("time: missing unit in duration {s:?}")),
                other => return Err(format!("time: unknown unit {other:?} in duration {s:?}")),
            };
            rest = &rest[unit_len..];
            let whole: u128 = if whole.is_empty() { 0 } else { whole.parse().map_err(|_| invalid())? };
            // Like Go, digits past nanosecond precision are dropped.
            let fraction = &fraction[..fraction.len().min(20)];
            let frac_value: u128 = if fraction.is_empty() { 0 } else { fraction.parse().map_err(|_| invalid())? };
            let scale = 10u128.pow(fraction.len() as u32);
            total = total
                .checked_add(whole.checked_mul(mult).ok_or_else(invalid)?)
                .and_then(|t| t.checked_add(frac_value * mult / scale))
                .filter(|&t| t <= i64::MAX as u128)
                .ok_or_else(invalid)?;
        }
        if negative && total > 0 {
            return Err(format!("negative duration {s:?} is not allowed"));
        }
        Ok(GoDuration(total as u64))
    }
}

impl fmt::Display for GoDuration {
    /// Go's `Duration.String()`: `1h0m0s`, `1m30s`, `1.5s`, `100ms`, `0s`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ns = self.0;
        if ns == 0 {
            return f.write_str("0s");
        }
        if ns < 1_000_000_000 {
            let (div, unit) = if ns < 1_000 {
                (1, "ns")
            } else if ns < 1_000_000 {
                (1_000, "µs")
            } else {
                (1_000_000, "ms")
            };
            return write!(f, "{}{unit}", frac(ns, div));
        }
        let h = ns / 3_600_000_000_000;
        let m = (ns / 60_000_000_000) % 60;
        let s_ns = ns % 60_000_000_000;
        if h > 0 {
            write!(f, "{h}h{m}m")?;
        } else if m > 0 {
            write!(f, "{m}m")?;
        }
        write!(f, "{}s", frac(s_ns, 1_000_000_000))
    }
}

/// `n / div` as a decimal without trailing zeros.
fn frac(n: u64, div: u64) -> String {
    let whole = n / div;
    let rem = n % div;
    if rem == 0 {
        return whole.to_string();
    }
    let width = div.trailing_zeros_dec();
    let digits = format!("{rem:0width$}");
    format!("{whole}.{}", digits.trim_end_matches('0'))
}

trait DecimalZeros {
    fn trailing_zeros_dec(self) -> usize;
}

impl DecimalZeros for u64 {
    fn trailing_zeros_dec(mut self) -> usize {
        let mut n = 0;
        while self >= 10 && self % 10 == 0 {
            self /= 10;
            n += 1;
        }
        n
    }
}

impl fmt::Debug for GoDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Serialize for GoDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for GoDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = scalar_string(d)?;
        GoDuration::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Reads a YAML scalar as text: `30` and `0` arrive as integers, `1m` as a string.
pub(crate) fn scalar_string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    struct V;
    impl serde::de::Visitor<'_> for V {
        type Value = String;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a string")
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<String, E> {
            Ok(v.to_owned())
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<String, E> {
            Ok(v.to_string())
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<String, E> {
            Ok(v.to_string())
        }
        fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<String, E> {
            Ok(v.to_string())
        }
        fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<String, E> {
            Ok(v.to_string())
        }
    }
    d.deserialize_any(V)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn prom_accepts_prometheus_syntax() {
        for (s, ms) in [
            ("0", 0),
            ("0s", 0),
            ("1ms", 1),
            ("15s", 15_000),
            ("1m", 60_000),
            ("1h30m", 5_400_000),
            ("1d", DAY),
            ("1w", WEEK),
            ("1y", 365 * DAY),
            ("1y2w3d4h5m6s7ms", YEAR + 2 * WEEK + 3 * DAY + 4 * HOUR + 5 * MIN + 6 * SEC + 7),
        ] {
            assert_eq!(PromDuration::parse(s), Ok(PromDuration(ms)), "{s}");
        }
    }

    #[test]
    fn prom_rejects_what_prometheus_rejects() {
        for s in ["1.5h", "1h 30m", "30", "-1s", "1m1h", "1s1s", "h", "1x", " 1s", "1S"] {
            let err = PromDuration::parse(s).unwrap_err();
            assert_eq!(err, format!("not a valid duration string: {s:?}"), "{s}");
        }
        assert_eq!(PromDuration::parse("").unwrap_err(), "empty duration string");
        assert_eq!(PromDuration::parse("99999999999y").unwrap_err(), "duration out of range");
    }

    #[test]
    fn prom_formats_as_prometheus() {
        assert_eq!(PromDuration(0).to_string(), "0s");
        assert_eq!(PromDuration(90 * MIN).to_string(), "1h30m");
        assert_eq!(PromDuration(YEAR).to_string(), "1y");
        assert_eq!(PromDuration(WEEK).to_string(), "1w");
        assert_eq!(PromDuration(8 * DAY).to_string(), "8d");
        assert_eq!(PromDuration(1500).to_string(), "1s500ms");
    }

    #[test]
    fn go_durations() {
        assert_eq!(GoDuration::parse("1.5h").unwrap(), GoDuration::from_secs(5400));
        assert_eq!(GoDuration::parse("1h0m0s").unwrap(), GoDuration::from_secs(3600));
        assert_eq!(GoDuration::parse("100ms").unwrap(), GoDuration::from_millis(100));
        assert_eq!(GoDuration::parse("0").unwrap(), GoDuration(0));
        assert_eq!(GoDuration::parse("1d").unwrap_err(), "time: unknown unit \"d\" in duration \"1d\"");
        assert_eq!(GoDuration::parse("30").unwrap_err(), "time: missing unit in duration \"30\"");
        assert!(GoDuration::parse("").is_err());
        assert!(GoDuration::parse("-5s").is_err());
        assert_eq!(GoDuration::from_secs(3600).to_string(), "1h0m0s");
        assert_eq!(GoDuration::from_secs(90).to_string(), "1m30s");
        assert_eq!(GoDuration::from_millis(1500).to_string(), "1.5s");
        assert_eq!(GoDuration::from_millis(100).to_string(), "100ms");
        assert_eq!(GoDuration(0).to_string(), "0s");
    }

    proptest! {
        #[test]
        fn prom_roundtrips(ms in 0u64..(10 * YEAR)) {
            let d = PromDuration(ms);
            prop_assert_eq!(PromDuration::parse(&d.to_string()), Ok(d));
        }

        #[test]
        fn go_roundtrips(ns in 0u64..(1u64 << 62)) {
            let d = GoDuration(ns);
            prop_assert_eq!(GoDuration::parse(&d.to_string()), Ok(d));
        }

        #[test]
        fn prom_never_panics(s in "\\PC{0,20}") {
            let _ = PromDuration::parse(&s);
            let _ = GoDuration::parse(&s);
        }
    }
}
