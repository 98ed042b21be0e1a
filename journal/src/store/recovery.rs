//! What happens to a journal sled cannot open: the damaged directory is moved aside (never
//! deleted), its data file is copied before sled's recovery after an unclean shutdown, and a
//! sled panic while opening is caught and taken as damage.

use std::cell::Cell;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use super::{fsync_path, StoreError};

fn unix_secs() -> u64 {
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
