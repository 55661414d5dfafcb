//! A rule's condition: what each kind is written as in the policy file and what it means
//! (docs/policy.md, "Conditions").

use std::time::Duration;

use serde::Deserialize;

use super::values::{ByteSize, GroupBy};

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Upload,
    Download,
    #[default]
    Both,
}

/// Exactly one condition per rule.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ConditionSpec {
    pub traffic: Option<TrafficCondition>,
    pub volume: Option<VolumeCondition>,
    pub rate: Option<RateCondition>,
    pub new_destination: Option<NewDestinationCondition>,
    pub new_device: Option<NewDeviceCondition>,
    pub dns_bypass: Option<DnsBypassCondition>,
}

/// The condition of a rule, once it is known that exactly one is given.
#[derive(Debug, Clone, PartialEq)]
pub enum Condition {
    Traffic(TrafficCondition),
    Volume(VolumeCondition),
    Rate(RateCondition),
    NewDestination(NewDestinationCondition),
    NewDevice(NewDeviceCondition),
    DnsBypass(DnsBypassCondition),
}

impl ConditionSpec {
    pub fn single(&self) -> Result<Condition, String> {
        let mut all = Vec::new();
        if let Some(c) = &self.traffic {
            all.push(Condition::Traffic(c.clone()));
        }
        if let Some(c) = &self.volume {
            all.push(Condition::Volume(c.clone()));
        }
        if let Some(c) = &self.rate {
            all.push(Condition::Rate(c.clone()));
        }
        if let Some(c) = &self.new_destination {
            all.push(Condition::NewDestination(c.clone()));
        }
        if let Some(c) = &self.new_device {
            all.push(Condition::NewDevice(c.clone()));
        }
        if let Some(c) = &self.dns_bypass {
            all.push(Condition::DnsBypass(c.clone()));
        }
        match all.len() {
            1 => Ok(all.remove(0)),
            0 => Err("the condition is empty".into()),
            _ => Err("a rule has exactly one condition; write a second rule for the other".into()),
        }
    }
}

impl Condition {
    /// The sliding window the condition looks at (event conditions: how long they hold).
    pub fn window(&self) -> Duration {
        match self {
            Condition::Traffic(c) => c.window,
            Condition::Volume(c) => c.window,
            Condition::Rate(c) => c.window,
            Condition::NewDestination(c) => c.window,
            Condition::NewDevice(c) => c.window,
            Condition::DnsBypass(c) => c.window,
        }
    }

    pub fn default_group_by(&self) -> GroupBy {
        match self {
            Condition::NewDestination(c) => c.by,
            Condition::NewDevice(_) => GroupBy::None,
            Condition::DnsBypass(_) => GroupBy::Ip,
            _ => GroupBy::Domain,
        }
    }
}

fn minutes(n: u64) -> Duration {
    Duration::from_secs(60 * n)
}
fn default_traffic_window() -> Duration {
    minutes(5)
}
fn default_volume_window() -> Duration {
    minutes(10)
}
fn default_rate_window() -> Duration {
    minutes(1)
}
fn default_event_window() -> Duration {
    minutes(60)
}
fn default_destination_learning() -> Duration {
    Duration::from_secs(7 * 24 * 3600)
}
fn default_device_learning() -> Duration {
    minutes(60)
}
fn upload() -> Direction {
    Direction::Upload
}

/// Any traffic at all (deny-list style).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TrafficCondition {
    #[serde(default)]
    pub direction: Direction,
    /// The alert holds while traffic was seen this recently.
    #[serde(default = "default_traffic_window", with = "humantime_serde")]
    pub window: Duration,
}

/// More than `above` bytes in `direction` within the sliding `window`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct VolumeCondition {
    #[serde(default = "upload")]
    pub direction: Direction,
    pub above: ByteSize,
    #[serde(default = "default_volume_window", with = "humantime_serde")]
    pub window: Duration,
}

/// A sustained rate: the average over `window` above the threshold (add `for` to require it
/// for longer).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RateCondition {
    #[serde(default)]
    pub direction: Direction,
    #[serde(default)]
    pub bytes_per_second: Option<ByteSize>,
    #[serde(default)]
    pub packets_per_second: Option<u64>,
    #[serde(default = "default_rate_window", with = "humantime_serde")]
    pub window: Duration,
}

/// First contact with a destination never seen for that client after its learning period.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NewDestinationCondition {
    /// What makes a destination new: its domain, full name, address, network or country.
    #[serde(default)]
    pub by: GroupBy,
    /// From a client's first sighting, destinations are learnt silently this long.
    #[serde(default = "default_destination_learning", with = "humantime_serde")]
    pub learning: Duration,
    /// How long the alert holds after the first contact.
    #[serde(default = "default_event_window", with = "humantime_serde")]
    pub window: Duration,
}

/// A MAC never seen before joins the LAN.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NewDeviceCondition {
    /// From the sensor's first start, devices are learnt silently this long.
    #[serde(default = "default_device_learning", with = "humantime_serde")]
    pub learning: Duration,
    #[serde(default = "default_event_window", with = "humantime_serde")]
    pub window: Duration,
}

/// Name resolution around the configured resolvers: plain DNS (53) or DNS over TLS/QUIC (853)
/// to anything else, or a known DNS-over-HTTPS endpoint.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DnsBypassCondition {
    #[serde(default = "default_traffic_window", with = "humantime_serde")]
    pub window: Duration,
}
