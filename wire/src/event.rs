//! [`SensorEvent`]: one window of samples from one device, and its allocation-free codec.

use serde::{Deserialize, Serialize};

use crate::{
    validate_device_id, DecodeError, DeviceId, EncodeError, FORMAT_VERSION, MAX_CHANNELS,
    MAX_EVENT_BYTES, MAX_SAMPLES, MAX_SAMPLES_PER_CHANNEL,
};

/// What made the sensor send this event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A window captured on the sensor's regular schedule.
    Periodic,
    /// A window captured because a local threshold tripped on the sensor.
    Triggered,
}

/// A fixed-size window of raw ADC samples for up to [`MAX_CHANNELS`] channels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Window {
    /// Number of channels (e.g. 3 vibration axes), 1..=[`MAX_CHANNELS`].
    pub channels: u8,
    /// Samples per channel, 1..=[`MAX_SAMPLES_PER_CHANNEL`].
    pub samples_per_channel: u16,
    /// Sampling rate of every channel, in Hz.
    pub sample_rate_hz: u32,
    /// Physical units (g for vibration) per ADC count; finite and positive.
    pub scale: f32,
    /// Raw counts, channel-major: sample `i` of channel `c` is at `c * samples_per_channel + i`.
    pub samples: heapless::Vec<i16, MAX_SAMPLES>,
}

impl Window {
    /// The raw counts of channel `c` (empty if `c` is out of range).
    pub fn channel(&self, c: usize) -> &[i16] {
        let n = usize::from(self.samples_per_channel);
        self.samples.get(c * n..(c + 1) * n).unwrap_or(&[])
    }

    /// The samples in physical units (counts × scale), channel-major: what models see.
    pub fn values(&self) -> impl Iterator<Item = f32> + '_ {
        self.samples.iter().map(move |&c| f32::from(c) * self.scale)
    }

    /// Checks the window's shape and scale against the wire limits.
    pub fn validate(&self) -> Result<(), DecodeError> {
        let declared = check_shape(self.channels, self.samples_per_channel)?;
        if self.samples.len() != declared {
            return Err(DecodeError::SampleCountMismatch {
                declared,
                found: self.samples.len(),
            });
        }
        if !(self.scale.is_finite() && self.scale > 0.0) {
            return Err(DecodeError::InvalidScale);
        }
        Ok(())
    }
}

/// Checks a declared window shape and returns its sample count (at most [`MAX_SAMPLES`]).
fn check_shape(channels: u8, samples_per_channel: u16) -> Result<usize, DecodeError> {
    let channels = usize::from(channels);
    if channels == 0 || channels > MAX_CHANNELS {
        return Err(DecodeError::BadChannelCount {
            found: channels,
            max: MAX_CHANNELS,
        });
    }
    let per_channel = usize::from(samples_per_channel);
    if per_channel == 0 || per_channel > MAX_SAMPLES_PER_CHANNEL {
        return Err(DecodeError::BadSamplesPerChannel {
            found: per_channel,
            max: MAX_SAMPLES_PER_CHANNEL,
        });
    }
    Ok(channels * per_channel)
}

/// One reading from one sensor device: the unit of work of the whole pipeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SensorEvent {
    /// Always [`FORMAT_VERSION`]; the first byte on the wire.
    pub version: u8,
    /// Which device sent it.
    pub device: DeviceId,
    /// Per-device sequence number, incremented by one per event (duplicates and gaps are
    /// the daemon's business).
    pub seq: u64,
    /// The sensor's clock when the window ended, µs since the Unix epoch (may be skewed).
    pub timestamp_us: u64,
    /// Why it was sent.
    pub kind: EventKind,
    /// The samples.
    pub window: Window,
    /// Machine temperature in hundredths of a degree Celsius.
    pub temperature_centi_c: i16,
    /// The sensor's own deadline for an answer, µs after arrival; it may only shorten the
    /// daemon's budget, never lengthen it.
    pub deadline_hint_us: Option<u32>,
}

/// The fixed-size fields before the samples, borrowed so that an over-long device id is
/// reported as such instead of as a capacity failure.
#[derive(Deserialize)]
struct EventHead<'a> {
    version: u8,
    device: &'a str,
    seq: u64,
    timestamp_us: u64,
    kind: EventKind,
    channels: u8,
    samples_per_channel: u16,
    sample_rate_hz: u32,
    scale: f32,
}

impl SensorEvent {
    /// Checks every wire limit: version, device id, window shape and scale.
    pub fn validate(&self) -> Result<(), DecodeError> {
        if self.version != FORMAT_VERSION {
            return Err(DecodeError::UnsupportedVersion {
                found: self.version,
                supported: FORMAT_VERSION,
            });
        }
        validate_device_id(&self.device)?;
        self.window.validate()
    }

    /// Encodes into `buf` and returns the written prefix. Refuses an invalid event.
    pub fn encode<'b>(&self, buf: &'b mut [u8]) -> Result<&'b mut [u8], EncodeError> {
        self.validate().map_err(EncodeError::Invalid)?;
        let capacity = buf.len();
        postcard::to_slice(self, buf).map_err(|_| EncodeError::BufferFull { capacity })
    }

    /// Decodes one event, enforcing every limit. Never panics and never allocates.
    ///
    /// The order of checks is part of the contract: size, version, header fields, window
    /// shape, samples, tail, trailing bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        if bytes.len() > MAX_EVENT_BYTES {
            return Err(DecodeError::Oversized {
                len: bytes.len(),
                max: MAX_EVENT_BYTES,
            });
        }
        match bytes.first() {
            None => return Err(DecodeError::Truncated { field: "version" }),
            Some(&v) if v != FORMAT_VERSION => {
                return Err(DecodeError::UnsupportedVersion {
                    found: v,
                    supported: FORMAT_VERSION,
                })
            }
            Some(_) => {}
        }
        let (head, rest) = postcard::take_from_bytes::<EventHead<'_>>(bytes)
            .map_err(|e| DecodeError::from_postcard(e, "header"))?;
        validate_device_id(head.device)?;
        let mut device = DeviceId::new();
        // Cannot fail: validate_device_id bounded the length.
        device
            .push_str(head.device)
            .map_err(|_| DecodeError::Malformed { field: "device" })?;

        let (count, mut rest) = postcard::take_from_bytes::<u32>(rest)
            .map_err(|e| DecodeError::from_postcard(e, "sample count"))?;
        // Shape first, so that the sample loop below is bounded by MAX_SAMPLES.
        let declared = check_shape(head.channels, head.samples_per_channel)?;
        if count as usize != declared {
            return Err(DecodeError::SampleCountMismatch {
                declared,
                found: count as usize,
            });
        }
        let mut window = Window {
            channels: head.channels,
            samples_per_channel: head.samples_per_channel,
            sample_rate_hz: head.sample_rate_hz,
            scale: head.scale,
            samples: heapless::Vec::new(),
        };
        for _ in 0..declared {
            let (sample, tail) = postcard::take_from_bytes::<i16>(rest)
                .map_err(|e| DecodeError::from_postcard(e, "samples"))?;
            // Cannot fail: declared <= MAX_SAMPLES.
            window
                .samples
                .push(sample)
                .map_err(|_| DecodeError::Malformed { field: "samples" })?;
            rest = tail;
        }
        window.validate()?;

        let (temperature_centi_c, rest) = postcard::take_from_bytes::<i16>(rest)
            .map_err(|e| DecodeError::from_postcard(e, "temperature"))?;
        let (deadline_hint_us, rest) = postcard::take_from_bytes::<Option<u32>>(rest)
            .map_err(|e| DecodeError::from_postcard(e, "deadline hint"))?;
        if !rest.is_empty() {
            return Err(DecodeError::TrailingBytes { count: rest.len() });
        }
        Ok(SensorEvent {
            version: head.version,
            device,
            seq: head.seq,
            timestamp_us: head.timestamp_us,
            kind: head.kind,
            window,
            temperature_centi_c,
            deadline_hint_us,
        })
    }

    /// Temperature in degrees Celsius.
    pub fn temperature_c(&self) -> f32 {
        f32::from(self.temperature_centi_c) / 100.0
    }
}
