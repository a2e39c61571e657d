//! An agent's policy as guardctl sent it, and what the monitor needs of
//! it to attribute refused calls.

use std::path::Path;

use crate::{
    launch::seccomp,
    monitor::judge::Judge,
    policy::{Policy, grant::GrantItem},
};

/// Parses a policy as guardctl sent it: include files come from the
/// request (as guardctl read them), never from guardd's file system.
/// `grants`: the `guardctl run --grant` items of the start.
pub(super) fn parse_granted(
    text: &str,
    path: &str,
    includes: &[(String, String)],
    grants: &[String],
) -> Result<Policy, crate::policy::PolicyError> {
    let items = grants
        .iter()
        .map(|g| GrantItem::parse(g))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| crate::policy::PolicyError {
            file: path.to_owned(),
            location: None,
            message: e.to_string(),
        })?;
    Policy::parse_sent_granted(text, path, includes, &items)
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
    Judge {
        fs: Some(plan.filesystem.clone()),
        workdir: workdir.to_owned(),
        seccomp: seccomp::build(&seccomp::Options::for_plan(plan, audit, !unix_degraded)),
        caps: plan
            .process
            .capabilities
            .iter()
            .filter_map(|c| crate::launch::caps::number(c))
            .collect(),
        inotify: plan.process.inotify,
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::policy::Vars;

    const MAIN: &str = "[policy]\nname = \"dev\"\ninclude = [\"./team.toml\"]\n";

    #[test]
    fn includes_come_from_the_request_never_from_guardds_disk() {
        let err = parse_granted(MAIN, "/p/dev.toml", &[], &[]).unwrap_err();
        assert!(err.to_string().contains("not sent by guardctl"), "{err}");
        // Sent under another path, it is not the include either.
        let elsewhere = [(
            "/q/team.toml".to_owned(),
            "[network]\nallow = []\n".to_owned(),
        )];
        assert!(parse_granted(MAIN, "/p/dev.toml", &elsewhere, &[]).is_err());
        let sent = [(
            "/p/team.toml".to_owned(),
            "[network]\nallow = []\n".to_owned(),
        )];
        let policy = parse_granted(MAIN, "/p/dev.toml", &sent, &[]).unwrap();
        assert_eq!(policy.name, "dev");
    }

    fn plan(text: &str) -> crate::policy::Plan {
        parse_granted(text, "/p/j.toml", &[], &[])
            .unwrap()
            .compile(&Vars {
                workdir: PathBuf::from("/w"),
                home: PathBuf::from("/root"),
                tmp: PathBuf::from("/tmp/guard-x"),
            })
            .unwrap()
    }

    #[test]
    fn the_judge_follows_the_plan_and_the_host() {
        let p = plan("[policy]\nname = \"j\"\n[process]\ncapabilities = [\"net_bind_service\"]\n");
        let j = judge_for(&p, Path::new("/w"), false, false);
        assert_eq!(j.workdir, Path::new("/w"));
        assert_eq!(j.fs.as_ref(), Some(&p.filesystem));
        // CAP_NET_BIND_SERVICE.
        assert_eq!(j.caps, vec![10]);
        // Without the Unix hooks the launcher's filter refuses AF_UNIX, and
        // the judge uses that same filter; audit mode opens listen/inotify.
        let degraded = judge_for(&p, Path::new("/w"), true, false);
        assert_ne!(
            format!("{:?}", j.seccomp.insns),
            format!("{:?}", degraded.seccomp.insns)
        );
        let audit = judge_for(&p, Path::new("/w"), false, true);
        assert_ne!(
            format!("{:?}", j.seccomp.insns),
            format!("{:?}", audit.seccomp.insns)
        );
    }
}
