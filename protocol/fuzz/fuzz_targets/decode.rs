//! Feeds arbitrary bytes to every decoding layer: frames (incremental and blocking), envelopes
//! and the payload types a peer receives. Any panic or over-sized allocation is a bug.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use msb_protocol::frame::decode_frame;
use msb_protocol::types::{ContainerCreate, ExecRequest, ExecStdout, FsRequest, Ready};
use msb_protocol::Message;

fuzz_target!(|data: &[u8]| {
    let mut src = BytesMut::from(data);
    while let Ok(Some(frame)) = decode_frame(&mut src) {
        if let Ok(msg) = Message::from_frame(&frame) {
            let _ = msg.decode::<ExecRequest>();
            let _ = msg.decode::<ContainerCreate>();
            let _ = msg.decode::<Ready>();
            let _ = msg.decode::<ExecStdout>();
            let _ = msg.decode::<FsRequest>();
        }
    }
    let _ = msb_protocol::read_frame(&mut &data[..]);
});
