//! guard's daemon and command-line tool: everything that is not kernel code.
//! One module per job; see docs/architecture.md.

pub mod kernel;
