//! Verification: recomputes the chain of a store and checks it against the
//! store's checkpoints, the side file and heads held off this host. Reads
//! only; never writes to what it checks.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::fs::File;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::JournalError;
use super::checkpoint::{Checkpoint, checkpoint_path, read_json_lines, read_side_file};
use super::hash::{ChainHead, decode_hash, stored_hash};
use super::record::{Kind, Record};
use super::store::{ScannedRow, Store};

/// The first thing verification found wrong.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "problem", rename_all = "snake_case")]
pub enum Problem {
    /// The record stored at `seq` is not the record that was hashed: its
    /// content, index columns or hash were changed, or it disagrees with a
    /// checkpoint.
    Altered { seq: u64 },
    /// The chain jumps from `after_seq` over `expected`: records were
    /// deleted (outside of recorded retention).
    Missing { after_seq: u64, expected: u64 },
    /// The row at position `seq` holds a different record (moved or swapped).
    Reordered { seq: u64 },
    /// The record at `seq` is self-consistent but does not link to its
    /// predecessor: one of the two was rewritten and re-hashed.
    BrokenLink { seq: u64 },
    /// The newest records were removed: a checkpoint vouches for
    /// `checkpoint_seq` but the chain ends at `head_seq`.
    Truncated { head_seq: u64, checkpoint_seq: u64 },
    /// A head held off this host (`--head`, `--mirror`) names `seq`, but
    /// the store ends at `head_seq`: the store was rolled back.
    RolledBack { head_seq: u64, seq: u64 },
    /// A head held off this host names `seq` with another hash than the
    /// store's record `seq`.
    HeadMismatch { seq: u64 },
    /// The checkpoint side file is gone; without it a truncation of the
    /// newest records together with the checkpoint table goes unseen.
    CheckpointFileMissing { path: String },
    /// The store cannot be read as a journal (corrupt, not SQLite, not
    /// guard's schema).
    Unreadable { reason: String },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Altered { seq } => write!(f, "record {seq} was altered"),
            Problem::Missing {
                after_seq,
                expected,
            } => write!(
                f,
                "record {expected} is missing (chain jumps after {after_seq})"
            ),
            Problem::Reordered { seq } => write!(f, "record at position {seq} was moved"),
            Problem::BrokenLink { seq } => write!(
                f,
                "record {seq} does not link to record {}; one of them was rewritten",
                seq.saturating_sub(1)
            ),
            Problem::Truncated {
                head_seq,
                checkpoint_seq,
            } => write!(
                f,
                "journal was truncated: it ends at {head_seq} but checkpoint {checkpoint_seq} exists"
            ),
            Problem::RolledBack { head_seq, seq } => write!(
                f,
                "journal was rolled back: it ends at {head_seq} but the head held off this host is record {seq}"
            ),
            Problem::HeadMismatch { seq } => write!(
                f,
                "record {seq} differs from the head held off this host (altered or replaced)"
            ),
            Problem::CheckpointFileMissing { path } => write!(
                f,
                "checkpoint side file {path} is missing: truncation cannot be ruled out"
            ),
            Problem::Unreadable { reason } => write!(f, "store cannot be read: {reason}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyReport {
    /// Records checked (up to the first problem).
    pub records: u64,
    pub ok: bool,
    pub first_problem: Option<Problem>,
    /// Last seq that was reached in order.
    pub head_seq: u64,
    /// Newest checkpoint found in the side file or the store.
    pub checkpoint_seq: Option<u64>,
    /// Newest head held off this host that was checked against the store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_head_seq: Option<u64>,
}

/// Walks the whole store in seq order and checks hashes, links, the
/// gap-free sequence, the index columns, retention and checkpoints.
/// Never writes to the store (see [`Store::open_read_only`]).
pub fn verify(store_path: impl AsRef<Path>) -> Result<VerifyReport, JournalError> {
    verify_against(store_path, &[])
}

/// [`verify`], and also that every head in `heads` (kept off this host:
/// `--head`, the newest line of a mirror) is in the store with the same
/// hash. Local files alone cannot reveal a rollback of the store and side
/// file together; an off-host head can.
pub fn verify_against(
    store_path: impl AsRef<Path>,
    heads: &[ChainHead],
) -> Result<VerifyReport, JournalError> {
    let path = store_path.as_ref();
    let unreadable = |e: JournalError| match &e {
        JournalError::Sqlite { source, .. } if is_corruption(source) => Ok(VerifyReport {
            records: 0,
            ok: false,
            first_problem: Some(Problem::Unreadable {
                reason: super::error_chain(&e),
            }),
            head_seq: 0,
            checkpoint_seq: None,
            external_head_seq: None,
        }),
        _ => Err(e),
    };
    let store = match Store::open_read_only(path) {
        Ok(s) => s,
        Err(e) => return unreadable(e),
    };
    let cp_path = checkpoint_path(path);
    // The side file is read before the store's snapshot is taken: the
    // writer appends a checkpoint only after committing what it names, so
    // the snapshot then contains every record the file vouches for.
    let side_file = read_side_file(&cp_path)?;
    let side_exists = side_file.is_some();
    let report = store.begin_snapshot().and_then(|()| {
        let r = verify_snapshot(&store, side_file.unwrap_or_default(), heads);
        store.end_snapshot()?;
        r
    });
    let mut report = match report {
        Ok(r) => r,
        Err(e) => return unreadable(e),
    };
    if report.ok && !side_exists {
        // guardd creates the side file when it opens the journal, so its
        // absence means it was removed (or not copied with the store).
        report.ok = false;
        report.first_problem = Some(Problem::CheckpointFileMissing {
            path: cp_path.display().to_string(),
        });
    }
    Ok(report)
}

/// Errors that mean the file is not a readable guard journal, as opposed
/// to this reader's situation (busy, no permission, out of memory).
fn is_corruption(e: &rusqlite::Error) -> bool {
    use rusqlite::ErrorCode as C;
    match e {
        rusqlite::Error::SqliteFailure(f, _) => !matches!(
            f.code,
            C::DatabaseBusy
                | C::DatabaseLocked
                | C::CannotOpen
                | C::PermissionDenied
                | C::OutOfMemory
                | C::ReadOnly
                | C::SystemIoFailure
        ),
        rusqlite::Error::FromSqlConversionFailure(..)
        | rusqlite::Error::InvalidColumnType(..)
        | rusqlite::Error::IntegralValueOutOfRange(..) => true,
        _ => false,
    }
}

/// Parses `SEQ:HASH` as printed by `verify` and carried by every mirror
/// line (`seq`, `hash`).
pub fn parse_head(input: &str) -> Result<ChainHead, JournalError> {
    let bad = || JournalError::InvalidHead {
        input: input.to_owned(),
    };
    let (seq, hash) = input.trim().split_once(':').ok_or_else(bad)?;
    let seq: u64 = seq.parse().map_err(|_| bad())?;
    let hash = hash.to_ascii_lowercase();
    if seq == 0 || decode_hash(&hash).is_none() {
        return Err(bad());
    }
    Ok(ChainHead { seq, hash })
}

/// The newest head (largest `seq`) in a JSON-lines mirror. Every complete
/// line must be a record with `seq` and `hash`; a final line without a
/// newline that does not parse is a write cut short and is skipped.
pub fn mirror_head(path: &Path) -> Result<Option<ChainHead>, JournalError> {
    #[derive(Deserialize)]
    struct Line {
        seq: u64,
        hash: String,
    }
    let file = File::open(path).map_err(JournalError::io("open mirror", path))?;
    let mut newest: Option<ChainHead> = None;
    read_json_lines(
        file,
        path,
        "read mirror",
        |body| {
            let l = serde_json::from_slice::<Line>(body).map_err(|e| e.to_string())?;
            decode_hash(&l.hash).ok_or_else(|| "hash is not 64 hex digits".to_owned())?;
            Ok(l)
        },
        |line, reason| JournalError::CorruptMirror {
            path: path.to_owned(),
            line,
            reason,
        },
        |l| {
            if newest.as_ref().is_none_or(|h| l.seq > h.seq) {
                newest = Some(ChainHead {
                    seq: l.seq,
                    hash: l.hash,
                });
            }
        },
    )?;
    Ok(newest)
}

fn verify_snapshot(
    store: &Store,
    side_file: Vec<Checkpoint>,
    heads: &[ChainHead],
) -> Result<VerifyReport, JournalError> {
    // Both sources are checked: the side file survives deletion from the
    // store, the table survives deletion of the side file.
    let mut checkpoints: HashMap<u64, Vec<String>> = HashMap::new();
    for cp in side_file.into_iter().chain(store.checkpoints()?) {
        checkpoints.entry(cp.seq).or_default().push(cp.hash);
    }
    let checkpoint_seq = checkpoints.keys().copied().max();

    // id -> names, so the walk can check membership without allocating.
    let agents = store.agent_names()?;

    let anchor = store.retention_anchor()?;
    let start = anchor.clone().unwrap_or_else(ChainHead::genesis);
    let mut walk = Walk {
        expected: start.seq.saturating_add(1),
        prev_hash: start.hash.clone(),
        records: 0,
        explained_upto: 0,
        problem: None,
        agents,
    };
    if let Some(a) = &anchor {
        let anchor_ok = decode_hash(&a.hash).is_some()
            && checkpoints
                .get(&a.seq)
                .is_none_or(|hs| hs.iter().all(|h| *h == a.hash));
        if !anchor_ok {
            walk.problem = Some(Problem::BrokenLink {
                seq: a.seq.saturating_add(1),
            });
        }
    }
    if walk.problem.is_none() {
        store.scan_records(|row| Ok(walk.step(row, &checkpoints)))?;
    }

    let head_seq = walk.expected.saturating_sub(1);
    if walk.problem.is_none()
        && let Some(a) = &anchor
        && a.seq > walk.explained_upto
    {
        // Retention always appends a summary naming the last removed seq;
        // an anchor no summary explains means records were dropped by hand.
        walk.problem = Some(Problem::Missing {
            after_seq: walk.explained_upto,
            expected: walk.explained_upto + 1,
        });
    }
    if walk.problem.is_none()
        && let Some(cp) = checkpoint_seq
        && cp > head_seq
    {
        walk.problem = Some(Problem::Truncated {
            head_seq,
            checkpoint_seq: cp,
        });
    }
    let external_head_seq = heads.iter().map(|h| h.seq).max();
    for h in heads {
        if walk.problem.is_some() {
            break;
        }
        if h.seq > head_seq {
            walk.problem = Some(Problem::RolledBack {
                head_seq,
                seq: h.seq,
            });
            break;
        }
        // Every row was checked above, so the hash column is the record's.
        let stored = match store.hash_at(h.seq)? {
            Some(hash) => Some(hash),
            None => anchor
                .as_ref()
                .filter(|a| a.seq == h.seq)
                .map(|a| a.hash.clone()),
        };
        // Older than the retained records (and not the anchor): removed by
        // recorded retention, nothing left to compare.
        if let Some(stored) = stored
            && !stored.eq_ignore_ascii_case(&h.hash)
        {
            walk.problem = Some(Problem::HeadMismatch { seq: h.seq });
        }
    }
    Ok(VerifyReport {
        records: walk.records,
        ok: walk.problem.is_none(),
        first_problem: walk.problem,
        head_seq,
        checkpoint_seq,
        external_head_seq,
    })
}

struct Walk {
    expected: u64,
    prev_hash: String,
    records: u64,
    explained_upto: u64,
    problem: Option<Problem>,
    agents: HashMap<String, HashSet<String>>,
}

impl Walk {
    /// Checks one row; returns whether to continue.
    fn step(&mut self, row: ScannedRow<'_>, checkpoints: &HashMap<u64, Vec<String>>) -> bool {
        match self.check(row, checkpoints) {
            Ok(()) => true,
            Err(p) => {
                self.problem = Some(p);
                false
            }
        }
    }

    fn check(
        &mut self,
        row: ScannedRow<'_>,
        checkpoints: &HashMap<u64, Vec<String>>,
    ) -> Result<(), Problem> {
        let Ok(seq) = u64::try_from(row.seq()) else {
            return Err(Problem::Altered { seq: 0 });
        };
        if seq < self.expected {
            // Only possible for rows at or below the retention anchor.
            return Err(Problem::Altered { seq });
        }
        if seq > self.expected {
            return Err(Problem::Missing {
                after_seq: self.expected - 1,
                expected: self.expected,
            });
        }
        let altered = Problem::Altered { seq };
        let json = row.json().ok_or(altered.clone())?;
        let rec: Record = serde_json::from_str(json).map_err(|_| altered.clone())?;
        if rec.seq != seq {
            return Err(Problem::Reordered { seq });
        }
        let own_prev = decode_hash(&rec.prev).ok_or(altered.clone())?;
        if stored_hash(&own_prev, json).as_deref() != Some(rec.hash.as_str())
            || !row.columns_match(&rec)
        {
            return Err(altered);
        }
        if let Some(a) = &rec.agent
            && !self
                .agents
                .get(&a.id)
                .is_some_and(|names| names.contains(&a.name))
        {
            // Queries by name go through the agents table; a missing pair
            // would hide this record from them.
            return Err(altered);
        }
        if rec.prev != self.prev_hash {
            return Err(Problem::BrokenLink { seq });
        }
        if let Some(hashes) = checkpoints.get(&seq)
            && hashes.iter().any(|h| *h != rec.hash)
        {
            return Err(altered);
        }
        if rec.kind == Kind::Gap
            && rec.action == "retention"
            && let Some(last) = rec
                .detail
                .as_ref()
                .and_then(|d| d.get("last_seq"))
                .and_then(|v| v.as_u64())
        {
            self.explained_upto = self.explained_upto.max(last);
        }
        self.prev_hash = rec.hash;
        self.expected = seq + 1;
        self.records += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::checkpoint::{CheckpointFile, read_checkpoint_file};
    use crate::journal::hash::GENESIS_HASH;
    use crate::journal::text::Text;
    use sha2::{Digest, Sha256};

    #[test]
    fn problems_display() {
        let p = Problem::Missing {
            after_seq: 4,
            expected: 5,
        };
        assert_eq!(p.to_string(), "record 5 is missing (chain jumps after 4)");
        assert_eq!(
            serde_json::to_string(&Problem::Altered { seq: 3 }).unwrap(),
            r#"{"problem":"altered","seq":3}"#
        );
    }

    mod tamper {
        use super::*;
        use crate::journal::store::Store;
        use crate::journal::writer::tests::journal_with;
        use rusqlite::Connection;

        fn db(path: &Path) -> Connection {
            Connection::open(path).unwrap()
        }

        fn problem(path: &Path) -> Option<Problem> {
            let report = verify(path).unwrap();
            assert_eq!(report.ok, report.first_problem.is_none());
            report.first_problem
        }

        #[test]
        fn intact_store_passes() {
            let (_dir, path) = journal_with(100);
            let report = verify(&path).unwrap();
            assert_eq!(
                report,
                VerifyReport {
                    records: 100,
                    ok: true,
                    first_problem: None,
                    head_seq: 100,
                    checkpoint_seq: Some(100),
                    external_head_seq: None,
                }
            );
        }

        #[test]
        fn edited_target_column_is_altered() {
            let (_dir, path) = journal_with(100);
            db(&path)
                .execute(
                    "UPDATE records SET target = '/tmp/innocent' WHERE seq = 40",
                    [],
                )
                .unwrap();
            assert_eq!(problem(&path), Some(Problem::Altered { seq: 40 }));
        }

        #[test]
        fn edited_target_in_json_is_altered() {
            let (_dir, path) = journal_with(100);
            // Record 41 is event 40.
            let n = db(&path)
                .execute(
                    "UPDATE records SET json = replace(json, '10.0.0.40:443', '10.0.0.99:443'), \
                     target = '10.0.0.99:443/tcp' WHERE seq = 41",
                    [],
                )
                .unwrap();
            assert_eq!(n, 1);
            assert_eq!(problem(&path), Some(Problem::Altered { seq: 41 }));
        }

        #[test]
        fn deleted_record_is_missing() {
            let (_dir, path) = journal_with(100);
            db(&path)
                .execute("DELETE FROM records WHERE seq = 50", [])
                .unwrap();
            assert_eq!(
                problem(&path),
                Some(Problem::Missing {
                    after_seq: 49,
                    expected: 50
                })
            );
        }

        #[test]
        fn swapped_records_are_reordered() {
            let (_dir, path) = journal_with(100);
            db(&path)
                .execute_batch(
                    "UPDATE records SET seq = -31 WHERE seq = 31;
                     UPDATE records SET seq = 31 WHERE seq = 30;
                     UPDATE records SET seq = 30 WHERE seq = -31;",
                )
                .unwrap();
            assert_eq!(problem(&path), Some(Problem::Reordered { seq: 30 }));
        }

        #[test]
        fn truncated_tail_is_detected_from_the_side_file() {
            let (_dir, path) = journal_with(100);
            db(&path)
                .execute_batch("DELETE FROM records WHERE seq > 90; DELETE FROM checkpoints;")
                .unwrap();
            assert_eq!(
                problem(&path),
                Some(Problem::Truncated {
                    head_seq: 90,
                    checkpoint_seq: 100
                })
            );
        }

        /// Rewrites records `from..=to` with a new target and a valid,
        /// recomputed chain, as an attacker who knows the scheme would.
        fn rewrite(path: &Path, from: u64, to: u64) {
            let store = Store::open_existing(path).unwrap();
            let prev = store.get(from - 1).unwrap().unwrap();
            let mut head = ChainHead {
                seq: from - 1,
                hash: prev.hash,
            };
            let conn = db(path);
            for seq in from..=to {
                let mut r = store.get(seq).unwrap().unwrap();
                r.target = Text::from("/tmp/innocent");
                let json = head.seal_record(&mut r, 0).map(|s| s.json).unwrap();
                conn.execute(
                    "UPDATE records SET json = ?1, hash = ?2, target = '/tmp/innocent' WHERE seq = ?3",
                    rusqlite::params![json, r.hash, seq as i64],
                )
                .unwrap();
            }
        }

        #[test]
        fn rehashed_record_breaks_the_next_link() {
            let (_dir, path) = journal_with(100);
            rewrite(&path, 20, 20);
            assert_eq!(problem(&path), Some(Problem::BrokenLink { seq: 21 }));
        }

        #[test]
        fn rehashed_tail_disagrees_with_the_checkpoint() {
            let (_dir, path) = journal_with(100);
            rewrite(&path, 95, 100);
            assert_eq!(problem(&path), Some(Problem::Altered { seq: 100 }));
        }

        #[test]
        fn deleted_head_of_chain_is_missing() {
            let (_dir, path) = journal_with(30);
            db(&path)
                .execute("DELETE FROM records WHERE seq <= 10", [])
                .unwrap();
            assert_eq!(
                problem(&path),
                Some(Problem::Missing {
                    after_seq: 0,
                    expected: 1
                })
            );
        }

        #[test]
        fn forged_retention_anchor_is_missing() {
            let (_dir, path) = journal_with(30);
            let hash10 = Store::open_existing(&path)
                .unwrap()
                .get(10)
                .unwrap()
                .unwrap()
                .hash;
            db(&path)
                .execute_batch(&format!(
                    "DELETE FROM records WHERE seq <= 10;
                     INSERT INTO retention(id, seq, hash) VALUES (1, 10, '{hash10}');"
                ))
                .unwrap();
            assert_eq!(
                problem(&path),
                Some(Problem::Missing {
                    after_seq: 0,
                    expected: 1
                })
            );
        }

        #[test]
        fn removed_agent_name_lookup_is_altered() {
            let (_dir, path) = journal_with(30);
            // Events cycle over agent0..agent2; record 2 is the first of agent1.
            db(&path)
                .execute("DELETE FROM agents WHERE agent_name = 'agent1'", [])
                .unwrap();
            assert_eq!(problem(&path), Some(Problem::Altered { seq: 2 }));
        }

        fn sha(path: &Path) -> Vec<u8> {
            Sha256::digest(std::fs::read(path).unwrap()).to_vec()
        }

        #[test]
        fn verify_never_changes_the_file_it_checks() {
            let (dir, path) = journal_with(50);
            // A copy without its WAL, as a reviewer would get it.
            let copy = dir.path().join("copy.db");
            std::fs::copy(&path, &copy).unwrap();
            std::fs::copy(checkpoint_path(&path), checkpoint_path(&copy)).unwrap();
            let before = (sha(&copy), sha(&checkpoint_path(&copy)));
            for _ in 0..2 {
                let report = verify(&copy).unwrap();
                assert!(report.ok, "{report:?}");
                assert_eq!(report.records, 50);
            }
            assert_eq!(before, (sha(&copy), sha(&checkpoint_path(&copy))));
            for suffix in ["-wal", "-shm"] {
                let side = format!("{}{suffix}", copy.display());
                assert!(!Path::new(&side).exists(), "{side} was created");
            }
        }

        #[test]
        fn a_corrupt_store_is_not_intact_with_the_reason() {
            let (_dir, path) = journal_with(20);
            let mut bytes = std::fs::read(&path).unwrap();
            bytes[..16].copy_from_slice(b"not a database!!");
            std::fs::write(&path, &bytes).unwrap();
            match problem(&path) {
                Some(Problem::Unreadable { reason }) => {
                    assert!(reason.contains("not a database"), "{reason}")
                }
                other => panic!("{other:?}"),
            }
            std::fs::write(&path, b"").unwrap();
            assert!(matches!(problem(&path), Some(Problem::Unreadable { .. })));
        }

        #[test]
        fn a_missing_side_file_is_reported() {
            let (_dir, path) = journal_with(20);
            std::fs::remove_file(checkpoint_path(&path)).unwrap();
            assert!(matches!(
                problem(&path),
                Some(Problem::CheckpointFileMissing { .. })
            ));
        }

        #[test]
        fn a_side_file_without_its_final_newline_still_counts() {
            let (_dir, path) = journal_with(100);
            let side = checkpoint_path(&path);
            let text = std::fs::read_to_string(&side).unwrap();
            std::fs::write(&side, text.trim_end()).unwrap();
            assert_eq!(
                read_checkpoint_file(&side).unwrap().last().unwrap().seq,
                100
            );
            db(&path)
                .execute_batch("DELETE FROM records WHERE seq > 90; DELETE FROM checkpoints;")
                .unwrap();
            assert_eq!(
                problem(&path),
                Some(Problem::Truncated {
                    head_seq: 90,
                    checkpoint_seq: 100
                })
            );
            // Reopening for writing ends the line instead of dropping it.
            let mut f = CheckpointFile::open(side.clone()).unwrap();
            f.append(&Checkpoint {
                seq: 101,
                hash: GENESIS_HASH.into(),
                time: "t".into(),
            })
            .unwrap();
            let seqs: Vec<u64> = read_checkpoint_file(&side)
                .unwrap()
                .iter()
                .map(|c| c.seq)
                .collect();
            assert_eq!(&seqs[seqs.len() - 2..], &[100, 101]);
        }

        #[test]
        fn a_rollback_of_store_and_side_file_needs_the_off_host_head() {
            let (dir, path) = journal_with(100);
            let head = Store::open_read_only(&path)
                .unwrap()
                .head()
                .unwrap()
                .unwrap();
            let mirror = dir.path().join("mirror.jsonl");
            {
                let store = Store::open_read_only(&path).unwrap();
                let mut text = String::new();
                for seq in 1..=100 {
                    text.push_str(
                        &serde_json::to_string(&store.get(seq).unwrap().unwrap()).unwrap(),
                    );
                    text.push('\n');
                }
                // A line cut short by a crash of the shipper is skipped.
                text.push_str("{\"seq\":101,\"ha");
                std::fs::write(&mirror, text).unwrap();
            }
            assert_eq!(mirror_head(&mirror).unwrap(), Some(head.clone()));
            let r = verify_against(&path, std::slice::from_ref(&head)).unwrap();
            assert!(r.ok, "{r:?}");
            assert_eq!(r.external_head_seq, Some(100));

            // Roll back: the newest ten records, their checkpoint rows and
            // side-file lines all go. Local checks cannot tell.
            db(&path)
                .execute_batch(
                    "DELETE FROM records WHERE seq > 90; DELETE FROM checkpoints WHERE seq > 90;",
                )
                .unwrap();
            let side = checkpoint_path(&path);
            let kept: Vec<Checkpoint> = read_checkpoint_file(&side)
                .unwrap()
                .into_iter()
                .filter(|c| c.seq <= 90)
                .collect();
            let mut text = String::new();
            for c in &kept {
                text.push_str(&serde_json::to_string(c).unwrap());
                text.push('\n');
            }
            std::fs::write(&side, text).unwrap();
            assert_eq!(problem(&path), None);
            assert_eq!(
                verify_against(&path, std::slice::from_ref(&head))
                    .unwrap()
                    .first_problem,
                Some(Problem::RolledBack {
                    head_seq: 90,
                    seq: 100
                })
            );
            let from_mirror = mirror_head(&mirror).unwrap().unwrap();
            assert!(!verify_against(&path, &[from_mirror]).unwrap().ok);

            // A head that names a present record with another hash.
            let wrong = ChainHead {
                seq: 50,
                hash: GENESIS_HASH.into(),
            };
            assert_eq!(
                verify_against(&path, &[wrong]).unwrap().first_problem,
                Some(Problem::HeadMismatch { seq: 50 })
            );
        }

        #[test]
        fn heads_and_mirrors_parse_strictly() {
            let h = format!("12:{}", "Ab".repeat(32));
            assert_eq!(
                parse_head(&h).unwrap(),
                ChainHead {
                    seq: 12,
                    hash: "ab".repeat(32)
                }
            );
            for bad in ["", "12", "x:00", "12:abc", &format!("0:{}", "a".repeat(64))] {
                assert!(
                    matches!(parse_head(bad), Err(JournalError::InvalidHead { .. })),
                    "{bad}"
                );
            }
            let dir = tempfile::tempdir().unwrap();
            let m = dir.path().join("m");
            std::fs::write(&m, "garbage\n{}\n").unwrap();
            assert!(matches!(
                mirror_head(&m),
                Err(JournalError::CorruptMirror { line: 1, .. })
            ));
            std::fs::write(&m, "").unwrap();
            assert_eq!(mirror_head(&m).unwrap(), None);
        }

        #[test]
        fn missing_store_is_an_error() {
            let dir = tempfile::tempdir().unwrap();
            assert!(matches!(
                verify(dir.path().join("nope.db")),
                Err(JournalError::NotFound { .. })
            ));
        }
    }
}
