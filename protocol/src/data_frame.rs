//! Frames of stream data built around bytes already in place: the bulk path of stdout and stderr.
//!
//! A `core.exec.stdout` frame is the data with a prefix in front of it and nothing after it
//! (CBOR byte strings are length-prefixed): frame header, envelope up to `p`'s byte-string
//! header, the payload map `{ "data": ... }` up to its byte-string header. [`data_frame_prefix`]
//! computes those bytes for a given data length, so a sender can read the data straight into a
//! buffer after [`DATA_FRAME_PREFIX_MAX`] bytes of room, write the prefix right before it and
//! hand the whole span to the port: no copy of the data in user space. The bytes are exactly
//! those of [`Message::new`](crate::Message::new) + [`Message::to_frame`](crate::Message::to_frame)
//! (ciborium's shortest-form headers), which the tests check.

use crate::consts::{FRAME_HEADER_SIZE, MAX_FRAME_LEN, PROTOCOL_GENERATION};
use crate::frame::FrameError;
use crate::message::Payload;
use crate::types::{ExecStderr, ExecStdout};

/// A payload type that is exactly the map `{ "data": bytes }`.
pub trait DataPayload: Payload {}

impl DataPayload for ExecStdout {}
impl DataPayload for ExecStderr {}

/// Room a prefix needs at most: frame header (9), envelope map, keys and version (7), the type
/// (at most 2 + 64 bytes: every data type's name is far shorter), `p`'s header (9), the payload
/// map with its key (6) and the data's header (9).
pub const DATA_FRAME_PREFIX_MAX: usize = 9 + 7 + 66 + 9 + 6 + 9;

/// The prefix of a data frame: [`DataFramePrefix::as_slice`] goes right before the data.
#[derive(Debug, Clone, Copy)]
pub struct DataFramePrefix {
    bytes: [u8; DATA_FRAME_PREFIX_MAX],
    len: usize,
}

impl DataFramePrefix {
    /// The prefix bytes.
    pub fn as_slice(&self) -> &[u8] {
        &self.bytes[..self.len]
    }

    fn push(&mut self, b: &[u8]) {
        self.bytes[self.len..self.len + b.len()].copy_from_slice(b);
        self.len += b.len();
    }

    /// A CBOR header of major type `major` (0..=7) and argument `n`, shortest form.
    fn header(&mut self, major: u8, n: u64) {
        let m = major << 5;
        let be = n.to_be_bytes();
        match header_len(n) {
            1 => self.push(&[m | be[7]]),
            2 => self.push(&[m | 24, be[7]]),
            3 => {
                self.push(&[m | 25]);
                self.push(&be[6..]);
            }
            5 => {
                self.push(&[m | 26]);
                self.push(&be[4..]);
            }
            _ => {
                self.push(&[m | 27]);
                self.push(&be);
            }
        }
    }

    fn text(&mut self, s: &str) {
        self.header(3, s.len() as u64);
        self.push(s.as_bytes());
    }
}

/// CBOR major types used here.
const UNSIGNED: u8 = 0;
const BYTES: u8 = 2;
const MAP: u8 = 5;

/// Bytes of a shortest-form CBOR header for argument `n`.
fn header_len(n: u64) -> usize {
    match n {
        0..=23 => 1,
        24..=0xff => 2,
        0x100..=0xffff => 3,
        0x1_0000..=0xffff_ffff => 5,
        _ => 9,
    }
}

/// The prefix of a frame of `P` on `id` whose data is `data_len` bytes, or
/// [`FrameError::LengthTooLong`] when that frame would exceed [`MAX_FRAME_LEN`].
pub fn data_frame_prefix<P: DataPayload>(
    id: u32,
    data_len: usize,
) -> Result<DataFramePrefix, FrameError> {
    let mut p = DataFramePrefix {
        bytes: [0; DATA_FRAME_PREFIX_MAX],
        len: 0,
    };
    // The payload: { "data": bytes(data_len) }.
    let payload_len = 1 + 5 + header_len(data_len as u64) + data_len;
    // The envelope: { "v": generation, "t": type, "p": bytes(payload_len) }.
    let body_len = 1
        + 2
        + header_len(u64::from(PROTOCOL_GENERATION))
        + 2
        + header_len(P::TYPE.len() as u64)
        + P::TYPE.len()
        + 2
        + header_len(payload_len as u64)
        + payload_len;
    let len = (FRAME_HEADER_SIZE + body_len) as u64;
    let len32 = u32::try_from(len)
        .ok()
        .filter(|l| *l <= MAX_FRAME_LEN && P::TYPE.len() <= 64)
        .ok_or(FrameError::LengthTooLong { len })?;
    p.push(&len32.to_be_bytes());
    p.push(&id.to_be_bytes());
    p.push(&[P::FLAGS.bits()]);
    p.header(MAP, 3);
    p.text("v");
    p.header(UNSIGNED, u64::from(PROTOCOL_GENERATION));
    p.text("t");
    p.text(P::TYPE);
    p.text("p");
    p.header(BYTES, payload_len as u64);
    p.header(MAP, 1);
    p.text("data");
    p.header(BYTES, data_len as u64);
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Message;

    fn reference<P: DataPayload>(id: u32, payload: &P) -> Vec<u8> {
        Message::new(id, payload)
            .unwrap()
            .to_frame()
            .to_bytes()
            .unwrap()
            .to_vec()
    }

    #[test]
    fn prefix_plus_data_is_the_encoded_message_at_every_header_width() {
        for len in [
            0usize,
            1,
            23,
            24,
            255,
            256,
            65_535,
            65_536,
            1 << 20,
            (4 << 20) - 100,
        ] {
            let data: Vec<u8> = (0..len).map(|i| u8::try_from(i % 251).unwrap()).collect();
            for id in [0u32, 7, 0x0102_0304, u32::MAX] {
                let mut ours = data_frame_prefix::<ExecStdout>(id, len)
                    .unwrap()
                    .as_slice()
                    .to_vec();
                ours.extend_from_slice(&data);
                let want = reference(id, &ExecStdout { data: data.clone() });
                assert!(ours == want, "stdout, {len} bytes, id {id}");

                let mut ours = data_frame_prefix::<ExecStderr>(id, len)
                    .unwrap()
                    .as_slice()
                    .to_vec();
                ours.extend_from_slice(&data);
                let want = reference(id, &ExecStderr { data: data.clone() });
                assert!(ours == want, "stderr, {len} bytes, id {id}");
            }
        }
    }

    #[test]
    fn a_frame_over_the_bound_is_refused() {
        let fits = MAX_FRAME_LEN as usize - 64;
        assert!(data_frame_prefix::<ExecStdout>(1, fits).is_ok());
        let err = data_frame_prefix::<ExecStdout>(1, MAX_FRAME_LEN as usize).unwrap_err();
        assert!(matches!(err, FrameError::LengthTooLong { .. }), "{err}");
    }
}
