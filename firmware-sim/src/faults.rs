//! Fault injection: what a real fleet sends besides clean events.
//!
//! Per event, with configured probabilities: a malformed payload (truncated, wrong version,
//! trailing garbage or empty — each guaranteed undecodable), an oversized payload, a
//! duplicate (the same bytes again, as a QoS 1 redelivery produces), and out-of-order
//! delivery (the event is held back and sent after its successor). Clock skew is a
//! per-device setting on [`crate::device::SimDevice`].

use reflex_wire::{EVENT_FORMAT_VERSION, MAX_EVENT_BYTES};

use crate::rng::Rng;

/// Probabilities per event, each in [0, 1].
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct FaultRates {
    /// A malformed payload is sent besides the event.
    pub malformed: f64,
    /// An oversized payload is sent besides the event.
    pub oversized: f64,
    /// The event is sent twice.
    pub duplicate: f64,
    /// The event is held back and sent after the next one.
    pub reorder: f64,
}

/// One message to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outgoing {
    /// A valid event: it must get exactly one command.
    Event {
        /// Its sequence number.
        seq: u64,
        /// Encoded bytes.
        bytes: Vec<u8>,
    },
    /// A second copy of an event already sent: it must not get a second command.
    Duplicate {
        /// Its sequence number.
        seq: u64,
        /// Encoded bytes.
        bytes: Vec<u8>,
    },
    /// Undecodable: it must be refused and counted.
    Malformed(Vec<u8>),
    /// Larger than [`MAX_EVENT_BYTES`] (the limit of every event version): it must be
    /// refused and counted.
    Oversized(Vec<u8>),
}

/// Per-device fault state: the event held back for reordering.
#[derive(Debug, Clone)]
pub struct FaultInjector {
    rates: FaultRates,
    rng: Rng,
    held: Option<(u64, Vec<u8>)>,
}

impl FaultInjector {
    /// An injector for one device.
    pub fn new(rates: FaultRates, seed: u64, device_index: u32) -> Self {
        FaultInjector {
            rates,
            rng: Rng::new(seed ^ 0xFA17, u64::from(device_index)),
            held: None,
        }
    }

    /// What to publish for a fresh event `(seq, bytes)`, in order.
    pub fn process(&mut self, seq: u64, bytes: &[u8]) -> Vec<Outgoing> {
        let mut out = Vec::with_capacity(3);
        if self.rng.chance(self.rates.malformed) {
            out.push(Outgoing::Malformed(self.malformed(bytes)));
        }
        if self.rng.chance(self.rates.oversized) {
            let extra = 1 + (self.rng.next_u32() % 4096) as usize;
            let mut big = Vec::with_capacity(MAX_EVENT_BYTES + extra);
            big.extend_from_slice(bytes);
            big.resize(MAX_EVENT_BYTES + extra, 0xAB);
            out.push(Outgoing::Oversized(big));
        }
        let duplicate = self.rng.chance(self.rates.duplicate);
        match self.held.take() {
            Some((held_seq, held_bytes)) => {
                out.push(Outgoing::Event {
                    seq,
                    bytes: bytes.to_vec(),
                });
                out.push(Outgoing::Event {
                    seq: held_seq,
                    bytes: held_bytes,
                });
            }
            None if self.rng.chance(self.rates.reorder) => {
                self.held = Some((seq, bytes.to_vec()));
            }
            None => out.push(Outgoing::Event {
                seq,
                bytes: bytes.to_vec(),
            }),
        }
        if duplicate && self.held.as_ref().is_none_or(|(s, _)| *s != seq) {
            out.push(Outgoing::Duplicate {
                seq,
                bytes: bytes.to_vec(),
            });
        }
        out
    }

    /// The event still held back at the end of a run, if any.
    pub fn flush(&mut self) -> Option<Outgoing> {
        self.held
            .take()
            .map(|(seq, bytes)| Outgoing::Event { seq, bytes })
    }

    fn malformed(&mut self, bytes: &[u8]) -> Vec<u8> {
        match self.rng.next_u32() % 4 {
            // A strict prefix of a valid event is always truncated.
            0 => bytes[..(self.rng.next_u32() as usize % bytes.len().max(1))].to_vec(),
            1 => {
                let mut b = bytes.to_vec();
                // Above the newest version this build knows: no decoder reads it.
                b[0] = EVENT_FORMAT_VERSION.wrapping_add(1 + (self.rng.next_u32() % 200) as u8);
                b
            }
            2 => {
                let mut b = bytes.to_vec();
                b.extend_from_slice(b"\x00garbage");
                b
            }
            _ => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::SimDevice;
    use crate::signal::{Condition, Distortion};
    use reflex_wire::{DecodeError, SensorEvent};

    fn run(rates: FaultRates, n: u64) -> Vec<Outgoing> {
        let mut dev = SimDevice::new(0, Condition::Healthy, 11);
        let mut inj = FaultInjector::new(rates, 11, 0);
        let mut out = Vec::new();
        for t in 0..n {
            let (seq, bytes) = dev.next_encoded(t, Distortion::NONE);
            let bytes = bytes.to_vec();
            out.extend(inj.process(seq, &bytes));
        }
        out.extend(inj.flush());
        out
    }

    #[test]
    fn every_event_is_sent_once_as_an_event_whatever_the_faults() {
        let rates = FaultRates {
            malformed: 0.3,
            oversized: 0.3,
            duplicate: 0.3,
            reorder: 0.3,
        };
        let out = run(rates, 500);
        let mut seqs: Vec<u64> = out
            .iter()
            .filter_map(|o| match o {
                Outgoing::Event { seq, .. } => Some(*seq),
                _ => None,
            })
            .collect();
        let in_order = seqs.windows(2).all(|w| w[0] < w[1]);
        assert!(!in_order, "reorder at 30% must reorder something");
        seqs.sort_unstable();
        assert_eq!(seqs, (1..=500).collect::<Vec<_>>());
    }

    #[test]
    fn injected_faults_decode_as_their_kind() {
        let rates = FaultRates {
            malformed: 0.5,
            oversized: 0.5,
            duplicate: 0.5,
            reorder: 0.2,
        };
        let out = run(rates, 300);
        let (mut bad, mut big, mut dup) = (0, 0, 0);
        for o in &out {
            match o {
                Outgoing::Event { seq, bytes } | Outgoing::Duplicate { seq, bytes } => {
                    assert_eq!(SensorEvent::decode(bytes).unwrap().seq, *seq);
                    dup += matches!(o, Outgoing::Duplicate { .. }) as u32;
                }
                Outgoing::Malformed(b) => {
                    bad += 1;
                    assert!(SensorEvent::decode(b).is_err(), "malformed payload decoded");
                }
                Outgoing::Oversized(b) => {
                    big += 1;
                    assert!(matches!(
                        SensorEvent::decode(b),
                        Err(DecodeError::Oversized { .. })
                    ));
                }
            }
        }
        assert!(
            bad > 100 && big > 100 && dup > 100,
            "bad {bad} big {big} dup {dup}"
        );
    }

    #[test]
    fn no_faults_means_clean_ordered_events() {
        let out = run(FaultRates::default(), 50);
        assert_eq!(out.len(), 50);
        assert!(out.iter().all(|o| matches!(o, Outgoing::Event { .. })));
    }
}
