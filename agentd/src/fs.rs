//! `core.fs.*` writes: files the host puts into a container before it starts (the CRI's
//! `/etc/hosts`, `/etc/hostname`, `/etc/resolv.conf`, whose host bind mounts the guest cannot
//! see).
//!
//! Paths are resolved with `openat2(RESOLVE_IN_ROOT)` against the container's root, so a symlink
//! in the image (`/etc/hosts -> /proc/...`, `../../..`) resolves inside that root and never
//! reaches the VM's own files. Missing parent directories are created one component at a time,
//! each `mkdirat` relative to an already resolved directory.

use std::ffi::CStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Component, Path};

use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::Mode;

use crate::sys;

fn openat2(dir: RawFd, path: &CStr, flags: OFlag, mode: Mode) -> io::Result<OwnedFd> {
    let how = OpenHow::new()
        .flags(flags | OFlag::O_CLOEXEC)
        .mode(mode)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    let fd = nix::fcntl::openat2(dir, path, how)?;
    // SAFETY: openat2 succeeded and returned a fresh descriptor, owned by nobody else (nix 0.29
    // hands it out as a `RawFd`).
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Opens `path` (absolute, inside `root`) for writing, truncated, created with `mode` if new;
/// creates missing parent directories (0755).
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
        let dir = match openat2(root_fd.as_raw_fd(), &p, flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let at = parent.as_ref().unwrap_or(&root_fd).as_raw_fd();
                let c = sys::cpath(name)?;
                nix::sys::stat::mkdirat(Some(at), c.as_c_str(), Mode::from_bits_retain(0o755))?;
                openat2(root_fd.as_raw_fd(), &p, flags, Mode::empty())?
            }
            Err(e) => return Err(e),
        };
        parent = Some(dir);
    }
    prefix.push(file);
    let fd = openat2(
        root_fd.as_raw_fd(),
        &sys::cpath(&prefix)?,
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_TRUNC,
        Mode::from_bits_retain(mode & 0o7777),
    )?;
    Ok(File::from(fd))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn writes_stay_inside_the_root_and_create_parents() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("etc")).unwrap();
        // An image's hostile symlink pointing out of its root: `..` stops at the root.
        let escape = format!("../../../../../../..{}/hosts", outside.path().display());
        std::os::unix::fs::symlink(&escape, root.path().join("etc/hosts")).unwrap();
        std::fs::create_dir_all(root.path().join(outside.path().strip_prefix("/").unwrap()))
            .unwrap();
        let mut f = create_in_root(root.path(), "/etc/hosts", 0o644).unwrap();
        f.write_all(b"127.0.0.1 localhost\n").unwrap();
        assert!(!outside.path().join("hosts").exists(), "escaped the root");
        let inside = root
            .path()
            .join(outside.path().strip_prefix("/").unwrap())
            .join("hosts");
        assert_eq!(std::fs::read(inside).unwrap(), b"127.0.0.1 localhost\n");

        create_in_root(root.path(), "/new/dir/file", 0o600).unwrap();
        assert!(root.path().join("new/dir/file").is_file());
        assert!(create_in_root(root.path(), "relative", 0o600).is_err());
        assert!(create_in_root(root.path(), "/", 0o600).is_err());
    }
}
