//! Reading a directory of instance config files, and validating all of them before anything
//! is written.
//!
//! Rules (the old `ConfigsFromDirectory`, minus its hazards):
//! * files whose name ends in `.yml` or `.yaml` (case-sensitive), in lexical order;
//! * the top level only, unless `recursive`: then subdirectories are read too and the name is
//!   the path relative to the directory without the extension (`team/a.yml` → `team/a`);
//! * names starting with `.` (files and directories) are skipped; a symlink to a file is read;
//!   a symlinked subdirectory is not followed (loops), but a symlinked directory *argument* is;
//! * the name is the file name minus its last extension (`a.b.yml` → `a.b`); a `name:` inside
//!   the file is replaced by it; two files giving the same name are an error.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use agent::config::load::{self, ConfigError};
use agent::config::{GlobalConfig, InstanceConfigRaw};
use agent::kv::configstore::content_hash;
use walkdir::WalkDir;

use super::SyncError;

/// One validated config file.
#[derive(Debug, Clone)]
pub struct LocalConfig {
    pub name: String,
    pub path: PathBuf,
    /// The file as written: the body sent to the API (which re-marshals it itself).
    pub text: String,
    /// The parsed config with `name` set.
    pub raw: InstanceConfigRaw,
    /// What the store will hold: the config re-marshalled with its name and secrets in clear,
    /// exactly as the API's PUT produces it.
    pub stored: String,
    /// [`content_hash`] of `stored`: equal to the API's hash when the store holds the same.
    pub hash: String,
}

impl LocalConfig {
    /// Parses and validates `text` as config `name` (the same rules as the API's PUT, with
    /// the default `global` block).
    pub fn parse(name: &str, path: &Path, text: String) -> Result<Self, ConfigError> {
        let global = GlobalConfig::default();
        let (raw, _validated) =
            load::parse_instance_named(&text, Some(name), &global).map_err(|e| e.in_file(path))?;
        let stored = raw
            .to_yaml(true)
            .map_err(|e| ConfigError::new(format!("cannot re-marshal: {e}")).in_file(path))?;
        let hash = content_hash(&stored);
        Ok(LocalConfig {
            name: name.to_owned(),
            path: path.to_path_buf(),
            text,
            raw,
            stored,
            hash,
        })
    }

    /// The config as `config diff` shows it: canonical YAML, secrets as `<secret>`.
    pub fn redacted(&self) -> String {
        self.raw
            .to_yaml(false)
            .unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }

    /// The API's file-reading rule (only enforced by the server; reported here as a warning).
    pub fn file_reading_warning(&self) -> Option<String> {
        self.raw
            .file_reading_violation(&GlobalConfig::default())
            .map(|w| {
                format!(
                    "{}: {w} (the agent refuses this unless dangerous_allow_reading_files is set)",
                    self.path.display()
                )
            })
    }
}

/// Every config file of `dir`, validated. All invalid files are reported together.
pub fn load_dir(dir: &Path, recursive: bool) -> Result<Vec<LocalConfig>, SyncError> {
    let dir_err = |reason: String| SyncError::Dir {
        path: dir.to_path_buf(),
        reason,
    };
    // `metadata` follows a symlinked argument (the old tool walked it as a file, found nothing
    // and deleted every config).
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(dir_err("is not a directory".into())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(dir_err("does not exist".into()))
        }
        Err(e) => return Err(dir_err(format!("cannot be read: {e}"))),
    }
    let files = collect(dir, recursive)?;

    let mut by_name: BTreeMap<String, PathBuf> = BTreeMap::new();
    for (name, path) in &files {
        if let Some(first) = by_name.insert(name.clone(), path.clone()) {
            return Err(SyncError::DuplicateName {
                name: name.clone(),
                first,
                second: path.clone(),
            });
        }
    }

    let mut configs = Vec::with_capacity(files.len());
    let mut errors = Vec::new();
    for (name, path) in files {
        match load::read_file(&path, false).and_then(|text| LocalConfig::parse(&name, &path, text))
        {
            Ok(c) => configs.push(c),
            Err(e) => errors.push(e),
        }
    }
    if !errors.is_empty() {
        return Err(SyncError::InvalidFiles(errors));
    }
    configs.sort_by(|a, b| a.name.cmp(&b.name));
    // The store refuses a config whose job name another config has (their scrape configs may
    // be merged into one instance): found here, before anything is written, not at the PUT
    // of the second after the first went through.
    let mut jobs: BTreeMap<&str, &Path> = BTreeMap::new();
    for c in &configs {
        for job in c.raw.job_names() {
            if let Some(first) = jobs.insert(job, &c.path) {
                return Err(SyncError::DuplicateJob {
                    job: job.to_owned(),
                    first: first.to_path_buf(),
                    second: c.path.clone(),
                });
            }
        }
    }
    Ok(configs)
}

/// The `(name, path)` of the config files under `root`, in lexical order of each directory.
fn collect(root: &Path, recursive: bool) -> Result<Vec<(String, PathBuf)>, SyncError> {
    let walk = WalkDir::new(root)
        .min_depth(1)
        .max_depth(if recursive { usize::MAX } else { 1 })
        // The directory argument is followed when it is a symlink; a symlinked directory
        // inside it is not (it could loop back), a symlink to a file is read (below).
        .follow_root_links(true)
        .follow_links(false)
        .sort_by_file_name()
        .into_iter()
        // Hidden files and directories, and everything under a hidden directory.
        .filter_entry(|e| !e.file_name().to_str().is_some_and(|n| n.starts_with('.')));
    let mut out = Vec::new();
    for entry in walk {
        let entry = entry.map_err(|e| SyncError::Dir {
            path: e.path().unwrap_or(root).to_path_buf(),
            reason: match e.io_error() {
                Some(io) => format!("cannot be read: {io}"),
                None => format!("cannot be read: {e}"),
            },
        })?;
        let path = entry.path();
        let Some(file_name) = entry.file_name().to_str() else {
            return Err(SyncError::Dir {
                path: path.to_path_buf(),
                reason: "has a name that is not UTF-8 (config names are text)".into(),
            });
        };
        let ft = entry.file_type();
        if ft.is_dir() {
            continue;
        }
        let is_file = if ft.is_symlink() {
            std::fs::metadata(path)
                .map(|m| m.is_file())
                .unwrap_or(false)
        } else {
            ft.is_file()
        };
        if !is_file {
            continue;
        }
        let stem = if let Some(s) = file_name.strip_suffix(".yml") {
            s
        } else if let Some(s) = file_name.strip_suffix(".yaml") {
            s
        } else {
            continue;
        };
        if stem.is_empty() {
            continue;
        }
        let rel_dir = path
            .parent()
            .and_then(|p| p.strip_prefix(root).ok())
            .map(|p| {
                p.components()
                    .filter_map(|c| c.as_os_str().to_str())
                    .collect::<Vec<_>>()
                    .join("/")
            })
            .unwrap_or_default();
        let name = if rel_dir.is_empty() {
            stem.to_owned()
        } else {
            format!("{rel_dir}/{stem}")
        };
        out.push((name, path.to_path_buf()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CFG: &str =
        "scrape_configs:\n  - job_name: j\n    static_configs:\n      - targets: ['127.0.0.1:1']\n";

    fn write(dir: &Path, rel: &str, text: &str) {
        let p = dir.join(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        std::fs::write(p, text).expect("write");
    }

    #[test]
    fn names_come_from_stems_and_hidden_files_are_skipped() {
        let t = tempfile::tempdir().expect("tempdir");
        write(t.path(), "a.b.yml", CFG);
        write(t.path(), "c.yaml", &CFG.replace("j\n", "k\n"));
        write(t.path(), "d.YML", CFG);
        write(t.path(), ".hidden.yml", CFG);
        write(t.path(), "notes.txt", "x");
        write(t.path(), "sub/e.yml", &CFG.replace("j\n", "e\n"));
        let names: Vec<String> = load_dir(t.path(), false)
            .expect("valid")
            .into_iter()
            .map(|c| c.name)
            .collect();
        assert_eq!(names, ["a.b", "c"]);
        let names: Vec<String> = load_dir(t.path(), true)
            .expect("valid")
            .into_iter()
            .map(|c| c.name)
            .collect();
        assert_eq!(names, ["a.b", "c", "sub/e"]);
    }

    #[test]
    fn the_stored_form_carries_the_name_and_its_hash() {
        let t = tempfile::tempdir().expect("tempdir");
        write(t.path(), "x.yml", &format!("name: other\n{CFG}"));
        let c = load_dir(t.path(), false).expect("valid").remove(0);
        assert!(c.stored.starts_with("name: x\n"), "{}", c.stored);
        assert_eq!(c.hash, content_hash(&c.stored));
    }

    #[test]
    fn duplicate_names_and_bad_directories_are_errors() {
        let t = tempfile::tempdir().expect("tempdir");
        write(t.path(), "a.yml", CFG);
        write(t.path(), "a.yaml", CFG);
        assert!(matches!(
            load_dir(t.path(), false),
            Err(SyncError::DuplicateName { name, .. }) if name == "a"
        ));
        assert!(matches!(
            load_dir(&t.path().join("missing"), false),
            Err(SyncError::Dir { reason, .. }) if reason == "does not exist"
        ));
        assert!(matches!(
            load_dir(&t.path().join("a.yml"), false),
            Err(SyncError::Dir { reason, .. }) if reason == "is not a directory"
        ));
    }

    #[test]
    fn every_invalid_file_is_reported_with_its_line() {
        let t = tempfile::tempdir().expect("tempdir");
        write(t.path(), "good.yml", CFG);
        write(
            t.path(),
            "bad1.yml",
            "scrape_configs:\n  - job_name: j\n    scrape_intervl: 1m\n",
        );
        write(t.path(), "bad2.yml", "remote_write: [");
        let Err(SyncError::InvalidFiles(errs)) = load_dir(t.path(), false) else {
            panic!("expected invalid files");
        };
        assert_eq!(errs.len(), 2);
        let text = errs[0].to_string();
        assert!(text.contains("bad1.yml:3:"), "{text}");
        assert!(text.contains("scrape_intervl"), "{text}");
        assert!(errs[1].to_string().contains("bad2.yml:"), "{}", errs[1]);
    }

    #[test]
    fn file_references_are_warned_about_not_refused() {
        let t = tempfile::tempdir().expect("tempdir");
        write(
            t.path(),
            "f.yml",
            "scrape_configs:\n  - job_name: j\n    bearer_token_file: /etc/token\n    static_configs:\n      - targets: ['127.0.0.1:1']\n",
        );
        let c = load_dir(t.path(), false).expect("valid locally").remove(0);
        let w = c.file_reading_warning().expect("a warning");
        assert!(
            w.contains("f.yml") && w.contains("bearer_token_file must be empty"),
            "{w}"
        );
    }

    #[cfg(unix)]
    #[test]
    fn recursion_skips_hidden_and_symlinked_directories_and_never_loops() {
        let t = tempfile::tempdir().expect("tempdir");
        write(t.path(), "b/z.yml", &CFG.replace("j\n", "z\n"));
        write(t.path(), "b/a.yml", &CFG.replace("j\n", "a\n"));
        write(t.path(), "a.yml", CFG);
        write(t.path(), ".git/x.yml", CFG);
        write(t.path(), "b/.cache/y.yml", CFG);
        write(t.path(), "elsewhere/w.yml", &CFG.replace("j\n", "w\n"));
        // A loop back to the top, and a link to a directory outside the walk.
        std::os::unix::fs::symlink(t.path(), t.path().join("b/loop")).expect("link");
        std::os::unix::fs::symlink(t.path().join("elsewhere"), t.path().join("c")).expect("link");
        // A linked file is read (its target, in a hidden directory, is not walked itself).
        write(t.path(), ".store/l.yml", &CFG.replace("j\n", "l\n"));
        std::os::unix::fs::symlink(
            t.path().join(".store/l.yml"),
            t.path().join("b/file-link.yml"),
        )
        .expect("link");
        let names: Vec<String> = load_dir(t.path(), true)
            .expect("valid")
            .into_iter()
            .map(|c| c.name)
            .collect();
        assert_eq!(names, ["a", "b/a", "b/file-link", "b/z", "elsewhere/w"]);
    }

    #[cfg(unix)]
    #[test]
    fn a_name_that_is_not_utf8_is_an_error_naming_the_path() {
        use std::os::unix::ffi::OsStrExt;
        let t = tempfile::tempdir().expect("tempdir");
        write(t.path(), "a.yml", CFG);
        let bad = t.path().join(std::ffi::OsStr::from_bytes(b"sub\xff"));
        std::fs::create_dir(&bad).expect("mkdir");
        match load_dir(t.path(), true) {
            Err(SyncError::Dir { path, reason }) => {
                assert_eq!(path, bad);
                assert!(reason.contains("not UTF-8"), "{reason}");
            }
            other => panic!("expected a directory error, got {other:?}"),
        }
    }

    #[cfg(unix)]
    #[test]
    fn a_symlinked_directory_argument_is_followed() {
        let t = tempfile::tempdir().expect("tempdir");
        write(t.path(), "real/a.yml", CFG);
        std::os::unix::fs::symlink(t.path().join("real"), t.path().join("link")).expect("link");
        let c = load_dir(&t.path().join("link"), false).expect("valid");
        assert_eq!(c.len(), 1);
    }
}
