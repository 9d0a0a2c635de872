//! The `agent` virtio-console port and the single writer that owns its write side.
//!
//! The port is the `/dev/vport*p*` whose `/sys/class/virtio-ports/<dev>/name` is `agent` (there
//! is no udev in the guest). While no host is connected, `poll` reports `POLLHUP` and reads
//! return 0; agentd waits for a host before it announces itself with `core.ready`.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use msb_protocol::{DataPayload, Message, Payload, DATA_FRAME_PREFIX_MAX};

/// Bytes of frames waiting for the writer at most; a sender blocks beyond (backpressure on the
/// processes whose output it carries). A frame always fits into an empty queue.
const WRITE_QUEUE_BYTES: usize = 2 * 1024 * 1024;

/// Data bytes a [`DataBuf`] holds: stdout and stderr are read in chunks of up to this size.
pub const DATA_CHUNK: usize = 256 * 1024;

/// Idle [`DataBuf`]s kept for reuse: a recycled buffer has its pages already mapped (a fresh one
/// costs a page fault per 4 KiB on first use, which under TCG costs more than the copy it saves).
const POOL_KEEP: usize = 4;

/// Finds the agent port's device node.
pub fn find() -> io::Result<PathBuf> {
    for e in fs::read_dir("/sys/class/virtio-ports")?.flatten() {
        if fs::read_to_string(e.path().join("name"))
            .map(|n| n.trim() == msb_protocol::AGENT_PORT_NAME)
            .unwrap_or(false)
        {
            return Ok(PathBuf::from("/dev").join(e.file_name()));
        }
    }
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        "no virtio-console port named 'agent' in /sys/class/virtio-ports",
    ))
}

/// Opens the port for reading and writing.
pub fn open(path: &PathBuf) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
}

/// Blocks until a host is connected to the port.
pub fn wait_for_host(port: &File) {
    use nix::poll::{poll, PollFd, PollFlags};
    loop {
        let mut pfd = [PollFd::new(port.as_fd(), PollFlags::POLLOUT)];
        let ready = matches!(poll(&mut pfd, 100u16), Ok(n) if n > 0);
        if ready
            && pfd[0]
                .revents()
                .is_some_and(|r| !r.contains(PollFlags::POLLHUP))
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Sends frames to the writer thread: the port's one writer, so frames never interleave. Cheap to
/// clone; the writer ends when the last clone is dropped.
#[derive(Debug)]
pub struct Out {
    queue: Arc<Queue>,
}

/// A buffer for one data frame (`core.exec.stdout` or `stderr`): the data is read straight into
/// [`DataBuf::space`], behind room for the frame's prefix, and the frame leaves from the same
/// memory ([`Out::send_data`]).
#[derive(Debug)]
pub struct DataBuf {
    /// Always `DATA_FRAME_PREFIX_MAX + DATA_CHUNK` long (zeroed once, when allocated).
    buf: Vec<u8>,
}

impl DataBuf {
    /// Where the data goes.
    pub fn space(&mut self) -> &mut [u8] {
        &mut self.buf[DATA_FRAME_PREFIX_MAX..]
    }
}

/// One frame in the queue: `buf[start..end]`.
#[derive(Debug)]
struct Queued {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// A [`DataBuf`]'s memory, returned to the pool once written.
    pooled: bool,
}

impl Queued {
    fn bytes(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }
}

#[derive(Debug, Default)]
struct Queue {
    state: Mutex<State>,
    /// Signalled when a frame is queued or the last sender left.
    ready: Condvar,
    /// Signalled when the writer took frames out.
    room: Condvar,
}

#[derive(Debug, Default)]
struct State {
    frames: VecDeque<Queued>,
    /// Bytes of `frames` and of the batch the writer is writing.
    bytes: usize,
    /// Live [`Out`] clones.
    senders: usize,
    /// Idle data buffers.
    pool: Vec<Vec<u8>>,
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a frame once there is room; never refuses one into an empty queue.
    fn push(&self, frame: Queued) {
        let len = frame.end - frame.start;
        let mut state = self.lock();
        while state.bytes > 0 && state.bytes + len > WRITE_QUEUE_BYTES {
            state = self.room.wait(state).unwrap_or_else(|e| e.into_inner());
        }
        state.bytes += len;
        state.frames.push_back(frame);
        self.ready.notify_one();
    }
}

impl Clone for Out {
    fn clone(&self) -> Self {
        self.queue.lock().senders += 1;
        Out {
            queue: self.queue.clone(),
        }
    }
}

impl Drop for Out {
    fn drop(&mut self) {
        self.queue.lock().senders -= 1;
        self.queue.ready.notify_one();
    }
}

impl Out {
    /// Starts the writer thread on `port`.
    pub fn start(port: File) -> io::Result<Out> {
        let queue = Arc::new(Queue::default());
        queue.lock().senders = 1;
        let q = queue.clone();
        std::thread::Builder::new()
            .name("writer".into())
            .stack_size(128 * 1024)
            .spawn(move || writer(port, &q))?;
        Ok(Out { queue })
    }

    /// Queues a typed message; blocks while the queue is full.
    pub fn send<P: Payload>(&self, id: u32, payload: &P) {
        let msg = match Message::new(id, payload) {
            Ok(msg) => msg,
            Err(e) => return tracing::error!("cannot encode {}: {e}", P::TYPE),
        };
        let buf = match msg.to_frame().to_bytes() {
            Ok(bytes) => bytes.to_vec(),
            Err(e) => return tracing::error!("cannot frame {}: {e}", P::TYPE),
        };
        let end = buf.len();
        self.queue.push(Queued {
            buf,
            start: 0,
            end,
            pooled: false,
        });
    }

    /// A buffer for a data frame, from the pool if one is idle.
    pub fn data_buf(&self) -> DataBuf {
        let recycled = self.queue.lock().pool.pop();
        DataBuf {
            buf: recycled.unwrap_or_else(|| vec![0u8; DATA_FRAME_PREFIX_MAX + DATA_CHUNK]),
        }
    }

    /// Queues the frame of `P` on `id` whose data are the first `n` bytes of `buf`'s space;
    /// blocks while the queue is full. `n` is at most [`DATA_CHUNK`].
    pub fn send_data<P: DataPayload>(&self, id: u32, mut buf: DataBuf, n: usize) {
        let n = n.min(DATA_CHUNK);
        let prefix = match msb_protocol::data_frame_prefix::<P>(id, n) {
            Ok(p) => p,
            // DATA_CHUNK is far below the frame bound: not reached.
            Err(e) => return tracing::error!("cannot frame {}: {e}", P::TYPE),
        };
        let prefix = prefix.as_slice();
        let start = DATA_FRAME_PREFIX_MAX - prefix.len();
        buf.buf[start..DATA_FRAME_PREFIX_MAX].copy_from_slice(prefix);
        self.queue.push(Queued {
            buf: buf.buf,
            start,
            end: DATA_FRAME_PREFIX_MAX + n,
            pooled: true,
        });
    }
}

/// Frames already queued (several sessions streaming, or the host reading slowly) are written
/// together: small ones are copied into one batch of up to this many bytes per `write`, since
/// each write to the port is a virtqueue kick and a VM exit, which costs the guest more than the
/// copy. Larger frames are written from their own memory.
const COALESCE: usize = 256 * 1024;

/// A frame at least this big is written on its own (the console driver takes at most 32 KiB per
/// write anyway).
const WRITE_ALONE: usize = 32 * 1024;

fn writer(mut port: File, queue: &Queue) {
    let mut batch = Vec::with_capacity(COALESCE);
    let mut taken = Vec::new();
    loop {
        {
            let mut state = queue.lock();
            while state.frames.is_empty() {
                if state.senders == 0 {
                    return;
                }
                state = queue.ready.wait(state).unwrap_or_else(|e| e.into_inner());
            }
            taken.extend(state.frames.drain(..));
        }
        let mut written = 0;
        for frame in &taken {
            let bytes = frame.bytes();
            written += bytes.len();
            if bytes.len() >= WRITE_ALONE || batch.len() + bytes.len() > COALESCE {
                write(&mut port, &batch);
                batch.clear();
            }
            if bytes.len() >= WRITE_ALONE {
                write(&mut port, bytes);
            } else {
                batch.extend_from_slice(bytes);
            }
        }
        write(&mut port, &batch);
        batch.clear();
        let mut state = queue.lock();
        state.bytes -= written;
        for frame in taken.drain(..) {
            if frame.pooled && state.pool.len() < POOL_KEEP {
                state.pool.push(frame.buf);
            }
        }
        queue.room.notify_all();
    }
}

fn write(port: &mut File, bytes: &[u8]) {
    if bytes.is_empty() {
        return;
    }
    if let Err(e) = port.write_all(bytes) {
        // The host went away; the frames are lost, as the sessions' state on the host is.
        tracing::debug!("agent port write failed: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use msb_protocol::types::ExecStdout;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A host that stops reading holds back the senders once [`WRITE_QUEUE_BYTES`] are queued:
    /// the guest's memory for frames stays bounded, and nothing is lost once the host reads.
    #[test]
    fn a_host_that_does_not_read_holds_back_the_senders() {
        let (r, w) = crate::sys::pipe().unwrap();
        let (mut port_r, port_w) = (File::from(r), File::from(w));
        let out = Out::start(port_w).unwrap();
        let sent = Arc::new(AtomicUsize::new(0));
        const FRAMES: usize = 64;
        let sender = {
            let (out, sent) = (out.clone(), sent.clone());
            std::thread::spawn(move || {
                for i in 0..FRAMES {
                    let mut buf = out.data_buf();
                    buf.space()[..DATA_CHUNK].fill(u8::try_from(i).unwrap());
                    out.send_data::<ExecStdout>(1, buf, DATA_CHUNK);
                    sent.fetch_add(1, Ordering::SeqCst);
                }
            })
        };
        std::thread::sleep(Duration::from_millis(300));
        // Queued, plus the frame the writer is writing into the (64 KiB) port.
        let held = sent.load(Ordering::SeqCst);
        assert!(
            held <= WRITE_QUEUE_BYTES / DATA_CHUNK + 2,
            "{held} frames of {DATA_CHUNK} bytes went into the queue"
        );
        for i in 0..FRAMES {
            let frame = msb_protocol::read_frame(&mut port_r).unwrap().unwrap();
            let data = Message::from_frame(&frame)
                .unwrap()
                .decode::<ExecStdout>()
                .unwrap()
                .data;
            assert_eq!(data.len(), DATA_CHUNK);
            assert!(data.iter().all(|&b| usize::from(b) == i), "frame {i}");
        }
        sender.join().unwrap();
        assert!(out.queue.lock().pool.len() <= POOL_KEEP);
    }
}
