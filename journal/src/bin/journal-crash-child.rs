//! Test helper for `tests/crash.rs`: opens the journal at `argv[1]`, appends records with
//! group commit as fast as it can, and prints `durable <seq>` on stdout after every group
//! commit, until it is killed (or has appended `argv[2]` records). Each record's `seq` field
//! is its own journal sequence, so the parent can check what survived.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use reflex_journal::record::{
    DeadlineOutcome, DecisionSource, JournalRecord, ModelId, StageTimings,
};
use reflex_journal::store::{Appender, GroupCommit, Journal, StoreConfig};

fn main() {
    let mut args = std::env::args().skip(1);
    let dir = args
        .next()
        .expect("usage: journal-crash-child DIR [MAX_RECORDS]");
    let max: u64 = args
        .next()
        .map_or(1_000_000, |s| s.parse().expect("MAX_RECORDS"));
    let (journal, report) = Journal::open(StoreConfig::new(&dir)).expect("open journal");
    let journal = Arc::new(journal);
    println!("start {}", report.next_seq);
    let appender = Appender::start(
        journal.clone(),
        GroupCommit {
            max_records: 64,
            max_delay: Duration::from_millis(2),
        },
        |seq| {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "durable {seq}");
            let _ = out.flush();
        },
    );
    for _ in 0..max {
        let seq = journal.last_seq() + 1;
        let rec = JournalRecord {
            node: "crash".into(),
            device: format!("dev-{}", seq % 7),
            seq,
            arrival_unix_us: seq,
            payload: vec![(seq % 251) as u8; 200],
            model_input: vec![seq as f32; 192],
            features: vec![0.5; 13],
            logits: vec![0.1, 0.2, 0.3, 0.4],
            class: (seq % 4) as u8,
            command: vec![1; 40],
            model: ModelId {
                name: "edge".into(),
                version: "1".into(),
            },
            source: DecisionSource::Model,
            timings: StageTimings::default(),
            outcome: DeadlineOutcome::OnTime,
        };
        let got = appender.append(&rec).expect("append");
        assert_eq!(got, seq, "single writer: sequences follow last_seq");
    }
    appender.close().expect("close");
}
