//! The orchestrator: targets and sink in this process (each on its own tokio runtime, so their
//! CPU can be read per thread), then each scraper in turn as a child process, measured over a
//! window, drained, stopped and checked. Plain synchronous code: it mostly sleeps and reads
//! `/proc`.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::http;
use crate::procfs;
use crate::report::{Report, RunResult};
use crate::sink::Sink;
use crate::targets::Targets;

/// Set by the signal handler; every wait in the orchestrator checks it.
pub static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Thread names of the in-process runtimes (at most 15 bytes: Linux truncates `comm`).
pub const TARGETS_THREAD: &str = "bench-targets";
pub const SINK_THREAD: &str = "bench-sink";

/// The three scraper programs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Agentctl,
    Prometheus,
    Vmagent,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Agentctl, Kind::Prometheus, Kind::Vmagent];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Agentctl => "agentctl",
            Kind::Prometheus => "prometheus",
            Kind::Vmagent => "vmagent",
        }
    }
}

/// One scraper to measure: one of the three programs, or a variant of agentctl (another
/// build, e.g. another global allocator, and environment variables, e.g. its settings).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scraper {
    pub kind: Kind,
    /// As shown in the results: the program's name or the variant's.
    pub name: String,
    /// The variant's binary (the `--agentctl`/`--prometheus`/`--vmagent` path otherwise).
    pub bin: Option<PathBuf>,
    pub env: Vec<(String, String)>,
}

impl Scraper {
    pub fn of(kind: Kind) -> Scraper {
        Scraper {
            kind,
            name: kind.name().to_owned(),
            bin: None,
            env: Vec::new(),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// A scraper name: one of the programs or a variant defined with `--agentctl-variant`.
    pub fn parse(s: &str, variants: &[Scraper]) -> Option<Scraper> {
        variants.iter().find(|v| v.name == s).cloned().or_else(|| {
            Kind::ALL
                .into_iter()
                .find(|k| k.name() == s)
                .map(Scraper::of)
        })
    }

    /// `NAME=PATH[;KEY=VALUE]...`: an agentctl build at PATH run with those environment
    /// variables, e.g. `jemalloc=target/release/agentctl-jemalloc;_RJEM_MALLOC_CONF=dirty_decay_ms:1000`.
    pub fn parse_variant(s: &str) -> Result<Scraper, String> {
        let bad = || format!("agentctl variant {s:?}: expected NAME=PATH[;KEY=VALUE]...");
        let mut parts = s.split(';');
        let (name, path) = parts
            .next()
            .and_then(|p| p.split_once('='))
            .ok_or_else(bad)?;
        if name.is_empty()
            || path.is_empty()
            || Kind::ALL.iter().any(|k| k.name() == name)
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_+.".contains(c))
        {
            return Err(bad());
        }
        let env = parts
            .map(|kv| {
                kv.split_once('=')
                    .filter(|(k, _)| !k.is_empty())
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .ok_or_else(bad)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Scraper {
            kind: Kind::Agentctl,
            name: name.to_owned(),
            bin: Some(PathBuf::from(path)),
            env,
        })
    }
}

/// One size and interval, measured for every scraper.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    pub targets: usize,
    pub series_per_target: usize,
    pub interval_s: u64,
    pub warmup_s: u64,
    pub window_s: u64,
    /// Which programs run this plan (bit `1 << Kind as u8`; agentctl's variants follow
    /// agentctl).
    pub kinds: u8,
}

impl Plan {
    /// `TARGETSxSERIES@INTERVALs[:WARMUP+WINDOW][/SCRAPER,...]`, e.g. `100x1000@5s:30+120` or
    /// `1000x1000@5s:30+60/agentctl,vmagent` (only those programs at that size).
    pub fn parse(s: &str) -> Result<Plan, String> {
        let bad = || {
            format!("plan {s:?}: expected TARGETSxSERIES@INTERVALs[:WARMUP+WINDOW][/SCRAPER,...], e.g. 100x1000@5s:30+120")
        };
        let (s_plan, only) = match s.split_once('/') {
            Some((p, o)) => (p, Some(o)),
            None => (s, None),
        };
        let kinds = match only {
            None => 0b111,
            Some(list) => list.split(',').try_fold(0u8, |acc, name| {
                Kind::ALL
                    .iter()
                    .find(|k| k.name() == name)
                    .map(|k| acc | 1 << *k as u8)
                    .ok_or_else(|| {
                        format!(
                            "plan {s:?}: unknown scraper {name:?} (agentctl, prometheus, vmagent)"
                        )
                    })
            })?,
        };
        let (size, rest) = s_plan.split_once('@').ok_or_else(bad)?;
        let (t, n) = size.split_once('x').ok_or_else(bad)?;
        let (interval, times) = match rest.split_once(':') {
            Some((i, w)) => (i, Some(w)),
            None => (rest, None),
        };
        let num = |x: &str| x.trim_end_matches('s').parse::<u64>().map_err(|_| bad());
        let (warmup_s, window_s) = match times {
            Some(w) => {
                let (a, b) = w.split_once('+').ok_or_else(bad)?;
                (num(a)?, num(b)?)
            }
            None => (30, 120),
        };
        let plan = Plan {
            targets: num(t)? as usize,
            series_per_target: num(n)? as usize,
            interval_s: num(interval)?,
            warmup_s,
            window_s,
            kinds,
        };
        if plan.targets == 0 || plan.interval_s == 0 || plan.window_s < plan.interval_s {
            return Err(format!(
                "plan {s:?}: needs at least one target, an interval > 0 and a window >= the interval"
            ));
        }
        if plan.series_per_target < crate::targets::MIN_SERIES {
            return Err(format!(
                "plan {s:?}: at least {} series per target",
                crate::targets::MIN_SERIES
            ));
        }
        Ok(plan)
    }

    pub fn includes(&self, kind: Kind) -> bool {
        self.kinds & (1 << kind as u8) != 0
    }

    pub fn series(&self) -> u64 {
        (self.targets * self.series_per_target) as u64
    }

    pub fn label(&self) -> String {
        format!(
            "{}x{}@{}s",
            self.targets, self.series_per_target, self.interval_s
        )
    }

    /// Rough wall time of one scraper run, for the estimate printed at start.
    fn estimate_s(&self) -> u64 {
        5 + self.warmup_s + self.window_s + self.interval_s + 5
    }
}

/// `WARMUP+WINDOW` in seconds, e.g. `20+60`.
pub fn parse_window(s: &str) -> Result<(u64, u64), String> {
    let bad = || format!("window {s:?}: expected WARMUP+WINDOW in seconds, e.g. 20+60");
    let (a, b) = s.split_once('+').ok_or_else(bad)?;
    let num = |x: &str| x.trim_end_matches('s').parse::<u64>().map_err(|_| bad());
    let (warmup, window) = (num(a)?, num(b)?);
    if window == 0 {
        return Err(bad());
    }
    Ok((warmup, window))
}

/// The default full run: the scaling curve at 5 s (10k to 1M active series), then 100k every
/// second. 1M is measured for agentctl and vmagent only: Prometheus needs about 3 GiB there
/// and its curve is clear from 500k. 45 s windows (9 scrapes at 5 s) keep the whole run near
/// 20 minutes on 2 cores.
pub fn full_plans() -> Vec<Plan> {
    [
        "10x1000@5s:15+45",
        "100x1000@5s:15+45",
        "500x1000@5s:15+45",
        "1000x1000@5s:20+45/agentctl,vmagent",
        "100x1000@1s:15+45",
    ]
    .iter()
    .filter_map(|p| Plan::parse(p).ok())
    .collect()
}

pub fn quick_plans() -> Vec<Plan> {
    Plan::parse("10x1000@1s:5+15").into_iter().collect()
}

#[derive(Debug, Default)]
pub struct Options {
    pub mode: String,
    pub plans: Vec<Plan>,
    pub scrapers: Vec<Scraper>,
    /// The plans (labels) at which the agentctl variants run; empty: every plan.
    pub variant_plans: Vec<String>,
    pub agentctl: PathBuf,
    pub prometheus: PathBuf,
    pub vmagent: PathBuf,
    pub work_dir: PathBuf,
    pub out_dir: PathBuf,
    pub benchmarks_md: Option<PathBuf>,
    pub plot: Option<String>,
    /// Markdown written by people (diagnosis, next steps), shown in BENCHMARKS.md.
    pub analysis: Option<String>,
    /// An allocator comparison run, shown in BENCHMARKS.md's allocator section.
    pub allocators: Option<Report>,
    pub profile: bool,
    pub profile_s: u64,
    pub command_line: String,
}

impl Options {
    /// Whether `scraper` runs at `plan`: the plan's programs, and the variants only at
    /// `variant_plans` when given.
    fn runs(&self, plan: &Plan, scraper: &Scraper) -> bool {
        plan.includes(scraper.kind)
            && (scraper.bin.is_none()
                || self.variant_plans.is_empty()
                || self.variant_plans.contains(&plan.label()))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("interrupted")]
    Interrupted,
    #[error("{0}")]
    Failed(String),
}

fn fail(msg: impl fmt::Display) -> RunError {
    RunError::Failed(msg.to_string())
}

/// Progress lines with the time since start.
struct Clock(Instant);

impl Clock {
    fn say(&self, msg: impl fmt::Display) {
        let s = self.0.elapsed().as_secs();
        eprintln!("[{:>3}:{:02}] {msg}", s / 60, s % 60);
    }
}

/// Sleeps `d`, waking every 200 ms to check for an interrupt and, with `child`, that the
/// scraper is still alive.
fn sleep(d: Duration, child: Option<&mut ScraperProc>) -> Result<(), RunError> {
    let end = Instant::now() + d;
    let mut child = child;
    while Instant::now() < end {
        if INTERRUPTED.load(Ordering::SeqCst) {
            return Err(RunError::Interrupted);
        }
        if let Some(c) = child.as_deref_mut() {
            c.check_alive()?;
        }
        std::thread::sleep((end - Instant::now()).min(Duration::from_millis(200)));
    }
    Ok(())
}

/// A scraper child process, SIGKILLed on drop (error or interrupt), with its log.
struct ScraperProc {
    name: String,
    child: Option<Child>,
    log: PathBuf,
}

impl ScraperProc {
    fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    fn check_alive(&mut self) -> Result<(), RunError> {
        if let Some(c) = self.child.as_mut() {
            if let Ok(Some(status)) = c.try_wait() {
                self.child = None;
                return Err(fail(format!(
                    "{} exited early ({status}); last log lines:\n{}",
                    self.name,
                    self.log_tail()
                )));
            }
        }
        Ok(())
    }

    /// SIGTERM, then SIGKILL after `grace`.
    fn stop(&mut self, grace: Duration) -> Option<std::process::ExitStatus> {
        let mut c = self.child.take()?;
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .status();
        let end = Instant::now() + grace;
        while Instant::now() < end {
            if let Ok(Some(s)) = c.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = c.kill();
        c.wait().ok()
    }
}

impl Drop for ScraperProc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn clk_tck() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// The first non-empty line a `--version` prints (stdout or stderr).
fn version(bin: &Path, arg: &str) -> Option<String> {
    let o = Command::new(bin).arg(arg).output().ok()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(str::to_owned)
}

fn versions(o: &Options) -> std::collections::BTreeMap<String, String> {
    let mut v = std::collections::BTreeMap::new();
    let mut put = |k: &str, x: Option<String>| {
        v.insert(k.to_owned(), x.unwrap_or_else(|| "unknown".to_owned()));
    };
    put("agentctl", version(&o.agentctl, "--version"));
    put("prometheus", version(&o.prometheus, "--version"));
    // Debian's vmagent is built without its version string; the package version says it.
    let vm = version(&o.vmagent, "-version").or_else(|| {
        let out = Command::new("dpkg-query")
            .args(["-W", "-f", "${Version}", "victoria-metrics"])
            .output()
            .ok()?;
        let s = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        (!s.is_empty()).then(|| format!("vmagent (Debian victoria-metrics {s})"))
    });
    put("vmagent", vm);
    v
}

fn scrape_configs(plan: &Plan, targets: &Targets) -> String {
    // The timeout equals the interval (Prometheus's default of 10 s is more than 5 s and 1 s).
    let timeout = plan.interval_s.min(10);
    let mut s = format!(
        "scrape_configs:\n  - job_name: bench\n    scrape_interval: {}s\n    scrape_timeout: {timeout}s\n    static_configs:\n      - targets:\n",
        plan.interval_s
    );
    for t in &targets.targets {
        s.push_str(&format!("          - '{}'\n", t.addr));
    }
    s
}

struct Env<'a> {
    opts: &'a Options,
    clock: &'a Clock,
    sink: &'a Sink,
    sink_addr: String,
    clk_tck: f64,
}

/// Starts a scraper with a fresh data dir; returns once it scrapes.
fn start_scraper(
    env: &Env<'_>,
    scraper: &Scraper,
    plan: &Plan,
    targets: &Targets,
    dir: &Path,
    data: &Path,
) -> Result<ScraperProc, RunError> {
    // Each scraper binds port 0 itself (a port picked here and released could be taken by
    // someone else first); the port it got is read from its listening socket below.
    let listen = "127.0.0.1:0";
    let log = dir.join(format!("{}.log", scraper.name()));
    let logf = std::fs::File::create(&log).map_err(|e| fail(format!("{}: {e}", log.display())))?;
    let logf2 = logf
        .try_clone()
        .map_err(|e| fail(format!("{}: {e}", log.display())))?;
    let scrape = scrape_configs(plan, targets);
    let write_url = format!("http://{}/api/v1/write", env.sink_addr);
    let cfg_path = dir.join("scrape.yml");
    let (mut cmd, ready_path, instance_cfg) = match scraper.kind {
        Kind::Agentctl => {
            let mut c = Command::new(scraper.bin.as_ref().unwrap_or(&env.opts.agentctl));
            c.args(["agent", "run", "--server.http.address", listen])
                .current_dir(data);
            let cfg = format!("{scrape}remote_write:\n  - url: {write_url}\n");
            (c, "/-/ready", Some(cfg))
        }
        Kind::Prometheus => {
            let cfg = format!("{scrape}remote_write:\n  - url: {write_url}\n");
            std::fs::write(&cfg_path, cfg)
                .map_err(|e| fail(format!("{}: {e}", cfg_path.display())))?;
            let mut c = Command::new(scraper.bin.as_ref().unwrap_or(&env.opts.prometheus));
            c.arg("--enable-feature=agent")
                .arg(format!("--config.file={}", cfg_path.display()))
                .arg(format!("--storage.agent.path={}", data.display()))
                .arg(format!("--web.listen-address={listen}"));
            (c, "/-/ready", None)
        }
        Kind::Vmagent => {
            std::fs::write(&cfg_path, &scrape)
                .map_err(|e| fail(format!("{}: {e}", cfg_path.display())))?;
            let mut c = Command::new(scraper.bin.as_ref().unwrap_or(&env.opts.vmagent));
            c.arg(format!("-promscrape.config={}", cfg_path.display()))
                .arg(format!("-remoteWrite.url={write_url}"))
                .arg(format!("-remoteWrite.tmpDataPath={}", data.display()))
                .arg(format!("-httpListenAddr={listen}"));
            (c, "/health", None)
        }
    };
    cmd.envs(scraper.env.iter().map(|(k, v)| (k, v)));
    let child = cmd
        .stdin(Stdio::null())
        .stdout(logf)
        .stderr(logf2)
        .spawn()
        .map_err(|e| {
            fail(format!(
                "starting {} ({}): {e}",
                scraper.name(),
                cmd.get_program().to_string_lossy()
            ))
        })?;
    let mut proc = ScraperProc {
        name: scraper.name().to_owned(),
        child: Some(child),
        log,
    };
    let t = Instant::now();
    let listen = loop {
        if let Some(port) = procfs::listening_port(proc.pid()) {
            break format!("127.0.0.1:{port}");
        }
        if t.elapsed() > Duration::from_secs(300) {
            return Err(fail(format!(
                "{} did not listen after 5 minutes; log:\n{}",
                scraper.name(),
                proc.log_tail()
            )));
        }
        sleep(Duration::from_millis(100), Some(&mut proc))?;
    };
    // Ready: its HTTP server answers. No fixed deadline: a slow start on a loaded machine is
    // not a failure, a dead process is (checked while waiting); give up after 5 minutes.
    let t = Instant::now();
    loop {
        match http::request("GET", &listen, ready_path, b"", Duration::from_secs(5)) {
            Ok((200, _)) => break,
            _ if t.elapsed() > Duration::from_secs(300) => {
                return Err(fail(format!(
                    "{} not ready on {listen}{ready_path} after 5 minutes; log:\n{}",
                    scraper.name(),
                    proc.log_tail()
                )))
            }
            _ => sleep(Duration::from_millis(200), Some(&mut proc))?,
        }
    }
    if let Some(cfg) = instance_cfg {
        let (status, body) = http::request(
            "PUT",
            &listen,
            "/agent/api/v1/config/bench",
            cfg.as_bytes(),
            Duration::from_secs(30),
        )
        .map_err(|e| fail(format!("PUT config to agentctl at {listen}: {e}")))?;
        if !(200..300).contains(&status) {
            return Err(fail(format!(
                "agentctl rejected the instance config: {status} {body}"
            )));
        }
    }
    // Scraping: every target has been scraped at least once more than before the start.
    let before = targets.served();
    let t = Instant::now();
    loop {
        let now = targets.served();
        if now.iter().zip(&before).all(|(a, b)| a > b) {
            break;
        }
        if t.elapsed() > Duration::from_secs(120 + 3 * plan.interval_s) {
            let waiting = now.iter().zip(&before).filter(|(a, b)| a <= b).count();
            return Err(fail(format!(
                "{}: {waiting} of {} targets never scraped; log:\n{}",
                scraper.name(),
                now.len(),
                proc.log_tail()
            )));
        }
        sleep(Duration::from_millis(200), Some(&mut proc))?;
    }
    env.clock.say(format!(
        "  {} pid {} ready and scraping after {:.1} s",
        scraper.name(),
        proc.pid(),
        t.elapsed().as_secs_f64()
    ));
    Ok(proc)
}

/// The top symbols of a profile and its self time grouped by part of the program.
type Profile = (String, Vec<(String, f64)>);

fn perf_profile(env: &Env<'_>, pid: u32, dir: &Path) -> Result<Profile, RunError> {
    let data = dir.join("perf.data");
    env.clock.say(format!(
        "  perf record -g on pid {pid} for {} s",
        env.opts.profile_s
    ));
    let rec = Command::new("perf")
        .args(["record", "-g", "-o"])
        .arg(&data)
        .args([
            "-p",
            &pid.to_string(),
            "--",
            "sleep",
            &env.opts.profile_s.to_string(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|e| fail(format!("perf record: {e}")))?;
    if !rec.success() {
        return Err(fail(format!("perf record failed: {rec}")));
    }
    let out = Command::new("perf")
        .args([
            "report",
            "--stdio",
            "--no-children",
            "-g",
            "none",
            "--sort",
            "dso,symbol",
            "-i",
        ])
        .arg(&data)
        .stderr(Stdio::null())
        .output()
        .map_err(|e| fail(format!("perf report: {e}")))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<String> = text
        .lines()
        .filter(|l| {
            let t = l.trim_start();
            !t.starts_with('#') && t.contains('%')
        })
        .map(tidy_perf_line)
        .collect();
    let top = lines
        .iter()
        .take(15)
        .cloned()
        .collect::<Vec<_>>()
        .join("\n");
    Ok((top, profile_parts(&lines)))
}

/// Self time per part of the program, largest first, from tidied `perf report` lines
/// (`12.34% dso [.] symbol`). By symbol name, so inlined code counts where it was inlined and
/// a libc `memcmp` counts as libc, whoever called it.
pub fn profile_parts(lines: &[String]) -> Vec<(String, f64)> {
    let mut parts: Vec<(String, f64)> = Vec::new();
    for l in lines {
        let mut it = l.splitn(4, ' ');
        let (Some(pct), Some(dso), Some(_), Some(sym)) =
            (it.next(), it.next(), it.next(), it.next())
        else {
            continue;
        };
        let Ok(pct) = pct.trim_end_matches('%').parse::<f64>() else {
            continue;
        };
        let part = part_of(dso, sym);
        match parts.iter_mut().find(|(p, _)| p == part) {
            Some(p) => p.1 += pct,
            None => parts.push((part.to_owned(), pct)),
        }
    }
    parts.sort_by(|a, b| b.1.total_cmp(&a.1));
    parts
}

fn part_of(dso: &str, sym: &str) -> &'static str {
    let has = |needles: &[&str]| needles.iter().any(|n| sym.contains(n));
    if dso.contains("kernel") || dso.starts_with("[k") {
        return "kernel (syscalls, scheduling, network, page faults)";
    }
    if has(&[
        "malloc",
        "free",
        "realloc",
        "calloc",
        "_rjem_",
        "je_",
        "jemalloc",
        "mi_",
        "_mi_",
        "tcache",
        "arena",
        "unlink_chunk",
        "memalign",
    ]) {
        return "allocator (malloc/free)";
    }
    if has(&[
        "memcmp", "bcmp", "memcpy", "memmove", "memset", "memchr", "strlen",
    ]) && !sym.contains("::")
    {
        return "libc mem* (memcmp, memcpy: callers not attributed)";
    }
    if has(&["snap::"]) {
        return "snappy compression (remote_write bodies)";
    }
    if has(&["scrape::parse"]) {
        return "exposition parser (scrape::parse)";
    }
    if has(&[
        "scrape::cache",
        "scrape::appender",
        "scrape::scrape_loop",
        "agent::scrape",
    ]) {
        return "scrape loop and scrape cache";
    }
    if has(&["agent::labels", "agent::relabel"]) {
        return "labels and relabelling";
    }
    if has(&["agent::wal", "instance::storage", "crc32c"]) {
        return "WAL and series table (wal, instance::storage)";
    }
    if has(&["agent::remote_write"]) {
        return "remote_write (watcher, queue, encoder)";
    }
    if has(&["hashbrown", "xxhash", "twox_hash", "Hasher", "hash::"]) {
        return "hash tables and hashing";
    }
    if has(&["tokio::", "mio::", "parking_lot", "futures"]) {
        return "tokio runtime";
    }
    if has(&["hyper::", "h2::", "reqwest::", "http::", "axum::", "tower"]) {
        return "HTTP (hyper, reqwest)";
    }
    if dso.contains("libc") {
        return "libc (other)";
    }
    "other"
}

/// `perf report` pads the symbol column to the widest symbol and may end lines with empty
/// `-` columns: keep percentage, object and symbol, single-spaced.
fn tidy_perf_line(line: &str) -> String {
    let mut l = line.trim_end();
    while let Some(rest) = l.strip_suffix('-') {
        l = rest.trim_end();
    }
    l.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Measures one scraper at one plan. Errors inside are recorded in the result; only an
/// interrupt propagates.
fn measure(
    env: &Env<'_>,
    scraper: &Scraper,
    plan: &Plan,
    targets: &Targets,
) -> Result<RunResult, RunError> {
    let mut r = RunResult {
        scraper: scraper.name().to_owned(),
        targets: plan.targets,
        series_per_target: targets.layout.series(),
        series: (plan.targets * targets.layout.series()) as u64,
        interval_s: plan.interval_s,
        warmup_s: plan.warmup_s,
        window_s: plan.window_s,
        ..RunResult::default()
    };
    match measure_inner(env, scraper, plan, targets, &mut r) {
        Ok(()) => {}
        Err(RunError::Interrupted) => return Err(RunError::Interrupted),
        Err(RunError::Failed(e)) => r.error = Some(e),
    }
    if r.error.is_none() && r.delivered_samples < r.expected_samples {
        r.error = Some(format!(
            "delivered {} of {} expected samples",
            r.delivered_samples, r.expected_samples
        ));
    }
    Ok(r)
}

fn measure_inner(
    env: &Env<'_>,
    scraper: &Scraper,
    plan: &Plan,
    targets: &Targets,
    r: &mut RunResult,
) -> Result<(), RunError> {
    let clock = env.clock;
    env.sink.reset();
    let dir = tempfile::Builder::new()
        .prefix(&format!("agentctl-bench-{}-", scraper.name()))
        .tempdir_in(&env.opts.work_dir)
        .map_err(|e| fail(format!("temp dir in {}: {e}", env.opts.work_dir.display())))?;
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).map_err(|e| fail(format!("{}: {e}", data.display())))?;
    clock.say(format!("{} at {}: starting", scraper.name(), plan.label()));
    let mut proc = start_scraper(env, scraper, plan, targets, dir.path(), &data)?;
    let pid = proc.pid();
    clock.say(format!("  warm-up {} s", plan.warmup_s));
    sleep(Duration::from_secs(plan.warmup_s), Some(&mut proc))?;

    let proc_err = |e: procfs::ProcError| fail(format!("{}: {e}", scraper.name()));
    let s0 = targets.served();
    let cpu0 = procfs::cpu_ticks(pid).map_err(proc_err)?;
    let io0 = procfs::io_bytes(pid).map_err(proc_err)?;
    let disk0 = procfs::dir_bytes(&data);
    let tcpu0 = procfs::thread_cpu_ticks(TARGETS_THREAD);
    let scpu0 = procfs::thread_cpu_ticks(SINK_THREAD);
    let busy0 = procfs::machine_busy_ticks();
    r.load1_start = procfs::load1();
    let t0 = agent::clock::Clock::system().unix_millis();
    let start = Instant::now();
    clock.say(format!("  window {} s", plan.window_s));
    let mut rss = Vec::new();
    let mut next_note = start + Duration::from_secs(30);
    while start.elapsed() < Duration::from_secs(plan.window_s) {
        let left = Duration::from_secs(plan.window_s).saturating_sub(start.elapsed());
        sleep(left.min(Duration::from_secs(1)), Some(&mut proc))?;
        rss.push(procfs::status_bytes(pid, "VmRSS").map_err(proc_err)?);
        if Instant::now() >= next_note {
            next_note += Duration::from_secs(30);
            let c = env.sink.counts();
            clock.say(format!(
                "  {:>3} s into the window: sink has {} target samples, RSS {:.0} MiB",
                start.elapsed().as_secs(),
                c.target_samples,
                rss.last().copied().unwrap_or(0) as f64 / 1048576.0
            ));
        }
    }
    let s1 = targets.served();
    let cpu1 = procfs::cpu_ticks(pid).map_err(proc_err)?;
    let io1 = procfs::io_bytes(pid).map_err(proc_err)?;
    let disk1 = procfs::dir_bytes(&data);
    let tcpu1 = procfs::thread_cpu_ticks(TARGETS_THREAD);
    let scpu1 = procfs::thread_cpu_ticks(SINK_THREAD);
    let busy1 = procfs::machine_busy_ticks();
    r.load1_end = procfs::load1();
    r.jemalloc = std::fs::read_to_string(&proc.log)
        .ok()
        .and_then(|log| crate::report::JemallocStats::last_in(&log));
    let t1 = agent::clock::Clock::system().unix_millis();
    r.peak_rss_bytes = procfs::status_bytes(pid, "VmHWM").map_err(proc_err)?;
    // What the RSS is at the window's end: the heap (anonymous) or mapped files.
    r.rss_anon_bytes = procfs::status_bytes(pid, "RssAnon").unwrap_or(0);
    r.rss_file_bytes = procfs::status_bytes(pid, "RssFile").unwrap_or(0);

    let per = targets.layout.series() as u64;
    let window: HashMap<String, (u64, u64)> = targets
        .targets
        .iter()
        .zip(s0.iter().zip(&s1))
        .map(|(t, (a, b))| (t.addr.to_string(), (*a, *b)))
        .collect();
    let scrapes: Vec<u64> = s0.iter().zip(&s1).map(|(a, b)| b - a).collect();
    r.scrapes_min = scrapes.iter().copied().min().unwrap_or(0);
    r.scrapes_max = scrapes.iter().copied().max().unwrap_or(0);
    r.expected_samples = scrapes.iter().sum::<u64>() * per;

    // Drain: keep the scraper running until the window's samples have all arrived, or until
    // nothing new has come for `settle`.
    let settle = Duration::from_secs((6 * plan.interval_s).max(30));
    let drain_start = Instant::now();
    let mut last = env.sink.delivered(&window);
    let mut last_progress = Instant::now();
    clock.say(format!(
        "  draining: {} expected, {} there",
        r.expected_samples, last.samples
    ));
    while last.samples < r.expected_samples {
        sleep(Duration::from_millis(250), Some(&mut proc))?;
        let d = env.sink.delivered(&window);
        if d.samples != last.samples {
            last_progress = Instant::now();
        } else if last_progress.elapsed() > settle {
            break;
        }
        last = d;
    }
    r.drain_s = drain_start.elapsed().as_secs_f64();
    r.delivered_samples = last.samples;

    // agentctl itself, not its variants (another build's profile would double the time).
    if env.opts.profile && scraper.kind == Kind::Agentctl && scraper.bin.is_none() {
        match perf_profile(env, pid, dir.path()) {
            Ok((top, parts)) => {
                r.profile = Some(top);
                r.profile_parts = parts;
            }
            Err(RunError::Interrupted) => return Err(RunError::Interrupted),
            Err(RunError::Failed(e)) => clock.say(format!("  profile failed: {e}")),
        }
    }
    let status = proc.stop(Duration::from_secs(90));
    clock.say(format!(
        "  stopped ({})",
        status.map_or("killed".to_owned(), |s| s.to_string())
    ));

    let c = env.sink.counts();
    let tck = env.clk_tck;
    let delivered = r.delivered_samples.max(1) as f64;
    r.delivery = if r.expected_samples == 0 {
        0.0
    } else {
        r.delivered_samples as f64 / r.expected_samples as f64
    };
    r.duplicates = c.duplicates;
    r.out_of_order = c.out_of_order;
    r.stale_markers = c.stale_markers;
    r.auto_samples = c.auto_samples;
    r.decode_errors = c.decode_errors;
    r.cpu_s = (cpu1 - cpu0) as f64 / tck;
    r.cpu_s_per_million = r.cpu_s / delivered * 1e6;
    r.steady_rss_bytes = if rss.is_empty() {
        0
    } else {
        rss.iter().sum::<u64>() / rss.len() as u64
    };
    r.rss_bytes_per_series = r.steady_rss_bytes as f64 / r.series.max(1) as f64;
    r.disk_growth_bytes = disk1 as i64 - disk0 as i64;
    r.disk_bytes_per_sample = r.disk_growth_bytes as f64 / delivered;
    r.write_bytes = io1.0 - io0.0;
    r.write_bytes_per_sample = r.write_bytes as f64 / delivered;
    r.wchar_bytes = io1.1 - io0.1;
    r.scrape_p50_s = env.sink.scrape_duration_quantile(t0, t1, 0.5);
    r.scrape_p99_s = env.sink.scrape_duration_quantile(t0, t1, 0.99);
    r.targets_cpu_s = (tcpu1 - tcpu0) as f64 / tck;
    r.sink_cpu_s = (scpu1 - scpu0) as f64 / tck;
    r.others_cpu_s =
        ((busy1 - busy0) as f64 / tck - r.cpu_s - r.targets_cpu_s - r.sink_cpu_s).max(0.0);
    Ok(())
}

fn summary(r: &RunResult) -> String {
    format!(
        "{:<10} {:>7} series @{}s: {:.2} CPU-s/M, RSS {:.0} B/series (peak {:.0} MiB), disk {:.2} B/sample, write_bytes {:.2} B/sample, delivered {}/{} = {}{}",
        r.scraper,
        r.series,
        r.interval_s,
        r.cpu_s_per_million,
        r.rss_bytes_per_series,
        r.peak_rss_bytes as f64 / 1048576.0,
        r.disk_bytes_per_sample,
        r.write_bytes_per_sample,
        r.delivered_samples,
        r.expected_samples,
        crate::report::ratio(r.delivered_samples, r.expected_samples),
        match &r.error {
            Some(e) => format!("  FAILED: {e}"),
            None => String::new(),
        }
    )
}

/// Runs every plan for every scraper; writes the JSON and BENCHMARKS.md. Returns the report
/// and whether every run delivered everything.
pub fn run(
    opts: &Options,
    targets_rt: &tokio::runtime::Runtime,
    sink: Arc<Sink>,
    sink_addr: String,
    date: &str,
) -> Result<(Report, PathBuf), RunError> {
    let clock = Clock(Instant::now());
    let total: u64 = opts
        .plans
        .iter()
        .map(|p| p.estimate_s() * opts.scrapers.iter().filter(|s| opts.runs(p, s)).count() as u64)
        .sum::<u64>()
        + if opts.profile {
            opts.profile_s * opts.plans.len() as u64
        } else {
            0
        };
    clock.say(format!(
        "{} plan(s) x {} scraper(s): {}; estimated {} min {} s",
        opts.plans.len(),
        opts.scrapers.len(),
        opts.plans
            .iter()
            .map(Plan::label)
            .collect::<Vec<_>>()
            .join(", "),
        total / 60,
        total % 60
    ));
    std::fs::create_dir_all(&opts.work_dir)
        .map_err(|e| fail(format!("{}: {e}", opts.work_dir.display())))?;
    let mut report = Report {
        date: date.to_owned(),
        mode: opts.mode.clone(),
        command_line: opts.command_line.clone(),
        machine: procfs::machine(),
        versions: versions(opts),
        runs: Vec::new(),
        plot: opts.plot.clone(),
    };
    let env = Env {
        opts,
        clock: &clock,
        sink: &sink,
        sink_addr,
        clk_tck: clk_tck(),
    };
    for plan in &opts.plans {
        let targets = targets_rt
            .block_on(Targets::start(
                "127.0.0.1",
                plan.targets,
                plan.series_per_target,
            ))
            .map_err(fail)?;
        clock.say(format!(
            "{} targets x {} series serving on 127.0.0.1 ports {}..",
            plan.targets,
            targets.layout.series(),
            targets.targets.first().map_or(0, |t| t.addr.port())
        ));
        for scraper in opts.scrapers.iter().filter(|s| opts.runs(plan, s)) {
            let r = measure(&env, scraper, plan, &targets)?;
            clock.say(summary(&r));
            report.runs.push(r);
        }
        // Stop the servers on their own runtime.
        targets_rt.block_on(async move { drop(targets) });
    }
    let path = write_outputs(opts, &report, &stem(date, &opts.mode))?;
    Ok((report, path))
}

/// `2026-11-25T17:12:03.123Z` + `quick` -> `2026-11-25T171203Z-quick`.
pub fn stem(date: &str, mode: &str) -> String {
    let d: String = date
        .split('.')
        .next()
        .unwrap_or(date)
        .chars()
        .filter(|c| *c != ':')
        .collect();
    let d = d.trim_end_matches('Z');
    format!("{d}Z-{mode}")
}

fn write_outputs(opts: &Options, report: &Report, stem: &str) -> Result<PathBuf, RunError> {
    std::fs::create_dir_all(&opts.out_dir)
        .map_err(|e| fail(format!("{}: {e}", opts.out_dir.display())))?;
    let json = opts.out_dir.join(format!("{stem}.json"));
    let text = serde_json::to_string_pretty(report).map_err(fail)?;
    std::fs::write(&json, text + "\n").map_err(|e| fail(format!("{}: {e}", json.display())))?;
    if let Some(md) = &opts.benchmarks_md {
        std::fs::write(
            md,
            crate::report::render(report, opts.analysis.as_deref(), opts.allocators.as_ref()),
        )
        .map_err(|e| fail(format!("{}: {e}", md.display())))?;
    }
    Ok(json)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_parse() {
        assert_eq!(
            Plan::parse("100x1000@5s:30+120"),
            Ok(Plan {
                targets: 100,
                series_per_target: 1000,
                interval_s: 5,
                warmup_s: 30,
                window_s: 120,
                kinds: 0b111,
            })
        );
        let p = Plan::parse("1000x1000@5s:20+45/agentctl,vmagent").unwrap();
        assert_eq!((p.targets, p.warmup_s, p.window_s), (1000, 20, 45));
        assert!(p.includes(Kind::Agentctl) && p.includes(Kind::Vmagent));
        assert!(!p.includes(Kind::Prometheus));
        assert!(Plan::parse("10x1000@1s/agentctl,graphite").is_err());
        assert_eq!(Plan::parse("10x1000@1s").map(|p| p.window_s), Ok(120));
        assert!(Plan::parse("10x1000").is_err());
        assert!(Plan::parse("0x1000@1s").is_err());
        assert!(Plan::parse("10x5@1s").is_err());
        assert!(Plan::parse("10x1000@10s:5+5").is_err());
        assert_eq!(full_plans().len(), 5);
        assert_eq!(quick_plans().len(), 1);
    }

    #[test]
    fn perf_lines_are_tidied() {
        assert_eq!(
            tidy_perf_line("    10.07%  agentctl   [.] a::b::{{closure}}      -      -      "),
            "10.07% agentctl [.] a::b::{{closure}}"
        );
        assert_eq!(
            tidy_perf_line(" 1.00%  x  [.] <T as c::D>::f   "),
            "1.00% x [.] <T as c::D>::f"
        );
    }

    #[test]
    fn profile_parts_group_symbols() {
        let lines: Vec<String> = [
            "10.00% libc.so.6 [.] __memcmp_evex_movbe",
            "8.00% [kernel.kallsyms] [k] finish_task_switch.isra.0",
            "5.00% agentctl [.] snap::compress::Encoder::compress",
            "4.00% agentctl [.] agent::scrape::parse::parser::Parser::label_set",
            "3.00% agentctl [.] agent::wal::Wal::append_samples",
            "2.00% libc.so.6 [.] _int_malloc",
            "1.50% agentctl [.] _rjem_je_malloc_default",
            "1.00% agentctl [.] agent::scrape::parse::parser::Parser::sample",
            "junk",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let parts = profile_parts(&lines);
        assert_eq!(
            parts[0].0,
            "libc mem* (memcmp, memcpy: callers not attributed)"
        );
        let get = |p: &str| parts.iter().find(|(n, _)| n.starts_with(p)).map(|x| x.1);
        assert_eq!(get("exposition parser"), Some(5.0));
        assert_eq!(get("allocator"), Some(3.5));
        assert_eq!(get("kernel"), Some(8.0));
        assert_eq!(get("WAL"), Some(3.0));
    }

    #[test]
    fn variants_parse() {
        let v = Scraper::parse_variant("jemalloc=/x/agentctl-jemalloc;_RJEM_MALLOC_CONF=a:1,b:2")
            .unwrap();
        assert_eq!(v.kind, Kind::Agentctl);
        assert_eq!(v.name, "jemalloc");
        assert_eq!(v.bin.as_deref(), Some(Path::new("/x/agentctl-jemalloc")));
        assert_eq!(
            v.env,
            vec![("_RJEM_MALLOC_CONF".to_owned(), "a:1,b:2".to_owned())]
        );
        assert!(Scraper::parse_variant("vmagent=/x").is_err());
        assert!(Scraper::parse_variant("a=").is_err());
        assert!(Scraper::parse_variant("a=/x;novalue").is_err());
        let vs = [v];
        assert_eq!(Scraper::parse("jemalloc", &vs).unwrap().name, "jemalloc");
        assert_eq!(Scraper::parse("vmagent", &vs).unwrap().kind, Kind::Vmagent);
        assert!(Scraper::parse("mimalloc", &vs).is_none());
        assert_eq!(parse_window("10+30"), Ok((10, 30)));
        assert!(parse_window("10").is_err());
    }

    #[test]
    fn variants_run_only_at_their_plans() {
        let before = Scraper::parse_variant("before=/x/agentctl-before").unwrap();
        let (small, big) = (
            Plan::parse("10x1000@5s").unwrap(),
            Plan::parse("1000x1000@5s/agentctl,vmagent").unwrap(),
        );
        let mut o = Options::default();
        assert!(o.runs(&big, &before) && o.runs(&small, &before));
        o.variant_plans = vec!["10x1000@5s".to_owned()];
        assert!(o.runs(&small, &before));
        assert!(!o.runs(&big, &before));
        // The programs themselves run at every plan that names them.
        assert!(o.runs(&big, &Scraper::of(Kind::Agentctl)));
        assert!(!o.runs(&big, &Scraper::of(Kind::Prometheus)));
    }

    #[test]
    fn result_file_stem() {
        assert_eq!(
            stem("2026-11-25T17:12:03.123Z", "quick"),
            "2026-11-25T171203Z-quick"
        );
    }
}
