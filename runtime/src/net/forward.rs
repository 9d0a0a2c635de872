//! Port forwarding into the VM: what `kubectl port-forward` reaches.
//!
//! containerd's CRI serves a PortForward stream by dialling `localhost:PORT` from inside the
//! pod's network namespace. With runc a container process listens there; with a microVM the
//! namespace holds only the redirected veth and the TAP, and its loopback is nobody's. So the
//! [`PortForwarder`] listens, on `127.0.0.1` and `::1` of the pod's namespace, on every TCP port
//! that listens in the VM (agentd reports the set, `core.port.listening`), and relays each
//! connection it accepts over the agent channel as a `core.port.*` session (see
//! `msb_protocol::port`): agentd connects to the port inside the VM.
//!
//! Listeners follow the guest's set: a port that stops listening in the VM stops listening here
//! (connections already relayed go on). The sockets are made in the pod's namespace by a
//! short-lived thread that entered it, and served by tokio like any other socket. Everything
//! stops when the forwarder is dropped (the VM's end).

use std::collections::HashMap;
use std::fs::File;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use msb_protocol::port::{
    PortAck, PortClose, PortClosed, PortConnect, PortConnected, PortData, PortListening,
    PORT_CHUNK, PORT_WINDOW,
};
use msb_protocol::types::ErrorReply;
use msb_protocol::{Message, Payload};
use nix::sched::CloneFlags;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::agent::{AgentClient, AgentError, Session};

/// How long the guest may take to answer `core.port.connect`.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Forwards the pod namespace's loopback ports to the VM's listening ports; stops when dropped.
#[derive(Debug)]
pub struct PortForwarder {
    stop: CancellationToken,
}

impl PortForwarder {
    /// Starts following `events` (the agent's control messages, subscribed before the pod
    /// network was configured so that no report is missed) for the VM behind `agent`, serving
    /// the loopback of the namespace at `netns`, or of the caller's own (the host's) for a pod
    /// in the host's network. Must be called within a tokio runtime.
    pub fn start(
        netns: Option<&Path>,
        agent: AgentClient,
        events: broadcast::Receiver<Message>,
    ) -> PortForwarder {
        let stop = CancellationToken::new();
        let follow = follow(netns.map(Path::to_owned), agent, events, stop.clone());
        let token = stop.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = token.cancelled() => {}
                () = follow => {}
            }
        });
        PortForwarder { stop }
    }
}

impl Drop for PortForwarder {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Keeps one set of listeners per port the guest reports.
async fn follow(
    netns: Option<PathBuf>,
    agent: AgentClient,
    mut events: broadcast::Receiver<Message>,
    stop: CancellationToken,
) {
    let mut listeners: HashMap<u16, CancellationToken> = HashMap::new();
    loop {
        let msg = match events.recv().await {
            Ok(m) => m,
            Err(broadcast::error::RecvError::Lagged(n)) => {
                tracing::debug!(n, "port forwarder: agent events skipped");
                continue;
            }
            Err(broadcast::error::RecvError::Closed) => return,
        };
        if msg.kind != PortListening::TYPE {
            continue;
        }
        let ports = match msg.decode::<PortListening>() {
            Ok(l) => l.ports,
            Err(e) => {
                tracing::warn!("port forwarder: {e}");
                continue;
            }
        };
        listeners.retain(|port, token| {
            let keep = ports.contains(port);
            if !keep {
                tracing::debug!(port, "no longer listening in the VM: not forwarded");
                token.cancel();
            }
            keep
        });
        let new: Vec<u16> = ports
            .iter()
            .copied()
            .filter(|p| !listeners.contains_key(p))
            .collect();
        if new.is_empty() {
            continue;
        }
        let ns = netns.clone();
        let bound = tokio::task::spawn_blocking(move || bind_in_netns(ns.as_deref(), &new)).await;
        let bound = match bound {
            Ok(Ok(b)) => b,
            Ok(Err(e)) => {
                tracing::warn!(netns = ?netns, "port forwarding: {e}");
                continue;
            }
            Err(e) => {
                tracing::warn!("port forwarding: the namespace thread failed: {e}");
                continue;
            }
        };
        for (port, sockets) in bound {
            let token = stop.child_token();
            for socket in sockets {
                match TcpListener::from_std(socket) {
                    Ok(l) => {
                        let tokens = (token.clone(), stop.clone());
                        tokio::spawn(accept(l, port, agent.clone(), tokens));
                    }
                    Err(e) => tracing::warn!(port, "port forwarding: {e}"),
                }
            }
            tracing::debug!(port, netns = ?netns, "forwarding to the VM");
            listeners.insert(port, token);
        }
    }
}

/// Listening sockets on both loopback addresses of the namespace at `netns` (`None`: the
/// caller's) for each of `ports`. A port one address cannot take (no IPv6 in the namespace, or
/// taken) is logged and served on the other.
fn bind_in_netns(
    netns: Option<&Path>,
    ports: &[u16],
) -> std::io::Result<Vec<(u16, Vec<std::net::TcpListener>)>> {
    let ns = netns.map(File::open).transpose()?;
    let ports = ports.to_vec();
    std::thread::Builder::new()
        .name("msb-netns-bind".into())
        .spawn(move || {
            if let Some(ns) = ns {
                nix::sched::setns(ns.as_fd(), CloneFlags::CLONE_NEWNET)
                    .map_err(std::io::Error::from)?;
            }
            let mut out = Vec::new();
            for port in ports {
                let mut sockets = Vec::new();
                for ip in [Ipv4Addr::LOCALHOST.into(), Ipv6Addr::LOCALHOST.into()] {
                    let addr = SocketAddr::new(ip, port);
                    match std::net::TcpListener::bind(addr)
                        .and_then(|l| l.set_nonblocking(true).map(|()| l))
                    {
                        Ok(l) => sockets.push(l),
                        Err(e) => tracing::debug!(%addr, "port forwarding: bind: {e}"),
                    }
                }
                if sockets.is_empty() {
                    tracing::warn!(
                        port,
                        "port forwarding: neither loopback address can listen on the port"
                    );
                } else {
                    out.push((port, sockets));
                }
            }
            Ok(out)
        })?
        .join()
        .map_err(|_| std::io::Error::other("the namespace thread panicked"))?
}

/// Accepts until `listener_stop` (the port stopped listening in the VM); each connection goes
/// on until its end or `stop` (the forwarder's): a server that closes its listening socket
/// once it has a client (`nc -l`) keeps that client.
async fn accept(
    listener: TcpListener,
    port: u16,
    agent: AgentClient,
    (listener_stop, stop): (CancellationToken, CancellationToken),
) {
    loop {
        let conn = tokio::select! {
            () = listener_stop.cancelled() => return,
            c = listener.accept() => c,
        };
        match conn {
            Ok((tcp, peer)) => {
                let (agent, stop) = (agent.clone(), stop.clone());
                tokio::spawn(async move {
                    tokio::select! {
                        () = stop.cancelled() => {}
                        r = relay(&agent, port, tcp) => if let Err(e) = r {
                            tracing::info!(port, %peer, "port forward: {e}");
                        }
                    }
                });
            }
            Err(e) => {
                tracing::warn!(port, "port forwarding: accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Why a forwarded connection ended early.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// The agent connection failed.
    #[error(transparent)]
    Agent(#[from] AgentError),
    /// The guest could not connect, or reset the connection.
    #[error("in the VM: {0}")]
    Guest(String),
    /// The guest broke the session's rules.
    #[error("from the guest: {0}")]
    Protocol(String),
}

/// Relays one accepted connection to `port` in the VM until both sides are done.
pub async fn relay(agent: &AgentClient, port: u16, tcp: TcpStream) -> Result<(), ForwardError> {
    let mut s = agent.request(&PortConnect { port }).await?;
    let first = tokio::time::timeout(CONNECT_TIMEOUT, s.recv())
        .await
        .map_err(|_| AgentError::Timeout(PortConnect::TYPE.into()))??;
    match first.kind.as_str() {
        PortConnected::TYPE => {}
        PortClosed::TYPE => {
            let closed = first.decode::<PortClosed>().map_err(AgentError::from)?;
            return Err(ForwardError::Guest(closed.error.unwrap_or_default()));
        }
        _ => return Err(unexpected(&first)),
    }
    let _ = tcp.set_nodelay(true);
    let result = pump(&mut s, tcp).await;
    if result.is_err() {
        // The guest side may still be open: have it reset (nothing more is awaited).
        let _ = s.send(&PortClose {}).await;
    }
    result
}

/// Both directions of an established session; returns at `core.port.closed`.
async fn pump(s: &mut Session, tcp: TcpStream) -> Result<(), ForwardError> {
    let (mut rd, mut wr) = tcp.into_split();
    let mut buf = vec![0u8; PORT_CHUNK];
    // Our data the guest has not acknowledged; we read from the client only below the window.
    let mut unacked = 0usize;
    let mut client_eof = false;
    loop {
        let room = PORT_WINDOW.saturating_sub(unacked).min(PORT_CHUNK);
        tokio::select! {
            r = rd.read(&mut buf[..room]), if !client_eof && room > 0 => match r {
                Ok(0) => {
                    client_eof = true;
                    s.send(&PortData { data: Vec::new() }).await?;
                }
                Ok(n) => {
                    unacked += n;
                    s.send(&PortData { data: buf[..n].to_vec() }).await?;
                }
                Err(e) => {
                    // The client reset: so does the guest's side. Its `closed` ends the loop.
                    tracing::debug!("port forward: read from the client: {e}");
                    client_eof = true;
                    s.send(&PortClose {}).await?;
                }
            },
            m = s.recv() => {
                let m = m?;
                match m.kind.as_str() {
                    PortData::TYPE => {
                        let data = m.decode::<PortData>().map_err(AgentError::from)?.data;
                        if data.is_empty() {
                            let _ = wr.shutdown().await;
                            continue;
                        }
                        if data.len() > PORT_CHUNK {
                            return Err(ForwardError::Protocol(format!(
                                "a {}-byte chunk (at most {PORT_CHUNK})",
                                data.len()
                            )));
                        }
                        match wr.write_all(&data).await {
                            Ok(()) => s.send(&PortAck { bytes: data.len() as u64 }).await?,
                            Err(e) => {
                                tracing::debug!("port forward: write to the client: {e}");
                                s.send(&PortClose {}).await?;
                            }
                        }
                    }
                    PortAck::TYPE => {
                        let bytes = m.decode::<PortAck>().map_err(AgentError::from)?.bytes;
                        unacked = unacked.saturating_sub(usize::try_from(bytes).unwrap_or(usize::MAX));
                    }
                    PortClosed::TYPE => {
                        let closed = m.decode::<PortClosed>().map_err(AgentError::from)?;
                        return match closed.error {
                            None => Ok(()),
                            Some(e) => Err(ForwardError::Guest(e)),
                        };
                    }
                    _ => return Err(unexpected(&m)),
                }
            }
        }
    }
}

fn unexpected(m: &Message) -> ForwardError {
    if m.kind == ErrorReply::TYPE {
        if let Ok(e) = m.decode::<ErrorReply>() {
            return ForwardError::Protocol(format!("{:?}: {}", e.kind, e.message));
        }
    }
    ForwardError::Protocol(format!("{} in a port session", m.kind))
}
