//! The compact tables the OUI registry is kept in: one sorted array of prefixes per prefix
//! length, searched by bisection, and the organization names stored once in one string.

use std::hash::BuildHasher as _;

use hashbrown::HashTable;

use crate::enrich::error::EnrichError;

/// A prefix as read, before it joins its table: (bits, prefix, name id).
pub(super) type Staged = (u8, u64, u32);

/// The prefixes of one length, sorted by prefix, each with its organization's id in
/// [`Names`].
#[derive(Clone, Debug)]
pub(super) struct Table<K> {
    pub(super) bits: u8,
    pub(super) slots: Vec<(K, u32)>,
}

impl<K: Key> Table<K> {
    /// The organization id of the prefix of `value` (a MAC address's 48 bits), if listed.
    pub(super) fn get(&self, value: u64) -> Option<u32> {
        let key = K::of(value >> (48 - u32::from(self.bits)));
        let at = self.slots.binary_search_by_key(&key, |&(k, _)| k).ok()?;
        Some(self.slots[at].1)
    }
}

/// Adds the `bits`-long prefixes of `staged` to their table in `tables` (longest first),
/// making the table if it is the first of its length.
pub(super) fn merge_into<K: Key>(tables: &mut Vec<Table<K>>, bits: u8, staged: &[Staged]) {
    let at = match tables.iter().position(|t| t.bits <= bits) {
        Some(at) if tables[at].bits == bits => at,
        Some(at) => {
            tables.insert(at, Table { bits, slots: Vec::new() });
            at
        }
        None => {
            tables.push(Table { bits, slots: Vec::new() });
            tables.len() - 1
        }
    };
    let slots = &mut tables[at].slots;
    let new = staged.iter().filter(|(b, ..)| *b == bits);
    // Exactly: a table is not grown again until the next file, so slack would be kept.
    slots.reserve_exact(new.clone().count());
    slots.extend(new.map(|&(_, key, id)| (K::of(key), id)));
    // A stable sort keeps equal prefixes in the order they came (the tables' before the
    // text's, the text's in its order), so that the last of each run is the latest.
    slots.sort_by_key(|&(key, _)| key);
    slots.dedup_by(|later, kept| {
        let same = later.0 == kept.0;
        if same {
            kept.1 = later.1;
        }
        same
    });
    slots.shrink_to_fit();
}

/// A prefix as a table keeps it. Those of up to 32 bits (the /24s and /28s, four in five)
/// fit a `u32`, for 8-byte slots; longer ones take two `u32`s, for 12-byte slots where a
/// `u64` would be padded to 16.
pub(super) trait Key: Copy + Ord {
    fn of(prefix: u64) -> Self;
    #[cfg(test)]
    fn to_u64(self) -> u64;
}

impl Key for u32 {
    fn of(prefix: u64) -> u32 {
        // Only the tables of up to 32 bits have u32 keys: nothing is cut off.
        prefix as u32
    }
    #[cfg(test)]
    fn to_u64(self) -> u64 {
        u64::from(self)
    }
}

impl Key for [u32; 2] {
    fn of(prefix: u64) -> [u32; 2] {
        // High half first, so that arrays order as the prefixes do.
        [(prefix >> 32) as u32, prefix as u32]
    }
    #[cfg(test)]
    fn to_u64(self) -> u64 {
        (u64::from(self[0]) << 32) | u64::from(self[1])
    }
}

/// Organization names, each stored once (Apple alone has ~1,000 prefixes), in one string:
/// a `String` or `Box<str>` each would cost a pointer and an allocation per name.
#[derive(Clone, Debug, Default)]
pub(super) struct Names {
    pub(super) text: String,
    /// Where each name ends in `text`; it starts where the one before ends.
    ends: Vec<u32>,
}

impl Names {
    pub(super) fn count(&self) -> usize {
        self.ends.len()
    }

    pub(super) fn get(&self, id: u32) -> &str {
        let id = id as usize;
        let start = match id {
            0 => 0,
            _ => self.ends[id - 1] as usize,
        };
        &self.text[start..self.ends[id] as usize]
    }

    /// Appends `name`; returns its id.
    fn push(&mut self, name: &str) -> Result<u32, EnrichError> {
        let id = u32::try_from(self.ends.len());
        let end = u32::try_from(self.text.len() + name.len());
        let (Ok(id), Ok(end)) = (id, end) else {
            return Err(EnrichError::OuiNames);
        };
        self.text.push_str(name);
        self.ends.push(end);
        Ok(id)
    }

    /// Forgets the names after the first `count`.
    pub(super) fn truncate(&mut self, count: usize) {
        self.ends.truncate(count);
        self.text.truncate(self.ends.last().map_or(0, |&end| end as usize));
        self.shrink_to_fit();
    }

    pub(super) fn shrink_to_fit(&mut self) {
        self.text.shrink_to_fit();
        self.ends.shrink_to_fit();
    }
}

/// An index of the names of a [`Names`] by their text, to store each name once. Only kept
/// while a text is read.
pub(super) struct Interner {
    index: HashTable<u32>,
    hasher: foldhash::fast::RandomState,
}

impl Interner {
    pub(super) fn new(names: &Names) -> Interner {
        let hasher = foldhash::fast::RandomState::default();
        let mut index = HashTable::with_capacity(names.count());
        // `push` keeps the count within u32.
        for id in 0..names.count() as u32 {
            let hash = hasher.hash_one(names.get(id));
            index.insert_unique(hash, id, |&id| hasher.hash_one(names.get(id)));
        }
        Interner { index, hasher }
    }

    /// The id of `name` in `names`, appending it if new.
    pub(super) fn intern(&mut self, names: &mut Names, name: &str) -> Result<u32, EnrichError> {
        let hash = self.hasher.hash_one(name);
        if let Some(&id) = self.index.find(hash, |&id| names.get(id) == name) {
            return Ok(id);
        }
        let id = names.push(name)?;
        let hasher = &self.hasher;
        self.index.insert_unique(hash, id, |&id| hasher.hash_one(names.get(id)));
        Ok(id)
    }
}
