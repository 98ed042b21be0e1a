//! The labelled training set, produced by the same devices that publish to the broker,
//! through the same encoder and decoder, so the models learn exactly what reflexd sees.
//!
//! Written as NumPy `.npy` files (format 1.0, little-endian), loadable with `numpy.load`:
//! - `windows.npy`: `float32 [N, 3, 64]`, acceleration in g (counts × scale);
//! - `temperature.npy`: `float32 [N]`, °C;
//! - `labels.npy`: `int64 [N]`, class index;
//! - `meta.json`: class names, seed, window shape, sample rate.

use std::fs;
use std::io::{self, BufWriter, Write};
use std::path::Path;

use reflex_wire::SensorEvent;

use crate::device::SimDevice;
use crate::signal::{Condition, Distortion, CHANNELS, SAMPLE_RATE_HZ, WINDOW};

/// Devices per class: several rng streams per condition, like a fleet.
const DEVICES_PER_CLASS: u32 = 16;

/// What was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatasetSummary {
    /// Examples written.
    pub examples: usize,
    /// Bytes written over all files.
    pub bytes: u64,
}

/// Writes `per_class` examples of each condition to `dir`, interleaving classes.
pub fn write_dataset(dir: &Path, per_class: usize, seed: u64) -> io::Result<DatasetSummary> {
    fs::create_dir_all(dir)?;
    let mut devices: Vec<SimDevice> = Condition::ALL
        .iter()
        .flat_map(|&c| {
            (0..DEVICES_PER_CLASS)
                .map(move |d| SimDevice::new(c.index() as u32 * DEVICES_PER_CLASS + d, c, seed))
        })
        .collect();
    let n = per_class * Condition::ALL.len();
    let mut windows = Vec::with_capacity(n * CHANNELS * WINDOW);
    let mut temperature = Vec::with_capacity(n);
    let mut labels = Vec::with_capacity(n);
    for i in 0..per_class {
        for (class, chunk) in devices.chunks_mut(DEVICES_PER_CLASS as usize).enumerate() {
            let dev = &mut chunk[i % DEVICES_PER_CLASS as usize];
            let (_, bytes) = dev.next_encoded(i as u64 * 64_000, Distortion::NONE);
            let event = SensorEvent::decode(bytes)
                .map_err(|e| io::Error::other(format!("simulated event did not decode: {e}")))?;
            windows.extend(event.window.values());
            temperature.push(event.temperature_c());
            labels.push(class as i64);
        }
    }
    let mut bytes = 0;
    bytes += write_npy(
        &dir.join("windows.npy"),
        "<f4",
        &[n, CHANNELS, WINDOW],
        &windows,
        |v| v.to_le_bytes(),
    )?;
    bytes += write_npy(
        &dir.join("temperature.npy"),
        "<f4",
        &[n],
        &temperature,
        |v| v.to_le_bytes(),
    )?;
    bytes += write_npy(&dir.join("labels.npy"), "<i8", &[n], &labels, |v| {
        v.to_le_bytes()
    })?;
    let names: Vec<&str> = Condition::ALL.iter().map(|c| c.name()).collect();
    let meta = serde_json::json!({
        "classes": names,
        "seed": seed,
        "per_class": per_class,
        "channels": CHANNELS,
        "window": WINDOW,
        "sample_rate_hz": SAMPLE_RATE_HZ,
        "units": "g",
        "generator": concat!("reflex-sim ", env!("CARGO_PKG_VERSION")),
    });
    let meta = serde_json::to_vec_pretty(&meta).map_err(io::Error::other)?;
    fs::write(dir.join("meta.json"), &meta)?;
    bytes += meta.len() as u64;
    Ok(DatasetSummary { examples: n, bytes })
}

/// Writes a C-order `.npy` array; returns the file size.
fn write_npy<T: Copy, const N: usize>(
    path: &Path,
    descr: &str,
    shape: &[usize],
    data: &[T],
    le_bytes: impl Fn(T) -> [u8; N],
) -> io::Result<u64> {
    let shape_txt = match shape {
        [one] => format!("({one},)"),
        many => format!(
            "({})",
            many.iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut header =
        format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape_txt}, }}");
    // Magic (6) + version (2) + length (2) + header + '\n' must be a multiple of 64.
    let unpadded = 10 + header.len() + 1;
    header.push_str(&" ".repeat(unpadded.next_multiple_of(64) - unpadded));
    header.push('\n');
    let mut out = BufWriter::new(fs::File::create(path)?);
    out.write_all(b"\x93NUMPY\x01\x00")?;
    out.write_all(&(header.len() as u16).to_le_bytes())?;
    out.write_all(header.as_bytes())?;
    for &v in data {
        out.write_all(&le_bytes(v))?;
    }
    out.flush()?;
    Ok((10 + header.len() + data.len() * N) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npy_header_is_aligned_and_parsable() {
        let dir = std::env::temp_dir().join(format!("reflex-npy-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("a.npy");
        let size = write_npy(
            &path,
            "<f4",
            &[2, 3],
            &[1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0],
            |v| v.to_le_bytes(),
        )
        .unwrap();
        let bytes = fs::read(&path).unwrap();
        assert_eq!(bytes.len() as u64, size);
        assert_eq!(&bytes[..8], b"\x93NUMPY\x01\x00");
        let hlen = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
        assert_eq!((10 + hlen) % 64, 0);
        let header = std::str::from_utf8(&bytes[10..10 + hlen]).unwrap();
        assert!(header.contains("'shape': (2, 3)"), "{header}");
        assert_eq!(&bytes[10 + hlen..10 + hlen + 4], &1.0f32.to_le_bytes());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn dataset_is_deterministic_and_balanced() {
        let base = std::env::temp_dir().join(format!("reflex-ds-{}", std::process::id()));
        let a = write_dataset(&base.join("a"), 10, 3).unwrap();
        let b = write_dataset(&base.join("b"), 10, 3).unwrap();
        assert_eq!(
            a,
            DatasetSummary {
                examples: 40,
                bytes: a.bytes
            }
        );
        assert_eq!(a, b);
        for f in ["windows.npy", "labels.npy", "temperature.npy"] {
            assert_eq!(
                fs::read(base.join("a").join(f)).unwrap(),
                fs::read(base.join("b").join(f)).unwrap()
            );
        }
        let labels = fs::read(base.join("a/labels.npy")).unwrap();
        let body = &labels[labels.len() - 40 * 8..];
        let counts = body.chunks(8).fold([0; 4], |mut c, b| {
            c[i64::from_le_bytes(b.try_into().unwrap()) as usize] += 1;
            c
        });
        assert_eq!(counts, [10; 4]);
        fs::remove_dir_all(&base).unwrap();
    }
}
