//! The rescore job's aggregates and their pure reduction into the report's figures. No I/O,
//! no model, no query engine: unit-tested here.
//!
//! Two kinds of input meet in [`finish`]:
//!
//! * **Tallies** ([`Tallies`]): plain counts the DataFusion plan computes with `GROUP BY`
//!   over the rescored rows ([`Cell`]s of node × device × edge model × edge class × cloud
//!   class × fallback, events per drift window, rows out of range or unscorable). [`Counts`]
//!   of the fleet, of each device and of each edge model version are roll-ups of the cells.
//! * **Sketches** ([`Partial`]): reflex-drift's mergeable KLL sketches of the features (fleet,
//!   per window, per device baseline and current) and of the latency, fed from the plan's
//!   record-batch stream one file at a time ([`Partial::observe`]) and merged in file order
//!   ([`Partial::merge`], associative). A KLL merge depends on its order, so the order is
//!   fixed by the snapshot's file list, not by the engine's scheduling: a replay gives the
//!   same figures bit for bit.
//!
//! [`finish`] reduces both into figures: agreement, confusion matrices, fallback
//! disagreement, latency, and drift through reflex-drift (fleet vs the manifest's reference
//! with [`window_drift`], each device vs its own baseline with
//! [`feature_drift`]/[`dataset_drift`]).
//!
//! Why devices are compared with their own baseline and not with the reference: each device
//! watches one machine in one condition, while the reference profile mixes every condition
//! of the training set; a healthy machine's vibration never looks like that mix, so every
//! device would "drift". The fleet as a whole does look like the mix, and is compared with
//! the reference. A device's baseline is its events in the first `device_baseline_s` of the
//! snapshot; a device drifts when its later events differ from its baseline under the same
//! thresholds and rules (KS and an effect size, dataset share) as the fleet.
//!
//! A device is identified by its node *and* its id ([`DeviceId`]): device ids are only
//! unique on one board (two boards may each have a `pump-1`), so every per-device cell,
//! baseline, figure and verdict is keyed by the pair, and devices are listed in
//! (node, device) order.

use std::collections::BTreeMap;

use reflex_drift::monitor::{window_drift, WindowDrift};
use reflex_drift::stats::verdict::{
    dataset_drift, feature_drift, DatasetDrift, DriftThresholds, FeatureDrift,
};
use reflex_drift::{DriftError, QuantileProfile, QuantileSketch, Reference};
use serde::{Deserialize, Serialize};

/// A device of the fleet: its board and its id on that board.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct DeviceId {
    /// The board (node) the device's events came through.
    pub node: String,
    /// The device id, unique on that node only.
    pub device: String,
}

impl std::fmt::Display for DeviceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.node, self.device)
    }
}

/// What one scored event contributes to the sketches.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation<'a> {
    /// Node (board) that decided the event.
    pub node: &'a str,
    /// Device id.
    pub device: &'a str,
    /// Board end-to-end latency, µs.
    pub end_to_end_us: u32,
    /// Arrival, µs since the epoch (inside the snapshot's range).
    pub arrival_us: u64,
    /// The features, in the reference's order.
    pub features: &'a [f32],
    /// Per feature (same order), whether the event lacks it (its value is not sketched
    /// and the feature is counted in [`Partial::missing`]); empty: none missing.
    pub missing: &'a [bool],
}

/// One group of the comparison `GROUP BY`: scored events sharing node, device, edge
/// model, edge class, cloud class and whether the fallback answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cell {
    /// Node (board) that decided.
    pub node: String,
    /// Device id.
    pub device: String,
    /// `name@version` of the edge model that decided.
    pub edge_model: String,
    /// Class acted on at the edge.
    pub edge_class: usize,
    /// The cloud model's class.
    pub cloud_class: usize,
    /// The fallback answered at the edge.
    pub fallback: bool,
    /// Events in the group.
    pub events: u64,
    /// Of which deadline misses.
    pub deadline_miss: u64,
}

/// The counts the query engine computes (module doc).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tallies {
    /// The comparison groups.
    pub cells: Vec<Cell>,
    /// Scored events per window index (`(arrival − from) / window`).
    pub window_events: BTreeMap<u64, u64>,
    /// Rows of the snapshot's files outside its time range (skipped).
    pub out_of_range: u64,
    /// Rows the cloud model could not score (model input of the wrong length; skipped).
    pub unscorable: u64,
    /// Rows in the range filed under a cloud estimate because their board's clock was
    /// implausible (`clock_suspect`, see `crate::clock`); rescored like the others.
    pub clock_suspect: u64,
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

    /// Adds a comparison group.
    fn add(&mut self, c: &Cell) {
        let agree = c.edge_class == c.cloud_class;
        self.events += c.events;
        self.agree += if agree { c.events } else { 0 };
        self.fallback += if c.fallback { c.events } else { 0 };
        self.fallback_disagree += if c.fallback && !agree { c.events } else { 0 };
        self.deadline_miss += c.deadline_miss;
        if let Some(cell) = self
            .confusion
            .get_mut(c.edge_class)
            .and_then(|row| row.get_mut(c.cloud_class))
        {
            *cell += c.events;
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

fn insert_features(s: &mut [QuantileSketch], features: &[f32], missing: &[bool]) -> u64 {
    let mut non_finite = 0;
    for (i, (sk, &v)) in s.iter_mut().zip(features).enumerate() {
        if missing.get(i).copied().unwrap_or(false) {
            continue;
        }
        if sk.insert(f64::from(v)).is_err() {
            non_finite += 1;
        }
    }
    non_finite
}

/// One device's sketches.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DevicePartial {
    /// End-to-end latency, µs.
    pub latency_us: QuantileSketch,
    /// Features of events in the baseline period.
    pub baseline: Vec<QuantileSketch>,
    /// Features of later events.
    pub current: Vec<QuantileSketch>,
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

impl PlanParams {
    /// The drift window an arrival inside the range falls in.
    pub fn window_of(&self, arrival_us: u64) -> u64 {
        arrival_us.saturating_sub(self.from_us) / self.window_us.max(1)
    }
}

/// The sketches of a set of events (module doc).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Partial {
    /// The plan constants.
    pub params: PlanParams,
    /// Per node, then per device id on that node.
    pub devices: BTreeMap<String, BTreeMap<String, DevicePartial>>,
    /// Fleet feature sketches.
    pub features: Vec<QuantileSketch>,
    /// Fleet feature sketches per window index ([`PlanParams::window_of`]).
    pub windows: BTreeMap<u64, Vec<QuantileSketch>>,
    /// Feature values that were NaN/∞ (not sketched).
    pub non_finite_values: u64,
    /// Per reference feature, scored events that lacked it (their feature set does not
    /// name it).
    #[serde(default)]
    pub missing: Vec<u64>,
}

impl Partial {
    /// An empty partial.
    pub fn new(params: PlanParams) -> Partial {
        Partial {
            devices: BTreeMap::new(),
            features: sketches(params.features),
            windows: BTreeMap::new(),
            non_finite_values: 0,
            missing: vec![0; params.features],
            params,
        }
    }

    /// Folds one scored event in.
    pub fn observe(&mut self, o: &Observation<'_>) {
        let p = self.params;
        self.non_finite_values += insert_features(&mut self.features, o.features, o.missing);
        for (n, &m) in self.missing.iter_mut().zip(o.missing) {
            *n += u64::from(m);
        }
        insert_features(
            self.windows
                .entry(p.window_of(o.arrival_us))
                .or_insert_with(|| sketches(p.features)),
            o.features,
            o.missing,
        );
        let d = self
            .devices
            .entry(o.node.to_owned())
            .or_default()
            .entry(o.device.to_owned())
            .or_insert_with(|| DevicePartial {
                latency_us: QuantileSketch::default(),
                baseline: sketches(p.features),
                current: sketches(p.features),
            });
        let _ = d.latency_us.insert(f64::from(o.end_to_end_us));
        let target = if o.arrival_us < p.baseline_end_us {
            &mut d.baseline
        } else {
            &mut d.current
        };
        insert_features(target, o.features, o.missing);
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
        merge_sketches(&mut self.features, &other.features)?;
        for (w, s) in &other.windows {
            merge_sketches(
                self.windows
                    .entry(*w)
                    .or_insert_with(|| sketches(p.features)),
                s,
            )?;
        }
        for (node, devices) in &other.devices {
            let mine_of_node = self.devices.entry(node.clone()).or_default();
            for (name, d) in devices {
                Self::merge_device(mine_of_node, name, d)?;
            }
        }
        self.non_finite_values += other.non_finite_values;
        if self.missing.len() < other.missing.len() {
            self.missing.resize(other.missing.len(), 0);
        }
        for (a, b) in self.missing.iter_mut().zip(&other.missing) {
            *a += b;
        }
        Ok(())
    }

    fn merge_device(
        mine: &mut BTreeMap<String, DevicePartial>,
        name: &str,
        d: &DevicePartial,
    ) -> Result<(), DriftError> {
        match mine.get_mut(name) {
            None => {
                mine.insert(name.to_owned(), d.clone());
            }
            Some(mine) => {
                mine.latency_us.merge(&d.latency_us)?;
                merge_sketches(&mut mine.baseline, &d.baseline)?;
                merge_sketches(&mut mine.current, &d.current)?;
            }
        }
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
    /// Node (board) of the device.
    pub node: String,
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

/// Everything [`finish`] computes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Figures {
    /// Whole snapshot.
    pub fleet: Counts,
    /// Its rates.
    pub fleet_rates: Rates,
    /// Per edge model version.
    pub models: BTreeMap<String, (Counts, Rates)>,
    /// Per device, in (node, device) order.
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
    /// Reference features that scored events lacked (their feature set does not name
    /// them), with how many events lacked each; such a feature's drift is judged on the
    /// events that have it, or not at all.
    #[serde(default)]
    pub missing_features: Vec<MissingFeature>,
    /// Rows outside the range.
    pub out_of_range: u64,
    /// Rows the cloud model could not score.
    pub unscorable: u64,
    /// Rows in the range whose board clock was implausible, filed under the cloud's
    /// estimate of their time (`clock_suspect`); included in every figure above.
    #[serde(default)]
    pub clock_suspect: u64,
}

/// A reference feature that scored events lacked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MissingFeature {
    /// The feature's name in the reference.
    pub name: String,
    /// Scored events without it.
    pub events: u64,
}

/// Reduces the merged sketches and the engine's tallies to figures (module doc).
pub fn finish(
    sketches: &Partial,
    tallies: &Tallies,
    reference: &Reference,
    thresholds: &DriftThresholds,
    min_events: u64,
) -> Result<Figures, DriftError> {
    let p = sketches.params;
    let rolled = RolledUp::of(&tallies.cells, p.classes);
    let fleet_drift = if rolled.fleet.events >= min_events {
        Some(window_drift(
            &sketches.features,
            &rolled.edge_classes,
            reference,
            thresholds,
        )?)
    } else {
        None
    };
    let cloud_class_js_distance = cloud_class_distance(&rolled.cloud_classes, reference)?;
    let windows = window_figures(sketches, tallies, reference, thresholds, min_events)?;
    let devices = device_figures(rolled.devices, sketches, reference, thresholds, min_events)?;
    Ok(Figures {
        fleet_rates: rolled.fleet.rates(),
        fleet: rolled.fleet,
        models: rolled
            .models
            .into_iter()
            .map(|(k, c)| {
                let r = c.rates();
                (k, (c, r))
            })
            .collect(),
        devices,
        fleet_drift,
        cloud_class_js_distance,
        windows,
        edge_classes: rolled.edge_classes,
        cloud_classes: rolled.cloud_classes,
        non_finite_values: sketches.non_finite_values,
        missing_features: reference
            .features()
            .iter()
            .zip(&sketches.missing)
            .filter(|(_, &n)| n > 0)
            .map(|(f, &events)| MissingFeature {
                name: f.name.clone(),
                events,
            })
            .collect(),
        out_of_range: tallies.out_of_range,
        unscorable: tallies.unscorable,
        clock_suspect: tallies.clock_suspect,
    })
}

/// The comparison cells rolled up into the fleet's, each edge model version's and each
/// device's counts, and the class histograms of both models.
struct RolledUp {
    fleet: Counts,
    models: BTreeMap<String, Counts>,
    devices: BTreeMap<DeviceId, Counts>,
    edge_classes: Vec<u64>,
    cloud_classes: Vec<u64>,
}

impl RolledUp {
    fn of(cells: &[Cell], classes: usize) -> RolledUp {
        let mut r = RolledUp {
            fleet: Counts::new(classes),
            models: BTreeMap::new(),
            devices: BTreeMap::new(),
            edge_classes: vec![0; classes],
            cloud_classes: vec![0; classes],
        };
        for c in cells {
            r.fleet.add(c);
            r.models
                .entry(c.edge_model.clone())
                .or_insert_with(|| Counts::new(classes))
                .add(c);
            r.devices
                .entry(DeviceId {
                    node: c.node.clone(),
                    device: c.device.clone(),
                })
                .or_insert_with(|| Counts::new(classes))
                .add(c);
            if let Some(n) = r.edge_classes.get_mut(c.edge_class) {
                *n += c.events;
            }
            if let Some(n) = r.cloud_classes.get_mut(c.cloud_class) {
                *n += c.events;
            }
        }
        r
    }
}

/// Jensen–Shannon distance of the cloud model's class histogram to the reference
/// fractions; `None` when nothing was scored.
fn cloud_class_distance(
    cloud_classes: &[u64],
    reference: &Reference,
) -> Result<Option<f64>, DriftError> {
    if cloud_classes.iter().sum::<u64>() == 0 {
        return Ok(None);
    }
    let c: Vec<f64> = cloud_classes.iter().map(|&c| c as f64).collect();
    Ok(Some(
        reflex_drift::stats::jensen_shannon::jensen_shannon_distance(
            &c,
            reference.class_fractions(),
        )?,
    ))
}

/// The fleet's drift per window that has scored events (judged from `min_events`).
fn window_figures(
    sketches: &Partial,
    tallies: &Tallies,
    reference: &Reference,
    thresholds: &DriftThresholds,
    min_events: u64,
) -> Result<Vec<WindowFigures>, DriftError> {
    let p = sketches.params;
    let no_sketches = self::sketches(p.features);
    let mut windows = Vec::new();
    for (&w, &events) in &tallies.window_events {
        let drift = if events >= min_events {
            let s = sketches.windows.get(&w).unwrap_or(&no_sketches);
            let no_classes = vec![0; reference.class_fractions().len()];
            Some(window_drift(s, &no_classes, reference, thresholds)?)
        } else {
            None
        };
        windows.push(WindowFigures {
            index: w,
            start_us: p.from_us + w * p.window_us,
            events,
            drift,
        });
    }
    Ok(windows)
}

/// Each device's figures: its counts, latency quantiles and drift against its baseline.
fn device_figures(
    device_counts: BTreeMap<DeviceId, Counts>,
    sketches: &Partial,
    reference: &Reference,
    thresholds: &DriftThresholds,
    min_events: u64,
) -> Result<Vec<DeviceFigures>, DriftError> {
    let mut devices = Vec::new();
    for (id, counts) in device_counts {
        let d = sketches
            .devices
            .get(&id.node)
            .and_then(|of_node| of_node.get(&id.device));
        let drift = match d {
            Some(d) => device_drift(d, reference, thresholds, min_events)?,
            None => None,
        };
        let latency = |q: f64| d.and_then(|d| d.latency_us.quantile(q)).unwrap_or(0.0);
        devices.push(DeviceFigures {
            node: id.node,
            device: id.device,
            rates: counts.rates(),
            counts,
            latency_p50_us: latency(0.5),
            latency_p99_us: latency(0.99),
            flagged: drift.as_ref().is_some_and(|x| x.dataset.drifted),
            drift,
        });
    }
    Ok(devices)
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

    fn obs<'a>(device: &'a str, t: u64, f: &'a [f32]) -> Observation<'a> {
        obs_on("n1", device, t, f)
    }

    fn obs_on<'a>(node: &'a str, device: &'a str, t: u64, f: &'a [f32]) -> Observation<'a> {
        Observation {
            node,
            device,
            end_to_end_us: 100,
            arrival_us: t,
            features: f,
            missing: &[],
        }
    }

    fn cell(device: &str, model: &str, edge: usize, cloud: usize, events: u64) -> Cell {
        cell_on("n1", device, model, edge, cloud, events)
    }

    fn cell_on(
        node: &str,
        device: &str,
        model: &str,
        edge: usize,
        cloud: usize,
        events: u64,
    ) -> Cell {
        Cell {
            node: node.into(),
            device: device.into(),
            edge_model: model.into(),
            edge_class: edge,
            cloud_class: cloud,
            fallback: edge == 1,
            events,
            deadline_miss: events / 2,
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
    fn a_feature_events_lack_is_counted_missing_not_sketched_and_not_non_finite() {
        let mut p = Partial::new(params());
        let (both, only_b) = ([0.5f32, 0.25], [f32::NAN, 0.75]);
        p.observe(&obs("d", 10, &both));
        p.observe(&Observation {
            missing: &[true, false],
            ..obs("d", 20, &only_b)
        });
        assert_eq!(p.missing, [1, 0]);
        assert_eq!(
            p.non_finite_values, 0,
            "a missing feature is not a bad value"
        );
        assert_eq!((p.features[0].count(), p.features[1].count()), (1, 2));
        let mut merged = Partial::new(params());
        merged.merge(&p).unwrap();
        merged.merge(&p).unwrap();
        assert_eq!(merged.missing, [2, 0]);
        let tallies = Tallies {
            cells: vec![cell("d", "edge@1", 0, 0, 2)],
            window_events: BTreeMap::from([(0, 2)]),
            ..Tallies::default()
        };
        let figs = finish(
            &merged,
            &tallies,
            &reference(),
            &DriftThresholds::default(),
            1,
        )
        .unwrap();
        assert_eq!(
            figs.missing_features,
            [MissingFeature {
                name: "a".into(),
                events: 2
            }]
        );
    }

    #[test]
    fn cells_roll_up_into_agreement_confusion_and_fallback_disagreement() {
        let tallies = Tallies {
            cells: vec![
                cell("d", "edge@1", 0, 0, 2),
                cell("d", "edge@1", 0, 1, 2),
                cell("e", "fallback@1", 1, 1, 2),
                cell("e", "fallback@1", 1, 0, 2),
            ],
            window_events: BTreeMap::from([(0, 8)]),
            out_of_range: 3,
            unscorable: 1,
            clock_suspect: 0,
        };
        let figs = finish(
            &Partial::new(params()),
            &tallies,
            &reference(),
            &DriftThresholds::default(),
            100,
        )
        .unwrap();
        let c = &figs.fleet;
        assert_eq!(
            (c.events, c.agree, c.fallback, c.fallback_disagree),
            (8, 4, 4, 2)
        );
        assert_eq!(c.confusion, vec![vec![2, 2], vec![2, 2]]);
        let r = c.rates();
        assert_eq!(r.agreement, 0.5);
        assert_eq!(r.fallback_disagreement, 0.5);
        assert_eq!(r.deadline_miss, 0.5);
        assert_eq!((figs.out_of_range, figs.unscorable), (3, 1));
        assert_eq!(figs.models["edge@1"].0.events, 4);
        assert_eq!(figs.models["fallback@1"].1.agreement, 0.5);
        assert_eq!(figs.devices.len(), 2);
        assert_eq!(
            figs.devices[0].counts.confusion,
            vec![vec![2, 2], vec![0, 0]]
        );
        assert_eq!(figs.devices[1].rates.fallback, 1.0);
        assert_eq!(
            (figs.edge_classes.clone(), figs.cloud_classes.clone()),
            (vec![4, 4], vec![4, 4])
        );
        assert_eq!(figs.windows.len(), 1);
        assert!(
            figs.windows[0].drift.is_none(),
            "8 events are below min_events"
        );
    }

    #[test]
    fn the_same_device_id_on_two_nodes_is_two_devices() {
        let tallies = Tallies {
            cells: vec![
                cell_on("board-b", "pump-1", "edge@1", 0, 0, 3),
                cell_on("board-a", "pump-1", "edge@1", 0, 1, 5),
            ],
            window_events: BTreeMap::from([(0, 8)]),
            ..Tallies::default()
        };
        let mut p = Partial::new(params());
        p.observe(&obs_on("board-a", "pump-1", 2_000, &[0.1, 0.2]));
        p.observe(&obs_on("board-b", "pump-1", 2_000, &[0.3, 0.4]));
        p.observe(&obs_on("board-b", "pump-1", 3_000, &[0.3, 0.4]));
        let mut merged = Partial::new(params());
        merged.merge(&p).unwrap();
        assert_eq!(merged.devices, p.devices);
        let figs = finish(
            &merged,
            &tallies,
            &reference(),
            &DriftThresholds::default(),
            100,
        )
        .unwrap();
        let ids: Vec<(&str, &str, u64, u64)> = figs
            .devices
            .iter()
            .map(|d| {
                let n = merged.devices[&d.node][&d.device].latency_us.count();
                (d.node.as_str(), d.device.as_str(), d.counts.events, n)
            })
            .collect();
        assert_eq!(
            ids,
            [("board-a", "pump-1", 5, 1), ("board-b", "pump-1", 3, 2)]
        );
        assert_eq!(figs.devices[0].counts.agree, 0);
        assert_eq!(figs.devices[1].counts.agree, 3);
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
            let o = obs(dev(i), at(i), f);
            whole.observe(&o);
            if i < 150 {
                left.observe(&o);
            } else {
                right.observe(&o);
            }
        }
        left.merge(&right).unwrap();
        assert_eq!(
            left.windows.keys().collect::<Vec<_>>(),
            whole.windows.keys().collect::<Vec<_>>()
        );
        assert_eq!(
            left.devices["n1"]["a"].baseline[0].count(),
            whole.devices["n1"]["a"].baseline[0].count()
        );
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
        let mut window_events = BTreeMap::new();
        for i in 0..4000u64 {
            let t = 1_000 + i * 249;
            let late = t >= 500_000;
            let (a, b) = (unit(), unit());
            p.observe(&obs("steady", t, &[a, b]));
            let shift = if late { 0.3 } else { 0.0 };
            p.observe(&obs("moving", t, &[a + shift, b * 1.5]));
            *window_events.entry(params().window_of(t)).or_default() += 2;
        }
        let tallies = Tallies {
            cells: vec![
                cell("moving", "edge@1", 0, 0, 4000),
                cell("steady", "edge@1", 0, 0, 4000),
            ],
            window_events,
            ..Tallies::default()
        };
        let figs = finish(&p, &tallies, &reference(), &DriftThresholds::default(), 200).unwrap();
        let by = |n: &str| figs.devices.iter().find(|d| d.device == n).unwrap().clone();
        assert!(by("moving").flagged, "{:?}", by("moving").drift);
        assert!(!by("steady").flagged, "{:?}", by("steady").drift);
        assert!(figs.fleet_drift.is_some());
        assert_eq!(figs.windows.len(), 10);
        assert!(figs.windows.iter().all(|w| w.drift.is_some()));
    }

    #[test]
    fn a_device_without_enough_events_is_not_judged() {
        let mut p = Partial::new(params());
        p.observe(&obs("few", 2_000, &[0.1, 0.2]));
        p.observe(&obs("few", 600_000, &[0.9, 0.9]));
        let tallies = Tallies {
            cells: vec![cell("few", "edge@1", 0, 0, 2)],
            ..Tallies::default()
        };
        let figs = finish(&p, &tallies, &reference(), &DriftThresholds::default(), 10).unwrap();
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
