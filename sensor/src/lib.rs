//! The gateway sensor agent. Data flows one way:
//! kernel maps → [`collector`] → [`accounting`] → [`metrics`] ([`exposition`]) / [`server`].
//! [`loader`] puts the eBPF programs in the kernel; [`state`] keeps the accounting across
//! restarts; [`config`] is the YAML configuration. [`alerting`] delivers alerts to Alertmanager.

pub mod accounting;
pub mod agent;
pub mod alerting;
pub mod api;
pub mod bpf_batch;
pub mod collector;
pub mod config;
pub mod enrich;
pub mod events;
pub mod exposition;
pub mod labels;
pub mod loader;
pub mod metrics;
pub mod netif;
pub mod pipeline;
pub mod policy;
pub mod sdnotify;
pub mod server;
pub mod state;

pub use sensor_common as common;
