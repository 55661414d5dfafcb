//! Requests as real clients send them, built byte by byte (BOOTP header, options; DHCPv6
//! options), framed by etherparse, and the exact identity each gives.

use super::*;

const PHONE: Mac = [0x6a, 0x1f, 0x33, 0x10, 0x20, 0x30];
const OTHER: Mac = [0x02, 0x00, 0x00, 0x00, 0x00, 0x99];

/// A DHCPv4 message: BOOTREQUEST, Ethernet `chaddr`, the magic cookie, `options` (code,
/// value) after option 53 (`kind`), then END.
fn v4_message(kind: u8, chaddr: Mac, options: &[(u8, &[u8])]) -> Vec<u8> {
    let mut m = vec![1, 1, 6, 0]; // op, htype, hlen, hops
    m.extend_from_slice(&0x1234_5678u32.to_be_bytes()); // xid
    m.extend_from_slice(&[0; 4]); // secs, flags
    m.extend_from_slice(&[0; 16]); // ciaddr, yiaddr, siaddr, giaddr
    m.extend_from_slice(&chaddr);
    m.extend_from_slice(&[0; 10 + 64 + 128]); // chaddr padding, sname, file
    m.extend_from_slice(&[99, 130, 83, 99]);
    m.extend_from_slice(&[53, 1, kind]);
    for (code, value) in options {
        m.push(*code);
        m.push(value.len() as u8);
        m.extend_from_slice(value);
    }
    m.push(255);
    m
}

fn v4_frame(src: Mac, message: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    etherparse::PacketBuilder::ethernet2(src, [0xff; 6])
        .ipv4([0, 0, 0, 0], [255, 255, 255, 255], 64)
        .udp(68, 67)
        .write(&mut out, message)
        .unwrap();
    out
}

/// A DHCPv6 message of `kind` with these options (code, value).
fn v6_message(kind: u8, options: &[(u16, &[u8])]) -> Vec<u8> {
    let mut m = vec![kind, 0xab, 0xcd, 0xef];
    for (code, value) in options {
        m.extend_from_slice(&code.to_be_bytes());
        m.extend_from_slice(&(value.len() as u16).to_be_bytes());
        m.extend_from_slice(value);
    }
    m
}

fn v6_frame(src: Mac, message: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let from = [0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0x68, 0x1f, 0x33, 0xff, 0xfe, 0x10, 0x20, 0x30];
    let to = [0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 2];
    etherparse::PacketBuilder::ethernet2(src, [0x33, 0x33, 0, 1, 0, 2])
        .ipv6(from, to, 1)
        .udp(546, 547)
        .write(&mut out, message)
        .unwrap();
    out
}

/// Android 13's DISCOVER (its own client since Android 8), from a private MAC.
fn android_discover() -> Vec<u8> {
    v4_message(
        1,
        PHONE,
        &[
            (61, &[1, 0x6a, 0x1f, 0x33, 0x10, 0x20, 0x30]),
            (57, &[0x05, 0xdc]),
            (60, b"android-dhcp-13"),
            (12, b"Redmi-Note-12"),
            (55, &[1, 3, 6, 15, 26, 28, 51, 58, 59, 43, 114, 108]),
        ],
    )
}

fn parsed(frame: &[u8]) -> Sighting {
    parse_frame(frame).unwrap().expect("a client request")
}

#[test]
fn an_android_phone_on_a_private_mac() {
    let s = parsed(&v4_frame(PHONE, &android_discover()));
    assert_eq!(s.mac, PHONE);
    assert_eq!(s.version, Version::V4);
    assert_eq!(s.other_mac, None);
    assert_eq!(
        s.request,
        Request {
            hostname: "Redmi-Note-12".into(),
            vendor_class: "android-dhcp-13".into(),
            enterprise: None,
            parameters: "1,3,6,15,26,28,51,58,59,43,114,108".into(),
            client_id: "016a1f33102030".into(),
        }
    );
    assert_eq!(
        classify(&s.request),
        Identity { os: Some("android"), class: Some("phone"), vendor: Some("Xiaomi") }
    );
}

#[test]
fn apple_windows_and_linux_requests() {
    let identity = |options: &[(u8, &[u8])]| {
        classify(&parsed(&v4_frame(PHONE, &v4_message(3, PHONE, options))).request)
    };
    // iOS 17's REQUEST: no vendor class; Apple's parameter list and the default host name.
    let apple_list: &[u8] = &[1, 121, 3, 6, 15, 108, 114, 119, 252, 95, 44, 46];
    assert_eq!(
        identity(&[(55, apple_list), (12, b"iPhone")]),
        Identity { os: Some("ios"), class: Some("phone"), vendor: Some("Apple") }
    );
    // A Mac renamed by its owner: the list alone says Apple, not which.
    assert_eq!(
        identity(&[(55, apple_list), (12, b"studio")]),
        Identity { os: Some("apple"), class: None, vendor: Some("Apple") }
    );
    // macOS 11's list (no 108, no 114) is a close variant.
    assert_eq!(
        identity(&[(55, &[1, 121, 3, 6, 15, 119, 252, 95, 44, 46])]),
        Identity { os: Some("apple"), class: None, vendor: Some("Apple") }
    );
    // Windows 11.
    assert_eq!(
        identity(&[
            (60, b"MSFT 5.0"),
            (12, b"DESKTOP-4T2K9QF"),
            (55, &[1, 3, 6, 15, 31, 33, 43, 44, 46, 47, 119, 121, 249, 252]),
        ]),
        Identity { os: Some("windows"), class: Some("computer"), vendor: None }
    );
    // A Raspberry Pi (dhcpcd), an old Android (dhcpcd, platform says so), a camera (udhcpc).
    assert_eq!(
        identity(&[(60, b"dhcpcd-9.4.1:Linux-6.1.21-v8+:aarch64:BCM2835")]),
        Identity { os: Some("linux"), class: None, vendor: None }
    );
    assert_eq!(
        identity(&[(60, b"dhcpcd-5.5.6:Linux-3.4.67:armv7l:Android"), (12, b"Galaxy-S5")]),
        Identity { os: Some("android"), class: Some("phone"), vendor: Some("Samsung") }
    );
    assert_eq!(
        identity(&[(60, b"udhcp 1.36.1"), (12, b"ipcam")]),
        Identity { os: Some("linux"), class: Some("embedded"), vendor: None }
    );
    // macOS by its default host name; a name that only contains "imac" says nothing.
    assert_eq!(
        identity(&[(12, b"Annas-iMac")]),
        Identity { os: Some("macos"), class: Some("computer"), vendor: Some("Apple") }
    );
    assert_eq!(identity(&[(12, b"primacy")]), Identity::default());
    // A Windows-like host name without Windows' vendor class is not taken for Windows.
    assert_eq!(identity(&[(12, b"LAPTOP-ALICE"), (60, b"dhcpcd-10.0.6")]).os, Some("linux"));
    // Nothing known: nothing said.
    assert_eq!(identity(&[(12, b"workstation"), (55, &[1, 3, 6])]), Identity::default());
}

#[test]
fn dhcpv6_solicit_vendor_class_fqdn_and_oro() {
    // Windows 11's SOLICIT: DUID-LLT, FQDN, vendor class (enterprise 311, "MSFT 5.0"), ORO.
    let duid = [0, 1, 0, 1, 0x2c, 0x1d, 0x3e, 0x4f, 0x6a, 0x1f, 0x33, 0x10, 0x20, 0x30];
    let mut vendor = 311u32.to_be_bytes().to_vec();
    vendor.extend_from_slice(&[0, 8]);
    vendor.extend_from_slice(b"MSFT 5.0");
    let fqdn = [&[0u8, 15][..], b"DESKTOP-4T2K9QF", &[0]].concat();
    let oro = [0u8, 17, 0, 23, 0, 24, 0, 32];
    let message = v6_message(
        1,
        &[(8, &[0, 0]), (1, &duid), (3, &[0; 12]), (39, &fqdn), (16, &vendor), (6, &oro)],
    );
    let s = parsed(&v6_frame(PHONE, &message));
    assert_eq!((s.mac, s.version, s.other_mac), (PHONE, Version::V6, None));
    assert_eq!(
        s.request,
        Request {
            hostname: "DESKTOP-4T2K9QF".into(),
            vendor_class: "MSFT 5.0".into(),
            enterprise: Some(311),
            parameters: "17,23,24,32".into(),
            client_id: "000100012c1d3e4f6a1f33102030".into(),
        }
    );
    assert_eq!(
        classify(&s.request),
        Identity { os: Some("windows"), class: Some("computer"), vendor: None }
    );
    // A DUID made on another interface: still the frame's source, the other MAC noted.
    let s = parsed(&v6_frame(OTHER, &message));
    assert_eq!((s.mac, s.other_mac), (OTHER, Some(PHONE)));
    // An ADVERTISE (a server's) is not a client's request.
    assert_eq!(parse_frame(&v6_frame(PHONE, &v6_message(2, &[(1, &duid)]))).unwrap(), None);
}

#[test]
fn the_frame_source_counts_and_a_different_chaddr_is_noted() {
    let s = parsed(&v4_frame(OTHER, &android_discover()));
    assert_eq!((s.mac, s.other_mac), (OTHER, Some(PHONE)));
}

#[test]
fn other_dhcp_and_broken_frames() {
    // A RELEASE (7) and an OFFER-like BOOTREPLY are no requests.
    assert_eq!(parse_frame(&v4_frame(PHONE, &v4_message(7, PHONE, &[]))).unwrap(), None);
    let mut reply = v4_message(2, PHONE, &[]);
    reply[0] = 2;
    assert_eq!(parse_frame(&v4_frame(PHONE, &reply)).unwrap(), None);
    // Relayed (giaddr set): the frame's source is the relay.
    let mut relayed = android_discover();
    relayed[24..28].copy_from_slice(&[10, 77, 1, 1]);
    assert_eq!(parse_frame(&v4_frame(OTHER, &relayed)).unwrap(), None);
    // Cut anywhere: an error or nothing, never a panic.
    let frame = v4_frame(PHONE, &android_discover());
    for len in 0..frame.len() {
        let _ = parse_frame(&frame[..len]);
    }
    assert_eq!(parse_frame(&frame[..20]), Err(ParseError::Truncated));
    // What made dhcproto 0.15 panic: a hardware address length above 16 (taken as no
    // chaddr), a DHCPv6 vendor class shorter than its enterprise number.
    let mut long_hlen = android_discover();
    long_hlen[2] = 217;
    let s = parsed(&v4_frame(OTHER, &long_hlen));
    assert_eq!((s.mac, s.other_mac), (OTHER, None));
    let short_vendor = v6_message(1, &[(16, &[0, 0])]);
    assert!(matches!(parse_frame(&v6_frame(PHONE, &short_vendor)), Err(ParseError::Malformed(_))));
    // An option that claims more than the packet holds.
    let cut = v6_message(1, &[(39, &[0, 5, b'h'])]);
    let mut cut_frame = v6_frame(PHONE, &cut);
    let at = cut_frame.len() - 3 - 2;
    cut_frame[at..at + 2].copy_from_slice(&9u16.to_be_bytes());
    assert_eq!(parse_frame(&cut_frame), Err(ParseError::Truncated));
    // Not to the server port.
    let mut to_client = frame.clone();
    to_client[14 + 20 + 3] = 68;
    assert!(matches!(parse_frame(&to_client), Err(ParseError::Malformed(_))));
}

#[test]
fn unprintable_bytes_are_replaced_and_fields_are_bounded() {
    let long = vec![b'a'; 200];
    let s = parsed(&v4_frame(
        PHONE,
        &v4_message(1, PHONE, &[(60, b"android-dhcp-\x0714"), (12, &long)]),
    ));
    assert_eq!(s.request.vendor_class, "android-dhcp-?14");
    assert_eq!(s.request.hostname.len(), MAX_FIELD);
}

#[test]
fn the_latest_per_mac_bounded_and_saved() {
    let mut f = Fingerprints::new(2);
    let sighting = |mac: Mac, version, hostname: &str, vendor_class: &str| Sighting {
        mac,
        version,
        request: Request {
            hostname: hostname.into(),
            vendor_class: vendor_class.into(),
            ..Request::default()
        },
        other_mac: None,
    };
    f.learn(sighting(PHONE, Version::V4, "Redmi-Note-12", "android-dhcp-13"), 10);
    f.learn(sighting(PHONE, Version::V6, "", "MSFT 5.0"), 11);
    // DHCPv4 first; DHCPv6 only for what it leaves open (nothing here).
    assert_eq!(
        f.identity(&PHONE),
        Identity { os: Some("android"), class: Some("phone"), vendor: Some("Xiaomi") }
    );
    f.learn(sighting(OTHER, Version::V4, "iPad", ""), 12);
    f.learn(sighting([2, 0, 0, 0, 0, 3], Version::V4, "", "udhcp 1.36.1"), 13);
    assert_eq!(f.len(), 2);
    assert_eq!(f.identity(&PHONE), Identity::default(), "the least recently seen went");
    assert_eq!(f.identity(&OTHER).class, Some("tablet"));

    let json = serde_json::to_string(&f.saved()).unwrap();
    let mut back = Fingerprints::new(10);
    back.restore(serde_json::from_str(&json).unwrap());
    assert_eq!(back.len(), 2);
    assert_eq!(back.identity(&OTHER), f.identity(&OTHER));
    assert_eq!(back.fingerprint(&OTHER), f.fingerprint(&OTHER));
}

#[test]
fn globs() {
    assert!(glob("android-dhcp-*", "Android-DHCP-13"));
    assert!(glob("*iphone*", "annas-iphone"));
    assert!(glob("dhcpcd*android*", "dhcpcd-5.5.6:linux:armv7l:android"));
    assert!(!glob("dhcpcd*android*", "dhcpcd-9.4.1:Linux:aarch64:BCM2835"));
    assert!(glob("udhcp *", "udhcp 1.36.1"));
    assert!(!glob("udhcp *", "udhcpc"));
    assert!(glob("galaxy*", "Galaxy"));
}

/// The frames come from any device on the LAN: mutated requests (bytes flipped, options cut,
/// lengths lied about) give an error or a request, never a panic, and a request's fields stay
/// within their bounds. Seeded, so a failure repeats.
#[test]
fn mutated_frames_never_panic() {
    let mut rng = fastrand::Rng::with_seed(15);
    let duid = [0, 3, 0, 1, 0x6a, 0x1f, 0x33, 0x10, 0x20, 0x30];
    let vendor = [&311u32.to_be_bytes()[..], &[0, 8], b"MSFT 5.0"].concat();
    let fqdn = [&[0u8, 5][..], b"host1", &[0]].concat();
    let originals = [
        v4_frame(PHONE, &android_discover()),
        v6_frame(PHONE, &v6_message(1, &[(1, &duid), (16, &vendor), (39, &fqdn), (6, &[0, 23])])),
    ];
    for _ in 0..50_000 {
        let mut f = originals[rng.usize(..originals.len())].clone();
        for _ in 0..rng.usize(1..8) {
            if f.len() <= 15 {
                break;
            }
            let at = rng.usize(14..f.len());
            match rng.u8(..3) {
                0 => f[at] = rng.u8(..),
                1 => f.truncate(at),
                _ => f.insert(at, rng.u8(..)),
            }
        }
        if let Ok(Some(s)) = parse_frame(&f) {
            let r = &s.request;
            assert!(r.hostname.len() <= MAX_FIELD && r.vendor_class.len() <= MAX_FIELD);
            assert!(r.parameters.len() <= MAX_FIELD && r.client_id.len() <= MAX_FIELD);
            let _ = classify(r);
        }
    }
}

/// The fuzz target's seeds (fuzz/seeds/dhcp_frame/) are the requests they claim to be.
#[test]
fn the_fuzz_seeds_are_real_requests() {
    let android = include_bytes!("../../../../fuzz/seeds/dhcp_frame/android_discover.bin");
    let windows = include_bytes!("../../../../fuzz/seeds/dhcp_frame/windows_solicit.bin");
    assert_eq!(
        classify(&parsed(android).request),
        Identity { os: Some("android"), class: Some("phone"), vendor: Some("Xiaomi") }
    );
    assert_eq!(
        classify(&parsed(windows).request),
        Identity { os: Some("windows"), class: Some("computer"), vendor: None }
    );
}
