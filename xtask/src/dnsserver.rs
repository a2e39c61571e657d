//! A real DNS server for the demo and the benchmarks: unbound on
//! 127.0.77.1 (a port of its own), authoritative for one test zone, in the
//! foreground, ended by pid on drop.

use std::{
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

pub struct Unbound {
    child: Child,
    _dir: tempfile::TempDir,
    pub port: u16,
}

impl Unbound {
    /// Serves `zone` (e.g. `demo.test`) with `records` (zone-file lines
    /// relative to the zone). `probe` is a name of the zone to wait for.
    pub fn start(zone: &str, records: &str, probe: &str) -> anyhow::Result<Unbound> {
        let dir = tempfile::Builder::new()
            .prefix("guard-unbound")
            .tempdir()
            .context("creating unbound's directory")?;
        let zonefile = dir.path().join("zone");
        std::fs::write(
            &zonefile,
            format!(
                "$ORIGIN {zone}.\n$TTL 300\n@ IN SOA ns root 1 3600 600 86400 60\n@ IN NS ns\nns IN A 127.0.77.1\n{records}\n"
            ),
        )?;
        let port = std::net::UdpSocket::bind("127.0.77.1:0")?
            .local_addr()?
            .port();
        let tld = zone.rsplit('.').next().unwrap_or(zone);
        let conf = dir.path().join("unbound.conf");
        std::fs::write(
            &conf,
            format!(
                "server:\n  interface: 127.0.77.1@{port}\n  do-daemonize: no\n  use-syslog: no\n  logfile: \"\"\n  \
                 verbosity: 0\n  username: \"\"\n  chroot: \"\"\n  directory: \"{d}\"\n  pidfile: \"\"\n  do-ip6: no\n  \
                 access-control: 127.0.0.0/8 allow\n  module-config: \"iterator\"\n  local-zone: \"{tld}.\" nodefault\n\
                 auth-zone:\n  name: \"{zone}.\"\n  zonefile: \"{z}\"\n  for-downstream: yes\n  for-upstream: yes\n\
                 remote-control:\n  control-enable: no\n",
                d = dir.path().display(),
                z = zonefile.display(),
            ),
        )?;
        let child = Command::new("unbound")
            .args(["-d", "-c"])
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("unbound.log"))?)
            .spawn()
            .context("starting unbound (installed by `cargo xtask setup`)")?;
        let mut u = Unbound {
            child,
            _dir: dir,
            port,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if u.answers(probe) {
                return Ok(u);
            }
            if let Ok(Some(status)) = u.child.try_wait() {
                bail!("unbound exited during start-up ({status})");
            }
            if Instant::now() > deadline {
                bail!("unbound did not answer on 127.0.77.1:{port}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn addr(&self) -> String {
        format!("127.0.77.1:{}", self.port)
    }

    /// One A query over UDP, built by hand: whether any answer came back.
    fn answers(&self, name: &str) -> bool {
        let Ok(s) = std::net::UdpSocket::bind("127.0.0.1:0") else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
        if s.send_to(&query(name, 0x1234), self.addr()).is_err() {
            return false;
        }
        let mut buf = [0u8; 512];
        matches!(s.recv(&mut buf), Ok(n) if n > 12 && buf[3] & 0xf == 0 && buf[7] > 0)
    }
}

impl Drop for Unbound {
    fn drop(&mut self) {
        crate::child::terminate(&mut self.child, Duration::from_secs(5));
    }
}

/// A hand-built A query for `name` with id `id`.
pub fn query(name: &str, id: u16) -> Vec<u8> {
    let mut q = id.to_be_bytes().to_vec();
    q.extend_from_slice(&[1, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}
