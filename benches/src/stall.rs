//! A machine-stall probe for the end-to-end benchmark: tells a deadline miss that reflexd
//! caused from one the machine caused.
//!
//! A thread at real-time priority (SCHED_FIFO, above reflexd's engine threads) sleeps
//! `period` over and over and notes how late each wake-up is. Nothing in user space can
//! keep such a thread from its core for milliseconds on an otherwise idle-enough machine;
//! when it is late by milliseconds anyway, the whole virtual machine (or its host) did not
//! run it: a machine stall, which every process on the board shares, reflexd's engine
//! threads and the echo floor alike. The bench counts the stalls of each phase, and holds
//! each of reflexd's deadline-miss log lines against them: a miss whose event waited
//! through a stall the probe saw is the machine's; one without is reflexd's own.
//!
//! The probe costs one wake-up per period (1 ms: ~1000 context switches/s on one core),
//! the same for every phase it watches.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jiff::civil::DateTime;
use jiff::tz::Offset;

/// One late wake-up of the probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stall {
    /// When the probe ran again, µs since the Unix epoch.
    pub end_unix_us: u64,
    /// How much later than asked it woke, µs.
    pub late_us: u64,
}

impl Stall {
    /// When the stall began: the wake-up that should have been.
    pub fn start_unix_us(&self) -> u64 {
        self.end_unix_us.saturating_sub(self.late_us)
    }
}

/// Stalls kept at most (a stall is ≥ `keep_from`, rare; this only bounds a pathological
/// run).
const MAX_KEPT: usize = 100_000;

/// The running probe; stops and joins its thread on drop.
pub struct StallProbe {
    stalls: Arc<Mutex<Vec<Stall>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    /// Whether the thread got SCHED_FIFO (it runs at normal priority otherwise, and then
    /// also counts plain CPU contention as stalls).
    pub realtime: bool,
}

impl StallProbe {
    /// Starts the probe: wakes every `period`, keeps every wake-up at least `keep_from`
    /// late, at SCHED_FIFO `priority` if the system allows it.
    pub fn start(period: Duration, keep_from: Duration, priority: i32) -> StallProbe {
        let stalls = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = {
            let (stalls, stop) = (stalls.clone(), stop.clone());
            std::thread::Builder::new()
                .name("stall-probe".into())
                .spawn(move || {
                    let _ = tx.send(set_fifo(priority));
                    while !stop.load(Ordering::Relaxed) {
                        let asked = Instant::now() + period;
                        std::thread::sleep(period);
                        let late = Instant::now().saturating_duration_since(asked);
                        if late >= keep_from {
                            let mut kept = stalls.lock().expect("stall log lock");
                            if kept.len() < MAX_KEPT {
                                kept.push(Stall {
                                    end_unix_us: unix_now_us(),
                                    late_us: late.as_micros() as u64,
                                });
                            }
                        }
                    }
                })
                .expect("spawning the stall probe thread")
        };
        let realtime = rx.recv().unwrap_or(false);
        StallProbe {
            stalls,
            stop,
            thread: Some(thread),
            realtime,
        }
    }

    /// The stalls that ended within `[from_unix_us, to_unix_us]`.
    pub fn between(&self, from_unix_us: u64, to_unix_us: u64) -> Vec<Stall> {
        self.stalls
            .lock()
            .expect("stall log lock")
            .iter()
            .filter(|s| (from_unix_us..=to_unix_us).contains(&s.end_unix_us))
            .copied()
            .collect()
    }
}

impl Drop for StallProbe {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Puts the calling thread on SCHED_FIFO at `priority`; false when refused.
#[allow(unsafe_code)]
fn set_fifo(priority: i32) -> bool {
    let param = libc::sched_param {
        sched_priority: priority,
    };
    // SAFETY: sched_setscheduler reads `param` only during the call; pid 0 = this thread.
    unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) == 0 }
}

/// Now, µs since the Unix epoch.
pub fn unix_now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// The longest stall that overlaps `[from_unix_us, to_unix_us]` (an event's wait).
pub fn longest_overlapping(stalls: &[Stall], from_unix_us: u64, to_unix_us: u64) -> Option<Stall> {
    stalls
        .iter()
        .filter(|s| s.start_unix_us() <= to_unix_us && s.end_unix_us >= from_unix_us)
        .max_by_key(|s| s.late_us)
        .copied()
}

/// The wait of the event a reflexd deadline-miss log line is about, as
/// `[arrival, logged]` in µs since the Unix epoch: the line's RFC 3339 UTC timestamp
/// (`2026-11-29T05:35:55.564718Z`, first field, ANSI colours allowed) minus its
/// `waited_us`. None when the line has neither.
pub fn miss_wait(line: &str) -> Option<(u64, u64)> {
    let plain = strip_ansi(line);
    let logged = parse_rfc3339_utc_us(plain.split_whitespace().next()?)?;
    let waited: u64 = plain
        .split_whitespace()
        .find_map(|field| field.strip_prefix("waited_us="))?
        .parse()
        .ok()?;
    Some((logged.saturating_sub(waited), logged))
}

/// `line` without ANSI escape sequences (ESC `[` … letter).
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// µs since the Unix epoch of `YYYY-MM-DDTHH:MM:SS[.ffffff]Z` (UTC, the form
/// tracing-subscriber writes; digits past the microsecond are dropped).
fn parse_rfc3339_utc_us(s: &str) -> Option<u64> {
    let datetime = DateTime::strptime("%Y-%m-%dT%H:%M:%S%.fZ", s).ok()?;
    let instant = Offset::UTC.to_timestamp(datetime).ok()?;
    u64::try_from(instant.as_microsecond()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_timestamp_reads_as_the_same_instant_as_the_unix_clock_gives() {
        // 2000-03-01 is day 11 017 (`date -u -d 2000-03-01 +%s` / 86400).
        assert_eq!(parse_rfc3339_utc_us("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_rfc3339_utc_us("2000-03-01T00:00:00Z"),
            Some(11_017 * 86_400 * 1_000_000)
        );
        assert_eq!(
            parse_rfc3339_utc_us("2000-03-01T00:00:01.5Z"),
            Some((11_017 * 86_400 + 1) * 1_000_000 + 500_000)
        );
        // And against the system clock: now, written as tracing-subscriber writes it,
        // parses back to now.
        let now = unix_now_us();
        let s = jiff::Timestamp::from_microsecond(now as i64)
            .unwrap()
            .strftime("%Y-%m-%dT%H:%M:%S%.6fZ")
            .to_string();
        assert_eq!(parse_rfc3339_utc_us(&s), Some(now), "{s}");
        assert_eq!(parse_rfc3339_utc_us("2026-13-01T00:00:00Z"), None);
        assert_eq!(parse_rfc3339_utc_us("2026-11-29 05:35:55Z"), None);
        assert_eq!(parse_rfc3339_utc_us("1969-12-31T23:59:59Z"), None);
        assert_eq!(
            parse_rfc3339_utc_us("2026-11-29T05:35:55.123456789Z"),
            parse_rfc3339_utc_us("2026-11-29T05:35:55.123456Z")
        );
    }

    #[test]
    fn a_miss_line_gives_the_events_wait_from_its_timestamp_and_waited_us() {
        let line = "\u{1b}[2m2026-11-29T05:35:55.564718Z\u{1b}[0m \u{1b}[33m WARN\u{1b}[0m \
                    \u{1b}[2mreflexd::engine\u{1b}[0m\u{1b}[2m:\u{1b}[0m deadline miss: the fallback answered \
                    \u{1b}[3mdevice\u{1b}[0m\u{1b}[2m=\u{1b}[0mdev-0005 \u{1b}[3mwaited_us\u{1b}[0m\u{1b}[2m=\u{1b}[0m7391 \
                    \u{1b}[3mbudget_us\u{1b}[0m\u{1b}[2m=\u{1b}[0m5000";
        let logged = parse_rfc3339_utc_us("2026-11-29T05:35:55.564718Z").unwrap();
        assert_eq!(miss_wait(line), Some((logged - 7391, logged)));
        assert_eq!(
            miss_wait("deadline miss without a timestamp waited_us=5"),
            None
        );
        assert_eq!(miss_wait("2026-11-29T05:35:55Z WARN no wait here"), None);
    }

    #[test]
    fn the_longest_stall_overlapping_a_wait_is_found_and_others_are_not() {
        let s = |end, late| Stall {
            end_unix_us: end,
            late_us: late,
        };
        let stalls = [s(1_000, 500), s(10_000, 6_000), s(20_000, 2_000)];
        // A wait 5_000..9_000 lies inside the 4_000..10_000 stall.
        assert_eq!(longest_overlapping(&stalls, 5_000, 9_000), Some(stalls[1]));
        // A wait that only touches the small one at 500..1_000.
        assert_eq!(longest_overlapping(&stalls, 0, 700), Some(stalls[0]));
        // Between stalls: none.
        assert_eq!(longest_overlapping(&stalls, 10_001, 17_999), None);
        // Spanning two: the longer.
        assert_eq!(longest_overlapping(&stalls, 900, 19_000), Some(stalls[1]));
    }

    #[test]
    fn the_probe_keeps_only_wake_ups_late_by_its_threshold_and_stops_on_drop() {
        // A threshold no wake-up reaches keeps nothing; a zero one keeps every wake-up.
        let from = unix_now_us();
        let none = StallProbe::start(Duration::from_millis(1), Duration::from_secs(3600), 0);
        let all = StallProbe::start(Duration::from_millis(1), Duration::ZERO, 0);
        let deadline = Instant::now() + Duration::from_secs(10);
        while all.between(from, u64::MAX).len() < 20 {
            assert!(
                Instant::now() < deadline,
                "the probe never woke 20 times in 10 s"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        assert!(none.between(from, u64::MAX).is_empty());
        drop(all);
        drop(none);
    }
}
