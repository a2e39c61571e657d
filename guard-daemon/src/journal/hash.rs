//! Hashing and sealing: a record's place in the chain (`seq`, `prev`,
//! `hash`), computed here and nowhere else; no I/O.
//!
//! `hash = hex(sha256(prev_hash_bytes || canonical_bytes))`, where
//! `canonical_bytes` is `serde_json::to_vec` of the record with `hash` set to
//! `""`. Because `hash` is the record's last field, the stored JSON is the
//! canonical JSON with the digest spliced into that final `""`, and a
//! verifier recovers the canonical bytes from the stored text without
//! re-serialising (which could differ, e.g. for floats in `detail`).

use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::JournalError;
use super::record::{
    Kind, Record, RecordBody, Verdict, format_time, parse_record_time, to_unix_us,
};
use super::text::escape_str;

/// `prev` of the first record.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What every stored JSON line ends with, before the 64 hex digits and `"}`.
const HASH_KEY: &[u8] = b"\"hash\":\"";
const HASH_TAIL: &[u8] = b"\"}";
const HEX_LEN: usize = 64;

/// Sequence number and hash of the newest record in the chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainHead {
    pub seq: u64,
    pub hash: String,
}

impl ChainHead {
    pub fn genesis() -> ChainHead {
        ChainHead {
            seq: 0,
            hash: GENESIS_HASH.to_owned(),
        }
    }

    /// Seals a record whose `time` is already set: assigns `seq`, `prev`
    /// and `hash` in `rec` and returns what to store. Tests build stores
    /// with it; the writer seals [`Prepared`] records with [`Self::seal`].
    #[cfg(test)]
    pub(crate) fn seal_record(
        &mut self,
        rec: &mut Record,
        ts_us: i64,
    ) -> Result<Sealed, JournalError> {
        let prepared = Prepared::from_record(rec, ts_us)?;
        let (seq, json) = self.seal(&prepared)?;
        let sealed = Sealed {
            seq,
            json,
            prepared,
        };
        rec.seq = seq;
        rec.prev = prev_of(&sealed.json).to_owned();
        rec.hash = sealed.hash().to_owned();
        Ok(sealed)
    }

    /// Gives `p` the next seq and returns it with the stored JSON; advances
    /// the head only on success.
    pub(crate) fn seal(&mut self, p: &Prepared) -> Result<(u64, String), JournalError> {
        let seq = self.seq.checked_add(1).ok_or(JournalError::OutOfRange {
            what: "seq",
            value: self.seq,
        })?;
        let prev = decode_hash(&self.hash).ok_or_else(|| JournalError::Corrupt {
            seq: self.seq,
            reason: format!("chain head hash {:?} is not 64 hex digits", self.hash),
        })?;
        let inner = p
            .body()
            .strip_prefix(b"{")
            .and_then(|b| b.strip_suffix(b"}"))
            .ok_or_else(|| JournalError::Corrupt {
                seq,
                reason: "serialised record body is not an object".into(),
            })?;
        // Exactly serde_json's compact form of the whole record with an
        // empty hash (a test holds this to serde_json::to_vec).
        let seq_text = seq.to_string();
        let mut json = Vec::with_capacity(inner.len() + seq_text.len() + 2 * HEX_LEN + 32);
        json.extend_from_slice(b"{\"seq\":");
        json.extend_from_slice(seq_text.as_bytes());
        json.push(b',');
        json.extend_from_slice(inner);
        json.extend_from_slice(b",\"prev\":\"");
        json.extend_from_slice(self.hash.as_bytes());
        json.extend_from_slice(b"\",");
        json.extend_from_slice(HASH_KEY);
        json.extend_from_slice(HASH_TAIL);
        let digest = Sha256::new()
            .chain_update(prev)
            .chain_update(&json)
            .finalize();
        let mut hex = [0u8; HEX_LEN];
        hex::encode_to_slice(digest, &mut hex).map_err(|_| JournalError::Corrupt {
            seq,
            reason: "hex encoding failed".into(),
        })?;
        json.truncate(json.len() - HASH_TAIL.len());
        json.extend_from_slice(&hex);
        json.extend_from_slice(HASH_TAIL);
        let json = String::from_utf8(json).map_err(|_| JournalError::Corrupt {
            seq,
            reason: "serialised record is not UTF-8".into(),
        })?;
        self.seq = seq;
        self.hash.clear();
        self.hash.push_str(hash_of(&json));
        Ok((seq, json))
    }
}

/// The `hash` value at the end of a stored JSON line made by
/// [`ChainHead::seal`].
fn hash_of(json: &str) -> &str {
    let end = json.len().saturating_sub(HASH_TAIL.len());
    json.get(end.saturating_sub(HEX_LEN)..end)
        .unwrap_or_default()
}

/// The `prev` value of a stored JSON line made by [`ChainHead::seal`].
#[cfg(test)]
fn prev_of(json: &str) -> &str {
    // ..."prev":"<64>","hash":"<64>"}
    let end = json
        .len()
        .saturating_sub(HASH_TAIL.len() + HEX_LEN + HASH_KEY.len() + 2);
    json.get(end.saturating_sub(HEX_LEN)..end)
        .unwrap_or_default()
}

fn serialize_body(rec: &Record) -> Result<Vec<u8>, JournalError> {
    serde_json::to_vec(&RecordBody::of(rec)).map_err(JournalError::json("serialise record"))
}

/// What the writer needs of a record, packed into one allocation: the
/// serialised body, then the agent id, agent name and target bytes for the
/// index columns. One allocation matters: records are built on the daemon's
/// threads and freed on the writer's, and each cross-thread free contends
/// for the allocator arena's lock.
pub(crate) struct Prepared {
    buf: Vec<u8>,
    body_len: usize,
    /// Lengths of agent id and name, which follow the body in `buf`.
    agent: Option<(usize, usize)>,
    pub pid: Option<u32>,
    pub kind: Kind,
    pub verdict: Verdict,
    pub ts_us: i64,
}

impl Prepared {
    /// Packs `rec` as it is (no caps, `time` as set).
    pub(crate) fn from_record(rec: &Record, ts_us: i64) -> Result<Prepared, JournalError> {
        let mut buf = serialize_body(rec)?;
        let body_len = buf.len();
        let agent = rec.agent.as_ref().map(|a| {
            buf.extend_from_slice(a.id.as_bytes());
            buf.extend_from_slice(a.name.as_bytes());
            (a.id.len(), a.name.len())
        });
        buf.extend_from_slice(rec.target.as_bytes());
        Ok(Prepared {
            buf,
            body_len,
            agent,
            pid: rec.process.as_ref().map(|p| p.pid),
            kind: rec.kind,
            verdict: rec.verdict,
            ts_us,
        })
    }

    pub(crate) fn body(&self) -> &[u8] {
        self.buf.get(..self.body_len).unwrap_or_default()
    }

    /// Agent id and name.
    pub(crate) fn agent(&self) -> Option<(&str, &str)> {
        let (id_len, name_len) = self.agent?;
        let id_end = self.body_len + id_len;
        let id = std::str::from_utf8(self.buf.get(self.body_len..id_end)?).ok()?;
        let name = std::str::from_utf8(self.buf.get(id_end..id_end + name_len)?).ok()?;
        Some((id, name))
    }

    pub(crate) fn target(&self) -> &[u8] {
        let start = self.body_len + self.agent.map_or(0, |(i, n)| i + n);
        self.buf.get(start..).unwrap_or_default()
    }
}

/// A record with its place in the chain, ready to insert.
pub(crate) struct Sealed {
    pub seq: u64,
    /// The stored JSON line.
    pub json: String,
    pub prepared: Prepared,
}

impl Sealed {
    pub(crate) fn hash(&self) -> &str {
        hash_of(&self.json)
    }
}

/// Applies the caps, assigns `time` if empty (or not RFC 3339 UTC), names
/// the local host if the record names none, and serialises the record.
/// Runs on the appending thread.
pub(crate) fn prepare(mut rec: Record) -> Result<Prepared, JournalError> {
    rec.enforce_caps();
    if rec.host.is_none() {
        rec.host = super::record::local_host().cloned();
    }
    let supplied = if rec.time.is_empty() {
        None
    } else {
        let parsed = parse_record_time(&rec.time);
        if parsed.is_none() {
            tracing::warn!(time = %escape_str(&rec.time), "record time is not RFC 3339 UTC; using now");
        }
        parsed
    };
    let t = supplied.unwrap_or_else(SystemTime::now);
    rec.time = format_time(t);
    // From the formatted string, so `ts_us` always agrees with `time` (the
    // formatter clamps and truncates to microseconds).
    let ts_us = parse_record_time(&rec.time).map_or_else(|| to_unix_us(t), to_unix_us);
    Prepared::from_record(&rec, ts_us)
}

/// `serde_json::to_vec` of the record with `hash` emptied.
pub fn canonical_bytes(rec: &Record) -> Result<Vec<u8>, JournalError> {
    let mut copy = rec.clone();
    copy.hash.clear();
    serde_json::to_vec(&copy).map_err(JournalError::json("serialise record"))
}

/// `hex(sha256(prev || canonical))`; `prev` must be 64 hex digits.
pub fn record_hash(prev: &str, canonical: &[u8]) -> Result<String, JournalError> {
    let prev_bytes = decode_hash(prev).ok_or_else(|| JournalError::Corrupt {
        seq: 0,
        reason: format!("prev hash {prev:?} is not 64 hex digits"),
    })?;
    Ok(hex::encode(
        Sha256::new()
            .chain_update(prev_bytes)
            .chain_update(canonical)
            .finalize(),
    ))
}

/// Recomputes the hash of a stored JSON line from its own text; `None` if the
/// line does not end in a well-formed hash field.
pub(crate) fn stored_hash(prev: &[u8; 32], json: &str) -> Option<String> {
    let b = json.as_bytes();
    let tail = HEX_LEN + HASH_TAIL.len();
    let prefix_len = b.len().checked_sub(tail)?;
    let prefix = &b[..prefix_len];
    if !prefix.ends_with(HASH_KEY) || !b.ends_with(HASH_TAIL) {
        return None;
    }
    Some(hex::encode(
        Sha256::new()
            .chain_update(prev)
            .chain_update(prefix)
            .chain_update(HASH_TAIL)
            .finalize(),
    ))
}

pub(crate) fn decode_hash(hex_str: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex_str, &mut out).ok()?;
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::text::Text;

    fn rec(target: &str) -> Record {
        let mut r = Record::new(
            Kind::File,
            "open",
            target,
            Verdict::Denied,
            "file.deny",
            "landlock",
        );
        r.time = "2026-11-22T03:04:05.123456Z".into();
        r
    }

    #[test]
    fn seal_matches_the_definition() {
        let mut head = ChainHead::genesis();
        let mut r1 = rec("/etc/shadow");
        let json1 = head.seal_record(&mut r1, 0).map(|s| s.json).unwrap();
        assert_eq!(r1.seq, 1);
        assert_eq!(r1.prev, GENESIS_HASH);
        let canonical = canonical_bytes(&r1).unwrap();
        assert!(canonical.ends_with(br#""hash":""}"#));
        assert_eq!(r1.hash, record_hash(GENESIS_HASH, &canonical).unwrap());
        assert_eq!(json1, serde_json::to_string(&r1).unwrap());
        assert_eq!(
            stored_hash(&[0; 32], &json1).as_deref(),
            Some(r1.hash.as_str())
        );

        let mut r2 = rec("/etc/passwd");
        head.seal_record(&mut r2, 0).map(|s| s.json).unwrap();
        assert_eq!((r2.seq, &r2.prev), (2, &r1.hash));
        assert_eq!(head.hash, r2.hash);
    }

    #[test]
    fn spliced_json_is_serde_json_of_the_record() {
        let mut head = ChainHead::genesis();
        let mut variants = vec![rec("/etc/shadow"), rec("")];
        let mut r = rec("x");
        r.target = Text::new(vec![0xff, b'"', b'\\']);
        r.truncated = vec!["target".into(), "detail".into()];
        r.detail = Some(serde_json::json!({"z": [1, 2.5, null], "a": "\u{1b}\n", "m": {}}));
        r.agent = Some(crate::journal::record::AgentRef {
            id: "i\"d".into(),
            name: "n\u{202e}".into(),
            policy: String::new(),
            container: None,
        });
        r.process = Some(crate::journal::record::ProcessRef {
            pid: u32::MAX,
            comm: Text::new(vec![0x80]),
            exe: Text::from("/bin/é"),
        });
        variants.push(r);
        for mut r in variants {
            let json = head.seal_record(&mut r, 0).map(|s| s.json).unwrap();
            assert_eq!(json.as_bytes(), serde_json::to_vec(&r).unwrap());
            assert_eq!(
                record_hash(&r.prev, &canonical_bytes(&r).unwrap()).unwrap(),
                r.hash
            );
        }
        let mut long = rec("y");
        long.time.clear();
        long.target = Text::new(vec![b'y'; crate::journal::text::TARGET_CAP + 1]);
        let p = prepare(long).unwrap();
        assert_eq!(p.target().len(), crate::journal::text::TARGET_CAP);
        let (seq, json) = head.seal(&p).unwrap();
        let back: Record = serde_json::from_str(&json).unwrap();
        assert_eq!(json.as_bytes(), serde_json::to_vec(&back).unwrap());
        assert_eq!((seq, back.seq), (4, 4));
        assert_eq!(back.truncated, vec!["target"]);
        assert!(back.timestamp().is_some());
        assert_eq!(prev_of(&json), back.prev);
        assert_eq!(hash_of(&json), back.hash);
    }

    #[test]
    fn stored_hash_rejects_malformed_lines() {
        assert_eq!(stored_hash(&[0; 32], ""), None);
        assert_eq!(stored_hash(&[0; 32], "{}"), None);
        let fake = format!("{{\"x\":\"{}\"}}", "a".repeat(64));
        assert_eq!(stored_hash(&[0; 32], &fake), None);
    }

    #[test]
    fn invalid_utf8_and_floats_hash_from_stored_text() {
        let mut head = ChainHead::genesis();
        let mut r = rec("x");
        r.target = Text::new(vec![0xff, 0x00]);
        r.detail = Some(serde_json::json!({"ratio": 0.1 + 0.2, "big": 1e300}));
        let json = head.seal_record(&mut r, 0).map(|s| s.json).unwrap();
        let parsed: Record = serde_json::from_str(&json).unwrap();
        assert_eq!(parsed.target, r.target);
        assert_eq!(
            stored_hash(&[0; 32], &json).as_deref(),
            Some(r.hash.as_str())
        );
    }
}
