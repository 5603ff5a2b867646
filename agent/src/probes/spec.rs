//! What each kernel program attaches to and which tracepoint fields it needs.

use agent_ebpf::Field;

/// One tracepoint a program attaches to, with the fields whose offsets it reads.
#[derive(Debug)]
pub struct Tracepoint {
    pub system: &'static str,
    pub event: &'static str,
    /// Older kernels name the same event differently (6.1's `xfs_ag_mark_corrupt`).
    pub fallback: Option<&'static str>,
    pub fields: &'static [(Field, &'static str)],
}

impl Tracepoint {
    /// The probe name used in logs, `doctor` and `bindsto_probe_attached{probe}`.
    pub fn probe_name(&self) -> String {
        format!("{}:{}", self.system, self.event)
    }
}

/// A kernel program (by its function name in `agent-ebpf`) and its tracepoints.
#[derive(Debug)]
pub struct ProgramSpec {
    pub program: &'static str,
    pub tracepoints: &'static [Tracepoint],
}

const fn tp(
    system: &'static str,
    event: &'static str,
    fields: &'static [(Field, &'static str)],
) -> Tracepoint {
    Tracepoint {
        system,
        event,
        fallback: None,
        fields,
    }
}

const fn sys_exit(event: &'static str) -> Tracepoint {
    tp("syscalls", event, &[])
}

pub const PROGRAMS: &[ProgramSpec] = &[
    ProgramSpec {
        program: "xfs_force_shutdown",
        tracepoints: &[tp(
            "xfs",
            "xfs_force_shutdown",
            &[
                (Field::ShutdownDev, "dev"),
                (Field::ShutdownPtag, "ptag"),
                (Field::ShutdownFlags, "flags"),
            ],
        )],
    },
    ProgramSpec {
        program: "xfs_buf_ioerror",
        tracepoints: &[tp(
            "xfs",
            "xfs_buf_ioerror",
            &[
                (Field::BufIoerrorDev, "dev"),
                (Field::BufIoerrorError, "error"),
            ],
        )],
    },
    ProgramSpec {
        program: "xlog_ail_insert_abort",
        tracepoints: &[tp(
            "xfs",
            "xlog_ail_insert_abort",
            &[(Field::AilAbortDev, "dev")],
        )],
    },
    ProgramSpec {
        program: "xfs_fs_mark_corrupt",
        tracepoints: &[tp(
            "xfs",
            "xfs_fs_mark_corrupt",
            &[
                (Field::FsCorruptDev, "dev"),
                (Field::FsCorruptFlags, "flags"),
            ],
        )],
    },
    ProgramSpec {
        program: "xfs_inode_mark_corrupt",
        tracepoints: &[tp(
            "xfs",
            "xfs_inode_mark_corrupt",
            &[
                (Field::InodeCorruptDev, "dev"),
                (Field::InodeCorruptIno, "ino"),
                (Field::InodeCorruptFlags, "flags"),
            ],
        )],
    },
    ProgramSpec {
        program: "xfs_group_mark_corrupt",
        tracepoints: &[Tracepoint {
            system: "xfs",
            event: "xfs_group_mark_corrupt",
            fallback: Some("xfs_ag_mark_corrupt"),
            fields: &[
                (Field::GroupCorruptDev, "dev"),
                (Field::GroupCorruptFlags, "flags"),
            ],
        }],
    },
    ProgramSpec {
        program: "ext4_shutdown",
        tracepoints: &[tp(
            "ext4",
            "ext4_shutdown",
            &[
                (Field::Ext4ShutdownDev, "dev"),
                (Field::Ext4ShutdownFlags, "flags"),
            ],
        )],
    },
    ProgramSpec {
        program: "ext4_error",
        tracepoints: &[tp(
            "ext4",
            "ext4_error",
            &[(Field::Ext4ErrorDev, "dev"), (Field::Ext4ErrorLine, "line")],
        )],
    },
    ProgramSpec {
        program: "block_rq_issue",
        tracepoints: &[tp(
            "block",
            "block_rq_issue",
            &[
                (Field::RqIssueDev, "dev"),
                (Field::RqIssueSector, "sector"),
                (Field::RqIssueNrSector, "nr_sector"),
                (Field::RqIssueRwbs, "rwbs"),
            ],
        )],
    },
    ProgramSpec {
        program: "block_rq_complete",
        tracepoints: &[tp(
            "block",
            "block_rq_complete",
            &[
                (Field::RqCompleteDev, "dev"),
                (Field::RqCompleteSector, "sector"),
                (Field::RqCompleteNrSector, "nr_sector"),
                (Field::RqCompleteError, "error"),
            ],
        )],
    },
    ProgramSpec {
        program: "block_rq_error",
        tracepoints: &[tp(
            "block",
            "block_rq_error",
            &[
                (Field::RqErrorDev, "dev"),
                (Field::RqErrorSector, "sector"),
                (Field::RqErrorError, "error"),
            ],
        )],
    },
    ProgramSpec {
        program: "block_rq_requeue",
        tracepoints: &[tp(
            "block",
            "block_rq_requeue",
            &[
                (Field::RqRequeueDev, "dev"),
                (Field::RqRequeueSector, "sector"),
            ],
        )],
    },
    ProgramSpec {
        program: "block_bio_queue",
        tracepoints: &[tp(
            "block",
            "block_bio_queue",
            &[
                (Field::BioQueueDev, "dev"),
                (Field::BioQueueSector, "sector"),
                (Field::BioQueueRwbs, "rwbs"),
            ],
        )],
    },
    ProgramSpec {
        program: "block_bio_complete",
        tracepoints: &[tp(
            "block",
            "block_bio_complete",
            &[
                (Field::BioCompleteDev, "dev"),
                (Field::BioCompleteSector, "sector"),
                (Field::BioCompleteError, "error"),
            ],
        )],
    },
    ProgramSpec {
        program: "rpc_task_begin",
        tracepoints: &[tp(
            "sunrpc",
            "rpc_task_begin",
            &[
                (Field::RpcBeginTaskId, "task_id"),
                (Field::RpcBeginClientId, "client_id"),
            ],
        )],
    },
    ProgramSpec {
        program: "rpc_task_end",
        tracepoints: &[Tracepoint {
            system: "sunrpc",
            event: "rpc_task_end",
            fallback: Some("rpc_task_complete"),
            fields: &[
                (Field::RpcEndTaskId, "task_id"),
                (Field::RpcEndClientId, "client_id"),
            ],
        }],
    },
    ProgramSpec {
        program: "sys_enter_mount",
        tracepoints: &[tp(
            "syscalls",
            "sys_enter_mount",
            &[
                (Field::MountDevName, "dev_name"),
                (Field::MountDirName, "dir_name"),
                (Field::MountType, "type"),
            ],
        )],
    },
    ProgramSpec {
        program: "sys_enter_umount",
        tracepoints: &[tp(
            "syscalls",
            "sys_enter_umount",
            &[(Field::UmountName, "name")],
        )],
    },
    ProgramSpec {
        program: "sys_enter_fsopen",
        tracepoints: &[tp(
            "syscalls",
            "sys_enter_fsopen",
            &[(Field::FsopenFsName, "_fs_name")],
        )],
    },
    ProgramSpec {
        program: "sys_enter_fsconfig",
        tracepoints: &[tp(
            "syscalls",
            "sys_enter_fsconfig",
            &[(Field::FsconfigCmd, "cmd")],
        )],
    },
    ProgramSpec {
        program: "sys_enter_fsmount",
        tracepoints: &[tp("syscalls", "sys_enter_fsmount", &[])],
    },
    ProgramSpec {
        program: "sys_enter_move_mount",
        tracepoints: &[tp(
            "syscalls",
            "sys_enter_move_mount",
            &[(Field::MoveMountToPathname, "to_pathname")],
        )],
    },
    ProgramSpec {
        program: "sys_enter_open_tree",
        tracepoints: &[tp(
            "syscalls",
            "sys_enter_open_tree",
            &[(Field::OpenTreeFilename, "filename")],
        )],
    },
    ProgramSpec {
        program: "sys_enter_mount_setattr",
        tracepoints: &[tp(
            "syscalls",
            "sys_enter_mount_setattr",
            &[(Field::MountSetattrPath, "path")],
        )],
    },
    ProgramSpec {
        program: "sys_exit_mountcall",
        tracepoints: &[
            sys_exit("sys_exit_mount"),
            sys_exit("sys_exit_umount"),
            sys_exit("sys_exit_fsopen"),
            sys_exit("sys_exit_fsconfig"),
            sys_exit("sys_exit_fsmount"),
            sys_exit("sys_exit_move_mount"),
            sys_exit("sys_exit_open_tree"),
            sys_exit("sys_exit_mount_setattr"),
        ],
    },
];

/// An optional kprobe that stands in for a tracepoint the kernel lacks. Attached only where
/// the tracepoint is missing and the kernel has kprobes (Amazon Linux kernels do; the
/// development machines' 6.18 does not, and there it is reported missing, nothing more).
#[derive(Debug)]
pub struct KprobeSpec {
    /// The kretprobe program's function name in `agent-ebpf`.
    pub program: &'static str,
    /// The kernel function it returns from.
    pub function: &'static str,
    /// Probe name of the tracepoint it replaces.
    pub instead_of: &'static str,
}

impl KprobeSpec {
    pub fn probe_name(&self) -> String {
        format!("kprobe:{}", self.function)
    }
}

pub const KPROBES: &[KprobeSpec] = &[KprobeSpec {
    program: "xfs_do_force_shutdown_ret",
    function: "xfs_do_force_shutdown",
    instead_of: "xfs:xfs_force_shutdown",
}];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_field_has_exactly_one_source() {
        let mut seen = [0u32; agent_ebpf::FIELD_COUNT];
        for p in PROGRAMS {
            for t in p.tracepoints {
                for (f, _) in t.fields {
                    seen[*f as usize] += 1;
                }
            }
        }
        assert!(seen.iter().all(|&n| n == 1), "{seen:?}");
    }
}
