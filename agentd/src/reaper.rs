//! The only place agentd calls `waitpid`.
//!
//! As PID 1 agentd inherits every orphan of the VM, and it must both reap them and report exact
//! statuses of its own children. One thread reads SIGCHLD from a signalfd and reaps with
//! `waitpid(-1, WNOHANG)`; statuses of registered pids go to their waiters, others (orphans) are
//! dropped. Spawning holds [`Reaper::spawn_guard`] across `clone` and registration, so a child
//! that exits at once cannot be reaped before its waiter exists.

use std::collections::HashMap;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::sys;

/// How a process ended, as a shell reports it: the exit code, or 128 + the signal number.
pub fn exit_code(status: libc::c_int) -> i32 {
    if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else if libc::WIFSIGNALED(status) {
        msb_protocol::SIGNAL_EXIT_BASE + libc::WTERMSIG(status)
    } else {
        // Stopped/continued statuses are not requested (no WUNTRACED); be explicit anyway.
        255
    }
}

type Waiters = HashMap<i32, SyncSender<i32>>;

/// Handle shared by everything that spawns.
#[derive(Debug, Clone)]
pub struct Reaper {
    waiters: Arc<Mutex<Waiters>>,
}

/// Held while a child is cloned and registered.
#[derive(Debug)]
pub struct SpawnGuard<'a> {
    waiters: MutexGuard<'a, Waiters>,
}

impl SpawnGuard<'_> {
    /// Registers `pid`; its exit code arrives on the returned receiver.
    pub fn register(&mut self, pid: i32) -> Receiver<i32> {
        let (tx, rx) = sync_channel(1);
        self.waiters.insert(pid, tx);
        rx
    }
}

impl Reaper {
    /// Starts the reaper thread. SIGCHLD must already be blocked in every thread
    /// ([`sys::block_sigchld`] in main before any thread starts).
    pub fn start(sigset: nix::sys::signal::SigSet) -> std::io::Result<Reaper> {
        let fd = sys::signalfd(&sigset)?;
        let reaper = Reaper {
            waiters: Arc::new(Mutex::new(HashMap::new())),
        };
        let r = reaper.clone();
        std::thread::Builder::new()
            .name("reaper".into())
            .stack_size(64 * 1024)
            .spawn(move || r.run(fd))?;
        Ok(reaper)
    }

    /// Locks out reaping while a child is being created.
    pub fn spawn_guard(&self) -> SpawnGuard<'_> {
        SpawnGuard {
            waiters: self.waiters.lock().unwrap_or_else(|e| e.into_inner()),
        }
    }

    fn run(&self, sigfd: nix::sys::signalfd::SignalFd) {
        loop {
            self.reap_all();
            // Blocks until the next SIGCHLD; signals coalesce, hence reap_all loops.
            if sigfd.read_signal().is_err() {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        }
    }

    fn reap_all(&self) {
        loop {
            let mut status = 0;
            let mut waiters = self.waiters.lock().unwrap_or_else(|e| e.into_inner());
            // Raw: nix's `waitpid` fails on a process killed by a real-time signal (its `Signal`
            // cannot express one) after reaping it, and its status would be lost.
            // SAFETY: waitpid writes the status into a valid local.
            let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
            if pid <= 0 {
                return;
            }
            if let Some(tx) = waiters.remove(&pid) {
                let _ = tx.try_send(exit_code(status));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_shell_convention() {
        assert_eq!(exit_code(7 << 8), 7);
        assert_eq!(exit_code(0), 0);
        assert_eq!(exit_code(libc::SIGKILL), 137);
        assert_eq!(exit_code(libc::SIGTERM), 143);
    }
}
