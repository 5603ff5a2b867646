//! Loading and attaching the kernel programs, and the tracefs layouts they depend on.

pub mod batch;
pub mod btf;
pub mod btf_block;
pub mod btf_placeholder;
pub mod dev;
pub mod events;
pub mod format;
pub mod loader;
pub mod maps;
pub mod spec;
pub mod status;

pub use loader::AttachedProbes;
pub use maps::{InflightMaps, Maps, ScanMaps};
pub use status::{ProbeState, ProbeStatus, Via};

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("the kernel object is empty: this binary was built with AYA_BUILD_SKIP")]
    NoObject,
    #[error("loading the kernel object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("map {0} missing from the kernel object")]
    MissingMap(&'static str),
    #[error("program {0} missing from the kernel object")]
    MissingProgram(&'static str),
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        source: aya::maps::MapError,
    },
    #[error("map {name}: duplicating its descriptor: {source}")]
    Dup {
        name: &'static str,
        source: std::io::Error,
    },
    #[error("writing the offsets map: {0}")]
    Offsets(#[from] aya::maps::MapError),
    #[error("{0}")]
    Program(#[from] aya::programs::ProgramError),
    #[error("tracefs: {0}")]
    Format(#[from] format::FormatError),
    #[error("{event} has no field `{field}` (unexpected layout)")]
    MissingField { event: String, field: &'static str },
}
