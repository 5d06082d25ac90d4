//! `agentctl config check FILE...` and the old `config-check FILE`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use agent::config::load::{self, ConfigError, Kind};
use agent::config::GlobalConfig;

use crate::args::ConfigKind;
use crate::progress::{Progress, Unit};
use crate::{io, Error};

/// Output conventions: ours, or the old tool's (`config valid`, `failed to validate config:`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    Modern,
    Legacy,
}

/// The result of checking one file: its kind and warnings, or the error.
#[derive(Debug)]
pub struct Checked {
    pub kind: Kind,
    pub warnings: Vec<String>,
}

/// Checks one file. Errors name the file, and the line and column when the parser knows them.
pub fn check_file(
    path: &Path,
    kind: Option<ConfigKind>,
    expand_env: bool,
) -> Result<Checked, ConfigError> {
    let text = load::read_file(path, expand_env)?;
    let kind = match kind {
        Some(ConfigKind::Agent) => Kind::Agent,
        Some(ConfigKind::Instance) => Kind::Instance,
        None => load::detect_kind(&text).map_err(|e| e.in_file(path))?,
    };
    let mut warnings = Vec::new();
    match kind {
        Kind::Agent => {
            let (_, cfg) = load::parse_agent(&text).map_err(|e| e.in_file(path))?;
            for block in &cfg.ignored_blocks {
                warnings.push(format!(
                    "the `{block}` block is ignored: agentctl runs the metrics subsystem only"
                ));
            }
            warnings.extend(cfg.ignored_fields.iter().map(|f| f.to_string()));
            for c in &cfg.configs {
                unsupported_sd_warnings(&c.scrape_configs, &mut warnings);
            }
        }
        Kind::Instance => {
            // Named by the file stem, as config-sync names it (`a.b.yml` is `a.b`).
            let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned());
            let (_, cfg) =
                load::parse_instance_named(&text, stem.as_deref(), &GlobalConfig::default())
                    .map_err(|e| e.in_file(path))?;
            unsupported_sd_warnings(&cfg.scrape_configs, &mut warnings);
        }
    }
    Ok(Checked { kind, warnings })
}

fn unsupported_sd_warnings(
    scrape: &[agent::config::scrape::ScrapeConfig],
    warnings: &mut Vec<String>,
) {
    for sc in scrape {
        let proto = agent::config::scrape::ScrapeProtocol::PrometheusProto;
        if sc
            .scrape_protocols
            .is_some_and(|p| p.iter().any(|p| p == proto))
        {
            warnings.push(format!(
                "job {:?}: scrape_protocols: {} is accepted but not asked for; agentctl parses the text formats only",
                sc.job_name,
                proto.name()
            ));
        }
        for kind in &sc.unsupported_sd_kinds {
            warnings.push(format!(
                "job {:?}: {kind} is accepted but not run by this version; its targets will not be scraped",
                sc.job_name
            ));
        }
    }
}

/// Runs the check over every file, printing every error; exit 0 when all are valid, else 1.
/// With `progress`, a bar on standard error counts the files (see [`crate::progress`]).
pub fn run(
    files: &[PathBuf],
    kind: Option<ConfigKind>,
    expand_env: bool,
    style: Style,
    progress: bool,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<ExitCode, Error> {
    let bar = Progress::new(progress, files.len() as u64, Unit::Items);
    let mut failed = 0;
    for file in files {
        match check_file(file, kind, expand_env) {
            Ok(checked) => {
                for w in &checked.warnings {
                    bar.println(err, &format!("{}: warning: {w}", file.display()))
                        .map_err(|e| io("writing output", e))?;
                }
                let line = match style {
                    Style::Legacy => "config valid".to_owned(),
                    Style::Modern => {
                        let what = match checked.kind {
                            Kind::Agent => "agent config",
                            Kind::Instance => "instance config",
                        };
                        format!("{}: valid {what}", file.display())
                    }
                };
                bar.println(out, &line)
                    .map_err(|e| io("writing output", e))?;
            }
            Err(e) => {
                failed += 1;
                let line = match style {
                    Style::Legacy => format!("failed to validate config: {e}"),
                    Style::Modern => e.to_string(),
                };
                bar.println(err, &line)
                    .map_err(|e| io("writing output", e))?;
            }
        }
        bar.inc(1);
    }
    bar.finish();
    if failed == 0 {
        Ok(ExitCode::SUCCESS)
    } else {
        if style == Style::Modern && files.len() > 1 {
            writeln!(err, "{failed} of {} files invalid", files.len())
                .map_err(|e| io("writing output", e))?;
        }
        Ok(ExitCode::from(1))
    }
}
