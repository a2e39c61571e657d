//! The writer thread. The daemon appends from async tasks through a cheap,
//! cloneable [`JournalHandle`]; one dedicated thread owns the SQLite
//! connection and the chain head, so sealing and committing are strictly
//! ordered without locks on the hot path.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TryRecvError, sync_channel};
use std::sync::{Arc, PoisonError, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use serde_json::json;
use tokio::sync::broadcast;

use super::checkpoint::{Checkpoint, CheckpointFile, checkpoint_path, read_checkpoint_file};
use super::hash::{ChainHead, Prepared, Sealed, decode_hash, prepare};
use super::lock::JournalLock;
use super::record::{Kind, Record, Verdict, format_time};
use super::sink::{Mirror, MirrorSink};
use super::store::{Retention, Store, budget_cut, wal_cap};
use super::text::Text;
use super::{JournalError, error_chain};

/// Large enough to absorb bursts (a fork bomb denied by policy) without
/// blocking the daemon; beyond it appenders wait rather than lose records.
/// Records queued for the writer. Bounded so that a flood costs at most a
/// few MiB here (appenders then wait; the kernel's ring buffer absorbs the
/// burst and counts what it cannot hold).
const CHANNEL_CAPACITY: usize = 8_192;
const MAX_BATCH: usize = 4096;
const BATCH_WINDOW: Duration = Duration::from_millis(5);
/// Slots retained for `--follow` subscribers; a slower subscriber sees
/// `Lagged` and catches up from the store with `Filter::after_seq`.
const BROADCAST_CAPACITY: usize = 8192;
/// Retention runs at open and then at this pace, so a busy journal gets one
/// summary record per pass rather than one per batch.
const RETENTION_INTERVAL: Duration = Duration::from_secs(60);
const MAX_RETRY_BACKOFF: Duration = Duration::from_secs(1);
/// Attempts at committing what is left once the journal is closing; while
/// open, the writer retries forever and appenders feel backpressure.
const CLOSE_RETRIES: u32 = 5;
const IDLE_TICK: Duration = Duration::from_secs(1);
/// The disk budget is checked at least this often while records arrive, and
/// whenever a thirty-second of it has been written since the last check.
const BUDGET_CHECK: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalConfig {
    /// The SQLite file; the checkpoint side file sits next to it.
    pub path: PathBuf,
    pub mirror: Vec<MirrorSink>,
    pub checkpoint_every: u64,
    pub checkpoint_interval: Duration,
    pub retention: Retention,
}

impl JournalConfig {
    /// Defaults: no mirror, a checkpoint every 1000 records or 5 s, keep
    /// everything.
    pub fn new(path: impl Into<PathBuf>) -> JournalConfig {
        JournalConfig {
            path: path.into(),
            mirror: Vec::new(),
            checkpoint_every: 1000,
            checkpoint_interval: Duration::from_secs(5),
            retention: Retention::default(),
        }
    }
}

/// Counters for the daemon's metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JournalStats {
    /// Records accepted by [`JournalHandle::append`].
    pub appended: u64,
    /// Of those, how many are committed.
    pub committed: u64,
    /// `appended - committed`: queued or in the batch being written.
    pub pending: u64,
    pub batches: u64,
    pub last_batch_size: u64,
    /// Sealing plus the SQLite transaction of the last batch.
    pub last_commit_latency_us: u64,
    pub commit_errors: u64,
    /// The last commit failed (and is being retried): the journal is not
    /// writable now.
    pub commit_failing: bool,
    pub mirror_errors: u64,
    pub checkpoints: u64,
    pub checkpoint_errors: u64,
    pub retention_removed: u64,
    pub head_seq: u64,
    /// Main file plus WAL at the last budget check (0 without a budget).
    pub store_bytes: u64,
}

#[derive(Default)]
struct Stats {
    appended: AtomicU64,
    committed: AtomicU64,
    batches: AtomicU64,
    last_batch_size: AtomicU64,
    last_commit_latency_us: AtomicU64,
    commit_errors: AtomicU64,
    commit_failing: AtomicBool,
    mirror_errors: AtomicU64,
    checkpoints: AtomicU64,
    checkpoint_errors: AtomicU64,
    retention_removed: AtomicU64,
    head_seq: AtomicU64,
    store_bytes: AtomicU64,
}

enum Msg {
    /// Not boxed: an extra allocation freed on another thread costs more
    /// than the channel's preallocated slots (64 Ki x ~80 bytes).
    Append(Prepared),
    Flush(SyncSender<Result<(), JournalError>>),
    Retention(SyncSender<Result<u64, JournalError>>),
}

struct Shared {
    /// Set first thing in `close`: a writer stuck retrying a commit gives up
    /// after a few attempts instead of looping while the daemon waits.
    closing: AtomicBool,
    /// Set when the writer cannot go on (the store was written by someone
    /// else, or closing gave up): appends fail at once with this reason.
    failed: RwLock<Option<String>>,
    /// `None` once closing. Appenders hold the read lock across `send`, so
    /// close cannot slip between a successful send and the writer's final
    /// drain: every accepted record is committed or reported.
    tx: RwLock<Option<SyncSender<Msg>>>,
    events: broadcast::Sender<Arc<Record>>,
    stats: Stats,
}

/// Cloneable, thread-safe access to a running [`Journal`].
#[derive(Clone)]
pub struct JournalHandle {
    shared: Arc<Shared>,
}

impl JournalHandle {
    /// Queues a record. Here, on the caller's thread, the length caps are
    /// applied, `time` is assigned if empty and the record is serialised;
    /// the writer assigns `seq`, `prev` and `hash`. Returns at once unless
    /// the queue is full, in which case it blocks until there is room: a
    /// journal that drops violations is worse than a slow one.
    pub fn append(&self, rec: Record) -> Result<(), JournalError> {
        self.check_failed()?;
        let prepared = prepare(rec)?;
        // Counted first so `committed` can never overtake `appended`.
        self.shared.stats.appended.fetch_add(1, Relaxed);
        let sent = self.send(Msg::Append(prepared));
        if sent.is_err() {
            self.shared.stats.appended.fetch_sub(1, Relaxed);
        }
        sent
    }

    /// Blocks until every record appended before this call is committed.
    pub fn flush(&self) -> Result<(), JournalError> {
        let (tx, rx) = sync_channel(1);
        self.send(Msg::Flush(tx))?;
        rx.recv().map_err(|_| JournalError::Closed)?
    }

    /// Runs the configured retention now (it also runs at open and every
    /// minute); returns how many records were removed.
    pub fn apply_retention(&self) -> Result<u64, JournalError> {
        let (tx, rx) = sync_channel(1);
        self.send(Msg::Retention(tx))?;
        rx.recv().map_err(|_| JournalError::Closed)?
    }

    /// Every record committed from now on, in seq order.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Record>> {
        self.shared.events.subscribe()
    }

    pub fn stats(&self) -> JournalStats {
        let s = &self.shared.stats;
        let appended = s.appended.load(Relaxed);
        let committed = s.committed.load(Relaxed);
        JournalStats {
            appended,
            committed,
            pending: appended.saturating_sub(committed),
            batches: s.batches.load(Relaxed),
            last_batch_size: s.last_batch_size.load(Relaxed),
            last_commit_latency_us: s.last_commit_latency_us.load(Relaxed),
            commit_errors: s.commit_errors.load(Relaxed),
            commit_failing: s.commit_failing.load(Relaxed),
            mirror_errors: s.mirror_errors.load(Relaxed),
            checkpoints: s.checkpoints.load(Relaxed),
            checkpoint_errors: s.checkpoint_errors.load(Relaxed),
            retention_removed: s.retention_removed.load(Relaxed),
            head_seq: s.head_seq.load(Relaxed),
            store_bytes: s.store_bytes.load(Relaxed),
        }
    }

    /// The daemon is stopping: from now on a commit that keeps failing (a
    /// full disk) is given up after a few attempts instead of retried for
    /// ever, which frees appenders blocked on a full queue, so that SIGTERM
    /// is not held hostage by the disk. What cannot be committed is logged
    /// with its JSON, never dropped silently.
    pub fn begin_close(&self) {
        self.shared.closing.store(true, Relaxed);
    }

    /// Why the writer stopped accepting records, if it did.
    pub fn failure(&self) -> Option<String> {
        self.shared
            .failed
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn check_failed(&self) -> Result<(), JournalError> {
        self.failure()
            .map_or(Ok(()), |reason| Err(JournalError::Failed { reason }))
    }

    fn send(&self, msg: Msg) -> Result<(), JournalError> {
        let guard = self
            .shared
            .tx
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        let tx = guard.as_ref().ok_or(JournalError::Closed)?;
        tx.send(msg).map_err(|_| JournalError::Closed)
    }
}

/// The open journal. Dropping it closes it like [`Journal::close`], but
/// without a way to see errors.
pub struct Journal {
    handle: JournalHandle,
    thread: Option<JoinHandle<Result<(), JournalError>>>,
}

impl Journal {
    /// Opens (or creates) the store, resumes the chain from its newest
    /// record and starts the writer thread.
    pub fn open(cfg: JournalConfig) -> Result<Journal, JournalError> {
        let holder = format!("process {}", std::process::id());
        let lock = JournalLock::acquire(&cfg.path, &holder)?;
        Journal::open_locked(cfg, lock)
    }

    /// [`Journal::open`] with the writer lock already taken (guardd takes it
    /// before anything else, naming itself). The writer thread holds the
    /// lock until its last commit.
    pub fn open_locked(cfg: JournalConfig, lock: JournalLock) -> Result<Journal, JournalError> {
        let store = Store::open(&cfg.path)?;
        store.limit_wal(cfg.retention.max_bytes)?;
        let head = match store.head()? {
            Some(h) => h,
            None => store.retention_anchor()?.unwrap_or_else(ChainHead::genesis),
        };
        if decode_hash(&head.hash).is_none() {
            // Every later hash would be computed over garbage; refuse now
            // rather than fail each batch.
            return Err(JournalError::Corrupt {
                seq: head.seq,
                reason: format!("stored hash {:?} is not 64 hex digits", head.hash),
            });
        }
        let cp_path = checkpoint_path(&cfg.path);
        let last_side = read_checkpoint_file(&cp_path)?.iter().map(|c| c.seq).max();
        if let Some(cp) = last_side
            && cp > head.seq
        {
            tracing::error!(
                head_seq = head.seq,
                checkpoint_seq = cp,
                "journal store ends before its last checkpoint: records were removed; \
                 `verify` will report it"
            );
        }
        let cp_file = CheckpointFile::open(cp_path)?;
        let last_cp_seq = store.last_checkpoint_seq()?.unwrap_or(0);
        let mirror = Mirror::open(&cfg.mirror)?;

        let (tx, rx) = sync_channel(CHANNEL_CAPACITY);
        let (events, _) = broadcast::channel(BROADCAST_CAPACITY);
        let shared = Arc::new(Shared {
            closing: AtomicBool::new(false),
            failed: RwLock::new(None),
            tx: RwLock::new(Some(tx)),
            events,
            stats: Stats::default(),
        });
        shared.stats.head_seq.store(head.seq, Relaxed);
        let now = Instant::now();
        let writer = Writer {
            _lock: lock,
            rx,
            store,
            head,
            mirror,
            cp_file,
            shared: Arc::clone(&shared),
            checkpoint_every: cfg.checkpoint_every,
            checkpoint_interval: cfg.checkpoint_interval,
            retention: cfg.retention,
            pending: Vec::new(),
            flush_waiters: Vec::new(),
            retention_waiters: Vec::new(),
            last_cp_seq,
            last_cp_at: now,
            next_retention: now,
            disconnected: false,
            written_since_check: 0,
            last_budget_check: now,
            pending_bytes: 0,
            // A batch is one transaction: under a small budget it must not
            // overshoot the budget before the next check can act.
            batch_bytes: cfg
                .retention
                .max_bytes
                .map_or(u64::MAX, |b| (b / 64).max(4096)),
        };
        let thread = std::thread::Builder::new()
            .name("guard-journal".into())
            .spawn(move || writer.run())
            .map_err(JournalError::io("spawn journal writer for", &cfg.path))?;
        Ok(Journal {
            handle: JournalHandle { shared },
            thread: Some(thread),
        })
    }

    pub fn handle(&self) -> JournalHandle {
        self.handle.clone()
    }

    /// Commits everything appended so far, writes a final checkpoint and
    /// stops the writer. Appends afterwards fail with `Closed`.
    pub fn close(mut self) -> Result<(), JournalError> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<(), JournalError> {
        let Some(thread) = self.thread.take() else {
            return Ok(());
        };
        // Before taking the sender: appenders blocked on a full queue hold
        // its read lock, and only a writer that stops retrying frees them.
        self.handle.shared.closing.store(true, Relaxed);
        // Dropping the only sender lets the writer drain the queue and then
        // see the disconnect; nothing queued is abandoned.
        drop(
            self.handle
                .shared
                .tx
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .take(),
        );
        thread.join().map_err(|_| JournalError::WriterPanicked)?
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            tracing::error!(error = %error_chain(&e), "closing journal failed");
        }
    }
}

struct Writer {
    /// Released when the writer thread ends, after its last commit.
    _lock: JournalLock,
    rx: Receiver<Msg>,
    store: Store,
    head: ChainHead,
    mirror: Mirror,
    cp_file: CheckpointFile,
    shared: Arc<Shared>,
    checkpoint_every: u64,
    checkpoint_interval: Duration,
    retention: Retention,
    pending: Vec<Prepared>,
    flush_waiters: Vec<SyncSender<Result<(), JournalError>>>,
    retention_waiters: Vec<SyncSender<Result<u64, JournalError>>>,
    last_cp_seq: u64,
    last_cp_at: Instant,
    next_retention: Instant,
    disconnected: bool,
    /// JSON bytes committed since the disk budget was last checked.
    written_since_check: u64,
    last_budget_check: Instant,
    /// Serialised bytes in `pending`, and the most one batch may hold.
    pending_bytes: u64,
    batch_bytes: u64,
}

impl Writer {
    fn run(mut self) -> Result<(), JournalError> {
        while !self.disconnected {
            self.maybe_periodic_retention();
            match self.rx.recv_timeout(self.idle_timeout()) {
                Ok(msg) => self.gather(msg),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => self.disconnected = true,
            }
            if let Err(e) = self.commit_pending() {
                // Closing, or a failure no retry can fix: still vouch for
                // what did get committed, and account for the rest.
                self.maybe_checkpoint(true);
                self.fail(&e);
                return Err(e);
            }
            self.serve_retention_requests();
            self.maybe_enforce_budget();
            self.maybe_checkpoint(false);
        }
        self.maybe_checkpoint(true);
        Ok(())
    }

    /// Makes appends fail at once with `reason`; the first reason stays.
    fn set_failed(&self, reason: String) {
        let mut failed = self
            .shared
            .failed
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if failed.is_none() {
            *failed = Some(reason);
        }
    }

    /// Stops accepting records and says, loudly, which ones were not
    /// committed: the pending batch and everything still queued. Each lost
    /// record's JSON goes to the log so nothing vanishes without a trace.
    fn fail(&mut self, e: &JournalError) {
        let reason = error_chain(e);
        self.set_failed(reason.clone());
        let failed = || JournalError::Failed {
            reason: reason.clone(),
        };
        let mut lost = std::mem::take(&mut self.pending);
        while let Ok(msg) = self.rx.try_recv() {
            match msg {
                Msg::Append(p) => lost.push(p),
                Msg::Flush(reply) => {
                    let _ = reply.send(Err(failed()));
                }
                Msg::Retention(reply) => {
                    let _ = reply.send(Err(failed()));
                }
            }
        }
        self.reply_flush(|| Err(failed()));
        if lost.is_empty() {
            return;
        }
        tracing::error!(
            lost = lost.len(),
            head_seq = self.head.seq,
            error = %reason,
            "journal records could not be committed; their content follows"
        );
        for p in &lost {
            tracing::error!(
                record = %String::from_utf8_lossy(p.body()),
                "uncommitted journal record"
            );
        }
    }

    fn idle_timeout(&self) -> Duration {
        let now = Instant::now();
        let mut timeout = IDLE_TICK;
        if self.head.seq != self.last_cp_seq {
            let due = self.last_cp_at + self.checkpoint_interval;
            timeout = timeout.min(due.saturating_duration_since(now));
        }
        if self.retention.is_enabled() {
            timeout = timeout.min(self.next_retention.saturating_duration_since(now));
        }
        timeout
    }

    /// Collects up to one batch, waiting at most `BATCH_WINDOW` after the
    /// first message; a flush or retention request ends the batch early.
    fn gather(&mut self, first: Msg) {
        let started = Instant::now();
        let mut urgent = self.accept(first);
        while !urgent && self.pending.len() < MAX_BATCH && self.pending_bytes < self.batch_bytes {
            let msg = match self.rx.try_recv() {
                Ok(m) => m,
                Err(TryRecvError::Disconnected) => {
                    self.disconnected = true;
                    break;
                }
                Err(TryRecvError::Empty) => {
                    let left = BATCH_WINDOW.saturating_sub(started.elapsed());
                    if left.is_zero() {
                        break;
                    }
                    match self.rx.recv_timeout(left) {
                        Ok(m) => m,
                        Err(RecvTimeoutError::Timeout) => break,
                        Err(RecvTimeoutError::Disconnected) => {
                            self.disconnected = true;
                            break;
                        }
                    }
                }
            };
            urgent = self.accept(msg);
        }
    }

    /// Returns whether the batch should be committed now.
    fn accept(&mut self, msg: Msg) -> bool {
        match msg {
            Msg::Append(rec) => {
                self.pending_bytes += rec.body().len() as u64;
                self.pending.push(rec);
                false
            }
            Msg::Flush(reply) => {
                self.flush_waiters.push(reply);
                true
            }
            Msg::Retention(reply) => {
                self.retention_waiters.push(reply);
                true
            }
        }
    }

    /// Commits the pending batch, retrying with backoff: records are never
    /// dropped, and while retrying the queue fills and appenders block.
    /// Gives up only when closing.
    fn commit_pending(&mut self) -> Result<(), JournalError> {
        let mut backoff = Duration::from_millis(10);
        let mut attempts = 0;
        loop {
            if self.pending.is_empty() {
                self.reply_flush(|| Ok(()));
                return Ok(());
            }
            let Err(e) = self.commit_once() else {
                self.shared.stats.commit_failing.store(false, Relaxed);
                self.reply_flush(|| Ok(()));
                return Ok(());
            };
            self.shared.stats.commit_failing.store(true, Relaxed);
            let e = Arc::new(e);
            let errors = self.shared.stats.commit_errors.fetch_add(1, Relaxed) + 1;
            tracing::error!(
                error = %error_chain(&*e),
                pending = self.pending.len(),
                errors,
                "journal commit failed; retrying"
            );
            let permanent = is_permanent(&e);
            if permanent {
                // Before anyone waiting hears of the failure, so that what
                // they append next is refused rather than queued.
                self.set_failed(error_chain(&*e));
            }
            self.reply_flush(|| {
                Err(JournalError::Writer {
                    op: "commit",
                    source: Arc::clone(&e),
                })
            });
            attempts += 1;
            if permanent {
                // The store's seqs moved under this writer: another process
                // wrote to it. Retrying would fail forever.
                tracing::error!(
                    head_seq = self.head.seq,
                    "journal store was changed by another writer; refusing to fork the chain"
                );
                return Err(JournalError::Writer {
                    op: "commit (store written by another process)",
                    source: e,
                });
            }
            let closing = self.disconnected || self.shared.closing.load(Relaxed);
            if closing && attempts >= CLOSE_RETRIES {
                tracing::error!(
                    lost = self.pending.len(),
                    "journal closing with records that could not be committed"
                );
                return Err(JournalError::Writer {
                    op: "commit while closing",
                    source: e,
                });
            }
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(MAX_RETRY_BACKOFF);
        }
    }

    fn reply_flush(&mut self, result: impl Fn() -> Result<(), JournalError>) {
        for w in self.flush_waiters.drain(..) {
            // A flusher that gave up waiting is not an error.
            let _ = w.send(result());
        }
    }

    fn commit_once(&mut self) -> Result<(), JournalError> {
        let started = Instant::now();
        let mut head = self.head.clone();
        let mut sealed: Vec<Sealed> = Vec::with_capacity(self.pending.len());
        let mut queue = std::mem::take(&mut self.pending).into_iter();
        self.pending_bytes = 0;
        let mut result = Ok(());
        for prepared in queue.by_ref() {
            match head.seal(&prepared) {
                Ok((seq, json)) => sealed.push(Sealed {
                    seq,
                    json,
                    prepared,
                }),
                Err(e) => {
                    result = Err(e);
                    self.pending.push(prepared);
                    break;
                }
            }
        }
        if result.is_ok() {
            result = self.store.insert_batch(&sealed);
        }
        if let Err(e) = result {
            // Back in order; seq/prev/hash are reassigned on the next attempt.
            let failed = std::mem::take(&mut self.pending);
            self.pending = sealed
                .into_iter()
                .map(|s| s.prepared)
                .chain(failed)
                .chain(queue)
                .collect();
            return Err(e);
        }
        self.head = head;
        let n = sealed.len() as u64;
        self.written_since_check += sealed.iter().map(|s| s.json.len() as u64).sum::<u64>();
        let stats = &self.shared.stats;
        stats.committed.fetch_add(n, Relaxed);
        stats.batches.fetch_add(1, Relaxed);
        stats.last_batch_size.store(n, Relaxed);
        stats.last_commit_latency_us.store(
            u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
            Relaxed,
        );
        stats.head_seq.store(self.head.seq, Relaxed);
        self.publish(&sealed);
        Ok(())
    }

    /// Mirror lines, then live subscribers; both only ever see committed
    /// records.
    fn publish(&mut self, sealed: &[Sealed]) {
        if !self.mirror.is_empty() {
            for e in self
                .mirror
                .write_batch(sealed.iter().map(|s| s.json.as_str()))
            {
                let n = self.shared.stats.mirror_errors.fetch_add(1, Relaxed) + 1;
                // A broken mirror fails every batch; log 1, 2, 4, 8, … times.
                if n.is_power_of_two() {
                    tracing::warn!(error = %error_chain(&e), errors = n, "journal mirror write failed");
                }
            }
        }
        if self.shared.events.receiver_count() > 0 {
            for s in sealed {
                // The writer does not keep records (see `Prepared`), so
                // followers, when there are any, get one parsed back from
                // exactly what was stored.
                match serde_json::from_str::<Record>(&s.json) {
                    Ok(rec) => {
                        // Only fails when the last subscriber left meanwhile.
                        let _ = self.shared.events.send(Arc::new(rec));
                    }
                    Err(e) => {
                        tracing::error!(seq = s.seq, error = %e, "stored record does not parse back");
                    }
                }
            }
        }
    }

    fn maybe_checkpoint(&mut self, force: bool) {
        if self.head.seq == self.last_cp_seq || self.head.seq == 0 {
            return;
        }
        let due = force
            || self.head.seq - self.last_cp_seq >= self.checkpoint_every
            || self.last_cp_at.elapsed() >= self.checkpoint_interval;
        if !due {
            return;
        }
        let cp = Checkpoint {
            seq: self.head.seq,
            hash: self.head.hash.clone(),
            time: format_time(SystemTime::now()),
        };
        // The store first: its commit is fsync'd, so the side file never
        // names a record that is not durable. Then the WAL is copied into
        // the main file, and only then does the side file name the
        // checkpoint: a plain copy of the two files, taken at any moment,
        // finds in the main file every record the side file vouches for
        // (the copy is passive and never waits for readers, so a reader
        // holding the WAL back can still leave it short).
        let result = self.store.insert_checkpoint(&cp).and_then(|()| {
            if let Err(e) = self.store.checkpoint_wal() {
                tracing::warn!(error = %error_chain(&e), "journal WAL checkpoint failed");
            }
            self.cp_file.append(&cp)
        });
        self.last_cp_at = Instant::now();
        match result {
            Ok(()) => {
                self.last_cp_seq = cp.seq;
                // Counted once the copy is done: whoever sees the count (the
                // test of this copy) may take the main file at once.
                self.shared.stats.checkpoints.fetch_add(1, Relaxed);
            }
            Err(e) => {
                self.shared.stats.checkpoint_errors.fetch_add(1, Relaxed);
                tracing::error!(error = %error_chain(&e), seq = cp.seq, "journal checkpoint failed");
            }
        }
    }

    fn maybe_periodic_retention(&mut self) {
        if !self.retention.is_enabled() || Instant::now() < self.next_retention {
            return;
        }
        self.next_retention = Instant::now() + RETENTION_INTERVAL;
        if let Err(e) = self.run_retention() {
            tracing::error!(error = %error_chain(&e), "journal retention failed");
        }
    }

    /// Keeps the store within `retention.max_bytes`: measures it (cheaply:
    /// page counts and the WAL's size) after enough writes, checkpoints a WAL
    /// that readers let grow past its cap, and removes the oldest records
    /// through retention (journaled, chain kept) when the records' pages
    /// pass the high watermark.
    fn maybe_enforce_budget(&mut self) {
        let Some(budget) = self.retention.max_bytes else {
            return;
        };
        if self.written_since_check < budget / 32 && self.last_budget_check.elapsed() < BUDGET_CHECK
        {
            return;
        }
        if self.written_since_check == 0 && self.last_budget_check.elapsed() < BUDGET_CHECK * 10 {
            // Idle: nothing can have grown.
            return;
        }
        self.written_since_check = 0;
        self.last_budget_check = Instant::now();
        let usage = match self.store.usage() {
            Ok(u) => u,
            Err(e) => {
                tracing::error!(error = %error_chain(&e), "measuring the journal failed");
                return;
            }
        };
        self.shared
            .stats
            .store_bytes
            .store(usage.db_file + usage.wal_file, Relaxed);
        if usage.wal_file > 2 * wal_cap(Some(budget))
            && let Err(e) = self.store.checkpoint_wal()
        {
            tracing::warn!(error = %error_chain(&e), "journal WAL checkpoint failed");
        }
        if budget_cut(budget, usage.db_used, 1).is_none() {
            return;
        }
        match self.run_retention() {
            Ok(removed) if removed > 0 => {
                tracing::warn!(
                    removed,
                    budget,
                    "journal disk budget reached: oldest records removed"
                );
            }
            Ok(_) => {}
            Err(e) => tracing::error!(error = %error_chain(&e), "journal budget retention failed"),
        }
    }

    fn serve_retention_requests(&mut self) {
        for reply in std::mem::take(&mut self.retention_waiters) {
            let _ = reply.send(self.run_retention());
        }
    }

    /// Removes what the policy says and appends the summary record.
    fn run_retention(&mut self) -> Result<u64, JournalError> {
        if !self.pending.is_empty() {
            // The summary must follow everything already accepted.
            self.commit_pending()?;
        }
        let Some(plan) = self
            .store
            .plan_retention(&self.retention, SystemTime::now())?
        else {
            return Ok(0);
        };
        let summary = Record::new(
            Kind::Gap,
            "retention",
            Text::from(format!("seq {}..={}", plan.first_seq, plan.last_seq)),
            Verdict::Audit,
            plan.rule,
            "guardd",
        )
        .with_detail(json!({
            "removed": plan.removed,
            "first_seq": plan.first_seq,
            "last_seq": plan.last_seq,
            "by_kind": plan.by_kind,
            "total_removed": plan.total_removed,
            "total_by_kind": plan.total_by_kind,
            "max_bytes": self.retention.max_bytes,
        }));
        let prepared = prepare(summary)?;
        let mut head = self.head.clone();
        let (seq, json) = head.seal(&prepared)?;
        let sealed = Sealed {
            seq,
            json,
            prepared,
        };
        self.store.execute_retention(&plan, &sealed)?;
        self.head = head;
        let stats = &self.shared.stats;
        stats.retention_removed.fetch_add(plan.removed, Relaxed);
        stats.head_seq.store(self.head.seq, Relaxed);
        tracing::info!(
            removed = plan.removed,
            first_seq = plan.first_seq,
            last_seq = plan.last_seq,
            "journal retention removed old records"
        );
        self.publish(std::slice::from_ref(&sealed));
        Ok(plan.removed)
    }
}

/// Whether a commit error can never succeed on retry: a constraint
/// violation means the seqs this writer assigns are already taken.
fn is_permanent(e: &JournalError) -> bool {
    matches!(
        e,
        JournalError::Sqlite {
            source: rusqlite::Error::SqliteFailure(f, _),
            ..
        } if f.code == rusqlite::ErrorCode::ConstraintViolation
    )
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::journal::hash::GENESIS_HASH;
    use crate::journal::query::Filter;
    use crate::journal::record::{AgentRef, ProcessRef};
    use crate::journal::text::TARGET_CAP;
    use crate::journal::verify::verify;

    pub(crate) fn event(i: u64) -> Record {
        Record::new(
            if i.is_multiple_of(2) {
                Kind::Network
            } else {
                Kind::File
            },
            "connect",
            format!("10.0.0.{i}:443/tcp"),
            Verdict::Denied,
            "network.default-deny",
            "cgroup-bpf",
        )
        .with_agent(AgentRef {
            id: format!("id{}", i % 3),
            name: format!("agent{}", i % 3),
            policy: "default".into(),
            container: None,
        })
        .with_process(ProcessRef {
            pid: 100 + i as u32,
            comm: Text::from("curl"),
            exe: Text::from("/usr/bin/curl"),
        })
    }

    /// A journal with `n` records, closed, at `<dir>/j.db`.
    pub(crate) fn journal_with(n: u64) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.db");
        let journal = Journal::open(JournalConfig::new(&path)).unwrap();
        let h = journal.handle();
        for i in 0..n {
            h.append(event(i)).unwrap();
        }
        journal.close().unwrap();
        (dir, path)
    }

    #[test]
    fn appends_are_sealed_chained_and_queryable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.db");
        let journal = Journal::open(JournalConfig::new(&path)).unwrap();
        let h = journal.handle();
        for i in 0..10 {
            h.append(event(i)).unwrap();
        }
        h.flush().unwrap();
        let store = Store::open_existing(&path).unwrap();
        let recs = store.query(&Filter::default()).unwrap();
        assert_eq!(recs.len(), 10);
        let mut prev = GENESIS_HASH.to_owned();
        for (i, r) in recs.iter().enumerate() {
            assert_eq!(r.seq, i as u64 + 1);
            assert_eq!(r.prev, prev);
            assert_eq!(r.time.len(), "2026-11-22T03:04:05.123456Z".len());
            assert!(r.time.ends_with('Z'));
            prev.clone_from(&r.hash);
        }
        let stats = h.stats();
        assert_eq!(
            (stats.appended, stats.committed, stats.pending),
            (10, 10, 0)
        );
        assert_eq!(stats.head_seq, 10);
        journal.close().unwrap();
        assert!(matches!(h.append(event(0)), Err(JournalError::Closed)));
        assert!(matches!(h.flush(), Err(JournalError::Closed)));
        assert_eq!(h.stats().appended, 10);
    }

    #[test]
    fn reopening_resumes_the_chain() {
        let (_dir, path) = journal_with(5);
        let journal = Journal::open(JournalConfig::new(&path)).unwrap();
        assert_eq!(journal.handle().stats().head_seq, 5);
        journal.handle().append(event(5)).unwrap();
        journal.close().unwrap();
        let store = Store::open_existing(&path).unwrap();
        let six = store.get(6).unwrap().unwrap();
        assert_eq!(six.prev, store.get(5).unwrap().unwrap().hash);
        let report = verify(&path).unwrap();
        assert!(report.ok, "{report:?}");
        assert_eq!((report.records, report.head_seq), (6, 6));
    }

    #[test]
    fn caller_time_is_kept_and_bad_time_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.db");
        let journal = Journal::open(JournalConfig::new(&path)).unwrap();
        let h = journal.handle();
        let mut a = event(1);
        a.time = "2026-11-22T03:04:05Z".into();
        let mut b = event(2);
        b.time = "last tuesday\u{1b}".into();
        h.append(a).unwrap();
        h.append(b).unwrap();
        journal.close().unwrap();
        let store = Store::open_existing(&path).unwrap();
        assert_eq!(
            store.get(1).unwrap().unwrap().time,
            "2026-11-22T03:04:05.000000Z"
        );
        assert!(store.get(2).unwrap().unwrap().timestamp().is_some());
        assert!(verify(&path).unwrap().ok);
    }

    #[test]
    fn oversized_fields_are_capped_and_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.db");
        let journal = Journal::open(JournalConfig::new(&path)).unwrap();
        let mut r = event(0);
        r.target = Text::new(vec![b'A'; TARGET_CAP * 3]);
        journal.handle().append(r).unwrap();
        journal.close().unwrap();
        let r = Store::open_existing(&path)
            .unwrap()
            .get(1)
            .unwrap()
            .unwrap();
        assert_eq!(r.target.len(), TARGET_CAP);
        assert_eq!(r.truncated, vec!["target"]);
    }

    #[test]
    fn subscribers_see_committed_records_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(JournalConfig::new(dir.path().join("j.db"))).unwrap();
        let h = journal.handle();
        let mut rx = h.subscribe();
        for i in 0..20 {
            h.append(event(i)).unwrap();
        }
        h.flush().unwrap();
        for seq in 1..=20 {
            let r = rx.try_recv().unwrap();
            assert_eq!(r.seq, seq);
            assert!(!r.hash.is_empty());
        }
        assert!(rx.try_recv().is_err());
        journal.close().unwrap();
    }

    #[test]
    fn mirror_lines_are_the_stored_json() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.db");
        let mirror = dir.path().join("j.jsonl");
        let mut cfg = JournalConfig::new(&path);
        cfg.mirror = vec![MirrorSink::File {
            path: mirror.clone(),
            max_bytes: 1 << 20,
            keep: 2,
        }];
        let journal = Journal::open(cfg).unwrap();
        let mut weird = event(0);
        weird.target = Text::new(b"a\nb\x1b[31mc\xff".to_vec());
        journal.handle().append(weird).unwrap();
        journal.handle().append(event(1)).unwrap();
        journal.close().unwrap();
        let text = std::fs::read_to_string(&mirror).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        let store = Store::open_existing(&path).unwrap();
        for (i, line) in lines.iter().enumerate() {
            let json: String = store
                .conn()
                .query_row(
                    "SELECT json FROM records WHERE seq = ?1",
                    [i as i64 + 1],
                    |r| r.get(0),
                )
                .unwrap();
            assert_eq!(*line, json);
        }
        let first: Record = serde_json::from_str(lines[0]).unwrap();
        assert_eq!(first.target.as_bytes(), b"a\nb\x1b[31mc\xff");
    }

    /// Waits (up to 10 s) until the writer has taken a checkpoint.
    fn wait_for_first_checkpoint(h: &JournalHandle) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while h.stats().checkpoints == 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn checkpoints_by_count_on_close_and_by_interval() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.db");
        let mut cfg = JournalConfig::new(&path);
        cfg.checkpoint_every = 3;
        cfg.checkpoint_interval = Duration::from_secs(3600);
        let journal = Journal::open(cfg.clone()).unwrap();
        let h = journal.handle();
        for i in 0..7 {
            h.append(event(i)).unwrap();
            h.flush().unwrap();
        }
        journal.close().unwrap();
        let side: Vec<u64> = read_checkpoint_file(&checkpoint_path(&path))
            .unwrap()
            .iter()
            .map(|c| c.seq)
            .collect();
        // Every 3 records, then the close.
        assert_eq!(side, vec![3, 6, 7]);
        let table: Vec<u64> = Store::open_existing(&path)
            .unwrap()
            .checkpoints()
            .unwrap()
            .iter()
            .map(|c| c.seq)
            .collect();
        assert_eq!(table, side);

        cfg.checkpoint_every = u64::MAX;
        cfg.checkpoint_interval = Duration::from_millis(20);
        let journal = Journal::open(cfg).unwrap();
        let h = journal.handle();
        h.append(event(8)).unwrap();
        h.flush().unwrap();
        wait_for_first_checkpoint(&h);
        assert_eq!(h.stats().checkpoints, 1);
        // Nothing changed since, so no more checkpoints, not even on close.
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(h.stats().checkpoints, 1);
        journal.close().unwrap();
        assert_eq!(h.stats().checkpoints, 1);
        let side = read_checkpoint_file(&checkpoint_path(&path)).unwrap();
        assert_eq!(side.last().unwrap().seq, 8);
    }

    #[test]
    fn concurrent_appenders_lose_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.db");
        let journal = Journal::open(JournalConfig::new(&path)).unwrap();
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let h = journal.handle();
                std::thread::spawn(move || {
                    for i in 0..2500 {
                        h.append(event(t * 10_000 + i)).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        journal.close().unwrap();
        let store = Store::open_existing(&path).unwrap();
        assert_eq!(store.count().unwrap(), 10_000);
        assert_eq!(store.head().unwrap().unwrap().seq, 10_000);
        assert!(verify(&path).unwrap().ok);
    }

    #[test]
    fn dropping_the_journal_still_commits() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.db");
        {
            let journal = Journal::open(JournalConfig::new(&path)).unwrap();
            journal.handle().append(event(0)).unwrap();
        }
        assert_eq!(Store::open_existing(&path).unwrap().count().unwrap(), 1);
        let side = read_checkpoint_file(&checkpoint_path(&path)).unwrap();
        assert_eq!(side.len(), 1);
    }

    #[test]
    fn retention_by_count_summarises_and_still_verifies() {
        let (_dir, path) = journal_with(50);
        let mut cfg = JournalConfig::new(&path);
        cfg.retention = Retention {
            max_records: Some(20),
            max_age: None,
            max_bytes: None,
        };
        // Retention runs as the journal opens.
        let journal = Journal::open(cfg).unwrap();
        let h = journal.handle();
        h.flush().unwrap();
        assert_eq!(h.stats().retention_removed, 31);
        // Within the limit: nothing more to do.
        assert_eq!(h.apply_retention().unwrap(), 0);
        h.append(event(99)).unwrap();
        journal.close().unwrap();

        let store = Store::open_existing(&path).unwrap();
        assert_eq!(store.count().unwrap(), 21);
        let gap = store
            .query(&Filter {
                kind: Some(Kind::Gap),
                ..Filter::default()
            })
            .unwrap();
        assert_eq!(gap.len(), 1);
        let g = &gap[0];
        assert_eq!((g.seq, g.action.as_str()), (51, "retention"));
        let d = g.detail.as_ref().unwrap();
        assert_eq!(d["removed"], 31);
        assert_eq!(d["first_seq"], 1);
        assert_eq!(d["last_seq"], 31);
        assert_eq!(d["by_kind"]["network"], 16);
        assert_eq!(d["by_kind"]["file"], 15);
        assert_eq!(d["total_removed"], 31, "the first pass: totals are its own");
        assert_eq!(d["total_by_kind"], d["by_kind"]);
        assert_eq!(
            store.retention_anchor().unwrap().unwrap().seq,
            31,
            "anchor is the last removed record"
        );
        let report = verify(&path).unwrap();
        assert!(report.ok, "{report:?}");
        assert_eq!((report.records, report.head_seq), (21, 52));
    }

    #[test]
    fn a_disk_budget_holds_and_totals_add_up_across_passes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.db");
        let budget = 1u64 << 20;
        let mut cfg = JournalConfig::new(&path);
        cfg.retention.max_bytes = Some(budget);
        let journal = Journal::open(cfg).unwrap();
        let h = journal.handle();
        let n = 20_000;
        for i in 0..n {
            h.append(event(i)).unwrap();
        }
        journal.close().unwrap();
        let store = Store::open_existing(&path).unwrap();
        let usage = store.usage().unwrap();
        assert!(
            usage.db_file + usage.wal_file <= budget,
            "{usage:?} over {budget}"
        );
        let recs = store.query(&Filter::default()).unwrap();
        let summaries: Vec<&Record> = recs
            .iter()
            .filter(|r| r.kind == Kind::Gap && r.action == "retention")
            .collect();
        assert!(!summaries.is_empty());
        let last = summaries.last().unwrap().detail.as_ref().unwrap();
        assert_eq!(last["max_bytes"], budget);
        let kept = |k: Kind| recs.iter().filter(|r| r.kind == k).count() as u64;
        let removed = |k: &str| last["total_by_kind"][k].as_u64().unwrap_or(0);
        // Every appended event is either kept or counted in the totals of
        // the newest summary, however many passes removed earlier ones.
        assert_eq!(
            kept(Kind::Network) + removed("network") + kept(Kind::File) + removed("file"),
            n
        );
        assert!(summaries.len() < 10 || removed("gap") > 0);
        assert!(verify(&path).unwrap().ok);
    }

    #[test]
    fn retention_by_age_can_empty_the_store_and_chain_continues() {
        let (_dir, path) = journal_with(5);
        let mut cfg = JournalConfig::new(&path);
        cfg.retention = Retention {
            max_records: None,
            max_age: Some(Duration::ZERO),
            max_bytes: None,
        };
        let journal = Journal::open(cfg).unwrap();
        let h = journal.handle();
        h.flush().unwrap();
        h.append(event(7)).unwrap();
        journal.close().unwrap();
        let store = Store::open_existing(&path).unwrap();
        let recs = store.query(&Filter::default()).unwrap();
        let seqs: Vec<u64> = recs.iter().map(|r| r.seq).collect();
        assert_eq!(seqs, vec![6, 7]);
        assert_eq!(recs[0].kind, Kind::Gap);
        assert!(verify(&path).unwrap().ok);
    }

    #[test]
    fn handles_can_be_shared_across_threads() {
        fn shareable<T: Clone + Send + Sync + 'static>() {}
        fn sendable<T: Send + 'static>() {}
        shareable::<JournalHandle>();
        sendable::<Journal>();
        sendable::<JournalError>();
    }

    #[test]
    fn verify_sees_one_snapshot_while_the_writer_runs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.db");
        let mut cfg = JournalConfig::new(&path);
        cfg.checkpoint_every = 50;
        let journal = Journal::open(cfg).unwrap();
        let h = journal.handle();
        let writer = std::thread::spawn(move || {
            for i in 0..3000 {
                h.append(event(i)).unwrap();
            }
        });
        for _ in 0..5 {
            let report = verify(&path).unwrap();
            assert!(report.ok, "{report:?}");
        }
        writer.join().unwrap();
        journal.close().unwrap();
        assert_eq!(verify(&path).unwrap().records, 3000);
    }

    #[test]
    fn a_second_writer_on_the_same_store_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.db");
        let first = Journal::open(JournalConfig::new(&path)).unwrap();
        first.handle().append(event(0)).unwrap();
        let err = Journal::open(JournalConfig::new(&path)).err().unwrap();
        assert!(matches!(err, JournalError::Locked { .. }), "{err}");
        assert!(
            err.to_string()
                .contains(&format!("process {}", std::process::id())),
            "{err}"
        );
        first.close().unwrap();
        // Released with the writer: the next one opens and continues.
        let second = Journal::open(JournalConfig::new(&path)).unwrap();
        second.handle().append(event(1)).unwrap();
        second.close().unwrap();
        let report = verify(&path).unwrap();
        assert!(report.ok, "{report:?}");
        assert_eq!(report.records, 2);
    }

    /// A running journal with one committed record, whose store another
    /// connection then changes with `sql` behind the writer's back.
    fn running_then_changed(sql: &str) -> (tempfile::TempDir, Journal) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.db");
        let journal = Journal::open(JournalConfig::new(&path)).unwrap();
        let h = journal.handle();
        h.append(event(0)).unwrap();
        h.flush().unwrap();
        rusqlite::Connection::open(&path)
            .unwrap()
            .execute_batch(sql)
            .unwrap();
        (dir, journal)
    }

    #[test]
    fn a_store_written_behind_the_writers_back_stops_it_without_looping() {
        // Another process takes seq 2 (bypassing the lock).
        let (_dir, journal) =
            running_then_changed("INSERT INTO records(seq, json, hash) VALUES (2, '{}', 'x')");
        let h = journal.handle();
        h.append(event(1)).unwrap();
        let started = Instant::now();
        let flushed = h.flush();
        assert!(flushed.is_err(), "{flushed:?}");
        // Refused at once from now on, not queued behind a retry loop.
        let err = h.append(event(2)).unwrap_err();
        assert!(matches!(err, JournalError::Failed { .. }), "{err}");
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(journal.close().is_err());
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn a_closing_writer_gives_up_retrying_and_frees_blocked_appenders() {
        // Every commit fails from now on, but not in a way a retry could
        // rule out (as a full disk would).
        let (_dir, journal) = running_then_changed("DROP TABLE records");
        let h = journal.handle();
        let appender = {
            let h = h.clone();
            std::thread::spawn(move || {
                // Beyond the queue's capacity: these block once it is full.
                (0..CHANNEL_CAPACITY as u64 * 2)
                    .map(|i| h.append(event(i)).is_ok())
                    .filter(|ok| *ok)
                    .count()
            })
        };
        std::thread::sleep(Duration::from_millis(300));
        let started = Instant::now();
        let closed = journal.close();
        assert!(closed.is_err(), "{closed:?}");
        let accepted = appender.join().unwrap();
        assert!(accepted < CHANNEL_CAPACITY * 2, "{accepted}");
        // A few attempts with at most a second between them.
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "{:?}",
            started.elapsed()
        );
        assert!(matches!(
            h.append(event(0)),
            Err(JournalError::Failed { .. } | JournalError::Closed)
        ));
    }

    #[test]
    fn checkpoints_copy_the_wal_into_the_main_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.db");
        let mut cfg = JournalConfig::new(&path);
        cfg.checkpoint_every = 100;
        let journal = Journal::open(cfg).unwrap();
        let h = journal.handle();
        for i in 0..100 {
            h.append(event(i)).unwrap();
        }
        h.flush().unwrap();
        wait_for_first_checkpoint(&h);
        // Only the main file and the side file, as a plain `cp` would take
        // them while guardd runs.
        let copy = dir.path().join("copy.db");
        std::fs::copy(&path, &copy).unwrap();
        std::fs::copy(checkpoint_path(&path), checkpoint_path(&copy)).unwrap();
        let report = verify(&copy).unwrap();
        assert!(report.ok, "{report:?}");
        assert_eq!(report.records, 100);
        journal.close().unwrap();
    }
}
