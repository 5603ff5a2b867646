//! The stand-in BTF aya's program loaders are given to name an attach point.

use super::btf::{BtfError, KIND_FUNC, KIND_TYPEDEF, blob};

/// What aya's program loaders are given to find an attach point: they only look a name up
/// (a FUNC for iterators, a TYPEDEF for `tp_btf`) and pass its id to the kernel, so empty
/// records up to the kernel's own ids and the named ones there are enough; a few MiB for a
/// moment, where aya's own parse of the kernel's BTF costs some 20 MiB, for the same numbers.
pub fn placeholder(named: &[(u32, u32, &str)]) -> Result<aya::Btf, BtfError> {
    let mut strings = vec![0u8];
    let mut types = Vec::new();
    let mut named: Vec<_> = named.to_vec();
    named.sort_by_key(|n| n.0);
    let mut next = 1;
    for (id, kind, name) in named {
        if id < next {
            return Err(BtfError::Shape(id));
        }
        // Kind 0 records are what aya reads as unknown types, 12 bytes each.
        types.resize(types.len() + 12 * (id - next) as usize, 0);
        let name_off = strings.len() as u32;
        strings.extend_from_slice(name.as_bytes());
        strings.push(0);
        // A FUNC's vlen is its linkage: global (1).
        let vlen = u32::from(kind == KIND_FUNC);
        for w in [name_off, (kind << 24) | vlen, 0] {
            types.extend_from_slice(&w.to_le_bytes());
        }
        next = id + 1;
    }
    let blob = blob(&types, &strings);
    aya::Btf::parse(&blob, aya::Endianness::Little).map_err(|_| BtfError::Header)
}

/// Kinds [`placeholder`] can stand in for.
pub const PLACEHOLDER_FUNC: u32 = KIND_FUNC;
pub const PLACEHOLDER_TYPEDEF: u32 = KIND_TYPEDEF;

#[cfg(test)]
mod tests {
    use super::*;
    use aya_obj::btf::BtfKind;

    #[test]
    fn named_types_land_at_the_kernels_ids() {
        let b = placeholder(&[
            (4000, PLACEHOLDER_TYPEDEF, "btf_trace_block_rq_issue"),
            (17, PLACEHOLDER_FUNC, "bpf_iter_task"),
        ])
        .unwrap();
        assert_eq!(
            b.id_by_type_name_kind("btf_trace_block_rq_issue", BtfKind::Typedef)
                .unwrap(),
            4000
        );
        assert_eq!(
            b.id_by_type_name_kind("bpf_iter_task", BtfKind::Func)
                .unwrap(),
            17
        );
        assert!(placeholder(&[(5, KIND_FUNC, "a"), (5, KIND_FUNC, "b")]).is_err());
    }
}
