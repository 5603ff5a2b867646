//! Member offsets of kernel structs, read from the kernel's BTF (`/sys/kernel/btf/vmlinux`).
//!
//! The stack iterator needs a few `task_struct` fields and the BTF-enabled block programs a
//! few `struct request` ones, whose place depends on the kernel's version and config. aya
//! parses BTF too, into some 20 MiB of its own types, and does not expose members; this
//! walks the raw type section (a few milliseconds, no allocation per type) for what is
//! asked only, and `btf_placeholder` builds the stand-in aya needs to name an attach point.

use std::collections::HashMap;

use agent_ebpf::TaskOffsets;

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("not BTF (bad magic or header)")]
    Header,
    #[error("truncated BTF type section at byte {0}")]
    Truncated(usize),
    #[error("unknown BTF kind {kind} at byte {at}")]
    Kind { kind: u32, at: usize },
    #[error("struct {0} not in the kernel's BTF")]
    NoStruct(String),
    #[error("function {0} not in the kernel's BTF")]
    NoFunc(String),
    #[error("{0} has no member {1}")]
    NoMember(String, String),
    #[error("tracepoint {0} has no BTF prototype (btf_trace_{0})")]
    NoTrace(String),
    #[error("enum {0} not in the kernel's BTF")]
    NoEnum(String),
    #[error("type {0} is not what a tracepoint prototype is")]
    Shape(u32),
}

const MAGIC: u16 = 0xeb9f;
const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
pub(super) const KIND_TYPEDEF: u32 = 8;
pub(super) const KIND_FUNC: u32 = 12;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_ENUM64: u32 = 19;
/// Modifiers that only name or qualify another type: VOLATILE, CONST, RESTRICT, TYPE_TAG.
const KIND_MODIFIERS: [u32; 4] = [9, 10, 11, 18];

/// Raw BTF of the running kernel.
pub const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

/// A struct's members: name -> byte offset.
type Members = HashMap<String, u32>;

/// The parts of a BTF blob: the type section and the string section.
struct Sections<'a> {
    btf: &'a [u8],
    types: std::ops::Range<usize>,
    strings: std::ops::Range<usize>,
}

/// One type record: its id, kind, name, member count, flag and where its members start.
struct Record {
    id: u32,
    kind: u32,
    name_off: u32,
    vlen: usize,
    kind_flag: bool,
    body: usize,
}

fn u32_at(btf: &[u8], at: usize) -> Option<u32> {
    btf.get(at..at + 4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

impl<'a> Sections<'a> {
    fn of(btf: &'a [u8]) -> Result<Self, BtfError> {
        if btf.get(0..2).map(|b| u16::from_le_bytes([b[0], b[1]])) != Some(MAGIC) {
            return Err(BtfError::Header);
        }
        let field = |i: usize| {
            u32_at(btf, 4 + 4 * i)
                .map(|v| v as usize)
                .ok_or(BtfError::Header)
        };
        let (hdr_len, type_off, type_len, str_off, str_len) =
            (field(0)?, field(1)?, field(2)?, field(3)?, field(4)?);
        let types = hdr_len + type_off..hdr_len + type_off + type_len;
        let strings = hdr_len + str_off..hdr_len + str_off + str_len;
        if btf.len() < types.end || btf.len() < strings.end {
            return Err(BtfError::Header);
        }
        Ok(Self {
            btf,
            types,
            strings,
        })
    }

    fn name(&self, off: u32) -> &'a str {
        let tail = self
            .btf
            .get(self.strings.start + off as usize..self.strings.end)
            .unwrap_or_default();
        let end = tail.iter().position(|b| *b == 0).unwrap_or(tail.len());
        std::str::from_utf8(&tail[..end]).unwrap_or_default()
    }

    /// Calls `f` on every type record in id order until it returns true.
    fn walk(&self, mut f: impl FnMut(&Record) -> Result<bool, BtfError>) -> Result<(), BtfError> {
        let mut at = self.types.start;
        let mut id = 1;
        while at < self.types.end {
            let (Some(name_off), Some(info)) = (u32_at(self.btf, at), u32_at(self.btf, at + 4))
            else {
                return Err(BtfError::Truncated(at));
            };
            let vlen = (info & 0xffff) as usize;
            let kind = (info >> 24) & 0x1f;
            let extra = match kind {
                1 | 14 | 17 => 4,             // INT, VAR, DECL_TAG
                2 | 7..=12 | 16 | 18 => 0,    // PTR, FWD, TYPEDEF..FUNC, FLOAT, TYPE_TAG
                3 => 12,                      // ARRAY
                4 | 5 | 15 | 19 => 12 * vlen, // STRUCT, UNION, DATASEC, ENUM64
                6 | 13 => 8 * vlen,           // ENUM, FUNC_PROTO
                _ => return Err(BtfError::Kind { kind, at }),
            };
            let rec = Record {
                id,
                kind,
                name_off,
                vlen,
                kind_flag: info >> 31 == 1,
                body: at + 12,
            };
            if f(&rec)? {
                return Ok(());
            }
            at = rec.body + extra;
            id += 1;
        }
        Ok(())
    }
}

/// The named structs (first definition of each with members) and the byte offsets of their
/// members. Bitfield members are skipped: nothing here reads one.
pub fn struct_members(btf: &[u8], names: &[&str]) -> Result<HashMap<String, Members>, BtfError> {
    let s = Sections::of(btf)?;
    let mut found: HashMap<String, Members> = HashMap::new();
    s.walk(|r| {
        if r.kind != KIND_STRUCT || r.vlen == 0 {
            return Ok(false);
        }
        let n = s.name(r.name_off);
        if !names.contains(&n) || found.contains_key(n) {
            return Ok(false);
        }
        let mut members = Members::new();
        for m in 0..r.vlen {
            let rec = r.body + 12 * m;
            let (Some(m_name), Some(m_off)) = (u32_at(btf, rec), u32_at(btf, rec + 8)) else {
                return Err(BtfError::Truncated(rec));
            };
            // With kind_flag the top byte is the bitfield size, the rest the offset.
            let (bits, size) = if r.kind_flag {
                (m_off & 0x00ff_ffff, m_off >> 24)
            } else {
                (m_off, 0)
            };
            if size == 0 && bits % 8 == 0 {
                members.insert(s.name(m_name).to_owned(), bits / 8);
            }
        }
        found.insert(n.to_owned(), members);
        Ok(found.len() == names.len())
    })?;
    Ok(found)
}

/// The type id of the function `name` (what a tracing program names as its attach point).
pub fn func_id(btf: &[u8], name: &str) -> Result<u32, BtfError> {
    let s = Sections::of(btf)?;
    let mut id = None;
    s.walk(|r| {
        if r.kind == KIND_FUNC && s.name(r.name_off) == name {
            id = Some(r.id);
        }
        Ok(id.is_some())
    })?;
    id.ok_or_else(|| BtfError::NoFunc(name.into()))
}

/// A tracepoint's BTF prototype: the id of its `btf_trace_<event>` typedef (what a `tp_btf`
/// program names as its attach point) and the size in bytes of each argument after the
/// leading `void *`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceProto {
    pub id: u32,
    pub arg_sizes: Vec<u32>,
}

/// The prototypes of the named tracepoint events.
pub fn trace_protos(btf: &[u8], events: &[&str]) -> Result<HashMap<String, TraceProto>, BtfError> {
    let s = Sections::of(btf)?;
    // Where each record starts, by id: prototypes point at types anywhere in the section.
    let mut starts = vec![0usize];
    let mut typedefs: Vec<(String, u32, u32)> = Vec::new();
    s.walk(|r| {
        starts.push(r.body - 12);
        if r.kind == KIND_TYPEDEF
            && let Some(ev) = s.name(r.name_off).strip_prefix("btf_trace_")
            && events.contains(&ev)
        {
            let target = u32_at(btf, r.body - 4).ok_or(BtfError::Truncated(r.body))?;
            typedefs.push((ev.to_owned(), r.id, target));
        }
        Ok(false)
    })?;
    let head = |id: u32| -> Result<(u32, u32, usize), BtfError> {
        let at = *starts.get(id as usize).ok_or(BtfError::Shape(id))?;
        let info = u32_at(btf, at + 4).ok_or(BtfError::Truncated(at))?;
        let next = u32_at(btf, at + 8).ok_or(BtfError::Truncated(at))?;
        Ok(((info >> 24) & 0x1f, next, at))
    };
    // The byte size of a type, through typedefs and qualifiers.
    let size = |mut id: u32| -> Result<u32, BtfError> {
        for _ in 0..16 {
            let (kind, next, _) = head(id)?;
            match kind {
                KIND_PTR => return Ok(8),
                KIND_INT | KIND_STRUCT | KIND_UNION | KIND_ENUM | KIND_ENUM64 => return Ok(next),
                k if k == KIND_TYPEDEF || KIND_MODIFIERS.contains(&k) => id = next,
                _ => break,
            }
        }
        Err(BtfError::Shape(id))
    };
    let mut out = HashMap::new();
    for (ev, id, target) in typedefs {
        let (kind, proto, _) = head(target)?;
        let (proto_kind, _, at) = head(proto)?;
        if kind != KIND_PTR || proto_kind != KIND_FUNC_PROTO {
            return Err(BtfError::Shape(target));
        }
        let info = u32_at(btf, at + 4).ok_or(BtfError::Truncated(at))?;
        let mut arg_sizes = Vec::new();
        // Parameters are (name, type) pairs; the first is the probe's `void *__data`.
        for p in 1..(info & 0xffff) as usize {
            let ty = u32_at(btf, at + 12 + 8 * p + 4).ok_or(BtfError::Truncated(at))?;
            arg_sizes.push(size(ty)?);
        }
        out.insert(ev, TraceProto { id, arg_sizes });
    }
    Ok(out)
}

/// The values of a named enum's constants.
pub fn enum_values(btf: &[u8], name: &str) -> Result<HashMap<String, i64>, BtfError> {
    let s = Sections::of(btf)?;
    let mut found = None;
    s.walk(|r| {
        if !(r.kind == KIND_ENUM || r.kind == KIND_ENUM64) || s.name(r.name_off) != name {
            return Ok(false);
        }
        let step = if r.kind == KIND_ENUM { 8 } else { 12 };
        let mut values = HashMap::new();
        for i in 0..r.vlen {
            let at = r.body + step * i;
            let (Some(n), Some(lo)) = (u32_at(btf, at), u32_at(btf, at + 4)) else {
                return Err(BtfError::Truncated(at));
            };
            let v = if r.kind == KIND_ENUM {
                i64::from(lo as i32)
            } else {
                let hi = u32_at(btf, at + 8).ok_or(BtfError::Truncated(at))?;
                ((u64::from(hi) << 32) | u64::from(lo)) as i64
            };
            values.insert(s.name(n).to_owned(), v);
        }
        found = Some(values);
        Ok(true)
    })?;
    found.ok_or_else(|| BtfError::NoEnum(name.into()))
}

/// A BTF blob of the given type and string sections (version 1, little-endian).
pub(super) fn blob(types: &[u8], strings: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(24 + types.len() + strings.len());
    b.extend_from_slice(&MAGIC.to_le_bytes());
    b.extend_from_slice(&[1, 0]);
    for w in [
        24u32,
        0,
        types.len() as u32,
        types.len() as u32,
        strings.len() as u32,
    ] {
        b.extend_from_slice(&w.to_le_bytes());
    }
    b.extend_from_slice(types);
    b.extend_from_slice(strings);
    b
}

pub(crate) fn member(all: &HashMap<String, Members>, s: &str, m: &str) -> Result<u32, BtfError> {
    let members = all.get(s).ok_or_else(|| BtfError::NoStruct(s.into()))?;
    members
        .get(m)
        .copied()
        .ok_or_else(|| BtfError::NoMember(s.into(), m.into()))
}

/// Where `task_struct` keeps what the stack iterator reads. `state` was renamed `__state` in
/// 5.14; `sched_info` exists only with schedstats/delay accounting (then the wait is unknown).
pub fn task_offsets(btf: &[u8]) -> Result<TaskOffsets, BtfError> {
    let all = struct_members(btf, &["task_struct", "sched_info"])?;
    let state =
        member(&all, "task_struct", "__state").or_else(|_| member(&all, "task_struct", "state"))?;
    let last_arrival = match (
        member(&all, "task_struct", "sched_info"),
        member(&all, "sched_info", "last_arrival"),
    ) {
        (Ok(a), Ok(b)) => a + b,
        _ => 0,
    };
    Ok(TaskOffsets {
        pid: member(&all, "task_struct", "pid")?,
        tgid: member(&all, "task_struct", "tgid")?,
        state,
        last_arrival,
    })
}

/// Reads the running kernel's BTF.
pub fn read_vmlinux() -> Result<Vec<u8>, BtfError> {
    std::fs::read(VMLINUX).map_err(|source| BtfError::Read {
        path: VMLINUX.into(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hand-built BTF: `struct task_struct { int pid; int tgid; unsigned __state; }` after
    /// an INT and a FUNC_PROTO with one parameter (so skipping by kind is exercised).
    fn tiny() -> Vec<u8> {
        let strings = b"\0int\0task_struct\0pid\0tgid\0__state\0bpf_iter_task\0".to_vec();
        let mut types = Vec::new();
        let mut rec = |words: &[u32]| {
            for w in words {
                types.extend_from_slice(&w.to_le_bytes());
            }
        };
        rec(&[1, 1 << 24, 4, 32]); // [1] INT "int", 4 bytes, 32 bits
        rec(&[0, (13 << 24) | 1, 1, 0, 1]); // [2] FUNC_PROTO (int) -> int
        rec(&[5, (4 << 24) | 3, 12]); // [3] STRUCT task_struct, 3 members
        rec(&[17, 1, 0]);
        rec(&[21, 1, 32]);
        rec(&[26, 1, 64]);
        rec(&[34, 12 << 24, 2]); // [4] FUNC bpf_iter_task of [2]
        blob(&types, &strings)
    }

    #[test]
    fn finds_members_in_a_hand_built_btf() {
        let btf = tiny();
        let t = task_offsets(&btf).unwrap();
        assert_eq!((t.pid, t.tgid, t.state, t.last_arrival), (0, 4, 8, 0));
        assert_eq!(func_id(&btf, "bpf_iter_task").unwrap(), 4);
        assert!(matches!(func_id(&btf, "nope"), Err(BtfError::NoFunc(_))));
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        assert!(matches!(
            struct_members(b"nope", &[]),
            Err(BtfError::Header)
        ));
        let mut btf = tiny();
        btf.truncate(40);
        assert!(struct_members(&btf, &["task_struct"]).is_err());
        let mut odd = tiny();
        // The INT's kind becomes 31, which no kernel emits.
        odd[24 + 7] = 31;
        assert!(matches!(
            struct_members(&odd, &["task_struct"]),
            Err(BtfError::Kind { kind: 31, .. })
        ));
    }

    /// The running kernel's BTF (world-readable): the fields exist and are ordered as in
    /// every kernel since 2.6 (`pid` right before `tgid`).
    #[test]
    fn the_running_kernels_task_struct() {
        let Ok(btf) = read_vmlinux() else {
            eprintln!("no {VMLINUX}; skipped");
            return;
        };
        let t = task_offsets(&btf).unwrap();
        assert_eq!(t.tgid, t.pid + 4);
        assert!(t.pid > 0 && t.state < t.pid);
        assert!(func_id(&btf, "bpf_iter_task").unwrap() > 1000);
    }
}
