//! `reflex-model import`, the built binary run on real files: the motor example (made by
//! scikit-learn, exported by skl2onnx) becomes a format-2 manifest that loads, passes its
//! golden check and classifies its samples as their labels say; bad inputs are refused
//! with nothing written.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{models_dir, read_npy, scratch_dir, Schema};
use reflex_models::{golden, npy, Model};

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
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(65), "{stderr}");
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
fn a_model_with_an_integer_input_is_refused_as_float32_only() {
    let dir = scratch_dir("import-int8");
    let onnx = models_dir().join("examples/test/int8_rank3.onnx");
    let out = dir.join("motor.manifest.json");
    let run = import(&onnx, &motor("samples.npy"), &out, &[]);
    assert_refused(&run, &["only float32 inputs"], &dir, &[]);
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
