//! Re-adoption of the scopes a previous guardd left, and the end of
//! re-adopted agents whose launcher never came back.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use serde_json::json;

use super::{
    AgentState, close,
    persist::{StateFile, state_path},
    plan::{judge_for, parse_granted},
};
use crate::{
    api::AgentRef,
    daemon::Shared,
    journal::{self, Kind, Record, Text, Verdict},
    monitor::{AgentMeta, journal_loss},
    policy::{Mode, RuleInfo, Vars},
};

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
            .and_then(|b| StateFile::parse(&b).ok())
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
        // A use observed in learn mode is no refusal, would-be or real.
        && rec.layer != crate::journal::LEARN_LAYER
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
    let keys = st.keys();
    let agent = AgentRef {
        id: st.id.clone(),
        name: st.name.clone(),
        policy: st.policy.clone(),
        container: st.container.clone(),
    };
    let gap = json!({
        "daemon_down_since": since.map(journal::format_time),
        "why": "guardd was not running; enforcement continued through the pinned programs, and events that did not fit the ring buffer are counted as lost",
    });
    let opened = match &st.base {
        Some(base) => shared.scopes.open_in(base, &st.scope),
        None => shared.scopes.open(&st.scope),
    };
    let tmp = super::tmpdir::AgentTmp::reopen(st.tmp.clone(), st.tmp_in);
    let src = &st.source;
    let judge = parse_granted(
        &src.policy_text,
        &src.policy_path,
        &src.policy_includes,
        &src.start_grants,
    )
    .ok()
    .and_then(|p| {
        p.compile(&Vars {
            workdir: src.workdir.clone(),
            home: src.home.clone(),
            tmp: st.tmp.clone(),
        })
        .ok()
    })
    .map(|plan| judge_for(&plan, &src.workdir, src.unix_degraded, st.audit));
    // The agent's refusals so far carry over the restart.
    let refusals = crate::monitor::RefusalCount::default();
    if let Err(e) = journaled_refusals(&shared.cfg.journal, &st.id, &refusals) {
        tracing::warn!(agent = %st.id, "counting the re-adopted agent's refusals: {e}");
    }
    let rules = st
        .rules
        .iter()
        .map(|(id, text)| RuleInfo {
            id: id.clone(),
            text: text.clone(),
        })
        .collect();
    let meta = Arc::new(AgentMeta::new(
        agent.clone(),
        opened.as_ref().map(|s| s.cgroup_id).unwrap_or(0),
        rules,
        judge,
        refusals,
        // The launcher of an agent guardd re-adopts is gone or unknown.
        None,
    ));
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
                if st.base.is_some() {
                    k.detach_scope(&st.id);
                }
            }
            tmp.remove();
            let _ = std::fs::remove_file(state_path(shared, &st.id));
            if let Ok(mut c) = meta.closed_at.lock() {
                *c = Some(Instant::now());
            }
            // Its grants went with its keys above.
            super::grant::end_with_agent(shared, &agent, &st.live_grants);
            restart_gap(shared, agent, "scope ended while guardd was down", gap);
            return;
        }
    };
    let mut keys = keys;
    keys.cgroup_id = scope.cgroup_id;
    // A scope under a caller holds its own links to the programs: this
    // guardd's generation replaces them (attached before the old ones go).
    if scope.base.caller {
        let attached = shared
            .kernel
            .lock()
            .map_err(|_| "kernel lock poisoned".to_owned())
            .and_then(|mut k| k.attach_scope(&scope.v2, &st.id).map_err(|e| e.to_string()));
        if let Err(e) = attached {
            // Fail closed: without this generation's links its level may
            // leave the programs' search, and the exec check would no
            // longer find the agent. End it.
            tracing::error!(agent = %st.id, "re-attaching the programs to the re-adopted scope failed ({e}); ending the agent");
            let _ = scope.kill_all(Duration::from_secs(5));
        }
    }
    restart_gap(shared, agent, "scope re-adopted", gap);
    if let Ok(mut r) = shared.registry.lock() {
        r.agents.insert(
            st.id.clone(),
            AgentState {
                mode: if st.audit { Mode::Audit } else { Mode::Enforce },
                slot: st.slot,
                scope,
                keys,
                tmp,
                started: UNIX_EPOCH + Duration::from_secs(st.started_unix),
                main_pid: st.main_pid,
                owner: st.owner,
                tenant: st.tenant,
                meta,
                attached: false,
                source: st.source,
                dns: None,
                dns_port_before: st.dns_port,
                grants: st.live_grants,
                request_channel: None,
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
            .map(|a| a.meta.agent.id.clone())
            .collect(),
        Err(_) => return,
    };
    for id in ended {
        close(shared, &id, None, "re-adopted scope emptied", |_| {});
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(kind: Kind, verdict: Verdict, rule: &str, layer: &str) -> Record {
        Record::new(kind, "connect", Text::new("x"), verdict, rule, layer)
    }

    #[test]
    fn an_agents_refusals_are_its_refused_actions_of_any_layer() {
        for layer in ["cgroup-bpf", "landlock", "seccomp", "mount"] {
            assert!(is_agents_refusal(&rec(
                Kind::Network,
                Verdict::Denied,
                "r",
                layer
            )));
            assert!(is_agents_refusal(&rec(
                Kind::File,
                Verdict::Audit,
                "r",
                layer
            )));
        }
        // Allowed actions, losses and lifecycle records are not refusals.
        assert!(!is_agents_refusal(&rec(
            Kind::Network,
            Verdict::Allowed,
            "r",
            "cgroup-bpf"
        )));
        assert!(!is_agents_refusal(&rec(
            Kind::Gap,
            Verdict::Denied,
            "lost",
            "kernel"
        )));
        assert!(!is_agents_refusal(&rec(
            Kind::Lifecycle,
            Verdict::Denied,
            "scope.unknown",
            "guardd"
        )));
        // guardd's refusals count only when the agent itself asked.
        assert!(is_agents_refusal(&rec(
            Kind::Policy,
            Verdict::Denied,
            "control.confined-peer",
            "guardd"
        )));
        assert!(!is_agents_refusal(&rec(
            Kind::Policy,
            Verdict::Denied,
            "control.not-owner",
            "guardd"
        )));
    }
}
