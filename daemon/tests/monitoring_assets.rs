//! The fleet's monitoring assets against reflexd's own exposition: every `reflexd_*` name
//! the Prometheus alert rules, their promtool tests and the Grafana dashboard use must be a
//! series reflexd renders (a renamed metric would otherwise leave an alert that never
//! fires or a panel with no data), the dashboard keeps the fields Grafana imports by, and
//! every alert has a promtool test. `scripts/check-rules` runs promtool itself.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use reflex_models::Manifest;
use reflexd::monitor::{reference_from_manifest, LiveMonitor, MonitorSection};
use reflexd::ops::metrics::Metrics;
use reflexd::ops::readiness::{LinkState, Readiness};
use serde_json::Value;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

const RULES: &str = "monitoring/prometheus/reflexd.rules.yml";
const RULE_TESTS: &str = "monitoring/prometheus/reflexd.rules.test.yml";
const DASHBOARD: &str = "monitoring/grafana/reflexd.dashboard.json";

/// A registry with every optional group attached (journal, upload, readiness, monitor), so
/// that it renders every family reflexd can expose.
fn full_metrics() -> Metrics {
    let routes = vec!["vibration".to_owned()];
    let m = Metrics::new(&routes);
    m.attach_journal(Arc::default());
    m.attach_upload(Arc::default());
    let link = Arc::new(LinkState::new(routes.len()));
    m.attach_readiness(Arc::new(Readiness::new(
        link,
        None,
        Duration::from_secs(25),
    )));
    let manifest = Manifest::load(repo().join("models/edge.manifest.json")).unwrap();
    let reference = reference_from_manifest(&manifest).unwrap();
    let monitor = LiveMonitor::new(
        &MonitorSection::default(),
        "board-1",
        vec![("vibration".into(), reference)],
    )
    .unwrap();
    m.attach_monitor(Arc::new(monitor));
    m
}

/// The series names a scrape can show: each `# TYPE` family, a histogram as its
/// `_bucket`, `_sum` and `_count`.
fn exposed_names() -> BTreeSet<String> {
    let text = full_metrics().render();
    let mut names = BTreeSet::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let (name, kind) = rest.split_once(' ').unwrap();
        if kind == "histogram" {
            for suffix in ["_bucket", "_sum", "_count"] {
                names.insert(format!("{name}{suffix}"));
            }
        } else {
            names.insert(name.to_owned());
        }
    }
    names
}

/// Every `reflexd_<name>` token of `text` (a bare `reflexd` or `reflexd_` is no name).
fn referenced_names(text: &str) -> BTreeSet<String> {
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut names = BTreeSet::new();
    for (at, _) in text.match_indices("reflexd_") {
        if text[..at].chars().next_back().is_some_and(ident) {
            continue;
        }
        let rest = &text[at + "reflexd_".len()..];
        let len = rest.find(|c: char| !ident(c)).unwrap_or(rest.len());
        if len > 0 {
            names.insert(format!("reflexd_{}", &rest[..len]));
        }
    }
    names
}

fn assert_all_exposed(file: &str, used: &BTreeSet<String>) {
    let exposed = exposed_names();
    let unknown: Vec<&String> = used.difference(&exposed).collect();
    assert!(
        unknown.is_empty(),
        "{file} uses names reflexd does not expose: {unknown:?}\nexposed: {exposed:?}"
    );
}

#[test]
fn the_full_exposition_has_the_families_the_assets_rely_on() {
    let exposed = exposed_names();
    for name in [
        "reflexd_build_info",
        "reflexd_ready",
        "reflexd_stage_latency_seconds_bucket",
        "reflexd_upload_backlog_records",
        "reflexd_journal_syncs_total",
        "reflexd_monitor_alert",
        "reflexd_drift_score",
    ] {
        assert!(exposed.contains(name), "{name} not in {exposed:?}");
    }
}

#[test]
fn names_are_taken_whole_and_only_after_a_word_boundary() {
    let names = referenced_names(
        "rate(reflexd_events_received_total{job=\"reflexd\"}[5m]) x_reflexd_no reflexd_* reflexd_up",
    );
    let expected: BTreeSet<String> = ["reflexd_events_received_total", "reflexd_up"]
        .map(String::from)
        .into();
    assert_eq!(names, expected);
}

#[test]
fn every_metric_the_alert_rules_and_their_tests_name_is_exposed() {
    for file in [RULES, RULE_TESTS] {
        let used = referenced_names(&read(file));
        assert!(used.len() >= 10, "{file}: {used:?}");
        assert_all_exposed(file, &used);
    }
}

#[test]
fn every_alert_rule_has_a_promtool_test() {
    let alerts: BTreeSet<String> = read(RULES)
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .map(|a| a.trim().to_owned())
        .collect();
    let tested: BTreeSet<String> = read(RULE_TESTS)
        .lines()
        .filter_map(|l| l.trim().strip_prefix("alertname: "))
        .map(|a| a.trim().to_owned())
        .collect();
    assert!(alerts.len() >= 8, "{alerts:?}");
    let untested: Vec<&String> = alerts.difference(&tested).collect();
    assert!(untested.is_empty(), "alerts without a test: {untested:?}");
    let unknown: Vec<&String> = tested.difference(&alerts).collect();
    assert!(unknown.is_empty(), "tests of no alert: {unknown:?}");
}

/// Every PromQL string of the dashboard: panel targets' `expr`, template queries.
fn dashboard_queries(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            for (key, value) in map {
                match (key.as_str(), value) {
                    ("expr" | "definition", Value::String(q)) => out.push(q.clone()),
                    ("query", Value::String(q)) if q.contains('(') => out.push(q.clone()),
                    _ => dashboard_queries(value, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|i| dashboard_queries(i, out)),
        _ => {}
    }
}

#[test]
fn the_dashboard_is_a_grafana_dashboard_with_a_query_in_every_panel() {
    let dash: Value = serde_json::from_str(&read(DASHBOARD)).expect("dashboard is JSON");
    assert_eq!(dash["uid"].as_str(), Some("reflexd-fleet"));
    assert!(!dash["title"].as_str().unwrap_or("").is_empty());
    assert!(dash["schemaVersion"].as_u64().is_some_and(|v| v >= 30));
    let panels = dash["panels"].as_array().expect("panels");
    let mut ids = BTreeSet::new();
    for p in panels {
        let title = p["title"].as_str().unwrap_or("?");
        assert!(
            ids.insert(p["id"].as_u64().expect("id")),
            "{title}: id twice"
        );
        for field in ["h", "w", "x", "y"] {
            assert!(p["gridPos"][field].is_u64(), "{title}: gridPos.{field}");
        }
        if p["type"] == "row" {
            continue;
        }
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title}: no target");
        for t in targets {
            let expr = t["expr"].as_str().unwrap_or("");
            assert!(
                expr.contains("reflexd_") || expr.starts_with("up{"),
                "{title}: {expr}"
            );
        }
    }
    let titles: Vec<&str> = panels.iter().filter_map(|p| p["title"].as_str()).collect();
    for wanted in [
        "Events/s",
        "End-to-end latency p50 / p99",
        "Deadline misses by cause",
        "Fallback ratio",
        "Upload backlog",
        "Upload status",
        "Raised monitor alerts",
        "Ready",
    ] {
        assert!(titles.contains(&wanted), "{wanted} not in {titles:?}");
    }
}

#[test]
fn every_metric_the_dashboard_queries_is_exposed() {
    let dash: Value = serde_json::from_str(&read(DASHBOARD)).unwrap();
    let mut queries = Vec::new();
    dashboard_queries(&dash, &mut queries);
    assert!(queries.len() >= 20, "{queries:?}");
    let used: BTreeSet<String> = queries.iter().flat_map(|q| referenced_names(q)).collect();
    assert!(used.len() >= 15, "{used:?}");
    assert_all_exposed(DASHBOARD, &used);
}
