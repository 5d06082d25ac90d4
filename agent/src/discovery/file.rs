//! `file_sd_configs`: target groups in JSON or YAML files, re-read when a file changes (its
//! size or modification time, checked every 250 ms, so a change is seen within a second) and
//! every `refresh_interval`. The last element of a path may be a glob (`*`, `?`, `[...]`).
//! A file that fails to parse keeps its previous groups (logged with the file); a file that
//! disappears removes its groups. Each group gets `__meta_filepath`. The polls (directory
//! listing, stats, reads) run on the blocking pool.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{TargetGroup, TargetGroupDoc};
use crate::config::sd::FileSdConfig;

const POLL: Duration = Duration::from_millis(250);

/// What a file looked like when it was last read.
#[derive(Debug, Clone, PartialEq)]
struct Stamp {
    len: u64,
    modified: Option<SystemTime>,
}

pub(crate) async fn run(
    cfg: FileSdConfig,
    base_dir: Option<PathBuf>,
    slot: usize,
    tx: mpsc::Sender<(usize, Vec<TargetGroup>)>,
    shutdown: CancellationToken,
) {
    let refresh = cfg
        .refresh_interval
        .unwrap_or(FileSdConfig::DEFAULT_REFRESH)
        .as_std();
    let patterns: Vec<PathBuf> = cfg
        .files
        .iter()
        .map(|f| match &base_dir {
            Some(b) if Path::new(f).is_relative() => b.join(f),
            _ => PathBuf::from(f),
        })
        .collect();
    let patterns: std::sync::Arc<[PathBuf]> = patterns.into();
    let mut seen: Seen = BTreeMap::new();
    let mut last_full = Instant::now();
    let mut first = true;
    loop {
        let force = last_full.elapsed() >= refresh;
        if force {
            last_full = Instant::now();
        }
        // The directory listing, the stats and the reads are disk work: off the async workers.
        let p = patterns.clone();
        // Its log lines keep the job's fields.
        let span = tracing::Span::current();
        let scanned = tokio::task::spawn_blocking(move || {
            let changed = span.in_scope(|| scan(&p, &mut seen, force)) || first;
            (seen, changed)
        })
        .await;
        let changed;
        (seen, changed) = match scanned {
            Ok(s) => s,
            // The runtime is shutting down.
            Err(e) if e.is_cancelled() => return,
            Err(e) => {
                tracing::error!(error = %e, "file_sd: the scan of the target files failed; this discovery stops");
                return;
            }
        };
        if changed {
            let all = seen.values().flat_map(|(_, g)| g.iter().cloned()).collect();
            if tx.send((slot, all)).await.is_err() {
                return;
            }
        }
        first = false;
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(POLL) => {}
        }
    }
}

/// The groups of each file read, with what the file looked like then.
type Seen = BTreeMap<PathBuf, (Stamp, Vec<TargetGroup>)>;

/// Brings `seen` up to date with the files the patterns name now: files gone are forgotten,
/// files changed since they were read (or all, with `force`) are read again. Whether any
/// file's groups changed.
fn scan(patterns: &[PathBuf], seen: &mut Seen, force: bool) -> bool {
    let files: Vec<PathBuf> = patterns.iter().flat_map(|p| expand(p)).collect();
    let mut changed = false;
    seen.retain(|path, _| {
        let keep = files.contains(path);
        changed |= !keep;
        keep
    });
    for path in files {
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        let stamp = Stamp {
            len: meta.len(),
            modified: meta.modified().ok(),
        };
        if !force && seen.get(&path).is_some_and(|(s, _)| *s == stamp) {
            continue;
        }
        match read_file(&path) {
            Ok(groups) => {
                if seen.get(&path).is_none_or(|(_, g)| *g != groups) {
                    changed = true;
                }
                seen.insert(path, (stamp, groups));
            }
            Err(e) => {
                tracing::error!(file = %path.display(), error = %e, "file_sd: cannot read target file; keeping its previous targets");
                // Remember the stamp so the error is logged once per change, not per poll.
                let previous = seen.remove(&path).map(|(_, g)| g).unwrap_or_default();
                seen.insert(path, (stamp, previous));
            }
        }
    }
    changed
}

/// Reads one target file (JSON when it ends in `.json`, YAML otherwise).
pub fn read_file(path: &Path) -> Result<Vec<TargetGroup>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let docs: Vec<Option<TargetGroupDoc>> = if path.extension().is_some_and(|e| e == "json") {
        serde_json::from_str(&text).map_err(|e| e.to_string())?
    } else if text.trim().is_empty() {
        Vec::new()
    } else {
        crate::config::load::check_yaml_limits(&text).map_err(|e| e.to_string())?;
        serde_yaml::from_str(&text).map_err(|e| e.to_string())?
    };
    let name = path.display().to_string();
    docs.into_iter()
        .enumerate()
        .map(|(i, d)| {
            let d = d.ok_or_else(|| format!("nil target group item found (index {i})"))?;
            d.into_group(format!("{name}:{i}"), ("__meta_filepath", &name))
        })
        .collect()
}

/// The files a pattern names: itself, or the matches of a glob in its last element.
fn expand(pattern: &Path) -> Vec<PathBuf> {
    let Some(name) = pattern.file_name().and_then(|n| n.to_str()) else {
        return Vec::new();
    };
    if !name.contains(['*', '?', '[']) {
        return vec![pattern.to_path_buf()];
    }
    let dir = pattern
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = entries
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| glob_match(name.as_bytes(), n.as_bytes()))
        })
        .map(|e| e.path())
        .collect();
    out.sort();
    out
}

/// Go's `filepath.Match` for one path element: `*`, `?`, `[a-z]`, `[^...]`, `\` escapes.
///
/// In linear passes with one backtracking point (the last `*`), as Go does: a recursive match
/// tries every split at every `*` and takes exponential time on a pattern like `*a*a*a*a*b`.
fn glob_match(p: &[u8], s: &[u8]) -> bool {
    let (mut pi, mut si) = (0, 0);
    // After the last `*` seen: where the pattern goes on, and how much of `s` it swallowed.
    let mut star: Option<(usize, usize)> = None;
    loop {
        if p.get(pi) == Some(&b'*') {
            pi += 1;
            star = Some((pi, si));
            continue;
        }
        let Some(&c) = s.get(si) else {
            return p[pi..].iter().all(|&b| b == b'*');
        };
        if let Some(n) = match_one(&p[pi..], c) {
            pi += n;
            si += 1;
            continue;
        }
        // Let the last `*` take one more byte and try again from there.
        match star {
            Some((after, taken)) => {
                pi = after;
                si = taken + 1;
                star = Some((after, taken + 1));
            }
            None => return false,
        }
    }
}

/// Whether the pattern's first element (not `*`) matches byte `c`; its length in the pattern.
fn match_one(p: &[u8], c: u8) -> Option<usize> {
    match p.first()? {
        b'?' => Some(1),
        b'[' => {
            let mut i = 1;
            let negate = p.get(1) == Some(&b'^');
            if negate {
                i += 1;
            }
            let mut matched = false;
            let mut first = true;
            while i < p.len() && (first || p[i] != b']') {
                first = false;
                let lo = p[i];
                if i + 2 < p.len() && p[i + 1] == b'-' && p[i + 2] != b']' {
                    matched |= lo <= c && c <= p[i + 2];
                    i += 3;
                } else {
                    matched |= lo == c;
                    i += 1;
                }
            }
            // An unterminated class matches nothing.
            (i < p.len() && matched != negate).then_some(i + 1)
        }
        b'\\' if p.len() > 1 => (p[1] == c).then_some(2),
        &l => (l == c).then_some(1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match(b"*.json", b"a.json"));
        assert!(!glob_match(b"*.json", b"a.yml"));
        assert!(glob_match(b"t?.yml", b"t1.yml"));
        assert!(glob_match(b"[a-c]x", b"bx"));
        assert!(!glob_match(b"[^a-c]x", b"bx"));
        assert!(glob_match(b"**", b""));
        assert!(glob_match(b"a\\*b", b"a*b"));
        assert!(!glob_match(b"a\\*b", b"axb"));
        assert!(!glob_match(b"[ab", b"a"));
        // 15 stars over 40 bytes: the recursive match tried billions of splits (it did not end).
        let p = [b"*a".repeat(15), b"*b".to_vec()].concat();
        assert!(!glob_match(&p, &[b'a'; 40]));
        assert!(glob_match(&p, &[[b'a'; 40].as_slice(), b"b"].concat()));
    }

    /// The recursive definition the matcher replaced, as the reference.
    fn glob_reference(p: &[u8], s: &[u8]) -> bool {
        match p.first() {
            None => s.is_empty(),
            Some(b'*') => (0..=s.len()).any(|i| glob_reference(&p[1..], &s[i..])),
            Some(_) => s
                .first()
                .and_then(|&c| match_one(p, c))
                .is_some_and(|n| glob_reference(&p[n..], &s[1..])),
        }
    }

    proptest::proptest! {
        #[test]
        fn the_linear_match_agrees_with_the_recursive_one(
            p in "[ab*?\\[\\]^\\\\-]{0,8}",
            s in "[ab*?-]{0,8}",
        ) {
            proptest::prop_assert_eq!(
                glob_match(p.as_bytes(), s.as_bytes()),
                glob_reference(p.as_bytes(), s.as_bytes())
            );
        }
    }

    #[test]
    fn reads_json_and_yaml_with_filepath_label() {
        let dir = tempfile::tempdir().unwrap();
        let j = dir.path().join("t.json");
        std::fs::write(&j, r#"[{"targets":["a:1","b:2"],"labels":{"env":"prod"}}]"#).unwrap();
        let g = read_file(&j).unwrap();
        assert_eq!(g.len(), 1);
        assert_eq!(g[0].targets.len(), 2);
        assert_eq!(g[0].labels["env"], "prod");
        assert_eq!(g[0].labels["__meta_filepath"], j.display().to_string());
        assert_eq!(g[0].source, format!("{}:0", j.display()));
        let y = dir.path().join("t.yml");
        std::fs::write(&y, "- targets: ['c:3']\n").unwrap();
        assert_eq!(read_file(&y).unwrap()[0].targets[0]["__address__"], "c:3");
        std::fs::write(&y, "- targets: ['c:3']\n  labels: {'1bad': x}\n").unwrap();
        assert!(read_file(&y)
            .unwrap_err()
            .contains("not a valid label name"));
        std::fs::write(&y, "- targets: ['c:3']\n  lables: {}\n").unwrap();
        assert!(read_file(&y).unwrap_err().contains("unknown field"));
    }
}
