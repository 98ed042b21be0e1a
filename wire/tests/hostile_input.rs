//! Each hard limit is enforced on decode with the error variant that names it, with the
//! limits of the event's version.

use reflex_wire::{
    DecodeError, EventKind, SensorEvent, Window, EVENT_FORMAT_V1, EVENT_FORMAT_V2, MAX_EVENT_BYTES,
    V1_LIMITS,
};

/// A version 1 event of `channels` × `per_channel` (valid or not).
fn event(channels: u8, per_channel: u16) -> SensorEvent {
    event_v(EVENT_FORMAT_V1, channels, per_channel)
}

fn event_v(version: u8, channels: u8, per_channel: u16) -> SensorEvent {
    let n = usize::from(channels) * usize::from(per_channel);
    SensorEvent {
        version,
        device: "dev-1".try_into().unwrap(),
        seq: 1,
        timestamp_us: 2,
        kind: EventKind::Periodic,
        window: Window {
            channels,
            samples_per_channel: per_channel,
            sample_rate_hz: 1000,
            scale: 0.001,
            samples: (0..n).map(|i| i as i16).collect(),
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
    let bytes = vec![EVENT_FORMAT_V2; MAX_EVENT_BYTES + 1];
    assert_eq!(
        SensorEvent::decode(&bytes),
        Err(DecodeError::Oversized {
            len: MAX_EVENT_BYTES + 1,
            max: MAX_EVENT_BYTES
        })
    );
}

#[test]
fn a_v1_payload_over_v1s_size_limit_is_refused_as_before() {
    let bytes = vec![EVENT_FORMAT_V1; 1025];
    assert_eq!(
        SensorEvent::decode(&bytes),
        Err(DecodeError::Oversized {
            len: 1025,
            max: V1_LIMITS.max_event_bytes
        })
    );
}

#[test]
fn unknown_version_is_named() {
    let mut bytes = encoded(&event(3, 64));
    bytes[0] = 9;
    let err = SensorEvent::decode(&bytes).unwrap_err();
    assert_eq!(
        err,
        DecodeError::UnsupportedVersion {
            found: 9,
            oldest: 1,
            newest: 2
        }
    );
    assert_eq!(
        err.to_string(),
        "unsupported format version 9 (this build speaks 1..=2)"
    );
}

#[test]
fn a_v1_header_declaring_more_than_4_by_64_is_refused_as_before() {
    assert_eq!(
        SensorEvent::decode(&header(EVENT_FORMAT_V1, 3, 1024, 3072)),
        Err(DecodeError::BadSamplesPerChannel {
            found: 1024,
            max: 64
        })
    );
    assert_eq!(
        SensorEvent::decode(&header(EVENT_FORMAT_V1, 8, 64, 512)),
        Err(DecodeError::BadChannelCount { found: 8, max: 4 })
    );
    // A whole v1 event of that size is over v1's 1024 bytes first.
    assert_eq!(
        SensorEvent::decode(&encoded(&event(3, 1024))),
        Err(DecodeError::Oversized {
            len: 6104,
            max: 1024
        })
    );
}

#[test]
fn the_same_windows_are_read_as_v2() {
    for (c, n) in [(3, 1024), (8, 64), (8, 1024), (1, 1)] {
        let ev = event_v(EVENT_FORMAT_V2, c, n);
        assert_eq!(SensorEvent::decode(&encoded(&ev)), Ok(ev));
    }
}

/// The bytes of an event's header of `version` that declares `channels` × `per_channel`
/// and `count` samples, and carries none.
fn header(version: u8, channels: u8, per_channel: u16, count: u32) -> Vec<u8> {
    let mut bytes = encoded(&event_v(version, 1, 1));
    // version, device "dev-1", seq, timestamp, kind: 1 + 6 + 1 + 1 + 1 bytes.
    bytes.truncate(10);
    bytes
        .extend(postcard::to_allocvec(&(channels, per_channel, 1000u32, 0.001f32, count)).unwrap());
    bytes
}

#[test]
fn a_v2_header_declaring_more_than_8_by_1024_is_refused_before_any_sample() {
    // No sample follows the headers: a decoder that read samples would report truncation.
    assert_eq!(
        SensorEvent::decode(&header(EVENT_FORMAT_V2, 9, 16, 144)),
        Err(DecodeError::BadChannelCount { found: 9, max: 8 })
    );
    assert_eq!(
        SensorEvent::decode(&header(EVENT_FORMAT_V2, 1, 1025, 1025)),
        Err(DecodeError::BadSamplesPerChannel {
            found: 1025,
            max: 1024
        })
    );
    assert_eq!(
        SensorEvent::decode(&header(EVENT_FORMAT_V2, 8, u16::MAX, u32::MAX)),
        Err(DecodeError::BadSamplesPerChannel {
            found: 65_535,
            max: 1024
        })
    );
    assert_eq!(
        SensorEvent::decode(&header(EVENT_FORMAT_V2, 3, 1024, 3072)),
        Err(DecodeError::Truncated { field: "samples" })
    );
}

#[test]
fn a_window_larger_than_the_decoders_capacity_is_refused_before_any_sample() {
    assert_eq!(
        SensorEvent::<256>::decode_with_capacity(&header(EVENT_FORMAT_V2, 3, 1024, 3072)),
        Err(DecodeError::OverCapacity {
            samples: 3072,
            capacity: 256
        })
    );
    let bytes = encoded(&event_v(EVENT_FORMAT_V2, 4, 65));
    let err = SensorEvent::<256>::decode_with_capacity(&bytes).unwrap_err();
    assert_eq!(
        err,
        DecodeError::OverCapacity {
            samples: 260,
            capacity: 256
        }
    );
    assert_eq!(err.reason(), "bad_window");
    assert_eq!(
        err.to_string(),
        "window of 260 samples exceeds this decoder's capacity of 256"
    );
    // What fits the capacity is read.
    let bytes = encoded(&event_v(EVENT_FORMAT_V2, 4, 64));
    let small = SensorEvent::<256>::decode_with_capacity(&bytes).unwrap();
    assert_eq!(small.window.samples.len(), 256);
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
    // Postcard of a v1 window with 5 channels: the struct itself allows it, the decoder
    // must not.
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
    let mut bytes = vec![EVENT_FORMAT_V1, 40];
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
