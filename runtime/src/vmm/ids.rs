//! A host user and group id per VMM, leased host-wide.
//!
//! QEMU runs as an unprivileged uid/gid of its own ([`super::qemu`]): one per VM, not one for
//! all, because QEMU's own seccomp filter leaves `ptrace` and `process_vm_readv` open and two
//! processes of the same uid may use them on each other (no Yama on most hosts). The id owns no
//! file on the host (QEMU gets every per-VM resource as a descriptor), so it needs no passwd
//! entry.
//!
//! A lease is an exclusive `flock` on `<dir>/<id>` ([`LEASE_DIR`]), one empty file per id ever
//! leased (the files are never removed: unlinking a lock file races with its next opener). The
//! lock belongs to the open file description, and the VMM inherits that description
//! ([`IdLease::fd`]): the id stays leased while the runtime's copy *or* the VMM's is open. So a
//! shim that crashes does not free the id of a VMM that still runs; once that VMM dies too (the
//! crash cleanup kills it), the kernel drops the lock and the id is free, with no record to
//! read or repair.
//!
//! The default range, [`DEFAULT_FIRST_ID`] and up [`DEFAULT_COUNT`] ids, lies in the span that
//! systemd's `UIDS-GIDS.md` leaves unused (1879048192–2147352575): outside system and regular
//! users, systemd's dynamic users (61184–65519), the container ranges (524288–1879048191) and
//! the usual `/etc/subuid` allocations. `MSB_VMM_IDS=<first>:<count>` moves it.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Where the lease files live: host-wide, whatever a shim's `MSB_RUN_DIR`.
pub const LEASE_DIR: &str = "/run/microsandbox/vmm-ids";

/// The first id of the default range.
pub const DEFAULT_FIRST_ID: u32 = 0x706d_0000;

/// How many ids the default range holds (VMs that can run at once on the host).
pub const DEFAULT_COUNT: u32 = 65_536;

/// The environment variable that moves the range: `<first>:<count>`.
pub const RANGE_ENV: &str = "MSB_VMM_IDS";

/// Why no id could be leased.
#[derive(Debug, thiserror::Error)]
pub enum IdError {
    /// `MSB_VMM_IDS` is malformed or names root or a range past `u32`.
    #[error("{RANGE_ENV}={0:?}: expected <first>:<count> with first > 0, count > 0 and first+count-1 <= 4294967294")]
    BadRange(String),
    /// Every id of the range is leased.
    #[error("all {count} VMM ids from {first} are in use ({dir})")]
    Exhausted {
        /// First id.
        first: u32,
        /// Ids in the range.
        count: u32,
        /// The lease directory.
        dir: PathBuf,
    },
    /// A lease file could not be made or locked.
    #[error("{what} {}", path.display())]
    Io {
        /// The step.
        what: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
}

/// A range of ids to lease from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdRange {
    /// First id (never 0).
    pub first: u32,
    /// How many.
    pub count: u32,
}

impl Default for IdRange {
    fn default() -> Self {
        IdRange {
            first: DEFAULT_FIRST_ID,
            count: DEFAULT_COUNT,
        }
    }
}

impl IdRange {
    /// `$MSB_VMM_IDS` or the default.
    pub fn from_env() -> Result<IdRange, IdError> {
        match std::env::var(RANGE_ENV) {
            Ok(s) => IdRange::parse(&s),
            Err(_) => Ok(IdRange::default()),
        }
    }

    /// Parses `<first>:<count>`. Root (0) and `u32::MAX` (-1, "no change" to set*id) are refused.
    pub fn parse(s: &str) -> Result<IdRange, IdError> {
        let bad = || IdError::BadRange(s.to_owned());
        let (first, count) = s.split_once(':').ok_or_else(bad)?;
        let first: u32 = first.trim().parse().map_err(|_| bad())?;
        let count: u32 = count.trim().parse().map_err(|_| bad())?;
        match first.checked_add(count - count.min(1)) {
            Some(last) if first > 0 && count > 0 && last < u32::MAX => Ok(IdRange { first, count }),
            _ => Err(bad()),
        }
    }
}

/// One leased id: the VMM's uid and gid. Released when this value and every inherited copy of
/// [`IdLease::fd`] are closed.
#[derive(Debug)]
pub struct IdLease {
    id: u32,
    file: File,
    path: PathBuf,
}

impl IdLease {
    /// Leases the lowest free id of `range` in [`LEASE_DIR`].
    pub fn acquire(range: IdRange) -> Result<IdLease, IdError> {
        Self::acquire_in(Path::new(LEASE_DIR), range)
    }

    /// Leases the lowest free id of `range` in `dir` (made 0700 where missing).
    pub fn acquire_in(dir: &Path, range: IdRange) -> Result<IdLease, IdError> {
        crate::private::create_dir(dir).map_err(|source| IdError::Io {
            what: "create",
            path: dir.to_owned(),
            source,
        })?;
        for n in 0..range.count {
            let id = range.first + n;
            let path = dir.join(id.to_string());
            let file = OpenOptions::new()
                .read(true)
                .create(true)
                .write(true)
                .mode(crate::private::FILE_MODE)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&path)
                .map_err(|source| IdError::Io {
                    what: "open",
                    path: path.clone(),
                    source,
                })?;
            if try_lock(&file).map_err(|source| IdError::Io {
                what: "lock",
                path: path.clone(),
                source,
            })? {
                return Ok(IdLease { id, file, path });
            }
        }
        Err(IdError::Exhausted {
            first: range.first,
            count: range.count,
            dir: dir.to_owned(),
        })
    }

    /// The uid (and gid: the same number).
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The locked descriptor (close-on-exec). A VMM that inherits it holds the lease as long as
    /// it runs, whatever becomes of this process.
    pub fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    /// Whether `id`'s lease in `dir` is held by anyone (for tests and diagnostics). Takes and
    /// drops the lock when free.
    pub fn is_held(dir: &Path, id: u32) -> io::Result<bool> {
        let path = dir.join(id.to_string());
        match OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
        {
            Ok(f) => try_lock(&f).map(|locked| !locked),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// `flock(LOCK_EX|LOCK_NB)`: `Ok(false)` when someone else holds it.
fn try_lock(file: &File) -> io::Result<bool> {
    // SAFETY: flock(2) on a descriptor `file` keeps open.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_and_refuse_root_and_overflow() {
        assert_eq!(
            IdRange::parse("100:5").unwrap(),
            IdRange {
                first: 100,
                count: 5
            }
        );
        for bad in ["0:5", "100:0", "100", "x:1", "4294967295:1", "4294967290:6"] {
            assert!(
                matches!(IdRange::parse(bad), Err(IdError::BadRange(_))),
                "{bad}"
            );
        }
        assert!(IdRange::parse("4294967290:5").is_ok());
    }

    #[test]
    fn leases_are_distinct_released_on_drop_and_held_by_an_inherited_copy() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("ids");
        let range = IdRange {
            first: 1000,
            count: 2,
        };
        let a = IdLease::acquire_in(&dir, range).unwrap();
        let b = IdLease::acquire_in(&dir, range).unwrap();
        assert_eq!((a.id(), b.id()), (1000, 1001));
        assert!(matches!(
            IdLease::acquire_in(&dir, range),
            Err(IdError::Exhausted { count: 2, .. })
        ));
        assert!(IdLease::is_held(&dir, 1000).unwrap());
        // What a VMM inherits: the same open file description, outliving our value (a shim that
        // died while its VMM runs).
        // Close-on-exec: a process another test spawns meanwhile must not inherit it (it would
        // hold the lease past the close below).
        // SAFETY: F_DUPFD_CLOEXEC of a descriptor `a` keeps open.
        let vmm_copy = unsafe { libc::fcntl(a.fd(), libc::F_DUPFD_CLOEXEC, 0) };
        assert!(vmm_copy >= 0);
        drop(a);
        assert!(
            IdLease::is_held(&dir, 1000).unwrap(),
            "held by the VMM's copy"
        );
        assert!(IdLease::acquire_in(&dir, range).is_err());
        // SAFETY: closes the descriptor dup'ed above, owned by nothing else.
        unsafe { libc::close(vmm_copy) };
        // Free once no copy is left. Other tests of this process fork children (a jail in a
        // forked child, spawns), and a child holds every descriptor, close-on-exec ones too,
        // until it execs or exits: give those a moment.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while IdLease::is_held(&dir, 1000).unwrap() {
            assert!(
                std::time::Instant::now() < deadline,
                "still held 10 s after the close"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(IdLease::acquire_in(&dir, range).unwrap().id(), 1000);
        assert!(!IdLease::is_held(&dir, 1002).unwrap(), "never leased");
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!((mode(&dir), mode(b.path())), (0o700, 0o600));
    }
}
