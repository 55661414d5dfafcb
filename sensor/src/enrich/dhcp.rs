//! Device fingerprints from clients' DHCP requests (issue 15): what a DHCPv4 DISCOVER,
//! REQUEST or INFORM, or a DHCPv6 SOLICIT, REQUEST, RENEW, REBIND or INFORMATION-REQUEST says
//! about the device that sent it (host name, vendor class, the options it asks for), and the
//! operating system, device class and maker a small table derives from that.
//!
//! The frames come from [`crate::kernel::dhcp_socket`], sent by any device on the LAN: every
//! read is bounds-checked, and a malformed frame is an error, never a panic. (Decoded here, not
//! with the `dhcproto` crate: its 0.15 decoder panics on such frames, `chaddr()` on a length
//! above 16 and DHCPv6 option lengths below their fixed part, which a mutation test found at
//! once; see `mutated_frames_never_panic`.) A fingerprint is kept per client MAC, bounded, and
//! saved in the state file.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::parse::ParseError;
use crate::types::Mac;

const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = 0x86dd;
const UDP: u8 = 17;
const DHCPV4_SERVER_PORT: u16 = 67;
const DHCPV6_SERVER_PORT: u16 = 547;
/// Longest text kept of a field (host name, vendor class, parameter list): label values stay
/// short, and a client cannot fill the state file.
pub const MAX_FIELD: usize = 128;

/// What one DHCP request says about its sender, as sent (the evidence the identity is derived
/// from, kept so that a newer table re-derives it after a restart).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// DHCPv4 option 12, or the first label of the DHCPv6 client FQDN (option 39).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub hostname: String,
    /// DHCPv4 option 60, or the first data item of the DHCPv6 vendor class (option 16).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub vendor_class: String,
    /// The DHCPv6 vendor class's enterprise number (311 is Microsoft).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enterprise: Option<u32>,
    /// The options asked for, in the client's order: DHCPv4 option 55 (the classic
    /// fingerprint, `1,3,6,15,...`) or the DHCPv6 ORO (option 6).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub parameters: String,
    /// DHCPv4 option 61 or the DHCPv6 client DUID (option 1), in hex.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub client_id: String,
}

/// Which DHCP a request was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V4,
    V6,
}

/// A client's request taken from a frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sighting {
    /// The frame's Ethernet source: the address the kernel counts the client under.
    pub mac: Mac,
    pub version: Version,
    pub request: Request,
    /// The hardware address inside the message (DHCPv4 `chaddr`, the MAC of a DHCPv6 DUID-LL
    /// or DUID-LLT) when it is not the frame's source: a repeater or bridge that rewrites
    /// sources, a DUID made on another interface, or a forged request. The request still
    /// counts for the frame's source.
    pub other_mac: Option<Mac>,
}

/// What a fingerprint says a device is; `None` where it says nothing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Identity {
    /// `android`, `ios`, `macos`, `apple` (iOS or macOS: their requests look alike),
    /// `windows`, `linux`.
    pub os: Option<&'static str>,
    /// `phone`, `tablet`, `computer`, `embedded`.
    pub class: Option<&'static str>,
    /// The maker, e.g. `Xiaomi`.
    pub vendor: Option<&'static str>,
}

impl Identity {
    /// Fills what `self` does not say from `other`.
    fn or(self, other: Identity) -> Identity {
        Identity {
            os: self.os.or(other.os),
            class: self.class.or(other.class),
            vendor: self.vendor.or(other.vendor),
        }
    }
}

/// Takes the client request out of a whole Ethernet frame (untagged IPv4 UDP to port 67, or
/// IPv6 UDP to port 547, as the capture's filter passes them). `Ok(None)` for DHCP that is
/// not a client's request (a relay's, a server's, a DECLINE or RELEASE).
pub fn parse_frame(frame: &[u8]) -> Result<Option<Sighting>, ParseError> {
    let (mac, version, payload) = udp_payload(frame)?;
    let parsed = match version {
        Version::V4 => parse_v4(payload)?,
        Version::V6 => parse_v6(payload)?,
    };
    Ok(parsed.map(|(request, inner)| Sighting {
        mac,
        version,
        request,
        other_mac: inner.filter(|m| *m != mac),
    }))
}

/// The Ethernet source, the IP version and the UDP payload of a frame to a DHCP server port.
fn udp_payload(frame: &[u8]) -> Result<(Mac, Version, &[u8]), ParseError> {
    let malformed = |what: &str| ParseError::Malformed(what.to_string());
    let mut mac = [0u8; 6];
    mac.copy_from_slice(frame.get(6..12).ok_or(ParseError::Truncated)?);
    let ethertype = u16::from_be_bytes([
        *frame.get(12).ok_or(ParseError::Truncated)?,
        *frame.get(13).ok_or(ParseError::Truncated)?,
    ]);
    let ip = frame.get(14..).ok_or(ParseError::Truncated)?;
    let (version, udp, port) = match ethertype {
        ETHERTYPE_IPV4 => {
            let ihl = usize::from(ip.first().ok_or(ParseError::Truncated)? & 0x0f) * 4;
            let header = ip.get(..20).ok_or(ParseError::Truncated)?;
            if ihl < 20 || header[9] != UDP {
                return Err(malformed("not an IPv4 UDP packet"));
            }
            // Fragment offset or more-fragments: DHCP requests are never fragmented.
            if u16::from_be_bytes([header[6], header[7]]) & 0x3fff != 0 {
                return Err(malformed("an IPv4 fragment"));
            }
            (Version::V4, ip.get(ihl..).ok_or(ParseError::Truncated)?, DHCPV4_SERVER_PORT)
        }
        // Next header UDP directly: clients send no extension headers with DHCPv6.
        ETHERTYPE_IPV6 if ip.get(6) == Some(&UDP) => {
            (Version::V6, ip.get(40..).ok_or(ParseError::Truncated)?, DHCPV6_SERVER_PORT)
        }
        _ => return Err(malformed("not an untagged IPv4 or IPv6 UDP packet")),
    };
    let header = udp.get(..8).ok_or(ParseError::Truncated)?;
    if u16::from_be_bytes([header[2], header[3]]) != port {
        return Err(malformed("not to a DHCP server port"));
    }
    let len = usize::from(u16::from_be_bytes([header[4], header[5]]));
    if len < 8 {
        return Err(malformed("UDP length below its header"));
    }
    Ok((mac, version, udp.get(8..len).ok_or(ParseError::Truncated)?))
}

/// Where DHCPv4 options start: after the fixed BOOTP header (236 bytes) and the magic cookie.
const V4_OPTIONS_AT: usize = 240;
const MAGIC_COOKIE: [u8; 4] = [99, 130, 83, 99];

/// A DHCPv4 client request (RFC 2131): its evidence and its `chaddr` (Ethernet only).
fn parse_v4(payload: &[u8]) -> Result<Option<(Request, Option<Mac>)>, ParseError> {
    let header = payload.get(..V4_OPTIONS_AT).ok_or(ParseError::Truncated)?;
    if header[236..] != MAGIC_COOKIE {
        return Err(ParseError::Malformed("no DHCP magic cookie".into()));
    }
    // BOOTREQUEST (a server's reply is not), straight from the client: a relayed one (giaddr
    // set) comes from the relay's address, not the client's.
    if header[0] != 1 || header[24..28] != [0; 4] {
        return Ok(None);
    }
    // Hardware type 1 (Ethernet), 6 bytes long.
    let chaddr =
        (header[1] == 1 && header[2] == 6).then(|| Mac::try_from(&header[28..34]).ok()).flatten();
    let options = v4_options(&payload[V4_OPTIONS_AT..])?;
    let value = |code: u8| options.get(&code).map(Vec::as_slice);
    // DISCOVER, REQUEST or INFORM (DECLINE and RELEASE say nothing new).
    if !matches!(value(53), Some([1 | 3 | 8])) {
        return Ok(None);
    }
    let r = Request {
        hostname: value(12).map(text).unwrap_or_default(),
        vendor_class: value(60).map(text).unwrap_or_default(),
        enterprise: None,
        parameters: value(55).map(|codes| join(codes.iter())).unwrap_or_default(),
        client_id: value(61).map(hex).unwrap_or_default(),
    };
    Ok(Some((r, chaddr)))
}

/// DHCPv4 options by code; a code given more than once is one value, the parts concatenated
/// (RFC 3396). Pad (0) is skipped; End (255), or the end of the packet, ends them.
fn v4_options(mut rest: &[u8]) -> Result<BTreeMap<u8, Vec<u8>>, ParseError> {
    let mut options: BTreeMap<u8, Vec<u8>> = BTreeMap::new();
    while let Some((&code, tail)) = rest.split_first() {
        match code {
            255 => break,
            0 => rest = tail,
            _ => {
                let (&len, tail) = tail.split_first().ok_or(ParseError::Truncated)?;
                let (value, tail) =
                    tail.split_at_checked(usize::from(len)).ok_or(ParseError::Truncated)?;
                options.entry(code).or_default().extend_from_slice(value);
                rest = tail;
            }
        }
    }
    Ok(options)
}

/// A DHCPv6 client message (RFC 8415): its evidence and the MAC in its DUID, if it has one.
fn parse_v6(payload: &[u8]) -> Result<Option<(Request, Option<Mac>)>, ParseError> {
    let (&kind, rest) = payload.split_first().ok_or(ParseError::Truncated)?;
    // SOLICIT, REQUEST, RENEW, REBIND, INFORMATION-REQUEST.
    if !matches!(kind, 1 | 3 | 5 | 6 | 11) {
        return Ok(None);
    }
    // After the transaction id: options, each code (2 bytes), length (2), value.
    let mut rest = rest.get(3..).ok_or(ParseError::Truncated)?;
    let mut r = Request::default();
    let mut duid_mac = None;
    while !rest.is_empty() {
        let (head, tail) = rest.split_at_checked(4).ok_or(ParseError::Truncated)?;
        let code = u16::from_be_bytes([head[0], head[1]]);
        let len = usize::from(u16::from_be_bytes([head[2], head[3]]));
        let (value, tail) = tail.split_at_checked(len).ok_or(ParseError::Truncated)?;
        rest = tail;
        match code {
            1 => {
                r.client_id = hex(value);
                duid_mac = mac_of_duid(value);
            }
            6 => {
                let codes = value.chunks_exact(2).map(|c| u16::from_be_bytes([c[0], c[1]]));
                r.parameters = join(codes);
            }
            // Enterprise number, then data items of a 2-byte length each (RFC 8415 21.16).
            16 => {
                let (num, data) = value
                    .split_first_chunk::<4>()
                    .ok_or_else(|| ParseError::Malformed("vendor class too short".into()))?;
                r.enterprise = Some(u32::from_be_bytes(*num));
                r.vendor_class = data
                    .split_first_chunk::<2>()
                    .and_then(|(len, item)| item.get(..usize::from(u16::from_be_bytes(*len))))
                    .map(text)
                    .unwrap_or_default();
            }
            39 => r.hostname = fqdn_host(value),
            _ => {}
        }
    }
    Ok(Some((r, duid_mac)))
}

/// The Ethernet address in a DUID-LLT (type 1) or DUID-LL (type 3) of hardware type 1.
fn mac_of_duid(duid: &[u8]) -> Option<Mac> {
    let at = match duid.get(..4)? {
        [0, 1, 0, 1] => 8,
        [0, 3, 0, 1] => 4,
        _ => return None,
    };
    (duid.len() == at + 6).then(|| duid.get(at..).and_then(|b| Mac::try_from(b).ok())).flatten()
}

/// The first label of a client FQDN option (RFC 4704: flags, then the name in DNS wire form).
fn fqdn_host(data: &[u8]) -> String {
    let Some(&len) = data.get(1) else { return String::new() };
    data.get(2..2 + usize::from(len)).map(text).unwrap_or_default()
}

/// Printable ASCII of a client's bytes (anything else is `?`), at most [`MAX_FIELD`] long.
fn text(bytes: &[u8]) -> String {
    bytes
        .iter()
        .take(MAX_FIELD)
        .map(|&b| if b.is_ascii_graphic() || b == b' ' { char::from(b) } else { '?' })
        .collect::<String>()
        .trim()
        .to_string()
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    for b in bytes.iter().take(MAX_FIELD / 2) {
        // Writing to a String cannot fail.
        let _ = write!(out, "{b:02x}");
    }
    out
}

fn join<T: std::fmt::Display>(codes: impl Iterator<Item = T>) -> String {
    let mut out = String::new();
    for code in codes {
        let code = code.to_string();
        if out.len() + code.len() + 1 > MAX_FIELD {
            break;
        }
        if !out.is_empty() {
            out.push(',');
        }
        out.push_str(&code);
    }
    out
}

/// The parameter list of Apple's clients (iOS 15+, macOS 12+: option 108, IPv6-only
/// preferred, follows the router): `1,121,3,6,15,108,114,119,252,95,44,46`. Older systems ask
/// the same without 108 or 114; [`classify`] takes all that start with `1,121,3,6,15` and ask
/// for 119 (domain search) and 252 (WPAD), a combination no other common client sends.
const APPLE_PREFIX: &[u8] = &[1, 121, 3, 6, 15];

/// Host names that devices give themselves (and keep unless their owner renames them),
/// matched case-insensitively at the start (`*` at the end) or anywhere (`*` on both sides).
/// The most specific first: the first match per field counts.
const HOSTNAMES: &[(&str, Identity)] = &[
    ("*iphone*", id(Some("ios"), Some("phone"), Some("Apple"))),
    ("*ipad*", id(Some("ios"), Some("tablet"), Some("Apple"))),
    ("*macbook*", id(Some("macos"), Some("computer"), Some("Apple"))),
    // macOS names a Mac `iMac` or `<Owner>s-iMac` (not `*imac*`: `primacy`, `jimac`).
    ("imac*", id(Some("macos"), Some("computer"), Some("Apple"))),
    ("*s-imac*", id(Some("macos"), Some("computer"), Some("Apple"))),
    ("galaxy-tab*", id(None, Some("tablet"), Some("Samsung"))),
    ("galaxy*", id(None, Some("phone"), Some("Samsung"))),
    ("redmi*", id(None, Some("phone"), Some("Xiaomi"))),
    ("xiaomi*", id(None, Some("phone"), Some("Xiaomi"))),
    ("poco*", id(None, Some("phone"), Some("Xiaomi"))),
    // Android before 8 named itself android-<16 hex digits>.
    ("android-*", id(Some("android"), Some("phone"), None)),
    // Not Windows' own `DESKTOP-XXXXXXX`: people name Linux machines `laptop-...` too, and
    // every Windows says `MSFT 5.0` in its vendor class anyway.
];

/// Vendor classes (DHCPv4 option 60, DHCPv6 option 16), matched case-insensitively like
/// [`HOSTNAMES`].
const VENDOR_CLASSES: &[(&str, Identity)] = &[
    // Android 8+ (its own DHCP client): `android-dhcp-<version>`.
    ("android-dhcp-*", id(Some("android"), Some("phone"), None)),
    // Android up to 7 used dhcpcd, and says so in its platform field.
    ("dhcpcd*android*", id(Some("android"), Some("phone"), None)),
    // dhcpcd-<version>:<kernel>:<machine>:<platform> on Linux desktops, Raspberry Pis...
    ("dhcpcd*", id(Some("linux"), None, None)),
    // BusyBox's udhcpc (`udhcp 1.36.1`): routers, cameras, set-top boxes.
    ("udhcp *", id(Some("linux"), Some("embedded"), None)),
    // Every Windows since 2000 (DHCPv4 and DHCPv6).
    ("msft *", id(Some("windows"), Some("computer"), None)),
];

const fn id(
    os: Option<&'static str>,
    class: Option<&'static str>,
    vendor: Option<&'static str>,
) -> Identity {
    Identity { os, class, vendor }
}

/// `*` as any run of characters; case-insensitive (the patterns are lower case).
fn glob(pattern: &str, text: &str) -> bool {
    let text = text.to_ascii_lowercase();
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = text.strip_prefix(first) else { return false };
    let parts: Vec<&str> = parts.collect();
    for (i, part) in parts.iter().enumerate() {
        if i == parts.len() - 1 {
            return rest.ends_with(part);
        }
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.is_empty()
}

fn lookup(table: &[(&str, Identity)], text: &str) -> Identity {
    if text.is_empty() {
        return Identity::default();
    }
    table.iter().filter(|(p, _)| glob(p, text)).fold(Identity::default(), |acc, (_, i)| acc.or(*i))
}

/// What one request says: the host name's entry first (the most specific: `iPhone` beats
/// Apple's parameter list), then the vendor class's, then the parameter list's.
pub fn classify(r: &Request) -> Identity {
    let by_hostname = lookup(HOSTNAMES, &r.hostname);
    let by_class = lookup(VENDOR_CLASSES, &r.vendor_class);
    let codes: Vec<u8> = r.parameters.split(',').filter_map(|c| c.parse().ok()).collect();
    let apple = codes.starts_with(APPLE_PREFIX) && codes.contains(&119) && codes.contains(&252);
    let by_parameters =
        if apple { id(Some("apple"), None, Some("Apple")) } else { id(None, None, None) };
    by_hostname.or(by_class).or(by_parameters)
}

/// The latest requests of one client.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fingerprint {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub v4: Option<Request>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub v6: Option<Request>,
    /// Unix seconds of the latest request.
    pub seen: u64,
}

impl Fingerprint {
    /// DHCPv4's identity first (host name and vendor class are mostly there), DHCPv6's for
    /// what it leaves open.
    pub fn identity(&self) -> Identity {
        let of = |r: &Option<Request>| r.as_ref().map(classify).unwrap_or_default();
        of(&self.v4).or(of(&self.v6))
    }
}

/// One saved fingerprint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedFingerprint {
    pub mac: Mac,
    #[serde(flatten)]
    pub fingerprint: Fingerprint,
}

/// The latest fingerprint per client MAC, at most `capacity` of them (the least recently
/// seen go first).
#[derive(Debug, Clone, Default)]
pub struct Fingerprints {
    by_mac: BTreeMap<Mac, (Fingerprint, Identity)>,
    capacity: usize,
}

impl Fingerprints {
    pub fn new(capacity: usize) -> Fingerprints {
        Fingerprints { by_mac: BTreeMap::new(), capacity }
    }

    /// Takes a request in.
    pub fn learn(&mut self, sighting: Sighting, now: u64) {
        let (fingerprint, identity) = self.by_mac.entry(sighting.mac).or_default();
        match sighting.version {
            Version::V4 => fingerprint.v4 = Some(sighting.request),
            Version::V6 => fingerprint.v6 = Some(sighting.request),
        }
        fingerprint.seen = now;
        *identity = fingerprint.identity();
        self.shrink();
    }

    /// What is known of a client.
    pub fn identity(&self, mac: &Mac) -> Identity {
        self.by_mac.get(mac).map(|(_, i)| *i).unwrap_or_default()
    }

    pub fn fingerprint(&self, mac: &Mac) -> Option<&Fingerprint> {
        self.by_mac.get(mac).map(|(f, _)| f)
    }

    pub fn len(&self) -> usize {
        self.by_mac.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_mac.is_empty()
    }

    /// A new bound (a reload, or the kernel's client slots at start).
    pub fn set_capacity(&mut self, capacity: usize) {
        self.capacity = capacity;
        self.shrink();
    }

    /// For the state file.
    pub fn saved(&self) -> Vec<SavedFingerprint> {
        self.by_mac
            .iter()
            .map(|(mac, (f, _))| SavedFingerprint { mac: *mac, fingerprint: f.clone() })
            .collect()
    }

    /// From the state file: identities derived afresh (by this build's table).
    pub fn restore(&mut self, saved: Vec<SavedFingerprint>) {
        for s in saved {
            let identity = s.fingerprint.identity();
            self.by_mac.insert(s.mac, (s.fingerprint, identity));
        }
        self.shrink();
    }

    /// Forgets the least recently seen beyond the capacity.
    fn shrink(&mut self) {
        let excess = self.by_mac.len().saturating_sub(self.capacity);
        if excess == 0 {
            return;
        }
        let mut by_age: Vec<(u64, Mac)> =
            self.by_mac.iter().map(|(mac, (f, _))| (f.seen, *mac)).collect();
        by_age.sort_unstable();
        for (_, mac) in by_age.into_iter().take(excess) {
            self.by_mac.remove(&mac);
        }
    }
}

#[cfg(test)]
mod tests;
