//! Sample rows for `reflex-model import`, from the files users have: `.npy` arrays, CSV
//! files of numbers, and a board's decisions as `reflexd journal export --format jsonl`
//! writes them. Every reader yields rows of `f32` values in physical units, before any
//! preprocessing, each holding exactly the model input's values.
//!
//! The parsers ([`parse_csv`], [`parse_jsonl`]) and the statistics taken over samples
//! ([`channel_mean_std`]) work on values already read: no I/O, tested on their own.
//! [`read`] reads a file and picks its parser by the file's extension.
//!
//! # CSV
//!
//! One row per line, numbers separated by commas (spaces around them allowed), `\n` or
//! `\r\n` line ends, an optional UTF-8 byte order mark. The first line is a header, and
//! skipped, when one of its fields is not a number. A blank line, a field that is not a
//! number, a value that is not finite in `f32` and a line that does not hold the input's
//! values are refused, naming the line (1-based, the header counted).
//!
//! # Journal export (JSONL)
//!
//! One JSON object per line: `{"journal_seq": s, "record": {…}}` with the record's
//! `model_input` (the window the model read, in physical units), or `{"journal_seq": s,
//! "undecodable": "…"}` for a record the exporter could not decode. Only
//! `record.model_input` is read (the features by name, `features` and `feature_set`, and
//! the other fields a line may carry are not). A board's journal holds the records of all its routes,
//! so records whose `model_input` has another length are skipped and counted by length,
//! as are undecodable records; a line that is not such an object, or a blank line, is
//! refused with its line number, and so is a file in which no record fits.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use crate::npy::Npy;
use crate::ModelError;

/// A samples file's format, from its extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `.npy`: a float32 or float64 array `[rows, …]`.
    Npy,
    /// `.csv`: one row per line.
    Csv,
    /// `.jsonl` or `.ndjson`: a journal export.
    Jsonl,
}

impl Format {
    /// The extensions read, as the error for any other names them.
    pub const EXTENSIONS: &'static str = ".npy, .csv, .jsonl (or .ndjson)";

    /// The format of `path` by its extension (case-insensitive); `None` for any other.
    pub fn of(path: &Path) -> Option<Format> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        match ext.as_str() {
            "npy" => Some(Format::Npy),
            "csv" => Some(Format::Csv),
            "jsonl" | "ndjson" => Some(Format::Jsonl),
            _ => None,
        }
    }
}

/// Records of a journal export left out, by why.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Skipped {
    /// Records whose `model_input` holds another number of values: length → records.
    pub by_length: BTreeMap<usize, usize>,
    /// Lines the exporter wrote as undecodable.
    pub undecodable: usize,
}

impl Skipped {
    /// Records left out.
    pub fn total(&self) -> usize {
        self.by_length.values().sum::<usize>() + self.undecodable
    }
}

impl std::fmt::Display for Skipped {
    /// `3 records of 192 values, 1 undecodable`, or `none`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts: Vec<String> = self
            .by_length
            .iter()
            .map(|(len, n)| {
                let s = if *n == 1 { "" } else { "s" };
                format!("{n} record{s} of {len} values")
            })
            .collect();
        if self.undecodable > 0 {
            parts.push(format!("{} undecodable", self.undecodable));
        }
        if parts.is_empty() {
            f.write_str("none")
        } else {
            f.write_str(&parts.join(", "))
        }
    }
}

/// Sample rows read from a file.
#[derive(Debug, Clone, PartialEq)]
pub struct Samples {
    /// Rows read.
    pub rows: usize,
    /// `rows × row_len` values, row after row.
    pub values: Vec<f32>,
    /// Journal records left out (always empty for `.npy` and CSV).
    pub skipped: Skipped,
}

/// Why samples cannot be read. Line numbers are 1-based.
#[derive(Debug, thiserror::Error)]
pub enum SamplesError {
    /// The file's extension names no format read.
    #[error(
        "{path}: unknown samples format (extension {ext:?}); give one of {}",
        Format::EXTENSIONS
    )]
    UnknownFormat {
        /// The file.
        path: String,
        /// Its extension.
        ext: String,
    },
    /// The file cannot be read, or is not an `.npy` array of floats.
    #[error(transparent)]
    Read(#[from] ModelError),
    /// An `.npy` array of the wrong rank or row length.
    #[error("shape {shape:?}: {reason}")]
    NpyShape {
        /// The array's shape.
        shape: Vec<usize>,
        /// What does not fit, naming both sizes.
        reason: String,
    },
    /// A blank line.
    #[error("line {line} is blank: every line is one row of values")]
    BlankLine {
        /// The line.
        line: usize,
    },
    /// A row with the wrong number of values.
    #[error("line {line} holds {actual} values, the model's input holds {expected}")]
    RowLength {
        /// The line.
        line: usize,
        /// Values of the model's input.
        expected: usize,
        /// Values on the line.
        actual: usize,
    },
    /// A field that is not a number.
    #[error("line {line}, value {column}: {text:?} is not a number")]
    NotANumber {
        /// The line.
        line: usize,
        /// The field, 1-based.
        column: usize,
        /// The field's text.
        text: String,
    },
    /// A number that is not finite as an `f32` (NaN, infinite, or too large).
    #[error("line {line}, value {column}: {text:?} is not a finite float32")]
    NotFinite {
        /// The line.
        line: usize,
        /// The field, 1-based.
        column: usize,
        /// The field's text.
        text: String,
    },
    /// A journal export line that is not one.
    #[error("line {line} is not a journal export record ({reason})")]
    NotJournal {
        /// The line.
        line: usize,
        /// What serde or the reader said.
        reason: String,
    },
    /// A journal export with no record of the input's length.
    #[error(
        "no record's model_input holds the model input's {expected} values (skipped: {skipped})"
    )]
    NoneFit {
        /// Values of the model's input.
        expected: usize,
        /// What the file held instead.
        skipped: Skipped,
    },
    /// A file with no row.
    #[error("no sample rows")]
    Empty,
}

/// Reads the samples in `path` for a model input of shape `dims` (without the batch):
/// each row must hold `dims`' product of values.
pub fn read(path: &Path, dims: &[usize]) -> Result<Samples, SamplesError> {
    let row_len: usize = dims.iter().product();
    let format = Format::of(path).ok_or_else(|| SamplesError::UnknownFormat {
        path: path.display().to_string(),
        ext: path
            .extension()
            .map(|e| e.to_string_lossy().into_owned())
            .unwrap_or_default(),
    })?;
    let text = |path: &Path| {
        std::fs::read_to_string(path).map_err(|source| ModelError::Io {
            path: path.to_owned(),
            source,
        })
    };
    match format {
        Format::Npy => npy_rows(&Npy::read(path)?, dims),
        Format::Csv => parse_csv(&text(path)?, row_len),
        Format::Jsonl => parse_jsonl(&text(path)?, row_len),
    }
}

/// The rows of a float32 or float64 `.npy` array `[rows, …]`.
fn npy_rows(npy: &Npy, dims: &[usize]) -> Result<Samples, SamplesError> {
    let row_len: usize = dims.iter().product();
    let rows = npy.shape.first().copied().unwrap_or(0);
    let samples_row: usize = npy.shape.iter().skip(1).product();
    if npy.shape.len() < 2 || rows == 0 {
        return Err(SamplesError::NpyShape {
            shape: npy.shape.clone(),
            reason: format!("expected [rows, …] with at least one row of {row_len} values"),
        });
    }
    if samples_row != row_len {
        return Err(SamplesError::NpyShape {
            shape: npy.shape.clone(),
            reason: format!(
                "a sample row holds {samples_row} values, the model's input {dims:?} holds \
                 {row_len}"
            ),
        });
    }
    let values = match npy.descr.as_str() {
        "<f8" => npy.f64s()?.into_iter().map(|v| v as f32).collect(),
        _ => npy.f32s()?,
    };
    Ok(Samples {
        rows,
        values,
        skipped: Skipped::default(),
    })
}

/// Parses CSV text (module doc) into rows of `row_len` values.
pub fn parse_csv(text: &str, row_len: usize) -> Result<Samples, SamplesError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut values = Vec::new();
    let mut rows = 0;
    for (i, line) in text.lines().enumerate() {
        let line_no = i + 1;
        if line.trim().is_empty() {
            return Err(SamplesError::BlankLine { line: line_no });
        }
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        if line_no == 1 && fields.iter().any(|f| f.parse::<f32>().is_err()) {
            continue; // the header
        }
        if fields.len() != row_len {
            return Err(SamplesError::RowLength {
                line: line_no,
                expected: row_len,
                actual: fields.len(),
            });
        }
        for (c, field) in fields.iter().enumerate() {
            let at = |text: &str| (line_no, c + 1, text.to_owned());
            let v: f32 = field.parse().map_err(|_| {
                let (line, column, text) = at(field);
                SamplesError::NotANumber { line, column, text }
            })?;
            if !v.is_finite() {
                let (line, column, text) = at(field);
                return Err(SamplesError::NotFinite { line, column, text });
            }
            values.push(v);
        }
        rows += 1;
    }
    if rows == 0 {
        return Err(SamplesError::Empty);
    }
    Ok(Samples {
        rows,
        values,
        skipped: Skipped::default(),
    })
}

/// One line of a journal export, as far as samples go.
#[derive(Deserialize)]
struct ExportLine {
    #[serde(default)]
    record: Option<ExportRecord>,
    #[serde(default)]
    undecodable: Option<String>,
}

#[derive(Deserialize)]
struct ExportRecord {
    model_input: Vec<f32>,
}

/// Parses a journal export (module doc) into the `model_input` rows of `row_len` values.
pub fn parse_jsonl(text: &str, row_len: usize) -> Result<Samples, SamplesError> {
    let mut values = Vec::new();
    let mut rows = 0;
    let mut skipped = Skipped::default();
    for (i, line) in text.lines().enumerate() {
        let line_no = i + 1;
        if line.trim().is_empty() {
            return Err(SamplesError::BlankLine { line: line_no });
        }
        let parsed: ExportLine =
            serde_json::from_str(line).map_err(|e| SamplesError::NotJournal {
                line: line_no,
                reason: e.to_string(),
            })?;
        match (parsed.record, parsed.undecodable) {
            (Some(record), _) if record.model_input.len() == row_len => {
                if let Some(c) = record.model_input.iter().position(|v| !v.is_finite()) {
                    return Err(SamplesError::NotFinite {
                        line: line_no,
                        column: c + 1,
                        text: record.model_input[c].to_string(),
                    });
                }
                values.extend_from_slice(&record.model_input);
                rows += 1;
            }
            (Some(record), _) => {
                *skipped
                    .by_length
                    .entry(record.model_input.len())
                    .or_default() += 1
            }
            (None, Some(_)) => skipped.undecodable += 1,
            (None, None) => {
                return Err(SamplesError::NotJournal {
                    line: line_no,
                    reason: "neither \"record\" nor \"undecodable\"".to_owned(),
                })
            }
        }
    }
    if rows == 0 {
        return Err(if skipped.total() == 0 {
            SamplesError::Empty
        } else {
            SamplesError::NoneFit {
                expected: row_len,
                skipped,
            }
        });
    }
    Ok(Samples {
        rows,
        values,
        skipped,
    })
}

/// Per-channel mean and population standard deviation over every row of `values`, each
/// row split channel-major into `channels` equal parts, computed in `f64`: what a
/// `per_channel_standardize` step over the samples is written with.
pub fn channel_mean_std(values: &[f32], row_len: usize, channels: usize) -> Vec<(f64, f64)> {
    assert!(
        channels > 0 && row_len > 0 && row_len.is_multiple_of(channels),
        "{channels} channels must split a row of {row_len}"
    );
    let per = row_len / channels;
    (0..channels)
        .map(|c| {
            let of_channel = || {
                values
                    .chunks_exact(row_len)
                    .flat_map(move |row| &row[c * per..(c + 1) * per])
                    .map(|&v| f64::from(v))
            };
            let n = of_channel().count() as f64;
            let mean = of_channel().sum::<f64>() / n;
            let var = of_channel().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n;
            (mean, var.sqrt())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_csv_header_is_skipped_and_numbers_are_read_row_by_row() {
        let s = parse_csv("\u{feff}x, y ,z\r\n1, 2.5,-3\r\n4e-1,5,6\n", 3).unwrap();
        assert_eq!(s.rows, 2);
        assert_eq!(s.values, [1.0, 2.5, -3.0, 0.4, 5.0, 6.0]);
        let no_header = parse_csv("1,2\n3,4", 2).unwrap();
        assert_eq!(
            (no_header.rows, no_header.values),
            (2, vec![1.0, 2.0, 3.0, 4.0])
        );
    }

    #[test]
    fn a_csv_blank_line_is_refused_with_its_number() {
        let e = parse_csv("a,b\n1,2\n\n3,4\n", 2).unwrap_err();
        assert!(matches!(e, SamplesError::BlankLine { line: 3 }), "{e}");
        let e = parse_csv("1,2\n3,4\n  \n", 2).unwrap_err();
        assert_eq!(
            e.to_string(),
            "line 3 is blank: every line is one row of values"
        );
    }

    #[test]
    fn a_csv_row_of_the_wrong_length_names_its_line_and_both_counts() {
        let e = parse_csv("a,b,c\n1,2,3\n4,5\n", 3).unwrap_err();
        assert_eq!(
            e.to_string(),
            "line 3 holds 2 values, the model's input holds 3"
        );
    }

    #[test]
    fn a_csv_field_that_is_not_a_finite_number_is_refused_where_it_is() {
        let e = parse_csv("1,2\n3,x\n", 2).unwrap_err();
        assert_eq!(e.to_string(), "line 2, value 2: \"x\" is not a number");
        let e = parse_csv("1,2\n3,\n", 2).unwrap_err();
        assert_eq!(e.to_string(), "line 2, value 2: \"\" is not a number");
        for bad in ["NaN", "inf", "1e39"] {
            let e = parse_csv(&format!("h\n{bad}\n"), 1).unwrap_err();
            assert!(
                matches!(&e, SamplesError::NotFinite { line: 2, column: 1, text } if text == bad),
                "{e}"
            );
        }
        assert!(matches!(
            parse_csv("a,b\n", 2).unwrap_err(),
            SamplesError::Empty
        ));
    }

    fn export_line(seq: u64, input: &[f32]) -> String {
        serde_json::json!({
            "journal_seq": seq,
            "record": { "device": "d", "model_input": input, "logits": [] },
        })
        .to_string()
    }

    #[test]
    fn journal_lines_of_other_lengths_and_undecodable_ones_are_skipped_and_counted() {
        let text = [
            export_line(1, &[1.0, 2.0]),
            export_line(2, &[9.0; 3]),
            r#"{"journal_seq": 3, "undecodable": "bad version byte 7"}"#.to_owned(),
            export_line(4, &[3.0, 4.0]),
            export_line(5, &[9.0; 3]),
            export_line(6, &[]),
        ]
        .join("\n");
        let s = parse_jsonl(&text, 2).unwrap();
        assert_eq!((s.rows, s.values), (2, vec![1.0, 2.0, 3.0, 4.0]));
        assert_eq!(s.skipped.total(), 4);
        assert_eq!(
            s.skipped.to_string(),
            "1 record of 0 values, 2 records of 3 values, 1 undecodable"
        );
    }

    #[test]
    fn a_journal_export_with_no_fitting_record_or_a_foreign_line_is_refused() {
        let e = parse_jsonl(&export_line(1, &[1.0; 3]), 2).unwrap_err();
        assert_eq!(
            e.to_string(),
            "no record's model_input holds the model input's 2 values (skipped: 1 record of 3 \
             values)"
        );
        let text = format!("{}\n{{\"seq\": 2}}\n", export_line(1, &[1.0, 2.0]));
        let e = parse_jsonl(&text, 2).unwrap_err();
        assert!(matches!(e, SamplesError::NotJournal { line: 2, .. }), "{e}");
        let text = format!("{}\nnot json\n", export_line(1, &[1.0, 2.0]));
        assert!(matches!(
            parse_jsonl(&text, 2).unwrap_err(),
            SamplesError::NotJournal { line: 2, .. }
        ));
        let text = format!("{}\n\n", export_line(1, &[1.0, 2.0]));
        assert!(matches!(
            parse_jsonl(&text, 2).unwrap_err(),
            SamplesError::BlankLine { line: 2 }
        ));
    }

    #[test]
    fn formats_follow_the_extension() {
        assert_eq!(Format::of(Path::new("a/b.NPY")), Some(Format::Npy));
        assert_eq!(Format::of(Path::new("b.csv")), Some(Format::Csv));
        assert_eq!(Format::of(Path::new("b.ndjson")), Some(Format::Jsonl));
        assert_eq!(Format::of(Path::new("b.jsonl")), Some(Format::Jsonl));
        assert_eq!(Format::of(Path::new("b.json")), None);
        assert_eq!(Format::of(Path::new("b")), None);
    }

    #[test]
    fn channel_statistics_split_each_row_channel_major() {
        // Two rows of two channels of two values: channel 0 holds 1, 3, 5, 7; channel 1
        // holds 10 four times.
        let v = [1.0, 3.0, 10.0, 10.0, 5.0, 7.0, 10.0, 10.0];
        let s = channel_mean_std(&v, 4, 2);
        assert_eq!(s[0].0, 4.0);
        assert_eq!(s[0].1, 5.0f64.sqrt());
        assert_eq!(s[1], (10.0, 0.0));
    }

    proptest! {
        #[test]
        fn csv_written_with_rust_float_formatting_reads_back_bit_for_bit(
            rows in proptest::collection::vec(
                proptest::collection::vec(-1e6f32..1e6, 5), 1..20),
            header in any::<bool>(),
            crlf in any::<bool>(),
        ) {
            let end = if crlf { "\r\n" } else { "\n" };
            let mut text = if header { format!("a,b,c,d,e{end}") } else { String::new() };
            for row in &rows {
                let fields: Vec<String> = row.iter().map(|v| v.to_string()).collect();
                text.push_str(&fields.join(", "));
                text.push_str(end);
            }
            let s = parse_csv(&text, 5).unwrap();
            prop_assert_eq!(s.rows, rows.len());
            let want: Vec<u32> = rows.concat().iter().map(|v| v.to_bits()).collect();
            let got: Vec<u32> = s.values.iter().map(|v| v.to_bits()).collect();
            prop_assert_eq!(got, want);
        }

        #[test]
        fn standardizing_with_the_channel_statistics_gives_mean_0_and_std_1(
            values in proptest::collection::vec(-100.0f32..100.0, 3 * 8 * 4),
        ) {
            let stats = channel_mean_std(&values, 3 * 8, 3);
            for (c, &(mean, std)) in stats.iter().enumerate() {
                prop_assume!(std > 1e-3);
                let z: Vec<f64> = values
                    .chunks_exact(24)
                    .flat_map(|row| &row[c * 8..(c + 1) * 8])
                    .map(|&v| (f64::from(v) - mean) / std)
                    .collect();
                let n = z.len() as f64;
                let m = z.iter().sum::<f64>() / n;
                let s = (z.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / n).sqrt();
                prop_assert!(m.abs() < 1e-9, "mean {m}");
                prop_assert!((s - 1.0).abs() < 1e-9, "std {s}");
            }
        }
    }
}
