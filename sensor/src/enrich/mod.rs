//! Enrichment: names what the collector counted. Devices (inventory, DHCP leases, OUI vendor),
//! destinations (DNS answers, TLS SNI, HTTP Host), networks (country, ASN) and registrable
//! domains.

pub mod dns;
pub mod domain;
pub mod geo;
pub mod http;
pub mod inventory;
pub mod names;
pub mod oui;
pub mod tls;
