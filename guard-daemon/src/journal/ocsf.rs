//! Journal records as OCSF 1.3 events, for SIEMs that speak OCSF.
//!
//! | guard kind | OCSF class | activity |
//! | --- | --- | --- |
//! | network | Network Activity (4001) | connect: Open (1); sendmsg: Traffic (6); bind, listen: Listen (7); socket: Other (99) |
//! | file | File System Activity (1001) | open for read: Read (2); writes: Update (3); creation: Create (1); deletion: Delete (4); else Other (99) |
//! | exec | Process Activity (1007) | Launch (1) |
//! | syscall | Process Activity (1007) | Other (99) |
//! | lifecycle | Process Activity (1007) | start: Launch (1); exit, kill: Terminate (2); else Other (99) |
//! | dns, policy, gap | Base Event (0) | Other (99) |
//!
//! `disposition_id` is Blocked (2) for `denied`, Allowed (1) for `allowed`,
//! and Logged (17) with `status_detail` "audit" for `audit` (it would have
//! been blocked). guard's own fields (rule, layer, agent, hash chain) go to
//! `unmapped` so nothing is lost in translation. A coalesced record (see
//! `monitor::coalesce`) sets OCSF's `count` to the refusals it stands for
//! (`1 + detail.repeated`) and `start_time`/`end_time` to the first and the
//! last of them.
//!
//! Text an agent controls (paths, names, arguments, the message built from
//! them) is written with [`escape_bytes`]: bytes that are not UTF-8 as
//! `\xNN`, controls, C1 and bidi characters escaped, a backslash doubled.
//! The escape is reversible, so two different names never print the same
//! (a lossy conversion would turn every invalid byte into U+FFFD); the exact
//! bytes are also in `unmapped.target` and `unmapped.detail`, in the
//! journal's own lossless form. `device` names the host the record comes
//! from (`hostname`, and `uid` = its machine id).

use serde::Deserialize as _;
use serde_json::{Value, json};

use super::text::{escape_bytes, escape_str};
use super::{Kind, Record, Text, Verdict};

/// The last path component of an escaped path.
fn base_name(escaped: &str) -> &str {
    escaped.rsplit('/').next().unwrap_or("")
}

/// One argument of a command line: escaped, and quoted when it is empty or
/// holds a space or a quote, so the joined line still tells its arguments
/// apart.
fn cmd_arg(v: &Value) -> String {
    let arg = match Text::deserialize(v) {
        Ok(t) => t.escaped(),
        // Not text at all: shown as JSON rather than dropped.
        Err(_) => escape_str(&v.to_string()),
    };
    if arg.is_empty() || arg.contains([' ', '"']) {
        format!("\"{}\"", arg.replace('"', "\\\""))
    } else {
        arg
    }
}

const VERSION: &str = "1.3.0";

fn class_of(r: &Record) -> (u32, &'static str, u32, u32, &'static str) {
    // (class_uid, class_name, category_uid, activity_id, activity_name)
    match r.kind {
        Kind::Network => {
            let (a, n) = match r.action.as_str() {
                "connect" => (1, "Open"),
                "sendmsg" => (6, "Traffic"),
                "bind" | "listen" => (7, "Listen"),
                _ => (99, "Other"),
            };
            (4001, "Network Activity", 4, a, n)
        }
        Kind::File => {
            let access = r
                .detail
                .as_ref()
                .and_then(|d| d.get("access"))
                .and_then(Value::as_str)
                .unwrap_or("");
            let (a, n) = match (r.action.as_str(), access) {
                (
                    "mkdir" | "mkdirat" | "creat" | "mknod" | "mknodat" | "symlink" | "symlinkat"
                    | "link" | "linkat",
                    _,
                ) => (1, "Create"),
                ("unlink" | "unlinkat" | "rmdir", _) => (4, "Delete"),
                (_, "read") => (2, "Read"),
                (_, "write") => (3, "Update"),
                _ => (99, "Other"),
            };
            (1001, "File System Activity", 1, a, n)
        }
        Kind::Exec => (1007, "Process Activity", 1, 1, "Launch"),
        Kind::Syscall => (1007, "Process Activity", 1, 99, "Other"),
        Kind::Lifecycle => {
            let (a, n) = match r.action.as_str() {
                "start" => (1, "Launch"),
                "exit" | "kill" => (2, "Terminate"),
                _ => (99, "Other"),
            };
            (1007, "Process Activity", 1, a, n)
        }
        Kind::Dns | Kind::Policy | Kind::Gap | Kind::Escalation => {
            (0, "Base Event", 0, 99, "Other")
        }
    }
}

/// `10.0.0.1:443/tcp` or `[::1]:53/udp` as (ip, port, protocol).
fn endpoint(target: &str) -> Option<(String, u16, String)> {
    let (addr, proto) = target.rsplit_once('/')?;
    let (host, port) = addr.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Some((host.to_owned(), port.parse().ok()?, proto.to_owned()))
}

pub fn to_ocsf(r: &Record) -> Value {
    let (class_uid, class_name, category_uid, activity_id, activity_name) = class_of(r);
    let (disposition_id, disposition, status_id, status) = match r.verdict {
        Verdict::Denied => (2, "Blocked", 2, "Failure"),
        Verdict::Allowed => (1, "Allowed", 1, "Success"),
        Verdict::Audit => (17, "Logged", 1, "Success"),
    };
    let time_ms = r
        .timestamp()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let target = escape_bytes(r.target.as_bytes());
    let mut ev = json!({
        "class_uid": class_uid,
        "class_name": class_name,
        "category_uid": category_uid,
        "activity_id": activity_id,
        "activity_name": activity_name,
        "type_uid": u64::from(class_uid) * 100 + u64::from(activity_id),
        "time": time_ms,
        "severity_id": if r.verdict == Verdict::Allowed { 1 } else { 3 },
        "status_id": status_id,
        "status": status,
        "disposition_id": disposition_id,
        "disposition": disposition,
        "message": format!(
            "{} {} {} ({})",
            r.verdict.as_str(),
            escape_str(&r.action),
            target,
            escape_str(&r.rule)
        ),
        "metadata": {
            "version": VERSION,
            "uid": r.seq.to_string(),
            "log_name": "guard journal",
            "product": {"name": "guard", "vendor_name": "guard", "version": env!("CARGO_PKG_VERSION")},
        },
        "unmapped": {
            "guard_kind": r.kind.as_str(),
            "rule": r.rule,
            "layer": r.layer,
            "target": r.target,
            "detail": r.detail,
            "agent": r.agent,
            "seq": r.seq,
            "prev": r.prev,
            "hash": r.hash,
        },
    });
    if r.verdict == Verdict::Audit {
        ev["status_detail"] = json!("audit");
    }
    if let Some(d) = &r.detail
        && let Some(repeated) = r.repeated()
    {
        ev["count"] = json!(repeated.saturating_add(1));
        let first_ms = d
            .get("first_time")
            .and_then(Value::as_str)
            .and_then(super::parse_record_time)
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(time_ms, |d| d.as_millis() as u64);
        ev["start_time"] = json!(first_ms);
        ev["end_time"] = json!(time_ms);
    }
    if let Some(h) = &r.host {
        ev["device"] = json!({"hostname": h.hostname.escaped(), "uid": h.machine_id});
    }
    if let Some(p) = &r.process {
        let exe = p.exe.escaped();
        ev["actor"] = json!({"process": {
            "pid": p.pid,
            "name": p.comm.escaped(),
            "file": {"path": exe, "name": base_name(&exe)},
        }});
    }
    if let Some(a) = &r.agent {
        ev["actor"]["app_name"] = json!(escape_str(&a.name));
        ev["actor"]["session"] = json!({"uid": a.id});
    }
    match r.kind {
        Kind::Network => {
            if let Some((ip, port, proto)) = endpoint(&target) {
                ev["dst_endpoint"] = json!({"ip": ip, "port": port});
                ev["connection_info"] =
                    json!({"protocol_name": proto, "direction_id": 2, "direction": "Outbound"});
            } else {
                ev["dst_endpoint"] = json!({"name": target});
            }
        }
        Kind::File => {
            ev["file"] = json!({"path": target, "name": base_name(&target)});
        }
        Kind::Exec => {
            // `argv` of a program started, `args` of a refused exec.
            let argv: Vec<String> = r
                .detail
                .as_ref()
                .and_then(|d| d.get("argv").or_else(|| d.get("args")))
                .and_then(Value::as_array)
                .map(|a| a.iter().map(cmd_arg).collect())
                .unwrap_or_default();
            ev["process"] = json!({"file": {"path": target}, "cmd_line": argv.join(" ")});
        }
        _ => {}
    }
    ev
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::{AgentRef, ProcessRef, Text};

    fn rec(kind: Kind, action: &str, target: &str, verdict: Verdict) -> Record {
        let mut r = Record::new(
            kind,
            action,
            Text::new(target),
            verdict,
            "network.default-deny",
            "cgroup-bpf",
        )
        .with_agent(AgentRef {
            id: "a1".into(),
            name: "demo".into(),
            policy: "p".into(),
            container: None,
        })
        .with_process(ProcessRef {
            pid: 7,
            comm: Text::new("curl"),
            exe: Text::new("/usr/bin/curl"),
        });
        r.time = "2026-11-22T03:04:05.000001Z".into();
        r.seq = 9;
        r
    }

    #[test]
    fn network_maps_to_network_activity() {
        let o = to_ocsf(&rec(
            Kind::Network,
            "connect",
            "[2001:db8::1]:443/tcp",
            Verdict::Denied,
        ));
        assert_eq!(o["class_uid"], 4001);
        assert_eq!(o["activity_id"], 1);
        assert_eq!(o["type_uid"], 400101);
        assert_eq!(o["disposition_id"], 2);
        assert_eq!(o["dst_endpoint"]["ip"], "2001:db8::1");
        assert_eq!(o["dst_endpoint"]["port"], 443);
        assert_eq!(o["connection_info"]["protocol_name"], "tcp");
        assert_eq!(o["actor"]["process"]["pid"], 7);
        assert_eq!(o["unmapped"]["rule"], "network.default-deny");
        assert_eq!(o["metadata"]["uid"], "9");
        assert_eq!(o["time"], 1_795_316_645_000u64);
        let l = to_ocsf(&rec(
            Kind::Network,
            "bind",
            "127.0.0.1:8000/tcp",
            Verdict::Denied,
        ));
        assert_eq!(
            (l["activity_id"].as_u64(), l["type_uid"].as_u64()),
            (Some(7), Some(400107))
        );
    }

    #[test]
    fn files_exec_and_audit() {
        let mut f = rec(Kind::File, "openat", "/etc/shadow", Verdict::Audit);
        f.detail = Some(json!({"access": "read"}));
        let o = to_ocsf(&f);
        assert_eq!(
            (o["class_uid"].as_u64(), o["activity_id"].as_u64()),
            (Some(1001), Some(2))
        );
        assert_eq!(o["file"]["name"], "shadow");
        assert_eq!(o["status_detail"], "audit");
        let mut e = rec(Kind::Exec, "exec", "/bin/ls", Verdict::Allowed);
        e.detail = Some(json!({"argv": ["ls", "-l"]}));
        let o = to_ocsf(&e);
        assert_eq!(
            (o["class_uid"].as_u64(), o["activity_id"].as_u64()),
            (Some(1007), Some(1))
        );
        assert_eq!(o["process"]["cmd_line"], "ls -l");
        let g = to_ocsf(&rec(Kind::Gap, "lost", "3 events", Verdict::Denied));
        assert_eq!(g["class_uid"], 0);
    }

    #[test]
    fn untrusted_text_is_escaped_reversibly() {
        let mut a = rec(Kind::File, "openat", "x", Verdict::Denied);
        a.target = Text::new(b"/tmp/a\xffb".to_vec());
        let mut b = a.clone();
        b.target = Text::from("/tmp/a\u{fffd}b");
        let (oa, ob) = (to_ocsf(&a), to_ocsf(&b));
        assert_eq!(oa["file"]["path"], "/tmp/a\\xffb");
        assert_eq!(ob["file"]["path"], "/tmp/a\u{fffd}b");
        assert_ne!(oa["message"], ob["message"]);
        // A bidi override and a newline in a name, and a backslash that
        // must not be read as the start of an escape.
        let mut c = a.clone();
        c.target = Text::from("/tmp/gpj.\u{202e}exe\n\\xff");
        c.process.as_mut().unwrap().exe = Text::new(b"/opt/\x9b\xe2\x80\xaebin".to_vec());
        let o = to_ocsf(&c);
        // As guardctl prints it: the lossless `unmapped.target` keeps the
        // override as a JSON escape.
        let text = crate::journal::to_safe_json(&o).unwrap();
        assert!(
            !text.contains('\u{202e}') && !text.contains('\u{fffd}'),
            "{text}"
        );
        assert_eq!(o["file"]["path"], "/tmp/gpj.\\u{202E}exe\\n\\\\xff");
        assert_eq!(o["file"]["name"], "gpj.\\u{202E}exe\\n\\\\xff");
        assert!(
            o["message"]
                .as_str()
                .unwrap()
                .contains("gpj.\\u{202E}exe\\n")
        );
        assert_eq!(
            o["actor"]["process"]["file"]["path"],
            "/opt/\\x9b\\u{202E}bin"
        );
        assert_eq!(o["actor"]["process"]["file"]["name"], "\\x9b\\u{202E}bin");
        // The exact bytes stay available in the journal's lossless form.
        assert_eq!(
            o["unmapped"]["target"],
            serde_json::to_value(&c.target).unwrap()
        );
    }

    #[test]
    fn exec_command_lines_keep_their_arguments_apart() {
        let mut e = rec(Kind::Exec, "exec", "/usr/bin/env", Verdict::Denied);
        e.detail = Some(json!({"args": ["env", "a b", "", "q\"", {"base64": "/w=="}, "\u{202e}"]}));
        let o = to_ocsf(&e);
        assert_eq!(
            o["process"]["cmd_line"],
            r#"env "a b" "" "q\"" \xff \u{202E}"#
        );
    }

    #[test]
    fn device_names_the_host() {
        let mut r = rec(Kind::Network, "connect", "10.0.0.1:1/tcp", Verdict::Denied);
        assert!(to_ocsf(&r).get("device").is_none());
        r.host = Some(crate::journal::HostRef {
            hostname: Text::from("node\u{202e}7"),
            machine_id: Some("0123456789abcdef0123456789abcdef".into()),
        });
        let o = to_ocsf(&r);
        assert_eq!(o["device"]["hostname"], "node\\u{202E}7");
        assert_eq!(o["device"]["uid"], "0123456789abcdef0123456789abcdef");
    }

    #[test]
    fn coalesced_records_carry_their_count() {
        let mut r = rec(Kind::Network, "sendmsg", "10.0.0.1:53/udp", Verdict::Denied);
        r.detail = Some(json!({"repeated": 41, "first_time": "2026-11-22T03:04:04.000000Z"}));
        let o = to_ocsf(&r);
        assert_eq!(o["count"], 42);
        assert_eq!(o["start_time"], 1_795_316_644_000u64);
        assert_eq!(o["end_time"], 1_795_316_645_000u64);
        assert!(
            to_ocsf(&rec(Kind::Network, "sendmsg", "x", Verdict::Denied))
                .get("count")
                .is_none()
        );
    }
}
