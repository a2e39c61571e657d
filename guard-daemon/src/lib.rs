//! guard's daemon and command-line tool: everything that is not kernel code.
//! One module per job; see docs/architecture.md.

pub mod api;
pub mod daemon;
pub mod dns;
pub mod doctor;
pub mod host;
pub mod journal;
pub mod kernel;
pub mod launch;
pub mod metrics;
pub mod monitor;
pub mod policy;
pub mod scope;
pub mod selftest;
pub mod syscalls;
