//! Building the agent's [`LaunchSpec`] from the compiled policy and guardd's
//! open reply: argument and environment vectors, who the agent runs as, the
//! Landlock ruleset, the exec views and the seccomp filter. Everything here
//! runs in the launcher before the agent exists, so every failure is a
//! typed error and nothing has started yet.
//!
//! `guardctl run` is a thin verb over this: it parses its arguments, opens
//! a scope ([`super::session`]), builds the spec here, spawns the agent
//! ([`super::spawn`]) and supervises it ([`super::supervise`]).

use std::{
    ffi::{CString, OsString},
    os::{
        fd::OwnedFd,
        unix::ffi::{OsStrExt, OsStringExt},
    },
    path::{Path, PathBuf},
};

use thiserror::Error;

use super::{Credentials, LaunchSpec, caps, landlock, seccomp, views};
use crate::{
    api::OpenReply,
    policy::{Access, Mode, Origin, Plan, UserSpec},
};

#[derive(Debug, Error)]
pub enum BuildError {
    #[error("an argument contains a NUL byte")]
    Nul,
    #[error("policy user {0:?} does not exist on this host")]
    NoSuchUser(String),
    /// The user database could not be read.
    #[error("{0}")]
    UserLookup(nix::Error),
    #[error("bad user name")]
    BadUserName,
    #[error("exec views: {0}")]
    Views(std::io::Error),
    #[error("Landlock: {0}")]
    Landlock(landlock::LandlockError),
}

/// The scope's descriptors guardd passed with its open reply.
pub struct ScopeFds {
    /// The scope's v2 cgroup directory.
    pub cgroup: OwnedFd,
    /// v1 `cgroup.procs` write descriptors (hybrid hosts).
    pub v1_procs: Vec<OwnedFd>,
    /// The agent's end of its request channel, when guardd made one.
    pub request_channel: Option<OwnedFd>,
}

/// A launch being described: the program, its arguments and environment,
/// the policy it runs under and what the user accepted.
pub struct Launch<'p> {
    program: PathBuf,
    argv: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    plan: &'p Plan,
    audit: bool,
    landlock_degraded_ok: bool,
    exec_views: Option<PathBuf>,
}

impl<'p> Launch<'p> {
    /// `program` is the resolved path that is executed; `argv` is the
    /// command as given (its first element is the agent's `argv[0]`).
    pub fn new(
        program: impl Into<PathBuf>,
        argv: impl IntoIterator<Item = impl Into<OsString>>,
        plan: &'p Plan,
    ) -> Self {
        Launch {
            program: program.into(),
            argv: argv.into_iter().map(Into::into).collect(),
            env: Vec::new(),
            plan,
            audit: false,
            landlock_degraded_ok: false,
            exec_views: None,
        }
    }

    /// The environment the agent inherits; guardd's `TMPDIR`,
    /// `GUARD_AGENT_ID` and `GUARD_REQUEST_FD` replace any given ones.
    pub fn env(mut self, vars: impl IntoIterator<Item = (OsString, OsString)>) -> Self {
        self.env = vars.into_iter().collect();
        self
    }

    /// `--audit`: the filter lets through what audit mode records.
    pub fn audit(mut self, on: bool) -> Self {
        self.audit = on;
        self
    }

    /// The user accepted running without Landlock.
    pub fn accept_landlock_degraded(mut self, ok: bool) -> Self {
        self.landlock_degraded_ok = ok;
        self
    }

    /// The agent's namespaces and views, with `cwd` kept reachable; `None`
    /// runs without them (accepted with `--allow-degraded exec`).
    pub fn exec_views(mut self, cwd: Option<&Path>) -> Self {
        self.exec_views = cwd.map(Path::to_owned);
        self
    }

    /// The spec for the scope guardd opened (`reply`, `fds`).
    pub fn build(self, reply: &OpenReply, fds: ScopeFds) -> Result<LaunchSpec, BuildError> {
        let plan = self.plan;
        let argv = self
            .argv
            .iter()
            .map(|a| cstring(a.as_bytes()))
            .collect::<Result<Vec<_>, _>>()?;
        let request_fd = fds
            .request_channel
            .as_ref()
            .map(|_| crate::api::REQUEST_CHANNEL_FD);
        let envp = envp(self.env, &reply.tmp, &reply.agent.id, request_fd)?;
        let request = landlock_request(plan);
        // The exec views keep the `exec` grants (and library directories)
        // executable-mappable; everything else is noexec.
        let views = match &self.exec_views {
            Some(cwd) => {
                let (exec, write) = (granted(plan, |a| a.exec), granted(plan, |a| a.write));
                let restrict = plan.filesystem.restricted.then_some(views::Restrict {
                    exec_grants: &exec,
                    write_grants: &write,
                });
                Some(views::Views::prepare(restrict, Some(cwd)).map_err(BuildError::Views)?)
            }
            None => None,
        };
        let landlock = match landlock::prepare(&request) {
            Ok((mut prepared, _report)) => {
                if views.as_ref().is_some_and(|v| v.restricts_files()) {
                    prepared.use_private_proc();
                }
                Some(prepared)
            }
            // Without Landlock the other layers still hold; the user
            // accepted that (or the policy does not restrict files), and it
            // was journaled with the start record.
            Err(landlock::LandlockError::Unavailable(_))
                if self.landlock_degraded_ok || !plan.filesystem.restricted =>
            {
                None
            }
            Err(e) => return Err(BuildError::Landlock(e)),
        };
        let seccomp = seccomp::build(&seccomp::Options::for_plan(
            plan,
            self.audit || plan.mode == Mode::Audit,
            !reply.refuse_unix_sockets,
        ));
        let keep_caps = caps::kept(&plan.process.capabilities);
        let credentials = match &plan.process.user {
            None => None,
            Some(u) => Some(resolve_user(u)?),
        };
        Ok(LaunchSpec {
            program: cstring(self.program.as_os_str().as_bytes())?,
            argv,
            envp,
            cgroup: fds.cgroup,
            v1_procs: fds.v1_procs,
            keep_fds: Vec::new(),
            request_channel: fds.request_channel,
            credentials,
            landlock,
            keep_caps,
            seccomp: Some(seccomp),
            views,
        })
    }
}

fn cstring(b: &[u8]) -> Result<CString, BuildError> {
    CString::new(b).map_err(|_| BuildError::Nul)
}

/// `vars` without `TMPDIR`, `GUARD_AGENT_ID` and `GUARD_REQUEST_FD`, then
/// guardd's values of them (`GUARD_REQUEST_FD` only when the agent has a
/// request channel: an inherited one would name a descriptor that is not).
fn envp(
    vars: Vec<(OsString, OsString)>,
    tmp: &str,
    agent: &str,
    request_fd: Option<i32>,
) -> Result<Vec<CString>, BuildError> {
    let mut envp = Vec::new();
    for (k, v) in vars {
        if k == "TMPDIR" || k == "GUARD_AGENT_ID" || k == crate::api::REQUEST_CHANNEL_ENV {
            continue;
        }
        let mut kv = k.into_vec();
        kv.push(b'=');
        kv.extend(v.into_vec());
        envp.push(cstring(&kv)?);
    }
    envp.push(cstring(format!("TMPDIR={tmp}").as_bytes())?);
    envp.push(cstring(format!("GUARD_AGENT_ID={agent}").as_bytes())?);
    if let Some(fd) = request_fd {
        envp.push(cstring(
            format!("{}={fd}", crate::api::REQUEST_CHANNEL_ENV).as_bytes(),
        )?);
    }
    Ok(envp)
}

/// Landlock: files (when the policy restricts them), and scoping of
/// abstract sockets and signals.
fn landlock_request(plan: &Plan) -> landlock::Request {
    let mut grants = Vec::new();
    if plan.filesystem.restricted {
        for r in &plan.filesystem.rules {
            grants.push(landlock::Grant {
                path: r.path.clone(),
                rights: landlock::rights_for(r.access.read, r.access.write, r.access.exec),
                required: matches!(r.origin, Origin::Policy),
                rule: r.rule.clone(),
            });
        }
    }
    landlock::Request {
        restrict_fs: plan.filesystem.restricted,
        grants,
        scope_abstract_unix: !plan.network.unix.iter().any(|(p, _)| p[0] == 0),
        scope_signals: true,
    }
}

/// Paths of the file rules granting `f`.
fn granted(plan: &Plan, f: fn(&Access) -> bool) -> Vec<PathBuf> {
    plan.filesystem
        .rules
        .iter()
        .filter(|r| f(&r.access))
        .map(|r| r.path.clone())
        .collect()
}

/// Who the policy's `user` is on this host. A numeric uid without a passwd
/// entry runs with gid = uid and no other group.
pub fn resolve_user(u: &UserSpec) -> Result<Credentials, BuildError> {
    let user = match u {
        UserSpec::Uid(uid) => {
            match nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(*uid))
                .map_err(BuildError::UserLookup)?
            {
                Some(u) => u,
                None => {
                    return Ok(Credentials {
                        uid: *uid,
                        gid: *uid,
                        groups: vec![*uid],
                    });
                }
            }
        }
        UserSpec::Name(n) => {
            match nix::unistd::User::from_name(n).map_err(BuildError::UserLookup)? {
                Some(u) => u,
                None => return Err(BuildError::NoSuchUser(n.clone())),
            }
        }
    };
    let name = CString::new(user.name.as_bytes()).map_err(|_| BuildError::BadUserName)?;
    let groups = nix::unistd::getgrouplist(&name, user.gid)
        .map(|g| g.into_iter().map(|g| g.as_raw()).collect())
        .unwrap_or_else(|_| vec![user.gid.as_raw()]);
    Ok(Credentials {
        uid: user.uid.as_raw(),
        gid: user.gid.as_raw(),
        groups,
    })
}

/// The home directory for `{home}`: `$HOME`, else the caller's passwd
/// entry, else `/`.
pub fn home_dir() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .or_else(|| {
            // SAFETY: getuid has no preconditions.
            let uid = unsafe { libc::getuid() };
            nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
                .ok()
                .flatten()
                .map(|u| u.dir)
        })
        .unwrap_or_else(|| PathBuf::from("/"))
}

#[cfg(test)]
mod tests {
    use guard_common::{
        AF_INET6, AF_UNIX,
        syscalls::{NR_LISTEN, NR_SOCKET},
    };

    use super::*;
    use crate::policy::{Policy, Vars};

    fn plan(text: &str) -> Plan {
        Policy::parse(text, "t.toml")
            .unwrap()
            .compile(&Vars {
                workdir: "/".into(),
                home: "/root".into(),
                tmp: "/tmp/guard-test".into(),
            })
            .unwrap()
    }

    fn reply(refuse_unix: bool) -> OpenReply {
        serde_json::from_value(serde_json::json!({
            "agent": {"id": "a-1", "name": "t", "policy": "/t.toml"},
            "tmp": "/tmp/guard-agent-tmp",
            "cgroup": "/sys/fs/cgroup/x",
            "v1_procs": 0,
            "degraded": [],
            "refuse_unix_sockets": refuse_unix,
        }))
        .unwrap()
    }

    fn fds() -> ScopeFds {
        ScopeFds {
            cgroup: std::fs::File::open("/").unwrap().into(),
            v1_procs: Vec::new(),
            request_channel: None,
        }
    }

    fn os(pairs: &[(&str, &str)]) -> Vec<(OsString, OsString)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect()
    }

    #[test]
    fn guardd_values_replace_tmpdir_and_agent_id() {
        let e = envp(
            os(&[
                ("A", "1"),
                ("TMPDIR", "/elsewhere"),
                ("GUARD_AGENT_ID", "x"),
                ("GUARD_REQUEST_FD", "9"),
            ]),
            "/tmp/t",
            "a-9",
            None,
        )
        .unwrap();
        let e: Vec<_> = e.iter().map(|c| c.to_str().unwrap()).collect();
        assert_eq!(e, ["A=1", "TMPDIR=/tmp/t", "GUARD_AGENT_ID=a-9"]);
        let e = envp(os(&[("GUARD_REQUEST_FD", "9")]), "/t", "a", Some(3)).unwrap();
        let e: Vec<_> = e.iter().map(|c| c.to_str().unwrap()).collect();
        assert_eq!(e, ["TMPDIR=/t", "GUARD_AGENT_ID=a", "GUARD_REQUEST_FD=3"]);
    }

    #[test]
    fn nul_bytes_are_refused() {
        assert!(matches!(
            envp(os(&[("A", "1\0")]), "/t", "a", None),
            Err(BuildError::Nul)
        ));
        let p = plan("[policy]\nname = \"t\"\n");
        let l = Launch::new("/bin/true", ["tr\0ue"], &p);
        assert!(matches!(
            l.build(&reply(false), fds()),
            Err(BuildError::Nul)
        ));
        let l = Launch::new("/bin/tr\0ue", ["true"], &p);
        assert!(matches!(
            l.build(&reply(false), fds()),
            Err(BuildError::Nul)
        ));
    }

    #[test]
    fn spec_fields_come_from_the_reply_and_the_command() {
        let p = plan("[policy]\nname = \"t\"\n");
        let spec = Launch::new("/bin/echo", ["echo", "hi"], &p)
            .env(os(&[("PATH", "/bin")]))
            .build(&reply(false), fds())
            .unwrap();
        assert_eq!(spec.program.to_str().unwrap(), "/bin/echo");
        let argv: Vec<_> = spec.argv.iter().map(|c| c.to_str().unwrap()).collect();
        assert_eq!(argv, ["echo", "hi"]);
        let envp: Vec<_> = spec.envp.iter().map(|c| c.to_str().unwrap()).collect();
        assert_eq!(
            envp,
            [
                "PATH=/bin",
                "TMPDIR=/tmp/guard-agent-tmp",
                "GUARD_AGENT_ID=a-1"
            ]
        );
        assert!(spec.credentials.is_none());
        assert!(spec.views.is_none());
        assert!(spec.seccomp.is_some());
        assert!(spec.keep_caps.is_empty());
        assert!(spec.v1_procs.is_empty());
    }

    #[test]
    fn unix_sockets_are_filtered_only_when_guardd_says_so() {
        let p = plan("[policy]\nname = \"t\"\n");
        let filter = |refuse_unix: bool, audit: bool| {
            Launch::new("/bin/true", ["true"], &p)
                .audit(audit)
                .build(&reply(refuse_unix), fds())
                .unwrap()
                .seccomp
                .unwrap()
        };
        let socket = |family: u32| [u64::from(family), libc::SOCK_STREAM as u64, 0, 0, 0, 0];
        let (with, without) = (filter(false, false), filter(true, false));
        assert_eq!(with.denies(NR_SOCKET, socket(AF_UNIX)), None);
        assert_eq!(
            without.denies(NR_SOCKET, socket(AF_UNIX)),
            Some(libc::EAFNOSUPPORT)
        );
        assert_eq!(without.denies(NR_SOCKET, socket(AF_INET6)), None);
        // listen stays refused unless the policy or audit mode allows it.
        assert!(with.denies(NR_LISTEN, [3, 5, 0, 0, 0, 0]).is_some());
        let audit = filter(false, true);
        assert_eq!(audit.denies(NR_LISTEN, [3, 5, 0, 0, 0, 0]), None);
    }

    #[test]
    fn user_resolution() {
        let root = resolve_user(&UserSpec::Name("root".into())).unwrap();
        assert_eq!((root.uid, root.gid), (0, 0));
        assert!(root.groups.contains(&0));
        let e = resolve_user(&UserSpec::Name("no-such-user-guard-xyz".into())).unwrap_err();
        assert_eq!(
            e.to_string(),
            "policy user \"no-such-user-guard-xyz\" does not exist on this host"
        );
        // A uid without a passwd entry: gid = uid, no other group.
        let c = resolve_user(&UserSpec::Uid(3_999_999)).unwrap();
        assert_eq!(
            c,
            Credentials {
                uid: 3_999_999,
                gid: 3_999_999,
                groups: vec![3_999_999]
            }
        );
    }

    #[test]
    fn landlock_grants_follow_the_file_rules() {
        let p = plan("[policy]\nname = \"t\"\n");
        let r = landlock_request(&p);
        assert!(!r.restrict_fs && r.grants.is_empty() && r.scope_signals);
        let p = plan("[policy]\nname = \"t\"\n[filesystem]\nwrite = [\"{tmp}\"]\n");
        let r = landlock_request(&p);
        assert!(r.restrict_fs);
        let tmp = r
            .grants
            .iter()
            .find(|g| g.path == Path::new("/tmp/guard-test"))
            .unwrap();
        assert!(tmp.required);
        // `write` implies `read` of the same paths.
        assert_eq!(tmp.rights, landlock::rights_for(true, true, false));
        assert!(granted(&p, |a| a.write).contains(&PathBuf::from("/tmp/guard-test")));
    }
}
