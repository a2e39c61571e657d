//! Network rules: validation of `[network] allow` and `[network] listen`,
//! and their compilation into LPM trie entries and Unix socket keys.
//!
//! `listen` rules name local addresses and ports the agent may bind and
//! listen on. They are folded exactly like `allow` rules, into tries of
//! their own; their rule numbers follow those of the `allow` rules, so one
//! list of [`RuleInfo`] names both.
//!
//! The kernel looks an address up in an LPM trie and gets the value of the
//! longest matching prefix only. So that a longer prefix cannot hide the
//! ports of a shorter rule covering the same address, the value stored at
//! each prefix is the union of the port ranges of every rule whose CIDR
//! contains that prefix.
//!
//! `host` rules (names, [`super::host`]) have no entries of their own: they
//! make the plan's [`DnsPlan`], from which guardd's resolver for the agent
//! writes each answer's addresses ([`NetPlan::name_value`]). A policy with
//! a DNS plan also gets the DNS-over-TLS cut and the DNS-over-HTTPS entries
//! in its static entries ([`host::DOT_PORT`], [`host::DOH_RESOLVERS`]).

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use guard_common::{
    MAX_PORT_RANGES, NetValue, PROTO_TCP, PROTO_UDP, PortRange, RULE_DOH, UNIX_PATH_MAX,
};
use toml::Spanned;

use super::host::{self, AddrRange, DnsPlan, HostPattern, HostRule};
use super::parse::{Doc, RawDns, RawListenRule, RawNetRule, RawNetwork, Scalar};
use super::{Origin, PolicyError, RuleInfo, Src};

/// Rule indices are stored as `u16` in `PortRange::rule`.
const MAX_RULES: usize = u16::MAX as usize;

/// What the kernel maps receive for one policy.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NetPlan {
    /// Prefix entries for the kernel's IPv4 LPM trie: (cidr prefix length
    /// 0..=32, network address bytes, value), sorted by (address, length).
    pub v4: Vec<(u32, [u8; 4], NetValue)>,
    /// As `v4`, for IPv6 (prefix length 0..=128).
    pub v6: Vec<(u32, [u8; 16], NetValue)>,
    /// Unix socket keys: NUL-padded `sun_path` bytes (abstract: a leading 0
    /// byte, then the name), and the rule index.
    pub unix: Vec<([u8; UNIX_PATH_MAX], u32)>,
    /// Entries of the `listen` tries: local addresses (the unspecified
    /// address meaning "every address") with the ports that may be bound
    /// there. Same layout as `v4`/`v6`.
    pub listen4: Vec<(u32, [u8; 4], NetValue)>,
    pub listen6: Vec<(u32, [u8; 16], NetValue)>,
    /// What guardd's resolver for the agent is told: `Some` exactly when
    /// the policy (with its includes and bases) has a host rule or a
    /// `[network.dns]` table, and then every DNS query of the agent goes
    /// to guardd.
    pub dns: Option<DnsPlan>,
}

/// Why [`NetPlan::name_value`] cannot give a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameValueError {
    #[error("no host rule given for {0}")]
    NoRules(IpAddr),
    #[error("rule {0} is not a host rule of this policy")]
    NotHostRule(u16),
    #[error(
        "{count} port ranges would apply to {ip} (at most {MAX_PORT_RANGES}): \
         the host rules allowing it add too many to its address rules"
    )]
    TooManyRanges { ip: IpAddr, count: usize },
}

impl NetPlan {
    /// The value the kernel's longest-prefix lookup finds for `ip`, if any.
    /// IPv4-mapped IPv6 addresses are looked up as IPv4, as the kernel does.
    /// A linear scan: meant for diagnostics and tests, not hot paths.
    pub fn lookup(&self, ip: IpAddr) -> Option<&NetValue> {
        lookup_in(&self.v4, &self.v6, ip)
    }

    /// As [`NetPlan::lookup`], in the `listen` entries: the value for a
    /// local address a socket binds to.
    pub fn listen_lookup(&self, ip: IpAddr) -> Option<&NetValue> {
        lookup_in(&self.listen4, &self.listen6, ip)
    }

    /// Whether the policy lets the agent listen anywhere at all; without
    /// listen rules, `listen(2)` is refused outright by seccomp.
    pub fn has_listen_rules(&self) -> bool {
        !self.listen4.is_empty() || !self.listen6.is_empty()
    }

    /// The static entry at exactly `ip`/32 (or /128), if the policy has
    /// one: what an address's entry goes back to once no host rule allows
    /// it any more. IPv4-mapped IPv6 addresses are IPv4.
    pub fn exact(&self, ip: IpAddr) -> Option<&NetValue> {
        match ip.to_canonical() {
            IpAddr::V4(a) => self
                .v4
                .iter()
                .find(|(len, net, _)| *len == 32 && *net == a.octets())
                .map(|(_, _, v)| v),
            IpAddr::V6(a) => self
                .v6
                .iter()
                .find(|(len, net, _)| *len == 128 && *net == a.octets())
                .map(|(_, _, v)| v),
        }
    }

    /// The value guardd writes at `ip`/32 (or /128) while the host rules
    /// `rules` (their [`HostRule::rule`] indices) allow `ip`: what the
    /// static entries give `ip` by longest-prefix lookup (which already
    /// holds every enclosing address rule) and each host rule's
    /// [`HostRule::ranges`], merged. `cidr_rule` is the static entry's, or
    /// else the first host rule's.
    pub fn name_value(&self, ip: IpAddr, rules: &[u16]) -> Result<NetValue, NameValueError> {
        let Some(&first) = rules.first() else {
            return Err(NameValueError::NoRules(ip));
        };
        let hosts = self.dns.as_ref().map_or(&[][..], |d| &d.hosts[..]);
        let stat = self.lookup(ip);
        let mut ranges: Vec<PortRange> = stat
            .map(|v| {
                let n = usize::try_from(v.count).unwrap_or(MAX_PORT_RANGES);
                v.ranges.iter().take(n).copied().collect()
            })
            .unwrap_or_default();
        for &r in rules {
            let h = hosts
                .iter()
                .find(|h| h.rule == r)
                .ok_or(NameValueError::NotHostRule(r))?;
            ranges.extend(h.ranges());
        }
        normalize(&mut ranges);
        if ranges.len() > MAX_PORT_RANGES {
            return Err(NameValueError::TooManyRanges {
                ip,
                count: ranges.len(),
            });
        }
        Ok(value_of(
            &ranges,
            stat.map_or(u32::from(first), |v| v.cidr_rule),
        ))
    }

    /// The rule index of the Unix socket key for `addr` (`/path` or `@name`).
    pub fn unix_rule(&self, addr: &str) -> Option<u32> {
        let key = unix_key(addr).ok()?;
        self.unix.iter().find(|(k, _)| *k == key).map(|(_, r)| *r)
    }
}

type Entries4 = [(u32, [u8; 4], NetValue)];
type Entries6 = [(u32, [u8; 16], NetValue)];

fn lookup_in<'a>(v4: &'a Entries4, v6: &'a Entries6, ip: IpAddr) -> Option<&'a NetValue> {
    match ip.to_canonical() {
        IpAddr::V4(a) => {
            let x = u128::from(u32::from(a));
            v4.iter()
                .filter(|(len, net, _)| {
                    contains(u128::from(u32::from_be_bytes(*net)), *len, x, 32, 32)
                })
                .max_by_key(|(len, _, _)| *len)
                .map(|(_, _, v)| v)
        }
        IpAddr::V6(a) => {
            let x = u128::from(a);
            v6.iter()
                .filter(|(len, net, _)| contains(u128::from_be_bytes(*net), *len, x, 128, 128))
                .max_by_key(|(len, _, _)| *len)
                .map(|(_, _, v)| v)
        }
    }
}

/// The rule index of the first range of `value` that allows `port` over
/// `proto` (`PROTO_TCP` or `PROTO_UDP`), as the kernel program decides.
pub fn port_allowed(value: &NetValue, port: u16, proto: u8) -> Option<u16> {
    let count = usize::try_from(value.count).unwrap_or(MAX_PORT_RANGES);
    value
        .ranges
        .iter()
        .take(count)
        .find(|r| r.protos & proto != 0 && r.lo <= port && port <= r.hi)
        .map(|r| r.rule)
}

/// A validated network rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NetRule {
    pub id: String,
    pub text: String,
    pub src: Src,
    pub kind: Kind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Kind {
    Inet(Inet),
    Unix([u8; UNIX_PATH_MAX]),
    Host(Host),
}

/// A host rule before it gets its index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Host {
    pub pattern: HostPattern,
    pub ports: Vec<(u16, u16)>,
    pub protos: u8,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Inet {
    pub v6: bool,
    /// Network address, right-aligned (IPv4 in the low 32 bits).
    pub addr: u128,
    pub len: u32,
    pub ports: Vec<(u16, u16)>,
    pub protos: u8,
}

/// Validates `[network]`: `allow` rules go to `out`, `listen` rules to
/// `listen`, a `[network.dns]` table to `dns`, and every faulty rule adds
/// its error to `errs`.
pub(crate) fn validate(
    doc: &Doc,
    raw: RawNetwork,
    origin: Origin,
    out: &mut Vec<NetRule>,
    listen: &mut Vec<NetRule>,
    dns: &mut Option<DnsPlan>,
    errs: &mut Vec<PolicyError>,
) {
    let RawNetwork {
        allow,
        listen: listen_raw,
        dns: dns_raw,
    } = raw;
    rules(doc, allow, listen_raw, origin, out, listen, errs);
    if let Some(table) = dns_raw {
        match dns_table(doc, table, origin) {
            Ok(d) => *dns = Some(d),
            Err(e) => errs.extend(e),
        }
    }
}

/// The rules of [`validate`], which stop at the first one over the limit.
fn rules(
    doc: &Doc,
    allow: Option<Vec<Spanned<RawNetRule>>>,
    listen_raw: Option<Vec<Spanned<RawListenRule>>>,
    origin: Origin,
    out: &mut Vec<NetRule>,
    listen: &mut Vec<NetRule>,
    errs: &mut Vec<PolicyError>,
) {
    for (i, rule) in listen_raw.unwrap_or_default().into_iter().enumerate() {
        if !room(doc, out.len() + listen.len(), rule.span().start, errs) {
            return;
        }
        match listen_rule(doc, rule, origin, i) {
            Ok(r) => listen.push(r),
            Err(e) => errs.push(e),
        }
    }
    for (i, rule) in allow.unwrap_or_default().into_iter().enumerate() {
        if !room(doc, out.len() + listen.len(), rule.span().start, errs) {
            return;
        }
        match allow_rule(doc, rule, origin, i) {
            Ok(r) => out.push(r),
            Err(e) => errs.push(e),
        }
    }
}

/// Whether one more rule fits beside the `used` ones; if not, the error
/// (at the rule, offset `at`) is added.
fn room(doc: &Doc, used: usize, at: usize, errs: &mut Vec<PolicyError>) -> bool {
    if used < MAX_RULES {
        return true;
    }
    errs.push(doc.error_at(at, format!("too many network rules: at most {MAX_RULES}")));
    false
}

fn listen_rule(
    doc: &Doc,
    rule: Spanned<RawListenRule>,
    origin: Origin,
    i: usize,
) -> Result<NetRule, PolicyError> {
    let span = rule.span();
    let id = doc.rule_id(origin, "network.listen", i);
    let src = doc.src(origin, span.start);
    let RawListenRule {
        cidr,
        host,
        ports,
        protocol,
    } = rule.into_inner();
    if let Some(h) = host {
        return Err(doc.error_at(
            h.span().start,
            "a listen rule takes no `host`: listen rules name local addresses; \
             write { cidr = \"127.0.0.1/32\", ports = [8000] }",
        ));
    }
    let Some(cidr) = cidr else {
        return Err(doc.error_at(
            span.start,
            "listen rule without `cidr`: expected { cidr = \"127.0.0.1/32\", ports = [8000] } \
             (\"0.0.0.0/0\" or \"::/0\" to listen on every address)",
        ));
    };
    let (kind, text) = inet_rule(doc, &cidr, ports.as_ref(), protocol.as_ref())?;
    Ok(NetRule {
        id,
        text,
        src,
        kind,
    })
}

fn allow_rule(
    doc: &Doc,
    rule: Spanned<RawNetRule>,
    origin: Origin,
    i: usize,
) -> Result<NetRule, PolicyError> {
    let span = rule.span();
    let id = doc.rule_id(origin, "network.allow", i);
    let src = doc.src(origin, span.start);
    let RawNetRule {
        cidr,
        host,
        unix,
        ports,
        protocol,
    } = rule.into_inner();
    if let Some(h) = &host {
        let other = match (&cidr, &unix) {
            (Some(_), _) => Some("cidr"),
            (None, Some(_)) => Some("unix"),
            (None, None) => None,
        };
        if let Some(other) = other {
            return Err(doc.error_at(
                h.span().start,
                format!("a network rule takes either `host` or `{other}`, not both"),
            ));
        }
    }
    let (kind, text) = match (cidr, unix) {
        (Some(_), Some(u)) => {
            return Err(doc.error_at(
                u.span().start,
                "a network rule takes either `cidr` or `unix`, not both",
            ));
        }
        (None, None) => {
            let Some(h) = host else {
                return Err(doc.error_at(
                    span.start,
                    "network rule without `cidr`, `host` or `unix`: expected \
                     { cidr = \"10.0.0.0/8\", ... }, { host = \"api.example.com\", ... } \
                     or { unix = \"/path\" }",
                ));
            };
            let pattern =
                HostPattern::parse(h.get_ref()).map_err(|m| doc.error_at(h.span().start, m))?;
            let (ports, protos) = ports_and_protocol(doc, ports.as_ref(), protocol.as_ref())?;
            let text = format!(
                "host {pattern} {} {}",
                proto_text(protos),
                ports_text(&ports)
            );
            (
                Kind::Host(Host {
                    pattern,
                    ports,
                    protos,
                }),
                text,
            )
        }
        (Some(cidr), None) => inet_rule(doc, &cidr, ports.as_ref(), protocol.as_ref())?,
        (None, Some(u)) => {
            if let Some(p) = ports {
                return Err(doc.error_at(
                    p.span().start,
                    "a unix rule takes no `ports`: ports apply to `cidr` rules only",
                ));
            }
            if let Some(p) = protocol {
                return Err(doc.error_at(
                    p.span().start,
                    "a unix rule takes no `protocol`: protocols apply to `cidr` rules only",
                ));
            }
            let key = unix_key(u.get_ref()).map_err(|m| doc.error_at(u.span().start, m))?;
            (Kind::Unix(key), format!("unix {}", u.get_ref()))
        }
    };
    Ok(NetRule {
        id,
        text,
        src,
        kind,
    })
}

fn inet_rule(
    doc: &Doc,
    cidr: &Spanned<String>,
    ports: Option<&Spanned<Vec<Spanned<Scalar>>>>,
    protocol: Option<&Spanned<String>>,
) -> Result<(Kind, String), PolicyError> {
    let (v6, addr, len) =
        parse_cidr(cidr.get_ref()).map_err(|m| doc.error_at(cidr.span().start, m))?;
    let (ports, protos) = ports_and_protocol(doc, ports, protocol)?;
    let inet = Inet {
        v6,
        addr,
        len,
        ports,
        protos,
    };
    let text = rule_text(&inet);
    Ok((Kind::Inet(inet), text))
}

/// A rule's `ports` (omitted: every port) and `protocol` (omitted: both).
fn ports_and_protocol(
    doc: &Doc,
    ports: Option<&Spanned<Vec<Spanned<Scalar>>>>,
    protocol: Option<&Spanned<String>>,
) -> Result<(Vec<(u16, u16)>, u8), PolicyError> {
    let ports = match ports {
        None => vec![(0, u16::MAX)],
        Some(list) => {
            if list.get_ref().is_empty() {
                return Err(doc.error_at(
                    list.span().start,
                    "empty port list: omit `ports` to allow all ports",
                ));
            }
            list.get_ref()
                .iter()
                .map(|p| port_item(p.get_ref()).map_err(|m| doc.error_at(p.span().start, m)))
                .collect::<Result<Vec<_>, _>>()?
        }
    };
    let protos = match protocol {
        None => PROTO_TCP | PROTO_UDP,
        Some(p) => {
            match p.get_ref().as_str() {
                "tcp" => PROTO_TCP,
                "udp" => PROTO_UDP,
                other => {
                    return Err(doc.error_at(
                    p.span().start,
                    format!("unknown protocol {other:?}: expected \"tcp\" or \"udp\" (omit for both)"),
                ));
                }
            }
        }
    };
    Ok((ports, protos))
}

/// Validates `[network.dns]`, which only the policy file itself may hold.
fn dns_table(
    doc: &Doc,
    table: Spanned<RawDns>,
    origin: Origin,
) -> Result<DnsPlan, Vec<PolicyError>> {
    let at = table.span().start;
    if let Origin::Base(name) = origin {
        return Err(vec![doc.error_at(
            at,
            format!("base {name:?} holds a [network.dns] table: only the policy file may"),
        )]);
    }
    if doc.include.is_some() {
        return Err(vec![doc.error_at(
            at,
            "a [network.dns] table belongs in the policy file itself, not in an include \
             file: it sets the resolver of the whole agent",
        )]);
    }
    let raw = table.into_inner();
    let mut plan = DnsPlan::default();
    let mut errs = Vec::new();
    let ttl = |key: &str, v: &Spanned<Scalar>, errs: &mut Vec<PolicyError>| {
        let max = host::MAX_TTL.as_secs();
        match v.get_ref() {
            Scalar::Int(n) if u64::try_from(*n).is_ok_and(|n| n <= max) => {
                Some(Duration::from_secs(n.unsigned_abs()))
            }
            other => {
                errs.push(doc.error_at(
                    v.span().start,
                    format!("invalid {key} {other}: expected whole seconds, 0-{max}"),
                ));
                None
            }
        }
    };
    let floor = raw
        .ttl_floor
        .as_ref()
        .map(|v| (v, ttl("ttl_floor", v, &mut errs)));
    let ceiling = raw
        .ttl_ceiling
        .as_ref()
        .map(|v| (v, ttl("ttl_ceiling", v, &mut errs)));
    // Compared only when both are valid, so that one mistake is one error.
    let mut ttls_ok = true;
    match floor {
        Some((_, Some(f))) => plan.ttl_floor = f,
        Some((_, None)) => ttls_ok = false,
        None => {}
    }
    match ceiling {
        Some((v, Some(c))) if c.is_zero() => {
            errs.push(doc.error_at(
                v.span().start,
                "invalid ttl_ceiling 0: expected at least 1 second",
            ));
            ttls_ok = false;
        }
        Some((_, Some(c))) => plan.ttl_ceiling = c,
        Some((_, None)) => ttls_ok = false,
        None => {}
    }
    if ttls_ok && plan.ttl_floor > plan.ttl_ceiling {
        let default = |x: &Option<_>| if x.is_none() { " (the default)" } else { "" };
        let at = floor.or(ceiling).map_or(at, |(v, _)| v.span().start);
        errs.push(doc.error_at(
            at,
            format!(
                "ttl_floor {} s{} is above ttl_ceiling {} s{}: the floor must not exceed \
                 the ceiling",
                plan.ttl_floor.as_secs(),
                default(&floor),
                plan.ttl_ceiling.as_secs(),
                default(&ceiling),
            ),
        ));
    }
    if let Some(v) = &raw.max_addresses {
        let limit = host::MAX_ADDRESSES_LIMIT;
        match v.get_ref() {
            Scalar::Int(n) if usize::try_from(*n).is_ok_and(|n| (1..=limit).contains(&n)) => {
                plan.max_addresses = usize::try_from(*n).unwrap_or(limit);
            }
            other => errs.push(doc.error_at(
                v.span().start,
                format!("invalid max_addresses {other}: expected a number 1-{limit}"),
            )),
        }
    }
    for item in raw.answers_allowed.unwrap_or_default() {
        match parse_cidr(item.get_ref()) {
            Ok((v6, addr, len)) => plan.answers_allowed.push(AddrRange { v6, addr, len }),
            Err(m) => errs.push(doc.error_at(item.span().start, m)),
        }
    }
    if errs.is_empty() { Ok(plan) } else { Err(errs) }
}

fn proto_text(protos: u8) -> &'static str {
    match protos {
        PROTO_TCP => "tcp",
        PROTO_UDP => "udp",
        _ => "tcp+udp",
    }
}

/// Port ranges for people: `any`, or `80,443,8000-8999`.
pub(super) fn ports_text(ports: &[(u16, u16)]) -> String {
    if ports == [(0, u16::MAX)] {
        String::from("any")
    } else {
        ports
            .iter()
            .map(|&(lo, hi)| {
                if lo == hi {
                    lo.to_string()
                } else {
                    format!("{lo}-{hi}")
                }
            })
            .collect::<Vec<_>>()
            .join(",")
    }
}

fn rule_text(r: &Inet) -> String {
    format!(
        "{} {} {}",
        prefix_text(r.v6, r.addr, r.len),
        proto_text(r.protos),
        ports_text(&r.ports)
    )
}

pub(super) fn prefix_text(v6: bool, addr: u128, len: u32) -> String {
    if v6 {
        format!("{}/{len}", Ipv6Addr::from(addr))
    } else {
        format!("{}/{len}", Ipv4Addr::from(low32(addr)))
    }
}

fn low32(x: u128) -> u32 {
    u32::try_from(x & u128::from(u32::MAX)).unwrap_or(0)
}

/// Network bits of a prefix of length `len` in a `bits`-wide address.
fn mask(len: u32, bits: u32) -> u128 {
    let all = u128::MAX.checked_shr(128 - bits.min(128)).unwrap_or(0);
    all & !all.checked_shr(len).unwrap_or(0)
}

/// Whether prefix `outer/olen` contains `inner/ilen`.
pub(super) fn contains(outer: u128, olen: u32, inner: u128, ilen: u32, bits: u32) -> bool {
    olen <= ilen && inner & mask(olen, bits) == outer
}

/// Returns (is IPv6, network address, prefix length).
fn parse_cidr(s: &str) -> Result<(bool, u128, u32), String> {
    let invalid =
        || format!("invalid CIDR {s:?}: expected an IPv4 or IPv6 address with optional /prefix");
    let (addr_part, prefix_part) = match s.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (s, None),
    };
    let ip: IpAddr = addr_part.parse().map_err(|_| invalid())?;
    let (v6, addr, bits) = match ip {
        IpAddr::V4(a) => (false, u128::from(u32::from(a)), 32),
        IpAddr::V6(a) => (true, u128::from(a), 128),
    };
    let len = match prefix_part {
        None => bits,
        Some(p) => {
            // `u32::from_str` would also accept "+8".
            if p.is_empty() || p.len() > 3 || !p.bytes().all(|b| b.is_ascii_digit()) {
                return Err(invalid());
            }
            p.parse::<u32>().map_err(|_| invalid())?
        }
    };
    let family = if v6 { "IPv6" } else { "IPv4" };
    if len > bits {
        return Err(format!(
            "prefix /{len} is longer than {bits} bits for {family}"
        ));
    }
    let network = addr & mask(len, bits);
    if network != addr {
        return Err(format!(
            "CIDR {s} has host bits set; did you mean {}?",
            prefix_text(v6, network, len)
        ));
    }
    if v6 && len >= 96 && addr >> 32 == 0xffff {
        return Err(format!(
            "CIDR {s} is an IPv4-mapped IPv6 range, which the kernel judges as IPv4: \
             write the IPv4 CIDR {}/{} instead",
            Ipv4Addr::from(low32(addr)),
            len - 96
        ));
    }
    Ok((v6, addr, len))
}

/// Parses one element of `ports`: a number or a "LOW-HIGH" string.
fn port_item(item: &Scalar) -> Result<(u16, u16), String> {
    let port = |text: &str| -> Result<u16, String> {
        let n = text.parse::<u64>().unwrap_or(u64::MAX);
        match u16::try_from(n) {
            Ok(p) if p >= 1 => Ok(p),
            _ => Err(format!("port {text} out of range: expected 1-65535")),
        }
    };
    let digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
    match item {
        Scalar::Int(n) => port(&n.to_string()).map(|p| (p, p)),
        Scalar::Str(s) => match s.split_once('-') {
            None if digits(s) => port(s).map(|p| (p, p)),
            None => Err(format!(
                "invalid port {s:?}: expected a port number 1-65535 or \"LOW-HIGH\""
            )),
            Some((lo, hi)) if digits(lo) && digits(hi) => {
                let (lo, hi) = (port(lo)?, port(hi)?);
                if lo > hi {
                    return Err(format!("port range {lo}-{hi} is reversed"));
                }
                Ok((lo, hi))
            }
            Some(_) => Err(format!(
                "invalid port range {s:?}: expected \"LOW-HIGH\" with ports 1-65535"
            )),
        },
        Scalar::Float(_) | Scalar::Bool(_) => Err(format!(
            "invalid port {item}: expected a port number 1-65535 or \"LOW-HIGH\""
        )),
    }
}

fn unix_key(s: &str) -> Result<[u8; UNIX_PATH_MAX], String> {
    if s.contains('\0') {
        return Err(format!("unix socket address {s:?} contains a NUL byte"));
    }
    let (body, offset) = match s.strip_prefix('@') {
        Some("") => {
            return Err(String::from(
                "abstract unix socket name after \"@\" is empty",
            ));
        }
        Some(name) => (name, 1),
        None if s.starts_with('/') => (s, 0),
        None => {
            return Err(format!(
                "unix socket address {s:?} is neither an absolute path nor \"@name\" \
                 (abstract socket)"
            ));
        }
    };
    // A pathname needs room for its terminating NUL; an abstract name has
    // the leading NUL instead.
    if body.len() > UNIX_PATH_MAX - 1 {
        return Err(format!(
            "unix socket address {s:?} is {} bytes long, longer than {}",
            body.len(),
            UNIX_PATH_MAX - 1
        ));
    }
    let mut key = [0u8; UNIX_PATH_MAX];
    for (dst, src) in key.iter_mut().skip(offset).zip(body.bytes()) {
        *dst = src;
    }
    Ok(key)
}

/// Folds the rules into map entries and describes every rule: the `allow`
/// rules first, then the `listen` rules, numbered on from them. `dns` is
/// the policy's `[network.dns]` table, if it has one.
pub(crate) fn compile(
    rules: &[NetRule],
    listen: &[NetRule],
    dns: Option<&DnsPlan>,
    file: &str,
) -> Result<(NetPlan, Vec<RuleInfo>), PolicyError> {
    let infos = rules
        .iter()
        .chain(listen)
        .map(|r| RuleInfo {
            id: r.id.clone(),
            text: r.text.clone(),
        })
        .collect();
    let mut plan = NetPlan::default();
    let mut seen = HashSet::new();
    for (i, r) in rules.iter().enumerate() {
        if let Kind::Unix(key) = &r.kind
            && seen.insert(*key)
        {
            plan.unix.push((*key, rule_u32(i)));
        }
    }
    let mut hosts = Vec::new();
    for (i, r) in rules.iter().enumerate() {
        if let Kind::Host(h) = &r.kind {
            hosts.push(HostRule {
                rule: rule_u16(i, &r.src, file)?,
                pattern: h.pattern.clone(),
                ports: h.ports.clone(),
                protos: h.protos,
            });
        }
    }
    if !hosts.is_empty() || dns.is_some() {
        plan.dns = Some(DnsPlan {
            hosts,
            ..dns.cloned().unwrap_or_default()
        });
    }
    // The agent's DNS goes through guardd: the static entries must not
    // open the ways around it.
    let (v4, v6) = entries(rules, &|i| i, plan.dns.is_some(), file)?;
    plan.v4 = v4;
    plan.v6 = v6;
    let after = |i: usize| i + rules.len();
    plan.listen4 = fold(listen, &after, false, false, file)?
        .into_iter()
        .map(|(addr, len, v)| (len, low32(addr).to_be_bytes(), v))
        .collect();
    plan.listen6 = fold(listen, &after, true, false, file)?
        .into_iter()
        .map(|(addr, len, v)| (len, addr.to_be_bytes(), v))
        .collect();
    Ok((plan, infos))
}

/// Map entries of `allow` rules: rule `i` of `rules` is numbered
/// `index(i)`. `closed`: the agent's DNS goes through guardd, so the
/// DNS-over-TLS port is cut out and DNS-over-HTTPS resolvers are reached
/// only by rules naming exactly their address.
pub(crate) type Entries = (
    Vec<(u32, [u8; 4], NetValue)>,
    Vec<(u32, [u8; 16], NetValue)>,
);

pub(crate) fn entries(
    rules: &[NetRule],
    index: &dyn Fn(usize) -> usize,
    closed: bool,
    file: &str,
) -> Result<Entries, PolicyError> {
    let mut v4 = fold(rules, index, false, closed, file)?;
    let mut v6 = fold(rules, index, true, closed, file)?;
    if closed {
        doh_entries(rules, index, false, &mut v4, file)?;
        doh_entries(rules, index, true, &mut v6, file)?;
    }
    Ok((
        v4.into_iter()
            .map(|(addr, len, v)| (len, low32(addr).to_be_bytes(), v))
            .collect(),
        v6.into_iter()
            .map(|(addr, len, v)| (len, addr.to_be_bytes(), v))
            .collect(),
    ))
}

fn rule_u32(i: usize) -> u32 {
    u32::try_from(i).unwrap_or(u32::MAX)
}

fn rule_u16(i: usize, src: &Src, file: &str) -> Result<u16, PolicyError> {
    u16::try_from(i)
        .map_err(|_| src.error(file, format!("too many network rules: at most {MAX_RULES}")))
}

/// The port ranges of an address rule: with the DNS-over-TLS port cut out
/// when the agent's DNS goes through guardd.
fn inet_ranges(inet: &Inet, rule: u16, dot_cut: bool) -> Vec<PortRange> {
    if dot_cut {
        port_ranges(&host::cut_dot(&inet.ports), inet.protos, 0, rule)
    } else {
        port_ranges(&inet.ports, inet.protos, 0, rule)
    }
}

/// `PortRange`s of inclusive port ranges, all with the same protocols,
/// flags and rule.
pub(super) fn port_ranges(
    ports: &[(u16, u16)],
    protos: u8,
    flags: u8,
    rule: u16,
) -> Vec<PortRange> {
    ports
        .iter()
        .map(|&(lo, hi)| PortRange {
            lo,
            hi,
            protos,
            flags,
            rule,
        })
        .collect()
}

/// Adds a rule's ranges to those of a prefix, merged; more than a map
/// value holds is the rule's error, naming the prefix (`prefix`).
fn add_ranges(
    ranges: &mut Vec<PortRange>,
    more: Vec<PortRange>,
    src: &Src,
    file: &str,
    prefix: impl FnOnce() -> String,
) -> Result<(), PolicyError> {
    ranges.extend(more);
    normalize(ranges);
    if ranges.len() > MAX_PORT_RANGES {
        return Err(src.error(
            file,
            format!(
                "too many port ranges apply to {} (at most {MAX_PORT_RANGES}): \
                 merge rules or ports",
                prefix()
            ),
        ));
    }
    Ok(())
}

/// A map value holding `ranges` (at most `MAX_PORT_RANGES`, as checked by
/// the caller).
fn value_of(ranges: &[PortRange], cidr_rule: u32) -> NetValue {
    let mut value = NetValue {
        count: rule_u32(ranges.len().min(MAX_PORT_RANGES)),
        cidr_rule,
        ..NetValue::default()
    };
    for (dst, src) in value.ranges.iter_mut().zip(ranges) {
        *dst = *src;
    }
    value
}

/// Gives each well-known DNS-over-HTTPS resolver of the family that some
/// rule covers an entry of its own, holding only the ranges of rules whose
/// CIDR is exactly that address: a broader rule (`0.0.0.0/0` port 443)
/// would otherwise reach it, and the agent could resolve past guardd.
/// Without such a rule the entry allows nothing and names `RULE_DOH`.
fn doh_entries(
    rules: &[NetRule],
    index: &dyn Fn(usize) -> usize,
    v6: bool,
    entries: &mut Vec<(u128, u32, NetValue)>,
    file: &str,
) -> Result<(), PolicyError> {
    let bits = if v6 { 128 } else { 32 };
    for (_, ip) in host::DOH_RESOLVERS {
        let addr = match ip {
            IpAddr::V4(a) if !v6 => u128::from(u32::from(a)),
            IpAddr::V6(a) if v6 => u128::from(a),
            _ => continue,
        };
        let inets = rules.iter().enumerate().filter_map(|(i, r)| match &r.kind {
            Kind::Inet(n) if n.v6 == v6 => Some((i, r, n)),
            _ => None,
        });
        if !inets
            .clone()
            .any(|(_, _, n)| contains(n.addr, n.len, addr, bits, bits))
        {
            continue;
        }
        let mut ranges = Vec::new();
        let mut cidr_rule = RULE_DOH;
        for (i, r, n) in inets.filter(|(_, _, n)| n.len == bits && n.addr == addr) {
            let rule = rule_u16(index(i), &r.src, file)?;
            if cidr_rule == RULE_DOH {
                cidr_rule = u32::from(rule);
            }
            add_ranges(
                &mut ranges,
                inet_ranges(n, rule, true),
                &r.src,
                file,
                || prefix_text(v6, addr, bits),
            )?;
        }
        let value = value_of(&ranges, cidr_rule);
        match entries
            .iter_mut()
            .find(|(a, len, _)| *a == addr && *len == bits)
        {
            Some(e) => e.2 = value,
            None => entries.push((addr, bits, value)),
        }
    }
    entries.sort_unstable_by_key(|(addr, len, _)| (*addr, *len));
    Ok(())
}

/// One value per distinct prefix of the family, holding the ranges of every
/// rule whose CIDR contains the prefix.
///
/// Sorted by (address, length), every prefix comes after the prefixes that
/// contain it, and prefixes form a tree; a stack of the enclosing prefixes
/// of the current one therefore carries their already-folded ranges, and
/// each prefix costs one merge with its parent: O(n log n) overall.
///
/// Rule `i` of `rules` is numbered `index(i)` (the `listen` rules are
/// numbered after the `allow` rules, grants after both); `dot_cut` cuts the DNS-over-TLS port out of ranges
/// that span it ([`host::cut_dot`]).
fn fold(
    rules: &[NetRule],
    index: &dyn Fn(usize) -> usize,
    v6: bool,
    dot_cut: bool,
    file: &str,
) -> Result<Vec<(u128, u32, NetValue)>, PolicyError> {
    let bits = if v6 { 128 } else { 32 };
    let mut order: Vec<(u128, u32, usize)> = rules
        .iter()
        .enumerate()
        .filter_map(|(i, r)| match &r.kind {
            Kind::Inet(n) if n.v6 == v6 => Some((n.addr, n.len, i)),
            _ => None,
        })
        .collect();
    order.sort_unstable();

    let mut out = Vec::new();
    let mut stack: Vec<(u128, u32, Vec<PortRange>)> = Vec::new();
    for group in order.chunk_by(|a, b| a.0 == b.0 && a.1 == b.1) {
        let Some(&(addr, len, first)) = group.first() else {
            continue;
        };
        while let Some((top, top_len, _)) = stack.last() {
            if contains(*top, *top_len, addr, len, bits) {
                break;
            }
            stack.pop();
        }
        let mut ranges = stack.last().map(|t| t.2.clone()).unwrap_or_default();
        for &(_, _, ri) in group {
            let Some(NetRule {
                kind: Kind::Inet(inet),
                src,
                ..
            }) = rules.get(ri)
            else {
                continue;
            };
            let rule = rule_u16(index(ri), src, file)?;
            add_ranges(
                &mut ranges,
                inet_ranges(inet, rule, dot_cut),
                src,
                file,
                || prefix_text(v6, addr, len),
            )?;
        }
        out.push((addr, len, value_of(&ranges, rule_u32(index(first)))));
        stack.push((addr, len, ranges));
    }
    Ok(out)
}

/// Merges ranges of the same protocols and flags that overlap or touch,
/// keeping the lowest rule index, and sorts the result by (lo, hi). Flags
/// keep ranges apart so that a host rule's range stays marked
/// `RANGE_NAME` beside an address rule's range for the same ports.
pub(crate) fn normalize(ranges: &mut Vec<PortRange>) {
    ranges.sort_unstable_by_key(|r| (r.protos, r.flags, r.lo, r.hi, r.rule));
    let mut merged: Vec<PortRange> = Vec::with_capacity(ranges.len());
    for r in ranges.drain(..) {
        if let Some(last) = merged.last_mut()
            && last.protos == r.protos
            && last.flags == r.flags
            && u32::from(r.lo) <= u32::from(last.hi) + 1
        {
            last.hi = last.hi.max(r.hi);
            last.rule = last.rule.min(r.rule);
            continue;
        }
        merged.push(r);
    }
    merged.sort_unstable_by_key(|r| (r.lo, r.hi, r.protos, r.flags, r.rule));
    *ranges = merged;
}

#[cfg(test)]
mod tests {
    use super::super::Policy;
    use super::*;
    use std::time::Instant;

    const HEAD: &str = "[policy]\nname = \"t\"\n[network]\nallow = [\n";

    /// Rules start on line 5.
    fn parse(rules: &str) -> Result<Policy, PolicyError> {
        Policy::parse(&format!("{HEAD}{rules}\n]\n"), "p.toml")
    }

    fn plan(rules: &str) -> NetPlan {
        parse(rules).unwrap().network
    }

    fn err(rules: &str) -> String {
        parse(rules).unwrap_err().to_string()
    }

    fn ranges(v: &NetValue) -> Vec<(u16, u16, u8, u16)> {
        v.ranges[..v.count as usize]
            .iter()
            .map(|r| (r.lo, r.hi, r.protos, r.rule))
            .collect()
    }

    const BOTH: u8 = PROTO_TCP | PROTO_UDP;

    #[test]
    fn brief_example_compiles() {
        let p = parse(
            r#"{ cidr = "10.20.0.0/16", ports = [443, "8000-8100"], protocol = "tcp" },
  { cidr = "2001:db8::/32", ports = [53], protocol = "udp" },
  { cidr = "127.0.0.1/32", ports = [8080] },
  { cidr = "127.0.0.1" },
  { unix = "/run/app/api.sock" },
  { unix = "@my-abstract" },"#,
        )
        .unwrap();
        let n = &p.network;
        assert_eq!(n.v4.len(), 2);
        let (len, addr, v) = &n.v4[0];
        assert_eq!((*len, *addr), (16, [10, 20, 0, 0]));
        assert_eq!(
            ranges(v),
            vec![(443, 443, PROTO_TCP, 0), (8000, 8100, PROTO_TCP, 0)]
        );
        assert_eq!(v.cidr_rule, 0);
        assert_eq!(v.ranges[2], PortRange::default());
        // Both rules name 127.0.0.1/32; the second allows every port.
        let (len, addr, v) = &n.v4[1];
        assert_eq!((*len, *addr), (32, [127, 0, 0, 1]));
        assert_eq!(ranges(v), vec![(0, 65535, BOTH, 2)]);
        assert_eq!(v.cidr_rule, 2);
        assert_eq!(n.v6.len(), 1);
        assert_eq!(n.v6[0].0, 32);
        assert_eq!(&n.v6[0].1[..4], &[0x20, 0x01, 0x0d, 0xb8]);
        assert_eq!(ranges(&n.v6[0].2), vec![(53, 53, PROTO_UDP, 1)]);
        assert_eq!(n.unix.len(), 2);
        assert_eq!(&n.unix[0].0[..18], b"/run/app/api.sock\0");
        assert_eq!(n.unix[0].1, 4);
        assert_eq!(&n.unix[1].0[..13], b"\0my-abstract\0");
        assert_eq!(n.unix[1].1, 5);
        assert_eq!(n.unix_rule("@my-abstract"), Some(5));
        let texts: Vec<_> = p
            .rules
            .iter()
            .map(|r| (r.id.as_str(), r.text.as_str()))
            .collect();
        assert_eq!(
            texts,
            [
                ("network.allow[0]", "10.20.0.0/16 tcp 443,8000-8100"),
                ("network.allow[1]", "2001:db8::/32 udp 53"),
                ("network.allow[2]", "127.0.0.1/32 tcp+udp 8080"),
                ("network.allow[3]", "127.0.0.1/32 tcp+udp any"),
                ("network.allow[4]", "unix /run/app/api.sock"),
                ("network.allow[5]", "unix @my-abstract"),
            ]
        );
    }

    #[test]
    fn enclosing_rules_fold_into_longer_prefixes() {
        let n = plan(
            r#"{ cidr = "10.0.0.0/8", ports = [443], protocol = "tcp" },
               { cidr = "10.1.0.0/16", ports = [80], protocol = "tcp" },
               { cidr = "10.1.2.3", ports = [22], protocol = "tcp" },
               { cidr = "11.0.0.0/8", ports = [1] },"#,
        );
        let get = |ip: &str| n.lookup(ip.parse().unwrap());
        let v = get("10.1.2.3").unwrap();
        assert_eq!(
            ranges(v),
            vec![
                (22, 22, PROTO_TCP, 2),
                (80, 80, PROTO_TCP, 1),
                (443, 443, PROTO_TCP, 0)
            ]
        );
        assert_eq!(v.cidr_rule, 2);
        let v = get("10.1.9.9").unwrap();
        assert_eq!(
            ranges(v),
            vec![(80, 80, PROTO_TCP, 1), (443, 443, PROTO_TCP, 0)]
        );
        assert_eq!(port_allowed(v, 443, PROTO_TCP), Some(0));
        assert_eq!(port_allowed(v, 443, PROTO_UDP), None);
        assert_eq!(
            ranges(get("10.2.0.0").unwrap()),
            vec![(443, 443, PROTO_TCP, 0)]
        );
        // A sibling /8 after the nested ones must not inherit their ports.
        assert_eq!(ranges(get("11.9.9.9").unwrap()), vec![(1, 1, BOTH, 3)]);
        assert!(get("12.0.0.1").is_none());
        // Mapped IPv6 addresses are judged as IPv4.
        assert!(get("::ffff:10.1.2.3").is_some());
    }

    #[test]
    fn default_route_applies_everywhere() {
        let n = plan(
            r#"{ cidr = "0.0.0.0/0", ports = [53], protocol = "udp" },
               { cidr = "::/0", ports = [53], protocol = "udp" },
               { cidr = "192.168.0.0/16", ports = [80] },
               { cidr = "fd00::/8", ports = [80] },"#,
        );
        let v = n.lookup("192.168.1.1".parse().unwrap()).unwrap();
        assert_eq!(ranges(v), vec![(53, 53, PROTO_UDP, 0), (80, 80, BOTH, 2)]);
        let v = n.lookup("fd00::1".parse().unwrap()).unwrap();
        assert_eq!(ranges(v), vec![(53, 53, PROTO_UDP, 1), (80, 80, BOTH, 3)]);
        assert_eq!(n.v4[0].0, 0);
        assert_eq!(n.v6[0].0, 0);
    }

    #[test]
    fn ranges_merge_when_same_protocols_overlap_or_touch() {
        let n = plan(
            r#"{ cidr = "10.0.0.0/8", ports = ["100-200", 201, "150-160", 300], protocol = "tcp" },
               { cidr = "10.0.0.0/8", ports = ["90-99", 300], protocol = "tcp" },
               { cidr = "10.0.0.0/8", ports = ["100-200"], protocol = "udp" },
               { cidr = "10.0.0.0/8", ports = ["100-200"] },
               { cidr = "10.0.0.0/8", ports = ["100-200"] },"#,
        );
        assert_eq!(n.v4.len(), 1);
        assert_eq!(
            ranges(&n.v4[0].2),
            vec![
                (90, 201, PROTO_TCP, 0),
                (100, 200, PROTO_UDP, 2),
                (100, 200, BOTH, 3),
                (300, 300, PROTO_TCP, 0),
            ]
        );
        assert_eq!(n.v4[0].2.cidr_rule, 0);
    }

    #[test]
    fn too_many_ranges_points_at_the_overflowing_rule() {
        let ports: Vec<String> = (0..20).map(|i| (1000 + 2 * i).to_string()).collect();
        let ports = ports.join(", ");
        let e = err(&format!(
            "{{ cidr = \"10.0.0.0/8\", ports = [{ports}] }},\n\
             {{ cidr = \"10.0.0.0/8\", ports = [1] }},\n\
             {{ cidr = \"10.1.0.0/16\", ports = [{ports}], protocol = \"udp\" }},"
        ));
        assert_eq!(
            e,
            "p.toml:7:1: too many port ranges apply to 10.1.0.0/16 (at most 32): merge rules or ports"
        );
        let many: Vec<String> = (0..33).map(|i| (1000 + 2 * i).to_string()).collect();
        let e = err(&format!(
            "{{ cidr = \"10.0.0.0/8\", ports = [{}] }},",
            many.join(",")
        ));
        assert!(
            e.starts_with("p.toml:5:1: too many port ranges apply to 10.0.0.0/8"),
            "{e}"
        );
        // 32 ranges exactly are fine.
        let ok: Vec<String> = (0..32).map(|i| (1000 + 2 * i).to_string()).collect();
        let n = plan(&format!(
            "{{ cidr = \"10.0.0.0/8\", ports = [{}] }},",
            ok.join(",")
        ));
        assert_eq!(n.v4[0].2.count, 32);
    }

    #[test]
    fn cidr_errors() {
        assert_eq!(
            err(r#"{ cidr = "10.0.0.300/8" }"#),
            "p.toml:5:10: invalid CIDR \"10.0.0.300/8\": expected an IPv4 or IPv6 address with optional /prefix"
        );
        assert_eq!(
            err(r#"{ cidr = "10.0.0.0/33" }"#),
            "p.toml:5:10: prefix /33 is longer than 32 bits for IPv4"
        );
        assert_eq!(
            err(r#"{ cidr = "::/129" }"#),
            "p.toml:5:10: prefix /129 is longer than 128 bits for IPv6"
        );
        assert_eq!(
            err(r#"{ cidr = "10.20.1.0/16" }"#),
            "p.toml:5:10: CIDR 10.20.1.0/16 has host bits set; did you mean 10.20.0.0/16?"
        );
        assert!(err(r#"{ cidr = "2001:db8::1/32" }"#).ends_with("did you mean 2001:db8::/32?"));
        for bad in [
            "10.0.0.0/",
            "10.0.0.0/+8",
            "10.0.0.0/8/8",
            "10.0.0.0/0008",
            "x",
            "",
            "fe80::1%eth0",
        ] {
            let e = err(&format!("{{ cidr = {bad:?} }}"));
            assert!(e.contains("invalid CIDR"), "{bad}: {e}");
        }
        let e = err(r#"{ cidr = "::ffff:10.0.0.0/104" }"#);
        assert!(
            e.contains("IPv4-mapped") && e.contains("10.0.0.0/8 instead"),
            "{e}"
        );
        let e = err(r#"{ cidr = "::ffff:1.2.3.4" }"#);
        assert!(e.contains("1.2.3.4/32 instead"), "{e}");
        // ::/80 contains the mapped range but is not only mapped addresses.
        assert!(parse(r#"{ cidr = "::/80" }"#).is_ok());
    }

    #[test]
    fn port_and_protocol_errors() {
        let cases = [
            (
                r#"ports = [70000]"#,
                "port 70000 out of range: expected 1-65535",
            ),
            (r#"ports = [0]"#, "port 0 out of range: expected 1-65535"),
            (r#"ports = [-1]"#, "port -1 out of range: expected 1-65535"),
            (
                r#"ports = ["9000-8000"]"#,
                "port range 9000-8000 is reversed",
            ),
            (
                r#"ports = ["0-80"]"#,
                "port 0 out of range: expected 1-65535",
            ),
            (
                r#"ports = ["80-70000"]"#,
                "port 70000 out of range: expected 1-65535",
            ),
            (
                r#"ports = ["80-"]"#,
                "invalid port range \"80-\": expected \"LOW-HIGH\" with ports 1-65535",
            ),
            (r#"ports = ["-80"]"#, "invalid port range \"-80\""),
            (r#"ports = ["1-2-3"]"#, "invalid port range \"1-2-3\""),
            (r#"ports = ["http"]"#, "invalid port \"http\""),
            (r#"ports = [1.5]"#, "invalid port 1.5"),
            (r#"ports = [true]"#, "invalid port true"),
            (r#"ports = []"#, "empty port list"),
        ];
        for (ports, want) in cases {
            let e = err(&format!(r#"{{ cidr = "1.2.3.4", {ports} }}"#));
            assert!(e.contains(want), "{ports}: {e}");
            assert!(e.starts_with("p.toml:5:"), "{e}");
        }
        assert_eq!(
            err(r#"{ cidr = "1.2.3.4", ports = [1, 99999] }"#),
            "p.toml:5:33: port 99999 out of range: expected 1-65535"
        );
        assert_eq!(
            err(r#"{ cidr = "1.2.3.4", protocol = "icmp" }"#),
            "p.toml:5:32: unknown protocol \"icmp\": expected \"tcp\" or \"udp\" (omit for both)"
        );
        assert!(parse(r#"{ cidr = "1.2.3.4", ports = ["443", "1-65535"] }"#).is_ok());
    }

    #[test]
    fn rule_shape_errors() {
        assert!(
            err(r#"{ cidr = "1.2.3.4", unix = "/x" }"#)
                .starts_with("p.toml:5:28: a network rule takes either")
        );
        assert!(
            err(r#"{ }"#).starts_with("p.toml:5:1: network rule without `cidr`, `host` or `unix`")
        );
        assert!(
            err(r#"{ unix = "/x", ports = [1] }"#)
                .starts_with("p.toml:5:24: a unix rule takes no `ports`")
        );
        assert!(err(r#"{ unix = "/x", protocol = "tcp" }"#).contains("no `protocol`"));
        assert!(err(r#"{ unix = "x.sock" }"#).contains("neither an absolute path nor \"@name\""));
        assert!(err(r#"{ unix = "@" }"#).contains("is empty"));
        assert!(err(r#"{ unix = "/a\u0000b" }"#).contains("NUL"));
        let long = format!("/{}", "a".repeat(106));
        assert!(parse(&format!("{{ unix = {long:?} }}")).is_ok());
        let e = err(&format!("{{ unix = \"{long}b\" }}"));
        assert!(e.contains("108 bytes long, longer than 107"), "{e}");
        let abs = format!("@{}", "a".repeat(107));
        let n = plan(&format!("{{ unix = {abs:?} }}"));
        assert_eq!(n.unix[0].0[0], 0);
        assert_eq!(n.unix[0].0[107], b'a');
        assert!(err(&format!("{{ unix = \"{abs}b\" }}")).contains("longer than 107"));
        // Array-of-tables syntax works as well.
        let p = Policy::parse(
            "[policy]\nname = \"t\"\n[[network.allow]]\ncidr = \"1.2.3.4\"\n[[network.allow]]\nunix = \"@x\"\nports = [1]\n",
            "p.toml",
        );
        assert!(
            p.unwrap_err()
                .to_string()
                .starts_with("p.toml:7:9: a unix rule takes no `ports`")
        );
    }

    fn listen(rules: &str) -> Result<Policy, PolicyError> {
        Policy::parse(
            &format!(
                "[policy]\nname = \"t\"\n[network]\nallow = [ {{ cidr = \"10.0.0.0/8\" }} ]\nlisten = [\n{rules}\n]\n"
            ),
            "p.toml",
        )
    }

    #[test]
    fn listen_rules_compile_into_their_own_entries_numbered_after_allow() {
        let p = listen(
            r#"{ cidr = "127.0.0.1/32", ports = [8000], protocol = "tcp" },
               { cidr = "::/0", ports = ["9000-9001"] },
               { cidr = "0.0.0.0/0", protocol = "udp" },"#,
        )
        .unwrap();
        let n = &p.network;
        assert!(n.has_listen_rules());
        assert_eq!(n.v4.len(), 1);
        assert_eq!(n.listen4.len(), 2);
        assert_eq!(n.listen6.len(), 1);
        let ids: Vec<&str> = p.rules.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "network.allow[0]",
                "network.listen[0]",
                "network.listen[1]",
                "network.listen[2]"
            ]
        );
        let lo = n.listen_lookup("127.0.0.1".parse().unwrap()).unwrap();
        assert_eq!(port_allowed(lo, 8000, PROTO_TCP), Some(1));
        assert_eq!(port_allowed(lo, 8000, PROTO_UDP), Some(3));
        assert_eq!(port_allowed(lo, 8001, PROTO_TCP), None);
        // A rule without ports covers port 0 (the kernel picks the port).
        assert_eq!(port_allowed(lo, 0, PROTO_UDP), Some(3));
        assert_eq!(port_allowed(lo, 0, PROTO_TCP), None);
        // The wildcard is an address like any other: only 0.0.0.0/0 covers it.
        let any = n.listen_lookup("0.0.0.0".parse().unwrap()).unwrap();
        assert_eq!(port_allowed(any, 8000, PROTO_TCP), None);
        let v6 = n.listen_lookup("::".parse().unwrap()).unwrap();
        assert_eq!(port_allowed(v6, 9001, PROTO_TCP), Some(2));
        assert_eq!(v6.cidr_rule, 2);
        // Egress rules do not open anything inbound, nor the reverse.
        assert!(n.listen_lookup("10.1.2.3".parse().unwrap()).is_some());
        assert!(n.lookup("127.0.0.1".parse().unwrap()).is_none());
        let none = listen("").unwrap();
        assert!(!none.network.has_listen_rules());
    }

    #[test]
    fn listen_rule_errors() {
        let e = listen(r#"{ ports = [80] }"#).unwrap_err().to_string();
        assert!(
            e.starts_with("p.toml:6:1: listen rule without `cidr`"),
            "{e}"
        );
        let e = listen(r#"{ cidr = "127.0.0.1", unix = "/x" }"#)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("unknown key `unix` in a [network] listen rule"),
            "{e}"
        );
        let e = listen(r#"{ cidr = "127.0.0.1", ports = [0] }"#)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("p.toml:6:32: port 0 out of range"), "{e}");
        let e = listen(r#"{ cidr = "::ffff:127.0.0.1" }"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("127.0.0.1/32 instead"), "{e}");
    }

    #[test]
    fn duplicate_unix_keys_keep_the_first_rule() {
        let n = plan(r#"{ unix = "/a" }, { unix = "/b" }, { unix = "/a" },"#);
        assert_eq!(n.unix.len(), 2);
        assert_eq!(n.unix_rule("/a"), Some(0));
        assert_eq!(n.unix_rule("/b"), Some(1));
        assert_eq!(n.unix_rule("/c"), None);
    }

    #[test]
    fn too_many_rules_is_an_error() {
        let mut text = String::from(HEAD);
        for i in 0..=MAX_RULES {
            text.push_str(&format!("{{ unix = \"@{i}\" }},\n"));
        }
        text.push_str("]\n");
        let e = Policy::parse(&text, "p.toml").unwrap_err().to_string();
        assert_eq!(e, "p.toml:65540:1: too many network rules: at most 65535");
    }

    fn rule(v6: bool, addr: u128, len: u32, ports: Vec<(u16, u16)>, protos: u8) -> NetRule {
        let inet = Inet {
            v6,
            addr,
            len,
            ports,
            protos,
        };
        NetRule {
            id: String::new(),
            text: rule_text(&inet),
            src: Src {
                origin: Origin::Policy,
                loc: super::super::Location { line: 1, col: 1 },
                file: None,
            },
            kind: Kind::Inet(inet),
        }
    }

    #[test]
    fn ten_thousand_rules_compile_fast() {
        let mut rules = Vec::new();
        for i in 0..10_000u32 {
            let addr = (10 << 24) | ((i % 4) << 16) | (i + 1);
            rules.push(rule(false, u128::from(addr), 32, vec![(22, 22)], PROTO_TCP));
        }
        rules.push(rule(false, 10 << 24, 8, vec![(443, 443)], PROTO_TCP));
        for b in 0..4u32 {
            rules.push(rule(
                false,
                u128::from((10 << 24) | (b << 16)),
                16,
                vec![(8000 + b as u16, 8000 + b as u16)],
                PROTO_UDP,
            ));
        }
        let start = Instant::now();
        let (n, infos) = compile(&rules, &[], None, "p.toml").unwrap();
        let elapsed = start.elapsed();
        assert!(elapsed.as_millis() < 1000, "took {elapsed:?}");
        assert_eq!(infos.len(), 10_005);
        assert_eq!(n.v4.len(), 10_005);
        // 10.2.0.43 is rule 42, inside 10.2.0.0/16 (rule 10_003) and 10/8.
        let v = n.lookup("10.2.0.43".parse().unwrap()).unwrap();
        assert_eq!(
            ranges(v),
            vec![
                (22, 22, PROTO_TCP, 42),
                (443, 443, PROTO_TCP, 10_000),
                (8002, 8002, PROTO_UDP, 10_003)
            ]
        );
        assert_eq!(v.cidr_rule, 42);
        let v = n.lookup("10.3.200.1".parse().unwrap()).unwrap();
        assert_eq!(v.cidr_rule, 10_004);
        assert_eq!(
            ranges(v),
            vec![
                (443, 443, PROTO_TCP, 10_000),
                (8003, 8003, PROTO_UDP, 10_004)
            ]
        );
        let v = n.lookup("10.9.0.1".parse().unwrap()).unwrap();
        assert_eq!(v.cidr_rule, 10_000);
    }

    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// A few address "neighbourhoods" so that random prefixes overlap.
    fn random_addr(rng: &mut XorShift, v6: bool) -> u128 {
        let base: [u128; 3] = if v6 {
            [0x2001_0db8 << 96, 0xfd00 << 112, 0]
        } else {
            [0x0a00_0000, 0xc0a8_0000, 0x7f00_0000]
        };
        let bits = if v6 { 128 } else { 32 };
        let noise_bits = rng.below(12) as u32;
        let noise = u128::from(rng.next()) & ((1u128 << noise_bits) - 1);
        (base[rng.below(3) as usize] | noise) & mask(bits, bits)
    }

    fn random_ports(rng: &mut XorShift) -> Vec<(u16, u16)> {
        if rng.below(5) == 0 {
            return vec![(0, u16::MAX)];
        }
        (0..1 + rng.below(3))
            .map(|_| {
                let lo = 1 + rng.below(60) as u16;
                (lo, lo + rng.below(4) as u16)
            })
            .collect()
    }

    #[test]
    fn folded_lookup_matches_brute_force() {
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        let mut compared = 0;
        let mut sets = 0;
        for _ in 0..300 {
            let v6 = rng.below(2) == 0;
            let bits = if v6 { 128 } else { 32 };
            let rules: Vec<NetRule> = (0..1 + rng.below(12))
                .map(|_| {
                    let len = bits - rng.below(14) as u32;
                    let len = if rng.below(10) == 0 {
                        rng.below(u64::from(bits) + 1) as u32
                    } else {
                        len
                    };
                    let addr = random_addr(&mut rng, v6) & mask(len, bits);
                    let protos = [PROTO_TCP, PROTO_UDP, BOTH][rng.below(3) as usize];
                    rule(v6, addr, len, random_ports(&mut rng), protos)
                })
                .collect();
            let (n, _) = match compile(&rules, &[], None, "p.toml") {
                Ok(x) => x,
                Err(e) => {
                    assert!(e.message.contains("too many port ranges"), "{e}");
                    continue;
                }
            };
            sets += 1;
            for _ in 0..100 {
                let addr = random_addr(&mut rng, v6);
                let port = rng.below(70) as u16;
                let proto = if rng.below(2) == 0 {
                    PROTO_TCP
                } else {
                    PROTO_UDP
                };
                let ip = if v6 {
                    IpAddr::V6(Ipv6Addr::from(addr))
                } else {
                    IpAddr::V4(Ipv4Addr::from(low32(addr)))
                };
                let covering: Vec<usize> = rules
                    .iter()
                    .enumerate()
                    .filter(|(_, r)| matches!(&r.kind, Kind::Inet(i) if contains(i.addr, i.len, addr, bits, bits)))
                    .map(|(k, _)| k)
                    .collect();
                let brute = covering.iter().any(|&k| match &rules[k].kind {
                    Kind::Inet(i) => {
                        i.protos & proto != 0
                            && i.ports.iter().any(|&(lo, hi)| lo <= port && port <= hi)
                    }
                    Kind::Unix(_) | Kind::Host(_) => false,
                });
                let value = n.lookup(ip);
                assert_eq!(value.is_some(), !covering.is_empty());
                let allowed = value.and_then(|v| port_allowed(v, port, proto));
                assert_eq!(
                    allowed.is_some(),
                    brute,
                    "rules {:?} ip {ip} port {port} proto {proto}",
                    rules.iter().map(|r| &r.text).collect::<Vec<_>>()
                );
                if let Some(v) = value {
                    // Every rule the value names covers the address.
                    for r in &v.ranges[..v.count as usize] {
                        assert!(covering.contains(&usize::from(r.rule)));
                    }
                    assert!(covering.contains(&(v.cidr_rule as usize)));
                    assert!(
                        v.ranges[v.count as usize..]
                            .iter()
                            .all(|r| *r == PortRange::default())
                    );
                }
                compared += 1;
            }
        }
        assert!(sets > 250, "only {sets} rule sets compiled");
        assert!(compared > 25_000);
    }
}
