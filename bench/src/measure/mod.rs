//! One file per measurement; each returns its numbers and the Markdown writer (`report`)
//! turns them into docs/BENCHMARKS.md. They use the fixtures, the tools and the BPF
//! accounting, never each other.

pub mod detection;
pub mod footprint;
pub mod io_overhead;
pub mod kernel_cost;
pub mod overload;
pub mod paired;

/// Repetitions of each fio run and GameDay scenario (medians are reported).
pub const REPS: usize = 5;
/// Seconds per fio run.
pub const FIO_SECONDS: u64 = 4;
