//! Builds the kernel programs (guard-ebpf) for the BPF target with the nightly
//! toolchain and bpf-linker, so that a plain `cargo build` of the daemon
//! embeds up-to-date objects. `cargo xtask setup` installs what this needs.
//!
//! The nested cargo runs quietly: a build script can only show output as
//! `cargo:warning=` lines, so forwarding its progress ("Compiling core", ...)
//! made every fresh build print dozens of warnings that were nothing of the
//! kind. Only real compiler warnings and errors are forwarded; the full
//! output is kept in `$OUT_DIR/guard-ebpf-build.log`, and a failed build
//! reports all of it.

use std::{
    env, fs,
    io::{BufReader, Read as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, anyhow, bail};
use cargo_metadata::{Message, diagnostic::DiagnosticLevel};

const PACKAGE: &str = "guard-ebpf";
const TOOLCHAIN: &str = "nightly";

fn main() -> anyhow::Result<()> {
    let metadata = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let ebpf = metadata
        .packages
        .into_iter()
        .find(|p| p.name.as_str() == PACKAGE)
        .ok_or_else(|| anyhow!("{PACKAGE} package not found"))?;
    let root = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("{PACKAGE} manifest has no parent"))?;
    // The build dependency on guard-ebpf covers its library; its binaries
    // (the programs) need this to rebuild when they change.
    println!("cargo:rerun-if-changed={root}");
    if which_bpf_linker().is_none() {
        bail!(
            "bpf-linker is not installed: run `cargo xtask setup` (it installs rust-src and bpf-linker)"
        );
    }
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").ok_or_else(|| anyhow!("OUT_DIR not set"))?);
    build_programs(&out_dir)
}

fn build_programs(out_dir: &Path) -> anyhow::Result<()> {
    let target = match env::var("CARGO_CFG_TARGET_ENDIAN").as_deref() {
        Ok("little") => "bpfel-unknown-none",
        Ok("big") => "bpfeb-unknown-none",
        other => bail!("unsupported target endianness {other:?}"),
    };
    let arch = env::var("CARGO_CFG_TARGET_ARCH").context("CARGO_CFG_TARGET_ARCH not set")?;
    let arch = if arch.starts_with("riscv64") {
        "riscv64".to_owned()
    } else {
        arch
    };
    // CARGO_ENCODED_RUSTFLAGS separates flags with 0x1f.
    let rustflags = [
        format!("--cfg=bpf_target_arch=\"{arch}\""),
        "-Cdebuginfo=2".to_owned(),
        "-Clink-arg=--btf".to_owned(),
    ]
    .join("\x1f");
    // A separate target directory: cargo would otherwise wait on the lock
    // the outer build holds.
    let target_dir = out_dir.join("ebpf-target");
    let mut cmd = Command::new("rustup");
    cmd.args([
        "run",
        TOOLCHAIN,
        "cargo",
        "build",
        "--quiet",
        "--package",
        PACKAGE,
    ])
    .args([
        "--bins",
        "--release",
        "--message-format=json",
        "--target",
        target,
    ])
    .args(["-Z", "build-std=core", "--target-dir"])
    .arg(&target_dir)
    .env("CARGO_ENCODED_RUSTFLAGS", rustflags)
    // The outer build's compiler is the stable one; the programs need
    // the nightly that rustup selects.
    .env_remove("RUSTC")
    .env_remove("RUSTC_WORKSPACE_WRAPPER")
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().with_context(|| {
        format!("spawning {cmd:?} (is rustup installed? run `cargo xtask setup`)")
    })?;
    let mut stderr = child
        .stderr
        .take()
        .ok_or_else(|| anyhow!("no stderr pipe"))?;
    let stderr = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow!("no stdout pipe"))?;
    let mut log = String::new();
    let mut executables = Vec::new();
    for message in Message::parse_stream(BufReader::new(stdout)) {
        match message.context("reading the nested cargo's messages")? {
            Message::CompilerArtifact(artifact) => {
                if let Some(exe) = artifact.executable {
                    executables.push((artifact.target.name, exe.into_std_path_buf()));
                }
            }
            Message::CompilerMessage(msg) => {
                let rendered = msg.message.rendered.unwrap_or_default();
                log.push_str(&rendered);
                if matches!(
                    msg.message.level,
                    DiagnosticLevel::Warning | DiagnosticLevel::Error | DiagnosticLevel::Ice
                ) {
                    for line in rendered.lines() {
                        println!("cargo:warning={line}");
                    }
                }
            }
            Message::TextLine(line) => {
                log.push_str(&line);
                log.push('\n');
            }
            _ => {}
        }
    }
    let status = child.wait().context("waiting for the nested cargo")?;
    let stderr = stderr.join().unwrap_or_default();
    log.push_str(&stderr);
    let _ = fs::write(out_dir.join("guard-ebpf-build.log"), &log);
    if !status.success() {
        bail!("building the kernel programs ({PACKAGE}) failed ({status}):\n{stderr}");
    }
    // Cargo's own warnings (not the compiler's) arrive on stderr.
    for line in stderr.lines() {
        if line.starts_with("warning:") {
            println!("cargo:warning={line}");
        }
    }
    if executables.is_empty() {
        bail!("building {PACKAGE} produced no programs");
    }
    for (name, exe) in executables {
        let dst = out_dir.join(&name);
        fs::copy(&exe, &dst)
            .with_context(|| format!("copying {} to {}", exe.display(), dst.display()))?;
    }
    Ok(())
}

fn which_bpf_linker() -> Option<PathBuf> {
    let path = env::var_os("PATH")?;
    let home_bin = env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .map(|p| p.join("bin"));
    env::split_paths(&path)
        .chain(home_bin)
        .map(|d| d.join("bpf-linker"))
        .find(|p| p.is_file())
}
