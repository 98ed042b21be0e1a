//! Real-time scheduling for the threads that carry deadlines.
//!
//! The inference workers and the deadline timer ask the kernel for `SCHED_FIFO` at the
//! configured priority (`scheduler.realtime_priority`). Under the normal scheduler, on a
//! two-core board shared with the broker and the sensor traffic, a runnable worker can wait
//! several milliseconds for a core, and events expire in the queue (`expired_in_queue`).
//! A FIFO thread preempts every normal thread the
//! moment its event is queued. They only ever block (on futexes: [`super::handoff`]) or run one short
//! inference, and the kernel's RT throttling (`sched_rt_runtime_us`) keeps 5 % for everyone
//! else, so a FIFO worker cannot lock up the board.
//!
//! Needs `CAP_SYS_NICE` or an `RLIMIT_RTPRIO` at least the priority (the systemd unit sets
//! `LimitRTPRIO=`). When the kernel refuses, the thread keeps the normal scheduler, reflexd
//! logs it once and serves; `reflexd_realtime_threads` shows how many threads got FIFO.
#![allow(unsafe_code)]

/// Highest priority accepted in the configuration (the kernel's SCHED_FIFO range is 1..=99;
/// above 50 would compete with kernel threads such as interrupt handlers).
pub const MAX_PRIORITY: u8 = 50;

/// Moves the calling thread to `SCHED_FIFO` at `priority`; `0` leaves it alone.
pub fn enter_fifo(priority: u8) -> std::io::Result<()> {
    if priority == 0 {
        return Ok(());
    }
    set_fifo(priority)
}

#[cfg(target_os = "linux")]
fn set_fifo(priority: u8) -> std::io::Result<()> {
    let param = libc::sched_param {
        sched_priority: i32::from(priority),
    };
    // SAFETY: `param` is an initialised sched_param living across the call; on Linux, pid 0
    // names the calling thread, so this changes no other thread or process.
    let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
fn set_fifo(_priority: u8) -> std::io::Result<()> {
    Err(std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        "SCHED_FIFO per thread is only wired up on linux",
    ))
}

/// Moves the calling thread to `SCHED_IDLE`: it runs only when no other thread wants the
/// core (background checks that must not delay serving). Needs no privilege.
#[cfg(target_os = "linux")]
pub fn enter_idle() -> std::io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: as in `set_fifo`: an initialised sched_param, pid 0 = the calling thread.
    let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// `SCHED_IDLE` is only wired up on Linux.
#[cfg(not(target_os = "linux"))]
pub fn enter_idle() -> std::io::Result<()> {
    Err(std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        "SCHED_IDLE per thread is only wired up on linux",
    ))
}

/// The calling thread's scheduling policy is `SCHED_FIFO`.
#[cfg(target_os = "linux")]
pub fn current_is_fifo() -> bool {
    // SAFETY: no arguments besides pid 0 (the calling thread); reads only.
    unsafe { libc::sched_getscheduler(0) == libc::SCHED_FIFO }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priority_zero_leaves_the_thread_on_the_normal_scheduler() {
        std::thread::spawn(|| {
            enter_fifo(0).unwrap();
            assert!(!current_is_fifo());
        })
        .join()
        .unwrap();
    }

    #[test]
    fn a_granted_request_makes_only_the_calling_thread_fifo() {
        let granted = std::thread::spawn(|| match enter_fifo(5) {
            Ok(()) => {
                assert!(current_is_fifo());
                true
            }
            // Without CAP_SYS_NICE or RLIMIT_RTPRIO the kernel refuses (EPERM; a sandbox may
            // say otherwise), and the thread must be left as it was.
            Err(e) => {
                assert!(!current_is_fifo(), "refused ({e}) but FIFO anyway");
                false
            }
        })
        .join()
        .unwrap();
        // The thread that asked changed; this one did not, granted or not.
        assert!(!current_is_fifo(), "granted={granted}");
    }
}
