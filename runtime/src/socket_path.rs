//! Unix socket paths of any length.
//!
//! `sun_path` holds at most 107 bytes. Sandbox directories are named after container ids (64 hex
//! characters from CRI, Docker and nerdctl) under configurable state directories and namespaces,
//! so the sockets inside them are often longer than that:
//! `/var/lib/microsandbox/shim/k8s.io/sandboxes/<64 hex>/vm/agent.sock` is 122 bytes. A longer
//! path is reached through its parent directory instead: an `O_PATH` descriptor of the directory
//! and `/proc/self/fd/<fd>/<name>`, which the kernel resolves to the same file whatever the
//! directory's own path. Programs the runtime starts (QEMU, virtiofsd) get socket names relative
//! to their working directory, the sandbox directory, for the same reason.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The longest path `sun_path` takes (108 bytes with the terminating NUL).
pub const SUN_PATH_MAX: usize = 107;

/// An address for `bind` or `connect` that names `path` in at most [`SUN_PATH_MAX`] bytes:
/// the path itself when it is short enough, else a `/proc/self/fd` alias through a descriptor
/// of its directory, held open as long as this value lives.
#[derive(Debug)]
pub struct SocketPath {
    /// Keeps the alias valid; `None` when the path is used as it is.
    _dir: Option<OwnedFd>,
    addr: PathBuf,
}

impl SocketPath {
    /// The short address of `path`. Fails only when `path` is long and its directory cannot be
    /// opened, or its file name alone is too long for any alias.
    pub fn new(path: &Path) -> io::Result<SocketPath> {
        if path.as_os_str().len() <= SUN_PATH_MAX {
            return Ok(SocketPath {
                _dir: None,
                addr: path.to_path_buf(),
            });
        }
        let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("socket path {} has no file name", path.display()),
            ));
        };
        let dir: OwnedFd = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC)
            .open(parent)?
            .into();
        let addr = Path::new(&format!("/proc/self/fd/{}", dir.as_raw_fd())).join(name);
        if addr.as_os_str().len() > SUN_PATH_MAX {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "socket name {} is longer than a unix socket address can hold",
                    name.to_string_lossy()
                ),
            ));
        }
        Ok(SocketPath {
            _dir: Some(dir),
            addr,
        })
    }

    /// What to pass to `bind` or `connect`.
    pub fn addr(&self) -> &Path {
        &self.addr
    }
}

/// Connects to the socket at `path`, whatever its length.
pub async fn connect(path: &Path) -> io::Result<tokio::net::UnixStream> {
    let p = SocketPath::new(path)?;
    tokio::net::UnixStream::connect(p.addr()).await
}

/// Binds a listening socket at `path`, whatever its length (inside a tokio runtime).
pub fn bind(path: &Path) -> io::Result<tokio::net::UnixListener> {
    let p = SocketPath::new(path)?;
    tokio::net::UnixListener::bind(p.addr())
}

/// Binds a blocking listening socket at `path`, whatever its length.
pub fn bind_std(path: &Path) -> io::Result<std::os::unix::net::UnixListener> {
    let p = SocketPath::new(path)?;
    std::os::unix::net::UnixListener::bind(p.addr())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory whose socket paths are longer than `sun_path`.
    fn long_dir(base: &Path) -> PathBuf {
        let dir = base
            .join("k8s.io/sandboxes")
            .join("0123456789abcdef".repeat(4))
            .join("vm");
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[tokio::test]
    async fn binds_and_connects_beyond_sun_path() {
        let tmp = tempfile::tempdir().unwrap();
        let path = long_dir(tmp.path()).join("agent.sock");
        assert!(path.as_os_str().len() > SUN_PATH_MAX, "{}", path.display());
        // The plain call fails, which is what this module is for.
        let plain = tokio::net::UnixListener::bind(&path).unwrap_err();
        assert_eq!(plain.kind(), io::ErrorKind::InvalidInput, "{plain}");

        let listener = bind(&path).unwrap();
        assert!(path.exists(), "the socket lives at its real path");
        let (accepted, connected) = tokio::join!(listener.accept(), connect(&path));
        accepted.unwrap();
        connected.unwrap();
        std::thread::spawn(move || bind_std(&path).unwrap_err())
            .join()
            .map(|e| assert_eq!(e.kind(), io::ErrorKind::AddrInUse))
            .unwrap();
    }

    #[test]
    fn short_paths_are_used_as_they_are() {
        let p = SocketPath::new(Path::new("/run/x/agent.sock")).unwrap();
        assert_eq!(p.addr(), Path::new("/run/x/agent.sock"));
    }

    #[test]
    fn errors_name_what_is_wrong() {
        let tmp = tempfile::tempdir().unwrap();
        let long_name = tmp.path().join("n".repeat(120));
        let e = SocketPath::new(&long_name).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "socket name {} is longer than a unix socket address can hold",
                "n".repeat(120)
            )
        );
        let missing = Path::new("/nonexistent")
            .join("d".repeat(120))
            .join("a.sock");
        let e = SocketPath::new(&missing).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
    }
}
