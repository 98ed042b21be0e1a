//! `reflex-wire`: the event format shared by sensor firmware and the `reflexd` daemon.
//!
//! Two messages cross the wire:
//! - [`SensorEvent`] (sensor → daemon): one window of raw samples for up to
//!   [`MAX_CHANNELS`] channels, with the device's identity, sequence number and clock.
//! - [`Command`] (daemon → actuator): the decision that answers one event.
//!
//! Both encode to [postcard] into caller-provided buffers, with no allocation, so the
//! same code runs on a Cortex-M sensor (`--no-default-features`) and on the board.
//! Decoding enforces the hard limits below and reports what failed through a typed
//! [`DecodeError`]; it never panics, whatever the input. With the `std` feature the same
//! types also have a JSON form ([`json`]) for publishers that speak JSON.
//!
//! The postcard layout is the serde field order of the structs below; the golden-byte
//! tests in `tests/golden.rs` pin it. Changing a field is a new format version.
//!
//! # Event format versions
//!
//! The first byte of an encoded event is its format version, and the version sets the
//! window limits the decoder applies ([`EventLimits::of`]):
//!
//! | version | channels | samples per channel | samples | encoded event |
//! |---|---|---|---|---|
//! | 1 ([`EVENT_FORMAT_V1`]) | 1..=4 | 1..=64 | ≤ 256 | ≤ 1024 bytes |
//! | 2 ([`EVENT_FORMAT_V2`]) | 1..=8 | 1..=1024 | ≤ 8192 | ≤ 25 600 bytes |
//!
//! Both versions have the same field layout; version 2 only raises the limits, so that a
//! real accelerometer window (e.g. 3 axes × 1024 samples) fits. The decoder reads both.
//! [`SensorEvent::version`] keeps the version that was read, and encoding writes it back:
//! re-encoding a decoded event gives the same bytes, and a v1 event stays readable by a
//! v1-only decoder. An encoder picks the version with [`event_version_for`]: v1 while the
//! window fits v1, v2 beyond. Commands have their own version, [`COMMAND_FORMAT_VERSION`]
//! (still 1): their bytes did not change with events' version 2.
//!
//! # Capacity: what one event costs in RAM
//!
//! An event holds its samples inline (`heapless::Vec<i16, N>`): [`SensorEvent<N>`] and
//! [`Window<N>`] take the capacity `N` in samples, by default [`MAX_SAMPLES`] (8 × 1024,
//! all of version 2, what the daemon uses). Firmware that sends small windows keeps a small
//! event with a small `N`, e.g. `SensorEvent<256>` (all of version 1); decoding into it
//! ([`SensorEvent::decode_with_capacity`]) refuses a larger window with
//! [`DecodeError::OverCapacity`] before reading any sample. On `thumbv7em-none-eabihf`
//! (32-bit `usize`), `size_of` is:
//!
//! | type | bytes |
//! |---|---|
//! | `SensorEvent<256>` (v1's maximum) | 592 |
//! | `SensorEvent` = `SensorEvent<8192>` (v2's maximum) | 16 464 |
//!
//! i.e. 80 bytes of header plus 2 bytes a sample; a compile-time assertion on
//! `target_arch = "arm"` pins both figures.
#![cfg_attr(not(feature = "std"), no_std)]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod command;
mod error;
mod event;
#[cfg(feature = "std")]
pub mod json;

pub use command::{Action, Command, DecisionSource, ModelRef};
pub use error::{DecodeError, EncodeError};
pub use event::{EventKind, SensorEvent, Window};

/// Version byte of the first event format: windows of at most 4 channels × 64 samples.
pub const EVENT_FORMAT_V1: u8 = 1;
/// Version byte of the second event format: the same layout, windows of at most
/// 8 channels × 1024 samples.
pub const EVENT_FORMAT_V2: u8 = 2;
/// The newest event format version this build reads and writes.
pub const EVENT_FORMAT_VERSION: u8 = EVENT_FORMAT_V2;
/// Version byte that starts every encoded command. Commands are versioned apart from
/// events: events' version 2 left them unchanged.
pub const COMMAND_FORMAT_VERSION: u8 = 1;
/// Longest device id, in bytes.
pub const MAX_DEVICE_ID_LEN: usize = 32;

/// The window and size limits of one event format version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EventLimits {
    /// The version byte these limits belong to.
    pub version: u8,
    /// Most channels one window may carry.
    pub max_channels: usize,
    /// Most samples per channel in one window.
    pub max_samples_per_channel: usize,
    /// Largest encoded event; every valid event of this version fits.
    pub max_event_bytes: usize,
}

/// The limits of [`EVENT_FORMAT_V1`].
pub const V1_LIMITS: EventLimits = EventLimits {
    version: EVENT_FORMAT_V1,
    max_channels: 4,
    max_samples_per_channel: 64,
    max_event_bytes: 1024,
};

/// The limits of [`EVENT_FORMAT_V2`]. Its largest event encodes to 24 654 bytes
/// (3 bytes a sample at worst); the limit leaves room to spare.
pub const V2_LIMITS: EventLimits = EventLimits {
    version: EVENT_FORMAT_V2,
    max_channels: 8,
    max_samples_per_channel: 1024,
    max_event_bytes: 25 * 1024,
};

impl EventLimits {
    /// The limits of event format `version`, or `None` for a version this build does not
    /// read.
    pub const fn of(version: u8) -> Option<Self> {
        match version {
            EVENT_FORMAT_V1 => Some(V1_LIMITS),
            EVENT_FORMAT_V2 => Some(V2_LIMITS),
            _ => None,
        }
    }

    /// Most samples in one window, all channels together.
    pub const fn max_samples(&self) -> usize {
        self.max_channels * self.max_samples_per_channel
    }

    /// Whether a window of `channels` × `samples_per_channel` is within these limits.
    pub const fn fits(&self, channels: usize, samples_per_channel: usize) -> bool {
        channels >= 1
            && channels <= self.max_channels
            && samples_per_channel >= 1
            && samples_per_channel <= self.max_samples_per_channel
    }
}

/// The version an encoder should give a window of `channels` × `samples_per_channel`:
/// [`EVENT_FORMAT_V1`] when it fits version 1 (so a v1-only decoder reads it too),
/// [`EVENT_FORMAT_V2`] when only version 2 holds it, `None` when no version does.
pub const fn event_version_for(channels: usize, samples_per_channel: usize) -> Option<u8> {
    if V1_LIMITS.fits(channels, samples_per_channel) {
        Some(EVENT_FORMAT_V1)
    } else if V2_LIMITS.fits(channels, samples_per_channel) {
        Some(EVENT_FORMAT_V2)
    } else {
        None
    }
}

/// Most channels one window may carry, in any version (version 2's limit).
pub const MAX_CHANNELS: usize = V2_LIMITS.max_channels;
/// Most samples per channel in one window, in any version (version 2's limit).
pub const MAX_SAMPLES_PER_CHANNEL: usize = V2_LIMITS.max_samples_per_channel;
/// Most samples in one window, all channels together, in any version: the default
/// capacity of [`Window`] and [`SensorEvent`].
pub const MAX_SAMPLES: usize = V2_LIMITS.max_samples();
/// Largest encoded event accepted by [`SensorEvent::decode`], in any version; every
/// valid event fits. A version 1 event is held to [`V1_LIMITS`]'s 1024 bytes.
pub const MAX_EVENT_BYTES: usize = V2_LIMITS.max_event_bytes;
/// Largest encoded command accepted by [`Command::decode`]; every valid command fits.
pub const MAX_COMMAND_BYTES: usize = 192;
/// Longest model name carried in a [`Command`].
pub const MAX_MODEL_NAME_LEN: usize = 24;
/// Longest model version carried in a [`Command`].
pub const MAX_MODEL_VERSION_LEN: usize = 16;

/// A device identity: 1..=32 bytes of `[A-Za-z0-9_.:-]`, so it is safe inside MQTT topics.
pub type DeviceId = heapless::String<MAX_DEVICE_ID_LEN>;

/// Checks a device id against the rules of [`DeviceId`].
pub fn validate_device_id(id: &str) -> Result<(), DecodeError> {
    if id.is_empty() {
        return Err(DecodeError::DeviceIdEmpty);
    }
    if id.len() > MAX_DEVICE_ID_LEN {
        return Err(DecodeError::DeviceIdTooLong {
            len: id.len(),
            max: MAX_DEVICE_ID_LEN,
        });
    }
    if let Some(pos) = id
        .bytes()
        .position(|b| !(b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-')))
    {
        return Err(DecodeError::DeviceIdInvalidByte {
            byte: id.as_bytes()[pos],
            pos,
        });
    }
    Ok(())
}
