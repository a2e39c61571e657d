//! Which policy an agent runs under: a named one from guardd's policy
//! directory, or the one the client sent, when guardd accepts client
//! policies at all (`--require-named-policy` refuses them) and within the
//! node's floor (`--floor-policy`).

use serde_json::json;

use super::{Peer, authorize::refuse_request};
use crate::{
    api::{OpenRequest, PolicyReply, RequestError},
    daemon::Shared,
    policy::{Plan, Policy},
};

/// The policy an agent is opened with.
pub struct Chosen {
    pub policy: Policy,
    pub text: String,
    pub path: String,
    pub includes: Vec<(String, String)>,
    /// `(name, sha256)` of a named policy; `None` for a client's.
    pub named: Option<(String, String)>,
}

impl Chosen {
    /// How the start record names where the policy came from.
    pub fn source_detail(&self) -> serde_json::Value {
        match &self.named {
            Some((name, sha)) => json!({"named": name, "sha256": sha}),
            None => json!("client"),
        }
    }
}

/// One named policy as guardd holds it now.
pub fn named_policy(shared: &Shared, name: &str) -> Result<PolicyReply, RequestError> {
    let Some(dir) = &shared.policies else {
        return Err(RequestError::Policy(format!(
            "guardd has no policy directory (start it with --policy-dir DIR), so there is no \
             policy named {name:?}"
        )));
    };
    let set = dir.current();
    match set.policies.get(name) {
        Some(p) => Ok(PolicyReply {
            name: p.name.clone(),
            path: p.path.clone(),
            text: p.text.clone(),
            includes: p.includes.clone(),
            sha256: p.sha256.clone(),
        }),
        None => {
            let known: Vec<&str> = set.policies.keys().map(String::as_str).collect();
            let mut msg = format!(
                "no policy named {name:?} in guardd's policy directory {}",
                dir.dir.display()
            );
            if known.is_empty() {
                msg.push_str(" (it holds none)");
            } else {
                msg.push_str(&format!("; it holds: {}", known.join(", ")));
            }
            if let Some(err) = dir.last_error() {
                msg.push_str(&format!(
                    "; its newest version was refused and the previous set is in force: {err}"
                ));
            }
            Err(RequestError::Policy(msg))
        }
    }
}

/// The policy of an open request (before compiling).
pub fn choose(shared: &Shared, req: &OpenRequest, peer: Peer) -> Result<Chosen, RequestError> {
    let argv0 = req.argv.first().map(String::as_str).unwrap_or("");
    if let Some(name) = &req.policy_name {
        // The floor is the most any client policy may grant: running it
        // as such would hand that to any workload.
        if shared.cfg.floor_policy.as_deref() == Some(name.as_str()) {
            return Err(RequestError::Policy(format!(
                "{name:?} is this guardd's floor (--floor-policy), the bound of client policies, \
                 not a policy to run agents under"
            )));
        }
        if !req.grants.is_empty() {
            return Err(refuse_request(
                shared,
                peer,
                "open",
                argv0,
                "control.grant-not-allowed",
                None,
                format!(
                    "--grant widens a policy, and {name:?} is the node's named policy: ask the \
                     node's operator (guardctl grant, or a wider named policy)"
                ),
            ));
        }
        let p = named_policy(shared, name)?;
        // The launcher applies the text it was sent; guardd must compile
        // that same text, so a reload in between refuses the start.
        if req.policy_text != p.text || req.policy_includes != p.includes {
            return Err(RequestError::Policy(format!(
                "policy {name:?} changed in guardd's policy directory while the agent was \
                 starting (now sha256 {}); run it again",
                p.sha256
            )));
        }
        let policy = Policy::parse_sent_all(&p.text, &p.path, &p.includes).map_err(|errs| {
            RequestError::Policy(crate::policy::first_error(errs, &p.path).to_string())
        })?;
        return Ok(Chosen {
            policy,
            text: p.text,
            path: p.path,
            includes: p.includes,
            named: Some((p.name, p.sha256)),
        });
    }
    if shared.cfg.require_named_policy {
        return Err(refuse_request(
            shared,
            peer,
            "open",
            argv0,
            "control.named-policy-required",
            None,
            format!(
                "this guardd runs agents only under the node's named policies (--require-named-policy): \
                 run `guardctl run --policy-name NAME` instead of --policy {}",
                req.policy_path
            ),
        ));
    }
    let policy = super::plan::parse_granted(
        &req.policy_text,
        &req.policy_path,
        &req.policy_includes,
        &req.grants,
    )
    .map_err(|e| RequestError::Policy(e.to_string()))?;
    Ok(Chosen {
        policy,
        text: req.policy_text.clone(),
        path: req.policy_path.clone(),
        includes: req.policy_includes.clone(),
        named: None,
    })
}

/// A client's policy must stay within the node's floor: compiled with the
/// same variables, every permission it grants must be granted by the floor.
/// A wider one is refused, journaled, naming each excess. Named policies
/// are the node's own and are not checked.
pub fn check_floor(
    shared: &Shared,
    chosen: &Chosen,
    plan: &Plan,
    vars: &crate::policy::Vars,
    peer: Peer,
    argv0: &str,
) -> Result<(), RequestError> {
    let Some(floor_name) = &shared.cfg.floor_policy else {
        return Ok(());
    };
    if chosen.named.is_some() {
        return Ok(());
    }
    let refuse = |why: String| {
        refuse_request(
            shared,
            peer,
            "open",
            argv0,
            "policy.floor",
            None,
            format!(
                "policy {} ({}) is wider than the node's floor policy {floor_name:?}:\n{why}",
                chosen.policy.name, chosen.path
            ),
        )
    };
    // Fail closed: without its floor, guardd accepts no client policy.
    let floor = named_policy(shared, floor_name).map_err(|e| {
        refuse(format!(
            "the floor policy is not available ({e}); no client policy is accepted"
        ))
    })?;
    let floor_plan = Policy::parse_sent_all(&floor.text, &floor.path, &floor.includes)
        .map_err(|errs| crate::policy::first_error(errs, &floor.path).to_string())
        .and_then(|p| p.compile(vars).map_err(|e| e.to_string()))
        .map_err(|e| refuse(format!("the floor policy does not compile here: {e}")))?;
    crate::policy::check_within(&floor_plan, plan).map_err(|e| refuse(e.to_string()))
}
