//! Bad input never starts anything, never panics, and says precisely what is
//! wrong: policies, the command line, requests on the socket.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{
    io::{BufRead, BufReader, Write},
    os::unix::net::UnixStream,
    time::Duration,
};

use common::*;

fn run_policy(g: &Guardd, text: &str) -> std::process::Output {
    let p = g.write_policy("bad", text);
    g.run(&p, &[], &["/bin/true"])
}

#[test]
fn invalid_policies_stop_before_anything_starts() {
    let g = Guardd::start();
    let cases: &[(&str, &str, &str)] = &[
        ("", "1:1", "empty"),
        (
            "[policy]\nname = \"x\"\nbogus = 1\n",
            "3:1",
            "unknown key `bogus`",
        ),
        (
            "[policy]\nname = \"x\"\n[network]\nallow = [ { cidr = \"10.0.0.300/8\" } ]\n",
            "4:",
            "invalid CIDR",
        ),
        (
            "[policy]\nname = \"x\"\n[network]\nallow = [ { cidr = \"10.0.0.0/8\", ports = [0] } ]\n",
            "4:",
            "port 0",
        ),
        (
            "[policy]\nname = \"x\"\n[network]\nallow = [ { cidr = \"10.0.0.0/8\", ports = [70000] } ]\n",
            "4:",
            "70000",
        ),
        ("[policy]\nname = 5\n", "2:", "string"),
        (
            "[policy]\nname = \"x\"\n[network]\nallow = [ { cidr = \"10.0.0.0/8\", ports = \"443\" } ]\n",
            "4:",
            "",
        ),
        ("[policy\nname = \"x\"\n", "1:", ""),
    ];
    for (text, loc, want) in cases {
        let out = run_policy(&g, text);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{text:?}:\n{}", describe(&out));
        let file = g.dir.path().join("bad.toml").display().to_string();
        assert!(
            err.contains(&format!("{file}:{loc}")),
            "{text:?}: want {file}:{loc} in {err}"
        );
        assert!(err.contains(want), "{text:?}: want {want:?} in {err}");
    }
    // Nothing was started: no agent ever reached the journal.
    let recs = g.logs(&["--kind", "lifecycle"]);
    assert!(recs.iter().all(|r| r["action"] != "start"), "{recs:#?}");
    // And no scope exists.
    let ps = g.ctl(&["ps", "--json"]);
    assert!(ps.stdout.is_empty());
}

#[test]
fn missing_daemon_is_explained() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("p.toml");
    std::fs::write(&p, "[policy]\nname = \"x\"\n").unwrap();
    let out = std::process::Command::new(GUARDCTL)
        .env("GUARD_SOCKET", dir.path().join("nope.sock"))
        .args(run_args(&p, &[], &["/bin/true"]))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(125));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot reach guardd") && err.contains("sudo guardd"),
        "{err}"
    );
    // An unknown program is reported as such.
    let g = Guardd::start();
    let out = g.run(&p, &[], &["/nonexistent/program"]);
    assert_eq!(out.status.code(), Some(127), "{}", describe(&out));
    let out = g.run(&p, &[], &["no-such-program-guard"]);
    assert_eq!(out.status.code(), Some(127), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("command not found"));
}

fn request(stream: &mut BufReader<UnixStream>, line: &[u8]) -> serde_json::Value {
    stream.get_mut().write_all(line).unwrap();
    let mut resp = String::new();
    stream.read_line(&mut resp).unwrap();
    serde_json::from_str(&resp).unwrap_or_else(|e| panic!("{e}: {resp:?}"))
}

#[test]
fn malformed_requests_get_errors_and_do_not_disturb_others() {
    let g = Guardd::start();
    let s = UnixStream::connect(&g.socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut a = BufReader::new(s);
    let cases: &[(&[u8], &str)] = &[
        (b"garbage\n", "bad_request"),
        (b"{\"v\":1}\n", "bad_request"),
        (b"{\"v\":2,\"id\":1,\"op\":\"ps\"}\n", "unsupported_version"),
        (b"{\"v\":1,\"id\":2,\"op\":\"launch_missiles\"}\n", "bad_request"),
        (b"{\"v\":1,\"id\":3,\"op\":\"logs\",\"pid\":\"x\"}\n", "bad_request"),
        (b"{\"v\":1,\"id\":4,\"op\":\"open\"}\n", "bad_request"),
        (b"{\"v\":1,\"id\":5,\"op\":\"exited\",\"agent\":\"nope\",\"status\":{\"how\":\"code\",\"value\":0}}\n", "not_found"),
        (b"{\"v\":1,\"id\":6,\"op\":\"control\",\"agent\":\"nope\",\"action\":\"kill\"}\n", "not_found"),
        (b"{\"v\":1,\"id\":7,\"op\":\"logs\",\"since\":\"yesterday-ish\"}\n", "bad_request"),
        (b"\xff\xfe\x00\x01\n", "bad_request"),
    ];
    for (line, code) in cases {
        let r = request(&mut a, line);
        assert_eq!(r["ok"], false, "{r}");
        assert_eq!(
            r["error"]["code"],
            *code,
            "{}: {r}",
            String::from_utf8_lossy(line)
        );
        assert!(!r["error"]["message"].as_str().unwrap().is_empty());
    }
    // A line far over the limit is refused without being buffered, and the
    // connection still works afterwards.
    let huge = vec![b'x'; 5 << 20];
    a.get_mut().write_all(&huge).unwrap();
    a.get_mut().write_all(b"\n").unwrap();
    let mut resp = String::new();
    a.read_line(&mut resp).unwrap();
    assert!(resp.contains("too_long"), "{resp}");
    let r = request(&mut a, b"{\"v\":1,\"id\":9,\"op\":\"hello\"}\n");
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["id"], 9);

    // Meanwhile another client is served normally, agents included.
    let p = g.write_policy("ok", "[policy]\nname = \"ok\"\n");
    let out = g.run(&p, &[], &["/bin/true"]);
    assert!(out.status.success(), "{}", describe(&out));
    // A client that connects and vanishes mid-line does not hurt either.
    {
        let mut c = UnixStream::connect(&g.socket).unwrap();
        c.write_all(b"{\"v\":1,\"id\":1,\"op\":").unwrap();
    }
    let out = g.run(&p, &[], &["/bin/true"]);
    assert!(out.status.success(), "{}", describe(&out));
}

#[test]
fn socket_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let g = Guardd::start();
    let mode = std::fs::metadata(&g.socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    // A non-root peer is refused even if it could open the socket.
    let sock = g.socket.clone();
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", PYTHON, "-c"])
        .arg(format!(
            "import socket,sys\ns=socket.socket(socket.AF_UNIX)\ntry:\n  s.connect('{}')\nexcept OSError as e:\n  print('refused', e.errno); sys.exit(0)\nprint(s.recv(4096).decode())",
            sock.display()
        ))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    // Either the file mode stops it, or guardd's credential check does.
    assert!(
        text.contains("refused 13") || text.contains("permission_denied"),
        "{text}"
    );
}
