//! Golden bytes: the exact postcard encoding of fixed messages. A failure here means the
//! wire format changed, which needs a new FORMAT_VERSION, not a new golden.

use reflex_wire::{
    Action, Command, DecisionSource, EventKind, ModelRef, SensorEvent, Window, FORMAT_VERSION,
};

fn fixed_event() -> SensorEvent {
    SensorEvent {
        version: FORMAT_VERSION,
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

fn fixed_command() -> Command {
    Command {
        version: FORMAT_VERSION,
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
