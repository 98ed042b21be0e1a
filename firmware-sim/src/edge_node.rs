//! A Sparkplug B edge node (`reflex-sim run|load --format sparkplug`): the fleet's
//! devices behind one gateway, as an industrial MQTT gateway publishes them. Pure: the
//! MQTT side is [`crate::mqtt`].
//!
//! The session: NDEATH is the MQTT last will (with the NBIRTH's `bdSeq`); NBIRTH; one
//! DBIRTH per device naming its metrics with their aliases and datatypes; then DDATA by
//! alias only: `accel/x`, `accel/y`, `accel/z` (aliases 1–3) as FloatArrays of the
//! window's channels in g, `temp` (alias 4) as a Float in °C, stamped with the event's
//! time (ms). At the end a DDEATH per device and the NDEATH, before disconnecting. Every
//! message carries the node's `seq`, 0..=255, wrapping.
//!
//! reflexd reads such a route with `kind = "sparkplug_b"`, `channels = ["accel/x",
//! "accel/y", "accel/z"]`, `temperature = "temp"` and `resolution` = the window's scale,
//! and gets back the sensor's counts exactly (an f32 holds a 16-bit count times the scale
//! to far better than half a count).
//!
//! # Matching commands to events
//!
//! reflexd numbers a Sparkplug route's events itself (Sparkplug's `seq` is per node and
//! wraps), so a command's `seq` is reflexd's number, which the edge node cannot know.
//! [`InOrder`] matches instead by device and order: a device's k-th command answers its
//! k-th DDATA. That is exact when reflexd answers each of a device's events once and in
//! order (one window at a time per device at the fleet's rates). An event refused or
//! left unanswered shifts the later matches of its device by one: the counts of answered
//! and missing events stay right, the latencies of the shifted ones do not. Duplicates
//! (`--duplicate`) are new events to such a route (no dedupe): do not combine them.

use std::collections::HashMap;

use reflex_sparkplug::{
    f32_array, metric::Value, DataType, Message, MessageType, Metric, Payload, Topic,
};
use reflex_wire::SensorEvent;

/// The group the simulated edge node publishes in.
pub const GROUP: &str = "reflex-sim";

/// The edge node's id.
pub const NODE: &str = "sim-edge";

/// The accelerometer metrics, one per window channel (aliases 1, 2, 3).
pub const CHANNEL_METRICS: [&str; 3] = ["accel/x", "accel/y", "accel/z"];

/// The temperature metric (alias 4), °C.
pub const TEMPERATURE_METRIC: &str = "temp";

/// Topic filter of every message of the edge node's group.
pub fn topic_filter() -> String {
    format!("{}/{GROUP}/#", reflex_sparkplug::NAMESPACE)
}

/// The topic of `device`'s DDATA.
pub fn ddata_topic(device: &str) -> String {
    EdgeNode::topic(MessageType::DData, Some(device))
}

/// The id reflexd gives `device` of this edge node: `<edge_node>:<device>`.
pub fn reflex_device(device: &str) -> String {
    format!("{NODE}:{device}")
}

/// One edge node's Sparkplug B session.
#[derive(Debug)]
pub struct EdgeNode {
    seq: u64,
    bd_seq: u64,
}

impl EdgeNode {
    /// A session numbered `bd_seq` (birth/death sequence, ties the NDEATH to its NBIRTH).
    pub fn new(bd_seq: u64) -> Self {
        EdgeNode { seq: 0, bd_seq }
    }

    fn topic(kind: MessageType, device: Option<&str>) -> String {
        Topic {
            group: GROUP,
            message_type: kind,
            edge_node: NODE,
            device,
        }
        .to_topic_string()
    }

    /// The payload's `seq`: 0 for NBIRTH, then +1 per message, wrapping after 255.
    fn next_seq(&mut self) -> u64 {
        let s = self.seq;
        self.seq = (self.seq + 1) % 256;
        s
    }

    fn bd_seq_metric(&self) -> Metric {
        Metric {
            name: Some("bdSeq".into()),
            datatype: Some(DataType::Int64 as u32),
            value: Some(Value::LongValue(self.bd_seq)),
            ..Metric::default()
        }
    }

    /// The NDEATH: the MQTT last will, and the last message of a clean end.
    pub fn ndeath(&self, ts_ms: u64) -> (String, Vec<u8>) {
        let p = Payload {
            timestamp: Some(ts_ms),
            metrics: vec![self.bd_seq_metric()],
            ..Payload::default()
        };
        (Self::topic(MessageType::NDeath, None), p.encode_to_vec())
    }

    /// The NBIRTH (seq 0).
    pub fn nbirth(&mut self, ts_ms: u64) -> (String, Vec<u8>) {
        self.seq = 0;
        let seq = self.next_seq();
        let rebirth = Metric {
            name: Some("Node Control/Rebirth".into()),
            datatype: Some(DataType::Boolean as u32),
            value: Some(Value::BooleanValue(false)),
            ..Metric::default()
        };
        let p = Payload {
            timestamp: Some(ts_ms),
            seq: Some(seq),
            metrics: vec![self.bd_seq_metric(), rebirth],
            ..Payload::default()
        };
        (Self::topic(MessageType::NBirth, None), p.encode_to_vec())
    }

    /// `device`'s DBIRTH: its metrics' names, aliases, datatypes and (empty) values.
    pub fn dbirth(&mut self, device: &str, ts_ms: u64) -> (String, Vec<u8>) {
        let mut metrics: Vec<Metric> = CHANNEL_METRICS
            .iter()
            .enumerate()
            .map(|(c, name)| Metric {
                name: Some((*name).into()),
                alias: Some(c as u64 + 1),
                timestamp: Some(ts_ms),
                datatype: Some(DataType::FloatArray as u32),
                value: Some(Value::BytesValue(Vec::new())),
                ..Metric::default()
            })
            .collect();
        metrics.push(Metric {
            name: Some(TEMPERATURE_METRIC.into()),
            alias: Some(4),
            timestamp: Some(ts_ms),
            datatype: Some(DataType::Float as u32),
            value: Some(Value::FloatValue(0.0)),
            ..Metric::default()
        });
        self.payload(MessageType::DBirth, device, ts_ms, metrics)
    }

    /// `event` as its device's DDATA, metrics by alias only.
    pub fn ddata(&mut self, event: &SensorEvent) -> (String, Vec<u8>) {
        let ts_ms = event.timestamp_us / 1_000;
        let g = event.window.scale;
        let mut metrics: Vec<Metric> = (0..usize::from(event.window.channels))
            .take(CHANNEL_METRICS.len())
            .map(|c| {
                let values: Vec<f32> = event
                    .window
                    .channel(c)
                    .iter()
                    .map(|&v| f32::from(v) * g)
                    .collect();
                Metric {
                    alias: Some(c as u64 + 1),
                    timestamp: Some(ts_ms),
                    value: Some(Value::BytesValue(f32_array(&values))),
                    ..Metric::default()
                }
            })
            .collect();
        metrics.push(Metric {
            alias: Some(4),
            timestamp: Some(ts_ms),
            value: Some(Value::FloatValue(event.temperature_c())),
            ..Metric::default()
        });
        self.payload(MessageType::DData, &event.device, ts_ms, metrics)
    }

    /// `device`'s DDEATH.
    pub fn ddeath(&mut self, device: &str, ts_ms: u64) -> (String, Vec<u8>) {
        self.payload(MessageType::DDeath, device, ts_ms, Vec::new())
    }

    fn payload(
        &mut self,
        kind: MessageType,
        device: &str,
        ts_ms: u64,
        metrics: Vec<Metric>,
    ) -> (String, Vec<u8>) {
        let p = Payload {
            timestamp: Some(ts_ms),
            seq: Some(self.next_seq()),
            metrics,
            ..Payload::default()
        };
        (Self::topic(kind, Some(device)), p.encode_to_vec())
    }
}

/// Matches commands to events by device and order (see the module's doc).
#[derive(Debug, Default)]
pub struct InOrder {
    sent: HashMap<String, u64>,
    answered: HashMap<String, u64>,
}

impl InOrder {
    /// The ordinal (1, 2, …) of `device`'s next event.
    pub fn on_sent(&mut self, device: &str) -> u64 {
        let n = self.sent.entry(device.to_owned()).or_default();
        *n += 1;
        *n
    }

    /// The ordinal of the event `device`'s next command answers.
    pub fn on_command(&mut self, device: &str) -> u64 {
        let n = self.answered.entry(device.to_owned()).or_default();
        *n += 1;
        *n
    }
}

#[cfg(test)]
mod tests {
    use reflex_sparkplug::{decode, numbers, parse_topic};

    use super::*;
    use crate::device::SimDevice;
    use crate::signal::{Condition, Distortion};

    #[test]
    fn a_session_births_the_node_then_its_devices_and_numbers_messages_from_zero() {
        let mut node = EdgeNode::new(3);
        let (t, p) = node.nbirth(1_000);
        assert_eq!(t, "spBv1.0/reflex-sim/NBIRTH/sim-edge");
        let p = decode(&p, 16).unwrap();
        assert_eq!(p.seq, Some(0));
        assert_eq!(p.metrics[0].value, Some(Value::LongValue(3)), "bdSeq");
        let (t, p) = node.dbirth("dev-0001", 1_000);
        assert_eq!(t, "spBv1.0/reflex-sim/DBIRTH/sim-edge/dev-0001");
        let p = decode(&p, 16).unwrap();
        assert_eq!(p.seq, Some(1));
        let named: Vec<(&str, u64, u32)> = p
            .metrics
            .iter()
            .map(|m| {
                (
                    m.name.as_deref().unwrap(),
                    m.alias.unwrap(),
                    m.datatype.unwrap(),
                )
            })
            .collect();
        assert_eq!(
            named,
            [
                ("accel/x", 1, 30),
                ("accel/y", 2, 30),
                ("accel/z", 3, 30),
                ("temp", 4, 9)
            ]
        );
        let (t, p) = node.ndeath(2_000);
        assert_eq!(t, "spBv1.0/reflex-sim/NDEATH/sim-edge");
        assert_eq!(
            decode(&p, 16).unwrap().metrics[0].value,
            Some(Value::LongValue(3))
        );
    }

    #[test]
    fn data_carries_the_windows_channels_by_alias_in_g_and_the_events_time() {
        let event = SimDevice::new(2, Condition::Imbalance, 7)
            .next_event(1_765_000_000_123_456, Distortion::NONE);
        let mut node = EdgeNode::new(0);
        let (t, p) = node.ddata(&event);
        assert_eq!(parse_topic(&t).unwrap().device, Some("dev-0002"));
        let p = decode(&p, 16).unwrap();
        assert_eq!(p.metrics.len(), 4);
        for (c, m) in p.metrics[..3].iter().enumerate() {
            assert_eq!((m.name.as_deref(), m.alias), (None, Some(c as u64 + 1)));
            let n = numbers(DataType::FloatArray as u32, m.value.as_ref()).unwrap();
            let counts: Vec<i16> = (0..n.len())
                .map(|i| (n.get(i) / f64::from(event.window.scale)).round() as i16)
                .collect();
            assert_eq!(counts, event.window.channel(c), "channel {c}");
            assert_eq!(m.timestamp, Some(event.timestamp_us / 1_000));
        }
    }

    #[test]
    fn the_seq_wraps_after_255() {
        let mut node = EdgeNode::new(0);
        node.nbirth(0);
        let seqs: Vec<u64> = (0..300)
            .map(|_| decode(&node.ddeath("d", 0).1, 1).unwrap().seq.unwrap())
            .collect();
        assert_eq!((seqs[0], seqs[254], seqs[255], seqs[299]), (1, 255, 0, 44));
    }

    #[test]
    fn commands_match_a_devices_events_in_order() {
        let mut o = InOrder::default();
        assert_eq!((o.on_sent("a"), o.on_sent("a"), o.on_sent("b")), (1, 2, 1));
        assert_eq!(
            (o.on_command("a"), o.on_command("b"), o.on_command("a")),
            (1, 1, 2)
        );
    }
}
