//! The operator's kill switch and freezer.

use std::time::Duration;

use serde_json::json;

use super::{Peer, authorize::authorize};
use crate::{
    api::{ControlAction, RequestError},
    daemon::Shared,
    journal::{Kind, Record, Text, Verdict},
};

fn action_name(a: ControlAction) -> &'static str {
    match a {
        ControlAction::Kill => "kill",
        ControlAction::Freeze => "freeze",
        ControlAction::Thaw => "thaw",
    }
}

/// The operator's kill switch and freezer.
pub fn control(
    shared: &Shared,
    key: &str,
    action: ControlAction,
    reason: Option<&str>,
    peer: Peer,
) -> Result<serde_json::Value, RequestError> {
    let (scope, agent) = {
        let r = shared
            .registry
            .lock()
            .map_err(|_| RequestError::Internal("registry poisoned".to_owned()))?;
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
    result.map_err(|e| RequestError::Internal(e.to_string()))?;
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
