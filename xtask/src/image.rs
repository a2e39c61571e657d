//! `cargo xtask image`: guard's runtime image, `localhost/guard:dev`, built
//! from the binaries `cargo xtask build` made on this host.
//!
//! The image holds `guardd` and `guardctl` in /usr/local/bin, the shared
//! libraries `ldd` names for them (and the loader), a minimal /etc/passwd
//! and /etc/group and an empty /tmp: nothing else, no shell.
//! [`assemble_rootfs`] lays that tree out; `deploy/Containerfile` runs the
//! same code (`cargo xtask rootfs DIR`) in its build stage, so the
//! production image and this one are made alike.
//!
//! No image registry is reachable here, so the image is made without a
//! base: the tree is packed into a tarball with fixed owners, order and
//! times and imported with `podman import` (nothing runs while building).
//! The image carries the sha256 of each binary and a key over every file of
//! the tree; a second call with the same files reuses the image.

use std::{
    collections::BTreeSet,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};

use crate::child::output_of;

/// The tag `cargo xtask image` gives the image.
pub const IMAGE: &str = "localhost/guard:dev";
/// The binaries the image ships, in /usr/local/bin.
pub const BINARIES: [&str; 2] = ["guardd", "guardctl"];
/// Changes whenever [`assemble_rootfs`] or the image's configuration
/// changes what an image holds, so that an older image is not reused.
const LAYOUT: &str = "guard-image-layout 1";
/// The label holding the key over the whole tree (and [`LAYOUT`]).
const KEY_LABEL: &str = "dev.guard.image.key";
const BIN_DIR: &str = "usr/local/bin";

const PASSWD: &str = "root:x:0:0:root:/root:/usr/sbin/nologin\n\
                      nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n";
const GROUP: &str = "root:x:0:\nnogroup:x:65534:\n";

/// The image's configuration, as `podman import --change` instructions.
/// No entrypoint: the command names the binary (`guardd` by default,
/// `guardctl ...` to run the client), as the DaemonSet does.
const CONFIG: [&str; 3] = [
    "ENV PATH=/usr/local/bin",
    "CMD [\"guardd\"]",
    "LABEL org.opencontainers.image.title=guard",
];

/// The release directory cargo builds into (honours `CARGO_TARGET_DIR`).
pub fn release_dir() -> anyhow::Result<PathBuf> {
    let out = output_of(
        Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(["metadata", "--format-version", "1", "--no-deps"])
            .current_dir(crate::workspace_root()),
    )
    .context("cargo metadata")?;
    let meta: serde_json::Value =
        serde_json::from_str(&out).context("reading cargo metadata's output")?;
    let target = meta["target_directory"]
        .as_str()
        .context("cargo metadata names no target_directory")?;
    Ok(Path::new(target).join("release"))
}

/// Builds the release binaries (a no-op when they are current), then the
/// image unless one with the same files exists. Returns the image's
/// reference (`localhost/guard:dev`).
pub fn build_image() -> anyhow::Result<String> {
    build_tagged(IMAGE, &[])
}

/// The image the pod-equivalent test (`tests/pods.rs`) runs its workload
/// container from: guard's image plus a shell and the few programs the
/// test's agent uses. A test fixture, never shipped.
pub const AGENT_TEST_IMAGE: &str = "localhost/guard-agent-test:dev";
const AGENT_TEST_PROGRAMS: [&str; 5] = [
    "/bin/sh",
    "/bin/bash",
    "/bin/cat",
    "/usr/bin/id",
    "/bin/sleep",
];

/// Builds (or reuses) [`AGENT_TEST_IMAGE`].
pub fn build_agent_test_image() -> anyhow::Result<String> {
    build_tagged(AGENT_TEST_IMAGE, &AGENT_TEST_PROGRAMS)
}

/// [`build_image`] under `reference`, with host programs `extras` (and
/// their libraries) added at their own paths.
fn build_tagged(reference: &str, extras: &[&str]) -> anyhow::Result<String> {
    crate::build_release()?;
    let bin_dir = release_dir()?;
    let work = tempfile::Builder::new()
        .prefix("guard-image")
        .tempdir()
        .context("creating a temporary directory")?;
    let root = work.path().join("rootfs");
    assemble_rootfs(&bin_dir, &root)?;
    for program in extras {
        let src = Path::new(program);
        let rel = src.strip_prefix("/").unwrap_or(src);
        copy_file(src, &root.join(rel), 0o755)?;
        for lib in shared_libraries(src)? {
            let rel = lib.strip_prefix("/").unwrap_or(&lib).to_owned();
            copy_file(&lib, &root.join(rel), 0o755)?;
        }
    }
    if !extras.is_empty() {
        set_dir_modes(&root)?;
        std::fs::set_permissions(root.join("tmp"), std::fs::Permissions::from_mode(0o1777))?;
    }
    let key = tree_key(&root)?;
    if let Some(id) = image_with_key(&key)? {
        // The same files are already an image: make sure the tag names it.
        output_of(Command::new("podman").args(["tag", &id, reference]))
            .with_context(|| format!("tagging image {id} as {reference}"))?;
        eprintln!("image: {reference} is current ({})", short(&id));
        return Ok(reference.to_owned());
    }
    let previous = image_id(reference)?;
    let tarball = work.path().join("rootfs.tar");
    pack(&root, &tarball)?;
    let mut import = Command::new("podman");
    import.arg("import").arg("--quiet");
    for change in CONFIG {
        import.arg("--change").arg(change);
    }
    import
        .arg("--change")
        .arg(format!("LABEL {KEY_LABEL}={key}"));
    for name in BINARIES {
        let sum = sha256_files(&[bin_dir.join(name)])?;
        let sum = sum.first().map(|(h, _)| h.clone()).unwrap_or_default();
        import
            .arg("--change")
            .arg(format!("LABEL dev.guard.{name}.sha256={sum}"));
    }
    import.arg(&tarball).arg(reference);
    let id = output_of(&mut import).context("podman import")?;
    let id = id.trim().to_owned();
    if let Err(e) = smoke_test(reference) {
        // Not left behind under the tag, or the next call would reuse it.
        let _ = output_of(Command::new("podman").args(["rmi", &id]));
        return Err(e);
    }
    // The image this one replaces is untagged now: remove it, unless a
    // container or another tag still uses it (then rmi refuses, which is fine).
    if let Some(old) = previous.filter(|old| !id.starts_with(old.as_str())) {
        let _ = output_of(Command::new("podman").args(["rmi", &old]));
    }
    eprintln!("image: built {reference} ({})", short(&id));
    Ok(reference.to_owned())
}

fn short(id: &str) -> &str {
    let id = id.strip_prefix("sha256:").unwrap_or(id);
    &id[..id.len().min(12)]
}

/// Lays out the image's root filesystem in `root` (created; must not
/// exist): the binaries from `bin_dir`, the libraries and loader they load,
/// passwd and group, /tmp. Fails when a binary needs a library `ldd` cannot
/// find.
pub fn assemble_rootfs(bin_dir: &Path, root: &Path) -> anyhow::Result<()> {
    if root.exists() {
        bail!("{} exists: give a new directory", root.display());
    }
    let bin_out = root.join(BIN_DIR);
    std::fs::create_dir_all(&bin_out).with_context(|| format!("creating {}", bin_out.display()))?;
    let mut libs = BTreeSet::new();
    for name in BINARIES {
        let src = bin_dir.join(name);
        if !src.is_file() {
            bail!(
                "{} is missing: run `cargo xtask build` first",
                src.display()
            );
        }
        copy_file(&src, &bin_out.join(name), 0o755)?;
        libs.extend(shared_libraries(&src)?);
    }
    for lib in &libs {
        let rel = lib
            .strip_prefix("/")
            .with_context(|| format!("ldd named a relative path {}", lib.display()))?;
        // The library's content under the name the binary asks for: a
        // symlink on the host becomes the file it points to.
        copy_file(lib, &root.join(rel), 0o755)?;
    }
    let etc = root.join("etc");
    std::fs::create_dir_all(&etc)?;
    write_file(&etc.join("passwd"), PASSWD, 0o644)?;
    write_file(&etc.join("group"), GROUP, 0o644)?;
    // Directories as a base image has them, whatever this process's umask.
    set_dir_modes(root)?;
    // guardd makes each agent's {tmp} directory under TMPDIR (default /tmp).
    let tmp = root.join("tmp");
    std::fs::create_dir(&tmp)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o1777))?;
    Ok(())
}

fn set_dir_modes(dir: &Path) -> anyhow::Result<()> {
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
        .with_context(|| format!("chmod {}", dir.display()))?;
    for e in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let e = e?;
        if e.file_type()?.is_dir() {
            set_dir_modes(&e.path())?;
        }
    }
    Ok(())
}

fn copy_file(src: &Path, dst: &Path, mode: u32) -> anyhow::Result<()> {
    if let Some(dir) = dst.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::copy(src, dst)
        .with_context(|| format!("copying {} to {}", src.display(), dst.display()))?;
    std::fs::set_permissions(dst, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", dst.display()))
}

fn write_file(path: &Path, text: &str, mode: u32) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", path.display()))
}

/// The shared libraries and the loader `binary` needs, as `ldd` resolves
/// them on this host (absolute paths).
fn shared_libraries(binary: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let out = output_of(Command::new("ldd").arg(binary))
        .with_context(|| format!("ldd {}", binary.display()))?;
    parse_ldd(&out).with_context(|| format!("ldd {}", binary.display()))
}

/// Reads `ldd` output: `name => /path (0x...)` for a library, `/path
/// (0x...)` for the loader; the vDSO has no file. A library ldd did not
/// find is an error (the image would not start).
fn parse_ldd(out: &str) -> anyhow::Result<Vec<PathBuf>> {
    let mut libs = Vec::new();
    for line in out.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if line.contains("statically linked") {
            continue;
        }
        let target = match line.split_once("=>") {
            Some((name, rest)) => {
                let rest = rest.trim();
                if rest.starts_with("not found") {
                    bail!("{} not found", name.trim());
                }
                rest
            }
            None => line,
        };
        let path = target.split_whitespace().next().unwrap_or("");
        if path.starts_with('/') {
            libs.push(PathBuf::from(path));
        } else if !line.starts_with("linux-vdso") && !line.starts_with("linux-gate") {
            bail!("cannot read this line of ldd's output: {line}");
        }
    }
    Ok(libs)
}

/// `sha256sum` of each file: (hex digest, path).
fn sha256_files(files: &[PathBuf]) -> anyhow::Result<Vec<(String, String)>> {
    if files.is_empty() {
        return Ok(Vec::new());
    }
    let out = output_of(Command::new("sha256sum").arg("--").args(files)).context("sha256sum")?;
    out.lines()
        .map(|l| {
            l.split_once("  ")
                .map(|(h, p)| (h.to_owned(), p.to_owned()))
                .with_context(|| format!("unexpected sha256sum line {l:?}"))
        })
        .collect()
}

/// A key over the tree: every path (relative), its type and mode, and each
/// file's sha256, plus [`LAYOUT`]. Equal keys mean equal images.
fn tree_key(root: &Path) -> anyhow::Result<String> {
    let mut entries = Vec::new();
    walk(root, root, &mut entries)?;
    entries.sort();
    let files: Vec<PathBuf> = entries
        .iter()
        .filter(|(_, _, is_file)| *is_file)
        .map(|(rel, _, _)| root.join(rel))
        .collect();
    let sums = sha256_files(&files)?;
    let mut manifest = format!("{LAYOUT}\n");
    for (rel, mode, _) in &entries {
        manifest.push_str(&format!("{rel} {mode:o}\n"));
    }
    for (sum, path) in sums {
        let rel = Path::new(&path)
            .strip_prefix(root)
            .map(|p| p.display().to_string())
            .unwrap_or(path);
        manifest.push_str(&format!("{rel} {sum}\n"));
    }
    sha256_text(&manifest)
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, u32, bool)>) -> anyhow::Result<()> {
    for e in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let e = e?;
        let meta = std::fs::symlink_metadata(e.path())?;
        let rel = e
            .path()
            .strip_prefix(root)
            .map(|p| p.display().to_string())
            .context("walking the tree")?;
        out.push((rel, meta.permissions().mode(), meta.is_file()));
        if meta.is_dir() {
            walk(root, &e.path(), out)?;
        }
    }
    Ok(())
}

fn sha256_text(text: &str) -> anyhow::Result<String> {
    use std::io::Write as _;
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running sha256sum")?;
    child
        .stdin
        .take()
        .context("no stdin")?
        .write_all(text.as_bytes())?;
    let out = crate::child::finish(child).context("sha256sum")?;
    out.split_whitespace()
        .next()
        .map(str::to_owned)
        .context("sha256sum printed nothing")
}

/// The id of the image `reference` names, if there is one.
fn image_id(reference: &str) -> anyhow::Result<Option<String>> {
    let exists = Command::new("podman")
        .args(["image", "exists", reference])
        .status()
        .context("running podman (cargo xtask setup installs it)")?;
    if !exists.success() {
        return Ok(None);
    }
    let id = output_of(
        Command::new("podman").args(["image", "inspect", "--format", "{{.Id}}", reference]),
    )?;
    Ok(Some(id.trim().to_owned()).filter(|s| !s.is_empty()))
}

/// An image carrying `key`, if one exists.
fn image_with_key(key: &str) -> anyhow::Result<Option<String>> {
    let out = output_of(Command::new("podman").args([
        "images",
        "--no-trunc",
        "--filter",
        &format!("label={KEY_LABEL}={key}"),
        "--format",
        "{{.ID}}",
    ]))
    .context("podman images (cargo xtask setup installs podman)")?;
    Ok(out
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(str::to_owned))
}

/// Packs the tree with fixed owners (root), order and times, so the same
/// files give the same layer.
fn pack(root: &Path, tarball: &Path) -> anyhow::Result<()> {
    output_of(
        Command::new("tar")
            .arg("--create")
            .arg("--file")
            .arg(tarball)
            .args([
                "--sort=name",
                "--owner=0",
                "--group=0",
                "--numeric-owner",
                "--mtime=@0",
                "--format=gnu",
            ])
            .arg("-C")
            .arg(root)
            .arg("."),
    )
    .context("packing the image's tree")?;
    Ok(())
}

/// Runs both binaries in the image (`--version`): proves that the libraries
/// and the loader are complete. runc, not crun: crun refuses hybrid cgroup
/// hosts such as this one. The run gets this process's own resource limits,
/// since podman's defaults can exceed a host's hard limits.
pub fn smoke_test(image: &str) -> anyhow::Result<()> {
    for name in BINARIES {
        let out = output_of(Command::new("podman").args(podman_run_args()).args([
            image,
            name,
            "--version",
        ]))
        .with_context(|| format!("running {name} --version in {image}"))?;
        if !out.starts_with(name) {
            bail!("{name} --version in {image} printed {out:?}");
        }
        eprintln!("image: {}", out.trim());
    }
    Ok(())
}

/// `podman run` arguments for a short-lived container on this host:
/// podman's default resource limits can exceed a host's hard limits (and
/// then runc fails to set them), so the container gets limits within this
/// process's own, capped at what a short command needs.
pub fn podman_run_args() -> Vec<String> {
    let mut args: Vec<String> = ["run", "--rm", "--runtime", "runc", "--network", "none"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    for (name, resource) in [
        ("nofile", libc::RLIMIT_NOFILE),
        ("nproc", libc::RLIMIT_NPROC),
    ] {
        let mut r = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes the struct we own.
        if unsafe { libc::getrlimit(resource, &mut r) } == 0 {
            let (soft, hard) = container_limits(r.rlim_max);
            args.push("--ulimit".into());
            args.push(format!("{name}={soft}:{hard}"));
        }
    }
    args
}

/// Soft and hard limits for a container: at most 1024, never above the
/// host's (`RLIM_INFINITY` is above everything).
fn container_limits(hard: libc::rlim_t) -> (libc::rlim_t, libc::rlim_t) {
    let v = hard.min(1024);
    (v, v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output_gives_libraries_and_the_loader() {
        let out = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                   \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f33)\n\
                   \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f33)\n\
                   \t/lib64/ld-linux-x86-64.so.2 (0x00007f33)\n";
        assert_eq!(
            parse_ldd(out).unwrap(),
            [
                PathBuf::from("/lib/x86_64-linux-gnu/libgcc_s.so.1"),
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
            ]
        );
        assert!(parse_ldd("\tstatically linked\n").unwrap().is_empty());
    }

    #[test]
    fn a_library_ldd_cannot_find_is_an_error() {
        let e = parse_ldd("\tlibfoo.so.1 => not found\n").unwrap_err();
        assert_eq!(e.to_string(), "libfoo.so.1 not found");
        assert!(parse_ldd("\tgarbage\n").is_err());
    }

    #[test]
    fn container_limits_stay_within_the_hosts() {
        assert_eq!(container_limits(20000), (1024, 1024));
        assert_eq!(container_limits(512), (512, 512));
        assert_eq!(container_limits(libc::RLIM_INFINITY), (1024, 1024));
    }

    #[test]
    fn the_key_follows_content_and_modes() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("r");
        std::fs::create_dir_all(root.join("a")).unwrap();
        std::fs::write(root.join("a/f"), "one").unwrap();
        let k1 = tree_key(&root).unwrap();
        assert_eq!(k1, tree_key(&root).unwrap());
        std::fs::write(root.join("a/f"), "two").unwrap();
        let k2 = tree_key(&root).unwrap();
        assert_ne!(k1, k2);
        std::fs::set_permissions(root.join("a/f"), std::fs::Permissions::from_mode(0o700)).unwrap();
        assert_ne!(k2, tree_key(&root).unwrap());
    }
}
