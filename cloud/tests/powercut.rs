//! reflex-cloud's store under real power cuts (the `reflex-powercut` FUSE harness): the
//! ingest stores batches on a mount whose unsynced writes a cut drops, is cut at random
//! moments while a board posts, and restarts. No batch the cloud acknowledged (HTTP 2xx
//! seen by the board) may be missing after a cut, and no event may be stored twice. Needs
//! root and /dev/fuse. The seed is printed (`POWERCUT_SEED` replays one).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::{batch_of, batch_request, record, Server, NODE, T0_US, TOKEN};
use reflex_cloud::table::{read_parquet, EventColumns};
use reflex_powercut::seed::{next, seed};
use reflex_powercut::PowerCutMount;
use reflex_records::EncodedBatch;

/// At most 9 batches are acknowledged per round (see the posters' limit): enough for
/// every cut, the rest posted after the last one.
const BATCHES: usize = 400;
const RECORDS_PER_BATCH: u64 = 20;
const CUTS: u64 = 40;

/// POSTs a batch; `None` when the connection failed (the server was cut meanwhile).
async fn post(client: &reqwest::Client, url: &str, b: &EncodedBatch) -> Option<u16> {
    let resp = batch_request(client, url, NODE, TOKEN, &b.id, b.compressed.clone())
        .send()
        .await
        .ok()?;
    Some(resp.status().as_u16())
}

fn event_files(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            event_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "parquet") {
            out.push(p);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_the_cloud_acknowledged_survive_power_cuts_and_no_event_is_stored_twice() {
    let mut rng = seed("POWERCUT_SEED", "cloud");
    let dir = tempfile::tempdir().unwrap();
    let mut fs = PowerCutMount::mount(dir.path()).expect("mounting the power-cut filesystem");
    let root = fs.path().join("store");
    let batches: Arc<Vec<EncodedBatch>> = Arc::new(
        (0..BATCHES as u64)
            .map(|b| {
                let recs: Vec<_> = (0..RECORDS_PER_BATCH)
                    .map(|i| {
                        let seq = b * RECORDS_PER_BATCH + i;
                        record(&format!("dev-{}", seq % 4), seq, T0_US + seq * 1000)
                    })
                    .collect();
                batch_of(&recs, b * RECORDS_PER_BATCH + 1)
            })
            .collect(),
    );
    let acked = Arc::new(Mutex::new(BTreeSet::<usize>::new()));
    let client = reqwest::Client::new();
    let mut cuts = 0u64;
    loop {
        let pending: Vec<usize> = (0..BATCHES)
            .filter(|b| !acked.lock().unwrap().contains(b))
            .collect();
        if pending.is_empty() {
            break;
        }
        let server = Server::start(&root, 1 << 20).await;
        let url = server.url();
        // The cut lands after a random number of acknowledgements in this round.
        let target = acked.lock().unwrap().len() + 1 + (next(&mut rng) % 6) as usize;
        // The posters keep posting past the target, so that the cut lands mid-store, but
        // stop two acknowledgements beyond it: a round acknowledges at most 9 batches
        // (6 to the target, 2 more, 1 in flight), so `BATCHES` lasts for every cut however
        // slowly the machine runs this task. The last round posts everything left.
        let limit = if cuts < CUTS { target + 2 } else { usize::MAX };
        // Two boards' worth of concurrent posts, so that a cut lands mid-store.
        let mut posters = Vec::new();
        for half in 0..2 {
            let (batches, acked, client, url) =
                (batches.clone(), acked.clone(), client.clone(), url.clone());
            let mine: Vec<usize> = pending.iter().copied().skip(half).step_by(2).collect();
            posters.push(tokio::spawn(async move {
                for b in mine {
                    if acked.lock().unwrap().len() >= limit {
                        return;
                    }
                    match post(&client, &url, &batches[b]).await {
                        Some(s) if (200..300).contains(&s) => {
                            acked.lock().unwrap().insert(b);
                        }
                        Some(_) => {}
                        None => return,
                    }
                }
            }));
        }
        if cuts < CUTS {
            let round_limit = tokio::time::Instant::now() + Duration::from_secs(30);
            while acked.lock().unwrap().len() < target && !posters.iter().all(|p| p.is_finished()) {
                assert!(
                    tokio::time::Instant::now() < round_limit,
                    "no progress in a round"
                );
                tokio::task::yield_now().await;
            }
            let acked_at_cut = acked.lock().unwrap().clone();
            let report = fs.power_off();
            server.shutdown.cancel();
            let _ = server.task.await;
            for p in posters {
                p.abort();
                let _ = p.await;
            }
            // A batch acknowledged by an answer sent before the cut still counts.
            let acked_now = acked.lock().unwrap().clone();
            cuts += 1;
            eprintln!(
                "cut {cuts}: {} batches acknowledged ({} at the cut instant), dropped {} dirty bytes",
                acked_now.len(),
                acked_at_cut.len(),
                report.dirty_bytes_dropped
            );
            fs.power_on().expect("remount");
        } else {
            for p in posters {
                p.await.unwrap();
            }
            server.shutdown.cancel();
            let _ = server.task.await;
        }
        // After every restart: every acknowledged batch is there, marker and files.
        let storage = reflex_cloud::storage::Storage::local(root.clone()).unwrap();
        let acked_now: Vec<usize> = acked.lock().unwrap().iter().copied().collect();
        for b in acked_now {
            let m = storage
                .marker(&batches[b].id)
                .await
                .unwrap()
                .unwrap_or_else(|| {
                    panic!("batch {b} was acknowledged, its marker is gone after cut {cuts}")
                });
            assert_eq!(m.records as u64, RECORDS_PER_BATCH);
            for f in &m.files {
                let bytes = storage
                    .get(f)
                    .await
                    .unwrap_or_else(|e| panic!("batch {b}: file {f} gone after cut {cuts}: {e}"));
                read_parquet(bytes).unwrap_or_else(|e| panic!("batch {b}: {f} unreadable: {e}"));
            }
        }
    }
    assert_eq!(cuts, CUTS);
    // Every event exactly once across every event file under the store (orphans included).
    let mut files = Vec::new();
    event_files(&root, &mut files);
    let mut seen: BTreeMap<(String, u64), usize> = BTreeMap::new();
    for f in &files {
        let bytes = Bytes::from(std::fs::read(f).unwrap());
        for rb in read_parquet(bytes).unwrap() {
            let c = EventColumns::of(&rb).unwrap();
            for i in 0..rb.num_rows() {
                *seen
                    .entry((c.device.value(i).to_owned(), c.seq.value(i)))
                    .or_default() += 1;
            }
        }
    }
    let twice: Vec<_> = seen.iter().filter(|(_, &n)| n > 1).collect();
    assert!(
        twice.is_empty(),
        "events stored twice: {:?}",
        &twice[..twice.len().min(5)]
    );
    assert_eq!(seen.len() as u64, BATCHES as u64 * RECORDS_PER_BATCH);
    assert_eq!(fs.stats().cuts, CUTS);
}
