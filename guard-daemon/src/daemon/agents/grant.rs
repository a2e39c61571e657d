//! Live grants (issue 15): an operator widens a running agent's network
//! scope for a while (`guardctl grant`), ends a grant early (`revoke`), and
//! lists them (`grants`). Every change is journaled with who made it and
//! why; grants end on their own at their time, and with their agent.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{AgentState, Peer, authorize::refuse_request, persist::persist};
use crate::{
    api::{GrantEntry, GrantRequest, RequestError, RevokeRequest},
    daemon::Shared,
    journal::{AgentRef, Kind, Record, Text, Verdict},
    policy::grant::{self, Dest, GrantError},
};

/// Longest a grant may last: a grant is a hand-off, not a policy change.
pub const MAX_GRANT: Duration = Duration::from_secs(7 * 24 * 3600);
/// How long a grant lasts when no `--for` is given.
pub const DEFAULT_GRANT: Duration = Duration::from_secs(15 * 60);
/// Grants one agent may be given over its life (each takes a rule number).
pub const MAX_GRANTS_PER_AGENT: u64 = 1024;
/// Longest reason kept.
const MAX_REASON: usize = 1024;

/// One live grant, as kept with the agent (and in its state file, so a
/// restarted guardd keeps it and its end).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveGrant {
    /// The agent's grant number, from 1.
    pub n: u64,
    /// Its rule number in the kernel entries.
    pub rule: u16,
    /// The destination as given (`10.0.0.5:443/tcp`).
    pub dest: String,
    pub granted_ms: u64,
    pub until_ms: u64,
    pub by_uid: u32,
    pub by_pid: i32,
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<u64>,
}

/// An agent's grants: the live ones and the next number.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grants {
    pub live: Vec<LiveGrant>,
    pub next: u64,
}

/// Milliseconds since the epoch.
fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn time_of(ms: u64) -> String {
    crate::journal::format_time(UNIX_EPOCH + Duration::from_millis(ms))
}

impl LiveGrant {
    fn entry(&self, agent: &AgentRef) -> GrantEntry {
        GrantEntry {
            agent: agent.clone(),
            grant: self.n,
            dest: self.dest.clone(),
            rule: Dest::parse(&self.dest)
                .map(|d| d.text())
                .unwrap_or_else(|_| self.dest.clone()),
            granted: time_of(self.granted_ms),
            until: time_of(self.until_ms),
            by_uid: self.by_uid,
            reason: self.reason.clone(),
            request: self.request,
        }
    }

    fn detail(&self) -> serde_json::Value {
        json!({
            "grant": self.n,
            "rule": format!("grant:{}", self.n),
            "until": time_of(self.until_ms),
            "granted_by": {"uid": self.by_uid, "pid": self.by_pid},
            "reason": Text::new(self.reason.clone()),
            "request": self.request,
        })
    }
}

/// Only an operator may grant or revoke: root in guardd's own pid namespace
/// (a workload's root is a tenant), and never a process inside a scope (the
/// server refuses those before any request is read). Checked before
/// anything else is read (the journal, the registry): a refused caller
/// learns nothing of other agents.
fn operator_only(shared: &Shared, peer: Peer, op: &str, target: &str) -> Result<(), RequestError> {
    if peer.uid == 0 && peer.tenant == 0 {
        return Ok(());
    }
    let who = if peer.tenant != 0 {
        "a workload (another pid namespace)".to_owned()
    } else {
        format!("uid {}", peer.uid)
    };
    Err(refuse_request(
        shared,
        peer,
        op,
        target,
        "control.grant-not-operator",
        None,
        format!(
            "{who} may not {op}: only root on the host (outside every scope) changes an agent's scope"
        ),
    ))
}

/// The kernel entries of `live`, folded together.
fn entries_of(
    live: &[LiveGrant],
    closed: bool,
) -> Result<crate::policy::grant::LiveEntries, String> {
    let dests: Vec<(u16, Dest)> = live
        .iter()
        .map(|g| Dest::parse(&g.dest).map(|d| (g.rule, d)))
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    let numbered: Vec<grant::Numbered<'_>> = dests
        .iter()
        .map(|(rule, dest)| grant::Numbered { rule: *rule, dest })
        .collect();
    grant::compile_live(&numbered, closed).map_err(|e| e.to_string())
}

/// Whether the grants of `a` get the cuts its policy's rules get: when its
/// DNS goes through guardd (narrower when in doubt).
fn closed(a: &AgentState) -> bool {
    a.dns.is_some() || a.dns_port_before.is_some()
}

/// Why writing an agent's grants failed, and the grants that ended with it.
struct Dropped {
    why: String,
    grants: Vec<LiveGrant>,
}

/// Rewrites the kernel entries of `a`'s live grants (after a change to
/// `a.grants`) and saves the agent's state. Fails closed: when the entries
/// cannot be written, every grant entry of the agent is removed and its
/// grants end (returned, for the journal).
fn apply(shared: &Shared, a: &mut AgentState) -> Result<(), Dropped> {
    let result = entries_of(&a.grants.live, closed(a)).and_then(|(v4, v6)| {
        let mut k = shared
            .kernel
            .lock()
            .map_err(|_| "kernel lock poisoned".to_owned())?;
        k.set_grants(a.slot, &mut a.keys, &v4, &v6)
            .map_err(|e| e.to_string())
    });
    let out = match result {
        Ok(()) => Ok(()),
        Err(why) => {
            // `set_grants` removed what it wrote on its own failure; an
            // earlier failure (compiling) left the previous entries, which
            // go now.
            if let Ok(mut k) = shared.kernel.lock() {
                let _ = k.set_grants(a.slot, &mut a.keys, &[], &[]);
            }
            Err(Dropped {
                why,
                grants: std::mem::take(&mut a.grants.live),
            })
        }
    };
    persist(shared, a);
    out
}

/// Journals the grants a failed write ended.
fn journal_dropped(shared: &Shared, agent: &AgentRef, d: &Dropped) {
    tracing::error!(agent = %agent.id, "writing the agent's grants failed: {}", d.why);
    for g in &d.grants {
        journal_grant(
            shared,
            agent,
            "grant-ended",
            g,
            json!({"why": format!("writing the agent's grants failed ({}); none is in force", d.why)}),
        );
    }
}

fn journal_grant(
    shared: &Shared,
    agent: &AgentRef,
    action: &str,
    g: &LiveGrant,
    extra: serde_json::Value,
) {
    let mut detail = g.detail();
    if let (Some(d), serde_json::Value::Object(x)) = (detail.as_object_mut(), extra) {
        d.extend(x);
    }
    let rec = Record::new(
        Kind::Policy,
        action,
        Text::new(g.dest.clone()),
        Verdict::Allowed,
        format!("grant:{}", g.n),
        "guardd",
    )
    .with_agent(agent.clone())
    .with_detail(detail);
    let _ = shared.journal.append(rec);
    let _ = shared.journal.flush();
}

/// The destination a request (a journal record) asks for: a refused
/// connection or datagram names it as its target, and so does an agent's
/// own escalation.
fn dest_of_request(shared: &Shared, seq: u64) -> Result<(String, Option<String>), RequestError> {
    let store = crate::journal::Store::open_for_reading(&shared.cfg.journal)
        .map_err(|e| RequestError::Internal(e.to_string()))?;
    let rec = store
        .get(seq)
        .map_err(|e| RequestError::Internal(e.to_string()))?
        .ok_or_else(|| RequestError::NotFound(format!("no record #{seq} in the journal")))?;
    let agent = rec.agent.as_ref().map(|a| a.id.clone());
    let target = rec.target.to_string();
    match (rec.kind, rec.action.as_str()) {
        (Kind::Network, "connect" | "sendmsg") => Ok((target, agent)),
        // An agent's own request names what it wants as its target (the
        // channel's refusals of bad lines and floods are no requests).
        (Kind::Escalation, crate::journal::requests::REQUEST_ACTION) => Ok((target, agent)),
        (Kind::File | Kind::Exec, _) => Err(RequestError::BadRequest(format!(
            "request #{seq} is a {} refusal ({target}): files and programs of a running agent \
             cannot be widened (Landlock only ever narrows a process); start the agent again \
             with `guardctl run --grant read:PATH` (or write:, exec:)",
            rec.kind
        ))),
        (kind, action) => Err(RequestError::BadRequest(format!(
            "request #{seq} is a {kind} {action} record, not a refused destination; a grant \
             opens network destinations"
        ))),
    }
}

/// `guardctl grant`.
pub fn grant(
    shared: &Shared,
    req: &GrantRequest,
    peer: Peer,
) -> Result<serde_json::Value, RequestError> {
    let asked = match (&req.agent, req.request) {
        (Some(a), _) => a.clone(),
        (None, Some(n)) => format!("request #{n}"),
        (None, None) => String::new(),
    };
    operator_only(shared, peer, "grant", &asked)?;
    let reason = req.reason.trim();
    if reason.is_empty() {
        return Err(RequestError::BadRequest(
            "a grant needs a reason (--reason TEXT): it is journaled with the grant".into(),
        ));
    }
    if reason.len() > MAX_REASON {
        return Err(RequestError::TooLong(format!(
            "reason longer than {MAX_REASON} bytes"
        )));
    }
    let (spec, from_request) = match (&req.allow, req.request) {
        (Some(_), Some(_)) => {
            return Err(RequestError::BadRequest(
                "give either --allow DEST or --request N, not both".into(),
            ));
        }
        (None, None) => {
            return Err(RequestError::BadRequest(
                "a grant needs --allow DEST or --request N".into(),
            ));
        }
        (Some(d), None) => (d.clone(), None),
        (None, Some(n)) => {
            let (d, agent) = dest_of_request(shared, n)?;
            (d, Some((n, agent)))
        }
    };
    let key = match (&req.agent, &from_request) {
        (Some(k), _) => k.clone(),
        (None, Some((_, Some(id)))) => id.clone(),
        _ => {
            return Err(RequestError::BadRequest(
                "name the agent (guardctl grant AGENT ...)".into(),
            ));
        }
    };
    let dest = Dest::parse(&spec).map_err(grant_error)?;
    if let Some((n, _)) = &from_request
        && !dest.is_host()
        && !dest.is_one_endpoint()
    {
        // A request's text may be the agent's own words: approving it by
        // number grants no more than one address and its named ports.
        return Err(RequestError::BadRequest(format!(
            "request #{n} asks for {spec:?}, wider than one address and its ports; \
             if that is meant, grant it explicitly with --allow"
        )));
    }
    if let Some((n, _)) = &from_request
        && dest.reaches_dns()
    {
        return Err(RequestError::BadRequest(format!(
            "request #{n} asks for {spec:?}, which reaches name resolution past guardd (port 53, \
             DNS over TLS or a DNS-over-HTTPS resolver); if that is meant, grant it explicitly \
             with --allow"
        )));
    }
    let duration = match req.for_secs {
        None => DEFAULT_GRANT,
        Some(0) => return Err(RequestError::BadRequest("--for must be more than 0".into())),
        Some(s) if Duration::from_secs(s) > MAX_GRANT => {
            return Err(RequestError::BadRequest(format!(
                "--for is at most {} days: a grant is a hand-off; change the policy for longer",
                MAX_GRANT.as_secs() / 86400
            )));
        }
        Some(s) => Duration::from_secs(s),
    };
    let mut r = shared
        .registry
        .lock()
        .map_err(|_| RequestError::Internal("registry poisoned".to_owned()))?;
    let id = r.find(&key)?.meta.agent.id.clone();
    let a = r
        .agents
        .get_mut(&id)
        .ok_or_else(|| RequestError::NotFound(format!("no live agent {key:?}")))?;
    let agent = a.meta.agent.clone();
    if let Some((n, Some(owner))) = &from_request
        && *owner != id
    {
        return Err(RequestError::BadRequest(format!(
            "request #{n} is agent {owner}'s, not {id}'s"
        )));
    }
    if dest.is_host() {
        return Err(grant_error(GrantError::HostName {
            spec: spec.clone(),
            dest: spec.clone(),
        }));
    }
    if a.grants.next >= MAX_GRANTS_PER_AGENT {
        return Err(RequestError::Busy(format!(
            "agent {id} has had {MAX_GRANTS_PER_AGENT} grants; start it again with a wider policy"
        )));
    }
    let base = a.meta.rules.len() as u64;
    let rule = u16::try_from(base + a.grants.next).map_err(|_| {
        RequestError::Busy(format!("agent {id} has no rule numbers left for grants"))
    })?;
    let now = SystemTime::now();
    let g = LiveGrant {
        n: a.grants.next + 1,
        rule,
        dest: spec,
        granted_ms: unix(now),
        until_ms: unix(now + duration),
        by_uid: peer.uid,
        by_pid: peer.pid,
        reason: reason.to_owned(),
        request: from_request.as_ref().map(|(n, _)| *n),
    };
    // Tried before anything changes: a grant that cannot sit beside the
    // agent's others (too many port ranges on one address) is refused
    // alone, and the others stay.
    let mut trial = a.grants.live.clone();
    trial.push(g.clone());
    entries_of(&trial, closed(a))
        .and_then(|(v4, v6)| {
            crate::kernel::Kernel::grant_quota(&a.keys, v4.len(), v6.len())
                .map_err(|e| e.to_string())
        })
        .map_err(|e| {
            RequestError::BadRequest(format!(
                "this grant cannot be added beside agent {id}'s other grants: {e}"
            ))
        })?;
    a.grants.next += 1;
    a.grants.live.push(g.clone());
    if let Err(mut d) = apply(shared, a) {
        drop(r);
        journal_failure(shared, &agent, &g, &d.why);
        // The new grant never started: only the others ended.
        d.grants.retain(|x| x.n != g.n);
        journal_dropped(shared, &agent, &d);
        return Err(RequestError::Internal(format!(
            "the grant could not be written into the kernel ({}); no grant of agent {id} is in force now",
            d.why
        )));
    }
    let entry = g.entry(&agent);
    drop(r);
    journal_grant(shared, &agent, "grant", &g, json!({"granted": entry.rule}));
    Ok(serde_json::to_value(entry).unwrap_or_default())
}

fn journal_failure(shared: &Shared, agent: &AgentRef, g: &LiveGrant, why: &str) {
    let rec = Record::new(
        Kind::Policy,
        "grant",
        Text::new(g.dest.clone()),
        Verdict::Denied,
        "grant.write-failed",
        "guardd",
    )
    .with_agent(agent.clone())
    .with_detail(json!({"why": why, "grants_dropped": true}));
    let _ = shared.journal.append(rec);
}

fn grant_error(e: GrantError) -> RequestError {
    RequestError::BadRequest(e.to_string())
}

/// `guardctl revoke`.
pub fn revoke(
    shared: &Shared,
    req: &RevokeRequest,
    peer: Peer,
) -> Result<serde_json::Value, RequestError> {
    operator_only(shared, peer, "revoke", &req.agent)?;
    let mut r = shared
        .registry
        .lock()
        .map_err(|_| RequestError::Internal("registry poisoned".to_owned()))?;
    let id = r.find(&req.agent)?.meta.agent.id.clone();
    let a = r
        .agents
        .get_mut(&id)
        .ok_or_else(|| RequestError::NotFound(format!("no live agent {:?}", req.agent)))?;
    let agent = a.meta.agent.clone();
    let ended: Vec<LiveGrant> = match (req.grant, req.all) {
        (Some(_), true) | (None, false) => {
            return Err(RequestError::BadRequest(
                "name one grant (guardctl revoke AGENT N) or --all".into(),
            ));
        }
        (Some(n), false) => {
            let Some(pos) = a.grants.live.iter().position(|g| g.n == n) else {
                return Err(RequestError::NotFound(format!(
                    "agent {id} has no live grant {n} (guardctl grants lists them)"
                )));
            };
            vec![a.grants.live.remove(pos)]
        }
        (None, true) => std::mem::take(&mut a.grants.live),
    };
    let applied = apply(shared, a);
    drop(r);
    let reason = req.reason.clone().unwrap_or_default();
    for g in &ended {
        journal_grant(
            shared,
            &agent,
            "revoke",
            g,
            json!({"revoked_by": {"uid": peer.uid, "pid": peer.pid}, "revoke_reason": Text::new(reason.clone())}),
        );
    }
    if let Err(d) = applied {
        journal_dropped(shared, &agent, &d);
        return Err(RequestError::Internal(format!(
            "rewriting the grants failed ({}); none is in force",
            d.why
        )));
    }
    Ok(json!({"agent": agent, "revoked": ended.iter().map(|g| g.n).collect::<Vec<_>>()}))
}

/// `guardctl grants`: the live grants of the agents `peer` may see.
pub fn list(
    shared: &Shared,
    agent: Option<&str>,
    peer: Peer,
    reads_all: bool,
) -> Result<Vec<GrantEntry>, RequestError> {
    let r = shared
        .registry
        .lock()
        .map_err(|_| RequestError::Internal("registry poisoned".to_owned()))?;
    // Only the agents the caller may see are looked among: a name or id
    // prefix tells nothing of the others.
    let visible: Vec<&AgentState> = r
        .agents
        .values()
        .filter(|a| {
            reads_all
                || (peer.tenant == 0 && a.tenant == 0 && a.owner == peer.uid)
                || (peer.tenant != 0 && a.tenant == peer.tenant)
        })
        .collect();
    let only = agent
        .map(|k| {
            super::resolve(
                visible
                    .iter()
                    .map(|a| (a.meta.agent.id.as_str(), a.meta.agent.name.as_str())),
                k,
            )
        })
        .transpose()?;
    let mut out = Vec::new();
    for a in visible {
        if only.as_ref().is_some_and(|id| *id != a.meta.agent.id) {
            continue;
        }
        out.extend(a.grants.live.iter().map(|g| g.entry(&a.meta.agent)));
    }
    out.sort_by(|x, y| (&x.agent.id, x.grant).cmp(&(&y.agent.id, y.grant)));
    Ok(out)
}

/// Ends the grants whose time has come; called four times a second.
pub fn expire(shared: &Shared) {
    let now = unix(SystemTime::now());
    let mut ended = Vec::new();
    if let Ok(mut r) = shared.registry.lock() {
        for a in r.agents.values_mut() {
            if !a.grants.live.iter().any(|g| g.until_ms <= now) {
                continue;
            }
            let (gone, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut a.grants.live)
                .into_iter()
                .partition(|g| g.until_ms <= now);
            a.grants.live = kept;
            let applied = apply(shared, a);
            ended.push((a.meta.agent.clone(), gone, applied));
        }
    }
    for (agent, gone, applied) in ended {
        for g in &gone {
            journal_grant(shared, &agent, "grant-expired", g, json!({}));
        }
        if let Err(d) = applied {
            journal_dropped(shared, &agent, &d);
        }
    }
}

/// Journals the end of an agent's grants with the agent (its entries go
/// with the agent's keys).
pub fn end_with_agent(shared: &Shared, agent: &AgentRef, grants: &Grants) {
    for g in &grants.live {
        journal_grant(
            shared,
            agent,
            "grant-ended",
            g,
            json!({"why": "the agent ended"}),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_grant_lists_as_given_and_as_its_rule() {
        let g = LiveGrant {
            n: 2,
            rule: 9,
            dest: "10.0.0.5:443/tcp".into(),
            granted_ms: 1_700_000_000_000,
            until_ms: 1_700_000_900_250,
            by_uid: 0,
            by_pid: 7,
            reason: "ticket 42".into(),
            request: Some(17),
        };
        let a = AgentRef {
            id: "abc".into(),
            name: "n".into(),
            policy: "p".into(),
            container: None,
        };
        let e = g.entry(&a);
        assert_eq!(e.rule, "10.0.0.5/32 tcp 443");
        assert_eq!(e.until, "2023-11-14T22:28:20.250000Z");
        assert_eq!(g.detail()["rule"], "grant:2");
        assert_eq!(g.detail()["request"], 17);
        let back: Grants = serde_json::from_str(
            &serde_json::to_string(&Grants {
                live: vec![g.clone()],
                next: 2,
            })
            .unwrap(),
        )
        .unwrap();
        assert_eq!(back.live, vec![g]);
    }
}
