//! The socket server: one task per connection, peer credentials checked,
//! every line answered, a bad line never closing the connection. At most
//! so many connections are served at once (`Limits`: per uid, all non-root
//! peers, root apart); on shutdown the server drains (`serve`).

use std::{
    collections::HashSet,
    future::Future,
    os::fd::{AsFd, AsRawFd},
    sync::Arc,
    time::Duration,
};

use serde_json::{Value, json};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream, unix::OwnedWriteHalf},
    sync::{broadcast::error::RecvError, mpsc, watch},
};

use super::{
    Shared,
    agents::{self, Peer},
    peer,
};
use crate::{
    api::{self, Request, RequestError},
    journal::{Filter, Record, Store},
};

/// Serves until `shutdown` completes, then drains: no new connection is
/// accepted, each open connection finishes the request it is serving (a
/// followed log ends with a `done` line) and closes, and `serve` returns once
/// every connection has ended, or after [`DRAIN`] at most.
///
/// Agents owned by a connection that ends this way are not ended: they stay
/// confined by the pinned programs and the next guardd re-adopts them.
pub async fn serve(
    shared: Arc<Shared>,
    listener: UnixListener,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let reaper = {
        let shared = shared.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let s = shared.clone();
                let _ = tokio::task::spawn_blocking(move || agents::reap_orphans(&s)).await;
            }
        })
    };
    let limits = Arc::new(Limits::default());
    // Told to every connection when guardd stops.
    let (stop_tx, stop_rx) = watch::channel(false);
    // Each connection task holds a sender; when all are gone the receiver
    // sees the channel close, so the drain waits on nothing else.
    let (alive_tx, mut alive_rx) = mpsc::channel::<()>(1);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let shared = shared.clone();
                    let limits = limits.clone();
                    let stop = stop_rx.clone();
                    let alive = alive_tx.clone();
                    tokio::spawn(async move {
                        let _alive = alive;
                        let uid = stream.peer_cred().map(|c| c.uid()).unwrap_or(u32::MAX);
                        // Nothing inside a scope is served, whatever its uid
                        // (agents usually run as uid 0 without capabilities)
                        // and whatever the socket's permissions: read where
                        // the peer runs first, which also says whose share
                        // of the connections it takes.
                        let placement = peer::placement(stream.as_fd().as_raw_fd());
                        let tenant = match &placement {
                            Ok(peer::Placement::Outside(o)) => o.tenant(),
                            _ => 0,
                        };
                        let who = Who::of(uid, tenant);
                        match Limits::admit(&limits, who) {
                            Some(_slot) => connection(shared, stream, stop, placement, tenant).await,
                            None => refuse_busy(stream, who).await,
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            _ = &mut shutdown => break,
        }
    }
    reaper.abort();
    // Stop accepting: later connects are refused by the kernel.
    drop(listener);
    let _ = stop_tx.send(true);
    drop(alive_tx);
    let open = limits.served();
    if open > 0 {
        tracing::info!(
            connections = open,
            "stopping: letting open connections finish their requests"
        );
    }
    if tokio::time::timeout(DRAIN, alive_rx.recv()).await.is_err() {
        tracing::warn!(
            "connections still busy {}s after the stop was asked; they are cut off",
            DRAIN.as_secs()
        );
    }
}

/// The longest a stopping guardd waits for its connections to finish the
/// requests they are serving.
pub const DRAIN: Duration = Duration::from_secs(10);

/// Completes once guardd is stopping (or the server is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Connections served at once: all non-root peers together, each non-root
/// uid, and root (which has its own allowance, so a flood of other peers
/// cannot lock the operator out).
const MAX_CONNECTIONS: usize = 256;
const MAX_PER_UID: usize = 32;
const MAX_ROOT: usize = 64;
/// A connection that sends no request for this long, owns no agent and
/// follows no log is closed.
const IDLE: Duration = Duration::from_secs(60);
/// Records per page of a streamed query.
const PAGE: usize = 1000;
/// The most records a `-n` (newest N) query returns: those are gathered
/// before sending, so they are bounded.
const MAX_TAIL: usize = 100_000;

/// The connection cap: how many connections are served at once, counted
/// by who holds them. A connection over the cap is answered `busy` and
/// closed; its place comes back when a served connection ends.
#[derive(Default)]
struct Limits {
    counts: std::sync::Mutex<Counts>,
}

#[derive(Default)]
struct Counts {
    root: usize,
    /// All other peers together.
    others: usize,
    per_peer: std::collections::HashMap<Who, usize>,
}

/// Whose share of the connections a peer takes: the host's root, a
/// non-root uid, or a tenant (a workload pod, uid 0 or not, counted apart
/// so it cannot take root's allowance).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Who {
    Root,
    Uid(u32),
    Tenant(u64),
}

impl Who {
    fn of(uid: u32, tenant: u64) -> Who {
        if tenant != 0 {
            Who::Tenant(tenant)
        } else if uid == 0 {
            Who::Root
        } else {
            Who::Uid(uid)
        }
    }
}

/// A connection's place under the limits, given back when it ends.
struct Slot {
    limits: Arc<Limits>,
    who: Who,
}

impl Limits {
    /// Connections being served now (holding a place).
    fn served(&self) -> usize {
        self.counts.lock().map(|c| c.root + c.others).unwrap_or(0)
    }

    /// A place for a connection of `who`, or `None` when it is over the cap.
    fn admit(limits: &Arc<Limits>, who: Who) -> Option<Slot> {
        let mut c = limits.counts.lock().ok()?;
        if who == Who::Root {
            if c.root >= MAX_ROOT {
                return None;
            }
            c.root += 1;
        } else {
            let mine = c.per_peer.get(&who).copied().unwrap_or(0);
            if c.others >= MAX_CONNECTIONS || mine >= MAX_PER_UID {
                return None;
            }
            c.per_peer.insert(who, mine + 1);
            c.others += 1;
        }
        Some(Slot {
            limits: limits.clone(),
            who,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Ok(mut c) = self.limits.counts.lock() {
            if self.who == Who::Root {
                c.root = c.root.saturating_sub(1);
            } else {
                c.others = c.others.saturating_sub(1);
                if let Some(n) = c.per_peer.get_mut(&self.who) {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        c.per_peer.remove(&self.who);
                    }
                }
            }
        }
    }
}

async fn refuse_busy(mut stream: UnixStream, who: Who) {
    let whose = match who {
        Who::Root => "root".to_owned(),
        Who::Uid(uid) => format!("uid {uid}"),
        Who::Tenant(_) => "this container".to_owned(),
    };
    let line = RequestError::Busy(format!(
        "too many connections (at most {MAX_CONNECTIONS} for all peers but the host's root, \
         {MAX_PER_UID} per uid or container, {MAX_ROOT} for root); {whose} must close some first"
    ))
    .line(0);
    let _ = tokio::time::timeout(Duration::from_millis(100), stream.write_all(&line)).await;
}

/// Whether the peer belongs to the configured group (primary or
/// supplementary, as the kernel saw them at connect).
fn in_group(shared: &Shared, stream: &UnixStream, peer: Peer) -> bool {
    let Some(group) = shared.cfg.group else {
        return false;
    };
    if peer.gid == group {
        return true;
    }
    // Supplementary groups of the peer, as the kernel saw them at connect.
    let mut groups = [0u32; 256];
    let mut len = std::mem::size_of_val(&groups) as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `groups`.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_fd().as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERGROUPS,
            groups.as_mut_ptr().cast(),
            &mut len,
        )
    };
    rc == 0 && groups[..len as usize / 4].contains(&group)
}

struct Conn {
    shared: Arc<Shared>,
    writer: OwnedWriteHalf,
    peer: Peer,
    /// The peer's cgroups and network namespace, read with the check that
    /// it runs in no scope.
    origin: peer::Origin,
    /// The peer may list and read every agent.
    reads_all: bool,
    /// Agents opened on this connection and not yet reported as exited:
    /// ended if the connection drops.
    owned: HashSet<String>,
    /// Scope removals still running after their summary was sent.
    pending: Vec<tokio::task::JoinHandle<()>>,
    /// Becomes true when guardd stops.
    stop: watch::Receiver<bool>,
}

impl Conn {
    async fn send(&mut self, line: &[u8]) -> std::io::Result<()> {
        self.writer.write_all(line).await
    }

    async fn fail(&mut self, id: u64, error: RequestError) -> std::io::Result<()> {
        self.send(&error.line(id)).await
    }
}

async fn connection(
    shared: Arc<Shared>,
    stream: UnixStream,
    stop: watch::Receiver<bool>,
    placement: Result<peer::Placement, peer::PeerError>,
    tenant: u64,
) {
    let peer = match stream.peer_cred() {
        Ok(c) => Peer {
            uid: c.uid(),
            gid: c.gid(),
            pid: c.pid().unwrap_or(0),
            tenant,
        },
        Err(_) => return,
    };
    let refusal = match &placement {
        Ok(peer::Placement::Outside(_)) => None,
        Ok(peer::Placement::Confined { agent, cgroup }) => Some(agents::refuse_confined_peer(
            &shared,
            peer,
            Some((agent, cgroup)),
        )),
        Err(e) => {
            tracing::warn!("refusing a peer that cannot be placed: {e}");
            Some(agents::refuse_confined_peer(&shared, peer, None))
        }
    };
    let member = in_group(&shared, &stream, peer);
    let allowed = refusal.is_none() && (peer.uid == 0 || member);
    let (reader, writer) = stream.into_split();
    let reads_all = agents::reads_all(&shared, peer, member);
    let origin = match placement {
        Ok(peer::Placement::Outside(o)) => o,
        _ => peer::Origin::default(),
    };
    let mut conn = Conn {
        shared,
        writer,
        peer,
        origin,
        reads_all,
        owned: HashSet::new(),
        pending: Vec::new(),
        stop,
    };
    if let Some(error) = refusal {
        let _ = conn.fail(0, error).await;
        return;
    }
    if !allowed {
        let _ = conn
            .fail(
                0,
                RequestError::PermissionDenied(format!(
                    "uid {} may not use guardd (root or the configured group only)",
                    peer.uid
                )),
            )
            .await;
        return;
    }
    let mut reader = BufReader::new(reader);
    let mut line = Vec::new();
    let mut stop = conn.stop.clone();
    let mut stopping = false;
    loop {
        line.clear();
        // Bounded read: a line longer than MAX_LINE is answered with an
        // error and skipped, without buffering it.
        let mut too_long = false;
        let done = loop {
            // An idle connection that owns no agent holds a slot for nothing.
            let idle_ends = conn.owned.is_empty();
            let fill = async {
                if idle_ends {
                    tokio::time::timeout(IDLE, reader.fill_buf())
                        .await
                        .ok()
                        .and_then(Result::ok)
                } else {
                    reader.fill_buf().await.ok()
                }
            };
            // Between requests, a stopping guardd ends the connection.
            let buf = tokio::select! {
                biased;
                _ = stopped(&mut stop) => {
                    stopping = true;
                    break true;
                }
                b = fill => match b {
                    Some(b) => b,
                    None => break true,
                },
            };
            if buf.is_empty() {
                break true;
            }
            let (chunk, found) = match buf.iter().position(|&b| b == b'\n') {
                Some(i) => (&buf[..i], Some(i + 1)),
                None => (buf, None),
            };
            if !too_long {
                if line.len() + chunk.len() > api::MAX_LINE {
                    too_long = true;
                    line.clear();
                } else {
                    line.extend_from_slice(chunk);
                }
            }
            let used = found.unwrap_or(buf.len());
            reader.consume(used);
            if found.is_some() {
                break false;
            }
        };
        // A request not yet complete when guardd stops is not served.
        if stopping || (done && line.is_empty() && !too_long) {
            break;
        }
        let result = if too_long {
            conn.fail(
                0,
                RequestError::TooLong(format!("request line longer than {} bytes", api::MAX_LINE)),
            )
            .await
        } else if line.iter().all(|b| b.is_ascii_whitespace()) {
            Ok(())
        } else {
            handle(&mut conn, &line, &mut reader).await
        };
        if result.is_err() || done {
            break;
        }
    }
    // Removals still running belong to this connection's agents: finish
    // them before the task ends, so a stopping guardd leaves nothing behind.
    for p in conn.pending.drain(..) {
        let _ = p.await;
    }
    if stopping {
        // guardd is stopping, not the launcher: its agents stay confined by
        // the pinned programs and the next guardd re-adopts them.
        if !conn.owned.is_empty() {
            tracing::info!(
                agents = conn.owned.len(),
                "stopping with live agents; they are left for re-adoption"
            );
        }
        return;
    }
    // The launcher went away without reporting the exit: end its agents
    // rather than leave them unsupervised.
    let owned: Vec<String> = conn.owned.drain().collect();
    for id in owned {
        let shared = conn.shared.clone();
        let _ = tokio::task::spawn_blocking(move || {
            agents::close(&shared, &id, None, "launcher disconnected", |_| {})
        })
        .await;
    }
}

async fn handle(
    conn: &mut Conn,
    line: &[u8],
    reader: &mut BufReader<tokio::net::unix::OwnedReadHalf>,
) -> std::io::Result<()> {
    let (id, req) = match api::parse_request(line) {
        Ok(r) => r,
        Err(api::Rejected { id, error }) => return conn.fail(id, error).await,
    };
    let shared = conn.shared.clone();
    match req {
        Request::Hello(_) => {
            let v = json!({
                "protocol": api::PROTOCOL_VERSION,
                "version": env!("CARGO_PKG_VERSION"),
                "instance": shared.cfg.instance,
                // Where `guardctl logs verify|export` find the store.
                "journal": shared.cfg.journal,
            });
            conn.send(&api::ok_line(id, v)).await
        }
        Request::Open(req) => {
            let peer = conn.peer;
            let origin = conn.origin.clone();
            let s = shared.clone();
            let res = tokio::task::spawn_blocking(move || agents::open(&s, &req, peer, &origin))
                .await
                .unwrap_or_else(|e| Err(RequestError::Internal(e.to_string())));
            match res {
                Ok((reply, fds)) => {
                    conn.owned.insert(reply.agent.id.clone());
                    let line =
                        api::ok_line(id, serde_json::to_value(&reply).unwrap_or(Value::Null));
                    let raw: Vec<i32> = fds.iter().map(|f| f.as_raw_fd()).collect();
                    send_with_fds(conn, &line, &raw).await
                }
                Err(f) => conn.fail(id, f).await,
            }
        }
        Request::Started(req) => {
            if let Err(f) = agents::authorize(&shared, conn.peer, &req.agent, "started") {
                return conn.fail(id, f).await;
            }
            let s = shared.clone();
            let launcher = conn.peer.pid;
            let _ = tokio::task::spawn_blocking(move || {
                agents::set_main_pid(&s, &req.agent, req.pid, launcher)
            })
            .await;
            conn.send(&api::ok_line(id, Value::Null)).await
        }
        Request::Exited(req) => {
            if let Err(f) = agents::authorize(&shared, conn.peer, &req.agent, "exited") {
                return conn.fail(id, f).await;
            }
            conn.owned.remove(&req.agent);
            let s = shared.clone();
            // The summary comes back as soon as it is settled; the scope's
            // removal goes on in the blocking task after that.
            let (tx, rx) = tokio::sync::oneshot::channel();
            let cleanup = tokio::task::spawn_blocking(move || {
                agents::close(
                    &s,
                    &req.agent,
                    Some(req.status),
                    "main process exited",
                    |r| {
                        let _ = tx.send(r);
                    },
                )
            });
            conn.pending.push(cleanup);
            let res = rx
                .await
                .unwrap_or_else(|e| Err(RequestError::Internal(e.to_string())));
            match res {
                Ok(reply) => {
                    conn.send(&api::ok_line(
                        id,
                        serde_json::to_value(&reply).unwrap_or(Value::Null),
                    ))
                    .await
                }
                Err(f) => conn.fail(id, f).await,
            }
        }
        Request::Ps(_) => {
            let s = shared.clone();
            let (peer, all) = (conn.peer, conn.reads_all);
            let list = tokio::task::spawn_blocking(move || agents::ps(&s, peer, all))
                .await
                .unwrap_or_default();
            conn.send(&api::ok_line(id, json!({"agents": list}))).await
        }
        Request::Control(req) => {
            let s = shared.clone();
            let peer = conn.peer;
            let res = tokio::task::spawn_blocking(move || {
                agents::control(&s, &req.agent, req.action, req.reason.as_deref(), peer)
            })
            .await
            .unwrap_or_else(|e| Err(RequestError::Internal(e.to_string())));
            match res {
                Ok(v) => conn.send(&api::ok_line(id, v)).await,
                Err(f) => conn.fail(id, f).await,
            }
        }
        Request::Doctor(_) => {
            let s = shared.clone();
            let v =
                tokio::task::spawn_blocking(move || crate::doctor::daemon_view(&s.doctor_facts()))
                    .await
                    .unwrap_or(Value::Null);
            conn.send(&api::ok_line(id, v)).await
        }
        Request::Grant(req) => {
            let peer = conn.peer;
            answer(conn, id, move || agents::grant::grant(&shared, &req, peer)).await
        }
        Request::Revoke(req) => {
            let peer = conn.peer;
            answer(conn, id, move || agents::grant::revoke(&shared, &req, peer)).await
        }
        Request::Grants(req) => {
            let (peer, all) = (conn.peer, conn.reads_all);
            answer(conn, id, move || {
                agents::grant::list(&shared, req.agent.as_deref(), peer, all)
                    .map(|v| json!({"grants": v}))
            })
            .await
        }
        Request::Logs(req) => logs(conn, id, req, reader).await,
        Request::Policy(req) => match agents::named_policy(&shared, &req.name) {
            Ok(p) => {
                conn.send(&api::ok_line(
                    id,
                    serde_json::to_value(&p).unwrap_or(Value::Null),
                ))
                .await
            }
            Err(f) => conn.fail(id, f).await,
        },
    }
}

/// Runs `f` off the async threads and answers request `id` with its value
/// or its error.
async fn answer(
    conn: &mut Conn,
    id: u64,
    f: impl FnOnce() -> Result<Value, RequestError> + Send + 'static,
) -> std::io::Result<()> {
    let res = tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(RequestError::Internal(e.to_string())));
    match res {
        Ok(v) => conn.send(&api::ok_line(id, v)).await,
        Err(f) => conn.fail(id, f).await,
    }
}

async fn send_with_fds(conn: &mut Conn, line: &[u8], fds: &[i32]) -> std::io::Result<()> {
    loop {
        conn.writer.as_ref().writable().await?;
        match conn
            .writer
            .as_ref()
            .try_io(tokio::io::Interest::WRITABLE, || {
                api::send_with_fds(conn.writer.as_ref().as_fd(), line, fds)
            }) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
}

fn filter_of(req: &api::LogsRequest) -> Result<Filter, RequestError> {
    req.filter(std::time::SystemTime::now())
        .map_err(|e| RequestError::BadRequest(e.to_string()))
}

/// The journal's records matching `filter`, read off the runtime from a
/// reader opened for this query alone.
async fn query(shared: &Shared, filter: Filter) -> Result<Vec<Record>, String> {
    let path = shared.cfg.journal.clone();
    tokio::task::spawn_blocking(move || {
        Store::open_for_reading(&path).and_then(|s| s.query(&filter))
    })
    .await
    .map_err(|e| e.to_string())
    .and_then(|r| r.map_err(|e| e.to_string()))
}

fn record_line(id: u64, rec: &Record) -> Vec<u8> {
    api::ok_line(id, json!({"record": rec}))
}

async fn logs(
    conn: &mut Conn,
    id: u64,
    req: api::LogsRequest,
    reader: &mut BufReader<tokio::net::unix::OwnedReadHalf>,
) -> std::io::Result<()> {
    let filter = match filter_of(&req) {
        Ok(f) => f,
        Err(f) => return conn.fail(id, f).await,
    };
    if !conn.reads_all {
        // Only root starts agents, so a caller who may not read everything
        // owns none, and sees no record.
        return conn
            .send(&api::ok_line(
                id,
                json!({"done": true, "count": 0, "note": format!(
                    "uid {} owns no agents; guardd --group-reads-all lets its group read every record",
                    conn.peer.uid
                )}),
            ))
            .await;
    }
    let mut filter = filter;
    if let Some(key) = filter.agent.clone() {
        // An unknown agent is an error, not an empty answer; an id prefix
        // is resolved as `ps` does.
        let path = conn.shared.cfg.journal.clone();
        let resolved = tokio::task::spawn_blocking(move || {
            Store::open_for_reading(&path).and_then(|s| s.resolve_agent(&key))
        })
        .await
        .map_err(|e| RequestError::Internal(e.to_string()))
        .and_then(|r| {
            r.map_err(|e| match e {
                crate::journal::JournalError::UnknownAgent { .. } => {
                    RequestError::NotFound(e.to_string())
                }
                crate::journal::JournalError::AmbiguousAgent { .. } => {
                    RequestError::Ambiguous(e.to_string())
                }
                other => RequestError::Internal(other.to_string()),
            })
        });
        match resolved {
            Ok(id) => filter.agent = Some(id),
            // A follower may name an agent that has not started yet: it
            // waits for exactly that id or name.
            Err(RequestError::NotFound(_)) if req.follow => {}
            Err(f) => return conn.fail(id, f).await,
        }
    }
    // Subscribe before querying so nothing committed in between is missed.
    let mut live = conn.shared.journal.subscribe();
    // Streamed in pages: a query holds at most one page in memory, and a
    // reader that does not read holds up the next page, not guardd's
    // memory (writes wait on the socket).
    let mut last = 0;
    let mut count = 0usize;
    let mut page = filter.clone();
    if page.tail {
        if page.limit.is_some_and(|n| n > MAX_TAIL) {
            return conn
                .fail(
                    id,
                    RequestError::BadRequest(format!(
                        "-n is at most {MAX_TAIL}; without -n, records are streamed"
                    )),
                )
                .await;
        }
    } else {
        page.limit = Some(PAGE);
    }
    loop {
        let past = match query(&conn.shared, page.clone()).await {
            Ok(p) => p,
            Err(e) => return conn.fail(id, RequestError::Internal(e)).await,
        };
        let full = !page.tail && past.len() == PAGE;
        for rec in &past {
            last = rec.seq;
            conn.send(&record_line(id, rec)).await?;
        }
        count += past.len();
        if !full {
            break;
        }
        page.after_seq = Some(last);
    }
    if !req.follow {
        return conn
            .send(&api::ok_line(id, json!({"done": true, "count": count})))
            .await;
    }
    let mut follow = filter;
    follow.limit = None;
    follow.tail = false;
    let mut probe = [0u8; 1];
    let mut stop = conn.stop.clone();
    loop {
        tokio::select! {
            // A follower's request lasts until it closes: a stopping guardd
            // ends it cleanly, as the end of the journal would.
            _ = stopped(&mut stop) => {
                return conn
                    .send(&api::ok_line(id, json!({"done": true, "note": "guardd is stopping"})))
                    .await;
            }
            r = live.recv() => match r {
                Ok(rec) => {
                    if rec.seq > last && follow.matches(&rec) {
                        last = rec.seq;
                        conn.send(&record_line(id, &rec)).await?;
                    }
                }
                Err(RecvError::Lagged(_)) => {
                    // Fell behind the live stream: catch up from the store.
                    // A catch-up that keeps failing is said to the reader,
                    // with the range it misses, never skipped in silence.
                    let mut missed = Err(String::new());
                    for attempt in 0..3 {
                        if attempt > 0 {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                        let mut f = follow.clone();
                        f.after_seq = Some(last);
                        missed = query(&conn.shared, f).await;
                        if missed.is_ok() {
                            break;
                        }
                    }
                    match missed {
                        Ok(records) => {
                            for rec in records {
                                last = rec.seq;
                                conn.send(&record_line(id, &rec)).await?;
                            }
                        }
                        Err(e) => {
                            let gap = json!({"gap": {
                                "after_seq": last,
                                "why": format!("fell behind the live stream and could not read the missed records back: {e}"),
                            }});
                            conn.send(&api::ok_line(id, gap)).await?;
                        }
                    }
                }
                Err(RecvError::Closed) => return conn.send(&api::ok_line(id, json!({"done": true}))).await,
            },
            n = tokio::io::AsyncReadExt::read(reader, &mut probe) => {
                // The client closed (or sent something): stop following.
                if matches!(n, Ok(0) | Err(_)) {
                    return Ok(());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_uid_is_capped_and_served_again_when_a_connection_ends() {
        let limits = Arc::new(Limits::default());
        let mut held: Vec<Slot> = (0..MAX_PER_UID)
            .map(|_| Limits::admit(&limits, Who::Uid(1000)).unwrap())
            .collect();
        assert!(Limits::admit(&limits, Who::Uid(1000)).is_none());
        // A refused connection holds no place.
        assert_eq!(limits.served(), MAX_PER_UID);
        // Another uid, and root, are not held up by it.
        assert!(Limits::admit(&limits, Who::Uid(1001)).is_some());
        assert!(Limits::admit(&limits, Who::Root).is_some());
        held.pop();
        let again = Limits::admit(&limits, Who::Uid(1000));
        assert!(again.is_some());
        drop(again);
        drop(held);
        let c = limits.counts.lock().unwrap();
        assert_eq!((c.root, c.others, c.per_peer.len()), (0, 0, 0));
    }

    #[test]
    fn all_non_root_peers_share_one_cap_and_root_has_its_own() {
        let limits = Arc::new(Limits::default());
        let held: Vec<Slot> = (0..MAX_CONNECTIONS)
            .map(|i| Limits::admit(&limits, Who::Uid(1000 + (i / MAX_PER_UID) as u32)).unwrap())
            .collect();
        assert!(Limits::admit(&limits, Who::Uid(5000)).is_none());
        let root: Vec<Slot> = (0..MAX_ROOT)
            .map(|_| Limits::admit(&limits, Who::Root).unwrap())
            .collect();
        assert!(Limits::admit(&limits, Who::Root).is_none());
        drop(root);
        assert!(Limits::admit(&limits, Who::Root).is_some());
        drop(held);
        assert!(Limits::admit(&limits, Who::Uid(5000)).is_some());
    }
}
