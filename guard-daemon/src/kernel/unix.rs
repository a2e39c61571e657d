//! Loader for the Unix-socket hooks (`cgroup/connect_unix`,
//! `cgroup/sendmsg_unix`, kernel 6.7+), which aya 0.14 cannot parse.
//!
//! It is deliberately small: it takes one program section of guard's own
//! second object, appends `.text` (where LLVM puts `memset`/`memcpy`), points
//! map references at the descriptors of the maps aya already created from the
//! main object, and fixes up calls into `.text`. Anything else in the object
//! (global data, BTF-only features) is refused with an error rather than
//! guessed at.

use std::os::fd::{AsRawFd, OwnedFd};
use std::{collections::HashMap, os::fd::BorrowedFd};

use aya_obj::generated::bpf_insn;
use object::{Object, ObjectSection, ObjectSymbol, RelocationFlags, RelocationTarget};
use thiserror::Error;

use super::sys;

/// `BPF_PROG_TYPE_CGROUP_SOCK_ADDR`.
const PROG_TYPE_CGROUP_SOCK_ADDR: u32 = 18;
pub const ATTACH_UNIX_CONNECT: u32 = 49;
pub const ATTACH_UNIX_SENDMSG: u32 = 50;

const R_BPF_64_64: u32 = 1;
const R_BPF_64_32: u32 = 10;
const BPF_PSEUDO_MAP_FD: u8 = 1;
const BPF_LD_IMM64: u8 = 0x18;
const BPF_CALL: u8 = 0x85;

#[derive(Debug, Error)]
pub enum UnixLoadError {
    #[error("parsing the Unix-hook object: {0}")]
    Elf(#[from] object::Error),
    #[error("the Unix-hook object has no section `{0}`")]
    NoSection(String),
    #[error("the Unix-hook object refers to `{0}`, which is neither a known map nor code in .text")]
    UnknownSymbol(String),
    #[error("unsupported relocation in the Unix-hook object: {0}")]
    Unsupported(String),
    #[error("the kernel refused the program `{name}`: {source}\n{log}")]
    Verifier {
        name: String,
        source: std::io::Error,
        log: String,
    },
    #[error("attaching `{name}` to the cgroup: {source}")]
    Attach {
        name: String,
        source: std::io::Error,
    },
}

fn insns_of(bytes: &[u8]) -> Vec<bpf_insn> {
    bytes
        .chunks_exact(8)
        .map(|c| bpf_insn {
            code: c[0],
            _bitfield_align_1: [],
            _bitfield_1: bpf_insn::new_bitfield_1(c[1] & 0x0f, c[1] >> 4),
            off: i16::from_le_bytes([c[2], c[3]]),
            imm: i32::from_le_bytes([c[4], c[5], c[6], c[7]]),
        })
        .collect()
}

/// Builds the instruction stream of `section`: its own code followed by the
/// `.text` functions it calls (only those: the verifier refuses unreachable
/// code), with every relocation resolved.
pub fn link_program(
    elf: &[u8],
    section: &str,
    maps: &HashMap<String, i32>,
) -> Result<Vec<bpf_insn>, UnixLoadError> {
    let file = object::File::parse(elf)?;
    let prog = file
        .section_by_name(section)
        .ok_or_else(|| UnixLoadError::NoSection(section.to_owned()))?;
    let text = file.section_by_name(".text");
    let text_index = text.as_ref().map(|t| t.index());
    let text_insns = match &text {
        Some(t) => insns_of(t.data()?),
        None => Vec::new(),
    };
    if let Some(t) = &text
        && t.relocations().next().is_some()
    {
        return Err(UnixLoadError::Unsupported(
            "relocations inside .text".into(),
        ));
    }
    let mut insns = insns_of(prog.data()?);
    // .text function start (in instructions) -> where it was appended.
    let mut placed: HashMap<usize, usize> = HashMap::new();

    for (offset, reloc) in prog.relocations() {
        let at = (offset as usize) / 8;
        let r_type = match reloc.flags() {
            RelocationFlags::Elf { r_type } => r_type,
            other => return Err(UnixLoadError::Unsupported(format!("{other:?}"))),
        };
        let RelocationTarget::Symbol(sym_idx) = reloc.target() else {
            return Err(UnixLoadError::Unsupported(
                "relocation without symbol".into(),
            ));
        };
        let sym = file.symbol_by_index(sym_idx)?;
        let name = sym.name().unwrap_or("").to_owned();
        let insn = insns.get(at).copied().ok_or_else(|| {
            UnixLoadError::Unsupported(format!("relocation past the end at {offset}"))
        })?;
        match r_type {
            R_BPF_64_64 if insn.code == BPF_LD_IMM64 => {
                let fd = *maps
                    .get(&name)
                    .ok_or_else(|| UnixLoadError::UnknownSymbol(name.clone()))?;
                insns[at].set_src_reg(BPF_PSEUDO_MAP_FD);
                insns[at].imm = fd;
                if let Some(next) = insns.get_mut(at + 1) {
                    next.imm = 0;
                }
            }
            R_BPF_64_32 if insn.code == BPF_CALL => {
                if text_index.is_none() || sym.section_index() != text_index {
                    return Err(UnixLoadError::UnknownSymbol(name));
                }
                // The callee is the symbol plus the addend LLVM left in `imm`
                // (relative to the next instruction).
                let callee = (sym.address() / 8) as i64 + insn.imm as i64 + 1;
                let callee = usize::try_from(callee).map_err(|_| {
                    UnixLoadError::Unsupported(format!("call before .text in `{name}`"))
                })?;
                let func = file
                    .symbols()
                    .find(|s| {
                        s.section_index() == text_index
                            && s.address() / 8 == callee as u64
                            && s.size() > 0
                    })
                    .ok_or_else(|| UnixLoadError::UnknownSymbol(name.clone()))?;
                let len = (func.size() / 8) as usize;
                let body = text_insns.get(callee..callee + len).ok_or_else(|| {
                    UnixLoadError::Unsupported(format!("`{name}` past the end of .text"))
                })?;
                if body.iter().any(|i| i.code == BPF_CALL && i.src_reg() == 1) {
                    return Err(UnixLoadError::Unsupported(format!(
                        "`{name}` calls another function"
                    )));
                }
                let base = match placed.get(&callee) {
                    Some(b) => *b,
                    None => {
                        let b = insns.len();
                        insns.extend_from_slice(body);
                        placed.insert(callee, b);
                        b
                    }
                };
                insns[at].imm = (base as i64 - (at as i64 + 1)) as i32;
            }
            other => {
                return Err(UnixLoadError::Unsupported(format!(
                    "relocation type {other} on opcode {:#x} for `{name}`",
                    insn.code
                )));
            }
        }
    }
    Ok(insns)
}

/// The two Unix hooks, loaded and attached; dropping the links detaches them
/// unless they were pinned. The programs (name, attach type, descriptor) are
/// kept to attach them to scopes outside the parent cgroup as well.
pub struct UnixHooks {
    pub links: Vec<(&'static str, OwnedFd)>,
    pub progs: Vec<(&'static str, u32, OwnedFd)>,
}

pub fn load_and_attach(
    elf: &[u8],
    maps: &HashMap<String, i32>,
    cgroup: BorrowedFd<'_>,
) -> Result<UnixHooks, UnixLoadError> {
    let mut links = Vec::new();
    let mut progs = Vec::new();
    for (section, name, attach) in [
        (
            "cgroup/connect_unix",
            "guard_conn_unix",
            ATTACH_UNIX_CONNECT,
        ),
        (
            "cgroup/sendmsg_unix",
            "guard_send_unix",
            ATTACH_UNIX_SENDMSG,
        ),
    ] {
        let insns = link_program(elf, section, maps)?;
        let prog = sys::prog_load(PROG_TYPE_CGROUP_SOCK_ADDR, attach, &insns, name).map_err(
            |(source, log)| UnixLoadError::Verifier {
                name: name.to_owned(),
                source,
                log,
            },
        )?;
        let link = sys::link_create(
            // SAFETY: `prog` is open for the duration of this borrow.
            unsafe { BorrowedFd::borrow_raw(prog.as_raw_fd()) },
            cgroup,
            attach,
        )
        .map_err(|source| UnixLoadError::Attach {
            name: name.to_owned(),
            source,
        })?;
        links.push((name, link));
        progs.push((name, attach, prog));
    }
    Ok(UnixHooks { links, progs })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_the_embedded_object() {
        let maps: HashMap<String, i32> = [
            "CONFIG",
            "AGENTS",
            "NET4",
            "NET6",
            "UNIX",
            "EVENTS",
            "HOOK_DENIED",
        ]
        .iter()
        .enumerate()
        .map(|(i, n)| (n.to_string(), 100 + i as i32))
        .collect();
        let insns = link_program(super::super::UNIX_OBJ, "cgroup/connect_unix", &maps).unwrap();
        // Every map load now names one of our descriptors, and every call
        // into .text lands inside the program.
        let mut map_loads = 0;
        for (i, insn) in insns.iter().enumerate() {
            if insn.code == BPF_LD_IMM64 && insn.src_reg() == BPF_PSEUDO_MAP_FD {
                assert!((100..107).contains(&insn.imm));
                map_loads += 1;
            }
            if insn.code == BPF_CALL && insn.src_reg() == 1 {
                let target = i as i64 + 1 + insn.imm as i64;
                assert!(target >= 0 && (target as usize) < insns.len());
            }
        }
        assert!(map_loads >= 3);
    }

    #[test]
    fn unknown_map_is_an_error() {
        let maps = HashMap::new();
        let err = link_program(super::super::UNIX_OBJ, "cgroup/connect_unix", &maps).unwrap_err();
        assert!(matches!(err, UnixLoadError::UnknownSymbol(_)), "{err}");
    }
}
