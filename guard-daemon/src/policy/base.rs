//! Built-in bases: rule sets a policy can pull in with `include`, compiled
//! into the binary so that a policy never depends on files beside it.

/// Names accepted by `include`, in the order error messages list them.
pub const BASE_NAMES: [&str; 4] = ["base", "shell", "python", "git"];

const BASES: [(&str, &str); 4] = [
    ("base", include_str!("bases/base.toml")),
    ("shell", include_str!("bases/shell.toml")),
    ("python", include_str!("bases/python.toml")),
    ("git", include_str!("bases/git.toml")),
];

/// The static name and source text of a base.
pub(crate) fn lookup(name: &str) -> Option<(&'static str, &'static str)> {
    BASES.iter().copied().find(|(n, _)| *n == name)
}

/// Every base, name and source text.
pub(crate) fn all() -> impl Iterator<Item = (&'static str, &'static str)> {
    BASES.iter().copied()
}

#[cfg(test)]
mod tests {
    use super::super::parse::Doc;
    use super::super::{Access, Origin, Policy, Vars};
    use super::*;
    use std::path::Path;

    fn vars() -> Vars {
        Vars {
            workdir: "/w".into(),
            home: "/home/u".into(),
            tmp: "/tmp".into(),
        }
    }

    fn with(include: &str) -> super::super::FsPlan {
        let text = format!("[policy]\nname = \"t\"\ninclude = [{include}]\n");
        Policy::parse(&text, "p.toml")
            .unwrap()
            .compile(&vars())
            .unwrap()
            .filesystem
    }

    #[test]
    fn names_match_table() {
        let names: Vec<&str> = BASES.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, BASE_NAMES);
        assert!(lookup("nope").is_none());
    }

    #[test]
    fn every_base_compiles_alone_and_together() {
        for name in BASE_NAMES {
            let plan = with(&format!("{name:?}"));
            assert!(!plan.rules.is_empty(), "{name}");
            assert!(
                plan.rules.iter().all(|r| r.origin == Origin::Base(name)),
                "{name}"
            );
            assert!(
                plan.rules
                    .iter()
                    .all(|r| r.rule.starts_with(&format!("base:{name} "))),
                "{name}"
            );
        }
        let all = BASE_NAMES.map(|n| format!("{n:?}")).join(", ");
        let plan = with(&all);
        assert!(plan.rules.len() > 100);
    }

    #[test]
    fn base_grants_exec_on_loaders_only() {
        let plan = with("\"base\"");
        let access = |p: &str| {
            plan.rules
                .iter()
                .find(|r| r.path == Path::new(p))
                .map(|r| r.access)
        };
        assert_eq!(access("/lib64/ld-linux-x86-64.so.2"), Some(Access::EXEC));
        assert_eq!(access("/usr/lib/x86_64-linux-gnu"), None);
        assert_eq!(access("/usr/lib"), Some(Access::READ));
        assert_eq!(access("/dev/null"), Some(Access::READ | Access::WRITE));
        let execs: Vec<_> = plan.rules.iter().filter(|r| r.access.exec).collect();
        assert_eq!(execs.len(), 3);
        assert!(
            execs
                .iter()
                .all(|r| r.path.ends_with("ld-linux-x86-64.so.2"))
        );
    }

    #[test]
    fn base_grants_what_pip_and_venv_read() {
        let plan = with("\"base\"");
        let covers = |p: &str| plan.rules.iter().any(|r| Path::new(p).starts_with(&r.path));
        for p in ["/etc/os-release", "/etc/debian_version", "/etc/mime.types"] {
            assert!(covers(p), "{p}");
        }
        assert!(!covers("/etc/shadow"));
        assert!(!covers("/etc"));
    }

    #[test]
    fn base_grants_trust_anchors_not_private_keys() {
        let plan = with("\"base\"");
        let covers = |p: &str| plan.rules.iter().any(|r| Path::new(p).starts_with(&r.path));
        assert!(covers("/etc/ssl/certs/ca-certificates.crt"));
        assert!(covers("/usr/share/ca-certificates/mozilla/x.crt"));
        assert!(!covers("/etc/ssl/private/ssl-cert-snakeoil.key"));
        assert!(!covers("/etc/ssl/private"));
        assert!(!covers("/etc/ssl"));
    }

    #[test]
    fn other_bases_contents() {
        let shell = with("\"shell\"");
        assert_eq!(shell.rules.len(), 6 + 2 * 33);
        assert!(
            shell
                .rules
                .iter()
                .all(|r| r.access == Access::READ | Access::EXEC)
        );
        let git = with("\"git\"");
        let home_cfg = git
            .rules
            .iter()
            .find(|r| r.path == Path::new("/home/u/.gitconfig"))
            .unwrap();
        assert_eq!(home_cfg.access, Access::READ);
        let core = git
            .rules
            .iter()
            .find(|r| r.path == Path::new("/usr/lib/git-core"))
            .unwrap();
        assert_eq!(core.access, Access::READ | Access::EXEC);
        let py = with("\"python\"");
        assert!(py.rules.iter().all(|r| !r.path.starts_with("/root")));
        assert_eq!(py.rules.iter().filter(|r| r.access.exec).count(), 3);
    }

    #[test]
    fn bases_may_not_name_or_include() {
        let doc = Doc::new("[policy]\nname = \"x\"\n", "base:x".into());
        let e = doc.parse_base().unwrap_err().to_string();
        assert!(e.starts_with("base:x:1:2: unknown key `policy`"), "{e}");
        let doc = Doc::new("[filesystem]\nallow_write_exec = true\n", "base:x".into());
        assert!(doc.parse_base().is_err());
    }
}
