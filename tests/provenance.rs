//! The journal as evidence (issue 10): what each record says about where,
//! when and what. Root, real kernel, real guardd and agents.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{
    os::unix::ffi::OsStrExt,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use common::*;
use guard_daemon::journal::checkpoint_path;
use serde_json::Value;

/// A policy that lets python read only the test agents' directory and run
/// nothing but the python interpreter; no network.
fn policy(g: &Guardd, name: &str) -> std::path::PathBuf {
    g.write_policy(
        name,
        &format!(
            "[policy]\nname = \"{name}\"\ninclude = [\"base\", \"python\"]\n[filesystem]\nread = [{:?}]\n",
            repo().join("tests/agents").display().to_string()
        ),
    )
}

/// A policy of the base and python presets alone.
fn python_policy(g: &Guardd, name: &str) -> std::path::PathBuf {
    g.write_policy(
        name,
        &format!("[policy]\nname = \"{name}\"\ninclude = [\"base\", \"python\"]\n"),
    )
}

fn secs(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

fn record_secs(r: &Value) -> f64 {
    let t = humantime::parse_rfc3339(r["time"].as_str().unwrap()).unwrap();
    secs(t)
}

/// Item 1: names with bytes that are not UTF-8, and with a right-to-left
/// override, that an agent opens and is refused. The OCSF output must tell
/// apart two names that a lossy conversion prints the same, and no output
/// may carry the override itself.
#[test]
fn ocsf_and_json_keep_hostile_file_names_apart_and_inert() {
    let g = Guardd::start_with(&["--coalesce-interval", "0"]);
    let p = policy(&g, "names");
    let dir = tempfile::tempdir().unwrap();
    // Two names a lossy conversion merges (0xff and U+FFFD), a name with
    // U+202E ("exe.txt" reads as "txt.exe"), and one whose backslash must
    // not look like an escape of the first.
    let names: Vec<Vec<u8>> = vec![
        b"bad\xff.txt".to_vec(),
        "bad\u{fffd}.txt".as_bytes().to_vec(),
        "inv\u{202e}txt.exe".as_bytes().to_vec(),
        b"bad\\xff.txt".to_vec(),
    ];
    for n in &names {
        std::fs::write(dir.path().join(std::ffi::OsStr::from_bytes(n)), "secret").unwrap();
    }
    let script = r#"
import os, sys
for p in sys.argv[1:]:
    try:
        os.open(os.fsencode(p), os.O_RDONLY); print("opened", flush=True)
    except PermissionError:
        print("refused", flush=True)
"#;
    let mut agent: Vec<std::ffi::OsString> = vec![PYTHON.into(), "-c".into(), script.into()];
    for n in &names {
        // Passed as bytes: the agent opens exactly these names.
        agent.push(dir.path().join(std::ffi::OsStr::from_bytes(n)).into());
    }
    let out = g.run_cmd(&p, &[], &agent).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        stdout.matches("refused").count(),
        names.len(),
        "{}",
        describe(&out)
    );
    let agent = Guardd::agent_id(&out);

    // JSON: exact bytes (base64 for the name that is not UTF-8), and the
    // override only as an escape in the raw text.
    let raw = g.ctl(&["logs", "--json", "--agent", &agent, "--kind", "file"]);
    assert!(raw.status.success());
    let text = String::from_utf8(raw.stdout).unwrap();
    assert!(!text.contains('\u{202e}'), "{text}");
    assert!(text.contains("\\u202e"), "{text}");
    let recs: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for n in &names {
        let full = dir.path().join(std::ffi::OsStr::from_bytes(n));
        let want = serde_json::to_value(guard_daemon::journal::Text::from(full.as_path())).unwrap();
        assert_eq!(
            recs.iter().filter(|r| r["target"] == want).count(),
            1,
            "{want} in {recs:#?}"
        );
    }

    // OCSF: four different, escaped paths; nothing lossy, no raw override.
    let raw = g.ctl(&["logs", "--ocsf", "--agent", &agent, "--kind", "file"]);
    assert!(raw.status.success());
    let text = String::from_utf8(raw.stdout).unwrap();
    assert!(!text.contains('\u{202e}'), "{text}");
    let evs: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let base = dir.path().display().to_string();
    let shown: Vec<&str> = evs
        .iter()
        .filter_map(|e| e["file"]["path"].as_str())
        .filter(|p| p.starts_with(&base))
        .collect();
    let mut want: Vec<String> = vec![
        format!("{base}/bad\\xff.txt"),
        format!("{base}/bad\u{fffd}.txt"),
        format!("{base}/inv\\u{{202E}}txt.exe"),
        format!("{base}/bad\\\\xff.txt"),
    ];
    let mut got: Vec<String> = shown.iter().map(|s| s.to_string()).collect();
    want.sort();
    got.sort();
    assert_eq!(got, want, "{text}");
    for e in &evs {
        let m = e["message"].as_str().unwrap();
        assert!(
            !m.contains('\u{fffd}') || m.contains("bad\u{fffd}.txt"),
            "{m}"
        );
        assert!(!m.contains('\u{202e}'), "{m}");
    }
    assert!(
        evs.iter().any(|e| e["message"]
            .as_str()
            .unwrap()
            .contains("inv\\u{202E}txt.exe")),
        "{text}"
    );
    // The table escapes the same way.
    let table = g.ctl(&["logs", "--agent", &agent, "--kind", "file"]);
    let table = String::from_utf8(table.stdout).unwrap();
    assert!(
        table.contains("bad\\xff.txt") && table.contains("inv\\u{202E}txt.exe"),
        "{table}"
    );
    assert!(!table.contains('\u{202e}'));
}

/// Item 2: refusals that happen while guardd is down wait in the pinned
/// ring buffer; once read, their records carry the time the kernel saw
/// them, not the time guardd came back.
#[test]
fn events_that_waited_for_a_restart_keep_the_kernels_time() {
    let mut g = Guardd::start_with(&["--coalesce-interval", "0"]);
    let p = python_policy(&g, "late");
    // One refused connect every 100 ms to a different port (so no two
    // records coalesce), printing when each was attempted.
    let script = r#"
import socket, time
for i in range(60):
    s = socket.socket()
    t = time.time()
    try:
        s.connect(("127.0.0.1", 31000 + i)); r = "ok"
    except OSError as e:
        r = e.errno
    print(i, repr(t), r, flush=True)
    s.close()
    time.sleep(0.1)
"#;
    let child = g.spawn_run(&p, &[], &[PYTHON, "-c", script]);
    std::thread::sleep(Duration::from_millis(1500));
    let crashed = SystemTime::now();
    g.crash();
    std::thread::sleep(Duration::from_millis(3000));
    let restarted = SystemTime::now();
    g.restart_after_crash();
    let out = child.wait_with_output().unwrap();
    let attempts: Vec<(u16, f64, String)> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            Some((
                31000 + f.next()?.parse::<u16>().ok()?,
                f.next()?.parse().ok()?,
                f.next()?.to_owned(),
            ))
        })
        .collect();
    assert_eq!(attempts.len(), 60, "{}", describe(&out));
    assert!(
        attempts.iter().all(|a| a.2 == "1"),
        "all EPERM: {attempts:?}"
    );
    std::thread::sleep(Duration::from_millis(800));
    let recs = g.logs(&["--agent", "late", "--kind", "network"]);
    let (crashed, restarted) = (secs(crashed), secs(restarted));
    let mut while_down = 0;
    for (port, t, _) in &attempts {
        let target = format!("127.0.0.1:{port}/tcp");
        let r = recs
            .iter()
            .find(|r| r["target"] == target.as_str())
            .unwrap_or_else(|| panic!("no record of {target}: {recs:#?}"));
        let at = record_secs(r);
        assert!(
            (at - t).abs() < 0.25,
            "{target}: attempted at {t}, journaled as {at} (guardd down {crashed}..{restarted})"
        );
        if *t > crashed + 0.2 && *t < restarted - 0.2 {
            while_down += 1;
            assert!(at < restarted, "{r}");
        }
    }
    assert!(
        while_down >= 15,
        "only {while_down} refusals while guardd was down"
    );
}

/// Item 3: every record names the machine (hostname, machine id), OCSF
/// fills `device`, and the chain covers it: editing the host breaks
/// verification.
#[test]
fn records_name_their_host_and_the_chain_covers_it() {
    let mut g = Guardd::start_with(&["--coalesce-interval", "0"]);
    let p = python_policy(&g, "hosted");
    let out = g.run(
        &p,
        &[],
        &[
            PYTHON,
            "-c",
            "import socket\ntry: socket.create_connection(('127.0.0.1', 9))\nexcept OSError: pass",
        ],
    );
    let agent = Guardd::agent_id(&out);
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let hostname = hostname.trim();
    let machine_id = std::fs::read_to_string("/etc/machine-id")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| s.len() == 32);
    let recs = g.logs(&[]);
    assert!(recs.len() >= 3, "{recs:#?}");
    for r in &recs {
        assert_eq!(r["host"]["hostname"], hostname, "{r}");
        assert_eq!(
            r["host"]["machine_id"].as_str(),
            machine_id.as_deref(),
            "{r}"
        );
    }
    let ocsf = g.ctl(&["logs", "--ocsf", "--agent", &agent]);
    let evs: Vec<Value> = String::from_utf8_lossy(&ocsf.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(!evs.is_empty());
    for e in &evs {
        assert_eq!(e["device"]["hostname"], hostname, "{e}");
        assert_eq!(e["device"]["uid"].as_str(), machine_id.as_deref(), "{e}");
    }
    g.stop();
    let (code, text) = verify_journal(&g.journal);
    assert_eq!(code, 0, "{text}");
    let dir = tempfile::tempdir().unwrap();
    let edited = dir.path().join("edited.db");
    std::fs::copy(&g.journal, &edited).unwrap();
    let cp = checkpoint_path(&g.journal);
    if cp.exists() {
        std::fs::copy(&cp, checkpoint_path(&edited)).unwrap();
    }
    sqlite(
        &edited,
        &format!(
            "update records set json = replace(json, '\"hostname\":\"{hostname}\"', '\"hostname\":\"elsewhere\"') where seq = 2"
        ),
    );
    let (code, text) = verify_journal(&edited);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("record 2 was altered"), "{text}");
}

/// Item 4: a refused exec names the program's arguments (strings, cut and
/// flagged when long) and the program that tried, whether the process
/// itself calls execve or a child it forked does.
#[test]
fn a_refused_exec_records_its_arguments_and_the_program_that_tried() {
    let g = Guardd::start_with(&["--coalesce-interval", "0"]);
    let p = policy(&g, "argv");
    let script = r#"
import os, subprocess
long = "x" * 300
try:
    os.execv("/usr/bin/id", [b"id", b"-u", b"a b", b"\xff\n", long.encode()])
except PermissionError:
    print("direct refused", flush=True)
many = ["/usr/bin/id"] + [str(i) for i in range(40)]
try:
    subprocess.call(many)
except PermissionError:
    print("child refused", flush=True)
"#;
    let out = g.run(&p, &[], &[PYTHON, "-c", script]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("direct refused"), "{}", describe(&out));
    assert!(stdout.contains("child refused"), "{}", describe(&out));
    let agent = Guardd::agent_id(&out);
    let recs = g.logs(&["--agent", &agent, "--kind", "exec", "--verdict", "denied"]);
    let refused: Vec<&Value> = recs
        .iter()
        .filter(|r| r["target"] == "/usr/bin/id")
        .collect();
    assert_eq!(refused.len(), 2, "{recs:#?}");
    for r in &refused {
        assert_eq!(r["layer"], "landlock", "{r}");
        assert!(
            r["process"]["exe"]
                .as_str()
                .is_some_and(|e| e.contains("python")),
            "the program that tried: {r}"
        );
    }
    let direct = refused
        .iter()
        .find(|r| r["detail"]["args"][1] == "-u")
        .unwrap_or_else(|| panic!("{refused:#?}"));
    let d = &direct["detail"];
    assert_eq!(d["args"][0], "id");
    assert_eq!(d["args"][2], "a b");
    // 0xff 0x0a, not UTF-8: the journal's lossless form.
    assert_eq!(d["args"][3], serde_json::json!({"base64": "/wo="}));
    assert_eq!(d["args"][4], "x".repeat(127));
    assert_eq!(d["args"].as_array().unwrap().len(), 5);
    assert_eq!(d["args_truncated"], true);
    let child = refused
        .iter()
        .find(|r| r["detail"]["args"][1] == "0")
        .unwrap_or_else(|| panic!("{refused:#?}"));
    let d = &child["detail"];
    assert_eq!(d["args"][0], "/usr/bin/id");
    assert_eq!(d["args"].as_array().unwrap().len(), 16);
    assert_eq!(d["args"][15], "14");
    assert_eq!(d["args_truncated"], true, "40 arguments, 16 kept");
    // The OCSF command line shows them, escaped and apart.
    let ocsf = g.ctl(&["logs", "--ocsf", "--agent", &agent, "--kind", "exec"]);
    let text = String::from_utf8_lossy(&ocsf.stdout);
    assert!(text.contains(r#"id -u \"a b\" \\xff\\n xxx"#), "{text}");
}

/// Item 4, the first exec of a run refused: guardctl's launcher is the
/// program that tried, and the record says so, with the arguments.
#[test]
fn a_refused_first_exec_names_the_launcher_and_the_arguments() {
    let g = Guardd::start_with(&["--coalesce-interval", "0"]);
    let p = policy(&g, "first");
    let out = g.run(&p, &[], &["/usr/bin/id", "-u", "two words"]);
    assert_eq!(out.status.code(), Some(127), "{}", describe(&out));
    let recs = g.logs(&["--agent", "first", "--kind", "exec"]);
    assert_eq!(recs.len(), 1, "{recs:#?}");
    let r = &recs[0];
    assert_eq!(
        (r["verdict"].as_str(), r["layer"].as_str()),
        (Some("denied"), Some("landlock"))
    );
    assert_eq!(r["target"], "/usr/bin/id");
    assert_eq!(r["process"]["exe"], GUARDCTL, "{r}");
    assert_eq!(
        r["detail"]["args"],
        serde_json::json!(["/usr/bin/id", "-u", "two words"])
    );
    assert_eq!(r["detail"]["args_truncated"], false);
    assert!(r["detail"]["registers"].is_array(), "{r}");
}
