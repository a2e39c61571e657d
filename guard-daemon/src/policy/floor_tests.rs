//! [`check_within`] on compiled policies: what is within the floor, and
//! each way a policy can be wider, with the line that names it.

use std::net::Ipv6Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use guard_common::{NetValue, PROTO_TCP, PROTO_UDP, PortRange};

use super::host::{AddrRange, DnsPlan, HostPattern, HostRule};
use super::{
    Access, FsPlan, FsRule, Mode, NetPlan, Origin, Plan, Policy, ProcPlan, RuleInfo, UserSpec,
    Vars, check_within,
};

fn vars() -> Vars {
    Vars {
        workdir: "/home/u/proj".into(),
        home: "/home/u".into(),
        tmp: "/tmp/agent".into(),
    }
}

fn compile(text: &str) -> Plan {
    Policy::parse(text, "p.toml")
        .unwrap_or_else(|e| panic!("{e}\n{text}"))
        .compile(&vars())
        .unwrap_or_else(|e| panic!("{e}\n{text}"))
}

/// The widenings of `client` under `floor` (empty: within).
fn check(floor: &str, client: &str) -> Vec<String> {
    widenings(&compile(floor), &compile(client))
}

fn widenings(floor: &Plan, client: &Plan) -> Vec<String> {
    match check_within(floor, client) {
        Ok(()) => Vec::new(),
        Err(e) => {
            assert!(!e.widenings.is_empty());
            e.widenings
        }
    }
}

/// A policy of `allow` rules (and what `tail` adds after the list).
fn net(allow: &str, tail: &str) -> String {
    format!("[policy]\nname = \"t\"\n[network]\nallow = [\n{allow}\n]\n{tail}")
}

fn one(lines: Vec<String>) -> String {
    assert_eq!(lines.len(), 1, "{lines:#?}");
    lines.into_iter().next().unwrap_or_default()
}

const FLOOR: &str = r#"
[policy]
name = "node-floor"
include = ["base"]

[network]
allow = [
  { cidr = "10.0.0.0/8", ports = [443, "8000-8100"], protocol = "tcp" },
  { cidr = "10.20.0.0/16", ports = [53], protocol = "udp" },
  { cidr = "2001:db8::/32", ports = [443] },
  { host = "**.example.com", ports = [443], protocol = "tcp" },
  { host = "api.other.org", ports = [80, 443], protocol = "tcp" },
  { unix = "/run/app/api.sock" },
]
listen = [
  { cidr = "127.0.0.1/32", ports = ["8000-8999"], protocol = "tcp" },
  { cidr = "::1/128", ports = ["8000-8999"], protocol = "tcp" },
]

[network.dns]
ttl_floor = 30
ttl_ceiling = 600
max_addresses = 16
answers_allowed = ["10.20.0.0/16", "fd00::/8"]

[filesystem]
read = ["{workdir}", "/usr/share"]
write = ["{workdir}/out", "{tmp}"]
exec = ["/usr/bin"]

[process]
max_processes = 64
memory = "1G"
cpu = 2
capabilities = ["CAP_NET_BIND_SERVICE", "CAP_CHOWN"]
inotify = true
"#;

#[test]
fn identical_policy_is_within() {
    assert_eq!(check(FLOOR, FLOOR), Vec::<String>::new());
    let with_bases = "[policy]\nname = \"b\"\ninclude = [\"base\", \"shell\", \"python\", \"git\"]\n\
                      [filesystem]\nwrite = [\"{workdir}\"]\n";
    assert_eq!(check(with_bases, with_bases), Vec::<String>::new());
}

#[test]
fn narrowing_is_within() {
    let client = r#"
[policy]
name = "workload"
include = ["base"]

[network]
allow = [
  { cidr = "10.1.0.0/16", ports = [443], protocol = "tcp" },
  { cidr = "10.2.3.4", ports = ["8000-8010"], protocol = "tcp" },
  { cidr = "10.20.30.0/24", ports = [53], protocol = "udp" },
  { cidr = "2001:db8:1::/48", ports = [443], protocol = "udp" },
  { host = "api.example.com", ports = [443], protocol = "tcp" },
  { host = "*.x.example.com", ports = [443], protocol = "tcp" },
  { host = "**.y.example.com", ports = [443], protocol = "tcp" },
  { host = "API.other.org", ports = [80], protocol = "tcp" },
  { unix = "/run/app/api.sock" },
]
listen = [{ cidr = "127.0.0.1/32", ports = [8080], protocol = "tcp" }]

[network.dns]
ttl_floor = 10
ttl_ceiling = 300
max_addresses = 4
answers_allowed = ["10.20.1.0/24"]

[filesystem]
read = ["{workdir}/src"]
write = ["{tmp}/x", "{workdir}/out/logs"]
exec = ["/usr/bin/env"]

[process]
max_processes = 8
memory = "512M"
cpu = 0.5
capabilities = ["CAP_CHOWN"]
"#;
    assert_eq!(check(FLOOR, client), Vec::<String>::new());
    // Nothing at all but the limits and a [filesystem] table.
    let bare = "[policy]\nname = \"bare\"\n[filesystem]\n\
                [process]\nmax_processes = 64\nmemory = \"1G\"\ncpu = 2\n";
    assert_eq!(check(FLOOR, bare), Vec::<String>::new());
}

#[test]
fn a_wider_range_is_named_with_the_floor_rules_inside_it() {
    let line = one(check(
        &net(
            r#"{ cidr = "10.1.0.0/16", ports = [443], protocol = "tcp" }"#,
            "",
        ),
        &net(
            r#"{ cidr = "10.0.0.0/8", ports = [443], protocol = "tcp" }"#,
            "",
        ),
    ));
    assert_eq!(
        line,
        "network.allow[0] 10.0.0.0/8 tcp 443: wider than the floor: 10.0.0.0/8 except \
         10.1.0.0/16 tcp 443: no floor rule covers these addresses (the floor allows \
         network.allow[0] 10.1.0.0/16 tcp 443)"
    );
    // Nothing of the floor inside it.
    let line = one(check(
        &net(
            r#"{ cidr = "10.1.0.0/16", ports = [443], protocol = "tcp" }"#,
            "",
        ),
        &net(
            r#"{ cidr = "192.168.0.0/16", ports = [443], protocol = "tcp" }"#,
            "",
        ),
    ));
    assert!(
        line.ends_with("192.168.0.0/16 tcp 443: no floor rule covers these addresses"),
        "{line}"
    );
}

#[test]
fn more_ports_or_another_protocol_are_wider() {
    let floor = net(
        r#"{ cidr = "10.0.0.0/8", ports = [443], protocol = "tcp" }"#,
        "",
    );
    assert_eq!(
        one(check(
            &floor,
            &net(
                r#"{ cidr = "10.1.0.0/16", ports = [443, 8443], protocol = "tcp" }"#,
                ""
            )
        )),
        "network.allow[0] 10.1.0.0/16 tcp 443,8443: wider than the floor: 10.1.0.0/16 tcp 8443: \
         the floor allows only tcp 443 there (network.allow[0] 10.0.0.0/8 tcp 443)"
    );
    let line = one(check(
        &floor,
        &net(r#"{ cidr = "10.1.0.0/16", ports = [443] }"#, ""),
    ));
    assert!(
        line.contains(": 10.1.0.0/16 udp 443: the floor allows only tcp 443 there"),
        "{line}"
    );
    // Every port, both protocols.
    let line = one(check(&floor, &net(r#"{ cidr = "10.9.9.9" }"#, "")));
    assert!(
        line.contains("10.9.9.9/32 tcp 0-442,444-65535, udp any:"),
        "{line}"
    );
}

#[test]
fn a_range_split_across_floor_rules_is_covered() {
    let c = |s: &str| net(s, "");
    // Addresses split in two halves.
    let halves = c(r#"{ cidr = "10.0.0.0/9", ports = [443], protocol = "tcp" },
        { cidr = "10.128.0.0/9", ports = [443], protocol = "tcp" }"#);
    let all = c(r#"{ cidr = "10.0.0.0/8", ports = [443], protocol = "tcp" }"#);
    assert_eq!(check(&halves, &all), Vec::<String>::new());
    // Ports split between an enclosing and an inner rule.
    let ports = c(
        r#"{ cidr = "10.0.0.0/8", ports = ["1-100"], protocol = "tcp" },
        { cidr = "10.1.0.0/16", ports = ["101-200"], protocol = "tcp" }"#,
    );
    assert_eq!(
        check(
            &ports,
            &c(r#"{ cidr = "10.1.2.0/24", ports = ["50-150"], protocol = "tcp" }"#)
        ),
        Vec::<String>::new()
    );
    let line = one(check(
        &ports,
        &c(r#"{ cidr = "10.0.0.0/8", ports = ["50-150"], protocol = "tcp" }"#),
    ));
    assert!(
        line.contains(
            "10.0.0.0/8 except 10.1.0.0/16 tcp 101-150: the floor allows only tcp 1-100 there"
        ),
        "{line}"
    );
    // A quarter missing.
    let three = c(r#"{ cidr = "10.0.0.0/9", ports = [443], protocol = "tcp" },
        { cidr = "10.128.0.0/10", ports = [443], protocol = "tcp" }"#);
    let line = one(check(&three, &all));
    assert!(
        line.contains(
            "10.0.0.0/8 except 10.0.0.0/9, 10.128.0.0/10 tcp 443: no floor rule covers these \
             addresses (the floor allows network.allow[0] 10.0.0.0/9 tcp 443, network.allow[1] \
             10.128.0.0/10 tcp 443)"
        ),
        "{line}"
    );
    // IPv6 halves.
    let v6 = c(r#"{ cidr = "::/1", ports = [443] }, { cidr = "8000::/1", ports = [443] }"#);
    assert_eq!(
        check(&v6, &c(r#"{ cidr = "::/0", ports = [443] }"#)),
        Vec::<String>::new()
    );
}

/// `::/0` without `::ffff:0:0/96`, as 96 prefixes (one sibling per bit on
/// the way to it), leaving out the sibling of length `skip`.
fn v6_without_mapped(skip: u32) -> String {
    let target: u128 = 0xffff << 32;
    let mut rules = Vec::new();
    for len in 1..=96u32 {
        if len == skip {
            continue;
        }
        let shift = 128 - len;
        let sibling = ((target >> shift) ^ 1) << shift;
        rules.push(format!(
            "{{ cidr = \"{}/{len}\", ports = [443], protocol = \"tcp\" }}",
            Ipv6Addr::from(sibling)
        ));
    }
    net(&rules.join(",\n"), "")
}

#[test]
fn mapped_addresses_are_ipv4_and_families_are_apart() {
    let client = net(r#"{ cidr = "::/0", ports = [443], protocol = "tcp" }"#, "");
    // The kernel looks ::ffff:a.b.c.d up as IPv4: the client's ::/0 opens
    // no IPv4-mapped address, so a floor without them covers it.
    assert_eq!(check(&v6_without_mapped(0), &client), Vec::<String>::new());
    let line = one(check(&v6_without_mapped(50), &client));
    assert!(
        line.contains("::/0 except ") && line.contains("tcp 443: no floor rule covers"),
        "{line}"
    );
    // IPv4 rules cover no IPv6 address, and the reverse.
    let v4_all = net(r#"{ cidr = "0.0.0.0/0" }"#, "");
    let line = one(check(&v4_all, &client));
    assert!(
        line.ends_with("::/0 tcp 443: no floor rule covers these addresses"),
        "{line}"
    );
    let v6_all = net(r#"{ cidr = "::/0" }"#, "");
    assert_eq!(
        check(&v6_all, &net(r#"{ cidr = "10.0.0.1" }"#, "")).len(),
        1
    );
}

#[test]
fn a_merged_range_is_blamed_on_the_rule_that_granted_it() {
    // At 10.1.0.0/16 the entry holds one range, 443-444, named after rule 0.
    let client = compile(&net(
        r#"{ cidr = "10.0.0.0/8", ports = [443], protocol = "tcp" },
           { cidr = "10.1.0.0/16", ports = [444], protocol = "tcp" }"#,
        "",
    ));
    let v = client.network.lookup("10.1.0.1".parse().unwrap()).unwrap();
    assert_eq!((v.count, v.ranges[0].hi, v.ranges[0].rule), (1, 444, 0));
    let floor = compile(&net(
        r#"{ cidr = "10.0.0.0/8", ports = [443], protocol = "tcp" }"#,
        "",
    ));
    assert_eq!(
        one(widenings(&floor, &client)),
        "network.allow[1] 10.1.0.0/16 tcp 444: wider than the floor: 10.1.0.0/16 tcp 444: the \
         floor allows only tcp 443 there (network.allow[0] 10.0.0.0/8 tcp 443)"
    );
}

#[test]
fn listen_rules_are_covered_by_listen_rules_only() {
    let floor = net(
        r#"{ cidr = "0.0.0.0/0" }, { cidr = "::/0" }"#,
        r#"listen = [{ cidr = "127.0.0.1/32", ports = [8000], protocol = "tcp" }]"#,
    );
    let ok = net(
        "",
        r#"listen = [{ cidr = "127.0.0.1/32", ports = [8000], protocol = "tcp" }]"#,
    );
    assert_eq!(check(&floor, &ok), Vec::<String>::new());
    let line = one(check(
        &floor,
        &net(
            "",
            r#"listen = [{ cidr = "0.0.0.0/0", ports = [8000], protocol = "tcp" }]"#,
        ),
    ));
    assert!(
        line.starts_with(
            "network.listen[0] 0.0.0.0/0 tcp 8000: wider than the floor: 0.0.0.0/0 except \
             127.0.0.1/32 tcp 8000: no floor rule covers these addresses"
        ),
        "{line}"
    );
    // Egress rules open nothing inbound.
    let line = one(check(
        &floor,
        &net("", r#"listen = [{ cidr = "::1/128", ports = [9000] }]"#),
    ));
    assert!(
        line.starts_with("network.listen[0] ::1/128 tcp+udp 9000:"),
        "{line}"
    );
}

#[test]
fn unix_sockets_must_be_named_by_the_floor() {
    let floor = net(r#"{ unix = "@agent-bus" }"#, "");
    assert_eq!(check(&floor, &floor), Vec::<String>::new());
    assert_eq!(
        one(check(&floor, &net(r#"{ unix = "@other" }"#, ""))),
        "network.allow[0] unix @other: wider than the floor: no floor rule names this socket \
         (the floor allows only network.allow[0] unix @agent-bus)"
    );
}

#[test]
fn host_wildcards_cover_the_names_they_match() {
    let floor = net(
        r#"{ host = "**.example.com", ports = [443], protocol = "tcp" },
           { host = "api.example.com", ports = [80], protocol = "tcp" },
           { host = "*.cdn.net", ports = [443], protocol = "tcp" }"#,
        "",
    );
    let c = |rule: &str| check(&floor, &net(rule, ""));
    for within in [
        r#"{ host = "api.example.com", ports = [443], protocol = "tcp" }"#,
        r#"{ host = "api.example.com", ports = [80, 443], protocol = "tcp" }"#,
        r#"{ host = "*.x.example.com", ports = [443], protocol = "tcp" }"#,
        r#"{ host = "**.x.example.com", ports = [443], protocol = "tcp" }"#,
        r#"{ host = "*.example.com", ports = [443], protocol = "tcp" }"#,
        r#"{ host = "a.cdn.net", ports = [443], protocol = "tcp" }"#,
        r#"{ host = "*.cdn.net", ports = [443], protocol = "tcp" }"#,
    ] {
        assert_eq!(c(within), Vec::<String>::new(), "{within}");
    }
    for (wider, why) in [
        (
            r#"{ host = "example.com", ports = [443], protocol = "tcp" }"#,
            "no floor host rule matches every name example.com matches",
        ),
        (
            r#"{ host = "a.b.cdn.net", ports = [443], protocol = "tcp" }"#,
            "no floor host rule matches every name a.b.cdn.net matches",
        ),
        (
            r#"{ host = "**.cdn.net", ports = [443], protocol = "tcp" }"#,
            "no floor host rule matches every name **.cdn.net matches",
        ),
        (
            r#"{ host = "*.x.example.com", ports = [80], protocol = "tcp" }"#,
            "tcp 80 for these names: the floor allows them only tcp 443 \
             (network.allow[0] host **.example.com tcp 443)",
        ),
        (
            r#"{ host = "api.example.com", ports = [443] }"#,
            "udp 443 for these names: the floor allows them only tcp 80,443",
        ),
    ] {
        let line = one(c(wider));
        assert!(line.starts_with("network.allow[0] host "), "{line}");
        assert!(line.contains(why), "{wider}: {line}");
    }
    // However wide, an address rule covers no name.
    let line = one(check(
        &net(r#"{ cidr = "0.0.0.0/0" }, { cidr = "::/0" }"#, ""),
        &net(
            r#"{ host = "api.example.com", ports = [443], protocol = "tcp" }"#,
            "",
        ),
    ));
    assert!(
        line.ends_with(
            "no floor host rule matches every name api.example.com matches (the floor has no \
             host rules, and its address rules do not cover a name, which may resolve to any \
             address)"
        ),
        "{line}"
    );
}

#[test]
fn dns_settings_are_wider_upwards() {
    let floor = net(
        r#"{ host = "api.example.com", ports = [443], protocol = "tcp" }"#,
        "[network.dns]\nttl_floor = 30\nttl_ceiling = 600\nmax_addresses = 16\n\
         answers_allowed = [\"10.0.0.0/9\", \"10.128.0.0/9\", \"fd00::/8\"]\n",
    );
    let client = |dns: &str| {
        net(
            r#"{ host = "api.example.com", ports = [443], protocol = "tcp" }"#,
            &format!("[network.dns]\n{dns}"),
        )
    };
    for within in [
        "ttl_floor = 0\nttl_ceiling = 60\nmax_addresses = 1\n",
        "ttl_floor = 30\nttl_ceiling = 600\nmax_addresses = 16\n",
        "answers_allowed = [\"10.0.0.0/8\", \"fd00:1::/32\"]\nttl_ceiling = 600\nmax_addresses = 16\n",
    ] {
        assert_eq!(
            check(&floor, &client(within)),
            Vec::<String>::new(),
            "{within}"
        );
    }
    let lines = check(
        &floor,
        &client(
            "ttl_floor = 31\nttl_ceiling = 3600\nmax_addresses = 17\n\
             answers_allowed = [\"10.0.0.0/7\", \"::1/128\", \"fd00::/8\"]\n",
        ),
    );
    assert_eq!(
        lines,
        [
            "network.dns ttl_floor 31 s: wider than the floor's 30 s: an answer's addresses \
             would stay allowed at least that long, however short its TTL",
            "network.dns ttl_ceiling 3600 s: wider than the floor's 600 s: an answer's addresses \
             would stay allowed up to that long",
            "network.dns max_addresses 17: wider than the floor's 16: more of an answer's \
             addresses would be allowed",
            "network.dns answers_allowed 10.0.0.0/7: wider than the floor: answers could point \
             into 10.0.0.0/7 except 10.0.0.0/9, 10.128.0.0/9, outside the floor's \
             answers_allowed (10.0.0.0/9, 10.128.0.0/9, fd00::/8)",
            "network.dns answers_allowed ::1/128: wider than the floor: answers could point \
             into ::1/128, outside the floor's answers_allowed (10.0.0.0/9, 10.128.0.0/9, \
             fd00::/8)",
        ]
    );
    // The defaults (3600 s, 64 addresses) are above this floor's.
    let lines = check(
        &floor,
        &net(
            r#"{ host = "api.example.com", ports = [443], protocol = "tcp" }"#,
            "",
        ),
    );
    assert_eq!(lines.len(), 2, "{lines:#?}");
    assert!(
        lines[0].starts_with("network.dns ttl_ceiling 3600 s"),
        "{lines:#?}"
    );
    assert!(
        lines[1].starts_with("network.dns max_addresses 64"),
        "{lines:#?}"
    );
}

#[test]
fn dns_around_the_floors_resolver_is_wider() {
    // The floor's DNS goes through guardd: port 53 goes to its resolver,
    // 853 and the DNS-over-HTTPS resolvers are closed.
    let floor = net(
        r#"{ cidr = "0.0.0.0/0" }, { cidr = "::/0" },
           { host = "api.example.com", ports = [443], protocol = "tcp" }"#,
        "",
    );
    let plain = |rule: &str| net(rule, "");
    assert_eq!(
        check(
            &floor,
            &plain(r#"{ cidr = "10.0.0.0/8", ports = [443, 5353] }"#)
        ),
        Vec::<String>::new()
    );
    let line = one(check(
        &floor,
        &plain(r#"{ cidr = "10.0.0.0/8", ports = [53], protocol = "udp" }"#),
    ));
    assert!(
        line.contains(
            "10.0.0.0/8 udp 53: the floor allows only tcp+udp 0-52,54-852,854-65535 there"
        ) && line.contains("port 53 goes to guardd's resolver under the floor"),
        "{line}"
    );
    let line = one(check(
        &floor,
        &plain(r#"{ cidr = "10.0.0.0/8", protocol = "tcp" }"#),
    ));
    assert!(
        line.contains("10.0.0.0/8 tcp 53,853:") && line.contains("port 853 (DNS over TLS)"),
        "{line}"
    );
    // 0.0.0.0/0 does not reach 1.1.1.1:443 under the floor.
    let line = one(check(
        &floor,
        &plain(r#"{ cidr = "0.0.0.0/0", ports = [443], protocol = "tcp" }"#),
    ));
    assert!(
        line.contains(
            "1.1.1.1/32 tcp 443: the floor closes this well-known DNS-over-HTTPS resolver"
        ) && line.contains("(and 4 more places)"),
        "{line}"
    );
    // At a resolver's own entry only the rules naming its address count.
    let lines = check(
        &net(
            r#"{ cidr = "0.0.0.0/0", ports = [8443], protocol = "tcp" },
               { cidr = "1.1.1.1/32", ports = [443], protocol = "tcp" }"#,
            "[network.dns]\n",
        ),
        &net(
            r#"{ cidr = "0.0.0.0/0", ports = [8443], protocol = "tcp" },
               { cidr = "1.1.1.1/32", ports = [8443], protocol = "tcp" }"#,
            "[network.dns]\n",
        ),
    );
    assert_eq!(
        lines,
        [
            "network.allow[1] 1.1.1.1/32 tcp 8443: wider than the floor: 1.1.1.1/32 tcp 8443: the \
          floor allows only tcp 443 there (network.allow[1] 1.1.1.1/32 tcp 443)"
        ]
    );
    // Sending DNS through guardd as well, the same rules are within.
    let same = net(
        r#"{ cidr = "0.0.0.0/0", ports = [443], protocol = "tcp" },
           { cidr = "10.0.0.0/8", ports = [53], protocol = "udp" }"#,
        "[network.dns]\n",
    );
    assert_eq!(check(&floor, &same), Vec::<String>::new());
}

#[test]
fn audit_mode_under_an_enforcing_floor_is_wider() {
    let enforce = "[policy]\nname = \"f\"\n";
    let audit = "[policy]\nname = \"c\"\nmode = \"audit\"\n";
    assert_eq!(
        one(check(enforce, audit)),
        "policy.mode audit: wider than the floor: the floor enforces, and audit mode relaxes \
         the network rules to records"
    );
    assert_eq!(check(audit, enforce), Vec::<String>::new());
    assert_eq!(check(audit, audit), Vec::<String>::new());
}

#[test]
fn file_grants_need_a_floor_grant_above_with_the_access() {
    let floor = "[policy]\nname = \"f\"\n[filesystem]\nread = [\"{workdir}\"]\n\
                 write = [\"{tmp}\"]\nexec = [\"/usr/bin/env\", \"/opt/tools/bin\"]\n";
    let c = |fs: &str| {
        check(
            floor,
            &format!("[policy]\nname = \"c\"\n[filesystem]\n{fs}"),
        )
    };
    for within in [
        "read = [\"{workdir}/src\", \"{tmp}\"]\n",
        "write = [\"{tmp}/a\"]\n",
        "exec = [\"/opt/tools/bin/x\"]\n",
        "read = [\"{workdir}\"]\nwrite = [\"{tmp}\"]\n",
    ] {
        assert_eq!(c(within), Vec::<String>::new(), "{within}");
    }
    assert_eq!(
        one(c("read = [\"/etc\"]\n")),
        "filesystem.read[0] /etc: wider than the floor: read: no floor grant with read reaches it"
    );
    assert_eq!(
        one(c("write = [\"{workdir}/out\"]\n")),
        "filesystem.write[0] /home/u/proj/out: wider than the floor: write: the floor grants \
         only read on /home/u/proj"
    );
    assert_eq!(
        one(c("exec = [\"/opt/tools\"]\n")),
        "filesystem.exec[0] /opt/tools: wider than the floor: exec: the floor grants exec only \
         below it: /opt/tools/bin"
    );
    // Write implies read; each access says why on its own.
    assert_eq!(
        one(c("write = [\"{home}\"]\n")),
        "filesystem.write[0] /home/u: wider than the floor: read: the floor grants read only \
         below it: /home/u/proj; write: no floor grant with write reaches it"
    );
}

#[test]
fn file_switches_and_an_unrestricted_client_are_wider() {
    let floor = "[policy]\nname = \"f\"\n[filesystem]\nwrite = [\"{workdir}\"]\n";
    assert_eq!(
        one(check(floor, "[policy]\nname = \"c\"\n")),
        "filesystem: wider than the floor: this policy has no [filesystem] table, so files and \
         programs are not restricted; the floor restricts them"
    );
    assert_eq!(
        one(check(
            floor,
            "[policy]\nname = \"c\"\n[filesystem]\nallow_write_exec = true\n"
        )),
        "filesystem.allow_write_exec true: wider than the floor: the floor refuses a path both \
         writable and executable"
    );
    // A floor without a [filesystem] table restricts nothing.
    let open = "[policy]\nname = \"f\"\n";
    assert_eq!(
        check(
            open,
            "[policy]\nname = \"c\"\n[filesystem]\nwrite = [\"/\"]\nexec = [\"/\"]\n\
             allow_write_exec = true\n"
        ),
        Vec::<String>::new()
    );
}

/// A policy with a `[filesystem]` table of `key = [paths]`.
fn fs_policy(key: &str, paths: &[&Path]) -> String {
    let list: Vec<String> = paths
        .iter()
        .map(|p| format!("{:?}", p.display().to_string()))
        .collect();
    format!(
        "[policy]\nname = \"t\"\n[filesystem]\n{key} = [{}]\n",
        list.join(", ")
    )
}

#[test]
fn paths_are_compared_as_they_resolve() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().canonicalize().unwrap();
    let ws = root.join("ws");
    let secret = root.join("secret");
    std::fs::create_dir_all(ws.join("sub")).unwrap();
    std::fs::create_dir_all(&secret).unwrap();
    std::os::unix::fs::symlink(&secret, ws.join("esc")).unwrap();
    std::os::unix::fs::symlink(ws.join("sub"), root.join("alias")).unwrap();
    let floor = fs_policy("read", &[&ws]);
    assert_eq!(
        check(&floor, &fs_policy("read", &[&ws.join("sub")])),
        Vec::<String>::new()
    );
    // A link outside the floor's tree that leads into it is within.
    assert_eq!(
        check(&floor, &fs_policy("read", &[&root.join("alias")])),
        Vec::<String>::new()
    );
    // A link inside it that leads out is not.
    let line = one(check(&floor, &fs_policy("read", &[&ws.join("esc")])));
    assert_eq!(
        line,
        format!(
            "filesystem.read[0] {}/esc (resolving to {}): wider than the floor: read: no floor \
             grant with read reaches it",
            ws.display(),
            secret.display()
        )
    );
}

#[test]
fn a_file_with_hard_links_is_within_only_where_the_floor_grants_it() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().canonicalize().unwrap();
    let ws = root.join("ws");
    let elsewhere = root.join("elsewhere");
    std::fs::create_dir_all(&ws).unwrap();
    std::fs::create_dir_all(&elsewhere).unwrap();
    let one_link = ws.join("plain");
    std::fs::write(&one_link, "x").unwrap();
    let linked = ws.join("linked");
    std::fs::write(&linked, "x").unwrap();
    std::fs::hard_link(&linked, elsewhere.join("other-name")).unwrap();
    let floor = fs_policy("read", &[&ws]);
    assert_eq!(
        check(&floor, &fs_policy("read", &[&one_link])),
        Vec::<String>::new()
    );
    let line = one(check(&floor, &fs_policy("read", &[&linked])));
    assert_eq!(
        line,
        format!(
            "filesystem.read[0] {}: wider than the floor: read: it is a file with 2 hard links, \
             and a grant on a file reaches every link; the floor grants read on {}, not on this \
             file",
            linked.display(),
            ws.display()
        )
    );
    // The floor naming the file, by any of its names, grants the same.
    let by_name = fs_policy("read", &[&elsewhere.join("other-name")]);
    assert_eq!(
        check(&by_name, &fs_policy("read", &[&linked])),
        Vec::<String>::new()
    );
}

#[test]
fn proc_self_paths_are_the_agents_own() {
    let floor = "[policy]\nname = \"f\"\ninclude = [\"base\"]\n";
    let c = |fs: &str| {
        check(
            floor,
            &format!("[policy]\nname = \"c\"\ninclude = [\"base\"]\n[filesystem]\n{fs}"),
        )
    };
    assert_eq!(c("read = [\"/proc/self/status\"]\n"), Vec::<String>::new());
    let line = one(c("read = [\"/proc/self/cwd\"]\n"));
    assert!(
        line.starts_with("filesystem.read[0] /proc/self/cwd: wider than the floor: read: it passes through cwd, a link out of the agent's /proc"),
        "{line}"
    );
    assert!(one(c("read = [\"/proc/self/fd/3\"]\n")).contains("it passes through fd"));
    let line = one(c("write = [\"/proc/self/attr\"]\n"));
    assert!(
        line.ends_with("write: the floor grants only read on /proc/self"),
        "{line}"
    );
    // Guardd's own /proc directory is not the agent's.
    let mine = format!("/proc/{}/status", std::process::id());
    let line = one(c(&format!("read = [{mine:?}]\n")));
    assert!(
        line.contains("no floor grant with read reaches it"),
        "{line}"
    );
}

#[test]
fn process_limits_capabilities_user_and_inotify() {
    let floor = "[policy]\nname = \"f\"\n[process]\nmax_processes = 64\nmemory = \"1G\"\n\
                 cpu = \"150%\"\ncapabilities = [\"CAP_CHOWN\"]\nuser = \"nobody\"\n";
    let c = |p: &str| check(floor, &format!("[policy]\nname = \"c\"\n[process]\n{p}"));
    let limits = "max_processes = 64\nmemory = \"1G\"\ncpu = 1.5\nuser = \"nobody\"\n";
    assert_eq!(c(limits), Vec::<String>::new());
    assert_eq!(
        c(
            "max_processes = 1\nmemory = \"1M\"\ncpu = 0.001\nuser = \"nobody\"\ncapabilities = [\"chown\"]\n"
        ),
        Vec::<String>::new()
    );
    assert_eq!(
        c("user = \"nobody\"\n"),
        [
            "process.max_processes: wider than the floor: no limit, where the floor has 64",
            "process.memory: wider than the floor: no limit, where the floor has 1073741824 bytes",
            "process.cpu: wider than the floor: no limit, where the floor has 1.500 cores",
        ]
    );
    assert_eq!(
        c(
            "max_processes = 65\nmemory = \"2G\"\ncpu = 2\nuser = \"root\"\n\
           capabilities = [\"CAP_CHOWN\", \"CAP_NET_RAW\"]\ninotify = true\n"
        ),
        [
            "process.max_processes 65: wider than the floor's 64",
            "process.memory 2147483648 bytes: wider than the floor's 1073741824 bytes",
            "process.cpu 2.000 cores: wider than the floor's 1.500 cores",
            "process.user user root: wider than the floor: the floor runs the agent as user \
             nobody, and users have no order (any other user counts as wider)",
            "process.capabilities CAP_NET_RAW: wider than the floor: the floor keeps CAP_CHOWN",
            "process.inotify true: wider than the floor: the floor refuses inotify watches",
        ]
    );
    // The same user by number is another spelling, which guard does not resolve.
    let line = one(c(
        "max_processes = 64\nmemory = \"1G\"\ncpu = 1.5\nuser = 65534\n",
    ));
    assert!(line.starts_with("process.user uid 65534: "), "{line}");
}

#[test]
fn every_way_is_listed_and_shown() {
    let floor = compile(FLOOR);
    let client = compile(
        r#"
[policy]
name = "greedy"
mode = "audit"
[network]
allow = [
  { cidr = "0.0.0.0/0", ports = [443], protocol = "tcp" },
  { host = "**.example.org", ports = [443], protocol = "tcp" },
  { unix = "@bus" },
]
listen = [{ cidr = "0.0.0.0/0", ports = [22], protocol = "tcp" }]
[filesystem]
write = ["/srv"]
[process]
capabilities = ["CAP_SYS_ADMIN"]
"#,
    );
    let Err(e) = check_within(&floor, &client) else {
        panic!("within");
    };
    let heads: Vec<&str> = e
        .widenings
        .iter()
        .map(|l| l.split(": ").next().unwrap_or_default())
        .collect();
    assert_eq!(
        heads,
        [
            "policy.mode audit",
            "network.allow[0] 0.0.0.0/0 tcp 443",
            "network.allow[1] host **.example.org tcp 443",
            "network.allow[2] unix @bus",
            "network.dns ttl_ceiling 3600 s",
            "network.dns max_addresses 64",
            "network.listen[0] 0.0.0.0/0 tcp 22",
            "filesystem.write[0] /srv",
            "process.max_processes",
            "process.memory",
            "process.cpu",
            "process.capabilities CAP_SYS_ADMIN",
        ],
        "{e}"
    );
    let shown = e.to_string();
    assert!(
        shown.starts_with(
            "policy \"greedy\" is wider than the node's floor policy \"node-floor\":\n  policy.mode"
        ),
        "{shown}"
    );
    assert_eq!(shown.lines().count(), 1 + e.widenings.len());
}

/// A value allowing every port of both protocols, named after rule 0.
fn everything() -> NetValue {
    let mut v = NetValue {
        count: 1,
        cidr_rule: 0,
        ..NetValue::default()
    };
    v.ranges[0] = PortRange {
        lo: 0,
        hi: u16::MAX,
        protos: PROTO_TCP | PROTO_UDP,
        flags: 0,
        rule: 0,
    };
    v
}

#[test]
fn every_field_of_a_plan_is_judged() {
    let floor = compile(FLOOR);
    // Without `..`: a field added to a plan fails to compile here until it
    // has a case below (and is judged by `check_within`, which destructures
    // the same way).
    let Plan {
        name: _,
        mode: _,
        network:
            NetPlan {
                v4: _,
                v6: _,
                unix: _,
                listen4: _,
                listen6: _,
                dns: _,
            },
        filesystem:
            FsPlan {
                rules: _,
                restricted: _,
                allow_write_exec: _,
            },
        process:
            ProcPlan {
                max_processes: _,
                memory_bytes: _,
                cpu_millicores: _,
                user: _,
                capabilities: _,
                inotify: _,
            },
        rules: _,
    } = &floor;
    let Some(DnsPlan {
        hosts: _,
        ttl_floor: _,
        ttl_ceiling: _,
        max_addresses: _,
        answers_allowed: _,
    }) = &floor.network.dns
    else {
        panic!("the floor has a DNS plan");
    };
    let FsRule {
        path: _,
        access: _,
        origin: _,
        rule: _,
    } = &floor.filesystem.rules[0];
    let HostRule {
        rule: _,
        pattern: _,
        ports: _,
        protos: _,
    } = &floor.network.dns.as_ref().unwrap().hosts[0];
    let RuleInfo { id: _, text: _ } = &floor.rules[0];

    type Change = fn(&mut Plan);
    fn dns(p: &mut Plan) -> &mut DnsPlan {
        p.network.dns.as_mut().unwrap()
    }
    fn host(p: &mut Plan) -> &mut HostRule {
        &mut dns(p).hosts[0]
    }
    fn workdir(p: &mut Plan) -> &mut FsRule {
        let at = Path::new("/home/u/proj");
        p.filesystem
            .rules
            .iter_mut()
            .find(|r| r.path == at)
            .unwrap()
    }
    let names_only: [(&str, Change); 6] = [
        ("name", |p| p.name = "other".into()),
        ("rules", |p| {
            for r in &mut p.rules {
                r.text = "?".into();
                r.id = "?".into();
            }
        }),
        ("filesystem.rules.origin", |p| {
            workdir(p).origin = Origin::Base("base");
        }),
        ("filesystem.rules.rule", |p| workdir(p).rule = "x".into()),
        ("dns.hosts.rule", |p| host(p).rule = 99),
        ("a narrower value", |p| {
            p.network.v4.retain(|(len, _, _)| *len != 8);
        }),
    ];
    for (field, change) in names_only {
        let mut client = floor.clone();
        change(&mut client);
        assert_eq!(widenings(&floor, &client), Vec::<String>::new(), "{field}");
    }
    let wider: [(&str, Change); 28] = [
        ("mode", |p| p.mode = Mode::Audit),
        ("network.v4", |p| {
            p.network.v4.push((0, [0; 4], everything()))
        }),
        ("network.v4 ports", |p| {
            p.network.v4[0].2.ranges[0].hi = u16::MAX;
        }),
        ("network.v4 protocols", |p| {
            p.network.v4[0].2.ranges[0].protos = PROTO_TCP | PROTO_UDP;
        }),
        ("network.v6", |p| {
            p.network.v6.push((0, [0; 16], everything()))
        }),
        ("network.unix", |p| {
            let mut key = [0; guard_common::UNIX_PATH_MAX];
            key[1] = b'x';
            p.network.unix.push((key, 0));
        }),
        ("network.listen4", |p| {
            p.network.listen4.push((0, [0; 4], everything()));
        }),
        ("network.listen6", |p| {
            p.network.listen6.push((0, [0; 16], everything()));
        }),
        ("network.dns", |p| p.network.dns = None),
        ("dns.hosts", |p| {
            let mut h = dns(p).hosts[0].clone();
            h.pattern = HostPattern::AnyDepth("org".into());
            dns(p).hosts.push(h);
        }),
        ("dns.hosts.pattern", |p| {
            host(p).pattern = HostPattern::AnyDepth("com".into());
        }),
        ("dns.hosts.ports", |p| host(p).ports = vec![(1, 1000)]),
        ("dns.hosts.protos", |p| host(p).protos = PROTO_UDP),
        ("dns.ttl_floor", |p| {
            dns(p).ttl_floor = Duration::from_secs(31)
        }),
        ("dns.ttl_ceiling", |p| {
            dns(p).ttl_ceiling = Duration::from_secs(601);
        }),
        ("dns.max_addresses", |p| dns(p).max_addresses = 17),
        ("dns.answers_allowed", |p| {
            dns(p).answers_allowed.push(AddrRange {
                v6: false,
                addr: 0,
                len: 0,
            });
        }),
        ("filesystem.rules", |p| {
            p.filesystem.rules.push(FsRule {
                path: "/etc".into(),
                access: Access::READ,
                origin: Origin::Policy,
                rule: "filesystem.read[9]".into(),
            });
        }),
        ("filesystem.rules.path", |p| {
            workdir(p).path = PathBuf::from("/home/u");
        }),
        ("filesystem.rules.access", |p| {
            workdir(p).access = Access::READ | Access::EXEC;
        }),
        ("filesystem.restricted", |p| p.filesystem.restricted = false),
        ("filesystem.allow_write_exec", |p| {
            p.filesystem.allow_write_exec = true;
        }),
        ("process.max_processes", |p| p.process.max_processes = None),
        ("process.memory_bytes", |p| {
            p.process.memory_bytes = Some(2 << 30);
        }),
        ("process.cpu_millicores", |p| {
            p.process.cpu_millicores = Some(2001);
        }),
        ("process.user", |p| {
            p.process.user = Some(UserSpec::Uid(0));
        }),
        ("process.capabilities", |p| {
            p.process.capabilities.push("CAP_SYS_ADMIN".into());
        }),
        ("process.inotify", |p| {
            p.process.inotify = true;
        }),
    ];
    for (field, change) in wider {
        let mut base = floor.clone();
        if field == "process.inotify" {
            base.process.inotify = false;
        }
        let mut client = base.clone();
        change(&mut client);
        assert_ne!(widenings(&base, &client), Vec::<String>::new(), "{field}");
    }
}

#[test]
fn many_rules_are_judged_fast() {
    // Every client rule wider (tcp 22 nowhere in the floor), nested in
    // rules of the floor and of its own.
    let mut client = Vec::new();
    for i in 0..10_000u32 {
        client.push(format!(
            "{{ cidr = \"10.{}.{}.{}\", ports = [22, 443], protocol = \"tcp\" }}",
            i % 4,
            (i / 256) % 256,
            i % 256
        ));
    }
    client.push(r#"{ cidr = "10.0.0.0/8", ports = [443], protocol = "tcp" }"#.to_owned());
    let floor = compile(&net(
        r#"{ cidr = "10.0.0.0/8", ports = [443], protocol = "tcp" },
           { cidr = "10.1.0.0/16", ports = [443, 8443], protocol = "tcp" }"#,
        "",
    ));
    let client = compile(&net(&client.join(",\n"), ""));
    let start = std::time::Instant::now();
    let lines = widenings(&floor, &client);
    let took = start.elapsed();
    assert!(took.as_millis() < 1000, "took {took:?}");
    // One line per rule, each naming its own.
    assert_eq!(lines.len(), 10_000, "{:#?}", &lines[..3]);
    assert!(lines[9_999].starts_with("network.allow[9999] 10.3.39.15/32 tcp 22,443:"));
    assert!(
        lines[0].starts_with("network.allow[0] 10.0.0.0/32 tcp 22,443: wider than the floor: 10.0.0.0/32 tcp 22: the floor allows only tcp 443 there"),
        "{}",
        lines[0]
    );
}
