//! A rule's condition, kind by kind, in one place: how it is written in the policy file, how
//! it is checked on load, what feeds it, which way it counts, how its alerts group, when it
//! holds and what its alert says by default (docs/policy.md, "Conditions").

use std::time::Duration;

use serde::Deserialize;

use super::{
    error::PolicyError,
    values::{ByteSize, GroupBy},
};

/// Which way traffic counts: `upload` is client → remote.
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
    pub fn single(&self) -> Result<Condition, PolicyError> {
        // Taken apart field by field: a kind added to the file but not here does not compile.
        let ConditionSpec { traffic, volume, rate, new_destination, new_device, dns_bypass } = self;
        let mut all: Vec<Condition> = [
            traffic.clone().map(Condition::Traffic),
            volume.clone().map(Condition::Volume),
            rate.clone().map(Condition::Rate),
            new_destination.clone().map(Condition::NewDestination),
            new_device.clone().map(Condition::NewDevice),
            dns_bypass.clone().map(Condition::DnsBypass),
        ]
        .into_iter()
        .flatten()
        .collect();
        match all.len() {
            1 => Ok(all.remove(0)),
            0 => Err(PolicyError::NoCondition),
            _ => Err(PolicyError::TwoConditions),
        }
    }
}

/// The hint for a rule without exactly one condition: every kind, as the file spells it.
pub(super) const KINDS_HINT: &str =
    "conditions: traffic, volume, rate, new_destination, new_device, dns_bypass (docs/policy.md)";

/// What feeds a condition's series on every poll.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Feed {
    /// The poll's clients, not its flows: each MAC seen for the first time, once `learning`
    /// (counted from the sensor's first start) is over.
    NewDevices { learning: Duration },
    /// The poll's flows that gained traffic, those the filter lets through.
    Flows(FlowFilter),
}

/// Which of the flows a rule matches (after its exceptions) count for its condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowFilter {
    All,
    /// Flows to a destination, named at `by`, that the client never reached before, once
    /// `learning` (counted from the client's first sighting) is over. Learnt from all traffic.
    NewDestinations {
        by: GroupBy,
        learning: Duration,
    },
    /// Flows that resolve names around the configured resolvers (the policy's `dns`).
    DnsBypass,
}

/// What a series saw in its window, in its condition's direction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Measured {
    pub bytes: u64,
    pub packets: u64,
    /// The window in seconds, at least 1.
    pub window: u64,
    /// For event conditions: an event (a new device, a new destination) fell in the window.
    pub event: bool,
}

/// Everything a kind of condition means, one exhaustive `match` each: adding a kind makes the
/// compiler list what it has to say (docs/design.md, "Adding a policy condition").
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

    /// Which way its traffic counts; kinds that take no `direction` count both.
    pub fn direction(&self) -> Direction {
        match self {
            Condition::Traffic(c) => c.direction,
            Condition::Volume(c) => c.direction,
            Condition::Rate(c) => c.direction,
            Condition::NewDestination(_) | Condition::NewDevice(_) | Condition::DnsBypass(_) => {
                Direction::Both
            }
        }
    }

    /// The `group_by` of a rule that gives none.
    pub fn default_group_by(&self) -> GroupBy {
        match self {
            Condition::Traffic(_) | Condition::Volume(_) | Condition::Rate(_) => GroupBy::Domain,
            Condition::NewDestination(c) => c.by,
            Condition::NewDevice(_) => GroupBy::None,
            Condition::DnsBypass(_) => GroupBy::Ip,
        }
    }

    /// What feeds its series.
    pub fn feed(&self) -> Feed {
        match self {
            Condition::Traffic(_) | Condition::Volume(_) | Condition::Rate(_) => {
                Feed::Flows(FlowFilter::All)
            }
            Condition::NewDestination(c) => {
                Feed::Flows(FlowFilter::NewDestinations { by: c.by, learning: c.learning })
            }
            Condition::NewDevice(c) => Feed::NewDevices { learning: c.learning },
            Condition::DnsBypass(_) => Feed::Flows(FlowFilter::DnsBypass),
        }
    }

    /// Whether a poll's flows must be named for it (not for devices alone).
    pub fn needs_flows(&self) -> bool {
        match self.feed() {
            Feed::Flows(_) => true,
            Feed::NewDevices { .. } => false,
        }
    }

    /// Whether it holds for `window` after an event (what feeds it marks the event), rather
    /// than on the traffic measured in the window.
    pub fn is_event(&self) -> bool {
        match self {
            Condition::Traffic(_)
            | Condition::Volume(_)
            | Condition::Rate(_)
            | Condition::DnsBypass(_) => false,
            Condition::NewDestination(_) | Condition::NewDevice(_) => true,
        }
    }

    /// Whether it holds, given what its series saw in the window.
    pub fn holds(&self, m: &Measured) -> bool {
        match self {
            Condition::Traffic(_) | Condition::DnsBypass(_) => m.packets > 0,
            Condition::Volume(v) => m.bytes > v.above.0,
            Condition::Rate(r) => match (r.bytes_per_second, r.packets_per_second) {
                (Some(bps), _) => m.bytes as f64 / m.window as f64 > bps.0 as f64,
                (None, Some(pps)) => m.packets as f64 / m.window as f64 > pps as f64,
                (None, None) => false,
            },
            Condition::NewDestination(_) | Condition::NewDevice(_) => m.event,
        }
    }

    /// Checked when the policy loads.
    pub(super) fn validate(&self) -> Result<(), PolicyError> {
        if self.window() < Duration::from_secs(1) {
            return Err(PolicyError::ShortWindow);
        }
        let refused = match self {
            Condition::Volume(v) => (v.above.0 == 0).then_some(PolicyError::VolumeZero),
            Condition::Rate(c) => (c.bytes_per_second.is_some() == c.packets_per_second.is_some())
                .then_some(PolicyError::RateThreshold),
            Condition::Traffic(_)
            | Condition::NewDestination(_)
            | Condition::NewDevice(_)
            | Condition::DnsBypass(_) => None,
        };
        refused.map_or(Ok(()), Err)
    }

    /// Summary and description of a rule that gives none (templates, docs/policy.md).
    pub(super) fn default_texts(&self) -> (&'static str, &'static str) {
        match self {
            Condition::Traffic(_) => (
                "{{ client }} talks to {{ destination }}",
                "{{ client }} ({{ mac }}) exchanged {{ bytes }} in {{ packets }} packets with {{ destination }} ({{ country }} {{ asn }}) within {{ window }}.",
            ),
            Condition::Volume(_) => (
                "{{ client }} moved {{ bytes }} to/from {{ destination }} within {{ window }}",
                "{{ client }} ({{ mac }}) moved {{ bytes }} with {{ destination }} ({{ country }} {{ asn }}) within {{ window }}, above the rule's limit.",
            ),
            Condition::Rate(_) => (
                "{{ client }} sustains {{ rate }} with {{ destination }}",
                "{{ client }} ({{ mac }}) averaged {{ rate }} with {{ destination }} ({{ country }} {{ asn }}) over {{ window }}.",
            ),
            Condition::NewDestination(_) => (
                "{{ client }} contacted a new destination: {{ destination }}",
                "{{ client }} ({{ mac }}) talked to {{ destination }} ({{ country }} {{ asn }}) for the first time since its learning period ended.",
            ),
            Condition::NewDevice(_) => (
                "New device on the LAN: {{ client }}",
                "A device never seen before joined the LAN: {{ client }} ({{ mac }}, vendor {{ vendor }}).",
            ),
            Condition::DnsBypass(_) => (
                "{{ client }} resolves names around the configured resolvers ({{ destination }})",
                "{{ client }} ({{ mac }}) used DNS at {{ destination }} ({{ country }} {{ asn }}) instead of the configured resolvers within {{ window }}.",
            ),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::template::Template;

    /// One condition of every kind, as a rule writes it.
    const ONE_OF_EACH: [&str; 6] = [
        "{traffic: {}}",
        "{volume: {above: 5MB}}",
        "{rate: {packets_per_second: 10}}",
        "{new_destination: {by: asn}}",
        "{new_device: {}}",
        "{dns_bypass: {}}",
    ];

    fn condition(yaml: &str) -> Condition {
        let spec: ConditionSpec = serde_yaml::from_str(yaml).unwrap_or_else(|e| panic!("{e}"));
        spec.single().unwrap_or_else(|e| panic!("{yaml}: {e}"))
    }

    #[test]
    fn every_kind_loads_is_named_in_the_hint_and_has_texts_that_parse() {
        for yaml in ONE_OF_EACH {
            let c = condition(yaml);
            assert_eq!(c.validate(), Ok(()), "{yaml}");
            let key = yaml[1..].split(':').next().unwrap_or_default();
            assert!(KINDS_HINT.contains(key), "{key}");
            let (summary, description) = c.default_texts();
            for text in [summary, description] {
                assert!(Template::parse(text).is_ok(), "{yaml}: {text}");
            }
        }
    }

    #[test]
    fn what_feeds_each_kind_and_how_it_groups() {
        let feeds: Vec<(Feed, GroupBy, Direction, bool)> = ONE_OF_EACH
            .iter()
            .map(|y| condition(y))
            .map(|c| (c.feed(), c.default_group_by(), c.direction(), c.is_event()))
            .collect();
        let (hour, week) = (Duration::from_secs(3600), Duration::from_secs(7 * 24 * 3600));
        let all = Feed::Flows(FlowFilter::All);
        let new_destinations =
            Feed::Flows(FlowFilter::NewDestinations { by: GroupBy::Asn, learning: week });
        assert_eq!(
            feeds,
            vec![
                (all, GroupBy::Domain, Direction::Both, false),
                (all, GroupBy::Domain, Direction::Upload, false),
                (all, GroupBy::Domain, Direction::Both, false),
                (new_destinations, GroupBy::Asn, Direction::Both, true),
                (Feed::NewDevices { learning: hour }, GroupBy::None, Direction::Both, true),
                (Feed::Flows(FlowFilter::DnsBypass), GroupBy::Ip, Direction::Both, false),
            ]
        );
        let needs_flows: Vec<bool> =
            ONE_OF_EACH.iter().map(|y| condition(y).needs_flows()).collect();
        assert_eq!(needs_flows, [true, true, true, true, false, true]);
    }

    #[test]
    fn holds_on_what_the_window_measured() {
        let m = |bytes, packets, event| Measured { bytes, packets, window: 10, event };
        let volume = condition("{volume: {above: 1kB}}");
        assert!(!volume.holds(&m(1000, 5, false)) && volume.holds(&m(1001, 5, false)));
        let pps = condition("{rate: {packets_per_second: 10}}");
        assert!(!pps.holds(&m(0, 100, false)) && pps.holds(&m(0, 101, false)));
        let bps = condition("{rate: {bytes_per_second: 1kB}}");
        assert!(!bps.holds(&m(10_000, 0, false)) && bps.holds(&m(10_001, 0, false)));
        let traffic = condition("{traffic: {}}");
        assert!(!traffic.holds(&m(0, 0, true)) && traffic.holds(&m(0, 1, false)));
        let device = condition("{new_device: {}}");
        assert!(!device.holds(&m(5, 5, false)) && device.holds(&m(0, 0, true)));
    }
}
