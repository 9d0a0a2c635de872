//! Frames: the length-prefixed unit of the byte stream.
//!
//! ```text
//! +----------------+----------------+-----------+------------------------+
//! | len: u32 BE    | id: u32 BE     | flags: u8 | body: CBOR {v, t, p}   |
//! +----------------+----------------+-----------+------------------------+
//!                  |<------------------- len bytes ------------------->|
//! ```
//!
//! A frame whose `len` lies outside `5..=4 MiB` or whose flags byte sets an undefined bit is a
//! fatal framing error: the stream can no longer be trusted to be in sync, so the reader stops.
//! Nothing is allocated for a frame before its `len` has been checked.

use std::io::{self, Read, Write};

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::consts::{FRAME_HEADER_SIZE, LEN_PREFIX_SIZE, MAX_FRAME_LEN, MIN_FRAME_LEN};
use crate::flags::Flags;

/// One frame as it travels: header fields and the still-encoded body.
#[derive(Clone, PartialEq, Eq)]
pub struct Frame {
    /// Correlation id; `0` is the connection-level control id.
    pub id: u32,
    /// The flags byte.
    pub flags: Flags,
    /// The CBOR envelope, not yet decoded (the relay routes frames without decoding them).
    pub body: Bytes,
}

impl std::fmt::Debug for Frame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Frame")
            .field("id", &self.id)
            .field("flags", &self.flags)
            .field("body_len", &self.body.len())
            .finish()
    }
}

/// Why a byte stream could not be read or written as frames. Every variant is fatal for the
/// connection.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// `len` is smaller than the 5 bytes of `id` and `flags`.
    #[error("frame length {len} is below the minimum of {MIN_FRAME_LEN} bytes (id + flags)")]
    LengthTooShort {
        /// The `len` field as read.
        len: u32,
    },
    /// `len` exceeds the 4 MiB bound.
    #[error("frame length {len} exceeds the maximum of {MAX_FRAME_LEN} bytes")]
    LengthTooLong {
        /// The `len` field as read (or the length a writer tried to send).
        len: u64,
    },
    /// The flags byte sets bits the protocol does not define.
    #[error("frame {id} has undefined flag bits set: {bits:#04x}")]
    UndefinedFlags {
        /// Correlation id of the frame.
        id: u32,
        /// The whole flags byte.
        bits: u8,
    },
    /// The stream ended inside a frame.
    #[error("stream ended inside a frame: got {got} of {expected} bytes")]
    Truncated {
        /// Bytes of the frame (prefix included) that arrived.
        got: usize,
        /// Bytes the frame needed.
        expected: usize,
    },
    /// The underlying stream failed.
    #[error("i/o error on the agent channel")]
    Io(#[from] io::Error),
}

impl Frame {
    /// Builds a frame.
    pub fn new(id: u32, flags: Flags, body: impl Into<Bytes>) -> Self {
        Frame {
            id,
            flags,
            body: body.into(),
        }
    }

    /// Length of the frame on the wire, prefix included.
    pub fn wire_len(&self) -> usize {
        LEN_PREFIX_SIZE + FRAME_HEADER_SIZE + self.body.len()
    }

    /// The `len` field for this frame, or an error when the body is too big to send.
    fn len_field(&self) -> Result<u32, FrameError> {
        let len = u64::try_from(FRAME_HEADER_SIZE + self.body.len()).unwrap_or(u64::MAX);
        if len > u64::from(MAX_FRAME_LEN) {
            return Err(FrameError::LengthTooLong { len });
        }
        u32::try_from(len).map_err(|_| FrameError::LengthTooLong { len })
    }

    /// Appends the encoded frame to `dst`.
    pub fn encode_into(&self, dst: &mut BytesMut) -> Result<(), FrameError> {
        let len = self.len_field()?;
        dst.reserve(self.wire_len());
        dst.put_u32(len);
        dst.put_u32(self.id);
        dst.put_u8(self.flags.bits());
        dst.put_slice(&self.body);
        Ok(())
    }

    /// The encoded frame as one buffer.
    pub fn to_bytes(&self) -> Result<Bytes, FrameError> {
        let mut buf = BytesMut::with_capacity(self.wire_len());
        self.encode_into(&mut buf)?;
        Ok(buf.freeze())
    }
}

/// Checks a `len` field read from the wire.
pub fn check_len(len: u32) -> Result<(), FrameError> {
    if len < MIN_FRAME_LEN {
        return Err(FrameError::LengthTooShort { len });
    }
    if len > MAX_FRAME_LEN {
        return Err(FrameError::LengthTooLong {
            len: u64::from(len),
        });
    }
    Ok(())
}

/// Builds a frame from `id`, `flags` and body bytes already split off the wire.
fn frame_from_parts(id: u32, bits: u8, body: Bytes) -> Result<Frame, FrameError> {
    let flags = Flags::from_bits(bits).ok_or(FrameError::UndefinedFlags { id, bits })?;
    Ok(Frame { id, flags, body })
}

/// Decodes one frame from the front of `src`, consuming it. `Ok(None)` means more bytes are
/// needed; in that case `src` is untouched, apart from a capacity reservation bounded by the
/// checked frame length.
pub fn decode_frame(src: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
    if src.len() < LEN_PREFIX_SIZE {
        return Ok(None);
    }
    let len = u32::from_be_bytes([src[0], src[1], src[2], src[3]]);
    check_len(len)?;
    let total = LEN_PREFIX_SIZE + len as usize;
    if src.len() < total {
        src.reserve(total - src.len());
        return Ok(None);
    }
    src.advance(LEN_PREFIX_SIZE);
    let id = src.get_u32();
    let bits = src.get_u8();
    let body = src.split_to(len as usize - FRAME_HEADER_SIZE).freeze();
    frame_from_parts(id, bits, body).map(Some)
}

/// Decodes exactly one frame from a complete buffer (tests, fuzzing, fixtures). Trailing bytes
/// after the frame are ignored; a buffer that ends early is [`FrameError::Truncated`].
pub fn decode_frame_exact(buf: &[u8]) -> Result<Frame, FrameError> {
    let mut src = BytesMut::from(buf);
    match decode_frame(&mut src)? {
        Some(frame) => Ok(frame),
        None => {
            let expected = if buf.len() >= LEN_PREFIX_SIZE {
                LEN_PREFIX_SIZE + u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize
            } else {
                LEN_PREFIX_SIZE
            };
            Err(FrameError::Truncated {
                got: buf.len(),
                expected,
            })
        }
    }
}

/// Reads one frame from a blocking reader. Returns `Ok(None)` on a clean end of stream at a
/// frame boundary.
pub fn read_frame<R: Read>(reader: &mut R) -> Result<Option<Frame>, FrameError> {
    let mut prefix = [0u8; LEN_PREFIX_SIZE];
    let got = read_full(reader, &mut prefix)?;
    if got == 0 {
        return Ok(None);
    }
    if got < LEN_PREFIX_SIZE {
        return Err(FrameError::Truncated {
            got,
            expected: LEN_PREFIX_SIZE,
        });
    }
    let len = u32::from_be_bytes(prefix);
    check_len(len)?;
    let mut rest = vec![0u8; len as usize];
    let got = read_full(reader, &mut rest)?;
    if got < rest.len() {
        return Err(FrameError::Truncated {
            got: LEN_PREFIX_SIZE + got,
            expected: LEN_PREFIX_SIZE + rest.len(),
        });
    }
    let id = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]);
    let bits = rest[4];
    let mut body = Bytes::from(rest);
    body.advance(FRAME_HEADER_SIZE);
    frame_from_parts(id, bits, body).map(Some)
}

/// Writes one frame to a blocking writer as a single `write_all` (frames never interleave).
pub fn write_frame<W: Write>(writer: &mut W, frame: &Frame) -> Result<(), FrameError> {
    let bytes = frame.to_bytes()?;
    writer.write_all(&bytes)?;
    Ok(())
}

/// Fills `buf` unless the stream ends first; returns how many bytes were read.
fn read_full<R: Read>(reader: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(len: u32, id: u32, flags: u8, body: &[u8]) -> Vec<u8> {
        let mut v = len.to_be_bytes().to_vec();
        v.extend_from_slice(&id.to_be_bytes());
        v.push(flags);
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn golden_bytes() {
        let frame = Frame::new(0x0102_0304, Flags::TERMINAL, &b"\xa0"[..]);
        assert_eq!(
            frame.to_bytes().unwrap().as_ref(),
            &[0, 0, 0, 6, 1, 2, 3, 4, 1, 0xa0]
        );
    }

    #[test]
    fn len_zero_and_four_are_too_short() {
        for len in [0u32, 4] {
            let err = decode_frame_exact(&raw(len, 1, 0, &[])).unwrap_err();
            assert!(
                matches!(err, FrameError::LengthTooShort { len: l } if l == len),
                "{err}"
            );
            assert_eq!(
                err.to_string(),
                format!("frame length {len} is below the minimum of 5 bytes (id + flags)")
            );
        }
    }

    #[test]
    fn len_above_bound_is_rejected_before_allocating() {
        let len = MAX_FRAME_LEN + 1;
        let mut src = BytesMut::from(&len.to_be_bytes()[..]);
        let err = decode_frame(&mut src).unwrap_err();
        assert!(matches!(err, FrameError::LengthTooLong { len: 4_194_305 }));
        assert!(
            src.capacity() < 1024,
            "no buffer reserved for a rejected frame"
        );
        let err = read_frame(&mut &len.to_be_bytes()[..]).unwrap_err();
        assert!(matches!(err, FrameError::LengthTooLong { .. }));
    }

    #[test]
    fn undefined_flag_bits_are_rejected() {
        let err = decode_frame_exact(&raw(5, 9, 0x80, &[])).unwrap_err();
        assert!(matches!(
            err,
            FrameError::UndefinedFlags { id: 9, bits: 0x80 }
        ));
    }

    #[test]
    fn truncated_frames() {
        let full = raw(8, 1, 0, &[1, 2, 3]);
        let err = decode_frame_exact(&full[..6]).unwrap_err();
        assert!(matches!(
            err,
            FrameError::Truncated {
                got: 6,
                expected: 12
            }
        ));
        let err = read_frame(&mut &full[..6]).unwrap_err();
        assert!(matches!(
            err,
            FrameError::Truncated {
                got: 6,
                expected: 12
            }
        ));
        let err = read_frame(&mut &full[..2]).unwrap_err();
        assert!(matches!(
            err,
            FrameError::Truncated {
                got: 2,
                expected: 4
            }
        ));
    }

    #[test]
    fn clean_eof_is_none() {
        assert!(read_frame(&mut &[][..]).unwrap().is_none());
    }

    #[test]
    fn incremental_decode_waits_for_more() {
        let full = raw(8, 7, 1, &[1, 2, 3]);
        let mut src = BytesMut::new();
        for (i, b) in full.iter().enumerate() {
            src.put_u8(*b);
            let got = decode_frame(&mut src).unwrap();
            if i + 1 < full.len() {
                assert!(got.is_none());
            } else {
                let f = got.unwrap();
                assert_eq!(
                    (f.id, f.flags, f.body.as_ref()),
                    (7, Flags::TERMINAL, &[1, 2, 3][..])
                );
            }
        }
        assert!(src.is_empty());
    }

    #[test]
    fn oversized_body_is_refused_by_writer() {
        let frame = Frame::new(1, Flags::NONE, vec![0u8; MAX_FRAME_LEN as usize]);
        let err = write_frame(&mut Vec::new(), &frame).unwrap_err();
        assert!(
            matches!(err, FrameError::LengthTooLong { len } if len == u64::from(MAX_FRAME_LEN) + 5)
        );
    }
}
