//! `core.port.*`: port forwarding sessions, run by [`crate::forward`]. The dispatcher only
//! queues; each connection has its own threads.

use msb_protocol::port::{PortAck, PortConnect, PortData};

use super::Server;

impl Server {
    /// `core.port.connect`: answered by the session's thread.
    pub(super) fn port_connect(&self, id: u32, c: PortConnect) {
        self.forwards.connect(&self.out, id, c.port);
    }

    /// `core.port.data`.
    pub(super) fn port_data(&self, id: u32, d: PortData) {
        self.forwards.data(id, d.data);
    }

    /// `core.port.ack`.
    pub(super) fn port_ack(&self, id: u32, a: PortAck) {
        self.forwards.ack(id, a.bytes);
    }

    /// `core.port.close`.
    pub(super) fn port_close(&self, id: u32) {
        self.forwards.close(id);
    }
}
