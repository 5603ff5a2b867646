//! Human-readable rendering of a `/status` document, for `bindsto status` and `bindsto check`.
//! Works on JSON, not on [`crate::publish::status::Status`], so it renders what any agent version
//! answered; fields it does not know are ignored and missing ones shown as `-`.

use std::fmt::Write;

use serde_json::Value;

/// Columns sized to their widest cell; the last column is left unpadded.
struct TextTable {
    header: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl TextTable {
    fn new(header: &[&'static str]) -> Self {
        TextTable {
            header: header.to_vec(),
            rows: Vec::new(),
        }
    }

    fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    fn render(&self, out: &mut String) {
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.len()).collect();
        for r in &self.rows {
            for (i, c) in r.iter().enumerate() {
                if let Some(w) = widths.get_mut(i) {
                    *w = (*w).max(c.chars().count());
                }
            }
        }
        let line = |cells: Vec<&str>, out: &mut String| {
            let last = cells.len().saturating_sub(1);
            let mut l = String::from("  ");
            for (i, c) in cells.iter().enumerate() {
                if i == last {
                    l.push_str(c);
                } else {
                    let _ = write!(l, "{c:<w$}  ", w = widths[i]);
                }
            }
            let _ = writeln!(out, "{}", l.trim_end());
        };
        line(self.header.clone(), out);
        for r in &self.rows {
            line(r.iter().map(String::as_str).collect(), out);
        }
    }
}

fn s(v: &Value, k: &str) -> String {
    match v.get(k) {
        Some(Value::String(x)) => x.clone(),
        Some(Value::Null) | None => "-".into(),
        Some(x) => x.to_string(),
    }
}

/// RFC 3339 without the fraction of a second: `2026-01-01T00:00:30.123456Z` -> `...:30Z`.
fn short_time(t: String) -> String {
    match (t.find('.'), t.rfind(['Z', '+'])) {
        (Some(dot), Some(end)) if dot < end => format!("{}{}", &t[..dot], &t[end..]),
        (Some(dot), None) => t[..dot].to_string(),
        _ => t,
    }
}

fn arr<'a>(doc: &'a Value, k: &str) -> &'a [Value] {
    doc.get(k)
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

fn yes_no(v: &Value, k: &str) -> String {
    match v.get(k).and_then(Value::as_bool) {
        Some(true) => "yes".into(),
        Some(false) => "no".into(),
        None => "-".into(),
    }
}

pub fn render(doc: &Value) -> String {
    let mut out = String::new();
    let healthy = doc.get("healthy").and_then(Value::as_bool) == Some(true);
    let dry = doc.get("dry_run").and_then(Value::as_bool) == Some(true);
    let _ = writeln!(
        out,
        "bindsto {}: {}{}",
        s(doc, "version"),
        if healthy { "HEALTHY" } else { "UNHEALTHY" },
        if dry {
            " (dry run: no remediation)"
        } else {
            ""
        }
    );
    let probes = arr(doc, "probes");
    let attached = probes
        .iter()
        .filter(|p| p.get("state").and_then(Value::as_str) == Some("attached"))
        .count();
    let _ = writeln!(
        out,
        "started {}, updated {}, probes {attached}/{} attached, kernel events lost {}",
        short_time(s(doc, "started_at")),
        short_time(s(doc, "updated_at")),
        probes.len(),
        s(doc, "events_lost")
    );

    let targets = arr(doc, "targets");
    let _ = writeln!(out, "\nTARGETS ({})", targets.len());
    let mut t = TextTable::new(&[
        "KIND", "ID", "STATE", "CRITICAL", "DEVICE", "SINCE", "REASONS",
    ]);
    for tg in targets {
        let reasons: Vec<String> = arr(tg, "reasons")
            .iter()
            .map(|r| format!("{}: {}", s(r, "signal"), s(r, "detail")))
            .collect();
        let state = s(tg, "state");
        t.row(vec![
            s(tg, "kind"),
            s(tg, "id"),
            if state == "healthy" {
                state
            } else {
                state.to_uppercase()
            },
            yes_no(tg, "critical"),
            s(tg, "device"),
            short_time(s(tg, "since")),
            if reasons.is_empty() {
                "-".into()
            } else {
                reasons.join("; ")
            },
        ]);
    }
    t.render(&mut out);

    let devices = arr(doc, "devices");
    let _ = writeln!(out, "\nDEVICES ({})", devices.len());
    let mut t = TextTable::new(&[
        "NAME",
        "DEV",
        "INFLIGHT",
        "OLDEST_INFLIGHT_S",
        "IO_ERRORS",
        "STALLED",
    ]);
    for d in devices {
        t.row(vec![
            s(d, "name"),
            s(d, "dev"),
            s(d, "inflight"),
            s(d, "oldest_inflight_seconds"),
            s(d, "io_errors"),
            yes_no(d, "stalled"),
        ]);
    }
    t.render(&mut out);

    let calls = arr(doc, "blocked_mount_calls");
    let _ = writeln!(out, "\nBLOCKED MOUNT CALLS ({})", calls.len());
    if !calls.is_empty() {
        let mut t = TextTable::new(&[
            "PID",
            "COMM",
            "SYSCALL",
            "BLOCKED_S",
            "FSTYPE",
            "SOURCE -> TARGET",
        ]);
        for c in calls {
            t.row(vec![
                s(c, "pid"),
                s(c, "comm"),
                s(c, "syscall"),
                s(c, "blocked_seconds"),
                s(c, "fstype"),
                format!("{} -> {}", s(c, "source"), s(c, "target")),
            ]);
        }
        t.render(&mut out);
    }

    let watches = arr(doc, "watches");
    if !watches.is_empty() {
        let _ = writeln!(out, "\nWATCHES ({})", watches.len());
        let mut t = TextTable::new(&["PATH", "CRITICAL", "MOUNT"]);
        for w in watches {
            let mount = match w.get("problem") {
                Some(Value::String(p)) => format!("not applied: {p}"),
                _ => s(w, "mount"),
            };
            t.row(vec![s(w, "path"), yes_no(w, "critical"), mount]);
        }
        t.render(&mut out);
    }

    if let Some(rem) = doc.get("remediation") {
        render_remediation(rem, &mut out);
    }

    let missing: Vec<&Value> = probes
        .iter()
        .filter(|p| p.get("state").and_then(Value::as_str) != Some("attached"))
        .collect();
    if !missing.is_empty() {
        let _ = writeln!(
            out,
            "\nPROBES NOT ATTACHED ({}; `bindsto doctor` says why)",
            missing.len()
        );
        let mut t = TextTable::new(&["PROBE", "STATE", "DETAIL"]);
        for p in missing {
            t.row(vec![s(p, "probe"), s(p, "state"), s(p, "detail")]);
        }
        t.render(&mut out);
    }
    out
}

/// The ladder's configuration, identity problems and the latest incidents with their steps.
fn render_remediation(rem: &Value, out: &mut String) {
    let actions: Vec<String> = arr(rem, "actions")
        .iter()
        .filter_map(|a| a.as_str().map(str::to_owned))
        .collect();
    let _ = writeln!(
        out,
        "\nREMEDIATION: {} (hold_down {}, max {} per hour{})",
        if actions.is_empty() {
            "disabled".to_owned()
        } else {
            actions.join(" -> ")
        },
        s(rem, "hold_down"),
        s(rem, "max_per_hour"),
        if rem.get("dry_run").and_then(Value::as_bool) == Some(true) {
            ", dry run"
        } else {
            ""
        }
    );
    for p in arr(rem, "problems") {
        let _ = writeln!(out, "  problem: {}", p.as_str().unwrap_or_default());
    }
    let incidents = arr(rem, "incidents");
    if incidents.is_empty() {
        return;
    }
    let mut t = TextTable::new(&["INCIDENT", "PHASE", "OPENED", "ACTION", "OUTCOME", "DETAIL"]);
    for i in incidents.iter().rev().take(3) {
        let steps = arr(i, "steps");
        let first = steps.first();
        t.row(vec![
            s(i, "id"),
            s(i, "phase"),
            s(i, "opened_at"),
            first.map_or("-".into(), |st| s(st, "action")),
            first.map_or("-".into(), |st| s(st, "outcome")),
            first.map_or("-".into(), |st| s(st, "detail")),
        ]);
        for st in steps.iter().skip(1) {
            t.row(vec![
                String::new(),
                String::new(),
                String::new(),
                s(st, "action"),
                s(st, "outcome"),
                s(st, "detail"),
            ]);
        }
    }
    t.render(out);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_an_unhealthy_host_readably() {
        let doc = serde_json::json!({
            "healthy": false, "version": "0.1.0", "dry_run": true,
            "started_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:01:00Z",
            "events_lost": 0,
            "targets": [
                {"kind": "mount", "id": "/var/lib/docker/with/a/very/long/path", "device": "259:1",
                 "critical": true, "state": "failed", "since": "2026-01-01T00:00:30Z",
                 "reasons": [{"signal": "io_stall", "detail": "oldest request 31.0 s"}]},
                {"kind": "subsystem", "id": "mount", "critical": true, "state": "healthy",
                 "since": "2026-01-01T00:00:00Z", "reasons": []}
            ],
            "devices": [{"name": "nvme1n1", "dev": "259:1", "inflight": 3,
                         "oldest_inflight_seconds": 31.0, "io_errors": 0, "stalled": true}],
            "blocked_mount_calls": [{"pid": 42, "comm": "mount", "syscall": "mount",
                "source": "fs-1.efs:/", "target": "/mnt/efs", "fstype": "nfs4",
                "blocked_seconds": 75.5}],
            "watches": [{"path": "/data", "critical": true, "mount": null,
                         "problem": "no mount contains this path"}],
            "probes": [{"probe": "xfs:xfs_force_shutdown", "state": "missing", "detail": "not in tracefs"},
                       {"probe": "block:block_rq_issue", "state": "attached", "detail": ""}]
        });
        let text = render(&doc);
        println!("{text}");
        assert!(text.starts_with("bindsto 0.1.0: UNHEALTHY (dry run"));
        assert!(text.contains("probes 1/2 attached"));
        // Columns line up even with a long id: STATE starts at the same offset in both rows.
        let rows: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("/var/lib/docker") || l.contains("subsystem"))
            .collect();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].find("FAILED"), rows[1].find("healthy"));
        assert!(text.contains("io_stall: oldest request 31.0 s"));
        assert!(text.contains("BLOCKED MOUNT CALLS (1)"));
        assert!(text.contains("fs-1.efs:/ -> /mnt/efs"));
        assert!(text.contains("not applied: no mount contains this path"));
        assert!(text.contains("PROBES NOT ATTACHED (1"));
        assert!(text.contains("nvme1n1"));
        assert_eq!(
            short_time("2026-01-01T00:00:30.123456Z".into()),
            "2026-01-01T00:00:30Z"
        );
        assert_eq!(
            short_time("2026-01-01T00:00:30Z".into()),
            "2026-01-01T00:00:30Z"
        );
    }

    #[test]
    fn renders_incidents_and_their_steps() {
        let doc = serde_json::json!({
            "healthy": false, "version": "0.1.0",
            "remediation": {
                "dry_run": false, "actions": ["ecs-drain", "asg-unhealthy"],
                "hold_down": "30s", "max_per_hour": 2,
                "problems": ["IMDS: connection refused"],
                "incidents": [{"id": "1-host", "phase": "held", "opened_at": "2026-01-01T00:00:00Z",
                    "steps": [
                        {"action": "ecs-drain", "outcome": "done", "detail": "DRAINING"},
                        {"action": "asg-unhealthy", "outcome": "held_by_breaker", "detail": "50% > 20%"}
                    ]}]
            }
        });
        let out = render(&doc);
        assert!(
            out.contains("REMEDIATION: ecs-drain -> asg-unhealthy (hold_down 30s, max 2 per hour)"),
            "{out}"
        );
        assert!(out.contains("problem: IMDS: connection refused"), "{out}");
        assert!(out.contains("held_by_breaker"), "{out}");
        assert!(
            out.lines()
                .any(|l| l.contains("1-host") && l.contains("held") && l.contains("ecs-drain")),
            "{out}"
        );
    }
}
