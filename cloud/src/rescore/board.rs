//! The boards' own live view, next to the batch view: the monitoring windows each board
//! closed (issue 8), which rode with its uploads, merged per route across windows and
//! boards without touching a raw event, judged against the same reference and thresholds
//! as the batch, and compared feature by feature with the batch's figures. Pure: the job
//! reads the window files, this module reduces them.
//!
//! Windows are selected by time: a window counts when it lies wholly inside the snapshot's
//! range `[from, to)`; the others are counted as outside. A board does not ship the window
//! that was open when it stopped, so the board view can hold fewer events than the batch.

use std::collections::{BTreeMap, BTreeSet};

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

/// `report.json`'s `board` section.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BoardView {
    /// Window files in the snapshot (distinct contents).
    pub windows_read: usize,
    /// Of those, not wholly inside the range (left out).
    pub windows_outside_range: usize,
    /// Boards whose windows are in.
    pub nodes: Vec<String>,
    /// Per route.
    pub routes: Vec<BoardRoute>,
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
    let mut view = BoardView {
        windows_read: windows.len(),
        ..BoardView::default()
    };
    let mut nodes = BTreeSet::new();
    let mut routes: BTreeMap<&str, (usize, WindowSummary)> = BTreeMap::new();
    for (node, w) in windows {
        let inside =
            w.start_ms.saturating_mul(1000) >= from_us && w.end_ms.saturating_mul(1000) <= to_us;
        if !inside {
            view.windows_outside_range += 1;
            continue;
        }
        nodes.insert(node.clone());
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
    }
    view.nodes = nodes.into_iter().collect();
    let judge = |w: &WindowSummary| -> Result<Option<WindowDrift>, DriftError> {
        if w.events < min_events.max(1) {
            return Ok(None);
        }
        window_drift(&w.sketches, &w.model_class_counts, reference, thresholds).map(Some)
    };
    let mut all: Option<WindowSummary> = None;
    for (route, (n, merged)) in &routes {
        view.routes.push(BoardRoute {
            route: (*route).to_owned(),
            windows: *n,
            events: merged.events,
            fallbacks: merged.fallbacks,
            deadline_misses: merged.deadline_misses,
            model_class_counts: merged.model_class_counts.clone(),
            drift: judge(merged)?,
        });
        match &mut all {
            None => all = Some(merged.clone()),
            Some(a) => {
                if a.merge(merged).is_err() {
                    return Ok(view); // routes with different features: no fleet comparison
                }
            }
        }
    }
    if let (Some(all), Some(batch)) = (all, batch) {
        if let Some(board) = judge(&all)? {
            view.versus_batch = board
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
                .collect();
        }
    }
    Ok(view)
}
