//! The multi-client relay (docs/PROTOCOL.md): several host clients share one sandbox's agent
//! connection.
//!
//! agentd's port can be opened once, so one host task owns the agent connection and serves up to
//! [`RELAY_MAX_CLIENTS`] clients on a Unix socket (usually `<sandbox dir>/relay.sock`).
//! microsandbox's protocol, which ours is modelled on, puts the relay in the VMM process; a host task that owns the agent socket is the
//! same thing as far as clients can tell, and works with every backend.
//!
//! ```text
//!                          ┌──────── relay ────────┐
//! client 0 ── relay.sock ──┤ reader ─┐             │
//! client 1 ── relay.sock ──┤ reader ─┼─> guest ────┼──> agent.sock ── agentd
//!    ...                   │         │   writer    │
//!                          │ router <┴─────────────┼─── (guest frames by id / STEP,
//!                          │  └─> client writers   │     id 0 to every client)
//!                          └───────────────────────┘
//! ```
//!
//! - A new client gets the lowest free slot `k`, then its [`RangeHeader`] (ids
//!   `[k*STEP+1, (k+1)*STEP)`) and the cached `core.ready` frame, so
//!   [`AgentClient::connect_relay`](crate::agent::AgentClient::connect_relay) works unchanged.
//!   When every slot is taken, the connection is accepted and closed at once: the client reads
//!   end-of-stream instead of a header.
//! - Frames from a client reach the guest only if their id lies in the client's range and they
//!   are not connection-level control messages (`core.shutdown`, `core.relay.*`,
//!   `core.clock.sync`, `core.init.ack`, or any frame with the shutdown flag). Anything else, or
//!   a framing error, drops that client: clients are untrusted and one must not act on another's
//!   sessions or on the VM as a whole. The relay does not decode payloads, only the envelope's
//!   type (zero-copy).
//! - Frames from the guest route by [`client_of_id`]; id 0 (events such as
//!   `core.container.oom`) goes to every client; frames for a free slot or an id outside every
//!   range are dropped. A framing error from the guest ends the relay.
//! - A client that leaves (or is dropped) makes the relay send `core.relay.client.disconnected
//!   {id_start, id_end_exclusive}` (id 0) to the guest, which kills that range's processes; the
//!   slot is freed only once that message is queued for the guest, so a later client of the
//!   same slot always comes after it on the wire.
//! - When the guest connection ends (EOF, error, or [`RelayHandle::close`]), every client is
//!   closed and the socket file removed.
//! - The owner of the [`RelayHandle`] is the only one who may send connection-level messages
//!   ([`RelayHandle::control`], e.g. `core.shutdown`), and can get an ordinary client without a
//!   socket path ([`RelayHandle::attach`]).
//!
//! # Backpressure policy
//!
//! All clients share one guest stream, so a client that does not read cannot push back on the
//! guest without stalling every other client. Each client therefore has its own bounded queue
//! ([`RelayOptions::client_queue_bytes`], at least one maximal frame). When a frame for a client
//! does not fit, the router waits up to [`RelayOptions::slow_client_grace`] for room (a short
//! burst is absorbed; other clients are delayed at most that long per slow client), then drops
//! the slow client with a logged reason. The owner's client ([`RelayHandle::attach`]) is the
//! exception: it is waited for, as a direct connection would be (the shim keeps its reader
//! moving: output nobody reads is discarded there). The other direction is plain backpressure: client
//! readers await room in the one bounded queue to the guest, which tokio serves in FIFO order.
//!
//! Nothing a peer sends can panic the relay: frames are length-checked by [`FrameCodec`] before
//! anything is allocated, ids are checked arithmetically, and envelope errors are values.
//!
//! # Departed clients' sessions
//!
//! A freed slot is handed to the next client at once. agentd reads
//! `core.relay.client.disconnected` before the newcomer's first frame and then forgets that
//! range's sessions: it kills them and sends nothing more for them. What remains is a narrow
//! window: frames agentd had already queued before it read the message can still reach the
//! newcomer. Its [`AgentClient`](crate::agent::AgentClient) drops frames for ids it has no
//! session for, so only an id it reused in that instant could be confused.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use msb_protocol::codec::FrameCodec;
use msb_protocol::consts::{LEN_PREFIX_SIZE, MAX_FRAME_LEN, RELAY_MAX_CLIENTS};
use msb_protocol::relay::{client_id_range, client_of_id, RangeHeader};
use msb_protocol::types::{ClockSync, InitAck, Ready, RelayClientDisconnected, Shutdown};
use msb_protocol::{Flags, Frame, FrameError, Message, Payload, CONTROL_ID};
use tokio::io::AsyncWriteExt;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio_util::codec::{FramedRead, FramedWrite};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// Frames queued towards the guest before client readers wait (backpressure to clients).
const GUEST_QUEUE: usize = 256;

/// Frames a client's queue holds at most; its byte budget is the tighter bound in practice.
const CLIENT_QUEUE_FRAMES: usize = 4096;

/// The largest frame on the wire (prefix included): a client's byte budget is never below it,
/// or such a frame could never be queued.
const MAX_WIRE_FRAME: usize = LEN_PREFIX_SIZE + MAX_FRAME_LEN as usize;

/// Message types that act on the connection or the VM as a whole. Only the relay's owner may
/// send them (on id 0), never a relay client, whatever id it puts on them.
const CONTROL_TYPES: [&str; 4] = [
    Shutdown::TYPE,
    RelayClientDisconnected::TYPE,
    ClockSync::TYPE,
    InitAck::TYPE,
];

/// Why the relay could not start, or could not do what its owner asked.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// Something other than a stale socket is in the way of the listening socket.
    #[error("{} exists and is not a socket", path.display())]
    PathInUse {
        /// The listening path.
        path: PathBuf,
    },
    /// The listening socket could not be set up.
    #[error("listen on {}", path.display())]
    Listen {
        /// The listening path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The guest did not send `core.ready` in time.
    #[error("no core.ready from the guest within {0:?}")]
    ReadyTimeout(Duration),
    /// The guest connection ended before `core.ready`.
    #[error("the guest closed the connection before core.ready")]
    GuestClosed,
    /// The guest's first bytes are not a valid frame.
    #[error("reading core.ready from the guest")]
    GuestFrame(#[source] FrameError),
    /// The guest's first frame is not a valid `core.ready`.
    #[error("the guest's first frame is not a valid core.ready: {0}")]
    NotReady(String),
    /// The socket pair for [`RelayHandle::attach`] could not be made.
    #[error("create a socket pair for an in-process client")]
    Attach(#[source] std::io::Error),
    /// Every client slot is taken.
    #[error("all {RELAY_MAX_CLIENTS} relay client slots are taken")]
    Full,
    /// The relay has stopped (the guest connection ended or it was closed).
    #[error("the relay has stopped")]
    Stopped,
    /// A control message could not be encoded.
    #[error("encode a control message: {0}")]
    Encode(String),
}

/// Tunables; [`RelayOptions::default`] is what a sandbox uses.
#[derive(Debug, Clone)]
pub struct RelayOptions {
    /// How long to wait for the guest's `core.ready`.
    pub ready_timeout: Duration,
    /// Bytes of frames queued for one client that has not read them yet. Raised to one maximal
    /// frame (4 MiB + prefix) if set lower.
    pub client_queue_bytes: usize,
    /// How long the router waits for room in a full client queue before dropping that client.
    pub slow_client_grace: Duration,
}

impl Default for RelayOptions {
    /// 60 s for `core.ready` (a cold guest under TCG), 16 MiB per client (four maximal frames,
    /// at most 2 GiB for 128 clients that all stop reading), 2 s of grace.
    fn default() -> Self {
        RelayOptions {
            ready_timeout: Duration::from_secs(60),
            client_queue_bytes: 16 * 1024 * 1024,
            slow_client_grace: Duration::from_secs(2),
        }
    }
}

/// Why the relay stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayExit {
    /// The guest closed the agent connection.
    GuestClosed,
    /// Reading from or writing to the guest failed (I/O, or a frame out of bounds).
    GuestFailed(String),
    /// [`RelayHandle::close`] was called or the handle dropped.
    Stopped,
}

impl std::fmt::Display for RelayExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RelayExit::GuestClosed => f.write_str("the guest closed the connection"),
            RelayExit::GuestFailed(why) => write!(f, "the guest connection failed: {why}"),
            RelayExit::Stopped => f.write_str("stopped"),
        }
    }
}

/// Starts relays; see the module documentation.
#[derive(Debug)]
pub struct Relay;

impl Relay {
    /// Takes over the agent connection `guest` (nothing may have read from it yet), waits for
    /// `core.ready`, then serves clients on a new Unix socket at `listen` (mode 0600; a stale
    /// socket file there is replaced).
    pub async fn serve(
        guest: UnixStream,
        listen: &Path,
        opts: RelayOptions,
    ) -> Result<RelayHandle, RelayError> {
        let (r, w) = guest.into_split();
        let mut guest_reader = FramedRead::new(r, FrameCodec);
        let first = tokio::time::timeout(opts.ready_timeout, guest_reader.next())
            .await
            .map_err(|_| RelayError::ReadyTimeout(opts.ready_timeout))?;
        let ready_frame = match first {
            Some(Ok(frame)) => frame,
            Some(Err(e)) => return Err(RelayError::GuestFrame(e)),
            None => return Err(RelayError::GuestClosed),
        };
        let ready = Message::from_frame(&ready_frame)
            .and_then(|m| m.decode::<Ready>())
            .map_err(|e| RelayError::NotReady(e.to_string()))?;
        if ready_frame.id != CONTROL_ID {
            return Err(RelayError::NotReady(format!(
                "core.ready on id {}, not 0",
                ready_frame.id
            )));
        }
        // Encoded once: every client gets these bytes right after its range header.
        let ready_bytes = ready_frame
            .to_bytes()
            .map_err(|e| RelayError::NotReady(e.to_string()))?;
        let listener = bind(listen)?;

        let span = tracing::Span::current();
        let cancel = CancellationToken::new();
        let (guest_tx, guest_rx) = mpsc::channel(GUEST_QUEUE);
        let shared = Arc::new(Shared {
            slots: Mutex::new((0..RELAY_MAX_CLIENTS).map(|_| None).collect()),
            guest_tx,
            ready: ready_bytes,
            queue_bytes: opts.client_queue_bytes.max(MAX_WIRE_FRAME),
            grace: opts.slow_client_grace,
            cancel: cancel.clone(),
            span: span.clone(),
        });
        let exit = Arc::new(Mutex::new(None));
        let writer = tokio::spawn(
            write_guest(w, guest_rx, cancel.clone(), exit.clone()).instrument(span.clone()),
        );
        let accept = tokio::spawn(
            accept_clients(listener, listen.to_owned(), shared.clone()).instrument(span.clone()),
        );
        let router = tokio::spawn(
            route_guest(guest_reader, shared.clone(), exit.clone()).instrument(span.clone()),
        );
        tracing::info!(socket = %listen.display(), "relay serving");
        Ok(RelayHandle {
            path: listen.to_owned(),
            ready,
            shared,
            tasks: vec![router, accept, writer],
            exit,
        })
    }
}

/// A running relay. Dropping it stops the relay like [`RelayHandle::close`] without waiting.
#[derive(Debug)]
pub struct RelayHandle {
    path: PathBuf,
    ready: Ready,
    shared: Arc<Shared>,
    /// Router, acceptor, guest writer.
    tasks: Vec<JoinHandle<()>>,
    exit: Arc<Mutex<Option<RelayExit>>>,
}

impl RelayHandle {
    /// The socket clients connect to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What the guest announced (every client receives the same frame).
    pub fn ready(&self) -> &Ready {
        &self.ready
    }

    /// Clients connected now.
    pub fn clients(&self) -> usize {
        self.shared.slots().iter().filter(|s| s.is_some()).count()
    }

    /// Why the relay stopped, or `None` while it runs.
    pub fn exit(&self) -> Option<RelayExit> {
        lock(&self.exit).clone()
    }

    /// Waits until the relay stops on its own (the guest connection ended).
    pub async fn stopped(&self) -> RelayExit {
        self.shared.cancel.cancelled().await;
        self.exit().unwrap_or(RelayExit::Stopped)
    }

    /// A client connection that needs no socket path, for the relay's owner in this process
    /// (pass it to [`AgentClient::connect_relay`](crate::agent::AgentClient::connect_relay)).
    /// Same rules and lowest free slot as any client, except that it is never dropped as a slow
    /// reader: its frames wait for room, which is backpressure to the guest, as on a direct
    /// connection. The owner controls the VM; losing its connection would orphan the sandbox.
    pub fn attach(&self) -> Result<UnixStream, RelayError> {
        let (ours, theirs) = UnixStream::pair().map_err(RelayError::Attach)?;
        match admit(&self.shared, ours, true) {
            Some(_) => Ok(theirs),
            None if self.shared.cancel.is_cancelled() => Err(RelayError::Stopped),
            None => Err(RelayError::Full),
        }
    }

    /// Sends a connection-level message (id 0) to the guest, such as `core.shutdown` or
    /// `core.clock.sync`. Only the relay's owner may do this; clients are dropped for trying.
    pub async fn control<P: Payload>(&self, p: &P) -> Result<(), RelayError> {
        let m = Message::new(CONTROL_ID, p).map_err(|e| RelayError::Encode(e.to_string()))?;
        tokio::select! {
            biased;
            _ = self.shared.cancel.cancelled() => Err(RelayError::Stopped),
            r = self.shared.guest_tx.send(m.to_frame()) => r.map_err(|_| RelayError::Stopped),
        }
    }

    /// Stops the relay: closes every client and the guest connection, removes the socket file,
    /// and waits (a bounded time) until every client has been let go.
    pub async fn close(mut self) -> RelayExit {
        set_exit(&self.exit, RelayExit::Stopped);
        self.shared.cancel.cancel();
        for task in self.tasks.drain(..) {
            let _ = task.await;
        }
        // Client tasks free their slot right after the cancellation, without awaiting anything.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
        while self.clients() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        self.exit().unwrap_or(RelayExit::Stopped)
    }
}

impl Drop for RelayHandle {
    fn drop(&mut self) {
        set_exit(&self.exit, RelayExit::Stopped);
        self.shared.cancel.cancel();
        // The acceptor removes the file when it stops; removing it here too covers a runtime
        // that is shutting down and will not run it again.
        let _ = std::fs::remove_file(&self.path);
    }
}

/// State shared by the relay's tasks.
#[derive(Debug)]
struct Shared {
    /// Client slots; the index is the slot number.
    slots: Mutex<Vec<Option<ClientEntry>>>,
    /// Frames to the guest, from client readers and the relay itself.
    guest_tx: mpsc::Sender<Frame>,
    /// The cached `core.ready` frame, encoded.
    ready: bytes::Bytes,
    /// Byte budget of each client's queue.
    queue_bytes: usize,
    /// See [`RelayOptions::slow_client_grace`].
    grace: Duration,
    /// Cancelled when the relay stops; each client's token is a child.
    cancel: CancellationToken,
    /// The span `serve` was called in, for the tasks spawned later.
    span: tracing::Span,
}

impl Shared {
    fn slots(&self) -> MutexGuard<'_, Vec<Option<ClientEntry>>> {
        lock(&self.slots)
    }
}

/// What the router needs to reach one client.
#[derive(Debug, Clone)]
struct ClientEntry {
    /// Frames for the client, each holding its share of the byte budget until written.
    tx: mpsc::Sender<(Frame, OwnedSemaphorePermit)>,
    /// The client's byte budget (permits are bytes).
    budget: Arc<Semaphore>,
    /// Cancelled to drop the client.
    cancel: CancellationToken,
    /// The relay's owner ([`RelayHandle::attach`]): never dropped as a slow reader.
    owner: bool,
}

impl ClientEntry {
    /// Queues `frame` for the client, waiting at most `grace` for room (the owner: as long as it
    /// takes).
    async fn enqueue(&self, frame: Frame, grace: Duration) -> Enqueue {
        // Bounded by the codec (a frame is at most 4 MiB + 4 bytes), so it fits a u32.
        let need = u32::try_from(frame.wire_len()).unwrap_or(u32::MAX);
        let queue = async {
            let permit = self.budget.clone().acquire_many_owned(need).await.ok()?;
            self.tx.send((frame, permit)).await.ok()
        };
        if self.owner {
            return match queue.await {
                Some(()) => Enqueue::Queued,
                None => Enqueue::Gone,
            };
        }
        match tokio::time::timeout(grace, queue).await {
            Ok(Some(())) => Enqueue::Queued,
            Ok(None) => Enqueue::Gone,
            Err(_) => Enqueue::Full,
        }
    }
}

/// Outcome of [`ClientEntry::enqueue`].
enum Enqueue {
    Queued,
    /// The client is already leaving.
    Gone,
    /// No room within the grace period: the client does not read.
    Full,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Records the first reason the relay stopped.
fn set_exit(exit: &Mutex<Option<RelayExit>>, why: RelayExit) {
    lock(exit).get_or_insert(why);
}

/// Binds the listening socket, replacing a stale socket file, and makes it owner-only.
fn bind(path: &Path) -> Result<UnixListener, RelayError> {
    let listen_err = |source| RelayError::Listen {
        path: path.to_owned(),
        source,
    };
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => std::fs::remove_file(path).map_err(listen_err)?,
        Ok(_) => {
            return Err(RelayError::PathInUse {
                path: path.to_owned(),
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(listen_err(e)),
    }
    let listener = crate::socket_path::bind(path).map_err(listen_err)?;
    // Clients are host processes of the sandbox's owner; nobody else may drive the guest.
    if let Err(e) = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)) {
        let _ = std::fs::remove_file(path);
        return Err(listen_err(e));
    }
    Ok(listener)
}

/// Writes frames to the guest until the relay stops or the write fails.
async fn write_guest(
    w: OwnedWriteHalf,
    mut rx: mpsc::Receiver<Frame>,
    cancel: CancellationToken,
    exit: Arc<Mutex<Option<RelayExit>>>,
) {
    let mut writer = FramedWrite::new(w, FrameCodec);
    loop {
        let frame = tokio::select! {
            f = rx.recv() => f,
            _ = cancel.cancelled() => None,
        };
        let Some(frame) = frame else { break };
        if let Err(e) = writer.send(frame).await {
            tracing::warn!("relay: writing to the guest: {e}");
            set_exit(&exit, RelayExit::GuestFailed(format!("write: {e}")));
            cancel.cancel();
            break;
        }
    }
    // Closing our half tells the guest the host is gone even if the read half lingers.
    let _ = writer.into_inner().shutdown().await;
}

/// Reads the guest and routes each frame; when the guest connection ends, stops the relay.
async fn route_guest(
    mut reader: FramedRead<OwnedReadHalf, FrameCodec>,
    shared: Arc<Shared>,
    exit: Arc<Mutex<Option<RelayExit>>>,
) {
    let why = loop {
        let next = tokio::select! {
            n = reader.next() => n,
            _ = shared.cancel.cancelled() => break RelayExit::Stopped,
        };
        match next {
            Some(Ok(frame)) => route(&shared, frame).await,
            Some(Err(e)) => break RelayExit::GuestFailed(e.to_string()),
            None => break RelayExit::GuestClosed,
        }
    };
    match &why {
        RelayExit::Stopped => tracing::debug!("relay stopped"),
        // The host ends the connection here (an oversized or undecodable frame): its clients
        // then see only a closed connection, so the cause is said where it is known.
        RelayExit::GuestFailed(_) => tracing::warn!("relay ends, closing every client: {why}"),
        other => tracing::info!("relay ends, closing every client: {other}"),
    }
    set_exit(&exit, why);
    shared.cancel.cancel();
}

/// Sends one guest frame to its client, or to every client for id 0.
async fn route(shared: &Shared, frame: Frame) {
    if frame.id == CONTROL_ID {
        let targets: Vec<(u32, ClientEntry)> = shared
            .slots()
            .iter()
            .enumerate()
            .filter_map(|(k, e)| Some((u32::try_from(k).ok()?, e.clone()?)))
            .collect();
        for (slot, entry) in targets {
            deliver(shared, slot, &entry, frame.clone()).await;
        }
        return;
    }
    let Some(slot) = client_of_id(frame.id) else {
        tracing::debug!(
            id = frame.id,
            "relay: guest frame outside every client range"
        );
        return;
    };
    let entry = shared.slots().get(slot as usize).cloned().flatten();
    match entry {
        Some(entry) => deliver(shared, slot, &entry, frame).await,
        None => tracing::debug!(id = frame.id, slot, "relay: guest frame for a free slot"),
    }
}

/// Queues a frame for a client; drops the client when its queue stays full.
async fn deliver(shared: &Shared, slot: u32, entry: &ClientEntry, frame: Frame) {
    if let Enqueue::Full = entry.enqueue(frame, shared.grace).await {
        tracing::warn!(
            relay_client = slot,
            "relay: dropping a client that does not read ({} bytes queued for {:?})",
            shared.queue_bytes,
            shared.grace
        );
        entry.cancel.cancel();
    }
}

/// Accepts clients into the lowest free slot until the relay stops, then removes the socket.
async fn accept_clients(listener: UnixListener, path: PathBuf, shared: Arc<Shared>) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shared.cancel.cancelled() => break,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of fds and the like: transient; do not spin.
                tracing::warn!("relay: accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if admit(&shared, stream, false).is_none() {
            tracing::warn!("relay: refusing a client: all {RELAY_MAX_CLIENTS} slots are taken");
        }
    }
    drop(listener);
    let _ = std::fs::remove_file(path);
}

/// Gives `stream` the lowest free slot and starts serving it; `None` (and `stream` closed: the
/// client reads end-of-stream instead of a header) when every slot is taken or the relay has
/// stopped.
fn admit(shared: &Arc<Shared>, stream: UnixStream, owner: bool) -> Option<u32> {
    if shared.cancel.is_cancelled() {
        return None;
    }
    let (tx, rx) = mpsc::channel(CLIENT_QUEUE_FRAMES);
    let entry = ClientEntry {
        tx,
        budget: Arc::new(Semaphore::new(shared.queue_bytes)),
        cancel: shared.cancel.child_token(),
        owner,
    };
    let slot = {
        let mut slots = shared.slots();
        let free = slots.iter().position(Option::is_none)?;
        let slot = u32::try_from(free).ok()?;
        slots[free] = Some(entry.clone());
        slot
    };
    let span = tracing::info_span!(parent: &shared.span, "relay_client", slot);
    tokio::spawn(serve_client(shared.clone(), slot, stream, entry, rx).instrument(span));
    Some(slot)
}

/// Runs one client until it leaves, breaks a rule or the relay stops; then tells the guest and
/// frees the slot.
async fn serve_client(
    shared: Arc<Shared>,
    slot: u32,
    stream: UnixStream,
    entry: ClientEntry,
    rx: mpsc::Receiver<(Frame, OwnedSemaphorePermit)>,
) {
    // The slot was taken from 0..RELAY_MAX_CLIENTS, so the range exists.
    let ids = client_id_range(slot).unwrap_or(0..0);
    let header = RangeHeader {
        id_start: ids.start,
        id_end_exclusive: ids.end,
    };
    tracing::debug!("relay: client connected, ids {ids:?}");
    let (r, w) = stream.into_split();
    let why = tokio::select! {
        why = read_client(r, ids.clone(), &shared.guest_tx) => why,
        why = write_client(w, header, shared.ready.clone(), rx) => why,
        _ = entry.cancel.cancelled() => if shared.cancel.is_cancelled() {
            "the relay stopped".to_owned()
        } else {
            "dropped as a slow reader".to_owned()
        },
    };
    tracing::info!("relay: client {slot} gone: {why}");
    // Waiters for room in this client's queue give up now rather than after the grace period.
    entry.budget.close();
    if !shared.cancel.is_cancelled() {
        let gone = RelayClientDisconnected {
            id_start: ids.start,
            id_end_exclusive: ids.end,
        };
        match Message::new(CONTROL_ID, &gone) {
            Ok(m) => {
                // Queued before the slot is freed: a later client of this slot comes after it.
                tokio::select! {
                    _ = shared.guest_tx.send(m.to_frame()) => {}
                    _ = shared.cancel.cancelled() => {}
                }
            }
            Err(e) => tracing::error!("relay: encoding core.relay.client.disconnected: {e}"),
        }
    }
    shared.slots()[slot as usize] = None;
}

/// Forwards a client's frames to the guest; returns why the client must go.
async fn read_client(
    r: OwnedReadHalf,
    ids: std::ops::Range<u32>,
    guest_tx: &mpsc::Sender<Frame>,
) -> String {
    let mut reader = FramedRead::new(r, FrameCodec);
    loop {
        let frame = match reader.next().await {
            Some(Ok(frame)) => frame,
            Some(Err(e)) => return format!("invalid framing: {e}"),
            None => return "disconnected".to_owned(),
        };
        if !ids.contains(&frame.id) {
            return format!("sent id {} outside its range {ids:?}", frame.id);
        }
        if frame.flags.contains(Flags::SHUTDOWN) {
            return format!("sent a shutdown-flagged frame on id {}", frame.id);
        }
        // Malformed envelopes go through: the guest answers them with core.error on that id.
        if let Ok(m) = Message::from_frame(&frame) {
            if CONTROL_TYPES.contains(&m.kind.as_str()) {
                return format!("sent the control message {} on id {}", m.kind, frame.id);
            }
        }
        if guest_tx.send(frame).await.is_err() {
            return "the guest connection is gone".to_owned();
        }
    }
}

/// Writes the range header, `core.ready`, then the client's queue; returns why it stopped.
async fn write_client(
    mut w: OwnedWriteHalf,
    header: RangeHeader,
    ready: bytes::Bytes,
    mut rx: mpsc::Receiver<(Frame, OwnedSemaphorePermit)>,
) -> String {
    if let Err(e) = w.write_all(&header.to_bytes()).await {
        return format!("writing the range header: {e}");
    }
    if let Err(e) = w.write_all(&ready).await {
        return format!("writing core.ready: {e}");
    }
    let mut writer = FramedWrite::new(w, FrameCodec);
    while let Some((frame, permit)) = rx.recv().await {
        if let Err(e) = writer.send(frame).await {
            return format!("write: {e}");
        }
        drop(permit);
    }
    // The router holds a sender while the slot is taken, so this is not reached in practice.
    "queue closed".to_owned()
}
