//! The checkpoint side file: an append-only, fsync'd file of chain heads
//! beside the store, so removing the newest records (which leaves a valid
//! chain) is still detected. Reading and writing it; no verification.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::JournalError;

/// A recorded chain head.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub seq: u64,
    pub hash: String,
    /// When the checkpoint was taken (RFC 3339 UTC).
    pub time: String,
}

/// `<store path>.checkpoint`.
pub fn checkpoint_path(store_path: &Path) -> PathBuf {
    super::suffixed(store_path, ".checkpoint")
}

/// Reads the side file; a missing file means no checkpoints. A final line
/// without a newline is read as [`read_json_lines`] reads it.
pub fn read_checkpoint_file(path: &Path) -> Result<Vec<Checkpoint>, JournalError> {
    Ok(read_side_file(path)?.unwrap_or_default())
}

/// [`read_checkpoint_file`], telling a missing file (`None`) from an empty
/// one.
pub(crate) fn read_side_file(path: &Path) -> Result<Option<Vec<Checkpoint>>, JournalError> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(JournalError::io("open checkpoint file", path)(e)),
    };
    let mut out = Vec::new();
    read_json_lines(
        file,
        path,
        "read checkpoint file",
        |body| serde_json::from_slice(body),
        |line, source| JournalError::CorruptCheckpoint {
            path: path.to_owned(),
            line,
            source,
        },
        |cp| out.push(cp),
    )?;
    Ok(Some(out))
}

/// Hands each line of a JSON-lines file that `parse` accepts to `each`,
/// skipping blank lines. A final line without a newline is still a line
/// when it parses (removing the newline must not hide the newest entry);
/// only one that does not parse is taken as a write torn by a crash and
/// ignored. Any other line that does not parse is an error, made by
/// `corrupt` from its 1-based number.
pub(crate) fn read_json_lines<T, E>(
    file: File,
    path: &Path,
    op: &'static str,
    parse: impl Fn(&[u8]) -> Result<T, E>,
    corrupt: impl Fn(usize, E) -> JournalError,
    mut each: impl FnMut(T),
) -> Result<(), JournalError> {
    let mut reader = BufReader::new(file);
    let mut line = Vec::new();
    let mut number = 0;
    loop {
        line.clear();
        let n = reader
            .read_until(b'\n', &mut line)
            .map_err(JournalError::io(op, path))?;
        if n == 0 {
            return Ok(());
        }
        number += 1;
        let body = line.trim_ascii();
        if body.is_empty() {
            continue;
        }
        match parse(body) {
            Ok(v) => each(v),
            Err(_) if line.last() != Some(&b'\n') => return Ok(()),
            Err(e) => return Err(corrupt(number, e)),
        }
    }
}

/// Append-only, fsync'd writer for the side file.
pub(crate) struct CheckpointFile {
    path: PathBuf,
    file: File,
}

impl CheckpointFile {
    pub(crate) fn open(path: PathBuf) -> Result<CheckpointFile, JournalError> {
        let existed = path.exists();
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)
            .map_err(JournalError::io("open checkpoint file", &path))?;
        drop_torn_tail(&mut file).map_err(JournalError::io("repair checkpoint file", &path))?;
        if !existed {
            // The file's directory entry must survive a crash too, or the
            // checkpoints in it are lost with it.
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                File::open(dir)
                    .and_then(|d| d.sync_all())
                    .map_err(JournalError::io("sync checkpoint directory", dir))?;
            }
        }
        Ok(CheckpointFile { path, file })
    }

    pub(crate) fn append(&mut self, cp: &Checkpoint) -> Result<(), JournalError> {
        let mut line =
            serde_json::to_vec(cp).map_err(JournalError::json("serialise checkpoint"))?;
        line.push(b'\n');
        self.file
            .write_all(&line)
            .and_then(|()| self.file.sync_data())
            .map_err(JournalError::io("append checkpoint", &self.path))
    }
}

/// A crash mid-append leaves a partial last line; appending after it would
/// glue two checkpoints into one unparseable line.
fn drop_torn_tail(file: &mut File) -> std::io::Result<()> {
    let len = file.metadata()?.len();
    if len == 0 {
        return Ok(());
    }
    // Checkpoint lines are short, so the last newline is within this window.
    let window = len.min(4096);
    file.seek(SeekFrom::Start(len - window))?;
    let mut buf = Vec::with_capacity(usize::try_from(window).unwrap_or(4096));
    Read::by_ref(file).take(window).read_to_end(&mut buf)?;
    if buf.last() == Some(&b'\n') {
        return Ok(());
    }
    let last_newline = buf.iter().rposition(|&b| b == b'\n');
    let tail_start = last_newline.map_or(0, |i| i + 1);
    if serde_json::from_slice::<Checkpoint>(buf[tail_start..].trim_ascii()).is_ok() {
        // A whole checkpoint that lost its newline: keep it, end the line.
        file.write_all(b"\n")?;
        return file.sync_data();
    }
    let keep = match last_newline {
        Some(i) => len - window + i as u64 + 1,
        None if window == len => 0,
        None => return Ok(()),
    };
    file.set_len(keep)?;
    file.sync_data()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::hash::GENESIS_HASH;

    #[test]
    fn checkpoint_file_round_trips_and_survives_torn_writes() {
        let dir = tempfile::tempdir().unwrap();
        let path = checkpoint_path(&dir.path().join("j.db"));
        assert!(path.ends_with("j.db.checkpoint"));
        assert!(read_checkpoint_file(&path).unwrap().is_empty());
        let cp = |seq| Checkpoint {
            seq,
            hash: GENESIS_HASH.into(),
            time: "t".into(),
        };
        let mut f = CheckpointFile::open(path.clone()).unwrap();
        f.append(&cp(1)).unwrap();
        drop(f);
        // A crash in the middle of the second append.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"{\"seq\":2,\"ha")
            .unwrap();
        assert_eq!(read_checkpoint_file(&path).unwrap(), vec![cp(1)]);
        let mut f = CheckpointFile::open(path.clone()).unwrap();
        f.append(&cp(3)).unwrap();
        assert_eq!(read_checkpoint_file(&path).unwrap(), vec![cp(1), cp(3)]);

        std::fs::write(&path, "garbage\n").unwrap();
        assert!(matches!(
            read_checkpoint_file(&path),
            Err(JournalError::CorruptCheckpoint { line: 1, .. })
        ));
    }
}
