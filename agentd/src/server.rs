//! The dispatcher: reads frames from the agent port, decodes each message and hands it to the
//! handler of its concept. It decides nothing itself beyond the protocol's own rules: a frame
//! that does not decode, a type agentd does not handle, a connection-level message on an id
//! other than 0 are answered here with `core.error`; every request is answered by its handler.
//!
//! - `control`: the connection (`core.ping`, `core.clock.sync`, `core.restore`, `core.shutdown`,
//!   `core.relay.client.disconnected`);
//! - `process`: `core.exec.*`, a process and its session (preparation in [`crate::prepare`]);
//! - `containers`: `core.container.*`, a container's lifecycle;
//! - `files`: `core.fs.*`;
//! - `net`: `core.net.configure`, the pod network;
//! - `forward`: `core.port.*`, port forwarding into the VM.
//!
//! It runs on agentd's main thread, which is also the only thread that spawns processes (a
//! spawn into a running container switches this thread's PID namespace for children, see
//! [`crate::spawn`]). Handlers are quick; anything long-lived (process streams, exits) runs on
//! session threads.

mod containers;
mod control;
mod files;
mod forward;
mod net;
mod process;

use std::fs::File;
use std::time::Duration;

use msb_protocol::types::*;
use msb_protocol::{Flags, FrameError, Message, MessageError, Payload};

use crate::container::Containers;
use crate::exec::Sessions;
use crate::forward::Forwards;
use crate::port::{self, Out};
use crate::reaper::Reaper;
use crate::sys;

/// agentd's state.
#[derive(Debug)]
pub struct Server {
    out: Out,
    reaper: Reaper,
    sessions: Sessions,
    containers: Containers,
    ready: Ready,
    /// Open `core.fs` write sessions.
    writes: files::Writes,
    /// Port-forwarding sessions.
    forwards: Forwards,
}

impl Server {
    /// A server writing through `out`; `ready` is announced on every host connection.
    pub fn new(out: Out, reaper: Reaper, ready: Ready) -> Server {
        let containers: Containers = Containers::default();
        crate::oom::start_watch(out.clone(), containers.clone());
        Server {
            out,
            reaper,
            sessions: Sessions::default(),
            containers,
            ready,
            writes: files::Writes::default(),
            forwards: Forwards::default(),
        }
    }

    /// Serves the port forever: waits for a host, announces `core.ready`, handles frames until
    /// the host disconnects, and starts over.
    pub fn serve(&mut self, mut port: File) -> ! {
        loop {
            port::wait_for_host(&port);
            let mut ready = self.ready.clone();
            ready.ready_time_ns = sys::boottime_ns();
            self.out.send(0, &ready);
            tracing::info!("host connected, core.ready sent");
            loop {
                match msb_protocol::read_frame(&mut port) {
                    Ok(Some(frame)) => match Message::from_frame(&frame) {
                        Ok(msg) => self.handle(msg),
                        Err(e) => self.reply_error(frame.id, &e, None),
                    },
                    Ok(None) => break,
                    Err(FrameError::Io(e)) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        // Out of sync: nothing after this can be trusted until the host reconnects.
                        tracing::error!("agent channel: {e}; waiting for the host to reconnect");
                        break;
                    }
                }
            }
            // Its port connections were the old host's: nobody acknowledges their data now.
            let n = self.forwards.forget(0..u32::MAX);
            tracing::info!(forwards = n, "host disconnected");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn handle(&mut self, msg: Message) {
        let id = msg.id;
        match msg.kind.as_str() {
            Ping::TYPE => self.ping(id),
            InitAck::TYPE => {}
            ClockSync::TYPE => self.on(&msg, |s, c: ClockSync| s.clock_sync(c)),
            Restore::TYPE => self.on(&msg, |s, r: Restore| s.restore(id, r)),
            // Connection-level control: only on id 0, which the relay never forwards from a
            // client, so one host client cannot end the VM or another client's sessions.
            Shutdown::TYPE | RelayClientDisconnected::TYPE if id != 0 => self.error(
                id,
                ErrorKind::InvalidSession,
                format!("{} is only accepted on id 0", msg.kind),
                &msg.kind,
            ),
            Shutdown::TYPE => self.shutdown(),
            RelayClientDisconnected::TYPE => {
                self.on(&msg, |s, r: RelayClientDisconnected| s.client_left(r))
            }
            ExecRequest::TYPE => self.on(&msg, |s, req: ExecRequest| s.exec(id, req)),
            ExecStdin::TYPE => self.on(&msg, |s, d: ExecStdin| s.stdin(id, d)),
            ExecResize::TYPE => self.on(&msg, |s, r: ExecResize| s.resize(id, r)),
            ExecSignal::TYPE => self.on(&msg, |s, sig: ExecSignal| s.signal(id, sig)),
            ContainerCreate::TYPE => self.on(&msg, |s, c: ContainerCreate| s.create(id, c)),
            ContainerPause::TYPE => self.on(&msg, |s, p: ContainerPause| s.freeze(id, p.id, true)),
            ContainerResume::TYPE => {
                self.on(&msg, |s, r: ContainerResume| s.freeze(id, r.id, false))
            }
            ContainerUpdate::TYPE => self.on(&msg, |s, u: ContainerUpdate| s.update(id, u)),
            ContainerStats::TYPE => self.on(&msg, |s, st: ContainerStats| s.stats(id, st)),
            ContainerPids::TYPE => self.on(&msg, |s, p: ContainerPids| s.pids(id, p)),
            ContainerDelete::TYPE => self.on(&msg, |s, d: ContainerDelete| s.delete(id, d)),
            FsRequest::TYPE => self.on(&msg, |s, r: FsRequest| s.fs_request(id, r)),
            FsData::TYPE => self.on(&msg, |s, d: FsData| s.fs_data(id, d)),
            NetConfigure::TYPE => self.on(&msg, |s, c: NetConfigure| s.net_configure(id, c)),
            PortConnect::TYPE => self.on(&msg, |s, c: PortConnect| s.port_connect(id, c)),
            PortData::TYPE => self.on(&msg, |s, d: PortData| s.port_data(id, d)),
            PortAck::TYPE => self.on(&msg, |s, a: PortAck| s.port_ack(id, a)),
            PortClose::TYPE => self.on(&msg, |s, _: PortClose| s.port_close(id)),
            other => {
                let kind = if msg.flags == Flags::NONE || msg.flags.contains(Flags::SESSION_START) {
                    ErrorKind::UnsupportedMessageType
                } else {
                    ErrorKind::InvalidFlags
                };
                self.error(id, kind, format!("agentd does not handle {other}"), other);
            }
        }
    }

    /// Decodes `msg` as `P` and runs `handler` with it; a payload that does not decode is
    /// answered with `core.error` instead.
    fn on<P: Payload>(&mut self, msg: &Message, handler: impl FnOnce(&mut Self, P)) {
        match msg.decode::<P>() {
            Ok(p) => handler(self, p),
            Err(e) => self.reply_error(msg.id, &e, Some(&msg.kind)),
        }
    }

    fn reply_error(&self, id: u32, e: &MessageError, kind_name: Option<&str>) {
        self.out.send(
            id,
            &ErrorReply {
                kind: e.error_kind(),
                message: e.to_string(),
                offending_type: kind_name.map(str::to_owned),
            },
        );
    }

    /// Answers `core.error` of `kind` about a message of type `offending`.
    fn error(&self, id: u32, kind: ErrorKind, message: String, offending: &str) {
        self.out.send(
            id,
            &ErrorReply {
                kind,
                message,
                offending_type: Some(offending.to_owned()),
            },
        );
    }
}
