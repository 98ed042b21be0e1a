//! The (device, seq) pairs an earlier run journaled, as read at start (the journal's last
//! `journal.dedupe_scan_records` records), so that a redelivery of any of them is a
//! duplicate however far behind its device's newest event it is.
//!
//! Why the dedupe window alone is not enough: at a crash under load, thousands of journaled
//! events can still be unacked at the broker. mosquitto 2.0 does not hold a subscriber to
//! `max_inflight_messages`: a PUBACK for the oldest message in flight lets it send up to
//! that many more from its queue, whatever is already in flight, so after a reconnect with
//! a backlog it has thousands in flight to reflexd. rumqttc's event loop then takes one
//! request (a PUBACK or a command) per read of up to ten incoming packets, so the PUBACKs
//! of journaled events wait in the request channel behind that flood. At a kill, the
//! broker redelivers all of them, and one more than `devices.dedupe_window` sequence
//! numbers behind its device's newest would be `TooOld` (or `Reset`) for the
//! [`DeviceTracker`](super::device_state::DeviceTracker): decided and journaled twice.
//!
//! Contract: [`JournaledSeqs::contains`] is true exactly for the pairs inserted. Memory: one
//! map entry per device and one per run of consecutive sequence numbers (a device's records
//! are mostly one run). Pure, no I/O.

use std::collections::{BTreeMap, HashMap};

/// Sets of sequence numbers per device, kept as runs of consecutive numbers.
#[derive(Debug, Default)]
pub struct JournaledSeqs {
    /// Per device: run start → run end (inclusive); runs never overlap nor touch.
    devices: HashMap<String, BTreeMap<u64, u64>>,
}

impl JournaledSeqs {
    /// Adds `seq` of `device`.
    pub fn insert(&mut self, device: &str, seq: u64) {
        let runs = match self.devices.get_mut(device) {
            Some(r) => r,
            None => self.devices.entry(device.to_owned()).or_default(),
        };
        let mut start = seq;
        let mut end = seq;
        // The run at or before `seq`: contains it, or ends just before it.
        if let Some((&s, &e)) = runs.range(..=seq).next_back() {
            if e >= seq {
                return;
            }
            if e + 1 == seq {
                start = s;
            }
        }
        // The run just after it.
        if let Some(next) = seq.checked_add(1) {
            if let Some(e) = runs.remove(&next) {
                end = e;
            }
        }
        runs.insert(start, end);
    }

    /// Whether `seq` of `device` was inserted.
    pub fn contains(&self, device: &str, seq: u64) -> bool {
        self.devices
            .get(device)
            .and_then(|runs| runs.range(..=seq).next_back())
            .is_some_and(|(_, &e)| e >= seq)
    }

    /// Runs kept, over all devices (memory use).
    pub fn runs(&self) -> usize {
        self.devices.values().map(BTreeMap::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashSet;

    #[test]
    fn consecutive_sequence_numbers_are_kept_as_one_run() {
        let mut j = JournaledSeqs::default();
        for s in (10..5000).rev() {
            j.insert("a", s);
        }
        j.insert("a", 3);
        assert_eq!(j.runs(), 2);
        assert!(j.contains("a", 10) && j.contains("a", 4999) && j.contains("a", 3));
        assert!(!j.contains("a", 9) && !j.contains("a", 5000) && !j.contains("a", 4));
        assert!(!j.contains("b", 10));
    }

    #[test]
    fn a_gap_filled_joins_the_runs_on_both_sides() {
        let mut j = JournaledSeqs::default();
        j.insert("a", 1);
        j.insert("a", 3);
        assert_eq!(j.runs(), 2);
        j.insert("a", 2);
        assert_eq!(j.runs(), 1);
        j.insert("a", u64::MAX);
        j.insert("a", u64::MAX - 1);
        assert!(j.contains("a", u64::MAX) && !j.contains("a", u64::MAX - 2));
    }

    proptest! {
        #[test]
        fn contains_exactly_what_was_inserted(
            seqs in proptest::collection::vec((0u8..3, 0u64..200), 0..300),
            probes in proptest::collection::vec((0u8..3, 0u64..220), 0..100),
        ) {
            let mut j = JournaledSeqs::default();
            let mut model = HashSet::new();
            for (d, s) in &seqs {
                j.insert(&d.to_string(), *s);
                model.insert((d.to_string(), *s));
            }
            for (d, s) in seqs.iter().chain(&probes) {
                prop_assert_eq!(j.contains(&d.to_string(), *s), model.contains(&(d.to_string(), *s)));
            }
            // Runs never touch: each is separated from the next by a missing number.
            for runs in j.devices.values() {
                let v: Vec<_> = runs.iter().collect();
                for w in v.windows(2) {
                    prop_assert!(*w[0].1 + 1 < *w[1].0);
                }
            }
        }
    }
}
