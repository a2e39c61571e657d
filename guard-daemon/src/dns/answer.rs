//! The checks on an upstream answer for an allowed (or audited) name: the
//! CNAME chain, rebinding, the address cap, and the lifetime of what is
//! granted. Pure: the caller writes the grants and sends the records.

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
    time::Duration,
};

use hickory_proto::rr::{DNSClass, RData, Record, RecordType};

use super::{DnsEvent, MAX_CHAIN, query::rules_of};
use crate::policy::host::{DnsPlan, normalize_name};

/// Dropped addresses named in one [`DnsEvent::AnswerDropped`].
const DROPPED_SHOWN: usize = 16;

/// What to send and what to grant for one answer.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Screened {
    /// Answer records for the agent, TTLs cut to `lifetime`.
    pub answers: Vec<Record>,
    /// Authority records for the agent: SOA (negative caching needs it)
    /// and the DNSSEC proofs of a negative answer (NSEC, NSEC3, RRSIG,
    /// sent by the upstream only when the agent set DO). Referrals are no
    /// business of a stub, and the additional section is dropped whole:
    /// its addresses were never checked.
    pub authorities: Vec<Record>,
    /// The CNAME chain from the asked name (first) to the last name
    /// followed.
    pub chain: Vec<String>,
    /// Addresses to write to the map before the answer goes out, each
    /// with the rules that allow it (sorted). Empty for a name no rule
    /// allows.
    pub grants: Vec<(IpAddr, Vec<u16>)>,
    /// Addresses the agent receives, with the chain name owning them.
    pub sent: Vec<(IpAddr, String)>,
    /// How long the grants last; no TTL the agent sees is longer.
    pub lifetime: Duration,
    /// Enforce mode: the chain leaves the allowed names; answer REFUSED
    /// and grant nothing.
    pub refused: bool,
    pub events: Vec<DnsEvent>,
}

/// Screens the answer and authority records of an upstream answer to
/// `asked` (normalized). `asked_rules` are the rules matching it, empty
/// when no rule does (then only audit mode forwards it, and nothing is
/// granted).
pub(crate) fn screen(
    plan: &DnsPlan,
    audit: bool,
    asked: &str,
    asked_rules: &[u16],
    answers: Vec<Record>,
    authorities: Vec<Record>,
) -> Screened {
    let mut events = Vec::new();
    // Records of another class than IN own nothing: their data is not
    // what the agent asked for.
    let owners: Vec<Option<String>> = answers
        .iter()
        .map(|r| {
            (r.dns_class == DNSClass::IN)
                .then(|| normalize_name(&r.name.to_ascii()))
                .flatten()
        })
        .collect();

    // The chain, and for each name the rules its addresses are granted
    // to: its own and those of every name before it (the agent asked for
    // the first; each later name is where that one led). `broken`: the
    // first name neither matched by a rule nor the direct target of a
    // name that is.
    let mut chain = vec![asked.to_owned()];
    let mut own = vec![asked_rules.to_vec()];
    let mut granted = vec![asked_rules.to_vec()];
    let mut broken: Option<usize> = None;
    while chain.len() <= MAX_CHAIN {
        let cur = chain.len() - 1;
        let next = answers
            .iter()
            .zip(&owners)
            .find_map(|(r, o)| match &r.data {
                RData::CNAME(t) if o.as_deref() == Some(chain[cur].as_str()) => {
                    Some(t.0.to_ascii())
                }
                _ => None,
            });
        let Some(raw) = next else { break };
        let target = normalize_name(&raw);
        if target.as_ref().is_some_and(|t| chain.contains(t)) {
            // A loop: it leads nowhere new, and its last link is dropped.
            break;
        }
        let rules = target
            .as_deref()
            .map(|t| rules_of(plan, t))
            .unwrap_or_default();
        if broken.is_none() && rules.is_empty() && own[cur].is_empty() {
            broken = Some(chain.len());
        }
        let mut g = granted[cur].clone();
        g.extend(&rules);
        g.sort_unstable();
        g.dedup();
        // A target no name form fits is kept by its escaped text only for
        // the report; no record can be owned by it.
        chain.push(target.unwrap_or(raw));
        own.push(rules);
        granted.push(g);
    }
    // A name no rule allows (audit mode forwards it) is not judged: enforce
    // mode would have refused it whole, so it has no chain to break, no
    // addresses to drop and nothing to grant.
    let judged = !asked_rules.is_empty();
    let broken = broken.filter(|_| judged);
    if broken.is_some() {
        events.push(DnsEvent::ChainRefused {
            name: asked.to_owned(),
            chain: chain.clone(),
            audit,
        });
        if !audit {
            return Screened {
                answers: Vec::new(),
                authorities: Vec::new(),
                chain,
                grants: Vec::new(),
                sent: Vec::new(),
                lifetime: plan.ttl_floor,
                refused: true,
                events,
            };
        }
    }
    let grantable = |i: usize| judged && broken.is_none_or(|b| i < b);

    // Records owned by the chain's names; of CNAMEs only the links.
    let mut kept: Vec<(Record, usize)> = Vec::new();
    for (r, o) in answers.into_iter().zip(owners) {
        let Some(i) = o.and_then(|o| chain.iter().position(|c| *c == o)) else {
            continue;
        };
        if let RData::CNAME(t) = &r.data {
            let next = chain.get(i + 1);
            if normalize_name(&t.0.to_ascii()).as_ref() != next {
                continue;
            }
        }
        kept.push((r, i));
    }

    // Rebinding, then the cap, over the addresses in answer order. An
    // answer holds thousands of records at most; the sets keep this linear.
    let mut dropped_internal: Vec<IpAddr> = Vec::new();
    let mut seen_internal: HashSet<IpAddr> = HashSet::new();
    let mut distinct: HashSet<IpAddr> = HashSet::new();
    let mut over_cap: HashSet<IpAddr> = HashSet::new();
    let mut grants: Vec<(IpAddr, Vec<u16>)> = Vec::new();
    let mut grant_at: HashMap<IpAddr, usize> = HashMap::new();
    let mut out: Vec<(Record, usize)> = Vec::with_capacity(kept.len());
    for (r, i) in kept {
        let Some(ip) = address_of(&r) else {
            out.push((r, i));
            continue;
        };
        if !plan.answer_allowed(ip) {
            if seen_internal.insert(ip) {
                dropped_internal.push(ip);
            }
            if audit {
                out.push((r, i));
            }
            continue;
        }
        if !distinct.contains(&ip) {
            if distinct.len() >= plan.max_addresses {
                over_cap.insert(ip);
                if audit {
                    out.push((r, i));
                }
                continue;
            }
            distinct.insert(ip);
        }
        if grantable(i) {
            match grant_at.get(&ip) {
                Some(&at) => {
                    let rules = &mut grants[at].1;
                    rules.extend(&granted[i]);
                    rules.sort_unstable();
                    rules.dedup();
                }
                None => {
                    grant_at.insert(ip, grants.len());
                    grants.push((ip, granted[i].clone()));
                }
            }
        }
        out.push((r, i));
    }
    if judged && !dropped_internal.is_empty() {
        let omitted = dropped_internal.len().saturating_sub(DROPPED_SHOWN);
        dropped_internal.truncate(DROPPED_SHOWN);
        events.push(DnsEvent::AnswerDropped {
            name: asked.to_owned(),
            addrs: dropped_internal,
            omitted,
            why: "internal address (loopback, link-local, private, ...) outside \
                  answers_allowed: DNS rebinding"
                .to_owned(),
            audit,
        });
    }
    if judged && !over_cap.is_empty() {
        events.push(DnsEvent::AddressesCapped {
            name: asked.to_owned(),
            kept: distinct.len(),
            dropped: over_cap.len(),
            audit,
        });
    }

    let authorities: Vec<Record> = authorities
        .into_iter()
        .filter(|r| {
            matches!(
                r.record_type(),
                RecordType::SOA | RecordType::NSEC | RecordType::NSEC3 | RecordType::RRSIG
            )
        })
        .collect();
    let min_ttl = out
        .iter()
        .map(|(r, _)| r.ttl)
        .min()
        .or_else(|| authorities.iter().map(|r| r.ttl).min())
        .unwrap_or(0);
    let lifetime = lifetime(plan, min_ttl);
    let cap = u32::try_from(lifetime.as_secs()).unwrap_or(u32::MAX);
    let mut sent = Vec::new();
    let answers: Vec<Record> = out
        .into_iter()
        .map(|(mut r, i)| {
            r.ttl = r.ttl.min(cap);
            if let Some(ip) = address_of(&r) {
                sent.push((ip, chain[i].clone()));
            }
            r
        })
        .collect();
    let authorities = authorities
        .into_iter()
        .map(|mut r| {
            r.ttl = r.ttl.min(cap);
            r
        })
        .collect();
    Screened {
        answers,
        authorities,
        chain,
        grants,
        sent,
        lifetime,
        refused: false,
        events,
    }
}

/// Shortest lifetime of a grant.
const MIN_LIFETIME: Duration = Duration::from_secs(1);

/// The lifetime of an answer's grants: its shortest TTL, held within the
/// plan's floor and ceiling.
pub(crate) fn lifetime(plan: &DnsPlan, min_ttl: u32) -> Duration {
    // At least a second: a grant that expires as it is written would fail
    // the lookup it was written for (`ttl_floor = 0` and a TTL of 0).
    let floor = plan.ttl_floor.max(MIN_LIFETIME);
    let ceiling = plan.ttl_ceiling.max(floor);
    Duration::from_secs(u64::from(min_ttl)).clamp(floor, ceiling)
}

fn address_of(r: &Record) -> Option<IpAddr> {
    match &r.data {
        RData::A(a) => Some(IpAddr::V4(a.0)),
        // A v4-mapped AAAA is the IPv4 address to the kernel (one NET4
        // key): keep one grant for both forms.
        RData::AAAA(a) => Some(IpAddr::V6(a.0).to_canonical()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use hickory_proto::rr::{
        Name,
        rdata::{A, AAAA, CNAME, SOA, TXT},
    };

    use super::*;
    use crate::dns::query::tests::plan;
    use crate::policy::host::AddrRange;

    fn n(s: &str) -> Name {
        Name::from_ascii(s).unwrap()
    }
    fn a(owner: &str, ttl: u32, ip: [u8; 4]) -> Record {
        Record::from_rdata(n(owner), ttl, RData::A(A(Ipv4Addr::from(ip))))
    }
    fn aaaa(owner: &str, ttl: u32, ip: &str) -> Record {
        Record::from_rdata(
            n(owner),
            ttl,
            RData::AAAA(AAAA(ip.parse::<Ipv6Addr>().unwrap())),
        )
    }
    fn cname(owner: &str, ttl: u32, target: &str) -> Record {
        Record::from_rdata(n(owner), ttl, RData::CNAME(CNAME(n(target))))
    }
    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_direct_answer_is_granted_to_the_names_rules() {
        let p = plan(&[("api.example.com", 2)]);
        let s = screen(
            &p,
            false,
            "api.example.com",
            &[2],
            vec![a("api.example.com.", 300, [93, 184, 216, 34])],
            vec![],
        );
        assert!(!s.refused);
        assert_eq!(s.grants, vec![(ip("93.184.216.34"), vec![2])]);
        assert_eq!(s.chain, vec!["api.example.com"]);
        assert_eq!(s.lifetime, Duration::from_secs(300));
        assert_eq!(s.answers.len(), 1);
        assert!(s.events.is_empty());
    }

    #[test]
    fn the_chain_rule() {
        let p = plan(&[("a.example.com", 1), ("c.cdn.net", 7)]);
        // a (allowed) -> b -> addresses: b is a's direct target.
        let s = screen(
            &p,
            false,
            "a.example.com",
            &[1],
            vec![
                cname("a.example.com.", 60, "b.other.net."),
                a("b.other.net.", 60, [1, 1, 1, 1]),
            ],
            vec![],
        );
        assert!(!s.refused);
        assert_eq!(s.chain, vec!["a.example.com", "b.other.net"]);
        assert_eq!(s.grants, vec![(ip("1.1.1.1"), vec![1])]);
        assert_eq!(s.sent, vec![(ip("1.1.1.1"), "b.other.net".to_owned())]);

        // a -> b -> c, neither b nor c allowed: refused.
        let s = screen(
            &p,
            false,
            "a.example.com",
            &[1],
            vec![
                cname("a.example.com.", 60, "b.other.net."),
                cname("b.other.net.", 60, "c.other.net."),
                a("c.other.net.", 60, [1, 1, 1, 1]),
            ],
            vec![],
        );
        assert!(s.refused);
        assert!(s.grants.is_empty() && s.answers.is_empty());
        assert_eq!(
            s.events,
            vec![DnsEvent::ChainRefused {
                name: "a.example.com".into(),
                chain: vec![
                    "a.example.com".into(),
                    "b.other.net".into(),
                    "c.other.net".into()
                ],
                audit: false,
            }]
        );

        // a -> b -> c.cdn.net (allowed by its own rule): granted to both.
        let s = screen(
            &p,
            false,
            "a.example.com",
            &[1],
            vec![
                cname("a.example.com.", 60, "b.other.net."),
                cname("b.other.net.", 60, "C.CDN.net."),
                a("c.cdn.net.", 60, [1, 1, 1, 1]),
            ],
            vec![],
        );
        assert!(!s.refused);
        assert_eq!(s.grants, vec![(ip("1.1.1.1"), vec![1, 7])]);
        assert_eq!(s.answers.len(), 3);

        // Audit mode lets the broken chain through but grants only the
        // allowed part.
        let s = screen(
            &p,
            true,
            "a.example.com",
            &[1],
            vec![
                cname("a.example.com.", 60, "b.other.net."),
                a("b.other.net.", 60, [2, 2, 2, 2]),
                cname("b.other.net.", 60, "c.other.net."),
                a("c.other.net.", 60, [1, 1, 1, 1]),
            ],
            vec![],
        );
        assert!(!s.refused);
        assert_eq!(s.answers.len(), 4);
        assert_eq!(s.grants, vec![(ip("2.2.2.2"), vec![1])]);
        assert!(matches!(
            s.events[0],
            DnsEvent::ChainRefused { audit: true, .. }
        ));
    }

    #[test]
    fn records_outside_the_chain_are_dropped() {
        let p = plan(&[("a.example.com", 1)]);
        let s = screen(
            &p,
            false,
            "a.example.com",
            &[1],
            vec![
                a("a.example.com.", 60, [1, 1, 1, 1]),
                a("evil.example.net.", 60, [6, 6, 6, 6]),
                // Another class.
                {
                    let mut r = a("a.example.com.", 60, [9, 9, 9, 9]);
                    r.dns_class = hickory_proto::rr::DNSClass::CH;
                    r
                },
                // A second CNAME from the asked name that the chain does
                // not follow.
                cname("a.example.com.", 60, "b.example.net."),
                cname("a.example.com.", 60, "x.example.net."),
                a("x.example.net.", 60, [7, 7, 7, 7]),
                Record::from_rdata(
                    n("a.example.com."),
                    60,
                    RData::TXT(TXT::new(vec!["v".into()])),
                ),
            ],
            vec![
                Record::from_rdata(
                    n("example.com."),
                    900,
                    RData::SOA(SOA::new(
                        n("ns.example.com."),
                        n("h.example.com."),
                        1,
                        2,
                        3,
                        4,
                        5,
                    )),
                ),
                Record::from_rdata(
                    n("example.com."),
                    900,
                    RData::CNAME(CNAME(n("ns.example.com."))),
                ),
            ],
        );
        assert_eq!(s.chain, vec!["a.example.com", "b.example.net"]);
        let kept: Vec<String> = s.answers.iter().map(|r| r.to_string()).collect();
        assert_eq!(s.answers.len(), 3, "{kept:?}");
        assert_eq!(s.grants, vec![(ip("1.1.1.1"), vec![1])]);
        assert_eq!(s.authorities.len(), 1);
        assert_eq!(s.authorities[0].ttl, 60);
    }

    #[test]
    fn a_cname_loop_ends_the_chain() {
        let p = plan(&[("**.example.com", 1)]);
        let s = screen(
            &p,
            false,
            "a.example.com",
            &[1],
            vec![
                cname("a.example.com.", 60, "b.example.com."),
                cname("b.example.com.", 60, "a.example.com."),
            ],
            vec![],
        );
        assert!(!s.refused);
        assert_eq!(s.chain, vec!["a.example.com", "b.example.com"]);
        assert_eq!(s.answers.len(), 1);
    }

    #[test]
    fn long_chains_stop_at_the_limit() {
        let p = plan(&[("**.example.com", 1)]);
        let answers = (0..40)
            .map(|i| {
                cname(
                    &format!("n{i}.example.com."),
                    60,
                    &format!("n{}.example.com.", i + 1),
                )
            })
            .collect();
        let s = screen(&p, false, "n0.example.com", &[1], answers, vec![]);
        assert_eq!(s.chain.len(), MAX_CHAIN + 1);
        assert_eq!(s.answers.len(), MAX_CHAIN);
    }

    #[test]
    fn rebinding_answers_are_dropped() {
        let mut p = plan(&[("a.example.com", 1)]);
        let answers = || {
            vec![
                a("a.example.com.", 60, [127, 0, 0, 1]),
                a("a.example.com.", 60, [169, 254, 169, 254]),
                a("a.example.com.", 60, [10, 0, 0, 1]),
                aaaa("a.example.com.", 60, "::ffff:192.168.0.1"),
                a("a.example.com.", 60, [8, 8, 8, 8]),
            ]
        };
        let s = screen(&p, false, "a.example.com", &[1], answers(), vec![]);
        assert_eq!(s.grants, vec![(ip("8.8.8.8"), vec![1])]);
        assert_eq!(s.answers.len(), 1);
        let DnsEvent::AnswerDropped {
            addrs,
            omitted,
            audit,
            ..
        } = &s.events[0]
        else {
            panic!("{:?}", s.events);
        };
        assert_eq!(addrs.len(), 4);
        assert_eq!(*omitted, 0);
        assert!(!audit);

        // Audit: reported, sent, not granted.
        let s = screen(&p, true, "a.example.com", &[1], answers(), vec![]);
        assert_eq!(s.grants, vec![(ip("8.8.8.8"), vec![1])]);
        assert_eq!(s.answers.len(), 5);
        assert!(matches!(
            s.events[0],
            DnsEvent::AnswerDropped { audit: true, .. }
        ));

        // answers_allowed opens its range only.
        p.answers_allowed = vec![AddrRange {
            v6: false,
            addr: u128::from(u32::from_be_bytes([10, 0, 0, 0])),
            len: 8,
        }];
        let s = screen(&p, false, "a.example.com", &[1], answers(), vec![]);
        assert_eq!(
            s.grants,
            vec![(ip("10.0.0.1"), vec![1]), (ip("8.8.8.8"), vec![1])]
        );
    }

    #[test]
    fn the_address_cap() {
        let p = plan(&[("a.example.com", 1)]); // max_addresses: 4
        let answers: Vec<Record> = (1..=6)
            .map(|i| a("a.example.com.", 60, [1, 1, 1, i]))
            .chain([a("a.example.com.", 60, [1, 1, 1, 2])]) // a repeat of a kept one
            .chain([a("a.example.com.", 60, [1, 1, 1, 6])]) // of a dropped one
            .collect();
        let s = screen(&p, false, "a.example.com", &[1], answers.clone(), vec![]);
        assert_eq!(s.grants.len(), 4);
        assert_eq!(s.answers.len(), 5);
        assert_eq!(
            s.events,
            vec![DnsEvent::AddressesCapped {
                name: "a.example.com".into(),
                kept: 4,
                dropped: 2,
                audit: false
            }]
        );
        let s = screen(&p, true, "a.example.com", &[1], answers, vec![]);
        assert_eq!(s.grants.len(), 4);
        assert_eq!(s.answers.len(), 8);
    }

    #[test]
    fn ttl_is_clamped_and_cut() {
        let mut p = plan(&[("a.example.com", 1)]);
        p.ttl_floor = Duration::from_secs(30);
        p.ttl_ceiling = Duration::from_secs(600);
        assert_eq!(lifetime(&p, 0), Duration::from_secs(30));
        assert_eq!(lifetime(&p, 45), Duration::from_secs(45));
        assert_eq!(lifetime(&p, u32::MAX), Duration::from_secs(600));
        let s = screen(
            &p,
            false,
            "a.example.com",
            &[1],
            vec![
                cname("a.example.com.", 86400, "b.example.net."),
                a("b.example.net.", 5, [1, 1, 1, 1]),
            ],
            vec![],
        );
        assert_eq!(s.lifetime, Duration::from_secs(30));
        // Every TTL is at most the lifetime; shorter ones stay.
        assert_eq!(
            s.answers.iter().map(|r| r.ttl).collect::<Vec<_>>(),
            vec![30, 5]
        );
        let s = screen(
            &p,
            false,
            "a.example.com",
            &[1],
            vec![a("a.example.com.", 86400, [1, 1, 1, 1])],
            vec![],
        );
        assert_eq!(s.lifetime, Duration::from_secs(600));
        assert_eq!(s.answers[0].ttl, 600);
    }

    #[test]
    fn an_audited_name_grants_nothing() {
        let p = plan(&[("a.example.com", 1)]);
        let s = screen(
            &p,
            true,
            "other.example.net",
            &[],
            vec![
                cname("other.example.net.", 60, "x.example.org."),
                cname("x.example.org.", 60, "a.example.com."),
                a("a.example.com.", 60, [1, 2, 3, 4]),
                a("a.example.com.", 60, [127, 0, 0, 1]),
            ],
            vec![],
        );
        assert!(!s.refused);
        // Not even for the allowed name it led to: enforce mode would not
        // have asked.
        assert!(s.grants.is_empty());
        assert!(s.events.is_empty());
        assert_eq!(
            s.sent,
            vec![
                (ip("1.2.3.4"), "a.example.com".to_owned()),
                (ip("127.0.0.1"), "a.example.com".to_owned())
            ]
        );
    }
}
