//! The home network the sensor watches:
//!
//! ```text
//!  client c0 ─ eth0 ═══ lan0 ─┐                      (plain: lan0 carries 10.77.1.1)
//!  client c1 ─ eth0 ═══ lan1 ─┴ br-lan  gateway  wan0 ═══ eth0  internet (+ lo: remotes)
//!       10.77.1.10+i         10.77.1.1       10.77.2.1     10.77.2.2
//!       fd77:1::10+i         fd77:1::1       fd77:2::1     fd77:2::2
//! ```
//!
//! The LAN links are made silent so the sensor's counts are exactly the test traffic: no
//! link-local addresses (so no DAD, router solicitations or MLD from fe80::), IPv6 addresses
//! without DAD, and permanent neighbour entries both ways (so no ARP or neighbour discovery).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::{Context as _, bail, ensure};

use crate::{
    cmd::{bridge, ip, run},
    netns::Lab,
};

/// How the gateway's LAN side is built; the agent attaches to [`Gateway::lan_if`] either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LanKind {
    /// One client on a veth pair; `lan0` carries the gateway's LAN addresses (native XDP).
    Veth,
    /// OpenWrt style: bridge `br-lan` carries the addresses, one veth port `lanN` per client.
    Bridge,
}

/// Describes a topology; [`TopologyBuilder::build`] creates it.
pub struct TopologyBuilder {
    prefix: String,
    lan: LanKind,
    clients: Vec<(String, [u8; 6])>,
    remotes: Vec<IpAddr>,
}

/// A LAN host. Addresses are 10.77.1.(10+i) and fd77:1::(10+i) (read as hex) for client i.
#[derive(Debug, Clone)]
pub struct Client {
    pub name: String,
    pub ns: String,
    /// Interface inside the client's namespace (`eth0`).
    pub ifname: String,
    pub mac: [u8; 6],
    pub ipv4: Ipv4Addr,
    pub ipv6: Ipv6Addr,
    /// The gateway-side veth this client is plugged into.
    pub gw_port: String,
}

impl Client {
    /// MAC as the agent labels it: lower-case, colon-separated.
    pub fn mac_text(&self) -> String {
        mac_text(&self.mac)
    }
}

#[derive(Debug, Clone)]
pub struct Gateway {
    pub ns: String,
    /// The interface the agent watches: `lan0` (plain) or `br-lan` (bridge).
    pub lan_if: String,
    pub wan_if: String,
    pub lan_mac: [u8; 6],
    pub lan_ipv4: Ipv4Addr,
    pub lan_ipv6: Ipv6Addr,
    pub wan_ipv4: Ipv4Addr,
    pub wan_ipv6: Ipv6Addr,
}

#[derive(Debug, Clone)]
pub struct Internet {
    pub ns: String,
    pub ifname: String,
    pub ipv4: Ipv4Addr,
    pub ipv6: Ipv6Addr,
    /// Extra addresses on the internet host's loopback, to act as distinct remote servers.
    pub remotes: Vec<IpAddr>,
}

/// A built home network. `lab` owns the namespaces (dropping the topology removes them all);
/// the other fields only describe what was built, for addressing traffic and agent configs.
pub struct Topology {
    pub gateway: Gateway,
    pub internet: Internet,
    pub clients: Vec<Client>,
    pub lab: Lab,
}

const GW_LAN_MAC: [u8; 6] = [0x02, 0x77, 0, 0, 1, 1];
const GW_WAN_MAC: [u8; 6] = [0x02, 0x77, 0, 0, 2, 1];
const INET_MAC: [u8; 6] = [0x02, 0x77, 0, 0, 2, 2];

/// LAN prefixes, as the agent's `lan_prefixes` wants them.
pub const LAN_PREFIXES: [&str; 2] = ["10.77.1.0/24", "fd77:1::/64"];

/// A MAC as the agent labels it: lower-case hex, colon-separated.
pub fn mac_text(m: &[u8; 6]) -> String {
    format!("{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", m[0], m[1], m[2], m[3], m[4], m[5])
}

impl TopologyBuilder {
    /// `prefix` becomes part of every namespace name (see [`Lab::new`]).
    pub fn new(prefix: &str) -> Self {
        TopologyBuilder {
            prefix: prefix.into(),
            lan: LanKind::Veth,
            clients: Vec::new(),
            remotes: Vec::new(),
        }
    }

    pub fn lan(mut self, kind: LanKind) -> Self {
        self.lan = kind;
        self
    }

    /// Adds a client with an explicit MAC (the sensor keys clients by MAC, and the demo wants
    /// recognisable vendor prefixes).
    pub fn client(mut self, name: &str, mac: [u8; 6]) -> Self {
        self.clients.push((name.into(), mac));
        self
    }

    /// Adds a remote server address on the internet host; must be outside the LAN and WAN
    /// subnets, e.g. 10.77.3.x or fd77:3::x (the gateway routes everything to the internet host).
    pub fn remote(mut self, addr: IpAddr) -> Self {
        self.remotes.push(addr);
        self
    }

    pub fn build(self) -> anyhow::Result<Topology> {
        ensure!(!self.clients.is_empty(), "a topology needs at least one client");
        ensure!(
            self.lan == LanKind::Bridge || self.clients.len() == 1,
            "a plain veth LAN has room for exactly one client; use LanKind::Bridge for more"
        );
        ensure!(self.clients.len() <= 200, "at most 200 clients");
        let lab = Lab::new(&self.prefix)?;
        let gw_ns = lab.add_netns("gw")?;
        let inet_ns = lab.add_netns("inet")?;
        let mut client_ns = Vec::new();
        for i in 0..self.clients.len() {
            client_ns.push(lab.add_netns(&format!("c{i}"))?);
        }
        for ns in std::iter::once(&gw_ns).chain([&inet_ns]).chain(&client_ns) {
            quiet_ipv6_defaults(ns, ns == &gw_ns)?;
        }

        let gateway = Gateway {
            ns: gw_ns.clone(),
            lan_if: match self.lan {
                LanKind::Veth => "lan0".into(),
                LanKind::Bridge => "br-lan".into(),
            },
            wan_if: "wan0".into(),
            lan_mac: GW_LAN_MAC,
            lan_ipv4: Ipv4Addr::new(10, 77, 1, 1),
            lan_ipv6: "fd77:1::1".parse()?,
            wan_ipv4: Ipv4Addr::new(10, 77, 2, 1),
            wan_ipv6: "fd77:2::1".parse()?,
        };
        let internet = Internet {
            ns: inet_ns.clone(),
            ifname: "eth0".into(),
            ipv4: Ipv4Addr::new(10, 77, 2, 2),
            ipv6: "fd77:2::2".parse()?,
            remotes: self.remotes.clone(),
        };

        // WAN: gateway wan0 <-> internet eth0.
        let (gw_wan_mac, inet_mac) = (mac_text(&GW_WAN_MAC), mac_text(&INET_MAC));
        ip(&[
            "-n",
            &gw_ns,
            "link",
            "add",
            "wan0",
            "address",
            &gw_wan_mac,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "address",
            &inet_mac,
            "netns",
            &inet_ns,
        ])?;
        link_up(&gw_ns, "wan0")?;
        link_up(&inet_ns, "eth0")?;
        add_addrs(&gw_ns, "wan0", "10.77.2.1/24", "fd77:2::1/64")?;
        add_addrs(&inet_ns, "eth0", "10.77.2.2/24", "fd77:2::2/64")?;
        neigh(&gw_ns, "wan0", &internet.ipv4.into(), &inet_mac)?;
        neigh(&gw_ns, "wan0", &internet.ipv6.into(), &inet_mac)?;
        neigh(&inet_ns, "eth0", &gateway.wan_ipv4.into(), &gw_wan_mac)?;
        neigh(&inet_ns, "eth0", &gateway.wan_ipv6.into(), &gw_wan_mac)?;
        ip(&["-n", &gw_ns, "route", "add", "default", "via", "10.77.2.2", "dev", "wan0"])?;
        ip(&["-n", &gw_ns, "-6", "route", "add", "default", "via", "fd77:2::2", "dev", "wan0"])?;
        ip(&["-n", &inet_ns, "route", "add", "10.77.1.0/24", "via", "10.77.2.1", "dev", "eth0"])?;
        ip(&[
            "-n",
            &inet_ns,
            "-6",
            "route",
            "add",
            "fd77:1::/64",
            "via",
            "fd77:2::1",
            "dev",
            "eth0",
        ])?;
        for r in &self.remotes {
            ensure!(
                !in_subnet(r, "10.77.1.")
                    && !in_subnet(r, "10.77.2.")
                    && !in_subnet(r, "fd77:1:")
                    && !in_subnet(r, "fd77:2:"),
                "remote {r} overlaps the LAN or WAN subnet"
            );
            let cidr = match r {
                IpAddr::V4(a) => format!("{a}/32"),
                IpAddr::V6(a) => format!("{a}/128"),
            };
            let mut args = vec!["-n", &inet_ns, "addr", "add", &cidr, "dev", "lo"];
            if r.is_ipv6() {
                args.push("nodad");
            }
            ip(&args)?;
        }

        // LAN.
        let gw_lan_mac = mac_text(&GW_LAN_MAC);
        if self.lan == LanKind::Bridge {
            ip(&["-n", &gw_ns, "link", "add", "br-lan", "address", &gw_lan_mac, "type", "bridge"])?;
        }
        let mut clients = Vec::new();
        for (i, ((name, mac), ns)) in self.clients.iter().zip(&client_ns).enumerate() {
            let port = format!("lan{i}");
            let cmac = mac_text(mac);
            let port_mac = match self.lan {
                LanKind::Veth => gw_lan_mac.clone(),
                LanKind::Bridge => mac_text(&[0x02, 0x77, 0, 1, 0, i as u8]),
            };
            ip(&[
                "-n", &gw_ns, "link", "add", &port, "address", &port_mac, "type", "veth", "peer",
                "name", "eth0", "address", &cmac, "netns", ns,
            ])?;
            if self.lan == LanKind::Bridge {
                ip(&["-n", &gw_ns, "link", "set", &port, "master", "br-lan"])?;
                bridge(&["-n", &gw_ns, "fdb", "replace", &cmac, "dev", &port, "master", "static"])?;
            }
            link_up(&gw_ns, &port)?;
            link_up(ns, "eth0")?;
            let host = 10 + i as u8;
            let c = Client {
                name: name.clone(),
                ns: ns.clone(),
                ifname: "eth0".into(),
                mac: *mac,
                ipv4: Ipv4Addr::new(10, 77, 1, host),
                ipv6: format!("fd77:1::{host}").parse()?,
                gw_port: port,
            };
            add_addrs(ns, "eth0", &format!("{}/24", c.ipv4), &format!("{}/64", c.ipv6))?;
            ip(&["-n", ns, "route", "add", "default", "via", "10.77.1.1", "dev", "eth0"])?;
            ip(&["-n", ns, "-6", "route", "add", "default", "via", "fd77:1::1", "dev", "eth0"])?;
            neigh(ns, "eth0", &gateway.lan_ipv4.into(), &gw_lan_mac)?;
            neigh(ns, "eth0", &gateway.lan_ipv6.into(), &gw_lan_mac)?;
            clients.push(c);
        }
        if self.lan == LanKind::Bridge {
            link_up(&gw_ns, "br-lan")?;
        }
        add_addrs(&gw_ns, &gateway.lan_if, "10.77.1.1/24", "fd77:1::1/64")?;
        for c in &clients {
            neigh(&gw_ns, &gateway.lan_if, &c.ipv4.into(), &c.mac_text())?;
            neigh(&gw_ns, &gateway.lan_if, &c.ipv6.into(), &c.mac_text())?;
        }
        let topo = Topology { gateway, internet, clients, lab };
        topo.check_quiet().context("the lab's LAN is not silent")?;
        topo.settle()?;
        Ok(topo)
    }
}

fn in_subnet(a: &IpAddr, text_prefix: &str) -> bool {
    a.to_string().starts_with(text_prefix)
}

/// Namespace-wide defaults, set before any interface exists there so every interface
/// created in or moved into the namespace inherits them.
fn quiet_ipv6_defaults(ns: &str, router: bool) -> anyhow::Result<()> {
    let mut kv = vec![
        // 1 = none: no link-local address, hence no DAD/RS/MLD from fe80::.
        "net.ipv6.conf.default.addr_gen_mode=1",
        "net.ipv6.conf.all.accept_ra=0",
        "net.ipv6.conf.default.accept_ra=0",
        "net.ipv6.conf.all.router_solicitations=0",
        "net.ipv6.conf.default.router_solicitations=0",
        "net.ipv6.conf.all.accept_dad=0",
        "net.ipv6.conf.default.accept_dad=0",
        // Addresses still join solicited-node groups, reported from "::" (not a client address,
        // but still frames): have the unsolicited repeats go out at once, while building.
        "net.ipv6.conf.default.mldv1_unsolicited_report_interval=1",
        "net.ipv6.conf.default.mldv2_unsolicited_report_interval=1",
        // Inherited from the host for IPv4; strict reverse-path filtering has no place here.
        "net.ipv4.conf.all.rp_filter=0",
        "net.ipv4.conf.default.rp_filter=0",
    ];
    if router {
        kv.extend(["net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"]);
    }
    let mut args = vec!["netns", "exec", ns, "sysctl", "-q", "-w"];
    args.extend(kv);
    ip(&args)?;
    Ok(())
}

/// `addrgenmode none` must precede `up`, or the kernel has already made a link-local address.
fn link_up(ns: &str, ifname: &str) -> anyhow::Result<()> {
    ip(&["-n", ns, "link", "set", "dev", ifname, "addrgenmode", "none"])?;
    let conf = format!("net.ipv6.conf.{}", ifname.replace('.', "/"));
    run(
        "ip",
        &[
            "netns",
            "exec",
            ns,
            "sysctl",
            "-q",
            "-w",
            &format!("{conf}.accept_ra=0"),
            &format!("{conf}.router_solicitations=0"),
        ],
    )?;
    ip(&["-n", ns, "link", "set", "dev", ifname, "up"])?;
    Ok(())
}

fn add_addrs(ns: &str, ifname: &str, v4: &str, v6: &str) -> anyhow::Result<()> {
    ip(&["-n", ns, "addr", "add", v4, "dev", ifname])?;
    ip(&["-n", ns, "-6", "addr", "add", v6, "dev", ifname, "nodad"])?;
    Ok(())
}

fn neigh(ns: &str, ifname: &str, addr: &IpAddr, mac: &str) -> anyhow::Result<()> {
    ip(&[
        "-n",
        ns,
        "neigh",
        "replace",
        &addr.to_string(),
        "lladdr",
        mac,
        "dev",
        ifname,
        "nud",
        "permanent",
    ])?;
    Ok(())
}

impl Topology {
    /// Client `name`; panics on an unknown name (a typo in a test).
    pub fn client(&self, name: &str) -> &Client {
        self.clients
            .iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("no client named {name}"))
    }

    /// Renumbers the LAN's IPv6 as an ISP's new delegation does: the gateway's LAN address
    /// leaves its /64 (deleted) for host ::1 of `prefix` (a /64, e.g. fd77:5::), each client
    /// moves to host ::(10+i) of it, with the default route and permanent neighbours both
    /// ways as [`TopologyBuilder::build`] made them; the internet host routes the new /64 to
    /// the gateway. Renumbers from the addresses built, once; the fields stay as built (a
    /// running agent borrows the topology). Returns the clients' new addresses, in order.
    pub fn renumber_lan_ipv6(&self, prefix: Ipv6Addr) -> anyhow::Result<Vec<Ipv6Addr>> {
        let net = prefix.segments();
        let host = |h: u16| Ipv6Addr::new(net[0], net[1], net[2], net[3], 0, 0, 0, h);
        let (gw_ns, lan_if) = (self.gateway.ns.clone(), self.gateway.lan_if.clone());
        let new_gw = host(1);
        let via = self.gateway.wan_ipv6.to_string();
        let dst = format!("{prefix}/64");
        ip(&["-n", &self.internet.ns, "-6", "route", "add", &dst, "via", &via, "dev", "eth0"])?;
        let old = format!("{}/64", self.gateway.lan_ipv6);
        ip(&["-n", &gw_ns, "-6", "addr", "del", &old, "dev", &lan_if])?;
        let new = format!("{new_gw}/64");
        ip(&["-n", &gw_ns, "-6", "addr", "add", &new, "dev", &lan_if, "nodad"])?;
        let gw_mac = mac_text(&self.gateway.lan_mac);
        let mut moved = Vec::new();
        for (i, c) in self.clients.iter().enumerate() {
            let addr = host(0x10 + i as u16);
            let (ns, dev) = (c.ns.as_str(), c.ifname.as_str());
            ip(&["-n", ns, "-6", "addr", "del", &format!("{}/64", c.ipv6), "dev", dev])?;
            ip(&["-n", ns, "-6", "addr", "add", &format!("{addr}/64"), "dev", dev, "nodad"])?;
            let gw = new_gw.to_string();
            ip(&["-n", ns, "-6", "route", "replace", "default", "via", &gw, "dev", dev])?;
            neigh(ns, dev, &new_gw.into(), &gw_mac)?;
            neigh(&gw_ns, &lan_if, &addr.into(), &c.mac_text())?;
            moved.push(addr);
        }
        Ok(moved)
    }

    /// See [`crate::in_netns`].
    pub fn in_netns<T: Send, F: FnOnce() -> T + Send>(&self, ns: &str, f: F) -> anyhow::Result<T> {
        self.lab.in_netns(ns, f)
    }

    /// Waits until no frame has crossed any LAN link for a while, so whatever the kernel sent
    /// while the links came up is over before the sensor starts.
    fn settle(&self) -> anyhow::Result<()> {
        let links: Vec<(&str, &str)> =
            self.clients.iter().map(|c| (c.ns.as_str(), c.ifname.as_str())).collect();
        let snapshot = || -> anyhow::Result<Vec<String>> {
            links
                .iter()
                .map(|(ns, ifname)| ip(&["-n", ns, "-s", "-j", "link", "show", "dev", ifname]))
                .collect()
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let mut last = snapshot()?;
        loop {
            std::thread::sleep(std::time::Duration::from_millis(300));
            let now = snapshot()?;
            if now == last {
                return Ok(());
            }
            if std::time::Instant::now() > deadline {
                bail!("LAN links still carry frames 5 s after setup");
            }
            last = now;
        }
    }

    /// Verifies the silence the exact counts rely on: no link-local or tentative addresses on
    /// any LAN interface.
    pub fn check_quiet(&self) -> anyhow::Result<()> {
        let mut lan: Vec<(&str, &str)> =
            self.clients.iter().map(|c| (c.ns.as_str(), c.ifname.as_str())).collect();
        lan.push((&self.gateway.ns, &self.gateway.lan_if));
        for c in &self.clients {
            lan.push((&self.gateway.ns, &c.gw_port));
        }
        for (ns, ifname) in lan {
            let out = ip(&["-n", ns, "-6", "addr", "show", "dev", ifname])?;
            if out.contains("fe80:") || out.contains("tentative") {
                bail!("{ns}/{ifname} has a link-local or tentative address:\n{out}");
            }
        }
        Ok(())
    }
}
