//! The SQLite store: schema, rows, indexes, queries and retention; it
//! stores sealed records and checkpoints but verifies nothing.
//! `records.json` is the exact stored record (the chain covers it); the
//! other columns are copies for indexing and are checked against `json` by
//! verification.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{Connection, OpenFlags, OptionalExtension, Row, ToSql, params};

use super::checkpoint::Checkpoint;
use super::hash::{ChainHead, Sealed};
use super::query::Filter;
use super::record::{Record, parse_record_time, to_unix_us};
use super::{JournalError, seq_to_sql, suffixed};

const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS records(
    seq INTEGER PRIMARY KEY,
    ts_us INTEGER,
    agent_id TEXT,
    agent_name TEXT,
    pid INTEGER,
    kind TEXT,
    verdict TEXT,
    target TEXT,
    json TEXT NOT NULL,
    hash TEXT NOT NULL
);
-- seq is the rowid, so every index below ends in seq implicitly: an equality
-- match on the leading columns comes out already in seq order.
-- There is deliberately no index on agent_name: a second random-insertion
-- index on records halved ingest speed. Names are resolved to ids through
-- the small agents table instead.
CREATE INDEX IF NOT EXISTS records_agent_id ON records(agent_id, kind);
CREATE INDEX IF NOT EXISTS records_kind ON records(kind);
CREATE INDEX IF NOT EXISTS records_verdict ON records(verdict);
CREATE INDEX IF NOT EXISTS records_ts ON records(ts_us);
CREATE TABLE IF NOT EXISTS checkpoints(
    seq INTEGER PRIMARY KEY,
    hash TEXT NOT NULL,
    time TEXT NOT NULL
);
-- Every (agent_id, agent_name) pair that occurs in records; serves
-- lookups by agent name.
CREATE TABLE IF NOT EXISTS agents(
    agent_id TEXT NOT NULL,
    agent_name TEXT NOT NULL,
    PRIMARY KEY (agent_id, agent_name)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS agents_name ON agents(agent_name);
-- The (seq, hash) of the newest record removed by retention, so the chain
-- of the retained records still links to something.
CREATE TABLE IF NOT EXISTS retention(
    id INTEGER PRIMARY KEY CHECK (id = 1),
    seq INTEGER NOT NULL,
    hash TEXT NOT NULL
);
";

const INSERT_RECORD: &str = "INSERT INTO records \
    (seq, ts_us, agent_id, agent_name, pid, kind, verdict, target, json, hash) \
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)";

const SCAN_COLUMNS: &str =
    "seq, ts_us, agent_id, agent_name, pid, kind, verdict, target, json, hash";

/// How much history to keep. Retention always removes the oldest records
/// and records a `gap`/`retention` summary in their place.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retention {
    pub max_records: Option<u64>,
    pub max_age: Option<Duration>,
    /// Disk budget of the store: main file and WAL together.
    pub max_bytes: Option<u64>,
}

impl Retention {
    pub fn is_enabled(&self) -> bool {
        self.max_records.is_some() || self.max_age.is_some() || self.max_bytes.is_some()
    }
}

/// Size the WAL file is cut back to when it starts over.
const WAL_KEEP: u64 = 4 << 20;

/// Largest WAL kept between checkpoints: today's 64 MiB (fewer copies of hot
/// index pages, see `init`), or an eighth of a smaller budget.
pub(crate) fn wal_cap(budget: Option<u64>) -> u64 {
    const WAL_MAX: u64 = 64 << 20;
    budget.map_or(WAL_MAX, |b| (b / 8).clamp(64 << 10, WAL_MAX))
}

/// How many of the oldest records a disk budget removes: none while the
/// records' pages stay under 90% of what the budget leaves them beside the
/// WAL, else enough to get back to 80%, estimated from the mean record size.
/// The main file does not shrink (freed pages are reused), so these
/// watermarks, not the file size, keep the store near the budget.
pub(crate) fn budget_cut(budget: u64, db_used: u64, records: u64) -> Option<u64> {
    let for_records = budget.saturating_sub(wal_cap(Some(budget)));
    let high = for_records / 10 * 9;
    let low = for_records / 10 * 8;
    if db_used <= high || records == 0 {
        return None;
    }
    let per_record = (db_used / records).max(1);
    let remove = (db_used - low).div_ceil(per_record);
    Some(remove.clamp(1, records))
}

/// The disk budget when none is configured: 1 GiB, or a tenth of the
/// filesystem holding the journal when that is smaller (a node's disk is
/// shared with its workloads), but at least 64 MiB.
pub fn default_budget(journal: &Path) -> u64 {
    const MAX: u64 = 1 << 30;
    const MIN: u64 = 64 << 20;
    // The journal's directory may not exist yet: measure the nearest
    // ancestor that does.
    let fs_size = journal
        .ancestors()
        .skip(1)
        .filter(|p| !p.as_os_str().is_empty())
        .find_map(|p| nix::sys::statvfs::statvfs(p).ok())
        .map(|v| v.blocks().saturating_mul(v.fragment_size()));
    fs_size.map_or(MAX, |size| (size / 10).clamp(MIN, MAX))
}

/// `500M`, `2G`, `64KiB`, `1048576`: a byte count with an optional binary
/// suffix (K, M, G, T; `iB` or `B` may follow).
pub fn parse_size(input: &str) -> Result<u64, JournalError> {
    let bad = || JournalError::InvalidSize {
        input: input.to_owned(),
    };
    let s = input.trim();
    let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(digits);
    let n: u64 = num.parse().map_err(|_| bad())?;
    let unit = unit.trim().to_ascii_uppercase();
    let unit = unit
        .strip_suffix("IB")
        .or_else(|| unit.strip_suffix('B'))
        .unwrap_or(&unit);
    let shift = match unit {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        _ => return Err(bad()),
    };
    n.checked_mul(1u64 << shift).ok_or_else(bad)
}

/// Bytes the store occupies.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Pages of the main file in use (not on the freelist).
    pub db_used: u64,
    /// Size of the main file.
    pub db_file: u64,
    /// Size of the WAL file.
    pub wal_file: u64,
}

impl Usage {
    /// What the budget is held to: live pages and the WAL. Free pages of
    /// the main file are reused before it grows again.
    pub fn used(&self) -> u64 {
        self.db_used + self.wal_file
    }
}

/// What one retention pass will remove.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RetentionPlan {
    pub first_seq: u64,
    pub last_seq: u64,
    pub last_hash: String,
    pub removed: u64,
    pub by_kind: BTreeMap<String, u64>,
    /// Which limit triggered, for the summary's `rule`.
    pub rule: &'static str,
    /// Records removed by every retention pass so far, this one included,
    /// by kind: each summary carries the running total, so counts still
    /// add up after later passes remove earlier summaries.
    pub total_removed: u64,
    pub total_by_kind: BTreeMap<String, u64>,
}

pub struct Store {
    conn: Connection,
    path: PathBuf,
    /// Pairs known to be in the agents table (id -> names), so a batch only
    /// touches it for agents it has not seen.
    agents: HashMap<String, HashSet<String>>,
}

impl Store {
    /// Opens or creates the store and its schema.
    pub fn open(path: impl AsRef<Path>) -> Result<Store, JournalError> {
        let path = path.as_ref();
        let conn = Connection::open(path).map_err(JournalError::sql("open store"))?;
        Store::init(conn, path)
    }

    /// Opens a store that must already exist (for verification and the CLI,
    /// where silently creating an empty journal would hide a wrong path).
    pub fn open_existing(path: impl AsRef<Path>) -> Result<Store, JournalError> {
        let path = path.as_ref();
        require_exists(path)?;
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_URI;
        let conn =
            Connection::open_with_flags(path, flags).map_err(JournalError::sql("open store"))?;
        Store::init(conn, path)
    }

    /// Opens an existing store for queries, with a small page cache: the
    /// indexes do the work, and each query connection counts against the
    /// daemon's memory while it lives. Read-only (see [`Store::open_read_only`]).
    pub fn open_for_reading(path: impl AsRef<Path>) -> Result<Store, JournalError> {
        let store = Store::open_read_only(path)?;
        store
            .conn
            .execute_batch("PRAGMA cache_size=-2048;")
            .map_err(JournalError::sql("set reader cache"))?;
        Ok(store)
    }

    /// Opens an existing store without ever writing to it: no schema, no
    /// pragmas that persist, `SQLITE_OPEN_READ_ONLY`. Evidence must not be
    /// changed by looking at it. Without a `-wal` beside the file (guardd is
    /// not running on it, or this is a copy) the file is opened `immutable`,
    /// so SQLite creates no `-wal`/`-shm` files either and reads exactly the
    /// main file's bytes.
    pub fn open_read_only(path: impl AsRef<Path>) -> Result<Store, JournalError> {
        let path = path.as_ref();
        require_exists(path)?;
        let immutable = !suffixed(path, "-wal").exists();
        let uri = sqlite_uri(path, immutable);
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_URI;
        let conn =
            Connection::open_with_flags(&uri, flags).map_err(JournalError::sql("open store"))?;
        conn.busy_timeout(Duration::from_secs(10))
            .map_err(JournalError::sql("set busy timeout"))?;
        schema_version(&conn)?;
        // The agents cache spares the writer's batches a lookup; a reader
        // (one per query page in guardd) does not fill it, and
        // `resolve_agent` reads the table.
        Ok(Store {
            conn,
            path: path.to_owned(),
            agents: HashMap::new(),
        })
    }

    /// What `--agent KEY` selects: `KEY` itself when it is a recorded agent
    /// id or name (a name may cover several runs), else the one id starting
    /// with `KEY`, as `guardctl ps` resolves ids. Unknown or ambiguous keys
    /// are errors, so a typo is never an empty, successful answer.
    pub fn resolve_agent(&self, key: &str) -> Result<String, JournalError> {
        let agents = self.agent_names()?;
        if agents
            .iter()
            .any(|(id, names)| id == key || names.contains(key))
        {
            return Ok(key.to_owned());
        }
        let mut ids: Vec<(&String, &HashSet<String>)> = if key.is_empty() {
            Vec::new()
        } else {
            agents
                .iter()
                .filter(|(id, _)| id.starts_with(key))
                .collect()
        };
        ids.sort_by(|a, b| a.0.cmp(b.0));
        match ids.as_slice() {
            [] => Err(JournalError::UnknownAgent {
                key: key.to_owned(),
            }),
            [(id, _)] => Ok((*id).clone()),
            many => Err(JournalError::AmbiguousAgent {
                key: key.to_owned(),
                candidates: many
                    .iter()
                    .map(|(id, names)| {
                        let mut names: Vec<&str> = names.iter().map(String::as_str).collect();
                        names.sort_unstable();
                        format!("{id} ({})", names.join(", "))
                    })
                    .collect::<Vec<_>>()
                    .join(", "),
            }),
        }
    }

    /// Writes a consistent copy of the store to `dest` (which must not
    /// exist) in one read transaction, without writing to this store.
    pub fn export_to(&self, dest: &Path) -> Result<(), JournalError> {
        let dest_text = dest.to_str().ok_or_else(|| JournalError::Io {
            op: "export to",
            path: dest.to_owned(),
            source: std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "path is not valid UTF-8",
            ),
        })?;
        self.conn
            .execute("VACUUM INTO ?1", [dest_text])
            .map_err(JournalError::sql("export the store"))?;
        Ok(())
    }

    /// The stored hash of record `seq`, if the record is present.
    pub fn hash_at(&self, seq: u64) -> Result<Option<String>, JournalError> {
        self.conn
            .query_row(
                "SELECT hash FROM records WHERE seq = ?1",
                [seq_to_sql(seq)?],
                |r| r.get(0),
            )
            .optional()
            .map_err(JournalError::sql("read record hash"))
    }

    fn init(conn: Connection, path: &Path) -> Result<Store, JournalError> {
        // A reader (the CLI) and the daemon's writer share the file; wait
        // for each other's short transactions instead of failing.
        // Only takes effect when the file is new. Larger pages made batch
        // commits markedly cheaper (fewer index pages dirtied per batch).
        conn.execute_batch("PRAGMA page_size=16384")
            .map_err(JournalError::sql("set page size"))?;
        conn.busy_timeout(Duration::from_secs(10))
            .map_err(JournalError::sql("set busy timeout"))?;
        // A 64 MiB WAL (4096 pages) between automatic checkpoints instead
        // of 16 MiB: index pages hit by consecutive batches are copied into
        // the database once rather than several times.
        // The page cache is bounded (8 MiB) because guardd's whole resident
        // set has a budget; queries shrink theirs further with `for_reading`.
        conn.execute_batch(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; \
             PRAGMA cache_size=-8192; PRAGMA temp_store=MEMORY; \
             PRAGMA wal_autocheckpoint=4096;",
        )
        .map_err(JournalError::sql("set pragmas"))?;
        let version = schema_version(&conn)?;
        conn.execute_batch(SCHEMA)
            .map_err(JournalError::sql("create schema"))?;
        if version < SCHEMA_VERSION {
            conn.execute_batch(&format!("PRAGMA user_version={SCHEMA_VERSION}"))
                .map_err(JournalError::sql("set schema version"))?;
        }
        let mut store = Store {
            conn,
            path: path.to_owned(),
            agents: HashMap::new(),
        };
        store.agents = store.agent_names()?;
        Ok(store)
    }

    /// The agents table as agent id -> the names recorded for it.
    pub(crate) fn agent_names(&self) -> Result<HashMap<String, HashSet<String>>, JournalError> {
        let mut stmt = self
            .conn
            .prepare("SELECT agent_id, agent_name FROM agents")
            .map_err(JournalError::sql("read agents"))?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
            .map_err(JournalError::sql("read agents"))?;
        let mut agents: HashMap<String, HashSet<String>> = HashMap::new();
        for row in rows {
            let (id, name) = row.map_err(JournalError::sql("read agents"))?;
            agents.entry(id).or_default().insert(name);
        }
        Ok(agents)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Newest record's seq and hash, or `None` for an empty store.
    pub fn head(&self) -> Result<Option<ChainHead>, JournalError> {
        self.conn
            .query_row(
                "SELECT seq, hash FROM records ORDER BY seq DESC LIMIT 1",
                [],
                |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)),
            )
            .optional()
            .map_err(JournalError::sql("read chain head"))?
            .map(|(seq, hash)| {
                Ok(ChainHead {
                    seq: seq_from_sql(seq)?,
                    hash,
                })
            })
            .transpose()
    }

    pub fn count(&self) -> Result<u64, JournalError> {
        let n: i64 = self
            .conn
            .query_row("SELECT count(*) FROM records", [], |r| r.get(0))
            .map_err(JournalError::sql("count records"))?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    pub fn get(&self, seq: u64) -> Result<Option<Record>, JournalError> {
        let json: Option<String> = self
            .conn
            .query_row(
                "SELECT json FROM records WHERE seq = ?1",
                [seq_to_sql(seq)?],
                |r| r.get(0),
            )
            .optional()
            .map_err(JournalError::sql("read record"))?;
        json.map(|j| parse_stored(seq, &j)).transpose()
    }

    /// Records matching `f`, seq ascending.
    pub fn query(&self, f: &Filter) -> Result<Vec<Record>, JournalError> {
        let (sql, values) = f.to_sql();
        let mut stmt = self
            .conn
            .prepare_cached(&sql)
            .map_err(JournalError::sql("prepare query"))?;
        let mut rows = stmt
            .query(rusqlite::params_from_iter(values.iter()))
            .map_err(JournalError::sql("run query"))?;
        let mut out = Vec::new();
        while let Some(row) = rows.next().map_err(JournalError::sql("read query row"))? {
            let seq: i64 = row.get(0).map_err(JournalError::sql("read query row"))?;
            let json = row
                .get_ref(1)
                .map_err(JournalError::sql("read query row"))?;
            let seq = seq_from_sql(seq)?;
            let text = json.as_str().map_err(|_| JournalError::Corrupt {
                seq,
                reason: "json column is not text".into(),
            })?;
            out.push(parse_stored(seq, text)?);
        }
        if f.tail {
            out.reverse();
        }
        Ok(out)
    }

    /// `EXPLAIN QUERY PLAN` details for the query `f` would run.
    pub fn explain_query(&self, f: &Filter) -> Result<Vec<String>, JournalError> {
        let (sql, values) = f.to_sql();
        let mut stmt = self
            .conn
            .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
            .map_err(JournalError::sql("prepare query plan"))?;
        let rows = stmt
            .query_map(rusqlite::params_from_iter(values.iter()), |r| {
                r.get::<_, String>(3)
            })
            .map_err(JournalError::sql("explain query"))?;
        rows.collect::<Result<_, _>>()
            .map_err(JournalError::sql("explain query"))
    }

    /// Checkpoints recorded in the store, oldest first.
    pub fn checkpoints(&self) -> Result<Vec<Checkpoint>, JournalError> {
        let mut stmt = self
            .conn
            .prepare("SELECT seq, hash, time FROM checkpoints ORDER BY seq")
            .map_err(JournalError::sql("read checkpoints"))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                ))
            })
            .map_err(JournalError::sql("read checkpoints"))?;
        let mut out = Vec::new();
        for row in rows {
            let (seq, hash, time) = row.map_err(JournalError::sql("read checkpoints"))?;
            out.push(Checkpoint {
                seq: seq_from_sql(seq)?,
                hash,
                time,
            });
        }
        Ok(out)
    }

    /// The last record removed by retention, which the oldest retained
    /// record links to.
    pub fn retention_anchor(&self) -> Result<Option<ChainHead>, JournalError> {
        self.conn
            .query_row("SELECT seq, hash FROM retention WHERE id = 1", [], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
            })
            .optional()
            .map_err(JournalError::sql("read retention anchor"))?
            .map(|(seq, hash)| {
                Ok(ChainHead {
                    seq: seq_from_sql(seq)?,
                    hash,
                })
            })
            .transpose()
    }

    /// Inserts sealed records in one transaction.
    pub(crate) fn insert_batch(&mut self, batch: &[Sealed]) -> Result<(), JournalError> {
        let tx = self
            .conn
            .transaction()
            .map_err(JournalError::sql("begin batch"))?;
        let mut new_agents: Vec<(String, String)> = Vec::new();
        {
            let mut stmt = tx
                .prepare_cached(INSERT_RECORD)
                .map_err(JournalError::sql("prepare insert"))?;
            for s in batch {
                insert_one(&mut stmt, s)?;
                if let Some((id, name)) = s.prepared.agent()
                    && !self.agents.get(id).is_some_and(|n| n.contains(name))
                    && !new_agents.iter().any(|(i, n)| i == id && n == name)
                {
                    new_agents.push((id.to_owned(), name.to_owned()));
                }
            }
            let mut stmt = tx
                .prepare_cached(
                    "INSERT OR IGNORE INTO agents(agent_id, agent_name) VALUES (?1, ?2)",
                )
                .map_err(JournalError::sql("prepare agent insert"))?;
            for (id, name) in &new_agents {
                stmt.execute(params![id, name])
                    .map_err(JournalError::sql("insert agent"))?;
            }
        }
        tx.commit().map_err(JournalError::sql("commit batch"))?;
        // Only after the commit: a rolled-back pair must be written again.
        for (id, name) in new_agents {
            self.agents.entry(id).or_default().insert(name);
        }
        Ok(())
    }

    /// Records a checkpoint durably: the commit is fsync'd (unlike ordinary
    /// batches under `synchronous=NORMAL`) so the side file, written after
    /// this, never vouches for records a power loss could take back.
    pub(crate) fn insert_checkpoint(&mut self, cp: &Checkpoint) -> Result<(), JournalError> {
        self.conn
            .execute_batch("PRAGMA synchronous=FULL")
            .map_err(JournalError::sql("raise synchronous"))?;
        let result = self
            .conn
            .execute(
                "INSERT OR REPLACE INTO checkpoints(seq, hash, time) VALUES (?1, ?2, ?3)",
                params![seq_to_sql(cp.seq)?, cp.hash, cp.time],
            )
            .map_err(JournalError::sql("insert checkpoint"));
        let restore = self
            .conn
            .execute_batch("PRAGMA synchronous=NORMAL")
            .map_err(JournalError::sql("restore synchronous"));
        result?;
        restore
    }

    /// Bounds the WAL to `wal_cap(budget)`: checkpoints start once it holds
    /// that much, and the file is cut back to it after each checkpoint
    /// (SQLite otherwise keeps the WAL file at its largest size forever).
    pub(crate) fn limit_wal(&self, budget: Option<u64>) -> Result<(), JournalError> {
        let cap = wal_cap(budget);
        let page: u64 = self
            .conn
            .query_row("PRAGMA page_size", [], |r| r.get::<_, i64>(0))
            .map_err(JournalError::sql("read page size"))?
            .try_into()
            .unwrap_or(4096);
        let pages = (cap / page.max(512)).max(8);
        // The writer checkpoints the WAL at every chain checkpoint (seconds
        // apart), so it rarely grows far; cut it back to a few MiB when it
        // starts over, so that the main file, not the WAL, holds the journal.
        let keep = cap.min(WAL_KEEP);
        self.conn
            .execute_batch(&format!(
                "PRAGMA journal_size_limit={keep}; PRAGMA wal_autocheckpoint={pages};"
            ))
            .map_err(JournalError::sql("limit the WAL"))
    }

    /// A passive checkpoint: copies what it can from the WAL without
    /// waiting for readers, so the WAL can start over (and be cut back).
    pub(crate) fn checkpoint_wal(&self) -> Result<(), JournalError> {
        self.conn
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
            .map_err(JournalError::sql("checkpoint the WAL"))
    }

    /// How much disk the store takes.
    pub fn usage(&self) -> Result<Usage, JournalError> {
        let (pages, free, page): (i64, i64, i64) = self
            .conn
            .query_row(
                "SELECT (SELECT page_count FROM pragma_page_count), \
                        (SELECT freelist_count FROM pragma_freelist_count), \
                        (SELECT page_size FROM pragma_page_size)",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .map_err(JournalError::sql("measure the store"))?;
        let len = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
        let wal = suffixed(&self.path, "-wal");
        Ok(Usage {
            db_used: u64::try_from((pages - free).max(0) * page).unwrap_or(0),
            db_file: len(&self.path),
            wal_file: len(&wal),
        })
    }

    /// Newest checkpoint seq in the store.
    pub(crate) fn last_checkpoint_seq(&self) -> Result<Option<u64>, JournalError> {
        let seq: Option<i64> = self
            .conn
            .query_row("SELECT max(seq) FROM checkpoints", [], |r| r.get(0))
            .map_err(JournalError::sql("read last checkpoint"))?;
        seq.map(seq_from_sql).transpose()
    }

    /// Works out which prefix of the chain `policy` removes at `now`.
    /// Only a prefix is ever removed, so the rest still links.
    pub(crate) fn plan_retention(
        &self,
        policy: &Retention,
        now: SystemTime,
    ) -> Result<Option<RetentionPlan>, JournalError> {
        let (min, max): (Option<i64>, Option<i64>) = self
            .conn
            .query_row("SELECT min(seq), max(seq) FROM records", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .map_err(JournalError::sql("measure records"))?;
        // Counting scans the whole table: only when a limit needs it.
        let count = || -> Result<i64, JournalError> {
            self.conn
                .query_row("SELECT count(*) FROM records", [], |r| r.get(0))
                .map_err(JournalError::sql("count records"))
        };
        let (Some(min), Some(max)) = (min, max) else {
            return Ok(None);
        };
        let mut cut: Option<(i64, &'static str)> = None;

        if let Some(limit) = policy.max_records {
            // Only act once the limit is exceeded, and then remove one extra
            // for the summary, so an idle journal is not churned every pass.
            let limit = i64::try_from(limit.max(1)).unwrap_or(i64::MAX);
            let count = count()?;
            if count > limit {
                let remove = count - limit + 1;
                let last: Option<i64> = self
                    .conn
                    .query_row(
                        "SELECT seq FROM records ORDER BY seq LIMIT 1 OFFSET ?1",
                        [remove - 1],
                        |r| r.get(0),
                    )
                    .optional()
                    .map_err(JournalError::sql("find retention cut"))?;
                if let Some(last) = last {
                    cut = Some((last, "retention.max_records"));
                }
            }
        }
        if let Some(budget) = policy.max_bytes {
            let used = self.usage()?.db_used;
            let over = budget_cut(budget, used, 1).is_some();
            let records = if over {
                u64::try_from(count()?).unwrap_or(0)
            } else {
                0
            };
            if let Some(remove) = budget_cut(budget, used, records) {
                let offset = i64::try_from(remove - 1).unwrap_or(i64::MAX);
                let last: Option<i64> = self
                    .conn
                    .query_row(
                        "SELECT seq FROM records ORDER BY seq LIMIT 1 OFFSET ?1",
                        [offset],
                        |r| r.get(0),
                    )
                    .optional()
                    .map_err(JournalError::sql("find retention size cut"))?;
                if let Some(last) = last
                    && cut.is_none_or(|(c, _)| last > c)
                {
                    cut = Some((last, "retention.max_bytes"));
                }
            }
        }
        if let Some(age) = policy.max_age {
            let cutoff = now.checked_sub(age).map_or(i64::MIN, to_unix_us);
            // Times are caller-supplied and not monotonic in seq: stop at the
            // first record young enough to keep.
            let first_young: Option<i64> = self
                .conn
                .query_row(
                    "SELECT min(seq) FROM records WHERE ts_us >= ?1",
                    [cutoff],
                    |r| r.get(0),
                )
                .map_err(JournalError::sql("find retention age cut"))?;
            let last = match first_young {
                None => Some(max),
                Some(young) if young > min => self
                    .conn
                    .query_row(
                        "SELECT max(seq) FROM records WHERE seq < ?1",
                        [young],
                        |r| r.get(0),
                    )
                    .map_err(JournalError::sql("find retention age cut"))?,
                Some(_) => None,
            };
            if let Some(last) = last
                && cut.is_none_or(|(c, _)| last > c)
            {
                cut = Some((last, "retention.max_age"));
            }
        }
        let Some((last, rule)) = cut else {
            return Ok(None);
        };

        let last_hash: String = self
            .conn
            .query_row("SELECT hash FROM records WHERE seq = ?1", [last], |r| {
                r.get(0)
            })
            .map_err(JournalError::sql("read retention anchor hash"))?;
        let mut by_kind = BTreeMap::new();
        let mut removed = 0u64;
        let mut stmt = self
            .conn
            .prepare("SELECT kind, count(*) FROM records WHERE seq <= ?1 GROUP BY kind")
            .map_err(JournalError::sql("count removed records"))?;
        let rows = stmt
            .query_map([last], |r| {
                Ok((r.get::<_, Option<String>>(0)?, r.get::<_, i64>(1)?))
            })
            .map_err(JournalError::sql("count removed records"))?;
        for row in rows {
            let (kind, n) = row.map_err(JournalError::sql("count removed records"))?;
            let n = u64::try_from(n).unwrap_or(0);
            removed += n;
            *by_kind.entry(kind.unwrap_or_default()).or_insert(0) += n;
        }
        drop(stmt);
        let (mut total_removed, mut total_by_kind) = self.retention_totals()?;
        total_removed += removed;
        for (kind, n) in &by_kind {
            *total_by_kind.entry(kind.clone()).or_insert(0) += n;
        }
        Ok(Some(RetentionPlan {
            first_seq: seq_from_sql(min)?,
            last_seq: seq_from_sql(last)?,
            last_hash,
            removed,
            by_kind,
            rule,
            total_removed,
            total_by_kind,
        }))
    }

    /// The running totals of the newest retention summary in the store
    /// (zero when there is none). A summary from before totals existed
    /// counts with its own `removed`/`by_kind`.
    fn retention_totals(&self) -> Result<(u64, BTreeMap<String, u64>), JournalError> {
        let mut stmt = self
            .conn
            .prepare("SELECT json FROM records WHERE kind = 'gap' ORDER BY seq DESC")
            .map_err(JournalError::sql("find the last retention summary"))?;
        let mut rows = stmt
            .query([])
            .map_err(JournalError::sql("find the last retention summary"))?;
        while let Some(row) = rows
            .next()
            .map_err(JournalError::sql("find the last retention summary"))?
        {
            let Ok(json) = row.get_ref(0).map(|v| v.as_str().unwrap_or_default()) else {
                continue;
            };
            let Ok(rec) = serde_json::from_str::<Record>(json) else {
                continue;
            };
            if rec.action != "retention" {
                continue;
            }
            let d = rec.detail.unwrap_or_default();
            let (total, kinds) = if d.get("total_removed").is_some() {
                (&d["total_removed"], &d["total_by_kind"])
            } else {
                (&d["removed"], &d["by_kind"])
            };
            let kinds = kinds
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
                        .collect()
                })
                .unwrap_or_default();
            return Ok((total.as_u64().unwrap_or(0), kinds));
        }
        Ok((0, BTreeMap::new()))
    }

    /// Removes the planned prefix, moves the anchor and inserts the summary,
    /// all in one transaction so the removal is never unrecorded.
    pub(crate) fn execute_retention(
        &mut self,
        plan: &RetentionPlan,
        summary: &Sealed,
    ) -> Result<(), JournalError> {
        let last = seq_to_sql(plan.last_seq)?;
        let tx = self
            .conn
            .transaction()
            .map_err(JournalError::sql("begin retention"))?;
        tx.execute("DELETE FROM records WHERE seq <= ?1", [last])
            .map_err(JournalError::sql("delete retained records"))?;
        tx.execute(
            "INSERT OR REPLACE INTO retention(id, seq, hash) VALUES (1, ?1, ?2)",
            params![last, plan.last_hash],
        )
        .map_err(JournalError::sql("move retention anchor"))?;
        tx.execute("DELETE FROM checkpoints WHERE seq < ?1", [last])
            .map_err(JournalError::sql("delete old checkpoints"))?;
        {
            let mut stmt = tx
                .prepare_cached(INSERT_RECORD)
                .map_err(JournalError::sql("prepare insert"))?;
            insert_one(&mut stmt, summary)?;
        }
        tx.commit().map_err(JournalError::sql("commit retention"))
    }

    /// Starts a read transaction so that the following reads all see one
    /// snapshot, even while the daemon keeps writing and pruning.
    pub(crate) fn begin_snapshot(&self) -> Result<(), JournalError> {
        self.conn
            .execute_batch("BEGIN DEFERRED; SELECT count(*) FROM retention;")
            .map_err(JournalError::sql("begin read snapshot"))
    }

    pub(crate) fn end_snapshot(&self) -> Result<(), JournalError> {
        self.conn
            .execute_batch("COMMIT")
            .map_err(JournalError::sql("end read snapshot"))
    }

    /// Streams every record row in seq order; `f` returns whether to go on.
    pub(crate) fn scan_records(
        &self,
        mut f: impl FnMut(ScannedRow<'_>) -> Result<bool, JournalError>,
    ) -> Result<(), JournalError> {
        let mut stmt = self
            .conn
            .prepare(&format!("SELECT {SCAN_COLUMNS} FROM records ORDER BY seq"))
            .map_err(JournalError::sql("scan records"))?;
        let mut rows = stmt.query([]).map_err(JournalError::sql("scan records"))?;
        while let Some(row) = rows.next().map_err(JournalError::sql("scan records"))? {
            if !f(ScannedRow { row })? {
                break;
            }
        }
        Ok(())
    }

    #[cfg(test)]
    pub(crate) fn conn(&self) -> &Connection {
        &self.conn
    }
}

fn insert_one(stmt: &mut rusqlite::CachedStatement<'_>, s: &Sealed) -> Result<(), JournalError> {
    let p = &s.prepared;
    let agent = p.agent();
    stmt.execute(params![
        seq_to_sql(s.seq)?,
        p.ts_us,
        agent.map(|a| a.0),
        agent.map(|a| a.1),
        p.pid,
        p.kind.as_str(),
        p.verdict.as_str(),
        RawText(p.target()),
        s.json,
        s.hash(),
    ])
    .map_err(JournalError::sql("insert record"))?;
    Ok(())
}

/// Binds bytes as TEXT even when they are not UTF-8, so `target` keeps the
/// exact bytes `instr` searches.
struct RawText<'a>(&'a [u8]);

impl ToSql for RawText<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(ValueRef::Text(self.0)))
    }
}

/// One row during [`Store::scan_records`], read leniently: a tampered row
/// must be reported, not turned into a read error.
pub(crate) struct ScannedRow<'a> {
    row: &'a Row<'a>,
}

impl ScannedRow<'_> {
    fn col(&self, i: usize) -> ValueRef<'_> {
        self.row.get_ref(i).unwrap_or(ValueRef::Null)
    }

    pub(crate) fn seq(&self) -> i64 {
        match self.col(0) {
            ValueRef::Integer(i) => i,
            _ => -1,
        }
    }

    pub(crate) fn json(&self) -> Option<&str> {
        match self.col(8) {
            ValueRef::Text(t) => std::str::from_utf8(t).ok(),
            _ => None,
        }
    }

    /// Whether every index column holds what [`insert_one`] would write for
    /// `rec`; otherwise queries could be made to lie about a valid record.
    pub(crate) fn columns_match(&self, rec: &Record) -> bool {
        let ts_us = parse_record_time(&rec.time).map(to_unix_us);
        let text = |i: usize, want: Option<&[u8]>| match (self.col(i), want) {
            (ValueRef::Text(t), Some(w)) => t == w,
            (ValueRef::Null, None) => true,
            _ => false,
        };
        let int = |i: usize, want: Option<i64>| match (self.col(i), want) {
            (ValueRef::Integer(v), Some(w)) => v == w,
            (ValueRef::Null, None) => true,
            _ => false,
        };
        int(1, ts_us)
            && text(2, rec.agent.as_ref().map(|a| a.id.as_bytes()))
            && text(3, rec.agent.as_ref().map(|a| a.name.as_bytes()))
            && int(4, rec.process.as_ref().map(|p| i64::from(p.pid)))
            && text(5, Some(rec.kind.as_str().as_bytes()))
            && text(6, Some(rec.verdict.as_str().as_bytes()))
            && text(7, Some(rec.target.as_bytes()))
            && text(9, Some(rec.hash.as_bytes()))
    }
}

/// Opening a missing file would create an empty journal (or fail with a
/// less telling SQLite error): a wrong path must say so.
fn require_exists(path: &Path) -> Result<(), JournalError> {
    if path.exists() {
        Ok(())
    } else {
        Err(JournalError::NotFound {
            path: path.to_owned(),
        })
    }
}

/// The store's schema version, refused when newer than this build knows.
fn schema_version(conn: &Connection) -> Result<i64, JournalError> {
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(JournalError::sql("read schema version"))?;
    if version > SCHEMA_VERSION {
        return Err(JournalError::SchemaVersion {
            found: version,
            supported: SCHEMA_VERSION,
        });
    }
    Ok(version)
}

/// `file:` URI for `path`, percent-encoding everything but unreserved
/// bytes so that `?`, `#` or `%` in a path cannot add URI parameters.
fn sqlite_uri(path: &Path, immutable: bool) -> String {
    use std::os::unix::ffi::OsStrExt;
    let mut uri = String::from("file:");
    for &b in path.as_os_str().as_bytes() {
        if b.is_ascii_alphanumeric() || b"/-._~".contains(&b) {
            uri.push(char::from(b));
        } else {
            uri.push_str(&format!("%{b:02X}"));
        }
    }
    uri.push_str("?mode=ro");
    if immutable {
        uri.push_str("&immutable=1");
    }
    uri
}

fn parse_stored(seq: u64, json: &str) -> Result<Record, JournalError> {
    serde_json::from_str(json).map_err(|e| JournalError::Corrupt {
        seq,
        reason: format!("stored json does not parse: {e}"),
    })
}

fn seq_from_sql(seq: i64) -> Result<u64, JournalError> {
    u64::try_from(seq).map_err(|_| JournalError::Corrupt {
        seq: 0,
        reason: format!("negative seq {seq} in store"),
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::journal::record::{AgentRef, Kind, Verdict};
    use crate::journal::text::Text;

    /// `n` sealed records with times `start_us + i` and their records.
    pub(crate) fn sealed_batch(
        head: &mut ChainHead,
        n: u64,
        start_us: i64,
    ) -> (Vec<Sealed>, Vec<Record>) {
        (0..n)
            .map(|i| {
                let mut rec = Record::new(
                    Kind::ALL[(i % 8) as usize],
                    "open",
                    format!("/tmp/{i}"),
                    Verdict::Denied,
                    "r",
                    "l",
                )
                .with_agent(AgentRef {
                    id: format!("id{}", i % 3),
                    name: format!("agent{}", i % 3),
                    policy: "p".into(),
                    container: None,
                });
                let ts_us = start_us + i as i64;
                rec.time = crate::journal::record::format_time(
                    std::time::UNIX_EPOCH + Duration::from_micros(ts_us as u64),
                );
                let sealed = head.seal_record(&mut rec, ts_us).unwrap();
                (sealed, rec)
            })
            .unzip()
    }

    #[test]
    fn open_creates_schema_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.db");
        let mut store = Store::open(&path).unwrap();
        assert_eq!(store.head().unwrap(), None);
        let mut head = ChainHead::genesis();
        let (batch, recs) = sealed_batch(&mut head, 10, 1_000_000);
        store.insert_batch(&batch).unwrap();
        drop(store);
        let store = Store::open_existing(&path).unwrap();
        assert_eq!(store.head().unwrap(), Some(head));
        assert_eq!(store.count().unwrap(), 10);
        assert_eq!(store.get(3).unwrap().unwrap(), recs[2]);
        assert_eq!(store.get(11).unwrap(), None);
        let mode: String = store
            .conn()
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
    }

    #[test]
    fn agents_resolve_by_id_name_or_unambiguous_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.db");
        let store = Store::open(&path).unwrap();
        store
            .conn()
            .execute_batch(
                "INSERT INTO agents VALUES ('abc123', 'web'), ('abd456', 'web'), ('ff00', 'db');",
            )
            .unwrap();
        drop(store);
        let store = Store::open_read_only(&path).unwrap();
        assert_eq!(store.resolve_agent("web").unwrap(), "web");
        assert_eq!(store.resolve_agent("abc123").unwrap(), "abc123");
        assert_eq!(store.resolve_agent("abc").unwrap(), "abc123");
        assert_eq!(store.resolve_agent("f").unwrap(), "ff00");
        match store.resolve_agent("ab") {
            Err(JournalError::AmbiguousAgent { candidates, .. }) => {
                assert_eq!(candidates, "abc123 (web), abd456 (web)")
            }
            other => panic!("{other:?}"),
        }
        for unknown in ["", "zz", "abc1234"] {
            assert!(
                matches!(
                    store.resolve_agent(unknown),
                    Err(JournalError::UnknownAgent { .. })
                ),
                "{unknown}"
            );
        }
    }

    #[test]
    fn read_only_open_refuses_to_write() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.db");
        let mut store = Store::open(&path).unwrap();
        let mut head = ChainHead::genesis();
        store
            .insert_batch(&sealed_batch(&mut head, 5, 1_000_000).0)
            .unwrap();
        drop(store);
        let mut ro = Store::open_read_only(&path).unwrap();
        assert_eq!(ro.count().unwrap(), 5);
        assert!(
            ro.insert_batch(&sealed_batch(&mut head, 1, 2_000_000).0)
                .is_err()
        );
        let uri = sqlite_uri(Path::new("/a b/j?x=1#y%.db"), true);
        assert_eq!(uri, "file:/a%20b/j%3Fx%3D1%23y%25.db?mode=ro&immutable=1");
    }

    #[test]
    fn open_existing_refuses_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            Store::open_existing(dir.path().join("nope.db")),
            Err(JournalError::NotFound { .. })
        ));
    }

    #[test]
    fn newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.db");
        let store = Store::open(&path).unwrap();
        store
            .conn()
            .execute_batch("PRAGMA user_version=99")
            .unwrap();
        drop(store);
        assert!(matches!(
            Store::open(&path),
            Err(JournalError::SchemaVersion { found: 99, .. })
        ));
    }

    #[test]
    fn invalid_utf8_target_is_stored_as_exact_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path().join("j.db")).unwrap();
        let mut head = ChainHead::genesis();
        let mut rec = Record::new(Kind::File, "open", "", Verdict::Denied, "r", "l");
        rec.target = Text::new(vec![b'/', 0xff, b'x']);
        rec.time = "2026-01-01T00:00:00.000000Z".into();
        let batch = vec![head.seal_record(&mut rec, 0).unwrap()];
        store.insert_batch(&batch).unwrap();
        let bytes: Vec<u8> = store
            .conn()
            .query_row("SELECT CAST(target AS BLOB) FROM records", [], |r| r.get(0))
            .unwrap();
        assert_eq!(bytes, vec![b'/', 0xff, b'x']);
        assert_eq!(store.get(1).unwrap().unwrap().target, rec.target);
    }

    #[test]
    fn sizes_parse_with_binary_suffixes() {
        assert_eq!(parse_size("500M").unwrap(), 500 << 20);
        assert_eq!(parse_size("2G").unwrap(), 2 << 30);
        assert_eq!(parse_size("64KiB").unwrap(), 64 << 10);
        assert_eq!(parse_size("2mb").unwrap(), 2 << 20);
        assert_eq!(parse_size("1048576").unwrap(), 1 << 20);
        for bad in ["", "M", "1.5G", "2X", "-1G", "99999999999T"] {
            assert!(
                matches!(parse_size(bad), Err(JournalError::InvalidSize { .. })),
                "{bad}"
            );
        }
        let d = default_budget(Path::new("/nonexistent/dir/journal.db"));
        assert!((64 << 20..=1 << 30).contains(&d), "{d}");
    }

    #[test]
    fn budget_cuts_back_to_the_low_watermark() {
        let budget = 10 << 20;
        // The WAL is given an eighth: 8.75 MiB for records.
        let for_records = budget - wal_cap(Some(budget));
        assert_eq!(for_records, budget / 8 * 7);
        assert_eq!(budget_cut(budget, for_records / 10 * 9, 1000), None);
        let used = for_records;
        let remove = budget_cut(budget, used, 1000).unwrap();
        // 1000 records fill it; back to 80% removes about 200.
        assert!((199..=201).contains(&remove), "{remove}");
        assert_eq!(budget_cut(budget, 100 * budget, 10), Some(10));
        assert_eq!(wal_cap(None), 64 << 20);
        assert_eq!(wal_cap(Some(1 << 30)), 64 << 20);
        assert_eq!(wal_cap(Some(2 << 20)), 256 << 10);
    }

    #[test]
    fn a_byte_budget_removes_the_oldest_records() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path().join("j.db")).unwrap();
        store.limit_wal(Some(1 << 20)).unwrap();
        let mut head = ChainHead::genesis();
        for i in 0..10 {
            store
                .insert_batch(&sealed_batch(&mut head, 500, 1_000_000 + i * 1000).0)
                .unwrap();
        }
        let usage = store.usage().unwrap();
        assert!(usage.db_used > 1 << 20, "{usage:?}");
        assert!(usage.db_file >= usage.db_used);
        let policy = Retention {
            max_bytes: Some(1 << 20),
            ..Retention::default()
        };
        let plan = store
            .plan_retention(&policy, SystemTime::now())
            .unwrap()
            .unwrap();
        assert_eq!(plan.rule, "retention.max_bytes");
        assert_eq!(plan.first_seq, 1);
        assert!(plan.removed > 2500 && plan.removed < 5000, "{plan:?}");
        let roomy = Retention {
            max_bytes: Some(1 << 30),
            ..Retention::default()
        };
        assert_eq!(
            store.plan_retention(&roomy, SystemTime::now()).unwrap(),
            None
        );
    }

    #[test]
    fn retention_plans_a_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path().join("j.db")).unwrap();
        let mut head = ChainHead::genesis();
        store
            .insert_batch(&sealed_batch(&mut head, 20, 1_000_000).0)
            .unwrap();
        let none = Retention::default();
        assert_eq!(
            store.plan_retention(&none, SystemTime::now()).unwrap(),
            None
        );

        let by_count = Retention {
            max_records: Some(15),
            max_age: None,
            max_bytes: None,
        };
        let plan = store
            .plan_retention(&by_count, SystemTime::now())
            .unwrap()
            .unwrap();
        // 20 records, limit 15, one slot for the summary: remove 6.
        assert_eq!((plan.first_seq, plan.last_seq, plan.removed), (1, 6, 6));
        assert_eq!(plan.by_kind.values().sum::<u64>(), 6);
        assert_eq!(plan.last_hash, store.get(6).unwrap().unwrap().hash);

        // Times are 1 s + i µs; keep everything at or after 1 s + 12 µs.
        let now = std::time::UNIX_EPOCH + Duration::from_micros(1_000_012 + 3_600_000_000);
        let by_age = Retention {
            max_records: None,
            max_age: Some(Duration::from_secs(3600)),
            max_bytes: None,
        };
        let plan = store.plan_retention(&by_age, now).unwrap().unwrap();
        assert_eq!((plan.last_seq, plan.rule), (12, "retention.max_age"));
        let under = Retention {
            max_records: Some(100),
            max_age: None,
            max_bytes: None,
        };
        assert_eq!(store.plan_retention(&under, now).unwrap(), None);
    }
}
