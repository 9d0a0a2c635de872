//! Connection, sessions and routing.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use msb_protocol::codec::FrameCodec;
use msb_protocol::relay::RangeHeader;
use msb_protocol::types::*;
use msb_protocol::{Flags, Frame, Message, MessageError, Payload};
use tokio::io::AsyncReadExt;
use tokio::net::UnixStream;
use tokio::sync::mpsc::error::SendTimeoutError;
use tokio::sync::{broadcast, mpsc};
use tokio_util::codec::{FramedRead, FramedWrite};

/// Frames a session may have queued before the reader waits for its consumer.
const SESSION_QUEUE: usize = 64;

/// Why a request failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AgentError {
    /// The connection is gone; the reason is kept.
    #[error("agent connection closed: {0}")]
    Closed(String),
    /// The guest answered with `core.error`.
    #[error("agent refused {request}: {kind:?}: {message}")]
    Refused {
        /// The request type.
        request: String,
        /// Error kind.
        kind: ErrorKind,
        /// Detail.
        message: String,
    },
    /// A container request failed in the guest.
    #[error("container {id}: {message}")]
    Container {
        /// Container id.
        id: String,
        /// The guest's message.
        message: String,
    },
    /// A file operation failed in the guest.
    #[error("{path}: {message}")]
    Fs {
        /// The path in the guest.
        path: String,
        /// The guest's message.
        message: String,
    },
    /// The guest could not configure the pod network.
    #[error("guest network: {0}")]
    Network(String),
    /// The guest answered with something unexpected or undecodable.
    #[error("unexpected reply: {0}")]
    Protocol(String),
    /// The guest did not answer (or take a frame) before a deadline: what and how long.
    #[error("timed out: {0}")]
    Timeout(String),
}

/// How long the client waits on the guest ([`AgentClient::with_deadlines`]). The defaults are
/// `msb_protocol`'s constants, whose doc comments say why each value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadlines {
    /// Reply to a quick request ([`msb_protocol::AGENT_REPLY_TIMEOUT`]).
    pub reply: Duration,
    /// Reply to a request that works in the guest: container create and delete, the start of a
    /// process, the network, a file write ([`msb_protocol::AGENT_WORK_TIMEOUT`]).
    pub work: Duration,
    /// Room to queue one frame for the guest ([`msb_protocol::AGENT_SEND_TIMEOUT`]).
    pub send: Duration,
}

impl Default for Deadlines {
    fn default() -> Self {
        Self {
            reply: msb_protocol::AGENT_REPLY_TIMEOUT,
            work: msb_protocol::AGENT_WORK_TIMEOUT,
            send: msb_protocol::AGENT_SEND_TIMEOUT,
        }
    }
}

impl From<MessageError> for AgentError {
    fn from(e: MessageError) -> Self {
        AgentError::Protocol(e.to_string())
    }
}

#[derive(Debug)]
struct Shared {
    sessions: Mutex<HashMap<u32, mpsc::Sender<Message>>>,
    closed: Mutex<Option<String>>,
    next_id: AtomicU32,
    ids: Range<u32>,
}

impl Shared {
    fn close(&self, reason: String) {
        let mut closed = self.closed.lock().unwrap_or_else(|e| e.into_inner());
        if closed.is_none() {
            tracing::debug!("agent connection closed: {reason}");
            *closed = Some(reason);
        }
        // Dropping the senders ends every session's stream.
        self.sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    fn closed_error(&self) -> AgentError {
        AgentError::Closed(
            self.closed
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone()
                .unwrap_or_else(|| "connection ended".into()),
        )
    }
}

/// A connected client. Cheap to clone.
///
/// Nothing waits on the guest without a deadline ([`Deadlines`]) except what may rightly wait
/// forever: a session's next frame once it runs (a process's output, a forwarded port's data)
/// and room in a process's stdin window (a process need not read its stdin). Those end when
/// their session does, and every session ends when the connection does (the VMM killed).
#[derive(Debug, Clone)]
pub struct AgentClient {
    shared: Arc<Shared>,
    tx: mpsc::Sender<Frame>,
    events: broadcast::Sender<Message>,
    deadlines: Deadlines,
}

/// One correlation id's frames.
#[derive(Debug)]
pub struct Session {
    id: u32,
    rx: mpsc::Receiver<Message>,
    client: AgentClient,
}

impl Session {
    /// The correlation id.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The next frame of this session, or the connection's failure.
    pub async fn recv(&mut self) -> Result<Message, AgentError> {
        match self.rx.recv().await {
            Some(m) => Ok(m),
            None => Err(self.client.shared.closed_error()),
        }
    }

    /// Sends a frame on this session.
    pub async fn send<P: Payload>(&self, p: &P) -> Result<(), AgentError> {
        self.client.send(self.id, p).await
    }

    /// The connection it belongs to.
    pub(super) fn client(&self) -> &AgentClient {
        &self.client
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.client
            .shared
            .sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.id);
    }
}

impl AgentClient {
    /// Connects straight to a VM's agent socket and waits up to `timeout` for `core.ready`.
    pub async fn connect_direct(
        stream: UnixStream,
        timeout: Duration,
    ) -> Result<(AgentClient, Ready), AgentError> {
        Self::start(stream, 1..msb_protocol::RELAY_ID_STEP, timeout).await
    }

    /// Connects through a relay: reads the id range it assigns, then `core.ready`.
    pub async fn connect_relay(
        mut stream: UnixStream,
        timeout: Duration,
    ) -> Result<(AgentClient, Ready), AgentError> {
        let mut header = [0u8; RangeHeader::SIZE];
        tokio::time::timeout(timeout, stream.read_exact(&mut header))
            .await
            .map_err(|_| AgentError::Timeout(format!("no relay range header within {timeout:?}")))?
            .map_err(|e| AgentError::Closed(format!("reading the relay range header: {e}")))?;
        let range = RangeHeader::from_bytes(header).ok_or_else(|| {
            AgentError::Protocol(format!("invalid relay range header {header:?}"))
        })?;
        Self::start(stream, range.id_start..range.id_end_exclusive, timeout).await
    }

    async fn start(
        stream: UnixStream,
        ids: Range<u32>,
        timeout: Duration,
    ) -> Result<(AgentClient, Ready), AgentError> {
        let (r, w) = stream.into_split();
        let mut reader = FramedRead::new(r, FrameCodec);
        let first = tokio::time::timeout(timeout, reader.next())
            .await
            .map_err(|_| AgentError::Timeout(format!("no core.ready within {timeout:?}")))?;
        let ready = match first {
            Some(Ok(frame)) => Message::from_frame(&frame)?.decode::<Ready>()?,
            Some(Err(e)) => return Err(AgentError::Closed(e.to_string())),
            None => {
                return Err(AgentError::Closed(
                    "the guest closed the connection before core.ready".into(),
                ))
            }
        };
        let shared = Arc::new(Shared {
            sessions: Mutex::default(),
            closed: Mutex::default(),
            next_id: AtomicU32::new(ids.start),
            ids,
        });
        let (tx, mut rx) = mpsc::channel::<Frame>(SESSION_QUEUE);
        let (events, _) = broadcast::channel(64);
        let s = shared.clone();
        tokio::spawn(async move {
            let mut writer = FramedWrite::new(w, FrameCodec);
            while let Some(frame) = rx.recv().await {
                if let Err(e) = writer.send(frame).await {
                    s.close(format!("write: {e}"));
                    break;
                }
            }
        });
        let (s, ev) = (shared.clone(), events.clone());
        tokio::spawn(async move {
            let reason = loop {
                match reader.next().await {
                    Some(Ok(frame)) => route(&s, &ev, frame).await,
                    Some(Err(e)) => break format!("invalid data from the guest: {e}"),
                    None => break "the guest closed the connection".to_owned(),
                }
            };
            s.close(reason);
        });
        Ok((
            AgentClient {
                shared,
                tx,
                events,
                deadlines: Deadlines::default(),
            },
            ready,
        ))
    }

    /// The same connection, waiting on the guest at most `deadlines` (the default is
    /// `msb_protocol`'s constants).
    pub fn with_deadlines(mut self, deadlines: Deadlines) -> AgentClient {
        self.deadlines = deadlines;
        self
    }

    /// How long this client waits on the guest.
    pub fn deadlines(&self) -> Deadlines {
        self.deadlines
    }

    /// Whether the connection has failed, and why.
    pub fn closed_reason(&self) -> Option<String> {
        self.shared
            .closed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Connection-level events from the guest (id 0), such as `core.container.oom`.
    pub fn events(&self) -> broadcast::Receiver<Message> {
        self.events.subscribe()
    }

    /// Sends one frame. Waits at most [`Deadlines::send`] for room in the connection's queue,
    /// which stays full only while the guest does not read its port.
    pub async fn send<P: Payload>(&self, id: u32, p: &P) -> Result<(), AgentError> {
        let frame = Message::new(id, p)?.to_frame();
        match self.tx.send_timeout(frame, self.deadlines.send).await {
            Ok(()) => Ok(()),
            Err(SendTimeoutError::Closed(_)) => Err(self.shared.closed_error()),
            Err(SendTimeoutError::Timeout(_)) => Err(AgentError::Timeout(format!(
                "{} not sent: the guest read nothing from its port for {:?}",
                P::TYPE,
                self.deadlines.send
            ))),
        }
    }

    /// Opens a session with its first message.
    pub async fn request<P: Payload>(&self, p: &P) -> Result<Session, AgentError> {
        let id = self.allocate_id();
        let (tx, rx) = mpsc::channel(SESSION_QUEUE);
        {
            // Checked and registered under the `closed` lock, which `close` holds while it drops
            // every session: a session is either refused here or ended there, never left open.
            let closed = self.shared.closed.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(reason) = closed.as_ref() {
                return Err(AgentError::Closed(reason.clone()));
            }
            self.shared
                .sessions
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(id, tx);
        }
        let session = Session {
            id,
            rx,
            client: self.clone(),
        };
        self.send(id, p).await?;
        Ok(session)
    }

    fn allocate_id(&self) -> u32 {
        let ids = &self.shared.ids;
        loop {
            let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
            if ids.contains(&id) {
                return id;
            }
            // Wrapped around the range: start over (ids of finished sessions are free again).
            let _ = self.shared.next_id.compare_exchange(
                id.wrapping_add(1),
                ids.start,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
    }

    /// One request, one terminal reply of type `R` (or `core.container.failed`/`core.error`),
    /// within [`Deadlines::reply`].
    pub async fn call<P: Payload, R: Payload>(&self, p: &P) -> Result<R, AgentError> {
        self.call_within(p, self.deadlines.reply).await
    }

    /// [`AgentClient::call`] for a request that works in the guest: within [`Deadlines::work`].
    async fn work<P: Payload, R: Payload>(&self, p: &P) -> Result<R, AgentError> {
        self.call_within(p, self.deadlines.work).await
    }

    async fn call_within<P: Payload, R: Payload>(
        &self,
        p: &P,
        deadline: Duration,
    ) -> Result<R, AgentError> {
        let mut s = self.request(p).await?;
        let m = reply_within(P::TYPE, deadline, s.recv()).await?;
        reply::<R>(P::TYPE, m)
    }

    /// Writes a whole file in the VM, or in `container`'s root (resolved inside it), creating
    /// parent directories: `core.fs.request` (write), the data in chunks, an empty chunk, then
    /// the guest's `core.fs.response`.
    pub async fn write_file(
        &self,
        container: Option<&str>,
        path: &str,
        mode: u32,
        data: &[u8],
    ) -> Result<(), AgentError> {
        let req = FsRequest {
            op: FsOp::Write {
                path: path.to_owned(),
                mode: Some(mode),
            },
            container: container.map(str::to_owned),
        };
        let mut s = self.request(&req).await?;
        for chunk in data.chunks(msb_protocol::MAX_STREAM_CHUNK) {
            s.send(&FsData {
                data: chunk.to_vec(),
            })
            .await?;
        }
        s.send(&FsData { data: Vec::new() }).await?;
        let m = reply_within(FsRequest::TYPE, self.deadlines.work, s.recv()).await?;
        let r = reply::<FsResponse>(FsRequest::TYPE, m)?;
        if r.ok {
            Ok(())
        } else {
            Err(AgentError::Fs {
                path: path.to_owned(),
                message: r.error.unwrap_or_default(),
            })
        }
    }

    /// `core.container.create`: prepares a container's root.
    pub async fn container_create(&self, c: &ContainerCreate) -> Result<(), AgentError> {
        self.work::<_, ContainerCreated>(c).await.map(drop)
    }

    /// Freezes a container.
    pub async fn container_pause(&self, id: &str) -> Result<(), AgentError> {
        self.call::<_, ContainerDone>(&ContainerPause { id: id.into() })
            .await
            .map(drop)
    }

    /// Thaws a container.
    pub async fn container_resume(&self, id: &str) -> Result<(), AgentError> {
        self.call::<_, ContainerDone>(&ContainerResume { id: id.into() })
            .await
            .map(drop)
    }

    /// Changes a container's limits.
    pub async fn container_update(&self, id: &str, resources: Resources) -> Result<(), AgentError> {
        self.call::<_, ContainerDone>(&ContainerUpdate {
            id: id.into(),
            resources,
        })
        .await
        .map(drop)
    }

    /// Removes a container (kills what is left, unmounts).
    pub async fn container_delete(&self, id: &str) -> Result<(), AgentError> {
        self.work::<_, ContainerDone>(&ContainerDelete { id: id.into() })
            .await
            .map(drop)
    }

    /// Configures the pod network in the guest (`core.net.configure`).
    pub async fn net_configure(&self, c: &NetConfigure) -> Result<(), AgentError> {
        let mut s = self.request(c).await?;
        let m = reply_within(NetConfigure::TYPE, self.deadlines.work, s.recv()).await?;
        if m.kind == NetFailed::TYPE {
            return Err(AgentError::Network(m.decode::<NetFailed>()?.message));
        }
        reply::<NetConfigured>(NetConfigure::TYPE, m).map(drop)
    }

    /// `core.restore`: makes a VM restored from a template the sandbox's
    /// ([`crate::template`]).
    pub async fn restore(&self, r: &Restore) -> Result<(), AgentError> {
        self.work::<Restore, Restored>(r).await.map(drop)
    }

    /// A container's cgroup figures.
    pub async fn container_stats(&self, id: &str) -> Result<ContainerStatsReply, AgentError> {
        self.call(&ContainerStats { id: id.into() }).await
    }

    /// A container's pids.
    pub async fn container_pids(&self, id: &str) -> Result<Vec<u32>, AgentError> {
        self.call::<_, ContainerPidsReply>(&ContainerPids { id: id.into() })
            .await
            .map(|r| r.pids)
    }

    /// Round trip.
    pub async fn ping(&self) -> Result<(), AgentError> {
        self.call::<_, Pong>(&Ping {}).await.map(drop)
    }

    /// Asks the guest to stop its containers and power off.
    pub async fn shutdown(&self) -> Result<(), AgentError> {
        self.send(0, &Shutdown).await
    }
}

/// The reply `recv` gives, or a timeout naming `request` after `deadline`.
pub(super) async fn reply_within(
    request: &str,
    deadline: Duration,
    recv: impl std::future::Future<Output = Result<Message, AgentError>>,
) -> Result<Message, AgentError> {
    tokio::time::timeout(deadline, recv)
        .await
        .map_err(|_| AgentError::Timeout(format!("no reply to {request} within {deadline:?}")))?
}

/// Decodes a terminal reply, turning guest-side failures into errors.
fn reply<R: Payload>(request: &str, m: Message) -> Result<R, AgentError> {
    match m.kind.as_str() {
        k if k == R::TYPE => Ok(m.decode::<R>()?),
        ContainerFailed::TYPE => {
            let f = m.decode::<ContainerFailed>()?;
            Err(AgentError::Container {
                id: f.id,
                message: f.message,
            })
        }
        ErrorReply::TYPE => {
            let e = m.decode::<ErrorReply>()?;
            Err(AgentError::Refused {
                request: request.into(),
                kind: e.kind,
                message: e.message,
            })
        }
        other => Err(AgentError::Protocol(format!(
            "{other} in reply to {request}"
        ))),
    }
}

async fn route(shared: &Shared, events: &broadcast::Sender<Message>, frame: Frame) {
    let msg = match Message::from_frame(&frame) {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!("dropping a frame from the guest: {e}");
            return;
        }
    };
    if msg.id == msb_protocol::CONTROL_ID {
        let _ = events.send(msg);
        return;
    }
    let terminal = msg.flags.contains(Flags::TERMINAL);
    let tx = {
        let mut sessions = shared.sessions.lock().unwrap_or_else(|e| e.into_inner());
        if terminal {
            sessions.remove(&msg.id)
        } else {
            sessions.get(&msg.id).cloned()
        }
    };
    match tx {
        // Awaiting here is the backpressure: a slow consumer stops the reader.
        Some(tx) => {
            let _ = tx.send(msg).await;
        }
        None => tracing::debug!("frame for unknown session {}: {}", msg.id, msg.kind),
    }
}
