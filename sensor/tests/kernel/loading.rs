//! Loading: with and without kernel BTF, with naming events on, and the baseline program.

use aya::programs::TestRunOptions;
use sensor::{
    common::{Direction, EventKind, EventOutcome, Stat, names},
    kernel::loader::install_capture,
};

use crate::{
    CLIENT_MAC, CLIENT4, GW_MAC, IPPROTO_TCP, IPPROTO_UDP, REMOTE4, XDP_PASS,
    expect::{check, down, key, up},
    frames::{tcp4, udp4},
    harness::{Sensor, require_root},
};

#[test]
fn loads_without_and_with_kernel_btf() {
    require_root!();
    for kernel_btf in [false, true] {
        let mut s = Sensor::with_btf(kernel_btf)
            .unwrap_or_else(|e| panic!("load with kernel_btf={kernel_btf}: {e:#}"));
        // The event capture program the XDP program tail-calls (the agent loads it first).
        install_capture(&mut s.ebpf)
            .unwrap_or_else(|e| panic!("capture program, kernel_btf={kernel_btf}: {e:#}"));
        let f = udp4(CLIENT_MAC, GW_MAC, CLIENT4, REMOTE4, 40000, 53, 32);
        s.upload(&f);
        check(
            &s.snapshot(),
            &[(key(CLIENT_MAC, CLIENT4, REMOTE4, IPPROTO_UDP, 53), up(&[&f]))],
            &[(CLIENT_MAC, up(&[&f]))],
            &[(Direction::Upload, Stat::Seen, 1), (Direction::Upload, Stat::Counted, 1)],
        );
    }
}

/// With naming events on, the event paths are live (with them off, the verifier prunes them as
/// dead code): both programs and the capture program must load, and events must go out.
#[test]
fn loads_and_sends_events_with_naming_events_on() {
    require_root!();
    let s = Sensor::with_events(100);

    // A DNS answer to a client (TC) and an HTTP request from it (XDP, through the tail call).
    let dns = udp4(GW_MAC, CLIENT_MAC, REMOTE4, CLIENT4, 53, 51000, 60);
    let mut http = tcp4(CLIENT_MAC, GW_MAC, CLIENT4, REMOTE4, 40000, 80, 0);
    http.extend_from_slice(b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n");
    s.download(&dns);
    s.upload(&http);
    let snap = s.snapshot();
    assert_eq!(snap.event(EventKind::DnsResponse, EventOutcome::Sent), 1);
    assert_eq!(snap.event(EventKind::HttpRequest, EventOutcome::Sent), 1);
    // A packet that raises an event is counted like any other, in the stats too: XDP's tail
    // call to the capture program does not return, so its outcome must be counted before it.
    check(
        &snap,
        &[
            (key(CLIENT_MAC, CLIENT4, REMOTE4, IPPROTO_UDP, 53), down(&[&dns])),
            (key(CLIENT_MAC, CLIENT4, REMOTE4, IPPROTO_TCP, 80), up(&[&http])),
        ],
        &[(CLIENT_MAC, up(&[&http]) + down(&[&dns]))],
        &[
            (Direction::Upload, Stat::Seen, 1),
            (Direction::Upload, Stat::Counted, 1),
            (Direction::Download, Stat::Seen, 1),
            (Direction::Download, Stat::Counted, 1),
        ],
    );
}

#[test]
fn baseline_program_passes_and_counts_nothing() {
    require_root!();
    let s = Sensor::new();
    let f = udp4(CLIENT_MAC, GW_MAC, CLIENT4, REMOTE4, 40000, 53, 32);
    let r = s
        .xdp_run(
            names::XDP_PASS_PROGRAM,
            TestRunOptions { data_in: Some(&f), repeat: 1, ..Default::default() },
        )
        .unwrap();
    assert_eq!(r.return_value, XDP_PASS);
    check(&s.snapshot(), &[], &[], &[]);
}
