//! What happens to a journal sled cannot open: the damaged directory is moved aside (never
//! deleted), its data file is copied before sled's recovery after an unclean shutdown, and a
//! sled panic while opening is caught and taken as damage.

use std::cell::Cell;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::{fsync_path, StoreError};

pub(super) fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Why an open attempt failed.
pub(super) enum OpenFailure {
    /// The data is damaged: move it aside.
    Damaged(String),
    /// Anything else: report, touch nothing.
    Other(StoreError),
}

/// Copies sled's data file and config into `copy` (fsynced), before sled's recovery.
pub(super) fn copy_for_recovery(dir: &Path, copy: &Path) -> io::Result<()> {
    std::fs::create_dir(copy)?;
    for name in ["db", "conf"] {
        let from = dir.join(name);
        if from.exists() {
            std::fs::copy(&from, copy.join(name))?;
            fsync_path(&copy.join(name))?;
        }
    }
    fsync_path(copy)?;
    fsync_path(dir)
}

/// Makes the disk agree with what reads of sled's files return, before sled reads them
/// again: every byte of the data file and the blob files is read and written back in
/// place, then fsynced (with their directories).
///
/// After a failed fsync, Linux keeps the pages that failed to reach the disk in the page
/// cache, marked clean: reads return data that is not on disk and no later fsync writes
/// it. A reopen that let sled recover from those pages would report records durable that
/// a power cut then takes away, and would append after a hole in sled's log. Written back
/// and fsynced, whatever reads return is on disk (if this fsync fails too, the reopen
/// fails and is retried). Dropping the cache instead (`posix_fadvise(DONTNEED)`) would
/// rely on the kernel evicting every such page, which it does not promise for pages in
/// use, and a FUSE filesystem never sees it.
///
/// It holds sled's lock on the data file meanwhile (waiting up to `lock_wait` for a handle
/// being dropped), so no sled handle writes while bytes are written back.
pub(super) fn rewrite_in_place(dir: &Path, lock_wait: Duration) -> io::Result<()> {
    let db = match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(dir.join("db"))
    {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let give_up = Instant::now() + lock_wait;
    loop {
        match rustix::fs::flock(&db, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => break,
            Err(rustix::io::Errno::WOULDBLOCK) if Instant::now() < give_up => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(e.into()),
        }
    }
    let mut files = vec![dir.join("db")];
    let blobs = dir.join("blobs");
    if let Ok(entries) = std::fs::read_dir(&blobs) {
        for e in entries {
            files.push(e?.path());
        }
    }
    for path in &files {
        let mut f = match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        let mut buf = vec![0u8; 1 << 20];
        let mut offset = 0u64;
        loop {
            let n = f.read_at(&mut buf, offset)?;
            if n == 0 {
                break;
            }
            f.write_all_at(&buf[..n], offset)?;
            offset += n as u64;
        }
        f.flush()?;
        f.sync_all()?;
    }
    if blobs.exists() {
        fsync_path(&blobs)?;
    }
    fsync_path(dir)?;
    // The lock goes with `db` (closing it releases the flock).
    drop(db);
    Ok(())
}

/// Drops sled's handles with its panic caught: sled 0.34's log `Drop` fsyncs its file and
/// unwraps the result, so dropping a handle whose disk fails (the very case a reopen
/// follows) panics, and reflexd's panic hook would end the process.
pub(super) fn drop_sled<T>(handles: T) {
    if catch_sled_panic(move || drop(handles)).is_err() {
        tracing::warn!("sled panicked while closing a journal handle on a failing disk");
    }
}

/// A failed `sled::Config::open`: unreadable data is damage, other I/O is not.
pub(super) fn classify_open_error(dir: &Path, e: sled::Error) -> OpenFailure {
    match e {
        sled::Error::Io(io)
            if matches!(
                io.kind(),
                io::ErrorKind::InvalidData | io::ErrorKind::UnexpectedEof
            ) =>
        {
            OpenFailure::Damaged(format!("sled: {io}"))
        }
        sled::Error::Io(io) => OpenFailure::Other(StoreError::from_io(dir, "open", io)),
        sled::Error::Corruption { .. }
        | sled::Error::Unsupported(_)
        | sled::Error::ReportableBug(_) => OpenFailure::Damaged(format!("sled: {e}")),
        other => OpenFailure::Damaged(format!("sled: {other}")),
    }
}

/// Renames `dir` to `<dir>.corrupt-<unix seconds>` (with `-N` if taken) and syncs the parent.
pub(super) fn move_aside(dir: &Path) -> Result<PathBuf, StoreError> {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "journal".into());
    let stamp = unix_secs();
    let mut to = dir.with_file_name(format!("{name}.corrupt-{stamp}"));
    let mut n = 1;
    while to.exists() {
        to = dir.with_file_name(format!("{name}.corrupt-{stamp}-{n}"));
        n += 1;
    }
    std::fs::rename(dir, &to).map_err(|source| StoreError::MoveAside {
        from: dir.to_owned(),
        to: to.clone(),
        source,
    })?;
    if let Some(parent) = to.parent() {
        let _ = fsync_path(parent);
    }
    Ok(to)
}

thread_local! {
    /// True while this thread runs sled inside [`catch_sled_panic`].
    static CATCHING_SLED_PANIC: Cell<bool> = const { Cell::new(false) };
}

/// Whether a panic raised now, on the calling thread, is one the journal catches (sled
/// panicking while it opens a damaged journal, which is then moved aside). For a panic hook
/// that ends the process on every other panic, as reflexd's does: it lets this one unwind
/// to its catch.
pub fn panic_is_caught_here() -> bool {
    CATCHING_SLED_PANIC.with(Cell::get)
}

/// Runs `f` (a sled call) and catches its panic, marking the thread meanwhile so that
/// [`panic_is_caught_here`] says so.
pub(super) fn catch_sled_panic<T>(f: impl FnOnce() -> T) -> std::thread::Result<T> {
    struct Unmark;
    impl Drop for Unmark {
        fn drop(&mut self) {
            CATCHING_SLED_PANIC.with(|c| c.set(false));
        }
    }
    CATCHING_SLED_PANIC.with(|c| c.set(true));
    let _unmark = Unmark;
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_inside_a_caught_sled_call_is_told_apart_from_any_other() {
        assert!(!panic_is_caught_here());
        let inside = catch_sled_panic(|| {
            let seen = panic_is_caught_here();
            if seen {
                panic!("sled says the file is damaged");
            }
            seen
        });
        // It panicked (so it was marked), the panic was caught, and the mark is gone.
        assert!(inside.is_err());
        assert!(!panic_is_caught_here());
        assert_eq!(catch_sled_panic(panic_is_caught_here).ok(), Some(true));
        assert!(!panic_is_caught_here());
    }
}
