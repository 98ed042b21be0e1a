//! The rescore runs as a service: which time range a scheduled run covers, and the index
//! of the runs in `rescore.out_dir`.
//!
//! # `rescore --last <span>`
//!
//! [`last_range`]: the last **complete** span before now, aligned on multiples of the span
//! since the Unix epoch (UTC): `--last 1h` at 01:05 covers 00:00–01:00, `--last 1d` at any
//! time of 27 Nov covers 26 Nov. Aligned ranges make a scheduled run idempotent: run again
//! within the same span (a retry, a `Persistent=` timer catching up) it plans the same
//! snapshot, so the same run id and directory, unless batches arrived meanwhile (boards
//! that were offline upload late: their events land in the snapshot of the next run of
//! *that* range, which `rescore --from --to` can run again at any time).
//!
//! # The index
//!
//! After every run, `index.json` and `index.html` in `out_dir` are rebuilt from the
//! `report.json` of **every** run directory there ([`rebuild_index`]): the index is derived
//! data, never edited in place, so it is right after a crash, a deleted run or a run
//! replayed by hand, and can be rebuilt at any time (`reflex-cloud index`). Both files are
//! written to a temporary name and renamed. An entry: run id, the snapshot's range, when
//! the report was written, events, files, agreement, fallback, the drift verdict and its
//! reasons, and links to the run's `report.html` and `report.json` (relative, so the
//! directory can be served or copied as it is). A run directory without a readable
//! `report.json` (a run under way, or one that failed) is listed under `incomplete`.
//! Newest range first.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

/// File name of the index (JSON) in `out_dir`.
pub const INDEX_JSON: &str = "index.json";
/// File name of the index (HTML) in `out_dir`.
pub const INDEX_HTML: &str = "index.html";

/// Why the index could not be written.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    /// Listing `out_dir` or writing an index file failed.
    #[error("{path}: {source}")]
    Io {
        /// The directory or file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// Why `--last` was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpanError {
    /// Not a duration.
    #[error("--last {0:?}: not a duration (e.g. 1h, 30m, 1d)")]
    Unparsable(String),
    /// Under a second, over a year, or not whole seconds.
    #[error("--last {0:?}: must be whole seconds between 1s and 366d")]
    OutOfRange(String),
}

/// Parses a span such as `1h`, `30m`, `1d`, `2h 30m` into seconds.
pub fn parse_span(text: &str) -> Result<u64, SpanError> {
    let t = text.trim();
    // Days: jiff's SignedDuration has no unit above hours (a civil day is not always 24 h);
    // here a day is 86 400 s of UTC.
    let d: jiff::SignedDuration = match t.strip_suffix('d').map(str::parse::<i64>) {
        Some(Ok(days)) => jiff::SignedDuration::from_secs(days.saturating_mul(86_400)),
        _ => t
            .parse()
            .map_err(|_| SpanError::Unparsable(text.to_owned()))?,
    };
    let secs = d.as_secs();
    if d.subsec_nanos() != 0 || !(1..=366 * 86_400).contains(&secs) {
        return Err(SpanError::OutOfRange(text.to_owned()));
    }
    Ok(secs as u64)
}

/// The last complete `span_s` before `now_s` (both unix seconds), aligned on multiples of
/// `span_s` since the epoch: `(from, to)`, `to <= now_s`, `to - from == span_s`.
pub fn last_range(now_s: u64, span_s: u64) -> (u64, u64) {
    let span = span_s.max(1);
    let to = now_s - now_s % span;
    (to.saturating_sub(span), to)
}

/// One run in the index.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunEntry {
    /// Run id (the directory name).
    pub run_id: String,
    /// Snapshot start, unix µs (inclusive).
    pub from_us: u64,
    /// Snapshot end, unix µs (exclusive).
    pub to_us: u64,
    /// When `report.json` was written, unix s.
    pub written_unix_s: u64,
    /// Events rescored.
    pub events: u64,
    /// Event files in the snapshot.
    pub files: u64,
    /// Edge and cloud model agree, fraction.
    pub agreement: f64,
    /// Fallback decisions, fraction.
    pub fallback: f64,
    /// The run's verdict.
    pub drift_detected: bool,
    /// Why, when drift was detected.
    pub reasons: Vec<String>,
    /// `<run_id>/report.html`.
    pub report_html: String,
    /// `<run_id>/report.json`.
    pub report_json: String,
}

/// `index.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Index {
    /// Format of this file (1).
    pub format: u32,
    /// Runs with a report, newest range first (then newest written).
    pub runs: Vec<RunEntry>,
    /// Run directories without a readable report (under way or failed), sorted.
    pub incomplete: Vec<String>,
}

/// The entry of a run from its `report.json` (pure). Reads only the fields the index
/// shows, leniently: `None` when one is missing.
pub fn entry_of(run_id: &str, report: &serde_json::Value, written_unix_s: u64) -> Option<RunEntry> {
    let u = |v: &serde_json::Value| v.as_u64();
    let f = |v: &serde_json::Value| v.as_f64();
    let snapshot = &report["run"]["snapshot"];
    let figures = &report["figures"];
    let verdict = &report["verdict"];
    Some(RunEntry {
        run_id: run_id.to_owned(),
        from_us: u(&snapshot["from_us"])?,
        to_us: u(&snapshot["to_us"])?,
        written_unix_s,
        events: u(&figures["fleet"]["events"]).or_else(|| u(&report["throughput"]["events"]))?,
        files: snapshot["files"].as_array().map_or(0, |a| a.len() as u64),
        agreement: f(&figures["fleet_rates"]["agreement"]).unwrap_or(f64::NAN),
        fallback: f(&figures["fleet_rates"]["fallback"]).unwrap_or(f64::NAN),
        drift_detected: verdict["drift_detected"].as_bool()?,
        reasons: verdict["reasons"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|r| r.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default(),
        report_html: format!("{run_id}/report.html"),
        report_json: format!("{run_id}/report.json"),
    })
}

/// Orders entries newest range first, then newest written, then by id (pure).
pub fn sort_runs(runs: &mut [RunEntry]) {
    runs.sort_by(|a, b| {
        (b.to_us, b.from_us, b.written_unix_s, &a.run_id).cmp(&(
            a.to_us,
            a.from_us,
            a.written_unix_s,
            &b.run_id,
        ))
    });
}

fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn utc(us: u64) -> String {
    jiff::Timestamp::from_microsecond(us as i64)
        .map(|t| t.strftime("%Y-%m-%d %H:%M:%SZ").to_string())
        .unwrap_or_else(|_| format!("{us} µs"))
}

fn percent(v: f64) -> String {
    if v.is_finite() {
        format!("{:.2} %", 100.0 * v)
    } else {
        "–".into()
    }
}

/// `index.html` of an index (pure): self-contained, one table row per run.
pub fn render_html(index: &Index) -> String {
    let mut rows = String::new();
    for r in &index.runs {
        let verdict = if r.drift_detected {
            format!(
                "<td class=\"drift\">DRIFT: {}</td>",
                html_escape(&r.reasons.join("; "))
            )
        } else {
            "<td class=\"ok\">no drift</td>".to_owned()
        };
        rows.push_str(&format!(
            "<tr><td>{from}</td><td>{to}</td><td>{events}</td><td>{files}</td><td>{agree}</td>\
             <td>{fallback}</td>{verdict}<td><a href=\"{html}\">{id}</a> \
             (<a href=\"{json}\">json</a>)</td><td>{written}</td></tr>\n",
            from = utc(r.from_us),
            to = utc(r.to_us),
            events = r.events,
            files = r.files,
            agree = percent(r.agreement),
            fallback = percent(r.fallback),
            html = html_escape(&r.report_html),
            json = html_escape(&r.report_json),
            id = html_escape(&r.run_id),
            written = utc(r.written_unix_s.saturating_mul(1_000_000)),
        ));
    }
    let incomplete = if index.incomplete.is_empty() {
        String::new()
    } else {
        format!(
            "<p>Without a report (under way or failed): {}</p>\n",
            index
                .incomplete
                .iter()
                .map(|s| html_escape(s))
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>reflex-cloud rescore runs</title>\n<style>\
         body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}\
         td,th{{border:1px solid #ccc;padding:.3em .6em;text-align:left}}\
         .drift{{color:#b00;font-weight:bold}}.ok{{color:#070}}</style></head>\n<body>\n\
         <h1>Rescore runs</h1>\n<p>{n} run(s), newest range first. Times UTC; the range \
         end is exclusive.</p>\n<table>\n<tr><th>from</th><th>to</th><th>events</th>\
         <th>files</th><th>agreement</th><th>fallback</th><th>verdict</th><th>report</th>\
         <th>written</th></tr>\n{rows}</table>\n{incomplete}</body></html>\n",
        n = index.runs.len(),
    )
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> IndexError + '_ {
    move |source| IndexError::Io {
        path: path.to_owned(),
        source,
    }
}

fn unix_s(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Reads every run directory of `out_dir` (module doc).
pub fn scan(out_dir: &Path) -> Result<Index, IndexError> {
    let mut runs = Vec::new();
    let mut incomplete = Vec::new();
    let entries = match std::fs::read_dir(out_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Index {
                format: 1,
                runs,
                incomplete,
            })
        }
        Err(e) => return Err(io_err(out_dir)(e)),
    };
    for entry in entries {
        let entry = entry.map_err(io_err(out_dir))?;
        let dir = entry.path();
        if !dir.is_dir() {
            continue;
        }
        let Some(run_id) = dir.file_name().and_then(|n| n.to_str()).map(str::to_owned) else {
            continue;
        };
        let report = dir.join("report.json");
        let parsed = std::fs::read(&report).ok().and_then(|bytes| {
            let written = std::fs::metadata(&report)
                .and_then(|m| m.modified())
                .map_or(0, unix_s);
            let value: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
            entry_of(&run_id, &value, written)
        });
        match parsed {
            Some(e) => runs.push(e),
            None => incomplete.push(run_id),
        }
    }
    sort_runs(&mut runs);
    incomplete.sort();
    Ok(Index {
        format: 1,
        runs,
        incomplete,
    })
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), IndexError> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io_err(path))
}

/// Rebuilds `index.json` and `index.html` in `out_dir` from its run directories.
pub fn rebuild_index(out_dir: &Path) -> Result<Index, IndexError> {
    let index = scan(out_dir)?;
    std::fs::create_dir_all(out_dir).map_err(io_err(out_dir))?;
    let json = serde_json::to_vec_pretty(&index).expect("an index serializes");
    write_atomic(&out_dir.join(INDEX_JSON), &json)?;
    write_atomic(&out_dir.join(INDEX_HTML), render_html(&index).as_bytes())?;
    Ok(index)
}

/// The newest run of `out_dir/index.json`, if there is one (for `/metrics`).
pub fn last_run(out_dir: &Path) -> Option<RunEntry> {
    let bytes = std::fs::read(out_dir.join(INDEX_JSON)).ok()?;
    let index: Index = serde_json::from_slice(&bytes).ok()?;
    index.runs.into_iter().next()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_range_is_the_last_complete_aligned_span() {
        // 2026-11-27T01:05:00Z
        let now = 1_795_741_500;
        let (from, to) = last_range(now, 3600);
        assert_eq!(to, 1_795_741_200, "01:00");
        assert_eq!(from, to - 3600);
        assert_eq!(last_range(now - 299, 3600), (from, to), "the same hour");
        assert_eq!(last_range(to, 3600), (from, to), "exactly on the boundary");
        let (_, day_to) = last_range(now, 86_400);
        assert_eq!(day_to % 86_400, 0);
        assert!(day_to <= now);
    }

    #[test]
    fn spans_parse_in_friendly_form_and_nonsense_is_refused() {
        assert_eq!(parse_span("1h"), Ok(3600));
        assert_eq!(parse_span("30m"), Ok(1800));
        assert_eq!(parse_span("1d"), Ok(86_400));
        assert_eq!(parse_span("2h 30m"), Ok(9000));
        assert!(matches!(parse_span("soon"), Err(SpanError::Unparsable(_))));
        assert!(matches!(parse_span("0s"), Err(SpanError::OutOfRange(_))));
        assert!(matches!(parse_span("1.5s"), Err(SpanError::OutOfRange(_))));
    }

    fn report(from_us: u64, to_us: u64, drift: bool) -> serde_json::Value {
        serde_json::json!({
            "run": {"snapshot": {"from_us": from_us, "to_us": to_us, "files": [{}, {}]}},
            "figures": {"fleet": {"events": 1234}, "fleet_rates": {"agreement": 0.9, "fallback": 0.01}},
            "verdict": {"drift_detected": drift, "reasons": ["fleet <features> drifted"]},
        })
    }

    #[test]
    fn an_entry_takes_range_counts_and_verdict_from_the_report() {
        let e = entry_of("abc", &report(1, 2, true), 7).unwrap();
        assert_eq!((e.from_us, e.to_us, e.events, e.files), (1, 2, 1234, 2));
        assert!(e.drift_detected);
        assert_eq!(e.report_html, "abc/report.html");
        assert_eq!(entry_of("x", &serde_json::json!({"run": {}}), 0), None);
    }

    #[test]
    fn runs_are_listed_newest_range_first_and_the_html_escapes_and_links_each() {
        let mut runs = vec![
            entry_of("old", &report(0, 10, false), 5).unwrap(),
            entry_of("new", &report(10, 20, true), 1).unwrap(),
        ];
        sort_runs(&mut runs);
        assert_eq!(runs[0].run_id, "new");
        let html = render_html(&Index {
            format: 1,
            runs,
            incomplete: vec!["half".into()],
        });
        assert!(
            html.contains("<a href=\"new/report.html\">new</a>"),
            "{html}"
        );
        assert!(html.contains("<a href=\"old/report.html\">old</a>"));
        assert!(html.contains("DRIFT: fleet &lt;features&gt; drifted"));
        assert!(!html.contains("<features>"));
        assert!(html.contains("half"));
        assert!(html.find("new/").unwrap() < html.find("old/").unwrap());
    }
}
