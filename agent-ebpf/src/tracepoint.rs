//! Offsets of the classic tracepoints' records, read from tracefs by userspace.

/// A tracepoint field whose offset userspace reads from tracefs and hands to the programs.
///
/// The discriminant is the index into [`Offsets::off`]. Offsets are never compiled in: block
/// layouts moved twice between 6.1 and 6.18 (ioprio, rwbs length).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Field {
    ShutdownDev = 0,
    ShutdownPtag,
    ShutdownFlags,
    BufIoerrorDev,
    BufIoerrorError,
    AilAbortDev,
    FsCorruptDev,
    FsCorruptFlags,
    InodeCorruptDev,
    InodeCorruptIno,
    InodeCorruptFlags,
    GroupCorruptDev,
    GroupCorruptFlags,
    RqIssueDev,
    RqIssueSector,
    RqIssueNrSector,
    RqCompleteDev,
    RqCompleteSector,
    RqCompleteNrSector,
    RqCompleteError,
    RqErrorDev,
    RqErrorSector,
    RqErrorError,
    RqRequeueDev,
    RqRequeueSector,
    MountDevName,
    MountDirName,
    MountType,
    UmountName,
    FsopenFsName,
    FsconfigCmd,
    MoveMountToPathname,
    OpenTreeFilename,
    MountSetattrPath,
    BioQueueDev,
    BioQueueSector,
    BioCompleteDev,
    BioCompleteSector,
    BioCompleteError,
    RpcBeginTaskId,
    RpcBeginClientId,
    RpcEndTaskId,
    RpcEndClientId,
    Ext4ShutdownDev,
    Ext4ShutdownFlags,
    Ext4ErrorDev,
    Ext4ErrorLine,
    /// The operation (`rwbs`: "W", "RA", "FWS", ...), recorded for the incident evidence.
    RqIssueRwbs,
    BioQueueRwbs,
}

/// Number of [`Field`] variants.
pub const FIELD_COUNT: usize = Field::BioQueueRwbs as usize + 1;

/// Offsets of every [`Field`] plus behaviour flags; one entry in the `OFFSETS` array map.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Offsets {
    pub off: [u16; FIELD_COUNT],
    pub flags: u32,
    /// Major number of device-mapper (from /proc/devices, 0 while dm is not loaded): bios of
    /// these devices are tracked from `block_bio_queue` to `block_bio_complete`, because a
    /// suspended or bio-based dm device queues them before any request or sysfs counter exists.
    pub bio_major: u32,
}

impl Offsets {
    pub const fn new() -> Self {
        Self {
            off: [0; FIELD_COUNT],
            flags: 0,
            bio_major: 0,
        }
    }

    /// Never panics: a panic path in a BPF program is a call the verifier rejects.
    #[inline(always)]
    pub fn get(&self, f: Field) -> usize {
        match self.off.get(f as usize) {
            Some(v) => *v as usize,
            None => 0,
        }
    }

    pub fn set(&mut self, f: Field, offset: u16) {
        self.off[f as usize] = offset;
    }
}

impl Default for Offsets {
    fn default() -> Self {
        Self::new()
    }
}

/// `Offsets::flags`: the kernel has no `block:block_rq_error`, so `block_rq_complete` reports
/// errors itself (5.10). When the error tracepoint exists, completion must not report them too.
pub const FLAG_ERRORS_FROM_COMPLETE: u32 = 1 << 0;
