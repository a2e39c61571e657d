//! guardd's named policies (`--policy-dir`): on a fleet the node, not the
//! workload's image, decides what an agent runs under (`guardctl run
//! --policy-name NAME`).
//!
//! The directory holds `NAME.toml` files (a Kubernetes ConfigMap mounted
//! as a volume, or files an operator manages). It is read as one set: every
//! file parses and compiles, or the set is refused and the previous one
//! stays, so a half-written update never applies. A ConfigMap update swaps
//! a `..data` symlink; the directory's signature (every entry, followed
//! through symlinks) is taken before and after reading, and a set read
//! while it changed is read again rather than applied.

use std::{
    collections::BTreeMap,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    sync::{
        Arc, RwLock,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use serde_json::json;
use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::{
    journal::{JournalHandle, Kind, Record, Text, Verdict},
    policy::{Policy, Vars, valid_name},
};

/// One policy of the directory, as guardd read it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamedPolicy {
    pub name: String,
    /// The file's path (in the directory, as mounted).
    pub path: String,
    pub text: String,
    /// Include files, (resolved path, text): only from inside the directory.
    pub includes: Vec<(String, String)>,
    /// SHA-256 of the text and its includes, for the journal.
    pub sha256: String,
}

/// The policies of one successful read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PolicySet {
    pub policies: BTreeMap<String, NamedPolicy>,
}

#[derive(Debug, Error)]
pub enum PolicyDirError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    /// Every problem found, one line each; nothing of the set applies.
    #[error("{}", .0.join("\n"))]
    Invalid(Vec<String>),
    /// The directory changed while it was read (an update in progress).
    #[error("the policy directory changed while it was read")]
    Unstable,
}

/// What identifies the directory's state: every entry's name and what it
/// leads to (device, inode, size, modification time), hidden entries
/// (`..data`) included.
pub type Signature = Vec<(String, u64, u64, u64, i64, i64)>;

fn signature(dir: &Path) -> Result<Signature, PolicyDirError> {
    let entries = std::fs::read_dir(dir).map_err(|source| PolicyDirError::Io {
        op: "reading",
        path: dir.to_owned(),
        source,
    })?;
    let mut sig = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        // Followed through symlinks: a swapped `..data` changes what every
        // entry leads to. A dangling link counts as itself.
        let meta = std::fs::metadata(e.path()).or_else(|_| std::fs::symlink_metadata(e.path()));
        if let Ok(m) = meta {
            sig.push((name, m.dev(), m.ino(), m.len(), m.mtime(), m.mtime_nsec()));
        }
    }
    sig.sort();
    Ok(sig)
}

/// Variables for checking that a policy compiles: the real ones come with
/// each launch.
fn check_vars() -> Vars {
    Vars {
        workdir: PathBuf::from("/"),
        home: PathBuf::from("/root"),
        tmp: PathBuf::from(crate::launch::preflight::TMP_PLACEHOLDER),
    }
}

fn sha256_of(text: &str, includes: &[(String, String)]) -> String {
    let mut h = Sha256::new();
    h.update(text.as_bytes());
    for (path, t) in includes {
        h.update([0u8]);
        h.update(path.as_bytes());
        h.update([0u8]);
        h.update(t.as_bytes());
    }
    hex::encode(h.finalize())
}

/// `NAME.toml` is a policy; hidden entries (a ConfigMap's `..data`) are
/// not, nor are `_NAME.toml` files: those are include files for the
/// policies beside them.
fn is_policy_file(name: &str) -> bool {
    !name.starts_with('.') && !name.starts_with('_') && name.ends_with(".toml")
}

/// Reads the whole directory as one set (see the module's documentation).
pub fn load(dir: &Path) -> Result<PolicySet, PolicyDirError> {
    let before = signature(dir)?;
    let real_dir = std::fs::canonicalize(dir).map_err(|source| PolicyDirError::Io {
        op: "resolving",
        path: dir.to_owned(),
        source,
    })?;
    let mut names: Vec<String> = before
        .iter()
        .map(|(n, ..)| n.clone())
        .filter(|n| is_policy_file(n))
        .collect();
    names.sort();
    names.dedup();
    let mut set = PolicySet::default();
    let mut problems = Vec::new();
    for file in names {
        let path = dir.join(&file);
        let shown = path.display().to_string();
        let name = file.trim_end_matches(".toml");
        if !valid_name(name) {
            problems.push(format!(
                "{shown}: invalid policy file name: expected NAME.toml with NAME of 1-64 characters of A-Z a-z 0-9 . _ -"
            ));
            continue;
        }
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) => {
                problems.push(format!("{shown}: cannot read: {e}"));
                continue;
            }
        };
        // Includes resolve against the directory and must stay in it: the
        // node's policies are whole in what the node ships.
        let read = |p: &Path| -> Result<String, String> {
            let real = std::fs::canonicalize(p).map_err(|e| e.to_string())?;
            if !real.starts_with(&real_dir) {
                return Err(format!(
                    "outside the policy directory {} (named policies include only files beside them)",
                    dir.display()
                ));
            }
            std::fs::read_to_string(&real).map_err(|e| e.to_string())
        };
        let policy = match Policy::parse_all_with(&text, &shown, dir, &read) {
            Ok(p) => p,
            Err(errs) => {
                problems.extend(errs.iter().map(|e| e.to_string()));
                continue;
            }
        };
        if policy.name != name {
            problems.push(format!(
                "{shown}: the policy is named {:?}; a file in the policy directory is named after its policy ({}.toml)",
                policy.name, policy.name
            ));
            continue;
        }
        if let Err(errs) = policy.compile_all(&check_vars()) {
            problems.extend(errs.iter().map(|e| e.to_string()));
            continue;
        }
        let includes = policy.sources.clone();
        set.policies.insert(
            name.to_owned(),
            NamedPolicy {
                name: name.to_owned(),
                path: shown,
                sha256: sha256_of(&text, &includes),
                text,
                includes,
            },
        );
    }
    if signature(dir)? != before {
        return Err(PolicyDirError::Unstable);
    }
    if !problems.is_empty() {
        return Err(PolicyDirError::Invalid(problems));
    }
    Ok(set)
}

/// The directory, its current set and the thread that watches it.
pub struct PolicyDir {
    pub dir: PathBuf,
    current: RwLock<Arc<PolicySet>>,
    /// No valid set has been read yet (the first read failed): readiness
    /// says so.
    never_loaded: AtomicBool,
    last_error: RwLock<Option<String>>,
}

/// How often the directory's signature is compared (a few `stat`s).
pub const POLL: Duration = Duration::from_secs(1);

impl PolicyDir {
    /// The directory, not read yet: guardd reads it once its start is
    /// journaled ([`PolicyDir::reload`]); until a read succeeds the set is
    /// empty and every named launch is refused, saying why.
    pub fn new(dir: PathBuf) -> PolicyDir {
        PolicyDir {
            dir,
            current: RwLock::new(Arc::new(PolicySet::default())),
            never_loaded: AtomicBool::new(true),
            last_error: RwLock::new(None),
        }
    }

    pub fn current(&self) -> Arc<PolicySet> {
        self.current
            .read()
            .map(|s| s.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    /// Why no set has ever applied, for `/readyz` (`None` once one has).
    pub fn not_ready(&self) -> Option<String> {
        if !self.never_loaded.load(Ordering::Relaxed) {
            return None;
        }
        let why = self
            .last_error
            .read()
            .ok()
            .and_then(|e| e.clone())
            .unwrap_or_else(|| "not read yet".to_owned());
        Some(format!(
            "policy directory {}: no valid set: {why}",
            self.dir.display()
        ))
    }

    /// Why the newest read was refused, if it was.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.read().ok().and_then(|e| e.clone())
    }

    /// Reads the directory and applies the set if it is whole; journals
    /// the outcome. Returns the signature that was read (`None` when the
    /// directory changed meanwhile: the next poll reads it again).
    pub fn reload(&self, journal: &JournalHandle) -> Option<Signature> {
        let sig = signature(&self.dir).ok();
        let target = Text::new(self.dir.display().to_string());
        match load(&self.dir) {
            Ok(set) => {
                let old = self.current();
                let changed = |n: &String| {
                    old.policies
                        .get(n)
                        .is_some_and(|o| set.policies.get(n).is_some_and(|p| p.sha256 != o.sha256))
                };
                let added: Vec<&String> = set
                    .policies
                    .keys()
                    .filter(|n| !old.policies.contains_key(*n))
                    .collect();
                let removed: Vec<&String> = old
                    .policies
                    .keys()
                    .filter(|n| !set.policies.contains_key(*n))
                    .collect();
                let changed: Vec<&String> = set.policies.keys().filter(|n| changed(n)).collect();
                let hashes: BTreeMap<&String, &String> =
                    set.policies.iter().map(|(n, p)| (n, &p.sha256)).collect();
                let rec = Record::new(
                    Kind::Policy,
                    "policy-reload",
                    target,
                    Verdict::Allowed,
                    "policy-dir",
                    "guardd",
                )
                .with_detail(json!({
                    "policies": hashes,
                    "added": added,
                    "removed": removed,
                    "changed": changed,
                }));
                let _ = journal.append(rec);
                tracing::info!(
                    dir = %self.dir.display(),
                    policies = set.policies.len(),
                    "policy directory read"
                );
                if let Ok(mut c) = self.current.write() {
                    *c = Arc::new(set);
                }
                if let Ok(mut e) = self.last_error.write() {
                    *e = None;
                }
                self.never_loaded.store(false, Ordering::Relaxed);
                sig
            }
            Err(PolicyDirError::Unstable) => None,
            Err(e) => {
                let errors: Vec<String> = match &e {
                    PolicyDirError::Invalid(v) => v.clone(),
                    other => vec![other.to_string()],
                };
                let kept: Vec<String> = self.current().policies.keys().cloned().collect();
                let rec = Record::new(
                    Kind::Policy,
                    "policy-reload",
                    target,
                    Verdict::Denied,
                    "policy-dir.invalid",
                    "guardd",
                )
                .with_detail(json!({"errors": errors, "kept": kept}));
                let _ = journal.append(rec);
                tracing::error!(
                    dir = %self.dir.display(),
                    "policy directory refused, the previous set stays: {}",
                    errors.join("; ")
                );
                if let Ok(mut le) = self.last_error.write() {
                    *le = Some(errors.join("; "));
                }
                sig
            }
        }
    }

    /// Polls the directory until `stop` is set; reads it again whenever
    /// its signature differs from the last one read.
    pub fn watch(
        self: Arc<Self>,
        journal: JournalHandle,
        mut last: Option<Signature>,
        stop: Arc<AtomicBool>,
    ) -> std::io::Result<std::thread::JoinHandle<()>> {
        std::thread::Builder::new()
            .name("policy-dir".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(POLL);
                    let now = signature(&self.dir).ok();
                    if now.is_some() && now != last {
                        last = self.reload(&journal);
                    }
                }
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::write(dir.join(name), text).unwrap();
    }

    const AGENT: &str =
        "[policy]\nname = \"agent\"\n[[network.allow]]\ncidr = \"127.0.0.1/32\"\nports = [80]\n";

    #[test]
    fn a_whole_set_loads_with_hashes_and_includes_from_the_directory() {
        let d = tempfile::tempdir().unwrap();
        write(
            d.path(),
            "_team.toml",
            "[network]\nallow = [{ cidr = \"10.0.0.0/8\", ports = [443] }]\n",
        );
        write(
            d.path(),
            "agent.toml",
            "[policy]\nname = \"agent\"\ninclude = [\"./_team.toml\"]\n",
        );
        write(d.path(), "other.toml", "[policy]\nname = \"other\"\n");
        // Hidden entries (a ConfigMap's ..data) and other files are not policies.
        std::fs::create_dir(d.path().join("..data")).unwrap();
        write(d.path(), "README", "not a policy");
        let set = load(d.path()).unwrap();
        assert_eq!(
            set.policies.keys().collect::<Vec<_>>(),
            vec!["agent", "other"]
        );
        let a = &set.policies["agent"];
        assert_eq!(a.includes.len(), 1);
        assert_eq!(a.sha256.len(), 64);
        // The client side parses it from what guardd sends, nothing else.
        let p = Policy::parse_sent_all(&a.text, &a.path, &a.includes).unwrap();
        assert_eq!(p.name, "agent");
    }

    #[test]
    fn one_bad_file_refuses_the_whole_set_naming_every_problem() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "agent.toml", AGENT);
        write(
            d.path(),
            "broken.toml",
            "[policy]\nname = \"broken\"\nmode = \"loud\"\n",
        );
        write(d.path(), "misnamed.toml", "[policy]\nname = \"other\"\n");
        write(d.path(), "bad name.toml", "[policy]\nname = \"x\"\n");
        let Err(PolicyDirError::Invalid(errs)) = load(d.path()) else {
            panic!("the set must be refused");
        };
        let all = errs.join("\n");
        assert!(all.contains("broken.toml"), "{all}");
        assert!(
            all.contains("misnamed.toml") && all.contains("named after"),
            "{all}"
        );
        assert!(all.contains("bad name.toml"), "{all}");
        assert!(!all.contains("agent.toml"), "{all}");
    }

    #[test]
    fn includes_cannot_leave_the_directory() {
        let outside = tempfile::tempdir().unwrap();
        write(
            outside.path(),
            "wide.toml",
            "[network]\nallow = [{ cidr = \"0.0.0.0/0\", ports = [443] }]\n",
        );
        let d = tempfile::tempdir().unwrap();
        write(
            d.path(),
            "agent.toml",
            &format!(
                "[policy]\nname = \"agent\"\ninclude = [\"{}\"]\n",
                outside.path().join("wide.toml").display()
            ),
        );
        let Err(PolicyDirError::Invalid(errs)) = load(d.path()) else {
            panic!("an include outside the directory must be refused");
        };
        assert!(
            errs.join("\n").contains("outside the policy directory"),
            "{errs:?}"
        );
    }

    #[test]
    fn a_configmap_style_swap_changes_the_signature() {
        let d = tempfile::tempdir().unwrap();
        let v1 = d.path().join("..v1");
        let v2 = d.path().join("..v2");
        std::fs::create_dir(&v1).unwrap();
        std::fs::create_dir(&v2).unwrap();
        write(&v1, "agent.toml", AGENT);
        write(&v2, "agent.toml", &AGENT.replace("80", "81"));
        std::os::unix::fs::symlink("..v1", d.path().join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/agent.toml", d.path().join("agent.toml")).unwrap();
        let s1 = signature(d.path()).unwrap();
        let first = load(d.path()).unwrap();
        // The atomic swap kubelet does: a new link renamed over ..data.
        std::os::unix::fs::symlink("..v2", d.path().join("..data_tmp")).unwrap();
        std::fs::rename(d.path().join("..data_tmp"), d.path().join("..data")).unwrap();
        assert_ne!(signature(d.path()).unwrap(), s1);
        let second = load(d.path()).unwrap();
        assert_ne!(
            first.policies["agent"].sha256,
            second.policies["agent"].sha256
        );
        assert!(second.policies["agent"].text.contains("81"));
    }

    #[test]
    fn an_empty_directory_is_an_empty_set_and_a_missing_one_an_error() {
        let d = tempfile::tempdir().unwrap();
        assert!(load(d.path()).unwrap().policies.is_empty());
        assert!(matches!(
            load(&d.path().join("nope")),
            Err(PolicyDirError::Io { .. })
        ));
    }
}
