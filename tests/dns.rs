//! Egress by host name, end to end: a real DNS server (unbound, serving a
//! test zone on loopback with query logging), real guardd, real kernel,
//! real clients (glibc's getaddrinfo through python and getent, dig over UDP
//! and TCP, curl).
//!
//! The agents' `/etc/resolv.conf` names 127.0.0.53 (bind-mounted in a mount
//! namespace of the test's own): the agent asks an address where nothing
//! listens, so an answer can only come from guardd's resolver, and no test
//! depends on the host's resolver.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use common::*;
use serde_json::Value;

/// The test zone. Every address is on loopback, so tests can listen on them.
const ZONE: &str = r#"$ORIGIN guard.test.
$TTL 300
@       IN SOA ns.guard.test. root.guard.test. 1 3600 600 86400 60
@       IN NS  ns.guard.test.
ns      IN A   127.0.0.53
api     IN A   127.0.0.21
other   IN A   127.0.0.23
v6      IN AAAA ::1
x.one   IN A   127.0.0.24
a.b.one IN A   127.0.0.25
one     IN A   127.0.0.26
alias   IN CNAME api
hop     IN CNAME far
far     IN CNAME end
end     IN A   127.0.0.31
short 2 IN A   127.0.0.22
meta    IN A   169.254.169.254
mixed   IN A   169.254.169.254
mixed   IN A   127.0.0.27
b       IN A   127.0.0.41
"#;

/// A name with 40 addresses: glibc asks without EDNS (512 bytes), so the
/// answer comes back truncated and glibc retries over TCP.
fn zone() -> String {
    let mut z = ZONE.to_owned();
    for i in 1..=40 {
        z.push_str(&format!("many    IN A   127.0.1.{i}\n"));
    }
    z
}

/// unbound on 127.0.77.1 (a port of its own), authoritative for guard.test.
struct Unbound {
    child: Option<Child>,
    dir: tempfile::TempDir,
    port: u16,
}

impl Unbound {
    fn start() -> Unbound {
        let dir = tempfile::Builder::new()
            .prefix("guard-dns")
            .tempdir()
            .unwrap();
        std::fs::write(dir.path().join("guard.test.zone"), zone()).unwrap();
        // A free UDP port on the address; unbound binds it right after.
        let port = std::net::UdpSocket::bind("127.0.77.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let conf = format!(
            r#"server:
  interface: 127.0.77.1@{port}
  do-daemonize: no
  use-syslog: no
  logfile: ""
  verbosity: 1
  log-queries: yes
  username: ""
  chroot: ""
  directory: "{dir}"
  pidfile: ""
  do-ip6: no
  access-control: 127.0.0.0/8 allow
  module-config: "iterator"
  local-zone: "test." nodefault
  msg-buffer-size: 65552
auth-zone:
  name: "guard.test."
  zonefile: "{dir}/guard.test.zone"
  for-downstream: yes
  for-upstream: yes
remote-control:
  control-enable: no
"#,
            dir = dir.path().display()
        );
        let conf_path = dir.path().join("unbound.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let log = std::fs::File::create(dir.path().join("unbound.log")).unwrap();
        let child = Command::new("unbound")
            .args(["-d", "-c"])
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("unbound (run `cargo xtask setup`)");
        let u = Unbound {
            child: Some(child),
            dir,
            port,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let out = Command::new("dig")
                .args(["+short", "+time=1", "+tries=1", "-p", &port.to_string()])
                .args(["@127.0.77.1", "ns.guard.test"])
                .output()
                .unwrap();
            if String::from_utf8_lossy(&out.stdout).contains("127.0.0.53") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "unbound did not start: {}",
                u.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        u
    }

    fn upstream(&self) -> String {
        format!("127.0.77.1:{}", self.port)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("unbound.log")).unwrap_or_default()
    }

    /// Whether unbound was asked for `name` (its query log).
    fn was_asked(&self, name: &str) -> bool {
        self.log().contains(&format!(" {name}. "))
    }
}

impl Drop for Unbound {
    fn drop(&mut self) {
        if let Some(c) = self.child.take() {
            terminate(c);
        }
    }
}

/// guardd whose resolvers forward to `dns`; each identical refusal its own
/// record.
fn guardd_for(dns: &Unbound, extra: &[&str]) -> Guardd {
    let up = dns.upstream();
    let mut args = vec!["--coalesce-interval", "0", "--dns-upstream", &up];
    args.extend_from_slice(extra);
    Guardd::start_with(&args)
}

fn dns_policy(g: &Guardd, name: &str, rules: &str, dns: &str) -> PathBuf {
    g.write_policy(
        name,
        &format!(
            "[policy]\nname = \"{name}\"\n\n[network]\nallow = [\n{rules}\n]\n\n[network.dns]\nanswers_allowed = [\"127.0.0.0/8\", \"::1/128\"]\n{dns}\n"
        ),
    )
}

/// `/etc/resolv.conf` for the agents: a resolver address nothing serves.
fn resolv_conf(g: &Guardd) -> PathBuf {
    let p = g.dir.path().join("resolv.conf");
    std::fs::write(&p, "nameserver 127.0.0.53\noptions timeout:2 attempts:1\n").unwrap();
    p
}

/// `guardctl run` in a mount namespace of its own whose `/etc/resolv.conf`
/// is [`resolv_conf`].
fn agent_cmd<S: AsRef<std::ffi::OsStr>>(
    g: &Guardd,
    policy: &Path,
    extra: &[&str],
    cmd: &[S],
) -> Command {
    let rc = resolv_conf(g);
    let mut c = Command::new("unshare");
    c.current_dir(g.dir.path())
        .args(["-m", "--propagation", "private", "sh", "-c"])
        .arg("mount --bind \"$0\" /etc/resolv.conf && exec \"$@\"")
        .arg(&rc)
        .arg(GUARDCTL)
        .args(["--socket", g.socket.to_str().unwrap()])
        .args(run_args(policy, extra, cmd));
    c
}

fn probe(g: &Guardd, policy: &Path, extra: &[&str], ops: &[String]) -> (Output, Vec<Value>) {
    let mut cmd = vec![PYTHON.to_owned(), agent_script("dnsprobe.py")];
    cmd.extend(ops.iter().cloned());
    let out = agent_cmd(g, policy, extra, &cmd).output().unwrap();
    let res = probe_results(&out);
    assert_eq!(res.len(), ops.len(), "{}", describe(&out));
    (out, res)
}

fn records(g: &Guardd, out: &Output) -> Vec<Value> {
    g.logs(&["--agent", &Guardd::agent_id(out)])
}

fn find(recs: &[Value], f: impl Fn(&Value) -> bool) -> Vec<&Value> {
    recs.iter().filter(|r| f(r)).collect()
}

#[test]
fn an_allowed_name_resolves_and_connects_and_nothing_else_does() {
    let dns = Unbound::start();
    let g = guardd_for(&dns, &[]);
    let api = Listener::tcp("127.0.0.21");
    let other = Listener::tcp("127.0.0.23");
    let p = dns_policy(
        &g,
        "names",
        &format!(
            "  {{ host = \"api.guard.test\", ports = [{}], protocol = \"tcp\" }},",
            api.port
        ),
        "",
    );
    let ops = vec![
        // The address before any lookup: no rule allows it.
        format!("tcp:127.0.0.21:{}", api.port),
        "resolve4:api.guard.test".to_owned(),
        format!("tcp:api.guard.test:{}", api.port),
        // The address again, now that a lookup opened it.
        format!("tcp:127.0.0.21:{}", api.port),
        // Another port of the same address: the rule's ports only.
        format!("tcp:127.0.0.21:{}", other.port),
        "resolve4:other.guard.test".to_owned(),
        format!("tcp:127.0.0.23:{}", other.port),
        "resolve4:secret-data-0123.exfil.example".to_owned(),
    ];
    let (out, res) = probe(&g, &p, &[], &ops);
    assert_eq!(res[0]["errno"], "EPERM", "{res:?}");
    assert_eq!(
        res[1]["addrs"],
        serde_json::json!(["127.0.0.21"]),
        "{res:?}"
    );
    assert_eq!(res[2]["ok"], true, "{res:?}");
    assert_eq!(res[3]["ok"], true, "{res:?}");
    assert_eq!(res[4]["errno"], "EPERM", "{res:?}");
    assert_eq!(res[5]["ok"], false, "{res:?}");
    assert_eq!(res[6]["errno"], "EPERM", "{res:?}");
    assert_eq!(res[7]["ok"], false, "{res:?}");
    assert!(dns.was_asked("api.guard.test"), "{}", dns.log());
    // Refused names never left the host.
    assert!(!dns.was_asked("other.guard.test"), "{}", dns.log());
    assert!(!dns.log().contains("exfil"), "{}", dns.log());

    let recs = records(&g, &out);
    let refused = find(&recs, |r| {
        r["kind"] == "dns" && r["verdict"] == "denied" && r["rule"] == "dns.name-not-allowed"
    });
    let names: Vec<&str> = refused
        .iter()
        .map(|r| r["target"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"other.guard.test"), "{recs:#?}");
    assert!(
        names.contains(&"secret-data-0123.exfil.example"),
        "{recs:#?}"
    );
    assert!(refused.iter().all(|r| r["layer"] == "dns"), "{refused:#?}");
    // The connection through the name rule names the host.
    let allowed = find(&recs, |r| {
        r["kind"] == "network" && r["verdict"] == "allowed" && r["action"] == "connect"
    });
    assert_eq!(
        allowed.len(),
        1,
        "one record for the first connection: {recs:#?}"
    );
    assert_eq!(
        allowed[0]["rule"], "network.host:api.guard.test",
        "{}",
        allowed[0]
    );
    // The address before the lookup: an ordinary default-deny.
    let denied = find(&recs, |r| {
        r["kind"] == "network"
            && r["verdict"] == "denied"
            && r["target"] == format!("127.0.0.21:{}/tcp", api.port)
    });
    assert_eq!(denied.len(), 1, "{recs:#?}");
}

#[test]
fn every_client_and_transport_reaches_the_agents_resolver() {
    let dns = Unbound::start();
    let g = guardd_for(&dns, &[]);
    let web = Listener::tcp("127.0.0.21");
    let p = dns_policy(
        &g,
        "clients",
        &format!("  {{ host = \"api.guard.test\", ports = [{}] }},", web.port),
        "",
    );
    let url = format!("http://api.guard.test:{}/", web.port);
    let script = format!(
        "set -u
getent hosts api.guard.test || echo getent-failed
dig +short api.guard.test A || echo dig-failed
dig +short +tcp api.guard.test A || echo digtcp-failed
dig +short @8.8.8.8 api.guard.test A || echo dig8-failed
dig +short @127.0.0.1 -p 53 api.guard.test A || echo diglo-failed
dig +short @::1 api.guard.test A || echo dig6-failed
dig @127.0.0.53 other.guard.test A | grep -o 'status: [A-Z]*' || echo digother-failed
curl -4 -s --max-time 5 {url} || echo curl-failed
"
    );
    let out = agent_cmd(&g, &p, &[], &["/bin/sh", "-c", &script])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(!text.contains("failed"), "{}", describe(&out));
    assert!(
        text.lines()
            .any(|l| l.starts_with("127.0.0.21") && l.ends_with("api.guard.test")),
        "getent: {}",
        describe(&out)
    );
    assert_eq!(
        text.lines().filter(|l| *l == "127.0.0.21").count(),
        5,
        "five digs answered: {}",
        describe(&out)
    );
    assert!(text.contains("status: REFUSED"), "{}", describe(&out));
    assert!(text.contains("ok"), "curl by name: {}", describe(&out));
    assert!(!dns.was_asked("other.guard.test"), "{}", dns.log());
}

#[test]
fn wildcards_match_as_documented() {
    let dns = Unbound::start();
    let g = guardd_for(&dns, &[]);
    let p = dns_policy(
        &g,
        "wild",
        "  { host = \"*.one.guard.test\", ports = [80] },\n  { host = \"**.guard.test\", ports = [81] },",
        "",
    );
    let p2 = dns_policy(
        &g,
        "wild2",
        "  { host = \"*.one.guard.test\", ports = [80] },",
        "",
    );
    let (_, res) = probe(
        &g,
        &p,
        &[],
        &[
            "resolve4:x.one.guard.test".into(),
            "resolve4:a.b.one.guard.test".into(),
            "resolve4:api.guard.test".into(),
        ],
    );
    assert!(res.iter().all(|r| r["ok"] == true), "{res:?}");
    let asked = |name: &str| dns.log().matches(&format!(" {name}. ")).count();
    let (deep, suffix) = (asked("a.b.one.guard.test"), asked("one.guard.test"));
    let (_, res) = probe(
        &g,
        &p2,
        &[],
        &[
            "resolve4:x.one.guard.test".into(),
            "resolve4:a.b.one.guard.test".into(),
            "resolve4:one.guard.test".into(),
        ],
    );
    assert_eq!(res[0]["ok"], true, "{res:?}");
    assert_eq!(res[1]["ok"], false, "one label only: {res:?}");
    assert_eq!(res[2]["ok"], false, "not the suffix itself: {res:?}");
    // Refused: never asked upstream.
    assert_eq!(asked("a.b.one.guard.test"), deep, "{}", dns.log());
    assert_eq!(asked("one.guard.test"), suffix, "{}", dns.log());
}

#[test]
fn cname_chains_rebinding_answers_and_many_addresses() {
    let dns = Unbound::start();
    let g = guardd_for(&dns, &[]);
    let p = g.write_policy(
        "chains",
        "[policy]\nname = \"chains\"\n[network]\nallow = [\n  { host = \"alias.guard.test\", ports = [80] },\n  { host = \"hop.guard.test\", ports = [80] },\n  { host = \"meta.guard.test\", ports = [80] },\n  { host = \"mixed.guard.test\", ports = [80] },\n  { host = \"many.guard.test\", ports = [80] },\n]\n[network.dns]\nanswers_allowed = [\"127.0.0.0/8\"]\n",
    );
    let ops: Vec<String> = [
        "resolve4:alias.guard.test",
        "resolve4:hop.guard.test",
        "resolve4:meta.guard.test",
        "resolve4:mixed.guard.test",
        "resolve4:many.guard.test",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let (out, res) = probe(&g, &p, &[], &ops);
    // One hop out of the policy's names is the target of an allowed name.
    assert_eq!(
        res[0]["addrs"],
        serde_json::json!(["127.0.0.21"]),
        "{res:?}"
    );
    // Two hops: refused.
    assert_eq!(res[1]["ok"], false, "{res:?}");
    // Rebinding to the metadata address: dropped, so no address at all.
    assert_eq!(res[2]["ok"], false, "{res:?}");
    assert_eq!(
        res[3]["addrs"],
        serde_json::json!(["127.0.0.27"]),
        "{res:?}"
    );
    // 40 addresses: truncated over UDP, complete over TCP.
    assert_eq!(
        res[4]["addrs"].as_array().map(Vec::len),
        Some(40),
        "{res:?}"
    );
    let recs = records(&g, &out);
    assert!(
        !find(&recs, |r| r["rule"] == "dns.cname-not-allowed"
            && r["target"] == "hop.guard.test")
        .is_empty(),
        "{recs:#?}"
    );
    let dropped = find(&recs, |r| r["rule"] == "dns.answer-internal");
    assert!(
        dropped.iter().any(
            |r| r["target"] == "meta.guard.test" && r["detail"]["address"] == "169.254.169.254"
        ),
        "{recs:#?}"
    );
    assert!(
        dropped.iter().any(|r| r["target"] == "mixed.guard.test"),
        "{recs:#?}"
    );
}

#[test]
fn an_expired_answer_stops_new_connections_but_not_open_ones() {
    let dns = Unbound::start();
    let g = guardd_for(&dns, &[]);
    let web = Listener::tcp("127.0.0.22");
    let p = dns_policy(
        &g,
        "ttl",
        &format!(
            "  {{ host = \"short.guard.test\", ports = [{}], protocol = \"tcp\" }},",
            web.port
        ),
        "ttl_floor = 1\nttl_ceiling = 2",
    );
    // Connect by name, hold it past the TTL, then connect by address.
    let op = format!(
        "hold:short.guard.test:{}:4:tcp;127.0.0.22;{}",
        web.port, web.port
    );
    let (out, res) = probe(&g, &p, &[], &[op]);
    assert_eq!(res[0]["ok"], true, "{res:?}");
    assert_eq!(res[0]["next"]["errno"], "EPERM", "expired: {res:?}");
    assert_eq!(
        res[0]["sent"], true,
        "the open connection survives: {res:?}"
    );
    let recs = records(&g, &out);
    let denied = find(&recs, |r| {
        r["kind"] == "network"
            && r["verdict"] == "denied"
            && r["target"] == format!("127.0.0.22:{}/tcp", web.port)
    });
    assert_eq!(denied.len(), 1, "{recs:#?}");
    assert_eq!(
        denied[0]["detail"]["expired_name"]["name"], "short.guard.test",
        "{}",
        denied[0]
    );
}

#[test]
fn dns_over_tcp_to_any_address_and_malformed_queries() {
    let dns = Unbound::start();
    let g = guardd_for(&dns, &[]);
    let p = dns_policy(
        &g,
        "raw",
        "  { host = \"api.guard.test\", ports = [80] },",
        "",
    );
    let ops = vec![
        // A well-formed query to an address nothing serves: guardd answers
        // and the reply shows the address asked.
        "udpq:127.0.0.53:53:api.guard.test".to_owned(),
        "udpq:[::1]:53:api.guard.test".to_owned(),
        "udpq:127.0.0.53:53:other.guard.test".to_owned(),
        // TCP Fast Open: data in the SYN, no connect() call.
        "tfoq:127.0.0.53:53:api.guard.test".to_owned(),
        // Garbage, a compression loop, a response instead of a query.
        "raw:127.0.0.53:53:00".to_owned(),
        "raw:127.0.0.53:53:12340100000100000000000003616263c00c00010001".to_owned(),
        "raw:127.0.0.53:53:12348180000100000000000003617069056775617264047465737400 00010001"
            .replace(' ', ""),
        // guardd still serves.
        "resolve4:api.guard.test".to_owned(),
    ];
    let (out, res) = probe(&g, &p, &[], &ops);
    assert_eq!(res[0]["rcode"], 0, "{res:?}");
    assert_eq!(res[0]["source"], "127.0.0.53", "{res:?}");
    assert_eq!(res[0]["source_port"], 53, "{res:?}");
    assert_eq!(res[1]["rcode"], 0, "{res:?}");
    assert_eq!(res[1]["source"], "::1", "{res:?}");
    assert_eq!(res[2]["rcode"], 5, "REFUSED: {res:?}");
    assert_eq!(
        res[3]["rcode"], 0,
        "fast open reaches the resolver: {res:?}"
    );
    for r in &res[4..7] {
        assert_eq!(r["reply"], Value::Null, "malformed: dropped: {r}");
    }
    assert_eq!(res[7]["ok"], true, "{res:?}");
    let recs = records(&g, &out);
    let malformed = find(&recs, |r| r["rule"] == "dns.malformed");
    assert_eq!(malformed.len(), 3, "{recs:#?}");
}

#[test]
fn a_thousand_lookups_then_connects_never_race_the_map() {
    let dns = Unbound::start();
    let g = guardd_for(&dns, &[]);
    let web = Listener::tcp("127.0.0.21");
    let p = dns_policy(
        &g,
        "loop",
        &format!(
            "  {{ host = \"api.guard.test\", ports = [{}], protocol = \"tcp\" }},",
            web.port
        ),
        // Every answer expires at once: each connect depends on the lookup
        // just before it.
        "ttl_floor = 1\nttl_ceiling = 1",
    );
    let (_, res) = probe(
        &g,
        &p,
        &[],
        &[format!("loop:1000:api.guard.test:{}", web.port)],
    );
    assert_eq!(res[0]["failures"], 0, "{res:?}");
}

#[test]
fn two_agents_open_nothing_for_each_other() {
    let dns = Unbound::start();
    let g = guardd_for(&dns, &[]);
    let a = Listener::tcp("127.0.0.21");
    let b = Listener::tcp("127.0.0.41");
    let pa = dns_policy(
        &g,
        "agent-a",
        &format!("  {{ host = \"api.guard.test\", ports = [{}] }},", a.port),
        "",
    );
    let pb = dns_policy(
        &g,
        "agent-b",
        &format!("  {{ host = \"b.guard.test\", ports = [{}] }},", b.port),
        "",
    );
    // B resolves its name and holds the answer open while A tries.
    let hold_b = format!("hold:b.guard.test:{}:3:resolve4;api.guard.test", b.port);
    let mut child_b = {
        let mut cmd = vec![PYTHON.to_owned(), agent_script("dnsprobe.py"), hold_b];
        cmd.insert(2, "resolve4:b.guard.test".to_owned());
        agent_cmd(&g, &pb, &[], &cmd)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    std::thread::sleep(Duration::from_millis(800));
    let (_, res) = probe(
        &g,
        &pa,
        &[],
        &[
            format!("tcp:127.0.0.41:{}", b.port),
            "resolve4:b.guard.test".into(),
            format!("tcp:api.guard.test:{}", a.port),
        ],
    );
    let out_b = {
        let _ = wait_or_kill(&mut child_b, Duration::from_secs(20));
        child_b.wait_with_output().unwrap()
    };
    let res_b = probe_results(&out_b);
    assert_eq!(
        res[0]["errno"], "EPERM",
        "B's answer opens nothing for A: {res:?}"
    );
    assert_eq!(res[1]["ok"], false, "{res:?}");
    assert_eq!(res[2]["ok"], true, "{res:?}");
    assert_eq!(res_b[0]["ok"], true, "{res_b:?}");
    assert_eq!(res_b[1]["ok"], true, "{res_b:?}");
    assert_eq!(
        res_b[1]["next"]["ok"], false,
        "A's name is not B's: {res_b:?}"
    );
}

#[test]
fn a_second_upstream_and_fail_closed_without_any() {
    let dns = Unbound::start();
    // The first upstream is dead: the second answers.
    let dead = format!("127.0.77.9:{}", closed_port());
    let g = Guardd::start_with(&[
        "--coalesce-interval",
        "0",
        "--dns-upstream",
        &dead,
        "--dns-upstream",
        &dns.upstream(),
    ]);
    let p = dns_policy(
        &g,
        "up",
        "  { host = \"api.guard.test\", ports = [80] },",
        "",
    );
    let (_, res) = probe(&g, &p, &[], &["resolve4:api.guard.test".into()]);
    assert_eq!(
        res[0]["addrs"],
        serde_json::json!(["127.0.0.21"]),
        "{res:?}"
    );
    drop(g);
    // Only a dead upstream: lookups fail, nothing is asked anywhere else.
    let g = Guardd::start_with(&["--coalesce-interval", "0", "--dns-upstream", &dead]);
    let p = dns_policy(
        &g,
        "down",
        "  { host = \"api.guard.test\", ports = [80] },",
        "",
    );
    let (out, res) = probe(&g, &p, &[], &["udpq:127.0.0.53:53:api.guard.test".into()]);
    assert_eq!(res[0]["rcode"], 2, "SERVFAIL: {res:?}");
    let recs = records(&g, &out);
    assert!(
        !find(&recs, |r| r["rule"] == "dns.upstream-failed").is_empty(),
        "{recs:#?}"
    );
}

#[test]
fn dns_over_tls_needs_an_explicit_rule() {
    let dns = Unbound::start();
    let g = guardd_for(&dns, &[]);
    let _dot = std::net::TcpListener::bind("127.0.0.61:853").unwrap();
    let broad = dns_policy(
        &g,
        "broad",
        "  { cidr = \"127.0.0.0/8\" },\n  { host = \"api.guard.test\", ports = [80] },",
        "",
    );
    let explicit = dns_policy(
        &g,
        "explicit",
        "  { cidr = \"127.0.0.61/32\", ports = [853] },\n  { host = \"api.guard.test\", ports = [80] },",
        "",
    );
    let (_, res) = probe(&g, &broad, &[], &["tcp:127.0.0.61:853".into()]);
    assert_eq!(res[0]["errno"], "EPERM", "{res:?}");
    let (_, res) = probe(&g, &explicit, &[], &["tcp:127.0.0.61:853".into()]);
    assert_eq!(res[0]["ok"], true, "{res:?}");
}

#[test]
fn audit_mode_records_the_names_looked_up_and_connected_to() {
    let dns = Unbound::start();
    let g = guardd_for(&dns, &[]);
    let web = Listener::tcp("127.0.0.23");
    let p = dns_policy(
        &g,
        "audit",
        "  { host = \"api.guard.test\", ports = [80] },",
        "",
    );
    let (out, res) = probe(
        &g,
        &p,
        &["--audit"],
        &[
            "resolve4:other.guard.test".into(),
            format!("tcp:other.guard.test:{}", web.port),
        ],
    );
    assert_eq!(
        res[0]["addrs"],
        serde_json::json!(["127.0.0.23"]),
        "{res:?}"
    );
    assert_eq!(res[1]["ok"], true, "{res:?}");
    let recs = records(&g, &out);
    let looked = find(&recs, |r| {
        r["kind"] == "dns" && r["verdict"] == "audit" && r["target"] == "other.guard.test"
    });
    assert!(!looked.is_empty(), "{recs:#?}");
    let conn = find(&recs, |r| {
        r["kind"] == "network" && r["verdict"] == "audit" && r["action"] == "connect"
    });
    assert_eq!(conn.len(), 1, "{recs:#?}");
    assert_eq!(conn[0]["detail"]["name"], "other.guard.test", "{}", conn[0]);
}

#[test]
fn a_restarted_guardd_forgets_the_old_answers_and_serves_the_agent_again() {
    let dns = Unbound::start();
    let mut g = guardd_for(&dns, &[]);
    let named = Listener::tcp("127.0.0.21");
    let fixed = Listener::tcp("127.0.0.21");
    // A static rule at exactly the address the name resolves to: the
    // answer's grant shares its map entry.
    let p = dns_policy(
        &g,
        "restart",
        &format!(
            "  {{ host = \"api.guard.test\", ports = [{}], protocol = \"tcp\" }},\n  {{ cidr = \"127.0.0.21/32\", ports = [{}], protocol = \"tcp\" }},",
            named.port, fixed.port
        ),
        "",
    );
    let go = g.dir.path().join("go");
    let ops = [
        "resolve4:api.guard.test".to_owned(),
        format!("tcp:127.0.0.21:{}", named.port),
        format!("wait:{}", go.display()),
        // The answer of the guardd that died is gone; the static rule
        // stays; a new lookup opens the name again.
        format!("tcp:127.0.0.21:{}", named.port),
        format!("tcp:127.0.0.21:{}", fixed.port),
        "resolve4:api.guard.test".to_owned(),
        format!("tcp:127.0.0.21:{}", named.port),
    ];
    let mut cmd = vec![PYTHON.to_owned(), agent_script("dnsprobe.py")];
    cmd.extend(ops.iter().cloned());
    let mut child = agent_cmd(&g, &p, &[], &cmd)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Until the agent has connected once.
    let deadline = Instant::now() + Duration::from_secs(20);
    while named.accepted.load(std::sync::atomic::Ordering::Relaxed) == 0 {
        assert!(Instant::now() < deadline, "the agent never connected");
        std::thread::sleep(Duration::from_millis(20));
    }
    g.crash();
    g.restart_after_crash();
    std::fs::write(&go, "").unwrap();
    let _ = wait_or_kill(&mut child, Duration::from_secs(30));
    let out = child.wait_with_output().unwrap();
    let res = probe_results(&out);
    assert_eq!(res.len(), ops.len(), "{}", describe(&out));
    assert_eq!(res[1]["ok"], true, "{res:?}");
    assert_eq!(res[2]["found"], true, "{res:?}");
    assert_eq!(res[3]["errno"], "EPERM", "the old answer is gone: {res:?}");
    assert_eq!(res[4]["ok"], true, "the static rule stays: {res:?}");
    assert_eq!(
        res[5]["addrs"],
        serde_json::json!(["127.0.0.21"]),
        "{res:?}"
    );
    assert_eq!(res[6]["ok"], true, "{res:?}");
}
