//! Property tests: every valid message survives encode → decode unchanged (binary and
//! JSON), and no input of any shape makes the decoders panic.

use proptest::prelude::*;
use reflex_wire::{
    Action, Command, DecisionSource, DecodeError, EventKind, ModelRef, SensorEvent, Window,
    FORMAT_VERSION, MAX_CHANNELS, MAX_COMMAND_BYTES, MAX_DEVICE_ID_LEN, MAX_EVENT_BYTES,
    MAX_SAMPLES_PER_CHANNEL,
};

fn device_id() -> impl Strategy<Value = reflex_wire::DeviceId> {
    proptest::string::string_regex(&format!("[A-Za-z0-9_.:-]{{1,{MAX_DEVICE_ID_LEN}}}"))
        .unwrap()
        .prop_map(|s| s.as_str().try_into().unwrap())
}

fn window() -> impl Strategy<Value = Window> {
    (1..=MAX_CHANNELS, 1..=MAX_SAMPLES_PER_CHANNEL).prop_flat_map(|(c, n)| {
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

fn event() -> impl Strategy<Value = SensorEvent> {
    (
        device_id(),
        any::<u64>(),
        any::<u64>(),
        prop_oneof![Just(EventKind::Periodic), Just(EventKind::Triggered)],
        window(),
        any::<i16>(),
        any::<Option<u32>>(),
    )
        .prop_map(|(device, seq, ts, kind, window, temp, hint)| SensorEvent {
            version: FORMAT_VERSION,
            device,
            seq,
            timestamp_us: ts,
            kind,
            window,
            temperature_centi_c: temp,
            deadline_hint_us: hint,
        })
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
                version: FORMAT_VERSION,
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
    fn every_valid_event_round_trips(ev in event()) {
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
    fn every_truncation_of_a_valid_event_is_refused(ev in event(), cut in any::<prop::sample::Index>()) {
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
        ev in event(), flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8)
    ) {
        let mut buf = [0u8; MAX_EVENT_BYTES];
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

#[test]
fn the_largest_valid_event_fits_the_size_limit() {
    let ev = SensorEvent {
        version: FORMAT_VERSION,
        device: "x".repeat(MAX_DEVICE_ID_LEN).as_str().try_into().unwrap(),
        seq: u64::MAX,
        timestamp_us: u64::MAX,
        kind: EventKind::Triggered,
        window: Window {
            channels: MAX_CHANNELS as u8,
            samples_per_channel: MAX_SAMPLES_PER_CHANNEL as u16,
            sample_rate_hz: u32::MAX,
            scale: f32::MAX,
            samples: heapless::Vec::from_slice(&[i16::MIN; MAX_CHANNELS * MAX_SAMPLES_PER_CHANNEL])
                .unwrap(),
        },
        temperature_centi_c: i16::MIN,
        deadline_hint_us: Some(u32::MAX),
    };
    let mut buf = [0u8; 2 * MAX_EVENT_BYTES];
    let len = ev.encode(&mut buf).unwrap().len();
    assert!(len <= MAX_EVENT_BYTES, "largest event is {len} bytes");
}
