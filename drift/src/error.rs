//! The one error type of the crate: every way an input can be refused, with the bad value.
//!
//! Nothing in this crate panics on bad input; functions that can be handed an empty sample,
//! a NaN, mismatched lengths or an invalid configuration return a [`DriftError`].

use thiserror::Error;

/// Why a statistic, a sketch or the monitor refused its input.
#[derive(Debug, Clone, PartialEq, Error)]
#[non_exhaustive]
pub enum DriftError {
    /// A sample (or sketch) with no values where at least one is needed.
    #[error("{what} is empty")]
    Empty {
        /// Which input was empty.
        what: &'static str,
    },
    /// A NaN or infinite value where finite numbers are needed.
    #[error("{what} holds a non-finite value {value} at index {index}")]
    NonFinite {
        /// Which input.
        what: &'static str,
        /// The value.
        value: f64,
        /// Its position.
        index: usize,
    },
    /// A negative value where counts, weights or fractions are needed.
    #[error("{what} holds a negative value {value} at index {index}")]
    Negative {
        /// Which input.
        what: &'static str,
        /// The value.
        value: f64,
        /// Its position.
        index: usize,
    },
    /// Two inputs that must have the same length do not.
    #[error("{what}: lengths differ ({left} vs {right})")]
    LengthMismatch {
        /// Which inputs.
        what: &'static str,
        /// Length of the first.
        left: usize,
        /// Length of the second.
        right: usize,
    },
    /// Quantiles that decrease somewhere.
    #[error("quantiles decrease at index {index}: {previous} then {value}")]
    UnsortedQuantiles {
        /// Index of the smaller value.
        index: usize,
        /// The value before it.
        previous: f64,
        /// The value.
        value: f64,
    },
    /// Too few quantiles to describe a distribution.
    #[error("a quantile profile needs at least 2 quantiles, got {count}")]
    TooFewQuantiles {
        /// How many were given.
        count: usize,
    },
    /// Weights or counts that add up to zero.
    #[error("{what} has zero total weight")]
    ZeroTotal {
        /// Which input.
        what: &'static str,
    },
    /// A configuration value out of its range.
    #[error("{name} = {value} is out of range ({expected})")]
    InvalidParameter {
        /// Parameter name.
        name: &'static str,
        /// The value given.
        value: f64,
        /// What is accepted.
        expected: &'static str,
    },
    /// Two sketches with different `k` cannot be merged.
    #[error("cannot merge a sketch with k = {other} into one with k = {this}")]
    SketchMismatch {
        /// This sketch's k.
        this: u32,
        /// The other's k.
        other: u32,
    },
    /// A deserialized sketch whose internal state is inconsistent.
    #[error("corrupt sketch: {reason}")]
    CorruptSketch {
        /// What is inconsistent.
        reason: String,
    },
    /// Two reference features with the same name.
    #[error("reference feature {name:?} appears twice")]
    DuplicateFeature {
        /// The name.
        name: String,
    },
    /// An observation with the wrong number of features.
    #[error("observation has {actual} features, the reference has {expected}")]
    FeatureCount {
        /// Features in the reference.
        expected: usize,
        /// Features given.
        actual: usize,
    },
    /// A route the monitor was not given.
    #[error("no monitor for route {route:?}")]
    UnknownRoute {
        /// The route.
        route: String,
    },
    /// Bytes that are not an encoded window summary (see `WindowSummary::decode`).
    #[error("corrupt window summary: {reason}")]
    CorruptWindow {
        /// What is wrong.
        reason: String,
    },
    /// A predicted class outside the reference's classes.
    #[error("predicted class {class} is out of range (the reference has {classes} classes)")]
    ClassOutOfRange {
        /// The class index.
        class: usize,
        /// Number of classes.
        classes: usize,
    },
}

/// Checks that every value is finite.
pub(crate) fn check_finite(what: &'static str, values: &[f64]) -> Result<(), DriftError> {
    match values.iter().position(|v| !v.is_finite()) {
        Some(index) => Err(DriftError::NonFinite {
            what,
            value: values[index],
            index,
        }),
        None => Ok(()),
    }
}

/// Checks that a sample is non-empty and finite.
pub(crate) fn check_sample(what: &'static str, values: &[f64]) -> Result<(), DriftError> {
    if values.is_empty() {
        return Err(DriftError::Empty { what });
    }
    check_finite(what, values)
}
