//! How the fleet's event rate and its sensors' distortion evolve over a run.

use crate::signal::Distortion;

/// A load and drift pattern over time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Scenario {
    /// Every device sends at its nominal rate, calibrated, for the whole run.
    Steady,
    /// Every `period_s`, the rate is multiplied by `factor` for `burst_s`.
    Burst {
        /// Time between burst starts, s.
        period_s: f64,
        /// Burst length, s.
        burst_s: f64,
        /// Rate multiplier during a burst.
        factor: f64,
    },
    /// From `start_s`, the drifting devices' sensors move linearly over `ramp_s` from
    /// calibrated to `target` (gain, offset, noise floor), then stay there.
    Drift {
        /// When drift starts, s into the run.
        start_s: f64,
        /// How long until `target` is reached, s.
        ramp_s: f64,
        /// The distortion reached at the end of the ramp.
        target: Distortion,
    },
}

impl Scenario {
    /// The default drift: gain +60 %, +0.05 g offset, noise floor doubled.
    pub const DEFAULT_DRIFT_TARGET: Distortion = Distortion {
        gain: 1.6,
        offset_g: 0.05,
        extra_noise_g: 0.03,
    };

    /// Multiplier of the nominal rate at `t_s` seconds into the run.
    pub fn rate_factor(&self, t_s: f64) -> f64 {
        match *self {
            Scenario::Burst {
                period_s,
                burst_s,
                factor,
            } if period_s > 0.0 && t_s.rem_euclid(period_s) < burst_s => factor,
            _ => 1.0,
        }
    }

    /// Distortion of a drifting device at `t_s` seconds into the run (calibrated for
    /// every scenario but [`Scenario::Drift`]).
    pub fn distortion(&self, t_s: f64) -> Distortion {
        match *self {
            Scenario::Drift {
                start_s,
                ramp_s,
                target,
            } => {
                let progress = if t_s <= start_s {
                    0.0
                } else if ramp_s <= 0.0 {
                    1.0
                } else {
                    ((t_s - start_s) / ramp_s).min(1.0) as f32
                };
                let lerp = |a: f32, b: f32| a + (b - a) * progress;
                Distortion {
                    gain: lerp(1.0, target.gain),
                    offset_g: lerp(0.0, target.offset_g),
                    extra_noise_g: lerp(0.0, target.extra_noise_g),
                }
            }
            _ => Distortion::NONE,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_multiplies_the_rate_only_inside_the_burst() {
        let s = Scenario::Burst {
            period_s: 10.0,
            burst_s: 2.0,
            factor: 5.0,
        };
        assert_eq!(s.rate_factor(0.5), 5.0);
        assert_eq!(s.rate_factor(3.0), 1.0);
        assert_eq!(s.rate_factor(11.9), 5.0);
        assert_eq!(Scenario::Steady.rate_factor(1.0), 1.0);
    }

    #[test]
    fn drift_ramps_linearly_then_holds() {
        let target = Distortion {
            gain: 2.0,
            offset_g: 0.1,
            extra_noise_g: 0.2,
        };
        let s = Scenario::Drift {
            start_s: 10.0,
            ramp_s: 10.0,
            target,
        };
        assert_eq!(s.distortion(5.0), Distortion::NONE);
        let mid = s.distortion(15.0);
        assert!((mid.gain - 1.5).abs() < 1e-6 && (mid.offset_g - 0.05).abs() < 1e-6);
        assert_eq!(s.distortion(100.0), target);
        assert_eq!(Scenario::Steady.distortion(100.0), Distortion::NONE);
    }
}
