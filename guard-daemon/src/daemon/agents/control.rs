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
    let verb = action_name(action);
    let result = match action {
        ControlAction::Kill => scope.kill_all(Duration::from_secs(5)),
        ControlAction::Freeze => scope.set_frozen(true),
        ControlAction::Thaw => scope.set_frozen(false),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_are_named_as_journaled() {
        assert_eq!(action_name(ControlAction::Kill), "kill");
        assert_eq!(action_name(ControlAction::Freeze), "freeze");
        assert_eq!(action_name(ControlAction::Thaw), "thaw");
    }
}
