//! Pod networking through the CRI (ours; critest's networking cases are in the main file): a
//! pod on the `bridge` network of `hack/lib/containerd.sh` (handlers `runc-net` and
//! `microsandbox-net`, 169.254.200.0/24, gateway 169.254.200.1 on the host bridge, MTU 1400).
//! With microsandbox the pod's `eth0` is the guest's virtio-net interface, fed by the TAP the
//! shim redirects to and from the veth CNI made (docs/NETWORK.md); the same assertions hold
//! for runc, whose container has the veth itself.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use msb_test_e2e::cri::api::{ContainerState, PodSandboxConfig, PortMapping};
use msb_test_e2e::cri::{container_config, pod_config, unique_name, CriTest, Handler};
use msb_test_e2e::cri_stream::Forwarded;

use super::run;

/// The host's address on the pod network (the bridge).
const GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 200, 1);

per_handler! {
    /// Ours: the pod's `eth0` has the pod IP CNI gave, its MTU and the default route; a TCP
    /// server in the pod answers the host at the pod IP; the pod reaches a server on the host.
    pod_network_both_ways => runc_pod_network_both_ways, microsandbox_pod_network_both_ways;
    /// critest Networking: "runtime should support port mapping with only container port":
    /// the web server answers at the pod IP and container port. busybox `httpd` stands in for
    /// nginx.
    port_mapping_with_only_container_port => runc_port_mapping_with_only_container_port,
        microsandbox_port_mapping_with_only_container_port;
    /// critest Networking: "runtime should support port mapping with host port and container
    /// port": the web server answers at `127.0.0.1:<host port>` (the `portmap` plugin's DNAT to
    /// the pod IP). A free port instead of critest's 12000: both handlers run at once.
    port_mapping_with_host_port_and_container_port =>
        runc_port_mapping_with_host_port_and_container_port,
        microsandbox_port_mapping_with_host_port_and_container_port;
    /// critest Multiple Containers: "should support network": a pod with a web server and a
    /// busybox container answers at the pod IP. Ours on top: the busybox container shares the
    /// pod's network (the same `eth0`, the server on `127.0.0.1`).
    multiple_containers_network => runc_multiple_containers_network,
        microsandbox_multiple_containers_network;
    /// Ours: 100 MiB cross the pod network each way intact (sha256), host to pod and pod to
    /// host; the throughput is printed (docs/PERFORMANCE.md).
    bulk_100_mib_each_way => runc_bulk_100_mib_each_way, microsandbox_bulk_100_mib_each_way;
    /// Ours, `kubectl port-forward` on the pod network: 8 MiB from a server in the pod and
    /// 8 MiB to one cross CRI PortForward sessions intact (sha256). For microsandbox the
    /// session goes through the shim's listener in the pod's namespace and the agent channel.
    port_forward_8_mib_each_way => runc_port_forward_8_mib_each_way,
        microsandbox_port_forward_8_mib_each_way;
    /// Ours: IPv6 crosses the pod network too. The pod's `eth0` has the link-local address of
    /// its MAC (EUI-64), the host reaches a server in the pod at that address, and the pod
    /// reaches the host's bridge at its own (link-local only: the tests use no routable range).
    ipv6_link_local_both_ways => runc_ipv6_link_local_both_ways,
        microsandbox_ipv6_link_local_both_ways;
    /// Ours: a pod on a veth made by the test, moved into the pod's namespace by the
    /// `host-device` CNI plugin with `static` addresses (handlers `*-hostdev`): the guest's
    /// `eth0` has the pod IP, the veth's MTU (1450) and the default route; the host and the pod
    /// reach each other, 16 MiB cross each way intact; once the pod is removed the device is
    /// back on the host without a qdisc or filter of ours.
    host_device_pod_network => runc_host_device_pod_network,
        microsandbox_host_device_pod_network;
    /// Ours: two pods on one bridge network reach each other by pod IP.
    two_pods_talk_by_pod_ip => runc_two_pods_talk_by_pod_ip,
        microsandbox_two_pods_talk_by_pod_ip;
}

/// Ours: a shim killed with SIGKILL leaves no redirect behind: containerd's `delete` action
/// kills the VMM (the TAP dies with it) and removes our filter and qdisc from the pod's `eth0`,
/// before CNI tears the network down. microsandbox only.
#[test]
fn microsandbox_killed_shim_leaves_no_redirect() {
    run(Handler::Microsandbox, killed_shim_leaves_no_redirect);
}

/// critest's `webServerContainerPort`.
const WEB_SERVER_PORT: i32 = 80;

/// Whether this test process's containerd has the `*-net` handlers (1.7); else says why not.
fn has_net_handlers(t: &CriTest) -> bool {
    if t.cri
        .version()
        .is_ok_and(|v| !v.runtime_version.starts_with("1.7"))
    {
        msb_test_e2e::skip("the *-net handlers are containerd 1.7's (per-handler CNI)");
        return false;
    }
    true
}

/// critest's `createWebServerContainer` + `startContainer`, busybox `httpd` serving a page on
/// [`WEB_SERVER_PORT`].
fn web_server(t: &CriTest, pod: &str, config: &PodSandboxConfig, prefix: &str) -> String {
    let server = container_config(
        &unique_name(prefix),
        &[
            "sh",
            "-c",
            "mkdir -p /www && echo msb-pod-answers >/www/index.html && exec httpd -f -p 80 -h /www",
        ],
    );
    let c = t.create_container(pod, &server, config);
    t.start_container(&c);
    c
}

/// critest's `checkMainPage`: GET `/` at `addr` answers 200 (retried for a minute).
fn check_main_page(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let reply = (|| -> std::io::Result<String> {
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
            s.set_read_timeout(Some(Duration::from_secs(30)))?;
            s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
            let mut reply = String::new();
            s.read_to_string(&mut reply)?;
            Ok(reply)
        })();
        match reply {
            Ok(r) if r.starts_with("HTTP/1.1 200 OK\r\n") => return,
            Ok(r) if Instant::now() > deadline => panic!("GET http://{addr}/: {r}"),
            Err(e) if Instant::now() > deadline => panic!("GET http://{addr}/: {e}"),
            _ => std::thread::sleep(Duration::from_secs(1)),
        }
    }
}

/// A pod on the network with `mappings`; its id, config and IP.
fn pod_with_ports(t: &CriTest, mappings: Vec<PortMapping>) -> (String, PodSandboxConfig, Ipv4Addr) {
    let mut config = pod_config(&unique_name("create-PodSandbox-with-port-mapping"));
    config.port_mappings = mappings;
    let pod = t.run_pod_on_network(&config);
    let ip = pod_ip(t, &pod);
    (pod, config, ip)
}

fn pod_ip(t: &CriTest, pod: &str) -> Ipv4Addr {
    let status = t.pod_status(pod);
    let ip: Ipv4Addr = status
        .network
        .as_ref()
        .map(|n| n.ip.clone())
        .unwrap_or_default()
        .parse()
        .unwrap_or_else(|e| panic!("pod IP of {status:?}: {e}"));
    assert_eq!(&ip.octets()[..3], &[169, 254, 200], "{ip}");
    ip
}

fn port_mapping_with_only_container_port(t: &CriTest) {
    if !has_net_handlers(t) {
        return;
    }
    let (pod, config, ip) = pod_with_ports(
        t,
        vec![PortMapping {
            container_port: WEB_SERVER_PORT,
            ..Default::default()
        }],
    );
    web_server(t, &pod, &config, "container-for-container-port");
    check_main_page(SocketAddr::from((ip, 80)));
}

fn port_mapping_with_host_port_and_container_port(t: &CriTest) {
    if !has_net_handlers(t) {
        return;
    }
    let host_port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let (pod, config, _) = pod_with_ports(
        t,
        vec![PortMapping {
            container_port: WEB_SERVER_PORT,
            host_port: i32::from(host_port),
            ..Default::default()
        }],
    );
    web_server(t, &pod, &config, "container-for-host-port");
    check_main_page(SocketAddr::from(([127, 0, 0, 1], host_port)));
}

/// Runs `script` in `c` with `sh -c`; its stdout, after asserting exit 0 and no stderr.
fn sh(t: &CriTest, c: &str, script: &str) -> String {
    let r = t.exec(c, &["sh", "-c", script]);
    assert_eq!(
        (r.exit_code, String::from_utf8_lossy(&r.stderr).as_ref()),
        (0, ""),
        "{script}: {r:?}"
    );
    String::from_utf8(r.stdout).expect("utf-8 output")
}

/// Connects to `addr` until it answers (the server starts with its container), for 60 s.
fn connect(addr: SocketAddr) -> TcpStream {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
            Ok(s) => return s,
            Err(e) if Instant::now() > deadline => panic!("connect {addr}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// A busybox `httpd` on port 8080 in `pod` serving `page` as `/index.html`: the container,
/// running.
fn page_server(
    t: &CriTest,
    pod: &str,
    config: &PodSandboxConfig,
    prefix: &str,
    page: &str,
) -> String {
    let script =
        format!("mkdir -p /www && echo {page} >/www/index.html && exec httpd -f -p 8080 -h /www");
    let server = container_config(&unique_name(prefix), &["sh", "-c", &script]);
    let c = t.create_container(pod, &server, config);
    t.start_container(&c);
    t.wait_state(&c, ContainerState::ContainerRunning);
    c
}

/// `eth0` in container `c` as CNI made it: `ip`/24, `mtu`, the default route via `gateway`.
fn assert_eth0(t: &CriTest, c: &str, ip: Ipv4Addr, mtu: u32, gateway: Ipv4Addr) {
    let addrs = sh(t, c, "ip -o -4 addr show dev eth0");
    assert!(addrs.contains(&format!("inet {ip}/24")), "{addrs}");
    assert_eq!(
        sh(t, c, "cat /sys/class/net/eth0/mtu").trim(),
        mtu.to_string()
    );
    let routes = sh(t, c, "ip route");
    assert!(
        routes
            .lines()
            .any(|l| l.starts_with(&format!("default via {gateway} dev eth0"))),
        "{routes}"
    );
}

/// `GET /index.html` from `addr` (retried while it does not answer yet): the whole reply, a 200.
fn get_index(addr: SocketAddr) -> String {
    let mut s = connect(addr);
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(b"GET /index.html HTTP/1.0\r\n\r\n").unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    assert!(reply.starts_with("HTTP/1.1 200 OK\r\n"), "{reply}");
    reply
}

/// Container `c` connects to a listener on the host's `host` and is seen coming from `pod_ip`.
fn assert_pod_reaches_host(t: &CriTest, c: &str, host: Ipv4Addr, pod_ip: Ipv4Addr) {
    let listener = TcpListener::bind((host, 0)).expect("listen on the host's address");
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let (mut conn, peer) = listener.accept().unwrap();
        conn.write_all(b"msb-host-answers\n").unwrap();
        peer
    });
    let got = sh(t, c, &format!("nc {host} {port} </dev/null"));
    assert_eq!(got, "msb-host-answers\n");
    let peer = server.join().unwrap();
    assert_eq!(
        peer.ip(),
        std::net::IpAddr::V4(pod_ip),
        "the pod connects from its IP"
    );
}

/// `data` from the host to `nc -l -p <port>` in container `c` at `addr`, sha256-checked in
/// the pod; how long it took.
fn host_to_pod(t: &CriTest, c: &str, addr: SocketAddr, data: &[u8]) -> Duration {
    let want = sha256_hex(data);
    let script = format!("nc -l -p {} | sha256sum", addr.port());
    let (r, took) = std::thread::scope(|scope| {
        let receiver = scope.spawn(|| t.cri.exec_sync(c, &["sh", "-c", &script], 600));
        let mut s = connect(addr);
        let started = Instant::now();
        s.write_all(data).unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
        let r = receiver
            .join()
            .unwrap()
            .unwrap_or_else(|e| panic!("receiver exec: {e}"));
        (r, started.elapsed())
    });
    assert_eq!(
        (r.exit_code, String::from_utf8_lossy(&r.stdout).trim()),
        (0, format!("{want}  -").as_str()),
        "{r:?}"
    );
    took
}

/// `size` random bytes from container `c` (at `pod_ip`) to a listener on the host's `host`,
/// sha256-checked against the pod's own hash; how long the transfer took.
fn pod_to_host(t: &CriTest, c: &str, host: Ipv4Addr, pod_ip: Ipv4Addr, size: usize) -> Duration {
    let theirs = sh(
        t,
        c,
        &format!("head -c {size} /dev/urandom >/tmp/blob && sha256sum /tmp/blob"),
    );
    let listener = TcpListener::bind((host, 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    let receiver = std::thread::spawn(move || {
        let (mut conn, peer) = listener.accept().unwrap();
        let started = Instant::now();
        let mut got = Vec::with_capacity(size);
        conn.read_to_end(&mut got).unwrap();
        (got, peer, started.elapsed())
    });
    sh(t, c, &format!("nc {host} {port} </tmp/blob"));
    let (got, peer, took) = receiver.join().unwrap();
    assert_eq!(peer.ip(), std::net::IpAddr::V4(pod_ip));
    assert_eq!(got.len(), size);
    assert_eq!(
        theirs.split_whitespace().next(),
        Some(sha256_hex(&got).as_str())
    );
    took
}

fn pod_network_both_ways(t: &CriTest) {
    if t.cri
        .version()
        .is_ok_and(|v| !v.runtime_version.starts_with("1.7"))
    {
        msb_test_e2e::skip("the *-net handlers are containerd 1.7's (per-handler CNI)");
        return;
    }
    let config = pod_config(&unique_name("pod-network"));
    let pod = t.run_pod_on_network(&config);
    let status = t.pod_status(&pod);
    let ip: Ipv4Addr = status
        .network
        .as_ref()
        .map(|n| n.ip.clone())
        .unwrap_or_default()
        .parse()
        .unwrap_or_else(|e| panic!("pod IP of {status:?}: {e}"));
    assert_eq!(&ip.octets()[..3], &[169, 254, 200], "{ip}");

    let c = page_server(t, &pod, &config, "pod-network-server", "msb-pod-answers");
    // eth0 as CNI configured it: address, MTU, default route through the bridge.
    assert_eth0(t, &c, ip, 1400, GATEWAY);
    // The host reaches the pod's server at the pod IP; the pod reaches the host from it.
    assert!(get_index(SocketAddr::from((ip, 8080))).ends_with("msb-pod-answers\n"));
    assert_pod_reaches_host(t, &c, GATEWAY, ip);
}

fn multiple_containers_network(t: &CriTest) {
    if !has_net_handlers(t) {
        return;
    }
    let (pod, config, ip) = pod_with_ports(
        t,
        vec![PortMapping {
            container_port: WEB_SERVER_PORT,
            ..Default::default()
        }],
    );
    web_server(t, &pod, &config, "httpd");
    let busybox = t.create_container(
        &pod,
        &container_config(&unique_name("busybox"), &["sleep", "3600"]),
        &config,
    );
    t.start_container(&busybox);
    check_main_page(SocketAddr::from((ip, 80)));
    let addrs = sh(t, &busybox, "ip -o -4 addr show dev eth0");
    assert!(addrs.contains(&format!("inet {ip}/24")), "{addrs}");
    let page = sh(t, &busybox, "wget -q -O - http://127.0.0.1:80/");
    assert_eq!(page, "msb-pod-answers\n");
}

fn two_pods_talk_by_pod_ip(t: &CriTest) {
    if !has_net_handlers(t) {
        return;
    }
    let (server_pod, server_config, server_ip) = pod_with_ports(t, Vec::new());
    web_server(t, &server_pod, &server_config, "server");
    let (client_pod, client_config, client_ip) = pod_with_ports(t, Vec::new());
    assert_ne!(server_ip, client_ip);
    let client = t.create_container(
        &client_pod,
        &container_config(&unique_name("client"), &["sleep", "3600"]),
        &client_config,
    );
    t.start_container(&client);
    // The server starts with its container: retried for a minute.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = t.exec(
            &client,
            &["wget", "-q", "-O", "-", &format!("http://{server_ip}:80/")],
        );
        if r.exit_code == 0 {
            assert_eq!(String::from_utf8_lossy(&r.stdout), "msb-pod-answers\n");
            break;
        }
        assert!(Instant::now() < deadline, "pod to pod: {r:?}");
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// `(TAP present, eth0's ingress qdisc kind, our filters on eth0)` in the namespace `netns`.
fn redirect_state(netns: &std::path::Path) -> (bool, Option<String>, usize) {
    use msb_runtime::net::{in_netns, link, tc, TAP_NAME};
    in_netns(netns, |h| async move {
        let tap = link::by_name(&h, TAP_NAME).await.is_ok();
        let eth0 = link::by_name(&h, "eth0").await?.header.index;
        Ok((
            tap,
            tc::ingress_qdisc(&h, eth0).await?,
            tc::our_filters(&h, eth0).await?.len(),
        ))
    })
    .unwrap_or_else(|e| panic!("look into {}: {e}", netns.display()))
}

fn killed_shim_leaves_no_redirect(t: &CriTest) {
    if !has_net_handlers(t) {
        return;
    }
    // The sandbox alone: containerd's CRI reports the exit of the killed shim's own task (the
    // sandbox), not that of further containers it served.
    let (pod, _, _) = pod_with_ports(t, Vec::new());
    // The pod's shim runs in the sandbox's bundle, whose spec names the network namespace.
    let shim: u32 = msb_test_e2e::cri::processes_naming(std::slice::from_ref(&pod))
        .iter()
        .find(|l| l.contains("containerd-shim-microsandbox-v1"))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .expect("the pod's shim process");
    let spec: serde_json::Value = serde_json::from_slice(
        &std::fs::read(format!("/proc/{shim}/cwd/config.json")).expect("the sandbox's spec"),
    )
    .unwrap();
    let netns = spec["linux"]["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["type"] == "network")
        .and_then(|n| n["path"].as_str())
        .map(std::path::PathBuf::from)
        .expect("the sandbox's network namespace path");
    let (tap, qdisc, filters) = redirect_state(&netns);
    assert!(tap, "no TAP in {}", netns.display());
    assert_eq!(qdisc.as_deref(), Some("ingress"));
    assert!(filters > 0, "no redirect filter on eth0");

    let pid = i32::try_from(shim).unwrap();
    // SAFETY: sending SIGKILL to the shim process found above.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let state = redirect_state(&netns);
        if state == (false, None, 0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "left 60 s after the shim died (TAP, qdisc, our filters): {state:?}\n{}",
            t.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// 100 MiB.
const BULK: usize = 100 << 20;

fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn mb_per_s(bytes: usize, took: Duration) -> f64 {
    // Exact enough for a throughput figure: 100 MiB fits an f64 without loss.
    #[allow(clippy::cast_precision_loss)]
    let bytes = bytes as f64;
    bytes / 1e6 / took.as_secs_f64()
}

fn bulk_100_mib_each_way(t: &CriTest) {
    if !has_net_handlers(t) {
        return;
    }
    let (pod, config, ip) = pod_with_ports(t, Vec::new());
    let c = t.create_container(
        &pod,
        &container_config(&unique_name("bulk"), &["sleep", "3600"]),
        &config,
    );
    t.start_container(&c);

    // Host -> pod: the pod's `nc -l` pipes what arrives into sha256sum.
    let mut data = vec![0u8; BULK];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for chunk in data.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    let to_pod = host_to_pod(t, &c, SocketAddr::from((ip, 9000)), &data);

    // Pod -> host: a file of random bytes, its hash, then sent to a listener on the bridge.
    let to_host = pod_to_host(t, &c, GATEWAY, ip, BULK);
    eprintln!(
        "{}: 100 MiB host -> pod {:.1} MB/s ({to_pod:.2?}), pod -> host {:.1} MB/s ({to_host:.2?})",
        t.handler.name(),
        mb_per_s(BULK, to_pod),
        mb_per_s(BULK, to_host)
    );
}

/// 8 MiB, in the port-forward case.
const FORWARDED: usize = 8 << 20;

fn port_forward_8_mib_each_way(t: &CriTest) {
    if !has_net_handlers(t) {
        return;
    }
    let (pod, config, _) = pod_with_ports(t, Vec::new());
    let c = t.create_container(
        &pod,
        &container_config(&unique_name("forwarded"), &["sleep", "3600"]),
        &config,
    );
    t.start_container(&c);

    // Pod -> client: `nc -l` sends a file and closes; the session ends with it.
    let theirs = sh(
        t,
        &c,
        &format!("head -c {FORWARDED} /dev/urandom >/tmp/blob && sha256sum /tmp/blob"),
    );
    let got: Forwarded = std::thread::scope(|scope| {
        let server = scope.spawn(|| {
            t.cri
                .exec_sync(&c, &["sh", "-c", "nc -l -p 9200 </tmp/blob"], 120)
        });
        let got = t.port_forward_session(&pod, 9200, |mut pf| pf.wait(Duration::from_secs(120)));
        assert_eq!(got.error, "", "{}", t.log());
        let r = server
            .join()
            .unwrap()
            .unwrap_or_else(|e| panic!("server exec: {e}"));
        assert_eq!(r.exit_code, 0, "{r:?}");
        got
    });
    assert_eq!(
        (got.error.as_str(), got.data.len()),
        ("", FORWARDED),
        "{}",
        got.error
    );
    assert_eq!(
        theirs.split_whitespace().next(),
        Some(sha256_hex(&got.data).as_str())
    );

    // Client -> pod: `nc -l` pipes what arrives into sha256sum until the session ends.
    let data: Vec<u8> = (0..FORWARDED)
        .map(|i| u8::try_from(i % 251).unwrap_or(0))
        .collect();
    let r = std::thread::scope(|scope| {
        let receiver = scope.spawn(|| {
            t.cri
                .exec_sync(&c, &["sh", "-c", "nc -l -p 9201 | sha256sum"], 120)
        });
        let end = t.port_forward_session(&pod, 9201, |mut pf| {
            for chunk in data.chunks(64 << 10) {
                // A refused session ends at once: its error tells, below.
                if pf.send(chunk).is_err() {
                    break;
                }
            }
            pf.finish(Duration::from_secs(120))
        });
        assert_eq!(end.error, "", "{end:?}");
        receiver
            .join()
            .unwrap()
            .unwrap_or_else(|e| panic!("receiver exec: {e}"))
    });
    assert_eq!(
        (r.exit_code, String::from_utf8_lossy(&r.stdout).trim()),
        (0, format!("{}  -", sha256_hex(&data)).as_str()),
        "{r:?}"
    );
}

/// The host bridge of the `*-net` handlers (`hack/lib/containerd.sh`).
const BRIDGE: &str = "msb-cni0";

/// The link-local address the kernel gives an interface with `mac` (EUI-64).
fn eui64_link_local(mac: &str) -> Ipv6Addr {
    let m: Vec<u8> = mac
        .trim()
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).unwrap_or_else(|e| panic!("MAC {mac:?}: {e}")))
        .collect();
    assert_eq!(m.len(), 6, "MAC {mac:?}");
    Ipv6Addr::new(
        0xfe80,
        0,
        0,
        0,
        u16::from_be_bytes([m[0] ^ 2, m[1]]),
        u16::from_be_bytes([m[2], 0xff]),
        u16::from_be_bytes([0xfe, m[3]]),
        u16::from_be_bytes([m[4], m[5]]),
    )
}

/// The link-local address of host interface `name` (`/proc/net/if_inet6`) and its index.
fn host_link_local(name: &str) -> (Ipv6Addr, u32) {
    let table = std::fs::read_to_string("/proc/net/if_inet6").expect("/proc/net/if_inet6");
    for line in table.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() == 6 && f[5] == name && f[3] == "20" {
            let bits = u128::from_str_radix(f[0], 16).expect("an address in hex");
            let index = u32::from_str_radix(f[1], 16).expect("an index in hex");
            return (Ipv6Addr::from(bits), index);
        }
    }
    panic!("{name} has no link-local address:\n{table}");
}

fn ipv6_link_local_both_ways(t: &CriTest) {
    if !has_net_handlers(t) {
        return;
    }
    let (pod, config, _) = pod_with_ports(t, Vec::new());
    let c = page_server(t, &pod, &config, "ipv6-server", "msb-pod-answers-v6");

    // The guest derived the same link-local address from the same MAC as the veth had.
    // (The kernel adds it when the interface comes up; under load that may be a moment after
    // the container started.)
    let ll = eui64_link_local(&sh(t, &c, "cat /sys/class/net/eth0/address"));
    let mut addrs = String::new();
    let has_ll = msb_test_e2e::ctr::eventually(20, || {
        addrs = sh(t, &c, "ip -o -6 addr show dev eth0");
        addrs.contains(&format!("inet6 {ll}/64 scope link")) && !addrs.contains("tentative")
    });
    assert!(
        has_ll,
        "no {ll} on eth0: {addrs:?}\n{}",
        sh(t, &c, "ip -o addr; ip link")
    );

    // The host reaches the pod's server at that address, through the bridge.
    let (bridge_ll, bridge_index) = host_link_local(BRIDGE);
    let reply = get_index(SocketAddr::V6(SocketAddrV6::new(ll, 8080, 0, bridge_index)));
    assert!(reply.ends_with("msb-pod-answers-v6\n"), "{reply}");

    // The pod reaches the host's bridge at its link-local address.
    let ping = t.exec(
        &c,
        &[
            "ping",
            "-6",
            "-c",
            "1",
            "-W",
            "10",
            "-I",
            "eth0",
            &bridge_ll.to_string(),
        ],
    );
    assert_eq!(ping.exit_code, 0, "{ping:?}");
    assert!(
        String::from_utf8_lossy(&ping.stdout).contains("1 packets received"),
        "{ping:?}"
    );
}

/// The veth pair of a `*-hostdev` handler (`hack/lib/containerd.sh`): `dev` is moved into the
/// pod by `host-device`, `dev-h` stays on the host with 169.254.`net`.1/24; both MTU 1450.
/// Deleted on drop (with either end goes the other).
struct HostDev {
    host_end: String,
}

impl HostDev {
    fn make(dev: &str, net: u8) -> HostDev {
        let host_end = format!("{dev}-h");
        let ip = |args: &[&str]| {
            let o = std::process::Command::new("ip")
                .args(args)
                .output()
                .unwrap();
            assert!(
                o.status.success(),
                "ip {args:?}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        };
        // A pair a killed run left behind.
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &host_end])
            .output();
        let _ = std::process::Command::new("ip")
            .args(["link", "del", dev])
            .output();
        ip(&[
            "link", "add", dev, "mtu", "1450", "type", "veth", "peer", "name", &host_end, "mtu",
            "1450",
        ]);
        ip(&[
            "addr",
            "add",
            &format!("169.254.{net}.1/24"),
            "dev",
            &host_end,
        ]);
        ip(&["link", "set", &host_end, "up"]);
        HostDev { host_end }
    }
}

impl Drop for HostDev {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &self.host_end])
            .output();
    }
}

fn host_device_pod_network(t: &CriTest) {
    if !has_net_handlers(t) {
        return;
    }
    let (dev, net) = match t.handler {
        Handler::Runc => ("msbhd-runc", 201),
        Handler::Microsandbox => ("msbhd-msb", 202),
    };
    let _veth = HostDev::make(dev, net);
    let host = Ipv4Addr::new(169, 254, net, 1);
    let config = pod_config(&unique_name("host-device"));
    let pod = t.run_pod_on(&config, "hostdev");
    let ip = Ipv4Addr::new(169, 254, net, 2);
    let status = t.pod_status(&pod);
    assert_eq!(
        status.network.as_ref().map(|n| n.ip.as_str()),
        Some(ip.to_string().as_str()),
        "{status:?}"
    );
    let c = page_server(
        t,
        &pod,
        &config,
        "host-device-server",
        "msb-hostdev-answers",
    );
    // eth0 as CNI configured it on the moved device.
    assert_eth0(t, &c, ip, 1450, host);
    // The host and the pod reach each other; 16 MiB cross each way intact.
    assert!(get_index(SocketAddr::from((ip, 8080))).ends_with("msb-hostdev-answers\n"));
    assert_pod_reaches_host(t, &c, host, ip);
    let data: Vec<u8> = (0..16 << 20)
        .map(|i| u8::try_from(i % 253).unwrap_or(0))
        .collect();
    host_to_pod(t, &c, SocketAddr::from((ip, 9000)), &data);
    pod_to_host(t, &c, host, ip, 16 << 20);

    // Removed: CNI moved the device back to the host; nothing of ours is left on it.
    t.stop_pod(&pod);
    t.remove_pod(&pod);
    let dev = dev.to_owned();
    let (qdisc, filters) = msb_runtime::net::in_netns(
        std::path::Path::new("/proc/self/ns/net"),
        move |h| async move {
            use msb_runtime::net::{link, tc};
            let index = link::by_name(&h, &dev).await?.header.index;
            Ok((
                tc::ingress_qdisc(&h, index).await?,
                tc::our_filters(&h, index).await?.len(),
            ))
        },
    )
    .unwrap_or_else(|e| panic!("the device back on the host: {e}"));
    assert_eq!((qdisc, filters), (None, 0));
}
