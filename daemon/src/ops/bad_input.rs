//! The last refused payloads, kept for inspection: a bounded ring the dispatcher fills
//! and the loopback HTTP endpoint serves as JSON at `GET /bad-input`.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use serde::Serialize;

/// Bytes of each refused payload kept.
pub const KEPT_HEAD_BYTES: usize = 256;

/// One refused payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BadPayload {
    /// Topic it came on.
    pub topic: String,
    /// Reason label, as in `reflexd_bad_input_total{reason=…}`.
    pub reason: String,
    /// The decoder's message naming the bad value (for `shape_mismatch`, the window's
    /// shape and the one the route's model reads).
    pub detail: String,
    /// Length of the whole payload.
    pub len: usize,
    /// First [`KEPT_HEAD_BYTES`] bytes, lowercase hex.
    pub head_hex: String,
}

/// The ring of the last `capacity` refused payloads (cheap to clone: shared).
#[derive(Debug, Clone)]
pub struct BadInputLog {
    capacity: usize,
    entries: Arc<Mutex<VecDeque<BadPayload>>>,
}

impl BadInputLog {
    /// Keeps the last `capacity` payloads (0 keeps none).
    pub fn new(capacity: usize) -> Self {
        BadInputLog {
            capacity,
            entries: Arc::new(Mutex::new(VecDeque::with_capacity(capacity.min(1024)))),
        }
    }

    /// Records a refused payload, forgetting the oldest beyond capacity.
    pub fn push(&self, topic: &str, reason: &str, detail: &str, payload: &[u8]) {
        if self.capacity == 0 {
            return;
        }
        let head = &payload[..payload.len().min(KEPT_HEAD_BYTES)];
        let entry = BadPayload {
            topic: topic.to_owned(),
            reason: reason.to_owned(),
            detail: detail.to_owned(),
            len: payload.len(),
            head_hex: head.iter().map(|b| format!("{b:02x}")).collect(),
        };
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() == self.capacity {
            entries.pop_front();
        }
        entries.push_back(entry);
    }

    /// The kept payloads, oldest first.
    pub fn snapshot(&self) -> Vec<BadPayload> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.iter().cloned().collect()
    }

    /// The kept payloads as a JSON array, oldest first.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(&self.snapshot()).unwrap_or_else(|_| "[]".to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_only_the_last_payloads_and_a_bounded_head_of_each() {
        let log = BadInputLog::new(2);
        log.push("a", "truncated", "t", b"\x01\x02");
        log.push("b", "oversized", "o", &[0xab; 1000]);
        log.push("c", "unknown_route", "u", b"");
        let kept = log.snapshot();
        assert_eq!(kept.len(), 2);
        assert_eq!((kept[0].topic.as_str(), kept[1].topic.as_str()), ("b", "c"));
        assert_eq!(kept[0].len, 1000);
        assert_eq!(kept[0].head_hex.len(), 2 * KEPT_HEAD_BYTES);
        assert!(kept[0].head_hex.starts_with("abab"));
        let json: serde_json::Value = serde_json::from_str(&log.to_json()).unwrap();
        assert_eq!(json[1]["reason"], "unknown_route");
    }

    #[test]
    fn capacity_zero_keeps_nothing() {
        let log = BadInputLog::new(0);
        log.push("a", "truncated", "t", b"x");
        assert!(log.snapshot().is_empty());
    }
}
