//! The kernel side, seen from the agent: loading and attaching the eBPF programs
//! ([`loader`]), reading their maps each poll ([`collector`], [`bpf_batch`]), the naming events
//! they hand up ([`events`]), and the LAN interface itself ([`netif`]). Their failures are one
//! [`KernelError`].

pub mod bpf_batch;
pub mod collector;
mod error;
pub mod events;
pub mod loader;
pub mod netif;

pub use error::KernelError;
