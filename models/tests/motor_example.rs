//! The motor example (models/examples/motor/, made by scikit-learn and skl2onnx) runs in
//! tract as it ran in scikit-learn: loaded with `tract_onnx` directly, on the example's
//! own held-out samples, per batch and per event. Real files, no mocks.

use std::path::PathBuf;

use reflex_models::model::sha256_hex;
use reflex_models::npy::Npy;
use tract_onnx::prelude::*;

/// Values per input row: 64 current samples (A) then 64 temperature samples (°C).
const INPUT_LEN: usize = 128;
/// Largest |tract − scikit-learn| score difference accepted.
const TOLERANCE: f32 = 1e-4;

fn example_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/motor")
}

fn read_npy(name: &str) -> Npy {
    Npy::read(example_dir().join(name)).unwrap_or_else(|e| panic!("{e}"))
}

fn samples() -> (usize, Vec<f32>) {
    let samples = read_npy("samples.npy");
    assert_eq!(samples.shape.len(), 2, "samples.npy is rows × values");
    assert_eq!(samples.shape[1], INPUT_LEN);
    (samples.shape[0], samples.f32s().unwrap())
}

/// motor.onnx planned by tract for a batch of `rows`.
fn plan(rows: usize) -> Arc<TypedRunnableModel> {
    tract_onnx::onnx()
        .model_for_path(example_dir().join("motor.onnx"))
        .and_then(|m| m.with_input_fact(0, f32::fact([rows, INPUT_LEN]).into()))
        .and_then(|m| m.into_optimized())
        .and_then(|m| m.into_runnable())
        .unwrap_or_else(|e| panic!("tract cannot plan motor.onnx for {rows} rows: {e:?}"))
}

fn scores(plan: &Arc<TypedRunnableModel>, rows: usize, values: &[f32]) -> Vec<f32> {
    let input = Tensor::from_shape(&[rows, INPUT_LEN], values).unwrap();
    let outputs = plan.run(tvec!(input.into_tvalue())).unwrap();
    let score = outputs[0].to_plain_array_view::<f32>().unwrap();
    assert_eq!(score.shape(), [rows, 1], "one score per row");
    score.iter().copied().collect()
}

#[test]
fn the_motor_model_scores_the_samples_in_tract_as_scikit_learn_did() {
    let (rows, values) = samples();
    let expected = read_npy("expected_scores.npy").f32s().unwrap();
    let labels = read_npy("labels.npy").i64s().unwrap();
    assert_eq!((expected.len(), labels.len()), (rows, rows));

    let got = scores(&plan(rows), rows, &values);
    let (mut worst, mut worst_row) = (0.0f32, 0);
    for (row, (g, e)) in got.iter().zip(&expected).enumerate() {
        assert!(
            (0.0..=1.0).contains(g),
            "row {row}: score {g} outside [0, 1]"
        );
        if (g - e).abs() > worst {
            (worst, worst_row) = ((g - e).abs(), row);
        }
    }
    eprintln!("tract vs scikit-learn on {rows} rows: max |diff| {worst:e} (row {worst_row})");
    assert!(
        worst <= TOLERANCE,
        "row {worst_row}: tract {} vs scikit-learn {}, |diff| {worst:e} > {TOLERANCE:e}",
        got[worst_row],
        expected[worst_row]
    );
    // Both classes are present, and the README's threshold separates them as it says.
    let anomalous = labels.iter().filter(|&&l| l == 1).count();
    assert!(
        anomalous > 0 && anomalous < rows,
        "{anomalous} of {rows} anomalous"
    );
    let agree = got
        .iter()
        .zip(&labels)
        .filter(|(&s, &l)| (s >= 0.5) == (l == 1))
        .count();
    assert!(
        agree * 100 >= rows * 98,
        "threshold 0.5 agrees with {agree} of {rows} labels"
    );
}

#[test]
fn one_window_at_a_time_scores_as_the_whole_batch() {
    let (rows, values) = samples();
    let batch = scores(&plan(rows), rows, &values);
    let single = plan(1);
    for (row, window) in values.chunks_exact(INPUT_LEN).enumerate() {
        let one = scores(&single, 1, window)[0];
        assert!(
            (one - batch[row]).abs() <= TOLERANCE,
            "row {row}: alone {one}, in the batch {}",
            batch[row]
        );
    }
}

#[test]
fn the_motor_model_file_is_the_one_its_readme_and_sha256_file_record() {
    let dir = example_dir();
    let actual = sha256_hex(&std::fs::read(dir.join("motor.onnx")).unwrap());
    let recorded = std::fs::read_to_string(dir.join("motor.sha256")).unwrap();
    assert_eq!(recorded.trim(), actual, "motor.sha256 against motor.onnx");
    let readme = std::fs::read_to_string(dir.join("README.md")).unwrap();
    assert!(
        readme.contains(&actual),
        "README.md does not record motor.onnx's sha256 {actual}"
    );
}

#[test]
fn the_committed_imported_manifest_loads_and_reproduces_its_golden_scores() {
    let path = example_dir().join("motor.manifest.json");
    let mut model = reflex_models::Model::load(&path).unwrap_or_else(|e| panic!("{e}"));
    let report = reflex_models::golden::check(&mut model)
        .unwrap_or_else(|e| panic!("{e}"))
        .expect("the imported manifest has a golden section");
    assert!(report.examples > 0, "{report:?}");
    assert!(report.max_abs_diff <= report.tolerance, "{report:?}");
    assert_eq!(report.argmax_agree, report.examples, "{report:?}");
    assert_eq!(model.input_dims(), [INPUT_LEN]);
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
    // Its classes and actions: a score above 0.5 is an anomaly, which stops the motor.
    let (rows, values) = samples();
    let expected = read_npy("expected_scores.npy").f32s().unwrap();
    for (row, window) in values.chunks_exact(INPUT_LEN).enumerate().take(rows) {
        let p = model.predict_values(window).unwrap();
        let stop = expected[row] > 0.5;
        let action = model.action(p.class).unwrap();
        assert_eq!(
            action == reflex_models::Action::Stop,
            stop,
            "row {row}: {p:?}"
        );
    }
}
