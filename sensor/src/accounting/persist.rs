//! The accounting in the state file, so that a restart neither loses nor double-counts. The
//! layout is that of earlier versions (their files still load): destinations by name, flow
//! keys as hex bytes, maps as arrays of pairs.

use std::{collections::HashMap, hash::Hash, sync::Arc};

use sensor_common::{Counters, FlowKey};
use serde::{Deserialize, Serialize};

use super::{
    Accounting, ClientAccount, KernelCounters, LastRead, MAX_PLAUSIBLE, RemoteId,
    dest_names::{DestId, DestKey, DestNames},
    ranked::{Kept, Ranked, Series},
    tally::Tally,
};
use crate::{kernel::collector::Snapshot, types::Mac};

/// A key's entry in the state file (the layout of earlier versions, so their files still load).
#[derive(Serialize, Deserialize)]
struct EntryFile {
    exported: Tally,
    in_top: bool,
    score: f64,
    last_active: u64,
}

/// A [`Ranked`] set in the state file, its keys written as `name` gives them.
struct RankedFile<'a, K, F> {
    set: &'a Ranked<K>,
    name: F,
}

impl<'a, K, N: Serialize + 'a, F: Fn(&'a K) -> &'a N> Serialize for RankedFile<'a, K, F>
where
    K: Copy + Eq + Hash + Ord,
{
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let set = self.set;
        let entries = Pairs(|| {
            set.kept().map(|(k, kept)| {
                let file = EntryFile {
                    exported: kept.series.exported,
                    in_top: kept.series.in_top,
                    score: f64::from(kept.score),
                    last_active: kept.last_active,
                };
                ((self.name)(k), file)
            })
        });
        let mut st = s.serialize_struct("Ranked", 2)?;
        st.serialize_field("entries", &entries)?;
        st.serialize_field("other", &set.other)?;
        st.end()
    }
}

/// Serializes what an iterator yields as a sequence, without collecting it first.
struct Pairs<F>(F);

impl<I: Iterator<Item: Serialize>, F: Fn() -> I> Serialize for Pairs<F> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq((self.0)())
    }
}

impl<K: Copy + Eq + Hash + Ord + Serialize> Serialize for Ranked<K> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        fn same<K>(k: &K) -> &K {
            k
        }
        RankedFile { set: self, name: same }.serialize(s)
    }
}

/// A [`Ranked`] set as read from the state file, keys as written.
#[derive(Deserialize)]
struct RankedIn<N> {
    entries: Vec<(N, EntryFile)>,
    other: Tally,
}

impl<N> RankedIn<N> {
    fn into_ranked<K: Copy + Eq + Hash + Ord>(self, mut key: impl FnMut(N) -> K) -> Ranked<K> {
        let keys = self.entries.into_iter().map(|(name, file)| {
            let series = Series { exported: file.exported, in_top: file.in_top };
            (key(name), Kept { series, score: file.score as f32, last_active: file.last_active })
        });
        Ranked::restored(self.other, keys)
    }
}

impl<'de, K: Copy + Eq + Hash + Ord + Deserialize<'de>> Deserialize<'de> for Ranked<K> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(RankedIn::<K>::deserialize(d)?.into_ranked(|k| k))
    }
}

/// A client's account in the state file, its destinations by name.
#[derive(Serialize)]
struct ClientFile<'a, D: Serialize> {
    totals: &'a Tally,
    remotes: &'a Ranked<RemoteId>,
    destinations: D,
    last_seen: u64,
}

#[derive(Deserialize)]
struct ClientIn {
    totals: Tally,
    remotes: Ranked<RemoteId>,
    destinations: RankedIn<DestKey>,
    last_seen: u64,
}

/// The accounting in the state file. `flows_last` is stored as (flow key, counters) pairs, the
/// flows held back left out.
#[derive(Deserialize)]
struct AccountingIn {
    #[serde(deserialize_with = "as_pairs::deserialize")]
    clients: Vec<(Mac, ClientIn)>,
    flow_evictions: u64,
    flows_last: LastRead,
    #[serde(deserialize_with = "as_pairs::deserialize")]
    clients_last: HashMap<Mac, Tally>,
    last_update: u64,
    /// Absent in files written before the kernel's outcome counters were kept here.
    #[serde(default)]
    kernel: KernelCounters,
}

impl Serialize for Accounting {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let names = &self.destinations;
        let clients = Pairs(|| {
            self.clients.iter().map(|(mac, a)| {
                let destinations =
                    RankedFile { set: &a.destinations, name: |id: &DestId| names.key(*id) };
                (
                    mac,
                    ClientFile {
                        totals: &a.totals,
                        remotes: &a.remotes,
                        destinations,
                        last_seen: a.last_seen,
                    },
                )
            })
        });
        let mut st = s.serialize_struct("Accounting", 6)?;
        st.serialize_field("clients", &clients)?;
        st.serialize_field("flow_evictions", &self.flow_evictions)?;
        st.serialize_field("flows_last", &self.last)?;
        st.serialize_field("clients_last", &Pairs(|| self.clients_last.iter()))?;
        st.serialize_field("last_update", &self.last_update)?;
        st.serialize_field("kernel", &self.kernel)?;
        st.end()
    }
}

impl<'de> Deserialize<'de> for Accounting {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let file = AccountingIn::deserialize(d)?;
        let mut names = DestNames::default();
        let clients = file
            .clients
            .into_iter()
            .map(|(mac, c)| {
                let destinations = c.destinations.into_ranked(|key| {
                    let id = names.id(&key);
                    names.hold(id);
                    id
                });
                (
                    mac,
                    ClientAccount {
                        totals: c.totals,
                        remotes: c.remotes,
                        destinations,
                        last_seen: c.last_seen,
                    },
                )
            })
            .collect();
        Ok(Accounting {
            clients,
            flow_evictions: file.flow_evictions,
            last: file.flows_last,
            clients_last: file.clients_last,
            last_update: file.last_update,
            kernel: file.kernel,
            destinations: names,
            ..Accounting::default()
        })
    }
}

impl Accounting {
    /// The first counter above [`MAX_PLAUSIBLE`] in an accounting restored from a state file,
    /// described ("client 02:00:00:00:00:01 totals: upload bytes 18446744073709551610");
    /// None when every counter is plausible. Exported values and the kernel values last read
    /// alike: no kernel counter gets there either, so either is a damaged or edited file.
    pub fn implausible(&self) -> Option<String> {
        let mac = crate::types::labels::mac;
        for (m, account) in &self.clients {
            let client = |part: &str, what: String| format!("client {} {part}: {what}", mac(m));
            if let Some(what) = account.totals.implausible() {
                return Some(client("totals", what));
            }
            if let Some(what) = ranked_implausible(&account.remotes) {
                return Some(client("remotes", what));
            }
            if let Some(what) = ranked_implausible(&account.destinations) {
                return Some(client("destinations", what));
            }
        }
        if let Some((m, what)) =
            self.clients_last.iter().find_map(|(m, t)| Some((m, t.implausible()?)))
        {
            return Some(format!("client {} last kernel read: {what}", mac(m)));
        }
        if let Some(what) = self.last.flows().find_map(|(_, c)| Tally::of(c).implausible()) {
            return Some(format!("a flow's last kernel read: {what}"));
        }
        if self.flow_evictions > MAX_PLAUSIBLE {
            return Some(format!("flow evictions {}", self.flow_evictions));
        }
        let kernel = self.kernel.max_value();
        (kernel > MAX_PLAUSIBLE).then(|| format!("kernel outcome counter {kernel}"))
    }
}

/// The first implausible series of a set (its own or `other`).
fn ranked_implausible<K: Copy + Eq + Hash + Ord>(set: &Ranked<K>) -> Option<String> {
    set.kept()
        .find_map(|(_, kept)| kept.series.exported.implausible())
        .or_else(|| set.other.implausible().map(|what| format!("other: {what}")))
}

impl Serialize for LastRead {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.flows().map(|(k, c)| (FlowKeyBytes::of(k), Tally::of(c))))
    }
}

impl<'de> Deserialize<'de> for LastRead {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let pairs = Vec::<(FlowKeyBytes, Tally)>::deserialize(d)?;
        let flows = pairs
            .into_iter()
            .map(|(k, t)| {
                (
                    k.key(),
                    Counters {
                        packets: t.packets,
                        bytes: t.bytes,
                        first_seen_ns: 0,
                        last_seen_ns: 0,
                    },
                )
            })
            .collect();
        Ok(LastRead { snap: Arc::new(Snapshot::sorted(flows)), ..LastRead::default() })
    }
}

/// A flow key as raw bytes, so that the state file does not depend on the struct's Rust form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
struct FlowKeyBytes(#[serde(with = "hex")] [u8; 44]);

impl FlowKeyBytes {
    fn of(key: &FlowKey) -> FlowKeyBytes {
        let mut b = [0u8; 44];
        b[..16].copy_from_slice(&key.client_ip);
        b[16..32].copy_from_slice(&key.remote_ip);
        b[32..38].copy_from_slice(&key.client_mac);
        b[38..40].copy_from_slice(&key.remote_port.to_be_bytes());
        b[40] = key.protocol;
        FlowKeyBytes(b)
    }

    fn key(&self) -> FlowKey {
        let b = &self.0;
        let mut k = FlowKey::default();
        k.client_ip.copy_from_slice(&b[..16]);
        k.remote_ip.copy_from_slice(&b[16..32]);
        k.client_mac.copy_from_slice(&b[32..38]);
        k.remote_port = u16::from_be_bytes([b[38], b[39]]);
        k.protocol = b[40];
        k
    }
}

/// Reads maps with non-string keys from JSON arrays of pairs (`Pairs` writes them).
mod as_pairs {
    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, M, K, V, D>(d: D) -> Result<M, D::Error>
    where
        M: FromIterator<(K, V)>,
        K: Deserialize<'de>,
        V: Deserialize<'de>,
        D: Deserializer<'de>,
    {
        Ok(Vec::<(K, V)>::deserialize(d)?.into_iter().collect())
    }
}

/// Fixed-size byte arrays as hex strings (compact in JSON, readable in a diff).
mod hex {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer, const N: usize>(b: &[u8; N], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&b.iter().map(|x| format!("{x:02x}")).collect::<String>())
    }

    pub fn deserialize<'de, D: Deserializer<'de>, const N: usize>(
        d: D,
    ) -> Result<[u8; N], D::Error> {
        let text = String::deserialize(d)?;
        if text.len() != 2 * N || !text.is_ascii() {
            return Err(D::Error::custom(format!("expected {} hex digits", 2 * N)));
        }
        let mut out = [0u8; N];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).map_err(D::Error::custom)?;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::{Accounting, RemoteId, Tally};
    use crate::accounting::fixtures::{MAC, PARAMS, counters, key, snap, update};

    #[test]
    fn state_round_trips_through_json() {
        let mut a = Accounting::default();
        update(&mut a, &snap(&[(key(1, 53), counters(2, 200, 1, 100))]), 100, &PARAMS);
        let text = serde_json::to_string(&a).unwrap();
        let mut b: Accounting = serde_json::from_str(&text).unwrap();
        // After a restart the same kernel values add nothing; new ones add only the delta.
        update(&mut b, &snap(&[(key(1, 53), counters(3, 300, 1, 100))]), 105, &PARAMS);
        let r = b.clients[&MAC].remotes.get(&RemoteId::of(&key(1, 53))).unwrap();
        assert_eq!(r.exported, Tally { packets: [3, 1], bytes: [300, 100] });
        assert_eq!(b.clients[&MAC].totals, Tally { packets: [3, 1], bytes: [300, 100] });
    }

    /// After a reboot the maps are new: a client whose new traffic is already more than its
    /// saved kernel values at the first poll must gain all of it (the old baseline would have
    /// swallowed the saved values: 3 packets and 300 + 100 bytes here), and its total must
    /// still equal the sum of its series.
    #[test]
    fn after_a_reboot_all_new_kernel_counts_add_to_the_saved_totals() {
        use crate::kernel::loader::KeptMaps;
        let mut a = Accounting::default();
        update(&mut a, &snap(&[(key(1, 53), counters(3, 300, 1, 100))]), 100, &PARAMS);
        let text = serde_json::to_string(&a).unwrap();
        let mut b: Accounting = serde_json::from_str(&text).unwrap();
        b.kernel_maps_recreated(&KeptMaps::default());
        update(&mut b, &snap(&[(key(1, 53), counters(4, 420, 2, 220))]), 200, &PARAMS);
        let want = Tally { packets: [7, 3], bytes: [720, 320] };
        assert_eq!(b.clients[&MAC].totals, want);
        let r = b.clients[&MAC].remotes.get(&RemoteId::of(&key(1, 53))).unwrap();
        assert_eq!(r.exported, want);
        // With the pins kept (an agent restart), the same read is growth over the saved one.
        let mut c: Accounting = serde_json::from_str(&text).unwrap();
        c.kernel_maps_recreated(&KeptMaps { flows: true, clients: true, stats: true });
        update(&mut c, &snap(&[(key(1, 53), counters(4, 420, 2, 220))]), 200, &PARAMS);
        assert_eq!(c.clients[&MAC].totals, Tally { packets: [4, 2], bytes: [420, 220] });
    }

    /// A state file as this version and the ones before it write it (one client, one remote,
    /// one destination, one flow: no map order to vary). It must keep loading, and be written
    /// back the same, byte for byte.
    const STATE_FILE: &str = concat!(
        r#"{"clients":[[[2,0,0,0,0,1],{"totals":{"packets":[3,1],"bytes":[300,100]},"#,
        r#""remotes":{"entries":[[{"ip":[0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,1],"protocol":17,"#,
        r#""port":53},{"exported":{"packets":[3,1],"bytes":[300,100]},"in_top":true,"#,
        r#""score":383.16229248046875,"last_active":105}]],"#,
        r#""other":{"packets":[0,0],"bytes":[0,0]}},"#,
        r#""destinations":{"entries":[[{"destination":"one.example","country":"ZZ","asn":64500},"#,
        r#"{"exported":{"packets":[3,1],"bytes":[300,100]},"in_top":true,"#,
        r#""score":383.16229248046875,"last_active":105}]],"#,
        r#""other":{"packets":[0,0],"bytes":[0,0]}},"last_seen":105}]],"flow_evictions":0,"#,
        r#""flows_last":[["0000000000000000000000000000000a000000000000000000000000000000010200"#,
        r#"00000001003511000000",{"packets":[3,1],"bytes":[300,100]}]],"#,
        r#""clients_last":[[[2,0,0,0,0,1],{"packets":[3,1],"bytes":[300,100]}]],"last_update":105}"#,
    );

    /// What this version adds at the end: the kernel's outcome counters (none in these
    /// fixtures' snapshots), for five event kinds.
    const KERNEL: &str = concat!(
        r#","kernel":{"stats":[[0,0,0,0,0,0,0,0,0,0,0,0],[0,0,0,0,0,0,0,0,0,0,0,0]],"#,
        r#""events":[[0,0,0],[0,0,0],[0,0,0],[0,0,0],[0,0,0]],"#,
        r#""last_stats":[[0,0,0,0,0,0,0,0,0,0,0,0],[0,0,0,0,0,0,0,0,0,0,0,0]],"#,
        r#""last_events":[[0,0,0],[0,0,0],[0,0,0],[0,0,0],[0,0,0]]}}"#,
    );

    /// The kernel counters as the version before QUIC and TLS segments wrote them (three
    /// event kinds): they load, the new kinds at zero.
    const KERNEL_THREE_KINDS: &str = concat!(
        r#","kernel":{"stats":[[0,0,0,0,0,0,0,0,0,0,0,7],[0,0,0,0,0,0,0,0,0,0,0,0]],"#,
        r#""events":[[1,2,3],[4,5,6],[7,8,9]],"#,
        r#""last_stats":[[0,0,0,0,0,0,0,0,0,0,0,0],[0,0,0,0,0,0,0,0,0,0,0,0]],"#,
        r#""last_events":[[0,0,0],[0,0,0],[0,0,9]]}}"#,
    );

    #[test]
    fn a_state_file_of_earlier_versions_loads_and_is_written_back_the_same() {
        let a: Accounting = serde_json::from_str(STATE_FILE).unwrap();
        let current = format!("{}{KERNEL}", STATE_FILE.strip_suffix('}').unwrap());
        assert_eq!(serde_json::to_string(&a).unwrap(), current);
        // Three event kinds: the counts kept, the new kinds at zero.
        let three = format!("{}{KERNEL_THREE_KINDS}", STATE_FILE.strip_suffix('}').unwrap());
        let t: Accounting = serde_json::from_str(&three).unwrap();
        let written = serde_json::to_string(&t).unwrap();
        assert!(
            written.contains(r#""events":[[1,2,3],[4,5,6],[7,8,9],[0,0,0],[0,0,0]]"#)
                && written.contains(r#""last_events":[[0,0,0],[0,0,0],[0,0,9],[0,0,0],[0,0,0]]"#),
            "{written}"
        );
        // This version's own file loads and is written back the same.
        let b: Accounting = serde_json::from_str(&current).unwrap();
        assert_eq!(serde_json::to_string(&b).unwrap(), current);
        // And it is the file this version writes for the same traffic.
        let mut fresh = Accounting::default();
        update(&mut fresh, &snap(&[(key(1, 53), counters(2, 200, 1, 100))]), 100, &PARAMS);
        update(&mut fresh, &snap(&[(key(1, 53), counters(3, 300, 1, 100))]), 105, &PARAMS);
        assert_eq!(serde_json::to_string(&fresh).unwrap(), current);
    }
}
