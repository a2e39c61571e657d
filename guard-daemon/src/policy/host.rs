//! Host-name rules: `{ host = "api.example.com", ports = [443] }`.
//!
//! A host rule allows the addresses that guardd's resolver for the agent
//! hands out for a name the pattern matches, on the rule's ports and
//! protocols, for as long as the answer lives. The patterns:
//!
//! - `api.example.com`: that name only;
//! - `*.example.com`: exactly one label in front (`a.example.com`, not
//!   `a.b.example.com`, not `example.com`);
//! - `**.example.com`: one label or more in front (not `example.com`).
//!
//! Names are compared as ASCII case-insensitive, without a trailing dot.
//!
//! Once a policy's DNS goes through guardd, two routes around the resolver
//! are closed in the static entries as well: DNS over TLS (port 853, see
//! [`DOT_PORT`]) and well-known DNS-over-HTTPS resolvers
//! ([`DOH_RESOLVERS`]).

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::Duration,
};

use guard_common::{PortRange, RANGE_NAME};

/// Longest name DNS carries in text form (without the trailing dot).
pub const MAX_NAME_LEN: usize = 253;
/// Longest label.
pub const MAX_LABEL_LEN: usize = 63;

/// The name pattern of a host rule, as [`HostPattern::parse`] reads it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HostPattern {
    /// The name itself (lower case, no trailing dot).
    Exact(String),
    /// `*.suffix`: exactly one label before `suffix`.
    OneLabel(String),
    /// `**.suffix`: one label or more before `suffix`.
    AnyDepth(String),
}

impl HostPattern {
    /// Parses a pattern as a policy writes it. The error says what is wrong
    /// in words a policy author can act on.
    pub fn parse(text: &str) -> Result<HostPattern, String> {
        let lower = text.to_ascii_lowercase();
        let t = lower.strip_suffix('.').unwrap_or(&lower);
        if t.parse::<IpAddr>().is_ok() {
            return Err(format!(
                "{text:?} is an address, not a host name: write {{ cidr = \"{t}/{}\" }} instead",
                if t.contains(':') { 128 } else { 32 }
            ));
        }
        let (pattern, suffix) = if let Some(s) = t.strip_prefix("**.") {
            (HostPattern::AnyDepth(s.to_owned()), s)
        } else if let Some(s) = t.strip_prefix("*.") {
            (HostPattern::OneLabel(s.to_owned()), s)
        } else {
            (HostPattern::Exact(t.to_owned()), t)
        };
        check_name(suffix).map_err(|why| format!("host {text:?}: {why}"))?;
        if !matches!(pattern, HostPattern::Exact(_)) && !suffix.contains('.') {
            return Err(format!(
                "host {text:?}: a wildcard needs at least two labels after it \
                 (\"*.example.com\"), not a whole top-level domain"
            ));
        }
        Ok(pattern)
    }

    /// Whether `name` (as [`normalize_name`] leaves it) is matched.
    pub fn matches(&self, name: &str) -> bool {
        match self {
            HostPattern::Exact(n) => name == n,
            HostPattern::OneLabel(s) => name
                .strip_suffix(s.as_str())
                .and_then(|head| head.strip_suffix('.'))
                .is_some_and(|label| !label.is_empty() && !label.contains('.')),
            HostPattern::AnyDepth(s) => name
                .strip_suffix(s.as_str())
                .and_then(|head| head.strip_suffix('.'))
                .is_some_and(|labels| !labels.is_empty() && !labels.starts_with('.')),
        }
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostPattern::Exact(n) => f.write_str(n),
            HostPattern::OneLabel(s) => write!(f, "*.{s}"),
            HostPattern::AnyDepth(s) => write!(f, "**.{s}"),
        }
    }
}

/// A name as a query carries it, made comparable: ASCII lower case, no
/// trailing dot. `None` for a name no pattern can match (empty labels,
/// bytes outside letters, digits, `-` and `_`, over-long labels or name).
pub fn normalize_name(name: &str) -> Option<String> {
    let lower = name.to_ascii_lowercase();
    let t = lower.strip_suffix('.').unwrap_or(&lower);
    check_name(t).ok()?;
    Some(t.to_owned())
}

/// Letters, digits, `-` and `_` (service labels such as `_dns`), labels of
/// 1 to 63 bytes, at most 253 bytes in all.
fn check_name(t: &str) -> Result<(), String> {
    if t.is_empty() {
        return Err("empty name".to_owned());
    }
    if t.len() > MAX_NAME_LEN {
        return Err(format!(
            "name is {} bytes long, at most {MAX_NAME_LEN}",
            t.len()
        ));
    }
    for label in t.split('.') {
        if label.is_empty() {
            return Err("empty label (two dots in a row, or a leading dot)".to_owned());
        }
        if label.len() > MAX_LABEL_LEN {
            return Err(format!(
                "label {label:?} is {} bytes long, at most {MAX_LABEL_LEN}",
                label.len()
            ));
        }
        if let Some(c) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
        {
            return Err(if c == '*' {
                "a wildcard is allowed only as the whole first label (\"*.\" or \"**.\")".to_owned()
            } else {
                format!("{c:?} is not allowed in a host name (letters, digits, '-' and '_')")
            });
        }
    }
    Ok(())
}

/// One host rule, compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostRule {
    /// Index of the rule in the plan's rule list (what `PortRange::rule`
    /// and the journal use).
    pub rule: u16,
    /// The names the rule allows.
    pub pattern: HostPattern,
    /// Inclusive port ranges.
    pub ports: Vec<(u16, u16)>,
    /// `PROTO_TCP` and/or `PROTO_UDP`.
    pub protos: u8,
}

impl HostRule {
    /// The ranges an address from an answer for this rule gets: its ports
    /// and protocols without [`DOT_PORT`] (unless listed alone), marked
    /// [`RANGE_NAME`] and numbered with the rule.
    pub fn ranges(&self) -> Vec<PortRange> {
        let mut out =
            super::net::port_ranges(&cut_dot(&self.ports), self.protos, RANGE_NAME, self.rule);
        super::net::normalize(&mut out);
        out
    }
}

/// DNS over TLS (RFC 7858), and DNS over QUIC (RFC 9250) on UDP. While the
/// agent's DNS goes through guardd, only a rule that lists this port by
/// itself (`ports = [853]`) reaches it: a rule for every port, or a range
/// spanning it, would otherwise let the agent resolve names past guardd.
pub const DOT_PORT: u16 = 853;

/// The port ranges a rule's `ports` give once DNS goes through guardd:
/// [`DOT_PORT`] is cut out of every range that spans it; a single-port item
/// `853` stays.
pub(crate) fn cut_dot(ports: &[(u16, u16)]) -> Vec<(u16, u16)> {
    let mut out = Vec::with_capacity(ports.len() + 1);
    for &(lo, hi) in ports {
        if lo == hi || !(lo..=hi).contains(&DOT_PORT) {
            out.push((lo, hi));
            continue;
        }
        if lo < DOT_PORT {
            out.push((lo, DOT_PORT - 1));
        }
        if hi > DOT_PORT {
            out.push((DOT_PORT + 1, hi));
        }
    }
    out
}

/// Well-known public DNS-over-HTTPS resolvers, with their operators. While
/// the agent's DNS goes through guardd, an address of this list that some
/// allow rule covers gets a static entry of its own that only rules naming
/// exactly that address (`/32`, `/128`) open: `0.0.0.0/0` with port 443
/// does not reach `1.1.1.1:443`. A known list, not a complete one: DNS over
/// HTTPS to any other server looks like any other HTTPS.
pub const DOH_RESOLVERS: [(&str, IpAddr); 18] = [
    ("Google", v4(8, 8, 8, 8)),
    ("Google", v4(8, 8, 4, 4)),
    ("Google", v6([0x2001, 0x4860, 0x4860, 0, 0, 0, 0, 0x8888])),
    ("Google", v6([0x2001, 0x4860, 0x4860, 0, 0, 0, 0, 0x8844])),
    ("Cloudflare", v4(1, 1, 1, 1)),
    ("Cloudflare", v4(1, 0, 0, 1)),
    (
        "Cloudflare",
        v6([0x2606, 0x4700, 0x4700, 0, 0, 0, 0, 0x1111]),
    ),
    (
        "Cloudflare",
        v6([0x2606, 0x4700, 0x4700, 0, 0, 0, 0, 0x1001]),
    ),
    ("Quad9", v4(9, 9, 9, 9)),
    ("Quad9", v4(149, 112, 112, 112)),
    ("Quad9", v6([0x2620, 0xfe, 0, 0, 0, 0, 0, 0xfe])),
    ("Quad9", v6([0x2620, 0xfe, 0, 0, 0, 0, 0, 0x9])),
    ("OpenDNS", v4(208, 67, 222, 222)),
    ("OpenDNS", v4(208, 67, 220, 220)),
    ("OpenDNS", v6([0x2620, 0x119, 0x35, 0, 0, 0, 0, 0x35])),
    ("OpenDNS", v6([0x2620, 0x119, 0x53, 0, 0, 0, 0, 0x53])),
    ("AdGuard", v4(94, 140, 14, 14)),
    ("AdGuard", v4(94, 140, 15, 15)),
];

const fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

const fn v6(s: [u16; 8]) -> IpAddr {
    IpAddr::V6(Ipv6Addr::new(
        s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7],
    ))
}

/// A range of addresses a DNS answer may point an allowed name at although
/// it is loopback, link-local or private (`[network.dns] answers_allowed`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddrRange {
    /// An IPv6 range (else IPv4).
    pub v6: bool,
    /// Network address, right-aligned (IPv4 in the low 32 bits).
    pub addr: u128,
    /// Prefix length.
    pub len: u32,
}

impl fmt::Display for AddrRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&super::net::prefix_text(self.v6, self.addr, self.len))
    }
}

impl AddrRange {
    /// Whether `ip` is in the range (an IPv4-mapped address as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let (v6, x, bits) = match ip.to_canonical() {
            IpAddr::V4(a) => (false, u128::from(u32::from(a)), 32),
            IpAddr::V6(a) => (true, u128::from(a), 128),
        };
        v6 == self.v6 && super::net::contains(self.addr, self.len, x, bits, bits)
    }
}

/// What the agent's resolver is told by the policy. Present when the
/// policy has host rules or a `[network.dns]` table: then every DNS query
/// of the agent goes to guardd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsPlan {
    /// Every host rule, in policy order.
    pub hosts: Vec<HostRule>,
    /// An answer's addresses stay allowed for at least this long, however
    /// short its TTL.
    pub ttl_floor: Duration,
    /// ... and at most this long; the TTL the agent sees is cut to it, so
    /// a caching client never uses an address after guard has dropped it.
    pub ttl_ceiling: Duration,
    /// Addresses kept per name (the rest of an answer is dropped).
    pub max_addresses: usize,
    /// Ranges an allowed name may resolve into although they are
    /// loopback, link-local or private.
    pub answers_allowed: Vec<AddrRange>,
}

impl Default for DnsPlan {
    /// No host rules, and the defaults of every `[network.dns]` key.
    fn default() -> Self {
        DnsPlan {
            hosts: Vec::new(),
            ttl_floor: DEFAULT_TTL_FLOOR,
            ttl_ceiling: DEFAULT_TTL_CEILING,
            max_addresses: DEFAULT_MAX_ADDRESSES,
            answers_allowed: Vec::new(),
        }
    }
}

pub const DEFAULT_TTL_FLOOR: Duration = Duration::from_secs(30);
pub const DEFAULT_TTL_CEILING: Duration = Duration::from_secs(3600);
pub const DEFAULT_MAX_ADDRESSES: usize = 64;
/// Highest `max_addresses` a policy may ask for.
pub const MAX_ADDRESSES_LIMIT: usize = 1024;
/// Highest `ttl_floor`/`ttl_ceiling`: the largest TTL DNS defines
/// (RFC 2181, 8), so that every setting is a TTL an answer can carry.
pub const MAX_TTL: Duration = Duration::from_secs(i32::MAX as u64);

impl DnsPlan {
    /// The host rules matching `name` (normalized), in policy order.
    pub fn rules_for<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a HostRule> + 'a {
        self.hosts.iter().filter(move |h| h.pattern.matches(name))
    }

    /// Whether an answer may point an allowed name at `ip`.
    pub fn answer_allowed(&self, ip: IpAddr) -> bool {
        !is_internal(ip) || self.answers_allowed.iter().any(|r| r.contains(ip))
    }
}

/// Loopback, link-local (the cloud metadata address among them), private
/// (RFC 1918, RFC 6598 shared, IPv6 unique local), unspecified, multicast,
/// broadcast, reserved and benchmarking addresses, and IPv6 addresses that
/// embed one of them (NAT64, 6to4; Teredo always): where a rebinding answer would point an allowed
/// name inside the host or its network.
pub fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => {
            let o = a.octets();
            a.is_loopback()
                || a.is_private()
                || a.is_link_local()
                || a.is_unspecified()
                || a.is_multicast()
                || a.is_broadcast()
                || o[0] == 0
                || (o[0] == 100 && (o[1] & 0xc0) == 64)
                || (o[0] == 192 && o[1] == 0 && o[2] == 0)
                || (o[0] == 198 && (o[1] & 0xfe) == 18)
                || o[0] >= 240
        }
        IpAddr::V6(a) => {
            if let Some(v4) = a.to_ipv4_mapped() {
                return is_internal(IpAddr::V4(v4));
            }
            let s = a.segments();
            let o = a.octets();
            // Addresses that carry an IPv4 address a translator or relay
            // delivers to: NAT64 (64:ff9b::/96, 64:ff9b:1::/48) and 6to4
            // (2002::/16) are judged as that IPv4 address; Teredo
            // (2001::/32) as internal outright (its client address is
            // obfuscated and its relay is anyone's).
            if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0] {
                return is_internal(IpAddr::V4(std::net::Ipv4Addr::new(
                    o[12], o[13], o[14], o[15],
                )));
            }
            if s[0] == 0x64 && s[1] == 0xff9b && s[2] == 1 {
                return true;
            }
            if s[0] == 0x2002 {
                return is_internal(IpAddr::V4(std::net::Ipv4Addr::new(o[2], o[3], o[4], o[5])));
            }
            if s[0] == 0x2001 && s[1] == 0 {
                return true;
            }
            a.is_loopback()
                || a.is_unspecified()
                || a.is_multicast()
                || (s[0] & 0xffc0) == 0xfe80
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfec0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> HostPattern {
        HostPattern::parse(s).unwrap()
    }

    #[test]
    fn exact_names_match_themselves_only() {
        let h = p("API.Example.com.");
        assert_eq!(h, HostPattern::Exact("api.example.com".into()));
        assert!(h.matches("api.example.com"));
        assert!(!h.matches("x.api.example.com"));
        assert!(!h.matches("example.com"));
    }

    #[test]
    fn one_star_is_one_label_and_two_are_any_depth() {
        let one = p("*.example.com");
        assert!(one.matches("a.example.com"));
        assert!(!one.matches("a.b.example.com"));
        assert!(!one.matches("example.com"));
        assert!(!one.matches("aexample.com"));
        let any = p("**.example.com");
        assert!(any.matches("a.example.com"));
        assert!(any.matches("a.b.c.example.com"));
        assert!(!any.matches("example.com"));
        assert!(!any.matches("badexample.com"));
        assert!(!any.matches(".example.com"));
    }

    #[test]
    fn bad_patterns_say_why() {
        for (bad, why) in [
            ("10.0.0.1", "cidr"),
            ("::1", "cidr"),
            ("a..b", "empty label"),
            ("a.*.b", "wildcard"),
            ("*", "wildcard"),
            ("*.com", "top-level"),
            ("a b.com", "not allowed"),
            ("", "empty name"),
        ] {
            let e = HostPattern::parse(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
        let long = format!("{}.com", "a".repeat(64));
        assert!(
            HostPattern::parse(&long)
                .unwrap_err()
                .contains("at most 63")
        );
    }

    #[test]
    fn names_normalize_or_are_refused() {
        assert_eq!(
            normalize_name("WWW.Example.COM.").as_deref(),
            Some("www.example.com")
        );
        assert_eq!(
            normalize_name("_dns.resolver.arpa").as_deref(),
            Some("_dns.resolver.arpa")
        );
        assert_eq!(normalize_name("a\0b.com"), None);
        assert_eq!(normalize_name("a..com"), None);
        assert_eq!(normalize_name(""), None);
    }

    #[test]
    fn internal_addresses() {
        for a in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "::",
        ] {
            assert!(is_internal(a.parse().unwrap()), "{a}");
        }
        for a in [
            "64:ff9b::a9fe:a9fe",
            "64:ff9b::7f00:1",
            "2002:a9fe:a9fe::1",
            "2001:0:4136:e378::1",
            "192.0.0.8",
            "198.18.0.1",
            "240.0.0.1",
        ] {
            assert!(is_internal(a.parse().unwrap()), "{a}");
        }
        for a in [
            "93.184.216.34",
            "2606:4700::1",
            "100.128.0.1",
            "64:ff9b::5db8:d822",
            "2002:5db8:d822::1",
        ] {
            assert!(!is_internal(a.parse().unwrap()), "{a}");
        }
    }

    #[test]
    fn answers_allowed_opens_only_its_range() {
        let plan = DnsPlan {
            hosts: vec![],
            ttl_floor: DEFAULT_TTL_FLOOR,
            ttl_ceiling: DEFAULT_TTL_CEILING,
            max_addresses: DEFAULT_MAX_ADDRESSES,
            answers_allowed: vec![AddrRange {
                v6: false,
                addr: u128::from(u32::from_be_bytes([127, 0, 0, 0])),
                len: 8,
            }],
        };
        assert!(plan.answer_allowed("127.0.0.21".parse().unwrap()));
        assert!(plan.answer_allowed("::ffff:127.0.0.21".parse().unwrap()));
        assert!(!plan.answer_allowed("169.254.169.254".parse().unwrap()));
        assert!(!plan.answer_allowed("::1".parse().unwrap()));
        assert!(plan.answer_allowed("93.184.216.34".parse().unwrap()));
    }
}
