//! What guardctl checks on this host before it starts an agent (and `policy
//! check` checks too, with the same messages), and explanations of why a
//! program could not start under a policy.
//!
//! Nothing here refuses on a guess: the checks of the host (a path the
//! policy names is missing, the policy's user does not exist) are the ones
//! the launcher would fail on anyway, and the explanations of an `exec`
//! failure are computed only after the kernel refused it.

use std::{
    io::{self, Read},
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use super::{LaunchError, LaunchSpec};
use crate::policy::{Access, FsRule, Origin, Plan, Policy, UserSpec, Vars, read_include, resolve};

/// Problems of this host that stop the policy from running, one message
/// each. Rules under `skip_under` (the placeholder for `{tmp}`, which
/// guardd creates only when the agent starts) are not checked.
pub fn host_problems(plan: &Plan, file: &str, skip_under: Option<&Path>) -> Vec<String> {
    let mut out = Vec::new();
    if plan.filesystem.restricted {
        for r in &plan.filesystem.rules {
            if r.origin != Origin::Policy || skip_under.is_some_and(|s| r.path.starts_with(s)) {
                continue;
            }
            match std::fs::metadata(&r.path) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    out.push(format!("{file}: {}", missing_path(r)));
                }
                Err(e) => out.push(format!(
                    "{file}: {}: {}: {e}; guardctl must be able to open every path the policy names",
                    r.rule,
                    r.path.display()
                )),
            }
        }
    }
    if let Some(UserSpec::Name(n)) = &plan.process.user
        && !matches!(nix::unistd::User::from_name(n), Ok(Some(_)))
    {
        out.push(format!(
            "{file}: process.user: user {n:?} does not exist on this host"
        ));
    }
    out
}

/// A rule names a path that does not exist. Landlock binds each rule to an
/// existing file when the agent starts, so such a rule cannot be kept; the
/// message says what to grant instead, never anything wider on its own.
pub fn missing_path(r: &FsRule) -> String {
    let parent = r
        .path
        .ancestors()
        .skip(1)
        .find(|a| a.exists())
        .unwrap_or(Path::new("/"));
    // The same access, on the parent: `write` covers read.
    let mut keys = Vec::new();
    if r.access.write {
        keys.push("write");
    } else if r.access.read || !r.access.exec {
        keys.push("read");
    }
    if r.access.exec {
        keys.push("exec");
    }
    let grants: Vec<String> = keys
        .iter()
        .map(|k| format!("{k} = [\"{}\"]", parent.display()))
        .collect();
    let mut msg = format!(
        "{}: {} does not exist; a rule can only name an existing path (Landlock binds it to \
         the file when the agent starts). Create it before starting the agent, or, if the agent \
         creates it itself, grant its nearest existing parent instead: {}",
        r.rule,
        r.path.display(),
        grants.join(" and ")
    );
    if r.access.exec {
        msg.push_str(
            " (exec on a directory the agent also writes needs allow_write_exec = true: \
             then anything it writes there can be run)",
        );
    }
    msg
}

/// Whether `real` (a resolved path) lies under a rule granting `want`.
fn granted<'a>(plan: &'a Plan, real: &Path, want: Access) -> Option<&'a FsRule> {
    plan.filesystem
        .rules
        .iter()
        .filter(|r| r.access.contains(want) || (want == Access::READ && r.access.exec))
        .find(|r| real.starts_with(resolve(&r.path)))
}

/// The `#!` line of a script: interpreter and optional argument.
fn shebang(path: &Path) -> Option<(PathBuf, Option<String>)> {
    let mut buf = [0u8; 256];
    let n = std::fs::File::open(path).ok()?.read(&mut buf).ok()?;
    let head = buf.get(..n)?.strip_prefix(b"#!")?;
    let line = head.split(|&b| b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?.trim();
    let mut parts = line.splitn(2, [' ', '\t']);
    let interp = PathBuf::from(parts.next()?);
    let arg = parts
        .next()
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(str::to_owned);
    Some((interp, arg))
}

fn shown(asked: &Path, real: &Path) -> String {
    if asked == real {
        real.display().to_string()
    } else {
        format!("{} (resolved from {})", real.display(), asked.display())
    }
}

/// Why `program` (as resolved in PATH from `cmd`) cannot be run under
/// `plan`, if the policy is the reason: the first link of the chain
/// (program, its `#!` interpreter, the program `env` runs) that the policy
/// does not grant `exec` on. `path_env` is the PATH the agent inherits.
pub fn exec_chain_problem(plan: &Plan, program: &Path, path_env: Option<&str>) -> Option<String> {
    if !plan.filesystem.restricted {
        return None;
    }
    let real = std::fs::canonicalize(program).ok()?;
    if granted(plan, &real, Access::EXEC).is_none() {
        return Some(format!(
            "the policy does not grant exec on {}; add it to [filesystem] exec",
            shown(program, &real)
        ));
    }
    let (interp, arg) = shebang(&real)?;
    let interp_real = std::fs::canonicalize(&interp).unwrap_or_else(|_| interp.clone());
    if granted(plan, &interp_real, Access::EXEC).is_none() {
        return Some(format!(
            "{} is a script run by {} (its #! line), and the policy does not grant exec on {}; \
             add it to [filesystem] exec",
            real.display(),
            interp.display(),
            shown(&interp, &interp_real)
        ));
    }
    // `#!/usr/bin/env NAME`: env then runs NAME found in PATH.
    if interp_real.file_name().is_some_and(|n| n == "env")
        && let Some(name) = arg.as_deref().and_then(|a| a.split_whitespace().next())
        && !name.starts_with('-')
    {
        let Some(found) = super::resolve_program(name, path_env) else {
            return Some(format!(
                "{} runs {name} through {} (its #! line), and {name} is not in PATH ({})",
                real.display(),
                interp.display(),
                path_env.unwrap_or("")
            ));
        };
        let found_real = std::fs::canonicalize(&found).unwrap_or_else(|_| found.clone());
        if granted(plan, &found_real, Access::EXEC).is_none() {
            return Some(format!(
                "{} runs {name} through {} (its #! line), found in PATH at {}, and the policy \
                 does not grant exec on it; add it to [filesystem] exec",
                real.display(),
                interp.display(),
                shown(&found, &found_real)
            ));
        }
    }
    None
}

/// pyenv's shims are bash scripts that run `pyenv`, which runs the real
/// interpreter: granting the shim is not enough, and granting pyenv's tree
/// is more than the agent needs.
fn pyenv_shim(program: &Path) -> Option<String> {
    let is_shim = program.components().any(|c| c.as_os_str() == ".pyenv")
        && program.parent().is_some_and(|d| d.ends_with("shims"));
    is_shim.then(|| {
        format!(
            "{} is a pyenv shim: it runs pyenv, which runs the real interpreter under \
             ~/.pyenv/versions; run that interpreter directly (`pyenv which {}` prints it) and \
             grant exec on it and read on its version directory",
            program.display(),
            program
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        )
    })
}

/// Warnings before the agent starts: problems the agent will meet after
/// its first `exec`, which the kernel reports only as "Permission denied"
/// from inside the agent. `args` are the command's arguments after the
/// program; `workdir` resolves relative ones.
pub fn start_warnings(
    plan: &Plan,
    program: &Path,
    args: &[String],
    workdir: &Path,
    path_env: Option<&str>,
) -> Vec<String> {
    let mut out = Vec::new();
    if !plan.filesystem.restricted {
        return out;
    }
    let Ok(real) = std::fs::canonicalize(program) else {
        return out;
    };
    // A program the policy does not grant (a shim included) is explained
    // when its exec fails.
    if granted(plan, &real, Access::EXEC).is_some() {
        if let Some(p) = exec_chain_problem(plan, program, path_env) {
            out.push(format!("{} will not run: {p}", program.display()));
        }
        if let Some(hint) = pyenv_shim(program) {
            out.push(hint);
        }
    }
    // An interpreter's script: the first argument that names an existing
    // file (a script the program reads).
    if let Some(script) = args.iter().find(|a| !a.starts_with('-')) {
        let p = workdir.join(script);
        if p.is_file()
            && let Ok(script_real) = std::fs::canonicalize(&p)
            && granted(plan, &script_real, Access::READ).is_none()
        {
            out.push(format!(
                "{script} is not readable under the policy ({}); add it or its directory to \
                 [filesystem] read",
                script_real.display()
            ));
        }
    }
    out
}

/// Why the kernel refused to run `program` (as typed: `cmd`): the policy
/// link that is missing, a directory the agent's user cannot search, or
/// the plain error.
pub fn explain_exec_failure(
    plan: &Plan,
    cmd: &str,
    program: &Path,
    path_env: Option<&str>,
    uid: Option<(u32, u32)>,
    err: &io::Error,
) -> String {
    let policy_errno = matches!(err.raw_os_error(), Some(libc::EACCES | libc::EPERM));
    if policy_errno && let Some(p) = exec_chain_problem(plan, program, path_env) {
        return match pyenv_shim(program) {
            Some(hint) => format!("cannot run {cmd}: {p}. {hint}"),
            None => format!("cannot run {cmd}: {p}"),
        };
    }
    if policy_errno
        && let Some((uid, gid)) = uid
        && uid != 0
    {
        for dir in program.ancestors().skip(1) {
            let Ok(m) = std::fs::metadata(dir) else {
                continue;
            };
            let bits = if m.uid() == uid {
                m.mode() >> 6
            } else if m.gid() == gid {
                m.mode() >> 3
            } else {
                m.mode()
            };
            if bits & 0o1 == 0 {
                return format!(
                    "cannot run {cmd}: the agent's user (uid {uid}) cannot search the directory \
                     {} (mode {:o}, owner uid {}); this is the host's file permissions, not the \
                     policy",
                    dir.display(),
                    m.mode() & 0o7777,
                    m.uid()
                );
            }
        }
    }
    format!("cannot run {cmd}: {} ({err})", program.display())
}

/// Agent names guardd accepts: 1-64 bytes, no control characters (names
/// end up in terminal output and the journal).
pub fn agent_name_problem(name: &str) -> Option<String> {
    if !name.is_empty() && name.len() <= 64 && !name.chars().any(char::is_control) {
        return None;
    }
    Some(format!(
        "invalid agent name {name:?}: expected 1-64 bytes of printable characters (letters, \
         digits, spaces, punctuation, any printable Unicode); control characters such as \
         newlines and tabs are refused"
    ))
}

/// A policy file read for a launch: its text (sent to guardd), its real
/// path (includes are resolved from its directory, as guardd resolves
/// them) and the parsed policy.
pub struct PolicyFile {
    pub text: String,
    pub path: PathBuf,
    pub policy: Policy,
}

#[derive(Debug, thiserror::Error)]
pub enum PolicyFileError {
    #[error("{file}: cannot read: {source}")]
    Read { file: String, source: io::Error },
    /// Every problem of the policy, one message each.
    #[error("{}", .0.join("\n"))]
    Invalid(Vec<String>),
}

impl PolicyFile {
    /// `file` names the policy in messages.
    pub fn read(path: &Path, file: &str) -> Result<PolicyFile, PolicyFileError> {
        PolicyFile::read_granted(path, file, &[])
    }

    /// As [`PolicyFile::read`], with `guardctl run --grant` items added.
    pub fn read_granted(
        path: &Path,
        file: &str,
        grants: &[crate::policy::grant::GrantItem],
    ) -> Result<PolicyFile, PolicyFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| PolicyFileError::Read {
            file: file.to_owned(),
            source,
        })?;
        let real = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
        let dir = real.parent().unwrap_or(Path::new("/")).to_owned();
        let policy = Policy::parse_granted_with(&text, file, &dir, &read_include, grants).map_err(
            |errs| PolicyFileError::Invalid(errs.iter().map(|e| e.to_string()).collect()),
        )?;
        Ok(PolicyFile {
            text,
            path: real,
            policy,
        })
    }
}

impl PolicyFile {
    /// A named policy as guardd sent it (`guardctl run --policy-name`):
    /// parsed from its text and includes, nothing read from this host.
    pub fn from_named(reply: &crate::api::PolicyReply) -> Result<PolicyFile, PolicyFileError> {
        let policy =
            Policy::parse_sent_all(&reply.text, &reply.path, &reply.includes).map_err(|errs| {
                PolicyFileError::Invalid(errs.iter().map(|e| e.to_string()).collect())
            })?;
        Ok(PolicyFile {
            text: reply.text.clone(),
            path: PathBuf::from(&reply.path),
            policy,
        })
    }

    /// The policy of `guardctl run --learn` without `--policy`, named after
    /// the agent (characters a policy name cannot hold become `-`): nothing
    /// allowed, so every network use is recorded (audit), and no file
    /// rules, so file and program use is observed rather than refused.
    pub fn learn_empty(agent: &str) -> Result<PolicyFile, PolicyFileError> {
        // A policy name holds only characters that need no quoting.
        let text = format!(
            "# guardctl run --learn without --policy: nothing is allowed; everything is recorded\n\
             [policy]\nname = \"{}\"\n",
            crate::policy::draft::policy_name(agent)
        );
        let file = "<learn: empty policy>";
        let policy = Policy::parse(&text, file)
            .map_err(|e| PolicyFileError::Invalid(vec![e.to_string()]))?;
        Ok(PolicyFile {
            text,
            path: PathBuf::from(file),
            policy,
        })
    }
}

/// What `{tmp}` stands for before the agent starts (guardd creates the
/// agent's directory only then): rules under it are not checked on the
/// host, and `policy check` shows it as is.
pub const TMP_PLACEHOLDER: &str = "/tmp/guard-<agent>";

/// Compiles the policy with `{tmp}` standing for a placeholder (guardd
/// creates the real one only when the agent starts) and checks this host
/// as `guardctl policy check` does, so that every error is reported before
/// anything starts.
pub fn check_plan(policy: &Policy, vars: &Vars, file: &str) -> Result<Plan, Vec<String>> {
    let plan = policy
        .compile_all(vars)
        .map_err(|errs| errs.iter().map(|e| e.to_string()).collect::<Vec<_>>())?;
    let problems = host_problems(&plan, file, Some(&vars.tmp));
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(plan)
}

/// Why `spawn` failed, for people: a failed exec is explained against the
/// policy (`cmd` as given, resolved to `program` in `path_env`).
pub fn explain_spawn_failure(
    e: &LaunchError,
    spec: &LaunchSpec,
    plan: &Plan,
    cmd: &str,
    program: &Path,
    path_env: Option<&str>,
) -> String {
    if spec.views.is_some() && e.is_exec_confinement() {
        format!(
            "{e}. Refusing to start; pass --allow-degraded exec to run without the agent's namespaces and views (the routes around `exec`, metadata, IPC and cgroup isolation)"
        )
    } else if let LaunchError::Exec { source, .. } = e {
        let ids = spec.credentials.as_ref().map(|c| (c.uid, c.gid));
        explain_exec_failure(plan, cmd, program, path_env, ids, source)
    } else {
        e.to_string()
    }
}

/// Layers `--allow-degraded` accepts running without (`all`: every one).
pub const DEGRADABLE: [&str; 5] = ["landlock", "unix", "limits", "exec", "all"];

#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    #[error("--allow-degraded: unknown layer {0:?} (expected landlock, unix, limits, exec or all)")]
    UnknownLayer(String),
    #[error(
        "layer `landlock` cannot be enforced on this host ({0}), and the policy restricts files and programs. \
         Refusing to start; pass --allow-degraded landlock to run without file and exec rules"
    )]
    Landlock(io::Error),
}

/// The layers the user accepted running without.
#[derive(Clone, Debug, Default)]
pub struct Accepted(Vec<String>);

impl Accepted {
    pub fn parse(layers: &[String]) -> Result<Accepted, LayerError> {
        if let Some(bad) = layers.iter().find(|a| !DEGRADABLE.contains(&a.as_str())) {
            return Err(LayerError::UnknownLayer(bad.clone()));
        }
        Ok(Accepted(layers.to_vec()))
    }

    pub fn accepts(&self, layer: &str) -> bool {
        self.0.iter().any(|a| a == layer || a == "all")
    }
}

/// What the launcher can enforce here, found before a scope is asked for.
pub struct HostLayers {
    /// For guardd's start record (and, those saying a layer is not
    /// enforced, for the user).
    pub notes: Vec<String>,
    /// The agent's namespaces and views can be set up (or were not
    /// accepted to be missing, so the launch stops where they fail).
    pub exec_views: bool,
}

/// Landlock is checked before asking for a scope, so a host that cannot
/// enforce the policy's file rules is refused without side effects.
///
/// The agent's namespaces and views (private mount, pid, IPC and cgroup
/// namespaces; read-only cgroup file systems; with a `[filesystem]` table
/// also read-only and noexec views) hold whatever the policy: they are part
/// of enforcing `exec`, the file grants and the scope itself. Without
/// acceptance a failure stops the launch at the step that failed; with it,
/// it is probed here so that the start record tells the truth.
pub fn host_layers(fs_restricted: bool, accepted: &Accepted) -> Result<HostLayers, LayerError> {
    let mut notes = Vec::new();
    match super::landlock::abi_version() {
        Ok(abi) => notes.push(format!("landlock ABI {abi}")),
        Err(e) if fs_restricted && !accepted.accepts("landlock") => {
            return Err(LayerError::Landlock(e));
        }
        Err(e) => notes.push(format!(
            "landlock unavailable ({e}); file and exec rules NOT enforced (accepted)"
        )),
    }
    if !fs_restricted {
        notes.push("policy has no [filesystem] table: file access is not restricted".into());
    }
    let mut exec_views = true;
    if accepted.accepts("exec")
        && let Err(e) = super::views::probe()
    {
        exec_views = false;
        notes.push(format!(
            "exec confinement unavailable ({e}); the loader, dlopen and memfd routes around `exec`, \
             metadata changes outside the write grants, host IPC, outside processes and cgroup moves are NOT closed (accepted)"
        ));
    }
    Ok(HostLayers { notes, exec_views })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Policy, Vars};

    fn plan(fs: &str) -> Plan {
        Policy::parse(
            &format!("[policy]\nname = \"t\"\n[filesystem]\n{fs}\n"),
            "p.toml",
        )
        .unwrap()
        .compile(&Vars {
            workdir: "/nonexistent-guard/w".into(),
            home: "/root".into(),
            tmp: "/tmp/guard-x".into(),
        })
        .unwrap()
    }

    #[test]
    fn missing_paths_name_the_parent_with_the_same_access() {
        let p = plan(
            "read = [\"{workdir}/a\", \"/nonexistent-guard/b\", \"{tmp}/c\"]\n\
             exec = [\"/nonexistent-guard/b\", \"/usr/bin/true\"]\nwrite = [\"/nonexistent-guard/d/e\"]",
        );
        let probs = host_problems(&p, "p.toml", Some(Path::new("/tmp/guard-x")));
        assert_eq!(probs.len(), 3, "{probs:#?}");
        assert!(
            probs[0]
                .starts_with("p.toml: filesystem.read[0]: /nonexistent-guard/w/a does not exist")
        );
        assert!(
            probs[0].ends_with("grant its nearest existing parent instead: read = [\"/\"]"),
            "{}",
            probs[0]
        );
        assert!(
            probs[1].contains("instead: read = [\"/\"] and exec = [\"/\"] (exec on"),
            "{}",
            probs[1]
        );
        assert!(
            probs[2].contains("instead: write = [\"/\"]"),
            "{}",
            probs[2]
        );
    }

    #[test]
    fn agent_names() {
        assert!(agent_name_problem("my agent (2)").is_none());
        assert!(agent_name_problem("é").is_none());
        assert!(agent_name_problem("").is_some());
        assert!(agent_name_problem(&"x".repeat(65)).is_some());
        let e = agent_name_problem("a\tb").unwrap();
        assert!(e.contains("control characters"), "{e}");
    }

    #[test]
    fn shebangs_and_chains() {
        let d = tempfile::tempdir().unwrap();
        let s = d.path().join("s");
        std::fs::write(&s, "#!/usr/bin/env  python3 -u\nx").unwrap();
        assert_eq!(
            shebang(&s),
            Some((PathBuf::from("/usr/bin/env"), Some("python3 -u".into())))
        );
        std::fs::write(&s, "\x7fELF").unwrap();
        assert_eq!(shebang(&s), None);
        let p = plan("exec = [\"/usr/bin/true\"]");
        assert_eq!(
            exec_chain_problem(&p, Path::new("/usr/bin/true"), None),
            None
        );
        let e = exec_chain_problem(&p, Path::new("/usr/bin/env"), None).unwrap();
        assert!(
            e.starts_with("the policy does not grant exec on /usr/bin/env"),
            "{e}"
        );
    }

    #[test]
    fn degraded_layers() {
        let a = Accepted::parse(&["exec".into(), "unix".into()]).unwrap();
        assert!(a.accepts("exec") && a.accepts("unix") && !a.accepts("landlock"));
        let all = Accepted::parse(&["all".into()]).unwrap();
        assert!(all.accepts("landlock") && all.accepts("limits"));
        assert!(!Accepted::parse(&[]).unwrap().accepts("exec"));
        let e = Accepted::parse(&["exec".into(), "seccomp".into()]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "--allow-degraded: unknown layer \"seccomp\" (expected landlock, unix, limits, exec or all)"
        );
    }
}
