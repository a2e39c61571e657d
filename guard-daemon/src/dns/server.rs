//! One agent's resolver: its sockets, its tasks, and the handling of each
//! query from parse to reply.

use std::{
    collections::{HashMap, HashSet},
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime},
};

use hickory_proto::op::{Message, ResponseCode};
use tokio::{
    net::{TcpListener, TcpStream, UdpSocket},
    runtime::Handle,
    sync::Semaphore,
    task::{JoinHandle, JoinSet},
    time::{Instant, MissedTickBehavior, timeout},
};

use super::{
    AddressSink, DnsError, DnsEvent, DnsEvents, MAX_GRANTED_ADDRESSES, MAX_IN_FLIGHT,
    MAX_TCP_CONNECTIONS, NAME_BOOK_CAPACITY, ResolverConfig, TCP_IDLE_TIMEOUT,
    answer::{Screened, screen},
    grants::{EventBudget, GrantTable, NameBook, RefusalBudget, TableFull},
    query::{
        AgentQuery, Decision, MAX_MESSAGE, Malformed, decide, encode_reply, error_reply,
        parse_query, read_framed, reply_to, write_framed,
    },
    upstream::forward,
};
use crate::policy::host::DnsPlan;

/// Ports tried before giving up (the preferred one, then random ones).
const BIND_ATTEMPTS: usize = 16;
/// How often lapsed grants are taken out of the map.
const SWEEP_EVERY: Duration = Duration::from_secs(1);
/// Pause after a failed receive or accept (out of descriptors, say), so
/// the loop does not spin.
const ERROR_PAUSE: Duration = Duration::from_millis(50);

/// A running resolver for one agent: UDP and TCP on `127.0.0.1:P` and
/// `[::1]:P`. Dropping it is [`AgentResolver::stop`].
pub struct AgentResolver {
    port: u16,
    ipv6: bool,
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
}

impl AgentResolver {
    /// Binds UDP and TCP on `127.0.0.1:P` and `[::1]:P` (one `P` for all
    /// four: the first free port the kernel gives IPv4 UDP, taken on the
    /// other three too; on a conflict another port is tried, up to 16
    /// times) and starts answering on `rt`. `preferred` is tried first:
    /// after a restart guardd re-adopts an agent whose kernel programs
    /// still redirect to the old port. Where `[::1]` cannot be bound (no
    /// IPv6), the resolver runs on IPv4 only, reports
    /// [`DnsEvent::Ipv6Unavailable`] and [`AgentResolver::ipv6`] is false.
    ///
    /// `audit`: the agent runs in audit mode (see the module
    /// documentation).
    pub fn start(
        rt: &Handle,
        cfg: Arc<ResolverConfig>,
        plan: Arc<DnsPlan>,
        audit: bool,
        sink: Arc<dyn AddressSink>,
        events: Arc<dyn DnsEvents>,
        preferred: Option<u16>,
    ) -> Result<AgentResolver, DnsError> {
        if cfg.upstreams.is_empty() {
            return Err(DnsError::NoUpstreams { from: None });
        }
        let bound = bind(preferred)?;
        let port = bound.port;
        // from_std registers with the reactor of the current runtime.
        let _entered = rt.enter();
        let conv = |addr: SocketAddr| move |source: io::Error| DnsError::Bind { addr, source };
        let v4: SocketAddr = (Ipv4Addr::LOCALHOST, port).into();
        let v6: SocketAddr = (Ipv6Addr::LOCALHOST, port).into();
        let udp4 = UdpSocket::from_std(bound.udp4).map_err(conv(v4))?;
        let tcp4 = TcpListener::from_std(bound.tcp4).map_err(conv(v4))?;
        let (ipv6, v6_sockets, v6_why) = match bound.v6 {
            Ok((u, t)) => (
                true,
                Some((
                    UdpSocket::from_std(u).map_err(conv(v6))?,
                    TcpListener::from_std(t).map_err(conv(v6))?,
                )),
                None,
            ),
            Err(why) => (false, None, Some(why)),
        };
        let shared = Arc::new(Shared {
            cfg,
            plan,
            audit,
            sink,
            events,
            names: Arc::new(NameBook::new(NAME_BOOK_CAPACITY)),
            state: Mutex::new(State {
                grants: GrantTable::new(MAX_GRANTED_ADDRESSES),
                stale: HashSet::new(),
                closed: false,
            }),
            refusals: Mutex::new(RefusalBudget::default()),
            malformed: Mutex::new(EventBudget::default()),
            clear_failures: Mutex::new(EventBudget::default()),
            udp_dropped: AtomicU64::new(0),
            tcp_dropped: AtomicU64::new(0),
            in_flight: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
            tcp_conns: Arc::new(Semaphore::new(MAX_TCP_CONNECTIONS)),
        });
        if let Some(why) = v6_why {
            shared.emit(DnsEvent::Ipv6Unavailable { why });
        }
        let mut tasks = vec![
            rt.spawn(udp_loop(Arc::new(udp4), shared.clone())),
            rt.spawn(tcp_loop(tcp4, shared.clone())),
            rt.spawn(sweep_loop(shared.clone())),
        ];
        if let Some((u, t)) = v6_sockets {
            tasks.push(rt.spawn(udp_loop(Arc::new(u), shared.clone())));
            tasks.push(rt.spawn(tcp_loop(t, shared.clone())));
        }
        Ok(AgentResolver {
            port,
            ipv6,
            shared,
            tasks,
        })
    }

    /// The port `P` the agent's queries are redirected to.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Whether the resolver also listens on `[::1]:P`.
    pub fn ipv6(&self) -> bool {
        self.ipv6
    }

    /// The names behind the addresses handed out, for the monitor.
    pub fn names(&self) -> Arc<NameBook> {
        self.shared.names.clone()
    }

    /// Stops answering and clears every address written to the map
    /// (`sink.clear`, before this returns). The tasks are aborted; their
    /// sockets close as the runtime drops them, at their next turn.
    pub fn stop(self) {
        drop(self);
    }
}

impl Drop for AgentResolver {
    fn drop(&mut self) {
        // Closed first: a lookup past its last await writes nothing more.
        let ips: Vec<IpAddr> = {
            let mut st = self.shared.lock_state();
            st.closed = true;
            let mut ips = st.grants.drain();
            ips.extend(st.stale.drain());
            ips.sort_unstable();
            ips.dedup();
            ips
        };
        for t in &self.tasks {
            t.abort();
        }
        for ip in ips {
            if let Err(error) = self.shared.sink.clear(ip) {
                self.shared
                    .emit(DnsEvent::MapClearFailed { addr: ip, error });
            }
            self.shared.names.mark_expired(ip);
        }
    }
}

struct Shared {
    cfg: Arc<ResolverConfig>,
    plan: Arc<DnsPlan>,
    audit: bool,
    sink: Arc<dyn AddressSink>,
    events: Arc<dyn DnsEvents>,
    names: Arc<NameBook>,
    state: Mutex<State>,
    refusals: Mutex<RefusalBudget>,
    malformed: Mutex<EventBudget>,
    clear_failures: Mutex<EventBudget>,
    udp_dropped: AtomicU64,
    tcp_dropped: AtomicU64,
    in_flight: Arc<Semaphore>,
    tcp_conns: Arc<Semaphore>,
}

/// How writing a lookup's grants went.
enum Commit {
    Done,
    /// The resolver is stopping: no reply.
    Stopping,
    /// The lookup fails (SERVFAIL) with this event.
    Failed(DnsEvent),
}

struct State {
    grants: GrantTable,
    /// Addresses whose map entry may not match the grants (a write or
    /// clear failed, or grants lapsed): written again at the next sweep.
    stale: HashSet<IpAddr>,
    closed: bool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere must not stop the resolver; the data stays usable.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    fn lock_state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    fn emit(&self, ev: DnsEvent) {
        self.events.event(ev);
    }

    fn over_budget(&self, name: &str) -> bool {
        lock(&self.refusals).note(name, Instant::now().into_std())
    }

    /// One query, start to end: the bytes of the reply, or `None` for no
    /// reply (malformed, or the resolver is stopping).
    async fn handle(&self, bytes: &[u8], tcp: bool) -> Option<Vec<u8>> {
        let q = match parse_query(bytes) {
            Ok(q) => q,
            Err(Malformed(why)) => {
                if lock(&self.malformed).admit(Instant::now().into_std()) {
                    self.emit(DnsEvent::Malformed {
                        why,
                        len: bytes.len(),
                        tcp,
                    });
                }
                return None;
            }
        };
        let rules = match decide(&self.plan, &q) {
            Decision::TypeRefused => {
                let over_budget = self.over_budget(&q.name);
                self.emit(DnsEvent::TypeRefused {
                    name: q.asked.clone(),
                    qtype: q.qtype_name(),
                    tcp,
                    over_budget,
                });
                return error_reply(&q, ResponseCode::Refused, tcp);
            }
            // REFUSED rather than NXDOMAIN: the client learns that this
            // resolver will not serve the name, not that the name does not
            // exist, so it caches no false "no such name" that would make
            // later lookups (through another path, or after a policy
            // change) fail differently.
            Decision::NotAllowed if !self.audit => {
                let over_budget = self.over_budget(&q.name);
                self.emit(DnsEvent::Refused {
                    name: q.asked.clone(),
                    qtype: q.qtype_name(),
                    tcp,
                    over_budget,
                });
                return error_reply(&q, ResponseCode::Refused, tcp);
            }
            Decision::NotAllowed => Vec::new(),
            Decision::Allowed(rules) => rules,
        };
        let upstream = match forward(&self.cfg, &q).await {
            Ok(m) => m,
            Err(tries) => {
                self.emit(DnsEvent::UpstreamFailed {
                    name: q.name.clone(),
                    qtype: q.qtype_name(),
                    tries,
                });
                return error_reply(&q, ResponseCode::ServFail, tcp);
            }
        };
        let (rcode, ad) = (
            upstream.metadata.response_code,
            upstream.metadata.authentic_data,
        );
        let Message {
            answers,
            authorities,
            ..
        } = upstream;
        let mut s = screen(
            &self.plan,
            self.audit,
            &q.name,
            &rules,
            answers,
            authorities,
        );
        for ev in std::mem::take(&mut s.events) {
            self.emit(ev);
        }
        if s.refused {
            return error_reply(&q, ResponseCode::Refused, tcp);
        }
        match self.commit(&q, &s) {
            Commit::Done => {}
            Commit::Stopping => return None,
            Commit::Failed(ev) => {
                self.emit(ev);
                return error_reply(&q, ResponseCode::ServFail, tcp);
            }
        }
        let event = if rules.is_empty() {
            DnsEvent::Audited {
                name: q.name.clone(),
                qtype: q.qtype_name(),
                addrs: dedup(s.sent.iter().map(|(ip, _)| *ip)),
                chain: s.chain.clone(),
                over_budget: self.over_budget(&q.name),
            }
        } else {
            DnsEvent::Allowed {
                name: q.name.clone(),
                qtype: q.qtype_name(),
                addrs: s.grants.iter().map(|(ip, _)| *ip).collect(),
                chain: s.chain.clone(),
                ttl: s.lifetime,
                rules,
            }
        };
        let reply = answer_message(&q, rcode, ad, s);
        self.emit(event);
        match encode_reply(&q, &reply, tcp) {
            Ok(b) => Some(b),
            Err(_) => error_reply(&q, ResponseCode::ServFail, tcp),
        }
    }

    /// Writes the grants of a screened answer to the map, before the answer
    /// goes out, and teaches the name book.
    fn commit(&self, q: &AgentQuery, s: &Screened) -> Commit {
        let now = Instant::now().into_std();
        let until = now + s.lifetime;
        let expires = SystemTime::now() + s.lifetime;
        let mut st = self.lock_state();
        if st.closed {
            return Commit::Stopping;
        }
        for (ip, rules) in &s.grants {
            let union = match st.grants.grant(*ip, rules, until, now) {
                Ok(u) => u,
                Err(TableFull(n)) => {
                    return Commit::Failed(DnsEvent::MapWriteFailed {
                        name: q.name.clone(),
                        addr: *ip,
                        error: format!("the agent holds grants for {n} addresses, the most it may"),
                    });
                }
            };
            if let Err(error) = self.sink.write(*ip, &union) {
                // The table has the grant the map may lack: the sweep
                // writes it again (or clears it once it lapses).
                st.stale.insert(*ip);
                return Commit::Failed(DnsEvent::MapWriteFailed {
                    name: q.name.clone(),
                    addr: *ip,
                    error,
                });
            }
            st.stale.remove(ip);
        }
        drop(st);
        let granted: HashMap<&IpAddr, &[u16]> =
            s.grants.iter().map(|(g, r)| (g, r.as_slice())).collect();
        for (ip, owner) in &s.sent {
            let rules = granted.get(ip).copied().unwrap_or_default();
            self.names.learn(*ip, owner, rules, expires);
        }
        Commit::Done
    }

    /// Takes lapsed grants out of the map and retries failed writes.
    fn sweep(&self) {
        let now = Instant::now().into_std();
        let mut st = self.lock_state();
        if st.closed {
            return;
        }
        for (ip, _) in st.grants.expire(now) {
            st.stale.insert(ip);
        }
        let stale: Vec<IpAddr> = st.stale.drain().collect();
        for ip in stale {
            let rules = st.grants.rules(ip, now);
            let done = if rules.is_empty() {
                self.sink.clear(ip)
            } else {
                self.sink.write(ip, &rules)
            };
            match done {
                Ok(()) if rules.is_empty() => self.names.mark_expired(ip),
                Ok(()) => {}
                Err(error) => {
                    st.stale.insert(ip);
                    if lock(&self.clear_failures).admit(now) {
                        self.emit(DnsEvent::MapClearFailed { addr: ip, error });
                    }
                }
            }
        }
        drop(st);
        for (kind, budget) in [
            ("malformed", &self.malformed),
            ("map-clear-failed", &self.clear_failures),
        ] {
            if let Some(count) = lock(budget).take_suppressed(now) {
                self.emit(DnsEvent::Suppressed { kind, count });
            }
        }
        for (tcp, counter) in [(false, &self.udp_dropped), (true, &self.tcp_dropped)] {
            let dropped = counter.swap(0, Ordering::Relaxed);
            if dropped > 0 {
                self.emit(DnsEvent::Overloaded { dropped, tcp });
            }
        }
    }

    async fn serve_tcp(&self, mut s: TcpStream) {
        loop {
            let Ok(Ok(buf)) = timeout(TCP_IDLE_TIMEOUT, read_framed(&mut s)).await else {
                return;
            };
            let Ok(permit) = self.in_flight.clone().try_acquire_owned() else {
                self.tcp_dropped.fetch_add(1, Ordering::Relaxed);
                return;
            };
            let reply = self.handle(&buf, true).await;
            drop(permit);
            // No reply (a malformed query): the stream cannot be trusted
            // to be in step any more.
            let Some(reply) = reply else { return };
            if !matches!(
                timeout(TCP_IDLE_TIMEOUT, write_framed(&mut s, &reply)).await,
                Ok(Ok(()))
            ) {
                return;
            }
        }
    }
}

/// The reply for the agent from a screened answer.
pub(crate) fn answer_message(
    q: &AgentQuery,
    rcode: ResponseCode,
    ad: bool,
    s: Screened,
) -> Message {
    let mut m = reply_to(q, rcode);
    m.metadata.authentic_data = ad;
    m.insert_answers(s.answers);
    m.insert_authorities(s.authorities);
    m
}

fn dedup(ips: impl Iterator<Item = IpAddr>) -> Vec<IpAddr> {
    let mut seen = HashSet::new();
    ips.filter(|ip| seen.insert(*ip)).collect()
}

async fn udp_loop(sock: Arc<UdpSocket>, sh: Arc<Shared>) {
    let mut buf = vec![0u8; MAX_MESSAGE];
    // Dropped with this task: aborting it aborts every lookup it started.
    let mut lookups = JoinSet::new();
    loop {
        while lookups.try_join_next().is_some() {}
        let (n, peer) = match sock.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(_) => {
                tokio::time::sleep(ERROR_PAUSE).await;
                continue;
            }
        };
        let Ok(permit) = sh.in_flight.clone().try_acquire_owned() else {
            sh.udp_dropped.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let bytes = buf[..n].to_vec();
        let (sock, sh) = (sock.clone(), sh.clone());
        lookups.spawn(async move {
            let _permit = permit;
            if let Some(reply) = sh.handle(&bytes, false).await {
                // A lost reply is retried by the client.
                let _ = sock.send_to(&reply, peer).await;
            }
        });
    }
}

async fn tcp_loop(listener: TcpListener, sh: Arc<Shared>) {
    let mut conns = JoinSet::new();
    loop {
        while conns.try_join_next().is_some() {}
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(_) => {
                tokio::time::sleep(ERROR_PAUSE).await;
                continue;
            }
        };
        let Ok(permit) = sh.tcp_conns.clone().try_acquire_owned() else {
            sh.tcp_dropped.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let sh = sh.clone();
        conns.spawn(async move {
            let _permit = permit;
            sh.serve_tcp(stream).await;
        });
    }
}

async fn sweep_loop(sh: Arc<Shared>) {
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        sh.sweep();
    }
}

struct Bound {
    port: u16,
    udp4: std::net::UdpSocket,
    tcp4: std::net::TcpListener,
    /// `Err`: why `[::1]` is not served.
    v6: Result<(std::net::UdpSocket, std::net::TcpListener), String>,
}

enum BindFailure {
    /// The port is taken on one of the four: try another.
    Conflict,
    Fatal(DnsError),
}

fn bind(preferred: Option<u16>) -> Result<Bound, DnsError> {
    for attempt in 0..BIND_ATTEMPTS {
        let port = if attempt == 0 {
            preferred.unwrap_or(0)
        } else {
            0
        };
        match bind_at(port) {
            Ok(b) => return Ok(b),
            Err(BindFailure::Conflict) => continue,
            Err(BindFailure::Fatal(e)) => return Err(e),
        }
    }
    Err(DnsError::NoPort {
        attempts: BIND_ATTEMPTS,
    })
}

fn bind_at(port: u16) -> Result<Bound, BindFailure> {
    let fatal = |addr: SocketAddr| {
        move |source: io::Error| {
            if source.kind() == io::ErrorKind::AddrInUse {
                BindFailure::Conflict
            } else {
                BindFailure::Fatal(DnsError::Bind { addr, source })
            }
        }
    };
    let a4: SocketAddr = (Ipv4Addr::LOCALHOST, port).into();
    let udp4 = std::net::UdpSocket::bind(a4).map_err(fatal(a4))?;
    let port = udp4.local_addr().map_err(fatal(a4))?.port();
    let a4: SocketAddr = (Ipv4Addr::LOCALHOST, port).into();
    let tcp4 = std::net::TcpListener::bind(a4).map_err(fatal(a4))?;
    let a6: SocketAddr = (Ipv6Addr::LOCALHOST, port).into();
    let v6 = match std::net::UdpSocket::bind(a6) {
        Ok(u) => match std::net::TcpListener::bind(a6) {
            Ok(t) => Ok((u, t)),
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
                return Err(BindFailure::Conflict);
            }
            Err(e) => Err(format!("binding TCP on {a6}: {e}")),
        },
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => return Err(BindFailure::Conflict),
        Err(e) => Err(format!("binding UDP on {a6}: {e}")),
    };
    let nonblocking = |r: io::Result<()>| r.map_err(fatal(a4));
    nonblocking(udp4.set_nonblocking(true))?;
    nonblocking(tcp4.set_nonblocking(true))?;
    let v6 = match v6 {
        Ok((u, t)) => {
            nonblocking(u.set_nonblocking(true))?;
            nonblocking(t.set_nonblocking(true))?;
            Ok((u, t))
        }
        Err(e) => Err(e),
    };
    Ok(Bound {
        port,
        udp4,
        tcp4,
        v6,
    })
}
