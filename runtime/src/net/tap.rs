//! A TAP device for the VMM, created in the calling thread's network namespace.
//!
//! `IFF_TAP|IFF_NO_PI|IFF_VNET_HDR`: Ethernet frames, no packet-information prefix, and the
//! virtio-net header QEMU's virtio-net device exchanges with the kernel (checksum and
//! segmentation offloads pass through). Not persistent: the device exists as long as a
//! descriptor of it is open, so it goes when the VMM (which inherits it) and the shim are gone,
//! a crash included.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;

/// `TUNSETIFF`: creates (or attaches to) the device the `ifreq` names, with its flags.
fn tunsetiff(fd: &OwnedFd, req: &libc::ifreq) -> io::Result<()> {
    // SAFETY: TUNSETIFF reads (and on success writes back) one `ifreq`, which we own and which
    // lives across the call; `fd` is an open descriptor of /dev/net/tun.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, std::ptr::from_ref(req)) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Creates the TAP `name` in this thread's network namespace and returns its descriptor
/// (close-on-exec; whoever hands it to a VMM clears that for the VMM only).
pub fn create(name: &str) -> io::Result<OwnedFd> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("TAP name {name:?}: 1 to 15 bytes"),
        ));
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/net/tun")?;
    let fd = OwnedFd::from(file);
    // SAFETY: an all-zero ifreq is a valid value (empty name, zero flags).
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.as_bytes()) {
        *dst = libc::c_char::from_ne_bytes([*src]);
    }
    let flags = libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR;
    req.ifr_ifru.ifru_flags = libc::c_short::try_from(flags)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "TAP flags exceed a short"))?;
    tunsetiff(&fd, &req)?;
    Ok(fd)
}
