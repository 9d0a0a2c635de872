//! `core.net.configure`: a full network description survives the wire, and its addresses have
//! the CBOR shape docs/PROTOCOL.md gives (serde's `IpAddr`: `{"V4": [a, b, c, d]}`).

use msb_protocol::net::*;
use msb_protocol::types::implied_flags;
use msb_protocol::{Flags, Message, Payload};

fn sample() -> NetConfigure {
    NetConfigure {
        interfaces: vec![NetInterface {
            name: "eth0".into(),
            mac: [0x02, 0x6d, 0x73, 0x62, 0, 1],
            mtu: 1400,
            addresses: vec![
                NetAddress {
                    address: "169.254.200.7".parse().unwrap(),
                    prefix_len: 24,
                },
                NetAddress {
                    address: "fd00::7".parse().unwrap(),
                    prefix_len: 64,
                },
            ],
            routes: vec![NetRoute {
                destination: NetAddress {
                    address: "0.0.0.0".parse().unwrap(),
                    prefix_len: 0,
                },
                gateway: Some("169.254.200.1".parse().unwrap()),
                mtu: Some(1300),
                source: None,
            }],
            neighbours: vec![NetNeighbour {
                address: "169.254.1.1".parse().unwrap(),
                mac: [0xee; 6],
            }],
        }],
    }
}

#[test]
fn a_network_description_round_trips() {
    let msg = Message::new(7, &sample()).unwrap();
    assert_eq!(msg.kind, "core.net.configure");
    assert_eq!(msg.flags, Flags::SESSION_START);
    let back = Message::from_frame(&msg.to_frame()).unwrap();
    assert_eq!(back.decode::<NetConfigure>().unwrap(), sample());
    assert_eq!(implied_flags(NetConfigured::TYPE), Some(Flags::TERMINAL));
    assert_eq!(implied_flags(NetFailed::TYPE), Some(Flags::TERMINAL));
}

#[test]
fn addresses_are_serde_ip_addrs_in_cbor() {
    let mut bytes = Vec::new();
    ciborium::into_writer(
        &NetAddress {
            address: "169.254.200.7".parse().unwrap(),
            prefix_len: 24,
        },
        &mut bytes,
    )
    .unwrap();
    let value: ciborium::Value = ciborium::from_reader(bytes.as_slice()).unwrap();
    let text = format!("{value:?}");
    assert_eq!(
        text,
        r#"Map([(Text("address"), Map([(Text("V4"), Array([Integer(Integer(169)), Integer(Integer(254)), Integer(Integer(200)), Integer(Integer(7))]))])), (Text("prefix_len"), Integer(Integer(24)))])"#
    );
}

#[test]
fn macs_print_as_ip_link_does() {
    assert_eq!(
        format_mac(&[0x02, 0x6d, 0x73, 0x62, 0, 0x0a]),
        "02:6d:73:62:00:0a"
    );
}
