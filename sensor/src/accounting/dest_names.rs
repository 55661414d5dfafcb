//! Destinations as the per-destination series name them, each name stored once however many
//! clients' tables hold it.

use std::hash::BuildHasher as _;

use hashbrown::HashTable;
use serde::{Deserialize, Serialize};

/// A destination as the per-destination series name it: the name at the configured level
/// (domain, fqdn, ip, asn or country) and the network it is in.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct DestKey {
    pub destination: String,
    pub country: String,
    /// 0 when unknown.
    pub asn: u32,
}

/// A destination as a client's table holds it: an index into [`DestNames`], 4 bytes instead of
/// a name, a country and an ASN.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DestId(u32);

/// Every destination any client's table holds, once, with the number of tables holding it:
/// clients and flows share destinations (a domain per service), and names are the bulk of them.
#[derive(Debug, Clone, Default)]
pub(super) struct DestNames {
    /// Ids by key, hashed through `keys`: each key is stored once (a full map of flows with
    /// a destination each held every key twice).
    index: HashTable<DestId>,
    hasher: foldhash::fast::RandomState,
    /// By id; a free id holds an empty key.
    keys: Vec<DestKey>,
    holders: Vec<u32>,
    free: Vec<DestId>,
}

impl DestNames {
    /// The id of `key`, copied in if new.
    pub(super) fn id(&mut self, key: &DestKey) -> DestId {
        let hash = self.hasher.hash_one(key);
        let keys = &self.keys;
        if let Some(&id) = self.index.find(hash, |id| keys[id.0 as usize] == *key) {
            return id;
        }
        let id = match self.free.pop() {
            Some(id) => {
                self.keys[id.0 as usize] = key.clone();
                id
            }
            None => {
                self.keys.push(key.clone());
                self.holders.push(0);
                DestId((self.keys.len() - 1) as u32)
            }
        };
        let (keys, hasher) = (&self.keys, &self.hasher);
        self.index.insert_unique(hash, id, |id| hasher.hash_one(&keys[id.0 as usize]));
        id
    }

    pub(super) fn hold(&mut self, id: DestId) {
        self.holders[id.0 as usize] += 1;
    }

    /// A table let go of `id`; the last one frees it.
    pub(super) fn release(&mut self, id: DestId) {
        // Freed once, on its last holder's release (never again while free).
        let Some(holders) = self.holders.get_mut(id.0 as usize).filter(|h| **h > 0) else { return };
        *holders -= 1;
        if *holders == 0 {
            let key = std::mem::take(&mut self.keys[id.0 as usize]);
            if let Ok(entry) = self.index.find_entry(self.hasher.hash_one(&key), |&x| x == id) {
                entry.remove();
            }
            self.free.push(id);
        }
    }

    /// Distinct destinations held.
    pub(super) fn len(&self) -> usize {
        self.index.len()
    }

    pub(super) fn key(&self, id: DestId) -> &DestKey {
        &self.keys[id.0 as usize]
    }
}
