//! Types that two or more stages share. A leaf: it imports nothing of the crate, so every
//! stage may use it without an import circle (see docs/design.md, "Modules").

pub mod address;
pub mod alert;
pub mod labels;
pub mod level;
pub mod located;
pub mod mac;
pub mod user_file;

pub use alert::{Alert, AlertStatus};
pub use level::DestinationLevel;
pub use located::LocatedError;
pub use mac::Mac;

/// A hash map with a fast, randomly seeded hasher: the per-flow maps are hashed several times
/// per flow and poll, and SipHash dominated the poll at 65,536 flows.
pub type FastMap<K, V> = foldhash::HashMap<K, V>;
pub type FastSet<K> = foldhash::HashSet<K>;
