//! An agent's DNS resolver: started with its scope (open), started again
//! for a re-adopted scope, stopped with it (close).

use std::sync::Arc;

use serde_json::json;

use super::plan::parse_granted;
use crate::{
    api::RequestError,
    daemon::{Shared, dns::AgentEvents},
    dns::AgentResolver,
    journal::{Kind, Record, Text, Verdict},
    monitor::AgentMeta,
    policy::{Plan, Vars, host::DnsPlan},
};

/// What the agent's resolver answers: the policy's host rules; in audit
/// mode without any, none (every name is forwarded and journaled, so a
/// policy can be drafted from what the agent looked up). `None`: the agent
/// keeps its own DNS (no host rules, enforce mode).
fn dns_plan(plan: &Plan, audit: bool, service_ready: bool) -> Option<DnsPlan> {
    match &plan.network.dns {
        Some(d) => Some(d.clone()),
        None if audit && service_ready => Some(DnsPlan::default()),
        None => None,
    }
}

/// Starts the resolver of the agent in `slot`, if its plan needs one. A
/// policy with host rules on a guardd that cannot run resolvers is refused
/// (fail closed: without its resolver, no name rule could be enforced).
pub(super) fn start_resolver(
    shared: &Shared,
    slot: u32,
    plan: &Plan,
    audit: bool,
    meta: &Arc<AgentMeta>,
    preferred: Option<u16>,
    other_netns: bool,
) -> Result<Option<AgentResolver>, RequestError> {
    let Some(dns) = dns_plan(plan, audit, shared.dns.is_ok()) else {
        return Ok(None);
    };
    // The resolver listens on loopback in guardd's network namespace; an
    // agent launched from another (a pod's) could not reach it, and its
    // redirected lookups would all fail.
    if other_netns {
        if plan
            .network
            .dns
            .as_ref()
            .is_some_and(|d| !d.hosts.is_empty())
        {
            return Err(RequestError::Policy(
                "host-name rules need guardd's resolver for the agent, which listens on loopback                  in guardd's network namespace, and this launcher runs in another one (a pod's):                  allow the addresses by `cidr` instead, or run the agent in the node's network                  namespace (hostNetwork)"
                    .to_owned(),
            ));
        }
        // Audit mode without host rules only records names: the agent's
        // DNS goes where it was sent.
        return Ok(None);
    }
    let service = shared.dns.as_ref().map_err(|why| {
        RequestError::Degraded(format!(
            "layer `dns` (guardd's resolver for the agent) cannot be enforced: {why}. The policy's \
             host rules need it; start guardd with --dns-upstream ADDR[:PORT]"
        ))
    })?;
    let events = AgentEvents {
        meta: meta.clone(),
        journal: shared.journal.clone(),
        coalescer: shared.coalescer.clone(),
        metrics: shared.metrics.clone(),
    };
    let resolver = service
        .start_agent(
            slot,
            Arc::new(plan.network.clone()),
            Arc::new(dns),
            audit,
            events,
            preferred,
        )
        .map_err(|e| RequestError::Internal(format!("starting the agent's DNS resolver: {e}")))?;
    let _ = meta.names.set(resolver.names());
    Ok(Some(resolver))
}

/// Stops an agent's resolver: its answers' addresses leave the map, and
/// its port is no longer off limits to others.
pub(super) fn stop_resolver(shared: &Shared, slot: u32, resolver: Option<AgentResolver>) {
    if let Some(r) = resolver {
        // The port leaves DNS_PORTS before the socket closes: once closed,
        // another agent's resolver may bind it and enter it for itself.
        if let Ok(mut k) = shared.kernel.lock() {
            k.clear_dns_port(r.port(), slot);
        }
        r.stop();
    }
}

/// Starts the resolvers of re-adopted agents again, after the stale map
/// entries of the guardd that died were purged. The kernel's redirection
/// is pointed at the new resolver (its old port if it could be bound
/// again). An agent whose resolver cannot start keeps its redirection to a
/// port nobody serves: its lookups fail, they go nowhere else.
pub fn resume_resolvers(shared: &Shared) {
    let ids: Vec<String> = shared
        .registry
        .lock()
        .map(|r| r.agents.keys().cloned().collect())
        .unwrap_or_default();
    for id in ids {
        let Some((slot, audit, src, tmp, meta, cgroup_id, before)) =
            shared.registry.lock().ok().and_then(|r| {
                r.agents.get(&id).map(|a| {
                    (
                        a.slot,
                        a.mode == crate::policy::Mode::Audit,
                        a.source.clone(),
                        a.tmp.path.clone(),
                        a.meta.clone(),
                        a.scope.cgroup_id,
                        a.dns_port_before,
                    )
                })
            })
        else {
            continue;
        };
        let plan = parse_granted(
            &src.policy_text,
            &src.policy_path,
            &src.policy_includes,
            &src.start_grants,
        )
        .map_err(|e| e.to_string())
        .and_then(|p| {
            p.compile(&Vars {
                workdir: src.workdir.clone(),
                home: src.home.clone(),
                tmp,
            })
            .map_err(|e| e.to_string())
        });
        // An entry at a static rule's exact address may still hold a grant
        // of the resolver that died with the old guardd: write the static
        // rules again before any new grant.
        if let Ok(plan) = &plan
            && let Ok(mut k) = shared.kernel.lock()
            && let Err(e) = k.rewrite_static(slot, &plan.network.v4, &plan.network.v6)
        {
            tracing::error!(agent = %meta.agent.id, "rewriting the agent's static rules: {e}");
        }
        let started = plan.map_err(RequestError::Policy).and_then(|plan| {
            start_resolver(shared, slot, &plan, audit, &meta, before, src.other_netns)
        });
        // The old port stays off limits only while it is this agent's.
        if let (Some(old), Ok(mut k)) = (before, shared.kernel.lock()) {
            k.clear_dns_port(old, slot);
        }
        match started {
            Ok(None) => {
                // Its redirection would point at a port nobody serves (and
                // that any process could take): turn it off; its rules then
                // judge its queries to port 53 again.
                if before.is_some() {
                    if let Ok(mut k) = shared.kernel.lock() {
                        let _ = k.set_agent_dns(cgroup_id, None);
                    }
                    resume_failed(
                        shared,
                        &meta,
                        "guardd has no upstream resolver now; the agent's DNS redirection is off",
                    );
                }
            }
            Ok(Some(r)) => {
                let port = r.port();
                let pointed = shared
                    .kernel
                    .lock()
                    .map_err(|_| "kernel lock poisoned".to_owned())
                    .and_then(|mut k| {
                        k.set_dns_port(port, slot)
                            .and_then(|()| k.set_agent_dns(cgroup_id, Some(port)))
                            .map_err(|e| e.to_string())
                    });
                if let Err(e) = pointed {
                    resume_failed(shared, &meta, &e);
                    stop_resolver(shared, slot, Some(r));
                    continue;
                }
                if let Ok(mut reg) = shared.registry.lock()
                    && let Some(a) = reg.agents.get_mut(&id)
                {
                    a.dns = Some(r);
                    super::persist::persist(shared, a);
                } else {
                    stop_resolver(shared, slot, Some(r));
                }
            }
            Err(e) => resume_failed(shared, &meta, &e.to_string()),
        }
    }
}

fn resume_failed(shared: &Shared, meta: &AgentMeta, why: &str) {
    tracing::error!(agent = %meta.agent.id, "restarting the agent's DNS resolver: {why}");
    let rec = Record::new(
        Kind::Dns,
        "resolver",
        Text::new("restart"),
        Verdict::Denied,
        "dns.resolver-unavailable",
        "guardd",
    )
    .with_agent(meta.agent.clone())
    .with_detail(json!({
        "why": format!("the re-adopted agent's DNS resolver could not start again: {why}; its lookups fail (they go nowhere else)"),
    }));
    let _ = shared.journal.append(rec);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Mode, Policy};
    use std::path::Path;

    fn plan(text: &str) -> Plan {
        let vars = Vars {
            workdir: Path::new("/w").into(),
            home: Path::new("/h").into(),
            tmp: Path::new("/t").into(),
        };
        Policy::parse(text, "p.toml")
            .unwrap()
            .compile(&vars)
            .unwrap()
    }

    #[test]
    fn a_resolver_runs_for_host_rules_and_for_audit_mode() {
        let names = plan(
            "[policy]\nname = \"n\"\n[network]\nallow = [{ host = \"api.example.com\", ports = [443] }]\n",
        );
        let cidr = plan("[policy]\nname = \"c\"\n[network]\nallow = [{ cidr = \"10.0.0.0/8\" }]\n");
        assert_eq!(names.mode, Mode::Enforce);
        assert_eq!(
            dns_plan(&names, false, true).map(|d| d.hosts.len()),
            Some(1)
        );
        assert_eq!(dns_plan(&cidr, false, true), None);
        assert_eq!(dns_plan(&cidr, true, true).map(|d| d.hosts.len()), Some(0));
        // Audit mode without upstreams keeps the agent's own DNS.
        assert_eq!(dns_plan(&cidr, true, false), None);
    }
}
