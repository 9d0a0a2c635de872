//! Storage that outlives one container: the runtime share (virtio-fs, where a pod's EROFS images
//! arrive after boot), the volume share (virtio-fs, read-write: the host paths containers bind)
//! and disks several containers use (a pod's ext4 upper disk). Each is mounted
//! on first use and kept until shutdown; image lowers are loop-mounted read-only.
//!
//! This is how containers reach a VM that is already running: neither QEMU `microvm` nor libkrun
//! can hot-add a disk, but a file that appears in the shared directory on the host is visible in
//! the guest at once, and a directory on an already attached disk costs nothing to create.

use std::fs;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Component, Path, PathBuf};
use std::sync::Mutex;

use msb_protocol::consts::{VOLUMES_FS_TAG, VOLUMES_MOUNT_POINT};
use msb_protocol::{DISKS_MOUNT_DIR, RUNTIME_FS_TAG, RUNTIME_MOUNT_POINT};

use crate::container::{disk_by_serial, ContainerError};
use crate::sys;

/// Mount points of shared storage, in mount order.
static MOUNTED: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

fn mounted() -> std::sync::MutexGuard<'static, Vec<PathBuf>> {
    MOUNTED.lock().unwrap_or_else(|e| e.into_inner())
}

fn io_err(what: String) -> impl FnOnce(io::Error) -> ContainerError {
    move |source| ContainerError::Io { what, source }
}

/// Refuses relative paths and `..`, so a path the host names cannot leave the place it names.
pub fn check_path(path: &str) -> Result<&Path, ContainerError> {
    let p = Path::new(path);
    if !p.is_absolute() || p.components().any(|c| matches!(c, Component::ParentDir)) {
        return Err(ContainerError::Unsupported(format!(
            "storage path {path:?} must be absolute and without \"..\""
        )));
    }
    Ok(p)
}

/// Whether `path` lies on a disk shared by the pod (under [`DISKS_MOUNT_DIR`]).
pub fn on_shared_disk(path: &Path) -> bool {
    path.starts_with(DISKS_MOUNT_DIR)
}

/// Mounts whatever `path` lives on, if it is shared storage not mounted yet: the runtime share
/// for paths under [`RUNTIME_MOUNT_POINT`], the disk `<serial>` for paths under
/// [`DISKS_MOUNT_DIR`]`/<serial>/`.
pub fn ensure_for(path: &Path) -> Result<(), ContainerError> {
    if path.starts_with(RUNTIME_MOUNT_POINT) {
        return ensure_mounted(Path::new(RUNTIME_MOUNT_POINT), || {
            sys::mount(
                Some(RUNTIME_FS_TAG),
                Path::new(RUNTIME_MOUNT_POINT),
                Some("virtiofs"),
                libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV,
                None,
            )
            .map_err(io_err(format!(
                "mount the runtime share {RUNTIME_FS_TAG} (virtiofs) on {RUNTIME_MOUNT_POINT}"
            )))
        });
    }
    if path.starts_with(VOLUMES_MOUNT_POINT) {
        return ensure_mounted(Path::new(VOLUMES_MOUNT_POINT), || {
            sys::mount(
                Some(VOLUMES_FS_TAG),
                Path::new(VOLUMES_MOUNT_POINT),
                Some("virtiofs"),
                libc::MS_NOSUID | libc::MS_NODEV,
                None,
            )
            .map_err(io_err(format!(
                "mount the volume share {VOLUMES_FS_TAG} (virtiofs) on {VOLUMES_MOUNT_POINT}"
            )))
        });
    }
    if let Ok(rest) = path.strip_prefix(DISKS_MOUNT_DIR) {
        let serial = match rest.components().next() {
            Some(Component::Normal(s)) => s.to_string_lossy().into_owned(),
            _ => {
                return Err(ContainerError::Unsupported(format!(
                    "{} names no disk serial after {DISKS_MOUNT_DIR}",
                    path.display()
                )))
            }
        };
        let target = Path::new(DISKS_MOUNT_DIR).join(&serial);
        return ensure_mounted(&target.clone(), || {
            let dev = disk_by_serial(&serial)?;
            sys::mount(
                dev.to_str(),
                &target,
                Some("ext4"),
                libc::MS_NOSUID | libc::MS_NODEV,
                None,
            )
            .map_err(io_err(format!(
                "mount ext4 {} (serial {serial}) on {}",
                dev.display(),
                target.display()
            )))
        });
    }
    Ok(())
}

fn ensure_mounted(
    target: &Path,
    mount: impl FnOnce() -> Result<(), ContainerError>,
) -> Result<(), ContainerError> {
    let mut list = mounted();
    if list.iter().any(|m| m == target) {
        return Ok(());
    }
    fs::create_dir_all(target).map_err(io_err(format!("mkdir {}", target.display())))?;
    mount()?;
    tracing::info!("mounted shared storage on {}", target.display());
    list.push(target.to_owned());
    Ok(())
}

/// `struct loop_info64` of `<linux/loop.h>`.
#[repr(C)]
struct LoopInfo64 {
    device: u64,
    inode: u64,
    rdevice: u64,
    offset: u64,
    sizelimit: u64,
    number: u32,
    encrypt_type: u32,
    encrypt_key_size: u32,
    flags: u32,
    file_name: [u8; 64],
    crypt_name: [u8; 64],
    encrypt_key: [u8; 32],
    init: [u64; 2],
}

impl LoopInfo64 {
    /// All fields zero.
    const ZERO: LoopInfo64 = LoopInfo64 {
        device: 0,
        inode: 0,
        rdevice: 0,
        offset: 0,
        sizelimit: 0,
        number: 0,
        encrypt_type: 0,
        encrypt_key_size: 0,
        flags: 0,
        file_name: [0; 64],
        crypt_name: [0; 64],
        encrypt_key: [0; 32],
        init: [0; 2],
    };
}

/// `struct loop_config` of `<linux/loop.h>`.
#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

/// The loop ioctls (`<linux/loop.h>`): nix has no safe wrapper for them, these give each one
/// its argument type.
mod ioctl {
    use super::LoopConfig;
    nix::ioctl_none_bad!(
        /// LOOP_CTL_GET_FREE: the number of a free loop device.
        loop_ctl_get_free,
        0x4C82
    );
    nix::ioctl_write_ptr_bad!(
        /// LOOP_CONFIGURE: binds a file to the loop device, with its settings.
        loop_configure,
        0x4C0A,
        LoopConfig
    );
}

const LO_FLAGS_READ_ONLY: u32 = 1;
const LO_FLAGS_AUTOCLEAR: u32 = 4;

/// A loop device bound to an image; keep it until the device is mounted.
#[derive(Debug)]
pub struct LoopDevice {
    /// `/dev/loopN`.
    pub path: PathBuf,
    /// The open device: with `LO_FLAGS_AUTOCLEAR` the binding ends at the last close, so this
    /// must outlive the mount call, which then holds the device.
    _open: fs::File,
}

/// Binds `image` read-only to a free loop device. The device frees itself when its last user
/// (the mount) goes away (`LO_FLAGS_AUTOCLEAR`).
pub fn loop_attach(image: &Path) -> Result<LoopDevice, ContainerError> {
    let file = sys::open_ro(image).map_err(io_err(format!("open image {}", image.display())))?;
    let control = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/loop-control")
        .map_err(io_err(
            "open /dev/loop-control (is the loop module loaded?)".into(),
        ))?;
    // Another attach may take the device between GET_FREE and CONFIGURE: try again.
    for _ in 0..8 {
        // SAFETY: LOOP_CTL_GET_FREE takes no argument and returns a device number.
        let n = unsafe { ioctl::loop_ctl_get_free(control.as_raw_fd()) }
            .map_err(io::Error::from)
            .map_err(io_err("find a free loop device".into()))?;
        let dev = PathBuf::from(format!("/dev/loop{n}"));
        let loopdev = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&dev)
            .map_err(io_err(format!("open {}", dev.display())))?;
        let config = LoopConfig {
            // An open descriptor is not negative (u32::MAX would make the ioctl fail, EBADF).
            fd: u32::try_from(file.as_raw_fd()).unwrap_or(u32::MAX),
            block_size: 0,
            info: LoopInfo64 {
                flags: LO_FLAGS_READ_ONLY | LO_FLAGS_AUTOCLEAR,
                ..LoopInfo64::ZERO
            },
            reserved: [0; 8],
        };
        // SAFETY: LOOP_CONFIGURE reads a `struct loop_config` that lives across the call.
        match unsafe { ioctl::loop_configure(loopdev.as_raw_fd(), &config) }
            .map_err(io::Error::from)
        {
            Ok(_) => {
                return Ok(LoopDevice {
                    path: dev,
                    _open: loopdev,
                })
            }
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => continue,
            Err(e) => {
                return Err(ContainerError::Io {
                    what: format!("attach {} to {}", image.display(), dev.display()),
                    source: e,
                })
            }
        }
    }
    Err(ContainerError::Unsupported(format!(
        "no free loop device for {} after 8 tries",
        image.display()
    )))
}

/// Unmounts shared storage, newest first; a disk that will not unmount is at least remounted
/// read-only so its journal is clean.
pub fn teardown_all() {
    let mut list = mounted();
    while let Some(m) = list.pop() {
        if let Err(e) = sys::umount(&m, 0) {
            tracing::warn!("umount {}: {e}", m.display());
            let _ = sys::mount(None, &m, None, libc::MS_REMOUNT | libc::MS_RDONLY, None);
            let _ = sys::umount(&m, libc::MNT_DETACH);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_must_be_absolute_without_parent_components() {
        assert!(check_path("/run/msb/disks/upper/c/a").is_ok());
        assert!(check_path("relative").is_err());
        assert!(check_path("/run/msb/disks/upper/../../etc").is_err());
    }

    #[test]
    fn loop_config_has_the_kernel_layout() {
        assert_eq!(std::mem::size_of::<LoopInfo64>(), 232);
        assert_eq!(std::mem::size_of::<LoopConfig>(), 304);
    }

    #[test]
    fn shared_disk_paths() {
        assert!(on_shared_disk(Path::new("/run/msb/disks/upper/c/x")));
        assert!(!on_shared_disk(Path::new("/run/msb/c/x")));
        assert!(ensure_for(Path::new("/somewhere/else")).is_ok());
    }
}
