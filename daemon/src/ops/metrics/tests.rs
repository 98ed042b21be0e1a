use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use super::exposition::Seconds;
use super::*;
use crate::ops::bad_input::BadInputLog;

fn routes() -> Vec<String> {
    vec!["vibration".to_owned(), "thermal".to_owned()]
}

fn line_value(text: &str, series: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ').map(str::to_owned))
}

#[test]
fn counters_render_with_the_right_labels_and_values() {
    let m = Metrics::new(&routes());
    m.event_received(0);
    m.event_received(0);
    m.event_received(1);
    m.decided(0, DecisionSource::Model);
    m.decided(0, DecisionSource::Fallback);
    m.decided(1, DecisionSource::Rule);
    m.deadline_miss(0, MissCause::ExpiredInQueue);
    m.late_model_answer(0);
    m.duplicate(1);
    m.out_of_order(1);
    m.bad_input("truncated");
    m.set_queue_depth(3);
    m.set_fallback_cost(12_500);
    m.model_run(1);
    m.model_run(4);
    m.set_model_info(0, "edge", "1.2.0", 1_500_000);
    m.model_reload(true);
    m.model_reload(false);
    m.config_reload(false);
    m.mqtt_reconnect();
    m.commands_published();
    // Out of range: ignored, no panic.
    m.event_received(7);

    let text = m.render();
    let expect = [
        ("reflexd_events_received_total{route=\"vibration\"}", "2"),
        ("reflexd_events_received_total{route=\"thermal\"}", "1"),
        (
            "reflexd_decisions_total{route=\"vibration\",source=\"model\"}",
            "1",
        ),
        (
            "reflexd_decisions_total{route=\"vibration\",source=\"fallback\"}",
            "1",
        ),
        (
            "reflexd_decisions_total{route=\"vibration\",source=\"rule\"}",
            "0",
        ),
        (
            "reflexd_decisions_total{route=\"thermal\",source=\"rule\"}",
            "1",
        ),
        (
            "reflexd_deadline_misses_total{route=\"vibration\",cause=\"expired_in_queue\"}",
            "1",
        ),
        (
            "reflexd_deadline_misses_total{route=\"thermal\",cause=\"queue_full\"}",
            "0",
        ),
        ("reflexd_late_model_answers_total{route=\"vibration\"}", "1"),
        ("reflexd_duplicate_events_total{route=\"thermal\"}", "1"),
        ("reflexd_out_of_order_events_total{route=\"thermal\"}", "1"),
        ("reflexd_bad_input_total{reason=\"truncated\"}", "1"),
        ("reflexd_bad_input_total{reason=\"other\"}", "0"),
        ("reflexd_queue_depth", "3"),
        ("reflexd_fallback_answer_cost_seconds", "0.0000125"),
        ("reflexd_model_runs_total", "2"),
        ("reflexd_model_run_windows_total", "5"),
        (
            "reflexd_model_info{route=\"vibration\",model=\"edge\",version=\"1.2.0\"}",
            "1",
        ),
        (
            "reflexd_model_latency_p999_seconds{route=\"vibration\"}",
            "0.0015",
        ),
        ("reflexd_model_latency_p999_seconds{route=\"thermal\"}", "0"),
        ("reflexd_model_reloads_total{result=\"ok\"}", "1"),
        ("reflexd_model_reloads_total{result=\"error\"}", "1"),
        ("reflexd_config_reloads_total{result=\"applied\"}", "0"),
        ("reflexd_config_reloads_total{result=\"refused\"}", "1"),
        ("reflexd_mqtt_reconnects_total", "1"),
        ("reflexd_commands_published_total", "1"),
    ];
    for (series, value) in expect {
        assert_eq!(
            line_value(&text, series).as_deref(),
            Some(value),
            "{series} in\n{text}"
        );
    }
    assert!(text.contains("# TYPE reflexd_events_received_total counter\n"));
    assert!(text.contains("# HELP reflexd_queue_depth "));
    assert!(text.contains("# TYPE reflexd_stage_latency_seconds histogram\n"));
    // The thermal route has no model yet: no info line for it.
    assert!(!text.contains("reflexd_model_info{route=\"thermal\""));
    // Every sample line is prefixed and well formed.
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        assert!(line.starts_with("reflexd_"), "{line}");
        let value = line.rsplit(' ').next().unwrap();
        assert!(value.parse::<f64>().is_ok(), "{line}");
    }

    assert_eq!(
        m.snapshot(),
        Snapshot {
            received: 3,
            bad_input: 1,
            decided_model: 1,
            decided_fallback: 1,
            decided_rule: 1,
            deadline_misses: 1,
            late_model_answers: 1,
            duplicates: 1,
            published: 1,
        }
    );
}

#[test]
fn the_journal_counters_render_both_kinds_of_quota_drop() {
    let m = Metrics::new(&routes());
    let j = Arc::new(reflex_journal::store::JournalStats::default());
    j.dropped_records.store(3, Ordering::Relaxed);
    j.dropped_uploaded.store(7, Ordering::Relaxed);
    m.attach_journal(j);
    let text = m.render();
    assert_eq!(
        line_value(&text, "reflexd_journal_dropped_records_total").as_deref(),
        Some("3")
    );
    assert_eq!(
        line_value(&text, "reflexd_journal_dropped_uploaded_total").as_deref(),
        Some("7")
    );
    assert!(text.contains("# TYPE reflexd_journal_dropped_uploaded_total counter"));
}

#[test]
fn a_closed_upload_window_shows_as_a_gauge() {
    let m = Metrics::new(&routes());
    let u = Arc::new(reflex_journal::upload::UploadStats::default());
    u.window_closed.store(1, Ordering::Relaxed);
    m.attach_upload(u);
    assert_eq!(
        line_value(&m.render(), "reflexd_upload_window_closed").as_deref(),
        Some("1")
    );
}

#[test]
fn histogram_buckets_are_cumulative_and_inf_equals_count() {
    let m = Metrics::new(&routes());
    // 0.5µs, exactly 1µs (le is inclusive), 40µs, 3ms, 2s (beyond every bound).
    for ns in [500, 1_000, 40_000, 3_000_000, 2_000_000_000] {
        m.observe(Stage::Infer, ns);
    }
    m.observe(Stage::Decode, 10);
    let text = m.render();
    let bucket = |le: &str| {
        line_value(
            &text,
            &format!("reflexd_stage_latency_seconds_bucket{{stage=\"infer\",le=\"{le}\"}}"),
        )
        .unwrap_or_else(|| panic!("bucket {le} missing in\n{text}"))
        .parse::<u64>()
        .unwrap()
    };
    assert_eq!(bucket("0.000001"), 2);
    assert_eq!(bucket("0.000002"), 2);
    assert_eq!(bucket("0.00005"), 3);
    assert_eq!(bucket("0.002"), 3);
    assert_eq!(bucket("0.005"), 4);
    assert_eq!(bucket("1"), 4);
    assert_eq!(bucket("+Inf"), 5);
    let mut previous = 0;
    let bounds: Vec<String> = BUCKETS_NS
        .iter()
        .map(|&ns| Seconds(ns).to_string())
        .collect();
    assert_eq!(bounds.len(), 19);
    for le in bounds.iter().map(String::as_str).chain(["+Inf"]) {
        let n = bucket(le);
        assert!(n >= previous, "le={le}");
        previous = n;
    }
    let count = line_value(
        &text,
        "reflexd_stage_latency_seconds_count{stage=\"infer\"}",
    );
    assert_eq!(count.as_deref(), Some("5"));
    let sum = line_value(&text, "reflexd_stage_latency_seconds_sum{stage=\"infer\"}");
    assert_eq!(sum.as_deref(), Some("2.0030415"));
    let decode = line_value(
        &text,
        "reflexd_stage_latency_seconds_count{stage=\"decode\"}",
    );
    assert_eq!(decode.as_deref(), Some("1"));
    let e2e = line_value(
        &text,
        "reflexd_stage_latency_seconds_bucket{stage=\"end_to_end\",le=\"+Inf\"}",
    );
    assert_eq!(e2e.as_deref(), Some("0"));
}

#[test]
fn build_info_is_one_series_with_version_commit_target_and_profile() {
    let text = Metrics::new(&routes()).render();
    assert!(text.starts_with("# HELP reflexd_build_info "), "{text}");
    assert!(text.contains("# TYPE reflexd_build_info gauge\n"));
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("reflexd_build_info{"))
        .collect();
    assert_eq!(lines.len(), 1, "{text}");
    let expected = format!(
        "reflexd_build_info{{version=\"{}\",git_commit=\"{}\",target=\"{}\",profile=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION"),
        BUILD_INFO[1].1,
        BUILD_INFO[2].1,
        BUILD_INFO[3].1,
    );
    assert_eq!(lines[0], expected);
    for (label, value) in BUILD_INFO {
        assert!(!value.is_empty(), "{label}");
    }
    assert!(
        ["debug", "release"].contains(&BUILD_INFO[3].1),
        "{BUILD_INFO:?}"
    );
    // A target triple: arch-vendor-os[-env].
    assert!(BUILD_INFO[2].1.split('-').count() >= 3, "{BUILD_INFO:?}");
}

#[test]
fn unknown_bad_input_reason_goes_to_other() {
    let m = Metrics::new(&routes());
    m.bad_input("made_up_reason");
    m.bad_input("");
    m.bad_input("queue_full");
    let text = m.render();
    assert_eq!(
        line_value(&text, "reflexd_bad_input_total{reason=\"other\"}").as_deref(),
        Some("2")
    );
    assert_eq!(
        line_value(&text, "reflexd_bad_input_total{reason=\"queue_full\"}").as_deref(),
        Some("1")
    );
    assert!(!text.contains("made_up_reason"));
    assert_eq!(m.snapshot().bad_input, 3);
}

#[test]
fn label_values_are_escaped() {
    let m = Metrics::new(&["a\"b\\c\nd".to_owned()]);
    let text = m.render();
    assert!(text.contains("route=\"a\\\"b\\\\c\\nd\""), "{text}");
}

#[test]
fn every_wire_decode_reason_is_a_known_label() {
    use reflex_wire::DecodeError;
    let errors = [
        DecodeError::DeviceIdEmpty,
        DecodeError::InvalidScale,
        DecodeError::Truncated { field: "x" },
        DecodeError::Malformed { field: "x" },
    ];
    for e in errors {
        assert_ne!(
            BAD_INPUT_REASONS.iter().position(|&r| r == e.reason()),
            None,
            "{}",
            e.reason()
        );
    }
}

async fn get_path(addr: std::net::SocketAddr, path: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response
}

#[tokio::test]
async fn a_real_http_get_over_loopback_returns_the_metrics_and_404_for_other_paths() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let metrics = Arc::new(Metrics::new(&routes()));
    metrics.event_received(1);
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(serve(
        listener,
        Arc::clone(&metrics),
        BadInputLog::new(4),
        shutdown.clone(),
    ));

    let ok = get_path(addr, "/metrics").await;
    assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
    assert!(
        ok.contains("Content-Type: text/plain; version=0.0.4"),
        "{ok}"
    );
    assert!(ok.contains("Connection: close\r\n"), "{ok}");
    let (head, body) = ok.split_once("\r\n\r\n").unwrap();
    assert!(
        head.contains(&format!("Content-Length: {}", body.len())),
        "{head}"
    );
    assert!(body.contains("reflexd_events_received_total{route=\"thermal\"} 1\n"));

    let health = get_path(addr, "/healthz").await;
    assert!(health.starts_with("HTTP/1.1 200 OK\r\n"), "{health}");
    assert!(health.ends_with("\r\n\r\nok\n"), "{health}");

    for path in ["/", "/metricsx", "/admin"] {
        let missing = get_path(addr, path).await;
        assert!(
            missing.starts_with("HTTP/1.1 404 Not Found\r\n"),
            "{missing}"
        );
    }

    shutdown.cancel();
    server.await.unwrap().unwrap();
}

#[tokio::test]
async fn serve_returns_after_shutdown_is_cancelled() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(serve(
        listener,
        Arc::new(Metrics::new(&routes())),
        BadInputLog::new(4),
        shutdown.clone(),
    ));
    // A client that connects and never sends a request must not hold shutdown up.
    let _idle = TcpStream::connect(addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(1), server)
        .await
        .expect("serve did not return within 1 s of shutdown")
        .unwrap()
        .unwrap();
}

#[test]
fn verification_failures_are_counted_per_tracked_model_and_unknown_names_ignored() {
    let m = Metrics::new(&routes());
    m.track_models(&["cloud".to_owned(), "edge".to_owned()]);
    m.track_models(&["other".to_owned()]);
    m.model_verification_failed("edge");
    m.model_verification_failed("edge");
    m.model_verification_failed("nope");
    let text = m.render();
    assert!(text.contains("# TYPE reflexd_model_verification_failures_total counter\n"));
    for (series, value) in [
        (
            "reflexd_model_verification_failures_total{model=\"edge\"}",
            "2",
        ),
        (
            "reflexd_model_verification_failures_total{model=\"cloud\"}",
            "0",
        ),
    ] {
        assert_eq!(line_value(&text, series).as_deref(), Some(value), "{text}");
    }
    assert!(!text.contains("model=\"other\""), "{text}");
    assert!(!text.contains("model=\"nope\""), "{text}");
}
