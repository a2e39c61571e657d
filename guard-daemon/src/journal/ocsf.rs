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

use serde_json::{Value, json};

use super::{Kind, Record, Verdict};

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
        Kind::Dns | Kind::Policy | Kind::Gap => (0, "Base Event", 0, 99, "Other"),
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
    let target = r.target.to_string_lossy().into_owned();
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
        "message": format!("{} {} {} ({})", r.verdict.as_str(), r.action, target, r.rule),
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
        && let Some(repeated) = d.get("repeated").and_then(Value::as_u64)
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
    if let Some(p) = &r.process {
        ev["actor"] = json!({"process": {
            "pid": p.pid,
            "name": p.comm.to_string_lossy(),
            "file": {"path": p.exe.to_string_lossy(), "name": p.exe.to_string_lossy().rsplit('/').next().unwrap_or("")},
        }});
    }
    if let Some(a) = &r.agent {
        ev["actor"]["app_name"] = json!(a.name);
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
            ev["file"] = json!({"path": target, "name": target.rsplit('/').next().unwrap_or("")});
        }
        Kind::Exec => {
            let argv: Vec<String> = r
                .detail
                .as_ref()
                .and_then(|d| d.get("argv"))
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .map(|v| v.as_str().unwrap_or("?").to_owned())
                        .collect()
                })
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
