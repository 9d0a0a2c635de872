//! `core.port.*`: port forwarding messages round-trip with the flags the session rules need.

use msb_protocol::port::*;
use msb_protocol::types::implied_flags;
use msb_protocol::{Flags, Message, Payload};

fn round_trip<P: Payload + PartialEq + std::fmt::Debug>(p: &P) -> Message {
    let msg = Message::new(9, p).unwrap();
    let back = Message::from_frame(&msg.to_frame()).unwrap();
    assert_eq!(&back.decode::<P>().unwrap(), p);
    back
}

#[test]
fn a_port_session_starts_with_connect_and_ends_with_closed() {
    assert_eq!(
        round_trip(&PortConnect { port: 8080 }).flags,
        Flags::SESSION_START
    );
    assert_eq!(round_trip(&PortConnected {}).flags, Flags::NONE);
    let data = PortData {
        data: b"GET / HTTP/1.0\r\n\r\n".to_vec(),
    };
    assert_eq!(round_trip(&data).kind, "core.port.data");
    assert_eq!(round_trip(&PortAck { bytes: 18 }).flags, Flags::NONE);
    assert_eq!(round_trip(&PortClose {}).flags, Flags::NONE);
    let closed = PortClosed {
        error: Some("connect 127.0.0.1:8080: Connection refused".into()),
    };
    assert_eq!(round_trip(&closed).flags, Flags::TERMINAL);
    assert_eq!(implied_flags("core.port.closed"), Some(Flags::TERMINAL));
}

#[test]
fn listening_ports_travel_on_the_control_id() {
    let msg = Message::new(
        msb_protocol::CONTROL_ID,
        &PortListening {
            ports: vec![22, 80, 8080],
        },
    )
    .unwrap();
    assert_eq!(msg.kind, "core.port.listening");
    assert_eq!(msg.flags, Flags::NONE);
    let back = Message::from_frame(&msg.to_frame()).unwrap();
    assert_eq!(
        back.decode::<PortListening>().unwrap().ports,
        [22, 80, 8080]
    );
}

#[test]
fn a_closed_without_an_error_field_decodes() {
    // A peer that leaves `error` out (an older or a minimal one) ended cleanly.
    #[derive(serde::Serialize, serde::Deserialize)]
    struct Bare {}
    impl Payload for Bare {
        const TYPE: &'static str = "core.port.closed";
        const FLAGS: Flags = Flags::TERMINAL;
    }
    let msg = Message::from_frame(&Message::new(3, &Bare {}).unwrap().to_frame()).unwrap();
    assert_eq!(
        msg.decode::<PortClosed>().unwrap(),
        PortClosed { error: None }
    );
}
