//! A mergeable, serializable quantile sketch with bounded memory: KLL (Karnin, Lang and
//! Liberty, "Optimal Quantile Approximation in Streams", FOCS 2016), lazy compaction as in
//! the authors' reference implementation, deterministic coin.
//!
//! **Why KLL, written here.** The drift statistics are rank statistics: KS is a distance
//! between CDFs and PSI compares bin fractions, so what must be bounded is the *rank* error
//! of the sketch. KLL bounds exactly that (additive, independent of the values' scale and
//! sign), and merges without loss of guarantee. DDSketch (the `sketches-ddsketch` crate)
//! bounds *relative value* error instead, which says nothing about ranks, needs a special
//! zero bucket and mirrored stores for signed features such as `mean_x` (spread around 0);
//! t-digest crates do not bound rank error and have no stable serialized form. KLL is ~150
//! lines, has no dependencies, and its state is plain vectors that serde writes as-is.
//!
//! **Structure.** Level `h` holds values of weight `2^h`. With `H` levels, level `h` may hold
//! `⌈k·(2/3)^(H−1−h)⌉ + 1` values; when the total reaches the sum of those capacities the
//! lowest full level is sorted and every other value (offset chosen by the coin) moves up a
//! level with twice the weight; an odd value out stays. Total weight is preserved exactly,
//! so [`QuantileSketch::count`] is exact, as are `min`, `max` and the sum (mean).
//!
//! **Memory**: at most `3k + 2H` values with `H ≤ 64` (`k = 200`: ≤ 728 values, ≤ ~6 KiB),
//! whatever the number of insertions. Until the first compaction (fewer than `k + 1`
//! insertions) the sketch is exact.
//!
//! **Accuracy**: rank error of order `1/k` (the KLL bound at `k = 200` is about 1.3% at 99%
//! confidence for a single rank; typical errors are several times smaller). The measured
//! agreement of KS, PSI and Wasserstein from the sketch with the exact values is asserted in
//! `tests/sketch_accuracy.rs`.
//!
//! **Determinism**: the coin is a xorshift64* generator stored in the sketch, so the same
//! insertions (and merges, in the same order) give the same sketch on the board and in the
//! cloud.

use serde::{Deserialize, Serialize};

use crate::cdf::Cdf;
use crate::error::DriftError;

/// Default `k`.
pub const DEFAULT_K: u32 = 200;
/// Smallest accepted `k`.
pub const MIN_K: u32 = 8;
/// Largest accepted `k`.
pub const MAX_K: u32 = 65_535;
const MAX_LEVELS: usize = 64;
const COIN_SEED: u64 = 0x9E37_79B9_7F4A_7C15;

/// A KLL quantile sketch of `f64` values (module doc).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "SketchFields", into = "SketchFields")]
pub struct QuantileSketch {
    k: u32,
    count: u64,
    min: Option<f64>,
    max: Option<f64>,
    sum: f64,
    levels: Vec<Vec<f64>>,
    coin: u64,
    retained: usize,
    /// Sum of the level capacities, cached (compaction starts when `retained` reaches it).
    limit: usize,
}

/// The serialized form; checked on the way in.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SketchFields {
    k: u32,
    count: u64,
    min: Option<f64>,
    max: Option<f64>,
    sum: f64,
    levels: Vec<Vec<f64>>,
    coin: u64,
}

impl From<QuantileSketch> for SketchFields {
    fn from(s: QuantileSketch) -> Self {
        SketchFields {
            k: s.k,
            count: s.count,
            min: s.min,
            max: s.max,
            sum: s.sum,
            levels: s.levels,
            coin: s.coin,
        }
    }
}

impl TryFrom<SketchFields> for QuantileSketch {
    type Error = DriftError;
    fn try_from(f: SketchFields) -> Result<Self, DriftError> {
        let corrupt = |reason: String| Err(DriftError::CorruptSketch { reason });
        check_k(f.k)?;
        if f.levels.is_empty() || f.levels.len() > MAX_LEVELS {
            return corrupt(format!("{} levels", f.levels.len()));
        }
        let mut weight: u128 = 0;
        for (h, level) in f.levels.iter().enumerate() {
            if let Some(v) = level.iter().find(|v| !v.is_finite()) {
                return corrupt(format!("non-finite value {v} at level {h}"));
            }
            weight += (level.len() as u128) << h;
        }
        if weight != u128::from(f.count) {
            return corrupt(format!("levels weigh {weight} but count is {}", f.count));
        }
        if (f.count == 0) != (f.min.is_none() || f.max.is_none()) || !f.sum.is_finite() {
            return corrupt(format!(
                "count {} with min {:?}, max {:?}, sum {}",
                f.count, f.min, f.max, f.sum
            ));
        }
        let mut sketch = QuantileSketch {
            k: f.k,
            count: f.count,
            min: f.min,
            max: f.max,
            sum: f.sum,
            levels: f.levels,
            coin: if f.coin == 0 { COIN_SEED } else { f.coin },
            retained: 0,
            limit: 0,
        };
        sketch.retained = sketch.levels.iter().map(Vec::len).sum();
        sketch.limit = sketch.total_capacity();
        sketch.compress();
        Ok(sketch)
    }
}

/// Capacity of a level `depth` levels below the top: `⌈k·(2/3)^depth⌉ + 1`.
fn capacity_at(k: u32, depth: usize) -> usize {
    let scaled = f64::from(k) * (2.0f64 / 3.0).powi(depth as i32);
    scaled.ceil() as usize + 1
}

fn check_k(k: u32) -> Result<(), DriftError> {
    if (MIN_K..=MAX_K).contains(&k) {
        Ok(())
    } else {
        Err(DriftError::InvalidParameter {
            name: "sketch k",
            value: f64::from(k),
            expected: "8 to 65535",
        })
    }
}

impl Default for QuantileSketch {
    fn default() -> Self {
        QuantileSketch::with_valid_k(DEFAULT_K)
    }
}

impl QuantileSketch {
    /// An empty sketch with accuracy parameter `k` (8 to 65535; [`DEFAULT_K`] = 200).
    pub fn new(k: u32) -> Result<QuantileSketch, DriftError> {
        check_k(k)?;
        Ok(QuantileSketch::with_valid_k(k))
    }

    fn with_valid_k(k: u32) -> QuantileSketch {
        QuantileSketch {
            k,
            count: 0,
            min: None,
            max: None,
            sum: 0.0,
            levels: vec![Vec::new()],
            coin: COIN_SEED,
            retained: 0,
            limit: capacity_at(k, 0),
        }
    }

    /// The accuracy parameter.
    pub fn k(&self) -> u32 {
        self.k
    }

    /// Values inserted (exact).
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Smallest value inserted.
    pub fn min(&self) -> Option<f64> {
        self.min
    }

    /// Largest value inserted.
    pub fn max(&self) -> Option<f64> {
        self.max
    }

    /// Mean of the values inserted.
    pub fn mean(&self) -> Option<f64> {
        (self.count > 0).then(|| self.sum / self.count as f64)
    }

    /// Values currently held (the memory bound is on this).
    pub fn retained(&self) -> usize {
        self.retained
    }

    /// The most values a sketch with this `k` can hold: `3k + 2·64`.
    pub fn max_retained(k: u32) -> usize {
        3 * k as usize + 2 * MAX_LEVELS
    }

    fn capacity(&self, level: usize) -> usize {
        capacity_at(self.k, self.levels.len() - 1 - level)
    }

    fn add_level(&mut self) {
        self.levels.push(Vec::new());
        self.limit = self.total_capacity();
    }

    fn total_capacity(&self) -> usize {
        (0..self.levels.len()).map(|h| self.capacity(h)).sum()
    }

    fn flip(&mut self) -> usize {
        // xorshift64*
        let mut x = self.coin;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.coin = x;
        (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 63) as usize
    }

    /// Adds one value. Errors (and leaves the sketch unchanged) on NaN or ±∞.
    pub fn insert(&mut self, value: f64) -> Result<(), DriftError> {
        if !value.is_finite() {
            return Err(DriftError::NonFinite {
                what: "sketch value",
                value,
                index: 0,
            });
        }
        self.count += 1;
        self.sum += value;
        self.min = Some(self.min.map_or(value, |m| m.min(value)));
        self.max = Some(self.max.map_or(value, |m| m.max(value)));
        self.levels[0].push(value);
        self.retained += 1;
        if self.retained >= self.limit {
            self.compress();
        }
        Ok(())
    }

    fn compress(&mut self) {
        while self.retained >= self.limit {
            let Some(h) =
                (0..self.levels.len()).find(|&h| self.levels[h].len() >= self.capacity(h))
            else {
                return;
            };
            if h + 1 >= self.levels.len() {
                if self.levels.len() >= MAX_LEVELS {
                    return;
                }
                self.add_level();
            }
            let offset = self.flip();
            let mut level = std::mem::take(&mut self.levels[h]);
            level.sort_by(f64::total_cmp);
            let leftover = (level.len() % 2 == 1).then(|| level.pop()).flatten();
            let pairs = level.len() / 2;
            self.levels[h + 1].extend(level.iter().skip(offset).step_by(2));
            self.retained -= pairs;
            // Keep the level's allocation for the values to come.
            level.clear();
            level.extend(leftover);
            self.levels[h] = level;
        }
    }

    /// Merges another sketch into this one; the result summarises both streams with the same
    /// guarantee. Errors when the `k`s differ.
    pub fn merge(&mut self, other: &QuantileSketch) -> Result<(), DriftError> {
        if other.k != self.k {
            return Err(DriftError::SketchMismatch {
                this: self.k,
                other: other.k,
            });
        }
        while self.levels.len() < other.levels.len() {
            self.add_level();
        }
        for (mine, theirs) in self.levels.iter_mut().zip(&other.levels) {
            mine.extend_from_slice(theirs);
        }
        self.retained += other.retained;
        self.count += other.count;
        self.sum += other.sum;
        self.min = match (self.min, other.min) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.max = match (self.max, other.max) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        self.coin ^= other.coin.rotate_left(17);
        if self.coin == 0 {
            self.coin = COIN_SEED;
        }
        self.compress();
        Ok(())
    }

    /// The retained values with their weights (`2^level`).
    pub fn weighted_values(&self) -> Vec<(f64, f64)> {
        self.levels
            .iter()
            .enumerate()
            .flat_map(|(h, level)| {
                let w = (h as f64).exp2();
                level.iter().map(move |&v| (v, w))
            })
            .collect()
    }

    /// The sketch's estimate of the CDF: a step function over the retained values, each
    /// weighted `2^level`. Errors on an empty sketch.
    pub fn cdf(&self) -> Result<Cdf, DriftError> {
        if self.count == 0 {
            return Err(DriftError::Empty { what: "sketch" });
        }
        Cdf::from_weighted(&self.weighted_values())
    }

    /// Estimated `p`-quantile (`inf{x : F̂(x) ≥ p}`); `None` when empty.
    pub fn quantile(&self, p: f64) -> Option<f64> {
        self.cdf().ok().map(|c| c.quantile(p))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_stream_is_kept_exactly() {
        let mut s = QuantileSketch::new(64).unwrap();
        for i in 0..50 {
            s.insert(f64::from(i) - 25.0).unwrap();
        }
        assert_eq!(s.retained(), 50);
        assert_eq!(s.quantile(0.0), Some(-25.0));
        assert_eq!(s.quantile(1.0), Some(24.0));
        assert_eq!(s.quantile(0.5), Some(-1.0));
        assert_eq!(s.mean(), Some(-0.5));
    }

    #[test]
    fn memory_stays_bounded_over_a_million_values() {
        let mut s = QuantileSketch::new(DEFAULT_K).unwrap();
        let mut peak = 0;
        for i in 0..1_000_000u64 {
            s.insert((i.wrapping_mul(2_654_435_761) % 1_000_003) as f64)
                .unwrap();
            peak = peak.max(s.retained());
        }
        assert_eq!(s.count(), 1_000_000);
        assert!(
            peak <= QuantileSketch::max_retained(DEFAULT_K),
            "peak {peak}"
        );
        let weight: f64 = s.weighted_values().iter().map(|(_, w)| w).sum();
        assert_eq!(weight, 1_000_000.0);
    }

    #[test]
    fn non_finite_values_and_bad_k_are_refused() {
        let mut s = QuantileSketch::default();
        assert!(s.insert(f64::NAN).is_err());
        assert_eq!(s.count(), 0);
        assert!(QuantileSketch::new(2).is_err());
        assert!(s.merge(&QuantileSketch::new(100).unwrap()).is_err());
        assert!(s.cdf().is_err());
    }

    #[test]
    fn a_tampered_serialized_sketch_is_refused() {
        let mut s = QuantileSketch::default();
        for i in 0..1000 {
            s.insert(f64::from(i)).unwrap();
        }
        let mut json: serde_json::Value = serde_json::to_value(&s).unwrap();
        let back: QuantileSketch = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(back, s);
        json["count"] = serde_json::json!(999);
        let err = serde_json::from_value::<QuantileSketch>(json).unwrap_err();
        assert!(err.to_string().contains("corrupt sketch"), "{err}");
    }
}
