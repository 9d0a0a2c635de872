//! Correlation id ranges of the relay.
//!
//! The relay (a host task of the runtime) owns the agent connection and serves up to [`RELAY_MAX_CLIENTS`] host clients. Client `k`
//! owns ids `[k*STEP+1, (k+1)*STEP)`; guest-to-host frames route by `id / STEP`. On connect the
//! relay writes the client's range as two big-endian u32 (the [`RangeHeader`]) and then the
//! cached `core.ready` frame.

use std::ops::Range;

use crate::consts::{RELAY_ID_STEP, RELAY_MAX_CLIENTS};

/// The correlation ids of relay client `slot`, or `None` when `slot` is out of range.
pub fn client_id_range(slot: u32) -> Option<Range<u32>> {
    (slot < RELAY_MAX_CLIENTS).then(|| slot * RELAY_ID_STEP + 1..(slot + 1) * RELAY_ID_STEP)
}

/// The relay client a correlation id belongs to, or `None` for the control id `0`, for the
/// first id of each step (never handed out) and for ids past the last client.
pub fn client_of_id(id: u32) -> Option<u32> {
    let slot = id / RELAY_ID_STEP;
    (slot < RELAY_MAX_CLIENTS && id % RELAY_ID_STEP != 0).then_some(slot)
}

/// The 8 bytes the relay sends a new client before anything else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RangeHeader {
    /// First id of the client's range.
    pub id_start: u32,
    /// One past the last.
    pub id_end_exclusive: u32,
}

impl RangeHeader {
    /// Size on the wire.
    pub const SIZE: usize = 8;

    /// Encodes as two big-endian u32.
    pub fn to_bytes(self) -> [u8; 8] {
        let mut b = [0u8; 8];
        b[..4].copy_from_slice(&self.id_start.to_be_bytes());
        b[4..].copy_from_slice(&self.id_end_exclusive.to_be_bytes());
        b
    }

    /// Decodes; `None` when the range is empty or not a relay client's range.
    pub fn from_bytes(b: [u8; 8]) -> Option<Self> {
        let id_start = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
        let id_end_exclusive = u32::from_be_bytes([b[4], b[5], b[6], b[7]]);
        let slot = client_of_id(id_start)?;
        (client_id_range(slot)? == (id_start..id_end_exclusive)).then_some(RangeHeader {
            id_start,
            id_end_exclusive,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_partition_the_id_space() {
        let first = client_id_range(0).unwrap();
        assert_eq!(first, 1..RELAY_ID_STEP);
        let last = client_id_range(RELAY_MAX_CLIENTS - 1).unwrap();
        assert_eq!(last.end, RELAY_MAX_CLIENTS * RELAY_ID_STEP);
        assert!(client_id_range(RELAY_MAX_CLIENTS).is_none());
        for slot in [0, 1, 63, 127] {
            let r = client_id_range(slot).unwrap();
            assert_eq!(client_of_id(r.start), Some(slot));
            assert_eq!(client_of_id(r.end - 1), Some(slot));
        }
        assert_eq!(client_of_id(0), None);
        assert_eq!(client_of_id(u32::MAX), None);
    }

    #[test]
    fn range_header_round_trips() {
        let r = client_id_range(5).unwrap();
        let h = RangeHeader {
            id_start: r.start,
            id_end_exclusive: r.end,
        };
        assert_eq!(RangeHeader::from_bytes(h.to_bytes()), Some(h));
        assert_eq!(RangeHeader::from_bytes([0; 8]), None);
    }
}
