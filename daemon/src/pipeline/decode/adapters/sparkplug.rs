//! The Sparkplug B adapter (`[routes.input] kind = "sparkplug_b"`): a message on
//! `spBv1.0/<group>/<TYPE>/<edge_node>[/<device>]` becomes a [`Reading`], or changes
//! what is known of an edge node's devices. Pure: no I/O, no clock.
//!
//! # Contracts
//!
//! - **Device id.** A device's events are reflex device `<edge_node>:<device>` (DDATA), an
//!   edge node's own metrics reflex device `<edge_node>` (NDATA): within the DeviceId
//!   rules (≤ 32 bytes of `[A-Za-z0-9_.:-]`), and an edge node id holds no `:` (so the
//!   mapping is one to one); otherwise `bad_device_id`. The group is not in the id: a
//!   route's filter names one group (`config::input`).
//! - **Births** (NBIRTH, DBIRTH) record, for the route's metrics only (`channels`,
//!   `temperature`: at most 5 names), each one's alias and datatype; a birth of a
//!   configured metric with a non-numeric datatype is refused (`wrong_type`). An NBIRTH
//!   also forgets every device of the node (a node that is born again births its devices
//!   again). At most `cap` devices (`devices.max_tracked`) are remembered: the least
//!   recently born or fed is evicted (counted, [`Births::evictions`]).
//! - **Deaths** (NDEATH, DDEATH) forget the device's (the node's and all its devices')
//!   aliases; the decode stage also drops their window assembly buffers. Commands (NCMD,
//!   DCMD) are not data. None of these is answered.
//! - **Data** (NDATA, DDATA): each configured metric is found by name, or by an alias its
//!   birth recorded. Aliases with no birth are refused (`unknown_alias`): reflexd does not
//!   ask for a rebirth (NCMD), it refuses such data until the next birth. A configured
//!   metric absent is `missing_field`; a value that is not numbers of its datatype
//!   `wrong_type`; null, NaN, ±∞ or beyond the counts' range `bad_value`. Numeric arrays
//!   (Int8…UInt64, Float, Double arrays, packed little-endian in `bytes_value`) are whole
//!   windows, one array per channel, of equal length ≤ the wire's 1024 samples (checked
//!   from the byte length, before any sample is read); scalars are single readings for window assembly.
//! - **Time.** The first channel's metric timestamp, else the payload's (ms since the
//!   epoch), else the arrival time.
//! - **Sequence.** Sparkplug's `seq` (0..=255 per edge node, wrapping, across all its
//!   devices) does not number a device's events: reflexd numbers them itself (the decode
//!   stage's `Numberer`) and the route is not deduped.
//! - **Bounds.** The payload is checked against `max_payload_bytes` before anything is
//!   parsed, and its metric count against [`MAX_METRICS`] before prost allocates them.

use std::collections::{BTreeMap, HashMap};

use reflex_sparkplug::{self as spb, DataType, MessageType, Metric, Numbers, Payload};
use reflex_wire::{validate_device_id, DecodeError, DeviceId, MAX_SAMPLES_PER_CHANNEL};

use super::{centi_c, AdaptError, Mapping, Reading};

/// Most metrics read in one payload (a larger one is `oversized`).
pub const MAX_METRICS: usize = 4096;

/// Latest timestamp accepted, ms since the epoch (the year 2500).
const MAX_TIMESTAMP_MS: u64 = 17_000_000_000_000;

/// What one Sparkplug B message did.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Data: a reading of the device it names.
    Data(Reading),
    /// A birth, death or command: nothing to answer. `forgotten`: the devices whose
    /// aliases (and window buffers) are gone.
    Control {
        /// The message's type.
        message_type: MessageType,
        /// Devices forgotten.
        forgotten: Vec<DeviceId>,
    },
}

/// What a birth said of one configured metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Known {
    alias: Option<u64>,
    datatype: u32,
}

#[derive(Debug)]
struct Table {
    /// By configured metric (channels, then temperature).
    known: Vec<Option<Known>>,
    tick: u64,
}

/// The births a route has seen: per device, its configured metrics' aliases and
/// datatypes, bounded in count.
#[derive(Debug)]
pub struct Births {
    tables: HashMap<DeviceId, Table>,
    /// Recency index: tick → device, oldest first.
    recency: BTreeMap<u64, DeviceId>,
    tick: u64,
    cap: usize,
    /// Devices evicted to stay within the bound, in all.
    pub evictions: u64,
}

impl Births {
    /// Remembers at most `cap` (>= 1) devices.
    pub fn new(cap: usize) -> Self {
        Births {
            tables: HashMap::new(),
            recency: BTreeMap::new(),
            tick: 0,
            cap: cap.max(1),
            evictions: 0,
        }
    }

    /// Devices remembered now.
    pub fn devices(&self) -> usize {
        self.tables.len()
    }

    /// Reads one message published on `topic`, by the route's `mapping`.
    pub fn read(
        &mut self,
        mapping: &Mapping,
        topic: &str,
        payload: &[u8],
    ) -> Result<Outcome, AdaptError> {
        if payload.len() > mapping.max_payload_bytes {
            return Err(AdaptError::Oversized {
                len: payload.len(),
                max: mapping.max_payload_bytes,
            });
        }
        let t = spb::parse_topic(topic).map_err(|e| AdaptError::BadTopic {
            topic: topic.chars().take(128).collect(),
            why: e.to_string(),
        })?;
        let device = device_id(t.edge_node, t.device)?;
        let control = |forgotten| {
            Ok(Outcome::Control {
                message_type: t.message_type,
                forgotten,
            })
        };
        let forgotten = match t.message_type {
            MessageType::NCmd | MessageType::DCmd => return control(Vec::new()),
            MessageType::NDeath => return control(self.forget_node(t.edge_node)),
            MessageType::DDeath => return control(self.forget(&device).into_iter().collect()),
            MessageType::NBirth => self.forget_node(t.edge_node),
            MessageType::DBirth | MessageType::NData | MessageType::DData => Vec::new(),
        };
        let payload = spb::decode(payload, MAX_METRICS).map_err(|e| match e {
            spb::PayloadError::TooManyMetrics { max } => AdaptError::TooManyMetrics { max },
            e => AdaptError::BadProtobuf(e.to_string()),
        })?;
        match t.message_type {
            MessageType::NBirth | MessageType::DBirth => {
                self.birth(mapping, device, &payload)?;
                control(forgotten)
            }
            _ => self.data(mapping, device, &payload).map(Outcome::Data),
        }
    }

    /// Forgets `device`; it, if it was known.
    fn forget(&mut self, device: &DeviceId) -> Option<DeviceId> {
        let t = self.tables.remove(device)?;
        self.recency.remove(&t.tick);
        Some(device.clone())
    }

    /// Forgets edge node `node` and every device of it.
    fn forget_node(&mut self, node: &str) -> Vec<DeviceId> {
        let of_node: Vec<DeviceId> = self
            .tables
            .keys()
            .filter(|d| {
                d.as_str() == node
                    || d.as_str()
                        .strip_prefix(node)
                        .is_some_and(|rest| rest.starts_with(':'))
            })
            .cloned()
            .collect();
        of_node.iter().filter_map(|d| self.forget(d)).collect()
    }

    /// Marks `device` as just used; its table, if known.
    fn touch(&mut self, device: &DeviceId) -> Option<&Table> {
        self.tick += 1;
        let t = self.tables.get_mut(device)?;
        self.recency.remove(&t.tick);
        t.tick = self.tick;
        self.recency.insert(self.tick, device.clone());
        Some(t)
    }

    fn birth(
        &mut self,
        mapping: &Mapping,
        device: DeviceId,
        payload: &Payload,
    ) -> Result<(), AdaptError> {
        let names = names(mapping);
        let mut known = vec![None; names.len()];
        for metric in &payload.metrics {
            let Some(slot) = metric
                .name
                .as_deref()
                .and_then(|n| names.iter().position(|c| *c == n))
            else {
                continue;
            };
            let datatype = metric.datatype.unwrap_or(DataType::Unknown as u32);
            let numeric = DataType::from_u32(datatype)
                .is_some_and(|d| d.is_numeric_scalar() || d.array_element_bytes().is_some());
            if !numeric {
                return Err(AdaptError::MetricValue {
                    metric: names[slot].to_owned(),
                    source: spb::ValueError::NotNumeric(
                        DataType::from_u32(datatype)
                            .map_or_else(|| format!("#{datatype}"), |d| d.name().to_owned()),
                    ),
                });
            }
            known[slot] = Some(Known {
                alias: metric.alias,
                datatype,
            });
        }
        self.forget(&device);
        if self.tables.len() >= self.cap {
            if let Some((_, oldest)) = self.recency.pop_first() {
                self.tables.remove(&oldest);
                self.evictions += 1;
            }
        }
        self.tick += 1;
        self.recency.insert(self.tick, device.clone());
        self.tables.insert(
            device,
            Table {
                known,
                tick: self.tick,
            },
        );
        Ok(())
    }

    fn data(
        &mut self,
        mapping: &Mapping,
        device: DeviceId,
        payload: &Payload,
    ) -> Result<Reading, AdaptError> {
        let names = names(mapping);
        let table = self.touch(&device);
        // The metric of each configured name, and the first alias no birth explains.
        let mut found: Vec<Option<(&Metric, Option<Known>)>> = vec![None; names.len()];
        let mut unknown_alias = None;
        for metric in &payload.metrics {
            let slot = match (metric.name.as_deref(), metric.alias, table) {
                (Some(name), _, _) => names.iter().position(|c| *c == name),
                (None, Some(alias), None) => {
                    unknown_alias.get_or_insert(alias);
                    None
                }
                (None, Some(alias), Some(t)) => t
                    .known
                    .iter()
                    .position(|k| k.is_some_and(|k| k.alias == Some(alias))),
                (None, None, _) => None,
            };
            if let Some(slot) = slot {
                let known = table.and_then(|t| t.known[slot]);
                found[slot].get_or_insert((metric, known));
            }
        }
        let mut values = Vec::with_capacity(names.len());
        for (slot, name) in names.iter().enumerate() {
            let Some((metric, known)) = found[slot] else {
                return Err(match unknown_alias {
                    Some(alias) => AdaptError::UnknownAlias {
                        device: device.to_string(),
                        alias,
                    },
                    None => AdaptError::MissingField((*name).to_owned()),
                });
            };
            values.push((metric, numbers_of(name, metric, known)?));
        }
        let temperature_centi_c = match mapping.temperature.as_deref() {
            None => 0,
            Some(name) => match values.pop() {
                Some((_, Numbers::Scalar(t))) => centi_c(t, name)?,
                _ => {
                    return Err(AdaptError::WrongType {
                        field: name.to_owned(),
                        found: "an array",
                        expected: "a number (°C)",
                    })
                }
            },
        };
        let channels = values.len();
        let samples = values.first().map_or(0, |(_, n)| n.len());
        for ((_, n), name) in values.iter().zip(&names) {
            if n.is_empty() || n.len() > MAX_SAMPLES_PER_CHANNEL {
                return Err(AdaptError::BadWindow(format!(
                    "metric {name:?} has {} samples, expected 1..={MAX_SAMPLES_PER_CHANNEL}",
                    n.len()
                )));
            }
            if n.len() != samples {
                return Err(AdaptError::BadWindow(format!(
                    "metric {name:?} has {} samples, the channels before it {samples}",
                    n.len()
                )));
            }
            if matches!(n, Numbers::Scalar(_)) && !mapping.scalars {
                return Err(AdaptError::WrongType {
                    field: (*name).to_owned(),
                    found: "a scalar",
                    expected: "a numeric array (a scalar needs [routes.input.assemble])",
                });
            }
        }
        let mut counts = Vec::with_capacity(channels * samples);
        for ((_, n), name) in values.iter().zip(&names) {
            for i in 0..samples {
                counts.push(mapping.count(n.get(i), || format!("{name}[{i}]"))?);
            }
        }
        let ms = values
            .first()
            .and_then(|(m, _)| m.timestamp)
            .or(payload.timestamp);
        let timestamp_us = match ms {
            None => None,
            Some(ms) if ms <= MAX_TIMESTAMP_MS => Some(ms * 1_000),
            Some(ms) => {
                return Err(AdaptError::BadValue {
                    field: format!("{} timestamp", names[0]),
                    value: ms.to_string(),
                    why: "is not a time in ms between 1970 and 2500".into(),
                })
            }
        };
        Ok(Reading {
            device: Some(device),
            seq: None,
            timestamp_us,
            channels,
            samples,
            counts,
            temperature_centi_c,
        })
    }
}

/// The route's metric names: its channels, then its temperature (if any).
fn names(mapping: &Mapping) -> Vec<&str> {
    mapping
        .channels
        .iter()
        .map(String::as_str)
        .chain(mapping.temperature.as_deref())
        .collect()
}

/// The numbers a data message's `metric` carries, typed by its own datatype, else its
/// birth's, else its value field (a data message may omit the datatype).
fn numbers_of<'a>(
    name: &str,
    metric: &'a Metric,
    known: Option<Known>,
) -> Result<Numbers<'a>, AdaptError> {
    use spb::metric::Value;
    if metric.is_null == Some(true) {
        return Err(AdaptError::BadValue {
            field: name.to_owned(),
            value: "null".into(),
            why: "is null (is_null)".into(),
        });
    }
    let datatype = metric
        .datatype
        .or(known.map(|k| k.datatype))
        .unwrap_or(match metric.value {
            Some(Value::FloatValue(_)) => DataType::Float as u32,
            Some(Value::DoubleValue(_)) => DataType::Double as u32,
            Some(Value::IntValue(_)) => DataType::Int32 as u32,
            Some(Value::LongValue(_)) => DataType::Int64 as u32,
            _ => DataType::Unknown as u32,
        });
    spb::numbers(datatype, metric.value.as_ref()).map_err(|source| AdaptError::MetricValue {
        metric: name.to_owned(),
        source,
    })
}

/// The reflex device of edge node `node`'s device `device` (or of the node itself).
pub fn device_id(node: &str, device: Option<&str>) -> Result<DeviceId, AdaptError> {
    let id = match device {
        Some(d) => format!("{node}:{d}"),
        None => node.to_owned(),
    };
    let bad = |source| AdaptError::BadDevice {
        id: id.chars().take(64).collect(),
        source,
    };
    if let Some(pos) = node.bytes().position(|b| b == b':') {
        return Err(bad(DecodeError::DeviceIdInvalidByte { byte: b':', pos }));
    }
    validate_device_id(&id).map_err(bad)?;
    DeviceId::try_from(id.as_str()).map_err(|_| bad(DecodeError::DeviceIdEmpty))
}

#[cfg(test)]
mod tests;
