//! The kprobe fallbacks of the loader: attached where their tracepoint is missing (5.10's
//! `xfs_do_force_shutdown`) and the kernel has kprobes.

use std::{collections::HashSet, path::Path};

use aya::programs::KProbe;
use tracing::{info, warn};

use super::AttachedProbes;
use crate::probes::{
    ProbeError, ProbeState, ProbeStatus, Via,
    spec::{KPROBES, KprobeSpec},
};

impl AttachedProbes {
    /// Attaches the kprobe fallbacks whose tracepoint is missing. Not listed at all where the
    /// tracepoint is attached (nothing is missing there).
    pub(super) fn attach_kprobes(
        &mut self,
        previous: &HashSet<String>,
        status: &mut Vec<ProbeStatus>,
    ) -> bool {
        let mut changed = false;
        for k in KPROBES {
            let probe = k.probe_name();
            let push = |status: &mut Vec<ProbeStatus>, state, detail: String| {
                let mut s = ProbeStatus::new(probe.clone(), k.program, state, detail);
                s.via = Via::Kprobe;
                status.push(s);
            };
            if previous.contains(&probe) {
                push(status, ProbeState::Attached, String::new());
                continue;
            }
            let replaced = status
                .iter()
                .any(|s| s.probe == k.instead_of && s.state == ProbeState::Attached);
            if replaced {
                continue;
            }
            if !Path::new("/sys/bus/event_source/devices/kprobe").exists() {
                push(
                    status,
                    ProbeState::Missing,
                    format!("replaces {}; this kernel has no kprobes", k.instead_of),
                );
                continue;
            }
            if !self.kernel_has_function(k.function) {
                push(
                    status,
                    ProbeState::Missing,
                    format!(
                        "replaces {}; {} not in the kernel (module not loaded?)",
                        k.instead_of, k.function
                    ),
                );
                continue;
            }
            match self.attach_kprobe(k) {
                Ok(()) => {
                    info!(probe, "attached kprobe fallback");
                    changed = true;
                    push(
                        status,
                        ProbeState::Attached,
                        format!("replaces {}", k.instead_of),
                    );
                }
                Err(e) => {
                    warn!(probe, error = %e, "could not attach kprobe; continuing without it");
                    push(status, ProbeState::Failed, e.to_string());
                }
            }
        }
        changed
    }

    /// Whether a function can be probed: listed in tracefs' available_filter_functions
    /// (module functions appear once the module is loaded).
    fn kernel_has_function(&self, function: &str) -> bool {
        let Ok(text) = std::fs::read_to_string(self.tracefs.join("available_filter_functions"))
        else {
            return false;
        };
        text.lines()
            .any(|l| l.split_whitespace().next() == Some(function))
    }

    fn attach_kprobe(&mut self, k: &KprobeSpec) -> Result<(), ProbeError> {
        let prog: &mut KProbe = self
            .ebpf
            .program_mut(k.program)
            .ok_or(ProbeError::MissingProgram(k.program))?
            .try_into()?;
        if !self.loaded_programs.contains(k.program) {
            prog.load()?;
            self.loaded_programs.insert(k.program);
        }
        prog.attach(k.function, 0)?;
        Ok(())
    }
}
