//! Per-channel statistics of a window of any shape: the monitoring features a model
//! declares, for any sensor (the generalisation of the 13 fixed [`features`](crate::features)).
//!
//! A window is `channels × samples` `f32` values, channel-major (all samples of the first
//! channel, then the next). Every statistic is computed in `f64`, per channel, over its
//! `n = samples` values:
//!
//! | [`Stat`] | serde name | feature name | definition |
//! |---|---|---|---|
//! | `Mean` | `mean` | `mean_c` | `Σx / n` |
//! | `Std` | `std` | `std_c` | `√m2`, `m2 = Σ(x − mean)² / n` (population) |
//! | `Rms` | `rms` | `rms_c` | `√(Σx² / n)` |
//! | `Min` | `min` | `min_c` | `min x` |
//! | `Max` | `max` | `max_c` | `max x` |
//! | `Peak` | `peak` | `peak_c` | `max |x − mean|` |
//! | `PeakAbs` | `peak_abs` | `peak_abs_c` | `max |x|` |
//! | `P2p` | `p2p` | `p2p_c` | `max − min` |
//! | `Crest` | `crest` | `crest_c` | `peak_abs / rms` (0 if `rms == 0`) |
//! | `Kurtosis` | `kurtosis` (alias `kurt`) | `kurt_c` | `m4 / m2²`, `m4 = Σ(x − mean)⁴ / n` (not excess; 0 if `m2 == 0`) |
//! | `Skew` | `skew` | `skew_c` | `m3 / m2^1.5`, `m3 = Σ(x − mean)³ / n` (0 if `m2 == 0`) |
//!
//! A [`WindowStats`] spec (the stats, the channel names, the scalar names) names its
//! features `<stat>_<channel>` in stat-major order (every channel of the first stat, then
//! the next stat), then the scalars, and computes them in that order into a caller's
//! buffer. The spec `stats = [mean, std, peak, kurtosis]`, channels `[x, y, z]`, scalars
//! `[temperature]` gives exactly [`FEATURE_NAMES`](crate::FEATURE_NAMES), with values
//! bit-for-bit equal to [`features::compute`](crate::features::compute): the mean and the
//! central moments are summed in the same order (tests/stats.rs checks both).
//!
//! At most two passes over each channel: one for the sum (and, when asked for, the sum of
//! squares and the extrema), one over the deviations from the mean for the central
//! statistics (`std`, `peak`, `kurtosis`, `skew`). The two-pass form is what
//! `features::compute` and `make_models.py` use, and it is the numerically sound one; a
//! channel of up to a few thousand values is still in L1 cache for the second pass.
//! Nothing is allocated beyond the caller's `out`.
//!
//! Non-finite values are not refused here (the decoder refuses them): they propagate into
//! the statistics as IEEE arithmetic makes them, without a panic.

use serde::{Deserialize, Serialize};

/// One per-channel statistic. Serde names are the lowercase names in the module table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Stat {
    /// `Σx / n`.
    #[serde(rename = "mean")]
    Mean,
    /// Population standard deviation.
    #[serde(rename = "std")]
    Std,
    /// Root mean square.
    #[serde(rename = "rms")]
    Rms,
    /// Smallest value.
    #[serde(rename = "min")]
    Min,
    /// Largest value.
    #[serde(rename = "max")]
    Max,
    /// Largest distance from the mean, `max |x − mean|`.
    #[serde(rename = "peak")]
    Peak,
    /// Largest magnitude, `max |x|`.
    #[serde(rename = "peak_abs")]
    PeakAbs,
    /// Peak to peak, `max − min`.
    #[serde(rename = "p2p")]
    P2p,
    /// Crest factor, `peak_abs / rms` (0 when `rms == 0`).
    #[serde(rename = "crest")]
    Crest,
    /// Kurtosis `m4 / m2²`, not excess (0 when `m2 == 0`).
    #[serde(rename = "kurtosis", alias = "kurt")]
    Kurtosis,
    /// Skewness `m3 / m2^1.5` (0 when `m2 == 0`).
    #[serde(rename = "skew")]
    Skew,
}

impl Stat {
    /// Every statistic, in the module table's order.
    pub const ALL: [Stat; 11] = [
        Stat::Mean,
        Stat::Std,
        Stat::Rms,
        Stat::Min,
        Stat::Max,
        Stat::Peak,
        Stat::PeakAbs,
        Stat::P2p,
        Stat::Crest,
        Stat::Kurtosis,
        Stat::Skew,
    ];

    /// The prefix of its feature names, `<prefix>_<channel>`: the serde name, except
    /// `kurt` for [`Stat::Kurtosis`] (the name the 13 fixed features have always used).
    pub fn prefix(self) -> &'static str {
        match self {
            Stat::Mean => "mean",
            Stat::Std => "std",
            Stat::Rms => "rms",
            Stat::Min => "min",
            Stat::Max => "max",
            Stat::Peak => "peak",
            Stat::PeakAbs => "peak_abs",
            Stat::P2p => "p2p",
            Stat::Crest => "crest",
            Stat::Kurtosis => "kurt",
            Stat::Skew => "skew",
        }
    }

    /// Needs the mean-centred pass.
    fn central(self) -> bool {
        matches!(self, Stat::Std | Stat::Peak | Stat::Kurtosis | Stat::Skew)
    }

    /// Needs the extrema or the sum of squares in the first pass.
    fn raw_extra(self) -> bool {
        matches!(
            self,
            Stat::Rms | Stat::Min | Stat::Max | Stat::PeakAbs | Stat::P2p | Stat::Crest
        )
    }

    fn value(self, m: &Moments) -> f64 {
        match self {
            Stat::Mean => m.mean,
            Stat::Std => m.m2.sqrt(),
            Stat::Rms => m.rms,
            Stat::Min => m.min,
            Stat::Max => m.max,
            Stat::Peak => m.peak,
            Stat::PeakAbs => m.peak_abs,
            Stat::P2p => m.max - m.min,
            Stat::Crest => {
                if m.rms > 0.0 {
                    m.peak_abs / m.rms
                } else {
                    0.0
                }
            }
            Stat::Kurtosis => {
                if m.m2 > 0.0 {
                    m.m4 / (m.m2 * m.m2)
                } else {
                    0.0
                }
            }
            Stat::Skew => {
                if m.m2 > 0.0 {
                    m.m3 / (m.m2 * m.m2.sqrt())
                } else {
                    0.0
                }
            }
        }
    }
}

/// A window's shape or scalars do not fit the spec.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StatsError {
    /// The window does not hold `channels × samples` values.
    #[error("window has {actual} values, expected {channels} channels × {samples} samples")]
    WindowLength {
        /// Values given.
        actual: usize,
        /// Channels in the spec.
        channels: usize,
        /// Samples per channel given.
        samples: usize,
    },
    /// Zero samples per channel: no statistic is defined.
    #[error("window has 0 samples per channel, at least 1 is needed for {channels} channels")]
    NoSamples {
        /// Channels in the spec.
        channels: usize,
    },
    /// Not one scalar per declared scalar name.
    #[error("{actual} scalars given, expected {expected}")]
    ScalarCount {
        /// Scalars given.
        actual: usize,
        /// Scalars in the spec.
        expected: usize,
    },
}

/// Which statistics of which channels, and which scalars follow them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowStats {
    /// Statistics, in output order.
    pub stats: Vec<Stat>,
    /// Channel names, in the window's (channel-major) order.
    pub channels: Vec<String>,
    /// Scalar names (e.g. `temperature`), appended after the statistics as given.
    #[serde(default)]
    pub scalars: Vec<String>,
}

/// One channel's sums, the raw material of every [`Stat`].
#[derive(Debug, Default)]
struct Moments {
    mean: f64,
    rms: f64,
    min: f64,
    max: f64,
    peak_abs: f64,
    m2: f64,
    m3: f64,
    m4: f64,
    peak: f64,
}

impl Moments {
    fn of(channel: &[f32], raw_extra: bool, central: bool, skew: bool) -> Moments {
        let n = channel.len() as f64;
        let mut m = Moments::default();
        if raw_extra {
            // -0.0 is the neutral element of f64 addition (and of `Iterator::sum`).
            let (mut sum, mut sq) = (-0.0f64, 0.0f64);
            let (mut min, mut max, mut peak_abs) = (f64::INFINITY, f64::NEG_INFINITY, 0.0f64);
            for &v in channel {
                let x = f64::from(v);
                sum += x;
                sq += x * x;
                min = min.min(x);
                max = max.max(x);
                peak_abs = peak_abs.max(x.abs());
            }
            m.mean = sum / n;
            m.rms = (sq / n).sqrt();
            (m.min, m.max, m.peak_abs) = (min, max, peak_abs);
        } else {
            m.mean = channel.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
        }
        if central {
            // The third moment only when skew is asked for: its sum is one more chain of
            // dependent additions per value (the 13 features on 3 × 64 went from ~900 to
            // ~830 ns without it, benches/README.md).
            let (m2, m3, m4, peak) = if skew {
                central_sums::<true>(channel, m.mean)
            } else {
                central_sums::<false>(channel, m.mean)
            };
            (m.m2, m.m3, m.m4, m.peak) = (m2 / n, m3 / n, m4 / n, peak);
        }
        m
    }
}

/// `Σd², Σd³ (when THIRD), Σd⁴, max |d|` of `d = x − mean`, summed in order.
fn central_sums<const THIRD: bool>(channel: &[f32], mean: f64) -> (f64, f64, f64, f64) {
    let (mut m2, mut m3, mut m4, mut peak) = (0.0f64, 0.0f64, 0.0f64, 0.0f64);
    for &v in channel {
        let d = f64::from(v) - mean;
        let d2 = d * d;
        m2 += d2;
        if THIRD {
            m3 += d2 * d;
        }
        m4 += d2 * d2;
        peak = peak.max(d.abs());
    }
    (m2, m3, m4, peak)
}

impl WindowStats {
    /// Number of features: `stats × channels + scalars`.
    pub fn len(&self) -> usize {
        self.stats.len() * self.channels.len() + self.scalars.len()
    }

    /// True when the spec yields no feature.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Feature names: `<stat>_<channel>` stat-major, then the scalars.
    pub fn names(&self) -> Vec<String> {
        let mut names = Vec::with_capacity(self.len());
        for stat in &self.stats {
            for channel in &self.channels {
                names.push(format!("{}_{channel}", stat.prefix()));
            }
        }
        names.extend(self.scalars.iter().cloned());
        names
    }

    /// Computes the features of one window (`channels × samples` values, channel-major)
    /// and its scalars (one per declared scalar, in order) into `out`, replacing its
    /// content, in [`names`](Self::names) order. `out` keeps its capacity: once it has
    /// held [`len`](Self::len) values, later calls do not allocate.
    pub fn compute(
        &self,
        window: &[f32],
        samples: usize,
        scalars: &[f64],
        out: &mut Vec<f64>,
    ) -> Result<(), StatsError> {
        let channels = self.channels.len();
        if channels > 0 && samples == 0 {
            return Err(StatsError::NoSamples { channels });
        }
        if channels.checked_mul(samples) != Some(window.len()) {
            return Err(StatsError::WindowLength {
                actual: window.len(),
                channels,
                samples,
            });
        }
        if scalars.len() != self.scalars.len() {
            return Err(StatsError::ScalarCount {
                actual: scalars.len(),
                expected: self.scalars.len(),
            });
        }
        let raw_extra = self.stats.iter().any(|s| s.raw_extra());
        let central = self.stats.iter().any(|s| s.central());
        let skew = self.stats.contains(&Stat::Skew);
        out.clear();
        out.resize(self.stats.len() * channels, 0.0);
        // `samples > 0` when there are channels (checked above); chunks of 0 would panic.
        if !self.stats.is_empty() && channels > 0 {
            for (c, channel) in window.chunks_exact(samples).enumerate() {
                let m = Moments::of(channel, raw_extra, central, skew);
                for (s, stat) in self.stats.iter().enumerate() {
                    out[s * channels + c] = stat.value(&m);
                }
            }
        }
        out.extend_from_slice(scalars);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(stats: &[Stat], channels: &[&str], scalars: &[&str]) -> WindowStats {
        WindowStats {
            stats: stats.to_vec(),
            channels: channels.iter().map(|c| c.to_string()).collect(),
            scalars: scalars.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn names_are_stat_major_then_scalars_and_kurtosis_is_kurt() {
        let s = spec(&[Stat::Rms, Stat::Kurtosis], &["a", "b"], &["t"]);
        assert_eq!(s.names(), ["rms_a", "rms_b", "kurt_a", "kurt_b", "t"]);
        assert_eq!(s.len(), 5);
    }

    #[test]
    fn serde_names_are_the_lowercase_names_and_kurt_is_an_alias() {
        let all: Vec<Stat> = serde_json::from_str(
            r#"["mean","std","rms","min","max","peak","peak_abs","p2p","crest","kurtosis","skew"]"#,
        )
        .unwrap();
        assert_eq!(all, Stat::ALL);
        let kurt: Stat = serde_json::from_str(r#""kurt""#).unwrap();
        assert_eq!(kurt, Stat::Kurtosis);
        assert_eq!(
            serde_json::to_string(&Stat::Kurtosis).unwrap(),
            r#""kurtosis""#
        );
        assert_eq!(
            serde_json::to_string(&Stat::PeakAbs).unwrap(),
            r#""peak_abs""#
        );
        let err = serde_json::from_str::<Stat>(r#""Mean""#).unwrap_err();
        assert!(err.to_string().contains("unknown variant `Mean`"), "{err}");
    }

    #[test]
    fn a_spec_with_an_unknown_field_is_refused() {
        let err = serde_json::from_str::<WindowStats>(
            r#"{"stats": ["mean"], "channels": ["x"], "chanels": ["y"]}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("unknown field `chanels`"), "{err}");
    }

    #[test]
    fn every_stat_of_a_known_window() {
        // x = [1, -1, 3, 1]: mean 1, deviations [0, -2, 2, 0], m2 = 2, m3 = 0, m4 = 8.
        let s = spec(&Stat::ALL, &["x"], &[]);
        let mut out = Vec::new();
        s.compute(&[1.0, -1.0, 3.0, 1.0], 4, &[], &mut out).unwrap();
        let rms = 3.0f64.sqrt(); // (1 + 1 + 9 + 1) / 4
        let expected = [
            1.0,
            2.0f64.sqrt(),
            rms,
            -1.0,
            3.0,
            2.0,
            3.0,
            4.0,
            3.0 / rms,
            2.0,
            0.0,
        ];
        assert_eq!(out, expected);
    }

    #[test]
    fn skew_has_the_sign_of_the_long_tail() {
        let s = spec(&[Stat::Skew], &["right", "left"], &[]);
        let mut out = Vec::new();
        s.compute(&[0.0, 0.0, 0.0, 4.0, 0.0, 0.0, 0.0, -4.0], 4, &[], &mut out)
            .unwrap();
        // deviations [-1, -1, -1, 3]: m2 = 3, m3 = (−3 + 27) / 4 = 6, skew = 6 / 3^1.5.
        let skew = 6.0 / (3.0 * 3.0f64.sqrt());
        assert_eq!(out, [skew, -skew]);
    }

    #[test]
    fn an_all_zero_window_has_zero_crest_kurtosis_and_skew() {
        let s = spec(&Stat::ALL, &["x", "y"], &[]);
        let mut out = Vec::new();
        s.compute(&[0.0; 16], 8, &[], &mut out).unwrap();
        assert_eq!(out, [0.0; 22]);
    }

    #[test]
    fn a_window_of_the_wrong_length_is_refused_with_its_shape() {
        let s = spec(&[Stat::Mean], &["x", "y", "z"], &[]);
        let err = s.compute(&[0.0; 10], 4, &[], &mut Vec::new()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "window has 10 values, expected 3 channels × 4 samples"
        );
        let err = s.compute(&[], 0, &[], &mut Vec::new()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "window has 0 samples per channel, at least 1 is needed for 3 channels"
        );
        let err = s
            .compute(&[0.0; 3], usize::MAX, &[], &mut Vec::new())
            .unwrap_err();
        assert!(
            matches!(err, StatsError::WindowLength { actual: 3, .. }),
            "{err}"
        );
    }

    #[test]
    fn the_wrong_number_of_scalars_is_refused() {
        let s = spec(&[Stat::Mean], &["x"], &["temperature", "load"]);
        let err = s.compute(&[1.0], 1, &[20.0], &mut Vec::new()).unwrap_err();
        assert_eq!(err.to_string(), "1 scalars given, expected 2");
    }

    #[test]
    fn a_spec_without_channels_gives_its_scalars_whatever_the_samples() {
        let s = spec(&[Stat::Mean, Stat::Skew], &[], &["temperature"]);
        let mut out = Vec::new();
        for samples in [0, 64] {
            s.compute(&[], samples, &[41.5], &mut out).unwrap();
            assert_eq!(out, [41.5], "{samples} samples");
        }
        assert_eq!(s.names(), ["temperature"]);
    }

    #[test]
    fn out_is_replaced_and_keeps_its_capacity() {
        let s = spec(&[Stat::Mean, Stat::Max], &["x"], &["t"]);
        let mut out = vec![9.0; 32];
        let capacity = out.capacity();
        s.compute(&[1.0, 3.0], 2, &[7.0], &mut out).unwrap();
        assert_eq!(out, [2.0, 3.0, 7.0]);
        assert_eq!(out.capacity(), capacity);
    }
}
