//! One tumbling window of one route: what is collected while it is open (a sketch per
//! feature, predicted-class counts, fallback and deadline-miss counts) and the
//! [`WindowSummary`] it becomes when it closes, which rides with the uploads.
//!
//! Memory per open window is bounded by the sketches (`3k + 128` values per feature) plus
//! one counter per class, whatever the event rate.

use serde::{Deserialize, Serialize};

use crate::error::DriftError;
use crate::profile::Reference;
use crate::sketch::QuantileSketch;
use crate::stats::jensen_shannon::jensen_shannon_distance;
use crate::stats::verdict::{
    dataset_drift, feature_drift, DatasetDrift, DriftThresholds, FeatureDrift,
};

/// Drift of one window against the reference.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WindowDrift {
    /// Per feature (features whose sketch is empty are left out).
    pub features: Vec<FeatureDrift>,
    /// The dataset-level verdict.
    pub dataset: DatasetDrift,
    /// Jensen–Shannon distance (base 2) of the model's predicted classes to the reference
    /// fractions; `None` when the model predicted nothing in the window.
    pub class_js_distance: Option<f64>,
    /// `class_js_distance ≥ thresholds.js_distance`.
    pub class_drift: bool,
}

/// A closed window: counts, the sketches themselves (mergeable across windows and boards),
/// and the drift scores.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WindowSummary {
    /// The route.
    pub route: String,
    /// `start_ms / window_ms`.
    pub index: u64,
    /// Start, caller's clock (ms), inclusive.
    pub start_ms: u64,
    /// End (ms), exclusive.
    pub end_ms: u64,
    /// Events recorded.
    pub events: u64,
    /// Events whose class was predicted by the model, per class.
    pub model_class_counts: Vec<u64>,
    /// Events answered by the fallback.
    pub fallbacks: u64,
    /// Events that missed their deadline.
    pub deadline_misses: u64,
    /// Feature values that were NaN or infinite and so not sketched.
    pub non_finite_values: u64,
    /// Feature names, in sketch order.
    pub feature_names: Vec<String>,
    /// One sketch per feature.
    pub sketches: Vec<QuantileSketch>,
    /// Drift against the reference; `None` when the window had fewer events than
    /// `min_events`.
    pub drift: Option<WindowDrift>,
}

/// Version byte that starts an encoded [`WindowSummary`].
pub const WINDOW_FORMAT_VERSION: u8 = 1;

impl WindowSummary {
    /// The compact form that rides with uploads: [`WINDOW_FORMAT_VERSION`], then postcard
    /// (floats as 8 little-endian bytes; at `k = 200` a route's window of 13 features is at
    /// most about 77 KB, a third of its JSON).
    pub fn encode(&self) -> Vec<u8> {
        let out = vec![WINDOW_FORMAT_VERSION];
        // Serializing owned plain data into a Vec cannot fail.
        postcard::to_extend(self, out).expect("postcard to Vec is infallible")
    }

    /// Reads [`WindowSummary::encode`]'s bytes; refuses another version, trailing bytes and
    /// sketches whose state is inconsistent.
    pub fn decode(bytes: &[u8]) -> Result<WindowSummary, DriftError> {
        let corrupt = |reason: String| DriftError::CorruptWindow { reason };
        let (&version, rest) = bytes.split_first().ok_or_else(|| corrupt("empty".into()))?;
        if version != WINDOW_FORMAT_VERSION {
            return Err(corrupt(format!(
                "format version {version}, this build reads {WINDOW_FORMAT_VERSION}"
            )));
        }
        let (summary, left) =
            postcard::take_from_bytes::<WindowSummary>(rest).map_err(|e| corrupt(e.to_string()))?;
        if !left.is_empty() {
            return Err(corrupt(format!("{} trailing bytes", left.len())));
        }
        Ok(summary)
    }

    /// `deadline_misses / events` (0 for an empty window).
    pub fn deadline_miss_rate(&self) -> f64 {
        ratio(self.deadline_misses, self.events)
    }

    /// `fallbacks / events` (0 for an empty window).
    pub fn fallback_rate(&self) -> f64 {
        ratio(self.fallbacks, self.events)
    }

    /// Adds another summary of the same features and classes (another window of the route,
    /// or the same window on another board): sketches merged, counts added, time range
    /// widened to cover both (`index` is the earlier one). The route name is kept. `drift`
    /// becomes `None`, since it no longer describes the data; recompute it with
    /// [`window_drift`]. Errors (changing nothing) when features or classes differ.
    pub fn merge(&mut self, other: &WindowSummary) -> Result<(), DriftError> {
        if self.feature_names != other.feature_names || self.sketches.len() != other.sketches.len()
        {
            return Err(DriftError::LengthMismatch {
                what: "merged window features",
                left: self.sketches.len(),
                right: other.sketches.len(),
            });
        }
        if self.model_class_counts.len() != other.model_class_counts.len() {
            return Err(DriftError::LengthMismatch {
                what: "merged window classes",
                left: self.model_class_counts.len(),
                right: other.model_class_counts.len(),
            });
        }
        if let Some((mine, theirs)) = self
            .sketches
            .iter()
            .zip(&other.sketches)
            .find(|(a, b)| a.k() != b.k())
        {
            return Err(DriftError::SketchMismatch {
                this: mine.k(),
                other: theirs.k(),
            });
        }
        for (mine, theirs) in self.sketches.iter_mut().zip(&other.sketches) {
            mine.merge(theirs)?;
        }
        for (mine, theirs) in self
            .model_class_counts
            .iter_mut()
            .zip(&other.model_class_counts)
        {
            *mine += theirs;
        }
        self.index = self.index.min(other.index);
        self.start_ms = self.start_ms.min(other.start_ms);
        self.end_ms = self.end_ms.max(other.end_ms);
        self.events += other.events;
        self.fallbacks += other.fallbacks;
        self.deadline_misses += other.deadline_misses;
        self.non_finite_values += other.non_finite_values;
        self.drift = None;
        Ok(())
    }
}

fn ratio(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

/// Drift of per-feature sketches and predicted-class counts against a reference: what a
/// window computes when it closes, and what the cloud computes on sketches merged across
/// windows or boards ([`WindowSummary::merge`]). Features whose sketch is empty are left out;
/// the class distance is `None` when all counts are zero.
///
/// Errors when the number of sketches or of classes differs from the reference.
pub fn window_drift(
    sketches: &[QuantileSketch],
    class_counts: &[u64],
    reference: &Reference,
    thresholds: &DriftThresholds,
) -> Result<WindowDrift, DriftError> {
    if sketches.len() != reference.features().len() {
        return Err(DriftError::FeatureCount {
            expected: reference.features().len(),
            actual: sketches.len(),
        });
    }
    if class_counts.len() != reference.class_fractions().len() {
        return Err(DriftError::LengthMismatch {
            what: "class counts and reference classes",
            left: class_counts.len(),
            right: reference.class_fractions().len(),
        });
    }
    let mut features = Vec::with_capacity(sketches.len());
    for (sketch, feature) in sketches.iter().zip(reference.features()) {
        if sketch.count() == 0 {
            continue;
        }
        features.push(feature_drift(
            &feature.name,
            &sketch.cdf()?,
            sketch.count(),
            &feature.profile,
            thresholds,
        )?);
    }
    let dataset = dataset_drift(&features, thresholds.dataset_share);
    let counts: Vec<f64> = class_counts.iter().map(|&c| c as f64).collect();
    let class_js_distance = if counts.iter().sum::<f64>() > 0.0 {
        Some(jensen_shannon_distance(
            &counts,
            reference.class_fractions(),
        )?)
    } else {
        None
    };
    Ok(WindowDrift {
        features,
        dataset,
        class_drift: class_js_distance.is_some_and(|d| d >= thresholds.js_distance),
        class_js_distance,
    })
}

/// The window being filled.
#[derive(Debug, Clone)]
pub(crate) struct OpenWindow {
    pub index: u64,
    pub events: u64,
    pub sketches: Vec<QuantileSketch>,
    pub class_counts: Vec<u64>,
    pub fallbacks: u64,
    pub deadline_misses: u64,
    pub non_finite_values: u64,
}

impl OpenWindow {
    pub fn new(index: u64, features: usize, classes: usize, k: u32) -> Result<Self, DriftError> {
        Ok(OpenWindow {
            index,
            events: 0,
            sketches: vec![QuantileSketch::new(k)?; features],
            class_counts: vec![0; classes],
            fallbacks: 0,
            deadline_misses: 0,
            non_finite_values: 0,
        })
    }

    /// Closes the window into its summary, computing drift when it has enough events.
    pub fn close(
        self,
        route: &str,
        window_ms: u64,
        reference: &Reference,
        thresholds: &DriftThresholds,
        min_events: u64,
    ) -> Result<WindowSummary, DriftError> {
        let drift = if self.events >= min_events.max(1) {
            Some(window_drift(
                &self.sketches,
                &self.class_counts,
                reference,
                thresholds,
            )?)
        } else {
            None
        };
        let start_ms = self.index.saturating_mul(window_ms);
        Ok(WindowSummary {
            route: route.to_owned(),
            index: self.index,
            start_ms,
            end_ms: start_ms.saturating_add(window_ms),
            events: self.events,
            model_class_counts: self.class_counts,
            fallbacks: self.fallbacks,
            deadline_misses: self.deadline_misses,
            non_finite_values: self.non_finite_values,
            feature_names: reference
                .features()
                .iter()
                .map(|f| f.name.clone())
                .collect(),
            sketches: self.sketches,
            drift,
        })
    }
}
