//! Grants (issue 15): what an operator opens beyond an agent's policy.
//!
//! Two kinds, because the layers differ in what they can change later:
//!
//! - a *live* grant (`guardctl grant AGENT --allow DEST`) widens the network
//!   scope of a running agent. Only the kernel's maps can change under a
//!   running process, so only destinations qualify: [`Dest`], compiled by
//!   [`compile_live`] into entries of their own (`GRANT_SLOT`).
//! - a *start* grant (`guardctl run --grant ITEM`) is added to the policy
//!   before it is compiled, by launcher and guardd alike ([`GrantItem`]):
//!   files and programs too, since Landlock only ever narrows a running
//!   process.
//!
//! A destination is written `ADDR[/LEN][:PORTS][/PROTO]`: `10.0.0.5:443/tcp`,
//! `10.0.0.0/24:443,8000-8100`, `[2001:db8::1]:443/tcp`, `api.example.com:443`.
//! It is turned into the `allow` rule a policy would hold and checked by the
//! same validation, so a grant means exactly what that rule would.

use super::{
    Origin, PolicyError,
    net::{self, Entries, Kind},
    parse::Doc,
};

/// Most ports one endpoint ([`Dest::is_one_endpoint`]) may name.
pub const MAX_ENDPOINT_PORTS: usize = 8;

/// The IPv4 and IPv6 entries of an agent's live grants.
pub type LiveEntries = Entries;

/// Longest grant text accepted (a destination or a path).
pub const MAX_GRANT_LEN: usize = 512;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GrantError {
    #[error("grant {spec:?}: {message}")]
    Invalid { spec: String, message: String },
    #[error(
        "grant {spec:?}: files and programs of a running agent cannot be widened (Landlock \
         only ever narrows a process); start the agent again with `guardctl run --grant {spec}`"
    )]
    NotLive { spec: String },
    #[error(
        "grant {spec:?}: a live grant names addresses, not host names (the agent's resolver \
         answers only the names its policy allows); grant the address it connects to, or \
         start the agent again with `guardctl run --grant net:{dest}`"
    )]
    HostName { spec: String, dest: String },
}

fn invalid(spec: &str, message: impl Into<String>) -> GrantError {
    GrantError::Invalid {
        spec: spec.to_owned(),
        message: message.into(),
    }
}

/// A destination as a policy's `allow` rule would name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dest {
    /// As given.
    pub spec: String,
    /// The `allow` rule, as a TOML inline table.
    table: String,
    host: bool,
    /// `table` as validated.
    rule: Box<net::NetRule>,
}

fn quoted(s: &str) -> String {
    // A JSON string is a TOML basic string: control bytes come out as
    // \uXXXX escapes, quotes and backslashes escaped.
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_owned())
}

fn check_text(spec: &str) -> Result<(), GrantError> {
    if spec.is_empty() {
        return Err(invalid(spec, "empty"));
    }
    if spec.len() > MAX_GRANT_LEN {
        return Err(invalid(spec, format!("longer than {MAX_GRANT_LEN} bytes")));
    }
    if spec.chars().any(char::is_control) {
        return Err(invalid(spec, "holds a control character"));
    }
    Ok(())
}

impl Dest {
    pub fn parse(spec: &str) -> Result<Dest, GrantError> {
        check_text(spec)?;
        // Files and programs are the next start's (`guardctl run --grant`).
        if ["read:", "write:", "exec:"]
            .iter()
            .any(|k| spec.starts_with(k))
            || spec.starts_with('/')
        {
            return Err(GrantError::NotLive {
                spec: spec.to_owned(),
            });
        }
        let spec = spec.strip_prefix("net:").unwrap_or(spec);
        if spec.chars().any(char::is_whitespace) {
            return Err(invalid(spec, "holds white space"));
        }
        let (rest, proto) = match spec.rsplit_once('/') {
            Some((r, p)) if p == "tcp" || p == "udp" => (r, Some(p)),
            Some((_, p)) if p.chars().all(|c| c.is_ascii_alphabetic()) => {
                return Err(invalid(
                    spec,
                    format!("unknown protocol {p:?}: expected /tcp or /udp (omit for both)"),
                ));
            }
            _ => (spec, None),
        };
        let (addr, ports) = if let Some(inner) = rest.strip_prefix('[') {
            let (a, after) = inner
                .split_once(']')
                .ok_or_else(|| invalid(spec, "an IPv6 address opened with `[` needs its `]`"))?;
            match after {
                "" => (a, None),
                _ => match after.strip_prefix(':') {
                    Some(p) => (a, Some(p)),
                    None => {
                        return Err(invalid(
                            spec,
                            "expected `:PORTS` after `]` (e.g. [2001:db8::1]:443/tcp)",
                        ));
                    }
                },
            }
        } else {
            match rest.matches(':').count() {
                0 => (rest, None),
                1 => {
                    let (a, p) = rest.split_once(':').unwrap_or((rest, ""));
                    (a, Some(p))
                }
                // An IPv6 address without ports; with ports it needs
                // brackets, or `::1:443` would be ambiguous.
                _ => (rest, None),
            }
        };
        if addr.is_empty() {
            return Err(invalid(spec, "no address or host name"));
        }
        let ports = match ports {
            None | Some("*") => None,
            Some("") => return Err(invalid(spec, "empty port list after `:`")),
            Some(p) => Some(port_items(spec, p)?),
        };
        let is_addr = addr.contains(':')
            || addr.contains('/')
            || addr.parse::<std::net::IpAddr>().is_ok()
            || addr.chars().all(|c| c.is_ascii_digit() || c == '.');
        let mut table = if is_addr {
            format!("{{ cidr = {}", quoted(addr))
        } else {
            format!("{{ host = {}", quoted(addr))
        };
        if let Some(items) = ports {
            table.push_str(&format!(", ports = [{}]", items.join(", ")));
        }
        if let Some(p) = proto {
            table.push_str(&format!(", protocol = {}", quoted(p)));
        }
        table.push_str(" }");
        // Validated now, by the policy's own rules, so a bad grant is
        // refused before anything is written.
        let rule = Box::new(validate(spec, &table)?);
        Ok(Dest {
            spec: spec.to_owned(),
            table,
            host: !is_addr,
            rule,
        })
    }

    /// The destination names a host rather than addresses.
    pub fn is_host(&self) -> bool {
        self.host
    }

    /// One address (a /32 or /128) and a few single ports: what a refused
    /// connection's target always is. A request's text is the agent's, so
    /// approving it by number may grant no more than this.
    pub fn is_one_endpoint(&self) -> bool {
        match &self.rule.kind {
            Kind::Inet(n) => {
                n.len == if n.v6 { 128 } else { 32 }
                    && n.ports.len() <= MAX_ENDPOINT_PORTS
                    && n.ports.iter().all(|(lo, hi)| lo == hi)
            }
            _ => false,
        }
    }

    /// The destination reaches name resolution past guardd: port 53, DNS
    /// over TLS, or a well-known DNS-over-HTTPS resolver. Granted only when
    /// an operator writes it out (`--allow`), never by approving a request.
    pub fn reaches_dns(&self) -> bool {
        let Kind::Inet(n) = &self.rule.kind else {
            return false;
        };
        let port = |p: u16| n.ports.iter().any(|(lo, hi)| *lo <= p && p <= *hi);
        let bits = if n.v6 { 128 } else { 32 };
        let doh = super::host::DOH_RESOLVERS.iter().any(|(_, ip)| {
            let a = match (ip.to_canonical(), n.v6) {
                (std::net::IpAddr::V4(a), false) => u128::from(u32::from(a)),
                (std::net::IpAddr::V6(a), true) => u128::from(a),
                _ => return false,
            };
            let shift = bits - n.len;
            shift >= bits || (a >> shift) == (n.addr >> shift)
        });
        port(53) || port(super::host::DOT_PORT) || doh
    }

    fn fragment(&self) -> String {
        fragment(&self.table)
    }

    /// How the rule reads in records and listings (`10.0.0.5/32 tcp 443`).
    pub fn text(&self) -> String {
        self.rule.text.clone()
    }
}

fn fragment(table: &str) -> String {
    format!("[network]\nallow = [{table}]\n")
}

/// The `allow` rule `table` stands for, checked as a policy's would be.
fn validate(spec: &str, table: &str) -> Result<net::NetRule, GrantError> {
    let text = fragment(table);
    let doc = Doc::new(&text, format!("grant {spec}"));
    let raw = doc.parse_include().map_err(|e| invalid(spec, e.message))?;
    let mut rules = Vec::new();
    let (mut listen, mut dns, mut errs) = (Vec::new(), None, Vec::new());
    if let Some(n) = raw.network {
        net::validate(
            &doc,
            n,
            Origin::Policy,
            &mut rules,
            &mut listen,
            &mut dns,
            &mut errs,
        );
    }
    if let Some(e) = errs.into_iter().next() {
        return Err(invalid(spec, e.message));
    }
    rules
        .pop()
        .ok_or_else(|| invalid(spec, "names no destination"))
}

fn port_items(spec: &str, ports: &str) -> Result<Vec<String>, GrantError> {
    ports
        .split(',')
        .map(|p| {
            let ok =
                |s: &str| !s.is_empty() && s.len() <= 5 && s.chars().all(|c| c.is_ascii_digit());
            match p.split_once('-') {
                None if ok(p) => Ok(p.to_owned()),
                Some((lo, hi)) if ok(lo) && ok(hi) => Ok(quoted(p)),
                _ => Err(invalid(
                    spec,
                    format!("bad port {p:?}: expected a number or a range such as 8000-8100"),
                )),
            }
        })
        .collect()
}

/// A live grant, numbered in the agent's rule space.
#[derive(Debug, Clone, Copy)]
pub struct Numbered<'a> {
    /// Its rule index in the kernel entries (after every policy rule).
    pub rule: u16,
    pub dest: &'a Dest,
}

/// The entries of an agent's live grants, folded together as a policy's
/// rules are (overlaps merged, every enclosing grant's ports carried into
/// each prefix), to be written under `slot | GRANT_SLOT`. `closed`: the
/// agent's DNS goes through guardd (its policy has a DNS plan), so the
/// grants get the same cuts the policy's rules get.
pub fn compile_live(grants: &[Numbered<'_>], closed: bool) -> Result<LiveEntries, GrantError> {
    let mut rules = Vec::with_capacity(grants.len());
    for g in grants {
        if g.dest.is_host() {
            return Err(GrantError::HostName {
                spec: g.dest.spec.clone(),
                dest: g.dest.spec.clone(),
            });
        }
        let r = (*g.dest.rule).clone();
        if !matches!(r.kind, Kind::Inet(_)) {
            return Err(invalid(&g.dest.spec, "names no address"));
        }
        rules.push(r);
    }
    let index = |i: usize| grants.get(i).map_or(usize::MAX, |g| usize::from(g.rule));
    net::entries(&rules, &index, closed, "grant").map_err(|e: PolicyError| invalid("", e.message))
}

/// One `guardctl run --grant` item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GrantItem {
    Net(Dest),
    Read(String),
    Write(String),
    Exec(String),
}

impl GrantItem {
    /// `net:DEST`, `read:PATH`, `write:PATH` or `exec:PATH`.
    pub fn parse(spec: &str) -> Result<GrantItem, GrantError> {
        check_text(spec)?;
        let Some((kind, value)) = spec.split_once(':') else {
            return Err(invalid(
                spec,
                "expected net:DEST, read:PATH, write:PATH or exec:PATH",
            ));
        };
        let path = |v: &str| -> Result<String, GrantError> {
            if v.is_empty() {
                return Err(invalid(spec, "empty path"));
            }
            Ok(v.to_owned())
        };
        match kind {
            "net" => Ok(GrantItem::Net(Dest::parse(value)?)),
            "read" => Ok(GrantItem::Read(path(value)?)),
            "write" => Ok(GrantItem::Write(path(value)?)),
            "exec" => Ok(GrantItem::Exec(path(value)?)),
            other => Err(invalid(
                spec,
                format!("unknown grant kind {other:?}: expected net, read, write or exec"),
            )),
        }
    }

    /// The item as given on the command line.
    pub fn spec(&self) -> String {
        match self {
            GrantItem::Net(d) => format!("net:{}", d.spec),
            GrantItem::Read(p) => format!("read:{p}"),
            GrantItem::Write(p) => format!("write:{p}"),
            GrantItem::Exec(p) => format!("exec:{p}"),
        }
    }

    pub fn is_file(&self) -> bool {
        !matches!(self, GrantItem::Net(_))
    }

    /// The item as an include file's text, read after the policy's own
    /// tables (its rules are named `--grant SPEC ...`).
    pub(super) fn fragment(&self) -> String {
        match self {
            GrantItem::Net(d) => d.fragment(),
            GrantItem::Read(p) => format!("[filesystem]\nread = [{}]\n", quoted(p)),
            GrantItem::Write(p) => format!("[filesystem]\nwrite = [{}]\n", quoted(p)),
            GrantItem::Exec(p) => format!("[filesystem]\nexec = [{}]\n", quoted(p)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::port_allowed;
    use guard_common::{PROTO_TCP, PROTO_UDP};

    fn dest(s: &str) -> Dest {
        Dest::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn err(s: &str) -> String {
        Dest::parse(s).unwrap_err().to_string()
    }

    #[test]
    fn destinations_read_as_the_policy_rule_they_stand_for() {
        assert_eq!(dest("10.0.0.5:443/tcp").text(), "10.0.0.5/32 tcp 443");
        assert_eq!(dest("10.0.0.5").text(), "10.0.0.5/32 tcp+udp any");
        assert_eq!(
            dest("10.0.0.0/24:443,8000-8100/udp").text(),
            "10.0.0.0/24 udp 443,8000-8100"
        );
        assert_eq!(dest("[::1]:8080/tcp").text(), "::1/128 tcp 8080");
        assert_eq!(dest("2001:db8::/32").text(), "2001:db8::/32 tcp+udp any");
        assert_eq!(dest("127.0.0.1:*/tcp").text(), "127.0.0.1/32 tcp any");
        assert!(dest("api.example.com:443/tcp").is_host());
        assert!(!dest("10.0.0.5:443/tcp").is_host());
    }

    #[test]
    fn bad_destinations_get_precise_errors() {
        assert!(err("").contains("empty"));
        assert!(err("10.0.0.5:443/sctp").contains("unknown protocol \"sctp\""));
        assert!(err("10.0.0.5:").contains("empty port list"));
        assert!(err("10.0.0.5:70000").contains("70000"));
        assert!(err("10.0.0.5:x").contains("bad port"));
        assert!(err("[::1:443").contains("`]`"));
        assert!(err("[::1]443").contains("`:PORTS`"));
        assert!(err("10.0.0.300:443").contains("10.0.0.300"));
        assert!(err("10.0.0.5 :443").contains("white space"));
        assert!(err("a\u{1b}b:443").contains("control"));
        assert!(err(&"a".repeat(600)).contains("longer"));
        assert!(err("bad..name:443").contains("empty label"));
        for file in ["read:/etc/passwd", "exec:/bin/sh", "/etc/shadow"] {
            assert!(
                matches!(Dest::parse(file), Err(GrantError::NotLive { .. })),
                "{file}"
            );
        }
        assert!(err("write:/x").contains("guardctl run --grant write:/x"));
        assert_eq!(dest("net:10.0.0.5:443/tcp").text(), "10.0.0.5/32 tcp 443");
    }

    #[test]
    fn one_endpoint_is_one_address_with_named_ports() {
        assert!(dest("10.0.0.5:443/tcp").is_one_endpoint());
        assert!(dest("[::1]:80,443").is_one_endpoint());
        assert!(!dest("10.0.0.5").is_one_endpoint());
        assert!(!dest("10.0.0.5:*/tcp").is_one_endpoint());
        assert!(!dest("10.0.0.5:1-65535/tcp").is_one_endpoint());
        assert!(!dest("10.0.0.5:443,8000-8001").is_one_endpoint());
        assert!(!dest("10.0.0.5:1,2,3,4,5,6,7,8,9").is_one_endpoint());
        assert!(!dest("10.0.0.0/24:443/tcp").is_one_endpoint());
        assert!(!dest("0.0.0.0/0:443").is_one_endpoint());
        assert!(!dest("api.example.com:443").is_one_endpoint());
    }

    #[test]
    fn dns_destinations_are_named() {
        assert!(dest("1.1.1.1:443/tcp").reaches_dns());
        assert!(dest("[2606:4700:4700::1111]:443").reaches_dns());
        assert!(dest("10.0.0.5:853/tcp").reaches_dns());
        assert!(dest("10.0.0.5:53/udp").reaches_dns());
        assert!(dest("10.0.0.0/8:50-60").reaches_dns());
        assert!(dest("0.0.0.0/0:443").reaches_dns());
        assert!(!dest("10.0.0.5:443/tcp").reaches_dns());
        assert!(!dest("[::1]:8080").reaches_dns());
    }

    #[test]
    fn live_grants_fold_overlaps_and_keep_their_numbers() {
        let a = dest("10.0.0.0/8:443/tcp");
        let b = dest("10.1.2.3:8080/tcp");
        let (v4, v6) = compile_live(
            &[
                Numbered { rule: 40, dest: &a },
                Numbered { rule: 41, dest: &b },
            ],
            false,
        )
        .unwrap();
        assert!(v6.is_empty());
        let host = v4
            .iter()
            .find(|(len, addr, _)| *len == 32 && *addr == [10, 1, 2, 3])
            .unwrap();
        // The /32 carries the enclosing /8's port too.
        assert_eq!(port_allowed(&host.2, 443, PROTO_TCP), Some(40));
        assert_eq!(port_allowed(&host.2, 8080, PROTO_TCP), Some(41));
        assert_eq!(port_allowed(&host.2, 8080, PROTO_UDP), None);
        assert_eq!(port_allowed(&host.2, 22, PROTO_TCP), None);
    }

    #[test]
    fn a_closed_agents_grants_get_its_dns_cuts() {
        let all = dest("0.0.0.0/0");
        let (v4, _) = compile_live(
            &[Numbered {
                rule: 3,
                dest: &all,
            }],
            true,
        )
        .unwrap();
        let wide = v4.iter().find(|(len, _, _)| *len == 0).unwrap();
        // DNS over TLS stays cut, and DoH resolvers are not reached by a
        // wide grant.
        assert_eq!(port_allowed(&wide.2, 853, PROTO_TCP), None);
        assert_eq!(port_allowed(&wide.2, 443, PROTO_TCP), Some(3));
        let doh = v4
            .iter()
            .find(|(len, addr, _)| *len == 32 && *addr == [1, 1, 1, 1])
            .unwrap();
        assert_eq!(port_allowed(&doh.2, 443, PROTO_TCP), None);
    }

    #[test]
    fn host_names_and_files_are_not_live_grants() {
        let h = dest("api.example.com:443/tcp");
        let e = compile_live(&[Numbered { rule: 1, dest: &h }], false).unwrap_err();
        assert!(matches!(e, GrantError::HostName { .. }), "{e}");
        assert!(
            e.to_string()
                .contains("guardctl run --grant net:api.example.com:443/tcp")
        );
    }

    #[test]
    fn run_grant_items() {
        assert!(matches!(
            GrantItem::parse("net:10.0.0.5:443/tcp").unwrap(),
            GrantItem::Net(_)
        ));
        assert_eq!(
            GrantItem::parse("read:/data/x").unwrap(),
            GrantItem::Read("/data/x".into())
        );
        assert!(GrantItem::parse("exec:/usr/bin/jq").unwrap().is_file());
        let e = GrantItem::parse("mount:/x").unwrap_err().to_string();
        assert!(e.contains("unknown grant kind \"mount\""), "{e}");
        assert!(GrantItem::parse("read:").is_err());
        assert!(GrantItem::parse("nothing").is_err());
        // Quotes in a path cannot break out of the fragment.
        let f = GrantItem::parse("read:/a\"]\n[process]").unwrap_err();
        assert!(f.to_string().contains("control"), "{f}");
        let q = GrantItem::Read("/a\"] x".into()).fragment();
        assert_eq!(q, "[filesystem]\nread = [\"/a\\\"] x\"]\n");
    }
}
