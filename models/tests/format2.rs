//! Manifest format 2 end to end: the hand-written test models of
//! `models/examples/test/` (made by `models/examples/make_test_models.py`) load through
//! [`Model`], reproduce onnxruntime's golden outputs through the declared preprocessing,
//! and map outputs to classes as their manifests say; broken manifests are refused
//! naming the field; format 1 keeps answering as before. Real ONNX via tract, no mocks.

mod common;

use common::{manifest, models_dir, scratch_dir, Golden};
use reflex_models::batches::ROW_TOLERANCE;
use reflex_models::golden::{self, GoldenValues};
use reflex_models::manifest::{ClassValues, Dtype, OutputSpec2};
use reflex_models::model::OutputKind;
use reflex_models::{Batches, Manifest, Model, ModelError, FEATURE_NAMES, WINDOW_LEN};
use serde_json::{json, Value};

const TEST_MODELS: [&str; 3] = ["score16", "int8_rank3", "probs_u8"];

fn test_manifest(name: &str) -> std::path::PathBuf {
    models_dir()
        .join("examples/test")
        .join(format!("{name}.manifest.json"))
}

fn test_json(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(test_manifest(name)).unwrap()).unwrap()
}

/// Validates `value` as a manifest named `name` (paths resolve nowhere: validation only).
fn validate(value: &Value) -> Result<Manifest, ModelError> {
    Manifest::from_json(&value.to_string(), "patched.manifest.json")
}

fn golden_values(model: &Model) -> GoldenValues {
    let spec = model
        .manifest()
        .format2
        .as_ref()
        .and_then(|f| f.golden.clone())
        .expect("test manifests have golden vectors");
    GoldenValues::load(
        &spec,
        model.manifest_path(),
        model.input_dims(),
        model.output_len(),
    )
    .unwrap()
}

#[test]
fn every_test_model_reproduces_its_golden_outputs_through_its_preprocessing() {
    for name in TEST_MODELS {
        let mut m = Model::load(test_manifest(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        let report = golden::check(&mut m)
            .unwrap_or_else(|e| panic!("{name}: {e}"))
            .unwrap_or_else(|| panic!("{name}: no golden section"));
        println!("{name}: {report:?}");
        assert_eq!(report.examples, 24, "{name}");
        assert!(
            report.max_abs_diff <= report.tolerance,
            "{name}: {report:?}"
        );
        assert_eq!(report.argmax_agree, report.examples, "{name}");
    }
}

#[test]
fn test_models_expose_their_shape_dtype_output_and_features() {
    let score = Model::load(test_manifest("score16")).unwrap();
    assert_eq!(score.input_dims(), [16]);
    assert_eq!(score.input_dtype(), Dtype::Float32);
    assert!(matches!(score.output_kind(), OutputSpec2::Score { .. }));
    assert_eq!(score.feature_names(), ["mean_a", "std_a", "peak_a"]);

    let int8 = Model::load(test_manifest("int8_rank3")).unwrap();
    assert_eq!(int8.input_dims(), [2, 8]);
    assert_eq!(int8.input_len(), 16);
    assert_eq!(int8.input_dtype(), Dtype::Int8);
    assert_eq!(
        int8.feature_names(),
        [
            "mean_left",
            "mean_right",
            "rms_left",
            "rms_right",
            "temperature"
        ]
    );

    let probs = Model::load(test_manifest("probs_u8")).unwrap();
    assert_eq!(probs.input_dims(), [4, 3]);
    assert_eq!(probs.input_dtype(), Dtype::Uint8);
    assert!(matches!(
        probs.output_kind(),
        OutputSpec2::Classification {
            values: ClassValues::Probabilities,
            ..
        }
    ));
}

#[test]
fn a_score_model_maps_each_score_to_the_class_of_its_threshold_range() {
    let mut m = Model::load(test_manifest("score16")).unwrap();
    let set = golden_values(&m);
    let mut seen = [0usize; 2];
    for i in 0..set.len() {
        let p = m.predict_values(set.input(i)).unwrap();
        let score = p.score.expect("a score model answers a score");
        assert_eq!(p.kind, OutputKind::Score);
        assert_eq!(p.logits, [score]);
        let expected = if score < 0.5 { 0 } else { 1 };
        assert_eq!(p.class, expected, "score {score}");
        assert_eq!(m.classes()[p.class], ["normal", "anomaly"][expected]);
        assert_eq!(p.confidence(), 1.0);
        seen[p.class] += 1;
    }
    assert!(
        seen[0] > 0 && seen[1] > 0,
        "the golden inputs cover both ranges: {seen:?}"
    );
    assert_eq!(m.action(1), Some(reflex_models::Action::Stop));
}

#[test]
fn a_probabilities_output_is_its_own_confidence_and_is_picked_by_name() {
    // The graph's first output is its logits; the manifest names the probabilities.
    let mut m = Model::load(test_manifest("probs_u8")).unwrap();
    let set = golden_values(&m);
    for i in 0..set.len() {
        let p = m.predict_values(set.input(i)).unwrap();
        assert_eq!(p.kind, OutputKind::Probabilities);
        let total: f32 = p.logits.iter().sum();
        assert!((total - 1.0).abs() < 1e-5, "row {i} sums to {total}");
        assert_eq!(p.probabilities(), p.logits);
        assert_eq!(p.confidence(), p.logits[p.class]);
        assert!(p.confidence() >= 0.5);
    }
}

#[test]
fn an_input_of_the_wrong_length_is_refused_naming_both_lengths() {
    let mut m = Model::load(test_manifest("int8_rank3")).unwrap();
    let err = m.predict_values(&[0.0; 15]).unwrap_err();
    assert!(matches!(
        err,
        ModelError::InputLength {
            expected: 16,
            actual: 15
        }
    ));
    assert_eq!(err.to_string(), "input has 15 values, expected 16");
    let err = m.predict_values(&[0.0; WINDOW_LEN]).unwrap_err();
    assert_eq!(err.to_string(), "input has 192 values, expected 16");
}

#[test]
fn a_symbolic_batch_int8_model_answers_each_row_of_a_batch_as_alone() {
    let mut single = Model::load(test_manifest("int8_rank3")).unwrap();
    let set = golden_values(&single);
    let mut batches = Batches::load(test_manifest("int8_rank3"), 4).unwrap();
    assert_eq!(batches.max(), 4);
    for k in 1..=4 {
        let rows = &set.inputs[..k * 16];
        let preds = batches.predict(rows, &vec![0.0; k]).unwrap();
        assert_eq!(preds.len(), k);
        for (i, p) in preds.iter().enumerate() {
            let alone = single.predict_values(set.input(i)).unwrap();
            assert_eq!(p.class, alone.class, "row {i} of {k}");
            for (got, want) in p.logits.iter().zip(&alone.logits) {
                assert!(
                    (got - want).abs() <= ROW_TOLERANCE,
                    "row {i} of {k}: {got} vs {want}"
                );
            }
            for (got, want) in p.logits.iter().zip(set.output(i)) {
                assert!(
                    (got - want).abs() <= 1e-4,
                    "row {i} of {k}: {got} vs {want}"
                );
            }
        }
    }
}

#[test]
fn a_fixed_batch_of_one_score_model_replans_for_several_rows() {
    let set = golden_values(&Model::load(test_manifest("score16")).unwrap());
    let mut batches = Batches::load(test_manifest("score16"), 3).unwrap();
    let preds = batches.predict(&set.inputs[..3 * 16], &[0.0; 3]).unwrap();
    for (i, p) in preds.iter().enumerate() {
        assert!((p.logits[0] - set.output(i)[0]).abs() <= 1e-4, "row {i}");
    }
}

#[test]
fn an_integer_input_without_a_quantize_step_is_refused_naming_the_field() {
    let mut v = test_json("int8_rank3");
    v["preprocessing"].as_array_mut().unwrap().pop();
    let err = validate(&v).unwrap_err();
    assert!(matches!(err, ModelError::ManifestInvalid { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("preprocessing = [\"per_channel_standardize\"]: input.dtype int8 needs a last step {\"op\": \"quantize\""),
        "{msg}"
    );
}

#[test]
fn validation_reports_every_problem_at_once_with_its_field_path_and_value() {
    let mut v = test_json("score16");
    v["input"]["dtype"] = json!("float64");
    v["input"]["shape"] = json!([4, 16]);
    v["output"]["thresholds"] = json!([{"below": 0.7, "class": "normal"}, {"below": 0.2, "class": "anomaly"}, {"class": "unknown"}]);
    v["preprocessing"][2] = json!({"op": "clip", "min": 2.0, "max": 1.0});
    v["monitoring"]["window_stats"]["channels"][0] = json!("A");
    v["sha256"] = json!("ABC");
    let msg = validate(&v).unwrap_err().to_string();
    for needle in [
        "input.dtype = \"float64\": must be one of float32, int8, uint8, int16",
        "input.shape[0] = 4: the batch must be 1 or a symbol",
        "output.thresholds[1].below = 0.2: must be finite and above the previous bound 0.7",
        "output.thresholds[2].class = \"unknown\": is not one of classes",
        "preprocessing[2].max = 1.0: must be finite and >= min 2",
        "monitoring.window_stats.channels[0] = \"A\": must be lowercase",
        "reference.features[].name = [\"mean_a\"",
        "sha256 = \"ABC\": must be 64 lowercase hex digits",
    ] {
        assert!(msg.contains(needle), "missing {needle:?} in {msg}");
    }
}

#[test]
fn a_quantize_step_on_a_float_input_or_before_another_step_is_refused() {
    let mut v = test_json("score16");
    v["preprocessing"] =
        json!([{"op": "quantize", "scale": 0.1, "zero_point": 0}, {"op": "offset", "value": 1.0}]);
    let msg = validate(&v).unwrap_err().to_string();
    assert!(
        msg.contains("preprocessing[0].op = \"quantize\": must be the last step"),
        "{msg}"
    );
    assert!(msg.contains("needs an integer input.dtype"), "{msg}");
    let mut v = test_json("int8_rank3");
    v["preprocessing"][1]["zero_point"] = json!(200);
    let msg = validate(&v).unwrap_err().to_string();
    assert!(
        msg.contains("preprocessing[1].zero_point = 200: must lie in -128..=127 for int8"),
        "{msg}"
    );
}

#[test]
fn a_format_two_parse_error_names_the_field_path() {
    let mut v = test_json("score16");
    v["output"]["thresholds"][0]["bellow"] = json!(0.5);
    let err = validate(&v).unwrap_err();
    assert!(matches!(err, ModelError::ManifestField { .. }), "{err:?}");
    let msg = err.to_string();
    // Inside a tagged section serde reports the section, not the entry.
    assert!(msg.contains("at output:"), "{msg}");
    assert!(msg.contains("unknown field `bellow`"), "{msg}");
    let mut v = test_json("probs_u8");
    v["preprocessing"][0]["op"] = json!("normalize");
    let msg = validate(&v).unwrap_err().to_string();
    assert!(
        msg.contains("at preprocessing[0]") && msg.contains("normalize"),
        "{msg}"
    );
}

#[test]
fn format_two_leaves_unknown_metrics_out_and_round_trips_through_serde() {
    let m = Manifest::load(test_manifest("int8_rank3")).unwrap();
    assert_eq!(m.format, 2);
    assert!(m.metrics.heldout_accuracy.is_nan(), "unknown, not a number");
    assert_eq!(m.format2.as_ref().unwrap().metrics.heldout_accuracy, None);
    let text = serde_json::to_string_pretty(&m).unwrap();
    let again = Manifest::from_json(&text, "again.manifest.json").unwrap();
    assert_eq!(again.to_v2(), m.to_v2());
    // serde's own entry point picks the format too.
    let via_serde: Manifest = serde_json::from_str(&text).unwrap();
    assert_eq!(via_serde.to_v2(), m.to_v2());
    let edge_text = std::fs::read_to_string(manifest("edge")).unwrap();
    let edge: Manifest = serde_json::from_str(&edge_text).unwrap();
    assert_eq!(edge, Manifest::load(manifest("edge")).unwrap());
    let written: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(written, test_json("int8_rank3"));
}

#[test]
fn a_format_two_model_with_a_tampered_golden_output_fails_its_golden_check() {
    let dir = scratch_dir("format2-golden");
    for f in [
        "score16.onnx",
        "score16_inputs.npy",
        "score16.manifest.json",
    ] {
        std::fs::copy(models_dir().join("examples/test").join(f), dir.join(f)).unwrap();
    }
    let mut outputs =
        std::fs::read(models_dir().join("examples/test/score16_outputs.npy")).unwrap();
    let n = outputs.len();
    // The last value: a score in (0, 1) moved by 2^-3 or more changes its top mantissa bits.
    outputs[n - 2] ^= 0x10;
    std::fs::write(dir.join("score16_outputs.npy"), &outputs).unwrap();
    let mut m = Model::load(dir.join("score16.manifest.json")).unwrap();
    match golden::check(&mut m) {
        Err(ModelError::GoldenMismatch { index: 23, .. }) => {}
        other => panic!("expected a mismatch on example 23, got {other:?}"),
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn format_one_manifests_read_as_format_two_views_of_the_same_contract() {
    let edge = Manifest::load(manifest("edge")).unwrap();
    assert_eq!(edge.feature_names(), FEATURE_NAMES);
    assert_eq!(edge.input_dtype(), Dtype::Float32);
    assert!(matches!(
        edge.output_spec(),
        OutputSpec2::Classification {
            values: ClassValues::Logits,
            ..
        }
    ));
    let fallback = Manifest::load(manifest("fallback")).unwrap();
    assert_eq!(fallback.feature_names(), FEATURE_NAMES);
    assert!(fallback.preprocessing_steps().is_empty());
    assert!(edge.format2.is_none() && edge.to_v2().is_none());
}

#[test]
fn a_format_one_model_answers_predict_values_exactly_as_predict() {
    let golden = Golden::load();
    let mut edge = Model::load(manifest("edge")).unwrap();
    assert_eq!(edge.input_dims(), [3, 64]);
    assert_eq!(edge.feature_names(), FEATURE_NAMES);
    for i in 0..50 {
        let a = edge
            .predict(golden.window(i), golden.temperature[i])
            .unwrap();
        let b = edge.predict_values(golden.window(i)).unwrap();
        assert_eq!(a, b, "window {i}");
        assert_eq!(a.kind, OutputKind::Logits);
        assert_eq!(a.score, None);
    }
    let mut cloud = Model::load(manifest("cloud")).unwrap();
    let err = cloud.predict_values(golden.window(0)).unwrap_err();
    assert!(
        matches!(err, ModelError::NeedsTemperature { .. }),
        "{err:?}"
    );
}

#[test]
fn a_format_three_manifest_is_refused_naming_both_known_formats() {
    let text = std::fs::read_to_string(manifest("edge")).unwrap();
    let err = Manifest::from_json(
        &text.replacen("\"format\": 1", "\"format\": 3", 1),
        "e.json",
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("format 3 is not supported (expected 1 or 2)"),
        "{err}"
    );
}

#[test]
fn declared_statistics_are_named_as_the_stats_module_computes_them() {
    // The demo's 13 features, declared: kurtosis is named `kurt_<channel>`.
    let mut v = test_json("score16");
    v["monitoring"] = json!({
        "window_stats": {"stats": ["mean", "std", "peak", "kurtosis"], "channels": ["x", "y", "z"]},
        "scalars": ["temperature"],
    });
    let profile = v["reference"]["features"][0].clone();
    v["reference"]["features"] = Value::Array(
        FEATURE_NAMES
            .iter()
            .map(|n| {
                let mut p = profile.clone();
                p["name"] = json!(n);
                p
            })
            .collect(),
    );
    let m = validate(&v).unwrap();
    assert_eq!(m.feature_names(), FEATURE_NAMES);
    // A statistic the stats module does not compute is refused, naming where.
    v["monitoring"]["window_stats"]["stats"][1] = json!("median");
    let msg = validate(&v).unwrap_err().to_string();
    assert!(
        msg.contains("monitoring.window_stats.stats[1]") && msg.contains("median"),
        "{msg}"
    );
}

#[test]
fn a_logits_confidence_is_its_softmax_probability_and_a_score_is_certain() {
    use reflex_models::model::softmax;
    let logits = vec![0.1f32, 0.3, 2.5, -0.4];
    let p = reflex_models::Prediction {
        class: 2,
        logits: logits.clone(),
        score: None,
        kind: OutputKind::Logits,
    };
    assert_eq!(p.confidence(), softmax(&logits)[2]);
    let probs = reflex_models::Prediction {
        class: 0,
        logits: vec![0.7, 0.3],
        score: None,
        kind: OutputKind::Probabilities,
    };
    assert_eq!(probs.confidence(), 0.7);
    // A score's class indexes the thresholds' classes, not its one value.
    let score = reflex_models::Prediction {
        class: 1,
        logits: vec![0.93],
        score: Some(0.93),
        kind: OutputKind::Score,
    };
    assert_eq!(score.confidence(), 1.0);
    let missing = reflex_models::Prediction {
        class: 9,
        logits,
        score: None,
        kind: OutputKind::Logits,
    };
    assert_eq!(missing.confidence(), 0.0);
}
