//! Who may do what: the owner rule for reports and controls, who reads
//! every agent, and the refusal of peers inside a scope.

use serde_json::json;

use super::Peer;
use crate::{
    api::RequestError,
    daemon::Shared,
    journal::{Kind, Record, Text, Verdict},
};

/// Journals a request refused for who asked, and returns the failure.
pub(super) fn refuse_request(
    shared: &Shared,
    peer: Peer,
    op: &str,
    target: &str,
    rule: &str,
    agent: Option<crate::journal::AgentRef>,
    message: String,
) -> RequestError {
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
    RequestError::PermissionDenied(message)
}

/// Only the uid that opened an agent, or root, may report on it or control
/// it. An unknown id passes here so the operation itself says `not_found`.
pub fn authorize(shared: &Shared, peer: Peer, id: &str, op: &str) -> Result<(), RequestError> {
    if peer.uid == 0 && peer.tenant == 0 {
        return Ok(());
    }
    let found = shared.registry.lock().ok().and_then(|r| {
        r.agents
            .get(id)
            .map(|a| (a.owner, a.tenant, a.meta.agent.clone()))
    });
    match found {
        Some((owner, tenant, agent)) => match not_owner(owner, tenant, peer, id, op) {
            Some(why) => Err(refuse_request(
                shared,
                peer,
                op,
                id,
                "control.not-owner",
                Some(agent),
                why,
            )),
            None => Ok(()),
        },
        None => Ok(()),
    }
}

/// Why `peer` may not `op` agent `id` owned by `owner` and opened by
/// `tenant`, if it may not. A workload (tenant) acts only on the agents it
/// opened itself, whatever its uid: pods run as uid 0.
fn not_owner(owner: u32, tenant: u64, peer: Peer, id: &str, op: &str) -> Option<String> {
    if peer.tenant != 0 {
        return (tenant != peer.tenant).then(|| {
            format!("agent {id} was not started from this container; it may not {op} it")
        });
    }
    (peer.uid != 0 && owner != peer.uid).then(|| {
        format!(
            "agent {id} belongs to uid {owner}; uid {} may not {op} it",
            peer.uid
        )
    })
}

/// Whether `peer` may read every agent (ps, logs): root, or a member of the
/// configured group when guardd lets the group read everything.
pub fn reads_all(shared: &Shared, peer: Peer, in_group: bool) -> bool {
    may_read_all(shared.cfg.group_reads_all, peer, in_group)
}

fn may_read_all(group_reads_all: bool, peer: Peer, in_group: bool) -> bool {
    // A workload reads nothing of other workloads' agents, whatever its uid.
    peer.tenant == 0 && (peer.uid == 0 || (group_reads_all && in_group))
}

/// Journals a request refused because its peer runs inside a scope (or
/// could not be placed), and returns the error for the peer.
pub fn refuse_confined_peer(
    shared: &Shared,
    peer: Peer,
    confined: Option<(&String, &String)>,
) -> RequestError {
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
                container: None,
            });
        }
        (None, None) => {}
    }
    shared.metrics.refusal(&rec);
    let _ = shared.journal.append(rec);
    RequestError::PermissionDenied(why.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(uid: u32) -> Peer {
        Peer {
            uid,
            gid: uid,
            pid: 42,
            tenant: 0,
        }
    }

    fn pod(tenant: u64) -> Peer {
        Peer { tenant, ..peer(0) }
    }

    #[test]
    fn only_the_owner_or_root_may_act_on_an_agent() {
        assert_eq!(not_owner(1000, 0, peer(1000), "a1", "kill"), None);
        assert_eq!(not_owner(1000, 0, peer(0), "a1", "kill"), None);
        assert_eq!(not_owner(0, 0, peer(0), "a1", "exited"), None);
        assert_eq!(
            not_owner(1000, 0, peer(1001), "a1", "freeze").as_deref(),
            Some("agent a1 belongs to uid 1000; uid 1001 may not freeze it")
        );
        // Root's agents are root's alone.
        assert!(not_owner(0, 0, peer(1000), "a1", "started").is_some());
    }

    #[test]
    fn a_workload_acts_only_on_its_own_agents_though_it_is_root() {
        assert_eq!(not_owner(0, 7, pod(7), "a1", "exited"), None);
        assert!(not_owner(0, 7, pod(8), "a1", "kill").is_some());
        // Nor on the host's.
        assert!(not_owner(0, 0, pod(8), "a1", "started").is_some());
        // The host's root acts on any.
        assert_eq!(not_owner(0, 7, peer(0), "a1", "kill"), None);
        assert!(!may_read_all(true, pod(7), true));
    }

    #[test]
    fn root_reads_all_and_the_group_only_when_allowed() {
        assert!(may_read_all(false, peer(0), false));
        assert!(may_read_all(true, peer(1000), true));
        assert!(!may_read_all(false, peer(1000), true));
        assert!(!may_read_all(true, peer(1000), false));
    }
}
