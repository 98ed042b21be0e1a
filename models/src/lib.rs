//! `reflex-models`: loads a model and its manifest, verifies the checksum, builds the
//! tract plan and exposes one `predict` call.
//!
//! Three models, all described by a JSON [`Manifest`] next to them in `models/`:
//! - `edge` (`edge.onnx`): a small int8 1D-CNN exported with a batch of 1, run per event
//!   or, re-planned by [`Batches`], on however many events are waiting;
//! - `cloud` (`cloud.onnx`): a bigger fp32 CNN with a symbolic batch, for batch scoring;
//! - `fallback`: a linear model over the 13 cheap [`features`], weights in its manifest,
//!   answering in about a microsecond when the neural model cannot meet a deadline.
//!
//! Inputs are windows of 3 × 64 accelerations in g, channel-major (x, then y, then z):
//! exactly what `reflex_wire` decodes (`counts × scale`). Each [`Model`] applies its
//! manifest's per-channel standardisation itself.
//!
//! Those manifests are format 1. Format 2 ([`manifest::format2`], contract in
//! `models/README.md`, schema in `models/manifest.schema.json`) describes any model: one
//! input of any rank and dtype, declared preprocessing steps, a classification or score
//! output and the monitoring features by name; [`Model::predict_values`] runs it on the
//! flat values of one input.
//!
//! ```no_run
//! # fn main() -> Result<(), reflex_models::ModelError> {
//! use reflex_models::{features, Fallback, Model};
//! let mut edge = Model::load("models/edge.manifest.json")?;
//! let fallback = Fallback::load("models/fallback.manifest.json")?;
//! let window = [0.0f32; reflex_models::WINDOW_LEN];
//! let p = edge.predict(&window, 45.0)?;
//! let action = edge.action(p.class);
//! let f = features::compute(&window, 45.0);
//! let class = fallback.predict(&f);
//! # let _ = (action, class); Ok(()) }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod batches;
mod error;
pub mod fallback;
pub mod features;
pub mod golden;
pub mod import;
pub mod manifest;
pub mod model;
pub mod npy;
pub mod preprocess;
pub mod reference;
pub mod samples;
pub mod stats;

pub use batches::Batches;
pub use error::ModelError;
pub use fallback::Fallback;
pub use features::{Features, FEATURE_COUNT, FEATURE_NAMES};
pub use manifest::{Dtype, Manifest, ModelKind, OutputSpec2, Step};
pub use model::{Model, OutputKind, Prediction};
pub use reflex_wire::Action;

/// Channels per window (x, y, z).
pub const CHANNELS: usize = 3;
/// Samples per channel.
pub const WINDOW: usize = 64;
/// Values per window, `CHANNELS × WINDOW`.
pub const WINDOW_LEN: usize = CHANNELS * WINDOW;
