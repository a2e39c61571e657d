//! JSON-lines mirror of committed records, for log shippers and `tail -f`.
//! The store is the source of truth: a failing mirror is counted and logged
//! but never stops journaling.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use super::JournalError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MirrorSink {
    Stdout,
    /// `path` is rotated to `path.1` … `path.<keep>` before it would exceed
    /// `max_bytes`; `keep = 0` keeps no old files.
    File {
        path: PathBuf,
        max_bytes: u64,
        keep: usize,
    },
}

/// The open outputs.
pub(crate) struct Mirror {
    outputs: Vec<Output>,
}

enum Output {
    Stdout(io::Stdout),
    File(RotatingFile),
}

impl Mirror {
    pub(crate) fn open(sinks: &[MirrorSink]) -> Result<Mirror, JournalError> {
        let outputs = sinks
            .iter()
            .map(|s| match s {
                MirrorSink::Stdout => Ok(Output::Stdout(io::stdout())),
                MirrorSink::File {
                    path,
                    max_bytes,
                    keep,
                } => RotatingFile::open(path.clone(), *max_bytes, *keep).map(Output::File),
            })
            .collect::<Result<_, _>>()?;
        Ok(Mirror { outputs })
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.outputs.is_empty()
    }

    /// Writes one line per record to every output and flushes. Returns the
    /// errors met; every output is attempted regardless.
    pub(crate) fn write_batch<'a>(
        &mut self,
        lines: impl Iterator<Item = &'a str> + Clone,
    ) -> Vec<JournalError> {
        let mut errors = Vec::new();
        for out in &mut self.outputs {
            let result = match out {
                Output::Stdout(stdout) => {
                    let mut lock = stdout.lock();
                    lines
                        .clone()
                        .try_for_each(|l| {
                            lock.write_all(l.as_bytes())?;
                            lock.write_all(b"\n")
                        })
                        .and_then(|()| lock.flush())
                        .map_err(JournalError::io("write mirror", "<stdout>"))
                }
                Output::File(f) => f.write_lines(lines.clone()),
            };
            if let Err(e) = result {
                errors.push(e);
            }
        }
        errors
    }
}

struct RotatingFile {
    path: PathBuf,
    max_bytes: u64,
    keep: usize,
    file: Option<BufWriter<File>>,
    size: u64,
}

impl RotatingFile {
    fn open(path: PathBuf, max_bytes: u64, keep: usize) -> Result<RotatingFile, JournalError> {
        let (file, size) = open_append(&path)?;
        Ok(RotatingFile {
            path,
            max_bytes,
            keep,
            file: Some(file),
            size,
        })
    }

    fn write_lines<'a>(
        &mut self,
        lines: impl Iterator<Item = &'a str>,
    ) -> Result<(), JournalError> {
        for line in lines {
            let len = line.len() as u64 + 1;
            // Rotate before a line would cross the limit, so files stay
            // under max_bytes unless one line alone is larger.
            if self.size > 0 && self.size.saturating_add(len) > self.max_bytes {
                self.rotate()?;
            }
            let file = match &mut self.file {
                Some(f) => f,
                None => {
                    // A failed rotation left no file open; try again now.
                    let (f, size) = open_append(&self.path)?;
                    self.size = size;
                    self.file.insert(f)
                }
            };
            file.write_all(line.as_bytes())
                .and_then(|()| file.write_all(b"\n"))
                .map_err(JournalError::io("write mirror", &self.path))?;
            self.size += len;
        }
        if let Some(f) = &mut self.file {
            f.flush()
                .map_err(JournalError::io("flush mirror", &self.path))?;
        }
        Ok(())
    }

    fn rotate(&mut self) -> Result<(), JournalError> {
        if let Some(mut f) = self.file.take() {
            f.flush()
                .map_err(JournalError::io("flush mirror", &self.path))?;
        }
        if self.keep == 0 {
            remove_if_exists(&self.path)?;
        } else {
            for i in (1..self.keep).rev() {
                rename_if_exists(&numbered(&self.path, i), &numbered(&self.path, i + 1))?;
            }
            rename_if_exists(&self.path, &numbered(&self.path, 1))?;
        }
        let (file, size) = open_append(&self.path)?;
        self.file = Some(file);
        self.size = size;
        Ok(())
    }
}

fn open_append(path: &Path) -> Result<(BufWriter<File>, u64), JournalError> {
    let file = OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .map_err(JournalError::io("open mirror", path))?;
    let size = file
        .metadata()
        .map_err(JournalError::io("stat mirror", path))?
        .len();
    Ok((BufWriter::with_capacity(64 * 1024, file), size))
}

fn numbered(path: &Path, i: usize) -> PathBuf {
    super::suffixed(path, &format!(".{i}"))
}

fn rename_if_exists(from: &Path, to: &Path) -> Result<(), JournalError> {
    match fs::rename(from, to) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            Err(JournalError::io("rotate mirror", from)(e))
        }
        _ => Ok(()),
    }
}

fn remove_if_exists(path: &Path) -> Result<(), JournalError> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            Err(JournalError::io("remove mirror", path)(e))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(p: &Path) -> String {
        fs::read_to_string(p).unwrap_or_default()
    }

    #[test]
    fn rotates_and_keeps_at_most_keep_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.jsonl");
        let mut m = Mirror::open(&[MirrorSink::File {
            path: path.clone(),
            max_bytes: 10,
            keep: 2,
        }])
        .unwrap();
        // Each line is 5 bytes with its newline: two fit in one file.
        for batch in [
            ["aaaa", "bbbb"],
            ["cccc", "dddd"],
            ["eeee", "ffff"],
            ["gggg", "hhhh"],
        ] {
            assert!(m.write_batch(batch.into_iter()).is_empty());
        }
        assert_eq!(read(&path), "gggg\nhhhh\n");
        assert_eq!(read(&numbered(&path, 1)), "eeee\nffff\n");
        assert_eq!(read(&numbered(&path, 2)), "cccc\ndddd\n");
        assert!(!numbered(&path, 3).exists());
    }

    #[test]
    fn keep_zero_and_oversized_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.jsonl");
        let mut m = Mirror::open(&[MirrorSink::File {
            path: path.clone(),
            max_bytes: 4,
            keep: 0,
        }])
        .unwrap();
        assert!(m.write_batch(["a-long-line", "b"].into_iter()).is_empty());
        assert_eq!(read(&path), "b\n");
        assert!(!numbered(&path, 1).exists());
    }

    #[test]
    fn appends_to_existing_file_and_counts_its_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.jsonl");
        fs::write(&path, "old1\n").unwrap();
        let mut m = Mirror::open(&[MirrorSink::File {
            path: path.clone(),
            max_bytes: 10,
            keep: 1,
        }])
        .unwrap();
        assert!(m.write_batch(["new1", "new2"].into_iter()).is_empty());
        assert_eq!(read(&path), "new2\n");
        assert_eq!(read(&numbered(&path, 1)), "old1\nnew1\n");
    }

    #[test]
    fn unwritable_mirror_reports_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let bad = MirrorSink::File {
            path: dir.path().join("missing-dir/x.jsonl"),
            max_bytes: 10,
            keep: 1,
        };
        assert!(matches!(
            Mirror::open(&[bad]),
            Err(JournalError::Io {
                op: "open mirror",
                ..
            })
        ));
    }
}
