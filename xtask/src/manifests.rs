//! `cargo xtask manifests`: offline checks of `deploy/kubernetes`.
//!
//! The base and every overlay are rendered with `kubectl kustomize` and
//! each rendered document is validated with `kubernetes-validate --strict`
//! (unknown fields refused) against the schemas of [`KUBERNETES`]. A
//! document whose kind has no schema is only a warning to
//! kubernetes-validate; here it fails, like any error: a typo in a kind
//! must not pass unchecked. Every policy file under deploy/ is checked with
//! `guardctl policy check`. No cluster is needed.

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};

use crate::child::{finish, output_of};

/// The Kubernetes release the manifests are validated against: the newest
/// that the pinned kubernetes-validate bundles.
pub const KUBERNETES: &str = "1.37.0";

pub fn run() -> anyhow::Result<()> {
    crate::setup::kubectl(false)?;
    let kube = crate::workspace_root().join("deploy/kubernetes");
    let validate = crate::setup::kubernetes_validate_bin();
    for dir in kustomizations(&kube)? {
        let name = dir
            .strip_prefix(&kube)
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| dir.display().to_string());
        let rendered = output_of(Command::new("kubectl").arg("kustomize").arg(&dir))
            .with_context(|| format!("kubectl kustomize {name}"))?;
        let documents = count_documents(&rendered);
        if documents == 0 {
            bail!("{name}: kustomize rendered no document");
        }
        let report = validate_documents(&validate, &rendered)
            .with_context(|| format!("validating {name}"))?;
        let passed = verdict(&report).with_context(|| format!("{name}: invalid manifests"))?;
        if passed != documents {
            bail!(
                "{name}: {documents} documents rendered, {passed} validated:\n{}",
                report.trim_end()
            );
        }
        eprintln!(
            "manifests: {name}: {documents} documents valid (Kubernetes {KUBERNETES}, strict)"
        );
    }
    check_policies(&kube)
}

/// The base and every overlay: each directory holding a kustomization.
fn kustomizations(kube: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut dirs = vec![kube.join("base")];
    let overlays = kube.join("overlays");
    let mut more: Vec<PathBuf> = std::fs::read_dir(&overlays)
        .with_context(|| format!("reading {}", overlays.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("kustomization.yaml").is_file())
        .collect();
    more.sort();
    dirs.extend(more);
    for d in &dirs {
        if !d.join("kustomization.yaml").is_file() {
            bail!("{} has no kustomization.yaml", d.display());
        }
    }
    Ok(dirs)
}

/// kustomize writes each document's top-level keys at the start of a
/// line, so each document has exactly one `kind:` there (nested ones and
/// block scalars are indented).
fn count_documents(rendered: &str) -> usize {
    rendered.lines().filter(|l| l.starts_with("kind:")).count()
}

fn validate_documents(bin: &Path, rendered: &str) -> anyhow::Result<String> {
    let mut child = Command::new(bin)
        .args(["--strict", "--kubernetes-version", KUBERNETES, "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {} (cargo xtask setup installs it)", bin.display()))?;
    child
        .stdin
        .take()
        .context("no stdin")?
        .write_all(rendered.as_bytes())?;
    // A failed validation exits non-zero; its report is on stdout, which
    // `verdict` reads, so the exit status alone is not taken as the answer.
    let out = child.wait_with_output()?;
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() && verdict(&report).is_ok() {
        bail!(
            "kubernetes-validate failed ({}): {}{}",
            out.status,
            report,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(report)
}

/// How many documents passed; any line that is not a pass (an error, a
/// kind without a schema, an unsupported version) fails.
fn verdict(report: &str) -> anyhow::Result<usize> {
    let mut passed = 0;
    let mut problems = Vec::new();
    for line in report.lines().filter(|l| !l.trim().is_empty()) {
        if line.starts_with("INFO ") && line.contains(" passed for resource ") {
            passed += 1;
        } else {
            problems.push(line);
        }
    }
    if !problems.is_empty() {
        bail!("{}", problems.join("\n"));
    }
    Ok(passed)
}

/// `guardctl policy check` on every policy shipped under deploy/.
fn check_policies(kube: &Path) -> anyhow::Result<()> {
    let mut files = Vec::new();
    find_toml(kube, &mut files)?;
    files.sort();
    if files.is_empty() {
        return Ok(());
    }
    crate::cargo(&[
        "build",
        "--release",
        "-p",
        "guard-daemon",
        "--bin",
        "guardctl",
    ])?;
    let guardctl = crate::image::release_dir()?.join("guardctl");
    for f in &files {
        let child = Command::new(&guardctl)
            .args(["policy", "check"])
            .arg(f)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("running {}", guardctl.display()))?;
        finish(child).with_context(|| format!("guardctl policy check {}", f.display()))?;
        let rel = f.strip_prefix(kube).unwrap_or(f);
        eprintln!("manifests: policy {} is valid", rel.display());
    }
    Ok(())
}

fn find_toml(dir: &Path, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    for e in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let p = e?.path();
        if p.is_dir() {
            find_toml(&p, out)?;
        } else if p.extension().is_some_and(|x| x == "toml") {
            out.push(p);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_are_counted_by_their_top_level_kind() {
        let y = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: a\n---\n\
                 apiVersion: v1\nkind: ConfigMap\ndata:\n  p.toml: |\n    kind: x\n";
        assert_eq!(count_documents(y), 2);
    }

    #[test]
    fn only_passes_make_a_verdict() {
        let ok = "INFO - passed for resource namespace/a against version 1.37\n\
                  INFO - passed for resource configmap/b against version 1.37\n";
        assert_eq!(verdict(ok).unwrap(), 2);
        let unknown_kind = format!(
            "{ok}WARN - Couldn't find schema for kind DaemonSett with api version apps/v1\n"
        );
        assert!(
            verdict(&unknown_kind)
                .unwrap_err()
                .to_string()
                .contains("DaemonSett")
        );
        let error = "ERROR - did not validate for resource daemonset/guardd: spec: Additional properties are not allowed\n";
        assert!(verdict(error).is_err());
    }
}
