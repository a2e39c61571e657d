//! Where the resolver forwards allowed names: the upstream servers.

use std::{
    net::{IpAddr, SocketAddr},
    path::Path,
    time::Duration,
};

use super::DnsError;

/// The upstream servers, shared by every agent's resolver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolverConfig {
    /// Tried in order; nothing else is ever asked.
    pub upstreams: Vec<SocketAddr>,
    /// How long one try (UDP, or the TCP retry after a truncated answer)
    /// waits for an upstream.
    pub timeout: Duration,
}

impl ResolverConfig {
    /// Per-try timeout when none is configured.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

    /// These upstreams, with the default timeout.
    pub fn new(upstreams: Vec<SocketAddr>) -> ResolverConfig {
        ResolverConfig {
            upstreams,
            timeout: Self::DEFAULT_TIMEOUT,
        }
    }
}

const DNS_PORT: u16 = 53;

/// Parses one upstream as an operator writes it: `ADDR`, `ADDR:PORT`,
/// `[V6]:PORT`, `[V6]` or `V6` (a numeric zone, `fe80::1%2`, is kept); the
/// port defaults to 53. Unspecified, multicast and broadcast addresses and
/// port 0 are refused: nothing answers from them.
pub fn parse_upstream(s: &str) -> Result<SocketAddr, DnsError> {
    let bad = |why: &str| DnsError::BadUpstream {
        text: s.to_owned(),
        why: why.to_owned(),
    };
    let t = s.trim();
    if t.is_empty() {
        return Err(bad("empty"));
    }
    let addr = if let Ok(a) = t.parse::<SocketAddr>() {
        a
    } else if let Ok(ip) = t.parse::<IpAddr>() {
        SocketAddr::new(ip, DNS_PORT)
    } else if t.starts_with('[') && t.ends_with(']') {
        format!("{t}:{DNS_PORT}")
            .parse()
            .map_err(|_| bad("not an IPv6 address in brackets"))?
    } else if t.matches(':').count() >= 2 && !t.contains('[') {
        // A bare IPv6 address with a zone (`fe80::1%2`): std parses zones
        // only in the socket-address form.
        format!("[{t}]:{DNS_PORT}").parse().map_err(|_| {
            bad(if t.contains('%') {
                "not an IPv6 address with a numeric zone (interface names are not supported)"
            } else {
                "not an IPv6 address"
            })
        })?
    } else {
        return Err(bad(
            "not ADDR, ADDR:PORT, [V6]:PORT or V6 (a host name is not accepted)",
        ));
    };
    if addr.port() == 0 {
        return Err(bad("port 0"));
    }
    let ip = addr.ip();
    let unusable = ip.is_unspecified()
        || ip.is_multicast()
        || matches!(ip, IpAddr::V4(v4) if v4.is_broadcast());
    if unusable {
        return Err(bad(
            "not a unicast address (unspecified, multicast or broadcast)",
        ));
    }
    Ok(addr)
}

/// A `nameserver` line of resolv.conf that was not used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedNameserver {
    /// 1-based line number.
    pub line: usize,
    pub text: String,
    pub why: String,
}

/// The `nameserver` lines of a resolv.conf text, in order, and the ones
/// that could not be used with the reason. Comments (`#` or `;` to the end
/// of the line) and other keywords are ignored.
pub fn parse_resolv_conf(text: &str) -> (Vec<SocketAddr>, Vec<SkippedNameserver>) {
    let mut used = Vec::new();
    let mut skipped = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.split(['#', ';']).next().unwrap_or_default();
        let mut words = line.split_whitespace();
        if words.next() != Some("nameserver") {
            continue;
        }
        let Some(value) = words.next() else {
            skipped.push(SkippedNameserver {
                line: i + 1,
                text: raw.to_owned(),
                why: "no address after `nameserver`".to_owned(),
            });
            continue;
        };
        match parse_upstream(value) {
            Ok(a) if !used.contains(&a) => used.push(a),
            Ok(_) => {}
            Err(e) => skipped.push(SkippedNameserver {
                line: i + 1,
                text: raw.to_owned(),
                why: match e {
                    DnsError::BadUpstream { why, .. } => why,
                    other => other.to_string(),
                },
            }),
        }
    }
    (used, skipped)
}

/// The upstreams a resolv.conf names (`nameserver` lines). Lines that
/// cannot be used are skipped with a warning in guardd's log (an IPv6 zone
/// given as an interface name, `fe80::1%eth0`, is one: std parses only
/// numeric zones); none usable is an error.
pub fn upstreams_from_resolv_conf(path: &Path) -> Result<Vec<SocketAddr>, DnsError> {
    let text = std::fs::read_to_string(path).map_err(|source| DnsError::ResolvConf {
        path: path.to_owned(),
        source,
    })?;
    let (used, skipped) = parse_resolv_conf(&text);
    for s in &skipped {
        tracing::warn!(
            "{}:{}: nameserver skipped: {} ({:?})",
            path.display(),
            s.line,
            s.why,
            s.text
        );
    }
    if used.is_empty() {
        return Err(DnsError::NoUpstreams {
            from: Some(path.to_owned()),
        });
    }
    Ok(used)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_forms() {
        for (text, want) in [
            ("192.0.2.1", "192.0.2.1:53"),
            (" 192.0.2.1:5353 ", "192.0.2.1:5353"),
            ("2001:db8::1", "[2001:db8::1]:53"),
            ("[2001:db8::1]", "[2001:db8::1]:53"),
            ("[2001:db8::1]:853", "[2001:db8::1]:853"),
            ("fe80::1%2", "[fe80::1%2]:53"),
            ("127.0.0.53", "127.0.0.53:53"),
        ] {
            assert_eq!(parse_upstream(text).unwrap().to_string(), want, "{text}");
        }
        for (text, why) in [
            ("", "empty"),
            ("dns.example", "host name"),
            ("192.0.2.1:0", "port 0"),
            ("0.0.0.0", "unicast"),
            ("224.0.0.1", "unicast"),
            ("255.255.255.255", "unicast"),
            ("fe80::1%eth0", "interface names"),
            ("[2001:db8::1", "not ADDR"),
            ("192.0.2.1:99999", "not ADDR"),
        ] {
            let e = parse_upstream(text).unwrap_err().to_string();
            assert!(e.contains(why), "{text}: {e}");
        }
    }

    #[test]
    fn resolv_conf_nameservers() {
        let text = "\
# generated
search example.com
nameserver 192.0.2.1
nameserver 192.0.2.1   # twice: once
;nameserver 192.0.2.9
nameserver fe80::1%eth0
nameserver
nameserverx 192.0.2.7
  nameserver 2001:db8::53
options edns0
";
        let (used, skipped) = parse_resolv_conf(text);
        assert_eq!(
            used,
            vec![
                "192.0.2.1:53".parse().unwrap(),
                "[2001:db8::53]:53".parse().unwrap()
            ]
        );
        assert_eq!(skipped.len(), 2);
        assert_eq!(skipped[0].line, 6);
        assert!(skipped[0].why.contains("interface"), "{:?}", skipped[0]);
        assert_eq!(skipped[1].line, 7);
    }

    #[test]
    fn resolv_conf_without_nameservers_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("resolv.conf");
        std::fs::write(&p, "search example.com\nnameserver fe80::1%eth0\n").unwrap();
        let e = upstreams_from_resolv_conf(&p).unwrap_err();
        assert!(matches!(e, DnsError::NoUpstreams { .. }), "{e}");
        assert!(e.to_string().contains("resolv.conf"), "{e}");
        let e = upstreams_from_resolv_conf(&dir.path().join("missing")).unwrap_err();
        assert!(matches!(e, DnsError::ResolvConf { .. }), "{e}");
    }
}
