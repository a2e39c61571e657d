//! Drafts from synthetic records, on temporary directories and this
//! host's system paths (the bases name real ones).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::PathBuf;

use serde_json::json;

use super::*;
use crate::journal::{AgentRef, Text};
use crate::policy::{Origin, Policy, Vars};

/// A run's directories on a temporary tree: `home`, the work directory
/// under it, `{tmp}` apart, and `srv` for paths outside every variable.
struct Tree {
    _dir: tempfile::TempDir,
    root: PathBuf,
    home: PathBuf,
    work: PathBuf,
    tmp: PathBuf,
}

impl Tree {
    fn new() -> Tree {
        let dir = tempfile::tempdir().unwrap();
        // Canonical, so that paths as recorded are paths as resolved.
        let root = std::fs::canonicalize(dir.path()).unwrap();
        let home = root.join("home");
        let work = home.join("proj");
        let tmp = root.join("agent-tmp");
        for d in [&work, &tmp, &root.join("srv")] {
            std::fs::create_dir_all(d).unwrap();
        }
        Tree {
            _dir: dir,
            root,
            home,
            work,
            tmp,
        }
    }

    /// Creates a file (and its parents) under the root.
    fn file(&self, rel: &str, text: &str) -> PathBuf {
        let p = self.root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, text).unwrap();
        p
    }

    fn p(&self, rel: &str) -> String {
        self.root.join(rel).display().to_string()
    }

    fn vars(&self) -> Vars {
        Vars {
            workdir: self.work.clone(),
            home: self.home.clone(),
            tmp: self.tmp.clone(),
        }
    }

    fn start(&self, id: &str) -> Record {
        rec(
            id,
            Kind::Lifecycle,
            "start",
            "/usr/bin/python3",
            Verdict::Allowed,
        )
        .with_detail(json!({
            "mode": "learn",
            "learn": true,
            "workdir": self.work.display().to_string(),
            "home": self.home.display().to_string(),
            "tmp": self.tmp.display().to_string(),
            "launcher": {"uid": 1000, "pid": 4242, "cgroup": "/user.slice/session-1.scope"},
        }))
    }
}

fn rec(id: &str, kind: Kind, action: &str, target: &str, verdict: Verdict) -> Record {
    Record::new(
        kind,
        action,
        Text::from(target),
        verdict,
        "learn.observed",
        "learn",
    )
    .with_agent(AgentRef {
        id: id.into(),
        name: "demo".into(),
        policy: "learn".into(),
        container: None,
    })
}

fn read(id: &str, path: &str) -> Record {
    rec(id, Kind::File, "read", path, Verdict::Audit)
        .with_detail(json!({"syscall": "openat", "access": "read", "directory": false}))
}

fn opendir(id: &str, path: &str) -> Record {
    rec(id, Kind::File, "read", path, Verdict::Audit)
        .with_detail(json!({"syscall": "openat", "access": "read", "directory": true}))
}

fn write(id: &str, path: &str) -> Record {
    rec(id, Kind::File, "write", path, Verdict::Audit)
        .with_detail(json!({"syscall": "openat", "access": "write", "directory": false}))
}

fn exec(id: &str, path: &str) -> Record {
    rec(id, Kind::Exec, "exec", path, Verdict::Allowed).with_detail(json!({"argv": [path]}))
}

fn connect(id: &str, target: &str) -> Record {
    rec(id, Kind::Network, "connect", target, Verdict::Audit)
        .with_detail(json!({"hook": "connect4"}))
}

fn dns(id: &str, name: &str, addrs: &[&str]) -> Record {
    let mut r = rec(id, Kind::Dns, "query", name, Verdict::Audit).with_detail(json!({
        "name": name, "qtype": "A", "addresses": addrs,
    }));
    r.rule = "dns.name-not-allowed".into();
    r
}

fn repeated(mut r: Record, k: u64) -> Record {
    r.detail.as_mut().unwrap()["repeated"] = json!(k);
    r
}

/// Drafts, and checks what every draft must be: it parses, compiles with
/// the run's directories, and every path it names itself exists (except
/// `{tmp}`, made at each start).
fn drafted(t: &Tree, records: &[Record]) -> String {
    drafted_from(t, records, None)
}

/// Every run that has none gets a clean exit record (nothing lost), so
/// that the draft names no run as incomplete.
fn drafted_from(t: &Tree, records: &[Record], from: Option<&FromPolicy>) -> String {
    let mut records = records.to_vec();
    let ids: BTreeSet<String> = records
        .iter()
        .filter_map(|r| r.agent.as_ref().map(|a| a.id.clone()))
        .collect();
    for id in ids {
        let ended = records
            .iter()
            .any(|r| r.action == "exit" && r.agent.as_ref().is_some_and(|a| a.id == id));
        if !ended {
            records.push(
                rec(&id, Kind::Lifecycle, "exit", "exit 0", Verdict::Allowed)
                    .with_detail(json!({"lost": 0, "events_pending": 0})),
            );
        }
    }
    let d = draft(&records, from, &LocalHost).unwrap();
    let plan = Policy::parse(&d.text, "draft.toml")
        .unwrap_or_else(|e| panic!("{e}\n{}", d.text))
        .compile(&t.vars())
        .unwrap_or_else(|e| panic!("{e}\n{}", d.text));
    assert!(plan.filesystem.restricted, "{}", d.text);
    for r in plan
        .filesystem
        .rules
        .iter()
        .filter(|r| r.origin == Origin::Policy)
    {
        assert!(
            r.path == t.tmp || r.path.exists(),
            "{} does not exist:\n{}",
            r.path.display(),
            d.text
        );
    }
    for l in d.text.lines() {
        assert!(
            !l.contains("agent-1") || l.starts_with("# run agent-1: mode "),
            "an agent id outside the header's run lines:\n{}",
            d.text
        );
    }
    d.text
}

/// The lines of a list that are rules (not commented).
fn active(text: &str) -> Vec<&str> {
    text.lines()
        .filter(|l| l.starts_with("  \"") || l.starts_with("  {"))
        .collect()
}

fn has_active(text: &str, needle: &str) -> bool {
    active(text).iter().any(|l| l.contains(needle))
}

/// Commented-out rule lines under a REVIEW heading.
fn review(text: &str) -> Vec<&str> {
    text.lines()
        .filter(|l| l.starts_with("  # \"") || l.starts_with("  # {"))
        .collect()
}

fn has_review(text: &str, needle: &str) -> bool {
    review(text).iter().any(|l| l.contains(needle))
}

#[test]
fn paths_take_their_variables_longest_first() {
    let t = Tree::new();
    t.file("home/proj/data.csv", "x");
    t.file("home/.config/app/settings.json", "{}");
    t.file("agent-tmp/scratch", "");
    let recs = vec![
        t.start("agent-1"),
        read("agent-1", &t.p("home/proj/data.csv")),
        read("agent-1", &t.p("home/.config/app/settings.json")),
        write("agent-1", &t.p("agent-tmp/scratch")),
    ];
    let text = drafted(&t, &recs);
    assert!(text.contains("\n[policy]\nname = \"demo\"\n"), "{text}");
    assert!(!text.contains("mode ="), "{text}");
    assert!(has_active(&text, "\"{workdir}\""), "{text}");
    assert!(
        has_active(&text, "\"{home}/.config/app/settings.json\""),
        "{text}"
    );
    assert!(has_active(&text, "\"{tmp}\""), "{text}");
    assert!(!text.contains(&t.root.display().to_string()), "{text}");
    // The work directory lies under home: {workdir} wins.
    assert!(!text.contains("{home}/proj"), "{text}");
}

#[test]
fn g1_makes_one_rule_per_access_and_write_implies_read() {
    let t = Tree::new();
    for f in ["a", "b", "sub/c"] {
        t.file(&format!("home/proj/{f}"), "");
    }
    let recs = vec![
        t.start("agent-1"),
        read("agent-1", &t.p("home/proj/a")),
        repeated(read("agent-1", &t.p("home/proj/sub/c")), 4),
        write("agent-1", &t.p("home/proj/b")),
        read("agent-1", &t.p("agent-tmp/x")),
    ];
    let text = drafted(&t, &recs);
    let write_at = text.find("write = [").unwrap();
    let line = active(&text)
        .into_iter()
        .find(|l| l.contains("\"{workdir}\""))
        .unwrap();
    assert!(text.find(line).unwrap() > write_at, "in write:\n{text}");
    // 1 + 5 reads, 1 write.
    assert!(line.contains("# 7 uses; every path"), "{line}");
    assert!(line.contains("(G1: 3 paths)"), "{line}");
    assert_eq!(
        active(&text)
            .iter()
            .filter(|l| l.contains("{workdir}"))
            .count(),
        1,
        "{text}"
    );
    // {tmp} only read, and gone by now: G1 still names it.
    assert!(
        has_active(&text, "\"{tmp}\",  # 1 use; every path the agent read"),
        "{text}"
    );
}

#[test]
fn bases_are_included_for_what_they_grant() {
    let t = Tree::new();
    let mut recs = vec![
        t.start("agent-1"),
        exec("agent-1", "/usr/bin/python3"),
        read("agent-1", "/usr/lib/python3.11/os.py"),
        read("agent-1", "/etc/passwd"),
        read("agent-1", "/usr/lib/git-core"),
    ];
    let text = drafted(&t, &recs);
    assert!(text.contains("include = [\n  \"base\",  # "), "{text}");
    assert!(text.contains("  \"python\",  # 1 use\n"), "{text}");
    // git-core is under /usr/lib, which `base` grants: no git base.
    assert!(!text.contains("\"git\""), "{text}");
    assert!(!text.contains("\"shell\""), "{text}");
    // What a base grants is not listed again.
    for p in ["/usr/bin/python3", "/usr/lib/python3.11", "/etc/passwd"] {
        assert!(!has_active(&text, p), "{p}: {text}");
    }
    recs.push(exec("agent-1", "/usr/bin/git"));
    let text = drafted(&t, &recs);
    assert!(text.contains("  \"git\",  # 1 use\n"), "{text}");
    // Nothing ran, nothing read: no base at all.
    let text = drafted(
        &t,
        &[t.start("agent-1"), connect("agent-1", "192.0.2.7:443/tcp")],
    );
    assert!(!text.contains("include"), "{text}");
    assert!(
        text.contains("\n[filesystem]\n"),
        "files stay default-deny:\n{text}"
    );
}

#[test]
fn g2_groups_four_files_of_a_directory_not_three() {
    let t = Tree::new();
    let mut recs = vec![t.start("agent-1")];
    for f in ["a", "b", "c"] {
        t.file(&format!("srv/data/{f}.json"), "{}");
        recs.push(read("agent-1", &t.p(&format!("srv/data/{f}.json"))));
    }
    let text = drafted(&t, &recs);
    for f in ["a", "b", "c"] {
        assert!(
            has_active(&text, &format!("/srv/data/{f}.json\",  # 1 use")),
            "{text}"
        );
    }
    assert!(!text.contains("grouped"), "{text}");

    t.file("srv/data/d.json", "{}");
    recs.push(repeated(read("agent-1", &t.p("srv/data/d.json")), 2));
    let text = drafted(&t, &recs);
    let dir = t.p("srv/data");
    assert!(
        text.contains(&format!(
            "  \"{dir}\",  # 6 uses; 4 files in \"{dir}\", grouped (rule: 4 or more files of one directory)\n"
        )),
        "{text}"
    );
    assert!(!text.contains(".json"), "{text}");
}

#[test]
fn g2_never_groups_a_directory_holding_credentials() {
    let t = Tree::new();
    let mut recs = vec![t.start("agent-1")];
    // Four files directly in home, beside ~/.ssh.
    std::fs::create_dir_all(t.home.join(".ssh")).unwrap();
    for f in [".bashrc", ".profile", ".inputrc", ".vimrc"] {
        t.file(&format!("home/{f}"), "");
        recs.push(read("agent-1", &t.p(&format!("home/{f}"))));
    }
    let text = drafted(&t, &recs);
    assert!(!has_active(&text, "\"{home}\""), "{text}");
    assert!(has_active(&text, "\"{home}/.bashrc\""), "{text}");
}

/// An exec record of a script, with the interpreter the kernel ran.
fn exec_script(id: &str, path: &str, interpreter: &str) -> Record {
    rec(id, Kind::Exec, "exec", path, Verdict::Allowed)
        .with_detail(json!({"argv": [path], "interpreter": interpreter}))
}

#[test]
fn exec_implies_read_and_scripts_bring_their_interpreter() {
    let t = Tree::new();
    let tool = t.file("srv/bin/tool", "\x7fELF");
    let script = t.file("srv/bin/run", "#!/bin/sh\necho hi\n");
    let envy = t.file("srv/bin/py", "#!/usr/bin/env -S python3 -u\n");
    let recs = vec![
        t.start("agent-1"),
        exec("agent-1", &tool.display().to_string()),
        read("agent-1", &tool.display().to_string()),
        exec_script("agent-1", &script.display().to_string(), "/bin/sh"),
        exec_script("agent-1", &envy.display().to_string(), "/usr/bin/env"),
        // env's own exec of the program it starts.
        exec("agent-1", "/usr/bin/python3"),
    ];
    let text = drafted(&t, &recs);
    let tool = tool.display().to_string();
    let line = active(&text)
        .into_iter()
        .find(|l| l.contains(&tool))
        .unwrap();
    assert!(line.ends_with("# 2 uses"), "exec absorbs the read: {line}");
    assert_eq!(
        active(&text).iter().filter(|l| l.contains(&tool)).count(),
        1
    );
    // /bin/sh comes with `shell`, env and python3 with `shell` and `python`.
    assert!(text.contains("  \"shell\",  # "), "{text}");
    assert!(text.contains("  \"python\",  # 1 use\n"), "{text}");
}

#[test]
fn a_script_is_never_read_for_its_interpreter() {
    let t = Tree::new();
    // The `#!` line names a shell, but the record names no interpreter:
    // none is granted (the agent could have rewritten the line).
    let script = t.file("srv/bin/run", "#!/bin/sh\necho hi\n");
    // A FIFO where a script was: opening it would block.
    let fifo = t.root.join("srv/bin/fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
    let recs = vec![
        t.start("agent-1"),
        exec("agent-1", &script.display().to_string()),
        exec("agent-1", &fifo.display().to_string()),
    ];
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(draft(&recs, None, &LocalHost).map(|d| d.text));
    });
    let text = rx
        .recv_timeout(std::time::Duration::from_secs(20))
        .expect("the draft blocked")
        .unwrap();
    assert!(!text.contains("\"shell\""), "{text}");
    assert!(!text.contains("/bin/sh"), "{text}");
}

#[test]
fn credentials_are_flagged_never_granted() {
    let t = Tree::new();
    t.file("home/.ssh/id_ed25519", "key");
    t.file("home/proj/hf-token.txt", "t");
    t.file("home/proj/main.py", "");
    let recs = vec![
        read("agent-1", &t.p("home/proj/main.py")),
        t.start("agent-1"),
        exec("agent-1", "/usr/bin/python3"),
        read("agent-1", &t.p("home/.ssh/id_ed25519")),
        // Under /usr/lib, which `base` grants.
        read("agent-1", "/usr/lib/python3.11/tokenize.py"),
        read("agent-1", &t.p("home/proj/hf-token.txt")),
    ];
    let text = drafted(&t, &recs);
    assert!(!has_active(&text, ".ssh"), "{text}");
    assert!(!has_active(&text, "tokenize"), "{text}");
    assert!(
        has_review(
            &text,
            "\"{home}/.ssh/id_ed25519\",  # 1 use; credentials ({home}/.ssh)"
        ),
        "{text}"
    );
    assert!(
        has_review(
            &text,
            "\"/usr/lib/python3.11/tokenize.py\",  # 1 use; credential-like name"
        ),
        "{text}"
    );
    assert!(
        text.contains("NOTE: granted anyway by base \"base\""),
        "{text}"
    );
    // A credential-like file of the work directory: flagged, and G1 steps
    // back so that nothing grants it.
    let line = review(&text)
        .into_iter()
        .find(|l| l.contains("hf-token"))
        .unwrap();
    assert!(!line.contains("granted anyway"), "{line}");
    assert!(!has_active(&text, "\"{workdir}\""), "{text}");
    assert!(has_active(&text, "\"{workdir}/main.py\""), "{text}");
    assert!(
        text.contains(
            "# NOTE: {workdir} holds \"{workdir}/hf-token.txt\", a credential the agent used, so it is not granted as a whole (G1):\n# the files the agent used there are listed like any other.\n"
        ),
        "{text}"
    );
    assert!(
        text.contains("# REVIEW: 3 items are observed but not granted"),
        "{text}"
    );
}

#[test]
fn credential_words_are_judged_below_the_run_directories() {
    let t = Tree::new();
    // A work directory whose own name holds a credential word.
    let work = t.home.join("tokenizer-lab");
    std::fs::create_dir_all(work.join("secrets")).unwrap();
    std::fs::write(work.join("train.py"), "").unwrap();
    std::fs::write(work.join("secrets/api"), "").unwrap();
    let mut start = t.start("agent-1");
    start.detail.as_mut().unwrap()["workdir"] = json!(work.display().to_string());
    let recs = vec![
        start,
        read("agent-1", &work.join("train.py").display().to_string()),
        read("agent-1", &work.join("secrets/api").display().to_string()),
    ];
    let d = draft(&recs, None, &LocalHost).unwrap();
    // The work directory's own name flags nothing; a file in it does, and
    // G1 steps back for it.
    assert!(
        has_active(&d.text, "\"{workdir}/train.py\",  # 1 use"),
        "{}",
        d.text
    );
    assert!(!has_active(&d.text, "\"{workdir}\""), "{}", d.text);
    assert!(
        has_review(
            &d.text,
            "\"{workdir}/secrets/api\",  # 1 use; credential-like name"
        ),
        "{}",
        d.text
    );
    assert_eq!(d.review, 1, "{}", d.text);
}

#[test]
fn an_opened_directory_is_granted_whole_unless_it_holds_credentials() {
    let t = Tree::new();
    t.file("srv/models/m.bin", "");
    t.file("srv/keys/token.json", "");
    t.file("srv/keys/readme", "");
    let recs = vec![
        t.start("agent-1"),
        opendir("agent-1", &t.p("srv/models")),
        read("agent-1", &t.p("srv/models/m.bin")),
        opendir("agent-1", &t.p("srv/keys")),
        read("agent-1", &t.p("srv/keys/token.json")),
        read("agent-1", &t.p("srv/keys/readme")),
    ];
    let text = drafted(&t, &recs);
    let models = t.p("srv/models");
    assert!(
        text.contains(&format!(
            "  \"{models}\",  # 2 uses; a directory the agent opened; a directory grant covers its whole tree\n"
        )),
        "{text}"
    );
    assert!(!text.contains("m.bin"), "{text}");
    assert!(
        has_review(
            &text,
            &format!(
                "\"{}\",  # 1 use; a directory the agent opened",
                t.p("srv/keys")
            )
        ),
        "{text}"
    );
    assert!(has_active(&text, "srv/keys/readme"), "{text}");
    assert!(has_review(&text, "srv/keys/token.json"), "{text}");
}

#[test]
fn written_and_executed_or_outside_the_workspace_is_flagged() {
    let t = Tree::new();
    let tool = t.file("home/proj/build/tool", "");
    let helper = t.file("home/proj/bin/helper", "");
    t.file("srv/out.log", "");
    let recs = vec![
        t.start("agent-1"),
        write("agent-1", &tool.display().to_string()),
        exec("agent-1", &tool.display().to_string()),
        exec("agent-1", &helper.display().to_string()),
        write("agent-1", &t.p("srv/out.log")),
    ];
    let text = drafted(&t, &recs);
    assert!(
        has_review(
            &text,
            "\"{workdir}/build/tool\",  # 1 use; written and executed"
        ),
        "{text}"
    );
    assert!(
        has_review(
            &text,
            "\"{workdir}/bin/helper\",  # 1 use; under the writable \"{workdir}\""
        ),
        "{text}"
    );
    assert!(
        has_review(
            &text,
            &format!(
                "\"{}\",  # 1 use; write outside {{workdir}} and {{tmp}}",
                t.p("srv/out.log")
            )
        ),
        "{text}"
    );
    assert!(!has_active(&text, "out.log"), "{text}");
    assert!(has_active(&text, "\"{workdir}\""), "{text}");
    assert!(!text.contains("\nallow_write_exec"), "{text}");
}

#[test]
fn network_by_name_by_address_and_what_is_flagged() {
    let t = Tree::new();
    let meta = connect("agent-1", "169.254.169.254:80/tcp");
    let recs = vec![
        t.start("agent-1"),
        dns("agent-1", "api.example.com", &["93.184.216.34"]),
        connect("agent-1", "93.184.216.34:443/tcp"),
        repeated(connect("agent-1", "93.184.216.34:8443/tcp"), 1),
        connect("agent-1", "[2001:db8::5]:5432/tcp"),
        connect("agent-1", "[::ffff:192.0.2.9]:9000/udp"),
        connect("agent-1", "10.0.0.2:53/udp"),
        connect("agent-1", "127.0.0.1:8000/tcp"),
        meta,
        rec(
            "agent-1",
            Kind::Network,
            "bind",
            "127.0.0.1:8080/tcp",
            Verdict::Audit,
        ),
        rec(
            "agent-1",
            Kind::Network,
            "connect",
            "/run/docker.sock",
            Verdict::Denied,
        )
        .with_detail(json!({"family": "unix"})),
        dns("agent-1", "unused.example.org", &["198.51.100.3"]),
    ];
    let text = drafted(&t, &recs);
    assert!(
        has_active(
            &text,
            "{ host = \"api.example.com\", ports = [443, 8443], protocol = \"tcp\" },  # 3 uses; reached by name"
        ),
        "{text}"
    );
    assert!(
        has_active(
            &text,
            "{ cidr = \"2001:db8::5/128\", ports = [5432], protocol = \"tcp\" }"
        ),
        "{text}"
    );
    assert!(
        has_active(
            &text,
            "{ cidr = \"192.0.2.9/32\", ports = [9000], protocol = \"udp\" }"
        ),
        "{text}"
    );
    assert!(
        has_active(
            &text,
            "{ cidr = \"127.0.0.1/32\", ports = [8000], protocol = \"tcp\" }"
        ),
        "{text}"
    );
    assert!(
        !text.contains(":53") && !text.contains("[53]") && !text.contains("10.0.0.2"),
        "{text}"
    );
    assert!(
        has_review(
            &text,
            "{ cidr = \"169.254.169.254/32\", ports = [80], protocol = \"tcp\" },  # 1 use; link-local or cloud metadata"
        ),
        "{text}"
    );
    assert!(
        has_review(
            &text,
            "{ cidr = \"127.0.0.1/32\", ports = [8080], protocol = \"tcp\" },  # 1 use; the agent listened here"
        ),
        "{text}"
    );
    assert!(text.contains("listen = [\n  # REVIEW"), "{text}");
    assert!(
        has_review(
            &text,
            "{ unix = \"/run/docker.sock\" },  # 1 use; a Unix socket"
        ),
        "{text}"
    );
    assert!(
        has_review(
            &text,
            "{ host = \"unused.example.org\" },  # 1 query; asked for but never connected to"
        ),
        "{text}"
    );
}

#[test]
fn a_name_resolving_to_metadata_or_private_addresses() {
    let t = Tree::new();
    let recs = vec![
        t.start("agent-1"),
        dns("agent-1", "metadata.google.internal", &["169.254.169.254"]),
        connect("agent-1", "169.254.169.254:80/tcp"),
        dns("agent-1", "db.corp.example", &["10.1.2.3"]),
        connect("agent-1", "10.1.2.3:5432/tcp"),
    ];
    let text = drafted(&t, &recs);
    assert!(
        has_review(
            &text,
            "{ host = \"metadata.google.internal\", ports = [80], protocol = \"tcp\" }"
        ),
        "{text}"
    );
    assert!(
        has_active(
            &text,
            "{ host = \"db.corp.example\", ports = [5432], protocol = \"tcp\" }"
        ),
        "{text}"
    );
    assert!(text.contains("\n[network.dns]\nanswers_allowed = [\n  \"10.1.2.3/32\",  # \"db.corp.example\" resolved here"), "{text}");
    assert!(has_review(&text, "\"169.254.169.254/32\""), "{text}");
    let plan = Policy::parse(&text, "d")
        .unwrap()
        .compile(&t.vars())
        .unwrap();
    let dnsplan = plan.network.dns.unwrap();
    assert!(dnsplan.answer_allowed("10.1.2.3".parse().unwrap()));
    assert!(!dnsplan.answer_allowed("169.254.169.254".parse().unwrap()));
}

#[test]
fn base_unix_sockets_syscalls_watches_and_limits() {
    let t = Tree::new();
    let recs = vec![
        t.start("agent-1"),
        exec("agent-1", "/usr/bin/python3"),
        rec(
            "agent-1",
            Kind::Network,
            "connect",
            "/var/run/nscd/socket",
            Verdict::Denied,
        )
        .with_detail(json!({"family": "unix"})),
        rec("agent-1", Kind::Syscall, "ptrace", "pid 4", Verdict::Denied),
        repeated(
            rec("agent-1", Kind::Syscall, "mount", "", Verdict::Denied).with_detail(json!({})),
            2,
        ),
        rec(
            "agent-1",
            Kind::Syscall,
            "inotify_add_watch",
            "/x",
            Verdict::Audit,
        ),
        rec(
            "agent-1",
            Kind::Lifecycle,
            "exit",
            "exit 0",
            Verdict::Allowed,
        )
        .with_detail(json!({"peak": {"processes": 3, "memory_bytes": 50_000_000}})),
    ];
    let mut recs = recs;
    for r in &mut recs {
        if r.kind == Kind::Syscall && r.action != "inotify_add_watch" {
            r.layer = "seccomp".into();
        }
    }
    let text = drafted(&t, &recs);
    assert!(!text.contains("nscd"), "base grants it: {text}");
    assert!(text.contains(
        "#   system calls refused by seccomp: mount (3 uses), ptrace (1 use); no policy key allows them"
    ), "{text}");
    assert!(
        text.contains(
            "\n[process]\nmax_processes = 16  # peak at most 8 processes: twice the peak, rounded up to a multiple of 16\n"
        ),
        "{text}"
    );
    assert!(
        text.contains(
            "memory = \"128M\"  # peak at most 64 MiB: twice the peak, rounded up to a multiple of 64 MiB\n"
        ),
        "{text}"
    );
    assert!(
        text.contains("inotify = true  # 1 inotify watch placed"),
        "{text}"
    );
    let plan = Policy::parse(&text, "d")
        .unwrap()
        .compile(&t.vars())
        .unwrap();
    assert_eq!(plan.process.max_processes, Some(16));
    assert_eq!(plan.process.memory_bytes, Some(128 << 20));
    assert!(plan.process.inotify);
}

fn workload(t: &Tree, id: &str) -> Vec<Record> {
    t.file("home/proj/main.py", "print(1)");
    t.file("home/.config/app.toml", "");
    for f in ["a", "b", "c", "d"] {
        t.file(&format!("srv/data/{f}"), "");
    }
    let mut v = vec![
        t.start(id),
        exec(id, "/usr/bin/python3"),
        read(id, &t.p("home/proj/main.py")),
        write(id, &t.p("home/proj/out.txt")),
        read(id, &t.p("home/.config/app.toml")),
        read(id, &t.p("home/.ssh/config")),
        write(id, &t.p("srv/log")),
        dns(id, "pypi.org", &["151.101.0.223"]),
        connect(id, "151.101.0.223:443/tcp"),
        connect(id, "203.0.113.9:8080/tcp"),
        rec(id, Kind::Lifecycle, "exit", "exit 0", Verdict::Allowed)
            .with_detail(json!({"peak": {"processes": 12, "memory_bytes": 1_000_000}})),
    ];
    for f in ["a", "b", "c", "d"] {
        v.push(read(id, &t.p(&format!("srv/data/{f}"))));
    }
    v
}

#[test]
fn runs_merge_with_counts_summed() {
    let t = Tree::new();
    let one = drafted(&t, &workload(&t, "agent-1"));
    let mut both = workload(&t, "agent-1");
    both.extend(workload(&t, "agent-2"));
    let two = drafted(&t, &both);
    assert!(one.contains("from 1 run of agent \"demo\""), "{one}");
    assert!(two.contains("from 2 runs of agent \"demo\""), "{two}");
    assert!(
        has_active(&one, "\"{home}/.config/app.toml\",  # 1 use"),
        "{one}"
    );
    assert!(
        has_active(&two, "\"{home}/.config/app.toml\",  # 2 uses"),
        "{two}"
    );
    assert!(
        has_active(
            &two,
            "{ host = \"pypi.org\", ports = [443], protocol = \"tcp\" },  # 2 uses"
        ),
        "{two}"
    );
    assert!(
        two.contains("max_processes = 32  # peak at most 16 processes"),
        "{two}"
    );
    // One line per rule, however many runs.
    assert_eq!(active(&one).len(), active(&two).len(), "{one}\n{two}");
}

/// A deterministic shuffle.
fn shuffled(mut v: Vec<Record>) -> Vec<Record> {
    v.reverse();
    let n = v.len();
    for i in 0..n {
        v.swap(i, (i * 7 + 3) % n);
    }
    v
}

#[test]
fn same_records_any_order_same_text_and_one_run_under_any_id() {
    let t = Tree::new();
    let mut a = workload(&t, "agent-1");
    a.extend(workload(&t, "agent-2"));
    let first = drafted(&t, &a);
    assert_eq!(first, drafted(&t, &shuffled(a)));
    // Merged runs are listed by id, so a reviewer sees what was merged.
    assert!(
        first.contains(
            "\n# run agent-1: mode learn, started by uid 1000 (pid 4242), on the host\n\
             # run agent-2: mode learn, started by uid 1000 (pid 4242), on the host\n"
        ),
        "{first}"
    );
    // One run: the same text under any id.
    let one = drafted(&t, &workload(&t, "agent-1"));
    assert_eq!(one, drafted(&t, &shuffled(workload(&t, "0f3a"))));
    assert!(!one.contains("# run "), "{one}");
}

/// A second workload, unlike [`workload`]: what one run does changes what
/// the draft makes of the other's (a directory one run lists holds a
/// secret the other reads; both reach the same name).
fn other_workload(t: &Tree, id: &str) -> Vec<Record> {
    t.file("srv/d/readme", "");
    t.file("srv/d/api-secret", "");
    t.file("srv/d/notes", "");
    vec![
        t.start(id),
        read(id, &t.p("srv/d/api-secret")),
        read(id, &t.p("srv/d/notes")),
        exec(id, "/bin/sh"),
        dns(id, "pypi.org", &["151.101.0.223"]),
        connect(id, "151.101.0.223:8443/tcp"),
        connect(id, "198.51.100.4:5432/tcp"),
        rec(id, Kind::Lifecycle, "exit", "exit 0", Verdict::Allowed)
            .with_detail(json!({"peak": {"processes": 40, "memory_bytes": 300_000_000}})),
    ]
}

#[test]
fn two_different_runs_draft_the_same_text_in_either_order() {
    let t = Tree::new();
    let with_dir = |id: &str| {
        let mut v = workload(&t, id);
        v.push(opendir(id, &t.p("srv/d")));
        v
    };
    let mut a = with_dir("agent-1");
    a.extend(other_workload(&t, "agent-2"));
    let mut b = other_workload(&t, "agent-1");
    b.extend(with_dir("agent-2"));
    let first = drafted(&t, &a);
    assert_eq!(first, drafted(&t, &shuffled(b)));
    // The secret one run read keeps the directory the other listed out.
    assert!(
        !has_active(&first, &format!("\"{}\"", t.p("srv/d"))),
        "{first}"
    );
    assert!(has_review(&first, "srv/d/api-secret"), "{first}");
}

#[test]
fn gone_paths_are_noted_unless_a_grant_covers_them() {
    let t = Tree::new();
    let mut recs = vec![
        t.start("agent-1"),
        read("agent-1", &t.p("srv/vanished.lock")),
    ];
    for f in ["a", "b", "c", "d"] {
        t.file(&format!("srv/pkg/{f}"), "");
        recs.push(read("agent-1", &t.p(&format!("srv/pkg/{f}"))));
    }
    recs.push(read("agent-1", &t.p("srv/pkg/gone")));
    recs.push(exec("agent-1", &t.p("srv/bin/gone-tool")));
    let text = drafted(&t, &recs);
    assert!(
        text.contains(&format!(
            "#   read of \"{}\" (1 use): gone at draft time",
            t.p("srv/vanished.lock")
        )),
        "{text}"
    );
    assert!(
        text.contains("gone-tool\" (1 use): gone at draft time"),
        "{text}"
    );
    // Five files of srv/pkg, one of them gone: the group covers it.
    assert!(text.contains("# 5 uses; 5 files in"), "{text}");
    assert!(!text.contains("srv/pkg/gone"), "{text}");
}

#[test]
fn unresolved_and_unwritable_paths_are_noted() {
    let t = Tree::new();
    let recs = vec![
        t.start("agent-1"),
        read("agent-1", "<fd 3>/x"),
        read("agent-1", "/srv/{home}/x"),
        read("agent-1", "/srv/a\nname = \"evil\""),
    ];
    let d = draft(&recs, None, &LocalHost).unwrap();
    assert!(
        d.text.contains("#   read of \"<fd 3>/x\": unresolved path"),
        "{}",
        d.text
    );
    assert!(
        d.text.contains("which a policy reads as a variable"),
        "{}",
        d.text
    );
    // The newline stays escaped: the note cannot add a line to the policy.
    assert!(
        d.text
            .contains("#   read of \"/srv/a\\nname = \\\"evil\\\"\" (1 use): gone at draft time"),
        "{}",
        d.text
    );
    assert!(!d.text.contains("\nname = \"evil\""), "{}", d.text);
    assert_eq!(d.review, 3);
}

#[test]
fn from_policy_rules_are_kept_and_not_drafted_again() {
    let t = Tree::new();
    let dir = t.root.join("pol");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("team.toml"),
        "[network]\nallow = [{ cidr = \"203.0.113.0/24\", ports = [8080] }]\n",
    )
    .unwrap();
    let text = "[policy]\nname = \"agent\"\nmode = \"audit\"\ninclude = [\"base\", \"./team.toml\"]\n\
                [filesystem]\nread = [\"{home}/.config\"]\n\
                [network]\nallow = [{ host = \"pypi.org\", ports = [443], protocol = \"tcp\" }]\n\
                [process]\nmax_processes = 100\ninotify = false\n";
    let path = dir.join("p.toml");
    std::fs::write(&path, text).unwrap();
    let policy = Policy::load(&path).unwrap();
    let from = FromPolicy {
        label: "p.toml".into(),
        text: text.into(),
        policy,
    };
    let mut recs = workload(&t, "agent-1");
    recs.push(rec(
        "agent-1",
        Kind::Syscall,
        "inotify_add_watch",
        "/x",
        Verdict::Audit,
    ));
    let out = drafted_from(&t, &recs, Some(&from));
    assert!(out.contains("# The rules of p.toml are kept"), "{out}");
    assert!(out.contains("  \"base\",  # from p.toml; "), "{out}");
    assert!(
        has_active(&out, "\"{home}/.config\",  # from p.toml; 1 use"),
        "{out}"
    );
    assert!(
        has_active(
            &out,
            "{ host = \"pypi.org\", ports = [443], protocol = \"tcp\" },  # from p.toml; 1 use"
        ),
        "{out}"
    );
    let team = dir.join("team.toml").display().to_string();
    assert!(
        has_active(
            &out,
            &format!(
                "{{ cidr = \"203.0.113.0/24\", ports = [8080] }},  # from p.toml via {team}; 1 use"
            )
        ),
        "{out}"
    );
    // Granted by the policy, so not drafted again.
    assert!(!out.contains("app.toml"), "{out}");
    assert_eq!(out.matches("pypi.org").count(), 1, "{out}");
    assert!(!out.contains("203.0.113.9"), "{out}");
    // Learned beyond it: the workspace and the rest.
    assert!(has_active(&out, "\"{workdir}\""), "{out}");
    assert!(
        out.contains("max_processes = 100  # from p.toml\n"),
        "{out}"
    );
    assert!(
        out.contains("inotify = true  # 1 inotify watch placed"),
        "{out}"
    );
    assert!(!out.contains("inotify = false"), "{out}");
    assert!(!out.contains("mode ="), "{out}");
}

#[test]
fn select_takes_a_name_an_id_or_a_prefix() {
    let named = |id: &str, name: &str| {
        let mut r = rec(id, Kind::Lifecycle, "start", "x", Verdict::Allowed);
        r.agent.as_mut().unwrap().name = name.into();
        r
    };
    let all = vec![
        named("a1b2", "web"),
        named("a1c3", "web"),
        named("ff00", "batch"),
    ];
    let ids =
        |v: Vec<Record>| -> Vec<String> { v.into_iter().map(|r| r.agent.unwrap().id).collect() };
    assert_eq!(ids(select(all.clone(), "web").unwrap()), ["a1b2", "a1c3"]);
    assert_eq!(ids(select(all.clone(), "a1c3").unwrap()), ["a1c3"]);
    assert_eq!(ids(select(all.clone(), "f").unwrap()), ["ff00"]);
    assert_eq!(
        select(all.clone(), "a1").unwrap_err().to_string(),
        "a1 is ambiguous: it starts the ids a1b2, a1c3; give more of the id, or the name"
    );
    assert_eq!(
        select(all, "nope").unwrap_err(),
        DraftError::NotFound { key: "nope".into() }
    );
}

#[test]
fn errors_are_precise() {
    let t = Tree::new();
    let e = draft(&[read("agent-7", "/etc/hosts")], None, &LocalHost).unwrap_err();
    assert_eq!(
        e,
        DraftError::NoStart {
            agent: "agent-7".into()
        }
    );
    assert!(e.to_string().starts_with("run agent-7: no start record"));
    assert_eq!(
        draft(&[], None, &LocalHost).unwrap_err(),
        DraftError::NoRecords
    );
    let mut bad = t.start("agent-1");
    bad.detail.as_mut().unwrap()["workdir"] = json!("rel/dir");
    assert_eq!(
        draft(&[bad], None, &LocalHost).unwrap_err().to_string(),
        "run agent-1: the start record's `workdir` is \"rel/dir\" (not an absolute path)"
    );
    let mut other = t.start("agent-2");
    other.agent.as_mut().unwrap().name = "other".into();
    assert!(matches!(
        draft(&[t.start("agent-1"), other], None, &LocalHost),
        Err(DraftError::MixedNames { .. })
    ));
}

#[test]
fn a_start_without_home_substitutes_none_and_names_are_made_valid() {
    let t = Tree::new();
    t.file("home/.config/x", "");
    let mut start = t.start("agent-1");
    start
        .detail
        .as_mut()
        .unwrap()
        .as_object_mut()
        .unwrap()
        .remove("home");
    start.agent.as_mut().unwrap().name = "my agent/1".into();
    let mut r = read("agent-1", &t.p("home/.config/x"));
    r.agent.as_mut().unwrap().name = "my agent/1".into();
    let d = draft(&[start, r], None, &LocalHost).unwrap();
    assert_eq!(d.name, "my-agent-1");
    assert!(d.text.contains("name = \"my-agent-1\"\n"), "{}", d.text);
    assert!(d.text.contains(&t.p("home/.config/x")), "{}", d.text);
    assert!(!d.text.contains("{home}"), "{}", d.text);
    // An empty home is no home either.
    let mut start = t.start("agent-1");
    start.detail.as_mut().unwrap()["home"] = json!("");
    let d = draft(
        &[start, read("agent-1", &t.p("home/.config/x"))],
        None,
        &LocalHost,
    )
    .unwrap();
    assert!(!d.text.contains("{home}"), "{}", d.text);
}

#[test]
fn a_directory_read_as_a_file_is_still_judged_as_a_directory() {
    let t = Tree::new();
    t.file("srv/box/token", "");
    t.file("srv/box/a", "");
    let recs = vec![
        t.start("agent-1"),
        // Not marked as a directory, but one on the host.
        read("agent-1", &t.p("srv/box")),
        read("agent-1", &t.p("srv/box/token")),
    ];
    let text = drafted(&t, &recs);
    assert!(
        has_review(
            &text,
            &format!(
                "\"{}\",  # 1 use; a directory (on this host",
                t.p("srv/box")
            )
        ),
        "{text}"
    );
    assert!(!has_active(&text, "srv/box"), "{text}");
}

#[test]
fn a_workdir_holding_credentials_is_not_granted_whole() {
    let t = Tree::new();
    t.file("home/.ssh/id_rsa", "");
    t.file("home/notes.txt", "");
    let mut start = t.start("agent-1");
    start.detail.as_mut().unwrap()["workdir"] = json!(t.home.display().to_string());
    let recs = vec![
        start,
        read("agent-1", &t.p("home/notes.txt")),
        write("agent-1", &t.p("home/notes.txt")),
    ];
    let d = draft(&recs, None, &LocalHost).unwrap();
    let text = &d.text;
    assert!(!has_active(text, "\"{workdir}\""), "{text}");
    let write_at = text.find("write = [").unwrap();
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("  \"{workdir}/notes.txt\","))
        .collect();
    // G3: the write grants the read.
    assert_eq!(lines.len(), 1, "{text}");
    assert!(lines[0].ends_with("# 2 uses"), "{text}");
    assert!(text.find(lines[0]).unwrap() > write_at, "{text}");
    assert!(review(text).is_empty(), "{text}");
    assert!(
        text.contains("\n# NOTE: {workdir} holds credentials ({home}/.ssh), so it is not granted"),
        "{text}"
    );
    assert_eq!(d.review, 0);
}

#[test]
fn a_link_out_of_the_workdir_is_drafted_as_it_resolves() {
    let t = Tree::new();
    let target = t.file("srv/shared/config.yaml", "");
    t.file("home/proj/main.py", "");
    std::os::unix::fs::symlink(&target, t.work.join("config.yaml")).unwrap();
    std::os::unix::fs::symlink(t.home.join(".ssh/id_rsa"), t.work.join("deploy")).unwrap();
    t.file("home/.ssh/id_rsa", "");
    let recs = vec![
        t.start("agent-1"),
        read("agent-1", &t.p("home/proj/main.py")),
        read("agent-1", &t.p("home/proj/config.yaml")),
        read("agent-1", &t.p("home/proj/deploy")),
    ];
    let text = drafted(&t, &recs);
    // {workdir} does not cover what the link reaches: its target is named.
    assert!(
        has_active(&text, &format!("\"{}\",  # 1 use", target.display())),
        "{text}"
    );
    assert!(has_active(&text, "\"{workdir}\",  # 1 use"), "{text}");
    // A link to a key is a key.
    assert!(has_review(&text, "credentials ({home}/.ssh)"), "{text}");
}

#[test]
fn from_policy_programs_keep_the_workdir_unwritable() {
    let t = Tree::new();
    let tool = t.file("home/proj/bin/tool", "");
    let text = "[policy]\nname = \"p\"\n[filesystem]\nexec = [\"{workdir}/bin/tool\"]\n";
    let from = FromPolicy {
        label: "p.toml".into(),
        text: text.into(),
        policy: Policy::parse(text, "p.toml").unwrap(),
    };
    let recs = vec![
        t.start("agent-1"),
        exec("agent-1", &tool.display().to_string()),
        write("agent-1", &t.p("home/proj/out.txt")),
        read("agent-1", &t.p("home/proj/in.txt")),
    ];
    t.file("home/proj/in.txt", "");
    let out = drafted_from(&t, &recs, Some(&from));
    assert!(
        has_active(&out, "\"{workdir}/bin/tool\",  # from p.toml; 1 use"),
        "{out}"
    );
    let real = std::fs::canonicalize(&tool).unwrap().display().to_string();
    assert!(
        has_review(
            &out,
            &format!(
                "\"{{workdir}}\",  # 1 use; writes under {{workdir}} (G1), but \"{real}\" may be run there"
            )
        ),
        "{out}"
    );
    assert!(
        has_active(&out, "\"{workdir}\",  # 1 use; every path the agent read"),
        "{out}"
    );
}

#[test]
fn limits_above_the_from_policy_are_raised() {
    let t = Tree::new();
    let text =
        "[policy]\nname = \"p\"\n[process]\nmax_processes = 20\nmemory = \"1G\"\ncpu = 0.5\n";
    let from = FromPolicy {
        label: "p.toml".into(),
        text: text.into(),
        policy: Policy::parse(text, "p.toml").unwrap(),
    };
    let recs = vec![
        t.start("agent-1"),
        rec(
            "agent-1",
            Kind::Lifecycle,
            "exit",
            "exit 0",
            Verdict::Allowed,
        )
        .with_detail(json!({"peak": {"processes": 40, "memory_bytes": 1000}})),
    ];
    let out = drafted_from(&t, &recs, Some(&from));
    assert!(out.contains("max_processes = 80  # peak at most 40 processes: twice the peak, rounded up to a multiple of 16 (raised from the value of p.toml)\n"), "{out}");
    assert!(out.contains("memory = \"1G\"  # from p.toml\n"), "{out}");
    assert!(out.contains("cpu = 0.5  # from p.toml\n"), "{out}");
    assert!(!out.contains("max_processes = 20"), "{out}");
}

/// The draft of two runs of one workload, as the docs and the report show
/// it (the temporary root written as /T).
const EXAMPLE: &str = r#"# Drafted by `guardctl policy draft` from 2 runs of agent "demo" (mode: learn).
# run agent-1: mode learn, started by uid 1000 (pid 4242), on the host
# run agent-2: mode learn, started by uid 1000 (pid 4242), on the host
# It grants what the runs were seen doing and nothing more; each rule says how
# often it was used. Grouping (docs/policy.md, "Learning a policy"):
#   G1 every path under {workdir}, and under {tmp}, is one rule per access;
#   G2 elsewhere, 4 or more files of one access directly in one directory
#      become that directory; programs are always listed one by one;
#   G3 exec implies read, and write implies read.
# REVIEW: 2 items are observed but not granted: the lines marked REVIEW below.
# Uncomment a rule line only after deciding the agent needs it.

[policy]
name = "demo"
include = [
  "base",  # 2 uses; the dynamic loader of every program start counts as one
  "python",  # 2 uses
]

[filesystem]
read = [
  "/T/srv/data",  # 8 uses; 4 files in "/T/srv/data", grouped (rule: 4 or more files of one directory)
  "{home}/.config/app.toml",  # 2 uses
  # REVIEW: not granted; uncomment a line to grant it.
  # "{home}/.ssh/config",  # 2 uses; credentials ({home}/.ssh)
]
write = [
  "{workdir}",  # 4 uses; every path the agent wrote or read under {workdir}, one rule (G1: 2 paths)
  # REVIEW: not granted; uncomment a line to grant it.
  # "/T/srv/log",  # 2 uses; write outside {workdir} and {tmp} (gone at draft time: name an existing parent)
]

[network]
allow = [
  { host = "pypi.org", ports = [443], protocol = "tcp" },  # 2 uses; reached by name
  { cidr = "203.0.113.9/32", ports = [8080], protocol = "tcp" },  # 2 uses
]

[process]
max_processes = 32  # peak at most 16 processes: twice the peak, rounded up to a multiple of 16
memory = "64M"  # peak at most 32 MiB: twice the peak, rounded up to a multiple of 64 MiB
"#;

#[test]
fn the_example_draft() {
    let t = Tree::new();
    let mut recs = workload(&t, "agent-1");
    recs.extend(workload(&t, "agent-2"));
    let text = drafted(&t, &recs);
    assert_eq!(text.replace(&t.root.display().to_string(), "/T"), EXAMPLE);
}

#[test]
fn a_directory_name_cannot_add_a_rule_through_a_comment() {
    let t = Tree::new();
    // The review's exploit: a directory the agent made, whose name ends a
    // comment line and adds `"/etc",` (spelled with a TOML escape, as a
    // file name cannot hold `/`) to the list. One run lists it, another
    // reads a credential-like file inside it.
    let evil = "srv/x\n  \"\\u002Fetc\",\n  #";
    t.file(&format!("{evil}/a"), "");
    t.file(&format!("{evil}/api-token"), "");
    let recs = vec![
        t.start("agent-1"),
        opendir("agent-1", &t.p(evil)),
        t.start("agent-2"),
        read("agent-2", &t.p(&format!("{evil}/api-token"))),
    ];
    let text = match draft(&recs, None, &LocalHost) {
        Ok(d) => d.text,
        Err(e) => panic!("{e}"),
    };
    let plan = Policy::parse(&text, "d")
        .unwrap()
        .compile(&t.vars())
        .unwrap();
    assert!(
        !plan
            .filesystem
            .rules
            .iter()
            .any(|r| r.origin == Origin::Policy && r.path == std::path::Path::new("/etc")),
        "{text}"
    );
    assert!(!text.contains("\n  \"\\u002Fetc\""), "{text}");
}

#[test]
fn comments_stay_on_their_line_and_the_text_holds_only_what_was_drafted() {
    let mut o = Out::default();
    o.table("filesystem");
    let mut l = List::default();
    l.add(
        false,
        Item {
            value: quote("/srv/a"),
            comment: "1 use; granted by /x\n  \"\\u002Fetc\",\n  #".into(),
        },
    );
    o.list("read", &l).unwrap();
    o.comment("NOTE: a\n\"/etc\",");
    assert!(!o.text.contains("\n  \"\\u002Fetc\""), "{}", o.text);
    assert!(!o.text.contains("\n\"/etc\""), "{}", o.text);
    verify(&o.text, &o.doc).unwrap();
    // Text written past the writer: caught by the parse.
    let forged = o.text.replace("]\n", "  \"/etc\",\n]\n");
    assert!(matches!(
        verify(&forged, &o.doc),
        Err(DraftError::Invalid { .. })
    ));
    let mut o = Out::default();
    o.table("filesystem");
    let mut l = List::default();
    // A value that is two values is refused before it is written.
    l.add(
        false,
        Item {
            value: "\"/srv/a\", \"/etc\"".into(),
            comment: String::new(),
        },
    );
    assert!(matches!(
        o.list("read", &l),
        Err(DraftError::Invalid { .. })
    ));
}

#[test]
fn runs_peaking_a_little_differently_draft_the_same_limits() {
    let t = Tree::new();
    let run = |procs: u64, mem: u64| {
        let recs = vec![
            t.start("agent-1"),
            rec(
                "agent-1",
                Kind::Lifecycle,
                "exit",
                "exit 0",
                Verdict::Allowed,
            )
            .with_detail(json!({"peak": {"processes": procs, "memory_bytes": mem}})),
        ];
        drafted(&t, &recs)
    };
    let a = run(11, 30 << 20);
    assert_eq!(a, run(12, 31 << 20));
    assert!(
        a.contains("max_processes = 32  # peak at most 16 processes"),
        "{a}"
    );
    assert_ne!(a, run(17, 31 << 20));
}

#[test]
fn a_refused_inotify_watch_does_not_draft_inotify() {
    let t = Tree::new();
    let mut refused = rec(
        "agent-1",
        Kind::Syscall,
        "inotify_add_watch",
        "/etc",
        Verdict::Denied,
    );
    refused.layer = "seccomp".into();
    // As an enforcing run's seccomp journals it: a file record.
    let mut as_file = refused.clone();
    as_file.kind = Kind::File;
    let recs = vec![t.start("agent-1"), refused, as_file];
    let text = drafted(&t, &recs);
    assert!(!text.contains("\ninotify = true"), "{text}");
    assert!(
        text.contains(
            "#   inotify watches refused (2 uses, by seccomp in an enforcing run): not drafted"
        ),
        "{text}"
    );
    assert!(!text.contains("\n[process]\n"), "{text}");
}

#[test]
fn answers_allowed_holds_only_addresses_connected_to_and_never_metadata() {
    let t = Tree::new();
    let recs = vec![
        t.start("agent-1"),
        // Resolved to two private addresses and the metadata service;
        // connected to one.
        dns(
            "agent-1",
            "db.corp.example",
            &["10.1.2.3", "10.1.2.4", "169.254.169.254"],
        ),
        connect("agent-1", "10.1.2.3:5432/tcp"),
    ];
    let text = drafted(&t, &recs);
    assert!(has_active(&text, "\"10.1.2.3/32\""), "{text}");
    assert!(!text.contains("10.1.2.4"), "{text}");
    assert!(!text.contains("169.254.169.254"), "{text}");

    // A name the --from policy allows, connected at the metadata address:
    // its answer is for review, never allowed.
    let p = "[policy]\nname = \"p\"\n[network]\n\
             allow = [{ host = \"meta.example\", ports = [80], protocol = \"tcp\" }]\n";
    let from = FromPolicy {
        label: "p.toml".into(),
        text: p.into(),
        policy: Policy::parse(p, "p.toml").unwrap(),
    };
    let recs = vec![
        t.start("agent-1"),
        dns("agent-1", "meta.example", &["169.254.169.254"]),
        connect("agent-1", "169.254.169.254:80/tcp"),
    ];
    let text = drafted_from(&t, &recs, Some(&from));
    assert!(!has_active(&text, "169.254.169.254"), "{text}");
    assert!(
        has_review(
            &text,
            "\"169.254.169.254/32\",  # \"meta.example\" resolved here and was connected to; link-local or cloud metadata"
        ),
        "{text}"
    );
    let plan = Policy::parse(&text, "d")
        .unwrap()
        .compile(&t.vars())
        .unwrap();
    assert!(
        !plan
            .network
            .dns
            .unwrap()
            .answer_allowed("169.254.169.254".parse().unwrap())
    );
}

#[test]
fn names_sharing_an_address_are_not_granted_by_it() {
    let t = Tree::new();
    let recs = vec![
        t.start("agent-1"),
        dns("agent-1", "pypi.example", &["198.51.100.7"]),
        dns("agent-1", "evil.example", &["198.51.100.7", "198.51.100.8"]),
        connect("agent-1", "198.51.100.7:443/tcp"),
        // Listed by one name only.
        connect("agent-1", "198.51.100.8:443/tcp"),
        // Listed by no answer: by address.
        connect("agent-1", "198.51.100.9:443/tcp"),
        dns("agent-1", "asked.example", &["198.51.100.10"]),
    ];
    let text = drafted(&t, &recs);
    assert!(!has_active(&text, "pypi.example"), "{text}");
    assert!(!has_active(&text, "198.51.100.7"), "{text}");
    assert!(
        has_review(
            &text,
            "{ host = \"pypi.example\", ports = [443], protocol = \"tcp\" },  # 1 use; shared the address 198.51.100.7 with \"evil.example\""
        ),
        "{text}"
    );
    assert!(
        has_review(
            &text,
            "{ host = \"evil.example\", ports = [443], protocol = \"tcp\" },  # 1 use; shared the address 198.51.100.7 with \"pypi.example\""
        ),
        "{text}"
    );
    assert!(
        has_active(
            &text,
            "{ host = \"evil.example\", ports = [443], protocol = \"tcp\" },  # 1 use; reached by name"
        ),
        "{text}"
    );
    assert!(has_active(&text, "{ cidr = \"198.51.100.9/32\""), "{text}");
    assert!(!has_active(&text, "asked.example"), "{text}");
    assert!(
        has_review(
            &text,
            "{ host = \"asked.example\" },  # 1 query; asked for but never connected to"
        ),
        "{text}"
    );
}

#[test]
fn credentials_are_found_wherever_they_lie_without_a_home() {
    let t = Tree::new();
    let paths = [
        "srv/other/.aws/credentials",
        "srv/other/.azure/config",
        "srv/other/.config/gh/hosts.yml",
        "srv/other/.npmrc",
        "srv/other/.pypirc",
        "srv/keys/id_ed25519_deploy",
        "srv/keys/vault.kdbx",
        "srv/keys/client.P12",
        "srv/keys/site.pfx",
    ];
    let mut start = t.start("agent-1");
    start
        .detail
        .as_mut()
        .unwrap()
        .as_object_mut()
        .unwrap()
        .remove("home");
    let mut recs = vec![start];
    for p in paths {
        t.file(p, "");
        recs.push(read("agent-1", &t.p(p)));
    }
    recs.push(read("agent-1", "/proc/1/environ"));
    recs.push(read("agent-1", "/proc/self/environ"));
    recs.push(read("agent-1", "/etc/ssh/ssh_host_ed25519_key"));
    let d = draft(&recs, None, &LocalHost).unwrap();
    let text = &d.text;
    for p in paths {
        assert!(!has_active(text, p), "{p}: {text}");
        assert!(has_review(text, &format!("{}\",", t.p(p))), "{p}: {text}");
    }
    assert!(
        has_review(
            text,
            "\"/proc/1/environ\",  # 1 use; a process's environment"
        ),
        "{text}"
    );
    assert!(has_review(text, "\"/proc/self/environ\""), "{text}");
    assert!(
        has_review(
            text,
            "\"/etc/ssh/ssh_host_ed25519_key\",  # 1 use; credentials (/etc/ssh)"
        ),
        "{text}"
    );
    assert!(
        has_review(text, "credentials (a .config/gh in the path)"),
        "{text}"
    );
    assert!(
        has_review(text, "private key (a file named id_ed25519*)"),
        "{text}"
    );
    assert!(
        has_review(text, "private key or key store (.p12)"),
        "{text}"
    );
    assert!(!text.contains("\n  \""), "nothing granted:\n{text}");
}

#[test]
fn a_directory_grant_covering_a_credential_location_is_for_review() {
    let t = Tree::new();
    // Nothing the agent used is a credential; what lies below is.
    t.file("srv/box/data.csv", "");
    t.file("srv/box/backup/.ssh/id_rsa", "");
    let mut recs = vec![
        t.start("agent-1"),
        opendir("agent-1", &t.p("srv/box")),
        read("agent-1", &t.p("srv/box/data.csv")),
        opendir("agent-1", "/etc"),
        opendir("agent-1", "/"),
    ];
    // Four files of one directory, a key file below it.
    for f in ["a", "b", "c", "d"] {
        t.file(&format!("srv/grp/{f}"), "");
        recs.push(read("agent-1", &t.p(&format!("srv/grp/{f}"))));
    }
    t.file("srv/grp/sub/server.key", "");
    let text = drafted(&t, &recs);
    let backup = t.p("srv/box/backup/.ssh");
    assert!(
        has_review(
            &text,
            &format!(
                "\"{}\",  # 1 use; a directory the agent opened, but a grant on it covers its whole tree and it holds \"{backup}\" (credentials (a .ssh in the path))",
                t.p("srv/box")
            )
        ),
        "{text}"
    );
    assert!(has_active(&text, "srv/box/data.csv"), "{text}");
    assert!(
        has_review(
            &text,
            "\"/etc\",  # 1 use; a directory the agent opened, but a grant on it covers its whole tree and it covers /etc/ssh (the host's SSH keys)"
        ),
        "{text}"
    );
    assert!(
        has_review(
            &text,
            "\"/\",  # 1 use; a directory the agent opened, but a grant on it covers its whole tree and it covers /etc/ssh"
        ),
        "{text}"
    );
    assert!(
        !has_active(&text, &format!("\"{}\"", t.p("srv/grp"))),
        "{text}"
    );
    assert!(has_active(&text, "srv/grp/a\""), "{text}");
}

#[test]
fn no_draft_flags_and_grants_the_same_credential() {
    let t = Tree::new();
    t.file("srv/d/readme", "");
    t.file("srv/d/api-secret", "");
    t.file("agent-tmp/.netrc", "");
    t.file("agent-tmp/out", "");
    let recs = vec![
        // One run lists the directory, the other reads a secret in it.
        t.start("agent-1"),
        opendir("agent-1", &t.p("srv/d")),
        t.start("agent-2"),
        read("agent-2", &t.p("srv/d/api-secret")),
        // A credential under {tmp}: G1 steps back there too.
        write("agent-2", &t.p("agent-tmp/out")),
        read("agent-2", &t.p("agent-tmp/.netrc")),
    ];
    let d = draft(&recs, None, &LocalHost).unwrap();
    let text = &d.text;
    assert!(
        !has_active(text, &format!("\"{}\"", t.p("srv/d"))),
        "{text}"
    );
    assert!(has_review(text, "srv/d/api-secret\",  # 1 use;"), "{text}");
    assert!(!has_active(text, "\"{tmp}\""), "{text}");
    assert!(has_active(text, "\"{tmp}/out\""), "{text}");
    assert!(has_review(text, "\"{tmp}/.netrc\""), "{text}");
    assert!(!text.contains("granted anyway"), "{text}");
}

#[test]
fn a_rule_is_judged_as_it_compiles_in_every_run() {
    let t = Tree::new();
    // Run 1's home holds a plain configuration file; in run 2's home the
    // same name is a link to a key.
    t.file("home/.config/app.toml", "");
    let home2 = t.root.join("home2");
    std::fs::create_dir_all(home2.join(".config")).unwrap();
    t.file("home2/.ssh/id_rsa", "");
    std::os::unix::fs::symlink(home2.join(".ssh/id_rsa"), home2.join(".config/app.toml")).unwrap();
    let mut start2 = t.start("agent-2");
    start2.detail.as_mut().unwrap()["home"] = json!(home2.display().to_string());
    let recs = vec![
        t.start("agent-1"),
        read("agent-1", &t.p("home/.config/app.toml")),
        start2,
    ];
    let d = draft(&recs, None, &LocalHost).unwrap();
    assert!(!has_active(&d.text, "app.toml"), "{}", d.text);
    assert!(
        has_review(
            &d.text,
            "\"{home}/.config/app.toml\",  # 1 use; its path is flagged: credentials ({home}/.ssh): not granted"
        ),
        "{}",
        d.text
    );
}

#[test]
fn a_path_that_resolves_to_braces_is_never_a_rule() {
    let t = Tree::new();
    // A directory named `{home}`, reached through a link in the work
    // directory: as it resolves, a policy would read a variable in it.
    t.file("srv/{home}/f", "");
    t.file("home/proj/main.py", "");
    std::os::unix::fs::symlink(t.root.join("srv/{home}"), t.work.join("link")).unwrap();
    let recs = vec![
        t.start("agent-1"),
        read("agent-1", &t.p("home/proj/main.py")),
        read("agent-1", &t.p("home/proj/link/f")),
    ];
    let text = drafted(&t, &recs);
    assert!(!has_active(&text, "{home}/f"), "{text}");
    assert!(
        text.contains(&format!(
            "#   read of \"{}\": resolves to \"{}\", which holds `{{` or `}}`",
            t.p("home/proj/link/f"),
            t.p("srv/{home}/f")
        )),
        "{text}"
    );
}

#[test]
fn descriptors_and_processes_of_the_agent_are_never_resolved_here() {
    let t = Tree::new();
    t.file("home/proj/main.py", "");
    std::os::unix::fs::symlink("/dev/stderr", t.work.join("log")).unwrap();
    let recs = vec![
        t.start("agent-1"),
        read("agent-1", &t.p("home/proj/main.py")),
        read("agent-1", "/dev/stdin"),
        read("agent-1", "/dev/fd/0"),
        read("agent-1", "/proc/1/status"),
        read("agent-1", "/proc/self/fd/4"),
        write("agent-1", "/dev/stdout"),
        // Written through a link in the work directory.
        write("agent-1", &t.p("home/proj/log")),
        exec("agent-1", "/dev/fd/3"),
    ];
    let text = drafted(&t, &recs);
    for p in [
        "\"/dev/stdin\"",
        "\"/dev/fd/0\"",
        "\"/proc/1/status\"",
        "\"/proc/self/fd/4\"",
        "\"/dev/stdout\"",
        "\"/dev/fd/3\"",
    ] {
        assert!(!has_active(&text, p), "{p}: {text}");
        assert!(
            has_review(
                &text,
                &format!("{p},  # 1 use; names a descriptor or process of the agent")
            ),
            "{p}: {text}"
        );
    }
    assert!(
        has_review(
            &text,
            "\"/proc/self/fd/2\",  # 1 use; names a descriptor or process of the agent"
        ),
        "{text}"
    );
    // Nothing of guardctl's own process is named.
    assert!(
        !text.contains(&format!("/proc/{}", std::process::id())),
        "{text}"
    );
}

#[test]
fn the_local_host_resolves_like_the_kernel_up_to_proc() {
    let t = Tree::new();
    t.file("srv/a/b/file", "");
    std::os::unix::fs::symlink("a/b", t.root.join("srv/rel")).unwrap();
    std::os::unix::fs::symlink("../b/file", t.root.join("srv/a/b/up")).unwrap();
    std::os::unix::fs::symlink(t.root.join("srv/rel"), t.root.join("srv/abs")).unwrap();
    std::os::unix::fs::symlink("loop2", t.root.join("srv/loop1")).unwrap();
    std::os::unix::fs::symlink("loop1", t.root.join("srv/loop2")).unwrap();
    std::os::unix::fs::symlink("/dev/stdout", t.root.join("srv/out")).unwrap();
    for p in [
        "srv/rel/file",
        "srv/abs/up",
        "srv/a/../rel/./file",
        "srv/abs/../a/b",
    ] {
        let p = t.root.join(p);
        assert_eq!(
            LocalHost.canonical(&p),
            std::fs::canonicalize(&p).ok(),
            "{}",
            p.display()
        );
    }
    assert_eq!(LocalHost.canonical(&t.root.join("srv/loop1")), None);
    assert_eq!(LocalHost.canonical(&t.root.join("srv/missing")), None);
    assert_eq!(LocalHost.canonical(&t.root.join("srv/a/b/file/x")), None);
    assert_eq!(
        LocalHost.canonical(&t.root.join("srv/out")),
        Some(PathBuf::from("/proc/self/fd/1"))
    );
    assert_eq!(
        LocalHost.canonical(&t.root.join("srv/out/../2")),
        Some(PathBuf::from("/proc/self/fd/2"))
    );
}

#[test]
fn a_program_named_relative_to_a_working_directory_is_for_review() {
    let t = Tree::new();
    let tool = t.file("srv/bin/tool", "");
    let other = t.file("srv/bin/other", "");
    let recs = vec![
        t.start("agent-1"),
        // As guardd journals `bin/tool` run from /T/srv: the path read
        // from the process's working directory after the exec.
        rec("agent-1", Kind::Exec, "exec", "bin/tool", Verdict::Allowed).with_detail(json!({
            "argv": ["bin/tool"], "path": tool.display().to_string(),
        })),
        rec("agent-1", Kind::Exec, "exec", "./other", Verdict::Allowed).with_detail(json!({
            "argv": ["./other"], "path": other.display().to_string(), "path_unverified": true,
        })),
    ];
    let text = drafted(&t, &recs);
    for p in [&tool, &other] {
        let p = p.display().to_string();
        assert!(!has_active(&text, &p), "{text}");
        assert!(
            has_review(
                &text,
                &format!(
                    "\"{p}\",  # 1 use; program named relative to a working directory guardd read after the exec"
                )
            ),
            "{text}"
        );
    }
}

#[test]
fn runs_whose_records_may_be_missing_are_named() {
    let t = Tree::new();
    let exit = |id: &str, lost: u64, pending: u64| {
        rec(id, Kind::Lifecycle, "exit", "exit 0", Verdict::Allowed)
            .with_detail(json!({"lost": lost, "events_pending": pending}))
    };
    let mut gap = rec("run-c", Kind::Gap, "daemon-restart", "x", Verdict::Allowed);
    gap.rule = "daemon".into();
    let recs = vec![
        t.start("run-a"),
        exit("run-a", 3, 0),
        t.start("run-b"),
        exit("run-b", 0, 2),
        t.start("run-c"),
        gap,
        exit("run-c", 0, 0),
        t.start("run-d"),
        t.start("run-e"),
        exit("run-e", 0, 0),
    ];
    let d = draft(&recs, None, &LocalHost).unwrap();
    let text = &d.text;
    for line in [
        "# NOTE: run run-a: records may be missing (3 events lost when the kernel's ring buffer was full)",
        "# NOTE: run run-b: records may be missing (2 events still pending when it exited)",
        "# NOTE: run run-c: records may be missing (the journal records a gap (daemon-restart))",
        "# NOTE: run run-d: records may be missing (no exit record: it was still running, or guardd restarted while it ran)",
    ] {
        assert!(text.contains(line), "{line}\n{text}");
    }
    assert!(!text.contains("NOTE: run run-e:"), "{text}");
}

#[test]
fn the_local_host_walks_below_a_directory_without_following_links() {
    let t = Tree::new();
    for f in [
        "srv/w/a/1",
        "srv/w/b/id_rsa",
        "srv/w/c/id_rsa",
        "srv/keys/id_dsa",
    ] {
        t.file(f, "");
    }
    // A link to keys elsewhere is not a key below the directory.
    std::os::unix::fs::symlink(t.root.join("srv/keys"), t.root.join("srv/w/0link")).unwrap();
    let key = |p: &std::path::Path| {
        p.file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("id_"))
    };
    let w = t.root.join("srv/w");
    assert_eq!(
        LocalHost.find_below(&w, &key, 100),
        Below::Found(t.root.join("srv/w/b/id_rsa"))
    );
    assert_eq!(LocalHost.find_below(&w, &key, 3), Below::TooLarge);
    assert_eq!(
        LocalHost.find_below(&t.root.join("srv/w/a"), &key, 100),
        Below::Clean
    );
    assert_eq!(
        LocalHost.find_below(&t.root.join("srv/gone"), &key, 100),
        Below::Clean
    );
}
