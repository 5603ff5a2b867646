//! Lookups in the agent's `/status` JSON shared by the privileged tests.

use serde_json::Value;

/// The target of `kind` (`mount`, `device`, `subsystem`) with `id`.
pub fn target<'a>(s: &'a Value, kind: &str, id: &str) -> Option<&'a Value> {
    s["targets"]
        .as_array()?
        .iter()
        .find(|t| t["kind"] == kind && t["id"] == id)
}

/// Its state, or `absent`.
pub fn state(s: &Value, kind: &str, id: &str) -> String {
    target(s, kind, id)
        .and_then(|t| t["state"].as_str())
        .unwrap_or("absent")
        .to_string()
}

/// Whether it has an active reason with `signal`.
pub fn has_reason(s: &Value, kind: &str, id: &str, signal: &str) -> bool {
    target(s, kind, id)
        .and_then(|t| t["reasons"].as_array())
        .is_some_and(|rs| rs.iter().any(|r| r["signal"] == signal))
}

/// Its reasons as JSON text (empty when absent), for assertion messages.
pub fn reasons(s: &Value, kind: &str, id: &str) -> String {
    target(s, kind, id)
        .map(|t| t["reasons"].to_string())
        .unwrap_or_default()
}

/// A dry-run config with 250 ms scans, a 2 s probe timeout, `detect` lines added to
/// `[detect]`, and one critical watch on `path` with `watch` lines added to it.
pub fn critical_watch_config(path: &str, detect: &str, watch: &str) -> String {
    format!(
        "listen = \"127.0.0.1:9842\"\ndry_run = true\n\n[detect]\nscan_interval = \"250ms\"\n\
         probe_timeout = \"2s\"\n{detect}\n[[watch]]\npath = \"{path}\"\ncritical = true\n{watch}"
    )
}
