//! A private mosquitto on a free loopback port, for `reflexd demo` on a machine where
//! mosquitto is installed: the broker reflexd runs behind on a board, so the demo shows the
//! real floor (TCP_NODELAY on both sides of every connection) instead of the embedded
//! rumqttd's milliseconds ([`crate::embedded_broker`]).
//!
//! Contract:
//! - It listens on 127.0.0.1 only, anonymous clients allowed (nothing else can reach it).
//! - Its settings are the drop-in the Debian package installs
//!   (`cross/mosquitto/reflex.conf`: `set_tcp_nodelay true`, the queue and message size
//!   limits) without that file's own `listener` and `allow_anonymous` lines
//!   ([`config`], pure); no persistence, nothing written outside its temporary directory.
//! - [`LocalMosquitto::start`] returns once the port accepts connections (bounded wait), or
//!   an error with the broker's own log.
//! - Dropping the handle kills the broker and removes its directory.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The drop-in the Debian package installs as /etc/mosquitto/conf.d/reflex.conf.
pub const SHIPPED_DROP_IN: &str = include_str!("../../cross/mosquitto/reflex.conf");

/// How long the broker may take to accept connections.
pub const START_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the private mosquitto could not be started.
#[derive(Debug, thiserror::Error)]
pub enum LocalMosquittoError {
    /// Setting up its directory or spawning it failed.
    #[error("cannot start mosquitto {binary}: {source}")]
    Spawn {
        /// The binary run.
        binary: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// It exited before accepting connections.
    #[error("mosquitto exited ({status}) before listening on 127.0.0.1:{port}; its log: {log}")]
    Exited {
        /// Its exit status.
        status: std::process::ExitStatus,
        /// The port it was given.
        port: u16,
        /// What it printed.
        log: String,
    },
    /// It did not accept connections in time.
    #[error("mosquitto did not listen on 127.0.0.1:{port} within {secs} s; its log: {log}")]
    NotListening {
        /// The port it was given.
        port: u16,
        /// The bound, in seconds.
        secs: u64,
        /// What it printed.
        log: String,
    },
}

/// The mosquitto binary: the first `mosquitto` in `path_var` (a `PATH` value), else in
/// `/usr/sbin` or `/usr/local/sbin` (where Debian installs it, not on every user's `PATH`).
pub fn find(path_var: Option<&std::ffi::OsStr>) -> Option<PathBuf> {
    let dirs = path_var
        .map(|p| std::env::split_paths(p).collect::<Vec<_>>())
        .unwrap_or_default();
    dirs.into_iter()
        .chain(["/usr/sbin".into(), "/usr/local/sbin".into()])
        .map(|d: PathBuf| d.join("mosquitto"))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The configuration file for a private broker on 127.0.0.1:`port` (see the module docs).
pub fn config(port: u16) -> String {
    let mut out = format!(
        "# reflexd demo: a private broker on loopback with the settings of the Debian\n\
         # package's drop-in (cross/mosquitto/reflex.conf).\n\
         listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
    );
    for line in SHIPPED_DROP_IN.lines() {
        let t = line.trim_start();
        if !(t.starts_with("listener ") || t.starts_with("allow_anonymous ")) {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// A running private mosquitto; killed (and its directory removed) on drop.
#[derive(Debug)]
pub struct LocalMosquitto {
    child: Child,
    dir: PathBuf,
    port: u16,
}

impl LocalMosquitto {
    /// Starts `binary` on a free loopback port (see the module docs).
    pub fn start(binary: &Path) -> Result<LocalMosquitto, LocalMosquittoError> {
        let spawn_err = |source| LocalMosquittoError::Spawn {
            binary: binary.to_owned(),
            source,
        };
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(spawn_err)?
            .port();
        let dir = std::env::temp_dir().join(format!(
            "reflex-demo-mosquitto-{}-{port}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).map_err(spawn_err)?;
        let conf = dir.join("mosquitto.conf");
        let log = dir.join("mosquitto.log");
        std::fs::write(&conf, config(port)).map_err(spawn_err)?;
        let out = std::fs::File::create(&log).map_err(spawn_err)?;
        let err = out.try_clone().map_err(spawn_err)?;
        let child = Command::new(binary)
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(spawn_err)?;
        let mut broker = LocalMosquitto { child, dir, port };
        broker.wait_listening()?;
        Ok(broker)
    }

    /// The port it listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("mosquitto.log")).unwrap_or_default()
    }

    fn wait_listening(&mut self) -> Result<(), LocalMosquittoError> {
        let addr: SocketAddr = ([127, 0, 0, 1], self.port).into();
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(LocalMosquittoError::Exited {
                    status,
                    port: self.port,
                    log: self.log(),
                });
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(LocalMosquittoError::NotListening {
                    port: self.port,
                    secs: START_TIMEOUT.as_secs(),
                    log: self.log(),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for LocalMosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_listens_on_loopback_with_the_shipped_settings() {
        let c = config(40123);
        let listeners: Vec<&str> = c.lines().filter(|l| l.starts_with("listener ")).collect();
        assert_eq!(listeners, ["listener 40123 127.0.0.1"]);
        let anonymous: Vec<&str> = c
            .lines()
            .filter(|l| l.starts_with("allow_anonymous "))
            .collect();
        assert_eq!(anonymous, ["allow_anonymous true"]);
        for setting in [
            "set_tcp_nodelay true",
            "max_queued_messages 50000",
            "message_size_limit 65536",
        ] {
            assert!(c.lines().any(|l| l == setting), "{setting} missing:\n{c}");
        }
        assert!(c.lines().any(|l| l == "persistence false"));
    }

    #[test]
    fn a_path_without_mosquitto_falls_back_to_the_sbin_directories() {
        let empty =
            std::env::temp_dir().join(format!("reflex-no-mosquitto-{}", std::process::id()));
        std::fs::create_dir_all(&empty).unwrap();
        let found = find(Some(empty.as_os_str()));
        let in_sbin = ["/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"]
            .iter()
            .map(PathBuf::from)
            .find(|p| is_executable(p));
        assert_eq!(found, in_sbin);
        std::fs::remove_dir_all(&empty).unwrap();
    }

    #[test]
    fn a_mosquitto_on_the_path_is_taken_first() {
        use std::os::unix::fs::PermissionsExt;
        let dir =
            std::env::temp_dir().join(format!("reflex-path-mosquitto-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let bin = dir.join("mosquitto");
        std::fs::write(&bin, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(find(Some(dir.as_os_str())), Some(bin));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
