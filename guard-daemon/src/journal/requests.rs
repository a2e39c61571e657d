//! The queue a person works through (`guardctl requests`): what agents
//! tried outside their scope, grouped by agent and target, and what they
//! asked for on purpose (escalation records). Pure: records in, groups out.
//!
//! A group's number is the `seq` of its first record, so it stays the same
//! while the group grows and names a record anyone can look up
//! (`guardctl logs`, `guardctl grant --request N`).

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::record::{Kind, LEARN_LAYER, Record, Verdict, parse_record_time};
use super::text::{Text, escape_str};

/// The action of an escalation record that carries an agent's request;
/// the channel's other records (`invalid`, `rate-limit`) are guardd's
/// refusals, not requests.
pub const REQUEST_ACTION: &str = "request";
/// The rule of an agent's request.
pub const REQUEST_RULE: &str = "escalation.request";
/// The layer of an agent's request: the agent said it, nothing decided.
pub const REQUEST_LAYER: &str = "agent";

/// The agent a group belongs to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct GroupAgent {
    pub id: String,
    pub name: String,
}

/// One entry of the queue.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Group {
    /// The `seq` of the group's first record.
    pub request: u64,
    pub agent: GroupAgent,
    pub kind: Kind,
    /// What was tried: the destination, path, program, name or system
    /// call; for an escalation, what the agent asked for (`want`).
    pub target: Text,
    /// Attempts, a coalesced record counting for all it stands for.
    pub count: u64,
    pub first: String,
    pub last: String,
    pub rule: String,
    pub layer: String,
    /// `denied`, or `audit` for what audit mode would have refused; an
    /// escalation's own verdict (`allowed`: it was journaled).
    pub verdict: Verdict,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub want: Option<Text>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub why: Option<Text>,
}

/// Whether `rec` belongs in the queue: an agent's request, or one of its
/// refusals or would-be refusals. Not a use observed in learn mode, not an
/// allowed action, not the journal's or guardd's own records (a lifecycle
/// or policy record, a loss, guardd refusing someone else about the agent),
/// except the agent's own attempt to talk to guardd.
pub fn is_request(rec: &Record) -> bool {
    if rec.agent.is_none() {
        return false;
    }
    if rec.kind == Kind::Escalation {
        return rec.action == REQUEST_ACTION && rec.layer == REQUEST_LAYER;
    }
    rec.verdict != Verdict::Allowed
        && !matches!(rec.kind, Kind::Gap | Kind::Lifecycle | Kind::Policy)
        && rec.layer != LEARN_LAYER
        && (rec.layer != "guardd" || rec.rule == "control.confined-peer")
}

/// Key of a refusal group: the same agent trying the same target of the
/// same kind, refused the same way. An escalation is a group of its own.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Key {
    Refusal {
        agent: String,
        kind: Kind,
        target: Vec<u8>,
        verdict: Verdict,
        rule: String,
        layer: String,
    },
    Escalation(u64),
}

/// Groups records as they come (in `seq` order): the whole journal at once,
/// or record by record while following it.
#[derive(Default)]
pub struct Grouper {
    groups: Vec<Group>,
    index: HashMap<Key, usize>,
}

impl Grouper {
    pub fn new() -> Grouper {
        Grouper::default()
    }

    /// Adds one record; the group it made or grew, or `None` when the
    /// record is not part of the queue.
    pub fn add(&mut self, rec: &Record) -> Option<&Group> {
        if !is_request(rec) {
            return None;
        }
        let agent = rec.agent.as_ref()?;
        let key = if rec.kind == Kind::Escalation {
            Key::Escalation(rec.seq)
        } else {
            Key::Refusal {
                agent: agent.id.clone(),
                kind: rec.kind,
                target: rec.target.as_bytes().to_vec(),
                verdict: rec.verdict,
                rule: rec.rule.clone(),
                layer: rec.layer.clone(),
            }
        };
        let n = rec.repeated().unwrap_or(0).saturating_add(1);
        // A coalesced record's first event came before the record itself.
        let first = first_time(rec);
        if let Some(&i) = self.index.get(&key) {
            let g = &mut self.groups[i];
            g.count = g.count.saturating_add(n);
            if later(&rec.time, &g.last) {
                g.last = rec.time.clone();
            }
            if later(&g.first, &first) {
                g.first = first;
            }
            return Some(&self.groups[i]);
        }
        let detail_text = |k: &str| {
            rec.detail
                .as_ref()
                .and_then(|d| d.get(k))
                .and_then(|v| Text::deserialize(v).ok())
        };
        let escalation = rec.kind == Kind::Escalation;
        self.groups.push(Group {
            request: rec.seq,
            agent: GroupAgent {
                id: agent.id.clone(),
                name: agent.name.clone(),
            },
            kind: rec.kind,
            target: rec.target.clone(),
            count: n,
            first,
            last: rec.time.clone(),
            rule: rec.rule.clone(),
            layer: rec.layer.clone(),
            verdict: rec.verdict,
            want: if escalation {
                Some(detail_text("want").unwrap_or_else(|| rec.target.clone()))
            } else {
                None
            },
            why: if escalation { detail_text("why") } else { None },
        });
        self.index.insert(key, self.groups.len() - 1);
        self.groups.last()
    }

    /// The groups, in the order of their numbers.
    pub fn groups(&self) -> &[Group] {
        &self.groups
    }
}

/// Groups `records` (in `seq` order) into the queue.
pub fn group<'a>(records: impl IntoIterator<Item = &'a Record>) -> Vec<Group> {
    let mut g = Grouper::new();
    for r in records {
        g.add(r);
    }
    g.groups
}

/// When the first event a record stands for happened.
fn first_time(rec: &Record) -> String {
    rec.detail
        .as_ref()
        .and_then(|d| d.get("first_time"))
        .and_then(Value::as_str)
        .filter(|t| parse_record_time(t).is_some())
        .map_or_else(|| rec.time.clone(), str::to_owned)
}

/// Whether time `a` is after time `b` (times that do not parse compare as
/// text, which RFC 3339 UTC times do correctly anyway).
fn later(a: &str, b: &str) -> bool {
    match (parse_record_time(a), parse_record_time(b)) {
        (Some(a), Some(b)) => a > b,
        _ => a > b,
    }
}

const W_REQ: usize = 7;
const W_AGENT: usize = 16;
const W_KIND: usize = 10;
const W_VERDICT: usize = 9;
const W_COUNT: usize = 6;
const W_TIME: usize = 19;
const W_TARGET: usize = 32;
const W_RULE: usize = 24;

pub fn table_header() -> String {
    row([
        "REQUEST", "AGENT", "KIND", "VERDICT", "COUNT", "FIRST", "LAST", "TARGET", "RULE", "LAYER",
    ])
}

/// One line; everything an agent could influence is escaped, so the row
/// cannot carry terminal control sequences or break into several lines.
pub fn table_row(g: &Group) -> String {
    let mut line = row([
        &format!("#{}", g.request),
        &escape_str(&g.agent.name),
        g.kind.as_str(),
        g.verdict.as_str(),
        &g.count.to_string(),
        &short_time(&g.first),
        &short_time(&g.last),
        &g.target.escaped(),
        &escape_str(&g.rule),
        &escape_str(&g.layer),
    ]);
    if let Some(why) = &g.why {
        line.push_str(&format!("  why: {}", why.escaped()));
    }
    line
}

/// `YYYY-MM-DD HH:MM:SS`, as `guardctl logs` shows times.
fn short_time(t: &str) -> String {
    match parse_record_time(t) {
        Some(t) => {
            let s = super::record::format_time(t);
            s.get(..W_TIME).unwrap_or(&s).replacen('T', " ", 1)
        }
        None => escape_str(t),
    }
}

fn row(c: [&str; 10]) -> String {
    let [
        req,
        agent,
        kind,
        verdict,
        count,
        first,
        last,
        target,
        rule,
        layer,
    ] = c;
    format!(
        "{req:<W_REQ$} {agent:<W_AGENT$} {kind:<W_KIND$} {verdict:<W_VERDICT$} {count:>W_COUNT$} \
         {first:<W_TIME$} {last:<W_TIME$} {target:<W_TARGET$} {rule:<W_RULE$} {layer}"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::AgentRef;
    use serde_json::json;

    fn agent(id: &str) -> AgentRef {
        AgentRef {
            id: id.into(),
            name: format!("name-{id}"),
            policy: "p".into(),
            container: None,
        }
    }

    fn rec(seq: u64, sec: u32, a: &str, kind: Kind, target: &str, verdict: Verdict) -> Record {
        let (rule, layer) = match kind {
            Kind::Network => ("network.default-deny", "cgroup-bpf"),
            Kind::File | Kind::Exec => ("filesystem.default-deny", "landlock"),
            _ => ("r", "l"),
        };
        let mut r =
            Record::new(kind, "x", Text::new(target), verdict, rule, layer).with_agent(agent(a));
        r.seq = seq;
        r.time = format!("2026-11-22T03:04:{sec:02}.000000Z");
        r
    }

    #[test]
    fn refusals_group_by_agent_kind_and_target_numbered_by_their_first_record() {
        let recs = vec![
            rec(
                1,
                1,
                "a",
                Kind::Network,
                "127.0.0.2:80/tcp",
                Verdict::Denied,
            ),
            rec(2, 2, "a", Kind::File, "/etc/shadow", Verdict::Denied),
            rec(
                3,
                3,
                "a",
                Kind::Network,
                "127.0.0.2:80/tcp",
                Verdict::Denied,
            ),
            // Another agent, same target: its own group.
            rec(
                4,
                4,
                "b",
                Kind::Network,
                "127.0.0.2:80/tcp",
                Verdict::Denied,
            ),
            // Same agent and target, would-be refusal: apart from real ones.
            rec(5, 5, "a", Kind::Network, "127.0.0.2:80/tcp", Verdict::Audit),
            rec(
                6,
                6,
                "a",
                Kind::Network,
                "127.0.0.2:80/tcp",
                Verdict::Denied,
            ),
        ];
        let g = group(&recs);
        type Row<'a> = (u64, &'a str, &'a [u8], u64, &'a str, &'a str, Verdict);
        let summary: Vec<Row> = g
            .iter()
            .map(|g| {
                (
                    g.request,
                    g.agent.id.as_str(),
                    g.target.as_bytes(),
                    g.count,
                    g.first.as_str(),
                    g.last.as_str(),
                    g.verdict,
                )
            })
            .collect();
        assert_eq!(
            summary,
            vec![
                (
                    1,
                    "a",
                    &b"127.0.0.2:80/tcp"[..],
                    3,
                    "2026-11-22T03:04:01.000000Z",
                    "2026-11-22T03:04:06.000000Z",
                    Verdict::Denied
                ),
                (
                    2,
                    "a",
                    b"/etc/shadow",
                    1,
                    "2026-11-22T03:04:02.000000Z",
                    "2026-11-22T03:04:02.000000Z",
                    Verdict::Denied
                ),
                (
                    4,
                    "b",
                    b"127.0.0.2:80/tcp",
                    1,
                    "2026-11-22T03:04:04.000000Z",
                    "2026-11-22T03:04:04.000000Z",
                    Verdict::Denied
                ),
                (
                    5,
                    "a",
                    b"127.0.0.2:80/tcp",
                    1,
                    "2026-11-22T03:04:05.000000Z",
                    "2026-11-22T03:04:05.000000Z",
                    Verdict::Audit
                ),
            ]
        );
        assert_eq!(g[0].rule, "network.default-deny");
        assert_eq!(g[0].layer, "cgroup-bpf");
        assert_eq!(g[0].agent.name, "name-a");
    }

    #[test]
    fn a_coalesced_record_counts_for_all_it_stands_for_from_its_first_time() {
        let mut r = rec(7, 9, "a", Kind::File, "/etc/shadow", Verdict::Denied);
        r.detail = Some(json!({"repeated": 4, "first_time": "2026-11-22T03:04:01.500000Z"}));
        let later = rec(8, 20, "a", Kind::File, "/etc/shadow", Verdict::Denied);
        let g = group([&r, &later]);
        assert_eq!(g.len(), 1);
        assert_eq!(g[0].count, 6);
        assert_eq!(g[0].first, "2026-11-22T03:04:01.500000Z");
        assert_eq!(g[0].last, "2026-11-22T03:04:20.000000Z");
        assert_eq!(g[0].request, 7);
    }

    #[test]
    fn what_is_not_a_request_is_left_out() {
        let mut learn = rec(1, 1, "a", Kind::File, "/etc/hosts", Verdict::Audit);
        learn.layer = LEARN_LAYER.into();
        let allowed_exec = rec(2, 1, "a", Kind::Exec, "/usr/bin/python3", Verdict::Allowed);
        let mut start = rec(3, 1, "a", Kind::Lifecycle, "/bin/sh", Verdict::Allowed);
        start.action = "start".into();
        let mut degraded = rec(4, 1, "a", Kind::Policy, "unix: ...", Verdict::Audit);
        degraded.layer = "guardd".into();
        let mut gap = rec(5, 1, "a", Kind::Gap, "lost", Verdict::Denied);
        gap.layer = "guardd".into();
        let mut refused_op = rec(6, 1, "a", Kind::Lifecycle, "kill", Verdict::Denied);
        refused_op.layer = "guardd".into();
        let mut no_agent = rec(7, 1, "a", Kind::Network, "1.2.3.4:1/tcp", Verdict::Denied);
        no_agent.agent = None;
        let mut flood = rec(8, 1, "a", Kind::Escalation, "", Verdict::Denied);
        flood.action = "rate-limit".into();
        flood.layer = "guardd".into();
        for r in [
            &learn,
            &allowed_exec,
            &start,
            &degraded,
            &gap,
            &refused_op,
            &no_agent,
            &flood,
        ] {
            assert!(!is_request(r), "{r:?}");
        }
        // The agent's own attempt to talk to guardd is one.
        let mut peer = rec(9, 1, "a", Kind::Syscall, "open", Verdict::Denied);
        peer.layer = "guardd".into();
        peer.rule = "control.confined-peer".into();
        assert!(is_request(&peer));
        // A refused exec is one, with the program as its target.
        let exec = rec(10, 1, "a", Kind::Exec, "/usr/bin/curl", Verdict::Denied);
        let g = group([&learn, &allowed_exec, &exec, &peer]);
        assert_eq!(g.len(), 2);
        assert_eq!(g[0].target.as_bytes(), b"/usr/bin/curl");
    }

    fn escalation(seq: u64, want: &str, why: &str) -> Record {
        let mut r = Record::new(
            Kind::Escalation,
            REQUEST_ACTION,
            Text::new(want),
            Verdict::Allowed,
            REQUEST_RULE,
            REQUEST_LAYER,
        )
        .with_agent(agent("a"))
        .with_detail(json!({"want": want, "why": why}));
        r.seq = seq;
        r.time = "2026-11-22T03:04:05.000000Z".into();
        r
    }

    #[test]
    fn each_escalation_is_its_own_request_with_its_words() {
        let a = escalation(3, "127.0.0.1:8443/tcp", "fetch the build cache");
        let b = escalation(9, "127.0.0.1:8443/tcp", "again");
        let g = group([&a, &b]);
        assert_eq!(g.len(), 2);
        assert_eq!(g[0].request, 3);
        assert_eq!(g[1].request, 9);
        assert_eq!(g[0].kind, Kind::Escalation);
        assert_eq!(
            g[0].want.as_ref().unwrap().as_bytes(),
            b"127.0.0.1:8443/tcp"
        );
        assert_eq!(
            g[0].why.as_ref().unwrap().as_bytes(),
            b"fetch the build cache"
        );
        let v = serde_json::to_value(&g[0]).unwrap();
        assert_eq!(
            v,
            json!({
                "request": 3, "agent": {"id": "a", "name": "name-a"}, "kind": "escalation",
                "target": "127.0.0.1:8443/tcp", "count": 1,
                "first": "2026-11-22T03:04:05.000000Z", "last": "2026-11-22T03:04:05.000000Z",
                "rule": "escalation.request", "layer": "agent", "verdict": "allowed",
                "want": "127.0.0.1:8443/tcp", "why": "fetch the build cache",
            })
        );
        // Refusals carry neither field.
        let r = rec(1, 1, "a", Kind::File, "/x", Verdict::Denied);
        let v = serde_json::to_value(&group([&r])[0]).unwrap();
        assert!(v.get("want").is_none() && v.get("why").is_none());
    }

    #[test]
    fn rows_are_one_escaped_line() {
        let mut a = escalation(3, "evil\n\x1b[31mhost:1/tcp", "why\r\u{202e}not");
        a.agent.as_mut().unwrap().name = "bad\x1bname".into();
        let g = group([&a]);
        let line = table_row(&g[0]);
        assert!(!line.contains(['\n', '\r', '\x1b', '\u{202e}']), "{line:?}");
        assert!(line.starts_with("#3 "), "{line}");
        assert!(line.contains("evil\\n\\x1b[31mhost:1/tcp"), "{line}");
        assert!(line.contains("why: why\\r\\u{202E}not"), "{line}");
        assert!(table_header().starts_with("REQUEST"));
    }

    #[test]
    fn following_reports_the_group_each_record_grew() {
        let mut g = Grouper::new();
        let a = rec(
            1,
            1,
            "a",
            Kind::Network,
            "127.0.0.2:80/tcp",
            Verdict::Denied,
        );
        let b = rec(
            2,
            2,
            "a",
            Kind::Network,
            "127.0.0.2:80/tcp",
            Verdict::Denied,
        );
        let mut allowed = rec(3, 3, "a", Kind::Exec, "/bin/sh", Verdict::Allowed);
        allowed.action = "exec".into();
        assert_eq!(g.add(&a).map(|g| (g.request, g.count)), Some((1, 1)));
        assert_eq!(g.add(&b).map(|g| (g.request, g.count)), Some((1, 2)));
        assert!(g.add(&allowed).is_none());
        assert_eq!(g.groups().len(), 1);
    }
}
