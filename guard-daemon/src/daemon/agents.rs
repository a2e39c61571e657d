//! Agent lifecycle: opening a scope for a launcher, ending it, re-adopting
//! scopes after a restart, and the operator's controls.

use std::{
    collections::HashMap,
    os::fd::OwnedFd,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use guard_common::{
    AGENT_AUDIT, AGENT_RESTRICT_EXEC, AgentInfo, Net4Key, Net6Key, UNIX_PATH_MAX, UnixKey,
};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::Shared;
use crate::{
    api::{self, AgentRef, ControlAction, ExitReply, ExitStatus, OpenReply, OpenRequest, PsEntry},
    journal::{self, Kind, Record, Text, Verdict},
    kernel::{AgentKeys, NetEntries},
    launch::seccomp,
    monitor::{AgentMeta, journal_loss, judge::Judge},
    policy::{Mode, Policy, RuleInfo, UserSpec, Vars},
    scope::{Limits, Scope},
};

/// Who is on the other end of a connection (SO_PEERCRED).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Peer {
    pub uid: u32,
    pub gid: u32,
    pub pid: i32,
}

/// A failed request: protocol error code and message.
pub type Failure = (&'static str, String);

pub struct AgentState {
    pub id: String,
    pub name: String,
    pub policy: String,
    pub mode: Mode,
    pub slot: u32,
    pub scope: Scope,
    pub keys: AgentKeys,
    pub tmp: PathBuf,
    pub started: SystemTime,
    pub main_pid: Option<i32>,
    /// The uid that opened the scope (seen from the socket peer): only it
    /// and root may report on or control the agent.
    pub owner: u32,
    pub meta: Arc<AgentMeta>,
    /// A launcher connection owns the agent; re-adopted agents have none
    /// until their launcher reports the exit.
    pub attached: bool,
    /// What the agent's policy was compiled from.
    pub source: Source,
}

/// The inputs of an agent's plan, kept so a restarted guardd can rebuild it.
#[derive(Clone, Debug, Default)]
pub struct Source {
    pub policy_text: String,
    pub policy_includes: Vec<(String, String)>,
    pub policy_path: String,
    pub workdir: PathBuf,
    pub home: PathBuf,
    pub unix_degraded: bool,
}

/// The policy pieces the monitor needs to attribute refused calls: the
/// same seccomp filter the launcher installs (its socket families depend on
/// whether the Unix hooks work here), the file grants, the kept capabilities.
fn judge_for(
    plan: &crate::policy::Plan,
    workdir: &Path,
    unix_degraded: bool,
    audit: bool,
) -> Judge {
    let mut families = vec![seccomp::AF_INET, seccomp::AF_INET6, seccomp::AF_NETLINK];
    if !unix_degraded {
        families.push(seccomp::AF_UNIX);
    }
    Judge {
        fs: Some(plan.filesystem.clone()),
        workdir: workdir.to_owned(),
        seccomp: seccomp::build(&seccomp::Options {
            socket_families: families,
            listen: plan.network.has_listen_rules() || audit,
            inotify: plan.process.inotify || audit,
        }),
        caps: plan
            .process
            .capabilities
            .iter()
            .filter_map(|c| crate::launch::caps::number(c))
            .collect(),
    }
}

#[derive(Default)]
pub struct Registry {
    pub agents: HashMap<String, AgentState>,
    next_slot: u32,
}

impl Registry {
    pub fn live(&self) -> usize {
        self.agents.len()
    }

    /// The agent named by `key`: an id, an unambiguous id prefix, or a name
    /// that exactly one live agent has. Names default to the policy name, so
    /// they collide easily; acting on an arbitrary one of several agents
    /// would be worse than refusing.
    fn find(&self, key: &str) -> Result<&AgentState, Failure> {
        if let Some(a) = self.agents.get(key) {
            return Ok(a);
        }
        let mut by_name: Vec<&AgentState> =
            self.agents.values().filter(|a| a.name == key).collect();
        if by_name.is_empty() && !key.is_empty() {
            by_name = self
                .agents
                .values()
                .filter(|a| a.id.starts_with(key))
                .collect();
        }
        match by_name.len() {
            1 => Ok(by_name[0]),
            0 => Err((
                api::code::NOT_FOUND,
                format!("no live agent with id or name {key:?}"),
            )),
            _ => {
                by_name.sort_by(|a, b| a.id.cmp(&b.id));
                let list: Vec<String> = by_name
                    .iter()
                    .map(|a| format!("{} ({})", a.id, a.name))
                    .collect();
                Err((
                    api::code::AMBIGUOUS,
                    format!(
                        "{key:?} names {} live agents: {}; use an id",
                        list.len(),
                        list.join(", ")
                    ),
                ))
            }
        }
    }

    fn alloc_slot(&mut self) -> u32 {
        // Slots are never reused while guardd runs, so a late event of an
        // ended agent cannot be attributed to a new one.
        self.next_slot = self.next_slot.wrapping_add(1).max(1);
        self.next_slot
    }
}

/// What is persisted per live agent so a restarted guardd can re-adopt it.
#[derive(Serialize, Deserialize)]
struct StateFile {
    id: String,
    name: String,
    policy: String,
    audit: bool,
    slot: u32,
    scope: String,
    tmp: PathBuf,
    started_unix: u64,
    main_pid: Option<i32>,
    /// Absent in state written before owners were kept: root's.
    #[serde(default)]
    owner: u32,
    v4: Vec<(u32, u32, [u8; 4])>,
    v6: Vec<(u32, u32, [u8; 16])>,
    unix: Vec<(u32, Vec<u8>)>,
    /// Keys of the `listen` tries (absent in state written before them).
    #[serde(default)]
    listen4: Vec<(u32, u32, [u8; 4])>,
    #[serde(default)]
    listen6: Vec<(u32, u32, [u8; 16])>,
    rules: Vec<(String, String)>,
    /// To rebuild the agent's policy after a restart (refusal attribution).
    policy_text: String,
    #[serde(default)]
    policy_includes: Vec<(String, String)>,
    policy_path: String,
    workdir: PathBuf,
    home: PathBuf,
    unix_degraded: bool,
}

/// Parses a policy as guardctl sent it: include files come from the
/// request (as guardctl read them), never from guardd's file system.
fn parse_sent(
    text: &str,
    path: &str,
    includes: &[(String, String)],
) -> Result<Policy, crate::policy::PolicyError> {
    let dir = std::path::Path::new(path)
        .parent()
        .unwrap_or(std::path::Path::new("/"));
    Policy::parse_all_with(text, path, dir, &|p: &std::path::Path| {
        includes
            .iter()
            .find(|(k, _)| std::path::Path::new(k) == p)
            .map(|(_, t)| t.clone())
            .ok_or_else(|| "not sent by guardctl".to_owned())
    })
    .map_err(|errs| crate::policy::first_error(errs, path))
}

fn state_path(shared: &Shared, id: &str) -> PathBuf {
    shared
        .cfg
        .state_dir
        .join("agents")
        .join(format!("{id}.json"))
}

fn random_id() -> String {
    let mut b = [0u8; 6];
    // SAFETY: getrandom fills the buffer we own.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    if n != b.len() as isize {
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        b.copy_from_slice(&t.to_le_bytes()[..6]);
    }
    hex::encode(b)
}

fn resolve_uid(user: &UserSpec) -> Option<u32> {
    match user {
        UserSpec::Uid(u) => Some(*u),
        UserSpec::Name(n) => nix::unistd::User::from_name(n)
            .ok()
            .flatten()
            .map(|u| u.uid.as_raw()),
    }
}

/// Journals a request refused for who asked, and returns the failure.
fn refuse_request(
    shared: &Shared,
    peer: Peer,
    op: &str,
    target: &str,
    rule: &str,
    agent: Option<crate::journal::AgentRef>,
    message: String,
) -> Failure {
    let mut rec = Record::new(
        Kind::Policy,
        op,
        Text::new(target.to_owned()),
        Verdict::Denied,
        rule,
        "guardd",
    )
    .with_detail(json!({"requested_by": {"uid": peer.uid, "pid": peer.pid}, "why": message}));
    if let Some(a) = agent {
        rec = rec.with_agent(a);
    }
    shared.metrics.refusal(&rec);
    let _ = shared.journal.append(rec);
    (api::code::PERMISSION_DENIED, message)
}

/// Only the uid that opened an agent, or root, may report on it or control
/// it. An unknown id passes here so the operation itself says `not_found`.
pub fn authorize(shared: &Shared, peer: Peer, id: &str, op: &str) -> Result<(), Failure> {
    if peer.uid == 0 {
        return Ok(());
    }
    let found = shared
        .registry
        .lock()
        .ok()
        .and_then(|r| r.agents.get(id).map(|a| (a.owner, a.meta.agent.clone())));
    match found {
        Some((owner, agent)) if owner != peer.uid => Err(refuse_request(
            shared,
            peer,
            op,
            id,
            "control.not-owner",
            Some(agent),
            format!(
                "agent {id} belongs to uid {owner}; uid {} may not {op} it",
                peer.uid
            ),
        )),
        _ => Ok(()),
    }
}

/// Whether `peer` may read every agent (ps, logs): root, or a member of the
/// configured group when guardd lets the group read everything.
pub fn reads_all(shared: &Shared, peer: Peer, in_group: bool) -> bool {
    peer.uid == 0 || (shared.cfg.group_reads_all && in_group)
}

/// Opens a scope for a launcher. Returns the reply and the descriptors to
/// send with it: the cgroup directory, then the v1 `cgroup.procs` files.
pub fn open(
    shared: &Shared,
    req: &OpenRequest,
    peer: Peer,
) -> Result<(OpenReply, Vec<OwnedFd>), Failure> {
    let t0 = Instant::now();
    // The reply carries descriptors that write into root-owned cgroups
    // (checked against the opener, root), and the launcher needs
    // CAP_SYS_ADMIN for the agent's namespaces: only root starts agents.
    if peer.uid != 0 {
        return Err(refuse_request(
            shared,
            peer,
            "open",
            req.argv.first().map(String::as_str).unwrap_or(""),
            "control.open-root-only",
            None,
            format!(
                "only root can start agents (uid {} asked): the launcher places the agent in \
                 root-owned cgroups and namespaces; run guardctl as root, e.g. with sudo",
                peer.uid
            ),
        ));
    }
    // Fail closed: an agent whose violations cannot be recorded is not
    // started.
    if let Some(why) = shared.journal.failure() {
        return Err((
            api::code::DEGRADED,
            format!("the journal cannot record anything ({why}); no agent is started"),
        ));
    }
    let policy = parse_sent(&req.policy_text, &req.policy_path, &req.policy_includes)
        .map_err(|e| (api::code::POLICY, e.to_string()))?;
    let id = random_id();
    let name = req.name.clone().unwrap_or_else(|| policy.name.clone());
    if let Some(problem) = crate::launch::preflight::agent_name_problem(&name) {
        return Err((api::code::BAD_REQUEST, problem));
    }

    // {tmp}: private to the agent, owned by whoever it runs as. The plan
    // names it, so its path is fixed before compiling and the directory is
    // made once the policy has compiled.
    tracing::debug!(us = t0.elapsed().as_micros() as u64, "open: parsed");
    let tmp = std::env::temp_dir().join(format!("guard-{id}"));
    let vars = Vars {
        workdir: PathBuf::from(&req.workdir),
        home: PathBuf::from(&req.home),
        tmp: tmp.clone(),
    };
    let plan = policy
        .compile(&vars)
        .map_err(|e| (api::code::POLICY, e.to_string()))?;
    tracing::debug!(us = t0.elapsed().as_micros() as u64, "open: compiled");
    std::fs::create_dir(&tmp).map_err(|e| {
        (
            api::code::INTERNAL,
            format!("creating {}: {e}", tmp.display()),
        )
    })?;
    let cleanup_tmp = |tmp: &Path| {
        let _ = std::fs::remove_dir_all(tmp);
    };
    let owner = plan
        .process
        .user
        .as_ref()
        .and_then(resolve_uid)
        .unwrap_or(peer.uid);
    let _ = std::os::unix::fs::chown(&tmp, Some(owner), None);
    let _ = std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o700));

    tracing::debug!(us = t0.elapsed().as_micros() as u64, "open: tmp made");
    let audit = req.audit || plan.mode == Mode::Audit;
    let accepts = |what: &str| req.accept_degraded.iter().any(|a| a == what || a == "all");

    let mut degraded = Vec::new();
    let unix_hooks = shared
        .kernel
        .lock()
        .map(|k| k.layers.clone())
        .unwrap_or_default();
    if !unix_hooks.unix_hooks {
        let why = unix_hooks.unix_error.clone().unwrap_or_default();
        if plan.names_unix_sockets() && !accepts("unix") {
            cleanup_tmp(&tmp);
            return Err((
                api::code::DEGRADED,
                format!(
                    "layer `unix` (the Unix-socket hooks) cannot be enforced on this host: {why}. The policy names Unix \
                     sockets; pass --allow-degraded unix to run with all Unix sockets refused by seccomp instead"
                ),
            ));
        }
        // Without the hooks the launcher refuses socket(AF_UNIX) entirely.
        degraded.push(format!(
            "unix: Unix-socket hooks unavailable ({why}); socket(AF_UNIX) refused by seccomp"
        ));
    }

    let limits = Limits {
        pids: plan.process.max_processes,
        memory_bytes: plan.process.memory_bytes,
        cpu_millicores: plan.process.cpu_millicores,
    };
    let scope = match shared
        .scopes
        .create(&format!("agent-{id}"), &limits, accepts("limits"))
    {
        Ok(s) => s,
        Err(e) => {
            cleanup_tmp(&tmp);
            let code = if matches!(e, crate::scope::ScopeError::ControllerUnavailable { .. }) {
                api::code::DEGRADED
            } else {
                api::code::INTERNAL
            };
            let hint = if code == api::code::DEGRADED {
                "; pass --allow-degraded limits to run without it"
            } else {
                ""
            };
            return Err((code, format!("{e}{hint}")));
        }
    };
    tracing::debug!(us = t0.elapsed().as_micros() as u64, "open: scope made");
    for c in &scope.skipped {
        degraded.push(format!(
            "limits: the {c} controller is unavailable; its limit is not enforced"
        ));
    }

    let agent = AgentRef {
        id: id.clone(),
        name: name.clone(),
        policy: policy.name.clone(),
    };
    let rules: Vec<RuleInfo> = plan.rules.clone();
    let meta = Arc::new(AgentMeta {
        agent: agent.clone(),
        cgroup_id: scope.cgroup_id,
        rules,
        judge: Some(judge_for(
            &plan,
            Path::new(&req.workdir),
            !unix_hooks.unix_hooks,
            audit,
        )),
        refusals: Default::default(),
        suppressed: AtomicU64::new(0),
        seen: AtomicU64::new(0),
        lost_reported: AtomicU64::new(0),
        closed_at: Mutex::new(None),
        launcher_exe: crate::monitor::launcher_exe(peer.pid),
    });
    let mut registry = shared
        .registry
        .lock()
        .map_err(|_| (api::code::INTERNAL, "registry poisoned".to_owned()))?;
    let slot = registry.alloc_slot();
    if let Ok(mut a) = shared.attribution.write() {
        a.insert(slot, meta.clone());
    }
    let info = AgentInfo {
        slot,
        flags: if audit { AGENT_AUDIT } else { 0 }
            | if plan.filesystem.restricted {
                AGENT_RESTRICT_EXEC
            } else {
                0
            },
        denied: 0,
        lost: 0,
        events: 0,
    };
    let added = shared
        .kernel
        .lock()
        .map_err(|_| (api::code::INTERNAL, "kernel lock poisoned".to_owned()))
        .and_then(|mut k| {
            k.add_agent(
                scope.cgroup_id,
                info,
                &NetEntries {
                    v4: &plan.network.v4,
                    v6: &plan.network.v6,
                    unix: &plan.network.unix,
                    listen4: &plan.network.listen4,
                    listen6: &plan.network.listen6,
                },
            )
            .map_err(|e| {
                let code = if matches!(e, crate::kernel::KernelError::Quota { .. }) {
                    api::code::POLICY
                } else {
                    api::code::INTERNAL
                };
                (code, e.to_string())
            })
        });
    let keys = match added {
        Ok(k) => k,
        Err((code, e)) => {
            let _ = scope.remove();
            cleanup_tmp(&tmp);
            return Err((
                code,
                format!("writing the agent's rules into the kernel maps: {e}"),
            ));
        }
    };
    let fds = match scope
        .open_dir()
        .and_then(|d| scope.v1_procs().map(|v| (d, v)))
    {
        Ok((dir, v1)) => {
            let mut all = vec![dir];
            all.extend(v1);
            all
        }
        Err(e) => {
            if let Ok(mut k) = shared.kernel.lock() {
                k.remove_agent(&keys);
            }
            let _ = scope.remove();
            cleanup_tmp(&tmp);
            return Err((api::code::INTERNAL, e.to_string()));
        }
    };
    let state = AgentState {
        id: id.clone(),
        name: name.clone(),
        policy: policy.name.clone(),
        mode: if audit { Mode::Audit } else { Mode::Enforce },
        slot,
        scope: scope.clone(),
        keys,
        tmp: tmp.clone(),
        started: SystemTime::now(),
        main_pid: None,
        owner: peer.uid,
        meta,
        attached: true,
        source: Source {
            policy_text: req.policy_text.clone(),
            policy_includes: req.policy_includes.clone(),
            policy_path: req.policy_path.clone(),
            workdir: PathBuf::from(&req.workdir),
            home: PathBuf::from(&req.home),
            unix_degraded: !unix_hooks.unix_hooks,
        },
    };
    tracing::debug!(
        us = t0.elapsed().as_micros() as u64,
        "open: rules in the kernel"
    );
    persist(shared, &state);

    let mut detail = json!({
        "argv": req.argv,
        "policy_path": req.policy_path,
        "mode": if audit { "audit" } else { "enforce" },
        "workdir": req.workdir,
        "cgroup": scope.v2.display().to_string(),
        "launcher": {"uid": peer.uid, "pid": peer.pid},
        "network_rules": plan.rules.len(),
    });
    if !degraded.is_empty() || !req.launcher_notes.is_empty() {
        detail["degraded"] = json!(degraded);
        detail["launcher_notes"] = json!(req.launcher_notes);
    }
    let argv0 = req.argv.first().cloned().unwrap_or_default();
    let rec = Record::new(
        Kind::Lifecycle,
        "start",
        Text::new(argv0),
        Verdict::Allowed,
        "scope",
        "guardd",
    )
    .with_agent(agent.clone())
    .with_detail(detail);
    let _ = shared.journal.append(rec);
    if !degraded.is_empty() {
        let rec = Record::new(
            Kind::Policy,
            "degraded",
            Text::new(degraded.join("; ")),
            Verdict::Audit,
            "accept-degraded",
            "guardd",
        )
        .with_agent(agent.clone())
        .with_detail(
            json!({"accepted_by": {"uid": peer.uid, "pid": peer.pid}, "layers": degraded}),
        );
        let _ = shared.journal.append(rec);
    }

    shared.metrics.agent_started();
    let reply = OpenReply {
        agent,
        tmp: tmp.display().to_string(),
        cgroup: scope.v2.display().to_string(),
        v1_procs: fds.len() - 1,
        degraded,
        refuse_unix_sockets: !unix_hooks.unix_hooks,
    };
    registry.agents.insert(id, state);
    tracing::debug!(us = t0.elapsed().as_micros() as u64, "open: done");
    Ok((reply, fds))
}

fn persist(shared: &Shared, a: &AgentState) {
    let state = StateFile {
        id: a.id.clone(),
        name: a.name.clone(),
        policy: a.policy.clone(),
        audit: a.mode == Mode::Audit,
        slot: a.slot,
        scope: a.scope.name.clone(),
        tmp: a.tmp.clone(),
        started_unix: a
            .started
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        main_pid: a.main_pid,
        owner: a.owner,
        v4: a
            .keys
            .v4
            .iter()
            .map(|(b, k)| (*b, k.slot, k.addr))
            .collect(),
        v6: a
            .keys
            .v6
            .iter()
            .map(|(b, k)| (*b, k.slot, k.addr))
            .collect(),
        unix: a
            .keys
            .unix
            .iter()
            .map(|k| (k.slot, k.path.to_vec()))
            .collect(),
        listen4: a
            .keys
            .listen4
            .iter()
            .map(|(b, k)| (*b, k.slot, k.addr))
            .collect(),
        listen6: a
            .keys
            .listen6
            .iter()
            .map(|(b, k)| (*b, k.slot, k.addr))
            .collect(),
        rules: a
            .meta
            .rules
            .iter()
            .map(|r| (r.id.clone(), r.text.clone()))
            .collect(),
        policy_text: a.source.policy_text.clone(),
        policy_includes: a.source.policy_includes.clone(),
        policy_path: a.source.policy_path.clone(),
        workdir: a.source.workdir.clone(),
        home: a.source.home.clone(),
        unix_degraded: a.source.unix_degraded,
    };
    let path = state_path(shared, &a.id);
    let tmp = path.with_extension("json.tmp");
    match serde_json::to_vec(&state) {
        Ok(bytes) => {
            if std::fs::write(&tmp, bytes)
                .and_then(|_| std::fs::rename(&tmp, &path))
                .is_err()
            {
                tracing::warn!("could not persist agent state to {}", path.display());
            }
        }
        Err(e) => tracing::warn!("serialising agent state: {e}"),
    }
}

/// Records the agent's main pid once the launcher knows it.
pub fn set_main_pid(shared: &Shared, id: &str, pid: i32) {
    if let Ok(mut r) = shared.registry.lock()
        && let Some(a) = r.agents.get_mut(id)
    {
        a.main_pid = Some(pid);
        persist(shared, a);
    }
}

/// Ends an agent: kills what remains of its scope, waits until every event
/// it caused is journaled, removes its rules and cgroups, and journals the
/// exit. An unknown id is `not_found`.
pub fn close(
    shared: &Shared,
    id: &str,
    status: Option<ExitStatus>,
    why: &str,
    on_summary: impl FnOnce(Result<ExitReply, Failure>),
) {
    let agent = shared
        .registry
        .lock()
        .ok()
        .and_then(|mut r| r.agents.remove(id));
    let Some(agent) = agent else {
        on_summary(Err((
            api::code::NOT_FOUND,
            format!("no live agent with id {id:?}"),
        )));
        return;
    };
    let t0 = Instant::now();
    // The launcher's own child is not a leftover: with exec confinement it
    // is the agent's pid-1 reaper, which stays while anything else does.
    let leftover = agent
        .scope
        .pids()
        .iter()
        .filter(|p| Some(**p) != agent.main_pid)
        .count();
    if let Err(e) = agent.scope.kill_all(Duration::from_secs(5)) {
        tracing::error!("ending agent {id}: {e}");
    }
    let info = shared
        .kernel
        .lock()
        .ok()
        .and_then(|k| k.agent_info(agent.scope.cgroup_id))
        .unwrap_or_default();
    // The kernel counts every event it wrote for the agent: wait until the
    // monitor has taken all of them, so the journal is complete when the
    // launcher prints its summary. A backlog after a flood can take a while;
    // only a monitor that stops making progress ends the wait early.
    let mut last = agent.meta.seen.load(Ordering::Acquire);
    let mut stalled_since = Instant::now();
    while last < info.events && stalled_since.elapsed() < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_micros(500));
        let now = agent.meta.seen.load(Ordering::Acquire);
        if now != last {
            last = now;
            stalled_since = Instant::now();
        }
    }
    let pending = info.events.saturating_sub(last);
    if pending > 0 {
        tracing::warn!("agent {id}: {pending} kernel events not yet journaled at exit");
    }
    let suppressed = agent.meta.suppressed.load(Ordering::Relaxed);
    tracing::debug!(
        us = t0.elapsed().as_micros() as u64,
        "close: killed and drained"
    );
    // Held repeat counts first, so the agent's records add up before its
    // gap and exit records.
    crate::monitor::coalesce::flush_agent(&shared.coalescer, &agent.meta.agent.id, &shared.journal);
    journal_loss(&agent.meta, info.lost, &shared.journal, &shared.metrics);
    if let Ok(mut c) = agent.meta.closed_at.lock() {
        *c = Some(Instant::now());
    }
    // Counted by verdict, not by mode: in audit mode some layers still
    // really refuse (seccomp, Unix-socket rules), and those are not
    // would-be refusals.
    let denied = agent.meta.refusals.denied();
    let audited = agent.meta.refusals.audited();
    let rec = Record::new(
        Kind::Lifecycle,
        "exit",
        Text::new(match status {
            Some(ExitStatus::Code(c)) => format!("exit {c}"),
            Some(ExitStatus::Signal(s)) => format!("signal {s}"),
            None => "unknown".to_owned(),
        }),
        Verdict::Allowed,
        "scope",
        "guardd",
    )
    .with_agent(agent.meta.agent.clone())
    .with_detail(json!({
        "why": why,
        "denied": denied,
        "audited": audited,
        "lost": info.lost,
        "leftover_killed": leftover,
        "suppressed_repeats": suppressed,
        "events_pending": pending,
        "uptime_ms": agent.started.elapsed().map(|d| d.as_millis() as u64).unwrap_or(0),
    }));
    let _ = shared.journal.append(rec);
    let _ = shared.journal.flush();
    tracing::debug!(us = t0.elapsed().as_micros() as u64, "close: journaled");
    // Everything the launcher reports is settled: processes are gone and
    // every record is committed. Removing the scope's rules and cgroups can
    // follow the answer.
    on_summary(Ok(ExitReply {
        denied,
        audited,
        lost: info.lost,
        leftover_killed: leftover,
    }));
    if let Ok(mut k) = shared.kernel.lock() {
        k.remove_agent(&agent.keys);
    }
    if let Err(e) = agent.scope.remove() {
        tracing::error!("removing scope of {id}: {e}");
    }
    let _ = std::fs::remove_dir_all(&agent.tmp);
    let _ = std::fs::remove_file(state_path(shared, id));
    tracing::debug!(us = t0.elapsed().as_micros() as u64, "close: removed");
}

/// Re-adopts the scopes a previous guardd left, and removes what cannot be
/// attributed. Called once at start-up, before the socket serves.
pub fn readopt(shared: &Shared) {
    let dir = shared.cfg.state_dir.join("agents");
    let mut known = Vec::new();
    let entries: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    for path in entries {
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            let _ = std::fs::remove_file(&path);
            continue;
        }
        let Some(state) = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice::<StateFile>(&b).ok())
        else {
            let _ = std::fs::remove_file(&path);
            continue;
        };
        let since = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
        known.push(state.scope.clone());
        adopt_one(shared, state, since);
    }
    // Scopes with no state cannot be attributed: end them (fail closed).
    for name in shared.scopes.existing() {
        if known.contains(&name) {
            continue;
        }
        if let Ok(scope) = shared.scopes.open(&name) {
            let _ = scope.kill_all(Duration::from_secs(5));
            let _ = scope.remove();
            let rec = Record::new(
                Kind::Lifecycle,
                "reap",
                Text::new(name.clone()),
                Verdict::Denied,
                "scope.unknown",
                "guardd",
            )
            .with_detail(json!({"why": "a scope without state was found at start-up; its processes were killed"}));
            let _ = shared.journal.append(rec);
        }
    }
}

/// Whether `rec` is one of its agent's refusals as the monitor and guardd
/// count them live (`RefusalCount`): a refused or would-be refused action
/// of the agent, whichever layer; not a loss (gap), not a lifecycle record,
/// and not a request of someone else about the agent that guardd refused
/// (guardd's own refusals count only when the agent itself asked).
pub fn is_agents_refusal(rec: &Record) -> bool {
    rec.verdict != Verdict::Allowed
        && !matches!(rec.kind, Kind::Gap | Kind::Lifecycle)
        && (rec.layer != "guardd" || rec.rule == "control.confined-peer")
}

/// Adds the refusals the journal holds for agent `id` to `counts`, each
/// record counting for `1 + detail.repeated`. Read in pages so that a
/// flooded agent's history is not taken into memory at once.
fn journaled_refusals(
    journal: &Path,
    id: &str,
    counts: &crate::monitor::RefusalCount,
) -> Result<(), crate::journal::JournalError> {
    const PAGE: usize = 10_000;
    let store = crate::journal::Store::open_for_reading(journal)?;
    let mut after = None;
    loop {
        let page = store.query(&crate::journal::Filter {
            agent: Some(id.to_owned()),
            after_seq: after,
            limit: Some(PAGE),
            ..Default::default()
        })?;
        for r in &page {
            if is_agents_refusal(r) && r.agent.as_ref().is_some_and(|a| a.id == id) {
                counts.add(r.verdict, r.repeated().unwrap_or(0).saturating_add(1));
            }
        }
        match page.last() {
            Some(last) if page.len() == PAGE => after = Some(last.seq),
            _ => return Ok(()),
        }
    }
}

fn adopt_one(shared: &Shared, st: StateFile, since: Option<SystemTime>) {
    let keys = AgentKeys {
        cgroup_id: 0,
        v4: st
            .v4
            .iter()
            .map(|(b, slot, addr)| {
                (
                    *b,
                    Net4Key {
                        slot: *slot,
                        addr: *addr,
                    },
                )
            })
            .collect(),
        v6: st
            .v6
            .iter()
            .map(|(b, slot, addr)| {
                (
                    *b,
                    Net6Key {
                        slot: *slot,
                        addr: *addr,
                    },
                )
            })
            .collect(),
        unix: st
            .unix
            .iter()
            .map(|(slot, p)| {
                let mut path = [0u8; UNIX_PATH_MAX];
                let n = p.len().min(UNIX_PATH_MAX);
                path[..n].copy_from_slice(&p[..n]);
                UnixKey { slot: *slot, path }
            })
            .collect(),
        listen4: st
            .listen4
            .iter()
            .map(|(b, slot, addr)| {
                (
                    *b,
                    Net4Key {
                        slot: *slot,
                        addr: *addr,
                    },
                )
            })
            .collect(),
        listen6: st
            .listen6
            .iter()
            .map(|(b, slot, addr)| {
                (
                    *b,
                    Net6Key {
                        slot: *slot,
                        addr: *addr,
                    },
                )
            })
            .collect(),
    };
    let agent = AgentRef {
        id: st.id.clone(),
        name: st.name.clone(),
        policy: st.policy.clone(),
    };
    let gap = json!({
        "daemon_down_since": since.map(journal::format_time),
        "why": "guardd was not running; enforcement continued through the pinned programs, and events that did not fit the ring buffer are counted as lost",
    });
    let opened = shared.scopes.open(&st.scope);
    let judge = parse_sent(&st.policy_text, &st.policy_path, &st.policy_includes)
        .ok()
        .and_then(|p| {
            p.compile(&Vars {
                workdir: st.workdir.clone(),
                home: st.home.clone(),
                tmp: st.tmp.clone(),
            })
            .ok()
        })
        .map(|plan| judge_for(&plan, &st.workdir, st.unix_degraded, st.audit));
    // The agent's refusals so far carry over the restart.
    let refusals = crate::monitor::RefusalCount::default();
    if let Err(e) = journaled_refusals(&shared.cfg.journal, &st.id, &refusals) {
        tracing::warn!(agent = %st.id, "counting the re-adopted agent's refusals: {e}");
    }
    let meta = Arc::new(AgentMeta {
        agent: agent.clone(),
        cgroup_id: opened.as_ref().map(|s| s.cgroup_id).unwrap_or(0),
        judge,
        // The launcher of an agent guardd re-adopts is gone or unknown.
        launcher_exe: None,
        refusals,
        suppressed: AtomicU64::new(0),
        rules: st
            .rules
            .iter()
            .map(|(id, text)| RuleInfo {
                id: id.clone(),
                text: text.clone(),
            })
            .collect(),
        seen: AtomicU64::new(0),
        lost_reported: AtomicU64::new(0),
        closed_at: Mutex::new(None),
    });
    // Events the agent caused while guardd was down wait in the pinned ring
    // buffer: keep its slot attributed, even if the scope has ended.
    if let Ok(mut a) = shared.attribution.write() {
        a.insert(st.slot, meta.clone());
    }
    if let Ok(mut r) = shared.registry.lock() {
        r.next_slot = r.next_slot.max(st.slot);
    }
    let scope = match opened {
        Ok(s) if s.populated() => s,
        other => {
            // The agent ended while guardd was down.
            let mut keys = keys;
            if let Ok(s) = &other {
                keys.cgroup_id = s.cgroup_id;
                if let Some(info) = shared
                    .kernel
                    .lock()
                    .ok()
                    .and_then(|k| k.agent_info(s.cgroup_id))
                {
                    journal_loss(&meta, info.lost, &shared.journal, &shared.metrics);
                }
                let _ = s.remove();
            }
            if let Ok(mut k) = shared.kernel.lock() {
                k.remove_agent(&keys);
            }
            let _ = std::fs::remove_dir_all(&st.tmp);
            let _ = std::fs::remove_file(state_path(shared, &st.id));
            if let Ok(mut c) = meta.closed_at.lock() {
                *c = Some(Instant::now());
            }
            restart_gap(shared, agent, "scope ended while guardd was down", gap);
            return;
        }
    };
    let mut keys = keys;
    keys.cgroup_id = scope.cgroup_id;
    restart_gap(shared, agent, "scope re-adopted", gap);
    if let Ok(mut r) = shared.registry.lock() {
        r.agents.insert(
            st.id.clone(),
            AgentState {
                id: st.id,
                name: st.name,
                policy: st.policy,
                mode: if st.audit { Mode::Audit } else { Mode::Enforce },
                slot: st.slot,
                scope,
                keys,
                tmp: st.tmp,
                started: UNIX_EPOCH + Duration::from_secs(st.started_unix),
                main_pid: st.main_pid,
                owner: st.owner,
                meta,
                attached: false,
                source: Source {
                    policy_text: st.policy_text,
                    policy_includes: st.policy_includes,
                    policy_path: st.policy_path,
                    workdir: st.workdir,
                    home: st.home,
                    unix_degraded: st.unix_degraded,
                },
            },
        );
    }
}

/// Journals the gap a daemon restart left in an agent's record.
fn restart_gap(shared: &Shared, agent: AgentRef, what: &str, detail: serde_json::Value) {
    let rec = Record::new(
        Kind::Gap,
        "daemon-restart",
        Text::new(what),
        Verdict::Allowed,
        "daemon",
        "guardd",
    )
    .with_agent(agent)
    .with_detail(detail);
    let _ = shared.journal.append(rec);
}

/// Re-adopted agents whose scope has emptied and whose launcher never came
/// back are ended here.
pub fn reap_orphans(shared: &Shared) {
    let ended: Vec<String> = match shared.registry.lock() {
        Ok(r) => r
            .agents
            .values()
            .filter(|a| !a.attached && !a.scope.populated())
            .map(|a| a.id.clone())
            .collect(),
        Err(_) => return,
    };
    for id in ended {
        close(shared, &id, None, "re-adopted scope emptied", |_| {});
    }
}

fn action_name(a: ControlAction) -> &'static str {
    match a {
        ControlAction::Kill => "kill",
        ControlAction::Freeze => "freeze",
        ControlAction::Thaw => "thaw",
    }
}

/// Live agents; a caller who may not read everything sees only its own.
pub fn ps(shared: &Shared, peer: Peer, all: bool) -> Vec<PsEntry> {
    let Ok(r) = shared.registry.lock() else {
        return Vec::new();
    };
    let mut out: Vec<PsEntry> = r
        .agents
        .values()
        .filter(|a| all || a.owner == peer.uid)
        .map(|a| {
            // The journal's count, whichever layer refused: the kernel's
            // own counter sees only what the BPF programs refused, not
            // Landlock, mount views, seccomp or guardd itself.
            PsEntry {
                id: a.id.clone(),
                name: a.name.clone(),
                policy: a.policy.clone(),
                mode: a.mode.as_str().to_owned(),
                main_pid: a.main_pid,
                processes: a.scope.pids().len(),
                uptime_secs: a.started.elapsed().map(|d| d.as_secs()).unwrap_or(0),
                denied: a.meta.refusals.denied(),
                audited: a.meta.refusals.audited(),
                frozen: a.scope.frozen(),
            }
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id)));
    out
}

/// Journals a request refused because its peer runs inside a scope (or
/// could not be placed), and returns the message for the peer.
pub fn refuse_confined_peer(
    shared: &Shared,
    peer: Peer,
    confined: Option<(&String, &String)>,
) -> String {
    let meta = confined.and_then(|(id, _)| {
        shared
            .registry
            .lock()
            .ok()
            .and_then(|r| r.agents.get(id).map(|a| a.meta.clone()))
    });
    let (rule, why) = match confined {
        Some(_) => (
            "control.confined-peer",
            "guardd serves no process inside an agent's scope",
        ),
        None => (
            "control.unplaced-peer",
            "guardd could not tell whether the peer runs inside a scope",
        ),
    };
    let mut rec = Record::new(
        Kind::Policy,
        "control",
        Text::new(shared.cfg.socket.display().to_string()),
        Verdict::Denied,
        rule,
        "guardd",
    )
    .with_detail(json!({
        "peer": {"uid": peer.uid, "pid": peer.pid},
        "cgroup": confined.map(|(_, c)| c),
        "why": why,
    }));
    match (&meta, confined) {
        (Some(m), _) => {
            m.refusals.count(rec.verdict);
            rec = rec.with_agent(m.agent.clone());
        }
        (None, Some((id, _))) => {
            rec = rec.with_agent(crate::journal::AgentRef {
                id: id.clone(),
                name: String::new(),
                policy: String::new(),
            });
        }
        (None, None) => {}
    }
    shared.metrics.refusal(&rec);
    let _ = shared.journal.append(rec);
    why.to_owned()
}

/// The operator's kill switch and freezer.
pub fn control(
    shared: &Shared,
    key: &str,
    action: ControlAction,
    reason: Option<&str>,
    peer: Peer,
) -> Result<serde_json::Value, Failure> {
    let (scope, agent) = {
        let r = shared
            .registry
            .lock()
            .map_err(|_| (api::code::INTERNAL, "registry poisoned".to_owned()))?;
        let a = r.find(key)?;
        (a.scope.clone(), a.meta.agent.clone())
    };
    authorize(shared, peer, &agent.id, action_name(action))?;
    let processes = scope.pids().len();
    let (verb, result) = match action {
        ControlAction::Kill => ("kill", scope.kill_all(Duration::from_secs(5))),
        ControlAction::Freeze => ("freeze", scope.set_frozen(true)),
        ControlAction::Thaw => ("thaw", scope.set_frozen(false)),
    };
    result.map_err(|e| (api::code::INTERNAL, e.to_string()))?;
    let rec = Record::new(
        Kind::Lifecycle,
        verb,
        Text::new(agent.name.clone()),
        Verdict::Allowed,
        "operator",
        "guardd",
    )
    .with_agent(agent.clone())
    .with_detail(json!({
        "requested_by": {"uid": peer.uid, "pid": peer.pid},
        "reason": reason,
        "processes": processes,
    }));
    let _ = shared.journal.append(rec);
    let _ = shared.journal.flush();
    Ok(json!({"agent": agent, "action": verb, "processes": processes}))
}
