//! Learn mode and drafts (issue 14): real workloads run under `guardctl run
//! --learn`, a policy is drafted from what the journal recorded (`guardctl
//! policy draft`), and the same workloads then run under the draft with no
//! refusal, while what they did not do while learning stays refused.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{
    io::{Read, Write},
    net::TcpListener,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Output,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use common::*;
use serde_json::Value;

/// A tiny HTTP server on loopback answering every request with `ok`.
struct Http {
    port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Http {
    fn start() -> Http {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            for conn in l.incoming() {
                if s.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(mut c) = conn else { continue };
                let _ = c.set_read_timeout(Some(std::time::Duration::from_secs(5)));
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match c.read(&mut chunk) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let _ = c.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok");
            }
        });
        Http {
            port,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Http {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = std::net::TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A home directory with an SSH key in it (the credential the draft must
/// flag), world-traversable like the test's directory.
fn home(g: &Guardd) -> PathBuf {
    let h = g.dir.path().join("home");
    let ssh = h.join(".ssh");
    if !ssh.exists() {
        std::fs::create_dir_all(&ssh).unwrap();
        std::fs::write(ssh.join("id_rsa"), "-----BEGIN KEY-----\n").unwrap();
        std::fs::set_permissions(&h, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    h
}

/// A fresh working directory holding the workload's input.
fn workdir(g: &Guardd, tag: &str) -> PathBuf {
    let w = g.dir.path().join(tag);
    std::fs::create_dir_all(&w).unwrap();
    std::fs::write(w.join("data.csv"), "name,score\nb,2\na,1\nb,2\nc,3\n").unwrap();
    std::fs::set_permissions(&w, std::fs::Permissions::from_mode(0o777)).unwrap();
    w
}

/// `guardctl run [args] -- cmd` in `wd`, with `HOME` at the test's home.
fn guardctl_run(g: &Guardd, args: &[&str], cmd: &[String], wd: &Path) -> Output {
    g.ctl_cmd()
        .current_dir(wd)
        .env("HOME", home(g))
        .arg("run")
        .args(args)
        .arg("--")
        .args(cmd)
        .output()
        .unwrap()
}

fn python_work(port: u16, ops: &[String]) -> Vec<String> {
    let mut c = vec![
        PYTHON.to_owned(),
        agent_script("learnwork.py"),
        port.to_string(),
    ];
    c.extend(ops.iter().cloned());
    c
}

fn learn(g: &Guardd, name: &str, cmd: &[String], wd: &Path) -> String {
    let out = guardctl_run(g, &["--learn", "--name", name], cmd, wd);
    assert!(out.status.success(), "learn run: {}", describe(&out));
    Guardd::agent_id(&out)
}

/// `guardctl policy draft --agent AGENT -o FILE`; returns the draft.
fn draft(g: &Guardd, agent: &str, file: &Path) -> String {
    let out = g
        .ctl_cmd()
        .env("HOME", home(g))
        .args(["policy", "draft", "--agent", agent, "-o"])
        .arg(file)
        .output()
        .unwrap();
    assert!(out.status.success(), "draft: {}", describe(&out));
    std::fs::read_to_string(file).unwrap()
}

/// The agent's records with verdict `denied`.
fn denials(g: &Guardd, id: &str) -> Vec<Value> {
    g.logs(&["--agent", id, "--verdict", "denied"])
}

fn ops(out: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Lines of the draft that grant something, without their comments (use
/// counts, reasons).
fn active(text: &str) -> String {
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .map(|l| l.split("  # ").next().unwrap_or(l).trim_end())
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn a_python_workload_learned_drafted_and_enforced_runs_without_a_refusal() {
    let g = Guardd::start();
    let http = Http::start();
    let other = Listener::tcp("127.0.0.1");
    let elsewhere = g.dir.path().join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    std::fs::write(elsewhere.join("secret.txt"), "not for the agent\n").unwrap();

    let id = learn(
        &g,
        "pyworker",
        &python_work(http.port, &[]),
        &workdir(&g, "w1"),
    );
    let start = g.start_record(&id);
    assert_eq!(start["detail"]["mode"], "learn", "{start}");
    // The agent ran unconfined in files and programs, and the journal says so.
    let degraded = g.logs(&["--agent", &id, "--kind", "policy"]);
    assert!(
        degraded
            .iter()
            .any(|r| r["action"] == "degraded"
                && r["target"].as_str().unwrap().contains("not confined")),
        "{degraded:?}"
    );
    // Learn records are ordinary journal records: the data file read, the
    // results written, the server called.
    let recs = g.logs(&["--agent", &id]);
    let seen = |kind: &str, action: &str, target: &str| {
        recs.iter().any(|r| {
            r["kind"] == kind
                && r["action"] == action
                && r["verdict"] == "audit"
                && r["target"].as_str().unwrap_or("").ends_with(target)
        })
    };
    assert!(seen("file", "read", "/w1/data.csv"), "{recs:#?}");
    assert!(seen("file", "write", "/w1/results.json"), "{recs:#?}");
    assert!(
        seen(
            "network",
            "connect",
            &format!("127.0.0.1:{}/tcp", http.port)
        ),
        "{recs:#?}"
    );
    let exit = recs.iter().find(|r| r["action"] == "exit").unwrap();
    assert!(
        exit["detail"]["peak"]["processes"].as_u64().unwrap_or(0) >= 1,
        "{exit}"
    );
    let (code, why) = verify_journal(&g.journal);
    assert_eq!(code, 0, "{why}");

    let file = g.dir.path().join("pyworker.toml");
    let text = draft(&g, "pyworker", &file);
    assert!(text.contains("{workdir}"), "{text}");
    assert!(
        active(&text).contains(&format!("{}", http.port)),
        "the server's port is allowed: {text}"
    );
    let check = g.ctl(&["policy", "check", file.to_str().unwrap()]);
    assert!(check.status.success(), "{}\n{text}", describe(&check));

    // The same workload, in another working directory, under the draft.
    let policy = file.to_str().unwrap().to_owned();
    let wd = workdir(&g, "w2");
    let out = guardctl_run(
        &g,
        &["--policy", &policy],
        &python_work(http.port, &[]),
        &wd,
    );
    assert!(out.status.success(), "{}\n{text}", describe(&out));
    assert!(wd.join("results.json").exists());
    let id2 = Guardd::agent_id(&out);
    assert_eq!(denials(&g, &id2), Vec::<Value>::new(), "{text}");

    // What the workload did not do while learning is still refused.
    let secret = elsewhere.join("secret.txt").display().to_string();
    let extra = [
        format!("read:{secret}"),
        "exec:/usr/bin/id".to_owned(),
        format!("connect:{}", other.port),
    ];
    let out = guardctl_run(
        &g,
        &["--policy", &policy],
        &python_work(http.port, &extra),
        &workdir(&g, "w3"),
    );
    assert!(out.status.success(), "{}", describe(&out));
    let results = ops(&out);
    assert_eq!(results.len(), 3, "{}", describe(&out));
    for r in &results {
        assert_eq!(
            r["ok"], false,
            "{r} should be refused under the draft\n{text}"
        );
    }
    let id3 = Guardd::agent_id(&out);
    let denied = poll_denials(&g, &id3, 3);
    let has = |kind: &str, target: &str| {
        denied
            .iter()
            .any(|r| r["kind"] == kind && r["target"].as_str().unwrap_or("").contains(target))
    };
    assert!(has("file", &secret), "{denied:#?}");
    assert!(has("exec", "/usr/bin/id"), "{denied:#?}");
    assert!(
        has("network", &format!("127.0.0.1:{}", other.port)),
        "{denied:#?}"
    );
    assert_eq!(other.accepted.load(Ordering::Relaxed), 0);
}

/// The agent's denied records, once at least `n` are journaled.
fn poll_denials(g: &Guardd, id: &str, n: usize) -> Vec<Value> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let d = denials(g, id);
        if d.len() >= n || std::time::Instant::now() > deadline {
            return d;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[test]
fn a_credential_read_while_learning_is_flagged_not_allowed() {
    let g = Guardd::start();
    let http = Http::start();
    let key = home(&g).join(".ssh/id_rsa").display().to_string();
    let op = [format!("read:{key}")];
    let id = learn(&g, "nosy", &python_work(http.port, &op), &workdir(&g, "w1"));
    assert!(
        g.logs(&["--agent", &id, "--kind", "file"])
            .iter()
            .any(|r| r["target"] == key.as_str() && r["verdict"] == "audit"),
        "the key read was recorded"
    );
    let file = g.dir.path().join("nosy.toml");
    let text = draft(&g, "nosy", &file);
    assert!(text.contains("REVIEW"), "{text}");
    assert!(text.contains(".ssh"), "the credential is named: {text}");
    assert!(
        !active(&text).contains(".ssh"),
        "the credential is not granted: {text}"
    );
    // Under the draft the same workload runs, and the key read is refused.
    let out = guardctl_run(
        &g,
        &["--policy", file.to_str().unwrap()],
        &python_work(http.port, &op),
        &workdir(&g, "w2"),
    );
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(ops(&out)[0]["errno"], "EACCES", "{}", describe(&out));
    let id2 = Guardd::agent_id(&out);
    let denied = poll_denials(&g, &id2, 1);
    assert!(
        denied.iter().any(|r| r["target"] == key.as_str()),
        "{denied:#?}"
    );
}

#[test]
fn git_and_a_shell_pipeline_learned_drafted_and_enforced() {
    let g = Guardd::start();
    let script = "git init -q . && git add data.csv \
                  && git -c user.name=agent -c user.email=agent@example.com commit -qm first \
                  && sort data.csv | uniq | wc -l > count.txt && cat count.txt";
    let cmd = vec!["/bin/sh".to_owned(), "-c".to_owned(), script.to_owned()];
    learn(&g, "gitter", &cmd, &workdir(&g, "w1"));
    let file = g.dir.path().join("gitter.toml");
    let text = draft(&g, "gitter", &file);
    let wd = workdir(&g, "w2");
    let out = guardctl_run(&g, &["--policy", file.to_str().unwrap()], &cmd, &wd);
    assert!(out.status.success(), "{}\n{text}", describe(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "4");
    assert!(wd.join(".git/HEAD").exists());
    let id = Guardd::agent_id(&out);
    assert_eq!(denials(&g, &id), Vec::<Value>::new(), "{text}");
}

#[test]
fn drafts_of_two_identical_runs_are_byte_identical_and_runs_of_a_name_merge() {
    let g = Guardd::start();
    let http = Http::start();
    let a = learn(&g, "twin", &python_work(http.port, &[]), &workdir(&g, "w1"));
    let b = learn(&g, "twin", &python_work(http.port, &[]), &workdir(&g, "w2"));
    let da = draft(&g, &a, &g.dir.path().join("a.toml"));
    let db = draft(&g, &b, &g.dir.path().join("b.toml"));
    assert_eq!(da, db);
    // By name, both runs merge into one draft: the same rules, each used
    // twice as often.
    let both = draft(&g, "twin", &g.dir.path().join("both.toml"));
    assert_eq!(active(&both), active(&da));
    assert_ne!(both, da, "use counts add up across runs");
}

#[test]
fn learn_is_refused_where_the_node_forbids_running_without_layers() {
    let g = Guardd::start_with(&["--forbid-degraded", "exec"]);
    let out = guardctl_run(
        &g,
        &["--learn", "--name", "refused"],
        &["/bin/true".to_owned()],
        g.dir.path(),
    );
    assert!(!out.status.success(), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("learn mode"),
        "{}",
        describe(&out)
    );
    g.logs_until(1, |r| {
        r["rule"] == "control.learn-not-allowed" && r["verdict"] == "denied"
    });
}

#[test]
fn learn_is_refused_where_the_node_chooses_the_policy() {
    let pd = ConfigMapDir::new(&[
        ("agent.toml", "[policy]\nname = \"agent\"\n"),
        ("floor.toml", "[policy]\nname = \"floor\"\n"),
    ]);
    let d = pd.path().display().to_string();
    let true_ = ["/bin/true".to_owned()];
    for extra in [
        &["--require-named-policy"][..],
        &["--floor-policy", "floor"][..],
        &[][..],
    ] {
        let mut args = vec!["--policy-dir", d.as_str()];
        args.extend_from_slice(extra);
        let g = Guardd::start_with(&args);
        g.logs_until(1, |r| r["action"] == "policy-reload");
        // Under the node's choice, a client's own learn run is refused by
        // guardd; a learn run of a named policy already by guardctl
        // (--learn conflicts with --policy-name).
        let out = if extra.is_empty() {
            guardctl_run(
                &g,
                &["--learn", "--policy-name", "agent"],
                &true_,
                g.dir.path(),
            )
        } else {
            guardctl_run(&g, &["--learn", "--name", "mine"], &true_, g.dir.path())
        };
        assert!(!out.status.success(), "{extra:?}: {}", describe(&out));
        // Under --require-named-policy the client's policy is refused first.
        let rule = match extra.first() {
            Some(&"--require-named-policy") => "control.named-policy-required",
            Some(_) => "control.learn-not-allowed",
            None => continue,
        };
        g.logs_until(1, |r| r["rule"] == rule);
    }
}

#[test]
fn learning_on_top_of_a_policy_records_only_what_it_would_refuse() {
    let g = Guardd::start();
    let http = Http::start();
    let policy = g.write_policy(
        "partial",
        "[policy]\nname = \"partial\"\ninclude = [\"base\", \"python\"]\n\
         [filesystem]\nread = [\"{workdir}\"]\n",
    );
    let id = {
        let out = guardctl_run(
            &g,
            &["--learn", "--policy", policy.to_str().unwrap()],
            &python_work(http.port, &[]),
            &workdir(&g, "w1"),
        );
        assert!(out.status.success(), "{}", describe(&out));
        Guardd::agent_id(&out)
    };
    let files = g.logs(&["--agent", &id, "--kind", "file"]);
    // Reading the data is granted: not recorded again. Writing the results
    // is not: recorded as what the policy would refuse.
    assert!(
        !files
            .iter()
            .any(|r| r["target"].as_str().unwrap().ends_with("data.csv")),
        "{files:#?}"
    );
    let write = files
        .iter()
        .find(|r| r["target"].as_str().unwrap().ends_with("results.json"))
        .unwrap_or_else(|| panic!("{files:#?}"));
    assert_eq!(write["verdict"], "audit");
    assert_eq!(write["rule"], "filesystem.default-deny");
    // Nothing the python base grants was recorded.
    assert!(
        !files.iter().any(|r| r["target"]
            .as_str()
            .unwrap()
            .starts_with("/usr/lib/python3.11/")),
        "{files:#?}"
    );
}

#[test]
fn only_agents_in_learn_mode_are_observed() {
    let g = Guardd::start();
    let mut learner = g
        .ctl_cmd()
        .current_dir(g.dir.path())
        .args([
            "run",
            "--learn",
            "--name",
            "sleeper",
            "--",
            "/bin/sleep",
            "60",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    g.logs_until(1, |r| {
        r["action"] == "start" && r["agent"]["name"] == "sleeper"
    });
    // While it learns, an agent in audit mode (and one enforcing) opens
    // files: none of it is observed.
    let policy = g.write_policy("plain", "[policy]\nname = \"plain\"\n");
    for extra in [&["--audit"][..], &[][..]] {
        let out = g.run(
            &policy,
            extra,
            &[PYTHON, "-c", "open('/etc/hostname').read()"],
        );
        assert!(out.status.success(), "{}", describe(&out));
        let id = Guardd::agent_id(&out);
        let files = g.logs(&["--agent", &id, "--kind", "file"]);
        assert_eq!(files, Vec::<Value>::new());
    }
    // The learner was learning all along (else the runs above prove nothing).
    assert!(
        learner.try_wait().unwrap().is_none(),
        "the learner ended early"
    );
    // SAFETY: signalling the guardctl this test started, by its pid; it
    // forwards the signal to the agent.
    unsafe { libc::kill(learner.id() as i32, libc::SIGTERM) };
    learner.wait().unwrap();
    let learned = g.logs(&["--agent", "sleeper", "--kind", "file"]);
    assert!(
        learned.iter().any(|r| r["layer"] == "learn"),
        "{learned:#?}"
    );
}

#[test]
fn file_names_with_control_bytes_are_drafted_escaped_and_still_name_the_file() {
    let g = Guardd::start();
    let http = Http::start();
    let odd_dir = g.dir.path().join("odd");
    std::fs::create_dir_all(&odd_dir).unwrap();
    // A newline and an escape in a name the agent reads: neither may end a
    // line of the draft or reach the reviewer's terminal raw.
    let odd = odd_dir.join("a\nb\x1b[31mc.txt");
    std::fs::write(&odd, "x").unwrap();
    let op = [format!("read:{}", odd.display())];
    learn(&g, "odd", &python_work(http.port, &op), &workdir(&g, "w1"));
    let file = g.dir.path().join("odd.toml");
    let text = draft(&g, "odd", &file);
    assert!(!text.contains('\x1b'), "{text:?}");
    assert!(text.contains("a\\nb\\u001B[31mc.txt"), "{text}");
    // The escaped name is the file: the workload runs under the draft.
    let out = guardctl_run(
        &g,
        &["--policy", file.to_str().unwrap()],
        &python_work(http.port, &op),
        &workdir(&g, "w2"),
    );
    assert!(out.status.success(), "{}\n{text}", describe(&out));
    assert_eq!(ops(&out)[0]["ok"], true, "{}\n{text}", describe(&out));
    assert_eq!(denials(&g, &Guardd::agent_id(&out)), Vec::<Value>::new());
}

#[test]
fn a_scripts_interpreter_comes_from_the_kernel_and_is_granted() {
    let g = Guardd::start();
    let bin = g.dir.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let script = bin.join("count.sh");
    std::fs::write(&script, "#!/bin/sh\nwc -l < data.csv > count.txt\n").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let cmd = vec![script.display().to_string()];
    let id = learn(&g, "counter", &cmd, &workdir(&g, "w1"));
    let execs = g.logs(&["--agent", &id, "--kind", "exec"]);
    let first = execs
        .iter()
        .find(|r| r["target"] == script.display().to_string().as_str())
        .unwrap_or_else(|| panic!("{execs:#?}"));
    assert_eq!(first["detail"]["interpreter"], "/bin/sh", "{first}");
    let file = g.dir.path().join("counter.toml");
    let text = draft(&g, "counter", &file);
    let wd = workdir(&g, "w2");
    let out = guardctl_run(&g, &["--policy", file.to_str().unwrap()], &cmd, &wd);
    assert!(out.status.success(), "{}\n{text}", describe(&out));
    assert_eq!(
        std::fs::read_to_string(wd.join("count.txt"))
            .unwrap()
            .trim(),
        "5"
    );
    assert_eq!(
        denials(&g, &Guardd::agent_id(&out)),
        Vec::<Value>::new(),
        "{text}"
    );
}
