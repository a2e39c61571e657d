//! Just enough of the BTF format to find where a member sits in a kernel
//! struct. The kernel programs read a few kernel-internal structs through
//! `bpf_probe_read_kernel`; taking the offsets from the running kernel's BTF
//! (instead of hard-coding them) keeps that correct across kernel builds.

use std::{collections::HashMap, path::Path};

use thiserror::Error;

#[derive(Debug, Error)]
pub enum BtfError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("malformed BTF: {0}")]
    Malformed(&'static str),
    #[error("kernel BTF has no struct `{0}`")]
    NoStruct(String),
    #[error("kernel struct `{strukt}` has no member `{member}`")]
    NoMember { strukt: String, member: String },
    #[error(
        "kernel struct `{strukt}` member `{member}` is {found} bytes; guard reads it as {expected} \
         bytes and cannot run on this kernel"
    )]
    MemberSize {
        strukt: String,
        member: String,
        found: u32,
        expected: u32,
    },
}

const BTF_MAGIC: u16 = 0xeb9f;
const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_ENUM64: u32 = 19;

/// Byte offsets of the members of every named struct, indexed on demand.
pub struct Btf {
    data: Vec<u8>,
    types_start: usize,
    types_end: usize,
    strings_start: usize,
    strings_end: usize,
    structs: HashMap<String, usize>,
    /// Byte position of every type, by type id (ids start at 1).
    types: Vec<usize>,
}

fn u32_at(data: &[u8], at: usize) -> Result<u32, BtfError> {
    let bytes = data
        .get(at..at + 4)
        .ok_or(BtfError::Malformed("truncated"))?;
    Ok(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
}

/// Bytes that follow the common type header for each BTF kind.
fn extra_bytes(kind: u32, vlen: usize) -> Result<usize, BtfError> {
    Ok(match kind {
        1 => 4,                                      // INT
        2 | 7 | 8 | 9 | 10 | 11 | 12 | 16 | 18 => 0, // PTR, FWD, TYPEDEF, quals, FUNC, FLOAT, TYPE_TAG
        3 => 12,                                     // ARRAY
        4 | 5 => 12 * vlen,                          // STRUCT, UNION
        6 => 8 * vlen,                               // ENUM
        13 => 8 * vlen,                              // FUNC_PROTO
        14 => 4,                                     // VAR
        15 => 12 * vlen,                             // DATASEC
        17 => 4,                                     // DECL_TAG
        19 => 12 * vlen,                             // ENUM64
        _ => return Err(BtfError::Malformed("unknown type kind")),
    })
}

impl Btf {
    pub fn from_sys_fs() -> Result<Self, BtfError> {
        Self::from_file(Path::new("/sys/kernel/btf/vmlinux"))
    }

    pub fn from_file(path: &Path) -> Result<Self, BtfError> {
        let data = std::fs::read(path).map_err(|source| BtfError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(data)
    }

    pub fn parse(data: Vec<u8>) -> Result<Self, BtfError> {
        if data.len() < 24 || u16::from_le_bytes([data[0], data[1]]) != BTF_MAGIC {
            return Err(BtfError::Malformed(
                "bad magic (only little-endian BTF is read)",
            ));
        }
        let hdr_len = u32_at(&data, 4)? as usize;
        let type_off = u32_at(&data, 8)? as usize;
        let type_len = u32_at(&data, 12)? as usize;
        let str_off = u32_at(&data, 16)? as usize;
        let str_len = u32_at(&data, 20)? as usize;
        let types_start = hdr_len
            .checked_add(type_off)
            .ok_or(BtfError::Malformed("overflow"))?;
        let types_end = types_start
            .checked_add(type_len)
            .ok_or(BtfError::Malformed("overflow"))?;
        let strings_start = hdr_len
            .checked_add(str_off)
            .ok_or(BtfError::Malformed("overflow"))?;
        let strings_end = strings_start
            .checked_add(str_len)
            .ok_or(BtfError::Malformed("overflow"))?;
        if types_end > data.len() || strings_end > data.len() {
            return Err(BtfError::Malformed("sections past end of data"));
        }
        let mut btf = Btf {
            data,
            types_start,
            types_end,
            strings_start,
            strings_end,
            structs: HashMap::new(),
            types: Vec::new(),
        };
        btf.index()?;
        Ok(btf)
    }

    fn string(&self, off: u32) -> Result<&str, BtfError> {
        let start = self.strings_start + off as usize;
        if start >= self.strings_end {
            return Err(BtfError::Malformed("string offset out of range"));
        }
        let bytes = &self.data[start..self.strings_end];
        let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
        std::str::from_utf8(&bytes[..end]).map_err(|_| BtfError::Malformed("string not UTF-8"))
    }

    /// Walks the type section once, remembering where each named struct is.
    fn index(&mut self) -> Result<(), BtfError> {
        let mut at = self.types_start;
        let mut structs = HashMap::new();
        let mut types = vec![0usize];
        while at < self.types_end {
            types.push(at);
            let name_off = u32_at(&self.data, at)?;
            let info = u32_at(&self.data, at + 4)?;
            let kind = (info >> 24) & 0x1f;
            let vlen = (info & 0xffff) as usize;
            let extra = extra_bytes(kind, vlen)?;
            if kind == KIND_STRUCT || kind == KIND_UNION {
                let name = self.string(name_off)?;
                if !name.is_empty() {
                    structs.entry(name.to_owned()).or_insert(at);
                }
            }
            at += 12 + extra;
        }
        self.structs = structs;
        self.types = types;
        Ok(())
    }

    /// The struct or union a type id names, skipping typedefs and
    /// qualifiers; `None` for any other kind.
    fn composite(&self, mut id: u32) -> Result<Option<usize>, BtfError> {
        for _ in 0..32 {
            let at = *self
                .types
                .get(id as usize)
                .ok_or(BtfError::Malformed("type id out of range"))?;
            let info = u32_at(&self.data, at + 4)?;
            match (info >> 24) & 0x1f {
                KIND_STRUCT | KIND_UNION => return Ok(Some(at)),
                // TYPEDEF, VOLATILE, CONST, RESTRICT, TYPE_TAG
                8 | 9 | 10 | 11 | 18 => id = u32_at(&self.data, at + 8)?,
                _ => return Ok(None),
            }
        }
        Err(BtfError::Malformed("type chain too long"))
    }

    /// Byte offset and type id of `member` inside the composite at `at`,
    /// looking into anonymous struct and union members too.
    fn find_member(
        &self,
        at: usize,
        member: &str,
        depth: u32,
    ) -> Result<Option<(u32, u32)>, BtfError> {
        if depth > 8 {
            return Ok(None);
        }
        let info = u32_at(&self.data, at + 4)?;
        let vlen = (info & 0xffff) as usize;
        let kflag = info >> 31 == 1;
        for i in 0..vlen {
            let m = at + 12 + 12 * i;
            let raw = u32_at(&self.data, m + 8)?;
            let bits = if kflag { raw & 0x00ff_ffff } else { raw };
            let name = self.string(u32_at(&self.data, m)?)?;
            let ty = u32_at(&self.data, m + 4)?;
            if name == member {
                return Ok(Some((bits / 8, ty)));
            }
            if name.is_empty()
                && let Some(inner) = self.composite(ty)?
                && let Some((off, ty)) = self.find_member(inner, member, depth + 1)?
            {
                return Ok(Some((bits / 8 + off, ty)));
            }
        }
        Ok(None)
    }

    /// Size in bytes of a type, through typedefs and qualifiers; `None` for
    /// kinds whose size is not a plain number here (arrays, functions).
    fn type_size(&self, mut id: u32) -> Result<Option<u32>, BtfError> {
        for _ in 0..32 {
            let at = *self
                .types
                .get(id as usize)
                .ok_or(BtfError::Malformed("type id out of range"))?;
            let info = u32_at(&self.data, at + 4)?;
            match (info >> 24) & 0x1f {
                KIND_INT | KIND_STRUCT | KIND_UNION | KIND_ENUM | KIND_ENUM64 => {
                    return Ok(Some(u32_at(&self.data, at + 8)?));
                }
                KIND_PTR => return Ok(Some(8)),
                // TYPEDEF, VOLATILE, CONST, RESTRICT, TYPE_TAG
                8 | 9 | 10 | 11 | 18 => id = u32_at(&self.data, at + 8)?,
                _ => return Ok(None),
            }
        }
        Err(BtfError::Malformed("type chain too long"))
    }

    fn member(&self, strukt: &str, member: &str) -> Result<(u32, u32), BtfError> {
        let at = *self
            .structs
            .get(strukt)
            .ok_or_else(|| BtfError::NoStruct(strukt.to_owned()))?;
        self.find_member(at, member, 0)?
            .ok_or_else(|| BtfError::NoMember {
                strukt: strukt.to_owned(),
                member: member.to_owned(),
            })
    }

    /// BTF type id of the function `name` (for attach_btf_id).
    pub fn func_id(&self, name: &str) -> Result<u32, BtfError> {
        let mut at = self.types_start;
        let mut id = 1u32;
        while at < self.types_end {
            let name_off = u32_at(&self.data, at)?;
            let info = u32_at(&self.data, at + 4)?;
            let kind = (info >> 24) & 0x1f;
            if kind == 12 && self.string(name_off)? == name {
                return Ok(id);
            }
            at += 12 + extra_bytes(kind, (info & 0xffff) as usize)?;
            id += 1;
        }
        Err(BtfError::NoStruct(name.to_owned()))
    }

    /// Byte offset of `member` in `struct strukt`, including members of
    /// anonymous structs and unions inside it.
    pub fn member_offset(&self, strukt: &str, member: &str) -> Result<u32, BtfError> {
        self.member(strukt, member).map(|(off, _)| off)
    }

    /// As [`Btf::member_offset`], for a member the programs read as exactly
    /// `size` bytes: a member of another size is an error, not a wrong
    /// reading.
    pub fn member_offset_sized(
        &self,
        strukt: &str,
        member: &str,
        size: u32,
    ) -> Result<u32, BtfError> {
        let (off, ty) = self.member(strukt, member)?;
        match self.type_size(ty)? {
            Some(found) if found == size => Ok(off),
            found => Err(BtfError::MemberSize {
                strukt: strukt.to_owned(),
                member: member.to_owned(),
                found: found.unwrap_or(0),
                expected: size,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_running_kernel() {
        // /sys/kernel/btf/vmlinux is world-readable on kernels with BTF; the
        // project requires BTF, so its absence is a real failure.
        let btf = Btf::from_sys_fs().unwrap();
        assert_eq!(btf.member_offset("bpf_sock_addr_kern", "sk").unwrap(), 0);
        assert_eq!(btf.member_offset("bpf_sock_addr_kern", "uaddr").unwrap(), 8);
        assert!(matches!(
            btf.member_offset("bpf_sock_addr_kern", "nope"),
            Err(BtfError::NoMember { .. })
        ));
        assert!(matches!(
            btf.member_offset("no_such_struct_x", "a"),
            Err(BtfError::NoStruct(_))
        ));
    }

    #[test]
    fn sizes_the_members_the_exec_check_reads() {
        let btf = Btf::from_sys_fs().unwrap();
        // kernel_cap_t (a typedef of a struct) and an unsigned long.
        for set in ["cap_effective", "cap_permitted"] {
            let cap = btf.member_offset_sized("cred", set, 8).unwrap();
            assert_eq!(cap, btf.member_offset("cred", set).unwrap());
        }
        assert_ne!(
            btf.member_offset("cred", "cap_effective").unwrap(),
            btf.member_offset("cred", "cap_permitted").unwrap()
        );
        btf.member_offset_sized("task_struct", "atomic_flags", 8)
            .unwrap();
        btf.member_offset_sized("seccomp", "mode", 4).unwrap();
        assert_eq!(btf.member_offset("seccomp", "mode").unwrap(), 0);
        match btf.member_offset_sized("seccomp", "mode", 8) {
            Err(e @ BtfError::MemberSize { found: 4, .. }) => {
                assert!(
                    e.to_string().contains("`seccomp` member `mode` is 4 bytes"),
                    "{e}"
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn rejects_garbage() {
        assert!(Btf::parse(vec![0; 10]).is_err());
        let mut bad = vec![0u8; 24];
        bad[0] = 0x9f;
        bad[1] = 0xeb;
        bad[4] = 24;
        bad[12] = 0xff; // type_len past the end
        assert!(Btf::parse(bad).is_err());
    }
}
