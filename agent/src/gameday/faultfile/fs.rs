//! The FUSE side of the fault file: the one-file tree and its operations. Data requests go
//! through [`FaultShared::submit`] (pass, fail or park); metadata always passes.

use std::ffi::OsStr;
use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::os::unix::io::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner,
    OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen,
    ReplyStatfs, ReplyWrite, Request, TimeOrNow, WriteFlags,
};

use super::{Disposition, FILE_INO, FILE_NAME, FaultShared, TTL};

impl FaultShared {
    fn file_attr(&self) -> std::io::Result<FileAttr> {
        let m = self.backing.metadata()?;
        let t = |secs: i64, nsecs: i64| {
            if secs >= 0 {
                UNIX_EPOCH + Duration::new(secs as u64, nsecs as u32)
            } else {
                UNIX_EPOCH
            }
        };
        Ok(FileAttr {
            ino: FILE_INO,
            size: m.len(),
            blocks: m.blocks(),
            atime: t(m.atime(), m.atime_nsec()),
            mtime: t(m.mtime(), m.mtime_nsec()),
            ctime: t(m.ctime(), m.ctime_nsec()),
            crtime: UNIX_EPOCH,
            kind: FileType::RegularFile,
            perm: 0o644,
            nlink: 1,
            uid: m.uid(),
            gid: m.gid(),
            rdev: 0,
            blksize: 4096,
            flags: 0,
        })
    }

    fn eio(&self) -> Errno {
        self.counters.eio.fetch_add(1, Ordering::Relaxed);
        Errno::EIO
    }
}

fn dir_attr() -> FileAttr {
    let now = SystemTime::now();
    FileAttr {
        ino: INodeNo::ROOT,
        size: 0,
        blocks: 0,
        atime: now,
        mtime: now,
        ctime: now,
        crtime: now,
        kind: FileType::Directory,
        perm: 0o755,
        nlink: 2,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

fn errno_of(e: &std::io::Error) -> Errno {
    Errno::from_i32(e.raw_os_error().unwrap_or(libc::EIO))
}

fn read_full_at(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

pub(super) struct FaultyFs {
    pub(super) shared: Arc<FaultShared>,
}

impl Filesystem for FaultyFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        if parent != INodeNo::ROOT || name != FILE_NAME {
            reply.error(Errno::ENOENT);
            return;
        }
        match self.shared.file_attr() {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(errno_of(&e)),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        if ino == INodeNo::ROOT {
            reply.attr(&TTL, &dir_attr());
        } else if ino == FILE_INO {
            match self.shared.file_attr() {
                Ok(attr) => reply.attr(&TTL, &attr),
                Err(e) => reply.error(errno_of(&e)),
            }
        } else {
            reply.error(Errno::ENOENT);
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        if ino == INodeNo::ROOT {
            reply.attr(&TTL, &dir_attr());
            return;
        }
        if ino != FILE_INO {
            reply.error(Errno::ENOENT);
            return;
        }
        // Size changes are metadata: they pass in every mode (mode, owner and times are
        // accepted and ignored).
        if let Some(size) = size
            && let Err(e) = self.shared.backing.set_len(size)
        {
            reply.error(errno_of(&e));
            return;
        }
        match self.shared.file_attr() {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(errno_of(&e)),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        if ino != FILE_INO {
            reply.error(Errno::EISDIR);
            return;
        }
        let flags = if self.shared.direct_io {
            FopenFlags::FOPEN_DIRECT_IO
        } else {
            FopenFlags::empty()
        };
        reply.opened(FileHandle(0), flags);
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        if ino != FILE_INO {
            reply.error(Errno::EISDIR);
            return;
        }
        if self.shared.verbose {
            eprintln!("faultyfs: read off={offset} len={size}");
        }
        self.shared.submit(
            "read",
            Box::new(move |sh: &FaultShared, d| {
                if d == Disposition::Fail {
                    reply.error(sh.eio());
                    return;
                }
                let mut buf = vec![0u8; size as usize];
                match read_full_at(&sh.backing, &mut buf, offset) {
                    Ok(n) => {
                        sh.counters.reads.fetch_add(1, Ordering::Relaxed);
                        sh.counters
                            .read_bytes
                            .fetch_add(n as u64, Ordering::Relaxed);
                        reply.data(&buf[..n]);
                    }
                    Err(e) => reply.error(errno_of(&e)),
                }
            }),
        );
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        if ino != FILE_INO {
            reply.error(Errno::EISDIR);
            return;
        }
        if self.shared.verbose {
            eprintln!("faultyfs: write off={offset} len={}", data.len());
        }
        // The request buffer is reused by the FUSE loop: a parked write owns a copy.
        let data = data.to_vec();
        self.shared.submit(
            "write",
            Box::new(move |sh: &FaultShared, d| {
                if d == Disposition::Fail {
                    reply.error(sh.eio());
                    return;
                }
                match sh.backing.write_all_at(&data, offset) {
                    Ok(()) => {
                        sh.counters.writes.fetch_add(1, Ordering::Relaxed);
                        sh.counters
                            .written_bytes
                            .fetch_add(data.len() as u64, Ordering::Relaxed);
                        reply.written(data.len() as u32);
                    }
                    Err(e) => reply.error(errno_of(&e)),
                }
            }),
        );
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // close(2) must never hang or fail: nothing is buffered here.
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        if ino != FILE_INO {
            reply.ok();
            return;
        }
        self.shared.submit(
            "fsync",
            Box::new(move |sh: &FaultShared, d| {
                if d == Disposition::Fail {
                    reply.error(sh.eio());
                    return;
                }
                let res = if datasync {
                    sh.backing.sync_data()
                } else {
                    sh.backing.sync_all()
                };
                sh.counters.fsyncs.fetch_add(1, Ordering::Relaxed);
                match res {
                    Ok(()) => reply.ok(),
                    Err(e) => reply.error(errno_of(&e)),
                }
            }),
        );
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        if ino != FILE_INO {
            reply.error(Errno::EISDIR);
            return;
        }
        // Discards of the loop device arrive here (punch hole / zero range).
        self.shared.submit(
            "fallocate",
            Box::new(move |sh: &FaultShared, d| {
                if d == Disposition::Fail {
                    reply.error(sh.eio());
                    return;
                }
                // SAFETY: plain syscall on an fd we own.
                let rc = unsafe {
                    libc::fallocate(
                        sh.backing.as_raw_fd(),
                        mode,
                        offset as libc::off_t,
                        length as libc::off_t,
                    )
                };
                if rc == 0 {
                    reply.ok();
                } else {
                    reply.error(errno_of(&std::io::Error::last_os_error()));
                }
            }),
        );
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        if ino != INodeNo::ROOT {
            reply.error(Errno::ENOTDIR);
            return;
        }
        let entries = [
            (INodeNo::ROOT, FileType::Directory, "."),
            (INodeNo::ROOT, FileType::Directory, ".."),
            (FILE_INO, FileType::RegularFile, FILE_NAME),
        ];
        for (i, (ino, kind, name)) in entries.iter().enumerate().skip(offset as usize) {
            if reply.add(*ino, (i + 1) as u64, *kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let size = self.shared.backing.metadata().map(|m| m.len()).unwrap_or(0);
        let blocks = size.div_ceil(4096);
        reply.statfs(blocks, 0, 0, 1, 0, 4096, 255, 4096);
    }
}
