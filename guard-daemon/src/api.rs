//! The guardd protocol: JSON lines over a Unix socket.
//!
//! Every request is one line `{"v":1,"id":N,"op":"...",...}` and gets one or
//! more response lines carrying the same id: `{"v":1,"id":N,"ok":true,...}`
//! or `{"v":1,"id":N,"ok":false,"error":{"code":"...","message":"..."}}`.
//! Streams (`logs`) send `record` lines and end with `"done":true`. The
//! `open` response carries descriptors (the scope's cgroup) as SCM_RIGHTS on
//! the same message. A malformed line gets an error response; the connection
//! stays usable.

use std::{
    io::{self, IoSlice, IoSliceMut},
    os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd},
};

use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use thiserror::Error;

pub const PROTOCOL_VERSION: u32 = 1;
pub const DEFAULT_SOCKET: &str = "/run/guard/guard.sock";
/// Longest request line accepted; longer lines are answered with an error
/// and skipped, so one client cannot make the daemon buffer without bound.
pub const MAX_LINE: usize = 4 << 20;
/// Most descriptors one response may carry.
pub const MAX_FDS: usize = 8;
/// The descriptor of the agent's request channel in the agent
/// (`OpenReply::request_channel`), and the variable that names it.
pub const REQUEST_CHANNEL_FD: i32 = 3;
pub const REQUEST_CHANNEL_ENV: &str = "GUARD_REQUEST_FD";

#[derive(Debug, Error)]
pub enum ApiError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("malformed message: {0}")]
    Json(#[from] serde_json::Error),
    /// guardd refused the request. `code` is for programs (see [`code`]);
    /// only the message is shown to people.
    #[error("{message}")]
    Remote { code: String, message: String },
    #[error("protocol error: {0}")]
    Protocol(String),
}

/// Requests, keyed by `op`. Each variant wraps a struct so that parsing can
/// name the offending field of a bad request (see `parse_request`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    Hello(Empty),
    Open(OpenRequest),
    /// The launcher started the agent's main process.
    Started(StartedRequest),
    /// The agent's main process ended; guardd ends the scope.
    Exited(ExitedRequest),
    Logs(LogsRequest),
    Ps(Empty),
    Control(ControlRequest),
    Doctor(Empty),
    /// One of guardd's named policies (`--policy-dir`), as guardd holds it
    /// now: the launcher compiles the same text guardd does.
    Policy(PolicyRequest),
    /// An operator widens a live agent's network scope for a while.
    Grant(GrantRequest),
    /// An operator ends a live grant early.
    Revoke(RevokeRequest),
    /// The live grants.
    Grants(GrantsRequest),
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct GrantRequest {
    /// The agent (id, name or id prefix); with `request`, it may be left
    /// out and is the request's agent.
    #[serde(default)]
    pub agent: Option<String>,
    /// A destination as in policy rules (`10.0.0.5:443/tcp`).
    #[serde(default)]
    pub allow: Option<String>,
    /// Approve a listed request: the journal record of that number.
    #[serde(default)]
    pub request: Option<u64>,
    /// How long the grant lasts (default 15 minutes).
    #[serde(default)]
    pub for_secs: Option<u64>,
    pub reason: String,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RevokeRequest {
    pub agent: String,
    #[serde(default)]
    pub grant: Option<u64>,
    #[serde(default)]
    pub all: bool,
    #[serde(default)]
    pub reason: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct GrantsRequest {
    #[serde(default)]
    pub agent: Option<String>,
}

/// One live grant, as `grant` answers and `grants` lists it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct GrantEntry {
    pub agent: AgentRef,
    /// The agent's grant number (for `revoke`).
    pub grant: u64,
    /// As given.
    pub dest: String,
    /// As the policy rule it stands for reads (`10.0.0.5/32 tcp 443`).
    pub rule: String,
    pub granted: String,
    pub until: String,
    pub by_uid: u32,
    pub reason: String,
    #[serde(default)]
    pub request: Option<u64>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PolicyRequest {
    pub name: String,
}

/// A named policy: its text and include files, where guardd read them.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct PolicyReply {
    pub name: String,
    pub path: String,
    pub text: String,
    pub includes: Vec<(String, String)>,
    pub sha256: String,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Empty {}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct StartedRequest {
    pub agent: String,
    pub pid: i32,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ExitedRequest {
    pub agent: String,
    pub status: ExitStatus,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ControlRequest {
    pub agent: String,
    pub action: ControlAction,
    #[serde(default)]
    pub reason: Option<String>,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ControlAction {
    Kill,
    Freeze,
    Thaw,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OpenRequest {
    /// Path of the policy file, for messages and the journal.
    pub policy_path: String,
    /// Run under guardd's named policy of this name (`--policy-name`):
    /// guardd compiles its own copy, and `policy_text` must be the text it
    /// sent for that name (a policy that changed in between is refused, so
    /// the launcher never applies another text than guardd).
    #[serde(default)]
    pub policy_name: Option<String>,
    /// The policy text: guardd compiles it itself rather than trusting a
    /// compiled plan from the client.
    pub policy_text: String,
    /// The policy's include files as guardctl read them: (resolved path,
    /// text). guardd reads no file itself.
    #[serde(default)]
    pub policy_includes: Vec<(String, String)>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub audit: bool,
    /// Learn mode (`guardctl run --learn`, implies `audit`): files and
    /// programs are observed, not confined; guardd journals every access.
    #[serde(default)]
    pub learn: bool,
    pub argv: Vec<String>,
    pub workdir: String,
    pub home: String,
    /// `guardctl run --grant` items (`net:DEST`, `read:PATH`, `write:PATH`,
    /// `exec:PATH`), added to the policy by launcher and guardd alike.
    #[serde(default)]
    pub grants: Vec<String>,
    /// Layers the user accepts to run without (`--allow-degraded`).
    #[serde(default)]
    pub accept_degraded: Vec<String>,
    /// Host-side checks the launcher already made (e.g. Landlock ABI), to be
    /// journaled with the start record.
    #[serde(default)]
    pub launcher_notes: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct OpenReply {
    pub agent: AgentRef,
    /// The agent's private temporary directory (`{tmp}`).
    pub tmp: String,
    pub cgroup: String,
    /// Number of v1 `cgroup.procs` descriptors that follow the cgroup
    /// directory descriptor.
    pub v1_procs: usize,
    /// Layers guardd could not enforce and the user accepted (for people:
    /// nothing decides on this text).
    pub degraded: Vec<String>,
    /// The Unix-socket hooks are unavailable, so the launcher must refuse
    /// `socket(AF_UNIX)` in seccomp. Required, with no default: a reply
    /// without it does not parse, so an older or confused daemon cannot
    /// leave Unix sockets open.
    pub refuse_unix_sockets: bool,
    /// The agent's request channel (`daemon::requests`) follows the v1
    /// descriptors; the launcher places it at descriptor 3 of the agent
    /// (`GUARD_REQUEST_FD`). Absent from an older guardd: no channel.
    #[serde(default)]
    pub request_channel: bool,
}

pub use crate::journal::AgentRef;

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case", tag = "how", content = "value")]
pub enum ExitStatus {
    Code(i32),
    Signal(i32),
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ExitReply {
    pub denied: u64,
    pub audited: u64,
    pub lost: u64,
    pub leftover_killed: usize,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LogsRequest {
    #[serde(default)]
    pub agent: Option<String>,
    #[serde(default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub verdict: Option<String>,
    #[serde(default)]
    pub since: Option<String>,
    #[serde(default)]
    pub until: Option<String>,
    #[serde(default)]
    pub pid: Option<u32>,
    #[serde(default)]
    pub target: Option<String>,
    #[serde(default)]
    pub follow: bool,
    #[serde(default)]
    pub limit: Option<usize>,
}

impl LogsRequest {
    /// The journal query this request asks for: one definition for guardd
    /// (over the socket) and `guardctl logs --journal` (a file read
    /// directly), so both answer the same filters the same way.
    pub fn filter(
        &self,
        now: std::time::SystemTime,
    ) -> Result<crate::journal::Filter, crate::journal::JournalError> {
        use crate::journal::{Kind, Verdict, parse_time};
        let time = |t: &Option<String>| t.as_deref().map(|s| parse_time(s, now)).transpose();
        Ok(crate::journal::Filter {
            agent: self.agent.clone(),
            kind: self.kind.as_deref().map(str::parse::<Kind>).transpose()?,
            verdict: self
                .verdict
                .as_deref()
                .map(str::parse::<Verdict>)
                .transpose()?,
            since: time(&self.since)?,
            until: time(&self.until)?,
            pid: self.pid,
            target_contains: self.target.clone(),
            after_seq: None,
            limit: self.limit,
            tail: self.limit.is_some(),
        })
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct PsEntry {
    pub id: String,
    pub name: String,
    pub policy: String,
    pub mode: String,
    pub main_pid: Option<i32>,
    pub processes: usize,
    pub uptime_secs: u64,
    /// Refusals journaled for the agent (verdict `denied`), every layer.
    pub denied: u64,
    /// Would-be refusals journaled in audit mode (verdict `audit`).
    #[serde(default)]
    pub audited: u64,
    pub frozen: bool,
}

/// Error codes, stable for scripts.
pub mod code {
    pub const BAD_REQUEST: &str = "bad_request";
    pub const UNSUPPORTED_VERSION: &str = "unsupported_version";
    pub const POLICY: &str = "policy";
    pub const DEGRADED: &str = "degraded";
    pub const NOT_FOUND: &str = "not_found";
    pub const AMBIGUOUS: &str = "ambiguous";
    pub const PERMISSION_DENIED: &str = "permission_denied";
    pub const BUSY: &str = "busy";
    pub const INTERNAL: &str = "internal";
    pub const TOO_LONG: &str = "too_long";
}

/// Deserialises a request body, naming the offending field on error.
fn payload<T: serde::de::DeserializeOwned>(body: Value) -> Result<T, String> {
    serde_path_to_error::deserialize(body).map_err(|e| {
        let path = e.path().to_string();
        if path == "." || path.is_empty() {
            e.into_inner().to_string()
        } else {
            format!("{path}: {}", e.into_inner())
        }
    })
}

/// Why a request failed, as answered on the wire: the variant names the
/// stable code (`code`), the text is the message.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum RequestError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    UnsupportedVersion(String),
    #[error("{0}")]
    Policy(String),
    #[error("{0}")]
    Degraded(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Ambiguous(String),
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    Busy(String),
    #[error("{0}")]
    Internal(String),
    #[error("{0}")]
    TooLong(String),
}

impl RequestError {
    /// The stable code the error is answered with (one of `code::*`).
    pub fn code(&self) -> &'static str {
        match self {
            RequestError::BadRequest(_) => code::BAD_REQUEST,
            RequestError::UnsupportedVersion(_) => code::UNSUPPORTED_VERSION,
            RequestError::Policy(_) => code::POLICY,
            RequestError::Degraded(_) => code::DEGRADED,
            RequestError::NotFound(_) => code::NOT_FOUND,
            RequestError::Ambiguous(_) => code::AMBIGUOUS,
            RequestError::PermissionDenied(_) => code::PERMISSION_DENIED,
            RequestError::Busy(_) => code::BUSY,
            RequestError::Internal(_) => code::INTERNAL,
            RequestError::TooLong(_) => code::TOO_LONG,
        }
    }

    /// The message the error is answered with.
    pub fn message(&self) -> &str {
        match self {
            RequestError::BadRequest(m)
            | RequestError::UnsupportedVersion(m)
            | RequestError::Policy(m)
            | RequestError::Degraded(m)
            | RequestError::NotFound(m)
            | RequestError::Ambiguous(m)
            | RequestError::PermissionDenied(m)
            | RequestError::Busy(m)
            | RequestError::Internal(m)
            | RequestError::TooLong(m) => m,
        }
    }

    /// The error line answering request `id` with this error.
    pub fn line(&self, id: u64) -> Vec<u8> {
        error_line(id, self.code(), self.message())
    }
}

/// A request line that could not be parsed: the id to answer (0 when it
/// could not be read) and why.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
#[error("request {id}: {error}")]
pub struct Rejected {
    pub id: u64,
    pub error: RequestError,
}

/// A parsed request line: `Err` carries the id (if readable) and the error
/// to answer with.
pub fn parse_request(line: &[u8]) -> Result<(u64, Request), Rejected> {
    let reject = |id: u64, error: RequestError| Rejected { id, error };
    let value: Value = serde_json::from_slice(line)
        .map_err(|e| reject(0, RequestError::BadRequest(format!("not JSON: {e}"))))?;
    let Value::Object(mut map) = value else {
        return Err(reject(
            0,
            RequestError::BadRequest("a request is a JSON object".into()),
        ));
    };
    let id = map.remove("id").and_then(|v| v.as_u64()).unwrap_or(0);
    match map.remove("v").and_then(|v| v.as_u64()) {
        Some(v) if v == u64::from(PROTOCOL_VERSION) => {}
        Some(v) => {
            return Err(reject(
                id,
                RequestError::UnsupportedVersion(format!(
                    "protocol version {v} is not supported (this guardd speaks {PROTOCOL_VERSION})"
                )),
            ));
        }
        None => {
            return Err(reject(
                id,
                RequestError::BadRequest("missing protocol version \"v\"".into()),
            ));
        }
    }
    let op = match map.remove("op") {
        Some(Value::String(op)) => op,
        Some(_) => {
            return Err(reject(
                id,
                RequestError::BadRequest("\"op\" must be a string".into()),
            ));
        }
        None => {
            return Err(reject(
                id,
                RequestError::BadRequest("missing \"op\"".into()),
            ));
        }
    };
    let body = Value::Object(map);
    let bad = |e: String| reject(id, RequestError::BadRequest(format!("{op}: {e}")));
    let req = match op.as_str() {
        "hello" => Request::Hello(payload(body).map_err(bad)?),
        "open" => Request::Open(payload(body).map_err(bad)?),
        "started" => Request::Started(payload(body).map_err(bad)?),
        "exited" => Request::Exited(payload(body).map_err(bad)?),
        "logs" => Request::Logs(payload(body).map_err(bad)?),
        "ps" => Request::Ps(payload(body).map_err(bad)?),
        "control" => Request::Control(payload(body).map_err(bad)?),
        "doctor" => Request::Doctor(payload(body).map_err(bad)?),
        "policy" => Request::Policy(payload(body).map_err(bad)?),
        "grant" => Request::Grant(payload(body).map_err(bad)?),
        "revoke" => Request::Revoke(payload(body).map_err(bad)?),
        "grants" => Request::Grants(payload(body).map_err(bad)?),
        other => {
            return Err(reject(
                id,
                RequestError::BadRequest(format!(
                    "unknown op {other:?}; expected one of: hello, open, started, exited, logs, ps, control, doctor, policy, grant, revoke, grants"
                )),
            ));
        }
    };
    Ok((id, req))
}

pub fn encode_request(id: u64, req: &Request) -> Result<Vec<u8>, ApiError> {
    let mut value = serde_json::to_value(req)?;
    if let Value::Object(map) = &mut value {
        map.insert("v".into(), PROTOCOL_VERSION.into());
        map.insert("id".into(), id.into());
    }
    let mut line = serde_json::to_vec(&value)?;
    line.push(b'\n');
    Ok(line)
}

/// A successful response line with `fields` merged in.
pub fn ok_line(id: u64, fields: Value) -> Vec<u8> {
    let mut map = match fields {
        Value::Object(m) => m,
        Value::Null => serde_json::Map::new(),
        other => {
            let mut m = serde_json::Map::new();
            m.insert("result".into(), other);
            m
        }
    };
    map.insert("v".into(), PROTOCOL_VERSION.into());
    map.insert("id".into(), id.into());
    map.insert("ok".into(), true.into());
    let mut line = serde_json::to_vec(&Value::Object(map)).unwrap_or_default();
    line.push(b'\n');
    line
}

/// An error response line. Private: guardd answers errors only as a
/// [`RequestError`] (`RequestError::line`), so every code is one of `code::*`.
fn error_line(id: u64, code: &str, message: &str) -> Vec<u8> {
    let v = serde_json::json!({
        "v": PROTOCOL_VERSION,
        "id": id,
        "ok": false,
        "error": {"code": code, "message": message},
    });
    let mut line = serde_json::to_vec(&v).unwrap_or_default();
    line.push(b'\n');
    line
}

/// Interprets a response line: the fields on success, `Remote` on error.
pub fn parse_response(line: &[u8]) -> Result<serde_json::Map<String, Value>, ApiError> {
    let v: Value = serde_json::from_slice(line)?;
    let Value::Object(map) = v else {
        return Err(ApiError::Protocol("response is not an object".into()));
    };
    if map.get("ok").and_then(Value::as_bool) == Some(true) {
        return Ok(map);
    }
    let err = map.get("error");
    let code = err
        .and_then(|e| e.get("code"))
        .and_then(Value::as_str)
        .unwrap_or("unknown")
        .to_owned();
    let message = err
        .and_then(|e| e.get("message"))
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    Err(ApiError::Remote { code, message })
}

/// Sends `bytes` with `fds` attached (blocking socket).
pub fn send_with_fds(sock: BorrowedFd<'_>, bytes: &[u8], fds: &[RawFd]) -> io::Result<()> {
    let iov = [IoSlice::new(bytes)];
    let cmsg = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &cmsg };
    let sent = sendmsg::<()>(sock.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None)
        .map_err(io::Error::from)?;
    if sent < bytes.len() {
        // The descriptors went with the first part; the rest is plain data.
        write_all_fd(sock, &bytes[sent..])?;
    }
    Ok(())
}

fn write_all_fd(sock: BorrowedFd<'_>, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        match nix::unistd::write(sock, bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// A blocking line reader that also collects descriptors sent alongside.
pub struct LineConn {
    fd: OwnedFd,
    buf: Vec<u8>,
    fds: Vec<OwnedFd>,
}

impl LineConn {
    pub fn new(fd: OwnedFd) -> Self {
        LineConn {
            fd,
            buf: Vec::new(),
            fds: Vec::new(),
        }
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.fd.as_fd()
    }

    pub fn send(&self, line: &[u8]) -> io::Result<()> {
        write_all_fd(self.fd(), line)
    }

    /// Next line (without the newline), or `None` at end of stream.
    pub fn read_line(&mut self) -> Result<Option<Vec<u8>>, ApiError> {
        loop {
            if let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
                let rest = self.buf.split_off(pos + 1);
                let mut line = std::mem::replace(&mut self.buf, rest);
                line.pop();
                return Ok(Some(line));
            }
            if self.buf.len() > MAX_LINE {
                return Err(ApiError::Protocol("response line too long".into()));
            }
            let mut chunk = [0u8; 16384];
            let mut space = nix::cmsg_space!([RawFd; MAX_FDS]);
            let mut iov = [IoSliceMut::new(&mut chunk)];
            let msg = match recvmsg::<()>(
                self.fd.as_raw_fd(),
                &mut iov,
                Some(&mut space),
                MsgFlags::MSG_CMSG_CLOEXEC,
            ) {
                Ok(m) => m,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(ApiError::Io(e.into())),
            };
            let n = msg.bytes;
            for c in msg.cmsgs().map_err(|e| ApiError::Io(e.into()))? {
                if let ControlMessageOwned::ScmRights(fds) = c {
                    for fd in fds {
                        // SAFETY: descriptors received with SCM_RIGHTS are new
                        // and owned by this process.
                        self.fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
                    }
                }
            }
            if n == 0 {
                return Ok(None);
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Descriptors received so far, in order.
    pub fn take_fds(&mut self) -> Vec<OwnedFd> {
        std::mem::take(&mut self.fds)
    }

    /// Sends a request without waiting for its answer; a later `call`
    /// skips that answer.
    pub fn send_request(&mut self, id: u64, req: &Request) -> Result<(), ApiError> {
        self.send(&encode_request(id, req)?)?;
        Ok(())
    }

    /// One request/response exchange. Answers to earlier requests sent with
    /// `send_request` are skipped by their id.
    pub fn call(
        &mut self,
        id: u64,
        req: &Request,
    ) -> Result<serde_json::Map<String, Value>, ApiError> {
        self.send(&encode_request(id, req)?)?;
        loop {
            let line = self
                .read_line()?
                .ok_or_else(|| ApiError::Protocol("guardd closed the connection".into()))?;
            let for_us = serde_json::from_slice::<Value>(&line)
                .ok()
                .and_then(|v| v.get("id").and_then(Value::as_u64))
                .is_none_or(|got| got == id);
            if for_us {
                return parse_response(&line);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_round_trip() {
        let req = Request::Open(OpenRequest {
            policy_path: "p.toml".into(),
            policy_text: "[policy]\nname='x'".into(),
            argv: vec!["/bin/true".into()],
            workdir: "/w".into(),
            home: "/root".into(),
            ..Default::default()
        });
        let line = encode_request(7, &req).unwrap();
        let (id, back) = parse_request(&line[..line.len() - 1]).unwrap();
        assert_eq!(id, 7);
        assert_eq!(back, req);
    }

    #[test]
    fn bad_requests_get_precise_errors() {
        let cases: &[(&[u8], &str, &str)] = &[
            (b"not json", code::BAD_REQUEST, "not JSON"),
            (b"[1,2]", code::BAD_REQUEST, "object"),
            (br#"{"id":3,"op":"ps"}"#, code::BAD_REQUEST, "version"),
            (
                br#"{"v":9,"id":3,"op":"ps"}"#,
                code::UNSUPPORTED_VERSION,
                "version 9",
            ),
            (br#"{"v":1,"id":4,"op":"nope"}"#, code::BAD_REQUEST, "nope"),
            (
                br#"{"v":1,"id":5,"op":"ps","extra":1}"#,
                code::BAD_REQUEST,
                "extra",
            ),
            (
                br#"{"v":1,"id":6,"op":"logs","pid":"x"}"#,
                code::BAD_REQUEST,
                "pid",
            ),
        ];
        for (line, want_code, want_text) in cases {
            let err = parse_request(line).unwrap_err().error;
            assert_eq!(err.code(), *want_code, "{}", String::from_utf8_lossy(line));
            assert!(err.message().contains(want_text), "{err}");
        }
        // The id is echoed when it can be read.
        assert_eq!(
            parse_request(br#"{"v":1,"id":42,"op":"x"}"#)
                .unwrap_err()
                .id,
            42
        );
    }

    #[test]
    fn request_errors_answer_with_their_code_and_message() {
        let all = [
            (RequestError::BadRequest("m".into()), code::BAD_REQUEST),
            (
                RequestError::UnsupportedVersion("m".into()),
                code::UNSUPPORTED_VERSION,
            ),
            (RequestError::Policy("m".into()), code::POLICY),
            (RequestError::Degraded("m".into()), code::DEGRADED),
            (RequestError::NotFound("m".into()), code::NOT_FOUND),
            (RequestError::Ambiguous("m".into()), code::AMBIGUOUS),
            (
                RequestError::PermissionDenied("m".into()),
                code::PERMISSION_DENIED,
            ),
            (RequestError::Busy("m".into()), code::BUSY),
            (RequestError::Internal("m".into()), code::INTERNAL),
            (RequestError::TooLong("m".into()), code::TOO_LONG),
        ];
        for (err, want) in all {
            assert_eq!(err.code(), want);
            assert_eq!(err.message(), "m");
            assert_eq!(err.to_string(), "m");
            assert_eq!(err.line(9), error_line(9, want, "m"));
        }
    }

    #[test]
    fn responses() {
        let ok = ok_line(3, serde_json::json!({"agents": []}));
        let map = parse_response(&ok[..ok.len() - 1]).unwrap();
        assert_eq!(map["id"], 3);
        let err = error_line(3, code::NOT_FOUND, "no agent x");
        match parse_response(&err[..err.len() - 1]) {
            Err(ApiError::Remote { code, message }) => {
                assert_eq!(code, "not_found");
                assert_eq!(message, "no agent x");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn fds_travel_with_lines() {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let a = OwnedFd::from(a);
        let f = std::fs::File::open("/dev/null").unwrap();
        use std::os::fd::AsFd;
        send_with_fds(a.as_fd(), b"{\"x\":1}\nnext\n", &[f.as_raw_fd()]).unwrap();
        let mut conn = LineConn::new(OwnedFd::from(b));
        assert_eq!(conn.read_line().unwrap().unwrap(), b"{\"x\":1}");
        assert_eq!(conn.take_fds().len(), 1);
        assert_eq!(conn.read_line().unwrap().unwrap(), b"next");
        drop(a);
        assert_eq!(conn.read_line().unwrap(), None);
    }
}
