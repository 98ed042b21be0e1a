//! `kill -9` a process appending with group commit, several times at random moments: what it
//! reported durable is always there after reopening, as a prefix in order.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::{next, seed, CrashChild};

use reflex_journal::record::JournalRecord;
use reflex_journal::store::{Journal, StoreConfig};

#[test]
fn a_journal_killed_with_sigkill_at_random_moments_keeps_everything_it_reported_durable_as_a_prefix(
) {
    let mut rng = seed("CRASH_SEED", "sigkill");
    let dir = tempfile::tempdir().unwrap();
    let mut durable_before = 0u64;
    for round in 0..6 {
        let mut child = CrashChild::spawn(dir.path(), Stdio::inherit(), durable_before);
        let start = child.start;
        assert_eq!(
            start,
            durable_before + 1,
            "round {round}: continues after the last durable record at least"
        );
        // Kill once it has reported a random amount of progress, plus a random few hundred µs
        // so the kill also lands between group commits.
        let target = start + 200 + next(&mut rng) % 3000;
        child.wait_durable(target, round);
        std::thread::sleep(Duration::from_micros(next(&mut rng) % 3000));
        child.kill();
        let durable = child.durable;

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
