//! `cargo xtask setup`: idempotent installation of what a fresh machine of
//! the project's kind lacks.
//!
//! - Debian packages the tests, demo and bench run (curl, bubblewrap, ...),
//!   and podman, runc and python3-venv for the image and manifest tasks;
//! - `kubernetes-validate` (PyPI, pinned) in a virtual environment in
//!   ~/.local/share/guard, which `cargo xtask manifests` validates with;
//!   `kubectl` (its built-in kustomize) must be on the machine already;
//! - the nightly toolchain's `rust-src` (for `-Z build-std=core`);
//! - `bpf-linker` built against the LLVM shared library that the nightly
//!   toolchain itself ships, so that the linker and rustc agree on LLVM. A
//!   stamp records which nightly it was built for; a different nightly
//!   triggers a rebuild. It lives in ~/.cargo/bin, its LLVM link directory in
//!   ~/.local/share/guard (both lasting locations, not temp directories).

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

const BPF_LINKER_VERSION: &str = "0.13.0";
const NIGHTLY: &str = "nightly";
/// Packages: (name, needed for). Missing ones are installed with apt-get.
const PACKAGES: &[(&str, &str)] = &[
    ("curl", "tests and demo (a real HTTP client)"),
    ("python3", "tests and demo agents"),
    ("util-linux", "tests (setpriv)"),
    ("git", "tests (git under a policy)"),
    ("bubblewrap", "the launch benchmark's comparison"),
    ("ca-certificates", "TLS trust store used by the base policy"),
    (
        "python3-prometheus-client",
        "tests (the reference parser for the metrics page)",
    ),
    (
        "unbound",
        "tests, demo and bench (a real DNS server on loopback)",
    ),
    ("dnsutils", "tests (dig, over UDP and TCP)"),
    (
        "podman",
        "cargo xtask image (builds and runs the runtime image)",
    ),
    (
        "runc",
        "cargo xtask image (runs containers: crun refuses hybrid cgroup hosts)",
    ),
    (
        "python3-venv",
        "cargo xtask manifests (kubernetes-validate's environment)",
    ),
];

/// Validates the rendered manifests offline (it bundles the Kubernetes
/// JSON schemas); pinned so that a new release cannot change a verdict.
const KUBERNETES_VALIDATE: &str = "1.37.0";

fn say(verbose: bool, msg: &str) {
    if verbose {
        eprintln!("setup: {msg}");
    }
}

pub fn run(verbose: bool) -> anyhow::Result<()> {
    packages(verbose)?;
    toolchain(verbose)?;
    // Only the manifest check needs kubectl, and it cannot be installed
    // from here: its absence is said now and fails `cargo xtask
    // manifests` (and so `test`), not the other tasks.
    if let Err(e) = kubectl(verbose) {
        eprintln!("setup: warning: {e:#}");
    }
    kubernetes_validate(verbose)?;
    say(verbose, "everything is in place");
    Ok(())
}

/// Only what building the binaries needs (the Containerfile's build stage
/// runs this, through `cargo xtask rootfs`, without the test packages).
pub fn toolchain(verbose: bool) -> anyhow::Result<()> {
    nightly(verbose)?;
    rust_src(verbose)?;
    bpf_linker(verbose)
}

/// kustomize comes with kubectl. Debian's own kubectl (kubernetes-client,
/// 1.20) bundles a kustomize too old for the manifests, so it is not
/// installed in its place: the machine image provides a current kubectl.
pub fn kubectl(verbose: bool) -> anyhow::Result<()> {
    let version = Command::new("kubectl")
        .args(["version", "--client"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
    let Some(version) = version else {
        bail!(
            "kubectl is not installed: cargo xtask manifests needs kubectl 1.27 or later \
             (kustomize v5 built in); install it from the Kubernetes project's packages"
        );
    };
    let kustomize = version
        .lines()
        .find_map(|l| l.strip_prefix("Kustomize Version: v"))
        .and_then(|v| v.split('.').next())
        .and_then(|m| m.parse::<u32>().ok());
    match kustomize {
        Some(major) if major >= 5 => {
            say(verbose, &format!("kubectl: present (kustomize v{major})"));
            Ok(())
        }
        _ => bail!(
            "kubectl's kustomize is older than v5 ({}): the manifests need kustomize v5",
            version.trim().replace('\n', ", ")
        ),
    }
}

/// The virtual environment `kubernetes-validate` lives in.
pub fn kubernetes_validate_bin() -> PathBuf {
    home()
        .join(".local/share/guard/kubernetes-validate")
        .join("bin/kubernetes-validate")
}

fn kubernetes_validate(verbose: bool) -> anyhow::Result<()> {
    let bin = kubernetes_validate_bin();
    let current = Command::new(&bin)
        .arg("--version")
        .output()
        .map(|o| {
            o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == KUBERNETES_VALIDATE
        })
        .unwrap_or(false);
    if current {
        say(
            verbose,
            &format!("kubernetes-validate: present ({KUBERNETES_VALIDATE})"),
        );
        return Ok(());
    }
    let venv = bin
        .parent()
        .and_then(Path::parent)
        .context("kubernetes-validate's directory")?;
    eprintln!(
        "setup: installing kubernetes-validate {KUBERNETES_VALIDATE} into {}",
        venv.display()
    );
    // Debian's python3 (python3-venv is Debian's), whatever else PATH holds.
    let status = Command::new("/usr/bin/python3")
        .args(["-m", "venv", "--clear"])
        .arg(venv)
        .status()
        .context("running /usr/bin/python3 -m venv")?;
    if !status.success() {
        bail!("creating the virtual environment {} failed", venv.display());
    }
    let status = Command::new(venv.join("bin/pip"))
        .args(["install", "--quiet", "--disable-pip-version-check"])
        .arg(format!("kubernetes-validate=={KUBERNETES_VALIDATE}"))
        .status()
        .context("running pip install kubernetes-validate")?;
    if !status.success() {
        bail!("pip install kubernetes-validate=={KUBERNETES_VALIDATE} failed");
    }
    Ok(())
}

fn installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

fn packages(verbose: bool) -> anyhow::Result<()> {
    if Command::new("dpkg-query")
        .arg("--version")
        .output()
        .is_err()
    {
        say(verbose, "not a Debian system: skipping packages");
        return Ok(());
    }
    let missing: Vec<&str> = PACKAGES
        .iter()
        .map(|(p, _)| *p)
        .filter(|p| !installed(p))
        .collect();
    if missing.is_empty() {
        say(verbose, "Debian packages: present");
        return Ok(());
    }
    eprintln!("setup: installing Debian packages: {}", missing.join(" "));
    let update = Command::new("apt-get")
        .args(["update", "-q"])
        .status()
        .context("running apt-get update")?;
    if !update.success() {
        bail!("apt-get update failed");
    }
    let status = Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .context("running apt-get install")?;
    if !status.success() {
        bail!("apt-get install {} failed", missing.join(" "));
    }
    Ok(())
}

fn rustup(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("rustup")
        .args(args)
        .output()
        .with_context(|| format!("running rustup {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "rustup {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn nightly(verbose: bool) -> anyhow::Result<()> {
    let list = rustup(&["toolchain", "list"])?;
    if list.lines().any(|l| l.starts_with("nightly")) {
        say(verbose, "nightly toolchain: present");
        return Ok(());
    }
    eprintln!("setup: installing the nightly toolchain");
    rustup(&["toolchain", "install", NIGHTLY, "--profile", "minimal"])?;
    Ok(())
}

fn nightly_rustc(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("rustc")
        .arg(format!("+{NIGHTLY}"))
        .args(args)
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("RUSTC")
        .output()
        .context("running rustc +nightly")?;
    if !out.status.success() {
        bail!(
            "rustc +nightly {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn rust_src(verbose: bool) -> anyhow::Result<()> {
    let sysroot = PathBuf::from(nightly_rustc(&["--print", "sysroot"])?);
    if sysroot
        .join("lib/rustlib/src/rust/library/core/Cargo.toml")
        .exists()
    {
        say(verbose, "rust-src (nightly): present");
        return Ok(());
    }
    eprintln!("setup: adding rust-src to the nightly toolchain");
    rustup(&["component", "add", "rust-src", "--toolchain", NIGHTLY])?;
    Ok(())
}

fn home() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"))
}

fn cargo_bin() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| home().join(".cargo"))
        .join("bin")
}

/// The LLVM shared library inside the nightly sysroot.
fn nightly_llvm(sysroot: &Path) -> anyhow::Result<PathBuf> {
    let lib = sysroot.join("lib");
    let mut candidates: Vec<PathBuf> = std::fs::read_dir(&lib)
        .with_context(|| format!("reading {}", lib.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let n = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            n.starts_with("libLLVM")
                && n.contains(".so")
                && std::fs::symlink_metadata(p)
                    .map(|m| m.len() > 1 << 20)
                    .unwrap_or(false)
        })
        .collect();
    candidates.sort();
    candidates
        .pop()
        .with_context(|| format!("no LLVM shared library in {}", lib.display()))
}

fn bpf_linker(verbose: bool) -> anyhow::Result<()> {
    let vv = nightly_rustc(&["-vV"])?;
    let commit = vv
        .lines()
        .find_map(|l| l.strip_prefix("commit-hash: "))
        .unwrap_or("unknown")
        .to_owned();
    let llvm_major = vv
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .context("rustc +nightly -vV shows no LLVM version")?
        .to_owned();
    let stamp_dir = home().join(".local/share/guard");
    let stamp = stamp_dir.join("bpf-linker.stamp");
    let want =
        format!("bpf-linker {BPF_LINKER_VERSION} for nightly {commit} (LLVM {llvm_major})\n");
    let linker = cargo_bin().join("bpf-linker");
    let works = Command::new(&linker)
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if works && std::fs::read_to_string(&stamp).ok().as_deref() == Some(want.as_str()) {
        say(verbose, &format!("bpf-linker: present ({})", want.trim()));
        return Ok(());
    }
    eprintln!(
        "setup: building bpf-linker {BPF_LINKER_VERSION} against the nightly's LLVM {llvm_major} (about a minute)"
    );
    let sysroot = PathBuf::from(nightly_rustc(&["--print", "sysroot"])?);
    let llvm = nightly_llvm(&sysroot)?;
    // bpf-linker's build looks for <prefix>/lib/libLLVM.so; its binary then
    // loads the library by its own file name through the RUNPATH.
    let prefix = stamp_dir.join(format!(
        "llvm-{llvm_major}-{}",
        &commit[..commit.len().min(12)]
    ));
    let libdir = prefix.join("lib");
    std::fs::create_dir_all(&libdir).with_context(|| format!("creating {}", libdir.display()))?;
    let file_name = llvm.file_name().context("LLVM library has no file name")?;
    for name in [std::ffi::OsStr::new("libLLVM.so"), file_name] {
        let link = libdir.join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&llvm, &link)
            .with_context(|| format!("linking {}", link.display()))?;
    }
    let status = Command::new("cargo")
        .args([
            "install",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
            "--force",
            "--no-default-features",
            "--features",
            &format!("llvm-{llvm_major}"),
        ])
        .env("LLVM_PREFIX", &prefix)
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .status()
        .context("running cargo install bpf-linker")?;
    if !status.success() {
        bail!("building bpf-linker failed");
    }
    std::fs::write(&stamp, want).with_context(|| format!("writing {}", stamp.display()))?;
    Ok(())
}
