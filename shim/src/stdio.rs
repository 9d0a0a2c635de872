//! The FIFOs containerd gives a process, copied to and from the guest.
//!
//! stdout and stderr are opened read-write (`O_RDWR` never blocks on a FIFO and keeps it open
//! across `ctr task attach` re-connections; a slow or absent reader only blocks that copy, never
//! the task service). stdin is opened read-only and non-blocking, as containerd's own shims do:
//! when every writer has closed it, the process gets EOF. `CloseIO` ends it earlier, but only
//! after the bytes the FIFO already holds: `ctr` sends CloseIO as soon as its own input ended,
//! when its last writes may still sit in the FIFO. In terminal mode the guest sends one stream
//! (stdout) and stderr stays unused.

use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::error::ShimError;
use crate::pod_vm::Output;

/// How long an exit waits for the process's output to drain before it is reported anyway.
pub const OUTPUT_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

fn io_err(what: &str, path: &str) -> impl FnOnce(std::io::Error) -> ShimError {
    let context = format!("open {what} FIFO {path}");
    move |source| ShimError::Io { context, source }
}

/// Opens an output FIFO for writing; an empty path means none.
pub fn open_output(what: &str, path: &str) -> Result<Option<pipe::Sender>, ShimError> {
    if path.is_empty() {
        return Ok(None);
    }
    pipe::OpenOptions::new()
        .read_write(true)
        .open_sender(Path::new(path))
        .map(Some)
        .map_err(io_err(what, path))
}

/// Opens the stdin FIFO for reading; an empty path means none.
pub fn open_input(path: &str) -> Result<Option<pipe::Receiver>, ShimError> {
    if path.is_empty() {
        return Ok(None);
    }
    pipe::OpenOptions::new()
        .open_receiver(Path::new(path))
        .map(Some)
        .map_err(io_err("stdin", path))
}

/// The running copy of a process's stdin FIFO; dropping it stops the copy at once (the process
/// is gone).
#[derive(Debug)]
pub struct StdinCopy {
    task: JoinHandle<()>,
    finish: Option<oneshot::Sender<()>>,
}

impl StdinCopy {
    /// `CloseIO`: the copy takes what the FIFO holds now, then sends EOF.
    pub fn finish(&mut self) {
        if let Some(finish) = self.finish.take() {
            let _ = finish.send(());
        }
    }
}

impl Drop for StdinCopy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Copies the stdin FIFO into the process until EOF or [`StdinCopy::finish`], then sends the EOF
/// marker (an empty chunk). Every chunk waits for room in `tx` (nothing is dropped).
pub fn spawn_stdin(mut fifo: pipe::Receiver, tx: mpsc::Sender<Vec<u8>>) -> StdinCopy {
    let (finish, mut finishing) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            let n = tokio::select! {
                // A pipe's read is cancel-safe: a read lost to `finishing` took no bytes.
                read = fifo.read(&mut buf) => match read {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) => {
                        tracing::debug!(error = %e, "read stdin FIFO");
                        break;
                    }
                },
                // CloseIO: what the FIFO holds now is the rest of the input.
                _ = &mut finishing => {
                    loop {
                        let n = read_now(&fifo, &mut buf);
                        if n == 0 {
                            break;
                        }
                        if tx.send(buf[..n].to_vec()).await.is_err() {
                            return;
                        }
                    }
                    break;
                }
            };
            if tx.send(buf[..n].to_vec()).await.is_err() {
                return;
            }
        }
        let _ = tx.send(Vec::new()).await;
    });
    StdinCopy {
        task,
        finish: Some(finish),
    }
}

/// Reads what the FIFO holds right now (0: nothing, or no writer). Straight from the descriptor:
/// tokio's `try_read` answers from its readiness cache, which may not have seen bytes that just
/// arrived (or any, before the first poll), and would end stdin short.
fn read_now(fifo: &pipe::Receiver, buf: &mut [u8]) -> usize {
    // The FIFO is non-blocking: an empty one is EAGAIN, an error like any other here.
    nix::unistd::read(fifo.as_raw_fd(), buf).unwrap_or(0)
}

/// Copies the process's output into the FIFOs until the output ends. Output for an absent FIFO
/// is dropped; a FIFO whose reader broke is dropped and the copy goes on for the other.
pub async fn copy_output(
    mut output: mpsc::Receiver<Output>,
    mut stdout: Option<pipe::Sender>,
    mut stderr: Option<pipe::Sender>,
) {
    while let Some(chunk) = output.recv().await {
        let (slot, data, name) = match chunk {
            Output::Stdout(d) => (&mut stdout, d, "stdout"),
            Output::Stderr(d) => (&mut stderr, d, "stderr"),
        };
        if let Some(fifo) = slot {
            if let Err(e) = fifo.write_all(&data).await {
                tracing::debug!(stream = name, error = %e, "write FIFO; dropping it");
                *slot = None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mkfifo(path: &Path) {
        nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    }

    #[tokio::test]
    async fn output_reaches_the_fifos() {
        let dir = tempfile::tempdir().unwrap();
        let (out_p, err_p) = (dir.path().join("out"), dir.path().join("err"));
        mkfifo(&out_p);
        mkfifo(&err_p);
        let mut out_r = pipe::OpenOptions::new().open_receiver(&out_p).unwrap();
        let mut err_r = pipe::OpenOptions::new().open_receiver(&err_p).unwrap();
        let out_w = open_output("stdout", out_p.to_str().unwrap()).unwrap();
        let err_w = open_output("stderr", err_p.to_str().unwrap()).unwrap();
        let (tx, rx) = mpsc::channel(4);
        let task = tokio::spawn(copy_output(rx, out_w, err_w));
        tx.send(Output::Stdout(b"hello ".to_vec())).await.unwrap();
        tx.send(Output::Stderr(b"oops".to_vec())).await.unwrap();
        tx.send(Output::Stdout(b"world".to_vec())).await.unwrap();
        drop(tx);
        task.await.unwrap();
        let mut buf = [0u8; 11];
        out_r.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"hello world");
        let mut buf = [0u8; 4];
        err_r.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"oops");
    }

    /// A stdin FIFO in `dir` with containerd's writer (opened before the shim's reader, as
    /// containerd does) and the shim's reader.
    fn stdin_fifo(dir: &Path) -> (std::fs::File, pipe::Receiver) {
        let p = dir.join("in");
        mkfifo(&p);
        let writer = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&p)
            .unwrap();
        (writer, open_input(p.to_str().unwrap()).unwrap().unwrap())
    }

    #[tokio::test]
    async fn stdin_is_copied_then_eof() {
        let dir = tempfile::tempdir().unwrap();
        let (writer, fifo) = stdin_fifo(dir.path());
        let (tx, mut rx) = mpsc::channel(4);
        let _copy = spawn_stdin(fifo, tx);
        std::io::Write::write_all(&mut &writer, b"abc").unwrap();
        assert_eq!(rx.recv().await.unwrap(), b"abc");
        drop(writer);
        assert_eq!(rx.recv().await.unwrap(), Vec::<u8>::new());
        assert_eq!(
            rx.recv().await,
            None,
            "the copy ended and let go of the process"
        );
    }

    #[tokio::test]
    async fn close_io_ends_stdin_after_what_the_fifo_holds() {
        let dir = tempfile::tempdir().unwrap();
        // containerd's writer stays open: only CloseIO can end stdin.
        let (writer, fifo) = stdin_fifo(dir.path());
        // The process takes nothing yet: one chunk fits in its queue, the copy waits with the
        // next, and the last writes stay in the FIFO, as when ctr's final writes meet CloseIO.
        let (tx, mut rx) = mpsc::channel(1);
        let mut copy = spawn_stdin(fifo, tx);
        let mut sent = Vec::new();
        for (byte, len) in [(b'a', 8 << 10), (b'b', 8 << 10), (b'c', 60 << 10)] {
            let part = vec![byte; len];
            std::io::Write::write_all(&mut &writer, &part).unwrap();
            sent.extend(part);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        copy.finish();
        let mut got = Vec::new();
        loop {
            let chunk = tokio::time::timeout(Duration::from_secs(5), rx.recv())
                .await
                .expect("EOF arrives")
                .expect("EOF before the copy ends");
            if chunk.is_empty() {
                break;
            }
            got.extend(chunk);
        }
        assert_eq!(got.len(), sent.len());
        assert!(got == sent, "every byte written before CloseIO, in order");
    }

    #[test]
    fn missing_fifo_names_the_path() {
        let err = open_output("stdout", "/nonexistent/fifo").unwrap_err();
        assert_eq!(err.to_string(), "open stdout FIFO /nonexistent/fifo");
        assert!(open_output("stdout", "").unwrap().is_none());
    }
}
