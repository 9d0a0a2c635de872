//! The pod network in the guest (`core.net.configure`): each interface the host describes is
//! found by its MAC (the virtio-net device the VMM made for the pod's TAP), renamed to the pod
//! interface's name, given its MTU, brought up, and given its addresses, permanent neighbours
//! and routes: link routes first, then those through a gateway (the gateway must be reachable
//! when its route goes in).
//!
//! Plain rtnetlink requests on a blocking netlink socket (agentd has no async runtime); no `ip`
//! binary is involved. `lo` is up since boot ([`crate::sys::loopback_up`]).

use std::net::IpAddr;
use std::time::{Duration, Instant};

use msb_protocol::net::{format_mac, NetConfigure, NetInterface, NetRoute};
use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL,
    NLM_F_REPLACE, NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteMetric, RouteProtocol,
    RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

/// How long the interface may take to appear (the virtio-net driver probes at boot).
const FIND_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the network could not be configured.
#[derive(Debug, thiserror::Error)]
pub enum NetConfigError {
    /// The netlink socket failed.
    #[error("netlink socket: {0}")]
    Socket(#[source] std::io::Error),
    /// The kernel refused a request.
    #[error("{what}: {source}")]
    Kernel {
        /// The request.
        what: String,
        /// errno.
        #[source]
        source: std::io::Error,
    },
    /// No interface has the MAC.
    #[error("no interface with MAC {0} (is virtio_net loaded?)")]
    NoInterface(String),
    /// A reply did not decode.
    #[error("netlink reply: {0}")]
    Decode(String),
}

/// A blocking rtnetlink socket.
struct Rtnl {
    socket: Socket,
    seq: u32,
}

impl Rtnl {
    fn open() -> Result<Rtnl, NetConfigError> {
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(NetConfigError::Socket)?;
        socket.bind_auto().map_err(NetConfigError::Socket)?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .map_err(NetConfigError::Socket)?;
        Ok(Rtnl { socket, seq: 0 })
    }

    /// Sends one request and collects its replies up to the ack (or the end of a dump).
    fn request(
        &mut self,
        what: &str,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<Vec<RouteNetlinkMessage>, NetConfigError> {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
        header.sequence_number = self.seq;
        let mut req = NetlinkMessage::new(header, NetlinkPayload::from(msg));
        req.finalize();
        let mut buf = vec![0u8; req.buffer_len()];
        req.serialize(&mut buf);
        self.socket.send(&buf, 0).map_err(|e| kernel(what, e))?;
        let mut out = Vec::new();
        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        loop {
            let (data, _) = self.socket.recv_from_full().map_err(|e| kernel(what, e))?;
            let mut offset = 0;
            while offset < data.len() {
                let m = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&data[offset..])
                    .map_err(|e| NetConfigError::Decode(format!("{what}: {e}")))?;
                let len = usize::try_from(m.header.length).unwrap_or(0);
                if len == 0 {
                    return Err(NetConfigError::Decode(format!("{what}: empty message")));
                }
                offset += len;
                if m.header.sequence_number != self.seq {
                    continue;
                }
                match m.payload {
                    NetlinkPayload::Done(_) => return Ok(out),
                    NetlinkPayload::Error(e) => match e.code {
                        None => return Ok(out),
                        Some(code) => {
                            return Err(kernel(
                                what,
                                std::io::Error::from_raw_os_error(-code.get()),
                            ))
                        }
                    },
                    NetlinkPayload::InnerMessage(inner) => {
                        out.push(inner);
                        if !dump && flags & NLM_F_ACK == 0 {
                            return Ok(out);
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    /// A request whose object may exist already (an address or route the kernel also made).
    fn create(&mut self, what: &str, msg: RouteNetlinkMessage) -> Result<(), NetConfigError> {
        match self.request(what, msg, NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL) {
            Err(NetConfigError::Kernel { source, .. })
                if source.raw_os_error() == Some(libc::EEXIST) =>
            {
                Ok(())
            }
            other => other.map(drop),
        }
    }
}

fn kernel(what: &str, source: std::io::Error) -> NetConfigError {
    NetConfigError::Kernel {
        what: what.to_owned(),
        source,
    }
}

/// Applies `cfg`.
pub fn configure(cfg: &NetConfigure) -> Result<(), NetConfigError> {
    let mut rtnl = Rtnl::open()?;
    for iface in &cfg.interfaces {
        configure_one(&mut rtnl, iface)?;
    }
    Ok(())
}

/// The index and name of the link with `mac`, waiting up to [`FIND_TIMEOUT`] for it.
fn find_by_mac(rtnl: &mut Rtnl, mac: &[u8; 6]) -> Result<(u32, String), NetConfigError> {
    let deadline = Instant::now() + FIND_TIMEOUT;
    loop {
        let links = rtnl.request(
            "list links",
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
            NLM_F_DUMP,
        )?;
        for l in links {
            let RouteNetlinkMessage::NewLink(l) = l else {
                continue;
            };
            let has_mac = l
                .attributes
                .iter()
                .any(|a| matches!(a, LinkAttribute::Address(m) if m.as_slice() == mac));
            if has_mac {
                let name = l
                    .attributes
                    .iter()
                    .find_map(|a| match a {
                        LinkAttribute::IfName(n) => Some(n.clone()),
                        _ => None,
                    })
                    .unwrap_or_default();
                return Ok((l.header.index, name));
            }
        }
        if Instant::now() > deadline {
            return Err(NetConfigError::NoInterface(format_mac(mac)));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn configure_one(rtnl: &mut Rtnl, iface: &NetInterface) -> Result<(), NetConfigError> {
    let (index, current) = find_by_mac(rtnl, &iface.mac)?;
    let name = &iface.name;
    // Renamed while down (a rename of an up link fails with EBUSY); a name taken by another
    // link keeps the kernel's name: the addresses and routes matter, not the name.
    if !name.is_empty() && *name != current {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.attributes.push(LinkAttribute::IfName(name.clone()));
        if let Err(e) = rtnl.request(
            &format!("rename {current} to {name}"),
            RouteNetlinkMessage::SetLink(m),
            NLM_F_ACK,
        ) {
            tracing::warn!("{e}; keeping {current}");
        }
    }
    let mut m = LinkMessage::default();
    m.header.index = index;
    m.header.flags = LinkFlags::Up;
    m.header.change_mask = LinkFlags::Up;
    m.attributes.push(LinkAttribute::Mtu(iface.mtu));
    rtnl.request(
        &format!("set {name} up with MTU {}", iface.mtu),
        RouteNetlinkMessage::SetLink(m),
        NLM_F_ACK,
    )?;
    for a in &iface.addresses {
        let mut m = AddressMessage::default();
        m.header.family = AddressFamily::from(a.address);
        m.header.prefix_len = a.prefix_len;
        m.header.index = index;
        m.attributes.push(AddressAttribute::Address(a.address));
        if a.address.is_ipv4() {
            m.attributes.push(AddressAttribute::Local(a.address));
        }
        rtnl.create(
            &format!("add address {}/{} to {name}", a.address, a.prefix_len),
            RouteNetlinkMessage::NewAddress(m),
        )?;
    }
    for n in &iface.neighbours {
        let mut m = NeighbourMessage::default();
        m.header.family = AddressFamily::from(n.address);
        m.header.ifindex = index;
        m.header.state = NeighbourState::Permanent;
        m.header.kind = RouteType::Unicast;
        m.attributes
            .push(NeighbourAttribute::Destination(match n.address {
                IpAddr::V4(v4) => NeighbourAddress::Inet(v4),
                IpAddr::V6(v6) => NeighbourAddress::Inet6(v6),
            }));
        m.attributes
            .push(NeighbourAttribute::LinkLayerAddress(n.mac.to_vec()));
        rtnl.request(
            &format!("add neighbour {} on {name}", n.address),
            RouteNetlinkMessage::NewNeighbour(m),
            NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
        )?;
    }
    let (link_routes, gateway_routes): (Vec<&NetRoute>, Vec<&NetRoute>) =
        iface.routes.iter().partition(|r| r.gateway.is_none());
    for r in link_routes.into_iter().chain(gateway_routes) {
        rtnl.create(
            &describe_route(r, name),
            RouteNetlinkMessage::NewRoute(route_message(r, index)),
        )?;
    }
    tracing::info!(
        "network: {name} ({}) up, MTU {}, {} addresses, {} routes, {} neighbours",
        format_mac(&iface.mac),
        iface.mtu,
        iface.addresses.len(),
        iface.routes.len(),
        iface.neighbours.len()
    );
    Ok(())
}

fn describe_route(r: &NetRoute, name: &str) -> String {
    let mut s = format!(
        "add route {}/{}",
        r.destination.address, r.destination.prefix_len
    );
    if let Some(g) = r.gateway {
        s.push_str(&format!(" via {g}"));
    }
    s.push_str(&format!(" dev {name}"));
    if let Some(mtu) = r.mtu {
        s.push_str(&format!(" mtu {mtu}"));
    }
    s
}

fn route_address(ip: IpAddr) -> RouteAddress {
    match ip {
        IpAddr::V4(v4) => RouteAddress::Inet(v4),
        IpAddr::V6(v6) => RouteAddress::Inet6(v6),
    }
}

/// `ip route add DEST/LEN [via GW] dev IFACE [mtu N] [src S] proto boot`: scope link without
/// a gateway, universe with one.
fn route_message(r: &NetRoute, index: u32) -> RouteMessage {
    let mut m = RouteMessage::default();
    m.header.address_family = AddressFamily::from(r.destination.address);
    m.header.destination_prefix_length = r.destination.prefix_len;
    m.header.table = RouteHeader::RT_TABLE_MAIN;
    m.header.protocol = RouteProtocol::Boot;
    m.header.kind = RouteType::Unicast;
    m.header.scope = if r.gateway.is_some() {
        RouteScope::Universe
    } else {
        RouteScope::Link
    };
    if r.destination.prefix_len > 0 {
        m.attributes.push(RouteAttribute::Destination(route_address(
            r.destination.address,
        )));
    }
    if let Some(g) = r.gateway {
        m.attributes.push(RouteAttribute::Gateway(route_address(g)));
    }
    if let Some(s) = r.source {
        m.attributes
            .push(RouteAttribute::PrefSource(route_address(s)));
    }
    m.attributes.push(RouteAttribute::Oif(index));
    if let Some(mtu) = r.mtu {
        m.attributes
            .push(RouteAttribute::Metrics(vec![RouteMetric::Mtu(mtu)]));
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use msb_protocol::net::NetAddress;

    #[test]
    fn routes_read_like_ip_route() {
        let r = NetRoute {
            destination: NetAddress {
                address: "0.0.0.0".parse().unwrap(),
                prefix_len: 0,
            },
            gateway: Some("169.254.1.1".parse().unwrap()),
            mtu: Some(1400),
            source: None,
        };
        assert_eq!(
            describe_route(&r, "eth0"),
            "add route 0.0.0.0/0 via 169.254.1.1 dev eth0 mtu 1400"
        );
        let m = route_message(&r, 2);
        assert_eq!(m.header.scope, RouteScope::Universe);
        assert!(!m
            .attributes
            .iter()
            .any(|a| matches!(a, RouteAttribute::Destination(_))));
    }
}
