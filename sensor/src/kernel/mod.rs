//! The kernel side, seen from the agent: loading and attaching the eBPF programs
//! ([`loader`]), reading their maps each poll ([`collector`], [`bpf_batch`]), the naming events
//! they hand up ([`events`]), clients' DHCP requests ([`dhcp_socket`]), the client prefixes
//! they read ([`lan_prefixes`]), the LAN interface itself ([`netif`]) and the changes of its
//! addresses ([`addr_watch`]), and the router's flow offloading, which hides packets from them
//! ([`offload`]). Their failures are one [`KernelError`].

pub mod addr_watch;
pub mod bpf_batch;
pub mod collector;
pub mod dhcp_socket;
mod error;
pub mod events;
pub mod lan_prefixes;
pub mod links;
pub mod loader;
pub mod netif;
pub mod offload;

pub use error::KernelError;
