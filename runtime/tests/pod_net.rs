//! Pod networking on the host side, as root, in network namespaces the test makes itself (all
//! addresses in 169.254.0.0/16): a "pod" namespace holding a veth `eth0` configured as CNI
//! would, its peer in a "host" namespace. Asserts what `PodNetwork::setup` reads, the TAP, the
//! qdiscs and filters it makes (netlink dumps), that frames cross the redirect both ways
//! through the TAP descriptor, and that teardown leaves nothing.

use std::net::{IpAddr, Ipv4Addr, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use msb_protocol::net::{NetAddress, NetNeighbour, NetRoute};
use msb_runtime::net::{self, in_netns, tc, PodNetwork, TAP_NAME};
use nix::sched::CloneFlags;
use rtnetlink::packet_route::neighbour::NeighbourState;
use rtnetlink::packet_route::route::{RouteAttribute, RouteMetric};
use rtnetlink::{LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder};

const POD_MAC: [u8; 6] = [0x02, 0x6d, 0x73, 0x62, 0x00, 0x02];
const GW_MAC: [u8; 6] = [0x02, 0x6d, 0x73, 0x62, 0x00, 0x01];

/// A new, empty network namespace, kept alive by its descriptor.
fn new_netns() -> OwnedFd {
    std::thread::spawn(|| {
        nix::sched::unshare(CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET)");
        OwnedFd::from(std::fs::File::open("/proc/thread-self/ns/net").expect("open own netns"))
    })
    .join()
    .unwrap()
}

fn ns_path(fd: &OwnedFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// The "host" namespace holds `peer0` (169.254.77.1/24); the pod namespace `eth0`
/// (169.254.77.2/24, MTU 1450, MAC POD_MAC), a route 169.254.78.0/24 via .1 with MTU 1400, a
/// default route via .1, and a permanent neighbour .1 -> GW_MAC, as a CNI plugin could leave.
fn make_pod(host: &OwnedFd, pod: &OwnedFd) {
    let pod_fd = pod.as_raw_fd();
    in_netns(&ns_path(host), move |h| async move {
        h.link()
            .add(LinkVeth::new("peer0", "eth0").build())
            .execute()
            .await
            .unwrap();
        let eth0 = net::link::by_name(&h, "eth0").await.unwrap().header.index;
        h.link()
            .set(
                LinkMessageBuilder::<LinkUnspec>::new()
                    .index(eth0)
                    .setns_by_fd(pod_fd)
                    .build(),
            )
            .execute()
            .await
            .unwrap();
        let peer = net::link::by_name(&h, "peer0").await.unwrap().header.index;
        h.address()
            .add(peer, IpAddr::V4(Ipv4Addr::new(169, 254, 77, 1)), 24)
            .execute()
            .await
            .unwrap();
        net::link::set_mtu_up(&h, peer, 1450).await.unwrap();
        Ok(())
    })
    .unwrap();
    in_netns(&ns_path(pod), |h| async move {
        let eth0 = net::link::by_name(&h, "eth0").await.unwrap().header.index;
        h.link()
            .set(
                LinkMessageBuilder::<LinkUnspec>::new()
                    .index(eth0)
                    .address(POD_MAC.to_vec())
                    .build(),
            )
            .execute()
            .await
            .unwrap();
        net::link::set_mtu_up(&h, eth0, 1450).await.unwrap();
        h.address()
            .add(eth0, IpAddr::V4(Ipv4Addr::new(169, 254, 77, 2)), 24)
            .execute()
            .await
            .unwrap();
        let mut route = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(Ipv4Addr::new(169, 254, 78, 0), 24)
            .gateway(Ipv4Addr::new(169, 254, 77, 1))
            .output_interface(eth0)
            .build();
        route
            .attributes
            .push(RouteAttribute::Metrics(vec![RouteMetric::Mtu(1400)]));
        h.route().add(route).execute().await.unwrap();
        let default = RouteMessageBuilder::<Ipv4Addr>::new()
            .gateway(Ipv4Addr::new(169, 254, 77, 1))
            .output_interface(eth0)
            .build();
        h.route().add(default).execute().await.unwrap();
        h.neighbours()
            .add(eth0, IpAddr::V4(Ipv4Addr::new(169, 254, 77, 1)))
            .link_layer_address(&GW_MAC)
            .state(NeighbourState::Permanent)
            .execute()
            .await
            .unwrap();
        Ok(())
    })
    .unwrap();
}

/// `(qdisc kind on ingress, our filter kinds)` of every named link, in the namespace.
fn tc_state(ns: &OwnedFd, names: &'static [&'static str]) -> Vec<(Option<String>, Vec<String>)> {
    in_netns(&ns_path(ns), move |h| async move {
        let mut out = Vec::new();
        for name in names {
            match net::link::by_name(&h, name).await {
                Ok(l) => out.push((
                    tc::ingress_qdisc(&h, l.header.index).await?,
                    tc::our_filters(&h, l.header.index).await?,
                )),
                Err(_) => out.push((None, vec!["<no such link>".into()])),
            }
        }
        Ok(out)
    })
    .unwrap()
}

/// Reads one frame from the TAP (after its 10-byte virtio-net header), waiting up to 5 s,
/// skipping frames `keep` rejects.
fn read_frame(tap: &OwnedFd, keep: impl Fn(&[u8]) -> bool) -> Vec<u8> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "no frame on the TAP within 5 s");
        let mut fds = [nix::poll::PollFd::new(
            tap.as_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        let ms = u16::try_from(left.as_millis().min(1000)).unwrap();
        if nix::poll::poll(&mut fds, ms).unwrap() == 0 {
            continue;
        }
        let mut buf = vec![0u8; 65536];
        let n = nix::unistd::read(tap.as_raw_fd(), &mut buf).unwrap();
        let frame = buf[10..n].to_vec();
        if keep(&frame) {
            return frame;
        }
    }
}

fn ethertype(frame: &[u8]) -> u16 {
    u16::from_be_bytes([frame[12], frame[13]])
}

/// From the host namespace, sends a UDP datagram to the pod IP every 100 ms until `stop`.
fn udp_to_pod(host: &OwnedFd, stop: mpsc::Receiver<()>) -> std::thread::JoinHandle<()> {
    let ns = host.try_clone().unwrap();
    std::thread::spawn(move || {
        nix::sched::setns(ns.as_fd(), CloneFlags::CLONE_NEWNET).unwrap();
        let s = UdpSocket::bind("169.254.77.1:0").unwrap();
        while stop.try_recv().is_err() {
            let _ = s.send_to(b"msb", "169.254.77.2:9");
            std::thread::sleep(Duration::from_millis(100));
        }
    })
}

/// Frames cross the redirect both ways, through the TAP descriptor: the host's ARP request for
/// the pod IP comes out of the TAP; our ARP reply reaches the host, whose UDP datagrams follow.
fn frames_cross_both_ways(host: &OwnedFd, tap: &OwnedFd) {
    // eth0 -> TAP: the host's ARP request for the pod IP comes out of the TAP descriptor.
    let (stop, stopped) = mpsc::channel();
    let sender = udp_to_pod(host, stopped);
    let arp = read_frame(tap, |f| ethertype(f) == 0x0806 && f[21] == 1);
    assert_eq!(&arp[38..42], &[169, 254, 77, 2], "ARP asks for the pod IP");
    let host_mac: [u8; 6] = arp[6..12].try_into().unwrap();
    // TAP -> eth0: our ARP reply reaches the host, whose UDP datagrams then follow.
    let mut reply = vec![0u8; 10];
    reply.extend_from_slice(&host_mac);
    reply.extend_from_slice(&POD_MAC);
    reply.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 2]);
    reply.extend_from_slice(&POD_MAC);
    reply.extend_from_slice(&[169, 254, 77, 2]);
    reply.extend_from_slice(&host_mac);
    reply.extend_from_slice(&[169, 254, 77, 1]);
    nix::unistd::write(tap, &reply).unwrap();
    let udp = read_frame(tap, |f| ethertype(f) == 0x0800 && f[23] == 17);
    assert_eq!(&udp[0..6], &POD_MAC, "to the pod's MAC");
    assert_eq!(&udp[udp.len() - 3..], b"msb");
    stop.send(()).unwrap();
    sender.join().unwrap();
}

#[test]
fn pod_network_reads_the_veth_redirects_both_ways_and_leaves_nothing() {
    if !is_root() {
        msb_test_e2e::require("needs root (network namespaces, TAP, traffic control)");
        return;
    }
    let (host, pod) = (new_netns(), new_netns());
    make_pod(&host, &pod);

    let mut pn = PodNetwork::setup(&ns_path(&pod)).expect("set up the pod network");
    let cfg = pn.guest_config();
    assert_eq!(cfg.interfaces.len(), 1);
    let i = &cfg.interfaces[0];
    assert_eq!((i.name.as_str(), i.mac, i.mtu), ("eth0", POD_MAC, 1450));
    assert_eq!(
        i.addresses,
        vec![NetAddress {
            address: "169.254.77.2".parse().unwrap(),
            prefix_len: 24
        }]
    );
    let mut routes = i.routes.clone();
    routes.sort_by_key(|r| r.destination.prefix_len);
    assert_eq!(
        routes,
        vec![
            NetRoute {
                destination: NetAddress {
                    address: "0.0.0.0".parse().unwrap(),
                    prefix_len: 0
                },
                gateway: Some("169.254.77.1".parse().unwrap()),
                mtu: None,
                source: None,
            },
            NetRoute {
                destination: NetAddress {
                    address: "169.254.78.0".parse().unwrap(),
                    prefix_len: 24
                },
                gateway: Some("169.254.77.1".parse().unwrap()),
                mtu: Some(1400),
                source: None,
            },
        ],
        "the kernel's own 169.254.77.0/24 route is left out"
    );
    assert_eq!(
        i.neighbours,
        vec![NetNeighbour {
            address: "169.254.77.1".parse().unwrap(),
            mac: GW_MAC
        }]
    );

    // The TAP: up, with the veth's MTU; both links redirect with an ingress qdisc and u32.
    let tap_mtu = in_netns(&ns_path(&pod), |h| async move {
        let l = net::link::by_name(&h, TAP_NAME).await?;
        Ok(net::link::mtu_of(&l))
    })
    .unwrap();
    assert_eq!(tap_mtu, 1450);
    let state = tc_state(&pod, &["eth0", TAP_NAME]);
    for (qdisc, filters) in &state {
        assert_eq!(qdisc.as_deref(), Some("ingress"), "{state:?}");
        assert!(
            !filters.is_empty() && filters.iter().all(|k| k == "u32"),
            "{state:?}"
        );
    }

    let tap = pn.device().tap;
    frames_cross_both_ways(&host, &tap);

    // Teardown removes the veth's qdisc and filter; the TAP goes with its last descriptor.
    pn.teardown().unwrap();
    assert_eq!(tc_state(&pod, &["eth0"]), vec![(None, vec![])]);
    drop(tap);
    drop(pn);
    let gone = in_netns(&ns_path(&pod), |h| async move {
        Ok(net::link::by_name(&h, TAP_NAME).await.is_err())
    })
    .unwrap();
    assert!(gone, "{TAP_NAME} outlived its descriptors");
}

#[test]
fn crash_cleanup_removes_our_filters_only() {
    if !is_root() {
        msb_test_e2e::require("needs root (network namespaces, TAP, traffic control)");
        return;
    }
    let (host, pod) = (new_netns(), new_netns());
    make_pod(&host, &pod);
    let pn = PodNetwork::setup(&ns_path(&pod)).unwrap();
    // A crashed shim: no teardown ran; its VMM (and so the TAP) is gone.
    let tap_fd = pn.device().tap.as_raw_fd();
    std::mem::forget(pn);
    nix::unistd::close(tap_fd).unwrap();
    assert_eq!(
        tc_state(&pod, &["eth0"])[0].0.as_deref(),
        Some("ingress"),
        "left behind before cleanup"
    );
    net::cleanup_netns(&ns_path(&pod)).unwrap();
    assert_eq!(tc_state(&pod, &["eth0"]), vec![(None, vec![])]);
    // Idempotent, and a namespace that is gone is no error.
    net::cleanup_netns(&ns_path(&pod)).unwrap();
    net::cleanup_netns(std::path::Path::new("/proc/self/fd/99999")).unwrap();
}

#[test]
fn a_namespace_without_eth0_has_no_pod_network() {
    if !is_root() {
        msb_test_e2e::require("needs root (network namespaces, TAP, traffic control)");
        return;
    }
    let lo_only = new_netns();
    let err = PodNetwork::setup(&ns_path(&lo_only)).unwrap_err();
    assert!(matches!(err, net::NetError::NoInterface(_)), "{err:?}");
    assert_eq!(
        err.to_string(),
        "no interface eth0 in the pod's network namespace"
    );
    // Nothing was made: no TAP.
    let links = in_netns(&ns_path(&lo_only), |h| async move {
        Ok(net::link::all(&h)
            .await?
            .iter()
            .filter_map(|l| net::link::name_of(l).map(str::to_owned))
            .collect::<Vec<_>>())
    })
    .unwrap();
    assert_eq!(links, vec!["lo".to_owned()]);
}

/// Runs `tc ARGS` in the namespace `ns` (as an eBPF CNI plugin would change the pod interface).
fn tc_in(ns: &OwnedFd, args: &str) {
    let out = std::process::Command::new("nsenter")
        .arg(format!(
            "--net=/proc/{}/fd/{}",
            std::process::id(),
            ns.as_raw_fd()
        ))
        .arg("tc")
        .args(args.split_whitespace())
        .output()
        .expect("run nsenter tc");
    assert!(
        out.status.success(),
        "tc {args}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// How many filter messages on `name`'s ingress hook are not ours.
fn other_filters(ns: &OwnedFd, name: &'static str) -> usize {
    in_netns(&ns_path(ns), move |h| async move {
        let index = net::link::by_name(&h, name).await?.header.index;
        tc::others(&h, index).await
    })
    .unwrap()
}

#[test]
fn a_clsact_qdisc_of_an_ebpf_cni_takes_our_filter_and_stays_theirs() {
    if !is_root() {
        msb_test_e2e::require("needs root (network namespaces, TAP, traffic control)");
        return;
    }
    let (host, pod) = (new_netns(), new_netns());
    make_pod(&host, &pod);
    // The CNI's: a clsact qdisc on the pod interface and a filter of its own on the ingress
    // hook, ahead of ours, that matches none of the test's traffic (no action: act_gact is
    // missing from some kernels).
    tc_in(&pod, "qdisc add dev eth0 clsact");
    tc_in(
        &pod,
        "filter add dev eth0 ingress pref 100 protocol ip u32 match ip dst 192.0.2.1/32 flowid 1:1",
    );
    let theirs = other_filters(&pod, "eth0");
    assert!(theirs > 0);

    let mut pn = PodNetwork::setup(&ns_path(&pod)).expect("set up beside a clsact qdisc");
    let state = tc_state(&pod, &["eth0", TAP_NAME]);
    assert_eq!(state[0].0.as_deref(), Some("clsact"), "{state:?}");
    assert_eq!(state[1].0.as_deref(), Some("ingress"), "{state:?}");
    for (_, filters) in &state {
        assert!(
            !filters.is_empty() && filters.iter().all(|k| k == "u32"),
            "{state:?}"
        );
    }
    assert_eq!(other_filters(&pod, "eth0"), theirs);

    let tap = pn.device().tap;
    frames_cross_both_ways(&host, &tap);

    // Teardown: our filter goes, their qdisc and filter stay.
    pn.teardown().unwrap();
    assert_eq!(
        tc_state(&pod, &["eth0"]),
        vec![(Some("clsact".to_owned()), vec![])]
    );
    assert_eq!(other_filters(&pod, "eth0"), theirs);
    drop(tap);
    drop(pn);

    // The same after a crashed shim, through cleanup_netns.
    let pn = PodNetwork::setup(&ns_path(&pod)).unwrap();
    let tap_fd = pn.device().tap.as_raw_fd();
    std::mem::forget(pn);
    nix::unistd::close(tap_fd).unwrap();
    assert!(!tc_state(&pod, &["eth0"])[0].1.is_empty(), "left behind");
    net::cleanup_netns(&ns_path(&pod)).unwrap();
    assert_eq!(
        tc_state(&pod, &["eth0"]),
        vec![(Some("clsact".to_owned()), vec![])]
    );
    assert_eq!(other_filters(&pod, "eth0"), theirs);
}
