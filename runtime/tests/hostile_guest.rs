//! A hostile guest against the agent client (issue: a guest root controls everything it sends).
//! Well-framed but lying traffic: replies of the wrong type, frames forged on ids the host never
//! opened, a payload that fills a frame, endless output to a session nobody reads. The host
//! neither panics nor hangs; what a lie costs is its own session, or at worst the time of a
//! deadline; malformed framing itself is `fake_guest.rs`'s.

use std::time::Duration;

use msb_protocol::types::*;
use msb_protocol::{Flags, Payload};
use msb_runtime::agent::{AgentError, Deadlines, ExecEvent};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

mod common;
use common::{msg, read_msg};

/// Longer than any deadline here: reaching it means the host hung.
const HANG: Duration = Duration::from_secs(20);

const SHORT: Deadlines = Deadlines {
    reply: Duration::from_millis(500),
    work: Duration::from_millis(800),
    send: Duration::from_millis(800),
};

/// Answers the next request, whatever it is, with `core.pong`.
async fn pong_next(guest: &mut UnixStream) {
    let m = read_msg(guest).await;
    guest.write_all(&msg(m.id, &Pong {})).await.unwrap();
}

#[tokio::test]
async fn replies_of_the_wrong_type_and_forged_ids_are_errors_not_panics() {
    let (client, mut guest) = common::connected(SHORT).await;
    // Frames on ids the host never opened, a terminal one included, and an event naming some
    // container: dropped or broadcast, nothing else.
    let mut forged = Vec::new();
    for id in [1u32, 77, u32::MAX - 1, msb_protocol::RELAY_ID_STEP + 5] {
        forged.extend(msg(id, &ExecExited { code: 0 }));
        forged.extend(msg(
            id,
            &ExecStdout {
                data: b"x".to_vec(),
            },
        ));
    }
    forged.extend(msg(
        0,
        &ContainerOom {
            id: "another-pods-container".into(),
        },
    ));
    guest.write_all(&forged).await.unwrap();

    // A request answered with a terminal message of another request's type.
    let ask = tokio::spawn({
        let client = client.clone();
        async move { client.container_pause("c1").await }
    });
    let m = read_msg(&mut guest).await;
    guest
        .write_all(&msg(m.id, &ExecExited { code: 3 }))
        .await
        .unwrap();
    let got = tokio::time::timeout(HANG, ask)
        .await
        .expect("no hang")
        .unwrap();
    match got {
        Err(AgentError::Protocol(m)) => {
            assert_eq!(m, "core.exec.exited in reply to core.container.pause")
        }
        other => panic!("{other:?}"),
    }

    // The connection is whole: the next request is served.
    let ping = tokio::spawn({
        let client = client.clone();
        async move { client.ping().await }
    });
    pong_next(&mut guest).await;
    tokio::time::timeout(HANG, ping)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(client.closed_reason(), None);
}

/// A payload type that is `core.exec.exited` with a field the host does not know: 3.5 MiB of
/// it, close to the 4 MiB frame bound.
#[derive(serde::Serialize, serde::Deserialize)]
struct FatExited {
    code: i32,
    junk: String,
}

impl Payload for FatExited {
    const TYPE: &'static str = "core.exec.exited";
    const FLAGS: Flags = Flags::TERMINAL;
}

#[tokio::test]
async fn a_huge_exit_payload_is_bounded_by_the_frame_and_decoded() {
    let (client, mut guest) = common::connected(SHORT).await;
    let mut exec = client
        .exec(&ExecRequest {
            cmd: "x".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let id = read_msg(&mut guest).await.id;
    guest
        .write_all(&msg(id, &ExecStarted { pid: 9 }))
        .await
        .unwrap();
    let fat = FatExited {
        code: 4,
        junk: "j".repeat(3 << 20 | 1 << 19),
    };
    guest.write_all(&msg(id, &fat)).await.unwrap();
    assert_eq!(exec.next().await.unwrap(), ExecEvent::Started(9));
    let end = tokio::time::timeout(HANG, exec.next())
        .await
        .expect("no hang");
    assert_eq!(end.unwrap(), ExecEvent::Exited(4));
    assert_eq!(client.closed_reason(), None);
}

#[tokio::test]
async fn endless_output_nobody_reads_costs_its_own_session_only() {
    let (client, guest) = common::connected(SHORT).await;
    let (mut rd, mut wr) = guest.into_split();
    let exec = client
        .exec(&ExecRequest {
            cmd: "yes".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let id = {
        let mut len = [0u8; 4];
        rd.read_exact(&mut len).await.unwrap();
        let mut rest = vec![0u8; u32::from_be_bytes(len) as usize];
        rd.read_exact(&mut rest).await.unwrap();
        u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]])
    };
    // The guest floods the session until told to stop; the host never reads `exec`.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flood = tokio::spawn({
        let stop = stop.clone();
        async move {
            let frame = msg(
                id,
                &ExecStdout {
                    data: vec![b'y'; 64 << 10],
                },
            );
            wr.write_all(&msg(id, &ExecStarted { pid: 1 }))
                .await
                .unwrap();
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                wr.write_all(&frame).await.unwrap();
            }
            wr
        }
    });
    // Meanwhile another request waits behind the stalled session: it fails at its deadline,
    // it does not hang.
    let t = tokio::time::Instant::now();
    let e = tokio::time::timeout(HANG, client.ping())
        .await
        .expect("the host hung behind a session nobody reads")
        .unwrap_err();
    assert!(matches!(e, AgentError::Timeout(_)), "{e}");
    assert!(t.elapsed() < SHORT.reply + Duration::from_secs(2));
    // Dropping the flooded session frees the connection: its frames are then dropped, and the
    // next request goes through (the guest answers it between its flood frames).
    drop(exec);
    // (A longer deadline: the guest answers only once its flood, still being dropped, ends.)
    let patient = client.clone().with_deadlines(Deadlines {
        reply: Duration::from_secs(10),
        ..SHORT
    });
    let ping = tokio::spawn(async move { patient.ping().await });
    // Read what the host sent from the guest's side: the first ping (never answered, it timed
    // out), then this one, which is answered.
    let pong = tokio::spawn(async move {
        let mut pings = 0;
        loop {
            let mut len = [0u8; 4];
            rd.read_exact(&mut len).await.unwrap();
            let mut rest = vec![0u8; u32::from_be_bytes(len) as usize];
            rd.read_exact(&mut rest).await.unwrap();
            let mut all = len.to_vec();
            all.extend(rest);
            let m = msb_protocol::message::decode_message_exact(&all).unwrap();
            if m.kind == Ping::TYPE {
                pings += 1;
                if pings == 2 {
                    return m.id;
                }
            }
        }
    });
    let ping_id = tokio::time::timeout(HANG, pong).await.unwrap().unwrap();
    // The flood goes on meanwhile (the host drops it); it stops only now.
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut wr = tokio::time::timeout(HANG, flood)
        .await
        .expect("the host stopped reading the flood")
        .unwrap();
    wr.write_all(&msg(ping_id, &Pong {})).await.unwrap();
    tokio::time::timeout(HANG, ping)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}
