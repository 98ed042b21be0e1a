//! `reflex-cloud`: where the boards' journals land and their decisions are reviewed.
//!
//! * [`ingest`]: the HTTP ingest (`reflex-cloud serve`) implementing the upload contract of
//!   `reflex_journal::upload`: bearer tokens checked against hashes in constant time (two
//!   per node while rotating), every record bound to the token's node and its device
//!   allow-list, header, body and request timeouts and a connection limit, size limits,
//!   batch validation, dedupe by batch id, durable write before the 200.
//! * [`storage`]: the `object_store` store (local directory or S3-compatible bucket) and
//!   the commit protocol of a batch (Parquet files, then a marker).
//! * [`clock`]: board clocks: a record stamped at an implausible time is filed under an
//!   arrival-based estimate, flagged.
//! * [`compact`]: `reflex-cloud compact`: a partition's small files merged into one, with a
//!   commit protocol of its own (a compaction marker) under which readers still read every
//!   committed row exactly once.
//! * [`layout`]: the partition layout `events/date=…/device=…/<batch>.parquet`.
//! * [`table`]: the Arrow schemas of the events and rescored tables and Parquet I/O.
//! * [`rescore`]: the batch job (`reflex-cloud rescore`): snapshot → run manifest → a
//!   DataFusion plan (scan of exactly the snapshot's files, rescoring with the cloud model in
//!   a UDF, `GROUP BY` comparisons) → mergeable drift sketches per file → agreement, drift
//!   (through reflex-drift) and the JSON and HTML reports.
//! * [`config`]: the TOML configuration.
//! * [`tls`]: HTTPS served by `serve` itself (rustls with ring).
//! * [`tokens`]: the node table, shared by the ingest and reloaded on SIGHUP or when its
//!   files change.
//! * [`metrics`]: `/metrics` (Prometheus text) and `/healthz`.
//! * [`runs`]: the rescore runs as a service: the range a scheduled run covers
//!   (`rescore --last`) and the index of runs (`index.html`, `index.json`).
//!
//! * `cluster` (cargo feature `ballista`): the same plan on an Apache Ballista cluster:
//!   `reflex-cloud scheduler`, `reflex-cloud executor`, `rescore --engine ballista`.
//!
//! DataFusion is embedded by default (no SQL parser): see `cloud/README.md` for the plan,
//! its build cost and rescoring on Ballista.

pub mod clock;
#[cfg(feature = "ballista")]
pub mod cluster;
pub mod compact;
pub mod config;
pub mod ingest;
pub mod layout;
pub mod metrics;
pub mod rescore;
pub mod runs;
pub mod storage;
pub mod table;
pub mod tls;
pub mod tokens;

pub use config::{Config, ConfigError};
pub use ingest::{hash_token, Ingest, IngestError, IngestStats};
pub use rescore::{Report, RescoreError, RescoreJob, RescoreOutcome, RunManifest, Snapshot};
pub use storage::{Storage, StorageError};
