//! The agent client against a fake guest on a socket pair: malformed or out-of-bound frames end
//! the connection with an error for every waiting session, never a panic or a hang; well-formed
//! traffic is routed by id.

use std::time::Duration;

use msb_protocol::types::*;
use msb_protocol::{Flags, Frame, Message};
use msb_runtime::agent::{AgentClient, AgentError, ExecEvent};
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;

mod common;
use common::{read_msg, ready_bytes};

async fn connected() -> (AgentClient, UnixStream) {
    let (host, mut guest) = UnixStream::pair().unwrap();
    guest.write_all(&ready_bytes()).await.unwrap();
    let (client, r) = AgentClient::connect_direct(host, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(r.agent_version, "fake");
    (client, guest)
}

async fn send(guest: &mut UnixStream, m: Message) {
    guest
        .write_all(&m.to_frame().to_bytes().unwrap())
        .await
        .unwrap();
}

/// Each bad input ends the session waiting on it with `Closed` and a reason.
async fn poisoned_by(bytes: Vec<u8>, expect: &str) {
    let (client, mut guest) = connected().await;
    let mut exec = client
        .exec(&ExecRequest {
            cmd: "x".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let _ = read_msg(&mut guest).await;
    guest.write_all(&bytes).await.unwrap();
    let err = tokio::time::timeout(Duration::from_secs(5), exec.next())
        .await
        .expect("no hang")
        .unwrap_err();
    match &err {
        AgentError::Closed(reason) => assert!(reason.contains(expect), "{reason}"),
        other => panic!("{other}"),
    }
    assert!(client.closed_reason().is_some());
    let again = client.ping().await.unwrap_err();
    assert!(matches!(again, AgentError::Closed(_)), "{again}");
}

#[tokio::test]
async fn len_zero_closes_the_connection() {
    poisoned_by(vec![0, 0, 0, 0], "below the minimum").await;
}

#[tokio::test]
async fn len_over_four_mib_closes_the_connection() {
    poisoned_by(
        (4 * 1024 * 1024 + 1u32).to_be_bytes().to_vec(),
        "exceeds the maximum",
    )
    .await;
}

#[tokio::test]
async fn undefined_flags_close_the_connection() {
    poisoned_by(vec![0, 0, 0, 5, 0, 0, 0, 1, 0x80], "undefined flag bits").await;
}

#[tokio::test]
async fn a_guest_that_hangs_up_mid_frame_closes_the_connection() {
    let (client, mut guest) = connected().await;
    let mut exec = client
        .exec(&ExecRequest {
            cmd: "x".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let _ = read_msg(&mut guest).await;
    guest.write_all(&[0, 0, 0, 50, 0, 0]).await.unwrap();
    drop(guest);
    let err = tokio::time::timeout(Duration::from_secs(5), exec.next())
        .await
        .expect("no hang")
        .unwrap_err();
    assert!(
        matches!(err, AgentError::Closed(ref r) if r.contains("stream ended inside a frame")),
        "{err}"
    );
}

#[tokio::test]
async fn garbage_cbor_wrong_flags_and_unknown_ids_are_dropped_not_fatal() {
    let (client, mut guest) = connected().await;
    let mut exec = client
        .exec(&ExecRequest {
            cmd: "x".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let req = read_msg(&mut guest).await;
    assert_eq!(req.flags, Flags::SESSION_START);
    // Not an envelope; a terminal type with the wrong flags; a frame for nobody.
    guest
        .write_all(
            &Frame::new(req.id, Flags::NONE, vec![0xff, 0x00])
                .to_bytes()
                .unwrap(),
        )
        .await
        .unwrap();
    let mut wrong = Message::new(req.id, &ExecExited { code: 1 }).unwrap();
    wrong.flags = Flags::NONE;
    send(&mut guest, wrong).await;
    send(
        &mut guest,
        Message::new(
            999,
            &ExecStdout {
                data: b"lost".to_vec(),
            },
        )
        .unwrap(),
    )
    .await;
    // The session still works.
    send(
        &mut guest,
        Message::new(req.id, &ExecStarted { pid: 42 }).unwrap(),
    )
    .await;
    send(
        &mut guest,
        Message::new(
            req.id,
            &ExecStdout {
                data: b"hi".to_vec(),
            },
        )
        .unwrap(),
    )
    .await;
    send(
        &mut guest,
        Message::new(req.id, &ExecExited { code: 3 }).unwrap(),
    )
    .await;
    assert_eq!(exec.next().await.unwrap(), ExecEvent::Started(42));
    assert_eq!(
        exec.next().await.unwrap(),
        ExecEvent::Stdout(b"hi".to_vec())
    );
    assert_eq!(exec.next().await.unwrap(), ExecEvent::Exited(3));
    assert!(client.closed_reason().is_none());
}

#[tokio::test]
async fn concurrent_sessions_are_routed_by_id_and_events_broadcast() {
    let (client, mut guest) = connected().await;
    let mut events = client.events();
    let a = client
        .exec(&ExecRequest {
            cmd: "a".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let b = client
        .exec(&ExecRequest {
            cmd: "b".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let (ra, rb) = (read_msg(&mut guest).await, read_msg(&mut guest).await);
    assert_ne!(ra.id, rb.id);
    send(
        &mut guest,
        Message::new(rb.id, &ExecExited { code: 2 }).unwrap(),
    )
    .await;
    send(
        &mut guest,
        Message::new(0, &ContainerOom { id: "c".into() }).unwrap(),
    )
    .await;
    send(
        &mut guest,
        Message::new(ra.id, &ExecExited { code: 1 }).unwrap(),
    )
    .await;
    let (ca, cb) = (
        a.collect().await.unwrap().2.unwrap(),
        b.collect().await.unwrap().2.unwrap(),
    );
    assert_eq!((ca, cb), (1, 2));
    let ev = events.recv().await.unwrap();
    assert_eq!(ev.decode::<ContainerOom>().unwrap().id, "c");
}

#[tokio::test]
async fn container_failures_come_back_as_errors() {
    let (client, mut guest) = connected().await;
    let task = tokio::spawn(async move { client.container_pause("c9").await });
    let req = read_msg(&mut guest).await;
    assert_eq!(req.decode::<ContainerPause>().unwrap().id, "c9");
    send(
        &mut guest,
        Message::new(
            req.id,
            &ContainerFailed {
                id: "c9".into(),
                message: "no container c9".into(),
            },
        )
        .unwrap(),
    )
    .await;
    let err = task.await.unwrap().unwrap_err();
    assert_eq!(err.to_string(), "container c9: no container c9");
}

#[tokio::test]
async fn a_silent_guest_times_out_at_ready() {
    let (host, _guest) = UnixStream::pair().unwrap();
    let err = AgentClient::connect_direct(host, Duration::from_millis(200))
        .await
        .unwrap_err();
    assert!(matches!(err, AgentError::Timeout(_)), "{err}");
}
