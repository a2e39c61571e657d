//! Ending an agent.

use std::{
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use serde_json::json;

use super::persist::state_path;
use crate::{
    api::{ExitReply, ExitStatus, RequestError},
    daemon::Shared,
    journal::{Kind, Record, Text, Verdict},
    monitor::journal_loss,
};

/// Ends an agent: kills what remains of its scope, waits until every event
/// it caused is journaled, removes its rules and cgroups, and journals the
/// exit. An unknown id is `not_found`.
pub fn close(
    shared: &Shared,
    id: &str,
    status: Option<ExitStatus>,
    why: &str,
    on_summary: impl FnOnce(Result<ExitReply, RequestError>),
) {
    let agent = shared
        .registry
        .lock()
        .ok()
        .and_then(|mut r| r.agents.remove(id));
    let Some(mut agent) = agent else {
        on_summary(Err(RequestError::NotFound(format!(
            "no live agent with id {id:?}"
        ))));
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
    // Nothing of the scope asks any more: its resolver stops (taking its
    // answers' addresses out of the map), and its last records are in
    // before the held counts are flushed below.
    super::dns::stop_resolver(shared, agent.slot, agent.dns.take());
    if let (Some(old), Ok(mut k)) = (agent.dns_port_before, shared.kernel.lock()) {
        // A re-adopted agent whose resolver did not start again.
        k.clear_dns_port(old, agent.slot);
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
    let peaks = agent.scope.peaks();
    let rec = Record::new(
        Kind::Lifecycle,
        "exit",
        Text::new(exit_text(status)),
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
        "peak": {"processes": peaks.processes, "memory_bytes": peaks.memory_bytes},
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
    super::grant::end_with_agent(shared, &agent.meta.agent, &agent.grants);
    let removed = agent.scope.remove();
    if let Err(e) = &removed {
        tracing::error!("removing scope of {id}: {e}");
    }
    // Its own program links (a scope under a caller) go only with the
    // scope: a process that survived in it stays under the programs (and
    // denied, its agent being gone) rather than run with none.
    if agent.scope.base.caller
        && (removed.is_ok() || !agent.scope.v2.exists())
        && let Ok(mut k) = shared.kernel.lock()
    {
        k.detach_scope(id);
    }
    agent.tmp.remove();
    let _ = std::fs::remove_file(state_path(shared, id));
    tracing::debug!(us = t0.elapsed().as_micros() as u64, "close: removed");
}

/// The exit record's target: how the main process ended, as the launcher
/// reported it.
fn exit_text(status: Option<ExitStatus>) -> String {
    match status {
        Some(ExitStatus::Code(c)) => format!("exit {c}"),
        Some(ExitStatus::Signal(s)) => format!("signal {s}"),
        None => "unknown".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exit_is_named_as_reported() {
        assert_eq!(exit_text(Some(ExitStatus::Code(0))), "exit 0");
        assert_eq!(exit_text(Some(ExitStatus::Code(3))), "exit 3");
        assert_eq!(exit_text(Some(ExitStatus::Signal(9))), "signal 9");
        // A launcher that went away reported nothing.
        assert_eq!(exit_text(None), "unknown");
    }
}
