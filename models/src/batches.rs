//! [`Batches`]: one model planned once for every batch size from 1 to a maximum, so that a
//! worker can answer however many events are waiting in a single tract run, without
//! padding a small batch up to a big plan (a plan for 8 windows costs 3x a plan for 1
//! whatever the rows hold).
//!
//! Batching must never change a decision: every plan is checked at load to answer each
//! row exactly as the single-window plan answers that window alone.

use std::path::Path;

use crate::model::{Model, Prediction};
use crate::ModelError;
#[cfg(test)]
use crate::WINDOW_LEN;

/// Largest logit difference allowed between a row of a batch and the same window alone.
/// The plans compute rows independently, so in practice they agree bit for bit.
pub const ROW_TOLERANCE: f32 = 1e-5;

/// Plans of one model for batches of 1, 2, …, `max` windows.
#[derive(Debug)]
pub struct Batches {
    /// `plans[k - 1]` runs `k` windows.
    plans: Vec<Model>,
}

impl Batches {
    /// Loads the model at `manifest_path` planned for every batch size from 1 to `max`
    /// (at least 1), each checked row by row against the plan for one window.
    pub fn load(manifest_path: impl AsRef<Path>, max: usize) -> Result<Batches, ModelError> {
        let manifest_path = manifest_path.as_ref();
        Batches::with_single(Model::load(manifest_path)?, max)
    }

    /// Adds plans for 2..=`max` windows to an already loaded single-window `model`.
    pub fn with_single(model: Model, max: usize) -> Result<Batches, ModelError> {
        let mut plans = Vec::with_capacity(max.max(1));
        let manifest = model.manifest().clone();
        let manifest_path = model.manifest_path().to_owned();
        plans.push(model);
        for k in 2..=max {
            let mut plan = Model::from_manifest(manifest.clone(), &manifest_path, Some(k))?;
            check_rows(&mut plans[0], &mut plan)?;
            plans.push(plan);
        }
        Ok(Batches { plans })
    }

    /// The most windows one run takes.
    pub fn max(&self) -> usize {
        self.plans.len()
    }

    /// The single-window plan (golden vectors, calibration, identity).
    pub fn single(&mut self) -> &mut Model {
        &mut self.plans[0]
    }

    /// The single-window plan, read-only.
    pub fn first(&self) -> &Model {
        &self.plans[0]
    }

    /// Classifies `temperatures_c.len()` windows (1..=[`Batches::max`]) in one run of the
    /// plan of exactly that size: `windows_g` holds them one after the other,
    /// [`Model::input_len`] values each (192 for format 1), as [`Model::predict`] takes one.
    pub fn predict(
        &mut self,
        windows_g: &[f32],
        temperatures_c: &[f32],
    ) -> Result<Vec<Prediction>, ModelError> {
        let k = temperatures_c.len();
        let max = self.plans.len();
        match k.checked_sub(1).and_then(|i| self.plans.get_mut(i)) {
            Some(plan) => plan.predict_batch(windows_g, temperatures_c),
            None => Err(ModelError::BatchTooLarge { max, actual: k }),
        }
    }
}

/// Deterministic, varied inputs of `len` values (not all alike, so that a plan mixing
/// rows shows it).
fn probe_windows(k: usize, len: usize) -> Vec<f32> {
    (0..k * len)
        .map(|i| {
            let (row, j) = ((i / len) as f32, (i % len) as f32);
            0.3 * ((j * 0.37 + row * 1.9).sin()) + 0.05 * row
        })
        .collect()
}

/// Checks that `batched` answers each row of a probe batch as `single` answers it alone.
fn check_rows(single: &mut Model, batched: &mut Model) -> Result<(), ModelError> {
    let k = batched.batch();
    let len = single.input_len();
    let windows = probe_windows(k, len);
    let temperatures: Vec<f32> = (0..k).map(|r| 40.0 + 3.0 * r as f32).collect();
    let together = batched.predict_batch(&windows, &temperatures)?;
    for (row, (w, t)) in windows.chunks_exact(len).zip(&temperatures).enumerate() {
        let alone = single.predict(w, *t)?;
        let diff = alone
            .logits
            .iter()
            .zip(&together[row].logits)
            .map(|(a, b)| (a - b).abs())
            // NaN wins, so that a NaN row is a mismatch.
            .fold(0.0f32, |acc, d| if d.is_nan() || d > acc { d } else { acc });
        if diff.is_nan() || diff > ROW_TOLERANCE {
            return Err(ModelError::BatchMismatch {
                model: single.name().to_owned(),
                batch: k,
                row,
                diff,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn manifest(name: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("{name}.manifest.json"))
    }

    #[test]
    fn a_plan_that_answers_rows_differently_than_alone_is_refused() {
        // Stand-in for a graph that mixes rows: the cloud model's plan for 2 windows
        // against the edge model alone (different weights, so every row differs).
        let mut edge = Model::load(manifest("edge")).unwrap();
        let mut cloud = Model::load_with_batch(manifest("cloud"), 2).unwrap();
        match check_rows(&mut edge, &mut cloud) {
            Err(ModelError::BatchMismatch {
                batch: 2, row: 0, ..
            }) => {}
            other => panic!("expected a mismatch on row 0, got {other:?}"),
        }
    }

    #[test]
    fn edge_plans_agree_with_the_single_window_plan() {
        let mut edge = Model::load(manifest("edge")).unwrap();
        for k in 2..=8 {
            let mut plan = Model::load_with_batch(manifest("edge"), k).unwrap();
            assert_eq!(plan.batch(), k);
            check_rows(&mut edge, &mut plan).unwrap();
        }
    }

    #[test]
    fn probe_rows_differ_from_each_other() {
        let w = probe_windows(3, WINDOW_LEN);
        assert_ne!(w[..WINDOW_LEN], w[WINDOW_LEN..2 * WINDOW_LEN]);
        assert_ne!(w[WINDOW_LEN..2 * WINDOW_LEN], w[2 * WINDOW_LEN..]);
    }
}
