//! What the fake-guest tests share: the guest's `core.ready`, frames as bytes, and reading one
//! frame with a deadline.

#![allow(dead_code)]

use std::time::Duration;

use msb_protocol::types::Ready;
use msb_protocol::{Message, Payload};
use msb_runtime::agent::{AgentClient, Deadlines};
use tokio::io::AsyncReadExt;
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;

/// Every wait in these tests ends by this deadline instead of hanging.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// The `core.ready` frame a fake guest sends first.
pub fn ready_bytes() -> Vec<u8> {
    let r = Ready {
        boot_time_ns: 1,
        init_time_ns: 2,
        ready_time_ns: 3,
        agent_version: "fake".into(),
        kernel_release: "k".into(),
        boot_id: "b".into(),
    };
    msg(0, &r)
}

/// One frame carrying `p` on `id`, as bytes.
pub fn msg<P: Payload>(id: u32, p: &P) -> Vec<u8> {
    Message::new(id, p)
        .unwrap()
        .to_frame()
        .to_bytes()
        .unwrap()
        .to_vec()
}

/// Reads one frame from `s` and decodes its envelope; fails the test after [`DEADLINE`].
pub async fn read_msg(s: &mut UnixStream) -> Message {
    tokio::time::timeout(DEADLINE, async {
        let mut len = [0u8; 4];
        s.read_exact(&mut len).await.unwrap();
        let mut rest = vec![0u8; u32::from_be_bytes(len) as usize];
        s.read_exact(&mut rest).await.unwrap();
        let mut all = len.to_vec();
        all.extend(rest);
        msb_protocol::message::decode_message_exact(&all).unwrap()
    })
    .await
    .expect("a frame before the deadline")
}

/// A client connected to a fake guest (the other end, returned) that sent `core.ready`; the
/// client waits on it with `deadlines`.
pub async fn connected(deadlines: Deadlines) -> (AgentClient, UnixStream) {
    let (host, mut guest) = UnixStream::pair().unwrap();
    guest.write_all(&ready_bytes()).await.unwrap();
    let (client, _) = AgentClient::connect_direct(host, Duration::from_secs(5))
        .await
        .unwrap();
    (client.with_deadlines(deadlines), guest)
}
