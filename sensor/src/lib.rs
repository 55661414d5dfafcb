//! The gateway sensor agent. Data flows one way, one folder a stage:
//! [`kernel`] (load the programs, read their maps) → [`accounting`] (deltas into counters that
//! only grow) → [`enrich`] (names for devices and destinations) → [`policy`] (rules, alerts) →
//! [`export`] (/metrics, the JSON API) and [`alerting`] (Alertmanager). [`agent`] runs the
//! stages on a schedule and keeps their state across restarts; [`config`] is the YAML
//! configuration every stage gets its part of. [`types`] holds what several stages share.
//! See docs/design.md.

pub mod accounting;
pub mod agent;
pub mod alerting;
pub mod config;
pub mod enrich;
pub mod export;
pub mod kernel;
pub mod policy;
pub mod types;

pub use sensor_common as common;
