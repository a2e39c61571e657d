//! The agents' request channel: how an agent (or its framework) asks a
//! person for something on purpose (issue 15).
//!
//! guardd makes one socketpair per agent when it opens the scope and sends
//! one end to the launcher with the open reply, which places it at
//! descriptor 3 of the agent (`GUARD_REQUEST_FD=3`). The channel is reachable
//! from inside the scope by construction (no path, no Unix rule, no peer
//! check needed), and the agent's identity is the channel's, fixed at open:
//! nothing a message says can name another agent.
//!
//! It serves exactly one operation, `request` (`want`, `why`): the words are
//! journaled as an `escalation` record and grant nothing. Everything else
//! (other ops, unknown fields, oversize lines or fields, non-JSON) gets a
//! precise error and is journaled as guardd's refusal; a token bucket per
//! agent bounds what a flood costs, and what it suppresses is journaled as
//! one summary record per window, so nothing is lost in silence. Nothing
//! else of guardd is reachable through it.

use std::{
    os::fd::OwnedFd,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use serde::Deserialize;
use serde_json::{Value, json};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::UnixStream,
};

use crate::{
    api::{PROTOCOL_VERSION, RequestError, ok_line},
    journal::{
        AgentRef, JournalHandle, Kind, Record, Text, Verdict, format_time,
        requests::{REQUEST_ACTION, REQUEST_LAYER, REQUEST_RULE},
    },
    metrics::Metrics,
};

/// Longest line the channel reads; a longer one is answered `too_long` and
/// skipped to its end.
pub const MAX_LINE: usize = 4096;
/// Longest `want`, in bytes.
pub const MAX_WANT: usize = 256;
/// Longest `why`, in bytes.
pub const MAX_WHY: usize = 1024;
/// Lines an agent may send at once before it is limited.
pub const BURST: u32 = 5;
/// One more line is allowed every this long.
pub const REFILL: Duration = Duration::from_secs(10);
pub use crate::api::{REQUEST_CHANNEL_ENV as ENV_FD, REQUEST_CHANNEL_FD as AGENT_FD};

/// The rule of a line the channel refused (not a `request`, or malformed).
pub const INVALID_RULE: &str = "escalation.invalid";
/// The rule of the summary of lines refused for coming too fast.
pub const LIMITED_RULE: &str = "escalation.rate-limited";

/// guardd's side of one agent's channel. Dropping it (the agent's scope
/// ended) stops the server, which first journals what it still holds.
pub struct Channel {
    _stop: tokio::sync::oneshot::Sender<()>,
}

/// Makes the channel of `agent` and starts serving guardd's end on the
/// current runtime. Returns guardd's handle and the agent's end (close on
/// exec here; the launcher keeps it for the agent). `None` when guardd
/// runs no runtime here (a library caller outside one): the agent then gets
/// no channel, which the open reply says.
pub fn open(
    agent: AgentRef,
    journal: JournalHandle,
    metrics: Arc<Metrics>,
) -> std::io::Result<Option<(Channel, OwnedFd)>> {
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        return Ok(None);
    };
    let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
    ours.set_nonblocking(true)?;
    let (stop, stopped) = tokio::sync::oneshot::channel();
    let ctx = Ctx {
        agent,
        journal,
        metrics,
    };
    rt.spawn(async move {
        match UnixStream::from_std(ours) {
            Ok(s) => serve(s, ctx, stopped).await,
            Err(e) => tracing::warn!(error = %e, "request channel: cannot serve"),
        }
    });
    Ok(Some((Channel { _stop: stop }, OwnedFd::from(theirs))))
}

struct Ctx {
    agent: AgentRef,
    journal: JournalHandle,
    metrics: Arc<Metrics>,
}

impl Ctx {
    /// Journals off the runtime: an append waits when the writer's queue
    /// is full.
    async fn journal(&self, rec: Record) {
        let j = self.journal.clone();
        let rec = rec.with_agent(self.agent.clone());
        let _ = tokio::task::spawn_blocking(move || j.append(rec)).await;
    }
}

/// A token bucket: `BURST` lines at once, one more every `REFILL`.
#[derive(Clone, Copy, Debug)]
pub struct Bucket {
    tokens: u32,
    since: Instant,
}

impl Bucket {
    pub fn new(now: Instant) -> Bucket {
        Bucket {
            tokens: BURST,
            since: now,
        }
    }

    /// Takes a token if there is one at `now`.
    pub fn take(&mut self, now: Instant) -> bool {
        let earned = now.saturating_duration_since(self.since).as_secs() / REFILL.as_secs();
        if earned > 0 {
            let earned = u32::try_from(earned).unwrap_or(u32::MAX);
            self.tokens = self.tokens.saturating_add(earned).min(BURST);
            // Time not yet worth a token is kept.
            self.since += REFILL * earned.min(BURST);
            if self.tokens == BURST {
                self.since = now;
            }
        }
        if self.tokens == 0 {
            return false;
        }
        self.tokens -= 1;
        true
    }
}

/// What an agent asked for.
#[derive(Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Ask {
    pub want: String,
    #[serde(default)]
    pub why: String,
}

/// Why a line was refused, and what to journal for it.
#[derive(Debug, PartialEq, Eq)]
pub struct Refused {
    pub id: u64,
    pub error: RequestError,
    /// The op the line named, when it named one (the record's target).
    pub op: Option<String>,
}

/// Parses one line of the channel.
pub fn parse(line: &[u8]) -> Result<(u64, Ask), Refused> {
    let refuse = |id, op: Option<&str>, error| Refused {
        id,
        error,
        op: op.map(|o| o.chars().take(64).collect()),
    };
    let value: Value = serde_json::from_slice(line)
        .map_err(|e| refuse(0, None, RequestError::BadRequest(format!("not JSON: {e}"))))?;
    let Value::Object(mut map) = value else {
        return Err(refuse(
            0,
            None,
            RequestError::BadRequest("a request is a JSON object".into()),
        ));
    };
    let id = map.remove("id").and_then(|v| v.as_u64()).unwrap_or(0);
    let op = match map.remove("op") {
        Some(Value::String(op)) => op,
        _ => {
            return Err(refuse(
                id,
                None,
                RequestError::BadRequest(
                    "missing \"op\" (a string): this channel takes \"request\"".into(),
                ),
            ));
        }
    };
    match map.remove("v").and_then(|v| v.as_u64()) {
        Some(v) if v == u64::from(PROTOCOL_VERSION) => {}
        other => {
            return Err(refuse(
                id,
                Some(&op),
                RequestError::UnsupportedVersion(format!(
                    "protocol version {} is not supported (the request channel speaks {PROTOCOL_VERSION})",
                    other.map_or_else(|| "missing".to_owned(), |v| v.to_string())
                )),
            ));
        }
    }
    if op != "request" {
        return Err(refuse(
            id,
            Some(&op),
            RequestError::PermissionDenied(format!(
                "op {:?} is not served here: the request channel takes op \"request\" only \
                 (want, why); it journals what you ask and grants nothing",
                op.chars().take(64).collect::<String>()
            )),
        ));
    }
    let ask: Ask = serde_path_to_error::deserialize(Value::Object(map)).map_err(|e| {
        let path = e.path().to_string();
        let why = e.into_inner();
        let msg = if path == "." || path.is_empty() {
            format!("request: {why}")
        } else {
            format!("request: {path}: {why}")
        };
        refuse(id, Some(&op), RequestError::BadRequest(msg))
    })?;
    if ask.want.trim().is_empty() {
        return Err(refuse(
            id,
            Some(&op),
            RequestError::BadRequest("request: \"want\" is empty: say what you need".into()),
        ));
    }
    for (field, text, max) in [("want", &ask.want, MAX_WANT), ("why", &ask.why, MAX_WHY)] {
        if text.len() > max {
            return Err(refuse(
                id,
                Some(&op),
                RequestError::TooLong(format!(
                    "request: \"{field}\" is {} bytes; at most {max}",
                    text.len()
                )),
            ));
        }
    }
    Ok((id, ask))
}

/// The record of a request.
pub fn request_record(ask: &Ask) -> Record {
    Record::new(
        Kind::Escalation,
        REQUEST_ACTION,
        Text::new(ask.want.clone()),
        // Journaled, not a refusal: counts of refusals leave it out.
        Verdict::Allowed,
        REQUEST_RULE,
        REQUEST_LAYER,
    )
    .with_detail(json!({"want": ask.want, "why": ask.why}))
}

/// The answer to a journaled request.
pub fn accepted_line(id: u64) -> Vec<u8> {
    ok_line(
        id,
        json!({"request": "journaled", "grants": "nothing",
               "note": "a person sees it in `guardctl requests`"}),
    )
}

/// Lines refused for coming too fast, held until their window ends.
#[derive(Default)]
struct Suppressed {
    count: u64,
    first: Option<SystemTime>,
    last: Option<SystemTime>,
    window_end: Option<tokio::time::Instant>,
}

async fn serve(stream: UnixStream, ctx: Ctx, mut stopped: tokio::sync::oneshot::Receiver<()>) {
    let (mut rd, mut wr) = stream.into_split();
    let mut bucket = Bucket::new(Instant::now());
    let mut held = Suppressed::default();
    let mut buf: Vec<u8> = Vec::new();
    // Inside a line longer than MAX_LINE: its rest is skipped.
    let mut skipping = false;
    let mut chunk = [0u8; 4096];
    loop {
        let window = held.window_end;
        let n = tokio::select! {
            _ = &mut stopped => break,
            _ = async {
                match window {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            } => {
                flush_suppressed(&ctx, &mut held).await;
                continue;
            }
            r = rd.read(&mut chunk) => match r {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            },
        };
        let mut data = &chunk[..n];
        while !data.is_empty() {
            let nl = data.iter().position(|&b| b == b'\n');
            let (part, rest, ended) = match nl {
                Some(i) => (&data[..i], &data[i + 1..], true),
                None => (data, &data[data.len()..], false),
            };
            data = rest;
            if skipping {
                skipping = !ended;
                continue;
            }
            buf.extend_from_slice(part);
            if buf.len() > MAX_LINE {
                buf.clear();
                skipping = !ended;
                let refused = Refused {
                    id: 0,
                    error: RequestError::TooLong(format!(
                        "line longer than {MAX_LINE} bytes; skipped to its end"
                    )),
                    op: None,
                };
                if answer(&ctx, &mut wr, &mut bucket, &mut held, Err(refused))
                    .await
                    .is_err()
                {
                    flush_suppressed(&ctx, &mut held).await;
                    return;
                }
                continue;
            }
            if !ended {
                continue;
            }
            let line = std::mem::take(&mut buf);
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            if answer(&ctx, &mut wr, &mut bucket, &mut held, parse(&line))
                .await
                .is_err()
            {
                flush_suppressed(&ctx, &mut held).await;
                return;
            }
        }
    }
    flush_suppressed(&ctx, &mut held).await;
}

/// Answers one line, journaling it if the bucket allows.
async fn answer(
    ctx: &Ctx,
    wr: &mut tokio::net::unix::OwnedWriteHalf,
    bucket: &mut Bucket,
    held: &mut Suppressed,
    parsed: Result<(u64, Ask), Refused>,
) -> std::io::Result<()> {
    let id = match &parsed {
        Ok((id, _)) => *id,
        Err(r) => r.id,
    };
    if !bucket.take(Instant::now()) {
        ctx.metrics.escalation_limited();
        let now = SystemTime::now();
        held.count += 1;
        held.first.get_or_insert(now);
        held.last = Some(now);
        held.window_end
            .get_or_insert_with(|| tokio::time::Instant::now() + REFILL);
        let busy = RequestError::Busy(format!(
            "too many lines: {BURST} at once, then one every {}s; this one was not journaled (counted)",
            REFILL.as_secs()
        ));
        return wr.write_all(&busy.line(id)).await;
    }
    match parsed {
        Ok((id, ask)) => {
            ctx.metrics.escalation();
            ctx.journal(request_record(&ask)).await;
            wr.write_all(&accepted_line(id)).await
        }
        Err(refused) => {
            ctx.metrics.escalation_invalid();
            let target = refused.op.clone().unwrap_or_default();
            let rec = Record::new(
                Kind::Escalation,
                "invalid",
                Text::new(target),
                Verdict::Denied,
                INVALID_RULE,
                "guardd",
            )
            .with_detail(json!({
                "code": refused.error.code(),
                "why": refused.error.message(),
            }));
            ctx.journal(rec).await;
            wr.write_all(&refused.error.line(refused.id)).await
        }
    }
}

/// Journals the lines refused for coming too fast since the last summary.
async fn flush_suppressed(ctx: &Ctx, held: &mut Suppressed) {
    let h = std::mem::take(held);
    if h.count == 0 {
        return;
    }
    let time = |t: Option<SystemTime>| t.map(format_time).unwrap_or_default();
    let rec = Record::new(
        Kind::Escalation,
        "rate-limit",
        Text::new(format!("{} lines", h.count)),
        Verdict::Denied,
        LIMITED_RULE,
        "guardd",
    )
    .with_detail(json!({
        "suppressed": h.count,
        "first_time": time(h.first),
        "last_time": time(h.last),
        "why": format!("more than {BURST} lines at once, then one every {}s", REFILL.as_secs()),
    }));
    ctx.journal(rec).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::code;

    #[test]
    fn a_request_is_parsed_with_its_words_untouched() {
        let (id, ask) = parse(
            br#"{"v":1,"id":7,"op":"request","want":"127.0.0.1:8443/tcp","why":"a\u001b[31m\n"}"#,
        )
        .unwrap();
        assert_eq!(id, 7);
        assert_eq!(ask.want, "127.0.0.1:8443/tcp");
        assert_eq!(ask.why, "a\x1b[31m\n");
        // `why` may be left out.
        let (_, ask) = parse(br#"{"v":1,"id":1,"op":"request","want":"x"}"#).unwrap();
        assert_eq!(ask.why, "");
        let rec = request_record(&ask);
        assert_eq!(rec.kind, Kind::Escalation);
        assert_eq!(rec.verdict, Verdict::Allowed);
        assert_eq!(rec.rule, REQUEST_RULE);
        assert!(crate::journal::requests::is_request(&rec.with_agent(
            AgentRef {
                id: "a".into(),
                name: "n".into(),
                policy: "p".into(),
                container: None
            }
        )));
    }

    #[test]
    fn everything_else_gets_a_precise_error() {
        let want = "w".repeat(MAX_WANT + 1);
        let why = "y".repeat(MAX_WHY + 1);
        let long_want = format!(r#"{{"v":1,"id":4,"op":"request","want":"{want}"}}"#);
        let long_why = format!(r#"{{"v":1,"id":4,"op":"request","want":"x","why":"{why}"}}"#);
        // (line, id answered, code, text of the message, op journaled)
        type Case<'a> = (&'a [u8], u64, &'a str, &'a str, Option<&'a str>);
        let cases: Vec<Case> = vec![
            (b"hello", 0, code::BAD_REQUEST, "not JSON", None),
            (b"[1]", 0, code::BAD_REQUEST, "object", None),
            (
                br#"{"v":1,"id":2}"#,
                2,
                code::BAD_REQUEST,
                "missing \"op\"",
                None,
            ),
            (
                br#"{"v":2,"id":2,"op":"request","want":"x"}"#,
                2,
                code::UNSUPPORTED_VERSION,
                "version 2",
                Some("request"),
            ),
            (
                br#"{"v":1,"id":3,"op":"ps"}"#,
                3,
                code::PERMISSION_DENIED,
                "\"ps\" is not served here",
                Some("ps"),
            ),
            (
                br#"{"v":1,"id":3,"op":"control","agent":"x","action":"kill"}"#,
                3,
                code::PERMISSION_DENIED,
                "\"control\"",
                Some("control"),
            ),
            (
                br#"{"v":1,"id":3,"op":"open"}"#,
                3,
                code::PERMISSION_DENIED,
                "\"open\"",
                Some("open"),
            ),
            (
                br#"{"v":1,"id":5,"op":"request"}"#,
                5,
                code::BAD_REQUEST,
                "missing field `want`",
                Some("request"),
            ),
            (
                br#"{"v":1,"id":5,"op":"request","want":"x","agent":"other"}"#,
                5,
                code::BAD_REQUEST,
                "unknown field `agent`",
                Some("request"),
            ),
            (
                br#"{"v":1,"id":5,"op":"request","want":7}"#,
                5,
                code::BAD_REQUEST,
                "want",
                Some("request"),
            ),
            (
                br#"{"v":1,"id":5,"op":"request","want":"  "}"#,
                5,
                code::BAD_REQUEST,
                "empty",
                Some("request"),
            ),
            (
                long_want.as_bytes(),
                4,
                code::TOO_LONG,
                "\"want\" is 257 bytes",
                Some("request"),
            ),
            (
                long_why.as_bytes(),
                4,
                code::TOO_LONG,
                "\"why\" is 1025 bytes",
                Some("request"),
            ),
        ];
        for (line, id, want_code, text, op) in cases {
            let r = parse(line).unwrap_err();
            assert_eq!(r.id, id, "{}", String::from_utf8_lossy(line));
            assert_eq!(r.error.code(), want_code, "{}", r.error);
            assert!(r.error.message().contains(text), "{}", r.error);
            assert_eq!(r.op.as_deref(), op);
        }
        // An op name is capped in what is kept of it.
        let long_op = format!(r#"{{"v":1,"id":1,"op":"{}"}}"#, "o".repeat(500));
        assert_eq!(parse(long_op.as_bytes()).unwrap_err().op.unwrap().len(), 64);
    }

    #[test]
    fn the_bucket_allows_a_burst_then_one_per_refill() {
        let t0 = Instant::now();
        let mut b = Bucket::new(t0);
        for _ in 0..BURST {
            assert!(b.take(t0));
        }
        assert!(!b.take(t0));
        assert!(!b.take(t0 + REFILL - Duration::from_millis(1)));
        assert!(b.take(t0 + REFILL));
        assert!(!b.take(t0 + REFILL));
        // A long quiet time refills to the burst, not beyond.
        let later = t0 + REFILL * 100;
        for _ in 0..BURST {
            assert!(b.take(later));
        }
        assert!(!b.take(later));
        assert!(b.take(later + REFILL));
    }
}
