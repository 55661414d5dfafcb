//! The value every counter of the accounting holds: packets and bytes per direction.

use sensor_common::{Counters, Direction};
use serde::{Deserialize, Serialize};

/// Largest counter value a state file may hold: 2^62, 117 years of traffic at 10 Gbit/s
/// (bytes; packets are fewer). A larger one is damage or a hand edit, and would soon wrap.
pub const MAX_PLAUSIBLE: u64 = 1 << 62;

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

    /// Adds `other`, saturating: a counter stops at `u64::MAX` rather than wrap to a small
    /// value (a counter that went backwards). Real traffic never gets near (2^64 bytes is
    /// 467 years at 10 Gbit/s); a value restored from a state file could, and those above
    /// [`MAX_PLAUSIBLE`] are refused at load.
    pub fn add(&mut self, other: &Tally) {
        for d in 0..2 {
            self.packets[d] = self.packets[d].saturating_add(other.packets[d]);
            self.bytes[d] = self.bytes[d].saturating_add(other.bytes[d]);
        }
    }

    /// The first of its four values above [`MAX_PLAUSIBLE`], as "upload bytes 123".
    pub(super) fn implausible(&self) -> Option<String> {
        Direction::ALL.into_iter().find_map(|dir| {
            let d = dir.index();
            let (name, value) = if self.bytes[d] > MAX_PLAUSIBLE {
                ("bytes", self.bytes[d])
            } else if self.packets[d] > MAX_PLAUSIBLE {
                ("packets", self.packets[d])
            } else {
                return None;
            };
            Some(format!("{} {name} {value}", dir.as_str()))
        })
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
        self.bytes[0].saturating_add(self.bytes[1])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A counter restored near the top of u64 stops there: it never wraps to a small value
    /// (and a debug build does not panic on the overflow).
    #[test]
    fn adding_saturates_instead_of_wrapping() {
        let mut t = Tally { packets: [u64::MAX - 1, 5], bytes: [u64::MAX - 10, 7] };
        t.add(&Tally { packets: [3, 1], bytes: [100, 1] });
        assert_eq!(t, Tally { packets: [u64::MAX, 6], bytes: [u64::MAX, 8] });
        assert_eq!(t.total_bytes(), u64::MAX);
        assert_eq!(t.implausible().as_deref(), Some("upload bytes 18446744073709551615"));
        let at_limit = Tally { packets: [0, MAX_PLAUSIBLE], bytes: [MAX_PLAUSIBLE, 0] };
        assert_eq!(at_limit.implausible(), None);
        let above = Tally { packets: [0, MAX_PLAUSIBLE + 1], bytes: [0, 0] };
        assert_eq!(above.implausible().as_deref(), Some("download packets 4611686018427387905"));
    }
}
