//! The monitor's Prometheus families, in the style of the daemon's own exposition
//! (`crate::ops::metrics`): `# HELP` and `# TYPE` once per family, one sample per label
//! set. Drift scores describe each route's last closed window and are absent when it had
//! fewer than `min_events` events (or before the first window closes).

use std::fmt::Write as _;
use std::sync::atomic::Ordering;

use reflex_drift::monitor::Subject;
use reflex_drift::stats::verdict::FeatureDrift;

use super::alert::subject_label;
use super::live::{lock, LastWindow, LiveMonitor};
use crate::ops::metrics::{header, single, Escaped, Float, RenderSeries};

/// What one route shows, copied under its lock so that rendering holds none.
struct RouteView {
    name: String,
    features: Vec<String>,
    last: Option<LastWindow>,
    raised: Vec<Subject>,
    open_events: u64,
    windows_closed: u64,
    raised_total: u64,
    cleared_total: u64,
    record_errors: u64,
}

impl RenderSeries for LiveMonitor {
    fn render_prometheus(&self, out: &mut String) {
        LiveMonitor::render_prometheus(self, out);
    }
}

impl LiveMonitor {
    /// Appends the monitor's series to a Prometheus text exposition (format 0.0.4).
    pub fn render_prometheus(&self, out: &mut String) {
        // Writing to a String cannot fail.
        let _ = self.render_into(out);
    }

    fn render_into(&self, out: &mut String) -> std::fmt::Result {
        let views = self.route_views();
        render_drift(out, &views)?;
        render_window_gauges(out, &views)?;
        render_alert_states(out, &views)?;
        render_route_counters(out, &views)?;
        self.render_outbox(out)
    }

    /// One short lock per route.
    fn route_views(&self) -> Vec<RouteView> {
        self.routes
            .iter()
            .map(|slot| {
                let state = lock(&slot.state);
                RouteView {
                    name: slot.name.clone(),
                    features: slot.feature_names.clone(),
                    last: state.last.clone(),
                    raised: state
                        .monitor
                        .raised()
                        .into_iter()
                        .map(|a| a.subject.clone())
                        .collect(),
                    open_events: state.monitor.open_events(),
                    windows_closed: state.windows_closed,
                    raised_total: state.raised_total,
                    cleared_total: state.cleared_total,
                    record_errors: slot.record_errors.load(Ordering::Relaxed),
                }
            })
            .collect()
    }

    /// The upload queue and the alert outcome counters.
    fn render_outbox(&self, out: &mut String) -> std::fmt::Result {
        let (pending_windows, windows_dropped, alerts_dropped) = {
            let o = lock(&self.outbox);
            (o.closed.len(), o.windows_dropped, o.alerts_dropped)
        };
        header(
            out,
            "reflexd_monitor_pending_windows",
            "Closed monitoring windows waiting for the uploader.",
            "gauge",
        )?;
        writeln!(out, "reflexd_monitor_pending_windows {pending_windows}")?;
        for (name, help, value) in [
            (
                "reflexd_monitor_windows_dropped_total",
                "Closed monitoring windows dropped because the upload queue was full.",
                windows_dropped,
            ),
            (
                "reflexd_monitor_alert_events_dropped_total",
                "Alert events dropped because nobody took them (publisher not running).",
                alerts_dropped,
            ),
            (
                "reflexd_monitor_alerts_published_total",
                "Alert messages handed to the MQTT client.",
                self.alerts_published.load(Ordering::Relaxed),
            ),
            (
                "reflexd_monitor_alert_publish_failures_total",
                "Alert messages the MQTT client did not take (closed, or no room in time).",
                self.alert_publish_failures.load(Ordering::Relaxed),
            ),
        ] {
            single(out, name, help, "counter", value)?;
        }
        Ok(())
    }
}

/// A gauge family with one series per route that has a value.
fn per_route_gauge(
    out: &mut String,
    views: &[RouteView],
    name: &str,
    help: &str,
    value: impl Fn(&RouteView) -> Option<String>,
) -> std::fmt::Result {
    header(out, name, help, "gauge")?;
    for v in views {
        if let Some(value) = value(v) {
            writeln!(out, "{name}{{route=\"{}\"}} {value}", Escaped(&v.name))?;
        }
    }
    Ok(())
}

/// A counter family with one series per route.
fn per_route_counter(
    out: &mut String,
    views: &[RouteView],
    name: &str,
    help: &str,
    value: impl Fn(&RouteView) -> u64,
) -> std::fmt::Result {
    header(out, name, help, "counter")?;
    for v in views {
        writeln!(out, "{name}{{route=\"{}\"}} {}", Escaped(&v.name), value(v))?;
    }
    Ok(())
}

/// Per-feature drift scores and verdicts of each route's last judged window.
fn render_drift(out: &mut String, views: &[RouteView]) -> std::fmt::Result {
    // (route, feature drift) of every route's last judged window, for the two families.
    let last_features: Vec<(&str, &FeatureDrift)> = views
        .iter()
        .filter_map(|v| Some((v.name.as_str(), v.last.as_ref()?.drift.as_ref()?)))
        .flat_map(|(route, d)| d.features.iter().map(move |f| (route, f)))
        .collect();

    header(
        out,
        "reflexd_drift_score",
        "Drift of each feature in the route's last closed window against the model's \
             reference: ks_statistic, ks_p_value, psi, wasserstein (feature unit), \
             wasserstein_normed (reference standard deviations).",
        "gauge",
    )?;
    for (route, f) in &last_features {
        for (statistic, value) in [
            ("ks_statistic", f.ks_statistic),
            ("ks_p_value", f.ks_p_value),
            ("psi", f.psi),
            ("wasserstein", f.wasserstein),
            ("wasserstein_normed", f.wasserstein_normed),
        ] {
            writeln!(
                out,
                "reflexd_drift_score{{route=\"{}\",feature=\"{}\",statistic=\"{statistic}\"}} {}",
                Escaped(route),
                Escaped(&f.name),
                Float(value)
            )?;
        }
    }

    header(
        out,
        "reflexd_drift_feature_drifted",
        "1 when the feature drifted in the route's last closed window (the configured \
             rule), else 0.",
        "gauge",
    )?;
    for (route, f) in &last_features {
        writeln!(
            out,
            "reflexd_drift_feature_drifted{{route=\"{}\",feature=\"{}\"}} {}",
            Escaped(route),
            Escaped(&f.name),
            u8::from(f.drifted)
        )?;
    }
    Ok(())
}

/// Dataset and class drift, and the figures of each route's last closed window.
fn render_window_gauges(out: &mut String, views: &[RouteView]) -> std::fmt::Result {
    let drift_of = |v: &RouteView| v.last.as_ref().and_then(|l| l.drift.clone());

    per_route_gauge(
        out,
        views,
        "reflexd_drift_drifted_feature_share",
        "Share of features that drifted in the route's last closed window.",
        |v| drift_of(v).map(|d| Float(d.dataset.share).to_string()),
    )?;
    per_route_gauge(
        out,
        views,
        "reflexd_drift_class_js_distance",
        "Jensen-Shannon distance (base 2) of the model's predicted classes in the \
             route's last closed window to the reference fractions.",
        |v| {
            drift_of(v)
                .and_then(|d| d.class_js_distance)
                .map(|d| Float(d).to_string())
        },
    )?;
    per_route_gauge(
        out,
        views,
        "reflexd_monitor_window_events",
        "Events in the route's last closed monitoring window.",
        |v| v.last.as_ref().map(|l| l.events.to_string()),
    )?;
    per_route_gauge(
        out,
        views,
        "reflexd_monitor_window_deadline_miss_rate",
        "Deadline misses / events in the route's last closed monitoring window.",
        |v| {
            v.last
                .as_ref()
                .map(|l| Float(l.deadline_miss_rate).to_string())
        },
    )?;
    per_route_gauge(
        out,
        views,
        "reflexd_monitor_window_fallback_rate",
        "Fallback answers / events in the route's last closed monitoring window.",
        |v| v.last.as_ref().map(|l| Float(l.fallback_rate).to_string()),
    )?;
    per_route_gauge(
        out,
        views,
        "reflexd_monitor_window_non_finite_values",
        "Feature values that were NaN or infinite (not sketched) in the route's last \
             closed monitoring window.",
        |v| v.last.as_ref().map(|l| l.non_finite_values.to_string()),
    )?;
    per_route_gauge(
        out,
        views,
        "reflexd_monitor_window_end_timestamp_seconds",
        "End of the route's last closed monitoring window, Unix time.",
        |v| {
            v.last
                .as_ref()
                .map(|l| Float(l.end_ms as f64 / 1e3).to_string())
        },
    )?;
    per_route_gauge(
        out,
        views,
        "reflexd_monitor_open_window_events",
        "Events recorded so far in the route's open monitoring window.",
        |v| Some(v.open_events.to_string()),
    )?;
    Ok(())
}

/// 1 or 0 for every route and alert subject.
fn render_alert_states(out: &mut String, views: &[RouteView]) -> std::fmt::Result {
    header(
        out,
        "reflexd_monitor_alert",
        "1 while an alert is raised for the route and subject (feature:<name>, dataset, \
             predicted_classes, deadline_misses, fallbacks), else 0.",
        "gauge",
    )?;
    for v in views {
        let subjects = v
            .features
            .iter()
            .map(|f| Subject::Feature(f.clone()))
            .chain([
                Subject::Dataset,
                Subject::PredictedClasses,
                Subject::DeadlineMisses,
                Subject::Fallbacks,
            ]);
        for subject in subjects {
            writeln!(
                out,
                "reflexd_monitor_alert{{route=\"{}\",subject=\"{}\"}} {}",
                Escaped(&v.name),
                Escaped(&subject_label(&subject)),
                u8::from(v.raised.contains(&subject))
            )?;
        }
    }
    Ok(())
}

/// Windows closed, alert state changes and refused observations, by route.
fn render_route_counters(out: &mut String, views: &[RouteView]) -> std::fmt::Result {
    per_route_counter(
        out,
        views,
        "reflexd_monitor_windows_closed_total",
        "Monitoring windows closed (windows without events are not counted), by route.",
        |v| v.windows_closed,
    )?;
    header(
        out,
        "reflexd_monitor_alert_events_total",
        "Alert state changes, by route and state (raised or cleared).",
        "counter",
    )?;
    for v in views {
        for (state, n) in [("raised", v.raised_total), ("cleared", v.cleared_total)] {
            writeln!(
                out,
                "reflexd_monitor_alert_events_total{{route=\"{}\",state=\"{state}\"}} {n}",
                Escaped(&v.name)
            )?;
        }
    }
    per_route_counter(
        out,
        views,
        "reflexd_monitor_record_errors_total",
        "Observations the monitor refused (wrong feature count, class out of range), by \
             route.",
        |v| v.record_errors,
    )?;
    Ok(())
}
