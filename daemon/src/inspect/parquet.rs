//! `reflexd journal export --format parquet` (cargo feature `parquet-export`): the same
//! records as the JSON lines, as one Parquet file (zstd pages) written with the `parquet`
//! crate's own column writer (no Arrow). Columns, one row per record:
//!
//! `journal_seq, node, device, seq, arrival_unix_us` (u64/strings), `payload` (bytes),
//! `model_input`, `features`, `logits` (repeated float; `features` is empty for a record
//! whose features could not be computed), `class, command, model_name, model_version,
//! source, decode_us, queue_us, infer_us, publish_us, end_to_end_us, budget_us,
//! deadline_miss, miss_cause` (null when on time), `dead_letter_reason` (null outside the
//! dead-letter range). A record that does not decode is left out and counted.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use parquet::basic::{Compression, ZstdLevel};
use parquet::data_type::{BoolType, ByteArray, ByteArrayType, FloatType, Int32Type, Int64Type};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::parser::parse_message_type;
use reflex_records::{DeadlineOutcome, JournalRecord};

/// The schema (module doc).
pub const SCHEMA: &str = "message journal_record {
  required int64 journal_seq (INTEGER(64,false));
  required binary node (STRING);
  required binary device (STRING);
  required int64 seq (INTEGER(64,false));
  required int64 arrival_unix_us (INTEGER(64,false));
  required binary payload;
  repeated float model_input;
  repeated float features;
  repeated float logits;
  required int32 class (INTEGER(8,false));
  required binary command;
  required binary model_name (STRING);
  required binary model_version (STRING);
  required binary source (STRING);
  required int32 decode_us (INTEGER(32,false));
  required int32 queue_us (INTEGER(32,false));
  required int32 infer_us (INTEGER(32,false));
  required int32 publish_us (INTEGER(32,false));
  required int32 end_to_end_us (INTEGER(32,false));
  required int32 budget_us (INTEGER(32,false));
  required boolean deadline_miss;
  optional binary miss_cause (STRING);
  optional binary dead_letter_reason (STRING);
}";

/// One row: journal sequence, the record, its dead-letter reason.
pub type Row = (u64, JournalRecord, Option<String>);

fn err(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

fn bytes(v: &[u8]) -> ByteArray {
    ByteArray::from(v.to_vec())
}

/// Values, definition and repetition levels of a repeated float column (pure).
fn repeated(lists: impl Iterator<Item = Vec<f32>>) -> (Vec<f32>, Vec<i16>, Vec<i16>) {
    let (mut values, mut def, mut rep) = (Vec::new(), Vec::new(), Vec::new());
    for list in lists {
        if list.is_empty() {
            def.push(0);
            rep.push(0);
        }
        for (i, v) in list.into_iter().enumerate() {
            values.push(v);
            def.push(1);
            rep.push(i16::from(i > 0));
        }
    }
    (values, def, rep)
}

/// Values and definition levels of an optional byte column (pure).
fn optional(vals: Vec<Option<&[u8]>>) -> (Vec<ByteArray>, Vec<i16>) {
    let def: Vec<i16> = vals.iter().map(|v| i16::from(v.is_some())).collect();
    let values: Vec<ByteArray> = vals.into_iter().flatten().map(bytes).collect();
    (values, def)
}

/// Writes each chunk of `chunks` as one row group of a Parquet file into `file`; returns
/// the file (closed by the writer, not synced).
pub fn write(
    chunks: &mut dyn Iterator<Item = std::io::Result<Vec<Row>>>,
    file: File,
) -> std::io::Result<File> {
    let schema = Arc::new(parse_message_type(SCHEMA).map_err(err)?);
    let props = Arc::new(
        WriterProperties::builder()
            .set_compression(Compression::ZSTD(ZstdLevel::default()))
            .build(),
    );
    let mut w = SerializedFileWriter::new(file, schema, props).map_err(err)?;
    for rows in chunks {
        write_group(&mut w, &rows?)?;
    }
    w.into_inner().map_err(err)
}

fn write_group(w: &mut SerializedFileWriter<File>, rows: &[Row]) -> std::io::Result<()> {
    let mut rg = w.next_row_group().map_err(err)?;
    macro_rules! column {
        ($ty:ty, $values:expr, $def:expr, $rep:expr) => {{
            let mut c = rg
                .next_column()
                .map_err(err)?
                .ok_or_else(|| err("fewer columns than the schema"))?;
            c.typed::<$ty>()
                .write_batch(&$values, $def, $rep)
                .map_err(err)?;
            c.close().map_err(err)?;
        }};
    }
    let longs = |f: &dyn Fn(&Row) -> u64| rows.iter().map(|x| f(x) as i64).collect::<Vec<i64>>();
    let strs = |f: &dyn Fn(&Row) -> &[u8]| rows.iter().map(|x| bytes(f(x))).collect::<Vec<_>>();
    let ints = |f: &dyn Fn(&Row) -> u32| rows.iter().map(|x| f(x) as i32).collect::<Vec<i32>>();
    column!(Int64Type, longs(&|x| x.0), None, None);
    column!(ByteArrayType, strs(&|x| x.1.node.as_bytes()), None, None);
    column!(ByteArrayType, strs(&|x| x.1.device.as_bytes()), None, None);
    column!(Int64Type, longs(&|x| x.1.seq), None, None);
    column!(Int64Type, longs(&|x| x.1.arrival_unix_us), None, None);
    column!(ByteArrayType, strs(&|x| &x.1.payload), None, None);
    let lists: [fn(&Row) -> Vec<f32>; 3] = [
        |x| x.1.model_input.clone(),
        |x| x.1.features.clone(),
        |x| x.1.logits.clone(),
    ];
    for list in lists {
        let (values, def, rep) = repeated(rows.iter().map(list));
        column!(FloatType, values, Some(&def[..]), Some(&rep[..]));
    }
    column!(Int32Type, ints(&|x| u32::from(x.1.class)), None, None);
    column!(ByteArrayType, strs(&|x| &x.1.command), None, None);
    column!(
        ByteArrayType,
        strs(&|x| x.1.model.name.as_bytes()),
        None,
        None
    );
    column!(
        ByteArrayType,
        strs(&|x| x.1.model.version.as_bytes()),
        None,
        None
    );
    column!(
        ByteArrayType,
        strs(&|x| x.1.source.as_str().as_bytes()),
        None,
        None
    );
    column!(Int32Type, ints(&|x| x.1.timings.decode_us), None, None);
    column!(Int32Type, ints(&|x| x.1.timings.queue_us), None, None);
    column!(Int32Type, ints(&|x| x.1.timings.infer_us), None, None);
    column!(Int32Type, ints(&|x| x.1.timings.publish_us), None, None);
    column!(Int32Type, ints(&|x| x.1.timings.end_to_end_us), None, None);
    column!(Int32Type, ints(&|x| x.1.timings.budget_us), None, None);
    let miss: Vec<bool> = rows
        .iter()
        .map(|x| matches!(x.1.outcome, DeadlineOutcome::Miss { .. }))
        .collect();
    column!(BoolType, miss, None, None);
    let (values, def) = optional(
        rows.iter()
            .map(|x| match &x.1.outcome {
                DeadlineOutcome::Miss { cause } => Some(cause.as_bytes()),
                DeadlineOutcome::OnTime => None,
            })
            .collect(),
    );
    column!(ByteArrayType, values, Some(&def[..]), None);
    let (values, def) = optional(
        rows.iter()
            .map(|x| x.2.as_deref().map(str::as_bytes))
            .collect(),
    );
    column!(ByteArrayType, values, Some(&def[..]), None);
    rg.close().map_err(err)?;
    Ok(())
}

/// What [`read_back`] returns per row: journal sequence, device, seq, arrival, features,
/// dead-letter reason.
pub type ReadRow = (u64, String, u64, u64, Vec<f32>, Option<String>);

/// Reads back the main columns of each row (for tests and checks).
pub fn read_back(path: &Path) -> std::io::Result<Vec<ReadRow>> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    use parquet::record::Field;
    let reader = SerializedFileReader::new(File::open(path)?).map_err(err)?;
    let mut out = Vec::new();
    for row in reader.get_row_iter(None).map_err(err)? {
        let row = row.map_err(err)?;
        let field = |name: &str| {
            row.get_column_iter()
                .find(|(n, _)| n.as_str() == name)
                .map(|(_, f)| f.clone())
                .ok_or_else(|| err(format!("no column {name}")))
        };
        let ulong = |name: &str| match field(name)? {
            Field::ULong(v) => Ok(v),
            Field::Long(v) => Ok(v as u64),
            other => Err(err(format!("{name}: {other:?}"))),
        };
        let string = |name: &str| match field(name)? {
            Field::Str(s) => Ok(Some(s)),
            Field::Null => Ok(None),
            other => Err(err(format!("{name}: {other:?}"))),
        };
        let features = match field("features")? {
            Field::ListInternal(list) => list
                .elements()
                .iter()
                .map(|f| match f {
                    Field::Float(v) => Ok(*v),
                    other => Err(err(format!("feature {other:?}"))),
                })
                .collect::<std::io::Result<Vec<f32>>>()?,
            Field::Null => Vec::new(),
            other => return Err(err(format!("features: {other:?}"))),
        };
        out.push((
            ulong("journal_seq")?,
            string("device")?.unwrap_or_default(),
            ulong("seq")?,
            ulong("arrival_unix_us")?,
            features,
            string("dead_letter_reason")?,
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_levels_mark_each_list_start_and_an_empty_list() {
        let (v, def, rep) = repeated([vec![1.0, 2.0], vec![], vec![3.0]].into_iter());
        assert_eq!(v, [1.0, 2.0, 3.0]);
        assert_eq!(def, [1, 1, 0, 1]);
        assert_eq!(rep, [0, 1, 0, 0]);
    }
}
