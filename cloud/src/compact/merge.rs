//! Merging the record batches of several events files into one (pure CPU, no I/O).

use std::sync::Arc;

use arrow_array::{new_null_array, Array, RecordBatch, StringArray, UInt32Array, UInt64Array};
use arrow_schema::{ArrowError, Field, Schema};
use datafusion::arrow::compute::{concat_batches, take_record_batch};

use crate::table;

/// The rows of `inputs` as one record batch, sorted by `batch_id`, then `journal_seq`
/// (the record order of a batch), whatever the order of the inputs.
///
/// Its schema has, in the order of [`table::events_read_schema`], every column some input
/// has: files of the current schema give exactly [`table::events_schema`]; files from
/// before a column existed (the legacy feature columns, the board clock columns) read as
/// NULL where they lack it, as the rescore job reads them. Refused, naming the column: a
/// column that is not an events column, a column of different types in two inputs, and a
/// non-nullable column some input lacks.
pub fn merge_events(inputs: &[RecordBatch]) -> Result<RecordBatch, ArrowError> {
    let read = table::events_read_schema();
    for b in inputs {
        if let Some(f) = b
            .schema_ref()
            .fields()
            .iter()
            .find(|f| read.field_with_name(f.name()).is_err())
        {
            return Err(ArrowError::SchemaError(format!(
                "column {:?} is not an events column",
                f.name()
            )));
        }
    }
    let mut fields = Vec::new();
    for rf in read.fields() {
        let present: Vec<&Field> = inputs
            .iter()
            .filter_map(|b| b.schema_ref().field_with_name(rf.name()).ok())
            .collect();
        let Some(first) = present.first() else {
            continue;
        };
        if let Some(other) = present.iter().find(|f| f.data_type() != first.data_type()) {
            return Err(ArrowError::SchemaError(format!(
                "column {:?} is {} in one file and {} in another",
                rf.name(),
                first.data_type(),
                other.data_type()
            )));
        }
        let missing = present.len() < inputs.len();
        if missing && !rf.is_nullable() {
            return Err(ArrowError::SchemaError(format!(
                "column {:?} is missing from a file and may not be null",
                rf.name()
            )));
        }
        let nullable = missing || present.iter().any(|f| f.is_nullable());
        fields.push((*first).clone().with_nullable(nullable));
    }
    let schema = Arc::new(Schema::new(fields));
    let conformed = inputs
        .iter()
        .map(|b| {
            let columns = schema
                .fields()
                .iter()
                .map(|f| {
                    b.column_by_name(f.name())
                        .cloned()
                        .unwrap_or_else(|| new_null_array(f.data_type(), b.num_rows()))
                })
                .collect();
            RecordBatch::try_new(schema.clone(), columns)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let all = concat_batches(&schema, &conformed)?;
    let ids = all
        .column_by_name("batch_id")
        .and_then(|c| c.as_any().downcast_ref::<StringArray>());
    let seqs = all
        .column_by_name("journal_seq")
        .and_then(|c| c.as_any().downcast_ref::<UInt64Array>());
    let (Some(ids), Some(seqs)) = (ids, seqs) else {
        return Err(ArrowError::SchemaError(
            "columns \"batch_id\" (Utf8) and \"journal_seq\" (UInt64) are required".into(),
        ));
    };
    if ids.null_count() > 0 || seqs.null_count() > 0 {
        return Err(ArrowError::SchemaError(
            "a row without a batch id or journal sequence".into(),
        ));
    }
    let rows = u32::try_from(all.num_rows())
        .map_err(|_| ArrowError::ComputeError(format!("{} rows in one file", all.num_rows())))?;
    let mut order: Vec<u32> = (0..rows).collect();
    order.sort_by(|&a, &b| {
        let (a, b) = (a as usize, b as usize);
        ids.value(a)
            .cmp(ids.value(b))
            .then(seqs.value(a).cmp(&seqs.value(b)))
    });
    take_record_batch(&all, &UInt32Array::from(order))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::{events_batch, EventColumns, EventRow};
    use arrow_array::{ArrayRef, Float32Array};
    use reflex_records::{DeadlineOutcome, DecisionSource, JournalRecord, ModelId, StageTimings};

    fn row(batch: &str, journal_seq: u64, seq: u64) -> EventRow {
        EventRow {
            batch_id: batch.into(),
            journal_seq,
            record: JournalRecord {
                node: "n".into(),
                device: "d".into(),
                seq,
                arrival_unix_us: 1_000 + seq,
                payload: vec![1, 2],
                model_input: vec![0.5; 4],
                features: vec![0.25; 13],
                logits: vec![1.0, 0.0],
                class: 1,
                command: vec![7],
                model: ModelId {
                    name: "edge".into(),
                    version: "1".into(),
                },
                source: DecisionSource::Model,
                timings: StageTimings::default(),
                outcome: DeadlineOutcome::OnTime,
            },
            board_arrival_unix_us: None,
            feature_set: None,
        }
    }

    fn order_of(b: &RecordBatch) -> Vec<(String, u64)> {
        let ids = b
            .column_by_name("batch_id")
            .unwrap()
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        let c = EventColumns::of(b).unwrap();
        (0..b.num_rows())
            .map(|i| (ids.value(i).to_owned(), c.journal_seq.value(i)))
            .collect()
    }

    #[test]
    fn rows_come_out_by_batch_then_journal_sequence_in_the_ingest_schema() {
        let x = events_batch(&[row("b", 5, 1), row("b", 6, 2)]).unwrap();
        let y = events_batch(&[row("a", 9, 3), row("c", 1, 4), row("a", 8, 5)]).unwrap();
        let merged = merge_events(&[x.clone(), y.clone()]).unwrap();
        assert_eq!(merged.schema(), table::events_schema());
        let want = vec![
            ("a".to_owned(), 8),
            ("a".to_owned(), 9),
            ("b".to_owned(), 5),
            ("b".to_owned(), 6),
            ("c".to_owned(), 1),
        ];
        assert_eq!(order_of(&merged), want);
        assert_eq!(
            merge_events(&[y, x]).unwrap(),
            merged,
            "input order does not matter"
        );
    }

    #[test]
    fn a_file_without_the_features_map_merges_with_nulls_where_it_lacks_columns() {
        let modern = events_batch(&[row("b", 1, 1)]).unwrap();
        // A file of the legacy schema: the demo features as columns, no map, no clock.
        let old = events_batch(&[row("a", 1, 1)]).unwrap();
        let mut fields = Vec::new();
        let mut columns: Vec<ArrayRef> = Vec::new();
        for (f, c) in old.schema().fields().iter().zip(old.columns()) {
            if matches!(
                f.name().as_str(),
                table::FEATURES | "clock_suspect" | "board_arrival_unix_us"
            ) {
                continue;
            }
            fields.push(f.as_ref().clone());
            columns.push(c.clone());
        }
        for n in table::LEGACY_FEATURE_NAMES {
            fields.push(Field::new(n, arrow_schema::DataType::Float32, true));
            columns.push(Arc::new(Float32Array::from(vec![0.75f32])));
        }
        let legacy = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).unwrap();
        let merged = merge_events(&[modern, legacy]).unwrap();
        assert_eq!(merged.num_rows(), 2);
        let c = EventColumns::of(&merged).unwrap();
        // Row 0 is the legacy file's (batch "a"), read from its columns; row 1 from the map.
        assert_eq!(c.features.value(0, "mean_x"), Some(0.75));
        assert_eq!(c.features.value(1, "mean_x"), Some(0.25));
        assert!(merged
            .schema()
            .field_with_name("clock_suspect")
            .unwrap()
            .is_nullable());
    }

    #[test]
    fn a_column_of_another_type_or_name_is_refused_naming_it() {
        let good = events_batch(&[row("b", 1, 1)]).unwrap();
        let extra = RecordBatch::try_new(
            Arc::new(Schema::new(vec![Field::new(
                "surprise",
                arrow_schema::DataType::Float32,
                false,
            )])),
            vec![Arc::new(Float32Array::from(vec![1.0f32]))],
        )
        .unwrap();
        let e = merge_events(&[good.clone(), extra])
            .unwrap_err()
            .to_string();
        assert!(e.contains("surprise"), "{e}");
        let mut fields: Vec<Field> = good
            .schema()
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        let mut columns = good.columns().to_vec();
        let at = fields
            .iter()
            .position(|f| f.name() == "journal_seq")
            .unwrap();
        fields[at] = Field::new("journal_seq", arrow_schema::DataType::Float32, false);
        columns[at] = Arc::new(Float32Array::from(vec![1.0f32]));
        let odd = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).unwrap();
        let e = merge_events(&[good, odd]).unwrap_err().to_string();
        assert!(e.contains("journal_seq"), "{e}");
    }
}
