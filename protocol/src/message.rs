//! Messages: a frame whose body is the CBOR envelope `{ "v": generation, "t": type, "p": bytes }`,
//! where `p` is the payload, itself CBOR.
//!
//! Decoding is in two steps so that a bad message costs one reply, not the connection:
//! [`Message::from_frame`] checks the envelope and the flags its type implies, and
//! [`Message::decode`] turns `p` into the typed payload.

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::consts::PROTOCOL_GENERATION;
use crate::envelope;
use crate::flags::Flags;
use crate::frame::Frame;
use crate::types::ErrorKind;

/// A typed payload: its message type string and the one flags value that type implies.
pub trait Payload: Serialize + DeserializeOwned {
    /// The envelope's `t`.
    const TYPE: &'static str;
    /// The flags every frame of this type carries.
    const FLAGS: Flags;
}

/// A decoded envelope with the payload still encoded.
#[derive(Clone, PartialEq, Eq)]
pub struct Message {
    /// Correlation id of the frame.
    pub id: u32,
    /// Flags of the frame.
    pub flags: Flags,
    /// Protocol generation the sender speaks.
    pub version: u32,
    /// Message type, e.g. `core.exec.request`.
    pub kind: String,
    /// CBOR-encoded payload.
    pub payload: Bytes,
}

impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Message")
            .field("id", &self.id)
            .field("flags", &self.flags)
            .field("version", &self.version)
            .field("kind", &self.kind)
            .field("payload_len", &self.payload.len())
            .finish()
    }
}

/// Why a well-framed message could not be used. These are answered with `core.error` (see
/// [`MessageError::error_kind`]) and do not end the connection.
#[derive(Debug, thiserror::Error)]
pub enum MessageError {
    /// The body is not a CBOR map with `v`, `t` and `p`.
    #[error("frame {id}: body is not a CBOR envelope map {{v, t, p}}: {reason}")]
    MalformedEnvelope {
        /// Correlation id of the frame.
        id: u32,
        /// What the CBOR decoder reported.
        reason: String,
    },
    /// The frame's flags differ from the ones its type implies.
    #[error("frame {id}: message type {kind} requires flags {expected} but carries {actual}")]
    FlagsMismatch {
        /// Correlation id of the frame.
        id: u32,
        /// The message type.
        kind: String,
        /// The flags the type implies.
        expected: Flags,
        /// The flags the frame carried.
        actual: Flags,
    },
    /// The payload is not valid CBOR for its type.
    #[error("frame {id}: payload of {kind} is invalid: {reason}")]
    InvalidPayload {
        /// Correlation id of the frame.
        id: u32,
        /// The message type.
        kind: String,
        /// What the CBOR decoder reported.
        reason: String,
    },
    /// A payload of one type was asked of a message of another.
    #[error("frame {id}: expected a {expected} message, got {actual}")]
    UnexpectedType {
        /// Correlation id of the frame.
        id: u32,
        /// The type asked for.
        expected: &'static str,
        /// The type received.
        actual: String,
    },
    /// A payload could not be encoded (only for types whose serialization can fail).
    #[error("cannot encode a {kind} payload: {reason}")]
    Encode {
        /// The message type.
        kind: &'static str,
        /// What the CBOR encoder reported.
        reason: String,
    },
}

impl MessageError {
    /// The `core.error` kind to answer this error with.
    pub fn error_kind(&self) -> ErrorKind {
        match self {
            MessageError::MalformedEnvelope { .. } => ErrorKind::MalformedMessage,
            MessageError::FlagsMismatch { .. } => ErrorKind::InvalidFlags,
            MessageError::InvalidPayload { .. } | MessageError::Encode { .. } => {
                ErrorKind::InvalidPayload
            }
            MessageError::UnexpectedType { .. } => ErrorKind::UnsupportedMessageType,
        }
    }
}

/// Runs `f` with a reusable per-thread scratch buffer of at least `len` bytes, so that a byte
/// string in a payload is read in one piece instead of 4 KiB pulls. `len` is a payload length,
/// hence bounded by the frame limit.
fn with_scratch<T>(len: usize, f: impl FnOnce(&mut [u8]) -> T) -> T {
    thread_local! {
        static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut scratch) => {
            let want = len.max(4096);
            if scratch.len() < want {
                scratch.resize(want, 0);
            }
            f(&mut scratch[..want])
        }
        // Re-entered from inside a decode: fall back to a small stack buffer.
        Err(_) => f(&mut [0u8; 4096]),
    })
}

/// Encodes a value as CBOR.
pub fn to_cbor<T: Serialize>(value: &T) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    ciborium::into_writer(value, &mut out).map_err(|e| e.to_string())?;
    Ok(out)
}

impl Message {
    /// Encodes a typed payload into a message with the flags its type implies.
    pub fn new<P: Payload>(id: u32, payload: &P) -> Result<Self, MessageError> {
        let bytes = to_cbor(payload).map_err(|reason| MessageError::Encode {
            kind: P::TYPE,
            reason,
        })?;
        Ok(Message {
            id,
            flags: P::FLAGS,
            version: PROTOCOL_GENERATION,
            kind: P::TYPE.to_owned(),
            payload: bytes.into(),
        })
    }

    /// Whether this message is of payload type `P`.
    pub fn is<P: Payload>(&self) -> bool {
        self.kind == P::TYPE
    }

    /// Decodes the payload as `P`.
    pub fn decode<P: Payload>(&self) -> Result<P, MessageError> {
        if self.kind != P::TYPE {
            return Err(MessageError::UnexpectedType {
                id: self.id,
                expected: P::TYPE,
                actual: self.kind.clone(),
            });
        }
        with_scratch(self.payload.len(), |scratch| {
            ciborium::de::from_reader_with_buffer(self.payload.as_ref(), scratch)
        })
        .map_err(|e| MessageError::InvalidPayload {
            id: self.id,
            kind: self.kind.clone(),
            reason: e.to_string(),
        })
    }

    /// Checks a frame's envelope and the flags its type implies.
    ///
    /// Unknown types are accepted here (any flags); the receiver answers them with
    /// `core.error{unsupported_message_type}`.
    pub fn from_frame(frame: &Frame) -> Result<Message, MessageError> {
        let env =
            envelope::decode(&frame.body).map_err(|reason| MessageError::MalformedEnvelope {
                id: frame.id,
                reason,
            })?;
        if let Some(expected) = crate::types::implied_flags(&env.kind) {
            if expected != frame.flags {
                return Err(MessageError::FlagsMismatch {
                    id: frame.id,
                    kind: env.kind,
                    expected,
                    actual: frame.flags,
                });
            }
        }
        Ok(Message {
            id: frame.id,
            flags: frame.flags,
            version: env.version,
            kind: env.kind,
            payload: env.payload,
        })
    }

    /// Encodes the envelope into a frame.
    pub fn to_frame(&self) -> Frame {
        let mut body = Vec::with_capacity(self.payload.len() + self.kind.len() + 16);
        envelope::encode(self.version, &self.kind, &self.payload, &mut body);
        Frame::new(self.id, self.flags, body)
    }

    /// Appends the whole frame to `dst` without building an intermediate [`Frame`] (the codec's
    /// path: one copy of the payload).
    pub fn encode_into(&self, dst: &mut bytes::BytesMut) -> Result<(), crate::FrameError> {
        use bytes::BufMut;
        let start = dst.len();
        dst.reserve(
            crate::consts::LEN_PREFIX_SIZE
                + crate::consts::FRAME_HEADER_SIZE
                + self.payload.len()
                + self.kind.len()
                + 16,
        );
        dst.put_u32(0); // patched below, once the body length is known
        dst.put_u32(self.id);
        dst.put_u8(self.flags.bits());
        envelope::encode(
            self.version,
            &self.kind,
            &self.payload,
            envelope::BytesMutWriter(dst),
        );
        let len = dst.len() - start - crate::consts::LEN_PREFIX_SIZE;
        let Some(len32) = u32::try_from(len)
            .ok()
            .filter(|l| *l <= crate::consts::MAX_FRAME_LEN)
        else {
            dst.truncate(start);
            return Err(crate::FrameError::LengthTooLong {
                len: u64::try_from(len).unwrap_or(u64::MAX),
            });
        };
        dst[start..start + 4].copy_from_slice(&len32.to_be_bytes());
        Ok(())
    }
}

/// Decodes a complete frame buffer all the way to a message (tests, fuzzing, fixtures).
pub fn decode_message_exact(buf: &[u8]) -> Result<Message, crate::ProtocolError> {
    let frame = crate::frame::decode_frame_exact(buf)?;
    Ok(Message::from_frame(&frame)?)
}
