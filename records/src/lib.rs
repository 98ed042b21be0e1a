//! The decision record and the upload batch format shared by the board's journal and the
//! cloud: what the board keeps per event and what the cloud receives. No sled, no HTTP: the
//! journal (`reflex-journal`, which re-exports this crate as `reflex_journal::record`) encodes
//! with this code and the cloud ingest decodes with exactly the same code.
//!
//! # Record
//!
//! An encoded record is one format-version byte ([`RECORD_FORMAT_VERSION`]) followed by the
//! postcard encoding of [`JournalRecord`] (field order as declared; integers as varints,
//! `f32` as 4 little-endian bytes, `Vec`/`String` as varint length + items). The layout is
//! pinned by golden-byte tests; any change to it needs a new version byte.
//!
//! A record of a route with a decision policy carries what decided it too: version byte
//! [`RECORD_FORMAT_VERSION_WITH_DECISION`] (2), then the same [`JournalRecord`] encoding,
//! then the postcard encoding of a [`DecisionTrace`] ([`JournalRecord::encode_with_decision`],
//! [`JournalRecord::decode_with_decision`]). A record without one is still written with
//! version 1, byte for byte as before, and both versions are read: [`JournalRecord::decode`]
//! reads either and leaves the trace out.
//!
//! # Feature sets
//!
//! A record's `features` are the monitoring features its route's model declares, in that
//! model's order. Without more, they are the 13 demo features ([`DEMO_FEATURE_NAMES`],
//! `reflex_models::FEATURE_NAMES`): records of version 1 and 2 always mean those. A record
//! whose features are another set says which (a [`FeatureSet`]: the model that declares
//! them, name and version, and the ordered names): version byte
//! [`RECORD_FORMAT_VERSION_WITH_FEATURE_SET`] (3), then the postcard encoding of the
//! [`FeatureSet`], then the [`JournalRecord`] encoding, then `Option<DecisionTrace>`
//! (`0` or `1` + the trace). The set comes first so that the batch encoder lifts it off
//! without decoding the rest. The board encodes the set once per model
//! ([`EncodedFeatureSet`]) and copies its bytes into each record
//! ([`JournalRecord::encode_full`]); a record keeps its names in the journal by itself,
//! whatever model is loaded when it is uploaded.
//!
//! # Batch
//!
//! The uncompressed batch body is:
//!
//! ```text
//! u8       batch format version (BATCH_FORMAT_VERSION, or BATCH_FORMAT_VERSION_WITH_FEATURE_SETS)
//! postcard BatchHeader { node, first_seq, last_seq, count, windows }
//! postcard Vec<FeatureSet>   (version 3 only: the batch's feature set table)
//! count × (varint journal sequence, varint length, encoded record)
//! windows × (varint length, window summary)
//! ```
//!
//! A batch whose records all carry the 13 demo features is version 2, byte for byte as
//! before feature sets existed (same body, same id). As soon as one record carries a
//! feature set, the batch is version 3: each distinct set is written once in the table
//! (in order of first use), and such a record is written as version
//! [`RECORD_FORMAT_VERSION_IN_BATCH`] (4): `u8 4, varint index into the table`, then its
//! version-3 bytes after the set (the record, then `Option<DecisionTrace>`). Version 4
//! exists only inside a batch; records of versions 1–3 may appear in either batch version.
//! [`decode_batch`] reads both batch versions and gives every record its set
//! ([`DecodedBatch::feature_set`]); [`DecodedBatch::standalone`] re-encodes a record as the
//! journal stores it (with its trace and set). A table entry with duplicate or empty names,
//! or a record pointing past the table, makes the batch malformed.
//!
//! The window summaries are the board's live-monitoring windows (per route, the
//! quantile sketches of every model input feature, class counts, fallbacks and deadline
//! misses over one tumbling window) that ride with the batch. To this crate they are opaque
//! bytes (the daemon encodes a `reflex_drift::monitor::WindowSummary` with postcard, the cloud
//! decodes it with the same crate). A window may ride in more than one batch (a crash between
//! an ack and the window's deletion re-sends it); the cloud stores them content-addressed, so
//! a repeat is stored once.
//!
//! The batch id is the lowercase hex sha256 of that uncompressed body. It cannot be inside the
//! body (it is the hash of it); it travels beside the body (the `X-Reflex-Batch-Id` header)
//! and the receiver recomputes it after decompression. What is uploaded is the body as one
//! zstd frame. `first_seq`/`last_seq` are journal sequences (board-local, strictly increasing),
//! not the devices' sequence numbers; records in a batch are in strictly increasing journal
//! order, and a batch may have gaps when the quota policy dropped records. `(node, journal
//! sequence)` names a record uniquely for the life of a journal.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Version byte that starts every encoded [`JournalRecord`].
pub const RECORD_FORMAT_VERSION: u8 = 1;
/// Version byte of a record followed by its [`DecisionTrace`].
pub const RECORD_FORMAT_VERSION_WITH_DECISION: u8 = 2;
/// Version byte of a record that names its feature set ([`FeatureSet`], module doc).
pub const RECORD_FORMAT_VERSION_WITH_FEATURE_SET: u8 = 3;
/// Version byte of a record inside a version-3 batch that points into the batch's feature
/// set table (module doc); never stored in a journal.
pub const RECORD_FORMAT_VERSION_IN_BATCH: u8 = 4;
/// Version byte of an uncompressed batch body whose records all carry the demo features.
pub const BATCH_FORMAT_VERSION: u8 = 2;
/// Version byte of an uncompressed batch body with a feature set table (module doc).
pub const BATCH_FORMAT_VERSION_WITH_FEATURE_SETS: u8 = 3;
/// Number of demo features a record without a feature set carries.
pub const N_FEATURES: usize = 13;
/// The names of the demo features, in order: what a record without a [`FeatureSet`]
/// carries (equal to `reflex_models::FEATURE_NAMES`, checked by the cloud's tests).
pub const DEMO_FEATURE_NAMES: [&str; N_FEATURES] = [
    "mean_x",
    "mean_y",
    "mean_z",
    "std_x",
    "std_y",
    "std_z",
    "peak_x",
    "peak_y",
    "peak_z",
    "kurt_x",
    "kurt_y",
    "kurt_z",
    "temperature",
];
/// zstd level used for batches: fast on a board, and batches of similar records compress well.
pub const ZSTD_LEVEL: i32 = 3;
/// Largest uncompressed batch body [`decode_batch`] accepts (a zip-bomb guard), bytes.
pub const MAX_BATCH_BODY_BYTES: usize = 64 << 20;

/// Path of the ingest endpoint under the base URL (HTTP contract: see `reflex_journal::upload`).
pub const BATCHES_PATH: &str = "/v1/batches";
/// Content type of an uploaded batch body.
pub const CONTENT_TYPE: &str = "application/vnd.reflex.batch+zstd";
/// Request header carrying the batch id.
pub const BATCH_ID_HEADER: &str = "x-reflex-batch-id";
/// Request header carrying the batch format version.
pub const BATCH_FORMAT_HEADER: &str = "x-reflex-batch-format";
/// Request header carrying the node name.
pub const NODE_HEADER: &str = "x-reflex-node";
/// Request header carrying the record count.
pub const RECORDS_HEADER: &str = "x-reflex-records";
/// Request header carrying the board's wall clock when it sent the request, µs since the
/// Unix epoch: with it the cloud knows each record's age on the board's own clock, and
/// files a record whose timestamp is implausible (a board clock in 1970) under `arrival at
/// the cloud − age`. Not part of the batch id: a re-send carries its own.
pub const BOARD_CLOCK_HEADER: &str = "x-reflex-board-clock-us";

/// Request header by which an uploader says which ack body it reads ([`ACK_VERSION`]). An
/// uploader that sends it reads per-record refusals in a 200 ([`BatchAck::refused`]); to one
/// that does not (an older board), the ingest answers a batch with an invalid record 400 as
/// before, since such a board would take a 200 as an ack of every record.
pub const ACK_VERSION_HEADER: &str = "x-reflex-ack-version";
/// The ack body version this build writes and reads: 2 adds `version` and `refused`.
pub const ACK_VERSION: u32 = 2;

fn ack_version_1() -> u32 {
    1
}

/// The JSON body of a 200 answer to an upload (HTTP contract: see `reflex_journal::upload`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchAck {
    /// The id of the batch acknowledged; must equal the id sent.
    pub batch_id: String,
    /// Stored now, or already stored before.
    pub status: AckStatus,
    /// Records in the batch (stored and refused together).
    pub records: u32,
    /// The ack body version ([`ACK_VERSION`]; 1 when absent: an ingest that predates it).
    #[serde(default = "ack_version_1")]
    pub version: u32,
    /// The records of the batch the ingest refused and did not store, with why; every
    /// other record is stored. The same batch is always refused the same way (the checks
    /// depend only on its content), so a re-sent batch answered `duplicate` names the same
    /// records.
    #[serde(default)]
    pub refused: Vec<RefusedRecord>,
}

/// A record of a batch that the ingest refused ([`BatchAck::refused`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefusedRecord {
    /// Position of the record in the batch (0-based).
    pub index: u32,
    /// Its journal sequence on the board.
    pub journal_seq: u64,
    /// Its device id, as the record says.
    pub device: String,
    /// The device's sequence number of the event.
    pub seq: u64,
    /// Why.
    pub reason: RefusalReason,
}

/// Why the ingest refused one record. The names (`as_str`, and the JSON) are stable: the
/// board counts its dead-letter records by them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefusalReason {
    /// The device id is not 1-32 bytes of `[A-Za-z0-9_.:-]` (it names a storage path).
    DeviceId,
    /// No features: the board could not compute them (a window of the wrong length).
    FeaturesMissing,
    /// A number of features other than its feature set has names (and not zero); for a
    /// record without a set, other than [`N_FEATURES`].
    FeatureCount,
}

impl RefusalReason {
    /// Every reason, in order.
    pub const ALL: [RefusalReason; 3] = [
        RefusalReason::DeviceId,
        RefusalReason::FeaturesMissing,
        RefusalReason::FeatureCount,
    ];

    /// The stable name (`device_id`, `features_missing`, `feature_count`).
    pub fn as_str(self) -> &'static str {
        match self {
            RefusalReason::DeviceId => "device_id",
            RefusalReason::FeaturesMissing => "features_missing",
            RefusalReason::FeatureCount => "feature_count",
        }
    }

    /// The reason named `name` ([`RefusalReason::as_str`]).
    pub fn from_name(name: &str) -> Option<RefusalReason> {
        RefusalReason::ALL.into_iter().find(|r| r.as_str() == name)
    }
}

/// Whether an acknowledged batch was new.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AckStatus {
    /// Stored by this request.
    Stored,
    /// Already stored (a re-send); stored once.
    Duplicate,
}

/// Who decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DecisionSource {
    /// The model answered within the deadline.
    Model,
    /// The fallback answered because the model could not in time.
    Fallback,
    /// A fixed safety rule answered.
    Rule,
}

impl DecisionSource {
    /// A short stable name (`model`, `fallback`, `rule`).
    pub fn as_str(self) -> &'static str {
        match self {
            DecisionSource::Model => "model",
            DecisionSource::Fallback => "fallback",
            DecisionSource::Rule => "rule",
        }
    }
}

/// Whether the command went out by the deadline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeadlineOutcome {
    /// Answered by the deadline (whoever answered).
    OnTime,
    /// The model missed; `cause` is the daemon's stable cause name (e.g. `model_too_slow`).
    Miss {
        /// Why.
        cause: String,
    },
}

/// Time spent in each stage of the real-time path, µs. A stage that did not happen (no model
/// run when the fallback answered on arrival) is 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct StageTimings {
    /// Received from MQTT → decoded.
    pub decode_us: u32,
    /// Queued → picked by a worker.
    pub queue_us: u32,
    /// The model run.
    pub infer_us: u32,
    /// Decided → published.
    pub publish_us: u32,
    /// Arrival → published.
    pub end_to_end_us: u32,
    /// The deadline budget the event had.
    pub budget_us: u32,
}

/// The model that decided (for a fallback, the fallback's own name and version).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelId {
    /// Model name.
    pub name: String,
    /// Model version.
    pub version: String,
}

/// Everything the board keeps about one decided event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JournalRecord {
    /// The board (node) that decided.
    pub node: String,
    /// Device id of the sensor.
    pub device: String,
    /// The device's own sequence number of the event.
    pub seq: u64,
    /// Arrival at the daemon, µs since the Unix epoch.
    pub arrival_unix_us: u64,
    /// The event's payload exactly as received.
    pub payload: Vec<u8>,
    /// The model input as the model saw it (window in g, channel-major).
    pub model_input: Vec<f32>,
    /// The monitoring features, in the order of the record's feature set (module doc):
    /// the [`N_FEATURES`] demo features when it has none; empty when the board could not
    /// compute them.
    pub features: Vec<f32>,
    /// Model output (logits); empty when no model ran.
    pub logits: Vec<f32>,
    /// Predicted class that was acted on.
    pub class: u8,
    /// The command payload exactly as published.
    pub command: Vec<u8>,
    /// Which model decided.
    pub model: ModelId,
    /// Who decided.
    pub source: DecisionSource,
    /// Per-stage timings.
    pub timings: StageTimings,
    /// Deadline outcome.
    pub outcome: DeadlineOutcome,
}

/// A [`JournalRecord`] that borrows its contents from the decision it describes. It
/// encodes to the same bytes as the owned record with the same values (the same fields in
/// the same order, each serialized the same way: a `&str` as a `String`, a slice as a
/// `Vec`), without copying the payload, the window and the strings into a record first:
/// the board's recorder encodes one per event.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct JournalRecordRef<'a> {
    /// [`JournalRecord::node`].
    pub node: &'a str,
    /// [`JournalRecord::device`].
    pub device: &'a str,
    /// [`JournalRecord::seq`].
    pub seq: u64,
    /// [`JournalRecord::arrival_unix_us`].
    pub arrival_unix_us: u64,
    /// [`JournalRecord::payload`].
    pub payload: &'a [u8],
    /// [`JournalRecord::model_input`].
    pub model_input: &'a [f32],
    /// [`JournalRecord::features`].
    pub features: &'a [f32],
    /// [`JournalRecord::logits`].
    pub logits: &'a [f32],
    /// [`JournalRecord::class`].
    pub class: u8,
    /// [`JournalRecord::command`].
    pub command: &'a [u8],
    /// [`JournalRecord::model`].
    pub model: ModelIdRef<'a>,
    /// [`JournalRecord::source`].
    pub source: DecisionSource,
    /// [`JournalRecord::timings`].
    pub timings: StageTimings,
    /// [`JournalRecord::outcome`].
    pub outcome: DeadlineOutcomeRef<'a>,
}

/// A borrowed [`ModelId`], encoded the same.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct ModelIdRef<'a> {
    /// Model name.
    pub name: &'a str,
    /// Model version.
    pub version: &'a str,
}

/// A borrowed [`DeadlineOutcome`], encoded the same (same variants, same order).
#[derive(Debug, Clone, Copy, Serialize)]
pub enum DeadlineOutcomeRef<'a> {
    /// [`DeadlineOutcome::OnTime`].
    OnTime,
    /// [`DeadlineOutcome::Miss`].
    Miss {
        /// Why.
        cause: &'a str,
    },
}

impl JournalRecordRef<'_> {
    /// The same values owned (the inverse of [`JournalRecord::as_borrowed`]).
    pub fn to_record(&self) -> JournalRecord {
        JournalRecord {
            node: self.node.to_owned(),
            device: self.device.to_owned(),
            seq: self.seq,
            arrival_unix_us: self.arrival_unix_us,
            payload: self.payload.to_vec(),
            model_input: self.model_input.to_vec(),
            features: self.features.to_vec(),
            logits: self.logits.to_vec(),
            class: self.class,
            command: self.command.to_vec(),
            model: ModelId {
                name: self.model.name.to_owned(),
                version: self.model.version.to_owned(),
            },
            source: self.source,
            timings: self.timings,
            outcome: match self.outcome {
                DeadlineOutcomeRef::OnTime => DeadlineOutcome::OnTime,
                DeadlineOutcomeRef::Miss { cause } => DeadlineOutcome::Miss {
                    cause: cause.to_owned(),
                },
            },
        }
    }

    /// The encoding [`JournalRecord::encode_full`] gives the owned record.
    pub fn encode_full(
        &self,
        decision: Option<&DecisionTrace>,
        feature_set: Option<&EncodedFeatureSet>,
    ) -> Vec<u8> {
        let capacity = 80 + self.payload.len() + 4 * self.model_input.len();
        encode_record(self, capacity, decision, feature_set)
    }
}

/// `record` framed as a journal record: the version byte, for version 3 the feature set,
/// the record (postcard), then the trace (version 2: the trace; version 3: the optional
/// trace).
fn encode_record<R: Serialize>(
    record: &R,
    capacity: usize,
    decision: Option<&DecisionTrace>,
    feature_set: Option<&EncodedFeatureSet>,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(capacity + feature_set.map_or(0, |s| s.bytes.len()));
    // Serializing into a Vec cannot fail: every field is plain data.
    let infallible = "postcard to Vec is infallible";
    match (feature_set, decision) {
        (Some(set), _) => {
            out.push(RECORD_FORMAT_VERSION_WITH_FEATURE_SET);
            out.extend_from_slice(&set.bytes);
            let out = postcard::to_extend(record, out).expect(infallible);
            postcard::to_extend(&decision, out).expect(infallible)
        }
        (None, Some(trace)) => {
            out.push(RECORD_FORMAT_VERSION_WITH_DECISION);
            let out = postcard::to_extend(record, out).expect(infallible);
            postcard::to_extend(trace, out).expect(infallible)
        }
        (None, None) => {
            out.push(RECORD_FORMAT_VERSION);
            postcard::to_extend(record, out).expect(infallible)
        }
    }
}

/// What decided an event on a route with a decision policy, and why: rides after the
/// record in version 2 ([`RECORD_FORMAT_VERSION_WITH_DECISION`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecisionTrace {
    /// The policy's reason, a stable name: `model`, `fallback`, `rule`,
    /// `below_confidence`, `debounce`, `cooldown`.
    pub reason: String,
    /// The rule that decided (reason `rule`), else empty.
    pub rule: String,
    /// The action the model's class mapped to (for the fallback, its action), snake_case;
    /// what was sent is in the command.
    pub proposed: String,
    /// The model's softmax probability of its class; `None` when no model answered.
    pub confidence: Option<f32>,
}

/// The names of a record's features and the model that declares them (module doc).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeatureSet {
    /// The model whose manifest declares the features (the route's model, also when the
    /// fallback or a rule decided).
    pub model: ModelId,
    /// The feature names, in the order of the record's values.
    pub names: Vec<String>,
}

impl FeatureSet {
    /// The 13 demo features' names ([`DEMO_FEATURE_NAMES`]) are what `names` says.
    pub fn is_demo(&self) -> bool {
        self.names.iter().map(String::as_str).eq(DEMO_FEATURE_NAMES)
    }

    /// Why the set cannot name a record's features: an empty or repeated name.
    pub fn problem(&self) -> Option<String> {
        for (i, n) in self.names.iter().enumerate() {
            if n.is_empty() {
                return Some(format!("feature {i} has an empty name"));
            }
            if self.names[..i].contains(n) {
                return Some(format!("feature name {n:?} is repeated"));
            }
        }
        None
    }

    /// The set with its postcard encoding, made once and copied into every record.
    pub fn encoded(self) -> EncodedFeatureSet {
        let bytes = postcard::to_allocvec(&self).expect("postcard to Vec is infallible");
        EncodedFeatureSet { set: self, bytes }
    }
}

/// A [`FeatureSet`] and its postcard bytes ([`FeatureSet::encoded`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedFeatureSet {
    set: FeatureSet,
    bytes: Vec<u8>,
}

impl EncodedFeatureSet {
    /// The set.
    pub fn set(&self) -> &FeatureSet {
        &self.set
    }

    /// Its postcard encoding.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}

/// A decoded record with everything that rides with it.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodedRecord {
    /// The record.
    pub record: JournalRecord,
    /// Its decision trace (versions 2 and 3).
    pub decision: Option<DecisionTrace>,
    /// Its feature set (version 3); `None`: the demo features.
    pub feature_set: Option<FeatureSet>,
}

/// The header of an upload batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchHeader {
    /// The board that uploads.
    pub node: String,
    /// Journal sequence of the first record.
    pub first_seq: u64,
    /// Journal sequence of the last record.
    pub last_seq: u64,
    /// Number of records.
    pub count: u32,
    /// Number of window summaries after the records.
    pub windows: u32,
}

/// A batch ready to upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedBatch {
    /// Content-derived id: lowercase hex sha256 of the uncompressed body.
    pub id: String,
    /// The header that is in the body.
    pub header: BatchHeader,
    /// The zstd-compressed body, as uploaded.
    pub compressed: Vec<u8>,
    /// Length of the uncompressed body.
    pub uncompressed_len: usize,
}

/// A decoded batch.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodedBatch {
    /// The id recomputed from the content.
    pub id: String,
    /// The header.
    pub header: BatchHeader,
    /// `(journal sequence, record)` in journal order.
    pub records: Vec<(u64, JournalRecord)>,
    /// The window summaries that rode with the batch, as the board encoded them.
    pub windows: Vec<Vec<u8>>,
    /// The batch's distinct feature sets (the table of a version-3 batch, plus any a
    /// self-describing record brought).
    pub feature_sets: Vec<FeatureSet>,
    /// Per record (same index as `records`), its set's index in `feature_sets`; `None`:
    /// the demo features.
    pub record_sets: Vec<Option<usize>>,
    /// Per record, its decision trace.
    pub decisions: Vec<Option<DecisionTrace>>,
}

impl DecodedBatch {
    /// The feature set of record `i`; `None`: the demo features ([`DEMO_FEATURE_NAMES`]).
    pub fn feature_set(&self, i: usize) -> Option<&FeatureSet> {
        self.record_sets
            .get(i)
            .copied()
            .flatten()
            .and_then(|s| self.feature_sets.get(s))
    }

    /// Record `i` encoded as the journal stores it: with its decision trace and its
    /// feature set (version 1, 2 or 3).
    pub fn standalone(&self, i: usize) -> Vec<u8> {
        let (_, record) = &self.records[i];
        let decision = self.decisions.get(i).and_then(Option::as_ref);
        match self.feature_set(i) {
            Some(set) => record.encode_full(decision, Some(&set.clone().encoded())),
            None => record.encode_with_decision(decision),
        }
    }
}

/// Why bytes could not be read as a record or batch.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FormatError {
    /// Nothing to decode.
    #[error("empty input")]
    Empty,
    /// A record with a version byte this build does not know.
    #[error("unknown record format version {0} (this build reads {RECORD_FORMAT_VERSION} to {RECORD_FORMAT_VERSION_WITH_FEATURE_SET})")]
    RecordVersion(u8),
    /// A batch with a version byte this build does not know.
    #[error("unknown batch format version {0} (this build reads {BATCH_FORMAT_VERSION} and {BATCH_FORMAT_VERSION_WITH_FEATURE_SETS})")]
    BatchVersion(u8),
    /// postcard could not decode (truncated or wrong layout).
    #[error("malformed {what}: {source}")]
    Postcard {
        /// What was being decoded.
        what: &'static str,
        /// The postcard error.
        source: postcard::Error,
    },
    /// Bytes were left after the last item.
    #[error("{0} trailing bytes after the last record")]
    TrailingBytes(usize),
    /// The header's count does not match the records present.
    #[error("header says {header} records, body has {found}")]
    CountMismatch {
        /// What the header says.
        header: u32,
        /// What was decoded.
        found: u32,
    },
    /// A record length points past the end of the body.
    #[error("record {index} claims {len} bytes, only {left} left")]
    RecordOverrun {
        /// Position in the batch.
        index: u32,
        /// Claimed length.
        len: u64,
        /// Bytes left.
        left: usize,
    },
    /// The body is not a valid zstd frame.
    #[error("zstd: {0}")]
    Zstd(std::io::Error),
    /// The decompressed body is larger than [`MAX_BATCH_BODY_BYTES`].
    #[error("decompressed body exceeds {MAX_BATCH_BODY_BYTES} bytes")]
    TooLarge,
    /// The id computed from the content differs from the id it was sent with.
    #[error("batch id mismatch: sent {sent}, content hashes to {computed}")]
    IdMismatch {
        /// The id it came with.
        sent: String,
        /// The id of the content.
        computed: String,
    },
    /// A batch with no records.
    #[error("batch has no records")]
    NoRecords,
    /// A batch-only record (version 4) outside a batch.
    #[error("record format version {RECORD_FORMAT_VERSION_IN_BATCH} is only valid inside a batch")]
    RecordOutsideBatch,
    /// A record points past the batch's feature set table.
    #[error("record {index} names feature set {set}, the batch has {sets}")]
    FeatureSetIndex {
        /// Position in the batch.
        index: u32,
        /// The set index it names.
        set: u64,
        /// Sets in the table.
        sets: usize,
    },
    /// A feature set that cannot name features.
    #[error("feature set of model {model}: {reason}")]
    FeatureSet {
        /// `name@version` of its model.
        model: String,
        /// Why.
        reason: String,
    },
    /// A window summary length points past the end of the body.
    #[error("window summary {index} claims {len} bytes, only {left} left")]
    WindowOverrun {
        /// Position among the batch's windows.
        index: u32,
        /// Claimed length.
        len: u64,
        /// Bytes left.
        left: usize,
    },
}

fn postcard_err(what: &'static str) -> impl FnOnce(postcard::Error) -> FormatError {
    move |source| FormatError::Postcard { what, source }
}

impl JournalRecord {
    /// The record's encoding: version byte + postcard.
    pub fn encode(&self) -> Vec<u8> {
        self.encode_with_decision(None)
    }

    /// The record's encoding with `decision`: version 1 as [`JournalRecord::encode`]
    /// when `None`, else version 2 (the record, then the trace).
    pub fn encode_with_decision(&self, decision: Option<&DecisionTrace>) -> Vec<u8> {
        self.encode_full(decision, None)
    }

    /// The record borrowed ([`JournalRecordRef`]): the same values, the same encoding.
    pub fn as_borrowed(&self) -> JournalRecordRef<'_> {
        JournalRecordRef {
            node: &self.node,
            device: &self.device,
            seq: self.seq,
            arrival_unix_us: self.arrival_unix_us,
            payload: &self.payload,
            model_input: &self.model_input,
            features: &self.features,
            logits: &self.logits,
            class: self.class,
            command: &self.command,
            model: ModelIdRef {
                name: &self.model.name,
                version: &self.model.version,
            },
            source: self.source,
            timings: self.timings,
            outcome: match &self.outcome {
                DeadlineOutcome::OnTime => DeadlineOutcomeRef::OnTime,
                DeadlineOutcome::Miss { cause } => DeadlineOutcomeRef::Miss { cause },
            },
        }
    }

    /// The record's encoding with `decision` and, for features other than the demo
    /// features, their set: without a set exactly [`JournalRecord::encode_with_decision`]
    /// (version 1 or 2); with one, version 3 (the set's bytes, the record, the optional
    /// trace).
    pub fn encode_full(
        &self,
        decision: Option<&DecisionTrace>,
        feature_set: Option<&EncodedFeatureSet>,
    ) -> Vec<u8> {
        let capacity = 80 + self.payload.len() + 4 * self.model_input.len();
        encode_record(self, capacity, decision, feature_set)
    }

    /// Decodes one record of versions 1 to 3 (the trace and feature set are left out);
    /// refuses unknown versions and trailing bytes.
    pub fn decode(bytes: &[u8]) -> Result<JournalRecord, FormatError> {
        Self::decode_full(bytes).map(|d| d.record)
    }

    /// Decodes one record of versions 1 to 3, with its [`DecisionTrace`] when it has one
    /// (the feature set is left out).
    pub fn decode_with_decision(
        bytes: &[u8],
    ) -> Result<(JournalRecord, Option<DecisionTrace>), FormatError> {
        Self::decode_full(bytes).map(|d| (d.record, d.decision))
    }

    /// Decodes one record of versions 1 to 3 with its trace and feature set.
    pub fn decode_full(bytes: &[u8]) -> Result<DecodedRecord, FormatError> {
        let (&version, rest) = bytes.split_first().ok_or(FormatError::Empty)?;
        let (feature_set, rest) = match version {
            RECORD_FORMAT_VERSION | RECORD_FORMAT_VERSION_WITH_DECISION => (None, rest),
            RECORD_FORMAT_VERSION_WITH_FEATURE_SET => {
                let (set, rest) = postcard::take_from_bytes::<FeatureSet>(rest)
                    .map_err(postcard_err("feature set"))?;
                (Some(set), rest)
            }
            RECORD_FORMAT_VERSION_IN_BATCH => return Err(FormatError::RecordOutsideBatch),
            other => return Err(FormatError::RecordVersion(other)),
        };
        let (record, decision) = decode_tail(version, rest)?;
        Ok(DecodedRecord {
            record,
            decision,
            feature_set,
        })
    }
}

/// The record and its optional trace after the version byte (and, for versions 3 and 4,
/// after the set or its index): version 1 has no trace, 2 a trace, 3 and 4 an
/// `Option<DecisionTrace>`. Refuses trailing bytes.
fn decode_tail(
    version: u8,
    bytes: &[u8],
) -> Result<(JournalRecord, Option<DecisionTrace>), FormatError> {
    let (rec, mut left) =
        postcard::take_from_bytes::<JournalRecord>(bytes).map_err(postcard_err("record"))?;
    let mut trace = None;
    if version == RECORD_FORMAT_VERSION_WITH_DECISION {
        let (t, after) = postcard::take_from_bytes::<DecisionTrace>(left)
            .map_err(postcard_err("decision trace"))?;
        trace = Some(t);
        left = after;
    } else if version != RECORD_FORMAT_VERSION {
        let (t, after) = postcard::take_from_bytes::<Option<DecisionTrace>>(left)
            .map_err(postcard_err("decision trace"))?;
        trace = t;
        left = after;
    }
    if !left.is_empty() {
        return Err(FormatError::TrailingBytes(left.len()));
    }
    Ok((rec, trace))
}

/// Lowercase hex of `bytes`.
fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

/// The content-derived id of an uncompressed body.
pub fn batch_id(uncompressed_body: &[u8]) -> String {
    hex(&Sha256::digest(uncompressed_body))
}

fn push_varint(body: &mut Vec<u8>, v: u64) {
    let mut buf = [0u8; 10];
    let used = postcard::to_slice(&v, &mut buf)
        .expect("a u64 varint fits 10 bytes")
        .len();
    body.extend_from_slice(&buf[..used]);
}

/// Builds the uncompressed body of a batch from `(journal sequence, encoded record)` pairs
/// (records as the journal stores them) in increasing journal order. The header's
/// `first_seq`/`last_seq` are taken from the first and last pair (0 when empty).
pub fn batch_body<'a>(
    node: &str,
    records: impl ExactSizeIterator<Item = (u64, &'a [u8])> + Clone,
) -> Vec<u8> {
    batch_body_with_windows(node, records, &[])
}

/// [`batch_body`] with window summaries after the records. Records of version 3 have
/// their feature sets lifted into the batch's table (version-3 batch, module doc); without
/// any, the body is version 2.
pub fn batch_body_with_windows<'a>(
    node: &str,
    records: impl ExactSizeIterator<Item = (u64, &'a [u8])> + Clone,
    windows: &[&[u8]],
) -> Vec<u8> {
    let first_seq = records.clone().next().map_or(0, |(s, _)| s);
    let last_seq = records.clone().last().map_or(0, |(s, _)| s);
    let header = BatchHeader {
        node: node.to_owned(),
        first_seq,
        last_seq,
        count: u32::try_from(records.len()).unwrap_or(u32::MAX),
        windows: u32::try_from(windows.len()).unwrap_or(u32::MAX),
    };
    // The table: each distinct set in order of first use, and per record its index and
    // the bytes after its set. A version-3 record whose set does not parse goes as it is
    // (self-describing; the receiver names the problem).
    let mut table: Vec<FeatureSet> = Vec::new();
    let lifted: Vec<Option<(usize, &[u8])>> = records
        .clone()
        .map(|(_, r)| {
            let (&version, rest) = r.split_first()?;
            if version != RECORD_FORMAT_VERSION_WITH_FEATURE_SET {
                return None;
            }
            let (set, tail) = postcard::take_from_bytes::<FeatureSet>(rest).ok()?;
            let index = match table.iter().position(|s| *s == set) {
                Some(i) => i,
                None => {
                    table.push(set);
                    table.len() - 1
                }
            };
            Some((index, tail))
        })
        .collect();
    let version = if table.is_empty() {
        BATCH_FORMAT_VERSION
    } else {
        BATCH_FORMAT_VERSION_WITH_FEATURE_SETS
    };
    let mut body = vec![version];
    body = postcard::to_extend(&header, body).expect("postcard to Vec is infallible");
    if !table.is_empty() {
        body = postcard::to_extend(&table, body).expect("postcard to Vec is infallible");
    }
    let mut index_bytes = Vec::with_capacity(10);
    for ((seq, r), lifted) in records.zip(lifted) {
        push_varint(&mut body, seq);
        match lifted {
            None => {
                push_varint(&mut body, r.len() as u64);
                body.extend_from_slice(r);
            }
            Some((index, tail)) => {
                index_bytes.clear();
                push_varint(&mut index_bytes, index as u64);
                push_varint(&mut body, (1 + index_bytes.len() + tail.len()) as u64);
                body.push(RECORD_FORMAT_VERSION_IN_BATCH);
                body.extend_from_slice(&index_bytes);
                body.extend_from_slice(tail);
            }
        }
    }
    for w in windows {
        push_varint(&mut body, w.len() as u64);
        body.extend_from_slice(w);
    }
    body
}

/// The batch format version of an uploaded (zstd) batch: the first byte of its body,
/// read without decompressing the rest. `None` when it is not a zstd frame or is empty.
pub fn batch_format_of(compressed: &[u8]) -> Option<u8> {
    use std::io::Read;
    let mut decoder = zstd::stream::read::Decoder::new(compressed).ok()?;
    let mut first = [0u8; 1];
    decoder.read_exact(&mut first).ok()?;
    Some(first[0])
}

/// Builds, ids and compresses a batch from `(journal sequence, encoded record)` pairs in
/// increasing journal order.
pub fn encode_batch<'a>(
    node: &str,
    records: impl ExactSizeIterator<Item = (u64, &'a [u8])> + Clone,
) -> EncodedBatch {
    encode_batch_with_windows(node, records, &[])
}

/// [`encode_batch`] with window summaries after the records.
pub fn encode_batch_with_windows<'a>(
    node: &str,
    records: impl ExactSizeIterator<Item = (u64, &'a [u8])> + Clone,
    windows: &[&[u8]],
) -> EncodedBatch {
    let body = batch_body_with_windows(node, records, windows);
    let id = batch_id(&body);
    let compressed = zstd::bulk::compress(&body, ZSTD_LEVEL).expect("zstd compress into Vec");
    let header = read_header(&body)
        .expect("a body just built has a valid header")
        .0;
    EncodedBatch {
        id,
        header,
        compressed,
        uncompressed_len: body.len(),
    }
}

fn read_header(body: &[u8]) -> Result<(BatchHeader, &[u8]), FormatError> {
    let (&version, rest) = body.split_first().ok_or(FormatError::Empty)?;
    if version != BATCH_FORMAT_VERSION && version != BATCH_FORMAT_VERSION_WITH_FEATURE_SETS {
        return Err(FormatError::BatchVersion(version));
    }
    postcard::take_from_bytes::<BatchHeader>(rest).map_err(postcard_err("batch header"))
}

/// The feature set table after the header of a version-3 body, each set checked.
fn read_table(rest: &[u8]) -> Result<(Vec<FeatureSet>, &[u8]), FormatError> {
    let (table, rest) = postcard::take_from_bytes::<Vec<FeatureSet>>(rest)
        .map_err(postcard_err("feature set table"))?;
    for set in &table {
        check_set(set)?;
    }
    Ok((table, rest))
}

fn check_set(set: &FeatureSet) -> Result<(), FormatError> {
    match set.problem() {
        None => Ok(()),
        Some(reason) => Err(FormatError::FeatureSet {
            model: format!("{}@{}", set.model.name, set.model.version),
            reason,
        }),
    }
}

/// One record inside a batch (any version 1–4) with its trace and its set's index in
/// `table` (a self-describing version-3 record's set is added to it).
fn decode_in_batch(
    bytes: &[u8],
    index: u32,
    table: &mut Vec<FeatureSet>,
) -> Result<(JournalRecord, Option<DecisionTrace>, Option<usize>), FormatError> {
    match bytes.first() {
        Some(&RECORD_FORMAT_VERSION_IN_BATCH) => {
            let (set, tail) = postcard::take_from_bytes::<u64>(&bytes[1..])
                .map_err(postcard_err("feature set index"))?;
            if set >= table.len() as u64 {
                return Err(FormatError::FeatureSetIndex {
                    index,
                    set,
                    sets: table.len(),
                });
            }
            let (record, decision) = decode_tail(RECORD_FORMAT_VERSION_IN_BATCH, tail)?;
            Ok((record, decision, Some(set as usize)))
        }
        _ => {
            let d = JournalRecord::decode_full(bytes)?;
            let set = match d.feature_set {
                None => None,
                Some(set) => {
                    check_set(&set)?;
                    Some(match table.iter().position(|s| *s == set) {
                        Some(i) => i,
                        None => {
                            table.push(set);
                            table.len() - 1
                        }
                    })
                }
            };
            Ok((d.record, d.decision, set))
        }
    }
}

/// Splits a varint length and that many bytes off the front of `bytes`: `(item, rest)`.
/// A length past the end is `overrun(length, bytes left)`.
fn take_prefixed<'a>(
    bytes: &'a [u8],
    what: &'static str,
    overrun: impl FnOnce(u64, usize) -> FormatError,
) -> Result<(&'a [u8], &'a [u8]), FormatError> {
    let (len, after) = postcard::take_from_bytes::<u64>(bytes).map_err(postcard_err(what))?;
    if len > after.len() as u64 {
        return Err(overrun(len, after.len()));
    }
    Ok(after.split_at(len as usize))
}

/// Decodes an uncompressed body: header, records and window summaries, checking counts and
/// trailing bytes.
pub fn decode_body(body: &[u8]) -> Result<DecodedBatch, FormatError> {
    let (header, mut rest) = read_header(body)?;
    if header.count == 0 {
        return Err(FormatError::NoRecords);
    }
    let mut feature_sets = Vec::new();
    if body[0] == BATCH_FORMAT_VERSION_WITH_FEATURE_SETS {
        (feature_sets, rest) = read_table(rest)?;
    }
    let capacity = header.count.min(1 << 16) as usize;
    let mut records = Vec::with_capacity(capacity);
    let mut record_sets = Vec::with_capacity(capacity);
    let mut decisions = Vec::with_capacity(capacity);
    let mut index = 0u32;
    while index < header.count && !rest.is_empty() {
        let (seq, after) =
            postcard::take_from_bytes::<u64>(rest).map_err(postcard_err("record sequence"))?;
        let (rec, next) = take_prefixed(after, "record length", |len, left| {
            FormatError::RecordOverrun { index, len, left }
        })?;
        let (record, decision, set) = decode_in_batch(rec, index, &mut feature_sets)?;
        records.push((seq, record));
        decisions.push(decision);
        record_sets.push(set);
        rest = next;
        index += 1;
    }
    if index != header.count {
        return Err(FormatError::CountMismatch {
            header: header.count,
            found: index,
        });
    }
    let mut windows = Vec::with_capacity(header.windows.min(1 << 10) as usize);
    for index in 0..header.windows {
        let (w, next) = take_prefixed(rest, "window length", |len, left| {
            FormatError::WindowOverrun { index, len, left }
        })?;
        windows.push(w.to_vec());
        rest = next;
    }
    if !rest.is_empty() {
        return Err(FormatError::TrailingBytes(rest.len()));
    }
    Ok(DecodedBatch {
        id: batch_id(body),
        header,
        records,
        windows,
        feature_sets,
        record_sets,
        decisions,
    })
}

/// Decompresses and decodes an uploaded batch; with `expected_id`, also checks that the
/// content hashes to it. This is what the cloud ingest runs on each request body.
pub fn decode_batch(
    compressed: &[u8],
    expected_id: Option<&str>,
) -> Result<DecodedBatch, FormatError> {
    if compressed.is_empty() {
        return Err(FormatError::Empty);
    }
    let body = decompress_bounded(compressed)?;
    let batch = decode_body(&body)?;
    if let Some(sent) = expected_id {
        if sent != batch.id {
            return Err(FormatError::IdMismatch {
                sent: sent.to_owned(),
                computed: batch.id,
            });
        }
    }
    Ok(batch)
}

fn decompress_bounded(compressed: &[u8]) -> Result<Vec<u8>, FormatError> {
    use std::io::Read;
    let decoder = zstd::stream::read::Decoder::new(compressed).map_err(FormatError::Zstd)?;
    let mut body = Vec::new();
    decoder
        .take(MAX_BATCH_BODY_BYTES as u64 + 1)
        .read_to_end(&mut body)
        .map_err(FormatError::Zstd)?;
    if body.len() > MAX_BATCH_BODY_BYTES {
        return Err(FormatError::TooLarge);
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> JournalRecord {
        JournalRecord {
            node: "n1".into(),
            device: "d-7".into(),
            seq: 300,
            arrival_unix_us: 1_700_000_000_000_001,
            payload: vec![1, 2, 3],
            model_input: vec![0.5, -1.0],
            features: vec![1.0; N_FEATURES],
            logits: vec![0.25, 2.0, -0.5, 0.0],
            class: 1,
            command: vec![9, 8],
            model: ModelId {
                name: "edge".into(),
                version: "3".into(),
            },
            source: DecisionSource::Fallback,
            timings: StageTimings {
                decode_us: 5,
                queue_us: 130,
                infer_us: 0,
                publish_us: 40,
                end_to_end_us: 200,
                budget_us: 5000,
            },
            outcome: DeadlineOutcome::Miss {
                cause: "model_too_slow".into(),
            },
        }
    }

    #[test]
    fn the_ack_body_is_the_json_of_the_contract() {
        let ack = BatchAck {
            batch_id: "ab".into(),
            status: AckStatus::Duplicate,
            records: 3,
            version: ACK_VERSION,
            refused: vec![RefusedRecord {
                index: 1,
                journal_seq: 8,
                device: "d-1".into(),
                seq: 40,
                reason: RefusalReason::FeaturesMissing,
            }],
        };
        let json = r#"{"batch_id":"ab","status":"duplicate","records":3,"version":2,"refused":[{"index":1,"journal_seq":8,"device":"d-1","seq":40,"reason":"features_missing"}]}"#;
        assert_eq!(serde_json::to_string(&ack).unwrap(), json);
        assert_eq!(serde_json::from_str::<BatchAck>(json).unwrap(), ack);
    }

    #[test]
    fn an_ack_of_version_one_reads_as_refusing_nothing() {
        let json = r#"{"batch_id":"ab","status":"stored","records":3}"#;
        let ack = serde_json::from_str::<BatchAck>(json).unwrap();
        assert_eq!(ack.version, 1);
        assert!(ack.refused.is_empty());
    }

    #[test]
    fn every_refusal_reason_has_a_name_that_reads_back() {
        for r in RefusalReason::ALL {
            assert_eq!(RefusalReason::from_name(r.as_str()), Some(r));
            let json = serde_json::to_string(&r).unwrap();
            assert_eq!(json, format!("\"{}\"", r.as_str()));
        }
        assert_eq!(RefusalReason::from_name("nope"), None);
    }

    #[test]
    fn a_record_round_trips_through_its_encoding() {
        let r = sample();
        assert_eq!(JournalRecord::decode(&r.encode()).unwrap(), r);
    }

    #[test]
    fn the_record_encoding_is_pinned_byte_for_byte() {
        let mut r = sample();
        r.features = vec![1.0];
        let bytes = r.encode();
        #[rustfmt::skip]
        let golden: &[u8] = &[
            1, // format version
            2, b'n', b'1', // node
            3, b'd', b'-', b'7', // device
            0xac, 0x02, // seq 300 varint
            0x81, 0x80, 0xf9, 0xc0, 0xc1, 0xc4, 0x82, 0x03, // arrival varint (LEB128)
            3, 1, 2, 3, // payload
            2, 0, 0, 0, 0x3f, 0, 0, 0x80, 0xbf, // model_input [0.5, -1.0]
            1, 0, 0, 0x80, 0x3f, // features [1.0]
            4, 0, 0, 0x80, 0x3e, 0, 0, 0, 0x40, 0, 0, 0, 0xbf, 0, 0, 0, 0, // logits
            1, // class
            2, 9, 8, // command
            4, b'e', b'd', b'g', b'e', 1, b'3', // model
            1, // source: Fallback
            5, 0x82, 0x01, 0, 40, 0xc8, 0x01, 0x88, 0x27, // timings
            1, 14, b'm', b'o', b'd', b'e', b'l', b'_', b't', b'o', b'o', b'_', b's', b'l', b'o', b'w',
        ];
        assert_eq!(bytes, golden);
    }

    #[test]
    fn a_borrowed_record_encodes_to_the_owned_records_bytes_in_every_version() {
        let trace = DecisionTrace {
            reason: "rule".into(),
            rule: "hot".into(),
            proposed: "run".into(),
            confidence: None,
        };
        let set = motor_set().encoded();
        let mut on_time = sample();
        on_time.outcome = DeadlineOutcome::OnTime;
        on_time.features.clear();
        on_time.logits.clear();
        for r in [sample(), on_time] {
            assert_eq!(r.as_borrowed().to_record(), r);
            for decision in [None, Some(&trace)] {
                for feature_set in [None, Some(&set)] {
                    assert_eq!(
                        r.as_borrowed().encode_full(decision, feature_set),
                        r.encode_full(decision, feature_set),
                        "{:?} {decision:?} {}",
                        r.outcome,
                        feature_set.is_some()
                    );
                }
            }
        }
    }

    #[test]
    fn a_record_with_a_decision_is_the_old_record_then_the_trace() {
        let r = sample();
        let trace = DecisionTrace {
            reason: "rule".into(),
            rule: "hot".into(),
            proposed: "run".into(),
            confidence: Some(1.0),
        };
        let bytes = r.encode_with_decision(Some(&trace));
        let old = r.encode();
        assert_eq!(bytes[0], 2);
        assert_eq!(
            bytes[1..old.len()],
            old[1..],
            "the version 1 layout, unchanged"
        );
        #[rustfmt::skip]
        let tail: &[u8] = &[
            4, b'r', b'u', b'l', b'e', 3, b'h', b'o', b't', 3, b'r', b'u', b'n', // strings
            1, 0, 0, 0x80, 0x3f, // Some(1.0)
        ];
        assert_eq!(&bytes[old.len()..], tail);
        assert_eq!(
            JournalRecord::decode_with_decision(&bytes).unwrap(),
            (r.clone(), Some(trace))
        );
        assert_eq!(
            JournalRecord::decode(&bytes).unwrap(),
            r,
            "read by the old call"
        );
        assert_eq!(
            r.encode_with_decision(None),
            old,
            "no trace: version 1 as before"
        );
        assert_eq!(
            JournalRecord::decode_with_decision(&old).unwrap(),
            (r, None)
        );
    }

    #[test]
    fn a_record_with_another_version_byte_is_refused_by_name() {
        let mut bytes = sample().encode();
        bytes[0] = 9;
        let e = JournalRecord::decode(&bytes).unwrap_err();
        assert!(matches!(e, FormatError::RecordVersion(9)), "{e}");
        assert!(e.to_string().contains('9'));
    }

    #[test]
    fn a_record_with_trailing_bytes_is_refused() {
        let mut bytes = sample().encode();
        bytes.push(0);
        assert!(matches!(
            JournalRecord::decode(&bytes),
            Err(FormatError::TrailingBytes(1))
        ));
    }

    #[test]
    fn a_batch_round_trips_and_its_id_is_the_hash_of_the_body() {
        let recs: Vec<Vec<u8>> = (0..5)
            .map(|i| {
                let mut r = sample();
                r.seq = i;
                r.encode()
            })
            .collect();
        let pairs = || {
            recs.iter()
                .enumerate()
                .map(|(i, r)| (10 + i as u64, r.as_slice()))
        };
        let b = encode_batch("n1", pairs());
        let body = batch_body("n1", pairs());
        assert_eq!(b.id, batch_id(&body));
        assert_eq!(b.id.len(), 64);
        let d = decode_batch(&b.compressed, Some(&b.id)).unwrap();
        assert_eq!(d.header.first_seq, 10);
        assert_eq!(d.header.last_seq, 14);
        assert_eq!(d.header.count, 5);
        assert_eq!(d.records.len(), 5);
        assert_eq!(d.records[3].0, 13);
        assert_eq!(d.records[3].1.seq, 3);
    }

    #[test]
    fn the_batch_body_layout_and_id_are_pinned() {
        let rec = [1u8, 0xaa];
        let body = batch_body("n", [(1, &rec[..]), (300, &rec[..])].into_iter());
        assert_eq!(
            body,
            [2, 1, b'n', 1, 0xac, 0x02, 2, 0, 1, 2, 1, 0xaa, 0xac, 0x02, 2, 1, 0xaa],
            "version, header(node, first, last, count, windows), (seq, len, record)×2"
        );
        let with_window =
            batch_body_with_windows("n", [(1, &rec[..])].into_iter(), &[&[7u8, 8, 9][..]]);
        assert_eq!(
            with_window,
            [2, 1, b'n', 1, 1, 1, 1, 1, 2, 1, 0xaa, 3, 7, 8, 9],
            "version, header(node, first, last, count, windows), (seq, len, record), (len, window)"
        );
        assert_eq!(
            batch_id(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn window_summaries_ride_after_the_records_and_round_trip() {
        let r = sample().encode();
        let windows: [&[u8]; 2] = [b"first window", &[0u8; 300]];
        let b = encode_batch_with_windows("n1", [(1, r.as_slice())].into_iter(), &windows);
        let d = decode_batch(&b.compressed, Some(&b.id)).unwrap();
        assert_eq!(d.header.windows, 2);
        assert_eq!(d.records.len(), 1);
        assert_eq!(d.windows, [windows[0].to_vec(), windows[1].to_vec()]);
        // The windows are part of the content, so of the id.
        assert_ne!(b.id, encode_batch("n1", [(1, r.as_slice())].into_iter()).id);
        // A window cut short or a byte too many is refused.
        let body = batch_body_with_windows("n1", [(1, r.as_slice())].into_iter(), &windows);
        let short = zstd::bulk::compress(&body[..body.len() - 1], 1).unwrap();
        assert!(matches!(
            decode_batch(&short, None),
            Err(FormatError::WindowOverrun { index: 1, .. })
        ));
        let mut long = body.clone();
        long.push(0);
        let long = zstd::bulk::compress(&long, 1).unwrap();
        assert!(matches!(
            decode_batch(&long, None),
            Err(FormatError::TrailingBytes(1))
        ));
    }

    #[test]
    fn the_same_records_give_the_same_batch_id() {
        let r = sample().encode();
        let a = encode_batch("n1", [(1, r.as_slice())].into_iter());
        let b = encode_batch("n1", [(1, r.as_slice())].into_iter());
        assert_eq!(a.id, b.id);
        let c = encode_batch("n2", [(1, r.as_slice())].into_iter());
        assert_ne!(a.id, c.id);
    }

    #[test]
    fn a_batch_sent_with_another_id_is_refused_naming_both() {
        let r = sample().encode();
        let b = encode_batch("n1", [(1, r.as_slice())].into_iter());
        let e = decode_batch(&b.compressed, Some("00")).unwrap_err();
        assert!(matches!(e, FormatError::IdMismatch { .. }));
        assert!(e.to_string().contains(&b.id));
    }

    #[test]
    fn garbage_and_truncated_batches_are_errors_not_panics() {
        assert!(matches!(decode_batch(&[], None), Err(FormatError::Empty)));
        assert!(matches!(
            decode_batch(b"not zstd at all", None),
            Err(FormatError::Zstd(_))
        ));
        let r = sample().encode();
        let body = batch_body("n1", [(1, r.as_slice())].into_iter());
        for cut in 0..body.len() {
            let z = zstd::bulk::compress(&body[..cut], 1).unwrap();
            assert!(decode_batch(&z, None).is_err(), "cut at {cut}");
        }
        let mut wrong_count = batch_body("n1", [(1, r.as_slice()), (2, r.as_slice())].into_iter());
        wrong_count[6] = 3; // count field
        let z = zstd::bulk::compress(&wrong_count, 1).unwrap();
        assert!(matches!(
            decode_batch(&z, None),
            Err(FormatError::CountMismatch {
                header: 3,
                found: 2
            })
        ));
    }

    fn motor_set() -> FeatureSet {
        FeatureSet {
            model: ModelId {
                name: "m".into(),
                version: "1".into(),
            },
            names: vec!["rms_a".into(), "t".into()],
        }
    }

    #[test]
    fn a_record_with_a_feature_set_is_pinned_byte_for_byte() {
        let mut r = sample();
        r.features = vec![1.0, 2.0];
        let set = motor_set().encoded();
        let bytes = r.encode_full(None, Some(&set));
        let old = r.encode();
        #[rustfmt::skip]
        let head: &[u8] = &[
            3, // format version
            1, b'm', 1, b'1', // set: model name, version
            2, 5, b'r', b'm', b's', b'_', b'a', 1, b't', // set: names
        ];
        assert_eq!(&bytes[..head.len()], head);
        assert_eq!(
            &bytes[head.len()..bytes.len() - 1],
            &old[1..],
            "then the version 1 layout"
        );
        assert_eq!(bytes[bytes.len() - 1], 0, "then no trace");
        let d = JournalRecord::decode_full(&bytes).unwrap();
        assert_eq!(
            (d.record, d.decision, d.feature_set),
            (r.clone(), None, Some(motor_set()))
        );
        assert_eq!(JournalRecord::decode(&bytes).unwrap(), r, "the old call");
        assert_eq!(
            r.encode_full(None, None),
            old,
            "no set: version 1 as before"
        );
    }

    #[test]
    fn a_record_with_a_feature_set_and_a_trace_round_trips() {
        let r = sample();
        let trace = DecisionTrace {
            reason: "model".into(),
            rule: String::new(),
            proposed: "run".into(),
            confidence: None,
        };
        let bytes = r.encode_full(Some(&trace), Some(&motor_set().encoded()));
        assert_eq!(
            JournalRecord::decode_with_decision(&bytes).unwrap(),
            (r, Some(trace))
        );
    }

    #[test]
    fn a_batch_only_record_is_refused_outside_a_batch() {
        let mut bytes = sample().encode();
        bytes[0] = RECORD_FORMAT_VERSION_IN_BATCH;
        assert!(matches!(
            JournalRecord::decode(&bytes),
            Err(FormatError::RecordOutsideBatch)
        ));
    }

    #[test]
    fn a_batch_with_feature_sets_writes_each_set_once_and_pins_its_layout() {
        let set = motor_set().encoded();
        let mut r = sample();
        r.features = vec![1.0, 2.0];
        let with_set = r.encode_full(None, Some(&set));
        let demo = sample().encode();
        let recs = [
            (1u64, with_set.as_slice()),
            (2, &demo[..]),
            (3, &with_set[..]),
        ];
        let body = batch_body("n", recs.into_iter());
        let set_len = 1 + set.bytes().len();
        #[rustfmt::skip]
        let head: &[u8] = &[
            3, // batch version
            1, b'n', 1, 3, 3, 0, // header(node, first, last, count, windows)
            1, // one set in the table
        ];
        assert_eq!(&body[..head.len()], head);
        assert_eq!(
            &body[head.len()..head.len() + set.bytes().len()],
            set.bytes()
        );
        let first = &body[head.len() + set.bytes().len()..];
        let tail_len = with_set.len() - set_len;
        let (seq, first) = postcard::take_from_bytes::<u64>(first).unwrap();
        let (len, first) = postcard::take_from_bytes::<u64>(first).unwrap();
        assert_eq!(
            (seq, len),
            (1, 2 + tail_len as u64),
            "journal sequence, length"
        );
        assert_eq!(
            &first[..2],
            &[RECORD_FORMAT_VERSION_IN_BATCH, 0],
            "version 4, set 0"
        );
        assert_eq!(&first[2..2 + tail_len], &with_set[set_len..]);
        // The set's names appear once in the body whatever the records.
        let count = body.windows(5).filter(|w| *w == b"rms_a").count();
        assert_eq!(count, 1);

        let b = encode_batch("n", recs.into_iter());
        assert_eq!(batch_format_of(&b.compressed), Some(3));
        let d = decode_batch(&b.compressed, Some(&b.id)).unwrap();
        assert_eq!(d.feature_sets, [motor_set()]);
        assert_eq!(d.record_sets, [Some(0), None, Some(0)]);
        assert_eq!(d.feature_set(0), Some(&motor_set()));
        assert_eq!(d.feature_set(1), None);
        assert_eq!(d.records[0].1, r);
        assert_eq!(d.records[1].1, sample());
        for (i, (_, bytes)) in recs.iter().enumerate() {
            assert_eq!(d.standalone(i), *bytes, "record {i} as the journal had it");
        }
    }

    #[test]
    fn a_batch_of_demo_records_stays_version_two() {
        let r = sample().encode();
        let b = encode_batch("n1", [(1, r.as_slice())].into_iter());
        assert_eq!(batch_format_of(&b.compressed), Some(BATCH_FORMAT_VERSION));
        let d = decode_batch(&b.compressed, None).unwrap();
        assert!(d.feature_sets.is_empty());
        assert_eq!(d.record_sets, [None]);
    }

    #[test]
    fn a_batch_with_a_bad_feature_set_or_index_is_malformed() {
        let mut dup = motor_set();
        dup.names = vec!["a".into(), "a".into()];
        let bad = sample().encode_full(None, Some(&dup.encoded()));
        let b = encode_batch("n", [(1, bad.as_slice())].into_iter());
        let e = decode_batch(&b.compressed, None).unwrap_err();
        assert!(matches!(e, FormatError::FeatureSet { .. }), "{e}");
        assert!(e.to_string().contains("\"a\" is repeated"), "{e}");

        let good = sample().encode_full(None, Some(&motor_set().encoded()));
        let mut body = batch_body("n", [(1, good.as_slice())].into_iter());
        let at = body
            .iter()
            .position(|&b| b == RECORD_FORMAT_VERSION_IN_BATCH)
            .unwrap();
        body[at + 1] = 5; // set index past the table
        let z = zstd::bulk::compress(&body, 1).unwrap();
        assert!(matches!(
            decode_batch(&z, None),
            Err(FormatError::FeatureSetIndex {
                index: 0,
                set: 5,
                sets: 1
            })
        ));
    }

    #[test]
    fn a_feature_set_knows_the_demo_names_and_its_problems() {
        let demo = FeatureSet {
            model: motor_set().model,
            names: DEMO_FEATURE_NAMES.iter().map(|&n| n.to_owned()).collect(),
        };
        assert!(demo.is_demo());
        assert!(!motor_set().is_demo());
        assert_eq!(motor_set().problem(), None);
        let mut empty = motor_set();
        empty.names[1].clear();
        assert_eq!(
            empty.problem().as_deref(),
            Some("feature 1 has an empty name")
        );
    }

    #[test]
    fn truncated_batches_with_feature_sets_are_errors_not_panics() {
        let r = sample().encode_full(None, Some(&motor_set().encoded()));
        let body = batch_body("n1", [(1, r.as_slice()), (2, r.as_slice())].into_iter());
        for cut in 0..body.len() {
            let z = zstd::bulk::compress(&body[..cut], 1).unwrap();
            assert!(decode_batch(&z, None).is_err(), "cut at {cut}");
        }
    }
}
