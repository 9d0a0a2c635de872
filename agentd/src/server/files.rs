//! `core.fs.*`: agentd serves writes only (the host copies small files into a container before it
//! starts). A `write` request opens the file, `core.fs.data` chunks follow on the same id, and
//! the empty chunk ends the write and is answered with `core.fs.response`. The resolution that
//! keeps paths inside the container's root, and the refusal of anything but a regular file, are
//! [`crate::fs`]'s; this module runs each write on a thread of its own and keeps its queue
//! between frames. Every other operation is answered "not supported".
//!
//! The dispatcher is the only reader of the agent port: a write that blocks (a slow or stuck
//! file system) must not stall every other session of the VM, so the dispatcher only queues the
//! chunks. The queue is bounded by [`WRITE_BACKLOG`]: a write further behind than that fails
//! (and its memory is dropped) instead of growing without bound.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;

use msb_protocol::types::{FsData, FsOp, FsRequest, FsResponse};

use super::Server;
use crate::lock;
use crate::port::Out;

/// Bytes a write may have queued behind its writer thread (ten of the host's 3 MiB chunks, a bit
/// more); beyond, the write fails.
pub const WRITE_BACKLOG: usize = 32 * 1024 * 1024;

/// Open write sessions by id.
pub(super) type Writes = HashMap<u32, Write>;

/// One write in progress: the queue to its thread.
#[derive(Debug)]
pub(super) struct Write {
    /// Chunks for the thread; the empty one ends the write.
    tx: Sender<Vec<u8>>,
    /// The answer of this write, sent at most once (by the thread, or the dispatcher when the
    /// backlog overflows).
    reply: Reply,
    /// Bytes queued and not yet written.
    queued: Arc<AtomicUsize>,
}

/// Sends a write's one `core.fs.response`.
#[derive(Debug, Clone)]
struct Reply {
    out: Out,
    id: u32,
    sent: Arc<AtomicBool>,
}

impl Reply {
    /// Sends the answer unless one was sent already; whether this call sent it.
    fn send(&self, result: Result<(), String>) -> bool {
        if self.sent.swap(true, Ordering::SeqCst) {
            return false;
        }
        let reply = match result {
            Ok(()) => FsResponse {
                ok: true,
                ..FsResponse::default()
            },
            Err(e) => FsResponse {
                ok: false,
                error: Some(e),
                ..FsResponse::default()
            },
        };
        self.out.send(self.id, &reply);
        true
    }

    fn answered(&self) -> bool {
        self.sent.load(Ordering::SeqCst)
    }
}

impl Server {
    /// Starts a write (the only `core.fs` operation agentd serves); others are refused.
    pub(super) fn fs_request(&mut self, id: u32, r: FsRequest) {
        let reply = Reply {
            out: self.out.clone(),
            id,
            sent: Arc::default(),
        };
        let FsOp::Write { path, mode } = r.op else {
            reply.send(Err(format!("{:?} is not supported by agentd", r.op)));
            return;
        };
        let root = match &r.container {
            Some(cid) => match lock(&self.containers).get(cid) {
                Some(c) => c.rootfs.clone(),
                None => {
                    reply.send(Err(format!("no container {cid}")));
                    return;
                }
            },
            None => PathBuf::from("/"),
        };
        let (tx, rx) = channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let job = WriteJob {
            root,
            path,
            mode: mode.unwrap_or(0o644),
            rx,
            reply: reply.clone(),
            queued: queued.clone(),
        };
        match std::thread::Builder::new()
            .name("fs-write".into())
            .stack_size(128 * 1024)
            .spawn(move || job.run())
        {
            Ok(_) => {
                self.writes.insert(id, Write { tx, reply, queued });
            }
            Err(e) => {
                reply.send(Err(format!("start a writer thread: {e}")));
            }
        }
    }

    /// A chunk of an open write, queued for its thread; the empty chunk ends it. Chunks of a
    /// write that already failed (and was answered) are dropped.
    pub(super) fn fs_data(&mut self, id: u32, d: FsData) {
        let Some(w) = self.writes.get(&id) else {
            return;
        };
        if d.data.is_empty() {
            // The thread answers once everything before it is written (or already has).
            let _ = w.tx.send(d.data);
            self.writes.remove(&id);
            return;
        }
        let len = d.data.len();
        let behind = w.queued.load(Ordering::SeqCst);
        if w.reply.answered() {
            self.writes.remove(&id);
        } else if behind.saturating_add(len) > WRITE_BACKLOG {
            // Dropping the queue ends the thread once its current write returns.
            w.reply.send(Err(format!(
                "write: the file system is too slow: {behind} bytes are still queued \
                 (at most {WRITE_BACKLOG})"
            )));
            self.writes.remove(&id);
        } else {
            w.queued.fetch_add(len, Ordering::SeqCst);
            if w.tx.send(d.data).is_err() {
                self.writes.remove(&id);
            }
        }
    }
}

/// A write on its own thread: the open, then the chunks in order.
struct WriteJob {
    root: PathBuf,
    path: String,
    mode: u32,
    rx: Receiver<Vec<u8>>,
    reply: Reply,
    queued: Arc<AtomicUsize>,
}

impl WriteJob {
    fn run(self) {
        use std::io::Write as _;
        let mut file = match crate::fs::create_in_root(&self.root, &self.path, self.mode) {
            Ok(f) => f,
            Err(e) => {
                self.reply.send(Err(format!("create {}: {e}", self.path)));
                return;
            }
        };
        // A closed queue without the empty chunk: the dispatcher gave the write up (and
        // answered it); nothing more to say.
        while let Ok(chunk) = self.rx.recv() {
            if chunk.is_empty() {
                self.reply.send(Ok(()));
                return;
            }
            if self.reply.answered() {
                return;
            }
            let res = file.write_all(&chunk);
            self.queued.fetch_sub(chunk.len(), Ordering::SeqCst);
            if let Err(e) = res {
                self.reply.send(Err(format!("write {}: {e}", self.path)));
                return;
            }
        }
    }
}
