//! What each protection layer amounts to on this host: enforced, degraded
//! (works with less than the policy may ask for) or unavailable, and why.
//! `guardctl doctor` prints it; guardd adds what only it knows (which
//! programs it loaded, where each cgroup controller lives).

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use std::path::PathBuf;

use crate::{
    kernel::{btf::Btf, sys},
    launch::landlock,
    scope::Placement,
};

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Enforced,
    Degraded,
    Unavailable,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Layer {
    pub layer: String,
    pub status: Status,
    pub detail: String,
}

fn layer(name: &str, status: Status, detail: impl Into<String>) -> Layer {
    Layer {
        layer: name.to_owned(),
        status,
        detail: detail.into(),
    }
}

/// Landlock: ABI and what it covers.
pub fn landlock_layer() -> Layer {
    match landlock::abi_version() {
        Err(e) => layer(
            "landlock",
            Status::Unavailable,
            format!("no Landlock ({e}); file and exec rules cannot be enforced"),
        ),
        Ok(abi) => {
            let mut has = vec!["files read/write/exec"];
            let mut lacks = Vec::new();
            for (min, what) in [
                (2, "cross-directory rename/link"),
                (3, "truncate"),
                (5, "device ioctl"),
                (6, "abstract Unix socket and signal scoping"),
                (7, "audit logging of denials"),
            ] {
                if abi >= min {
                    has.push(what);
                } else {
                    lacks.push(what);
                }
            }
            let status = if abi >= 6 {
                Status::Enforced
            } else {
                Status::Degraded
            };
            let mut detail = format!("ABI {abi}: {}", has.join(", "));
            if !lacks.is_empty() {
                detail.push_str(&format!("; missing: {}", lacks.join(", ")));
            }
            layer("landlock", status, detail)
        }
    }
}

pub fn seccomp_layer() -> Layer {
    // SECCOMP_GET_ACTION_AVAIL answers 0 only where filters are supported.
    let errno_action: u32 = 0x0005_0000;
    // SAFETY: the query reads the u32 we pass and changes nothing.
    let rc = unsafe { libc::syscall(libc::SYS_seccomp, 2u32, 0u32, &raw const errno_action) };
    if rc == 0 {
        layer(
            "seccomp",
            Status::Enforced,
            "filters available (default-deny allowlist, x86_64 only, x32 refused)",
        )
    } else {
        layer(
            "seccomp",
            Status::Unavailable,
            format!(
                "seccomp filters unavailable: {}",
                std::io::Error::last_os_error()
            ),
        )
    }
}

pub fn bpf_lsm_layer() -> Layer {
    let listed = std::fs::read_to_string("/sys/kernel/security/lsm")
        .map(|s| s.split(',').any(|l| l.trim() == "bpf"))
        .ok();
    let btf = match Btf::from_sys_fs() {
        Ok(b) => b,
        Err(e) => {
            return layer(
                "bpf-lsm",
                Status::Unavailable,
                format!("no kernel BTF: {e}"),
            );
        }
    };
    let id = match btf.func_id("bpf_lsm_file_open") {
        Ok(id) => id,
        Err(_) => {
            return layer(
                "bpf-lsm",
                Status::Unavailable,
                "kernel built without BPF LSM hooks",
            );
        }
    };
    match sys::probe_lsm_load(id) {
        Ok(()) => layer(
            "bpf-lsm",
            Status::Degraded,
            "LSM programs load here, but guard does not use them yet (optional extra layer)",
        ),
        Err(e) => layer(
            "bpf-lsm",
            Status::Unavailable,
            format!(
                "a BPF LSM program cannot load ({e}){}; guard relies on Landlock and seccomp instead (BPF LSM is only ever an extra layer)",
                match listed {
                    Some(true) => ", although `bpf` is in the active LSM list",
                    Some(false) => "; `bpf` is not in the active LSM list",
                    None => "",
                }
            ),
        ),
    }
}

pub fn audit_layer() -> Layer {
    if std::path::Path::new("/proc/self/loginuid").exists() {
        layer(
            "audit",
            Status::Enforced,
            "kernel audit present; guard records denials itself (BPF syscall-exit tracing), so it does not depend on auditd",
        )
    } else {
        layer(
            "audit",
            Status::Unavailable,
            "kernel built without audit; guard records denials through BPF syscall-exit tracing",
        )
    }
}

/// The exec confinement (issue 7): noexec views in a private mount
/// namespace, `vm.memfd_noexec` in a private pid namespace, and the loader
/// identified for the exec tracepoint.
pub fn exec_layer() -> Layer {
    // mount_setattr with no path answers EFAULT/EINVAL where it exists.
    // SAFETY: the call fails on its null arguments and changes nothing.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            -1,
            std::ptr::null::<libc::c_char>(),
            0u32,
            std::ptr::null::<u8>(),
            0usize,
        )
    };
    let setattr = rc == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ENOSYS);
    let memfd = std::path::Path::new("/proc/sys/vm/memfd_noexec").exists();
    let loaders = crate::kernel::loader_identities().len();
    let mut lacks = Vec::new();
    if !setattr {
        lacks.push("mount_setattr (Linux 5.12): no noexec views");
    }
    if !memfd {
        lacks.push("vm.memfd_noexec (Linux 6.3): memfds could be executed");
    }
    if loaders == 0 {
        lacks.push("no dynamic loader found: running it directly is not refused");
    }
    if lacks.is_empty() {
        layer(
            "exec confinement",
            Status::Enforced,
            format!(
                "noexec views but exec grants and library directories, vm.memfd_noexec=2, \
                 direct loader runs killed ({loaders} loader file(s)); the launcher needs CAP_SYS_ADMIN"
            ),
        )
    } else {
        layer(
            "exec confinement",
            if setattr && memfd {
                Status::Degraded
            } else {
                Status::Unavailable
            },
            format!(
                "missing: {}; agents need --allow-degraded exec",
                lacks.join(", ")
            ),
        )
    }
}

/// Host probes that need no daemon.
pub fn host_layers() -> Vec<Layer> {
    vec![
        landlock_layer(),
        seccomp_layer(),
        exec_layer(),
        audit_layer(),
        bpf_lsm_layer(),
    ]
}

/// What only guardd knows, handed over as plain values: the daemon owns
/// its state, the doctor only reads these.
#[derive(Clone, Debug, Default)]
pub struct DaemonFacts {
    pub instance: String,
    /// guard's parent cgroup (v2), where the programs are attached.
    pub parent_cgroup: PathBuf,
    /// Whether the Unix-socket hooks are attached, and why not.
    pub unix_hooks: bool,
    pub unix_error: Option<String>,
    /// Where each cgroup controller lives.
    pub placements: Vec<(String, Placement)>,
}

/// What guardd knows plus the host probes.
pub fn daemon_view(facts: &DaemonFacts) -> Value {
    let mut layers = daemon_layers(facts);
    layers.extend(host_layers());
    json!({"instance": facts.instance, "layers": layers})
}

/// The layers only guardd can report on (no host probe).
pub fn daemon_layers(facts: &DaemonFacts) -> Vec<Layer> {
    let mut layers = vec![layer(
        "cgroup-bpf network",
        Status::Enforced,
        format!(
            "connect4/6, sendmsg4/6 and sock_create attached to {}",
            facts.parent_cgroup.display()
        ),
    )];
    // guardd does not start without these, so when it answers they hold.
    layers.push(layer(
        "cgroup-bpf inbound",
        Status::Enforced,
        "bind4/6 and cgroup_skb/ingress attached: nothing binds or accepts without a listen rule",
    ));
    layers.push(if facts.unix_hooks {
        layer("cgroup-bpf unix", Status::Enforced, "connect_unix and sendmsg_unix attached")
    } else {
        layer(
            "cgroup-bpf unix",
            Status::Unavailable,
            format!(
                "{}; policies naming Unix sockets need --allow-degraded unix, and then AF_UNIX sockets are refused",
                facts.unix_error.clone().unwrap_or_default()
            ),
        )
    });
    for (c, p) in &facts.placements {
        let name = format!("cgroup {c}");
        layers.push(match p {
            Placement::V2 => layer(&name, Status::Enforced, "cgroup v2 controller"),
            Placement::V1(m) => layer(
                &name,
                Status::Enforced,
                format!("cgroup v1 hierarchy at {}", m.display()),
            ),
            Placement::Unavailable => layer(
                &name,
                Status::Unavailable,
                "controller neither in cgroup v2 nor mounted as v1",
            ),
        });
    }
    // Both files exist in every non-root v2 cgroup of a kernel that has
    // them; guard's parent cgroup is one, so test there, each for itself.
    let has = |f: &str| facts.parent_cgroup.join(f).exists();
    layers.push(if has("cgroup.kill") {
        layer(
            "cgroup kill",
            Status::Enforced,
            "cgroup.kill ends every process of a scope at once",
        )
    } else {
        layer(
            "cgroup kill",
            Status::Degraded,
            "no cgroup.kill (kernel before 5.14): the scope is frozen and its processes killed one by one",
        )
    });
    layers.push(if has("cgroup.freeze") {
        layer("cgroup freezer", Status::Enforced, "cgroup.freeze (v2)")
    } else {
        layer(
            "cgroup freezer",
            Status::Unavailable,
            "no cgroup.freeze: `guardctl freeze` cannot work",
        )
    });
    layers
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status_of<'a>(layers: &'a [Layer], name: &str) -> &'a Layer {
        layers
            .iter()
            .find(|l| l.layer == name)
            .unwrap_or_else(|| panic!("no layer {name}: {layers:?}"))
    }

    #[test]
    fn daemon_layers_follow_the_facts() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("cgroup.kill"), "").unwrap();
        let facts = DaemonFacts {
            instance: "guard-x".into(),
            parent_cgroup: dir.path().to_owned(),
            unix_hooks: false,
            unix_error: Some("no hooks here".into()),
            placements: vec![
                ("pids".into(), Placement::V2),
                ("cpu".into(), Placement::V1("/sys/fs/cgroup/cpu".into())),
                ("memory".into(), Placement::Unavailable),
            ],
        };
        let layers = daemon_layers(&facts);
        let net = status_of(&layers, "cgroup-bpf network");
        assert!(net.detail.contains(&dir.path().display().to_string()));
        let unix = status_of(&layers, "cgroup-bpf unix");
        assert_eq!(unix.status, Status::Unavailable);
        assert!(unix.detail.starts_with("no hooks here;"), "{unix:?}");
        assert_eq!(status_of(&layers, "cgroup pids").status, Status::Enforced);
        assert!(
            status_of(&layers, "cgroup cpu")
                .detail
                .contains("/sys/fs/cgroup/cpu")
        );
        assert_eq!(
            status_of(&layers, "cgroup memory").status,
            Status::Unavailable
        );
        // Each cgroup file is tested for itself.
        assert_eq!(status_of(&layers, "cgroup kill").status, Status::Enforced);
        assert_eq!(
            status_of(&layers, "cgroup freezer").status,
            Status::Unavailable
        );
        let hooked = DaemonFacts {
            unix_hooks: true,
            ..facts
        };
        assert_eq!(
            status_of(&daemon_layers(&hooked), "cgroup-bpf unix").status,
            Status::Enforced
        );
    }
}
