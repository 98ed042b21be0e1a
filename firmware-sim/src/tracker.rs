//! Matches commands to the events they answer and keeps the load figures: end-to-end
//! latency (HDR histogram), commands missing, duplicate or unexpected commands, decision
//! sources and deadline misses. Pure: times are passed in as nanoseconds.
//!
//! A scalar stream's readings are not all answered: only those that complete a window
//! ([`crate::stream::StreamPlan`]) are sent with [`Tracker::on_sent`] (latency from that
//! reading's publish, missing until answered); the others with [`Tracker::on_silent`],
//! and a command for one of them is unexpected.

use std::collections::HashMap;
use std::fmt;

use hdrhistogram::Histogram;
use reflex_wire::{Command, DecisionSource, DeviceId};

/// Live and final load figures.
#[derive(Debug)]
pub struct Tracker {
    pending: HashMap<(DeviceId, u64), u64>,
    answered: u64,
    sent: u64,
    silent: u64,
    unexpected: u64,
    late: u64,
    by_source: [u64; 3],
    deadline_us: u64,
    total: Histogram<u64>,
    interval: Histogram<u64>,
}

/// How a command matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Match {
    /// It answers an event still waiting; latency in µs.
    Answered(u64),
    /// It answers no waiting event: unknown, or answered already.
    Unexpected,
}

fn histogram() -> Histogram<u64> {
    // 1 µs .. 100 s at 3 significant digits.
    Histogram::new_with_bounds(1, 100_000_000, 3).expect("static histogram bounds are valid")
}

impl Tracker {
    /// A tracker that counts an answer slower than `deadline_us` end to end as late.
    pub fn new(deadline_us: u64) -> Self {
        Tracker {
            pending: HashMap::new(),
            answered: 0,
            sent: 0,
            silent: 0,
            unexpected: 0,
            late: 0,
            by_source: [0; 3],
            deadline_us,
            total: histogram(),
            interval: histogram(),
        }
    }

    /// Records that event `(device, seq)` was published at `now_ns`. A re-send of an
    /// event still waiting keeps its first send time.
    pub fn on_sent(&mut self, device: &str, seq: u64, now_ns: u64) {
        let Ok(device) = DeviceId::try_from(device) else {
            return;
        };
        if let std::collections::hash_map::Entry::Vacant(e) = self.pending.entry((device, seq)) {
            e.insert(now_ns);
            self.sent += 1;
        }
    }

    /// Records a message published that must get no command (a scalar-stream reading
    /// that completes no window).
    pub fn on_silent(&mut self) {
        self.silent += 1;
    }

    /// Records a command received at `now_ns`.
    pub fn on_command(&mut self, cmd: &Command, now_ns: u64) -> Match {
        let Some(sent_ns) = self.pending.remove(&(cmd.device.clone(), cmd.seq)) else {
            self.unexpected += 1;
            return Match::Unexpected;
        };
        let latency_us = (now_ns.saturating_sub(sent_ns) / 1000).max(1);
        self.answered += 1;
        self.by_source[match cmd.source {
            DecisionSource::Model => 0,
            DecisionSource::Fallback => 1,
            DecisionSource::Rule => 2,
        }] += 1;
        if latency_us > self.deadline_us {
            self.late += 1;
        }
        let _ = self.total.record(latency_us.min(self.total.high()));
        let _ = self.interval.record(latency_us.min(self.interval.high()));
        Match::Answered(latency_us)
    }

    /// Events still waiting for a command.
    pub fn missing(&self) -> u64 {
        self.pending.len() as u64
    }

    /// End-to-end latencies (µs) of every answer since the start of the run, so that
    /// several runs can be pooled (HDR histograms add).
    pub fn latency_us(&self) -> &Histogram<u64> {
        &self.total
    }

    /// Figures since the start of the run.
    pub fn report(&self, elapsed_s: f64) -> Report {
        Report::from_histogram(self, &self.total, elapsed_s)
    }

    /// Figures since the last call to `take_interval`, then starts a new interval.
    pub fn take_interval(&mut self, elapsed_s: f64) -> Report {
        let r = Report::from_histogram(self, &self.interval, elapsed_s);
        self.interval.reset();
        r
    }
}

/// A summary of the figures.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// Distinct events published.
    pub sent: u64,
    /// Events answered by exactly one command.
    pub answered: u64,
    /// Messages published that must get no command (scalar-stream readings that complete
    /// no window).
    pub silent: u64,
    /// Events not (yet) answered.
    pub missing: u64,
    /// Commands that answered no waiting event (duplicates or unknown).
    pub unexpected: u64,
    /// Commands from the model, the fallback and rules.
    pub by_source: [u64; 3],
    /// Answers slower end to end than the deadline.
    pub late: u64,
    /// Latency percentiles in µs: p50, p99, p99.9, max (of the histogram in question).
    pub p50_us: u64,
    /// 99th percentile, µs.
    pub p99_us: u64,
    /// 99.9th percentile, µs.
    pub p999_us: u64,
    /// Maximum, µs.
    pub max_us: u64,
    /// Events published per second over the run so far.
    pub events_per_s: f64,
}

/// The latency at `quantile` of `h`, µs; 0 when it holds nothing.
pub fn latency_at(h: &Histogram<u64>, quantile: f64) -> u64 {
    if h.is_empty() {
        0
    } else {
        h.value_at_quantile(quantile)
    }
}

impl Report {
    fn from_histogram(t: &Tracker, h: &Histogram<u64>, elapsed_s: f64) -> Report {
        let q = |p: f64| latency_at(h, p);
        Report {
            sent: t.sent,
            answered: t.answered,
            silent: t.silent,
            missing: t.missing(),
            unexpected: t.unexpected,
            by_source: t.by_source,
            late: t.late,
            p50_us: q(0.5),
            p99_us: q(0.99),
            p999_us: q(0.999),
            max_us: if h.is_empty() { 0 } else { h.max() },
            events_per_s: if elapsed_s > 0.0 {
                t.sent as f64 / elapsed_s
            } else {
                0.0
            },
        }
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{:<22}{:>12}", "events sent", self.sent)?;
        writeln!(f, "{:<22}{:>12.1}", "events/s", self.events_per_s)?;
        if self.silent > 0 {
            writeln!(f, "{:<22}{:>12}", "readings, no window", self.silent)?;
        }
        writeln!(f, "{:<22}{:>12}", "commands matched", self.answered)?;
        writeln!(f, "{:<22}{:>12}", "commands missing", self.missing)?;
        writeln!(f, "{:<22}{:>12}", "unexpected commands", self.unexpected)?;
        writeln!(f, "{:<22}{:>12}", "  from model", self.by_source[0])?;
        writeln!(f, "{:<22}{:>12}", "  from fallback", self.by_source[1])?;
        writeln!(f, "{:<22}{:>12}", "  from rule", self.by_source[2])?;
        writeln!(f, "{:<22}{:>12}", "deadline misses (e2e)", self.late)?;
        writeln!(f, "{:<22}{:>12}", "latency p50 µs", self.p50_us)?;
        writeln!(f, "{:<22}{:>12}", "latency p99 µs", self.p99_us)?;
        writeln!(f, "{:<22}{:>12}", "latency p99.9 µs", self.p999_us)?;
        write!(f, "{:<22}{:>12}", "latency max µs", self.max_us)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reflex_wire::{Action, ModelRef, COMMAND_FORMAT_VERSION};

    fn cmd(device: &str, seq: u64, source: DecisionSource) -> Command {
        Command {
            version: COMMAND_FORMAT_VERSION,
            device: device.try_into().unwrap(),
            seq,
            action: Action::Run,
            class: 0,
            source,
            model: ModelRef {
                name: "m".try_into().unwrap(),
                version: "1".try_into().unwrap(),
            },
            decided_at_us: 0,
            latency_us: 0,
        }
    }

    #[test]
    fn a_command_answers_its_event_once() {
        let mut t = Tracker::new(5_000);
        t.on_sent("d1", 1, 0);
        assert_eq!(
            t.on_command(&cmd("d1", 1, DecisionSource::Model), 2_000_000),
            Match::Answered(2000)
        );
        assert_eq!(
            t.on_command(&cmd("d1", 1, DecisionSource::Model), 3_000_000),
            Match::Unexpected
        );
        let r = t.report(1.0);
        assert_eq!((r.answered, r.unexpected, r.missing, r.late), (1, 1, 0, 0));
        assert!((1998..=2002).contains(&r.p50_us), "{}", r.p50_us);
    }

    #[test]
    fn a_resent_event_keeps_its_first_send_time_and_counts_once() {
        let mut t = Tracker::new(5_000);
        t.on_sent("d1", 7, 1_000_000);
        t.on_sent("d1", 7, 9_000_000);
        assert_eq!(
            t.on_command(&cmd("d1", 7, DecisionSource::Fallback), 11_000_000),
            Match::Answered(10_000)
        );
        let r = t.report(1.0);
        assert_eq!((r.sent, r.late, r.by_source), (1, 1, [0, 1, 0]));
    }

    #[test]
    fn unanswered_events_are_missing() {
        let mut t = Tracker::new(5_000);
        for s in 0..10 {
            t.on_sent("d", s, 0);
        }
        t.on_command(&cmd("d", 3, DecisionSource::Model), 10);
        assert_eq!(t.report(2.0).missing, 9);
        assert_eq!(t.report(2.0).events_per_s, 5.0);
    }

    #[test]
    fn a_command_for_a_reading_that_completes_no_window_is_unexpected() {
        let mut t = Tracker::new(5_000);
        t.on_silent();
        t.on_sent("d", 64, 0);
        assert_eq!(
            t.on_command(&cmd("d", 63, DecisionSource::Model), 10),
            Match::Unexpected
        );
        let r = t.report(1.0);
        assert_eq!((r.sent, r.silent, r.unexpected, r.missing), (1, 1, 1, 1));
        assert!(r.to_string().contains("readings, no window"));
        assert!(!Tracker::new(1)
            .report(1.0)
            .to_string()
            .contains("no window"));
    }

    #[test]
    fn intervals_reset_but_totals_do_not() {
        let mut t = Tracker::new(5_000);
        t.on_sent("d", 1, 0);
        t.on_command(&cmd("d", 1, DecisionSource::Model), 9_000_000);
        // HDR histograms keep 3 significant digits.
        assert!((8990..=9010).contains(&t.take_interval(1.0).p50_us));
        assert_eq!(t.take_interval(2.0).p50_us, 0);
        assert!(t.report(2.0).p50_us >= 8990);
    }
}
