//! `reflexd`: the reflex edge inference daemon.
//!
//! - `reflexd run --config reflex.toml`: serve until SIGTERM/SIGINT; SIGHUP reloads the
//!   configuration (what is safe at run time) and the models.
//! - `reflexd validate --config reflex.toml`: report every config error at once, each
//!   with the layer its value came from; exit 64 when there is one (for systemd's
//!   `ExecStartPre`).
//! - `reflexd config show --config reflex.toml`: the merged configuration as TOML, each
//!   value followed by the layer it came from; exit 64 when it is invalid.
//! - `reflexd selftest --config reflex.toml`: load, verify (checksum, golden vectors) and
//!   calibrate every configured model without connecting to anything; exit 1 on failure.
//! - `reflexd journal tail|export|clear-dead-letter --config reflex.toml …`: read what the
//!   board decided from a stopped daemon's journal (`reflexd::inspect`).
//! - `reflexd demo` (feature `demo`, on by default): embedded broker, simulated fleet and
//!   the daemon, with live figures.
//!
//! Every command that reads a configuration reads it in layers
//! ([`reflexd::config::layers`]): the `--config` file, then `--conf-dir` (default:
//! `conf.d` next to the file), then the `REFLEX_*__*` environment variables.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use reflex_service::{init_logging, shutdown_on_signals, ConfigReport, LogOptions};
use reflexd::config::{self, Config, ConfigError, Layered, Sources};

#[cfg(feature = "demo")]
mod demo;

#[derive(Parser)]
#[command(name = "reflexd", version, about = "reflex edge inference daemon")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

/// Where the configuration is read from.
#[derive(clap::Args)]
struct ConfigArgs {
    /// Main configuration file.
    #[arg(long, short)]
    config: PathBuf,
    /// Drop-in directory of `*.toml` layers applied after the file, in lexical order
    /// [default: `conf.d` next to the file; a missing directory is no layer].
    #[arg(long)]
    conf_dir: Option<PathBuf>,
}

impl ConfigArgs {
    fn sources(&self) -> Sources {
        Sources::new(&self.config, self.conf_dir.clone())
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the daemon. SIGHUP reloads the configuration, all or nothing: routes (added,
    /// removed; deadline_ms, model, command_topic, qos_in, qos_out,
    /// on_budget_unmeetable), scheduler.safety_margin_us, bad_input.log_every_s, the
    /// monitor's thresholds and models' manifests apply; any other change is refused whole
    /// (logged with the list) until a restart. See docs/configuration.md.
    Run(ConfigArgs),
    /// Check the merged configuration and the files it names; report every error.
    Validate(ConfigArgs),
    /// Load every configured model as `run` would (checksum, golden vectors, calibration,
    /// budgets) and report; exit 1 on any failure. For boards and emulators.
    Selftest(ConfigArgs),
    /// Inspect the merged configuration.
    #[command(subcommand)]
    Config(ConfigCmd),
    /// Read the journal of a stopped reflexd: what the board decided.
    Journal {
        /// Main configuration file (its `[journal] dir`).
        #[arg(long, short, global = true)]
        config: Option<PathBuf>,
        /// Drop-in directory, as for `run`.
        #[arg(long, global = true)]
        conf_dir: Option<PathBuf>,
        #[command(subcommand)]
        command: JournalCmd,
    },
    /// Embedded broker + simulated fleet + reflexd, with live figures.
    #[cfg(feature = "demo")]
    Demo {
        /// Seconds to run the fleet against reflexd.
        #[arg(long, default_value_t = 10.0)]
        duration_s: f64,
        /// Devices in the fleet.
        #[arg(long, default_value_t = 20)]
        devices: u32,
        /// Events per second per device.
        #[arg(long, default_value_t = 50.0)]
        rate: f64,
    },
}

#[derive(Subcommand)]
enum ConfigCmd {
    /// Print the merged configuration as TOML, each value followed by the layer it came
    /// from (file, conf.d file, environment variable or default); exit 64 when invalid.
    Show(ConfigArgs),
}

#[derive(Subcommand)]
enum JournalCmd {
    /// The last records, one JSON line each, oldest first.
    Tail {
        /// How many.
        #[arg(short = 'n', long, default_value_t = 10)]
        lines: usize,
    },
    /// Every record (or dead-letter record) arrived in a range, one JSON line each.
    Export {
        /// Output format.
        #[arg(long, value_enum, default_value_t = ExportFormat::Jsonl)]
        format: ExportFormat,
        /// Arrivals from this RFC 3339 time (inclusive).
        #[arg(long)]
        from: Option<String>,
        /// Arrivals before this RFC 3339 time.
        #[arg(long)]
        to: Option<String>,
        /// The dead-letter range (records the cloud refused) instead of the journal.
        #[arg(long)]
        dead_letter: bool,
        /// Output file.
        #[arg(long, short)]
        output: PathBuf,
    },
    /// Remove dead-letter records through a journal sequence (export them first).
    ClearDeadLetter {
        /// Last journal sequence to remove.
        #[arg(long)]
        through: u64,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ExportFormat {
    /// One JSON object per line.
    Jsonl,
    /// One Parquet file (builds with the `parquet-export` feature).
    #[cfg(feature = "parquet-export")]
    Parquet,
}

/// `reflexd journal …` (module doc of `reflexd::inspect`).
fn journal_command(cfg: &Config, command: &JournalCmd) -> ExitCode {
    use reflexd::inspect;
    let Some(jc) = &cfg.journal else {
        eprintln!("reflexd: the configuration has no [journal]");
        return ExitCode::FAILURE;
    };
    let result = inspect::open(&jc.dir).and_then(|j| match command {
        JournalCmd::Tail { lines } => {
            inspect::tail(&j, *lines, &mut std::io::stdout().lock()).map(|_| ())
        }
        JournalCmd::Export {
            format,
            from,
            to,
            dead_letter,
            output,
        } => {
            let range = inspect::Range::parse(from.as_deref(), to.as_deref())?;
            match format {
                ExportFormat::Jsonl => {
                    let n = inspect::export_jsonl(&j, *dead_letter, range, output)?;
                    eprintln!("{n} records written to {}", output.display());
                }
                #[cfg(feature = "parquet-export")]
                ExportFormat::Parquet => {
                    let (n, bad) = inspect::export_parquet(&j, *dead_letter, range, output)?;
                    eprintln!(
                        "{n} records written to {} ({bad} undecodable left out)",
                        output.display()
                    );
                }
            }
            Ok(())
        }
        JournalCmd::ClearDeadLetter { through } => {
            let n = inspect::clear_dead_letter(&j, *through)?;
            eprintln!("{n} dead-letter records removed");
            Ok(())
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("reflexd: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Loads the layers and validates the merged config, including the files it names.
fn load_config(sources: &Sources) -> Result<Layered, ConfigReport> {
    let path = &sources.file;
    let layered = config::load_layered(sources, std::env::vars()).map_err(|e| match e {
        ConfigError::Invalid(errors) => ConfigReport::invalid(path, errors),
        other => ConfigReport::other(path, other),
    })?;
    let file_errors = layered.config.check_files();
    if !file_errors.is_empty() {
        return Err(ConfigReport::invalid(path, layered.attribute(file_errors)));
    }
    Ok(layered)
}

/// Any panic ends reflexd at once (after the usual message), as `panic = "abort"` would: a
/// real-time daemon with a dead thread is worse than one systemd restarts. The one panic let
/// through is sled's while the journal opens a damaged journal, which the journal catches
/// and answers by moving that journal aside (release builds unwind for it: Cargo.toml).
fn abort_on_panic_except_sleds_caught_one() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        if !reflex_journal::store::panic_is_caught_here() {
            std::process::abort();
        }
    }));
}

/// `reflexd selftest`: one line per model, then `selftest: ok`; exit 1 on any failure.
fn selftest(cfg: &Config) -> ExitCode {
    let reports = match reflexd::runner::selftest(cfg) {
        Ok(reports) => reports,
        Err(e) => {
            eprintln!("reflexd: selftest failed: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    for r in reports {
        let golden = match &r.golden {
            Some(g) => format!(
                "golden {}/{} argmax agree, max |diff| {:.2e} <= {:.1e}",
                g.argmax_agree, g.examples, g.max_abs_diff, g.tolerance
            ),
            None => "no golden vectors in the manifest".to_owned(),
        };
        let batches: Vec<String> = r
            .batch_profiles
            .iter()
            .enumerate()
            .map(|(i, p)| format!("{}:{}", i + 1, p.p999 / 1000))
            .collect();
        println!(
            "model {} {}: checksum ok, {golden}, latency p50 {} us p99.9 {} us, p99.9 by batch size (windows:us) {}, fallback {}",
            r.model,
            r.version,
            r.profile.p50 / 1000,
            r.profile.p999 / 1000,
            batches.join(" "),
            r.fallback
        );
    }
    println!("selftest: ok");
    ExitCode::SUCCESS
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&LogOptions::new("REFLEX_LOG", "info,rumqttd=warn"));
    abort_on_panic_except_sleds_caught_one();
    // ring: quick to build, and one provider for the whole process.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let layered = match &cli.command {
        Cmd::Validate(args)
        | Cmd::Run(args)
        | Cmd::Selftest(args)
        | Cmd::Config(ConfigCmd::Show(args)) => match load_config(&args.sources()) {
            Ok(c) => Some(c),
            Err(report) => return report.exit("reflexd: invalid configuration: "),
        },
        Cmd::Journal {
            config, conf_dir, ..
        } => match config {
            None => {
                eprintln!("reflexd: journal: --config is required");
                return ExitCode::from(64);
            }
            Some(config) => match load_config(&Sources::new(config, conf_dir.clone())) {
                Ok(c) => Some(c),
                Err(report) => return report.exit("reflexd: invalid configuration: "),
            },
        },
        #[cfg(feature = "demo")]
        Cmd::Demo { .. } => None,
    };
    match (&cli.command, &layered) {
        (Cmd::Validate(args), Some(l)) => {
            println!("{}: ok", args.config.display());
            println!("layers: {}", l.layers().join(", "));
            return ExitCode::SUCCESS;
        }
        (Cmd::Config(ConfigCmd::Show(_)), Some(l)) => {
            println!(
                "# reflexd configuration merged from: {}",
                l.layers().join(", ")
            );
            print!("{}", config::show::render(&l.config, &|k| l.origin_at(k)));
            return ExitCode::SUCCESS;
        }
        (Cmd::Selftest(_), Some(l)) => return selftest(&l.config),
        (Cmd::Journal { command, .. }, Some(l)) => return journal_command(&l.config, command),
        _ => {}
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("reflexd: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        match cli.command {
            Cmd::Run(args) => {
                let cfg = layered.expect("loaded above").config;
                let (stop, signals) = shutdown_on_signals();
                let sources = Some(args.sources());
                let result = reflexd::runner::run_with(cfg, stop, None, sources).await;
                signals.abort();
                result
            }
            #[cfg(feature = "demo")]
            Cmd::Demo {
                duration_s,
                devices,
                rate,
            } => demo::run(duration_s, devices, rate).await,
            Cmd::Validate(_) | Cmd::Selftest(_) | Cmd::Config(_) | Cmd::Journal { .. } => Ok(()),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("reflexd: {e:#}");
            ExitCode::FAILURE
        }
    }
}
