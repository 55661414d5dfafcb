//! How finely destinations are told apart: chosen in the config, used by the enrichment (what
//! a destination is called) and the policy (what `new_destination` learns).

use serde::Deserialize;

/// What a destination is at this level.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DestinationLevel {
    /// Registrable domain (`xiaomi.net`), else the IP.
    #[default]
    Domain,
    /// The full name (`api.micloud.xiaomi.net`), else the IP.
    Fqdn,
    Ip,
    /// `AS4808`, else the IP.
    Asn,
    /// ISO country code, else the IP.
    Country,
}
