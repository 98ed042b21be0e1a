//! Input adapters: a foreign payload (`json` or `binary`, see `config::input`) becomes a
//! [`Reading`], then reflex's internal [`SensorEvent`]. Pure: no I/O, no clock (the
//! arrival time is passed in).
//!
//! # Why adapters produce `SensorEvent` (i16 counts), not float windows
//!
//! Every later stage, the journal's records, the upload batches, the cloud's Parquet
//! table, rescoring and the drift monitor read the wire's `SensorEvent`, whose window is
//! i16 counts times a `scale`. An internal float event would change all of them (and the
//! record format others are changing now) for a precision sensors do not have: an
//! accelerometer's ADC is 10–16 bits. So an adapter maps each physical value onto counts
//! at the route's declared `resolution` (units per count, the event's window `scale`):
//! `count = round((raw × scale + offset) / resolution)`. The cost is stated, not hidden:
//! a value is rounded to the nearest `resolution` (error ≤ `resolution / 2`), and a value
//! beyond ±32767 counts, or a NaN or infinity, is refused as bad input (`bad_value`),
//! never clamped: a clamped window is not what the sensor saw. The window limits are the
//! wire's widest, format version 2's: ≤ 8 channels × 1024 samples (an event is marked
//! version 1 when its window fits version 1's 4 × 64, as a v1 sensor would send it).
//!
//! # Contracts
//!
//! - A payload larger than `max_payload_bytes` is refused before it is parsed
//!   (`oversized`); JSON is parsed by serde_json, whose recursion limit (128) refuses
//!   deep nesting (`bad_json`); an array longer than 1024 samples is refused before its
//!   elements are read (`bad_window`). Parsing is thus bounded in time and memory by the
//!   payload limit.
//! - Every refusal is an [`AdaptError`] whose [`AdaptError::reason`] is a label of
//!   `reflexd_bad_input_total` and whose message names the field and the bad value.
//! - A reading never carries a value that does not map to a count.

use reflex_wire::{
    event_version_for, DecodeError, DeviceId, EventKind, SensorEvent, Window, EVENT_FORMAT_VERSION,
    MAX_CHANNELS, MAX_SAMPLES_PER_CHANNEL,
};

use crate::config::input::{
    InputConfig, InputKind, Layout, SampleType, TimeUnit, DEVICE_FROM_TOPIC,
};

/// Why a payload could not be read by its route's adapter.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AdaptError {
    /// Larger than the route's `max_payload_bytes`.
    #[error("payload of {len} bytes exceeds the route's max_payload_bytes {max}")]
    Oversized {
        /// Payload length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Not JSON (or nested deeper than serde_json's recursion limit).
    #[error("not a JSON document: {0}")]
    BadJson(String),
    /// A configured field is absent.
    #[error("field {0:?} is missing")]
    MissingField(String),
    /// A field holds another JSON type than the mapping needs.
    #[error("field {field:?} is {found}, expected {expected}")]
    WrongType {
        /// JSON pointer.
        field: String,
        /// What it holds.
        found: &'static str,
        /// What the mapping needs.
        expected: &'static str,
    },
    /// A number that is NaN, infinite, or beyond the counts' range once mapped.
    #[error("field {field:?} value {value} {why}")]
    BadValue {
        /// JSON pointer (with `[i]` for an array element) or binary position.
        field: String,
        /// The value as read.
        value: String,
        /// Why it is refused.
        why: String,
    },
    /// Channels of different lengths, no sample, or more than the wire carries.
    #[error("window {0}")]
    BadWindow(String),
    /// A binary payload shorter than its declared layout.
    #[error("binary payload of {len} bytes is shorter than its layout's {expected}")]
    Truncated {
        /// Payload length.
        len: usize,
        /// Header + samples.
        expected: usize,
    },
    /// A binary payload longer than its declared layout.
    #[error("binary payload of {len} bytes is longer than its layout's {expected}")]
    TrailingBytes {
        /// Payload length.
        len: usize,
        /// Header + samples.
        expected: usize,
    },
    /// The payload's device id is not a valid one.
    #[error("device id {id:?}: {source}")]
    BadDevice {
        /// The id as read.
        id: String,
        /// Why.
        source: DecodeError,
    },
    /// A Sparkplug B payload with more metrics than reflexd reads in one message.
    #[error("payload has more than {max} metrics")]
    TooManyMetrics {
        /// The bound.
        max: usize,
    },
    /// Not a Sparkplug B payload (protobuf that does not decode).
    #[error("{0}")]
    BadProtobuf(String),
    /// Not a Sparkplug B edge node or device topic.
    #[error("topic {topic:?}: {why}")]
    BadTopic {
        /// The topic (its first 128 bytes at most).
        topic: String,
        /// Why.
        why: String,
    },
    /// Sparkplug B data naming metrics by alias only, with no birth that says which.
    #[error("device {device:?} sent metric alias {alias} with no birth naming it (reflexd refuses aliased data until the next birth)")]
    UnknownAlias {
        /// The device.
        device: String,
        /// The first alias that could not be resolved.
        alias: u64,
    },
    /// A Sparkplug B metric's value is not numbers of its datatype.
    #[error("metric {metric:?}: {source}")]
    MetricValue {
        /// The metric's name.
        metric: String,
        /// Why.
        source: reflex_sparkplug::ValueError,
    },
}

impl AdaptError {
    /// The `reason` label of `reflexd_bad_input_total` and `GET /bad-input`.
    pub fn reason(&self) -> &'static str {
        match self {
            AdaptError::Oversized { .. } => "oversized",
            AdaptError::BadJson(_) => "bad_json",
            AdaptError::MissingField(_) => "missing_field",
            AdaptError::WrongType { .. } => "wrong_type",
            AdaptError::BadValue { .. } => "bad_value",
            AdaptError::BadWindow(_) => "bad_window",
            AdaptError::Truncated { .. } => "truncated",
            AdaptError::TrailingBytes { .. } => "trailing_bytes",
            AdaptError::BadDevice { .. } => "bad_device_id",
            AdaptError::TooManyMetrics { .. } => "oversized",
            AdaptError::BadProtobuf(_) => "bad_protobuf",
            AdaptError::BadTopic { .. } => "bad_topic",
            AdaptError::UnknownAlias { .. } => "unknown_alias",
            AdaptError::MetricValue {
                source: reflex_sparkplug::ValueError::Ragged { .. },
                ..
            } => "bad_window",
            AdaptError::MetricValue { .. } => "wrong_type",
        }
    }
}

/// What one message said, mapped to counts: the adapter's output, before the device,
/// sequence and time are settled by the decode stage.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    /// The device id the payload names (None: the topic names it).
    pub device: Option<DeviceId>,
    /// The payload's sequence number (None: reflexd numbers the device's events).
    pub seq: Option<u64>,
    /// The sensor's timestamp, µs since the Unix epoch (None: arrival time).
    pub timestamp_us: Option<u64>,
    /// Channels in the message.
    pub channels: usize,
    /// Samples per channel in the message.
    pub samples: usize,
    /// `channels × samples` counts, channel-major.
    pub counts: Vec<i16>,
    /// Machine temperature, hundredths of °C (0 when not mapped).
    pub temperature_centi_c: i16,
}

impl Reading {
    /// The internal event of a reading that is a whole window, for `device`, numbered
    /// `seq`, stamped `timestamp_us`.
    pub fn into_event(
        self,
        device: DeviceId,
        seq: u64,
        timestamp_us: u64,
        mapping: &Mapping,
    ) -> Result<SensorEvent, AdaptError> {
        event_of(
            device,
            seq,
            timestamp_us,
            self.channels,
            self.samples,
            &self.counts,
            self.temperature_centi_c,
            mapping,
        )
    }
}

/// A window's event: counts channel-major, `channels × samples` within the wire's limits.
#[allow(clippy::too_many_arguments)]
pub fn event_of(
    device: DeviceId,
    seq: u64,
    timestamp_us: u64,
    channels: usize,
    samples: usize,
    counts: &[i16],
    temperature_centi_c: i16,
    mapping: &Mapping,
) -> Result<SensorEvent, AdaptError> {
    let shape_err = || {
        AdaptError::BadWindow(format!("{channels} × {samples} (channels × samples) exceeds the wire's {MAX_CHANNELS} × {MAX_SAMPLES_PER_CHANNEL}"))
    };
    let (Ok(c), Ok(s)) = (u8::try_from(channels), u16::try_from(samples)) else {
        return Err(shape_err());
    };
    let mut window = Window {
        channels: c,
        samples_per_channel: s,
        sample_rate_hz: mapping.sample_rate_hz,
        scale: mapping.resolution as f32,
        samples: heapless::Vec::new(),
    };
    window
        .samples
        .extend_from_slice(counts)
        .map_err(|_| shape_err())?;
    window
        .validate()
        .map_err(|e| AdaptError::BadWindow(e.to_string()))?;
    Ok(SensorEvent {
        // Some: the window validated within version 2's limits.
        version: event_version_for(channels, samples).unwrap_or(EVENT_FORMAT_VERSION),
        device,
        seq,
        timestamp_us,
        kind: EventKind::Periodic,
        window,
        temperature_centi_c,
        deadline_hint_us: None,
    })
}

/// Where each part of a foreign payload is, compiled from a validated `[routes.input]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Mapping {
    kind: InputKind,
    device: Option<String>,
    seq: Option<String>,
    seq_offset: Option<usize>,
    timestamp: Option<String>,
    timestamp_unit: TimeUnit,
    channels: Vec<String>,
    window: Option<String>,
    channel_count: usize,
    samples: usize,
    sample_type: SampleType,
    layout: Layout,
    header_bytes: usize,
    scale: f64,
    offset: f64,
    /// Physical units per count.
    pub resolution: f64,
    /// Sampling rate, Hz.
    pub sample_rate_hz: u32,
    temperature: Option<String>,
    max_payload_bytes: usize,
    /// A message may be a single reading (assembly on).
    scalars: bool,
    /// The JSON pointers, compiled (`json` routes).
    json: Option<json::Pointers>,
}

impl Mapping {
    /// The mapping of a validated `[routes.input]`; None for `kind = "reflex"`.
    pub fn of(input: &InputConfig) -> Option<Mapping> {
        if input.kind == InputKind::Reflex {
            return None;
        }
        let mut m = Mapping {
            kind: input.kind,
            device: (input.device != DEVICE_FROM_TOPIC).then(|| input.device.clone()),
            seq: input.seq.clone(),
            seq_offset: input.seq_offset,
            timestamp: input.timestamp.clone(),
            timestamp_unit: input.timestamp_unit,
            channels: input.channels.clone(),
            window: input.window.clone(),
            channel_count: input.channel_count.unwrap_or(1),
            samples: input.samples.unwrap_or(1),
            sample_type: input.sample_type,
            layout: input.layout,
            header_bytes: input.header_bytes,
            scale: input.scale,
            offset: input.offset,
            resolution: input.resolution,
            sample_rate_hz: input.sample_rate_hz,
            temperature: input.temperature.clone(),
            max_payload_bytes: input.max_payload_bytes,
            scalars: input.assemble.is_some(),
            json: None,
        };
        if m.kind == InputKind::Json {
            m.json = Some(json::Pointers::of(&m));
        }
        Some(m)
    }

    /// Whether the device id comes from the topic.
    pub fn device_from_topic(&self) -> bool {
        self.device.is_none()
    }

    /// Reads one payload.
    pub fn read(&self, payload: &[u8]) -> Result<Reading, AdaptError> {
        if payload.len() > self.max_payload_bytes {
            return Err(AdaptError::Oversized {
                len: payload.len(),
                max: self.max_payload_bytes,
            });
        }
        match self.kind {
            InputKind::Binary => self.read_binary(payload),
            InputKind::SparkplugB => Err(AdaptError::BadProtobuf(
                "a Sparkplug B message is read with its topic, by sparkplug::Births".into(),
            )),
            _ => self.read_json(payload),
        }
    }

    /// `raw` as a count: `round((raw × scale + offset) / resolution)`, or why not.
    pub fn count(&self, raw: f64, field: impl Fn() -> String) -> Result<i16, AdaptError> {
        let bad = |why: &str| AdaptError::BadValue {
            field: field(),
            value: raw.to_string(),
            why: why.to_owned(),
        };
        if !raw.is_finite() {
            return Err(bad("is not a finite number"));
        }
        let c = ((raw * self.scale + self.offset) / self.resolution).round();
        if !(c.is_finite() && (-32_767.0..=32_767.0).contains(&c)) {
            return Err(bad(&format!(
                "maps to {c} counts, beyond ±32767 at resolution {}",
                self.resolution
            )));
        }
        Ok(c as i16)
    }

    fn read_binary(&self, payload: &[u8]) -> Result<Reading, AdaptError> {
        let (c, s, size) = (self.channel_count, self.samples, self.sample_type.size());
        let expected = self.header_bytes + c * s * size;
        if payload.len() < expected {
            return Err(AdaptError::Truncated {
                len: payload.len(),
                expected,
            });
        }
        if payload.len() > expected {
            return Err(AdaptError::TrailingBytes {
                len: payload.len(),
                expected,
            });
        }
        let seq = self.seq_offset.map(|o| {
            let b = &payload[o..o + 4];
            u64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        });
        let body = &payload[self.header_bytes..];
        let mut counts = vec![0i16; c * s];
        for (k, chunk) in body.chunks_exact(size).enumerate() {
            let raw = match self.sample_type {
                SampleType::F32 => {
                    f64::from(f32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]))
                }
                SampleType::I16 => f64::from(i16::from_le_bytes([chunk[0], chunk[1]])),
            };
            // Where sample k of the payload goes, channel-major.
            let (ch, i) = match self.layout {
                Layout::Planar => (k / s, k % s),
                Layout::Interleaved => (k % c, k / c),
            };
            counts[ch * s + i] = self.count(raw, || {
                format!(
                    "sample {i} of channel {ch} (byte {})",
                    self.header_bytes + k * size
                )
            })?;
        }
        Ok(Reading {
            device: None,
            seq,
            timestamp_us: None,
            channels: c,
            samples: s,
            counts,
            temperature_centi_c: 0,
        })
    }

    fn read_json(&self, payload: &[u8]) -> Result<Reading, AdaptError> {
        match &self.json {
            Some(pointers) => pointers.read(self, payload),
            None => Err(AdaptError::BadJson(
                "the route's mapping has no JSON pointers".into(),
            )),
        }
    }

    /// A timestamp `t` read at `ptr`, in the configured unit, as µs since the epoch.
    fn timestamp_of(&self, t: f64, ptr: &str) -> Result<u64, AdaptError> {
        let per_unit = match self.timestamp_unit {
            TimeUnit::S => 1e6,
            TimeUnit::Ms => 1e3,
            TimeUnit::Us => 1.0,
        };
        let us = (t * per_unit).round();
        // Up to the year 2500: anything later is a wrong unit or garbage.
        if !(us.is_finite() && (0.0..=1.7e16).contains(&us)) {
            return Err(AdaptError::BadValue {
                field: ptr.to_owned(),
                value: t.to_string(),
                why: "is not a timestamp between 1970 and 2500 in the configured unit".into(),
            });
        }
        Ok(us as u64)
    }
}

/// A temperature in °C (`field`'s value) as hundredths of °C, or why not.
fn centi_c(t: f64, field: &str) -> Result<i16, AdaptError> {
    let c = (t * 100.0).round();
    if !(t.is_finite() && (-32_767.0..=32_767.0).contains(&c)) {
        return Err(AdaptError::BadValue {
            field: field.to_owned(),
            value: t.to_string(),
            why: "is not a temperature in -327.67..=327.67 °C".into(),
        });
    }
    Ok(c as i16)
}

/// Sequence numbers for sensors that send none: per device, the larger of the previous
/// number + 1 and the arrival time in µs since the epoch. They increase within a run
/// and, with a clock that does not step back, across restarts (so the journal never holds
/// two records of one device under one number). At most `cap` devices are remembered; a
/// forgotten device starts again from its arrival time.
#[derive(Debug)]
pub struct Numberer {
    last: std::collections::HashMap<DeviceId, u64>,
    cap: usize,
}

impl Numberer {
    /// Remembers at most `cap` devices (>= 1).
    pub fn new(cap: usize) -> Self {
        Numberer {
            last: std::collections::HashMap::new(),
            cap: cap.max(1),
        }
    }

    /// The number of `device`'s event arriving at `unix_us`.
    pub fn next(&mut self, device: &DeviceId, unix_us: u64) -> u64 {
        let n = match self.last.get(device) {
            Some(&prev) => prev.saturating_add(1).max(unix_us),
            None => unix_us,
        };
        if !self.last.contains_key(device) && self.last.len() >= self.cap {
            self.last.clear();
        }
        self.last.insert(device.clone(), n);
        n
    }
}

mod json;
pub mod sparkplug;

#[cfg(test)]
mod tests;
