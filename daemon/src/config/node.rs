//! `[node]`: this daemon's identity.

use serde::Deserialize;

use super::error::{check_name, Problems};

/// `[node]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// Name of this node, used in the default MQTT client id and in metrics; 1..=64 bytes
    /// of `[A-Za-z0-9_.-]`. Default: `"reflex"`.
    pub name: String,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            name: "reflex".into(),
        }
    }
}

impl NodeConfig {
    pub(super) fn validate(&self, p: &mut Problems) {
        check_name(p, "node.name", &self.name);
    }
}
