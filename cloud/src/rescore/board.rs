//! The boards' own live view, next to the batch view: the monitoring windows each board
//! closed, which rode with its uploads, merged per route across windows and
//! boards without touching a raw event, judged against the same reference and thresholds
//! as the batch, and compared feature by feature with the batch's figures. Each board's
//! own windows are also merged apart (`per_node`): what that board saw over the range.
//! Pure: the job reads the window files, this module reduces them.
//!
//! Windows are selected by time: a window counts when it lies wholly inside the snapshot's
//! range `[from, to)`; the others are counted as outside. A board does not ship the window
//! that was open when it stopped, so the board view can hold fewer events than the batch.

use std::collections::BTreeMap;

use reflex_drift::monitor::{window_drift, WindowDrift, WindowSummary};
use reflex_drift::stats::verdict::DriftThresholds;
use reflex_drift::{DriftError, Reference};
use serde::{Deserialize, Serialize};

/// One route, every board's windows merged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BoardRoute {
    /// The route.
    pub route: String,
    /// Windows merged.
    pub windows: usize,
    /// Events in them.
    pub events: u64,
    /// Answered by the fallback.
    pub fallbacks: u64,
    /// Deadline misses.
    pub deadline_misses: u64,
    /// Classes the model predicted.
    pub model_class_counts: Vec<u64>,
    /// Drift of the merged sketches against the reference (`None` below `min_events`).
    pub drift: Option<WindowDrift>,
}

/// One feature, board sketches vs the batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureComparison {
    /// Feature.
    pub name: String,
    /// KS statistic from the boards' sketches / from the batch.
    pub ks: (f64, f64),
    /// PSI, boards / batch.
    pub psi: (f64, f64),
    /// Wasserstein distance, boards / batch.
    pub wasserstein: (f64, f64),
    /// Drift verdicts, boards / batch.
    pub drifted: (bool, bool),
}

/// One board's own view: only its windows, merged per route.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BoardNode {
    /// The board (node) that sent the windows.
    pub node: String,
    /// Per route.
    pub routes: Vec<BoardRoute>,
}

/// `report.json`'s `board` section.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BoardView {
    /// Window files in the snapshot (distinct contents).
    pub windows_read: usize,
    /// Of those, not wholly inside the range (left out).
    pub windows_outside_range: usize,
    /// Boards whose windows are in.
    pub nodes: Vec<String>,
    /// Per route, every board merged.
    pub routes: Vec<BoardRoute>,
    /// Per board, its own windows merged per route (same order as `nodes`).
    #[serde(default)]
    pub per_node: Vec<BoardNode>,
    /// All routes merged, feature by feature against the batch's fleet figures (empty when
    /// either side is too small to judge or the routes' features differ).
    pub versus_batch: Vec<FeatureComparison>,
}

/// Merges `windows` (with the node that sent each) inside `[from_us, to_us)` per route and
/// judges them against `reference`; compares all routes merged with `batch`.
pub fn board_view(
    windows: &[(String, WindowSummary)],
    from_us: u64,
    to_us: u64,
    reference: &Reference,
    thresholds: &DriftThresholds,
    min_events: u64,
    batch: Option<&WindowDrift>,
) -> Result<BoardView, DriftError> {
    let judge = Judge {
        reference,
        thresholds,
        min_events,
    };
    let mut view = BoardView {
        windows_read: windows.len(),
        ..BoardView::default()
    };
    let mut routes: Merged = BTreeMap::new();
    let mut per_node: BTreeMap<&str, Merged> = BTreeMap::new();
    for (node, w) in windows {
        let inside =
            w.start_ms.saturating_mul(1000) >= from_us && w.end_ms.saturating_mul(1000) <= to_us;
        if !inside {
            view.windows_outside_range += 1;
            continue;
        }
        add(&mut routes, w)?;
        add(per_node.entry(node.as_str()).or_default(), w)?;
    }
    view.nodes = per_node.keys().map(|n| (*n).to_owned()).collect();
    view.routes = judge.routes(&routes)?;
    for (node, routes) in &per_node {
        view.per_node.push(BoardNode {
            node: (*node).to_owned(),
            routes: judge.routes(routes)?,
        });
    }
    view.versus_batch = versus_batch(&routes, &judge, batch)?;
    Ok(view)
}

/// Each route's windows merged, with how many were merged.
type Merged<'a> = BTreeMap<&'a str, (usize, WindowSummary)>;

/// The reference, thresholds and minimum size every merged view is judged with.
struct Judge<'a> {
    reference: &'a Reference,
    thresholds: &'a DriftThresholds,
    min_events: u64,
}

impl Judge<'_> {
    /// The drift of merged windows; `None` below `min_events` (at least 1).
    fn drift(&self, w: &WindowSummary) -> Result<Option<WindowDrift>, DriftError> {
        if w.events < self.min_events.max(1) {
            return Ok(None);
        }
        window_drift(
            &w.sketches,
            &w.model_class_counts,
            self.reference,
            self.thresholds,
        )
        .map(Some)
    }

    /// Each merged route, counted and judged.
    fn routes(&self, routes: &Merged<'_>) -> Result<Vec<BoardRoute>, DriftError> {
        routes
            .iter()
            .map(|(route, (n, merged))| {
                Ok(BoardRoute {
                    route: (*route).to_owned(),
                    windows: *n,
                    events: merged.events,
                    fallbacks: merged.fallbacks,
                    deadline_misses: merged.deadline_misses,
                    model_class_counts: merged.model_class_counts.clone(),
                    drift: self.drift(merged)?,
                })
            })
            .collect()
    }
}

/// All routes merged, judged, and set feature by feature beside the batch's figures; empty
/// when there is no batch drift, the merge is too small to judge, or the routes' features
/// differ (they cannot be merged).
fn versus_batch(
    routes: &Merged<'_>,
    judge: &Judge<'_>,
    batch: Option<&WindowDrift>,
) -> Result<Vec<FeatureComparison>, DriftError> {
    let mut all: Option<WindowSummary> = None;
    for (_, merged) in routes.values() {
        match &mut all {
            None => all = Some(merged.clone()),
            Some(a) => {
                if a.merge(merged).is_err() {
                    return Ok(Vec::new());
                }
            }
        }
    }
    let (Some(all), Some(batch)) = (all, batch) else {
        return Ok(Vec::new());
    };
    let Some(board) = judge.drift(&all)? else {
        return Ok(Vec::new());
    };
    Ok(board
        .features
        .iter()
        .filter_map(|b| {
            let c = batch.features.iter().find(|c| c.name == b.name)?;
            Some(FeatureComparison {
                name: b.name.clone(),
                ks: (b.ks_statistic, c.ks_statistic),
                psi: (b.psi, c.psi),
                wasserstein: (b.wasserstein, c.wasserstein),
                drifted: (b.drifted, c.drifted),
            })
        })
        .collect())
}

/// Adds window `w` to its route's merge in `routes`.
fn add<'a>(routes: &mut Merged<'a>, w: &'a WindowSummary) -> Result<(), DriftError> {
    match routes.get_mut(w.route.as_str()) {
        Some((n, merged)) => {
            merged.merge(w)?;
            *n += 1;
        }
        None => {
            let mut first = w.clone();
            first.drift = None;
            routes.insert(&w.route, (1, first));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use reflex_drift::{FeatureReference, QuantileProfile, QuantileSketch};

    const WINDOW_MS: u64 = 60_000;

    /// One feature `x`, uniform on [0, 1]; two classes at 50/50.
    fn reference() -> Reference {
        let quantiles = (0..=100).map(|i| f64::from(i) / 100.0).collect();
        Reference::new(
            vec![FeatureReference {
                name: "x".into(),
                profile: QuantileProfile::new(quantiles, 10_000).unwrap(),
            }],
            vec![0.5, 0.5],
        )
        .unwrap()
    }

    /// Window `index` of `route`: `n` values of `x` evenly spread over `[lo, lo + 1)`,
    /// classes alternating, every tenth event answered by the fallback (and late).
    fn window(route: &str, index: u64, n: u64, lo: f64) -> WindowSummary {
        let mut sketch = QuantileSketch::new(200).unwrap();
        for i in 0..n {
            sketch.insert(lo + (i as f64 + 0.5) / n as f64).unwrap();
        }
        let fallbacks = n / 10;
        let answered = n - fallbacks;
        WindowSummary {
            route: route.into(),
            index,
            start_ms: index * WINDOW_MS,
            end_ms: (index + 1) * WINDOW_MS,
            events: n,
            model_class_counts: vec![answered.div_ceil(2), answered / 2],
            fallbacks,
            deadline_misses: fallbacks,
            non_finite_values: 0,
            feature_names: vec!["x".into()],
            sketches: vec![sketch],
            drift: None,
        }
    }

    fn view(windows: &[(String, WindowSummary)], batch: Option<&WindowDrift>) -> BoardView {
        board_view(
            windows,
            0,
            100 * WINDOW_MS * 1000,
            &reference(),
            &DriftThresholds::default(),
            100,
            batch,
        )
        .unwrap()
    }

    fn ks(route: &BoardRoute) -> f64 {
        route.drift.as_ref().expect("judged").features[0].ks_statistic
    }

    #[test]
    fn windows_of_several_boards_are_merged_per_route_and_kept_apart_per_board() {
        let windows = vec![
            ("board-a".to_owned(), window("press", 1, 1000, 0.0)),
            ("board-a".to_owned(), window("press", 2, 3000, 0.0)),
            ("board-b".to_owned(), window("press", 1, 2000, 0.0)),
            ("board-b".to_owned(), window("saw", 1, 500, 0.0)),
        ];
        let v = view(&windows, None);
        assert_eq!(v.windows_read, 4);
        assert_eq!(v.nodes, ["board-a", "board-b"]);
        let routes: Vec<(&str, usize, u64, u64, u64)> = v
            .routes
            .iter()
            .map(|r| {
                (
                    r.route.as_str(),
                    r.windows,
                    r.events,
                    r.fallbacks,
                    r.model_class_counts.iter().sum(),
                )
            })
            .collect();
        assert_eq!(
            routes,
            [("press", 3, 6000, 600, 5400), ("saw", 1, 500, 50, 450)]
        );
        assert_eq!(v.per_node.len(), 2);
        let a = &v.per_node[0];
        assert_eq!(a.node, "board-a");
        assert_eq!(a.routes.len(), 1);
        assert_eq!((a.routes[0].windows, a.routes[0].events), (2, 4000));
        let b = &v.per_node[1];
        assert_eq!(b.node, "board-b");
        let b_routes: Vec<(&str, u64)> = b
            .routes
            .iter()
            .map(|r| (r.route.as_str(), r.events))
            .collect();
        assert_eq!(b_routes, [("press", 2000), ("saw", 500)]);
        // Each board's part adds up to the fleet's, route by route.
        for r in &v.routes {
            let parts: u64 = v
                .per_node
                .iter()
                .flat_map(|n| &n.routes)
                .filter(|p| p.route == r.route)
                .map(|p| p.events)
                .sum();
            assert_eq!(parts, r.events, "{}", r.route);
        }
    }

    #[test]
    fn a_shifted_board_drifts_in_its_own_view_and_the_fleet_sees_the_union_of_the_events() {
        // board-a matches the reference (uniform on [0, 1]); board-b is shifted by half the
        // range. Exact KS of b: 0.5 (at x = 0.5); of the union: 0.25 (at x = 1, where the
        // union's CDF is (1 + 0.5) / 2).
        let windows = vec![
            ("board-a".to_owned(), window("press", 1, 4000, 0.0)),
            ("board-b".to_owned(), window("press", 1, 4000, 0.5)),
        ];
        let v = view(&windows, None);
        let (a, b) = (&v.per_node[0].routes[0], &v.per_node[1].routes[0]);
        assert!(ks(a) < 0.01, "board-a KS {}", ks(a));
        assert!((ks(b) - 0.5).abs() < 0.01, "board-b KS {}", ks(b));
        assert!(
            (ks(&v.routes[0]) - 0.25).abs() < 0.01,
            "fleet KS {}",
            ks(&v.routes[0])
        );
        let drifted = |r: &BoardRoute| r.drift.as_ref().unwrap().features[0].drifted;
        assert!(!drifted(a));
        assert!(drifted(b));
        assert!(drifted(&v.routes[0]));
    }

    #[test]
    fn windows_reaching_outside_the_range_are_counted_and_left_out() {
        let windows = vec![
            ("board-a".to_owned(), window("press", 1, 1000, 0.0)),
            ("board-a".to_owned(), window("press", 2, 1000, 0.0)),
            ("board-b".to_owned(), window("press", 3, 1000, 0.0)),
        ];
        // [1 window, 3 windows): window 2 ends at 3 windows, inside; window 3 is not.
        let v = board_view(
            &windows,
            WINDOW_MS * 1000,
            3 * WINDOW_MS * 1000,
            &reference(),
            &DriftThresholds::default(),
            100,
            None,
        )
        .unwrap();
        assert_eq!((v.windows_read, v.windows_outside_range), (3, 1));
        assert_eq!(v.nodes, ["board-a"], "board-b has no window in the range");
        assert_eq!(v.routes[0].events, 2000);
        assert_eq!(v.per_node.len(), 1);
    }

    #[test]
    fn too_few_events_are_not_judged_and_the_batch_comparison_needs_both_sides() {
        let small = vec![("board-a".to_owned(), window("press", 1, 50, 0.0))];
        let v = view(&small, None);
        assert_eq!(v.routes[0].drift, None);
        assert_eq!(v.per_node[0].routes[0].drift, None);
        let big = vec![("board-a".to_owned(), window("press", 1, 2000, 0.0))];
        let batch = view(&big, None).routes[0].drift.clone().unwrap();
        assert!(view(&big, None).versus_batch.is_empty());
        let compared = view(&big, Some(&batch)).versus_batch;
        assert_eq!(compared.len(), 1);
        assert_eq!(compared[0].name, "x");
        assert_eq!(compared[0].ks.0, compared[0].ks.1);
    }
}
