//! One simulated sensor: identity, condition, sequence counter, clock skew, window shape and
//! the fixed buffer it encodes into — the state a sensor's firmware keeps.
//!
//! A device sends 3 axes × 64 samples by default ([`CHANNELS`] × [`WINDOW`]), as format
//! version 1. [`SimDevice::set_window`] gives it another shape, up to the wire's
//! 8 channels × 1024 samples; the event is encoded as version 1 while the window fits
//! version 1 and as version 2 beyond ([`reflex_wire::event_version_for`]). A larger window
//! is made of consecutive synthesised 3 × 64 blocks of the device's condition: channel `c`
//! is axis `c % 3` of block group `c / 3`, and samples `64 k..64 (k + 1)` come from the
//! `k`-th block (so a long window has a phase jump every 64 samples: realistic enough for
//! the wire, the daemon's limits and its load, not for training a model on long windows).

use reflex_wire::{
    event_version_for, DecodeError, DeviceId, EventKind, EventLimits, SensorEvent, Window,
    EVENT_FORMAT_V1, MAX_CHANNELS, MAX_SAMPLES_PER_CHANNEL, V1_LIMITS, V2_LIMITS,
};

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
    channels: usize,
    samples: usize,
    version: u8,
    buf: Vec<u8>,
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
            channels: CHANNELS,
            samples: WINDOW,
            version: EVENT_FORMAT_V1,
            buf: vec![0; V1_LIMITS.max_event_bytes],
        }
    }

    /// Sends windows of `channels` × `samples` (per channel) from now on; refuses a shape
    /// beyond the wire's limits (1..=8 channels, 1..=1024 samples), naming it.
    pub fn set_window(&mut self, channels: usize, samples: usize) -> Result<(), DecodeError> {
        let Some(version) = event_version_for(channels, samples) else {
            if !(1..=MAX_CHANNELS).contains(&channels) {
                return Err(DecodeError::BadChannelCount {
                    found: channels,
                    max: MAX_CHANNELS,
                });
            }
            return Err(DecodeError::BadSamplesPerChannel {
                found: samples,
                max: MAX_SAMPLES_PER_CHANNEL,
            });
        };
        let limits = EventLimits::of(version).unwrap_or(V2_LIMITS);
        self.channels = channels;
        self.samples = samples;
        self.version = version;
        self.buf = vec![0; limits.max_event_bytes];
        Ok(())
    }

    /// The window shape the device sends: (channels, samples per channel).
    pub fn window(&self) -> (usize, usize) {
        (self.channels, self.samples)
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
        // One 3 × 64 reading per block of 64 samples and group of 3 channels: the default
        // shape draws exactly one, as it always did.
        let (blocks, groups) = (
            self.samples.div_ceil(WINDOW),
            self.channels.div_ceil(CHANNELS),
        );
        let readings: Vec<signal::Reading> = (0..blocks * groups)
            .map(|_| signal::synthesize(self.condition, distortion, &mut self.rng))
            .collect();
        let mut samples = heapless::Vec::new();
        for c in 0..self.channels {
            for i in 0..self.samples {
                let reading = &readings[(i / WINDOW) * groups + c / CHANNELS];
                // channels × samples <= MAX_SAMPLES: set_window checked the shape.
                let _ = samples.push(signal::to_counts(reading.accel_g[c % CHANNELS][i % WINDOW]));
            }
        }
        let temperature_c = readings[0].temperature_c;
        let seq = self.next_seq;
        self.next_seq += 1;
        SensorEvent {
            version: self.version,
            device: self.id.clone(),
            seq,
            timestamp_us: now_us.saturating_add_signed(self.clock_skew_us),
            kind: EventKind::Periodic,
            window: Window {
                channels: self.channels as u8,
                samples_per_channel: self.samples as u16,
                sample_rate_hz: SAMPLE_RATE_HZ,
                scale: 1.0 / COUNTS_PER_G,
                samples,
            },
            temperature_centi_c: (temperature_c * 100.0).round() as i16,
            deadline_hint_us: self.deadline_hint_us,
        }
    }

    /// Produces and encodes the next event into the device's own buffer.
    pub fn next_encoded(&mut self, now_us: u64, distortion: Distortion) -> (u64, &[u8]) {
        let event = self.next_event(now_us, distortion);
        let len = event
            .encode(&mut self.buf)
            .map(|b| b.len())
            .expect("a simulated event is valid and fits its version's size limit");
        (event.seq, &self.buf[..len])
    }
}

const _: () = assert!(CHANNELS * WINDOW <= V1_LIMITS.max_samples());

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
    fn the_default_window_is_3_by_64_sent_as_version_1() {
        let mut d = SimDevice::new(1, Condition::Healthy, 5);
        assert_eq!(d.window(), (CHANNELS, WINDOW));
        let (_, bytes) = d.next_encoded(1_000, Distortion::NONE);
        assert_eq!(bytes[0], EVENT_FORMAT_V1);
        let ev = SensorEvent::decode(bytes).unwrap();
        assert_eq!((ev.window.channels, ev.window.samples_per_channel), (3, 64));
    }

    #[test]
    fn a_window_beyond_version_1_is_sent_as_version_2() {
        for (c, n, version) in [(3, 1024, 2), (8, 1024, 2), (5, 8, 2), (4, 64, 1), (1, 1, 1)] {
            let mut a = SimDevice::new(2, Condition::BearingFault, 9);
            a.set_window(c, n).unwrap();
            let mut b = a.clone();
            let event = a.next_event(1_000, Distortion::NONE);
            let (_, bytes) = b.next_encoded(1_000, Distortion::NONE);
            assert_eq!(bytes[0], version, "{c} × {n}");
            let decoded = SensorEvent::decode(bytes).unwrap();
            assert_eq!(decoded, event);
            assert_eq!(
                (decoded.window.channels, decoded.window.samples_per_channel),
                (c as u8, n as u16)
            );
            assert!(decoded.window.samples.iter().any(|&s| s != 0), "{c} × {n}");
        }
    }

    #[test]
    fn a_window_beyond_the_wire_is_refused_by_name() {
        let mut d = SimDevice::new(1, Condition::Healthy, 5);
        assert_eq!(
            d.set_window(9, 64),
            Err(DecodeError::BadChannelCount { found: 9, max: 8 })
        );
        assert_eq!(
            d.set_window(3, 1025),
            Err(DecodeError::BadSamplesPerChannel {
                found: 1025,
                max: 1024
            })
        );
        assert_eq!(d.window(), (CHANNELS, WINDOW));
    }

    #[test]
    fn clock_skew_shifts_the_timestamp() {
        let mut d = SimDevice::new(1, Condition::Healthy, 5);
        d.set_clock_skew_us(-500);
        assert_eq!(d.next_event(10_000, Distortion::NONE).timestamp_us, 9_500);
    }
}
