//! The resolver's state over time: the grants behind the map's entries,
//! the names behind the addresses, and the budgets that keep events
//! bounded. Every time-dependent call takes `now`, so the tests drive the
//! clock.

use std::{
    collections::{BTreeMap, HashMap, HashSet, VecDeque},
    net::IpAddr,
    sync::{Mutex, PoisonError},
    time::{Instant, SystemTime},
};

use super::{EVENT_BUDGET, REFUSAL_BUDGET, REFUSAL_WINDOW};

/// The live grants of one agent: per address, per rule, until when.
#[derive(Debug)]
pub(crate) struct GrantTable {
    by_ip: HashMap<IpAddr, BTreeMap<u16, Instant>>,
    capacity: usize,
}

/// The grant table has no room for another address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TableFull(pub usize);

impl GrantTable {
    pub fn new(capacity: usize) -> GrantTable {
        GrantTable {
            by_ip: HashMap::new(),
            capacity,
        }
    }

    /// Grants `ip` to `rules` until `until` (a longer grant already held
    /// stays). Returns the rules now allowing `ip`: the union of its grants
    /// still live at `now`.
    pub fn grant(
        &mut self,
        ip: IpAddr,
        rules: &[u16],
        until: Instant,
        now: Instant,
    ) -> Result<Vec<u16>, TableFull> {
        // Lapsed grants make room only when swept: the sweep is what
        // clears their map entries.
        if !self.by_ip.contains_key(&ip) && self.by_ip.len() >= self.capacity {
            return Err(TableFull(self.capacity));
        }
        let g = self.by_ip.entry(ip).or_default();
        for &r in rules {
            let t = g.entry(r).or_insert(until);
            *t = (*t).max(until);
        }
        Ok(live(g, now))
    }

    /// The rules allowing `ip` at `now` (empty: none).
    pub fn rules(&self, ip: IpAddr, now: Instant) -> Vec<u16> {
        self.by_ip
            .get(&ip)
            .map(|g| live(g, now))
            .unwrap_or_default()
    }

    /// Takes out every grant lapsed at `now`. Returns the addresses whose
    /// rules changed, with what is left (empty: clear the entry).
    pub fn expire(&mut self, now: Instant) -> Vec<(IpAddr, Vec<u16>)> {
        let mut changed = Vec::new();
        self.by_ip.retain(|ip, g| {
            let before = g.len();
            g.retain(|_, t| *t > now);
            if g.len() != before {
                changed.push((*ip, g.keys().copied().collect()));
            }
            !g.is_empty()
        });
        changed
    }

    /// Forgets every grant; returns the addresses that had one.
    pub fn drain(&mut self) -> Vec<IpAddr> {
        self.by_ip.drain().map(|(ip, _)| ip).collect()
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.by_ip.len()
    }
}

fn live(g: &BTreeMap<u16, Instant>, now: Instant) -> Vec<u16> {
    g.iter()
        .filter(|(_, t)| **t > now)
        .map(|(r, _)| *r)
        .collect()
}

/// What the resolver last told the agent an address was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameInfo {
    /// The name owning the address in the answer (the end of the CNAME
    /// chain; the asked name is `chain[0]` of the event that granted it).
    pub name: String,
    /// Every host rule it was granted to, sorted.
    pub rules: Vec<u16>,
    /// Until when the grant (or, without one, the answer) lasts.
    pub expires: SystemTime,
    /// The grant is gone (or `expires` has passed).
    pub expired: bool,
}

impl NameInfo {
    /// The first host rule the address was granted to; `None` for a name
    /// no rule allows (audit mode) or an address that was not granted.
    pub fn rule(&self) -> Option<u16> {
        self.rules.first().copied()
    }
}

/// The names behind the addresses an agent's resolver handed out, for the
/// monitor ("93.184.216.34, allowed as example.com by rule 3 until T").
/// Bounded: beyond [`NAME_BOOK_CAPACITY`](super::NAME_BOOK_CAPACITY) addresses, the one learned
/// longest ago is forgotten. Expired entries stay until then.
#[derive(Debug)]
pub struct NameBook {
    inner: Mutex<BookInner>,
}

#[derive(Debug)]
struct BookInner {
    map: HashMap<IpAddr, (NameInfo, u64)>,
    /// Learning order; entries whose sequence number is not the one in
    /// `map` are stale (the address was learned again since).
    order: VecDeque<(IpAddr, u64)>,
    seq: u64,
    capacity: usize,
}

impl NameBook {
    pub(crate) fn new(capacity: usize) -> NameBook {
        NameBook {
            inner: Mutex::new(BookInner {
                map: HashMap::new(),
                order: VecDeque::new(),
                seq: 0,
                capacity: capacity.max(1),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BookInner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// What `ip` was last answered as, if it still is remembered.
    pub fn name_of(&self, ip: IpAddr) -> Option<NameInfo> {
        self.name_at(ip, SystemTime::now())
    }

    pub(crate) fn name_at(&self, ip: IpAddr, now: SystemTime) -> Option<NameInfo> {
        let inner = self.lock();
        let (info, _) = inner.map.get(&ip)?;
        let mut info = info.clone();
        info.expired = info.expired || now >= info.expires;
        Some(info)
    }

    /// Number of addresses remembered.
    pub fn len(&self) -> usize {
        self.lock().map.len()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Records that `ip` was answered as `name`, granted to `rules` (empty:
    /// not granted) until `expires`. The same name again extends the
    /// entry; another name replaces it.
    pub(crate) fn learn(&self, ip: IpAddr, name: &str, rules: &[u16], expires: SystemTime) {
        let mut inner = self.lock();
        inner.seq += 1;
        let seq = inner.seq;
        let info = match inner.map.remove(&ip) {
            Some((mut old, _)) if old.name == name && !old.expired => {
                old.expires = old.expires.max(expires);
                for r in rules {
                    if !old.rules.contains(r) {
                        old.rules.push(*r);
                    }
                }
                old.rules.sort_unstable();
                old
            }
            _ => {
                let mut rules = rules.to_vec();
                rules.sort_unstable();
                rules.dedup();
                NameInfo {
                    name: name.to_owned(),
                    rules,
                    expires,
                    expired: false,
                }
            }
        };
        inner.map.insert(ip, (info, seq));
        inner.order.push_back((ip, seq));
        while inner.map.len() > inner.capacity {
            let Some((old_ip, old_seq)) = inner.order.pop_front() else {
                break;
            };
            if inner.map.get(&old_ip).is_some_and(|(_, s)| *s == old_seq) {
                inner.map.remove(&old_ip);
            }
        }
        // Stale order entries pile up when addresses are learned again and
        // again: rebuild rather than let them grow without bound.
        if inner.order.len() > 2 * inner.capacity {
            let BookInner { map, order, .. } = &mut *inner;
            order.retain(|(ip, s)| map.get(ip).is_some_and(|(_, cur)| cur == s));
        }
    }

    /// The grant of `ip` is gone: keep the name, marked expired.
    pub(crate) fn mark_expired(&self, ip: IpAddr) {
        if let Some((info, _)) = self.lock().map.get_mut(&ip) {
            info.expired = true;
        }
    }

    #[cfg(test)]
    fn order_len(&self) -> usize {
        self.lock().order.len()
    }
}

/// Counts distinct refused names in a window: beyond the budget a refusal
/// is reported `over_budget` (a tunnel through names would otherwise
/// become one journal record per query).
#[derive(Debug, Default)]
pub(crate) struct RefusalBudget {
    window: Option<Instant>,
    names: HashSet<String>,
}

impl RefusalBudget {
    /// Notes a refusal of `name`; whether it is over the budget.
    pub fn note(&mut self, name: &str, now: Instant) -> bool {
        match self.window {
            Some(start) if now.saturating_duration_since(start) < REFUSAL_WINDOW => {}
            _ => {
                self.window = Some(now);
                self.names.clear();
            }
        }
        if self.names.contains(name) {
            return false;
        }
        if self.names.len() >= REFUSAL_BUDGET {
            return true;
        }
        self.names.insert(name.to_owned());
        false
    }
}

/// At most [`EVENT_BUDGET`] events of one kind per window; the rest are
/// counted and reported once the window is over.
#[derive(Debug, Default)]
pub(crate) struct EventBudget {
    window: Option<Instant>,
    sent: u64,
    suppressed: u64,
}

impl EventBudget {
    /// Whether an event may be sent now.
    pub fn admit(&mut self, now: Instant) -> bool {
        self.roll(now);
        if self.sent < EVENT_BUDGET {
            self.sent += 1;
            true
        } else {
            self.suppressed += 1;
            false
        }
    }

    /// Once the window in which events were suppressed is over: how many.
    pub fn take_suppressed(&mut self, now: Instant) -> Option<u64> {
        let over = self
            .window
            .is_some_and(|w| now.saturating_duration_since(w) >= REFUSAL_WINDOW);
        if over && self.suppressed > 0 {
            let n = self.suppressed;
            self.suppressed = 0;
            return Some(n);
        }
        None
    }

    fn roll(&mut self, now: Instant) {
        match self.window {
            Some(w) if now.saturating_duration_since(w) < REFUSAL_WINDOW => {}
            _ => {
                self.window = Some(now);
                self.sent = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }
    const S: Duration = Duration::from_secs(1);

    #[test]
    fn grants_union_extend_and_expire() {
        let t0 = Instant::now();
        let mut g = GrantTable::new(8);
        let x = ip("192.0.2.1");
        assert_eq!(g.grant(x, &[1], t0 + 30 * S, t0), Ok(vec![1]));
        assert_eq!(g.grant(x, &[3], t0 + 60 * S, t0 + 5 * S), Ok(vec![1, 3]));
        // A shorter grant does not cut a longer one.
        assert_eq!(g.grant(x, &[1], t0 + 10 * S, t0 + 6 * S), Ok(vec![1, 3]));
        assert!(g.expire(t0 + 29 * S).is_empty());
        assert_eq!(g.expire(t0 + 30 * S), vec![(x, vec![3])]);
        assert_eq!(g.rules(x, t0 + 31 * S), vec![3]);
        // A later answer extends.
        assert_eq!(g.grant(x, &[3], t0 + 90 * S, t0 + 40 * S), Ok(vec![3]));
        assert!(g.expire(t0 + 60 * S).is_empty());
        assert_eq!(g.expire(t0 + 90 * S), vec![(x, vec![])]);
        assert_eq!(g.len(), 0);
        assert!(g.rules(x, t0 + 91 * S).is_empty());
    }

    #[test]
    fn a_lapsed_rule_is_not_in_the_union_before_the_sweep() {
        let t0 = Instant::now();
        let mut g = GrantTable::new(8);
        let x = ip("192.0.2.1");
        g.grant(x, &[1], t0 + 10 * S, t0).unwrap();
        assert_eq!(g.grant(x, &[2], t0 + 60 * S, t0 + 20 * S), Ok(vec![2]));
    }

    #[test]
    fn a_full_table_refuses_new_addresses_until_swept() {
        let t0 = Instant::now();
        let mut g = GrantTable::new(2);
        g.grant(ip("192.0.2.1"), &[1], t0 + 10 * S, t0).unwrap();
        g.grant(ip("192.0.2.2"), &[1], t0 + 60 * S, t0).unwrap();
        assert_eq!(
            g.grant(ip("192.0.2.3"), &[1], t0 + 60 * S, t0),
            Err(TableFull(2))
        );
        // An address already held is always renewable.
        assert!(g.grant(ip("192.0.2.1"), &[2], t0 + 60 * S, t0).is_ok());
        let mut g2 = GrantTable::new(2);
        g2.grant(ip("192.0.2.1"), &[1], t0 + 10 * S, t0).unwrap();
        g2.grant(ip("192.0.2.2"), &[1], t0 + 60 * S, t0).unwrap();
        assert!(
            g2.grant(ip("192.0.2.3"), &[1], t0 + 70 * S, t0 + 11 * S)
                .is_err()
        );
        assert_eq!(g2.expire(t0 + 11 * S), vec![(ip("192.0.2.1"), vec![])]);
        assert!(
            g2.grant(ip("192.0.2.3"), &[1], t0 + 70 * S, t0 + 11 * S)
                .is_ok()
        );
        assert_eq!(g2.len(), 2);
        let mut drained = g2.drain();
        drained.sort();
        assert_eq!(drained, vec![ip("192.0.2.2"), ip("192.0.2.3")]);
    }

    #[test]
    fn the_name_book_remembers_expires_and_forgets_the_oldest() {
        let book = NameBook::new(3);
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        book.learn(ip("192.0.2.1"), "a.example.com", &[4, 2], now + 30 * S);
        let info = book.name_at(ip("192.0.2.1"), now).unwrap();
        assert_eq!(info.name, "a.example.com");
        assert_eq!(info.rule(), Some(2));
        assert_eq!(info.rules, vec![2, 4]);
        assert!(!info.expired);
        assert!(book.name_at(ip("192.0.2.1"), now + 30 * S).unwrap().expired);
        book.mark_expired(ip("192.0.2.1"));
        assert!(book.name_at(ip("192.0.2.1"), now).unwrap().expired);
        book.learn(ip("192.0.2.2"), "b.example.com", &[], now + 30 * S);
        assert_eq!(book.name_at(ip("192.0.2.2"), now).unwrap().rule(), None);
        book.learn(ip("192.0.2.3"), "c.example.com", &[1], now + 30 * S);
        // Learning 1 again makes 2 the oldest.
        book.learn(ip("192.0.2.1"), "a.example.com", &[2], now + 60 * S);
        let again = book.name_at(ip("192.0.2.1"), now).unwrap();
        assert!(!again.expired);
        assert_eq!(again.expires, now + 60 * S);
        book.learn(ip("192.0.2.4"), "d.example.com", &[1], now + 30 * S);
        assert_eq!(book.len(), 3);
        assert!(book.name_at(ip("192.0.2.2"), now).is_none());
        assert!(book.name_at(ip("192.0.2.1"), now).is_some());
        // The same address learned over and over does not grow the order.
        for _ in 0..100 {
            book.learn(ip("192.0.2.4"), "d.example.com", &[1], now + 30 * S);
        }
        assert!(book.order_len() <= 6 + 1);
    }

    #[test]
    fn another_name_replaces_and_the_same_extends() {
        let book = NameBook::new(8);
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        book.learn(ip("192.0.2.1"), "a.example.com", &[1], now + 60 * S);
        book.learn(ip("192.0.2.1"), "a.example.com", &[2], now + 30 * S);
        let i = book.name_at(ip("192.0.2.1"), now).unwrap();
        assert_eq!((i.rules, i.expires), (vec![1, 2], now + 60 * S));
        book.learn(ip("192.0.2.1"), "b.example.com", &[3], now + 30 * S);
        let i = book.name_at(ip("192.0.2.1"), now).unwrap();
        assert_eq!(
            (i.name.as_str(), i.rules, i.expires),
            ("b.example.com", vec![3], now + 30 * S)
        );
    }

    #[test]
    fn the_refusal_budget() {
        let t0 = Instant::now();
        let mut b = RefusalBudget::default();
        for i in 0..REFUSAL_BUDGET {
            assert!(!b.note(&format!("n{i}.example.com"), t0));
        }
        assert!(b.note("another.example.com", t0 + S));
        // A name already counted is not over the budget.
        assert!(!b.note("n3.example.com", t0 + S));
        // A new window.
        assert!(!b.note("another.example.com", t0 + REFUSAL_WINDOW));
    }

    #[test]
    fn the_event_budget() {
        let t0 = Instant::now();
        let mut b = EventBudget::default();
        for _ in 0..EVENT_BUDGET {
            assert!(b.admit(t0));
        }
        assert!(!b.admit(t0));
        assert!(!b.admit(t0 + S));
        assert_eq!(b.take_suppressed(t0 + S), None);
        assert_eq!(b.take_suppressed(t0 + REFUSAL_WINDOW), Some(2));
        assert_eq!(b.take_suppressed(t0 + REFUSAL_WINDOW), None);
        assert!(b.admit(t0 + REFUSAL_WINDOW));
    }
}
