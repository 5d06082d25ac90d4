//! The Debian package (`scripts/deb`): built from the test binary, unpacked into a temporary
//! root with `dpkg -x`, its files checked, its systemd unit verified by `systemd-analyze`, and
//! the unit's ExecStart run by hand with `NOTIFY_SOCKET` set, as systemd would run it, until
//! the agent says READY=1 (and answers /-/ready), RELOADING=1 on the unit's ExecReload and
//! STOPPING=1 on SIGTERM; and every syscall a traced agent makes is allowed by the unit's
//! SystemCallFilter.

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::{agentctl, bin, root, Agent};

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Builds the package from the test binary (uncompressed: fast) and unpacks it into `dir/root`.
fn build_and_unpack(dir: &Path) -> (PathBuf, PathBuf) {
    let deb = run(Command::new(root().join("scripts/deb"))
        .args(["--fast", "--binary"])
        .arg(bin())
        .arg("--out")
        .arg(dir))
    .trim()
    .to_owned();
    let deb = PathBuf::from(deb);
    assert!(deb.is_file(), "{}", deb.display());
    let unpacked = dir.join("root");
    run(Command::new("dpkg").arg("-x").arg(&deb).arg(&unpacked));
    (deb, unpacked)
}

/// The value of `Key=` in a unit file (the last one, as systemd reads it).
fn unit_value<'a>(unit: &'a str, key: &str) -> Vec<&'a str> {
    unit.lines()
        .filter_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .collect()
}

#[test]
fn the_deb_holds_the_binary_docs_config_and_a_hardened_notify_unit() {
    let tmp = tempfile::tempdir().unwrap();
    let (deb, r) = build_and_unpack(tmp.path());

    let control = run(Command::new("dpkg-deb").arg("--field").arg(&deb));
    let version = String::from_utf8_lossy(
        &Command::new(bin())
            .arg("--version")
            .output()
            .unwrap()
            .stdout,
    )
    .split_whitespace()
    .nth(1)
    .unwrap()
    .to_owned();
    assert!(control.contains("Package: agentctl\n"), "{control}");
    assert!(
        control.contains(&format!("Version: {version}-1\n")),
        "{control}"
    );
    let depends = control
        .lines()
        .find_map(|l| l.strip_prefix("Depends: "))
        .expect("Depends");
    assert!(depends.starts_with("libc6 (>= 2."), "{depends}");
    assert!(
        depends.contains("procps"),
        "ExecReload runs kill: {depends}"
    );

    // The binary, runnable.
    let binary = r.join("usr/bin/agentctl");
    assert_eq!(
        std::fs::metadata(&binary).unwrap().permissions().mode() & 0o777,
        0o755
    );
    let out = run(Command::new(&binary).arg("--version"));
    assert_eq!(out.trim(), format!("agentctl {version}"));

    // The man page and the completions, as the binary generates them.
    let man = run(Command::new("gzip")
        .arg("-dc")
        .arg(r.join("usr/share/man/man1/agentctl.1.gz")));
    assert!(man.contains(".TH agentctl 1"), "{man}");
    for (shell, path) in [
        ("bash", "usr/share/bash-completion/completions/agentctl"),
        ("zsh", "usr/share/zsh/vendor-completions/_agentctl"),
        ("fish", "usr/share/fish/vendor_completions.d/agentctl.fish"),
    ] {
        let want = agentctl(&["completions", shell], tmp.path()).stdout;
        assert_eq!(std::fs::read(r.join(path)).unwrap(), want, "{path}");
    }

    // The dashboard and the alerting rules, as in the repository.
    for f in ["agentctl-dashboard.json", "agentctl-alerts.yaml"] {
        assert_eq!(
            std::fs::read(r.join("usr/share/agentctl/mixin").join(f)).unwrap(),
            std::fs::read(root().join("packaging/mixin").join(f)).unwrap(),
            "{f}"
        );
    }

    // The default config: valid, without warnings, embedded store, WAL in the state directory.
    let cfg = r.join("etc/agentctl/agent.yaml");
    let check = agentctl(&["config", "check", cfg.to_str().unwrap()], tmp.path());
    assert_eq!(check.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&check.stderr), "", "no warnings");
    let text = std::fs::read_to_string(&cfg).unwrap();
    assert!(
        text.contains("  wal_directory: /var/lib/agentctl\n"),
        "{text}"
    );
    assert!(text.contains("      store: embedded\n"), "{text}");
    let ctrl = tmp.path().join("control");
    run(Command::new("dpkg-deb").arg("-e").arg(&deb).arg(&ctrl));
    assert_eq!(
        std::fs::read_to_string(ctrl.join("conffiles")).unwrap(),
        "/etc/agentctl/agent.yaml\n/etc/default/agentctl\n"
    );
    for script in ["postinst", "prerm", "postrm"] {
        run(Command::new("sh").arg("-n").arg(ctrl.join(script)));
    }
    let postinst = std::fs::read_to_string(ctrl.join("postinst")).unwrap();
    assert!(postinst.contains("systemd-sysusers /usr/lib/sysusers.d/agentctl.conf"));
    assert_eq!(
        std::fs::read_to_string(r.join("usr/lib/sysusers.d/agentctl.conf"))
            .unwrap()
            .lines()
            .find(|l| !l.starts_with('#')),
        Some("u agentctl - \"agentctl scraping agent\" /var/lib/agentctl")
    );

    // The unit.
    let unit = std::fs::read_to_string(r.join("lib/systemd/system/agentctl.service")).unwrap();
    for (key, want) in [
        ("Type", "notify"),
        ("User", "agentctl"),
        ("Group", "agentctl"),
        ("ExecReload", "/bin/kill -HUP $MAINPID"),
        ("StateDirectory", "agentctl"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("NoNewPrivileges", "yes"),
        ("PrivateTmp", "yes"),
        ("ReadWritePaths", "/var/lib/agentctl"),
        ("WantedBy", "multi-user.target"),
    ] {
        assert_eq!(
            unit_value(&unit, key).last(),
            Some(&want),
            "{key}= in\n{unit}"
        );
    }

    // systemd-analyze verify, in a root that has the package, systemd's own units and kill(1)
    // (what an installed system has).
    let units = r.join("lib/systemd/system");
    for e in
        std::fs::read_dir("/lib/systemd/system").expect("systemd's units (scripts/deps: systemd)")
    {
        let e = e.unwrap();
        let to = units.join(e.file_name());
        if !to.exists() {
            let _ = Command::new("cp").arg("-a").arg(e.path()).arg(&to).status();
        }
    }
    std::fs::create_dir_all(r.join("bin")).unwrap();
    std::fs::copy("/bin/kill", r.join("bin/kill")).unwrap();
    let verify = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(format!("--root={}", r.display()))
        .arg("lib/systemd/system/agentctl.service")
        .output()
        .expect("systemd-analyze (scripts/deps: systemd)");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
    assert!(verify.status.success(), "{said}");
    assert_eq!(said, "", "systemd-analyze verify had warnings");
}

/// Waits for the next datagram on the notify socket.
fn next_notification(sock: &UnixDatagram, within: Duration, want: &str) -> String {
    sock.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 4096];
    let n = sock
        .recv(&mut buf)
        .unwrap_or_else(|e| panic!("no notification ({want} expected) within {within:?}: {e}"));
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[test]
fn the_units_exec_start_reports_ready_reload_and_stop_over_notify_socket() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, r) = build_and_unpack(tmp.path());
    let unit = std::fs::read_to_string(r.join("lib/systemd/system/agentctl.service")).unwrap();

    // The package's default AGENTCTL_OPTS is empty; a test listens on a port of its own.
    let default = std::fs::read_to_string(r.join("etc/default/agentctl")).unwrap();
    assert!(
        default.lines().any(|l| l == "AGENTCTL_OPTS=\"\""),
        "{default}"
    );
    // The config as shipped, its state directory moved into the temporary root.
    let state = tmp.path().join("var/lib/agentctl");
    std::fs::create_dir_all(&state).unwrap();
    let cfg = tmp.path().join("agent.yaml");
    std::fs::write(
        &cfg,
        std::fs::read_to_string(r.join("etc/agentctl/agent.yaml"))
            .unwrap()
            .replace("/var/lib/agentctl", state.to_str().unwrap()),
    )
    .unwrap();

    let exec_start = unit_value(&unit, "ExecStart")[0];
    let words: Vec<&str> = exec_start.split_whitespace().collect();
    assert_eq!(
        words,
        [
            "/usr/bin/agentctl",
            "agent",
            "run",
            "--config.file=/etc/agentctl/agent.yaml",
            "$AGENTCTL_OPTS"
        ]
    );

    // The harness adds its own listen address (port 0) to the unit's arguments.
    let notify_path = tmp.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    let started = Instant::now();
    let mut agent = Agent::builder(&state)
        .binary(&r.join("usr/bin/agentctl"))
        .env("NOTIFY_SOCKET", &notify_path)
        .arg(format!("--config.file={}", cfg.display()))
        .spawn();
    let ready = next_notification(&notify, Duration::from_secs(60), "READY=1");
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready:?}");
    // READY=1 is sent once the agent is ready, not before.
    let r = agent.get("/-/ready");
    assert_eq!((r.status, r.body.as_str()), (200, "Agent is Ready.\n"));
    eprintln!("READY=1 {:?} after start", started.elapsed());

    // ExecReload, as systemd runs it.
    let reload = unit_value(&unit, "ExecReload")[0].replace("$MAINPID", &agent.pid().to_string());
    let mut words = reload.split_whitespace();
    run(Command::new(words.next().unwrap()).args(words));
    let reloading = next_notification(&notify, Duration::from_secs(30), "RELOADING=1");
    assert!(
        reloading.lines().any(|l| l == "RELOADING=1"),
        "{reloading:?}"
    );
    let ready = next_notification(&notify, Duration::from_secs(30), "READY=1 after the reload");
    assert!(
        ready.lines().any(|l| l == "READY=1") && ready.contains("STATUS=config reloaded"),
        "{ready:?}"
    );

    assert_eq!(agent.stop(), Some(0), "SIGTERM");
    notify
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut buf = [0u8; 4096];
    let stopping = match notify.recv(&mut buf) {
        Ok(n) => String::from_utf8_lossy(&buf[..n]).into_owned(),
        Err(e) => panic!("no STOPPING=1 ({e}); log:\n{}", agent.log()),
    };
    assert!(stopping.lines().any(|l| l == "STOPPING=1"), "{stopping:?}");
}

/// The syscalls of `systemd-analyze syscall-filter SET`, groups resolved.
fn syscall_set(set: &str) -> BTreeSet<String> {
    let out = run(Command::new("systemd-analyze")
        .args(["syscall-filter", "--no-pager"])
        .arg(set));
    let mut names = BTreeSet::new();
    for word in out
        .lines()
        .filter(|l| l.starts_with(char::is_whitespace))
        .map(str::trim)
        .filter(|w| !w.is_empty() && !w.starts_with('#'))
    {
        if word.starts_with('@') {
            names.extend(syscall_set(word));
        } else {
            names.insert(word.to_owned());
        }
    }
    assert!(!names.is_empty(), "{set}: no syscalls in\n{out}");
    names
}

/// SIGKILLs the traced agent (strace's child) when the test ends, passed or not: strace
/// killed by the harness would leave its tracee running.
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", &self.0.to_string()])
            .status();
    }
}

/// systemd does not run as PID 1 here, so the unit cannot be started in its sandbox; its
/// syscall filter is checked instead. Every syscall an agent makes while it starts, runs a
/// config (scrapes, WAL, remote_write to a closed port), serves the API, reloads and stops
/// (traced by strace) is allowed by the unit's `SystemCallFilter=` lines: in each allow-list
/// set and in none of the `~` deny-list sets. A dependency that starts calling, say,
/// `setrlimit` (in `@resources`) would get EPERM under systemd; this test names it.
#[test]
fn the_units_syscall_filter_allows_every_syscall_the_agent_makes() {
    let unit = std::fs::read_to_string(root().join("packaging/agentctl.service")).unwrap();
    let (mut allowed, mut denied) = (Vec::new(), BTreeSet::new());
    for line in unit_value(&unit, "SystemCallFilter") {
        match line.strip_prefix('~') {
            Some(deny) => deny
                .split_whitespace()
                .for_each(|s| denied.extend(syscall_set(s))),
            None => allowed.push(
                line.split_whitespace()
                    .flat_map(syscall_set)
                    .collect::<BTreeSet<_>>(),
            ),
        }
    }
    assert!(
        !allowed.is_empty() && !denied.is_empty(),
        "the unit has an allow-list and a deny-list:\n{unit}"
    );

    let tmp = tempfile::tempdir().unwrap();
    let trace = tmp.path().join("trace");
    let wrapper = tmp.path().join("agentctl-traced");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nexec strace -f -qq -o '{}' -- '{}' \"$@\"\n",
            trace.display(),
            bin().display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    // The packaged config, its state directory in the temporary root.
    let state = tmp.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    let cfg_file = tmp.path().join("agent.yaml");
    std::fs::write(
        &cfg_file,
        std::fs::read_to_string(root().join("packaging/agent.yaml"))
            .unwrap()
            .replace("/var/lib/agentctl", state.to_str().unwrap()),
    )
    .unwrap();
    let mut agent = Agent::builder(&state)
        .binary(&wrapper)
        .config_file(&cfg_file)
        .ready_timeout(Duration::from_secs(120))
        .start();
    // The agent is strace's child; signals go to it directly.
    let children = format!("/proc/{0}/task/{0}/children", agent.pid());
    let pid: u32 = std::fs::read_to_string(&children)
        .unwrap_or_else(|e| panic!("{children}: {e}"))
        .split_whitespace()
        .next()
        .expect("strace runs the agent")
        .parse()
        .unwrap();
    let _traced = KillOnDrop(pid);
    let signal = |sig: &str| run(Command::new("kill").args([sig, &pid.to_string()]));

    let cfg = format!(
        "scrape_configs:\n  - job_name: self\n    scrape_interval: 1s\n    static_configs:\n      - targets: ['{}']\nremote_write:\n  - url: http://127.0.0.1:1/api/v1/write\nremote_flush_deadline: 1s\n",
        agent.addr()
    );
    assert!(matches!(agent.put_config("self", &cfg).status, 200 | 201));
    agent.wait_until("samples in the WAL", Duration::from_secs(60), |a| {
        a.metric("agent_wal_samples_appended_total", "") > 0.0
    });
    assert_eq!(agent.get("/agent/api/v1/configs").status, 200);
    let offset = agent.log().len();
    signal("-HUP");
    agent.wait_log_after(offset, "config reloaded", Duration::from_secs(30));
    signal("-TERM");
    assert_eq!(
        agent.wait_exit(Duration::from_secs(60)),
        Some(0),
        "log:\n{}",
        agent.log()
    );

    // `PID name(...`, `PID <... name resumed>...`; signals and exits are not calls.
    let call = regex::Regex::new(r"^\d+\s+(?:<\.\.\. )?([a-z0-9_]+)[( ]").unwrap();
    let text = std::fs::read_to_string(&trace).unwrap();
    let used: BTreeSet<String> = text
        .lines()
        .filter_map(|l| call.captures(l).map(|c| c[1].to_owned()))
        .collect();
    assert!(
        used.contains("openat") && used.contains("accept4") && used.contains("fdatasync"),
        "the trace has the agent's calls: {used:?}"
    );
    let refused: Vec<String> = used
        .iter()
        .filter(|s| allowed.iter().any(|set| !set.contains(*s)) || denied.contains(*s))
        .cloned()
        .collect();
    eprintln!("{} syscalls traced: {used:?}", used.len());
    assert!(
        refused.is_empty(),
        "under agentctl.service these calls fail with EPERM: {refused:?}"
    );
}
