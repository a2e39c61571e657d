//! One writer per journal. Two writers on one store would each assign the
//! next seq from their own chain head: the second's batches then fail with
//! a constraint violation forever, and the chain forks. So a writer holds an
//! exclusive `flock` on `<journal>.lock` for as long as its journal is open,
//! and writes into it who it is, so that a second writer can be refused
//! with a message naming the first.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use super::JournalError;

/// `<store>.lock`, beside the store as it really is: a journal named
/// through a symbolic link (to the file, or to a directory above it) gets
/// the same lock as through its own path. (A hard link or a bind mount of
/// the file itself is not seen through; the directory is what is shared.)
pub fn lock_path(store_path: &Path) -> PathBuf {
    let real = std::fs::canonicalize(store_path).ok().or_else(|| {
        // Not created yet: its directory, resolved, and its name.
        let dir = store_path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        Some(
            std::fs::canonicalize(dir)
                .ok()?
                .join(store_path.file_name()?),
        )
    });
    super::suffixed(real.as_deref().unwrap_or(store_path), ".lock")
}

/// The held lock; released when dropped (the kernel also releases it when
/// the process dies, so a crash leaves no stale lock).
#[derive(Debug)]
pub struct JournalLock {
    // Kept open: closing the descriptor releases the lock.
    _file: File,
    path: PathBuf,
}

impl JournalLock {
    /// Takes the lock for the store at `store_path`, recording `holder`
    /// (e.g. `guardd pid 12 (instance guard, socket /run/guard.sock)`).
    /// Fails with [`JournalError::Locked`] naming the current holder.
    pub fn acquire(store_path: &Path, holder: &str) -> Result<JournalLock, JournalError> {
        let path = lock_path(store_path);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(JournalError::io("open journal lock", &path))?;
        // SAFETY: flock only reads the descriptor, which `file` keeps open
        // for the duration of the call.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(JournalError::io("lock journal", &path)(err));
            }
            let mut text = String::new();
            // Best effort: the holder may be between taking the lock and
            // writing its name.
            let _ = file.read_to_string(&mut text);
            let text = text.trim();
            return Err(JournalError::Locked {
                path: store_path.to_owned(),
                holder: if text.is_empty() {
                    format!("another process (lock {} held)", path.display())
                } else {
                    text.to_owned()
                },
            });
        }
        file.set_len(0)
            .and_then(|()| file.seek(SeekFrom::Start(0)))
            .and_then(|_| file.write_all(format!("{holder}\n").as_bytes()))
            .and_then(|()| file.flush())
            .map_err(JournalError::io("record journal lock holder in", &path))?;
        Ok(JournalLock { _file: file, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_by_name_until_the_first_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("j.db");
        let first = JournalLock::acquire(&store, "guardd pid 1 (instance a)").unwrap();
        assert_eq!(first.path(), lock_path(&store));
        let err = JournalLock::acquire(&store, "guardd pid 2").unwrap_err();
        match &err {
            JournalError::Locked { holder, .. } => {
                assert_eq!(holder, "guardd pid 1 (instance a)");
            }
            other => panic!("{other:?}"),
        }
        assert!(err.to_string().contains("pid 1"), "{err}");
        drop(first);
        let second = JournalLock::acquire(&store, "guardd pid 2").unwrap();
        assert_eq!(
            std::fs::read_to_string(second.path()).unwrap(),
            "guardd pid 2\n"
        );
    }
}
