use super::*;
use bytes::Bytes;
use reflex_records::{DeadlineOutcome, StageTimings};
use reflex_wire::{DeviceId, ModelRef, SensorEvent};

use crate::pipeline::types::{EventKey, MissCause};

fn stub(pkid: u16) -> HeldAck {
    let mut p = rumqttc::Publish::new("", rumqttc::QoS::AtLeastOnce, Bytes::new());
    p.pkid = pkid;
    HeldAck::of(&p, 1, std::time::Instant::now())
}

#[test]
fn acks_are_released_in_order_only_once_durable() {
    let mut p = PendingAcks::default();
    p.push(3, stub(30));
    p.push(4, stub(40));
    p.push(9, stub(90));
    assert!(p.release(2).is_empty());
    let released: Vec<u16> = p.release(4).iter().map(|a| a.publish.pkid).collect();
    assert_eq!(released, [30, 40]);
    assert_eq!(p.len(), 1);
    assert!(p.release(8).is_empty());
    assert_eq!(p.drain().len(), 1);
    assert!(p.is_empty());
}

fn key(seq: u64) -> EventKey {
    (DeviceId::try_from("dev-1").unwrap(), seq)
}

fn full() -> StoreError {
    StoreError::Full {
        live_bytes: 0,
        files_bytes: 0,
        quota_bytes: 0,
        fs_free_bytes: 0,
    }
}

#[test]
fn a_redelivery_is_acked_only_once_the_original_record_is_durable() {
    let mut l = Ledger::default();
    let mut next = 0u64;
    let mut journal = |_: &[u8]| {
        next += 1;
        Ok(next)
    };
    // Redelivered while still being decided: held with the original.
    l.accepted(key(1));
    assert!(l.duplicate(&key(1), stub(11)).is_none());
    let (filed, _) = l.decided(Some(key(1)), Some(stub(10)), vec![1], &mut journal);
    assert_eq!(filed, Filed::Appended);
    // Redelivered again once appended, not yet durable: held too.
    assert!(l.duplicate(&key(1), stub(12)).is_none());
    let acked: Vec<u16> = l.durable(1).iter().map(|a| a.publish.pkid).collect();
    assert_eq!(acked, [10, 11, 12]);
    // Durable (or from an earlier run): acked at once.
    assert_eq!(
        l.duplicate(&key(1), stub(13)).map(|a| a.publish.pkid),
        Some(13)
    );
    assert_eq!(
        l.duplicate(&key(7), stub(70)).map(|a| a.publish.pkid),
        Some(70)
    );
    assert_eq!(l.owed(), 0);
}

#[test]
fn a_refused_record_is_kept_in_order_with_its_redeliveries_and_journaled_once_space_returns() {
    let mut l = Ledger::default();
    let mut appended: Vec<Vec<u8>> = Vec::new();
    let mut room = false;
    for seq in 1..=3 {
        l.accepted(key(seq));
    }
    let mut journal = |b: &[u8], room: bool| {
        if room {
            appended.push(b.to_vec());
            Ok(appended.len() as u64)
        } else {
            Err(full())
        }
    };
    for seq in 1..=2 {
        let (filed, err) = l.decided(
            Some(key(seq)),
            Some(stub(seq as u16)),
            vec![seq as u8],
            |b| journal(b, room),
        );
        assert_eq!(filed, Filed::Retained);
        assert!(matches!(err, Some(StoreError::Full { .. })));
    }
    assert!(
        l.duplicate(&key(1), stub(100)).is_none(),
        "refused: not acked"
    );
    assert!(l.durable(u64::MAX).is_empty());
    room = true;
    // The next decision goes in behind the refused ones.
    let (filed, _) = l.decided(Some(key(3)), Some(stub(3)), vec![3], |b| journal(b, room));
    assert_eq!(filed, Filed::Appended);
    assert_eq!(l.retained(), 0);
    assert_eq!(appended, [vec![1u8], vec![2], vec![3]]);
    let acked: Vec<u16> = l.durable(3).iter().map(|a| a.publish.pkid).collect();
    assert_eq!(acked, [1, 100, 2, 3]);
    assert_eq!(l.owed(), 0);
}

#[test]
fn records_a_reopened_journal_lost_go_back_in_order_with_their_acks_and_are_acked_once_durable_again(
) {
    let mut l = Ledger::default();
    let mut log: Vec<(u64, Vec<u8>)> = Vec::new();
    let mut next = 1u64;
    let mut journal = |b: &[u8]| {
        log.push((next, b.to_vec()));
        next += 1;
        Ok(next - 1)
    };
    for seq in 1..=4 {
        l.accepted(key(seq));
        let (filed, _) = l.decided(
            Some(key(seq)),
            Some(stub(seq as u16)),
            vec![seq as u8],
            &mut journal,
        );
        assert_eq!(filed, Filed::Appended);
    }
    // A redelivery of event 3 waits with it.
    assert!(l.duplicate(&key(3), stub(33)).is_none());
    // The handle broke; the reopened journal kept sequences 1..=2, lost 3 and 4
    // (the next sequence would have been 5).
    let acked: Vec<u16> = l.reopened(2, 5).iter().map(|a| a.publish.pkid).collect();
    assert_eq!(acked, [1, 2], "what was kept is durable: acked");
    assert_eq!(l.retained(), 2);
    assert!(
        l.durable(u64::MAX).is_empty(),
        "a lost record is never acked"
    );
    assert!(
        l.duplicate(&key(4), stub(44)).is_none(),
        "a redelivery of a lost one waits too"
    );
    // Appended again, in order, at new sequences (the journal continues at 5).
    next = 5;
    let mut again: Vec<(u64, Vec<u8>)> = Vec::new();
    l.retry(|b| {
        again.push((next, b.to_vec()));
        next += 1;
        Ok(next - 1)
    })
    .unwrap();
    assert_eq!(again, [(5, vec![3u8]), (6, vec![4])]);
    assert!(l.durable(5).iter().map(|a| a.publish.pkid).eq([3, 33]));
    assert!(l.durable(6).iter().map(|a| a.publish.pkid).eq([4, 44]));
    assert_eq!(l.owed(), 0);
}

/// What the recorder journals (the record borrowed from the decision) is the owned
/// record's encoding, byte for byte.
fn assert_borrowed_encodes_the_same(
    d: &Decided,
    r: &JournalRecord,
    set: Option<&reflex_records::EncodedFeatureSet>,
) {
    let borrowed = journal_record_ref("board-1", d, &r.model_input, &r.features);
    assert_eq!(
        borrowed.encode_full(d.decision.as_ref(), set),
        r.encode_full(d.decision.as_ref(), set)
    );
}

#[test]
fn a_record_carries_the_event_the_decision_and_the_miss_cause() {
    let mut dev = reflex_sim::device::SimDevice::new(1, reflex_sim::signal::Condition::ALL[1], 3);
    let (_, bytes) = dev.next_encoded(0, reflex_sim::signal::Distortion::NONE);
    let event = SensorEvent::decode(bytes).unwrap();
    let d = Decided {
        route: 0,
        event: event.clone().into(),
        payload: Bytes::copy_from_slice(bytes),
        arrival_unix_us: 42,
        command: vec![1, 2, 3],
        class: 1,
        logits: vec![],
        source: DecisionSource::Fallback,
        model: ModelRef {
            name: heapless::String::try_from("fallback").unwrap(),
            version: heapless::String::try_from("1.0.0").unwrap(),
        },
        timings: StageTimings::default(),
        miss: Some(MissCause::ModelTooSlow),
        ack: None,
        decision: None,
        features: Arc::new(FeaturePlan::Demo),
    };
    let mut features = Vec::new();
    let (input, ok) = model_input_and_features(&d, &FeaturePlan::Demo, &mut features);
    assert!(ok);
    let r = journal_record("board-1", &d, input, Some(&features));
    assert_borrowed_encodes_the_same(&d, &r, None);
    assert_eq!(
        (r.node.as_str(), r.device.as_str()),
        ("board-1", event.device.as_str())
    );
    assert_eq!(r.payload, bytes.to_vec());
    assert_eq!(r.model_input.len(), 192);
    assert_eq!(r.features.len(), reflex_models::FEATURE_COUNT);
    assert_eq!(
        r.outcome,
        DeadlineOutcome::Miss {
            cause: "model_too_slow".into()
        }
    );
    assert_eq!(r.source, reflex_records::DecisionSource::Fallback);
    assert_eq!(JournalRecord::decode(&r.encode()).unwrap(), r);
}

#[test]
fn a_record_whose_features_cannot_be_computed_is_journaled_with_none_as_its_flag() {
    let mut dev = reflex_sim::device::SimDevice::new(1, reflex_sim::signal::Condition::ALL[1], 3);
    let (_, bytes) = dev.next_encoded(0, reflex_sim::signal::Distortion::NONE);
    let mut event = SensorEvent::decode(bytes).unwrap();
    // A window the wire accepts but shorter than the model's.
    let channels = usize::from(event.window.channels);
    event.window.samples_per_channel = 10;
    event.window.samples.truncate(channels * 10);
    let d = Decided {
        route: 0,
        event: event.into(),
        payload: Bytes::copy_from_slice(bytes),
        arrival_unix_us: 42,
        command: vec![1],
        class: 0,
        logits: vec![],
        source: DecisionSource::Rule,
        model: ModelRef {
            name: heapless::String::try_from("rule").unwrap(),
            version: heapless::String::try_from("1").unwrap(),
        },
        timings: StageTimings::default(),
        miss: None,
        ack: None,
        decision: None,
        features: Arc::new(FeaturePlan::Demo),
    };
    let mut features = vec![1.0];
    let (input, ok) = model_input_and_features(&d, &FeaturePlan::Demo, &mut features);
    assert!(!ok && features.is_empty());
    let r = journal_record("board-1", &d, input, None);
    assert_borrowed_encodes_the_same(&d, &r, None);
    assert!(r.features.is_empty(), "{:?}", r.features);
    assert_eq!(r.model_input.len(), channels * 10, "the input as received");
    assert_eq!(JournalRecord::decode(&r.encode()).unwrap(), r);
}

#[test]
fn a_record_of_a_format_two_route_carries_its_declared_features_under_their_set() {
    use reflex_models::manifest::Dim;
    let mut m = reflex_models::Manifest::load(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../models/examples/test/score16.manifest.json"
    ))
    .unwrap();
    m.format2.as_mut().unwrap().monitoring = serde_json::from_str(
        r#"{"window_stats": {"stats": ["rms", "p2p"], "channels": ["x", "y", "z"]}, "scalars": ["temperature"]}"#,
    )
    .unwrap();
    m.input.as_mut().unwrap().shape = vec![Dim::Fixed(1), Dim::Fixed(3), Dim::Fixed(64)];
    let plan = FeaturePlan::of(&m);
    let mut dev = reflex_sim::device::SimDevice::new(1, reflex_sim::signal::Condition::ALL[2], 5);
    let (_, bytes) = dev.next_encoded(0, reflex_sim::signal::Distortion::NONE);
    let event = SensorEvent::decode(bytes).unwrap();
    let d = Decided {
        route: 0,
        event: event.clone().into(),
        payload: Bytes::copy_from_slice(bytes),
        arrival_unix_us: 42,
        command: vec![1],
        class: 0,
        logits: vec![0.2],
        source: DecisionSource::Model,
        model: ModelRef {
            name: heapless::String::try_from("score16").unwrap(),
            version: heapless::String::try_from("0.1.0").unwrap(),
        },
        timings: StageTimings::default(),
        miss: None,
        ack: None,
        decision: None,
        features: Arc::new(FeaturePlan::Demo),
    };
    let mut features = Vec::new();
    let (input, ok) = model_input_and_features(&d, &plan, &mut features);
    assert!(ok);
    let r = journal_record("board-1", &d, input, Some(&features));
    assert_eq!(r.features.len(), 7);
    assert_eq!(r.features[6], event.temperature_c(), "the scalar last");
    assert_borrowed_encodes_the_same(&d, &r, plan.feature_set());
    let bytes = r.encode_full(None, plan.feature_set());
    let decoded = JournalRecord::decode_full(&bytes).unwrap();
    assert_eq!(decoded.record, r);
    let set = decoded.feature_set.expect("the record names its set");
    assert_eq!(
        set.names,
        [
            "rms_x",
            "rms_y",
            "rms_z",
            "p2p_x",
            "p2p_y",
            "p2p_z",
            "temperature"
        ]
    );
    assert_eq!(set.model.name, "score16");
}
