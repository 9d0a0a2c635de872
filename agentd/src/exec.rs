//! Exec sessions: one process, its streams and its exit, on one correlation id.
//!
//! Frames of a session leave in this order: `core.exec.started`, any `stdout`/`stderr`, then
//! exactly one terminal `core.exec.exited` (or `core.exec.failed` instead of all of them).
//! `exited` waits until both output streams reached EOF, or until they stayed silent for
//! [`DRAIN_IDLE`] after the process ended (a leftover descendant may hold them open); nothing is
//! sent on the id after `exited`.
//!
//! A session whose host client left ([`forget`]) sends nothing more at all: its id range may be
//! handed to the relay's next client, which must not receive the old session's frames.
//!
//! Stdin never makes the dispatcher wait: it is the only reader of the agent port, so a process
//! that does not read its stdin would otherwise stall every session of the VM, including the
//! signal that would end that process. Chunks go into an unbounded queue whose size the host
//! bounds by flow control: the session's stdin thread acknowledges the bytes it takes
//! (`core.exec.stdin.ack`), and a host keeps at most [`STDIN_WINDOW`] bytes unacknowledged. A
//! chunk that would queue more than that is a host bug: it is logged and dropped.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{channel, sync_channel, Receiver, RecvTimeoutError, Sender, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use msb_protocol::types::{ExecExited, ExecStderr, ExecStdinAck, ExecStdout};
use msb_protocol::{Payload, STDIN_WINDOW};

use crate::port::{Out, DATA_CHUNK};

/// How long output may stay silent after the process ended before `exited` is sent anyway.
pub const DRAIN_IDLE: Duration = Duration::from_secs(1);

/// A process's stdout and stderr pipes hold this much (Linux's default is 64 KiB), its stdin
/// pipe [`STDIN_PIPE_SIZE`]. Under TCG what costs is not the bytes but each hand-over between the
/// process and agentd: a context switch flushes QEMU's TLB, and 100 MiB in 4 KiB writes through
/// a pipe to `cat` took 25 s against 6 s for writing them to `/dev/null`. A large pipe lets the
/// process run on while the pump waits, so that one read takes many of its writes.
pub const OUTPUT_PIPE_SIZE: usize = 512 * 1024;
/// See [`OUTPUT_PIPE_SIZE`]: agentd writes stdin in chunks of up to a quarter of the window.
pub const STDIN_PIPE_SIZE: usize = 256 * 1024;

/// A read that came within this long of asking for it (the pipe held data, or the process wrote
/// again right away) marks a busy stream. A busy stream's pump then lets the pipe fill for
/// [`COALESCE_WAIT`] before the next read, unless the read filled its buffer, so one frame
/// carries many writes: each frame costs the guest a VM exit and context switches; under TCG
/// 100 MiB from `yes | head -c` took 64 s in 4 KiB frames against 8 s for the same bytes from a
/// file. Output after a quiet spell is never delayed, and a busy stream's at most by
/// [`COALESCE_WAIT`].
const STREAM_GAP: Duration = Duration::from_millis(20);
/// See [`STREAM_GAP`].
const COALESCE_WAIT: Duration = Duration::from_millis(10);

/// Bytes of stdin taken before an acknowledgement is sent even though more is queued (one is
/// always sent when the queue runs empty).
const STDIN_ACK_EVERY: usize = STDIN_WINDOW / 4;

/// A live session as the dispatcher sees it.
#[derive(Debug)]
pub struct Session {
    /// Its process.
    pub started: Started,
    /// Its stdin; an empty chunk closes it. `None` once closed or without stdin.
    pub stdin: Option<StdinQueue>,
    /// Closed once nothing more may be sent for the session (exited, or forgotten).
    open: Arc<OpenGate>,
}

/// Whether a session may still send. A sender holds it while queueing a frame, so every frame
/// of the session is queued before `exited` (or before it was forgotten) or not at all.
#[derive(Debug, Default)]
struct OpenGate {
    closed: Mutex<bool>,
}

impl OpenGate {
    /// Queues `payload` on `id` unless the session is closed; returns whether it was queued.
    fn send<P: Payload>(&self, out: &Out, id: u32, payload: &P) -> bool {
        self.send_with(|| out.send(id, payload))
    }

    /// Runs `queue` (which queues a frame of the session) unless the session is closed; returns
    /// whether it ran.
    fn send_with(&self, queue: impl FnOnce()) -> bool {
        let closed = self.closed.lock().unwrap_or_else(|e| e.into_inner());
        if *closed {
            return false;
        }
        queue();
        true
    }

    fn close(&self) {
        *self.closed.lock().unwrap_or_else(|e| e.into_inner()) = true;
    }
}

/// The dispatcher's end of a process's stdin: queueing never blocks.
#[derive(Debug, Clone)]
pub struct StdinQueue {
    tx: Sender<Vec<u8>>,
    /// Bytes queued and not yet taken by the stdin thread.
    queued: Arc<AtomicUsize>,
}

impl StdinQueue {
    /// Queues `data` (empty: EOF). Refused, with the reason, when it would queue more than
    /// [`STDIN_WINDOW`] bytes: the host did not wait for acknowledgements.
    pub fn push(&self, data: Vec<u8>) -> Result<(), String> {
        let len = data.len();
        let queued = self.queued.fetch_add(len, Ordering::SeqCst) + len;
        if queued > STDIN_WINDOW {
            self.queued.fetch_sub(len, Ordering::SeqCst);
            return Err(format!(
                "{len} bytes of stdin dropped: {} already queued, the window is {STDIN_WINDOW}",
                queued - len
            ));
        }
        // A send fails only once the stdin thread ended, after EOF: nothing is left to feed.
        let _ = self.tx.send(data);
        Ok(())
    }
}

/// What the dispatcher knows of a process when its session starts.
#[derive(Debug)]
pub struct Started {
    /// The process.
    pub pid: i32,
    /// The container, if any.
    pub container: Option<String>,
    /// Whether this process is its container's init.
    pub is_init: bool,
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

/// Registers the session of `started` under `id` and starts its threads. `on_exit` runs with the
/// exit code after the output is drained and before `exited` is sent (OOM reporting, container
/// state).
///
/// The session is in `sessions` before any of its threads runs, so the exit thread (which
/// removes it) can never run first and leave a dead process's entry behind.
pub fn run_session(
    id: u32,
    out: Out,
    stdio: ParentStdio,
    exit_rx: Receiver<i32>,
    sessions: Sessions,
    started: Started,
    on_exit: impl FnOnce(i32) + Send + 'static,
) {
    let open = Arc::new(OpenGate::default());
    let stdin = stdio.stdin.map(|f| {
        let (tx, rx) = channel::<Vec<u8>>();
        let queue = StdinQueue {
            tx,
            queued: Arc::default(),
        };
        let taker = StdinTaker {
            id,
            rx,
            queued: queue.queued.clone(),
            out: out.clone(),
            open: open.clone(),
        };
        thread(move || pump_in(f, taker));
        queue
    });
    sessions.lock().unwrap_or_else(|e| e.into_inner()).insert(
        id,
        Session {
            started,
            stdin,
            open: open.clone(),
        },
    );
    let (done_tx, done_rx) = sync_channel::<()>(2);
    let mut readers = 0;
    let spawn_reader = |f: File, err: bool, done: SyncSender<()>| {
        let (out, open) = (out.clone(), open.clone());
        thread(move || pump_out(id, f, err, out, open, done));
    };
    spawn_reader(stdio.stdout, false, done_tx.clone());
    readers += 1;
    if let Some(e) = stdio.stderr {
        spawn_reader(e, true, done_tx.clone());
        readers += 1;
    }
    drop(done_tx);
    thread(move || {
        let code = exit_rx.recv().unwrap_or(255);
        let mut pending = readers;
        while pending > 0 {
            match done_rx.recv_timeout(DRAIN_IDLE) {
                Ok(()) => pending -= 1,
                Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        open.close();
        on_exit(code);
        // Absent: forgotten because its client left; the id may be someone else's by now.
        let known = sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id)
            .is_some();
        if known {
            out.send(id, &ExecExited { code });
        }
    });
}

/// Forgets the sessions whose ids lie in `range` (their relay client left): from now on they
/// send nothing, and their processes are killed. Returns how many there were.
pub fn forget(sessions: &Sessions, range: std::ops::Range<u32>) -> usize {
    let mut all = sessions.lock().unwrap_or_else(|e| e.into_inner());
    let ids: Vec<u32> = all.keys().copied().filter(|i| range.contains(i)).collect();
    for id in &ids {
        if let Some(s) = all.remove(id) {
            s.open.close();
            let _ = crate::sys::kill(s.started.pid, libc::SIGKILL);
        }
    }
    ids.len()
}

fn thread(f: impl FnOnce() + Send + 'static) {
    if let Err(e) = std::thread::Builder::new().stack_size(128 * 1024).spawn(f) {
        tracing::error!("cannot start a session thread: {e}");
    }
}

/// Copies a stream into frames: the data is read straight into the frame's buffer
/// ([`Out::data_buf`]), up to [`DATA_CHUNK`] bytes a frame.
fn pump_out(id: u32, mut f: File, err: bool, out: Out, open: Arc<OpenGate>, done: SyncSender<()>) {
    loop {
        let asked = Instant::now();
        // Wait for data before taking a buffer: an idle process holds none.
        wait_readable(&f);
        let mut buf = out.data_buf();
        let n = match f.read(buf.space()) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            // EIO: the terminal's last holder closed it.
            Err(_) => break,
        };
        let busy = asked.elapsed() < STREAM_GAP;
        let sent = open.send_with(|| {
            if err {
                out.send_data::<ExecStderr>(id, buf, n)
            } else {
                out.send_data::<ExecStdout>(id, buf, n)
            }
        });
        if !sent {
            break;
        }
        if busy && n < DATA_CHUNK {
            std::thread::sleep(COALESCE_WAIT);
        }
    }
    let _ = done.send(());
}

/// Blocks until `f` has data, reached its end or failed (the read that follows tells which).
fn wait_readable(f: &File) {
    use nix::poll::{poll, PollFd, PollFlags};
    use std::os::fd::AsFd;
    loop {
        let mut pfd = [PollFd::new(f.as_fd(), PollFlags::POLLIN)];
        match poll(&mut pfd, nix::poll::PollTimeout::NONE) {
            Err(nix::errno::Errno::EINTR) => {}
            _ => return,
        }
    }
}

/// The stdin thread's end of a [`StdinQueue`].
#[derive(Debug)]
struct StdinTaker {
    id: u32,
    rx: Receiver<Vec<u8>>,
    queued: Arc<AtomicUsize>,
    out: Out,
    open: Arc<OpenGate>,
}

impl StdinTaker {
    fn ack(&self, unacked: &mut usize) {
        if *unacked > 0 {
            self.open.send(
                &self.out,
                self.id,
                &ExecStdinAck {
                    bytes: *unacked as u64,
                },
            );
            *unacked = 0;
        }
    }
}

/// Feeds the process's stdin and acknowledges each byte taken. The acknowledgement goes out when
/// a chunk is taken, before the (possibly long) write: the guest then holds at most the window
/// plus the chunk in hand, and the host hears of the bytes before anything the process does with
/// them. Once the process closed its stdin the bytes are still taken (and dropped), so the host's
/// window never stays shut.
fn pump_in(mut f: File, taker: StdinTaker) {
    let mut writable = true;
    let mut unacked = 0usize;
    while let Ok(chunk) = taker.rx.recv() {
        if chunk.is_empty() {
            // EOF. Dropping `f` closes a pipe; a terminal master stays open for the output, so
            // the terminal's EOF character is sent instead, as a typing user would.
            if writable && is_tty(&f) {
                let _ = f.write_all(&[4]);
            }
            return;
        }
        let len = chunk.len();
        let left = taker.queued.fetch_sub(len, Ordering::SeqCst) - len;
        unacked += len;
        if left == 0 || unacked >= STDIN_ACK_EVERY {
            taker.ack(&mut unacked);
        }
        if writable && f.write_all(&chunk).is_err() {
            writable = false;
        }
    }
}

fn is_tty(f: &File) -> bool {
    std::io::IsTerminal::is_terminal(f)
}

#[cfg(test)]
mod tests {
    use super::*;
    use msb_protocol::frame::read_frame;
    use msb_protocol::Message;
    use std::os::unix::process::ExitStatusExt;

    fn pipe() -> (File, File) {
        let (r, w) = crate::sys::pipe().unwrap();
        (File::from(r), File::from(w))
    }

    /// Starts a session for `id` around process `pid` (its stdin fed into `stdin`, if any);
    /// returns the writer of its stdout and the sender of its exit.
    fn session(
        id: u32,
        out: &Out,
        sessions: &Sessions,
        pid: u32,
        stdin: Option<File>,
    ) -> (File, SyncSender<i32>) {
        let (stdout_r, stdout_w) = pipe();
        let (exit_tx, exit_rx) = sync_channel(1);
        let stdio = ParentStdio {
            stdin,
            stdout: stdout_r,
            stderr: None,
        };
        let started = Started {
            pid: i32::try_from(pid).unwrap_or(-1),
            container: None,
            is_init: false,
            tty: None,
        };
        run_session(
            id,
            out.clone(),
            stdio,
            exit_rx,
            sessions.clone(),
            started,
            |_| {},
        );
        (stdout_w, exit_tx)
    }

    /// Sums the `core.exec.stdin.ack` frames on the port until `want` bytes are acknowledged.
    fn read_acks(port: &mut File, id: u32, want: u64) {
        let mut acked = 0;
        while acked < want {
            let frame = read_frame(port).unwrap().expect("an ack");
            let msg = Message::from_frame(&frame).unwrap();
            assert_eq!(msg.id, id);
            acked += msg.decode::<ExecStdinAck>().unwrap().bytes;
        }
        assert_eq!(acked, want, "acknowledged exactly what was taken");
    }

    /// Output written in small pieces arrives byte-exact, in order, in frames of at most
    /// `DATA_CHUNK` bytes that each carry many writes, then `exited`.
    #[test]
    fn output_arrives_exactly_in_coalesced_frames() {
        const TOTAL: usize = 8 << 20;
        const WRITE: usize = 4096 + 13;
        let (mut port_r, port_w) = pipe();
        let out = Out::start(port_w).unwrap();
        let sessions: Sessions = Arc::default();
        let (mut stdout_w, exit_tx) = session(9, &out, &sessions, 0, None);
        drop(out);
        let data: Vec<u8> = (0..TOTAL)
            .map(|i| u8::try_from((i * 7 + i / 4099) % 256).unwrap())
            .collect();
        let expected = data.clone();
        let producer = std::thread::spawn(move || {
            for piece in data.chunks(WRITE) {
                stdout_w.write_all(piece).unwrap();
            }
            drop(stdout_w);
            exit_tx.send(3).unwrap();
        });
        let (mut got, mut frames) = (Vec::with_capacity(TOTAL), 0usize);
        let code = loop {
            let frame = read_frame(&mut port_r).unwrap().expect("a frame");
            let msg = Message::from_frame(&frame).unwrap();
            assert_eq!(msg.id, 9);
            if msg.is::<ExecExited>() {
                break msg.decode::<ExecExited>().unwrap().code;
            }
            let chunk = msg.decode::<ExecStdout>().unwrap().data;
            assert!(
                !chunk.is_empty() && chunk.len() <= DATA_CHUNK,
                "{}",
                chunk.len()
            );
            got.extend_from_slice(&chunk);
            frames += 1;
        };
        producer.join().unwrap();
        assert_eq!(code, 3);
        assert_eq!(got.len(), TOTAL);
        assert!(got == expected, "the output differs from what was written");
        let writes = TOTAL.div_ceil(WRITE);
        assert!(
            frames * 4 <= writes,
            "{frames} frames for {writes} writes: too little coalescing"
        );
    }

    #[test]
    fn stdin_is_queued_without_blocking_and_acknowledged_as_taken() {
        let (mut port_r, port_w) = pipe();
        let out = Out::start(port_w).unwrap();
        let sessions: Sessions = Arc::default();
        let (mut in_r, in_w) = pipe();
        // No process: the test reads its stdin; its stdout stays open until the end.
        let (stdout_w, exit_tx) = session(7, &out, &sessions, 0, Some(in_w));
        let queue = sessions.lock().unwrap()[&7].stdin.clone().unwrap();

        // More than the window at once is refused (the host ignored the acknowledgements).
        let refused = queue.push(vec![b'y'; STDIN_WINDOW + 1]).unwrap_err();
        assert_eq!(
            refused,
            "1048577 bytes of stdin dropped: 0 already queued, the window is 1048576"
        );
        // Nobody reads the process's stdin (a pipe holds 64 KiB): a whole window still queues
        // without waiting.
        let chunk = STDIN_WINDOW / 4;
        for _ in 0..4 {
            queue.push(vec![b'x'; chunk]).unwrap();
        }

        // The process reads: every byte arrives, and all of them are acknowledged.
        let mut got = vec![0u8; STDIN_WINDOW];
        in_r.read_exact(&mut got).unwrap();
        assert!(got.iter().all(|&b| b == b'x'));
        read_acks(&mut port_r, 7, STDIN_WINDOW as u64);

        // The process closes its stdin: what comes after is still taken and acknowledged, so
        // the host's window never stays shut.
        drop(in_r);
        queue.push(vec![b'z'; 1000]).unwrap();
        read_acks(&mut port_r, 7, 1000);

        drop(stdout_w);
        exit_tx.send(0).unwrap();
    }

    #[test]
    fn a_forgotten_session_is_killed_and_sends_nothing_more() {
        let (mut port_r, port_w) = pipe();
        let out = Out::start(port_w).unwrap();
        let sessions: Sessions = Arc::default();
        let sleep = || {
            std::process::Command::new("sleep")
                .arg("30")
                .spawn()
                .unwrap()
        };
        let (mut gone, mut kept) = (sleep(), sleep());
        let (mut gone_out, gone_exit) = session(5, &out, &sessions, gone.id(), None);
        let (kept_out, kept_exit) = session(1000, &out, &sessions, kept.id(), None);

        assert_eq!(forget(&sessions, 1..1000), 1);
        assert_eq!(gone.wait().unwrap().signal(), Some(libc::SIGKILL));
        // Late output and the exit of the forgotten session go nowhere ...
        gone_out.write_all(b"late").unwrap();
        drop(gone_out);
        gone_exit.send(137).unwrap();
        // ... while the other session still ends normally.
        kept.kill().unwrap();
        kept.wait().unwrap();
        drop(kept_out);
        kept_exit.send(0).unwrap();

        let frame = read_frame(&mut port_r).unwrap().unwrap();
        let msg = Message::from_frame(&frame).unwrap();
        assert_eq!(
            (msg.id, msg.decode::<ExecExited>().unwrap().code),
            (1000, 0)
        );
        drop(out);
        // Only the writer thread holds the port now; give the forgotten session time to (not)
        // send, then nothing more may be on the port.
        std::thread::sleep(Duration::from_millis(300));
        let mut rest = Vec::new();
        use nix::fcntl::{fcntl, FcntlArg, OFlag};
        use std::os::fd::AsRawFd;
        fcntl(port_r.as_raw_fd(), FcntlArg::F_SETFL(OFlag::O_NONBLOCK)).unwrap();
        let _ = port_r.read_to_end(&mut rest);
        assert!(rest.is_empty(), "{} more bytes on the port", rest.len());
        assert!(sessions.lock().unwrap().is_empty());
    }
}
