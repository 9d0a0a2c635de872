//! `core.fs.*` writes: files the host puts into a container before it starts (the CRI's
//! `/etc/hosts`, `/etc/hostname`, `/etc/resolv.conf`, whose host bind mounts the guest cannot
//! see).
//!
//! Paths are resolved inside the container's root ([`crate::inroot`]), so a symlink in the image
//! (`/etc/hosts -> /proc/...`, `../../..`) never reaches the VM's own files. Missing parent
//! directories are created one component at a time, each `mkdirat` relative to an already
//! resolved directory. The file itself must be a regular file or missing: a symlink as the last
//! component is refused rather than followed, and a FIFO or device is refused without blocking
//! (opened `O_NONBLOCK`, checked with `fstat` before anything is truncated or written).

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Component, Path};

use nix::fcntl::OFlag;
use nix::sys::stat::Mode;

use crate::inroot::{self, ReadError};
use crate::sys;

/// Opens `path` (absolute, inside `root`) for writing, truncated, created with `mode` if new;
/// creates missing parent directories (0755). Refuses a last component that is not a regular
/// file (a symlink, FIFO, device, directory, socket).
pub fn create_in_root(root: &Path, path: &str, mode: u32) -> io::Result<File> {
    let rel = Path::new(path);
    if !rel.is_absolute() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{path:?} is not an absolute path"),
        ));
    }
    let names: Vec<&std::ffi::OsStr> = rel
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n),
            _ => None,
        })
        .collect();
    let Some((file, parents)) = names.split_last() else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{path:?} names no file"),
        ));
    };
    let root_fd = sys::open_ro(root)?;
    // Each prefix is resolved from the root, so `..` and absolute symlinks mean the root's.
    let mut prefix = std::path::PathBuf::new();
    let mut parent: Option<OwnedFd> = None;
    for name in parents {
        prefix.push(name);
        let p = sys::cpath(&prefix)?;
        let flags = OFlag::O_PATH | OFlag::O_DIRECTORY;
        let dir = match inroot::open(root_fd.as_raw_fd(), &p, flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let at = parent.as_ref().unwrap_or(&root_fd).as_raw_fd();
                let c = sys::cpath(name)?;
                nix::sys::stat::mkdirat(Some(at), c.as_c_str(), Mode::from_bits_retain(0o755))?;
                inroot::open(root_fd.as_raw_fd(), &p, flags, Mode::empty())?
            }
            Err(e) => return Err(e),
        };
        parent = Some(dir);
    }
    prefix.push(file);
    let target = sys::cpath(&prefix)?;
    let not_regular = |e: ReadError| match e {
        ReadError::Io(e) => e,
        other => io::Error::new(io::ErrorKind::InvalidInput, other.to_string()),
    };
    // What is there already, looked at without opening it for writing (opening a device may
    // act on it) nor following a final symlink.
    match inroot::open(
        root_fd.as_raw_fd(),
        &target,
        OFlag::O_PATH | OFlag::O_NOFOLLOW,
        Mode::empty(),
    ) {
        Ok(existing) => inroot::check_regular(&existing).map_err(not_regular)?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    // Checked again on the descriptor written to: the path may have changed in between.
    let fd = inroot::open(
        root_fd.as_raw_fd(),
        &target,
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_NOCTTY,
        Mode::from_bits_retain(mode & 0o7777),
    )?;
    inroot::check_regular(&fd).map_err(not_regular)?;
    let file = File::from(fd);
    file.set_len(0)?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    use std::time::{Duration, Instant};

    #[test]
    fn writes_stay_inside_the_root_and_create_parents() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        // An image's hostile directory symlink pointing out of its root: `..` stops at the root.
        let escape = format!("../../../../../../..{}", outside.path().display());
        std::os::unix::fs::symlink(&escape, root.path().join("etc")).unwrap();
        let inside = root.path().join(outside.path().strip_prefix("/").unwrap());
        std::fs::create_dir_all(&inside).unwrap();
        let mut f = create_in_root(root.path(), "/etc/hosts", 0o644).unwrap();
        f.write_all(b"127.0.0.1 localhost\n").unwrap();
        assert!(!outside.path().join("hosts").exists(), "escaped the root");
        assert_eq!(
            std::fs::read(inside.join("hosts")).unwrap(),
            b"127.0.0.1 localhost\n"
        );
        // An existing file is truncated.
        let mut f = create_in_root(root.path(), "/etc/hosts", 0o644).unwrap();
        f.write_all(b"::1\n").unwrap();
        assert_eq!(std::fs::read(inside.join("hosts")).unwrap(), b"::1\n");

        create_in_root(root.path(), "/new/dir/file", 0o600).unwrap();
        assert!(root.path().join("new/dir/file").is_file());
        assert!(create_in_root(root.path(), "relative", 0o600).is_err());
        assert!(create_in_root(root.path(), "/", 0o600).is_err());
    }

    #[test]
    fn only_regular_files_are_written() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("etc")).unwrap();
        std::fs::write(root.path().join("etc/real"), b"kept").unwrap();
        // A last-component symlink is refused, even one that stays inside the root.
        std::os::unix::fs::symlink("/etc/real", root.path().join("etc/hosts")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("x"), root.path().join("etc/out")).unwrap();
        for p in ["/etc/hosts", "/etc/out"] {
            let e = create_in_root(root.path(), p, 0o644).unwrap_err();
            assert_eq!(e.to_string(), "not a regular file (symbolic link)", "{p}");
        }
        assert_eq!(
            std::fs::read(root.path().join("etc/real")).unwrap(),
            b"kept"
        );
        assert!(!outside.path().join("x").exists());
        // A FIFO (with or without a reader) is refused at once, not waited on.
        let fifo = root.path().join("etc/fifo");
        nix::unistd::mkfifo(&fifo, Mode::from_bits_retain(0o644)).unwrap();
        let started = Instant::now();
        let e = create_in_root(root.path(), "/etc/fifo", 0o644).unwrap_err();
        assert_eq!(e.to_string(), "not a regular file (FIFO)");
        let _reader = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&fifo)
            .unwrap();
        let e = create_in_root(root.path(), "/etc/fifo", 0o644).unwrap_err();
        assert_eq!(e.to_string(), "not a regular file (FIFO)");
        assert!(started.elapsed() < Duration::from_secs(5));
        let e = create_in_root(root.path(), "/etc", 0o644).unwrap_err();
        assert_eq!(e.to_string(), "not a regular file (directory)");
    }
}
