//! `cargo xtask demo`: a demo agent confined by `policies/demo.toml`, its
//! refused attempts, and the journal records that show them.
//!
//! Everything runs in a private guardd instance (own socket, journal,
//! cgroup and bpffs directory) and is removed afterwards, also on failure.

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::workspace_root;

/// Children started by the demo, ended by pid on drop.
struct Procs(Vec<(String, Child)>);

impl Drop for Procs {
    fn drop(&mut self) {
        for (name, child) in self.0.iter_mut().rev() {
            // SIGTERM first (guardd cleans up its pins and cgroups on it).
            if !crate::child::terminate(child, Duration::from_secs(10)) {
                eprintln!("demo: {name} did not stop; it was killed");
            }
        }
    }
}

fn wait_for(path: &Path, what: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !path.exists() {
        if Instant::now() > deadline {
            bail!("{what} did not come up");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

fn wait_for_port(addr: &str, what: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(addr).is_err() {
        if Instant::now() > deadline {
            bail!("{what} did not come up on {addr}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

pub fn run() -> anyhow::Result<()> {
    let root = workspace_root();
    // Where cargo put the build (CARGO_TARGET_DIR is honoured).
    let bin = crate::image::release_dir()?;
    let dir = tempfile::Builder::new()
        .prefix("guard-demo")
        .tempdir()
        .context("creating a temporary directory")?;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
    for port in ["127.0.0.1:8765", "127.0.0.2:8766"] {
        if std::net::TcpStream::connect(port).is_ok() {
            bail!("{port} is already in use; the demo needs it free");
        }
    }

    // The agent's workspace: a ticket to read, and the agent program itself
    // (it must be inside what the policy lets it read).
    let workspace = dir.path().join("workspace");
    std::fs::create_dir(&workspace)?;
    std::fs::write(
        workspace.join("ticket.txt"),
        "Customer 4711 asks where order 42 is.\n",
    )?;
    std::fs::copy(
        root.join("tests/agents/demo_agent.py"),
        workspace.join("agent.py"),
    )?;
    let api = dir.path().join("api");
    std::fs::create_dir(&api)?;
    std::fs::write(
        api.join("orders.json"),
        r#"{"orders": [{"id": 42, "status": "shipped"}]}"#,
    )?;

    let mut procs = Procs(Vec::new());
    let quiet = || Stdio::null();
    procs.0.push((
        "orders API".into(),
        Command::new("/usr/bin/python3")
            .args([
                "-m",
                "http.server",
                "8765",
                "--bind",
                "127.0.0.1",
                "--directory",
            ])
            .arg(&api)
            .stdout(quiet())
            .stderr(quiet())
            .spawn()
            .context("starting the orders API")?,
    ));
    let attacker_log = dir.path().join("attacker.log");
    procs.0.push((
        "attacker listener".into(),
        Command::new("/usr/bin/python3")
            .arg("-c")
            .arg(format!(
                "import socket\ns=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
                 s.bind(('127.0.0.2', 8766)); s.listen()\nwhile True:\n    c, a = s.accept()\n    \
                 open('{}', 'a').write('connection from %s\\n' % (a,))\n    c.close()\n",
                attacker_log.display()
            ))
            .stdout(quiet())
            .stderr(quiet())
            .spawn()
            .context("starting the attacker's listener")?,
    ));
    wait_for_port("127.0.0.1:8765", "the orders API")?;
    wait_for_port("127.0.0.2:8766", "the attacker's listener")?;
    // The readiness probe above is the only connection so far: start the
    // attacker's count from zero.
    std::thread::sleep(Duration::from_millis(100));
    let _ = std::fs::remove_file(&attacker_log);

    // The DNS server the node's resolvers would forward to: it knows the
    // orders API's name (and, like any real resolver, would answer any
    // other name too; guardd asks it only for names the policy allows).
    let dns =
        crate::dnsserver::Unbound::start("demo.test", "orders IN A 127.0.0.1", "orders.demo.test")?;

    let socket = dir.path().join("guard.sock");
    let journal = dir.path().join("journal.db");
    procs.0.push((
        "guardd".into(),
        Command::new(bin.join("guardd"))
            .args([
                "--instance",
                "guard-demo",
                "--metrics",
                "off",
                "--dns-upstream",
            ])
            .arg(dns.addr())
            .arg("--socket")
            .arg(&socket)
            .arg("--journal")
            .arg(&journal)
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .stdout(quiet())
            .stderr(std::fs::File::create(dir.path().join("guardd.log"))?)
            .spawn()
            .context("starting guardd")?,
    ));
    wait_for(&socket, "guardd")?;
    // guardd binds before it finishes loading; `ps` answers once it serves.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !Command::new(bin.join("guardctl"))
        .env("GUARD_SOCKET", &socket)
        .arg("ps")
        .stdout(quiet())
        .stderr(quiet())
        .status()?
        .success()
    {
        if Instant::now() > deadline {
            bail!(
                "guardd did not start:\n{}",
                std::fs::read_to_string(dir.path().join("guardd.log"))?
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }

    let policy: PathBuf = root.join("policies/demo.toml");
    println!("\n$ guardctl run --policy policies/demo.toml -- python3 agent.py\n");
    let status = Command::new(bin.join("guardctl"))
        .env("GUARD_SOCKET", &socket)
        .current_dir(&workspace)
        .arg("run")
        .arg("--policy")
        .arg(&policy)
        .args(["--", "/usr/bin/python3", "agent.py"])
        .status()
        .context("running guardctl")?;
    if !status.success() {
        bail!("the demo agent failed ({status})");
    }

    println!("\n$ guardctl logs --agent demo-agent --verdict denied\n");
    let status = Command::new(bin.join("guardctl"))
        .env("GUARD_SOCKET", &socket)
        .args(["logs", "--agent", "demo-agent", "--verdict", "denied"])
        .status()?;
    if !status.success() {
        bail!("guardctl logs failed");
    }
    let reached = std::fs::read_to_string(&attacker_log).unwrap_or_default();
    println!(
        "\nThe attacker's listener received {} connection(s).",
        reached.lines().count()
    );
    println!(
        "Every record above is hash-chained; `guardctl logs --agent demo-agent --json` shows them in full."
    );

    learn_draft_enforce(&bin, &socket, &workspace, dir.path(), &attacker_log)?;
    drop(procs);
    drop(dns);
    Ok(())
}

/// The second act: no policy written by hand. The agent runs once in learn
/// mode doing only its job, guard drafts the policy from the journal, and
/// the whole agent, misbehaviour included, then runs under the draft.
fn learn_draft_enforce(
    bin: &Path,
    socket: &Path,
    workspace: &Path,
    dir: &Path,
    attacker_log: &Path,
) -> anyhow::Result<()> {
    let ctl = || {
        let mut c = Command::new(bin.join("guardctl"));
        c.env("GUARD_SOCKET", socket).current_dir(workspace);
        c
    };
    println!("\n== The same agent, with a policy guard drafted instead of one written by hand\n");
    println!("$ guardctl run --learn --name support-bot -- python3 agent.py --job-only\n");
    let status = ctl()
        .args(["run", "--learn", "--name", "support-bot", "--"])
        .args(["/usr/bin/python3", "agent.py", "--job-only"])
        .status()
        .context("running guardctl run --learn")?;
    if !status.success() {
        bail!("the learn run failed ({status})");
    }
    let draft = dir.join("support-bot.toml");
    println!(
        "\n$ guardctl policy draft --agent support-bot -o support-bot.toml && cat support-bot.toml\n"
    );
    let status = ctl()
        .args(["policy", "draft", "--agent", "support-bot", "-o"])
        .arg(&draft)
        .status()
        .context("running guardctl policy draft")?;
    if !status.success() {
        bail!("guardctl policy draft failed ({status})");
    }
    print!("{}", std::fs::read_to_string(&draft)?);
    let _ = std::fs::remove_file(attacker_log);
    println!("\n$ guardctl run --policy support-bot.toml -- python3 agent.py\n");
    let out = ctl()
        .arg("run")
        .arg("--policy")
        .arg(&draft)
        .args(["--", "/usr/bin/python3", "agent.py"])
        .stderr(Stdio::piped())
        .output()
        .context("running guardctl under the draft")?;
    print!("{}", String::from_utf8_lossy(&out.stdout));
    let err = String::from_utf8_lossy(&out.stderr);
    eprint!("{err}");
    if !out.status.success() {
        bail!("the agent failed under the draft ({})", out.status);
    }
    // This run's records only (the learn run journaled under the same name).
    let id = err
        .lines()
        .find_map(|l| l.split("--agent ").nth(1))
        .map(str::trim)
        .context("no agent id in guardctl's summary")?
        .to_owned();
    println!("\n$ guardctl logs --agent {id} --verdict denied\n");
    let status = ctl()
        .args(["logs", "--agent", &id, "--verdict", "denied"])
        .status()?;
    if !status.success() {
        bail!("guardctl logs failed");
    }
    let reached = std::fs::read_to_string(attacker_log).unwrap_or_default();
    println!(
        "\nUnder the draft the attacker's listener received {} connection(s): the draft allows what the job \
         needed and nothing else.",
        reached.lines().count()
    );
    Ok(())
}
