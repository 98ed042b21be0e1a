//! Helpers shared by the journal's crash tests: a reproducible random source and the
//! `journal-crash-child` process they kill (or cut the power under).

#![allow(dead_code)] // each test binary uses its own subset

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

pub use reflex_powercut::seed::{next, seed};

/// A running `journal-crash-child` appending to a journal, and the lines it reports
/// (`start N`, then `durable N` as group commits land).
pub struct CrashChild {
    child: Child,
    lines: mpsc::Receiver<String>,
    reader: Option<JoinHandle<()>>,
    /// The first sequence it appends.
    pub start: u64,
    /// The highest sequence it reported durable so far.
    pub durable: u64,
}

impl CrashChild {
    /// Starts the child on the journal at `dir` and waits for its `start` line.
    pub fn spawn(dir: &Path, stderr: Stdio, durable_before: u64) -> CrashChild {
        let mut child = Command::new(env!("CARGO_BIN_EXE_journal-crash-child"))
            .arg(dir)
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("spawn child");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let start_line = lines
            .recv_timeout(Duration::from_secs(30))
            .expect("child starts");
        let start = start_line.strip_prefix("start ").unwrap().parse().unwrap();
        CrashChild {
            child,
            lines,
            reader: Some(reader),
            start,
            durable: durable_before,
        }
    }

    /// Reads its reports until it has reported `target` durable.
    pub fn wait_durable(&mut self, target: u64, round: impl std::fmt::Display) {
        while self.durable < target {
            let line = self
                .lines
                .recv_timeout(Duration::from_secs(30))
                .unwrap_or_else(|_| panic!("round {round}: no progress past {}", self.durable));
            self.note(&line);
        }
    }

    /// SIGKILLs it, then takes the reports its pipe still held (made before the kill).
    pub fn kill(&mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().unwrap();
        let held: Vec<String> = self.lines.try_iter().collect();
        for line in held {
            self.note(&line);
        }
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }

    fn note(&mut self, line: &str) {
        if let Some(n) = line.strip_prefix("durable ") {
            self.durable = self.durable.max(n.parse().unwrap());
        }
    }
}
