//! `bindsto incident list` and `bindsto incident show ID`: the incidents and their evidence,
//! read from the state directory (no agent needed: the host may have lost its storage, or the
//! agent may be gone).

use std::{fmt::Write as _, path::Path, process::ExitCode};

use serde::Serialize;

use super::{CliError, emit, load_config};
use crate::evidence::{
    bundle::{Bundle, Capture},
    files,
};

/// One line of `incident list`.
#[derive(Debug, Serialize)]
pub struct Listed {
    pub id: String,
    pub targets: Vec<String>,
    pub opened: String,
    pub state: String,
    pub evidence: Option<String>,
}

/// The incidents of the history (newest first) with their bundles, and bundles whose incident
/// has left the history.
pub fn listing(state_dir: &Path) -> Vec<Listed> {
    let history: Vec<serde_json::Value> = std::fs::read(state_dir.join(crate::remedy::store::FILE))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v.get("incidents").and_then(|i| i.as_array()).cloned())
        .unwrap_or_default();
    let dir = files::dir(state_dir);
    let bundles = files::list(&dir).unwrap_or_default();
    let text =
        |v: &serde_json::Value, k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or("").to_owned();
    let mut out: Vec<Listed> = history
        .iter()
        .rev()
        .map(|i| {
            let id = text(i, "id");
            Listed {
                targets: i
                    .get("targets")
                    .and_then(|t| t.as_array())
                    .map(|t| t.iter().map(|t| text(t, "id")).collect())
                    .unwrap_or_default(),
                opened: text(i, "opened_at"),
                state: text(i, "phase"),
                evidence: bundles
                    .contains(&id)
                    .then(|| dir.join(format!("{id}.json")).display().to_string()),
                id,
            }
        })
        .collect();
    for id in bundles {
        if !out.iter().any(|l| l.id == id) {
            let b = files::read(&dir, &id).ok();
            out.push(Listed {
                targets: b
                    .as_ref()
                    .and_then(|b| b.captures.first())
                    .map(|c| c.targets.iter().map(|t| t.id.clone()).collect())
                    .unwrap_or_default(),
                opened: b
                    .as_ref()
                    .and_then(|b| b.captures.first())
                    .map(|c| c.captured_at.clone())
                    .unwrap_or_default(),
                state: "not in the history".into(),
                evidence: Some(dir.join(format!("{id}.json")).display().to_string()),
                id,
            });
        }
    }
    out
}

pub fn list(config: Option<&Path>, json: bool) -> Result<ExitCode, CliError> {
    let cfg = match load_config(config) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    let l = listing(&cfg.remediate.state_dir);
    emit(&l, json, |l| {
        if l.is_empty() {
            return format!("no incidents in {}\n", cfg.remediate.state_dir.display());
        }
        let mut s = format!("{:<40} {:<26} {:<18} TARGETS\n", "ID", "OPENED", "STATE");
        for i in l {
            let ev = if i.evidence.is_some() {
                ""
            } else {
                " (no evidence)"
            };
            let _ = writeln!(
                s,
                "{:<40} {:<26} {:<18} {}{ev}",
                i.id,
                i.opened,
                i.state,
                i.targets.join(", ")
            );
        }
        s
    })?;
    Ok(ExitCode::SUCCESS)
}

pub fn show(config: Option<&Path>, id: &str, json: bool) -> Result<ExitCode, CliError> {
    let cfg = match load_config(config) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    let dir = files::dir(&cfg.remediate.state_dir);
    match files::read(&dir, id) {
        Ok(b) => {
            emit(&b, json, render)?;
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("bindsto: incident {id}: {e}");
            Ok(ExitCode::from(2))
        }
    }
}

/// Frames shown per task in the summary (`--json` has them all).
const FRAMES_SHOWN: usize = 12;
const TASKS_SHOWN: usize = 10;

/// The readable summary of a bundle: its newest capture.
pub fn render(b: &Bundle) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "incident {} on {}", b.incident, b.hostname);
    let _ = writeln!(s, "kernel {}, bindsto {}", b.kernel, b.agent_version);
    let Some(c) = b.captures.last() else {
        s.push_str("no capture in this bundle\n");
        return s;
    };
    if b.captures.len() > 1 {
        let _ = writeln!(
            s,
            "{} captures; showing the one taken when the {} (the first: {})",
            b.captures.len(),
            trigger_text(&c.trigger),
            b.captures[0].captured_at
        );
    }
    let _ = writeln!(
        s,
        "captured {} ({}), in {} ms",
        c.captured_at,
        trigger_text(&c.trigger),
        c.capture_ms
    );
    failed(&mut s, c);
    tasks(&mut s, c);
    inflight(&mut s, c);
    let _ = writeln!(
        s,
        "\nKERNEL LOG ({} lines{})",
        c.kernel_log.len(),
        omitted(c.kernel_log_omitted)
    );
    for l in &c.kernel_log {
        let _ = writeln!(s, "  {l}");
    }
    if !c.unreadable.is_empty() {
        s.push_str("\nNOT CAPTURED\n");
        for u in &c.unreadable {
            let _ = writeln!(s, "  {}: {}", u.source, u.why);
        }
    }
    if !c.truncated.is_empty() {
        let _ = writeln!(s, "\ncut to fit the size cap: {}", c.truncated.join("; "));
    }
    s
}

fn trigger_text(t: &str) -> &'static str {
    match t {
        "ladder" => "ladder ran",
        _ => "incident opened",
    }
}

fn omitted(n: usize) -> String {
    if n == 0 {
        String::new()
    } else {
        format!(", {n} omitted")
    }
}

fn failed(s: &mut String, c: &Capture) {
    s.push_str("\nFAILED\n");
    for t in &c.targets {
        let on = match (&t.fstype, &t.device) {
            (Some(f), Some(d)) => format!(" ({f} on {d})"),
            (None, Some(d)) => format!(" ({d})"),
            _ => String::new(),
        };
        let _ = writeln!(
            s,
            "  {} {}{on}: {} since {}",
            t.kind, t.id, t.state, t.since
        );
        for r in &t.reasons {
            let _ = writeln!(s, "    {} at {}: {}", r.signal, r.at, r.detail);
        }
        if let Some(m) = &t.mountinfo {
            let _ = writeln!(s, "    mountinfo: {m}");
        }
    }
}

fn tasks(s: &mut String, c: &Capture) {
    let calls = c.tasks.iter().filter(|t| t.why == "mount_call").count();
    let _ = writeln!(
        s,
        "\nBLOCKED TASKS ({} listed: {calls} in mount calls; {} threads in uninterruptible sleep)",
        c.tasks.len(),
        c.uninterruptible_total
    );
    for t in c.tasks.iter().take(TASKS_SHOWN) {
        let waited = t
            .waited_seconds
            .map(|w| format!(", waiting {w:.1}s"))
            .unwrap_or_default();
        let _ = writeln!(
            s,
            "  {} pid {} tid {} state {} ({}{waited})",
            t.comm, t.pid, t.tid, t.state, t.why
        );
        for f in t.stack.iter().take(FRAMES_SHOWN) {
            let _ = writeln!(s, "      {f}");
        }
        if t.stack.len() > FRAMES_SHOWN {
            let _ = writeln!(s, "      ... {} more", t.stack.len() - FRAMES_SHOWN);
        }
        if let Some(e) = &t.stack_error {
            let wchan = t
                .wchan
                .as_deref()
                .map(|w| format!(" (waits in {w})"))
                .unwrap_or_default();
            let _ = writeln!(s, "      stack not read: {e}{wchan}");
        }
    }
    if c.tasks.len() > TASKS_SHOWN {
        let _ = writeln!(s, "  ... {} more (--json)", c.tasks.len() - TASKS_SHOWN);
    }
}

fn inflight(s: &mut String, c: &Capture) {
    let i = &c.inflight;
    s.push_str("\nIN FLIGHT\n");
    for (what, list) in [("block requests", &i.requests), ("dm bios", &i.dm_bios)] {
        for d in list {
            let _ = writeln!(s, "  {what} on {}: {} in flight, oldest:", d.dev, d.total);
            for r in d.oldest.iter().take(5) {
                let op = if r.op.is_empty() { "?" } else { r.op.as_str() };
                let _ = writeln!(
                    s,
                    "    sector {} {op} {} bytes, {:.1}s old",
                    r.sector, r.bytes, r.age_seconds
                );
            }
        }
    }
    if i.requests.is_empty() && i.dm_bios.is_empty() {
        s.push_str("  no block requests or dm bios in flight on the failed devices\n");
    }
    if i.rpc_tasks.is_empty() && i.rpc_tracking == "tracked" {
        s.push_str("  no RPC tasks in flight (no NFS request was sent)\n");
    } else if i.rpc_tasks.is_empty() {
        let _ = writeln!(s, "  RPC tasks unknown: {}", i.rpc_tracking);
    } else {
        let _ = writeln!(s, "  {} RPC tasks in flight:", i.rpc_total);
        for r in i.rpc_tasks.iter().take(5) {
            let p = r.procedure.as_deref().unwrap_or("procedure unknown");
            let _ = writeln!(
                s,
                "    client {} task {} {p}, {:.1}s old",
                r.client_id, r.task_id, r.age_seconds
            );
        }
    }
    if !i.mount_calls.is_empty() {
        let _ = writeln!(s, "  {} mount calls in flight:", i.mount_calls_total);
        for m in i.mount_calls.iter().take(TASKS_SHOWN) {
            let _ = writeln!(
                s,
                "    {}({} -> {}, {}) by {} pid {} tid {}, {:.1}s",
                m.syscall, m.source, m.target, m.fstype, m.comm, m.pid, m.tid, m.age_seconds
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::evidence::bundle::tests::{bundle, capture};

    #[test]
    fn the_summary_names_the_stacks_and_what_was_not_captured() {
        let mut c = capture(2, 3, 1);
        c.unreadable.push(crate::evidence::bundle::Unreadable {
            source: "kernel log".into(),
            why: "/dev/kmsg: Permission denied".into(),
        });
        c.inflight.rpc_tracking = "tracked".into();
        let mut untracked = c.clone();
        let text = render(&bundle(vec![c]));
        assert!(
            text.contains("some_kernel_function_0+0x3c/0x120 [xfs]"),
            "{text}"
        );
        assert!(
            text.contains("kernel log: /dev/kmsg: Permission denied"),
            "{text}"
        );
        assert!(text.contains("no RPC tasks in flight"), "{text}");
        // Without the sunrpc tracepoints an empty list proves nothing, and says so.
        untracked.inflight.rpc_tracking = "not tracked: sunrpc:rpc_task_begin: missing".into();
        let text = render(&bundle(vec![untracked]));
        assert!(!text.contains("no RPC tasks in flight"), "{text}");
        assert!(text.contains("RPC tasks unknown: not tracked"), "{text}");
    }
}
