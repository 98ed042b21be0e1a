//! One simulated sensor: identity, condition, sequence counter, clock skew and the fixed
//! buffer it encodes into — the state a sensor's firmware keeps.

use reflex_wire::{DeviceId, EventKind, SensorEvent, Window, FORMAT_VERSION, MAX_EVENT_BYTES};

use crate::rng::Rng;
use crate::signal::{self, Condition, Distortion, CHANNELS, COUNTS_PER_G, SAMPLE_RATE_HZ, WINDOW};

/// A simulated sensor device.
#[derive(Debug, Clone)]
pub struct SimDevice {
    id: DeviceId,
    condition: Condition,
    next_seq: u64,
    clock_skew_us: i64,
    deadline_hint_us: Option<u32>,
    rng: Rng,
    buf: [u8; MAX_EVENT_BYTES],
}

impl SimDevice {
    /// A device named `dev-{index}` on a machine in `condition`, seeded from `(seed, index)`.
    pub fn new(index: u32, condition: Condition, seed: u64) -> Self {
        let mut id = DeviceId::new();
        // "dev-" + at most 10 digits fits the 32-byte id.
        let _ = core::fmt::write(&mut id, format_args!("dev-{index:04}"));
        SimDevice {
            id,
            condition,
            next_seq: 1,
            clock_skew_us: 0,
            deadline_hint_us: None,
            rng: Rng::new(seed, u64::from(index)),
            buf: [0; MAX_EVENT_BYTES],
        }
    }

    /// The device id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The machine condition the device observes.
    pub fn condition(&self) -> Condition {
        self.condition
    }

    /// Offsets the device clock (a sensor whose RTC drifted).
    pub fn set_clock_skew_us(&mut self, skew: i64) {
        self.clock_skew_us = skew;
    }

    /// Asks the daemon for an answer within `hint` µs of arrival.
    pub fn set_deadline_hint_us(&mut self, hint: Option<u32>) {
        self.deadline_hint_us = hint;
    }

    /// Produces the next event at true time `now_us` (µs since the Unix epoch).
    pub fn next_event(&mut self, now_us: u64, distortion: Distortion) -> SensorEvent {
        let reading = signal::synthesize(self.condition, distortion, &mut self.rng);
        let mut samples = heapless::Vec::new();
        for axis in &reading.accel_g {
            for &g in axis {
                // CHANNELS * WINDOW <= MAX_SAMPLES, checked at compile time below.
                let _ = samples.push(signal::to_counts(g));
            }
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        SensorEvent {
            version: FORMAT_VERSION,
            device: self.id.clone(),
            seq,
            timestamp_us: now_us.saturating_add_signed(self.clock_skew_us),
            kind: EventKind::Periodic,
            window: Window {
                channels: CHANNELS as u8,
                samples_per_channel: WINDOW as u16,
                sample_rate_hz: SAMPLE_RATE_HZ,
                scale: 1.0 / COUNTS_PER_G,
                samples,
            },
            temperature_centi_c: (reading.temperature_c * 100.0).round() as i16,
            deadline_hint_us: self.deadline_hint_us,
        }
    }

    /// Produces and encodes the next event into the device's own buffer.
    pub fn next_encoded(&mut self, now_us: u64, distortion: Distortion) -> (u64, &[u8]) {
        let event = self.next_event(now_us, distortion);
        let len = event
            .encode(&mut self.buf)
            .map(|b| b.len())
            .expect("a simulated event is valid and fits MAX_EVENT_BYTES");
        (event.seq, &self.buf[..len])
    }
}

const _: () = assert!(CHANNELS * WINDOW <= reflex_wire::MAX_SAMPLES);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_numbers_start_at_one_and_increase_by_one() {
        let mut d = SimDevice::new(3, Condition::Healthy, 1);
        let seqs: Vec<u64> = (0..4)
            .map(|_| d.next_event(0, Distortion::NONE).seq)
            .collect();
        assert_eq!(seqs, [1, 2, 3, 4]);
        assert_eq!(d.id(), "dev-0003");
    }

    #[test]
    fn encoded_events_decode_to_what_was_generated() {
        let mut a = SimDevice::new(1, Condition::Imbalance, 5);
        let mut b = a.clone();
        let event = a.next_event(1_000, Distortion::NONE);
        let (_, bytes) = b.next_encoded(1_000, Distortion::NONE);
        assert_eq!(SensorEvent::decode(bytes).unwrap(), event);
    }

    #[test]
    fn clock_skew_shifts_the_timestamp() {
        let mut d = SimDevice::new(1, Condition::Healthy, 5);
        d.set_clock_skew_us(-500);
        assert_eq!(d.next_event(10_000, Distortion::NONE).timestamp_us, 9_500);
    }
}
