//! Per-device sequence tracking: QoS 1 duplicates, reordering, gaps and device restarts,
//! in bounded memory.
//!
//! MQTT QoS 1 is at-least-once: the broker redelivers an event whose acknowledgement was
//! lost, and a redelivered event must not be answered a second time. For each device the
//! [`DeviceTracker`] keeps the highest sequence number seen and a bitmap of which of the
//! last `dedupe_window` sequence numbers were seen, and classifies every arrival
//! ([`SeqVerdict`]). At most `max_tracked` devices are tracked; the least recently seen is
//! forgotten first. Pure: time is passed in and only recorded.
//!
//! How an arriving `seq` is judged against the device's highest seen `h` (window `w`):
//!
//! | case                                       | verdict                  | answer? |
//! |--------------------------------------------|--------------------------|---------|
//! | device not tracked (new or evicted)        | `New { gap: 0 }`         | yes     |
//! | `seq > h`                                  | `New { gap: seq - h - 1 }` | yes   |
//! | `seq <= 1` and `seq < h` (counter restarted), unless a redelivery (DUP) seen in the window | `Reset` | yes |
//! | `h - seq < w`, seen                        | `Duplicate`              | **no**  |
//! | `h - seq < w`, not seen                    | `OutOfOrder`             | yes     |
//! | `h - seq >= w` and (`seq < w` or `h - seq >= 2w`) | `Reset`           | yes     |
//! | otherwise (older than the window)          | `TooOld`                 | yes     |
//!
//! `TooOld`: we cannot tell whether it was seen, and answering an event twice is safer
//! than never answering it, so it is answered and counted. `Reset`: a device that
//! restarted counts again from 1 (or is far below anything recent); the device's state
//! restarts at `seq`. Known limit: a device that restarts and whose first surviving
//! event is in the previous run's window but above 1 is taken for a redelivery until its
//! counter passes the old highest.

use std::collections::{BTreeMap, HashMap};

use crate::pipeline::types::Nanos;

/// Largest accepted dedupe window, in sequence numbers (8 KiB of bitmap per device).
pub const MAX_DEDUPE_WINDOW: u64 = 65_536;

/// How an arriving event's sequence number relates to what was seen from its device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SeqVerdict {
    /// Newer than anything seen (or the device's first event): `gap` sequence numbers
    /// were skipped since the highest seen.
    New {
        /// Missing sequence numbers between the previous highest and this one.
        gap: u64,
    },
    /// Not seen before, but older than the highest seen, within the window.
    OutOfOrder,
    /// Seen before (a QoS 1 redelivery): do not answer again.
    Duplicate,
    /// Older than the window: unknown whether seen; answered anyway.
    TooOld,
    /// The device's counter restarted; its state restarts at this event.
    Reset {
        /// The highest sequence number of the previous run.
        previous_highest: u64,
    },
}

impl SeqVerdict {
    /// Whether the event must be answered: everything but a duplicate.
    pub fn should_answer(self) -> bool {
        self != SeqVerdict::Duplicate
    }
}

/// Running totals, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SeqCounters {
    /// Events recognised as redeliveries.
    pub duplicates: u64,
    /// Events that arrived after a later one, within the window.
    pub out_of_order: u64,
    /// Sum of skipped sequence numbers (events presumed lost, or yet to arrive).
    pub gaps: u64,
    /// Device counter restarts.
    pub resets: u64,
    /// Events older than the window (answered).
    pub too_old: u64,
    /// Devices forgotten to stay within `max_tracked`.
    pub evictions: u64,
}

#[derive(Debug)]
struct Device {
    highest: u64,
    /// Bit `s % bits` is set iff `s` was seen, for `s` in `(highest - window, highest]`.
    seen: Box<[u64]>,
    last_seen: Nanos,
    /// Key in the recency index.
    touch: u64,
}

impl Device {
    fn new(seq: u64, words: usize, now: Nanos, touch: u64) -> Self {
        let mut d = Device {
            highest: seq,
            seen: vec![0; words].into_boxed_slice(),
            last_seen: now,
            touch,
        };
        d.set(seq);
        d
    }

    fn bits(&self) -> u64 {
        self.seen.len() as u64 * 64
    }

    fn slot(&self, seq: u64) -> (usize, u64) {
        let bit = seq % self.bits();
        ((bit / 64) as usize, 1u64 << (bit % 64))
    }

    fn is_set(&self, seq: u64) -> bool {
        let (word, mask) = self.slot(seq);
        self.seen[word] & mask != 0
    }

    fn set(&mut self, seq: u64) {
        let (word, mask) = self.slot(seq);
        self.seen[word] |= mask;
    }

    fn clear(&mut self, seq: u64) {
        let (word, mask) = self.slot(seq);
        self.seen[word] &= !mask;
    }

    /// Moves the highest to `seq > highest`, forgetting the bits that leave the window.
    fn advance(&mut self, seq: u64) {
        if seq - self.highest >= self.bits() {
            self.seen.fill(0);
        } else {
            for s in self.highest + 1..=seq {
                self.clear(s);
            }
        }
        self.highest = seq;
        self.set(seq);
    }

    fn restart(&mut self, seq: u64) {
        self.seen.fill(0);
        self.highest = seq;
        self.set(seq);
    }
}

/// Sequence state for up to `max_tracked` devices; see the module docs for the rules.
#[derive(Debug)]
pub struct DeviceTracker {
    devices: HashMap<String, Device>,
    /// Recency index: touch counter → device id; the first entry is the least recent.
    recency: BTreeMap<u64, String>,
    next_touch: u64,
    max_tracked: usize,
    window: u64,
    words: usize,
    counters: SeqCounters,
}

impl DeviceTracker {
    /// Tracks at most `max_tracked` devices (at least 1) with a dedupe window of
    /// `dedupe_window` sequence numbers (clamped to 1..=[`MAX_DEDUPE_WINDOW`]).
    pub fn new(max_tracked: usize, dedupe_window: u64) -> Self {
        let window = dedupe_window.clamp(1, MAX_DEDUPE_WINDOW);
        Self {
            devices: HashMap::new(),
            recency: BTreeMap::new(),
            next_touch: 0,
            max_tracked: max_tracked.max(1),
            window,
            words: window.div_ceil(64) as usize,
            counters: SeqCounters::default(),
        }
    }

    /// Records event `seq` from `device` at monotonic time `now` and classifies it.
    pub fn observe(&mut self, device: &str, seq: u64, now: Nanos) -> SeqVerdict {
        self.observe_delivery(device, seq, now, false)
    }

    /// [`DeviceTracker::observe`] for a delivery whose MQTT DUP flag is `redelivered`: the
    /// broker sent it before, so it is never a device restart. A redelivered `seq <= 1`
    /// seen within the window is a duplicate, not a reset.
    pub fn observe_delivery(
        &mut self,
        device: &str,
        seq: u64,
        now: Nanos,
        redelivered: bool,
    ) -> SeqVerdict {
        let touch = self.next_touch;
        self.next_touch += 1;
        let window = self.window;
        let Some(d) = self.devices.get_mut(device) else {
            if self.devices.len() >= self.max_tracked {
                self.evict_least_recent();
            }
            self.devices
                .insert(device.to_owned(), Device::new(seq, self.words, now, touch));
            self.recency.insert(touch, device.to_owned());
            return SeqVerdict::New { gap: 0 };
        };
        // Re-key the recency entry, reusing its id string: no allocation per event.
        let id = self
            .recency
            .remove(&d.touch)
            .unwrap_or_else(|| device.to_owned());
        self.recency.insert(touch, id);
        d.touch = touch;
        d.last_seen = now;

        let c = &mut self.counters;
        if seq > d.highest {
            let gap = seq - d.highest - 1;
            d.advance(seq);
            c.gaps += gap;
            return SeqVerdict::New { gap };
        }
        if seq == d.highest {
            c.duplicates += 1;
            return SeqVerdict::Duplicate;
        }
        let behind = d.highest - seq;
        let previous_highest = d.highest;
        let seen_redelivery = redelivered && behind < window && d.is_set(seq);
        let reset = (seq <= 1 && !seen_redelivery)
            || (behind >= window && (seq < window || behind >= 2 * window));
        if reset {
            d.restart(seq);
            c.resets += 1;
            SeqVerdict::Reset { previous_highest }
        } else if behind >= window {
            c.too_old += 1;
            SeqVerdict::TooOld
        } else if d.is_set(seq) {
            c.duplicates += 1;
            SeqVerdict::Duplicate
        } else {
            d.set(seq);
            c.out_of_order += 1;
            SeqVerdict::OutOfOrder
        }
    }

    /// Seeds `device` as having sent every sequence number up to `seq` (an earlier run
    /// decided its events up to there, and their records are gone): from now on each of
    /// them within the window is a duplicate. For a tracker being seeded at start, before
    /// any event.
    pub fn seen_through(&mut self, device: &str, seq: u64) {
        self.observe(device, seq, 0);
        let window = self.window;
        if let Some(d) = self.devices.get_mut(device) {
            let lowest_in_window = d.highest.saturating_sub(window - 1);
            for s in seq.saturating_sub(window - 1).max(lowest_in_window)..=seq {
                d.set(s);
            }
        }
    }

    fn evict_least_recent(&mut self) {
        if let Some((_, id)) = self.recency.pop_first() {
            self.devices.remove(&id);
            self.counters.evictions += 1;
        }
    }

    /// The running totals.
    pub fn counters(&self) -> SeqCounters {
        self.counters
    }

    /// Devices currently tracked (never more than `max_tracked`).
    pub fn len(&self) -> usize {
        self.devices.len()
    }

    /// Whether no device is tracked.
    pub fn is_empty(&self) -> bool {
        self.devices.is_empty()
    }

    /// Whether `device` is tracked.
    pub fn contains(&self, device: &str) -> bool {
        self.devices.contains_key(device)
    }

    /// The highest sequence number seen from `device`, if tracked.
    pub fn highest(&self, device: &str) -> Option<u64> {
        self.devices.get(device).map(|d| d.highest)
    }

    /// When `device` was last seen (the `now` of its last [`DeviceTracker::observe`]).
    pub fn last_seen(&self, device: &str) -> Option<Nanos> {
        self.devices.get(device).map(|d| d.last_seen)
    }

    /// The dedupe window in effect, in sequence numbers.
    pub fn window(&self) -> u64 {
        self.window
    }

    /// The device bound in effect.
    pub fn max_tracked(&self) -> usize {
        self.max_tracked
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashSet;

    #[test]
    fn first_event_of_a_device_is_new_without_gap() {
        let mut t = DeviceTracker::new(10, 64);
        assert_eq!(t.observe("a", 57, 0), SeqVerdict::New { gap: 0 });
        assert_eq!(t.counters(), SeqCounters::default());
    }

    #[test]
    fn duplicate_detected() {
        let mut t = DeviceTracker::new(10, 1024);
        assert_eq!(t.observe("a", 5, 0), SeqVerdict::New { gap: 0 });
        assert_eq!(t.observe("a", 6, 1), SeqVerdict::New { gap: 0 });
        assert_eq!(t.observe("a", 6, 2), SeqVerdict::Duplicate);
        assert_eq!(t.observe("a", 5, 3), SeqVerdict::Duplicate);
        assert!(!SeqVerdict::Duplicate.should_answer());
        assert_eq!(t.counters().duplicates, 2);
    }

    #[test]
    fn devices_are_tracked_independently() {
        let mut t = DeviceTracker::new(10, 64);
        t.observe("a", 5, 0);
        assert_eq!(t.observe("b", 5, 0), SeqVerdict::New { gap: 0 });
    }

    #[test]
    fn reordering_within_window_accepted_once_each() {
        let mut t = DeviceTracker::new(10, 1024);
        t.observe("a", 10, 0);
        assert_eq!(t.observe("a", 14, 1), SeqVerdict::New { gap: 3 });
        for seq in [12, 11, 13] {
            assert_eq!(t.observe("a", seq, 2), SeqVerdict::OutOfOrder);
        }
        for seq in [11, 12, 13, 14] {
            assert_eq!(t.observe("a", seq, 3), SeqVerdict::Duplicate);
        }
        let c = t.counters();
        assert_eq!((c.out_of_order, c.duplicates, c.gaps), (3, 4, 3));
    }

    #[test]
    fn gap_counted() {
        let mut t = DeviceTracker::new(10, 64);
        t.observe("a", 2, 0);
        assert_eq!(t.observe("a", 3, 1), SeqVerdict::New { gap: 0 });
        assert_eq!(t.observe("a", 10, 2), SeqVerdict::New { gap: 6 });
        assert_eq!(t.observe("a", 1_000, 3), SeqVerdict::New { gap: 989 });
        assert_eq!(t.counters().gaps, 995);
    }

    #[test]
    fn bits_leaving_the_window_are_forgotten() {
        let mut t = DeviceTracker::new(10, 64);
        t.observe("a", 100, 0);
        // Jump by less than the bitmap: 100 leaves the window, so an old bit must not
        // alias onto a new seq with the same residue.
        t.observe("a", 150, 1);
        assert_eq!(t.observe("a", 164, 2), SeqVerdict::New { gap: 13 });
        assert_eq!(t.observe("a", 163, 3), SeqVerdict::OutOfOrder);
        // 164 - 100 = 64 = w: older than the window.
        assert_eq!(t.observe("a", 100, 4), SeqVerdict::TooOld);
        assert_eq!(t.counters().too_old, 1);
    }

    #[test]
    fn too_old_event_is_answered_and_counted() {
        let mut t = DeviceTracker::new(10, 64);
        t.observe("a", 200, 0);
        assert_eq!(t.observe("a", 120, 1), SeqVerdict::TooOld);
        assert!(SeqVerdict::TooOld.should_answer());
        assert_eq!(t.highest("a"), Some(200));
    }

    #[test]
    fn device_restart_to_one_is_a_reset() {
        let mut t = DeviceTracker::new(10, 1024);
        for seq in 1..=500 {
            t.observe("a", seq, seq);
        }
        assert_eq!(
            t.observe("a", 1, 600),
            SeqVerdict::Reset {
                previous_highest: 500
            }
        );
        assert_eq!(t.observe("a", 2, 601), SeqVerdict::New { gap: 0 });
        assert_eq!(t.observe("a", 2, 602), SeqVerdict::Duplicate);
        assert_eq!(t.counters().resets, 1);
    }

    #[test]
    fn a_redelivered_seq_one_seen_in_the_window_is_a_duplicate_not_a_reset() {
        let mut t = DeviceTracker::new(10, 1024);
        for seq in 1..=5 {
            t.observe("a", seq, seq);
        }
        assert_eq!(t.observe_delivery("a", 1, 6, true), SeqVerdict::Duplicate);
        assert_eq!(t.highest("a"), Some(5));
        assert_eq!(t.counters().resets, 0);
        // The same sequence number published afresh (no DUP): the device restarted.
        assert_eq!(
            t.observe_delivery("a", 1, 7, false),
            SeqVerdict::Reset {
                previous_highest: 5
            }
        );
    }

    #[test]
    fn a_redelivered_seq_one_never_seen_is_still_a_reset() {
        let mut t = DeviceTracker::new(10, 1024);
        for seq in 2..=5 {
            t.observe("a", seq, seq);
        }
        assert!(matches!(
            t.observe_delivery("a", 1, 6, true),
            SeqVerdict::Reset { .. }
        ));
    }

    #[test]
    fn a_device_seeded_through_a_seq_sees_every_earlier_one_in_the_window_as_a_duplicate() {
        let mut t = DeviceTracker::new(10, 16);
        t.seen_through("a", 100);
        assert_eq!(t.observe("a", 100, 1), SeqVerdict::Duplicate);
        assert_eq!(t.observe("a", 85, 2), SeqVerdict::Duplicate);
        // Below the window: not known either way.
        assert_eq!(t.observe("a", 84, 3), SeqVerdict::TooOld);
        assert_eq!(t.observe("a", 101, 4), SeqVerdict::New { gap: 0 });
        // A redelivered seq 1 of a device seeded through a low seq is a duplicate.
        t.seen_through("b", 3);
        assert_eq!(t.observe_delivery("b", 1, 5, true), SeqVerdict::Duplicate);
    }

    #[test]
    fn seq_far_below_the_window_is_a_reset() {
        let mut t = DeviceTracker::new(10, 64);
        t.observe("a", 10_000, 0);
        assert!(matches!(t.observe("a", 40, 1), SeqVerdict::Reset { .. }));
        t.observe("a", 20_000, 2);
        assert!(matches!(
            t.observe("a", 19_000, 3),
            SeqVerdict::Reset { .. }
        ));
        assert_eq!(t.highest("a"), Some(19_000));
        assert_eq!(t.counters().resets, 2);
    }

    #[test]
    fn eviction_at_cap_keeps_the_most_recent() {
        let mut t = DeviceTracker::new(3, 64);
        t.observe("a", 1, 0);
        t.observe("b", 1, 1);
        t.observe("c", 1, 2);
        t.observe("a", 2, 3); // a is now more recent than b
        t.observe("d", 1, 4); // evicts b
        assert!(!t.contains("b"));
        assert!(t.contains("a") && t.contains("c") && t.contains("d"));
        assert_eq!(t.counters().evictions, 1);
        assert_eq!(t.last_seen("a"), Some(3));
        // An evicted device starts afresh.
        assert_eq!(t.observe("b", 1, 5), SeqVerdict::New { gap: 0 });
        assert!(!t.contains("c"));
    }

    #[test]
    fn window_and_cap_are_clamped_to_sane_values() {
        let t = DeviceTracker::new(0, 0);
        assert_eq!((t.max_tracked(), t.window()), (1, 1));
        let t = DeviceTracker::new(1, u64::MAX);
        assert_eq!(t.window(), MAX_DEDUPE_WINDOW);
    }

    #[test]
    fn window_of_one_still_catches_the_latest_duplicate() {
        let mut t = DeviceTracker::new(4, 1);
        t.observe("a", 5, 0);
        assert_eq!(t.observe("a", 5, 1), SeqVerdict::Duplicate);
        assert_eq!(t.observe("a", 4, 2), SeqVerdict::TooOld);
    }

    proptest! {
        #[test]
        fn memory_bounded(
            cap in 1usize..8,
            arrivals in proptest::collection::vec((0u8..20, 0u64..100), 1..300),
        ) {
            let mut t = DeviceTracker::new(cap, 64);
            for (i, (dev, seq)) in arrivals.iter().enumerate() {
                t.observe(&format!("dev-{dev}"), *seq, i as u64);
                prop_assert!(t.len() <= cap);
                prop_assert_eq!(t.recency.len(), t.devices.len());
            }
        }

        /// Against an unbounded model, for sequence numbers that stay within one window
        /// (and above 1, the restart signature): Duplicate iff seen before.
        #[test]
        fn duplicate_iff_seen_before_within_the_window(
            window in 1u64..200,
            arrivals in proptest::collection::vec((0u8..4, 0u64..1000), 1..400),
        ) {
            let mut t = DeviceTracker::new(4, window);
            let mut seen: HashSet<(u8, u64)> = HashSet::new();
            for (i, (dev, raw)) in arrivals.iter().enumerate() {
                let seq = 2 + raw % window;
                let verdict = t.observe(&format!("dev-{dev}"), seq, i as u64);
                let was_seen = !seen.insert((*dev, seq));
                prop_assert_eq!(verdict == SeqVerdict::Duplicate, was_seen,
                    "dev {} seq {} verdict {:?}", dev, seq, verdict);
                let odd = matches!(verdict, SeqVerdict::TooOld | SeqVerdict::Reset { .. });
                prop_assert!(!odd, "verdict {:?}", verdict);
            }
            let c = t.counters();
            prop_assert_eq!(c.duplicates as usize, arrivals.len() - seen.len());
        }
    }
}
