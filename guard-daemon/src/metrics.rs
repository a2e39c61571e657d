//! Prometheus metrics: refusals by agent, kind and layer; kernel events and
//! lost events; live agents; journal write latency. Served as text
//! exposition format 0.0.4 on a loopback address by default.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};

use crate::journal::{JournalStats, Record, Verdict};

#[derive(Default)]
pub struct Metrics {
    refusals: Mutex<BTreeMap<(String, String, String), u64>>,
    events: AtomicU64,
    lost: AtomicU64,
    agents_started: AtomicU64,
    folded: AtomicU64,
}

/// Escapes a label value (backslash, double quote, newline).
fn label(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

impl Metrics {
    /// Counts one record taken from the kernel.
    pub fn event(&self, rec: &Record) {
        self.events.fetch_add(1, Ordering::Relaxed);
        self.refusal(rec);
    }

    /// Counts a refusal (or would-be refusal) that guardd itself decided or
    /// took from the kernel; allowed records are not counted.
    pub fn refusal(&self, rec: &Record) {
        if rec.verdict != Verdict::Allowed {
            let agent = rec
                .agent
                .as_ref()
                .map(|a| a.name.clone())
                .unwrap_or_default();
            if let Ok(mut m) = self.refusals.lock() {
                *m.entry((agent, rec.kind.as_str().to_owned(), rec.layer.clone()))
                    .or_insert(0) += 1;
            }
        }
    }

    pub fn lost(&self, n: u64) {
        self.lost.fetch_add(n, Ordering::Relaxed);
    }

    /// One refusal folded into a coalesced record instead of journaled on
    /// its own (still counted in `guard_refusals_total`).
    pub fn folded(&self) {
        self.folded.fetch_add(1, Ordering::Relaxed);
    }

    pub fn agent_started(&self) {
        self.agents_started.fetch_add(1, Ordering::Relaxed);
    }

    pub fn render(&self, live_agents: usize, journal: &JournalStats) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP guard_refusals_total Actions refused (or, in audit mode, that would have been), by agent, kind and layer."
        );
        let _ = writeln!(out, "# TYPE guard_refusals_total counter");
        if let Ok(m) = self.refusals.lock() {
            for ((agent, kind, layer), n) in m.iter() {
                let _ = writeln!(
                    out,
                    "guard_refusals_total{{agent=\"{}\",kind=\"{}\",layer=\"{}\"}} {n}",
                    label(agent),
                    label(kind),
                    label(layer)
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP guard_kernel_events_total Events read from the kernel programs."
        );
        let _ = writeln!(out, "# TYPE guard_kernel_events_total counter");
        let _ = writeln!(
            out,
            "guard_kernel_events_total {}",
            self.events.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP guard_lost_events_total Events the kernel could not report (ring buffer full); each is journaled as a gap."
        );
        let _ = writeln!(out, "# TYPE guard_lost_events_total counter");
        let _ = writeln!(
            out,
            "guard_lost_events_total {}",
            self.lost.load(Ordering::Relaxed)
        );
        let _ = writeln!(out, "# HELP guard_agents_live Agents running now.");
        let _ = writeln!(out, "# TYPE guard_agents_live gauge");
        let _ = writeln!(out, "guard_agents_live {live_agents}");
        let _ = writeln!(
            out,
            "# HELP guard_agents_started_total Agents started since guardd started."
        );
        let _ = writeln!(out, "# TYPE guard_agents_started_total counter");
        let _ = writeln!(
            out,
            "guard_agents_started_total {}",
            self.agents_started.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP guard_journal_records_total Records committed to the journal."
        );
        let _ = writeln!(out, "# TYPE guard_journal_records_total counter");
        let _ = writeln!(out, "guard_journal_records_total {}", journal.committed);
        let _ = writeln!(
            out,
            "# HELP guard_journal_pending Records appended but not yet committed."
        );
        let _ = writeln!(out, "# TYPE guard_journal_pending gauge");
        let _ = writeln!(out, "guard_journal_pending {}", journal.pending);
        let _ = writeln!(
            out,
            "# HELP guard_journal_commit_latency_seconds Time the last journal commit took."
        );
        let _ = writeln!(out, "# TYPE guard_journal_commit_latency_seconds gauge");
        let _ = writeln!(
            out,
            "guard_journal_commit_latency_seconds {}",
            journal.last_commit_latency_us as f64 / 1e6
        );
        let _ = writeln!(
            out,
            "# HELP guard_journal_errors_total Failed journal commits (retried)."
        );
        let _ = writeln!(out, "# TYPE guard_journal_errors_total counter");
        let _ = writeln!(out, "guard_journal_errors_total {}", journal.commit_errors);
        let _ = writeln!(
            out,
            "# HELP guard_refusals_coalesced_total Refusals journaled as part of a coalesced record (detail.repeated) rather than on their own."
        );
        let _ = writeln!(out, "# TYPE guard_refusals_coalesced_total counter");
        let _ = writeln!(
            out,
            "guard_refusals_coalesced_total {}",
            self.folded.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP guard_journal_bytes Size of the journal store (main file and WAL) at the last disk-budget check."
        );
        let _ = writeln!(out, "# TYPE guard_journal_bytes gauge");
        let _ = writeln!(out, "guard_journal_bytes {}", journal.store_bytes);
        let _ = writeln!(
            out,
            "# HELP guard_journal_retention_removed_total Records removed by retention (age, count or disk budget), each removal summarised in a record."
        );
        let _ = writeln!(out, "# TYPE guard_journal_retention_removed_total counter");
        let _ = writeln!(
            out,
            "guard_journal_retention_removed_total {}",
            journal.retention_removed
        );
        out
    }
}

/// Serves `GET /metrics` until the task is dropped. Anything else gets 404;
/// a client gets 5 seconds to send its request.
pub async fn serve(listener: TcpListener, render: Arc<dyn Fn() -> String + Send + Sync>) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let render = render.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let mut len = 0;
            let read = tokio::time::timeout(Duration::from_secs(5), async {
                while len < buf.len() {
                    let n = stream.read(&mut buf[len..]).await.unwrap_or(0);
                    if n == 0 {
                        break;
                    }
                    len += n;
                    if buf[..len].windows(4).any(|w| w == b"\r\n\r\n")
                        || buf[..len].windows(2).any(|w| w == b"\n\n")
                    {
                        break;
                    }
                }
            })
            .await;
            if read.is_err() {
                return;
            }
            let head = String::from_utf8_lossy(&buf[..len]);
            let response = if head.starts_with("GET /metrics ")
                || head.starts_with("GET /metrics\r")
            {
                let body = render();
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                )
            } else {
                "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    .to_owned()
            };
            let _ = stream.write_all(response.as_bytes()).await;
            let _ = stream.shutdown().await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::{AgentRef, Kind, Text};

    #[test]
    fn renders_counters_with_escaped_labels() {
        let m = Metrics::default();
        let rec = Record::new(
            Kind::Network,
            "connect",
            Text::new("x"),
            Verdict::Denied,
            "r",
            "cgroup-bpf",
        )
        .with_agent(AgentRef {
            id: "1".into(),
            name: "we\"ird\\name\n".into(),
            policy: "p".into(),
        });
        m.event(&rec);
        m.event(&rec);
        m.lost(3);
        let text = m.render(2, &JournalStats::default());
        assert!(text.contains(r#"guard_refusals_total{agent="we\"ird\\name\n",kind="network",layer="cgroup-bpf"} 2"#), "{text}");
        assert!(text.contains("guard_lost_events_total 3"));
        assert!(text.contains("guard_agents_live 2"));
        assert!(text.contains("guard_kernel_events_total 2"));
        // Every sample line belongs to a declared family.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap();
            assert!(text.contains(&format!("# TYPE {name} ")), "{name}");
        }
    }
}
