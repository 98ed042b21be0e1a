//! The JSON form of the wire types, for publishers and subscribers that speak JSON.
//!
//! Field names are the struct field names; enums are snake_case strings; samples are an
//! array of integers. The same limits as the binary form apply, by the event's `version`
//! field: a window beyond 4 channels × 64 samples needs `"version":2`.

use crate::{Command, DecodeError, SensorEvent, MAX_EVENT_BYTES};

/// JSON is wordier than postcard: samples as decimal text take up to 7 bytes each (57 344
/// for version 2's 8192 samples), and a publisher may indent; 8 × [`MAX_EVENT_BYTES`]
/// (200 KiB) leaves room for both.
pub const MAX_JSON_EVENT_BYTES: usize = 8 * MAX_EVENT_BYTES;

/// Parses and validates a JSON event.
pub fn decode_event(bytes: &[u8]) -> Result<SensorEvent, DecodeError> {
    if bytes.len() > MAX_JSON_EVENT_BYTES {
        return Err(DecodeError::Oversized {
            len: bytes.len(),
            max: MAX_JSON_EVENT_BYTES,
        });
    }
    let event: SensorEvent = serde_json::from_slice(bytes).map_err(json_error)?;
    event.validate()?;
    Ok(event)
}

/// Renders an event (of any capacity) as JSON.
pub fn encode_event<const N: usize>(event: &SensorEvent<N>) -> Vec<u8> {
    // Serialising plain data with string keys cannot fail.
    serde_json::to_vec(event).unwrap_or_default()
}

/// Parses and validates a JSON command.
pub fn decode_command(bytes: &[u8]) -> Result<Command, DecodeError> {
    if bytes.len() > MAX_JSON_EVENT_BYTES {
        return Err(DecodeError::Oversized {
            len: bytes.len(),
            max: MAX_JSON_EVENT_BYTES,
        });
    }
    let cmd: Command = serde_json::from_slice(bytes).map_err(json_error)?;
    cmd.validate()?;
    Ok(cmd)
}

/// Renders a command as JSON.
pub fn encode_command(cmd: &Command) -> Vec<u8> {
    serde_json::to_vec(cmd).unwrap_or_default()
}

fn json_error(e: serde_json::Error) -> DecodeError {
    DecodeError::Json {
        message: e.to_string(),
    }
}
