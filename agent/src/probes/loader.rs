//! Loads the embedded kernel object, fills in tracefs field offsets and attaches every program
//! whose tracepoint exists on the running kernel. A missing tracepoint is skipped with a
//! warning and reported; the rest runs.

use std::{
    collections::HashSet,
    os::fd::AsFd,
    path::{Path, PathBuf},
};

use agent_ebpf::{
    BioDone, FLAG_ERRORS_FROM_COMPLETE, MountCall, Offsets, RpcKey, RqKey, RqVal, maps,
};
use aya::{
    Ebpf,
    maps::{Array, HashMap, IterableMap, MapData, PerCpuArray, RingBuf},
    programs::{KProbe, TracePoint},
};
use serde::Serialize;
use tracing::{debug, info, warn};

use super::{
    ProbeError, format,
    spec::{KPROBES, KprobeSpec, PROGRAMS, ProgramSpec, Tracepoint},
};

/// The kernel object built by `build.rs` from `agent-ebpf`.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/bindsto"));

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProbeState {
    Attached,
    /// The tracepoint does not exist on this kernel (or its module is not loaded yet).
    Missing,
    /// It exists but could not be used (unexpected layout, verifier or attach error).
    Failed,
}

/// What happened to one tracepoint; shown by `doctor`, `/status` and the metrics.
#[derive(Clone, Debug, Serialize)]
pub struct ProbeStatus {
    pub probe: String,
    pub program: &'static str,
    pub state: ProbeState,
    pub detail: String,
}

/// Map handles taken out of the object, used by the event reader and the scanner.
pub struct Maps {
    pub events: RingBuf<MapData>,
    pub scan: ScanMaps,
}

/// The maps the scanner reads each pass.
pub struct ScanMaps {
    pub rq_inflight: HashMap<MapData, RqKey, RqVal>,
    pub mount_calls: HashMap<MapData, u64, MountCall>,
    pub stats: PerCpuArray<MapData, u64>,
    pub bio_inflight: HashMap<MapData, RqKey, RqVal>,
    pub bio_done: HashMap<MapData, u32, BioDone>,
    pub rpc_inflight: HashMap<MapData, RpcKey, RqVal>,
}

/// Second handles on the in-flight maps, for the incident evidence: its capture runs on its
/// own thread while the scanner keeps the first ones. Read-only by convention.
pub struct InflightMaps {
    pub rq_inflight: HashMap<MapData, RqKey, RqVal>,
    pub mount_calls: HashMap<MapData, u64, MountCall>,
    pub bio_inflight: HashMap<MapData, RqKey, RqVal>,
    pub rpc_inflight: HashMap<MapData, RpcKey, RqVal>,
}

fn second<K: aya::Pod, V: aya::Pod>(
    name: &'static str,
    map: &HashMap<MapData, K, V>,
) -> Result<HashMap<MapData, K, V>, ProbeError> {
    let fd = map
        .map()
        .fd()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|source| ProbeError::Dup { name, source })?;
    let data = MapData::from_fd(fd).map_err(|source| ProbeError::Map { name, source })?;
    HashMap::try_from(aya::maps::Map::HashMap(data))
        .map_err(|source| ProbeError::Map { name, source })
}

impl ScanMaps {
    /// Duplicates the descriptors (no privilege needed, unlike opening a map by id).
    pub fn inflight(&self) -> Result<InflightMaps, ProbeError> {
        Ok(InflightMaps {
            rq_inflight: second(maps::RQ_INFLIGHT, &self.rq_inflight)?,
            mount_calls: second(maps::MOUNT_CALLS, &self.mount_calls)?,
            bio_inflight: second(maps::BIO_INFLIGHT, &self.bio_inflight)?,
            rpc_inflight: second(maps::RPC_INFLIGHT, &self.rpc_inflight)?,
        })
    }
}

/// The loaded object; kept alive for as long as programs should stay attached. Dropping it
/// detaches everything (nothing is pinned, so a dead agent leaves nothing behind).
pub struct AttachedProbes {
    ebpf: Ebpf,
    offsets_map: Array<MapData, Offsets>,
    offsets: Offsets,
    loaded_programs: HashSet<&'static str>,
    tracefs: PathBuf,
    status: Vec<ProbeStatus>,
}

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
        let mut ebpf = Ebpf::load(OBJECT)?;
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
        };
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
        for prog in PROGRAMS {
            for tp in prog.tracepoints {
                let probe = tp.probe_name();
                if previous.contains(&probe) {
                    status.push(ProbeStatus {
                        probe,
                        program: prog.program,
                        state: ProbeState::Attached,
                        detail: String::new(),
                    });
                    continue;
                }
                match self.resolve(tp, &mut offsets) {
                    Ok(Some(event)) => ready.push((prog, tp, event)),
                    Ok(None) => status.push(ProbeStatus {
                        probe,
                        program: prog.program,
                        state: ProbeState::Missing,
                        detail: missing_detail(tp.system),
                    }),
                    Err(e) => status.push(ProbeStatus {
                        probe,
                        program: prog.program,
                        state: ProbeState::Failed,
                        detail: e.to_string(),
                    }),
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
        // dm-mod may load after the agent: its major is looked up again on every pass.
        offsets.bio_major =
            crate::probes::dev::device_mapper_major(Path::new("/proc/devices")).unwrap_or(0);
        self.offsets_map.set(0, offsets, 0)?;
        self.offsets = offsets;

        let mut changed = false;
        for (prog, tp, event) in ready {
            let probe = tp.probe_name();
            match self.attach(prog.program, tp.system, event) {
                Ok(()) => {
                    info!(probe, event, "attached");
                    changed = true;
                    status.push(ProbeStatus {
                        probe,
                        program: prog.program,
                        state: ProbeState::Attached,
                        detail: String::new(),
                    });
                }
                Err(e) => {
                    warn!(probe, error = %e, "could not attach; continuing without it");
                    status.push(ProbeStatus {
                        probe,
                        program: prog.program,
                        state: ProbeState::Failed,
                        detail: e.to_string(),
                    });
                }
            }
        }
        changed |= self.attach_kprobes(&previous, &mut status);
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

    /// Attaches the kprobe fallbacks whose tracepoint is missing. Not listed at all where the
    /// tracepoint is attached (nothing is missing there).
    fn attach_kprobes(
        &mut self,
        previous: &HashSet<String>,
        status: &mut Vec<ProbeStatus>,
    ) -> bool {
        let mut changed = false;
        for k in KPROBES {
            let probe = k.probe_name();
            let push = |status: &mut Vec<ProbeStatus>, state, detail: String| {
                status.push(ProbeStatus {
                    probe: probe.clone(),
                    program: k.program,
                    state,
                    detail,
                });
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
        prog.attach(system, event)?;
        Ok(())
    }
}
