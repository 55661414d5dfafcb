//! Destination names: the per-client [`NameCache`] that turns what the DNS, TLS and HTTP
//! parsers learn into a name for a flow.
//!
//! # The cache
//!
//! Two kinds of entries, each one name:
//! - **DNS names**, per (client MAC, address): learnt from a DNS answer the client received,
//!   valid while `now < learnt + TTL + grace_secs`. An address can carry several names for a
//!   client (CDNs): the most recently learnt valid one is used; at most
//!   [`MAX_DNS_NAMES_PER_ADDR`] are kept per (client, address), the least recently learnt
//!   going first (not counted as evictions). Learning a name again refreshes it (the later expiry
//!   of the two is kept) and makes it the most recent.
//! - **Flow names**, per (client MAC, remote address, remote port): from TLS SNI or HTTP Host,
//!   valid while `now < last learnt + flow_name_ttl_secs`; for that flow it wins over DNS.
//!   Except an *outer* name: the SNI of a ClientHello that offers Encrypted Client Hello names
//!   only the client-facing server (a CDN's public name), so a DNS name of the address wins
//!   over it. (Chrome offers a GREASE ECH extension when it knows no ECH config: its SNI is
//!   the real one, and the address's DNS name, if any, is almost always the same.)
//!
//! At most `max_entries` entries in all. When a new one does not fit, expired entries are dropped
//! first, then the live entries closest to expiry, each counted in [`NameCache::evicted`].
//! Addresses are compared in canonical form (an IPv4-mapped IPv6 address is its IPv4 address).
//! All operations are O(log n) (a B-tree orders entries by expiry) except looking up the names of
//! one address, which is O(names for that address) ≤ 4.

use std::collections::BTreeMap;
use std::net::IpAddr;

use crate::types::{FastMap, Mac};

use super::dns::DnsAnswer;

/// DNS names kept per (client, address).
pub const MAX_DNS_NAMES_PER_ADDR: usize = 4;

/// Where an entry lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    Dns(Mac, IpAddr),
    Flow(Mac, IpAddr, u16),
}

#[derive(Debug)]
struct Learnt {
    name: Box<str>,
    /// Learning order, unique: the most recent has the highest.
    seq: u64,
    /// First second at which the entry is no longer valid.
    expires: u64,
    /// A flow name from an ECH outer ClientHello: a DNS name wins over it.
    outer: bool,
}

impl Learnt {
    fn valid(&self, now: u64) -> bool {
        now < self.expires
    }
}

/// Names for (client, remote address[, port]), learnt from DNS answers, TLS SNI and HTTP Host.
/// See the module documentation for the rules.
#[derive(Debug)]
pub struct NameCache {
    grace_secs: u64,
    max_entries: usize,
    flow_name_ttl_secs: u64,
    /// Oldest learnt first.
    // Looked up for every flow that carried traffic, every poll: a fast hasher.
    dns: FastMap<(Mac, IpAddr), Vec<Learnt>>,
    flows: FastMap<(Mac, IpAddr, u16), Learnt>,
    /// Every entry, by (expires, seq).
    by_expiry: BTreeMap<(u64, u64), Slot>,
    next_seq: u64,
    evicted: u64,
}

impl NameCache {
    /// `grace_secs`: how long a DNS name stays valid after its TTL; `max_entries`: names kept
    /// in all; `flow_name_ttl_secs`: how long a flow name lives after it was last learnt.
    pub fn new(grace_secs: u64, max_entries: usize, flow_name_ttl_secs: u64) -> Self {
        Self {
            grace_secs,
            max_entries,
            flow_name_ttl_secs,
            dns: FastMap::default(),
            flows: FastMap::default(),
            by_expiry: BTreeMap::new(),
            next_seq: 0,
            evicted: 0,
        }
    }

    /// Takes `other`'s limits (a reloaded config's `names.*`): names learnt from now on live
    /// by the new grace and TTL (those learnt before keep their expiry), and a lower
    /// `max_entries` drops the names closest to expiry at once.
    pub fn take_limits(&mut self, other: &NameCache, now: u64) {
        self.grace_secs = other.grace_secs;
        self.flow_name_ttl_secs = other.flow_name_ttl_secs;
        self.max_entries = other.max_entries;
        self.expire(now);
        while self.by_expiry.len() > self.max_entries {
            let Some(((_, seq), slot)) = self.by_expiry.pop_first() else { break };
            self.remove(slot, seq);
            self.evicted += 1;
        }
    }

    /// Learns every address of `answer` as `answer.qname` for `client`. Addresses whose TTL +
    /// grace is 0 are not kept.
    pub fn learn_dns(&mut self, client: Mac, answer: &DnsAnswer, now: u64) {
        if answer.qname.is_empty() {
            return;
        }
        for &(ip, ttl) in &answer.addrs {
            let expires = now.saturating_add(u64::from(ttl)).saturating_add(self.grace_secs);
            if expires > now {
                self.learn_dns_name(client, ip.to_canonical(), &answer.qname, expires, now);
            }
        }
    }

    fn learn_dns_name(&mut self, client: Mac, ip: IpAddr, name: &str, expires: u64, now: u64) {
        let key = (client, ip);
        let slot = Slot::Dns(client, ip);
        let known =
            self.dns.get(&key).and_then(|names| names.iter().position(|l| &*l.name == name));
        if let Some(i) = known {
            // Refresh: same entry count, becomes the most recent.
            let names = self.dns.get_mut(&key).expect("just found");
            let old = names.remove(i);
            self.by_expiry.remove(&(old.expires, old.seq));
            let learnt = Self::stamp(&mut self.next_seq, old.name, old.expires.max(expires), false);
            self.by_expiry.insert((learnt.expires, learnt.seq), slot);
            names.push(learnt);
            return;
        }
        if !self.make_room(now) {
            return;
        }
        let names = self.dns.entry(key).or_default();
        if names.len() >= MAX_DNS_NAMES_PER_ADDR {
            let oldest = names.remove(0);
            self.by_expiry.remove(&(oldest.expires, oldest.seq));
        }
        let learnt = Self::stamp(&mut self.next_seq, name.into(), expires, false);
        self.by_expiry.insert((learnt.expires, learnt.seq), slot);
        names.push(learnt);
    }

    /// Learns `name` (from SNI or Host, already normalised) for the flow from `client` to
    /// `remote`:`port`; it lives `flow_name_ttl_secs` from now.
    pub fn learn_flow_name(
        &mut self,
        client: Mac,
        remote: IpAddr,
        port: u16,
        name: &str,
        now: u64,
    ) {
        self.learn_flow(client, remote, port, name, now, false);
    }

    /// Learns the SNI of an ECH outer ClientHello for the flow: a DNS name of `remote` for
    /// `client` wins over it (see the module documentation).
    pub fn learn_outer_name(
        &mut self,
        client: Mac,
        remote: IpAddr,
        port: u16,
        name: &str,
        now: u64,
    ) {
        self.learn_flow(client, remote, port, name, now, true);
    }

    fn learn_flow(
        &mut self,
        client: Mac,
        remote: IpAddr,
        port: u16,
        name: &str,
        now: u64,
        outer: bool,
    ) {
        let expires = now.saturating_add(self.flow_name_ttl_secs);
        if name.is_empty() || expires <= now {
            return;
        }
        let remote = remote.to_canonical();
        let key = (client, remote, port);
        if let Some(old) = self.flows.remove(&key) {
            self.by_expiry.remove(&(old.expires, old.seq));
        } else if !self.make_room(now) {
            return;
        }
        let learnt = Self::stamp(&mut self.next_seq, name.into(), expires, outer);
        self.by_expiry.insert((learnt.expires, learnt.seq), Slot::Flow(client, remote, port));
        self.flows.insert(key, learnt);
    }

    /// The name for the flow from `client` to `remote`:`port`: its flow name if it has a valid
    /// one (unless it is an outer name and DNS has one), else the most recently learnt valid
    /// DNS name of `remote` for `client`.
    pub fn name_for(&self, client: Mac, remote: IpAddr, port: u16, now: u64) -> Option<&str> {
        let remote = remote.to_canonical();
        let flow = self.flows.get(&(client, remote, port)).filter(|f| f.valid(now));
        if let Some(flow) = flow.filter(|f| !f.outer) {
            return Some(&flow.name);
        }
        let dns = self
            .dns
            .get(&(client, remote))
            .and_then(|names| names.iter().rev().find(|l| l.valid(now)).map(|l| &*l.name));
        dns.or(flow.map(|f| &*f.name))
    }

    /// Whether the flow has a name of its own (SNI or Host), not just a DNS name.
    pub fn has_flow_name(&self, client: Mac, remote: IpAddr, port: u16, now: u64) -> bool {
        self.flows.get(&(client, remote.to_canonical(), port)).is_some_and(|f| f.valid(now))
    }

    /// Drops every entry no longer valid at `now`.
    pub fn expire(&mut self, now: u64) {
        while let Some(entry) = self.by_expiry.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let ((_, seq), slot) = entry.remove_entry();
            self.remove(slot, seq);
        }
    }

    /// Entries (names) kept.
    pub fn len(&self) -> usize {
        self.by_expiry.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_expiry.is_empty()
    }

    /// Live entries dropped because the cache was full (or `max_entries` is 0), since creation.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    fn stamp(next_seq: &mut u64, name: Box<str>, expires: u64, outer: bool) -> Learnt {
        let seq = *next_seq;
        *next_seq += 1;
        Learnt { name, seq, expires, outer }
    }

    /// Makes room for one more entry: expired entries first, then those closest to expiry.
    /// False (and the new entry counted as evicted) only when `max_entries` is 0.
    fn make_room(&mut self, now: u64) -> bool {
        if self.by_expiry.len() < self.max_entries {
            return true;
        }
        self.expire(now);
        while self.by_expiry.len() >= self.max_entries {
            let Some(((_, seq), slot)) = self.by_expiry.pop_first() else {
                self.evicted += 1;
                return false;
            };
            self.remove(slot, seq);
            self.evicted += 1;
        }
        true
    }

    /// Removes the entry `seq` from its map (its `by_expiry` entry is already gone).
    fn remove(&mut self, slot: Slot, seq: u64) {
        match slot {
            Slot::Dns(client, ip) => {
                let key = (client, ip);
                if let Some(names) = self.dns.get_mut(&key) {
                    names.retain(|l| l.seq != seq);
                    if names.is_empty() {
                        self.dns.remove(&key);
                    }
                }
            }
            Slot::Flow(client, ip, port) => {
                let key = (client, ip, port);
                if self.flows.get(&key).is_some_and(|l| l.seq == seq) {
                    self.flows.remove(&key);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PHONE: Mac = [0x02, 0, 0, 0, 0, 1];
    const LAPTOP: Mac = [0x02, 0, 0, 0, 0, 2];

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn answer(qname: &str, addrs: &[(&str, u32)]) -> DnsAnswer {
        DnsAnswer {
            qname: qname.into(),
            addrs: addrs.iter().map(|&(a, ttl)| (ip(a), ttl)).collect(),
        }
    }

    impl NameCache {
        /// Every map entry has exactly one index entry and the other way round.
        fn check(&self) {
            let dns: usize = self.dns.values().map(Vec::len).sum();
            assert_eq!(dns + self.flows.len(), self.by_expiry.len());
            assert!(self.dns.values().all(|v| !v.is_empty() && v.len() <= MAX_DNS_NAMES_PER_ADDR));
            for (&(expires, seq), slot) in &self.by_expiry {
                let found = match *slot {
                    Slot::Dns(c, a) => {
                        self.dns[&(c, a)].iter().any(|l| l.seq == seq && l.expires == expires)
                    }
                    Slot::Flow(c, a, p) => {
                        self.flows[&(c, a, p)].seq == seq
                            && self.flows[&(c, a, p)].expires == expires
                    }
                };
                assert!(found, "{slot:?}");
            }
            assert!(self.len() <= self.max_entries);
        }
    }

    #[test]
    fn dns_names_per_client_until_ttl_plus_grace() {
        let mut c = NameCache::new(60, 100, 600);
        c.learn_dns(
            PHONE,
            &answer("api.example.com", &[("192.0.2.1", 300), ("2001:db8::1", 30)]),
            1000,
        );
        assert_eq!(c.len(), 2);
        assert_eq!(c.name_for(PHONE, ip("192.0.2.1"), 443, 1000), Some("api.example.com"));
        assert_eq!(c.name_for(PHONE, ip("192.0.2.1"), 80, 1359), Some("api.example.com"));
        assert_eq!(c.name_for(PHONE, ip("192.0.2.1"), 443, 1360), None);
        assert_eq!(c.name_for(PHONE, ip("2001:db8::1"), 443, 1089), Some("api.example.com"));
        assert_eq!(c.name_for(PHONE, ip("2001:db8::1"), 443, 1090), None);
        // Another client did not ask.
        assert_eq!(c.name_for(LAPTOP, ip("192.0.2.1"), 443, 1000), None);
        // IPv4-mapped form of the same address.
        assert_eq!(c.name_for(PHONE, ip("::ffff:192.0.2.1"), 443, 1000), Some("api.example.com"));
        c.expire(1090);
        assert_eq!(c.len(), 1);
        c.expire(1360);
        assert!(c.is_empty());
        c.check();
        assert_eq!(c.evicted(), 0);
    }

    #[test]
    fn zero_ttl_lives_for_the_grace() {
        let mut c = NameCache::new(30, 10, 600);
        c.learn_dns(PHONE, &answer("lb.example", &[("192.0.2.1", 0)]), 100);
        assert_eq!(c.name_for(PHONE, ip("192.0.2.1"), 443, 129), Some("lb.example"));
        let mut c = NameCache::new(0, 10, 600);
        c.learn_dns(PHONE, &answer("lb.example", &[("192.0.2.1", 0)]), 100);
        assert!(c.is_empty());
        // Empty qname or no addresses: nothing.
        c.learn_dns(PHONE, &answer("", &[("192.0.2.1", 10)]), 100);
        c.learn_dns(PHONE, &answer("x.example", &[]), 100);
        assert!(c.is_empty());
    }

    #[test]
    fn most_recent_dns_name_wins_and_older_ones_remain() {
        let mut c = NameCache::new(0, 100, 600);
        c.learn_dns(PHONE, &answer("a.example", &[("203.0.113.9", 1000)]), 0);
        c.learn_dns(PHONE, &answer("b.example", &[("203.0.113.9", 10)]), 5);
        assert_eq!(c.name_for(PHONE, ip("203.0.113.9"), 443, 6), Some("b.example"));
        // b expires: a is still valid and comes back.
        assert_eq!(c.name_for(PHONE, ip("203.0.113.9"), 443, 15), Some("a.example"));
        // Learning a again makes it the most recent without adding an entry.
        c.learn_dns(PHONE, &answer("b.example", &[("203.0.113.9", 10)]), 20);
        c.learn_dns(PHONE, &answer("a.example", &[("203.0.113.9", 1000)]), 21);
        assert_eq!(c.len(), 2);
        assert_eq!(c.name_for(PHONE, ip("203.0.113.9"), 443, 22), Some("a.example"));
        c.check();
    }

    #[test]
    fn refresh_keeps_the_later_expiry() {
        let mut c = NameCache::new(0, 100, 600);
        c.learn_dns(PHONE, &answer("a.example", &[("203.0.113.9", 100)]), 0);
        c.learn_dns(PHONE, &answer("a.example", &[("203.0.113.9", 10)]), 50);
        assert_eq!(c.name_for(PHONE, ip("203.0.113.9"), 443, 99), Some("a.example"));
        assert_eq!(c.name_for(PHONE, ip("203.0.113.9"), 443, 100), None);
        c.learn_dns(PHONE, &answer("a.example", &[("203.0.113.9", 500)]), 60);
        assert_eq!(c.name_for(PHONE, ip("203.0.113.9"), 443, 559), Some("a.example"));
        assert_eq!(c.len(), 1);
        c.check();
    }

    #[test]
    fn names_per_address_are_capped() {
        let mut c = NameCache::new(0, 100, 600);
        for i in 0..MAX_DNS_NAMES_PER_ADDR + 2 {
            c.learn_dns(
                PHONE,
                &answer(&format!("n{i}.example"), &[("203.0.113.9", 100)]),
                i as u64,
            );
        }
        assert_eq!(c.len(), MAX_DNS_NAMES_PER_ADDR);
        assert_eq!(c.evicted(), 0);
        let last = format!("n{}.example", MAX_DNS_NAMES_PER_ADDR + 1);
        assert_eq!(c.name_for(PHONE, ip("203.0.113.9"), 1, 10), Some(last.as_str()));
        c.check();
    }

    #[test]
    fn flow_name_wins_for_its_flow_only() {
        let mut c = NameCache::new(0, 100, 600);
        c.learn_dns(PHONE, &answer("cdn.example.net", &[("198.51.100.5", 3600)]), 0);
        c.learn_flow_name(PHONE, ip("198.51.100.5"), 443, "shop.example.com", 10);
        assert_eq!(c.name_for(PHONE, ip("198.51.100.5"), 443, 11), Some("shop.example.com"));
        assert_eq!(c.name_for(PHONE, ip("198.51.100.5"), 80, 11), Some("cdn.example.net"));
        assert_eq!(c.name_for(LAPTOP, ip("198.51.100.5"), 443, 11), None);
        assert_eq!(c.name_for(PHONE, ip("::ffff:198.51.100.5"), 443, 11), Some("shop.example.com"));
        // Expires flow_name_ttl after it was last learnt; learning again pushes that back.
        assert_eq!(c.name_for(PHONE, ip("198.51.100.5"), 443, 609), Some("shop.example.com"));
        assert_eq!(c.name_for(PHONE, ip("198.51.100.5"), 443, 610), Some("cdn.example.net"));
        c.learn_flow_name(PHONE, ip("198.51.100.5"), 443, "shop.example.com", 500);
        assert_eq!(c.name_for(PHONE, ip("198.51.100.5"), 443, 1099), Some("shop.example.com"));
        // A different name for the same flow replaces it.
        c.learn_flow_name(PHONE, ip("198.51.100.5"), 443, "other.example.com", 501);
        assert_eq!(c.name_for(PHONE, ip("198.51.100.5"), 443, 502), Some("other.example.com"));
        assert_eq!(c.len(), 2);
        c.check();
        // A flow name with no DNS name behind it.
        c.learn_flow_name(LAPTOP, ip("192.0.2.77"), 8080, "intranet.example", 600);
        assert_eq!(c.name_for(LAPTOP, ip("192.0.2.77"), 8080, 601), Some("intranet.example"));
        c.expire(1200);
        assert_eq!(c.name_for(LAPTOP, ip("192.0.2.77"), 8080, 601), None);
        c.check();
    }

    /// An ECH outer name names its flow only while DNS has no name for the address.
    #[test]
    fn a_dns_name_wins_over_an_ech_outer_name() {
        let mut c = NameCache::new(60, 100, 3600);
        let (mac, remote) = ([2, 0, 0, 0, 0, 1], ip("203.0.113.7"));
        c.learn_outer_name(mac, remote, 443, "cloudflare-ech.com", 100);
        assert_eq!(c.name_for(mac, remote, 443, 100), Some("cloudflare-ech.com"));
        assert!(c.has_flow_name(mac, remote, 443, 100));
        c.learn_dns(mac, &answer("secret.example.org", &[("203.0.113.7", 300)]), 101);
        assert_eq!(c.name_for(mac, remote, 443, 101), Some("secret.example.org"));
        // Once the DNS name expires, the outer name is what is left.
        assert_eq!(c.name_for(mac, remote, 443, 101 + 360), Some("cloudflare-ech.com"));
        // A plain SNI learnt later wins over DNS again.
        c.learn_flow_name(mac, remote, 443, "inner.example.org", 102);
        assert_eq!(c.name_for(mac, remote, 443, 102), Some("inner.example.org"));
    }

    #[test]
    fn zero_flow_ttl_keeps_nothing() {
        let mut c = NameCache::new(0, 100, 0);
        c.learn_flow_name(PHONE, ip("192.0.2.1"), 443, "x.example", 10);
        c.learn_flow_name(PHONE, ip("192.0.2.1"), 443, "", 10);
        assert!(c.is_empty());
    }

    #[test]
    fn bounded_evicting_closest_to_expiry_first() {
        let mut c = NameCache::new(0, 3, 100);
        c.learn_dns(PHONE, &answer("long.example", &[("192.0.2.1", 1000)]), 0);
        c.learn_dns(PHONE, &answer("short.example", &[("192.0.2.2", 10)]), 0);
        c.learn_flow_name(PHONE, ip("192.0.2.3"), 443, "flow.example", 0); // expires at 100
        assert_eq!(c.len(), 3);
        c.learn_dns(LAPTOP, &answer("new.example", &[("192.0.2.4", 500)]), 1);
        assert_eq!(c.len(), 3);
        assert_eq!(c.evicted(), 1);
        assert_eq!(c.name_for(PHONE, ip("192.0.2.2"), 1, 2), None); // the closest to expiry
        assert_eq!(c.name_for(PHONE, ip("192.0.2.1"), 1, 2), Some("long.example"));
        assert_eq!(c.name_for(PHONE, ip("192.0.2.3"), 443, 2), Some("flow.example"));
        assert_eq!(c.name_for(LAPTOP, ip("192.0.2.4"), 1, 2), Some("new.example"));
        // Expired entries go first, and are not evictions.
        c.learn_dns(LAPTOP, &answer("later.example", &[("192.0.2.5", 500)]), 200);
        assert_eq!(c.evicted(), 1);
        assert_eq!(c.len(), 3);
        assert_eq!(c.name_for(PHONE, ip("192.0.2.3"), 443, 200), None);
        // Refreshing an existing name when full evicts nothing.
        c.learn_dns(LAPTOP, &answer("later.example", &[("192.0.2.5", 900)]), 201);
        c.learn_flow_name(PHONE, ip("192.0.2.9"), 443, "f.example", 202);
        assert_eq!(c.evicted(), 2);
        c.check();
    }

    #[test]
    fn zero_capacity_keeps_nothing() {
        let mut c = NameCache::new(0, 0, 100);
        c.learn_dns(PHONE, &answer("x.example", &[("192.0.2.1", 10), ("192.0.2.2", 10)]), 0);
        c.learn_flow_name(PHONE, ip("192.0.2.1"), 443, "x.example", 0);
        assert!(c.is_empty());
        assert_eq!(c.evicted(), 3);
        assert_eq!(c.name_for(PHONE, ip("192.0.2.1"), 443, 0), None);
    }

    #[test]
    fn learns_from_a_parsed_response() {
        let bytes = include_bytes!("../../tests/data/dns/udp_a_cname_chain.bin");
        let a = super::super::dns::parse_response(bytes, false).unwrap();
        let mut c = NameCache::new(60, 100, 600);
        c.learn_dns(PHONE, &a, 0);
        assert_eq!(c.name_for(PHONE, ip("192.0.2.10"), 443, 359), Some("cdn.example.test"));
        assert_eq!(c.name_for(PHONE, ip("192.0.2.11"), 443, 359), Some("cdn.example.test"));
        assert_eq!(c.name_for(PHONE, ip("192.0.2.11"), 443, 360), None);
    }

    #[test]
    fn random_operations_keep_the_invariants() {
        let mut x: u64 = 0x0123_4567_89ab_cdef;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut c = NameCache::new(5, 20, 30);
        let mut now = 0;
        for _ in 0..20_000 {
            now += u64::from(next() % 8 == 0);
            let client = [0x02, 0, 0, 0, 0, (next() % 4) as u8];
            let addr = IpAddr::from([10, 0, 0, (next() % 40) as u8]);
            let name = format!("n{}.example", next() % 8);
            match next() % 5 {
                0 | 1 => c.learn_dns(
                    client,
                    &DnsAnswer { qname: name, addrs: vec![(addr, (next() % 60) as u32)] },
                    now,
                ),
                2 => c.learn_flow_name(client, addr, 443, &name, now),
                3 => c.expire(now),
                _ => {
                    let _ = c.name_for(client, addr, 443, now);
                }
            }
            if next() % 97 == 0 {
                c.check();
            }
        }
        c.check();
        assert!(c.evicted() > 0);
        c.expire(u64::MAX);
        assert!(c.is_empty());
        c.check();
    }
}
