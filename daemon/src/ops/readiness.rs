//! Readiness: whether reflexd can do its job right now, as `GET /readyz` and the
//! `reflexd_ready` gauge tell it, and whether its MQTT intake loop is wedged, which the
//! systemd watchdog checks (`service::watchdog`). `/healthz` stays liveness only: the
//! process answers.
//!
//! Ready means all of:
//! - connected to the broker (a ConnAck since the last connection error);
//! - every route's subscription acknowledged since that ConnAck, each SubAck with success
//!   return codes only (one failure code: not subscribed until the next ConnAck);
//! - no journal configured, or the journal takes appends: not full under backpressure and
//!   not waiting to be reopened after an I/O error (e.g. ENOSPC) or for space to open;
//! - the intake loop not wedged (below).
//!
//! [`readiness`] says which of these fail, one [`Reason`] each, without I/O.
//!
//! # The link state
//!
//! The intake updates a [`LinkState`] (atomics: it never waits on it): a ConnAck sets
//! connected and starts counting SubAcks afresh, a SubAck counts (or marks a failure), a
//! connection error clears both, and every turn of its loop (once per event it handled, Ok
//! or Err) stamps a heartbeat. Once the intake has returned (shutdown) the link is marked
//! stopped: not connected, and never wedged.
//!
//! # Wedged is not down
//!
//! An idle intake blocks in its poll waiting for packets, so a heartbeat that stops for a
//! while is not by itself a wedge. But the loop turns at least:
//! - every keep-alive while connected: rumqttc sends a PINGREQ and reads the PINGRESP, and
//!   one that does not come by the next keep-alive is an error;
//! - every connection timeout plus the longest reconnect backoff while it cannot connect:
//!   each attempt fails within the timeout, and the intake sleeps at most the backoff.
//!
//! The intake is wedged when it has not turned for twice the longer of the two plus
//! [`WEDGE_MARGIN`] ([`wedge_limit`]). A wedged intake is not ready, and the watchdog stops
//! pinging, so systemd restarts reflexd. A broker that is down is not a wedge: the loop
//! turns on every failed attempt, and a restart would not bring the broker back. That is
//! not ready (`mqtt: not connected`), and the watchdog keeps pinging.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use reflex_journal::store::Journal;
use rumqttc::SubscribeReasonCode;

/// Added to twice the longest quiet time of a turning intake before it counts as wedged
/// (scheduling delays, a slow TLS handshake finishing a flush).
pub const WEDGE_MARGIN: Duration = Duration::from_secs(5);

/// How long an intake may go without turning before it is wedged: twice the longer of the
/// keep-alive and (connection timeout + longest reconnect backoff), plus [`WEDGE_MARGIN`].
pub fn wedge_limit(
    keep_alive: Duration,
    connect_timeout: Duration,
    backoff_max: Duration,
) -> Duration {
    2 * keep_alive.max(connect_timeout + backoff_max) + WEDGE_MARGIN
}

/// Whether an intake that last turned `idle` ago is wedged (`stopped`: it returned, so it
/// is not turning and not wedged either).
pub fn intake_wedged(idle: Duration, limit: Duration, stopped: bool) -> bool {
    !stopped && idle > limit
}

/// The MQTT link as the intake last saw it. Written by the intake thread, read by the
/// endpoint and the watchdog; all relaxed atomics (each field is a figure on its own).
#[derive(Debug)]
pub struct LinkState {
    epoch: Instant,
    routes: AtomicUsize,
    connected: AtomicBool,
    subacks_ok: AtomicUsize,
    suback_failed: AtomicBool,
    stopped: AtomicBool,
    /// Milliseconds from `epoch` to the last turn of the intake's loop.
    last_turn_ms: AtomicU64,
}

impl LinkState {
    /// A link not yet connected, for `routes` subscriptions (one SubAck each); its
    /// heartbeat starts now.
    pub fn new(routes: usize) -> LinkState {
        LinkState {
            epoch: Instant::now(),
            routes: AtomicUsize::new(routes),
            connected: AtomicBool::new(false),
            subacks_ok: AtomicUsize::new(0),
            suback_failed: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
            last_turn_ms: AtomicU64::new(0),
        }
    }

    /// A reload changed the routes: `added` more subscriptions (each counted by its
    /// SubAck, like those made at a ConnAck), `removed` fewer, and `renewed` made again
    /// (another QoS: counted again by their new SubAck).
    pub fn routes_changed(&self, added: usize, removed: usize, renewed: usize) {
        self.routes.fetch_add(added, Ordering::Relaxed);
        self.routes.fetch_sub(removed, Ordering::Relaxed);
        let uncount = removed + renewed;
        self.subacks_ok.fetch_sub(
            uncount.min(self.subacks_ok.load(Ordering::Relaxed)),
            Ordering::Relaxed,
        );
    }

    /// The intake's loop turned (top of the loop).
    pub fn turned(&self) {
        self.turned_at(Instant::now());
    }

    /// The intake's loop turned at `at`.
    pub fn turned_at(&self, at: Instant) {
        let ms = at.saturating_duration_since(self.epoch).as_millis();
        self.last_turn_ms
            .store(u64::try_from(ms).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// A ConnAck: connected; the subscriptions it is about to make are counted afresh.
    pub fn connected(&self) {
        self.subacks_ok.store(0, Ordering::Relaxed);
        self.suback_failed.store(false, Ordering::Relaxed);
        self.connected.store(true, Ordering::Relaxed);
    }

    /// A SubAck with these return codes: one route subscribed when all are successes.
    pub fn suback(&self, codes: &[SubscribeReasonCode]) {
        if codes
            .iter()
            .all(|c| matches!(c, SubscribeReasonCode::Success(_)))
        {
            self.subacks_ok.fetch_add(1, Ordering::Relaxed);
        } else {
            self.suback_failed.store(true, Ordering::Relaxed);
        }
    }

    /// A connection error: neither connected nor subscribed.
    pub fn disconnected(&self) {
        self.connected.store(false, Ordering::Relaxed);
        self.subacks_ok.store(0, Ordering::Relaxed);
    }

    /// The intake returned (shutdown): not connected, and not wedged.
    pub fn stopped(&self) {
        self.stopped.store(true, Ordering::Relaxed);
        self.disconnected();
    }

    /// Whether the last connection attempt got its ConnAck and no error since.
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// Whether every route's subscription was acknowledged with success since the last
    /// ConnAck (and the link is still connected).
    pub fn is_subscribed(&self) -> bool {
        self.is_connected()
            && !self.suback_failed.load(Ordering::Relaxed)
            && self.subacks_ok.load(Ordering::Relaxed) >= self.routes.load(Ordering::Relaxed)
    }

    /// Whether the intake has returned.
    pub fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::Relaxed)
    }

    /// Time from the intake loop's last turn to `now`.
    pub fn idle_at(&self, now: Instant) -> Duration {
        let last = Duration::from_millis(self.last_turn_ms.load(Ordering::Relaxed));
        now.saturating_duration_since(self.epoch)
            .saturating_sub(last)
    }
}

/// Whether the journal takes appends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JournalState {
    /// None is configured.
    Absent,
    /// It takes appends.
    Accepting,
    /// It refuses appends: full under backpressure.
    Full,
    /// It refuses appends until reopened: an I/O error (e.g. ENOSPC) broke it, or it had
    /// no space to open at start.
    Reopening,
}

impl JournalState {
    /// The state of `journal` (the journal's own flags, which the appender and the quota
    /// keep up to date).
    pub fn of(journal: Option<&Journal>) -> JournalState {
        match journal {
            None => JournalState::Absent,
            Some(j) if j.needs_reopen() => JournalState::Reopening,
            Some(j) if j.is_full() => JournalState::Full,
            Some(_) => JournalState::Accepting,
        }
    }
}

/// What readiness is decided from, read at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observed {
    /// Connected to the broker.
    pub connected: bool,
    /// Every route subscribed with success.
    pub subscribed: bool,
    /// The journal.
    pub journal: JournalState,
    /// Time since the intake loop last turned.
    pub intake_idle: Duration,
    /// The intake returned (shutdown).
    pub intake_stopped: bool,
    /// [`wedge_limit`] for this configuration.
    pub wedge_after: Duration,
}

/// Why reflexd is not ready; its `Display` is the line `/readyz` answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// No connection to the broker.
    NotConnected,
    /// Some route's subscription is not (or not successfully) acknowledged.
    NotSubscribed,
    /// The journal refuses appends: full.
    JournalFull,
    /// The journal refuses appends until it is reopened.
    JournalReopening,
    /// The intake loop has not turned for this long.
    IntakeWedged(Duration),
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::NotConnected => f.write_str("mqtt: not connected"),
            Reason::NotSubscribed => f.write_str("mqtt: not subscribed"),
            Reason::JournalFull => f.write_str("journal: refusing appends (full)"),
            Reason::JournalReopening => f.write_str(
                "journal: refusing appends (waiting to reopen after an i/o error or for space)",
            ),
            Reason::IntakeWedged(idle) => write!(
                f,
                "mqtt: intake loop wedged (no event for {} s)",
                idle.as_secs()
            ),
        }
    }
}

/// Ready, or every reason it is not, in a fixed order.
pub fn readiness(o: &Observed) -> Result<(), Vec<Reason>> {
    let mut reasons = Vec::new();
    if !o.connected {
        reasons.push(Reason::NotConnected);
    }
    if !o.subscribed {
        reasons.push(Reason::NotSubscribed);
    }
    match o.journal {
        JournalState::Absent | JournalState::Accepting => {}
        JournalState::Full => reasons.push(Reason::JournalFull),
        JournalState::Reopening => reasons.push(Reason::JournalReopening),
    }
    if intake_wedged(o.intake_idle, o.wedge_after, o.intake_stopped) {
        reasons.push(Reason::IntakeWedged(o.intake_idle));
    }
    if reasons.is_empty() {
        Ok(())
    } else {
        Err(reasons)
    }
}

/// The link, the journal and the wedge limit together: what `/readyz`, the readiness
/// gauges and the watchdog read.
pub struct Readiness {
    link: Arc<LinkState>,
    journal: Option<Arc<Journal>>,
    wedge_after: Duration,
}

impl Readiness {
    /// Readiness of `link` and `journal` (when configured), the intake wedged after
    /// `wedge_after` without a turn (see [`wedge_limit`]).
    pub fn new(link: Arc<LinkState>, journal: Option<Arc<Journal>>, wedge_after: Duration) -> Self {
        Readiness {
            link,
            journal,
            wedge_after,
        }
    }

    /// The link state.
    pub fn link(&self) -> &LinkState {
        &self.link
    }

    /// The figures now.
    pub fn observe(&self) -> Observed {
        Observed {
            connected: self.link.is_connected(),
            subscribed: self.link.is_subscribed(),
            journal: JournalState::of(self.journal.as_deref()),
            intake_idle: self.link.idle_at(Instant::now()),
            intake_stopped: self.link.is_stopped(),
            wedge_after: self.wedge_after,
        }
    }

    /// Ready now, or why not.
    pub fn check(&self) -> Result<(), Vec<Reason>> {
        readiness(&self.observe())
    }

    /// Whether the intake loop is wedged now (the watchdog's question).
    pub fn intake_wedged(&self) -> bool {
        intake_wedged(
            self.link.idle_at(Instant::now()),
            self.wedge_after,
            self.link.is_stopped(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rumqttc::QoS;

    fn ready() -> Observed {
        Observed {
            connected: true,
            subscribed: true,
            journal: JournalState::Accepting,
            intake_idle: Duration::from_secs(1),
            intake_stopped: false,
            wedge_after: Duration::from_secs(25),
        }
    }

    #[test]
    fn connected_subscribed_with_a_journal_taking_appends_is_ready() {
        assert_eq!(readiness(&ready()), Ok(()));
        let no_journal = Observed {
            journal: JournalState::Absent,
            ..ready()
        };
        assert_eq!(readiness(&no_journal), Ok(()));
    }

    #[test]
    fn every_failing_condition_is_a_reason_of_its_own_in_order() {
        let o = Observed {
            connected: false,
            subscribed: false,
            journal: JournalState::Full,
            intake_idle: Duration::from_secs(40),
            ..ready()
        };
        let reasons = readiness(&o).unwrap_err();
        let lines: Vec<String> = reasons.iter().map(|r| r.to_string()).collect();
        assert_eq!(
            lines,
            [
                "mqtt: not connected",
                "mqtt: not subscribed",
                "journal: refusing appends (full)",
                "mqtt: intake loop wedged (no event for 40 s)",
            ]
        );
    }

    #[test]
    fn a_journal_waiting_to_reopen_is_not_ready() {
        let o = Observed {
            journal: JournalState::Reopening,
            ..ready()
        };
        assert_eq!(readiness(&o), Err(vec![Reason::JournalReopening]));
    }

    #[test]
    fn connected_but_not_yet_subscribed_is_not_ready() {
        let o = Observed {
            subscribed: false,
            ..ready()
        };
        assert_eq!(readiness(&o), Err(vec![Reason::NotSubscribed]));
    }

    #[test]
    fn the_wedge_limit_is_twice_the_longest_quiet_time_plus_the_margin() {
        let s = Duration::from_secs;
        // Reconnecting is the longer: 5 s timeout + 5 s backoff.
        assert_eq!(wedge_limit(s(5), s(5), s(5)), s(25));
        // A long keep-alive is the longer.
        assert_eq!(wedge_limit(s(60), s(5), s(5)), s(125));
    }

    #[test]
    fn an_intake_quiet_up_to_the_limit_is_not_wedged_and_past_it_is() {
        let limit = Duration::from_secs(25);
        assert!(!intake_wedged(limit, limit, false));
        assert!(intake_wedged(
            limit + Duration::from_millis(1),
            limit,
            false
        ));
        // Stopped (shutdown) is never wedged.
        assert!(!intake_wedged(limit * 10, limit, true));
    }

    #[test]
    fn a_stale_heartbeat_past_the_limit_is_not_ready() {
        let o = Observed {
            intake_idle: Duration::from_secs(26),
            ..ready()
        };
        assert_eq!(
            readiness(&o),
            Err(vec![Reason::IntakeWedged(Duration::from_secs(26))])
        );
    }

    #[test]
    fn a_reload_counts_added_removed_and_renewed_subscriptions() {
        let link = LinkState::new(2);
        link.connected();
        link.suback(&[SubscribeReasonCode::Success(QoS::AtLeastOnce)]);
        link.suback(&[SubscribeReasonCode::Success(QoS::AtLeastOnce)]);
        assert!(link.is_subscribed());
        // One route added, one removed, one subscribed again with another QoS.
        link.routes_changed(1, 1, 1);
        assert!(
            !link.is_subscribed(),
            "the added and renewed SubAcks are due"
        );
        link.suback(&[SubscribeReasonCode::Success(QoS::AtLeastOnce)]);
        assert!(!link.is_subscribed(), "one of two");
        link.suback(&[SubscribeReasonCode::Success(QoS::AtMostOnce)]);
        assert!(link.is_subscribed());
    }

    #[test]
    fn subscribed_needs_a_successful_suback_for_every_route_since_the_connack() {
        let link = LinkState::new(2);
        assert!(!link.is_connected() && !link.is_subscribed());
        link.connected();
        assert!(link.is_connected() && !link.is_subscribed());
        link.suback(&[SubscribeReasonCode::Success(QoS::AtLeastOnce)]);
        assert!(!link.is_subscribed(), "one route of two");
        link.suback(&[SubscribeReasonCode::Success(QoS::AtMostOnce)]);
        assert!(link.is_subscribed());
        // A connection error, then a new ConnAck: counted afresh.
        link.disconnected();
        assert!(!link.is_connected() && !link.is_subscribed());
        link.connected();
        link.suback(&[SubscribeReasonCode::Success(QoS::AtLeastOnce)]);
        assert!(!link.is_subscribed());
    }

    #[test]
    fn a_suback_with_a_failure_code_is_not_subscribed_until_the_next_connack() {
        let link = LinkState::new(2);
        link.connected();
        link.suback(&[SubscribeReasonCode::Failure]);
        link.suback(&[SubscribeReasonCode::Success(QoS::AtLeastOnce)]);
        link.suback(&[SubscribeReasonCode::Success(QoS::AtLeastOnce)]);
        assert!(
            !link.is_subscribed(),
            "a refused subscription is not made good"
        );
        link.disconnected();
        link.connected();
        link.suback(&[SubscribeReasonCode::Success(QoS::AtLeastOnce)]);
        link.suback(&[SubscribeReasonCode::Success(QoS::AtLeastOnce)]);
        assert!(link.is_subscribed());
    }

    #[test]
    fn the_heartbeat_measures_the_time_since_the_last_turn() {
        let link = LinkState::new(1);
        let t0 = Instant::now();
        link.turned_at(t0 + Duration::from_secs(3));
        assert_eq!(
            link.idle_at(t0 + Duration::from_secs(10)).as_secs(),
            7,
            "idle since the turn"
        );
        // A turn later than `now` (a racing read) is no time idle, not a wrap.
        assert_eq!(link.idle_at(t0), Duration::ZERO);
    }

    #[test]
    fn a_stopped_link_is_neither_connected_nor_wedged() {
        let link = Arc::new(LinkState::new(1));
        link.connected();
        link.suback(&[SubscribeReasonCode::Success(QoS::AtLeastOnce)]);
        link.stopped();
        let r = Readiness::new(link, None, Duration::ZERO);
        assert!(!r.intake_wedged());
        assert_eq!(
            r.check(),
            Err(vec![Reason::NotConnected, Reason::NotSubscribed])
        );
    }
}
