//! Types shared by the kernel programs and the `bindsto` agent.
//!
//! Everything here is `#[repr(C)]` and plain data: the kernel side writes it into maps and the
//! ring buffer, userspace reads the same bytes back. With the `user` feature the types implement
//! `aya::Pod` so they can be used as map keys and values.
#![no_std]

/// Length of the path strings a mount-family syscall records at entry (bytes, NUL included).
pub const PATH_LEN: usize = 128;
/// Length of the filesystem type string recorded at entry.
pub const FSTYPE_LEN: usize = 32;
/// Length of a task's `comm`.
pub const COMM_LEN: usize = 16;

/// Capacity of the in-flight block request map. Sized for a busy host; inserts that fail when
/// it is full are counted in [`Stat::RqMapFull`], never silently dropped.
pub const RQ_MAP_ENTRIES: u32 = 65_536;
/// Capacity of the in-flight mount-call map (one entry per thread inside a mount syscall).
pub const MOUNT_MAP_ENTRIES: u32 = 8_192;
/// Ring buffer size in bytes (power of two, multiple of the page size).
pub const RINGBUF_BYTES: u32 = 256 * 1024;

mod block;
mod event;
mod mount;
mod rpc;
mod stat;
mod task;
mod tracepoint;

pub use block::*;
pub use event::*;
pub use mount::*;
pub use rpc::*;
pub use stat::*;
pub use task::*;
pub use tracepoint::*;

/// Names of the maps, shared so userspace and kernel cannot drift apart.
pub mod maps {
    pub const OFFSETS: &str = "OFFSETS";
    pub const EVENTS: &str = "EVENTS";
    pub const RQ_INFLIGHT: &str = "RQ_INFLIGHT";
    pub const MOUNT_CALLS: &str = "MOUNT_CALLS";
    pub const STATS: &str = "STATS";
    pub const BIO_INFLIGHT: &str = "BIO_INFLIGHT";
    pub const BIO_DONE: &str = "BIO_DONE";
    pub const RPC_INFLIGHT: &str = "RPC_INFLIGHT";
}

#[cfg(feature = "user")]
mod user {
    use super::*;

    // SAFETY: all of these are #[repr(C)] plain data with explicit padding fields and no
    // pointers; every bit pattern is valid.
    unsafe impl aya::Pod for Offsets {}
    unsafe impl aya::Pod for Event {}
    unsafe impl aya::Pod for RqKey {}
    unsafe impl aya::Pod for RqVal {}
    unsafe impl aya::Pod for MountCall {}
    unsafe impl aya::Pod for BioDone {}
    unsafe impl aya::Pod for RpcKey {}
    unsafe impl aya::Pod for TaskOffsets {}
    unsafe impl aya::Pod for Request {}
    unsafe impl aya::Pod for RqLayout {}
}
