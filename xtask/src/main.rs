//! Project tasks: `cargo xtask setup|build|test|demo|bench|check|image|manifests|pods`.
//!
//! `setup` installs, idempotently, what a fresh machine lacks to build the
//! kernel programs (rust-src for the nightly toolchain, bpf-linker built
//! against that nightly's own LLVM) and the Debian packages the tests and the
//! benchmark use. Every other task runs it first, so the README's two
//! commands work on a fresh machine with nothing done by hand.

mod bench;
mod child;
mod demo;
mod dnsbench;
mod dnsserver;
mod image;
mod manifests;
mod setup;

use std::process::Command;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install the toolchain pieces and packages this project needs.
    Setup,
    /// Build guardd and guardctl (release).
    Build,
    /// Run every test: unit tests, then the privileged integration suite
    /// (root, real kernel).
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run the demo: an agent confined by policies/demo.toml, then its
    /// violations from the journal.
    Demo,
    /// Run the benchmarks and print ratios against baselines measured in the
    /// same run.
    Bench {
        /// Fewer repetitions (quick look, noisier figures).
        #[arg(long)]
        quick: bool,
    },
    /// cargo fmt --check and clippy -D warnings on the host crates.
    Check,
    /// Build the runtime image localhost/guard:dev (podman) from the
    /// release binaries; reused when its files have not changed.
    Image,
    /// Render deploy/kubernetes (base and every overlay) with kustomize
    /// and validate each document against the Kubernetes schemas; check
    /// the policies they ship with guardctl.
    Manifests,
    /// The pod-equivalent test: build the runtime image (and the test's
    /// workload image), then run guardd from it in a container with the
    /// DaemonSet's privileges and mounts, and agents from another
    /// container through `guardctl run --policy-name` (tests/pods.rs).
    Pods {
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Lay out the runtime image's root filesystem in DIR from the release
    /// binaries (deploy/Containerfile's build stage runs this).
    Rootfs { dir: std::path::PathBuf },
    /// (used by `bench`) N TCP connects to 127.0.0.1:PORT; prints ns each.
    #[command(hide = true)]
    ConnectLoop { port: u16, n: usize },
    /// (used by `bench`) N sequential A lookups of NAME at SERVER; prints
    /// the median and p99 in ns.
    #[command(hide = true)]
    DnsLatency {
        server: String,
        name: String,
        n: usize,
    },
    /// (used by `bench`) THREADS clients looking NAME up at SERVER for SECS
    /// seconds; prints the lookups answered.
    #[command(hide = true)]
    DnsRate {
        server: String,
        name: String,
        secs: f64,
        threads: usize,
    },
    /// (used by `bench`) N open()+close() of PATH; prints ns each.
    #[command(hide = true)]
    OpenLoop { path: String, n: usize },
    /// (used by `bench`) N getppid() system calls; prints ns each.
    #[command(hide = true)]
    SyscallLoop { n: usize },
    /// (used by `bench`) N fork+exec of PATH; prints ns each.
    #[command(hide = true)]
    ExecLoop { path: String, n: usize },
    /// (used by `bench`) N refused connects to 127.0.0.1:PORT as fast as
    /// possible; prints how many were refused.
    #[command(hide = true)]
    DenyLoop { port: u16, n: usize },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Setup => setup::run(true),
        Cmd::Build => {
            setup::run(false)?;
            build_release()
        }
        Cmd::Test { args } => {
            require_root("the tests load BPF programs and create cgroups")?;
            setup::run(false)?;
            test(&args)
        }
        Cmd::Demo => {
            require_root("the demo starts guardd, which loads BPF programs")?;
            setup::run(false)?;
            build_release()?;
            demo::run()
        }
        Cmd::Bench { quick } => {
            require_root("the benchmark starts guardd")?;
            setup::run(false)?;
            build_release()?;
            bench::run(quick)
        }
        Cmd::ConnectLoop { port, n } => bench::connect_loop_main(port, n),
        Cmd::DnsLatency { server, name, n } => dnsbench::latency_main(&server, &name, n),
        Cmd::DnsRate {
            server,
            name,
            secs,
            threads,
        } => dnsbench::rate_main(&server, &name, secs, threads),
        Cmd::OpenLoop { path, n } => bench::open_loop_main(&path, n),
        Cmd::SyscallLoop { n } => bench::syscall_loop_main(n),
        Cmd::ExecLoop { path, n } => bench::exec_loop_main(&path, n),
        Cmd::DenyLoop { port, n } => bench::deny_loop_main(port, n),
        Cmd::Image => {
            require_root("podman stores images as root here")?;
            setup::run(false)?;
            let image = image::build_image()?;
            println!("{image}");
            Ok(())
        }
        Cmd::Manifests => {
            setup::run(false)?;
            manifests::run()
        }
        Cmd::Pods { args } => {
            require_root("the test starts guardd and containers")?;
            setup::run(false)?;
            pod_images()?;
            let mut a = vec!["test", "--release", "-p", "guard-daemon", "--test", "pods"];
            if !args.is_empty() {
                a.push("--");
                a.extend(args.iter().map(String::as_str));
            }
            cargo(&a)?;
            leftovers()
        }
        Cmd::Rootfs { dir } => {
            // Building needs only the toolchain pieces, not the packages the
            // tests use (the Containerfile's build stage runs this).
            setup::toolchain(false)?;
            build_release()?;
            image::assemble_rootfs(&image::release_dir()?, &dir)
        }
        Cmd::Check => {
            setup::run(false)?;
            cargo(&["fmt", "--all", "--", "--check"])?;
            cargo(&["clippy", "--all-targets", "--", "-D", "warnings"])
        }
    }
}

pub fn require_root(why: &str) -> anyhow::Result<()> {
    let uid = Command::new("id")
        .arg("-u")
        .output()
        .context("running id -u")?;
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        bail!("run this as root: {why}");
    }
    Ok(())
}

pub fn workspace_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(|p| p.to_owned())
        .unwrap_or_else(|| ".".into())
}

pub fn cargo(args: &[&str]) -> anyhow::Result<()> {
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(args)
        .current_dir(workspace_root())
        .status()
        .with_context(|| format!("running cargo {}", args.join(" ")))?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(())
}

pub(crate) fn build_release() -> anyhow::Result<()> {
    cargo(&["build", "--release", "-p", "guard-daemon", "--bins"])
}

/// Builds (or reuses) the images tests/pods.rs runs, and names them to it
/// through the environment of the test processes this task starts.
fn pod_images() -> anyhow::Result<()> {
    let guard = image::build_image()?;
    let agent = image::build_agent_test_image()?;
    // SAFETY: set before any thread of this process starts a child; xtask
    // is single-threaded here.
    unsafe {
        std::env::set_var("GUARD_TEST_IMAGE", guard);
        std::env::set_var("GUARD_TEST_AGENT_IMAGE", agent);
    }
    Ok(())
}

fn test(extra: &[String]) -> anyhow::Result<()> {
    // Release: the same build serves both runs, and the privileged tests
    // exercise the daemon as it ships (floods, follow latency).
    let mut unit = vec!["test", "--release", "--lib", "--bins"];
    let mut all = vec![
        "test",
        "--release",
        "--no-fail-fast",
        "-p",
        "guard-daemon",
        "--test",
        "*",
    ];
    if !extra.is_empty() {
        unit.push("--");
        all.push("--");
        for a in extra {
            unit.push(a);
            all.push(a);
        }
    }
    eprintln!("== unit tests (no privileges needed)");
    cargo(&unit)?;
    eprintln!("== deployment manifests (kustomize, Kubernetes schemas, policies)");
    manifests::run()?;
    eprintln!("== images for the pod-equivalent test (podman)");
    pod_images()?;
    eprintln!("== integration tests (root, real kernel)");
    cargo(&all)?;
    eprintln!("== leftovers check");
    leftovers()
}

/// Fails when a test run left cgroups or pins behind.
fn leftovers() -> anyhow::Result<()> {
    let mut left = Vec::new();
    for dir in ["/sys/fs/bpf"] {
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with("guard-test") {
                    left.push(e.path().display().to_string());
                }
            }
        }
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for line in mounts.lines() {
        let Some((pre, post)) = line.split_once(" - ") else {
            continue;
        };
        if !post.starts_with("cgroup") {
            continue;
        }
        let Some(mp) = pre.split(' ').nth(4) else {
            continue;
        };
        if let Ok(entries) = std::fs::read_dir(mp) {
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().starts_with("guard-test") {
                    left.push(e.path().display().to_string());
                }
            }
        }
    }
    // Containers of the pod-equivalent test (tests/pods.rs).
    if let Ok(out) = Command::new("podman")
        .args([
            "ps",
            "-a",
            "--filter",
            "name=guard-test",
            "--format",
            "{{.Names}}",
        ])
        .output()
    {
        left.extend(
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(|l| format!("container {l}")),
        );
    }
    if !left.is_empty() {
        bail!("the tests left these behind: {}", left.join(", "));
    }
    eprintln!("none");
    Ok(())
}
