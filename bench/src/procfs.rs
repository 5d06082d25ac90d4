//! What `/proc` says about a process: CPU time, memory, I/O; and the machine.
//!
//! - `/proc/PID/stat`: after the `(comm)` field, fields 14-17 (1-based, counting from the
//!   pid) are utime, stime, cutime, cstime in clock ticks; cutime/cstime cover children the
//!   process has waited for (none of the three scrapers forks, but it costs nothing).
//! - `/proc/PID/status`: `VmHWM` (peak RSS) and `VmRSS` in kB.
//! - `/proc/PID/io`: `write_bytes` (bytes the process caused to be sent to the block layer,
//!   accounted per page when a clean page is dirtied) and `wchar` (bytes passed to any write
//!   call, sockets included).
//! - `/proc/self/task/TID/stat` gives the same CPU fields per thread, which is how the
//!   in-process targets and sink, each on its own named tokio runtime, report their own CPU.
//! - `/proc/stat` (first line: the machine's CPU ticks by state) and `/proc/loadavg`: how busy
//!   the machine was with everything else during a window (the benchmark shares it).
//! - `/proc/PID/fd` and `/proc/net/tcp`: the port a process listens on (its socket inodes
//!   among the LISTEN rows), so the scrapers can bind port 0 themselves.

use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: unexpected format ({what})")]
    Format { path: String, what: &'static str },
}

fn read(path: &str) -> Result<String, ProcError> {
    std::fs::read_to_string(path).map_err(|source| ProcError::Read {
        path: path.to_owned(),
        source,
    })
}

/// The comm and the CPU ticks (utime+stime+cutime+cstime) of a `stat` file's text.
fn parse_stat(path: &str, text: &str) -> Result<(String, u64), ProcError> {
    let bad = |what| ProcError::Format {
        path: path.to_owned(),
        what,
    };
    let open = text.find('(').ok_or_else(|| bad("no '('"))?;
    // The comm may itself hold ')' : the last one closes it.
    let close = text.rfind(')').ok_or_else(|| bad("no ')'"))?;
    let comm = text.get(open + 1..close).unwrap_or("").to_owned();
    let rest: Vec<&str> = text
        .get(close + 1..)
        .unwrap_or("")
        .split_ascii_whitespace()
        .collect();
    // rest[0] is field 3 (state); utime is field 14.
    let mut ticks = 0;
    for i in 11..15 {
        ticks += rest
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or_else(|| bad("CPU fields"))?;
    }
    Ok((comm, ticks))
}

/// CPU ticks used by a process (and its waited-for children).
/// The port of the IPv4 TCP socket `pid` listens on, once it listens (the first, if several).
pub fn listening_port(pid: u32) -> Option<u16> {
    listening_ports(pid).into_iter().next()
}

/// The ports of the IPv4 TCP sockets `pid` listens on.
fn listening_ports(pid: u32) -> Vec<u16> {
    listening_ports_of(pid).unwrap_or_default()
}

fn listening_ports_of(pid: u32) -> Option<Vec<u16>> {
    let sockets: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()?
        .flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .filter_map(|target| {
            let inode = target
                .to_str()?
                .strip_prefix("socket:[")?
                .strip_suffix(']')?;
            Some(inode.to_owned())
        })
        .collect();
    // Rows: `sl local_address rem_address st ... inode`; state 0A is LISTEN.
    let table = read("/proc/net/tcp").ok()?;
    let ports = table.lines().skip(1).filter_map(|row| {
        let f: Vec<&str> = row.split_whitespace().collect();
        if f.len() > 9 && f[3] == "0A" && sockets.iter().any(|s| s == f[9]) {
            u16::from_str_radix(f[1].rsplit(':').next()?, 16).ok()
        } else {
            None
        }
    });
    Some(ports.collect())
}

pub fn cpu_ticks(pid: u32) -> Result<u64, ProcError> {
    let path = format!("/proc/{pid}/stat");
    let text = read(&path)?;
    parse_stat(&path, &text).map(|(_, t)| t)
}

/// CPU ticks of this process's threads whose name is `name`.
pub fn thread_cpu_ticks(name: &str) -> u64 {
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    let mut total = 0;
    for e in dir.flatten() {
        let path = e.path().join("stat");
        let p = path.display().to_string();
        // A thread may exit between listing and reading; it then simply is not counted.
        if let Ok(text) = std::fs::read_to_string(&path) {
            if let Ok((comm, t)) = parse_stat(&p, &text) {
                if comm == name {
                    total += t;
                }
            }
        }
    }
    total
}

/// The machine's busy CPU ticks so far (all CPUs): user, nice, system, irq, softirq and steal
/// of `/proc/stat`'s `cpu` line (idle and iowait left out; guest time is inside user).
pub fn machine_busy_ticks() -> u64 {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    parse_machine_busy(&text)
}

fn parse_machine_busy(text: &str) -> u64 {
    let Some(line) = text.lines().find(|l| l.starts_with("cpu ")) else {
        return 0;
    };
    let v: Vec<u64> = line
        .split_ascii_whitespace()
        .skip(1)
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    // user nice system idle iowait irq softirq steal ...
    [0, 1, 2, 5, 6, 7]
        .iter()
        .map(|&i| v.get(i).copied().unwrap_or(0))
        .sum()
}

/// The 1-minute load average.
pub fn load1() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|t| t.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

/// A `Key: value kB` field of `/proc/PID/status`, in bytes.
pub fn status_bytes(pid: u32, key: &str) -> Result<u64, ProcError> {
    let path = format!("/proc/{pid}/status");
    let text = read(&path)?;
    field(&text, key)
        .map(|kb| kb * 1024)
        .ok_or(ProcError::Format {
            path,
            what: "missing memory field",
        })
}

/// `write_bytes` and `wchar` of `/proc/PID/io`.
pub fn io_bytes(pid: u32) -> Result<(u64, u64), ProcError> {
    let path = format!("/proc/{pid}/io");
    let text = read(&path)?;
    match (field(&text, "write_bytes"), field(&text, "wchar")) {
        (Some(w), Some(c)) => Ok((w, c)),
        _ => Err(ProcError::Format {
            path,
            what: "missing write_bytes/wchar",
        }),
    }
}

fn field(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        if k.trim() != key {
            return None;
        }
        v.split_whitespace().next()?.parse().ok()
    })
}

/// Total size of the regular files under `dir` (apparent size, as `du --apparent-size`).
pub fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    for e in rd.flatten() {
        // Files come and go while a scraper runs (segments, checkpoints): skip what vanished.
        let Ok(md) = e.metadata() else { continue };
        if md.is_dir() {
            total += dir_bytes(&e.path());
        } else if md.is_file() {
            total += md.len();
        }
    }
    total
}

/// The machine, for the report.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct Machine {
    pub nproc: usize,
    pub cpu_model: String,
    pub mem_total_bytes: u64,
    pub kernel: String,
}

pub fn machine() -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = cpuinfo
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == "model name").then(|| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".to_owned());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    Machine {
        nproc: std::thread::available_parallelism().map_or(1, |n| n.get()),
        cpu_model,
        mem_total_bytes: field(&meminfo, "MemTotal").unwrap_or(0) * 1024,
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_parens_in_comm() {
        let text = "42 (a) b) S 1 42 42 0 -1 4194560 100 0 0 0 7 3 2 1 20 0 1 0 5 1000 10";
        assert_eq!(
            parse_stat("x", text).expect("parse"),
            ("a) b".to_owned(), 13)
        );
        assert!(parse_stat("x", "42 (a) S 1").is_err());
    }

    #[test]
    fn a_listening_socket_is_found_with_its_port() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().expect("addr").port();
        let pid = std::process::id();
        assert!(listening_ports(pid).contains(&port), "{port}");
        assert!(listening_port(pid).is_some());
        drop(l);
        assert!(!listening_ports(pid).contains(&port), "{port} closed");
    }

    #[test]
    fn machine_busy_leaves_idle_and_iowait_out() {
        let text = "cpu  100 5 20 9000 300 1 2 3 0 0\ncpu0 50 2 10 4500 150 0 1 1 0 0\n";
        assert_eq!(parse_machine_busy(text), 100 + 5 + 20 + 1 + 2 + 3);
        assert_eq!(parse_machine_busy("intr 1 2\n"), 0);
        assert!(machine_busy_ticks() > 0);
    }

    #[test]
    fn own_process_figures() {
        let pid = std::process::id();
        assert!(status_bytes(pid, "VmRSS").expect("rss") > 0);
        assert!(status_bytes(pid, "VmHWM").expect("hwm") > 0);
        cpu_ticks(pid).expect("cpu");
        io_bytes(pid).expect("io");
    }
}
