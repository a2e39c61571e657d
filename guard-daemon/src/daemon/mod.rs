//! guardd: owns the kernel programs, the agent scopes and the journal, and
//! answers requests on its socket.
//!
//! `Daemon::start` does everything that can fail at start-up (mounts, BPF
//! load, journal, re-adoption of scopes left by a previous guardd) so that a
//! failure is reported before the socket exists. `server::serve` then runs
//! until the shutdown future completes and its connections have drained;
//! tests start it on a fresh socket and stop it the same way.

mod agents;
pub mod dns;
pub mod peer;
pub mod policies;
pub mod requests;
pub mod server;

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{Arc, Mutex, RwLock},
    time::SystemTime,
};

use serde_json::json;
use thiserror::Error;

use crate::{
    host::{CgroupLayout, HostError, ensure_bpffs},
    journal::{
        Journal, JournalConfig, JournalError, JournalHandle, JournalLock, Kind, MirrorSink, Record,
        Retention, Text, Verdict,
    },
    kernel::{Kernel, KernelError, KernelOptions},
    metrics::{Metrics, NotReady},
    monitor::{
        self, Attribution, Monitor,
        coalesce::{CoalesceConfig, Coalescer},
    },
    scope::{Placement, ScopeError, ScopeRoot},
};

pub use agents::{AgentState, Registry};

#[derive(Debug, Error)]
pub enum DaemonError {
    #[error(transparent)]
    Host(#[from] HostError),
    #[error(transparent)]
    Kernel(#[from] KernelError),
    #[error(transparent)]
    Scope(#[from] ScopeError),
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("guardd must run as root (it loads BPF programs and manages cgroups)")]
    NotRoot,
    #[error("{0}")]
    Config(String),
}

/// guardd's settings.
#[derive(Clone, Debug)]
pub struct DaemonConfig {
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    pub journal: PathBuf,
    /// Name of this instance: its parent cgroup and its bpffs directory.
    pub instance: String,
    /// Where bpffs is (mounted there if needed).
    pub bpffs: PathBuf,
    /// Group (besides root) allowed on the socket.
    pub group: Option<u32>,
    /// Members of `group` may list and read every agent (reviewers); without
    /// it they see only agents they own.
    pub group_reads_all: bool,
    pub mirror: Vec<MirrorSink>,
    pub retention: Retention,
    /// Folding of repeated identical refusals (`monitor::coalesce`).
    pub coalesce: CoalesceConfig,
    /// Remove pins and the parent cgroup on a clean stop when no agent is
    /// live (the default); off keeps them for inspection.
    pub cleanup_on_exit: bool,
    /// Where the agents' resolvers forward allowed names (`--dns-upstream`,
    /// or the host's resolv.conf); `Err` says why there is none, and then
    /// a policy with host rules is refused.
    pub dns_upstreams: Result<Vec<std::net::SocketAddr>, String>,
    /// Where `dns_upstreams` came from, for the start record.
    pub dns_origin: String,
    /// guardd's named policies (`--policy-dir`), reloaded when they change.
    pub policy_dir: Option<PathBuf>,
    /// Refuse policies a client sends: every agent runs under a named
    /// policy (`--require-named-policy`, cluster mode).
    pub require_named_policy: bool,
    /// A named policy that every client-sent policy must stay within
    /// (`--floor-policy`).
    pub floor_policy: Option<String>,
    /// Make each agent's scope under its launcher's own cgroups
    /// (`--scopes-under caller`) instead of under guard's parent cgroup.
    pub scopes_under_caller: bool,
    /// Layers a launcher may not accept to run without, whatever it asks
    /// (`--forbid-degraded`: `landlock`, `unix`, `limits`, `exec`, `all`).
    pub forbid_degraded: Vec<String>,
}

impl DaemonConfig {
    pub fn pin_dir(&self) -> PathBuf {
        self.bpffs.join(&self.instance)
    }
}

/// State shared by the server tasks and the monitor.
pub struct Shared {
    pub cfg: DaemonConfig,
    pub kernel: Arc<Mutex<Kernel>>,
    pub scopes: ScopeRoot,
    pub journal: JournalHandle,
    pub attribution: Attribution,
    pub registry: Mutex<Registry>,
    pub metrics: Arc<Metrics>,
    pub started: SystemTime,
    /// Held counts of repeated refusals; the monitor feeds it, closing a
    /// scope flushes that agent's counts before its exit record.
    pub coalescer: Arc<Mutex<Coalescer>>,
    /// The agents' resolvers (issue 12); `Err` says why guardd cannot run
    /// them (no upstream), and a policy with host rules is then refused.
    pub dns: Result<dns::DnsService, String>,
    /// The named policies, when guardd has a policy directory.
    pub policies: Option<Arc<policies::PolicyDir>>,
}

impl Shared {
    /// Whether guardd can do its job now: its programs attached (their
    /// link pins in place) to a parent cgroup that exists, and the journal
    /// committing. `Err` says what is wrong, for `/readyz`.
    pub fn readiness(&self) -> Result<(), NotReady> {
        let mut problems = Vec::new();
        match self.kernel.lock() {
            Ok(k) => {
                let missing = k.missing_links();
                if !missing.is_empty() {
                    problems.push(format!(
                        "programs not attached (link pins missing: {})",
                        missing.join(", ")
                    ));
                }
            }
            Err(_) => problems.push("kernel state unavailable".to_owned()),
        }
        if !self.scopes.v2_parent.is_dir() {
            problems.push(format!(
                "parent cgroup {} is gone",
                self.scopes.v2_parent.display()
            ));
        }
        if let Some(why) = self.policies.as_ref().and_then(|p| p.not_ready()) {
            problems.push(why);
        }
        let stats = self.journal.stats();
        if stats.commit_failing {
            problems.push(format!(
                "journal not writable (last commit failed; {} records waiting)",
                stats.pending
            ));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(NotReady { problems })
        }
    }

    /// What `guardctl doctor` shows from guardd, as plain values.
    pub fn doctor_facts(&self) -> crate::doctor::DaemonFacts {
        let layers = self
            .kernel
            .lock()
            .map(|k| k.layers.clone())
            .unwrap_or_default();
        crate::doctor::DaemonFacts {
            instance: self.cfg.instance.clone(),
            parent_cgroup: self.scopes.v2_parent.clone(),
            unix_hooks: layers.unix_hooks,
            unix_error: layers.unix_error,
            placements: self
                .scopes
                .placements
                .iter()
                .map(|(c, p)| ((*c).to_owned(), p.clone()))
                .collect(),
        }
    }

    /// The metrics page.
    pub fn render_metrics(&self) -> String {
        let live = self.registry.lock().map(|r| r.live()).unwrap_or(0);
        self.metrics.render(live, &self.journal.stats())
    }
}

/// The agents' resolvers, writing through a handle on the kernel's tries
/// of their own (no lock on the `Kernel`).
fn dns_service(cfg: &DaemonConfig, kernel: &Kernel) -> Result<dns::DnsService, String> {
    let upstreams = cfg.dns_upstreams.clone()?;
    if upstreams.is_empty() {
        return Err(format!("no upstream DNS server ({})", cfg.dns_origin));
    }
    let net = kernel
        .dynamic_net()
        .map_err(|e| format!("opening the allow-maps for the resolvers: {e}"))?;
    dns::DnsService::new(
        crate::dns::ResolverConfig::new(upstreams),
        net,
        cfg.dns_origin.clone(),
    )
    .map_err(|e| format!("starting the resolvers' runtime: {e}"))
}

pub struct Daemon {
    pub shared: Arc<Shared>,
    journal: Option<Journal>,
    monitor: Option<Monitor>,
    /// The policy directory's watcher and its stop flag.
    policy_watch: Option<(
        Arc<std::sync::atomic::AtomicBool>,
        std::thread::JoinHandle<()>,
    )>,
    /// Ends grants at their time; its stop flag.
    grant_timer: Option<(
        Arc<std::sync::atomic::AtomicBool>,
        std::thread::JoinHandle<()>,
    )>,
}

impl Daemon {
    pub fn start(cfg: DaemonConfig) -> Result<Daemon, DaemonError> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err(DaemonError::NotRoot);
        }
        for dir in [&cfg.state_dir, &cfg.state_dir.join("agents")] {
            std::fs::create_dir_all(dir).map_err(|source| DaemonError::Io {
                op: "creating",
                path: dir.clone(),
                source,
            })?;
        }
        // The state files hold every agent's policy and arguments: root's
        // alone, whatever directory holds them.
        let agents_dir = cfg.state_dir.join("agents");
        std::fs::set_permissions(
            &agents_dir,
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )
        .map_err(|source| DaemonError::Io {
            op: "restricting",
            path: agents_dir.clone(),
            source,
        })?;
        if let Some(parent) = cfg.journal.parent() {
            std::fs::create_dir_all(parent).map_err(|source| DaemonError::Io {
                op: "creating",
                path: parent.to_owned(),
                source,
            })?;
        }
        // First, before any kernel or cgroup state is made: a journal has
        // one writer, and a second guardd must be refused, naming the first.
        let journal_lock = JournalLock::acquire(
            &cfg.journal,
            &format!(
                "guardd pid {} (instance {}, socket {})",
                std::process::id(),
                cfg.instance,
                cfg.socket.display()
            ),
        )?;
        ensure_bpffs(&cfg.bpffs)?;
        let layout = CgroupLayout::detect()?;
        // A bad instance name creates nothing (and names nothing to undo).
        crate::scope::check_name(&cfg.instance)?;
        Self::load(&cfg, layout.clone(), journal_lock)
            .inspect_err(|_| undo_failed_start(&layout, &cfg))
    }

    /// The part of start-up that creates cgroups and pins; on failure the
    /// caller removes them again.
    fn load(
        cfg: &DaemonConfig,
        layout: CgroupLayout,
        journal_lock: JournalLock,
    ) -> Result<Daemon, DaemonError> {
        let scopes = ScopeRoot::init(layout, &cfg.instance)?;
        let (kernel, ring) = Kernel::load(&KernelOptions {
            parent_cgroup: scopes.v2_parent.clone(),
            agent_level: scopes.agent_level(),
            pin_dir: cfg.pin_dir(),
        })?;
        // Every record names this machine (issue 10): set before the
        // journal opens, so its own first records carry it too.
        crate::journal::set_local_host(crate::journal::HostRef::local());
        let mut jcfg = JournalConfig::new(&cfg.journal);
        jcfg.mirror = cfg.mirror.clone();
        jcfg.retention = cfg.retention;
        let journal = Journal::open_locked(jcfg, journal_lock)?;
        let handle = journal.handle();
        let dns = dns_service(cfg, &kernel);
        if let Some(floor) = &cfg.floor_policy
            && cfg.policy_dir.is_none()
        {
            return Err(DaemonError::Config(format!(
                "--floor-policy {floor} names a policy of --policy-dir, which is not set"
            )));
        }
        let policies = cfg
            .policy_dir
            .clone()
            .map(|d| Arc::new(policies::PolicyDir::new(d)));
        let kernel = Arc::new(Mutex::new(kernel));
        let attribution: Attribution = Arc::new(RwLock::new(HashMap::new()));
        let cfg_coalesce = cfg.coalesce;
        let shared = Arc::new(Shared {
            cfg: cfg.clone(),
            kernel,
            scopes,
            journal: handle,
            attribution,
            registry: Mutex::new(Registry::default()),
            metrics: Arc::new(Metrics::default()),
            started: SystemTime::now(),
            coalescer: Arc::new(Mutex::new(Coalescer::new(cfg_coalesce))),
            dns,
            policies,
        });
        journal_start(&shared);
        let policy_sig = shared
            .policies
            .as_ref()
            .and_then(|p| p.reload(&shared.journal));
        // Re-adopt before reading the ring buffer: events an agent caused
        // while guardd was down wait there and must find their agent.
        agents::readopt(&shared);
        // What the resolvers of a guardd that died had opened is unknown to
        // this one: only the static rules of live agents stay.
        let live = shared
            .registry
            .lock()
            .map(|r| r.static_keys())
            .unwrap_or_default();
        if let Ok(mut k) = shared.kernel.lock() {
            // Levels of scopes under callers that were not re-adopted leave
            // the programs' search (they only cost a lookup meanwhile).
            if let Err(e) = k.settle_scope_levels() {
                tracing::warn!("updating the scopes' levels: {e}");
            }
            let n = k.purge_stale(&live);
            if n > 0 {
                tracing::info!(
                    "removed {n} stale map entries (DNS answers of an earlier guardd, agents of scopes gone)"
                );
            }
        }
        agents::resume_resolvers(&shared);
        let monitor = monitor::start(
            ring,
            shared.attribution.clone(),
            shared.kernel.clone(),
            shared.journal.clone(),
            shared.metrics.clone(),
            shared.coalescer.clone(),
        )
        .map_err(|source| DaemonError::Io {
            op: "starting the monitor thread",
            path: PathBuf::new(),
            source,
        })?;
        let policy_watch = match &shared.policies {
            Some(p) => {
                let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
                let thread = p
                    .clone()
                    .watch(shared.journal.clone(), policy_sig, stop.clone())
                    .map_err(|source| DaemonError::Io {
                        op: "starting the policy directory's watcher",
                        path: p.dir.clone(),
                        source,
                    })?;
                Some((stop, thread))
            }
            None => None,
        };
        let grant_timer = {
            let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let (flag, s) = (stop.clone(), shared.clone());
            let thread = std::thread::Builder::new()
                .name("guard-grants".into())
                .spawn(move || {
                    // Grants end within a quarter of a second of their time (a
                    // re-adopted agent's grants that lapsed while guardd
                    // was down end at the first tick).
                    while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                        agents::grant::expire(&s);
                        std::thread::sleep(std::time::Duration::from_millis(250));
                    }
                })
                .map_err(|source| DaemonError::Io {
                    op: "starting the grant timer",
                    path: PathBuf::new(),
                    source,
                })?;
            Some((stop, thread))
        };
        Ok(Daemon {
            shared,
            journal: Some(journal),
            monitor: Some(monitor),
            policy_watch,
            grant_timer,
        })
    }

    /// Stops the monitor and closes the journal. With no live agent (and
    /// `cleanup_on_exit`), removes the pins and parent cgroups too: nothing
    /// is left to protect. Live agents stay confined by the pinned programs
    /// and are re-adopted by the next guardd.
    pub fn stop(mut self) {
        for (stop, thread) in [self.policy_watch.take(), self.grant_timer.take()]
            .into_iter()
            .flatten()
        {
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            let _ = thread.join();
        }
        self.shared.journal.begin_close();
        let live = self.shared.registry.lock().map(|r| r.live()).unwrap_or(1);
        let rec = Record::new(
            Kind::Lifecycle,
            "daemon-stop",
            Text::new("guardd"),
            Verdict::Allowed,
            "daemon",
            "guardd",
        )
        .with_detail(
            json!({"live_agents": live, "pins_kept": live > 0 || !self.shared.cfg.cleanup_on_exit}),
        );
        // The monitor stops first: its last events and every held count of
        // repeated refusals (`monitor::coalesce`) come before the stop record.
        if let Some(m) = self.monitor.take() {
            m.stop.store(true, std::sync::atomic::Ordering::Relaxed);
            let _ = m.thread.join();
        }
        let _ = self.shared.journal.append(rec);
        if let Some(j) = self.journal.take()
            && let Err(e) = j.close()
        {
            tracing::error!("closing the journal: {e}");
        }
        if live == 0 && self.shared.cfg.cleanup_on_exit {
            if let Ok(k) = self.shared.kernel.lock() {
                k.unpin_all();
            }
            self.shared.scopes.remove_if_empty();
        }
    }
}

/// Removes what a failed start-up created (pins, parent cgroups), unless a
/// scope of a live agent is there, or a scope outside the parent has pinned
/// programs: its confinement hangs on the pinned programs, and the next
/// guardd re-adopts it. `--keep-pins` keeps them.
fn undo_failed_start(layout: &CgroupLayout, cfg: &DaemonConfig) {
    if !cfg.cleanup_on_exit {
        return;
    }
    let parent = layout.v2.join(&cfg.instance);
    let scopes = std::fs::read_dir(&parent)
        .map(|d| {
            d.flatten()
                .any(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
        })
        .unwrap_or(false)
        || !crate::kernel::scopes::pinned_scopes(&cfg.pin_dir()).is_empty();
    if scopes {
        tracing::warn!(
            cgroup = %parent.display(),
            "start-up failed with agent scopes present: their pins and cgroups are kept"
        );
        return;
    }
    crate::kernel::remove_pins(&cfg.pin_dir());
    let _ = std::fs::remove_dir(&parent);
    for (_, mount) in &layout.v1 {
        let _ = std::fs::remove_dir(mount.join(&cfg.instance));
    }
}

fn journal_start(shared: &Shared) {
    let facts = shared.doctor_facts();
    let placements: serde_json::Map<String, serde_json::Value> = facts
        .placements
        .iter()
        .map(|(c, p)| {
            (
                c.clone(),
                json!(match p {
                    Placement::V2 => "cgroup-v2".to_owned(),
                    Placement::V1(m) => format!("cgroup-v1 {}", m.display()),
                    Placement::Unavailable => "unavailable".to_owned(),
                }),
            )
        })
        .collect();
    let rec = Record::new(
        Kind::Lifecycle,
        "daemon-start",
        Text::new("guardd"),
        Verdict::Allowed,
        "daemon",
        "guardd",
    )
    .with_detail(json!({
        "instance": facts.instance,
        "cgroup": facts.parent_cgroup.display().to_string(),
        "unix_hooks": facts.unix_hooks,
        "unix_hooks_error": facts.unix_error,
        "controllers": placements,
        "journal_max_bytes": shared.cfg.retention.max_bytes,
        "coalesce_interval_ms": u64::try_from(shared.cfg.coalesce.interval.as_millis()).unwrap_or(u64::MAX),
        "policy_dir": shared.cfg.policy_dir,
        "require_named_policy": shared.cfg.require_named_policy,
        "floor_policy": shared.cfg.floor_policy,
        "scopes_under": if shared.cfg.scopes_under_caller { "caller" } else { "instance" },
        "forbid_degraded": shared.cfg.forbid_degraded,
    }));
    let _ = shared.journal.append(rec);
}
