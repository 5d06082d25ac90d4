//! The one clock: every wall-clock reading of the agent (sample timestamps, ring heartbeats,
//! WAL truncation cut-offs, file ages, log lines) and the one calendar conversion for the times
//! people read (RFC 3339 in logs, the ring page, the targets API, `wal inspect`).
//!
//! A [`Clock`] is a small `Copy` value handed to the components that stamp or compare
//! wall-clock times (built once by the daemon and passed down, like the metrics registry).
//! Durations and timers stay on tokio's clock (`tokio::time::Instant`, `sleep`, `interval`),
//! so one tokio test with paused time (`#[tokio::test(start_paused = true)]`,
//! `tokio::time::advance`) moves both: give the components [`Clock::following_tokio`] and a
//! heartbeat that is "10 s old" after `advance(10 s)` is 10 s old to the timers too, without
//! sleeping. Code far from any component (the log formatter, an HTTP `Retry-After` date) reads
//! [`Clock::system`].
//!
//! `SystemTime::now` is called here and nowhere else (clippy.toml refuses it elsewhere).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A source of wall-clock time; see the module docs.
#[derive(Debug, Clone, Copy, Default)]
pub struct Clock(Source);

#[derive(Debug, Clone, Copy, Default)]
enum Source {
    /// The operating system's real-time clock.
    #[default]
    System,
    /// `epoch` at `start`, advancing with tokio's clock from then on.
    Tokio {
        epoch: SystemTime,
        start: tokio::time::Instant,
    },
}

impl Clock {
    /// The operating system's clock.
    pub fn system() -> Clock {
        Clock(Source::System)
    }

    /// A clock that reads `epoch` now and then advances with tokio's clock. Under paused tokio
    /// time (tests) it stands still until the test advances time; without pausing it runs at
    /// the real rate. Call it inside the runtime whose time it should follow.
    pub fn following_tokio(epoch: SystemTime) -> Clock {
        Clock(Source::Tokio {
            epoch,
            start: tokio::time::Instant::now(),
        })
    }

    /// The current time.
    pub fn now(&self) -> SystemTime {
        match self.0 {
            #[allow(clippy::disallowed_methods)] // the one place that reads the system clock
            Source::System => SystemTime::now(),
            Source::Tokio { epoch, start } => epoch + start.elapsed(),
        }
    }

    /// Milliseconds since the Unix epoch (Prometheus sample timestamps).
    pub fn unix_millis(&self) -> i64 {
        unix_millis(self.now())
    }

    /// Whole seconds since the Unix epoch (ring heartbeats).
    pub fn unix_secs(&self) -> i64 {
        unix_secs(self.now())
    }
}

/// Nanoseconds since the Unix epoch, negative before it. Never overflows: a `SystemTime` spans
/// far less than an `i128` of nanoseconds.
pub fn unix_nanos(t: SystemTime) -> i128 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_nanos() as i128,
        Err(e) => -(e.duration().as_nanos() as i128),
    }
}

/// Milliseconds since the Unix epoch (rounded down), saturating at the `i64` range.
pub fn unix_millis(t: SystemTime) -> i64 {
    saturate(unix_nanos(t).div_euclid(1_000_000))
}

/// Seconds since the Unix epoch (rounded down), saturating at the `i64` range.
pub fn unix_secs(t: SystemTime) -> i64 {
    saturate(unix_nanos(t).div_euclid(1_000_000_000))
}

fn saturate(v: i128) -> i64 {
    v.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64
}

/// The time `ms` milliseconds after the Unix epoch (before it when negative).
pub fn from_unix_millis(ms: i64) -> SystemTime {
    let d = Duration::from_millis(ms.unsigned_abs());
    if ms >= 0 {
        UNIX_EPOCH + d
    } else {
        UNIX_EPOCH - d
    }
}

/// How many digits of the second's fraction [`rfc3339`] writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fraction {
    /// `2024-01-02T03:04:05Z`: whole seconds (the ring's heartbeat times).
    None,
    /// `2024-01-02T03:04:05.678Z`: always three digits (log lines, the old agent's `ts=`).
    Millis,
    /// `2024-01-02T03:04:05.678901Z`: always six digits (JSON log lines).
    Micros,
    /// Go's `time.RFC3339Nano`: up to nine digits, trailing zeros and a bare dot dropped
    /// (`…05.12Z`, `…05Z`), as the old agent's targets API prints `lastScrape`.
    NanosTrimmed,
}

/// Formats `nanos` since the Unix epoch as RFC 3339 in UTC. Years outside 0..=9999 are printed
/// in full (never wrapped or panicking, whatever a KV store or a WAL holds).
pub fn rfc3339(nanos: i128, fraction: Fraction) -> String {
    let secs = nanos.div_euclid(1_000_000_000);
    let sub = nanos.rem_euclid(1_000_000_000) as u32;
    let sod = secs.rem_euclid(86_400) as u32;
    let (y, m, d) = civil_from_days(saturate(secs.div_euclid(86_400)));
    let mut out = format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}",
        sod / 3600,
        (sod % 3600) / 60,
        sod % 60
    );
    match fraction {
        Fraction::None => {}
        Fraction::Millis => out.push_str(&format!(".{:03}", sub / 1_000_000)),
        Fraction::Micros => out.push_str(&format!(".{:06}", sub / 1_000)),
        Fraction::NanosTrimmed if sub != 0 => {
            out.push('.');
            out.push_str(format!("{sub:09}").trim_end_matches('0'));
        }
        Fraction::NanosTrimmed => {}
    }
    out.push('Z');
    out
}

/// [`rfc3339`] of milliseconds since the Unix epoch, with milliseconds.
pub fn rfc3339_millis(ms: i64) -> String {
    rfc3339(i128::from(ms) * 1_000_000, Fraction::Millis)
}

/// Days since 1970-01-01 to a proleptic Gregorian (year, month, day); H. Hinnant's
/// `civil_from_days`. Exact for day counts of ±10^15 (any `i64` of seconds); beyond that the
/// date is wrong but nothing overflows.
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z.clamp(-1_000_000_000_000_000, 1_000_000_000_000_000);
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (the inverse of [`civil_from_days`]).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Parses RFC 3339 (`2025-11-24T16:00:00Z`, `…00.123456789+01:00`; Go writes both) to
/// nanoseconds since the Unix epoch. `None` when it is not RFC 3339.
pub fn parse_rfc3339(s: &str) -> Option<i128> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let t = s.get(r)?;
        if t.bytes().all(|c| c.is_ascii_digit()) {
            t.parse().ok()
        } else {
            None
        }
    };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let mut rest = &s[19..];
    let mut frac_ns: i128 = 0;
    if let Some(f) = rest.strip_prefix('.') {
        let digits = f.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        let mut scale = 100_000_000i128;
        for c in f[..digits].bytes().take(9) {
            frac_ns += i128::from(c - b'0') * scale;
            scale /= 10;
        }
        rest = &f[digits..];
    }
    let offset_secs: i64 = match rest {
        "Z" | "z" => 0,
        _ => {
            let rb = rest.as_bytes();
            if rb.len() != 6 || rb[3] != b':' || !matches!(rb[0], b'+' | b'-') {
                return None;
            }
            let oh: i64 = rest.get(1..3)?.parse().ok()?;
            let om: i64 = rest.get(4..6)?.parse().ok()?;
            let o = oh * 3600 + om * 60;
            if rb[0] == b'-' {
                -o
            } else {
                o
            }
        }
    };
    let secs = days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + sec - offset_secs;
    Some(i128::from(secs) * 1_000_000_000 + frac_ns)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_instants() {
        assert_eq!(rfc3339_millis(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_millis(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(
            rfc3339_millis(1_704_164_645_678),
            "2024-01-02T03:04:05.678Z"
        );
        assert_eq!(rfc3339_millis(-1), "1969-12-31T23:59:59.999Z");
        let s = |secs: i64| rfc3339(i128::from(secs) * 1_000_000_000, Fraction::None);
        assert_eq!(s(1_764_000_000), "2025-11-24T16:00:00Z");
        assert_eq!(s(-1), "1969-12-31T23:59:59Z");
        // Never panics or wraps, whatever a KV store holds.
        assert!(s(i64::MAX).starts_with("292277026596-"));
        let _ = s(i64::MIN);
    }

    #[test]
    fn nanos_are_trimmed_like_go() {
        let at = |s: i128, n: i128| rfc3339(s * 1_000_000_000 + n, Fraction::NanosTrimmed);
        assert_eq!(at(0, 0), "1970-01-01T00:00:00Z");
        assert_eq!(at(1_700_000_000, 120_000_000), "2023-11-14T22:13:20.12Z");
        assert_eq!(at(1_700_000_000, 1), "2023-11-14T22:13:20.000000001Z");
    }

    #[test]
    fn parses_what_go_writes() {
        assert_eq!(
            parse_rfc3339("2025-11-24T16:00:00Z"),
            Some(1_764_000_000_000_000_000)
        );
        assert_eq!(
            parse_rfc3339("2025-11-24T17:00:00.5+01:00"),
            Some(1_764_000_000_500_000_000)
        );
        assert_eq!(parse_rfc3339("1969-12-31T23:59:59Z"), Some(-1_000_000_000));
        for bad in [
            "",
            "2025-11-24",
            "2025-13-01T00:00:00Z",
            "2025-11-24T16:00:00",
            "2025-11-24T16:00:00.Z",
            "2025-11-24T16:00:00+0100",
            "２025-11-24T16:00:00Z",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }

    #[test]
    fn unix_conversions_round_down_and_go_below_the_epoch() {
        let t = UNIX_EPOCH + Duration::from_millis(1_500);
        assert_eq!((unix_secs(t), unix_millis(t)), (1, 1_500));
        let before = UNIX_EPOCH - Duration::from_millis(1);
        assert_eq!((unix_secs(before), unix_millis(before)), (-1, -1));
        assert_eq!(from_unix_millis(-1), before);
        assert_eq!(from_unix_millis(1_500), t);
    }

    /// Under paused tokio time the clock moves exactly as far as the test advances it: what
    /// lets tests of heartbeats and WAL ages wait on paused time instead of sleeping.
    #[tokio::test(start_paused = true)]
    async fn following_tokio_moves_only_with_tokio_time() {
        let epoch = UNIX_EPOCH + Duration::from_secs(1_000);
        let clock = Clock::following_tokio(epoch);
        assert_eq!(clock.now(), epoch);
        tokio::time::advance(Duration::from_secs(90)).await;
        assert_eq!(clock.unix_secs(), 1_090);
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert_eq!(clock.unix_millis(), 1_090_250);
        let copy = clock;
        assert_eq!(copy.now(), clock.now());
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in ".{0,40}") {
            let _ = parse_rfc3339(&s);
        }

        #[test]
        fn round_trips(nanos in -10_000_000_000_000_000_000i128..100_000_000_000_000_000_000) {
            prop_assert_eq!(parse_rfc3339(&rfc3339(nanos, Fraction::NanosTrimmed)), Some(nanos));
            let ms = nanos.div_euclid(1_000_000);
            prop_assert_eq!(parse_rfc3339(&rfc3339(nanos, Fraction::Millis)), Some(ms * 1_000_000));
        }
    }
}
