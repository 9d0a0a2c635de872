//! **Ours:** TCP port forwarding into the VM, `core.port.*`: what `kubectl port-forward` needs.
//!
//! containerd's CRI serves a PortForward stream by dialling `localhost:PORT` inside the pod's
//! network namespace on the host, where no guest process listens: the pod's interface is
//! redirected into the VM, its loopback is not. So agentd reports the TCP ports that listen in
//! the VM's network namespace (`core.port.listening`, on id 0, whenever the set changes), the
//! host listens on the same ports on the namespace's loopback, and each connection it accepts
//! becomes one session:
//!
//! ```text
//! host                                   guest
//! core.port.connect{port}     -->        connects to 127.0.0.1:port (then [::1]:port, then
//!                                        the address the listener is bound to)
//!                             <--        core.port.connected{}  or  core.port.closed{error}
//! core.port.data{bytes}       <->        core.port.data{bytes}   (empty: that side's EOF)
//! core.port.ack{bytes}        <->        core.port.ack{bytes}    (flow control, both ways)
//! core.port.close{}           -->        (the host's peer went away: reset and end)
//!                             <--        core.port.closed{error?}  (terminal)
//! ```
//!
//! Each side keeps at most [`PORT_WINDOW`] bytes of data sent and not yet acknowledged, and
//! acknowledges bytes once it has written them to its own socket. Neither the guest's single
//! reader of the agent port nor the host's ever waits for a slow TCP peer: a stalled client or
//! server stalls only its own connection. The session ends with `core.port.closed` once both
//! directions reached EOF, or at the first error.

use serde::{Deserialize, Serialize};

/// Data bytes one side may have sent on a port session and not seen acknowledged (256 KiB).
pub const PORT_WINDOW: usize = 256 * 1024;

/// Largest `core.port.data` chunk (64 KiB).
pub const PORT_CHUNK: usize = 64 * 1024;

/// Listening ports one `core.port.listening` carries at most; the guest reports the lowest.
pub const MAX_LISTENING_PORTS: usize = 1024;

/// `core.port.listening` (guest -> host, id 0): the TCP ports that listen in the VM's network
/// namespace now, on any address, sorted and without duplicates. Sent after `core.net.configure`
/// and whenever the set changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct PortListening {
    /// The ports.
    pub ports: Vec<u16>,
}

/// `core.port.connect` (host -> guest, session start): connect to `port` in the VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortConnect {
    /// The TCP port.
    pub port: u16,
}

/// `core.port.connected` (guest -> host): the connection is up; data may flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct PortConnected {}

/// `core.port.data` (both ways): bytes of the stream; empty means EOF of the sender's side.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortData {
    /// The bytes (at most [`PORT_CHUNK`]).
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
}

/// `core.port.ack` (both ways): `bytes` more of the peer's data were written to this side's
/// socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortAck {
    /// Bytes written since the previous acknowledgement.
    pub bytes: u64,
}

/// `core.port.close` (host -> guest): the host's peer is gone; the guest resets its connection
/// and answers `core.port.closed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct PortClose {}

/// `core.port.closed` (guest -> host, terminal): the session is over.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct PortClosed {
    /// Why, when it ended on an error (`connect 127.0.0.1:8080: Connection refused`).
    #[serde(default)]
    pub error: Option<String>,
}
