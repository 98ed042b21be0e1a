//! Helpers shared by the end-to-end tests: a real mosquitto on a free loopback port,
//! child processes that are killed when the test ends, bounded waits on conditions,
//! reading reflexd's Prometheus text ([`prometheus::metric`]), and a real S3-compatible
//! server ([`s3::spawn_s3_server`]).
//!
//! Tests never sleep to synchronise: they wait for a condition with [`wait_until`], which
//! fails the test with a message when the bound passes.

pub mod bins;
pub mod prometheus;
pub mod s3;

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

/// Starts `reflexd run --config <config>` (the binary at `bin`; stdout discarded, stderr
/// kept for failure messages, `REFLEX_LOG=<log>` when given) and waits up to 60 s until its
/// metrics endpoint on `metrics_port` accepts connections. That does not mean it is
/// subscribed yet.
pub fn spawn_reflexd(
    bin: &std::path::Path,
    config: &std::path::Path,
    metrics_port: u16,
    log: Option<&str>,
) -> ChildGuard {
    let mut cmd = Command::new(bin);
    cmd.args(["run", "--config"]).arg(config);
    if let Some(filter) = log {
        cmd.env("REFLEX_LOG", filter);
    }
    spawn_reflexd_cmd(cmd, metrics_port)
}

/// Starts `cmd` (a `reflexd run` with the caller's arguments and environment; stdout
/// discarded, stderr kept for failure messages) and waits up to 60 s until its metrics
/// endpoint on `metrics_port` accepts connections.
pub fn spawn_reflexd_cmd(mut cmd: Command, metrics_port: u16) -> ChildGuard {
    cmd.stdout(Stdio::null()).stderr(Stdio::piped());
    let child = cmd.spawn().expect("spawning reflexd");
    let mut guard = ChildGuard::new("reflexd", child);
    guard.wait_listening(metrics_port, Duration::from_secs(60));
    guard
}

/// `echo -n TOKEN | reflex-cloud hash-token`: the hash a cloud config keeps of a board's
/// upload token.
pub fn hash_token(token: &str) -> String {
    use std::io::Write;
    let mut child = Command::new(bins::reflex_cloud())
        .arg("hash-token")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawning reflex-cloud hash-token");
    child
        .stdin
        .take()
        .expect("stdin piped")
        .write_all(token.as_bytes())
        .expect("writing the token");
    let out = child.wait_with_output().expect("reflex-cloud hash-token");
    assert!(out.status.success(), "hash-token failed: {:?}", out.status);
    let hash = String::from_utf8(out.stdout)
        .expect("utf-8")
        .trim()
        .to_owned();
    assert_eq!(hash.len(), 64, "{hash:?}");
    hash
}

/// Writes a secret file (a token, a password) readable by its owner only, as reflexd
/// requires of secret files.
pub fn write_secret(path: &Path, contents: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, contents).expect("writing a secret file");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("chmod 0600");
}

/// A free TCP port on 127.0.0.1 (bound, then released for the caller), never one this
/// process was given before. The kernel may hand the same ephemeral port to two tests
/// running side by side once the first has released it and before its server binds it;
/// the second server then fails to bind while its readiness check reaches the first's
/// (seen: a test's mosquitto_sub refused once the other test's broker stopped).
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("binding an ephemeral loopback port");
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
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

    /// Waits up to `limit` until the process accepts TCP connections on 127.0.0.1:`port`;
    /// panics with its stderr tail if it exits first, or when the bound passes.
    pub fn wait_listening(&mut self, port: u16, limit: Duration) {
        let what = format!("{} to accept connections on port {port}", self.name);
        wait_until(&what, limit, || {
            if let Ok(Some(status)) = self.child.try_wait() {
                let tail = self.stderr_tail();
                panic!(
                    "{} exited early: {status}; its stderr ended with:\n{tail}",
                    self.name
                );
            }
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
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

    /// Stops the broker as `systemctl restart` would (SIGTERM: it saves its state) and
    /// waits for it to exit.
    pub fn stop(&mut self) {
        self.guard.terminate();
        let status = self.guard.wait_exit(Duration::from_secs(10));
        assert!(status.success(), "mosquitto exited with {status}");
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

/// Spawns mosquitto on `port` (0 = a free one) as the Debian package sets it up: stock
/// limits plus the drop-in reflex ships ([`SHIPPED_DROP_IN`]). Waits until it accepts
/// connections.
pub fn spawn_broker_on(port: u16) -> Broker {
    let port = if port == 0 { free_port() } else { port };
    let dir = broker_dir(port);
    let conf = format!(
        "allow_anonymous true\nlistener {port} 127.0.0.1\n{}",
        drop_in()
    );
    start_mosquitto(port, dir, &conf)
}

/// Spawns mosquitto as Debian installs it, without reflex's drop-in: every limit at its
/// default, no TCP_NODELAY, no message size limit.
pub fn spawn_stock_broker() -> Broker {
    let port = free_port();
    let dir = broker_dir(port);
    start_mosquitto(
        port,
        dir,
        &format!("allow_anonymous true\nlistener {port} 127.0.0.1\n"),
    )
}

/// The mosquitto drop-in the Debian package installs as /etc/mosquitto/conf.d/reflex.conf.
pub const SHIPPED_DROP_IN: &str = include_str!("../../cross/mosquitto/reflex.conf");

/// [`SHIPPED_DROP_IN`] without its listener and anonymous-access lines: tests listen on a
/// free port and say themselves who may connect.
fn drop_in() -> String {
    SHIPPED_DROP_IN
        .lines()
        .filter(|l| !l.starts_with("listener ") && !l.starts_with("allow_anonymous "))
        .map(|l| format!("{l}\n"))
        .collect()
}

fn broker_dir(port: u16) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("reflex-mosquitto-{}-{port}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("creating the broker's temp dir");
    dir
}

/// A broker that requires a username and password on both its listeners, one of which
/// speaks TLS with a certificate made for this test by a throwaway CA.
pub struct SecureBroker {
    /// The broker; `port` is its plain listener (loopback only, still password-protected).
    pub broker: Broker,
    /// Its TLS listener on 127.0.0.1 (certificate for IP 127.0.0.1 and `localhost`).
    pub tls_port: u16,
    /// PEM of the CA that signed the broker's certificate.
    pub ca_file: PathBuf,
}

/// Files of a throwaway CA and a server certificate it signed, from [`make_test_certs`].
#[derive(Debug, Clone)]
pub struct TestCerts {
    /// PEM of the CA certificate (what a client trusts).
    pub ca_file: PathBuf,
    /// PEM of the server certificate (for IP 127.0.0.1 and `localhost`).
    pub cert_file: PathBuf,
    /// PEM of the server's private key (EC P-256, PKCS#8).
    pub key_file: PathBuf,
}

/// Makes, with `openssl`, a throwaway CA (`ca.pem`) and a server certificate it signed for
/// IP 127.0.0.1 and `localhost` (`server.pem`, key `server.key`) in `dir`, valid 2 days.
pub fn make_test_certs(dir: &Path) -> TestCerts {
    let openssl = require_tool("openssl", "openssl");
    let run = |cmd: &mut Command| {
        let out = cmd.current_dir(dir).output().expect("running openssl");
        assert!(
            out.status.success(),
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    run(Command::new(&openssl)
        .args(["req", "-x509", "-days", "2", "-subj", "/CN=reflex test CA"])
        .args(ec)
        .args(["-keyout", "ca.key", "-out", "ca.pem"])
        .args(["-addext", "basicConstraints=critical,CA:TRUE"])
        .args(["-addext", "keyUsage=critical,keyCertSign,cRLSign"]));
    run(Command::new(&openssl)
        .args(["req", "-subj", "/CN=127.0.0.1"])
        .args(ec)
        .args(["-keyout", "server.key", "-out", "server.csr"]));
    std::fs::write(
        dir.join("server.ext"),
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n\
         extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .expect("writing server.ext");
    run(Command::new(&openssl).args([
        "x509",
        "-req",
        "-days",
        "2",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-extfile",
        "server.ext",
    ]));
    TestCerts {
        ca_file: dir.join("ca.pem"),
        cert_file: dir.join("server.pem"),
        key_file: dir.join("server.key"),
    }
}

/// Spawns mosquitto with a password file holding `user`/`password`, anonymous access
/// off, a plain and a TLS listener; certificates made with `openssl`.
pub fn spawn_secure_broker(user: &str, password: &str) -> SecureBroker {
    let passwd = require_tool("mosquitto_passwd", "mosquitto");
    let port = free_port();
    let tls_port = free_port();
    let dir = broker_dir(port);
    let run = |cmd: &mut Command| {
        let out = cmd.current_dir(&dir).output().expect("running a tool");
        assert!(
            out.status.success(),
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    make_test_certs(&dir);
    run(Command::new(&passwd).args(["-c", "-b", "passwd", user, password]));
    // mosquitto started as root drops to its own user: let it read the test's files.
    for f in ["server.key", "server.pem", "ca.pem", "passwd"] {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.join(f), std::fs::Permissions::from_mode(0o644))
            .expect("chmod");
    }
    let d = dir.display();
    let listeners = format!(
        "per_listener_settings false\nallow_anonymous false\npassword_file {d}/passwd\n\
         listener {port} 127.0.0.1\n\
         listener {tls_port} 127.0.0.1\ncafile {d}/ca.pem\ncertfile {d}/server.pem\n\
         keyfile {d}/server.key\n{}",
        drop_in()
    );
    let ca_file = dir.join("ca.pem");
    let broker = start_mosquitto(port, dir, &listeners);
    wait_until("mosquitto's TLS listener", Duration::from_secs(10), || {
        TcpStream::connect(("127.0.0.1", tls_port)).is_ok()
    });
    SecureBroker {
        broker,
        tls_port,
        ca_file,
    }
}

/// Writes mosquitto.conf in `dir` (what Debian's main file sets: persistence on, here in
/// `dir`; then `rest`), starts mosquitto and waits until `port` accepts connections.
/// Every limit not in `rest` stays at mosquitto's default.
fn start_mosquitto(port: u16, dir: PathBuf, rest: &str) -> Broker {
    use std::os::unix::fs::PermissionsExt;
    let exe = require_tool("mosquitto", "mosquitto");
    let conf = dir.join("mosquitto.conf");
    // mosquitto started as root drops to its own user: let it write its database here.
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    std::fs::write(
        &conf,
        format!(
            "persistence true\npersistence_location {}/\n{rest}",
            dir.display()
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
    let mut guard = ChildGuard::new("mosquitto", child);
    // A port taken by someone else in the meantime makes mosquitto exit: fail then, rather
    // than test against whatever listens there.
    wait_until(
        "mosquitto to accept connections",
        Duration::from_secs(10),
        || {
            if let Ok(Some(status)) = guard.child.try_wait() {
                panic!("mosquitto on port {port} exited: {status}");
            }
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        },
    );
    Broker { port, guard, dir }
}

/// Spawns mosquitto on a free loopback port.
pub fn spawn_broker() -> Broker {
    spawn_broker_on(0)
}

/// A tmpfs mounted by [`mount_tmpfs`]; unmounted on drop, so a failing test leaves no
/// mount behind.
pub struct TmpfsMount(PathBuf);

impl TmpfsMount {
    /// Remounts it with a new `size` (e.g. to give a full filesystem room again).
    pub fn resize(&self, size: &str) {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .expect("run mount");
        assert!(
            status.success(),
            "remount {} with size={size}",
            self.0.display()
        );
    }
}

impl Drop for TmpfsMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// Mounts a tmpfs of `size` (e.g. "16m") at `at`, creating the directory: a filesystem
/// small enough to fill (ENOSPC tests). Needs root in a machine that allows mounts (the
/// tests run so here and in CI); fails with a message saying so otherwise.
pub fn mount_tmpfs(at: &Path, size: &str) -> TmpfsMount {
    std::fs::create_dir_all(at).unwrap();
    let out = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(at)
        .output()
        .expect("run mount");
    assert!(
        out.status.success(),
        "this test needs to mount a tmpfs (root in a machine that allows it): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    TmpfsMount(at.to_owned())
}
