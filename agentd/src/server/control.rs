//! The connection itself: liveness, the wall clock, a VM restored from a template, the end of the VM, and a relay client that
//! left. Shutdown and a client's departure act on every session of the VM (or of a client's id
//! range), which is why the dispatcher accepts them on id 0 only.

use msb_protocol::types::{ClockSync, ErrorKind, Pong, RelayClientDisconnected, Restore, Restored};
use msb_protocol::Payload;

use super::Server;
use crate::{exec, sys};

impl Server {
    /// `core.ping`.
    pub(super) fn ping(&self, id: u32) {
        self.out.send(id, &Pong {});
    }

    /// `core.clock.sync`: sets the VM's wall clock; a failure is logged, nothing is answered.
    pub(super) fn clock_sync(&self, c: ClockSync) {
        if let Err(e) = sys::set_realtime(c.unix_time_nanos) {
            tracing::warn!("clock sync: {e}");
        }
    }

    /// `core.restore`: see [`crate::restore`]. Answered with `core.restored`, or `core.error`
    /// naming the step that failed.
    pub(super) fn restore(&self, id: u32, r: Restore) {
        match crate::restore::restore(&r) {
            Ok(()) => self.out.send(id, &Restored {}),
            Err(e) => self.error(id, ErrorKind::InvalidPayload, e, Restore::TYPE),
        }
    }

    /// `core.shutdown`: see [`crate::shutdown`]. Never returns.
    pub(super) fn shutdown(&self) -> ! {
        crate::shutdown::run(&self.containers, &self.sessions)
    }

    /// `core.relay.client.disconnected`: the processes of the client's id range are killed and
    /// their sessions forgotten (nothing more is sent for them: the relay may hand the range to
    /// a new client).
    pub(super) fn client_left(&self, r: RelayClientDisconnected) {
        let range = r.id_start..r.id_end_exclusive;
        let n = exec::forget(&self.sessions, range.clone()) + self.forwards.forget(range);
        tracing::debug!(
            n,
            "relay client left; its sessions are killed and forgotten"
        );
    }
}
