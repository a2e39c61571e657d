//! guardd: the privileged per-host daemon. Loads the kernel programs, manages
//! agent scopes, writes the journal and serves guardctl on a Unix socket.

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};
use clap::Parser;
use guard_daemon::{
    daemon::{Daemon, DaemonConfig, server},
    journal::MirrorSink,
};

#[derive(Parser, Debug)]
#[command(name = "guardd", version, about = "guard's per-host daemon")]
struct Args {
    /// Socket guardctl connects to.
    #[arg(long, default_value = guard_daemon::api::DEFAULT_SOCKET, env = "GUARD_SOCKET")]
    socket: PathBuf,
    /// Live state (agent scopes to re-adopt after a restart).
    #[arg(long, default_value = "/run/guard")]
    state_dir: PathBuf,
    /// The journal (SQLite). A JSON-lines copy can be added with --mirror.
    #[arg(long, default_value = guard_daemon::journal::DEFAULT_PATH)]
    journal: PathBuf,
    /// Instance name: the parent cgroup and bpffs directory are named after
    /// it, so several guardd (e.g. test runs) can coexist.
    #[arg(long, default_value = "guard")]
    instance: String,
    /// bpffs mount point (mounted if needed).
    #[arg(long, default_value = "/sys/fs/bpf")]
    bpffs: PathBuf,
    /// Group whose members may use the socket besides root. They see and
    /// control only agents they own (and only root starts agents), unless
    /// `--group-reads-all`.
    #[arg(long)]
    group: Option<String>,
    /// Let members of `--group` list every agent and read every record (a
    /// reviewers' group); control stays with each agent's owner and root.
    #[arg(long, requires = "group")]
    group_reads_all: bool,
    /// Also write every record as a JSON line to `stdout` or to FILE
    /// (rotated at 64 MiB, 5 kept). May be repeated.
    #[arg(long)]
    mirror: Vec<String>,
    /// Keep pins and the parent cgroup when stopping with no live agent.
    #[arg(long)]
    keep_pins: bool,
    /// Keep at most this many records; older ones are removed and the
    /// removal is summarised in a record of its own.
    #[arg(long)]
    retain_records: Option<u64>,
    /// Remove records older than this (e.g. 30d, 12h), summarised likewise.
    #[arg(long, value_parser = humantime::parse_duration)]
    retain_age: Option<std::time::Duration>,
    /// Disk budget of the journal (main file and WAL), e.g. 500M or 2G;
    /// `off` for none. When reached, the oldest records are removed and the
    /// removal is summarised in a record. Default: 1G, or a tenth of the
    /// journal's filesystem when that is smaller (at least 64M).
    #[arg(long, value_name = "SIZE")]
    journal_max_bytes: Option<String>,
    /// Repeated identical refusals (same agent, kind, action, target,
    /// verdict, rule, layer) within this interval are journaled as one
    /// record carrying their count (`detail.repeated`); the first is always
    /// journaled at once. `0` journals every refusal in full.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "1s")]
    coalesce_interval: std::time::Duration,
    /// Prometheus metrics address (`off` to disable). With port 0 the
    /// chosen address is written to STATE_DIR/metrics.addr.
    #[arg(long, default_value = "127.0.0.1:9464")]
    metrics: String,
    /// Upstream DNS server the agents' resolvers forward allowed names to,
    /// ADDR or ADDR:PORT ([V6]:PORT); repeatable, tried in order. Default:
    /// the nameservers of /etc/resolv.conf as guardd sees it. A policy
    /// cannot name its own (it could make an allowed name resolve anywhere).
    #[arg(long, value_name = "ADDR[:PORT]")]
    dns_upstream: Vec<String>,
    /// Directory of named policies (NAME.toml; `_NAME.toml` are include
    /// files) that `guardctl run --policy-name NAME` runs agents under.
    /// Read as one set: a change applies only when every file in it is
    /// valid (otherwise the previous set stays); each reload is journaled.
    /// A Kubernetes ConfigMap mounted as a volume fits.
    #[arg(long, value_name = "DIR")]
    policy_dir: Option<PathBuf>,
    /// Refuse policies sent by clients (`guardctl run --policy FILE`):
    /// every agent runs under a named policy of --policy-dir (cluster mode).
    #[arg(long, requires = "policy_dir")]
    require_named_policy: bool,
    /// A named policy of --policy-dir that every client-sent policy must
    /// stay within: a policy granting anything the floor does not is
    /// refused, naming what is wider.
    #[arg(long, value_name = "NAME", requires = "policy_dir")]
    floor_policy: Option<String>,
    /// Where agents' scopes (cgroups) are made: `instance`, under guard's
    /// parent cgroup; or `caller`, under the cgroup of the process that
    /// launches the agent (a pod's container), so the container's
    /// accounting and limits hold for its agent and its runtime can remove
    /// it. With `caller` guardd joins the host's cgroup namespace (it needs
    /// the host's pid namespace for that) to see callers' cgroups whole.
    #[arg(long, value_enum, default_value = "instance")]
    scopes_under: ScopesUnder,
    /// Layers no agent may run without, whatever its launcher accepts
    /// with `guardctl run --allow-degraded` (comma list of `landlock`,
    /// `unix`, `limits`, `exec`, or `all`): on a fleet the node decides.
    /// Such a start is refused and journaled.
    #[arg(long, value_delimiter = ',', value_parser = ["landlock", "unix", "limits", "exec", "all"])]
    forbid_degraded: Vec<String>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum ScopesUnder {
    Instance,
    Caller,
}

/// Joins pid 1's cgroup namespace when guardd runs in another (a
/// container's): callers' cgroup paths are then read, and scopes made,
/// in the host's terms. Must run before any thread starts (namespaces are
/// per thread; threads started later inherit the one joined here).
fn join_host_cgroup_namespace() -> anyhow::Result<()> {
    // The kernel's initial cgroup namespace has a fixed inode
    // (PROC_CGROUP_INIT_INO); in it, there is nothing to join (and pid 1's
    // namespace links may not be readable: reading them needs every
    // capability pid 1 has).
    const INIT_CGROUP_NS: &str = "cgroup:[4026531835]";
    let own = std::fs::read_link("/proc/self/ns/cgroup").context("reading /proc/self/ns/cgroup")?;
    if own.as_os_str() == INIT_CGROUP_NS {
        return Ok(());
    }
    let f = std::fs::File::open("/proc/1/ns/cgroup")
        .context("opening /proc/1/ns/cgroup (guardd needs the host's pid namespace)")?;
    // SAFETY: setns with a descriptor we own and a namespace type that
    // matches it.
    let rc = unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&f), libc::CLONE_NEWCGROUP) };
    if rc != 0 {
        bail!(
            "joining the host's cgroup namespace (--scopes-under caller): {}",
            std::io::Error::last_os_error()
        );
    }
    tracing::info!("joined the host's cgroup namespace");
    Ok(())
}

/// Whether log lines may carry colour: only on a terminal, and not when
/// `NO_COLOR` is set to anything non-empty (<https://no-color.org>).
fn colour(stderr_is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    stderr_is_terminal && no_color.is_none_or(|v| v.is_empty())
}

/// The agents' upstream resolvers: `--dns-upstream` (a bad one is an
/// error), else resolv.conf (none there: agents with host rules are
/// refused, the others run as before).
fn dns_upstreams(
    given: &[String],
) -> anyhow::Result<(Result<Vec<std::net::SocketAddr>, String>, String)> {
    use guard_daemon::dns;
    if !given.is_empty() {
        let ups = given
            .iter()
            .map(|s| dns::parse_upstream(s))
            .collect::<Result<Vec<_>, _>>()
            .context("--dns-upstream")?;
        return Ok((Ok(ups), "--dns-upstream".to_owned()));
    }
    let path = Path::new("/etc/resolv.conf");
    let origin = path.display().to_string();
    Ok(match dns::upstreams_from_resolv_conf(path) {
        Ok(ups) => (Ok(ups), origin),
        Err(e) => (Err(e.to_string()), origin),
    })
}

/// Each agent with host rules holds its resolver's sockets in guardd (four
/// listeners, up to 32 TCP connections, upstream queries in flight): the
/// usual soft limit of 1024 descriptors would run out with a few dozen
/// agents. Agents are started by guardctl and do not inherit this.
fn raise_open_files() {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write the struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 && r.rlim_cur < r.rlim_max {
            r.rlim_cur = r.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &r) != 0 {
                tracing::warn!("could not raise the open-files limit to {}", r.rlim_max);
            }
        }
    }
}

fn main() -> anyhow::Result<()> {
    use std::io::IsTerminal as _;
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("GUARD_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_ansi(colour(
            std::io::stderr().is_terminal(),
            std::env::var_os("NO_COLOR").as_deref(),
        ))
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    if args.scopes_under == ScopesUnder::Caller {
        join_host_cgroup_namespace()?;
    }
    raise_open_files();
    // Two malloc arenas are plenty for guardd's few threads, and keep freed
    // memory from spreading over per-thread arenas (resident memory budget).
    // SAFETY: mallopt only adjusts allocator parameters, before any thread.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, 2) };
    let group = match &args.group {
        None => None,
        Some(g) => Some(
            nix::unistd::Group::from_name(g)
                .with_context(|| format!("looking up group {g}"))?
                .with_context(|| format!("no group named {g}"))?
                .gid
                .as_raw(),
        ),
    };
    let mirror = args
        .mirror
        .iter()
        .map(|m| {
            if m == "stdout" {
                MirrorSink::Stdout
            } else {
                MirrorSink::File {
                    path: PathBuf::from(m),
                    max_bytes: 64 << 20,
                    keep: 5,
                }
            }
        })
        .collect();
    let max_bytes = match args.journal_max_bytes.as_deref() {
        Some("off") => None,
        Some(s) => Some(
            guard_daemon::journal::parse_size(s)
                .map_err(anyhow::Error::from)
                .context("--journal-max-bytes")?,
        ),
        None => Some(guard_daemon::journal::default_budget(&args.journal)),
    };
    let (dns_upstreams, dns_origin) = dns_upstreams(&args.dns_upstream)?;
    let cfg = DaemonConfig {
        socket: args.socket.clone(),
        state_dir: args.state_dir.clone(),
        journal: args.journal.clone(),
        instance: args.instance.clone(),
        bpffs: args.bpffs.clone(),
        group,
        group_reads_all: args.group_reads_all,
        mirror,
        retention: guard_daemon::journal::Retention {
            max_records: args.retain_records,
            max_age: args.retain_age,
            max_bytes,
        },
        coalesce: guard_daemon::monitor::coalesce::CoalesceConfig {
            interval: args.coalesce_interval,
            ..Default::default()
        },
        cleanup_on_exit: !args.keep_pins,
        dns_upstreams,
        dns_origin,
        policy_dir: args.policy_dir.clone(),
        require_named_policy: args.require_named_policy,
        floor_policy: args.floor_policy.clone(),
        scopes_under_caller: args.scopes_under == ScopesUnder::Caller,
        forbid_degraded: args.forbid_degraded.clone(),
    };
    let metrics_addr: Option<std::net::SocketAddr> =
        match args.metrics.as_str() {
            "off" => None,
            a => Some(a.parse().with_context(|| {
                format!("--metrics: {a:?} is not an address like 127.0.0.1:9464")
            })?),
        };

    // Everything guardd writes (journal, WAL, checkpoints, mirrors, the
    // state directory with each agent's policy and arguments) is root's,
    // readable by the configured group at most, from the moment it exists.
    // SAFETY: umask has no preconditions.
    unsafe { libc::umask(if group.is_some() { 0o027 } else { 0o077 }) };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    // Signals are taken over before anything is created: SIGHUP's default
    // action (and SIGTERM's, during start-up) would end guardd without
    // removing its pins and cgroups. A SIGTERM received while starting
    // stops guardd cleanly once it has started.
    let signals = rt
        .block_on(async { Signals::new() })
        .context("installing signal handlers")?;
    // The metrics address is bound before the kernel programs are loaded: a
    // taken port must fail start-up before it creates anything.
    let metrics_listener = match metrics_addr {
        None => None,
        Some(addr) => {
            let listener = rt
                .block_on(tokio::net::TcpListener::bind(addr))
                .with_context(|| format!("binding the metrics address {addr}"))?;
            let bound = listener.local_addr()?;
            Some((listener, bound))
        }
    };
    let listener = rt.block_on(async { bind(&args.socket, group) })?;
    let daemon = match Daemon::start(cfg) {
        Ok(d) => d,
        Err(e) => {
            let _ = std::fs::remove_file(&args.socket);
            return Err(e).context("guardd cannot start");
        }
    };
    // Files left by an earlier guardd may have been made with looser modes.
    if let Err(e) = restrict_files(&args.journal, &args.state_dir, group) {
        let _ = std::fs::remove_file(&args.socket);
        daemon.stop();
        return Err(e).context("guardd cannot start");
    }
    let shared = daemon.shared.clone();
    let metrics_task = match metrics_listener {
        None => None,
        Some((listener, bound)) => {
            let _ = std::fs::write(args.state_dir.join("metrics.addr"), bound.to_string());
            tracing::info!(metrics = %bound, "serving metrics, /healthz and /readyz");
            let (m, r) = (shared.clone(), shared.clone());
            Some(rt.spawn(guard_daemon::metrics::serve(
                listener,
                std::sync::Arc::new(guard_daemon::metrics::Endpoints {
                    metrics: Box::new(move || m.render_metrics()),
                    ready: Box::new(move || r.readiness()),
                }),
            )))
        }
    };
    // Loading parsed the kernel's BTF and the BPF objects: give that memory
    // back rather than keep it resident for the daemon's lifetime.
    // SAFETY: malloc_trim has no preconditions.
    unsafe { libc::malloc_trim(0) };
    // Only now: programs attached, journal open, socket listening, metrics
    // bound.
    tracing::info!(
        socket = %args.socket.display(),
        journal = %args.journal.display(),
        cgroup = %daemon.shared.scopes.v2_parent.display(),
        "guardd ready"
    );
    notify("READY=1\nSTATUS=ready\n");
    // Returns once every connection has finished the request it was serving
    // (at most `server::DRAIN` after the signal).
    rt.block_on(server::serve(shared, listener, signals.shutdown()));
    notify("STOPPING=1\n");
    // Before waiting on anything that may be appending: a journal that
    // cannot be written must not keep guardd from stopping.
    daemon.shared.journal.begin_close();
    if let Some(t) = metrics_task {
        t.abort();
    }
    let _ = std::fs::remove_file(&args.socket);
    // Let scope removals that were still running finish before deciding
    // whether anything is left to keep pinned.
    rt.shutdown_timeout(std::time::Duration::from_secs(30));
    daemon.stop();
    tracing::info!("guardd stopped");
    Ok(())
}

/// The signals guardd handles. SIGTERM and SIGINT stop it cleanly. SIGHUP
/// is acknowledged in the log and otherwise ignored: guardd's settings are
/// its command line and it logs to stderr, so there is nothing to reload or
/// re-open (restart it to change settings; live agents are re-adopted).
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> std::io::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    /// Completes at SIGTERM or SIGINT.
    async fn shutdown(mut self) {
        loop {
            tokio::select! {
                _ = self.term.recv() => return,
                _ = self.int.recv() => return,
                _ = self.hup.recv() => {
                    tracing::info!("SIGHUP: nothing to reload (settings come from the command line; logs go to stderr); still running");
                }
            }
        }
    }
}

/// Tells the service manager about guardd's state (`sd_notify`): a
/// datagram to `$NOTIFY_SOCKET`, a path or an abstract name (`@...`).
/// Without the variable, nothing; a failure is logged, never fatal.
fn notify(state: &str) {
    use std::os::{linux::net::SocketAddrExt as _, unix::ffi::OsStrExt as _};
    let Some(target) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sent = std::os::unix::net::UnixDatagram::unbound().and_then(|sock| {
        match target.as_bytes().strip_prefix(b"@") {
            Some(name) => {
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
                sock.send_to_addr(state.as_bytes(), &addr)
            }
            None => sock.send_to(state.as_bytes(), Path::new(&target)),
        }
    });
    if let Err(e) = sent {
        tracing::warn!(socket = ?target, "notifying the service manager: {e}");
    }
}

/// Journal files: root's, readable by `group` only (0640) or by root only
/// (0600). State: root's only (it holds policies, arguments, work dirs).
fn restrict_files(journal: &Path, state: &Path, group: Option<u32>) -> anyhow::Result<()> {
    let mut journal_files = vec![
        journal.to_owned(),
        guard_daemon::journal::checkpoint_path(journal),
    ];
    for suffix in ["-wal", "-shm"] {
        let mut p = journal.as_os_str().to_owned();
        p.push(suffix);
        journal_files.push(PathBuf::from(p));
    }
    for f in journal_files.iter().filter(|f| f.exists()) {
        if let Some(gid) = group {
            std::os::unix::fs::chown(f, Some(0), Some(gid))
                .with_context(|| format!("chown {}", f.display()))?;
        }
        let mode = if group.is_some() { 0o640 } else { 0o600 };
        std::fs::set_permissions(f, std::fs::Permissions::from_mode(mode))
            .with_context(|| format!("chmod {}", f.display()))?;
    }
    let agents = state.join("agents");
    for dir in [state, agents.as_path()] {
        if dir.exists() {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .with_context(|| format!("chmod {}", dir.display()))?;
        }
    }
    if let Ok(entries) = std::fs::read_dir(&agents) {
        for e in entries.flatten() {
            std::fs::set_permissions(e.path(), std::fs::Permissions::from_mode(0o600))
                .with_context(|| format!("chmod {}", e.path().display()))?;
        }
    }
    Ok(())
}

/// Binds the socket: refuses to take over a live guardd's socket, replaces a
/// stale one, and restricts access (0600, or 0660 with a group).
fn bind(path: &Path, group: Option<u32>) -> anyhow::Result<tokio::net::UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            bail!("another guardd is already serving {}", path.display());
        }
        std::fs::remove_file(path)
            .with_context(|| format!("removing stale socket {}", path.display()))?;
    }
    // Created with a restrictive umask so there is no moment when it is open
    // to everyone.
    // SAFETY: umask has no preconditions.
    let old = unsafe { libc::umask(0o177) };
    let listener = tokio::net::UnixListener::bind(path);
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    let listener = listener.with_context(|| format!("binding {}", path.display()))?;
    if let Some(gid) = group {
        std::os::unix::fs::chown(path, None, Some(gid))
            .with_context(|| format!("chgrp {}", path.display()))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    } else {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::colour;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(colour(true, None));
        assert!(!colour(false, None));
        assert!(!colour(true, Some("1".as_ref())));
        assert!(!colour(false, Some("1".as_ref())));
        // NO_COLOR set but empty does not count (no-color.org).
        assert!(colour(true, Some("".as_ref())));
    }
}
