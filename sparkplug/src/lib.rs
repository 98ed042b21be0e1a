//! Eclipse Sparkplug B for reflex: the protobuf payload (`Payload`, `Metric`), the metric
//! datatypes (with Sparkplug 3.0's arrays, packed little-endian in `bytes_value`) and the
//! topic namespace `spBv1.0/<group>/<TYPE>/<edge_node>[/<device>]`. Shared by reflexd's
//! input adapter and reflex-sim's edge node.
//!
//! The messages are Eclipse Tahu's `sparkplug_b.proto` (proto2) written by hand with
//! `prost`'s derive, so there is no protoc and no build script. prost is the protobuf
//! implementation of the Rust ecosystem (tokio-rs, used by tonic and already in our tree
//! through tract): well kept, no unsafe parsing of ours, and its decoder checks every
//! length against the bytes it has before it allocates.
//!
//! Only the parts reflex reads are declared: a metric's `metadata` (8), `properties` (9),
//! and DataSet, Template and extension values (17, 18, 19) are skipped by the decoder as
//! unknown fields, so such a metric decodes with no [`metric::Value`].
//!
//! [`decode`] bounds a payload's metric count before prost allocates any of them: each
//! `Metric` costs ~150 bytes in memory for as little as 2 bytes on the wire.

use prost::bytes::Buf;
use prost::encoding::{decode_key, skip_field, DecodeContext};
pub use prost::Message;

/// The Sparkplug B topic namespace (the first topic level).
pub const NAMESPACE: &str = "spBv1.0";

/// A Sparkplug B payload (`org.eclipse.tahu.protobuf.Payload`).
#[derive(Clone, PartialEq, Message)]
pub struct Payload {
    /// When the message was sent, ms since the Unix epoch.
    #[prost(uint64, optional, tag = "1")]
    pub timestamp: Option<u64>,
    /// The metrics.
    #[prost(message, repeated, tag = "2")]
    pub metrics: Vec<Metric>,
    /// Message sequence number, 0..=255 per edge node, wrapping.
    #[prost(uint64, optional, tag = "3")]
    pub seq: Option<u64>,
    /// Schema identifier.
    #[prost(string, optional, tag = "4")]
    pub uuid: Option<String>,
    /// Opaque body.
    #[prost(bytes = "vec", optional, tag = "5")]
    pub body: Option<Vec<u8>>,
}

/// One metric of a payload (`Payload.Metric`).
#[derive(Clone, PartialEq, Message)]
pub struct Metric {
    /// Name: in births; optional in data messages once aliased.
    #[prost(string, optional, tag = "1")]
    pub name: Option<String>,
    /// Alias, tied to the name by the birth.
    #[prost(uint64, optional, tag = "2")]
    pub alias: Option<u64>,
    /// When the value was acquired, ms since the Unix epoch.
    #[prost(uint64, optional, tag = "3")]
    pub timestamp: Option<u64>,
    /// [`DataType`] number: required in births, optional in data messages.
    #[prost(uint32, optional, tag = "4")]
    pub datatype: Option<u32>,
    /// Historical data (not a live value).
    #[prost(bool, optional, tag = "5")]
    pub is_historical: Option<bool>,
    /// Not to be stored as a tag.
    #[prost(bool, optional, tag = "6")]
    pub is_transient: Option<bool>,
    /// The value is null.
    #[prost(bool, optional, tag = "7")]
    pub is_null: Option<bool>,
    /// The value.
    #[prost(oneof = "metric::Value", tags = "10, 11, 12, 13, 14, 15, 16")]
    pub value: Option<metric::Value>,
}

/// The value of a [`Metric`].
pub mod metric {
    /// `Metric.value` (DataSet, Template and extension values are not declared).
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Value {
        /// Int8, Int16, Int32 (two's complement in 32 bits), UInt8, UInt16, UInt32.
        #[prost(uint32, tag = "10")]
        IntValue(u32),
        /// Int64 (two's complement), UInt64, DateTime.
        #[prost(uint64, tag = "11")]
        LongValue(u64),
        /// Float.
        #[prost(float, tag = "12")]
        FloatValue(f32),
        /// Double.
        #[prost(double, tag = "13")]
        DoubleValue(f64),
        /// Boolean.
        #[prost(bool, tag = "14")]
        BooleanValue(bool),
        /// String, Text, UUID.
        #[prost(string, tag = "15")]
        StringValue(String),
        /// Bytes, File, and the array types (packed little-endian).
        #[prost(bytes = "vec", tag = "16")]
        BytesValue(Vec<u8>),
    }

    impl Value {
        /// What it holds, for messages.
        pub fn kind(&self) -> &'static str {
            match self {
                Value::IntValue(_) => "int_value",
                Value::LongValue(_) => "long_value",
                Value::FloatValue(_) => "float_value",
                Value::DoubleValue(_) => "double_value",
                Value::BooleanValue(_) => "boolean_value",
                Value::StringValue(_) => "string_value",
                Value::BytesValue(_) => "bytes_value",
            }
        }
    }
}

macro_rules! datatypes {
    ($($name:ident = $n:literal,)*) => {
        /// Sparkplug B metric datatypes (3.0, with the array types).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(u32)]
        pub enum DataType {
            $(
                #[allow(missing_docs)]
                $name = $n,
            )*
        }

        impl DataType {
            /// The datatype numbered `n`, if Sparkplug defines one.
            pub fn from_u32(n: u32) -> Option<DataType> {
                match n {
                    $($n => Some(DataType::$name),)*
                    _ => None,
                }
            }

            /// Its name in the specification.
            pub fn name(self) -> &'static str {
                match self {
                    $(DataType::$name => stringify!($name),)*
                }
            }
        }
    };
}

datatypes! {
    Unknown = 0, Int8 = 1, Int16 = 2, Int32 = 3, Int64 = 4, UInt8 = 5, UInt16 = 6,
    UInt32 = 7, UInt64 = 8, Float = 9, Double = 10, Boolean = 11, String = 12,
    DateTime = 13, Text = 14, Uuid = 15, DataSet = 16, Bytes = 17, File = 18,
    Template = 19, PropertySet = 20, PropertySetList = 21, Int8Array = 22,
    Int16Array = 23, Int32Array = 24, Int64Array = 25, UInt8Array = 26,
    UInt16Array = 27, UInt32Array = 28, UInt64Array = 29, FloatArray = 30,
    DoubleArray = 31, BooleanArray = 32, StringArray = 33, DateTimeArray = 34,
}

impl DataType {
    /// Bytes per element of a numeric array type (None: not a numeric array).
    pub fn array_element_bytes(self) -> Option<usize> {
        use DataType::*;
        match self {
            Int8Array | UInt8Array => Some(1),
            Int16Array | UInt16Array => Some(2),
            Int32Array | UInt32Array | FloatArray => Some(4),
            Int64Array | UInt64Array | DoubleArray => Some(8),
            _ => None,
        }
    }

    /// Whether it is a numeric scalar (integers, Float, Double; not Boolean or DateTime).
    pub fn is_numeric_scalar(self) -> bool {
        use DataType::*;
        matches!(
            self,
            Int8 | Int16 | Int32 | Int64 | UInt8 | UInt16 | UInt32 | UInt64 | Float | Double
        )
    }
}

/// A metric's value as numbers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Numbers<'a> {
    /// One number.
    Scalar(f64),
    /// A numeric array: `len` elements of `datatype`, packed little-endian in `bytes`.
    Array {
        /// The array type.
        datatype: DataType,
        /// Its bytes (`len × element size`).
        bytes: &'a [u8],
        /// Elements.
        len: usize,
    },
}

impl Numbers<'_> {
    /// Element `i` of an array (`i < len`), or the scalar.
    pub fn get(&self, i: usize) -> f64 {
        let (datatype, bytes) = match *self {
            Numbers::Scalar(v) => return v,
            Numbers::Array {
                datatype, bytes, ..
            } => (datatype, bytes),
        };
        let size = datatype.array_element_bytes().unwrap_or(1);
        let b = &bytes[i * size..(i + 1) * size];
        let mut w = [0u8; 8];
        w[..size].copy_from_slice(b);
        let [b0, b1, b2, b3, ..] = w;
        use DataType::*;
        match datatype {
            Int8Array => f64::from(b0 as i8),
            UInt8Array => f64::from(b0),
            Int16Array => f64::from(i16::from_le_bytes([b0, b1])),
            UInt16Array => f64::from(u16::from_le_bytes([b0, b1])),
            Int32Array => f64::from(i32::from_le_bytes([b0, b1, b2, b3])),
            UInt32Array => f64::from(u32::from_le_bytes([b0, b1, b2, b3])),
            FloatArray => f64::from(f32::from_le_bytes([b0, b1, b2, b3])),
            Int64Array => i64::from_le_bytes(w) as f64,
            UInt64Array => u64::from_le_bytes(w) as f64,
            _ => f64::from_le_bytes(w),
        }
    }

    /// How many numbers (1 for a scalar).
    pub fn len(&self) -> usize {
        match self {
            Numbers::Scalar(_) => 1,
            Numbers::Array { len, .. } => *len,
        }
    }

    /// Whether it is an empty array.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Why a metric's value is not numbers of its datatype.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    /// The datatype is not numeric (String, Boolean, DataSet, …) or not defined.
    #[error("datatype {0} is not a number or a numeric array")]
    NotNumeric(String),
    /// The value field does not hold what the datatype says.
    #[error("datatype {datatype} holds {found}")]
    Mismatch {
        /// The datatype's name.
        datatype: &'static str,
        /// The value field present (or "no value").
        found: &'static str,
    },
    /// An array's bytes are not a whole number of elements.
    #[error("{datatype} of {len} bytes is not a whole number of {size}-byte elements")]
    Ragged {
        /// The datatype's name.
        datatype: &'static str,
        /// Bytes.
        len: usize,
        /// Element size.
        size: usize,
    },
}

/// The numbers `value` holds as `datatype` (a [`DataType`] number). Integers in
/// `int_value`/`long_value` are read as the specification stores them: Int8/16/32 as
/// 32-bit two's complement, Int64 as 64-bit two's complement.
pub fn numbers(datatype: u32, value: Option<&metric::Value>) -> Result<Numbers<'_>, ValueError> {
    use metric::Value as V;
    use DataType::*;
    let Some(dt) = DataType::from_u32(datatype) else {
        return Err(ValueError::NotNumeric(format!("#{datatype}")));
    };
    let mismatch = || ValueError::Mismatch {
        datatype: dt.name(),
        found: value.map_or("no value", V::kind),
    };
    if let Some(size) = dt.array_element_bytes() {
        let Some(V::BytesValue(bytes)) = value else {
            return Err(mismatch());
        };
        if bytes.len() % size != 0 {
            return Err(ValueError::Ragged {
                datatype: dt.name(),
                len: bytes.len(),
                size,
            });
        }
        return Ok(Numbers::Array {
            datatype: dt,
            bytes,
            len: bytes.len() / size,
        });
    }
    if !dt.is_numeric_scalar() {
        return Err(ValueError::NotNumeric(dt.name().to_owned()));
    }
    let v = match (dt, value) {
        (Int8 | Int16 | Int32, Some(V::IntValue(v))) => f64::from(*v as i32),
        (UInt8 | UInt16 | UInt32, Some(V::IntValue(v))) => f64::from(*v),
        (Int64, Some(V::LongValue(v))) => *v as i64 as f64,
        (UInt64, Some(V::LongValue(v))) => *v as f64,
        (Float, Some(V::FloatValue(v))) => f64::from(*v),
        (Double, Some(V::DoubleValue(v))) => *v,
        _ => return Err(mismatch()),
    };
    Ok(Numbers::Scalar(v))
}

/// `values` as a FloatArray's `bytes_value`.
pub fn f32_array(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// `values` as a DoubleArray's `bytes_value`.
pub fn f64_array(values: &[f64]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// `values` as an Int16Array's `bytes_value`.
pub fn i16_array(values: &[i16]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// Why a payload did not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    /// Not a protobuf `Payload`.
    #[error("not a Sparkplug B payload: {0}")]
    Protobuf(String),
    /// More metrics than allowed.
    #[error("more than {max} metrics in one payload")]
    TooManyMetrics {
        /// The bound.
        max: usize,
    },
}

/// Decodes a payload of at most `max_metrics` metrics. The metrics are counted by a
/// scan of the top-level fields (no allocation) before prost decodes anything.
pub fn decode(mut bytes: &[u8], max_metrics: usize) -> Result<Payload, PayloadError> {
    let whole = bytes;
    let bad = |e: prost::DecodeError| PayloadError::Protobuf(e.to_string());
    let mut metrics = 0usize;
    while bytes.has_remaining() {
        let (tag, wire_type) = decode_key(&mut bytes).map_err(bad)?;
        if tag == 2 {
            metrics += 1;
            if metrics > max_metrics {
                return Err(PayloadError::TooManyMetrics { max: max_metrics });
            }
        }
        skip_field(wire_type, tag, &mut bytes, DecodeContext::default()).map_err(bad)?;
    }
    Payload::decode(whole).map_err(bad)
}

/// Sparkplug B message types (the third topic level).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MessageType {
    /// Edge node birth certificate.
    NBirth,
    /// Edge node death certificate.
    NDeath,
    /// Edge node data.
    NData,
    /// Command to an edge node.
    NCmd,
    /// Device birth certificate.
    DBirth,
    /// Device death certificate.
    DDeath,
    /// Device data.
    DData,
    /// Command to a device.
    DCmd,
}

impl MessageType {
    /// The type named `s` (`"NBIRTH"`, `"DDATA"`, …).
    pub fn parse(s: &str) -> Option<MessageType> {
        use MessageType::*;
        Some(match s {
            "NBIRTH" => NBirth,
            "NDEATH" => NDeath,
            "NDATA" => NData,
            "NCMD" => NCmd,
            "DBIRTH" => DBirth,
            "DDEATH" => DDeath,
            "DDATA" => DData,
            "DCMD" => DCmd,
            _ => return None,
        })
    }

    /// Its name on the topic.
    pub fn as_str(self) -> &'static str {
        use MessageType::*;
        match self {
            NBirth => "NBIRTH",
            NDeath => "NDEATH",
            NData => "NDATA",
            NCmd => "NCMD",
            DBirth => "DBIRTH",
            DDeath => "DDEATH",
            DData => "DDATA",
            DCmd => "DCMD",
        }
    }

    /// Whether the topic names a device (D* types).
    pub fn is_device(self) -> bool {
        use MessageType::*;
        matches!(self, DBirth | DDeath | DData | DCmd)
    }
}

/// An edge node's or device's topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Topic<'a> {
    /// Group id.
    pub group: &'a str,
    /// Message type.
    pub message_type: MessageType,
    /// Edge node id.
    pub edge_node: &'a str,
    /// Device id (D* types only).
    pub device: Option<&'a str>,
}

impl Topic<'_> {
    /// The topic's text.
    pub fn to_topic_string(&self) -> String {
        let mut s = format!(
            "{NAMESPACE}/{}/{}/{}",
            self.group,
            self.message_type.as_str(),
            self.edge_node
        );
        if let Some(d) = self.device {
            s.push('/');
            s.push_str(d);
        }
        s
    }
}

/// Why a topic is not a Sparkplug B edge node or device topic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// The first level is not `spBv1.0`.
    #[error("topic does not start with {NAMESPACE}/")]
    Namespace,
    /// The third level is not a message type.
    #[error("message type {0:?} is not a Sparkplug B type")]
    MessageType(String),
    /// Wrong number of levels for the message type.
    #[error("a {kind} topic has {expected} levels, this one {found}")]
    Levels {
        /// The message type.
        kind: &'static str,
        /// Levels expected.
        expected: usize,
        /// Levels found.
        found: usize,
    },
    /// An empty id.
    #[error("empty {0} id")]
    EmptyId(&'static str),
}

/// Parses `spBv1.0/<group>/<TYPE>/<edge_node>[/<device>]`.
pub fn parse_topic(topic: &str) -> Result<Topic<'_>, TopicError> {
    let found = topic.split('/').count();
    let mut levels = topic.split('/');
    if levels.next() != Some(NAMESPACE) {
        return Err(TopicError::Namespace);
    }
    let (Some(group), Some(kind)) = (levels.next(), levels.next()) else {
        return Err(TopicError::Levels {
            kind: "Sparkplug B",
            expected: 4,
            found,
        });
    };
    let message_type =
        MessageType::parse(kind).ok_or_else(|| TopicError::MessageType(kind.to_owned()))?;
    let expected = if message_type.is_device() { 5 } else { 4 };
    if found != expected {
        return Err(TopicError::Levels {
            kind: message_type.as_str(),
            expected,
            found,
        });
    }
    let edge_node = levels.next().unwrap_or_default();
    let device = levels.next();
    for (what, id) in [
        ("group", Some(group)),
        ("edge node", Some(edge_node)),
        ("device", device),
    ] {
        if id == Some("") {
            return Err(TopicError::EmptyId(what));
        }
    }
    Ok(Topic {
        group,
        message_type,
        edge_node,
        device,
    })
}

#[cfg(test)]
mod tests;
