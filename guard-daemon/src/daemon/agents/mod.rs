//! Agent lifecycle, one file per operation: opening a scope for a
//! launcher (`open`), ending it (`close`), the state kept on disk
//! (`persist`) so a restarted guardd re-adopts its scopes (`adopt`), who may
//! do what (`authorize`), which policy an agent runs under (`choose`: a
//! named one, or the client's within the node's floor), listing (`ps`) and
//! the operator's controls (`control`), and where an agent's `{tmp}` is
//! made and how it goes (`tmpdir`). This file holds the registry of live agents they share.

mod adopt;
mod authorize;
mod choose;
mod close;
mod control;
mod dns;
pub mod grant;
mod open;
mod persist;
mod plan;
mod ps;
mod tmpdir;

use std::{collections::HashMap, path::PathBuf, sync::Arc, time::SystemTime};

pub use adopt::{readopt, reap_orphans};
pub use authorize::{authorize, reads_all, refuse_confined_peer};
pub use choose::named_policy;
pub use close::close;
pub use control::control;
pub use dns::resume_resolvers;
pub use open::open;
pub use persist::set_main_pid;
pub use ps::ps;

use crate::{api::RequestError, kernel::AgentKeys, monitor::AgentMeta, policy::Mode, scope::Scope};

/// Who is on the other end of a connection (SO_PEERCRED).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Peer {
    pub uid: u32,
    pub gid: u32,
    pub pid: i32,
    /// 0 for a peer in guardd's pid namespace; otherwise the workload it
    /// runs in (`peer::Origin::tenant`), which sees and controls only the
    /// agents it started, whatever its uid.
    pub tenant: u64,
}

/// A live agent. Its id, name and policy are `meta.agent`'s.
pub struct AgentState {
    pub mode: Mode,
    pub slot: u32,
    pub scope: Scope,
    pub keys: AgentKeys,
    /// Its `{tmp}`: the path the agent sees, and how guardd removes it.
    pub tmp: tmpdir::AgentTmp,
    pub started: SystemTime,
    pub main_pid: Option<i32>,
    /// The uid that opened the scope (seen from the socket peer): only it
    /// and root may report on or control the agent.
    pub owner: u32,
    /// The tenant that opened it (`Peer::tenant`; 0: the host).
    pub tenant: u64,
    pub meta: Arc<AgentMeta>,
    /// A launcher connection owns the agent; re-adopted agents have none
    /// until their launcher reports the exit.
    pub attached: bool,
    /// What the agent's policy was compiled from.
    pub source: Source,
    /// The agent's DNS resolver, when its policy has host rules (or it
    /// runs in audit mode); its kernel entry redirects port 53 there.
    pub dns: Option<crate::dns::AgentResolver>,
    /// The port a re-adopted agent's redirection named before guardd
    /// restarted (its resolver starts again on it if it can).
    pub dns_port_before: Option<u16>,
    /// Its live grants (`guardctl grant`).
    pub grants: grant::Grants,
    /// guardd's end of the agent's request channel (`daemon::requests`);
    /// dropped with the agent, which stops its server. `None` for a
    /// re-adopted agent: its channel ended with the guardd that made it.
    pub request_channel: Option<crate::daemon::requests::Channel>,
}

/// The inputs of an agent's plan, kept so a restarted guardd can rebuild it.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Source {
    pub policy_text: String,
    /// Absent in state written before includes were sent.
    #[serde(default)]
    pub policy_includes: Vec<(String, String)>,
    pub policy_path: String,
    pub workdir: PathBuf,
    pub home: PathBuf,
    pub unix_degraded: bool,
    /// The launcher ran in another network namespace than guardd (a pod):
    /// no resolver serves the agent (see `dns::start_resolver`).
    #[serde(default)]
    pub other_netns: bool,
    /// `guardctl run --grant` items the policy was compiled with.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub start_grants: Vec<String>,
}

#[derive(Default)]
pub struct Registry {
    pub agents: HashMap<String, AgentState>,
    next_slot: u32,
}

impl Registry {
    pub fn live(&self) -> usize {
        self.agents.len()
    }

    /// Slot → the keys of each live agent's static rules (what must stay in
    /// the tries when stale entries are purged).
    pub fn static_keys(&self) -> HashMap<u32, crate::kernel::AgentKeys> {
        self.agents
            .values()
            .map(|a| (a.slot, a.keys.clone()))
            .collect()
    }

    /// The agent named by `key` (see `resolve`).
    fn find(&self, key: &str) -> Result<&AgentState, RequestError> {
        let id = resolve(
            self.agents
                .values()
                .map(|a| (a.meta.agent.id.as_str(), a.meta.agent.name.as_str())),
            key,
        )?;
        self.agents
            .get(&id)
            .ok_or_else(|| RequestError::NotFound(format!("no live agent with id or name {key:?}")))
    }

    fn alloc_slot(&mut self) -> u32 {
        // Slots are never reused while guardd runs, so a late event of an
        // ended agent cannot be attributed to a new one.
        // Below `GRANT_SLOT`: that bit marks an agent's grants in the tries.
        self.next_slot = (self.next_slot.wrapping_add(1) & !guard_common::GRANT_SLOT).max(1);
        self.next_slot
    }
}

/// The id of the agent named by `key` among `agents` (id, name): an id, a
/// name that exactly one agent has, or else an unambiguous id prefix. Names
/// default to the policy name, so they collide easily; acting on an
/// arbitrary one of several agents would be worse than refusing.
fn resolve<'a>(
    agents: impl Iterator<Item = (&'a str, &'a str)> + Clone,
    key: &str,
) -> Result<String, RequestError> {
    if let Some((id, _)) = agents.clone().find(|(id, _)| *id == key) {
        return Ok(id.to_owned());
    }
    let mut by_name: Vec<(&str, &str)> = agents.clone().filter(|(_, n)| *n == key).collect();
    if by_name.is_empty() && !key.is_empty() {
        by_name = agents.filter(|(id, _)| id.starts_with(key)).collect();
    }
    match by_name.as_slice() {
        [(id, _)] => Ok((*id).to_owned()),
        [] => Err(RequestError::NotFound(format!(
            "no live agent with id or name {key:?}"
        ))),
        _ => {
            by_name.sort_by(|a, b| a.0.cmp(b.0));
            let list: Vec<String> = by_name
                .iter()
                .map(|(id, name)| format!("{id} ({name})"))
                .collect();
            Err(RequestError::Ambiguous(format!(
                "{key:?} names {} live agents: {}; use an id",
                list.len(),
                list.join(", ")
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const AGENTS: [(&str, &str); 4] = [
        ("0a1b2c3d4e5f", "claude"),
        ("0a9999999999", "codex"),
        ("ffff00000000", "codex"),
        ("123456789abc", "0a9"),
    ];

    fn find(key: &str) -> Result<String, RequestError> {
        resolve(AGENTS.iter().copied(), key)
    }

    #[test]
    fn an_id_a_unique_name_or_a_unique_prefix_names_an_agent() {
        assert_eq!(find("0a1b2c3d4e5f").unwrap(), "0a1b2c3d4e5f");
        assert_eq!(find("claude").unwrap(), "0a1b2c3d4e5f");
        assert_eq!(find("0a1").unwrap(), "0a1b2c3d4e5f");
        assert_eq!(find("ffff").unwrap(), "ffff00000000");
        // A name wins over an id prefix it happens to be.
        assert_eq!(find("0a9").unwrap(), "123456789abc");
    }

    #[test]
    fn unknown_and_ambiguous_keys_are_refused_with_their_codes() {
        let e = find("nobody").unwrap_err();
        assert_eq!(e.code(), crate::api::code::NOT_FOUND);
        assert_eq!(e.message(), "no live agent with id or name \"nobody\"");
        // The empty key is no prefix of everything.
        assert_eq!(find("").unwrap_err().code(), crate::api::code::NOT_FOUND);
        let e = find("codex").unwrap_err();
        assert_eq!(e.code(), crate::api::code::AMBIGUOUS);
        assert_eq!(
            e.message(),
            "\"codex\" names 2 live agents: 0a9999999999 (codex), ffff00000000 (codex); use an id"
        );
        assert_eq!(find("0a").unwrap_err().code(), crate::api::code::AMBIGUOUS);
    }

    #[test]
    fn slots_are_never_reused_and_never_zero() {
        let mut r = Registry::default();
        assert_eq!(r.alloc_slot(), 1);
        assert_eq!(r.alloc_slot(), 2);
        r.next_slot = u32::MAX;
        // Wrapping skips 0, the slot no agent has.
        assert_eq!(r.alloc_slot(), 1);
        assert_eq!(r.live(), 0);
    }
}
