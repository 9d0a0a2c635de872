//! `core.exec.*`: a process and its session. `core.exec.request` prepares the process
//! ([`crate::prepare`]), starts it ([`crate::spawn`]) and hands its streams and exit to a session
//! ([`crate::exec`]); `stdin`, `resize` and `signal` act on the live session of their id, and on
//! an id without one are answered `core.error{invalid_session}`.
//!
//! The first process of a container is its init: its pid is recorded in the container, and its
//! exit marks the container as not running (after reporting an OOM kill that caused it).

use std::os::fd::AsRawFd;

use msb_protocol::types::{
    ErrorKind, ExecFailed, ExecFailureKind, ExecRequest, ExecResize, ExecSignal, ExecStarted,
    ExecStdin, NamespaceSource,
};
use msb_protocol::Payload;

use super::Server;
use crate::prepare::{self, child_failure, other, terminal_stdio, Prepared};
use crate::spawn::{self, SpawnError, Spawned};
use crate::{exec, lock, sys};

impl Server {
    /// `core.exec.request`: starts the process, or answers `core.exec.failed`.
    pub(super) fn exec(&mut self, id: u32, req: ExecRequest) {
        if lock(&self.sessions).contains_key(&id) {
            return self.error(
                id,
                ErrorKind::InvalidSession,
                format!("exec session {id} already exists"),
                ExecRequest::TYPE,
            );
        }
        match self.start(id, req) {
            Ok(()) => {}
            Err(failed) => self.out.send(id, &failed),
        }
    }

    fn start(&mut self, id: u32, mut req: ExecRequest) -> Result<(), ExecFailed> {
        crate::forward::activity();
        let Prepared {
            plan,
            parent,
            is_init,
        } = prepare::prepare(&self.containers, &mut req)?;
        let mut exit_rx = None;
        let mut guard = Some(self.reaper.spawn_guard());
        let spawned = spawn::spawn(plan, |pid| {
            if let Some(mut g) = guard.take() {
                exit_rx = Some(g.register(pid));
            }
        });
        drop(guard);
        let Spawned { pid, terminal } = match spawned {
            Ok(s) => s,
            Err(SpawnError::Parent(e)) => return Err(other(format!("start {}: {e}", req.cmd))),
            Err(SpawnError::Child { step, errno }) => return Err(child_failure(step, errno, &req)),
        };
        let (parent_stdio, tty) = match (parent, terminal) {
            (Some(p), _) => p,
            (None, Some(master)) => match terminal_stdio(master, req.stdin) {
                Ok(p) => p,
                Err(e) => {
                    // Nobody could read its output: it must not run on unseen.
                    let _ = sys::kill(pid, libc::SIGKILL);
                    return Err(ExecFailed {
                        kind: ExecFailureKind::PtySetupFailed,
                        errno: e.raw_os_error(),
                        message: format!("set up the terminal's streams: {e}"),
                    });
                }
            },
            (None, None) => {
                let _ = sys::kill(pid, libc::SIGKILL);
                return Err(other(format!("start {}: no terminal came back", req.cmd)));
            }
        };
        let exit_rx = exit_rx.expect("register ran before spawn returned Ok");
        if is_init {
            if let Some(c) =
                lock(&self.containers).get_mut(req.container.as_deref().unwrap_or_default())
            {
                c.init_pid = Some(pid);
            }
        }
        // A pid is positive.
        let started = ExecStarted {
            pid: u32::try_from(pid).unwrap_or_default(),
        };
        self.out.send(id, &started);
        let (containers, out, cid) = (
            self.containers.clone(),
            self.out.clone(),
            req.container.clone(),
        );
        let on_exit = move |_code: i32| {
            if let (true, Some(cid)) = (is_init, cid) {
                let mut all = lock(&containers);
                if let Some(c) = all.get_mut(&cid) {
                    c.init_exited = true;
                    crate::oom::report(&out, c);
                    // With a PID namespace of its own, the kernel has killed the rest with
                    // its init; in a shared one, the container ends with its init as under
                    // runc, which kills what is left in its cgroup.
                    if c.spec.namespaces.pid != NamespaceSource::New {
                        if let Err(e) = c.cgroup.signal_all(libc::SIGKILL) {
                            tracing::warn!(container = %cid, "kill what is left: {e}");
                        }
                    }
                }
            }
        };
        exec::run_session(
            id,
            self.out.clone(),
            parent_stdio,
            exit_rx,
            self.sessions.clone(),
            exec::Started {
                pid,
                container: req.container.clone(),
                is_init,
                tty,
            },
            on_exit,
        );
        Ok(())
    }

    /// `core.exec.stdin`: queues the chunk for the process (an empty one closes its stdin).
    pub(super) fn stdin(&self, id: u32, s: ExecStdin) {
        let tx = {
            let mut sessions = lock(&self.sessions);
            match sessions.get_mut(&id) {
                Some(sess) if s.data.is_empty() => sess.stdin.take(),
                Some(sess) => sess.stdin.clone(),
                None => {
                    return self.error(
                        id,
                        ErrorKind::InvalidSession,
                        format!("no exec session {id}"),
                        ExecStdin::TYPE,
                    )
                }
            }
        };
        // Never blocks: the host's window bounds the queue (see `exec`).
        if let Some(tx) = tx {
            if let Err(why) = tx.push(s.data) {
                tracing::error!(exec = id, "host ignored the stdin window: {why}");
            }
        }
    }

    /// `core.exec.resize`: the terminal's new size; nothing for a process without one.
    pub(super) fn resize(&self, id: u32, r: ExecResize) {
        match lock(&self.sessions).get(&id).map(|s| s.started.tty.clone()) {
            Some(Some(tty)) => {
                let _ = sys::set_winsize(tty.as_raw_fd(), r.rows, r.cols);
            }
            Some(None) => {}
            None => self.error(
                id,
                ErrorKind::InvalidSession,
                format!("no exec session {id}"),
                ExecResize::TYPE,
            ),
        }
    }

    /// `core.exec.signal`: to a container's init alone (as runc does), to the process group of
    /// any other process, and with `all` to every process of the container's cgroup.
    pub(super) fn signal(&self, id: u32, s: ExecSignal) {
        let (pid, container, is_init) = match lock(&self.sessions).get(&id) {
            Some(sess) => (
                sess.started.pid,
                sess.started.container.clone(),
                sess.started.is_init,
            ),
            None => {
                return self.error(
                    id,
                    ErrorKind::InvalidSession,
                    format!("no exec session {id}"),
                    ExecSignal::TYPE,
                )
            }
        };
        let result = match (&container, s.all) {
            (Some(c), true) => match lock(&self.containers).get(c) {
                Some(c) => c.cgroup.signal_all(s.signal),
                None => Ok(()),
            },
            // A container init is signalled alone, as runc does; other processes with their
            // process group (they lead their own session).
            _ if is_init => sys::kill(pid, s.signal),
            _ => sys::kill(-pid, s.signal).or_else(|_| sys::kill(pid, s.signal)),
        };
        if let Err(e) = result {
            tracing::warn!(exec = id, "signal {}: {e}", s.signal);
        }
    }
}
