//! The journal beside the pipeline: opened (or moved aside, or left to open once there is
//! room) before anything can be acked, its group-commit appender, the dedupe seeded from
//! its last records, and the uploader's settings.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use reflex_journal::store::{Appender, GroupCommit, Journal, SalvageFailure, Salvaged};

use crate::config::{Config, JournalConfig};
use crate::ops::metrics::Metrics;
use crate::pipeline::admit::Admitter;
use crate::pipeline::types::RecorderMsg;

/// Fixes glibc's mmap threshold at the journal's segment size, so that sled's io buffers
/// never sit in a malloc arena.
///
/// sled allocates each io buffer (one segment) afresh and frees it late, through
/// crossbeam-epoch. glibc's threshold is dynamic: the first buffer is mmapped, its free
/// raises the threshold above it, and every later buffer then comes from an arena, where
/// buffers freed late keep the arena's pages resident (reflexd's RSS at 5k events/s with
/// the journal grew from ~25 to 55–80 MiB; benches/README). A fixed threshold keeps every
/// allocation of a segment or more mmapped, returned to the kernel when freed; smaller
/// ones are served as before. The cost falls on a model whose tensors reach the segment
/// size: those are mmapped on every run too, which the start-up calibration measures.
fn pin_mmap_threshold(bytes: usize) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
        // SAFETY: mallopt only sets a parameter of the allocator; any value is accepted
        // or refused (returning 0), and it may be called at any time.
        #[allow(unsafe_code)]
        let ok = unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, value) };
        if ok == 0 {
            tracing::warn!(bytes, "glibc refused the mmap threshold");
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = bytes;
}

/// Opens the journal; one that cannot be opened is moved aside (counted, logged) and a
/// fresh one started. One that cannot be opened for lack of space is returned unopened
/// (logged): reflexd serves, QoS 1 events stay unacked, and the appender opens it once
/// there is room (`Appender::start_reopening`). Other failures (permissions, a lock held
/// by another reflexd) stop the start with the reason.
pub fn open_journal(
    jc: &JournalConfig,
    metrics: &Metrics,
) -> anyhow::Result<Arc<reflex_journal::store::Journal>> {
    use reflex_journal::store::{Durability, FullPolicy, Journal, Quota, StoreConfig};
    let mut sc = StoreConfig::new(&jc.dir);
    sc.cache_capacity = jc.cache_mib << 20;
    sc.segment_size = (jc.segment_kib << 10) as usize;
    pin_mmap_threshold(reflex_journal::store::segment_size_for(
        &jc.dir,
        sc.segment_size,
    ));
    sc.durability = match jc.durability {
        crate::config::JournalDurability::Fsync => Durability::Fsync,
        crate::config::JournalDurability::Flush => Durability::Flush,
    };
    sc.quota = Quota {
        quota_bytes: jc.quota_mib << 20,
        min_free_bytes: jc.min_free_mib << 20,
        policy: match jc.when_full {
            crate::config::WhenFull::DropOldest => FullPolicy::DropOldest,
            crate::config::WhenFull::Backpressure => FullPolicy::Backpressure,
        },
        ..Quota::default()
    };
    sc.keep_uploaded = jc.keep_uploaded;
    sc.dead_letter_max_records = jc.dead_letter_max_records;
    let (journal, report, waiting) = Journal::open_or_wait(sc)
        .with_context(|| format!("opening the journal in {}", jc.dir.display()))?;
    if let Some(e) = &waiting {
        tracing::error!(
            dir = %jc.dir.display(),
            error = %e,
            "the journal has no space to open: serving without it for now (QoS 1 events stay unacked with the broker); opening it again with backoff"
        );
    }
    if let Some(moved) = &report.moved_aside {
        metrics.journal_moved_aside();
        tracing::error!(
            moved_to = %moved.path.display(),
            reason = %moved.reason,
            "the journal could not be opened: moved aside (kept, not deleted); started a fresh one"
        );
    }
    count_salvage(metrics, &report.salvaged, &report.salvage_failed);
    let journal = Arc::new(journal);
    if waiting.is_none() {
        // Reads the dead-letter range once, for its gauge.
        match journal.dead_letter_counts() {
            Ok(c) if !c.is_empty() => tracing::warn!(
                records = c.values().sum::<u64>(),
                bound = jc.dead_letter_max_records,
                "records the cloud refused are kept in the journal's dead-letter range (reflexd journal export --dead-letter)"
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "could not read the journal's dead-letter range"),
        }
    }
    metrics.attach_journal(journal.stats());
    tracing::info!(
        dir = %jc.dir.display(),
        records = journal.len(),
        last_seq = journal.last_seq(),
        "journal open"
    );
    Ok(journal)
}

/// Records at the journal's end whose commands are kept to be sent again if the broker
/// redelivers their events (at most the events unacked at a crash: the broker's in-flight
/// window plus what reflexd held, a few thousand).
const RESEND_TAIL_RECORDS: u64 = 8192;

/// Feeds the journal's dedupe marks (events whose records were deleted) and the
/// device/sequence of its last `max_records` records to the dedupe, so that an event decided
/// before a crash but not yet acked is a duplicate when redelivered, uploaded or not;
/// the last [`RESEND_TAIL_RECORDS`] also with their commands (see [`Admitter::remember`]).
pub fn seed_dedupe(
    journal: &reflex_journal::store::Journal,
    max_records: usize,
    admit: &mut Admitter,
) -> usize {
    // First what the deleted records left (every event up to each mark was decided), then
    // the records still here.
    match journal.dedupe_marks() {
        Ok(marks) => {
            for (device, seq) in marks {
                admit.remember_through(&device, seq);
            }
        }
        Err(e) => tracing::warn!(error = %e, "could not read the journal's dedupe marks"),
    }
    let last = journal.last_seq();
    let mut from = last.saturating_sub(max_records as u64) + 1;
    let mut seen = 0;
    while from <= last {
        let Ok(chunk) = journal.scan(from, 10_000, 64 << 20) else {
            break;
        };
        let Some((last_in_chunk, _)) = chunk.last() else {
            break;
        };
        from = last_in_chunk + 1;
        for (seq, bytes) in &chunk {
            if let Ok(r) = reflex_records::JournalRecord::decode(bytes) {
                let tail = *seq + RESEND_TAIL_RECORDS > last;
                admit.remember(&r.device, r.seq, tail.then_some(r.command));
                seen += 1;
            }
        }
    }
    seen
}

/// The uploader's settings from `[upload]` (reads the token file).
pub fn upload_config(
    config: &Config,
    uc: &crate::config::UploadConfig,
) -> anyhow::Result<reflex_journal::upload::UploadConfig> {
    let token = uc.read_token().context("upload.token_file")?;
    let mut c = reflex_journal::upload::UploadConfig::new(
        uc.url.trim_end_matches('/'),
        token.expose(),
        config.node.name.clone(),
    );
    c.batching = reflex_journal::upload::BatchPolicy {
        max_records: uc.batch_records,
        max_bytes: uc.batch_kib << 10,
        max_age: Duration::from_secs(uc.batch_age_s),
    };
    if uc.bandwidth_bytes_per_s > 0 {
        // A burst of one second's worth.
        c.bandwidth = Some((uc.bandwidth_bytes_per_s, uc.bandwidth_bytes_per_s));
    }
    c.window = uc
        .window
        .as_deref()
        .and_then(crate::config::parse_upload_window)
        .map(
            |(start_minute, end_minute)| reflex_journal::upload::UploadWindow {
                start_minute,
                end_minute,
            },
        );
    c.request_timeout = Duration::from_secs(uc.request_timeout_s);
    c.ca_file = uc.ca_file.clone();
    Ok(c)
}

/// The journal's group-commit appender; it tells the recorder what is durable. A journal
/// an I/O error broke (a full disk), or one that had no space to open, is reopened with
/// backoff; the recorder appends what it lost again.
pub fn start_appender(
    journal: &Arc<Journal>,
    jc: &JournalConfig,
    recorder: &flume::Sender<RecorderMsg>,
    metrics: &Arc<Metrics>,
) -> Appender {
    let tx = recorder.clone();
    let reopened_tx = recorder.clone();
    let metrics = metrics.clone();
    Appender::start_reopening(
        journal.clone(),
        GroupCommit {
            max_records: jc.group_commit_records,
            max_delay: Duration::from_millis(jc.group_commit_ms),
        },
        move |through| {
            let _ = tx.send(RecorderMsg::Durable(through));
        },
        move |r| {
            if r.moved_aside.is_some() {
                metrics.journal_moved_aside();
            }
            count_salvage(&metrics, &r.salvaged, &r.salvage_failed);
            let _ = reopened_tx.send(RecorderMsg::Reopened {
                kept_through: r.kept_through,
                lost_before: r.lost_before,
            });
        },
    )
}

/// Counts and logs what an open or reopen salvaged from journals moved aside.
fn count_salvage(metrics: &Metrics, salvaged: &[Salvaged], failed: &[SalvageFailure]) {
    for s in salvaged {
        metrics.journal_salvaged_records(s.total_records());
        tracing::warn!(
            salvaged_to = %s.path.display(),
            strategy = %s.strategy,
            records = s.records,
            batch = ?s.batch,
            dead_letters = s.dead_letters,
            dead_letters_left = s.dead_letters_left,
            "salvaged a journal that was moved aside: its records are uploaded from the live journal; the directory is kept"
        );
    }
    metrics.journal_salvage_failures(failed.len() as u64);
    for f in failed {
        tracing::error!(
            dir = %f.path.display(),
            reason = %f.reason,
            deferred = f.deferred,
            "could not salvage a journal that was moved aside: kept as it is, tried again at the next start"
        );
    }
}
