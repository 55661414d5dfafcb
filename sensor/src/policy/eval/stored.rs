//! What the evaluator remembers across restarts, and how the state file writes it: the
//! devices and destinations learnt, and every series. State files of older releases load.

use std::{
    collections::{BTreeMap, BTreeSet},
    hash::Hasher as _,
};

use serde::{Deserialize, Serialize};

use super::series::Series;
use crate::policy::{
    matcher::{FlowFacts, write_destination_label},
    values::GroupBy,
};

/// Everything the evaluator remembers; saved in the state file.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct EvalState {
    /// When the policy engine first ran (start of `new_device` learning).
    pub(super) started: u64,
    /// Every MAC ever seen, with when.
    pub(super) devices: BTreeMap<String, u64>,
    pub(super) destinations: BTreeMap<String, KnownDestinations>,
    /// By id (see [`series_id`](super::series::series_id)). Both boxed: nodes of this map hold 11 keys and values each,
    /// and are a half to two thirds full.
    #[serde(with = "series_map")]
    pub(super) series: BTreeMap<Box<str>, Box<Series>>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(super) struct KnownDestinations {
    pub(super) first_seen: u64,
    /// Per grouping level (domain, asn...): every destination seen.
    pub(super) seen: Levels,
}

/// A client's sets by level, saved as a map. A list: a client has one to a few levels, and a
/// B-tree's first node took ~550 bytes per client for one (thousands of clients).
#[derive(Debug, Clone, Default)]
pub(super) struct Levels(Vec<(Box<str>, BTreeSet<Seen>)>);

impl Levels {
    /// The set of `level`, made empty the first time.
    pub(super) fn set(&mut self, level: &str) -> &mut BTreeSet<Seen> {
        let i = match self.0.iter().position(|(l, _)| **l == *level) {
            Some(i) => i,
            None => {
                self.0.push((level.into(), BTreeSet::new()));
                self.0.len() - 1
            }
        };
        &mut self.0[i].1
    }
}

impl Serialize for Levels {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // In key order, as the map it was.
        let mut sorted: Vec<&(Box<str>, BTreeSet<Seen>)> = self.0.iter().collect();
        sorted.sort_by(|a, b| a.0.cmp(&b.0));
        s.collect_map(sorted.into_iter().map(|(level, set)| (level, set)))
    }
}

impl<'de> Deserialize<'de> for Levels {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Levels, D::Error> {
        let map = BTreeMap::<String, BTreeSet<Seen>>::deserialize(d)?;
        Ok(Levels(map.into_iter().map(|(level, set)| (level.into_boxed_str(), set)).collect()))
    }
}

/// A destination `new_destination` has seen: the 64-bit FNV-1a hash of its label, stable
/// across restarts and releases. 8 bytes where the label took tens (a client's set holds up
/// to `MAX_KNOWN_PER_CLIENT`, in eval/mod.rs); only membership is ever asked. State files
/// that stored the labels themselves load as their hashes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub(super) struct Seen(u64);

impl Seen {
    /// Of a flow's label at `by`, hashed as it is written (no allocation).
    pub(super) fn of(f: &FlowFacts, by: GroupBy) -> Seen {
        let mut h = LabelHash::default();
        let _ = write_destination_label(&mut h, f, by);
        Seen(h.0.finish())
    }

    fn of_label(label: &str) -> Seen {
        let mut h = LabelHash::default();
        let _ = std::fmt::Write::write_str(&mut h, label);
        Seen(h.0.finish())
    }
}

#[derive(Default)]
struct LabelHash(fnv::FnvHasher);

impl std::fmt::Write for LabelHash {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.write(s.as_bytes());
        Ok(())
    }
}

impl<'de> Deserialize<'de> for Seen {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Seen, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Stored {
            Hash(u64),
            Label(String),
        }
        Ok(match Stored::deserialize(d)? {
            Stored::Hash(h) => Seen(h),
            Stored::Label(label) => Seen::of_label(&label),
        })
    }
}

pub(super) fn level_name(by: GroupBy) -> &'static str {
    match by {
        GroupBy::Domain => "domain",
        GroupBy::Fqdn => "fqdn",
        GroupBy::Ip => "ip",
        GroupBy::Asn => "asn",
        GroupBy::Country => "country",
        GroupBy::None => "none",
    }
}

/// The series map as saved: every series with its rule, mac, destination and labels in full,
/// as it was when the series held them all itself (state files load in either release).
mod series_map {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serialize, Serializer, de};

    use super::super::series::{
        Interner, Phase, Sample, Samples, Series, destination_of, series_id,
    };

    #[derive(Serialize)]
    struct SeriesRef<'a> {
        rule: &'a str,
        mac: &'a str,
        destination: &'a str,
        client: &'a str,
        group: &'a str,
        vendor: &'a str,
        country: &'a str,
        asn: u32,
        samples: &'a Samples,
        event_at: Option<u64>,
        phase: Phase,
        resolved: Option<(u64, u64)>,
        last_bytes: u64,
        last_packets: u64,
    }

    /// Same fields in the same order as [`SeriesRef`] (a struct also loads from a sequence).
    #[derive(Deserialize)]
    struct StoredSeries {
        rule: String,
        mac: String,
        destination: String,
        client: String,
        group: String,
        vendor: String,
        country: String,
        asn: u32,
        samples: Vec<Sample>,
        event_at: Option<u64>,
        phase: Phase,
        resolved: Option<(u64, u64)>,
        last_bytes: u64,
        last_packets: u64,
    }

    pub fn serialize<S: Serializer>(
        map: &BTreeMap<Box<str>, Box<Series>>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.collect_map(map.iter().map(|(id, series)| {
            let l = &*series.labels;
            let value = SeriesRef {
                rule: &l.rule,
                mac: &l.mac,
                destination: destination_of(id, l),
                client: &l.client,
                group: &l.group,
                vendor: &l.vendor,
                country: &l.country,
                asn: l.asn,
                samples: &series.samples,
                event_at: series.event_at(),
                phase: series.phase(),
                resolved: series.resolved(),
                last_bytes: series.last_bytes,
                last_packets: series.last_packets,
            };
            (id, value)
        }))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<Box<str>, Box<Series>>, D::Error> {
        struct Visitor;
        impl<'de> de::Visitor<'de> for Visitor {
            type Value = BTreeMap<Box<str>, Box<Series>>;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a map of series")
            }

            fn visit_map<A: de::MapAccess<'de>>(
                self,
                mut entries: A,
            ) -> Result<Self::Value, A::Error> {
                let mut map = BTreeMap::new();
                // Loaded series share their labels from the start (the evaluator adopts them).
                let mut interner = Interner::default();
                while let Some((id, s)) = entries.next_entry::<String, StoredSeries>()? {
                    let labels = interner.labels(
                        [&s.rule, &s.mac, &s.client, &s.group, &s.vendor, &s.country],
                        s.asn,
                    );
                    // The destination is kept as the tail of the id only: an id that is not
                    // the one its series' fields make (a hand-edited file) is corrected.
                    let canonical = id
                        .strip_prefix(s.rule.as_str())
                        .and_then(|r| r.strip_prefix('\u{1f}'))
                        .and_then(|r| r.strip_prefix(s.mac.as_str()))
                        .and_then(|r| r.strip_prefix('\u{1f}'))
                        == Some(s.destination.as_str());
                    let id = if canonical {
                        id.into_boxed_str()
                    } else {
                        series_id(&s.rule, &s.mac, &s.destination)
                    };
                    let mut series = Series::new(labels);
                    series.samples = Samples::from_vec(s.samples);
                    series.set_event_at(s.event_at);
                    series.set_phase(s.phase);
                    series.set_resolved(s.resolved);
                    series.last_bytes = s.last_bytes;
                    series.last_packets = s.last_packets;
                    map.insert(id, Box::new(series));
                }
                Ok(map)
            }
        }
        d.deserialize_map(Visitor)
    }
}
