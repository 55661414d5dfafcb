//! What can be wrong in a policy file, one enum for the whole area. A bad value is reported
//! through serde_yaml, which locates it; an error about a rule as a whole is located at the
//! rule's name and given a hint by `Policy::parse`. Either way the user sees a
//! `LocatedError` (path:line:column, message, hint).

use crate::types::mac::MacError;

/// An error in the policy, worded for the person who wrote it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    // Values (values.rs, schedule.rs): the text as written, and what a good one looks like.
    #[error("invalid glob `{text}`: {reason}")]
    Glob { text: String, reason: String },
    #[error("empty domain")]
    EmptyDomain,
    #[error("`{0}` is not a domain (write e.g. xiaomi.net or *.micloud.com)")]
    Domain(String),
    #[error("`{0}` is not a CIDR (write e.g. 203.0.113.0/24, 2001:db8::/32 or 198.51.100.7)")]
    Cidr(String),
    #[error("unknown country code `{0}` (ISO 3166-1 alpha-2, e.g. CN, US, DE)")]
    Country(String),
    #[error("`{0}` is not an AS number (write e.g. 4808 or AS4808)")]
    Asn(String),
    #[error("`{0}` is not a port or port range (write e.g. 443 or 8000-8100)")]
    PortRange(String),
    #[error("unknown protocol `{0}` (one of tcp, udp, icmp, icmpv6)")]
    Protocol(String),
    #[error(transparent)]
    Mac(#[from] MacError),
    #[error("`{0}` is not a size (write e.g. 5MB, 500kB, 1.5GB or 5MiB)")]
    Size(String),
    #[error("`{0}` is not a label name (letters, digits and _, not starting with a digit)")]
    LabelName(String),
    #[error("label `{0}` is set by the sensor itself; choose another name")]
    ReservedLabel(String),
    #[error("unknown time zone `{0}` (an IANA name such as Europe/Berlin or UTC)")]
    TimeZone(String),
    #[error("`{0}` is not a day (mon, tue, wed, thu, fri, sat, sun)")]
    Day(String),
    #[error("`{0}` is not a time of day (write HH:MM, e.g. 22:00)")]
    TimeOfDay(String),

    // Templates (template.rs).
    #[error("`{{{{` without `}}}}` in template `{0}`")]
    UnclosedPlaceholder(String),
    #[error("unknown placeholder `{{{{ {field} }}}}`; known: {known}")]
    UnknownPlaceholder { field: String, known: String },

    // A rule's condition (condition.rs).
    #[error("the condition is empty")]
    NoCondition,
    #[error("a rule has exactly one condition; write a second rule for the other")]
    TwoConditions,
    #[error("the condition's window is shorter than 1s")]
    ShortWindow,
    #[error("`volume.above` is 0")]
    VolumeZero,
    #[error("`rate` needs exactly one of bytes_per_second and packets_per_second")]
    RateThreshold,

    // A rule, or the policy, as a whole (mod.rs); exceptions are numbered from 1.
    #[error("exception {0} names no client and no destination")]
    EmptyException(usize),
    #[error("the schedule has no windows")]
    EmptySchedule,
    #[error("global exception {0} names no client and no destination")]
    EmptyGlobalException(usize),
    #[error("two rules are named `{0}`")]
    DuplicateRule(String),
}
