//! guardd's named policies (issue 13): `--policy-dir`, `guardctl run
//! --policy-name`, `--require-named-policy`, atomic reloads and the floor a
//! client's own policy must stay within, against a real guardd and real
//! agents.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{
    io::{BufRead, BufReader, Write},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    process::Output,
    time::{Duration, Instant},
};

use common::*;
use serde_json::Value;

/// A policy that lets an agent connect to 127.0.0.1:`port` over TCP.
fn tcp_policy(name: &str, port: u16) -> String {
    format!(
        "[policy]\nname = \"{name}\"\n[[network.allow]]\ncidr = \"127.0.0.1/32\"\nports = [{port}]\nprotocol = \"tcp\"\n"
    )
}

fn start(dir: &Path, extra: &[&str]) -> Guardd {
    let d = dir.display().to_string();
    let mut args = vec!["--policy-dir", d.as_str()];
    args.extend_from_slice(extra);
    Guardd::start_with(&args)
}

/// `guardctl run --policy-name NAME [extra] -- python3 netprobe.py targets`.
fn run_named(g: &Guardd, name: &str, extra: &[&str], targets: &[String]) -> Output {
    let mut c = g.ctl_cmd();
    c.current_dir(g.dir.path())
        .args(["run", "--policy-name", name])
        .args(extra)
        .arg("--")
        .arg(PYTHON)
        .arg(agent_script("netprobe.py"))
        .args(targets);
    c.output().unwrap()
}

fn reloads(g: &Guardd) -> Vec<Value> {
    g.logs(&[])
        .into_iter()
        .filter(|r| r["action"] == "policy-reload")
        .collect()
}

/// Waits for the `n`th policy-reload record (1-based) and returns it.
fn nth_reload(g: &Guardd, n: usize) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = reloads(g);
        if r.len() >= n {
            return r[n - 1].clone();
        }
        assert!(
            Instant::now() < deadline,
            "no reload record #{n}; have {r:#?}\n{}",
            g.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_named_policy_confines_the_agent_and_its_start_names_it() {
    let open = Listener::tcp("127.0.0.1");
    let closed = closed_port();
    let pd = ConfigMapDir::new(&[("agent.toml", &tcp_policy("agent", open.port))]);
    let g = start(pd.path(), &[]);
    let first = nth_reload(&g, 1);
    assert_eq!(first["verdict"], "allowed", "{first}");
    assert_eq!(
        first["detail"]["added"],
        serde_json::json!(["agent"]),
        "{first}"
    );
    let sha = first["detail"]["policies"]["agent"]
        .as_str()
        .unwrap()
        .to_owned();

    let out = run_named(
        &g,
        "agent",
        &[],
        &[
            format!("tcp:127.0.0.1:{}", open.port),
            format!("tcp:127.0.0.1:{closed}"),
        ],
    );
    assert!(out.status.success(), "{}", describe(&out));
    let res = probe_results(&out);
    assert_eq!(
        errno_of(&res, &format!("tcp:127.0.0.1:{}", open.port)),
        None
    );
    assert_eq!(
        errno_of(&res, &format!("tcp:127.0.0.1:{closed}")).as_deref(),
        Some("EPERM")
    );
    let id = Guardd::agent_id(&out);
    let start = g.start_record(&id);
    assert_eq!(
        start["detail"]["policy_source"]["named"], "agent",
        "{start}"
    );
    assert_eq!(start["detail"]["policy_source"]["sha256"], sha, "{start}");
    let recs = g.logs(&["--agent", &id]);
    assert!(
        recs.iter()
            .any(|r| r["verdict"] == "denied" && r["target"] == format!("127.0.0.1:{closed}/tcp")),
        "{recs:#?}"
    );

    // An unknown name is a policy error naming what there is (exit 2).
    let out = run_named(&g, "nope", &[], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no policy named \"nope\"") && err.contains("agent"),
        "{err}"
    );
}

#[test]
fn cluster_mode_refuses_a_policy_the_client_brings() {
    let pd = ConfigMapDir::new(&[("agent.toml", &tcp_policy("agent", 1))]);
    let g = start(pd.path(), &["--require-named-policy"]);
    let own = g.write_policy("mine", &tcp_policy("mine", 1));
    let out = g.run(&own, &[], &["/bin/true"]);
    assert!(!out.status.success(), "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--policy-name"), "{err}");
    let recs = g.logs_until(1, |r| r["rule"] == "control.named-policy-required");
    let r = recs
        .iter()
        .find(|r| r["rule"] == "control.named-policy-required")
        .unwrap_or_else(|| panic!("no refusal record in {recs:#?}"));
    assert_eq!(r["verdict"], "denied");
    // No scope was made for it.
    assert!(!recs.iter().any(|r| r["action"] == "start"), "{recs:#?}");
    // The named one still runs.
    let out = run_named(&g, "agent", &[], &[]);
    assert!(out.status.success(), "{}", describe(&out));
}

#[test]
fn the_directory_reloads_whole_or_not_at_all() {
    let a = Listener::tcp("127.0.0.1");
    let b = Listener::tcp("127.0.0.1");
    let mut pd = ConfigMapDir::new(&[
        ("agent.toml", &tcp_policy("agent", a.port)),
        ("other.toml", &tcp_policy("other", a.port)),
    ]);
    let g = start(pd.path(), &[]);
    nth_reload(&g, 1);
    let to = |l: &Listener| format!("tcp:127.0.0.1:{}", l.port);

    // A new version, swapped in at once: the agent now reaches b, not a.
    pd.update(&[
        ("agent.toml", &tcp_policy("agent", b.port)),
        ("other.toml", &tcp_policy("other", a.port)),
    ]);
    let second = nth_reload(&g, 2);
    assert_eq!(second["verdict"], "allowed", "{second}");
    assert_eq!(
        second["detail"]["changed"],
        serde_json::json!(["agent"]),
        "{second}"
    );
    let out = run_named(&g, "agent", &[], &[to(&a), to(&b)]);
    assert!(out.status.success(), "{}", describe(&out));
    let res = probe_results(&out);
    assert_eq!(errno_of(&res, &to(&a)).as_deref(), Some("EPERM"));
    assert_eq!(errno_of(&res, &to(&b)), None);

    // A version with one broken file does not apply at all, not even its
    // valid files: the previous set stays, and the refusal is journaled.
    pd.update(&[
        ("agent.toml", &tcp_policy("agent", a.port)),
        (
            "other.toml",
            "[policy]\nname = \"other\"\nmode = \"sometimes\"\n",
        ),
    ]);
    let third = nth_reload(&g, 3);
    assert_eq!(third["verdict"], "denied", "{third}");
    assert_eq!(third["rule"], "policy-dir.invalid", "{third}");
    let errors = third["detail"]["errors"].to_string();
    assert!(errors.contains("other.toml"), "{third}");
    assert_eq!(
        third["detail"]["kept"],
        serde_json::json!(["agent", "other"]),
        "{third}"
    );
    let out = run_named(&g, "agent", &[], &[to(&a), to(&b)]);
    assert!(out.status.success(), "{}", describe(&out));
    let res = probe_results(&out);
    assert_eq!(errno_of(&res, &to(&a)).as_deref(), Some("EPERM"));
    assert_eq!(errno_of(&res, &to(&b)), None);

    // A removed policy is gone with the next good version.
    pd.update(&[("agent.toml", &tcp_policy("agent", a.port))]);
    std::fs::remove_file(pd.path().join("other.toml")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    let fourth = loop {
        let r = reloads(&g);
        if let Some(last) = r.iter().skip(3).find(|r| r["verdict"] == "allowed") {
            break last.clone();
        }
        assert!(Instant::now() < deadline, "{r:#?}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        fourth["detail"]["removed"],
        serde_json::json!(["other"]),
        "{fourth}"
    );
    let out = run_named(&g, "other", &[], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
}

#[test]
fn the_launcher_cannot_swap_the_text_of_a_named_policy() {
    let pd = ConfigMapDir::new(&[("agent.toml", &tcp_policy("agent", 1))]);
    let g = start(pd.path(), &[]);
    // A client that asks for the named policy but sends another text.
    let wide = "[policy]\nname = \"agent\"\n[[network.allow]]\ncidr = \"0.0.0.0/0\"\n";
    let req = serde_json::json!({
        "v": 1, "id": 1, "op": "open",
        "policy_name": "agent", "policy_path": "agent.toml", "policy_text": wide,
        "argv": ["/bin/true"], "workdir": "/", "home": "/root",
    });
    let s = UnixStream::connect(&g.socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut r = BufReader::new(s);
    r.get_mut()
        .write_all(format!("{req}\n").as_bytes())
        .unwrap();
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    let resp: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(resp["ok"], false, "{resp}");
    assert_eq!(resp["error"]["code"], "policy", "{resp}");
    assert!(
        resp["error"]["message"]
            .as_str()
            .unwrap()
            .contains("changed"),
        "{resp}"
    );
    assert!(!g.logs(&[]).iter().any(|r| r["action"] == "start"));
}

#[test]
fn a_client_policy_wider_than_the_floor_is_refused() {
    let open = Listener::tcp("127.0.0.1");
    let floor = format!(
        "[policy]\nname = \"floor\"\n[[network.allow]]\ncidr = \"127.0.0.1/32\"\nports = [{}]\nprotocol = \"tcp\"\n",
        open.port
    );
    let pd = ConfigMapDir::new(&[("floor.toml", &floor)]);
    let g = start(pd.path(), &["--floor-policy", "floor"]);
    nth_reload(&g, 1);

    // Wider: all of 127.0.0.0/8, and any port.
    let wide = g.write_policy(
        "wide",
        "[policy]\nname = \"wide\"\n[[network.allow]]\ncidr = \"127.0.0.0/8\"\nprotocol = \"tcp\"\n",
    );
    let out = g.run(&wide, &[], &["/bin/true"]);
    assert!(!out.status.success(), "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("floor") && err.contains("127.0.0.0/8"),
        "{err}"
    );
    let recs = g.logs_until(1, |r| r["rule"] == "policy.floor");
    let r = recs
        .iter()
        .find(|r| r["rule"] == "policy.floor")
        .unwrap_or_else(|| panic!("no floor refusal in {recs:#?}"));
    assert_eq!(r["verdict"], "denied");
    assert!(!recs.iter().any(|r| r["action"] == "start"), "{recs:#?}");

    // Within (the same address and port): it runs, confined as it says.
    let narrow: PathBuf = g.write_policy("narrow", &tcp_policy("narrow", open.port));
    let target = format!("tcp:127.0.0.1:{}", open.port);
    let out = g.run(
        &narrow,
        &[],
        &[PYTHON, &agent_script("netprobe.py"), &target],
    );
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(errno_of(&probe_results(&out), &target), None);
}

#[test]
fn the_node_can_forbid_what_a_launcher_would_run_without() {
    let pd = ConfigMapDir::new(&[("agent.toml", &tcp_policy("agent", 1))]);
    let g = start(pd.path(), &["--forbid-degraded", "landlock,exec"]);
    let out = run_named(&g, "agent", &["--allow-degraded", "exec"], &[]);
    assert!(!out.status.success(), "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--forbid-degraded") && err.contains("exec"),
        "{err}"
    );
    let out = run_named(&g, "agent", &["--allow-degraded", "all"], &[]);
    assert!(!out.status.success(), "{}", describe(&out));
    let recs = g.logs_until(2, |r| r["rule"] == "control.degraded-forbidden");
    let refusals: Vec<&Value> = recs
        .iter()
        .filter(|r| r["rule"] == "control.degraded-forbidden")
        .collect();
    assert_eq!(refusals.len(), 2, "{recs:#?}");
    assert!(!recs.iter().any(|r| r["action"] == "start"), "{recs:#?}");
    // What the node allows to degrade still runs.
    let out = run_named(&g, "agent", &["--allow-degraded", "limits"], &[]);
    assert!(out.status.success(), "{}", describe(&out));
}

#[test]
fn audit_mode_is_the_nodes_to_choose() {
    // A named policy that enforces cannot be run in audit mode.
    let pd = ConfigMapDir::new(&[
        ("agent.toml", &tcp_policy("agent", 1)),
        ("floor.toml", &tcp_policy("floor", 1)),
    ]);
    let g = start(pd.path(), &["--floor-policy", "floor"]);
    let out = run_named(&g, "agent", &["--audit"], &[]);
    assert!(!out.status.success(), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("audit"),
        "{}",
        describe(&out)
    );
    g.logs_until(1, |r| r["rule"] == "control.audit-not-allowed");
    // A client's own policy within an enforcing floor, run with --audit,
    // is wider than the floor.
    let own = g.write_policy("own", &tcp_policy("own", 1));
    let out = g.run(&own, &["--audit"], &["/bin/true"]);
    assert!(!out.status.success(), "{}", describe(&out));
    g.logs_until(1, |r| r["rule"] == "policy.floor");
    // Without --audit it runs.
    let out = g.run(&own, &[], &["/bin/true"]);
    assert!(out.status.success(), "{}", describe(&out));
    // The floor bounds client policies; it is not a policy to run.
    let out = run_named(&g, "floor", &[], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("floor"),
        "{}",
        describe(&out)
    );
}
