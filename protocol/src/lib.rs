//! The wire protocol between the microsandbox host and agentd, the guest's PID 1.
//!
//! One byte stream (a virtio-console port named `agent`) carries frames:
//!
//! ```text
//! [len: u32 BE][id: u32 BE][flags: u8][body: CBOR { "v": generation, "t": type, "p": payload }]
//! ```
//!
//! - `len` counts `id + flags + body`, so `5 <= len <= 4 MiB` ([`MAX_FRAME_LEN`]); anything else
//!   is a fatal framing error ([`FrameError`]) and the reader stops without allocating for it.
//! - `id` correlates the frames of one session (an exec, an fs request, a container); `0` is the
//!   connection-level control id.
//! - `flags`: `0x01` terminal, `0x02` session start, `0x04` shutdown. Each message type implies
//!   exactly one value ([`types::implied_flags`]); a mismatch is a [`MessageError`] answered with
//!   `core.error{invalid_flags}`.
//! - `p` is the CBOR payload of the type: structs as text-keyed maps, byte fields as byte
//!   strings, `None` as null, unknown fields ignored.
//!
//! - Additions of ours to the seed protocol are marked **ours** on their payload types. One is
//!   flow control of stdin: a host keeps at most [`STDIN_WINDOW`] bytes of a session's
//!   `core.exec.stdin` unacknowledged, and the guest acknowledges the bytes its process took with
//!   `core.exec.stdin.ack{bytes}`, so the guest's one reader of the stream never waits for a
//!   process that does not read its stdin.
//!
//! Layers: [`frame`] (bytes <-> [`Frame`], blocking and, with the `tokio` feature, async via
//! [`codec::FrameCodec`]), [`message`] (frame <-> envelope, typed payloads via [`Payload`]),
//! [`types`] (every payload; a container's seccomp profile is in [`seccomp`], the pod network
//! in [`net`], port forwarding in [`port`]), [`boot`] (the `MSB_*` kernel command line
//! settings), [`relay`] (id ranges of the VMM's multi-client relay) and [`consts`].
//!
//! This crate does no I/O of its own beyond the `Read`/`Write`/codec adapters.
//!
//! # What is live
//!
//! The crate follows microsandbox's protocol, so it defines a few things our host and agentd do
//! not use (yet); they stay for compatibility and for the issues that will use them, and
//! `docs/PROTOCOL.md` marks each one. Not sent by our host: `core.init.ack`, `core.clock.sync`
//! (agentd applies it; VM templates will need it), `core.fs.request` ops other than `write`
//! (agentd answers them as unsupported); not sent by agentd: `core.init.resolved`. Boot settings
//! our host never sets: `MSB_TMPFS` and `MSB_RLIMITS` (agentd applies them), `MSB_NET`,
//! `MSB_NET_IPV4`, `MSB_NET_IPV6` (parsed, reserved for pod networking), `MSB_USER`,
//! `MSB_DIR_MOUNTS`, `MSB_FILE_MOUNTS` (parsed only). Everything else is used on both sides.

pub mod boot;
#[cfg(feature = "tokio")]
pub mod codec;
pub mod consts;
pub mod data_frame;
mod envelope;
pub mod flags;
pub mod frame;
pub mod message;
pub mod net;
pub mod port;
pub mod relay;
pub mod seccomp;
pub mod types;

pub use consts::*;
pub use data_frame::{data_frame_prefix, DataPayload, DATA_FRAME_PREFIX_MAX};
pub use flags::Flags;
pub use frame::{read_frame, write_frame, Frame, FrameError};
pub use message::{Message, MessageError, Payload};

/// Any failure to turn bytes into a usable message: a framing error (fatal for the connection)
/// or a message error (answered with `core.error`).
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// The byte stream is not valid framing.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// A well-framed message is unusable.
    #[error(transparent)]
    Message(#[from] MessageError),
}

/// Reads one message from a blocking reader: `Ok(None)` at a clean end of stream.
pub fn read_message<R: std::io::Read>(reader: &mut R) -> Result<Option<Message>, ProtocolError> {
    match read_frame(reader)? {
        Some(frame) => Ok(Some(Message::from_frame(&frame)?)),
        None => Ok(None),
    }
}

/// Writes one message to a blocking writer.
pub fn write_message<W: std::io::Write>(writer: &mut W, msg: &Message) -> Result<(), FrameError> {
    write_frame(writer, &msg.to_frame())
}
