//! The kernel's word that an address was added or removed (any interface), so that prefixes
//! derived from the interface follow it (a rotated IPv6 delegation).
//!
//! A plain `NETLINK_ROUTE` socket joined to the address groups, read through tokio's `AsyncFd`:
//! the messages are not parsed, only taken as "something changed", and the interface's
//! addresses re-read with `getifaddrs` ([`super::netif::prefixes`]), the one reading the agent
//! already trusts at start. A netlink crate (`rtnetlink`, `neli`) would bring a message model
//! and a runtime glue this does not need.

use std::os::fd::{AsRawFd as _, OwnedFd};

use nix::{
    errno::Errno,
    sys::socket::{
        AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, bind, recv, socket,
    },
};
use tokio::io::{Interest, unix::AsyncFd};

use super::error::KernelError;

/// A subscription to address changes (IPv4 and IPv6) of every interface.
pub struct AddressWatch {
    fd: AsyncFd<OwnedFd>,
    buf: Vec<u8>,
}

impl AddressWatch {
    /// Subscribes. Open it before reading the addresses: a change in between is then seen.
    pub fn open() -> Result<AddressWatch, KernelError> {
        let err = |e: Errno| KernelError::WatchAddresses { source: e.into() };
        let fd = socket(
            AddressFamily::Netlink,
            SockType::Raw,
            SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkRoute,
        )
        .map_err(err)?;
        let groups = (libc::RTMGRP_IPV4_IFADDR | libc::RTMGRP_IPV6_IFADDR) as u32;
        bind(fd.as_raw_fd(), &NetlinkAddr::new(0, groups)).map_err(err)?;
        // SAFETY: the OwnedFd is the socket's only owner, and the AsyncFd owns it from here on.
        let fd = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }
            .map_err(|e| KernelError::WatchAddresses { source: e.into() })?;
        Ok(AddressWatch { fd, buf: vec![0; 16 * 1024] })
    }

    /// Waits for one or more address changes, and takes every message queued. Cancel-safe
    /// (the reads do not wait): for a `select!` loop.
    pub async fn changed(&mut self) -> Result<(), KernelError> {
        loop {
            let mut ready = self
                .fd
                .readable()
                .await
                .map_err(|source| KernelError::WatchAddresses { source })?;
            let mut any = false;
            loop {
                match recv(ready.get_inner().as_raw_fd(), &mut self.buf, MsgFlags::MSG_DONTWAIT) {
                    Ok(_) => any = true,
                    Err(Errno::EAGAIN) => {
                        ready.clear_ready();
                        break;
                    }
                    // The socket's buffer overflowed: changes were lost, and the re-read that
                    // follows covers them all.
                    Err(Errno::ENOBUFS) => any = true,
                    Err(Errno::EINTR) => {}
                    Err(e) => return Err(KernelError::WatchAddresses { source: e.into() }),
                }
            }
            if any {
                return Ok(());
            }
        }
    }
}
