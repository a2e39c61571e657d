//! One module per guardctl verb; shared helpers here.

pub mod control;
pub mod doctor;
pub mod grant;
pub mod logs;
pub mod policy;
pub mod ps;
pub mod requests;
pub mod run;
pub mod selftest;

use std::{os::fd::OwnedFd, path::Path};

use guard_daemon::api::{ApiError, LineConn};

/// Connects to guardd, or explains how to start it.
pub fn connect(socket: &Path) -> Result<LineConn, String> {
    match std::os::unix::net::UnixStream::connect(socket) {
        Ok(s) => Ok(LineConn::new(OwnedFd::from(s))),
        Err(e) => Err(format!(
            "cannot reach guardd at {} ({e}). Start it with `sudo guardd` (or point --socket / GUARD_SOCKET at a running one)",
            socket.display()
        )),
    }
}

/// An error as people read it: guardd's message without its protocol code
/// (the code stays in the protocol for programs, and picks exit statuses).
pub fn describe(e: &ApiError) -> String {
    match e {
        ApiError::Remote { message, .. } => message.clone(),
        other => other.to_string(),
    }
}

/// Prints an error the way every verb does.
pub fn fail(msg: impl std::fmt::Display) {
    eprintln!("guardctl: {msg}");
}
