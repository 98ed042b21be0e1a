//! The 13 cheap features: the fallback model's input and the drift monitor's signal.
//!
//! Computed in `f64` from the window in g, channel-major (all x, then y, then z), exactly
//! as `features()` in `models/make_models.py`:
//!
//! | index | name | definition |
//! |-------|------|------------|
//! | 0–2   | `mean_c` | `Σx / 64` |
//! | 3–5   | `std_c`  | `√m2`, `m2 = Σ(x − mean_c)² / 64` (population) |
//! | 6–8   | `peak_c` | `max |x − mean_c|` |
//! | 9–11  | `kurt_c` | `m4 / m2²`, `m4 = Σ(x − mean_c)⁴ / 64` (not excess; 0 if `m2 == 0`) |
//! | 12    | `temperature` | °C |

use crate::{ModelError, CHANNELS, WINDOW, WINDOW_LEN};

/// Number of features.
pub const FEATURE_COUNT: usize = 13;

/// Feature names, in order.
pub const FEATURE_NAMES: [&str; FEATURE_COUNT] = [
    "mean_x",
    "mean_y",
    "mean_z",
    "std_x",
    "std_y",
    "std_z",
    "peak_x",
    "peak_y",
    "peak_z",
    "kurt_x",
    "kurt_y",
    "kurt_z",
    "temperature",
];

/// A feature vector, in [`FEATURE_NAMES`] order.
pub type Features = [f64; FEATURE_COUNT];

/// Computes the features of one window (3 × 64 values in g, channel-major) and its
/// temperature (°C).
pub fn compute(window_g: &[f32; WINDOW_LEN], temperature_c: f32) -> Features {
    let mut out = [0.0; FEATURE_COUNT];
    for (c, channel) in window_g.chunks_exact(WINDOW).enumerate().take(CHANNELS) {
        let n = WINDOW as f64;
        let mean = channel.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
        let (mut m2, mut m4, mut peak) = (0.0f64, 0.0f64, 0.0f64);
        for &v in channel {
            let d = f64::from(v) - mean;
            let d2 = d * d;
            m2 += d2;
            m4 += d2 * d2;
            peak = peak.max(d.abs());
        }
        m2 /= n;
        m4 /= n;
        out[c] = mean;
        out[CHANNELS + c] = m2.sqrt();
        out[2 * CHANNELS + c] = peak;
        out[3 * CHANNELS + c] = if m2 > 0.0 { m4 / (m2 * m2) } else { 0.0 };
    }
    out[4 * CHANNELS] = f64::from(temperature_c);
    out
}

/// [`compute`] for a slice, which must hold exactly 192 values.
pub fn compute_slice(window_g: &[f32], temperature_c: f32) -> Result<Features, ModelError> {
    let window: &[f32; WINDOW_LEN] = window_g.try_into().map_err(|_| ModelError::InputLength {
        expected: WINDOW_LEN,
        actual: window_g.len(),
    })?;
    Ok(compute(window, temperature_c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_constant_window_has_zero_spread_and_zero_kurtosis() {
        let f = compute(&[0.5; WINDOW_LEN], 40.0);
        assert_eq!(&f[0..3], &[0.5; 3]);
        assert_eq!(&f[3..12], &[0.0; 9]);
        assert_eq!(f[12], 40.0);
    }

    #[test]
    fn a_square_wave_has_kurtosis_one_and_peak_equal_to_std() {
        let mut w = [0.0f32; WINDOW_LEN];
        for (i, v) in w.iter_mut().enumerate() {
            *v = if i % 2 == 0 { 1.0 } else { -1.0 };
        }
        let f = compute(&w, 0.0);
        for c in 0..3 {
            assert_eq!(f[c], 0.0);
            assert_eq!(f[3 + c], 1.0);
            assert_eq!(f[6 + c], 1.0);
            assert_eq!(f[9 + c], 1.0);
        }
    }

    #[test]
    fn a_slice_of_the_wrong_length_is_refused() {
        let err = compute_slice(&[0.0; 10], 0.0).unwrap_err();
        assert_eq!(err.to_string(), "input has 10 values, expected 192");
    }
}
