//! The control plane is part of the wall: nothing inside a scope talks guardd
//! into anything, however it reaches the socket; a Unix rule names a socket,
//! not a string the agent can redirect; controls by name never pick an
//! arbitrary agent. Root, real kernel.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use serde_json::Value;

#[test]
fn guardd_serves_no_process_inside_a_scope() {
    let g = Guardd::start();
    // A victim agent the attacker will try to kill.
    let victim_policy = g.write_policy(
        "victim",
        "[policy]\nname = \"victim\"\n[network]\nallow = []\n",
    );
    let mut victim = g.spawn_run(&victim_policy, &["--name", "victim"], &["/bin/sleep", "30"]);
    std::thread::sleep(std::time::Duration::from_millis(500));
    // The attacker's policy names guardd's socket outright: the kernel hooks
    // let the connect through, so only guardd's own check stands.
    let p = g.write_policy(
        "cp",
        &format!(
            "[policy]\nname = \"cp\"\ninclude = [\"base\", \"python\"]\n[network]\nallow = [{{ unix = {:?} }}]\n\
             [filesystem]\nread = [\"/usr\"]\n",
            g.socket.display().to_string()
        ),
    );
    let script = client_script(
        &g.socket,
        &[
            r#"{"v":1,"id":1,"op":"ps"}"#,
            r#"{"v":1,"id":2,"op":"control","agent":"victim","action":"kill"}"#,
        ],
    );
    let out = g.run(&p, &[], &[PYTHON, "-c", &script]);
    let res = last_json(&out);
    assert_eq!(res["connected"], true, "{res}\n{}", describe(&out));
    let replies = res["replies"].as_array().unwrap();
    assert!(
        replies
            .first()
            .and_then(Value::as_str)
            .is_some_and(|r| r.contains("permission_denied")),
        "a confined peer must be refused: {res}"
    );
    // Refused at the first line: the connection is closed, nothing else
    // was read, and the victim lives.
    assert!(
        replies.iter().skip(1).all(|r| r
            .as_str()
            .is_some_and(|r| r.is_empty() || r.starts_with("closed"))),
        "{res}"
    );
    assert!(
        victim.try_wait().unwrap().is_none(),
        "the victim was killed"
    );
    let ps = String::from_utf8_lossy(&g.ctl(&["ps"]).stdout).into_owned();
    assert!(ps.contains("victim"), "{ps}");

    let recs = g.logs(&["--agent", &Guardd::agent_id(&out), "--kind", "policy"]);
    let refusals: Vec<&Value> = recs
        .iter()
        .filter(|r| r["rule"] == "control.confined-peer")
        .collect();
    assert_eq!(refusals.len(), 1, "{recs:#?}");
    assert_eq!(refusals[0]["verdict"], "denied");
    assert_eq!(refusals[0]["layer"], "guardd");
    assert!(
        refusals[0]["detail"]["cgroup"]
            .as_str()
            .unwrap()
            .contains("agent-")
    );
    // The summary counts it with the agent's other refusals.
    let all = g.logs(&["--agent", &Guardd::agent_id(&out), "--verdict", "denied"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&format!("{} denied", all.len())),
        "{}\n{all:#?}",
        describe(&out)
    );
    // SAFETY: signalling the guardctl this test started, by pid.
    unsafe { libc::kill(victim.id() as i32, libc::SIGTERM) };
    let _ = victim.wait();
}

#[test]
fn audit_mode_does_not_open_unix_sockets() {
    let g = Guardd::start();
    for extra in [vec!["--audit"], vec![]] {
        let p = g.write_policy(
            "aud",
            "[policy]\nname = \"aud\"\nmode = \"audit\"\n[network]\nallow = []\n",
        );
        let script = client_script(&g.socket, &[r#"{"v":1,"id":1,"op":"ps"}"#]);
        let out = g.run(&p, &extra, &[PYTHON, "-c", &script]);
        let res = last_json(&out);
        assert_eq!(res["connected"], false, "{res}");
        assert_eq!(res["errno"], "EPERM", "{res}");
        let recs = g.logs(&["--agent", &Guardd::agent_id(&out), "--kind", "network"]);
        let rec = recs
            .iter()
            .find(|r| r["target"] == g.socket.display().to_string())
            .unwrap_or_else(|| panic!("{recs:#?}"));
        assert_eq!(rec["verdict"], "denied", "{rec}");
    }
}

#[test]
fn a_unix_rule_the_agent_could_redirect_is_refused() {
    let g = Guardd::start();
    let work = tempfile::tempdir().unwrap();
    let sock = work.path().join("app.sock");
    let _l = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    // The socket's directory is writable by the agent: a symlink planted
    // there later would lead anywhere.
    let p = g.write_policy(
        "redir",
        &format!(
            "[policy]\nname = \"redir\"\ninclude = [\"base\"]\n[network]\nallow = [{{ unix = {:?} }}]\n\
             [filesystem]\nwrite = [{:?}]\n",
            sock.display().to_string(),
            work.path().display().to_string()
        ),
    );
    let out = g.run(&p, &[], &["/bin/true"]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("network.allow[0]") && err.contains("could replace the socket"),
        "{err}"
    );
    let check = g.ctl(&["policy", "check", p.to_str().unwrap()]);
    assert!(!check.status.success());
    assert!(String::from_utf8_lossy(&check.stderr).contains("could replace the socket"));

    // Without a [filesystem] table every directory is writable.
    let p = g.write_policy(
        "nofs",
        &format!(
            "[policy]\nname = \"nofs\"\n[network]\nallow = [{{ unix = {:?} }}]\n",
            sock.display().to_string()
        ),
    );
    let out = g.run(&p, &[], &["/bin/true"]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("files are unrestricted"));
}

#[test]
fn controls_by_name_refuse_an_ambiguous_name() {
    let g = Guardd::start();
    let p = g.write_policy("twin", "[policy]\nname = \"twin\"\n[network]\nallow = []\n");
    let mut a = g.spawn_run(&p, &[], &["/bin/sleep", "30"]);
    let mut b = g.spawn_run(&p, &[], &["/bin/sleep", "30"]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let ids: Vec<String> = loop {
        let out = g.ctl(&["ps", "--json"]);
        let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter_map(|e| e["id"].as_str().map(str::to_owned))
            .collect();
        if ids.len() == 2 {
            break ids;
        }
        assert!(std::time::Instant::now() < deadline, "ps: {ids:?}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let out = g.ctl(&["kill", "twin", "--reason", "test"]);
    assert!(!out.status.success(), "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        ids.iter().all(|id| err.contains(id.as_str())),
        "the candidates must be listed: {err}"
    );
    assert!(a.try_wait().unwrap().is_none() && b.try_wait().unwrap().is_none());
    // An unambiguous id prefix works.
    let out = g.ctl(&["kill", &ids[0][..8], "--reason", "test"]);
    assert!(out.status.success(), "{}", describe(&out));
    for c in [&mut a, &mut b] {
        // SAFETY: signalling the guardctl processes this test started.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        let _ = c.wait();
    }
}
