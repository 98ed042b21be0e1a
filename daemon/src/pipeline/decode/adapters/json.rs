//! The `json` adapter's reader: one pass over the payload that keeps only the mapped
//! fields, without building a document tree.
//!
//! # Why not `serde_json::Value`
//!
//! A vendor's 3 × 64 window is ~200 numbers plus a few fields. Parsing it into a `Value`
//! tree allocates every array and object and then walks the tree by pointer; reading the
//! pointers while parsing converts each sample to its count as it is read and skips every
//! other field. The JSON grammar, the recursion limit (128, anywhere in the document, also
//! in skipped fields) and the errors are serde_json's either way.
//!
//! # Contract: the same answer as reading the `Value` tree
//!
//! For every payload, [`Pointers::read`] returns what resolving each configured pointer on
//! the parsed `Value` would (`adapters/tests.rs` checks this against that reader on random
//! documents): RFC 6901 pointers, an array index matched only as a canonical decimal, a
//! repeated object key resolved to its last value, the same refusal for the same first
//! fault, checked in the same order (device, seq, timestamp, temperature, then the window
//! channel by channel). The one difference is cost: what a refusal names is rebuilt from
//! what was kept, and numbers in skipped fields are parsed but not stored.
//!
//! Configuration refuses a pointer inside another field's value (`config::input`), so a
//! node of the pointer tree is either a field's value or on the way to one.

use std::fmt;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::{AdaptError, Mapping};
use reflex_wire::{MAX_CHANNELS, MAX_SAMPLES_PER_CHANNEL};

/// What a node of the pointer tree holds for the mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// On the way to a field: an object or array whose members may hold fields.
    Path,
    /// A string or number field (device, seq, timestamp, temperature).
    Scalar,
    /// One channel: an array of numbers (or a number, when readings are assembled).
    Channel,
    /// The nested window: an array of channels.
    Window,
}

#[derive(Debug, Clone, PartialEq)]
struct Node {
    role: Role,
    /// `(token, the token as an array index, child)`.
    children: Vec<(String, Option<usize>, usize)>,
    /// One past this node's last descendant (nodes are numbered depth first).
    end: usize,
}

/// The configured pointers, compiled into a tree walked while parsing.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Pointers {
    nodes: Vec<Node>,
    device: Option<usize>,
    seq: Option<usize>,
    timestamp: Option<usize>,
    temperature: Option<usize>,
    window: Option<usize>,
    channels: Vec<usize>,
}

/// RFC 6901 tokens of a pointer (`"/a~1b/0"` → `["a/b", "0"]`); `""` has none.
fn tokens(ptr: &str) -> Vec<String> {
    ptr.split('/')
        .skip(1)
        .map(|t| t.replace("~1", "/").replace("~0", "~"))
        .collect()
}

/// A token as an array index, as serde_json's `Value::pointer` reads one: decimal digits,
/// no sign, no leading zero.
fn index_of(token: &str) -> Option<usize> {
    if token.starts_with('+') || (token.starts_with('0') && token.len() != 1) {
        return None;
    }
    token.parse().ok()
}

impl Pointers {
    /// The tree of `mapping`'s JSON pointers.
    pub(super) fn of(mapping: &Mapping) -> Pointers {
        // Build with nested vectors first, then number depth first.
        #[derive(Default)]
        struct Draft {
            role: Option<Role>,
            children: Vec<(String, Draft)>,
        }
        fn insert(d: &mut Draft, toks: &[String], role: Role) {
            match toks.split_first() {
                // Configuration lets only fields of one role share a pointer.
                None => d.role = Some(role),
                Some((t, rest)) => {
                    let i = match d.children.iter().position(|(k, _)| k == t) {
                        Some(i) => i,
                        None => {
                            d.children.push((t.clone(), Draft::default()));
                            d.children.len() - 1
                        }
                    };
                    insert(&mut d.children[i].1, rest, role);
                }
            }
        }
        fn number(
            d: Draft,
            nodes: &mut Vec<Node>,
            ids: &mut Vec<(Vec<String>, usize)>,
            at: Vec<String>,
        ) -> usize {
            let id = nodes.len();
            nodes.push(Node {
                role: d.role.unwrap_or(Role::Path),
                children: Vec::new(),
                end: 0,
            });
            ids.push((at.clone(), id));
            let mut children = Vec::new();
            for (t, child) in d.children {
                let mut path = at.clone();
                path.push(t.clone());
                let c = number(child, nodes, ids, path);
                children.push((t.clone(), index_of(&t), c));
            }
            nodes[id].children = children;
            nodes[id].end = nodes.len();
            id
        }
        let mut root = Draft::default();
        let scalars = [
            &mapping.device,
            &mapping.seq,
            &mapping.timestamp,
            &mapping.temperature,
        ];
        for ptr in scalars.into_iter().flatten() {
            insert(&mut root, &tokens(ptr), Role::Scalar);
        }
        for ptr in &mapping.channels {
            insert(&mut root, &tokens(ptr), Role::Channel);
        }
        if let Some(ptr) = &mapping.window {
            insert(&mut root, &tokens(ptr), Role::Window);
        }
        let mut nodes = Vec::new();
        let mut ids = Vec::new();
        number(root, &mut nodes, &mut ids, Vec::new());
        let id = |ptr: &String| {
            let t = tokens(ptr);
            ids.iter()
                .find(|(p, _)| *p == t)
                .map(|(_, id)| *id)
                .unwrap_or(0)
        };
        Pointers {
            device: mapping.device.as_ref().map(id),
            seq: mapping.seq.as_ref().map(id),
            timestamp: mapping.timestamp.as_ref().map(id),
            temperature: mapping.temperature.as_ref().map(id),
            window: mapping.window.as_ref().map(id),
            channels: mapping.channels.iter().map(id).collect(),
            nodes,
        }
    }

    /// Reads one payload (within the route's size limit) as [`Mapping::read`] does.
    pub(super) fn read(&self, m: &Mapping, payload: &[u8]) -> Result<super::Reading, AdaptError> {
        let mut found = vec![Found::Absent; self.nodes.len()];
        let mut de = serde_json::Deserializer::from_slice(payload);
        NodeSeed {
            tree: self,
            mapping: m,
            found: &mut found,
            node: 0,
        }
        .deserialize(&mut de)
        .and_then(|()| de.end())
        .map_err(|e| AdaptError::BadJson(e.to_string()))?;
        self.settle(m, found)
    }

    /// The reading from what the parse kept, refusals in the `Value` reader's order.
    fn settle(&self, m: &Mapping, mut found: Vec<Found>) -> Result<super::Reading, AdaptError> {
        let ptr_of = |field: &Option<String>| field.clone().unwrap_or_default();
        let device = match (self.device, &m.device) {
            (Some(node), Some(ptr)) => match &found[node] {
                Found::Str(id) => {
                    reflex_wire::validate_device_id(id).map_err(|source| {
                        AdaptError::BadDevice {
                            id: id.chars().take(64).collect(),
                            source,
                        }
                    })?;
                    let mut d = reflex_wire::DeviceId::new();
                    // Cannot fail: validated to fit.
                    let _ = d.push_str(id);
                    Some(d)
                }
                other => return Err(other.refusal(ptr, "a string")),
            },
            _ => None,
        };
        let seq = match self.seq {
            None => None,
            Some(node) => match &found[node] {
                Found::Num(Num::U(n)) => Some(*n),
                other => return Err(other.refusal(&ptr_of(&m.seq), "a non-negative integer")),
            },
        };
        let timestamp_us = match self.timestamp {
            None => None,
            Some(node) => {
                let ptr = ptr_of(&m.timestamp);
                let t = found[node].number(&ptr)?;
                Some(m.timestamp_of(t, &ptr)?)
            }
        };
        let temperature_centi_c = match self.temperature {
            None => 0,
            Some(node) => {
                let ptr = ptr_of(&m.temperature);
                super::centi_c(found[node].number(&ptr)?, &ptr)?
            }
        };
        // The channels as (pointer, what it held), in the window's order.
        let rows: Vec<(String, Row)> = match (self.window, &m.window) {
            (Some(node), Some(ptr)) => match std::mem::take(&mut found[node]) {
                Found::Rows { rows, len } => {
                    if len == 0 || len > MAX_CHANNELS {
                        return Err(AdaptError::BadWindow(format!(
                            "{ptr:?} has {len} channels, expected 1..={MAX_CHANNELS}"
                        )));
                    }
                    rows.into_iter()
                        .enumerate()
                        .map(|(c, r)| (format!("{ptr}/{c}"), r))
                        .collect()
                }
                other => return Err(other.refusal(ptr, "an array of arrays")),
            },
            _ => {
                let mut rows = Vec::with_capacity(self.channels.len());
                for (ptr, &node) in m.channels.iter().zip(&self.channels) {
                    let row = match std::mem::take(&mut found[node]) {
                        // Two channels may name one array: the second reads a copy of
                        // what the first took.
                        Found::Absent => match rows
                            .iter()
                            .zip(&self.channels)
                            .find(|(_, &earlier)| earlier == node)
                        {
                            Some(((_, row), _)) => Row::clone(row),
                            None => return Err(AdaptError::MissingField(ptr.clone())),
                        },
                        Found::Row(r) => r,
                        Found::Num(n) => Row::Num(n.as_f64()),
                        Found::Str(_) => Row::Other("a string"),
                        Found::Other(t) => Row::Other(t),
                        Found::Rows { .. } => Row::Other("an array"),
                    };
                    rows.push((ptr.clone(), row));
                }
                rows
            }
        };
        let mut samples = None;
        let mut counts = Vec::with_capacity(rows.len() * MAX_SAMPLES_PER_CHANNEL);
        let channels = rows.len();
        for (ptr, row) in rows {
            let values = match row {
                Row::Array(a) => a,
                Row::Num(raw) if m.scalars => Samples::single(m, raw),
                other => {
                    let expected = if m.scalars {
                        "an array of numbers or a number"
                    } else {
                        "an array of numbers"
                    };
                    return Err(AdaptError::WrongType {
                        field: ptr,
                        found: other.type_name(),
                        expected,
                    });
                }
            };
            if values.len == 0 || values.len > MAX_SAMPLES_PER_CHANNEL {
                return Err(AdaptError::BadWindow(format!(
                    "{ptr:?} has {} samples, expected 1..={MAX_SAMPLES_PER_CHANNEL}",
                    values.len
                )));
            }
            match samples {
                None => samples = Some(values.len),
                Some(n) if n != values.len => {
                    return Err(AdaptError::BadWindow(format!(
                        "{ptr:?} has {} samples, the channels before it {n}",
                        values.len
                    )))
                }
                Some(_) => {}
            }
            match values.fault {
                None => counts.extend_from_slice(&values.counts),
                Some((i, Fault::Type(found))) => {
                    return Err(AdaptError::WrongType {
                        field: format!("{ptr}[{i}]"),
                        found,
                        expected: "a number",
                    })
                }
                Some((i, Fault::Value(raw))) => {
                    // The same refusal, rebuilt with its field name.
                    return Err(m
                        .count(raw, || format!("{ptr}[{i}]"))
                        .expect_err("a faulty sample fails again"));
                }
            }
        }
        Ok(super::Reading {
            device,
            seq,
            timestamp_us,
            channels,
            samples: samples.unwrap_or(0),
            counts,
            temperature_centi_c,
        })
    }
}

/// A JSON number as serde_json's `Value` keeps it.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Num {
    U(u64),
    I(i64),
    F(f64),
}

impl Num {
    fn as_f64(self) -> f64 {
        match self {
            Num::U(n) => n as f64,
            Num::I(n) => n as f64,
            Num::F(f) => f,
        }
    }
}

/// Why a channel's samples stopped converting: the first bad element.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Fault {
    /// Not a number (its JSON type).
    Type(&'static str),
    /// A number that maps to no count.
    Value(f64),
}

/// A channel's samples, converted to counts as they were read.
#[derive(Debug, Clone, PartialEq, Default)]
struct Samples {
    counts: Vec<i16>,
    /// Elements in the array (all of them, also past the wire's limit).
    len: usize,
    /// The first element that did not convert; none is converted after it.
    fault: Option<(usize, Fault)>,
}

impl Samples {
    fn single(m: &Mapping, raw: f64) -> Samples {
        let mut s = Samples::default();
        s.push(m, Row::Num(raw));
        s
    }

    fn push(&mut self, m: &Mapping, e: Row) {
        let i = self.len;
        self.len += 1;
        if self.fault.is_some() || i >= MAX_SAMPLES_PER_CHANNEL {
            return;
        }
        match e {
            Row::Num(raw) => match m.count(raw, String::new) {
                Ok(c) => self.counts.push(c),
                Err(_) => self.fault = Some((i, Fault::Value(raw))),
            },
            other => self.fault = Some((i, Fault::Type(other.type_name()))),
        }
    }
}

/// What a channel's value, or one element of a channel, was.
#[derive(Debug, Clone, PartialEq)]
enum Row {
    Array(Samples),
    Num(f64),
    Other(&'static str),
}

impl Row {
    fn type_name(&self) -> &'static str {
        match self {
            Row::Array(_) => "an array",
            Row::Num(_) => "a number",
            Row::Other(t) => t,
        }
    }
}

/// What a node of the tree held in the payload.
#[derive(Debug, Clone, PartialEq, Default)]
enum Found {
    #[default]
    Absent,
    Str(String),
    Num(Num),
    /// Another JSON type than the role keeps (its name).
    Other(&'static str),
    /// A channel's array.
    Row(Row),
    /// The window's array: its first channels (up to the wire's limit) and its length.
    Rows {
        rows: Vec<Row>,
        len: usize,
    },
}

impl Found {
    fn type_name(&self) -> &'static str {
        match self {
            Found::Absent => "absent",
            Found::Str(_) => "a string",
            Found::Num(_) => "a number",
            Found::Other(t) => t,
            Found::Row(r) => r.type_name(),
            Found::Rows { .. } => "an array",
        }
    }

    /// The refusal of a field that is not what the mapping needs.
    fn refusal(&self, ptr: &str, expected: &'static str) -> AdaptError {
        match self {
            Found::Absent => AdaptError::MissingField(ptr.to_owned()),
            _ => AdaptError::WrongType {
                field: ptr.to_owned(),
                found: self.type_name(),
                expected,
            },
        }
    }

    fn number(&self, ptr: &str) -> Result<f64, AdaptError> {
        match self {
            Found::Num(n) => Ok(n.as_f64()),
            other => Err(other.refusal(ptr, "a number")),
        }
    }
}

/// Parses the value at one node of the tree, keeping what its role needs.
struct NodeSeed<'a> {
    tree: &'a Pointers,
    mapping: &'a Mapping,
    found: &'a mut Vec<Found>,
    node: usize,
}

impl<'de> DeserializeSeed<'de> for NodeSeed<'_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        // A value seen again under a repeated key replaces all that the first one held.
        let end = self.tree.nodes[self.node].end;
        for f in &mut self.found[self.node..end] {
            *f = Found::Absent;
        }
        d.deserialize_any(self)
    }
}

impl NodeSeed<'_> {
    fn role(&self) -> Role {
        self.tree.nodes[self.node].role
    }

    fn keep(self, f: Found) {
        self.found[self.node] = f;
    }

    fn keep_other(self, type_name: &'static str) {
        self.keep(Found::Other(type_name));
    }

    fn keep_num(self, n: Num) {
        self.keep(Found::Num(n));
    }
}

impl<'de> Visitor<'de> for NodeSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        self.keep_other("a boolean");
        Ok(())
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.keep_other("null");
        Ok(())
    }

    fn visit_u64<E: de::Error>(self, n: u64) -> Result<(), E> {
        self.keep_num(Num::U(n));
        Ok(())
    }

    fn visit_i64<E: de::Error>(self, n: i64) -> Result<(), E> {
        self.keep_num(Num::I(n));
        Ok(())
    }

    fn visit_f64<E: de::Error>(self, n: f64) -> Result<(), E> {
        self.keep_num(Num::F(n));
        Ok(())
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<(), E> {
        if self.role() == Role::Scalar {
            self.keep(Found::Str(s.to_owned()));
        } else {
            self.keep_other("a string");
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        match self.role() {
            Role::Scalar => {
                while seq.next_element_seed(Skip)?.is_some() {}
                self.keep(Found::Other("an array"));
            }
            Role::Window => {
                let mut rows = Vec::new();
                let mut len = 0;
                loop {
                    // Channels past the wire's limit are counted, not kept.
                    let more = if len < MAX_CHANNELS {
                        let row = RowSeed {
                            samples_of: Some(self.mapping),
                        };
                        match seq.next_element_seed(row)? {
                            Some(row) => {
                                rows.push(row);
                                true
                            }
                            None => false,
                        }
                    } else {
                        seq.next_element_seed(Skip)?.is_some()
                    };
                    if !more {
                        break;
                    }
                    len += 1;
                }
                self.keep(Found::Rows { rows, len });
            }
            Role::Channel => {
                let row = RowSeed {
                    samples_of: Some(self.mapping),
                }
                .visit_seq(seq)?;
                self.keep(Found::Row(row));
            }
            Role::Path => {
                let tree = self.tree;
                let children = &tree.nodes[self.node].children;
                let mut i = 0;
                loop {
                    let child = children
                        .iter()
                        .find(|(_, index, _)| *index == Some(i))
                        .map(|(_, _, c)| *c);
                    let more = match child {
                        Some(node) => seq
                            .next_element_seed(NodeSeed {
                                tree,
                                mapping: self.mapping,
                                found: self.found,
                                node,
                            })?
                            .is_some(),
                        None => seq.next_element_seed(Skip)?.is_some(),
                    };
                    if !more {
                        break;
                    }
                    i += 1;
                }
            }
        }
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        if self.role() != Role::Path {
            while map.next_key::<IgnoredAny>()?.is_some() {
                map.next_value_seed(Skip)?;
            }
            self.keep_other("an object");
            return Ok(());
        }
        let tree = self.tree;
        let children = &tree.nodes[self.node].children;
        while let Some(child) = map.next_key_seed(KeySeed(children))? {
            match child {
                Some(node) => map.next_value_seed(NodeSeed {
                    tree,
                    mapping: self.mapping,
                    found: self.found,
                    node,
                })?,
                None => map.next_value_seed(Skip)?,
            }
        }
        Ok(())
    }
}

/// A channel's elements, converted as they are read.
fn read_samples<'de, A: SeqAccess<'de>>(m: &Mapping, seq: &mut A) -> Result<Samples, A::Error> {
    let mut s = Samples {
        // serde_json gives no length: 64, a common window, saves most regrowth.
        counts: Vec::with_capacity(64),
        ..Samples::default()
    };
    while let Some(e) = seq.next_element_seed(RowSeed { samples_of: None })? {
        s.push(m, e);
    }
    Ok(s)
}

/// One channel's value, its samples converted with `samples_of`; or, with `None`, one
/// element of a channel, where an array is not a number and is skipped.
struct RowSeed<'a> {
    samples_of: Option<&'a Mapping>,
}

impl<'de> DeserializeSeed<'de> for RowSeed<'_> {
    type Value = Row;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Row, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for RowSeed<'_> {
    type Value = Row;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Row, E> {
        Ok(Row::Other("a boolean"))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Row, E> {
        Ok(Row::Other("null"))
    }

    fn visit_u64<E: de::Error>(self, n: u64) -> Result<Row, E> {
        Ok(Row::Num(n as f64))
    }

    fn visit_i64<E: de::Error>(self, n: i64) -> Result<Row, E> {
        Ok(Row::Num(n as f64))
    }

    fn visit_f64<E: de::Error>(self, n: f64) -> Result<Row, E> {
        Ok(Row::Num(n))
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<Row, E> {
        Ok(Row::Other("a string"))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Row, A::Error> {
        match self.samples_of {
            Some(m) => read_samples(m, &mut seq).map(Row::Array),
            None => {
                while seq.next_element_seed(Skip)?.is_some() {}
                Ok(Row::Other("an array"))
            }
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Row, A::Error> {
        while map.next_key::<IgnoredAny>()?.is_some() {
            map.next_value_seed(Skip)?;
        }
        Ok(Row::Other("an object"))
    }
}

/// An object key: which child of the node it names, if any (no allocation unless the key
/// has escapes).
struct KeySeed<'a>(&'a [(String, Option<usize>, usize)]);

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = Option<usize>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Option<usize>, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed<'_> {
    type Value = Option<usize>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<Option<usize>, E> {
        Ok(self.0.iter().find(|(t, _, _)| t == key).map(|(_, _, c)| *c))
    }
}

/// Skips one value, as deeply as serde_json's recursion limit allows (as the `Value`
/// reader would), keeping nothing.
struct Skip;

impl<'de> DeserializeSeed<'de> for Skip {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(Skip)
    }
}

impl<'de> Visitor<'de> for Skip {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Ok(())
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Ok(())
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Ok(())
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Ok(())
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(Skip)?.is_some() {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while map.next_key::<IgnoredAny>()?.is_some() {
            map.next_value_seed(Skip)?;
        }
        Ok(())
    }
}
