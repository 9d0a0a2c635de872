//! Exec sessions: one process, its streams and its exit, on one correlation id.
//!
//! Frames of a session leave in this order: `core.exec.started`, any `stdout`/`stderr`, then
//! exactly one terminal `core.exec.exited` (or `core.exec.failed` instead of all of them).
//! `exited` waits until both output streams reached EOF, or until they stayed silent for
//! [`DRAIN_IDLE`] after the process ended (a leftover descendant may hold them open); nothing is
//! sent on the id after `exited`.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use msb_protocol::types::{ExecExited, ExecStderr, ExecStdout};

use crate::port::Out;

/// How long output may stay silent after the process ended before `exited` is sent anyway.
pub const DRAIN_IDLE: Duration = Duration::from_secs(1);

/// Bytes read from a stream per frame.
const CHUNK: usize = 64 * 1024;

/// A read shorter than this that follows the previous read within [`STREAM_GAP`] marks a busy
/// stream of small writes (`yes | head`, a line-by-line logger): the pump then lets the pipe fill
/// for [`COALESCE_WAIT`] before the next read, so one frame carries many writes. Each frame costs
/// the guest a VM exit and several context switches; under TCG 100 MiB from `yes | head -c` took
/// 64 s in 4 KiB frames against 8 s for the same bytes from a file. Output after a quiet spell is
/// never delayed, and a busy stream's at most by [`COALESCE_WAIT`].
const SMALL_READ: usize = 16 * 1024;
/// See [`SMALL_READ`].
const STREAM_GAP: Duration = Duration::from_millis(20);
/// See [`SMALL_READ`].
const COALESCE_WAIT: Duration = Duration::from_millis(10);

/// Stdin chunks queued per session before the reader of the agent port blocks.
const STDIN_QUEUE: usize = 16;

/// A live session as the dispatcher sees it.
#[derive(Debug)]
pub struct Session {
    /// The process.
    pub pid: i32,
    /// The container, if any.
    pub container: Option<String>,
    /// Whether this process is its container's init.
    pub is_init: bool,
    /// Stdin chunks; an empty chunk closes stdin. `None` once closed or without stdin.
    pub stdin: Option<SyncSender<Vec<u8>>>,
    /// The terminal master, for resizes.
    pub tty: Option<Arc<OwnedFd>>,
}

/// Sessions by correlation id.
pub type Sessions = Arc<Mutex<HashMap<u32, Session>>>;

/// Streams of a started process, parent side.
#[derive(Debug)]
pub struct ParentStdio {
    /// Where stdin goes (pipe write end or terminal master), if connected.
    pub stdin: Option<File>,
    /// stdout pipe, or the terminal master.
    pub stdout: File,
    /// stderr pipe; none on a terminal.
    pub stderr: Option<File>,
}

/// Starts the threads of a session and returns its stdin sender. `on_exit` runs with the exit
/// code after the output is drained and before `exited` is sent (OOM reporting, container state).
pub fn run_session(
    id: u32,
    out: Out,
    stdio: ParentStdio,
    exit_rx: Receiver<i32>,
    sessions: Sessions,
    on_exit: impl FnOnce(i32) + Send + 'static,
) -> Option<SyncSender<Vec<u8>>> {
    let closed = Arc::new(AtomicBool::new(false));
    let (done_tx, done_rx) = sync_channel::<()>(2);
    let mut readers = 0;
    let spawn_reader = |f: File, err: bool, done: SyncSender<()>| {
        let (out, closed) = (out.clone(), closed.clone());
        thread(move || pump_out(id, f, err, out, closed, done));
    };
    spawn_reader(stdio.stdout, false, done_tx.clone());
    readers += 1;
    if let Some(e) = stdio.stderr {
        spawn_reader(e, true, done_tx.clone());
        readers += 1;
    }
    drop(done_tx);
    let stdin_tx = stdio.stdin.map(|f| {
        let (tx, rx) = sync_channel::<Vec<u8>>(STDIN_QUEUE);
        thread(move || pump_in(f, rx));
        tx
    });
    thread(move || {
        let code = exit_rx.recv().unwrap_or(255);
        let mut pending = readers;
        while pending > 0 {
            match done_rx.recv_timeout(DRAIN_IDLE) {
                Ok(()) => pending -= 1,
                Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        closed.store(true, Ordering::SeqCst);
        on_exit(code);
        sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
        out.send(id, &ExecExited { code });
    });
    stdin_tx
}

fn thread(f: impl FnOnce() + Send + 'static) {
    if let Err(e) = std::thread::Builder::new().stack_size(128 * 1024).spawn(f) {
        tracing::error!("cannot start a session thread: {e}");
    }
}

fn pump_out(
    id: u32,
    mut f: File,
    err: bool,
    out: Out,
    closed: Arc<AtomicBool>,
    done: SyncSender<()>,
) {
    let mut buf = vec![0u8; CHUNK];
    let mut last_read: Option<Instant> = None;
    loop {
        match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if closed.load(Ordering::SeqCst) {
                    break;
                }
                let now = Instant::now();
                let busy =
                    n < SMALL_READ && last_read.is_some_and(|t| now.duration_since(t) < STREAM_GAP);
                last_read = Some(now);
                let data = buf[..n].to_vec();
                if err {
                    out.send(id, &ExecStderr { data });
                } else {
                    out.send(id, &ExecStdout { data });
                }
                if busy {
                    std::thread::sleep(COALESCE_WAIT);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            // EIO: the terminal's last holder closed it.
            Err(_) => break,
        }
    }
    let _ = done.send(());
}

fn pump_in(mut f: File, rx: Receiver<Vec<u8>>) {
    for chunk in rx {
        if chunk.is_empty() {
            // EOF. Dropping `f` closes a pipe; a terminal master stays open for the output, so
            // the terminal's EOF character is sent instead, as a typing user would.
            if is_tty(&f) {
                let _ = f.write_all(&[4]);
            }
            return;
        }
        if f.write_all(&chunk).is_err() {
            return;
        }
    }
}

fn is_tty(f: &File) -> bool {
    // SAFETY: isatty only inspects the descriptor.
    unsafe { libc::isatty(f.as_raw_fd()) == 1 }
}
