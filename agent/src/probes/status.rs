//! What happened to each probe: shown by `doctor`, `/status` and the metrics.

use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProbeState {
    Attached,
    /// The tracepoint does not exist on this kernel (or its module is not loaded yet).
    Missing,
    /// It exists but could not be used (unexpected layout, verifier or attach error).
    Failed,
    /// Not needed on this host now (the bio programs without a device-mapper device); it is
    /// attached when it is.
    Standby,
}

/// What happened to one tracepoint; shown by `doctor`, `/status` and the metrics.
#[derive(Clone, Debug, Serialize)]
pub struct ProbeStatus {
    pub probe: String,
    pub program: &'static str,
    pub state: ProbeState,
    /// How the program is attached (what `doctor` and `bindsto_probe_btf` report).
    pub via: Via,
    pub detail: String,
}

/// How a probe's program runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Via {
    /// A classic tracepoint: the kernel builds the trace record, the program reads fields
    /// out of it at tracefs offsets.
    #[default]
    Tracepoint,
    /// A BTF-enabled tracepoint: the program reads the kernel's structs directly.
    TpBtf,
    /// A kprobe standing in for a missing tracepoint.
    Kprobe,
}

impl ProbeStatus {
    pub fn new(probe: String, program: &'static str, state: ProbeState, detail: String) -> Self {
        Self {
            probe,
            program,
            state,
            via: Via::Tracepoint,
            detail,
        }
    }
}
