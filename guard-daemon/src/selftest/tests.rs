use super::*;
use crate::journal::Text;

fn report(outcome: ProbeOutcome, detail: &str) -> ProbeReport {
    ProbeReport {
        attempt: "net.connect.v4".into(),
        outcome,
        detail: detail.into(),
    }
}

fn rec(kind: Kind, target: &str, rule: &str, verdict: Verdict) -> Record {
    Record::new(
        kind,
        "connect",
        Text::new(target),
        verdict,
        rule,
        "cgroup-bpf",
    )
}

fn result(held: Held, recorded: Recorded) -> AttemptResult {
    AttemptResult {
        attempt: "x".into(),
        family: Family::Network,
        held,
        recorded,
        agent: "a".into(),
        detail: "d".into(),
    }
}

#[test]
fn a_refusal_holds() {
    let r = report(ProbeOutcome::Refused, "connect: Operation not permitted");
    let (h, d) = judge(Some(&r), RunEnd::Exit(0), None, None);
    assert_eq!(h, Held::Held);
    assert!(d.contains("not permitted"));
}

#[test]
fn the_outside_overrules_a_probe_that_says_refused() {
    let r = report(ProbeOutcome::Refused, "refused");
    let (h, d) = judge(Some(&r), RunEnd::Exit(0), Some("1 connection(s)"), None);
    assert_eq!(h, Held::Escaped);
    assert!(d.contains("seen outside the scope"), "{d}");
    // And with no probe line at all.
    let (h, _) = judge(None, RunEnd::Exit(1), Some("x"), Some(libc::SIGSYS));
    assert_eq!(h, Held::Escaped);
}

#[test]
fn a_probe_that_succeeded_escaped() {
    let r = report(ProbeOutcome::Succeeded, "connected");
    assert_eq!(
        judge(Some(&r), RunEnd::Exit(0), None, None).0,
        Held::Escaped
    );
}

#[test]
fn a_probe_error_or_silence_proves_nothing() {
    let r = report(ProbeOutcome::Error, "no such file");
    assert_eq!(
        judge(Some(&r), RunEnd::Exit(0), None, None).0,
        Held::CouldNotTest
    );
    // Silence: an exec refused, guardctl failing, a crash.
    for code in [0, 1, 125, 127, 128 + libc::SIGKILL] {
        assert_eq!(
            judge(None, RunEnd::Exit(code), None, None).0,
            Held::CouldNotTest,
            "{code}"
        );
    }
    assert_eq!(
        judge(None, RunEnd::TimedOut, None, Some(libc::SIGSYS)).0,
        Held::CouldNotTest
    );
}

#[test]
fn being_killed_is_the_refusal_only_for_the_signal_named() {
    let sigsys = 128 + libc::SIGSYS;
    assert_eq!(
        judge(None, RunEnd::Exit(sigsys), None, Some(libc::SIGSYS)).0,
        Held::Held
    );
    assert_eq!(
        judge(
            None,
            RunEnd::Exit(128 + libc::SIGKILL),
            None,
            Some(libc::SIGSYS)
        )
        .0,
        Held::CouldNotTest
    );
    assert_eq!(
        judge(None, RunEnd::Exit(sigsys), None, None).0,
        Held::CouldNotTest
    );
}

#[test]
fn records_match_by_kind_and_target_or_rule() {
    let e = Expect::record(&[Kind::Network], &[":4242/tcp"], &[]);
    let good = rec(
        Kind::Network,
        "127.0.0.1:4242/tcp",
        "network.default-deny",
        Verdict::Denied,
    );
    assert!(record_matches(&e, &good, Mode::Enforce));
    // Another port, another kind, an allowed verdict: not this refusal.
    let other_port = rec(Kind::Network, "127.0.0.1:4243/tcp", "r", Verdict::Denied);
    assert!(!record_matches(&e, &other_port, Mode::Enforce));
    let other_kind = rec(Kind::File, "127.0.0.1:4242/tcp", "r", Verdict::Denied);
    assert!(!record_matches(&e, &other_kind, Mode::Enforce));
    let allowed = rec(Kind::Network, "127.0.0.1:4242/tcp", "r", Verdict::Allowed);
    assert!(!record_matches(&e, &allowed, Mode::Enforce));
    // Audit records count only for an audit-mode policy.
    let audit = rec(Kind::Network, "127.0.0.1:4242/tcp", "r", Verdict::Audit);
    assert!(!record_matches(&e, &audit, Mode::Enforce));
    assert!(record_matches(&e, &audit, Mode::Audit));

    let by_rule = Expect::record(&[], &[], &["process.max_processes"]);
    let fork = rec(
        Kind::Syscall,
        "fork",
        "process.max_processes",
        Verdict::Denied,
    );
    assert!(record_matches(&by_rule, &fork, Mode::Enforce));
    let lifecycle = rec(
        Kind::Lifecycle,
        "fork",
        "process.max_processes",
        Verdict::Denied,
    );
    assert!(
        !record_matches(&by_rule, &lifecycle, Mode::Enforce),
        "a start or exit record is no refusal"
    );
    // Nothing expected matches nothing.
    assert!(!record_matches(
        &Expect::Nothing("n/a"),
        &good,
        Mode::Enforce
    ));
    // An empty target never matches everything.
    let empty = Expect::record(&[Kind::Network], &[""], &[]);
    assert!(!record_matches(&empty, &good, Mode::Enforce));
}

#[test]
fn only_held_and_recorded_passes() {
    assert!(result(Held::Held, Recorded::Recorded("r".into())).passed());
    assert!(result(Held::Held, Recorded::NotExpected("why".into())).passed());
    assert!(result(Held::Skipped, Recorded::NotChecked).passed());
    assert!(!result(Held::Held, Recorded::Missing).passed());
    assert!(!result(Held::Escaped, Recorded::NotChecked).passed());
    assert!(!result(Held::CouldNotTest, Recorded::NotChecked).passed());

    let all = [
        result(Held::Held, Recorded::Recorded("r".into())),
        result(Held::Skipped, Recorded::NotChecked),
    ];
    let s = Summary::of(&all);
    assert!(s.passed());
    // A run that skipped everything proves nothing.
    let skipped = [result(Held::Skipped, Recorded::NotChecked)];
    assert!(!Summary::of(&skipped).passed());
    assert!(!Summary::of(&[]).passed());
    assert!(s.line().ends_with("PASS"), "{}", s.line());
    for bad in [
        result(Held::Held, Recorded::Missing),
        result(Held::Escaped, Recorded::NotChecked),
        result(Held::CouldNotTest, Recorded::NotChecked),
    ] {
        let s = Summary::of(&[all[0].clone(), bad]);
        assert!(!s.passed(), "{s:?}");
        assert!(s.line().ends_with("FAIL"));
    }
}

#[test]
fn report_lines_escape_hostile_text() {
    let mut r = result(
        Held::Held,
        Recorded::Recorded("journal: connect evil\u{1b}[2J refused".into()),
    );
    r.attempt = "net\nforged".into();
    r.detail = "held\r\nescaped   recorded   net.connect.v4 \u{202e}".into();
    let line = r.line();
    assert_eq!(line.lines().count(), 1, "{line:?}");
    assert!(!line.contains('\u{1b}'), "{line:?}");
    assert!(!line.contains('\r'), "{line:?}");
    assert!(!line.contains('\u{202e}'), "{line:?}");
    assert!(line.contains("net\\nforged"), "{line:?}");
    assert!(line.starts_with("held      recorded   "), "{line:?}");
}

#[test]
fn labels_are_fixed_width_words() {
    let esc = result(Held::Escaped, Recorded::NotChecked).line();
    assert!(esc.starts_with("ESCAPED   -          "), "{esc:?}");
    let unrec = result(Held::Held, Recorded::Missing).line();
    assert!(unrec.starts_with("held      UNRECORDED "), "{unrec:?}");
}

/// Attempts that take arguments from the runner.
const WITH_ARGS: &[&str] = &[
    "net.connect.v4",
    "net.connect.v6",
    "net.connect.v4-mapped",
    "net.connect.any",
    "net.udp.sendto",
    "net.udp.connect",
    "net.udp.sendmsg",
    "net.tcp.fastopen",
    "abi.i386-open",
    "file.read",
    "file.write",
    "file.symlink",
    "file.hardlink",
    "file.proc-self-root",
    "file.proc-outsider",
    "file.handle",
    "exec.program",
    "exec.memfd",
    "exec.copy",
    "exec.loader",
    "exec.mmap-noexec",
    "ctl.socket",
    "ns.mount",
    "limits.fork",
];

#[test]
fn the_battery_names_are_unique_and_the_probe_knows_each() {
    let mut names: Vec<&str> = BATTERY.iter().map(|a| a.name).collect();
    names.sort_unstable();
    let n = names.len();
    names.dedup();
    assert_eq!(names.len(), n);
    // Without its arguments an attempt reports them missing (it is known
    // to the probe, and a malformed request is an error, not a panic).
    for name in WITH_ARGS {
        assert!(BATTERY.iter().any(|a| a.name == *name), "{name}");
        let r = probe::run(name, &[]);
        assert_eq!(r.outcome, ProbeOutcome::Error, "{name}");
        assert!(
            r.detail.contains("missing argument"),
            "{name}: {}",
            r.detail
        );
    }
    let r = probe::run("no.such", &[]);
    assert_eq!(r.outcome, ProbeOutcome::Error);
    assert!(r.detail.contains("unknown attempt"));
    let r = probe::run("limits.fork", &["many".into()]);
    assert_eq!(r.outcome, ProbeOutcome::Error);
    let r = probe::run("net.connect.v4", &["not an address".into()]);
    assert_eq!(r.outcome, ProbeOutcome::Error);
}

#[test]
fn the_probe_line_is_the_last_json_line() {
    let out = b"noise\n{\"attempt\":\"mark\",\"outcome\":\"succeeded\",\"detail\":\"payload\"}\n\
                {\"attempt\":\"exec.memfd\",\"outcome\":\"refused\",\"detail\":\"EACCES\"}\n";
    let r = probe_line(out).unwrap();
    assert_eq!(r.attempt, "exec.memfd");
    assert_eq!(r.outcome, ProbeOutcome::Refused);
    assert!(probe_line(b"no json here\n").is_none());
    assert!(probe_line(b"{broken\n").is_none());
}

#[test]
fn targets_are_bound_on_ports_the_policy_does_not_allow() {
    let plan = |allow: &str| {
        Policy::parse(
            &format!("[policy]\nname = \"t\"\n[network]\nallow = [{allow}]\n"),
            "t.toml",
        )
        .unwrap()
        .compile(&Vars {
            workdir: "/w".into(),
            home: "/root".into(),
            tmp: "/t".into(),
        })
        .unwrap()
    };
    let bind = |p: u16| TcpListener::bind(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), p));
    // Every port on loopback allowed: nothing to test against.
    let all = plan(r#"{ cidr = "127.0.0.0/8", protocol = "tcp" }"#);
    assert!(
        bind_unallowed(&all, guard_common::PROTO_TCP, bind)
            .unwrap()
            .is_none()
    );
    // UDP allowed everywhere leaves TCP to test.
    let udp = plan(r#"{ cidr = "127.0.0.0/8", protocol = "udp" }"#);
    let l = bind_unallowed(&udp, guard_common::PROTO_TCP, bind)
        .unwrap()
        .unwrap();
    let port = l.local_addr().unwrap().port();
    assert!(
        udp.network
            .lookup(IpAddr::V4(Ipv4Addr::LOCALHOST))
            .and_then(|v| port_allowed(v, port, guard_common::PROTO_TCP))
            .is_none()
    );
}

#[test]
fn the_default_policy_parses_with_a_hostile_path() {
    let text = default_policy(Path::new("/opt/odd \"dir\"\n/guardctl"));
    let p = Policy::parse(&text, "selftest.toml").unwrap();
    let plan = p
        .compile(&Vars {
            workdir: "/w".into(),
            home: "/root".into(),
            tmp: "/t".into(),
        })
        .unwrap();
    assert_eq!(plan.process.max_processes, Some(DEFAULT_MAX_PROCESSES));
    assert!(plan.network.v4.is_empty() && plan.network.v6.is_empty());
    assert!(
        plan.filesystem
            .rules
            .iter()
            .any(|r| r.access.exec && r.path == Path::new("/opt/odd \"dir\"\n/guardctl"))
    );
}
