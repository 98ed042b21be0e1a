//! Scalar-stream sensors: one reading (3 axes + temperature) per message, for a reflexd
//! route that assembles windows (`[routes.input] kind = "json"` with
//! `[routes.input.assemble]`).
//!
//! The readings are the samples of the same windows the window devices send
//! ([`crate::signal::synthesize`], drawn through the device's [`SimDevice`]), published in
//! order, one per message: readings `64·j … 64·j + 63` of a device are window `j` of its
//! window twin. A window reflexd assembles at a reading that ends a drawn window is that
//! window exactly; with a hop that is not a multiple of 64, the others join the end of one
//! drawn window to the start of the next (same machine, same condition, a fresh shaft
//! phase and speed at the join).
//!
//! Which readings get an answer ([`StreamPlan`]): reflexd completes a window at a
//! device's reading `k` (0-based, from an empty buffer, no gap) iff `k + 1 >= window` and
//! `(k + 1 - window) % hop == 0` (`daemon/src/pipeline/decode/assembly.rs`), and stamps the
//! assembled event with that reading's number `n`. The others are acknowledged and never
//! answered.
//!
//! Pure: time is passed in.

use reflex_wire::SensorEvent;

use crate::device::SimDevice;
use crate::signal::{Distortion, CHANNELS, WINDOW};

/// Which readings of a device complete a window, for a route assembling windows of
/// `window` readings every `hop` readings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamPlan {
    window: u64,
    hop: u64,
}

/// Why a plan cannot be made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// The window length is 0 or beyond the wire's samples per channel.
    #[error("window of {0} readings is outside 1..={max}", max = reflex_wire::MAX_SAMPLES_PER_CHANNEL)]
    Window(usize),
    /// The hop is 0 or beyond the wire's samples per channel (reflexd's
    /// `[routes.input.assemble] hop` range).
    #[error("hop of {0} readings is outside 1..={max}", max = reflex_wire::MAX_SAMPLES_PER_CHANNEL)]
    Hop(usize),
}

impl StreamPlan {
    /// A plan for windows of `window` readings scored every `hop` readings (reflexd's
    /// `hop`; absent there means `hop = window`).
    pub fn new(window: usize, hop: usize) -> Result<StreamPlan, PlanError> {
        if !(1..=reflex_wire::MAX_SAMPLES_PER_CHANNEL).contains(&window) {
            return Err(PlanError::Window(window));
        }
        if !(1..=reflex_wire::MAX_SAMPLES_PER_CHANNEL).contains(&hop) {
            return Err(PlanError::Hop(hop));
        }
        Ok(StreamPlan {
            window: window as u64,
            hop: hop as u64,
        })
    }

    /// The edge model's window (3 × 64), scored every `hop` readings.
    pub fn edge(hop: usize) -> Result<StreamPlan, PlanError> {
        StreamPlan::new(WINDOW, hop)
    }

    /// Readings per window.
    pub fn window(&self) -> usize {
        self.window as usize
    }

    /// Readings between two windows.
    pub fn hop(&self) -> usize {
        self.hop as usize
    }

    /// Whether reading `k` (0-based) of a device completes a window.
    pub fn completes(&self, k: u64) -> bool {
        let n = k + 1;
        n >= self.window && (n - self.window).is_multiple_of(self.hop)
    }

    /// Windows completed by a device's first `readings` readings.
    pub fn windows_in(&self, readings: u64) -> u64 {
        if readings < self.window {
            0
        } else {
            (readings - self.window) / self.hop + 1
        }
    }
}

/// One reading: the message a scalar-stream sensor publishes.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamReading {
    /// The device's reading number, from 1 (reading `k` is numbered `k + 1`).
    pub n: u64,
    /// The device clock's time, µs since the Unix epoch (clock skew included).
    pub timestamp_us: u64,
    /// x, y, z in g: whole ADC counts times the count's size, so that a route with
    /// `resolution` = 1 / [`crate::signal::COUNTS_PER_G`] reads back the exact counts.
    pub accel_g: [f64; CHANNELS],
    /// Machine temperature, °C (constant over a drawn window).
    pub temperature_c: f64,
}

/// A scalar-stream device's state beside its [`SimDevice`]: the drawn window it is
/// reading out and its reading counter.
#[derive(Debug, Clone, Default)]
pub struct StreamState {
    window: Option<SensorEvent>,
    /// Device clock minus true time, µs, as the window was drawn.
    skew_us: i64,
    next: usize,
    readings: u64,
}

impl StreamState {
    /// A device that has sent nothing yet.
    pub fn new() -> StreamState {
        StreamState::default()
    }

    /// Readings produced so far; the next one is reading `k` = this.
    pub fn readings(&self) -> u64 {
        self.readings
    }

    /// The next reading of `device` at true time `now_us`; a new window is drawn from
    /// `device` (with `distortion`) when the last one has been read out.
    pub fn next_reading(
        &mut self,
        device: &mut SimDevice,
        now_us: u64,
        distortion: Distortion,
    ) -> StreamReading {
        let window = match &mut self.window {
            Some(w) if self.next < w.window.samples_per_channel as usize => w,
            slot => {
                let event = device.next_event(now_us, distortion);
                self.skew_us = event.timestamp_us as i64 - now_us as i64;
                self.next = 0;
                slot.insert(event)
            }
        };
        let i = self.next;
        let scale = f64::from(window.window.scale);
        let accel_g = core::array::from_fn(|c| f64::from(window.window.channel(c)[i]) * scale);
        let temperature_c = f64::from(window.temperature_centi_c) / 100.0;
        self.next += 1;
        self.readings += 1;
        StreamReading {
            n: self.readings,
            timestamp_us: now_us.saturating_add_signed(self.skew_us),
            accel_g,
            temperature_c,
        }
    }
}

/// `reading` of `device` as the sensor publishes it: `{"id", "n", "ts" (ms), "ax", "ay",
/// "az" (g), "temp" (°C)}`. Read by a JSON adapter with `seq = "/n"`, `timestamp =
/// "/ts"`, `channels = ["/ax", "/ay", "/az"]`, `temperature = "/temp"` and `resolution` =
/// 1 / [`crate::signal::COUNTS_PER_G`].
pub fn scalar_json(device: &str, reading: &StreamReading) -> Vec<u8> {
    let [ax, ay, az] = reading.accel_g;
    serde_json::to_vec(&serde_json::json!({
        "id": device,
        "n": reading.n,
        "ts": reading.timestamp_us / 1_000,
        "ax": ax,
        "ay": ay,
        "az": az,
        "temp": reading.temperature_c,
    }))
    .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::signal::{Condition, COUNTS_PER_G};

    #[test]
    fn the_first_window_ends_at_reading_64_then_one_every_hop() {
        let plan = StreamPlan::edge(16).unwrap();
        let ending: Vec<u64> = (0..200).filter(|&k| plan.completes(k)).collect();
        assert_eq!(ending, [63, 79, 95, 111, 127, 143, 159, 175, 191]);
        assert_eq!(plan.windows_in(200), 9);
        assert_eq!(plan.windows_in(63), 0);
        assert_eq!(plan.windows_in(64), 1);
    }

    #[test]
    fn with_hop_1_every_reading_after_the_first_63_completes_a_window() {
        let plan = StreamPlan::edge(1).unwrap();
        assert!((0..63).all(|k| !plan.completes(k)));
        assert!((63..1000).all(|k| plan.completes(k)));
        assert_eq!(plan.windows_in(1000), 1000 - 63);
    }

    #[test]
    fn a_plan_outside_the_assemblers_ranges_is_refused() {
        assert_eq!(StreamPlan::new(0, 1), Err(PlanError::Window(0)));
        let max = reflex_wire::MAX_SAMPLES_PER_CHANNEL;
        assert_eq!(StreamPlan::new(max + 1, 1), Err(PlanError::Window(max + 1)));
        assert_eq!(StreamPlan::new(64, 0), Err(PlanError::Hop(0)));
        assert_eq!(
            StreamPlan::new(64, max + 1).unwrap_err().to_string(),
            format!("hop of {} readings is outside 1..={max}", max + 1)
        );
    }

    #[test]
    fn readings_are_the_window_devices_samples_in_order() {
        let mut twin = SimDevice::new(2, Condition::BearingFault, 9);
        let mut device = twin.clone();
        let mut state = StreamState::new();
        for j in 0..3u64 {
            let window = twin.next_event(5_000, Distortion::NONE);
            for i in 0..WINDOW {
                let r = state.next_reading(&mut device, 5_000, Distortion::NONE);
                assert_eq!(r.n, j * WINDOW as u64 + i as u64 + 1);
                for c in 0..CHANNELS {
                    let counts = (r.accel_g[c] * f64::from(COUNTS_PER_G)).round() as i16;
                    assert_eq!(counts, window.window.channel(c)[i], "window {j} sample {i}");
                }
                assert_eq!(
                    r.temperature_c,
                    f64::from(window.temperature_centi_c) / 100.0
                );
            }
        }
        assert_eq!(state.readings(), 3 * WINDOW as u64);
    }

    #[test]
    fn a_skewed_clock_shifts_every_readings_timestamp() {
        let mut device = SimDevice::new(1, Condition::Healthy, 1);
        device.set_clock_skew_us(-2_000);
        let mut state = StreamState::new();
        let stamps: Vec<u64> = (0..70)
            .map(|k| {
                state
                    .next_reading(&mut device, 1_000_000 + k * 1_000, Distortion::NONE)
                    .timestamp_us
            })
            .collect();
        assert!(stamps
            .iter()
            .enumerate()
            .all(|(k, &ts)| ts == 998_000 + k as u64 * 1_000));
    }

    #[test]
    fn the_json_reading_carries_number_milliseconds_axes_and_temperature() {
        let r = StreamReading {
            n: 7,
            timestamp_us: 1_765_000_000_123_456,
            accel_g: [0.5, -0.25, 1.0],
            temperature_c: 41.2,
        };
        let v: serde_json::Value = serde_json::from_slice(&scalar_json("dev-0003", &r)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"id": "dev-0003", "n": 7, "ts": 1_765_000_000_123u64,
                "ax": 0.5, "ay": -0.25, "az": 1.0, "temp": 41.2})
        );
    }

    proptest! {
        /// The count of completing readings among the first `m` is what `windows_in` says,
        /// and consecutive windows end exactly `hop` readings apart.
        #[test]
        fn windows_in_counts_the_completing_readings(
            window in 1usize..=64, hop in 1usize..=64, m in 0u64..400,
        ) {
            let plan = StreamPlan::new(window, hop).unwrap();
            let ends: Vec<u64> = (0..m).filter(|&k| plan.completes(k)).collect();
            prop_assert_eq!(ends.len() as u64, plan.windows_in(m));
            if let Some(&first) = ends.first() {
                prop_assert_eq!(first, window as u64 - 1);
            }
            prop_assert!(ends.windows(2).all(|w| w[1] - w[0] == hop as u64));
        }

        /// Each reading read back at 1/2048 g per count is the exact ADC count.
        #[test]
        fn readings_read_back_to_whole_counts(seed in 0u64..1000, index in 0u32..8) {
            let mut device = SimDevice::new(index, Condition::ALL[index as usize % 4], seed);
            let mut state = StreamState::new();
            for _ in 0..70 {
                let r = state.next_reading(&mut device, 0, Distortion::NONE);
                for g in r.accel_g {
                    let counts = g * f64::from(COUNTS_PER_G);
                    prop_assert_eq!(counts, counts.round());
                }
            }
        }
    }
}
