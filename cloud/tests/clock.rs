//! A board whose clock says 1970, through the real path: its journal (real sled) shipped by
//! the journal crate's uploader to the real ingest over HTTP. Its records land under the
//! date they reached the cloud, flagged `clock_suspect` with the board's own stamp kept,
//! and rescoring today's range (real cloud model through tract) includes and counts them.

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arrow_array::{Array, BooleanArray, UInt64Array};
use common::{rescore_config, Fleet, Server, NODE, TOKEN};
use reflex_cloud::config::{IngestConfig, NodeToken};
use reflex_cloud::layout::Day;
use reflex_cloud::table::{read_parquet, EventColumns};
use reflex_cloud::{hash_token, RescoreJob};
use reflex_journal::store::{Journal, StoreConfig};
use reflex_journal::upload::{Backoff, BatchPolicy, Step, UploadConfig, Uploader};
use tokio_util::sync::CancellationToken;

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

#[tokio::test]
async fn a_board_whose_clock_says_1970_is_filed_under_its_arrival_flagged_and_rescored() {
    let dir = tempfile::tempdir().unwrap();
    // The default clock policy: nothing before this reflex-cloud's build date.
    let cfg = IngestConfig {
        listen: "127.0.0.1:0".into(),
        nodes: vec![NodeToken::new(NODE, hash_token(TOKEN))],
        ..IngestConfig::default()
    };
    let s = Server::start_config(&dir.path().join("store"), &cfg).await;

    // Real decisions of a small fleet, stamped by a board clock that started at the epoch.
    let fleet = Fleet {
        seed: 3,
        devices: 2,
        drift_devices: 0,
        events_per_device: 150,
        period_us: 1_000_000,
        drift_start_s: 1e9,
        drift_ramp_s: 1.0,
    };
    let mut records = fleet.records();
    let first = records.iter().map(|r| r.arrival_unix_us).min().unwrap();
    for r in &mut records {
        r.arrival_unix_us = r.arrival_unix_us - first + 600_000_000; // 1970-01-01T00:10:00Z on
    }
    let (journal, _) = Journal::open(StoreConfig::new(dir.path().join("journal"))).unwrap();
    let journal = Arc::new(journal);
    for r in &records {
        journal.append(&r.encode()).unwrap();
    }
    journal.sync().unwrap();
    let mut up_cfg = UploadConfig::new(s.url(), TOKEN, NODE);
    up_cfg.batching = BatchPolicy {
        max_records: 1000,
        max_bytes: 8 << 20,
        max_age: Duration::ZERO,
    };
    up_cfg.backoff = Backoff {
        base: Duration::from_millis(5),
        max: Duration::from_millis(50),
    };
    let before = now_us();
    let mut up = Uploader::new(journal.clone(), up_cfg).unwrap();
    let id = match up.step().await.unwrap() {
        Step::Acked { id, refused, .. } => {
            assert_eq!(refused, 0);
            id
        }
        other => panic!("expected an ack, got {other:?}"),
    };
    let after = now_us();
    let n = records.len() as u64;
    assert_eq!(s.stats.records_clock_suspect.load(Ordering::Relaxed), n);

    // Filed under the day they reached the cloud, none under 1970, flagged, with the
    // board's stamp kept.
    let marker = s.storage.marker(&id).await.unwrap().expect("marker");
    let today = [Day::of_unix_us(before), Day::of_unix_us(after)];
    let mut seen = 0u64;
    for f in &marker.files {
        assert!(
            today.iter().any(|d| f.contains(&format!("date={d}"))),
            "{f} is not under the arrival date {today:?}"
        );
        for b in read_parquet(s.storage.get(f).await.unwrap()).unwrap() {
            let c = EventColumns::of(&b).unwrap();
            let flag = b
                .column_by_name("clock_suspect")
                .unwrap()
                .as_any()
                .downcast_ref::<BooleanArray>()
                .unwrap();
            let board = b
                .column_by_name("board_arrival_unix_us")
                .unwrap()
                .as_any()
                .downcast_ref::<UInt64Array>()
                .unwrap();
            for i in 0..c.len {
                assert!(flag.value(i));
                assert!(board.value(i) < 1_000_000_000, "the board's 1970 stamp");
                let t = c.arrival_unix_us.value(i);
                assert!(t >= before && t <= after, "{t} outside [{before}, {after}]");
                seen += 1;
            }
        }
    }
    assert_eq!(seen, n);

    // Rescoring the hour around now includes every one of them, and counts them.
    let rcfg = rescore_config(&dir.path().join("runs"), &fleet, 64);
    let job = RescoreJob::plan(
        s.storage.clone(),
        &rcfg,
        before - 3_600_000_000,
        after + 3_600_000_000,
    )
    .await
    .unwrap();
    let out = job.run(CancellationToken::new()).await.unwrap();
    let f = &out.report.figures;
    assert_eq!(f.clock_suspect, n, "flagged records counted");
    assert_eq!(f.fleet.events + f.unscorable, n, "every record rescored");
    assert_eq!(f.out_of_range, 0);
    s.stop().await;
}
