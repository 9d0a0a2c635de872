//! A hostile guest agent, for `test-e2e/tests/hostile_agent.rs` only (never in the shipped
//! initramfs): agentd itself, behind a proxy on the agent port that turns hostile once the
//! container's init has started.
//!
//! It boots as agentd does (mounts, modules, the `agent` port) and runs agentd's own server on
//! one end of a socket pair; the proxy copies frames between the port and the other end, so up
//! to Start the host sees agentd. When the init's `core.exec.started` has passed, the proxy picks
//! its misbehaviour from the container id (the first of [`CASES`] the id contains):
//!
//! - `oversized`: a frame header announcing more than the 4 MiB bound;
//! - `garbage`: well-framed bytes that are no message (not CBOR, a bad envelope, wrong flags, an
//!   unknown type on id 0); the real session goes on;
//! - `wrongtype`: a terminal reply of another request's type on the init's session;
//! - `forged`: exits and output on ids the host never opened, OOM events naming another pod's
//!   container (`HOSTILE_VICTIM` in the init's environment) and a container that does not exist;
//!   the real session goes on;
//! - `hugeexit`: an exit on the init's session whose frame is exactly 4 MiB (padding in a field
//!   the host does not know), then more frames on that finished session: output, a second start,
//!   a second exit;
//! - `flood`: endless stdout on the init's session;
//! - `silent`: from then on nothing passes either way.
//!
//! Built by `./hack/test`:
//!
//! ```text
//! cargo build --release --target x86_64-unknown-linux-musl -p msb-agentd \
//!   --features hostile-agent --bin msb-hostile-agent
//! ```

use std::fs::File;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use msb_agentd::{init, modules, port, reaper, server, sys};
use msb_protocol::boot::BootEnv;
use msb_protocol::message::to_cbor;
use msb_protocol::types::*;
use msb_protocol::{
    read_frame, Flags, Frame, Message, Payload, MAX_FRAME_LEN, PROTOCOL_GENERATION, RELAY_ID_STEP,
};

/// The misbehaviours, by the word a container id names one with.
const CASES: &[&str] = &[
    "oversized",
    "garbage",
    "wrongtype",
    "forged",
    "hugeexit",
    "flood",
    "silent",
];

/// The container's first process, as the host asked for it.
#[derive(Debug, Clone)]
struct Init {
    /// Its session id.
    id: u32,
    /// Its container.
    container: String,
    /// Its environment (`KEY=VALUE`).
    env: Vec<String>,
}

/// What the proxy threads share.
#[derive(Debug)]
struct Proxy {
    /// Whole frames (or whatever bytes a misbehaviour writes) for the port's one writer.
    to_host: SyncSender<Vec<u8>>,
    /// Nothing passes any more (`silent`).
    silent: AtomicBool,
    /// The init, once the host asked for it.
    init: Mutex<Option<Init>>,
}

fn main() {
    let boot_ns = sys::boottime_ns();
    let sigset = sys::block_sigchld().unwrap_or_else(|e| fatal(&format!("block SIGCHLD: {e}")));
    let ready = boot(boot_ns);
    let reaper =
        reaper::Reaper::start(sigset).unwrap_or_else(|e| fatal(&format!("start the reaper: {e}")));
    let port_path = port::find().unwrap_or_else(|e| fatal(&e.to_string()));
    let port = port::open(&port_path).unwrap_or_else(|e| fatal(&format!("open the port: {e}")));
    // agentd's server sees its end of the pair as a host that is always there (and announces
    // `core.ready` once): the proxy waits for the real one first. The shim connects once.
    port::wait_for_host(&port);

    let (ours, agentds) = UnixStream::pair().unwrap_or_else(|e| fatal(&format!("pair: {e}")));
    let (to_host, queue) = sync_channel(64);
    let proxy = Arc::new(Proxy {
        to_host,
        silent: AtomicBool::new(false),
        init: Mutex::new(None),
    });
    let port_writer = clone(&port);
    std::thread::spawn(move || write_port(port_writer, queue));
    let (p, to_agentd) = (proxy.clone(), clone_stream(&ours));
    std::thread::spawn(move || host_to_agentd(&p, port, to_agentd));
    let p = proxy.clone();
    std::thread::spawn(move || agentd_to_host(&p, ours));

    let out = port::Out::start(into_file(clone_stream(&agentds)))
        .unwrap_or_else(|e| fatal(&format!("start the writer: {e}")));
    let mut server = server::Server::new(out, reaper, ready);
    server.serve(into_file(agentds))
}

/// agentd's boot up to the port: mounts, logging, modules, the root switch, the `MSB_*`
/// settings; returns the `core.ready` to announce.
fn boot(boot_ns: u64) -> Ready {
    init::early_mounts().unwrap_or_else(|e| fatal(&e.to_string()));
    let env = BootEnv::from_vars(std::env::vars_os().map(|(k, v)| {
        (
            k.to_string_lossy().into_owned(),
            v.to_string_lossy().into_owned(),
        )
    }));
    let _ = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_target(false)
        .with_writer(std::io::stderr)
        .try_init();
    let release = sys::kernel_release();
    modules::load_all(&release);
    if let Err(e) = init::leave_initramfs().and_then(|_| init::late_mounts()) {
        fatal(&e.to_string());
    }
    let _ = sys::loopback_up();
    if let Ok(env) = &env {
        init::apply_boot_env(env);
    }
    tracing::warn!("hostile agent: agentd until the init starts, then one of {CASES:?}");
    Ready {
        boot_time_ns: boot_ns,
        init_time_ns: sys::boottime_ns(),
        ready_time_ns: 0,
        agent_version: format!("{}-hostile", env!("CARGO_PKG_VERSION")),
        kernel_release: release,
        boot_id: String::new(),
    }
}

fn fatal(msg: &str) -> ! {
    msb_agentd::fatal(&format!("hostile agent: {msg}"))
}

fn clone(f: &File) -> File {
    f.try_clone()
        .unwrap_or_else(|e| fatal(&format!("dup: {e}")))
}

fn clone_stream(s: &UnixStream) -> UnixStream {
    s.try_clone()
        .unwrap_or_else(|e| fatal(&format!("dup: {e}")))
}

/// agentd's server reads and writes a `File`; a socket is one as well.
fn into_file(s: UnixStream) -> File {
    File::from(std::os::fd::OwnedFd::from(s))
}

/// The port's one writer: whole frames, in the order they were queued.
fn write_port(mut port: File, queue: Receiver<Vec<u8>>) {
    while let Ok(bytes) = queue.recv() {
        let _ = port.write_all(&bytes);
    }
}

/// Host -> agentd: frames pass (noting the init's request) until the proxy goes silent. While
/// no host is connected the port reads end of stream: wait for one again.
fn host_to_agentd(proxy: &Proxy, mut port: File, mut agentd: UnixStream) {
    loop {
        match read_frame(&mut port) {
            Ok(Some(frame)) => {
                note_init(proxy, &frame);
                if !proxy.silent.load(Ordering::SeqCst) {
                    if let Ok(bytes) = frame.to_bytes() {
                        let _ = agentd.write_all(&bytes);
                    }
                }
            }
            Ok(None) | Err(_) => {
                std::thread::sleep(Duration::from_millis(20));
                port::wait_for_host(&port);
            }
        }
    }
}

/// Remembers the first `core.exec.request` that names a container: that container's init.
fn note_init(proxy: &Proxy, frame: &Frame) {
    let Ok(msg) = Message::from_frame(frame) else {
        return;
    };
    let Ok(req) = msg.decode::<ExecRequest>() else {
        return;
    };
    let mut init = proxy.init.lock().unwrap_or_else(|e| e.into_inner());
    if let (None, Some(container)) = (init.as_ref(), req.container) {
        *init = Some(Init {
            id: msg.id,
            container,
            env: req.env,
        });
    }
}

/// agentd -> host: frames pass until the proxy goes silent; right after the init's
/// `core.exec.started` has passed, the misbehaviour starts.
fn agentd_to_host(proxy: &Arc<Proxy>, mut agentd: UnixStream) {
    while let Ok(Some(frame)) = read_frame(&mut agentd) {
        if proxy.silent.load(Ordering::SeqCst) {
            continue;
        }
        if let Ok(bytes) = frame.to_bytes() {
            let _ = proxy.to_host.send(bytes.to_vec());
        }
        if let Some(init) = started_init(proxy, &frame) {
            let p = proxy.clone();
            std::thread::spawn(move || misbehave(&p, &init));
        }
    }
}

/// The init, if `frame` is its `core.exec.started`.
fn started_init(proxy: &Proxy, frame: &Frame) -> Option<Init> {
    let init = proxy
        .init
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone()?;
    let msg = Message::from_frame(frame).ok()?;
    (msg.id == init.id && msg.is::<ExecStarted>()).then_some(init)
}

fn misbehave(proxy: &Proxy, init: &Init) {
    let case = CASES.iter().find(|c| init.container.contains(*c));
    tracing::warn!(container = %init.container, ?case, "hostile agent turns hostile");
    match case.copied() {
        Some("oversized") => oversized(proxy),
        Some("garbage") => garbage(proxy, init),
        Some("wrongtype") => wrong_type(proxy, init),
        Some("forged") => forged(proxy, init),
        Some("hugeexit") => huge_exit(proxy, init),
        Some("flood") => flood(proxy, init),
        Some("silent") => proxy.silent.store(true, Ordering::SeqCst),
        _ => {}
    }
}

impl Proxy {
    fn send_raw(&self, bytes: Vec<u8>) {
        let _ = self.to_host.send(bytes);
    }

    fn send_frame(&self, frame: &Frame) {
        match frame.to_bytes() {
            Ok(b) => self.send_raw(b.to_vec()),
            Err(e) => tracing::error!("cannot frame: {e}"),
        }
    }

    fn send<P: Payload>(&self, id: u32, payload: &P) {
        match Message::new(id, payload) {
            Ok(m) => self.send_frame(&m.to_frame()),
            Err(e) => tracing::error!("cannot encode {}: {e}", P::TYPE),
        }
    }
}

/// A message of any type with any payload value.
fn message(id: u32, flags: Flags, kind: &str, payload: &serde_json::Value) -> Frame {
    Message {
        id,
        flags,
        version: PROTOCOL_GENERATION,
        kind: kind.to_owned(),
        payload: to_cbor(payload).unwrap_or_default().into(),
    }
    .to_frame()
}

/// A length prefix one byte over the bound, the frame's id and flags, and some of its body.
fn oversized(proxy: &Proxy) {
    let mut bytes = (MAX_FRAME_LEN + 1).to_be_bytes().to_vec();
    bytes.extend(1u32.to_be_bytes());
    bytes.push(0);
    bytes.extend(vec![0xa5; 4096]);
    proxy.send_raw(bytes);
}

/// Frames the host can read but not use, on id 0 and on the init's session; none of them may
/// end that session.
fn garbage(proxy: &Proxy, init: &Init) {
    for id in [0, init.id] {
        // Not CBOR.
        proxy.send_frame(&Frame::new(id, Flags::NONE, b"\xff\xfenot cbor".to_vec()));
        // CBOR, but not the envelope: `{"v": 7}` without `t` and `p`.
        proxy.send_frame(&Frame::new(id, Flags::NONE, vec![0xa1, 0x61, b'v', 0x07]));
        // A known type with flags it never carries.
        proxy.send_frame(&message(
            id,
            Flags::TERMINAL,
            ExecStdout::TYPE,
            &serde_json::json!({"data": "x"}),
        ));
    }
    // Connection-level: a type nobody knows, and an OOM report that is not one.
    proxy.send_frame(&message(
        0,
        Flags::NONE,
        "core.hostile.unknown",
        &serde_json::json!({"x": 1}),
    ));
    proxy.send_frame(&message(
        0,
        Flags::NONE,
        ContainerOom::TYPE,
        &serde_json::json!([1, 2, 3]),
    ));
}

/// The init's session answered as if it were another request.
fn wrong_type(proxy: &Proxy, init: &Init) {
    proxy.send(init.id, &ContainerDone {});
}

/// Events the pod has no business sending: exits and output for sessions the host never
/// opened (its own next id, ids of other relay clients, the last id), OOM kills of containers
/// that are not its own.
fn forged(proxy: &Proxy, init: &Init) {
    for id in [
        init.id.wrapping_add(1),
        init.id.wrapping_add(1000),
        RELAY_ID_STEP + 1,
        2 * RELAY_ID_STEP + 7,
        u32::MAX - 1,
    ] {
        proxy.send(id, &ExecStarted { pid: 1 });
        proxy.send(
            id,
            &ExecStdout {
                data: b"forged\n".to_vec(),
            },
        );
        proxy.send(id, &ExecExited { code: 99 });
    }
    let victim = init
        .env
        .iter()
        .find_map(|e| e.strip_prefix("HOSTILE_VICTIM="))
        .unwrap_or("another-pods-container");
    for container in [victim, "no-such-container"] {
        proxy.send(
            0,
            &ContainerOom {
                id: container.to_owned(),
            },
        );
    }
}

/// The init's exit (code 42) in a frame of exactly `MAX_FRAME_LEN`, the padding in a field the
/// host does not know; then frames on the finished session.
fn huge_exit(proxy: &Proxy, init: &Init) {
    let exited = |pad: usize| {
        message(
            init.id,
            Flags::TERMINAL,
            ExecExited::TYPE,
            &serde_json::json!({"code": 42, "pad": "p".repeat(pad)}),
        )
    };
    // The CBOR heads of `pad` and `p` have the same size for any length from 64 KiB on, so one
    // correction lands exactly on the bound.
    let guess = 1 << 21;
    let len = exited(guess).wire_len() - 4;
    let frame = exited(guess + MAX_FRAME_LEN as usize - len);
    proxy.send_frame(&frame);
    proxy.send(
        init.id,
        &ExecStdout {
            data: b"after the exit\n".to_vec(),
        },
    );
    proxy.send(init.id, &ExecStarted { pid: 2 });
    proxy.send(init.id, &ExecExited { code: 43 });
}

/// stdout for the init, 64 KiB a frame, until the VM ends.
fn flood(proxy: &Proxy, init: &Init) {
    let frame = match Message::new(
        init.id,
        &ExecStdout {
            data: vec![b'f'; 64 << 10],
        },
    ) {
        Ok(m) => m.to_frame(),
        Err(_) => return,
    };
    loop {
        proxy.send_frame(&frame);
    }
}
