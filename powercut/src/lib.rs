//! A power-cut harness for tests: a FUSE filesystem (written with `fuser`, modelled on
//! LazyFS) whose writes stay in memory until `fsync`, whose simulated power cut drops
//! everything not synced, and which injects `fsync` errors.
//!
//! `kill -9` leaves the page cache intact, so it never tests fsync ordering. Here a test
//! mounts a [`PowerCutMount`] (an empty in-memory filesystem), points the program under
//! test at it, and at any instant calls [`PowerCutMount::power_off`]: from then on
//! everything not durable is gone and every operation on the mount fails with `EIO`. The
//! test then kills (or drops) whatever used the mount and calls
//! [`PowerCutMount::power_on`], which unmounts and mounts again over the durable state
//! (fresh kernel caches). [`PowerCutMount::cut`] does both when nothing uses the mount.
//!
//! What is durable, what a cut drops, and what an injected fsync error does are the
//! contract of [`model`] (its module doc): data by file fsync, namespace by directory
//! fsync, failed fsyncs keep data readable but never persist it (Linux's behaviour after a
//! failed writeback).
//!
//! # Mounting
//!
//! Needs root and `/dev/fuse` (no libfuse, no `fusermount`: `fuser` mounts with
//! `mount(2)` directly as root). A mount that cannot be made fails loudly. The mount is
//! removed when the [`PowerCutMount`] drops, also when a test panics (lazily, with
//! `MNT_DETACH`, if something still holds files open), so no stale mount is left behind
//! by a test that ends. The filesystem serves requests on one thread.

pub mod model;
pub mod seed;

mod fuse;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use fuser::{BackgroundSession, Config, MountOption};

pub use model::{CutReport, FsError, FsyncFault, Model, Stats};

/// How long [`PowerCutMount::power_on`] waits for the old mount to stop being busy
/// (a killed process's files are released asynchronously).
const UNMOUNT_WAIT: Duration = Duration::from_secs(10);

/// The harness's errors.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// The FUSE mount could not be made.
    #[error(
        "could not mount the power-cut filesystem at {path}: {source} (needs root and /dev/fuse)"
    )]
    Mount {
        /// The mount point.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The mount was still busy (a file open on it) when it had to be restarted.
    #[error("the power-cut mount at {path} is still busy after {waited:?}: something still has files open on it; detached it lazily")]
    Busy {
        /// The mount point.
        path: PathBuf,
        /// How long it waited.
        waited: Duration,
    },
    /// Unmounting failed for another reason.
    #[error("could not unmount the power-cut filesystem at {path}: {source}")]
    Unmount {
        /// The mount point.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
}

/// A mounted power-cut filesystem (see the crate doc).
pub struct PowerCutMount {
    model: Arc<Mutex<Model>>,
    path: PathBuf,
    session: Option<BackgroundSession>,
}

impl PowerCutMount {
    /// Mounts an empty filesystem at `path` (an existing empty directory).
    pub fn mount(path: &Path) -> Result<PowerCutMount, HarnessError> {
        let mut m = PowerCutMount {
            model: Arc::new(Mutex::new(Model::new())),
            path: path.to_owned(),
            session: None,
        };
        m.start()?;
        Ok(m)
    }

    fn start(&mut self) -> Result<(), HarnessError> {
        let mut cfg = Config::default();
        cfg.mount_options = vec![
            MountOption::FSName("powercut".into()),
            MountOption::Subtype("powercut".into()),
        ];
        let fs = fuse::PowerCutFs {
            model: self.model.clone(),
        };
        let session =
            fuser::spawn_mount(fs, &self.path, &cfg).map_err(|source| HarnessError::Mount {
                path: self.path.clone(),
                source,
            })?;
        self.session = Some(session);
        Ok(())
    }

    /// Unmounts, waiting up to `wait` for the mount to stop being busy; then detaches it
    /// lazily and reports [`HarnessError::Busy`].
    fn stop(&mut self, wait: Duration) -> Result<(), HarnessError> {
        let Some(session) = self.session.take() else {
            return Ok(());
        };
        let started = Instant::now();
        let mut pause = Duration::from_millis(1);
        loop {
            match umount2(&self.path, 0) {
                Ok(()) => break,
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) && started.elapsed() < wait => {
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(50));
                }
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                    let _ = umount2(&self.path, libc::MNT_DETACH);
                    // Its thread serves the remaining open files until they close.
                    drop(session);
                    return Err(HarnessError::Busy {
                        path: self.path.clone(),
                        waited: started.elapsed(),
                    });
                }
                Err(e) => {
                    let _ = umount2(&self.path, libc::MNT_DETACH);
                    drop(session);
                    return Err(HarnessError::Unmount {
                        path: self.path.clone(),
                        source: e,
                    });
                }
            }
        }
        // Unmounted: the session's thread ends as the kernel closes the connection.
        let _ = session.join();
        Ok(())
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn model(&self) -> MutexGuard<'_, Model> {
        self.model.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The power cut: drops everything not durable and fails every operation from now on,
    /// until [`PowerCutMount::power_on`].
    pub fn power_off(&self) -> CutReport {
        self.model().power_off()
    }

    /// Restarts the mount over the durable state: unmounts (every process that used it
    /// must have ended or closed its files), then mounts again.
    pub fn power_on(&mut self) -> Result<(), HarnessError> {
        self.stop(UNMOUNT_WAIT)?;
        self.model().power_on();
        self.start()
    }

    /// [`PowerCutMount::power_off`] then [`PowerCutMount::power_on`], for when nothing
    /// uses the mount.
    pub fn cut(&mut self) -> Result<CutReport, HarnessError> {
        let r = self.power_off();
        self.power_on()?;
        Ok(r)
    }

    /// Makes matching fsyncs fail with `EIO` (see [`model`]).
    pub fn inject(&self, fault: FsyncFault) {
        self.model().inject(fault);
    }

    /// Removes every injected fault.
    pub fn clear_faults(&self) {
        self.model().clear_faults();
    }

    /// Counters.
    pub fn stats(&self) -> Stats {
        self.model().stats()
    }

    /// Unmounts now (instead of at drop), reporting a failure.
    pub fn unmount(mut self) -> Result<(), HarnessError> {
        self.stop(UNMOUNT_WAIT)
    }
}

/// umount2(2) of `path` with `flags`.
fn umount2(path: &Path, flags: libc::c_int) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: `c` is a valid NUL-terminated path that outlives the call.
    if unsafe { libc::umount2(c.as_ptr(), flags) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

impl Drop for PowerCutMount {
    fn drop(&mut self) {
        if let Err(e) = self.stop(Duration::from_secs(2)) {
            eprintln!("power-cut harness: {e}");
        }
    }
}
