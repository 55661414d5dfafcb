//! What can go wrong in enrichment: the inventory's devices (each message names the entry and
//! what to write), the OUI registry files (which file, which line), and the DHCP lease files,
//! which are only ever warnings (a lease file may appear later; its old leases are kept).
//! GeoIP databases only warn and have no variant. The wire parsers' outcome is
//! `enrich::parse::ParseError`, a metric label rather than an error to show.
//!
//! The messages are whole on their own (`{}`): they become the config checker's located
//! message, the startup or SIGHUP refusal in the log, and the enrichment warnings. So each
//! variant writes its cause (an OS error, the problem of a line) into its message and exposes
//! no `source()`, which would print it twice under `{:#}`.

use std::{io, path::PathBuf};

use crate::types::{Mac, labels};

#[derive(Debug, thiserror::Error)]
pub enum EnrichError {
    // The devices of the inventory, by their index in `inventory.devices`.
    #[error(
        "inventory.devices[{index}] ({name:?}): {mac:?} is not a MAC address; write six bytes in \
         hex, e.g. mac: \"aa:bb:cc:dd:ee:ff\""
    )]
    DeviceMac { index: usize, name: String, mac: String },
    #[error(
        "inventory.devices[{index}] ({name:?}) has the same MAC {} as inventory.devices[{first}] \
         ({first_name:?}); list each device once",
        labels::mac(mac)
    )]
    DuplicateDevice { index: usize, name: String, mac: Mac, first: usize, first_name: String },
    #[error(
        "inventory.devices[{index}] ({}) has an empty name; give it one, e.g. name: living-room-tv",
        labels::mac(mac)
    )]
    DeviceName { index: usize, mac: Mac },
    /// `suggestion`: the key made into a label name.
    #[error(
        "inventory.devices[{index}] ({name:?}): tag key {key:?} is not a Prometheus label name; \
         use letters, digits and underscores, not starting with a digit or `__` (e.g. \
         {suggestion})"
    )]
    TagKey { index: usize, name: String, key: String, suggestion: String },

    // OUI registry files.
    #[error("cannot read OUI database {}: {error}", path.display())]
    OuiRead { path: PathBuf, error: io::Error },
    /// `problem` is one of the line problems below.
    #[error("{}:{line}: {problem}", path.display())]
    OuiLine { path: PathBuf, line: usize, problem: Box<EnrichError> },
    /// A file the user listed in `inventory.oui_databases` (not one of the defaults).
    #[error("{0} (check inventory.oui_databases)")]
    OuiConfigured(Box<EnrichError>),

    // What is wrong in one line of an OUI registry file (inside `OuiLine`).
    #[error(
        "not an OUI registry file: expected the IEEE's oui.csv/mam.csv/oui36.csv (header \
         `Registry,Assignment,Organization Name,Organization Address`), oui.txt (`XX-XX-XX   \
         (hex)  Organization` lines) or Wireshark's manuf (`00:00:0C<TAB>Cisco<TAB>Cisco \
         Systems, Inc` lines)"
    )]
    OuiFormat,
    #[error("expected `Registry,Assignment,Organization Name,...`, found {found} field(s)")]
    CsvFields { found: usize },
    #[error("quoted field never closed")]
    CsvQuote,
    #[error("`{text}` is not a MAC prefix (6, 7 or 9 hex digits)")]
    IeeePrefix { text: String },
    #[error("`{text}` is not an OUI (expected XX-XX-XX)")]
    IeeeOui { text: String },
    /// `oui_line`: the line of the `(hex)` entry the range belongs to.
    #[error("`{range}` is not a range of the OUI at line {oui_line}")]
    IeeeRange { range: String, oui_line: usize },
    #[error("`{text}` is not a MAC prefix (expected e.g. 00:00:0C or 00:1B:C5:00:00:00/36)")]
    ManufPrefix { text: String },
    /// The name store indexes with `u32`.
    #[error("more than 4 GiB of organization names")]
    OuiNames,

    // DHCP lease files: warnings.
    #[error(
        "DHCP leases file {} does not exist (yet): device names from it will appear once the \
         DHCP server writes it",
        path.display()
    )]
    LeasesMissing { path: PathBuf },
    #[error("cannot read DHCP leases file {}: {error}", path.display())]
    LeasesRead { path: PathBuf, error: io::Error },
    /// `formats`: the formats known, as `LeaseFormat::names` lists them.
    #[error(
        "{} is not a {formats} leases file: no device names from it (the leases read before are \
         kept)",
        path.display()
    )]
    LeasesFormat { path: PathBuf, formats: String },
    #[error("{}: {count} malformed lease line(s) skipped (first at line {first})", path.display())]
    LeasesMalformed { path: PathBuf, count: usize, first: usize },
}
