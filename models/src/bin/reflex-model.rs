//! `reflex-model`: model tooling without Python.
//!
//! `reflex-model import` writes a format-2 manifest for an ONNX model from the model and
//! a file of sample inputs: `.npy`, `.csv` or a journal export `.jsonl` (see
//! `models/README.md`, "Import a model"). Exit codes: 0 imported and checked; 64
//! contradictory options, options the model contradicts, or a samples file of an unknown
//! format (2 for options clap refuses); 65 a model or samples that cannot be imported; 70
//! a manifest that does not check out; 74 a file that cannot be read or written.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use reflex_models::import::{self, ImportSpec, InputQuantization, OutputChoice};
use reflex_models::manifest::ClassValues;
use reflex_models::stats::Stat;
use reflex_models::Action;

#[derive(Parser)]
#[command(name = "reflex-model", version, about = "reflex model tooling")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write a format-2 manifest, golden vectors and reference profile for an ONNX model.
    Import(ImportArgs),
}

#[derive(Args)]
struct ImportArgs {
    /// The ONNX model.
    #[arg(long)]
    onnx: PathBuf,
    /// Sample inputs in physical units, one row per input: `.npy` float32/float64
    /// `[rows, …]`, `.csv` (one row per line, optional header) or a journal export
    /// `.jsonl` (`reflexd journal export --format jsonl`; each record's `model_input`).
    #[arg(long)]
    samples: PathBuf,
    /// The manifest to write (golden files and the model go beside it).
    #[arg(long)]
    out: PathBuf,
    /// Model name.
    #[arg(long)]
    name: String,
    /// Model version.
    #[arg(long)]
    version: String,
    /// Classification output: class names in output order.
    #[arg(
        long,
        value_delimiter = ',',
        conflicts_with = "score_classes",
        requires = "actions"
    )]
    classes: Vec<String>,
    /// Classification output: one action per class (run, slow_down, inspect, stop).
    #[arg(long, value_delimiter = ',', value_parser = parse_action)]
    actions: Vec<Action>,
    /// Classification output: the values are `logits` or `probabilities`.
    #[arg(long, default_value = "logits", value_parser = parse_values)]
    values: ClassValues,
    /// Score output: increasing class bounds (scores below the first are the first class).
    #[arg(long, value_delimiter = ',', requires_all = ["score_classes", "score_actions"])]
    score_thresholds: Vec<f64>,
    /// Score output: class names, one more than thresholds.
    #[arg(long, value_delimiter = ',', requires = "score_thresholds")]
    score_classes: Vec<String>,
    /// Score output: one action per score class.
    #[arg(long, value_delimiter = ',', value_parser = parse_action, requires = "score_thresholds")]
    score_actions: Vec<Action>,
    /// Monitoring channels: each row is split channel-major into this many equal parts
    /// (default: one channel `input`, the whole row).
    #[arg(long, value_delimiter = ',')]
    channels: Option<Vec<String>>,
    /// Statistics of each channel.
    #[arg(long, value_delimiter = ',', value_parser = parse_stat, default_value = "mean,std,rms,peak")]
    stats: Vec<Stat>,
    /// Golden rows to write (the first ones of the samples).
    #[arg(long, default_value_t = import::DEFAULT_GOLDEN)]
    golden: usize,
    /// Integer input (int8, uint8, int16): the quantization step size, written as the
    /// last `quantize` step with `--input-zero-point`.
    #[arg(long, requires = "input_zero_point", allow_negative_numbers = true)]
    input_scale: Option<f64>,
    /// Integer input: the integer that stands for 0.
    #[arg(long, requires = "input_scale", allow_negative_numbers = true)]
    input_zero_point: Option<i32>,
    /// Write a `per_channel_standardize` step with the samples' mean and std per channel
    /// of a rank-3 input `[N, C, S]` (`--channels` names the C channels).
    #[arg(long)]
    standardize_channels: bool,
}

/// A value by its manifest spelling, through the type's own serde names.
fn by_name<T: serde::de::DeserializeOwned>(s: &str) -> Result<T, String> {
    serde_json::from_value(serde_json::Value::String(s.to_owned())).map_err(|e| e.to_string())
}

fn parse_action(s: &str) -> Result<Action, String> {
    by_name(s)
}

fn parse_stat(s: &str) -> Result<Stat, String> {
    by_name(s)
}

fn parse_values(s: &str) -> Result<ClassValues, String> {
    by_name(s)
}

fn main() -> ExitCode {
    let Command::Import(args) = Cli::parse().command;
    let output = if args.score_thresholds.is_empty() {
        if args.classes.is_empty() {
            eprintln!("reflex-model: error: give --classes or --score-thresholds");
            return ExitCode::from(64);
        }
        OutputChoice::Classification {
            classes: args.classes,
            actions: args.actions,
            values: args.values,
        }
    } else {
        OutputChoice::Score {
            thresholds: args.score_thresholds,
            classes: args.score_classes,
            actions: args.score_actions,
        }
    };
    let spec = ImportSpec {
        onnx: args.onnx,
        samples: args.samples,
        out: args.out,
        name: args.name,
        version: args.version,
        output,
        channels: args.channels,
        stats: args.stats,
        golden: args.golden,
        quantization: args
            .input_scale
            .zip(args.input_zero_point)
            .map(|(scale, zero_point)| InputQuantization { scale, zero_point }),
        standardize_channels: args.standardize_channels,
    };
    match import::import(&spec) {
        Ok(report) => {
            let l = &report.latency;
            let steps: Vec<&str> = report.preprocessing.iter().map(|s| s.op()).collect();
            let skipped = if report.skipped.total() == 0 {
                String::new()
            } else {
                format!(" (records left out: {})", report.skipped)
            };
            println!(
                "wrote {}: {} sample rows{skipped}, preprocessing {steps:?}, features {}, \
                 predicted class fractions {:?}, golden {} rows max |diff| {:.2e}, tract \
                 latency median {:.1} µs p99 {:.1} µs ({} runs)",
                report.manifest.display(),
                report.rows,
                report.features.join(" "),
                report.predicted_class_fraction,
                report.golden.examples,
                report.golden.max_abs_diff,
                l.median_us,
                l.p99_us,
                l.runs
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("reflex-model: error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
