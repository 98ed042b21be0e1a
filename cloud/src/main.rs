//! `reflex-cloud`: the cloud side of reflex.
//!
//! - `reflex-cloud serve --config cloud.toml`: the HTTP ingest; SIGTERM/SIGINT stop it
//!   gracefully (in-flight uploads finish within `ingest.grace_period_ms`).
//! - `reflex-cloud rescore --config cloud.toml --from 2026-11-27 --to 2026-11-28`: one
//!   rescore run over a snapshot; `--replay runs/<id>/run.json` runs a recorded snapshot
//!   again. Prints the run directory; exits 3 when drift is detected.
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
    about = "reflex cloud: ingest, rescoring, drift report"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the HTTP ingest.
    Serve {
        #[arg(long)]
        config: PathBuf,
    },
    /// Rescore a snapshot and write the report; exit 3 on drift.
    Rescore {
        #[arg(long)]
        config: PathBuf,
        /// Start (unix seconds, YYYY-MM-DD or YYYY-MM-DDTHH:MM:SSZ), inclusive.
        #[arg(long, required_unless_present = "replay")]
        from: Option<String>,
        /// End, exclusive.
        #[arg(long, required_unless_present = "replay")]
        to: Option<String>,
        /// Run exactly the snapshot of a previous run.json instead.
        #[arg(long, conflicts_with_all = ["from", "to"])]
        replay: Option<PathBuf>,
    },
    /// Check the configuration file and report every error.
    Validate {
        #[arg(long)]
        config: PathBuf,
    },
    /// Read a token on stdin; print its SHA-256 for `token_sha256`.
    HashToken,
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

async fn serve(cfg: Config) -> anyhow::Result<()> {
    let storage = Storage::open(&cfg.storage).context("opening storage")?;
    let ingest = Ingest::bind(&cfg.ingest, storage).await?;
    let (shutdown, signals) = shutdown_on_signals();
    let result = ingest.run(shutdown).await;
    signals.abort();
    Ok(result?)
}

async fn rescore(
    cfg: Config,
    range: Option<(u64, u64)>,
    replay: Option<PathBuf>,
) -> anyhow::Result<bool> {
    let storage = Storage::open(&cfg.storage).context("opening storage")?;
    let job = match (replay, range) {
        (Some(path), _) => RescoreJob::replay(storage, &cfg.rescore, &path).await?,
        (None, Some((from, to))) => RescoreJob::plan(storage, &cfg.rescore, from, to).await?,
        (None, None) => anyhow::bail!("give --from and --to, or --replay"),
    };
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
    Ok(r.verdict.drift_detected)
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
            runtime.block_on(serve(cfg)).map(|()| false)
        }
        Command::Rescore {
            config,
            from,
            to,
            replay,
        } => {
            let cfg = match load(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let range = match (from, to) {
                (Some(f), Some(t)) => match (parse_instant(&f), parse_instant(&t)) {
                    (Ok(a), Ok(b)) => Some((a, b)),
                    (Err(e), _) | (_, Err(e)) => {
                        eprintln!("reflex-cloud: {e}");
                        return ExitCode::from(EXIT_CONFIG);
                    }
                },
                _ => None,
            };
            runtime.block_on(rescore(cfg, range, replay))
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
