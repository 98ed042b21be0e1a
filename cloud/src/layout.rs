//! Where things live in the object store (pure; no I/O):
//!
//! ```text
//! events/date=YYYY-MM-DD/device=<device id>/<batch id>.parquet   one file per batch × date × device
//! batches/<batch id>.json                                         the batch's durable marker
//! windows/date=YYYY-MM-DD/node=<node>/<sha256>.json              one board monitoring window
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

/// Prefix of the events table.
pub const EVENTS_PREFIX: &str = "events";
/// Prefix of the batch markers.
pub const MARKERS_PREFIX: &str = "batches";
/// Prefix of the boards' monitoring windows.
pub const WINDOWS_PREFIX: &str = "windows";

/// A UTC calendar day.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Day {
    /// Year.
    pub year: i32,
    /// Month, 1–12.
    pub month: u32,
    /// Day of the month, 1–31.
    pub day: u32,
}

impl Day {
    /// The UTC day containing `unix_us` (µs since the epoch).
    pub fn of_unix_us(unix_us: u64) -> Day {
        Day::from_days((unix_us / 86_400_000_000) as i64)
    }

    /// The day `days` after 1970-01-01 (Hinnant's `civil_from_days`).
    pub fn from_days(days: i64) -> Day {
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        let year = (yoe + era * 400 + i64::from(month <= 2)) as i32;
        Day { year, month, day }
    }

    /// Days since 1970-01-01 (Hinnant's `days_from_civil`).
    pub fn days(&self) -> i64 {
        let y = i64::from(self.year) - i64::from(self.month <= 2);
        let era = y.div_euclid(400);
        let yoe = y.rem_euclid(400);
        let m = i64::from(self.month);
        let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(self.day) - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        era * 146_097 + doe - 719_468
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
        write!(f, "{:04}-{:02}-{:02}", self.year, self.month, self.day)
    }
}

/// Parses an instant given as unix seconds (`1732752000`), a UTC day (`2024-11-28`,
/// midnight) or a UTC time (`2024-11-28T06:30:00Z`) into µs since the epoch.
pub fn parse_instant(s: &str) -> Result<u64, String> {
    let bad = || format!("{s:?} is not unix seconds, YYYY-MM-DD or YYYY-MM-DDTHH:MM:SSZ");
    if let Ok(secs) = s.parse::<u64>() {
        return secs.checked_mul(1_000_000).ok_or_else(bad);
    }
    let (date, time) = match s.split_once('T') {
        Some((d, t)) => (d, Some(t.strip_suffix('Z').ok_or_else(bad)?)),
        None => (s, None),
    };
    let num = |p: Option<&str>, lo: u32, hi: u32| -> Result<u32, String> {
        p.and_then(|v| v.parse::<u32>().ok())
            .filter(|v| (lo..=hi).contains(v))
            .ok_or_else(bad)
    };
    let mut d = date.split('-');
    let year = num(d.next(), 1970, 9999)? as i32;
    let month = num(d.next(), 1, 12)?;
    let day = num(d.next(), 1, 31)?;
    if d.next().is_some() {
        return Err(bad());
    }
    let mut secs = 0u64;
    if let Some(t) = time {
        let mut p = t.split(':');
        let h = num(p.next(), 0, 23)?;
        let m = num(p.next(), 0, 59)?;
        let sec = num(p.next(), 0, 60)?;
        if p.next().is_some() {
            return Err(bad());
        }
        secs = u64::from(h * 3600 + m * 60 + sec);
    }
    let days = Day { year, month, day }.days();
    if Day::from_days(days) != (Day { year, month, day }) {
        return Err(bad());
    }
    Ok((days as u64 * 86_400 + secs) * 1_000_000)
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
            let e = parse_instant(bad).unwrap_err();
            assert!(e.contains(bad), "{e}");
        }
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
