//! Arbitrary bytes never panic the decoder and never make it allocate beyond the frame bound.
//!
//! A counting global allocator records the largest single allocation made while decoding.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::BytesMut;
use msb_protocol::frame::decode_frame;
use msb_protocol::types::*;
use msb_protocol::{Message, MAX_FRAME_LEN};
use proptest::prelude::*;

struct Tracking;

static LARGEST: AtomicUsize = AtomicUsize::new(0);

// SAFETY: delegates every call to the system allocator unchanged; only records sizes.
unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LARGEST.fetch_max(new_size, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Tracking = Tracking;

/// Decodes everything a peer could do with these bytes: frames, envelopes, every payload type.
fn decode_all(bytes: &[u8]) {
    let mut src = BytesMut::from(bytes);
    while let Ok(Some(frame)) = decode_frame(&mut src) {
        if let Ok(msg) = Message::from_frame(&frame) {
            let _ = msg.decode::<ExecRequest>();
            let _ = msg.decode::<ContainerCreate>();
            let _ = msg.decode::<ContainerStatsReply>();
            let _ = msg.decode::<Ready>();
            let _ = msg.decode::<ExecStdout>();
            let _ = msg.decode::<FsRequest>();
            let _ = msg.decode::<ErrorReply>();
        }
    }
    let _ = msb_protocol::read_frame(&mut &bytes[..]);
}

/// A frame whose envelope lies about its lengths: the CBOR headers claim huge strings/arrays.
fn lying_frame(claim: u32, kind: u8) -> Vec<u8> {
    let mut body = vec![0xa3, 0x61, b'v', 0x07, 0x61, b't'];
    match kind % 3 {
        0 => body.extend_from_slice(&[0x7a]), // text of u32 length
        1 => body.extend_from_slice(&[0x5a]), // bytes of u32 length
        _ => body.extend_from_slice(&[0x9a]), // array of u32 length
    }
    body.extend_from_slice(&claim.to_be_bytes());
    body.extend_from_slice(&[0; 16]);
    let mut v = u32::try_from(body.len() + 5)
        .unwrap()
        .to_be_bytes()
        .to_vec();
    v.extend_from_slice(&[0, 0, 0, 1, 0]);
    v.extend_from_slice(&body);
    v
}

/// Bound on any single allocation: a frame plus the copies decoding makes of its body.
const BOUND: usize = 2 * MAX_FRAME_LEN as usize;

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        decode_all(&bytes);
    }

    #[test]
    fn arbitrary_bodies_in_valid_frames_never_panic(id: u32, flags in 0u8..8, body in proptest::collection::vec(any::<u8>(), 0..512)) {
        let mut v = u32::try_from(body.len() + 5).unwrap().to_be_bytes().to_vec();
        v.extend_from_slice(&id.to_be_bytes());
        v.push(flags);
        v.extend_from_slice(&body);
        decode_all(&v);
    }

    #[test]
    fn lying_lengths_do_not_allocate_what_they_claim(claim: u32, kind: u8) {
        LARGEST.store(0, Ordering::Relaxed);
        decode_all(&lying_frame(claim, kind));
        let largest = LARGEST.load(Ordering::Relaxed);
        prop_assert!(largest <= BOUND, "an allocation of {largest} bytes for a {}-byte frame", 30);
    }

    #[test]
    fn huge_len_prefixes_do_not_allocate(len: u32, tail in proptest::collection::vec(any::<u8>(), 0..64)) {
        LARGEST.store(0, Ordering::Relaxed);
        let mut v = len.to_be_bytes().to_vec();
        v.extend_from_slice(&tail);
        decode_all(&v);
        let largest = LARGEST.load(Ordering::Relaxed);
        prop_assert!(largest <= BOUND, "an allocation of {largest} bytes");
    }
}
