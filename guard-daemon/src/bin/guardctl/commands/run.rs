//! `guardctl run --policy FILE [--name N] [--audit] -- CMD ARGS...`
//!
//! Validates the policy (exit 2 on error, before anything starts), asks
//! guardd for a scope, starts CMD inside it through the launcher, forwards
//! signals, reports the exit to guardd and exits with CMD's status. One
//! summary line goes to stderr.

use std::{
    ffi::{CString, OsString},
    os::{
        fd::{AsRawFd, OwnedFd},
        unix::ffi::{OsStrExt, OsStringExt},
    },
    path::{Path, PathBuf},
};

use clap::Args;
use guard_daemon::{
    api::{
        ApiError, ExitReply, ExitStatus, ExitedRequest, LineConn, OpenReply, OpenRequest, Request,
        StartedRequest,
    },
    launch::{self, Credentials, LaunchSpec, caps, landlock, preflight, seccomp},
    policy::{Plan, Policy, UserSpec, Vars, read_include},
};

use super::{connect, describe, fail};
use crate::{Cli, EXIT_GUARD, EXIT_USAGE};

#[derive(Args, Debug)]
pub struct RunArgs {
    /// The policy file (TOML).
    #[arg(long)]
    policy: PathBuf,
    /// Agent name in the journal (default: the policy's name).
    #[arg(long)]
    name: Option<String>,
    /// Allow everything, but record what the policy would have denied.
    #[arg(long)]
    audit: bool,
    /// Start even though these layers cannot be enforced here (comma list of
    /// `landlock`, `unix`, `limits`, `exec`, or `all`). The degradation is
    /// journaled.
    #[arg(long, value_delimiter = ',')]
    allow_degraded: Vec<String>,
    /// The command and its arguments.
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        required = true,
        value_name = "CMD"
    )]
    command: Vec<OsString>,
}

/// Home directory for `{home}`.
fn home_dir() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .or_else(|| {
            // SAFETY: getuid has no preconditions.
            let uid = unsafe { libc::getuid() };
            nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
                .ok()
                .flatten()
                .map(|u| u.dir)
        })
        .unwrap_or_else(|| PathBuf::from("/"))
}

/// With `GUARDCTL_TIMING` set, prints how long each launch phase took (for
/// investigating launch latency; off by default).
struct Timing(Option<std::time::Instant>);

impl Timing {
    fn new() -> Self {
        Timing(std::env::var_os("GUARDCTL_TIMING").map(|_| std::time::Instant::now()))
    }

    fn mark(&self, what: &str) {
        if let Some(t) = self.0 {
            eprintln!(
                "guardctl timing: {:>8.3} ms  {what}",
                t.elapsed().as_secs_f64() * 1e3
            );
        }
    }
}

pub fn run(cli: &Cli, args: &RunArgs) -> i32 {
    let timing = Timing::new();
    let path_str = args.policy.display().to_string();
    let text = match std::fs::read_to_string(&args.policy) {
        Ok(t) => t,
        Err(e) => {
            fail(format!("{path_str}: cannot read: {e}"));
            return EXIT_USAGE;
        }
    };
    // Includes are resolved from the policy's real directory, as guardd
    // (which gets the canonical path and the texts read here) resolves them.
    let policy_path = std::fs::canonicalize(&args.policy).unwrap_or_else(|_| args.policy.clone());
    let policy_dir = policy_path.parent().unwrap_or(Path::new("/")).to_owned();
    let policy = match Policy::parse_all_with(&text, &path_str, &policy_dir, &read_include) {
        Ok(p) => p,
        Err(errs) => {
            for e in errs {
                eprintln!("{e}");
            }
            return EXIT_USAGE;
        }
    };
    if let Some(name) = &args.name
        && let Some(problem) = preflight::agent_name_problem(name)
    {
        fail(format!("--name: {problem}"));
        return EXIT_USAGE;
    }
    let workdir = match std::env::current_dir() {
        Ok(d) => d,
        Err(e) => {
            fail(format!("cannot read the current directory: {e}"));
            return EXIT_GUARD;
        }
    };
    let home = home_dir();
    // Compile once now so every error is reported before anything starts;
    // {tmp} is only known once guardd has created it.
    let tmp_placeholder = std::env::temp_dir().join("guard-check");
    let first_plan = match policy.compile_all(&Vars {
        workdir: workdir.clone(),
        home: home.clone(),
        tmp: tmp_placeholder.clone(),
    }) {
        Ok(plan) => plan,
        Err(errs) => {
            for e in errs {
                eprintln!("{e}");
            }
            return EXIT_USAGE;
        }
    };
    let fs_restricted = first_plan.filesystem.restricted;
    // The same checks as `guardctl policy check`, before anything starts.
    let problems = preflight::host_problems(&first_plan, &path_str, Some(&tmp_placeholder));
    if !problems.is_empty() {
        for p in problems {
            eprintln!("{p}");
        }
        return EXIT_USAGE;
    }
    let accepts = |w: &str| args.allow_degraded.iter().any(|a| a == w || a == "all");
    for a in &args.allow_degraded {
        if !matches!(a.as_str(), "landlock" | "unix" | "limits" | "exec" | "all") {
            fail(format!(
                "--allow-degraded: unknown layer {a:?} (expected landlock, unix, limits, exec or all)"
            ));
            return EXIT_USAGE;
        }
    }

    timing.mark("policy parsed and compiled");
    let cmd0 = args.command[0].to_string_lossy().into_owned();
    let path_env = std::env::var("PATH").ok();
    let Some(program) = launch::resolve_program(&cmd0, path_env.as_deref()) else {
        fail(format!(
            "{cmd0}: command not found in PATH as guardctl searched it (PATH={})",
            path_env
                .as_deref()
                .unwrap_or("unset; searched /usr/local/bin:/usr/bin:/bin")
        ));
        return 127;
    };
    let rest: Vec<String> = args.command[1..]
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    for w in preflight::start_warnings(&first_plan, &program, &rest, &workdir, path_env.as_deref())
    {
        eprintln!("guardctl: warning: {w}");
    }

    // Landlock is checked before asking for a scope, so a host that cannot
    // enforce the policy's file rules is refused without side effects.
    let mut notes = Vec::new();
    match landlock::abi_version() {
        Ok(abi) => notes.push(format!("landlock ABI {abi}")),
        Err(e) if fs_restricted && !accepts("landlock") => {
            fail(format!(
                "layer `landlock` cannot be enforced on this host ({e}), and the policy restricts files and programs. \
                 Refusing to start; pass --allow-degraded landlock to run without file and exec rules"
            ));
            return EXIT_GUARD;
        }
        Err(e) => notes.push(format!(
            "landlock unavailable ({e}); file and exec rules NOT enforced (accepted)"
        )),
    }
    if !fs_restricted {
        notes.push("policy has no [filesystem] table: file access is not restricted".into());
    }
    // The agent's namespaces and views (private mount, pid, IPC and cgroup
    // namespaces; read-only cgroup file systems; with a [filesystem] table
    // also read-only and noexec views) hold whatever the policy: they are
    // part of enforcing `exec`, the file grants and the scope itself.
    // Without acceptance a failure stops the launch at the step that
    // failed; with it, it is probed here so that the start record tells the
    // truth.
    let mut exec_views = true;
    if accepts("exec")
        && let Err(e) = launch::views::probe()
    {
        exec_views = false;
        notes.push(format!(
            "exec confinement unavailable ({e}); the loader, dlopen and memfd routes around `exec`, \
             metadata changes outside the write grants, host IPC, outside processes and cgroup moves are NOT closed (accepted)"
        ));
    }

    timing.mark("landlock checked");
    let mut conn = match connect(&cli.socket) {
        Ok(c) => c,
        Err(e) => {
            fail(e);
            return EXIT_GUARD;
        }
    };
    let open = Request::Open(OpenRequest {
        policy_path: policy_path.display().to_string(),
        policy_text: text,
        policy_includes: policy.sources.clone(),
        name: args.name.clone(),
        audit: args.audit,
        argv: args
            .command
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect(),
        workdir: workdir.display().to_string(),
        home: home.display().to_string(),
        accept_degraded: args.allow_degraded.clone(),
        launcher_notes: notes.clone(),
    });
    let reply: OpenReply = match conn
        .call(1, &open)
        .and_then(|m| serde_json::from_value(serde_json::Value::Object(m)).map_err(ApiError::from))
    {
        Ok(r) => r,
        Err(ApiError::Remote { code, message }) if code == "policy" => {
            eprintln!("{message}");
            return EXIT_USAGE;
        }
        Err(e) => {
            fail(describe(&e));
            return EXIT_GUARD;
        }
    };
    timing.mark("scope opened by guardd");
    let mut fds = conn.take_fds().into_iter();
    let Some(cgroup) = fds.next() else {
        fail("guardd did not send the scope's cgroup");
        return abort(&mut conn, &reply, EXIT_GUARD);
    };
    let v1_procs: Vec<OwnedFd> = fds.collect();
    if v1_procs.len() != reply.v1_procs {
        fail("guardd sent an unexpected number of descriptors");
        return abort(&mut conn, &reply, EXIT_GUARD);
    }
    for d in &reply.degraded {
        eprintln!("guardctl: warning: degraded: {d}");
    }
    for n in &notes {
        if n.contains("NOT enforced") || n.contains("not restricted") {
            eprintln!("guardctl: warning: {n}");
        }
    }

    let plan = match policy.compile(&Vars {
        workdir: workdir.clone(),
        home,
        tmp: PathBuf::from(&reply.tmp),
    }) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{e}");
            return abort(&mut conn, &reply, EXIT_USAGE);
        }
    };
    let unix_degraded = reply.refuse_unix_sockets;
    let spec = match build_spec(
        &plan,
        &program,
        args,
        cgroup,
        v1_procs,
        &reply,
        unix_degraded,
        accepts("landlock"),
        exec_views.then_some(workdir.as_path()),
    ) {
        Ok(s) => s,
        Err(e) => {
            fail(e);
            return abort(&mut conn, &reply, EXIT_GUARD);
        }
    };
    timing.mark("landlock ruleset and seccomp filter prepared");
    if let Err(e) = launch::block_forwarded() {
        fail(e);
        return abort(&mut conn, &reply, EXIT_GUARD);
    }
    let sigfd = match signalfd() {
        Ok(fd) => fd,
        Err(e) => {
            fail(format!("signalfd: {e}"));
            return abort(&mut conn, &reply, EXIT_GUARD);
        }
    };
    let child = match launch::spawn(&spec) {
        Ok(c) => c,
        Err(e) => {
            if spec.views.is_some() && e.is_exec_confinement() {
                fail(format!(
                    "{e}. Refusing to start; pass --allow-degraded exec to run without the agent's namespaces and views (the routes around `exec`, metadata, IPC and cgroup isolation)"
                ));
            } else if let launch::LaunchError::Exec { source, .. } = &e {
                let ids = spec.credentials.as_ref().map(|c| (c.uid, c.gid));
                fail(preflight::explain_exec_failure(
                    &plan,
                    &cmd0,
                    &program,
                    path_env.as_deref(),
                    ids,
                    source,
                ));
            } else {
                fail(&e);
            }
            let code = if matches!(e, launch::LaunchError::Exec { .. }) {
                127
            } else {
                EXIT_GUARD
            };
            return abort(&mut conn, &reply, code);
        }
    };
    drop(spec);
    timing.mark("agent exec'd");
    // Only `ps` uses it: do not wait for the answer.
    let _ = conn.send_request(
        2,
        &Request::Started(StartedRequest {
            agent: reply.agent.id.clone(),
            pid: child.pid,
        }),
    );
    timing.mark("guardd told the pid");
    let status = wait_forwarding(&child, &sigfd);
    timing.mark("agent exited");
    let summary = report_exit(cli, &mut conn, &reply, status);
    timing.mark("guardd ended the scope");
    reap(&child);
    eprintln!("{}", summary_line(&reply, status, summary.as_ref()));
    match status {
        ExitStatus::Code(c) => c,
        ExitStatus::Signal(s) => 128 + s,
    }
}

/// Ends the scope when the agent never started.
fn abort(conn: &mut LineConn, reply: &OpenReply, code: i32) -> i32 {
    let _ = conn.call(
        9,
        &Request::Exited(ExitedRequest {
            agent: reply.agent.id.clone(),
            status: ExitStatus::Code(code),
        }),
    );
    code
}

#[expect(
    clippy::too_many_arguments,
    reason = "one call site; the pieces come from different places"
)]
fn build_spec(
    plan: &Plan,
    program: &Path,
    args: &RunArgs,
    cgroup: OwnedFd,
    v1_procs: Vec<OwnedFd>,
    reply: &OpenReply,
    unix_degraded: bool,
    landlock_degraded_ok: bool,
    exec_views: Option<&Path>,
) -> Result<LaunchSpec, String> {
    let cstring =
        |b: &[u8]| CString::new(b).map_err(|_| "an argument contains a NUL byte".to_owned());
    let argv = args
        .command
        .iter()
        .map(|a| cstring(a.as_bytes()))
        .collect::<Result<Vec<_>, _>>()?;
    let mut envp = Vec::new();
    for (k, v) in std::env::vars_os() {
        if k == "TMPDIR" || k == "GUARD_AGENT_ID" {
            continue;
        }
        let mut kv = k.into_vec();
        kv.push(b'=');
        kv.extend(v.into_vec());
        envp.push(cstring(&kv)?);
    }
    envp.push(cstring(format!("TMPDIR={}", reply.tmp).as_bytes())?);
    envp.push(cstring(
        format!("GUARD_AGENT_ID={}", reply.agent.id).as_bytes(),
    )?);

    // Landlock: files (when the policy restricts them), and scoping of
    // abstract sockets and signals.
    let mut grants = Vec::new();
    if plan.filesystem.restricted {
        for r in &plan.filesystem.rules {
            grants.push(landlock::Grant {
                path: r.path.clone(),
                rights: landlock::rights_for(r.access.read, r.access.write, r.access.exec),
                required: matches!(r.origin, guard_daemon::policy::Origin::Policy),
                rule: r.rule.clone(),
            });
        }
    }
    let request = landlock::Request {
        restrict_fs: plan.filesystem.restricted,
        grants,
        scope_abstract_unix: !plan.network.unix.iter().any(|(p, _)| p[0] == 0),
        scope_signals: true,
    };
    // The exec views keep the `exec` grants (and library directories)
    // executable-mappable; everything else is noexec.
    let views = match exec_views {
        Some(cwd) => {
            let with = |f: fn(&guard_daemon::policy::Access) -> bool| -> Vec<PathBuf> {
                plan.filesystem
                    .rules
                    .iter()
                    .filter(|r| f(&r.access))
                    .map(|r| r.path.clone())
                    .collect()
            };
            let (exec, write) = (with(|a| a.exec), with(|a| a.write));
            let restrict = plan
                .filesystem
                .restricted
                .then_some(launch::views::Restrict {
                    exec_grants: &exec,
                    write_grants: &write,
                });
            Some(
                launch::views::Views::prepare(restrict, Some(cwd))
                    .map_err(|e| format!("exec views: {e}"))?,
            )
        }
        None => None,
    };
    let landlock = match landlock::prepare(&request) {
        Ok((mut prepared, _report)) => {
            if views.as_ref().is_some_and(|v| v.restricts_files()) {
                prepared.use_private_proc();
            }
            Some(prepared)
        }
        // Without Landlock the other layers still hold; the user accepted
        // that (or the policy does not restrict files), and it was journaled
        // with the start record.
        Err(landlock::LandlockError::Unavailable(_))
            if landlock_degraded_ok || !plan.filesystem.restricted =>
        {
            None
        }
        Err(e) => return Err(format!("Landlock: {e}")),
    };

    let mut families = vec![seccomp::AF_INET, seccomp::AF_INET6, seccomp::AF_NETLINK];
    if !unix_degraded {
        families.push(seccomp::AF_UNIX);
    }
    let audit = args.audit || plan.mode == guard_daemon::policy::Mode::Audit;
    let seccomp = seccomp::build(&seccomp::Options {
        socket_families: families,
        listen: plan.network.has_listen_rules() || audit,
        inotify: plan.process.inotify || audit,
    });

    let keep_caps = plan
        .process
        .capabilities
        .iter()
        .filter_map(|c| caps::number(c))
        .collect();
    let credentials = match &plan.process.user {
        None => None,
        Some(u) => Some(resolve_user(u)?),
    };
    Ok(LaunchSpec {
        program: cstring(program.as_os_str().as_bytes())?,
        argv,
        envp,
        cgroup,
        v1_procs,
        keep_fds: Vec::new(),
        credentials,
        landlock,
        keep_caps,
        seccomp: Some(seccomp),
        views,
    })
}

fn resolve_user(u: &UserSpec) -> Result<Credentials, String> {
    let user = match u {
        UserSpec::Uid(uid) => nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(*uid))
            .map_err(|e| e.to_string())?
            .map(Ok)
            .unwrap_or(Err(*uid)),
        UserSpec::Name(n) => match nix::unistd::User::from_name(n).map_err(|e| e.to_string())? {
            Some(u) => Ok(u),
            None => return Err(format!("policy user {n:?} does not exist on this host")),
        },
    };
    Ok(match user {
        Ok(u) => {
            let name = CString::new(u.name.as_bytes()).map_err(|_| "bad user name".to_owned())?;
            let groups = nix::unistd::getgrouplist(&name, u.gid)
                .map(|g| g.into_iter().map(|g| g.as_raw()).collect())
                .unwrap_or_else(|_| vec![u.gid.as_raw()]);
            Credentials {
                uid: u.uid.as_raw(),
                gid: u.gid.as_raw(),
                groups,
            }
        }
        // A numeric uid without a passwd entry runs with gid = uid.
        Err(uid) => Credentials {
            uid,
            gid: uid,
            groups: vec![uid],
        },
    })
}

fn signalfd() -> std::io::Result<OwnedFd> {
    // SAFETY: building a signal set we own and creating a new descriptor.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in launch::FORWARDED {
            libc::sigaddset(&mut set, s);
        }
        libc::sigaddset(&mut set, libc::SIGCHLD);
        let fd = libc::signalfd(-1, &set, libc::SFD_CLOEXEC);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(std::os::fd::FromRawFd::from_raw_fd(fd))
    }
}

fn exit_status(status: i32) -> ExitStatus {
    if libc::WIFSIGNALED(status) {
        ExitStatus::Signal(libc::WTERMSIG(status))
    } else {
        ExitStatus::Code(libc::WEXITSTATUS(status))
    }
}

/// Waits for the agent's main process, forwarding signals sent to guardctl.
/// Signals the kernel sends for the terminal (Ctrl-C, ...) already reach the
/// agent, which shares the foreground process group; only signals sent to
/// guardctl by another process are forwarded. With a pid-1 reaper, the
/// agent's status comes from the reaper's status pipe (the reaper itself
/// may stay until guardd ends the scope, when the agent left processes
/// behind); a reaper that died without writing it (killed with the scope)
/// gives its own status.
fn wait_forwarding(child: &launch::Child, sigfd: &OwnedFd) -> ExitStatus {
    let mut status_open = child.status.is_some();
    loop {
        let status_fd = match (&child.status, status_open) {
            (Some(fd), true) => fd.as_raw_fd(),
            _ => -1,
        };
        let mut fds = [
            libc::pollfd {
                fd: child.pidfd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: sigfd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: status_fd,
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: polling descriptors we own (a negative one is skipped).
        unsafe { libc::poll(fds.as_mut_ptr(), 3, -1) };
        if fds[1].revents & libc::POLLIN != 0 {
            // SAFETY: signalfd_siginfo is plain data; all-zero is a valid value.
            let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
            // SAFETY: reads at most one signalfd_siginfo into the buffer above,
            // from a signalfd we own.
            let n = unsafe {
                libc::read(
                    sigfd.as_raw_fd(),
                    (&raw mut info).cast(),
                    std::mem::size_of::<libc::signalfd_siginfo>(),
                )
            };
            let from_kernel = info.ssi_code == libc::SI_KERNEL;
            if n > 0 && info.ssi_signo as i32 != libc::SIGCHLD && !from_kernel {
                // SAFETY: pidfd_send_signal to our own child's pidfd.
                unsafe {
                    libc::syscall(
                        libc::SYS_pidfd_send_signal,
                        child.pidfd.as_raw_fd(),
                        info.ssi_signo as i32,
                        std::ptr::null::<libc::siginfo_t>(),
                        0u32,
                    )
                };
            }
        }
        if fds[2].revents != 0 {
            if let Some(st) = child.reported_status() {
                return exit_status(st);
            }
            if fds[2].revents & (libc::POLLHUP | libc::POLLERR) != 0 {
                status_open = false;
            }
        }
        if fds[0].revents & libc::POLLIN != 0 {
            if let Some(st) = child.reported_status() {
                return exit_status(st);
            }
            let mut status = 0;
            // SAFETY: waiting for our own child.
            let rc = unsafe { libc::waitpid(child.pid, &mut status, 0) };
            if rc == child.pid {
                return exit_status(status);
            }
        }
    }
}

/// Reaps the launcher's child if the agent's status came from its pid-1
/// reaper: by now the reaper has exited (nothing left in its namespace) or
/// guardd has killed it with the scope. Bounded, in case guardd could not.
fn reap(child: &launch::Child) {
    if child.status.is_none() {
        return;
    }
    let mut pfd = libc::pollfd {
        fd: child.pidfd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let mut status = 0;
    // SAFETY: polling our child's pidfd, then reaping that child without
    // blocking (an already reaped child makes waitpid fail harmlessly).
    unsafe {
        libc::poll(&mut pfd, 1, 1000);
        libc::waitpid(child.pid, &mut status, libc::WNOHANG);
    }
}

/// Tells guardd the agent ended, reconnecting if guardd restarted meanwhile.
fn report_exit(
    cli: &Cli,
    conn: &mut LineConn,
    reply: &OpenReply,
    status: ExitStatus,
) -> Option<ExitReply> {
    let req = Request::Exited(ExitedRequest {
        agent: reply.agent.id.clone(),
        status,
    });
    let parse = |m: serde_json::Map<String, serde_json::Value>| {
        serde_json::from_value(serde_json::Value::Object(m)).ok()
    };
    match conn.call(3, &req) {
        Ok(m) => parse(m),
        Err(ApiError::Remote { .. }) => None,
        Err(_) => {
            let mut fresh = connect(&cli.socket).ok()?;
            fresh.call(3, &req).ok().and_then(parse)
        }
    }
}

fn summary_line(reply: &OpenReply, status: ExitStatus, summary: Option<&ExitReply>) -> String {
    let how = match status {
        ExitStatus::Code(c) => format!("exited {c}"),
        ExitStatus::Signal(s) => format!("killed by signal {s}"),
    };
    let agent = format!("{} ({})", reply.agent.name, reply.agent.id);
    match summary {
        None => format!(
            "guard: agent {agent} {how}; guardd did not confirm the end of the scope — see: guardctl logs --agent {}",
            reply.agent.id
        ),
        Some(s) => {
            let mut parts = Vec::new();
            // Real refusals apart from would-be ones: in audit mode some
            // layers still refuse (seccomp, Unix-socket rules).
            if s.denied > 0 || s.audited == 0 {
                parts.push(format!("{} denied", s.denied));
            }
            if s.audited > 0 {
                parts.push(format!("{} would have been denied (audit mode)", s.audited));
            }
            if s.lost > 0 {
                parts.push(format!(
                    "{} not recorded (ring buffer full; counted in the journal)",
                    s.lost
                ));
            }
            if s.leftover_killed > 0 {
                parts.push(format!("{} leftover processes killed", s.leftover_killed));
            }
            format!(
                "guard: agent {agent} {how}; {} — see: guardctl logs --agent {}",
                parts.join(", "),
                reply.agent.id
            )
        }
    }
}
