//! `core.shutdown`: stop the containers, leave the disks clean, power off.
//!
//! SIGTERM to every container init, [`SHUTDOWN_GRACE`] to exit, SIGKILL to whatever is left,
//! then every container is torn down and the shared storage unmounted (overlay and ext4 uppers
//! unmounted, so the journal needs no recovery), `sync`, power off.

use std::sync::Mutex;
use std::time::Instant;

use msb_protocol::SHUTDOWN_GRACE;

use crate::container::Container;
use crate::exec::Sessions;
use crate::server::wait_until;
use crate::sys;

/// Never returns.
pub fn run(
    containers: &Mutex<std::collections::HashMap<String, Container>>,
    sessions: &Sessions,
) -> ! {
    tracing::info!("shutdown requested");
    let lock = || containers.lock().unwrap_or_else(|e| e.into_inner());
    for c in lock().values() {
        if let (Some(pid), false) = (c.init_pid, c.init_exited) {
            let _ = sys::kill(pid, libc::SIGTERM);
        }
    }
    wait_until(Instant::now() + SHUTDOWN_GRACE, || {
        lock()
            .values()
            .all(|c| c.init_pid.is_none() || c.init_exited)
    });
    for s in sessions.lock().unwrap_or_else(|e| e.into_inner()).values() {
        let _ = sys::kill(s.started.pid, libc::SIGKILL);
    }
    let mut all: Vec<Container> = lock().drain().map(|(_, c)| c).collect();
    for c in &mut all {
        c.teardown();
    }
    crate::storage::teardown_all();
    sys::sync();
    tracing::info!("powering off");
    sys::power_off()
}
