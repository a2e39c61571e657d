//! Child processes the tasks start: their output, and ending them by pid.

use std::{
    io::Read as _,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

/// Runs `cmd` to its end and returns its standard output; a failure says
/// what it printed on standard error.
pub fn output_of(cmd: &mut Command) -> anyhow::Result<String> {
    finish(cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?)
}

/// Waits for a child started with piped output (as [`output_of`] starts
/// one) and returns its standard output.
pub fn finish(mut child: Child) -> anyhow::Result<String> {
    let mut out = String::new();
    child
        .stdout
        .take()
        .context("no stdout")?
        .read_to_string(&mut out)?;
    let st = child.wait()?;
    if !st.success() {
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        bail!("{st}: {err}");
    }
    Ok(out)
}

/// SIGTERM, then SIGKILL if it has not ended `within`; returns whether it
/// ended on SIGTERM.
pub fn terminate(child: &mut Child, within: Duration) -> bool {
    // SAFETY: signalling a child this task started, by its pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + within;
    while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    if matches!(child.try_wait(), Ok(None)) {
        let _ = child.kill();
        let _ = child.wait();
        return false;
    }
    true
}
