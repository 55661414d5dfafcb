//! QUIC client Initial datagrams, one flow of up to three, into the assembler.
//!
//! Random bytes do not get past packet authentication, so the first byte chooses: raw datagrams
//! (the header parsing, header protection, the bounds), or the bytes as the *plaintext* payloads
//! of Initials this target seals with the client's keys (the frames, the CRYPTO reassembly and
//! the ClientHello behind them). The next two bytes place the cuts between the datagrams.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rustls::{
    Side,
    crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256,
    quic::{DirectionalKeys, Version},
};
use sensor::enrich::{quic::InitialAssembler, tls::handshake_info};

const DCID: &[u8] = &[0x83, 0x94, 0xc8, 0xf0, 0x3e, 0x51, 0x57, 0x08];

fn client_keys() -> DirectionalKeys {
    let suite = TLS13_AES_128_GCM_SHA256.tls13().and_then(|s| s.quic_suite()).expect("suite");
    suite.keys(DCID, Side::Client, Version::V1).local
}

/// A version 1 Initial carrying `payload` (padded to what header protection needs to sample).
fn seal(keys: &DirectionalKeys, pn: u64, payload: &[u8]) -> Vec<u8> {
    let mut body = payload.to_vec();
    body.resize(body.len().max(4), 0);
    let mut pkt = vec![0xc1, 0, 0, 0, 1, DCID.len() as u8];
    pkt.extend(DCID);
    pkt.extend([0, 0]); // no source connection ID, no token
    pkt.extend((0x4000 | (2 + body.len() + 16) as u16).to_be_bytes());
    let pn_offset = pkt.len();
    pkt.extend((pn as u16).to_be_bytes());
    let tag = keys.packet.encrypt_in_place(pn, &pkt, &mut body).expect("seal");
    pkt.extend(body);
    pkt.extend(tag.as_ref());
    let sample = pkt[pn_offset + 4..pn_offset + 20].to_vec();
    let mut first = pkt[0];
    let mut pn_field = [pkt[pn_offset], pkt[pn_offset + 1]];
    keys.header.encrypt_in_place(&sample, &mut first, &mut pn_field).expect("mask");
    pkt[0] = first;
    pkt[pn_offset..pn_offset + 2].copy_from_slice(&pn_field);
    pkt
}

fuzz_target!(|data: &[u8]| {
    let Some((&[mode, a, b], body)) = data.split_first_chunk::<3>() else {
        return;
    };
    // The bytes alone as a ClientHello handshake message too.
    let _ = handshake_info(body);
    let cut = |x: u8| usize::from(x) * body.len() / 256;
    let (a, b) = (cut(a).min(cut(b)), cut(a).max(cut(b)));
    let parts = [&body[..a], &body[a..b], &body[b..]];
    let keys = client_keys();
    let mut flow = InitialAssembler::new();
    for (pn, part) in parts.iter().enumerate() {
        let datagram = match mode & 1 {
            0 => part.to_vec(),
            _ => seal(&keys, pn as u64, part),
        };
        let got = flow.push(&datagram);
        if let Ok(Some(name)) = &got {
            assert!(!name.is_empty() && name.len() <= 253, "{name:?}");
            assert!(!name.ends_with('.') && *name == name.to_ascii_lowercase(), "{name:?}");
            assert!(name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)));
        }
        if flow.is_finished() {
            assert_eq!(flow.push(&datagram), got, "a finished flow answers the same");
        }
    }
});
