//! Naming events from the kernel: the start of DNS answers to clients, and of TLS ClientHellos
//! and HTTP requests from clients, read from the `EVENTS` ring buffer.

use std::mem::size_of;

use aya::maps::{MapData, RingBuf};
use sensor_common::{Direction, EVENT_DATA_MAX, Event, EventKind, FlowKey};
use tokio::{io::unix::AsyncFd, sync::mpsc};
use tracing::warn;

use super::error::KernelError;

/// One event, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observation {
    pub kind: EventKind,
    pub key: FlowKey,
    pub direction: Direction,
    /// L4 payload length in the packet; `data` may hold less.
    pub payload_len: u32,
    pub data: Vec<u8>,
    pub ktime_ns: u64,
    /// A TCP segment's sequence number (0 for UDP).
    pub seq: u32,
    /// Where `data` starts in the payload (a later chunk of a long one).
    pub chunk_off: u16,
}

/// Decodes a ring-buffer record; `None` for a record that is not a well-formed event.
pub fn decode(record: &[u8]) -> Option<Observation> {
    if record.len() < size_of::<Event>() {
        return None;
    }
    // SAFETY: the record holds at least size_of::<Event>() bytes; Event is plain old data,
    // read unaligned because ring-buffer records are only 8-byte aligned by convention.
    let ev: Event = unsafe { std::ptr::read_unaligned(record.as_ptr().cast()) };
    let captured = usize::from(ev.captured);
    if captured > EVENT_DATA_MAX {
        return None;
    }
    Some(Observation {
        kind: EventKind::from_u8(ev.kind)?,
        key: ev.key,
        direction: if ev.direction == 0 { Direction::Upload } else { Direction::Download },
        payload_len: ev.payload_len,
        data: ev.data[..captured].to_vec(),
        ktime_ns: ev.ktime_ns,
        seq: ev.seq,
        chunk_off: ev.chunk_off,
    })
}

/// Reads the ring buffer as it fills and hands decoded events on. Events that the consumer is
/// too slow for are dropped here (and counted by the caller through `dropped`), never queued
/// without bound.
pub fn spawn_reader(
    ring: RingBuf<MapData>,
    tx: mpsc::Sender<Observation>,
    on_drop: impl Fn() + Send + 'static,
) -> Result<tokio::task::JoinHandle<()>, KernelError> {
    // SAFETY: the ring buffer owns its map fd and keeps it open while it lives; the AsyncFd
    // owns the ring buffer.
    let mut fd = unsafe { AsyncFd::register(ring) }
        .map_err(|e| KernelError::WatchEvents { source: e.into() })?;
    Ok(tokio::spawn(async move {
        loop {
            let mut guard = match fd.readable_mut().await {
                Ok(guard) => guard,
                Err(e) => {
                    warn!("events ring buffer: {e}; naming from DNS/SNI stops");
                    return;
                }
            };
            let ring = guard.get_inner_mut();
            while let Some(record) = ring.next() {
                match decode(&record) {
                    Some(obs) => {
                        if tx.try_send(obs).is_err() {
                            on_drop();
                        }
                    }
                    None => on_drop(),
                }
            }
            guard.clear_ready();
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(kind: u8, captured: u16, data: &[u8]) -> Vec<u8> {
        let mut ev = Event {
            key: FlowKey { remote_port: 53, protocol: 17, ..FlowKey::default() },
            kind,
            direction: 1,
            captured,
            payload_len: 99,
            ktime_ns: 7,
            seq: 0,
            chunk_off: 0,
            _pad: 0,
            data: [0; EVENT_DATA_MAX],
        };
        ev.data[..data.len()].copy_from_slice(data);
        // SAFETY: Event is plain old data.
        unsafe {
            std::slice::from_raw_parts((&ev as *const Event).cast::<u8>(), size_of::<Event>())
        }
        .to_vec()
    }

    #[test]
    fn decodes_a_record() {
        let obs = decode(&record(0, 3, b"abc")).unwrap();
        assert_eq!(obs.kind, EventKind::DnsResponse);
        assert_eq!(obs.direction, Direction::Download);
        assert_eq!(obs.data, b"abc");
        assert_eq!(obs.payload_len, 99);
        assert_eq!(obs.key.remote_port, 53);
    }

    #[test]
    fn rejects_malformed_records() {
        assert_eq!(decode(&record(0, 3, b"abc")[..100]), None);
        assert_eq!(decode(&record(9, 3, b"abc")), None);
        assert_eq!(decode(&record(0, EVENT_DATA_MAX as u16 + 1, b"")), None);
    }
}
