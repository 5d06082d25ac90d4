//! `agentctl-bench`: agentctl side by side with Prometheus (agent mode) and vmagent on the same
//! synthetic targets, delivery checked at a counting remote-write receiver. See BENCHMARKS.md;
//! `bench/run` builds and runs it.

#![forbid(unsafe_code)]

mod http;
mod procfs;
mod report;
mod run;
mod sink;
mod targets;
mod wire;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "agentctl-bench", version, about)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

// Parsed once per process: the size of the `Run` variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
enum Cmd {
    /// Serve synthetic targets on loopback until interrupted (prints their addresses).
    Targets {
        #[arg(long, default_value_t = 100)]
        count: usize,
        #[arg(long, default_value_t = 1000)]
        series: usize,
    },
    /// Run the counting remote-write receiver until interrupted.
    Sink {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: String,
    },
    /// Measure the scrapers (the default full run without --quick or --plan).
    Run {
        /// Small and short: 10 targets x 1,000 series, 1 s interval, 5 s warm-up + 15 s window.
        #[arg(long)]
        quick: bool,
        /// A size and interval to measure, repeatable: TARGETSxSERIES@INTERVALs[:WARMUP+WINDOW]
        /// (seconds), e.g. 100x1000@5s:30+120. Replaces the default plans.
        #[arg(long = "plan", value_name = "PLAN")]
        plans: Vec<String>,
        /// Replace every plan's warm-up and window (seconds), e.g. 10+30 for a shorter full run.
        #[arg(long, value_name = "WARMUP+WINDOW")]
        window: Option<String>,
        /// Leave out the plans with more active series than this (e.g. 500000 skips 1M).
        #[arg(long, value_name = "SERIES")]
        max_series: Option<u64>,
        /// Another agentctl build to measure as its own scraper (repeatable):
        /// NAME=PATH[;KEY=VALUE]..., e.g. `jemalloc=target/release/agentctl-jemalloc;_RJEM_MALLOC_CONF=dirty_decay_ms:1000`.
        /// Name it in --scrapers.
        #[arg(long = "agentctl-variant", value_name = "VARIANT")]
        variants: Vec<String>,
        /// Measure the --agentctl-variant builds only at these plans (comma-separated
        /// TARGETSxSERIES@INTERVALs, e.g. 100x1000@5s,500x1000@5s); default: every plan agentctl
        /// runs.
        #[arg(long, value_delimiter = ',', value_name = "PLANS")]
        variant_plans: Vec<String>,
        /// Which scrapers, in order (comma-separated).
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "agentctl,prometheus,vmagent"
        )]
        scrapers: Vec<String>,
        #[arg(long, default_value = "target/release/agentctl")]
        agentctl: PathBuf,
        #[arg(long, default_value = "/usr/bin/prometheus")]
        prometheus: PathBuf,
        #[arg(long, default_value = "/usr/bin/vmagent")]
        vmagent: PathBuf,
        /// Where the scrapers' temporary data directories go (must be a real disk for
        /// write_bytes to mean anything, not tmpfs).
        #[arg(long, default_value_os_t = std::env::temp_dir())]
        work_dir: PathBuf,
        /// Where the raw JSON goes.
        #[arg(long, default_value = "bench/results")]
        out_dir: PathBuf,
        /// Regenerate this BENCHMARKS.md.
        #[arg(long)]
        benchmarks_md: Option<PathBuf>,
        /// The plot path to reference from BENCHMARKS.md (made afterwards by bench/plot.py);
        /// `{stem}` is replaced by the results file's name without extension.
        #[arg(long)]
        plot: Option<String>,
        /// A markdown file of diagnosis and next steps to include in BENCHMARKS.md.
        #[arg(long)]
        analysis: Option<PathBuf>,
        /// An allocator comparison (results JSON of `bench/run --allocators`) to show in
        /// BENCHMARKS.md.
        #[arg(long, value_name = "JSON")]
        allocators_json: Option<PathBuf>,
        /// Name the run (the results file's suffix) instead of full/quick/custom.
        #[arg(long, value_name = "NAME")]
        mode: Option<String>,
        /// perf-record agentctl after each window and put the top symbols in the results.
        #[arg(long)]
        profile: bool,
        #[arg(long, default_value_t = 20)]
        profile_seconds: u64,
    },
    /// Render BENCHMARKS.md from a results JSON file (to stdout, or --out).
    Report {
        json: PathBuf,
        #[arg(long)]
        out: Option<PathBuf>,
        /// A markdown file of diagnosis and next steps to include.
        #[arg(long)]
        analysis: Option<PathBuf>,
        /// An allocator comparison (results JSON of `bench/run --allocators`) to include.
        #[arg(long, value_name = "JSON")]
        allocators_json: Option<PathBuf>,
    },
}

fn runtime(name: &str, workers: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .thread_name(name)
        .enable_all()
        .build()
        .with_context(|| format!("starting the {name} runtime"))
}

fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Sets [`run::INTERRUPTED`] on SIGINT or SIGTERM; the orchestrator then stops its children
/// and removes its temp dirs on the way out.
fn watch_signals(rt: &tokio::runtime::Runtime) {
    rt.spawn(async {
        let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate());
        match term {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
        eprintln!("interrupted: stopping the scraper and cleaning up");
        run::INTERRUPTED.store(true, Ordering::SeqCst);
    });
}

fn start_sink(
    rt: &tokio::runtime::Runtime,
    listen: &str,
) -> anyhow::Result<(Arc<sink::Sink>, String)> {
    let sink = Arc::new(sink::Sink::new());
    let listener = rt
        .block_on(tokio::net::TcpListener::bind(listen))
        .with_context(|| format!("binding the sink on {listen}"))?;
    let addr = listener.local_addr()?.to_string();
    let app = sink::router(sink.clone());
    rt.spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((sink, addr))
}

fn read_analysis(path: Option<&std::path::Path>) -> anyhow::Result<Option<String>> {
    path.map(|p| std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display())))
        .transpose()
}

fn read_report(path: &std::path::Path) -> anyhow::Result<report::Report> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

fn ticks_s(ticks: u64) -> f64 {
    ticks as f64 / run::clk_tck()
}

fn main() -> ExitCode {
    match real_main() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn real_main() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Targets { count, series } => {
            let rt = runtime(run::TARGETS_THREAD, cpus())?;
            watch_signals(&rt);
            let t = rt.block_on(targets::Targets::start("127.0.0.1", count, series))?;
            for x in &t.targets {
                println!("{}", x.addr);
            }
            while !run::INTERRUPTED.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_secs(10));
                eprintln!(
                    "served {} scrapes; targets CPU {:.2} s",
                    t.served().iter().sum::<u64>(),
                    ticks_s(procfs::thread_cpu_ticks(run::TARGETS_THREAD))
                );
            }
            rt.block_on(async move { drop(t) });
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Sink { listen } => {
            let rt = runtime(run::SINK_THREAD, cpus())?;
            watch_signals(&rt);
            let (sink, addr) = start_sink(&rt, &listen)?;
            println!("http://{addr}/api/v1/write");
            while !run::INTERRUPTED.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_secs(10));
                eprintln!(
                    "{}; sink CPU {:.2} s",
                    serde_json::to_string(&sink.counts())?,
                    ticks_s(procfs::thread_cpu_ticks(run::SINK_THREAD))
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Report {
            json,
            out,
            analysis,
            allocators_json,
        } => {
            let analysis = read_analysis(analysis.as_deref())?;
            let r = read_report(&json)?;
            let allocators = allocators_json.as_deref().map(read_report).transpose()?;
            let md = report::render(&r, analysis.as_deref(), allocators.as_ref());
            match out {
                Some(p) => {
                    std::fs::write(&p, md).with_context(|| format!("writing {}", p.display()))?
                }
                None => print!("{md}"),
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Run {
            quick,
            plans,
            window,
            max_series,
            variants,
            variant_plans,
            scrapers,
            agentctl,
            prometheus,
            vmagent,
            work_dir,
            out_dir,
            benchmarks_md,
            plot,
            analysis,
            allocators_json,
            mode: mode_name,
            profile,
            profile_seconds,
        } => {
            let analysis = read_analysis(analysis.as_deref())?;
            let allocators = allocators_json.as_deref().map(read_report).transpose()?;
            let (mut mode, mut plans) = if !plans.is_empty() {
                let p: Result<Vec<_>, _> = plans.iter().map(|p| run::Plan::parse(p)).collect();
                ("custom", p.map_err(anyhow::Error::msg)?)
            } else if quick {
                ("quick", run::quick_plans())
            } else {
                ("full", run::full_plans())
            };
            if let Some(w) = &window {
                let (warmup, win) = run::parse_window(w).map_err(anyhow::Error::msg)?;
                for p in &mut plans {
                    p.warmup_s = warmup;
                    p.window_s = win.max(p.interval_s);
                }
                mode = if mode == "full" { "short" } else { mode };
            }
            if let Some(max) = max_series {
                plans.retain(|p| p.series() <= max);
                if plans.is_empty() {
                    anyhow::bail!("--max-series {max} leaves no plan");
                }
                mode = if mode == "full" { "subset" } else { mode };
            }
            let mode = mode_name.as_deref().unwrap_or(mode);
            let variants = variants
                .iter()
                .map(|v| run::Scraper::parse_variant(v))
                .collect::<Result<Vec<_>, _>>()
                .map_err(anyhow::Error::msg)?;
            let scrapers = scrapers
                .iter()
                .map(|s| {
                    run::Scraper::parse(s, &variants).ok_or_else(|| {
                        anyhow::anyhow!(
                            "unknown scraper {s:?} (agentctl, prometheus, vmagent or an --agentctl-variant name)"
                        )
                    })
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            if let Some(p) = variant_plans
                .iter()
                .find(|p| !plans.iter().any(|x| x.label() == **p))
            {
                anyhow::bail!(
                    "--variant-plans {p:?} is not one of this run's plans ({})",
                    plans
                        .iter()
                        .map(run::Plan::label)
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            let targets_rt = runtime(run::TARGETS_THREAD, cpus())?;
            let sink_rt = runtime(run::SINK_THREAD, cpus())?;
            watch_signals(&sink_rt);
            let (sink, sink_addr) = start_sink(&sink_rt, "127.0.0.1:0")?;
            let date = agent::clock::rfc3339_millis(agent::clock::Clock::system().unix_millis());
            let stem = run::stem(&date, mode);
            let opts = run::Options {
                mode: mode.to_owned(),
                plans,
                scrapers,
                variant_plans,
                agentctl,
                prometheus,
                vmagent,
                work_dir,
                out_dir,
                benchmarks_md,
                plot: plot.map(|p| p.replace("{stem}", &stem)),
                analysis,
                allocators,
                profile,
                profile_s: profile_seconds,
                command_line: portable_command_line(std::env::args()),
            };
            match run::run(&opts, &targets_rt, sink, sink_addr, &date) {
                Ok((report, json)) => {
                    // The verdicts at a glance (BENCHMARKS.md has them with everything else);
                    // stdout's last line stays the results file for bench/run.
                    eprintln!("\n{}", report::summary(&report));
                    println!("{}", json.display());
                    let failed: Vec<String> = report
                        .runs
                        .iter()
                        .filter_map(|r| {
                            r.error.as_ref().map(|e| {
                                format!(
                                    "{} at {} series every {} s: {e}",
                                    r.scraper, r.series, r.interval_s
                                )
                            })
                        })
                        .collect();
                    if failed.is_empty() {
                        Ok(ExitCode::SUCCESS)
                    } else {
                        eprintln!("\nBENCHMARK FAILED ({} run(s)):", failed.len());
                        for f in failed {
                            eprintln!("  {f}");
                        }
                        Ok(ExitCode::from(1))
                    }
                }
                Err(run::RunError::Interrupted) => {
                    eprintln!("interrupted; no results written");
                    Ok(ExitCode::from(130))
                }
                Err(e) => Err(e.into()),
            }
        }
    }
}

/// The command line as a reader can run it elsewhere: the program by its name, paths under
/// the current directory relative to it, other absolute paths by their file name (no
/// developer's home or target directory in BENCHMARKS.md).
fn portable_command_line(args: impl IntoIterator<Item = String>) -> String {
    let cwd = std::env::current_dir().unwrap_or_default();
    args.into_iter()
        .enumerate()
        .map(|(i, a)| {
            let path = std::path::Path::new(&a);
            if i == 0 {
                path.file_name()
                    .map_or(a.clone(), |n| n.to_string_lossy().into_owned())
            } else if path.is_absolute() {
                match path.strip_prefix(&cwd) {
                    Ok(p) => p.display().to_string(),
                    Err(_) => path
                        .file_name()
                        .map_or(a.clone(), |n| n.to_string_lossy().into_owned()),
                }
            } else {
                a
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod command_line_tests {
    use super::portable_command_line;

    #[test]
    fn the_program_is_named_and_paths_under_the_current_directory_are_relative() {
        let cwd = std::env::current_dir().unwrap();
        let args = [
            "/home/dev/target/release/agentctl-bench".to_owned(),
            "run".to_owned(),
            "--agentctl".to_owned(),
            cwd.join("target/release/agentctl").display().to_string(),
            "--out-dir".to_owned(),
            "bench/results".to_owned(),
            "--prometheus".to_owned(),
            "/opt/prom/bin/prometheus".to_owned(),
        ];
        assert_eq!(
            portable_command_line(args),
            "agentctl-bench run --agentctl target/release/agentctl --out-dir bench/results \
             --prometheus prometheus"
        );
    }
}
