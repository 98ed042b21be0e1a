//! The report as one self-contained HTML page: inline CSS and inline SVG plots, no
//! JavaScript, no external resources, so it can be mailed, archived or opened offline.
//!
//! Sections: the verdict; edge-vs-cloud agreement (confusion matrix, per model version);
//! per-device table with latency and deadline-miss bars; reference vs current distribution
//! of every feature (CDF plots); drift per feature over time (a heatmap of the normalised
//! Wasserstein distance per window, drifted cells marked); the fleet drift table.

use std::fmt::Write;

use super::Report;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn pct(x: f64) -> String {
    format!("{:.1}%", 100.0 * x)
}

const STYLE: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222;max-width:1200px}\
h1{font-size:22px}h2{font-size:18px;margin-top:32px;border-bottom:1px solid #ddd}\
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ddd;padding:3px 8px;text-align:right}\
th{background:#f4f4f4}td.l,th.l{text-align:left}.bad{background:#fde2e1}.ok{background:#e3f6e5}\
.banner{padding:12px 16px;border-radius:6px;font-size:16px}.grid{display:flex;flex-wrap:wrap;gap:12px}\
svg text{font:11px system-ui,sans-serif}";

/// Renders the page.
pub fn render(r: &Report) -> String {
    let mut h = String::new();
    let run = &r.run;
    let _ = write!(
        h,
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>reflex rescore {}</title><style>{STYLE}</style></head><body>",
        esc(&run.run_id)
    );
    let _ = write!(
        h,
        "<h1>reflex rescore — run {}</h1><p>Snapshot [{} , {}) µs, {} files, {} events; cloud model {} {} (onnx {}…); batch {} × {} workers, {:.0} events/s.</p>",
        esc(&run.run_id),
        run.snapshot.from_us,
        run.snapshot.to_us,
        run.snapshot.files.len(),
        r.figures.fleet.events,
        esc(&run.model.name),
        esc(&run.model.version),
        esc(run.model.onnx_sha256.get(..12).unwrap_or("")),
        r.throughput.batch_size,
        r.throughput.workers,
        r.throughput.events_per_s
    );
    verdict(&mut h, r);
    agreement(&mut h, r);
    devices(&mut h, r);
    distributions(&mut h, r);
    over_time(&mut h, r);
    fleet_table(&mut h, r);
    board(&mut h, r);
    h.push_str("</body></html>\n");
    h
}

fn verdict(h: &mut String, r: &Report) {
    let v = &r.verdict;
    let (class, title) = if v.drift_detected {
        ("bad", "Drift detected")
    } else {
        ("ok", "No drift detected")
    };
    let _ = write!(h, "<div class=\"banner {class}\"><b>{title}</b>");
    if !v.reasons.is_empty() {
        h.push_str("<ul>");
        for reason in &v.reasons {
            let _ = write!(h, "<li>{}</li>", esc(reason));
        }
        h.push_str("</ul>");
    }
    h.push_str("</div>");
}

fn agreement(h: &mut String, r: &Report) {
    let f = &r.figures;
    let rates = &f.fleet_rates;
    let _ = write!(
        h,
        "<h2>Edge vs cloud</h2><p>Agreement {} of {} events; fallback answered {} ({} events), of which the cloud model disagrees with {}; deadline misses {}.</p>",
        pct(rates.agreement),
        f.fleet.events,
        pct(rates.fallback),
        f.fleet.fallback,
        pct(rates.fallback_disagreement),
        pct(rates.deadline_miss)
    );
    h.push_str("<table><tr><th class=\"l\">edge ↓ / cloud →</th>");
    for c in &r.classes {
        let _ = write!(h, "<th>{}</th>", esc(c));
    }
    h.push_str("</tr>");
    for (i, row) in f.fleet.confusion.iter().enumerate() {
        let _ = write!(
            h,
            "<tr><th class=\"l\">{}</th>",
            esc(r.classes.get(i).map_or("?", String::as_str))
        );
        for (j, n) in row.iter().enumerate() {
            let cls = if i == j {
                " class=\"ok\""
            } else if *n > 0 {
                " class=\"bad\""
            } else {
                ""
            };
            let _ = write!(h, "<td{cls}>{n}</td>");
        }
        h.push_str("</tr>");
    }
    h.push_str("</table><table><tr><th class=\"l\">edge model</th><th>events</th><th>agreement</th><th>fallback</th><th>fallback disagreement</th><th>deadline miss</th></tr>");
    for (name, (c, rt)) in &f.models {
        let _ = write!(
            h,
            "<tr><td class=\"l\">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(name),
            c.events,
            pct(rt.agreement),
            pct(rt.fallback),
            pct(rt.fallback_disagreement),
            pct(rt.deadline_miss)
        );
    }
    h.push_str("</table>");
}

/// Horizontal bars, one per label, scaled to the largest value.
fn bars(title: &str, items: &[(String, f64)], fmt: impl Fn(f64) -> String, colour: &str) -> String {
    let row = 16.0;
    let (label_w, bar_w) = (110.0, 260.0);
    let height = 24.0 + row * items.len() as f64;
    let max = items.iter().map(|i| i.1).fold(0.0f64, f64::max).max(1e-12);
    let mut s = format!(
        "<svg width=\"{}\" height=\"{height}\"><text x=\"0\" y=\"12\" font-weight=\"bold\">{}</text>",
        label_w + bar_w + 80.0,
        esc(title)
    );
    for (k, (label, v)) in items.iter().enumerate() {
        let y = 20.0 + row * k as f64;
        let w = bar_w * v / max;
        let _ = write!(
            s,
            "<text x=\"0\" y=\"{}\">{}</text><rect x=\"{label_w}\" y=\"{y}\" width=\"{w:.1}\" height=\"{}\" fill=\"{colour}\"/><text x=\"{}\" y=\"{}\">{}</text>",
            y + 11.0,
            esc(label),
            row - 3.0,
            label_w + w + 4.0,
            y + 11.0,
            fmt(*v)
        );
    }
    s.push_str("</svg>");
    s
}

fn devices(h: &mut String, r: &Report) {
    let f = &r.figures;
    h.push_str("<h2>Devices</h2><table><tr><th class=\"l\">node</th><th class=\"l\">device</th><th>events</th><th>agreement</th><th>fallback</th><th>fallback disagreement</th><th>deadline miss</th><th>p50 µs</th><th>p99 µs</th><th>baseline / later events</th><th>features drifted from baseline</th><th>verdict</th></tr>");
    for d in &f.devices {
        let (drift, verdict) = match &d.drift {
            Some(x) => (
                format!(
                    "{} / {}</td><td>{} of {}",
                    x.baseline_events,
                    x.current_events,
                    x.dataset.drifted_features,
                    x.dataset.features
                ),
                if d.flagged {
                    "<td class=\"bad\">drifted</td>"
                } else {
                    "<td class=\"ok\">stable</td>"
                },
            ),
            None => ("—</td><td>—".to_owned(), "<td>not judged</td>"),
        };
        let _ = write!(
            h,
            "<tr><td class=\"l\">{}</td><td class=\"l\">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.0}</td><td>{:.0}</td><td>{drift}</td>{verdict}</tr>",
            esc(&d.node),
            esc(&d.device),
            d.counts.events,
            pct(d.rates.agreement),
            pct(d.rates.fallback),
            pct(d.rates.fallback_disagreement),
            pct(d.rates.deadline_miss),
            d.latency_p50_us,
            d.latency_p99_us
        );
    }
    h.push_str("</table><div class=\"grid\">");
    let lat: Vec<(String, f64)> = f
        .devices
        .iter()
        .map(|d| (format!("{}/{}", d.node, d.device), d.latency_p99_us))
        .collect();
    let p50: Vec<(String, f64)> = f
        .devices
        .iter()
        .map(|d| (format!("{}/{}", d.node, d.device), d.latency_p50_us))
        .collect();
    let miss: Vec<(String, f64)> = f
        .devices
        .iter()
        .map(|d| (format!("{}/{}", d.node, d.device), d.rates.deadline_miss))
        .collect();
    h.push_str(&bars(
        "end-to-end latency p50 (µs)",
        &p50,
        |v| format!("{v:.0}"),
        "#7aa6d6",
    ));
    h.push_str(&bars(
        "end-to-end latency p99 (µs)",
        &lat,
        |v| format!("{v:.0}"),
        "#3b73b0",
    ));
    h.push_str(&bars("deadline-miss rate", &miss, pct, "#d9534f"));
    h.push_str("</div>");
}

/// One CDF plot: reference (grey) and current (blue) quantiles.
fn cdf_plot(name: &str, reference: &[f64], current: &[f64]) -> String {
    let (w, ht, pad) = (220.0, 140.0, 22.0);
    let all = reference
        .iter()
        .chain(current)
        .copied()
        .filter(|v| v.is_finite());
    let (lo, hi) = all.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
        (a.min(v), b.max(v))
    });
    let span = if hi > lo { hi - lo } else { 1.0 };
    let x = |v: f64| pad + (w - 2.0 * pad) * (v - lo) / span;
    let y = |p: f64| ht - pad - (ht - 2.0 * pad) * p;
    let line = |q: &[f64], colour: &str| {
        if q.is_empty() {
            return String::new();
        }
        let m = (q.len() - 1).max(1) as f64;
        let pts: Vec<String> = q
            .iter()
            .enumerate()
            .map(|(j, v)| format!("{:.1},{:.1}", x(*v), y(j as f64 / m)))
            .collect();
        format!(
            "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"1.6\" points=\"{}\"/>",
            pts.join(" ")
        )
    };
    format!(
        "<svg width=\"{w}\" height=\"{ht}\"><rect x=\"{pad}\" y=\"{pad}\" width=\"{}\" height=\"{}\" fill=\"#fafafa\" stroke=\"#ccc\"/><text x=\"{pad}\" y=\"14\" font-weight=\"bold\">{}</text>{}{}<text x=\"{pad}\" y=\"{}\">{lo:.3}</text><text x=\"{}\" y=\"{}\" text-anchor=\"end\">{hi:.3}</text></svg>",
        w - 2.0 * pad,
        ht - 2.0 * pad,
        esc(name),
        line(reference, "#999"),
        line(current, "#1f77b4"),
        ht - 6.0,
        w - pad,
        ht - 6.0
    )
}

fn distributions(h: &mut String, r: &Report) {
    h.push_str("<h2>Reference vs current distributions</h2><p>Cumulative distribution of each feature: <span style=\"color:#999\">reference (model manifest)</span>, <span style=\"color:#1f77b4\">current (whole snapshot)</span>.</p><div class=\"grid\">");
    for d in &r.distributions {
        h.push_str(&cdf_plot(&d.name, &d.reference, &d.current));
    }
    h.push_str("</div>");
}

/// White → red by normalised Wasserstein distance (0 → 0.5+).
fn heat(v: f64) -> String {
    let t = (v / 0.5).clamp(0.0, 1.0);
    let g = (255.0 * (1.0 - 0.8 * t)) as u8;
    format!("rgb(255,{g},{g})")
}

fn over_time(h: &mut String, r: &Report) {
    let windows = &r.figures.windows;
    h.push_str("<h2>Drift per feature over time</h2><p>Fleet vs reference per window: colour is the Wasserstein distance in reference standard deviations (white 0, red ≥ 0.5); ✕ marks a drifted feature (KS p &lt; threshold and an effect size over its threshold). Grey: too few events to judge.</p>");
    let (cell_w, cell_h, label_w, top) = (22.0, 16.0, 90.0, 20.0);
    let width = label_w + cell_w * windows.len().max(1) as f64 + 10.0;
    let height = top + cell_h * r.features.len() as f64 + 30.0;
    let _ = write!(h, "<svg width=\"{width}\" height=\"{height}\">");
    for (k, name) in r.features.iter().enumerate() {
        let _ = write!(
            h,
            "<text x=\"0\" y=\"{}\">{}</text>",
            top + cell_h * k as f64 + 12.0,
            esc(name)
        );
    }
    for (c, w) in windows.iter().enumerate() {
        let x = label_w + cell_w * c as f64;
        let _ = write!(
            h,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
            x + cell_w / 2.0,
            height - 12.0,
            w.index
        );
        for (k, name) in r.features.iter().enumerate() {
            let y = top + cell_h * k as f64;
            let f = w
                .drift
                .as_ref()
                .and_then(|d| d.features.iter().find(|f| &f.name == name));
            let (fill, mark, tip) = match f {
                Some(f) => (
                    heat(f.wasserstein_normed),
                    if f.drifted { "✕" } else { "" },
                    format!(
                        "window {} {name}: W/σ {:.3}, PSI {:.3}, KS p {:.3}",
                        w.index, f.wasserstein_normed, f.psi, f.ks_p_value
                    ),
                ),
                None => (
                    "#e6e6e6".to_owned(),
                    "",
                    format!("window {}: {} events", w.index, w.events),
                ),
            };
            let _ = write!(
                h,
                "<rect x=\"{x}\" y=\"{y}\" width=\"{}\" height=\"{}\" fill=\"{fill}\" stroke=\"#fff\"><title>{}</title></rect><text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{mark}</text>",
                cell_w,
                cell_h,
                esc(&tip),
                x + cell_w / 2.0,
                y + 12.0
            );
        }
    }
    let _ = write!(
        h,
        "<text x=\"0\" y=\"{}\">window →</text></svg>",
        height - 12.0
    );
}

fn fleet_table(h: &mut String, r: &Report) {
    h.push_str("<h2>Fleet vs reference</h2>");
    let Some(d) = &r.figures.fleet_drift else {
        h.push_str("<p>Too few events to judge.</p>");
        return;
    };
    let _ = write!(
        h,
        "<p>{} of {} features drifted (dataset verdict at {}: {}). Edge predicted classes: Jensen–Shannon distance {}; cloud classes: {}.</p>",
        d.dataset.drifted_features,
        d.dataset.features,
        pct(r.run.thresholds.dataset_share),
        if d.dataset.drifted { "drifted" } else { "stable" },
        d.class_js_distance.map_or("—".into(), |v| format!("{v:.3}")),
        r.figures
            .cloud_class_js_distance
            .map_or("—".into(), |v| format!("{v:.3}"))
    );
    h.push_str("<table><tr><th class=\"l\">feature</th><th>KS D</th><th>KS p</th><th>Wasserstein</th><th>W/σ</th><th>PSI</th><th>PSI band</th><th>verdict</th></tr>");
    for f in &d.features {
        let _ = write!(
            h,
            "<tr><td class=\"l\">{}</td><td>{:.3}</td><td>{:.3e}</td><td>{:.4}</td><td>{:.3}</td><td>{:.3}</td><td>{:?}</td><td class=\"{}\">{}</td></tr>",
            esc(&f.name),
            f.ks_statistic,
            f.ks_p_value,
            f.wasserstein,
            f.wasserstein_normed,
            f.psi,
            f.psi_band,
            if f.drifted { "bad" } else { "ok" },
            if f.drifted { "drifted" } else { "stable" }
        );
    }
    h.push_str("</table>");
}

fn board(h: &mut String, r: &Report) {
    let b = &r.board;
    h.push_str("<h2>The boards' own live view</h2>");
    if b.routes.is_empty() {
        let _ = write!(
            h,
            "<p>No board monitoring windows in this snapshot ({} read, {} outside the range).</p>",
            b.windows_read, b.windows_outside_range
        );
        return;
    }
    let _ = write!(
        h,
        "<p>The monitoring windows the boards closed themselves and shipped with their uploads ({} windows from {}; {} outside the range), merged without reading a raw event and judged against the same reference and thresholds as the batch.</p>",
        b.windows_read - b.windows_outside_range,
        esc(&b.nodes.join(", ")),
        b.windows_outside_range
    );
    h.push_str("<table><tr><th class=\"l\">route</th><th>windows</th><th>events</th><th>fallback</th><th>deadline miss</th><th>features drifted</th><th>class JS</th><th>verdict</th></tr>");
    for route in &b.routes {
        board_route_row(h, None, route);
    }
    h.push_str("</table>");
    if !b.per_node.is_empty() {
        h.push_str("<p>Each board's own view (its windows only):</p><table><tr><th class=\"l\">board</th><th class=\"l\">route</th><th>windows</th><th>events</th><th>fallback</th><th>deadline miss</th><th>features drifted</th><th>class JS</th><th>verdict</th></tr>");
        for n in &b.per_node {
            for route in &n.routes {
                board_route_row(h, Some(&n.node), route);
            }
        }
        h.push_str("</table>");
    }
    if !b.versus_batch.is_empty() {
        h.push_str("<p>Per feature, boards' sketches vs the batch (all routes):</p><table><tr><th class=\"l\">feature</th><th>KS D board</th><th>KS D batch</th><th>PSI board</th><th>PSI batch</th><th>W board</th><th>W batch</th><th>verdicts</th></tr>");
        for f in &b.versus_batch {
            let _ = write!(
                h,
                "<tr><td class=\"l\">{}</td><td>{:.3}</td><td>{:.3}</td><td>{:.3}</td><td>{:.3}</td><td>{:.4}</td><td>{:.4}</td><td class=\"{}\">{}</td></tr>",
                esc(&f.name),
                f.ks.0,
                f.ks.1,
                f.psi.0,
                f.psi.1,
                f.wasserstein.0,
                f.wasserstein.1,
                if f.drifted.0 == f.drifted.1 { "ok" } else { "bad" },
                match f.drifted {
                    (true, true) => "both drifted",
                    (false, false) => "both stable",
                    (true, false) => "board only",
                    (false, true) => "batch only",
                }
            );
        }
        h.push_str("</table>");
    }
}

/// One row of a board-view table: the board (if a per-board row), the route, its counts and
/// verdict.
fn board_route_row(h: &mut String, node: Option<&str>, route: &super::board::BoardRoute) {
    let (drifted, js, verdict) = match &route.drift {
        None => ("—".to_owned(), "—".to_owned(), "too few events"),
        Some(d) => (
            format!("{} of {}", d.dataset.drifted_features, d.dataset.features),
            d.class_js_distance
                .map_or("—".into(), |v| format!("{v:.3}")),
            if d.dataset.drifted || d.class_drift {
                "drifted"
            } else {
                "stable"
            },
        ),
    };
    let ratio = |n: u64| {
        if route.events == 0 {
            "—".to_owned()
        } else {
            pct(n as f64 / route.events as f64)
        }
    };
    h.push_str("<tr>");
    if let Some(node) = node {
        let _ = write!(h, "<td class=\"l\">{}</td>", esc(node));
    }
    let _ = write!(
        h,
        "<td class=\"l\">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"{}\">{}</td></tr>",
        esc(&route.route),
        route.windows,
        route.events,
        ratio(route.fallbacks),
        ratio(route.deadline_misses),
        drifted,
        js,
        if verdict == "drifted" { "bad" } else { "ok" },
        verdict
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped_and_plots_are_inline_svg() {
        assert_eq!(esc("<a&\"b\">"), "&lt;a&amp;&quot;b&quot;&gt;");
        let svg = cdf_plot("x<y", &[0.0, 0.5, 1.0], &[0.2, 0.6, 1.2]);
        assert!(svg.starts_with("<svg") && svg.contains("x&lt;y"));
        assert_eq!(svg.matches("<polyline").count(), 2);
        let b = bars(
            "t",
            &[("a".into(), 1.0), ("b".into(), 0.0)],
            |v| v.to_string(),
            "#000",
        );
        assert_eq!(b.matches("<rect").count(), 2);
        assert_eq!(heat(0.0), "rgb(255,255,255)");
    }
}
