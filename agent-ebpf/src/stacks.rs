//! The stack iterator: a BPF task iterator (`iter/task`, 5.8+) that prints, for every task in
//! uninterruptible sleep, its ids, state, time since it last ran and its kernel stack with
//! symbol names (`%pB`, resolved by the kernel itself), or the error of a failed walk.
//!
//! Its own object, loaded only by the evidence reader: reading a stack this way needs no
//! `CAP_SYS_PTRACE` (which `/proc/<tid>/stack` of a root task does) and no `/proc/kallsyms`
//! (whose addresses need `CAP_SYSLOG`), neither of which the service's bounding set grants.
//! Nothing here touches a filesystem: the kernel walks its task list under RCU.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(not(target_arch = "bpf"))]
fn main() {}

#[cfg(target_arch = "bpf")]
mod iter {
    use agent_ebpf::{STACK_FRAMES, TaskOffsets};
    use aya_ebpf::{
        bindings::{seq_file, task_struct},
        cty::c_void,
        helpers::{bpf_ktime_get_ns, bpf_probe_read_kernel, generated as raw},
    };

    /// Set by userspace from the kernel's BTF (read-only, so the verifier sees constants).
    #[unsafe(no_mangle)]
    static TASK_OFFSETS: TaskOffsets = TaskOffsets {
        pid: 0,
        tgid: 0,
        state: 0,
        last_arrival: 0,
    };

    /// `TASK_UNINTERRUPTIBLE`, and `TASK_NOLOAD`, which marks idle kernel threads (`I`).
    const UNINTERRUPTIBLE: u32 = 0x2;
    const NOLOAD: u32 = 0x400;

    static HEAD: [u8; 23] = *b"T %llu %llu %llu %llu\n\0";
    static FRAME: [u8; 5] = *b"%pB\n\0";
    /// A stack walk that failed, with the helper's error: the reader retries or says why.
    static WALK_FAILED: [u8; 8] = *b"E %lld\n\0";

    /// One `bpf_seq_printf` of a NUL-terminated format from `.rodata` with u64 arguments.
    #[inline(always)]
    fn print(seq: *mut seq_file, fmt: &'static [u8], args: &[u64]) {
        // SAFETY: the verifier checks the format against the arguments' length.
        unsafe {
            raw::bpf_seq_printf(
                seq,
                fmt.as_ptr() as *const _,
                fmt.len() as u32,
                args.as_ptr() as *const c_void,
                (args.len() * 8) as u32,
            )
        };
    }

    #[unsafe(link_section = "iter/task")]
    #[unsafe(no_mangle)]
    pub fn task_stacks(ctx: *mut c_void) -> i32 {
        // SAFETY: the context of an `iter/task` program is `struct bpf_iter__task`
        // { meta, task }; the verifier checks every access below.
        unsafe { emit(ctx) };
        0
    }

    #[inline(always)]
    unsafe fn emit(ctx: *mut c_void) {
        let args = ctx as *const *mut c_void;
        let meta = unsafe { *args };
        let task = unsafe { *args.add(1) };
        if meta.is_null() || task.is_null() {
            return;
        }
        // SAFETY: a plain read of a global the loader fixed.
        let off = unsafe { core::ptr::read_volatile(&TASK_OFFSETS) };
        let at = |o: u32| (task as *const u8).wrapping_add(o as usize);
        let Ok(state) = (unsafe { bpf_probe_read_kernel(at(off.state) as *const u32) }) else {
            return;
        };
        if state & UNINTERRUPTIBLE == 0 || state & NOLOAD != 0 {
            return;
        }
        let pid = unsafe { bpf_probe_read_kernel(at(off.pid) as *const i32) }.unwrap_or(0);
        let tgid = unsafe { bpf_probe_read_kernel(at(off.tgid) as *const i32) }.unwrap_or(0);
        let waited = if off.last_arrival == 0 {
            0
        } else {
            let last =
                unsafe { bpf_probe_read_kernel(at(off.last_arrival) as *const u64) }.unwrap_or(0);
            let now = unsafe { bpf_ktime_get_ns() };
            if last == 0 {
                0
            } else {
                now.saturating_sub(last)
            }
        };
        // meta->seq is its first field.
        let seq = unsafe { *(meta as *const *mut seq_file) };
        print(seq, &HEAD, &[pid as u64, tgid as u64, state as u64, waited]);
        let mut frames = [0u64; STACK_FRAMES];
        let got = unsafe {
            raw::bpf_get_task_stack(
                task as *mut task_struct,
                frames.as_mut_ptr() as *mut c_void,
                (STACK_FRAMES * 8) as u32,
                0,
            )
        };
        if got <= 0 {
            print(seq, &WALK_FAILED, &[got as u64]);
            return;
        }
        let n = (got as usize) / 8;
        for (i, addr) in frames.iter().enumerate() {
            if i >= n {
                break;
            }
            print(seq, &FRAME, &[*addr]);
        }
    }
}

#[cfg(all(target_arch = "bpf", not(test)))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
