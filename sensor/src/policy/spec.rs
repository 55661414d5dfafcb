//! The policy file as written (docs/policy.md): rules, matches, conditions, exceptions.

use std::{collections::BTreeMap, time::Duration};

use serde::Deserialize;

use super::{
    condition::ConditionSpec,
    schedule::Schedule,
    template::Template,
    values::{
        Asn, Cidr, Country, DomainPattern, GroupBy, LabelName, MacAddr, OneOrMany, Pattern,
        PortRange, Protocol,
    },
};

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PolicySpec {
    /// What counts as the household's own DNS, for `dns_bypass`.
    #[serde(default)]
    pub dns: DnsSpec,
    /// Traffic matching any of these never counts for any rule.
    #[serde(default)]
    pub exceptions: Vec<MatchSpec>,
    #[serde(default)]
    pub rules: Vec<RuleSpec>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DnsSpec {
    /// The resolvers clients should use (the router's upstreams, a Pi-hole...). DNS to the
    /// router itself never leaves the LAN and is not seen as a flow.
    #[serde(default)]
    pub resolvers: OneOrMany<Cidr>,
    /// DNS-over-HTTPS names beyond the built-in list.
    #[serde(default)]
    pub doh_domains: OneOrMany<DomainPattern>,
    /// DNS-over-HTTPS addresses beyond the built-in list.
    #[serde(default)]
    pub doh_addresses: OneOrMany<Cidr>,
}

/// Which clients and which destinations; a rule's `match`, and every exception.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MatchSpec {
    /// Any of these (each one's fields must all match); none = every client.
    #[serde(default)]
    pub client: OneOrMany<ClientMatch>,
    /// Any of these (each one's fields must all match); none = every destination.
    #[serde(default)]
    pub destination: OneOrMany<DestinationMatch>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClientMatch {
    /// `any: true` matches every client (the same as leaving `client` out).
    #[serde(default)]
    pub any: bool,
    #[serde(default)]
    pub name: OneOrMany<Pattern>,
    #[serde(default)]
    pub group: OneOrMany<Pattern>,
    #[serde(default)]
    pub mac: OneOrMany<MacAddr>,
    /// The inventory's vendor, the OUI registry's or the DHCP fingerprint's hint: any of them.
    #[serde(default)]
    pub vendor: OneOrMany<Pattern>,
    /// The inventory's `os`, else the DHCP fingerprint's (`android`, `ios`, `windows`...).
    #[serde(default)]
    pub os: OneOrMany<Pattern>,
    /// The inventory's `device_class`, else the DHCP fingerprint's (`phone`, `computer`...).
    #[serde(default)]
    pub device_class: OneOrMany<Pattern>,
    /// Inventory tags: every key given must have one of its values.
    #[serde(default)]
    pub tag: BTreeMap<String, OneOrMany<Pattern>>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Private, link-local, loopback and unique-local addresses.
    Local,
    /// Everything else (the internet).
    Remote,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DestinationMatch {
    #[serde(default)]
    pub any: bool,
    #[serde(default)]
    pub cidr: OneOrMany<Cidr>,
    #[serde(default)]
    pub country: OneOrMany<Country>,
    #[serde(default)]
    pub asn: OneOrMany<Asn>,
    /// `xiaomi.net` (the domain and below) or a glob (`*.micloud.*`), matched against the name
    /// the client used (TLS SNI, HTTP Host, DNS).
    #[serde(default)]
    pub domain: OneOrMany<DomainPattern>,
    #[serde(default)]
    pub port: OneOrMany<PortRange>,
    #[serde(default)]
    pub protocol: OneOrMany<Protocol>,
    #[serde(default)]
    pub scope: Option<Scope>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    /// The alert's `alertname`.
    pub name: LabelName,
    #[serde(default, rename = "match")]
    pub matches: MatchSpec,
    pub condition: ConditionSpec,
    /// How long the condition must hold before the alert fires.
    #[serde(default, rename = "for", with = "humantime_serde")]
    pub for_: Duration,
    #[serde(default = "default_severity")]
    pub severity: String,
    #[serde(default)]
    pub labels: BTreeMap<LabelName, String>,
    #[serde(default)]
    pub summary: Option<Template>,
    #[serde(default)]
    pub description: Option<Template>,
    #[serde(default)]
    pub group_by: Option<GroupBy>,
    /// Only traffic inside these time windows counts.
    #[serde(default)]
    pub schedule: Option<Schedule>,
    /// Traffic matching any of these does not count for this rule.
    #[serde(default)]
    pub except: Vec<MatchSpec>,
}

fn default_severity() -> String {
    "warning".into()
}
