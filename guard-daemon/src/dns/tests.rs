//! A real [`AgentResolver`] on its real sockets, asking a fake upstream
//! server on 127.0.0.1 that answers with canned hickory-built messages;
//! and property tests feeding arbitrary and mutated messages to the query
//! and answer handling.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use hickory_proto::{
    op::{Edns, Message, OpCode, Query, ResponseCode},
    rr::{
        Name, RData, Record, RecordType,
        rdata::{A, CNAME, TXT},
    },
};
use proptest::prelude::*;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream, UdpSocket},
    runtime::Handle,
    time::timeout,
};

use super::{
    answer::screen,
    query::{decide, encode_reply, error_reply, parse_query, rules_of, tests::plan},
    server::answer_message,
    upstream::check_reply,
    *,
};
use crate::policy::host::DnsPlan;

/// A guard against a hang, not a measurement.
const PATIENCE: Duration = Duration::from_secs(20);

#[derive(Default)]
struct Sink {
    log: Mutex<Vec<(IpAddr, Option<Vec<u16>>)>>,
    fail: AtomicBool,
}

impl AddressSink for Sink {
    fn write(&self, ip: IpAddr, rules: &[u16]) -> Result<(), String> {
        if self.fail.load(Ordering::SeqCst) {
            return Err("map full".into());
        }
        self.log.lock().unwrap().push((ip, Some(rules.to_vec())));
        Ok(())
    }
    fn clear(&self, ip: IpAddr) -> Result<(), String> {
        self.log.lock().unwrap().push((ip, None));
        Ok(())
    }
}

impl Sink {
    fn log(&self) -> Vec<(IpAddr, Option<Vec<u16>>)> {
        self.log.lock().unwrap().clone()
    }
}

#[derive(Default)]
struct Events(Mutex<Vec<DnsEvent>>);

impl DnsEvents for Events {
    fn event(&self, ev: DnsEvent) {
        self.0.lock().unwrap().push(ev);
    }
}

impl Events {
    fn all(&self) -> Vec<DnsEvent> {
        self.0.lock().unwrap().clone()
    }
    async fn wait_for(&self, want: impl Fn(&DnsEvent) -> bool) -> DnsEvent {
        timeout(PATIENCE, async {
            loop {
                if let Some(e) = self.all().into_iter().find(|e| want(e)) {
                    return e;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .unwrap()
    }
}

/// What the fake upstream sends for a query: the datagrams (or TCP
/// messages) to send back, in order; none is silence.
type Answerer = Arc<dyn Fn(&Message, bool) -> Vec<Vec<u8>> + Send + Sync>;

struct Upstream {
    addr: SocketAddr,
    udp_asked: Arc<AtomicUsize>,
    tcp_asked: Arc<AtomicUsize>,
}

async fn upstream(answer: Answerer) -> Upstream {
    let (udp, tcp) = loop {
        let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let port = udp.local_addr().unwrap().port();
        if let Ok(tcp) = TcpListener::bind(("127.0.0.1", port)).await {
            break (udp, tcp);
        }
    };
    let addr = udp.local_addr().unwrap();
    let udp_asked = Arc::new(AtomicUsize::new(0));
    let tcp_asked = Arc::new(AtomicUsize::new(0));
    let (a, n) = (answer.clone(), udp_asked.clone());
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65535];
        loop {
            let (len, peer) = udp.recv_from(&mut buf).await.unwrap();
            let q = Message::from_vec(&buf[..len]).unwrap();
            n.fetch_add(1, Ordering::SeqCst);
            for d in a(&q, false) {
                udp.send_to(&d, peer).await.unwrap();
            }
        }
    });
    let (a, n) = (answer, tcp_asked.clone());
    tokio::spawn(async move {
        loop {
            let (mut s, _) = tcp.accept().await.unwrap();
            let (a, n) = (a.clone(), n.clone());
            tokio::spawn(async move {
                let mut len = [0u8; 2];
                s.read_exact(&mut len).await.unwrap();
                let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
                s.read_exact(&mut buf).await.unwrap();
                let q = Message::from_vec(&buf).unwrap();
                n.fetch_add(1, Ordering::SeqCst);
                for d in a(&q, true) {
                    let mut out = (d.len() as u16).to_be_bytes().to_vec();
                    out.extend_from_slice(&d);
                    s.write_all(&out).await.unwrap();
                }
            });
        }
    });
    Upstream {
        addr,
        udp_asked,
        tcp_asked,
    }
}

fn n(s: &str) -> Name {
    Name::from_ascii(s).unwrap()
}

fn a(owner: &str, ttl: u32, ip: [u8; 4]) -> Record {
    Record::from_rdata(n(owner), ttl, RData::A(A(Ipv4Addr::from(ip))))
}

/// The upstream's answer to `q`: its id and question, these records.
fn reply(q: &Message, rcode: ResponseCode, answers: Vec<Record>) -> Message {
    let mut m = Message::response(q.metadata.id, OpCode::Query);
    m.metadata.recursion_available = true;
    m.metadata.response_code = rcode;
    m.add_queries(q.queries.iter().cloned());
    m.insert_answers(answers);
    m
}

/// Answers `a.example.com`/`b.example.com` A 93.184.216.34 (TTL 7200),
/// `cdn.example.com` with a CNAME to `edge.cdn.net`, `big.example.com` with
/// 40 TXT records, `tc.example.com` truncated over UDP, anything else
/// NXDOMAIN.
fn canned() -> Answerer {
    Arc::new(|q: &Message, tcp: bool| {
        let name = q.queries[0].name().to_ascii().to_ascii_lowercase();
        let m = match name.as_str() {
            "a.example.com." | "b.example.com." | "other.example.net." => reply(
                q,
                ResponseCode::NoError,
                vec![a(&name, 7200, [93, 184, 216, 34])],
            ),
            "cdn.example.com." => reply(
                q,
                ResponseCode::NoError,
                vec![
                    Record::from_rdata(n(&name), 300, RData::CNAME(CNAME(n("edge.cdn.net.")))),
                    a("edge.cdn.net.", 20, [198, 51, 100, 7]),
                    a("edge.cdn.net.", 20, [127, 0, 0, 1]),
                ],
            ),
            "big.example.com." => reply(
                q,
                ResponseCode::NoError,
                (0..40)
                    .map(|i| {
                        Record::from_rdata(
                            n(&name),
                            60,
                            RData::TXT(TXT::new(vec![format!("{i:060}")])),
                        )
                    })
                    .collect(),
            ),
            "tc.example.com." if !tcp => {
                let mut m = reply(q, ResponseCode::NoError, vec![]);
                m.metadata.truncation = true;
                m
            }
            "tc.example.com." => reply(
                q,
                ResponseCode::NoError,
                vec![a(&name, 60, [203, 0, 113, 9])],
            ),
            _ => reply(q, ResponseCode::NXDomain, vec![]),
        };
        vec![m.to_vec().unwrap()]
    })
}

struct Fixture {
    resolver: AgentResolver,
    sink: Arc<Sink>,
    events: Arc<Events>,
}

fn start_with(upstreams: Vec<SocketAddr>, plan: DnsPlan, audit: bool) -> Fixture {
    let sink = Arc::new(Sink::default());
    let events = Arc::new(Events::default());
    // The default timeout: a loaded test machine must not turn a slow
    // fake upstream into a silent one. Only the silent-upstream test
    // waits it out.
    let cfg = ResolverConfig::new(upstreams);
    let resolver = AgentResolver::start(
        &Handle::current(),
        Arc::new(cfg),
        Arc::new(plan),
        audit,
        sink.clone(),
        events.clone(),
        None,
    )
    .unwrap();
    Fixture {
        resolver,
        sink,
        events,
    }
}

fn example_plan() -> DnsPlan {
    plan(&[("a.example.com", 1), ("*.example.com", 2)])
}

fn query(name: &str, t: RecordType, id: u16) -> Vec<u8> {
    let mut m = Message::query();
    m.metadata.id = id;
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(n(name), t));
    m.to_vec().unwrap()
}

async fn ask_udp(to: SocketAddr, q: &[u8]) -> Message {
    let s = UdpSocket::bind(if to.is_ipv4() {
        "127.0.0.1:0"
    } else {
        "[::1]:0"
    })
    .await
    .unwrap();
    s.send_to(q, to).await.unwrap();
    let mut buf = vec![0u8; 65535];
    let (len, from) = timeout(PATIENCE, s.recv_from(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(from, to);
    Message::from_vec(&buf[..len]).unwrap()
}

async fn ask_tcp(to: SocketAddr, q: &[u8]) -> Message {
    let mut s = TcpStream::connect(to).await.unwrap();
    super::query::write_framed(&mut s, q).await.unwrap();
    let buf = timeout(PATIENCE, super::query::read_framed(&mut s))
        .await
        .unwrap()
        .unwrap();
    Message::from_vec(&buf).unwrap()
}

fn v4(port: u16) -> SocketAddr {
    (Ipv4Addr::LOCALHOST, port).into()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allowed_name_is_granted_before_it_is_answered() {
    let up = upstream(canned()).await;
    let f = start_with(vec![up.addr], example_plan(), false);
    let r = ask_udp(
        v4(f.resolver.port()),
        &query("A.example.com.", RecordType::A, 4242),
    )
    .await;
    // The write is in the sink by the time the agent has the answer.
    assert_eq!(f.sink.log(), vec![(ip("93.184.216.34"), Some(vec![1, 2]))]);
    assert_eq!(r.metadata.id, 4242);
    assert_eq!(r.metadata.response_code, ResponseCode::NoError);
    assert_eq!(r.queries[0].name().to_ascii(), "A.example.com.");
    assert_eq!(r.answers.len(), 1);
    // 7200 s cut to the ceiling.
    assert_eq!(r.answers[0].ttl, 3600);
    let ev = f
        .events
        .wait_for(|e| matches!(e, DnsEvent::Allowed { .. }))
        .await;
    assert_eq!(
        ev,
        DnsEvent::Allowed {
            name: "a.example.com".into(),
            qtype: "A".into(),
            addrs: vec![ip("93.184.216.34")],
            chain: vec!["a.example.com".into()],
            ttl: Duration::from_secs(3600),
            rules: vec![1, 2],
        }
    );
    let info = f.resolver.names().name_of(ip("93.184.216.34")).unwrap();
    assert_eq!(
        (info.name.as_str(), info.rule(), info.expired),
        ("a.example.com", Some(1), false)
    );
    assert_eq!(up.udp_asked.load(Ordering::SeqCst), 1);

    // Over TCP too, and on [::1] where there is IPv6.
    let r = ask_tcp(
        v4(f.resolver.port()),
        &query("b.example.com.", RecordType::A, 7),
    )
    .await;
    assert_eq!(r.answers.len(), 1);
    if f.resolver.ipv6() {
        let to: SocketAddr = (std::net::Ipv6Addr::LOCALHOST, f.resolver.port()).into();
        let r = ask_udp(to, &query("b.example.com.", RecordType::A, 8)).await;
        assert_eq!(r.answers.len(), 1);
        let r = ask_tcp(to, &query("b.example.com.", RecordType::A, 9)).await;
        assert_eq!(r.answers.len(), 1);
    } else {
        assert!(
            f.events
                .all()
                .iter()
                .any(|e| matches!(e, DnsEvent::Ipv6Unavailable { .. }))
        );
    }

    // Stopping clears what was written.
    let sink = f.sink.clone();
    f.resolver.stop();
    assert_eq!(sink.log().last(), Some(&(ip("93.184.216.34"), None)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_no_rule_allows_is_refused_and_not_asked() {
    let up = upstream(canned()).await;
    let f = start_with(vec![up.addr], example_plan(), false);
    let to = v4(f.resolver.port());
    let r = ask_udp(to, &query("other.example.net.", RecordType::A, 1)).await;
    assert_eq!(r.metadata.response_code, ResponseCode::Refused);
    assert!(r.answers.is_empty());
    let r = ask_udp(to, &query("a.example.com.", RecordType::ANY, 2)).await;
    assert_eq!(r.metadata.response_code, ResponseCode::Refused);
    assert_eq!(up.udp_asked.load(Ordering::SeqCst), 0);
    assert!(f.sink.log().is_empty());
    let ev = f.events.all();
    assert!(ev.contains(&DnsEvent::Refused {
        name: "other.example.net".into(),
        qtype: "A".into(),
        tcp: false,
        over_budget: false,
    }));
    assert!(ev.iter().any(|e| matches!(e, DnsEvent::TypeRefused { .. })));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_mode_forwards_and_writes_nothing() {
    let up = upstream(canned()).await;
    let f = start_with(vec![up.addr], example_plan(), true);
    let r = ask_udp(
        v4(f.resolver.port()),
        &query("other.example.net.", RecordType::A, 1),
    )
    .await;
    assert_eq!(r.answers.len(), 1);
    assert!(f.sink.log().is_empty());
    let ev = f
        .events
        .wait_for(|e| matches!(e, DnsEvent::Audited { .. }))
        .await;
    assert!(matches!(ev, DnsEvent::Audited { ref addrs, .. } if addrs == &[ip("93.184.216.34")]));
    let info = f.resolver.names().name_of(ip("93.184.216.34")).unwrap();
    assert_eq!(info.rule(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cname_answer_is_screened() {
    let up = upstream(canned()).await;
    let f = start_with(vec![up.addr], example_plan(), false);
    let r = ask_udp(
        v4(f.resolver.port()),
        &query("cdn.example.com.", RecordType::A, 3),
    )
    .await;
    // The loopback address is gone; the CNAME's TTL is cut to the
    // lifetime, the floor (30 s) over the A record's 20 s.
    assert_eq!(r.answers.len(), 2, "{r}");
    assert_eq!(r.answers[0].ttl, 30);
    assert_eq!(r.answers[1].ttl, 20);
    assert_eq!(f.sink.log(), vec![(ip("198.51.100.7"), Some(vec![2]))]);
    assert_eq!(
        f.resolver.names().name_of(ip("198.51.100.7")).unwrap().name,
        "edge.cdn.net"
    );
    f.events
        .wait_for(
            |e| matches!(e, DnsEvent::AnswerDropped { addrs, .. } if addrs == &[ip("127.0.0.1")]),
        )
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_answers_go_over_tcp() {
    let up = upstream(canned()).await;
    let f = start_with(vec![up.addr], example_plan(), false);
    let to = v4(f.resolver.port());
    let r = ask_udp(to, &query("big.example.com.", RecordType::TXT, 5)).await;
    assert!(r.metadata.truncation);
    assert!(r.answers.is_empty());
    let r = ask_tcp(to, &query("big.example.com.", RecordType::TXT, 6)).await;
    assert!(!r.metadata.truncation);
    assert_eq!(r.answers.len(), 40);
    // With EDNS the client takes it over UDP.
    let mut m = Message::from_vec(&query("big.example.com.", RecordType::TXT, 7)).unwrap();
    let mut e = Edns::new();
    e.set_max_payload(4096);
    m.set_edns(e);
    let r = ask_udp(to, &m.to_vec().unwrap()).await;
    assert_eq!(r.answers.len(), 40);
    // A truncated upstream answer is asked again over TCP.
    let r = ask_udp(to, &query("tc.example.com.", RecordType::A, 8)).await;
    assert_eq!(r.answers.len(), 1);
    assert_eq!(up.tcp_asked.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_and_silent_upstreams() {
    // The first server answers first with a wrong id and a wrong question,
    // then rightly; the resolver takes only the right one.
    let forger: Answerer = Arc::new(|q: &Message, _| {
        let mut wrong_id = reply(
            q,
            ResponseCode::NoError,
            vec![a("a.example.com.", 60, [6, 6, 6, 6])],
        );
        wrong_id.metadata.id = q.metadata.id.wrapping_add(1);
        let mut other_q = Message::response(q.metadata.id, OpCode::Query);
        other_q.add_query(Query::query(n("evil.example.com."), RecordType::A));
        other_q.add_answer(a("a.example.com.", 60, [6, 6, 6, 7]));
        let right = reply(
            q,
            ResponseCode::NoError,
            vec![a("a.example.com.", 60, [1, 2, 3, 4])],
        );
        vec![
            wrong_id.to_vec().unwrap(),
            other_q.to_vec().unwrap(),
            right.to_vec().unwrap(),
        ]
    });
    let up = upstream(forger).await;
    let f = start_with(vec![up.addr], example_plan(), false);
    let r = ask_udp(
        v4(f.resolver.port()),
        &query("a.example.com.", RecordType::A, 1),
    )
    .await;
    assert_eq!(r.answers.len(), 1);
    assert_eq!(f.sink.log(), vec![(ip("1.2.3.4"), Some(vec![1, 2]))]);
    drop(f);

    // A silent server and one answering SERVFAIL: the next one is asked.
    let silent = upstream(Arc::new(|_: &Message, _| vec![])).await;
    let failing = upstream(Arc::new(|q: &Message, _| {
        vec![reply(q, ResponseCode::ServFail, vec![]).to_vec().unwrap()]
    }))
    .await;
    let good = upstream(canned()).await;
    let f = start_with(
        vec![silent.addr, failing.addr, good.addr],
        example_plan(),
        false,
    );
    let r = ask_udp(
        v4(f.resolver.port()),
        &query("a.example.com.", RecordType::A, 2),
    )
    .await;
    assert_eq!(r.answers.len(), 1);
    assert_eq!(silent.udp_asked.load(Ordering::SeqCst), 1);
    assert_eq!(failing.udp_asked.load(Ordering::SeqCst), 1);
    drop(f);

    // None answers: SERVFAIL, and nobody else is asked.
    let f = start_with(vec![silent.addr, failing.addr], example_plan(), false);
    let r = ask_udp(
        v4(f.resolver.port()),
        &query("a.example.com.", RecordType::A, 3),
    )
    .await;
    assert_eq!(r.metadata.response_code, ResponseCode::ServFail);
    assert!(f.sink.log().is_empty());
    let ev = f
        .events
        .wait_for(|e| matches!(e, DnsEvent::UpstreamFailed { .. }))
        .await;
    let DnsEvent::UpstreamFailed { tries, .. } = ev else {
        unreachable!()
    };
    assert_eq!(tries.len(), 2, "{tries:?}");
    assert!(
        tries[1].contains("SERVFAIL") || tries[1].contains("Server Failure"),
        "{tries:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_map_write_fails_the_lookup() {
    let up = upstream(canned()).await;
    let f = start_with(vec![up.addr], example_plan(), false);
    f.sink.fail.store(true, Ordering::SeqCst);
    let r = ask_udp(
        v4(f.resolver.port()),
        &query("a.example.com.", RecordType::A, 1),
    )
    .await;
    assert_eq!(r.metadata.response_code, ResponseCode::ServFail);
    assert!(r.answers.is_empty());
    f.events
        .wait_for(|e| matches!(e, DnsEvent::MapWriteFailed { error, .. } if error == "map full"))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grants_lapse_and_are_cleared() {
    let up = upstream(canned()).await;
    let mut p = example_plan();
    p.ttl_floor = Duration::from_secs(1);
    p.ttl_ceiling = Duration::from_secs(1);
    let f = start_with(vec![up.addr], p, false);
    let r = ask_udp(
        v4(f.resolver.port()),
        &query("a.example.com.", RecordType::A, 1),
    )
    .await;
    assert_eq!(r.answers[0].ttl, 1);
    timeout(PATIENCE, async {
        while f.sink.log().len() < 2 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .unwrap();
    assert_eq!(f.sink.log()[1], (ip("93.184.216.34"), None));
    assert!(
        f.resolver
            .names()
            .name_of(ip("93.184.216.34"))
            .unwrap()
            .expired
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_queries_get_no_answer() {
    let up = upstream(canned()).await;
    let f = start_with(vec![up.addr], example_plan(), false);
    let to = v4(f.resolver.port());
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    s.send_to(&[1, 2, 3], to).await.unwrap();
    f.events
        .wait_for(|e| {
            matches!(
                e,
                DnsEvent::Malformed {
                    len: 3,
                    tcp: false,
                    ..
                }
            )
        })
        .await;
    // A TCP message of length 0 closes the connection without a reply.
    let mut t = TcpStream::connect(to).await.unwrap();
    t.write_all(&[0, 0]).await.unwrap();
    let mut b = [0u8; 2];
    let n = timeout(PATIENCE, t.read(&mut b)).await.unwrap().unwrap();
    assert_eq!(n, 0);
    // The resolver still answers.
    let r = ask_udp(to, &query("a.example.com.", RecordType::A, 1)).await;
    assert_eq!(r.answers.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_preferred_port_gives_another() {
    let taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let r = AgentResolver::start(
        &Handle::current(),
        Arc::new(ResolverConfig::new(vec!["127.0.0.1:9".parse().unwrap()])),
        Arc::new(example_plan()),
        false,
        Arc::new(Sink::default()),
        Arc::new(Events::default()),
        Some(port),
    )
    .unwrap();
    assert_ne!(r.port(), port);
    let free = r.port();
    drop(r);
    // No upstream is no resolver.
    let e = AgentResolver::start(
        &Handle::current(),
        Arc::new(ResolverConfig::new(vec![])),
        Arc::new(example_plan()),
        false,
        Arc::new(Sink::default()),
        Arc::new(Events::default()),
        Some(free),
    )
    .err()
    .unwrap();
    assert!(matches!(e, DnsError::NoUpstreams { .. }));
}

#[test]
fn the_resolver_can_be_held_by_guardd() {
    fn shared<T: Send + Sync + 'static>() {}
    shared::<AgentResolver>();
    shared::<NameBook>();
    shared::<DnsEvent>();
}

// Property tests: whatever arrives, the handling returns; it never panics.

fn valid_query() -> Vec<u8> {
    let mut m = Message::from_vec(&query("a.example.com.", RecordType::A, 9)).unwrap();
    m.set_edns(Edns::new());
    m.to_vec().unwrap()
}

fn valid_reply() -> Vec<u8> {
    let q = Message::from_vec(&query("a.example.com.", RecordType::A, 9)).unwrap();
    let mut m = reply(
        &q,
        ResponseCode::NoError,
        vec![
            Record::from_rdata(
                n("a.example.com."),
                60,
                RData::CNAME(CNAME(n("b.example.com."))),
            ),
            a("b.example.com.", 60, [1, 2, 3, 4]),
            a("b.example.com.", 60, [10, 2, 3, 4]),
        ],
    );
    m.set_edns(Edns::new());
    m.to_vec().unwrap()
}

fn run_query(bytes: &[u8], plan: &DnsPlan) {
    if let Ok(q) = parse_query(bytes) {
        let _ = decide(plan, &q);
        let _ = error_reply(&q, ResponseCode::Refused, false);
        let _ = error_reply(&q, ResponseCode::ServFail, true);
    }
}

fn run_reply(bytes: &[u8], plan: &DnsPlan, audit: bool) {
    let q = parse_query(&valid_query()).unwrap();
    let Ok(m) = check_reply(bytes, 9, &q.question) else {
        return;
    };
    let rules = rules_of(plan, &q.name);
    let rcode = m.metadata.response_code;
    let s = screen(plan, audit, &q.name, &rules, m.answers, m.authorities);
    let _ = encode_reply(&q, &answer_message(&q, rcode, false, s.clone()), false);
    let _ = encode_reply(&q, &answer_message(&q, rcode, false, s), true);
}

fn mutate(base: Vec<u8>, edits: Vec<(usize, u8)>, cut: Option<usize>) -> Vec<u8> {
    let mut b = base;
    for (i, v) in edits {
        let len = b.len();
        b[i % len] = v;
    }
    if let Some(c) = cut {
        let len = b.len();
        b.truncate(c % (len + 1));
    }
    b
}

proptest! {
    #[test]
    fn arbitrary_queries_do_not_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        run_query(&bytes, &example_plan());
    }

    #[test]
    fn mutated_queries_do_not_panic(
        edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
        cut in proptest::option::of(any::<usize>()),
    ) {
        run_query(&mutate(valid_query(), edits, cut), &example_plan());
    }

    #[test]
    fn arbitrary_replies_do_not_panic(
        bytes in proptest::collection::vec(any::<u8>(), 0..600),
        audit in any::<bool>(),
    ) {
        // The id the answer handling waits for, so more of it is reached.
        let mut b = bytes;
        if b.len() >= 2 {
            b[0] = 0;
            b[1] = 9;
        }
        run_reply(&b, &example_plan(), audit);
    }

    #[test]
    fn mutated_replies_do_not_panic(
        edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
        cut in proptest::option::of(any::<usize>()),
        audit in any::<bool>(),
    ) {
        run_reply(&mutate(valid_reply(), edits, cut), &example_plan(), audit);
    }
}
