//! The state file kept per live agent, so a restarted guardd can re-adopt
//! its scope.

use std::{path::PathBuf, time::UNIX_EPOCH};

use guard_common::{Net4Key, Net6Key, UNIX_PATH_MAX, UnixKey};
use serde::{Deserialize, Serialize};

use super::{AgentState, Source};
use crate::{daemon::Shared, kernel::AgentKeys, policy::Mode};

/// What is persisted per live agent so a restarted guardd can re-adopt it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub(super) struct StateFile {
    pub(super) id: String,
    pub(super) name: String,
    pub(super) policy: String,
    /// The container the agent was launched from (absent: the host).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) container: Option<crate::journal::ContainerRef>,
    pub(super) audit: bool,
    pub(super) slot: u32,
    pub(super) scope: String,
    /// Where the scope was made when not under guard's parent (a caller's
    /// cgroup); absent: under the parent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) base: Option<crate::scope::ScopeBase>,
    /// The agent's `{tmp}` as the agent sees it.
    pub(super) tmp: PathBuf,
    /// Where in a container `tmp` was made (absent: in guardd's own mount
    /// namespace, as in state written before containers had their own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) tmp_in: Option<super::tmpdir::InContainer>,
    pub(super) started_unix: u64,
    pub(super) main_pid: Option<i32>,
    /// Absent in state written before owners were kept: root's.
    #[serde(default)]
    pub(super) owner: u32,
    /// The tenant that opened it (absent: the host).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub(super) tenant: u64,
    pub(super) v4: Vec<(u32, u32, [u8; 4])>,
    pub(super) v6: Vec<(u32, u32, [u8; 16])>,
    pub(super) unix: Vec<(u32, Vec<u8>)>,
    /// Keys of the `listen` tries (absent in state written before them).
    #[serde(default)]
    pub(super) listen4: Vec<(u32, u32, [u8; 4])>,
    #[serde(default)]
    pub(super) listen6: Vec<(u32, u32, [u8; 16])>,
    pub(super) rules: Vec<(String, String)>,
    /// The port of the agent's resolver, which its kernel entry redirects
    /// DNS to (absent: none, or state written before resolvers).
    #[serde(default)]
    pub(super) dns_port: Option<u16>,
    /// Live grants: their keys are among `v4`/`v6`, and a restarted guardd
    /// ends them at their time as this one would.
    #[serde(default)]
    pub(super) live_grants: super::grant::Grants,
    /// To rebuild the agent's policy after a restart (refusal attribution);
    /// its fields sit beside the others in the file.
    #[serde(flatten)]
    pub(super) source: Source,
}

impl StateFile {
    /// What is kept of live agent `a`.
    pub(super) fn of(a: &AgentState) -> StateFile {
        StateFile {
            id: a.meta.agent.id.clone(),
            name: a.meta.agent.name.clone(),
            policy: a.meta.agent.policy.clone(),
            container: a.meta.agent.container.clone(),
            audit: a.mode == Mode::Audit,
            slot: a.slot,
            scope: a.scope.name.clone(),
            base: a.scope.base.caller.then(|| a.scope.base.clone()),
            tmp: a.tmp.path.clone(),
            tmp_in: a.tmp.inside,
            started_unix: a
                .started
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            main_pid: a.main_pid,
            owner: a.owner,
            tenant: a.tenant,
            v4: to_rows(&a.keys.v4, |k| (k.slot, k.addr)),
            v6: to_rows(&a.keys.v6, |k| (k.slot, k.addr)),
            unix: a
                .keys
                .unix
                .iter()
                .map(|k| (k.slot, k.path.to_vec()))
                .collect(),
            listen4: to_rows(&a.keys.listen4, |k| (k.slot, k.addr)),
            listen6: to_rows(&a.keys.listen6, |k| (k.slot, k.addr)),
            rules: a
                .meta
                .rules
                .iter()
                .map(|r| (r.id.clone(), r.text.clone()))
                .collect(),
            dns_port: a.dns.as_ref().map(|r| r.port()).or(a.dns_port_before),
            live_grants: a.grants.clone(),
            source: a.source.clone(),
        }
    }

    /// A state file as read back; anything unreadable is an error, and the
    /// caller removes the file (its scope then counts as unattributed).
    pub(super) fn parse(bytes: &[u8]) -> Result<StateFile, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    /// The keys the agent's rules were written under, to remove them
    /// exactly; the cgroup id is the scope's, set once it is opened.
    pub(super) fn keys(&self) -> AgentKeys {
        AgentKeys {
            cgroup_id: 0,
            v4: from_rows(&self.v4, |slot, addr| Net4Key { slot, addr }),
            v6: from_rows(&self.v6, |slot, addr| Net6Key { slot, addr }),
            unix: self
                .unix
                .iter()
                .map(|(slot, p)| {
                    let mut path = [0u8; UNIX_PATH_MAX];
                    let n = p.len().min(UNIX_PATH_MAX);
                    path[..n].copy_from_slice(&p[..n]);
                    UnixKey { slot: *slot, path }
                })
                .collect(),
            listen4: from_rows(&self.listen4, |slot, addr| Net4Key { slot, addr }),
            listen6: from_rows(&self.listen6, |slot, addr| Net6Key { slot, addr }),
        }
    }
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// Trie keys as the file keeps them: (prefix length, slot, address).
fn to_rows<K, const N: usize>(
    keys: &[(u32, K)],
    part: impl Fn(&K) -> (u32, [u8; N]),
) -> Vec<(u32, u32, [u8; N])> {
    keys.iter()
        .map(|(b, k)| {
            let (slot, addr) = part(k);
            (*b, slot, addr)
        })
        .collect()
}

/// The trie keys of rows kept by [`to_rows`].
fn from_rows<K, const N: usize>(
    rows: &[(u32, u32, [u8; N])],
    key: impl Fn(u32, [u8; N]) -> K,
) -> Vec<(u32, K)> {
    rows.iter()
        .map(|&(b, slot, addr)| (b, key(slot, addr)))
        .collect()
}

pub(super) fn state_path(shared: &Shared, id: &str) -> PathBuf {
    shared
        .cfg
        .state_dir
        .join("agents")
        .join(format!("{id}.json"))
}

pub(super) fn persist(shared: &Shared, a: &AgentState) {
    let state = StateFile::of(a);
    let path = state_path(shared, &a.meta.agent.id);
    let tmp = path.with_extension("json.tmp");
    match serde_json::to_vec(&state) {
        Ok(bytes) => {
            if std::fs::write(&tmp, bytes)
                .and_then(|_| std::fs::rename(&tmp, &path))
                .is_err()
            {
                tracing::warn!("could not persist agent state to {}", path.display());
            }
        }
        Err(e) => tracing::warn!("serialising agent state: {e}"),
    }
}

/// Records the agent's main pid once the launcher knows it.
/// Records the agent's main process, which its launcher reported as `pid`
/// in the launcher's own pid namespace. A launcher in a container has
/// another one: the pid is translated to guardd's, through the scope's
/// processes' `NSpid`.
pub fn set_main_pid(shared: &Shared, id: &str, pid: i32, launcher: i32) {
    let launcher_ns = nspid(launcher).unwrap_or_else(|| vec![launcher]);
    if let Ok(mut r) = shared.registry.lock()
        && let Some(a) = r.agents.get_mut(id)
    {
        let scope_pids = a.scope.pids();
        let host = translate_pid(
            &launcher_ns,
            pid,
            scope_pids.iter().filter_map(|p| nspid(*p)),
        );
        if host.is_none() {
            tracing::warn!(
                agent = id,
                pid,
                "the launcher's pid {pid} names no process of the scope"
            );
        }
        a.main_pid = host;
        persist(shared, a);
    }
}

/// A process's pid in each pid namespace it is in, guardd's first
/// (`NSpid` of its status).
fn nspid(pid: i32) -> Option<Vec<i32>> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("NSpid:"))?;
    line.split_whitespace().map(|p| p.parse().ok()).collect()
}

/// The guardd-side pid of the process a launcher whose own `NSpid` is
/// `launcher` calls `reported`: the candidate whose pid at the launcher's
/// namespace level is `reported`.
fn translate_pid(
    launcher: &[i32],
    reported: i32,
    mut candidates: impl Iterator<Item = Vec<i32>>,
) -> Option<i32> {
    let level = launcher.len().checked_sub(1)?;
    if level == 0 {
        return Some(reported);
    }
    candidates
        .find(|ns| ns.get(level) == Some(&reported))
        .and_then(|ns| ns.first().copied())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pid_from_a_launcher_in_a_container_is_translated() {
        // guardd's own namespace: the pid as reported.
        assert_eq!(translate_pid(&[500], 42, std::iter::empty()), Some(42));
        // The launcher is 7 in its container; its child 8 there is 4321
        // here and 1 in the agent's own pid namespace.
        let procs = vec![vec![4320, 7], vec![4321, 8, 1], vec![4400, 9, 2]];
        assert_eq!(
            translate_pid(&[4320, 7], 8, procs.clone().into_iter()),
            Some(4321)
        );
        assert_eq!(translate_pid(&[4320, 7], 99, procs.into_iter()), None);
        assert_eq!(translate_pid(&[], 8, std::iter::empty()), None);
    }

    fn sample() -> StateFile {
        let mut unix = b"\0abstract".to_vec();
        unix.resize(8, 0);
        StateFile {
            id: "0a1b2c3d4e5f".into(),
            name: "claude".into(),
            policy: "dev".into(),
            container: None,
            audit: true,
            slot: 7,
            scope: "agent-0a1b2c3d4e5f".into(),
            base: None,
            tmp: "/tmp/guard-0a1b2c3d4e5f".into(),
            tmp_in: Some(super::super::tmpdir::InContainer {
                launcher_pid: 4100,
                mntns: 4026532001,
            }),
            started_unix: 1_700_000_000,
            main_pid: Some(4242),
            owner: 1000,
            tenant: 77,
            v4: vec![(56, 7, [10, 0, 0, 0])],
            v6: vec![(160, 7, [0xfd; 16])],
            unix: vec![(7, b"/run/x.sock".to_vec()), (7, unix)],
            listen4: vec![(64, 7, [127, 0, 0, 1])],
            listen6: vec![(160, 7, [0; 16])],
            rules: vec![("net.0".into(), "allow tcp 10.0.0.0/24:443".into())],
            dns_port: Some(40053),
            live_grants: super::super::grant::Grants {
                live: vec![super::super::grant::LiveGrant {
                    n: 1,
                    rule: 4,
                    dest: "10.0.0.5:443/tcp".into(),
                    granted_ms: 1_700_000_000_000,
                    until_ms: 1_700_000_900_000,
                    by_uid: 0,
                    by_pid: 9,
                    reason: "ticket".into(),
                    request: None,
                }],
                next: 1,
            },
            source: Source {
                policy_text: "[policy]\nname = \"dev\"\n".into(),
                policy_includes: vec![("/p/team.toml".into(), "[network]\n".into())],
                policy_path: "/p/dev.toml".into(),
                workdir: "/work".into(),
                home: "/root".into(),
                unix_degraded: false,
                other_netns: true,
                start_grants: vec!["read:/data".into()],
            },
        }
    }

    #[test]
    fn a_state_file_reads_back_as_written() {
        let st = sample();
        let bytes = serde_json::to_vec(&st).unwrap();
        assert_eq!(StateFile::parse(&bytes).unwrap(), st);
    }

    #[test]
    fn malformed_state_files_are_errors_not_panics() {
        for bad in [
            &b""[..],
            b"not json",
            b"[]",
            b"{}",
            br#"{"id": 5}"#,
            // Cut short.
            &serde_json::to_vec(&sample()).unwrap()[..40],
        ] {
            assert!(
                StateFile::parse(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        // A wrong type in one field spoils the file.
        let mut v = serde_json::to_value(sample()).unwrap();
        v["slot"] = serde_json::json!("seven");
        assert!(StateFile::parse(&serde_json::to_vec(&v).unwrap()).is_err());
    }

    #[test]
    fn state_written_before_owners_and_listen_rules_still_reads() {
        let mut v = serde_json::to_value(sample()).unwrap();
        let map = v.as_object_mut().unwrap();
        for field in ["owner", "listen4", "listen6", "policy_includes", "tmp_in"] {
            map.remove(field);
        }
        let st = StateFile::parse(&serde_json::to_vec(&v).unwrap()).unwrap();
        // Root's, with no listen keys and no includes.
        assert_eq!(st.owner, 0);
        assert!(st.listen4.is_empty() && st.listen6.is_empty());
        assert!(st.source.policy_includes.is_empty());
        // {tmp} in guardd's own mount namespace, removed by path.
        assert_eq!(st.tmp_in, None);
        assert_eq!(st.v4, sample().v4);
    }

    #[test]
    fn the_kernel_keys_come_back_from_the_state() {
        let st = sample();
        let keys = st.keys();
        assert_eq!(keys.cgroup_id, 0);
        assert_eq!(
            keys.v4,
            vec![(
                56,
                Net4Key {
                    slot: 7,
                    addr: [10, 0, 0, 0]
                }
            )]
        );
        assert_eq!(
            keys.v6,
            vec![(
                160,
                Net6Key {
                    slot: 7,
                    addr: [0xfd; 16]
                }
            )]
        );
        assert_eq!(keys.listen4[0].1.addr, [127, 0, 0, 1]);
        assert_eq!(keys.listen6.len(), 1);
        // Unix paths are NUL-padded to the key's size.
        assert_eq!(keys.unix.len(), 2);
        assert_eq!(keys.unix[0].slot, 7);
        assert_eq!(&keys.unix[0].path[..11], b"/run/x.sock");
        assert!(keys.unix[0].path[11..].iter().all(|b| *b == 0));
        assert_eq!(keys.unix[0].path.len(), UNIX_PATH_MAX);
        // And written back, they are the same lists.
        let back: Vec<(u32, Vec<u8>)> = keys
            .unix
            .iter()
            .map(|k| (k.slot, k.path[..11].to_vec()))
            .collect();
        assert_eq!(back[0], st.unix[0]);
    }

    #[test]
    fn an_over_long_unix_path_is_cut_to_the_key() {
        let mut st = sample();
        st.unix = vec![(1, vec![b'a'; UNIX_PATH_MAX + 10])];
        let keys = st.keys();
        assert!(keys.unix[0].path.iter().all(|b| *b == b'a'));
    }
}
