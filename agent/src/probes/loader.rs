//! Loads the embedded kernel object, fills in tracefs field offsets and attaches every program
//! whose tracepoint exists on the running kernel. A missing tracepoint is skipped with a
//! warning and reported; the rest runs.

use std::{
    collections::{HashMap, HashSet},
    path::{Path, PathBuf},
};

use agent_ebpf::{FLAG_ERRORS_FROM_COMPLETE, Offsets, RQ_LAYOUT_GLOBAL, maps};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, MapData},
    programs::{TracePoint, trace_point::TracePointLinkId},
};
use tracing::{debug, info, warn};

use super::{
    Maps, ProbeError, ProbeState, ProbeStatus, ScanMaps, Via, btf, btf_block, dev, format,
    spec::{PROGRAMS, ProgramSpec, Tracepoint},
};

mod kprobes;

/// The kernel object built by `build.rs` from `agent-ebpf`.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/bindsto"));

/// The loaded object; kept alive for as long as programs should stay attached. Dropping it
/// detaches everything (nothing is pinned, so a dead agent leaves nothing behind).
pub struct AttachedProbes {
    ebpf: Ebpf,
    offsets_map: Array<MapData, Offsets>,
    offsets: Offsets,
    loaded_programs: HashSet<&'static str>,
    tracefs: PathBuf,
    status: Vec<ProbeStatus>,
    /// Whether the BTF-enabled block programs track requests, or why not.
    block_btf: Result<(), String>,
    /// Links of the classic programs, for those attached only while needed.
    links: HashMap<&'static str, TracePointLinkId>,
}

/// The bio-level programs: needed only for device-mapper devices.
const BIO_PROGRAMS: [&str; 2] = ["block_bio_queue", "block_bio_complete"];

fn take<T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>>(
    ebpf: &mut Ebpf,
    name: &'static str,
) -> Result<T, ProbeError> {
    let map = ebpf.take_map(name).ok_or(ProbeError::MissingMap(name))?;
    T::try_from(map).map_err(|source| ProbeError::Map { name, source })
}

/// Raises the locked-memory limit for kernels that still charge BPF memory to it (< 5.11).
/// On newer kernels BPF memory is charged to the cgroup and this may fail harmlessly.
fn raise_memlock() {
    let rlim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: plain syscall with a valid pointer.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rlim) } != 0 {
        debug!(
            error = %std::io::Error::last_os_error(),
            "setrlimit(RLIMIT_MEMLOCK) failed; fine on kernels >= 5.11"
        );
    }
}

/// Why a tracepoint is absent: events of modules (xfs, ext4, sunrpc) appear only once it loads.
fn missing_detail(system: &str) -> String {
    match system {
        "xfs" | "ext4" | "sunrpc" => format!(
            "tracepoint not present: module {system} not loaded (retried every pass) or not in this kernel"
        ),
        _ => "tracepoint not present on this kernel".into(),
    }
}

impl AttachedProbes {
    /// Loads the object and attaches what the running kernel supports.
    pub fn load(tracefs: &Path) -> Result<(Self, Maps), ProbeError> {
        if OBJECT.is_empty() {
            return Err(ProbeError::NoObject);
        }
        raise_memlock();
        // The request layout first: a read-only global is fixed when the object loads. The
        // raw BTF is gone again before aya's loader parses its own copy.
        let have_rq_error = matches!(
            format::read(tracefs, "block", "block_rq_error"),
            Ok(Some(_))
        );
        let prepared = if btf_block::classic_forced() {
            Err(format!("{} is set", btf_block::FORCE_CLASSIC_ENV))
        } else {
            btf::read_vmlinux()
                .and_then(|raw| btf_block::prepare(&raw, have_rq_error))
                .map_err(|e| format!("no request layout from the kernel's BTF: {e}"))
        };
        let layout = prepared.as_ref().map(|p| p.layout).unwrap_or_default();
        let mut ebpf = EbpfLoader::new()
            .override_global(RQ_LAYOUT_GLOBAL, &layout, true)
            .load(OBJECT)?;
        let maps = Maps {
            events: take(&mut ebpf, maps::EVENTS)?,
            scan: ScanMaps {
                rq_inflight: take(&mut ebpf, maps::RQ_INFLIGHT)?,
                mount_calls: take(&mut ebpf, maps::MOUNT_CALLS)?,
                stats: take(&mut ebpf, maps::STATS)?,
                bio_inflight: take(&mut ebpf, maps::BIO_INFLIGHT)?,
                bio_done: take(&mut ebpf, maps::BIO_DONE)?,
                rpc_inflight: take(&mut ebpf, maps::RPC_INFLIGHT)?,
            },
        };
        let offsets_map = take(&mut ebpf, maps::OFFSETS)?;
        let mut loaded = Self {
            ebpf,
            offsets_map,
            offsets: Offsets::new(),
            loaded_programs: HashSet::new(),
            tracefs: tracefs.to_path_buf(),
            status: Vec::new(),
            block_btf: Err(String::new()),
            links: HashMap::new(),
        };
        loaded.block_btf = prepared.and_then(|p| btf_block::attach(&mut loaded.ebpf, &p));
        match &loaded.block_btf {
            Ok(()) => info!("block requests tracked by the BTF-enabled programs (tp_btf)"),
            Err(e) => warn!(reason = %e, "block requests tracked by the classic tracepoints"),
        }
        loaded.attach_missing()?;
        Ok((loaded, maps))
    }

    pub fn status(&self) -> &[ProbeStatus] {
        &self.status
    }

    /// Attaches every tracepoint not attached yet (a module such as xfs or sunrpc may load
    /// after the agent started). Returns true when something new was attached.
    pub fn attach_missing(&mut self) -> Result<bool, ProbeError> {
        let previous: HashSet<String> = self
            .status
            .iter()
            .filter(|s| s.state == ProbeState::Attached)
            .map(|s| s.probe.clone())
            .collect();
        // First resolve every layout, so the offsets are in the map before any program runs.
        let mut ready: Vec<(&'static ProgramSpec, &'static Tracepoint, &'static str)> = Vec::new();
        let mut status = Vec::new();
        let mut offsets = self.offsets;
        let mut changed = false;
        // dm-mod may load after the agent: its major is looked up again on every pass. The bio
        // programs run on every bio of every disk, so only while a dm device exists.
        offsets.bio_major = dev::device_mapper_major(Path::new("/proc/devices")).unwrap_or(0);
        let want_bio =
            offsets.bio_major != 0 && dev::device_mapper_present(Path::new("/sys/block"));
        for prog in PROGRAMS {
            if self.block_btf.is_ok() && btf_block::REPLACED.contains(&prog.program) {
                status.extend(self.btf_status(prog));
                continue;
            }
            if BIO_PROGRAMS.contains(&prog.program) && !want_bio {
                changed |= self.detach(prog.program);
                status.extend(prog.tracepoints.iter().map(|tp| {
                    ProbeStatus::new(
                        tp.probe_name(),
                        prog.program,
                        ProbeState::Standby,
                        "no device-mapper device: attached when one appears".into(),
                    )
                }));
                continue;
            }
            for tp in prog.tracepoints {
                let probe = tp.probe_name();
                if previous.contains(&probe) {
                    status.push(ProbeStatus::new(
                        probe,
                        prog.program,
                        ProbeState::Attached,
                        String::new(),
                    ));
                    continue;
                }
                match self.resolve(tp, &mut offsets) {
                    Ok(Some(event)) => ready.push((prog, tp, event)),
                    Ok(None) => status.push(ProbeStatus::new(
                        probe,
                        prog.program,
                        ProbeState::Missing,
                        missing_detail(tp.system),
                    )),
                    Err(e) => status.push(ProbeStatus::new(
                        probe,
                        prog.program,
                        ProbeState::Failed,
                        e.to_string(),
                    )),
                }
            }
        }
        // Without block_rq_error (5.10), completions with an error are the only error signal.
        let have_rq_error = ready.iter().any(|(_, tp, _)| tp.event == "block_rq_error")
            || previous.contains("block:block_rq_error");
        if have_rq_error {
            offsets.flags &= !FLAG_ERRORS_FROM_COMPLETE;
        } else {
            offsets.flags |= FLAG_ERRORS_FROM_COMPLETE;
        }
        self.offsets_map.set(0, offsets, 0)?;
        self.offsets = offsets;

        for (prog, tp, event) in ready {
            let probe = tp.probe_name();
            match self.attach(prog.program, tp.system, event) {
                Ok(()) => {
                    info!(probe, event, "attached");
                    changed = true;
                    status.push(ProbeStatus::new(
                        probe,
                        prog.program,
                        ProbeState::Attached,
                        String::new(),
                    ));
                }
                Err(e) => {
                    warn!(probe, error = %e, "could not attach; continuing without it");
                    status.push(ProbeStatus::new(
                        probe,
                        prog.program,
                        ProbeState::Failed,
                        e.to_string(),
                    ));
                }
            }
        }
        changed |= self.attach_kprobes(&previous, &mut status);
        if let Err(why) = &self.block_btf {
            for s in status
                .iter_mut()
                .filter(|s| btf_block::REPLACED[..2].contains(&s.program))
            {
                s.detail = format!("classic tracepoint; tp_btf not used: {why}");
            }
        }
        for s in &status {
            let was_reported = self
                .status
                .iter()
                .any(|old| old.probe == s.probe && old.state == s.state);
            if s.state == ProbeState::Missing && !was_reported {
                if s.probe.starts_with("kprobe:") {
                    warn!(probe = %s.probe, detail = %s.detail, "kprobe fallback unavailable; skipped");
                } else {
                    warn!(probe = %s.probe, "tracepoint missing on this kernel; skipped");
                }
            }
        }
        self.status = status;
        Ok(changed)
    }

    /// The BTF-enabled pair stands for the classic issue and completion (requeue needs no
    /// program there, and is not listed).
    fn btf_status(&self, prog: &'static ProgramSpec) -> Option<ProbeStatus> {
        let (program, _) = [btf_block::ISSUE, btf_block::COMPLETE]
            .into_iter()
            .find(|(_, event)| *event == prog.program)?;
        let tp = prog.tracepoints.first()?;
        let mut s = ProbeStatus::new(
            tp.probe_name(),
            program,
            ProbeState::Attached,
            "tp_btf: reads struct request directly, keyed by the request pointer".into(),
        );
        s.via = Via::TpBtf;
        Some(s)
    }

    /// Reads the tracepoint's format (or its fallback's) and records the field offsets.
    /// Returns the event name that exists, or None when neither does.
    fn resolve(
        &self,
        tp: &'static Tracepoint,
        offsets: &mut Offsets,
    ) -> Result<Option<&'static str>, ProbeError> {
        for event in std::iter::once(tp.event).chain(tp.fallback) {
            let Some(fmt) = format::read(&self.tracefs, tp.system, event)? else {
                continue;
            };
            for (field, name) in tp.fields {
                let f = fmt.field(name).ok_or_else(|| ProbeError::MissingField {
                    event: format!("{}:{}", tp.system, event),
                    field: name,
                })?;
                offsets.set(*field, f.offset);
            }
            return Ok(Some(event));
        }
        Ok(None)
    }

    fn attach(
        &mut self,
        program: &'static str,
        system: &str,
        event: &str,
    ) -> Result<(), ProbeError> {
        let prog: &mut TracePoint = self
            .ebpf
            .program_mut(program)
            .ok_or(ProbeError::MissingProgram(program))?
            .try_into()?;
        if !self.loaded_programs.contains(program) {
            prog.load()?;
            self.loaded_programs.insert(program);
        }
        let link = prog.attach(system, event)?;
        self.links.insert(program, link);
        Ok(())
    }

    /// Detaches a classic program attached by [`Self::attach`]; true when it was attached.
    fn detach(&mut self, program: &'static str) -> bool {
        let Some(link) = self.links.remove(program) else {
            return false;
        };
        let detached = self
            .ebpf
            .program_mut(program)
            .and_then(|p| <&mut TracePoint>::try_from(p).ok())
            .map(|p| p.detach(link));
        match detached {
            Some(Ok(())) => {
                info!(program, "detached: no device-mapper device left");
                true
            }
            Some(Err(e)) => {
                warn!(program, error = %e, "could not detach");
                false
            }
            None => false,
        }
    }
}
