//! Listing live agents.

use super::Peer;
use crate::{api::PsEntry, daemon::Shared};

/// Live agents; a caller who may not read everything sees only its own.
pub fn ps(shared: &Shared, peer: Peer, all: bool) -> Vec<PsEntry> {
    let Ok(r) = shared.registry.lock() else {
        return Vec::new();
    };
    let mut out: Vec<PsEntry> = r
        .agents
        .values()
        .filter(|a| visible(a.owner, a.tenant, peer, all))
        .map(|a| {
            // The journal's count, whichever layer refused: the kernel's
            // own counter sees only what the BPF programs refused, not
            // Landlock, mount views, seccomp or guardd itself.
            PsEntry {
                id: a.meta.agent.id.clone(),
                name: a.meta.agent.name.clone(),
                policy: a.meta.agent.policy.clone(),
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
    sort(&mut out);
    out
}

/// Whether an agent owned by `owner`, opened by `tenant`, is listed for
/// `peer`: a workload sees only what it started.
fn visible(owner: u32, tenant: u64, peer: Peer, all: bool) -> bool {
    if peer.tenant != 0 {
        return tenant == peer.tenant;
    }
    all || owner == peer.uid
}

/// By name, then id: agents of one policy share names.
fn sort(list: &mut [PsEntry]) {
    list.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id)));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_caller_sees_its_own_agents_unless_it_reads_all() {
        let me = Peer {
            uid: 1000,
            gid: 1000,
            pid: 1,
            tenant: 0,
        };
        assert!(visible(1000, 0, me, false));
        assert!(!visible(0, 0, me, false));
        assert!(!visible(1001, 0, me, false));
        assert!(visible(1001, 0, me, true));
        // A workload, root or not, sees only its own.
        let pod = Peer {
            uid: 0,
            tenant: 9,
            ..me
        };
        assert!(visible(0, 9, pod, true));
        assert!(!visible(0, 8, pod, true));
        assert!(!visible(0, 0, pod, true));
    }

    #[test]
    fn entries_are_listed_by_name_then_id() {
        let entry = |id: &str, name: &str| PsEntry {
            id: id.into(),
            name: name.into(),
            policy: "p".into(),
            mode: "enforce".into(),
            main_pid: None,
            processes: 0,
            uptime_secs: 0,
            denied: 0,
            audited: 0,
            frozen: false,
        };
        let mut list = vec![entry("b", "y"), entry("c", "x"), entry("a", "y")];
        sort(&mut list);
        let order: Vec<(&str, &str)> = list
            .iter()
            .map(|e| (e.name.as_str(), e.id.as_str()))
            .collect();
        assert_eq!(order, [("x", "c"), ("y", "a"), ("y", "b")]);
    }
}
