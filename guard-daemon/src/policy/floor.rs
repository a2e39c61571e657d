//! The node's floor policy (issue 13): whether a policy a workload brings
//! only narrows the one the node sets.
//!
//! [`check_within`] compares two plans compiled with the same
//! [`Vars`](super::Vars) (so that their paths are comparable) and lists
//! every way the workload's plan, the client, grants more than the node's,
//! the floor. "More" is judged on what the kernel and the launcher act on,
//! not on the rules as written:
//!
//! - Addresses (egress and `listen`) on the compiled LPM entries, which
//!   already hold the folded port ranges of enclosing rules, the
//!   DNS-over-TLS cut and the DNS-over-HTTPS entries. The address space is
//!   cut into cells on which both plans' longest-prefix lookups give one
//!   value each, and every port range the client's value holds there must
//!   be held by the floor's. So a client range may be covered by several
//!   floor rules together. IPv4-mapped IPv6 addresses are looked up as
//!   IPv4 (as the kernel does), so `::ffff:0:0/96` is no part of the IPv6
//!   comparison.
//! - Host rules by name pattern: a client pattern is covered by a floor
//!   pattern that matches every name it matches, and its ports by the union
//!   of those floor rules. An address rule never covers a host rule, however
//!   wide: a host rule also has guardd resolve the names for the agent
//!   (its queries leave through guardd's upstreams), which no address rule
//!   grants, and an answer may hold any address, the floor's closed
//!   DNS-over-HTTPS resolvers among them.
//! - While the floor sends the agent's DNS through guardd and the client
//!   does not, port 53 counts as closed in the floor's entries: under the
//!   floor that traffic goes to guardd's resolver, under the client to the
//!   address.
//! - Files by what Landlock binds: paths as they resolve on this host now,
//!   a grant on a directory covering what lies below it, a grant on a file
//!   with several hard links covering every link (so such a file is within
//!   only where the floor grants that very file or `/`). `/proc/self` paths
//!   are compared as written (the agent has its own `/proc`), and one that
//!   passes through a link out of it (`cwd`, `root`, `exe`, `fd`,
//!   `map_files`, `ns`) is within only where the floor names it exactly.
//!
//! Whatever cannot be ordered (a different user) counts as wider, and the
//! line says so.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use std::rc::Rc;

use guard_common::{MAX_PORT_RANGES, NetValue, PROTO_TCP, PROTO_UDP, PortRange, RULE_DOH};

use super::host::{self, AddrRange, DnsPlan, HostPattern, HostRule};
use super::net::ports_text;
use super::{
    Access, FsPlan, FsRule, Mode, NetPlan, Plan, ProcPlan, RuleInfo, UserSpec, net, resolve,
};

/// Every way a client plan is wider than the floor, one line each, naming
/// the client's rule and why no floor rule covers it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "policy {client:?} is wider than the node's floor policy {floor:?}:\n  {}",
    .widenings.join("\n  ")
)]
pub struct FloorError {
    /// The floor plan's name.
    pub floor: String,
    /// The client plan's name.
    pub client: String,
    /// Never empty: an empty list is `Ok`.
    pub widenings: Vec<String>,
}

/// Whether every permission `client` grants is granted by `floor`; if not,
/// every way it is wider. Both plans must be compiled with the same
/// [`Vars`](super::Vars). Reads the file system (paths are resolved, hard links
/// counted) but nothing else.
pub fn check_within(floor: &Plan, client: &Plan) -> Result<(), FloorError> {
    // No `..`: a field added to a plan must be judged here before this
    // compiles again.
    let Plan {
        name: floor_name,
        mode: floor_mode,
        network: floor_net,
        filesystem: floor_fs,
        process: floor_proc,
        rules: floor_rules,
    } = floor;
    let Plan {
        name: client_name,
        mode: client_mode,
        network: client_net,
        filesystem: client_fs,
        process: client_proc,
        // Names only; what they name is judged through the entries.
        rules: client_rules,
    } = client;
    let mut out = Vec::new();
    if *floor_mode == Mode::Enforce && *client_mode == Mode::Audit {
        out.push(
            "policy.mode audit: wider than the floor: the floor enforces, and audit mode \
             relaxes the network rules to records"
                .to_owned(),
        );
    }
    let rules = Rules {
        floor: floor_rules,
        client: client_rules,
    };
    network(&rules, floor_net, client_net, &mut out);
    files(floor_fs, client_fs, &mut out);
    process(floor_proc, client_proc, &mut out);
    if out.is_empty() {
        Ok(())
    } else {
        Err(FloorError {
            floor: floor_name.clone(),
            client: client_name.clone(),
            widenings: out,
        })
    }
}

/// Both plans' rule descriptions, to name rules by the indices the
/// compiled entries carry.
#[derive(Clone, Copy)]
struct Rules<'a> {
    floor: &'a [RuleInfo],
    client: &'a [RuleInfo],
}

fn rule_ref(rules: &[RuleInfo], i: usize) -> String {
    match rules.get(i) {
        Some(RuleInfo { id, text }) => format!("{id} {text}"),
        None => format!("network rule {i}"),
    }
}

/// How many places or rules one line shows before it only counts the rest.
const SHOWN: usize = 6;

/// `items` joined by `sep`, the first [`SHOWN`] of them, and how many more.
fn shown(items: &[String], sep: &str) -> String {
    let mut s = items
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join(sep);
    if items.len() > SHOWN {
        s.push_str(&format!(" (and {} more)", items.len() - SHOWN));
    }
    s
}

// ---- network ---------------------------------------------------------------

const BOTH: u8 = PROTO_TCP | PROTO_UDP;
const DNS_PORT: u16 = 53;

fn network(rules: &Rules, floor: &NetPlan, client: &NetPlan, out: &mut Vec<String>) {
    let NetPlan {
        v4: floor_v4,
        v6: floor_v6,
        unix: floor_unix,
        listen4: floor_listen4,
        listen6: floor_listen6,
        dns: floor_dns,
    } = floor;
    let NetPlan {
        v4: client_v4,
        v6: client_v6,
        unix: client_unix,
        listen4: client_listen4,
        listen6: client_listen6,
        dns: client_dns,
    } = client;
    let egress = Entries::new(
        Side::Egress,
        *rules,
        floor_dns.is_some(),
        client_dns.is_some(),
    );
    let mut lines = egress.compare([
        (Family::V4, v4_entries(floor_v4), v4_entries(client_v4)),
        (Family::V6, v6_entries(floor_v6), v6_entries(client_v6)),
    ]);
    hosts(rules, floor_dns.as_ref(), client_dns.as_ref(), &mut lines);
    // The hooks compare the address as given: a socket is within only
    // where the floor names the same one.
    let named: HashSet<&[u8]> = floor_unix.iter().map(|(k, _)| &k[..]).collect();
    let theirs: Vec<String> = floor_unix
        .iter()
        .map(|(_, r)| rule_ref(rules.floor, *r as usize))
        .collect();
    let why = if theirs.is_empty() {
        "the floor allows no Unix socket".to_owned()
    } else {
        format!("the floor allows only {}", shown(&theirs, ", "))
    };
    for (key, rule) in client_unix {
        if !named.contains(&key[..]) {
            lines.push((
                *rule as usize,
                format!(
                    "{}: wider than the floor: no floor rule names this socket ({why})",
                    rule_ref(rules.client, *rule as usize)
                ),
            ));
        }
    }
    lines.sort_by_key(|(rule, _)| *rule);
    out.extend(lines.into_iter().map(|(_, line)| line));
    if let (Some(f), Some(c)) = (floor_dns, client_dns) {
        dns_settings(f, c, out);
    }
    let listen = Entries::new(Side::Listen, *rules, false, false);
    let lines = listen.compare([
        (
            Family::V4,
            v4_entries(floor_listen4),
            v4_entries(client_listen4),
        ),
        (
            Family::V6,
            v6_entries(floor_listen6),
            v6_entries(client_listen6),
        ),
    ]);
    out.extend(lines.into_iter().map(|(_, line)| line));
}

/// An address prefix of one family: the network address right-aligned
/// (IPv4 in the low 32 bits), and its length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct Prefix {
    addr: u128,
    len: u32,
}

/// `::ffff:0:0/96`: the kernel looks these addresses up as IPv4.
const MAPPED: Prefix = Prefix {
    addr: 0xffff << 32,
    len: 96,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Family {
    v6: bool,
}

impl Family {
    const V4: Family = Family { v6: false };
    const V6: Family = Family { v6: true };

    fn bits(self) -> u32 {
        if self.v6 { 128 } else { 32 }
    }

    /// The last address of `p`.
    fn end(self, p: Prefix) -> u128 {
        let all = u128::MAX >> (128 - self.bits());
        p.addr | all.checked_shr(p.len).unwrap_or(0)
    }

    /// The prefix of length `len` (at most `p.len`) containing `p`.
    fn ancestor(self, p: Prefix, len: u32) -> Prefix {
        let all = u128::MAX >> (128 - self.bits());
        Prefix {
            addr: p.addr & !all.checked_shr(len).unwrap_or(0),
            len,
        }
    }

    fn contains(self, outer: Prefix, inner: Prefix) -> bool {
        net::contains(outer.addr, outer.len, inner.addr, inner.len, self.bits())
    }

    fn text(self, p: Prefix) -> String {
        net::prefix_text(self.v6, p.addr, p.len)
    }

    fn of(self, ip: IpAddr) -> Option<u128> {
        match ip {
            IpAddr::V4(a) if !self.v6 => Some(u128::from(u32::from(a))),
            IpAddr::V6(a) if self.v6 => Some(u128::from(a)),
            _ => None,
        }
    }
}

fn v4_entries(e: &[(u32, [u8; 4], NetValue)]) -> Vec<(Prefix, &NetValue)> {
    e.iter()
        .map(|(len, addr, v)| {
            let addr = u128::from(u32::from_be_bytes(*addr));
            (Prefix { addr, len: *len }, v)
        })
        .collect()
}

fn v6_entries(e: &[(u32, [u8; 16], NetValue)]) -> Vec<(Prefix, &NetValue)> {
    e.iter()
        .map(|(len, addr, v)| {
            let addr = u128::from_be_bytes(*addr);
            (Prefix { addr, len: *len }, v)
        })
        .collect()
}

/// Cuts the address space of `fam` into cells on which both sides'
/// longest-prefix lookups are constant, and calls `visit` for every
/// non-empty one with the cell's prefix, the longer prefixes cut out of it
/// (sorted) and each side's value there.
///
/// Every prefix of either side is a node; a node's cell is its prefix
/// without its child nodes. For an address in the cell, any prefix of
/// either side containing it is the node or an ancestor (a longer one
/// would be a node inside the prefix, and the address would not be in the
/// cell), so the lookup gives the nearest value on the path to the root.
/// A cell the children cover whole holds no address and is skipped.
fn cells<A: Copy, B: Copy>(
    fam: Family,
    floor: impl IntoIterator<Item = (Prefix, A)>,
    client: impl IntoIterator<Item = (Prefix, B)>,
    mut visit: impl FnMut(Prefix, &[Prefix], Option<A>, Option<B>),
) {
    struct Node<A, B> {
        floor: Option<A>,
        client: Option<B>,
        mapped: bool,
    }
    struct Frame<A, B> {
        prefix: Prefix,
        floor: Option<A>,
        client: Option<B>,
        mapped: bool,
        children: Vec<Prefix>,
    }
    let mut nodes: BTreeMap<Prefix, Node<A, B>> = BTreeMap::new();
    let empty = || Node {
        floor: None,
        client: None,
        mapped: false,
    };
    for (p, a) in floor {
        nodes.entry(p).or_insert_with(empty).floor.get_or_insert(a);
    }
    for (p, b) in client {
        nodes.entry(p).or_insert_with(empty).client.get_or_insert(b);
    }
    if fam.v6 {
        nodes.entry(MAPPED).or_insert_with(empty).mapped = true;
    }
    let mut stack: Vec<Frame<A, B>> = Vec::new();
    let mut pop = |stack: &mut Vec<Frame<A, B>>| {
        let Some(f) = stack.pop() else {
            return;
        };
        if let Some(parent) = stack.last_mut() {
            parent.children.push(f.prefix);
        }
        if !f.mapped && has_gap(fam, f.prefix, &f.children) {
            visit(f.prefix, &f.children, f.floor, f.client);
        }
    };
    // Sorted by (address, length): a prefix comes after every prefix
    // containing it, and before the prefixes after it that it contains.
    for (prefix, node) in nodes {
        while stack
            .last()
            .is_some_and(|t| !fam.contains(t.prefix, prefix))
        {
            pop(&mut stack);
        }
        let (floor, client) = stack.last().map_or((None, None), |t| (t.floor, t.client));
        stack.push(Frame {
            prefix,
            floor: node.floor.or(floor),
            client: node.client.or(client),
            mapped: node.mapped,
            children: Vec::new(),
        });
    }
    while !stack.is_empty() {
        pop(&mut stack);
    }
}

/// Whether `children` (disjoint prefixes inside `p`, sorted) leave some
/// address of `p` uncovered.
fn has_gap(fam: Family, p: Prefix, children: &[Prefix]) -> bool {
    let mut next = Some(p.addr);
    for c in children {
        let Some(at) = next else {
            return false;
        };
        if c.addr > at {
            return true;
        }
        next = fam.end(*c).checked_add(1);
    }
    next.is_some_and(|at| at <= fam.end(p))
}

/// A cell as a line shows it: `10.0.0.0/8`, or `10.0.0.0/8 except
/// 10.1.0.0/16` when longer prefixes are cut out of it.
fn cell_text(fam: Family, p: Prefix, children: &[Prefix]) -> String {
    let cut = children.iter().filter(|c| **c != MAPPED);
    let count = cut.clone().count();
    if count == 0 {
        return fam.text(p);
    }
    let mut text = format!(
        "{} except {}",
        fam.text(p),
        cut.take(SHOWN)
            .map(|c| fam.text(*c))
            .collect::<Vec<_>>()
            .join(", ")
    );
    if count > SHOWN {
        text.push_str(&format!(" (and {} more)", count - SHOWN));
    }
    text
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Egress,
    Listen,
}

/// Sorted, merged, inclusive port ranges.
type Ports = Vec<(u16, u16)>;

fn merged(mut v: Ports) -> Ports {
    v.sort_unstable();
    let mut out: Ports = Vec::with_capacity(v.len());
    for (lo, hi) in v {
        match out.last_mut() {
            Some(last) if u32::from(lo) <= u32::from(last.1) + 1 => last.1 = last.1.max(hi),
            _ => out.push((lo, hi)),
        }
    }
    out
}

/// `(lo, hi)` without the ports of `allowed` (merged).
fn subtract(lo: u16, hi: u16, allowed: &[(u16, u16)]) -> Ports {
    let mut out = Vec::new();
    let mut from = u32::from(lo);
    for &(a, b) in allowed {
        if u32::from(b) < from {
            continue;
        }
        if u32::from(a) > u32::from(hi) {
            break;
        }
        if u32::from(a) > from {
            out.push((from, u32::from(a) - 1));
        }
        from = u32::from(b) + 1;
    }
    if from <= u32::from(hi) {
        out.push((from, u32::from(hi)));
    }
    out.into_iter()
        .filter_map(|(a, b)| Some((u16::try_from(a).ok()?, u16::try_from(b).ok()?)))
        .collect()
}

fn subtract_all(ports: &[(u16, u16)], allowed: &[(u16, u16)]) -> Ports {
    merged(
        ports
            .iter()
            .flat_map(|&(lo, hi)| subtract(lo, hi, allowed))
            .collect(),
    )
}

fn intersect(a: &[(u16, u16)], b: &[(u16, u16)]) -> Ports {
    let mut out = Vec::new();
    for &(x, y) in a {
        for &(u, v) in b {
            let (lo, hi) = (x.max(u), y.min(v));
            if lo <= hi {
                out.push((lo, hi));
            }
        }
    }
    merged(out)
}

fn has_port(ports: &[(u16, u16)], port: u16) -> bool {
    ports.iter().any(|&(lo, hi)| lo <= port && port <= hi)
}

/// Per protocol: `[tcp, udp]`.
type ByProto = [Ports; 2];
const PROTOS: [u8; 2] = [PROTO_TCP, PROTO_UDP];

/// `tcp+udp 443`, `tcp 443, udp 53`, or `nothing`.
fn proto_ports_text(p: &ByProto) -> String {
    let [tcp, udp] = p;
    if tcp == udp && !tcp.is_empty() {
        return format!("tcp+udp {}", ports_text(tcp));
    }
    let parts: Vec<String> = [("tcp", tcp), ("udp", udp)]
        .iter()
        .filter(|(_, ports)| !ports.is_empty())
        .map(|(name, ports)| format!("{name} {}", ports_text(ports)))
        .collect();
    if parts.is_empty() {
        "nothing".to_owned()
    } else {
        parts.join(", ")
    }
}

/// The ranges in use of a map value, per protocol.
fn value_ports(v: &NetValue) -> ByProto {
    let NetValue {
        count,
        cidr_rule: _,
        ranges,
    } = v;
    let n = usize::try_from(*count)
        .unwrap_or(MAX_PORT_RANGES)
        .min(MAX_PORT_RANGES);
    let mut out: ByProto = [Vec::new(), Vec::new()];
    for r in ranges.iter().take(n) {
        // The flags mark where a range came from; a range allows its
        // ports whatever they say.
        let PortRange {
            lo,
            hi,
            protos,
            flags: _,
            rule: _,
        } = *r;
        for (slot, bit) in out.iter_mut().zip(PROTOS) {
            if protos & bit != 0 {
                slot.push((lo, hi));
            }
        }
    }
    out.map(merged)
}

/// A client address rule read back from its [`RuleInfo::text`]
/// (`10.0.0.0/8 tcp 443,8000-8100`), to tell which rule granted a port:
/// the entries keep only the lowest rule of ranges they merged.
#[derive(Debug, Clone, PartialEq, Eq)]
struct InetText {
    fam: Family,
    prefix: Prefix,
    protos: u8,
    ports: Ports,
}

fn parse_rule_text(text: &str) -> Option<InetText> {
    let mut words = text.split(' ');
    let (cidr, proto, ports) = (words.next()?, words.next()?, words.next()?);
    if words.next().is_some() {
        return None;
    }
    let (addr, len) = cidr.split_once('/')?;
    let ip: IpAddr = addr.parse().ok()?;
    let len: u32 = len.parse().ok()?;
    let fam = Family { v6: ip.is_ipv6() };
    let protos = match proto {
        "tcp" => PROTO_TCP,
        "udp" => PROTO_UDP,
        "tcp+udp" => BOTH,
        _ => return None,
    };
    let ports = if ports == "any" {
        vec![(0, u16::MAX)]
    } else {
        ports
            .split(',')
            .map(|p| match p.split_once('-') {
                Some((lo, hi)) => Some((lo.parse().ok()?, hi.parse().ok()?)),
                None => p.parse().ok().map(|x| (x, x)),
            })
            .collect::<Option<Vec<_>>>()?
    };
    (len <= fam.bits()).then_some(InetText {
        fam,
        prefix: Prefix {
            addr: fam.of(ip)?,
            len,
        },
        protos,
        ports: merged(ports),
    })
}

/// The client's address rules of one side, read back from their texts.
fn parsed_rules(rules: &[RuleInfo], side: Side) -> Vec<(usize, InetText)> {
    let key = match side {
        Side::Egress => "network.allow[",
        Side::Listen => "network.listen[",
    };
    rules
        .iter()
        .enumerate()
        .filter(|(_, r)| r.id.rsplit(' ').next().is_some_and(|k| k.starts_with(key)))
        .filter_map(|(i, r)| Some((i, parse_rule_text(&r.text)?)))
        .collect()
}

fn is_doh(fam: Family, p: Prefix) -> bool {
    p.len == fam.bits()
        && host::DOH_RESOLVERS
            .iter()
            .any(|(_, ip)| fam.of(*ip) == Some(p.addr))
}

/// One cell where a client rule grants ports the floor does not.
struct Gap<'a> {
    fam: Family,
    cell: Prefix,
    /// Shared by the gaps of every rule in the cell.
    children: Rc<[Prefix]>,
    missing: ByProto,
    floor: Option<&'a NetValue>,
    /// What the floor allows in the cell, as judged.
    floor_ports: ByProto,
}

/// One family's entries of the floor, then of the client.
type FamilyEntries<'a> = (
    Family,
    Vec<(Prefix, &'a NetValue)>,
    Vec<(Prefix, &'a NetValue)>,
);

/// The egress or listen entries of both plans, compared.
struct Entries<'a> {
    side: Side,
    rules: Rules<'a>,
    floor_dns: bool,
    client_dns: bool,
    /// The client's rules of this side by prefix: a cell's rules are
    /// found by its (at most 129) enclosing prefixes, not by a scan, so a
    /// policy of many rules costs no more than its entries.
    parsed: HashMap<(bool, Prefix), Vec<(usize, InetText)>>,
}

impl<'a> Entries<'a> {
    fn new(side: Side, rules: Rules<'a>, floor_dns: bool, client_dns: bool) -> Entries<'a> {
        let mut parsed: HashMap<(bool, Prefix), Vec<(usize, InetText)>> = HashMap::new();
        for (i, t) in parsed_rules(rules.client, side) {
            parsed.entry((t.fam.v6, t.prefix)).or_default().push((i, t));
        }
        Entries {
            side,
            rules,
            floor_dns,
            client_dns,
            parsed,
        }
    }

    /// One line per client rule that is wider, with its rule index.
    fn compare(&self, mut families: [FamilyEntries<'a>; 2]) -> Vec<(usize, String)> {
        for (_, floor, _) in &mut families {
            floor.sort_unstable_by_key(|(p, _)| *p);
        }
        let mut gaps: BTreeMap<usize, Vec<Gap<'a>>> = BTreeMap::new();
        for (fam, floor, client) in &families {
            cells(
                *fam,
                floor.iter().copied(),
                client.iter().copied(),
                |cell, children, fv, cv| {
                    if let Some(cv) = cv {
                        self.cell(*fam, cell, children, fv, cv, &mut gaps);
                    }
                },
            );
        }
        gaps.into_iter()
            .map(|(rule, mut list)| {
                list.sort_by_key(|g| (g.fam.v6, g.cell));
                let places: Vec<String> = list
                    .iter()
                    .take(SHOWN)
                    .map(|g| self.gap_text(g, &families))
                    .collect();
                let more = list.len().saturating_sub(SHOWN);
                let more = if more > 0 {
                    format!(" (and {more} more places)")
                } else {
                    String::new()
                };
                let line = format!(
                    "{}: wider than the floor: {}{more}",
                    rule_ref(self.rules.client, rule),
                    places.join("; ")
                );
                (rule, line)
            })
            .collect()
    }

    /// Compares one cell, adding what the client allows beyond the floor
    /// to `gaps`, under the client rules that grant it.
    fn cell(
        &self,
        fam: Family,
        cell: Prefix,
        children: &[Prefix],
        fv: Option<&'a NetValue>,
        cv: &NetValue,
        gaps: &mut BTreeMap<usize, Vec<Gap<'a>>>,
    ) {
        let mut floor_ports = fv.map(value_ports).unwrap_or_default();
        if self.side == Side::Egress && self.floor_dns && !self.client_dns {
            // Under the floor, port 53 goes to guardd's resolver.
            for p in &mut floor_ports {
                *p = subtract_all(p, &[(DNS_PORT, DNS_PORT)]);
            }
        }
        let mut by_rule: BTreeMap<usize, ByProto> = BTreeMap::new();
        let client_ports = value_ports(cv);
        for (k, bit) in PROTOS.iter().enumerate() {
            let (Some(have), Some(allowed)) = (client_ports.get(k), floor_ports.get(k)) else {
                continue;
            };
            let missing = subtract_all(have, allowed);
            if missing.is_empty() {
                continue;
            }
            let mut left = missing.clone();
            for (rule, part) in self.blame(fam, cell, *bit, &missing) {
                left = subtract_all(&left, &part);
                if let Some(slot) = by_rule.entry(rule).or_default().get_mut(k) {
                    slot.extend(part);
                }
            }
            if !left.is_empty() {
                // Not traced to a rule text: name the rule the entry gives.
                for (rule, part) in tagged(cv, *bit, &left) {
                    if let Some(slot) = by_rule.entry(rule).or_default().get_mut(k) {
                        slot.extend(part);
                    }
                }
            }
        }
        if by_rule.is_empty() {
            return;
        }
        let children: Rc<[Prefix]> = children.into();
        for (rule, missing) in by_rule {
            gaps.entry(rule).or_default().push(Gap {
                fam,
                cell,
                children: Rc::clone(&children),
                missing: missing.map(merged),
                floor: fv,
                floor_ports: floor_ports.clone(),
            });
        }
    }

    /// The client rules granting `missing` over `bit` in `cell`, each with
    /// its part, read from the rule texts: a rule grants a cell when its
    /// prefix contains it (a longer prefix would be a node inside the cell),
    /// except at a DNS-over-HTTPS resolver's entry, which only rules naming
    /// that address reach.
    fn blame(
        &self,
        fam: Family,
        cell: Prefix,
        bit: u8,
        missing: &[(u16, u16)],
    ) -> Vec<(usize, Ports)> {
        let dns = self.side == Side::Egress && self.client_dns;
        let doh = dns && is_doh(fam, cell);
        let lens = if doh {
            cell.len..=cell.len
        } else {
            0..=cell.len
        };
        lens.filter_map(|len| self.parsed.get(&(fam.v6, fam.ancestor(cell, len))))
            .flatten()
            .filter(|(_, t)| t.protos & bit != 0)
            .filter_map(|(i, t)| {
                let ports = if dns {
                    merged(host::cut_dot(&t.ports))
                } else {
                    t.ports.clone()
                };
                let part = intersect(&ports, missing);
                (!part.is_empty()).then_some((*i, part))
            })
            .collect()
    }

    fn gap_text(&self, g: &Gap, families: &[FamilyEntries; 2]) -> String {
        let mut why = match g.floor {
            None => {
                // Sorted: the entries inside the cell's prefix are one run.
                let floor = families
                    .iter()
                    .find(|(fam, _, _)| *fam == g.fam)
                    .map_or(&[][..], |(_, f, _)| &f[..]);
                let start = floor.partition_point(|(p, _)| p.addr < g.cell.addr);
                let end = g.fam.end(g.cell);
                let mut inside: Vec<String> = Vec::new();
                let mut more = false;
                for (_, v) in floor[start..]
                    .iter()
                    .take_while(|(p, _)| p.addr <= end)
                    .filter(|(p, _)| p.len >= g.cell.len)
                {
                    let Some(r) = self.rules.floor.get(v.cidr_rule as usize) else {
                        continue;
                    };
                    let r = format!("{} {}", r.id, r.text);
                    if inside.contains(&r) {
                        continue;
                    }
                    if inside.len() == SHOWN {
                        more = true;
                        break;
                    }
                    inside.push(r);
                }
                match (inside.is_empty(), more) {
                    (true, _) => "no floor rule covers these addresses".to_owned(),
                    (false, more) => format!(
                        "no floor rule covers these addresses (the floor allows {}{})",
                        inside.join(", "),
                        if more { ", and more" } else { "" }
                    ),
                }
            }
            Some(v) if v.cidr_rule == RULE_DOH => format!(
                "the floor closes this well-known DNS-over-HTTPS resolver to every rule that \
                 does not name its address alone (it allows {} there)",
                proto_ports_text(&g.floor_ports)
            ),
            Some(v) => {
                let named = if (v.cidr_rule as usize) < self.rules.floor.len() {
                    format!(" ({})", rule_ref(self.rules.floor, v.cidr_rule as usize))
                } else {
                    String::new()
                };
                format!(
                    "the floor allows only {} there{named}",
                    proto_ports_text(&g.floor_ports)
                )
            }
        };
        let any = |port| g.missing.iter().any(|p| has_port(p, port));
        if self.side == Side::Egress && self.floor_dns && any(host::DOT_PORT) {
            why.push_str(
                ", and port 853 (DNS over TLS) is open under the floor only to a rule \
                 listing 853 alone",
            );
        }
        if self.side == Side::Egress && self.floor_dns && !self.client_dns && any(DNS_PORT) {
            why.push_str(
                ", and port 53 goes to guardd's resolver under the floor, while this policy \
                 (no host rule, no [network.dns]) sends DNS to the address",
            );
        }
        format!(
            "{} {}: {why}",
            cell_text(g.fam, g.cell, &g.children),
            proto_ports_text(&g.missing)
        )
    }
}

/// The parts of `missing` over `bit` by the rule the value's ranges name.
fn tagged(v: &NetValue, bit: u8, missing: &[(u16, u16)]) -> Vec<(usize, Ports)> {
    let n = usize::try_from(v.count)
        .unwrap_or(MAX_PORT_RANGES)
        .min(MAX_PORT_RANGES);
    let mut out: Vec<(usize, Ports)> = Vec::new();
    for r in v.ranges.iter().take(n).filter(|r| r.protos & bit != 0) {
        let part = intersect(&[(r.lo, r.hi)], missing);
        if part.is_empty() {
            continue;
        }
        match out
            .iter_mut()
            .find(|(rule, _)| *rule == usize::from(r.rule))
        {
            Some((_, ports)) => ports.extend(part),
            None => out.push((usize::from(r.rule), part)),
        }
    }
    out
}

/// Whether the floor pattern `f` matches every name the client pattern
/// `c` matches.
fn pattern_covers(f: &HostPattern, c: &HostPattern) -> bool {
    use HostPattern::{AnyDepth, Exact, OneLabel};
    match (f, c) {
        (_, Exact(name)) => f.matches(name),
        (Exact(_), _) | (OneLabel(_), AnyDepth(_)) => false,
        (OneLabel(fs), OneLabel(cs)) => fs == cs,
        // `**.s` matches one label or more before `s`, and so every name
        // of `*.x.s` or `**.x.s`.
        (AnyDepth(fs), OneLabel(cs) | AnyDepth(cs)) => {
            cs == fs
                || cs
                    .strip_suffix(fs.as_str())
                    .is_some_and(|head| head.ends_with('.'))
        }
    }
}

/// The ports of a host rule's ranges, per protocol (without the
/// DNS-over-TLS port unless the rule lists it alone).
fn host_ports(h: &HostRule) -> ByProto {
    let mut out: ByProto = [Vec::new(), Vec::new()];
    for r in h.ranges() {
        for (slot, bit) in out.iter_mut().zip(PROTOS) {
            if r.protos & bit != 0 {
                slot.push((r.lo, r.hi));
            }
        }
    }
    out.map(merged)
}

fn hosts(
    rules: &Rules,
    floor: Option<&DnsPlan>,
    client: Option<&DnsPlan>,
    lines: &mut Vec<(usize, String)>,
) {
    let floor_hosts = floor.map_or(&[][..], |d| &d.hosts[..]);
    for h in client.map_or(&[][..], |d| &d.hosts[..]) {
        let HostRule {
            rule,
            pattern,
            ports: _,
            protos: _,
        } = h;
        let covering: Vec<&HostRule> = floor_hosts
            .iter()
            .filter(|f| pattern_covers(&f.pattern, pattern))
            .collect();
        let mut allowed: ByProto = [Vec::new(), Vec::new()];
        for f in &covering {
            for (slot, ports) in allowed.iter_mut().zip(host_ports(f)) {
                slot.extend(ports);
            }
        }
        let allowed = allowed.map(merged);
        let want = host_ports(h);
        let missing: ByProto = [
            subtract_all(&want[0], &allowed[0]),
            subtract_all(&want[1], &allowed[1]),
        ];
        if missing.iter().all(Vec::is_empty) {
            continue;
        }
        let why = if covering.is_empty() {
            let theirs: Vec<String> = floor_hosts
                .iter()
                .map(|f| rule_ref(rules.floor, usize::from(f.rule)))
                .collect();
            if theirs.is_empty() {
                format!(
                    "no floor host rule matches every name {pattern} matches (the floor has no \
                     host rules, and its address rules do not cover a name, which may resolve \
                     to any address)"
                )
            } else {
                format!(
                    "no floor host rule matches every name {pattern} matches (the floor allows {})",
                    shown(&theirs, ", ")
                )
            }
        } else {
            let names: Vec<String> = covering
                .iter()
                .map(|f| rule_ref(rules.floor, usize::from(f.rule)))
                .collect();
            format!(
                "{} for these names: the floor allows them only {} ({})",
                proto_ports_text(&missing),
                proto_ports_text(&allowed),
                shown(&names, ", ")
            )
        };
        lines.push((
            usize::from(*rule),
            format!(
                "{}: wider than the floor: {why}",
                rule_ref(rules.client, usize::from(*rule))
            ),
        ));
    }
}

/// `[network.dns]` of two plans that both send DNS through guardd. An
/// answer's addresses stay allowed for its TTL held between `ttl_floor`
/// and `ttl_ceiling`, so raising either lets them live longer; more
/// `max_addresses` keep more of them; `answers_allowed` lets names point
/// into internal ranges.
fn dns_settings(floor: &DnsPlan, client: &DnsPlan, out: &mut Vec<String>) {
    let DnsPlan {
        hosts: _, // judged with the other network rules
        ttl_floor,
        ttl_ceiling,
        max_addresses,
        answers_allowed,
    } = client;
    if *ttl_floor > floor.ttl_floor {
        out.push(format!(
            "network.dns ttl_floor {} s: wider than the floor's {} s: an answer's addresses \
             would stay allowed at least that long, however short its TTL",
            ttl_floor.as_secs(),
            floor.ttl_floor.as_secs()
        ));
    }
    if *ttl_ceiling > floor.ttl_ceiling {
        out.push(format!(
            "network.dns ttl_ceiling {} s: wider than the floor's {} s: an answer's addresses \
             would stay allowed up to that long",
            ttl_ceiling.as_secs(),
            floor.ttl_ceiling.as_secs()
        ));
    }
    if *max_addresses > floor.max_addresses {
        out.push(format!(
            "network.dns max_addresses {max_addresses}: wider than the floor's {}: more of an \
             answer's addresses would be allowed",
            floor.max_addresses
        ));
    }
    answers(&floor.answers_allowed, answers_allowed, out);
}

/// Each client `answers_allowed` range must lie in the union of the
/// floor's (an IPv6 range never holds IPv4-mapped addresses: those are
/// judged as IPv4).
fn answers(floor: &[AddrRange], client: &[AddrRange], out: &mut Vec<String>) {
    let theirs: Vec<String> = floor.iter().map(ToString::to_string).collect();
    let theirs = if theirs.is_empty() {
        "none".to_owned()
    } else {
        shown(&theirs, ", ")
    };
    let prefix = |r: &AddrRange| Prefix {
        addr: r.addr,
        len: r.len,
    };
    // By client range, in order of family and address.
    let mut lines: BTreeMap<(bool, Prefix), Vec<String>> = BTreeMap::new();
    for fam in [Family::V4, Family::V6] {
        let side = |list: &[AddrRange]| -> BTreeMap<Prefix, ()> {
            list.iter()
                .filter(|r| r.v6 == fam.v6)
                .map(|r| (prefix(r), ()))
                .collect()
        };
        let mine = side(client);
        cells(fam, side(floor), mine.clone(), |cell, children, f, c| {
            if c.is_none() || f.is_some() {
                return;
            }
            for len in 0..=cell.len {
                let range = fam.ancestor(cell, len);
                if mine.contains_key(&range) {
                    lines
                        .entry((fam.v6, range))
                        .or_default()
                        .push(cell_text(fam, cell, children));
                }
            }
        });
    }
    for ((v6, range), places) in lines {
        out.push(format!(
            "network.dns answers_allowed {}: wider than the floor: answers could point \
             into {}, outside the floor's answers_allowed ({theirs})",
            Family { v6 }.text(range),
            shown(&places, "; ")
        ));
    }
}

// ---- files -----------------------------------------------------------------

fn files(floor: &FsPlan, client: &FsPlan, out: &mut Vec<String>) {
    let FsPlan {
        rules: floor_rules,
        restricted: floor_restricted,
        allow_write_exec: floor_wx,
    } = floor;
    let FsPlan {
        rules: client_rules,
        restricted: client_restricted,
        allow_write_exec: client_wx,
    } = client;
    if !floor_restricted {
        // Without a [filesystem] table the floor restricts no file.
        return;
    }
    if !client_restricted {
        out.push(
            "filesystem: wider than the floor: this policy has no [filesystem] table, so files \
             and programs are not restricted; the floor restricts them"
                .to_owned(),
        );
        return;
    }
    if *client_wx && !floor_wx {
        out.push(
            "filesystem.allow_write_exec true: wider than the floor: the floor refuses a path \
             both writable and executable"
                .to_owned(),
        );
    }
    let grants: Vec<Grant> = floor_rules.iter().map(Grant::new).collect();
    for rule in client_rules {
        if let Some(line) = file_rule(&grants, rule) {
            out.push(line);
        }
    }
}

/// A floor file grant as Landlock binds it.
struct Grant<'a> {
    rule: &'a FsRule,
    /// Resolved, except for `/proc/self` paths (compared as written).
    real: PathBuf,
    inode: Option<(u64, u64)>,
}

impl<'a> Grant<'a> {
    fn new(rule: &'a FsRule) -> Grant<'a> {
        let real = if is_proc_self(&rule.path) {
            rule.path.clone()
        } else {
            resolve(&rule.path)
        };
        let inode = std::fs::metadata(&real).ok().map(|m| (m.dev(), m.ino()));
        Grant { rule, real, inode }
    }
}

/// `/proc/self` and `/proc/thread-self` paths name the agent's own
/// processes in its private `/proc` (the launcher turns their grants into
/// one rule on that `/proc`): resolving them here would name guardd.
fn is_proc_self(path: &Path) -> bool {
    path.starts_with("/proc/self") || path.starts_with("/proc/thread-self")
}

/// Entries of a process directory that lead out of `/proc`: a grant
/// naming a path through them is bound to what they point at.
const PROC_LINKS: [&str; 6] = ["cwd", "root", "exe", "fd", "map_files", "ns"];

fn proc_link_below<'p>(path: &'p Path, above: &Path) -> Option<&'p str> {
    let rest = path.strip_prefix(above).ok()?;
    rest.components().find_map(|c| match c {
        Component::Normal(n) => PROC_LINKS.iter().find(|l| n == **l).copied(),
        _ => None,
    })
}

const BITS: [(&str, Access); 3] = [
    ("read", Access::READ),
    ("write", Access::WRITE),
    ("exec", Access::EXEC),
];

fn access_text(a: Access) -> String {
    let names: Vec<&str> = BITS
        .iter()
        .filter(|(_, b)| a.contains(*b))
        .map(|(n, _)| *n)
        .collect();
    if names.is_empty() {
        "nothing".to_owned()
    } else {
        names.join("+")
    }
}

/// The line for a client file grant the floor does not cover, if any.
fn file_rule(grants: &[Grant], client: &FsRule) -> Option<String> {
    let FsRule {
        path,
        access,
        // Where a rule came from decides only whether a missing path stops
        // the launch; the rule's id only names it.
        origin: _,
        rule,
    } = client;
    let proc_self = is_proc_self(path);
    let real = if proc_self {
        path.clone()
    } else {
        resolve(path)
    };
    let meta = (!proc_self)
        .then(|| std::fs::metadata(&real).ok())
        .flatten();
    let inode = meta.as_ref().map(|m| (m.dev(), m.ino()));
    let links = meta
        .as_ref()
        .filter(|m| !m.is_dir() && m.nlink() > 1)
        .map(MetadataExt::nlink);
    let mut reasons: Vec<(String, Vec<&str>)> = Vec::new();
    for (name, bit) in BITS {
        if !access.contains(bit) {
            continue;
        }
        let with_bit = || grants.iter().filter(|g| g.rule.access.contains(bit));
        let reason = if proc_self {
            let floor_proc = || with_bit().filter(|g| is_proc_self(&g.real));
            // A walk from the agent's /proc goes up to the root, never
            // through the host's /proc.
            if floor_proc().any(|g| {
                g.real == *path
                    || (path.starts_with(&g.real) && proc_link_below(path, &g.real).is_none())
            }) || with_bit().any(|g| g.real == Path::new("/"))
            {
                continue;
            }
            match floor_proc().find_map(|g| Some((g, proc_link_below(path, &g.real)?))) {
                Some((g, link)) => format!(
                    "it passes through {link}, a link out of the agent's /proc, and the floor \
                     grants {name} on {} only",
                    g.rule.path.display()
                ),
                None => reason(grants, path, bit, name, true),
            }
        } else {
            let others = || with_bit().filter(|g| !is_proc_self(&g.real));
            let same_file = |g: &&Grant| inode.is_some() && g.inode == inode;
            let above = |g: &&Grant| real.starts_with(&g.real);
            if others().any(|g| {
                same_file(&g) || (above(&g) && (links.is_none() || g.real == Path::new("/")))
            }) {
                continue;
            }
            match (links, others().find(above)) {
                (Some(n), Some(g)) => format!(
                    "it is a file with {n} hard links, and a grant on a file reaches every \
                     link; the floor grants {name} on {}, not on this file",
                    g.rule.path.display()
                ),
                _ => reason(grants, &real, bit, name, false),
            }
        };
        match reasons.iter_mut().find(|(r, _)| *r == reason) {
            Some((_, bits)) => bits.push(name),
            None => reasons.push((reason, vec![name])),
        }
    }
    if reasons.is_empty() {
        return None;
    }
    let shown_path = if real == *path {
        path.display().to_string()
    } else {
        format!("{} (resolving to {})", path.display(), real.display())
    };
    let why: Vec<String> = reasons
        .iter()
        .map(|(r, bits)| format!("{}: {r}", bits.join("+")))
        .collect();
    Some(format!(
        "{rule} {shown_path}: wider than the floor: {}",
        why.join("; ")
    ))
}

/// Why no floor grant gives `bit` on `path` (resolved, unless `proc_self`):
/// grants below it, or grants above it without the bit, or none.
fn reason(grants: &[Grant], path: &Path, bit: Access, name: &str, proc_self: bool) -> String {
    let same_kind = |g: &&Grant| is_proc_self(&g.real) == proc_self;
    let below: Vec<String> = grants
        .iter()
        .filter(same_kind)
        .filter(|g| g.rule.access.contains(bit) && g.real.starts_with(path))
        .map(|g| g.rule.path.display().to_string())
        .collect();
    if !below.is_empty() {
        return format!(
            "the floor grants {name} only below it: {}",
            shown(&below, ", ")
        );
    }
    let above: Vec<String> = grants
        .iter()
        .filter(same_kind)
        .filter(|g| path.starts_with(&g.real))
        .map(|g| {
            format!(
                "{} on {}",
                access_text(g.rule.access),
                g.rule.path.display()
            )
        })
        .collect();
    if above.is_empty() {
        format!("no floor grant with {name} reaches it")
    } else {
        format!("the floor grants only {}", shown(&above, ", "))
    }
}

// ---- process ---------------------------------------------------------------

fn process(floor: &ProcPlan, client: &ProcPlan, out: &mut Vec<String>) {
    let ProcPlan {
        max_processes,
        memory_bytes,
        cpu_millicores,
        user,
        capabilities,
        inotify,
    } = client;
    limit(
        "process.max_processes",
        floor.max_processes,
        *max_processes,
        |n| n.to_string(),
        out,
    );
    limit(
        "process.memory",
        floor.memory_bytes,
        *memory_bytes,
        |b| format!("{b} bytes"),
        out,
    );
    limit(
        "process.cpu",
        floor.cpu_millicores,
        *cpu_millicores,
        |m| format!("{}.{:03} cores", m / 1000, m % 1000),
        out,
    );
    if *user != floor.user {
        // A user may read what another may not and the reverse; without
        // an order, only the floor's own user is within.
        out.push(format!(
            "process.user {}: wider than the floor: the floor runs the agent as {}, and users \
             have no order (any other user counts as wider)",
            user_text(user.as_ref()),
            user_text(floor.user.as_ref())
        ));
    }
    for cap in capabilities {
        if !floor.capabilities.contains(cap) {
            let kept = if floor.capabilities.is_empty() {
                "none".to_owned()
            } else {
                shown(&floor.capabilities, ", ")
            };
            out.push(format!(
                "process.capabilities {cap}: wider than the floor: the floor keeps {kept}"
            ));
        }
    }
    if *inotify && !floor.inotify {
        out.push(
            "process.inotify true: wider than the floor: the floor refuses inotify watches"
                .to_owned(),
        );
    }
}

/// A resource limit: without one, or above the floor's, is wider.
fn limit<T: Copy + PartialOrd>(
    key: &str,
    floor: Option<T>,
    client: Option<T>,
    show: impl Fn(T) -> String,
    out: &mut Vec<String>,
) {
    let Some(f) = floor else {
        return;
    };
    match client {
        None => out.push(format!(
            "{key}: wider than the floor: no limit, where the floor has {}",
            show(f)
        )),
        Some(c) if c > f => out.push(format!(
            "{key} {}: wider than the floor's {}",
            show(c),
            show(f)
        )),
        Some(_) => {}
    }
}

fn user_text(u: Option<&UserSpec>) -> String {
    match u {
        None => "the caller's uid".to_owned(),
        Some(UserSpec::Name(n)) => format!("user {n}"),
        Some(UserSpec::Uid(u)) => format!("uid {u}"),
    }
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn port_arithmetic() {
        assert_eq!(
            subtract(1, 100, &[(10, 20), (30, 40)]),
            [(1, 9), (21, 29), (41, 100)]
        );
        assert_eq!(subtract(0, u16::MAX, &[(0, u16::MAX)]), []);
        assert_eq!(
            subtract(0, u16::MAX, &[(0, 52), (54, u16::MAX)]),
            [(53, 53)]
        );
        assert_eq!(subtract(5, 5, &[]), [(5, 5)]);
        assert_eq!(
            merged(vec![(5, 9), (1, 4), (20, 30), (25, 26)]),
            [(1, 9), (20, 30)]
        );
        assert_eq!(
            intersect(&[(1, 10), (20, 30)], &[(5, 25)]),
            [(5, 10), (20, 25)]
        );
    }

    #[test]
    fn gaps_in_children() {
        let v4 = Family::V4;
        let p = |a: u32, len| Prefix {
            addr: u128::from(a),
            len,
        };
        let ten = p(10 << 24, 8);
        let lo = p(10 << 24, 9);
        let hi = p((10 << 24) | (128 << 16), 9);
        assert!(has_gap(v4, ten, &[]));
        assert!(has_gap(v4, ten, &[lo]));
        assert!(has_gap(v4, ten, &[hi]));
        assert!(!has_gap(v4, ten, &[lo, hi]));
        let all = p(0, 0);
        assert!(!has_gap(v4, all, &[p(0, 1), p(1 << 31, 1)]));
        let v6 = Family::V6;
        let q = |a: u128, len| Prefix { addr: a, len };
        assert!(!has_gap(v6, q(0, 0), &[q(0, 1), q(1 << 127, 1)]));
        assert!(has_gap(v6, q(0, 0), &[q(0, 1)]));
        assert!(!has_gap(v6, q(u128::MAX, 128), &[q(u128::MAX, 128)]));
    }

    #[test]
    fn rule_texts_read_back() {
        assert_eq!(
            parse_rule_text("10.0.0.0/8 tcp 443,8000-8100"),
            Some(InetText {
                fam: Family::V4,
                prefix: Prefix {
                    addr: 10 << 24,
                    len: 8
                },
                protos: PROTO_TCP,
                ports: vec![(443, 443), (8000, 8100)],
            })
        );
        let v6 = parse_rule_text("2001:db8::/32 tcp+udp any").unwrap();
        assert_eq!(
            (v6.fam, v6.protos, v6.ports),
            (Family::V6, BOTH, vec![(0, u16::MAX)])
        );
        for bad in [
            "host a.example.com tcp any",
            "unix /x",
            "10.0.0.0/33 tcp 1",
            "x",
        ] {
            assert_eq!(parse_rule_text(bad), None, "{bad}");
        }
    }

    #[test]
    fn every_address_rule_text_reads_back() {
        let plan = super::super::Policy::parse(
            "[policy]\nname = \"t\"\ninclude = [\"base\"]\n[network]\nallow = [\n\
             { cidr = \"10.20.0.0/16\", ports = [443, \"8000-8100\"], protocol = \"tcp\" },\n\
             { cidr = \"2001:db8::/32\", ports = [53], protocol = \"udp\" },\n\
             { cidr = \"127.0.0.1\" }, { host = \"a.example.com\" }, { unix = \"@x\" },\n\
             { cidr = \"::/0\", ports = [1, 3, \"5-9\"] },\n]\n\
             listen = [{ cidr = \"::1/128\", ports = [8000], protocol = \"tcp\" }]\n",
            "p.toml",
        )
        .unwrap()
        .compile(&super::super::Vars {
            workdir: "/w".into(),
            home: "/h".into(),
            tmp: "/t".into(),
        })
        .unwrap();
        let egress = parsed_rules(&plan.rules, Side::Egress);
        let listen = parsed_rules(&plan.rules, Side::Listen);
        let index = |id: &str| plan.rules.iter().position(|r| r.id == id).unwrap();
        let ids = |v: &[(usize, InetText)]| v.iter().map(|(i, _)| *i).collect::<Vec<_>>();
        // Host and unix rules are no address rules.
        assert_eq!(
            ids(&egress),
            [
                index("network.allow[0]"),
                index("network.allow[1]"),
                index("network.allow[2]"),
                index("network.allow[5]")
            ]
        );
        assert_eq!(ids(&listen), [index("network.listen[0]")]);
        assert_eq!(egress[3].1.ports, [(1, 1), (3, 3), (5, 9)]);
        assert_eq!(egress[2].1.prefix.len, 32);
        assert_eq!(listen[0].1.fam, Family::V6);
    }

    #[test]
    fn host_patterns_cover_by_the_names_they_match() {
        let p = |s: &str| HostPattern::parse(s).unwrap();
        let cases = [
            ("api.example.com", "api.example.com", true),
            ("api.example.com", "API.example.com.", true),
            ("api.example.com", "*.example.com", false),
            ("*.example.com", "api.example.com", true),
            ("*.example.com", "a.b.example.com", false),
            ("*.example.com", "example.com", false),
            ("*.example.com", "*.example.com", true),
            ("*.example.com", "*.x.example.com", false),
            ("*.example.com", "**.example.com", false),
            ("**.example.com", "api.example.com", true),
            ("**.example.com", "a.b.example.com", true),
            ("**.example.com", "example.com", false),
            ("**.example.com", "*.example.com", true),
            ("**.example.com", "*.x.example.com", true),
            ("**.example.com", "**.x.example.com", true),
            ("**.example.com", "**.example.com", true),
            ("**.example.com", "**.badexample.com", false),
            ("**.example.com", "*.badexample.com", false),
            ("**.x.example.com", "**.example.com", false),
            ("**.x.example.com", "*.example.com", false),
        ];
        for (floor, client, want) in cases {
            assert_eq!(
                pattern_covers(&p(floor), &p(client)),
                want,
                "{floor} covers {client}"
            );
        }
    }
}
