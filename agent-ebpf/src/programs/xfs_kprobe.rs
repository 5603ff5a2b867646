//! Fallback for kernels without `xfs:xfs_force_shutdown` (5.10, Amazon Linux 2): a kretprobe
//! on `xfs_do_force_shutdown`. The device would need `mp->m_super->s_dev`, a struct walk that
//! needs offsets we do not have without CO-RE, so the event carries no device and userspace
//! probes every XFS mount (statx answers EIO on the one that shut down). A *return* probe,
//! because at entry the shutdown flag is not set yet and the probe could race ahead of it.

use agent_ebpf::EventKind;
use aya_ebpf::{macros::kretprobe, programs::RetProbeContext};

use super::emit;

#[kretprobe]
pub fn xfs_do_force_shutdown_ret(_ctx: RetProbeContext) -> u32 {
    emit(EventKind::XfsShutdownSomewhere, 0, 0, 0, 0);
    0
}
