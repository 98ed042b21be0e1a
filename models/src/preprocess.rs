//! The manifest's preprocessing steps, compiled for one input shape and applied to rows
//! of `f32` values: no I/O, no tract, so that the arithmetic is tested on its own.
//!
//! Every step computes in `f32` exactly as written in the manifest contract, so a
//! format-1 manifest's `(x − mean[c]) / std[c]` gives the same bits as before format 2.

use crate::manifest::format2::{Dtype, Step};

/// One compiled step.
#[derive(Debug, Clone, PartialEq)]
enum Op {
    Scale(f32),
    Offset(f32),
    Clip(f32, f32),
    /// `inner` = values per channel slice (product of the dimensions after the axis).
    Standardize {
        inner: usize,
        mean: Vec<f32>,
        std: Vec<f32>,
    },
}

/// The quantize step of an integer input.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Quantize {
    /// Step size.
    pub scale: f32,
    /// The integer standing for 0.
    pub zero_point: i32,
    /// The dtype's range.
    pub range: (i32, i32),
}

impl Quantize {
    /// `clamp(round_half_even(x / scale) + zero_point)` to the range, as an `i32`
    /// (NaN gives the zero point).
    pub fn apply(&self, x: f32) -> i32 {
        let q = (x / self.scale).round_ties_even();
        if q.is_nan() {
            return self.zero_point;
        }
        let (lo, hi) = self.range;
        (q as i64 + i64::from(self.zero_point)).clamp(i64::from(lo), i64::from(hi)) as i32
    }
}

/// Steps compiled for rows of a given shape.
#[derive(Debug, Clone, PartialEq)]
pub struct Preprocess {
    ops: Vec<Op>,
    quantize: Option<Quantize>,
}

impl Preprocess {
    /// Compiles `steps` for rows of shape `dims` (the input shape without the batch
    /// dimension, so a step's `axis` is `dims[axis - 1]`) and element type `dtype`.
    /// The manifest was validated: axes, lengths and the quantize position are right;
    /// an error here names what is not.
    pub fn new(steps: &[Step], dims: &[usize], dtype: Dtype) -> Result<Preprocess, String> {
        let mut ops = Vec::with_capacity(steps.len());
        let mut quantize = None;
        for (i, step) in steps.iter().enumerate() {
            match step {
                Step::Scale { factor } => ops.push(Op::Scale(*factor as f32)),
                Step::Offset { value } => ops.push(Op::Offset(*value as f32)),
                Step::Clip { min, max } => ops.push(Op::Clip(*min as f32, *max as f32)),
                Step::PerChannelStandardize { axis, mean, std } => {
                    let n = axis
                        .checked_sub(1)
                        .and_then(|a| dims.get(a))
                        .copied()
                        .ok_or_else(|| format!("preprocessing[{i}].axis {axis} is not a dimension of {dims:?} after the batch"))?;
                    if mean.len() != n || std.len() != n {
                        return Err(format!(
                            "preprocessing[{i}] needs {n} means and stds, has {} and {}",
                            mean.len(),
                            std.len()
                        ));
                    }
                    ops.push(Op::Standardize {
                        inner: dims[*axis..].iter().product(),
                        mean: mean.iter().map(|&m| m as f32).collect(),
                        std: std.iter().map(|&s| s as f32).collect(),
                    });
                }
                Step::Quantize { scale, zero_point } => {
                    let range = dtype
                        .int_range()
                        .ok_or_else(|| format!("preprocessing[{i}] quantizes a float32 input"))?;
                    if i + 1 != steps.len() {
                        return Err(format!("preprocessing[{i}] quantize is not the last step"));
                    }
                    quantize = Some(Quantize {
                        scale: *scale as f32,
                        zero_point: *zero_point,
                        range,
                    });
                }
            }
        }
        if dtype.int_range().is_some() && quantize.is_none() {
            return Err(format!("input dtype {} has no quantize step", dtype.name()));
        }
        Ok(Preprocess { ops, quantize })
    }

    /// The quantize step, for integer inputs.
    pub fn quantize(&self) -> Option<Quantize> {
        self.quantize
    }

    /// Applies every step but the quantization to one row, in place.
    pub fn apply(&self, row: &mut [f32]) {
        for op in &self.ops {
            match op {
                Op::Scale(f) => row.iter_mut().for_each(|x| *x *= f),
                Op::Offset(v) => row.iter_mut().for_each(|x| *x += v),
                Op::Clip(lo, hi) => row.iter_mut().for_each(|x| *x = x.max(*lo).min(*hi)),
                Op::Standardize { inner, mean, std } => {
                    for (slice, chunk) in row.chunks_mut(*inner).enumerate() {
                        let c = slice % mean.len();
                        let (m, s) = (mean[c], std[c]);
                        chunk.iter_mut().for_each(|x| *x = (*x - m) / s);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn standardize(axis: usize, mean: &[f64], std: &[f64]) -> Step {
        Step::PerChannelStandardize {
            axis,
            mean: mean.to_vec(),
            std: std.to_vec(),
        }
    }

    #[test]
    fn standardize_picks_the_channel_along_its_axis() {
        // dims [2, 3]: axis 1 = the 2 rows, axis 2 = the 3 columns.
        let rows = Preprocess::new(
            &[standardize(1, &[1.0, 2.0], &[1.0, 2.0])],
            &[2, 3],
            Dtype::Float32,
        )
        .unwrap();
        let mut v = [1.0, 2.0, 3.0, 2.0, 4.0, 6.0];
        rows.apply(&mut v);
        assert_eq!(v, [0.0, 1.0, 2.0, 0.0, 1.0, 2.0]);
        let cols = Preprocess::new(
            &[standardize(2, &[0.0, 1.0, 2.0], &[1.0, 1.0, 2.0])],
            &[2, 3],
            Dtype::Float32,
        )
        .unwrap();
        let mut v = [1.0, 2.0, 4.0, 5.0, 6.0, 8.0];
        cols.apply(&mut v);
        assert_eq!(v, [1.0, 1.0, 1.0, 5.0, 5.0, 3.0]);
    }

    #[test]
    fn steps_apply_in_manifest_order() {
        let steps = [
            Step::Offset { value: 1.0 },
            Step::Scale { factor: 10.0 },
            Step::Clip {
                min: 0.0,
                max: 25.0,
            },
        ];
        let p = Preprocess::new(&steps, &[3], Dtype::Float32).unwrap();
        let mut v = [-2.0, 0.5, 9.0];
        p.apply(&mut v);
        assert_eq!(v, [0.0, 15.0, 25.0]);
    }

    #[test]
    fn quantize_rounds_half_to_even_and_saturates_at_the_dtype_range() {
        let q = |dtype: Dtype, zero_point| {
            Preprocess::new(
                &[Step::Quantize {
                    scale: 0.5,
                    zero_point,
                }],
                &[1],
                dtype,
            )
            .unwrap()
            .quantize()
            .unwrap()
        };
        let i8q = q(Dtype::Int8, 0);
        assert_eq!(i8q.apply(0.25), 0, "0.5 rounds to 0");
        assert_eq!(i8q.apply(0.75), 2, "1.5 rounds to 2");
        assert_eq!(i8q.apply(1000.0), 127);
        assert_eq!(i8q.apply(-1000.0), -128);
        assert_eq!(i8q.apply(f32::NAN), 0);
        let u8q = q(Dtype::Uint8, 128);
        assert_eq!(u8q.apply(-1.0), 126);
        assert_eq!(u8q.apply(-1000.0), 0);
        assert_eq!(q(Dtype::Int16, 0).apply(1e9), 32767);
    }

    #[test]
    fn an_integer_dtype_without_quantize_and_a_misplaced_quantize_are_errors() {
        let err = Preprocess::new(&[], &[4], Dtype::Int8).unwrap_err();
        assert_eq!(err, "input dtype int8 has no quantize step");
        let steps = [
            Step::Quantize {
                scale: 1.0,
                zero_point: 0,
            },
            Step::Offset { value: 1.0 },
        ];
        assert!(Preprocess::new(&steps, &[4], Dtype::Int8).is_err());
        let err = Preprocess::new(&[standardize(3, &[0.0], &[1.0])], &[4, 2], Dtype::Float32)
            .unwrap_err();
        assert!(err.contains("axis 3"), "{err}");
    }

    proptest! {
        #[test]
        fn quantize_stays_in_range_and_inverts_within_half_a_step(
            x in -300.0f32..300.0,
            scale in 0.01f32..4.0,
            zero_point in -20i32..20,
        ) {
            let q = Quantize { scale, zero_point, range: (-128, 127) };
            let v = q.apply(x);
            prop_assert!((-128..=127).contains(&v));
            let back = (v - zero_point) as f32 * scale;
            let lo = (-128 - zero_point) as f32 * scale;
            let hi = (127 - zero_point) as f32 * scale;
            if x > lo && x < hi {
                prop_assert!((back - x).abs() <= scale * 0.5 + 1e-4 * x.abs().max(1.0));
            }
        }

        #[test]
        fn standardize_over_axis_one_equals_the_format_one_formula(
            values in proptest::collection::vec(-4.0f32..4.0, 3 * 8),
            mean in proptest::collection::vec(-1.0f64..1.0, 3),
            std in proptest::collection::vec(0.01f64..2.0, 3),
        ) {
            let p = Preprocess::new(&[standardize(1, &mean, &std)], &[3, 8], Dtype::Float32).unwrap();
            let mut got = values.clone();
            p.apply(&mut got);
            for (i, (g, x)) in got.iter().zip(&values).enumerate() {
                let c = i / 8;
                let want = (x - mean[c] as f32) / std[c] as f32;
                prop_assert_eq!(g.to_bits(), want.to_bits());
            }
        }
    }
}
