//! The VMM's own mount namespace and root, as Firecracker's jailer gives its VMM.
//!
//! libkrun serves virtio-fs in this process, through a passthrough file system that expects to
//! be chrooted: it opens each share's directory by path and then every name the guest sends
//! relative to a descriptor, without refusing `..` or names with a `/`. Unconfined, a guest's
//! `LOOKUP ".."` from a share's root (or a symlink it plants to `/etc`) walks the host's file
//! system as root. So, before the guest runs, the VMM pivots into a root that holds only what
//! it still opens from then on:
//!
//! - each virtio-fs share, bound (recursively: volumes are mounts inside their share) at its
//!   own absolute path, so libkrun's configured paths stay valid (it opens a share's root by
//!   path when the guest's driver sends FUSE `INIT`). The bind keeps the source mount's flags
//!   (a read-only volume view stays read-only) and adds `nosuid,nodev`: a device node the
//!   guest makes in a share can no longer be opened on the host through it;
//! - `/proc/self/fd`, a read-only bind of the VMM's own descriptor directory (not a procfs):
//!   libkrun's virtio-fs opens it by that path when the guest activates the device and reopens
//!   its `O_PATH` descriptors through it. A guest reaching it sees the VMM's descriptors as
//!   magic links; lookups do not follow the last one and opening one fails with `ELOOP`, and
//!   no descriptor refers to a directory outside this root (the share sources are closed
//!   before the pivot);
//! - nothing else: the root is a small tmpfs, read-only once built. The disks, `/dev/kvm`,
//!   libkrunfw, the initramfs and the console log are opened by libkrun before the vCPUs start
//!   (`strace -f` of a run shows no other open after that point), so they need no bind.
//!   Anything libkrun would open by path after the vCPUs start (a vsock's Unix socket, were
//!   one configured) must be bound here too.
//!
//! Two steps, because of two kernel rules. [`Jail::prepare`] unshares the mount namespace,
//! which a process can do only while it has one thread, so it runs before libkrun starts any;
//! it also makes every mount a slave (host mounts still propagate in, e.g. a volume bound into
//! a share later, when the share's host mount is shared; nothing propagates out) and opens the
//! shares. [`Jail::enter`] builds the root and pivots; it runs after libkrun opened its files
//! and before the vCPUs run (`msb_krun`'s placement callback, see `crate::krun`). The new root
//! is mounted over the VM's directory in this namespace only (the runtime's view is untouched,
//! and nothing is created on the host), then the old root is detached.

use std::ffi::OsStr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Component, Path, PathBuf};

use nix::fcntl::OFlag;
use nix::mount::{MntFlags, MsFlags};
use nix::sys::stat::Mode;
use nix::sys::statvfs::FsFlags;

/// Where libkrun's virtio-fs finds its process's descriptors (`/proc/self/fd`).
pub const PROC_SELF_FD: &str = "/proc/self/fd";

/// Options of the tmpfs that becomes the VMM's root: it holds only directories.
const ROOT_TMPFS_OPTIONS: &str = "mode=0755,size=1m,nr_inodes=1024";

/// A step of the confinement failed; each names what it did on which path.
#[derive(Debug, thiserror::Error)]
pub enum JailError {
    /// A system call failed.
    #[error("{what}")]
    Sys {
        /// The step, with its paths.
        what: String,
        /// The cause.
        #[source]
        source: nix::Error,
    },
    /// Creating a directory of the new root failed.
    #[error("create {} in the VMM's new root", path.display())]
    Mkdir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A share the new root cannot hold at its own path.
    #[error("virtio-fs share {}: {why}", path.display())]
    Share {
        /// The share's host path.
        path: PathBuf,
        /// Why.
        why: &'static str,
    },
    /// The directory the new root is mounted on.
    #[error("the VM directory {} cannot hold the VMM's new root: {why}", path.display())]
    MountPoint {
        /// The directory.
        path: PathBuf,
        /// Why.
        why: &'static str,
    },
}

fn sys(what: impl Into<String>) -> impl FnOnce(nix::Error) -> JailError {
    let what = what.into();
    move |source| JailError::Sys { what, source }
}

/// A share to bind into the new root.
#[derive(Debug)]
struct Bind {
    /// Its host path, which it keeps in the new root.
    path: PathBuf,
    /// The directory, opened before anything covers its path (`O_PATH`).
    source: OwnedFd,
    /// Bind it read-only whatever its source's mount says.
    read_only: bool,
}

/// A mount namespace of the VMM's own, prepared: see the module docs.
#[derive(Debug)]
pub struct Jail {
    mount_point: PathBuf,
    binds: Vec<Bind>,
}

impl Jail {
    /// Unshares the mount namespace (the calling process must have one thread), makes every
    /// mount in it a slave, and opens the `shares` (host path, read-only) the new root will
    /// hold. `mount_point` (the VM's directory) is where the new root is built later.
    pub fn prepare<'a>(
        mount_point: &Path,
        shares: impl IntoIterator<Item = (&'a Path, bool)>,
    ) -> Result<Jail, JailError> {
        let shares: Vec<(&Path, bool)> = shares.into_iter().collect();
        check_mount_point(mount_point)?;
        for (i, (path, _)) in shares.iter().enumerate() {
            check_share(path, shares[..i].iter().map(|s| s.0))?;
            // A recursive bind of it would carry the new root's own tmpfs along.
            if mount_point.starts_with(path) {
                return Err(JailError::Share {
                    path: path.to_path_buf(),
                    why: "it holds the VM directory the VMM's new root is built on",
                });
            }
        }
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).map_err(sys(
            "unshare the mount namespace (CLONE_NEWNS: one thread, root)",
        ))?;
        // Slave, not private: a mount the host makes later inside a share (a container's
        // volume) still arrives; nothing made here goes back.
        nix::mount::mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REC | MsFlags::MS_SLAVE,
            None::<&str>,
        )
        .map_err(sys("make every mount of the VMM's namespace a slave"))?;
        let mut binds = Vec::with_capacity(shares.len());
        for (path, read_only) in shares {
            let source = nix::fcntl::open(
                path,
                OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .map_err(sys(format!("open the share {}", path.display())))?;
            // SAFETY: `open` just returned this descriptor; nothing else owns it.
            let source = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(source) };
            binds.push(Bind {
                path: path.to_path_buf(),
                source,
                read_only,
            });
        }
        Ok(Jail {
            mount_point: mount_point.to_path_buf(),
            binds,
        })
    }

    /// The jail of a LaunchConfig: its shares, the new root built on the VM's directory (the
    /// agent socket's).
    pub fn for_config(cfg: &crate::LaunchConfig) -> Result<Jail, JailError> {
        let vm_dir = cfg.agent_socket.parent().unwrap_or(Path::new("/"));
        Jail::prepare(
            vm_dir,
            cfg.shares
                .iter()
                .map(|s| (s.host_path.as_path(), s.read_only)),
        )
    }

    /// The host paths of the shares, in order.
    pub fn shares(&self) -> impl Iterator<Item = &Path> {
        self.binds.iter().map(|b| b.path.as_path())
    }

    /// Builds the new root on the mount point, pivots into it and detaches the old root. Any
    /// thread may call this; every thread's root and working directory move with it.
    pub fn enter(self) -> Result<(), JailError> {
        let root = &self.mount_point;
        nix::mount::mount(
            Some("tmpfs"),
            root,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            Some(ROOT_TMPFS_OPTIONS),
        )
        .map_err(sys(format!(
            "mount the new root's tmpfs on {}",
            root.display()
        )))?;
        nix::mount::mount(
            None::<&str>,
            root,
            None::<&str>,
            MsFlags::MS_PRIVATE,
            None::<&str>,
        )
        .map_err(sys(format!("make the new root {} private", root.display())))?;
        for bind in &self.binds {
            let target = inside(root, &bind.path);
            mkdir_all(&target)?;
            let source = format!("/proc/self/fd/{}", bind.source.as_raw_fd());
            nix::mount::mount(
                Some(source.as_str()),
                &target,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )
            .map_err(sys(format!("bind the share {}", bind.path.display())))?;
            let kept = kept_flags(&target)?;
            let ro = if bind.read_only {
                MsFlags::MS_RDONLY
            } else {
                MsFlags::empty()
            };
            remount_bind(&target, kept | ro | MsFlags::MS_NOSUID | MsFlags::MS_NODEV)
                .map_err(sys(format!("restrict the share {}", bind.path.display())))?;
        }
        let fds = inside(root, Path::new(PROC_SELF_FD));
        mkdir_all(&fds)?;
        nix::mount::mount(
            Some(PROC_SELF_FD),
            &fds,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(sys(format!("bind {PROC_SELF_FD}")))?;
        remount_bind(
            &fds,
            MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        )
        .map_err(sys(format!("make {PROC_SELF_FD} read-only")))?;
        // Nothing is created around the shares any more (the guest reaches this tmpfs with `..`).
        nix::mount::mount(
            None::<&str>,
            root,
            None::<&str>,
            MsFlags::MS_REMOUNT
                | MsFlags::MS_RDONLY
                | MsFlags::MS_NOSUID
                | MsFlags::MS_NODEV
                | MsFlags::MS_NOEXEC,
            None::<&str>,
        )
        .map_err(sys("make the new root read-only"))?;
        // No descriptor may lead out of the new root: through the bound /proc/self/fd, a
        // guest's multi-component name would follow one.
        drop(self.binds);
        nix::unistd::chdir(root).map_err(sys(format!("chdir {}", root.display())))?;
        // The old root ends up stacked on the new one; detaching it leaves the new root alone.
        nix::unistd::pivot_root(".", ".").map_err(sys(format!(
            "pivot_root into {} (new root and old root both `.`)",
            root.display()
        )))?;
        nix::mount::umount2(".", MntFlags::MNT_DETACH).map_err(sys("detach the old root"))?;
        nix::unistd::chdir("/").map_err(sys("chdir / in the new root"))?;
        Ok(())
    }
}

/// `path` (absolute) below `root`.
fn inside(root: &Path, path: &Path) -> PathBuf {
    root.join(path.strip_prefix("/").unwrap_or(path))
}

fn mkdir_all(path: &Path) -> Result<(), JailError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(path)
        .map_err(|source| JailError::Mkdir {
            path: path.to_path_buf(),
            source,
        })
}

/// The flags of the mount at `path` that a bind remount must keep (dropping `ro` from a
/// read-only volume view would let the guest write around its volumes).
fn kept_flags(path: &Path) -> Result<MsFlags, JailError> {
    let st =
        nix::sys::statvfs::statvfs(path).map_err(sys(format!("statvfs {}", path.display())))?;
    let f = st.flags();
    let map = [
        (FsFlags::ST_RDONLY, MsFlags::MS_RDONLY),
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
    ];
    Ok(map
        .into_iter()
        .filter(|(st, _)| f.contains(*st))
        .fold(MsFlags::empty(), |acc, (_, ms)| acc | ms))
}

fn remount_bind(path: &Path, flags: MsFlags) -> nix::Result<()> {
    nix::mount::mount(
        None::<&str>,
        path,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | flags,
        None::<&str>,
    )
}

fn check_mount_point(path: &Path) -> Result<(), JailError> {
    let err = |why| JailError::MountPoint {
        path: path.to_path_buf(),
        why,
    };
    if !path.is_absolute() || !normal(path) {
        return Err(err("not an absolute path without `.` or `..`"));
    }
    if path.parent().is_none() {
        return Err(err("it is /"));
    }
    Ok(())
}

/// A share's path must be absolute and plain, and neither contain nor lie inside another
/// share or `/proc`: every bind target is made inside the new root's tmpfs, never inside a
/// share (the host must not create anything in a guest-writable directory).
fn check_share<'a>(path: &Path, earlier: impl Iterator<Item = &'a Path>) -> Result<(), JailError> {
    let err = |why| JailError::Share {
        path: path.to_path_buf(),
        why,
    };
    if !path.is_absolute() || !normal(path) {
        return Err(err("not an absolute path without `.` or `..`"));
    }
    if path.parent().is_none() {
        return Err(err("the host's root cannot be shared"));
    }
    if path.starts_with("/proc") {
        return Err(err("paths under /proc are the VMM's own"));
    }
    for other in earlier {
        if path.starts_with(other) || other.starts_with(path) {
            return Err(err("it contains, or lies inside, another share"));
        }
    }
    Ok(())
}

fn normal(path: &Path) -> bool {
    path.components()
        .all(|c| matches!(c, Component::RootDir | Component::Normal(_)))
        && path.as_os_str() != OsStr::new("")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forked::in_child;

    #[test]
    fn refuses_shares_it_cannot_bind_at_their_own_path() {
        let ok = [Path::new("/vm/share"), Path::new("/vm/volumes")];
        for (i, p) in ok.iter().enumerate() {
            check_share(p, ok[..i].iter().copied()).unwrap();
        }
        let bad: [(&str, &[&str]); 7] = [
            ("share", &[]),
            ("/", &[]),
            ("/vm/../etc", &[]),
            ("/proc/1/root", &[]),
            ("/vm/share/sub", &["/vm/share"]),
            ("/vm", &["/vm/share"]),
            ("/vm/share", &["/vm/share"]),
        ];
        for (p, earlier) in bad {
            let e = check_share(Path::new(p), earlier.iter().map(Path::new)).unwrap_err();
            assert!(
                matches!(&e, JailError::Share { path, .. } if path == Path::new(p)),
                "{p}: {e}"
            );
        }
        let e = Jail::prepare(Path::new("/vm/dir"), [(Path::new("/vm"), false)]).unwrap_err();
        assert!(matches!(e, JailError::Share { .. }), "{e}");
        assert!(check_mount_point(Path::new("/")).is_err());
        assert!(check_mount_point(Path::new("vm")).is_err());
        check_mount_point(Path::new("/run/vm")).unwrap();
    }

    fn errno(r: std::io::Result<impl Sized>) -> Option<i32> {
        r.err().and_then(|e| e.raw_os_error())
    }

    #[test]
    fn the_new_root_holds_the_shares_and_proc_self_fd_only() {
        if !nix::unistd::geteuid().is_root() {
            msb_test_e2e::skip("a mount namespace and pivot_root need root");
            return;
        }
        // tempdir under /var/tmp or /tmp: a VM directory with disks beside its shares, and a
        // second share that is a read-only mount on the host (as the volumes view is).
        let vm = tempfile::tempdir().unwrap();
        let vm_dir = vm.path().to_path_buf();
        let share = vm_dir.join("share");
        let ro_share = vm_dir.join("volumes");
        for d in [&share, &ro_share] {
            std::fs::create_dir(d).unwrap();
        }
        std::fs::write(share.join("hello"), "from the host").unwrap();
        std::fs::write(ro_share.join("v"), "volume").unwrap();
        std::fs::write(vm_dir.join("upper.img"), "disk").unwrap();
        let host_file = std::fs::File::open("/etc/hostname")
            .or_else(|_| std::fs::File::open("/etc/passwd"))
            .unwrap();
        let failures = in_child(|f| {
            // The read-only host mount, made in a namespace of the child's own.
            let setup = (|| {
                nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)?;
                let slave = MsFlags::MS_REC | MsFlags::MS_SLAVE;
                nix::mount::mount(None::<&str>, "/", None::<&str>, slave, None::<&str>)?;
                let b = MsFlags::MS_BIND;
                nix::mount::mount(Some(&ro_share), &ro_share, None::<&str>, b, None::<&str>)?;
                remount_bind(&ro_share, MsFlags::MS_RDONLY)
            })();
            if let Err(e) = setup {
                f.push(format!("set up a read-only share: {e}"));
                return;
            }
            let jail = Jail::prepare(
                &vm_dir,
                [(share.as_path(), false), (ro_share.as_path(), false)],
            );
            let sources: Vec<i32> = match &jail {
                Ok(j) => j.binds.iter().map(|b| b.source.as_raw_fd()).collect(),
                Err(_) => Vec::new(),
            };
            if let Err(e) = jail.and_then(Jail::enter) {
                f.push(format!("jail: {e} ({:?})", std::error::Error::source(&e)));
                return;
            }
            // The shares' sources (directories of the old root) are closed.
            for fd in sources {
                if nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFD).is_ok() {
                    f.push(format!("the share source fd {fd} is still open"));
                }
            }
            // "/" lists the first component of the shares' path and proc, nothing else.
            let first = vm_dir.components().nth(1).unwrap().as_os_str().to_owned();
            let mut top: Vec<_> = std::fs::read_dir("/")
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            top.sort();
            let mut want = vec![first, "proc".into()];
            want.sort();
            if top != want {
                f.push(format!("/ holds {top:?}, want {want:?}"));
            }
            // The VM directory holds the shares only (the disk image is not there).
            let mut vm_names: Vec<_> = std::fs::read_dir(&vm_dir)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            vm_names.sort();
            if vm_names != ["share", "volumes"] {
                f.push(format!("{} holds {vm_names:?}", vm_dir.display()));
            }
            match std::fs::read_to_string(share.join("hello")) {
                Ok(s) if s == "from the host" => {}
                other => f.push(format!("the share's file: {other:?}")),
            }
            if let Err(e) = std::fs::write(share.join("new"), "guest") {
                f.push(format!("write in the read-write share: {e}"));
            }
            if errno(std::fs::write(ro_share.join("new"), "x")) != Some(libc::EROFS) {
                f.push("the read-only host mount became writable".into());
            }
            if errno(std::fs::create_dir(vm_dir.join("planted"))) != Some(libc::EROFS) {
                f.push("the new root's tmpfs is writable".into());
            }
            if std::path::Path::new("/etc").exists() || std::path::Path::new("/usr").exists() {
                f.push("the host's /etc or /usr is visible".into());
            }
            // nodev: a device node made in a share does not open (here /dev/null's numbers).
            let node = share.join("null");
            let dev = nix::sys::stat::makedev(1, 3);
            if let Err(e) = nix::sys::stat::mknod(
                &node,
                nix::sys::stat::SFlag::S_IFCHR,
                Mode::from_bits_truncate(0o666),
                dev,
            ) {
                f.push(format!("mknod in the share: {e}"));
            } else if errno(std::fs::File::open(&node)) != Some(libc::EACCES) {
                f.push("a device node in a share opens (no nodev)".into());
            }
            // libkrun's use of /proc/self/fd: open the directory by path, reopen through it.
            let fd_dir = nix::fcntl::open(
                PROC_SELF_FD,
                OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::empty(),
            );
            match fd_dir {
                Err(e) => f.push(format!("open {PROC_SELF_FD}: {e}")),
                Ok(d) => {
                    let name = host_file.as_raw_fd().to_string();
                    let r =
                        nix::fcntl::openat(Some(d), name.as_str(), OFlag::O_RDONLY, Mode::empty());
                    if let Err(e) = r {
                        f.push(format!("reopen fd {name} through {PROC_SELF_FD}: {e}"));
                    }
                }
            }
            match nix::sys::statvfs::statvfs(PROC_SELF_FD) {
                Ok(st) if st.flags().contains(FsFlags::ST_RDONLY) => {}
                other => f.push(format!(
                    "{PROC_SELF_FD} is not a read-only mount: {other:?}"
                )),
            }
        });
        assert!(failures.is_empty(), "{failures:#?}");
        // The host's view is untouched: the disk and the share's new file are where they were.
        assert_eq!(
            std::fs::read_to_string(vm.path().join("upper.img")).unwrap(),
            "disk"
        );
        assert_eq!(
            std::fs::read_to_string(vm.path().join("share/new")).unwrap(),
            "guest"
        );
        assert!(!vm.path().join("volumes/new").exists());
    }

    #[test]
    fn a_bind_target_keeps_its_absolute_path_below_the_root() {
        assert_eq!(
            inside(Path::new("/vm"), Path::new("/vm/share")),
            Path::new("/vm/vm/share")
        );
        assert_eq!(
            inside(Path::new("/vm"), Path::new(PROC_SELF_FD)),
            Path::new("/vm/proc/self/fd")
        );
    }
}
