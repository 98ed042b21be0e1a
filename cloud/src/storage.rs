//! Storage of uploaded batches through the `object_store` crate: a local directory by
//! default, an S3-compatible bucket by configuration (feature `s3`; endpoint, region,
//! prefix, credentials from a secret file: [`crate::config::StorageConfig`]).
//!
//! **Key layout** ([`crate::layout`]): `events/date=…/device=…/<batch id>.parquet`,
//! `windows/date=…/node=…/<sha256>.json`, and the marker `batches/<batch id>.json`.
//!
//! **Durability.** [`Storage::put_durable`] returns only once the object survives a crash:
//! on S3 a completed PUT is durable; on the local filesystem this module writes a staging
//! file (`name#<digits>`, which object_store's listing skips), fsyncs it, renames it into
//! place (atomic, so a reader never sees half a file), then fsyncs every directory from its
//! parent up to the root (and a root it creates, in its parent). The data is on disk before
//! the name is: object_store's own local `put` renames without an fsync, and a directory
//! fsync by a concurrent write could then make a name durable with no content behind it.
//! Checked under real power cuts with the `reflex-powercut` FUSE harness
//! (tests/powercut.rs).
//!
//! **Commit protocol** (invariants readers and writers rely on, also with N ingest
//! processes sharing one store and nothing else). [`Storage::store_batch`] writes every
//! Parquet file and window of a batch durably, and then the batch's marker with
//! [`Storage::create_durable`]: created only if absent (S3: `If-None-Match: *`; local: a
//! hard link of the fsynced staging file, which fails on an existing name). So:
//! - the marker is the commit point: readers take a batch's files only when its marker
//!   exists (`Snapshot::resolve`); files without a marker (a writer that crashed) are
//!   ignored and rewritten, same keys and bytes, by the retry;
//! - the marker is the dedupe: a batch whose marker exists is never written again
//!   ([`Stored::Duplicate`]); of writers racing on one batch, exactly one creates the
//!   marker ([`Stored::New`]), the others answer duplicate (on a local filesystem
//!   without hard links, only among the writers of one process: the create falls back
//!   to a lock, a check and a rename);
//! - a marker is never overwritten or deleted.
//!
//! `reflex-cloud compact` later merges a partition's committed files into one, under a
//! protocol of its own that keeps these invariants for readers ([`crate::compact`]): it
//! is the only writer that deletes event files, and only files a durable compaction
//! marker has replaced.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use reflex_drift::monitor::WindowSummary;
use reflex_records::{DecodedBatch, FeatureSet};
use serde::{Deserialize, Serialize};

use crate::clock::ClockFix;
use crate::config::StorageConfig;
use crate::layout::{self, Day};
use crate::table::{self, EventRow, TableError};

/// A storage failure.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The object store failed.
    #[error("object store at {path:?}: {source}")]
    Store {
        /// Object path.
        path: String,
        /// The error.
        source: object_store::Error,
    },
    /// A local file or directory could not be created or synced.
    #[error("local storage {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The storage configuration cannot be used.
    #[error("storage configuration: {0}")]
    Config(String),
    /// Parquet encoding or decoding failed.
    #[error("table {path:?}: {source}")]
    Table {
        /// Object path.
        path: String,
        /// The error.
        source: TableError,
    },
    /// A marker that is not the JSON this crate writes.
    #[error("marker {path:?} is unreadable: {reason}")]
    Marker {
        /// Object path.
        path: String,
        /// Why.
        reason: String,
    },
    /// A blocking task died.
    #[error("storage task failed: {0}")]
    Task(String),
    /// A window summary that does not decode; found while encoding, before anything is
    /// written (the ingest answers 400).
    #[error("window summary {index} of the batch: {reason}")]
    Window {
        /// Position in the batch.
        index: usize,
        /// Why.
        reason: String,
    },
}

/// What a batch marker records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchMarker {
    /// The batch id.
    pub batch_id: String,
    /// The uploading board.
    pub node: String,
    /// Records in the batch.
    pub records: u32,
    /// Journal sequence range.
    pub first_seq: u64,
    /// Journal sequence range.
    pub last_seq: u64,
    /// The event files written, in path order.
    pub files: Vec<String>,
    /// The board monitoring windows that rode with the batch (content-addressed files,
    /// possibly already stored by an earlier batch), in path order.
    #[serde(default)]
    pub windows: Vec<String>,
}

/// Whether [`Storage::store_batch`] wrote the batch now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    /// Written by this call.
    New,
    /// Its marker already existed; nothing written.
    Duplicate,
}

/// An object in a listing.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Listed {
    /// Object path.
    pub path: String,
    /// Size, bytes.
    pub size: u64,
}

/// The files of one batch, encoded and ready to write (the CPU part of storing a batch).
#[derive(Debug, Clone)]
pub struct EncodedFiles {
    /// `(path, parquet bytes)`, in path order.
    pub files: Vec<(String, Vec<u8>)>,
    /// `(path, window JSON)`, in path order.
    pub windows: Vec<(String, Vec<u8>)>,
    /// The marker to write after them.
    pub marker: BatchMarker,
}

/// Groups a decoded batch by `(day, device)` and encodes one Parquet file per group.
/// Pure CPU work: call it off the async executor.
pub fn encode_batch_files(batch: &DecodedBatch) -> Result<EncodedFiles, StorageError> {
    encode_batch_files_clocked(batch, &[])
}

/// [`encode_batch_files`], with `fixes[i]` (when present) filing record `i` under the
/// estimate of a board clock found implausible ([`crate::clock`]): its day and
/// `arrival_unix_us` are the estimate's, flagged.
pub fn encode_batch_files_clocked(
    batch: &DecodedBatch,
    fixes: &[Option<ClockFix>],
) -> Result<EncodedFiles, StorageError> {
    let mut groups: BTreeMap<String, Vec<EventRow>> = BTreeMap::new();
    let sets: Vec<Arc<FeatureSet>> = batch
        .feature_sets
        .iter()
        .map(|s| Arc::new(s.clone()))
        .collect();
    for (i, (journal_seq, record)) in batch.records.iter().enumerate() {
        let set = batch
            .record_sets
            .get(i)
            .copied()
            .flatten()
            .and_then(|s| sets.get(s).cloned());
        let row = EventRow::filed(
            batch.id.clone(),
            *journal_seq,
            record.clone(),
            set,
            fixes.get(i).copied().flatten(),
        );
        let path = layout::event_file(
            Day::of_unix_us(row.record.arrival_unix_us),
            &record.device,
            &batch.id,
        );
        groups.entry(path).or_default().push(row);
    }
    let mut files = Vec::with_capacity(groups.len());
    for (path, rows) in groups {
        let bytes = table::events_batch(&rows)
            .and_then(|b| table::to_parquet(&b))
            .map_err(|source| StorageError::Table {
                path: path.clone(),
                source,
            })?;
        files.push((path, bytes));
    }
    let mut windows = BTreeMap::new();
    for (index, bytes) in batch.windows.iter().enumerate() {
        let summary = WindowSummary::decode(bytes).map_err(|e| StorageError::Window {
            index,
            reason: e.to_string(),
        })?;
        let path = layout::window_file(
            Day::of_unix_us(summary.start_ms.saturating_mul(1000)),
            &batch.header.node,
            &reflex_records::batch_id(bytes),
        );
        let json = serde_json::to_vec(&summary).expect("a window summary serializes");
        windows.insert(path, json);
    }
    let windows: Vec<(String, Vec<u8>)> = windows.into_iter().collect();
    let marker = BatchMarker {
        batch_id: batch.id.clone(),
        node: batch.header.node.clone(),
        records: batch.header.count,
        first_seq: batch.header.first_seq,
        last_seq: batch.header.last_seq,
        files: files.iter().map(|(p, _)| p.clone()).collect(),
        windows: windows.iter().map(|(p, _)| p.clone()).collect(),
    };
    Ok(EncodedFiles {
        files,
        windows,
        marker,
    })
}

/// The object store and, for a local one, its root directory (to fsync).
#[derive(Debug, Clone)]
pub struct Storage {
    store: Arc<dyn ObjectStore>,
    local_root: Option<PathBuf>,
    description: String,
}

fn store_err(path: &str) -> impl FnOnce(object_store::Error) -> StorageError + '_ {
    move |source| StorageError::Store {
        path: path.to_owned(),
        source,
    }
}

impl Storage {
    /// Opens the configured store (creating a local root directory if needed).
    pub fn open(cfg: &StorageConfig) -> Result<Storage, StorageError> {
        match cfg {
            StorageConfig::Local { path } => Storage::local(path.clone()),
            #[cfg(feature = "s3")]
            StorageConfig::S3 {
                bucket,
                region,
                endpoint,
                allow_http,
                prefix,
                credentials_file,
            } => {
                // Credentials from the secret file, else the environment; never the config.
                let mut b = object_store::aws::AmazonS3Builder::from_env()
                    .with_bucket_name(bucket)
                    .with_allow_http(*allow_http)
                    // The marker's create-if-absent is `If-None-Match: *` (module doc).
                    .with_conditional_put(object_store::aws::S3ConditionalPut::ETagMatch);
                if let Some(path) = credentials_file {
                    let c = crate::config::S3Credentials::load(path).map_err(|e| {
                        StorageError::Config(format!("storage.credentials_file: {e}"))
                    })?;
                    b = b
                        .with_access_key_id(c.access_key_id)
                        .with_secret_access_key(c.secret_access_key);
                    if let Some(t) = c.session_token {
                        b = b.with_token(t);
                    }
                }
                if let Some(r) = region {
                    b = b.with_region(r);
                }
                if let Some(e) = endpoint {
                    b = b.with_endpoint(e);
                }
                let s3 = b
                    .build()
                    .map_err(|e| StorageError::Config(format!("s3 bucket {bucket:?}: {e}")))?;
                let store: Arc<dyn ObjectStore> = match prefix {
                    Some(p) => Arc::new(object_store::prefix::PrefixStore::new(s3, p.as_str())),
                    None => Arc::new(s3),
                };
                Ok(Storage {
                    store,
                    local_root: None,
                    description: format!("s3://{bucket}/{}", prefix.as_deref().unwrap_or("")),
                })
            }
            #[cfg(not(feature = "s3"))]
            StorageConfig::S3 { bucket, .. } => Err(StorageError::Config(format!(
                "s3 bucket {bucket:?}: this build has no s3 support (feature `s3`)"
            ))),
        }
    }

    /// A store in a local directory.
    pub fn local(root: PathBuf) -> Result<Storage, StorageError> {
        create_dir_durably(&root)?;
        let root = root.canonicalize().map_err(|source| StorageError::Io {
            path: root.clone(),
            source,
        })?;
        let fs = LocalFileSystem::new_with_prefix(&root)
            .map_err(|e| StorageError::Config(format!("local root {}: {e}", root.display())))?;
        Ok(Storage {
            store: Arc::new(fs),
            description: root.display().to_string(),
            local_root: Some(root),
        })
    }

    /// Where it stores, for logs.
    pub fn description(&self) -> &str {
        &self.description
    }

    /// The object store itself, for a query engine to read the same objects.
    pub fn object_store(&self) -> Arc<dyn ObjectStore> {
        self.store.clone()
    }

    /// Writes `bytes` at `path` atomically and durably (module doc).
    pub async fn put_durable(&self, path: &str, bytes: Bytes) -> Result<(), StorageError> {
        if let Some(root) = &self.local_root {
            let root = root.clone();
            let file = root.join(path);
            return tokio::task::spawn_blocking(move || write_durably(&file, &bytes, &root))
                .await
                .map_err(|e| StorageError::Task(e.to_string()))?;
        }
        let p = ObjectPath::from(path);
        self.store
            .put(&p, PutPayload::from(bytes))
            .await
            .map_err(store_err(path))?;
        Ok(())
    }

    /// Whether an object exists.
    pub async fn exists(&self, path: &str) -> Result<bool, StorageError> {
        match self.store.head(&ObjectPath::from(path)).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(store_err(path)(e)),
        }
    }

    /// The size of an object, if it exists.
    pub async fn size_of(&self, path: &str) -> Result<Option<u64>, StorageError> {
        match self.store.head(&ObjectPath::from(path)).await {
            Ok(m) => Ok(Some(m.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(store_err(path)(e)),
        }
    }

    /// Reads a whole object.
    pub async fn get(&self, path: &str) -> Result<Bytes, StorageError> {
        let r = self
            .store
            .get(&ObjectPath::from(path))
            .await
            .map_err(store_err(path))?;
        r.bytes().await.map_err(store_err(path))
    }

    /// Every object under `prefix`, sorted by path.
    pub async fn list(&self, prefix: &str) -> Result<Vec<Listed>, StorageError> {
        let p = ObjectPath::from(prefix);
        let mut out: Vec<Listed> = self
            .store
            .list(Some(&p))
            .map_ok(|m| Listed {
                path: m.location.to_string(),
                size: m.size,
            })
            .try_collect()
            .await
            .map_err(store_err(prefix))?;
        out.sort();
        Ok(out)
    }

    /// Every object under `prefix` with its last modification (ms since the epoch, the
    /// store's clock), sorted by path.
    pub async fn list_modified(&self, prefix: &str) -> Result<Vec<(Listed, i64)>, StorageError> {
        let p = ObjectPath::from(prefix);
        let mut out: Vec<(Listed, i64)> = self
            .store
            .list(Some(&p))
            .map_ok(|m| {
                (
                    Listed {
                        path: m.location.to_string(),
                        size: m.size,
                    },
                    m.last_modified.timestamp_millis(),
                )
            })
            .try_collect()
            .await
            .map_err(store_err(prefix))?;
        out.sort();
        Ok(out)
    }

    /// Deletes an object; one already gone is not an error. Not made durable: a delete a
    /// power cut undoes leaves a file that only takes space ([`crate::compact`]).
    pub async fn delete(&self, path: &str) -> Result<(), StorageError> {
        match self.store.delete(&ObjectPath::from(path)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(store_err(path)(e)),
        }
    }

    /// The marker of a batch, if it was stored.
    pub async fn marker(&self, batch_id: &str) -> Result<Option<BatchMarker>, StorageError> {
        let path = layout::marker(batch_id);
        if !self.exists(&path).await? {
            return Ok(None);
        }
        let bytes = self.get(&path).await?;
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| StorageError::Marker {
                path,
                reason: e.to_string(),
            })
    }

    /// Writes `bytes` at `path` only if nothing is there yet, atomically and durably:
    /// `Ok(false)` when an object already exists (and is left as it is). Local: the staged
    /// file is hard-linked into place (`link` fails on an existing name, across processes);
    /// S3: a PUT with `If-None-Match: *` ([`object_store::PutMode::Create`]).
    pub async fn create_durable(&self, path: &str, bytes: Bytes) -> Result<bool, StorageError> {
        if let Some(root) = &self.local_root {
            let root = root.clone();
            let file = root.join(path);
            return tokio::task::spawn_blocking(move || create_durably(&file, &bytes, &root))
                .await
                .map_err(|e| StorageError::Task(e.to_string()))?;
        }
        let p = ObjectPath::from(path);
        let opts = PutOptions::from(PutMode::Create);
        match self.store.put_opts(&p, PutPayload::from(bytes), opts).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
            Err(e) => Err(store_err(path)(e)),
        }
    }

    /// Stores a decoded batch once: if its marker exists, nothing is written
    /// ([`Stored::Duplicate`]); otherwise every event file is written durably, then the
    /// marker, created only if absent: of concurrent writers of one batch (two ingest
    /// processes taking the same retried batch), one creates the marker and answers
    /// [`Stored::New`], the others [`Stored::Duplicate`].
    pub async fn store_batch(&self, batch: Arc<DecodedBatch>) -> Result<Stored, StorageError> {
        self.store_batch_clocked(batch, Vec::new()).await
    }

    /// [`Storage::store_batch`], with records whose board clock was implausible filed
    /// under an estimate ([`encode_batch_files_clocked`]).
    pub async fn store_batch_clocked(
        &self,
        batch: Arc<DecodedBatch>,
        fixes: Vec<Option<ClockFix>>,
    ) -> Result<Stored, StorageError> {
        if self.exists(&layout::marker(&batch.id)).await? {
            return Ok(Stored::Duplicate);
        }
        let encoded =
            tokio::task::spawn_blocking(move || encode_batch_files_clocked(&batch, &fixes))
                .await
                .map_err(|e| StorageError::Task(e.to_string()))??;
        self.write_encoded(encoded).await
    }

    /// Writes already encoded files and windows, then creates their marker (the commit
    /// point): [`Stored::Duplicate`] when another writer's marker got there first.
    pub async fn write_encoded(&self, encoded: EncodedFiles) -> Result<Stored, StorageError> {
        for (path, bytes) in encoded.files.into_iter().chain(encoded.windows) {
            self.put_durable(&path, Bytes::from(bytes)).await?;
        }
        let marker_path = layout::marker(&encoded.marker.batch_id);
        let json = serde_json::to_vec_pretty(&encoded.marker).expect("a marker serializes");
        Ok(
            if self.create_durable(&marker_path, Bytes::from(json)).await? {
                Stored::New
            } else {
                Stored::Duplicate
            },
        )
    }
}

/// Creates `dir` and its missing ancestors, fsyncing the parent of each new one: a new
/// directory's entry is durable only once its parent is synced, and `fsync_up_to` stops at
/// the root, so a power cut could otherwise take a new store away with every batch
/// acknowledged in it.
fn create_dir_durably(dir: &std::path::Path) -> Result<(), StorageError> {
    let io = |p: &std::path::Path| {
        let path = p.to_owned();
        move |source| StorageError::Io { path, source }
    };
    let mut missing = Vec::new();
    let mut cur = Some(dir);
    while let Some(d) = cur.filter(|d| !d.as_os_str().is_empty() && !d.exists()) {
        missing.push(d.to_owned());
        cur = d.parent();
    }
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    for d in missing.iter().rev() {
        if let Some(parent) = d.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::File::open(parent)
                .and_then(|f| f.sync_all())
                .map_err(io(parent))?;
        }
    }
    Ok(())
}

/// Writes `bytes` to `file` (under `root`) so that the name never points at data that is
/// not on disk: a staging file `{file}#{n}` (a name object_store's listing skips) is
/// written and fsynced, then renamed into place, then the directories up to `root` are
/// fsynced. Renaming first and syncing after (object_store's own `put`) is not enough: a
/// directory fsync by a concurrent write can make the new name durable before its data,
/// and after a power cut the name exists with no content — for a marker, a batch the
/// dedupe check would take as stored.
fn write_durably(
    file: &std::path::Path,
    bytes: &[u8],
    root: &std::path::Path,
) -> Result<(), StorageError> {
    let staging = stage(file, bytes)?;
    if let Err(e) = std::fs::rename(&staging, file) {
        let _ = std::fs::remove_file(&staging);
        return Err(StorageError::Io {
            path: file.to_owned(),
            source: e,
        });
    }
    fsync_up_to(file, root)
}

/// [`write_durably`] if `file` does not exist yet (`Ok(false)` if it does, untouched): the
/// staged file is hard-linked to the name instead of renamed over it, which fails
/// atomically on an existing name, whichever process made it.
fn create_durably(
    file: &std::path::Path,
    bytes: &[u8],
    root: &std::path::Path,
) -> Result<bool, StorageError> {
    let staging = stage(file, bytes)?;
    let linked = match std::fs::hard_link(&staging, file) {
        // A filesystem without hard links (FUSE layers, FAT …): within this process a lock
        // keeps check-then-rename atomic; several processes need hard links (module doc).
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::Unsupported | std::io::ErrorKind::PermissionDenied
            ) =>
        {
            static NO_LINK: std::sync::Mutex<()> = std::sync::Mutex::new(());
            let _one = NO_LINK.lock().unwrap_or_else(|p| p.into_inner());
            if file.exists() {
                Err(std::io::Error::from(std::io::ErrorKind::AlreadyExists))
            } else {
                std::fs::rename(&staging, file)
            }
        }
        other => other,
    };
    let _ = std::fs::remove_file(&staging);
    match linked {
        Ok(()) => fsync_up_to(file, root).map(|()| true),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            // Synced as well: the existing name may be another writer's, not yet synced.
            fsync_up_to(file, root).map(|()| false)
        }
        Err(source) => Err(StorageError::Io {
            path: file.to_owned(),
            source,
        }),
    }
}

/// Writes `bytes` to a new fsynced staging file next to `file` (`{file}#{pid}{n}`, a name
/// object_store's listing skips), creating the directories durably, and returns its path.
fn stage(file: &std::path::Path, bytes: &[u8]) -> Result<PathBuf, StorageError> {
    use std::io::Write;
    static STAGING: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let io = |p: &std::path::Path| {
        let path = p.to_owned();
        move |source| StorageError::Io { path, source }
    };
    if let Some(dir) = file.parent() {
        create_dir_durably(dir)?;
    }
    let (mut staged, staging) = loop {
        let n = STAGING.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut name = file.as_os_str().to_owned();
        name.push(format!("#{}{n}", std::process::id()));
        let staging = PathBuf::from(name);
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&staging)
        {
            Ok(f) => break (f, staging),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(io(&staging)(e)),
        }
    };
    if let Err(e) = staged.write_all(bytes).and_then(|()| staged.sync_all()) {
        let _ = std::fs::remove_file(&staging);
        return Err(io(file)(e));
    }
    Ok(staging)
}

/// fsyncs `file`, then each directory from its parent up to and including `root`.
fn fsync_up_to(file: &std::path::Path, root: &std::path::Path) -> Result<(), StorageError> {
    let sync = |p: &std::path::Path| {
        std::fs::File::open(p)
            .and_then(|f| f.sync_all())
            .map_err(|source| StorageError::Io {
                path: p.to_owned(),
                source,
            })
    };
    sync(file)?;
    let mut dir = file.parent();
    while let Some(d) = dir {
        sync(d)?;
        if d == root {
            break;
        }
        dir = d.parent();
    }
    Ok(())
}
