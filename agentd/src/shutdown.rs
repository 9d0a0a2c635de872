//! `core.shutdown`: stop the containers, leave the disks clean, power off.
//!
//! SIGTERM to every container init, [`SHUTDOWN_GRACE`] to exit, SIGKILL to whatever is left,
//! then every container is torn down and the shared storage unmounted (overlay and ext4 uppers
//! unmounted, so the journal needs no recovery), `sync`, power off.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use msb_protocol::SHUTDOWN_GRACE;

use crate::container::Container;
use crate::exec::Sessions;
use crate::{lock, sys};

/// Never returns.
pub fn run(
    containers: &Mutex<std::collections::HashMap<String, Container>>,
    sessions: &Sessions,
) -> ! {
    tracing::info!("shutdown requested");
    for c in lock(containers).values() {
        if let (Some(pid), false) = (c.init_pid, c.init_exited) {
            let _ = sys::kill(pid, libc::SIGTERM);
        }
    }
    wait_until(Instant::now() + SHUTDOWN_GRACE, || {
        lock(containers)
            .values()
            .all(|c| c.init_pid.is_none() || c.init_exited)
    });
    for s in lock(sessions).values() {
        let _ = sys::kill(s.started.pid, libc::SIGKILL);
    }
    let mut all: Vec<Container> = lock(containers).drain().map(|(_, c)| c).collect();
    for c in &mut all {
        c.teardown();
    }
    crate::storage::teardown_all();
    sys::sync();
    tracing::info!("powering off");
    sys::power_off()
}

/// Polls `done` every 10 ms until it holds or `deadline` passes; returns its last answer.
fn wait_until(deadline: Instant, mut done: impl FnMut() -> bool) -> bool {
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    done()
}
