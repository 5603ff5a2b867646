//! The BTF-enabled block programs (`tp_btf` on `block_rq_issue` and `block_rq_complete`):
//! the `struct request` layout they read, found in the kernel's BTF before the object is
//! loaded, and their attachment, both or neither (an issue keyed by request pointer needs
//! the completion that deletes by it). Where BTF or `tp_btf` is missing, or the verifier
//! refuses them, the classic tracepoints track requests instead and the reason is reported.

use agent_ebpf::{
    COMPLETE_ERRORS_ERRNO, COMPLETE_ERRORS_NONE, COMPLETE_ERRORS_STATUS, NO_MEMBER, RqLayout,
};
use aya::{Ebpf, programs::BtfTracePoint};

use super::{
    btf::{self, BtfError},
    btf_placeholder::{PLACEHOLDER_TYPEDEF, placeholder},
};

/// The programs, by function name in `agent-ebpf`, and their events.
pub const ISSUE: (&str, &str) = ("block_rq_issue_btf", "block_rq_issue");
pub const COMPLETE: (&str, &str) = ("block_rq_complete_btf", "block_rq_complete");
/// Classic programs the BTF-enabled pair replaces (requeue: a re-issue replaces the entry).
pub const REPLACED: [&str; 3] = ["block_rq_issue", "block_rq_complete", "block_rq_requeue"];

/// Set (to anything but `0`) to track requests with the classic tracepoints even where the
/// BTF-enabled programs would run: to compare the two, or to step around a verifier that
/// misjudges them until a fix ships.
pub const FORCE_CLASSIC_ENV: &str = "BINDSTO_CLASSIC_TRACEPOINTS";

pub fn classic_forced() -> bool {
    std::env::var_os(FORCE_CLASSIC_ENV).is_some_and(|v| v != "0")
}

/// Whether the probe (`block:<event>`) has a BTF-enabled program.
pub fn has_btf_program(probe: &str) -> bool {
    probe
        .strip_prefix("block:")
        .is_some_and(|ev| ev == ISSUE.1 || ev == COMPLETE.1)
}

/// What loading the pair needs: the layout for the global and the prototypes' ids.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Prepared {
    pub layout: RqLayout,
    issue_id: u32,
    complete_id: u32,
}

/// The layout of the running kernel (`btf`: its raw BTF). `have_rq_error`: the kernel has
/// `block:block_rq_error`, so completions need not report errors.
pub fn prepare(btf: &[u8], have_rq_error: bool) -> Result<Prepared, BtfError> {
    let protos = btf::trace_protos(btf, &[ISSUE.1, COMPLETE.1])?;
    let proto = |ev: &str| {
        protos
            .get(ev)
            .ok_or_else(|| BtfError::NoTrace(ev.to_owned()))
    };
    let (issue, complete) = (proto(ISSUE.1)?, proto(COMPLETE.1)?);
    // 5.11 dropped the queue argument: `(q, rq)` became `(rq)`.
    let issue_arg = match issue.arg_sizes.len() {
        1 => 0,
        2 => 1,
        _ => return Err(BtfError::Shape(issue.id)),
    };
    let all = btf::struct_members(btf, &["request", "request_queue", "gendisk"])?;
    let m = |s: &str, f: &str| btf::member(&all, s, f);
    let rq_disk = m("request", "rq_disk").unwrap_or(NO_MEMBER);
    let (rq_q, q_disk) = if rq_disk == NO_MEMBER {
        (m("request", "q")?, m("request_queue", "disk")?)
    } else {
        (0, 0)
    };
    let bits = btf::enum_values(btf, "req_flag_bits")?;
    // A flag this kernel lacks gets a bit number no u32 has: never set.
    let bit = |n: &str| bits.get(n).map_or(32, |v| *v as u32);
    let complete_errors = match (have_rq_error, complete.arg_sizes.get(1)) {
        (true, _) => COMPLETE_ERRORS_NONE,
        (false, Some(1)) => COMPLETE_ERRORS_STATUS,
        (false, Some(4)) => COMPLETE_ERRORS_ERRNO,
        (false, _) => return Err(BtfError::Shape(complete.id)),
    };
    Ok(Prepared {
        layout: RqLayout {
            issue_arg,
            rq_disk,
            rq_q,
            q_disk,
            disk_major: m("gendisk", "major")?,
            disk_first_minor: m("gendisk", "first_minor")?,
            sector: m("request", "__sector")?,
            data_len: m("request", "__data_len")?,
            cmd_flags: m("request", "cmd_flags")?,
            start_time_ns: m("request", "start_time_ns")?,
            bit_preflush: bit("__REQ_PREFLUSH"),
            bit_fua: bit("__REQ_FUA"),
            bit_rahead: bit("__REQ_RAHEAD"),
            bit_sync: bit("__REQ_SYNC"),
            bit_meta: bit("__REQ_META"),
            complete_errors,
        },
        issue_id: issue.id,
        complete_id: complete.id,
    })
}

fn program<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut BtfTracePoint, String> {
    ebpf.program_mut(name)
        .ok_or_else(|| format!("program {name} missing from the kernel object"))?
        .try_into()
        .map_err(|e| format!("{name}: {e}"))
}

/// Loads and attaches the pair: the completion first, so that no request is recorded
/// before something deletes it. On any error nothing stays attached.
pub fn attach(ebpf: &mut Ebpf, p: &Prepared) -> Result<(), String> {
    let names = placeholder(&[
        (
            p.issue_id,
            PLACEHOLDER_TYPEDEF,
            &format!("btf_trace_{}", ISSUE.1),
        ),
        (
            p.complete_id,
            PLACEHOLDER_TYPEDEF,
            &format!("btf_trace_{}", COMPLETE.1),
        ),
    ])
    .map_err(|e| format!("placeholder BTF: {e}"))?;
    for (prog, event) in [COMPLETE, ISSUE] {
        program(ebpf, prog)?
            .load(event, &names)
            .map_err(|e| format!("the kernel refused tp_btf/{event}: {e}"))?;
    }
    drop(names);
    let complete = program(ebpf, COMPLETE.0)?
        .attach()
        .map_err(|e| format!("attaching tp_btf/{}: {e}", COMPLETE.1))?;
    if let Err(e) = program(ebpf, ISSUE.0)?.attach() {
        if let Ok(p) = program(ebpf, COMPLETE.0) {
            let _ = p.detach(complete);
        }
        return Err(format!("attaching tp_btf/{}: {e}", ISSUE.1));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The running kernel (world-readable BTF): its layout is complete and plausible.
    #[test]
    fn the_running_kernels_request_layout() {
        let Ok(raw) = btf::read_vmlinux() else {
            eprintln!("no {}; skipped", btf::VMLINUX);
            return;
        };
        let p = prepare(&raw, true).unwrap();
        let l = p.layout;
        assert_eq!(l.complete_errors, COMPLETE_ERRORS_NONE);
        assert!(l.sector > 0 && l.data_len > 0 && l.start_time_ns > 0);
        assert!(l.bit_sync < 32 && l.bit_fua < 32 && l.bit_preflush < 32);
        assert!(l.rq_disk != NO_MEMBER || l.q_disk > 0);
        assert!(p.issue_id > 1000 && p.complete_id > 1000);
        // Without block_rq_error the completion's error argument is read instead.
        let q = prepare(&raw, false).unwrap();
        assert_ne!(q.layout.complete_errors, COMPLETE_ERRORS_NONE);
    }
}
