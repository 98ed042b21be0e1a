//! Fuzz target: the decoders must never panic, and whatever they accept must be valid and
//! re-encode to a message that decodes to the same value (of the same version), whatever
//! the version and whatever the capacity of the decoding type.
#![no_main]

use libfuzzer_sys::fuzz_target;
use reflex_wire::{Command, SensorEvent, MAX_EVENT_BYTES};

fuzz_target!(|data: &[u8]| {
    if let Ok(ev) = SensorEvent::decode(data) {
        assert!(ev.validate().is_ok());
        let mut buf = vec![0u8; MAX_EVENT_BYTES];
        let bytes = ev.encode(&mut buf).expect("accepted event re-encodes");
        assert_eq!(SensorEvent::decode(bytes).as_ref(), Ok(&ev));
    }
    // A firmware-sized decoder: accepts a subset, never panics.
    if let Ok(small) = SensorEvent::<256>::decode_with_capacity(data) {
        assert!(small.validate().is_ok());
        assert!(small.window.samples.len() <= 256);
    }
    let _ = Command::decode(data);
    let _ = reflex_wire::json::decode_event(data);
    let _ = reflex_wire::json::decode_command(data);
});
