//! `lan_prefixes` unset: the client prefixes follow the interface's own. Many ISPs rotate the
//! delegated IPv6 prefix; prefixes fixed at start would then count the LAN's IPv6 traffic as
//! `not_client` from the rotation on.

use std::time::Duration;

use aya::maps::MapData;
use ipnet::IpNet;
use sensor_common::MAX_LAN_PREFIXES;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::kernel::{KernelError, addr_watch::AddressWatch, lan_prefixes::LanPrefixMap, netif};

/// Address changes come in bursts (a prefix replaced is a removal and an addition, several
/// addresses each): the prefixes are re-read once the interface has been quiet this long.
pub const QUIET: Duration = Duration::from_secs(1);

/// The interface's prefixes, at most `slots` (the first ones; the rest said in a warning): at
/// start [`MAX_LAN_PREFIXES`], then as many as the loaded programs check
/// ([`Loaded::lan_slots`](crate::kernel::loader::Loaded)).
pub fn interface_prefixes(interface: &str, slots: usize) -> Result<Vec<IpNet>, KernelError> {
    let mut prefixes = netif::prefixes(interface)?;
    if prefixes.len() > slots {
        let left: Vec<String> = prefixes[slots..].iter().map(ToString::to_string).collect();
        warn!(
            interface,
            "the interface has {} prefixes; the kernel programs check {slots} (the prefixes at \
             start and {} spare, at most {MAX_LAN_PREFIXES}; a restart checks them all): traffic \
             of {} is not counted as client traffic (set `lan_prefixes` to choose)",
            prefixes.len(),
            crate::kernel::loader::SPARE_LAN_SLOTS,
            left.join(", ")
        );
        prefixes.truncate(slots);
    }
    Ok(prefixes)
}

/// Follows the interface's prefixes into the kernel's `LAN_PREFIXES` map.
pub struct Follower {
    interface: String,
    watch: AddressWatch,
    map: LanPrefixMap<MapData>,
    current: Vec<IpNet>,
    /// How many prefixes the loaded programs check.
    slots: usize,
    /// When the last burst of changes counts as over.
    settles: Option<Instant>,
}

/// A change that [`Follower::apply`] made.
pub struct Change {
    pub old: Vec<IpNet>,
    pub new: Vec<IpNet>,
}

impl Follower {
    /// `watch` opened before `current` was read, so that no change in between is missed.
    pub fn new(
        interface: &str,
        watch: AddressWatch,
        map: LanPrefixMap<MapData>,
        current: Vec<IpNet>,
        slots: usize,
    ) -> Follower {
        Follower { interface: interface.into(), watch, map, current, slots, settles: None }
    }

    /// Completes once addresses changed and then stayed quiet for [`QUIET`]. Cancel-safe: what
    /// was seen is kept in `self` for the next call.
    pub async fn settled(&mut self) -> Result<(), KernelError> {
        loop {
            match self.settles {
                None => {
                    self.watch.changed().await?;
                    self.settles = Some(Instant::now() + QUIET);
                }
                Some(at) => tokio::select! {
                    changed = self.watch.changed() => {
                        changed?;
                        self.settles = Some(Instant::now() + QUIET);
                    }
                    () = tokio::time::sleep_until(at) => {
                        self.settles = None;
                        return Ok(());
                    }
                },
            }
        }
    }

    /// Re-reads the interface's prefixes and, when they differ from the kernel's, writes them
    /// there. An interface without addresses (down, being renumbered) keeps the prefixes.
    pub fn apply(&mut self) -> Result<Option<Change>, KernelError> {
        let new = match interface_prefixes(&self.interface, self.slots) {
            Ok(new) => new,
            Err(KernelError::NoAddresses { .. }) => {
                warn!(
                    interface = %self.interface,
                    "the interface has no addresses now: the LAN prefixes stay as they are"
                );
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        if same(&new, &self.current) {
            return Ok(None);
        }
        self.map.set(&new)?;
        let old = std::mem::replace(&mut self.current, new.clone());
        info!(
            interface = %self.interface,
            old = %shown(&old),
            new = %shown(&new),
            "the LAN prefixes changed: clients are the hosts inside the new ones"
        );
        Ok(Some(Change { old, new }))
    }
}

/// The same prefixes, in any order.
fn same(a: &[IpNet], b: &[IpNet]) -> bool {
    let (mut a, mut b) = (a.to_vec(), b.to_vec());
    a.sort();
    b.sort();
    a == b
}

pub fn shown(prefixes: &[IpNet]) -> String {
    prefixes.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_order_of_the_prefixes_is_no_change() {
        let a: IpNet = "10.0.0.0/24".parse().unwrap();
        let b: IpNet = "fd00::/64".parse().unwrap();
        let c: IpNet = "fd01::/64".parse().unwrap();
        assert!(same(&[a, b], &[b, a]));
        assert!(!same(&[a, b], &[a, c]));
        assert!(!same(&[a, b], &[a]));
        assert_eq!(shown(&[a, b]), "10.0.0.0/24, fd00::/64");
    }
}
