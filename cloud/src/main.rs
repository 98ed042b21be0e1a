//! `reflex-cloud`: the cloud side of reflex.
//!
//! - `reflex-cloud serve --config cloud.toml`: the ingest (HTTP, or HTTPS with
//!   `ingest.tls_cert_file`/`tls_key_file`), `/metrics`, `/healthz`; SIGTERM/SIGINT stop it
//!   gracefully (in-flight uploads finish within `ingest.grace_period_ms`); SIGHUP, or a
//!   change of the config or a token file, reloads the node table (`reflex_cloud::tokens`).
//! - `reflex-cloud rescore --config cloud.toml --from 2026-11-27 --to 2026-11-28`: one
//!   rescore run over a snapshot; `--last 1h` instead: the last complete aligned hour
//!   (`reflex_cloud::runs::last_range`); `--replay runs/<id>/run.json` runs a recorded
//!   snapshot again. Prints the run directory, then rebuilds `index.json`/`index.html` in
//!   `rescore.out_dir`; exits 3 when drift is detected.
//!   `--engine ballista --scheduler http://host:port` runs the plan on a Ballista cluster
//!   (cargo feature `ballista`; the default engine is DataFusion in this process).
//! - `reflex-cloud scheduler --config cloud.toml` / `reflex-cloud executor --config
//!   cloud.toml` (feature `ballista`): the processes of that cluster (`[ballista.*]`);
//!   each prints its bound address on stdout, then runs until SIGTERM/SIGINT.
//! - `reflex-cloud index --config cloud.toml`: rebuild that index only.
//! - `reflex-cloud compact --config cloud.toml [--day 2026-11-27 …]`: merge the small files
//!   of each partition of those days (default: yesterday and the day before) into one
//!   (`reflex_cloud::compact`); prints one line per merge; exits 1 if a partition failed.
//! - `reflex-cloud validate --config cloud.toml`: report every config error at once.
//! - `reflex-cloud hash-token`: reads a token on stdin, prints the `token_sha256` to put in
//!   the config.
//!
//! Exit codes: 0 ok, 1 failure, 3 drift detected, 64 bad configuration or arguments.
//!
//! Logs go to stderr, filtered by `REFLEX_LOG` (default `info`); `REFLEX_LOG_FORMAT=json`
//! for JSON lines (the rest of the format rule: `reflex_service::init_logging`).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use reflex_cloud::config::{self, Config, ConfigError};
use reflex_cloud::layout::parse_instant;
use reflex_cloud::{Ingest, RescoreJob, Storage};
use reflex_service::{init_logging, shutdown_on_signals, ConfigReport, LogOptions, EXIT_CONFIG};

const EXIT_DRIFT: u8 = 3;

#[derive(Parser)]
#[command(
    name = "reflex-cloud",
    version,
    about = "reflex cloud: ingest, rescoring, drift report"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the ingest (HTTP or HTTPS), /metrics and /healthz.
    Serve {
        #[arg(long)]
        config: PathBuf,
    },
    /// Rescore a snapshot and write the report; exit 3 on drift.
    Rescore {
        #[arg(long)]
        config: PathBuf,
        /// Start (unix seconds, YYYY-MM-DD or YYYY-MM-DDTHH:MM:SSZ), inclusive.
        #[arg(long, required_unless_present_any = ["replay", "last"], requires = "to")]
        from: Option<String>,
        /// End, exclusive.
        #[arg(long, required_unless_present_any = ["replay", "last"], requires = "from")]
        to: Option<String>,
        /// Instead of --from/--to: the last complete span (1h, 30m, 1d), aligned on
        /// multiples of the span since the epoch (01:05 with 1h: 00:00 to 01:00).
        #[arg(long, conflicts_with_all = ["from", "to", "replay"])]
        last: Option<String>,
        /// Run exactly the snapshot of a previous run.json instead.
        #[arg(long, conflicts_with_all = ["from", "to"])]
        replay: Option<PathBuf>,
        /// Where the plan runs: `embedded` (DataFusion in this process) or `ballista`.
        #[arg(long, value_enum, default_value_t = EngineArg::Embedded)]
        engine: EngineArg,
        /// The Ballista scheduler, `http://host:port` (with `--engine ballista`).
        #[arg(long, required_if_eq("engine", "ballista"))]
        scheduler: Option<String>,
    },
    /// Run a Ballista scheduler for `rescore --engine ballista` (`[ballista.scheduler]`).
    Scheduler {
        #[arg(long)]
        config: PathBuf,
    },
    /// Run a Ballista executor: polls the scheduler, scores with this machine's model.
    Executor {
        #[arg(long)]
        config: PathBuf,
    },
    /// Rebuild index.json and index.html of the rescore runs in rescore.out_dir.
    Index {
        #[arg(long)]
        config: PathBuf,
    },
    /// Merge each partition's small committed files into one, per UTC day.
    Compact {
        #[arg(long)]
        config: PathBuf,
        /// A UTC day: YYYY-MM-DD, today or yesterday; repeatable. Default: yesterday and
        /// the day before (the day before: late uploads, and files past the grace).
        #[arg(long)]
        day: Vec<String>,
        /// Compact a partition when it has at least this many files under --target-bytes.
        #[arg(long, default_value_t = 8)]
        min_files: usize,
        /// Target size of a compacted file, bytes.
        #[arg(long, default_value_t = 64 << 20)]
        target_bytes: u64,
        /// Delete replaced files once their replacement is this old (30m, 1h, 2d; 0 at
        /// once, only when no rescore is running).
        #[arg(long, default_value = "1h")]
        grace: String,
    },
    /// Check the configuration file and report every error.
    Validate {
        #[arg(long)]
        config: PathBuf,
    },
    /// Read a token on stdin; print its SHA-256 for `token_sha256`.
    HashToken,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum EngineArg {
    Embedded,
    Ballista,
}

fn load(path: &PathBuf) -> Result<Config, ExitCode> {
    config::load(path).map_err(|e| {
        let report = match e {
            ConfigError::Invalid(errors) => ConfigReport::invalid(path, errors),
            other => ConfigReport::other(path, other),
        };
        report.exit("reflex-cloud: ")
    })
}

async fn serve(cfg: Config, config_path: PathBuf) -> anyhow::Result<()> {
    let storage = Storage::open(&cfg.storage).context("opening storage")?;
    let ingest = Ingest::bind(&cfg.ingest, storage)
        .await?
        .with_reports_dir(cfg.rescore.out_dir.clone());
    let (shutdown, signals) = shutdown_on_signals();
    let watcher = tokio::spawn(reflex_cloud::tokens::watch(
        ingest.tokens(),
        config_path,
        cfg,
        shutdown.clone(),
    ));
    let result = ingest.run(shutdown.clone()).await;
    shutdown.cancel();
    let _ = watcher.await;
    signals.abort();
    Ok(result?)
}

async fn rescore(
    cfg: Config,
    range: Option<(u64, u64)>,
    replay: Option<PathBuf>,
    engine: reflex_cloud::rescore::Engine,
) -> anyhow::Result<bool> {
    let storage = Storage::open(&cfg.storage).context("opening storage")?;
    let job = match (replay, range) {
        (Some(path), _) => RescoreJob::replay(storage, &cfg.rescore, &path).await?,
        (None, Some((from, to))) => RescoreJob::plan(storage, &cfg.rescore, from, to).await?,
        (None, None) => anyhow::bail!("give --from and --to, or --replay"),
    };
    let job = job.with_engine(engine);
    tracing::info!(
        run = %job.manifest().run_id,
        files = job.manifest().snapshot.files.len(),
        "rescore planned"
    );
    let (shutdown, signals) = shutdown_on_signals();
    let outcome = job.run(shutdown).await;
    signals.abort();
    let outcome = outcome?;
    let r = &outcome.report;
    println!("{}", outcome.run_dir.display());
    eprintln!(
        "events {} agreement {:.2}% fallback {:.2}% ({:.0} events/s); {}",
        r.figures.fleet.events,
        100.0 * r.figures.fleet_rates.agreement,
        100.0 * r.figures.fleet_rates.fallback,
        r.throughput.events_per_s,
        if r.verdict.drift_detected {
            format!("DRIFT: {}", r.verdict.reasons.join("; "))
        } else {
            "no drift".into()
        }
    );
    let index = reflex_cloud::runs::rebuild_index(&cfg.rescore.out_dir)
        .context("writing the index of runs")?;
    tracing::info!(
        runs = index.runs.len(),
        index = %cfg.rescore.out_dir.join(reflex_cloud::runs::INDEX_HTML).display(),
        "index of runs rebuilt"
    );
    Ok(r.verdict.drift_detected)
}

async fn compact(
    cfg: Config,
    days: Vec<reflex_cloud::layout::Day>,
    opts: reflex_cloud::compact::CompactOptions,
) -> anyhow::Result<bool> {
    let storage = Storage::open(&cfg.storage).context("opening storage")?;
    let report = reflex_cloud::compact::compact_days(&storage, &days, &opts).await?;
    for m in &report.merged {
        println!(
            "{} {} files {} bytes -> {} bytes {} rows",
            m.file, m.inputs, m.input_bytes, m.bytes, m.rows
        );
    }
    eprintln!(
        "{} partitions of {}: {} merges, {} replaced files deleted ({} kept in grace), {} \
         orphans deleted, {} deletes failed, {} conflicting, {} failed",
        report.partitions,
        days.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(" "),
        report.merged.len(),
        report.deleted,
        report.kept_in_grace,
        report.orphans_deleted,
        report.delete_failures,
        report.conflicting,
        report.failed.len()
    );
    if let Some(f) = report.failed.first() {
        anyhow::bail!(
            "{} partitions not compacted; first: {}: {}",
            report.failed.len(),
            f.partition,
            f.reason
        );
    }
    Ok(false)
}

/// `scheduler` and `executor`: start, print the bound address, run until a signal.
#[cfg(feature = "ballista")]
async fn cluster_process(cfg: Config, executor: bool) -> anyhow::Result<bool> {
    use reflex_cloud::cluster::{Executor, Scheduler};
    let (shutdown, signals) = shutdown_on_signals();
    if executor {
        let storage = Storage::open(&cfg.storage).context("opening storage")?;
        let e = Executor::start(&cfg.ballista.executor, storage, shutdown.clone()).await?;
        println!("{}", e.local_addr());
        e.join().await;
    } else {
        let s = Scheduler::start(&cfg.ballista.scheduler, shutdown.clone()).await?;
        println!("{}", s.local_addr());
        s.join().await;
    }
    signals.abort();
    if !shutdown.is_cancelled() {
        anyhow::bail!("stopped without a signal (see the log above)");
    }
    Ok(false)
}

#[cfg(not(feature = "ballista"))]
async fn cluster_process(_cfg: Config, _executor: bool) -> anyhow::Result<bool> {
    anyhow::bail!("this build has no Ballista support (cargo feature `ballista`)")
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(EXIT_CONFIG)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    init_logging(&LogOptions::new("REFLEX_LOG", "info"));
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("reflex-cloud: tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Command::HashToken => {
            let mut token = String::new();
            if let Err(e) = std::io::stdin().read_line(&mut token) {
                eprintln!("reflex-cloud: reading stdin: {e}");
                return ExitCode::FAILURE;
            }
            println!(
                "{}",
                reflex_cloud::hash_token(token.trim_end_matches(['\n', '\r']))
            );
            return ExitCode::SUCCESS;
        }
        Command::Validate { config } => {
            return match load(&config) {
                Ok(_) => {
                    println!("{}: ok", config.display());
                    ExitCode::SUCCESS
                }
                Err(code) => code,
            };
        }
        Command::Serve { config } => {
            let cfg = match load(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            runtime.block_on(serve(cfg, config)).map(|()| false)
        }
        Command::Index { config } => {
            let cfg = match load(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            reflex_cloud::runs::rebuild_index(&cfg.rescore.out_dir)
                .map(|index| {
                    println!(
                        "{} ({} runs)",
                        cfg.rescore
                            .out_dir
                            .join(reflex_cloud::runs::INDEX_HTML)
                            .display(),
                        index.runs.len()
                    );
                    false
                })
                .map_err(anyhow::Error::from)
        }
        Command::Compact {
            config,
            day,
            min_files,
            target_bytes,
            grace,
        } => {
            let cfg = match load(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let today = reflex_cloud::layout::Day::of_unix_us(
                jiff::Timestamp::now().as_microsecond().max(0) as u64,
            );
            let mut errors = Vec::new();
            let mut days: Vec<reflex_cloud::layout::Day> = if day.is_empty() {
                (1..=2)
                    .map(|n| reflex_cloud::layout::Day::from_days(today.days() - n))
                    .collect()
            } else {
                Vec::new()
            };
            for d in &day {
                match reflex_cloud::compact::parse_day(d, today) {
                    Ok(x) => days.push(x),
                    Err(e) => errors.push(e),
                }
            }
            let grace_s = reflex_cloud::compact::parse_grace(&grace).unwrap_or_else(|e| {
                errors.push(e);
                0
            });
            let opts = reflex_cloud::compact::CompactOptions {
                min_files,
                target_bytes,
                grace_s,
            };
            errors.extend(opts.errors());
            if !errors.is_empty() {
                for e in errors {
                    eprintln!("reflex-cloud: {e}");
                }
                return ExitCode::from(EXIT_CONFIG);
            }
            days.sort();
            days.dedup();
            runtime.block_on(compact(cfg, days, opts))
        }
        Command::Scheduler { config } => match load(&config) {
            Ok(cfg) => runtime.block_on(cluster_process(cfg, false)),
            Err(code) => return code,
        },
        Command::Executor { config } => match load(&config) {
            Ok(cfg) => runtime.block_on(cluster_process(cfg, true)),
            Err(code) => return code,
        },
        Command::Rescore {
            config,
            from,
            to,
            last,
            replay,
            engine,
            scheduler,
        } => {
            let cfg = match load(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let range = match (from, to, last) {
                (Some(f), Some(t), _) => match (parse_instant(&f), parse_instant(&t)) {
                    (Ok(a), Ok(b)) => Some((a, b)),
                    (Err(e), _) | (_, Err(e)) => {
                        eprintln!("reflex-cloud: {e}");
                        return ExitCode::from(EXIT_CONFIG);
                    }
                },
                (_, _, Some(span)) => match reflex_cloud::runs::parse_span(&span) {
                    Ok(span_s) => {
                        let now = jiff::Timestamp::now().as_second().max(0) as u64;
                        let (from_s, to_s) = reflex_cloud::runs::last_range(now, span_s);
                        Some((from_s * 1_000_000, to_s * 1_000_000))
                    }
                    Err(e) => {
                        eprintln!("reflex-cloud: {e}");
                        return ExitCode::from(EXIT_CONFIG);
                    }
                },
                _ => None,
            };
            let engine = match (engine, scheduler) {
                (EngineArg::Ballista, Some(scheduler)) => {
                    reflex_cloud::rescore::Engine::Ballista { scheduler }
                }
                _ => reflex_cloud::rescore::Engine::Embedded,
            };
            runtime.block_on(rescore(cfg, range, replay, engine))
        }
    };
    match result {
        Ok(true) => ExitCode::from(EXIT_DRIFT),
        Ok(false) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("reflex-cloud: {e:#}");
            ExitCode::FAILURE
        }
    }
}
