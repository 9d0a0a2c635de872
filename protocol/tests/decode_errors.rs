//! Each malformed input named by the foundation issue yields its own, descriptive error.

use msb_protocol::message::decode_message_exact;
use msb_protocol::types::{ExecExited, ExecStdout, Ready};
use msb_protocol::{Flags, Frame, FrameError, Message, MessageError, ProtocolError};

fn frame_bytes(len: u32, id: u32, flags: u8, body: &[u8]) -> Vec<u8> {
    let mut v = len.to_be_bytes().to_vec();
    v.extend_from_slice(&id.to_be_bytes());
    v.push(flags);
    v.extend_from_slice(body);
    v
}

fn envelope(t: &str, p: &[u8]) -> Vec<u8> {
    // {"v": 7, "t": t, "p": p} written by hand so the test does not depend on the encoder.
    let mut b = vec![0xa3, 0x61, b'v', 0x07, 0x61, b't'];
    assert!(t.len() < 24);
    b.push(0x60 | u8::try_from(t.len()).unwrap());
    b.extend_from_slice(t.as_bytes());
    b.extend_from_slice(&[0x61, b'p']);
    assert!(p.len() < 24);
    b.push(0x40 | u8::try_from(p.len()).unwrap());
    b.extend_from_slice(p);
    b
}

#[test]
fn len_zero() {
    let err = decode_message_exact(&frame_bytes(0, 1, 0, &[])).unwrap_err();
    assert!(matches!(
        err,
        ProtocolError::Frame(FrameError::LengthTooShort { len: 0 })
    ));
    assert_eq!(
        err.to_string(),
        "frame length 0 is below the minimum of 5 bytes (id + flags)"
    );
}

#[test]
fn len_four() {
    let err = decode_message_exact(&frame_bytes(4, 1, 0, &[])).unwrap_err();
    assert!(matches!(
        err,
        ProtocolError::Frame(FrameError::LengthTooShort { len: 4 })
    ));
}

#[test]
fn len_above_four_mib() {
    let err = decode_message_exact(&(4 * 1024 * 1024 + 1u32).to_be_bytes()).unwrap_err();
    assert!(matches!(
        err,
        ProtocolError::Frame(FrameError::LengthTooLong { len: 4_194_305 })
    ));
    assert_eq!(
        err.to_string(),
        "frame length 4194305 exceeds the maximum of 4194304 bytes"
    );
}

#[test]
fn undefined_flags_byte() {
    let body = envelope("core.ping", &[0xa0]);
    let err = decode_message_exact(&frame_bytes(
        5 + u32::try_from(body.len()).unwrap(),
        3,
        0x10,
        &body,
    ))
    .unwrap_err();
    assert!(matches!(
        err,
        ProtocolError::Frame(FrameError::UndefinedFlags { id: 3, bits: 0x10 })
    ));
    assert_eq!(err.to_string(), "frame 3 has undefined flag bits set: 0x10");
}

#[test]
fn flags_that_do_not_match_the_type() {
    // core.exec.exited must be terminal; this one claims session start.
    let body = envelope(
        "core.exec.exited",
        &[0xa1, 0x64, b'c', b'o', b'd', b'e', 0x07],
    );
    let err = decode_message_exact(&frame_bytes(
        5 + u32::try_from(body.len()).unwrap(),
        9,
        0x02,
        &body,
    ))
    .unwrap_err();
    let ProtocolError::Message(m) = &err else {
        panic!("{err}")
    };
    assert!(matches!(
        m,
        MessageError::FlagsMismatch { id: 9, expected, actual, .. }
            if *expected == Flags::TERMINAL && *actual == Flags::SESSION_START
    ));
    assert_eq!(m.error_kind(), msb_protocol::types::ErrorKind::InvalidFlags);
    assert_eq!(
        err.to_string(),
        "frame 9: message type core.exec.exited requires flags terminal but carries session_start"
    );
}

#[test]
fn body_that_is_not_a_map() {
    for body in [
        &[0x07][..],
        &[0x83, 0x01, 0x02, 0x03][..],
        &b"\x65hello"[..],
    ] {
        let err = decode_message_exact(&frame_bytes(
            5 + u32::try_from(body.len()).unwrap(),
            2,
            0,
            body,
        ))
        .unwrap_err();
        let ProtocolError::Message(m) = &err else {
            panic!("{err}")
        };
        assert!(
            matches!(m, MessageError::MalformedEnvelope { id: 2, .. }),
            "{m}"
        );
        assert_eq!(
            m.error_kind(),
            msb_protocol::types::ErrorKind::MalformedMessage
        );
        assert!(err
            .to_string()
            .starts_with("frame 2: body is not a CBOR envelope map {v, t, p}: "));
    }
}

#[test]
fn truncated_frame() {
    let body = envelope("core.ping", &[0xa0]);
    let full = frame_bytes(5 + u32::try_from(body.len()).unwrap(), 1, 0, &body);
    let err = decode_message_exact(&full[..full.len() - 3]).unwrap_err();
    assert!(matches!(
        err,
        ProtocolError::Frame(FrameError::Truncated { got, expected }) if got == full.len() - 3 && expected == full.len()
    ));
}

#[test]
fn truncated_payload() {
    // A well-framed envelope whose payload is a map cut short after its first key.
    let payload = [0xa1, 0x64, b'c', b'o', b'd', b'e'];
    let body = envelope("core.exec.exited", &payload);
    let msg = decode_message_exact(&frame_bytes(
        5 + u32::try_from(body.len()).unwrap(),
        4,
        0x01,
        &body,
    ))
    .unwrap();
    let err = msg.decode::<ExecExited>().unwrap_err();
    assert!(
        matches!(err, MessageError::InvalidPayload { id: 4, .. }),
        "{err}"
    );
    assert_eq!(
        err.error_kind(),
        msb_protocol::types::ErrorKind::InvalidPayload
    );
    assert!(err
        .to_string()
        .starts_with("frame 4: payload of core.exec.exited is invalid: "));
}

#[test]
fn every_case_has_a_distinct_message() {
    let cases: Vec<String> = vec![
        decode_message_exact(&frame_bytes(0, 1, 0, &[]))
            .unwrap_err()
            .to_string(),
        decode_message_exact(&frame_bytes(4, 1, 0, &[]))
            .unwrap_err()
            .to_string(),
        decode_message_exact(&(4 * 1024 * 1024 + 1u32).to_be_bytes())
            .unwrap_err()
            .to_string(),
        decode_message_exact(&frame_bytes(5, 1, 0xf0, &[]))
            .unwrap_err()
            .to_string(),
        decode_message_exact(&frame_bytes(6, 1, 0, &[0x07]))
            .unwrap_err()
            .to_string(),
        decode_message_exact(&frame_bytes(9, 1, 0, &[0x07]))
            .unwrap_err()
            .to_string(),
    ];
    for (i, a) in cases.iter().enumerate() {
        for b in &cases[i + 1..] {
            assert_ne!(a, b);
        }
    }
}

#[test]
fn golden_exec_stdout_frame() {
    let msg = Message::new(
        0x10,
        &ExecStdout {
            data: b"hi".to_vec(),
        },
    )
    .unwrap();
    let bytes = msg.to_frame().to_bytes().unwrap();
    let expected: Vec<u8> = [
        &[0, 0, 0, 0x28][..],      // len = 5 + 35
        &[0, 0, 0, 0x10],          // id
        &[0x00],                   // flags: none
        &[0xa3, 0x61, b'v', 0x07], // {"v": 7,
        &[0x61, b't', 0x70],       //  "t": text(16)
        b"core.exec.stdout",
        &[0x61, b'p', 0x49],                                     //  "p": bytes(9)
        &[0xa1, 0x64, b'd', b'a', b't', b'a', 0x42, b'h', b'i'], // {"data": h'6869'}
    ]
    .concat();
    assert_eq!(bytes.as_ref(), expected.as_slice());
}

#[test]
fn golden_ready_round_trip_ignores_unknown_fields() {
    let ready = Ready {
        boot_time_ns: 1,
        init_time_ns: 2,
        ready_time_ns: 3,
        agent_version: "0.1.0".into(),
        kernel_release: "6.1".into(),
        boot_id: "b".into(),
    };
    let msg = Message::new(0, &ready).unwrap();
    let frame = msg.to_frame();
    let back = Message::from_frame(&frame).unwrap();
    assert_eq!(back.decode::<Ready>().unwrap(), ready);

    // A newer peer adds a field; an older one without `kernel_release`/`boot_id` still decodes.
    #[derive(serde::Serialize)]
    struct Newer<'a> {
        boot_time_ns: u64,
        init_time_ns: u64,
        ready_time_ns: u64,
        agent_version: &'a str,
        future_field: u32,
    }
    let mut p = Vec::new();
    ciborium::into_writer(
        &Newer {
            boot_time_ns: 1,
            init_time_ns: 2,
            ready_time_ns: 3,
            agent_version: "x",
            future_field: 9,
        },
        &mut p,
    )
    .unwrap();
    let msg = Message {
        payload: p.into(),
        ..msg
    };
    let r = msg.decode::<Ready>().unwrap();
    assert_eq!((r.ready_time_ns, r.kernel_release.as_str()), (3, ""));
}

#[test]
fn unknown_type_passes_framing_and_is_left_to_the_receiver() {
    let body = envelope("core.future", &[0xa0]);
    let msg = decode_message_exact(&frame_bytes(
        5 + u32::try_from(body.len()).unwrap(),
        5,
        0x07,
        &body,
    ))
    .unwrap();
    assert_eq!(msg.kind, "core.future");
    let err = msg.decode::<ExecExited>().unwrap_err();
    assert_eq!(
        err.error_kind(),
        msb_protocol::types::ErrorKind::UnsupportedMessageType
    );
}

#[test]
fn shutdown_payload_is_cbor_null() {
    let msg = Message::new(0, &msb_protocol::types::Shutdown).unwrap();
    assert_eq!(msg.payload.as_ref(), &[0xf6]);
    assert_eq!(msg.flags, Flags::SHUTDOWN);
    let _ = Frame::new(0, Flags::NONE, vec![]);
}

#[test]
fn direct_encoding_matches_frame_encoding() {
    let msg = Message::new(
        77,
        &ExecStdout {
            data: vec![5; 70_000],
        },
    )
    .unwrap();
    let mut direct = bytes::BytesMut::from(&b"prefix"[..]);
    msg.encode_into(&mut direct).unwrap();
    assert_eq!(&direct[..6], b"prefix");
    assert_eq!(&direct[6..], msg.to_frame().to_bytes().unwrap().as_ref());

    let too_big = Message::new(
        1,
        &ExecStdout {
            data: vec![0; 4 * 1024 * 1024],
        },
    )
    .unwrap();
    let mut dst = bytes::BytesMut::from(&b"keep"[..]);
    assert!(matches!(
        too_big.encode_into(&mut dst),
        Err(FrameError::LengthTooLong { .. })
    ));
    assert_eq!(
        dst.as_ref(),
        b"keep",
        "a refused frame leaves nothing behind"
    );
}

#[test]
fn exec_request_default_matches_an_empty_map() {
    let mut p = Vec::new();
    ciborium::into_writer(&serde_json::json!({"cmd": ""}), &mut p).unwrap();
    let msg = Message {
        id: 1,
        flags: Flags::SESSION_START,
        version: 7,
        kind: "core.exec.request".into(),
        payload: p.into(),
    };
    assert_eq!(
        msg.decode::<msb_protocol::types::ExecRequest>().unwrap(),
        msb_protocol::types::ExecRequest::default()
    );
}
