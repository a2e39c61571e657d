//! Turns what the kernel programs report into journal records.
//!
//! Runs on its own thread: it waits on the ring buffer, decodes each event,
//! attributes it to its agent by slot, and appends a record. Every few
//! hundred milliseconds it compares the kernel's per-agent loss counters with
//! what it has seen and journals any loss as a `gap` record, so an event the
//! ring buffer had no room for is never lost silently.

pub mod coalesce;
pub mod judge;

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{AsFd, AsRawFd},
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use aya::maps::{MapData, RingBuf};
use std::os::unix::ffi::OsStrExt;

use guard_common::{
    AF_INET6, EventHeader, ExecEvent, HOOK_BIND4, HOOK_BIND6, HOOK_CONNECT_UNIX, HOOK_CONNECT4,
    HOOK_CONNECT6, HOOK_EGRESS, HOOK_INGRESS, HOOK_SENDMSG_UNIX, HOOK_SENDMSG4, HOOK_SENDMSG6,
    IPPROTO_TCP, IPPROTO_UDP, KillEvent, LAYER_CAPABILITIES, LAYER_NO_NEW_PRIVS, LAYER_SECCOMP,
    LAYER_UNREADABLE, NO_RULE, NetEvent, PATH_BASE, PATH_ENTRY, REASON_DIRECT_LOADER,
    REASON_DNS_PROXY, REASON_IP_OPTIONS, REASON_NO_RULE, REASON_PORT, REASON_PROTOCOL,
    REASON_SOCKET_TYPE, REASON_UNCONFINED, REASON_UNKNOWN_SCOPE, RULE_DOH, SockEvent, UnixEvent,
    VERDICT_ALLOWED, VERDICT_AUDIT, VERDICT_DENIED,
};
use serde_json::json;

use crate::{
    journal::{AgentRef, JournalHandle, Kind, ProcessRef, Record, Text, Verdict, format_time},
    kernel::{
        Kernel,
        events::{BootClock, KernelEvent, decode},
    },
    metrics::Metrics,
    monitor::coalesce::Coalescer,
    policy::RuleInfo,
};

/// What the monitor needs to know about an agent to attribute its events.
pub struct AgentMeta {
    pub agent: AgentRef,
    pub cgroup_id: u64,
    pub rules: Vec<RuleInfo>,
    /// The agent's policy for attributing refused system calls; `None` when
    /// it could not be rebuilt (the records then say so).
    pub judge: Option<judge::Judge>,
    /// Refusals journaled, real and would-be apart, for the exit summary
    /// and `guardctl ps`.
    pub refusals: RefusalCount,
    /// Repeats of benign fallbacks (clone3 → ENOSYS) not journaled again
    /// for the same process; reported in the exit record.
    pub suppressed: AtomicU64,
    /// Events of this agent taken from the ring buffer.
    pub seen: AtomicU64,
    /// Loss already journaled.
    pub lost_reported: AtomicU64,
    /// Set when the scope has ended; the entry is dropped a while later so
    /// that late events are still attributed.
    pub closed_at: Mutex<Option<Instant>>,
    /// The program of the launcher that opened the scope (guardctl): what
    /// a process of the scope runs until something in it execs. Used only
    /// when the kernel's identity of a caller's program matches it.
    pub launcher_exe: Option<Vec<u8>>,
    /// The names the agent's resolver gave addresses (issue 12), set once
    /// its resolver runs: a record of a connection names the host it was
    /// looked up as.
    pub names: std::sync::OnceLock<Arc<crate::dns::NameBook>>,
}

impl AgentMeta {
    /// A scope's metadata with nothing counted yet: the same start whether
    /// guardd opens the scope or re-adopts it (then with the refusals
    /// already journaled).
    pub fn new(
        agent: AgentRef,
        cgroup_id: u64,
        rules: Vec<RuleInfo>,
        judge: Option<judge::Judge>,
        refusals: RefusalCount,
        launcher_exe: Option<Vec<u8>>,
    ) -> AgentMeta {
        AgentMeta {
            agent,
            cgroup_id,
            rules,
            judge,
            refusals,
            suppressed: AtomicU64::new(0),
            seen: AtomicU64::new(0),
            lost_reported: AtomicU64::new(0),
            closed_at: Mutex::new(None),
            launcher_exe,
            names: std::sync::OnceLock::new(),
        }
    }
}

/// The program `pid` runs, for [`AgentMeta::launcher_exe`]; `None` when it
/// cannot be read.
pub fn launcher_exe(pid: i32) -> Option<Vec<u8>> {
    u32::try_from(pid).ok().and_then(read_exe)
}

/// An agent's refusals by verdict. Every refusal taken from the kernel or
/// decided by guardd is counted here, whichever layer refused it, before
/// any folding (`coalesce`): the counts equal the journal's records of the
/// agent weighted by `1 + detail.repeated`.
#[derive(Debug, Default)]
pub struct RefusalCount {
    /// Really refused (verdict `denied`), in any mode: in audit mode some
    /// layers still refuse (seccomp, Unix-socket rules, guardd's socket).
    pub denied: AtomicU64,
    /// Would have been refused (verdict `audit`), allowed in audit mode.
    pub audited: AtomicU64,
}

impl RefusalCount {
    pub fn count(&self, verdict: Verdict) {
        self.add(verdict, 1);
    }

    pub fn add(&self, verdict: Verdict, n: u64) {
        match verdict {
            Verdict::Denied => self.denied.fetch_add(n, Ordering::Relaxed),
            Verdict::Audit => self.audited.fetch_add(n, Ordering::Relaxed),
            Verdict::Allowed => return,
        };
    }

    pub fn denied(&self) -> u64 {
        self.denied.load(Ordering::Relaxed)
    }

    pub fn audited(&self) -> u64 {
        self.audited.load(Ordering::Relaxed)
    }
}

/// Agents by kernel slot, shared with the daemon.
pub type Attribution = Arc<RwLock<HashMap<u32, Arc<AgentMeta>>>>;

const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
const AUDIT_ARCH_I386: u32 = 0x4000_0003;

const LOSS_POLL: Duration = Duration::from_millis(250);
/// Closed agents stay attributable this long; their events were all taken
/// before the scope ended, so this only covers stragglers.
const RETAIN_CLOSED: Duration = Duration::from_secs(5);
const TRIM_EVERY: Duration = Duration::from_secs(5);

pub struct Monitor {
    pub stop: Arc<AtomicBool>,
    pub thread: std::thread::JoinHandle<()>,
}

pub fn start(
    ring: RingBuf<MapData>,
    attribution: Attribution,
    kernel: Arc<Mutex<Kernel>>,
    journal: JournalHandle,
    metrics: Arc<Metrics>,
    coalescer: Arc<Mutex<Coalescer>>,
) -> std::io::Result<Monitor> {
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let sink = Sink {
        journal,
        coalescer,
        out: Vec::new(),
    };
    let thread = std::thread::Builder::new()
        .name("guard-monitor".into())
        .spawn(move || run(ring, attribution, kernel, sink, metrics, stop2))?;
    Ok(Monitor { stop, thread })
}

/// Processes that already had their `clone3` fallback journaled.
type Seen = std::collections::HashSet<(u32, u32)>;

/// Where the monitor's records go: through the coalescer to the journal.
struct Sink {
    journal: JournalHandle,
    coalescer: Arc<Mutex<Coalescer>>,
    /// Reused output buffer of the coalescer.
    out: Vec<Record>,
}

impl Sink {
    /// Journals `rec` now or folds it into a later summary; returns whether
    /// it was folded (see [`coalesce::put`]).
    fn put(&mut self, rec: Record, wall: SystemTime) -> bool {
        coalesce::put(&self.coalescer, &self.journal, rec, wall, &mut self.out)
    }

    /// Journals the summaries of intervals that have ended.
    fn due(&mut self) {
        let mut c = self
            .coalescer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        c.due(Instant::now(), &mut self.out);
        coalesce::append_all(&self.journal, &mut self.out);
    }

    fn flush_all(&mut self) {
        let mut c = self
            .coalescer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        c.flush_all(&mut self.out);
        coalesce::append_all(&self.journal, &mut self.out);
    }
}

fn run(
    mut ring: RingBuf<MapData>,
    attribution: Attribution,
    kernel: Arc<Mutex<Kernel>>,
    mut sink: Sink,
    metrics: Arc<Metrics>,
    stop: Arc<AtomicBool>,
) {
    let mut last_poll = Instant::now();
    let mut last_trim = Instant::now();
    let mut seen = Seen::new();
    loop {
        drain(&mut ring, &attribution, &mut sink, &mut seen, &metrics);
        sink.due();
        if stop.load(Ordering::Relaxed) {
            drain(&mut ring, &attribution, &mut sink, &mut seen, &metrics);
            // Shutdown: every held count is journaled.
            sink.flush_all();
            return;
        }
        if last_poll.elapsed() >= LOSS_POLL {
            report_losses(&attribution, &kernel, &sink.journal, &metrics);
            forget_exes();
            // After a burst, give the memory it took back to the system.
            if last_trim.elapsed() >= TRIM_EVERY {
                // SAFETY: malloc_trim has no preconditions.
                unsafe { libc::malloc_trim(0) };
                last_trim = Instant::now();
            }
            if seen.len() > 100_000 {
                seen.clear();
            }
            last_poll = Instant::now();
        }
        let mut pfd = libc::pollfd {
            fd: ring.as_fd().as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: polling one descriptor we own, with a bounded timeout.
        unsafe { libc::poll(&mut pfd, 1, 50) };
    }
}

/// Reads every event currently in the ring buffer.
fn drain(
    ring: &mut RingBuf<MapData>,
    attribution: &Attribution,
    sink: &mut Sink,
    seen: &mut Seen,
    metrics: &Metrics,
) {
    let mut taken_since_due = 0u32;
    let mut clock = BootClock::now();
    while let Some(item) = ring.next() {
        let mut taken: Option<Arc<AgentMeta>> = None;
        let rec = match decode(&item) {
            Some(ev) => {
                let meta = attribution
                    .read()
                    .ok()
                    .and_then(|m| m.get(&ev.header().slot).cloned());
                let rec = if is_repeat_fallback(&ev, seen) {
                    if let Some(m) = &meta {
                        m.suppressed.fetch_add(1, Ordering::Relaxed);
                    }
                    None
                } else {
                    record_for(&ev, meta.as_deref())
                };
                let rec = rec.map(|mut r| {
                    // When the kernel saw it, however long it waited in the
                    // ring buffer. A time later than the clock reading is
                    // an event newer than it: read the clocks again.
                    let ts = ev.header().ts_ns;
                    let wall = clock
                        .wall(ts)
                        .or_else(|| {
                            clock = BootClock::now();
                            clock.wall(ts)
                        })
                        .unwrap_or_else(SystemTime::now);
                    r.time = format_time(wall);
                    (r, wall)
                });
                if let Some((r, _)) = &rec {
                    metrics.event(r);
                    if let Some(m) = &meta
                        && r.layer != crate::journal::LEARN_LAYER
                    {
                        m.refusals.count(r.verdict);
                    }
                }
                taken = meta;
                rec
            }
            None => Some((
                Record::new(
                    Kind::Gap,
                    "undecodable",
                    Text::new(format!("{} bytes", item.len())),
                    Verdict::Denied,
                    "abi",
                    "guardd",
                )
                .with_detail(json!({"why": "a kernel event did not match this guardd's ABI"})),
                SystemTime::now(),
            )),
        };
        drop(item);
        if let Some((rec, wall)) = rec
            && sink.put(rec, wall)
        {
            metrics.folded();
        }
        // Counted last, after the record is appended or held: once `seen`
        // covers the kernel's count, every record of the agent is appended
        // or in the coalescer, where closing the scope flushes it.
        if let Some(m) = taken {
            m.seen.fetch_add(1, Ordering::Release);
        }
        // A sustained flood can keep this loop from returning: end the
        // intervals of other keys from here too.
        taken_since_due += 1;
        if taken_since_due == 1024 {
            taken_since_due = 0;
            sink.due();
        }
    }
}

/// glibc tries `clone3` before `clone` for every thread it starts; the
/// filter answers ENOSYS and glibc falls back. The first refusal per
/// process is journaled, repeats are counted.
fn is_repeat_fallback(ev: &KernelEvent, seen: &mut Seen) -> bool {
    match ev {
        KernelEvent::Syscall(e, _)
            if e.nr == guard_common::syscalls::NR_CLONE3 && e.ret == -libc::ENOSYS =>
        {
            !seen.insert((e.hdr.slot, e.hdr.tgid))
        }
        _ => false,
    }
}

fn report_losses(
    attribution: &Attribution,
    kernel: &Arc<Mutex<Kernel>>,
    journal: &JournalHandle,
    metrics: &Metrics,
) {
    let metas: Vec<Arc<AgentMeta>> = match attribution.read() {
        Ok(m) => m.values().cloned().collect(),
        Err(_) => return,
    };
    for meta in metas {
        let info = match kernel.lock() {
            Ok(k) => k.agent_info(meta.cgroup_id),
            Err(_) => None,
        };
        if let Some(info) = info {
            journal_loss(&meta, info.lost, journal, metrics);
        }
    }
    // Forget agents that ended long enough ago.
    if let Ok(mut m) = attribution.write() {
        m.retain(|_, meta| {
            meta.closed_at
                .lock()
                .map(|c| c.is_none_or(|t| t.elapsed() < RETAIN_CLOSED))
                .unwrap_or(true)
        });
    }
}

/// Journals the part of `lost` not yet reported for this agent.
pub fn journal_loss(meta: &AgentMeta, lost: u64, journal: &JournalHandle, metrics: &Metrics) {
    // One atomic step: the monitor's poll and a scope's close may report
    // the same counter at once, and only one of them may journal each loss.
    let before = meta.lost_reported.fetch_max(lost, Ordering::AcqRel);
    if lost <= before {
        return;
    }
    metrics.lost(lost - before);
    let rec = Record::new(
        Kind::Gap,
        "lost",
        Text::new(format!("{} events", lost - before)),
        Verdict::Denied,
        "ring-buffer-full",
        "cgroup-bpf",
    )
    .with_agent(meta.agent.clone())
    .with_detail(json!({
        "lost": lost - before,
        "lost_total": lost,
        "why": "the kernel ring buffer was full; these decisions were enforced but their records were not kept"
    }));
    if let Err(e) = journal.append(rec) {
        tracing::error!("journal append failed: {e}");
    }
}

fn cstr(bytes: &[u8]) -> &[u8] {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    &bytes[..end]
}

thread_local! {
    /// Executable of each process, so a flood of events from one process
    /// costs one `readlink` instead of one per event, and a process that
    /// has exited is still named. Every exec in a scope refreshes its
    /// entry, so a pid reused by a new program shows the new one; the table
    /// is emptied when it grows past `EXE_CACHE_MAX`, which bounds it.
    static EXE: std::cell::RefCell<HashMap<u32, Vec<u8>>> = std::cell::RefCell::new(HashMap::new());
}

const EXE_CACHE_MAX: usize = 65_536;

fn forget_exes() {
    EXE.with(|c| {
        let mut c = c.borrow_mut();
        if c.len() > EXE_CACHE_MAX {
            c.clear();
        }
    });
}

fn remember_exe(tgid: u32, exe: &[u8]) {
    EXE.with(|c| c.borrow_mut().insert(tgid, exe.to_vec()));
}

/// The program a process runs now: its `/proc/<pid>/exe`.
fn read_exe(pid: u32) -> Option<Vec<u8>> {
    std::fs::read_link(format!("/proc/{pid}/exe"))
        .ok()
        .map(|p| p.as_os_str().as_bytes().to_vec())
}

/// The program a process runs: from its last exec seen, or its
/// `/proc/<pid>/exe` (only successes are cached).
fn exe_of(tgid: u32) -> Option<Vec<u8>> {
    if let Some(e) = EXE.with(|c| c.borrow().get(&tgid).cloned()) {
        return Some(e);
    }
    let exe = read_exe(tgid)?;
    remember_exe(tgid, &exe);
    Some(exe)
}

/// The process of an event. A process that has already exited and never
/// exec'd in the scope (a forked child whose exec was refused) runs its
/// parent's program, so the parent's stands in for it.
fn process_of(h: &EventHeader, parent: Option<u32>) -> ProcessRef {
    let exe = exe_of(h.tgid).or_else(|| parent.filter(|&p| p != 0).and_then(exe_of));
    process_running(h, exe)
}

/// The process of an event, running `exe` (unnamed when `None`).
fn process_running(h: &EventHeader, exe: Option<Vec<u8>>) -> ProcessRef {
    ProcessRef {
        pid: h.tgid,
        comm: Text::new(cstr(&h.comm).to_vec()),
        exe: Text::new(exe.unwrap_or_default()),
    }
}

/// The process of a refused exec, its program named by the first
/// candidate whose identity is the one the kernel read from the caller's
/// `mm->exe_file`: the process's own (or last exec'd) program, its
/// parent's (a forked child runs its parent's program), the launcher's (a
/// process that nothing in the scope exec'd yet runs guardctl's). A
/// candidate that does not match (a pid reused, a file replaced) is never
/// named; the flag says whether one matched.
fn process_by_identity(
    h: &EventHeader,
    ppid: u32,
    meta: Option<&AgentMeta>,
    id: (u32, u64),
) -> (ProcessRef, bool) {
    let is_it = |p: &Vec<u8>| {
        judge::identity(std::path::Path::new(std::ffi::OsStr::from_bytes(p))) == Some(id)
    };
    let exe = exe_of(h.tgid)
        .filter(is_it)
        .or_else(|| (ppid != 0).then(|| exe_of(ppid)).flatten().filter(is_it))
        .or_else(|| meta.and_then(|m| m.launcher_exe.clone()).filter(is_it));
    let found = exe.is_some();
    (process_running(h, exe), found)
}

fn verdict_of(h: &EventHeader) -> Verdict {
    match h.verdict {
        VERDICT_AUDIT => Verdict::Audit,
        VERDICT_DENIED => Verdict::Denied,
        _ => Verdict::Allowed,
    }
}

fn rule_name(meta: Option<&AgentMeta>, rule: u32) -> Option<&RuleInfo> {
    if rule == NO_RULE {
        return None;
    }
    meta.and_then(|m| m.rules.get(rule as usize))
}

fn hook_name(hook: u8) -> &'static str {
    match hook {
        HOOK_CONNECT4 => "connect4",
        HOOK_CONNECT6 => "connect6",
        HOOK_SENDMSG4 => "sendmsg4",
        HOOK_SENDMSG6 => "sendmsg6",
        HOOK_CONNECT_UNIX => "connect_unix",
        HOOK_SENDMSG_UNIX => "sendmsg_unix",
        HOOK_BIND4 => "bind4",
        HOOK_BIND6 => "bind6",
        HOOK_INGRESS => "cgroup_skb/ingress",
        HOOK_EGRESS => "cgroup_skb/egress",
        _ => "sock_create",
    }
}

fn proto_name(p: u8) -> String {
    match u32::from(p) {
        IPPROTO_TCP => "tcp".into(),
        IPPROTO_UDP => "udp".into(),
        other => format!("proto{other}"),
    }
}

fn ip_of(family: u32, addr: &[u8; 16]) -> String {
    if family == AF_INET6 {
        Ipv6Addr::from(*addr).to_string()
    } else {
        Ipv4Addr::new(addr[0], addr[1], addr[2], addr[3]).to_string()
    }
}

/// The journal record of one kernel event; `None` when the event is a
/// refusal another layer has journaled already.
pub fn record_for(ev: &KernelEvent, meta: Option<&AgentMeta>) -> Option<Record> {
    let h = ev.header();
    let (kind, action, target, verdict, rule, layer, detail) = match ev {
        KernelEvent::Net(e) => {
            let (a, t, r, d) = net_fields(e, meta);
            (Kind::Network, a, t, verdict_of(h), r, "cgroup-bpf", d)
        }
        KernelEvent::Sock(e) => {
            let (a, t, r, d) = sock_fields(e);
            (Kind::Network, a, t, verdict_of(h), r, "cgroup-bpf", d)
        }
        KernelEvent::Unix(e) => {
            let (a, t, r, d) = unix_fields(e);
            (Kind::Network, a, t, verdict_of(h), r, "cgroup-bpf", d)
        }
        KernelEvent::Exec(e) if h.reason == REASON_UNCONFINED => {
            let (t, _, _, mut d) = exec_fields(e, meta);
            d["args"] = d["argv"].clone();
            d["args_truncated"] = d["argv_truncated"].clone();
            d["missing"] = json!(missing_layers(e.missing, e.excess_caps));
            if e.missing & LAYER_CAPABILITIES != 0 {
                // Which set held them: a permitted capability not yet
                // effective is one the program would raise itself.
                d["excess_capabilities"] = json!({
                    "effective": capability_names(e.excess_effective),
                    "permitted": capability_names(e.excess_permitted),
                });
            }
            d["why"] = json!(
                "the program started without layers its launcher must apply before exec (a seccomp filter, \
                 no_new_privs, only the policy's capabilities): a modified or broken launcher; the process \
                 was killed before its first instruction"
            );
            (
                Kind::Exec,
                "exec".to_owned(),
                t,
                Verdict::Denied,
                "launch.layers-missing".to_owned(),
                "exec-tracepoint",
                d,
            )
        }
        KernelEvent::Exec(e) if h.reason == REASON_DIRECT_LOADER => {
            let (t, _, _, mut d) = exec_fields(e, meta);
            // The same field as every other exec refusal.
            d["args"] = d["argv"].clone();
            d["args_truncated"] = d["argv_truncated"].clone();
            d["why"] = json!(
                "the dynamic loader was run as a program: it would map any readable file or memfd executable, \
                 around the exec grants; the process was killed before its first instruction"
            );
            (
                Kind::Exec,
                "exec".to_owned(),
                t,
                Verdict::Denied,
                "exec.loader-direct".to_owned(),
                "exec-tracepoint",
                d,
            )
        }
        KernelEvent::Exec(e) => {
            let (t, r, l, d) = exec_fields(e, meta);
            remember_exe(h.tgid, t.as_bytes());
            (Kind::Exec, "exec".to_owned(), t, Verdict::Allowed, r, l, d)
        }
        KernelEvent::Kill(e) => {
            let (a, t, r, d) = kill_fields(e);
            (Kind::Syscall, a, t, Verdict::Denied, r, "seccomp", d)
        }
        KernelEvent::Observed(e) => {
            let facts = path_facts(e);
            let v = meta
                .and_then(|m| m.judge.as_ref())?
                .observe(e.nr, &e.args, h.tgid, &facts)?;
            (
                v.kind,
                v.action,
                v.target,
                Verdict::Audit,
                v.rule,
                v.layer,
                v.detail,
            )
        }
        KernelEvent::Syscall(e, argv) => {
            let facts = path_facts(e);
            let path = facts.exit;
            let (k, a, t, v, r, l, mut d) = match meta.and_then(|m| m.judge.as_ref()) {
                Some(j) => {
                    let v = j.judge_facts(e.nr, e.ret, &e.args, h.tgid, &facts)?;
                    (
                        v.kind,
                        v.action,
                        v.target,
                        Verdict::Denied,
                        v.rule,
                        v.layer,
                        v.detail,
                    )
                }
                None => (
                    Kind::Syscall,
                    crate::syscalls::name(e.nr),
                    Text::new(crate::syscalls::name(e.nr)),
                    Verdict::Denied,
                    "unattributed".to_owned(),
                    "kernel",
                    json!({"errno": -e.ret, "args": e.args, "path": path.map(|p| Text::new(p.to_vec())),
                           "why": "the agent's policy is not known to this guardd, so the refusing layer cannot be named"}),
                ),
            };
            // A refused exec: the program's arguments replace the raw
            // argument registers, which only held pointers.
            if let Some(argv) = argv {
                add_exec_args(&mut d, argv);
            }
            (k, a, t, v, r, l, d)
        }
    };
    let rule = if h.reason == REASON_UNKNOWN_SCOPE {
        "scope.unknown".to_owned()
    } else {
        rule
    };
    let parent = match ev {
        KernelEvent::Syscall(e, _) | KernelEvent::Observed(e) => Some(e.ppid),
        _ => None,
    };
    let mut rec = Record::new(kind, action, target, verdict, rule, layer).with_detail(detail);
    match ev {
        // A packet is judged outside any process of the agent: name none.
        KernelEvent::Net(e)
            if e.hook == HOOK_INGRESS || (e.hook == HOOK_EGRESS && e.hdr.tgid == 0) => {}
        // A refused exec: the kernel identified the caller's program.
        KernelEvent::Syscall(e, Some(a)) if a.flags & guard_common::ARGV_EXE != 0 => {
            let (process, found) = process_by_identity(h, e.ppid, meta, (a.exe_dev, a.exe_ino));
            if !found && let Some(d) = &mut rec.detail {
                d["exe_identity"] = json!({
                    "dev": format!("{}:{}", a.exe_dev >> 20, a.exe_dev & 0xf_ffff),
                    "ino": a.exe_ino,
                    "why": "the caller's program was identified in the kernel, but no path guardd could read names that file",
                });
            }
            rec = rec.with_process(process);
        }
        _ => rec = rec.with_process(process_of(h, parent)),
    }
    match meta {
        Some(m) => rec = rec.with_agent(m.agent.clone()),
        None => {
            rec = rec.with_agent(AgentRef {
                id: format!("cgroup:{}", h.cgroup_id),
                name: String::new(),
                policy: String::new(),
                container: None,
            })
        }
    }
    Some(rec)
}

/// What the kernel reported about a call's path argument.
fn path_facts(e: &guard_common::SyscallEvent) -> judge::PathFacts<'_> {
    judge::PathFacts {
        exit: (e.path_len > 0).then(|| cstr(&e.path[..(e.path_len as usize).min(e.path.len())])),
        entry: (e.path_flags & PATH_ENTRY != 0)
            .then(|| cstr(&e.entry[..(e.entry_len as usize).min(e.entry.len())])),
        base: (e.path_flags & PATH_BASE != 0).then_some((e.base_dev, e.base_ino)),
    }
}

/// Puts a refused exec's arguments in `detail.args` (strings), with
/// `args_truncated` when an argument was cut or there were more than the
/// kernel keeps, `args_unreadable` when the `argv` array could not be read
/// to its end.
fn add_exec_args(detail: &mut serde_json::Value, a: &guard_common::ExecArgv) {
    let count = (a.count as usize).min(guard_common::EXEC_ARGV_MAX);
    let args: Vec<Text> = a.args[..count]
        .iter()
        .zip(&a.lens[..count])
        .map(|(arg, &len)| {
            let kept = (len as usize).min(arg.len());
            Text::new(cstr(&arg[..kept]).to_vec())
        })
        .collect();
    let cut = a.cut != 0 || a.flags & guard_common::ARGV_MORE != 0;
    if !detail.is_object() {
        *detail = json!({"original": detail.take()});
    }
    if let Some(raw) = detail.get("args").cloned() {
        detail["registers"] = raw;
    }
    detail["args"] = json!(args);
    detail["args_truncated"] = json!(cut);
    if a.flags & guard_common::ARGV_FAULT != 0 {
        detail["args_unreadable"] = json!(true);
    }
}

/// The layers an exec'd program ran without (`ExecEvent::missing`), as
/// `detail.missing` names them: `seccomp`, `no_new_privs`,
/// `capabilities:CAP_X,...` (the effective or permitted ones the policy
/// does not grant), `unreadable` (the kernel could not read the task's
/// state; killed all the same).
fn missing_layers(missing: u32, excess_caps: u64) -> Vec<String> {
    let mut out = Vec::new();
    if missing & LAYER_SECCOMP != 0 {
        out.push("seccomp".to_owned());
    }
    if missing & LAYER_NO_NEW_PRIVS != 0 {
        out.push("no_new_privs".to_owned());
    }
    if missing & LAYER_CAPABILITIES != 0 {
        out.push(format!(
            "capabilities:{}",
            capability_names(excess_caps).join(",")
        ));
    }
    if missing & LAYER_UNREADABLE != 0 {
        out.push("unreadable".to_owned());
    }
    out
}

/// Names of the capabilities in `set` (bit n: capability n), `CAP_<n>`
/// for a number the table does not know.
fn capability_names(set: u64) -> Vec<String> {
    (0..64u32)
        .filter(|c| set & (1 << c) != 0)
        .map(|c| {
            crate::policy::CAPABILITIES
                .get(c as usize)
                .map_or_else(|| format!("CAP_{c}"), |n| (*n).to_owned())
        })
        .collect()
}

/// Arguments of an exec: NUL-separated in the event.
fn exec_fields(
    e: &ExecEvent,
    meta: Option<&AgentMeta>,
) -> (Text, String, &'static str, serde_json::Value) {
    let name = cstr(&e.filename[..(e.filename_len as usize).min(e.filename.len())]).to_vec();
    let kept = (e.args_len as usize).min(e.args.len());
    let mut argv: Vec<Text> = e.args[..kept]
        .split(|&b| b == 0)
        .map(|a| Text::new(a.to_vec()))
        .collect();
    if argv.last().is_some_and(|a| a.is_empty()) {
        argv.pop();
    }
    let truncated = e.args_len as usize > e.args.len();
    let path = std::path::Path::new(std::ffi::OsStr::from_bytes(&name));
    let (rule, layer) = match meta
        .and_then(|m| m.judge.as_ref())
        .and_then(|j| j.fs.as_ref())
    {
        Some(fs) if fs.restricted => {
            let rule = fs
                .rules
                .iter()
                .filter(|r| r.access.exec && path.starts_with(&r.path))
                .map(|r| r.rule.clone())
                .next()
                .unwrap_or_else(|| "filesystem.exec".to_owned());
            (rule, "landlock")
        }
        _ => ("filesystem.unrestricted".to_owned(), "none"),
    };
    let mut detail = json!({"argv": argv, "argv_truncated": truncated, "args_bytes": e.args_len});
    if e.interp_len > 0 {
        let interp = cstr(&e.interp[..(e.interp_len as usize).min(e.interp.len())]);
        detail["interpreter"] = json!(Text::new(interp.to_vec()));
    }
    // A relative program name (`./run.sh`) starts at the working directory.
    // guardd reads it after the exec, when the program may already have
    // changed it: a hint, marked unverified (a draft does not grant it).
    if !name.starts_with(b"/")
        && !name.is_empty()
        && let Ok(cwd) = std::fs::read_link(format!("/proc/{}/cwd", e.hdr.tgid))
    {
        detail["path"] = json!(Text::new(cwd.join(path).as_os_str().as_bytes().to_vec()));
        detail["path_unverified"] = json!(true);
    }
    (Text::new(name), rule, layer, detail)
}

/// A process seccomp killed: the call, and the architecture it was made
/// with (the filter kills calls of any ABI but x86_64).
fn kill_fields(e: &KillEvent) -> (String, Text, String, serde_json::Value) {
    let arch = match e.arch {
        AUDIT_ARCH_X86_64 => "x86_64".to_owned(),
        AUDIT_ARCH_I386 => "i386".to_owned(),
        other => format!("{other:#x}"),
    };
    let (rule, call) = if e.arch == AUDIT_ARCH_X86_64 {
        (
            "syscalls.default-deny",
            crate::syscalls::name(e.syscall as u32),
        )
    } else {
        (
            "syscalls.architecture",
            format!("{arch} system call {}", e.syscall),
        )
    };
    (
        "killed".to_owned(),
        Text::new(call),
        rule.to_owned(),
        json!({
            "signal": "SIGSYS",
            "syscall": e.syscall,
            "arch": arch,
            "why": "seccomp killed the process: only x86_64 system calls are allowed (a foreign ABI would bypass the filter's numbering)",
        }),
    )
}

fn net_fields(e: &NetEvent, meta: Option<&AgentMeta>) -> (String, Text, String, serde_json::Value) {
    let ip = ip_of(u32::from(e.family), &e.addr);
    let host = if u32::from(e.family) == AF_INET6 {
        format!("[{ip}]")
    } else {
        ip
    };
    let target = format!("{host}:{}/{}", e.port, proto_name(e.protocol));
    let action = match e.hook {
        HOOK_CONNECT4 | HOOK_CONNECT6 => "connect",
        HOOK_BIND4 | HOOK_BIND6 => "bind",
        HOOK_INGRESS => "listen",
        _ => "sendmsg",
    };
    if e.hook == HOOK_EGRESS && e.hdr.reason != REASON_UNKNOWN_SCOPE {
        return route_fields(e, target);
    }
    let nearest = rule_name(meta, e.rule);
    if matches!(e.hook, HOOK_BIND4 | HOOK_BIND6 | HOOK_INGRESS)
        && e.hdr.reason != REASON_UNKNOWN_SCOPE
    {
        return listen_fields(e, action, target, nearest);
    }
    let looked_up = judged_ip(e).and_then(|ip| meta?.names.get()?.name_of(ip));
    if e.hdr.verdict == VERDICT_ALLOWED {
        return host_allowed_fields(e, action, target, nearest, looked_up);
    }
    let (rule, why) = match e.hdr.reason {
        REASON_DNS_PROXY => (
            "network.dns-resolver".to_owned(),
            "this port is the DNS resolver guardd runs for another agent; an agent reaches only its own (its queries to port 53 go there)".to_owned(),
        ),
        REASON_PORT if e.rule == RULE_DOH => (
            "network.dns-over-https".to_owned(),
            "a well-known DNS-over-HTTPS resolver: while the agent's DNS goes through guardd, only a rule naming exactly this address reaches it".to_owned(),
        ),
        REASON_PORT => (
            "network.default-deny".to_owned(),
            format!(
                "the address is in {} but that rule does not allow this port/protocol",
                nearest
                    .map(|r| format!("{} ({})", r.id, r.text))
                    .unwrap_or_else(|| "a rule".into())
            ),
        ),
        REASON_PROTOCOL => (
            "network.protocol".to_owned(),
            "only TCP and UDP can be allowed".to_owned(),
        ),
        REASON_UNKNOWN_SCOPE => (
            "scope.unknown".to_owned(),
            "the task's agent cgroup is not a live scope".to_owned(),
        ),
        _ => (
            "network.default-deny".to_owned(),
            "no rule allows this address".to_owned(),
        ),
    };
    let mut detail = json!({
        "hook": hook_name(e.hook),
        "why": why,
    });
    if e.rewritten != 0 {
        detail["requested"] = json!(ip_of(e.orig_family, &e.orig_addr));
    }
    if let Some(r) = nearest {
        detail["nearest_rule"] = json!(r.id);
    }
    if let Some(n) = looked_up {
        detail["name"] = json!(n.name);
        // Only when the refusal is "no rule" and the name had been granted:
        // a port its rule never allowed, or an audit-mode name that was
        // never granted, did not expire.
        if n.expired && e.hdr.reason == REASON_NO_RULE && !n.rules.is_empty() {
            let until = crate::journal::format_time(n.expires);
            detail["expired_name"] = json!({"name": n.name, "expired_at": until});
            let why = detail["why"].as_str().unwrap_or_default().to_owned();
            detail["why"] = json!(format!(
                "{why}; the address was allowed as {} until {until}, when that answer expired: \
                 look the name up again",
                n.name
            ));
        }
    }
    (action.to_owned(), Text::new(target), rule, detail)
}

/// The address a net event judged.
fn judged_ip(e: &NetEvent) -> Option<IpAddr> {
    match u32::from(e.family) {
        AF_INET6 => Some(IpAddr::V6(Ipv6Addr::from(e.addr))),
        guard_common::AF_INET => Some(IpAddr::V4(Ipv4Addr::new(
            e.addr[0], e.addr[1], e.addr[2], e.addr[3],
        ))),
        _ => None,
    }
}

/// The first connection a host rule allowed to an address and port: the
/// rule is the host pattern (`network.host:api.example.com`), the detail
/// the name the agent looked up and the rule's place in the policy.
fn host_allowed_fields(
    e: &NetEvent,
    action: &str,
    target: String,
    rule: Option<&RuleInfo>,
    looked_up: Option<crate::dns::NameInfo>,
) -> (String, Text, String, serde_json::Value) {
    let pattern = rule
        .and_then(|r| r.text.strip_prefix("host "))
        .and_then(|t| t.split_whitespace().next())
        .map(str::to_owned);
    let name = looked_up.as_ref().map(|n| n.name.clone());
    let shown = pattern
        .clone()
        .or_else(|| name.clone())
        .unwrap_or_else(|| "?".to_owned());
    let detail = json!({
        "hook": hook_name(e.hook),
        "name": name,
        "host_rule": rule.map(|r| r.id.clone()),
        "why": "the first connection to this address and port allowed by a host rule, after guardd's resolver answered the name",
    });
    (
        action.to_owned(),
        Text::new(target),
        format!("network.host:{shown}"),
        detail,
    )
}

/// A packet dropped because its wire destination could differ from the
/// address connect/sendmsg judged (issue 8, section 4). `target` is the
/// judged (final) destination; the detail names the first hop the header
/// would have sent it to.
fn route_fields(e: &NetEvent, target: String) -> (String, Text, String, serde_json::Value) {
    let dropped = if e.hdr.reason == REASON_IP_OPTIONS {
        let name = match e.rule {
            0x83 => "loose source route",
            0x89 => "strict source route",
            _ => "other option",
        };
        format!("IPv4 options (first option {:#04x}, {name})", e.rule)
    } else if e.rule == u32::MAX {
        "IPv6 extension header chain too long to judge".to_owned()
    } else {
        format!("IPv6 routing header type {}", e.rule)
    };
    let detail = json!({
        "hook": hook_name(e.hook),
        "dropped": dropped,
        "wire_destination": ip_of(e.orig_family, &e.orig_addr),
        "why": "the packet carried a header that sends it to another address than the one connect/sendmsg judged; \
                every packet of the socket that carries one is dropped, and this record stands for all of them",
    });
    (
        "sendmsg".to_owned(),
        Text::new(target),
        "network.source-route".to_owned(),
        detail,
    )
}

/// A bind, or a listening socket's inbound packets, refused by the
/// `listen` rules.
fn listen_fields(
    e: &NetEvent,
    action: &str,
    target: String,
    nearest: Option<&RuleInfo>,
) -> (String, Text, String, serde_json::Value) {
    let mut why = match (e.hdr.reason, nearest) {
        (REASON_PROTOCOL, _) => "only TCP and UDP can listen".to_owned(),
        (REASON_PORT, Some(r)) => format!(
            "the local address is in {} ({}) but that rule does not allow this port/protocol",
            r.id, r.text
        ),
        _ => "no listen rule allows this local address".to_owned(),
    };
    if e.hook == HOOK_INGRESS {
        why.push_str(
            "; packets for a socket listening there are dropped (listen() without bind() \
             takes an ephemeral port that no bind hook sees)",
        );
    }
    let mut detail = json!({
        "hook": hook_name(e.hook),
        "port": e.port,
        "why": why,
    });
    if e.rewritten != 0 {
        detail["requested"] = json!(ip_of(e.orig_family, &e.orig_addr));
    }
    if let Some(r) = nearest {
        detail["nearest_rule"] = json!(r.id);
    }
    (
        action.to_owned(),
        Text::new(target),
        "network.listen-default-deny".to_owned(),
        detail,
    )
}

fn sock_fields(e: &SockEvent) -> (String, Text, String, serde_json::Value) {
    let family = match e.family {
        2 => "inet",
        10 => "inet6",
        _ => "other",
    };
    let kind = match (e.sock_type, e.protocol) {
        (3, _) => "raw".to_owned(),
        (2, 1) | (2, 58) => "icmp".to_owned(),
        (t, p) => format!("type{t}/proto{p}"),
    };
    (
        "socket".to_owned(),
        Text::new(format!("{family} {kind}")),
        if e.hdr.reason == REASON_SOCKET_TYPE {
            "network.socket-types".to_owned()
        } else {
            "scope.unknown".to_owned()
        },
        json!({
            "hook": "sock_create",
            "family": e.family,
            "type": e.sock_type,
            "protocol": e.protocol,
            "why": "only TCP stream and UDP datagram sockets can be created: others bypass the address rules",
        }),
    )
}

fn unix_fields(e: &UnixEvent) -> (String, Text, String, serde_json::Value) {
    let len = (e.path_len as usize).min(e.path.len());
    let bytes = &e.path[..len];
    let target = if bytes.first() == Some(&0) {
        let mut t = b"@".to_vec();
        t.extend_from_slice(&bytes[1..]);
        t
    } else {
        cstr(bytes).to_vec()
    };
    let action = if e.hook == HOOK_CONNECT_UNIX {
        "connect"
    } else {
        "sendmsg"
    };
    (
        action.to_owned(),
        Text::new(target),
        "network.default-deny".to_owned(),
        json!({
            "hook": hook_name(e.hook),
            "family": "unix",
            "why": "no rule allows this Unix socket",
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use guard_common::{AF_INET, EVENT_NET, EVENT_UNIX, REASON_NO_RULE};

    fn meta() -> AgentMeta {
        AgentMeta::new(
            AgentRef {
                id: "a1".into(),
                name: "demo".into(),
                policy: "p".into(),
                container: None,
            },
            9,
            vec![RuleInfo {
                id: "network.allow[0]".into(),
                text: "10.0.0.0/8 tcp 443".into(),
            }],
            None,
            RefusalCount::default(),
            None,
        )
    }

    #[test]
    fn net_record() {
        let mut e = NetEvent::default();
        e.hdr.kind = EVENT_NET;
        e.hdr.verdict = VERDICT_DENIED;
        e.hdr.reason = REASON_PORT;
        e.hdr.comm[..4].copy_from_slice(b"curl");
        e.hook = HOOK_CONNECT6;
        e.family = AF_INET as u8;
        e.protocol = IPPROTO_TCP as u8;
        e.port = 80;
        e.rule = 0;
        e.rewritten = 1;
        e.orig_family = AF_INET6;
        e.orig_addr = Ipv4Addr::new(10, 1, 2, 3).to_ipv6_mapped().octets();
        e.addr[..4].copy_from_slice(&[10, 1, 2, 3]);
        let r = record_for(&KernelEvent::Net(e), Some(&meta())).unwrap();
        assert_eq!(r.target.as_str(), Some("10.1.2.3:80/tcp"));
        assert_eq!(r.action, "connect");
        assert_eq!(r.rule, "network.default-deny");
        assert_eq!(r.layer, "cgroup-bpf");
        assert_eq!(r.verdict, Verdict::Denied);
        let d = r.detail.unwrap();
        assert_eq!(d["requested"], "::ffff:10.1.2.3");
        assert_eq!(d["nearest_rule"], "network.allow[0]");
        assert_eq!(r.process.unwrap().comm.as_str(), Some("curl"));
        assert_eq!(r.agent.unwrap().name, "demo");
    }

    #[test]
    fn exec_record_splits_arguments_and_flags_truncation() {
        let mut e = ExecEvent {
            hdr: EventHeader::default(),
            filename_len: 0,
            args_len: 0,
            filename: [0; guard_common::EXEC_FILENAME_MAX],
            args: [0; guard_common::EXEC_ARGS_MAX],
            missing: 0,
            _pad: 0,
            excess_caps: 0,
            excess_effective: 0,
            excess_permitted: 0,
            interp_len: 0,
            _pad2: 0,
            interp: [0; guard_common::EXEC_FILENAME_MAX],
        };
        e.hdr.kind = guard_common::EVENT_EXEC;
        e.filename[..9].copy_from_slice(b"/bin/ls\0\0");
        e.filename_len = 8;
        let args = b"ls\0-l\0a\nb\0";
        e.args[..args.len()].copy_from_slice(args);
        e.args_len = args.len() as u32;
        let r = record_for(&KernelEvent::Exec(Box::new(e)), Some(&meta())).unwrap();
        assert_eq!(r.kind, Kind::Exec);
        assert_eq!(r.target.as_str(), Some("/bin/ls"));
        let d = r.detail.unwrap();
        assert_eq!(d["argv"], serde_json::json!(["ls", "-l", "a\nb"]));
        assert_eq!(d["argv_truncated"], false);
        e.args_len = 5000;
        let r = record_for(&KernelEvent::Exec(Box::new(e)), Some(&meta())).unwrap();
        assert_eq!(r.detail.unwrap()["argv_truncated"], true);
    }

    #[test]
    fn an_exec_without_the_launchers_layers_names_what_was_missing() {
        // SAFETY: all-zero is a valid value of this plain integer struct.
        let mut e: ExecEvent = unsafe { std::mem::zeroed() };
        e.hdr.kind = guard_common::EVENT_EXEC;
        e.hdr.verdict = VERDICT_DENIED;
        e.hdr.reason = REASON_UNCONFINED;
        e.filename[..9].copy_from_slice(b"/bin/cat\0");
        e.filename_len = 9;
        e.args[..7].copy_from_slice(b"cat\0-n\0");
        e.args_len = 7;
        e.missing = LAYER_SECCOMP | LAYER_NO_NEW_PRIVS | LAYER_CAPABILITIES;
        e.excess_caps = 1 << 12 | 1 << 21 | 1 << 63;
        e.excess_effective = 1 << 21;
        e.excess_permitted = 1 << 12 | 1 << 21 | 1 << 63;
        let r = record_for(&KernelEvent::Exec(Box::new(e)), Some(&meta())).unwrap();
        assert_eq!(
            (r.kind, r.action.as_str(), r.verdict),
            (Kind::Exec, "exec", Verdict::Denied)
        );
        assert_eq!(r.target.as_str(), Some("/bin/cat"));
        assert_eq!(r.rule, "launch.layers-missing");
        assert_eq!(r.layer, "exec-tracepoint");
        assert_eq!(r.agent.unwrap().name, "demo");
        let d = r.detail.unwrap();
        assert_eq!(
            d["missing"],
            serde_json::json!([
                "seccomp",
                "no_new_privs",
                "capabilities:CAP_NET_ADMIN,CAP_SYS_ADMIN,CAP_63"
            ])
        );
        assert_eq!(
            d["excess_capabilities"],
            serde_json::json!({
                "effective": ["CAP_SYS_ADMIN"],
                "permitted": ["CAP_NET_ADMIN", "CAP_SYS_ADMIN", "CAP_63"],
            })
        );
        assert_eq!(d["args"], serde_json::json!(["cat", "-n"]));
        // Only what is missing is named; a capability held only as
        // permitted is named like an effective one.
        e.missing = LAYER_CAPABILITIES;
        e.excess_caps = 1;
        e.excess_effective = 0;
        e.excess_permitted = 1;
        let r = record_for(&KernelEvent::Exec(Box::new(e)), Some(&meta())).unwrap();
        let d = r.detail.unwrap();
        assert_eq!(d["missing"], serde_json::json!(["capabilities:CAP_CHOWN"]));
        assert_eq!(
            d["excess_capabilities"],
            serde_json::json!({"effective": [], "permitted": ["CAP_CHOWN"]})
        );
        e.missing = LAYER_UNREADABLE;
        let r = record_for(&KernelEvent::Exec(Box::new(e)), Some(&meta())).unwrap();
        let d = r.detail.unwrap();
        assert_eq!(d["missing"], serde_json::json!(["unreadable"]));
        assert!(d.get("excess_capabilities").is_none(), "{d}");
    }

    /// An `execve` refused with EACCES, with no arguments read yet.
    fn refused_exec() -> (guard_common::SyscallEvent, guard_common::ExecArgv) {
        // SAFETY: all-zero is a valid value of these plain integer structs.
        let (mut s, a): (guard_common::SyscallEvent, guard_common::ExecArgv) =
            unsafe { (std::mem::zeroed(), std::mem::zeroed()) };
        s.hdr.kind = guard_common::EVENT_EXEC_REFUSED;
        s.nr = guard_common::syscalls::NR_EXECVE;
        s.ret = -13;
        (s, a)
    }

    fn exec_event(s: &guard_common::SyscallEvent, a: &guard_common::ExecArgv) -> KernelEvent {
        KernelEvent::Syscall(Box::new(*s), Some(Box::new(*a)))
    }

    #[test]
    fn a_refused_exec_names_its_arguments() {
        let (mut s, mut a) = refused_exec();
        s.hdr.verdict = VERDICT_DENIED;
        s.args = [0x1000, 0x2000, 0x3000, 0, 0, 0];
        for (i, arg) in [&b"id\0"[..], b"-u\0", &[0xff, b'\n', 0]]
            .iter()
            .enumerate()
        {
            a.args[i][..arg.len()].copy_from_slice(arg);
            a.lens[i] = arg.len() as u32;
        }
        a.count = 3;
        let ev = exec_event(&s, &a);
        let r = record_for(&ev, None).unwrap();
        let d = r.detail.unwrap();
        assert_eq!(
            d["args"],
            serde_json::json!(["id", "-u", {"base64": "/wo="}])
        );
        assert_eq!(d["args_truncated"], false);
        assert_eq!(
            d["registers"],
            serde_json::json!([0x1000, 0x2000, 0x3000, 0, 0, 0])
        );
        assert!(d.get("args_unreadable").is_none());
        a.cut = 1 << 1;
        a.flags = guard_common::ARGV_FAULT;
        let ev = exec_event(&s, &a);
        let d = record_for(&ev, None).unwrap().detail.unwrap();
        assert_eq!(
            (
                d["args_truncated"].as_bool(),
                d["args_unreadable"].as_bool()
            ),
            (Some(true), Some(true))
        );
        // A count the kernel cannot have written is bounded, not trusted.
        a.count = 1000;
        let ev = exec_event(&s, &a);
        let d = record_for(&ev, None).unwrap().detail.unwrap();
        assert_eq!(
            d["args"].as_array().unwrap().len(),
            guard_common::EXEC_ARGV_MAX
        );
    }

    #[test]
    fn a_refused_exec_names_only_a_program_the_kernel_identified() {
        let me = std::env::current_exe().unwrap();
        let (dev, ino) = judge::identity(&me).unwrap();
        let (mut s, mut a) = refused_exec();
        // A process (and parent) long gone: no /proc entry to read.
        s.hdr.tgid = 0x3fff_fff0;
        a.flags = guard_common::ARGV_EXE;
        a.exe_dev = dev;
        a.exe_ino = ino;
        let mut m = meta();
        m.launcher_exe = Some(me.as_os_str().as_bytes().to_vec());
        let ev = exec_event(&s, &a);
        let r = record_for(&ev, Some(&m)).unwrap();
        assert_eq!(r.process.unwrap().exe.as_bytes(), me.as_os_str().as_bytes());
        assert!(r.detail.unwrap().get("exe_identity").is_none());
        // Another file: the launcher's program is not named.
        a.exe_ino = ino.wrapping_add(1);
        let ev = exec_event(&s, &a);
        let r = record_for(&ev, Some(&m)).unwrap();
        assert!(r.process.unwrap().exe.is_empty());
        assert_eq!(
            r.detail.unwrap()["exe_identity"]["ino"],
            ino.wrapping_add(1)
        );
    }

    #[test]
    fn listen_records_name_the_port_and_the_listen_rule() {
        let mut m = meta();
        m.rules.push(RuleInfo {
            id: "network.listen[0]".into(),
            text: "127.0.0.1/32 tcp 8000".into(),
        });
        let mut e = NetEvent::default();
        e.hdr.kind = EVENT_NET;
        e.hdr.verdict = VERDICT_DENIED;
        e.hdr.reason = REASON_PORT;
        e.hdr.tgid = 42;
        e.hook = HOOK_BIND6;
        e.family = AF_INET as u8;
        e.protocol = IPPROTO_UDP as u8;
        e.port = 8000;
        e.rule = 1;
        e.rewritten = 1;
        e.orig_family = AF_INET6;
        e.orig_addr = Ipv4Addr::new(127, 0, 0, 1).to_ipv6_mapped().octets();
        e.addr[..4].copy_from_slice(&[127, 0, 0, 1]);
        let r = record_for(&KernelEvent::Net(e), Some(&m)).unwrap();
        assert_eq!(r.action, "bind");
        assert_eq!(r.target.as_str(), Some("127.0.0.1:8000/udp"));
        assert_eq!(r.rule, "network.listen-default-deny");
        assert!(r.process.is_some());
        let d = r.detail.unwrap();
        assert_eq!(d["port"], 8000);
        assert_eq!(d["nearest_rule"], "network.listen[0]");
        assert_eq!(d["requested"], "::ffff:127.0.0.1");
        assert!(d["why"].as_str().unwrap().contains("network.listen[0]"));

        // A packet for a listening socket: no process is named.
        let mut e = NetEvent::default();
        e.hdr.kind = EVENT_NET;
        e.hdr.verdict = VERDICT_DENIED;
        e.hdr.reason = REASON_NO_RULE;
        e.hook = HOOK_INGRESS;
        e.family = AF_INET6 as u8;
        e.protocol = IPPROTO_TCP as u8;
        e.port = 40000;
        e.rule = NO_RULE;
        let r = record_for(&KernelEvent::Net(e), Some(&m)).unwrap();
        assert_eq!(r.action, "listen");
        assert_eq!(r.target.as_str(), Some("[::]:40000/tcp"));
        assert!(r.process.is_none());
        let d = r.detail.unwrap();
        assert_eq!(d["hook"], "cgroup_skb/ingress");
        assert!(d["why"].as_str().unwrap().contains("ephemeral"));
    }

    #[test]
    fn unix_and_unknown_scope() {
        let mut e = UnixEvent::default();
        e.hdr.kind = EVENT_UNIX;
        e.hdr.verdict = VERDICT_AUDIT;
        e.hdr.reason = REASON_NO_RULE;
        e.hook = HOOK_SENDMSG_UNIX;
        e.path[..4].copy_from_slice(b"\0abc");
        e.path_len = 4;
        let r = record_for(&KernelEvent::Unix(e), None).unwrap();
        assert_eq!(r.target.as_str(), Some("@abc"));
        assert_eq!(r.verdict, Verdict::Audit);
        assert!(r.agent.unwrap().id.starts_with("cgroup:"));
        let mut n = NetEvent::default();
        n.hdr.reason = REASON_UNKNOWN_SCOPE;
        n.family = AF_INET6 as u8;
        n.addr[15] = 1;
        n.port = 9;
        n.protocol = IPPROTO_UDP as u8;
        let r = record_for(&KernelEvent::Net(n), None).unwrap();
        assert_eq!(r.rule, "scope.unknown");
        assert_eq!(r.target.as_str(), Some("[::1]:9/udp"));
    }
}
