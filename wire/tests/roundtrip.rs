//! Property tests: every valid message of either event version survives encode → decode
//! unchanged (binary and JSON), a small-capacity decoder reads exactly the windows it can
//! hold, and no input of any shape makes the decoders panic.

use proptest::prelude::*;
use reflex_wire::{
    Action, Command, DecisionSource, DecodeError, EventKind, EventLimits, ModelRef, SensorEvent,
    Window, COMMAND_FORMAT_VERSION, EVENT_FORMAT_V1, EVENT_FORMAT_V2, MAX_COMMAND_BYTES,
    MAX_DEVICE_ID_LEN, MAX_EVENT_BYTES, V1_LIMITS, V2_LIMITS,
};

fn device_id() -> impl Strategy<Value = reflex_wire::DeviceId> {
    proptest::string::string_regex(&format!("[A-Za-z0-9_.:-]{{1,{MAX_DEVICE_ID_LEN}}}"))
        .unwrap()
        .prop_map(|s| s.as_str().try_into().unwrap())
}

/// Any window within `limits`.
fn window(limits: EventLimits) -> impl Strategy<Value = Window> {
    (1..=limits.max_channels, 1..=limits.max_samples_per_channel).prop_flat_map(|(c, n)| {
        (
            any::<u32>(),
            (1e-6f32..1e3f32),
            proptest::collection::vec(any::<i16>(), c * n),
        )
            .prop_map(move |(rate, scale, samples)| Window {
                channels: c as u8,
                samples_per_channel: n as u16,
                sample_rate_hz: rate,
                scale,
                samples: heapless::Vec::from_slice(&samples).unwrap(),
            })
    })
}

/// Any valid event of the version of `limits`.
fn event(limits: EventLimits) -> impl Strategy<Value = SensorEvent> {
    (
        device_id(),
        any::<u64>(),
        any::<u64>(),
        prop_oneof![Just(EventKind::Periodic), Just(EventKind::Triggered)],
        window(limits),
        any::<i16>(),
        any::<Option<u32>>(),
    )
        .prop_map(
            move |(device, seq, ts, kind, window, temp, hint)| SensorEvent {
                version: limits.version,
                device,
                seq,
                timestamp_us: ts,
                kind,
                window,
                temperature_centi_c: temp,
                deadline_hint_us: hint,
            },
        )
}

fn command() -> impl Strategy<Value = Command> {
    (
        device_id(),
        any::<u64>(),
        prop_oneof![
            Just(Action::Run),
            Just(Action::SlowDown),
            Just(Action::Inspect),
            Just(Action::Stop)
        ],
        any::<u8>(),
        prop_oneof![
            Just(DecisionSource::Model),
            Just(DecisionSource::Fallback),
            Just(DecisionSource::Rule)
        ],
        "[a-z0-9-]{1,24}",
        "[0-9.]{1,16}",
        any::<u64>(),
        any::<u32>(),
    )
        .prop_map(
            |(device, seq, action, class, source, name, version, at, lat)| Command {
                version: COMMAND_FORMAT_VERSION,
                device,
                seq,
                action,
                class,
                source,
                model: ModelRef {
                    name: name.as_str().try_into().unwrap(),
                    version: version.as_str().try_into().unwrap(),
                },
                decided_at_us: at,
                latency_us: lat,
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn every_valid_v1_event_round_trips(ev in event(V1_LIMITS)) {
        let mut buf = [0u8; MAX_EVENT_BYTES];
        let bytes = ev.encode(&mut buf).unwrap();
        prop_assert!(bytes.len() <= MAX_EVENT_BYTES);
        prop_assert_eq!(SensorEvent::decode(bytes).unwrap(), ev.clone());
        let json = reflex_wire::json::encode_event(&ev);
        prop_assert_eq!(reflex_wire::json::decode_event(&json).unwrap(), ev);
    }

    #[test]
    fn every_valid_command_round_trips(cmd in command()) {
        let mut buf = [0u8; MAX_COMMAND_BYTES];
        let bytes = cmd.encode(&mut buf).unwrap();
        prop_assert_eq!(Command::decode(bytes).unwrap(), cmd.clone());
        let json = reflex_wire::json::encode_command(&cmd);
        prop_assert_eq!(reflex_wire::json::decode_command(&json).unwrap(), cmd);
    }

    #[test]
    fn every_truncation_of_a_valid_v1_event_is_refused(ev in event(V1_LIMITS), cut in any::<prop::sample::Index>()) {
        let mut buf = [0u8; MAX_EVENT_BYTES];
        let bytes = ev.encode(&mut buf).unwrap();
        let cut = cut.index(bytes.len()); // strictly shorter than the whole
        let err = SensorEvent::decode(&bytes[..cut]).unwrap_err();
        prop_assert!(matches!(err, DecodeError::Truncated { .. }), "{err:?} at cut {cut}");
    }

    #[test]
    fn garbage_never_panics_the_decoders(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = SensorEvent::decode(&bytes);
        let _ = Command::decode(&bytes);
        let _ = reflex_wire::json::decode_event(&bytes);
        let _ = reflex_wire::json::decode_command(&bytes);
    }

    #[test]
    fn flipped_bytes_never_panic_and_never_yield_an_invalid_event(
        ev in prop_oneof![event(V1_LIMITS), event(V2_LIMITS)], flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8)
    ) {
        let mut buf = vec![0u8; MAX_EVENT_BYTES];
        let mut bytes = ev.encode(&mut buf).unwrap().to_vec();
        for (i, b) in flips {
            let i = i.index(bytes.len());
            bytes[i] ^= b | 1;
        }
        if let Ok(decoded) = SensorEvent::decode(&bytes) {
            prop_assert!(decoded.validate().is_ok());
        }
    }
}

proptest! {
    // Version 2 windows hold up to 8192 samples: fewer cases keep the run short.
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn every_valid_v2_event_round_trips(ev in event(V2_LIMITS)) {
        let mut buf = vec![0u8; MAX_EVENT_BYTES];
        let bytes = ev.encode(&mut buf).unwrap();
        prop_assert!(bytes.len() <= V2_LIMITS.max_event_bytes);
        prop_assert_eq!(bytes[0], EVENT_FORMAT_V2);
        prop_assert_eq!(SensorEvent::decode(bytes).unwrap(), ev.clone());
        let json = reflex_wire::json::encode_event(&ev);
        prop_assert!(json.len() <= reflex_wire::json::MAX_JSON_EVENT_BYTES);
        prop_assert_eq!(reflex_wire::json::decode_event(&json).unwrap(), ev);
    }

    #[test]
    fn a_v1_event_re_encodes_to_the_same_bytes(ev in event(V1_LIMITS)) {
        let mut buf = [0u8; MAX_EVENT_BYTES];
        let bytes = ev.encode(&mut buf).unwrap().to_vec();
        let decoded = SensorEvent::decode(&bytes).unwrap();
        prop_assert_eq!(decoded.version, EVENT_FORMAT_V1);
        let mut again = [0u8; MAX_EVENT_BYTES];
        prop_assert_eq!(&*decoded.encode(&mut again).unwrap(), &bytes[..]);
    }

    #[test]
    fn every_truncation_of_a_valid_v2_event_is_refused(ev in event(V2_LIMITS), cut in any::<prop::sample::Index>()) {
        let mut buf = vec![0u8; MAX_EVENT_BYTES];
        let bytes = ev.encode(&mut buf).unwrap();
        let cut = cut.index(bytes.len());
        let err = SensorEvent::decode(&bytes[..cut]).unwrap_err();
        prop_assert!(matches!(err, DecodeError::Truncated { .. }), "{err:?} at cut {cut}");
    }

    #[test]
    fn a_small_capacity_decoder_reads_exactly_the_windows_it_holds(ev in event(V2_LIMITS)) {
        let mut buf = vec![0u8; MAX_EVENT_BYTES];
        let bytes = ev.encode(&mut buf).unwrap();
        let samples = ev.window.samples.len();
        match SensorEvent::<256>::decode_with_capacity(bytes) {
            Ok(small) => {
                prop_assert!(samples <= 256);
                prop_assert_eq!(&small.window.samples[..], &ev.window.samples[..]);
                let mut again = vec![0u8; MAX_EVENT_BYTES];
                prop_assert_eq!(&*small.encode(&mut again).unwrap(), &*bytes);
            }
            Err(e) => prop_assert_eq!(e, DecodeError::OverCapacity { samples, capacity: 256 }),
        }
    }

    #[test]
    fn garbage_after_a_v2_version_byte_never_panics_the_decoder(
        bytes in proptest::collection::vec(any::<u8>(), 0..30_000)
    ) {
        let mut payload = vec![EVENT_FORMAT_V2];
        payload.extend(bytes);
        if let Ok(ev) = SensorEvent::decode(&payload) {
            prop_assert!(ev.validate().is_ok());
        }
        let _ = SensorEvent::<256>::decode_with_capacity(&payload);
    }
}

#[test]
fn the_largest_valid_v1_event_fits_the_v1_size_limit() {
    let ev: SensorEvent = SensorEvent {
        version: EVENT_FORMAT_V1,
        device: "x".repeat(MAX_DEVICE_ID_LEN).as_str().try_into().unwrap(),
        seq: u64::MAX,
        timestamp_us: u64::MAX,
        kind: EventKind::Triggered,
        window: Window {
            channels: V1_LIMITS.max_channels as u8,
            samples_per_channel: V1_LIMITS.max_samples_per_channel as u16,
            sample_rate_hz: u32::MAX,
            scale: f32::MAX,
            samples: heapless::Vec::from_slice(&[i16::MIN; V1_LIMITS.max_samples()]).unwrap(),
        },
        temperature_centi_c: i16::MIN,
        deadline_hint_us: Some(u32::MAX),
    };
    let mut buf = [0u8; 2 * MAX_EVENT_BYTES];
    let len = ev.encode(&mut buf).unwrap().len();
    assert!(
        len <= V1_LIMITS.max_event_bytes,
        "largest v1 event is {len} bytes"
    );
}
