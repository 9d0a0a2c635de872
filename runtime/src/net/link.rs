//! The pod interface as CNI left it, read over rtnetlink: what the guest's interface must
//! become ([`NetInterface`]), and the small link changes the TAP needs (MTU, up).

use std::net::IpAddr;

use futures::TryStreamExt;
use msb_protocol::net::{NetAddress, NetInterface, NetNeighbour, NetRoute};
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{LinkAttribute, LinkMessage};
use rtnetlink::packet_route::neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourState};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteMetric, RouteProtocol, RouteType,
};
use rtnetlink::{Handle, LinkMessageBuilder, LinkUnspec};

use super::NetError;

/// A link by name: its index and message.
pub async fn by_name(handle: &Handle, name: &str) -> Result<LinkMessage, NetError> {
    let mut links = handle.link().get().match_name(name.to_owned()).execute();
    match links.try_next().await {
        Ok(Some(link)) => Ok(link),
        Ok(None) => Err(NetError::NoInterface(name.to_owned())),
        Err(rtnetlink::Error::NetlinkError(m))
            if m.code.map(|c| -c.get()) == Some(libc::ENODEV) =>
        {
            Err(NetError::NoInterface(name.to_owned()))
        }
        Err(e) => Err(NetError::netlink(format!("look up link {name}"), e)),
    }
}

/// Every link of the namespace.
pub async fn all(handle: &Handle) -> Result<Vec<LinkMessage>, NetError> {
    handle
        .link()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(|e| NetError::netlink("list links", e))
}

/// The link's name.
pub fn name_of(link: &LinkMessage) -> Option<&str> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.as_str()),
        _ => None,
    })
}

/// The link's MTU (1500 when the kernel does not say).
pub fn mtu_of(link: &LinkMessage) -> u32 {
    link.attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::Mtu(m) => Some(*m),
            _ => None,
        })
        .unwrap_or(1500)
}

/// The link's MAC, when it is an Ethernet-like link.
pub fn mac_of(link: &LinkMessage) -> Option<[u8; 6]> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Address(a) => <[u8; 6]>::try_from(a.as_slice()).ok(),
        _ => None,
    })
}

/// Sets `index`'s MTU and brings it up.
pub async fn set_mtu_up(handle: &Handle, index: u32, mtu: u32) -> Result<(), NetError> {
    let msg = LinkMessageBuilder::<LinkUnspec>::new()
        .index(index)
        .mtu(mtu)
        .up()
        .build();
    handle
        .link()
        .set(msg)
        .execute()
        .await
        .map_err(|e| NetError::netlink(format!("set MTU {mtu} and up on link {index}"), e))
}

/// What the guest's interface must become: the pod interface's MAC, MTU, addresses (IPv6
/// link-local ones left out: the guest derives the same from the same MAC), routes of the main
/// table through it (`proto kernel` ones left out: the guest's kernel makes them from the
/// addresses) and permanent neighbours.
pub async fn describe(handle: &Handle, link: &LinkMessage) -> Result<NetInterface, NetError> {
    let index = link.header.index;
    let name = name_of(link).unwrap_or("eth0").to_owned();
    let mac = mac_of(link).ok_or_else(|| NetError::NotEthernet(name.clone()))?;
    let addrs: Vec<_> = handle
        .address()
        .get()
        .set_link_index_filter(index)
        .execute()
        .try_collect()
        .await
        .map_err(|e| NetError::netlink(format!("list addresses of {name}"), e))?;
    let mut addresses = Vec::new();
    for a in addrs.iter().filter(|a| a.header.index == index) {
        let local = a.attributes.iter().find_map(|x| match x {
            AddressAttribute::Local(ip) => Some(*ip),
            _ => None,
        });
        let address = local.or_else(|| {
            a.attributes.iter().find_map(|x| match x {
                AddressAttribute::Address(ip) => Some(*ip),
                _ => None,
            })
        });
        match address {
            Some(IpAddr::V6(v6)) if is_link_local(&v6) => {}
            Some(address) => addresses.push(NetAddress {
                address,
                prefix_len: a.header.prefix_len,
            }),
            None => {}
        }
    }
    let routes: Vec<RouteMessage> = handle
        .route()
        .get(RouteMessage::default())
        .execute()
        .try_collect()
        .await
        .map_err(|e| NetError::netlink("list routes", e))?;
    let routes = routes.iter().filter_map(|r| route_of(r, index)).collect();
    let neighbours: Vec<_> = handle
        .neighbours()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(|e| NetError::netlink("list neighbours", e))?;
    let neighbours = neighbours
        .iter()
        .filter(|n| n.header.ifindex == index && n.header.state == NeighbourState::Permanent)
        .filter_map(|n| {
            let address = n.attributes.iter().find_map(|a| match a {
                NeighbourAttribute::Destination(NeighbourAddress::Inet(v4)) => {
                    Some(IpAddr::V4(*v4))
                }
                NeighbourAttribute::Destination(NeighbourAddress::Inet6(v6)) => {
                    Some(IpAddr::V6(*v6))
                }
                _ => None,
            })?;
            let mac = n.attributes.iter().find_map(|a| match a {
                NeighbourAttribute::LinkLayerAddress(m) => <[u8; 6]>::try_from(m.as_slice()).ok(),
                _ => None,
            })?;
            Some(NetNeighbour { address, mac })
        })
        .collect();
    Ok(NetInterface {
        name,
        mac,
        mtu: mtu_of(link),
        addresses,
        routes,
        neighbours,
    })
}

/// `fe80::/10` (`Ipv6Addr::is_unicast_link_local` is newer than our MSRV).
fn is_link_local(a: &std::net::Ipv6Addr) -> bool {
    a.segments()[0] & 0xffc0 == 0xfe80
}

fn ip_of(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

/// A unicast route of the main table through link `index`, unless the kernel made it.
fn route_of(r: &RouteMessage, index: u32) -> Option<NetRoute> {
    let h = &r.header;
    let table = r
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(h.table));
    if table != u32::from(RouteHeader::RT_TABLE_MAIN)
        || h.kind != RouteType::Unicast
        || h.protocol == RouteProtocol::Kernel
    {
        return None;
    }
    let mut oif = None;
    let (mut dest, mut gateway, mut mtu, mut source) = (None, None, None, None);
    for a in &r.attributes {
        match a {
            RouteAttribute::Oif(i) => oif = Some(*i),
            RouteAttribute::Destination(d) => dest = ip_of(d),
            RouteAttribute::Gateway(g) => gateway = ip_of(g),
            RouteAttribute::PrefSource(s) => source = ip_of(s),
            RouteAttribute::Metrics(ms) => {
                mtu = ms.iter().find_map(|m| match m {
                    RouteMetric::Mtu(v) => Some(*v),
                    _ => None,
                })
            }
            _ => {}
        }
    }
    if oif != Some(index) {
        return None;
    }
    let unspecified = match h.address_family {
        rtnetlink::packet_route::AddressFamily::Inet6 => IpAddr::from([0u16; 8]),
        _ => IpAddr::from([0u8; 4]),
    };
    // IPv6 routes the kernel adds for router advertisements or multicast are not CNI's.
    if let Some(IpAddr::V6(d)) = dest {
        if d.is_multicast() || is_link_local(&d) {
            return None;
        }
    }
    Some(NetRoute {
        destination: NetAddress {
            address: dest.unwrap_or(unspecified),
            prefix_len: h.destination_prefix_length,
        },
        gateway,
        mtu,
        source,
    })
}
