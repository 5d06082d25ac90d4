//! `config-sync DIR` (plan, then apply), `config diff DIR`, and `config list|get|put|delete`.
//!
//! The library exposes the steps separately so that they can be driven (and tested) one by
//! one: [`load_dir`] reads and validates every file, [`Remote::hashes`] reads the store's
//! content hashes, [`plan()`] compares, [`check_guard`] refuses dangerous deletes, and
//! [`apply()`] writes the plan with `If-Match` preconditions.
//!
//! Exit codes: 0 applied or nothing to do; 1 invalid input, refused by the delete guard, or
//! rejected by the agent; 2 usage error, or the agent / store unreachable or failing;
//! 3 conflict (a config changed since the plan; nothing of it was overwritten).

pub mod apply;
pub mod diff;
pub mod local;
pub mod plan;
pub mod remote;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use agent::config::load::ConfigError;
use serde::Serialize;

pub use apply::{apply, ItemResult, Outcome};
pub use local::{load_dir, LocalConfig};
pub use plan::{check_guard, plan, Action, MaxDelete, Plan, PlanItem};
pub use remote::{Access, Remote};

use crate::args::{
    ConfigDeleteArgs, ConfigDiffArgs, ConfigGetArgs, ConfigListArgs, ConfigPutArgs, ConfigSyncArgs,
    OutputFormat,
};
use crate::client::ClientError;
use crate::progress::{Progress, Unit};

/// Errors of the config tools; [`SyncError::exit_code`] gives the documented exit code.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("config directory {}: {reason}", path.display())]
    Dir { path: PathBuf, reason: String },
    #[error("two files give the config name {name:?}: {} and {}", first.display(), second.display())]
    DuplicateName {
        name: String,
        first: PathBuf,
        second: PathBuf,
    },
    #[error("two configs have the job_name {job:?}: {} and {} (job names must be unique across the store: the agent refuses the second); nothing was written", first.display(), second.display())]
    DuplicateJob {
        job: String,
        first: PathBuf,
        second: PathBuf,
    },
    #[error("{} invalid config file(s); nothing was written:\n{}", .0.len(), list_errors(.0))]
    InvalidFiles(Vec<ConfigError>),
    /// Refused by the delete guard.
    #[error("{0}")]
    Guard(String),
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The KV store failed or could not be reached.
    #[error("{target}: {message}")]
    Store { target: String, message: String },
    /// The store refused a write (e.g. a duplicate job name).
    #[error("{0}")]
    Rejected(String),
    #[error("configuration {name} does not exist in {target}")]
    NotFound { name: String, target: String },
    #[error("{} config(s) changed in {target} since the plan and were left alone: {}; run config-sync again to plan against the new state", names.len(), names.join(", "))]
    Conflict { names: Vec<String>, target: String },
    #[error("{failed} of {total} changes failed; see above")]
    Apply {
        failed: usize,
        total: usize,
        code: u8,
    },
}

fn list_errors(errs: &[ConfigError]) -> String {
    errs.iter()
        .map(|e| format!("  {e}"))
        .collect::<Vec<_>>()
        .join("\n")
}

impl SyncError {
    pub fn exit_code(&self) -> u8 {
        match self {
            SyncError::Dir { .. }
            | SyncError::DuplicateName { .. }
            | SyncError::DuplicateJob { .. }
            | SyncError::InvalidFiles(_)
            | SyncError::Guard(_)
            | SyncError::Rejected(_)
            | SyncError::NotFound { .. } => 1,
            SyncError::Usage(_) | SyncError::Store { .. } => 2,
            SyncError::Client(ClientError::Conflict { .. }) | SyncError::Conflict { .. } => 3,
            SyncError::Client(c) if c.is_unavailable() => 2,
            SyncError::Client(_) => 1,
            SyncError::Apply { code, .. } => *code,
        }
    }
}

/// Whether stdout and stderr are terminals (colour, progress).
#[derive(Debug, Clone, Copy, Default)]
pub struct Tty {
    pub stdout: bool,
    pub stderr: bool,
}

impl Tty {
    pub fn detect() -> Self {
        use std::io::IsTerminal;
        Tty {
            stdout: std::io::stdout().is_terminal(),
            stderr: std::io::stderr().is_terminal(),
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, SyncError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| SyncError::Usage(format!("cannot start the async runtime: {e}")))
}

fn out_err(e: std::io::Error) -> SyncError {
    SyncError::Usage(format!("writing output: {e}"))
}

fn warn_file_reading(configs: &[LocalConfig], err: &mut dyn Write) {
    for c in configs {
        if let Some(w) = c.file_reading_warning() {
            let _ = writeln!(err, "warning: {w}");
        }
    }
}

/// The `--output json` document of config-sync.
#[derive(Debug, Serialize)]
pub struct SyncReport<'a> {
    pub plan: &'a [PlanItem],
    pub results: &'a [ItemResult],
    pub summary: Summary,
}

#[derive(Debug, Serialize)]
pub struct Summary {
    pub target: String,
    pub dry_run: bool,
    pub create: usize,
    pub update: usize,
    pub delete: usize,
    pub unchanged: usize,
    pub kept: usize,
    pub applied: usize,
    pub conflicts: usize,
    pub failed: usize,
}

/// `agentctl config-sync DIR`.
pub fn run_sync(
    args: &ConfigSyncArgs,
    out: &mut dyn Write,
    err: &mut dyn Write,
    tty: Tty,
) -> Result<ExitCode, SyncError> {
    let max_delete: MaxDelete = args.max_delete.parse()?;
    let local = load_dir(&args.dir, args.recursive)?;
    warn_file_reading(&local, err);
    let rt = runtime()?;
    rt.block_on(async {
        // A new embedded store only for a sync that writes something into it.
        let access = if args.dry_run || local.is_empty() {
            Access::Read
        } else {
            Access::Write
        };
        let remote = Arc::new(Remote::connect(&args.target, access, err).await?);
        let target = remote.describe();
        let hashes = remote.hashes().await?;
        let prune = !args.no_prune;
        let plan = plan(&local, &hashes, prune);
        let json = args.output == OutputFormat::Json;
        if !json {
            out.write_all(plan.render_table().as_bytes())
                .map_err(out_err)?;
        }
        check_guard(
            &plan,
            local.len(),
            max_delete,
            args.allow_delete_all,
            prune,
            &args.dir,
            &target,
        )?;
        let results = if args.dry_run || plan.is_empty() {
            Vec::new()
        } else {
            let progress = Progress::new(tty.stderr && !json, plan.items.len() as u64, Unit::Items);
            let results = apply(Arc::clone(&remote), &plan, |r, _done, _total| {
                if !json {
                    let _ = progress.println(out, &r.line());
                }
                progress.inc(1);
            })
            .await;
            progress.finish();
            results
        };
        let ok = results.iter().filter(|r| r.outcome == Outcome::Ok).count();
        let conflicts: Vec<String> = results
            .iter()
            .filter(|r| r.outcome == Outcome::Conflict)
            .map(|r| r.name.clone())
            .collect();
        let failed = results
            .iter()
            .filter(|r| r.outcome == Outcome::Failed)
            .count();
        let rejected = results
            .iter()
            .filter(|r| r.outcome == Outcome::Rejected)
            .count();
        let c = plan.counts();
        if json {
            let report = SyncReport {
                plan: &plan.items,
                results: &results,
                summary: Summary {
                    target: target.clone(),
                    dry_run: args.dry_run,
                    create: c.create,
                    update: c.update,
                    delete: c.delete,
                    unchanged: c.unchanged,
                    kept: c.kept,
                    applied: ok,
                    conflicts: conflicts.len(),
                    failed: failed + rejected,
                },
            };
            let text = serde_json::to_string_pretty(&report)
                .map_err(|e| SyncError::Usage(format!("cannot encode the report: {e}")))?;
            writeln!(out, "{text}").map_err(out_err)?;
        } else if args.dry_run && !plan.is_empty() {
            writeln!(out, "Dry run: nothing was written.").map_err(out_err)?;
        } else if !plan.is_empty() {
            let count = |a: Action| {
                results
                    .iter()
                    .filter(|r| r.action == a && r.outcome == Outcome::Ok)
                    .count()
            };
            writeln!(
                out,
                "Applied: {} created, {} updated, {} deleted{}.",
                count(Action::Create),
                count(Action::Update),
                count(Action::Delete),
                if ok == results.len() {
                    String::new()
                } else {
                    format!(
                        "; {} conflicts, {} failed",
                        conflicts.len(),
                        failed + rejected
                    )
                }
            )
            .map_err(out_err)?;
        }
        if !conflicts.is_empty() {
            return Err(SyncError::Conflict {
                names: conflicts,
                target,
            });
        }
        if failed + rejected > 0 {
            return Err(SyncError::Apply {
                failed: failed + rejected,
                total: results.len(),
                code: if failed > 0 { 2 } else { 1 },
            });
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// `agentctl config diff DIR`: exit 0 no difference, 1 differences.
pub fn run_diff(
    args: &ConfigDiffArgs,
    out: &mut dyn Write,
    err: &mut dyn Write,
    tty: Tty,
) -> Result<ExitCode, SyncError> {
    let local = load_dir(&args.dir, args.recursive)?;
    warn_file_reading(&local, err);
    let rt = runtime()?;
    rt.block_on(async {
        let remote = Remote::connect(&args.target, Access::Read, err).await?;
        let hashes = remote.hashes().await?;
        let plan = plan(&local, &hashes, true);
        let progress = Progress::new(tty.stderr, diff::fetches(&plan), Unit::Items);
        let text = diff::render(&remote, &plan, tty.stdout, &progress).await?;
        progress.finish();
        out.write_all(text.as_bytes()).map_err(out_err)?;
        out.write_all(plan.render_summary().as_bytes())
            .map_err(out_err)?;
        Ok(if plan.is_empty() {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        })
    })
}

/// `agentctl config list`.
pub fn run_list(args: &ConfigListArgs, out: &mut dyn Write) -> Result<ExitCode, SyncError> {
    runtime()?.block_on(async {
        let remote = Remote::connect(&args.target, Access::Read, &mut std::io::sink()).await?;
        let hashes = remote.hashes().await?;
        let text = match args.output {
            OutputFormat::Table => hashes.keys().map(|n| format!("{n}\n")).collect(),
            OutputFormat::Json => {
                let configs: Vec<serde_json::Value> = hashes
                    .iter()
                    .map(|(n, h)| serde_json::json!({"name": n, "hash": h}))
                    .collect();
                format!("{}\n", serde_json::json!({ "configs": configs }))
            }
        };
        out.write_all(text.as_bytes()).map_err(out_err)?;
        Ok(ExitCode::SUCCESS)
    })
}

/// `agentctl config get NAME`: the config's YAML, secrets as `<secret>`.
pub fn run_get(args: &ConfigGetArgs, out: &mut dyn Write) -> Result<ExitCode, SyncError> {
    runtime()?.block_on(async {
        let remote = Remote::connect(&args.target, Access::Read, &mut std::io::sink()).await?;
        let Some(yaml) = remote.get_redacted(&args.name).await? else {
            return Err(SyncError::NotFound {
                name: args.name.clone(),
                target: remote.describe(),
            });
        };
        out.write_all(yaml.as_bytes()).map_err(out_err)?;
        Ok(ExitCode::SUCCESS)
    })
}

/// `agentctl config put NAME FILE`: validated locally, then stored.
pub fn run_put(
    args: &ConfigPutArgs,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<ExitCode, SyncError> {
    let cfg = agent::config::load::read_file(&args.file, false)
        .and_then(|text| LocalConfig::parse(&args.name, &args.file, text))
        .map_err(|e| SyncError::InvalidFiles(vec![e]))?;
    warn_file_reading(std::slice::from_ref(&cfg), err);
    runtime()?.block_on(async {
        let remote = Remote::connect(&args.target, Access::Write, err).await?;
        let outcome = remote.put(&cfg, None).await?;
        let verb = match outcome {
            agent::kv::configstore::PutOutcome::Created => "created",
            agent::kv::configstore::PutOutcome::Updated => "updated",
        };
        writeln!(out, "{verb} {}", cfg.name).map_err(out_err)?;
        Ok(ExitCode::SUCCESS)
    })
}

/// `agentctl config delete NAME`.
pub fn run_delete(args: &ConfigDeleteArgs, out: &mut dyn Write) -> Result<ExitCode, SyncError> {
    runtime()?.block_on(async {
        let remote = Remote::connect(&args.target, Access::Read, &mut std::io::sink()).await?;
        match remote.delete(&args.name, None).await {
            Ok(()) => {}
            Err(SyncError::Client(ClientError::NotFound { name })) => {
                return Err(SyncError::NotFound {
                    name,
                    target: remote.describe(),
                })
            }
            Err(e) => return Err(e),
        }
        writeln!(out, "deleted {}", args.name).map_err(out_err)?;
        Ok(ExitCode::SUCCESS)
    })
}
