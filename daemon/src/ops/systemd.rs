//! systemd readiness and watchdog notifications (`sd_notify`) without libsystemd.
//!
//! The protocol is one datagram per notification, sent to the `AF_UNIX` socket named
//! by `NOTIFY_SOCKET`: a filesystem path, or an abstract socket when it starts with
//! `@`. The payload is newline-separated `KEY=value` assignments (`READY=1`,
//! `STOPPING=1`, `WATCHDOG=1`, `STATUS=…`).
//!
//! With `WatchdogSec=` set, systemd passes `WATCHDOG_USEC` (and `WATCHDOG_PID`);
//! [`watchdog_interval`] turns them into the period at which to call
//! [`Notifier::watchdog`]: half the timeout, as `sd_watchdog_enabled(3)` recommends.
//!
//! Nothing here panics; every send returns an [`io::Result`] for the caller to log.
//! Outside systemd ([`Notifier::from_env`] returns `None`) the daemon simply skips
//! notifications.

use std::io;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::Path;
use std::time::Duration;

/// Sends `sd_notify` datagrams to the service manager.
#[derive(Debug, Clone)]
pub struct Notifier {
    addr: SocketAddr,
}

impl Notifier {
    /// The notifier systemd asked for through `NOTIFY_SOCKET`, or `None` when the
    /// variable is unset, empty or names an address this implementation cannot use
    /// (e.g. `vsock:`).
    pub fn from_env() -> Option<Notifier> {
        let value = std::env::var_os("NOTIFY_SOCKET")?;
        let addr = parse_notify_socket(value.to_str()?).ok()?;
        Some(Notifier { addr })
    }

    /// A notifier for the datagram socket bound at `path` (tests, or explicit
    /// configuration).
    pub fn new(path: impl AsRef<Path>) -> io::Result<Notifier> {
        Ok(Notifier {
            addr: SocketAddr::from_pathname(path)?,
        })
    }

    /// `READY=1`: start-up is complete: configuration loaded, models calibrated, journal
    /// open, the MQTT client started. Not "subscribed": a broker that is down (or starts
    /// later) does not hold up start; reflexd connects and subscribes when it can and logs
    /// "connected to the broker" each time it does.
    pub fn ready(&self) -> io::Result<()> {
        self.notify("READY=1")
    }

    /// `STOPPING=1`: shutdown has begun.
    pub fn stopping(&self) -> io::Result<()> {
        self.notify("STOPPING=1")
    }

    /// `WATCHDOG=1`: the daemon is alive; send every [`watchdog_interval`].
    pub fn watchdog(&self) -> io::Result<()> {
        self.notify("WATCHDOG=1")
    }

    /// `STATUS=…`: a one-line status shown by `systemctl status`. Newlines (which would
    /// start a new assignment) are replaced by spaces.
    pub fn status(&self, status: &str) -> io::Result<()> {
        self.notify(&format!("STATUS={}", status.replace(['\n', '\r'], " ")))
    }

    /// Sends `state` as is (one or more newline-separated assignments).
    pub fn notify(&self, state: &str) -> io::Result<()> {
        // A fresh unbound socket per message, as libsystemd does: nothing to keep
        // open, nothing to reconnect if the manager restarts.
        let socket = UnixDatagram::unbound()?;
        let sent = socket.send_to_addr(state.as_bytes(), &self.addr)?;
        if sent != state.len() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "sd_notify datagram truncated",
            ));
        }
        Ok(())
    }
}

/// The socket address named by a `NOTIFY_SOCKET` value: an absolute path, or an
/// abstract name after `@` (Linux only).
pub fn parse_notify_socket(value: &str) -> io::Result<SocketAddr> {
    if let Some(name) = value.strip_prefix('@') {
        return abstract_addr(name);
    }
    if value.starts_with('/') {
        return SocketAddr::from_pathname(value);
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("unsupported NOTIFY_SOCKET {value:?}"),
    ))
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn abstract_addr(name: &str) -> io::Result<SocketAddr> {
    #[cfg(target_os = "android")]
    use std::os::android::net::SocketAddrExt;
    #[cfg(target_os = "linux")]
    use std::os::linux::net::SocketAddrExt;
    SocketAddr::from_abstract_name(name.as_bytes())
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn abstract_addr(_name: &str) -> io::Result<SocketAddr> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "abstract unix sockets need Linux",
    ))
}

/// How often to call [`Notifier::watchdog`], from `WATCHDOG_USEC` and `WATCHDOG_PID`;
/// `None` when the watchdog is not enabled for this process.
pub fn watchdog_interval() -> Option<Duration> {
    let usec = std::env::var("WATCHDOG_USEC").ok();
    let pid = std::env::var("WATCHDOG_PID").ok();
    parse_watchdog(usec.as_deref(), pid.as_deref(), std::process::id())
}

/// Half the watchdog timeout `usec` (µs), or `None` when it is missing, zero or not a
/// number, or when `pid` is set and is not `my_pid` (the variables were meant for
/// another process, e.g. inherited through a wrapper).
pub fn parse_watchdog(usec: Option<&str>, pid: Option<&str>, my_pid: u32) -> Option<Duration> {
    let usec: u64 = usec?.trim().parse().ok()?;
    if usec == 0 {
        return None;
    }
    if let Some(pid) = pid {
        if pid.trim().parse::<u32>().ok()? != my_pid {
            return None;
        }
    }
    Some(Duration::from_micros(usec) / 2)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// A datagram socket bound in a fresh temporary directory, removed on drop.
    struct Manager {
        dir: PathBuf,
        socket: UnixDatagram,
    }

    impl Manager {
        fn new() -> Manager {
            static NEXT: AtomicU32 = AtomicU32::new(0);
            let dir = std::env::temp_dir().join(format!(
                "reflexd-sd-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            let socket = UnixDatagram::bind(dir.join("notify")).unwrap();
            socket
                .set_read_timeout(Some(Duration::from_secs(2)))
                .unwrap();
            Manager { dir, socket }
        }

        fn path(&self) -> PathBuf {
            self.dir.join("notify")
        }

        fn recv(&self) -> String {
            let mut buf = [0u8; 4096];
            let n = self.socket.recv(&mut buf).unwrap();
            String::from_utf8(buf[..n].to_vec()).unwrap()
        }
    }

    impl Drop for Manager {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    #[test]
    fn ready_watchdog_stopping_and_status_send_their_assignments() {
        let manager = Manager::new();
        let notifier = Notifier::new(manager.path()).unwrap();
        notifier.ready().unwrap();
        assert_eq!(manager.recv(), "READY=1");
        notifier.watchdog().unwrap();
        assert_eq!(manager.recv(), "WATCHDOG=1");
        notifier.status("serving 2 routes\nsecond line").unwrap();
        assert_eq!(manager.recv(), "STATUS=serving 2 routes second line");
        notifier.stopping().unwrap();
        assert_eq!(manager.recv(), "STOPPING=1");
    }

    #[test]
    fn a_path_notify_socket_value_reaches_the_manager() {
        let manager = Manager::new();
        let addr = parse_notify_socket(manager.path().to_str().unwrap()).unwrap();
        Notifier { addr }.ready().unwrap();
        assert_eq!(manager.recv(), "READY=1");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn an_abstract_notify_socket_value_reaches_the_manager() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("reflexd-sd-test-{}", std::process::id());
        let bound = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let manager = UnixDatagram::bind_addr(&bound).unwrap();
        manager
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let addr = parse_notify_socket(&format!("@{name}")).unwrap();
        Notifier { addr }.watchdog().unwrap();
        let mut buf = [0u8; 64];
        let n = manager.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"WATCHDOG=1");
    }

    #[test]
    fn unusable_notify_socket_values_are_rejected() {
        assert!(parse_notify_socket("").is_err());
        assert!(parse_notify_socket("relative/path").is_err());
        assert!(parse_notify_socket("vsock:2:1234").is_err());
    }

    #[test]
    fn sending_to_a_missing_socket_is_an_error_not_a_panic() {
        let manager = Manager::new();
        let notifier = Notifier::new(manager.dir.join("nobody-here")).unwrap();
        assert!(notifier.ready().is_err());
    }

    #[test]
    fn watchdog_interval_parses_and_halves() {
        assert_eq!(
            parse_watchdog(Some("30000000"), None, 42),
            Some(Duration::from_secs(15))
        );
        assert_eq!(
            parse_watchdog(Some("1000"), Some("42"), 42),
            Some(Duration::from_micros(500))
        );
        assert_eq!(
            parse_watchdog(Some("3"), None, 1),
            Some(Duration::from_nanos(1500))
        );
    }

    #[test]
    fn watchdog_for_another_pid_or_bad_values_is_none() {
        assert_eq!(parse_watchdog(Some("30000000"), Some("43"), 42), None);
        assert_eq!(parse_watchdog(Some("30000000"), Some("pid"), 42), None);
        assert_eq!(parse_watchdog(Some("0"), None, 42), None);
        assert_eq!(parse_watchdog(Some("-5"), None, 42), None);
        assert_eq!(parse_watchdog(Some("soon"), None, 42), None);
    }

    #[test]
    fn missing_watchdog_env_is_none() {
        assert_eq!(parse_watchdog(None, None, 42), None);
        assert_eq!(parse_watchdog(None, Some("42"), 42), None);
    }
}
