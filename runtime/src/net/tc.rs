//! The two-way redirect between the pod interface and the TAP, in traffic control terms:
//! an ingress qdisc on each and a filter
//! `u32 match u8 0 0 action mirred egress redirect dev <other>` (what
//! `tc filter add dev SRC parent ffff: protocol all ...` makes). Every frame arriving on one
//! leaves through the other, untouched: the host's stack never sees the pod's traffic.
//!
//! `u32` and not `matchall`: the latter is missing from some hosts' kernels. Where an eBPF CNI
//! already put a `clsact` qdisc on the interface, the filter goes on clsact's ingress hook (the
//! ingress and clsact qdiscs exclude each other; parent `ffff:fff2` names the ingress hook of
//! either), and that qdisc stays theirs: [`undo`] removes our filter only. Our filters carry
//! their own priority ([`FILTER_PRIORITY`]), so cleanup removes ours and nothing else.
//!
//! A CNI plugin may be changing the same interface's traffic control while we do: a step the
//! kernel refuses with `EBUSY` is tried again a few times ([`BUSY_WAITS`]) before it fails with
//! an error that names the interface and the step; a qdisc that appears between our look and our
//! add (`EEXIST`) is taken as theirs.

use std::future::Future;
use std::time::Duration;

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

/// The waits before each new try of a step refused with `EBUSY` (6 tries in all, 620 ms of
/// waiting at most): long enough for a CNI plugin's own traffic-control change to finish, short
/// enough that a pod start does not stall on an interface that stays busy.
pub const BUSY_WAITS: [Duration; 5] = [
    Duration::from_millis(20),
    Duration::from_millis(40),
    Duration::from_millis(80),
    Duration::from_millis(160),
    Duration::from_millis(320),
];

/// The errno of a netlink error, if the kernel sent one.
fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| -c.get()),
        _ => None,
    }
}

/// Runs `op` until it succeeds or fails otherwise than with `EBUSY`, waiting `waits[i]` before
/// try `i + 2`. The error is the last one, with the number of tries made.
pub async fn retry_busy<T, F, Fut>(
    waits: &[Duration],
    mut op: F,
) -> Result<T, (rtnetlink::Error, usize)>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, rtnetlink::Error>>,
{
    let mut tries = 0;
    loop {
        tries += 1;
        match op().await {
            Ok(v) => return Ok(v),
            Err(e) if errno(&e) == Some(libc::EBUSY) && tries <= waits.len() => {
                tracing::debug!(tries, "traffic control busy, trying again");
                tokio::time::sleep(waits[tries - 1]).await;
            }
            Err(e) => return Err((e, tries)),
        }
    }
}

/// The error of a step on `index` that failed after `tries`: "busy" when the kernel still said
/// `EBUSY` on the last one.
async fn step_error(
    handle: &Handle,
    index: u32,
    step: &str,
    (e, tries): (rtnetlink::Error, usize),
) -> NetError {
    let link = link_name(handle, index).await;
    if errno(&e) == Some(libc::EBUSY) {
        NetError::netlink(
            format!("{step} on {link}: busy after {tries} tries (another program, such as a CNI plugin, keeps changing its traffic control)"),
            e,
        )
    } else {
        NetError::netlink(format!("{step} on {link}"), e)
    }
}

/// `interface NAME (index N)`, or `link N` when the name cannot be read.
async fn link_name(handle: &Handle, index: u32) -> String {
    let name = handle
        .link()
        .get()
        .match_index(index)
        .execute()
        .try_next()
        .await
        .ok()
        .flatten()
        .and_then(|l| super::link::name_of(&l).map(str::to_owned));
    match name {
        Some(n) => format!("interface {n} (index {index})"),
        None => format!("link {index}"),
    }
}

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

/// Redirects every frame arriving on `from` out of `to`: on the ingress hook of the `ingress`
/// or `clsact` qdisc `from` has, else of an `ingress` qdisc added for it.
pub async fn redirect(handle: &Handle, from: u32, to: u32) -> Result<Redirect, NetError> {
    let index = ifindex(from)?;
    let added_qdisc = match ingress_qdisc(handle, from).await? {
        Some(kind) => {
            tracing::debug!(
                link = from,
                "redirect on the ingress hook of its {kind} qdisc"
            );
            false
        }
        None => {
            let add = retry_busy(&BUSY_WAITS, || {
                handle.qdisc().add(index).ingress().execute()
            })
            .await;
            match add {
                Ok(()) => true,
                // Added by someone else since we looked (an eBPF CNI's clsact): theirs, and
                // its ingress hook takes our filter all the same.
                Err((e, _))
                    if errno(&e) == Some(libc::EEXIST)
                        && ingress_qdisc(handle, from).await?.is_some() =>
                {
                    false
                }
                Err(failed) => {
                    return Err(step_error(handle, from, "add an ingress qdisc", failed).await)
                }
            }
        }
    };
    let done = Redirect {
        index: from,
        added_qdisc,
    };
    let add = retry_busy(&BUSY_WAITS, || async {
        handle
            .traffic_filter(index)
            .add()
            .parent(INGRESS_HOOK)
            .priority(FILTER_PRIORITY)
            .protocol(PROTOCOL_ALL)
            .redirect(to)?
            .execute()
            .await
    })
    .await;
    if let Err(failed) = add {
        let e = step_error(
            handle,
            from,
            &format!("add the filter redirecting to link {to}"),
            failed,
        )
        .await;
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
    matches!(errno(e), Some(libc::ENODEV) | Some(libc::ENOENT))
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::time::Instant;

    fn netlink_error(errno: i32) -> rtnetlink::Error {
        let mut m = rtnetlink::packet_core::ErrorMessage::default();
        m.code = std::num::NonZeroI32::new(-errno);
        rtnetlink::Error::NetlinkError(m)
    }

    /// An operation that fails with `errno` its first `n` times, then succeeds.
    fn failing(
        n: usize,
        errno: i32,
        calls: &Cell<usize>,
    ) -> impl FnMut() -> std::future::Ready<Result<usize, rtnetlink::Error>> + '_ {
        move || {
            calls.set(calls.get() + 1);
            std::future::ready(if calls.get() <= n {
                Err(netlink_error(errno))
            } else {
                Ok(calls.get())
            })
        }
    }

    #[tokio::test]
    async fn busy_is_tried_again_with_growing_waits_then_given_up() {
        // Busy twice: the third try succeeds, after 20 + 40 ms.
        let calls = Cell::new(0);
        let start = Instant::now();
        let r = retry_busy(&BUSY_WAITS, failing(2, libc::EBUSY, &calls)).await;
        assert_eq!(r.unwrap(), 3);
        assert!(start.elapsed() >= Duration::from_millis(60));

        // Busy for good: 6 tries (5 waits, 620 ms), then the last EBUSY with the count.
        let calls = Cell::new(0);
        let start = Instant::now();
        let (e, tries) = retry_busy(&BUSY_WAITS, failing(usize::MAX, libc::EBUSY, &calls))
            .await
            .unwrap_err();
        assert_eq!((tries, calls.get()), (6, 6));
        assert_eq!(errno(&e), Some(libc::EBUSY));
        let waited = start.elapsed();
        assert!(waited >= Duration::from_millis(620), "{waited:?}");
        assert!(waited < Duration::from_secs(3), "{waited:?}");

        // Any other error: no second try.
        let calls = Cell::new(0);
        let (e, tries) = retry_busy(&BUSY_WAITS, failing(1, libc::EPERM, &calls))
            .await
            .unwrap_err();
        assert_eq!((tries, calls.get(), errno(&e)), (1, 1, Some(libc::EPERM)));
    }

    #[test]
    fn the_waits_double_from_20_to_320_ms() {
        let ms: Vec<u128> = BUSY_WAITS.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, [20, 40, 80, 160, 320]);
    }
}
