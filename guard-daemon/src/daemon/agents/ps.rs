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
