//! `models/manifest.schema.json` (draft 2020-12) accepts every shipped manifest (format 1)
//! and every format-2 test manifest, and refuses broken ones; the crate's own loader
//! refuses the same broken ones, so the schema and `Manifest::load` agree on them.

mod common;

use std::path::PathBuf;

use common::{models_dir, Schema};
use reflex_models::Manifest;
use serde_json::{json, Value};

/// `models/*.manifest.json` and `models/examples/test/*.manifest.json`.
fn all_manifests() -> Vec<PathBuf> {
    let mut out = Vec::new();
    for dir in [models_dir(), models_dir().join("examples/test")] {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.to_string_lossy().ends_with(".manifest.json") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

fn read(path: &PathBuf) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn every_shipped_and_test_manifest_validates_against_the_schema() {
    let schema = Schema::load();
    let paths = all_manifests();
    let mut formats = Vec::new();
    for path in &paths {
        let value = read(path);
        schema
            .check(&value)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        formats.push(value["format"].as_u64().unwrap());
    }
    formats.sort();
    assert_eq!(formats, [1, 1, 1, 2, 2, 2], "{paths:?}");
}

#[test]
fn broken_manifests_fail_the_schema_and_the_loader_alike() {
    let schema = Schema::load();
    let dir = models_dir();
    let edge = read(&dir.join("edge.manifest.json"));
    let int8 = read(&dir.join("examples/test/int8_rank3.manifest.json"));
    let score = read(&dir.join("examples/test/score16.manifest.json"));
    type Patch = fn(&mut Value);
    let cases: [(&str, &Value, Patch); 8] = [
        ("an unknown top-level field", &edge, |v| {
            v["temperature_limit"] = json!(80)
        }),
        ("a format-1 window of 32 samples", &edge, |v| {
            v["input"]["shape"] = json!([1, 3, 32])
        }),
        ("a format-1 reference with 12 features", &edge, |v| {
            v["reference"]["features"].as_array_mut().unwrap().pop();
        }),
        ("an int8 input without a quantize step", &int8, |v| {
            v["preprocessing"].as_array_mut().unwrap().pop();
        }),
        ("a float64 input", &int8, |v| {
            v["input"]["dtype"] = json!("float64")
        }),
        ("an unknown preprocessing op", &int8, |v| {
            v["preprocessing"][0]["op"] = json!("normalize")
        }),
        ("a score whose every threshold is bounded", &score, |v| {
            v["output"]["thresholds"][1]["below"] = json!(0.9)
        }),
        ("a format-2 model of kind linear", &score, |v| {
            v["kind"] = json!("linear")
        }),
    ];
    for (what, base, patch) in cases {
        let mut v = base.clone();
        patch(&mut v);
        assert!(schema.check(&v).is_err(), "the schema accepts {what}");
        assert!(
            Manifest::from_json(&v.to_string(), "broken.manifest.json").is_err(),
            "the loader accepts {what}"
        );
    }
}
