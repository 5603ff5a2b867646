//! Kernel stacks of every task in uninterruptible sleep, by the BPF task iterator (the
//! `stacks` object of `agent-ebpf`), in the evidence reader.
//!
//! `/proc/<tid>/stack` of a task holding capabilities the reader lacks (any root daemon, a
//! kernel thread, the `mount` a container runtime starts) needs `CAP_SYS_PTRACE`, which the
//! service's bounding set does not grant; the iterator needs only what loading it needs
//! (`CAP_SYS_ADMIN`, or `CAP_BPF` with `CAP_PERFMON`) and the kernel names the frames itself,
//! so neither `/proc/kallsyms` nor `CAP_SYSLOG` is involved. It is loaded once when the reader
//! starts and run once per request; where it cannot load (no BTF, a verifier that refuses it)
//! the reader says why and falls back to `/proc`.

use std::{collections::HashMap, io::Read};

use aya::{Ebpf, EbpfLoader, programs::Iter};

use crate::probes::{btf, btf_placeholder};

/// The iterator object built by `build.rs` next to the main one.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/stacks"));
const PROGRAM: &str = "task_stacks";
/// What one run may print: about 2 KiB per D-state task; a host with thousands of them
/// still fits, and a runaway read cannot grow the reader.
const MAX_OUTPUT: u64 = 8 << 20;

/// One task as the iterator printed it.
#[derive(Debug, Clone, PartialEq)]
pub struct IterTask {
    pub tgid: u32,
    /// The raw `task_struct` state bits.
    pub state: u32,
    /// Time since it last ran, nanoseconds; `None` where the kernel does not keep it.
    pub waited_ns: Option<u64>,
    pub frames: Vec<String>,
    /// The kernel's error where walking the stack failed (`bpf_get_task_stack`, negative).
    pub walk_error: Option<i64>,
}

/// The loaded iterator.
pub struct StackIter {
    ebpf: Ebpf,
}

impl StackIter {
    /// Loads the program with `task_struct` offsets from the running kernel's BTF.
    pub fn load() -> Result<Self, String> {
        if OBJECT.is_empty() {
            return Err("built without kernel programs (AYA_BUILD_SKIP)".into());
        }
        let raw = btf::read_vmlinux().map_err(|e| e.to_string())?;
        let offsets = btf::task_offsets(&raw).map_err(|e| e.to_string())?;
        let attach_id = btf::func_id(&raw, "bpf_iter_task").map_err(|e| e.to_string())?;
        drop(raw);
        // One thing at a time, for a low peak: aya's loader parses the whole kernel BTF
        // (some 20 MiB while it lives), and is gone before the placeholders are built.
        let mut ebpf = EbpfLoader::new()
            .override_global(agent_ebpf::TASK_OFFSETS_GLOBAL, &offsets, true)
            .load(OBJECT)
            .map_err(|e| format!("loading the stack iterator: {e}"))?;
        // SAFETY: malloc_trim has no memory arguments.
        unsafe { libc::malloc_trim(0) };
        // What `Iter::load` is given to find its attach point (see `btf::placeholder`).
        let attach = btf_placeholder::placeholder(&[(
            attach_id,
            btf_placeholder::PLACEHOLDER_FUNC,
            "bpf_iter_task",
        )])
        .map_err(|e| format!("placeholder BTF: {e}"))?;
        let prog: &mut Iter = ebpf
            .program_mut(PROGRAM)
            .ok_or("the stack iterator is missing from its object")?
            .try_into()
            .map_err(|e| format!("{e}"))?;
        let loaded = prog
            .load("task", &attach)
            .map_err(|e| format!("the kernel refused the stack iterator: {e}"));
        drop(attach);
        // What the loader and the placeholders took goes back to the system now; the reader
        // lives as long as the agent.
        // SAFETY: malloc_trim has no memory arguments.
        unsafe { libc::malloc_trim(0) };
        loaded?;
        Ok(Self { ebpf })
    }

    /// One walk over every task: the D-state ones with their stacks, by tid.
    pub fn read(&mut self) -> Result<HashMap<u32, IterTask>, String> {
        let prog: &mut Iter = self
            .ebpf
            .program_mut(PROGRAM)
            .ok_or("the stack iterator is gone")?
            .try_into()
            .map_err(|e| format!("{e}"))?;
        let id = prog.attach().map_err(|e| format!("attaching: {e}"))?;
        let link = prog.take_link(id).map_err(|e| format!("{e}"))?;
        let file = link.into_file().map_err(|e| format!("{e}"))?;
        let mut text = String::new();
        file.take(MAX_OUTPUT)
            .read_to_string(&mut text)
            .map_err(|e| format!("reading the iterator: {e}"))?;
        Ok(parse(&text))
    }
}

/// `T <tid> <tgid> <state> <waited_ns>` followed by its frames, one per line, or by
/// `E <error>` where the walk failed.
pub fn parse(text: &str) -> HashMap<u32, IterTask> {
    let mut out = HashMap::new();
    let mut current: Option<(u32, IterTask)> = None;
    for line in text.lines() {
        if let Some(head) = line.strip_prefix("T ") {
            if let Some((tid, t)) = current.take() {
                out.insert(tid, t);
            }
            let f: Vec<u64> = head
                .split_whitespace()
                .filter_map(|w| w.parse().ok())
                .collect();
            if let [tid, tgid, state, waited] = f[..] {
                current = Some((
                    tid as u32,
                    IterTask {
                        tgid: tgid as u32,
                        state: state as u32,
                        waited_ns: (waited > 0).then_some(waited),
                        frames: Vec::new(),
                        walk_error: None,
                    },
                ));
            }
        } else if let Some((_, t)) = current.as_mut() {
            if let Some(e) = line.strip_prefix("E ") {
                // `%lld` of the helper's return value: a negative errno.
                t.walk_error = e.trim().parse::<i64>().ok();
                continue;
            }
            let frame = line.trim();
            if !frame.is_empty() && t.frames.len() < super::helper::MAX_FRAMES {
                t.frames.push(frame.to_owned());
            }
        }
    }
    if let Some((tid, t)) = current {
        out.insert(tid, t);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iterator_output_parses_by_task() {
        let text = "T 4242 4240 2 31000000000\nxfs_buf_lock+0x3c/0x120 [xfs]\n\
                    __x64_sys_mount+0x1a/0x30\nT 7 7 1026 0\nT 9 9 2 5\nE -14\n\
                    T bad\nstray\n";
        let got = parse(text);
        let t = &got[&4242];
        assert_eq!(t.tgid, 4240);
        assert_eq!(t.waited_ns, Some(31_000_000_000));
        assert_eq!(
            t.frames,
            vec!["xfs_buf_lock+0x3c/0x120 [xfs]", "__x64_sys_mount+0x1a/0x30"]
        );
        assert_eq!(got[&7].waited_ns, None);
        assert!(
            got[&7].frames.is_empty(),
            "a malformed head ends the task before it"
        );
        assert_eq!(got[&9].walk_error, Some(-14), "EFAULT");
        assert!(got[&9].frames.is_empty());
        assert_eq!(got[&4242].walk_error, None);
        assert_eq!(got.len(), 3);
    }
}
