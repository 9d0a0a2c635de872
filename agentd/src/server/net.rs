//! `core.net.configure`: the pod network, applied by [`crate::net`]. Containers share the VM's
//! network namespace, so this is once per VM, before the pod's containers run. Success also
//! starts the report of listening ports for port forwarding ([`crate::forward`]).

use msb_protocol::net::{NetConfigure, NetConfigured, NetFailed};

use super::Server;

impl Server {
    /// Configures the interfaces and answers `core.net.configured` or `core.net.failed`.
    pub(super) fn net_configure(&self, id: u32, c: NetConfigure) {
        match crate::net::configure(&c) {
            Ok(()) => {
                // The pod's ports can be reached from its namespace on the host from now on.
                crate::forward::watch_listening(self.out.clone(), self.forwards.clone());
                self.out.send(id, &NetConfigured {})
            }
            Err(e) => {
                tracing::warn!("network: {e}");
                self.out.send(
                    id,
                    &NetFailed {
                        message: e.to_string(),
                    },
                )
            }
        }
    }
}
