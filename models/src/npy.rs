//! A minimal reader for the `.npy` files `make_models.py` writes (golden vectors):
//! version 1/2 headers, C order, little-endian `<i2`, `<i8`, `<f4`, `<f8`; and a writer
//! of `<f4` arrays ([`write_f32`]) in the version-1 layout numpy writes.

use std::path::{Path, PathBuf};

use crate::ModelError;

/// A parsed `.npy` array: element type, shape and raw little-endian data.
#[derive(Debug, Clone)]
pub struct Npy {
    path: PathBuf,
    /// numpy's type descriptor, e.g. `<f4`.
    pub descr: String,
    /// Array shape.
    pub shape: Vec<usize>,
    data: Vec<u8>,
}

impl Npy {
    /// Reads and parses `path`.
    pub fn read(path: impl AsRef<Path>) -> Result<Npy, ModelError> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|source| ModelError::Io {
            path: path.to_owned(),
            source,
        })?;
        Npy::parse(&bytes, path)
    }

    /// Parses `.npy` bytes; `path` is only used in error messages.
    pub fn parse(bytes: &[u8], path: &Path) -> Result<Npy, ModelError> {
        let bad = |reason: &str| ModelError::Npy {
            path: path.to_owned(),
            reason: reason.to_owned(),
        };
        if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
            return Err(bad("not an .npy file (magic \\x93NUMPY missing)"));
        }
        let (header_len, start) = match bytes[6] {
            1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
            2 | 3 if bytes.len() >= 12 => (
                u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
                12,
            ),
            v => return Err(bad(&format!("unsupported .npy version {v}"))),
        };
        let header = bytes
            .get(start..start + header_len)
            .and_then(|h| std::str::from_utf8(h).ok())
            .ok_or_else(|| bad("truncated or non-utf8 header"))?;
        if !header.contains("'fortran_order': False") {
            return Err(bad("fortran order is not supported"));
        }
        let field = |key: &str, end: char| {
            header
                .split(key)
                .nth(1)
                .and_then(|rest| rest.split(end).next())
                .map(str::to_owned)
        };
        let descr = field("'descr': '", '\'').ok_or_else(|| bad("header has no descr"))?;
        let shape = field("'shape': (", ')')
            .ok_or_else(|| bad("header has no shape"))?
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| s.parse::<usize>().map_err(|_| bad("shape is not integers")))
            .collect::<Result<Vec<_>, _>>()?;
        let npy = Npy {
            path: path.to_owned(),
            descr,
            shape,
            data: bytes[start + header_len..].to_vec(),
        };
        let width = npy.width()?;
        if npy.data.len() != npy.len() * width {
            return Err(bad(&format!(
                "{} data bytes for shape {:?} of {}",
                npy.data.len(),
                npy.shape,
                npy.descr
            )));
        }
        Ok(npy)
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// True when the array has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn width(&self) -> Result<usize, ModelError> {
        match self.descr.as_str() {
            "<i2" => Ok(2),
            "<f4" => Ok(4),
            "<i8" | "<f8" => Ok(8),
            other => Err(ModelError::Npy {
                path: self.path.clone(),
                reason: format!("element type {other} is not supported"),
            }),
        }
    }

    fn expect(&self, descr: &str) -> Result<(), ModelError> {
        if self.descr == descr {
            Ok(())
        } else {
            Err(ModelError::Npy {
                path: self.path.clone(),
                reason: format!("element type {} where {descr} was expected", self.descr),
            })
        }
    }

    /// The elements of an `<f4` array.
    pub fn f32s(&self) -> Result<Vec<f32>, ModelError> {
        self.expect("<f4")?;
        Ok(self
            .data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect())
    }

    /// The elements of an `<f8` array.
    pub fn f64s(&self) -> Result<Vec<f64>, ModelError> {
        self.expect("<f8")?;
        Ok(self
            .data
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes(b.try_into().expect("chunks of 8")))
            .collect())
    }

    /// The elements of an `<i2` array.
    pub fn i16s(&self) -> Result<Vec<i16>, ModelError> {
        self.expect("<i2")?;
        Ok(self
            .data
            .chunks_exact(2)
            .map(|b| i16::from_le_bytes([b[0], b[1]]))
            .collect())
    }

    /// The elements of an `<i8` array.
    pub fn i64s(&self) -> Result<Vec<i64>, ModelError> {
        self.expect("<i8")?;
        Ok(self
            .data
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().expect("chunks of 8")))
            .collect())
    }
}

/// A version-1 `.npy` file of `descr` elements: numpy's header for `shape`, padded so
/// the data starts at a multiple of 64 bytes, then `data` as given.
fn encode(descr: &str, shape: &[usize], data: &[u8]) -> Vec<u8> {
    // numpy writes a 1-tuple as `(n,)`.
    let dims = match shape {
        [n] => format!("{n},"),
        _ => shape
            .iter()
            .map(usize::to_string)
            .collect::<Vec<_>>()
            .join(", "),
    };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': ({dims}), }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out
}

/// Writes `values` as a float32 `.npy` array of `shape` (C order) to `path`. Refuses a
/// shape whose size is not `values.len()`.
pub fn write_f32(
    path: impl AsRef<Path>,
    shape: &[usize],
    values: &[f32],
) -> Result<(), ModelError> {
    let path = path.as_ref();
    if shape.iter().product::<usize>() != values.len() {
        return Err(ModelError::Npy {
            path: path.to_owned(),
            reason: format!("{} values do not fill shape {shape:?}", values.len()),
        });
    }
    let data: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(path, encode("<f4", shape, &data)).map_err(|source| ModelError::Io {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn npy(descr: &str, shape: &[usize], data: &[u8]) -> Vec<u8> {
        encode(descr, shape, data)
    }

    #[test]
    fn a_written_float_array_reads_back_with_its_shape_and_values() {
        let dir = std::env::temp_dir().join(format!("reflex-npy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for shape in [vec![3], vec![2, 3], vec![1, 3, 1]] {
            let path = dir.join("a.npy");
            let values = [1.5f32, -0.0, f32::MAX, 3.0, -7.25, 1e-30];
            let n: usize = shape.iter().product();
            write_f32(&path, &shape, &values[..n]).unwrap();
            let back = Npy::read(&path).unwrap();
            assert_eq!(back.shape, shape);
            assert_eq!(back.f32s().unwrap(), values[..n].to_vec());
        }
        let err = write_f32(dir.join("b.npy"), &[2, 2], &[1.0]).unwrap_err();
        assert!(
            err.to_string()
                .contains("1 values do not fill shape [2, 2]"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn reads_a_little_endian_int16_matrix() {
        let data: Vec<u8> = [1i16, -2, 300, -32768]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let a = Npy::parse(&npy("<i2", &[2, 2], &data), Path::new("a.npy")).unwrap();
        assert_eq!(a.shape, vec![2, 2]);
        assert_eq!(a.i16s().unwrap(), vec![1, -2, 300, -32768]);
        assert!(a.f32s().is_err(), "wrong element type is refused");
    }

    #[test]
    fn truncated_data_and_bad_magic_are_errors_not_panics() {
        let data = [0u8; 6];
        let err = Npy::parse(&npy("<f4", &[2], &data), Path::new("t.npy")).unwrap_err();
        assert!(err.to_string().contains("6 data bytes"), "{err}");
        assert!(Npy::parse(b"PK\x03\x04", Path::new("z.npy")).is_err());
        let full = npy("<f4", &[2], &[0u8; 8]);
        for cut in 0..full.len() - 8 {
            assert!(
                Npy::parse(&full[..cut], Path::new("c.npy")).is_err(),
                "cut {cut}"
            );
        }
    }
}
