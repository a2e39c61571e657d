//! Opening a scope for a launcher.

use std::{
    os::fd::OwnedFd,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use guard_common::{
    AGENT_AUDIT, AGENT_DNS, AGENT_LAYERS_REQUIRED, AGENT_LEARN, AGENT_RESTRICT_EXEC, AgentInfo,
};
use serde_json::json;

use super::{
    AgentState, Peer, Source,
    authorize::refuse_request,
    choose::{check_floor, choose},
    dns::{start_resolver, stop_resolver},
    persist::persist,
    plan::judge_for,
    tmpdir::Home,
};
use crate::{
    api::{AgentRef, OpenReply, OpenRequest, RequestError},
    daemon::{
        Shared,
        peer::{Origin, own_netns, writable_cgroupfs_refusal},
    },
    journal::{Kind, Record, Text, Verdict},
    kernel::NetEntries,
    monitor::AgentMeta,
    policy::{Mode, RuleInfo, UserSpec, Vars},
    scope::Limits,
};

/// Live agents one workload (tenant) may run at once on a node.
const MAX_AGENTS_PER_TENANT: usize = 64;

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

/// Opens a scope for a launcher. Returns the reply and the descriptors to
/// send with it: the cgroup directory, then the v1 `cgroup.procs` files.
pub fn open(
    shared: &Shared,
    req: &OpenRequest,
    peer: Peer,
    origin: &Origin,
) -> Result<(OpenReply, Vec<OwnedFd>), RequestError> {
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
        return Err(RequestError::Degraded(format!(
            "the journal cannot record anything ({why}); no agent is started"
        )));
    }
    // A workload cannot take every slot of the node: its live agents are
    // capped.
    if peer.tenant != 0 {
        let live = shared
            .registry
            .lock()
            .map(|r| {
                r.agents
                    .values()
                    .filter(|a| a.tenant == peer.tenant)
                    .count()
            })
            .unwrap_or(0);
        if live >= MAX_AGENTS_PER_TENANT {
            return Err(RequestError::Busy(format!(
                "this container already runs {live} agents (at most {MAX_AGENTS_PER_TENANT})"
            )));
        }
    }
    // A launcher in another mount namespace: its agent's {tmp} is made
    // there. A workload's (a tenant: another pid namespace, as a pod's)
    // must not let the agent leave its scope. The host's own root in a
    // mount namespace of its own could do anything anyway.
    let home = Home::of(origin).map_err(|e| RequestError::Internal(e.to_string()))?;
    if peer.tenant != 0
        && let Some(launcher) = home.container_launcher()
    {
        let writable = launcher
            .writable_cgroup_mounts()
            .map_err(|e| RequestError::Internal(e.to_string()))?;
        if !writable.is_empty() {
            return Err(refuse_request(
                shared,
                peer,
                "open",
                req.argv.first().map(String::as_str).unwrap_or(""),
                "control.writable-cgroupfs",
                None,
                writable_cgroupfs_refusal(&writable, origin),
            ));
        }
    }
    let chosen = choose(shared, req, peer)?;
    let policy = &chosen.policy;
    let id = random_id();
    let name = req.name.clone().unwrap_or_else(|| policy.name.clone());
    if let Some(problem) = crate::launch::preflight::agent_name_problem(&name) {
        return Err(RequestError::BadRequest(problem));
    }

    // {tmp}: private to the agent, owned by whoever it runs as. The plan
    // names it, so its path is fixed before compiling and the directory is
    // made once the policy has compiled.
    tracing::debug!(us = t0.elapsed().as_micros() as u64, "open: parsed");
    let vars = Vars {
        workdir: PathBuf::from(&req.workdir),
        home: PathBuf::from(&req.home),
        tmp: home.path(&id),
    };
    let mut plan = policy
        .compile(&vars)
        .map_err(|e| RequestError::Policy(e.to_string()))?;
    if req.audit {
        // Audit mode relaxes the network rules: the node's named policy
        // decides whether an agent may run so, not the workload.
        if chosen.named.is_some() && plan.mode != Mode::Audit {
            return Err(refuse_request(
                shared,
                peer,
                "open",
                req.argv.first().map(String::as_str).unwrap_or(""),
                "control.audit-not-allowed",
                None,
                format!(
                    "policy {} of guardd's policy directory enforces; a launcher cannot run it in \
                     audit mode (--audit): set `mode = \"audit\"` in the policy on the node instead",
                    plan.name
                ),
            ));
        }
        // A client's policy is compared with the floor as it will run.
        plan.mode = Mode::Audit;
    }
    // Learn mode runs the agent without its file and program confinement:
    // only a node that leaves the choice of policy to its users allows it.
    if req.learn {
        let why = if chosen.named.is_some() {
            Some("the policy is one of guardd's named policies, which the node chose".to_owned())
        } else if shared.cfg.require_named_policy {
            Some("this guardd runs named policies only (--require-named-policy)".to_owned())
        } else if let Some(f) = &shared.cfg.floor_policy {
            Some(format!(
                "this guardd holds client policies within the floor policy {f} (--floor-policy)"
            ))
        } else if !shared.cfg.forbid_degraded.is_empty() {
            Some(format!(
                "this guardd forbids running without layers ({}; --forbid-degraded), and learn mode runs \
                 without Landlock and the exec confinement",
                shared.cfg.forbid_degraded.join(", ")
            ))
        } else {
            None
        };
        if let Some(why) = why {
            return Err(refuse_request(
                shared,
                peer,
                "open",
                req.argv.first().map(String::as_str).unwrap_or(""),
                "control.learn-not-allowed",
                None,
                format!(
                    "learn mode (--learn) is not allowed here: {why}; learn on a host of your own and bring the \
                     drafted policy"
                ),
            ));
        }
        plan.mode = Mode::Audit;
    }
    check_floor(
        shared,
        &chosen,
        &plan,
        &vars,
        peer,
        req.argv.first().map(String::as_str).unwrap_or(""),
    )?;
    tracing::debug!(us = t0.elapsed().as_micros() as u64, "open: compiled");
    let accepts = |what: &str| req.accept_degraded.iter().any(|a| a == what || a == "all");
    // The node may forbid what a workload would accept to run without.
    let forbidden: Vec<&String> = shared
        .cfg
        .forbid_degraded
        .iter()
        .filter(|f| accepts(f.as_str()) || (f.as_str() == "all" && !req.accept_degraded.is_empty()))
        .collect();
    if !forbidden.is_empty() {
        let list: Vec<&str> = forbidden.iter().map(|s| s.as_str()).collect();
        return Err(refuse_request(
            shared,
            peer,
            "open",
            req.argv.first().map(String::as_str).unwrap_or(""),
            "control.degraded-forbidden",
            None,
            format!(
                "this guardd does not let an agent run without layer(s) {} (--forbid-degraded); \
                 the launcher asked to (--allow-degraded {})",
                list.join(", "),
                req.accept_degraded.join(",")
            ),
        ));
    }

    let mut degraded = Vec::new();
    if req.learn {
        degraded.push(
            "learn: files and programs are observed, not confined (no Landlock, no exec views); network rules \
             audited"
                .to_owned(),
        );
    }
    let layers = shared
        .kernel
        .lock()
        .map(|k| k.layers.clone())
        .unwrap_or_default();
    if !layers.unix_hooks {
        let why = layers.unix_error.clone().unwrap_or_default();
        if plan.names_unix_sockets() && !accepts("unix") {
            return Err(RequestError::Degraded(format!(
                "layer `unix` (the Unix-socket hooks) cannot be enforced on this host: {why}. The policy names Unix \
                     sockets; pass --allow-degraded unix to run with all Unix sockets refused by seccomp instead"
            )));
        }
        // Without the hooks the launcher refuses socket(AF_UNIX) entirely.
        degraded.push(format!(
            "unix: Unix-socket hooks unavailable ({why}); socket(AF_UNIX) refused by seccomp"
        ));
    }

    let owner = plan
        .process
        .user
        .as_ref()
        .and_then(resolve_uid)
        .unwrap_or(peer.uid);
    let tmp = home
        .make(&id, owner)
        .map_err(|e| RequestError::Internal(e.to_string()))?;
    let cleanup_tmp = |tmp: &super::tmpdir::AgentTmp| tmp.remove();

    tracing::debug!(us = t0.elapsed().as_micros() as u64, "open: tmp made");
    let audit = req.audit || req.learn || plan.mode == Mode::Audit;

    let limits = Limits {
        pids: plan.process.max_processes,
        memory_bytes: plan.process.memory_bytes,
        cpu_millicores: plan.process.cpu_millicores,
        observe_peaks: req.learn,
    };
    // Under the caller's own cgroups (`--scopes-under caller`): a pod's
    // accounting and limits then hold for its agent too.
    let base = if shared.cfg.scopes_under_caller {
        match shared.scopes.caller_base(&origin.cgroups) {
            Ok(b) => b,
            Err(e) => {
                cleanup_tmp(&tmp);
                return Err(RequestError::Degraded(format!(
                    "the agent's scope cannot be placed under the launcher's cgroup: {e}"
                )));
            }
        }
    } else {
        shared.scopes.parent_base()
    };
    let other_netns = origin.netns.is_some() && origin.netns != own_netns();
    let scope =
        match shared
            .scopes
            .create_in(&base, &format!("agent-{id}"), &limits, accepts("limits"))
        {
            Ok(s) => s,
            Err(e) => {
                cleanup_tmp(&tmp);
                return Err(
                    if matches!(e, crate::scope::ScopeError::ControllerUnavailable { .. }) {
                        RequestError::Degraded(format!(
                            "{e}; pass --allow-degraded limits to run without it"
                        ))
                    } else {
                        RequestError::Internal(e.to_string())
                    },
                );
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
        container: origin.container(),
    };
    let rules: Vec<RuleInfo> = plan.rules.clone();
    let meta = Arc::new(AgentMeta::new(
        agent.clone(),
        scope.cgroup_id,
        rules,
        Some(judge_for(
            &plan,
            Path::new(&req.workdir),
            !layers.unix_hooks,
            audit,
        )),
        Default::default(),
        crate::monitor::launcher_exe(peer.pid),
    ));
    let mut registry = shared
        .registry
        .lock()
        .map_err(|_| RequestError::Internal("registry poisoned".to_owned()))?;
    let slot = registry.alloc_slot();
    if let Ok(mut a) = shared.attribution.write() {
        a.insert(slot, meta.clone());
    }
    let mut info = AgentInfo {
        slot,
        flags: if audit { AGENT_AUDIT } else { 0 }
            | if req.learn { AGENT_LEARN } else { 0 }
            | if plan.filesystem.restricted && !req.learn {
                AGENT_RESTRICT_EXEC
            } else {
                0
            }
            // No accepted degradation drops seccomp, no_new_privs or the
            // capability drop: the launcher applies them in every mode, so
            // every program of every agent must start with them.
            | AGENT_LAYERS_REQUIRED,
        caps: crate::launch::caps::mask(&crate::launch::caps::kept(&plan.process.capabilities)),
        ..AgentInfo::default()
    };
    // The resolver listens before the kernel entry names its port, so the
    // agent's first lookup finds it.
    let resolver = match start_resolver(shared, slot, &plan, audit, &meta, None, other_netns) {
        Ok(r) => r,
        Err(e) => {
            let _ = scope.remove();
            cleanup_tmp(&tmp);
            return Err(e);
        }
    };
    if let Some(r) = &resolver {
        info.flags |= AGENT_DNS;
        info.dns_port = u32::from(r.port());
    }
    let added = shared
        .kernel
        .lock()
        .map_err(|_| {
            RequestError::Internal(
                "writing the agent's rules into the kernel maps: kernel lock poisoned".to_owned(),
            )
        })
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
            .and_then(|keys| match &resolver {
                Some(r) => match k.set_dns_port(r.port(), slot) {
                    Ok(()) => Ok(keys),
                    Err(e) => {
                        k.remove_agent(&keys);
                        Err(e)
                    }
                },
                None => Ok(keys),
            })
            // A scope under a caller inherits none of the parent's
            // programs: they are attached to it before any process can
            // enter (the launcher gets its descriptor only after this).
            .and_then(|keys| {
                if !scope.base.caller {
                    return Ok(keys);
                }
                match k.attach_scope(&scope.v2, &id) {
                    Ok(()) => Ok(keys),
                    Err(e) => {
                        k.remove_agent(&keys);
                        Err(e)
                    }
                }
            })
            .map_err(|e| {
                let why = format!("writing the agent's rules into the kernel maps: {e}");
                if matches!(e, crate::kernel::KernelError::Quota { .. }) {
                    RequestError::Policy(why)
                } else {
                    RequestError::Internal(why)
                }
            })
        });
    let keys = match added {
        Ok(k) => k,
        Err(e) => {
            stop_resolver(shared, slot, resolver);
            let _ = scope.remove();
            cleanup_tmp(&tmp);
            return Err(e);
        }
    };
    let mut fds = match scope
        .open_dir()
        .and_then(|d| scope.v1_procs().map(|v| (d, v)))
    {
        Ok((dir, v1)) => {
            let mut all = vec![dir];
            all.extend(v1);
            all
        }
        Err(e) => {
            stop_resolver(shared, slot, resolver);
            if let Ok(mut k) = shared.kernel.lock() {
                k.remove_agent(&keys);
                if scope.base.caller {
                    k.detach_scope(&id);
                }
            }
            let _ = scope.remove();
            cleanup_tmp(&tmp);
            return Err(RequestError::Internal(e.to_string()));
        }
    };
    let v1_procs = fds.len() - 1;
    // The agent's request channel goes last, after the v1 descriptors. An
    // agent without one still runs: it only cannot ask.
    let request_channel = match crate::daemon::requests::open(
        agent.clone(),
        shared.journal.clone(),
        shared.metrics.clone(),
    ) {
        Ok(Some((channel, end))) => {
            fds.push(end);
            Some(channel)
        }
        Ok(None) => None,
        Err(e) => {
            tracing::warn!(agent = %id, error = %e, "no request channel for the agent");
            None
        }
    };
    let has_channel = request_channel.is_some();
    let state = AgentState {
        mode: if audit { Mode::Audit } else { Mode::Enforce },
        slot,
        scope: scope.clone(),
        keys,
        tmp: tmp.clone(),
        started: SystemTime::now(),
        main_pid: None,
        owner: peer.uid,
        tenant: peer.tenant,
        meta,
        attached: true,
        source: Source {
            policy_text: chosen.text.clone(),
            policy_includes: chosen.includes.clone(),
            policy_path: chosen.path.clone(),
            workdir: PathBuf::from(&req.workdir),
            home: PathBuf::from(&req.home),
            unix_degraded: !layers.unix_hooks,
            other_netns,
            start_grants: req.grants.clone(),
        },
        dns_port_before: None,
        dns: resolver,
        grants: super::grant::Grants::default(),
        request_channel,
    };
    tracing::debug!(
        us = t0.elapsed().as_micros() as u64,
        "open: rules in the kernel"
    );
    persist(shared, &state);

    let mut detail = json!({
        "argv": req.argv,
        "policy_path": chosen.path,
        "policy_source": chosen.source_detail(),
        "mode": if req.learn { "learn" } else if audit { "audit" } else { "enforce" },
        "learn": req.learn,
        "grants": req.grants,
        "workdir": req.workdir,
        "home": req.home,
        "tmp": tmp.path.display().to_string(),
        "cgroup": scope.v2.display().to_string(),
        "launcher": {"uid": peer.uid, "pid": peer.pid, "cgroup": origin.v2()},
        "network_rules": plan.rules.len(),
        "request_channel": has_channel,
    });
    if let Some(r) = &state.dns {
        detail["dns"] = json!({
            "resolver": format!("127.0.0.1:{}", r.port()),
            "ipv6": r.ipv6(),
            "host_rules": plan.network.dns.as_ref().map_or(0, |d| d.hosts.len()),
        });
    }
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
        tmp: tmp.path.display().to_string(),
        cgroup: scope.v2.display().to_string(),
        v1_procs,
        degraded,
        refuse_unix_sockets: !layers.unix_hooks,
        request_channel: has_channel,
    };
    registry.agents.insert(id, state);
    tracing::debug!(us = t0.elapsed().as_micros() as u64, "open: done");
    Ok((reply, fds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_twelve_hex_digits_that_name_a_scope() {
        let a = random_id();
        let b = random_id();
        assert_ne!(a, b);
        for id in [&a, &b] {
            assert_eq!(id.len(), 12, "{id}");
            // The peer check finds an agent by its scope's cgroup name.
            assert_eq!(
                crate::daemon::peer::scope_of(&format!("/guard/agent-{id}")),
                Some(id.as_str())
            );
        }
    }

    #[test]
    fn the_agents_user_is_resolved_to_a_uid() {
        assert_eq!(resolve_uid(&UserSpec::Uid(1234)), Some(1234));
        assert_eq!(resolve_uid(&UserSpec::Name("root".into())), Some(0));
        assert_eq!(
            resolve_uid(&UserSpec::Name("no-such-user-guard-test".into())),
            None
        );
    }
}
