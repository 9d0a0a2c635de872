//! No wait on the guest without a deadline. A fake guest on a socket pair that never answers, or
//! never reads its port, makes each request fail with `AgentError::Timeout` naming it, at its
//! deadline. The clients here wait fractions of a second ([`SHORT`]); the defaults are
//! `msb_protocol`'s constants.

use std::future::Future;
use std::time::Duration;

use msb_protocol::net::NetConfigure;
use msb_protocol::types::*;
use msb_protocol::{Message, AGENT_REPLY_TIMEOUT, AGENT_SEND_TIMEOUT, AGENT_WORK_TIMEOUT};
use msb_runtime::agent::{AgentError, Deadlines, ExecEvent};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use tokio::time::Instant;

mod common;
use common::read_msg;

/// Longer than any deadline here: reaching it means the host waited without one.
const HANG: Duration = Duration::from_secs(20);

/// Each wait a different length, so that the test sees which deadline applied.
const SHORT: Deadlines = Deadlines {
    reply: Duration::from_millis(300),
    work: Duration::from_millis(500),
    send: Duration::from_millis(400),
};

/// Runs `f`, which must fail; returns its error's text and how long it took.
async fn fails<T: std::fmt::Debug>(
    f: impl Future<Output = Result<T, AgentError>>,
) -> (String, Duration) {
    let start = Instant::now();
    let r = tokio::time::timeout(HANG, f)
        .await
        .expect("the host waited on the guest without a deadline");
    let err = r.expect_err("the guest never answered");
    assert!(matches!(err, AgentError::Timeout(_)), "{err:?}");
    (err.to_string(), start.elapsed())
}

fn assert_took(elapsed: Duration, deadline: Duration) {
    assert!(
        elapsed >= deadline && elapsed < deadline + Duration::from_secs(2),
        "took {elapsed:?}, the deadline is {deadline:?}"
    );
}

#[test]
fn the_default_deadlines_are_the_protocol_constants() {
    assert_eq!(
        Deadlines::default(),
        Deadlines {
            reply: AGENT_REPLY_TIMEOUT,
            work: AGENT_WORK_TIMEOUT,
            send: AGENT_SEND_TIMEOUT,
        }
    );
    assert_eq!(
        [AGENT_REPLY_TIMEOUT, AGENT_WORK_TIMEOUT, AGENT_SEND_TIMEOUT].map(|d| d.as_secs()),
        [30, 60, 30]
    );
}

#[tokio::test]
async fn a_guest_that_never_answers_fails_each_request_at_its_deadline() {
    let (client, mut guest) = common::connected(SHORT).await;
    // It reads every request and answers none.
    tokio::spawn(async move {
        let mut buf = vec![0u8; 1 << 16];
        while guest.read(&mut buf).await.is_ok_and(|n| n > 0) {}
    });

    let (e, t) = fails(client.ping()).await;
    assert_eq!(e, "timed out: no reply to core.ping within 300ms");
    assert_took(t, SHORT.reply);

    let (e, t) = fails(client.container_pause("c1")).await;
    assert_eq!(
        e,
        "timed out: no reply to core.container.pause within 300ms"
    );
    assert_took(t, SHORT.reply);

    let (e, t) = fails(client.container_pids("c1")).await;
    assert_eq!(e, "timed out: no reply to core.container.pids within 300ms");
    assert_took(t, SHORT.reply);

    let (e, t) = fails(client.container_delete("c1")).await;
    assert_eq!(
        e,
        "timed out: no reply to core.container.delete within 500ms"
    );
    assert_took(t, SHORT.work);

    let (e, t) = fails(client.net_configure(&NetConfigure::default())).await;
    assert_eq!(e, "timed out: no reply to core.net.configure within 500ms");
    assert_took(t, SHORT.work);

    let (e, t) = fails(client.write_file(Some("c1"), "/etc/hosts", 0o644, b"x")).await;
    assert_eq!(e, "timed out: no reply to core.fs.request within 500ms");
    assert_took(t, SHORT.work);

    let req = ExecRequest {
        cmd: "sh".into(),
        ..Default::default()
    };
    let mut exec = client.exec(&req).await.unwrap();
    let (e, t) = fails(exec.next()).await;
    assert_eq!(e, "timed out: no reply to core.exec.request within 500ms");
    assert_took(t, SHORT.work);

    // A timeout does not end the connection: the guest may still be alive, only slow.
    assert_eq!(client.closed_reason(), None);
}

#[tokio::test]
async fn a_started_process_may_stay_silent_for_longer_than_any_deadline() {
    let (client, mut guest) = common::connected(SHORT).await;
    let req = ExecRequest {
        cmd: "sleep".into(),
        ..Default::default()
    };
    let mut exec = client.exec(&req).await.unwrap();
    let id = read_msg(&mut guest).await.id;
    let started = Message::new(id, &ExecStarted { pid: 42 }).unwrap();
    guest
        .write_all(&started.to_frame().to_bytes().unwrap())
        .await
        .unwrap();
    assert_eq!(exec.next().await.unwrap(), ExecEvent::Started(42));
    // Its output or exit may take hours: no deadline once it runs.
    assert!(tokio::time::timeout(SHORT.work * 4, exec.next())
        .await
        .is_err());
}

#[tokio::test]
async fn a_guest_that_stops_reading_its_port_cannot_block_a_sender() {
    // The guest end stays open and is never read.
    let (client, _guest) = common::connected(SHORT).await;
    let chunk = ExecStdin {
        data: vec![7; msb_protocol::MAX_STREAM_CHUNK],
    };
    // Frames queue until the socket's buffer and the client's queue are full; the next one
    // waits for room, and gives up at the send deadline.
    let mut queued = 0;
    let (e, t) = loop {
        let start = Instant::now();
        match tokio::time::timeout(HANG, client.send(5, &chunk))
            .await
            .expect("the host waited on the guest without a deadline")
        {
            Ok(()) => queued += 1,
            Err(e) => break (e.to_string(), start.elapsed()),
        }
        assert!(
            queued < 200,
            "{queued} MiB queued for a guest that reads nothing"
        );
    };
    assert_eq!(
        e,
        "timed out: core.exec.stdin not sent: the guest read nothing from its port for 400ms"
    );
    assert_took(t, SHORT.send);

    // A signal, and requests, cannot get through either, and fail the same way.
    let (e, t) = fails(client.send(
        5,
        &ExecSignal {
            signal: 9,
            all: true,
        },
    ))
    .await;
    assert_eq!(
        e,
        "timed out: core.exec.signal not sent: the guest read nothing from its port for 400ms"
    );
    assert_took(t, SHORT.send);
    let (e, t) = fails(client.container_delete("c1")).await;
    assert_eq!(
        e,
        "timed out: core.container.delete not sent: the guest read nothing from its port for 400ms"
    );
    assert_took(t, SHORT.send);
}
