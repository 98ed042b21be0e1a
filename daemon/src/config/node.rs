//! `[node]`: this daemon's identity.

use serde::{Deserialize, Serialize};

use super::error::{check_name, Problems};

/// `[node]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// Name of this node, used in the default MQTT client id, the alert topic and the
    /// uploads; 1..=64 bytes of `[A-Za-z0-9_.-]`. Default: this host's name
    /// ([`default_name`]). It must be unique among the boards of one broker (the client id
    /// derives from it, and the broker disconnects a client whose id another one takes)
    /// and of one cloud (which keys everything by node and device).
    pub name: String,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            name: default_name(),
        }
    }
}

/// This host's name as a node name (see [`name_from`]): from the kernel's host name, else
/// `/etc/hostname`, else `/etc/machine-id`.
pub fn default_name() -> String {
    let read = |path: &str| std::fs::read_to_string(path).ok();
    let host = read("/proc/sys/kernel/hostname").or_else(|| read("/etc/hostname"));
    name_from(host.as_deref(), read("/etc/machine-id").as_deref())
}

/// A valid node name from a host name (bytes outside `[A-Za-z0-9_.-]` become `-`, cut at
/// 64), unless it is empty or `localhost` (not unique); then `node-` and the first 12
/// characters of the machine id; else `reflex`.
pub fn name_from(hostname: Option<&str>, machine_id: Option<&str>) -> String {
    let clean = |s: &str| -> String {
        s.trim()
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "_.-".contains(c) {
                    c
                } else {
                    '-'
                }
            })
            .take(64)
            .collect()
    };
    if let Some(h) = hostname.map(clean) {
        if !h.is_empty() && !h.eq_ignore_ascii_case("localhost") {
            return h;
        }
    }
    match machine_id.map(clean) {
        Some(m) if !m.is_empty() => format!("node-{}", &m[..m.len().min(12)]),
        _ => "reflex".into(),
    }
}

impl NodeConfig {
    pub(super) fn validate(&self, p: &mut Problems) {
        check_name(p, "node.name", &self.name);
    }
}

#[cfg(test)]
mod tests {
    use super::name_from;

    #[test]
    fn the_host_name_is_the_node_name() {
        assert_eq!(
            name_from(Some("line-3-board-2\n"), Some("abc")),
            "line-3-board-2"
        );
    }

    #[test]
    fn a_host_name_outside_the_alphabet_is_made_valid_and_cut_at_64() {
        assert_eq!(name_from(Some("bö ard:1"), None), "b--ard-1");
        assert_eq!(name_from(Some(&"x".repeat(100)), None).len(), 64);
    }

    #[test]
    fn localhost_or_no_host_name_falls_back_to_the_machine_id_then_reflex() {
        let id = Some("0123456789abcdef0123456789abcdef\n");
        assert_eq!(name_from(Some("localhost"), id), "node-0123456789ab");
        assert_eq!(name_from(Some(""), id), "node-0123456789ab");
        assert_eq!(name_from(None, None), "reflex");
    }
}
