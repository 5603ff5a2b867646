//! Reading the verdicts the scenarios wait for out of a `/status` document (as JSON, the same
//! whether it came from a running agent or the in-process engine).

use serde_json::Value;

fn target<'a>(s: &'a Value, kind: &str, id: &str) -> Option<&'a Value> {
    s["targets"]
        .as_array()?
        .iter()
        .find(|t| t["kind"] == kind && t["id"] == id)
}

/// A target's state; `absent` when it is not listed (gone, or not observed yet).
pub(super) fn state(s: &Value, kind: &str, id: &str) -> String {
    target(s, kind, id)
        .and_then(|t| t["state"].as_str())
        .unwrap_or("absent")
        .to_string()
}

/// The target's reason from `signal`, if that signal is among its reasons.
pub(super) fn reason<'a>(s: &'a Value, kind: &str, id: &str, signal: &str) -> Option<&'a Value> {
    target(s, kind, id)?
        .get("reasons")?
        .as_array()?
        .iter()
        .find(|r| r["signal"] == signal)
}

/// The block I/O errors counted on the disk `name` (0 when it is not listed).
pub(super) fn device_errors(s: &Value, name: &str) -> u64 {
    s["devices"]
        .as_array()
        .and_then(|ds| ds.iter().find(|d| d["name"] == name))
        .and_then(|d| d["io_errors"].as_u64())
        .unwrap_or(0)
}
