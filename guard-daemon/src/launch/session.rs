//! The launcher's side of a scope: guardd opens it (and passes its
//! descriptors), learns the agent's pid, and ends it when the agent exits
//! or never started. The connection is the scope's lifetime: guardd ends the
//! scope if it closes.

use std::os::fd::OwnedFd;

use thiserror::Error;

use super::builder::ScopeFds;
use crate::api::{
    ApiError, ExitReply, ExitStatus, ExitedRequest, LineConn, OpenReply, OpenRequest, Request,
    StartedRequest,
};

#[derive(Debug, Error)]
pub enum OpenError {
    /// guardd refused the policy; the message is guardd's, for people.
    #[error("{0}")]
    Policy(String),
    #[error(transparent)]
    Api(ApiError),
}

/// The scope was opened, but its descriptors are not what the reply says.
#[derive(Debug, Error)]
pub enum ScopeError {
    #[error("guardd did not send the scope's cgroup")]
    NoCgroup,
    #[error("guardd sent an unexpected number of descriptors")]
    Descriptors,
    #[error("guardd said it sent the agent's request channel, but did not")]
    NoRequestChannel,
}

/// An open scope.
pub struct Session {
    conn: LineConn,
    pub reply: OpenReply,
}

// Request ids on the launcher's connection.
const ID_OPEN: u64 = 1;
const ID_STARTED: u64 = 2;
const ID_EXITED: u64 = 3;
const ID_ABORT: u64 = 9;

impl Session {
    /// Asks guardd for a scope.
    pub fn open(mut conn: LineConn, req: OpenRequest) -> Result<Session, OpenError> {
        match conn.call(ID_OPEN, &Request::Open(req)).and_then(|m| {
            serde_json::from_value(serde_json::Value::Object(m)).map_err(ApiError::from)
        }) {
            Ok(reply) => Ok(Session { conn, reply }),
            Err(ApiError::Remote { code, message }) if code == crate::api::code::POLICY => {
                Err(OpenError::Policy(message))
            }
            Err(e) => Err(OpenError::Api(e)),
        }
    }

    /// The scope's cgroup and v1 descriptors and the agent's request
    /// channel that came with the reply. On
    /// error the caller ends the scope with [`Session::abort`].
    pub fn take_scope(&mut self) -> Result<ScopeFds, ScopeError> {
        let mut fds = self.conn.take_fds().into_iter();
        let cgroup = fds.next().ok_or(ScopeError::NoCgroup)?;
        let v1_procs: Vec<OwnedFd> = fds.by_ref().take(self.reply.v1_procs).collect();
        if v1_procs.len() != self.reply.v1_procs {
            return Err(ScopeError::Descriptors);
        }
        let request_channel = if self.reply.request_channel {
            Some(fds.next().ok_or(ScopeError::NoRequestChannel)?)
        } else {
            None
        };
        if fds.next().is_some() {
            return Err(ScopeError::Descriptors);
        }
        Ok(ScopeFds {
            cgroup,
            v1_procs,
            request_channel,
        })
    }

    /// Tells guardd the agent's pid. Only `ps` uses it: the answer is not
    /// waited for.
    pub fn started(&mut self, pid: i32) {
        let _ = self.conn.send_request(
            ID_STARTED,
            &Request::Started(StartedRequest {
                agent: self.reply.agent.id.clone(),
                pid,
            }),
        );
    }

    /// Ends the scope when the agent never started; returns `code`.
    pub fn abort(&mut self, code: i32) -> i32 {
        let _ = self.conn.call(
            ID_ABORT,
            &Request::Exited(ExitedRequest {
                agent: self.reply.agent.id.clone(),
                status: ExitStatus::Code(code),
            }),
        );
        code
    }

    /// Tells guardd the agent ended and returns its summary, on a fresh
    /// connection from `reconnect` if guardd restarted meanwhile. `None`
    /// when guardd did not confirm.
    pub fn exited(
        &mut self,
        status: ExitStatus,
        reconnect: impl FnOnce() -> Option<LineConn>,
    ) -> Option<ExitReply> {
        let req = Request::Exited(ExitedRequest {
            agent: self.reply.agent.id.clone(),
            status,
        });
        let parse = |m: serde_json::Map<String, serde_json::Value>| {
            serde_json::from_value(serde_json::Value::Object(m)).ok()
        };
        match self.conn.call(ID_EXITED, &req) {
            Ok(m) => parse(m),
            Err(ApiError::Remote { .. }) => None,
            Err(_) => reconnect()?.call(ID_EXITED, &req).ok().and_then(parse),
        }
    }

    /// The line people read when the agent ended: how, and what guardd
    /// counted (`summary`, `None` if guardd did not confirm).
    pub fn summary(&self, status: ExitStatus, summary: Option<&ExitReply>) -> String {
        summary_line(&self.reply, status, summary)
    }
}

fn summary_line(reply: &OpenReply, status: ExitStatus, summary: Option<&ExitReply>) -> String {
    let how = match status {
        ExitStatus::Code(c) => format!("exited {c}"),
        ExitStatus::Signal(s) => format!("killed by signal {s}"),
    };
    let agent = format!("{} ({})", reply.agent.name, reply.agent.id);
    match summary {
        None => format!(
            "guard: agent {agent} {how}; guardd did not confirm the end of the scope — see: guardctl logs --agent {}",
            reply.agent.id
        ),
        Some(s) => {
            let mut parts = Vec::new();
            // Real refusals apart from would-be ones: in audit mode some
            // layers still refuse (seccomp, Unix-socket rules).
            if s.denied > 0 || s.audited == 0 {
                parts.push(format!("{} denied", s.denied));
            }
            if s.audited > 0 {
                parts.push(format!("{} would have been denied (audit mode)", s.audited));
            }
            if s.lost > 0 {
                parts.push(format!(
                    "{} not recorded (ring buffer full; counted in the journal)",
                    s.lost
                ));
            }
            if s.leftover_killed > 0 {
                parts.push(format!("{} leftover processes killed", s.leftover_killed));
            }
            format!(
                "guard: agent {agent} {how}; {} — see: guardctl logs --agent {}",
                parts.join(", "),
                reply.agent.id
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_lines() {
        let reply: OpenReply = serde_json::from_value(serde_json::json!({
            "agent": {"id": "a-1", "name": "t", "policy": "/t.toml"},
            "tmp": "/tmp/x", "cgroup": "/c", "v1_procs": 0, "degraded": [],
            "refuse_unix_sockets": false,
        }))
        .unwrap();
        assert_eq!(
            summary_line(&reply, ExitStatus::Signal(9), None),
            "guard: agent t (a-1) killed by signal 9; guardd did not confirm the end of the scope — see: guardctl logs --agent a-1"
        );
        let counts = |denied, audited, lost, leftover_killed| ExitReply {
            denied,
            audited,
            lost,
            leftover_killed,
        };
        assert_eq!(
            summary_line(&reply, ExitStatus::Code(0), Some(&counts(0, 0, 0, 0))),
            "guard: agent t (a-1) exited 0; 0 denied — see: guardctl logs --agent a-1"
        );
        assert_eq!(
            summary_line(&reply, ExitStatus::Code(3), Some(&counts(0, 2, 1, 4))),
            "guard: agent t (a-1) exited 3; 2 would have been denied (audit mode), \
             1 not recorded (ring buffer full; counted in the journal), 4 leftover processes killed \
             — see: guardctl logs --agent a-1"
        );
    }
}
