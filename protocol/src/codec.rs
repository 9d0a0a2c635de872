//! `tokio_util::codec` adapters for frames and messages.
//!
//! The decoder yields [`Frame`]s: framing errors end the stream (the codec cannot resynchronise),
//! while a frame whose envelope is bad is still a frame, answered by the receiver with
//! `core.error` after [`Message::from_frame`] fails.

use bytes::BytesMut;
use tokio_util::codec::{Decoder, Encoder};

use crate::frame::{decode_frame, Frame, FrameError};
use crate::message::Message;

/// Frame codec for `FramedRead`/`FramedWrite`.
#[derive(Debug, Default, Clone, Copy)]
pub struct FrameCodec;

impl Decoder for FrameCodec {
    type Item = Frame;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        decode_frame(src)
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        match decode_frame(src)? {
            Some(frame) => Ok(Some(frame)),
            None if src.is_empty() => Ok(None),
            None => {
                let expected = if src.len() >= 4 {
                    4 + u32::from_be_bytes([src[0], src[1], src[2], src[3]]) as usize
                } else {
                    4
                };
                Err(FrameError::Truncated {
                    got: src.len(),
                    expected,
                })
            }
        }
    }
}

impl Encoder<Frame> for FrameCodec {
    type Error = FrameError;

    fn encode(&mut self, frame: Frame, dst: &mut BytesMut) -> Result<(), FrameError> {
        frame.encode_into(dst)
    }
}

impl Encoder<&Frame> for FrameCodec {
    type Error = FrameError;

    fn encode(&mut self, frame: &Frame, dst: &mut BytesMut) -> Result<(), FrameError> {
        frame.encode_into(dst)
    }
}

impl Encoder<Message> for FrameCodec {
    type Error = FrameError;

    fn encode(&mut self, msg: Message, dst: &mut BytesMut) -> Result<(), FrameError> {
        msg.encode_into(dst)
    }
}
