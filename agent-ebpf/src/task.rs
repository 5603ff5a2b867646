//! What the stack iterator reads of a task.

/// Where the running kernel's `struct task_struct` keeps what the stack iterator (`stacks`
/// object) reads, in bytes; userspace finds them in the kernel's BTF and sets them as the
/// iterator's read-only global `TASK_OFFSETS` before loading it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TaskOffsets {
    /// `pid` (the thread id).
    pub pid: u32,
    /// `tgid` (the process id).
    pub tgid: u32,
    /// `__state` (5.14 and later) or `state`; its low 32 bits either way (little-endian).
    pub state: u32,
    /// `sched_info.last_arrival` (when the task last ran, ns); 0 where the kernel lacks it.
    pub last_arrival: u32,
}

/// Frames of one kernel stack the iterator prints.
pub const STACK_FRAMES: usize = 32;

/// The global the stack iterator reads its offsets from.
pub const TASK_OFFSETS_GLOBAL: &str = "TASK_OFFSETS";
