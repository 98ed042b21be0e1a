//! Fuzz target: the upload batch decoder, as the cloud ingest runs it on every request
//! body (`reflex_records::decode_batch`, then `WindowSummary::decode` on each window).
//!
//! Contract checked: no input panics or allocates without bound; the fuzzer's bytes are
//! tried both as the uploaded zstd frame and as the uncompressed body (random bytes rarely
//! get past zstd, so the second reaches the header, record and window parsing); both paths
//! agree; whatever is accepted hashes to its id and re-encodes, record by record and as a
//! whole batch, to bytes that decode to the same values.
#![no_main]

use libfuzzer_sys::fuzz_target;
use reflex_drift::monitor::WindowSummary;
use reflex_records::{
    batch_body_with_windows, batch_id, decode_batch, decode_body, DecodedBatch, JournalRecord,
};

fuzz_target!(|data: &[u8]| {
    // As uploaded: the body is a zstd frame.
    if let Ok(batch) = decode_batch(data, None) {
        check_accepted(&batch);
    }

    // As decompressed: the same bytes are the body.
    let direct = decode_body(data);
    let compressed = zstd::bulk::compress(data, 1).expect("zstd compresses into a Vec");
    let via_zstd = decode_batch(&compressed, None);
    assert_eq!(direct.is_ok(), via_zstd.is_ok(), "zstd changed the verdict");
    if let Ok(batch) = direct {
        assert_eq!(batch.id, batch_id(data));
        assert_eq!(
            decode_batch(&compressed, Some(&batch.id))
                .map(|b| b.id)
                .ok(),
            Some(batch.id.clone()),
            "the id the body hashes to is accepted"
        );
        check_accepted(&batch);
    }
});

fn check_accepted(batch: &DecodedBatch) {
    assert_eq!(batch.records.len() as u64, u64::from(batch.header.count));
    assert_eq!(batch.windows.len() as u64, u64::from(batch.header.windows));
    // Records: bytes -> value -> bytes is stable (compared as bytes: f32 NaNs are not
    // equal to themselves, their bits are).
    let encoded: Vec<(u64, Vec<u8>)> = batch
        .records
        .iter()
        .map(|(seq, r)| (*seq, r.encode()))
        .collect();
    for (_, bytes) in &encoded {
        let again = JournalRecord::decode(bytes).expect("an accepted record re-decodes");
        assert_eq!(&again.encode(), bytes);
    }
    // The whole batch rebuilt from what was accepted decodes to the same records and windows.
    let windows: Vec<&[u8]> = batch.windows.iter().map(Vec::as_slice).collect();
    let body = batch_body_with_windows(
        &batch.header.node,
        encoded.iter().map(|(seq, b)| (*seq, b.as_slice())),
        &windows,
    );
    let rebuilt = decode_body(&body).expect("a batch rebuilt from accepted parts decodes");
    let rebuilt_records: Vec<(u64, Vec<u8>)> = rebuilt
        .records
        .iter()
        .map(|(seq, r)| (*seq, r.encode()))
        .collect();
    assert_eq!(rebuilt_records, encoded);
    assert_eq!(rebuilt.windows, batch.windows);
    // Window summaries: the cloud decodes each one (a failure is a 400, never a panic).
    for w in &batch.windows {
        if let Ok(summary) = WindowSummary::decode(w) {
            let bytes = summary.encode();
            let again = WindowSummary::decode(&bytes).expect("an accepted window re-decodes");
            assert_eq!(again.encode(), bytes);
        }
    }
}
