//! The FIFOs containerd gives a process, copied to and from the guest.
//!
//! stdout and stderr are opened read-write (`O_RDWR` never blocks on a FIFO and keeps it open
//! across `ctr task attach` re-connections; a slow or absent reader only blocks that copy, never
//! the task service). stdin is opened read-only and non-blocking, as containerd's own shims do:
//! when every writer has closed it, the process gets EOF. `CloseIO` ends it earlier. In terminal
//! mode the guest sends one stream (stdout) and stderr stays unused.

use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::error::ShimError;
use crate::sandbox::Output;

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

/// Copies the stdin FIFO into the process until EOF, then sends the EOF marker (an empty chunk).
pub fn spawn_stdin(mut fifo: pipe::Receiver, tx: mpsc::Sender<Vec<u8>>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match fifo.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => {
                    if tx.send(buf[..n].to_vec()).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "read stdin FIFO");
                    break;
                }
            }
        }
        let _ = tx.send(Vec::new()).await;
    })
}

/// Copies the process's output into the FIFOs until the output ends. Output for an absent FIFO
/// is dropped; a FIFO whose reader broke is dropped and the copy goes on for the other.
pub fn spawn_output(
    mut output: mpsc::Receiver<Output>,
    mut stdout: Option<pipe::Sender>,
    mut stderr: Option<pipe::Sender>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
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
    })
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
        let task = spawn_output(rx, out_w, err_w);
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

    #[tokio::test]
    async fn stdin_is_copied_then_eof() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("in");
        mkfifo(&p);
        // The writer (containerd's side) exists before the shim opens the FIFO.
        let writer = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&p)
            .unwrap();
        let fifo = open_input(p.to_str().unwrap()).unwrap().unwrap();
        let (tx, mut rx) = mpsc::channel(4);
        let task = spawn_stdin(fifo, tx);
        std::io::Write::write_all(&mut &writer, b"abc").unwrap();
        assert_eq!(rx.recv().await.unwrap(), b"abc");
        drop(writer);
        assert_eq!(rx.recv().await.unwrap(), Vec::<u8>::new());
        task.await.unwrap();
    }

    #[test]
    fn missing_fifo_names_the_path() {
        let err = open_output("stdout", "/nonexistent/fifo").unwrap_err();
        assert_eq!(err.to_string(), "open stdout FIFO /nonexistent/fifo");
        assert!(open_output("stdout", "").unwrap().is_none());
    }
}
