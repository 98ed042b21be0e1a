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
//! tests in `tests/golden.rs` pin it. Changing a field is a new [`FORMAT_VERSION`].
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

/// Version byte that starts every encoded event and command.
pub const FORMAT_VERSION: u8 = 1;
/// Longest device id, in bytes.
pub const MAX_DEVICE_ID_LEN: usize = 32;
/// Most channels one window may carry.
pub const MAX_CHANNELS: usize = 4;
/// Most samples per channel in one window.
pub const MAX_SAMPLES_PER_CHANNEL: usize = 64;
/// Most samples in one window, all channels together.
pub const MAX_SAMPLES: usize = MAX_CHANNELS * MAX_SAMPLES_PER_CHANNEL;
/// Largest encoded event accepted by [`SensorEvent::decode`]; every valid event fits.
pub const MAX_EVENT_BYTES: usize = 1024;
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
