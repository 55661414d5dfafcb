//! The value every counter of the accounting holds: packets and bytes per direction.

use sensor_common::{Counters, Direction};
use serde::{Deserialize, Serialize};

/// Packets and bytes per direction (indexed by [`Direction::index`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tally {
    pub packets: [u64; 2],
    pub bytes: [u64; 2],
}

impl Tally {
    pub fn of(c: &Counters) -> Tally {
        Tally { packets: c.packets, bytes: c.bytes }
    }

    /// What `self` gained over `prev`. A value below `prev` means the kernel entry was
    /// recreated (evicted and seen again, or the map was reset): all of it is new.
    pub(super) fn since(&self, prev: &Tally) -> Tally {
        let grew =
            (0..2).all(|d| self.packets[d] >= prev.packets[d] && self.bytes[d] >= prev.bytes[d]);
        if !grew {
            return *self;
        }
        Tally {
            packets: [self.packets[0] - prev.packets[0], self.packets[1] - prev.packets[1]],
            bytes: [self.bytes[0] - prev.bytes[0], self.bytes[1] - prev.bytes[1]],
        }
    }

    pub fn add(&mut self, other: &Tally) {
        for d in 0..2 {
            self.packets[d] += other.packets[d];
            self.bytes[d] += other.bytes[d];
        }
    }

    pub fn is_zero(&self) -> bool {
        *self == Tally::default()
    }

    pub fn packets(&self, dir: Direction) -> u64 {
        self.packets[dir.index()]
    }

    pub fn bytes(&self, dir: Direction) -> u64 {
        self.bytes[dir.index()]
    }

    pub(super) fn total_bytes(&self) -> u64 {
        self.bytes[0] + self.bytes[1]
    }
}
