//! The journal record: one JSON object per event. Field order is part of the
//! integrity chain (see `hash.rs`), so do not reorder fields.

use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::JournalError;
use super::text::{
    COMM_CAP, DETAIL_STRING_CAP, EXE_CAP, LABEL_CAP, TARGET_CAP, Text, floor_char_boundary,
};

/// The machine a record comes from, so that records gathered from many
/// nodes can be told apart. Part of the record, hence of its hash.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct HostRef {
    /// The kernel's host name (UTS namespace of guardd) when the record was
    /// made.
    pub hostname: Text,
    /// `/etc/machine-id` (32 lowercase hex digits), or `None` when the
    /// host has none or it is malformed.
    pub machine_id: Option<String>,
}

impl HostRef {
    /// This machine, read from `/proc/sys/kernel/hostname` and
    /// `/etc/machine-id`. What cannot be read is left empty rather than
    /// guessed.
    pub fn local() -> HostRef {
        HostRef::read(
            Path::new("/proc/sys/kernel/hostname"),
            Path::new("/etc/machine-id"),
        )
    }

    fn read(hostname: &Path, machine_id: &Path) -> HostRef {
        let hostname = std::fs::read(hostname)
            .map(|b| b.trim_ascii_end().to_vec())
            .unwrap_or_default();
        let machine_id = std::fs::read_to_string(machine_id)
            .ok()
            .map(|s| s.trim().to_owned())
            .filter(|s| s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit()))
            .map(|s| s.to_ascii_lowercase());
        HostRef {
            hostname: Text::new(hostname),
            machine_id,
        }
    }
}

static LOCAL_HOST: OnceLock<HostRef> = OnceLock::new();

/// Names this process's host in every record appended from now on (guardd
/// calls it once at start-up; records of a process that never calls it,
/// such as unit tests, name no host). A second call changes nothing.
pub fn set_local_host(host: HostRef) {
    let _ = LOCAL_HOST.set(host);
}

/// The host set by [`set_local_host`], if any.
pub fn local_host() -> Option<&'static HostRef> {
    LOCAL_HOST.get()
}

/// Which agent the event belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AgentRef {
    pub id: String,
    pub name: String,
    pub policy: String,
    /// The container the agent was launched from (issue 13), as guardd saw
    /// the launcher's cgroup; absent for agents started on the host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<ContainerRef>,
}

/// Where a launcher ran, read by guardd from the socket peer's cgroup
/// (never from what the client says).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ContainerRef {
    /// The launcher's v2 cgroup path.
    pub cgroup: String,
    /// The container's id, when the path's last component names one
    /// (`cri-containerd-<id>.scope`, `crio-<id>`, `docker-<id>`,
    /// `libpod-<id>`, or a bare 64-digit id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The pod's UID, when the path shows one (`pod<uid>` of the kubelet's
    /// cgroup layout, systemd or cgroupfs driver).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<String>,
}

/// The process inside the agent that acted.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ProcessRef {
    pub pid: u32,
    pub comm: Text,
    pub exe: Text,
}

/// The `layer` of records of uses observed in learn mode (issue 14):
/// verdict `audit`, but no refusal, would-be or real, so counts of
/// refusals leave them out.
pub const LEARN_LAYER: &str = "learn";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Network,
    Dns,
    File,
    Exec,
    Syscall,
    Lifecycle,
    Policy,
    /// The journal itself: lost events, retention summaries.
    Gap,
    /// An agent asked a person for something through its request channel
    /// (`daemon::requests`): journaled, granting nothing by itself.
    Escalation,
}

impl Kind {
    pub const ALL: [Kind; 9] = [
        Kind::Network,
        Kind::Dns,
        Kind::File,
        Kind::Exec,
        Kind::Syscall,
        Kind::Lifecycle,
        Kind::Policy,
        Kind::Gap,
        Kind::Escalation,
    ];

    /// The serde name, also the value of the store's `kind` column.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Network => "network",
            Kind::Dns => "dns",
            Kind::File => "file",
            Kind::Exec => "exec",
            Kind::Syscall => "syscall",
            Kind::Lifecycle => "lifecycle",
            Kind::Policy => "policy",
            Kind::Gap => "gap",
            Kind::Escalation => "escalation",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Kind {
    type Err = JournalError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Kind::ALL
            .into_iter()
            .find(|k| k.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| JournalError::UnknownName {
                what: "kind",
                input: s.to_owned(),
            })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Denied,
    Allowed,
    Audit,
}

impl Verdict {
    pub const ALL: [Verdict; 3] = [Verdict::Denied, Verdict::Allowed, Verdict::Audit];

    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Denied => "denied",
            Verdict::Allowed => "allowed",
            Verdict::Audit => "audit",
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Verdict {
    type Err = JournalError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Verdict::ALL
            .into_iter()
            .find(|v| v.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| JournalError::UnknownName {
                what: "verdict",
                input: s.to_owned(),
            })
    }
}

/// One journaled event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Assigned by the journal: 1-based, gap-free.
    #[serde(default)]
    pub seq: u64,
    /// RFC 3339 UTC with microseconds; assigned at append when left empty.
    #[serde(default)]
    pub time: String,
    /// The machine of the guardd that made the record; absent in records
    /// written before hosts were named.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<HostRef>,
    /// `None` for host-level records.
    pub agent: Option<AgentRef>,
    pub process: Option<ProcessRef>,
    pub kind: Kind,
    pub action: String,
    pub target: Text,
    pub verdict: Verdict,
    pub rule: String,
    pub layer: String,
    pub detail: Option<Value>,
    /// Names of fields that were length-capped.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub truncated: Vec<String>,
    /// Hex SHA-256 of the previous record (64 zeros for seq 1).
    #[serde(default)]
    pub prev: String,
    /// Must stay the last field: the chain splices it into stored JSON.
    #[serde(default)]
    pub hash: String,
}

impl Record {
    /// `detail.repeated` of a coalesced record: how many identical events it
    /// stands for beyond itself (`monitor::coalesce`). `None` for a record
    /// that is not a coalesced one.
    pub fn repeated(&self) -> Option<u64> {
        self.detail
            .as_ref()?
            .get("repeated")
            .and_then(serde_json::Value::as_u64)
    }

    /// A record with no agent, process or detail; the journal fills in
    /// `seq`, `time`, `prev` and `hash`.
    pub fn new(
        kind: Kind,
        action: impl Into<String>,
        target: impl Into<Text>,
        verdict: Verdict,
        rule: impl Into<String>,
        layer: impl Into<String>,
    ) -> Record {
        Record {
            seq: 0,
            time: String::new(),
            host: None,
            agent: None,
            process: None,
            kind,
            action: action.into(),
            target: target.into(),
            verdict,
            rule: rule.into(),
            layer: layer.into(),
            detail: None,
            truncated: Vec::new(),
            prev: String::new(),
            hash: String::new(),
        }
    }

    pub fn with_agent(mut self, agent: AgentRef) -> Record {
        self.agent = Some(agent);
        self
    }

    pub fn with_process(mut self, process: ProcessRef) -> Record {
        self.process = Some(process);
        self
    }

    pub fn with_detail(mut self, detail: Value) -> Record {
        self.detail = Some(detail);
        self
    }

    /// The record's time, if it parses.
    pub fn timestamp(&self) -> Option<SystemTime> {
        parse_record_time(&self.time)
    }

    /// Applies the default caps and names every cut field in `truncated`.
    /// Idempotent, so a batch that is retried is not marked twice.
    pub fn enforce_caps(&mut self) {
        let mut cut: Vec<&'static str> = Vec::new();
        if let Some(agent) = &mut self.agent {
            for (name, value) in [
                ("agent.id", &mut agent.id),
                ("agent.name", &mut agent.name),
                ("agent.policy", &mut agent.policy),
            ] {
                if cap_string(value, LABEL_CAP) {
                    cut.push(name);
                }
            }
        }
        if let Some(process) = &mut self.process {
            if process.comm.cap(COMM_CAP) {
                cut.push("process.comm");
            }
            if process.exe.cap(EXE_CAP) {
                cut.push("process.exe");
            }
        }
        for (name, value) in [
            ("action", &mut self.action),
            ("rule", &mut self.rule),
            ("layer", &mut self.layer),
        ] {
            if cap_string(value, LABEL_CAP) {
                cut.push(name);
            }
        }
        if self.target.cap(TARGET_CAP) {
            cut.push("target");
        }
        if let Some(detail) = &mut self.detail
            && cap_detail(detail, DETAIL_STRING_CAP)
        {
            cut.push("detail");
        }
        for name in cut {
            if !self.truncated.iter().any(|t| t == name) {
                self.truncated.push(name.to_owned());
            }
        }
    }
}

/// Everything of a [`Record`] but `seq`, `prev` and `hash`, with the same
/// field order and serde attributes, so that
/// `{"seq":N,` + body + `,"prev":"…","hash":""}` is byte-for-byte
/// `serde_json::to_vec(record)`. Lets the expensive serialisation happen on
/// the appending thread; the writer thread only splices and hashes.
#[derive(Serialize)]
pub(crate) struct RecordBody<'a> {
    time: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    host: &'a Option<HostRef>,
    agent: &'a Option<AgentRef>,
    process: &'a Option<ProcessRef>,
    kind: Kind,
    action: &'a str,
    target: &'a Text,
    verdict: Verdict,
    rule: &'a str,
    layer: &'a str,
    detail: &'a Option<Value>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    truncated: &'a [String],
}

impl<'a> RecordBody<'a> {
    pub(crate) fn of(r: &'a Record) -> RecordBody<'a> {
        RecordBody {
            time: &r.time,
            host: &r.host,
            agent: &r.agent,
            process: &r.process,
            kind: r.kind,
            action: &r.action,
            target: &r.target,
            verdict: r.verdict,
            rule: &r.rule,
            layer: &r.layer,
            detail: &r.detail,
            truncated: &r.truncated,
        }
    }
}

fn cap_string(s: &mut String, max: usize) -> bool {
    if s.len() <= max {
        return false;
    }
    let end = floor_char_boundary(s, max);
    s.truncate(end);
    true
}

/// Caps every string inside `detail`. Iterative so a deeply nested value
/// cannot overflow the writer thread's stack.
fn cap_detail(detail: &mut Value, max: usize) -> bool {
    let mut cut = false;
    let mut stack = vec![detail];
    while let Some(v) = stack.pop() {
        match v {
            Value::String(s) => cut |= cap_string(s, max),
            Value::Array(items) => stack.extend(items.iter_mut()),
            Value::Object(map) => stack.extend(map.values_mut()),
            Value::Null | Value::Bool(_) | Value::Number(_) => {}
        }
    }
    cut
}

/// Latest instant `humantime` can print (9999-12-31T23:59:59.999999Z).
const MAX_PRINTABLE_SECS: u64 = 253_402_300_799;

/// RFC 3339 UTC with microseconds. Out-of-range clocks are clamped rather
/// than panicking inside the formatter.
pub fn format_time(t: SystemTime) -> String {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    let clamped = if since.as_secs() > MAX_PRINTABLE_SECS {
        Duration::new(MAX_PRINTABLE_SECS, 999_999_000)
    } else {
        since
    };
    humantime::format_rfc3339_micros(UNIX_EPOCH + clamped).to_string()
}

/// Parses the `time` field as the journal writes it (UTC, `Z` suffix).
pub fn parse_record_time(s: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339(s).ok()
}

/// Microseconds since the epoch for the store's `ts_us` column.
pub(crate) fn to_unix_us(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_micros()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_micros()).map_or(i64::MIN, |us| -us),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    pub(crate) fn sample() -> Record {
        Record::new(
            Kind::Network,
            "connect",
            "10.0.0.1:443/tcp",
            Verdict::Denied,
            "network.default-deny",
            "cgroup-bpf",
        )
        .with_agent(AgentRef {
            id: "a1".into(),
            name: "claude".into(),
            policy: "default".into(),
            container: None,
        })
        .with_process(ProcessRef {
            pid: 42,
            comm: Text::from("curl"),
            exe: Text::from("/usr/bin/curl"),
        })
    }

    #[test]
    fn json_shape_and_field_order() {
        let mut r = sample();
        r.seq = 1;
        r.time = "2026-11-22T03:04:05.123456Z".into();
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(
            json,
            r#"{"seq":1,"time":"2026-11-22T03:04:05.123456Z","agent":{"id":"a1","name":"claude","policy":"default"},"process":{"pid":42,"comm":"curl","exe":"/usr/bin/curl"},"kind":"network","action":"connect","target":"10.0.0.1:443/tcp","verdict":"denied","rule":"network.default-deny","layer":"cgroup-bpf","detail":null,"prev":"","hash":""}"#
        );
        let back: Record = serde_json::from_str(&json).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn host_is_part_of_the_record_and_of_its_body() {
        let mut r = sample();
        r.seq = 3;
        r.host = Some(HostRef {
            hostname: Text::from("node-7"),
            machine_id: Some("0123456789abcdef0123456789abcdef".into()),
        });
        let json = serde_json::to_string(&r).unwrap();
        assert!(
            json.contains(r#""time":"","host":{"hostname":"node-7","machine_id":"0123456789abcdef0123456789abcdef"},"agent":"#),
            "{json}"
        );
        // The body the chain hashes is the record's JSON minus seq/prev/hash.
        let body = serde_json::to_string(&RecordBody::of(&r)).unwrap();
        assert!(json.contains(&body[1..body.len() - 1]), "{body}");
        let back: Record = serde_json::from_str(&json).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn local_host_reads_hostname_and_validates_the_machine_id() {
        let dir = tempfile::tempdir().unwrap();
        let (h, m) = (dir.path().join("h"), dir.path().join("m"));
        std::fs::write(&h, "node-7\n").unwrap();
        std::fs::write(&m, "0123456789ABCDEF0123456789abcdef\n").unwrap();
        let host = HostRef::read(&h, &m);
        assert_eq!(host.hostname.as_str(), Some("node-7"));
        assert_eq!(
            host.machine_id.as_deref(),
            Some("0123456789abcdef0123456789abcdef")
        );
        std::fs::write(&m, "not-a-machine-id\n").unwrap();
        assert_eq!(HostRef::read(&h, &m).machine_id, None);
        let gone = HostRef::read(&dir.path().join("x"), &dir.path().join("y"));
        assert!(gone.hostname.is_empty() && gone.machine_id.is_none());
        // The real host: a name at least (machine-id may be absent).
        assert!(!HostRef::local().hostname.is_empty());
    }

    #[test]
    fn truncated_is_emitted_only_when_non_empty() {
        let mut r = sample();
        r.truncated.push("target".into());
        let json = serde_json::to_string(&r).unwrap();
        assert!(json.contains(r#""truncated":["target"]"#));
    }

    #[test]
    fn caps_name_every_cut_field_once() {
        let mut r = sample();
        r.target = Text::new(vec![b'x'; TARGET_CAP + 10]);
        if let Some(p) = &mut r.process {
            p.comm = Text::from("c".repeat(100));
        }
        r.detail = Some(json!({"args": ["ok", "y".repeat(DETAIL_STRING_CAP + 1)], "n": 3}));
        r.enforce_caps();
        r.enforce_caps();
        assert_eq!(r.truncated, vec!["process.comm", "target", "detail"]);
        assert_eq!(r.target.len(), TARGET_CAP);
        assert_eq!(r.process.as_ref().unwrap().comm.len(), COMM_CAP);
        let args = &r.detail.as_ref().unwrap()["args"];
        assert_eq!(args[1].as_str().unwrap().len(), DETAIL_STRING_CAP);
        assert_eq!(args[0], "ok");
    }

    #[test]
    fn kind_and_verdict_names() {
        for k in Kind::ALL {
            assert_eq!(k.as_str().parse::<Kind>().unwrap(), k);
            assert_eq!(serde_json::to_string(&k).unwrap(), format!("\"{k}\""));
        }
        for v in Verdict::ALL {
            assert_eq!(v.as_str().parse::<Verdict>().unwrap(), v);
        }
        assert!("bogus".parse::<Kind>().is_err());
        assert_eq!("DENIED".parse::<Verdict>().unwrap(), Verdict::Denied);
    }

    #[test]
    fn time_formatting_is_total() {
        let t = UNIX_EPOCH + Duration::new(1_795_316_645, 123_456_789);
        let s = format_time(t);
        assert_eq!(s, "2026-11-22T03:04:05.123456Z");
        assert_eq!(
            to_unix_us(parse_record_time(&s).unwrap()),
            1_795_316_645_123_456
        );
        // Neither a pre-epoch nor a far-future clock may panic.
        assert_eq!(
            format_time(UNIX_EPOCH - Duration::from_secs(5)),
            "1970-01-01T00:00:00.000000Z"
        );
        assert!(
            format_time(UNIX_EPOCH + Duration::from_secs(1_000_000_000_000)).starts_with("9999-")
        );
        assert_eq!(to_unix_us(UNIX_EPOCH - Duration::from_micros(3)), -3);
    }
}
