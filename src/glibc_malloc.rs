//! glibc's malloc settings for the default build (the system allocator on glibc).
//!
//! glibc raises its mmap threshold, and with it the trim threshold, to twice the largest
//! mmapped chunk freed so far (mallopt(3), `M_MMAP_THRESHOLD`). The agent's short-lived
//! buffers of 128 KiB to 2 MiB (WAL records, checkpoints, remote_write batches) then come from
//! the arenas, and each arena keeps the free memory of the largest demand it has met; and the
//! pages of free chunks in the middle of an arena stay resident until malloc_trim(3). Under
//! series churn the resident memory crept up for 5 to 10 minutes while the live heap and every
//! table were flat (docs/churn-soak.md has the measurements). So the agent
//! - fixes both thresholds at start, which turns that adjustment off: buffers of 1 MiB and
//!   more are mapped and given back when freed, and an arena's free top above 256 KiB is given
//!   back;
//! - gives the free pages inside the arenas back every [`TRIM_EVERY`] (`malloc_trim(0)`, from a
//!   thread of its own, `malloc-trim`), or less often when the heap is large enough that a trim
//!   takes more than a thousandth of that ([`pause_after`]).
//!
//! An operator's own setting wins: a parameter set in the environment (`MALLOC_*_` or a
//! `glibc.malloc.*` entry of `GLIBC_TUNABLES`, both read by glibc itself before `main`) is left
//! as glibc read it, and a trim threshold set there also turns the periodic trim off (it says
//! how much free memory glibc may keep).

use std::ffi::OsString;
use std::time::Duration;

/// One malloc parameter the agent sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setting {
    /// mallopt(3)'s name of the parameter, for the log.
    pub name: &'static str,
    /// The environment variable glibc reads for it.
    pub env: &'static str,
    /// Its glibc tunable (`GLIBC_TUNABLES=glibc.malloc.<name>=<value>:...`).
    pub tunable: &'static str,
    param: libc::c_int,
    /// The value the agent sets.
    pub value: libc::c_int,
}

const MMAP_THRESHOLD: Setting = Setting {
    name: "M_MMAP_THRESHOLD",
    env: "MALLOC_MMAP_THRESHOLD_",
    tunable: "glibc.malloc.mmap_threshold",
    param: libc::M_MMAP_THRESHOLD,
    value: 1024 * 1024,
};

const TRIM_THRESHOLD: Setting = Setting {
    name: "M_TRIM_THRESHOLD",
    env: "MALLOC_TRIM_THRESHOLD_",
    tunable: "glibc.malloc.trim_threshold",
    param: libc::M_TRIM_THRESHOLD,
    value: 256 * 1024,
};

/// The agent's settings: see the module docs and docs/churn-soak.md for the measurements.
pub const SETTINGS: &[Setting] = &[MMAP_THRESHOLD, TRIM_THRESHOLD];

/// The shortest pause between two trims.
pub const TRIM_EVERY: Duration = Duration::from_secs(5);

/// The pause after a trim is at least this many times the trim's own duration, so trimming
/// takes at most a thousandth of one core whatever the heap's size. `malloc_trim` walks every
/// arena's chunks under the arena's lock, so its time grows with the heap: a 5 s period cost
/// +5 and +10 % CPU per sample at 500k series in two interleaved pairs of `agentctl-bench`
/// (docs/churn-soak.md), while at the churn soak's heap a trim takes well under 5 ms and the
/// period stays 5 s.
pub const TRIM_PAUSE_FACTOR: u32 = 1000;

/// How long the `malloc-trim` thread waits after a trim that took `took`: [`TRIM_EVERY`], or
/// [`TRIM_PAUSE_FACTOR`] times `took` when that is longer.
pub fn pause_after(took: Duration) -> Duration {
    TRIM_EVERY.max(took.saturating_mul(TRIM_PAUSE_FACTOR))
}

/// What became of one setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Set to the agent's value.
    Set(libc::c_int),
    /// Left as the environment set it (the variable or the tunable named).
    Environment(&'static str),
    /// glibc refused the value (mallopt returned 0); its own setting stays.
    Refused(libc::c_int),
}

/// What [`apply`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    pub settings: Vec<(&'static Setting, Outcome)>,
    /// Whether the agent should give free pages back every [`TRIM_EVERY`] (see [`trim_every`]):
    /// not when the environment set the trim threshold.
    pub periodic_trim: bool,
}

/// Applies [`SETTINGS`] that the environment does not set (read through `env`), and says what
/// became of each. Call it before other threads start: glibc reads its environment once, at
/// the first allocation, and a parameter set later applies from then on.
pub fn apply(env: impl Fn(&str) -> Option<OsString>) -> Applied {
    let tunables = env("GLIBC_TUNABLES").unwrap_or_default();
    let tunables = tunables.to_string_lossy();
    let settings: Vec<_> = SETTINGS
        .iter()
        .map(|s| {
            let outcome = if env(s.env).is_some() {
                Outcome::Environment(s.env)
            } else if tunables
                .split(':')
                .any(|t| t.split_once('=').is_some_and(|(name, _)| name == s.tunable))
            {
                Outcome::Environment("GLIBC_TUNABLES")
            } else if glibc(Call::Mallopt(s.param, s.value)) == 1 {
                Outcome::Set(s.value)
            } else {
                Outcome::Refused(s.value)
            };
            (s, outcome)
        })
        .collect();
    let periodic_trim = settings
        .iter()
        .any(|(s, o)| s.param == TRIM_THRESHOLD.param && !matches!(o, Outcome::Environment(_)));
    Applied {
        settings,
        periodic_trim,
    }
}

impl Applied {
    /// For the log: `M_MMAP_THRESHOLD=1048576 M_TRIM_THRESHOLD=(from MALLOC_TRIM_THRESHOLD_)`,
    /// each setting with its value or where it was left to.
    pub fn describe(&self) -> String {
        self.settings
            .iter()
            .map(|(s, o)| match o {
                Outcome::Set(v) => format!("{}={v}", s.name),
                Outcome::Environment(from) => format!("{}=(from {from})", s.name),
                Outcome::Refused(v) => format!("{}=(glibc refused {v})", s.name),
            })
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// Starts the thread `malloc-trim`, which gives the free pages inside glibc's arenas back to
/// the system (`malloc_trim(0)`) for the life of the process: first after [`TRIM_EVERY`], then
/// after each trim's [`pause_after`].
pub fn trim_every() -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("malloc-trim".into())
        .spawn(|| {
            let mut pause = TRIM_EVERY;
            loop {
                std::thread::sleep(pause);
                let start = std::time::Instant::now();
                glibc(Call::Trim);
                pause = pause_after(start.elapsed());
            }
        })
        .map(drop)
}

/// Applies the settings and, for `agent run`, starts the periodic trim; says what it did, for
/// the log.
pub fn tune(agent: bool) -> Option<String> {
    let applied = apply(|name| std::env::var_os(name));
    let trim = if !applied.periodic_trim {
        "off (trim threshold from the environment)".to_owned()
    } else if !agent {
        "off".to_owned()
    } else {
        match trim_every() {
            Ok(()) => format!("every {TRIM_EVERY:?} or {TRIM_PAUSE_FACTOR}x its duration"),
            Err(e) => format!("off (cannot start its thread: {e})"),
        }
    };
    Some(format!("{} malloc_trim={trim}", applied.describe()))
}

/// A call into glibc's malloc.
#[derive(Debug, Clone, Copy)]
enum Call {
    /// mallopt(3): one parameter and its value.
    Mallopt(libc::c_int, libc::c_int),
    /// malloc_trim(3) with no padding kept: every arena's whole free pages.
    Trim,
}

/// Makes `call`; glibc's return value (1: done; 0: refused, or nothing to give back).
#[allow(unsafe_code)]
fn glibc(call: Call) -> libc::c_int {
    // SAFETY: both functions take integers only, read no memory of ours, and work on glibc's
    // malloc state under glibc's own locks (any thread may call them at any time). An unknown
    // mallopt parameter or a value out of range makes it return 0 and change nothing.
    unsafe {
        match call {
            Call::Mallopt(param, value) => libc::mallopt(param, value),
            Call::Trim => libc::malloc_trim(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<OsString> + 'a {
        move |k| {
            vars.iter()
                .find(|(name, _)| *name == k)
                .map(|(_, v)| OsString::from(v))
        }
    }

    #[test]
    fn trims_take_at_most_a_thousandth_of_a_core() {
        assert_eq!(pause_after(Duration::ZERO), TRIM_EVERY);
        assert_eq!(pause_after(Duration::from_millis(5)), TRIM_EVERY);
        assert_eq!(
            pause_after(Duration::from_millis(30)),
            Duration::from_secs(30)
        );
        assert_eq!(
            pause_after(Duration::from_secs(2)),
            Duration::from_secs(2000)
        );
        assert_eq!(pause_after(Duration::MAX), Duration::MAX);
    }

    #[test]
    fn every_setting_is_applied_when_the_environment_sets_none() {
        let applied = apply(env(&[("GLIBC_TUNABLES", "glibc.rtld.nns=2")]));
        let want: Vec<_> = SETTINGS
            .iter()
            .map(|s| (s, Outcome::Set(s.value)))
            .collect();
        assert_eq!(applied.settings, want);
        assert!(applied.periodic_trim);
        assert_eq!(
            applied.describe(),
            "M_MMAP_THRESHOLD=1048576 M_TRIM_THRESHOLD=262144"
        );
    }

    #[test]
    fn the_environment_wins_for_the_parameters_it_sets() {
        let applied = apply(env(&[("MALLOC_TRIM_THRESHOLD_", "131072")]));
        assert_eq!(applied.settings[0].1, Outcome::Set(1024 * 1024));
        assert_eq!(
            applied.settings[1].1,
            Outcome::Environment("MALLOC_TRIM_THRESHOLD_")
        );
        assert!(!applied.periodic_trim);
        let applied = apply(env(&[(
            "GLIBC_TUNABLES",
            "glibc.malloc.arena_max=2:glibc.malloc.mmap_threshold=65536",
        )]));
        assert_eq!(
            applied.settings[0].1,
            Outcome::Environment("GLIBC_TUNABLES")
        );
        assert_eq!(applied.settings[1].1, Outcome::Set(256 * 1024));
        assert!(applied.periodic_trim);
        assert_eq!(
            applied.describe(),
            "M_MMAP_THRESHOLD=(from GLIBC_TUNABLES) M_TRIM_THRESHOLD=262144"
        );
        let applied = apply(env(&[("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=0")]));
        assert!(!applied.periodic_trim);
    }
}
