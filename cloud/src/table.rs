//! The two Parquet tables the cloud writes, as Arrow schemas, and the conversions between
//! them and Rust rows. Both are flat and self-describing so that any engine (DataFusion,
//! Spark, Trino, DuckDB) reads them without this crate:
//!
//! * **events** (written by the ingest, one file per batch × date × device): one row per
//!   journal record; the model input and logits are `List<Float32>`. The features are
//!   stored **by name** in one column `features` of type `Map<Utf8, Float32>`, the
//!   entries in the record's feature set order (the 13 demo features for a record without
//!   a set): whatever features a model declares, one schema, and every engine reads a
//!   Parquet MAP (DataFusion, Spark, Trino and DuckDB index it by key). A map rather than
//!   parallel name and value lists, because a key and its value cannot drift apart.
//!   Files written before feature sets have one `Float32` column per demo feature instead
//!   ([`LEGACY_FEATURE_NAMES`]) and no `features` column: [`events_read_schema`] (what the
//!   rescore job reads) has both, nullable, and [`EventColumns`] reads either file.
//!   `arrival_unix_us` is the time the event is filed under: the board's stamp, or, when
//!   `clock_suspect` is true, the cloud's estimate ([`crate::clock`]), the board's own stamp
//!   then being in `board_arrival_unix_us` (both columns nullable: older files lack them).
//! * **rescored** (written by the rescore job, one file per input file): the edge decision
//!   beside the cloud model's, per event.
//!
//! Parquet files are zstd-compressed and written with a fixed `created_by`, so the same rows
//! give the same bytes (a re-sent batch rewrites identical files).

use std::sync::Arc;

use arrow_array::builder::{
    BinaryBuilder, BooleanBuilder, Float32Builder, ListBuilder, MapBuilder, StringBuilder,
    UInt32Builder, UInt64Builder, UInt8Builder,
};
use arrow_array::{
    Array, ArrayRef, BooleanArray, Float32Array, ListArray, MapArray, RecordBatch, StringArray,
    UInt32Array, UInt64Array, UInt8Array,
};
use arrow_schema::{ArrowError, DataType, Field, Schema, SchemaRef};
use bytes::Bytes;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::errors::ParquetError;
use parquet::file::properties::WriterProperties;
use reflex_records::{DeadlineOutcome, FeatureSet, JournalRecord, DEMO_FEATURE_NAMES};

/// The feature columns of files written before the `features` map: one `Float32` column
/// per demo feature, in this order.
pub const LEGACY_FEATURE_NAMES: [&str; 13] = DEMO_FEATURE_NAMES;

/// The column of the features by name.
pub const FEATURES: &str = "features";

/// Why a table could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum TableError {
    /// Arrow refused the arrays (a bug, or a file of another schema).
    #[error("arrow: {0}")]
    Arrow(#[from] ArrowError),
    /// The Parquet encoder/decoder failed.
    #[error("parquet: {0}")]
    Parquet(#[from] ParquetError),
    /// A column is missing or of another type.
    #[error("column {name:?} is missing or not {expected}")]
    Column {
        /// Column name.
        name: &'static str,
        /// Expected Arrow type.
        expected: &'static str,
    },
}

/// One stored event: a journal record plus where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct EventRow {
    /// The batch it arrived in.
    pub batch_id: String,
    /// Journal sequence on its board.
    pub journal_seq: u64,
    /// The record; its `arrival_unix_us` is the time it is filed under (the cloud's
    /// estimate when `board_arrival_unix_us` is set).
    pub record: JournalRecord,
    /// Set when the board's timestamp was implausible ([`crate::clock`]): the board's own
    /// `arrival_unix_us`, replaced in `record` by the estimate (`clock_suspect` column).
    pub board_arrival_unix_us: Option<u64>,
    /// The names of the record's features (`None`: the demo features), shared by the
    /// records of a batch that have the same set.
    pub feature_set: Option<Arc<FeatureSet>>,
}

impl EventRow {
    /// The row of `record`, filed under `fix`'s estimate when its clock was implausible.
    pub fn filed(
        batch_id: String,
        journal_seq: u64,
        mut record: JournalRecord,
        feature_set: Option<Arc<FeatureSet>>,
        fix: Option<crate::clock::ClockFix>,
    ) -> EventRow {
        let board_arrival_unix_us = fix.map(|f| {
            record.arrival_unix_us = f.filed_unix_us;
            f.board_unix_us
        });
        EventRow {
            batch_id,
            journal_seq,
            record,
            board_arrival_unix_us,
            feature_set,
        }
    }

    /// The name of feature `i` of the record.
    fn feature_name(&self, i: usize) -> &str {
        match &self.feature_set {
            Some(set) => set.names.get(i).map_or("", String::as_str),
            None => DEMO_FEATURE_NAMES.get(i).copied().unwrap_or(""),
        }
    }
}

fn features_builder() -> MapBuilder<StringBuilder, Float32Builder> {
    MapBuilder::new(None, StringBuilder::new(), Float32Builder::new())
}

/// The type of the `features` column: `Map<Utf8, Float32>` (entries `keys`, `values`).
pub fn features_type() -> DataType {
    features_builder().finish().data_type().clone()
}

fn list_f32() -> DataType {
    DataType::List(Arc::new(Field::new("item", DataType::Float32, true)))
}

/// Schema of the events table as the ingest writes it.
pub fn events_schema() -> SchemaRef {
    let mut fields = vec![
        Field::new("batch_id", DataType::Utf8, false),
        Field::new("node", DataType::Utf8, false),
        Field::new("journal_seq", DataType::UInt64, false),
        Field::new("device", DataType::Utf8, false),
        Field::new("seq", DataType::UInt64, false),
        Field::new("arrival_unix_us", DataType::UInt64, false),
        Field::new("payload", DataType::Binary, false),
        Field::new("model_input", list_f32(), false),
        // Nullable in the schema (every row has it): files written before it lack it.
        Field::new(FEATURES, features_type(), true),
    ];
    fields.extend([
        Field::new("logits", list_f32(), false),
        Field::new("class", DataType::UInt8, false),
        Field::new("command", DataType::Binary, false),
        Field::new("model_name", DataType::Utf8, false),
        Field::new("model_version", DataType::Utf8, false),
        Field::new("source", DataType::Utf8, false),
        Field::new("decode_us", DataType::UInt32, false),
        Field::new("queue_us", DataType::UInt32, false),
        Field::new("infer_us", DataType::UInt32, false),
        Field::new("publish_us", DataType::UInt32, false),
        Field::new("end_to_end_us", DataType::UInt32, false),
        Field::new("budget_us", DataType::UInt32, false),
        Field::new("deadline_miss", DataType::Boolean, false),
        Field::new("miss_cause", DataType::Utf8, true),
        // Board clocks (`crate::clock`); nullable: files written before them lack them.
        Field::new("clock_suspect", DataType::Boolean, true),
        Field::new("board_arrival_unix_us", DataType::UInt64, true),
    ]);
    Arc::new(Schema::new(fields))
}

/// The schema the events table is read with: [`events_schema`] and, nullable, the
/// [`LEGACY_FEATURE_NAMES`] columns of files written before the `features` map (a file
/// has one or the other; what it lacks reads as NULL).
pub fn events_read_schema() -> SchemaRef {
    let mut fields: Vec<Field> = events_schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    fields.extend(
        LEGACY_FEATURE_NAMES
            .iter()
            .map(|n| Field::new(*n, DataType::Float32, true)),
    );
    Arc::new(Schema::new(fields))
}

fn push_list(b: &mut ListBuilder<Float32Builder>, values: &[f32]) {
    b.values().append_slice(values);
    b.append(true);
}

/// The events table of `rows` as one record batch. Every record must carry as many
/// features as its set names (the ingest checks it before calling this; a value past the
/// names would have no name and is left out).
pub fn events_batch(rows: &[EventRow]) -> Result<RecordBatch, TableError> {
    let mut builders = EventBuilders::with_capacity(rows.len());
    for row in rows {
        builders.push(row);
    }
    // The builders are non-null, so the nullable flags of the schema fit.
    Ok(RecordBatch::try_new(events_schema(), builders.finish())?)
}

/// One column builder per field of [`events_schema`].
struct EventBuilders {
    batch_id: StringBuilder,
    node: StringBuilder,
    journal_seq: UInt64Builder,
    device: StringBuilder,
    seq: UInt64Builder,
    arrival: UInt64Builder,
    payload: BinaryBuilder,
    model_input: ListBuilder<Float32Builder>,
    features: MapBuilder<StringBuilder, Float32Builder>,
    logits: ListBuilder<Float32Builder>,
    class: UInt8Builder,
    command: BinaryBuilder,
    model_name: StringBuilder,
    model_version: StringBuilder,
    source: StringBuilder,
    /// decode, queue, infer, publish, end-to-end, budget (µs), in schema order.
    timings: Vec<UInt32Builder>,
    miss: BooleanBuilder,
    cause: StringBuilder,
    clock_suspect: BooleanBuilder,
    board_arrival: UInt64Builder,
}

impl EventBuilders {
    fn with_capacity(n: usize) -> EventBuilders {
        EventBuilders {
            batch_id: StringBuilder::new(),
            node: StringBuilder::new(),
            journal_seq: UInt64Builder::with_capacity(n),
            device: StringBuilder::new(),
            seq: UInt64Builder::with_capacity(n),
            arrival: UInt64Builder::with_capacity(n),
            payload: BinaryBuilder::new(),
            model_input: ListBuilder::new(Float32Builder::new()),
            features: features_builder(),
            logits: ListBuilder::new(Float32Builder::new()),
            class: UInt8Builder::with_capacity(n),
            command: BinaryBuilder::new(),
            model_name: StringBuilder::new(),
            model_version: StringBuilder::new(),
            source: StringBuilder::new(),
            timings: (0..6).map(|_| UInt32Builder::with_capacity(n)).collect(),
            miss: BooleanBuilder::with_capacity(n),
            cause: StringBuilder::new(),
            clock_suspect: BooleanBuilder::with_capacity(n),
            board_arrival: UInt64Builder::with_capacity(n),
        }
    }

    /// Appends one row.
    fn push(&mut self, row: &EventRow) {
        let r = &row.record;
        self.batch_id.append_value(&row.batch_id);
        self.node.append_value(&r.node);
        self.journal_seq.append_value(row.journal_seq);
        self.device.append_value(&r.device);
        self.seq.append_value(r.seq);
        self.arrival.append_value(r.arrival_unix_us);
        self.payload.append_value(&r.payload);
        push_list(&mut self.model_input, &r.model_input);
        for (i, &v) in r.features.iter().enumerate() {
            let name = row.feature_name(i);
            if !name.is_empty() {
                self.features.keys().append_value(name);
                self.features.values().append_value(v);
            }
        }
        self.features
            .append(true)
            .expect("keys and values are appended in pairs");
        push_list(&mut self.logits, &r.logits);
        self.class.append_value(r.class);
        self.command.append_value(&r.command);
        self.model_name.append_value(&r.model.name);
        self.model_version.append_value(&r.model.version);
        self.source.append_value(r.source.as_str());
        let t = &r.timings;
        for (b, v) in self.timings.iter_mut().zip([
            t.decode_us,
            t.queue_us,
            t.infer_us,
            t.publish_us,
            t.end_to_end_us,
            t.budget_us,
        ]) {
            b.append_value(v);
        }
        match &r.outcome {
            DeadlineOutcome::OnTime => {
                self.miss.append_value(false);
                self.cause.append_null();
            }
            DeadlineOutcome::Miss { cause: c } => {
                self.miss.append_value(true);
                self.cause.append_value(c);
            }
        }
        self.clock_suspect
            .append_value(row.board_arrival_unix_us.is_some());
        self.board_arrival
            .append_value(row.board_arrival_unix_us.unwrap_or(r.arrival_unix_us));
    }

    /// The columns, in [`events_schema`] order.
    fn finish(mut self) -> Vec<ArrayRef> {
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(self.batch_id.finish()),
            Arc::new(self.node.finish()),
            Arc::new(self.journal_seq.finish()),
            Arc::new(self.device.finish()),
            Arc::new(self.seq.finish()),
            Arc::new(self.arrival.finish()),
            Arc::new(self.payload.finish()),
            Arc::new(self.model_input.finish()),
            Arc::new(self.features.finish()),
        ];
        columns.extend([
            Arc::new(self.logits.finish()) as ArrayRef,
            Arc::new(self.class.finish()),
            Arc::new(self.command.finish()),
            Arc::new(self.model_name.finish()),
            Arc::new(self.model_version.finish()),
            Arc::new(self.source.finish()),
        ]);
        columns.extend(
            self.timings
                .iter_mut()
                .map(|b| Arc::new(b.finish()) as ArrayRef),
        );
        columns.push(Arc::new(self.miss.finish()));
        columns.push(Arc::new(self.cause.finish()));
        columns.push(Arc::new(self.clock_suspect.finish()));
        columns.push(Arc::new(self.board_arrival.finish()));
        columns
    }
}

/// The writer settings of every file: zstd, fixed `created_by` (reproducible bytes).
fn writer_properties() -> WriterProperties {
    WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .set_created_by(concat!("reflex-cloud ", env!("CARGO_PKG_VERSION")).to_owned())
        .build()
}

/// One record batch as the bytes of a Parquet file.
pub fn to_parquet(batch: &RecordBatch) -> Result<Vec<u8>, TableError> {
    let mut out = Vec::new();
    let mut w = ArrowWriter::try_new(&mut out, batch.schema(), Some(writer_properties()))?;
    w.write(batch)?;
    w.close()?;
    Ok(out)
}

/// All record batches of a Parquet file.
pub fn read_parquet(bytes: Bytes) -> Result<Vec<RecordBatch>, TableError> {
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)?
        .with_batch_size(8192)
        .build()?;
    Ok(reader.collect::<Result<Vec<_>, ArrowError>>()?)
}

macro_rules! column {
    ($batch:expr, $name:expr, $ty:ty, $expected:expr) => {
        $batch
            .column_by_name($name)
            .and_then(|c| c.as_any().downcast_ref::<$ty>())
            .ok_or(TableError::Column {
                name: $name,
                expected: $expected,
            })
    };
}

/// The columns of the events table the rescore job reads, borrowed from one record batch.
pub struct EventColumns<'a> {
    /// Rows.
    pub len: usize,
    /// `device`.
    pub device: &'a StringArray,
    /// `node`.
    pub node: &'a StringArray,
    /// `seq`.
    pub seq: &'a UInt64Array,
    /// `journal_seq`.
    pub journal_seq: &'a UInt64Array,
    /// `arrival_unix_us`.
    pub arrival_unix_us: &'a UInt64Array,
    /// `model_input`.
    pub model_input: &'a ListArray,
    /// The features by name.
    pub features: FeatureColumns<'a>,
    /// `class`.
    pub class: &'a UInt8Array,
    /// `model_version`.
    pub model_version: &'a StringArray,
    /// `model_name`.
    pub model_name: &'a StringArray,
    /// `source`.
    pub source: &'a StringArray,
    /// `end_to_end_us`.
    pub end_to_end_us: &'a UInt32Array,
    /// `deadline_miss`.
    pub deadline_miss: &'a BooleanArray,
}

impl<'a> EventColumns<'a> {
    /// Borrows the columns; errors naming the first missing or mistyped one.
    pub fn of(batch: &'a RecordBatch) -> Result<Self, TableError> {
        let features = FeatureColumns::of(batch)?;
        Ok(EventColumns {
            len: batch.num_rows(),
            device: column!(batch, "device", StringArray, "Utf8")?,
            node: column!(batch, "node", StringArray, "Utf8")?,
            seq: column!(batch, "seq", UInt64Array, "UInt64")?,
            journal_seq: column!(batch, "journal_seq", UInt64Array, "UInt64")?,
            arrival_unix_us: column!(batch, "arrival_unix_us", UInt64Array, "UInt64")?,
            model_input: column!(batch, "model_input", ListArray, "List<Float32>")?,
            features,
            class: column!(batch, "class", UInt8Array, "UInt8")?,
            model_version: column!(batch, "model_version", StringArray, "Utf8")?,
            model_name: column!(batch, "model_name", StringArray, "Utf8")?,
            source: column!(batch, "source", StringArray, "Utf8")?,
            end_to_end_us: column!(batch, "end_to_end_us", UInt32Array, "UInt32")?,
            deadline_miss: column!(batch, "deadline_miss", BooleanArray, "Boolean")?,
        })
    }

    /// The model input of row `i` (empty when the list is null or not `Float32`).
    pub fn model_input(&self, i: usize) -> Vec<f32> {
        let v = self.model_input.value(i);
        v.as_any()
            .downcast_ref::<Float32Array>()
            .map(|a| a.values().to_vec())
            .unwrap_or_default()
    }
}

/// The features of an events table, whichever way its file stores them.
#[derive(Debug, Clone)]
pub enum FeatureColumns<'a> {
    /// The `features` map (files with feature sets).
    Map(&'a MapArray),
    /// One column per demo feature ([`LEGACY_FEATURE_NAMES`], older files).
    Legacy(Vec<&'a Float32Array>),
    /// Both, as the rescore job reads a snapshot of old and new files
    /// ([`events_read_schema`]): the map where it is not NULL, else the columns.
    Both(&'a MapArray, Vec<&'a Float32Array>),
}

impl<'a> FeatureColumns<'a> {
    /// The feature columns of `batch`: the map, the legacy columns, or both; refuses a
    /// batch with neither, naming the map.
    pub fn of(batch: &'a RecordBatch) -> Result<Self, TableError> {
        let map = batch
            .column_by_name(FEATURES)
            .and_then(|c| c.as_any().downcast_ref::<MapArray>());
        let legacy: Option<Vec<&Float32Array>> = LEGACY_FEATURE_NAMES
            .iter()
            .map(|n| {
                batch
                    .column_by_name(n)
                    .and_then(|c| c.as_any().downcast_ref::<Float32Array>())
            })
            .collect();
        match (map, legacy) {
            (Some(m), Some(l)) => Ok(FeatureColumns::Both(m, l)),
            (Some(m), None) => Ok(FeatureColumns::Map(m)),
            (None, Some(l)) => Ok(FeatureColumns::Legacy(l)),
            (None, None) => Err(TableError::Column {
                name: FEATURES,
                expected: "Map<Utf8, Float32>",
            }),
        }
    }

    /// Row `i`'s features as `(name, value)` in the record's order, into `out`
    /// (replaced); empty when the row has none (NULL map and NULL columns).
    pub fn row_into(&self, i: usize, out: &mut Vec<(&'a str, f32)>) {
        out.clear();
        let (map, legacy) = match self {
            FeatureColumns::Map(m) => (Some(*m), None),
            FeatureColumns::Legacy(l) => (None, Some(l)),
            FeatureColumns::Both(m, l) => (Some(*m), Some(l)),
        };
        if let Some(m) = map.filter(|m| m.is_valid(i)) {
            let keys = m.keys().as_any().downcast_ref::<StringArray>();
            let values = m.values().as_any().downcast_ref::<Float32Array>();
            if let (Some(keys), Some(values)) = (keys, values) {
                let offsets = m.value_offsets();
                let (start, end) = (offsets[i] as usize, offsets[i + 1] as usize);
                out.extend((start..end).map(|j| (keys.value(j), values.value(j))));
            }
            return;
        }
        if let Some(l) = legacy {
            if l.iter().all(|c| c.is_valid(i)) {
                out.extend(
                    LEGACY_FEATURE_NAMES
                        .iter()
                        .zip(l)
                        .map(|(n, c)| (*n, c.value(i))),
                );
            }
        }
    }

    /// Row `i`'s feature `name`, if it has it.
    pub fn value(&self, i: usize, name: &str) -> Option<f32> {
        let mut row = Vec::new();
        self.row_into(i, &mut row);
        row.into_iter().find(|(n, _)| *n == name).map(|(_, v)| v)
    }
}

/// One rescored event.
#[derive(Debug, Clone, PartialEq)]
pub struct RescoredRow {
    /// Device id.
    pub device: String,
    /// Board.
    pub node: String,
    /// Device sequence.
    pub seq: u64,
    /// Journal sequence.
    pub journal_seq: u64,
    /// Arrival, µs since the epoch.
    pub arrival_unix_us: u64,
    /// Class the board acted on.
    pub edge_class: u8,
    /// Who decided on the board (`model`, `fallback`, `rule`).
    pub edge_source: String,
    /// Model version on the board.
    pub edge_model_version: String,
    /// The cloud model's class.
    pub cloud_class: u8,
    /// The cloud model's logits.
    pub cloud_logits: Vec<f32>,
    /// End-to-end latency on the board, µs.
    pub end_to_end_us: u32,
    /// The deadline was missed.
    pub deadline_miss: bool,
}

/// Schema of the rescored table.
pub fn rescored_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("device", DataType::Utf8, false),
        Field::new("node", DataType::Utf8, false),
        Field::new("seq", DataType::UInt64, false),
        Field::new("journal_seq", DataType::UInt64, false),
        Field::new("arrival_unix_us", DataType::UInt64, false),
        Field::new("edge_class", DataType::UInt8, false),
        Field::new("edge_source", DataType::Utf8, false),
        Field::new("edge_model_version", DataType::Utf8, false),
        Field::new("cloud_class", DataType::UInt8, false),
        Field::new("cloud_logits", list_f32(), false),
        Field::new("agree", DataType::Boolean, false),
        Field::new("end_to_end_us", DataType::UInt32, false),
        Field::new("deadline_miss", DataType::Boolean, false),
    ]))
}

/// The rescored table of `rows` as one record batch.
pub fn rescored_batch(rows: &[RescoredRow]) -> Result<RecordBatch, TableError> {
    let mut logits = ListBuilder::new(Float32Builder::new());
    for r in rows {
        push_list(&mut logits, &r.cloud_logits);
    }
    let strings = |f: fn(&RescoredRow) -> &str| -> ArrayRef {
        Arc::new(rows.iter().map(|r| Some(f(r))).collect::<StringArray>())
    };
    let u64s = |f: fn(&RescoredRow) -> u64| -> ArrayRef {
        Arc::new(UInt64Array::from_iter_values(rows.iter().map(f)))
    };
    let columns: Vec<ArrayRef> = vec![
        strings(|r| &r.device),
        strings(|r| &r.node),
        u64s(|r| r.seq),
        u64s(|r| r.journal_seq),
        u64s(|r| r.arrival_unix_us),
        Arc::new(UInt8Array::from_iter_values(
            rows.iter().map(|r| r.edge_class),
        )),
        strings(|r| &r.edge_source),
        strings(|r| &r.edge_model_version),
        Arc::new(UInt8Array::from_iter_values(
            rows.iter().map(|r| r.cloud_class),
        )),
        Arc::new(logits.finish()),
        Arc::new(BooleanArray::from(
            rows.iter()
                .map(|r| r.edge_class == r.cloud_class)
                .collect::<Vec<_>>(),
        )),
        Arc::new(UInt32Array::from_iter_values(
            rows.iter().map(|r| r.end_to_end_us),
        )),
        Arc::new(BooleanArray::from(
            rows.iter().map(|r| r.deadline_miss).collect::<Vec<_>>(),
        )),
    ];
    Ok(RecordBatch::try_new(rescored_schema(), columns)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use reflex_records::{DecisionSource, ModelId, StageTimings};

    fn row(i: u64) -> EventRow {
        EventRow {
            batch_id: "b".repeat(64),
            journal_seq: 100 + i,
            record: JournalRecord {
                node: "n1".into(),
                device: format!("dev-{i}"),
                seq: i,
                arrival_unix_us: 1_700_000_000_000_000 + i,
                payload: vec![1, 2, 3],
                model_input: vec![0.5; 192],
                features: (0..13).map(|k| k as f32 + i as f32).collect(),
                logits: vec![0.1, 0.2, 0.3, 0.4],
                class: 3,
                command: vec![7],
                model: ModelId {
                    name: "edge".into(),
                    version: "1.0.0".into(),
                },
                source: DecisionSource::Fallback,
                timings: StageTimings {
                    end_to_end_us: 900,
                    ..StageTimings::default()
                },
                outcome: if i.is_multiple_of(2) {
                    DeadlineOutcome::OnTime
                } else {
                    DeadlineOutcome::Miss {
                        cause: "model_too_slow".into(),
                    }
                },
            },
            board_arrival_unix_us: None,
            feature_set: None,
        }
    }

    #[test]
    fn a_row_filed_under_a_clock_estimate_keeps_the_boards_stamp_and_is_flagged() {
        let fix = crate::clock::ClockFix {
            filed_unix_us: 1_796_000_000_000_000,
            board_unix_us: 7,
        };
        let r = row(0);
        let rows = vec![
            EventRow::filed(r.batch_id.clone(), 1, r.record.clone(), None, Some(fix)),
            EventRow::filed(r.batch_id.clone(), 2, r.record.clone(), None, None),
        ];
        assert_eq!(rows[0].record.arrival_unix_us, fix.filed_unix_us);
        let b = &read_parquet(Bytes::from(
            to_parquet(&events_batch(&rows).unwrap()).unwrap(),
        ))
        .unwrap()[0];
        let flag = b
            .column_by_name("clock_suspect")
            .unwrap()
            .as_any()
            .downcast_ref::<BooleanArray>()
            .unwrap();
        let board = b
            .column_by_name("board_arrival_unix_us")
            .unwrap()
            .as_any()
            .downcast_ref::<UInt64Array>()
            .unwrap();
        let c = EventColumns::of(b).unwrap();
        assert_eq!(c.arrival_unix_us.value(0), fix.filed_unix_us);
        assert!(flag.value(0) && !flag.value(1));
        assert_eq!(board.value(0), 7);
        assert_eq!(board.value(1), r.record.arrival_unix_us);
    }

    #[test]
    fn events_round_trip_through_parquet_with_the_demo_features_by_name() {
        let rows: Vec<EventRow> = (0..5).map(row).collect();
        let bytes = to_parquet(&events_batch(&rows).unwrap()).unwrap();
        let batches = read_parquet(Bytes::from(bytes)).unwrap();
        assert_eq!(batches.len(), 1);
        let c = EventColumns::of(&batches[0]).unwrap();
        assert_eq!(c.len, 5);
        assert_eq!(c.device.value(3), "dev-3");
        assert_eq!(c.features.value(2, "temperature"), Some(14.0));
        assert_eq!(c.features.value(2, "mean_x"), Some(2.0));
        let mut row = Vec::new();
        c.features.row_into(4, &mut row);
        let names: Vec<&str> = row.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, DEMO_FEATURE_NAMES, "in the record's order");
        assert_eq!(c.model_input(4).len(), 192);
        assert!(c.deadline_miss.value(1) && !c.deadline_miss.value(2));
        assert_eq!(c.source.value(0), "fallback");
        assert_eq!(c.end_to_end_us.value(0), 900);
    }

    #[test]
    fn the_same_rows_give_the_same_parquet_bytes() {
        let rows: Vec<EventRow> = (0..3).map(row).collect();
        let a = to_parquet(&events_batch(&rows).unwrap()).unwrap();
        let b = to_parquet(&events_batch(&rows).unwrap()).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn a_file_of_another_schema_is_refused_naming_the_column() {
        let rescored = rescored_batch(&[]).unwrap();
        let e = EventColumns::of(&rescored).err().unwrap();
        assert!(e.to_string().contains("\"features\""), "{e}");
    }

    #[test]
    fn features_of_any_set_are_stored_by_their_names() {
        let set = Arc::new(FeatureSet {
            model: reflex_records::ModelId {
                name: "motor".into(),
                version: "1.0.0".into(),
            },
            names: vec!["rms_current".into(), "max_temperature".into()],
        });
        let mut rows: Vec<EventRow> = (0..3).map(row).collect();
        rows[1].record.features = vec![4.5, 80.0];
        rows[1].feature_set = Some(set.clone());
        let bytes = to_parquet(&events_batch(&rows).unwrap()).unwrap();
        let b = &read_parquet(Bytes::from(bytes)).unwrap()[0];
        assert_eq!(b.schema(), events_schema(), "the map reads back as written");
        let c = EventColumns::of(b).unwrap();
        let mut row = Vec::new();
        c.features.row_into(1, &mut row);
        assert_eq!(row, [("rms_current", 4.5), ("max_temperature", 80.0)]);
        assert_eq!(c.features.value(1, "temperature"), None);
        assert_eq!(c.features.value(0, "temperature"), Some(12.0));
        assert_eq!(c.features.value(2, "kurt_z"), Some(13.0));
    }

    #[test]
    fn a_file_from_before_the_map_is_read_from_its_feature_columns() {
        let columns: Vec<ArrayRef> = (0..13)
            .map(|k| Arc::new(Float32Array::from(vec![k as f32, 10.0 + k as f32])) as ArrayRef)
            .collect();
        let schema = Schema::new(
            LEGACY_FEATURE_NAMES
                .iter()
                .map(|n| Field::new(*n, DataType::Float32, false))
                .collect::<Vec<_>>(),
        );
        let old = RecordBatch::try_new(Arc::new(schema), columns).unwrap();
        let f = FeatureColumns::of(&old).unwrap();
        assert!(matches!(f, FeatureColumns::Legacy(_)));
        assert_eq!(f.value(1, "std_x"), Some(13.0));
        let mut row = Vec::new();
        f.row_into(0, &mut row);
        assert_eq!(row.len(), 13);
        assert_eq!(row[12], ("temperature", 12.0));
    }
}
