//! OOM reporting: `core.container.oom` (on id 0) each time a container's memory cgroup records
//! an OOM kill (`memory.events` `oom_kill`).
//!
//! Two paths report, both through [`report`], which sends only what rose since the last report:
//! the exit of a container's init (before its `exited`, so the host publishes `TaskOOM` before
//! the exit status 137 it explains), and a watcher thread for every container, because the
//! victim may be any process of the container, not one whose exit agentd waits for.
//!
//! The watcher sleeps until a container's `memory.events` changes: each container's file is
//! watched with inotify ([`watch_container`]; cgroup v2 signals every change of it as a
//! modification). Polling instead would wake an idle guest twice a second, which under TCG
//! costs its host measurable CPU per sandbox. A long timeout stays as a safety net, and if a
//! file cannot be watched the watcher polls every [`POLL`].

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use msb_protocol::types::ContainerOom;

use crate::container::{Container, Containers};
use crate::lock;
use crate::port::Out;

/// How often the watcher polls when inotify cannot serve it.
const POLL: Duration = Duration::from_millis(500);

/// How long the watcher sleeps without an inotify event before it checks anyway (ms).
const SAFETY_NET_MS: u16 = 30_000;

/// The watcher's inotify instance (non-blocking), or `None` where the kernel has none.
static INOTIFY: OnceLock<Option<File>> = OnceLock::new();

/// Set once a container's `memory.events` could not be watched: the watcher polls from then on.
static POLL_INSTEAD: AtomicBool = AtomicBool::new(false);

fn inotify() -> Option<&'static File> {
    INOTIFY
        .get_or_init(|| {
            // SAFETY: inotify_init1(2) takes flags only; a new descriptor or -1.
            let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC | libc::IN_NONBLOCK) };
            if fd < 0 {
                tracing::warn!(
                    "inotify: {}; OOM kills are polled",
                    std::io::Error::last_os_error()
                );
                return None;
            }
            // SAFETY: a descriptor just returned to us, owned by nothing else.
            Some(File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
        })
        .as_ref()
}

/// Has the watcher woken by every change of `memory_events` (a container's, from
/// [`crate::cgroup::Cgroup::memory_events`]). Where that fails the watcher polls instead.
pub fn watch_container(memory_events: &Path) {
    use std::os::fd::AsRawFd;
    let added = match inotify() {
        None => Err(std::io::Error::other("no inotify")),
        Some(f) => std::ffi::CString::new(memory_events.as_os_str().as_bytes())
            .map_err(std::io::Error::other)
            .and_then(|path| {
                // SAFETY: a valid inotify descriptor and a NUL-terminated path that outlives
                // the call.
                let wd = unsafe {
                    libc::inotify_add_watch(f.as_raw_fd(), path.as_ptr(), libc::IN_MODIFY)
                };
                crate::sys::check(wd).map(drop)
            }),
    };
    if let Err(e) = added {
        if !POLL_INSTEAD.swap(true, Ordering::SeqCst) {
            tracing::warn!(
                "cannot watch {}: {e}; OOM kills are polled",
                memory_events.display()
            );
        }
    }
}

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
    use nix::poll::{poll, PollFd, PollFlags};
    let mut events = [0u8; 4096];
    loop {
        match inotify() {
            Some(mut f) if !POLL_INSTEAD.load(Ordering::SeqCst) => {
                let mut pfd = [PollFd::new(f.as_fd(), PollFlags::POLLIN)];
                let _ = poll(&mut pfd, SAFETY_NET_MS);
                // Which file changed does not matter: every container is checked below.
                while matches!(f.read(&mut events), Ok(n) if n > 0) {}
            }
            _ => std::thread::sleep(POLL),
        }
        for c in lock(&containers).values_mut() {
            report(&out, c);
        }
    }
}
