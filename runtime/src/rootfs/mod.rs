//! Containers' root file systems on the host: layer directories become cached read-only EROFS
//! images, and each VM gets them in one of two layouts. The shim and `msbox` both call this;
//! neither needs to know which backend runs the VM.
//!
//! - [`layer_cache`]: one EROFS image per layer directory, reused by every container of the same
//!   image, pruned once its layer is gone.
//! - [`single`]: a VM for one container, whose root is known when it boots: every layer image is
//!   a read-only disk and a fresh sparse ext4 upper is another (serial [`UPPER_SERIAL`]). The
//!   guest stacks them with overlayfs, which reads the snapshotter's whiteouts as they are.
//! - [`PodRootfs`]: a pod's VM, whose later containers arrive after boot (a running QEMU
//!   `microvm` takes no new disks): one pod upper disk (serial [`POD_DISK`]) on which each
//!   container's upper is a directory, and the runtime share (virtio-fs, tag
//!   [`RUNTIME_FS_TAG`]) of a per-pod directory into which each container's layer images are put;
//!   agentd loop-mounts them from there. The share is read-only where the backend can serve it so
//!   ([`BackendKind::serves_read_only_shares`]), and then holds hard links to the cache; otherwise
//!   the guest could write to it, so it holds copies (a link would let the guest change every
//!   pod's images).
//!
//! A guest-writable share is the guest's ground: the host never opens, creates or tests a path
//! in it. An image is copied into a host-private staging directory next to the share and moved
//! in with `renameat` between the two directories' descriptors, which replaces whatever entry
//! the guest left under that name (a symlink is replaced, never followed; a FIFO is never
//! opened); what is there is looked at with `fstatat(AT_SYMLINK_NOFOLLOW)` only.

pub mod layer_cache;

use std::path::{Path, PathBuf};

use msb_protocol::types::{RootfsSpec, StorageRef};
use msb_protocol::{DISKS_MOUNT_DIR, RUNTIME_FS_TAG, RUNTIME_MOUNT_POINT};

use crate::disks::{self, DiskError};
use crate::vmm::{BackendKind, DiskSpec, ShareSpec};

/// Serial of a single container's upper disk.
pub const UPPER_SERIAL: &str = "upper";

/// Serial of a pod's upper disk, which holds one upper directory per container.
pub const POD_DISK: &str = "pod";

/// Why a root file system could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    /// The container has no layers to stack.
    #[error("container {0}: no root file system layers")]
    NoLayers(String),
    /// An image could not be made.
    #[error(transparent)]
    Disk(#[from] DiskError),
    /// A file operation failed.
    #[error("{what} {}", path.display())]
    Io {
        /// What was done.
        what: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

impl RootfsError {
    /// A `map_err` adapter: `.map_err(RootfsError::io("create", &dir))`.
    pub fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> RootfsError {
        let path = path.to_path_buf();
        move |source| RootfsError::Io { what, path, source }
    }
}

/// The disks of a single container's VM and what the guest mounts as its root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SingleRootfs {
    /// The VM's disks: the layer images (read-only, serials `l0`, `l1`, ...), then the upper.
    pub disks: Vec<DiskSpec>,
    /// The container's root as the guest sees it.
    pub spec: RootfsSpec,
    /// The upper image, made here: the caller removes it with the container.
    pub upper: PathBuf,
}

/// Lays out a single container's VM: `images` (topmost first) as read-only disks and a fresh
/// sparse ext4 upper of `upper_size` bytes at `upper`.
pub fn single(
    container: &str,
    images: &[PathBuf],
    upper: &Path,
    upper_size: u64,
) -> Result<SingleRootfs, RootfsError> {
    if images.is_empty() {
        return Err(RootfsError::NoLayers(container.to_owned()));
    }
    if let Some(dir) = upper.parent() {
        crate::private::create_dir(dir).map_err(RootfsError::io("create", dir))?;
    }
    let mut disks = Vec::new();
    let mut lower = Vec::new();
    for (i, image) in images.iter().enumerate() {
        let serial = format!("l{i}");
        disks.push(DiskSpec {
            serial: serial.clone(),
            path: image.clone(),
            read_only: true,
        });
        lower.push(StorageRef::Serial(serial));
    }
    disks::make_upper(upper, upper_size)?;
    disks.push(DiskSpec {
        serial: UPPER_SERIAL.into(),
        path: upper.to_path_buf(),
        read_only: false,
    });
    Ok(SingleRootfs {
        disks,
        spec: RootfsSpec {
            lower,
            upper: StorageRef::Serial(UPPER_SERIAL.into()),
            fstype: "ext4".into(),
            readonly: false,
        },
        upper: upper.to_path_buf(),
    })
}

/// A pod VM's root file systems: its share directory, whether the share is read-only, and the
/// host-private directory where images are staged before they are moved into the share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodRootfs {
    share: PathBuf,
    staging: PathBuf,
    read_only: bool,
}

/// What a pod's VM boots with: the pod upper disk and the runtime share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodBoot {
    /// The pod upper disk.
    pub disks: Vec<DiskSpec>,
    /// The runtime share.
    pub shares: Vec<ShareSpec>,
}

impl PodRootfs {
    /// Prepares a pod's VM in `dir`, to be booted by `backend`: the share directory and a sparse
    /// ext4 pod disk of `upper_size` bytes, shared by every container of the pod.
    pub fn prepare(
        dir: &Path,
        backend: BackendKind,
        upper_size: u64,
    ) -> Result<(PodRootfs, PodBoot), RootfsError> {
        let share = dir.join("share");
        crate::private::create_dir(&share).map_err(RootfsError::io("create", &share))?;
        let staging = dir.join("share-staging");
        crate::private::create_dir(&staging).map_err(RootfsError::io("create", &staging))?;
        let upper = dir.join("pod-upper.ext4");
        disks::make_upper(&upper, upper_size)?;
        let read_only = backend.serves_read_only_shares();
        let boot = PodBoot {
            disks: vec![DiskSpec {
                serial: POD_DISK.into(),
                path: upper,
                read_only: false,
            }],
            shares: vec![ShareSpec {
                tag: RUNTIME_FS_TAG.into(),
                host_path: share.clone(),
                read_only,
            }],
        };
        Ok((
            PodRootfs {
                share,
                staging,
                read_only,
            },
            boot,
        ))
    }

    /// Puts `container`'s layer images (topmost first) into the running VM's share, where the
    /// guest finds them at once, and returns its root: those images under its own upper
    /// directory on the pod disk.
    pub fn add_container(
        &self,
        container: &str,
        images: &[PathBuf],
    ) -> Result<RootfsSpec, RootfsError> {
        if images.is_empty() {
            return Err(RootfsError::NoLayers(container.to_owned()));
        }
        let mut lower = Vec::new();
        let dirs = ShareDirs::open(&self.share, &self.staging)?;
        for image in images {
            let Some(name) = image.file_name() else {
                return Err(RootfsError::Io {
                    what: "share a layer image without a file name:",
                    path: image.clone(),
                    source: std::io::ErrorKind::InvalidInput.into(),
                });
            };
            let link = self.share.join(name);
            let shared = dirs
                .put(image, name, self.read_only)
                .map_err(RootfsError::io("share a layer image as", &link))?;
            if shared {
                tracing::debug!(image = %image.display(), "layer image shared");
            }
            lower.push(StorageRef::Image(format!(
                "{RUNTIME_MOUNT_POINT}/{}",
                name.to_string_lossy()
            )));
        }
        Ok(RootfsSpec {
            lower,
            upper: StorageRef::Dir(format!("{DISKS_MOUNT_DIR}/{POD_DISK}/c/{container}")),
            fstype: "ext4".into(),
            readonly: false,
        })
    }
}

/// The share and its staging directory, open: every step names an entry relative to one of
/// them and never resolves a path through the share.
struct ShareDirs {
    share: std::fs::File,
    staging: std::fs::File,
    staging_path: PathBuf,
}

impl ShareDirs {
    fn open(share: &Path, staging: &Path) -> Result<ShareDirs, RootfsError> {
        let open = |p: &Path| {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(p)
                .map_err(RootfsError::io("open", p))
        };
        Ok(ShareDirs {
            share: open(share)?,
            staging: open(staging)?,
            staging_path: staging.to_owned(),
        })
    }

    /// Puts `image` into the share as `name`, unless a regular file of that name is there
    /// already (an earlier container's); returns whether it put it. A read-only share gets a
    /// hard link to the cache (the guest cannot change it); a writable one a copy, staged on
    /// the host's side and renamed in, replacing whatever else the guest left under `name`.
    fn put(&self, image: &Path, name: &std::ffi::OsStr, read_only: bool) -> std::io::Result<bool> {
        use nix::sys::stat::{fstatat, SFlag};
        use std::os::fd::AsRawFd;
        let share = self.share.as_raw_fd();
        match fstatat(Some(share), name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFREG => {
                return Ok(false)
            }
            Ok(_) | Err(nix::errno::Errno::ENOENT) => {}
            Err(e) => return Err(e.into()),
        }
        if read_only {
            let linked = nix::unistd::linkat(
                None,
                image,
                Some(share),
                Path::new(name),
                nix::fcntl::AtFlags::empty(),
            );
            if linked.is_ok() {
                return Ok(true);
            }
        }
        // Staged under the same name in a directory only the host can reach, then moved.
        let staged = self.staging_path.join(name);
        let _ = std::fs::remove_file(&staged);
        std::fs::copy(image, &staged)?;
        crate::private::restrict(&staged, crate::private::FILE_MODE)?;
        nix::fcntl::renameat(Some(self.staging.as_raw_fd()), name, Some(share), name).inspect_err(
            |_| {
                let _ = std::fs::remove_file(&staged);
            },
        )?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn image(dir: &Path, name: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, name).unwrap();
        p
    }

    #[test]
    fn a_single_container_gets_its_layers_as_disks() {
        let tmp = tempfile::tempdir().unwrap();
        let images = [image(tmp.path(), "a.erofs"), image(tmp.path(), "b.erofs")];
        let upper = tmp.path().join("upper.ext4");
        let r = single("c1", &images, &upper, 64 << 20).unwrap();
        let serials: Vec<_> = r
            .disks
            .iter()
            .map(|d| (d.serial.as_str(), d.read_only))
            .collect();
        assert_eq!(serials, [("l0", true), ("l1", true), ("upper", false)]);
        assert_eq!(
            r.spec.lower,
            [
                StorageRef::Serial("l0".into()),
                StorageRef::Serial("l1".into())
            ]
        );
        assert_eq!(r.spec.upper, StorageRef::Serial("upper".into()));
        assert_eq!(std::fs::metadata(&upper).unwrap().len(), 64 << 20);
        let e = single("c1", &[], &upper, 64 << 20).unwrap_err();
        assert_eq!(e.to_string(), "container c1: no root file system layers");
    }

    #[test]
    fn a_pod_share_links_where_read_only_and_copies_where_not() {
        for (backend, linked) in [(BackendKind::Qemu, true), (BackendKind::Krun, false)] {
            let tmp = tempfile::tempdir().unwrap();
            let cache = tmp.path().join("cache");
            std::fs::create_dir(&cache).unwrap();
            let img = image(&cache, "0123.erofs");
            let dir = tmp.path().join("vm");
            let (pod, boot) = PodRootfs::prepare(&dir, backend, 64 << 20).unwrap();
            assert_eq!(boot.disks[0].serial, POD_DISK);
            assert_eq!(boot.shares[0].read_only, linked, "{backend}");
            let spec = pod.add_container("c2", std::slice::from_ref(&img)).unwrap();
            assert_eq!(
                spec.lower,
                [StorageRef::Image(format!(
                    "{RUNTIME_MOUNT_POINT}/0123.erofs"
                ))]
            );
            assert_eq!(
                spec.upper,
                StorageRef::Dir(format!("{DISKS_MOUNT_DIR}/pod/c/c2"))
            );
            let shared = dir.join("share/0123.erofs");
            assert_eq!(std::fs::read(&shared).unwrap(), b"0123.erofs");
            let same_inode =
                std::fs::metadata(&shared).unwrap().ino() == std::fs::metadata(&img).unwrap().ino();
            assert_eq!(same_inode, linked, "{backend}");
        }
    }

    /// What a hostile guest can leave in a writable (krun) share: a symlink to a host file
    /// under the staging name the old code used (which made the root shim write through it), a
    /// FIFO there (which hung it), and a symlink under an image's own name. The host's file
    /// stays as it was, Create does not hang, and every image arrives whole.
    #[test]
    fn what_a_guest_plants_in_a_writable_share_changes_nothing_outside_it() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = tmp.path().join("cache");
        std::fs::create_dir(&cache).unwrap();
        let images = [
            image(&cache, "0123.erofs"),
            image(&cache, "4567.erofs"),
            image(&cache, "89ab.erofs"),
        ];
        let victim = tmp.path().join("authorized_keys");
        std::fs::write(&victim, "the host's own").unwrap();
        let dir = tmp.path().join("vm");
        let (pod, _) = PodRootfs::prepare(&dir, BackendKind::Krun, 64 << 20).unwrap();
        let share = dir.join("share");
        std::os::unix::fs::symlink(&victim, share.join("0123.partial")).unwrap();
        nix::unistd::mkfifo(&share.join("4567.partial"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        std::os::unix::fs::symlink(&victim, share.join("89ab.erofs")).unwrap();

        let (tx, rx) = std::sync::mpsc::channel();
        let p = pod.clone();
        std::thread::spawn(move || tx.send(p.add_container("c3", &images).map(drop)));
        let done = rx.recv_timeout(std::time::Duration::from_secs(10));
        assert!(
            matches!(done, Ok(Ok(()))),
            "add_container with planted entries: {done:?}"
        );
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "the host's own");
        for name in ["0123.erofs", "4567.erofs", "89ab.erofs"] {
            let p = share.join(name);
            let meta = std::fs::symlink_metadata(&p).unwrap();
            assert!(meta.file_type().is_file(), "{name}: {:?}", meta.file_type());
            assert_eq!(std::fs::read(&p).unwrap(), name.as_bytes());
        }
        assert_eq!(
            std::fs::read_dir(dir.join("share-staging"))
                .unwrap()
                .count(),
            0
        );
    }
}
