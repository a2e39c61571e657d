//! Host rules and `[network.dns]` through the whole compiler: parsing with
//! positions, the DNS plan, `name_value`, and the DNS-over-TLS and
//! DNS-over-HTTPS closures of the static entries.

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use guard_common::{
    MAX_PORT_RANGES, NO_RULE, NetValue, PROTO_TCP, PROTO_UDP, PortRange, RANGE_NAME, RULE_DOH,
};

use super::host::{self, AddrRange, DnsPlan, HostPattern, HostRule};
use super::parse::{Doc, RawFile};
use super::{NameValueError, NetPlan, Origin, Policy, PolicyError, port_allowed};

const BOTH: u8 = PROTO_TCP | PROTO_UDP;

/// Rules start on line 5; `tail` follows the `allow` list.
fn parse_with(rules: &str, tail: &str) -> Result<Policy, PolicyError> {
    Policy::parse(
        &format!("[policy]\nname = \"t\"\n[network]\nallow = [\n{rules}\n]\n{tail}"),
        "p.toml",
    )
}

fn plan(rules: &str) -> NetPlan {
    parse_with(rules, "").unwrap().network
}

fn err(rules: &str) -> String {
    parse_with(rules, "").unwrap_err().to_string()
}

fn dns(table: &str) -> Result<DnsPlan, String> {
    parse_with("", &format!("[network.dns]\n{table}"))
        .map(|p| p.network.dns.unwrap())
        .map_err(|e| e.to_string())
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// (lo, hi, protos, flags, rule) of every range in use.
fn ranges(v: &NetValue) -> Vec<(u16, u16, u8, u8, u16)> {
    v.ranges[..v.count as usize]
        .iter()
        .map(|r| (r.lo, r.hi, r.protos, r.flags, r.rule))
        .collect()
}

const N: u8 = RANGE_NAME;

#[test]
fn host_rules_share_the_allow_numbering_and_make_a_dns_plan() {
    let p = parse_with(
        r#"{ cidr = "10.0.0.0/8", ports = [22], protocol = "tcp" },
  { host = "API.Example.com.", ports = [443, "8000-8001"], protocol = "tcp" },
  { unix = "@x" },
  { host = "*.cdn.example.net", protocol = "udp" },
  { host = "**.example.org" },"#,
        "",
    )
    .unwrap();
    let texts: Vec<_> = p
        .rules
        .iter()
        .map(|r| (r.id.as_str(), r.text.as_str()))
        .collect();
    assert_eq!(
        texts,
        [
            ("network.allow[0]", "10.0.0.0/8 tcp 22"),
            ("network.allow[1]", "host api.example.com tcp 443,8000-8001"),
            ("network.allow[2]", "unix @x"),
            ("network.allow[3]", "host *.cdn.example.net udp any"),
            ("network.allow[4]", "host **.example.org tcp+udp any"),
        ]
    );
    let d = p.network.dns.as_ref().unwrap();
    assert_eq!(
        d.hosts,
        [
            HostRule {
                rule: 1,
                pattern: HostPattern::Exact("api.example.com".into()),
                ports: vec![(443, 443), (8000, 8001)],
                protos: PROTO_TCP,
            },
            HostRule {
                rule: 3,
                pattern: HostPattern::OneLabel("cdn.example.net".into()),
                ports: vec![(0, u16::MAX)],
                protos: PROTO_UDP,
            },
            HostRule {
                rule: 4,
                pattern: HostPattern::AnyDepth("example.org".into()),
                ports: vec![(0, u16::MAX)],
                protos: BOTH,
            },
        ]
    );
    // The defaults of every [network.dns] key.
    assert_eq!(d.ttl_floor, host::DEFAULT_TTL_FLOOR);
    assert_eq!(d.ttl_ceiling, host::DEFAULT_TTL_CEILING);
    assert_eq!(d.max_addresses, host::DEFAULT_MAX_ADDRESSES);
    assert!(d.answers_allowed.is_empty());
    // Host rules have no static entries; the address rule is untouched.
    assert_eq!(p.network.v4.len(), 1);
    assert!(p.network.v6.is_empty());
    assert_eq!(p.network.unix_rule("@x"), Some(2));
}

#[test]
fn wildcards_decide_which_rules_a_name_gets() {
    let n = plan(
        r#"{ host = "*.example.com", ports = [443] },
  { host = "**.example.com", ports = [80] },
  { host = "example.com", ports = [8443] },"#,
    );
    let d = n.dns.as_ref().unwrap();
    let rules = |name: &str| -> Vec<u16> { d.rules_for(name).map(|h| h.rule).collect() };
    assert_eq!(rules("a.example.com"), [0, 1]);
    assert_eq!(rules("a.b.example.com"), [1]);
    assert_eq!(rules("example.com"), [2]);
    assert!(rules("badexample.com").is_empty());
    assert!(rules("example.com.evil.net").is_empty());
}

#[test]
fn host_rule_errors_point_at_the_value() {
    assert_eq!(
        err(r#"{ host = "a..example.com" }"#),
        "p.toml:5:10: host \"a..example.com\": empty label (two dots in a row, or a leading dot)"
    );
    assert_eq!(
        err(r#"{ host = "*.com", ports = [443] }"#),
        "p.toml:5:10: host \"*.com\": a wildcard needs at least two labels after it \
         (\"*.example.com\"), not a whole top-level domain"
    );
    let e = err(r#"{ ports = [1], host = "10.1.2.3" }"#);
    assert!(
        e.starts_with("p.toml:5:23: \"10.1.2.3\" is an address, not a host name")
            && e.contains("{ cidr = \"10.1.2.3/32\" }"),
        "{e}"
    );
    assert!(err(r#"{ host = "a.*.example.com" }"#).contains("whole first label"));
    assert_eq!(
        err(r#"{ cidr = "10.0.0.0/8", host = "a.example.com" }"#),
        "p.toml:5:31: a network rule takes either `host` or `cidr`, not both"
    );
    assert_eq!(
        err(r#"{ host = "a.example.com", unix = "/x" }"#),
        "p.toml:5:10: a network rule takes either `host` or `unix`, not both"
    );
    // Ports and protocol as for cidr rules, at the item.
    assert_eq!(
        err(r#"{ host = "a.example.com", ports = [443, 0] }"#),
        "p.toml:5:41: port 0 out of range: expected 1-65535"
    );
    assert_eq!(
        err(r#"{ host = "a.example.com", protocol = "icmp" }"#),
        "p.toml:5:38: unknown protocol \"icmp\": expected \"tcp\" or \"udp\" (omit for both)"
    );
    assert!(err(r#"{ host = "a.example.com", ports = [] }"#).contains("empty port list"));
    assert!(err(r#"{ host = 5 }"#).contains("expected a string"));
    // A listen rule names a local address.
    let e = Policy::parse(
        "[policy]\nname = \"t\"\n[network]\nlisten = [{ host = \"localhost\", ports = [80] }]\n",
        "p.toml",
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.starts_with(
            "p.toml:4:20: a listen rule takes no `host`: listen rules name local addresses"
        ),
        "{e}"
    );
    // Every faulty rule is reported.
    let errs = Policy::parse_all(
        "[policy]\nname = \"t\"\n[network]\nallow = [{ host = \"a b\" }, { host = \"*\" }]\n",
        "p.toml",
    )
    .unwrap_err();
    assert_eq!(errs.len(), 2, "{errs:?}");
}

#[test]
fn unknown_keys_in_host_rules_and_the_dns_table() {
    let e = err(r#"{ host = "a.example.com", name = "x" }"#);
    assert_eq!(
        e,
        "p.toml:5:27: unknown key `name` in a [network] allow rule; \
         expected one of: cidr, host, unix, ports, protocol"
    );
    let e = dns("ttl = 5\n").unwrap_err();
    assert_eq!(
        e,
        "p.toml:8:1: unknown key `ttl` in [network.dns]; \
         expected one of: ttl_floor, ttl_ceiling, max_addresses, answers_allowed"
    );
    // A listen rule never suggests `host`.
    let e = Policy::parse(
        "[policy]\nname = \"t\"\n[network]\nlisten = [{ cidr = \"::1\", port = 1 }]\n",
        "p.toml",
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.ends_with("in a [network] listen rule; expected one of: cidr, ports, protocol"),
        "{e}"
    );
}

#[test]
fn the_dns_table_is_validated() {
    let d = dns("ttl_floor = 0\nttl_ceiling = 600\nmax_addresses = 1024\n\
         answers_allowed = [\"127.0.0.0/8\", \"::1/128\", \"10.1.0.0/16\"]\n")
    .unwrap();
    assert_eq!(d.ttl_floor, Duration::ZERO);
    assert_eq!(d.ttl_ceiling, Duration::from_secs(600));
    assert_eq!(d.max_addresses, 1024);
    assert_eq!(
        d.answers_allowed,
        [
            AddrRange {
                v6: false,
                addr: 0x7f00_0000,
                len: 8
            },
            AddrRange {
                v6: true,
                addr: 1,
                len: 128
            },
            AddrRange {
                v6: false,
                addr: 0x0a01_0000,
                len: 16
            },
        ]
    );
    let shown: Vec<String> = d.answers_allowed.iter().map(ToString::to_string).collect();
    assert_eq!(shown, ["127.0.0.0/8", "::1/128", "10.1.0.0/16"]);
    assert!(d.answer_allowed(ip("10.1.2.3")));
    assert!(!d.answer_allowed(ip("10.2.0.1")));
    // A floor as high as the ceiling is fine.
    assert!(dns("ttl_floor = 3600\n").is_ok());
    for (table, want) in [
        (
            "ttl_floor = -1\n",
            "p.toml:8:13: invalid ttl_floor -1: expected whole seconds, 0-2147483647",
        ),
        (
            "ttl_floor = \"30s\"\n",
            "p.toml:8:13: invalid ttl_floor \"30s\": expected whole seconds, 0-2147483647",
        ),
        (
            "ttl_ceiling = 2147483648\n",
            "p.toml:8:15: invalid ttl_ceiling 2147483648: expected whole seconds, 0-2147483647",
        ),
        (
            "ttl_ceiling = 1.5\n",
            "p.toml:8:15: invalid ttl_ceiling 1.5: expected whole seconds, 0-2147483647",
        ),
        (
            "ttl_ceiling = 0\n",
            "p.toml:8:15: invalid ttl_ceiling 0: expected at least 1 second",
        ),
        (
            "ttl_ceiling = 10\nttl_floor = 20\n",
            "p.toml:9:13: ttl_floor 20 s is above ttl_ceiling 10 s: the floor must not exceed \
             the ceiling",
        ),
        (
            "ttl_floor = 7200\n",
            "p.toml:8:13: ttl_floor 7200 s is above ttl_ceiling 3600 s (the default): the floor \
             must not exceed the ceiling",
        ),
        (
            "ttl_ceiling = 10\n",
            "p.toml:8:15: ttl_floor 30 s (the default) is above ttl_ceiling 10 s: the floor \
             must not exceed the ceiling",
        ),
        (
            "max_addresses = 0\n",
            "p.toml:8:17: invalid max_addresses 0: expected a number 1-1024",
        ),
        (
            "max_addresses = 1025\n",
            "p.toml:8:17: invalid max_addresses 1025: expected a number 1-1024",
        ),
        (
            "answers_allowed = [\"127.0.0.1/8\"]\n",
            "p.toml:8:20: CIDR 127.0.0.1/8 has host bits set; did you mean 127.0.0.0/8?",
        ),
        (
            "answers_allowed = [\"::1/128\", \"::ffff:127.0.0.1\"]\n",
            "p.toml:8:31: CIDR ::ffff:127.0.0.1 is an IPv4-mapped IPv6 range, which the kernel \
             judges as IPv4: write the IPv4 CIDR 127.0.0.1/32 instead",
        ),
        (
            "answers_allowed = \"127.0.0.0/8\"\n",
            "p.toml:8:19: invalid type: string \"127.0.0.0/8\", expected a sequence",
        ),
    ] {
        assert_eq!(dns(table).unwrap_err(), want, "{table}");
    }
    // One mistake, one error: a bad floor is not also compared.
    let errs = Policy::parse_all(
        "[policy]\nname = \"t\"\n[network.dns]\nttl_floor = 99999999999\nttl_ceiling = 0\n\
         max_addresses = true\nanswers_allowed = [\"x\"]\n",
        "p.toml",
    )
    .unwrap_err();
    assert_eq!(errs.len(), 4, "{errs:#?}");
}

#[test]
fn a_dns_table_alone_routes_dns_through_guardd() {
    let p = parse_with(
        r#"{ cidr = "0.0.0.0/0", ports = [443] },"#,
        "[network.dns]\nmax_addresses = 8\n",
    )
    .unwrap();
    let d = p.network.dns.as_ref().unwrap();
    assert!(d.hosts.is_empty());
    assert_eq!(d.max_addresses, 8);
    // ... and with it the DNS-over-HTTPS closure.
    let v = p.network.lookup(ip("8.8.8.8")).unwrap();
    assert_eq!(v.count, 0);
    assert_eq!(v.cidr_rule, RULE_DOH);
}

fn with_files(files: &[(&str, &str)], policy: &str) -> Result<Policy, Vec<PolicyError>> {
    Policy::parse_all_with(policy, "/p/pol.toml", Path::new("/p"), &|p: &Path| {
        files
            .iter()
            .find(|(k, _)| Path::new(k) == p)
            .map(|(_, t)| t.to_string())
            .ok_or_else(|| "No such file or directory (os error 2)".to_owned())
    })
}

#[test]
fn include_files_may_hold_host_rules_but_not_the_dns_table() {
    let files = [
        (
            "/p/team.toml",
            "[network]\nallow = [{ host = \"pypi.org\", ports = [443], protocol = \"tcp\" }]\n",
        ),
        (
            "/p/dns.toml",
            "[network]\nallow = []\n[network.dns]\nttl_floor = 1\n",
        ),
        ("/p/bad.toml", "[network]\nallow = [{ host = \"x..y\" }]\n"),
    ];
    let p = with_files(
        &files,
        "[policy]\nname = \"t\"\ninclude = [\"./team.toml\"]\n[network]\n\
         allow = [{ host = \"files.pythonhosted.org\", ports = [443] }]\n",
    )
    .unwrap();
    let ids: Vec<(&str, &str)> = p
        .rules
        .iter()
        .map(|r| (r.id.as_str(), r.text.as_str()))
        .collect();
    assert_eq!(
        ids,
        [
            ("./team.toml network.allow[0]", "host pypi.org tcp 443"),
            (
                "network.allow[0]",
                "host files.pythonhosted.org tcp+udp 443"
            ),
        ]
    );
    let hosts: Vec<(u16, String)> = p
        .network
        .dns
        .as_ref()
        .unwrap()
        .hosts
        .iter()
        .map(|h| (h.rule, h.pattern.to_string()))
        .collect();
    assert_eq!(
        hosts,
        [
            (0, "pypi.org".to_owned()),
            (1, "files.pythonhosted.org".to_owned())
        ]
    );
    let one = |inc: &str| -> Vec<String> {
        with_files(
            &files,
            &format!("[policy]\nname = \"t\"\ninclude = [\"{inc}\"]\n"),
        )
        .unwrap_err()
        .iter()
        .map(ToString::to_string)
        .collect()
    };
    assert_eq!(
        one("./dns.toml"),
        [
            "/p/dns.toml:3:1: a [network.dns] table belongs in the policy file itself, not in an \
          include file: it sets the resolver of the whole agent"
        ]
    );
    assert_eq!(
        one("./bad.toml"),
        ["/p/bad.toml:2:19: host \"x..y\": empty label (two dots in a row, or a leading dot)"]
    );
}

#[test]
fn a_base_may_hold_host_rules_but_not_the_dns_table() {
    let read = |text: &str| {
        let doc = Doc::new(text, "base:x".into());
        let raw = doc.parse_base().unwrap();
        let (mut out, mut listen, mut dns, mut errs) = (vec![], vec![], None, vec![]);
        super::net::validate(
            &doc,
            raw.network.unwrap(),
            Origin::Base("x"),
            &mut out,
            &mut listen,
            &mut dns,
            &mut errs,
        );
        (out, dns, errs)
    };
    let (out, dns, errs) = read("[network.dns]\nttl_floor = 1\n");
    assert!(out.is_empty() && dns.is_none());
    assert_eq!(
        errs.iter().map(ToString::to_string).collect::<Vec<_>>(),
        ["base:x:1:1: base \"x\" holds a [network.dns] table: only the policy file may"]
    );
    let (out, _, errs) = read("[network]\nallow = [{ host = \"deb.debian.org\", ports = [80] }]\n");
    assert!(errs.is_empty(), "{errs:?}");
    assert_eq!(out[0].id, "base:x network.allow[0]");
    assert_eq!(out[0].text, "host deb.debian.org tcp+udp 80");
    // The policy document refuses the table nowhere else: it is the policy's.
    let raw: RawFile = Doc::new("[network.dns]\n", "p".into())
        .parse_policy()
        .unwrap();
    assert!(raw.network.unwrap().dns.is_some());
}

#[test]
fn normalize_keeps_name_ranges_apart() {
    let r = |lo, hi, protos, flags, rule| PortRange {
        lo,
        hi,
        protos,
        flags,
        rule,
    };
    let mut v = vec![
        r(443, 443, PROTO_TCP, N, 5),
        r(400, 500, PROTO_TCP, 0, 1),
        r(444, 450, PROTO_TCP, N, 3),
        r(443, 443, PROTO_UDP, N, 4),
        r(501, 600, PROTO_TCP, 0, 2),
    ];
    super::net::normalize(&mut v);
    let got: Vec<_> = v
        .iter()
        .map(|r| (r.lo, r.hi, r.protos, r.flags, r.rule))
        .collect();
    assert_eq!(
        got,
        [
            (400, 600, PROTO_TCP, 0, 1),
            (443, 443, PROTO_UDP, N, 4),
            (443, 450, PROTO_TCP, N, 3),
        ]
    );
}

#[test]
fn host_rule_ranges_are_marked_and_cut() {
    let h = |ports: Vec<(u16, u16)>| HostRule {
        rule: 7,
        pattern: HostPattern::Exact("a.example.com".into()),
        ports,
        protos: PROTO_TCP,
    };
    let got = |h: HostRule| -> Vec<(u16, u16, u8, u8, u16)> {
        h.ranges()
            .iter()
            .map(|r| (r.lo, r.hi, r.protos, r.flags, r.rule))
            .collect()
    };
    assert_eq!(
        got(h(vec![(0, u16::MAX)])),
        [(0, 852, PROTO_TCP, N, 7), (854, 65535, PROTO_TCP, N, 7)]
    );
    assert_eq!(
        got(h(vec![(443, 443), (853, 853), (8000, 8000), (440, 450)])),
        [
            (440, 450, PROTO_TCP, N, 7),
            (853, 853, PROTO_TCP, N, 7),
            (8000, 8000, PROTO_TCP, N, 7)
        ]
    );
    assert_eq!(got(h(vec![(853, 854)])), [(854, 854, PROTO_TCP, N, 7)]);
    assert_eq!(got(h(vec![(800, 853)])), [(800, 852, PROTO_TCP, N, 7)]);
}

#[test]
fn name_value_folds_the_covering_address_rules() {
    let n = plan(
        r#"{ cidr = "10.0.0.0/8", ports = [22], protocol = "tcp" },
  { host = "a.example.com", ports = [443], protocol = "tcp" },
  { host = "*.example.com", ports = [443, 80], protocol = "tcp" },
  { cidr = "10.1.0.0/16", ports = [443], protocol = "tcp" },
  { host = "udp.example.com", ports = [4000], protocol = "udp" },
  { cidr = "192.0.2.7", ports = [25] },"#,
    );
    // Inside 10.1.0.0/16 and 10.0.0.0/8: their ranges stay, the host
    // rule's 443 beside the address rule's 443, marked.
    let v = n.name_value(ip("10.1.2.3"), &[1, 4]).unwrap();
    assert_eq!(
        ranges(&v),
        [
            (22, 22, PROTO_TCP, 0, 0),
            (443, 443, PROTO_TCP, 0, 3),
            (443, 443, PROTO_TCP, N, 1),
            (4000, 4000, PROTO_UDP, N, 4),
        ]
    );
    assert_eq!(v.cidr_rule, 3);
    assert_eq!(port_allowed(&v, 22, PROTO_TCP), Some(0));
    assert_eq!(port_allowed(&v, 4000, PROTO_UDP), Some(4));
    assert_eq!(port_allowed(&v, 4000, PROTO_TCP), None);
    assert!(
        v.ranges[v.count as usize..]
            .iter()
            .all(|r| *r == PortRange::default())
    );
    // Two host rules on the same ports merge to the lower index.
    let v = n.name_value(ip("93.184.216.34"), &[2, 1]).unwrap();
    assert_eq!(
        ranges(&v),
        [(80, 80, PROTO_TCP, N, 2), (443, 443, PROTO_TCP, N, 1)]
    );
    // No static entry: the first host rule names the address.
    assert_eq!(v.cidr_rule, 2);
    // Mapped addresses are IPv4; an IPv6 address sees only v6 entries.
    let m = n.name_value(ip("::ffff:10.9.9.9"), &[1]).unwrap();
    assert_eq!(m.cidr_rule, 0);
    assert_eq!(ranges(&m)[0], (22, 22, PROTO_TCP, 0, 0));
    let v6 = n.name_value(ip("2001:db8::1"), &[4]).unwrap();
    assert_eq!(ranges(&v6), [(4000, 4000, PROTO_UDP, N, 4)]);
    // An exact static entry comes back from `exact`; a covering one does not.
    assert_eq!(n.exact(ip("192.0.2.7")).unwrap().cidr_rule, 5);
    assert_eq!(n.exact(ip("::ffff:192.0.2.7")).unwrap().cidr_rule, 5);
    assert!(n.exact(ip("10.1.2.3")).is_none());
    assert!(n.exact(ip("::1")).is_none());
    let v = n.name_value(ip("192.0.2.7"), &[1]).unwrap();
    assert_eq!(v.cidr_rule, 5);
    // Errors.
    assert_eq!(
        n.name_value(ip("10.1.2.3"), &[0]),
        Err(NameValueError::NotHostRule(0))
    );
    assert_eq!(
        n.name_value(ip("10.1.2.3"), &[1, 99]),
        Err(NameValueError::NotHostRule(99))
    );
    assert_eq!(
        n.name_value(ip("10.1.2.3"), &[]),
        Err(NameValueError::NoRules(ip("10.1.2.3")))
    );
    assert_eq!(
        NameValueError::NotHostRule(0).to_string(),
        "rule 0 is not a host rule of this policy"
    );
    // Without host rules, no index is a host rule.
    let plain = plan(r#"{ cidr = "10.0.0.0/8" },"#);
    assert_eq!(
        plain.name_value(ip("10.1.2.3"), &[0]),
        Err(NameValueError::NotHostRule(0))
    );
}

#[test]
fn name_value_refuses_more_ranges_than_an_entry_holds() {
    let ports: Vec<String> = (0..MAX_PORT_RANGES)
        .map(|i| (1000 + 2 * i).to_string())
        .collect();
    let n = plan(&format!(
        "{{ cidr = \"10.0.0.0/8\", ports = [{}], protocol = \"tcp\" }},\n\
         {{ host = \"a.example.com\", ports = [1001], protocol = \"tcp\" }},\n\
         {{ host = \"b.example.com\", ports = [1000], protocol = \"tcp\" }},",
        ports.join(", ")
    ));
    assert_eq!(
        n.name_value(ip("10.0.0.1"), &[1]),
        Err(NameValueError::TooManyRanges {
            ip: ip("10.0.0.1"),
            count: MAX_PORT_RANGES + 1
        })
    );
    // The same port as an address rule's is still a range of its own.
    assert!(n.name_value(ip("10.0.0.1"), &[2]).is_err());
    assert!(n.name_value(ip("11.0.0.1"), &[1, 2]).is_ok());
}

#[test]
fn dot_is_cut_from_rules_that_do_not_name_it() {
    let host = r#"{ host = "a.example.com", ports = [443] },"#;
    let n = plan(&format!(
        r#"{{ cidr = "0.0.0.0/0" }},
  {{ cidr = "10.0.0.0/8", ports = ["800-900"], protocol = "tcp" }},
  {{ cidr = "10.1.0.0/16", ports = [853], protocol = "tcp" }},
  {{ cidr = "::/0", ports = ["853-854"] }},
  {host}"#
    ));
    let v = n.lookup(ip("192.0.2.1")).unwrap();
    assert_eq!(ranges(v), [(0, 852, BOTH, 0, 0), (854, 65535, BOTH, 0, 0)]);
    assert_eq!(port_allowed(v, 853, PROTO_TCP), None);
    assert_eq!(port_allowed(v, 853, PROTO_UDP), None);
    let v = n.lookup(ip("10.2.0.1")).unwrap();
    assert_eq!(port_allowed(v, 853, PROTO_TCP), None);
    assert_eq!(port_allowed(v, 852, PROTO_TCP), Some(0));
    // Named by itself, 853 stays (merged with the /8's touching ranges,
    // so named by the lower rule, as touching ranges always are).
    let v = n.lookup(ip("10.1.0.1")).unwrap();
    assert!(port_allowed(v, 853, PROTO_TCP).is_some());
    assert_eq!(port_allowed(v, 853, PROTO_UDP), None);
    let v = n.lookup(ip("2001:db8::1")).unwrap();
    assert_eq!(ranges(v), [(854, 854, BOTH, 0, 3)]);
    // Listen rules are not egress: nothing is cut there.
    let p = parse_with(host, "listen = [{ cidr = \"127.0.0.1/32\" }]\n").unwrap();
    let v = p.network.listen_lookup(ip("127.0.0.1")).unwrap();
    assert_eq!(port_allowed(v, 853, PROTO_TCP), Some(1));
}

#[test]
fn doh_resolvers_need_a_rule_naming_them() {
    let n = plan(
        r#"{ cidr = "0.0.0.0/0", ports = [443], protocol = "tcp" },
  { cidr = "1.1.1.1/32", ports = [443], protocol = "tcp" },
  { cidr = "1.1.1.1/32", ports = [53] },
  { cidr = "2606:4700::/32", ports = [443] },
  { host = "a.example.com", ports = [443] },"#,
    );
    // Covered by 0.0.0.0/0 only: an entry of its own that allows nothing.
    for a in [
        "8.8.8.8",
        "8.8.4.4",
        "9.9.9.9",
        "149.112.112.112",
        "1.0.0.1",
        "94.140.15.15",
    ] {
        let v = n.lookup(ip(a)).unwrap();
        assert_eq!((v.count, v.cidr_rule), (0, RULE_DOH), "{a}");
        assert_eq!(port_allowed(v, 443, PROTO_TCP), None, "{a}");
        assert_eq!(n.exact(ip(a)), Some(v), "{a}");
    }
    // Named exactly: that rule only, not the /0's ranges.
    let v = n.lookup(ip("1.1.1.1")).unwrap();
    assert_eq!(
        ranges(v),
        [(53, 53, BOTH, 0, 2), (443, 443, PROTO_TCP, 0, 1)]
    );
    assert_eq!(v.cidr_rule, 1);
    // Other addresses keep the /0.
    let v = n.lookup(ip("93.184.216.34")).unwrap();
    assert_eq!(port_allowed(v, 443, PROTO_TCP), Some(0));
    // IPv6: covered resolvers get an entry, uncovered ones none.
    let v = n.lookup(ip("2606:4700:4700::1111")).unwrap();
    assert_eq!((v.count, v.cidr_rule), (0, RULE_DOH));
    assert_eq!(n.v6.len(), 3);
    assert!(n.lookup(ip("2001:4860:4860::8888")).is_none());
    // 0.0.0.0/0, and the ten IPv4 resolvers (1.1.1.1 among them).
    assert_eq!(n.v4.len(), 11);
    // Still sorted by (address, length).
    let keys: Vec<_> = n.v4.iter().map(|(len, a, _)| (*a, *len)).collect();
    let mut sorted = keys.clone();
    sorted.sort_unstable();
    assert_eq!(keys, sorted);
    // A host rule for a resolver's name opens it, on its own ports.
    let v = n.name_value(ip("8.8.8.8"), &[4]).unwrap();
    assert_eq!(ranges(&v), [(443, 443, BOTH, N, 4)]);
    assert_eq!(v.cidr_rule, RULE_DOH);
    // A rule that covers no resolver adds no entry.
    let n = plan(
        r#"{ cidr = "10.0.0.0/8" },
  { host = "a.example.com" },"#,
    );
    assert_eq!(n.v4.len(), 1);
    assert!(n.v6.is_empty());
}

#[test]
fn without_host_rules_nothing_changes() {
    let rules = r#"{ cidr = "0.0.0.0/0" },
  { cidr = "::/0", ports = ["800-900"] },
  { cidr = "1.1.1.1/32", ports = [443] },
  { unix = "@x" },"#;
    let n = plan(rules);
    assert!(n.dns.is_none());
    assert_eq!(n.v4.len(), 2);
    assert_eq!(n.v6.len(), 1);
    let v = n.lookup(ip("8.8.8.8")).unwrap();
    assert_eq!(ranges(v), [(0, 65535, BOTH, 0, 0)]);
    assert_eq!(v.cidr_rule, 0);
    let v = n.lookup(ip("1.1.1.1")).unwrap();
    assert_eq!(port_allowed(v, 853, PROTO_TCP), Some(0));
    assert_eq!(port_allowed(v, 80, PROTO_TCP), Some(0));
    let v = n.lookup(ip("2606:4700:4700::1111")).unwrap();
    assert_eq!(ranges(v), [(800, 900, BOTH, 0, 1)]);
    // The same rules with a host rule appended differ only where the brief
    // says: DoT cut, DoH entries, and the plan.
    let with = plan(&format!("{rules}\n{{ host = \"a.example.com\" }},"));
    assert!(with.dns.is_some());
    assert_ne!(with.v4, n.v4);
    assert_eq!(with.unix, n.unix);
    // An empty policy has no plan, and no value for any address.
    let empty = Policy::parse("[policy]\nname = \"t\"\n", "p").unwrap();
    assert_eq!(empty.network, NetPlan::default());
    assert_eq!(NetValue::default().cidr_rule, NO_RULE);
}

#[test]
fn the_docs_example_compiles() {
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/policy.md")).unwrap();
    let section = doc.split("## Host names").nth(1).unwrap();
    let block = section.split("```toml\n").nth(1).unwrap();
    let block = block.split("```").next().unwrap();
    let p = Policy::parse(&format!("[policy]\nname = \"doc\"\n{block}"), "doc.toml").unwrap();
    let d = p.network.dns.as_ref().unwrap();
    assert_eq!(d.hosts.len(), 3);
    assert_eq!(d.ttl_ceiling, Duration::from_secs(300));
    assert!(d.answer_allowed(ip("10.20.3.4")));
    assert!(!d.answer_allowed(ip("10.21.3.4")));
    let v = p.network.name_value(ip("10.20.3.4"), &[0]).unwrap();
    assert_eq!(
        ranges(&v),
        [(443, 443, PROTO_TCP, N, 0), (5432, 5432, PROTO_TCP, 0, 3)]
    );
}
