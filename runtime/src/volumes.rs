//! Host volumes of a VM: host directories and files that containers bind (CRI's hostPath,
//! emptyDir, configMap, secret and projected volumes, Docker's `-v`), served to the guest by one
//! read-write virtio-fs share per VM, [`VOLUMES_FS_TAG`].
//!
//! A share's devices exist from boot (no hotplug on QEMU's `microvm`), while a pod's volumes
//! arrive with its later containers, so the share is a directory into which the host bind-mounts
//! each volume when its container is created, as Kata does:
//!
//! ```text
//! <vm dir>/volumes.d/                   host-private; the host makes <container>/<n> here
//! <vm dir>/volumes/                     read-only bind of volumes.d: what the share serves
//! <vm dir>/volumes/<container>/<n>      a bind of the volume's host path (read-only if `ro`,
//!                                       nosuid and nodev always)
//! ```
//!
//! The view is the master of a peer group of its own: a VMM that runs in a mount namespace of its
//! own (krun's, a slave copy) receives the volumes of containers created after it started.
//!
//! The guest writes through the share, so the host must never act by path in anything the
//! guest can write. It can write only inside the volumes themselves: the tree around them is
//! served through a read-only mount, so a guest cannot plant a symlink where the host later
//! creates or mounts. The host never creates, opens or removes anything inside a volume.
//! Secrets and configMaps (tmpfs on the node) are bound, never copied to disk.
//!
//! Removing a VM directory must not descend into a bound volume (that would delete the user's
//! files): [`unmount_under`] detaches every mount below a directory first, also after a crash.

use std::io;
use std::path::{Path, PathBuf};

use msb_protocol::consts::VOLUMES_MOUNT_POINT;
use nix::mount::{MntFlags, MsFlags};

use crate::vmm::ShareSpec;

pub use msb_protocol::consts::VOLUMES_FS_TAG;

/// Why a volume could not be provided.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// A step on the host failed; `what` names it and its paths.
    #[error("{what}")]
    Io {
        /// The step.
        what: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The host path is neither a directory nor a regular file.
    #[error("host path {0} is neither a directory nor a regular file")]
    NotShareable(PathBuf),
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> VolumeError {
    let what = what.into();
    move |source| VolumeError::Io { what, source }
}

fn nix_err(what: impl Into<String>) -> impl FnOnce(nix::Error) -> VolumeError {
    let what = what.into();
    move |e| VolumeError::Io {
        what,
        source: io::Error::from(e),
    }
}

/// The volume share of one VM.
#[derive(Debug)]
pub struct VolumeShare {
    /// Host-private tree where the host creates mount points.
    private: PathBuf,
    /// The read-only view of it that the share serves, where volumes are mounted.
    view: PathBuf,
}

/// How mounts made on the host inside a volume after it was bound reach the container, as
/// the OCI options `rprivate`, `rslave` and `rshared` say under runc (applied to the volume's
/// bind on the host, which virtio-fs then serves). Mounts made in the container never reach
/// the host: there is no way back through virtio-fs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Propagation {
    /// `rprivate` (CRI's default): later host mounts inside the volume are not seen.
    #[default]
    Private,
    /// `rslave`: later host mounts inside the volume are seen.
    Slave,
    /// `rshared`: as `rslave` for host to container (the other way does not exist here).
    Shared,
}

impl Propagation {
    /// From a mount's options: the last propagation option wins, none is `rprivate`.
    pub fn from_options<S: AsRef<str>>(options: &[S]) -> Propagation {
        options
            .iter()
            .filter_map(|o| match o.as_ref() {
                "rprivate" | "private" => Some(Propagation::Private),
                "rslave" | "slave" => Some(Propagation::Slave),
                "rshared" | "shared" => Some(Propagation::Shared),
                _ => None,
            })
            .last()
            .unwrap_or_default()
    }
}

/// A host path a container binds (OCI `mounts[]` of type `bind`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostVolume {
    /// The host path; symlinks in it are followed, as runc does.
    pub source: PathBuf,
    /// Bind its submounts too (`rbind`).
    pub recursive: bool,
    /// Read-only (`ro`): the bind itself, not mounts inside it, as runc's.
    pub read_only: bool,
    /// How later host mounts inside it propagate.
    pub propagation: Propagation,
}

/// A volume bound into the share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedVolume {
    /// Where the guest finds it (under [`VOLUMES_MOUNT_POINT`]).
    pub guest_path: String,
    /// Whether it is a directory (else a regular file).
    pub is_dir: bool,
}

impl VolumeShare {
    /// Lays out the share under `vm_dir` and returns it with the share the VM boots with.
    pub fn prepare(vm_dir: &Path) -> Result<(VolumeShare, ShareSpec), VolumeError> {
        let private = vm_dir.join("volumes.d");
        let view = vm_dir.join("volumes");
        for d in [&private, &view] {
            crate::private::create_dir(d).map_err(io_err(format!("create {}", d.display())))?;
        }
        let share = VolumeShare { private, view };
        nix::mount::mount(
            Some(&share.private),
            &share.view,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(nix_err(format!(
            "bind {} on {}",
            share.private.display(),
            share.view.display()
        )))?;
        // Volumes mounted on the view stay here: they do not propagate to the peers of the
        // file system the VM directory is on (a shared `/`, as systemd makes it).
        nix::mount::mount(
            None::<&str>,
            &share.view,
            None::<&str>,
            MsFlags::MS_PRIVATE,
            None::<&str>,
        )
        .map_err(nix_err(format!("make {} private", share.view.display())))?;
        // ... and then the master of its own peer group: a VMM in a mount namespace of its own
        // (krun's, a slave of the host's) still receives the volumes of containers created
        // after it started.
        nix::mount::mount(
            None::<&str>,
            &share.view,
            None::<&str>,
            MsFlags::MS_SHARED,
            None::<&str>,
        )
        .map_err(nix_err(format!("make {} shared", share.view.display())))?;
        // A guest writes only inside the volumes mounted on this view, never around them.
        let ro = MsFlags::MS_BIND
            | MsFlags::MS_REMOUNT
            | MsFlags::MS_RDONLY
            | MsFlags::MS_NOSUID
            | MsFlags::MS_NODEV;
        if let Err(e) = nix::mount::mount(None::<&str>, &share.view, None::<&str>, ro, None::<&str>)
        {
            let _ = nix::mount::umount2(&share.view, MntFlags::MNT_DETACH);
            return Err(nix_err(format!("make {} read-only", share.view.display()))(
                e,
            ));
        }
        let spec = ShareSpec {
            tag: VOLUMES_FS_TAG.to_owned(),
            host_path: share.view.clone(),
            read_only: false,
        };
        Ok((share, spec))
    }

    /// Binds `volume` as volume `index` of `container` (a read-only one fails writes with
    /// EROFS on the host's side, which virtio-fs hands to the guest).
    ///
    /// `container` must be a valid id (no `/`, not `.` or `..`): the caller checks ids.
    pub fn add(
        &self,
        container: &str,
        index: usize,
        volume: &HostVolume,
    ) -> Result<SharedVolume, VolumeError> {
        let (source, recursive, read_only) = (&volume.source, volume.recursive, volume.read_only);
        let md = std::fs::metadata(source).map_err(io_err(format!(
            "host path {} of volume {index}",
            source.display()
        )))?;
        let is_dir = md.is_dir();
        if !is_dir && !md.is_file() {
            return Err(VolumeError::NotShareable(source.to_owned()));
        }
        let dir = self.private.join(container);
        crate::private::create_dir(&dir).map_err(io_err(format!("create {}", dir.display())))?;
        let point = dir.join(index.to_string());
        if is_dir {
            crate::private::create_dir(&point)
        } else {
            crate::private::create_file(&point).map(drop)
        }
        .map_err(io_err(format!("create {}", point.display())))?;
        let target = self.view.join(container).join(index.to_string());
        attach_bind(source, &target, recursive, read_only).map_err(io_err(format!(
            "bind {} on {}",
            source.display(),
            target.display()
        )))?;
        let propagation = match volume.propagation {
            Propagation::Private => MsFlags::MS_PRIVATE,
            Propagation::Slave => MsFlags::MS_SLAVE,
            // A bind of a shared mount is already its peer.
            Propagation::Shared => MsFlags::empty(),
        };
        if !propagation.is_empty() {
            if let Err(e) = nix::mount::mount(
                None::<&str>,
                &target,
                None::<&str>,
                propagation | MsFlags::MS_REC,
                None::<&str>,
            ) {
                let _ = nix::mount::umount2(&target, MntFlags::MNT_DETACH);
                return Err(nix_err(format!(
                    "set the propagation of {}",
                    target.display()
                ))(e));
            }
        }
        Ok(SharedVolume {
            guest_path: format!("{VOLUMES_MOUNT_POINT}/{container}/{index}"),
            is_dir,
        })
    }

    /// Unbinds every volume of `container` and removes its mount points.
    pub fn remove(&self, container: &str) -> Result<(), VolumeError> {
        unmount_under(&self.view.join(container))
            .map_err(io_err(format!("unmount the volumes of {container}")))?;
        let dir = self.private.join(container);
        match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                Err(io_err(format!("remove {}", dir.display()))(e))
            }
            _ => Ok(()),
        }
    }
}

impl Drop for VolumeShare {
    fn drop(&mut self) {
        if let Err(e) = unmount_under(&self.view) {
            tracing::warn!("unmount volumes under {}: {e}", self.view.display());
        }
    }
}

/// Detaches every mount at or below `dir` (deepest first), so that removing `dir` afterwards
/// cannot reach into a bound host directory. Mounts are read from `/proc/self/mountinfo`.
pub fn unmount_under(dir: &Path) -> io::Result<()> {
    let mut points: Vec<PathBuf> = mount_points(&std::fs::read_to_string("/proc/self/mountinfo")?)
        .into_iter()
        .filter(|p| p.starts_with(dir))
        .collect();
    // Deeper first; a path mounted several times is listed (and detached) as often.
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    let mut first_err = None;
    for p in points {
        match nix::mount::umount2(&p, MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => {}
            Err(e) => {
                first_err.get_or_insert(io::Error::other(format!("umount {}: {e}", p.display())));
            }
        }
    }
    first_err.map_or(Ok(()), Err)
}

/// Removes `dir` and everything in it, after detaching the mounts below it ([`unmount_under`]).
pub fn remove_tree(dir: &Path) -> io::Result<()> {
    unmount_under(dir)?;
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// The mount points of a `mountinfo` text (field 5), with the kernel's octal escapes
/// (`\040` for a space, `\011`, `\012`, `\134`) undone.
fn mount_points(mountinfo: &str) -> Vec<PathBuf> {
    use std::os::unix::ffi::OsStringExt;
    mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|escaped| {
            let b = escaped.as_bytes();
            let mut out = Vec::with_capacity(b.len());
            let mut i = 0;
            while i < b.len() {
                let octal = b
                    .get(i + 1..i + 4)
                    .filter(|d| b[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
                match octal {
                    Some(d) => {
                        out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                        i += 4;
                    }
                    None => {
                        out.push(b[i]);
                        i += 1;
                    }
                }
            }
            PathBuf::from(std::ffi::OsString::from_vec(out))
        })
        .collect()
}

/// Binds `source` on `target` (its submounts too when `recursive`) as one finished mount: the
/// bind is made detached (`open_tree`), given its flags there (`mount_setattr`: read-only on
/// the bind itself when asked, as runc's `ro`; `nosuid` and `nodev` throughout), and only then
/// attached (`move_mount`). A copy that propagates to a VMM's own mount namespace is a copy of
/// the finished mount; a remount after attaching would change only the host's copy, leaving a
/// read-only volume writable there. `nodev`: a device node a guest makes in a volume must not
/// open the host's device when the host serves it; `nosuid`: nor give a host user privileges.
fn attach_bind(source: &Path, target: &Path, recursive: bool, read_only: bool) -> io::Result<()> {
    use std::ffi::CString;
    use std::os::fd::{FromRawFd, OwnedFd};
    use std::os::unix::ffi::OsStrExt;

    let cpath = |p: &Path| {
        CString::new(p.as_os_str().as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL in a path"))
    };
    let (source, target) = (cpath(source)?, cpath(target)?);
    let mut flags = libc::OPEN_TREE_CLONE | u32::try_from(libc::O_CLOEXEC).unwrap_or(0);
    if recursive {
        flags |= u32::try_from(libc::AT_RECURSIVE).unwrap_or(0);
    }
    // SAFETY: open_tree(2) with a NUL-terminated path; it returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, source.as_ptr(), flags) };
    let fd =
        i32::try_from(fd).map_err(|_| io::Error::other("open_tree: a descriptor out of range"))?;
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by open_tree and is owned by nothing else.
    let tree = unsafe { OwnedFd::from_raw_fd(fd) };
    let empty = c"";
    let set = |attr_set: u64, all: bool| -> io::Result<()> {
        let attr = libc::mount_attr {
            attr_set,
            attr_clr: 0,
            propagation: 0,
            userns_fd: 0,
        };
        let mut at = libc::AT_EMPTY_PATH;
        if all {
            at |= libc::AT_RECURSIVE;
        }
        // SAFETY: mount_setattr(2) on the detached tree's descriptor, an empty NUL-terminated
        // path with AT_EMPTY_PATH, and a `mount_attr` of the size passed.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_mount_setattr,
                std::os::fd::AsRawFd::as_raw_fd(&tree),
                empty.as_ptr(),
                at,
                std::ptr::from_ref(&attr),
                std::mem::size_of::<libc::mount_attr>(),
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    };
    set(libc::MOUNT_ATTR_NOSUID | libc::MOUNT_ATTR_NODEV, true)?;
    if read_only {
        set(libc::MOUNT_ATTR_RDONLY, false)?;
    }
    // SAFETY: move_mount(2) from the detached tree (empty path) onto a NUL-terminated target.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            std::os::fd::AsRawFd::as_raw_fd(&tree),
            empty.as_ptr(),
            libc::AT_FDCWD,
            target.as_ptr(),
            libc::MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn propagation_follows_the_last_option() {
        assert_eq!(Propagation::from_options::<&str>(&[]), Propagation::Private);
        assert_eq!(
            Propagation::from_options(&["rbind", "rslave", "ro"]),
            Propagation::Slave
        );
        assert_eq!(
            Propagation::from_options(&["rprivate", "rshared"]),
            Propagation::Shared
        );
    }

    #[test]
    fn mountinfo_points_are_unescaped() {
        let info = "22 1 0:21 / / rw,relatime shared:1 - ext4 /dev/vda1 rw\n\
                    90 22 0:50 / /run/a\\040b rw - tmpfs tmpfs rw\n\
                    91 22 0:51 / /run/back\\134slash rw - tmpfs tmpfs rw\n";
        assert_eq!(
            mount_points(info),
            [
                PathBuf::from("/"),
                PathBuf::from("/run/a b"),
                PathBuf::from("/run/back\\slash")
            ]
        );
    }

    /// Whether we are root; else the test is skipped, loudly (a failure under
    /// `MSB_REQUIRE_GUESTS=1`, as CI runs, like test-e2e's `require`).
    fn root() -> bool {
        let root = nix::unistd::geteuid().is_root();
        if !root {
            assert_ne!(
                std::env::var("MSB_REQUIRE_GUESTS").as_deref(),
                Ok("1"),
                "needs root (bind mounts)"
            );
            eprintln!("SKIPPED: needs root (bind mounts)");
        }
        root
    }

    /// Through the share's view: the volume is there, both ways, read-only when asked; the tree
    /// around it is read-only; removing the container's volumes and the VM directory leaves the
    /// host's files in place.
    #[test]
    fn volumes_are_bound_into_a_read_only_view_and_unbound_without_touching_them() {
        if !root() {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let vm_dir = tmp.path().join("vm");
        let host = tmp.path().join("host");
        std::fs::create_dir_all(&host).unwrap();
        std::fs::write(host.join("data"), "host").unwrap();
        let file = tmp.path().join("config.yaml");
        std::fs::write(&file, "k: v").unwrap();
        crate::private::create_dir(&vm_dir).unwrap();

        let (share, spec) = VolumeShare::prepare(&vm_dir).unwrap();
        assert_eq!(spec.host_path, vm_dir.join("volumes"));
        assert!(!spec.read_only);
        let vol = |source: &Path, recursive, read_only| HostVolume {
            source: source.to_owned(),
            recursive,
            read_only,
            propagation: Propagation::Private,
        };
        let rw = share.add("c1", 0, &vol(&host, true, false)).unwrap();
        assert_eq!(
            rw,
            SharedVolume {
                guest_path: format!("{VOLUMES_MOUNT_POINT}/c1/0"),
                is_dir: true
            }
        );
        share.add("c1", 1, &vol(&host, false, true)).unwrap();
        let f = share.add("c1", 2, &vol(&file, false, true)).unwrap();
        assert!(!f.is_dir);
        let view = vm_dir.join("volumes");
        assert_eq!(
            std::fs::read_to_string(view.join("c1/0/data")).unwrap(),
            "host"
        );
        std::fs::write(view.join("c1/0/new"), "guest").unwrap();
        assert_eq!(std::fs::read_to_string(host.join("new")).unwrap(), "guest");
        let e = std::fs::write(view.join("c1/1/other"), "x").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{e}");
        assert_eq!(std::fs::read_to_string(view.join("c1/2")).unwrap(), "k: v");
        // Around the volumes, nothing can be made.
        let e = std::fs::create_dir(view.join("planted")).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{e}");
        let e = std::os::unix::fs::symlink("/etc", view.join("c2")).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{e}");

        share.remove("c1").unwrap();
        assert!(!vm_dir.join("volumes.d/c1").exists());
        share.add("c3", 0, &vol(&host, true, false)).unwrap();
        drop(share);
        remove_tree(&vm_dir).unwrap();
        assert!(!vm_dir.exists());
        assert_eq!(std::fs::read_to_string(host.join("data")).unwrap(), "host");
        assert_eq!(std::fs::read_to_string(host.join("new")).unwrap(), "guest");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "k: v");
    }

    /// A volume added after a VMM made its own mount namespace (krun's, a slave of ours)
    /// reaches it, read-only where asked, and no device node opens through it.
    #[test]
    fn a_later_volume_reaches_a_vmms_own_namespace_read_only_and_nodev() {
        if !root() {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let vm_dir = tmp.path().join("vm");
        let host = tmp.path().join("host");
        std::fs::create_dir_all(&host).unwrap();
        std::fs::write(host.join("data"), "host").unwrap();
        // A device node as a guest could make one in a read-write volume.
        nix::sys::stat::mknod(
            &host.join("null"),
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::from_bits_truncate(0o666),
            nix::sys::stat::makedev(1, 3),
        )
        .unwrap();
        crate::private::create_dir(&vm_dir).unwrap();
        let (share, _) = VolumeShare::prepare(&vm_dir).unwrap();
        // A process in a mount namespace of its own, a slave of ours: as msb-krun-vmm runs.
        let mut vmm = std::process::Command::new("unshare")
            .args(["--mount", "--propagation", "slave", "sleep", "60"])
            .spawn()
            .unwrap();
        let ours = std::fs::read_link("/proc/self/ns/mnt").unwrap();
        let ns = format!("/proc/{}/ns/mnt", vmm.id());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::fs::read_link(&ns)
            .ok()
            .as_ref()
            .is_none_or(|n| *n == ours)
        {
            assert!(
                std::time::Instant::now() < deadline,
                "unshare did not start"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let vol = |read_only| HostVolume {
            source: host.clone(),
            recursive: true,
            read_only,
            propagation: Propagation::Private,
        };
        share.add("c1", 0, &vol(true)).unwrap();
        share.add("c1", 1, &vol(false)).unwrap();
        let view = vm_dir.join("volumes");
        let inside = |script: &str| {
            let out = std::process::Command::new("nsenter")
                .args(["-t", &vmm.id().to_string(), "-m", "sh", "-c", script])
                .output()
                .unwrap();
            (
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
                out.status.code(),
            )
        };
        let v = view.display();
        // Added after the namespace was made, yet there; read-only there as here.
        let (out, err, code) = inside(&format!(
            "cat {v}/c1/0/data && echo; touch {v}/c1/0/new || echo refused"
        ));
        assert_eq!((out.as_str(), code), ("host\nrefused\n", Some(0)), "{err}");
        assert!(err.contains("Read-only file system"), "{err}");
        assert!(!host.join("new").exists());
        // Writable where it is not read-only, and no device opens through it.
        let (out, err, code) = inside(&format!(
            "touch {v}/c1/1/new && echo ok; head -c0 {v}/c1/1/null || echo refused"
        ));
        assert_eq!((out.as_str(), code), ("ok\nrefused\n", Some(0)), "{err}");
        assert!(err.contains("Permission denied"), "{err}");
        let e = std::fs::File::open(view.join("c1/1/null")).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EACCES), "{e}");
        vmm.kill().unwrap();
        vmm.wait().unwrap();
        drop(share);
        remove_tree(&vm_dir).unwrap();
        assert_eq!(std::fs::read_to_string(host.join("data")).unwrap(), "host");
    }

    /// A crash leaves volumes mounted: removing the VM directory detaches them first.
    #[test]
    fn removing_a_tree_with_mounted_volumes_keeps_the_hosts_files() {
        if !root() {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let vm_dir = tmp.path().join("vm");
        let host = tmp.path().join("host");
        std::fs::create_dir_all(&host).unwrap();
        std::fs::write(host.join("keep"), "1").unwrap();
        crate::private::create_dir(&vm_dir).unwrap();
        let (share, _) = VolumeShare::prepare(&vm_dir).unwrap();
        let volume = HostVolume {
            source: host.clone(),
            recursive: true,
            read_only: false,
            propagation: Propagation::Slave,
        };
        share.add("c", 0, &volume).unwrap();
        std::mem::forget(share); // as after a crash: nothing unmounted
        remove_tree(&vm_dir).unwrap();
        assert!(!vm_dir.exists());
        assert_eq!(std::fs::read_to_string(host.join("keep")).unwrap(), "1");
    }
}
