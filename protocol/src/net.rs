//! **Ours:** the pod network the guest configures, `core.net.configure`.
//!
//! The host reads the pod's interface in its network namespace (the veth CNI made: MAC, MTU,
//! addresses, routes, permanent neighbours), redirects its traffic to a TAP the VMM serves as a
//! virtio-net device with the same MAC, and sends this description; agentd finds the interface
//! by MAC and applies it with netlink. The guest's `eth0` then looks to the pod's processes as
//! the veth looked to a runc container (docs/NETWORK.md).

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// `core.net.configure` (host -> guest, session start): configure these interfaces. Answered
/// with `core.net.configured`, or `core.net.failed` naming the step that failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct NetConfigure {
    /// The interfaces, each found by its MAC.
    pub interfaces: Vec<NetInterface>,
}

/// One guest interface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetInterface {
    /// The name to give it in the guest (`eth0`, the pod interface's name on the host).
    pub name: String,
    /// Its MAC address: how the guest finds the virtio-net device the host made for it.
    pub mac: [u8; 6],
    /// Its MTU.
    pub mtu: u32,
    /// Addresses, in the order the host listed them.
    #[serde(default)]
    pub addresses: Vec<NetAddress>,
    /// Routes through it. agentd adds those without a gateway first (a gateway must be
    /// reachable when its route is added), then the others, each group in this order.
    #[serde(default)]
    pub routes: Vec<NetRoute>,
    /// Permanent neighbour entries (static ARP/NDP, e.g. a CNI's fixed gateway MAC).
    #[serde(default)]
    pub neighbours: Vec<NetNeighbour>,
}

/// An address with its prefix length (`10.1.0.5/24`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetAddress {
    /// The address.
    pub address: IpAddr,
    /// The prefix length.
    pub prefix_len: u8,
}

/// A route of the main table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetRoute {
    /// The destination network; a prefix length of 0 is the default route.
    pub destination: NetAddress,
    /// The next hop; `None` for a link (on-link) route.
    #[serde(default)]
    pub gateway: Option<IpAddr>,
    /// The route's own MTU (`ip route ... mtu N`), when it has one.
    #[serde(default)]
    pub mtu: Option<u32>,
    /// The preferred source address, when the route names one.
    #[serde(default)]
    pub source: Option<IpAddr>,
}

/// A permanent neighbour entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetNeighbour {
    /// The neighbour's IP address.
    pub address: IpAddr,
    /// Its link-layer address.
    pub mac: [u8; 6],
}

/// `core.net.configured` (guest -> host, terminal): every interface is configured.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct NetConfigured {}

/// `core.net.failed` (guest -> host, terminal): configuring failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetFailed {
    /// What failed, naming the interface and the step.
    pub message: String,
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}
