//! QEMU's jail on the host, in the manner of Firecracker's jailer: entered by the forked child
//! between the cgroup join and `exec`, so QEMU never runs a single instruction outside it.
//!
//! 1. a mount namespace of its own (`unshare(CLONE_NEWNS)`, every mount made private);
//! 2. a new root: a small tmpfs holding `/usr` bound read-only (with `lib`, `lib64`, `bin`,
//!    `sbin` as the host has them: symlinks into `/usr` on a merged-`/usr` host, read-only binds
//!    otherwise), the guest kernel and initramfs bound read-only at their own paths (so
//!    `-kernel`/`-initrd` stay as they are), `/dev/null`, `/dev/urandom` and, with KVM,
//!    `/dev/kvm` (mode 0660, group the VM's gid: independent of the host's `kvm` group);
//!    the root itself then read-only, `pivot_root` into it and the old root detached. No `/proc`,
//!    `/sys`, `/etc`, no VM directory, no layer cache: every per-VM resource reaches QEMU as an
//!    inherited descriptor (see [`super`]);
//! 3. the VM's own uid and gid ([`crate::vmm::ids`]), no supplementary groups: no capability
//!    left, and nothing on the host owned by it.
//!
//! Both halves are needed: root in a mount namespace still reaches the host's files
//! (`open_by_handle_at`, which QEMU's `-sandbox` allows, ignores mounts), and a uid without the
//! namespace still reads every world-readable host file.
//!
//! [`Jail::new`] prepares everything in the parent (paths as C strings, device numbers, checks);
//! [`Jail::enter`] only makes system calls, allocation-free and async-signal-safe as a
//! `pre_exec` hook must be. A failing step writes `msb-jail: <step> <path> failed` to the
//! child's stderr (`qemu.log`) before the error (an errno only) reaches the parent.

use std::ffi::{CStr, CString};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Component, Path, PathBuf};

/// The prefix of the line a failing step writes to stderr.
pub const FAILURE_PREFIX: &str = "msb-jail: ";

/// Top-level entries of a root file system that programs reach `/usr` through.
const USR_LINKS: [&str; 6] = ["lib", "lib64", "lib32", "libx32", "bin", "sbin"];

/// A read-only bind of a host file or directory into the new root.
#[derive(Debug)]
struct Bind {
    source: CString,
    /// Relative to the new root.
    target: CString,
    file: bool,
    /// Flags of the read-only remount besides `MS_BIND|MS_REMOUNT|MS_RDONLY`.
    flags: libc::c_ulong,
}

/// A device node made in the new root.
#[derive(Debug)]
struct Device {
    /// Relative to the new root.
    path: CString,
    mode: libc::mode_t,
    rdev: libc::dev_t,
    /// Group owner (root otherwise).
    gid: Option<libc::gid_t>,
}

/// Everything the child needs to enter the jail, prepared by the parent.
#[derive(Debug)]
pub struct Jail {
    /// An existing host directory the tmpfs is mounted on, in the child's namespace only.
    mount_point: CString,
    tmpfs_options: CString,
    /// Directories to make, relative to the new root, parents first.
    dirs: Vec<CString>,
    /// (link target, link path relative to the new root).
    links: Vec<(CString, CString)>,
    binds: Vec<Bind>,
    devices: Vec<Device>,
    uid: libc::uid_t,
    gid: libc::gid_t,
}

/// Why the jail cannot be prepared.
#[derive(Debug, thiserror::Error)]
pub enum JailError {
    /// A path QEMU needs is unusable inside the jail.
    #[error("{} cannot be served to QEMU's jail: {why}", path.display())]
    Path {
        /// The path.
        path: PathBuf,
        /// Why.
        why: String,
    },
    /// Looking at a host path failed.
    #[error("inspect {}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
}

fn cstring(bytes: &[u8], path: &Path) -> Result<CString, JailError> {
    CString::new(bytes).map_err(|_| JailError::Path {
        path: path.to_owned(),
        why: "it contains a NUL byte".into(),
    })
}

fn meta(path: &Path, follow: bool) -> Result<std::fs::Metadata, JailError> {
    let m = if follow {
        std::fs::metadata(path)
    } else {
        std::fs::symlink_metadata(path)
    };
    m.map_err(|source| JailError::Io {
        path: path.to_owned(),
        source,
    })
}

/// `path` relative to `/` (`/a/b` -> `a/b`), refusing `.`/`..` components.
fn relative(path: &Path) -> Result<PathBuf, JailError> {
    let mut rel = PathBuf::new();
    for c in path.components() {
        match c {
            Component::RootDir => {}
            Component::Normal(n) => rel.push(n),
            _ => {
                return Err(JailError::Path {
                    path: path.to_owned(),
                    why: "it is not a plain absolute path".into(),
                })
            }
        }
    }
    Ok(rel)
}

impl Jail {
    /// A jail for a QEMU that runs `program` and reads `files` (kernel, initramfs), as `id`
    /// (uid and gid), with `/dev/kvm` when `kvm`. The tmpfs is mounted on `mount_point`, an
    /// existing empty directory (the mount exists only in QEMU's namespace; it hides what lies
    /// below it, so nothing bound may). Files under `/usr` are reached through its bind; others
    /// are bound at their own paths.
    pub fn new(
        mount_point: &Path,
        program: &Path,
        files: &[&Path],
        kvm: bool,
        id: u32,
    ) -> Result<Jail, JailError> {
        let mut jail = Jail {
            mount_point: cstring(mount_point.as_os_str().as_bytes(), mount_point)?,
            tmpfs_options: CString::default(),
            dirs: Vec::new(),
            links: Vec::new(),
            binds: Vec::new(),
            devices: Vec::new(),
            uid: id,
            gid: id,
        };
        jail.dirs.push(c"usr".to_owned());
        jail.binds.push(Bind {
            source: c"/usr".to_owned(),
            target: c"usr".to_owned(),
            file: false,
            flags: libc::MS_NOSUID | libc::MS_NODEV,
        });
        for name in USR_LINKS {
            let host = Path::new("/").join(name);
            let Ok(m) = std::fs::symlink_metadata(&host) else {
                continue;
            };
            if m.file_type().is_symlink() {
                let target = std::fs::read_link(&host).map_err(|source| JailError::Io {
                    path: host.clone(),
                    source,
                })?;
                jail.links.push((
                    cstring(target.as_os_str().as_bytes(), &host)?,
                    cstring(name.as_bytes(), &host)?,
                ));
            } else if m.is_dir() {
                jail.dirs.push(cstring(name.as_bytes(), &host)?);
                jail.binds.push(Bind {
                    source: cstring(host.as_os_str().as_bytes(), &host)?,
                    target: cstring(name.as_bytes(), &host)?,
                    file: false,
                    flags: libc::MS_NOSUID | libc::MS_NODEV,
                });
            }
        }
        for (f, need, flags) in std::iter::once((program, libc::S_IXOTH, 0))
            .chain(files.iter().map(|f| (*f, libc::S_IROTH, libc::MS_NOEXEC)))
        {
            if f.starts_with(mount_point) {
                return Err(JailError::Path {
                    path: f.to_owned(),
                    why: format!(
                        "it lies under the jail's mount point {}",
                        mount_point.display()
                    ),
                });
            }
            jail.add_file(f, need, flags)?;
        }
        jail.dirs.push(c"dev".to_owned());
        let mut devices = vec![("null", 0o666, None), ("urandom", 0o444, None)];
        if kvm {
            devices.push(("kvm", 0o660, Some(id)));
        }
        for (name, mode, gid) in devices {
            let host = Path::new("/dev").join(name);
            let m = meta(&host, true)?;
            if !m.file_type().is_char_device() {
                return Err(JailError::Path {
                    path: host,
                    why: "it is not a character device".into(),
                });
            }
            jail.devices.push(Device {
                path: cstring(format!("dev/{name}").as_bytes(), &host)?,
                mode: libc::S_IFCHR | mode,
                rdev: m.rdev(),
                gid,
            });
        }
        // Inodes: every entry made plus the root, with room to spare; no file holds data.
        let inodes = jail.dirs.len() + jail.links.len() + jail.binds.len() + jail.devices.len();
        jail.tmpfs_options =
            CString::new(format!("size=64k,nr_inodes={},mode=755", inodes + 8)).expect("no NUL");
        Ok(jail)
    }

    /// Serves the host file `path` read-only at its own path, unless `/usr`'s bind already
    /// does. It must be readable (`need`: `S_IROTH` or `S_IXOTH`) by others: QEMU is not root.
    fn add_file(&mut self, path: &Path, need: u32, flags: libc::c_ulong) -> Result<(), JailError> {
        let bad = |why: &str| JailError::Path {
            path: path.to_owned(),
            why: why.to_owned(),
        };
        if !path.is_absolute() {
            return Err(bad("it is not an absolute path"));
        }
        let m = meta(path, true)?;
        if !m.is_file() {
            return Err(bad("it is not a regular file"));
        }
        if m.mode() & need == 0 {
            return Err(bad(if need == libc::S_IXOTH {
                "only root may execute it (QEMU runs as an unprivileged uid: chmod o+rx)"
            } else {
                "only root may read it (QEMU runs as an unprivileged uid: chmod o+r)"
            }));
        }
        let rel = relative(path)?;
        if rel.starts_with("usr") {
            let real = std::fs::canonicalize(path).map_err(|source| JailError::Io {
                path: path.to_owned(),
                source,
            })?;
            if real == path {
                return Ok(());
            }
            return Err(bad(
                "it lies under /usr through a symbolic link (name its real path)",
            ));
        }
        let mut dir = PathBuf::new();
        if let Some(parent) = rel.parent() {
            for c in parent.components() {
                dir.push(c);
                let d = cstring(dir.as_os_str().as_bytes(), path)?;
                if !self.dirs.contains(&d) {
                    self.dirs.push(d);
                }
            }
        }
        let target = cstring(rel.as_os_str().as_bytes(), path)?;
        if self.binds.iter().any(|b| b.target == target) {
            return Ok(());
        }
        self.binds.push(Bind {
            source: cstring(path.as_os_str().as_bytes(), path)?,
            target,
            file: true,
            flags: libc::MS_NOSUID | libc::MS_NODEV | flags,
        });
        Ok(())
    }

    /// The uid (and gid) QEMU runs as.
    pub fn id(&self) -> u32 {
        self.uid
    }

    /// Enters the jail and drops to the VM's ids. Call only in the forked child before exec:
    /// it changes the calling process's namespace, root, working directory and credentials.
    /// Only system calls on prepared values: async-signal-safe.
    pub fn enter(&self) -> io::Result<()> {
        // SAFETY: umask(2) cannot fail; nodes are made with exactly the modes asked for.
        let old_umask = unsafe { libc::umask(0) };
        // SAFETY: each call below is a plain system call on NUL-terminated strings this value
        // owns (or static ones) and on integers; none touches memory of the parent or allocates.
        unsafe {
            check(libc::unshare(libc::CLONE_NEWNS), b"unshare", None)?;
            check(
                libc::mount(
                    std::ptr::null(),
                    c"/".as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                ),
                b"make-private",
                Some(c"/"),
            )?;
            check(
                libc::mount(
                    c"msb-jail".as_ptr(),
                    self.mount_point.as_ptr(),
                    c"tmpfs".as_ptr(),
                    libc::MS_NOSUID | libc::MS_NOEXEC,
                    self.tmpfs_options.as_ptr().cast(),
                ),
                b"mount-tmpfs",
                Some(&self.mount_point),
            )?;
            check(
                libc::chdir(self.mount_point.as_ptr()),
                b"chdir",
                Some(&self.mount_point),
            )?;
            for d in &self.dirs {
                check(libc::mkdir(d.as_ptr(), 0o755), b"mkdir", Some(d))?;
            }
            for (target, link) in &self.links {
                check(
                    libc::symlink(target.as_ptr(), link.as_ptr()),
                    b"symlink",
                    Some(link),
                )?;
            }
            for b in &self.binds {
                if b.file {
                    check(
                        libc::mknod(b.target.as_ptr(), libc::S_IFREG | 0o444, 0),
                        b"create",
                        Some(&b.target),
                    )?;
                }
                check(
                    libc::mount(
                        b.source.as_ptr(),
                        b.target.as_ptr(),
                        std::ptr::null(),
                        libc::MS_BIND,
                        std::ptr::null(),
                    ),
                    b"bind",
                    Some(&b.source),
                )?;
                check(
                    libc::mount(
                        std::ptr::null(),
                        b.target.as_ptr(),
                        std::ptr::null(),
                        libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | b.flags,
                        std::ptr::null(),
                    ),
                    b"remount-ro",
                    Some(&b.target),
                )?;
            }
            for d in &self.devices {
                check(
                    libc::mknod(d.path.as_ptr(), d.mode, d.rdev),
                    b"mknod",
                    Some(&d.path),
                )?;
                if let Some(gid) = d.gid {
                    check(
                        libc::chown(d.path.as_ptr(), 0, gid),
                        b"chown",
                        Some(&d.path),
                    )?;
                }
            }
            check(
                libc::mount(
                    std::ptr::null(),
                    c".".as_ptr(),
                    std::ptr::null(),
                    libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NOEXEC,
                    std::ptr::null(),
                ),
                b"remount-root-ro",
                None,
            )?;
            // pivot_root(".", "."): the old root ends up stacked on the new one, then detached.
            check(
                i32::try_from(libc::syscall(
                    libc::SYS_pivot_root,
                    c".".as_ptr(),
                    c".".as_ptr(),
                ))
                .unwrap_or(-1),
                b"pivot_root",
                None,
            )?;
            check(
                libc::umount2(c".".as_ptr(), libc::MNT_DETACH),
                b"detach-old-root",
                None,
            )?;
            check(libc::chdir(c"/".as_ptr()), b"chdir", Some(c"/"))?;
            libc::umask(old_umask);
            check(libc::setgroups(0, std::ptr::null()), b"setgroups", None)?;
            check(
                libc::setresgid(self.gid, self.gid, self.gid),
                b"setresgid",
                None,
            )?;
            check(
                libc::setresuid(self.uid, self.uid, self.uid),
                b"setresuid",
                None,
            )?;
        }
        Ok(())
    }
}

/// `rc` of a system call: on failure, writes the step (and path) to stderr and returns errno.
fn check(rc: libc::c_int, step: &[u8], path: Option<&CStr>) -> io::Result<()> {
    if rc >= 0 {
        return Ok(());
    }
    // Read first: the writes below may change errno. An OS error needs no allocation.
    let e = io::Error::last_os_error();
    write_stderr(FAILURE_PREFIX.as_bytes());
    write_stderr(step);
    if let Some(p) = path {
        write_stderr(b" ");
        write_stderr(p.to_bytes());
    }
    write_stderr(b" failed\n");
    Err(e)
}

fn write_stderr(bytes: &[u8]) {
    // SAFETY: write(2) of a live buffer to fd 2; async-signal-safe. A short or failed write
    // only shortens the message.
    let _ = unsafe { libc::write(2, bytes.as_ptr().cast(), bytes.len()) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prepares_binds_dirs_and_devices() {
        let tmp = tempfile::tempdir().unwrap();
        let assets = tmp.path().join("a,b/assets");
        std::fs::create_dir_all(&assets).unwrap();
        for f in ["vmlinux", "initramfs.cpio"] {
            std::fs::write(assets.join(f), b"x").unwrap();
        }
        let mount_point = tmp.path().join("jail");
        let j = Jail::new(
            &mount_point,
            Path::new("/usr/bin/env"),
            &[&assets.join("vmlinux"), &assets.join("initramfs.cpio")],
            true,
            4242,
        )
        .unwrap();
        // A file under the mount point would be hidden by the jail's tmpfs before its bind.
        let e = Jail::new(
            tmp.path(),
            Path::new("/usr/bin/env"),
            &[&assets.join("vmlinux")],
            false,
            1,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("lies under the jail's mount point"), "{e}");
        let rel = relative(&assets).unwrap();
        let targets: Vec<&CStr> = j.binds.iter().map(|b| b.target.as_c_str()).collect();
        let k = CString::new(rel.join("vmlinux").as_os_str().as_bytes()).unwrap();
        let i = CString::new(rel.join("initramfs.cpio").as_os_str().as_bytes()).unwrap();
        assert!(targets.starts_with(&[c"usr"]), "{targets:?}");
        assert!(
            targets.ends_with(&[k.as_c_str(), i.as_c_str()]),
            "{targets:?}"
        );
        let dir = CString::new(rel.as_os_str().as_bytes()).unwrap();
        assert_eq!(
            j.dirs.iter().filter(|d| **d == dir).count(),
            1,
            "{:?}",
            j.dirs
        );
        let devs: Vec<(&CStr, Option<u32>)> = j
            .devices
            .iter()
            .map(|d| (d.path.as_c_str(), d.gid))
            .collect();
        assert_eq!(
            devs,
            [
                (c"dev/null", None),
                (c"dev/urandom", None),
                (c"dev/kvm", Some(4242))
            ]
        );
        assert_eq!(j.id(), 4242);

        // A file only root may read is refused up front, not by QEMU's first open.
        use std::os::unix::fs::PermissionsExt;
        let secret = assets.join("vmlinux");
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
        let e = Jail::new(
            &mount_point,
            Path::new("/usr/bin/env"),
            &[&secret],
            false,
            1,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("only root may read it"), "{e}");
    }

    /// Enters a jail in a forked child (as QEMU's spawn does) and reports from inside it what
    /// the child can reach, its ids, and how long entering took.
    #[test]
    fn a_child_in_the_jail_sees_only_what_was_bound_as_its_id() {
        // SAFETY: geteuid(2) cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: entering the jail needs root");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let assets = tmp.path().join("assets");
        std::fs::create_dir_all(&assets).unwrap();
        let kernel = assets.join("vmlinux");
        std::fs::write(&kernel, b"kernel").unwrap();
        std::fs::write(tmp.path().join("secret"), b"x").unwrap();
        let root = tmp.path().join("jail");
        std::fs::create_dir(&root).unwrap();
        let jail = Jail::new(&root, Path::new("/usr/bin/env"), &[&kernel], false, 4243).unwrap();
        let secret = CString::new(tmp.path().join("secret").as_os_str().as_bytes()).unwrap();
        let kernel_c = CString::new(kernel.as_os_str().as_bytes()).unwrap();
        let mut pipe = [0; 2];
        // SAFETY: pipe(2) into a two-int array.
        assert_eq!(unsafe { libc::pipe(pipe.as_mut_ptr()) }, 0);
        let now = || {
            let mut ts = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            // SAFETY: clock_gettime(2) into a local; async-signal-safe.
            unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
            u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000
                + u64::try_from(ts.tv_nsec).unwrap_or(0)
        };
        // SAFETY: the child only makes system calls on values prepared before the fork (as a
        // pre_exec hook does) and leaves with _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let t0 = now();
            let entered = jail.enter().is_ok();
            let took = now().saturating_sub(t0);
            let exists = |p: &CStr| {
                // SAFETY: access(2) on a NUL-terminated path.
                unsafe { libc::access(p.as_ptr(), libc::F_OK) == 0 }
            };
            let readable = |p: &CStr| {
                // SAFETY: access(2) on a NUL-terminated path.
                unsafe { libc::access(p.as_ptr(), libc::R_OK) == 0 }
            };
            // SAFETY: getuid(2)/getgid(2) cannot fail.
            let ids = unsafe { (libc::getuid(), libc::getgid()) };
            let report: [u8; 9] = [
                u8::from(entered),
                u8::from(ids == (4243, 4243)),
                u8::from(exists(c"/usr/bin/env")),
                u8::from(readable(&kernel_c)),
                u8::from(exists(c"/dev/null")),
                u8::from(exists(c"/etc")),
                u8::from(exists(c"/proc/self")),
                u8::from(exists(&secret)),
                u8::from(exists(c"/dev/kvm")),
            ];
            let mut out = [0u8; 17];
            out[..9].copy_from_slice(&report);
            out[9..].copy_from_slice(&took.to_le_bytes());
            // SAFETY: write(2) of a local buffer, then _exit(2): no destructors in the child.
            unsafe {
                libc::write(pipe[1], out.as_ptr().cast(), out.len());
                libc::_exit(0);
            }
        }
        // SAFETY: closes our copy of the write end; reads into a local buffer; reaps the child.
        let (n, out) = unsafe {
            libc::close(pipe[1]);
            let mut out = [0u8; 17];
            let n = libc::read(pipe[0], out.as_mut_ptr().cast(), out.len());
            libc::close(pipe[0]);
            libc::waitpid(pid, std::ptr::null_mut(), 0);
            (n, out)
        };
        assert_eq!(n, 17);
        assert_eq!(
            out[..9],
            [1, 1, 1, 1, 1, 0, 0, 0, 0],
            "entered, ids, /usr, kernel, /dev/null | no /etc, /proc, VM dir file, /dev/kvm"
        );
        let took = u64::from_le_bytes(out[9..].try_into().unwrap());
        eprintln!("entering the jail took {} µs", took / 1000);
        assert!(took < 1_000_000_000, "{took} ns");
    }
}
