//! Thin wrappers over the system calls agentd needs, through `nix` where it wraps them safely.
//! Every `unsafe` block of the crate that is not in a forked child lives here, except the few
//! that belong to one structure elsewhere (`openat2`'s descriptor in `inroot.rs`, the loop ioctls in
//! `storage.rs`, `waitpid` in `reaper.rs`).

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;
use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::socket::{AddressFamily, ControlMessageOwned, MsgFlags, SockFlag, SockType};
use nix::sys::time::TimeSpec;
use nix::time::ClockId;

/// Turns a `-1` return into the current `errno`.
pub fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// A path as a C string; paths with a NUL byte are refused.
pub fn cpath(p: impl AsRef<Path>) -> io::Result<CString> {
    use std::os::unix::ffi::OsStrExt;
    CString::new(p.as_ref().as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

/// A string as a C string; strings with a NUL byte are refused.
pub fn cstr(s: &str) -> io::Result<CString> {
    CString::new(s).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{s:?} contains a NUL byte"),
        )
    })
}

/// mount(2).
pub fn mount(
    src: Option<&str>,
    target: &Path,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> io::Result<()> {
    // Converted here (not by nix) so that a NUL byte is refused with the message of `cstr`.
    let src = src.map(cstr).transpose()?;
    let target = cpath(target)?;
    let fstype = fstype.map(cstr).transpose()?;
    let data = data.map(cstr).transpose()?;
    nix::mount::mount(
        src.as_deref(),
        target.as_c_str(),
        fstype.as_deref(),
        MsFlags::from_bits_retain(flags),
        data.as_deref(),
    )
    .map_err(io::Error::from)
}

/// umount2(2).
pub fn umount(target: &Path, flags: libc::c_int) -> io::Result<()> {
    nix::mount::umount2(cpath(target)?.as_c_str(), MntFlags::from_bits_retain(flags))
        .map_err(io::Error::from)
}

/// chroot(2).
pub fn chroot(path: &Path) -> io::Result<()> {
    nix::unistd::chroot(cpath(path)?.as_c_str()).map_err(io::Error::from)
}

/// finit_module(2) with no parameters.
pub fn finit_module(fd: impl AsFd) -> io::Result<()> {
    nix::kmod::finit_module(fd, c"", nix::kmod::ModuleInitFlags::empty()).map_err(io::Error::from)
}

/// sethostname(2).
pub fn sethostname(name: &str) -> io::Result<()> {
    nix::unistd::sethostname(name).map_err(io::Error::from)
}

/// `sizeof(int)`, as the `CMSG_*` macros take it (4).
#[allow(clippy::cast_possible_truncation)]
pub const C_INT_LEN: u32 = std::mem::size_of::<libc::c_int>() as u32;

/// setrlimit(2) for a resource number.
pub fn setrlimit(r: msb_protocol::boot::RlimitResource, soft: u64, hard: u64) -> io::Result<()> {
    nix::sys::resource::setrlimit(rlimit_resource(r), soft, hard).map_err(io::Error::from)
}

/// The `nix` resource of a protocol resource.
fn rlimit_resource(r: msb_protocol::boot::RlimitResource) -> nix::sys::resource::Resource {
    use msb_protocol::boot::RlimitResource;
    use nix::sys::resource::Resource;
    match r {
        RlimitResource::Cpu => Resource::RLIMIT_CPU,
        RlimitResource::Fsize => Resource::RLIMIT_FSIZE,
        RlimitResource::Data => Resource::RLIMIT_DATA,
        RlimitResource::Stack => Resource::RLIMIT_STACK,
        RlimitResource::Core => Resource::RLIMIT_CORE,
        RlimitResource::Rss => Resource::RLIMIT_RSS,
        RlimitResource::Nproc => Resource::RLIMIT_NPROC,
        RlimitResource::Nofile => Resource::RLIMIT_NOFILE,
        RlimitResource::Memlock => Resource::RLIMIT_MEMLOCK,
        RlimitResource::As => Resource::RLIMIT_AS,
        RlimitResource::Locks => Resource::RLIMIT_LOCKS,
        RlimitResource::Sigpending => Resource::RLIMIT_SIGPENDING,
        RlimitResource::Msgqueue => Resource::RLIMIT_MSGQUEUE,
        RlimitResource::Nice => Resource::RLIMIT_NICE,
        RlimitResource::Rtprio => Resource::RLIMIT_RTPRIO,
        RlimitResource::Rttime => Resource::RLIMIT_RTTIME,
    }
}

/// The `RLIMIT_*` number of a resource, for the child's raw `prlimit64`.
// RLIMIT_* are small non-negative numbers: nix's `Resource` is `repr(u32)` on glibc, `repr(i32)`
// on musl.
#[allow(clippy::cast_sign_loss, clippy::cast_possible_wrap)]
pub fn rlimit_number(r: msb_protocol::boot::RlimitResource) -> libc::c_int {
    rlimit_resource(r) as libc::c_int
}

/// CLOCK_BOOTTIME in nanoseconds.
pub fn boottime_ns() -> u64 {
    let Ok(ts) = nix::time::clock_gettime(ClockId::CLOCK_BOOTTIME) else {
        return 0;
    };
    // CLOCK_BOOTTIME is never negative.
    let secs = u64::try_from(ts.tv_sec()).unwrap_or(0);
    let nanos = u64::try_from(ts.tv_nsec()).unwrap_or(0);
    secs * 1_000_000_000 + nanos
}

/// Sets CLOCK_REALTIME.
pub fn set_realtime(unix_nanos: u64) -> io::Result<()> {
    let ts = TimeSpec::from_duration(std::time::Duration::from_nanos(unix_nanos));
    nix::time::clock_settime(ClockId::CLOCK_REALTIME, ts).map_err(io::Error::from)
}

/// The kernel's boot id (made at its first read).
pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .unwrap_or_default()
        .trim()
        .to_owned()
}

/// Mixes `bytes` into the kernel's input pool, credited as entropy (`RNDADDENTROPY`), then makes
/// the generator reseed from it now (`RNDRESEEDCRNG`), not at its next scheduled reseed: what a
/// VM restored from a template needs before anything reads randomness, since every clone starts
/// with the template's generator state.
pub fn add_entropy_and_reseed(bytes: &[u8]) -> io::Result<()> {
    // <linux/random.h>: _IOW('R', 0x03, int[2]) and _IO('R', 0x07).
    const RNDADDENTROPY: libc::c_ulong = 0x4008_5203;
    const RNDRESEEDCRNG: libc::c_ulong = 0x5207;
    let too_big = || io::Error::from_raw_os_error(libc::E2BIG);
    let size = libc::c_int::try_from(bytes.len()).map_err(|_| too_big())?;
    let bits = size.checked_mul(8).ok_or_else(too_big)?;
    // struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }
    let mut info = Vec::with_capacity(8 + bytes.len());
    info.extend_from_slice(&bits.to_ne_bytes());
    info.extend_from_slice(&size.to_ne_bytes());
    info.extend_from_slice(bytes);
    let dev = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/urandom")?;
    // SAFETY: `info` is a rand_pool_info of `size` bytes of buffer, alive for the call; the
    // kernel only reads it.
    check(unsafe { libc::ioctl(dev.as_raw_fd(), RNDADDENTROPY as _, info.as_ptr()) })?;
    // SAFETY: an ioctl without an argument on our open descriptor.
    check(unsafe { libc::ioctl(dev.as_raw_fd(), RNDRESEEDCRNG as _) })?;
    Ok(())
}

/// kill(2); `ESRCH` (already gone) is not an error.
///
/// A raw call: `sig` is any number the host sends, real-time signals included (`SIGRTMIN+3`
/// stops systemd), which nix's `Signal` cannot express.
pub fn kill(pid: i32, sig: i32) -> io::Result<()> {
    // SAFETY: kill has no memory-safety preconditions.
    match check(unsafe { libc::kill(pid, sig) }) {
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Ok(()),
        r => r.map(drop),
    }
}

/// A pipe whose ends are close-on-exec.
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(io::Error::from)
}

/// A pipe whose ends are close-on-exec, holding `size` bytes if the kernel agrees (a refusal,
/// say over the per-user total of pipe buffers, leaves the default size and is logged: the pipe
/// works either way).
pub fn pipe_sized(size: usize) -> io::Result<(OwnedFd, OwnedFd)> {
    let (r, w) = pipe()?;
    let size = i32::try_from(size).unwrap_or(i32::MAX);
    if let Err(e) = nix::fcntl::fcntl(w.as_raw_fd(), nix::fcntl::FcntlArg::F_SETPIPE_SZ(size)) {
        tracing::debug!("pipe of {size} bytes: {e}; keeping the default size");
    }
    Ok((r, w))
}

/// The terminal ioctls agentd makes: nix has no safe wrapper for them, these give each one its
/// argument type.
mod ioctl {
    nix::ioctl_readwrite_bad!(
        /// SIOCGIFFLAGS: reads an interface's flags into the ifreq.
        siocgifflags,
        libc::SIOCGIFFLAGS,
        libc::ifreq
    );
    nix::ioctl_write_ptr_bad!(
        /// SIOCSIFFLAGS: sets an interface's flags from the ifreq.
        siocsifflags,
        libc::SIOCSIFFLAGS,
        libc::ifreq
    );
    nix::ioctl_write_ptr_bad!(
        /// TIOCSPTLCK: (un)locks a pseudo-terminal's slave.
        tiocsptlck,
        libc::TIOCSPTLCK,
        libc::c_int
    );
    nix::ioctl_write_int_bad!(
        /// TIOCGPTPEER: opens the slave of a master with the given open flags.
        tiocgptpeer,
        libc::TIOCGPTPEER
    );
    nix::ioctl_write_ptr_bad!(
        /// TIOCSWINSZ: sets a terminal's size.
        tiocswinsz,
        libc::TIOCSWINSZ,
        libc::winsize
    );
    #[cfg(test)]
    nix::ioctl_read_bad!(
        /// TIOCGWINSZ: a terminal's size.
        tiocgwinsz,
        libc::TIOCGWINSZ,
        libc::winsize
    );
}

/// A pseudo-terminal pair (master, slave) of the VM's devpts, both close-on-exec, with the given
/// size: for processes in the VM (a container's come from its own devpts, see
/// [`crate::spawn::ChildStdio::Terminal`]).
///
/// Opened close-on-exec from the start (`/dev/ptmx`, then `TIOCGPTPEER`): `openpty(3)` opens both
/// ends inheritable, and a session spawned by another thread before they were marked would keep
/// this terminal's slave open, so its reader would not see the end of the output.
pub fn openpty(rows: u16, cols: u16) -> io::Result<(OwnedFd, OwnedFd)> {
    let flags = OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC;
    // `flags`: std opens read-write and always adds O_CLOEXEC.
    let master = OwnedFd::from(
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOCTTY)
            .open("/dev/ptmx")?,
    );
    // SAFETY: TIOCSPTLCK reads one int from a valid pointer.
    unsafe { ioctl::tiocsptlck(master.as_raw_fd(), &0) }?;
    // SAFETY: TIOCGPTPEER takes open flags by value and returns a new descriptor.
    let slave = unsafe { ioctl::tiocgptpeer(master.as_raw_fd(), flags.bits()) }?;
    // SAFETY: the ioctl succeeded; the descriptor is ours.
    let slave = unsafe { OwnedFd::from_raw_fd(slave) };
    set_winsize(master.as_raw_fd(), rows, cols)?;
    Ok((master, slave))
}

/// A connected pair of `AF_UNIX` sequenced-packet sockets, both close-on-exec.
pub fn socketpair() -> io::Result<(OwnedFd, OwnedFd)> {
    nix::sys::socket::socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(io::Error::from)
}

/// Receives one descriptor passed with `SCM_RIGHTS` on `sock`, close-on-exec from the start.
/// `None` when the peer closed its end without sending one.
pub fn recv_fd(sock: &OwnedFd) -> io::Result<Option<OwnedFd>> {
    let mut byte = [0u8; 1];
    let mut control = nix::cmsg_space!(RawFd);
    let (bytes, fds, truncated) = loop {
        let mut iov = [io::IoSliceMut::new(&mut byte)];
        let msg = match nix::sys::socket::recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut control),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
            Ok(msg) => msg,
        };
        let mut fds = Vec::new();
        // nix does not walk truncated control messages (MSG_CTRUNC): nothing is taken then, and
        // the error below says why.
        for c in msg.cmsgs().into_iter().flatten() {
            if let ControlMessageOwned::ScmRights(raw) = c {
                // SAFETY: the kernel installed these descriptors for us; nobody else owns them.
                fds.extend(
                    raw.into_iter()
                        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                );
            }
        }
        break (msg.bytes, fds, msg.flags.contains(MsgFlags::MSG_CTRUNC));
    };
    if bytes == 0 {
        return Ok(None);
    }
    // More than one (never sent) are closed here.
    let fd = fds.into_iter().next();
    if truncated && fd.is_none() {
        return Err(io::Error::other(
            "the descriptor did not fit the control buffer",
        ));
    }
    Ok(fd)
}

/// Sets a terminal's size.
pub fn set_winsize(fd: RawFd, rows: u16, cols: u16) -> io::Result<()> {
    let ws = libc::winsize {
        ws_row: rows.max(1),
        ws_col: cols.max(1),
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a winsize from the valid pointer.
    unsafe { ioctl::tiocswinsz(fd, &ws) }?;
    Ok(())
}

/// Opens a file as `how` says, close-on-exec (std always adds `O_CLOEXEC`).
fn open(path: &Path, how: &std::fs::OpenOptions) -> io::Result<OwnedFd> {
    // A path with a NUL byte is refused with the message of `cpath`.
    cpath(path)?;
    Ok(OwnedFd::from(how.open(path)?))
}

/// Opens a file read-only and close-on-exec.
pub fn open_ro(path: &Path) -> io::Result<OwnedFd> {
    open(path, std::fs::OpenOptions::new().read(true))
}

/// Opens a file write-only and close-on-exec.
pub fn open_wo(path: &Path) -> io::Result<OwnedFd> {
    open(path, std::fs::OpenOptions::new().write(true))
}

/// Brings interface `lo` up, as every network namespace's loopback must be for `127.0.0.1` and
/// `::1` to work (the kernel creates it down).
pub fn loopback_up() -> io::Result<()> {
    let sock = nix::sys::socket::socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    // SAFETY: an all-zero ifreq is a valid value (empty name, zero flags).
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo") {
        *dst = libc::c_char::from_ne_bytes([*src]);
    }
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write the ifreq we own, on a socket we own;
    // `ifru_flags` is the union member those two use.
    unsafe {
        ioctl::siocgifflags(sock.as_raw_fd(), &mut req)?;
        let up = libc::c_short::try_from(libc::IFF_UP).unwrap_or(1);
        req.ifr_ifru.ifru_flags |= up;
        ioctl::siocsifflags(sock.as_raw_fd(), &req)?;
    }
    Ok(())
}

/// setns(2) on this thread.
pub fn setns(fd: impl AsFd, nstype: CloneFlags) -> io::Result<()> {
    nix::sched::setns(fd, nstype).map_err(io::Error::from)
}

/// uname's release field.
pub fn kernel_release() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Blocks SIGCHLD in the calling thread (and so in every thread it spawns afterwards), so that
/// only the reaper's signalfd sees it. Forked children unblock it before exec.
///
/// `sigprocmask`: called before any other thread exists, where it is `pthread_sigmask`, and
/// nix's `pthread_sigmask` misses failures (it expects `-1`, the call returns the error number).
pub fn block_sigchld() -> io::Result<SigSet> {
    let mut set = SigSet::empty();
    set.add(Signal::SIGCHLD);
    nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&set), None)?;
    Ok(set)
}

/// A close-on-exec signalfd for the signals in `set`.
pub fn signalfd(set: &SigSet) -> io::Result<SignalFd> {
    SignalFd::with_flags(set, SfdFlags::SFD_CLOEXEC).map_err(io::Error::from)
}

/// sync(2).
pub fn sync() {
    nix::unistd::sync()
}

/// Powers the VM off. Never returns: if the call fails, there is nothing better to do than to
/// stop the CPU in a loop.
pub fn power_off() -> ! {
    sync();
    let _ = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_POWER_OFF);
    loop {
        nix::unistd::pause();
    }
}

/// Whether `fd` is close-on-exec (tests of the modules that promise it).
#[cfg(test)]
pub(crate) fn cloexec(fd: &OwnedFd) -> bool {
    use nix::fcntl::{fcntl, FcntlArg, FdFlag};
    fcntl(fd.as_raw_fd(), FcntlArg::F_GETFD)
        .is_ok_and(|f| FdFlag::from_bits_retain(f).contains(FdFlag::FD_CLOEXEC))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn openpty_gives_a_sized_close_on_exec_pair() {
        let (master, slave) = openpty(24, 100).unwrap();
        assert!(cloexec(&master) && cloexec(&slave));
        let mut ws = libc::winsize {
            ws_row: 0,
            ws_col: 0,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCGWINSZ writes one winsize to a valid pointer.
        unsafe { ioctl::tiocgwinsz(slave.as_raw_fd(), &mut ws) }.unwrap();
        assert_eq!((ws.ws_row, ws.ws_col), (24, 100));
        let mut s = std::fs::File::from(slave);
        s.write_all(b"hi\n").unwrap();
        let mut buf = [0u8; 16];
        let n = std::fs::File::from(master).read(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"hi\r\n");
    }

    #[test]
    fn a_nul_byte_keeps_its_message() {
        let e = open_ro(Path::new("/a\0b")).unwrap_err();
        assert_eq!(e.to_string(), "path contains a NUL byte");
        let e = mount(None, Path::new("/x"), Some("a\0b"), 0, None).unwrap_err();
        assert_eq!(e.to_string(), "\"a\\0b\" contains a NUL byte");
    }
}
