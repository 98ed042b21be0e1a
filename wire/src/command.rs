//! [`Command`]: the daemon's answer to one event, published to the actuator.
//!
//! # Identity: at most one command per `(device, seq)` takes effect
//!
//! A command's id is the event it answers, `(device, seq)`. Commands are at least once:
//! MQTT QoS 1 on both hops, and a daemon that dies after publishing a command but before
//! the event's PUBACK left gets the event again. When the event's record is in the journal,
//! the daemon sends the journaled command again, byte for byte; when the daemon died before
//! the record was durable, the event is decided again, and that second command carries the
//! same `(device, seq)` (its action may differ, e.g. the fallback's under a restart burst).
//! An actuator applies the first command for a `(device, seq)` and ignores later ones;
//! `decided_at_us` tells two decisions of the same event apart.

use serde::{Deserialize, Serialize};

use crate::{
    validate_device_id, DecodeError, DeviceId, EncodeError, COMMAND_FORMAT_VERSION,
    MAX_COMMAND_BYTES, MAX_MODEL_NAME_LEN, MAX_MODEL_VERSION_LEN,
};

/// What the actuator should do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Keep running as is.
    Run,
    /// Reduce speed or load.
    SlowDown,
    /// Schedule an inspection; keep running.
    Inspect,
    /// Stop the machine.
    Stop,
}

/// Who made the decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DecisionSource {
    /// The model answered within the deadline.
    Model,
    /// The model could not answer in time; the fallback answered on time instead.
    Fallback,
    /// A fixed safety rule answered (e.g. over-temperature).
    Rule,
}

/// The model that made (or would have made) a decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelRef {
    /// Model name from its manifest, e.g. `edge`.
    pub name: heapless::String<MAX_MODEL_NAME_LEN>,
    /// Model version from its manifest.
    pub version: heapless::String<MAX_MODEL_VERSION_LEN>,
}

/// The daemon's decision for one [`crate::SensorEvent`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Command {
    /// Always [`COMMAND_FORMAT_VERSION`] (commands are versioned apart from events).
    pub version: u8,
    /// The device the event came from.
    pub device: DeviceId,
    /// The sequence number of the event this answers.
    pub seq: u64,
    /// What to do.
    pub action: Action,
    /// Index of the predicted class in the model's manifest.
    pub class: u8,
    /// Who decided.
    pub source: DecisionSource,
    /// Which model (for a fallback, the fallback's own name and version).
    pub model: ModelRef,
    /// Daemon wall clock when decided, µs since the Unix epoch.
    pub decided_at_us: u64,
    /// Arrival at the daemon → decision, in µs.
    pub latency_us: u32,
}

impl Command {
    /// Checks the version and device id.
    pub fn validate(&self) -> Result<(), DecodeError> {
        if self.version != COMMAND_FORMAT_VERSION {
            return Err(DecodeError::UnsupportedVersion {
                found: self.version,
                oldest: COMMAND_FORMAT_VERSION,
                newest: COMMAND_FORMAT_VERSION,
            });
        }
        validate_device_id(&self.device)
    }

    /// Encodes into `buf` and returns the written prefix.
    pub fn encode<'b>(&self, buf: &'b mut [u8]) -> Result<&'b mut [u8], EncodeError> {
        self.validate().map_err(EncodeError::Invalid)?;
        let capacity = buf.len();
        postcard::to_slice(self, buf).map_err(|_| EncodeError::BufferFull { capacity })
    }

    /// Decodes one command, enforcing the limits. Never panics and never allocates.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        if bytes.len() > MAX_COMMAND_BYTES {
            return Err(DecodeError::Oversized {
                len: bytes.len(),
                max: MAX_COMMAND_BYTES,
            });
        }
        match bytes.first() {
            None => return Err(DecodeError::Truncated { field: "version" }),
            Some(&v) if v != COMMAND_FORMAT_VERSION => {
                return Err(DecodeError::UnsupportedVersion {
                    found: v,
                    oldest: COMMAND_FORMAT_VERSION,
                    newest: COMMAND_FORMAT_VERSION,
                })
            }
            Some(_) => {}
        }
        let (cmd, rest) = postcard::take_from_bytes::<Command>(bytes)
            .map_err(|e| DecodeError::from_postcard(e, "command"))?;
        if !rest.is_empty() {
            return Err(DecodeError::TrailingBytes { count: rest.len() });
        }
        cmd.validate()?;
        Ok(cmd)
    }
}
