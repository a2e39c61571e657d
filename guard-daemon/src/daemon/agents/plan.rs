//! An agent's policy as guardctl sent it, and what the monitor needs of
//! it to attribute refused calls.

use std::path::Path;

use crate::{launch::seccomp, monitor::judge::Judge, policy::Policy};

/// Parses a policy as guardctl sent it: include files come from the
/// request (as guardctl read them), never from guardd's file system.
pub(super) fn parse_sent(
    text: &str,
    path: &str,
    includes: &[(String, String)],
) -> Result<Policy, crate::policy::PolicyError> {
    let dir = std::path::Path::new(path)
        .parent()
        .unwrap_or(std::path::Path::new("/"));
    Policy::parse_all_with(text, path, dir, &|p: &std::path::Path| {
        includes
            .iter()
            .find(|(k, _)| std::path::Path::new(k) == p)
            .map(|(_, t)| t.clone())
            .ok_or_else(|| "not sent by guardctl".to_owned())
    })
    .map_err(|errs| crate::policy::first_error(errs, path))
}

/// The policy pieces the monitor needs to attribute refused calls: the
/// same seccomp filter the launcher installs (its socket families depend on
/// whether the Unix hooks work here), the file grants, the kept capabilities.
pub(super) fn judge_for(
    plan: &crate::policy::Plan,
    workdir: &Path,
    unix_degraded: bool,
    audit: bool,
) -> Judge {
    let mut families = vec![seccomp::AF_INET, seccomp::AF_INET6, seccomp::AF_NETLINK];
    if !unix_degraded {
        families.push(seccomp::AF_UNIX);
    }
    Judge {
        fs: Some(plan.filesystem.clone()),
        workdir: workdir.to_owned(),
        seccomp: seccomp::build(&seccomp::Options {
            socket_families: families,
            listen: plan.network.has_listen_rules() || audit,
            inotify: plan.process.inotify || audit,
        }),
        caps: plan
            .process
            .capabilities
            .iter()
            .filter_map(|c| crate::launch::caps::number(c))
            .collect(),
    }
}
