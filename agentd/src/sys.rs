//! Thin wrappers over the raw system calls agentd needs. Every `unsafe` block of the crate that
//! is not in a forked child lives here.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

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
    let src = src.map(cstr).transpose()?;
    let target = cpath(target)?;
    let fstype = fstype.map(cstr).transpose()?;
    let data = data.map(cstr).transpose()?;
    let ptr = |c: &Option<CString>| c.as_ref().map_or(std::ptr::null(), |c| c.as_ptr());
    // SAFETY: every pointer is either null or a valid NUL-terminated string that outlives the call.
    let ret = unsafe {
        libc::mount(
            ptr(&src),
            target.as_ptr(),
            ptr(&fstype),
            flags,
            ptr(&data).cast(),
        )
    };
    check(ret).map(drop)
}

/// umount2(2).
pub fn umount(target: &Path, flags: libc::c_int) -> io::Result<()> {
    let target = cpath(target)?;
    // SAFETY: `target` is a valid C string.
    check(unsafe { libc::umount2(target.as_ptr(), flags) }).map(drop)
}

/// chroot(2).
pub fn chroot(path: &Path) -> io::Result<()> {
    let p = cpath(path)?;
    // SAFETY: `p` is a valid C string.
    check(unsafe { libc::chroot(p.as_ptr()) }).map(drop)
}

/// finit_module(2) with no parameters.
pub fn finit_module(fd: RawFd) -> io::Result<()> {
    let params = c"";
    // SAFETY: `fd` is an open module file; `params` is a valid empty C string.
    let ret = unsafe { libc::syscall(libc::SYS_finit_module, fd, params.as_ptr(), 0) };
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// sethostname(2).
pub fn sethostname(name: &str) -> io::Result<()> {
    // SAFETY: the pointer and length describe `name`'s bytes.
    check(unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) }).map(drop)
}

/// `sizeof(int)`, as the `CMSG_*` macros take it (4).
#[allow(clippy::cast_possible_truncation)]
pub const C_INT_LEN: u32 = std::mem::size_of::<libc::c_int>() as u32;

/// setrlimit(2) for a resource number.
// RLIMIT_* are small non-negative numbers, typed c_uint by glibc and c_int by musl.
#[allow(clippy::cast_sign_loss, clippy::cast_possible_wrap)]
pub fn setrlimit(resource: libc::c_int, soft: u64, hard: u64) -> io::Result<()> {
    let lim = libc::rlimit {
        rlim_cur: soft,
        rlim_max: hard,
    };
    // SAFETY: `lim` is a valid rlimit.
    check(unsafe { libc::setrlimit(resource as _, &lim) }).map(drop)
}

/// The `RLIMIT_*` number of a resource.
// RLIMIT_* are small non-negative numbers, typed c_uint by glibc and c_int by musl.
#[allow(clippy::cast_sign_loss, clippy::cast_possible_wrap)]
pub fn rlimit_number(r: msb_protocol::boot::RlimitResource) -> libc::c_int {
    use msb_protocol::boot::RlimitResource;
    (match r {
        RlimitResource::Cpu => libc::RLIMIT_CPU,
        RlimitResource::Fsize => libc::RLIMIT_FSIZE,
        RlimitResource::Data => libc::RLIMIT_DATA,
        RlimitResource::Stack => libc::RLIMIT_STACK,
        RlimitResource::Core => libc::RLIMIT_CORE,
        RlimitResource::Rss => libc::RLIMIT_RSS,
        RlimitResource::Nproc => libc::RLIMIT_NPROC,
        RlimitResource::Nofile => libc::RLIMIT_NOFILE,
        RlimitResource::Memlock => libc::RLIMIT_MEMLOCK,
        RlimitResource::As => libc::RLIMIT_AS,
        RlimitResource::Locks => libc::RLIMIT_LOCKS,
        RlimitResource::Sigpending => libc::RLIMIT_SIGPENDING,
        RlimitResource::Msgqueue => libc::RLIMIT_MSGQUEUE,
        RlimitResource::Nice => libc::RLIMIT_NICE,
        RlimitResource::Rtprio => libc::RLIMIT_RTPRIO,
        RlimitResource::Rttime => libc::RLIMIT_RTTIME,
    }) as libc::c_int
}

/// CLOCK_BOOTTIME in nanoseconds.
pub fn boottime_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    // CLOCK_BOOTTIME is never negative.
    let secs = u64::try_from(ts.tv_sec).unwrap_or(0);
    let nanos = u64::try_from(ts.tv_nsec).unwrap_or(0);
    secs * 1_000_000_000 + nanos
}

/// Sets CLOCK_REALTIME.
pub fn set_realtime(unix_nanos: u64) -> io::Result<()> {
    let invalid = |_| io::Error::from_raw_os_error(libc::EINVAL);
    let ts = libc::timespec {
        tv_sec: libc::time_t::try_from(unix_nanos / 1_000_000_000).map_err(invalid)?,
        tv_nsec: libc::c_long::try_from(unix_nanos % 1_000_000_000).map_err(invalid)?,
    };
    // SAFETY: `ts` is a valid timespec.
    check(unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) }).map(drop)
}

/// kill(2); `ESRCH` (already gone) is not an error.
pub fn kill(pid: i32, sig: i32) -> io::Result<()> {
    // SAFETY: kill has no memory-safety preconditions.
    match check(unsafe { libc::kill(pid, sig) }) {
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Ok(()),
        r => r.map(drop),
    }
}

/// A pipe whose ends are close-on-exec.
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors.
    check(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: pipe2 succeeded, so both descriptors are open and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// A pseudo-terminal pair (master, slave) of the VM's devpts, both close-on-exec, with the given
/// size: for processes in the VM (a container's come from its own devpts, see
/// [`crate::spawn::ChildStdio::Terminal`]).
///
/// Opened close-on-exec from the start (`/dev/ptmx`, then `TIOCGPTPEER`): `openpty(3)` opens both
/// ends inheritable, and a session spawned by another thread before they were marked would keep
/// this terminal's slave open, so its reader would not see the end of the output.
pub fn openpty(rows: u16, cols: u16) -> io::Result<(OwnedFd, OwnedFd)> {
    let flags = libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC;
    // SAFETY: the path is a NUL-terminated literal.
    let master = check(unsafe { libc::open(c"/dev/ptmx".as_ptr(), flags) })?;
    // SAFETY: open succeeded; the descriptor is ours.
    let master = unsafe { OwnedFd::from_raw_fd(master) };
    let unlock: libc::c_int = 0;
    // SAFETY: TIOCSPTLCK reads one int from a valid pointer.
    check(unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSPTLCK, &unlock) })?;
    // SAFETY: TIOCGPTPEER takes open flags by value and returns a new descriptor.
    let slave = check(unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCGPTPEER, flags) })?;
    // SAFETY: the ioctl succeeded; the descriptor is ours.
    let slave = unsafe { OwnedFd::from_raw_fd(slave) };
    set_winsize(master.as_raw_fd(), rows, cols)?;
    Ok((master, slave))
}

/// A connected pair of `AF_UNIX` sequenced-packet sockets, both close-on-exec.
pub fn socketpair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    let kind = libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC;
    // SAFETY: `fds` has room for the two descriptors.
    check(unsafe { libc::socketpair(libc::AF_UNIX, kind, 0, fds.as_mut_ptr()) })?;
    // SAFETY: socketpair succeeded, so both descriptors are open and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Receives one descriptor passed with `SCM_RIGHTS` on `sock`, close-on-exec from the start.
/// `None` when the peer closed its end without sending one.
pub fn recv_fd(sock: &OwnedFd) -> io::Result<Option<OwnedFd>> {
    const SPACE: usize = {
        // SAFETY: CMSG_SPACE is arithmetic on its argument.
        unsafe { libc::CMSG_SPACE(C_INT_LEN) as usize }
    };
    #[repr(C, align(8))]
    struct Control([u8; SPACE]);
    let mut control = Control([0; SPACE]);
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: byte.len(),
    };
    // SAFETY: msghdr is plain data; all zeroes is a valid (empty) value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.0.as_mut_ptr().cast();
    msg.msg_controllen = SPACE as _;
    let n = loop {
        // SAFETY: `msg` points to a valid iovec and control buffer, both alive across the call.
        let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
        match n {
            -1 if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted => {}
            -1 => return Err(io::Error::last_os_error()),
            n => break n,
        }
    };
    if n == 0 {
        return Ok(None);
    }
    let mut fd = None;
    // SAFETY: the kernel filled `msg_control` with `msg_controllen` bytes of well-formed
    // control messages; the CMSG_* walk stays inside that buffer.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let raw = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::c_int>());
                // The kernel installed this descriptor for us; nobody else owns it.
                let owned = OwnedFd::from_raw_fd(raw);
                if fd.is_none() {
                    fd = Some(owned);
                }
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    if msg.msg_flags & libc::MSG_CTRUNC != 0 && fd.is_none() {
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
    check(unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &ws) }).map(drop)
}

/// Opens a file read-only and close-on-exec.
pub fn open_ro(path: &Path) -> io::Result<OwnedFd> {
    let p = cpath(path)?;
    // SAFETY: `p` is a valid C string.
    let fd = check(unsafe { libc::open(p.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) })?;
    // SAFETY: open succeeded; the descriptor is ours.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Opens a file write-only and close-on-exec.
pub fn open_wo(path: &Path) -> io::Result<OwnedFd> {
    let p = cpath(path)?;
    // SAFETY: `p` is a valid C string.
    let fd = check(unsafe { libc::open(p.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) })?;
    // SAFETY: open succeeded; the descriptor is ours.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// setns(2) on this thread.
pub fn setns(fd: RawFd, nstype: libc::c_int) -> io::Result<()> {
    // SAFETY: setns has no memory-safety preconditions.
    check(unsafe { libc::setns(fd, nstype) }).map(drop)
}

/// uname's release field.
pub fn kernel_release() -> String {
    // SAFETY: utsname is plain data; uname fills it.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: `u` is a valid utsname to fill.
    unsafe { libc::uname(&mut u) };
    // SAFETY: uname NUL-terminates the field.
    unsafe { CStr::from_ptr(u.release.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

/// Blocks SIGCHLD in the calling thread (and so in every thread it spawns afterwards), so that
/// only the reaper's signalfd sees it. Forked children unblock it before exec.
pub fn block_sigchld() -> io::Result<libc::sigset_t> {
    // SAFETY: sigset_t is plain data initialised by sigemptyset.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointers to a local sigset.
    unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGCHLD);
    }
    // SAFETY: valid sigset pointer; old set not requested.
    let ret = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if ret != 0 {
        return Err(io::Error::from_raw_os_error(ret));
    }
    Ok(set)
}

/// A signalfd for the signals in `set`.
pub fn signalfd(set: &libc::sigset_t) -> io::Result<OwnedFd> {
    // SAFETY: `set` is a valid sigset.
    let fd = check(unsafe { libc::signalfd(-1, set, libc::SFD_CLOEXEC) })?;
    // SAFETY: signalfd succeeded; the descriptor is ours.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// sync(2).
pub fn sync() {
    // SAFETY: no preconditions.
    unsafe { libc::sync() }
}

/// Powers the VM off. Never returns: if the call fails, there is nothing better to do than to
/// stop the CPU in a loop.
pub fn power_off() -> ! {
    sync();
    // SAFETY: reboot has no memory-safety preconditions.
    unsafe { libc::reboot(libc::RB_POWER_OFF) };
    loop {
        // SAFETY: pause has no preconditions.
        unsafe { libc::pause() };
    }
}

/// Whether `fd` is close-on-exec (tests of the modules that promise it).
#[cfg(test)]
pub(crate) fn cloexec(fd: &OwnedFd) -> bool {
    // SAFETY: F_GETFD on an open descriptor.
    unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFD) & libc::FD_CLOEXEC != 0 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn openpty_gives_a_sized_close_on_exec_pair() {
        let (master, slave) = openpty(24, 100).unwrap();
        assert!(cloexec(&master) && cloexec(&slave));
        // SAFETY: winsize is plain integers; all zeroes is a valid value.
        let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
        // SAFETY: TIOCGWINSZ writes one winsize to a valid pointer.
        check(unsafe { libc::ioctl(slave.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) }).unwrap();
        assert_eq!((ws.ws_row, ws.ws_col), (24, 100));
        let mut s = std::fs::File::from(slave);
        s.write_all(b"hi\n").unwrap();
        let mut buf = [0u8; 16];
        let n = std::fs::File::from(master).read(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"hi\r\n");
    }
}
