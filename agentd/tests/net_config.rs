//! `msb_agentd::net::configure` on the host, as root, in a network namespace of the test's own
//! (addresses in 169.254.0.0/16): the interface is found by MAC, renamed, given its MTU,
//! addresses, neighbour and routes (gateway routes listed first, added after the link routes
//! they need). Checked with `ip`, whose output is what a person would look at.

use std::process::Command;

use msb_protocol::net::{NetAddress, NetConfigure, NetInterface, NetNeighbour, NetRoute};

const MAC: [u8; 6] = [0x02, 0x6d, 0x73, 0x62, 0x00, 0x09];

fn ip(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(out.status.success(), "ip {args:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

fn addr(s: &str, prefix_len: u8) -> NetAddress {
    NetAddress {
        address: s.parse().unwrap(),
        prefix_len,
    }
}

#[test]
fn interface_found_by_mac_gets_its_name_mtu_addresses_neighbours_and_routes() {
    if !nix::unistd::geteuid().is_root() || Command::new("ip").arg("-V").output().is_err() {
        msb_test_e2e::require("needs root and iproute2 (a network namespace of the test's own)");
        return;
    }
    // A thread of its own in a new network namespace; `ip` children inherit it.
    std::thread::spawn(|| {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        ip(&[
            "link",
            "add",
            "vnet9",
            "address",
            "02:6d:73:62:00:09",
            "type",
            "veth",
            "peer",
            "name",
            "peer9",
        ]);
        ip(&["link", "set", "peer9", "up"]);
        let gw = "169.254.80.1".parse().unwrap();
        let cfg = NetConfigure {
            interfaces: vec![NetInterface {
                name: "eth0".into(),
                mac: MAC,
                mtu: 1400,
                addresses: vec![addr("169.254.80.2", 24)],
                routes: vec![
                    NetRoute {
                        destination: addr("0.0.0.0", 0),
                        gateway: Some(gw),
                        mtu: None,
                        source: None,
                    },
                    NetRoute {
                        destination: addr("169.254.81.0", 24),
                        gateway: Some(gw),
                        mtu: Some(1300),
                        source: None,
                    },
                    NetRoute {
                        destination: addr("169.254.82.0", 24),
                        gateway: None,
                        mtu: None,
                        source: None,
                    },
                ],
                neighbours: vec![NetNeighbour {
                    address: gw,
                    mac: [0x02, 0x6d, 0x73, 0x62, 0x00, 0x01],
                }],
            }],
        };
        msb_agentd::net::configure(&cfg).expect("configure");
        // Twice: a repeated request (a retried boot) changes nothing and does not fail.
        msb_agentd::net::configure(&cfg).expect("configure again");

        let link = ip(&["-o", "link", "show", "eth0"]);
        assert!(link.contains("mtu 1400"), "{link}");
        assert!(link.contains("state UP") || link.contains(",UP"), "{link}");
        assert!(link.contains("02:6d:73:62:00:09"), "{link}");
        let addrs = ip(&["-o", "-4", "addr", "show", "dev", "eth0"]);
        assert!(addrs.contains("inet 169.254.80.2/24"), "{addrs}");
        // `proto boot` (ours, as `ip route add`'s default) is what `ip` leaves unsaid.
        let routes = ip(&["route", "show"]);
        let mut lines: Vec<&str> = routes.lines().map(str::trim).collect();
        lines.sort();
        assert_eq!(
            lines,
            vec![
                "169.254.80.0/24 dev eth0 proto kernel scope link src 169.254.80.2",
                "169.254.81.0/24 via 169.254.80.1 dev eth0 mtu 1300",
                "169.254.82.0/24 dev eth0 scope link",
                "default via 169.254.80.1 dev eth0",
            ],
            "{routes}"
        );
        let neigh = ip(&["neigh", "show", "dev", "eth0"]);
        assert!(
            neigh.contains("169.254.80.1 lladdr 02:6d:73:62:00:01 PERMANENT"),
            "{neigh}"
        );

        // An unknown MAC is an error that names it (after the wait for a late device).
        let mut missing = cfg.clone();
        missing.interfaces[0].mac = [2, 0, 0, 0, 0, 0x99];
        let err = msb_agentd::net::configure(&missing).unwrap_err();
        assert_eq!(
            err.to_string(),
            "no interface with MAC 02:00:00:00:00:99 (is virtio_net loaded?)"
        );
    })
    .join()
    .unwrap();
}
