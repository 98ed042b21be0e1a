//! The hand-off between the intake thread and the real-time threads: the locks they share
//! and the wake-ups.
//!
//! The intake thread runs on the normal scheduler; the workers and the deadline timer at
//! real-time priority. They share two locks (the EDF queue, the timers). With a plain
//! mutex, an intake thread preempted inside one (by any of the machine's normal threads:
//! the broker, a neighbour) keeps a real-time worker waiting until the normal scheduler
//! gives it a core again, milliseconds later: a priority inversion, and a deadline miss
//! with no stall of the machine to explain it. [`RtMutex`] is a priority-inheriting futex
//! (`FUTEX_LOCK_PI`): a real-time thread that waits on it lends its priority to the holder
//! until the holder lets go. Uncontended, it costs what a plain mutex costs (one
//! compare-and-swap each way, no system call).
//!
//! Condition variables would bring the plain mutex back (they re-take it on wake-up), so a
//! waiter sleeps on a [`Wakeup`] instead, an event count on a plain futex: it takes a
//! ticket, looks for work under the lock, lets go of the lock and sleeps on its ticket; any
//! wake-up since the ticket was taken ends the sleep at once, so none is lost.
//!
//! Kernels built without PI futexes (`CONFIG_FUTEX_PI`), and emulators without them, get
//! a plain futex mutex instead: found once, by trying a PI lock on a private word at the
//! first lock, and said in the log. `REFLEX_PLAIN_LOCKS=1` in the environment asks for the
//! plain mutex on purpose (to measure what priority inheritance changes).
#![allow(unsafe_code)]

use std::sync::atomic::{AtomicU32, AtomicU8, Ordering};
use std::time::Duration;

use linux_futex::{Futex, PiFutex, Private, TryAgainError};

/// A mutex shared by real-time and normal threads: priority-inheriting where the kernel
/// offers it (see the module doc).
pub type RtMutex<T> = lock_api::Mutex<RawRtLock, T>;

/// The raw lock behind [`RtMutex`]: a PI futex, or a plain one where PI is not available.
pub struct RawRtLock {
    pi: RawPiLock,
    plain: parking_lot::RawMutex,
}

/// A priority-inheriting futex lock: the word is 0 when free, else its holder's thread id
/// (plus the kernel's waiters bit). Taken and released with one compare-and-swap when
/// uncontended; otherwise `FUTEX_LOCK_PI`/`FUTEX_UNLOCK_PI`, through which the kernel
/// raises the holder to its highest waiter's priority. Written here over `linux_futex`
/// rather than taken from `priority-inheriting-lock`, whose `try_lock` panics (EDEADLK)
/// when the calling thread holds the lock, where a mutex's `try_lock` answers false.
struct RawPiLock(PiFutex<Private>);

/// The kernel's part of a PI futex word: the holder's thread id.
const FUTEX_TID_MASK: u32 = 0x3fff_ffff;

thread_local! {
    static TID: u32 = {
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::syscall(libc::SYS_gettid) };
        u32::try_from(tid).expect("thread ids are positive and below 2^30")
    };
}

impl RawPiLock {
    const fn new() -> Self {
        RawPiLock(PiFutex::new(0))
    }

    fn lock(&self) {
        let tid = TID.with(|t| *t);
        if self
            .0
            .value
            .compare_exchange(0, tid, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
        {
            return;
        }
        // EAGAIN: the holder was exiting or the word changed under the kernel; again.
        while let Err(TryAgainError::TryAgain) = self.0.lock_pi() {}
    }

    fn try_lock(&self) -> bool {
        let tid = TID.with(|t| *t);
        match self
            .0
            .value
            .compare_exchange(0, tid, Ordering::Acquire, Ordering::Relaxed)
        {
            Ok(_) => true,
            // Held by this very thread: the kernel would answer EDEADLK.
            Err(word) if word & FUTEX_TID_MASK == tid => false,
            // Held by another (or just released with waiters queued): the kernel decides.
            Err(_) => self.0.trylock_pi().is_ok(),
        }
    }

    fn unlock(&self) {
        let tid = TID.with(|t| *t);
        if self
            .0
            .value
            .compare_exchange(tid, 0, Ordering::Release, Ordering::Relaxed)
            .is_err()
        {
            // Waiters are queued in the kernel: it hands the lock to the highest.
            self.0.unlock_pi();
        }
    }
}

const UNKNOWN: u8 = 0;
const PI: u8 = 1;
const PLAIN: u8 = 2;

/// Which lock every [`RawRtLock`] of the process uses, found once.
static MODE: AtomicU8 = AtomicU8::new(UNKNOWN);

/// Whether [`RtMutex`] inherits priorities in this process (decided at its first use).
pub fn priority_inheritance() -> bool {
    mode() == PI
}

fn mode() -> u8 {
    match MODE.load(Ordering::Acquire) {
        UNKNOWN => {
            let found = if std::env::var_os("REFLEX_PLAIN_LOCKS").is_some_and(|v| v == "1") {
                tracing::info!(
                    "REFLEX_PLAIN_LOCKS=1: the engine's locks do not inherit priorities"
                );
                PLAIN
            } else if pi_futex_works() {
                PI
            } else {
                tracing::warn!(
                    "this kernel has no priority-inheriting futexes (FUTEX_TRYLOCK_PI failed): \
                     the engine's locks are plain, and an intake thread preempted while holding \
                     one can delay a real-time worker"
                );
                PLAIN
            };
            // Every thread settles on the first answer stored.
            match MODE.compare_exchange(UNKNOWN, found, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => found,
                Err(first) => first,
            }
        }
        known => known,
    }
}

/// Tries the three PI operations the lock uses on a private word of its own:
/// `FUTEX_TRYLOCK_PI` and `FUTEX_LOCK_PI` on a free word (the kernel takes it: the word
/// becomes this thread's id) and `FUTEX_UNLOCK_PI` on it once held. A kernel without PI
/// futexes, or an emulator without them (qemu-user), refuses one (ENOSYS). Called
/// directly rather than through `linux_futex`, which panics on an unsupported operation.
fn pi_futex_works() -> bool {
    let word = AtomicU32::new(0);
    let futex = |op: i32| -> bool {
        // SAFETY: `word` is a valid, aligned u32 that outlives the call; the PI operations
        // read no other argument when the timeout is null.
        let r = unsafe {
            libc::syscall(
                libc::SYS_futex,
                word.as_ptr(),
                op | libc::FUTEX_PRIVATE_FLAG,
                0,
                std::ptr::null::<libc::timespec>(),
                std::ptr::null::<u32>(),
                0,
            )
        };
        r == 0
    };
    futex(libc::FUTEX_TRYLOCK_PI)
        && futex(libc::FUTEX_UNLOCK_PI)
        && word.load(Ordering::Acquire) == 0
        && futex(libc::FUTEX_LOCK_PI)
        && futex(libc::FUTEX_UNLOCK_PI)
        && word.load(Ordering::Acquire) == 0
}

// SAFETY: each call goes to the one lock the process-wide mode selects, which never
// changes once found (the first lock finds it), so every unlock reaches the lock its lock
// took; both locks are correct mutexes.
unsafe impl lock_api::RawMutex for RawRtLock {
    #[allow(clippy::declare_interior_mutable_const)]
    const INIT: RawRtLock = RawRtLock {
        pi: RawPiLock::new(),
        plain: <parking_lot::RawMutex as lock_api::RawMutex>::INIT,
    };

    type GuardMarker = lock_api::GuardNoSend;

    fn lock(&self) {
        if mode() == PI {
            self.pi.lock()
        } else {
            self.plain.lock()
        }
    }

    fn try_lock(&self) -> bool {
        if mode() == PI {
            self.pi.try_lock()
        } else {
            self.plain.try_lock()
        }
    }

    unsafe fn unlock(&self) {
        // SAFETY: the caller holds the lock, taken from the same lock (the mode is fixed).
        unsafe {
            if mode() == PI {
                self.pi.unlock()
            } else {
                self.plain.unlock()
            }
        }
    }
}

/// An event count to sleep on without a lock: [`Wakeup::ticket`], then look for work,
/// then [`Wakeup::wait`] on the ticket; a [`Wakeup::wake_one`] or [`Wakeup::wake_all`]
/// after the ticket was taken ends the wait at once (or prevents it).
pub struct Wakeup {
    seq: Futex<Private>,
    /// Threads in [`Wakeup::wait`]: a wake-up with none skips the system call.
    waiters: AtomicU32,
}

impl Default for Wakeup {
    fn default() -> Self {
        Wakeup {
            seq: Futex::new(0),
            waiters: AtomicU32::new(0),
        }
    }
}

impl Wakeup {
    /// The ticket to wait on once the work in sight is done.
    pub fn ticket(&self) -> u32 {
        self.seq.value.load(Ordering::SeqCst)
    }

    /// Sleeps until a wake-up after `ticket` was taken (at once if there was one), or
    /// `timeout`; false when the timeout ended it. May return early (a signal), so the
    /// caller looks again in a loop.
    pub fn wait(&self, ticket: u32, timeout: Duration) -> bool {
        self.waiters.fetch_add(1, Ordering::SeqCst);
        // Either the waker sees this waiter (and wakes it) or this wait sees the waker's
        // new count (and returns at once): both sides are sequentially consistent.
        let r = self.seq.wait_for(ticket, timeout);
        self.waiters.fetch_sub(1, Ordering::SeqCst);
        !matches!(r, Err(linux_futex::TimedWaitError::TimedOut))
    }

    /// Wakes one waiter (every later waiter's ticket is already stale).
    pub fn wake_one(&self) {
        self.wake(1);
    }

    /// Wakes every waiter.
    pub fn wake_all(&self) {
        self.wake(i32::MAX);
    }

    fn wake(&self, n: i32) {
        self.seq.value.fetch_add(1, Ordering::SeqCst);
        if self.waiters.load(Ordering::SeqCst) > 0 {
            self.seq.wake(n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn this_kernel_offers_priority_inheriting_futexes() {
        // The machines reflexd is built and tested on have them (Debian kernels set
        // CONFIG_FUTEX_PI); without, the engine falls back to plain locks and says so.
        assert!(pi_futex_works());
    }

    #[test]
    fn the_lock_excludes_and_hands_over_between_threads() {
        let m = Arc::new(RtMutex::new(0u64));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let m = m.clone();
                std::thread::spawn(move || {
                    for _ in 0..20_000 {
                        *m.lock() += 1;
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(*m.lock(), 80_000);
        let held = m.lock();
        assert!(m.try_lock().is_none(), "a held lock cannot be taken again");
        drop(held);
        assert!(m.try_lock().is_some());
    }

    #[test]
    fn a_wake_up_after_the_ticket_ends_the_wait_at_once() {
        let w = Wakeup::default();
        let ticket = w.ticket();
        w.wake_one();
        assert!(
            w.wait(ticket, Duration::from_secs(60)),
            "the wait ran into its timeout: the wake-up was lost"
        );
        assert_ne!(w.ticket(), ticket);
        // With no wake-up since the ticket, the wait does run into its timeout.
        assert!(!w.wait(w.ticket(), Duration::from_millis(1)));
    }

    #[test]
    fn a_sleeping_waiter_is_woken_by_another_thread() {
        let w = Arc::new(Wakeup::default());
        let flag = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (w2, flag2) = (w.clone(), flag.clone());
        let waiter = std::thread::spawn(move || {
            // Look for work, then sleep on the ticket taken before looking; count the
            // sleeps that ran into their timeout.
            let mut timed_out = 0;
            loop {
                let ticket = w2.ticket();
                if flag2.load(Ordering::SeqCst) {
                    return timed_out;
                }
                if !w2.wait(ticket, Duration::from_secs(60)) {
                    timed_out += 1;
                }
            }
        });
        flag.store(true, Ordering::SeqCst);
        w.wake_all();
        assert_eq!(waiter.join().unwrap(), 0, "a wake-up was lost");
    }
}
