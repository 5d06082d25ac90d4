//! The command tree. One clap derive for the whole binary, so that completions, the man page and
//! the `--help` snapshots are generated from the same definition that parses arguments.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Exit codes shared by every subcommand; printed in `--help` and the README.
pub const EXIT_CODES: &str = "\
Exit codes:
  0  success (for `config diff` and `ring status`: no difference / all healthy)
  1  invalid input, failed check, differences found, or an unhealthy ring member
  2  usage error, unreachable agent or KV store
  3  conflict: a config changed behind the tool's back (config-sync)";

#[derive(Debug, Parser)]
#[command(
    name = "agentctl",
    version,
    about = "Clustered Prometheus scraping service and its client tools",
    long_about = "agentctl runs the clustered scraping service (`agentctl agent run`), the successor \
of Grafana Agent's scraping service mode, and the tools that manage it: config validation, \
config-sync from a directory of YAML files, ring status and WAL inspection.",
    after_help = EXIT_CODES,
    propagate_version = true,
    max_term_width = 100
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Only log messages with the given severity or above.
    #[arg(long = "log.level", global = true, display_order = 900, value_enum, default_value_t = LogLevel::Info)]
    pub log_level: LogLevel,

    /// Log line format.
    #[arg(long = "log.format", global = true, display_order = 901, value_enum, default_value_t = LogFormat::Logfmt)]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogLevel {
    Debug,
    Info,
    Warn,
    Error,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Logfmt,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the agent daemon.
    #[command(subcommand)]
    Agent(AgentCommand),

    /// Validate and inspect configuration files.
    #[command(subcommand)]
    Config(ConfigCommand),

    /// Make the API's configs equal a directory of YAML files (plan, then apply).
    #[command(name = "config-sync", long_about = CONFIG_SYNC_LONG, after_help = CONFIG_SYNC_EXIT_CODES)]
    ConfigSync(ConfigSyncArgs),

    /// Inspect the hash ring of a cluster.
    #[command(subcommand)]
    Ring(RingCommand),

    /// Inspect write-ahead logs.
    #[command(subcommand)]
    Wal(WalCommand),

    /// Print a shell completion script to standard output.
    Completions {
        /// The shell to generate completions for.
        #[arg(value_enum)]
        shell: Shell,
    },

    /// Print the man page (roff) to standard output.
    Man,

    /// Old name of `config check` (prints `config valid` on success).
    #[command(name = "config-check", hide = true)]
    LegacyConfigCheck {
        /// The agent config file to validate.
        file: PathBuf,
        /// Expand ${VAR} and ${VAR:-default} in the file (${1} is left as written).
        #[arg(short = 'e', long = "expand-env")]
        expand_env: bool,
    },

    /// Old name of `wal inspect`.
    #[command(name = "wal-stats", hide = true)]
    LegacyWalStats {
        /// WAL directory (the instance directory or its `wal/` subdirectory).
        dir: PathBuf,
    },

    /// Old name of `wal inspect --job J --instance I --by-metric`.
    #[command(name = "target-stats", hide = true)]
    LegacyTargetStats {
        /// WAL directory.
        dir: PathBuf,
        /// Job label to match.
        #[arg(short = 'j', long, required = true)]
        job: String,
        /// Instance label to match.
        #[arg(short = 'i', long, required = true)]
        instance: String,
    },

    /// Old name of `wal inspect --selector S --per-series`.
    #[command(name = "sample-stats", hide = true)]
    LegacySampleStats {
        /// WAL directory.
        dir: PathBuf,
        /// Series selector, e.g. `{job="node"}`.
        #[arg(short = 's', long, default_value = "{}")]
        selector: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
}

#[derive(Debug, Subcommand)]
pub enum AgentCommand {
    /// Run the clustered scraping daemon.
    ///
    /// Without --config.file the agent runs a single-node scraping service on an embedded KV
    /// store under ./data-agent/, with the Config Management API on 127.0.0.1:12345.
    /// Flags take the old agent's names; the single-dash spelling (-config.file=x) is accepted.
    ///
    /// SIGTERM or SIGINT stops it gracefully (leave the ring, flush remote_write for up to
    /// remote_flush_deadline; exit 0). A second one exits at once (exit code 143 or 130);
    /// unsent samples stay in the WAL and are sent after the next start.
    Run(AgentRunArgs),
}

#[derive(Debug, Args)]
pub struct AgentRunArgs {
    /// Agent configuration file (agent.yaml). Without it the embedded default is used.
    #[arg(long = "config.file", value_name = "PATH")]
    pub config_file: Option<PathBuf>,

    /// Address the HTTP server listens on [default: 127.0.0.1:12345]. Port 0 takes a free
    /// port; the address bound is logged (`msg="agent listening" addr=...`) and written to
    /// --server.http.address-file.
    #[arg(long = "server.http.address", value_name = "HOST:PORT")]
    pub http_address: Option<String>,

    /// Write the address the HTTP server bound (`127.0.0.1:41234`) to this file once it
    /// listens, replacing the file atomically (for port 0, and for scripts and tests).
    #[arg(long = "server.http.address-file", value_name = "PATH")]
    pub http_address_file: Option<PathBuf>,

    /// Serve HTTPS with server.http_tls_config (the old agent's flag; its spelling in the old
    /// docs, --server.http.tls-enabled, works too). agentctl serves HTTPS whenever
    /// server.http_tls_config names cert_file and key_file; with this flag, a config without
    /// them is refused instead of serving plain HTTP.
    #[arg(long = "server.http.enable-tls", alias = "server.http.tls-enabled")]
    pub http_enable_tls: bool,

    /// Expand ${VAR} and ${VAR:-default} in the config file; all-digit names such as ${1}
    /// (relabel capture references) are left as written.
    #[arg(long = "config.expand-env")]
    pub expand_env: bool,

    /// Serve GET /-/config (the loaded config file, secrets redacted).
    #[arg(long = "config.enable-read-api")]
    pub enable_read_api: bool,

    /// Do not serve GET /agent/api/v1/configs/{name} (on by default: secrets are redacted).
    #[arg(long = "api.disable-get-config")]
    pub disable_get_config: bool,

    /// File holding a bearer token that config writes (PUT, POST, DELETE) must present.
    #[arg(long = "api.token-file", value_name = "PATH")]
    pub api_token_file: Option<PathBuf>,

    /// Largest accepted config body, in bytes (larger: 413).
    #[arg(long = "api.max-body-bytes", value_name = "N", default_value_t = 4 << 20)]
    pub api_max_body_bytes: usize,

    /// Directory of the WAL (and of the embedded KV store) when the config file sets no
    /// metrics.wal_directory (the file wins, as in the old agent; also on a reload).
    #[arg(long = "metrics.wal-directory", value_name = "PATH", value_parser = clap::builder::NonEmptyStringValueParser::new())]
    pub wal_directory: Option<String>,

    /// The old agent's gRPC listen address, accepted so that its command lines (and the
    /// packaged CUSTOM_ARGS) still start: agentctl serves no gRPC (agents reshard through the
    /// KV store), so it has no effect, and a warning says so.
    #[arg(
        long = "server.grpc.address",
        value_name = "HOST:PORT",
        overrides_with = "grpc_address"
    )]
    pub grpc_address: Option<String>,

    /// The old agent's opt-out of usage reporting, accepted: agentctl sends no usage reports.
    #[arg(
        long = "disable-reporting",
        value_name = "BOOL",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        default_value = "false",
        overrides_with = "disable_reporting"
    )]
    pub disable_reporting: bool,

    /// The old agent's experimental features (comma-separated), accepted so that its command
    /// lines still start: none of them exists in agentctl, and a warning names each one given.
    #[arg(long = "enable-features", value_name = "LIST", value_delimiter = ',')]
    pub enable_features: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ConfigKind {
    /// An agent configuration (agent.yaml).
    Agent,
    /// An instance configuration (scrape_configs + remote_write), as PUT to the API.
    Instance,
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate agent or instance config files; print every error.
    ///
    /// The kind of each file is detected from its top-level keys unless --kind is given.
    #[command(
        after_help = "Exit codes:\n  0  every file is valid\n  1  at least one file is invalid\n  2  usage error"
    )]
    Check(ConfigCheckArgs),

    /// Show what `config-sync DIR` would change, with a unified diff per changed config.
    ///
    /// Both sides are rendered as canonical YAML with secrets shown as <secret>; a change to a
    /// secret alone is named but not shown. Colours only on a terminal.
    #[command(
        after_help = "Exit codes:\n  0  no difference\n  1  differences found\n  2  error (invalid file, unreachable agent or store)"
    )]
    Diff(ConfigDiffArgs),

    /// List the stored configs (names; with --output json also their content hashes).
    #[command(after_help = CRUD_EXIT_CODES)]
    List(ConfigListArgs),

    /// Print a stored config as YAML, secrets shown as <secret>.
    #[command(after_help = CRUD_EXIT_CODES)]
    Get(ConfigGetArgs),

    /// Validate FILE locally, then store it as config NAME (created or updated).
    #[command(after_help = CRUD_EXIT_CODES)]
    Put(ConfigPutArgs),

    /// Delete a stored config.
    #[command(after_help = CRUD_EXIT_CODES)]
    Delete(ConfigDeleteArgs),
}

const CRUD_EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  invalid file, no such config, or refused by the agent
  2  usage error, unreachable or failing agent or KV store";

/// `config-sync`'s long help.
const CONFIG_SYNC_LONG: &str = "\
Make the stored configs equal a directory of YAML files: plan, then apply.

Every *.yml and *.yaml file (case-sensitive) in DIR is parsed and validated first; one invalid \
file, or two configs with the same job_name (the agent refuses the second), stops the sync \
before anything is written. The config name is the file name without its \
last extension (a.b.yml is a.b). Hidden files and directories are skipped. With --recursive, \
subdirectories are read too and the name is the relative path without the extension \
(team/a.yml is team/a).

The plan compares content hashes (the store's secrets are never read back) and lists each \
change, then a summary:

  + new-config
  ~ changed-config
  - removed-config
  Plan: 1 to create, 1 to update, 1 to delete, 17 unchanged.

Unchanged configs are not written. Each write carries the hash it was planned against \
(If-Match), so a config changed by someone else meanwhile is left alone and reported (exit 3). \
Configs in the store but not in DIR are deleted unless --no-prune. The delete guard refuses a \
missing or empty directory, a plan that deletes every stored config, and a plan that deletes \
more than --max-delete, unless --allow-delete-all is given.

--output json prints {\"plan\": [{name, action, hash_before, hash_after}], \"results\": [{name, \
action, outcome, error}], \"summary\": {target, dry_run, create, update, delete, unchanged, kept, \
applied, conflicts, failed}}.";

const CONFIG_SYNC_EXIT_CODES: &str = "\
Exit codes:
  0  applied, or nothing to do
  1  invalid file or directory, refused by the delete guard, or rejected by the agent
  2  usage error, unreachable or failing agent or KV store
  3  conflict: a config changed since the plan and was not overwritten; run again";

#[derive(Debug, Args)]
pub struct ConfigCheckArgs {
    /// Files to validate.
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,

    /// Treat every file as this kind instead of detecting it.
    #[arg(long, value_enum)]
    pub kind: Option<ConfigKind>,

    /// Expand ${VAR} and ${VAR:-default} before parsing; all-digit names such as ${1}
    /// (relabel capture references) are left as written.
    #[arg(short = 'e', long = "expand-env")]
    pub expand_env: bool,
}

/// Where the client tools find the configs: an agent's API or the KV store itself.
#[derive(Debug, Args)]
pub struct TargetArgs {
    /// URL of an agent's API.
    #[arg(
        short = 'a',
        long = "addr",
        value_name = "URL",
        default_value = "http://localhost:12345"
    )]
    pub addr: String,

    /// Talk to the KV store directly instead: etcd://host:port[,host:port] (etcds:// for
    /// TLS) or embedded:PATH.
    #[arg(long = "kv", value_name = "SPEC")]
    pub kv: Option<String>,

    /// File holding a bearer token sent with every API request.
    #[arg(long = "token-file", value_name = "PATH")]
    pub token_file: Option<PathBuf>,

    #[command(flatten)]
    pub tls: TlsArgs,

    #[command(flatten)]
    pub kv_auth: KvAuthArgs,
}

/// TLS for an https:// agent (--addr) or an etcds:// store (--kv).
#[derive(Debug, Clone, Default, Args)]
pub struct TlsArgs {
    /// CA certificates (PEM) that sign the agent's or etcd's certificate, instead of the
    /// system's.
    #[arg(long = "ca-file", value_name = "PATH")]
    pub ca_file: Option<PathBuf>,

    /// Client certificate (PEM) to present, with --key-file.
    #[arg(long = "cert-file", value_name = "PATH", requires = "key_file")]
    pub cert_file: Option<PathBuf>,

    /// Private key (PEM) of --cert-file.
    #[arg(long = "key-file", value_name = "PATH", requires = "cert_file")]
    pub key_file: Option<PathBuf>,

    /// Verify the server's certificate against this name instead of the host.
    #[arg(long = "server-name", value_name = "NAME")]
    pub server_name: Option<String>,

    /// Accept any server certificate (for tests; the connection is then not authenticated).
    #[arg(long = "insecure-skip-verify")]
    pub insecure_skip_verify: bool,
}

/// Credentials for an etcd with authentication enabled (--kv).
#[derive(Debug, Clone, Default, Args)]
pub struct KvAuthArgs {
    /// etcd user.
    #[arg(long = "kv-username", value_name = "USER", requires = "kv")]
    pub kv_username: Option<String>,

    /// File holding the etcd user's password (first line; a file, so it stays out of the
    /// process list and the shell history).
    #[arg(
        long = "kv-password-file",
        value_name = "PATH",
        requires = "kv_username"
    )]
    pub kv_password_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ConfigSyncArgs {
    /// Directory of instance config files (*.yml, *.yaml); the file stem is the config name.
    pub dir: PathBuf,

    #[command(flatten)]
    pub target: TargetArgs,

    /// Plan only: validate every file and print what would change; write nothing.
    #[arg(short = 'd', long = "dry-run")]
    pub dry_run: bool,

    /// Descend into subdirectories (the old tool read the top level only); names become
    /// relative paths without the extension (team/a.yml is team/a).
    #[arg(long)]
    pub recursive: bool,

    /// Keep configs that are in the store but not in the directory.
    #[arg(long = "no-prune")]
    pub no_prune: bool,

    /// Refuse to delete more than this many configs (N) or this share of the store (N%).
    #[arg(long = "max-delete", value_name = "N|N%", default_value = "50%")]
    pub max_delete: String,

    /// Skip the delete guard: allow an empty directory, a plan that deletes every config in
    /// the store, and any number of deletes.
    #[arg(long = "allow-delete-all")]
    pub allow_delete_all: bool,

    /// Output format of the plan and results.
    #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

#[derive(Debug, Args)]
pub struct ConfigDiffArgs {
    /// Directory of instance config files.
    pub dir: PathBuf,

    #[command(flatten)]
    pub target: TargetArgs,

    /// Descend into subdirectories (names become relative paths: team/a.yml is team/a).
    #[arg(long)]
    pub recursive: bool,
}

#[derive(Debug, Args)]
pub struct ConfigListArgs {
    #[command(flatten)]
    pub target: TargetArgs,

    /// Output format.
    #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

#[derive(Debug, Args)]
pub struct ConfigGetArgs {
    /// Config name.
    pub name: String,

    #[command(flatten)]
    pub target: TargetArgs,
}

#[derive(Debug, Args)]
pub struct ConfigPutArgs {
    /// Config name (wins over a `name:` in the file).
    pub name: String,

    /// Instance config file.
    pub file: PathBuf,

    #[command(flatten)]
    pub target: TargetArgs,
}

#[derive(Debug, Args)]
pub struct ConfigDeleteArgs {
    /// Config name.
    pub name: String,

    #[command(flatten)]
    pub target: TargetArgs,
}

#[derive(Debug, Subcommand)]
pub enum RingCommand {
    /// Show the ring's members, states, heartbeats and token ownership.
    #[command(
        after_help = "Health is judged by heartbeat age. For one heartbeat timeout after a KV store outage,\nevery member's heartbeat is as old as the outage, and the agents still count such members\nhealthy (their configs do not move). With --addr the table shows that agent's judgement\n(HEALTH `healthy (grace)`, explained under the table) and the exit code follows it. With\n--kv only the heartbeats in the store are visible: members can look unhealthy then, and a\nnote under the table says so.\n\nWhile an agent cannot read the KV store, --addr shows the ring that agent last read, under a\nline saying since when the store is unreachable, why, and when that ring was read.\n\nExit codes:\n  0  every member is ACTIVE and healthy\n  1  a member is not, or the agent (--addr) cannot read the KV store (the ring shown is\n     the one it last read)\n  2  the ring cannot be read (an agent that never read it answers why)"
    )]
    Status(RingStatusArgs),

    /// Remove a member from the ring (what the Forget button of /debug/ring does).
    Forget(RingForgetArgs),

    /// Which agent scrapes a target, and why (scraping_service.sharding: targets).
    #[command(
        long_about = "Which agent scrapes a target, and why (scraping_service.sharding: targets).\n\n\
TARGET is a scrape URL (http://10.0.0.3:9100/metrics), an address (10.0.0.3:9100), an \
instance label value or a target key (16 hex digits); every published target it names is \
shown with its config, job, owner, the epoch since which it is there, any handoff in progress \
and the reason for its place. --addr asks an agent (GET /agent/api/v1/ring/owner?target=...), \
--kv reads the store's sharding/ keys.",
        after_help = "Exit codes:\n  0  the target was found\n  1  no published target matches\n  2  the agent or the KV store cannot be read"
    )]
    Owner(RingOwnerArgs),
}

#[derive(Debug, Args)]
pub struct RingSourceArgs {
    /// URL of an agent to ask (its /debug/ring; `ring owner`: its /agent/api/v1/ring/owner) [default: http://localhost:12345]
    #[arg(short = 'a', long = "addr", value_name = "URL", conflicts_with = "kv")]
    pub addr: Option<String>,

    /// Read the ring from the KV store: etcd://host:port[,host:port] (etcds:// for TLS) or
    /// embedded:PATH.
    #[arg(long = "kv", value_name = "SPEC")]
    pub kv: Option<String>,

    /// Key prefix of the ring in the KV store.
    #[arg(long = "ring.prefix", default_value = "collectors/")]
    pub ring_prefix: String,

    #[command(flatten)]
    pub tls: TlsArgs,

    #[command(flatten)]
    pub kv_auth: KvAuthArgs,

    /// Key prefix of the configs in the KV store (agent.yaml's
    /// `scraping_service.kvstore.prefix`); target sharding's keys are next to it.
    #[arg(
        long = "kvstore.prefix",
        value_name = "PREFIX",
        default_value = "configurations/"
    )]
    pub kvstore_prefix: String,

    /// Key prefix of target sharding's keys in the KV store [default: next to
    /// --kvstore.prefix, its last segment replaced by sharding/: configurations/ -> sharding/,
    /// prod/configurations/ -> prod/sharding/, as the agents write them]
    #[arg(long = "sharding.prefix", value_name = "PREFIX")]
    pub sharding_prefix: Option<String>,
}

impl RingSourceArgs {
    /// `--sharding.prefix`, or the prefix the agents derive from `--kvstore.prefix`.
    pub fn sharding_prefix(&self) -> String {
        self.sharding_prefix
            .clone()
            .unwrap_or_else(|| agent::config::agent::sharding_prefix(&self.kvstore_prefix))
    }
}

#[derive(Debug, Args)]
pub struct RingStatusArgs {
    #[command(flatten)]
    pub source: RingSourceArgs,

    /// Output format.
    #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,

    /// List each member's tokens.
    #[arg(long)]
    pub tokens: bool,

    /// Heartbeats older than this make a member unhealthy (the agents' heartbeat_timeout).
    #[arg(long = "ring.heartbeat-timeout", value_name = "DURATION", default_value = "1m", value_parser = parse_go_duration)]
    pub heartbeat_timeout: std::time::Duration,
}

fn parse_go_duration(s: &str) -> Result<std::time::Duration, String> {
    agent::config::duration::GoDuration::parse(s).map(|d| d.as_std())
}

#[derive(Debug, Args)]
pub struct RingOwnerArgs {
    /// A scrape URL, address, instance label value or target key.
    pub target: String,

    #[command(flatten)]
    pub source: RingSourceArgs,

    /// Output format.
    #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

#[derive(Debug, Args)]
pub struct RingForgetArgs {
    /// Instance id of the member to remove.
    pub id: String,

    #[command(flatten)]
    pub source: RingSourceArgs,
}

const WAL_INSPECT_LONG: &str = "\
Show what a WAL holds: series, samples, time range, per target and per metric.

The report has a summary (totals over the whole WAL, never filtered), the targets (job and \
instance labels; --job/--instance keep the matching ones), the top 20 metric names by series \
(restricted by --job, --instance and --selector), and with --selector one row per matching \
series. The directory is read only; nothing is repaired.

--output json prints one object with these fields: dir, oldest_sample_ms, newest_sample_ms \
(Unix ms or null), total_series, total_samples, hash_collisions (label sets logged under more \
than one ref, i.e. series re-created after garbage collection; the old tool's name, but label \
sets are compared, not only their hashes), invalid_refs, checkpoint_segment, first_segment, last_segment (numbers or null), targets [{job, instance, \
series, samples}], metrics [{name, series}] (all names, not only 20), series (null without \
--selector, else [{series_ref, labels, samples, oldest_sample_ms, newest_sample_ms}]), and \
damage (only when the WAL is torn or corrupt: where; the figures cover what comes before it).

The old commands wal-stats DIR, target-stats DIR -j JOB -i INSTANCE and sample-stats DIR -s \
SELECTOR still work and print the old formats.";

#[derive(Debug, Subcommand)]
pub enum WalCommand {
    /// Show what a WAL holds: series, samples, time range, per target and per metric.
    #[command(
        long_about = WAL_INSPECT_LONG,
        after_help = "Exit codes:\n  0  success\n  1  the WAL is damaged (torn or corrupt): the report covers what comes before the damage\n  2  not a WAL directory or unreadable"
    )]
    Inspect(WalInspectArgs),
}

#[derive(Debug, Args)]
pub struct WalInspectArgs {
    /// WAL directory: an instance directory, its `wal/` subdirectory, or a Prometheus
    /// agent-mode data directory.
    pub dir: PathBuf,

    /// Only count series matching this selector, e.g. `{job="node",instance=~"10.*"}`.
    #[arg(short = 's', long, value_name = "SELECTOR")]
    pub selector: Option<String>,

    /// Only count series with this job label.
    #[arg(short = 'j', long)]
    pub job: Option<String>,

    /// Only count series with this instance label.
    #[arg(short = 'i', long)]
    pub instance: Option<String>,

    /// Output format.
    #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn agent_run(args: &[&str]) -> AgentRunArgs {
        let mut argv = vec!["agentctl", "agent", "run"];
        argv.extend_from_slice(args);
        match Cli::try_parse_from(argv).unwrap().command {
            Command::Agent(AgentCommand::Run(a)) => a,
            other => panic!("{other:?}"),
        }
    }

    /// The old agent's flags as Go parses them: a boolean may be given `=true`/`=false`, and a
    /// flag given twice takes the last value.
    #[test]
    fn old_agent_flags_parse_as_go_does() {
        assert!(agent_run(&["--disable-reporting"]).disable_reporting);
        assert!(!agent_run(&["--disable-reporting=false"]).disable_reporting);
        assert!(agent_run(&["--disable-reporting=false", "--disable-reporting"]).disable_reporting);
        assert!(!agent_run(&[]).disable_reporting);
        let a = agent_run(&["--server.grpc.address=a:1", "--server.grpc.address=b:2"]);
        assert_eq!(a.grpc_address.as_deref(), Some("b:2"));
        let a = agent_run(&["--enable-features=a,b", "--enable-features=c"]);
        assert_eq!(a.enable_features, ["a", "b", "c"]);
    }

    fn ring_status(args: &[&str]) -> RingSourceArgs {
        let mut argv = vec!["agentctl", "ring", "status"];
        argv.extend_from_slice(args);
        match Cli::try_parse_from(argv).unwrap().command {
            Command::Ring(RingCommand::Status(s)) => s.source,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_sharding_prefix_defaults_to_the_one_the_agents_derive_from_the_kvstore_prefix() {
        assert_eq!(ring_status(&[]).sharding_prefix(), "sharding/");
        assert_eq!(
            ring_status(&["--kvstore.prefix", "prod/configurations/"]).sharding_prefix(),
            "prod/sharding/"
        );
        assert_eq!(
            ring_status(&[
                "--kvstore.prefix",
                "prod/configurations/",
                "--sharding.prefix",
                "x/"
            ])
            .sharding_prefix(),
            "x/"
        );
    }
}
