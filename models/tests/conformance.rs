//! Conformance of the Rust side with what `make_models.py` produced: tract against
//! onnxruntime's golden outputs, accuracies against the manifests, features and fallback
//! against Python, and refusal of corrupted models and unknown manifest fields.
//! Real ONNX files from models/, no mocks.

mod common;

use common::{manifest, models_dir, scratch_dir, Golden};
use reflex_models::{features, Action, Batches, Fallback, Manifest, Model, ModelError, WINDOW_LEN};

/// Largest |tract − onnxruntime| logit difference accepted for the float models
/// (measured on x86_64: 2.3e-5 edge fp32, 1.5e-5 cloud).
const FP32_TOLERANCE: f32 = 1e-4;
/// For the int8 model: tract and onnxruntime may round a requantization step differently
/// on other CPUs, which moves a logit by about one output quantum. Measured on x86_64: 0.0
/// (bit-identical logits, argmax agreement 1600/1600).
const INT8_TOLERANCE: f32 = 0.05;

struct Agreement {
    max_abs_diff: f32,
    argmax_agree: usize,
    correct: usize,
    n: usize,
}

fn compare_with_ort(model: &mut Model, golden: &Golden, ort_name: &str) -> Agreement {
    let ort = golden.ort_logits(ort_name);
    let classes = model.classes().len();
    let mut a = Agreement {
        max_abs_diff: 0.0,
        argmax_agree: 0,
        correct: 0,
        n: golden.len(),
    };
    for i in 0..golden.len() {
        let p = model
            .predict(golden.window(i), golden.temperature[i])
            .expect("prediction");
        let expected = &ort[i * classes..(i + 1) * classes];
        for (x, y) in p.logits.iter().zip(expected) {
            a.max_abs_diff = a.max_abs_diff.max((x - y).abs());
        }
        if p.class == reflex_models::model::argmax(expected) {
            a.argmax_agree += 1;
        }
        if p.class == golden.labels[i] {
            a.correct += 1;
        }
    }
    println!(
        "{ort_name}: max |tract - ort| = {:.3e}, argmax agreement {}/{}, accuracy {:.2} %",
        a.max_abs_diff,
        a.argmax_agree,
        a.n,
        100.0 * a.correct as f64 / a.n as f64
    );
    a
}

#[test]
fn tract_matches_onnxruntime_on_the_fp32_edge_model() {
    let golden = Golden::load();
    let mut m = Model::load_fp32_twin(manifest("edge")).unwrap();
    let a = compare_with_ort(&mut m, &golden, "edge_fp32");
    assert!(
        a.max_abs_diff < FP32_TOLERANCE,
        "max diff {}",
        a.max_abs_diff
    );
    assert_eq!(a.argmax_agree, a.n);
    assert_eq!(a.correct, golden.python_correct("edge_fp32"));
}

#[test]
fn tract_matches_onnxruntime_on_the_int8_edge_model() {
    let golden = Golden::load();
    let mut m = Model::load(manifest("edge")).unwrap();
    assert_eq!(m.batch(), 1);
    let a = compare_with_ort(&mut m, &golden, "edge");
    assert!(
        a.max_abs_diff < INT8_TOLERANCE,
        "max diff {}",
        a.max_abs_diff
    );
    // A requantization rounding difference may flip a near-tie: allow 0.5 %.
    assert!(
        a.argmax_agree * 1000 >= a.n * 995,
        "argmax agreement {}/{}",
        a.argmax_agree,
        a.n
    );
}

#[test]
fn tract_matches_onnxruntime_on_the_cloud_model_at_batch_one_and_batch_sixty_four() {
    let golden = Golden::load();
    let mut single = Model::load(manifest("cloud")).unwrap();
    assert_eq!(single.batch(), 1);
    let a = compare_with_ort(&mut single, &golden, "cloud");
    assert!(
        a.max_abs_diff < FP32_TOLERANCE,
        "max diff {}",
        a.max_abs_diff
    );
    assert_eq!(a.argmax_agree, a.n);
    assert_eq!(a.correct, golden.python_correct("cloud"));

    let mut batched = Model::load_with_batch(manifest("cloud"), 64).unwrap();
    assert_eq!(batched.batch(), 64);
    let ort = golden.ort_logits("cloud");
    let mut max_diff = 0.0f32;
    // 1600 = 25 full batches; then a partial batch of 10 to exercise zero padding.
    let mut start = 0;
    for k in std::iter::repeat_n(64, golden.len() / 64).chain([10]) {
        let preds = batched
            .predict_batch(
                &golden.windows[start * WINDOW_LEN..(start + k) * WINDOW_LEN],
                &golden.temperature[start..start + k],
            )
            .unwrap();
        assert_eq!(preds.len(), k);
        for (j, p) in preds.iter().enumerate() {
            for (x, y) in p
                .logits
                .iter()
                .zip(&ort[(start + j) * 4..(start + j + 1) * 4])
            {
                max_diff = max_diff.max((x - y).abs());
            }
        }
        start = (start + k) % golden.len();
    }
    println!("cloud batch 64: max |tract - ort| = {max_diff:.3e}");
    assert!(max_diff < FP32_TOLERANCE, "max diff {max_diff}");
}

#[test]
fn the_int8_edge_model_replanned_for_up_to_eight_windows_answers_each_as_onnxruntime_does() {
    let golden = Golden::load();
    let ort = golden.ort_logits("edge");
    let mut batches = Batches::load(manifest("edge"), 8).unwrap();
    assert_eq!(batches.max(), 8);
    let mut single = Model::load(manifest("edge")).unwrap();
    // Every batch size, over the golden windows in turn: each row is the window alone's
    // answer, bit for bit, and onnxruntime's within the int8 tolerance.
    let (mut start, mut max_vs_ort) = (0, 0.0f32);
    for k in (1..=8).cycle().take(80) {
        let end = (start + k).min(golden.len());
        let preds = batches
            .predict(
                &golden.windows[start * WINDOW_LEN..end * WINDOW_LEN],
                &golden.temperature[start..end],
            )
            .unwrap();
        assert_eq!(preds.len(), end - start);
        for (j, p) in preds.iter().enumerate() {
            let i = start + j;
            let alone = single
                .predict(golden.window(i), golden.temperature[i])
                .unwrap();
            assert_eq!(p.logits, alone.logits, "window {i} in a batch of {k}");
            for (x, y) in p.logits.iter().zip(&ort[i * 4..(i + 1) * 4]) {
                max_vs_ort = max_vs_ort.max((x - y).abs());
            }
        }
        start = end % golden.len();
    }
    assert!(max_vs_ort < INT8_TOLERANCE, "max diff to ort {max_vs_ort}");
}

#[test]
fn a_batch_of_none_or_more_windows_than_planned_is_an_error() {
    let mut batches = Batches::load(manifest("edge"), 2).unwrap();
    let w = vec![0.0f32; 3 * WINDOW_LEN];
    for k in [0, 3] {
        match batches.predict(&w[..k * WINDOW_LEN], &vec![45.0; k]) {
            Err(ModelError::BatchTooLarge { max: 2, actual }) => assert_eq!(actual, k),
            other => panic!("batch of {k}: expected BatchTooLarge, got {other:?}"),
        }
    }
}

/// Golden windows whose class `model` predicts right.
fn correct_on_golden(model: &mut Model, golden: &Golden) -> usize {
    (0..golden.len())
        .filter(|&i| {
            model
                .predict(golden.window(i), golden.temperature[i])
                .unwrap()
                .class
                == golden.labels[i]
        })
        .count()
}

#[test]
fn int8_edge_accuracy_is_within_one_and_a_half_points_of_its_fp32_twin() {
    let golden = Golden::load();
    let mut int8 = Model::load(manifest("edge")).unwrap();
    let mut fp32 = Model::load_fp32_twin(manifest("edge")).unwrap();
    let acc = |m: &mut Model| correct_on_golden(m, &golden) as f64 / golden.len() as f64;
    let (a8, a32) = (acc(&mut int8), acc(&mut fp32));
    println!(
        "golden set under tract: int8 {:.2} %, fp32 {:.2} %",
        100.0 * a8,
        100.0 * a32
    );
    assert!((a8 - a32).abs() <= 0.015, "int8 {a8} vs fp32 {a32}");
    // And on the full held-out split, as measured by onnxruntime at generation time.
    let m = int8.manifest().metrics.clone();
    let twin = m.fp32_twin_heldout_accuracy.unwrap();
    assert!((m.heldout_accuracy - twin).abs() <= 0.015, "{m:?}");
}

#[test]
fn cloud_is_more_accurate_than_edge() {
    let golden = Golden::load();
    let mut edge = Model::load(manifest("edge")).unwrap();
    let mut cloud = Model::load(manifest("cloud")).unwrap();
    let correct = |m: &mut Model| correct_on_golden(m, &golden);
    let (e, c) = (correct(&mut edge), correct(&mut cloud));
    println!("golden set: edge {e}/{n}, cloud {c}/{n}", n = golden.len());
    assert!(c > e, "cloud {c} vs edge {e}");
    assert!(cloud.manifest().metrics.heldout_accuracy > edge.manifest().metrics.heldout_accuracy);
}

#[test]
fn rust_features_equal_the_python_features() {
    let golden = Golden::load();
    let mut worst = 0.0f64;
    for i in 0..golden.len() {
        let f = features::compute(golden.window(i), golden.temperature[i]);
        for (j, (r, p)) in f
            .iter()
            .zip(&golden.features[i * 13..(i + 1) * 13])
            .enumerate()
        {
            let rel = (r - p).abs() / p.abs().max(1e-3);
            assert!(
                rel < 1e-9,
                "example {i} feature {}: rust {r} python {p}",
                features::FEATURE_NAMES[j]
            );
            worst = worst.max(rel);
        }
    }
    println!("worst relative feature difference: {worst:.2e}");
}

#[test]
fn fallback_accuracy_in_rust_equals_the_python_figure() {
    let golden = Golden::load();
    let fb = Fallback::load(manifest("fallback")).unwrap();
    let correct = (0..golden.len())
        .filter(|&i| fb.predict_window(golden.window(i), golden.temperature[i]) == golden.labels[i])
        .count();
    println!("fallback on the golden set: {correct}/{}", golden.len());
    assert_eq!(correct, golden.python_correct("fallback"));
}

#[test]
fn manifests_map_every_class_to_its_actuator_action() {
    let expected = [Action::Run, Action::SlowDown, Action::Stop, Action::Inspect];
    for name in ["edge", "cloud", "fallback"] {
        let m = Manifest::load(manifest(name)).unwrap();
        assert_eq!(
            m.classes,
            ["healthy", "imbalance", "bearing_fault", "misalignment"]
        );
        assert_eq!(m.actions_by_class(), expected, "{name}");
        assert_eq!(m.version, "1.0.0");
        assert_eq!(m.reference.features.len(), 13);
        assert!(m
            .reference
            .features
            .iter()
            .all(|f| f.quantiles.len() == 101));
        let total: f64 = m.reference.predicted_class_fraction.iter().sum();
        assert!((total - 1.0).abs() < 1e-9, "{name}: {total}");
    }
    let edge = Model::load(manifest("edge")).unwrap();
    assert!(!edge.uses_temperature());
    assert!(Model::load(manifest("cloud")).unwrap().uses_temperature());
    assert_eq!(edge.action(2), Some(Action::Stop));
    assert_eq!(edge.action(4), None);
}

#[test]
fn a_corrupted_onnx_file_is_refused_with_the_checksum_error_naming_both_hashes() {
    let dir = scratch_dir("corrupt");
    std::fs::copy(manifest("edge"), dir.join("edge.manifest.json")).unwrap();
    let mut bytes = std::fs::read(models_dir().join("edge.onnx")).unwrap();
    let expected = reflex_models::model::sha256_hex(&bytes);
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    let actual = reflex_models::model::sha256_hex(&bytes);
    std::fs::write(dir.join("edge.onnx"), &bytes).unwrap();

    let err = Model::load(dir.join("edge.manifest.json")).unwrap_err();
    match &err {
        ModelError::ChecksumMismatch {
            expected: e,
            actual: a,
            ..
        } => {
            assert_eq!(e, &expected);
            assert_eq!(a, &actual);
        }
        other => panic!("expected a checksum mismatch, got {other:?}"),
    }
    let msg = err.to_string();
    assert!(msg.starts_with("checksum mismatch for "), "{msg}");
    assert!(msg.contains(&expected) && msg.contains(&actual), "{msg}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_manifest_with_an_unknown_field_is_refused() {
    let dir = scratch_dir("unknown-field");
    let text = std::fs::read_to_string(manifest("edge")).unwrap();
    let patched = text.replacen("{", "{\n  \"temperature_limit\": 80,", 1);
    let path = dir.join("edge.manifest.json");
    std::fs::write(&path, patched).unwrap();
    let err = Manifest::load(&path).unwrap_err();
    assert!(matches!(err, ModelError::ManifestParse { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains("unknown field `temperature_limit`"),
        "{err}"
    );
    // Nested sections refuse unknown fields too.
    let nested = text.replacen(
        "\"heldout_accuracy\"",
        "\"accuracy_typo\": 1, \"heldout_accuracy\"",
        1,
    );
    std::fs::write(&path, nested).unwrap();
    let err = Fallback::load(&path).map(|_| ()).unwrap_err();
    assert!(
        err.to_string().contains("unknown field `accuracy_typo`"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_window_of_the_wrong_length_is_an_error_not_a_panic() {
    let mut edge = Model::load(manifest("edge")).unwrap();
    let err = edge.predict(&[0.0; 191], 45.0).unwrap_err();
    assert_eq!(err.to_string(), "input has 191 values, expected 192");
    let err = edge
        .predict_batch(&[0.0; 2 * WINDOW_LEN], &[45.0; 2])
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "batch of 2 windows exceeds the model's batch size 1"
    );
}

#[test]
fn models_can_move_to_another_thread() {
    fn is_send<T: Send>() {}
    is_send::<Model>();
    is_send::<Fallback>();
}

#[test]
fn shipped_onnx_models_reproduce_their_golden_vectors() {
    for name in ["edge", "cloud"] {
        let mut m = Model::load(manifest(name)).unwrap();
        let report = reflex_models::golden::check(&mut m)
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|| panic!("{name}: manifest has no golden section"));
        println!("{name}: {report:?}");
        assert_eq!(report.examples, 1600, "{name}");
        assert!(
            report.max_abs_diff <= report.tolerance,
            "{name}: {report:?}"
        );
        assert_eq!(report.argmax_agree, report.examples, "{name}");
    }
}

#[test]
fn a_model_swapped_for_another_with_a_matching_checksum_fails_its_golden_vectors() {
    // The int8 edge manifest pointing at the fp32 twin, checksum updated: it loads, but
    // it is not the model whose outputs the manifest's golden vectors record.
    let dir = scratch_dir("swapped");
    let twin = std::fs::read(models_dir().join("edge_fp32.onnx")).unwrap();
    std::fs::write(dir.join("edge.onnx"), &twin).unwrap();
    let mut m = Manifest::load(manifest("edge")).unwrap();
    m.sha256 = Some(reflex_models::model::sha256_hex(&twin));
    std::fs::write(
        dir.join("edge.manifest.json"),
        serde_json::to_string_pretty(&m).unwrap(),
    )
    .unwrap();
    std::fs::create_dir(dir.join("golden")).unwrap();
    for f in ["window_counts.npy", "temperature.npy", "edge_logits.npy"] {
        std::fs::copy(
            models_dir().join("golden").join(f),
            dir.join("golden").join(f),
        )
        .unwrap();
    }

    let mut swapped = Model::load(dir.join("edge.manifest.json")).expect("checksum matches");
    let err = reflex_models::golden::check(&mut swapped).unwrap_err();
    match &err {
        ModelError::GoldenMismatch {
            diff, tolerance, ..
        } => assert!(diff > tolerance, "{err}"),
        other => panic!("expected a golden mismatch, got {other:?}"),
    }
    assert!(
        err.to_string().contains("fails its golden vectors"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
