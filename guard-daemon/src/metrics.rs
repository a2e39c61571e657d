//! Prometheus metrics: refusals by policy, kind, layer and verdict; kernel
//! events and lost events; live agents; journal write latency. Served as
//! text exposition format 0.0.4 on a loopback address by default, beside
//! the liveness (`/healthz`) and readiness (`/readyz`) endpoints.
//!
//! Label values stay bounded whatever agents are started: refusals are
//! keyed by policy name (a run's `--name` is unbounded and never a label),
//! and past [`MAX_POLICY_LABELS`] distinct policies the rest are counted
//! under the policy label [`OTHER_POLICIES`].

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

/// Why guardd cannot do its job now, for `/readyz`: each problem found.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
#[error("{}", .problems.join("; "))]
pub struct NotReady {
    pub problems: Vec<String>,
}

/// Most distinct `policy` label values; later policies share
/// [`OTHER_POLICIES`].
pub const MAX_POLICY_LABELS: usize = 64;
/// The `policy` label of refusals beyond [`MAX_POLICY_LABELS`] policies.
pub const OTHER_POLICIES: &str = "_other";

/// Key of one `guard_refusals_total` series: policy, kind, layer, verdict.
type SeriesKey = (String, String, String, &'static str);

#[derive(Default)]
pub struct Metrics {
    refusals: Mutex<Refusals>,
    events: AtomicU64,
    lost: AtomicU64,
    agents_started: AtomicU64,
    folded: AtomicU64,
    escalations: AtomicU64,
    escalations_limited: AtomicU64,
    escalations_invalid: AtomicU64,
}

#[derive(Default)]
struct Refusals {
    series: BTreeMap<SeriesKey, u64>,
    /// Policies that have a label of their own.
    policies: std::collections::BTreeSet<String>,
}

impl Refusals {
    fn add(&mut self, policy: &str, kind: &str, layer: &str, verdict: &'static str) {
        let policy = if self.policies.contains(policy) {
            policy.to_owned()
        } else if self.policies.len() < MAX_POLICY_LABELS {
            self.policies.insert(policy.to_owned());
            policy.to_owned()
        } else {
            OTHER_POLICIES.to_owned()
        };
        *self
            .series
            .entry((policy, kind.to_owned(), layer.to_owned(), verdict))
            .or_insert(0) += 1;
    }
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
        // Uses observed in learn mode are no refusals.
        if rec.verdict != Verdict::Allowed && rec.layer != crate::journal::LEARN_LAYER {
            let policy = rec.agent.as_ref().map(|a| a.policy.as_str()).unwrap_or("");
            if let Ok(mut m) = self.refusals.lock() {
                m.add(policy, rec.kind.as_str(), &rec.layer, rec.verdict.as_str());
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

    /// An agent's request journaled from its request channel.
    pub fn escalation(&self) {
        self.escalations.fetch_add(1, Ordering::Relaxed);
    }

    /// A line on a request channel refused for coming too fast.
    pub fn escalation_limited(&self) {
        self.escalations_limited.fetch_add(1, Ordering::Relaxed);
    }

    /// A line on a request channel refused as malformed or another op.
    pub fn escalation_invalid(&self) {
        self.escalations_invalid.fetch_add(1, Ordering::Relaxed);
    }

    pub fn agent_started(&self) {
        self.agents_started.fetch_add(1, Ordering::Relaxed);
    }

    pub fn render(&self, live_agents: usize, journal: &JournalStats) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP guard_refusals_total Actions refused (verdict=\"denied\") or, in audit mode, that would have been (verdict=\"audit\"), by policy name, kind and layer. Past {MAX_POLICY_LABELS} policies, the rest count under policy=\"{OTHER_POLICIES}\"."
        );
        let _ = writeln!(out, "# TYPE guard_refusals_total counter");
        if let Ok(m) = self.refusals.lock() {
            for ((policy, kind, layer, verdict), n) in m.series.iter() {
                let _ = writeln!(
                    out,
                    "guard_refusals_total{{policy=\"{}\",kind=\"{}\",layer=\"{}\",verdict=\"{verdict}\"}} {n}",
                    label(policy),
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
        for (name, help, v) in [
            (
                "guard_escalations_total",
                "Requests agents posted on their request channel, each journaled as an escalation record (they grant nothing).",
                &self.escalations,
            ),
            (
                "guard_escalations_limited_total",
                "Lines on request channels refused for coming too fast (answered busy; journaled as one summary per window).",
                &self.escalations_limited,
            ),
            (
                "guard_escalations_invalid_total",
                "Lines on request channels refused as malformed, oversize or another op than request (each journaled).",
                &self.escalations_invalid,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} counter");
            let _ = writeln!(out, "{name} {}", v.load(Ordering::Relaxed));
        }
        out
    }
}

/// What the HTTP endpoints answer with.
pub struct Endpoints {
    /// The metrics page.
    pub metrics: Box<dyn Fn() -> String + Send + Sync>,
    /// `Ok` when guardd can do its job (programs attached, journal
    /// writable), or why not.
    pub ready: Box<dyn Fn() -> Result<(), NotReady> + Send + Sync>,
}

/// The answer to one request head: status line, content type, body.
fn route(head: &str, endpoints: &Endpoints) -> (&'static str, &'static str, String) {
    const TEXT: &str = "text/plain; charset=utf-8";
    let mut words = head.split_whitespace();
    let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    if method != "GET" {
        return ("405 Method Not Allowed", TEXT, "only GET\n".to_owned());
    }
    match path {
        "/metrics" => (
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            (endpoints.metrics)(),
        ),
        // Liveness: this task answers, so the runtime runs.
        "/healthz" => ("200 OK", TEXT, "ok\n".to_owned()),
        "/readyz" => match (endpoints.ready)() {
            Ok(()) => ("200 OK", TEXT, "ready\n".to_owned()),
            Err(why) => (
                "503 Service Unavailable",
                TEXT,
                format!("not ready: {why}\n"),
            ),
        },
        _ => (
            "404 Not Found",
            TEXT,
            "not found; try /metrics, /healthz or /readyz\n".to_owned(),
        ),
    }
}

/// Serves `GET /metrics`, `/healthz` and `/readyz` until the task is
/// dropped. Anything else gets 404 (405 for other methods); a client gets 5
/// seconds to send its request.
pub async fn serve(listener: TcpListener, endpoints: Arc<Endpoints>) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let endpoints = endpoints.clone();
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
            let first = head.lines().next().unwrap_or("").to_owned();
            // Readiness reads pins and locks the kernel handle: off the
            // runtime's only thread.
            let Ok((status, ctype, body)) =
                tokio::task::spawn_blocking(move || route(&first, &endpoints)).await
            else {
                return;
            };
            let response = format!(
                "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
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
            name: "run-name".into(),
            policy: "we\"ird\\name\n".into(),
            container: None,
        });
        m.event(&rec);
        m.event(&rec);
        m.lost(3);
        let text = m.render(2, &JournalStats::default());
        assert!(text.contains(r#"guard_refusals_total{policy="we\"ird\\name\n",kind="network",layer="cgroup-bpf",verdict="denied"} 2"#), "{text}");
        assert!(text.contains("guard_lost_events_total 3"));
        assert!(text.contains("guard_agents_live 2"));
        assert!(text.contains("guard_kernel_events_total 2"));
        // Every sample line belongs to a declared family.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap();
            assert!(text.contains(&format!("# TYPE {name} ")), "{name}");
        }
    }

    fn refusal(policy: &str, name: &str, verdict: Verdict) -> Record {
        Record::new(
            Kind::File,
            "openat",
            Text::new("/x"),
            verdict,
            "r",
            "landlock",
        )
        .with_agent(AgentRef {
            id: name.into(),
            name: name.into(),
            policy: policy.into(),
            container: None,
        })
    }

    fn series(text: &str) -> Vec<&str> {
        text.lines()
            .filter(|l| l.starts_with("guard_refusals_total{"))
            .collect()
    }

    #[test]
    fn run_names_are_no_label_and_policies_are_capped() {
        let m = Metrics::default();
        // Many runs of one policy under distinct names: one series.
        for i in 0..500 {
            m.refusal(&refusal("build", &format!("run-{i}"), Verdict::Denied));
        }
        let text = m.render(0, &JournalStats::default());
        assert_eq!(series(&text).len(), 1, "{text}");
        assert!(!text.contains("run-"), "{text}");
        // Many distinct policies: at most MAX_POLICY_LABELS + the overflow.
        for i in 0..1000 {
            m.refusal(&refusal(&format!("p{i}"), "x", Verdict::Denied));
        }
        let text = m.render(0, &JournalStats::default());
        let s = series(&text);
        assert_eq!(s.len(), MAX_POLICY_LABELS + 1, "{text}");
        let other = s
            .iter()
            .find(|l| l.contains(&format!("policy=\"{OTHER_POLICIES}\"")))
            .unwrap();
        // 1000 policies, 63 of them labelled after "build" took one.
        assert!(
            other.ends_with(&format!(" {}", 1000 - (MAX_POLICY_LABELS - 1))),
            "{other}"
        );
        // A labelled policy keeps its label.
        m.refusal(&refusal("build", "again", Verdict::Denied));
        let text = m.render(0, &JournalStats::default());
        assert!(
            text.contains(
                "policy=\"build\",kind=\"file\",layer=\"landlock\",verdict=\"denied\"} 501"
            ),
            "{text}"
        );
    }

    #[test]
    fn audit_and_denied_are_separate_series() {
        let m = Metrics::default();
        m.refusal(&refusal("p", "a", Verdict::Denied));
        m.refusal(&refusal("p", "a", Verdict::Audit));
        m.refusal(&refusal("p", "a", Verdict::Audit));
        m.refusal(&refusal("p", "a", Verdict::Allowed));
        let text = m.render(0, &JournalStats::default());
        assert!(text.contains("verdict=\"denied\"} 1"), "{text}");
        assert!(text.contains("verdict=\"audit\"} 2"), "{text}");
        assert_eq!(series(&text).len(), 2);
    }

    fn endpoints(ready: Result<(), NotReady>) -> Endpoints {
        Endpoints {
            metrics: Box::new(|| "guard_x 1\n".to_owned()),
            ready: Box::new(move || ready.clone()),
        }
    }

    #[test]
    fn routes() {
        let ok = endpoints(Ok(()));
        assert_eq!(route("GET /metrics HTTP/1.1", &ok).0, "200 OK");
        assert_eq!(route("GET /metrics HTTP/1.1", &ok).2, "guard_x 1\n");
        assert_eq!(route("GET /healthz HTTP/1.1", &ok).0, "200 OK");
        assert_eq!(
            route("GET /readyz HTTP/1.0", &ok),
            ("200 OK", "text/plain; charset=utf-8", "ready\n".to_owned())
        );
        assert_eq!(route("GET /readyz?verbose HTTP/1.1", &ok).0, "200 OK");
        assert_eq!(route("GET /nope HTTP/1.1", &ok).0, "404 Not Found");
        assert_eq!(route("GET /metricsx HTTP/1.1", &ok).0, "404 Not Found");
        assert_eq!(
            route("POST /metrics HTTP/1.1", &ok).0,
            "405 Method Not Allowed"
        );
        assert_eq!(route("", &ok).0, "405 Method Not Allowed");
        let not = endpoints(Err(NotReady {
            problems: vec!["journal not writable".into()],
        }));
        let (status, _, body) = route("GET /readyz HTTP/1.1", &not);
        assert_eq!(status, "503 Service Unavailable");
        assert_eq!(body, "not ready: journal not writable\n");
        // Liveness does not depend on readiness.
        assert_eq!(route("GET /healthz HTTP/1.1", &not).0, "200 OK");
        let two = endpoints(Err(NotReady {
            problems: vec!["a".into(), "b".into()],
        }));
        assert_eq!(route("GET /readyz HTTP/1.1", &two).2, "not ready: a; b\n");
    }
}
