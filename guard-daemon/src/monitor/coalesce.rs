//! Coalescing of repeated identical refusals (issue 7 §4).
//!
//! One agent looping on a refused call makes about 100,000 refusals a
//! second; journaling each in full grows the store by about 37 MB a second.
//! Identical refusals are therefore folded, the way KubeArmor throttles
//! alerts and auditd rate-limits: the first refusal of a kind is journaled
//! at once and in full; repeats within the interval are counted, and at the
//! end of the interval one record stands for all of them. Nothing is dropped
//! unaccounted: every record stands for `1 + detail.repeated` refusals.
//!
//! - The key is (agent id, kind, action, target, verdict, rule, layer). The
//!   pid is deliberately not in it: a fork loop, where every child refuses
//!   once, must fold too. Which processes took part is kept in the summary
//!   (`detail.pids`, the distinct pids, at most [`PIDS_CAP`]).
//! - A summary is the newest refusal of its interval (its own process, time
//!   and detail) with `detail.repeated` = how many identical refusals it also
//!   stands for and `detail.first_time` = when the first of them happened.
//! - A refusal with a different key is never held back, so a flood cannot
//!   delay or hide a distinct violation.
//! - A key whose interval ends without repeats is forgotten; its next
//!   refusal is journaled in full again.
//! - The table is bounded: when it is full, the oldest key is flushed (its
//!   count journaled) to make room. Counts are never dropped.
//! - The owner flushes an agent's keys when its scope closes and every key
//!   at shutdown, so totals add up exactly before the exit record.
//!
//! Pure logic with injected time, so it is tested without privileges.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hash, Hasher, RandomState};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use serde_json::{Map, Value, json};

use crate::journal::{JournalHandle, Kind, Record, Text, Verdict, format_time};

/// One summary per key per second bounds a single-target flood to about
/// one record a second.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);
/// Distinct keys held at once. A held key costs about one record (~1 KiB),
/// so the table stays within a few MiB of guardd's memory budget.
pub const DEFAULT_CAPACITY: usize = 2048;
/// Distinct pids listed in a summary.
pub const PIDS_CAP: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CoalesceConfig {
    /// Zero disables coalescing: every refusal is journaled in full.
    pub interval: Duration,
    /// Most keys tracked at once (at least 1 when enabled).
    pub capacity: usize,
}

impl Default for CoalesceConfig {
    fn default() -> Self {
        CoalesceConfig {
            interval: DEFAULT_INTERVAL,
            capacity: DEFAULT_CAPACITY,
        }
    }
}

/// A moment: monotonic for the intervals (immune to clock steps), wall
/// clock for the records' times.
#[derive(Debug, Clone, Copy)]
pub struct Stamp {
    pub mono: Instant,
    pub wall: SystemTime,
}

#[derive(Debug, PartialEq, Eq)]
struct Key {
    agent: String,
    kind: Kind,
    action: String,
    target: Text,
    verdict: Verdict,
    rule: String,
    layer: String,
}

impl Key {
    fn of(r: &Record) -> Key {
        Key {
            agent: agent_id(r).to_owned(),
            kind: r.kind,
            action: r.action.clone(),
            target: r.target.clone(),
            verdict: r.verdict,
            rule: r.rule.clone(),
            layer: r.layer.clone(),
        }
    }

    fn matches(&self, r: &Record) -> bool {
        self.kind == r.kind
            && self.verdict == r.verdict
            && self.agent == agent_id(r)
            && self.target == r.target
            && self.action == r.action
            && self.rule == r.rule
            && self.layer == r.layer
    }
}

fn agent_id(r: &Record) -> &str {
    r.agent.as_ref().map_or("", |a| a.id.as_str())
}

/// Repeats held during the current interval of one key.
struct Held {
    /// The newest repeat; it becomes the summary.
    rec: Record,
    /// Repeats in this interval, `rec` included.
    count: u64,
    first_wall: SystemTime,
    /// When `rec` happened; formatted only for the summary, not per repeat.
    last_wall: SystemTime,
    pids: Vec<u32>,
    pids_truncated: bool,
}

impl Held {
    fn new(rec: Record, wall: SystemTime) -> Held {
        let pids = rec
            .process
            .as_ref()
            .map(|p| vec![p.pid])
            .unwrap_or_default();
        Held {
            rec,
            count: 1,
            first_wall: wall,
            last_wall: wall,
            pids,
            pids_truncated: false,
        }
    }

    fn add(&mut self, rec: Record, wall: SystemTime) {
        if let Some(p) = &rec.process
            && !self.pids.contains(&p.pid)
        {
            if self.pids.len() < PIDS_CAP {
                self.pids.push(p.pid);
            } else {
                self.pids_truncated = true;
            }
        }
        self.rec = rec;
        self.last_wall = wall;
        self.count += 1;
    }

    /// The record standing for every repeat of the interval.
    fn into_summary(self) -> Record {
        let mut rec = self.rec;
        rec.time = format_time(self.last_wall);
        let mut detail = match rec.detail.take() {
            Some(Value::Object(m)) => m,
            Some(other) => {
                let mut m = Map::new();
                m.insert("original".into(), other);
                m
            }
            None => Map::new(),
        };
        detail.insert("repeated".into(), json!(self.count - 1));
        detail.insert("first_time".into(), json!(format_time(self.first_wall)));
        detail.insert("pids".into(), json!(self.pids));
        if self.pids_truncated {
            detail.insert("pids_truncated".into(), json!(true));
        }
        rec.detail = Some(Value::Object(detail));
        rec
    }
}

struct Entry {
    key: Key,
    /// Distinguishes this entry from an earlier one with the same hash in
    /// the insertion queue.
    generation: u64,
    window_end: Instant,
    held: Option<Held>,
}

/// The coalescing table. Callers pass an output vector that receives, in
/// order, the records to journal now.
pub struct Coalescer {
    cfg: CoalesceConfig,
    hasher: RandomState,
    /// By key hash. A second key with the same 64-bit hash is simply not
    /// coalesced (journaled in full), which is always safe.
    table: HashMap<u64, Entry>,
    /// (hash, generation) in insertion order, for evicting the oldest key in
    /// O(1); entries that left the table are skipped lazily.
    order: VecDeque<(u64, u64)>,
    next_generation: u64,
    /// No window ends before this.
    next_due: Option<Instant>,
    /// Refusals folded into a summary instead of journaled on their own.
    folded: u64,
}

impl Coalescer {
    pub fn new(cfg: CoalesceConfig) -> Coalescer {
        Coalescer {
            cfg,
            hasher: RandomState::new(),
            table: HashMap::new(),
            order: VecDeque::new(),
            next_generation: 0,
            next_due: None,
            folded: 0,
        }
    }

    pub fn enabled(&self) -> bool {
        !self.cfg.interval.is_zero() && self.cfg.capacity > 0
    }

    /// Keys currently tracked.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// Refusals folded into summaries so far (each is also counted in the
    /// `repeated` of a summary already journaled or still held).
    pub fn folded(&self) -> u64 {
        self.folded
    }

    fn hash(&self, r: &Record) -> u64 {
        let mut h = self.hasher.build_hasher();
        agent_id(r).hash(&mut h);
        r.kind.hash(&mut h);
        r.action.hash(&mut h);
        r.target.hash(&mut h);
        r.verdict.hash(&mut h);
        r.rule.hash(&mut h);
        r.layer.hash(&mut h);
        h.finish()
    }

    /// Takes one record: appends to `out` what must be journaled now (the
    /// record itself when it is the first of its key, possibly preceded by a
    /// summary that had to be flushed). Allowed events and records without
    /// an agent are never held.
    pub fn offer(&mut self, rec: Record, now: Stamp, out: &mut Vec<Record>) {
        if !self.enabled() || rec.verdict == Verdict::Allowed || rec.agent.is_none() {
            out.push(rec);
            return;
        }
        let interval = self.cfg.interval;
        let h = self.hash(&rec);
        if let Some(e) = self.table.get_mut(&h) {
            if !e.key.matches(&rec) {
                out.push(rec);
                return;
            }
            if now.mono >= e.window_end {
                // The interval ended and `due` has not run yet.
                e.window_end = now.mono + interval;
                self.next_due = Some(self.next_due.map_or(e.window_end, |d| d.min(e.window_end)));
                match e.held.take() {
                    Some(held) => out.push(held.into_summary()),
                    None => {
                        // A quiet interval: this is a fresh occurrence.
                        out.push(rec);
                        return;
                    }
                }
            }
            match &mut e.held {
                Some(held) => held.add(rec, now.wall),
                None => e.held = Some(Held::new(rec, now.wall)),
            }
            self.folded += 1;
            return;
        }
        if self.table.len() >= self.cfg.capacity {
            self.evict_oldest(out);
        }
        let generation = self.next_generation;
        self.next_generation += 1;
        let window_end = now.mono + interval;
        self.table.insert(
            h,
            Entry {
                key: Key::of(&rec),
                generation,
                window_end,
                held: None,
            },
        );
        self.order.push_back((h, generation));
        self.compact_order();
        self.next_due = Some(self.next_due.map_or(window_end, |d| d.min(window_end)));
        out.push(rec);
    }

    /// Summaries of every interval that has ended; keys with a quiet
    /// interval are forgotten. Cheap when nothing is due.
    pub fn due(&mut self, now: Instant, out: &mut Vec<Record>) {
        if self.next_due.is_none_or(|d| now < d) {
            return;
        }
        let interval = self.cfg.interval;
        let mut summaries = Vec::new();
        let mut next: Option<Instant> = None;
        self.table.retain(|_, e| {
            if now >= e.window_end {
                match e.held.take() {
                    Some(held) => {
                        summaries.push(held.into_summary());
                        // Keep counting: a flood yields one record per interval.
                        e.window_end = now + interval;
                    }
                    None => return false,
                }
            }
            next = Some(next.map_or(e.window_end, |d| d.min(e.window_end)));
            true
        });
        self.next_due = next;
        push_in_time_order(summaries, out);
    }

    /// Flushes and forgets every key of one agent (its scope is closing).
    pub fn flush_agent(&mut self, agent: &str, out: &mut Vec<Record>) {
        let mut summaries = Vec::new();
        self.table.retain(|_, e| {
            if e.key.agent != agent {
                return true;
            }
            if let Some(held) = e.held.take() {
                summaries.push(held.into_summary());
            }
            false
        });
        push_in_time_order(summaries, out);
    }

    /// Flushes and forgets every key (shutdown).
    pub fn flush_all(&mut self, out: &mut Vec<Record>) {
        let summaries = self
            .table
            .drain()
            .filter_map(|(_, e)| e.held.map(Held::into_summary))
            .collect();
        self.order.clear();
        self.next_due = None;
        push_in_time_order(summaries, out);
    }

    fn evict_oldest(&mut self, out: &mut Vec<Record>) {
        while let Some((h, generation)) = self.order.pop_front() {
            if self
                .table
                .get(&h)
                .is_some_and(|e| e.generation == generation)
            {
                if let Some(held) = self.table.remove(&h).and_then(|e| e.held) {
                    out.push(held.into_summary());
                }
                return;
            }
        }
    }

    /// Drops queue items whose entries have left the table, so the queue
    /// stays proportional to the table.
    fn compact_order(&mut self) {
        if self.order.len() > 2 * self.cfg.capacity.max(16) {
            let table = &self.table;
            self.order
                .retain(|(h, g)| table.get(h).is_some_and(|e| e.generation == *g));
        }
    }
}

fn push_in_time_order(mut summaries: Vec<Record>, out: &mut Vec<Record>) {
    // RFC 3339 UTC with fixed-width microseconds sorts as text.
    summaries.sort_by(|a, b| a.time.cmp(&b.time));
    out.append(&mut summaries);
}

/// Appends records to the journal, logging failures (the monitor has no one
/// to return them to).
pub fn append_all(journal: &JournalHandle, out: &mut Vec<Record>) {
    for rec in out.drain(..) {
        if let Err(e) = journal.append(rec) {
            tracing::error!("journal append failed: {e}");
        }
    }
}

/// Journals `rec` now or folds it into a later summary; returns whether it
/// was folded. `wall` is the record's own time, so a summary's first and
/// last times are those of the refusals. The lock is held across the
/// append so that a scope's final flush ([`flush_agent`]) cannot overtake
/// a record of that scope. `out` is a reusable buffer.
pub fn put(
    coalescer: &Mutex<Coalescer>,
    journal: &JournalHandle,
    rec: Record,
    wall: SystemTime,
    out: &mut Vec<Record>,
) -> bool {
    let mut c = coalescer
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if !c.enabled() {
        drop(c);
        if let Err(e) = journal.append(rec) {
            tracing::error!("journal append failed: {e}");
        }
        return false;
    }
    let before = c.folded();
    let stamp = Stamp {
        mono: Instant::now(),
        wall,
    };
    c.offer(rec, stamp, out);
    append_all(journal, out);
    c.folded() != before
}

/// Journals the held counts of one agent; called when its scope closes,
/// after the monitor has taken every event the kernel wrote for it and
/// before its exit record.
pub fn flush_agent(coalescer: &Mutex<Coalescer>, agent: &str, journal: &JournalHandle) {
    let mut out = Vec::new();
    // The lock is held across the appends so that a record the monitor is
    // appending for this agent cannot be overtaken.
    let mut c = coalescer
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    c.flush_agent(agent, &mut out);
    append_all(journal, &mut out);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::{AgentRef, ProcessRef};

    fn refusal(agent: &str, target: &str, pid: u32) -> Record {
        Record::new(
            Kind::Network,
            "sendmsg",
            target.to_owned(),
            Verdict::Denied,
            "network.default-deny",
            "cgroup-bpf",
        )
        .with_agent(AgentRef {
            id: agent.into(),
            name: agent.into(),
            policy: "p".into(),
            container: None,
        })
        .with_process(ProcessRef {
            pid,
            comm: Text::from("python3"),
            exe: Text::from("/usr/bin/python3"),
        })
        .with_detail(json!({"hook": "sendmsg4"}))
    }

    struct Clock {
        t0: Instant,
        w0: SystemTime,
    }

    impl Clock {
        fn new() -> Clock {
            Clock {
                t0: Instant::now(),
                w0: SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000),
            }
        }
        fn at(&self, ms: u64) -> Stamp {
            let d = Duration::from_millis(ms);
            Stamp {
                mono: self.t0 + d,
                wall: self.w0 + d,
            }
        }
    }

    fn repeated(r: &Record) -> u64 {
        r.detail
            .as_ref()
            .and_then(|d| d.get("repeated"))
            .and_then(Value::as_u64)
            .unwrap_or(0)
    }

    fn total(recs: &[Record]) -> u64 {
        recs.iter().map(|r| 1 + repeated(r)).sum()
    }

    fn cfg(capacity: usize) -> CoalesceConfig {
        CoalesceConfig {
            interval: Duration::from_secs(1),
            capacity,
        }
    }

    #[test]
    fn first_is_immediate_repeats_are_counted_and_summarised_per_interval() {
        let clk = Clock::new();
        let mut c = Coalescer::new(cfg(16));
        let mut out = Vec::new();
        c.offer(refusal("a", "10.0.0.1:53/udp", 7), clk.at(0), &mut out);
        assert_eq!(out.len(), 1, "the first refusal is journaled at once");
        assert!(out[0].detail.as_ref().unwrap().get("repeated").is_none());
        for i in 1..=999 {
            c.offer(
                refusal("a", "10.0.0.1:53/udp", 7 + (i % 3) as u32),
                clk.at(i),
                &mut out,
            );
        }
        assert_eq!(out.len(), 1, "repeats within the interval are held");
        c.due(clk.at(999).mono, &mut out);
        assert_eq!(out.len(), 1, "nothing is due before the interval ends");
        c.due(clk.at(1000).mono, &mut out);
        assert_eq!(out.len(), 2);
        let s = &out[1];
        assert_eq!(repeated(s), 998, "the summary stands for 999 refusals");
        let d = s.detail.as_ref().unwrap();
        assert_eq!(d["hook"], "sendmsg4", "the refusal's own detail is kept");
        assert_eq!(d["pids"], json!([8, 9, 7]));
        assert_eq!(d["first_time"], format_time(clk.at(1).wall));
        assert_eq!(s.time, format_time(clk.at(999).wall));
        // The newest repeat (i = 999, 999 % 3 == 0) is the summary.
        assert_eq!(s.process.as_ref().unwrap().pid, 7);
        assert_eq!(total(&out), 1000);
        assert_eq!(c.folded(), 999);

        // The flood goes on: one summary per interval, nothing in full.
        for i in 1000..2500 {
            c.offer(refusal("a", "10.0.0.1:53/udp", 7), clk.at(i), &mut out);
        }
        c.due(clk.at(2000).mono, &mut out);
        assert_eq!(out.len(), 3);
        c.due(clk.at(3000).mono, &mut out);
        assert_eq!(out.len(), 4);
        assert_eq!(total(&out), 2500);
        // A quiet interval forgets the key; the next refusal is in full.
        c.due(clk.at(4000).mono, &mut out);
        assert!(c.is_empty());
        c.offer(refusal("a", "10.0.0.1:53/udp", 7), clk.at(4001), &mut out);
        assert_eq!(out.len(), 5);
        assert!(out[4].detail.as_ref().unwrap().get("repeated").is_none());
    }

    #[test]
    fn a_distinct_refusal_is_never_held() {
        let clk = Clock::new();
        let mut c = Coalescer::new(cfg(16));
        let mut out = Vec::new();
        for i in 0..100 {
            c.offer(refusal("a", "10.0.0.1:53/udp", 7), clk.at(i), &mut out);
        }
        c.offer(refusal("a", "10.0.0.1:54/udp", 7), clk.at(100), &mut out);
        c.offer(refusal("b", "10.0.0.1:53/udp", 7), clk.at(100), &mut out);
        let mut other_rule = refusal("a", "10.0.0.1:53/udp", 7);
        other_rule.rule = "scope.unknown".into();
        c.offer(other_rule, clk.at(100), &mut out);
        let targets: Vec<_> = out
            .iter()
            .map(|r| {
                (
                    r.agent.as_ref().unwrap().id.clone(),
                    r.target.clone(),
                    r.rule.clone(),
                )
            })
            .collect();
        assert_eq!(targets.len(), 4, "{targets:?}");
        // Allowed events (execs) are journaled every time.
        let mut exec = refusal("a", "/bin/true", 7);
        exec.verdict = Verdict::Allowed;
        c.offer(exec.clone(), clk.at(101), &mut out);
        c.offer(exec, clk.at(102), &mut out);
        assert_eq!(out.len(), 6);
    }

    #[test]
    fn a_window_that_ended_before_due_ran_is_summarised_on_the_next_repeat() {
        let clk = Clock::new();
        let mut c = Coalescer::new(cfg(16));
        let mut out = Vec::new();
        for i in 0..5 {
            c.offer(refusal("a", "x", 1), clk.at(i * 300), &mut out);
        }
        // 0 journaled; 300, 600, 900 held; at 1200 the window (ended at
        // 1000) is summarised and 1200 starts the next one.
        assert_eq!(out.len(), 2);
        assert_eq!(repeated(&out[1]), 2);
        c.flush_all(&mut out);
        assert_eq!(out.len(), 3);
        assert_eq!(total(&out), 5);
    }

    #[test]
    fn closing_a_scope_flushes_its_counts_only() {
        let clk = Clock::new();
        let mut c = Coalescer::new(cfg(16));
        let mut out = Vec::new();
        for i in 0..10 {
            c.offer(refusal("a", "x", 1), clk.at(i), &mut out);
            c.offer(refusal("b", "x", 1), clk.at(i), &mut out);
        }
        out.clear();
        c.flush_agent("a", &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].agent.as_ref().unwrap().id, "a");
        assert_eq!(repeated(&out[0]), 8);
        assert_eq!(c.len(), 1);
        // A key with nothing held leaves no record.
        c.offer(refusal("c", "x", 1), clk.at(20), &mut out);
        out.clear();
        c.flush_agent("c", &mut out);
        assert!(out.is_empty());
        c.flush_all(&mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(repeated(&out[0]), 8);
        assert!(c.is_empty());
    }

    #[test]
    fn a_full_table_flushes_the_oldest_key_and_loses_no_count() {
        let clk = Clock::new();
        let mut c = Coalescer::new(cfg(4));
        let mut out = Vec::new();
        let mut offered = 0;
        for round in 0..3 {
            for k in 0..10 {
                c.offer(
                    refusal("a", &format!("t{k}"), 1),
                    clk.at(round * 10 + k),
                    &mut out,
                );
                offered += 1;
                assert!(c.len() <= 4);
            }
        }
        c.flush_all(&mut out);
        assert_eq!(total(&out), offered);
        // Long churn keeps the eviction queue bounded too.
        for k in 0..10_000u64 {
            c.offer(refusal("a", &format!("u{k}"), 1), clk.at(100 + k), &mut out);
        }
        assert!(c.order.len() <= 2 * 16 + 1, "{}", c.order.len());
    }

    #[test]
    fn many_pids_are_capped_and_flagged() {
        let clk = Clock::new();
        let mut c = Coalescer::new(cfg(4));
        let mut out = Vec::new();
        for pid in 0..40 {
            c.offer(
                refusal("a", "x", 100 + pid),
                clk.at(u64::from(pid)),
                &mut out,
            );
        }
        c.flush_all(&mut out);
        let d = out[1].detail.as_ref().unwrap();
        assert_eq!(d["pids"].as_array().unwrap().len(), PIDS_CAP);
        assert_eq!(d["pids_truncated"], true);
        assert_eq!(total(&out), 40);
    }

    #[test]
    fn disabled_passes_everything_through() {
        let clk = Clock::new();
        let mut c = Coalescer::new(CoalesceConfig {
            interval: Duration::ZERO,
            capacity: 16,
        });
        let mut out = Vec::new();
        for i in 0..5 {
            c.offer(refusal("a", "x", 1), clk.at(i), &mut out);
        }
        assert_eq!(out.len(), 5);
        assert!(c.is_empty());
    }
}
