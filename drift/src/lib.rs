//! Drift statistics shared by reflexd (live, from sketches) and reflex-cloud (batch).
