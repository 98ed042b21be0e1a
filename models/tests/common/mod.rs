//! Shared test helpers: the golden data set and scratch directories.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use reflex_models::npy::Npy;

/// The models/ directory.
pub fn models_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A manifest path in models/.
pub fn manifest(name: &str) -> PathBuf {
    models_dir().join(format!("{name}.manifest.json"))
}

/// Reads a golden `.npy` file (the crate's reader; a test failure names the file).
pub fn read_npy(path: &Path) -> Npy {
    Npy::read(path).unwrap_or_else(|e| panic!("{e}"))
}

/// The golden held-out examples written by make_models.py.
pub struct Golden {
    /// Windows in g, `n × 192`, channel-major.
    pub windows: Vec<f32>,
    pub temperature: Vec<f32>,
    pub labels: Vec<usize>,
    /// Python's features, `n × 13`.
    pub features: Vec<f64>,
    pub summary: serde_json::Value,
}

impl Golden {
    pub fn load() -> Golden {
        let dir = models_dir().join("golden");
        let counts = read_npy(&dir.join("window_counts.npy"));
        // Exactly what the daemon decodes: counts as f32 × (1/2048).
        let scale = 1.0f32 / 2048.0;
        let windows = counts
            .i16s()
            .unwrap()
            .into_iter()
            .map(|c| f32::from(c) * scale)
            .collect();
        let summary: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap())
                .unwrap();
        Golden {
            windows,
            temperature: read_npy(&dir.join("temperature.npy")).f32s().unwrap(),
            labels: read_npy(&dir.join("labels.npy"))
                .i64s()
                .unwrap()
                .into_iter()
                .map(|l| l as usize)
                .collect(),
            features: read_npy(&dir.join("features.npy")).f64s().unwrap(),
            summary,
        }
    }

    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn window(&self, i: usize) -> &[f32; 192] {
        self.windows[i * 192..(i + 1) * 192].try_into().unwrap()
    }

    /// onnxruntime's logits for `model` (edge, edge_fp32, cloud), `n × 4`.
    pub fn ort_logits(&self, model: &str) -> Vec<f32> {
        read_npy(
            &models_dir()
                .join("golden")
                .join(format!("{model}_logits.npy")),
        )
        .f32s()
        .unwrap()
    }

    /// Python's correct count for `model` on the golden set.
    pub fn python_correct(&self, model: &str) -> usize {
        self.summary["correct"][model].as_u64().unwrap() as usize
    }
}

/// A fresh scratch directory under the system temp dir.
pub fn scratch_dir(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("reflex-models-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `models/manifest.schema.json`, compiled.
pub struct Schema {
    schemas: boon::Schemas,
    index: boon::SchemaIndex,
}

impl Schema {
    /// Compiles the schema.
    pub fn load() -> Schema {
        let path = models_dir().join("manifest.schema.json");
        let mut schemas = boon::Schemas::new();
        let mut compiler = boon::Compiler::new();
        let index = compiler
            .compile(path.to_str().unwrap(), &mut schemas)
            .unwrap_or_else(|e| panic!("{e:#}"));
        Schema { schemas, index }
    }

    /// Validates `manifest`; the error lists what the schema refuses.
    pub fn check(&self, manifest: &serde_json::Value) -> Result<(), String> {
        self.schemas
            .validate(manifest, self.index)
            .map_err(|e| e.to_string())
    }
}
