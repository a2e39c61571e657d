//! The pod-equivalent test (issue 13): guardd from its image, in a
//! container with the DaemonSet's privileges and mounts; an agent in
//! another container, in a cgroup of its own, with only guardd's socket
//! directory mounted, started by `guardctl run --policy-name`, its `{tmp}`
//! in its own container's `/tmp`. Real containers (podman with runc), the
//! real kernel.
//!
//! Run through `cargo xtask pods` (or `cargo xtask test`), which builds the
//! images and names them in `GUARD_TEST_IMAGE` and `GUARD_TEST_AGENT_IMAGE`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{
    path::Path,
    process::{Command, Output},
    time::{Duration, Instant},
};

use common::*;
use serde_json::Value;

fn image(var: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| {
        panic!("{var} is not set: run this test through `cargo xtask pods` or `cargo xtask test`, which build the images")
    })
}

/// Resource limits within this host's hard limits (podman's defaults
/// exceed them, see PLATFORM.md).
fn ulimits() -> Vec<String> {
    let mut out = Vec::new();
    for (name, res) in [
        ("nofile", libc::RLIMIT_NOFILE),
        ("nproc", libc::RLIMIT_NPROC),
    ] {
        let mut r = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes the struct we own.
        if unsafe { libc::getrlimit(res, &mut r) } == 0 {
            let v = r.rlim_max.min(4096);
            out.push("--ulimit".to_owned());
            out.push(format!("{name}={v}:{v}"));
        }
    }
    out
}

fn podman(args: &[&str]) -> Output {
    Command::new("podman").args(args).output().unwrap()
}

/// The node: directories guardd's DaemonSet mounts from the host, and the
/// guardd container. Everything is removed on drop (containers by name,
/// guardd's instance by name).
struct Node {
    dir: tempfile::TempDir,
    instance: String,
    guardd: String,
    policies: ConfigMapDir,
    /// The workload containers started, removed on drop: each test's own,
    /// as tests run in parallel.
    workloads: std::cell::RefCell<Vec<String>>,
}

/// Numbers the nodes of this test process: their guardd containers and
/// instances must not collide when tests run in parallel.
static NODES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

impl Node {
    fn new() -> Node {
        require_root();
        let dir = tempfile::Builder::new()
            .prefix("guard-test-pods")
            .tempdir()
            .unwrap();
        for d in ["run", "state", "journal", "fifos"] {
            std::fs::create_dir(dir.path().join(d)).unwrap();
        }
        std::fs::write(dir.path().join("secret.txt"), "the customer's data\n").unwrap();
        let pid = std::process::id();
        let n = NODES.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let policies = ConfigMapDir::empty();
        Node {
            instance: format!("guard-test-pods-{pid}-{n}"),
            guardd: format!("guard-test-guardd-{pid}-{n}"),
            policies,
            dir,
            workloads: Default::default(),
        }
    }

    fn path(&self, d: &str) -> String {
        self.dir.path().join(d).display().to_string()
    }

    /// Writes a new version of the policy directory, as kubelet updates a
    /// mounted ConfigMap.
    fn policies(&mut self, files: &[(&str, &str)]) {
        self.policies.update(files);
    }

    /// Starts guardd's container as the DaemonSet runs it: not privileged,
    /// the DaemonSet's capabilities, host pid namespace, the node's bpffs,
    /// cgroup tree and BTF, a read-only root.
    fn start_guardd(&self) {
        self.start_guardd_with(&["--require-named-policy"]);
    }

    /// [`Node::start_guardd`] with `mode` instead of `--require-named-policy`.
    fn start_guardd_with(&self, mode: &[&str]) {
        let _ = podman(&["rm", "-f", &self.guardd]);
        let mut args: Vec<String> = [
            "run",
            "-d",
            "--runtime",
            "runc",
            "--name",
            &self.guardd,
            "--pid",
            "host",
            "--cgroupns",
            "host",
            "--network",
            "none",
            "--read-only",
            "--security-opt",
            "no-new-privileges",
            "--security-opt",
            "seccomp=unconfined",
            "--cap-drop",
            "all",
            "--cap-add",
            "BPF,PERFMON,NET_ADMIN,SYS_PTRACE,CHOWN,DAC_OVERRIDE",
            "-v",
            "/sys/fs/bpf:/sys/fs/bpf",
            "-v",
            "/sys/fs/cgroup:/sys/fs/cgroup",
            "-v",
            "/sys/kernel/btf:/sys/kernel/btf:ro",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for (host, inside) in [
            ("run", "/run/guard"),
            ("state", "/run/guard-state"),
            ("journal", "/var/lib/guard"),
        ] {
            args.push("-v".into());
            args.push(format!("{}:{inside}", self.path(host)));
        }
        args.push("-v".into());
        args.push(format!(
            "{}:/etc/guard/policies:ro",
            self.policies.path().display()
        ));
        args.extend(ulimits());
        args.push(image("GUARD_TEST_IMAGE"));
        for a in [
            "guardd",
            "--socket=/run/guard/guard.sock",
            "--state-dir=/run/guard-state",
            "--journal=/var/lib/guard/journal.db",
            "--policy-dir=/etc/guard/policies",
            "--scopes-under=caller",
            "--keep-pins",
            "--metrics=off",
            "--dns-upstream=127.0.77.254:53",
        ] {
            args.push(a.into());
        }
        args.push(format!("--instance={}", self.instance));
        args.extend(mode.iter().map(|s| s.to_string()));
        let out = Command::new("podman").args(&args).output().unwrap();
        assert!(
            out.status.success(),
            "podman run guardd: {}",
            describe(&out)
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if self.ctl(&["ps"]).status.success() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "guardd's container did not serve:\n{}",
                self.guardd_log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn guardd_log(&self) -> String {
        let out = podman(&["logs", &self.guardd]);
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    /// guardctl on the host, as an operator would query the node.
    fn ctl(&self, args: &[&str]) -> Output {
        Command::new(GUARDCTL)
            .env("GUARD_SOCKET", self.dir.path().join("run/guard.sock"))
            .args(args)
            .output()
            .unwrap()
    }

    fn logs(&self, args: &[&str]) -> Vec<Value> {
        let out = self.ctl(&[&["logs", "--json"], args].concat());
        assert!(out.status.success(), "{}", describe(&out));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// A workload container: its own cgroup and namespaces, guardd's
    /// socket directory mounted (and nothing else of the node's but the
    /// file the agent must not read), podman options `extra`, running
    /// `cmd`. `name` names it (removed on the node's drop too).
    fn workload(&self, name: &str, extra: &[&str], cmd: &[&str]) -> Command {
        self.workloads.borrow_mut().push(name.to_owned());
        let mut c = Command::new("podman");
        c.args([
            "run",
            "--rm",
            "--runtime",
            "runc",
            "--name",
            name,
            "--network",
            "none",
        ])
        .args(["--workdir", "/tmp"])
        .args(["-v", &format!("{}:/run/guard", self.path("run"))])
        .args([
            "-v",
            &format!("{}:/etc/secret.txt:ro", self.path("secret.txt")),
        ])
        .args(["-e", "GUARD_SOCKET=/run/guard/guard.sock"])
        .args(ulimits())
        .args(extra)
        .arg(image("GUARD_TEST_AGENT_IMAGE"))
        .args(cmd);
        c
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = podman(&["rm", "-f", "-t", "5", &self.guardd]);
        for name in self.workloads.borrow().iter() {
            let _ = podman(&["rm", "-f", "-t", "1", name]);
        }
        remove_instance(&self.instance);
    }
}

/// Each attempt prints one line: what it tried, then `done` or the error
/// the kernel gave.
const AGENT_SCRIPT: &str = r#"
try() { what=$1; shift; if err=$("$@" 2>&1 >/dev/null); then echo "$what: done"; else echo "$what: ${err##*: }"; fi; }
try connect /bin/bash -c 'exec 3<>/dev/tcp/127.0.0.1/9'
try read /bin/cat /etc/secret.txt
try exec /usr/bin/id
try allowed-read /bin/cat /etc/passwd
try tmp-write /bin/bash -c 'echo x > "$TMPDIR/f"'
echo "tmpdir=$TMPDIR"
"#;

/// Where the long agent of the restart test reads its FIFOs: a directory
/// of the node mounted into that one workload container only.
const FIFOS: &str = "/run/guard-test-fifos";

fn policy(name: &str) -> String {
    policy_reading(name, "")
}

/// [`policy`] that also reads `extra` (TOML list items, each after a
/// comma).
fn policy_reading(name: &str, extra: &str) -> String {
    format!(
        "[policy]\nname = \"{name}\"\ninclude = [\"base\"]\n[network]\nallow = []\n[filesystem]\nread = [\"{{workdir}}\"{extra}]\nwrite = [\"{{tmp}}\"]\nexec = [\"/bin/bash\", \"/bin/cat\"]\n"
    )
}

/// After guardctl, the workload prints `left=` and what is left of agents'
/// `{tmp}` directories in its own `/tmp` once guardd had time to remove
/// them (the removal follows the exit summary), and exits with guardctl's
/// status.
const THEN_LIST_TMP: &str = r#"rc=$?
shopt -s nullglob
for i in {1..100}; do g=(/tmp/guard-*); [ ${#g[@]} -eq 0 ] && break; sleep 0.1; done
echo "left=${g[*]}"
exit $rc"#;

/// `guardctl run --policy-name NAME` in a workload container, then
/// [`THEN_LIST_TMP`].
fn run_agent(node: &Node, container: &str, policy: &str, script: &str) -> Output {
    let wrapper = format!(
        "guardctl run --policy-name {policy} --allow-degraded exec -- /bin/bash -c \"$0\"\n{THEN_LIST_TMP}"
    );
    node.workload(container, &[], &["/bin/bash", "-c", &wrapper, script])
        .output()
        .unwrap()
}

/// `guardctl run` of the named policy `agent` for `bash -c SCRIPT`, as a
/// workload's command line.
fn agent_argv(script: &str) -> [&str; 10] {
    [
        "guardctl",
        "run",
        "--policy-name",
        "agent",
        "--allow-degraded",
        "exec",
        "--",
        "/bin/bash",
        "-c",
        script,
    ]
}

fn agent_id_of(out: &Output) -> String {
    Guardd::agent_id(out)
}

#[test]
fn an_agent_in_a_container_is_confined_by_the_nodes_guardd() {
    let pid = std::process::id();
    let mut node = Node::new();
    node.policies(&[("agent.toml", &policy("agent"))]);
    node.start_guardd();

    // A forbidden connect, read and exec: refused by the node's guardd.
    let out = run_agent(
        &node,
        &format!("guard-test-agent-{pid}-a"),
        "agent",
        AGENT_SCRIPT,
    );
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{}\n{}",
        describe(&out),
        node.guardd_log()
    );
    for line in [
        "connect: Operation not permitted",
        "read: Permission denied",
        "exec: Permission denied",
        "allowed-read: done",
        "tmp-write: done",
    ] {
        assert!(stdout.contains(line), "{line}:\n{}", describe(&out));
    }
    let id = agent_id_of(&out);
    // {tmp} was the workload container's own /tmp/guard-<id> (no
    // directory of the node is shared between pods), and guardd removed
    // it there when the agent ended.
    let tmp = format!("/tmp/guard-{id}");
    assert!(
        stdout.contains(&format!("tmpdir={tmp}\n")),
        "{}",
        describe(&out)
    );
    assert!(stdout.contains("\nleft=\n"), "{}", describe(&out));
    let recs = node.logs(&["--agent", &id]);
    let start = recs.iter().find(|r| r["action"] == "start").unwrap();
    assert_eq!(start["detail"]["tmp"], tmp.as_str(), "{start}");
    // The launcher's pid (in its container's pid namespace) names the
    // agent's main process: nothing of it counts as left over.
    let exit = recs.iter().find(|r| r["action"] == "exit").unwrap();
    assert_eq!(exit["detail"]["leftover_killed"], 0, "{exit}");
    // The scope was made under the workload container's own cgroup, and
    // every record names that container.
    let container = &start["agent"]["container"];
    let cgroup = container["cgroup"]
        .as_str()
        .unwrap_or_else(|| panic!("{start}"));
    assert!(cgroup.contains("libpod"), "{start}");
    assert!(
        start["detail"]["cgroup"]
            .as_str()
            .unwrap()
            .ends_with(&format!("{cgroup}/agent-{id}")),
        "{start}"
    );
    assert_eq!(
        start["detail"]["policy_source"]["named"], "agent",
        "{start}"
    );
    for (kind, what) in [
        ("network", "127.0.0.1:9/tcp"),
        ("file", "/etc/secret.txt"),
        ("exec", "/usr/bin/id"),
    ] {
        let r = recs
            .iter()
            .find(|r| {
                r["kind"] == kind
                    && r["verdict"] == "denied"
                    && r["target"].as_str().unwrap_or("").contains(what)
            })
            .unwrap_or_else(|| panic!("no {kind} refusal of {what} in {recs:#?}"));
        assert_eq!(r["agent"]["container"], *container, "{r}");
    }

    // A workload cannot bring its own policy (cluster mode).
    let out = node
        .workload(
            &format!("guard-test-agent-{pid}-b"),
            &[],
            &[
                "/bin/sh",
                "-c",
                "printf '[policy]\\nname = \"mine\"\\n' > /tmp/p.toml; guardctl run --policy /tmp/p.toml -- /bin/cat /etc/passwd",
            ],
        )
        .output()
        .unwrap();
    assert!(!out.status.success(), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--policy-name"),
        "{}",
        describe(&out)
    );
}

#[test]
fn the_agent_stays_confined_while_guardds_container_is_replaced_and_policies_reload() {
    let pid = std::process::id();
    let mut node = Node::new();
    // The long agent reads its FIFOs from a directory of the node that
    // only its own container mounts.
    let agent_policy = policy_reading("agent", &format!(", \"{FIFOS}\""));
    node.policies(&[("agent.toml", &agent_policy)]);
    node.start_guardd();
    // A long agent: refused connects before, during and after the restart.
    let script = format!(
        r#"
for step in before during after; do
  read -r go < {FIFOS}/go-$step.fifo
  if err=$( (exec 3<>/dev/tcp/127.0.0.1/9) 2>&1); then echo "$step: connected"; else echo "$step: ${{err##*: }}"; fi
done
"#
    );
    for step in ["before", "during", "after"] {
        let f = node.dir.path().join(format!("fifos/go-{step}.fifo"));
        nix_mkfifo(&f);
    }
    let mut child = run_agent_spawn(&node, &format!("guard-test-agent-{pid}-c"), &script);
    let go = |step: &str| {
        std::fs::write(
            node.dir.path().join(format!("fifos/go-{step}.fifo")),
            "go\n",
        )
        .unwrap();
    };
    go("before");
    // Another workload on the node sees nothing of this agent and cannot
    // touch it, though it runs as root too.
    let deadline = Instant::now() + Duration::from_secs(10);
    let id = loop {
        let ps = node.ctl(&["ps", "--json"]);
        let text = String::from_utf8_lossy(&ps.stdout).into_owned();
        if let Some(id) = text
            .lines()
            .find_map(|l| serde_json::from_str::<Value>(l).ok())
            .and_then(|a| a["id"].as_str().map(str::to_owned))
        {
            break id;
        }
        assert!(Instant::now() < deadline, "no agent listed: {text}");
        std::thread::sleep(Duration::from_millis(200));
    };
    let other = |n: &str, cmd: &[&str]| {
        node.workload(&format!("guard-test-agent-{pid}-{n}"), &[], cmd)
            .output()
            .unwrap()
    };
    let ps = other("h", &["guardctl", "ps", "--json"]);
    assert!(
        !String::from_utf8_lossy(&ps.stdout).contains(&id),
        "another container lists the agent: {}",
        describe(&ps)
    );
    let kill = other("i", &["guardctl", "kill", &id]);
    assert!(!kill.status.success(), "{}", describe(&kill));
    let logs = other("j", &["guardctl", "logs", "--json", "--agent", &id]);
    assert!(
        !String::from_utf8_lossy(&logs.stdout).contains(&id),
        "another container reads the agent's records: {}",
        describe(&logs)
    );
    // guardd's container is replaced (an update of the DaemonSet).
    let _ = podman(&["rm", "-f", "-t", "5", &node.guardd]);
    go("during");
    std::thread::sleep(Duration::from_millis(500));
    node.start_guardd();
    // The new guardd re-adopted the live scope.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ps = node.ctl(&["ps", "--json"]);
        if String::from_utf8_lossy(&ps.stdout).contains("agent") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not re-adopted:\n{}",
            node.guardd_log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    go("after");
    let out = wait_output(&mut child, Duration::from_secs(30));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    for line in [
        "before: Operation not permitted",
        "during: Operation not permitted",
        "after: Operation not permitted",
    ] {
        assert!(stdout.contains(line), "{line}:\n{}", describe(&out));
    }
    let recs = node.logs(&[]);
    assert!(
        recs.iter()
            .any(|r| r["action"] == "daemon-restart" && r["target"] == "scope re-adopted"),
        "{recs:#?}"
    );

    // A policy change reaches the node's guardd and is journaled.
    node.policies(&[
        ("agent.toml", &agent_policy),
        ("other.toml", &policy("other")),
    ]);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let reloads: Vec<Value> = node
            .logs(&[])
            .into_iter()
            .filter(|r| r["action"] == "policy-reload" && r["verdict"] == "allowed")
            .collect();
        if reloads
            .iter()
            .any(|r| r["detail"]["added"] == serde_json::json!(["other"]))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{reloads:#?}\n{}",
            node.guardd_log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = run_agent(
        &node,
        &format!("guard-test-agent-{pid}-d"),
        "other",
        "echo ran",
    );
    assert!(out.status.success(), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("ran"));
}

fn nix_mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: mkfifo with a NUL-terminated path we own.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o666) }, 0);
}

/// The long agent of the restart test, with [`FIFOS`] mounted.
fn run_agent_spawn(node: &Node, container: &str, script: &str) -> std::process::Child {
    let fifos = format!("{}:{FIFOS}", node.path("fifos"));
    node.workload(container, &["-v", &fifos], &agent_argv(script))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

fn wait_output(child: &mut std::process::Child, within: Duration) -> Output {
    let status = wait_or_kill(child, within).expect("the agent's container did not end");
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    use std::io::Read;
    child
        .stdout
        .take()
        .unwrap()
        .read_to_end(&mut stdout)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_end(&mut stderr)
        .unwrap();
    Output {
        status,
        stdout,
        stderr,
    }
}

#[test]
fn a_workloads_own_policy_must_stay_within_the_nodes_floor() {
    let pid = std::process::id();
    let mut node = Node::new();
    node.policies(&[("floor.toml", &policy("floor"))]);
    node.start_guardd_with(&["--floor-policy=floor"]);
    let own = |name: &str, extra: &str| {
        format!(
            "printf '%s' '{}' > /tmp/{name}.toml; guardctl run --policy /tmp/{name}.toml --allow-degraded exec -- /bin/cat /etc/passwd",
            policy_reading(name, extra)
        )
    };
    // Wider than the floor: /etc/secret.txt is not the floor's to grant.
    let out = node
        .workload(
            &format!("guard-test-agent-{pid}-e"),
            &[],
            &["/bin/sh", "-c", &own("wide", ", \"/etc/secret.txt\"")],
        )
        .output()
        .unwrap();
    assert!(!out.status.success(), "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("floor") && err.contains("/etc/secret.txt"),
        "{err}"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !node.logs(&[]).iter().any(|r| r["rule"] == "policy.floor") {
        assert!(Instant::now() < deadline, "no policy.floor record");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Within it: runs.
    let out = node
        .workload(
            &format!("guard-test-agent-{pid}-f"),
            &[],
            &["/bin/sh", "-c", &own("narrow", "")],
        )
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        describe(&out),
        node.guardd_log()
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("root:"),
        "{}",
        describe(&out)
    );
}

#[test]
fn a_workload_with_a_writable_cgroupfs_is_refused() {
    let pid = std::process::id();
    let mut node = Node::new();
    node.policies(&[("agent.toml", &policy("agent"))]);
    node.start_guardd();
    // The node's cgroup hierarchies mounted writable into the workload, as
    // privileged pods and some runtimes have them: an agent there could
    // write its pid into a cgroup.procs outside its scope.
    let out = node
        .workload(
            &format!("guard-test-agent-{pid}-g"),
            &["-v", "/sys/fs/cgroup:/sys/fs/cgroup:rw"],
            &agent_argv("echo ran"),
        )
        .output()
        .unwrap();
    assert!(!out.status.success(), "{}", describe(&out));
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("ran"),
        "{}",
        describe(&out)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("writable cgroup file system") && err.contains("read-only cgroupfs"),
        "{err}"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let rec = loop {
        if let Some(r) = node
            .logs(&[])
            .into_iter()
            .find(|r| r["rule"] == "control.writable-cgroupfs")
        {
            break r;
        }
        assert!(
            Instant::now() < deadline,
            "no refusal record:\n{}",
            node.guardd_log()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(rec["verdict"], "denied", "{rec}");
    assert_eq!(rec["action"], "open", "{rec}");
    // The record names the mounts as the container sees them, and the
    // container.
    let why = rec["detail"]["why"].as_str().unwrap_or_default();
    assert!(why.contains("/sys/fs/cgroup/"), "{rec}");
    assert!(why.contains("libpod"), "{rec}");
    // No agent was started.
    assert!(
        !node.logs(&[]).iter().any(|r| r["action"] == "start"),
        "{}",
        node.guardd_log()
    );
}
