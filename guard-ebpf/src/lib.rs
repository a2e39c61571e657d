//! Empty library so that guard-daemon can name this crate as a build
//! dependency (its build script rebuilds the BPF objects when it changes).
#![no_std]
