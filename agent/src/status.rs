//! The `/status` document and the `/healthz` verdict, built by the engine after every change
//! and served as-is, so HTTP handlers never compute anything or touch a filesystem.

use std::time::SystemTime;

use serde::{Serialize, Serializer};

use crate::{
    health::{Reason, State},
    probes::ProbeStatus,
};

pub fn rfc3339<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_time(*t))
}

pub fn format_time(t: SystemTime) -> String {
    let odt = time::OffsetDateTime::from(t);
    odt.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| odt.unix_timestamp().to_string())
}

fn shared_config<S: Serializer>(
    c: &Option<std::sync::Arc<crate::config::Config>>,
    s: S,
) -> Result<S::Ok, S::Error> {
    c.as_deref().serialize(s)
}

#[derive(Clone, Debug, Serialize)]
pub struct Status {
    pub healthy: bool,
    pub version: &'static str,
    #[serde(serialize_with = "rfc3339")]
    pub started_at: SystemTime,
    #[serde(serialize_with = "rfc3339")]
    pub updated_at: SystemTime,
    pub dry_run: bool,
    pub targets: Vec<TargetStatus>,
    pub blocked_mount_calls: Vec<BlockedCall>,
    pub devices: Vec<DeviceStatus>,
    pub watches: Vec<WatchStatus>,
    pub probes: Vec<ProbeStatus>,
    pub events_lost: u64,
    /// The config in effect (after reloads), so operators and tests see what applies.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "shared_config"
    )]
    pub config: Option<std::sync::Arc<crate::config::Config>>,
}

#[derive(Clone, Debug, Serialize)]
pub struct TargetStatus {
    pub kind: &'static str,
    pub id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fstype: Option<String>,
    pub critical: bool,
    pub state: State,
    #[serde(serialize_with = "rfc3339")]
    pub since: SystemTime,
    pub reasons: Vec<Reason>,
}

#[derive(Clone, Debug, Serialize)]
pub struct BlockedCall {
    pub pid: u32,
    pub tid: u32,
    pub comm: String,
    pub syscall: &'static str,
    pub source: String,
    pub target: String,
    pub fstype: String,
    pub blocked_seconds: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct DeviceStatus {
    pub name: String,
    pub dev: String,
    pub inflight: u64,
    pub oldest_inflight_seconds: f64,
    pub io_errors: u64,
    pub stalled: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct WatchStatus {
    pub path: String,
    pub critical: bool,
    /// The mount point the watch resolved to, if any.
    pub mount: Option<String>,
    /// Why the watch does not apply (path missing, not a mount point).
    pub problem: Option<String>,
}

impl Status {
    /// Failed critical targets: what `/healthz` reports and acts on.
    pub fn failed_critical(&self) -> impl Iterator<Item = &TargetStatus> {
        self.targets
            .iter()
            .filter(|t| t.critical && t.state == State::Failed)
    }
}

/// The `/healthz` 503 body.
#[derive(Debug, Serialize)]
pub struct Unhealthy<'a> {
    pub healthy: bool,
    pub failed: Vec<&'a TargetStatus>,
}

/// Human-readable rendering of a `/status` document (for `bindsto status` and `check`).
/// Works on JSON so it can render what any agent version answered.
pub fn render_table(doc: &serde_json::Value) -> String {
    use std::fmt::Write;
    let s = |v: &serde_json::Value, k: &str| -> String {
        match v.get(k) {
            Some(serde_json::Value::String(x)) => x.clone(),
            Some(serde_json::Value::Null) | None => "-".into(),
            Some(x) => x.to_string(),
        }
    };
    let arr = |k: &str| {
        doc.get(k)
            .and_then(|v| v.as_array())
            .cloned()
            .unwrap_or_default()
    };
    let mut out = String::new();
    let healthy = doc.get("healthy").and_then(serde_json::Value::as_bool) == Some(true);
    let _ = writeln!(
        out,
        "bindsto {}: {}{}",
        s(doc, "version"),
        if healthy { "HEALTHY" } else { "UNHEALTHY" },
        if doc.get("dry_run").and_then(serde_json::Value::as_bool) == Some(true) {
            " (dry run)"
        } else {
            ""
        }
    );
    let _ = writeln!(out, "\nTARGETS");
    let _ = writeln!(
        out,
        "  {:<10} {:<32} {:<9} {:<8} REASONS",
        "KIND", "ID", "STATE", "CRITICAL"
    );
    for t in arr("targets") {
        let reasons: Vec<String> = t
            .get("reasons")
            .and_then(|r| r.as_array())
            .map(|rs| {
                rs.iter()
                    .map(|r| format!("{}: {}", s(r, "signal"), s(r, "detail")))
                    .collect()
            })
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "  {:<10} {:<32} {:<9} {:<8} {}",
            s(&t, "kind"),
            s(&t, "id"),
            s(&t, "state"),
            s(&t, "critical"),
            if reasons.is_empty() {
                "-".to_string()
            } else {
                reasons.join("; ")
            }
        );
    }
    let _ = writeln!(out, "\nDEVICES");
    let _ = writeln!(
        out,
        "  {:<12} {:<8} {:>8} {:>14} {:>9}",
        "NAME", "DEV", "INFLIGHT", "OLDEST_S", "IO_ERRORS"
    );
    for d in arr("devices") {
        let _ = writeln!(
            out,
            "  {:<12} {:<8} {:>8} {:>14} {:>9}",
            s(&d, "name"),
            s(&d, "dev"),
            s(&d, "inflight"),
            s(&d, "oldest_inflight_seconds"),
            s(&d, "io_errors")
        );
    }
    let calls = arr("blocked_mount_calls");
    let _ = writeln!(out, "\nBLOCKED MOUNT CALLS ({})", calls.len());
    for c in calls {
        let _ = writeln!(
            out,
            "  pid {} {} {}: {} -> {} ({}) blocked {}s",
            s(&c, "pid"),
            s(&c, "comm"),
            s(&c, "syscall"),
            s(&c, "source"),
            s(&c, "target"),
            s(&c, "fstype"),
            s(&c, "blocked_seconds")
        );
    }
    for w in arr("watches") {
        if w.get("problem").is_some_and(|p| !p.is_null()) {
            let _ = writeln!(out, "\nwatch {}: {}", s(&w, "path"), s(&w, "problem"));
        }
    }
    let missing: Vec<String> = arr("probes")
        .iter()
        .filter(|p| p.get("state").and_then(|v| v.as_str()) != Some("attached"))
        .map(|p| format!("{} ({})", s(p, "probe"), s(p, "state")))
        .collect();
    if !missing.is_empty() {
        let _ = writeln!(out, "\nprobes not attached: {}", missing.join(", "));
    }
    out
}
