//! Mount-family syscalls: one in-flight entry per thread from entry to exit, so a call that
//! never returns (NFS 4.1 client deadlock, mount of a hung disk) is visible while it hangs.

use agent_ebpf::{COMM_LEN, Field, MountCall, Stat, Syscall};
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, generated as raw},
    macros::tracepoint,
    programs::TracePointContext,
};

use super::{MOUNT_CALLS, MOUNT_SCRATCH, count, offsets};

/// `enum fsconfig_command`: the commands that create or reconfigure a superblock, which is
/// where a new-API mount does its blocking work.
const FSCONFIG_CMD_CREATE: u64 = 6;
const FSCONFIG_CMD_RECONFIGURE: u64 = 7;
const FSCONFIG_CMD_CREATE_EXCL: u64 = 8;

/// Which user strings a syscall's entry record carries.
struct Strings {
    source: Option<Field>,
    target: Option<Field>,
    fstype: Option<Field>,
}

const NONE: Strings = Strings {
    source: None,
    target: None,
    fstype: None,
};

#[tracepoint]
pub fn sys_enter_mount(ctx: TracePointContext) -> u32 {
    let s = Strings {
        source: Some(Field::MountDevName),
        target: Some(Field::MountDirName),
        fstype: Some(Field::MountType),
    };
    let _ = enter(&ctx, Syscall::Mount, &s);
    0
}

#[tracepoint]
pub fn sys_enter_umount(ctx: TracePointContext) -> u32 {
    let s = Strings {
        target: Some(Field::UmountName),
        ..NONE
    };
    let _ = enter(&ctx, Syscall::Umount, &s);
    0
}

#[tracepoint]
pub fn sys_enter_fsopen(ctx: TracePointContext) -> u32 {
    let s = Strings {
        fstype: Some(Field::FsopenFsName),
        ..NONE
    };
    let _ = enter(&ctx, Syscall::Fsopen, &s);
    0
}

#[tracepoint]
pub fn sys_enter_fsconfig(ctx: TracePointContext) -> u32 {
    let Some(o) = offsets() else { return 0 };
    // SAFETY: offset from this tracepoint's format file (8-byte argument slot).
    let Ok(cmd) = (unsafe { ctx.read_at::<u64>(o.get(Field::FsconfigCmd)) }) else {
        return 0;
    };
    // Setting parameters is cheap; only creating or reconfiguring can block.
    if matches!(
        cmd & 0xffff_ffff,
        FSCONFIG_CMD_CREATE | FSCONFIG_CMD_RECONFIGURE | FSCONFIG_CMD_CREATE_EXCL
    ) {
        let _ = enter(&ctx, Syscall::Fsconfig, &NONE);
    }
    0
}

#[tracepoint]
pub fn sys_enter_fsmount(ctx: TracePointContext) -> u32 {
    let _ = enter(&ctx, Syscall::Fsmount, &NONE);
    0
}

#[tracepoint]
pub fn sys_enter_move_mount(ctx: TracePointContext) -> u32 {
    let s = Strings {
        target: Some(Field::MoveMountToPathname),
        ..NONE
    };
    let _ = enter(&ctx, Syscall::MoveMount, &s);
    0
}

#[tracepoint]
pub fn sys_enter_open_tree(ctx: TracePointContext) -> u32 {
    let s = Strings {
        source: Some(Field::OpenTreeFilename),
        ..NONE
    };
    let _ = enter(&ctx, Syscall::OpenTree, &s);
    0
}

#[tracepoint]
pub fn sys_enter_mount_setattr(ctx: TracePointContext) -> u32 {
    let s = Strings {
        target: Some(Field::MountSetattrPath),
        ..NONE
    };
    let _ = enter(&ctx, Syscall::MountSetattr, &s);
    0
}

/// Attached to the `sys_exit_*` of every syscall above: the call returned.
#[tracepoint]
pub fn sys_exit_mountcall(_ctx: TracePointContext) -> u32 {
    let _ = MOUNT_CALLS.remove(bpf_get_current_pid_tgid());
    0
}

#[inline(always)]
fn enter(ctx: &TracePointContext, syscall: Syscall, s: &Strings) -> Result<(), i32> {
    let o = offsets().ok_or(0)?;
    let call = MOUNT_SCRATCH.get_ptr_mut(0).ok_or(0)?;
    let pid_tgid = bpf_get_current_pid_tgid();
    // SAFETY: per-CPU scratch slot owned by this program invocation.
    let call: &mut MountCall = unsafe { &mut *call };
    // SAFETY: helper without arguments.
    call.start_ns = unsafe { bpf_ktime_get_ns() };
    call.tgid = (pid_tgid >> 32) as u32;
    call.syscall = syscall as u32;
    // The raw helper writes straight into the map scratch: the safe wrapper's stack buffer
    // makes LLVM emit memset calls, which the verifier rejects.
    // SAFETY: the destination is COMM_LEN bytes of map memory.
    if unsafe { raw::bpf_get_current_comm(call.comm.as_mut_ptr().cast(), COMM_LEN as u32) } != 0 {
        call.comm[0] = 0;
    }
    read_str(ctx, o.get_opt(s.source), &mut call.source);
    read_str(ctx, o.get_opt(s.target), &mut call.target);
    read_str(ctx, o.get_opt(s.fstype), &mut call.fstype);
    if MOUNT_CALLS.insert(pid_tgid, &*call, 0).is_err() {
        count(Stat::MountMapFull);
    }
    Ok(())
}

/// Reads a user string whose pointer sits at `off` in the record; empty when absent or not
/// resident (the page may be swapped out at entry).
#[inline(always)]
fn read_str<const N: usize>(ctx: &TracePointContext, off: Option<usize>, buf: &mut [u8; N]) {
    // A constant index into an array: no bounds check, no panic path, no memset call.
    buf[0] = 0;
    let Some(off) = off else { return };
    // SAFETY: offset from this tracepoint's format file; the value is a user pointer.
    let Ok(ptr) = (unsafe { ctx.read_at::<u64>(off) }) else {
        return;
    };
    if ptr == 0 {
        return;
    }
    // The raw helper, because the safe wrapper slices its result and the bounds check
    // leaves a panic call the verifier rejects.
    // SAFETY: the helper handles faults and always NUL-terminates within N bytes.
    if unsafe { raw::bpf_probe_read_user_str(buf.as_mut_ptr().cast(), N as u32, ptr as *const _) }
        < 0
    {
        buf[0] = 0;
    }
}

trait OffsetsExt {
    fn get_opt(&self, f: Option<Field>) -> Option<usize>;
}

impl OffsetsExt for agent_ebpf::Offsets {
    #[inline(always)]
    fn get_opt(&self, f: Option<Field>) -> Option<usize> {
        f.map(|f| self.get(f))
    }
}
