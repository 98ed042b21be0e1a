//! `GET /metrics` of `reflex-cloud serve`: Prometheus text exposition 0.0.4, rendered by
//! hand with the shared helpers of [`reflex_service::exposition`] (as reflexd does).
//!
//! [`Snapshot::of`] reads the counters once; [`render`] is pure. Families (all counters
//! since start unless marked gauge):
//!
//! | family | what |
//! |---|---|
//! | `reflex_cloud_build_info{version}` | gauge 1 |
//! | `reflex_cloud_http_responses_total{status}` | answers of every route by status |
//! | `reflex_cloud_ingest_requests_total` | upload requests (`POST /v1/batches`) |
//! | `reflex_cloud_batches_total{result="stored"\|"duplicate"}` | batches answered 200 |
//! | `reflex_cloud_records_stored_total` | records of newly stored batches |
//! | `reflex_cloud_bytes_stored_total` | compressed bytes of newly stored batches |
//! | `reflex_cloud_refused_total` | upload requests answered 4xx |
//! | `reflex_cloud_forbidden_total` | of those, 403 (node or device not allowed) |
//! | `reflex_cloud_refusals_total{reason}` | of those, by reason (`crate::ingest::IngestError::reason`; a reason appears once counted) |
//! | `reflex_cloud_auth_failures_total` | answers 401 (missing, unknown or mismatched token) |
//! | `reflex_cloud_timeouts_total` | head, body or request timeouts |
//! | `reflex_cloud_tls_handshake_failures_total` | failed or late TLS handshakes |
//! | `reflex_cloud_nodes` | gauge: nodes in the current token table |
//! | `reflex_cloud_token_reloads_total{result="ok"\|"error"}` | node table reloads |
//! | `reflex_cloud_last_rescore_to_seconds` | gauge: end of the newest rescore run's range (unix s); absent before the first run |
//! | `reflex_cloud_last_rescore_written_seconds` | gauge: when its report was written |
//! | `reflex_cloud_last_rescore_events` | gauge: events it rescored |
//! | `reflex_cloud_last_rescore_drift` | gauge: 1 if it detected drift |
//!
//! No label carries a node, device or token: the route is served without authentication.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::Ordering;

use reflex_service::exposition::{header, single};

use crate::ingest::IngestStats;
use crate::runs::RunEntry;
use crate::tokens::Tokens;

pub use reflex_service::exposition::CONTENT_TYPE;

/// Everything `/metrics` shows, read at once.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// Answers by status.
    pub responses: BTreeMap<u16, u64>,
    /// Upload requests.
    pub requests: u64,
    /// Batches stored (new).
    pub batches_stored: u64,
    /// Batches answered duplicate.
    pub batches_duplicate: u64,
    /// Records stored.
    pub records_stored: u64,
    /// Compressed bytes stored.
    pub bytes_stored: u64,
    /// Upload requests answered 4xx.
    pub refused: u64,
    /// Of those, 403.
    pub forbidden: u64,
    /// Upload requests answered 4xx, by reason.
    pub refusals: BTreeMap<&'static str, u64>,
    /// Timeouts.
    pub timed_out: u64,
    /// TLS handshake failures.
    pub tls_handshake_failures: u64,
    /// Nodes in the token table.
    pub nodes: u64,
    /// Token table reloads done.
    pub reloads: u64,
    /// Token table reloads refused.
    pub reload_errors: u64,
    /// The newest rescore run, if known.
    pub last_run: Option<RunEntry>,
}

impl Snapshot {
    /// Reads the counters.
    pub fn of(stats: &IngestStats, tokens: &Tokens, last_run: Option<&RunEntry>) -> Snapshot {
        let l = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        Snapshot {
            responses: stats.responses(),
            requests: l(&stats.requests),
            batches_stored: l(&stats.batches_stored),
            batches_duplicate: l(&stats.batches_duplicate),
            records_stored: l(&stats.records_stored),
            bytes_stored: l(&stats.bytes_stored),
            refused: l(&stats.refused),
            forbidden: l(&stats.forbidden),
            refusals: stats.refusals(),
            timed_out: l(&stats.timed_out),
            tls_handshake_failures: l(&stats.tls_handshake_failures),
            nodes: tokens.nodes(),
            reloads: l(&tokens.reloads),
            reload_errors: l(&tokens.reload_errors),
            last_run: last_run.cloned(),
        }
    }
}

/// The exposition of a snapshot (pure).
pub fn render(s: &Snapshot) -> String {
    let mut out = String::new();
    render_into(&mut out, s).expect("writing to a String cannot fail");
    out
}

fn render_into(out: &mut String, s: &Snapshot) -> std::fmt::Result {
    header(
        out,
        "reflex_cloud_build_info",
        "Version of reflex-cloud.",
        "gauge",
    )?;
    writeln!(
        out,
        "reflex_cloud_build_info{{version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    )?;
    header(
        out,
        "reflex_cloud_http_responses_total",
        "HTTP answers of every route, by status.",
        "counter",
    )?;
    for (status, n) in &s.responses {
        writeln!(
            out,
            "reflex_cloud_http_responses_total{{status=\"{status}\"}} {n}"
        )?;
    }
    single(
        out,
        "reflex_cloud_ingest_requests_total",
        "Upload requests received.",
        "counter",
        s.requests,
    )?;
    header(
        out,
        "reflex_cloud_batches_total",
        "Batches answered 200, by result.",
        "counter",
    )?;
    writeln!(
        out,
        "reflex_cloud_batches_total{{result=\"stored\"}} {}",
        s.batches_stored
    )?;
    writeln!(
        out,
        "reflex_cloud_batches_total{{result=\"duplicate\"}} {}",
        s.batches_duplicate
    )?;
    for (name, help, v) in [
        (
            "reflex_cloud_records_stored_total",
            "Records of newly stored batches.",
            s.records_stored,
        ),
        (
            "reflex_cloud_bytes_stored_total",
            "Compressed bytes of newly stored batches.",
            s.bytes_stored,
        ),
        (
            "reflex_cloud_refused_total",
            "Upload requests answered 4xx.",
            s.refused,
        ),
        (
            "reflex_cloud_forbidden_total",
            "Upload requests answered 403: a node or device the token may not upload.",
            s.forbidden,
        ),
        (
            "reflex_cloud_auth_failures_total",
            "Answers 401: missing, unknown or mismatched bearer token.",
            s.responses.get(&401).copied().unwrap_or(0),
        ),
        (
            "reflex_cloud_timeouts_total",
            "Requests and connections cut off by the head, body or request timeout.",
            s.timed_out,
        ),
        (
            "reflex_cloud_tls_handshake_failures_total",
            "TLS handshakes that failed or did not complete in time.",
            s.tls_handshake_failures,
        ),
    ] {
        single(out, name, help, "counter", v)?;
    }
    header(
        out,
        "reflex_cloud_refusals_total",
        "Upload requests answered 4xx, by reason.",
        "counter",
    )?;
    for (reason, n) in &s.refusals {
        writeln!(
            out,
            "reflex_cloud_refusals_total{{reason=\"{reason}\"}} {n}"
        )?;
    }
    single(
        out,
        "reflex_cloud_nodes",
        "Nodes in the current token table.",
        "gauge",
        s.nodes,
    )?;
    header(
        out,
        "reflex_cloud_token_reloads_total",
        "Reloads of the node table, by result (error: the running table was kept).",
        "counter",
    )?;
    writeln!(
        out,
        "reflex_cloud_token_reloads_total{{result=\"ok\"}} {}",
        s.reloads
    )?;
    writeln!(
        out,
        "reflex_cloud_token_reloads_total{{result=\"error\"}} {}",
        s.reload_errors
    )?;
    if let Some(r) = &s.last_run {
        for (name, help, v) in [
            (
                "reflex_cloud_last_rescore_to_seconds",
                "End of the newest rescore run's range, unix seconds.",
                r.to_us / 1_000_000,
            ),
            (
                "reflex_cloud_last_rescore_written_seconds",
                "When the newest rescore run's report was written, unix seconds.",
                r.written_unix_s,
            ),
            (
                "reflex_cloud_last_rescore_events",
                "Events the newest rescore run rescored.",
                r.events,
            ),
            (
                "reflex_cloud_last_rescore_drift",
                "1 if the newest rescore run detected drift.",
                u64::from(r.drift_detected),
            ),
        ] {
            single(out, name, help, "gauge", v)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_counter_is_rendered_with_its_labels_and_401s_count_as_auth_failures() {
        let s = Snapshot {
            responses: BTreeMap::from([(200, 5), (401, 2)]),
            batches_stored: 4,
            batches_duplicate: 1,
            nodes: 3,
            reload_errors: 1,
            refusals: BTreeMap::from([("format_mismatch", 2), ("too_large", 1)]),
            ..Snapshot::default()
        };
        let text = render(&s);
        for line in [
            "reflex_cloud_refusals_total{reason=\"format_mismatch\"} 2",
            "reflex_cloud_refusals_total{reason=\"too_large\"} 1",
            "reflex_cloud_http_responses_total{status=\"200\"} 5",
            "reflex_cloud_http_responses_total{status=\"401\"} 2",
            "reflex_cloud_auth_failures_total 2",
            "reflex_cloud_batches_total{result=\"stored\"} 4",
            "reflex_cloud_batches_total{result=\"duplicate\"} 1",
            "reflex_cloud_nodes 3",
            "reflex_cloud_token_reloads_total{result=\"error\"} 1",
            "# TYPE reflex_cloud_nodes gauge",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        assert!(!text.contains("last_rescore"), "no run known: no series");
    }

    #[test]
    fn the_last_rescore_run_is_shown_when_known() {
        let run = crate::runs::entry_of(
            "r",
            &serde_json::json!({
                "run": {"snapshot": {"from_us": 0, "to_us": 7_200_000_000u64, "files": []}},
                "figures": {"fleet": {"events": 9}},
                "verdict": {"drift_detected": true, "reasons": []},
            }),
            1,
        );
        let text = render(&Snapshot {
            last_run: run,
            ..Snapshot::default()
        });
        assert!(text.contains("\nreflex_cloud_last_rescore_to_seconds 7200\n"));
        assert!(text.contains("\nreflex_cloud_last_rescore_drift 1\n"));
        assert!(text.contains("\nreflex_cloud_last_rescore_events 9\n"));
    }
}
