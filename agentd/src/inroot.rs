//! Paths inside a container's root, resolved as if that root were `/`.
//!
//! An image is not trusted: its symlinks (`/etc -> /run/msb`, `/data -> /../../run/msb`) must not
//! lead agentd out of the container's root when it creates, reads, writes or mounts something
//! there on the container's behalf. Every such path is resolved by the kernel with
//! `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)` against a descriptor of the root, as runc
//! does (filepath-securejoin over `openat2`): `..` stops at the root, an absolute symlink starts
//! from it, and `/proc/<pid>/fd/*`-style magic links are refused. Linux 5.6 has `openat2`; the
//! guest kernel is newer.
//!
//! Two sides:
//! - agentd's own threads: [`open`], [`read_regular`];
//! - the spawn child, which may only make raw system calls on prepared data (see
//!   [`crate::spawn`]): an [`InRootPath`] prepared by agentd, [`raw_open`] and [`ProcFdPath`]
//!   (a mount's target is the resolved descriptor, named `/proc/self/fd/<n>`, as runc mounts).

use std::ffi::{CStr, CString};
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Component, Path};

use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::Mode;

use crate::sys;

/// `RESOLVE_*` flags of every in-root lookup.
const RESOLVE: u64 = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS;

/// `openat2(root, path, flags | O_CLOEXEC, mode)` resolved inside `root` (`path` may be absolute:
/// it starts from `root`).
pub fn open(root: RawFd, path: &CStr, flags: OFlag, mode: Mode) -> io::Result<OwnedFd> {
    let how = OpenHow::new()
        .flags(flags | OFlag::O_CLOEXEC)
        .mode(mode)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    let fd = nix::fcntl::openat2(root, path, how)?;
    // SAFETY: openat2 succeeded and returned a fresh descriptor, owned by nobody else (nix 0.29
    // hands it out as a `RawFd`).
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Why [`read_regular`] read nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// A FIFO, device, socket or directory: reading it could block agentd or never end.
    #[error("not a regular file ({0})")]
    NotRegular(&'static str),
    /// Larger than the caller's limit.
    #[error("larger than {limit} bytes")]
    TooLarge {
        /// The limit, in bytes.
        limit: u64,
    },
    /// Open, stat or read failed.
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// The content of the regular file `path` inside `root`, at most `limit` bytes; `None` when it
/// does not exist. Opened non-blocking (a FIFO neither blocks the open nor is read), the type
/// checked on the open descriptor.
pub fn read_regular(root: &Path, path: &str, limit: u64) -> Result<Option<Vec<u8>>, ReadError> {
    let root_fd = sys::open_ro(root)?;
    let flags = OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_NOCTTY;
    let fd = match open(
        root_fd.as_raw_fd(),
        &sys::cpath(path)?,
        flags,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    check_regular(&fd)?;
    let mut data = Vec::new();
    std::fs::File::from(fd)
        .take(limit.saturating_add(1))
        .read_to_end(&mut data)?;
    if u64::try_from(data.len()).unwrap_or(u64::MAX) > limit {
        return Err(ReadError::TooLarge { limit });
    }
    Ok(Some(data))
}

/// `Ok` when `fd` is a regular file, else what it is.
pub fn check_regular(fd: &OwnedFd) -> Result<(), ReadError> {
    let st = nix::sys::stat::fstat(fd.as_raw_fd()).map_err(io::Error::from)?;
    match file_kind(st.st_mode) {
        "regular file" => Ok(()),
        other => Err(ReadError::NotRegular(other)),
    }
}

/// What an `st_mode` is, in words.
pub fn file_kind(mode: libc::mode_t) -> &'static str {
    match mode & libc::S_IFMT {
        libc::S_IFREG => "regular file",
        libc::S_IFDIR => "directory",
        libc::S_IFLNK => "symbolic link",
        libc::S_IFIFO => "FIFO",
        libc::S_IFSOCK => "socket",
        libc::S_IFCHR => "character device",
        libc::S_IFBLK => "block device",
        _ => "unknown file type",
    }
}

/// A path inside a container's root, prepared for the spawn child: relative to the root, and
/// split into its parent and last component for the `*at` calls that create it (`mkdirat`,
/// `mknodat`, `symlinkat` never follow a last component that is a symlink; the parent is
/// resolved in-root).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InRootPath {
    /// The whole path, relative to the root (`a/b/c`).
    pub path: CString,
    /// Its parent, relative to the root (`a/b`, `.` for the root itself).
    pub parent: CString,
    /// Its last component (`c`).
    pub name: CString,
}

impl InRootPath {
    /// `path` (absolute, in the container's view) without `.` or `..` and naming something
    /// below the root.
    pub fn new(path: &str) -> io::Result<InRootPath> {
        let invalid = |why: &str| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{path:?} {why} (a path inside the container's root)"),
            )
        };
        if !msb_protocol::types::is_clean_absolute(path) {
            return Err(invalid("is not absolute without '.' or '..'"));
        }
        let names: Vec<&str> = Path::new(path)
            .components()
            .filter_map(|c| match c {
                Component::Normal(n) => n.to_str(),
                _ => None,
            })
            .collect();
        let Some((name, parents)) = names.split_last() else {
            return Err(invalid("names the root itself"));
        };
        let parent = if parents.is_empty() {
            ".".to_owned()
        } else {
            parents.join("/")
        };
        Ok(InRootPath {
            path: sys::cstr(&names.join("/"))?,
            parent: sys::cstr(&parent)?,
            name: sys::cstr(name)?,
        })
    }
}

/// Raw `openat2(root, path, flags | O_CLOEXEC)` resolved inside `root`: the descriptor, or -1
/// with `errno` set. For the spawn child: one system call on the stack.
///
/// # Safety
/// Only the system call; callable between `clone` and `execve`.
pub unsafe fn raw_open(root: RawFd, path: &CStr, flags: libc::c_int) -> libc::c_int {
    /// `struct open_how` of `<linux/openat2.h>` (libc's is `non_exhaustive`).
    #[repr(C)]
    struct OpenHow {
        flags: u64,
        mode: u64,
        resolve: u64,
    }
    let how = OpenHow {
        flags: u64::from((flags | libc::O_CLOEXEC).unsigned_abs()),
        mode: 0,
        resolve: RESOLVE,
    };
    // SAFETY: openat2 reads `path` (NUL-terminated) and `how` (its size passed), both alive.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            root,
            path.as_ptr(),
            std::ptr::addr_of!(how),
            std::mem::size_of::<OpenHow>(),
        )
    };
    libc::c_int::try_from(ret).unwrap_or(-1)
}

/// `/proc/self/fd/<fd>` as a C string on the stack, for the spawn child: `mount(2)` on it acts
/// on what the descriptor resolved to (runc's `procfd` mounts). Only meaningful while `/proc`
/// is the VM's procfs (before `pivot_root`).
#[derive(Debug)]
pub struct ProcFdPath {
    buf: [u8; 32],
}

impl ProcFdPath {
    /// The path of `fd` (non-negative).
    pub fn new(fd: RawFd) -> ProcFdPath {
        const PREFIX: &[u8] = b"/proc/self/fd/";
        let mut buf = [0u8; 32];
        buf[..PREFIX.len()].copy_from_slice(PREFIX);
        let mut digits = [0u8; 10];
        let mut n = fd.unsigned_abs();
        let mut len = 0;
        loop {
            digits[len] = b'0' + u8::try_from(n % 10).unwrap_or(0);
            len += 1;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        for (i, d) in digits[..len].iter().rev().enumerate() {
            buf[PREFIX.len() + i] = *d;
        }
        ProcFdPath { buf }
    }

    /// The NUL-terminated path.
    pub fn as_ptr(&self) -> *const libc::c_char {
        self.buf.as_ptr().cast()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn paths_split_for_the_at_calls() {
        let p = InRootPath::new("/dev/pts").unwrap();
        assert_eq!(
            (p.path.as_c_str(), p.parent.as_c_str(), p.name.as_c_str()),
            (c"dev/pts", c"dev", c"pts")
        );
        let p = InRootPath::new("/data/").unwrap();
        assert_eq!(
            (p.path.as_c_str(), p.parent.as_c_str(), p.name.as_c_str()),
            (c"data", c".", c"data")
        );
        for bad in ["", "/", "relative", "/a/../b", "/a/./b"] {
            assert!(InRootPath::new(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn proc_fd_paths_name_the_descriptor() {
        for (fd, want) in [
            (0, "/proc/self/fd/0"),
            (7, "/proc/self/fd/7"),
            (1234, "/proc/self/fd/1234"),
        ] {
            let p = ProcFdPath::new(fd);
            // SAFETY: the buffer is NUL-terminated and lives as long as `p`.
            let s = unsafe { CStr::from_ptr(p.as_ptr()) };
            assert_eq!(s.to_str().unwrap(), want);
        }
        let p = ProcFdPath::new(i32::MAX);
        // SAFETY: as above.
        let s = unsafe { CStr::from_ptr(p.as_ptr()) };
        assert_eq!(s.to_str().unwrap(), "/proc/self/fd/2147483647");
    }

    #[test]
    fn raw_opens_resolve_inside_the_root() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), b"vm").unwrap();
        std::fs::create_dir(root.path().join("etc")).unwrap();
        std::fs::write(root.path().join("etc/secret"), b"root").unwrap();
        // Absolute and `..`-laden symlinks both land on the root's own /etc.
        symlink("/etc", root.path().join("abs")).unwrap();
        symlink("../../../../../../../etc", root.path().join("dots")).unwrap();
        symlink(outside.path(), root.path().join("out")).unwrap();
        let root_fd = sys::open_ro(root.path()).unwrap();
        for p in [c"abs/secret", c"dots/secret", c"/etc/secret"] {
            // SAFETY: one system call on live data.
            let fd = unsafe { raw_open(root_fd.as_raw_fd(), p, libc::O_RDONLY) };
            assert!(fd >= 0, "{p:?}: {}", io::Error::last_os_error());
            // SAFETY: a fresh descriptor of ours.
            let mut f = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
            let mut s = String::new();
            f.read_to_string(&mut s).unwrap();
            assert_eq!(s, "root", "{p:?}");
        }
        // `out` names a directory of the VM that the root does not have.
        // SAFETY: one system call on live data.
        let fd = unsafe { raw_open(root_fd.as_raw_fd(), c"out/secret", libc::O_RDONLY) };
        assert_eq!(fd, -1);
        assert_eq!(
            io::Error::last_os_error().raw_os_error(),
            Some(libc::ENOENT)
        );
        // Magic links are refused (`/proc/self/exe` of the host's own root here).
        let slash = sys::open_ro(Path::new("/")).unwrap();
        // SAFETY: one system call on live data.
        let fd = unsafe { raw_open(slash.as_raw_fd(), c"proc/self/exe", libc::O_RDONLY) };
        assert_eq!(fd, -1);
        assert_eq!(io::Error::last_os_error().raw_os_error(), Some(libc::ELOOP));
    }

    #[test]
    fn reads_are_bounded_and_regular_only() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("etc")).unwrap();
        std::fs::write(outside.path().join("passwd"), b"vm").unwrap();
        symlink(
            outside.path().join("passwd"),
            root.path().join("etc/passwd"),
        )
        .unwrap();
        // A symlink to a VM file resolves inside the root, where it is missing.
        assert!(matches!(
            read_regular(root.path(), "/etc/passwd", 10),
            Ok(None)
        ));
        std::fs::remove_file(root.path().join("etc/passwd")).unwrap();
        std::fs::write(root.path().join("etc/passwd"), b"0123456789").unwrap();
        assert_eq!(
            read_regular(root.path(), "/etc/passwd", 10).unwrap(),
            Some(b"0123456789".to_vec())
        );
        assert!(matches!(
            read_regular(root.path(), "/etc/passwd", 9),
            Err(ReadError::TooLarge { limit: 9 })
        ));
        nix::unistd::mkfifo(
            &root.path().join("etc/group"),
            Mode::from_bits_retain(0o644),
        )
        .unwrap();
        let started = std::time::Instant::now();
        let e = read_regular(root.path(), "/etc/group", 10).unwrap_err();
        assert_eq!(e.to_string(), "not a regular file (FIFO)");
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        let e = read_regular(root.path(), "/etc", 10).unwrap_err();
        assert_eq!(e.to_string(), "not a regular file (directory)");
    }
}
