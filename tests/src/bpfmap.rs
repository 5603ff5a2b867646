//! Direct access to a running agent's BPF maps through the `bpf(2)` syscall: tests use it to
//! put entries into the agent's own maps that real I/O cannot produce in numbers (10,000
//! requests in flight, a full map, RPC tasks on a host without an NFS client) and to count
//! what is left. Like `bpftool map update id N`, but tens of thousands of entries take
//! milliseconds instead of a process each.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use anyhow::{Context, bail};

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;
const BPF_MAP_GET_FD_BY_ID: libc::c_long = 14;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;

/// `BPF_NOEXIST`: fail when the key is present.
pub const BPF_NOEXIST: u64 = 1;

#[repr(C)]
#[derive(Default)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

#[repr(C)]
#[derive(Default)]
struct GetIdAttr {
    id: u32,
    next_id: u32,
    open_flags: u32,
}

#[repr(C)]
#[derive(Default)]
struct InfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// The head of `struct bpf_map_info` (the kernel fills only `info_len` bytes).
#[repr(C)]
#[derive(Default)]
struct MapInfo {
    map_type: u32,
    id: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    name: [u8; 16],
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> std::io::Result<libc::c_long> {
    // SAFETY: `attr` is a #[repr(C)] prefix of `union bpf_attr` for `cmd`, valid for its size;
    // the kernel zero-extends shorter attributes.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T as *mut libc::c_void,
            std::mem::size_of::<T>() as libc::c_uint,
        )
    };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// The head of `union bpf_attr` for `BPF_MAP_CREATE`.
#[repr(C)]
#[derive(Default)]
struct CreateAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
}

const BPF_MAP_TYPE_HASH: u32 = 1;

/// A BPF map opened by id (a reference of our own; the agent keeps its own).
pub struct BpfMap {
    fd: OwnedFd,
    pub id: u32,
    pub name: String,
    pub key_size: usize,
    pub value_size: usize,
    pub max_entries: u32,
}

impl BpfMap {
    /// Opens the map called `name` among the maps process `pid` holds (by id: several agents
    /// on the host have maps of the same name).
    pub fn of_process(pid: u32, name: &str) -> anyhow::Result<BpfMap> {
        let dir = format!("/proc/{pid}/fdinfo");
        for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {dir}"))? {
            let Ok(info) = std::fs::read_to_string(entry?.path()) else {
                continue;
            };
            let Some(id) = info
                .lines()
                .find_map(|l| l.strip_prefix("map_id:"))
                .and_then(|v| v.trim().parse::<u32>().ok())
            else {
                continue;
            };
            let map = Self::by_id(id)?;
            if map.name == name {
                return Ok(map);
            }
        }
        bail!("process {pid} holds no BPF map named {name}")
    }

    /// A new hash map of this process's own (freed when the last descriptor closes).
    pub fn create_hash(
        key_size: usize,
        value_size: usize,
        max_entries: u32,
    ) -> anyhow::Result<BpfMap> {
        let mut a = CreateAttr {
            map_type: BPF_MAP_TYPE_HASH,
            key_size: key_size as u32,
            value_size: value_size as u32,
            max_entries,
            map_flags: 0,
        };
        let raw = bpf(BPF_MAP_CREATE, &mut a).context("BPF_MAP_CREATE")?;
        // SAFETY: the syscall returned a new file descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw as i32) };
        let mut info = MapInfo::default();
        let mut a = InfoAttr {
            bpf_fd: fd.as_raw_fd() as u32,
            info_len: std::mem::size_of::<MapInfo>() as u32,
            info: &mut info as *mut MapInfo as u64,
        };
        bpf(BPF_OBJ_GET_INFO_BY_FD, &mut a).context("BPF_OBJ_GET_INFO_BY_FD")?;
        Ok(BpfMap {
            fd,
            id: info.id,
            name: String::new(),
            key_size,
            value_size,
            max_entries,
        })
    }

    /// A second descriptor of the map.
    pub fn dup_fd(&self) -> std::io::Result<OwnedFd> {
        self.fd.try_clone()
    }

    pub fn by_id(id: u32) -> anyhow::Result<BpfMap> {
        let mut a = GetIdAttr {
            id,
            ..Default::default()
        };
        let raw = bpf(BPF_MAP_GET_FD_BY_ID, &mut a).with_context(|| format!("map id {id}"))?;
        // SAFETY: the syscall returned a new file descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw as i32) };
        let mut info = MapInfo::default();
        let mut a = InfoAttr {
            bpf_fd: fd.as_raw_fd() as u32,
            info_len: std::mem::size_of::<MapInfo>() as u32,
            info: &mut info as *mut MapInfo as u64,
        };
        bpf(BPF_OBJ_GET_INFO_BY_FD, &mut a).context("BPF_OBJ_GET_INFO_BY_FD")?;
        let end = info.name.iter().position(|&c| c == 0).unwrap_or(16);
        Ok(BpfMap {
            fd,
            id,
            name: String::from_utf8_lossy(&info.name[..end]).into_owned(),
            key_size: info.key_size as usize,
            value_size: info.value_size as usize,
            max_entries: info.max_entries,
        })
    }

    fn check(&self, key: &[u8], value: Option<&[u8]>) -> std::io::Result<()> {
        let bad = key.len() != self.key_size || value.is_some_and(|v| v.len() != self.value_size);
        if bad {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!(
                    "map {} has {}-byte keys and {}-byte values",
                    self.name, self.key_size, self.value_size
                ),
            ));
        }
        Ok(())
    }

    /// `BPF_MAP_UPDATE_ELEM` with `flags` (0 or [`BPF_NOEXIST`]). A full hash map answers
    /// `E2BIG`.
    pub fn update(&self, key: &[u8], value: &[u8], flags: u64) -> std::io::Result<()> {
        self.check(key, Some(value))?;
        let mut a = ElemAttr {
            map_fd: self.fd.as_raw_fd() as u32,
            key: key.as_ptr() as u64,
            value: value.as_ptr() as u64,
            flags,
            ..Default::default()
        };
        bpf(BPF_MAP_UPDATE_ELEM, &mut a).map(|_| ())
    }

    pub fn lookup(&self, key: &[u8]) -> std::io::Result<Option<Vec<u8>>> {
        self.check(key, None)?;
        let mut value = vec![0u8; self.value_size];
        let mut a = ElemAttr {
            map_fd: self.fd.as_raw_fd() as u32,
            key: key.as_ptr() as u64,
            value: value.as_mut_ptr() as u64,
            ..Default::default()
        };
        match bpf(BPF_MAP_LOOKUP_ELEM, &mut a) {
            Ok(_) => Ok(Some(value)),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn delete(&self, key: &[u8]) -> std::io::Result<()> {
        self.check(key, None)?;
        let mut a = ElemAttr {
            map_fd: self.fd.as_raw_fd() as u32,
            key: key.as_ptr() as u64,
            ..Default::default()
        };
        bpf(BPF_MAP_DELETE_ELEM, &mut a).map(|_| ())
    }

    /// Every key, in the map's order. A key deleted while iterating restarts the walk in the
    /// kernel, so under churn this is a snapshot, not exact.
    pub fn keys(&self) -> std::io::Result<Vec<Vec<u8>>> {
        let mut out: Vec<Vec<u8>> = Vec::new();
        let mut next = vec![0u8; self.key_size];
        loop {
            let mut a = ElemAttr {
                map_fd: self.fd.as_raw_fd() as u32,
                // A null key asks for the first one.
                key: out.last().map_or(0, |k| k.as_ptr() as u64),
                value: next.as_mut_ptr() as u64,
                ..Default::default()
            };
            match bpf(BPF_MAP_GET_NEXT_KEY, &mut a) {
                Ok(_) => out.push(next.clone()),
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(out),
                Err(e) => return Err(e),
            }
            // The kernel map holds at most max_entries; more means the walk restarted.
            if out.len() > self.max_entries as usize * 2 {
                return Ok(out);
            }
        }
    }

    /// Number of entries (see [`BpfMap::keys`]).
    pub fn len(&self) -> std::io::Result<usize> {
        self.keys().map(|k| k.len())
    }

    pub fn is_empty(&self) -> std::io::Result<bool> {
        self.len().map(|n| n == 0)
    }
}

/// The kernel's `dev_t` encoding the programs use: `major << 20 | minor`.
pub fn kernel_dev(major: u32, minor: u32) -> u32 {
    (major << 20) | minor
}

/// A key of `RQ_INFLIGHT` as bytes: any u64 (the kernel's request pointer, or the classic
/// programs' folded device and sector); entries the test writes use ids of their own.
pub fn request_key(id: u64) -> Vec<u8> {
    id.to_le_bytes().to_vec()
}

/// `Request { start_ns, sector, dev, count, nr_sector, _pad, op }` as bytes (`op` all
/// zero: unknown).
pub fn request(start_ns: u64, dev: u32, sector: u64, count: u32, nr_sector: u32) -> Vec<u8> {
    let mut v = start_ns.to_le_bytes().to_vec();
    v.extend(sector.to_le_bytes());
    v.extend(dev.to_le_bytes());
    v.extend(count.to_le_bytes());
    v.extend(nr_sector.to_le_bytes());
    v.extend(0u32.to_le_bytes());
    v.extend([0u8; 8]);
    v
}

/// `RqVal { start_ns, count, nr_sector, op }` as bytes (`op` all zero: unknown), the value
/// of the bio and RPC maps.
pub fn rq_val(start_ns: u64, count: u32, nr_sector: u32) -> Vec<u8> {
    let mut v = start_ns.to_le_bytes().to_vec();
    v.extend(count.to_le_bytes());
    v.extend(nr_sector.to_le_bytes());
    v.extend([0u8; 8]);
    v
}

/// `RpcKey { client_id, task_id }` as bytes.
pub fn rpc_key(client_id: u32, task_id: u32) -> Vec<u8> {
    let mut k = client_id.to_le_bytes().to_vec();
    k.extend(task_id.to_le_bytes());
    k
}

/// CLOCK_MONOTONIC in nanoseconds, the clock of `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    let ts =
        nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).expect("CLOCK_MONOTONIC");
    ts.tv_sec() as u64 * 1_000_000_000 + ts.tv_nsec() as u64
}
