//! guardd's side of the per-agent resolvers (issue 12): where their
//! upstreams come from, the runtime they run on, the adapter that turns a
//! resolver's grants into the agent's kernel map entries, and the journal
//! records of what a resolver did.

use std::{
    net::IpAddr,
    sync::{Arc, Mutex},
    time::SystemTime,
};

use serde_json::json;

use crate::{
    dns::{AddressSink, AgentResolver, DnsError, DnsEvent, DnsEvents, ResolverConfig},
    journal::{JournalHandle, Kind, Record, Text, Verdict},
    kernel::dynamic::DynamicNet,
    metrics::Metrics,
    monitor::{AgentMeta, coalesce},
    policy::{NetPlan, host::DnsPlan},
};

/// The resolvers of every agent: one runtime of their own (a flood of
/// lookups must not slow guardd's control socket) and the handle on the
/// kernel's allow-maps they write through.
pub struct DnsService {
    rt: tokio::runtime::Runtime,
    pub cfg: Arc<ResolverConfig>,
    net: Arc<DynamicNet>,
    /// Where the upstreams came from, for `doctor` and the start record.
    pub origin: String,
}

impl DnsService {
    pub fn new(
        cfg: ResolverConfig,
        net: DynamicNet,
        origin: String,
    ) -> std::io::Result<DnsService> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("guard-dns")
            .enable_all()
            .build()?;
        Ok(DnsService {
            rt,
            cfg: Arc::new(cfg),
            net: Arc::new(net),
            origin,
        })
    }

    /// Starts the resolver of one agent. `preferred`: the port its kernel
    /// entry already names (re-adoption).
    pub fn start_agent(
        &self,
        slot: u32,
        net: Arc<NetPlan>,
        dns: Arc<DnsPlan>,
        audit: bool,
        events: AgentEvents,
        preferred: Option<u16>,
    ) -> Result<AgentResolver, DnsError> {
        let sink = MapSink {
            slot,
            plan: net,
            net: self.net.clone(),
        };
        AgentResolver::start(
            self.rt.handle(),
            self.cfg.clone(),
            dns,
            audit,
            Arc::new(sink),
            Arc::new(events),
            preferred,
        )
    }
}

/// Writes a resolver's grants as the agent's /32 and /128 entries: the
/// static rules covering the address plus the host rules' ranges; when no
/// grant is left, the static entry at exactly that address comes back (or
/// the entry goes, and the enclosing prefixes decide again).
struct MapSink {
    slot: u32,
    plan: Arc<NetPlan>,
    net: Arc<DynamicNet>,
}

impl AddressSink for MapSink {
    fn write(&self, ip: IpAddr, rules: &[u16]) -> Result<(), String> {
        let value = self.plan.name_value(ip, rules).map_err(|e| e.to_string())?;
        self.net
            .put(self.slot, ip, &value)
            .map_err(|e| e.to_string())
    }

    fn clear(&self, ip: IpAddr) -> Result<(), String> {
        match self.plan.exact(ip) {
            Some(v) => self.net.put(self.slot, ip, v),
            None => self.net.remove(self.slot, ip),
        }
        .map_err(|e| e.to_string())
    }
}

/// Journals what one agent's resolver did, through the coalescer like the
/// kernel's refusals (one record per identical refusal and interval).
pub struct AgentEvents {
    pub meta: Arc<AgentMeta>,
    pub journal: JournalHandle,
    pub coalescer: Arc<Mutex<coalesce::Coalescer>>,
    pub metrics: Arc<Metrics>,
}

impl DnsEvents for AgentEvents {
    fn event(&self, ev: DnsEvent) {
        let Some(rec) = record_of(&ev) else {
            return;
        };
        let rec = rec.with_agent(self.meta.agent.clone());
        self.metrics.event(&rec);
        self.meta.refusals.count(rec.verdict);
        let mut out = Vec::new();
        if coalesce::put(
            &self.coalescer,
            &self.journal,
            rec,
            SystemTime::now(),
            &mut out,
        ) {
            self.metrics.folded();
        }
    }
}

fn transport(tcp: bool) -> &'static str {
    if tcp { "tcp" } else { "udp" }
}

fn verdict(audit: bool) -> Verdict {
    if audit {
        Verdict::Audit
    } else {
        Verdict::Denied
    }
}

/// The target of a refused name's record: the name, or once the agent is
/// over its budget of distinct names, one target for all of them, so a
/// flood of random labels at any depth folds into one record per interval
/// with a count (the name itself is in the detail).
fn refused_target(name: &str, over_budget: bool) -> String {
    if over_budget {
        FOLDED_NAMES.to_owned()
    } else {
        name.to_owned()
    }
}

const FOLDED_NAMES: &str = "<names over budget>";

fn dns_record(action: &str, target: impl Into<Text>, v: Verdict, rule: &str) -> Record {
    Record::new(Kind::Dns, action, target.into(), v, rule, "dns")
}

/// The journal record of a resolver event; `None` for what is no refusal
/// and no finding (an allowed lookup: the first connection it opens is
/// journaled by the kernel programs).
pub fn record_of(ev: &DnsEvent) -> Option<Record> {
    let rec = match ev {
        DnsEvent::Allowed { .. } => return None,
        DnsEvent::Ipv6Unavailable { why } => dns_record(
            "resolver",
            "[::1]",
            Verdict::Allowed,
            "dns.ipv6-unavailable",
        )
        .with_detail(json!({
            "why": format!("the agent's resolver runs on 127.0.0.1 only: {why}; its IPv6 DNS queries fail"),
        })),
        DnsEvent::Malformed { why, len, tcp } => dns_record(
            "query",
            "<malformed>",
            Verdict::Denied,
            "dns.malformed",
        )
        .with_detail(json!({
            "why": format!("not a well-formed query, dropped unanswered: {why}"),
            "bytes": len,
            "transport": transport(*tcp),
        })),
        DnsEvent::TypeRefused {
            name,
            qtype,
            tcp,
            over_budget,
        } => dns_record(
            "query",
            refused_target(name, *over_budget),
            Verdict::Denied,
            "dns.type-refused",
        )
        .with_detail(json!({
            "qtype": qtype,
            "name": name,
            "transport": transport(*tcp),
            "why": "zone transfers and ANY queries are refused in every mode",
        })),
        DnsEvent::Refused {
            name,
            qtype,
            tcp,
            over_budget,
        } => {
            let mut d = json!({
                "qtype": qtype,
                "transport": transport(*tcp),
                "why": "no host rule allows this name: answered REFUSED, nothing was sent upstream",
            });
            if *over_budget {
                d["name"] = json!(name);
                d["folded"] = json!(
                    "the agent had more distinct names refused than the budget allows in this window \
                     (a tunnel through names?): further names are counted under one record per interval"
                );
            }
            dns_record(
                "query",
                refused_target(name, *over_budget),
                Verdict::Denied,
                "dns.name-not-allowed",
            )
            .with_detail(d)
        }
        DnsEvent::Audited {
            name,
            qtype,
            addrs,
            chain,
            over_budget,
        } => dns_record(
            "query",
            refused_target(name, *over_budget),
            Verdict::Audit,
            "dns.name-not-allowed",
        )
        .with_detail(json!({
            "qtype": qtype,
            "name": name,
            "addresses": addrs.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "chain": chain,
            "why": "no host rule allows this name (audit mode: it was resolved)",
        })),
        DnsEvent::ChainRefused { name, chain, audit } => dns_record(
            "query",
            name.clone(),
            verdict(*audit),
            "dns.cname-not-allowed",
        )
        .with_detail(json!({
            "chain": chain,
            "why": "the answer's CNAME chain leaves the allowed names: each name after the one asked must be allowed or the direct target of an allowed name",
        })),
        DnsEvent::AnswerDropped {
            name,
            addrs,
            omitted,
            why,
            audit,
        } => dns_record("answer", name.clone(), verdict(*audit), "dns.answer-internal")
            .with_detail(json!({
                "address": addrs.first().map(ToString::to_string),
                "addresses": addrs.iter().map(ToString::to_string).collect::<Vec<_>>(),
                "omitted": omitted,
                "why": format!("{why}; [network.dns] answers_allowed can list the range (DNS rebinding)"),
            })),
        DnsEvent::AddressesCapped {
            name,
            kept,
            dropped,
            audit,
        } => dns_record("answer", name.clone(), verdict(*audit), "dns.max-addresses")
            .with_detail(json!({
                "kept": kept,
                "dropped": dropped,
                "why": "the answer had more addresses than [network.dns] max_addresses",
            })),
        DnsEvent::UpstreamFailed { name, qtype, tries } => dns_record(
            "query",
            name.clone(),
            Verdict::Denied,
            "dns.upstream-failed",
        )
        .with_detail(json!({
            "qtype": qtype,
            "tries": tries,
            "why": "no upstream resolver answered: SERVFAIL to the agent, nothing was asked anywhere else",
        })),
        DnsEvent::MapWriteFailed { name, addr, error } => dns_record(
            "answer",
            name.clone(),
            Verdict::Denied,
            "dns.map-write-failed",
        )
        .with_detail(json!({
            "address": addr.to_string(),
            "error": error,
            "why": "the answer's address could not be allowed in the kernel: SERVFAIL to the agent",
        })),
        DnsEvent::MapClearFailed { addr, error } => dns_record(
            "expire",
            addr.to_string(),
            Verdict::Denied,
            "dns.map-clear-failed",
        )
        .with_detail(json!({
            "error": error,
            "why": "an expired answer's address could not be taken out of the kernel map yet; retried every second",
        })),
        DnsEvent::Overloaded { dropped, tcp } => dns_record(
            "query",
            "<overload>",
            Verdict::Denied,
            "dns.overloaded",
        )
        .with_detail(json!({
            "dropped": dropped,
            "transport": transport(*tcp),
            "why": "more queries in flight (or TCP connections open) than one agent's resolver serves",
        })),
        DnsEvent::Suppressed { kind, count } => dns_record(
            "query",
            format!("<{kind}>"),
            Verdict::Denied,
            "dns.suppressed",
        )
        .with_detail(json!({
            "count": count,
            "why": "events of this kind beyond the budget in this window were counted, not journaled one by one",
        })),
    };
    Some(rec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_of_names_folds_under_one_target() {
        let r = record_of(&DnsEvent::Refused {
            name: "abc.evil.example".into(),
            qtype: "A".into(),
            tcp: false,
            over_budget: true,
        })
        .unwrap();
        assert_eq!(r.target.as_str(), Some(FOLDED_NAMES));
        assert_eq!(r.rule, "dns.name-not-allowed");
        assert_eq!(r.detail.unwrap()["name"], "abc.evil.example");
    }

    #[test]
    fn refusals_are_dns_records_of_layer_dns() {
        let r = record_of(&DnsEvent::Refused {
            name: "a.example".into(),
            qtype: "AAAA".into(),
            tcp: true,
            over_budget: false,
        })
        .unwrap();
        assert_eq!((r.kind, r.verdict), (Kind::Dns, Verdict::Denied));
        assert_eq!(r.layer, "dns");
        assert_eq!(r.target.as_str(), Some("a.example"));
        assert!(
            record_of(&DnsEvent::Allowed {
                name: "a".into(),
                qtype: "A".into(),
                addrs: vec![],
                chain: vec![],
                ttl: std::time::Duration::from_secs(1),
                rules: vec![0],
            })
            .is_none()
        );
        let a = record_of(&DnsEvent::AnswerDropped {
            name: "meta.example".into(),
            addrs: vec!["169.254.169.254".parse().unwrap()],
            omitted: 0,
            why: "link-local".into(),
            audit: true,
        })
        .unwrap();
        assert_eq!(a.verdict, Verdict::Audit);
        assert_eq!(a.detail.unwrap()["address"], "169.254.169.254");
    }
}
