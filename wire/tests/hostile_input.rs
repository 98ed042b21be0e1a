//! Each hard limit is enforced on decode with the error variant that names it.

use reflex_wire::{DecodeError, EventKind, SensorEvent, Window, FORMAT_VERSION, MAX_EVENT_BYTES};

fn event(channels: u8, per_channel: u16) -> SensorEvent {
    let n = usize::from(channels) * usize::from(per_channel);
    SensorEvent {
        version: FORMAT_VERSION,
        device: "dev-1".try_into().unwrap(),
        seq: 1,
        timestamp_us: 2,
        kind: EventKind::Periodic,
        window: Window {
            channels,
            samples_per_channel: per_channel,
            sample_rate_hz: 1000,
            scale: 0.001,
            samples: (0..n as i16).collect(),
        },
        temperature_centi_c: 4000,
        deadline_hint_us: None,
    }
}

fn encoded(ev: &SensorEvent) -> Vec<u8> {
    postcard::to_allocvec(ev).unwrap()
}

#[test]
fn oversized_payload_is_refused_before_parsing() {
    let bytes = vec![FORMAT_VERSION; MAX_EVENT_BYTES + 1];
    assert_eq!(
        SensorEvent::decode(&bytes),
        Err(DecodeError::Oversized {
            len: MAX_EVENT_BYTES + 1,
            max: MAX_EVENT_BYTES
        })
    );
}

#[test]
fn unknown_version_is_named() {
    let mut bytes = encoded(&event(3, 64));
    bytes[0] = 9;
    assert_eq!(
        SensorEvent::decode(&bytes),
        Err(DecodeError::UnsupportedVersion {
            found: 9,
            supported: FORMAT_VERSION
        })
    );
}

#[test]
fn empty_payload_is_truncated_at_version() {
    assert_eq!(
        SensorEvent::decode(&[]),
        Err(DecodeError::Truncated { field: "version" })
    );
}

#[test]
fn too_many_channels_is_named() {
    // Postcard of a window with 5 channels: the struct itself allows it, the decoder must not.
    let ev = event(5, 8);
    assert_eq!(
        SensorEvent::decode(&encoded(&ev)),
        Err(DecodeError::BadChannelCount { found: 5, max: 4 })
    );
}

#[test]
fn too_many_samples_per_channel_is_named() {
    let ev = event(1, 65);
    assert_eq!(
        SensorEvent::decode(&encoded(&ev)),
        Err(DecodeError::BadSamplesPerChannel { found: 65, max: 64 })
    );
}

#[test]
fn sample_count_disagreeing_with_shape_is_named() {
    let mut ev = event(2, 4);
    ev.window.samples.pop();
    assert_eq!(
        SensorEvent::decode(&encoded(&ev)),
        Err(DecodeError::SampleCountMismatch {
            declared: 8,
            found: 7
        })
    );
}

#[test]
fn device_id_in_topic_syntax_is_refused() {
    let mut ev = event(1, 1);
    ev.device = "a/+".try_into().unwrap();
    assert_eq!(
        SensorEvent::decode(&encoded(&ev)),
        Err(DecodeError::DeviceIdInvalidByte { byte: b'/', pos: 1 })
    );
}

#[test]
fn over_long_device_id_is_named_not_a_capacity_failure() {
    // Hand-build the prefix: version, then a 40-byte string.
    let mut bytes = vec![FORMAT_VERSION, 40];
    bytes.extend(std::iter::repeat_n(b'a', 40));
    bytes.extend(encoded(&event(1, 1)).iter().skip(7)); // rest of a valid event
    assert_eq!(
        SensorEvent::decode(&bytes),
        Err(DecodeError::DeviceIdTooLong { len: 40, max: 32 })
    );
}

#[test]
fn nan_scale_is_refused() {
    let mut ev = event(1, 1);
    ev.window.scale = f32::NAN;
    assert_eq!(
        SensorEvent::decode(&encoded(&ev)),
        Err(DecodeError::InvalidScale)
    );
    // The encoder refuses it too.
    let mut buf = [0u8; 64];
    assert!(ev.encode(&mut buf).is_err());
}

#[test]
fn trailing_bytes_are_refused() {
    let mut bytes = encoded(&event(3, 64));
    bytes.extend([0, 0]);
    assert_eq!(
        SensorEvent::decode(&bytes),
        Err(DecodeError::TrailingBytes { count: 2 })
    );
}

#[test]
fn errors_read_as_lowercase_sentences_with_the_bad_value() {
    let msg = DecodeError::Oversized {
        len: 5000,
        max: 1024,
    }
    .to_string();
    assert_eq!(msg, "payload of 5000 bytes exceeds the limit of 1024");
    let msg = DecodeError::DeviceIdInvalidByte { byte: b'/', pos: 1 }.to_string();
    assert_eq!(msg, "device id has invalid byte 0x2f at position 1");
}

#[test]
fn json_with_wrong_shape_is_refused_with_a_named_limit() {
    let ev = event(5, 8);
    let json = serde_json::to_vec(&ev).unwrap();
    assert_eq!(
        reflex_wire::json::decode_event(&json),
        Err(DecodeError::BadChannelCount { found: 5, max: 4 })
    );
    let err = reflex_wire::json::decode_event(b"{\"version\":1").unwrap_err();
    assert_eq!(err.reason(), "bad_json");
}
