//! Drift statistics shared by reflexd (live, from sketches) and reflex-cloud (batch), so
//! both compute the same definitions.
//!
//! * [`stats`]: pure functions — KS (two samples as scipy's `ks_2samp`, and against a
//!   quantile profile), Wasserstein-1 (also normalised by the reference's spread), PSI on
//!   reference deciles, Jensen–Shannon distance, per-feature and dataset verdicts. Each
//!   module states its exact definition; the tests compare them with values computed once
//!   with scipy (`reference/make_expected.py`, committed as `tests/expected.json`).
//! * [`Cdf`]: the one shape (jumps and straight pieces) that samples, sketches and reference
//!   profiles all take, so each statistic is written once.
//! * [`QuantileSketch`]: a mergeable, serializable KLL quantile sketch with bounded memory.
//! * [`monitor`]: per-route tumbling windows of sketches and counters, window summaries with
//!   drift scores, and an alert state machine with hysteresis; pure, driven by the caller's
//!   clock, no I/O.
//!
//! This crate does not depend on reflex-models: callers convert a manifest's
//! `ReferenceProfile` into a [`Reference`].

pub mod cdf;
pub mod error;
pub mod monitor;
pub mod profile;
pub mod sketch;
pub mod stats;

pub use cdf::Cdf;
pub use error::DriftError;
pub use profile::{FeatureReference, QuantileProfile, Reference};
pub use sketch::QuantileSketch;
