//! The mergeable partial aggregate of the rescore job, and the pure reduction of the merged
//! aggregate into the report's figures. No I/O, no model: unit-tested here.
//!
//! **Map.** Each partition file is scanned on its own into a [`Partial`]: per-event
//! [`Observation`]s are folded in with [`Partial::observe`]. **Merge.** Partials combine with
//! [`Partial::merge`] (counts add, KLL sketches merge), which is associative; the job merges
//! them in file order so the result is deterministic. **Reduce.** [`Partial::finish`] turns
//! the merged partial into figures: agreement, confusion matrices, fallback disagreement,
//! latency, and drift through reflex-drift (fleet vs the manifest's reference with
//! [`window_drift`], each device vs its own baseline with
//! [`feature_drift`]/[`dataset_drift`]).
//!
//! Why devices are compared with their own baseline and not with the reference: each device
//! watches one machine in one condition, while the reference profile mixes every condition
//! of the training set; a healthy machine's vibration never looks like that mix, so every
//! device would "drift". The fleet as a whole does look like the mix, and is compared with
//! the reference. A device's baseline is its events in the first `device_baseline_s` of the
//! snapshot; a device drifts when its later events differ from its baseline under the same
//! thresholds and rules (KS and an effect size, dataset share) as the fleet.

use std::collections::BTreeMap;

use reflex_drift::monitor::{window_drift, WindowDrift};
use reflex_drift::stats::verdict::{
    dataset_drift, feature_drift, DatasetDrift, DriftThresholds, FeatureDrift,
};
use reflex_drift::{DriftError, QuantileProfile, QuantileSketch, Reference};
use serde::{Deserialize, Serialize};

/// What one event contributes.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation<'a> {
    /// Device id.
    pub device: &'a str,
    /// `name@version` of the edge model that decided.
    pub edge_model: &'a str,
    /// Class acted on at the edge.
    pub edge_class: usize,
    /// The cloud model's class.
    pub cloud_class: usize,
    /// The fallback answered at the edge.
    pub fallback: bool,
    /// The deadline was missed.
    pub deadline_miss: bool,
    /// Board end-to-end latency, µs.
    pub end_to_end_us: u32,
    /// Arrival, µs since the epoch.
    pub arrival_us: u64,
    /// The features, in the reference's order.
    pub features: &'a [f32],
}

/// Agreement counts of a set of events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Events.
    pub events: u64,
    /// Edge class == cloud class.
    pub agree: u64,
    /// Answered by the fallback.
    pub fallback: u64,
    /// Answered by the fallback, and the cloud model disagrees.
    pub fallback_disagree: u64,
    /// Deadline misses.
    pub deadline_miss: u64,
    /// `confusion[edge][cloud]`.
    pub confusion: Vec<Vec<u64>>,
}

impl Counts {
    fn new(classes: usize) -> Counts {
        Counts {
            events: 0,
            agree: 0,
            fallback: 0,
            fallback_disagree: 0,
            deadline_miss: 0,
            confusion: vec![vec![0; classes]; classes],
        }
    }

    fn add(&mut self, o: &Observation<'_>) {
        self.events += 1;
        let agree = o.edge_class == o.cloud_class;
        self.agree += u64::from(agree);
        self.fallback += u64::from(o.fallback);
        self.fallback_disagree += u64::from(o.fallback && !agree);
        self.deadline_miss += u64::from(o.deadline_miss);
        if let Some(cell) = self
            .confusion
            .get_mut(o.edge_class)
            .and_then(|row| row.get_mut(o.cloud_class))
        {
            *cell += 1;
        }
    }

    fn merge(&mut self, other: &Counts) {
        self.events += other.events;
        self.agree += other.agree;
        self.fallback += other.fallback;
        self.fallback_disagree += other.fallback_disagree;
        self.deadline_miss += other.deadline_miss;
        for (a, b) in self.confusion.iter_mut().zip(&other.confusion) {
            for (x, y) in a.iter_mut().zip(b) {
                *x += y;
            }
        }
    }

    /// The rates of these counts.
    pub fn rates(&self) -> Rates {
        let r = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
        Rates {
            agreement: r(self.agree, self.events),
            fallback: r(self.fallback, self.events),
            fallback_disagreement: r(self.fallback_disagree, self.fallback),
            deadline_miss: r(self.deadline_miss, self.events),
        }
    }
}

/// Rates derived from [`Counts`] (0 when the denominator is 0).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Rates {
    /// agree / events.
    pub agreement: f64,
    /// fallback / events.
    pub fallback: f64,
    /// fallback_disagree / fallback.
    pub fallback_disagreement: f64,
    /// deadline_miss / events.
    pub deadline_miss: f64,
}

fn sketches(n: usize) -> Vec<QuantileSketch> {
    (0..n).map(|_| QuantileSketch::default()).collect()
}

fn merge_sketches(a: &mut [QuantileSketch], b: &[QuantileSketch]) -> Result<(), DriftError> {
    for (x, y) in a.iter_mut().zip(b) {
        x.merge(y)?;
    }
    Ok(())
}

fn insert_features(s: &mut [QuantileSketch], features: &[f32]) -> u64 {
    let mut non_finite = 0;
    for (sk, &v) in s.iter_mut().zip(features) {
        if sk.insert(f64::from(v)).is_err() {
            non_finite += 1;
        }
    }
    non_finite
}

/// One device's partial.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DevicePartial {
    /// Agreement counts.
    pub counts: Counts,
    /// End-to-end latency, µs.
    pub latency_us: QuantileSketch,
    /// Features of events in the baseline period.
    pub baseline: Vec<QuantileSketch>,
    /// Features of later events.
    pub current: Vec<QuantileSketch>,
    /// Edge classes acted on.
    pub edge_classes: Vec<u64>,
}

/// The parameters every partial of a run shares (plan constants, not state).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PlanParams {
    /// Snapshot start, µs.
    pub from_us: u64,
    /// Snapshot end (exclusive), µs.
    pub to_us: u64,
    /// Window length for drift over time, µs.
    pub window_us: u64,
    /// End of each device's baseline period, µs.
    pub baseline_end_us: u64,
    /// Number of classes.
    pub classes: usize,
    /// Number of features.
    pub features: usize,
}

/// A partial aggregate (module doc).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Partial {
    /// The plan constants.
    pub params: PlanParams,
    /// Whole snapshot.
    pub fleet: Counts,
    /// Per device.
    pub devices: BTreeMap<String, DevicePartial>,
    /// Per edge model (`name@version`).
    pub models: BTreeMap<String, Counts>,
    /// Fleet feature sketches.
    pub features: Vec<QuantileSketch>,
    /// Fleet feature sketches per window index (`(arrival − from) / window`).
    pub windows: BTreeMap<u64, Vec<QuantileSketch>>,
    /// Events per window index.
    pub window_events: BTreeMap<u64, u64>,
    /// Edge classes acted on.
    pub edge_classes: Vec<u64>,
    /// Cloud classes.
    pub cloud_classes: Vec<u64>,
    /// Feature values that were NaN/∞ (not sketched).
    pub non_finite_values: u64,
    /// Rows outside the snapshot's time range (skipped).
    pub out_of_range: u64,
    /// Rows the cloud model could not score (model input of the wrong length; skipped).
    pub unscorable: u64,
}

impl Partial {
    /// An empty partial.
    pub fn new(params: PlanParams) -> Partial {
        Partial {
            fleet: Counts::new(params.classes),
            devices: BTreeMap::new(),
            models: BTreeMap::new(),
            features: sketches(params.features),
            windows: BTreeMap::new(),
            window_events: BTreeMap::new(),
            edge_classes: vec![0; params.classes],
            cloud_classes: vec![0; params.classes],
            non_finite_values: 0,
            out_of_range: 0,
            unscorable: 0,
            params,
        }
    }

    /// Whether an arrival time is inside the snapshot.
    pub fn in_range(&self, arrival_us: u64) -> bool {
        (self.params.from_us..self.params.to_us).contains(&arrival_us)
    }

    /// Folds one event in (events outside the range are only counted as such).
    pub fn observe(&mut self, o: &Observation<'_>) {
        if !self.in_range(o.arrival_us) {
            self.out_of_range += 1;
            return;
        }
        let p = self.params;
        self.fleet.add(o);
        self.models
            .entry(o.edge_model.to_owned())
            .or_insert_with(|| Counts::new(p.classes))
            .add(o);
        if let Some(c) = self.edge_classes.get_mut(o.edge_class) {
            *c += 1;
        }
        if let Some(c) = self.cloud_classes.get_mut(o.cloud_class) {
            *c += 1;
        }
        self.non_finite_values += insert_features(&mut self.features, o.features);
        let w = (o.arrival_us - p.from_us) / p.window_us.max(1);
        insert_features(
            self.windows
                .entry(w)
                .or_insert_with(|| sketches(p.features)),
            o.features,
        );
        *self.window_events.entry(w).or_default() += 1;
        let d = self
            .devices
            .entry(o.device.to_owned())
            .or_insert_with(|| DevicePartial {
                counts: Counts::new(p.classes),
                latency_us: QuantileSketch::default(),
                baseline: sketches(p.features),
                current: sketches(p.features),
                edge_classes: vec![0; p.classes],
            });
        d.counts.add(o);
        let _ = d.latency_us.insert(f64::from(o.end_to_end_us));
        if let Some(c) = d.edge_classes.get_mut(o.edge_class) {
            *c += 1;
        }
        let target = if o.arrival_us < p.baseline_end_us {
            &mut d.baseline
        } else {
            &mut d.current
        };
        insert_features(target, o.features);
    }

    /// Adds another partial of the same plan.
    pub fn merge(&mut self, other: &Partial) -> Result<(), DriftError> {
        if self.params != other.params {
            return Err(DriftError::LengthMismatch {
                what: "partials of different plans",
                left: self.params.features,
                right: other.params.features,
            });
        }
        let p = self.params;
        self.fleet.merge(&other.fleet);
        for (k, v) in &other.models {
            self.models
                .entry(k.clone())
                .or_insert_with(|| Counts::new(p.classes))
                .merge(v);
        }
        merge_sketches(&mut self.features, &other.features)?;
        for (w, s) in &other.windows {
            merge_sketches(
                self.windows
                    .entry(*w)
                    .or_insert_with(|| sketches(p.features)),
                s,
            )?;
        }
        for (w, n) in &other.window_events {
            *self.window_events.entry(*w).or_default() += n;
        }
        for (a, b) in self.edge_classes.iter_mut().zip(&other.edge_classes) {
            *a += b;
        }
        for (a, b) in self.cloud_classes.iter_mut().zip(&other.cloud_classes) {
            *a += b;
        }
        for (name, d) in &other.devices {
            match self.devices.get_mut(name) {
                None => {
                    self.devices.insert(name.clone(), d.clone());
                }
                Some(mine) => {
                    mine.counts.merge(&d.counts);
                    mine.latency_us.merge(&d.latency_us)?;
                    merge_sketches(&mut mine.baseline, &d.baseline)?;
                    merge_sketches(&mut mine.current, &d.current)?;
                    for (a, b) in mine.edge_classes.iter_mut().zip(&d.edge_classes) {
                        *a += b;
                    }
                }
            }
        }
        self.non_finite_values += other.non_finite_values;
        self.out_of_range += other.out_of_range;
        self.unscorable += other.unscorable;
        Ok(())
    }
}

/// A sketch summarised as a quantile profile (101 quantiles), so it can serve as a
/// reference for [`feature_drift`]. `None` when empty.
pub fn profile_of(sketch: &QuantileSketch) -> Option<QuantileProfile> {
    if sketch.count() == 0 {
        return None;
    }
    let q: Vec<f64> = (0..=100)
        .map(|j| sketch.quantile(j as f64 / 100.0).unwrap_or(0.0))
        .collect();
    QuantileProfile::new(q, sketch.count()).ok()
}

/// A device's drift against its own baseline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceDrift {
    /// Events in the baseline period.
    pub baseline_events: u64,
    /// Events after it.
    pub current_events: u64,
    /// Per feature.
    pub features: Vec<FeatureDrift>,
    /// Share of features that drifted, and the verdict.
    pub dataset: DatasetDrift,
}

/// One device's figures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceFigures {
    /// Device id.
    pub device: String,
    /// Counts.
    pub counts: Counts,
    /// Rates.
    pub rates: Rates,
    /// End-to-end latency median, µs.
    pub latency_p50_us: f64,
    /// End-to-end latency p99, µs.
    pub latency_p99_us: f64,
    /// Drift against its own baseline; `None` when baseline or current has fewer than
    /// `min_events` events.
    pub drift: Option<DeviceDrift>,
    /// `drift.dataset.drifted`.
    pub flagged: bool,
}

/// Drift of one window of the fleet against the reference.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WindowFigures {
    /// Window index.
    pub index: u64,
    /// Window start, µs.
    pub start_us: u64,
    /// Events.
    pub events: u64,
    /// Drift; `None` below `min_events`.
    pub drift: Option<WindowDrift>,
}

/// Everything [`Partial::finish`] computes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Figures {
    /// Whole snapshot.
    pub fleet: Counts,
    /// Its rates.
    pub fleet_rates: Rates,
    /// Per edge model version.
    pub models: BTreeMap<String, (Counts, Rates)>,
    /// Per device.
    pub devices: Vec<DeviceFigures>,
    /// Fleet features and edge classes vs the reference (`None` below `min_events`).
    pub fleet_drift: Option<WindowDrift>,
    /// Jensen–Shannon distance of the cloud model's classes to the reference fractions.
    pub cloud_class_js_distance: Option<f64>,
    /// Per window.
    pub windows: Vec<WindowFigures>,
    /// Edge classes acted on.
    pub edge_classes: Vec<u64>,
    /// Cloud classes.
    pub cloud_classes: Vec<u64>,
    /// Non-finite feature values skipped.
    pub non_finite_values: u64,
    /// Rows outside the range.
    pub out_of_range: u64,
    /// Rows the cloud model could not score.
    pub unscorable: u64,
}

impl Partial {
    /// Reduces the merged partial to figures (module doc).
    pub fn finish(
        &self,
        reference: &Reference,
        thresholds: &DriftThresholds,
        min_events: u64,
    ) -> Result<Figures, DriftError> {
        let fleet_drift = if self.fleet.events >= min_events {
            Some(window_drift(
                &self.features,
                &self.edge_classes,
                reference,
                thresholds,
            )?)
        } else {
            None
        };
        let cloud_class_js_distance = if self.cloud_classes.iter().sum::<u64>() > 0 {
            let c: Vec<f64> = self.cloud_classes.iter().map(|&c| c as f64).collect();
            Some(
                reflex_drift::stats::jensen_shannon::jensen_shannon_distance(
                    &c,
                    reference.class_fractions(),
                )?,
            )
        } else {
            None
        };
        let mut windows = Vec::new();
        for (w, s) in &self.windows {
            let events = self.window_events.get(w).copied().unwrap_or(0);
            let drift = if events >= min_events {
                let no_classes = vec![0; reference.class_fractions().len()];
                Some(window_drift(s, &no_classes, reference, thresholds)?)
            } else {
                None
            };
            windows.push(WindowFigures {
                index: *w,
                start_us: self.params.from_us + w * self.params.window_us,
                events,
                drift,
            });
        }
        let mut devices = Vec::new();
        for (name, d) in &self.devices {
            let drift = device_drift(d, reference, thresholds, min_events)?;
            devices.push(DeviceFigures {
                device: name.clone(),
                rates: d.counts.rates(),
                counts: d.counts.clone(),
                latency_p50_us: d.latency_us.quantile(0.5).unwrap_or(0.0),
                latency_p99_us: d.latency_us.quantile(0.99).unwrap_or(0.0),
                flagged: drift.as_ref().is_some_and(|x| x.dataset.drifted),
                drift,
            });
        }
        Ok(Figures {
            fleet_rates: self.fleet.rates(),
            fleet: self.fleet.clone(),
            models: self
                .models
                .iter()
                .map(|(k, c)| (k.clone(), (c.clone(), c.rates())))
                .collect(),
            devices,
            fleet_drift,
            cloud_class_js_distance,
            windows,
            edge_classes: self.edge_classes.clone(),
            cloud_classes: self.cloud_classes.clone(),
            non_finite_values: self.non_finite_values,
            out_of_range: self.out_of_range,
            unscorable: self.unscorable,
        })
    }
}

/// A device against its own baseline (module doc); `None` without enough events.
pub fn device_drift(
    d: &DevicePartial,
    reference: &Reference,
    thresholds: &DriftThresholds,
    min_events: u64,
) -> Result<Option<DeviceDrift>, DriftError> {
    let baseline_events = d.baseline.first().map_or(0, QuantileSketch::count);
    let current_events = d.current.first().map_or(0, QuantileSketch::count);
    if baseline_events < min_events || current_events < min_events {
        return Ok(None);
    }
    let mut features = Vec::new();
    for ((base, cur), f) in d.baseline.iter().zip(&d.current).zip(reference.features()) {
        let Some(profile) = profile_of(base) else {
            continue;
        };
        if cur.count() == 0 {
            continue;
        }
        features.push(feature_drift(
            &f.name,
            &cur.cdf()?,
            cur.count(),
            &profile,
            thresholds,
        )?);
    }
    Ok(Some(DeviceDrift {
        baseline_events,
        current_events,
        dataset: dataset_drift(&features, thresholds.dataset_share),
        features,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use reflex_drift::FeatureReference;

    fn params() -> PlanParams {
        PlanParams {
            from_us: 1_000,
            to_us: 1_000_000,
            window_us: 100_000,
            baseline_end_us: 500_000,
            classes: 2,
            features: 2,
        }
    }

    fn obs<'a>(
        device: &'a str,
        edge: usize,
        cloud: usize,
        t: u64,
        f: &'a [f32],
    ) -> Observation<'a> {
        Observation {
            device,
            edge_model: "edge@1",
            edge_class: edge,
            cloud_class: cloud,
            fallback: edge == 1,
            deadline_miss: t.is_multiple_of(2),
            end_to_end_us: 100,
            arrival_us: t,
            features: f,
        }
    }

    fn reference() -> Reference {
        let f = |name: &str| FeatureReference {
            name: name.into(),
            profile: QuantileProfile::new((0..=100).map(|i| i as f64 / 100.0).collect(), 4000)
                .unwrap(),
        };
        Reference::new(vec![f("a"), f("b")], vec![0.5, 0.5]).unwrap()
    }

    #[test]
    fn counts_give_agreement_confusion_and_fallback_disagreement() {
        let mut p = Partial::new(params());
        let f = [0.5f32, 0.5];
        p.observe(&obs("d", 0, 0, 2_000, &f));
        p.observe(&obs("d", 0, 1, 2_001, &f));
        p.observe(&obs("d", 1, 1, 2_002, &f));
        p.observe(&obs("d", 1, 0, 2_003, &f));
        p.observe(&obs("d", 1, 0, 999, &f)); // before the range
        let c = &p.fleet;
        assert_eq!(
            (c.events, c.agree, c.fallback, c.fallback_disagree),
            (4, 2, 2, 1)
        );
        assert_eq!(c.confusion, vec![vec![1, 1], vec![1, 1]]);
        let r = c.rates();
        assert_eq!(r.agreement, 0.5);
        assert_eq!(r.fallback_disagreement, 0.5);
        assert_eq!(r.deadline_miss, 0.5);
        assert_eq!(p.out_of_range, 1);
        assert_eq!(p.models["edge@1"].events, 4);
    }

    #[test]
    fn merging_partials_equals_observing_everything_in_one() {
        let feats: Vec<[f32; 2]> = (0..400)
            .map(|i| [(i % 97) as f32 / 97.0, (i % 13) as f32 / 13.0])
            .collect();
        let at = |i: usize| 1_000 + i as u64 * 2_000;
        let dev = |i: usize| if i.is_multiple_of(3) { "a" } else { "b" };
        let mut whole = Partial::new(params());
        let mut left = Partial::new(params());
        let mut right = Partial::new(params());
        for (i, f) in feats.iter().enumerate() {
            let o = obs(dev(i), i % 2, (i / 2) % 2, at(i), f);
            whole.observe(&o);
            if i < 150 {
                left.observe(&o);
            } else {
                right.observe(&o);
            }
        }
        left.merge(&right).unwrap();
        assert_eq!(left.fleet, whole.fleet);
        assert_eq!(left.edge_classes, whole.edge_classes);
        assert_eq!(left.window_events, whole.window_events);
        assert_eq!(left.devices["a"].counts, whole.devices["a"].counts);
        // Below k values the sketches are exact, so the merged ones agree exactly.
        assert_eq!(
            left.features[0].quantile(0.3),
            whole.features[0].quantile(0.3)
        );
        let other_plan = Partial::new(PlanParams {
            features: 3,
            ..params()
        });
        assert!(left.merge(&other_plan).is_err());
    }

    #[test]
    fn a_device_whose_later_values_move_is_flagged_and_a_steady_one_is_not() {
        let mut p = Partial::new(params());
        let mut g = 0x1234_5678_u64;
        let mut unit = || {
            g ^= g << 13;
            g ^= g >> 7;
            g ^= g << 17;
            (g >> 11) as f32 / (1u64 << 53) as f32
        };
        for i in 0..4000u64 {
            let t = 1_000 + i * 249;
            let late = t >= 500_000;
            let (a, b) = (unit(), unit());
            p.observe(&obs("steady", 0, 0, t, &[a, b]));
            let shift = if late { 0.3 } else { 0.0 };
            p.observe(&obs("moving", 0, 0, t, &[a + shift, b * 1.5]));
        }
        let figs = p
            .finish(&reference(), &DriftThresholds::default(), 200)
            .unwrap();
        let by = |n: &str| figs.devices.iter().find(|d| d.device == n).unwrap().clone();
        assert!(by("moving").flagged, "{:?}", by("moving").drift);
        assert!(!by("steady").flagged, "{:?}", by("steady").drift);
        assert!(figs.fleet_drift.is_some());
        assert_eq!(figs.windows.len(), 10);
    }

    #[test]
    fn a_device_without_enough_events_is_not_judged() {
        let mut p = Partial::new(params());
        p.observe(&obs("few", 0, 0, 2_000, &[0.1, 0.2]));
        p.observe(&obs("few", 0, 0, 600_000, &[0.9, 0.9]));
        let figs = p
            .finish(&reference(), &DriftThresholds::default(), 10)
            .unwrap();
        assert!(figs.devices[0].drift.is_none() && !figs.devices[0].flagged);
        assert!(figs.fleet_drift.is_none());
    }

    #[test]
    fn a_profile_of_a_sketch_has_its_quantiles_and_count() {
        let mut s = QuantileSketch::default();
        for i in 0..=100 {
            s.insert(i as f64).unwrap();
        }
        let p = profile_of(&s).unwrap();
        assert_eq!(p.count(), 101);
        assert_eq!(p.quantiles()[0], 0.0);
        assert_eq!(p.quantiles()[100], 100.0);
        assert!(profile_of(&QuantileSketch::default()).is_none());
    }
}
