//! Typed errors for encoding and decoding wire messages.

use core::fmt;

/// Why an encoded message was refused. Every variant names what failed and the bad value.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// The payload is longer than the format allows.
    Oversized {
        /// Payload length in bytes.
        len: usize,
        /// The limit for this message type.
        max: usize,
    },
    /// The payload ended inside `field`.
    Truncated {
        /// The part being read when the bytes ran out.
        field: &'static str,
    },
    /// `field` holds bytes that are not a valid encoding.
    Malformed {
        /// The part that failed to decode.
        field: &'static str,
    },
    /// The version byte is not one this build understands.
    UnsupportedVersion {
        /// The version byte found.
        found: u8,
        /// The oldest version of this message type this build speaks.
        oldest: u8,
        /// The newest version of this message type this build speaks.
        newest: u8,
    },
    /// The device id is empty.
    DeviceIdEmpty,
    /// The device id is longer than [`crate::MAX_DEVICE_ID_LEN`].
    DeviceIdTooLong {
        /// Its length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The device id holds a byte outside `[A-Za-z0-9_.:-]`.
    DeviceIdInvalidByte {
        /// The offending byte.
        byte: u8,
        /// Its position.
        pos: usize,
    },
    /// The window declares more channels than its version allows, or none.
    BadChannelCount {
        /// Channels declared.
        found: usize,
        /// The limit.
        max: usize,
    },
    /// The window declares more samples per channel than its version allows, or none.
    BadSamplesPerChannel {
        /// Samples per channel declared.
        found: usize,
        /// The limit.
        max: usize,
    },
    /// The sample array length differs from channels × samples per channel.
    SampleCountMismatch {
        /// channels × samples per channel.
        declared: usize,
        /// Samples actually present.
        found: usize,
    },
    /// The window is valid for its version but holds more samples than the decoding
    /// type's capacity (`N` of [`crate::SensorEvent::decode_with_capacity`]).
    OverCapacity {
        /// channels × samples per channel.
        samples: usize,
        /// The capacity, in samples.
        capacity: usize,
    },
    /// The scale (physical unit per count) is not a finite positive number.
    InvalidScale,
    /// Bytes remain after a complete message.
    TrailingBytes {
        /// How many.
        count: usize,
    },
    /// The JSON form could not be parsed (std only).
    #[cfg(feature = "std")]
    Json {
        /// serde_json's description, with line and column.
        message: std::string::String,
    },
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Oversized { len, max } => {
                write!(f, "payload of {len} bytes exceeds the limit of {max}")
            }
            Self::Truncated { field } => write!(f, "payload truncated in {field}"),
            Self::Malformed { field } => write!(f, "malformed {field}"),
            Self::UnsupportedVersion {
                found,
                oldest,
                newest,
            } if oldest == newest => {
                write!(
                    f,
                    "unsupported format version {found} (this build speaks {newest})"
                )
            }
            Self::UnsupportedVersion {
                found,
                oldest,
                newest,
            } => {
                write!(
                    f,
                    "unsupported format version {found} (this build speaks {oldest}..={newest})"
                )
            }
            Self::DeviceIdEmpty => write!(f, "device id is empty"),
            Self::DeviceIdTooLong { len, max } => {
                write!(f, "device id of {len} bytes exceeds the limit of {max}")
            }
            Self::DeviceIdInvalidByte { byte, pos } => {
                write!(
                    f,
                    "device id has invalid byte 0x{byte:02x} at position {pos}"
                )
            }
            Self::BadChannelCount { found, max } => {
                write!(f, "window declares {found} channels (allowed 1..={max})")
            }
            Self::BadSamplesPerChannel { found, max } => {
                write!(
                    f,
                    "window declares {found} samples per channel (allowed 1..={max})"
                )
            }
            Self::SampleCountMismatch { declared, found } => {
                write!(f, "window declares {declared} samples but carries {found}")
            }
            Self::OverCapacity { samples, capacity } => {
                write!(
                    f,
                    "window of {samples} samples exceeds this decoder's capacity of {capacity}"
                )
            }
            Self::InvalidScale => write!(f, "window scale is not a finite positive number"),
            Self::TrailingBytes { count } => {
                write!(f, "{count} trailing bytes after a complete message")
            }
            #[cfg(feature = "std")]
            Self::Json { message } => write!(f, "invalid json: {message}"),
        }
    }
}

impl core::error::Error for DecodeError {}

impl DecodeError {
    /// A short stable name for the failure, fit for a metrics label.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Oversized { .. } => "oversized",
            Self::Truncated { .. } => "truncated",
            Self::Malformed { .. } => "malformed",
            Self::UnsupportedVersion { .. } => "unsupported_version",
            Self::DeviceIdEmpty
            | Self::DeviceIdTooLong { .. }
            | Self::DeviceIdInvalidByte { .. } => "bad_device_id",
            Self::BadChannelCount { .. }
            | Self::BadSamplesPerChannel { .. }
            | Self::SampleCountMismatch { .. }
            | Self::OverCapacity { .. }
            | Self::InvalidScale => "bad_window",
            Self::TrailingBytes { .. } => "trailing_bytes",
            #[cfg(feature = "std")]
            Self::Json { .. } => "bad_json",
        }
    }

    pub(crate) fn from_postcard(err: postcard::Error, field: &'static str) -> Self {
        match err {
            postcard::Error::DeserializeUnexpectedEnd => Self::Truncated { field },
            _ => Self::Malformed { field },
        }
    }
}

/// Why a message could not be encoded.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EncodeError {
    /// The caller's buffer is too small for the encoded message.
    BufferFull {
        /// The buffer's length.
        capacity: usize,
    },
    /// The message breaks a wire limit and would be refused by the decoder.
    Invalid(DecodeError),
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BufferFull { capacity } => {
                write!(f, "encode buffer of {capacity} bytes is too small")
            }
            Self::Invalid(e) => write!(f, "message is invalid: {e}"),
        }
    }
}

impl core::error::Error for EncodeError {}
