//! Reads values out of Prometheus text exposition (what reflexd serves on `/metrics`), for
//! the tests and the benchmark: one reader, so that every caller means the same by a name.

/// The value of the series `series` in `text`, or the sum over a family: `series` is
///
/// - a whole series (`reflexd_queue_depth`, `reflexd_bad_input_total{reason="oversized"}`):
///   the value on its line;
/// - a family name followed by `{` (`reflexd_deadline_misses_total{`): the sum of every
///   labelled series of that family.
///
/// 0 when nothing matches. Comment lines (`# HELP`, `# TYPE`) never match.
pub fn metric(text: &str, series: &str) -> f64 {
    let family = series.ends_with('{');
    text.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(series)?;
            let value = if family {
                rest.rsplit(' ').next()?
            } else {
                rest.strip_prefix(' ')?
            };
            value.trim().parse::<f64>().ok()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::metric;

    const TEXT: &str = "\
# HELP reflexd_queue_depth Events waiting.
# TYPE reflexd_queue_depth gauge
reflexd_queue_depth 3
reflexd_queue_depth_max 9
reflexd_deadline_misses_total{route=\"a\",cause=\"queue_full\"} 2
reflexd_deadline_misses_total{route=\"b\",cause=\"queue_full\"} 5
reflexd_stage_latency_seconds_sum{stage=\"infer\"} 0.25
";

    #[test]
    fn a_whole_series_is_its_own_line_and_not_a_longer_name_that_starts_like_it() {
        assert_eq!(metric(TEXT, "reflexd_queue_depth"), 3.0);
        assert_eq!(
            metric(TEXT, "reflexd_stage_latency_seconds_sum{stage=\"infer\"}"),
            0.25
        );
        assert_eq!(
            metric(
                TEXT,
                "reflexd_deadline_misses_total{route=\"b\",cause=\"queue_full\"}"
            ),
            5.0
        );
    }

    #[test]
    fn a_family_followed_by_a_brace_sums_its_labelled_series() {
        assert_eq!(metric(TEXT, "reflexd_deadline_misses_total{"), 7.0);
    }

    #[test]
    fn an_absent_series_reads_zero() {
        assert_eq!(metric(TEXT, "reflexd_nothing_total"), 0.0);
        assert_eq!(metric("", "reflexd_queue_depth"), 0.0);
    }
}
