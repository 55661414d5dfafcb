//! The programs' client prefixes: the `LAN_PREFIXES` map, written at load and again whenever
//! the agent follows a change of the interface's prefixes, so that a packet is classified by
//! the old set or the new one, never by a mixture.

use std::{borrow::BorrowMut, sync::atomic};

use aya::{
    Ebpf,
    maps::{Array, MapData},
};
use ipnet::IpNet;
use sensor_common::{LanPrefix, LanPrefixSets, LanPrefixes, MAX_LAN_PREFIXES, names};

use super::error::KernelError;

/// One set of prefixes as the programs compare them: each IPv4-mapped, as address and mask
/// words.
pub fn encode(prefixes: &[IpNet]) -> Result<LanPrefixes, KernelError> {
    if prefixes.len() > MAX_LAN_PREFIXES {
        return Err(KernelError::TooManyPrefixes { count: prefixes.len() });
    }
    let mut set = LanPrefixes::default();
    for (slot, net) in set.prefixes.iter_mut().zip(prefixes) {
        let (addr, len) = match net.trunc() {
            IpNet::V4(n) => (n.addr().to_ipv6_mapped().octets(), 96 + n.prefix_len()),
            IpNet::V6(n) => (n.addr().octets(), n.prefix_len()),
        };
        let mask = (u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0)).to_be_bytes();
        *slot = LanPrefix { addr: words(&addr), mask: words(&mask) };
    }
    set.count = prefixes.len() as u32;
    Ok(set)
}

fn words(b: &[u8; 16]) -> [u32; 4] {
    std::array::from_fn(|i| {
        u32::from_ne_bytes([b[4 * i], b[4 * i + 1], b[4 * i + 2], b[4 * i + 3]])
    })
}

/// The `LAN_PREFIXES` map of a loaded object (borrowed at load, owned by the running agent).
pub struct LanPrefixMap<T> {
    map: Array<T, LanPrefixSets>,
}

impl LanPrefixMap<MapData> {
    /// Takes the map out of the object, for the agent to write while it runs.
    pub fn take(ebpf: &mut Ebpf) -> Result<Self, KernelError> {
        let map = ebpf
            .take_map(names::LAN_PREFIXES)
            .ok_or(KernelError::MissingMap { map: names::LAN_PREFIXES })?;
        let map = Array::try_from(map)
            .map_err(|source| KernelError::OpenMap { map: names::LAN_PREFIXES, source })?;
        Ok(LanPrefixMap { map })
    }
}

impl<'a> LanPrefixMap<&'a mut MapData> {
    /// The map, left in the object.
    pub fn borrow(ebpf: &'a mut Ebpf) -> Result<Self, KernelError> {
        let map = ebpf
            .map_mut(names::LAN_PREFIXES)
            .ok_or(KernelError::MissingMap { map: names::LAN_PREFIXES })?;
        let map = Array::try_from(map)
            .map_err(|source| KernelError::OpenMap { map: names::LAN_PREFIXES, source })?;
        Ok(LanPrefixMap { map })
    }
}

impl<T: BorrowMut<MapData>> LanPrefixMap<T> {
    /// The set the programs read now.
    pub fn get(&self) -> Result<LanPrefixes, KernelError> {
        let sets = self.sets()?;
        Ok(sets.sets[(sets.active & 1) as usize])
    }

    /// Makes `prefixes` the set the programs read. An array map's update copies the value in
    /// place, under the programs' feet: so the new set goes into the slot they do not read
    /// (the other bytes rewritten as they are), and a second update flips `active` alone.
    pub fn set(&mut self, prefixes: &[IpNet]) -> Result<(), KernelError> {
        let new = encode(prefixes)?;
        let mut sets = self.sets()?;
        let next = (sets.active & 1) ^ 1;
        sets.sets[next as usize] = new;
        self.map
            .set(0, sets, 0)
            .map_err(KernelError::map("writing the LAN prefixes (the unused set)"))?;
        // The kernel's stores of the first update, made on this CPU (or before a migration,
        // which orders them too), are visible to every CPU before those of the second.
        atomic::fence(atomic::Ordering::SeqCst);
        sets.active = next;
        self.map.set(0, sets, 0).map_err(KernelError::map("switching to the new LAN prefixes"))
    }

    fn sets(&self) -> Result<LanPrefixSets, KernelError> {
        self.map.get(&0, 0).map_err(KernelError::map("reading the LAN prefixes map"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn be_words(hex: u128) -> [u32; 4] {
        words(&hex.to_be_bytes())
    }

    #[test]
    fn prefixes_become_mapped_address_and_mask_words() {
        let nets: Vec<IpNet> = vec![
            "192.168.1.77/24".parse().unwrap(),
            "fd00:1::/64".parse().unwrap(),
            "::/0".parse().unwrap(),
        ];
        let g = encode(&nets).unwrap();
        assert_eq!(g.count, 3);
        // Host bits are dropped; IPv4 sits behind ::ffff: with 96 more mask bits.
        assert_eq!(g.prefixes[0].addr, be_words(0xffff_c0a8_0100));
        assert_eq!(g.prefixes[0].mask, be_words(u128::MAX << 8));
        assert_eq!(g.prefixes[1].addr, be_words(0xfd00_0001_0000_0000_0000_0000_0000_0000));
        assert_eq!(g.prefixes[1].mask, be_words(u128::MAX << 64));
        assert_eq!(g.prefixes[2].mask, [0; 4]);
        assert_eq!(g.prefixes[3], LanPrefix::default());
    }

    #[test]
    fn too_many_prefixes_are_refused() {
        let nets: Vec<IpNet> =
            (0..=MAX_LAN_PREFIXES).map(|i| format!("10.{i}.0.0/16").parse().unwrap()).collect();
        assert!(encode(&nets).is_err());
    }
}
