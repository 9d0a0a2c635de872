//! The host side of the `agent` port: the VMM listens on the sandbox's agent socket (as QEMU
//! does with `server=on`), accepts the runtime's one connection, and gives that socket to the
//! virtio-console port. Accepting before entering the VM costs nothing: the runtime connects as
//! soon as the socket exists, and bytes it sends early wait in the socket until the guest reads.

use std::os::fd::AsFd;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Why the agent connection could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// Binding the socket failed.
    #[error("listen on the agent socket {}", path.display())]
    Listen {
        /// The socket path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Waiting for or accepting the connection failed.
    #[error("accept the runtime's connection on the agent socket")]
    Accept(#[source] std::io::Error),
    /// Nobody connected in time (the runtime died or gave up).
    #[error("nobody connected to the agent socket {} within {timeout:?}", path.display())]
    Timeout {
        /// The socket path.
        path: PathBuf,
        /// How long it waited.
        timeout: Duration,
    },
}

/// Listens on `path` (replacing a stale socket left there, never another kind of file),
/// whatever the length of `path`.
pub fn listen(path: &Path) -> Result<UnixListener, AgentError> {
    let err = |source| AgentError::Listen {
        path: path.to_path_buf(),
        source,
    };
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if meta.file_type().is_socket() {
            std::fs::remove_file(path).map_err(err)?;
        }
    }
    msb_runtime::socket_path::bind_std(path).map_err(err)
}

/// Accepts one connection within `timeout`; the listener is closed afterwards (one client).
pub fn accept(
    listener: UnixListener,
    path: &Path,
    timeout: Duration,
) -> Result<UnixStream, AgentError> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let ms = PollTimeout::try_from(timeout.as_millis()).unwrap_or(PollTimeout::MAX);
    loop {
        let mut pfd = [PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
        match poll(&mut pfd, ms) {
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(AgentError::Accept(e.into())),
            Ok(0) => {
                return Err(AgentError::Timeout {
                    path: path.to_path_buf(),
                    timeout,
                })
            }
            _ => break,
        }
    }
    let (stream, _) = listener.accept().map_err(AgentError::Accept)?;
    stream.set_nonblocking(false).map_err(AgentError::Accept)?;
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn accepts_one_client_and_replaces_a_stale_socket() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("agent.sock");
        drop(listen(&path).unwrap()); // leaves a stale socket file behind
        let l = listen(&path).unwrap();
        let mut client = UnixStream::connect(&path).unwrap();
        client.write_all(b"early").unwrap();
        let mut s = accept(l, &path, Duration::from_secs(5)).unwrap();
        let mut buf = [0; 5];
        s.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"early");
    }

    #[test]
    fn gives_up_when_nobody_connects_and_never_removes_other_files() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("agent.sock");
        let l = listen(&path).unwrap();
        let e = accept(l, &path, Duration::from_millis(50)).unwrap_err();
        assert!(matches!(e, AgentError::Timeout { .. }), "{e}");
        let file = d.path().join("file");
        std::fs::write(&file, "keep").unwrap();
        assert!(matches!(listen(&file), Err(AgentError::Listen { .. })));
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep");
    }
}
