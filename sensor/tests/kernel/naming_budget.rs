//! The naming budget is shared fairly: one client gets at most half of the events a CPU may
//! send per second, so a device that floods DNS answers (or ClientHellos) cannot keep the
//! others' flows from being named.

use sensor::common::{EventKind, EventOutcome};

use crate::{
    CLIENT_MAC, CLIENT2_MAC, CLIENT4, CLIENT4_B, GW_MAC, REMOTE4,
    frames::udp4,
    harness::{Sensor, require_root},
};

/// 100 events a second and CPU: a client flooding 150 DNS answers has 50 sent (its half) and
/// 100 refused, without taking from the budget; another client's 30 answers all go out.
/// Before, the flood took all 100 and the other client had none.
#[test]
fn a_client_gets_at_most_half_of_the_naming_budget() {
    require_root!();
    // One CPU, so that one per-CPU budget is in play (the test runs take well under the
    // budget's one-second window).
    let mut set = nix::sched::CpuSet::new();
    set.set(0).unwrap();
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set).unwrap();
    let s = Sensor::with_events(100);

    let answer = |mac, ip, port| udp4(GW_MAC, mac, REMOTE4, ip, 53, port, 60);
    for i in 0..150 {
        s.download(&answer(CLIENT_MAC, CLIENT4, 50_000 + i));
    }
    for i in 0..30 {
        s.download(&answer(CLIENT2_MAC, CLIENT4_B, 50_000 + i));
    }
    let snap = s.snapshot();
    assert_eq!(snap.event(EventKind::DnsResponse, EventOutcome::Sent), 50 + 30);
    assert_eq!(snap.event(EventKind::DnsResponse, EventOutcome::RateLimited), 100);
}
