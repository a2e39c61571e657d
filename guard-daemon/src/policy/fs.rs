//! Filesystem rules: path templates with `{workdir}`, `{home}` and `{tmp}`,
//! their expansion, and the write-and-execute check.

use std::collections::HashMap;
use std::ffi::OsString;
use std::ops::BitOr;
use std::path::{Component, Path, PathBuf};

use toml::Spanned;

use super::parse::{Doc, PathList};
use super::{Origin, PolicyError, Src, Vars};

/// Access granted on a path hierarchy (or a single file).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct Access {
    pub read: bool,
    pub write: bool,
    /// execve of files; mapping shared libraries needs `read` only.
    pub exec: bool,
}

impl Access {
    pub const READ: Access = Access {
        read: true,
        write: false,
        exec: false,
    };
    pub const WRITE: Access = Access {
        read: false,
        write: true,
        exec: false,
    };
    pub const EXEC: Access = Access {
        read: false,
        write: false,
        exec: true,
    };

    pub fn union(self, other: Access) -> Access {
        Access {
            read: self.read || other.read,
            write: self.write || other.write,
            exec: self.exec || other.exec,
        }
    }

    pub fn contains(self, other: Access) -> bool {
        self.union(other) == self
    }
}

impl BitOr for Access {
    type Output = Access;
    fn bitor(self, rhs: Access) -> Access {
        self.union(rhs)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsRule {
    /// Absolute, without `.`, `..`, repeated or trailing slashes.
    pub path: PathBuf,
    pub access: Access,
    /// `Origin::Policy` when the policy itself names the path, even if a
    /// base named it first.
    pub origin: Origin,
    /// Id of the first entry naming the path: `filesystem.read[2]` or
    /// `base:python filesystem.exec[0]`.
    pub rule: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FsPlan {
    /// One rule per path, in the order the paths first appear (bases first).
    pub rules: Vec<FsRule>,
    /// Whether file access is restricted at all (a `[filesystem]` table
    /// exists); set by `Policy::compile`.
    pub restricted: bool,
    pub allow_write_exec: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Var {
    Workdir,
    Home,
    Tmp,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Lit(String),
    Var(Var),
}

/// One validated entry of a `read`, `write` or `exec` list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FsEntry {
    raw: String,
    pieces: Vec<Piece>,
    access: Access,
    src: Src,
    id: String,
}

pub(crate) fn validate(
    doc: &Doc,
    read: PathList,
    write: PathList,
    exec: PathList,
    origin: Origin,
    out: &mut Vec<FsEntry>,
    errs: &mut Vec<PolicyError>,
) {
    // `write` implies `read` of the same tree: a write-only directory is
    // almost never what a user means (a write-only TMPDIR makes Python's
    // tempfile fall back to the working directory, and listing it fails),
    // and reading what the agent may overwrite anyway reveals nothing new.
    let lists: [(PathList, Access, &str); 3] = [
        (read, Access::READ, "read"),
        (write, Access::WRITE | Access::READ, "write"),
        (exec, Access::EXEC, "exec"),
    ];
    for (list, access, key) in lists {
        for (i, path) in list.unwrap_or_default().into_iter().enumerate() {
            match entry(doc, path, access, origin, key, i) {
                Ok(e) => out.push(e),
                Err(e) => errs.push(e),
            }
        }
    }
}

fn entry(
    doc: &Doc,
    path: Spanned<String>,
    access: Access,
    origin: Origin,
    key: &str,
    i: usize,
) -> Result<FsEntry, PolicyError> {
    let start = path.span().start;
    let raw = path.into_inner();
    let pieces = parse_template(&raw).map_err(|m| doc.error_at(start, m))?;
    Ok(FsEntry {
        raw,
        pieces,
        access,
        src: doc.src(origin, start),
        id: doc.rule_id(origin, &format!("filesystem.{key}"), i),
    })
}

const KNOWN_VARS: &str = "{workdir}, {home}, {tmp}";

fn parse_template(s: &str) -> Result<Vec<Piece>, String> {
    if s.is_empty() {
        return Err(String::from("empty path: expected an absolute path"));
    }
    if s.contains('\0') {
        return Err(format!("path {s:?} contains a NUL byte"));
    }
    let mut pieces = Vec::new();
    let mut rest = s;
    while let Some(open) = rest.find('{') {
        let (lit, after) = rest.split_at(open);
        if !lit.is_empty() {
            pieces.push(Piece::Lit(lit.to_owned()));
        }
        let after = after.get(1..).unwrap_or_default();
        let Some((name, tail)) = after.split_once('}') else {
            return Err(format!(
                "unterminated variable in path {s:?}: expected `}}` (known variables: {KNOWN_VARS})"
            ));
        };
        let var = match name {
            "workdir" => Var::Workdir,
            "home" => Var::Home,
            "tmp" => Var::Tmp,
            _ => {
                return Err(format!(
                    "unknown variable `{{{name}}}` in path {s:?}: expected one of {KNOWN_VARS}"
                ));
            }
        };
        pieces.push(Piece::Var(var));
        rest = tail;
    }
    if !rest.is_empty() {
        pieces.push(Piece::Lit(rest.to_owned()));
    }
    if let Some(Piece::Lit(first)) = pieces.first()
        && !first.starts_with('/')
    {
        return Err(format!(
            "path {s:?} is not absolute: expected a path starting with \"/\" or with a \
             variable such as {{workdir}}"
        ));
    }
    Ok(pieces)
}

fn expand(e: &FsEntry, vars: &Vars) -> Result<PathBuf, String> {
    let mut os = OsString::new();
    for piece in &e.pieces {
        match piece {
            Piece::Lit(s) => os.push(s),
            Piece::Var(Var::Workdir) => os.push(&vars.workdir),
            Piece::Var(Var::Home) => os.push(&vars.home),
            Piece::Var(Var::Tmp) => os.push(&vars.tmp),
        }
    }
    let path = PathBuf::from(os);
    if !path.is_absolute() {
        return Err(format!(
            "path {path:?} (expanded from {:?}) is not absolute",
            e.raw
        ));
    }
    // Rules are compared component-wise below; `..` would defeat that, and
    // Landlock resolves it anyway.
    if path.components().any(|c| c == Component::ParentDir) {
        return Err(format!(
            "path {path:?} (expanded from {:?}) contains \"..\": write the path without it",
            e.raw
        ));
    }
    // Collecting components drops `.`, repeated and trailing slashes.
    Ok(path.components().collect())
}

/// A path's merged rule and the first entries that granted write and exec,
/// kept to explain a conflict.
struct Merged {
    rule: FsRule,
    write_by: Option<usize>,
    exec_by: Option<usize>,
}

pub(crate) fn compile(
    entries: &[FsEntry],
    allow_write_exec: bool,
    vars: &Vars,
    file: &str,
) -> Result<FsPlan, Vec<PolicyError>> {
    let mut merged: Vec<Merged> = Vec::new();
    let mut index: HashMap<PathBuf, usize> = HashMap::new();
    let mut errs = Vec::new();
    for (ei, e) in entries.iter().enumerate() {
        let path = match expand(e, vars) {
            Ok(p) => p,
            Err(m) => {
                errs.push(e.src.error(file, m));
                continue;
            }
        };
        let k = match index.get(&path) {
            Some(&k) => k,
            None => {
                index.insert(path.clone(), merged.len());
                merged.push(Merged {
                    rule: FsRule {
                        path,
                        access: Access::default(),
                        origin: e.src.origin,
                        rule: e.id.clone(),
                    },
                    write_by: None,
                    exec_by: None,
                });
                merged.len() - 1
            }
        };
        let Some(m) = merged.get_mut(k) else {
            continue;
        };
        m.rule.access = m.rule.access | e.access;
        if e.src.origin == Origin::Policy {
            m.rule.origin = Origin::Policy;
        }
        if e.access.write && m.write_by.is_none() {
            m.write_by = Some(ei);
        }
        if e.access.exec && m.exec_by.is_none() {
            m.exec_by = Some(ei);
        }
    }
    if !errs.is_empty() {
        return Err(errs);
    }
    if !allow_write_exec {
        check_write_exec(entries, &merged, file).map_err(|e| vec![e])?;
    }
    Ok(FsPlan {
        rules: merged.into_iter().map(|m| m.rule).collect(),
        restricted: false,
        allow_write_exec,
    })
}

/// Refuses a path that is writable and executable through the same rule or
/// through a rule on an ancestor: a file written there could be run.
///
/// Paths are compared as they resolve on this host, not as written (issue 8,
/// section 6): Landlock grants the file a path resolves to, so `write =
/// ["/x/wx"]` with `exec = ["/x/wxlink"]`, a symlink to it, grants write and
/// execute on one directory.
fn check_write_exec(entries: &[FsEntry], merged: &[Merged], file: &str) -> Result<(), PolicyError> {
    let real: Vec<PathBuf> = merged.iter().map(|m| resolve(&m.rule.path)).collect();
    let with = |f: fn(&Merged) -> Option<usize>| -> HashMap<&Path, (usize, usize)> {
        merged
            .iter()
            .zip(&real)
            .enumerate()
            .filter_map(|(k, (m, r))| f(m).map(|ei| (r.as_path(), (ei, k))))
            .collect()
    };
    let writers = with(|m| m.write_by);
    let execs = with(|m| m.exec_by);
    for (k, (m, r)) in merged.iter().zip(&real).enumerate() {
        if let Some(e) = m.exec_by
            && let Some((w, wk)) = r.as_path().ancestors().find_map(|a| writers.get(a))
        {
            return Err(conflict(
                entries,
                &described(merged, &real, k, *wk),
                *w,
                e,
                file,
            ));
        }
        if let Some(w) = m.write_by
            && let Some((e, ek)) = r.as_path().ancestors().skip(1).find_map(|a| execs.get(a))
        {
            return Err(conflict(
                entries,
                &described(merged, &real, k, *ek),
                w,
                *e,
                file,
            ));
        }
    }
    Ok(())
}

/// What a path names on this host: symlinks resolved as far as the path
/// exists, the rest appended as written (a path created later cannot be
/// known now; Landlock would refuse a rule on it anyway).
pub fn resolve(path: &Path) -> PathBuf {
    let mut rest: Vec<&std::ffi::OsStr> = Vec::new();
    let mut cur = path;
    loop {
        if let Ok(real) = std::fs::canonicalize(cur) {
            let mut out = real;
            out.extend(rest.iter().rev());
            return out;
        }
        match (cur.parent(), cur.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name);
                cur = parent;
            }
            _ => return path.to_owned(),
        }
    }
}

/// The conflicting path as the message shows it: as written, plus what it
/// and the other rule's path resolve to when a symlink made them meet.
fn described(merged: &[Merged], real: &[PathBuf], k: usize, other: usize) -> String {
    let path = &merged[k].rule.path;
    let other_path = &merged[other].rule.path;
    // As written, the paths already overlap: the resolution adds nothing.
    if path.starts_with(other_path) || other_path.starts_with(path) {
        return format!("{path:?}");
    }
    format!(
        "{path:?} (resolving to {:?}, under {other_path:?} which resolves to {:?})",
        real[k], real[other]
    )
}

fn conflict(entries: &[FsEntry], path: &str, w: usize, e: usize, file: &str) -> PolicyError {
    let (Some(we), Some(ee)) = (entries.get(w), entries.get(e)) else {
        return PolicyError {
            file: file.to_owned(),
            location: None,
            message: format!("{path} is both writable and executable"),
        };
    };
    // Point at the entry the policy author controls; of two such entries,
    // at the later one, which completed the conflict.
    let at = match (we.src.origin, ee.src.origin) {
        (Origin::Policy, Origin::Policy) => {
            if we.src.loc > ee.src.loc {
                we
            } else {
                ee
            }
        }
        (Origin::Policy, _) => we,
        _ => ee,
    };
    at.src.error(
        file,
        format!(
            "{path} is both writable and executable (a written file could be run); \
             set allow_write_exec = true to accept this (write: {}, exec: {})",
            we.id, ee.id
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::super::{Policy, Vars};
    use super::*;

    fn vars() -> Vars {
        Vars {
            workdir: "/home/u/proj".into(),
            home: "/home/u".into(),
            tmp: "/tmp/agent".into(),
        }
    }

    fn parse(fs: &str) -> Result<Policy, PolicyError> {
        Policy::parse(
            &format!("[policy]\nname = \"t\"\n[filesystem]\n{fs}\n"),
            "p.toml",
        )
    }

    fn compile(fs: &str) -> Result<FsPlan, PolicyError> {
        parse(fs)?.compile(&vars()).map(|p| p.filesystem)
    }

    fn err(fs: &str) -> String {
        compile(fs).unwrap_err().to_string()
    }

    fn summary(plan: &FsPlan) -> Vec<(String, &str, String)> {
        plan.rules
            .iter()
            .map(|r| {
                let a = r.access;
                let bits = format!(
                    "{}{}{}",
                    if a.read { "r" } else { "-" },
                    if a.write { "w" } else { "-" },
                    if a.exec { "x" } else { "-" }
                );
                (r.path.display().to_string(), r.rule.as_str(), bits)
            })
            .collect()
    }

    #[test]
    fn expands_normalises_and_merges() {
        let plan = compile(
            r#"read = ["{workdir}", "/usr/share/zoneinfo/", "/usr//lib/./x", "{home}/.cfg"]
write = ["{workdir}/", "{tmp}"]
exec = ["/usr/bin/python3"]"#,
        )
        .unwrap();
        assert_eq!(
            summary(&plan),
            [
                ("/home/u/proj".into(), "filesystem.read[0]", "rw-".into()),
                (
                    "/usr/share/zoneinfo".into(),
                    "filesystem.read[1]",
                    "r--".into()
                ),
                ("/usr/lib/x".into(), "filesystem.read[2]", "r--".into()),
                ("/home/u/.cfg".into(), "filesystem.read[3]", "r--".into()),
                // `write` implies `read`.
                ("/tmp/agent".into(), "filesystem.write[1]", "rw-".into()),
                (
                    "/usr/bin/python3".into(),
                    "filesystem.exec[0]",
                    "--x".into()
                ),
            ]
        );
        assert!(plan.rules.iter().all(|r| r.origin == Origin::Policy));
        assert!(!plan.allow_write_exec);
    }

    #[test]
    fn template_errors_point_at_the_entry() {
        let e = parse("read = [\"/a\", \"{foo}/x\"]")
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "p.toml:4:15: unknown variable `{foo}` in path \"{foo}/x\": expected one of {workdir}, {home}, {tmp}"
        );
        assert!(
            parse("read = [\"{workdir\"]")
                .unwrap_err()
                .message
                .contains("unterminated")
        );
        assert!(
            parse("read = [\"{}\"]")
                .unwrap_err()
                .message
                .contains("unknown variable `{}`")
        );
        let e = parse("write = [\"rel/x\"]").unwrap_err().to_string();
        assert!(
            e.starts_with("p.toml:4:10: path \"rel/x\" is not absolute"),
            "{e}"
        );
        assert!(
            parse("read = [\"x{workdir}\"]")
                .unwrap_err()
                .message
                .contains("not absolute")
        );
        assert!(
            parse("read = [\"\"]")
                .unwrap_err()
                .message
                .contains("empty path")
        );
        assert!(
            parse("read = [\"/a\\u0000\"]")
                .unwrap_err()
                .message
                .contains("NUL")
        );
        assert!(
            parse("read = \"/a\"")
                .unwrap_err()
                .message
                .contains("expected a sequence")
        );
        let e = err("read = [\"/a/../etc\"]");
        assert!(e.starts_with("p.toml:4:9: path \"/a/../etc\""), "{e}");
        assert!(e.contains("contains \"..\""), "{e}");
    }

    #[test]
    fn relative_variables_are_refused_at_compile() {
        let p = parse("read = [\"/ok\", \"{workdir}/x\"]").unwrap();
        let mut v = vars();
        v.workdir = "proj".into();
        let e = p.compile(&v).unwrap_err().to_string();
        assert_eq!(
            e,
            "p.toml:4:16: path \"proj/x\" (expanded from \"{workdir}/x\") is not absolute"
        );
    }

    #[test]
    fn write_and_exec_on_the_same_path_is_refused() {
        let e = err("write = [\"{workdir}\"]\nexec = [\"/bin/ls\", \"{workdir}\"]");
        assert_eq!(
            e,
            "p.toml:5:20: \"/home/u/proj\" is both writable and executable (a written file could be \
             run); set allow_write_exec = true to accept this (write: filesystem.write[0], exec: \
             filesystem.exec[1])"
        );
    }

    #[test]
    fn write_and_exec_through_ancestors_is_refused() {
        // Writable hierarchy containing an executable file.
        let e = err("write = [\"{workdir}\"]\nexec = [\"{workdir}/bin/tool\"]");
        assert!(
            e.starts_with("p.toml:5:9: \"/home/u/proj/bin/tool\" is both"),
            "{e}"
        );
        // Executable hierarchy containing a writable directory; the later
        // entry is the one pointed at.
        let e = err("exec = [\"/opt\"]\nwrite = [\"/opt/cache\"]");
        assert!(e.starts_with("p.toml:5:10: \"/opt/cache\" is both"), "{e}");
        // Writing "/" covers everything.
        assert!(err("write = [\"/\"]\nexec = [\"/bin/ls\"]").contains("\"/bin/ls\" is both"));
    }

    #[test]
    fn write_and_exec_through_a_symlink_is_refused() {
        let dir = std::env::temp_dir().join(format!("guard-wx-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("wx")).unwrap();
        std::os::unix::fs::symlink(dir.join("wx"), dir.join("wxlink")).unwrap();
        let d = dir.display();
        let same = err(&format!("write = [\"{d}/wx\"]\nexec = [\"{d}/wxlink\"]"));
        // A file under the link, and the link's target's parent.
        let under = err(&format!(
            "write = [\"{d}/wx\"]\nexec = [\"{d}/wxlink/tool\"]"
        ));
        let above = err(&format!(
            "write = [\"{d}/wxlink/sub\"]\nexec = [\"{d}/wx\"]"
        ));
        let apart = compile(&format!("write = [\"{d}/wx\"]\nexec = [\"{d}/other\"]"));
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(
            same.contains(&format!(
                "\"{d}/wxlink\" (resolving to \"{d}/wx\", under \"{d}/wx\" which resolves to \"{d}/wx\") is both writable and executable"
            )),
            "{same}"
        );
        assert!(
            same.contains("write: filesystem.write[0], exec: filesystem.exec[0]"),
            "{same}"
        );
        assert!(under.contains("is both writable and executable"), "{under}");
        assert!(above.contains("is both writable and executable"), "{above}");
        assert!(apart.is_ok());
    }

    #[test]
    fn resolve_keeps_missing_tails() {
        assert_eq!(resolve(Path::new("/")), Path::new("/"));
        let r = resolve(Path::new("/proc/self/../nonexistent-guard/x"));
        assert!(r.ends_with("nonexistent-guard/x"), "{r:?}");
        assert!(!r.to_string_lossy().contains(".."), "{r:?}");
    }

    #[test]
    fn overlap_is_component_wise() {
        let plan = compile(
            "write = [\"/usr/lib\", \"/a/b\"]\nexec = [\"/usr/lib64/x\", \"/a/bc\", \"/a/b.sh\"]",
        )
        .unwrap();
        assert_eq!(plan.rules.len(), 5);
    }

    #[test]
    fn allow_write_exec_accepts_overlap() {
        let plan =
            compile("write = [\"{workdir}\"]\nexec = [\"{workdir}\"]\nallow_write_exec = true")
                .unwrap();
        assert!(plan.allow_write_exec);
        assert_eq!(
            plan.rules[0].access,
            Access::READ | Access::WRITE | Access::EXEC
        );
        assert!(plan.rules[0].access.contains(Access::EXEC));
        assert!(parse("allow_write_exec = \"yes\"").is_err());
    }

    #[test]
    fn base_paths_carry_their_origin() {
        let p = Policy::parse(
            "[policy]\nname = \"t\"\ninclude = [\"git\"]\n[filesystem]\nread = [\"/etc/gitconfig\", \"/x\"]\n",
            "p.toml",
        )
        .unwrap();
        let plan = p.compile(&vars()).unwrap().filesystem;
        let find = |path: &str| {
            plan.rules
                .iter()
                .find(|r| r.path == Path::new(path))
                .unwrap()
        };
        let git = find("/usr/bin/git");
        assert_eq!(git.origin, Origin::Base("git"));
        assert_eq!(git.rule, "base:git filesystem.exec[0]");
        assert_eq!(find("/home/u/.gitconfig").origin, Origin::Base("git"));
        // Named by the base first, then by the policy: the policy owns it.
        let cfg = find("/etc/gitconfig");
        assert_eq!(cfg.origin, Origin::Policy);
        assert!(cfg.rule.starts_with("base:git "));
        assert_eq!(find("/x").origin, Origin::Policy);
        // Bases come first.
        assert_eq!(plan.rules[0].origin, Origin::Base("git"));
        assert_eq!(plan.rules.last().unwrap().path, Path::new("/x"));
    }

    #[test]
    fn conflicts_with_a_base_point_at_the_policy() {
        let e = Policy::parse(
            "[policy]\nname = \"t\"\ninclude = [\"base\"]\n[filesystem]\nwrite = [\"/tmp\", \"/usr\"]\n",
            "p.toml",
        )
        .unwrap()
        .compile(&vars())
        .unwrap_err()
        .to_string();
        // Which loader spelling is reported first depends on how this
        // host's /lib64 resolves (merged /usr makes it a link into /usr).
        assert!(e.starts_with("p.toml:5:18: \""), "{e}");
        assert!(e.contains("ld-linux-x86-64.so.2"), "{e}");
        assert!(e.contains("is both writable and executable"), "{e}");
        assert!(e.contains("exec: base:base filesystem.exec["), "{e}");
    }
}
