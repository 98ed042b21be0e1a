use proptest::prelude::*;
use serde_json::Value;

use super::*;
use crate::config::input::{AssembleConfig, InputConfig};

fn json_input(extra: impl FnOnce(&mut InputConfig)) -> Mapping {
    let mut input = InputConfig {
        kind: InputKind::Json,
        channels: vec!["/ax".into(), "/ay".into(), "/az".into()],
        ..InputConfig::default()
    };
    extra(&mut input);
    Mapping::of(&input).unwrap()
}

fn binary_input(extra: impl FnOnce(&mut InputConfig)) -> Mapping {
    let mut input = InputConfig {
        kind: InputKind::Binary,
        channel_count: Some(2),
        samples: Some(3),
        header_bytes: 4,
        seq_offset: Some(0),
        ..InputConfig::default()
    };
    extra(&mut input);
    Mapping::of(&input).unwrap()
}

#[test]
fn the_reflex_kind_has_no_mapping() {
    assert_eq!(Mapping::of(&InputConfig::default()), None);
}

#[test]
fn json_arrays_per_channel_become_counts_at_the_resolution() {
    let m = json_input(|i| {
        i.seq = Some("/n".into());
        i.timestamp = Some("/ts".into());
        i.temperature = Some("/temp".into());
    });
    let r = m
        .read(br#"{"ts": 1700000000123, "n": 7, "ax": [0.012, -1], "ay": [2, 0.0004], "az": [0, 0.0006], "temp": 41.2}"#)
        .unwrap();
    assert_eq!(r.channels, 3);
    assert_eq!(r.samples, 2);
    assert_eq!(r.counts, [12, -1000, 2000, 0, 0, 1]);
    assert_eq!(r.seq, Some(7));
    assert_eq!(r.timestamp_us, Some(1_700_000_000_123_000));
    assert_eq!(r.temperature_centi_c, 4120);
    assert_eq!(r.device, None);
}

#[test]
fn a_nested_window_array_is_channel_major() {
    let m = json_input(|i| {
        i.channels.clear();
        i.window = Some("/data/w".into());
        i.resolution = 1.0;
        i.device = "/id".into();
    });
    let r = m
        .read(br#"{"id": "pump-7", "data": {"w": [[1, 2, 3], [4, 5, 6]]}}"#)
        .unwrap();
    assert_eq!((r.channels, r.samples), (2, 3));
    assert_eq!(r.counts, [1, 2, 3, 4, 5, 6]);
    assert_eq!(r.device.as_deref(), Some("pump-7"));
}

#[test]
fn scale_and_offset_apply_before_the_resolution() {
    let m = json_input(|i| {
        i.channels = vec!["/v".into()];
        i.scale = 0.5;
        i.offset = -1.0;
        i.resolution = 0.25;
    });
    // (10 × 0.5 − 1) / 0.25 = 16.
    assert_eq!(m.read(br#"{"v": [10]}"#).unwrap().counts, [16]);
}

#[test]
fn hostile_json_is_refused_with_its_reason() {
    let m = json_input(|i| i.seq = Some("/n".into()));
    let cases: Vec<(Vec<u8>, &str, &str)> = vec![
        (b"{".to_vec(), "bad_json", "not a JSON document"),
        (
            format!("{}{}", "[".repeat(200), "]".repeat(200)).into_bytes(),
            "bad_json",
            "recursion limit",
        ),
        (
            br#"{"ax": [1], "ay": [1], "n": 1}"#.to_vec(),
            "missing_field",
            "\"/az\" is missing",
        ),
        (
            br#"{"ax": [1], "ay": [1], "az": [1]}"#.to_vec(),
            "missing_field",
            "\"/n\"",
        ),
        (
            br#"{"ax": "1", "ay": [1], "az": [1], "n": 1}"#.to_vec(),
            "wrong_type",
            "field \"/ax\" is a string, expected an array of numbers",
        ),
        (
            br#"{"ax": [1, "x"], "ay": [1, 2], "az": [1, 2], "n": 1}"#.to_vec(),
            "wrong_type",
            "\"/ax[1]\" is a string",
        ),
        (
            br#"{"ax": [1], "ay": [1], "az": [1], "n": -1}"#.to_vec(),
            "wrong_type",
            "expected a non-negative integer",
        ),
        (
            br#"{"ax": [1e300], "ay": [1], "az": [1], "n": 1}"#.to_vec(),
            "bad_value",
            "beyond ±32767",
        ),
        (
            br#"{"ax": [33], "ay": [1], "az": [1], "n": 1}"#.to_vec(),
            "bad_value",
            "maps to 33000 counts",
        ),
        (
            br#"{"ax": [1, 2], "ay": [1], "az": [1], "n": 1}"#.to_vec(),
            "bad_window",
            "\"/ay\" has 1 samples, the channels before it 2",
        ),
        (
            br#"{"ax": [], "ay": [], "az": [], "n": 1}"#.to_vec(),
            "bad_window",
            "has 0 samples",
        ),
        (
            format!(
                r#"{{"ax": [{}], "ay": [1], "az": [1], "n": 1}}"#,
                vec!["0"; 1025].join(",")
            )
            .into_bytes(),
            "bad_window",
            "has 1025 samples",
        ),
        (vec![b' '; 16_385], "oversized", "16385 bytes exceeds"),
    ];
    for (payload, reason, text) in cases {
        let e = m.read(&payload).unwrap_err();
        assert_eq!(e.reason(), reason, "{e}");
        assert!(e.to_string().contains(text), "{e} lacks {text:?}");
    }
}

#[test]
fn a_million_element_array_is_refused_within_the_payload_bound() {
    let m = json_input(|i| i.max_payload_bytes = crate::config::input::MAX_PAYLOAD_LIMIT);
    let array = |n: usize| {
        format!(
            r#"{{"ax": [{}], "ay": [1], "az": [1]}}"#,
            vec!["0"; n].join(",")
        )
        .into_bytes()
    };
    // 2 MB: over the largest payload limit, refused before parsing.
    assert_eq!(m.read(&array(1_000_000)).unwrap_err().reason(), "oversized");
    // 600 kB: parsed (bounded by the limit), refused before its elements are read.
    let e = m.read(&array(300_000)).unwrap_err();
    assert_eq!(e.reason(), "bad_window");
    assert!(e.to_string().contains("has 300000 samples"), "{e}");
}

#[test]
fn nan_and_infinity_are_bad_values_whatever_their_spelling() {
    // JSON has no NaN: a sensor that prints one is not JSON at all.
    let m = json_input(|_| {});
    let e = m
        .read(br#"{"ax": [NaN], "ay": [1], "az": [1]}"#)
        .unwrap_err();
    assert_eq!(e.reason(), "bad_json");
    // A binary f32 can carry them.
    let b = binary_input(|i| i.samples = Some(1));
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let mut p = vec![0u8; 4];
        p.extend(1.0f32.to_le_bytes());
        p.extend(bad.to_le_bytes());
        let e = b.read(&p).unwrap_err();
        assert_eq!(e.reason(), "bad_value", "{e}");
        assert!(e.to_string().contains("sample 0 of channel 1"), "{e}");
    }
}

#[test]
fn a_bad_device_id_in_the_payload_is_refused() {
    let m = json_input(|i| i.device = "/id".into());
    for (payload, reason) in [
        (
            &br#"{"id": "a b", "ax": [1], "ay": [1], "az": [1]}"#[..],
            "bad_device_id",
        ),
        (
            br#"{"id": "", "ax": [1], "ay": [1], "az": [1]}"#,
            "bad_device_id",
        ),
        (
            br#"{"id": 7, "ax": [1], "ay": [1], "az": [1]}"#,
            "wrong_type",
        ),
    ] {
        assert_eq!(m.read(payload).unwrap_err().reason(), reason);
    }
}

#[test]
fn with_assembly_a_channel_may_be_a_single_number() {
    let m = json_input(|i| i.assemble = Some(AssembleConfig::default()));
    let r = m.read(br#"{"ax": 0.001, "ay": [0.002], "az": 0}"#).unwrap();
    assert_eq!((r.channels, r.samples), (3, 1));
    assert_eq!(r.counts, [1, 2, 0]);
    // Without it a window is required.
    let e = json_input(|_| {})
        .read(br#"{"ax": 0.001, "ay": [0.002], "az": 0}"#)
        .unwrap_err();
    assert_eq!(e.reason(), "wrong_type");
}

#[test]
fn binary_planar_and_interleaved_layouts_read_the_same_window() {
    let values = [[1.0f32, 2.0, 3.0], [-1.0, -2.0, -3.0]];
    let mut planar = 9u32.to_le_bytes().to_vec();
    for ch in &values {
        for v in ch {
            planar.extend(v.to_le_bytes());
        }
    }
    let mut interleaved = 9u32.to_le_bytes().to_vec();
    for i in 0..3 {
        for ch in &values {
            interleaved.extend(ch[i].to_le_bytes());
        }
    }
    let p = binary_input(|i| i.resolution = 1.0).read(&planar).unwrap();
    let q = binary_input(|i| {
        i.resolution = 1.0;
        i.layout = Layout::Interleaved;
    })
    .read(&interleaved)
    .unwrap();
    assert_eq!(p.counts, [1, 2, 3, -1, -2, -3]);
    assert_eq!(p, q);
    assert_eq!(p.seq, Some(9));
}

#[test]
fn binary_i16_samples_are_scaled() {
    let m = binary_input(|i| {
        i.sample_type = SampleType::I16;
        i.scale = 0.002;
        i.resolution = 0.001;
        i.seq_offset = None;
        i.header_bytes = 0;
    });
    let p: Vec<u8> = [1i16, 2, 3, -4, 5, 17_000]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let e = m.read(&p).unwrap_err();
    assert_eq!(e.reason(), "bad_value", "17000 × 2 counts is out of range");
    let p: Vec<u8> = [1i16, 2, 3, -4, 5, 6]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    assert_eq!(m.read(&p).unwrap().counts, [2, 4, 6, -8, 10, 12]);
}

#[test]
fn a_truncated_or_overlong_binary_payload_is_refused() {
    let m = binary_input(|_| {});
    let expected = 4 + 2 * 3 * 4;
    for len in [0, 3, 4, expected - 1] {
        let e = m.read(&vec![0; len]).unwrap_err();
        assert_eq!(e, AdaptError::Truncated { len, expected });
        assert_eq!(e.reason(), "truncated");
    }
    let e = m.read(&vec![0; expected + 1]).unwrap_err();
    assert_eq!(e.reason(), "trailing_bytes");
}

#[test]
fn a_window_event_carries_the_resolution_as_its_scale() {
    let m = json_input(|i| i.resolution = 0.004);
    let r = m
        .read(br#"{"ax": [0.004], "ay": [0.008], "az": [-0.004]}"#)
        .unwrap();
    let e = r
        .into_event(DeviceId::try_from("d").unwrap(), 3, 5, &m)
        .unwrap();
    assert_eq!(e.window.samples.as_slice(), [1, 2, -1]);
    assert_eq!(e.window.scale, 0.004);
    assert_eq!((e.seq, e.timestamp_us), (3, 5));
    let g: Vec<f32> = e.window.values().collect();
    assert_eq!(g, [0.004, 0.008, -0.004]);
}

#[test]
fn numbers_increase_per_device_and_follow_the_clock() {
    let mut n = Numberer::new(2);
    let (a, b) = (
        DeviceId::try_from("a").unwrap(),
        DeviceId::try_from("b").unwrap(),
    );
    assert_eq!(n.next(&a, 100), 100);
    assert_eq!(n.next(&a, 100), 101);
    assert_eq!(n.next(&a, 50), 102);
    assert_eq!(n.next(&a, 500), 500);
    assert_eq!(n.next(&b, 7), 7);
}

proptest! {
    /// Whatever the bytes, reading never panics, and a refusal names a known reason.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        for m in [json_input(|_| {}), binary_input(|_| {})] {
            if let Err(e) = m.read(&bytes) {
                prop_assert!(crate::ops::metrics::BAD_INPUT_REASONS.contains(&e.reason()));
            }
        }
    }

    /// A value within range comes back as a count within half a resolution of it.
    #[test]
    fn a_count_is_the_value_rounded_to_the_resolution(
        v in -30.0f64..30.0, res in 0.001f64..1.0,
    ) {
        let m = json_input(|i| i.resolution = res);
        match m.count(v, || "v".into()) {
            Ok(c) => prop_assert!((f64::from(c) * res - v).abs() <= res / 2.0 + 1e-9),
            Err(e) => prop_assert!((v / res).abs() > 32_766.0, "{}", e),
        }
    }

    /// JSON channels of equal length read back exactly, channel-major.
    #[test]
    fn json_channels_round_trip_through_counts(
        rows in proptest::collection::vec(proptest::collection::vec(-32_767i16..=32_767, 8), 1..=4),
    ) {
        let names: Vec<String> = (0..rows.len()).map(|c| format!("/c{c}")).collect();
        let m = json_input(|i| { i.channels = names.clone(); i.resolution = 1.0; });
        let doc: serde_json::Map<String, serde_json::Value> = rows
            .iter()
            .enumerate()
            .map(|(c, r)| (format!("c{c}"), serde_json::json!(r)))
            .collect();
        let r = m.read(&serde_json::to_vec(&doc).unwrap()).unwrap();
        prop_assert_eq!(r.counts, rows.concat());
    }
}

/// The reader the streaming one replaced: parse a `Value` tree, then resolve each
/// pointer on it. The oracle of `the_streaming_reader_answers_as_the_value_tree_does`.
fn read_tree(m: &Mapping, payload: &[u8]) -> Result<Reading, AdaptError> {
    let doc: Value =
        serde_json::from_slice(payload).map_err(|e| AdaptError::BadJson(e.to_string()))?;
    let device = match &m.device {
        None => None,
        Some(ptr) => {
            let id = str_at(&doc, ptr)?;
            reflex_wire::validate_device_id(id).map_err(|source| AdaptError::BadDevice {
                id: id.chars().take(64).collect(),
                source,
            })?;
            let mut d = DeviceId::new();
            // Cannot fail: validated to fit.
            let _ = d.push_str(id);
            Some(d)
        }
    };
    let seq = match &m.seq {
        None => None,
        Some(ptr) => Some(u64_at(&doc, ptr)?),
    };
    let timestamp_us = match &m.timestamp {
        None => None,
        Some(ptr) => Some(m.timestamp_of(number_at(&doc, ptr)?, ptr)?),
    };
    let temperature_centi_c = match &m.temperature {
        None => 0,
        Some(ptr) => centi_c(number_at(&doc, ptr)?, ptr)?,
    };
    let rows: Vec<(String, &Value)> = match &m.window {
        Some(ptr) => {
            let outer = at(&doc, ptr)?;
            let Value::Array(rows) = outer else {
                return Err(wrong(ptr, outer, "an array of arrays"));
            };
            if rows.is_empty() || rows.len() > MAX_CHANNELS {
                return Err(AdaptError::BadWindow(format!(
                    "{ptr:?} has {} channels, expected 1..={MAX_CHANNELS}",
                    rows.len()
                )));
            }
            rows.iter()
                .enumerate()
                .map(|(c, v)| (format!("{ptr}/{c}"), v))
                .collect()
        }
        None => m
            .channels
            .iter()
            .map(|ptr| Ok((ptr.clone(), at(&doc, ptr)?)))
            .collect::<Result<_, AdaptError>>()?,
    };
    let mut samples = None;
    let mut counts = Vec::with_capacity(rows.len() * MAX_SAMPLES_PER_CHANNEL);
    for (ptr, row) in &rows {
        let values: &[Value] = match row {
            Value::Array(values) => values,
            Value::Number(_) if m.scalars => std::slice::from_ref(*row),
            other => {
                let expected = if m.scalars {
                    "an array of numbers or a number"
                } else {
                    "an array of numbers"
                };
                return Err(wrong(ptr, other, expected));
            }
        };
        if values.is_empty() || values.len() > MAX_SAMPLES_PER_CHANNEL {
            return Err(AdaptError::BadWindow(format!(
                "{ptr:?} has {} samples, expected 1..={MAX_SAMPLES_PER_CHANNEL}",
                values.len()
            )));
        }
        match samples {
            None => samples = Some(values.len()),
            Some(n) if n != values.len() => {
                return Err(AdaptError::BadWindow(format!(
                    "{ptr:?} has {} samples, the channels before it {n}",
                    values.len()
                )))
            }
            Some(_) => {}
        }
        for (i, v) in values.iter().enumerate() {
            let Some(raw) = v.as_f64() else {
                return Err(wrong(&format!("{ptr}[{i}]"), v, "a number"));
            };
            counts.push(m.count(raw, || format!("{ptr}[{i}]"))?);
        }
    }
    Ok(Reading {
        device,
        seq,
        timestamp_us,
        channels: rows.len(),
        samples: samples.unwrap_or(0),
        counts,
        temperature_centi_c,
    })
}

fn at<'a>(doc: &'a Value, ptr: &str) -> Result<&'a Value, AdaptError> {
    doc.pointer(ptr)
        .ok_or_else(|| AdaptError::MissingField(ptr.to_owned()))
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn wrong(ptr: &str, v: &Value, expected: &'static str) -> AdaptError {
    AdaptError::WrongType {
        field: ptr.to_owned(),
        found: type_name(v),
        expected,
    }
}

fn str_at<'a>(doc: &'a Value, ptr: &str) -> Result<&'a str, AdaptError> {
    let v = at(doc, ptr)?;
    v.as_str().ok_or_else(|| wrong(ptr, v, "a string"))
}

fn number_at(doc: &Value, ptr: &str) -> Result<f64, AdaptError> {
    let v = at(doc, ptr)?;
    v.as_f64().ok_or_else(|| wrong(ptr, v, "a number"))
}

fn u64_at(doc: &Value, ptr: &str) -> Result<u64, AdaptError> {
    let v = at(doc, ptr)?;
    v.as_u64()
        .ok_or_else(|| wrong(ptr, v, "a non-negative integer"))
}

/// A JSON value as text, from a vocabulary that hits the mappings below: their keys,
/// array indices, numbers of every kind and range, strings, repeated keys, nesting.
fn json_text() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        (-40i64..40).prop_map(|n| n.to_string()),
        Just("18446744073709551615".to_owned()),
        Just("-9223372036854775808".to_owned()),
        Just("1e300".to_owned()),
        Just("100000000000000000000".to_owned()),
        (-3.0f64..3.0).prop_map(|f| format!("{f}")),
        Just("0.0004".to_owned()),
        Just("1700000000.5".to_owned()),
        Just("\"pump-7\"".to_owned()),
        Just("\"bad id\"".to_owned()),
        Just("\"a\\\"b\"".to_owned()),
        Just("true".to_owned()),
        Just("null".to_owned()),
    ];
    let key = prop_oneof![
        Just("ax"),
        Just("ay"),
        Just("az"),
        Just("n"),
        Just("ts"),
        Just("temp"),
        Just("id"),
        Just("data"),
        Just("w"),
        Just("meta"),
        Just("c"),
        Just("t"),
        Just("v"),
        Just("0"),
        Just("1"),
        Just("x"),
    ];
    leaf.prop_recursive(4, 64, 6, move |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6)
                .prop_map(|v| format!("[{}]", v.join(","))),
            proptest::collection::vec((key.clone(), inner), 0..7).prop_map(|kv| {
                let members: Vec<String> = kv.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
                format!("{{{}}}", members.join(","))
            }),
        ]
    })
}

/// The mappings the documents are read with: flat fields, nested paths and a window,
/// array indices and a pointer shared by two fields, single readings, a shared channel.
fn oracle_mappings() -> Vec<Mapping> {
    vec![
        json_input(|i| {
            i.device = "/id".into();
            i.seq = Some("/n".into());
            i.timestamp = Some("/ts".into());
            i.temperature = Some("/temp".into());
            i.resolution = 0.001;
        }),
        json_input(|i| {
            i.channels.clear();
            i.window = Some("/data/w".into());
            i.device = "/meta/id".into();
            i.seq = Some("/meta/n".into());
            i.resolution = 1.0;
        }),
        json_input(|i| {
            i.channels = vec!["/c/0".into(), "/c/1".into()];
            i.seq = Some("/t".into());
            i.timestamp = Some("/t".into());
            i.timestamp_unit = crate::config::input::TimeUnit::S;
        }),
        json_input(|i| {
            i.channels = vec!["/v".into()];
            i.temperature = Some("/data/temp".into());
            i.assemble = Some(AssembleConfig::default());
        }),
        // Two channels naming one array.
        json_input(|i| i.channels = vec!["/ax".into(), "/ay".into(), "/ax".into()]),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// On any document (and any cut of one), the one-pass reader gives exactly what
    /// resolving the pointers on the parsed `Value` tree gives: the same reading, or the
    /// same refusal with the same message.
    #[test]
    fn the_streaming_reader_answers_as_the_value_tree_does(
        doc in json_text(), cut in proptest::option::weighted(0.1, 0usize..200),
    ) {
        let bytes = match cut {
            Some(n) => doc.as_bytes()[..n.min(doc.len())].to_vec(),
            None => doc.into_bytes(),
        };
        for m in oracle_mappings() {
            prop_assert_eq!(m.read(&bytes), read_tree(&m, &bytes), "{}", String::from_utf8_lossy(&bytes));
        }
    }
}

#[test]
fn the_oracle_documents_reach_the_mapped_fields() {
    // Not vacuous: the vocabulary produces readings as well as each kind of refusal.
    let docs = [
        r#"{"id":"pump-7","n":3,"ts":17,"temp":21.5,"ax":[0.001],"ay":[0.002],"az":[0]}"#,
        r#"{"meta":{"id":"pump-7","n":1},"data":{"w":[[1,2],[3,4]]},"data":{"w":[[5]]}}"#,
        r#"{"c":[[1,2],[3,4]],"t":1700000000}"#,
        r#"{"v":0.5,"data":{"temp":40}}"#,
    ];
    for (doc, m) in docs.iter().zip(oracle_mappings()) {
        let r = m.read(doc.as_bytes()).unwrap();
        assert_eq!(Ok(r), read_tree(&m, doc.as_bytes()), "{doc}");
    }
    // The repeated key's last value wins in both readers.
    let m = &oracle_mappings()[1];
    let r = m.read(docs[1].as_bytes()).unwrap();
    assert_eq!((r.channels, r.samples, r.counts), (1, 1, vec![5]));
}
