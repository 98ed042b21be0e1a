//! Where things live in the object store (pure; no I/O):
//!
//! ```text
//! events/date=YYYY-MM-DD/device=<device id>/<batch id>.parquet   one file per batch × date × device
//! batches/<batch id>.json                                         the batch's durable marker
//! windows/date=YYYY-MM-DD/node=<node>/<sha256>.json              one board monitoring window
//! events/date=YYYY-MM-DD/device=<device id>/compacted-<id>.parquet  merged batches ([`crate::compact`])
//! compactions/date=YYYY-MM-DD/device=<device id>/<id>.json       the merge's durable marker
//! ```
//!
//! A window file is one live-monitoring window a board closed (per route: the quantile
//! sketches of its inputs, class counts, fallbacks, deadline misses; reflex-drift's
//! `WindowSummary` as JSON), named by the sha256 of the bytes the board sent, so a window
//! that rides in two batches is stored once. Its date is the UTC day of the window's start.
//!
//! The date is the UTC day of the record's arrival at the board. Hive-style `key=value`
//! directories let Spark, Trino, DuckDB and DataFusion prune partitions by date and device.
//! A batch's Parquet files count only once its marker exists: the marker is written last,
//! after every file of the batch is durable, so a crash mid-batch leaves files no reader
//! lists (the rescore snapshot keeps only files whose batch has a marker) and a re-send
//! rewrites the same bytes.

use jiff::civil::{Date, DateTime, Time};
use jiff::tz::Offset;
use jiff::{Span, Timestamp};

/// Prefix of the events table.
pub const EVENTS_PREFIX: &str = "events";
/// Prefix of the batch markers.
pub const MARKERS_PREFIX: &str = "batches";
/// Prefix of the boards' monitoring windows.
pub const WINDOWS_PREFIX: &str = "windows";
/// Prefix of the compaction markers ([`crate::compact`]).
pub const COMPACTIONS_PREFIX: &str = "compactions";
/// File-name prefix of a compacted events file (never a batch id: those are hex only).
const COMPACTED_STEM: &str = "compacted-";

/// A UTC calendar day (proleptic Gregorian, years 1970 to 9999 for any `u64` instant).
///
/// Displays as `YYYY-MM-DD`, the `date=` value of the partition paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Day(Date);

/// Day 0 of [`Day::days`].
const UNIX_EPOCH_DAY: Date = jiff::civil::date(1970, 1, 1);

impl Day {
    /// The UTC day containing `unix_us` (µs since the epoch). Instants past the end of year
    /// 9999 (no clock gives them; a corrupt record might) fall on 9999-12-31.
    pub fn of_unix_us(unix_us: u64) -> Day {
        i64::try_from(unix_us)
            .ok()
            .and_then(|us| Timestamp::from_microsecond(us).ok())
            .map_or(Day(Date::MAX), |t| Day(Offset::UTC.to_datetime(t).date()))
    }

    /// The day `days` after 1970-01-01 (before it when negative), saturating at the first
    /// and last day jiff represents (years -9999 and 9999).
    pub fn from_days(days: i64) -> Day {
        Span::new()
            .try_days(days)
            .and_then(|span| UNIX_EPOCH_DAY.checked_add(span))
            .map(Day)
            .unwrap_or(Day(if days < 0 { Date::MIN } else { Date::MAX }))
    }

    /// Days since 1970-01-01.
    pub fn days(&self) -> i64 {
        i64::from((self.0 - UNIX_EPOCH_DAY).get_days())
    }

    /// The calendar date.
    pub fn date(&self) -> Date {
        self.0
    }

    /// Every day from the one containing `from_us` to the one containing `to_us − 1`
    /// (the days a half-open range `[from_us, to_us)` touches); empty when `to_us ≤ from_us`.
    pub fn range(from_us: u64, to_us: u64) -> Vec<Day> {
        if to_us <= from_us {
            return Vec::new();
        }
        let first = Day::of_unix_us(from_us).days();
        let last = Day::of_unix_us(to_us - 1).days();
        (first..=last).map(Day::from_days).collect()
    }
}

impl std::fmt::Display for Day {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // jiff writes ISO 8601 `YYYY-MM-DD` (four-digit years up to 9999).
        write!(f, "{}", self.0)
    }
}

/// A `--from`/`--to` instant that [`parse_instant`] refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not unix seconds, YYYY-MM-DD or YYYY-MM-DDTHH:MM:SSZ")]
pub struct InstantError(pub String);

/// Parses an instant given as unix seconds (`1732752000`), a UTC day (`2024-11-28`,
/// midnight) or a UTC time (`2024-11-28T06:30:00Z`, a leap second `:60` read as `:59`)
/// into µs since the epoch. Instants before 1970 or after jiff's last one (on 9999-12-30)
/// are refused.
pub fn parse_instant(s: &str) -> Result<u64, InstantError> {
    let bad = || InstantError(s.to_owned());
    if let Ok(secs) = s.parse::<u64>() {
        return secs.checked_mul(1_000_000).ok_or_else(bad);
    }
    // strptime skips whitespace before a number; the forms above have none.
    if s.contains(char::is_whitespace) {
        return Err(bad());
    }
    let datetime = match (s.contains('T'), s.strip_suffix('Z')) {
        (true, Some(time)) => DateTime::strptime("%Y-%m-%dT%H:%M:%S", time),
        (false, _) => Date::strptime("%Y-%m-%d", s).map(|d| d.to_datetime(Time::midnight())),
        (true, None) => return Err(bad()),
    }
    .map_err(|_| bad())?;
    let instant = Offset::UTC.to_timestamp(datetime).map_err(|_| bad())?;
    u64::try_from(instant.as_microsecond()).map_err(|_| bad())
}

/// Whether `id` may name a partition directory: 1–32 bytes of `[A-Za-z0-9_.:-]` (the wire
/// format's device-id syntax), not made only of dots.
pub fn valid_device_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 32
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'))
        && !id.bytes().all(|b| b == b'.')
}

/// Whether `id` is a batch id: 64 lowercase hex digits.
pub fn valid_batch_id(id: &str) -> bool {
    id.len() == 64 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Prefix of one day's partition.
pub fn day_prefix(day: Day) -> String {
    format!("{EVENTS_PREFIX}/date={day}")
}

/// Path of one batch's file in one partition.
pub fn event_file(day: Day, device: &str, batch_id: &str) -> String {
    format!("{}/device={device}/{batch_id}.parquet", day_prefix(day))
}

/// Prefix of one day's window files.
pub fn windows_day_prefix(day: Day) -> String {
    format!("{WINDOWS_PREFIX}/date={day}")
}

/// Path of a board's window file; `content_sha256` names its bytes as sent.
pub fn window_file(day: Day, node: &str, content_sha256: &str) -> String {
    format!(
        "{}/node={node}/{content_sha256}.json",
        windows_day_prefix(day)
    )
}

/// Path of a batch's marker.
pub fn marker(batch_id: &str) -> String {
    format!("{MARKERS_PREFIX}/{batch_id}.json")
}

/// The batch id of an event file path (its file stem), if it is one.
pub fn batch_of_event_file(path: &str) -> Option<&str> {
    let name = path.rsplit('/').next()?;
    let stem = name.strip_suffix(".parquet")?;
    valid_batch_id(stem).then_some(stem)
}

/// Prefix of one day's compaction markers.
pub fn compactions_day_prefix(day: Day) -> String {
    format!("{COMPACTIONS_PREFIX}/date={day}")
}

/// Path of the compacted events file `id` (64 hex digits) of one partition.
pub fn compacted_file(day: Day, device: &str, id: &str) -> String {
    format!(
        "{}/device={device}/{COMPACTED_STEM}{id}.parquet",
        day_prefix(day)
    )
}

/// Path of the marker of compaction `id` of one partition.
pub fn compaction_marker(day: Day, device: &str, id: &str) -> String {
    format!("{}/device={device}/{id}.json", compactions_day_prefix(day))
}

/// The compaction id of a compacted events file path, if it is one.
pub fn compaction_of_event_file(path: &str) -> Option<&str> {
    let name = path.rsplit('/').next()?;
    let id = name
        .strip_prefix(COMPACTED_STEM)?
        .strip_suffix(".parquet")?;
    valid_batch_id(id).then_some(id)
}

/// The device of an event file path (`device=<id>` segment), if any.
pub fn device_of_event_file(path: &str) -> Option<&str> {
    path.split('/').find_map(|s| s.strip_prefix("device="))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_match_known_calendar_dates() {
        assert_eq!(Day::of_unix_us(0).to_string(), "1970-01-01");
        // 2024-02-29T23:59:59.999999Z and the microsecond after.
        let leap = 1_709_251_199_999_999u64;
        assert_eq!(Day::of_unix_us(leap).to_string(), "2024-02-29");
        assert_eq!(Day::of_unix_us(leap + 1).to_string(), "2024-03-01");
        assert_eq!(
            Day::of_unix_us(1_700_000_000_000_000).to_string(),
            "2023-11-14"
        );
        for d in [-1000i64, 0, 11_016, 19_782, 60_000] {
            assert_eq!(Day::from_days(d).days(), d);
        }
    }

    #[test]
    fn a_range_lists_every_day_it_touches_and_is_half_open() {
        let day = 86_400_000_000u64;
        let r = Day::range(3 * day + 5, 5 * day);
        assert_eq!(
            r.iter().map(Day::to_string).collect::<Vec<_>>(),
            ["1970-01-04", "1970-01-05"]
        );
        assert!(Day::range(5, 5).is_empty());
    }

    #[test]
    fn partition_paths_are_hive_style_and_parse_back() {
        let id = "a".repeat(64);
        let p = event_file(Day::of_unix_us(0), "dev-0001", &id);
        assert_eq!(
            p,
            format!("events/date=1970-01-01/device=dev-0001/{id}.parquet")
        );
        assert_eq!(batch_of_event_file(&p), Some(id.as_str()));
        assert_eq!(device_of_event_file(&p), Some("dev-0001"));
        assert_eq!(batch_of_event_file("events/x/notabatch.parquet"), None);
        assert_eq!(marker(&id), format!("batches/{id}.json"));
        let c = compacted_file(Day::of_unix_us(0), "dev-0001", &id);
        assert_eq!(
            c,
            format!("events/date=1970-01-01/device=dev-0001/compacted-{id}.parquet")
        );
        assert_eq!(compaction_of_event_file(&c), Some(id.as_str()));
        assert_eq!(
            batch_of_event_file(&c),
            None,
            "a compacted file is no batch's"
        );
        assert_eq!(compaction_of_event_file(&p), None);
        assert_eq!(device_of_event_file(&c), Some("dev-0001"));
        assert_eq!(
            compaction_marker(Day::of_unix_us(0), "dev-0001", &id),
            format!("compactions/date=1970-01-01/device=dev-0001/{id}.json")
        );
    }

    #[test]
    fn instants_parse_from_seconds_days_and_utc_times() {
        assert_eq!(parse_instant("1700000000"), Ok(1_700_000_000_000_000));
        assert_eq!(parse_instant("1970-01-02"), Ok(86_400_000_000));
        assert_eq!(
            parse_instant("2023-11-14T22:13:20Z"),
            Ok(1_700_000_000_000_000)
        );
        for bad in [
            "2023-02-30",
            "2023-11-14T22:13:20",
            "yesterday",
            "2023-13-01",
            "",
        ] {
            let e = parse_instant(bad).unwrap_err().to_string();
            assert!(e.contains(bad), "{e}");
        }
    }

    #[test]
    fn instants_are_strict_about_their_form_and_refuse_times_before_1970() {
        for bad in [
            "1969-12-31",
            "1969-12-31T23:59:59Z",
            "2023-11-14T22:13:20+01:00",
            "2023-11-14T22:13:20.5Z",
            "2023-11-14t22:13:20z",
            "2023-11-14T22:13Z",
            " 2023-11-14",
            "2023-11-14 ",
            "2023-11-14Z",
            "-5",
        ] {
            assert_eq!(parse_instant(bad), Err(InstantError(bad.into())), "{bad}");
        }
        assert_eq!(
            parse_instant("2016-12-31T23:59:60Z"),
            parse_instant("2016-12-31T23:59:59Z")
        );
        // jiff's last instant is on 9999-12-30 (its range leaves room for UTC offsets).
        assert_eq!(parse_instant("9999-12-30"), Ok(253_402_128_000_000_000));
        assert!(parse_instant("9999-12-31").is_err());
    }

    #[test]
    fn days_past_year_9999_saturate_on_its_last_day() {
        assert_eq!(Day::of_unix_us(u64::MAX).to_string(), "9999-12-31");
        assert_eq!(Day::from_days(i64::MAX).to_string(), "9999-12-31");
        assert_eq!(Day::of_unix_us(253_402_214_400_000_000).days(), 2_932_896);
    }

    #[test]
    fn device_and_batch_ids_that_could_escape_a_directory_are_refused() {
        assert!(valid_device_id("dev-0001"));
        assert!(valid_device_id("a:b.c_d"));
        for bad in ["", "..", ".", "a/b", "a b", &"x".repeat(33)] {
            assert!(!valid_device_id(bad), "{bad:?}");
        }
        assert!(valid_batch_id(&"0f".repeat(32)));
        assert!(!valid_batch_id(&"0F".repeat(32)));
        assert!(!valid_batch_id("abc"));
    }
}
