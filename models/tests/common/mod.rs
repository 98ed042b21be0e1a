//! Shared test helpers: a minimal `.npy` reader and the golden data set.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// The models/ directory.
pub fn models_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A manifest path in models/.
pub fn manifest(name: &str) -> PathBuf {
    models_dir().join(format!("{name}.manifest.json"))
}

/// A parsed `.npy` file: shape and raw little-endian data.
pub struct Npy {
    pub descr: String,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

pub fn read_npy(path: &Path) -> Npy {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(&bytes[..6], b"\x93NUMPY", "{}", path.display());
    let (hlen, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        _ => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
    };
    let header = std::str::from_utf8(&bytes[start..start + hlen]).unwrap();
    assert!(header.contains("'fortran_order': False"), "{header}");
    let descr = header
        .split("'descr': '")
        .nth(1)
        .unwrap()
        .split('\'')
        .next()
        .unwrap();
    let shape_txt = header
        .split("'shape': (")
        .nth(1)
        .unwrap()
        .split(')')
        .next()
        .unwrap();
    let shape = shape_txt
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap())
        .collect();
    Npy {
        descr: descr.to_owned(),
        shape,
        data: bytes[start + hlen..].to_vec(),
    }
}

impl Npy {
    pub fn f32s(&self) -> Vec<f32> {
        assert_eq!(self.descr, "<f4");
        self.data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect()
    }
    pub fn f64s(&self) -> Vec<f64> {
        assert_eq!(self.descr, "<f8");
        self.data
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes(b.try_into().unwrap()))
            .collect()
    }
    pub fn i16s(&self) -> Vec<i16> {
        assert_eq!(self.descr, "<i2");
        self.data
            .chunks_exact(2)
            .map(|b| i16::from_le_bytes(b.try_into().unwrap()))
            .collect()
    }
    pub fn i64s(&self) -> Vec<i64> {
        assert_eq!(self.descr, "<i8");
        self.data
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
            .collect()
    }
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
            .into_iter()
            .map(|c| f32::from(c) * scale)
            .collect();
        let summary: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap())
                .unwrap();
        Golden {
            windows,
            temperature: read_npy(&dir.join("temperature.npy")).f32s(),
            labels: read_npy(&dir.join("labels.npy"))
                .i64s()
                .into_iter()
                .map(|l| l as usize)
                .collect(),
            features: read_npy(&dir.join("features.npy")).f64s(),
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
