//! Lookups through an agent's resolver against the same DNS server asked
//! directly (issue 12): latency (median, p99) and sustained lookups per
//! second, for one agent and across ten at once.

use std::{
    net::UdpSocket,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{
    bench::{Daemon, Row},
    child::{finish, output_of},
    dnsserver::{Unbound, query},
};

/// One lookup on `s` (connected): waits for the answer with our id.
fn lookup(s: &UdpSocket, name: &str, id: u16) -> anyhow::Result<()> {
    s.send(&query(name, id))?;
    let mut buf = [0u8; 1500];
    loop {
        let n = s.recv(&mut buf).context("no answer")?;
        if n >= 12 && buf[..2] == id.to_be_bytes() {
            if buf[3] & 0xf != 0 || buf[7] == 0 {
                bail!("answer without an address (rcode {})", buf[3] & 0xf);
            }
            return Ok(());
        }
    }
}

fn connected(server: &str) -> anyhow::Result<UdpSocket> {
    let bind = if server.starts_with('[') {
        "[::]:0"
    } else {
        "0.0.0.0:0"
    };
    let s = UdpSocket::bind(bind)?;
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    s.connect(server)
        .with_context(|| format!("connecting to {server}"))?;
    Ok(s)
}

/// The hidden `dns-latency SERVER NAME N` subcommand: N sequential
/// lookups; prints "median_ns p99_ns".
pub fn latency_main(server: &str, name: &str, n: usize) -> anyhow::Result<()> {
    let s = connected(server)?;
    // Warm-up: the first answer fills caches on every side.
    for i in 0..20u16 {
        lookup(&s, name, i)?;
    }
    let mut times = Vec::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        lookup(&s, name, (i % 60000) as u16 + 100)?;
        times.push(t.elapsed().as_nanos() as f64);
    }
    times.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    let p99 = times[(times.len() * 99 / 100).min(times.len() - 1)];
    println!("{} {}", times[times.len() / 2], p99);
    Ok(())
}

/// The hidden `dns-rate SERVER NAME SECS THREADS` subcommand: THREADS
/// clients doing sequential lookups for SECS seconds; prints the lookups
/// answered.
pub fn rate_main(server: &str, name: &str, secs: f64, threads: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (server, name) = (server.to_owned(), name.to_owned());
            std::thread::spawn(move || -> anyhow::Result<u64> {
                let s = connected(&server)?;
                let mut done = 0u64;
                let mut id = (t as u16).wrapping_mul(4099);
                while Instant::now() < deadline {
                    id = id.wrapping_add(1);
                    lookup(&s, &name, id)?;
                    done += 1;
                }
                Ok(done)
            })
        })
        .collect();
    let mut total = 0;
    for h in handles {
        total += h
            .join()
            .map_err(|_| anyhow::anyhow!("a client panicked"))??;
    }
    println!("{total}");
    Ok(())
}

pub fn run(bin: &Path, work: &Path, quick: bool, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let dns = Unbound::start("bench.test", "api IN A 127.0.0.21", "api.bench.test")?;
    let d = Daemon::start_with(bin, None, &["--dns-upstream", &dns.addr()])?;
    let me = std::env::current_exe()?;
    let probe = work.join("xtask-dns");
    std::fs::copy(&me, &probe)?;
    let policy = work.join("dns.toml");
    std::fs::write(
        &policy,
        "[policy]\nname = \"bench-dns\"\n\n[network]\nallow = [ { host = \"api.bench.test\", ports = [443] } ]\n\n\
         [network.dns]\nanswers_allowed = [\"127.0.0.0/8\"]\n",
    )?;
    let name = "api.bench.test";
    let inside = |args: &[String]| -> Command {
        let mut c = Command::new(bin.join("guardctl"));
        c.env("GUARD_SOCKET", &d.socket)
            .current_dir(work)
            .arg("run")
            .arg("--policy")
            .arg(&policy)
            .arg("--")
            .arg(&probe)
            .args(args);
        c
    };
    let n = if quick { 2000 } else { 10_000 };
    // The agent asks the address its resolv.conf would name; the kernel
    // sends it to guardd's resolver for the agent.
    let lat = |server: &str| {
        vec![
            "dns-latency".into(),
            server.into(),
            name.into(),
            n.to_string(),
        ]
    };
    let parse2 = |s: String| -> anyhow::Result<(f64, f64)> {
        let mut it = s.split_whitespace().map(str::parse::<f64>);
        match (it.next(), it.next()) {
            (Some(Ok(a)), Some(Ok(b))) => Ok((a, b)),
            _ => bail!("bad latency output {s:?}"),
        }
    };
    let direct = parse2(output_of(Command::new(&probe).args(lat(&dns.addr())))?)?;
    let through = parse2(output_of(&mut inside(&lat("127.0.0.53:53")))?)?;
    rows.push(Row {
        what: "DNS lookup through guard, median".into(),
        value: format!("{:.0} us", through.0 / 1e3),
        baseline: format!("{:.0} us direct", direct.0 / 1e3),
        ratio: format!("{:+.0} us", (through.0 - direct.0) / 1e3),
        target: "added <= 500 us".into(),
    });
    rows.push(Row {
        what: "DNS lookup through guard, p99".into(),
        value: format!("{:.0} us", through.1 / 1e3),
        baseline: format!("{:.0} us direct", direct.1 / 1e3),
        ratio: format!("{:.2}x", through.1 / direct.1),
        target: "".into(),
    });
    let secs = if quick { 2.0 } else { 5.0 };
    let rate = |server: &str| {
        vec![
            "dns-rate".to_owned(),
            server.to_owned(),
            name.to_owned(),
            secs.to_string(),
            "8".to_owned(),
        ]
    };
    let count = |s: String| -> anyhow::Result<f64> {
        s.trim()
            .parse::<f64>()
            .with_context(|| format!("bad rate output {s:?}"))
    };
    let direct_rate = count(output_of(Command::new(&probe).args(rate(&dns.addr())))?)? / secs;
    let one = count(output_of(&mut inside(&rate("127.0.0.53:53")))?)? / secs;
    rows.push(Row {
        what: "DNS lookups/s, one agent (8 clients)".into(),
        value: format!("{one:.0}/s"),
        baseline: format!("{direct_rate:.0}/s direct"),
        ratio: format!("{:.2}x", one / direct_rate),
        target: "".into(),
    });
    // All ten at once: started first, then waited for.
    let children = (0..10)
        .map(|_| {
            inside(&rate("127.0.0.53:53"))
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut ten = 0.0;
    for c in children {
        ten += count(finish(c)?)?;
    }
    let ten = ten / secs;
    rows.push(Row {
        what: "DNS lookups/s, ten agents at once (8 clients each)".into(),
        value: format!("{ten:.0}/s"),
        baseline: format!("{direct_rate:.0}/s direct"),
        ratio: format!("{:.2}x", ten / direct_rate),
        target: "".into(),
    });
    drop(d);
    drop(dns);
    Ok(())
}
