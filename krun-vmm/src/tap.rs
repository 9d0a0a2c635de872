//! The pod network's TAP, served to libkrun's virtio-net device from an inherited descriptor.
//!
//! The runtime makes the TAP inside the pod's network namespace (`msb_runtime::net`) and hands
//! its descriptor over as fd 4; this process runs in the host's namespace. `msb_krun`'s
//! `NetBuilder` takes a TAP only by name (it opens `/dev/net/tun` and attaches with
//! `TUNSETIFF`, in the VMM's namespace, where no such TAP exists), or a unixgram/unixstream
//! socket speaking passt's or gvproxy's framing (which would need a forwarder process between
//! the TAP and the VMM), or any `Box<dyn NetBackend>` through `custom`. [`TapFd`] is the last:
//! the same reads and writes as `msb_krun`'s own TAP backend, on the descriptor we were given.
//!
//! What libkrun's net worker (`msb_krun_devices`, `virtio/net/worker.rs`) expects of a backend,
//! and so what the TAP is set to here:
//! - each `read_frame` returns one frame preceded by a 12-byte `virtio_net_hdr_v1`, which goes
//!   to the guest as it is, and `write_frame` gets the guest's frame with that header in front:
//!   the TAP's vnet header size becomes 12 (`TUNSETVNETHDRSZ`; the kernel's default, 10, is the
//!   legacy header of pre-1.0 virtio, and the device negotiates `VIRTIO_F_VERSION_1`);
//! - libkrun offers the guest no offload (the device's features are 0), so the header must
//!   never ask for one: no TAP offloads (`TUNSETOFFLOAD` 0), and the kernel finishes checksums
//!   and segmentation before a frame reaches us;
//! - the descriptor is polled edge-triggered and read until it would block: non-blocking.
//!
//! The runtime opens the TAP with `IFF_TAP|IFF_NO_PI|IFF_VNET_HDR` (checked here, with
//! `TUNGETIFF`, before anything else), brings it up and redirects it to and from the pod
//! interface; this side changes nothing of that.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use msb_krun::backends::net::{NetBackend, ReadError, WriteError};

/// `sizeof(struct virtio_net_hdr_v1)`: the header libkrun's worker puts before every frame.
pub const VNET_HDR_LEN: libc::c_int = 12;

/// The inherited descriptor is not a TAP this backend can serve.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// Nothing is open at that number.
    #[error("no pod TAP on fd {0}: the microsandbox runtime passes it there when the LaunchConfig names a network")]
    NotOpen(RawFd),
    /// Open, but no TAP of the kind the runtime makes.
    #[error("fd {fd} ({what}) is not a TAP opened with IFF_TAP|IFF_NO_PI|IFF_VNET_HDR")]
    NotTap {
        /// The descriptor.
        fd: RawFd,
        /// What it is instead (its `/proc/self/fd` link, or its TAP flags).
        what: String,
    },
    /// A TAP ioctl failed.
    #[error("TAP on fd {fd}: {what}")]
    Ioctl {
        /// The descriptor.
        fd: RawFd,
        /// The request.
        what: &'static str,
        /// The kernel's answer.
        #[source]
        source: std::io::Error,
    },
}

/// What [`describe`] found on a descriptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TapInfo {
    /// The TAP's name (in its own network namespace).
    pub name: String,
}

impl std::fmt::Display for TapInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TAP {} (IFF_TAP|IFF_NO_PI|IFF_VNET_HDR)", self.name)
    }
}

/// Whether `fd` is open.
fn is_open(fd: RawFd) -> bool {
    nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFD).is_ok()
}

/// The TAP on `fd`, without taking or changing it: that it is open and a TAP with the flags the
/// runtime uses, and its name. (`msb-krun-vmm --check` prints it.)
pub fn describe(fd: RawFd) -> Result<TapInfo, TapError> {
    if !is_open(fd) {
        return Err(TapError::NotOpen(fd));
    }
    let what = || {
        std::fs::read_link(format!("/proc/self/fd/{fd}"))
            .map_or_else(|_| "?".to_owned(), |p| p.display().to_string())
    };
    // SAFETY: an all-zero ifreq is a valid value (empty name, zero flags).
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    // SAFETY: TUNGETIFF writes one `ifreq`, which we own and which lives across the call; on a
    // descriptor that is no TAP the kernel refuses the request (EBADFD/ENOTTY/EINVAL) and
    // writes nothing.
    let r = unsafe { libc::ioctl(fd, libc::TUNGETIFF, std::ptr::from_mut(&mut req)) };
    if r < 0 {
        return Err(TapError::NotTap { fd, what: what() });
    }
    // SAFETY: TUNGETIFF filled the flags member of the union.
    let flags = i32::from(unsafe { req.ifr_ifru.ifru_flags });
    let want = libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR;
    if flags & (libc::IFF_TUN | libc::IFF_TAP) != libc::IFF_TAP || flags & want != want {
        return Err(TapError::NotTap {
            fd,
            what: format!("{}, flags {flags:#x}", what()),
        });
    }
    let name: Vec<u8> = req
        .ifr_name
        .iter()
        .take_while(|c| **c != 0)
        .map(|c| c.to_ne_bytes()[0])
        .collect();
    Ok(TapInfo {
        name: String::from_utf8_lossy(&name).into_owned(),
    })
}

/// The pod's TAP as a `msb_krun` network backend.
#[derive(Debug)]
pub struct TapFd {
    file: File,
    name: String,
}

impl TapFd {
    /// Takes the TAP on `fd` (checked with [`describe`]) and sets it up for libkrun's worker:
    /// a 12-byte vnet header, no offloads, non-blocking. The descriptor closes with the
    /// backend; a descriptor that is no TAP is closed and refused.
    pub fn new(fd: OwnedFd) -> Result<TapFd, TapError> {
        let raw = fd.as_raw_fd();
        let info = describe(raw)?;
        let ioctl_err = |what| {
            move |source| TapError::Ioctl {
                fd: raw,
                what,
                source,
            }
        };
        // SAFETY: TUNSETVNETHDRSZ reads one c_int, which lives across the call; `raw` is the
        // open TAP `fd` owns.
        let r = unsafe {
            libc::ioctl(
                raw,
                libc::TUNSETVNETHDRSZ,
                std::ptr::from_ref(&VNET_HDR_LEN),
            )
        };
        if r < 0 {
            return Err(ioctl_err("set the vnet header size (TUNSETVNETHDRSZ)")(
                std::io::Error::last_os_error(),
            ));
        }
        // SAFETY: TUNSETOFFLOAD takes its flags by value (0: no offload); `raw` is the open TAP
        // `fd` owns.
        let r = unsafe { libc::ioctl(raw, libc::TUNSETOFFLOAD, libc::c_ulong::from(0_u8)) };
        if r < 0 {
            return Err(ioctl_err("turn offloads off (TUNSETOFFLOAD)")(
                std::io::Error::last_os_error(),
            ));
        }
        let fl = nix::fcntl::fcntl(raw, nix::fcntl::FcntlArg::F_GETFL)
            .map_err(|e| ioctl_err("read its flags (F_GETFL)")(e.into()))?;
        let fl = nix::fcntl::OFlag::from_bits_truncate(fl) | nix::fcntl::OFlag::O_NONBLOCK;
        nix::fcntl::fcntl(raw, nix::fcntl::FcntlArg::F_SETFL(fl))
            .map_err(|e| ioctl_err("make it non-blocking (F_SETFL)")(e.into()))?;
        Ok(TapFd {
            file: File::from(fd),
            name: info.name,
        })
    }

    /// The TAP's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// The `Errno` of msb_krun's nix, for its `Internal` errors.
fn krun_errno(e: &std::io::Error) -> nix_krun::errno::Errno {
    nix_krun::errno::Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))
}

fn would_block(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::WouldBlock
}

impl NetBackend for TapFd {
    /// One frame with its vnet header, or `NothingRead` once the TAP's queue is empty.
    fn read_frame(&mut self, buf: &mut [u8]) -> Result<usize, ReadError> {
        loop {
            match (&self.file).read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) if would_block(&e) => return Err(ReadError::NothingRead),
                Err(e) => return Err(ReadError::Internal(krun_errno(&e))),
            }
        }
    }

    /// One frame with its vnet header: a TAP takes a frame whole or not at all.
    fn write_frame(&mut self, _hdr_len: usize, buf: &mut [u8]) -> Result<(), WriteError> {
        loop {
            match (&self.file).write(buf) {
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) if would_block(&e) => return Err(WriteError::NothingWritten),
                Err(e) => return Err(WriteError::Internal(krun_errno(&e))),
            }
        }
    }

    fn has_unfinished_write(&self) -> bool {
        false
    }

    fn try_finish_write(&mut self, _hdr_len: usize, _buf: &[u8]) -> Result<(), WriteError> {
        // Never a partial write (see `write_frame`).
        Ok(())
    }

    /// Every operation ends at a frame boundary, as with `msb_krun`'s own TAP backend.
    fn supports_quiesce(&self) -> bool {
        true
    }

    fn raw_socket_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_descriptor_that_is_no_tap_is_refused_with_what_it_is() {
        let f = tempfile::tempfile().unwrap();
        let e = describe(f.as_raw_fd()).unwrap_err();
        assert!(matches!(e, TapError::NotTap { .. }), "{e}");
        assert!(e.to_string().contains("(deleted)"), "{e}");
        let e = TapFd::new(OwnedFd::from(f)).unwrap_err();
        assert!(matches!(e, TapError::NotTap { .. }), "{e}");
        assert!(matches!(describe(904), Err(TapError::NotOpen(904))));
    }

    #[test]
    fn a_real_tap_is_set_up_for_libkruns_worker() {
        if !nix::unistd::geteuid().is_root() {
            msb_test_e2e::skip("making a TAP needs root (CAP_NET_ADMIN)");
            return;
        }
        // In a namespace of its own, kept alive by `_ns`, as the pod's is.
        let (_ns, fd) = std::thread::spawn(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            let ns = File::open("/proc/thread-self/ns/net").unwrap();
            (ns, msb_runtime::net::tap::create("tap0_msb").unwrap())
        })
        .join()
        .unwrap();
        let mut tap = TapFd::new(fd).unwrap();
        assert_eq!(tap.name(), "tap0_msb");
        let raw = tap.raw_socket_fd();
        let mut size: libc::c_int = 0;
        // SAFETY: TUNGETVNETHDRSZ writes one c_int, which lives across the call.
        let r = unsafe { libc::ioctl(raw, libc::TUNGETVNETHDRSZ, std::ptr::from_mut(&mut size)) };
        assert_eq!((r, size), (0, VNET_HDR_LEN));
        let fl = nix::fcntl::fcntl(raw, nix::fcntl::FcntlArg::F_GETFL).unwrap();
        assert!(nix::fcntl::OFlag::from_bits_truncate(fl).contains(nix::fcntl::OFlag::O_NONBLOCK));
        // Nothing queued: the worker is told so at once, never blocked.
        let mut buf = [0_u8; 2048];
        assert!(matches!(
            tap.read_frame(&mut buf),
            Err(ReadError::NothingRead)
        ));
    }
}
