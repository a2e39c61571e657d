//! The violation journal: every event guard observes about a confined agent
//! becomes one hash-chained [`Record`], stored in SQLite, optionally mirrored
//! as JSON lines, and queryable afterwards so a reviewer can say what an agent
//! tried.
//!
//! The pieces:
//! - [`Record`] and [`Text`]: the event shape; `Text` keeps untrusted bytes
//!   losslessly and prints them safely.
//! - [`Journal`] / [`JournalHandle`]: the batching writer thread the daemon
//!   appends to; it assigns `seq`, `time`, `prev` and `hash`.
//! - [`Store`]: the SQLite file, read by the CLI with [`Filter`].
//! - [`verify()`]: recomputes the chain and the checkpoints.
//! - [`human`]: one-line table output for terminals.

// Dependency order, one way only: `text` → `record` → `hash` →
// `checkpoint` → `query` → `store` → `verify` → `writer` (each uses only
// modules to its left; `lock`, `sink`, `human` and `ocsf` hang off
// `record`/`text`; so does `requests`, the queue of `guardctl requests`).
mod checkpoint;
mod hash;
pub mod human;
mod lock;
pub mod ocsf;
mod query;
mod record;
pub mod requests;
mod sink;
mod store;
mod text;
mod verify;
mod writer;

use std::path::PathBuf;
use std::sync::Arc;

/// Where guardd keeps its journal unless told otherwise, and where
/// `guardctl logs` looks for it when no guardd answers.
pub const DEFAULT_PATH: &str = "/var/lib/guard/journal.db";

pub use checkpoint::{Checkpoint, checkpoint_path, read_checkpoint_file};
pub use hash::{ChainHead, GENESIS_HASH, canonical_bytes, record_hash};
pub use lock::{JournalLock, lock_path};
pub use query::{Filter, parse_time};
pub use record::{
    AgentRef, ContainerRef, HostRef, Kind, LEARN_LAYER, ProcessRef, Record, Verdict, format_time,
    local_host, parse_record_time, set_local_host,
};
pub use sink::MirrorSink;
pub use store::{Retention, Store, Usage, default_budget, parse_size};
pub(crate) use text::floor_char_boundary;
pub use text::{
    COMM_CAP, DETAIL_STRING_CAP, EXE_CAP, LABEL_CAP, TARGET_CAP, Text, escape_bytes, escape_str,
    to_safe_json,
};
pub use verify::{Problem, VerifyReport, mirror_head, parse_head, verify, verify_against};
pub use writer::{Journal, JournalConfig, JournalHandle, JournalStats};

/// Everything that can go wrong in the journal. Each variant names the
/// operation that failed so a log line is actionable without a backtrace.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal store: {op}")]
    Sqlite {
        op: &'static str,
        #[source]
        source: rusqlite::Error,
    },
    #[error("journal: {op} {}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("journal json: {op}")]
    Json {
        op: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error(
        "invalid time {input:?} ({reason}): expected RFC 3339 such as 2026-11-22T03:04:05Z \
         or a relative duration such as 30s, 10m, 2h, 1d"
    )]
    InvalidTime { input: String, reason: String },
    #[error("invalid size {input:?}: expected a byte count such as 500M, 2G or 1048576")]
    InvalidSize { input: String },
    #[error("unknown {what} {input:?}")]
    UnknownName { what: &'static str, input: String },
    #[error("corrupt journal record at seq {seq}: {reason}")]
    Corrupt { seq: u64, reason: String },
    #[error("corrupt checkpoint file {} line {line}", path.display())]
    CorruptCheckpoint {
        path: PathBuf,
        line: usize,
        #[source]
        source: serde_json::Error,
    },
    #[error("journal store {} does not exist", path.display())]
    NotFound { path: PathBuf },
    #[error("journal store schema version {found} is newer than this build supports ({supported})")]
    SchemaVersion { found: i64, supported: i64 },
    #[error("{what} {value} does not fit the journal's integer range")]
    OutOfRange { what: &'static str, value: u64 },
    #[error("journal writer is closed")]
    Closed,
    #[error("journal writer: {op}")]
    Writer {
        op: &'static str,
        #[source]
        source: Arc<JournalError>,
    },
    #[error("journal writer thread panicked")]
    WriterPanicked,
    #[error("no agent with id, id prefix or name {key:?} in the journal")]
    UnknownAgent { key: String },
    #[error("{key:?} is a prefix of several agent ids: {candidates}; give more of the id")]
    AmbiguousAgent { key: String, candidates: String },
    #[error(
        "journal {} is in use by {holder}; a journal has exactly one writer: stop that guardd or \
         give this one another --journal",
        path.display()
    )]
    Locked { path: PathBuf, holder: String },
    #[error("journal writer failed and accepts no more records: {reason}")]
    Failed { reason: String },
    #[error("mirror file {} line {line}: {reason}", path.display())]
    CorruptMirror {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    #[error("invalid chain head {input:?}: expected SEQ:HASH with 64 hex digits")]
    InvalidHead { input: String },
}

impl JournalError {
    pub(crate) fn sql(op: &'static str) -> impl FnOnce(rusqlite::Error) -> JournalError {
        move |source| JournalError::Sqlite { op, source }
    }

    pub(crate) fn io(
        op: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> JournalError {
        let path = path.into();
        move |source| JournalError::Io { op, path, source }
    }

    pub(crate) fn json(op: &'static str) -> impl FnOnce(serde_json::Error) -> JournalError {
        move |source| JournalError::Json { op, source }
    }
}

/// `path` with `suffix` appended to its file name: the files that live
/// beside a store (`-wal`, `.checkpoint`, `.lock`) or a mirror (`.1`).
pub(crate) fn suffixed(path: &std::path::Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// A seq as SQLite's signed integer; seqs beyond `i64::MAX` cannot be
/// stored.
pub(crate) fn seq_to_sql(seq: u64) -> Result<i64, JournalError> {
    i64::try_from(seq).map_err(|_| JournalError::OutOfRange {
        what: "seq",
        value: seq,
    })
}

/// `error: cause: cause` for log lines and guardctl's messages, which
/// otherwise show only the top level and lose the SQLite or I/O reason.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
