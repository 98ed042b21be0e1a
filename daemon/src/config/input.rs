//! `[routes.input]`: how a route reads its sensors' payloads (an input adapter), and
//! `[routes.input.assemble]`: how one-reading-per-message streams become windows.
//!
//! `kind = "reflex"` (the default, and what a route without `[routes.input]` gets) is
//! reflex's own `SensorEvent` in the route's `format`, decoded exactly as before. `json`
//! and `binary` map a foreign payload onto the same internal event: samples are physical
//! values (`raw × scale + offset`), turned into the event's i16 counts at `resolution`
//! units per count (see `pipeline::decode::adapters` for why counts, not floats).
//!
//! Which fields apply to which kind is checked by [`InputConfig::validate`] (all problems
//! at once, each with its field path and value); the pure mapping lives in
//! `pipeline::decode::adapters`, the window assembly in `pipeline::decode::assembly`.

use serde::{Deserialize, Serialize};

use super::error::Problems;

/// Which adapter reads a route's payloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum InputKind {
    /// reflex's own `SensorEvent`, in the route's `format` (postcard or JSON).
    #[default]
    Reflex,
    /// Any JSON object; fields picked by JSON pointers.
    Json,
    /// Little-endian arrays of `f32` or `i16` after a fixed-length header.
    Binary,
    /// Eclipse Sparkplug B (protobuf) from edge nodes: births, data and deaths on
    /// `spBv1.0/<group>/<TYPE>/<edge_node>[/<device>]`; metrics picked by name.
    #[serde(rename = "sparkplug_b")]
    SparkplugB,
}

/// Element type of a binary payload's samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SampleType {
    /// IEEE 754 single precision, little-endian (4 bytes).
    #[default]
    F32,
    /// Signed 16-bit integer, little-endian (2 bytes).
    I16,
}

impl SampleType {
    /// Bytes per sample.
    pub fn size(self) -> usize {
        match self {
            SampleType::F32 => 4,
            SampleType::I16 => 2,
        }
    }
}

/// Order of a binary payload's samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    /// Channel-major: every sample of channel 0, then of channel 1, …
    #[default]
    Planar,
    /// Sample-major: sample 0 of every channel, then sample 1, …
    Interleaved,
}

/// Unit of a timestamp field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TimeUnit {
    /// Seconds (a number, fractions allowed).
    S,
    /// Milliseconds.
    #[default]
    Ms,
    /// Microseconds.
    Us,
}

/// Where a device id comes from: the value `"topic"` (the route filter's only `+`
/// level), or a JSON pointer (`"/id"`).
pub const DEVICE_FROM_TOPIC: &str = "topic";

/// Largest `max_payload_bytes` accepted: 1 MiB.
pub const MAX_PAYLOAD_LIMIT: usize = 1 << 20;

/// `[routes.input]`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct InputConfig {
    /// `"reflex"`, `"json"` or `"binary"`. Default: `"reflex"` (no other field applies).
    pub kind: InputKind,
    /// Where the device id comes from: `"topic"` (the filter's only `+` level) or, for
    /// `json`, a JSON pointer (`"/id"`; when the filter also has a `+`, both must agree).
    /// Default: `"topic"`.
    pub device: String,
    /// JSON pointer (`json`) to the sequence number, a non-negative integer. Absent:
    /// reflexd numbers the device's events itself and the route has no dedupe.
    pub seq: Option<String>,
    /// `binary`: byte offset in the header of a little-endian u32 sequence number.
    pub seq_offset: Option<usize>,
    /// JSON pointer (`json`) to the sensor's timestamp, in `timestamp_unit`. Absent: the
    /// arrival time.
    pub timestamp: Option<String>,
    /// Unit of the `timestamp` field: `"s"`, `"ms"` or `"us"`. Default: `"ms"`.
    pub timestamp_unit: TimeUnit,
    /// `json`: one JSON pointer per channel, each to an array of numbers (or, with
    /// `assemble`, to a single number). Exclusive with `window`.
    pub channels: Vec<String>,
    /// `json`: a JSON pointer to one nested array, `[[channel 0…], [channel 1…], …]`.
    pub window: Option<String>,
    /// `binary`: number of channels, 1..=8 (the wire's limit).
    pub channel_count: Option<usize>,
    /// `binary`: samples per channel in one message, 1..=1024 (the wire's limit).
    pub samples: Option<usize>,
    /// `binary`: `"f32"` or `"i16"`. Default: `"f32"`.
    pub sample_type: SampleType,
    /// `binary`: `"planar"` or `"interleaved"`. Default: `"planar"`.
    pub layout: Layout,
    /// `binary`: bytes before the samples, 0..=256. Default: `0`.
    pub header_bytes: usize,
    /// Raw value × `scale` + `offset` = physical value. Finite, non-zero. Default: `1`.
    pub scale: f64,
    /// See `scale`. Finite. Default: `0`.
    pub offset: f64,
    /// Physical units per count of the internal event (its window `scale`): finite, > 0.
    /// A value beyond ±32767 counts is bad input. Default: `0.001`.
    pub resolution: f64,
    /// Sampling rate of the sensor, in Hz (journaled with the window), >= 1.
    /// Default: `1000`.
    pub sample_rate_hz: u32,
    /// `json`: JSON pointer to the machine temperature in °C (an extra scalar the event
    /// carries). Absent: 0.
    pub temperature: Option<String>,
    /// Largest payload read, in bytes, 1..=1048576; a larger one is refused before it is
    /// parsed (`oversized`). Default: `16384`.
    pub max_payload_bytes: usize,
    /// `[routes.input.assemble]`: build windows from a stream of short messages.
    pub assemble: Option<AssembleConfig>,
}

impl Default for InputConfig {
    fn default() -> Self {
        InputConfig {
            kind: InputKind::Reflex,
            device: DEVICE_FROM_TOPIC.into(),
            seq: None,
            seq_offset: None,
            timestamp: None,
            timestamp_unit: TimeUnit::Ms,
            channels: Vec::new(),
            window: None,
            channel_count: None,
            samples: None,
            sample_type: SampleType::F32,
            layout: Layout::Planar,
            header_bytes: 0,
            scale: 1.0,
            offset: 0.0,
            resolution: 0.001,
            sample_rate_hz: 1000,
            temperature: None,
            max_payload_bytes: 16_384,
            assemble: None,
        }
    }
}

/// `[routes.input.assemble]`: a per-device ring buffer of readings; a window of the
/// route model's shape is scored every `hop` readings once it is full.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AssembleConfig {
    /// Readings between two scored windows, 1..=1024. Below the model's window length
    /// windows overlap; above it the readings between two windows are not scored.
    /// Absent: the model's window length (windows neither overlap nor skip).
    pub hop: Option<usize>,
    /// A reading more than this after the previous one (by timestamp) starts the window
    /// again, in ms, > 0. Default: `1000`.
    pub max_gap_ms: f64,
    /// A window whose first reading is older than this when it completes is not scored
    /// (stale), in ms, > 0. Default: `10000`.
    pub max_age_ms: f64,
    /// Most devices buffered at once, 1..=100000; the least recently fed is evicted
    /// (counted). Memory: at most `max_devices × channels × samples × 4` bytes of
    /// samples. Default: `1024`.
    pub max_devices: usize,
}

impl Default for AssembleConfig {
    fn default() -> Self {
        AssembleConfig {
            hop: None,
            max_gap_ms: 1_000.0,
            max_age_ms: 10_000.0,
            max_devices: 1_024,
        }
    }
}

impl InputConfig {
    /// Whether this is the default section (`kind = "reflex"`, nothing else): not shown
    /// by `reflexd config show`, whose output for a route without adapters is unchanged.
    pub fn is_default(&self) -> bool {
        *self == InputConfig::default()
    }

    /// Whether the route's events carry their own sequence numbers (dedupe applies).
    pub fn has_seq(&self) -> bool {
        match self.kind {
            InputKind::Reflex => true,
            InputKind::Json => self.seq.is_some(),
            InputKind::Binary => self.seq_offset.is_some(),
            // Sparkplug's `seq` numbers an edge node's messages (0..=255, wrapping), not a
            // device's events.
            InputKind::SparkplugB => false,
        }
    }

    /// Whether the admit stage dedupes this route's events by (device, seq): only when
    /// the sensors number their own messages and each message is one window.
    pub fn dedupes(&self) -> bool {
        self.has_seq() && self.assemble.is_none()
    }

    /// Checks the section of route `i` (`filter_plus`: how many `+` levels its filter
    /// has).
    pub(super) fn validate(&self, i: usize, filter_plus: usize, p: &mut Problems) {
        let f = |name: &str| format!("routes[{i}].input.{name}");
        let default = InputConfig::default();
        if self.kind == InputKind::Reflex {
            if *self != default {
                p.add(
                    f("kind"),
                    "\"reflex\"",
                    "takes no other [routes.input] field (the payload is reflex's own event)",
                );
            }
            return;
        }
        let json = self.kind == InputKind::Json;
        let sparkplug = self.kind == InputKind::SparkplugB;
        // Fields of the other kind.
        let stray: &[(&str, bool)] = if sparkplug {
            &[
                ("seq", self.seq.is_some()),
                ("seq_offset", self.seq_offset.is_some()),
                ("timestamp", self.timestamp.is_some()),
                (
                    "timestamp_unit",
                    self.timestamp_unit != default.timestamp_unit,
                ),
                ("window", self.window.is_some()),
                ("channel_count", self.channel_count.is_some()),
                ("samples", self.samples.is_some()),
                ("sample_type", self.sample_type != default.sample_type),
                ("layout", self.layout != default.layout),
                ("header_bytes", self.header_bytes != default.header_bytes),
            ]
        } else if json {
            &[
                ("seq_offset", self.seq_offset.is_some()),
                ("channel_count", self.channel_count.is_some()),
                ("samples", self.samples.is_some()),
                ("sample_type", self.sample_type != default.sample_type),
                ("layout", self.layout != default.layout),
                ("header_bytes", self.header_bytes != default.header_bytes),
            ]
        } else {
            &[
                ("seq", self.seq.is_some()),
                ("timestamp", self.timestamp.is_some()),
                ("channels", !self.channels.is_empty()),
                ("window", self.window.is_some()),
                ("temperature", self.temperature.is_some()),
            ]
        };
        for (name, set) in stray {
            if *set {
                p.add(
                    f(name),
                    "(set)",
                    format!("does not apply to kind = {:?}", kind_str(self.kind)),
                );
            }
        }
        if self.device == DEVICE_FROM_TOPIC {
            if filter_plus != 1 && !sparkplug {
                p.add_str(
                    f("device"),
                    &self.device,
                    format!("the topic filter must have exactly one '+' level to name the device (it has {filter_plus})"),
                );
            }
        } else if sparkplug {
            p.add_str(
                f("device"),
                &self.device,
                "a Sparkplug B device comes from the topic: must be \"topic\"",
            );
        } else if !json {
            p.add_str(
                f("device"),
                &self.device,
                "a binary payload's device comes from the topic: must be \"topic\"",
            );
        } else {
            check_pointer(p, &f("device"), &self.device);
        }
        if json {
            for (name, ptr) in [
                ("seq", &self.seq),
                ("timestamp", &self.timestamp),
                ("window", &self.window),
                ("temperature", &self.temperature),
            ] {
                if let Some(ptr) = ptr {
                    check_pointer(p, &f(name), ptr);
                }
            }
            for (c, ptr) in self.channels.iter().enumerate() {
                check_pointer(p, &f(&format!("channels[{c}]")), ptr);
            }
            self.check_pointers_apart(&f, p);
            match (self.channels.len(), &self.window) {
                (0, None) => p.add(
                    f("channels"),
                    "[]",
                    "one JSON pointer per channel, or `window` (a nested array), is required",
                ),
                (n, Some(_)) if n > 0 => p.add(
                    f("channels"),
                    format!("{:?}", self.channels),
                    "exclusive with `window`",
                ),
                (n, _) if n > reflex_wire::MAX_CHANNELS => p.add(
                    f("channels"),
                    format!("{:?}", self.channels),
                    format!("at most {} channels", reflex_wire::MAX_CHANNELS),
                ),
                _ => {}
            }
        } else if sparkplug {
            self.validate_metric_names(&f, p);
        } else {
            match self.channel_count {
                None => p.add(
                    f("channel_count"),
                    "(none)",
                    "required for kind = \"binary\"",
                ),
                Some(c) => p.range(&f("channel_count"), c, 1, reflex_wire::MAX_CHANNELS),
            }
            match self.samples {
                None => p.add(f("samples"), "(none)", "required for kind = \"binary\""),
                Some(s) => p.range(&f("samples"), s, 1, reflex_wire::MAX_SAMPLES_PER_CHANNEL),
            }
            p.range(&f("header_bytes"), self.header_bytes, 0, 256);
            if let Some(o) = self.seq_offset {
                if o + 4 > self.header_bytes {
                    p.add(
                        f("seq_offset"),
                        o,
                        format!(
                            "the u32 at {o}..{} must lie in the header ({} bytes)",
                            o + 4,
                            self.header_bytes
                        ),
                    );
                }
            }
        }
        if !(self.scale.is_finite() && self.scale != 0.0) {
            p.add(f("scale"), self.scale, "must be finite and non-zero");
        }
        if !self.offset.is_finite() {
            p.add(f("offset"), self.offset, "must be finite");
        }
        if !(self.resolution.is_finite() && self.resolution > 0.0 && self.resolution <= 1e6) {
            p.add(
                f("resolution"),
                self.resolution,
                "must be finite, > 0 and <= 1e6",
            );
        }
        if self.sample_rate_hz == 0 {
            p.add(f("sample_rate_hz"), self.sample_rate_hz, "must be >= 1");
        }
        p.range(
            &f("max_payload_bytes"),
            self.max_payload_bytes,
            1,
            MAX_PAYLOAD_LIMIT,
        );
        if let Some(a) = &self.assemble {
            let g = |name: &str| format!("routes[{i}].input.assemble.{name}");
            if let Some(h) = a.hop {
                p.range(&g("hop"), h, 1, reflex_wire::MAX_SAMPLES_PER_CHANNEL);
            }
            for (name, v) in [("max_gap_ms", a.max_gap_ms), ("max_age_ms", a.max_age_ms)] {
                if !(v.is_finite() && v > 0.0 && v <= 86_400_000.0) {
                    p.add(g(name), v, "must be finite, > 0 and <= 86400000");
                }
            }
            p.range(&g("max_devices"), a.max_devices, 1, 100_000);
        }
    }
}

impl InputConfig {
    /// `kind = "sparkplug_b"`: one metric name per channel (1..=MAX_CHANNELS, distinct,
    /// non-empty), and a temperature metric that is none of them.
    fn validate_metric_names(&self, f: &dyn Fn(&str) -> String, p: &mut Problems) {
        let n = self.channels.len();
        if n == 0 || n > reflex_wire::MAX_CHANNELS {
            p.add(
                f("channels"),
                format!("{:?}", self.channels),
                format!(
                    "one metric name per channel, 1..={} of them",
                    reflex_wire::MAX_CHANNELS
                ),
            );
        }
        for (c, name) in self.channels.iter().enumerate() {
            if name.is_empty() || self.channels[..c].contains(name) {
                p.add_str(
                    f(&format!("channels[{c}]")),
                    name,
                    "must be a metric name, non-empty and not repeated",
                );
            }
        }
        if let Some(t) = &self.temperature {
            if t.is_empty() || self.channels.contains(t) {
                p.add_str(
                    f("temperature"),
                    t,
                    "must be a metric name, non-empty and not a channel's",
                );
            }
        }
    }

    /// Checks route `i`'s `topic_filter` against its input kind: a Sparkplug B route
    /// reads one group's births, deaths and data, so its filter is
    /// `spBv1.0/<group>/#` or `spBv1.0/<group>/+/...`.
    /// No field's pointer may lie inside another field's value (`/meta` and `/meta/id`):
    /// one of the two could never be read, so every event would be refused. Fields of one
    /// role may share a pointer (`seq` and `timestamp` both `/ts`); a channel or the window
    /// may not share one with a field of another role.
    fn check_pointers_apart(&self, f: &dyn Fn(&str) -> String, p: &mut Problems) {
        let mut fields: Vec<(String, &str, u8)> = Vec::new();
        if self.device != DEVICE_FROM_TOPIC {
            fields.push(("device".into(), &self.device, 0));
        }
        for (name, ptr) in [
            ("seq", &self.seq),
            ("timestamp", &self.timestamp),
            ("temperature", &self.temperature),
        ] {
            if let Some(ptr) = ptr {
                fields.push((name.into(), ptr, 0));
            }
        }
        for (c, ptr) in self.channels.iter().enumerate() {
            fields.push((format!("channels[{c}]"), ptr, 1));
        }
        if let Some(ptr) = &self.window {
            fields.push(("window".into(), ptr, 2));
        }
        let inside = |outer: &str, inner: &str| {
            inner.len() > outer.len()
                && inner.starts_with(outer)
                && inner.as_bytes()[outer.len()] == b'/'
        };
        for (a, (name_a, ptr_a, role_a)) in fields.iter().enumerate() {
            for (name_b, ptr_b, role_b) in &fields[a + 1..] {
                let clash = if ptr_a == ptr_b {
                    role_a != role_b
                } else {
                    inside(ptr_a, ptr_b) || inside(ptr_b, ptr_a)
                };
                if clash {
                    p.add_str(
                        f(name_b),
                        ptr_b,
                        format!(
                            "overlaps {} = {ptr_a:?}: a field's value cannot hold another field",
                            f(name_a)
                        ),
                    );
                }
            }
        }
    }

    pub(super) fn validate_topic_filter(&self, i: usize, filter: &str, p: &mut Problems) {
        if self.kind != InputKind::SparkplugB {
            return;
        }
        let levels: Vec<&str> = filter.split('/').collect();
        let fits = levels.len() >= 3
            && levels[0] == reflex_sparkplug::NAMESPACE
            && !matches!(levels[1], "+" | "#" | "" | "STATE")
            && matches!(levels[2], "+" | "#");
        if !fits {
            p.add_str(
                format!("routes[{i}].topic_filter"),
                filter,
                "a Sparkplug B route reads one group's births, deaths and data: \
                 spBv1.0/<group>/# or spBv1.0/<group>/+/... (the message type level a '+')",
            );
        }
    }
}

fn kind_str(kind: InputKind) -> &'static str {
    match kind {
        InputKind::Reflex => "reflex",
        InputKind::Json => "json",
        InputKind::Binary => "binary",
        InputKind::SparkplugB => "sparkplug_b",
    }
}

/// A JSON pointer (RFC 6901): empty (the whole document) or starting with `/`.
fn check_pointer(p: &mut Problems, field: &str, ptr: &str) {
    if !ptr.starts_with('/') {
        p.add_str(
            field,
            ptr,
            "must be a JSON pointer starting with '/' (e.g. \"/ax\")",
        );
    }
}

#[cfg(test)]
mod tests {
    use crate::config::parse;

    const BASE: &str = r#"
[[routes]]
name = "accel"
topic_filter = "plant/+/accel"
model = "edge"
deadline_ms = 5.0
command_topic = "actuators/{device}/cmd"
"#;
    const MODELS: &str = r#"
[models.edge]
manifest = "m.json"
fallback_manifest = "f.json"
"#;

    fn problems(input: &str) -> Vec<String> {
        let text = format!("{BASE}{input}{MODELS}");
        let config = parse(&text).expect("parses");
        match config.validate_with_cores(2) {
            Ok(()) => Vec::new(),
            Err(errors) => errors
                .iter()
                .filter(|e| e.field.contains(".input"))
                .map(|e| e.to_string())
                .collect(),
        }
    }

    #[test]
    fn a_route_without_an_input_section_reads_reflex_events() {
        let config = parse(&format!("{BASE}{MODELS}")).unwrap();
        assert_eq!(config.routes[0].input, super::InputConfig::default());
        assert!(config.routes[0].input.dedupes());
    }

    #[test]
    fn a_complete_json_mapping_is_accepted() {
        let p = problems(
            r#"[routes.input]
kind = "json"
seq = "/n"
timestamp = "/ts"
channels = ["/ax", "/ay", "/az"]
temperature = "/temp"
resolution = 0.001
"#,
        );
        assert_eq!(p, Vec::<String>::new());
    }

    #[test]
    fn a_pointer_inside_another_fields_value_is_refused_naming_both() {
        let p = problems(
            r#"[routes.input]
kind = "json"
device = "/meta"
seq = "/meta/n"
timestamp = "/n"
temperature = "/n"
channels = ["/ax", "/ax", "/n"]
"#,
        );
        assert_eq!(
            p,
            [
                "routes[0].input.seq = \"/meta/n\": overlaps routes[0].input.device = \"/meta\": a field's value cannot hold another field",
                "routes[0].input.channels[2] = \"/n\": overlaps routes[0].input.timestamp = \"/n\": a field's value cannot hold another field",
                "routes[0].input.channels[2] = \"/n\": overlaps routes[0].input.temperature = \"/n\": a field's value cannot hold another field",
            ]
        );
        // `/meta` and `/metadata` are apart; so are two scalars sharing `/n` (above).
        let p = problems(
            r#"[routes.input]
kind = "json"
device = "/meta"
seq = "/metadata"
channels = ["/ax"]
"#,
        );
        assert_eq!(p, Vec::<String>::new());
    }

    #[test]
    fn every_bad_input_field_is_reported_at_once_with_its_path() {
        let p = problems(
            r#"[routes.input]
kind = "json"
device = "id"
channels = ["ax", "/ay", "/az", "/b", "/c", "/d", "/e", "/f", "/g"]
header_bytes = 4
scale = 0.0
resolution = -1.0
max_payload_bytes = 0
[routes.input.assemble]
hop = 0
max_gap_ms = nan
"#,
        );
        let expected = [
            "routes[0].input.header_bytes = (set): does not apply to kind = \"json\"",
            "routes[0].input.device = \"id\": must be a JSON pointer",
            "routes[0].input.channels[0] = \"ax\": must be a JSON pointer",
            "routes[0].input.channels = [",
            "routes[0].input.scale = 0: must be finite and non-zero",
            "routes[0].input.resolution = -1: must be finite, > 0",
            "routes[0].input.max_payload_bytes = 0: must be in 1..=1048576",
            "routes[0].input.assemble.hop = 0: must be in 1..=1024",
            "routes[0].input.assemble.max_gap_ms = NaN: must be finite",
        ];
        assert_eq!(p.len(), expected.len(), "{p:#?}");
        for (got, want) in p.iter().zip(expected) {
            assert!(
                got.starts_with(want),
                "{got:?} does not start with {want:?}"
            );
        }
    }

    #[test]
    fn a_binary_mapping_needs_its_layout_and_a_topic_device() {
        let p = problems(
            r#"[routes.input]
kind = "binary"
device = "/id"
seq_offset = 2
header_bytes = 4
"#,
        );
        assert_eq!(p.len(), 4, "{p:#?}");
        assert!(p[0].starts_with(
            "routes[0].input.device = \"/id\": a binary payload's device comes from the topic"
        ));
        assert!(p[1].starts_with("routes[0].input.channel_count = (none): required"));
        assert!(p[2].starts_with("routes[0].input.samples = (none): required"));
        assert!(p[3].starts_with(
            "routes[0].input.seq_offset = 2: the u32 at 2..6 must lie in the header (4 bytes)"
        ));
    }

    #[test]
    fn the_reflex_kind_takes_no_mapping() {
        let p = problems("[routes.input]\nkind = \"reflex\"\nseq = \"/n\"\n");
        assert_eq!(p.len(), 1, "{p:#?}");
        assert!(p[0].contains("takes no other [routes.input] field"));
    }

    #[test]
    fn an_unknown_input_field_does_not_parse() {
        let text = format!("{BASE}[routes.input]\nkind = \"json\"\nchanels = [\"/a\"]\n{MODELS}");
        let e = parse(&text).unwrap_err().to_string();
        assert!(e.contains("unknown field `chanels`"), "{e}");
    }

    fn sparkplug_errors(filter: &str, input: &str) -> Vec<String> {
        let text = format!(
            "{}[routes.input]\nkind = \"sparkplug_b\"\n{input}{MODELS}",
            BASE.replace("plant/+/accel", filter)
        );
        match parse(&text).unwrap().validate_with_cores(2) {
            Ok(()) => Vec::new(),
            Err(e) => e
                .iter()
                .map(|e| e.to_string())
                .filter(|e| e.contains(".input") || e.contains("topic_filter"))
                .collect(),
        }
    }

    #[test]
    fn a_sparkplug_mapping_names_metrics_and_reads_one_groups_births_and_data() {
        let names = "channels = [\"accel/x\", \"accel/y\"]\ntemperature = \"temp\"\n";
        for filter in ["spBv1.0/plant1/#", "spBv1.0/plant1/+/gw-7/+"] {
            assert_eq!(
                sparkplug_errors(filter, names),
                Vec::<String>::new(),
                "{filter}"
            );
        }
        let e = sparkplug_errors(
            "spBv1.0/plant1/DDATA/+/+",
            "channels = [\"a\", \"a\", \"\"]\ntemperature = \"a\"\ndevice = \"/id\"\nseq = \"/n\"\ntimestamp_unit = \"s\"\n",
        );
        let expected = [
            "routes[0].input.seq = (set): does not apply to kind = \"sparkplug_b\"",
            "routes[0].input.timestamp_unit = (set): does not apply",
            "routes[0].input.device = \"/id\": a Sparkplug B device comes from the topic",
            "routes[0].input.channels[1] = \"a\": must be a metric name, non-empty and not repeated",
            "routes[0].input.channels[2] = \"\": must be a metric name",
            "routes[0].input.temperature = \"a\": must be a metric name, non-empty and not a channel's",
            "routes[0].topic_filter = \"spBv1.0/plant1/DDATA/+/+\": a Sparkplug B route reads one group's births",
        ];
        assert_eq!(e.len(), expected.len(), "{e:#?}");
        for want in expected {
            assert!(
                e.iter().any(|got| got.starts_with(want)),
                "{want:?} not in {e:#?}"
            );
        }
        for filter in [
            "spBv1.0/+/#",
            "spBv1.0/#",
            "plant/+/accel",
            "spBv1.0/STATE/+",
        ] {
            let e = sparkplug_errors(filter, names);
            assert_eq!(e.len(), 1, "{filter}: {e:#?}");
            assert!(e[0].starts_with("routes[0].topic_filter"), "{e:#?}");
        }
        let e = sparkplug_errors("spBv1.0/plant1/#", "");
        assert!(
            e[0].starts_with("routes[0].input.channels = []: one metric name per channel"),
            "{e:#?}"
        );
    }

    #[test]
    fn a_topic_device_needs_exactly_one_plus_level() {
        let text = format!(
            "{}[routes.input]\nkind = \"json\"\nchannels = [\"/a\"]\n{MODELS}",
            BASE.replace("plant/+/accel", "plant/+/+/accel")
        );
        let e = parse(&text).unwrap().validate_with_cores(2).unwrap_err();
        let e: Vec<String> = e.iter().map(|e| e.to_string()).collect();
        assert!(
            e.iter().any(|e| e.starts_with("routes[0].input.device = \"topic\": the topic filter must have exactly one '+' level")),
            "{e:#?}"
        );
    }
}
