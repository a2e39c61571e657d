//! Filters over the journal ([`Filter`], [`parse_time`]): as SQL for the
//! store, and as a predicate for records arriving live on `--follow`. Both
//! must agree. Below the store, so the store runs filters without a cycle.

use std::time::{Duration, SystemTime};

use rusqlite::types::Value;

use super::record::{Kind, Record, Verdict, to_unix_us};
use super::{JournalError, seq_to_sql};

/// Which records to return. Every set field must match; time bounds are
/// inclusive.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Matches the agent's id or its name.
    pub agent: Option<String>,
    pub kind: Option<Kind>,
    pub verdict: Option<Verdict>,
    pub since: Option<SystemTime>,
    pub until: Option<SystemTime>,
    pub pid: Option<u32>,
    /// Byte-wise, case-sensitive substring of the target.
    pub target_contains: Option<String>,
    /// Only records with a larger seq (for paging and catching up).
    pub after_seq: Option<u64>,
    pub limit: Option<usize>,
    /// With `limit`: return the newest matches instead of the oldest
    /// (still in ascending order), like `tail -n`.
    pub tail: bool,
}

impl Filter {
    /// The same predicate as the SQL [`Store::query`] runs.
    pub fn matches(&self, r: &Record) -> bool {
        if let Some(agent) = &self.agent
            && !r
                .agent
                .as_ref()
                .is_some_and(|a| a.id == *agent || a.name == *agent)
        {
            return false;
        }
        if self.kind.is_some_and(|k| k != r.kind) || self.verdict.is_some_and(|v| v != r.verdict) {
            return false;
        }
        if self.since.is_some() || self.until.is_some() {
            let Some(us) = r.timestamp().map(to_unix_us) else {
                return false;
            };
            if self.since.is_some_and(|s| us < to_unix_us(s))
                || self.until.is_some_and(|u| us > to_unix_us(u))
            {
                return false;
            }
        }
        if let Some(pid) = self.pid
            && r.process.as_ref().is_none_or(|p| p.pid != pid)
        {
            return false;
        }
        if let Some(needle) = &self.target_contains
            && !r.target.contains(needle.as_bytes())
        {
            return false;
        }
        self.after_seq.is_none_or(|after| r.seq > after)
    }

    /// The SQL and its parameters. Parameters are always bound, never
    /// spliced, because filter values come from the command line.
    pub(crate) fn to_sql(&self) -> (String, Vec<Value>) {
        let mut conds: Vec<String> = Vec::new();
        let mut values: Vec<Value> = Vec::new();
        let bind = |values: &mut Vec<Value>, v: Value| {
            values.push(v);
            format!("?{}", values.len())
        };
        // Without statistics SQLite takes any equality on an indexed column
        // to be selective and would drive an agent query from the kind or
        // verdict index (already in seq order, so no sort). Those have a
        // handful of values; the agent must drive. So the agent's ids are
        // looked up in the agents table and matched as a row value together
        // with the kind (one seek per id into records_agent_id), no
        // standalone kind term is left for the planner to prefer, and a unary
        // `+` keeps the verdict index out. The plain OR that follows keeps
        // the exact id-or-name semantics of `matches`.
        let kind_value = self.kind.map(|k| Value::Text(k.as_str().into()));
        if let Some(agent) = &self.agent {
            let a = bind(&mut values, Value::Text(agent.clone()));
            let ids =
                format!("SELECT agent_id FROM agents WHERE agent_id = {a} OR agent_name = {a}");
            conds.push(match kind_value {
                Some(kv) => {
                    let k = bind(&mut values, kv);
                    format!("(agent_id, kind) IN (SELECT agent_id, {k} FROM agents WHERE agent_id = {a} OR agent_name = {a})")
                }
                None => format!("agent_id IN ({ids})"),
            });
            conds.push(format!("(agent_id = {a} OR agent_name = {a})"));
        } else if let Some(kv) = kind_value {
            let k = bind(&mut values, kv);
            conds.push(format!("kind = {k}"));
        }
        if let Some(verdict) = self.verdict {
            let p = bind(&mut values, Value::Text(verdict.as_str().into()));
            let plus = if self.agent.is_some() { "+" } else { "" };
            conds.push(format!("{plus}verdict = {p}"));
        }
        if let Some(since) = self.since {
            let p = bind(&mut values, Value::Integer(to_unix_us(since)));
            conds.push(format!("ts_us >= {p}"));
        }
        if let Some(until) = self.until {
            let p = bind(&mut values, Value::Integer(to_unix_us(until)));
            conds.push(format!("ts_us <= {p}"));
        }
        if let Some(pid) = self.pid {
            let p = bind(&mut values, Value::Integer(i64::from(pid)));
            conds.push(format!("pid = {p}"));
        }
        if let Some(needle) = &self.target_contains {
            let p = bind(&mut values, Value::Text(needle.clone()));
            conds.push(format!("instr(target, {p}) > 0"));
        }
        if let Some(after) = self.after_seq {
            // A seq beyond i64 matches nothing; i64::MAX says the same.
            let after = seq_to_sql(after).unwrap_or(i64::MAX);
            let p = bind(&mut values, Value::Integer(after));
            conds.push(format!("seq > {p}"));
        }
        let mut sql = String::from("SELECT seq, json FROM records");
        if !conds.is_empty() {
            sql.push_str(" WHERE ");
            sql.push_str(&conds.join(" AND "));
        }
        sql.push_str(if self.tail {
            " ORDER BY seq DESC"
        } else {
            " ORDER BY seq"
        });
        if let Some(limit) = self.limit {
            let p = bind(
                &mut values,
                Value::Integer(i64::try_from(limit).unwrap_or(i64::MAX)),
            );
            sql.push_str(&format!(" LIMIT {p}"));
        }
        (sql, values)
    }
}

/// Parses a time bound: RFC 3339 (`2026-11-22T03:04:05Z`, with optional
/// fraction and `+HH:MM` offset; a space may replace `T`), `now`, or a
/// relative duration meaning `now` minus it (`30s`, `10m`, `2h`, `1d`,
/// `1h 30m`).
pub fn parse_time(s: &str, now: SystemTime) -> Result<SystemTime, JournalError> {
    let s = s.trim();
    let invalid = |reason: String| JournalError::InvalidTime {
        input: s.to_owned(),
        reason,
    };
    if s.eq_ignore_ascii_case("now") {
        return Ok(now);
    }
    if s.as_bytes().first().is_some_and(u8::is_ascii_digit) && s.as_bytes().get(4) == Some(&b'-') {
        return parse_absolute(s).map_err(invalid);
    }
    let d = humantime::parse_duration(s).map_err(|e| invalid(e.to_string()))?;
    now.checked_sub(d)
        .ok_or_else(|| invalid("too far in the past".into()))
}

fn parse_absolute(s: &str) -> Result<SystemTime, String> {
    let (base, offset) = split_offset(s);
    let t = humantime::parse_rfc3339_weak(base).map_err(|e| e.to_string())?;
    // Local time = UTC + offset, so UTC = local - offset.
    let shifted = if offset >= 0 {
        t.checked_sub(Duration::from_secs(offset.unsigned_abs()))
    } else {
        t.checked_add(Duration::from_secs(offset.unsigned_abs()))
    };
    shifted.ok_or_else(|| "out of range".to_owned())
}

/// Splits a trailing `Z` or `±HH:MM` off; returns the offset in seconds.
fn split_offset(s: &str) -> (&str, i64) {
    if let Some(base) = s.strip_suffix(['Z', 'z']) {
        return (base, 0);
    }
    let b = s.as_bytes();
    if b.len() > 6 {
        let tail = &b[b.len() - 6..];
        let sign = match tail[0] {
            b'+' => 1,
            b'-' => -1,
            _ => return (s, 0),
        };
        let digits = [tail[1], tail[2], tail[4], tail[5]];
        if tail[3] == b':' && digits.iter().all(u8::is_ascii_digit) {
            let n = |i: usize| i64::from(digits[i] - b'0');
            let secs = (n(0) * 10 + n(1)) * 3600 + (n(2) * 10 + n(3)) * 60;
            // The tail is ASCII, so this is a char boundary.
            return (&s[..s.len() - 6], sign * secs);
        }
    }
    (s, 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::hash::ChainHead;
    use crate::journal::store::Store;
    use crate::journal::store::tests::sealed_batch;
    use std::time::UNIX_EPOCH;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn parse_time_forms() {
        let now = at(1_795_316_645);
        assert_eq!(
            parse_time("2026-11-22T03:04:05Z", now).unwrap(),
            at(1_795_316_645)
        );
        assert_eq!(
            parse_time("2026-11-22T03:04:05.5Z", now).unwrap(),
            at(1_795_316_645) + Duration::from_millis(500)
        );
        assert_eq!(
            parse_time("2026-11-22T05:04:05+02:00", now).unwrap(),
            at(1_795_316_645)
        );
        assert_eq!(
            parse_time("2026-11-22T01:34:05-01:30", now).unwrap(),
            at(1_795_316_645)
        );
        assert_eq!(
            parse_time("2026-11-22 03:04:05", now).unwrap(),
            at(1_795_316_645)
        );
        assert_eq!(parse_time("10m", now).unwrap(), at(1_795_316_645 - 600));
        assert_eq!(parse_time("2h", now).unwrap(), at(1_795_316_645 - 7200));
        assert_eq!(parse_time(" 30s ", now).unwrap(), at(1_795_316_645 - 30));
        assert_eq!(parse_time("1d", now).unwrap(), at(1_795_316_645 - 86400));
        assert_eq!(parse_time("now", now).unwrap(), now);
        for bad in [
            "",
            "yesterday",
            "2026-13-01T00:00:00Z",
            "10x",
            "2026-11-2",
            "日本語",
        ] {
            assert!(
                matches!(parse_time(bad, now), Err(JournalError::InvalidTime { .. })),
                "{bad:?}"
            );
        }
        assert!(parse_time("99999999999999999999999d", now).is_err());
    }

    fn store_with(n: u64) -> (tempfile::TempDir, Store, Vec<Record>) {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path().join("j.db")).unwrap();
        let mut head = ChainHead::genesis();
        let (batch, recs) = sealed_batch(&mut head, n, 1_000_000_000_000);
        store.insert_batch(&batch).unwrap();
        (dir, store, recs)
    }

    #[test]
    fn sql_and_matches_agree() {
        let (_dir, store, recs) = store_with(200);
        let t = |us: u64| UNIX_EPOCH + Duration::from_micros(us);
        let filters = vec![
            Filter::default(),
            Filter {
                agent: Some("agent1".into()),
                ..Filter::default()
            },
            Filter {
                agent: Some("id2".into()),
                kind: Some(Kind::Exec),
                ..Filter::default()
            },
            Filter {
                verdict: Some(Verdict::Allowed),
                ..Filter::default()
            },
            Filter {
                since: Some(t(1_000_000_000_050)),
                until: Some(t(1_000_000_000_060)),
                ..Filter::default()
            },
            Filter {
                target_contains: Some("/1".into()),
                after_seq: Some(100),
                ..Filter::default()
            },
            Filter {
                pid: Some(7),
                ..Filter::default()
            },
            Filter {
                kind: Some(Kind::File),
                limit: Some(3),
                ..Filter::default()
            },
        ];
        for f in filters {
            let mut want: Vec<Record> = recs.iter().filter(|r| f.matches(r)).cloned().collect();
            if let Some(l) = f.limit {
                want.truncate(l);
            }
            assert_eq!(store.query(&f).unwrap(), want, "{f:?}");
        }
        let f = Filter {
            since: Some(t(1_000_000_000_050)),
            until: Some(t(1_000_000_000_060)),
            ..Filter::default()
        };
        assert_eq!(store.query(&f).unwrap().len(), 11);
    }

    #[test]
    fn tail_returns_newest_in_ascending_order() {
        let (_dir, store, _) = store_with(50);
        let f = Filter {
            limit: Some(3),
            tail: true,
            ..Filter::default()
        };
        let seqs: Vec<u64> = store.query(&f).unwrap().iter().map(|r| r.seq).collect();
        assert_eq!(seqs, vec![48, 49, 50]);
    }

    #[test]
    fn hostile_filter_values_are_bound_not_spliced() {
        let (_dir, store, _) = store_with(10);
        let f = Filter {
            agent: Some("x' OR 1=1 --".into()),
            target_contains: Some("'); DROP TABLE records; --".into()),
            ..Filter::default()
        };
        assert!(store.query(&f).unwrap().is_empty());
        assert_eq!(store.count().unwrap(), 10);
        let huge = Filter {
            after_seq: Some(u64::MAX),
            limit: Some(usize::MAX),
            ..Filter::default()
        };
        assert!(store.query(&huge).unwrap().is_empty());
    }

    #[test]
    fn agent_and_kind_filters_use_indexes() {
        let (_dir, store, _) = store_with(10);
        let plans = [
            Filter {
                agent: Some("agent1".into()),
                kind: Some(Kind::Network),
                ..Filter::default()
            },
            Filter {
                agent: Some("agent1".into()),
                ..Filter::default()
            },
            Filter {
                kind: Some(Kind::Network),
                limit: Some(10),
                ..Filter::default()
            },
        ];
        for f in plans {
            let plan = store.explain_query(&f).unwrap().join("\n");
            println!("{f:?}:\n{plan}");
            assert!(plan.contains("USING INDEX records_"), "{f:?}: {plan}");
            assert!(
                !plan.lines().any(|l| l.trim() == "SCAN records"),
                "{f:?}: {plan}"
            );
        }
        let by_agent = Filter {
            agent: Some("agent1".into()),
            kind: Some(Kind::Network),
            verdict: Some(Verdict::Denied),
            ..Filter::default()
        };
        let plan = store.explain_query(&by_agent).unwrap().join("\n");
        println!("{plan}");
        assert!(
            plan.contains("SEARCH records USING INDEX records_agent_id (agent_id=? AND kind=?)"),
            "{plan}"
        );
        assert!(!plan.contains("records_kind"), "{plan}");
        assert!(!plan.contains("records_verdict"), "{plan}");
    }
}
