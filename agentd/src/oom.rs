//! OOM reporting: `core.container.oom` (on id 0) each time a container's memory cgroup records
//! an OOM kill (`memory.events` `oom_kill`).
//!
//! Two paths report, both through [`report`], which sends only what rose since the last report:
//! the exit of a container's init (before its `exited`, so the host publishes `TaskOOM` before
//! the exit status 137 it explains), and a watcher thread polling every container, because the
//! victim may be any process of the container, not one whose exit agentd waits for.

use std::time::Duration;

use msb_protocol::types::ContainerOom;

use crate::container::{Container, Containers};
use crate::lock;
use crate::port::Out;

/// How often the watcher polls.
const POLL: Duration = Duration::from_millis(500);

/// Sends `core.container.oom` if the container's OOM-kill counter rose since last reported.
pub fn report(out: &Out, c: &mut Container) {
    let kills = c.cgroup.oom_kills();
    if kills > c.oom_reported {
        c.oom_reported = kills;
        out.send(0, &ContainerOom { id: c.id.clone() });
    }
}

/// Starts the thread that polls every container's OOM counter.
pub fn start_watch(out: Out, containers: Containers) {
    let _ = std::thread::Builder::new()
        .name("oom".into())
        .stack_size(64 * 1024)
        .spawn(move || watch(out, containers));
}

fn watch(out: Out, containers: Containers) {
    loop {
        std::thread::sleep(POLL);
        for c in lock(&containers).values_mut() {
            report(&out, c);
        }
    }
}
