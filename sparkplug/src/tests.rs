use proptest::prelude::*;

use super::*;

#[test]
fn a_device_data_topic_names_group_node_and_device() {
    let t = parse_topic("spBv1.0/plant1/DDATA/gw-7/pump-3").unwrap();
    assert_eq!(
        t,
        Topic {
            group: "plant1",
            message_type: MessageType::DData,
            edge_node: "gw-7",
            device: Some("pump-3"),
        }
    );
    assert_eq!(t.to_topic_string(), "spBv1.0/plant1/DDATA/gw-7/pump-3");
    let n = parse_topic("spBv1.0/plant1/NBIRTH/gw-7").unwrap();
    assert_eq!((n.message_type, n.device), (MessageType::NBirth, None));
}

#[test]
fn topics_that_are_not_sparkplug_are_refused_with_why() {
    let cases = [
        ("sensors/a/vibration", "does not start with spBv1.0/"),
        ("spBv1.0/plant1", "has 4 levels, this one 2"),
        ("spBv1.0/plant1/DATA/gw", "message type \"DATA\""),
        (
            "spBv1.0/plant1/DDATA/gw",
            "a DDATA topic has 5 levels, this one 4",
        ),
        (
            "spBv1.0/plant1/NDATA/gw/dev",
            "a NDATA topic has 4 levels, this one 5",
        ),
        ("spBv1.0/plant1/DDATA/gw/dev/x", "has 5 levels, this one 6"),
        ("spBv1.0/plant1/DDATA//dev", "empty edge node id"),
        ("spBv1.0//NBIRTH/gw", "empty group id"),
    ];
    for (topic, why) in cases {
        let e = parse_topic(topic).unwrap_err().to_string();
        assert!(e.contains(why), "{topic}: {e}");
    }
}

#[test]
fn datatype_numbers_are_the_specifications() {
    assert_eq!(DataType::from_u32(9), Some(DataType::Float));
    assert_eq!(DataType::from_u32(23), Some(DataType::Int16Array));
    assert_eq!(DataType::from_u32(30), Some(DataType::FloatArray));
    assert_eq!(DataType::from_u32(31), Some(DataType::DoubleArray));
    assert_eq!(DataType::from_u32(34), Some(DataType::DateTimeArray));
    assert_eq!(DataType::from_u32(35), None);
    assert_eq!(DataType::Int16Array.array_element_bytes(), Some(2));
    assert_eq!(DataType::BooleanArray.array_element_bytes(), None);
}

#[test]
fn signed_integers_are_read_as_twos_complement() {
    let v = metric::Value::IntValue((-5i32) as u32);
    assert_eq!(numbers(2, Some(&v)), Ok(Numbers::Scalar(-5.0)));
    assert_eq!(numbers(6, Some(&v)), Ok(Numbers::Scalar(4_294_967_291.0)));
    let l = metric::Value::LongValue((-7i64) as u64);
    assert_eq!(numbers(4, Some(&l)), Ok(Numbers::Scalar(-7.0)));
}

#[test]
fn arrays_are_little_endian_elements_of_their_type() {
    let b = metric::Value::BytesValue(i16_array(&[1, -2, 300]));
    let n = numbers(DataType::Int16Array as u32, Some(&b)).unwrap();
    assert_eq!(n.len(), 3);
    assert_eq!([n.get(0), n.get(1), n.get(2)], [1.0, -2.0, 300.0]);
    let f = metric::Value::BytesValue(f32_array(&[0.5, -1.25]));
    let n = numbers(DataType::FloatArray as u32, Some(&f)).unwrap();
    assert_eq!([n.get(0), n.get(1)], [0.5, -1.25]);
    let d = metric::Value::BytesValue(f64_array(&[1e-3]));
    assert_eq!(numbers(31, Some(&d)).unwrap().get(0), 1e-3);
}

#[test]
fn a_value_that_is_not_what_its_datatype_says_is_refused() {
    let s = metric::Value::StringValue("1.0".into());
    assert_eq!(
        numbers(9, Some(&s)).unwrap_err().to_string(),
        "datatype Float holds string_value"
    );
    assert_eq!(
        numbers(12, Some(&s)).unwrap_err().to_string(),
        "datatype String is not a number or a numeric array"
    );
    assert_eq!(
        numbers(30, None).unwrap_err().to_string(),
        "datatype FloatArray holds no value"
    );
    let odd = metric::Value::BytesValue(vec![0; 7]);
    assert_eq!(
        numbers(30, Some(&odd)).unwrap_err().to_string(),
        "FloatArray of 7 bytes is not a whole number of 4-byte elements"
    );
    assert!(numbers(99, None).unwrap_err().to_string().contains("#99"));
}

#[test]
fn the_metric_count_is_bounded_before_decoding() {
    let p = Payload {
        metrics: vec![Metric::default(); 5],
        ..Payload::default()
    };
    let bytes = p.encode_to_vec();
    assert_eq!(decode(&bytes, 5).unwrap().metrics.len(), 5);
    assert_eq!(
        decode(&bytes, 4),
        Err(PayloadError::TooManyMetrics { max: 4 })
    );
}

#[test]
fn a_length_beyond_the_payload_is_refused_not_allocated() {
    // Field 2 (metrics), length-delimited, claiming 4 MB in a 6-byte payload.
    let mut claim = vec![0x12];
    let mut n = 4_000_000u64;
    while n >= 0x80 {
        claim.push((n as u8) | 0x80);
        n >>= 7;
    }
    claim.push(n as u8);
    let e = decode(&claim, 100).unwrap_err();
    assert!(matches!(e, PayloadError::Protobuf(_)), "{e}");
}

fn metric_strategy() -> impl Strategy<Value = Metric> {
    let value = prop_oneof![
        any::<u32>().prop_map(metric::Value::IntValue),
        any::<u64>().prop_map(metric::Value::LongValue),
        any::<f32>()
            .prop_filter("NaN != NaN", |v| !v.is_nan())
            .prop_map(metric::Value::FloatValue),
        prop::collection::vec(any::<u8>(), 0..64).prop_map(metric::Value::BytesValue),
        "[a-z]{0,8}".prop_map(metric::Value::StringValue),
    ];
    (
        proptest::option::of("[a-z/]{1,12}"),
        proptest::option::of(any::<u64>()),
        proptest::option::of(any::<u64>()),
        proptest::option::of(0u32..40),
        proptest::option::of(value),
    )
        .prop_map(|(name, alias, timestamp, datatype, value)| Metric {
            name,
            alias,
            timestamp,
            datatype,
            value,
            ..Metric::default()
        })
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic_the_decoder(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode(&bytes, 64);
    }

    #[test]
    fn arbitrary_topics_never_panic_the_parser(topic in "(spBv1\\.0)?(/[A-Z]{0,6}|/[a-z]{0,3}){0,7}") {
        let _ = parse_topic(&topic);
    }

    #[test]
    fn an_encoded_payload_decodes_to_itself(
        timestamp in proptest::option::of(any::<u64>()),
        seq in proptest::option::of(0u64..256),
        metrics in prop::collection::vec(metric_strategy(), 0..8),
    ) {
        let p = Payload { timestamp, seq, metrics, uuid: None, body: None };
        let bytes = p.encode_to_vec();
        prop_assert_eq!(decode(&bytes, 8).unwrap(), p);
    }

    #[test]
    fn float_arrays_read_back_their_values(values in prop::collection::vec(-1e6f32..1e6, 0..64)) {
        let v = metric::Value::BytesValue(f32_array(&values));
        let n = numbers(DataType::FloatArray as u32, Some(&v)).unwrap();
        prop_assert_eq!(n.len(), values.len());
        for (i, x) in values.iter().enumerate() {
            prop_assert_eq!(n.get(i), f64::from(*x));
        }
    }
}
