//! Golden bytes: the exact postcard encoding of fixed messages. A failure here means the
//! wire format changed, which needs a new format version, not a new golden.

use reflex_wire::{
    Action, Command, DecisionSource, EventKind, ModelRef, SensorEvent, Window,
    COMMAND_FORMAT_VERSION, EVENT_FORMAT_V1, EVENT_FORMAT_V2, MAX_DEVICE_ID_LEN, MAX_EVENT_BYTES,
    MAX_SAMPLES,
};

fn fixed_event() -> SensorEvent {
    SensorEvent {
        version: EVENT_FORMAT_V1,
        device: "pump-7".try_into().unwrap(),
        seq: 300,
        timestamp_us: 1_700_000_000_000_000,
        kind: EventKind::Triggered,
        window: Window {
            channels: 2,
            samples_per_channel: 3,
            sample_rate_hz: 1000,
            scale: 0.5,
            samples: heapless::Vec::from_slice(&[0, 1, -1, 63, -64, 1000]).unwrap(),
        },
        temperature_centi_c: -250,
        deadline_hint_us: Some(2000),
    }
}

#[rustfmt::skip]
const EVENT_GOLDEN: &[u8] = &[
    0x01,                                     // version
    0x06, b'p', b'u', b'm', b'p', b'-', b'7', // device: len + utf8
    0xac, 0x02,                               // seq 300 (varint)
    0x80, 0x80, 0xf9, 0xc0, 0xc1, 0xc4, 0x82, 0x03, // timestamp 1.7e15 µs (varint)
    0x01,                                     // kind Triggered
    0x02,                                     // channels
    0x03,                                     // samples per channel (varint u16)
    0xe8, 0x07,                               // 1000 Hz (varint u32)
    0x00, 0x00, 0x00, 0x3f,                   // scale 0.5 (f32 LE)
    0x06,                                     // 6 samples
    0x00, 0x02, 0x01, 0x7e, 0x7f, 0xd0, 0x0f, // zigzag varints: 0 1 -1 63 -64 1000
    0xf3, 0x03,                               // temperature -250 (zigzag)
    0x01, 0xd0, 0x0f,                         // Some(2000)
];

#[test]
fn fixed_event_encodes_to_golden_bytes() {
    let mut buf = [0u8; reflex_wire::MAX_EVENT_BYTES];
    let bytes = fixed_event().encode(&mut buf).unwrap();
    assert_eq!(&*bytes, EVENT_GOLDEN);
}

#[test]
fn golden_bytes_decode_to_fixed_event() {
    assert_eq!(SensorEvent::decode(EVENT_GOLDEN).unwrap(), fixed_event());
}

/// Version 2: the same layout, with a window beyond version 1's 4 channels.
fn fixed_v2_event() -> SensorEvent {
    SensorEvent {
        version: EVENT_FORMAT_V2,
        device: "acc-1".try_into().unwrap(),
        seq: 1,
        timestamp_us: 2,
        kind: EventKind::Periodic,
        window: Window {
            channels: 5,
            samples_per_channel: 2,
            sample_rate_hz: 3200,
            scale: 0.25,
            samples: heapless::Vec::from_slice(&[0, 1, 2, 3, 4, -1, -2, -3, -4, -5]).unwrap(),
        },
        temperature_centi_c: 2000,
        deadline_hint_us: None,
    }
}

#[rustfmt::skip]
const V2_EVENT_GOLDEN: &[u8] = &[
    0x02,                                     // version 2
    0x05, b'a', b'c', b'c', b'-', b'1',       // device
    0x01,                                     // seq 1
    0x02,                                     // timestamp 2 µs
    0x00,                                     // kind Periodic
    0x05,                                     // 5 channels: beyond version 1
    0x02,                                     // samples per channel
    0x80, 0x19,                               // 3200 Hz
    0x00, 0x00, 0x80, 0x3e,                   // scale 0.25
    0x0a,                                     // 10 samples
    0x00, 0x02, 0x04, 0x06, 0x08,             // 0 1 2 3 4
    0x01, 0x03, 0x05, 0x07, 0x09,             // -1 -2 -3 -4 -5
    0xa0, 0x1f,                               // temperature 2000
    0x00,                                     // no deadline hint
];

#[test]
fn a_small_v2_event_encodes_to_its_golden_bytes_and_back() {
    let mut buf = [0u8; 128];
    let bytes = fixed_v2_event().encode(&mut buf).unwrap();
    assert_eq!(&*bytes, V2_EVENT_GOLDEN);
    assert_eq!(
        SensorEvent::decode(V2_EVENT_GOLDEN).unwrap(),
        fixed_v2_event()
    );
}

#[test]
fn the_v1_golden_event_read_as_v2_differs_only_in_its_version_byte() {
    let mut v2 = EVENT_GOLDEN.to_vec();
    v2[0] = EVENT_FORMAT_V2;
    let mut expected = fixed_event();
    expected.version = EVENT_FORMAT_V2;
    assert_eq!(SensorEvent::decode(&v2).unwrap(), expected);
}

/// The largest version 2 event: every field at its widest encoding.
fn largest_v2_event() -> SensorEvent {
    SensorEvent {
        version: EVENT_FORMAT_V2,
        device: "x".repeat(MAX_DEVICE_ID_LEN).as_str().try_into().unwrap(),
        seq: u64::MAX,
        timestamp_us: u64::MAX,
        kind: EventKind::Triggered,
        window: Window {
            channels: 8,
            samples_per_channel: 1024,
            sample_rate_hz: u32::MAX,
            scale: f32::MAX,
            samples: heapless::Vec::from_slice(&[i16::MIN; MAX_SAMPLES]).unwrap(),
        },
        temperature_centi_c: i16::MIN,
        deadline_hint_us: Some(u32::MAX),
    }
}

#[test]
fn the_largest_v2_event_has_its_golden_length_prefix_and_tail() {
    let mut buf = vec![0u8; MAX_EVENT_BYTES];
    let bytes = largest_v2_event().encode(&mut buf).unwrap();
    assert_eq!(bytes.len(), 24_654);
    assert!(bytes.len() <= MAX_EVENT_BYTES);
    let mut prefix = vec![0x02, 0x20];
    prefix.extend([b'x'; MAX_DEVICE_ID_LEN]);
    prefix.extend([0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]); // seq
    prefix.extend([0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]); // timestamp
    prefix.extend([0x01, 0x08, 0x80, 0x08]); // Triggered, 8 channels, 1024 per channel
    prefix.extend([0xff, 0xff, 0xff, 0xff, 0x0f]); // u32::MAX Hz
    prefix.extend([0xff, 0xff, 0x7f, 0x7f]); // f32::MAX
    prefix.extend([0x80, 0x40]); // 8192 samples
    prefix.extend([0xff, 0xff, 0x03]); // first sample, i16::MIN
    assert_eq!(&bytes[..prefix.len()], &prefix[..]);
    // The last sample, temperature i16::MIN, Some(u32::MAX).
    let tail = [
        0xff, 0xff, 0x03, 0xff, 0xff, 0x03, 0x01, 0xff, 0xff, 0xff, 0xff, 0x0f,
    ];
    assert_eq!(&bytes[bytes.len() - tail.len()..], &tail[..]);
    assert_eq!(SensorEvent::decode(bytes).unwrap(), largest_v2_event());
}

fn fixed_command() -> Command {
    Command {
        version: COMMAND_FORMAT_VERSION,
        device: "pump-7".try_into().unwrap(),
        seq: 300,
        action: Action::Stop,
        class: 2,
        source: DecisionSource::Fallback,
        model: ModelRef {
            name: "edge".try_into().unwrap(),
            version: "1.0".try_into().unwrap(),
        },
        decided_at_us: 1,
        latency_us: 1500,
    }
}

#[rustfmt::skip]
const COMMAND_GOLDEN: &[u8] = &[
    0x01,                                     // version
    0x06, b'p', b'u', b'm', b'p', b'-', b'7', // device
    0xac, 0x02,                               // seq 300
    0x03,                                     // action Stop
    0x02,                                     // class
    0x01,                                     // source Fallback
    0x04, b'e', b'd', b'g', b'e',             // model name
    0x03, b'1', b'.', b'0',                   // model version
    0x01,                                     // decided_at
    0xdc, 0x0b,                               // latency 1500 µs
];

#[test]
fn fixed_command_encodes_to_golden_bytes() {
    let mut buf = [0u8; reflex_wire::MAX_COMMAND_BYTES];
    let bytes = fixed_command().encode(&mut buf).unwrap();
    assert_eq!(&*bytes, COMMAND_GOLDEN);
    assert_eq!(Command::decode(COMMAND_GOLDEN).unwrap(), fixed_command());
}

#[test]
fn json_form_is_stable_and_round_trips() {
    let json = reflex_wire::json::encode_command(&fixed_command());
    assert_eq!(
        std::str::from_utf8(&json).unwrap(),
        r#"{"version":1,"device":"pump-7","seq":300,"action":"stop","class":2,"source":"fallback","model":{"name":"edge","version":"1.0"},"decided_at_us":1,"latency_us":1500}"#
    );
    assert_eq!(
        reflex_wire::json::decode_command(&json).unwrap(),
        fixed_command()
    );
    let event_json = reflex_wire::json::encode_event(&fixed_event());
    assert_eq!(
        reflex_wire::json::decode_event(&event_json).unwrap(),
        fixed_event()
    );
}

#[test]
fn window_values_are_counts_times_scale_channel_major() {
    let values: Vec<f32> = fixed_event().window.values().collect();
    assert_eq!(values, [0.0, 0.5, -0.5, 31.5, -32.0, 500.0]);
}
