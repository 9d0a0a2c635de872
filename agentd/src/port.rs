//! The `agent` virtio-console port and the single writer that owns its write side.
//!
//! The port is the `/dev/vport*p*` whose `/sys/class/virtio-ports/<dev>/name` is `agent` (there
//! is no udev in the guest). While no host is connected, `poll` reports `POLLHUP` and reads
//! return 0; agentd waits for a host before it announces itself with `core.ready`.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::time::Duration;

use msb_protocol::{Message, Payload};

/// Frames waiting for the writer at most; senders block beyond (backpressure on the processes
/// whose output they carry).
const WRITE_QUEUE: usize = 64;

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

/// Sends encoded frames to the writer thread.
#[derive(Debug, Clone)]
pub struct Out {
    tx: SyncSender<Vec<u8>>,
}

impl Out {
    /// Starts the writer thread on `port`.
    pub fn start(port: File) -> io::Result<Out> {
        let (tx, rx) = sync_channel(WRITE_QUEUE);
        std::thread::Builder::new()
            .name("writer".into())
            .stack_size(128 * 1024)
            .spawn(move || writer(port, rx))?;
        Ok(Out { tx })
    }

    /// Queues a typed message; blocks while the queue is full.
    pub fn send<P: Payload>(&self, id: u32, payload: &P) {
        match Message::new(id, payload) {
            Ok(msg) => match msg.to_frame().to_bytes() {
                Ok(bytes) => {
                    let _ = self.tx.send(bytes.to_vec());
                }
                Err(e) => tracing::error!("cannot frame {}: {e}", P::TYPE),
            },
            Err(e) => tracing::error!("cannot encode {}: {e}", P::TYPE),
        }
    }
}

/// Frames already queued (several sessions streaming, or the host reading slowly) are written
/// together, up to this many bytes per `write`: each write to the port is a virtqueue kick and a
/// VM exit, which costs the guest more than the copy.
const COALESCE: usize = 256 * 1024;

fn writer(mut port: File, rx: Receiver<Vec<u8>>) {
    let mut batch = Vec::with_capacity(COALESCE);
    while let Ok(frame) = rx.recv() {
        // A frame alone (the usual case) is written as it is, without a copy into the batch.
        let out = match rx.try_recv() {
            Err(_) => &frame,
            Ok(next) => {
                batch.clear();
                batch.extend_from_slice(&frame);
                batch.extend_from_slice(&next);
                while batch.len() < COALESCE {
                    match rx.try_recv() {
                        Ok(next) => batch.extend_from_slice(&next),
                        Err(_) => break,
                    }
                }
                &batch
            }
        };
        if let Err(e) = port.write_all(out) {
            // The host went away; the frames are lost, as the sessions' state on the host is.
            tracing::debug!("agent port write failed: {e}");
        }
    }
}
