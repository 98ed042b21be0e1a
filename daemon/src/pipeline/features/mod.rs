//! The features a record carries, as its route's model declares them (pure, no I/O).
//!
//! A [`FeaturePlan`] is made once per model from its manifest ([`RoutePlans`] gives
//! each route version its model's) and then computes each decision's features without any
//! string work:
//!
//! - **Format 1** (reflex's own vibration models): the 13 demo features,
//!   `reflex_models::features::compute_slice` of the 3 × 64 window and the temperature,
//!   exactly as before; the record carries no feature set (its features are
//!   `reflex_records::DEMO_FEATURE_NAMES`).
//! - **Format 2**: `monitoring.window_stats` over the window's declared channels
//!   (`reflex_models::stats`, the window split channel-major into equal parts of
//!   `input_len / channels` samples), then the declared scalars. The only scalar an event
//!   carries is the machine temperature (`SensorEvent::temperature_c`), declared as
//!   `temperature` or `temperature_c`; a plan with any other scalar gives no features
//!   for any event. The record names its set (model name and version, ordered names,
//!   encoded once here), unless the names are exactly the 13 demo names.
//!
//! No features (`None`) when the window does not hold the model's input length (or, for
//! format 1, 192 values), or a scalar cannot be supplied: the record is journaled with an
//! empty `features` list and counted, as for format 1.

use reflex_models::manifest::Dim;
use reflex_models::stats::WindowStats;
use reflex_models::Manifest;
use reflex_records::{EncodedFeatureSet, FeatureSet, ModelId};

pub mod plans;

pub use plans::RoutePlans;

/// A scalar an event can supply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scalar {
    /// `SensorEvent::temperature_c`, °C.
    Temperature,
}

impl Scalar {
    fn of(name: &str) -> Option<Scalar> {
        matches!(name, "temperature" | "temperature_c").then_some(Scalar::Temperature)
    }
}

/// How one route's records get their features (module doc).
#[derive(Debug, Clone)]
pub enum FeaturePlan {
    /// Format 1: the 13 demo features.
    Demo,
    /// Format 2: declared window statistics and scalars.
    Declared(Box<Declared>),
}

/// A format-2 plan.
#[derive(Debug, Clone)]
pub struct Declared {
    stats: WindowStats,
    /// Values of the model's input (the window's length it expects).
    input_len: usize,
    /// Samples per channel (`input_len / channels`).
    samples: usize,
    /// The scalars, resolved; `Err(name)`: one the event cannot supply.
    scalars: Result<Vec<Scalar>, String>,
    /// The set the record names (None: the demo names).
    set: Option<EncodedFeatureSet>,
}

impl FeaturePlan {
    /// The plan of a model from its manifest.
    pub fn of(manifest: &Manifest) -> FeaturePlan {
        let Some(f) = &manifest.format2 else {
            return FeaturePlan::Demo;
        };
        let stats = f.monitoring.stats();
        let input_len = manifest.input.as_ref().map_or(0, |i| {
            i.shape
                .iter()
                .skip(1)
                .map(|d| match d {
                    Dim::Fixed(n) => *n,
                    Dim::Symbol(_) => 0,
                })
                .product()
        });
        let channels = stats.channels.len();
        let samples = input_len.checked_div(channels).unwrap_or(0);
        let scalars = stats
            .scalars
            .iter()
            .map(|n| Scalar::of(n).ok_or_else(|| n.clone()))
            .collect();
        let set = FeatureSet {
            model: ModelId {
                name: manifest.name.clone(),
                version: manifest.version.clone(),
            },
            names: stats.names(),
        };
        FeaturePlan::Declared(Box::new(Declared {
            set: (!set.is_demo()).then(|| set.encoded()),
            stats,
            input_len,
            samples,
            scalars,
        }))
    }

    /// The set records of this plan name (None: the demo features).
    pub fn feature_set(&self) -> Option<&EncodedFeatureSet> {
        match self {
            FeaturePlan::Demo => None,
            FeaturePlan::Declared(d) => d.set.as_ref(),
        }
    }

    /// A declared scalar no event can supply (every record of the plan has no features).
    pub fn unsupported_scalar(&self) -> Option<&str> {
        match self {
            FeaturePlan::Declared(d) => d.scalars.as_ref().err().map(String::as_str),
            _ => None,
        }
    }

    /// The features of one window (in g or the sensor's unit, channel-major) and its
    /// temperature into `out` (replaced); false, with `out` empty, when there are none
    /// (module doc). `out` keeps its capacity.
    pub fn compute(&self, window: &[f32], temperature_c: f32, out: &mut Vec<f64>) -> bool {
        out.clear();
        match self {
            FeaturePlan::Demo => {
                match reflex_models::features::compute_slice(window, temperature_c) {
                    Ok(f) => {
                        out.extend_from_slice(&f);
                        true
                    }
                    Err(_) => false,
                }
            }
            FeaturePlan::Declared(d) => {
                let Ok(scalars) = &d.scalars else {
                    return false;
                };
                if window.len() != d.input_len {
                    return false;
                }
                // At most a handful of scalars, all the temperature today.
                let mut values = [0.0f64; 8];
                if scalars.len() > values.len() {
                    return false;
                }
                for (v, s) in values.iter_mut().zip(scalars) {
                    *v = match s {
                        Scalar::Temperature => f64::from(temperature_c),
                    };
                }
                let ok = d
                    .stats
                    .compute(window, d.samples, &values[..scalars.len()], out)
                    .is_ok();
                if !ok {
                    out.clear();
                }
                ok
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn models_dir() -> std::path::PathBuf {
        concat!(env!("CARGO_MANIFEST_DIR"), "/../models").into()
    }

    /// A format-2 manifest of the test models with `monitoring` (JSON) and an input of
    /// `dims` values per row (the reference is left as it is: not read here).
    fn format2(monitoring: &str, dims: &[usize]) -> Manifest {
        let mut m =
            Manifest::load(models_dir().join("examples/test/score16.manifest.json")).unwrap();
        m.name = "motor".into();
        m.version = "1.0.0".into();
        m.format2.as_mut().unwrap().monitoring = serde_json::from_str(monitoring).unwrap();
        let input = m.input.as_mut().unwrap();
        input.shape = std::iter::once(Dim::Symbol("N".into()))
            .chain(dims.iter().map(|&d| Dim::Fixed(d)))
            .collect();
        m
    }

    #[test]
    fn a_format_one_model_gives_the_thirteen_demo_features_and_no_set() {
        let m = Manifest::load(models_dir().join("edge.manifest.json")).unwrap();
        let plan = FeaturePlan::of(&m);
        assert!(plan.feature_set().is_none());
        let window: Vec<f32> = (0..192).map(|i| (i as f32 * 0.1).sin()).collect();
        let mut out = Vec::new();
        assert!(plan.compute(&window, 41.0, &mut out));
        let expected = reflex_models::features::compute_slice(&window, 41.0).unwrap();
        assert_eq!(out, expected);
        assert!(!plan.compute(&window[..100], 41.0, &mut out));
        assert!(out.is_empty());
    }

    #[test]
    fn a_format_two_model_gives_its_declared_stats_then_the_temperature() {
        let m = format2(
            r#"{"window_stats": {"stats": ["mean", "max"], "channels": ["current", "temp"]}, "scalars": ["temperature"]}"#,
            &[4],
        );
        let plan = FeaturePlan::of(&m);
        let set = plan.feature_set().expect("not the demo names").set();
        assert_eq!(
            (set.model.name.as_str(), set.model.version.as_str()),
            ("motor", "1.0.0")
        );
        assert_eq!(
            set.names,
            [
                "mean_current",
                "mean_temp",
                "max_current",
                "max_temp",
                "temperature"
            ]
        );
        let mut out = Vec::new();
        assert!(plan.compute(&[1.0, 3.0, 20.0, 30.0], 55.5, &mut out));
        assert_eq!(out, [2.0, 25.0, 3.0, 30.0, 55.5]);
        assert!(
            !plan.compute(&[1.0, 3.0, 20.0], 55.5, &mut out),
            "not the model's input length"
        );
    }

    #[test]
    fn a_scalar_the_event_cannot_supply_means_no_features() {
        let m = format2(
            r#"{"window_stats": {"stats": ["rms"], "channels": ["a"]}, "scalars": ["load"]}"#,
            &[3],
        );
        let plan = FeaturePlan::of(&m);
        assert_eq!(plan.unsupported_scalar(), Some("load"));
        let mut out = vec![1.0];
        assert!(!plan.compute(&[1.0, 2.0, 3.0], 20.0, &mut out));
        assert!(out.is_empty());
    }

    #[test]
    fn declared_features_named_as_the_demo_ones_need_no_set() {
        let m = format2(
            r#"{"window_stats": {"stats": ["mean", "std", "peak", "kurt"], "channels": ["x", "y", "z"]}, "scalars": ["temperature"]}"#,
            &[3, 64],
        );
        let plan = FeaturePlan::of(&m);
        assert!(plan.feature_set().is_none());
        let window: Vec<f32> = (0..192).map(|i| (i as f32 * 0.37).cos()).collect();
        let mut out = Vec::new();
        assert!(plan.compute(&window, 30.0, &mut out));
        let demo = reflex_models::features::compute_slice(&window, 30.0).unwrap();
        assert_eq!(out, demo, "bit for bit the 13 demo features");
    }
}
