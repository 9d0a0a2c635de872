//! The two-way redirect between the pod interface and the TAP, in traffic control terms:
//! an ingress qdisc on each and a filter
//! `u32 match u8 0 0 action mirred egress redirect dev <other>` (what
//! `tc filter add dev SRC parent ffff: protocol all ...` makes). Every frame arriving on one
//! leaves through the other, untouched: the host's stack never sees the pod's traffic.
//!
//! `u32` and not `matchall`: the latter is missing from some hosts' kernels. Where an eBPF CNI
//! already put a `clsact` qdisc on the interface, the filter goes on clsact's ingress hook (the
//! ingress and clsact qdiscs exclude each other; parent `ffff:fff2` names the ingress hook of
//! either). Our filters carry their own priority ([`FILTER_PRIORITY`]), so cleanup removes
//! ours and nothing else.

use futures::{StreamExt, TryStreamExt};
use rtnetlink::packet_core::{NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_REQUEST};
use rtnetlink::packet_route::tc::{TcAttribute, TcHandle, TcMessage};
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::Handle;

use super::NetError;

/// The priority (`pref`) of our filters: how cleanup tells them from other filters.
pub const FILTER_PRIORITY: u16 = 0xc0de;

/// `ETH_P_ALL`, as `tcm_info` carries a protocol: in network byte order.
const PROTOCOL_ALL: u16 = 0x0003_u16.to_be();

/// `ffff:fff2`: the ingress hook of an `ingress` or a `clsact` qdisc.
const INGRESS_HOOK: u32 = 0xffff_fff2;

/// The kind of `index`'s ingress-side qdisc (`ingress` or `clsact`), if it has one.
pub async fn ingress_qdisc(handle: &Handle, index: u32) -> Result<Option<String>, NetError> {
    let qdiscs: Vec<TcMessage> = handle
        .qdisc()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(|e| NetError::netlink("list qdiscs", e))?;
    Ok(qdiscs
        .iter()
        .filter(|q| i64::from(q.header.index) == i64::from(index))
        .filter(|q| q.header.parent == TcHandle::INGRESS)
        .find_map(kind_of))
}

fn kind_of(m: &TcMessage) -> Option<String> {
    m.attributes.iter().find_map(|a| match a {
        TcAttribute::Kind(k) => Some(k.clone()),
        _ => None,
    })
}

/// What [`redirect`] did to an interface, for [`undo`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Redirect {
    /// The interface.
    pub index: u32,
    /// Whether we added the ingress qdisc (else a `clsact` or `ingress` qdisc was there).
    pub added_qdisc: bool,
}

fn ifindex(index: u32) -> Result<i32, NetError> {
    i32::try_from(index).map_err(|_| NetError::Other(format!("interface index {index}")))
}

/// Redirects every frame arriving on `from` out of `to`.
pub async fn redirect(handle: &Handle, from: u32, to: u32) -> Result<Redirect, NetError> {
    let added_qdisc = match ingress_qdisc(handle, from).await? {
        Some(_) => false,
        None => {
            handle
                .qdisc()
                .add(ifindex(from)?)
                .ingress()
                .execute()
                .await
                .map_err(|e| {
                    NetError::netlink(format!("add an ingress qdisc to link {from}"), e)
                })?;
            true
        }
    };
    let done = Redirect {
        index: from,
        added_qdisc,
    };
    let add = async {
        handle
            .traffic_filter(ifindex(from)?)
            .add()
            .parent(INGRESS_HOOK)
            .priority(FILTER_PRIORITY)
            .protocol(PROTOCOL_ALL)
            .redirect(to)
            .map_err(|e| NetError::netlink("build the redirect filter", e))?
            .execute()
            .await
            .map_err(|e| NetError::netlink(format!("redirect link {from} to link {to}"), e))
    };
    if let Err(e) = add.await {
        let _ = undo(handle, &done).await;
        return Err(e);
    }
    Ok(done)
}

/// Removes what [`redirect`] added: the qdisc when it added it (its filters go with it), else
/// our filter only. An interface or object that is gone already is no error.
pub async fn undo(handle: &Handle, r: &Redirect) -> Result<(), NetError> {
    let index = ifindex(r.index)?;
    let result = if r.added_qdisc {
        let mut del = handle.qdisc().del(index);
        del.message_mut().header.parent = TcHandle::INGRESS;
        del.message_mut().header.handle = TcHandle::from(0xffff_0000);
        del.execute().await
    } else {
        delete_our_filters(handle, index).await
    };
    match result {
        Ok(()) => Ok(()),
        Err(e) if is_gone(&e) => Ok(()),
        Err(e) => Err(NetError::netlink(
            format!("remove the redirect of link {}", r.index),
            e,
        )),
    }
}

/// Deletes every filter of our priority on `index`'s ingress hook (`tc filter del dev X
/// ingress pref N`; rtnetlink's delete request has no priority setter).
async fn delete_our_filters(handle: &Handle, index: i32) -> Result<(), rtnetlink::Error> {
    let mut msg = TcMessage::with_index(index);
    msg.header.parent = TcHandle::from(INGRESS_HOOK);
    msg.header.info = u32::from(FILTER_PRIORITY) << 16;
    let mut req = NetlinkMessage::from(RouteNetlinkMessage::DelTrafficFilter(msg));
    req.header.flags = NLM_F_REQUEST | NLM_F_ACK;
    let mut handle = handle.clone();
    let mut response = handle.request(req)?;
    while let Some(m) = response.next().await {
        if let NetlinkPayload::Error(e) = m.payload {
            return Err(rtnetlink::Error::NetlinkError(e));
        }
    }
    Ok(())
}

/// Whether a netlink error says the object (or its interface) no longer exists.
fn is_gone(e: &rtnetlink::Error) -> bool {
    match e {
        rtnetlink::Error::NetlinkError(m) => matches!(
            m.code.map(|c| -c.get()),
            Some(libc::ENODEV) | Some(libc::ENOENT)
        ),
        _ => false,
    }
}

/// Every filter message on `index`'s ingress hook (a `u32` filter dumps as several: its hash
/// table and its rule). None when the interface has no ingress hook.
async fn filters(handle: &Handle, index: u32) -> Result<Vec<TcMessage>, NetError> {
    match handle
        .traffic_filter(ifindex(index)?)
        .get()
        .ingress()
        .execute()
        .try_collect()
        .await
    {
        Ok(f) => Ok(f),
        // ENODEV: no such link; EINVAL: no ingress qdisc to list.
        Err(rtnetlink::Error::NetlinkError(m))
            if matches!(
                m.code.map(|c| -c.get()),
                Some(libc::ENODEV) | Some(libc::ENOENT) | Some(libc::EINVAL)
            ) =>
        {
            Ok(Vec::new())
        }
        Err(e) => Err(NetError::netlink(
            format!("list filters of link {index}"),
            e,
        )),
    }
}

fn is_ours(f: &TcMessage) -> bool {
    f.header.info >> 16 == u32::from(FILTER_PRIORITY)
}

/// The kinds of our filters (by priority) on `index`'s ingress hook, one per dumped message.
pub async fn our_filters(handle: &Handle, index: u32) -> Result<Vec<String>, NetError> {
    Ok(filters(handle, index)
        .await?
        .iter()
        .filter(|f| is_ours(f))
        .filter_map(kind_of)
        .collect())
}

/// How many filter messages on `index`'s ingress hook are not ours.
pub async fn others(handle: &Handle, index: u32) -> Result<usize, NetError> {
    Ok(filters(handle, index)
        .await?
        .iter()
        .filter(|f| !is_ours(f))
        .count())
}
