//! Pod networking, the TC-redirect model (Kata's default `tcfilter`): the pod's network
//! namespace, as CNI prepared it, keeps its interface (a veth `eth0` holding the pod IP); a TAP
//! made next to it carries the same traffic into the VM, and the guest's virtio-net interface
//! takes over the veth's identity (MAC, MTU, addresses, routes, neighbours).
//!
//! ```text
//!  pod netns (host)                                         VM
//!  eth0 (veth, pod IP) --ingress: mirred redirect--> tap0_msb ==fd==> QEMU virtio-net --> eth0
//!       <--ingress: mirred redirect-- tap0_msb <==fd== QEMU <------------ (pod IP, same MAC)
//! ```
//!
//! - [`tap`]: the TAP, created from a thread inside the namespace; its descriptor is inherited
//!   by the VMM and the device dies with the last descriptor.
//! - [`tc`]: the ingress qdiscs and `u32` redirect filters both ways.
//! - [`link`]: reading the pod interface; the TAP's MTU and state.
//! - [`forward`]: the namespace's loopback ports forwarded into the VM (`kubectl port-forward`).
//!
//! Everything runs on a short-lived thread of its own that `setns`es into the pod's namespace
//! ([`in_netns`]): a namespace switch applies to the calling thread only, and no tokio worker
//! may ever be switched. The VMM itself stays in the host's namespace.

pub mod forward;
pub mod link;
pub mod tap;
pub mod tc;

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use msb_protocol::net::{NetConfigure, NetInterface};
use nix::sched::CloneFlags;

/// The TAP's name in the pod's namespace.
pub const TAP_NAME: &str = "tap0_msb";

/// The pod interface: the name the CRI gives CNI (`CNI_IFNAME`); the only one carried into
/// the VM.
pub const POD_INTERFACE: &str = "eth0";

/// Why pod networking could not be set up or removed.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The network namespace could not be opened or entered.
    #[error("network namespace {}", path.display())]
    Netns {
        /// Its path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The TAP could not be created.
    #[error("create TAP {name} (/dev/net/tun)")]
    Tap {
        /// Its name.
        name: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A netlink request failed.
    #[error("{what}")]
    Netlink {
        /// What was asked.
        what: String,
        /// The kernel's answer.
        #[source]
        source: rtnetlink::Error,
    },
    /// The namespace has no pod interface.
    #[error("no interface {0} in the pod's network namespace")]
    NoInterface(String),
    /// The pod interface has no Ethernet address.
    #[error("interface {0} has no Ethernet address")]
    NotEthernet(String),
    /// Anything else.
    #[error("{0}")]
    Other(String),
}

impl NetError {
    pub(crate) fn netlink(what: impl Into<String>, source: rtnetlink::Error) -> NetError {
        NetError::Netlink {
            what: what.into(),
            source,
        }
    }
}

/// Runs `f` on a new thread that has entered the network namespace at `netns`, with a
/// single-threaded tokio runtime for rtnetlink (its netlink socket is made in that namespace
/// and stays bound to it). Blocks until `f` is done.
pub fn in_netns<T, F, Fut>(netns: &Path, f: F) -> Result<T, NetError>
where
    T: Send + 'static,
    F: FnOnce(rtnetlink::Handle) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<T, NetError>>,
{
    let ns_err = |source| NetError::Netns {
        path: netns.to_owned(),
        source,
    };
    let ns = File::open(netns).map_err(ns_err)?;
    let path = netns.to_owned();
    let thread = std::thread::Builder::new()
        .name("msb-netns".into())
        .spawn(move || {
            let ns_err = |source| NetError::Netns {
                path: path.clone(),
                source,
            };
            nix::sched::setns(ns.as_fd(), CloneFlags::CLONE_NEWNET)
                .map_err(|e| ns_err(std::io::Error::from(e)))?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(ns_err)?;
            rt.block_on(async move {
                let (conn, handle, _) = rtnetlink::new_connection().map_err(ns_err)?;
                tokio::spawn(conn);
                f(handle).await
            })
        })
        .map_err(ns_err)?;
    thread
        .join()
        .map_err(|_| NetError::Other("the network namespace thread panicked".into()))?
}

/// The TAP side of a pod network, as a VMM gets it.
#[derive(Debug, Clone)]
pub struct NetDevice {
    /// The TAP's descriptor (close-on-exec; the backend makes it inheritable for the VMM).
    pub tap: Arc<OwnedFd>,
    /// The guest interface's MAC (the pod interface's).
    pub mac: [u8; 6],
    /// Its MTU.
    pub mtu: u32,
}

impl NetDevice {
    /// The descriptor number the VMM inherits.
    pub fn fd(&self) -> RawFd {
        self.tap.as_raw_fd()
    }
}

impl PartialEq for NetDevice {
    fn eq(&self, other: &Self) -> bool {
        self.fd() == other.fd() && self.mac == other.mac && self.mtu == other.mtu
    }
}

impl Eq for NetDevice {}

/// A pod's network set up for its VM: the TAP, the redirects, and what the guest must
/// configure. [`PodNetwork::teardown`] (or dropping it) removes the redirect from the pod
/// interface and closes our TAP descriptor; the TAP itself goes when the VMM's copy closes too.
#[derive(Debug)]
pub struct PodNetwork {
    netns: PathBuf,
    device: NetDevice,
    interface: NetInterface,
    pod_redirect: tc::Redirect,
    torn_down: bool,
}

impl PodNetwork {
    /// Sets up the pod network of the namespace at `netns` (blocking: call it off the async
    /// workers, e.g. in `block_in_place`).
    pub fn setup(netns: &Path) -> Result<PodNetwork, NetError> {
        let (tap, interface, pod_redirect) = in_netns(netns, |handle| async move {
            // By name only: a namespace may hold other Ethernet-like links (`gretap0` and
            // `erspan0` appear in each once `ip_gre` is loaded) that are no pod's.
            let pod = &link::by_name(&handle, POD_INTERFACE).await?;
            let interface = link::describe(&handle, pod).await?;
            let tap = tap::create(TAP_NAME).map_err(|source| NetError::Tap {
                name: TAP_NAME.into(),
                source,
            })?;
            let tap_index = link::by_name(&handle, TAP_NAME).await?.header.index;
            link::set_mtu_up(&handle, tap_index, interface.mtu).await?;
            let pod_index = pod.header.index;
            tc::redirect(&handle, tap_index, pod_index).await?;
            let pod_redirect = tc::redirect(&handle, pod_index, tap_index).await?;
            Ok((tap, interface, pod_redirect))
        })?;
        tracing::info!(
            netns = %netns.display(),
            interface = %interface.name,
            mac = %msb_protocol::net::format_mac(&interface.mac),
            mtu = interface.mtu,
            addresses = interface.addresses.len(),
            routes = interface.routes.len(),
            "pod network: {TAP_NAME} redirected to and from {}",
            interface.name
        );
        Ok(PodNetwork {
            netns: netns.to_owned(),
            device: NetDevice {
                tap: Arc::new(tap),
                mac: interface.mac,
                mtu: interface.mtu,
            },
            interface,
            pod_redirect,
            torn_down: false,
        })
    }

    /// The TAP for the VMM.
    pub fn device(&self) -> NetDevice {
        self.device.clone()
    }

    /// What the guest configures (`core.net.configure`).
    pub fn guest_config(&self) -> NetConfigure {
        NetConfigure {
            interfaces: vec![self.interface.clone()],
        }
    }

    /// The pod's network namespace.
    pub fn netns(&self) -> &Path {
        &self.netns
    }

    /// Removes the redirect from the pod interface (the TAP's own qdisc and filter go with the
    /// TAP). Idempotent; a namespace that is gone already (CNI tore it down) is no error.
    pub fn teardown(&mut self) -> Result<(), NetError> {
        if self.torn_down {
            return Ok(());
        }
        self.torn_down = true;
        let r = self.pod_redirect;
        match in_netns(&self.netns, move |handle| async move {
            tc::undo(&handle, &r).await
        }) {
            Err(NetError::Netns { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                Ok(())
            }
            other => other,
        }
    }
}

impl Drop for PodNetwork {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            tracing::warn!(netns = %self.netns.display(), error = %e, "pod network teardown");
        }
    }
}

/// Removes our redirect filters from every interface of the namespace at `netns`: the cleanup
/// after a shim that died without tearing its pod network down (its TAP died with its VMM).
/// An ingress qdisc left without any filter is removed too. A missing namespace is no error.
pub fn cleanup_netns(netns: &Path) -> Result<(), NetError> {
    let r = in_netns(netns, |handle| async move {
        for l in link::all(&handle).await? {
            let index = l.header.index;
            if tc::our_filters(&handle, index).await?.is_empty() {
                continue;
            }
            let only_ours = tc::ingress_qdisc(&handle, index).await?.as_deref() == Some("ingress")
                && tc::others(&handle, index).await? == 0;
            tc::undo(
                &handle,
                &tc::Redirect {
                    index,
                    added_qdisc: only_ours,
                },
            )
            .await?;
        }
        Ok(())
    });
    match r {
        Err(NetError::Netns { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            Ok(())
        }
        other => other,
    }
}
