//! What leaves the agent: Prometheus metrics ([`metrics`], the per-scrape traffic text of
//! [`exposition`]), the JSON API's view ([`api`]) and the HTTP server for both ([`server`]),
//! each on a listener of its own with optional TLS and authentication ([`web`]).

pub mod api;
pub mod continued;
pub mod error;
pub mod exposition;
pub mod metrics;
pub mod server;
pub mod web;

/// Prefix of every metric the agent exports.
pub const NAMESPACE: &str = "gwsensor";

/// A metric family the agent can export: its full name and type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FamilyDoc {
    pub name: String,
    /// `counter`, `gauge` or `histogram`, as in the exposition's `# TYPE` line.
    pub kind: &'static str,
}
