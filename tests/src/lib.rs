//! Helpers shared by the end-to-end tests: a real mosquitto on a free loopback port,
//! child processes that are killed when the test ends, and bounded waits on conditions.
//!
//! Tests never sleep to synchronise: they wait for a condition with [`wait_until`], which
//! fails the test with a message when the bound passes.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

/// A free TCP port on 127.0.0.1 (bound, then released for the caller).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding an ephemeral loopback port")
}

/// Polls `cond` every few milliseconds until it holds; panics with `what` after `limit`.
pub fn wait_until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A child process killed (SIGTERM, then SIGKILL) when dropped.
pub struct ChildGuard {
    /// The process.
    pub child: Child,
    name: String,
    stderr_tail: Arc<Mutex<VecDeque<String>>>,
    stderr_reader: Option<std::thread::JoinHandle<()>>,
}

/// Lines of a child's stderr kept for failure messages.
const STDERR_TAIL_LINES: usize = 40;

impl ChildGuard {
    /// Wraps a spawned child.
    pub fn new(name: &str, child: Child) -> Self {
        let mut guard = ChildGuard {
            child,
            name: name.to_string(),
            stderr_tail: Arc::default(),
            stderr_reader: None,
        };
        // A piped stderr nobody reads fills up and blocks the child: drain it, keeping the
        // last lines for failure messages.
        if let Some(err) = guard.child.stderr.take() {
            let tail = guard.stderr_tail.clone();
            guard.stderr_reader = Some(std::thread::spawn(move || {
                for line in BufReader::new(err).lines().map_while(Result::ok) {
                    let mut tail = tail.lock().unwrap_or_else(|e| e.into_inner());
                    if tail.len() == STDERR_TAIL_LINES {
                        tail.pop_front();
                    }
                    tail.push_back(line);
                }
            }));
        }
        guard
    }

    /// The last lines the child wrote to stderr (when it was piped); all of them once
    /// the child has exited.
    pub fn stderr_tail(&mut self) -> String {
        if let (Ok(Some(_)), Some(reader)) = (self.child.try_wait(), self.stderr_reader.take()) {
            let _ = reader.join();
        }
        let tail = self.stderr_tail.lock().unwrap_or_else(|e| e.into_inner());
        let lines: Vec<&str> = tail.iter().map(String::as_str).collect();
        lines.join("\n")
    }

    /// Sends SIGTERM.
    pub fn terminate(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
    }

    /// Waits for exit up to `limit`, panicking if it does not end.
    pub fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            if Instant::now() >= deadline {
                let tail = self.stderr_tail();
                panic!(
                    "{} did not exit within {limit:?}; its stderr ended with:\n{tail}",
                    self.name
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Reads stdout lines on a thread; returns a receiver of lines.
    pub fn stdout_lines(&mut self) -> mpsc::Receiver<String> {
        let out = self.child.stdout.take().expect("stdout was piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        rx
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.terminate();
            let deadline = Instant::now() + Duration::from_secs(3);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Waits for a line satisfying `pred` on `rx`, up to `limit`; returns it.
pub fn expect_line(
    rx: &mpsc::Receiver<String>,
    limit: Duration,
    what: &str,
    pred: impl Fn(&str) -> bool,
) -> String {
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if pred(&line) => return line,
            Ok(_) => continue,
            Err(_) => panic!("timed out after {limit:?} waiting for {what}"),
        }
    }
}

/// Finds a tool on PATH, or panics with an install hint: tests that need a tool fail
/// loudly when it is missing rather than passing without it.
pub fn require_tool(name: &str, package: &str) -> PathBuf {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("`{name}` not found on PATH: install it (apt-get install -y {package}) or run scripts/test"))
}

/// A mosquitto broker on a free loopback port with TCP_NODELAY, killed on drop.
pub struct Broker {
    /// Its port on 127.0.0.1.
    pub port: u16,
    guard: ChildGuard,
    dir: PathBuf,
}

impl Broker {
    /// `host:port` for command lines.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Kills the broker abruptly (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        let _ = self.guard.child.kill();
        let _ = self.guard.child.wait();
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Spawns mosquitto on `port` (0 = a free one) and waits until it accepts connections.
pub fn spawn_broker_on(port: u16) -> Broker {
    let exe = require_tool("mosquitto", "mosquitto");
    let port = if port == 0 { free_port() } else { port };
    let dir = std::env::temp_dir().join(format!("reflex-mosquitto-{}-{port}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("creating the broker's temp dir");
    let conf = dir.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\nset_tcp_nodelay true\n\
             max_queued_messages 100000\nmax_inflight_messages 1000\npersistence false\n"
        ),
    )
    .expect("writing mosquitto.conf");
    let child = Command::new(exe)
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawning mosquitto");
    let guard = ChildGuard::new("mosquitto", child);
    wait_until(
        "mosquitto to accept connections",
        Duration::from_secs(10),
        || TcpStream::connect(("127.0.0.1", port)).is_ok(),
    );
    Broker { port, guard, dir }
}

/// Spawns mosquitto on a free loopback port.
pub fn spawn_broker() -> Broker {
    spawn_broker_on(0)
}
