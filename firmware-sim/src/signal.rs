//! Vibration and temperature of a rotating machine in one of four conditions.
//!
//! Each window is 3 axes × 64 samples at 1 kHz (64 ms, 1–3 shaft turns). The conditions
//! differ the way they do on real machines, with a random severity so that mild faults
//! overlap with healthy machines and no classifier is perfect:
//! - healthy: a small 1× shaft component and sensor noise;
//! - imbalance: a strong 1× component on both radial axes, 90° apart;
//! - misalignment: a strong 2× component, largest on the axial axis;
//! - bearing fault: short ringing bursts at the outer-race defect frequency (3.57× shaft),
//!   which raise kurtosis and crest factor more than RMS.
//!
//! A [`Distortion`] models what happens to a sensor in the field (gain, offset, noise
//! floor) and drives the drift scenario.

use crate::rng::Rng;

/// Axes per window: x, y (radial) and z (axial).
pub const CHANNELS: usize = 3;
/// Samples per axis per window.
pub const WINDOW: usize = 64;
/// Sampling rate, Hz.
pub const SAMPLE_RATE_HZ: u32 = 1000;
/// ADC counts per g (a ±16 g accelerometer on 16 bits).
pub const COUNTS_PER_G: f32 = 2048.0;

/// A machine condition: the class the models learn. The discriminant is the class index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Condition {
    /// Nothing wrong.
    Healthy = 0,
    /// Rotor mass imbalance.
    Imbalance = 1,
    /// Outer-race bearing defect.
    BearingFault = 2,
    /// Shaft misalignment.
    Misalignment = 3,
}

impl Condition {
    /// Every condition, in class-index order.
    pub const ALL: [Condition; 4] = [
        Condition::Healthy,
        Condition::Imbalance,
        Condition::BearingFault,
        Condition::Misalignment,
    ];

    /// The class name used in datasets and manifests.
    pub fn name(self) -> &'static str {
        match self {
            Condition::Healthy => "healthy",
            Condition::Imbalance => "imbalance",
            Condition::BearingFault => "bearing_fault",
            Condition::Misalignment => "misalignment",
        }
    }

    /// The class index.
    pub fn index(self) -> usize {
        self as usize
    }
}

/// What the field does to a sensor: applied after the machine's own signal.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Distortion {
    /// Multiplies the signal (1.0 = calibrated).
    pub gain: f32,
    /// Added to every sample, in g.
    pub offset_g: f32,
    /// Extra white noise, standard deviation in g.
    pub extra_noise_g: f32,
}

impl Distortion {
    /// A calibrated sensor.
    pub const NONE: Distortion = Distortion {
        gain: 1.0,
        offset_g: 0.0,
        extra_noise_g: 0.0,
    };
}

impl Default for Distortion {
    fn default() -> Self {
        Distortion::NONE
    }
}

/// One synthesised window in physical units, before quantisation.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    /// Acceleration in g, per axis.
    pub accel_g: [[f32; WINDOW]; CHANNELS],
    /// Machine temperature, °C.
    pub temperature_c: f32,
}

/// Sensor noise floor, g.
const NOISE_G: f32 = 0.03;

/// Synthesises one window of `condition` with the given field distortion.
// Sample-index loops read like the signal equations they implement.
#[allow(clippy::needless_range_loop)]
pub fn synthesize(condition: Condition, distortion: Distortion, rng: &mut Rng) -> Reading {
    let fs = SAMPLE_RATE_HZ as f32;
    let shaft_hz = rng.range(18.0, 42.0);
    let w = core::f32::consts::TAU * shaft_hz / fs;
    let phase = rng.range(0.0, core::f32::consts::TAU);
    let base = rng.range(0.03, 0.08);
    // Mild faults overlap with healthy machines; severe ones are unmistakable.
    let severity = rng.range(0.1, 1.0);
    let mut accel = [[0.0f32; WINDOW]; CHANNELS];

    for i in 0..WINDOW {
        let t = i as f32;
        let s1 = (w * t + phase).sin();
        let c1 = (w * t + phase).cos();
        accel[0][i] = base * s1;
        accel[1][i] = base * c1;
        accel[2][i] = 0.3 * base * s1;
    }

    let temperature_c = match condition {
        Condition::Healthy => 45.0 + 3.0 * rng.normal(),
        Condition::Imbalance => {
            let a = severity * rng.range(0.12, 0.45);
            for i in 0..WINDOW {
                let t = i as f32;
                accel[0][i] += a * (w * t + phase).sin();
                accel[1][i] += a * (w * t + phase).cos();
                accel[2][i] += 0.1 * a * (w * t + phase).sin();
            }
            47.0 + 3.0 * severity + 3.0 * rng.normal()
        }
        Condition::Misalignment => {
            let a = severity * rng.range(0.10, 0.35);
            let phase2 = rng.range(0.0, core::f32::consts::TAU);
            for i in 0..WINDOW {
                let t = i as f32;
                let two = (2.0 * w * t + phase2).sin();
                accel[2][i] += a * two + 0.5 * a * (w * t + phase).sin();
                accel[0][i] += 0.5 * a * two;
                accel[1][i] += 0.3 * a * (2.0 * w * t + phase2).cos();
            }
            49.0 + 5.0 * severity + 3.0 * rng.normal()
        }
        Condition::BearingFault => {
            let a = severity * rng.range(0.4, 1.2);
            let ring = core::f32::consts::TAU * rng.range(180.0, 280.0) / fs;
            let period = fs / (3.57 * shaft_hz); // samples between impacts
            let mut impact = rng.range(0.0, period);
            while impact < WINDOW as f32 {
                let start = impact.ceil() as usize;
                for i in start..WINDOW {
                    let dt = i as f32 - impact;
                    let v = a * (-dt * 0.25).exp() * (ring * dt).sin();
                    accel[1][i] += v;
                    accel[0][i] += 0.4 * v;
                    accel[2][i] += 0.2 * v;
                }
                impact += period * rng.range(0.95, 1.05);
            }
            48.0 + 10.0 * severity + 3.0 * rng.normal()
        }
    };

    let noise = NOISE_G + distortion.extra_noise_g;
    for axis in accel.iter_mut() {
        for v in axis.iter_mut() {
            *v = distortion.gain * (*v + noise * rng.normal()) + distortion.offset_g;
        }
    }
    Reading {
        accel_g: accel,
        temperature_c,
    }
}

/// Quantises g to ADC counts, saturating like a real ADC.
pub fn to_counts(g: f32) -> i16 {
    (g * COUNTS_PER_G)
        .round()
        .clamp(f32::from(i16::MIN), f32::from(i16::MAX)) as i16
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rms(x: &[f32]) -> f32 {
        (x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32).sqrt()
    }

    fn kurtosis(x: &[f32]) -> f32 {
        let n = x.len() as f32;
        let m = x.iter().sum::<f32>() / n;
        let v = x.iter().map(|a| (a - m).powi(2)).sum::<f32>() / n;
        x.iter().map(|a| (a - m).powi(4)).sum::<f32>() / n / (v * v)
    }

    fn mean_over(cond: Condition, f: impl Fn(&Reading) -> f32) -> f32 {
        let mut rng = Rng::new(42, cond as u64);
        (0..400)
            .map(|_| f(&synthesize(cond, Distortion::NONE, &mut rng)))
            .sum::<f32>()
            / 400.0
    }

    #[test]
    fn imbalance_raises_radial_rms_over_healthy() {
        let radial = |r: &Reading| rms(&r.accel_g[0]);
        assert!(
            mean_over(Condition::Imbalance, radial) > 2.0 * mean_over(Condition::Healthy, radial)
        );
    }

    #[test]
    fn misalignment_raises_axial_rms_over_imbalance() {
        let axial = |r: &Reading| rms(&r.accel_g[2]);
        assert!(
            mean_over(Condition::Misalignment, axial)
                > 2.0 * mean_over(Condition::Imbalance, axial)
        );
    }

    #[test]
    fn bearing_fault_raises_kurtosis_over_imbalance() {
        let k = |r: &Reading| kurtosis(&r.accel_g[1]);
        assert!(mean_over(Condition::BearingFault, k) > mean_over(Condition::Imbalance, k) + 0.5);
    }

    #[test]
    fn synthesis_is_deterministic_from_the_seed() {
        let a = synthesize(
            Condition::BearingFault,
            Distortion::NONE,
            &mut Rng::new(9, 1),
        );
        let b = synthesize(
            Condition::BearingFault,
            Distortion::NONE,
            &mut Rng::new(9, 1),
        );
        assert_eq!(a, b);
    }

    #[test]
    fn gain_distortion_scales_the_signal() {
        let calm = synthesize(Condition::Healthy, Distortion::NONE, &mut Rng::new(3, 3));
        let hot = synthesize(
            Condition::Healthy,
            Distortion {
                gain: 2.0,
                ..Distortion::NONE
            },
            &mut Rng::new(3, 3),
        );
        let ratio = rms(&hot.accel_g[0]) / rms(&calm.accel_g[0]);
        assert!((ratio - 2.0).abs() < 1e-3, "ratio {ratio}");
    }

    #[test]
    fn counts_saturate_instead_of_wrapping() {
        assert_eq!(to_counts(100.0), i16::MAX);
        assert_eq!(to_counts(-100.0), i16::MIN);
        assert_eq!(to_counts(0.5), 1024);
    }
}
