//! The journal as evidence: one writer per journal, reading it never changes
//! it, a copy is complete and verifiable, a rollback is caught against a
//! head kept off the host, offline queries, precise agent selection, and
//! output into a closed pipe.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{
    io::{BufRead, BufReader, Read},
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use common::*;
use guard_daemon::journal::{checkpoint_path, read_checkpoint_file};
use serde_json::Value;

/// Runs an agent that makes `n` refused connections (each its own record
/// with `--coalesce-interval 0`); returns its id.
fn refusals(g: &Guardd, name: &str, n: usize) -> String {
    let p = net_policy(g, name);
    let port = closed_port();
    let mut cmd = vec![PYTHON.to_owned(), agent_script("netprobe.py")];
    cmd.extend((0..n).map(|_| format!("tcp:127.0.0.1:{port}")));
    let out = g.run(&p, &[], &cmd.iter().map(String::as_str).collect::<Vec<_>>());
    Guardd::agent_id(&out)
}

fn ctl(args: &[&str]) -> Output {
    Command::new(GUARDCTL).args(args).output().unwrap()
}

fn verify(path: &Path, extra: &[&str]) -> Output {
    ctl(&[
        &["logs", "verify", "--journal", path.to_str().unwrap()],
        extra,
    ]
    .concat())
}

/// A copy of a journal and its checkpoint side file, as a reviewer would
/// take both.
fn copy_with_side(src: &Path, dst: &Path) {
    std::fs::copy(src, dst).unwrap();
    std::fs::copy(checkpoint_path(src), checkpoint_path(dst)).unwrap();
}

fn suffixed(path: &Path, s: &str) -> PathBuf {
    PathBuf::from(format!("{}{s}", path.display()))
}

fn json_lines(o: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Every record of the store at `journal`, read by guardctl without guardd.
fn offline_records(journal: &Path) -> Vec<Value> {
    json_lines(&ctl(&[
        "logs",
        "--journal",
        journal.to_str().unwrap(),
        "--json",
    ]))
}

/// `guardctl logs export DEST --journal JOURNAL`.
fn export_to(journal: &Path, dest: &Path) -> Output {
    ctl(&[
        "logs",
        "export",
        dest.to_str().unwrap(),
        "--journal",
        journal.to_str().unwrap(),
    ])
}

/// Waits until guardd's side file names a checkpoint at or after `seq`.
fn wait_for_checkpoint(journal: &Path, seq: u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let newest = read_checkpoint_file(&checkpoint_path(journal))
            .unwrap()
            .iter()
            .map(|c| c.seq)
            .max()
            .unwrap_or(0);
        if newest >= seq {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no checkpoint at {seq} (newest {newest})"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

struct RemoveInstance(String);

impl Drop for RemoveInstance {
    fn drop(&mut self) {
        remove_instance(&self.0);
    }
}

#[test]
fn a_second_guardd_on_the_same_journal_is_refused_naming_the_first() {
    let mut g = Guardd::start();
    // The same journal by its own path, through a symbolic link to its
    // directory, and through a symbolic link to the file itself.
    let dir_link = g.dir.path().join("journal-dir-link");
    std::os::unix::fs::symlink(g.journal.parent().unwrap(), &dir_link).unwrap();
    let file_link = g.dir.path().join("journal-link.db");
    std::os::unix::fs::symlink(&g.journal, &file_link).unwrap();
    let paths = [
        g.journal.clone(),
        dir_link.join(g.journal.file_name().unwrap()),
        file_link,
    ];
    for (n, journal) in paths.iter().enumerate() {
        let instance = format!("{}-second{n}", g.instance);
        // Should it start after all (the defect), what it made goes too,
        // even when an assertion below fails.
        let _cleanup = RemoveInstance(instance.clone());
        let socket = g.dir.path().join(format!("second{n}.sock"));
        let mut second = Command::new(GUARDD)
            .args(["--socket", socket.to_str().unwrap()])
            .args([
                "--state-dir",
                g.dir
                    .path()
                    .join(format!("state-second{n}"))
                    .to_str()
                    .unwrap(),
            ])
            .args(["--journal", journal.to_str().unwrap()])
            .args(["--instance", &instance])
            .args(["--metrics", "off"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // It must give up on its own; if not, it is ended here, by its pid.
        let status = wait_or_kill(&mut second, Duration::from_secs(20));
        let mut err = String::new();
        second
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        let status =
            status.unwrap_or_else(|| panic!("second guardd on {journal:?} did not exit:\n{err}"));
        assert!(!status.success(), "{journal:?}: {err}");
        for needle in [
            format!("pid {}", g.pid()),
            g.instance.clone(),
            g.socket.display().to_string(),
            "in use".to_owned(),
        ] {
            assert!(
                err.contains(&needle),
                "{journal:?}: {needle:?} not in:\n{err}"
            );
        }
        // Refused before it made anything of its own.
        assert!(!socket.exists());
        assert!(!Path::new("/sys/fs/bpf").join(&instance).exists());
    }

    // The first is unharmed: an agent's records arrive, SIGTERM stops it.
    let id = refusals(&g, "first", 3);
    let recs = g.logs(&["--agent", &id]);
    assert!(
        recs.iter()
            .any(|r| r["kind"] == "network" && r["verdict"] == "denied"),
        "{recs:#?}"
    );
    let t = Instant::now();
    g.stop();
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    let out = verify(&g.journal, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let store = rusqlite::Connection::open(&g.journal).unwrap();
    let n: i64 = store
        .query_row(
            "select count(*) from records where agent_id = ?1",
            [&id],
            |r| r.get(0),
        )
        .unwrap();
    assert!(n as usize >= recs.len(), "{n} < {}", recs.len());
}

#[test]
fn verify_reads_without_writing_and_names_what_is_wrong() {
    let mut g = Guardd::start_with(&["--coalesce-interval", "0"]);
    refusals(&g, "ro", 20);
    g.stop();
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("copy.db");
    copy_with_side(&g.journal, &copy);
    let before = std::fs::read(&copy).unwrap();
    let out = verify(&copy, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("intact"));
    assert!(
        std::fs::read(&copy).unwrap() == before,
        "verify changed the file"
    );
    for s in ["-wal", "-shm", "-journal"] {
        assert!(!suffixed(&copy, s).exists(), "verify created {s}");
    }

    // Corrupt: NOT intact, with the reason, not an internal error.
    let corrupt = dir.path().join("corrupt.db");
    let mut bytes = before.clone();
    bytes[..16].copy_from_slice(b"definitely not!!");
    std::fs::write(&corrupt, &bytes).unwrap();
    std::fs::copy(checkpoint_path(&g.journal), checkpoint_path(&corrupt)).unwrap();
    let out = verify(&corrupt, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let o = String::from_utf8_lossy(&out.stdout);
    assert!(
        o.contains("NOT intact") && o.contains("not a database"),
        "{}",
        describe(&out)
    );

    // No side file: said so, not "intact".
    let bare = dir.path().join("bare.db");
    std::fs::copy(&g.journal, &bare).unwrap();
    let out = verify(&bare, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("side file"),
        "{}",
        describe(&out)
    );
}

#[test]
fn the_main_file_and_an_export_hold_every_checkpointed_record_while_guardd_runs() {
    let g = Guardd::start_with(&["--coalesce-interval", "0"]);
    refusals(&g, "cp", 50);
    let all = g.logs(&[]);
    let head = *seqs(&all).last().unwrap();
    // Checkpoints come every 5 s; the WAL is copied into the main file then.
    wait_for_checkpoint(&g.journal, head);
    // The WAL is copied into the main file just after the checkpoint.
    std::thread::sleep(Duration::from_millis(500));
    let wal = std::fs::metadata(suffixed(&g.journal, "-wal")).map_or(0, |m| m.len());
    let main = std::fs::metadata(&g.journal).unwrap().len();
    eprintln!("while running: main file {main} bytes, WAL {wal} bytes, head {head}");

    // What a plain `cp` of the main file and side file takes.
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("plain.db");
    copy_with_side(&g.journal, &copy);
    let out = verify(&copy, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let plain = offline_records(&copy);
    assert!(*seqs(&plain).last().unwrap() >= head, "{}", plain.len());

    // The export: one snapshot, verified, while guardd keeps writing.
    let export = dir.path().join("export.db");
    let out = export_to(&g.journal, &export);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    for f in [export.clone(), checkpoint_path(&export)] {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&f).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", f.display());
    }
    let out = verify(&export, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let exported = offline_records(&export);
    assert_eq!(seqs(&exported)[..all.len()], seqs(&all)[..]);
    // Exporting never overwrites.
    let again = export_to(&g.journal, &export);
    assert_eq!(again.status.code(), Some(2), "{}", describe(&again));
    // Without --journal, verify and export use the store the guardd behind
    // GUARD_SOCKET writes, not a default path that is not this one.
    let out = g.ctl(&["logs", "verify"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(
        describe(&out).contains(g.journal.to_str().unwrap()),
        "{}",
        describe(&out)
    );
    let second = dir.path().join("second.db");
    let out = g.ctl(&["logs", "export", second.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert_eq!(verify(&second, &[]).status.code(), Some(0));
}

#[test]
fn a_rollback_is_caught_against_the_mirror_or_a_head() {
    let dir = tempfile::tempdir().unwrap();
    let mirror = dir.path().join("mirror.jsonl");
    let mut g = Guardd::start_with(&[
        "--coalesce-interval",
        "0",
        "--mirror",
        mirror.to_str().unwrap(),
    ]);
    refusals(&g, "early", 5);
    g.stop();
    // An older copy of both files, taken with guardd stopped.
    let older = dir.path().join("older.db");
    copy_with_side(&g.journal, &older);
    g.restart();
    refusals(&g, "late", 5);
    g.stop();

    let lines: Vec<Value> = std::fs::read_to_string(&mirror)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let last = lines.last().unwrap();
    let n = last["seq"].as_u64().unwrap();
    let head = format!("{n}:{}", last["hash"].as_str().unwrap());
    let m = mirror.to_str().unwrap();

    let out = verify(&g.journal, &["--mirror", m]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("off-host head {n}")),
        "{}",
        describe(&out)
    );

    // Newest records, their checkpoint rows and side-file lines removed.
    let cut = dir.path().join("cut.db");
    std::fs::copy(&g.journal, &cut).unwrap();
    let keep = n - 3;
    sqlite(
        &cut,
        &format!(
            "delete from records where seq > {keep}; delete from checkpoints where seq > {keep};"
        ),
    );
    let kept: String = std::fs::read_to_string(checkpoint_path(&g.journal))
        .unwrap()
        .lines()
        .filter(|l| {
            serde_json::from_str::<Value>(l).unwrap()["seq"]
                .as_u64()
                .unwrap()
                <= keep
        })
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(checkpoint_path(&cut), kept).unwrap();

    for rolled in [&cut, &older] {
        // The files alone cannot tell...
        let out = verify(rolled, &[]);
        assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
        // ...the head held elsewhere can.
        for extra in [["--mirror", m], ["--head", head.as_str()]] {
            let out = verify(rolled, &extra);
            assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
            assert!(
                String::from_utf8_lossy(&out.stdout).contains("rolled back"),
                "{}",
                describe(&out)
            );
        }
    }

    // A side file whose last line lost its newline still vouches for it.
    let trimmed = dir.path().join("trimmed.db");
    std::fs::copy(&cut, &trimmed).unwrap();
    let full = std::fs::read_to_string(checkpoint_path(&g.journal)).unwrap();
    std::fs::write(checkpoint_path(&trimmed), full.trim_end()).unwrap();
    let out = verify(&trimmed, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("truncated"),
        "{}",
        describe(&out)
    );

    let bad = verify(&g.journal, &["--head", "12:xyz"]);
    assert_eq!(bad.status.code(), Some(2), "{}", describe(&bad));
}

#[test]
fn offline_queries_match_guardd_and_agents_are_named_precisely() {
    let mut g = Guardd::start_with(&["--coalesce-interval", "0"]);
    let a = refusals(&g, "offa", 4);
    refusals(&g, "offb", 2);
    let filters: Vec<Vec<String>> = vec![
        vec![],
        vec!["--agent".into(), a.clone()],
        vec![
            "--agent".into(),
            "offb".into(),
            "--kind".into(),
            "network".into(),
        ],
        vec!["--agent".into(), a[..6].to_owned()],
        vec!["--verdict".into(), "denied".into()],
        vec![
            "--agent".into(),
            a.clone(),
            "--kind".into(),
            "lifecycle".into(),
            "-n".into(),
            "2".into(),
        ],
        vec!["--target".into(), "127.0.0.1".into()],
    ];
    let online: Vec<Vec<u64>> = filters
        .iter()
        .map(|f| seqs(&g.logs(&f.iter().map(String::as_str).collect::<Vec<_>>())))
        .collect();
    let last_online = *online[0].last().unwrap();
    // A prefix selects the same records as the whole id.
    assert_eq!(online[3], online[1]);
    assert!(!online[1].is_empty());

    // Unknown agent: an error naming it, on both paths.
    let out = g.ctl(&["logs", "--agent", "no-such-agent"]);
    assert_ne!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no-such-agent"),
        "{}",
        describe(&out)
    );
    g.stop();

    let j = g.journal.to_str().unwrap();
    let before = std::fs::read(&g.journal).unwrap();
    for (f, want) in filters.iter().zip(&online) {
        let args: Vec<&str> = [
            &["logs", "--json", "--journal", j][..],
            &f.iter().map(String::as_str).collect::<Vec<_>>(),
        ]
        .concat();
        let out = ctl(&args);
        assert_eq!(out.status.code(), Some(0), "{f:?}: {}", describe(&out));
        // guardd's own stop record came after the online queries.
        let got: Vec<u64> = seqs(&json_lines(&out))
            .into_iter()
            .filter(|s| *s <= last_online)
            .collect();
        assert_eq!(&got, want, "{f:?}");
    }
    assert!(
        std::fs::read(&g.journal).unwrap() == before,
        "the query changed the file"
    );
    assert!(!suffixed(&g.journal, "-wal").exists());

    let out = ctl(&["logs", "--journal", j, "--agent", "no-such-agent"]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no-such-agent"));

    // Two ids with a common prefix (in a copy; real ids are random).
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("two.db");
    std::fs::copy(&g.journal, &copy).unwrap();
    sqlite(
        &copy,
        "insert into agents values ('feed0001', 'x'); insert into agents values ('feed0002', 'y');",
    );
    let out = ctl(&[
        "logs",
        "--journal",
        copy.to_str().unwrap(),
        "--agent",
        "feed",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("feed0001") && err.contains("feed0002"),
        "{err}"
    );
}

/// Runs `guardctl args`, reads one line of its output and closes the pipe,
/// as `| head -1` does; then `after` runs (to produce more output for a
/// follower). Returns its exit status and stderr.
fn head_1(g: &Guardd, args: &[&str], after: impl FnOnce()) -> (Option<i32>, String) {
    let mut child = g
        .ctl_cmd()
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert!(!line.is_empty());
    drop(out);
    after();
    let status = wait_or_kill(&mut child, Duration::from_secs(20))
        .unwrap_or_else(|| panic!("guardctl {args:?} did not end after its reader left"));
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    (status.code(), err)
}

#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    let g = Guardd::start_with(&["--coalesce-interval", "0"]);
    // Far more than a pipe buffer (64 KiB) of output.
    refusals(&g, "pipe", 400);
    let j = g.journal.to_str().unwrap().to_owned();
    for args in [
        vec!["logs", "--json"],
        vec!["logs", "--ocsf"],
        vec!["logs", "--json", "--journal", &j],
    ] {
        let (code, err) = head_1(&g, &args, || ());
        assert_eq!(code, Some(0), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
    for args in [
        vec!["logs", "--follow"],
        vec!["logs", "--follow", "--json"],
        vec!["logs", "--follow", "--journal", &j],
    ] {
        let (code, err) = head_1(&g, &args, || {
            // New records reach the follower, which then meets the pipe.
            std::thread::sleep(Duration::from_millis(300));
            refusals(&g, "more", 3);
        });
        assert_eq!(code, Some(0), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}

#[test]
fn a_journal_that_cannot_write_refuses_agents_and_still_stops() {
    let mut g = Guardd::start();
    let p = net_policy(&g, "wedge");
    // guardd's start record is committed first.
    let deadline = Instant::now() + Duration::from_secs(10);
    while g.logs(&[]).is_empty() {
        assert!(Instant::now() < deadline, "no daemon-start record");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Another process writes the next seq behind guardd's back (bypassing
    // the lock), as a second guardd on the same journal used to.
    let c = rusqlite::Connection::open(&g.journal).unwrap();
    c.busy_timeout(Duration::from_secs(5)).unwrap();
    let taken = loop {
        let max: i64 = c
            .query_row("select coalesce(max(seq), 0) from records", [], |r| {
                r.get(0)
            })
            .unwrap();
        if c.execute(
            "insert into records(seq, json, hash) values (?1, '{}', 'x')",
            [max + 1],
        )
        .is_ok()
        {
            break max + 1;
        }
    };
    drop(c);
    let mut first = g.spawn_run(&p, &[], &["/bin/true"]);
    // Whether it ran or was refused, it must not hang.
    wait_or_kill(&mut first, Duration::from_secs(30))
        .unwrap_or_else(|| panic!("guardctl run hung on a journal that cannot write"));
    // From now on no agent starts: its violations would go unrecorded.
    let deadline = Instant::now() + Duration::from_secs(10);
    let refused = loop {
        let out = g.run(&p, &[], &["/bin/true"]);
        if !out.status.success() {
            break out;
        }
        assert!(Instant::now() < deadline, "agents still start");
        std::thread::sleep(Duration::from_millis(100));
    };
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("journal cannot record"), "{err}");
    let t = Instant::now();
    g.stop();
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    let log = g.log();
    assert!(log.contains("another writer"), "{log}");
    // What could not be committed is in the log, not silently gone.
    assert!(log.contains("uncommitted journal record"), "{log}");
    // The first agent's start record, among them.
    assert!(
        log.lines()
            .any(|l| l.contains("uncommitted journal record") && l.contains("wedge")),
        "{log}"
    );
    // The journal itself is intact up to there; the foreign row is found.
    let out = verify(&g.journal, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("record {taken} was altered")),
        "{}",
        describe(&out)
    );
}
