//! The multi-client relay against a fake guest on a socket pair: clients attach with
//! `AgentClient::connect_relay`, get distinct id ranges and the cached `core.ready`, see their
//! own replies and every event; a client that breaks a rule or stops reading is dropped while
//! the others keep working; the guest hears of every departure; guest EOF closes everyone.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use msb_protocol::relay::{client_id_range, RangeHeader};
use msb_protocol::types::*;
use msb_protocol::{Flags, Frame, Payload, RELAY_MAX_CLIENTS};
use msb_runtime::agent::{AgentClient, AgentError};
use msb_runtime::relay::{Relay, RelayError, RelayExit, RelayHandle, RelayOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

mod common;
use common::{msg, read_msg, ready_bytes, DEADLINE};

/// A relay over a fake guest. The guest end stays with the test.
struct Fixture {
    relay: RelayHandle,
    guest: UnixStream,
    path: PathBuf,
    _dir: tempfile::TempDir,
}

async fn fixture(opts: RelayOptions) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("relay.sock");
    let (host, mut guest) = UnixStream::pair().unwrap();
    guest.write_all(&ready_bytes()).await.unwrap();
    let relay = Relay::serve(host, &path, opts).await.unwrap();
    assert_eq!(relay.ready().agent_version, "fake");
    Fixture {
        relay,
        guest,
        path,
        _dir: dir,
    }
}

async fn client(path: &Path) -> AgentClient {
    let stream = UnixStream::connect(path).await.unwrap();
    let (client, ready) = AgentClient::connect_relay(stream, DEADLINE).await.unwrap();
    assert_eq!(ready.agent_version, "fake");
    client
}

/// A client speaking raw bytes: returns it after reading its range header and `core.ready`.
async fn raw_client(path: &Path) -> (UnixStream, Range<u32>) {
    let mut s = UnixStream::connect(path).await.unwrap();
    let range = read_welcome(&mut s).await;
    (s, range)
}

/// Reads what a new client gets first, its range header and the cached `core.ready`.
async fn read_welcome(s: &mut UnixStream) -> Range<u32> {
    let mut h = [0u8; RangeHeader::SIZE];
    s.read_exact(&mut h).await.unwrap();
    let h = RangeHeader::from_bytes(h).expect("a valid range header");
    let ready = read_msg(s).await;
    assert_eq!(ready.decode::<Ready>().unwrap().agent_version, "fake");
    h.id_start..h.id_end_exclusive
}

/// Options under which a full client queue is reached quickly and the grace is short.
fn tight_queues() -> RelayOptions {
    RelayOptions {
        client_queue_bytes: 0, // raised to one maximal frame
        slow_client_grace: Duration::from_millis(300),
        ..RelayOptions::default()
    }
}

/// Reads and discards until end-of-stream; fails the test if the stream stays open.
async fn expect_eof(s: &mut UnixStream) {
    tokio::time::timeout(DEADLINE, async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .expect("the relay closes the client");
}

/// Asserts the guest's next frame is `core.relay.client.disconnected` for `range`.
async fn expect_disconnected(guest: &mut UnixStream, range: Range<u32>) {
    let m = read_msg(guest).await;
    assert_eq!((m.id, m.kind.as_str()), (0, RelayClientDisconnected::TYPE));
    let d = m.decode::<RelayClientDisconnected>().unwrap();
    assert_eq!(d.id_start..d.id_end_exclusive, range);
}

/// Answers one ping on the guest side.
async fn pong(guest: &mut UnixStream) -> u32 {
    let req = read_msg(guest).await;
    assert_eq!(req.kind, Ping::TYPE);
    guest.write_all(&msg(req.id, &Pong {})).await.unwrap();
    req.id
}

async fn poll_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn clients_get_distinct_ranges_and_the_cached_ready() {
    let mut f = fixture(RelayOptions::default()).await;
    let (mut raw0, r0) = raw_client(&f.path).await;
    let (_raw1, r1) = raw_client(&f.path).await;
    assert_eq!(r0, client_id_range(0).unwrap());
    assert_eq!(r1, client_id_range(1).unwrap());
    // Through the real client: slot 2, and its first request carries an id of that range.
    let c = client(&f.path).await;
    assert_eq!(f.relay.clients(), 3);
    let c2 = c.clone();
    let ping = tokio::spawn(async move { c2.ping().await });
    let id = pong(&mut f.guest).await;
    assert!(client_id_range(2).unwrap().contains(&id), "id {id}");
    ping.await.unwrap().unwrap();
    // A leaving client frees its slot; the next one gets the lowest free slot again.
    raw0.shutdown().await.unwrap();
    expect_disconnected(&mut f.guest, r0.clone()).await;
    poll_until("slot 0 freed", || f.relay.clients() == 2).await;
    let (_raw, again) = raw_client(&f.path).await;
    assert_eq!(again, r0);
}

#[tokio::test]
async fn replies_route_to_their_client_and_events_reach_everyone() {
    let mut f = fixture(RelayOptions::default()).await;
    let (a, b) = (client(&f.path).await, client(&f.path).await);
    let (mut ev_a, mut ev_b) = (a.events(), b.events());
    let exec = |c: &AgentClient, cmd: &str| {
        let c = c.clone();
        let req = ExecRequest {
            cmd: cmd.into(),
            ..Default::default()
        };
        tokio::spawn(async move { c.exec(&req).await.unwrap().collect().await.unwrap() })
    };
    let (ta, tb) = (exec(&a, "a"), exec(&b, "b"));
    let (m1, m2) = (read_msg(&mut f.guest).await, read_msg(&mut f.guest).await);
    let (ra, rb) = if m1.decode::<ExecRequest>().unwrap().cmd == "a" {
        (m1, m2)
    } else {
        (m2, m1)
    };
    assert!(client_id_range(0).unwrap().contains(&ra.id));
    assert!(client_id_range(1).unwrap().contains(&rb.id));
    // Interleaved output, answered in the other order, with an event in the middle.
    for (id, out) in [(rb.id, "to b"), (ra.id, "to a")] {
        f.guest
            .write_all(&msg(
                id,
                &ExecStdout {
                    data: out.as_bytes().to_vec(),
                },
            ))
            .await
            .unwrap();
    }
    f.guest
        .write_all(&msg(0, &ContainerOom { id: "c1".into() }))
        .await
        .unwrap();
    f.guest
        .write_all(&msg(rb.id, &ExecExited { code: 2 }))
        .await
        .unwrap();
    f.guest
        .write_all(&msg(ra.id, &ExecExited { code: 1 }))
        .await
        .unwrap();
    let (oa, ob) = (ta.await.unwrap(), tb.await.unwrap());
    assert_eq!((oa.0, oa.2), (b"to a".to_vec(), Ok(1)));
    assert_eq!((ob.0, ob.2), (b"to b".to_vec(), Ok(2)));
    for ev in [&mut ev_a, &mut ev_b] {
        let e = tokio::time::timeout(DEADLINE, ev.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(e.decode::<ContainerOom>().unwrap().id, "c1");
    }
}

/// Client 1 sends `bad`; it is dropped, the guest hears of it and never sees `bad`, and
/// client 0 keeps working.
async fn rule_breaker_is_dropped(bad: impl FnOnce(Range<u32>) -> Vec<u8>) {
    let mut f = fixture(RelayOptions::default()).await;
    let good = client(&f.path).await;
    let (mut raw, range) = raw_client(&f.path).await;
    assert_eq!(range, client_id_range(1).unwrap());
    raw.write_all(&bad(range.clone())).await.unwrap();
    expect_eof(&mut raw).await;
    expect_disconnected(&mut f.guest, range).await;
    let ping = tokio::spawn(async move { good.ping().await });
    let id = pong(&mut f.guest).await;
    assert!(client_id_range(0).unwrap().contains(&id));
    ping.await.unwrap().unwrap();
    assert_eq!(f.relay.clients(), 1);
    assert!(f.relay.exit().is_none());
}

#[tokio::test]
async fn an_id_of_another_clients_range_drops_the_client() {
    rule_breaker_is_dropped(|r| msg(r.end, &Ping {})).await;
}

#[tokio::test]
async fn an_id_below_the_range_drops_the_client() {
    rule_breaker_is_dropped(|r| msg(r.start - 1, &Ping {})).await;
}

#[tokio::test]
async fn a_control_frame_on_id_0_drops_the_client() {
    rule_breaker_is_dropped(|_| msg(0, &Shutdown)).await;
}

#[tokio::test]
async fn a_forged_relay_disconnect_drops_the_client() {
    // In its own range, but naming client 0's range: agentd would kill client 0's processes.
    rule_breaker_is_dropped(|r| {
        let victim = client_id_range(0).unwrap();
        msg(
            r.start,
            &RelayClientDisconnected {
                id_start: victim.start,
                id_end_exclusive: victim.end,
            },
        )
    })
    .await;
}

#[tokio::test]
async fn a_shutdown_flag_in_range_drops_the_client() {
    rule_breaker_is_dropped(|r| {
        Frame::new(r.start, Flags::SHUTDOWN, vec![0xa0])
            .to_bytes()
            .unwrap()
            .to_vec()
    })
    .await;
}

#[tokio::test]
async fn bad_framing_from_a_client_drops_it() {
    rule_breaker_is_dropped(|_| (4 * 1024 * 1024 + 1u32).to_be_bytes().to_vec()).await;
}

#[tokio::test]
async fn a_malformed_envelope_in_range_goes_to_the_guest() {
    let mut f = fixture(RelayOptions::default()).await;
    let (mut raw, range) = raw_client(&f.path).await;
    let garbage = Frame::new(range.start, Flags::NONE, vec![0xff, 0x00]);
    raw.write_all(&garbage.to_bytes().unwrap()).await.unwrap();
    let mut len = [0u8; 4];
    f.guest.read_exact(&mut len).await.unwrap();
    let mut rest = vec![0u8; u32::from_be_bytes(len) as usize];
    f.guest.read_exact(&mut rest).await.unwrap();
    assert_eq!(&rest[..4], &range.start.to_be_bytes());
    assert_eq!(&rest[5..], &[0xff, 0x00]);
    assert_eq!(f.relay.clients(), 1);
}

#[tokio::test]
async fn a_leaving_client_is_announced_to_the_guest() {
    let mut f = fixture(RelayOptions::default()).await;
    let a = client(&f.path).await;
    let b = client(&f.path).await;
    // A process of a's is running when a leaves.
    let exec = a
        .exec(&ExecRequest {
            cmd: "sleep".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let req = read_msg(&mut f.guest).await;
    assert!(client_id_range(0).unwrap().contains(&req.id));
    drop(exec);
    drop(a);
    expect_disconnected(&mut f.guest, client_id_range(0).unwrap()).await;
    poll_until("slot 0 freed", || f.relay.clients() == 1).await;
    // Late frames for the departed range are dropped; b is unaffected.
    f.guest
        .write_all(&msg(req.id, &ExecExited { code: 137 }))
        .await
        .unwrap();
    let ping = tokio::spawn(async move { b.ping().await });
    pong(&mut f.guest).await;
    ping.await.unwrap().unwrap();
}

#[tokio::test]
async fn guest_eof_closes_every_client() {
    let f = fixture(RelayOptions::default()).await;
    let (a, b) = (client(&f.path).await, client(&f.path).await);
    let mut exec = a
        .exec(&ExecRequest {
            cmd: "x".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut guest = f.guest;
    let _ = read_msg(&mut guest).await;
    drop(guest);
    let err = tokio::time::timeout(DEADLINE, exec.next())
        .await
        .expect("no hang")
        .unwrap_err();
    assert!(matches!(err, AgentError::Closed(_)), "{err}");
    assert_eq!(
        tokio::time::timeout(DEADLINE, f.relay.stopped())
            .await
            .unwrap(),
        RelayExit::GuestClosed
    );
    poll_until("b notices", || b.closed_reason().is_some()).await;
    for c in [&a, &b] {
        let err = c.ping().await.unwrap_err();
        assert!(matches!(err, AgentError::Closed(_)), "{err}");
    }
    assert!(!f.path.exists(), "the socket file is removed");
    assert!(UnixStream::connect(&f.path).await.is_err());
}

#[tokio::test]
async fn bad_framing_from_the_guest_ends_the_relay() {
    let mut f = fixture(RelayOptions::default()).await;
    let a = client(&f.path).await;
    f.guest.write_all(&[0, 0, 0, 0]).await.unwrap();
    let exit = tokio::time::timeout(DEADLINE, f.relay.stopped())
        .await
        .unwrap();
    assert!(
        matches!(&exit, RelayExit::GuestFailed(why) if why.contains("below the minimum")),
        "{exit:?}"
    );
    poll_until("a notices", || a.closed_reason().is_some()).await;
}

#[tokio::test]
async fn the_129th_client_is_refused() {
    let f = fixture(RelayOptions::default()).await;
    let mut clients = Vec::new();
    for _ in 0..RELAY_MAX_CLIENTS {
        clients.push(client(&f.path).await);
    }
    assert_eq!(f.relay.clients(), RELAY_MAX_CLIENTS as usize);
    let stream = UnixStream::connect(&f.path).await.unwrap();
    let err = AgentClient::connect_relay(stream, DEADLINE)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, AgentError::Closed(why) if why.contains("range header")),
        "{err}"
    );
    // Room again after one leaves: the newcomer gets the freed slot.
    drop(clients.remove(5));
    poll_until("slot 5 freed", || {
        f.relay.clients() == RELAY_MAX_CLIENTS as usize - 1
    })
    .await;
    let (_raw, range) = raw_client(&f.path).await;
    assert_eq!(range, client_id_range(5).unwrap());
}

#[tokio::test]
async fn a_client_that_does_not_read_is_dropped_and_others_keep_working() {
    let mut f = fixture(tight_queues()).await;
    let good = client(&f.path).await;
    let (mut slow, range) = raw_client(&f.path).await;
    let ping = tokio::spawn(async move {
        let started = tokio::time::Instant::now();
        good.ping().await.map(|()| started.elapsed())
    });
    let ping_req = read_msg(&mut f.guest).await;
    // 16 MiB for the slow client: far more than its queue, its socket buffers and one frame.
    let chunk = ExecStdout {
        data: vec![7u8; 1024 * 1024],
    };
    for _ in 0..16 {
        f.guest.write_all(&msg(range.start, &chunk)).await.unwrap();
    }
    f.guest
        .write_all(&msg(ping_req.id, &Pong {}))
        .await
        .unwrap();
    let waited = ping.await.unwrap().unwrap();
    assert!(waited < Duration::from_secs(5), "{waited:?}");
    expect_disconnected(&mut f.guest, range).await;
    expect_eof(&mut slow).await;
    assert_eq!(f.relay.clients(), 1);
}

#[tokio::test]
async fn the_owner_is_waited_for_never_dropped_as_slow() {
    let f = fixture(tight_queues()).await;
    let mut owner = f.relay.attach().unwrap();
    let range = read_welcome(&mut owner).await;
    // 16 MiB for the owner while it reads nothing for well past the grace period: the guest
    // side waits (backpressure) instead of the owner being dropped.
    let mut guest = f.guest;
    let id = range.start;
    let writer = tokio::spawn(async move {
        let chunk = ExecStdout {
            data: vec![7u8; 1024 * 1024],
        };
        for _ in 0..16 {
            guest.write_all(&msg(id, &chunk)).await.unwrap();
        }
        guest
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!writer.is_finished(), "the guest side is held back");
    for _ in 0..16 {
        let m = read_msg(&mut owner).await;
        assert_eq!(
            (m.id, m.decode::<ExecStdout>().unwrap().data.len()),
            (id, 1 << 20)
        );
    }
    let _guest = writer.await.unwrap();
    assert_eq!(f.relay.clients(), 1);
}

#[tokio::test]
async fn close_lets_every_client_go_and_removes_the_socket() {
    let f = fixture(RelayOptions::default()).await;
    let a = client(&f.path).await;
    let (mut raw, _) = raw_client(&f.path).await;
    assert_eq!(f.relay.close().await, RelayExit::Stopped);
    expect_eof(&mut raw).await;
    poll_until("a notices", || a.closed_reason().is_some()).await;
    assert!(!f.path.exists());
    // The guest sees the host hang up.
    let mut guest = f.guest;
    expect_eof(&mut guest).await;
}

#[tokio::test]
async fn a_guest_that_does_not_send_ready_fails_serve() {
    let dir = tempfile::tempdir().unwrap();
    let (host, _guest) = UnixStream::pair().unwrap();
    let opts = RelayOptions {
        ready_timeout: Duration::from_millis(100),
        ..RelayOptions::default()
    };
    let err = Relay::serve(host, &dir.path().join("relay.sock"), opts)
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "no core.ready from the guest within 100ms");
    let (host, mut guest) = UnixStream::pair().unwrap();
    guest.write_all(&msg(0, &Pong {})).await.unwrap();
    let err = Relay::serve(
        host,
        &dir.path().join("relay.sock"),
        RelayOptions::default(),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("not a valid core.ready"), "{err}");
    assert!(!dir.path().join("relay.sock").exists());
}

#[tokio::test]
async fn the_owner_attaches_in_process_and_sends_control_messages() {
    let mut f = fixture(RelayOptions::default()).await;
    let (owner, ready) = AgentClient::connect_relay(f.relay.attach().unwrap(), DEADLINE)
        .await
        .unwrap();
    assert_eq!(ready.agent_version, "fake");
    let o = owner.clone();
    let ping = tokio::spawn(async move { o.ping().await });
    let id = pong(&mut f.guest).await;
    assert!(client_id_range(0).unwrap().contains(&id));
    ping.await.unwrap().unwrap();
    // What a client may not send, the owner may.
    f.relay.control(&Shutdown).await.unwrap();
    let m = read_msg(&mut f.guest).await;
    assert_eq!(
        (m.id, m.flags, m.kind.as_str()),
        (0, Flags::SHUTDOWN, Shutdown::TYPE)
    );
    drop(f.guest);
    let _ = tokio::time::timeout(DEADLINE, f.relay.stopped())
        .await
        .unwrap();
    assert!(matches!(f.relay.attach(), Err(RelayError::Stopped)));
    assert!(matches!(
        f.relay.control(&Shutdown).await,
        Err(RelayError::Stopped)
    ));
}
