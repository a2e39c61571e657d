//! Issue 13: a launcher guardd does not control (the `guardctl` in a
//! workload's image) cannot skip the layers it applies before exec. A rogue
//! launcher (tests/agents/rogue_launcher.py) opens a real scope over
//! guardd's socket, moves a child into it with the descriptors guardd
//! passed, and execs a program without a seccomp filter, without
//! `no_new_privs`, or with a capability the policy does not grant
//! (effective, or only permitted, ready to be raised): the
//! program never runs (the exec tracepoint kills it before its first
//! instruction), and the journal names exactly what was missing. The real
//! `guardctl run` of the same policy runs normally, with and without a user
//! switch, in audit mode too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::*;
use guard_daemon::policy::CAPABILITIES;
use serde_json::Value;

/// No `[filesystem]` table: the check does not depend on file rules, and
/// the program would be free to leave its marker if it ran.
const POLICY: &str = r#"[policy]
name = "launchcheck"
[network]
allow = []
[process]
capabilities = ["CAP_NET_BIND_SERVICE"]
"#;
const CAP_NET_BIND_SERVICE: u32 = 10;
const CAP_NET_RAW: u32 = 13;

/// What the rogue launcher reported: the agent, the child's bounding set
/// before exec (the effective set a root program starts with), how the
/// child ended; and everything it printed.
struct Rogue {
    agent: String,
    capbnd: u64,
    signal: Option<i64>,
    stdout: String,
    stderr: String,
}

fn rogue(g: &Guardd, variant: &str, marker: &Path) -> Rogue {
    let policy = g.write_policy("launchcheck", POLICY);
    // Should the program run, its output shows the capability sets it
    // started with (read with shell builtins: any exec would be checked
    // on its own).
    let script = format!(
        "echo RAN; while read -r k v; do case $k in CapPrm:|CapEff:) echo $k $v;; esac; \
         done < /proc/self/status; echo ran > {}",
        marker.display()
    );
    let mut child = Command::new(PYTHON)
        .arg(agent_script("rogue_launcher.py"))
        .arg(&g.socket)
        .arg(&policy)
        .arg(variant)
        .arg(CAP_NET_BIND_SERVICE.to_string())
        .args(["--", "/bin/sh", "-c", &script])
        .current_dir(g.dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_or_kill(&mut child, Duration::from_secs(60));
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "rogue launcher ({variant}) failed:\n{stdout}\n{stderr}"
    );
    let lines: Vec<Value> = stdout
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let field = |k: &str| lines.iter().find_map(|l| l.get(k).cloned());
    assert!(field("error").is_none(), "{stdout}\n{stderr}");
    Rogue {
        agent: field("agent")
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_else(|| panic!("no agent id:\n{stdout}\n{stderr}")),
        capbnd: field("capbnd")
            .and_then(|v| v.as_u64())
            .unwrap_or_else(|| panic!("the child did not reach exec:\n{stdout}\n{stderr}")),
        signal: field("signal").and_then(|v| v.as_i64()),
        stdout,
        stderr,
    }
}

/// The agent's records once its scope has ended (the rogue's exit closed
/// the connection): guardd journals the exit after every kernel event of
/// the scope.
fn records_after_exit(g: &Guardd, agent: &str) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let recs = g.logs(&["--agent", agent]);
        if recs
            .iter()
            .any(|r| r["kind"] == "lifecycle" && r["action"] == "exit")
        {
            return recs;
        }
        assert!(
            Instant::now() < deadline,
            "the scope did not end: {recs:#?}\n{}",
            g.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn unconfined(recs: &[Value]) -> Vec<&Value> {
    recs.iter()
        .filter(|r| r["rule"] == "launch.layers-missing")
        .collect()
}

/// `capabilities:` and the names of the capabilities in `set`.
fn caps_entry(set: u64) -> String {
    let names: Vec<String> = (0..64u32)
        .filter(|c| set & (1 << c) != 0)
        .map(|c| {
            CAPABILITIES
                .get(c as usize)
                .map_or_else(|| format!("CAP_{c}"), |n| (*n).to_owned())
        })
        .collect();
    format!("capabilities:{}", names.join(","))
}

/// Runs the rogue launcher's `variant` and checks that its program never
/// ran, that it died by SIGKILL, and that the one record of it names
/// exactly `missing` (computed from the child's bounding set by
/// `expected`); returns that record.
fn refused(variant: &str, expected: impl Fn(u64) -> Vec<String>) -> Value {
    let g = Guardd::start();
    let marker = g.dir.path().join(format!("ran-{variant}"));
    let r = rogue(&g, variant, &marker);
    let context = format!("{}\n{}\n{}", r.stdout, r.stderr, g.log());
    assert_eq!(r.signal, Some(9), "not killed by SIGKILL:\n{context}");
    assert!(!r.stdout.contains("RAN"), "the program ran:\n{context}");
    assert!(!marker.exists(), "the program ran: {}", marker.display());

    let recs = records_after_exit(&g, &r.agent);
    let hits = unconfined(&recs);
    assert_eq!(hits.len(), 1, "expected one record: {recs:#?}");
    let rec = hits[0];
    assert_eq!(rec["kind"], "exec", "{rec:#}");
    assert_eq!(rec["action"], "exec", "{rec:#}");
    assert_eq!(rec["verdict"], "denied", "{rec:#}");
    assert_eq!(rec["layer"], "exec-tracepoint", "{rec:#}");
    assert_eq!(rec["target"], "/bin/sh", "{rec:#}");
    assert_eq!(rec["agent"]["id"], r.agent.as_str(), "{rec:#}");
    assert_eq!(rec["detail"]["args"][0], "/bin/sh", "{rec:#}");
    let want = expected(r.capbnd);
    assert_eq!(rec["detail"]["missing"], serde_json::json!(want), "{rec:#}");
    // The only refusal: the rogue's own process did nothing else refused.
    let denied: Vec<&Value> = recs.iter().filter(|r| r["verdict"] == "denied").collect();
    assert_eq!(denied.len(), 1, "{denied:#?}");

    // People read the same in the table.
    let out = g.ctl(&["logs", "--agent", &r.agent]);
    let table = String::from_utf8_lossy(&out.stdout);
    let row = table
        .lines()
        .find(|l| l.contains("launch.layers-missing"))
        .unwrap_or_else(|| panic!("no row:\n{table}"));
    assert!(
        row.contains(&format!("/bin/sh (missing: {})", want.join(" "))),
        "{row}"
    );
    assert!(row.contains("exec-tracepoint"), "{row}");
    rec.clone()
}

/// Every capability of `set` the policy does not grant.
fn beyond_policy(set: u64) -> u64 {
    set & !(1 << CAP_NET_BIND_SERVICE)
}

#[test]
fn a_program_started_with_no_layer_at_all_never_runs() {
    refused("none", |capbnd| {
        assert_ne!(beyond_policy(capbnd), 0, "the test runs with capabilities");
        vec![
            "seccomp".to_owned(),
            "no_new_privs".to_owned(),
            caps_entry(beyond_policy(capbnd)),
        ]
    });
}

#[test]
fn no_new_privs_alone_is_not_enough() {
    refused("nnp", |capbnd| {
        vec!["seccomp".to_owned(), caps_entry(beyond_policy(capbnd))]
    });
}

/// What the two capability variants must be refused for: CAP_NET_RAW, the
/// one capability they keep beyond the policy's CAP_NET_BIND_SERVICE.
fn net_raw_beyond_policy(capbnd: u64) -> Vec<String> {
    assert_eq!(
        capbnd,
        1 << CAP_NET_BIND_SERVICE | 1 << CAP_NET_RAW,
        "the child cut its bounding set"
    );
    vec!["capabilities:CAP_NET_RAW".to_owned()]
}

#[test]
fn one_capability_beyond_the_policy_is_refused() {
    let rec = refused("extracap", net_raw_beyond_policy);
    // As root the program starts with it in both sets.
    assert_eq!(
        rec["detail"]["excess_capabilities"],
        serde_json::json!({"effective": ["CAP_NET_RAW"], "permitted": ["CAP_NET_RAW"]}),
        "{rec:#}"
    );
}

/// The hole review found in a check of the effective set alone: the
/// program starts with no effective capability but CAP_NET_RAW permitted,
/// which capset() would make effective after its first instruction.
#[test]
fn a_capability_left_permitted_but_not_effective_is_refused() {
    let rec = refused("permcap", net_raw_beyond_policy);
    assert_eq!(
        rec["detail"]["excess_capabilities"],
        serde_json::json!({"effective": [], "permitted": ["CAP_NET_RAW"]}),
        "{rec:#}"
    );
}

#[test]
fn seccomp_without_no_new_privs_is_refused() {
    refused("nonnp", |capbnd| {
        assert_eq!(capbnd, 1 << CAP_NET_BIND_SERVICE);
        vec!["no_new_privs".to_owned()]
    });
}

/// The real launcher, same policy: the agent and a program it execs run,
/// and nothing is refused. As root, as another user (the kept capability
/// is then ambient), and in audit mode.
#[test]
fn the_real_launcher_runs_the_same_policy() {
    let g = Guardd::start();
    let root = g.write_policy("launchcheck", POLICY);
    let nobody = g.write_policy(
        "launchcheck-nobody",
        &POLICY.replace("[process]\n", "[process]\nuser = \"nobody\"\n"),
    );
    let cases: [(&str, &PathBuf, &[&str]); 3] = [
        ("root", &root, &[]),
        ("nobody", &nobody, &[]),
        ("audit", &root, &["--audit"]),
    ];
    for (case, policy, extra) in cases {
        let out = g.run(
            policy,
            extra,
            &[
                "/bin/sh",
                "-c",
                "echo RAN; grep -E '^Cap(Prm|Eff)' /proc/self/status; /bin/true && echo CHILD",
            ],
        );
        assert!(out.status.success(), "{case}: {}", describe(&out));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.contains("RAN") && stdout.contains("CHILD"),
            "{case}: {}",
            describe(&out)
        );
        // What the check compared with the policy: exactly its capability,
        // in both sets.
        for set in ["CapPrm", "CapEff"] {
            assert!(
                stdout.contains(&format!("{set}:\t{:016x}", 1u64 << CAP_NET_BIND_SERVICE)),
                "{case}: {stdout}"
            );
        }
        let agent = Guardd::agent_id(&out);
        let recs = records_after_exit(&g, &agent);
        assert!(unconfined(&recs).is_empty(), "{case}: {recs:#?}");
        let execs: Vec<&Value> = recs
            .iter()
            .filter(|r| r["kind"] == "exec" && r["verdict"] == "allowed")
            .collect();
        for program in ["/bin/sh", "/bin/true"] {
            assert!(
                execs.iter().any(|r| r["target"] == program),
                "{case}: no allowed exec of {program}: {recs:#?}"
            );
        }
    }
}
