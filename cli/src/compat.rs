//! Compatibility with the old agent's command lines.

use std::ffi::OsString;

/// Rewrites Go-style single-dash long flags (`-config.file=x`, `-server.http.address`) to
/// clap's `--config.file=x`. Only arguments whose flag name contains a dot, or is one of the old
/// agent's flags without one ([`GO_FLAGS_WITHOUT_DOT`]), are touched, so short flags (`-d`,
/// `-a URL`) and values are left alone.
pub fn normalize_args(args: impl IntoIterator<Item = OsString>) -> Vec<OsString> {
    // Nothing after `--` is a flag.
    let mut flags = true;
    args.into_iter()
        .map(|arg| match arg.to_str() {
            Some("--") => {
                flags = false;
                arg
            }
            Some(s) if flags && is_go_long_flag(s) => OsString::from(format!("-{s}")),
            _ => arg,
        })
        .collect()
}

/// The old agent's flags whose names have no dot (otherwise read as bundles of short flags).
const GO_FLAGS_WITHOUT_DOT: [&str; 2] = ["disable-reporting", "enable-features"];

fn is_go_long_flag(s: &str) -> bool {
    let Some(rest) = s.strip_prefix('-') else {
        return false;
    };
    if rest.starts_with('-') {
        return false;
    }
    let name = rest.split('=').next().unwrap_or("");
    (name.contains('.') || GO_FLAGS_WITHOUT_DOT.contains(&name))
        && name.chars().next().is_some_and(|c| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c == '.' || c == '-' || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(args: &[&str]) -> Vec<String> {
        normalize_args(args.iter().map(OsString::from))
            .into_iter()
            .map(|s| s.into_string().unwrap())
            .collect()
    }

    #[test]
    fn go_flags_become_double_dash() {
        assert_eq!(
            norm(&[
                "agentctl",
                "agent",
                "run",
                "-config.file=a.yaml",
                "-server.http.address",
                "x:1"
            ]),
            [
                "agentctl",
                "agent",
                "run",
                "--config.file=a.yaml",
                "--server.http.address",
                "x:1"
            ]
        );
    }

    #[test]
    fn the_old_agents_flags_without_a_dot_become_double_dash() {
        assert_eq!(
            norm(&[
                "agentctl",
                "agent",
                "run",
                "-disable-reporting",
                "-enable-features=a,b",
                "-server.grpc.address=127.0.0.1:9091",
                "-d",
            ]),
            [
                "agentctl",
                "agent",
                "run",
                "--disable-reporting",
                "--enable-features=a,b",
                "--server.grpc.address=127.0.0.1:9091",
                "-d",
            ]
        );
    }

    #[test]
    fn nothing_after_a_double_dash_is_rewritten() {
        assert_eq!(
            norm(&["agentctl", "config", "get", "--", "-disable-reporting"]),
            ["agentctl", "config", "get", "--", "-disable-reporting"]
        );
    }

    #[test]
    fn short_flags_values_and_double_dash_untouched() {
        assert_eq!(
            norm(&[
                "agentctl",
                "config-sync",
                "-d",
                "-a",
                "http://a.b:1",
                "--log.level=debug",
                "./x.y"
            ]),
            [
                "agentctl",
                "config-sync",
                "-d",
                "-a",
                "http://a.b:1",
                "--log.level=debug",
                "./x.y"
            ]
        );
        assert_eq!(norm(&["-1.5"]), ["-1.5"]);
    }
}
