//! `guardctl policy check FILE`: validate a policy and show, rule by rule,
//! how this host will enforce it.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use guard_daemon::{
    doctor::{self, Status},
    policy::{Policy, Vars},
};

use crate::{Cli, EXIT_USAGE};

#[derive(Args, Debug)]
pub struct PolicyArgs {
    #[command(subcommand)]
    cmd: PolicyCmd,
}

#[derive(Subcommand, Debug)]
enum PolicyCmd {
    /// Validate a policy and print how each rule is enforced here.
    Check { file: PathBuf },
}

pub fn run(_cli: &Cli, args: &PolicyArgs) -> i32 {
    let PolicyCmd::Check { file } = &args.cmd;
    let policy = match Policy::load(file) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{e}");
            return EXIT_USAGE;
        }
    };
    let vars = Vars {
        workdir: std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/")),
        home: std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/")),
        tmp: PathBuf::from("/tmp/guard-<agent>"),
    };
    let plan = match policy.compile(&vars) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{e}");
            return EXIT_USAGE;
        }
    };
    let landlock = doctor::landlock_layer();
    let seccomp = doctor::seccomp_layer();
    println!(
        "{}: ok — policy {:?}, mode {}",
        file.display(),
        plan.name,
        plan.mode.as_str()
    );
    println!();
    println!(
        "network (default deny; enforced by cgroup BPF connect/sendmsg hooks, TCP ports also by Landlock when ABI >= 4):"
    );
    let (listen, allow): (Vec<_>, Vec<_>) = plan
        .rules
        .iter()
        .partition(|r| r.id.contains("network.listen["));
    if allow.is_empty() {
        println!("  (no rules: every connection and datagram is refused, loopback included)");
    }
    for r in &allow {
        println!("  {:<22} {}", r.id, r.text);
    }
    println!(
        "  raw, packet and ICMP sockets: refused (cgroup sock_create + seccomp socket families + no CAP_NET_RAW)"
    );
    println!();
    println!(
        "inbound (default deny; enforced by cgroup BPF bind hooks, and by dropping packets for listening sockets on unlisted ports):"
    );
    if listen.is_empty() {
        println!(
            "  (no listen rules: bind and listen are refused on every address and port, loopback included; listen() by seccomp)"
        );
    }
    for r in &listen {
        println!("  {:<22} {}", r.id, r.text);
    }
    println!();
    if plan.filesystem.restricted {
        println!(
            "files and programs (default deny; {}: {}):",
            landlock.layer,
            status(landlock.status)
        );
        for r in &plan.filesystem.rules {
            let mut a = Vec::new();
            if r.access.read {
                a.push("read");
            }
            if r.access.write {
                a.push("write");
            }
            if r.access.exec {
                a.push("exec");
            }
            let missing = if r.path.exists() {
                ""
            } else {
                "  (missing on this host)"
            };
            println!(
                "  {:<40} {:<16} {}{missing}",
                r.path.display(),
                a.join("+"),
                r.rule
            );
        }
    } else {
        println!("files and programs: NOT restricted (no [filesystem] table)");
    }
    println!("  {}", landlock.detail);
    println!();
    println!("processes:");
    let p = &plan.process;
    println!(
        "  max_processes {}, memory {}, cpu {}",
        p.max_processes
            .map(|n| n.to_string())
            .unwrap_or_else(|| "unlimited".into()),
        p.memory_bytes
            .map(|n| format!("{n} bytes"))
            .unwrap_or_else(|| "unlimited".into()),
        p.cpu_millicores
            .map(|n| format!("{:.3} cores", f64::from(n) / 1000.0))
            .unwrap_or_else(|| "unlimited".into()),
    );
    println!(
        "  capabilities kept: {}",
        if p.capabilities.is_empty() {
            "none".to_owned()
        } else {
            p.capabilities.join(", ")
        }
    );
    println!(
        "  system calls: default-deny allowlist ({}: {})",
        seccomp.layer,
        status(seccomp.status)
    );
    0
}

fn status(s: Status) -> &'static str {
    match s {
        Status::Enforced => "enforced",
        Status::Degraded => "degraded",
        Status::Unavailable => "UNAVAILABLE",
    }
}
