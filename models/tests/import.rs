//! `reflex-model import`, the built binary run on real files: the motor example (made by
//! scikit-learn, exported by skl2onnx) becomes a format-2 manifest that loads, passes its
//! golden check and classifies its samples as their labels say; the same rows given as
//! CSV or as a journal export (written with the journal's own record type, as `reflexd
//! journal export` writes it) import to the same manifest; the int8 test model imports
//! with its quantization (and standardization) and agrees with its hand-written manifest
//! and onnxruntime's outputs; bad inputs are refused with nothing written.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use std::sync::OnceLock;

use common::{models_dir, read_npy, scratch_dir, Schema};
use reflex_models::{golden, npy, Model};
use reflex_records::{DeadlineOutcome, DecisionSource, DecisionTrace, JournalRecord, ModelId};
use serde_json::{json, Value};

fn motor(file: &str) -> PathBuf {
    models_dir().join("examples/motor").join(file)
}

/// Runs `reflex-model import --onnx … --samples … --out …` with `args`.
fn run_import(onnx: &Path, samples: &Path, out: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_reflex-model"))
        .arg("import")
        .arg("--onnx")
        .arg(onnx)
        .arg("--samples")
        .arg(samples)
        .arg("--out")
        .arg(out)
        .args(args)
        .output()
        .expect("reflex-model runs")
}

/// Runs `reflex-model import` with the motor example's output options and `extra`.
fn import(onnx: &Path, samples: &Path, out: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["--name", "motor", "--version", "1.0.0"];
    args.extend([
        "--score-thresholds",
        "0.5",
        "--score-classes",
        "normal,anomaly",
    ]);
    args.extend(["--score-actions", "run,stop"]);
    args.extend(extra);
    run_import(onnx, samples, out, &args)
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// `run` exited 65 (`EX_DATAERR`) with an error saying each of `says`, leaving exactly
/// `left` in `dir`.
fn assert_refused(run: &Output, says: &[&str], dir: &Path, left: &[&str]) {
    assert_exit(run, 65, says, dir, left);
}

/// `run` exited `code` with an error saying each of `says`, leaving exactly `left` in
/// `dir`.
fn assert_exit(run: &Output, code: i32, says: &[&str], dir: &Path, left: &[&str]) {
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(code), "{stderr}");
    for s in says {
        assert!(stderr.contains(s), "no {s:?} in: {stderr}");
    }
    assert_eq!(files_in(dir), left, "files left in {}", dir.display());
}

#[test]
fn importing_the_motor_example_writes_a_manifest_that_loads_checks_and_agrees_with_its_labels() {
    let dir = scratch_dir("import-motor");
    let out = dir.join("motor.manifest.json");
    let run = import(
        &motor("motor.onnx"),
        &motor("samples.npy"),
        &out,
        &["--channels", "current,temperature"],
    );
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "import failed: {stderr}");
    assert_eq!(
        files_in(&dir),
        [
            "motor.manifest.json",
            "motor.onnx",
            "motor_golden_inputs.npy",
            "motor_golden_outputs.npy"
        ]
    );

    let written: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    if let Err(e) = Schema::load().check(&written) {
        panic!("the imported manifest breaks manifest.schema.json: {e}");
    }
    let mut model = Model::load(&out).unwrap_or_else(|e| panic!("{e}"));
    let report = golden::check(&mut model)
        .unwrap_or_else(|e| panic!("{e}"))
        .expect("the imported manifest has golden vectors");
    assert_eq!(report.examples, 24, "the default golden rows");
    assert_eq!(report.argmax_agree, 24);
    assert_eq!(
        model.feature_names(),
        [
            "mean_current",
            "mean_temperature",
            "std_current",
            "std_temperature",
            "rms_current",
            "rms_temperature",
            "peak_current",
            "peak_temperature"
        ]
    );

    let samples = read_npy(&motor("samples.npy"));
    let values = samples.f32s().unwrap();
    let labels = read_npy(&motor("labels.npy")).i64s().unwrap();
    let rows = samples.shape[0];
    assert_eq!(model.input_len(), 128);
    let classes: Vec<usize> = values
        .chunks_exact(model.input_len())
        .map(|row| model.predict_values(row).unwrap().class)
        .collect();
    let agree = classes
        .iter()
        .zip(&labels)
        .filter(|(&c, &l)| c as i64 == l)
        .count();
    assert!(
        agree * 100 >= rows * 98,
        "the imported thresholds agree with {agree} of {rows} labels"
    );
    assert_eq!(model.action(1), Some(reflex_models::Action::Stop));

    // The reference profile is over the samples: the class fractions are the model's,
    // and the mean current's extremes are those of the rows' first 64 values.
    let manifest = model.manifest();
    let reference = &manifest.reference;
    let anomalous = classes.iter().filter(|&&c| c == 1).count() as f64 / rows as f64;
    assert_eq!(
        reference.predicted_class_fraction,
        [1.0 - anomalous, anomalous]
    );
    let mean_current: Vec<f64> = values
        .chunks_exact(128)
        .map(|row| row[..64].iter().map(|&v| f64::from(v)).sum::<f64>() / 64.0)
        .collect();
    let profile = &reference.features[0];
    assert_eq!(
        (profile.name.as_str(), profile.count),
        ("mean_current", rows)
    );
    assert_eq!(profile.quantiles.len(), 101);
    let min = mean_current.iter().copied().fold(f64::INFINITY, f64::min);
    let max = mean_current
        .iter()
        .copied()
        .fold(f64::NEG_INFINITY, f64::max);
    assert!(
        (profile.quantiles[0] - min).abs() < 1e-9,
        "{} vs {min}",
        profile.quantiles[0]
    );
    assert!(
        (profile.quantiles[100] - max).abs() < 1e-9,
        "{} vs {max}",
        profile.quantiles[100]
    );
    let latency = manifest.metrics.ort_latency.as_ref().expect("a latency");
    assert!(latency.runs > 0 && latency.median_us > 0.0 && latency.p99_us >= latency.median_us);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_non_onnx_file_is_refused_with_exit_65_and_nothing_written() {
    let dir = scratch_dir("import-not-onnx");
    let out = dir.join("motor.manifest.json");
    // An .npy file is no ONNX protobuf.
    let run = import(&motor("samples.npy"), &motor("samples.npy"), &out, &[]);
    assert_refused(&run, &["tract cannot load"], &dir, &[]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn samples_of_the_wrong_row_length_are_refused_naming_both_lengths() {
    let dir = scratch_dir("import-row-length");
    let samples = dir.join("short.npy");
    npy::write_f32(&samples, &[3, 100], &[0.5; 300]).unwrap();
    let out = dir.join("motor.manifest.json");
    let run = import(&motor("motor.onnx"), &samples, &out, &[]);
    assert_refused(
        &run,
        &["holds 100 values", "holds 128"],
        &dir,
        &["short.npy"],
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_classification_model_with_a_rank_3_input_imports_with_its_classes_and_actions() {
    // edge_fp32.onnx: float32 [1, 3, 64] in, 4 logits out. Its standardisation is outside
    // the graph; imported with preprocessing [] it is another model of the same graph,
    // which is what the golden check then holds it to.
    let dir = scratch_dir("import-classification");
    let golden = common::Golden::load();
    let rows = golden.len().min(50);
    let samples = dir.join("windows.npy");
    npy::write_f32(&samples, &[rows, 3, 64], &golden.windows[..rows * 192]).unwrap();
    let out = dir.join("edge.manifest.json");
    let run = run_import(
        &models_dir().join("edge_fp32.onnx"),
        &samples,
        &out,
        &[
            "--name",
            "edge_imported",
            "--version",
            "1",
            "--golden",
            "10",
            "--classes",
            "healthy,imbalance,bearing_fault,misalignment",
            "--actions",
            "run,slow_down,stop,inspect",
            "--channels",
            "x,y,z",
            "--stats",
            "mean,kurtosis",
        ],
    );
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "import failed: {stderr}");
    let mut model = Model::load(&out).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(model.input_dims(), [3, 64]);
    assert_eq!(model.classes().len(), 4);
    assert_eq!(model.action(2), Some(reflex_models::Action::Stop));
    assert_eq!(
        model.feature_names(),
        ["mean_x", "mean_y", "mean_z", "kurt_x", "kurt_y", "kurt_z"]
    );
    let report = golden::check(&mut model).unwrap().unwrap();
    assert_eq!((report.examples, report.argmax_agree), (10, 10));
    let fractions = &model.manifest().reference.predicted_class_fraction;
    assert!(
        (fractions.iter().sum::<f64>() - 1.0).abs() < 1e-12,
        "{fractions:?}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

fn test_model(file: &str) -> PathBuf {
    models_dir().join("examples/test").join(file)
}

/// `run` succeeded and wrote `out`: a manifest the schema accepts, that loads and passes
/// its golden check. Returns it as JSON and loaded.
fn assert_imported(run: &Output, out: &Path) -> (Value, Model) {
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "import failed: {stderr}");
    let written: Value = serde_json::from_str(&std::fs::read_to_string(out).unwrap()).unwrap();
    if let Err(e) = Schema::load().check(&written) {
        panic!("the imported manifest breaks manifest.schema.json: {e}");
    }
    let mut model = Model::load(out).unwrap_or_else(|e| panic!("{e}"));
    golden::check(&mut model)
        .unwrap_or_else(|e| panic!("{e}"))
        .expect("the imported manifest has golden vectors");
    (written, model)
}

/// The manifest without what depends on the samples file and the machine: the
/// description and reference source (they name the file) and the measured latency.
fn without_provenance(manifest: &Value) -> Value {
    let mut m = manifest.clone();
    let o = m.as_object_mut().unwrap();
    o.remove("description");
    o.remove("metrics");
    o["reference"].as_object_mut().unwrap().remove("source");
    m
}

/// The motor example's samples: (rows, values).
fn motor_samples() -> (usize, Vec<f32>) {
    let samples = read_npy(&motor("samples.npy"));
    (samples.shape[0], samples.f32s().unwrap())
}

/// The motor example imported from its `.npy` samples with `--channels
/// current,temperature` (once per test run): the manifest and its golden inputs file.
fn motor_from_npy() -> &'static (Value, Vec<u8>) {
    static IMPORTED: OnceLock<(Value, Vec<u8>)> = OnceLock::new();
    IMPORTED.get_or_init(|| {
        let dir = scratch_dir("import-motor-npy");
        let out = dir.join("motor.manifest.json");
        let run = import(
            &motor("motor.onnx"),
            &motor("samples.npy"),
            &out,
            &["--channels", "current,temperature"],
        );
        let (written, _) = assert_imported(&run, &out);
        let inputs = std::fs::read(dir.join("motor_golden_inputs.npy")).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        (written, inputs)
    })
}

/// Writes `rows` of `row_len` values as CSV (Rust's shortest round-trip float text),
/// after `header` if given.
fn write_csv(path: &Path, header: Option<&str>, values: &[f32], row_len: usize) {
    let mut text = header.map(|h| format!("{h}\n")).unwrap_or_default();
    for row in values.chunks_exact(row_len) {
        let fields: Vec<String> = row.iter().map(f32::to_string).collect();
        text.push_str(&fields.join(","));
        text.push('\n');
    }
    std::fs::write(path, text).unwrap();
}

/// A decided record of `device` whose model read `model_input`.
fn journal_record(device: &str, seq: u64, model_input: &[f32]) -> JournalRecord {
    JournalRecord {
        node: "board-7".into(),
        device: device.into(),
        seq,
        arrival_unix_us: 1_796_000_000_000_000 + seq * 20_000,
        payload: vec![seq as u8; 12],
        model_input: model_input.to_vec(),
        features: vec![0.5; reflex_records::N_FEATURES],
        logits: vec![0.2, -0.4],
        class: 0,
        command: b"{\"action\":\"run\"}".to_vec(),
        model: ModelId {
            name: "motor".into(),
            version: "1.0.0".into(),
        },
        source: DecisionSource::Model,
        timings: Default::default(),
        outcome: DeadlineOutcome::OnTime,
    }
}

/// One line of `reflexd journal export --format jsonl` for journal entry `bytes`: the
/// record decoded as the exporter decodes it and written as it writes it (daemon's
/// `inspect::record_line`).
fn export_line(journal_seq: u64, bytes: &[u8]) -> String {
    match JournalRecord::decode_with_decision(bytes) {
        Ok((r, None)) => json!({ "journal_seq": journal_seq, "record": r }),
        Ok((r, Some(d))) => json!({ "journal_seq": journal_seq, "record": r, "decision": d }),
        Err(e) => json!({ "journal_seq": journal_seq, "undecodable": e.to_string() }),
    }
    .to_string()
}

/// A journal export of a board with two routes: every motor sample row as a record of
/// device `motor-1` (every third one with a decision trace), and after every hundredth
/// one a vibration window of 192 values from `vib-1`; one entry that does not decode.
fn write_journal_export(path: &Path, rows: &[f32], row_len: usize) {
    let mut lines = Vec::new();
    let mut seq = 0u64;
    for (i, row) in rows.chunks_exact(row_len).enumerate() {
        seq += 1;
        let record = journal_record("motor-1", i as u64, row);
        let trace = DecisionTrace {
            reason: "model".into(),
            rule: String::new(),
            proposed: "run".into(),
            confidence: Some(0.9),
        };
        let bytes = record.encode_with_decision((i % 3 == 0).then_some(&trace));
        lines.push(export_line(seq, &bytes));
        if i % 100 == 99 {
            seq += 1;
            let window: Vec<f32> = (0..192).map(|k| k as f32 / 2048.0).collect();
            lines.push(export_line(
                seq,
                &journal_record("vib-1", i as u64, &window).encode(),
            ));
        }
        if i == 10 {
            seq += 1;
            lines.push(export_line(seq, &[0xee, 1, 2, 3]));
        }
    }
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

#[test]
fn the_motor_rows_as_csv_with_a_header_import_to_the_manifest_their_npy_gives() {
    let (npy_manifest, npy_inputs) = motor_from_npy();
    let dir = scratch_dir("import-motor-csv");
    let (_, values) = motor_samples();
    let samples = dir.join("samples.csv");
    let header: Vec<String> = (0..128).map(|i| format!("v{i}")).collect();
    write_csv(&samples, Some(&header.join(",")), &values, 128);
    let out = dir.join("motor.manifest.json");
    let run = import(
        &motor("motor.onnx"),
        &samples,
        &out,
        &["--channels", "current,temperature"],
    );
    let (written, _) = assert_imported(&run, &out);
    assert_eq!(
        without_provenance(&written),
        without_provenance(npy_manifest)
    );
    assert_eq!(
        &std::fs::read(dir.join("motor_golden_inputs.npy")).unwrap(),
        npy_inputs,
        "the golden inputs are the same f32 values"
    );
    assert!(
        written["description"]
            .as_str()
            .unwrap()
            .contains("400 sample rows of samples.csv"),
        "{}",
        written["description"]
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_csv_with_a_blank_line_is_refused_naming_the_line_with_nothing_written() {
    let dir = scratch_dir("import-csv-blank");
    let (_, values) = motor_samples();
    let samples = dir.join("samples.csv");
    write_csv(&samples, None, &values[..3 * 128], 128);
    let mut text = std::fs::read_to_string(&samples).unwrap();
    text.insert(text.find('\n').unwrap() + 1, '\n');
    std::fs::write(&samples, text).unwrap();
    let out = dir.join("motor.manifest.json");
    let run = import(&motor("motor.onnx"), &samples, &out, &[]);
    assert_refused(&run, &["line 2 is blank"], &dir, &["samples.csv"]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_csv_row_of_the_wrong_length_is_refused_naming_its_line_and_both_counts() {
    let dir = scratch_dir("import-csv-length");
    let (_, values) = motor_samples();
    let samples = dir.join("samples.csv");
    // Header, two full rows, then a row one value short.
    let mut rows = values[..3 * 128].to_vec();
    rows.pop();
    write_csv(&samples, Some("a,b"), &rows[..2 * 128], 128);
    let short: Vec<String> = rows[2 * 128..].iter().map(f32::to_string).collect();
    let mut text = std::fs::read_to_string(&samples).unwrap();
    text.push_str(&short.join(","));
    std::fs::write(&samples, text + "\n").unwrap();
    let out = dir.join("motor.manifest.json");
    let run = import(&motor("motor.onnx"), &samples, &out, &[]);
    assert_refused(
        &run,
        &["line 4 holds 127 values, the model's input holds 128"],
        &dir,
        &["samples.csv"],
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_journal_export_imports_the_records_of_the_input_length_and_counts_the_rest() {
    let (npy_manifest, npy_inputs) = motor_from_npy();
    let dir = scratch_dir("import-journal");
    let (_, values) = motor_samples();
    let samples = dir.join("board-7.jsonl");
    write_journal_export(&samples, &values, 128);
    let out = dir.join("motor.manifest.json");
    let run = import(
        &motor("motor.onnx"),
        &samples,
        &out,
        &["--channels", "current,temperature"],
    );
    let (written, _) = assert_imported(&run, &out);
    assert_eq!(
        without_provenance(&written),
        without_provenance(npy_manifest)
    );
    assert_eq!(
        &std::fs::read(dir.join("motor_golden_inputs.npy")).unwrap(),
        npy_inputs,
        "model_input goes through JSON as the same f32 values"
    );
    let left_out = "records left out: 4 records of 192 values, 1 undecodable";
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(stdout.contains(left_out), "{stdout}");
    let source = written["reference"]["source"].as_str().unwrap();
    assert!(
        source.contains("400 sample rows of board-7.jsonl") && source.contains(left_out),
        "{source}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_journal_export_with_no_record_of_the_input_length_is_refused_naming_what_it_holds() {
    let dir = scratch_dir("import-journal-none");
    let samples = dir.join("vib.jsonl");
    let window = vec![0.01f32; 192];
    let lines: Vec<String> = (1..=3)
        .map(|seq| export_line(seq, &journal_record("vib-1", seq, &window).encode()))
        .collect();
    std::fs::write(&samples, lines.join("\n") + "\n").unwrap();
    let out = dir.join("motor.manifest.json");
    let run = import(&motor("motor.onnx"), &samples, &out, &[]);
    assert_refused(
        &run,
        &["no record's model_input holds the model input's 128 values (skipped: 3 records of 192 values)"],
        &dir,
        &["vib.jsonl"],
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_samples_file_of_an_unknown_format_is_refused_as_a_usage_error() {
    let dir = scratch_dir("import-unknown-format");
    let samples = dir.join("samples.txt");
    std::fs::write(&samples, "1,2\n").unwrap();
    let out = dir.join("motor.manifest.json");
    let run = import(&motor("motor.onnx"), &samples, &out, &[]);
    assert_exit(
        &run,
        64,
        &["unknown samples format", ".npy, .csv, .jsonl"],
        &dir,
        &["samples.txt"],
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Runs `reflex-model import` on the int8 test model with its hand-written manifest's
/// output and monitoring options and `extra`.
fn import_int8(samples: &Path, out: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "--name",
        "int8_rank3",
        "--version",
        "0.1.0",
        "--classes",
        "idle,running,fault",
        "--actions",
        "run,run,inspect",
        "--channels",
        "left,right",
        "--stats",
        "mean,rms",
    ];
    args.extend(extra);
    run_import(&test_model("int8_rank3.onnx"), samples, out, &args)
}

/// The hand-written manifest of the int8 test model.
fn int8_hand_written() -> Value {
    let text = std::fs::read_to_string(test_model("int8_rank3.manifest.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn a_model_with_an_integer_input_is_refused_without_its_quantization_naming_both_options() {
    let dir = scratch_dir("import-int8-refused");
    let out = dir.join("int8_rank3.manifest.json");
    let run = import_int8(&test_model("int8_rank3_inputs.npy"), &out, &[]);
    assert_refused(
        &run,
        &["input x is int8", "--input-scale", "--input-zero-point"],
        &dir,
        &[],
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn an_int8_model_imported_with_its_scale_and_zero_point_reproduces_onnxruntime_outputs() {
    // The hand-written manifest standardizes (mean, std per channel) and then quantizes.
    // Samples already standardized, in f32 as the contract computes it, imported with the
    // quantization alone, must give onnxruntime's golden outputs and class fractions.
    let dir = scratch_dir("import-int8");
    let hand = int8_hand_written();
    let step = &hand["preprocessing"][0];
    let (mean, std) = (&step["mean"], &step["std"]);
    let raw = read_npy(&test_model("int8_rank3_inputs.npy"));
    assert_eq!(raw.shape, [24, 2, 8]);
    let standardized: Vec<f32> = raw
        .f32s()
        .unwrap()
        .iter()
        .enumerate()
        .map(|(i, &x)| {
            let c = (i / 8) % 2;
            (x - mean[c].as_f64().unwrap() as f32) / std[c].as_f64().unwrap() as f32
        })
        .collect();
    let samples = dir.join("standardized.csv");
    write_csv(&samples, Some("x"), &standardized, 16);
    let out = dir.join("int8_rank3.manifest.json");
    let run = import_int8(
        &samples,
        &out,
        &["--input-scale", "0.05", "--input-zero-point", "0"],
    );
    let (written, model) = assert_imported(&run, &out);

    for field in [
        "format", "name", "kind", "file", "sha256", "output", "classes", "actions",
    ] {
        assert_eq!(written[field], hand[field], "{field}");
    }
    for field in ["name", "shape", "dtype"] {
        assert_eq!(
            written["input"][field], hand["input"][field],
            "input.{field}"
        );
    }
    assert_eq!(written["preprocessing"], json!([hand["preprocessing"][1]]));
    assert_eq!(
        written["monitoring"]["window_stats"],
        hand["monitoring"]["window_stats"]
    );
    assert_eq!(
        written["reference"]["predicted_class_fraction"],
        hand["reference"]["predicted_class_fraction"]
    );
    assert_eq!(model.input_dtype(), reflex_models::Dtype::Int8);

    let ours = read_npy(&dir.join("int8_rank3_golden_outputs.npy"));
    let ort = read_npy(&test_model("int8_rank3_outputs.npy"));
    assert_eq!(ours.shape, ort.shape);
    for (i, (a, b)) in ours
        .f32s()
        .unwrap()
        .iter()
        .zip(ort.f32s().unwrap())
        .enumerate()
    {
        assert!(
            (a - b).abs() <= 1e-4,
            "output {i}: tract {a}, onnxruntime {b}"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_uint8_model_with_a_zero_point_of_128_reproduces_onnxruntime_probabilities() {
    // probs_u8: uint8 [1, 4, 3] (channels on axis 2), zero point 128; its first output is
    // the logits, the hand-written manifest names the probabilities after them. Samples
    // standardized and clipped as its manifest says, imported with the quantization
    // alone: the softmax of the imported golden logits is onnxruntime's probabilities.
    let dir = scratch_dir("import-uint8");
    let text = std::fs::read_to_string(test_model("probs_u8.manifest.json")).unwrap();
    let hand: Value = serde_json::from_str(&text).unwrap();
    let (standardize, clip, quantize) = (
        &hand["preprocessing"][0],
        &hand["preprocessing"][1],
        &hand["preprocessing"][2],
    );
    assert_eq!(quantize["zero_point"], 128);
    let f = |v: &Value| v.as_f64().unwrap() as f32;
    let raw = read_npy(&test_model("probs_u8_inputs.npy"));
    assert_eq!(raw.shape, [24, 4, 3]);
    let prepared: Vec<f32> = raw
        .f32s()
        .unwrap()
        .iter()
        .enumerate()
        .map(|(i, &x)| {
            let c = i % 3;
            let z = (x - f(&standardize["mean"][c])) / f(&standardize["std"][c]);
            z.max(f(&clip["min"])).min(f(&clip["max"]))
        })
        .collect();
    let samples = dir.join("prepared.csv");
    write_csv(&samples, None, &prepared, 12);
    let out = dir.join("probs_u8.manifest.json");
    let run = run_import(
        &test_model("probs_u8.onnx"),
        &samples,
        &out,
        &[
            "--name",
            "probs_u8",
            "--version",
            "0.1.0",
            "--classes",
            "ok,worn",
            "--actions",
            "run,slow_down",
            "--input-scale",
            "0.04",
            "--input-zero-point",
            "128",
        ],
    );
    let (written, _) = assert_imported(&run, &out);
    assert_eq!(written["input"]["dtype"], "uint8");
    assert_eq!(written["output"]["name"], "logits");
    assert_eq!(written["preprocessing"], json!([quantize]));
    assert_eq!(
        written["reference"]["predicted_class_fraction"],
        hand["reference"]["predicted_class_fraction"]
    );
    let logits = read_npy(&dir.join("probs_u8_golden_outputs.npy"));
    let ort = read_npy(&test_model("probs_u8_outputs.npy"));
    assert_eq!(logits.shape, ort.shape);
    let ours: Vec<f32> = logits
        .f32s()
        .unwrap()
        .chunks_exact(2)
        .flat_map(reflex_models::model::softmax)
        .collect();
    for (i, (a, b)) in ours.iter().zip(ort.f32s().unwrap()).enumerate() {
        assert!(
            (a - b).abs() <= 1e-4,
            "probability {i}: tract {a}, onnxruntime {b}"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn standardize_channels_writes_the_samples_channel_statistics_before_the_quantize_step() {
    // The raw samples of the int8 test model (physical units), standardized by the
    // import itself: the step holds their per-channel mean and population std, and the
    // reference profile over them is the hand-written one (numpy, 6 significant digits).
    let dir = scratch_dir("import-int8-standardize");
    let samples = test_model("int8_rank3_inputs.npy");
    let out = dir.join("int8_rank3.manifest.json");
    let run = import_int8(
        &samples,
        &out,
        &[
            "--standardize-channels",
            "--input-scale",
            "0.05",
            "--input-zero-point",
            "0",
        ],
    );
    let (written, model) = assert_imported(&run, &out);
    let steps = written["preprocessing"].as_array().unwrap();
    assert_eq!(steps.len(), 2, "{steps:?}");
    assert_eq!(steps[0]["op"], "per_channel_standardize");
    assert_eq!(steps[0]["axis"], 1);
    assert_eq!(
        steps[1],
        json!({"op": "quantize", "scale": 0.05, "zero_point": 0})
    );
    let values = read_npy(&samples).f32s().unwrap();
    for c in 0..2 {
        let x: Vec<f64> = values
            .chunks_exact(16)
            .flat_map(|row| &row[c * 8..(c + 1) * 8])
            .map(|&v| f64::from(v))
            .collect();
        let n = x.len() as f64;
        let mean = x.iter().sum::<f64>() / n;
        let std = (x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n).sqrt();
        let (got_mean, got_std) = (
            steps[0]["mean"][c].as_f64().unwrap(),
            steps[0]["std"][c].as_f64().unwrap(),
        );
        assert!(
            (got_mean - mean).abs() < 1e-12,
            "mean[{c}] {got_mean} vs {mean}"
        );
        assert!((got_std - std).abs() < 1e-12, "std[{c}] {got_std} vs {std}");
    }

    let hand = int8_hand_written();
    let ours = written["reference"]["features"].as_array().unwrap();
    let theirs = hand["reference"]["features"].as_array().unwrap();
    assert_eq!(ours.len(), 4, "mean and rms of left and right");
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-5 * b.abs().max(1.0);
    for (o, t) in ours.iter().zip(theirs) {
        assert_eq!((&o["name"], &o["count"]), (&t["name"], &t["count"]));
        for key in ["mean", "std"] {
            let (a, b) = (o[key].as_f64().unwrap(), t[key].as_f64().unwrap());
            assert!(close(a, b), "{} {key}: {a} vs {b}", o["name"]);
        }
        for (q, (a, b)) in o["quantiles"]
            .as_array()
            .unwrap()
            .iter()
            .zip(t["quantiles"].as_array().unwrap())
            .enumerate()
        {
            let (a, b) = (a.as_f64().unwrap(), b.as_f64().unwrap());
            assert!(close(a, b), "{} quantile {q}: {a} vs {b}", o["name"]);
        }
    }
    assert_eq!(model.manifest().reference.features.len(), 4);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn standardize_channels_is_refused_where_the_channel_axis_is_ambiguous_or_misnamed() {
    let dir = scratch_dir("import-standardize-refused");
    let out = dir.join("motor.manifest.json");
    // The motor model's input is [1, 128]: no channel axis.
    let run = import(
        &motor("motor.onnx"),
        &motor("samples.npy"),
        &out,
        &[
            "--channels",
            "current,temperature",
            "--standardize-channels",
        ],
    );
    assert_exit(&run, 64, &["rank-3 input [N, C, S]", "rank 2"], &dir, &[]);
    // The int8 model has 2 channels on axis 1; 4 names split the rows but not the axis.
    let out = dir.join("int8_rank3.manifest.json");
    let run = run_import(
        &test_model("int8_rank3.onnx"),
        &test_model("int8_rank3_inputs.npy"),
        &out,
        &[
            "--name",
            "int8_rank3",
            "--version",
            "1",
            "--classes",
            "idle,running,fault",
            "--actions",
            "run,run,inspect",
            "--channels",
            "a,b,c,d",
            "--standardize-channels",
            "--input-scale",
            "0.05",
            "--input-zero-point",
            "0",
        ],
    );
    assert_exit(
        &run,
        64,
        &["the 2 channels on axis 1", "names 4"],
        &dir,
        &[],
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn quantization_options_are_refused_for_a_float_input_or_outside_the_dtype_range() {
    let dir = scratch_dir("import-quantization-refused");
    let out = dir.join("motor.manifest.json");
    let q = ["--input-scale", "0.05", "--input-zero-point", "0"];
    let run = import(&motor("motor.onnx"), &motor("samples.npy"), &out, &q);
    assert_exit(&run, 64, &["is float32", "--input-scale"], &dir, &[]);
    let out = dir.join("int8_rank3.manifest.json");
    let samples = test_model("int8_rank3_inputs.npy");
    let run = import_int8(
        &samples,
        &out,
        &["--input-scale", "0.05", "--input-zero-point", "200"],
    );
    assert_exit(
        &run,
        64,
        &["--input-zero-point 200", "-128..=127", "int8"],
        &dir,
        &[],
    );
    let run = import_int8(
        &samples,
        &out,
        &["--input-scale", "-0.05", "--input-zero-point", "0"],
    );
    assert_exit(&run, 64, &["--input-scale -0.05"], &dir, &[]);
    // One of the two alone is refused by the command line itself.
    let run = import_int8(&samples, &out, &["--input-scale", "0.05"]);
    assert_exit(&run, 2, &["--input-zero-point"], &dir, &[]);
    std::fs::remove_dir_all(&dir).unwrap();
}
