//! `kill -9` a process appending with group commit, several times at random moments: what it
//! reported durable is always there after reopening, as a prefix in order.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reflex_journal::record::JournalRecord;
use reflex_journal::store::{Journal, StoreConfig};

/// xorshift64*: the kill moments, reproducible from the printed seed.
fn next(state: &mut u64) -> u64 {
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    state.wrapping_mul(0x2545_F491_4F6C_DD1D)
}

#[test]
fn a_journal_killed_with_sigkill_at_random_moments_keeps_everything_it_reported_durable_as_a_prefix(
) {
    let seed = std::env::var("CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    eprintln!("CRASH_SEED={seed}");
    let mut rng = seed;
    let dir = tempfile::tempdir().unwrap();
    let mut durable_before = 0u64;
    for round in 0..6 {
        let mut child = Command::new(env!("CARGO_BIN_EXE_journal-crash-child"))
            .arg(dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn child");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let start_line = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("child starts");
        let start: u64 = start_line.strip_prefix("start ").unwrap().parse().unwrap();
        assert_eq!(
            start,
            durable_before + 1,
            "round {round}: continues after the last durable record at least"
        );
        // Kill once it has reported a random amount of progress, plus a random few hundred µs
        // so the kill also lands between group commits.
        let target = start + 200 + next(&mut rng) % 3000;
        let mut durable = durable_before;
        while durable < target {
            let line = rx
                .recv_timeout(Duration::from_secs(30))
                .unwrap_or_else(|_| panic!("round {round}: no progress past {durable}"));
            if let Some(n) = line.strip_prefix("durable ") {
                durable = n.parse().unwrap();
            }
        }
        std::thread::sleep(Duration::from_micros(next(&mut rng) % 3000));
        child.kill().expect("SIGKILL");
        child.wait().unwrap();
        // Lines the pipe still held: reported before the kill.
        for line in rx.try_iter() {
            if let Some(n) = line.strip_prefix("durable ") {
                durable = durable.max(n.parse().unwrap());
            }
        }
        let _ = reader.join();

        assert!(
            !dir.path()
                .join(reflex_journal::store::CLEAN_MARKER)
                .exists(),
            "round {round}: a killed journal is not marked clean"
        );
        let (j, report) = Journal::open(StoreConfig::new(dir.path())).expect("reopen");
        assert!(
            !dir.path()
                .join(reflex_journal::store::RECOVERY_COPY_DIR)
                .exists(),
            "round {round}: the pre-recovery copy is removed once the journal opened fine"
        );
        assert!(
            report.moved_aside.is_none(),
            "round {round}: {:?}",
            report.moved_aside
        );
        let all = j.scan(0, usize::MAX, usize::MAX).unwrap();
        assert_eq!(
            all.first().map(|r| r.0),
            Some(1),
            "round {round}: nothing deleted"
        );
        for (k, (seq, value)) in all.iter().enumerate() {
            assert_eq!(*seq, k as u64 + 1, "round {round}: no hole before {seq}");
            let rec = JournalRecord::decode(value).expect("intact record");
            assert_eq!(
                rec.seq, *seq,
                "round {round}: record {seq} is the one appended there"
            );
        }
        let last = all.last().map_or(0, |r| r.0);
        assert!(
            last >= durable,
            "round {round}: reported durable through {durable}, only {last} survived"
        );
        eprintln!("round {round}: durable {durable}, survived {last}");
        assert_eq!(report.next_seq, last + 1);
        durable_before = last;
    }
}
