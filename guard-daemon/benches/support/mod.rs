//! The journal measurements behind `benches/journal.rs`, built only on the
//! journal's public API (the writer through `Journal`, queries through
//! `Store`), so they measure what guardd and guardctl use. tests/journal.rs
//! includes this file to keep it working.

use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use guard_daemon::journal::{
    AgentRef, Filter, Journal, JournalConfig, JournalError, Kind, ProcessRef, Record, Store, Text,
    Verdict, format_time,
};

/// Number of distinct agents in [`query`]'s data: with the 8 kinds, each
/// (agent, kind) pair holds n/1000 records.
const QUERY_AGENTS: u64 = 125;

/// Appends `n` typical records (`agents` agents, all kinds, ~450-byte JSON)
/// through a fresh journal in a temporary directory and returns the
/// sustained rate in records per second, from the first append until all
/// are committed. More agents means more insertion points in the agent
/// index and slower commits.
pub fn ingest(n: u64, agents: u64) -> Result<f64, JournalError> {
    // Removed when dropped, on every return path.
    let dir = tempfile::Builder::new()
        .prefix("guard-journal-bench-")
        .tempdir()
        .map_err(|source| JournalError::Io {
            op: "create bench directory",
            path: std::env::temp_dir(),
            source,
        })?;
    let journal = Journal::open(JournalConfig::new(dir.path().join("bench.db")))?;
    let handle = journal.handle();
    let start = Instant::now();
    for i in 0..n {
        handle.append(record(i, agents))?;
    }
    handle.flush()?;
    let secs = start.elapsed().as_secs_f64();
    journal.close()?;
    Ok(n as f64 / secs.max(1e-9))
}

/// Builds (or tops up) a journal of `n` records at `path` through the
/// writer, then times a filtered store query (one agent and one kind, about
/// n/1000 rows). Returns the median of five runs and the number of rows
/// returned.
pub fn query(path: &Path, n: u64) -> Result<(Duration, usize), JournalError> {
    let have = if path.exists() {
        Store::open(path)?.head()?.map_or(0, |h| h.seq)
    } else {
        0
    };
    if have < n {
        let journal = Journal::open(JournalConfig::new(path))?;
        let handle = journal.handle();
        let now = SystemTime::now();
        let base = now.checked_sub(Duration::from_secs(3600)).unwrap_or(now);
        for i in have..n {
            let mut rec = record(i, QUERY_AGENTS);
            rec.time = format_time(base + Duration::from_micros(i));
            handle.append(rec)?;
        }
        handle.flush()?;
        journal.close()?;
    }
    let store = Store::open(path)?;
    let filter = Filter {
        agent: Some("agent-7".into()),
        kind: Some(Kind::Network),
        ..Filter::default()
    };
    let mut times = Vec::new();
    let mut rows = 0;
    for _ in 0..5 {
        let start = Instant::now();
        rows = store.query(&filter)?.len();
        times.push(start.elapsed());
    }
    times.sort();
    Ok((times[times.len() / 2], rows))
}

/// A plausible record; agent cycles fastest and kind per agent round so that
/// every (agent, kind) pair is equally common.
pub fn record(i: u64, agents: u64) -> Record {
    let agents = agents.max(1);
    let agent = i % agents;
    let kind = Kind::ALL[((i / agents) % 8) as usize];
    Record::new(
        kind,
        "connect",
        format!("10.0.{}.{}:443/tcp", (i >> 8) & 0xff, i & 0xff),
        if i.is_multiple_of(3) {
            Verdict::Allowed
        } else {
            Verdict::Denied
        },
        "network.default-deny",
        "cgroup-bpf",
    )
    .with_agent(AgentRef {
        id: format!("a{agent:04}"),
        name: format!("agent-{agent}"),
        policy: "default".into(),
        container: None,
    })
    .with_process(ProcessRef {
        pid: 1000 + (i % 50) as u32,
        comm: Text::from("curl"),
        exe: Text::from("/usr/bin/curl"),
    })
    .with_detail(serde_json::json!({ "args": ["-s", "https://example.invalid/"], "fd": 3 }))
}
