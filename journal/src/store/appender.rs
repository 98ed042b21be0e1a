//! Group commit: the [`Appender`] and its flusher thread, which syncs pending appends per
//! [`GroupCommit`], reports the durable watermark, and reopens a broken journal with
//! [`ReopenBackoff`].

use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::record::JournalRecord;

use super::{Journal, Reopened, StoreError};

/// When to group-commit: after `max_records` appends or `max_delay` after the oldest
/// pending append, whichever comes first (pure).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupCommit {
    /// Flush once this many appends are pending.
    pub max_records: usize,
    /// Flush once the oldest pending append is this old.
    pub max_delay: Duration,
}

impl Default for GroupCommit {
    fn default() -> Self {
        GroupCommit {
            max_records: 256,
            max_delay: Duration::from_millis(5),
        }
    }
}

/// What the flusher should do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushDecision {
    /// Nothing pending: sleep until an append.
    Idle,
    /// Flush now.
    FlushNow,
    /// Wait this long (or until more appends), then ask again.
    Wait(Duration),
}

impl GroupCommit {
    /// The decision with `pending` appends, the oldest of them `oldest_age` old.
    pub fn decide(&self, pending: usize, oldest_age: Duration) -> FlushDecision {
        if pending == 0 {
            FlushDecision::Idle
        } else if pending >= self.max_records.max(1) || oldest_age >= self.max_delay {
            FlushDecision::FlushNow
        } else {
            FlushDecision::Wait(self.max_delay - oldest_age)
        }
    }
}

struct Pending {
    count: usize,
    oldest: Option<Instant>,
    last_seq: u64,
    stop: bool,
    failed: Option<String>,
    reopen: ReopenBackoff,
    last_reopen_log: Option<Instant>,
}

/// When the [`Appender`] tries to reopen a broken journal (pure; times are passed in).
///
/// A reopen is tried at once after the first failure; then each further reopen or failed
/// attempt doubles the wait (from [`ReopenBackoff::MIN`] to [`ReopenBackoff::MAX`]), so a
/// filesystem that stays full costs a reopen (one scan of the journal) every few seconds,
/// not a loop. Only a group commit that made records durable resets it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReopenBackoff {
    wait: Duration,
    not_before: Option<Instant>,
}

impl Default for ReopenBackoff {
    fn default() -> Self {
        ReopenBackoff {
            wait: ReopenBackoff::MIN,
            not_before: None,
        }
    }
}

impl ReopenBackoff {
    /// The first wait after a reopen.
    pub const MIN: Duration = Duration::from_millis(100);
    /// The longest wait.
    pub const MAX: Duration = Duration::from_secs(5);

    /// How long to wait before the next try at `now` (zero: try now).
    pub fn wait_at(&self, now: Instant) -> Duration {
        self.not_before
            .map_or(Duration::ZERO, |t| t.saturating_duration_since(now))
    }

    /// A reopen was tried at `now` (successful or not): the next waits longer.
    pub fn tried(&mut self, now: Instant) {
        self.not_before = Some(now + self.wait);
        self.wait = (self.wait * 2).min(ReopenBackoff::MAX);
    }

    /// Records became durable: the journal works again.
    pub fn progressed(&mut self) {
        *self = ReopenBackoff::default();
    }
}

/// The [`Appender::start_reopening`] callback.
type OnReopen = Box<dyn Fn(&Reopened) + Send + Sync>;

struct Shared {
    journal: Arc<Journal>,
    policy: GroupCommit,
    pending: Mutex<Pending>,
    wake: Condvar,
    durable: Mutex<u64>,
    durable_cv: Condvar,
    on_durable: Box<dyn Fn(u64) + Send + Sync>,
    /// Set: reopen a broken journal with backoff, and report it here first.
    on_reopen: Option<OnReopen>,
}

/// Group commit: appends go straight into sled; a flusher thread makes them durable per
/// [`GroupCommit`] and reports the highest durable sequence. Everything at or below
/// [`Appender::durable_through`] survives a crash (see the `store` module doc for what a
/// power cut keeps); the daemon sends an event's PUBACK only once its sequence is durable.
pub struct Appender {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Appender {
    /// Starts the flusher. `on_durable(seq)` is called from the flusher thread after each
    /// group commit with the new durable watermark (keep it short: e.g. send to a channel).
    pub fn start(
        journal: Arc<Journal>,
        policy: GroupCommit,
        on_durable: impl Fn(u64) + Send + Sync + 'static,
    ) -> Appender {
        Appender::spawn(journal, policy, Box::new(on_durable), None)
    }

    /// Like [`Appender::start`], and when an I/O error breaks the journal (or it had no
    /// space to open), reopens it with backoff ([`ReopenBackoff`]), counted in
    /// [`JournalStats::reopens`] and `reopen_failures`, logged (failures at most once a
    /// minute). After a reopen, `on_reopen` is called before any later `on_durable`:
    /// appends numbered `kept_through + 1 .. lost_before` are gone and must be appended
    /// again by the caller if they matter; everything through `kept_through` is durable.
    pub fn start_reopening(
        journal: Arc<Journal>,
        policy: GroupCommit,
        on_durable: impl Fn(u64) + Send + Sync + 'static,
        on_reopen: impl Fn(&Reopened) + Send + Sync + 'static,
    ) -> Appender {
        Appender::spawn(
            journal,
            policy,
            Box::new(on_durable),
            Some(Box::new(on_reopen)),
        )
    }

    fn spawn(
        journal: Arc<Journal>,
        policy: GroupCommit,
        on_durable: Box<dyn Fn(u64) + Send + Sync>,
        on_reopen: Option<OnReopen>,
    ) -> Appender {
        let durable = journal.last_seq();
        let shared = Arc::new(Shared {
            journal,
            policy,
            pending: Mutex::new(Pending {
                count: 0,
                oldest: None,
                last_seq: durable,
                stop: false,
                failed: None,
                reopen: ReopenBackoff::default(),
                last_reopen_log: None,
            }),
            wake: Condvar::new(),
            durable: Mutex::new(durable),
            durable_cv: Condvar::new(),
            on_durable,
            on_reopen,
        });
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("journal-flush".into())
            .spawn(move || flusher(&s))
            .expect("spawn journal flusher");
        Appender {
            shared,
            thread: Some(thread),
        }
    }

    /// The journal.
    pub fn journal(&self) -> &Arc<Journal> {
        &self.shared.journal
    }

    /// Appends an encoded value; returns its sequence. Durable later (see
    /// [`Appender::durable_through`]).
    pub fn append_encoded(&self, value: &[u8]) -> Result<u64, StoreError> {
        if self.shared.pending.lock().expect("pending lock").stop {
            return Err(StoreError::Closed);
        }
        let seq = match self.shared.journal.append(value) {
            Ok(seq) => seq,
            Err(e) => {
                if self.shared.journal.needs_reopen() {
                    self.shared.wake.notify_one();
                }
                return Err(e);
            }
        };
        let mut p = self.shared.pending.lock().expect("pending lock");
        p.count += 1;
        p.last_seq = p.last_seq.max(seq);
        let first = p.oldest.is_none();
        if first {
            p.oldest = Some(Instant::now());
        }
        if first || p.count >= self.shared.policy.max_records {
            self.shared.wake.notify_one();
        }
        Ok(seq)
    }

    /// Encodes and appends a record.
    pub fn append(&self, record: &JournalRecord) -> Result<u64, StoreError> {
        self.append_encoded(&record.encode())
    }

    /// Every sequence at or below this is durable.
    pub fn durable_through(&self) -> u64 {
        *self.shared.durable.lock().expect("durable lock")
    }

    /// Waits until `seq` is durable or `timeout` passes; true if durable.
    pub fn wait_durable(&self, seq: u64, timeout: Duration) -> bool {
        let d = self.shared.durable.lock().expect("durable lock");
        let (d, _) = self
            .shared
            .durable_cv
            .wait_timeout_while(d, timeout, |d| *d < seq)
            .expect("durable lock");
        *d >= seq
    }

    /// The last group commit's error, if it failed (cleared by the next success).
    pub fn last_error(&self) -> Option<String> {
        self.shared
            .pending
            .lock()
            .expect("pending lock")
            .failed
            .clone()
    }

    /// Stops the flusher after a last group commit; returns its error if that failed.
    pub fn close(mut self) -> Result<(), StoreError> {
        self.stop_thread();
        self.shared.journal.sync()
    }

    fn stop_thread(&mut self) {
        self.shared.pending.lock().expect("pending lock").stop = true;
        self.shared.wake.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Appender {
    fn drop(&mut self) {
        self.stop_thread();
    }
}

/// The flusher thread: reopens a broken journal (with [`Appender::start_reopening`]) and
/// group-commits per [`GroupCommit`] until stopped.
fn flusher(s: &Shared) {
    let mut p = s.pending.lock().expect("pending lock");
    loop {
        if let Some(on_reopen) = s.on_reopen.as_ref().filter(|_| !p.stop) {
            if s.journal.needs_reopen() {
                let wait = p.reopen.wait_at(Instant::now());
                p = if wait.is_zero() {
                    reopen(s, p, on_reopen)
                } else {
                    s.wake.wait_timeout(p, wait).expect("pending lock").0
                };
                continue;
            }
        }
        let age = p.oldest.map_or(Duration::ZERO, |t| t.elapsed());
        let decision = s.policy.decide(p.count, age);
        match decision {
            FlushDecision::Idle if p.stop => return,
            FlushDecision::Idle => p = s.wake.wait(p).expect("pending lock"),
            FlushDecision::Wait(_) if p.stop => {
                p = commit(s, p);
            }
            FlushDecision::Wait(d) => p = s.wake.wait_timeout(p, d).expect("pending lock").0,
            FlushDecision::FlushNow => p = commit(s, p),
        }
    }
}

/// One reopen attempt of the broken journal (the backoff allowed it). On success, pending
/// appends are settled (recovered or lost), `on_reopen` is told, then the durable watermark
/// moves; on failure the error is counted and logged at most once a minute.
fn reopen<'a>(
    s: &'a Shared,
    mut p: MutexGuard<'a, Pending>,
    on_reopen: &OnReopen,
) -> MutexGuard<'a, Pending> {
    p.reopen.tried(Instant::now());
    drop(p);
    let result = s.journal.reopen();
    let mut p = s.pending.lock().expect("pending lock");
    match result {
        Ok(r) => {
            s.journal.stats.reopens.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                kept_through = r.kept_through,
                lost = r.lost_before.saturating_sub(r.kept_through + 1),
                moved_aside = ?r.moved_aside.as_ref().map(|m| m.path.display().to_string()),
                "journal reopened after an i/o error; appending again"
            );
            // Everything pending was either recovered (durable now) or lost.
            p.count = 0;
            p.oldest = None;
            p.failed = None;
            p.last_seq = p.last_seq.max(r.kept_through);
            drop(p);
            on_reopen(&r);
            {
                let mut d = s.durable.lock().expect("durable lock");
                *d = (*d).max(r.kept_through);
            }
            s.durable_cv.notify_all();
            if let Err(e) = s.journal.check_quota() {
                tracing::warn!(error = %e, "journal quota check failed");
            }
            s.pending.lock().expect("pending lock")
        }
        Err(e) => {
            s.journal
                .stats
                .reopen_failures
                .fetch_add(1, Ordering::Relaxed);
            if p.last_reopen_log
                .is_none_or(|t| t.elapsed() >= Duration::from_secs(60))
            {
                tracing::error!(error = %e, retry_in = ?p.reopen.wait_at(Instant::now()), "journal could not be reopened; retrying with backoff (events stay unacked)");
                p.last_reopen_log = Some(Instant::now());
            }
            p
        }
    }
}

/// One group commit of what is pending: sync, then report the durable watermark (the
/// callback first) and check the quota; a failure keeps the appends pending.
fn commit<'a>(s: &'a Shared, mut p: MutexGuard<'a, Pending>) -> MutexGuard<'a, Pending> {
    let through = p.last_seq;
    let count = p.count;
    p.count = 0;
    p.oldest = None;
    drop(p);
    let result = s.journal.sync();
    let mut p = s.pending.lock().expect("pending lock");
    match result {
        Ok(()) => {
            p.failed = None;
            if count > 0 {
                p.reopen.progressed();
            }
            drop(p);
            // The callback first: once a waiter sees `through` durable, the callback has
            // seen it too.
            (s.on_durable)(through);
            {
                let mut d = s.durable.lock().expect("durable lock");
                *d = (*d).max(through);
            }
            s.journal
                .stats
                .durable_through
                .fetch_max(through, Ordering::Relaxed);
            s.durable_cv.notify_all();
            if let Err(e) = s.journal.check_quota() {
                tracing::warn!(error = %e, "journal quota check failed");
            }
            s.pending.lock().expect("pending lock")
        }
        Err(e) => {
            tracing::error!(error = %e, "journal group commit failed");
            p.failed = Some(e.to_string());
            // Keep them pending; retry after the delay (or at stop).
            p.count += count;
            if p.oldest.is_none() {
                p.oldest = Some(Instant::now());
            }
            if p.stop {
                // Do not spin at shutdown on a dead disk.
                p.count = 0;
                p.oldest = None;
            }
            p
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reopen_is_tried_at_once_then_backs_off_and_durable_records_reset_it() {
        let t0 = Instant::now();
        let mut b = ReopenBackoff::default();
        assert_eq!(b.wait_at(t0), Duration::ZERO, "the first try is immediate");
        let mut waits = Vec::new();
        let mut now = t0;
        for _ in 0..8 {
            b.tried(now);
            let w = b.wait_at(now);
            waits.push(w.as_millis());
            now += w;
            assert_eq!(b.wait_at(now), Duration::ZERO);
        }
        assert_eq!(waits, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        b.progressed();
        assert_eq!(b.wait_at(now), Duration::ZERO);
        b.tried(now);
        assert_eq!(b.wait_at(now), ReopenBackoff::MIN);
    }

    #[test]
    fn group_commit_waits_for_the_count_or_the_delay_whichever_first() {
        let g = GroupCommit {
            max_records: 4,
            max_delay: Duration::from_millis(10),
        };
        assert_eq!(g.decide(0, Duration::from_secs(9)), FlushDecision::Idle);
        assert_eq!(
            g.decide(1, Duration::ZERO),
            FlushDecision::Wait(Duration::from_millis(10))
        );
        assert_eq!(
            g.decide(3, Duration::from_millis(7)),
            FlushDecision::Wait(Duration::from_millis(3))
        );
        assert_eq!(g.decide(4, Duration::ZERO), FlushDecision::FlushNow);
        assert_eq!(
            g.decide(1, Duration::from_millis(10)),
            FlushDecision::FlushNow
        );
    }

    #[test]
    fn group_commit_on_a_fake_clock_flushes_every_n_under_load_and_after_t_when_quiet() {
        // A fake clock in µs; appends at given instants; the flusher asks the policy after
        // each append and whenever its wait ends.
        let g = GroupCommit {
            max_records: 3,
            max_delay: Duration::from_micros(1000),
        };
        let appends = [0u64, 10, 20, 30, 40, 50, 60, 5000];
        let mut flushes = Vec::new();
        let mut pending = 0usize;
        let mut oldest = 0u64;
        let mut wake_at: Option<u64> = None;
        let mut events: Vec<u64> = appends.to_vec();
        events.push(10_000);
        for &now in &events {
            if let Some(w) = wake_at {
                if w <= now {
                    if let FlushDecision::FlushNow =
                        g.decide(pending, Duration::from_micros(w - oldest))
                    {
                        flushes.push(w);
                        pending = 0;
                    }
                    wake_at = None;
                }
            }
            if appends.contains(&now) {
                if pending == 0 {
                    oldest = now;
                }
                pending += 1;
            }
            match g.decide(pending, Duration::from_micros(now - oldest)) {
                FlushDecision::FlushNow => {
                    flushes.push(now);
                    pending = 0;
                }
                FlushDecision::Wait(d) => wake_at = Some(now + d.as_micros() as u64),
                FlushDecision::Idle => {}
            }
        }
        // Two full groups of 3, then one append left alone for the delay, then the last.
        assert_eq!(flushes, vec![20, 50, 1060, 6000]);
    }
}
