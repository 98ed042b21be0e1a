//! The two Parquet tables the cloud writes, as Arrow schemas, and the conversions between
//! them and Rust rows. Both are flat and self-describing so that any engine (DataFusion,
//! Spark, Trino, DuckDB) reads them without this crate:
//!
//! * **events** (written by the ingest, one file per batch × date × device): one row per
//!   journal record; the 13 features are one `Float32` column each, named as in
//!   [`reflex_models::FEATURE_NAMES`]; the model input and logits are `List<Float32>`.
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
    BinaryBuilder, BooleanBuilder, Float32Builder, ListBuilder, StringBuilder, UInt32Builder,
    UInt64Builder, UInt8Builder,
};
use arrow_array::{
    Array, ArrayRef, BooleanArray, Float32Array, ListArray, RecordBatch, StringArray, UInt32Array,
    UInt64Array, UInt8Array,
};
use arrow_schema::{ArrowError, DataType, Field, Schema, SchemaRef};
use bytes::Bytes;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::errors::ParquetError;
use parquet::file::properties::WriterProperties;
use reflex_models::{FEATURE_COUNT, FEATURE_NAMES};
use reflex_records::{DeadlineOutcome, JournalRecord};

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
}

impl EventRow {
    /// The row of `record`, filed under `fix`'s estimate when its clock was implausible.
    pub fn filed(
        batch_id: String,
        journal_seq: u64,
        mut record: JournalRecord,
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
        }
    }
}

fn list_f32() -> DataType {
    DataType::List(Arc::new(Field::new("item", DataType::Float32, true)))
}

/// Schema of the events table.
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
    ];
    for name in FEATURE_NAMES {
        fields.push(Field::new(name, DataType::Float32, false));
    }
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

fn push_list(b: &mut ListBuilder<Float32Builder>, values: &[f32]) {
    b.values().append_slice(values);
    b.append(true);
}

/// The events table of `rows` as one record batch. Every record must carry
/// [`FEATURE_COUNT`] features (the ingest checks it before calling this).
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
    features: Vec<Float32Builder>,
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
            features: (0..FEATURE_COUNT)
                .map(|_| Float32Builder::with_capacity(n))
                .collect(),
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

    /// Appends one row (a missing feature is NaN).
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
        for (i, b) in self.features.iter_mut().enumerate() {
            b.append_value(r.features.get(i).copied().unwrap_or(f32::NAN));
        }
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
        ];
        columns.extend(
            self.features
                .iter_mut()
                .map(|b| Arc::new(b.finish()) as ArrayRef),
        );
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
    /// The 13 feature columns, in [`FEATURE_NAMES`] order.
    pub features: Vec<&'a Float32Array>,
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
        let mut features = Vec::with_capacity(FEATURE_COUNT);
        for name in FEATURE_NAMES {
            features.push(column!(batch, name, Float32Array, "Float32")?);
        }
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
            EventRow::filed(r.batch_id.clone(), 1, r.record.clone(), Some(fix)),
            EventRow::filed(r.batch_id.clone(), 2, r.record.clone(), None),
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
    fn events_round_trip_through_parquet_with_one_column_per_feature() {
        let rows: Vec<EventRow> = (0..5).map(row).collect();
        let bytes = to_parquet(&events_batch(&rows).unwrap()).unwrap();
        let batches = read_parquet(Bytes::from(bytes)).unwrap();
        assert_eq!(batches.len(), 1);
        let c = EventColumns::of(&batches[0]).unwrap();
        assert_eq!(c.len, 5);
        assert_eq!(c.device.value(3), "dev-3");
        assert_eq!(c.features[12].value(2), 14.0);
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
        assert!(e.to_string().contains("mean_x"), "{e}");
    }
}
