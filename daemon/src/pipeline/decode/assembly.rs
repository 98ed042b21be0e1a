//! Window assembly: sensors that send one reading (or a few) per message are served by a
//! per-device ring buffer that completes a window of the route model's shape every `hop`
//! readings. Pure: time is passed in (the readings' timestamps, µs), never read.
//!
//! # Contracts
//!
//! - **Window boundaries.** A device's buffer holds its last `samples` readings (the
//!   model's window length, asked per message so a reload that changes it starts the
//!   buffer again). Once it is full, every `hop`-th reading completes a window: the first
//!   window ends at reading `samples`, the next at `samples + hop`, … . A message that
//!   completes more than one window (several readings, small hop) scores only the newest.
//! - **Gaps.** A reading more than `max_gap_us` after the device's previous one, or
//!   before it (a clock that stepped back), empties the buffer first (counted as a gap
//!   reset): a window never spans a hole in the stream.
//! - **Staleness.** A completed window whose first reading is more than `max_age_us`
//!   older than its last is not scored (counted stale).
//! - **Duplicates.** With sensor sequence numbers, a reading numbered at or below the
//!   device's last one is a redelivery or reordering: dropped, counted, never buffered
//!   twice.
//! - **Memory.** At most `max_devices` devices are buffered, each at most `samples`
//!   readings of ≤ 8 channels (24 bytes each: a stamp and 8 counts); feeding a new device
//!   when full evicts the least recently fed one (counted). Total ≤ `max_devices ×
//!   samples × 24` bytes of samples and stamps (`samples` ≤ 1024, the model's window).
//! - The deadline of a completed window counts from the arrival of the message that
//!   completed it (the decode stage stamps the event with that arrival).

use std::collections::{BTreeMap, HashMap, VecDeque};

use reflex_wire::{DeviceId, MAX_CHANNELS, MAX_SAMPLES_PER_CHANNEL};

use crate::pipeline::types::WindowShape;

/// The assembly's limits, from a validated `[routes.input.assemble]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Readings between scored windows (None: the window length).
    pub hop: Option<usize>,
    /// Largest gap between readings before the buffer starts again, µs.
    pub max_gap_us: u64,
    /// Oldest first reading of a scored window, relative to its last, µs.
    pub max_age_us: u64,
    /// Most devices buffered.
    pub max_devices: usize,
}

impl Limits {
    /// The limits of a validated `[routes.input.assemble]`.
    pub fn of(a: &crate::config::AssembleConfig) -> Self {
        Limits {
            hop: a.hop,
            max_gap_us: (a.max_gap_ms * 1_000.0) as u64,
            max_age_us: (a.max_age_ms * 1_000.0) as u64,
            max_devices: a.max_devices.max(1),
        }
    }
}

/// What feeding one message did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fed {
    /// A window completed: `shape`, counts channel-major, oldest sample first.
    Window {
        /// Counts, `channels × samples`, channel-major.
        counts: Vec<i16>,
        /// Its shape (the model's).
        shape: WindowShape,
    },
    /// Buffered; no window completed.
    Pending,
    /// A window completed but is stale: not scored.
    Stale,
    /// The reading's sequence number is not above the device's last: dropped.
    Duplicate,
}

/// Running totals, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AssemblyCounters {
    /// Devices evicted to stay within `max_devices`.
    pub evictions: u64,
    /// Buffers started again after a gap.
    pub gap_resets: u64,
    /// Completed windows not scored because stale.
    pub stale: u64,
    /// Readings dropped as duplicates.
    pub duplicates: u64,
}

/// Why a message cannot be fed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AssemblyError {
    /// The message has another channel count than the model reads.
    #[error("reading of {found} channels does not fit the route's model, which reads {model}")]
    Channels {
        /// Channels in the message.
        found: usize,
        /// The model's shape.
        model: WindowShape,
    },
    /// The model's shape cannot be assembled (beyond the wire's window).
    #[error("the route's model reads {0}, beyond the wire's {MAX_CHANNELS} × {MAX_SAMPLES_PER_CHANNEL} window")]
    Model(WindowShape),
}

impl AssemblyError {
    /// The `reason` label of `reflexd_bad_input_total`.
    pub fn reason(&self) -> &'static str {
        "shape_mismatch"
    }
}

#[derive(Debug)]
struct Buffer {
    shape: WindowShape,
    /// (timestamp µs, one count per channel), oldest first, at most `shape.samples`.
    ring: VecDeque<(u64, [i16; MAX_CHANNELS])>,
    /// Readings since the last completed window (or since the buffer started).
    since: usize,
    /// Whether a window completed since the buffer started.
    emitted: bool,
    last_seq: Option<u64>,
    /// Key in the recency index.
    tick: u64,
}

impl Buffer {
    fn new(shape: WindowShape, tick: u64) -> Self {
        Buffer {
            shape,
            ring: VecDeque::with_capacity(shape.samples),
            since: 0,
            emitted: false,
            last_seq: None,
            tick,
        }
    }

    fn restart(&mut self) {
        self.ring.clear();
        self.since = 0;
        self.emitted = false;
    }
}

/// Per-device ring buffers of one route.
#[derive(Debug)]
pub struct Assembler {
    limits: Limits,
    devices: HashMap<DeviceId, Buffer>,
    /// Recency index: tick → device, oldest first.
    recency: BTreeMap<u64, DeviceId>,
    tick: u64,
    /// Running totals.
    pub counters: AssemblyCounters,
}

impl Assembler {
    /// An empty assembler.
    pub fn new(limits: Limits) -> Self {
        Assembler {
            limits,
            devices: HashMap::new(),
            recency: BTreeMap::new(),
            tick: 0,
            counters: AssemblyCounters::default(),
        }
    }

    /// Devices buffered now.
    pub fn devices(&self) -> usize {
        self.devices.len()
    }

    /// Drops `device`'s buffer (its source said it is gone); whether it had one.
    pub fn forget(&mut self, device: &str) -> bool {
        match self.devices.remove(device) {
            Some(b) => {
                self.recency.remove(&b.tick);
                true
            }
            None => false,
        }
    }

    /// Readings buffered for `device`.
    pub fn buffered(&self, device: &str) -> usize {
        self.devices.get(device).map_or(0, |b| b.ring.len())
    }

    /// Feeds one message of `device`: `samples` readings of `channels` channels
    /// (`counts` channel-major), all stamped `ts_us`, numbered `seq` if the sensor
    /// numbers them, for a model reading `model`.
    pub fn feed(
        &mut self,
        device: &DeviceId,
        seq: Option<u64>,
        ts_us: u64,
        channels: usize,
        counts: &[i16],
        model: WindowShape,
    ) -> Result<Fed, AssemblyError> {
        if model.channels == 0
            || model.channels > MAX_CHANNELS
            || model.samples == 0
            || model.samples > MAX_SAMPLES_PER_CHANNEL
        {
            return Err(AssemblyError::Model(model));
        }
        if channels != model.channels {
            return Err(AssemblyError::Channels {
                found: channels,
                model,
            });
        }
        let samples = counts.len() / channels.max(1);
        self.tick += 1;
        let tick = self.tick;
        if !self.devices.contains_key(device) {
            if self.devices.len() >= self.limits.max_devices {
                if let Some((_, oldest)) = self.recency.pop_first() {
                    self.devices.remove(&oldest);
                    self.counters.evictions += 1;
                }
            }
            self.devices
                .insert(device.clone(), Buffer::new(model, tick));
        } else if let Some(b) = self.devices.get(device) {
            self.recency.remove(&b.tick);
        }
        self.recency.insert(tick, device.clone());
        let limits = self.limits;
        let counters = &mut self.counters;
        let b = self
            .devices
            .get_mut(device)
            .expect("inserted above if absent");
        b.tick = tick;
        if let (Some(s), Some(last)) = (seq, b.last_seq) {
            if s <= last {
                counters.duplicates += 1;
                return Ok(Fed::Duplicate);
            }
        }
        if seq.is_some() {
            b.last_seq = seq;
        }
        if b.shape != model {
            b.shape = model;
            b.restart();
        }
        if let Some(&(last_ts, _)) = b.ring.back() {
            if ts_us < last_ts || ts_us - last_ts > limits.max_gap_us {
                counters.gap_resets += 1;
                b.restart();
            }
        }
        let hop = limits.hop.unwrap_or(model.samples).max(1);
        let mut completed = false;
        for i in 0..samples {
            let mut row = [0i16; MAX_CHANNELS];
            for (c, slot) in row.iter_mut().enumerate().take(channels) {
                *slot = counts[c * samples + i];
            }
            if b.ring.len() == model.samples {
                b.ring.pop_front();
            }
            b.ring.push_back((ts_us, row));
            b.since += 1;
            if b.ring.len() == model.samples && (!b.emitted || b.since >= hop) {
                // The first window is due once full; each later one `hop` readings on.
                if !b.emitted && b.since < model.samples {
                    continue;
                }
                b.emitted = true;
                b.since = 0;
                completed = true;
            }
        }
        if !completed {
            return Ok(Fed::Pending);
        }
        let first_ts = b.ring.front().map_or(ts_us, |r| r.0);
        if ts_us.saturating_sub(first_ts) > limits.max_age_us {
            counters.stale += 1;
            return Ok(Fed::Stale);
        }
        let mut out = vec![0i16; model.len()];
        for (i, (_, row)) in b.ring.iter().enumerate() {
            for (c, &v) in row.iter().enumerate().take(model.channels) {
                out[c * model.samples + i] = v;
            }
        }
        Ok(Fed::Window {
            counts: out,
            shape: model,
        })
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const ONE_BY_FOUR: WindowShape = WindowShape::new(1, 4);

    fn limits(hop: Option<usize>, max_devices: usize) -> Limits {
        Limits {
            hop,
            max_gap_us: 1_000,
            max_age_us: 1_000_000,
            max_devices,
        }
    }

    fn dev(name: &str) -> DeviceId {
        DeviceId::try_from(name).unwrap()
    }

    /// Feeds scalar readings 1, 2, 3, … of one channel, 100 µs apart.
    fn feed_scalars(a: &mut Assembler, d: &DeviceId, from: i16, n: i16) -> Vec<Fed> {
        (from..from + n)
            .map(|v| {
                a.feed(d, None, v as u64 * 100, 1, &[v], ONE_BY_FOUR)
                    .unwrap()
            })
            .collect()
    }

    fn windows(fed: &[Fed]) -> Vec<Vec<i16>> {
        fed.iter()
            .filter_map(|f| match f {
                Fed::Window { counts, .. } => Some(counts.clone()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_window_completes_at_the_models_length_then_every_hop() {
        let mut a = Assembler::new(limits(Some(2), 8));
        let fed = feed_scalars(&mut a, &dev("d"), 1, 9);
        assert_eq!(
            windows(&fed),
            [vec![1, 2, 3, 4], vec![3, 4, 5, 6], vec![5, 6, 7, 8]]
        );
        assert_eq!(fed[0..3], [Fed::Pending, Fed::Pending, Fed::Pending]);
        assert_eq!(fed[8], Fed::Pending);
    }

    #[test]
    fn without_a_hop_windows_do_not_overlap() {
        let mut a = Assembler::new(limits(None, 8));
        let fed = feed_scalars(&mut a, &dev("d"), 1, 8);
        assert_eq!(windows(&fed), [vec![1, 2, 3, 4], vec![5, 6, 7, 8]]);
    }

    #[test]
    fn a_gap_longer_than_allowed_starts_the_window_again() {
        let mut a = Assembler::new(limits(Some(1), 8));
        let d = dev("d");
        for v in 1..=3 {
            a.feed(&d, None, v * 100, 1, &[v as i16], ONE_BY_FOUR)
                .unwrap();
        }
        // 2 ms later: more than max_gap (1 ms).
        let fed = a.feed(&d, None, 2_300, 1, &[4], ONE_BY_FOUR).unwrap();
        assert_eq!(fed, Fed::Pending);
        assert_eq!(a.counters.gap_resets, 1);
        assert_eq!(a.buffered("d"), 1);
        let fed = feed_scalars(&mut a, &d, 23, 3);
        assert_eq!(windows(&fed), [vec![4, 23, 24, 25]]);
    }

    #[test]
    fn a_clock_that_steps_back_starts_the_window_again() {
        let mut a = Assembler::new(limits(Some(1), 8));
        let d = dev("d");
        feed_scalars(&mut a, &d, 10, 3);
        a.feed(&d, None, 5, 1, &[1], ONE_BY_FOUR).unwrap();
        assert_eq!(a.counters.gap_resets, 1);
        assert_eq!(a.buffered("d"), 1);
    }

    #[test]
    fn a_window_older_than_allowed_is_not_scored() {
        let mut a = Assembler::new(Limits {
            hop: None,
            max_gap_us: 1_000,
            max_age_us: 250,
            max_devices: 8,
        });
        let fed = feed_scalars(&mut a, &dev("d"), 1, 4);
        assert_eq!(fed[3], Fed::Stale);
        assert_eq!(a.counters.stale, 1);
    }

    #[test]
    fn a_reading_numbered_at_or_below_the_last_is_dropped() {
        let mut a = Assembler::new(limits(None, 8));
        let d = dev("d");
        a.feed(&d, Some(5), 100, 1, &[1], ONE_BY_FOUR).unwrap();
        assert_eq!(
            a.feed(&d, Some(5), 200, 1, &[1], ONE_BY_FOUR).unwrap(),
            Fed::Duplicate
        );
        assert_eq!(
            a.feed(&d, Some(4), 200, 1, &[1], ONE_BY_FOUR).unwrap(),
            Fed::Duplicate
        );
        assert_eq!(a.counters.duplicates, 2);
        assert_eq!(a.buffered("d"), 1);
    }

    #[test]
    fn the_least_recently_fed_device_is_evicted_when_full() {
        let mut a = Assembler::new(limits(None, 2));
        let (x, y, z) = (dev("x"), dev("y"), dev("z"));
        a.feed(&x, None, 100, 1, &[1], ONE_BY_FOUR).unwrap();
        a.feed(&y, None, 100, 1, &[1], ONE_BY_FOUR).unwrap();
        a.feed(&x, None, 200, 1, &[2], ONE_BY_FOUR).unwrap();
        a.feed(&z, None, 100, 1, &[1], ONE_BY_FOUR).unwrap();
        assert_eq!(a.counters.evictions, 1);
        assert_eq!(
            (a.buffered("x"), a.buffered("y"), a.buffered("z")),
            (2, 0, 1)
        );
    }

    #[test]
    fn several_readings_in_one_message_are_buffered_in_order_per_channel() {
        let mut a = Assembler::new(limits(None, 8));
        let shape = WindowShape::new(2, 4);
        let d = dev("d");
        // Two readings of two channels, channel-major: ch0 = [1, 2], ch1 = [10, 20].
        assert_eq!(
            a.feed(&d, None, 100, 2, &[1, 2, 10, 20], shape),
            Ok(Fed::Pending)
        );
        let fed = a.feed(&d, None, 200, 2, &[3, 4, 30, 40], shape).unwrap();
        assert_eq!(
            fed,
            Fed::Window {
                counts: vec![1, 2, 3, 4, 10, 20, 30, 40],
                shape
            }
        );
    }

    #[test]
    fn a_reading_with_another_channel_count_than_the_model_is_refused() {
        let mut a = Assembler::new(limits(None, 8));
        let e = a
            .feed(&dev("d"), None, 1, 2, &[1, 2], ONE_BY_FOUR)
            .unwrap_err();
        assert_eq!(e.reason(), "shape_mismatch");
        assert_eq!(
            e.to_string(),
            "reading of 2 channels does not fit the route's model, which reads 1 × 4"
        );
        assert_eq!(a.devices(), 0);
    }

    #[test]
    fn a_model_reload_that_changes_the_window_length_starts_buffers_again() {
        let mut a = Assembler::new(limits(None, 8));
        let d = dev("d");
        feed_scalars(&mut a, &d, 1, 3);
        let fed = a
            .feed(&d, None, 400, 1, &[4], WindowShape::new(1, 2))
            .unwrap();
        assert_eq!(fed, Fed::Pending);
        assert_eq!(a.buffered("d"), 1);
    }

    proptest! {
        /// Windows complete exactly at readings n, n + hop, n + 2·hop, …, each holding
        /// the last n readings, whatever the hop and window length.
        #[test]
        fn windows_end_every_hop_after_the_first_and_hold_the_last_readings(
            n in 1usize..=64, hop in 1usize..=64, total in 0usize..300,
        ) {
            let shape = WindowShape::new(1, n);
            let mut a = Assembler::new(limits(Some(hop), 4));
            let d = dev("d");
            for k in 1..=total {
                let fed = a.feed(&d, None, k as u64, 1, &[k as i16], shape).unwrap();
                let due = k >= n && (k - n) % hop == 0;
                match fed {
                    Fed::Window { counts, .. } => {
                        prop_assert!(due, "window at reading {}", k);
                        let expected: Vec<i16> = ((k + 1 - n)..=k).map(|v| v as i16).collect();
                        prop_assert_eq!(counts, expected);
                    }
                    other => {
                        prop_assert!(!due, "no window at reading {}", k);
                        prop_assert_eq!(other, Fed::Pending);
                    }
                }
            }
        }

        /// Memory stays bounded: never more than max_devices devices, never more than
        /// the window length per device; every device beyond the bound is an eviction.
        #[test]
        fn buffers_stay_within_their_bounds(
            max_devices in 1usize..8,
            feeds in proptest::collection::vec((0u8..16, 0u64..3_000), 0..300),
        ) {
            let shape = WindowShape::new(2, 8);
            let mut a = Assembler::new(limits(Some(3), max_devices));
            let mut ts = 0;
            let mut distinct = std::collections::HashSet::new();
            for (device, step) in feeds {
                ts += step;
                let d = dev(&format!("d{device}"));
                distinct.insert(device);
                a.feed(&d, None, ts, 2, &[1, 2], shape).unwrap();
                prop_assert!(a.devices() <= max_devices);
                prop_assert!(a.buffered(&d) <= shape.samples);
                prop_assert!(a.buffered(&d) >= 1);
            }
            prop_assert!(a.counters.evictions as usize >= distinct.len().saturating_sub(max_devices));
        }

        /// A gap beyond the limit always empties the buffer: no window spans it.
        #[test]
        fn no_window_spans_a_gap(gaps in proptest::collection::vec(0u64..2_000, 1..200)) {
            let shape = WindowShape::new(1, 5);
            let mut a = Assembler::new(limits(Some(1), 2));
            let d = dev("d");
            let mut ts = 0u64;
            let mut stamps: Vec<u64> = Vec::new();
            for (k, gap) in gaps.iter().enumerate() {
                ts += gap;
                stamps.push(ts);
                if let Fed::Window { .. } = a.feed(&d, None, ts, 1, &[k as i16], shape).unwrap() {
                    let last = &stamps[stamps.len() - 5..];
                    prop_assert!(last.windows(2).all(|w| w[1] - w[0] <= 1_000), "{:?}", last);
                }
            }
        }
    }
}
