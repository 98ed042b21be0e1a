//! [`SensorEvent`]: one window of samples from one device, and its allocation-free codec.

use serde::{Deserialize, Serialize};

use crate::{
    validate_device_id, DecodeError, DeviceId, EncodeError, EventLimits, EVENT_FORMAT_V1,
    EVENT_FORMAT_VERSION, MAX_EVENT_BYTES, MAX_SAMPLES, V2_LIMITS,
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

/// A window of raw ADC samples for up to [`crate::MAX_CHANNELS`] channels, holding at most
/// `N` samples inline (by default [`MAX_SAMPLES`], the most any version carries; see the
/// crate docs for the RAM cost).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Window<const N: usize = MAX_SAMPLES> {
    /// Number of channels (e.g. 3 vibration axes), 1..= the version's `max_channels`.
    pub channels: u8,
    /// Samples per channel, 1..= the version's `max_samples_per_channel`.
    pub samples_per_channel: u16,
    /// Sampling rate of every channel, in Hz.
    pub sample_rate_hz: u32,
    /// Physical units (g for vibration) per ADC count; finite and positive.
    pub scale: f32,
    /// Raw counts, channel-major: sample `i` of channel `c` is at `c * samples_per_channel + i`.
    pub samples: heapless::Vec<i16, N>,
}

impl<const N: usize> Window<N> {
    /// The raw counts of channel `c` (empty if `c` is out of range).
    pub fn channel(&self, c: usize) -> &[i16] {
        let n = usize::from(self.samples_per_channel);
        self.samples.get(c * n..(c + 1) * n).unwrap_or(&[])
    }

    /// The samples in physical units (counts × scale), channel-major: what models see.
    pub fn values(&self) -> impl Iterator<Item = f32> + '_ {
        self.samples.iter().map(move |&c| f32::from(c) * self.scale)
    }

    /// Checks the window's shape and scale against the widest limits (version 2's).
    pub fn validate(&self) -> Result<(), DecodeError> {
        self.validate_for(&V2_LIMITS)
    }

    /// Checks the window's shape and scale against the limits of one format version.
    pub fn validate_for(&self, limits: &EventLimits) -> Result<(), DecodeError> {
        let declared = check_shape(limits, self.channels, self.samples_per_channel)?;
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

/// Checks a declared window shape against `limits` and returns its sample count.
fn check_shape(
    limits: &EventLimits,
    channels: u8,
    samples_per_channel: u16,
) -> Result<usize, DecodeError> {
    let channels = usize::from(channels);
    if channels == 0 || channels > limits.max_channels {
        return Err(DecodeError::BadChannelCount {
            found: channels,
            max: limits.max_channels,
        });
    }
    let per_channel = usize::from(samples_per_channel);
    if per_channel == 0 || per_channel > limits.max_samples_per_channel {
        return Err(DecodeError::BadSamplesPerChannel {
            found: per_channel,
            max: limits.max_samples_per_channel,
        });
    }
    Ok(channels * per_channel)
}

/// The limits of `version`, or the error that names an unknown one.
fn limits_of(version: u8) -> Result<EventLimits, DecodeError> {
    EventLimits::of(version).ok_or(DecodeError::UnsupportedVersion {
        found: version,
        oldest: EVENT_FORMAT_V1,
        newest: EVENT_FORMAT_VERSION,
    })
}

/// One reading from one sensor device: the unit of work of the whole pipeline. Holds at
/// most `N` samples inline (by default [`MAX_SAMPLES`]; see the crate docs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SensorEvent<const N: usize = MAX_SAMPLES> {
    /// The event format version, the first byte on the wire: [`crate::EVENT_FORMAT_V1`]
    /// or [`crate::EVENT_FORMAT_V2`]. It sets the window limits; a decoded event keeps the
    /// version it was read with, so that re-encoding it gives the same bytes. Pick it for
    /// a new event with [`crate::event_version_for`].
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
    pub window: Window<N>,
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
    /// Decodes one event of any version into the full capacity ([`MAX_SAMPLES`]),
    /// enforcing every limit. Never panics and never allocates. See
    /// [`SensorEvent::decode_with_capacity`] for the contract.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        Self::decode_with_capacity(bytes)
    }
}

impl<const N: usize> SensorEvent<N> {
    /// Checks every wire limit: version, device id, window shape (against the limits of
    /// the event's version) and scale.
    pub fn validate(&self) -> Result<(), DecodeError> {
        let limits = limits_of(self.version)?;
        validate_device_id(&self.device)?;
        self.window.validate_for(&limits)
    }

    /// Encodes into `buf` and returns the written prefix. Refuses an invalid event.
    pub fn encode<'b>(&self, buf: &'b mut [u8]) -> Result<&'b mut [u8], EncodeError> {
        self.validate().map_err(EncodeError::Invalid)?;
        let capacity = buf.len();
        postcard::to_slice(self, buf).map_err(|_| EncodeError::BufferFull { capacity })
    }

    /// Decodes one event into a window of capacity `N`, enforcing every limit of the
    /// event's version. Never panics and never allocates.
    ///
    /// The order of checks is part of the contract: size (the largest of any version),
    /// version, size (the version's), header fields, window shape (the version's limits),
    /// capacity `N`, samples, tail, trailing bytes. A declared shape beyond the version's
    /// limits or the capacity is refused before any sample is read.
    pub fn decode_with_capacity(bytes: &[u8]) -> Result<Self, DecodeError> {
        if bytes.len() > MAX_EVENT_BYTES {
            return Err(DecodeError::Oversized {
                len: bytes.len(),
                max: MAX_EVENT_BYTES,
            });
        }
        let Some(&version) = bytes.first() else {
            return Err(DecodeError::Truncated { field: "version" });
        };
        let limits = limits_of(version)?;
        if bytes.len() > limits.max_event_bytes {
            return Err(DecodeError::Oversized {
                len: bytes.len(),
                max: limits.max_event_bytes,
            });
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
        // Shape and capacity first, so that the sample loop below is bounded by N.
        let declared = check_shape(&limits, head.channels, head.samples_per_channel)?;
        if count as usize != declared {
            return Err(DecodeError::SampleCountMismatch {
                declared,
                found: count as usize,
            });
        }
        if declared > N {
            return Err(DecodeError::OverCapacity {
                samples: declared,
                capacity: N,
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
            // Cannot fail: declared <= N.
            window
                .samples
                .push(sample)
                .map_err(|_| DecodeError::Malformed { field: "samples" })?;
            rest = tail;
        }
        window.validate_for(&limits)?;

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

// The RAM cost of an event on a 32-bit Cortex-M, as the crate docs state it: 80 bytes of
// header plus 2 bytes a sample. Checked by CI's thumbv7em-none-eabihf build.
#[cfg(target_arch = "arm")]
const _: () = {
    assert!(core::mem::size_of::<SensorEvent<256>>() == 592);
    assert!(core::mem::size_of::<SensorEvent>() == 16_464);
};
