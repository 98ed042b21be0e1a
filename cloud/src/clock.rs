//! Board clocks (pure): a record's timestamp is the board's wall clock when the event
//! arrived (`arrival_unix_us`). A board whose clock is wrong (no RTC, no NTP yet: 1970)
//! stamps implausible times. The uploader sends, with each batch, the board's wall clock at
//! the moment it sends (`X-Reflex-Board-Clock-Us`), so the ingest knows each record's age
//! on the board's own clock, `age = board clock − arrival`, whatever the clock's offset.
//!
//! A record is **implausible** when its arrival is before [`ClockPolicy::not_before_us`]
//! (by default the build date of this reflex-cloud: no board can have decided an event
//! before the cloud that reads it was built... within the margin of an old board, see
//! `ingest.clock_not_before_unix_s`) or more than [`ClockPolicy::max_future_us`] after the
//! ingest's own clock. Such a record is filed under its arrival-based estimate, `true time =
//! ingest arrival − age` (the ingest's arrival when the board sent no clock, or the age is
//! itself implausible), and flagged: the events table's `arrival_unix_us` holds the estimate,
//! `board_arrival_unix_us` the board's own value, and `clock_suspect` is true. The date
//! partition follows the estimate, so rescoring the day the record reached the cloud
//! includes it.
//!
//! Limit: the age is measured on the board's wall clock, so a clock that was stepped between
//! the event and the upload (NTP setting it after boot) gives an age off by that step. A
//! monotonic age per record would need the record format to carry a boot-time clock.

/// When a board's timestamp is implausible.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClockPolicy {
    /// Earlier arrivals are implausible, µs since the Unix epoch.
    pub not_before_us: u64,
    /// Arrivals more than this ahead of the ingest's clock are implausible, µs.
    pub max_future_us: u64,
}

/// The build date of this reflex-cloud, Unix seconds (`build.rs`).
pub const BUILD_UNIX_S: u64 = parse_u64(env!("REFLEX_CLOUD_BUILD_UNIX_S"));
// build.rs wrote a date after reflex existed (2023-11-14), not a malformed number.
const _: () = assert!(BUILD_UNIX_S > 1_700_000_000);

const fn parse_u64(s: &str) -> u64 {
    let b = s.as_bytes();
    let mut i = 0;
    let mut v = 0u64;
    while i < b.len() {
        v = v * 10 + (b[i] - b'0') as u64;
        i += 1;
    }
    v
}

/// Where a record with an implausible timestamp is filed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClockFix {
    /// The estimate it is filed under, µs since the Unix epoch.
    pub filed_unix_us: u64,
    /// The board's own timestamp.
    pub board_unix_us: u64,
}

impl ClockPolicy {
    /// Whether `t_us` is a plausible time at ingest time `received_us`.
    pub fn plausible(&self, t_us: u64, received_us: u64) -> bool {
        t_us >= self.not_before_us && t_us <= received_us.saturating_add(self.max_future_us)
    }

    /// `None` when the record's arrival is plausible; else where to file it: `received_us −
    /// (board_clock_us − arrival)`, or `received_us` when the board sent no clock or the
    /// estimate is itself implausible.
    pub fn fix(
        &self,
        arrival_us: u64,
        board_clock_us: Option<u64>,
        received_us: u64,
    ) -> Option<ClockFix> {
        if self.plausible(arrival_us, received_us) {
            return None;
        }
        let estimate = board_clock_us
            .filter(|&c| c >= arrival_us)
            .map(|c| received_us.saturating_sub(c - arrival_us))
            .filter(|&e| self.plausible(e, received_us))
            .unwrap_or(received_us);
        Some(ClockFix {
            filed_unix_us: estimate,
            board_unix_us: arrival_us,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: u64 = 86_400_000_000;
    const NOW: u64 = 1_796_000_000_000_000; // late 2026

    fn policy() -> ClockPolicy {
        ClockPolicy {
            not_before_us: NOW - 30 * DAY,
            max_future_us: 5 * 60_000_000,
        }
    }

    #[test]
    fn a_plausible_time_is_filed_as_the_board_says() {
        assert_eq!(policy().fix(NOW - DAY, Some(NOW), NOW), None);
        assert_eq!(
            policy().fix(NOW + 60_000_000, None, NOW),
            None,
            "a minute ahead"
        );
    }

    #[test]
    fn a_1970_board_is_filed_at_arrival_minus_its_age() {
        // The board's clock says 1970-01-01T00:10:00 when it sends; the record is 7 s old.
        let board_now = 600_000_000;
        let fix = policy()
            .fix(board_now - 7_000_000, Some(board_now), NOW)
            .unwrap();
        assert_eq!(fix.filed_unix_us, NOW - 7_000_000);
        assert_eq!(fix.board_unix_us, board_now - 7_000_000);
    }

    #[test]
    fn without_a_usable_board_clock_the_ingest_arrival_is_the_estimate() {
        let p = policy();
        assert_eq!(p.fix(5, None, NOW).unwrap().filed_unix_us, NOW);
        // A board clock behind the record (stepped back): no age.
        assert_eq!(p.fix(5, Some(1), NOW).unwrap().filed_unix_us, NOW);
        // An age that would put it before the bound: no better than arrival.
        assert_eq!(
            p.fix(5, Some(5 + 60 * DAY), NOW).unwrap().filed_unix_us,
            NOW
        );
    }

    #[test]
    fn a_time_too_far_ahead_is_implausible() {
        let p = policy();
        let ahead = NOW + 10 * 60_000_000;
        let fix = p.fix(ahead, Some(ahead + 1_000_000), NOW).unwrap();
        assert_eq!(fix.filed_unix_us, NOW - 1_000_000);
    }

    #[test]
    fn the_default_bound_is_the_build_date() {
        let cfg = crate::config::IngestConfig::default();
        assert_eq!(cfg.clock_not_before_unix_s, BUILD_UNIX_S);
        assert_eq!(cfg.clock_max_future_s, 300);
    }
}
