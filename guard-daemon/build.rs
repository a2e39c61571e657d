//! Builds the kernel programs (guard-ebpf) for the BPF target with the nightly
//! toolchain and bpf-linker, so that a plain `cargo build` of the daemon
//! embeds up-to-date objects. `cargo xtask setup` installs what this needs.

use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let metadata = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let ebpf = metadata
        .packages
        .into_iter()
        .find(|p| p.name.as_str() == "guard-ebpf")
        .ok_or_else(|| anyhow!("guard-ebpf package not found"))?;
    let root = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("guard-ebpf manifest has no parent"))?;
    if which_bpf_linker().is_none() {
        return Err(anyhow!(
            "bpf-linker is not installed: run `cargo xtask setup` (it installs rust-src and bpf-linker)"
        ));
    }
    aya_build::build_ebpf(
        [Package {
            name: "guard-ebpf",
            root_dir: root.as_str(),
            ..Default::default()
        }],
        Toolchain::Custom("nightly"),
    )
}

fn which_bpf_linker() -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    let home_bin = std::env::var_os("CARGO_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".cargo")))
        .map(|p| p.join("bin"));
    std::env::split_paths(&path)
        .chain(home_bin)
        .map(|d| d.join("bpf-linker"))
        .find(|p| p.is_file())
}
