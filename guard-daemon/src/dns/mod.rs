//! guardd's DNS resolver for one agent (issue 12: host-name rules).
//!
//! The kernel programs send every DNS query an agent makes (UDP or TCP to
//! port 53, any address) to `127.0.0.1:P` or `[::1]:P`, one `P` per agent,
//! where an [`AgentResolver`] answers. It answers only the names the
//! agent's [`DnsPlan`](crate::policy::host::DnsPlan) allows, forwards them to the configured upstream
//! servers and nowhere else, checks what comes back (the CNAME chain,
//! rebinding to internal addresses, the address cap), and has the
//! answer's addresses written into the agent's kernel allow-map through an
//! [`AddressSink`] *before* the agent sees the answer, so a connect right
//! after the lookup never races the map. Each grant lives as long as the
//! answer may be cached (the TTL the agent sees is cut to that lifetime);
//! a timer takes expired grants out again. What happened is reported as
//! [`DnsEvent`]s through [`DnsEvents`].
//!
//! Messages are parsed and built with `hickory-proto` rather than by hand:
//! it is maintained by the Hickory DNS project, covers the RFCs a resolver
//! meets (EDNS(0), the record types in use today, unknown types as opaque
//! data), decodes compressed names with protection against pointer loops
//! and forward pointers, and is what a production resolver (Hickory DNS)
//! runs on. Only its wire format is used (no network code, no DNSSEC).
//! Before it sees a message, the 12-byte header is read first and anything
//! but exactly one question is turned away, so a crafted count cannot make
//! it allocate for thousands of questions.
//!
//! Audit mode changes what is let through, not what is checked: a name no
//! rule allows is forwarded ([`DnsEvent::Audited`]) instead of refused, and
//! the answer checks report with `audit: true` and leave the answer as it
//! was. The grants written to the map are what enforce mode would have
//! written (none for a name no rule allows), so the kernel's audit
//! records tell the connections enforce mode would refuse. Zone transfers
//! and `ANY` are refused in both modes.

mod answer;
mod config;
mod grants;
mod query;
mod server;
#[cfg(test)]
mod tests;
mod upstream;

use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    time::Duration,
};

pub use config::{
    ResolverConfig, SkippedNameserver, parse_resolv_conf, parse_upstream,
    upstreams_from_resolv_conf,
};
pub use grants::{NameBook, NameInfo};
pub use server::AgentResolver;

/// Queries of one agent handled at the same time; a query arriving beyond
/// this is dropped (the client retries) and counted in
/// [`DnsEvent::Overloaded`].
pub const MAX_IN_FLIGHT: usize = 128;
/// TCP connections one agent may hold open to its resolver.
pub const MAX_TCP_CONNECTIONS: usize = 32;
/// A TCP connection with no complete query for this long is closed.
pub const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Distinct refused names per agent and [`REFUSAL_WINDOW`] reported as
/// themselves; beyond them [`DnsEvent::Refused::over_budget`] is set.
pub const REFUSAL_BUDGET: usize = 64;
/// The window of [`REFUSAL_BUDGET`].
pub const REFUSAL_WINDOW: Duration = Duration::from_secs(10);
/// Addresses a [`NameBook`] remembers per agent (the oldest are forgotten).
pub const NAME_BOOK_CAPACITY: usize = 4096;
/// Addresses one agent may hold grants for at once. A lookup that would
/// go beyond fails (SERVFAIL) rather than evict a live grant: an agent
/// walking a wildcard through an endless stream of addresses must not
/// fill the kernel map.
pub const MAX_GRANTED_ADDRESSES: usize = 4096;
/// Longest CNAME chain followed; the rest of a longer one is dropped.
pub const MAX_CHAIN: usize = 16;
/// Events of one kind (malformed queries, overload) reported per
/// [`REFUSAL_WINDOW`] before the rest are only counted
/// ([`DnsEvent::Suppressed`]).
pub const EVENT_BUDGET: u64 = 64;

/// Why the resolver could not be configured or started.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// An upstream server as configured is no address to send to.
    #[error("upstream {text:?}: {why}")]
    BadUpstream { text: String, why: String },
    /// The resolv.conf named could not be read.
    #[error("reading {path}: {source}")]
    ResolvConf {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Nothing to forward to: an empty upstream list, or a resolv.conf
    /// (`from`) without a usable `nameserver` line.
    #[error("no usable upstream DNS server{}", from.as_ref().map(|p| format!(" in {}", p.display())).unwrap_or_default())]
    NoUpstreams { from: Option<PathBuf> },
    /// A loopback socket could not be set up (other than the port being
    /// taken, which is retried).
    #[error("binding the resolver on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// Every port tried was taken on one of the four sockets.
    #[error("no free port for the resolver on 127.0.0.1 and [::1] after {attempts} attempts")]
    NoPort { attempts: usize },
}

/// Where the resolver has the answers' addresses allowed: the agent's
/// kernel allow-map, through an adapter guardd provides.
pub trait AddressSink: Send + Sync + 'static {
    /// The host rules (`HostRule::rule` values) that now allow `ip` for
    /// this agent: the union of every unexpired grant. Called BEFORE the
    /// answer is sent to the agent; an `Err` makes the lookup fail
    /// (SERVFAIL, [`DnsEvent::MapWriteFailed`]).
    fn write(&self, ip: IpAddr, rules: &[u16]) -> Result<(), String>;
    /// No grant for `ip` is left (expired, or the resolver stops).
    fn clear(&self, ip: IpAddr) -> Result<(), String>;
}

/// Where the resolver reports what it did (guardd turns it into journal
/// records). Called from the resolver's tasks: it should not block.
pub trait DnsEvents: Send + Sync + 'static {
    /// One thing that happened, in the order it happened for one query.
    fn event(&self, ev: DnsEvent);
}

/// What an agent's resolver did. A refused name (`Refused`,
/// `TypeRefused`) is as the agent wrote it (case kept: what it hid in the
/// name is evidence); other names are as [`normalize_name`] leaves
/// them when they could be normalized, else in hickory's escaped ASCII
/// form; `qtype` is the type's mnemonic (`A`, `HTTPS`, or `TYPE65400` for
/// one hickory does not name).
///
/// [`normalize_name`]: crate::policy::host::normalize_name
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DnsEvent {
    /// The resolver runs on IPv4 only: `[::1]` could not be bound.
    Ipv6Unavailable { why: String },
    /// A query that is no well-formed standard query for one name of class
    /// IN; it was not answered.
    Malformed { why: String, len: usize, tcp: bool },
    /// A zone transfer (AXFR, IXFR) or `ANY` query: answered REFUSED.
    TypeRefused {
        name: String,
        qtype: String,
        tcp: bool,
        over_budget: bool,
    },
    /// No host rule allows the name (enforce mode): answered REFUSED, not
    /// sent upstream. `over_budget`: the agent has had more than
    /// [`REFUSAL_BUDGET`] distinct names refused in this window (a tunnel
    /// through names); guardd folds such names.
    Refused {
        name: String,
        qtype: String,
        tcp: bool,
        over_budget: bool,
    },
    /// Audit mode: no host rule allows the name; it was forwarded, and
    /// nothing was written to the map. `addrs`: the addresses the agent
    /// received.
    Audited {
        name: String,
        qtype: String,
        addrs: Vec<IpAddr>,
        chain: Vec<String>,
        over_budget: bool,
    },
    /// An allowed name was answered. `addrs` were granted to `rules` (the
    /// host rules the name matches) for `ttl`; `chain` is the CNAME chain
    /// from the name to the addresses' owner (the name alone if none).
    Allowed {
        name: String,
        qtype: String,
        addrs: Vec<IpAddr>,
        chain: Vec<String>,
        ttl: Duration,
        rules: Vec<u16>,
    },
    /// The answer's CNAME chain leaves the allowed names: a name in it is
    /// neither matched by a host rule nor the direct target of a name that
    /// is. Enforce mode answers REFUSED.
    ChainRefused {
        name: String,
        chain: Vec<String>,
        audit: bool,
    },
    /// Addresses of an allowed name's answer that point inside the host or
    /// its network (DNS rebinding) and are outside `answers_allowed`: not
    /// granted, and dropped from the answer unless `audit`. `addrs` holds
    /// at most 16 of them; `omitted` counts the rest.
    AnswerDropped {
        name: String,
        addrs: Vec<IpAddr>,
        omitted: usize,
        why: String,
        audit: bool,
    },
    /// The answer had more than `max_addresses` addresses: the first `kept`
    /// were granted, `dropped` were not (and were left out of the answer
    /// unless `audit`).
    AddressesCapped {
        name: String,
        kept: usize,
        dropped: usize,
        audit: bool,
    },
    /// No upstream gave a usable answer: SERVFAIL to the agent, nothing
    /// asked anywhere else. `tries` says what each attempt met.
    UpstreamFailed {
        name: String,
        qtype: String,
        tries: Vec<String>,
    },
    /// The sink refused an address, or the agent's grant table is full:
    /// SERVFAIL to the agent.
    MapWriteFailed {
        name: String,
        addr: IpAddr,
        error: String,
    },
    /// Taking an expired grant out of the map failed; retried every
    /// second until it succeeds or the address is granted again.
    MapClearFailed { addr: IpAddr, error: String },
    /// Queries dropped (too many in flight) or TCP connections closed (too
    /// many open) since the last such event.
    Overloaded { dropped: u64, tcp: bool },
    /// Events of this kind beyond [`EVENT_BUDGET`] in the last window that
    /// were only counted.
    Suppressed { kind: &'static str, count: u64 },
}

/// The mnemonic of a record type, `TYPEnnn` (RFC 3597) for one hickory
/// does not know.
pub(crate) fn type_name(t: hickory_proto::rr::RecordType) -> String {
    match t {
        hickory_proto::rr::RecordType::Unknown(n) => format!("TYPE{n}"),
        t => t.to_string(),
    }
}
