use super::*;

#[test]
fn a_batch_goes_when_full_by_count_bytes_or_more_waiting_or_old_enough() {
    let p = BatchPolicy {
        max_records: 10,
        max_bytes: 1000,
        max_age: Duration::from_secs(30),
    };
    let young = Duration::from_secs(5);
    assert_eq!(p.readiness(0, 0, young, false), Readiness::Empty);
    assert_eq!(
        p.readiness(3, 300, young, false),
        Readiness::Wait(Duration::from_secs(25))
    );
    assert_eq!(p.readiness(10, 300, young, false), Readiness::Send);
    assert_eq!(p.readiness(3, 1000, young, false), Readiness::Send);
    assert_eq!(p.readiness(3, 300, young, true), Readiness::Send);
    assert_eq!(
        p.readiness(1, 10, Duration::from_secs(30), false),
        Readiness::Send
    );
}

#[test]
fn backoff_caps_double_up_to_the_maximum_and_jitter_spans_zero_to_the_cap() {
    let b = Backoff {
        base: Duration::from_millis(100),
        max: Duration::from_secs(1),
    };
    assert_eq!(b.cap(0), Duration::from_millis(100));
    assert_eq!(b.cap(1), Duration::from_millis(200));
    assert_eq!(b.cap(3), Duration::from_millis(800));
    assert_eq!(b.cap(4), Duration::from_secs(1));
    assert_eq!(b.cap(1000), Duration::from_secs(1));
    assert_eq!(b.delay(3, 0.0), Duration::ZERO);
    assert_eq!(b.delay(3, 0.5), Duration::from_millis(400));
    assert!(b.delay(3, 0.999_999) < Duration::from_millis(800));
    assert_eq!(
        b.delay(2, 7.0),
        Duration::from_millis(400),
        "unit is clamped"
    );
}

#[test]
fn the_token_bucket_lets_a_burst_through_then_paces_at_the_rate() {
    let mut t = TokenBucket::new(1000, 2000, Duration::ZERO);
    assert_eq!(t.reserve(2000, Duration::ZERO), Duration::ZERO);
    assert_eq!(t.reserve(500, Duration::ZERO), Duration::from_millis(500));
    // At 0.5 s the debt is paid; a further 1000 bytes need 1 s more.
    assert_eq!(
        t.reserve(1000, Duration::from_millis(500)),
        Duration::from_secs(1)
    );
    // After a long quiet spell the bucket holds at most the burst.
    assert_eq!(t.reserve(0, Duration::from_secs(100)), Duration::ZERO);
    assert_eq!(
        t.reserve(3000, Duration::from_secs(100)),
        Duration::from_secs(1)
    );
}

#[test]
fn the_upload_window_is_open_inside_and_says_how_long_until_it_opens_outside() {
    let day = 86_400u64 * 20_000;
    let w = UploadWindow {
        start_minute: 60,
        end_minute: 120,
    };
    assert_eq!(w.wait(day + 3600), Duration::ZERO);
    assert_eq!(w.wait(day + 7199), Duration::ZERO);
    assert_eq!(w.wait(day + 7200), Duration::from_secs(86_400 - 3600));
    assert_eq!(w.wait(day + 1800), Duration::from_secs(1800));
    let night = UploadWindow {
        start_minute: 22 * 60,
        end_minute: 6 * 60,
    };
    assert_eq!(night.wait(day + 23 * 3600), Duration::ZERO);
    assert_eq!(night.wait(day + 3600), Duration::ZERO);
    assert_eq!(night.wait(day + 12 * 3600), Duration::from_secs(10 * 3600));
    let always = UploadWindow {
        start_minute: 5,
        end_minute: 5,
    };
    assert_eq!(always.wait(day + 12_345), Duration::ZERO);
}

fn inflight(first: u64, last: u64, count: u32) -> InFlight {
    InFlight {
        id: "b".into(),
        first_seq: first,
        last_seq: last,
        count,
        compressed: vec![],
        windows: vec![],
    }
}

fn ack_refusing(seqs: &[u64]) -> BatchAck {
    BatchAck {
        batch_id: "b".into(),
        status: AckStatus::Stored,
        records: 3,
        version: ACK_VERSION,
        refused: seqs
            .iter()
            .map(|&s| crate::record::RefusedRecord {
                index: 0,
                journal_seq: s,
                device: "d".into(),
                seq: 1,
                reason: crate::record::RefusalReason::FeaturesMissing,
            })
            .collect(),
    }
}

#[test]
fn refusals_must_name_distinct_records_of_the_batch_in_order() {
    let b = inflight(10, 12, 3);
    assert!(check_refusals(&ack_refusing(&[]), &b).is_ok());
    assert!(check_refusals(&ack_refusing(&[10, 12]), &b).is_ok());
    for bad in [&[9][..], &[13], &[11, 11], &[12, 10], &[10, 11, 12, 12]] {
        let e = check_refusals(&ack_refusing(bad), &b).unwrap_err();
        assert!(matches!(e, UploadError::BadAck { .. }), "{bad:?}: {e}");
    }
}
