//! Starting a process: everything is prepared in agentd (strings, argument arrays, file
//! descriptors), then `clone` runs [`child`], which issues only raw system calls on that prepared
//! data until `execve`: agentd is multi-threaded, so the child may not allocate or take locks.
//!
//! Three modes:
//! - [`NsMode::Vm`]: a plain fork in the VM.
//! - [`NsMode::NewContainer`]: the container's init. `clone` with a new mount namespace and new,
//!   joined or the VM's PID, IPC and UTS namespaces ([`NsSource`]: a pod's containers share the
//!   sandbox container's); the child sets up the root ([`RootSetup`]) and `pivot_root`s into it.
//!   With a new PID namespace the process is its PID 1, while its parent stays agentd.
//! - [`NsMode::Join`]: another process of a running container. The calling thread first enters
//!   the container's PID namespace for its children (`setns` on this thread only), so the new
//!   process is agentd's direct child (agentd can wait for it) yet inside the container; the child
//!   then joins the mount, UTS and IPC namespaces.
//!
//! A failure in the child is written as `[step u8][errno i32 LE]` to a close-on-exec pipe; a
//! successful `execve` closes the pipe, so the parent reads either 5 bytes or EOF.
//!
//! A container's terminal is the container's own, as under runc: the child opens it from the
//! devpts instance mounted at the container's `/dev/pts` once it is inside the container, and
//! sends the master back on a close-on-exec socket pair (runc's console socket), see
//! [`ChildStdio::Terminal`]. A terminal agentd opened from the VM's devpts would not exist in the
//! container's `/dev/pts`, so `ttyname()` and `tty` would fail in it.

use std::ffi::CString;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use nix::sched::CloneFlags;

use crate::inroot::{self, InRootPath, ProcFdPath};
use crate::sys;

/// A mount performed in the child.
#[derive(Debug)]
pub struct MountOp {
    /// Source, or none: a path of the VM (a bind's source, `/run/msb/...`), never the image's.
    pub src: Option<CString>,
    /// Target inside the container's root, resolved in-root ([`crate::inroot`]) and mounted on
    /// through `/proc/self/fd/<n>`, so an image's symlink cannot move the mount out of the root.
    pub target: InRootPath,
    /// File system type.
    pub fstype: Option<CString>,
    /// `MS_*` flags.
    pub flags: libc::c_ulong,
    /// File-system options.
    pub data: Option<CString>,
}

/// One step of preparing a container root, in order. Every path is inside the root and resolved
/// there ([`crate::inroot`]): what is created is created by an `*at` call in its in-root parent.
#[derive(Debug)]
pub enum RootStep {
    /// mkdir, an existing directory is fine.
    Mkdir(InRootPath, libc::mode_t),
    /// A mount.
    Mount(MountOp),
    /// A device node (or an empty regular file, a file bind's target).
    Mknod(InRootPath, libc::mode_t, libc::dev_t),
    /// A symbolic link `(target, path)`; an existing path is fine.
    Symlink(CString, InRootPath),
}

/// Where one namespace of a new container comes from.
#[derive(Debug)]
pub enum NsSource {
    /// A new one (a `clone` flag).
    New,
    /// That namespace (`/proc/<init>/ns/<kind>` of another container), joined with `setns`.
    Join(OwnedFd),
    /// agentd's own, the VM's.
    Vm,
}

/// How the child prepares a new container's root.
#[derive(Debug)]
pub struct RootSetup {
    /// The merged root, a mount point in the VM.
    pub rootfs: CString,
    /// PID namespace.
    pub pid: NsSource,
    /// IPC namespace.
    pub ipc: NsSource,
    /// UTS namespace.
    pub uts: NsSource,
    /// Steps before `pivot_root`.
    pub steps: Vec<RootStep>,
    /// Hostname of the new UTS namespace.
    pub hostname: Option<CString>,
    /// `(file, value)`: sysctls written before `pivot_root`, once the container's `/proc` is
    /// mounted (so they land in its namespaces); files under `/proc/sys` of the root.
    pub sysctls: Vec<(InRootPath, CString)>,
    /// Remount the root read-only after `pivot_root`.
    pub readonly: bool,
    /// Paths made read-only after `pivot_root` (so that they resolve inside the root), as runc's
    /// `readonlyPath`: a recursive bind onto itself, remounted read-only keeping `nosuid`,
    /// `nodev` and `noexec`. A missing path is skipped.
    pub readonly_paths: Vec<CString>,
    /// Paths masked after the read-only ones, as runc's `maskPath`: `/dev/null` bound over a
    /// file, an empty read-only tmpfs over a directory. A missing path is skipped.
    pub masked_paths: Vec<CString>,
}

/// Namespaces of the new process.
#[derive(Debug)]
pub enum NsMode {
    /// The VM itself.
    Vm,
    /// A new container init.
    NewContainer(RootSetup),
    /// Join a running container: descriptors of its namespaces.
    Join {
        /// `/proc/<init>/ns/pid`.
        pid: OwnedFd,
        /// `/proc/<init>/ns/mnt`.
        mnt: OwnedFd,
        /// `/proc/<init>/ns/uts`.
        uts: OwnedFd,
        /// `/proc/<init>/ns/ipc`.
        ipc: OwnedFd,
    },
}

/// Where the child's standard streams come from.
#[derive(Debug)]
pub enum ChildStdio {
    /// Descriptors agentd opened: pipes, `/dev/null`, or the slave of a terminal of the VM.
    Fds {
        /// fd 0.
        stdin: OwnedFd,
        /// fd 1.
        stdout: OwnedFd,
        /// fd 2.
        stderr: OwnedFd,
        /// Make fd 0 the controlling terminal.
        tty: bool,
    },
    /// A new terminal, allocated by the child once it is inside its container, from the devpts
    /// instance the container sees at `/dev/pts` (as runc allocates the console). A terminal of
    /// the VM's own devpts would not exist in the container's `/dev/pts`, so `ttyname()` (and
    /// `tty`) would fail there. The slave becomes fds 0, 1, 2 and the controlling terminal, is
    /// owned by the process's user (runc's `fixStdioPermissions`), and the master comes back to
    /// agentd over a socket ([`Spawned::terminal`]).
    Terminal {
        /// Rows.
        rows: u16,
        /// Columns.
        cols: u16,
    },
}

/// Everything the child needs, prepared in the parent.
#[derive(Debug)]
pub struct SpawnPlan {
    /// Namespaces.
    pub ns: NsMode,
    /// Resolved program path, in the process's own root.
    pub path: CString,
    /// argv.
    pub argv: Vec<CString>,
    /// envp.
    pub envp: Vec<CString>,
    /// Working directory.
    pub cwd: CString,
    /// User.
    pub uid: libc::uid_t,
    /// Group.
    pub gid: libc::gid_t,
    /// Supplementary groups.
    pub groups: Vec<libc::gid_t>,
    /// `(resource, limit)` pairs.
    pub rlimits: Vec<(libc::c_int, libc::rlimit)>,
    /// `cgroup.procs` of the cgroup to join, opened for writing.
    pub cgroup_procs: Option<OwnedFd>,
    /// Standard streams.
    pub stdio: ChildStdio,
    /// The capabilities it keeps (OCI `process.capabilities`); `None` keeps agentd's.
    pub caps: Option<crate::caps::CapMasks>,
    /// `PR_SET_NO_NEW_PRIVS` before exec.
    pub no_new_privs: bool,
    /// The container's seccomp filter, installed where runc installs it: before the user and
    /// the capabilities change (installing needs `CAP_SYS_ADMIN` then), or, with
    /// `no_new_privs`, right before `execve` ([`crate::seccomp`]).
    pub seccomp: Option<crate::seccomp::Filter>,
}

/// The step at which a child failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Step {
    /// Namespaces, mounts, pivot_root, hostname.
    Setup = 1,
    /// Joining the cgroup.
    Cgroup = 2,
    /// Standard streams, session, terminal.
    Stdio = 3,
    /// Resource limits.
    Rlimit = 4,
    /// The working directory.
    Cwd = 5,
    /// Groups and user.
    User = 6,
    /// execve itself.
    Exec = 7,
    /// Allocating the container's terminal ([`ChildStdio::Terminal`]).
    Terminal = 8,
    /// Writing the container's sysctls.
    Sysctl = 9,
    /// Read-only and masked paths.
    MaskPaths = 10,
    /// Installing the seccomp filter.
    Seccomp = 11,
}

impl Step {
    fn from_u8(b: u8) -> Step {
        match b {
            1 => Step::Setup,
            2 => Step::Cgroup,
            3 => Step::Stdio,
            4 => Step::Rlimit,
            5 => Step::Cwd,
            6 => Step::User,
            8 => Step::Terminal,
            9 => Step::Sysctl,
            10 => Step::MaskPaths,
            11 => Step::Seccomp,
            _ => Step::Exec,
        }
    }
}

/// Why a process did not start.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// agentd could not prepare or clone.
    #[error("cannot start the process")]
    Parent(#[source] io::Error),
    /// The child failed before exec.
    #[error("{step:?} failed: {}", io::Error::from_raw_os_error(*errno))]
    Child {
        /// Where.
        step: Step,
        /// The errno.
        errno: i32,
    },
}

/// A process that has exec'd.
#[derive(Debug)]
pub struct Spawned {
    /// Its pid, in the VM's PID namespace.
    pub pid: i32,
    /// The master of the terminal it allocated ([`ChildStdio::Terminal`]), close-on-exec.
    pub terminal: Option<OwnedFd>,
}

/// Starts the process described by `plan`. `register` runs with the child's pid while the
/// reaper cannot yet have reaped it (it is called before this function returns and before the
/// child can have been waited for, see [`crate::reaper::Reaper::spawn_guard`]).
///
/// Returns once the child has exec'd.
pub fn spawn(plan: SpawnPlan, register: impl FnOnce(i32)) -> Result<Spawned, SpawnError> {
    let (err_r, err_w) = sys::pipe().map_err(SpawnError::Parent)?;
    // The child's terminal master comes back on this pair; both ends are close-on-exec, so the
    // child's end closes at its execve (or exit) and the parent's read can never hang.
    let terminal_socket = match plan.stdio {
        ChildStdio::Terminal { .. } => Some(sys::socketpair().map_err(SpawnError::Parent)?),
        ChildStdio::Fds { .. } => None,
    };
    let term_fd = terminal_socket.as_ref().map_or(-1, |(_, c)| c.as_raw_fd());
    let argv: Vec<*const libc::c_char> = plan
        .argv
        .iter()
        .map(|a| a.as_ptr())
        .chain([std::ptr::null()])
        .collect();
    let envp: Vec<*const libc::c_char> = plan
        .envp
        .iter()
        .map(|a| a.as_ptr())
        .chain([std::ptr::null()])
        .collect();

    let mut flags = libc::SIGCHLD as libc::c_long;
    // The PID namespace of the child: `clone` cannot join one, so this thread enters it for its
    // children (`setns` affects only them) and leaves it again below.
    let mut join_pidns = None;
    match &plan.ns {
        NsMode::Vm => {}
        NsMode::NewContainer(root) => {
            let mut new = libc::CLONE_NEWNS;
            for (source, flag) in [
                (&root.pid, libc::CLONE_NEWPID),
                (&root.ipc, libc::CLONE_NEWIPC),
                (&root.uts, libc::CLONE_NEWUTS),
            ] {
                if matches!(source, NsSource::New) {
                    new |= flag;
                }
            }
            flags |= new as libc::c_long;
            if let NsSource::Join(pid) = &root.pid {
                join_pidns = Some(pid);
            }
        }
        NsMode::Join { pid, .. } => join_pidns = Some(pid),
    }
    let mut restore_pidns: Option<OwnedFd> = None;
    if let Some(pid) = join_pidns {
        let own = sys::open_ro(std::path::Path::new("/proc/thread-self/ns/pid"))
            .map_err(SpawnError::Parent)?;
        sys::setns(pid, CloneFlags::CLONE_NEWPID).map_err(SpawnError::Parent)?;
        restore_pidns = Some(own);
    }

    // SAFETY: a fork-like clone (no new stack, no shared memory): the child gets a copy of this
    // address space and runs `child`, which only makes raw system calls on data prepared above
    // and ends in execve or _exit.
    let pid = unsafe { libc::syscall(libc::SYS_clone, flags, 0usize, 0usize, 0usize, 0usize) };
    if pid == 0 {
        // SAFETY: we are the freshly cloned child; see `child`'s contract.
        unsafe {
            child(
                &plan,
                argv.as_ptr(),
                envp.as_ptr(),
                err_w.as_raw_fd(),
                term_fd,
            )
        }
    }
    let clone_err = io::Error::last_os_error();
    if let Some(own) = restore_pidns {
        // Leaving the container's PID namespace for our future children again. If this failed,
        // agentd's later children would land in the container: treat it as fatal for the VM.
        if let Err(e) = sys::setns(own, CloneFlags::CLONE_NEWPID) {
            tracing::error!("cannot return to the VM's PID namespace: {e}");
            sys::power_off();
        }
    }
    if pid < 0 {
        return Err(SpawnError::Parent(clone_err));
    }
    // clone returns a pid, which the kernel keeps below 2^22.
    #[allow(clippy::cast_possible_truncation)]
    let pid = pid as i32;
    register(pid);
    drop(err_w);
    drop(plan);
    let terminal_socket = terminal_socket.map(|(parent, child)| {
        drop(child);
        parent
    });
    let mut buf = [0u8; 5];
    let mut got = 0;
    let mut err_r = std::fs::File::from(err_r);
    while got < 5 {
        match err_r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(SpawnError::Parent(e)),
        }
    }
    if got == 0 {
        let Some(sock) = terminal_socket else {
            return Ok(Spawned {
                pid,
                terminal: None,
            });
        };
        // The child sent the master before it exec'd, so it is queued on the socket by now.
        let why = match sys::recv_fd(&sock) {
            Ok(Some(master)) => {
                return Ok(Spawned {
                    pid,
                    terminal: Some(master),
                })
            }
            Ok(None) => io::Error::other("the process started without sending its terminal"),
            Err(e) => io::Error::other(format!("receive the process's terminal: {e}")),
        };
        // Nobody could read its output: it must not run on unseen.
        let _ = sys::kill(pid, libc::SIGKILL);
        return Err(SpawnError::Parent(why));
    }
    let errno = i32::from_le_bytes([buf[1], buf[2], buf[3], buf[4]]);
    Err(SpawnError::Child {
        step: Step::from_u8(buf[0]),
        errno,
    })
}

/// Reports `step` and the current errno to the parent and exits.
///
/// # Safety
/// Only for the cloned child.
unsafe fn fail(err_fd: RawFd, step: Step) -> ! {
    // SAFETY: reading errno of this thread.
    let errno = unsafe { *libc::__errno_location() };
    let e = errno.to_le_bytes();
    let msg = [step as u8, e[0], e[1], e[2], e[3]];
    // SAFETY: writing a stack buffer to an open pipe, then exiting without running destructors.
    unsafe {
        libc::write(err_fd, msg.as_ptr().cast(), msg.len());
        libc::_exit(127)
    }
}

/// `if call == -1 { fail(..) }`; only used inside the child's `unsafe` bodies.
macro_rules! try_sys {
    ($e:expr, $fd:expr, $step:expr) => {
        if $e == -1 {
            fail($fd, $step)
        }
    };
}

fn opt_ptr(c: &Option<CString>) -> *const libc::c_char {
    c.as_ref().map_or(std::ptr::null(), |c| c.as_ptr())
}

/// The child side.
///
/// # Safety
/// Must only run in a freshly cloned child of a multi-threaded process: it makes only
/// async-signal-safe system calls on memory prepared by the parent, and never returns.
unsafe fn child(
    plan: &SpawnPlan,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
    err: RawFd,
    term_sock: RawFd,
) -> ! {
    // SAFETY: raw system calls with pointers into `plan`, which the parent built and which this
    // copy of the address space keeps alive until execve; nothing here allocates or locks.
    unsafe {
        match &plan.ns {
            NsMode::Vm => {}
            NsMode::Join { mnt, uts, ipc, .. } => {
                try_sys!(
                    libc::setns(mnt.as_raw_fd(), libc::CLONE_NEWNS),
                    err,
                    Step::Setup
                );
                try_sys!(
                    libc::setns(uts.as_raw_fd(), libc::CLONE_NEWUTS),
                    err,
                    Step::Setup
                );
                try_sys!(
                    libc::setns(ipc.as_raw_fd(), libc::CLONE_NEWIPC),
                    err,
                    Step::Setup
                );
            }
            NsMode::NewContainer(root) => setup_root(root, err),
        }
        if let Some(fd) = &plan.cgroup_procs {
            try_sys!(
                libc::write(fd.as_raw_fd(), c"0".as_ptr().cast(), 1),
                err,
                Step::Cgroup
            );
        }
        try_sys!(libc::setsid(), err, Step::Stdio);
        match &plan.stdio {
            ChildStdio::Fds {
                stdin,
                stdout,
                stderr,
                tty,
            } => {
                try_sys!(libc::dup2(stdin.as_raw_fd(), 0), err, Step::Stdio);
                try_sys!(libc::dup2(stdout.as_raw_fd(), 1), err, Step::Stdio);
                try_sys!(libc::dup2(stderr.as_raw_fd(), 2), err, Step::Stdio);
                if *tty {
                    try_sys!(libc::ioctl(0, libc::TIOCSCTTY, 0), err, Step::Stdio);
                }
            }
            ChildStdio::Terminal { rows, cols } => {
                new_terminal(*rows, *cols, plan.uid, term_sock, err);
            }
        }
        // Signals: agentd blocks SIGCHLD and Rust ignores SIGPIPE; the new program gets defaults.
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        // Raw system calls: musl's wrappers for these synchronise every thread of the process
        // (POSIX semantics) through signals, which cannot work in a cloned child whose other
        // "threads" do not exist. The kernel calls act on this single-threaded child only.
        for (res, lim) in &plan.rlimits {
            let lim: *const libc::rlimit = lim;
            try_sys!(
                libc::syscall(
                    libc::SYS_prlimit64,
                    0,
                    *res,
                    lim,
                    std::ptr::null_mut::<libc::rlimit>()
                ),
                err,
                Step::Rlimit
            );
        }
        if let Some(f) = plan.seccomp.as_ref().filter(|_| !plan.no_new_privs) {
            try_sys!(f.install(), err, Step::Seccomp);
        }
        // Capabilities as runc applies them: the bounding set shrinks while we are still root
        // with every capability, KEEPCAPS carries the permitted set across setuid, then the
        // three sets and the ambient one are set; no_new_privs last before exec.
        if let Some(caps) = &plan.caps {
            for cap in 0..64 {
                if caps.bounding & (1u64 << cap) == 0
                    && libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) == -1
                    && *libc::__errno_location() != libc::EINVAL
                {
                    // EINVAL: a number past the kernel's last capability.
                    fail(err, Step::User);
                }
            }
            try_sys!(
                libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0),
                err,
                Step::User
            );
        }
        try_sys!(
            libc::syscall(libc::SYS_setgroups, plan.groups.len(), plan.groups.as_ptr()),
            err,
            Step::User
        );
        try_sys!(libc::syscall(libc::SYS_setgid, plan.gid), err, Step::User);
        try_sys!(libc::syscall(libc::SYS_setuid, plan.uid), err, Step::User);
        if let Some(caps) = &plan.caps {
            try_sys!(
                libc::prctl(libc::PR_SET_KEEPCAPS, 0, 0, 0, 0),
                err,
                Step::User
            );
            let header = crate::caps::CapHeader {
                version: crate::caps::CAPABILITY_VERSION_3,
                pid: 0,
            };
            try_sys!(
                libc::syscall(libc::SYS_capset, &header, caps.data.as_ptr()),
                err,
                Step::User
            );
            // Best effort, as runc: an ambient capability needs it permitted and inheritable.
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_CLEAR_ALL,
                0,
                0,
                0,
            );
            for cap in 0..64 {
                if caps.ambient & (1u64 << cap) != 0 {
                    libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_RAISE, cap, 0, 0);
                }
            }
        }
        if plan.no_new_privs {
            try_sys!(
                libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0),
                err,
                Step::User
            );
        }
        try_sys!(libc::chdir(plan.cwd.as_ptr()), err, Step::Cwd);
        if let Some(f) = plan.seccomp.as_ref().filter(|_| plan.no_new_privs) {
            try_sys!(f.install(), err, Step::Seccomp);
        }
        libc::execve(plan.path.as_ptr(), argv, envp);
        fail(err, Step::Exec)
    }
}

/// Allocates a terminal from the devpts instance mounted at `/dev/pts` in the child's root (the
/// container's), sends its master to the parent on `sock`, makes the slave fds 0, 1, 2 and the
/// controlling terminal, and gives it to `uid`. The session must already be new (`setsid`).
///
/// # Safety
/// Child only, as for [`child`].
unsafe fn new_terminal(rows: u16, cols: u16, uid: libc::uid_t, sock: RawFd, err: RawFd) {
    let flags = libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC;
    // SAFETY: raw system calls on literals and stack values; nothing allocates or locks.
    unsafe {
        // `/dev/pts/ptmx` itself, not the `/dev/ptmx` symlink: the instance must be the one whose
        // slaves the container sees under `/dev/pts`.
        let master = libc::open(c"/dev/pts/ptmx".as_ptr(), flags | libc::O_NOFOLLOW);
        try_sys!(master, err, Step::Terminal);
        let unlock: libc::c_int = 0;
        try_sys!(
            libc::ioctl(master, libc::TIOCSPTLCK, &unlock),
            err,
            Step::Terminal
        );
        let slave = libc::ioctl(master, libc::TIOCGPTPEER, flags);
        try_sys!(slave, err, Step::Terminal);
        let ws = libc::winsize {
            ws_row: rows.max(1),
            ws_col: cols.max(1),
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        try_sys!(
            libc::ioctl(master, libc::TIOCSWINSZ, &ws),
            err,
            Step::Terminal
        );
        try_sys!(send_fd(sock, master), err, Step::Terminal);
        libc::close(master);
        // The user may control its terminal (runc's fixStdioPermissions: the uid only, the
        // group stays the one devpts chose).
        try_sys!(
            libc::fchown(slave, uid, libc::gid_t::MAX),
            err,
            Step::Terminal
        );
        try_sys!(libc::dup2(slave, 0), err, Step::Stdio);
        try_sys!(libc::dup2(slave, 1), err, Step::Stdio);
        try_sys!(libc::dup2(slave, 2), err, Step::Stdio);
        if slave > 2 {
            libc::close(slave);
        }
        try_sys!(libc::ioctl(0, libc::TIOCSCTTY, 0), err, Step::Stdio);
    }
}

/// Sends `fd` with `SCM_RIGHTS` (and one byte: a stream of ancillary data alone is not sent).
/// Returns `-1` with `errno` set on failure.
///
/// # Safety
/// Child only, as for [`child`]: a raw `sendmsg` (musl's wrapper copies through a buffer and is a
/// cancellation point), every structure on this stack.
unsafe fn send_fd(sock: RawFd, fd: RawFd) -> libc::c_int {
    const SPACE: usize = {
        // SAFETY: CMSG_SPACE is arithmetic on its argument.
        unsafe { libc::CMSG_SPACE(sys::C_INT_LEN) as usize }
    };
    #[repr(C, align(8))]
    struct Control([u8; SPACE]);
    let mut control = Control([0; SPACE]);
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: byte.len(),
    };
    // SAFETY: msghdr is plain data, all zeroes (padding included, as the kernel expects) is a
    // valid value; the CMSG_* writes stay inside `control`, which has room for one descriptor;
    // every pointer handed to sendmsg is to this stack frame, alive across the call.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.0.as_mut_ptr().cast();
        msg.msg_controllen = SPACE as _;
        let c = libc::CMSG_FIRSTHDR(&msg);
        (*c).cmsg_level = libc::SOL_SOCKET;
        (*c).cmsg_type = libc::SCM_RIGHTS;
        (*c).cmsg_len = libc::CMSG_LEN(sys::C_INT_LEN) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<libc::c_int>(), fd);
        let sent = libc::syscall(
            libc::SYS_sendmsg,
            sock,
            &msg as *const libc::msghdr,
            libc::MSG_NOSIGNAL,
        );
        if sent < 0 {
            -1
        } else {
            0
        }
    }
}

/// Mounts and `pivot_root` of a new container.
///
/// # Safety
/// Child only, as for [`child`].
unsafe fn setup_root(root: &RootSetup, err: RawFd) {
    // SAFETY: raw system calls on strings prepared by the parent; nothing allocates or locks.
    unsafe {
        // Joined before any mount: an `mqueue` mount belongs to the IPC namespace of its mounter.
        for (source, kind) in [
            (&root.ipc, libc::CLONE_NEWIPC),
            (&root.uts, libc::CLONE_NEWUTS),
        ] {
            if let NsSource::Join(fd) = source {
                try_sys!(libc::setns(fd.as_raw_fd(), kind), err, Step::Setup);
            }
        }
        try_sys!(
            libc::mount(
                std::ptr::null(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null()
            ),
            err,
            Step::Setup
        );
        // The root itself is agentd's path; everything below it is resolved in-root from here.
        let root_fd = libc::open(
            root.rootfs.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        );
        try_sys!(root_fd, err, Step::Setup);
        for step in &root.steps {
            if !root_step(root_fd, step) {
                fail(err, Step::Setup);
            }
        }
        if let Some(h) = &root.hostname {
            try_sys!(
                libc::sethostname(h.as_ptr(), h.count_bytes()),
                err,
                Step::Setup
            );
        }
        for (file, value) in &root.sysctls {
            let fd = inroot::raw_open(root_fd, &file.path, libc::O_WRONLY | libc::O_NOFOLLOW);
            try_sys!(fd, err, Step::Sysctl);
            let n = value.count_bytes();
            if usize::try_from(libc::write(fd, value.as_ptr().cast(), n)).ok() != Some(n) {
                fail(err, Step::Sysctl);
            }
            libc::close(fd);
        }
        libc::close(root_fd);
        try_sys!(libc::chdir(root.rootfs.as_ptr()), err, Step::Setup);
        try_sys!(
            libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()),
            err,
            Step::Setup
        );
        try_sys!(
            libc::umount2(c".".as_ptr(), libc::MNT_DETACH),
            err,
            Step::Setup
        );
        try_sys!(libc::chdir(c"/".as_ptr()), err, Step::Setup);
        if root.readonly {
            try_sys!(
                libc::mount(
                    std::ptr::null(),
                    c"/".as_ptr(),
                    std::ptr::null(),
                    libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY,
                    std::ptr::null()
                ),
                err,
                Step::Setup
            );
        }
        for path in &root.readonly_paths {
            readonly_path(path, err);
        }
        for path in &root.masked_paths {
            mask_path(path, err);
        }
    }
}

/// One step of [`setup_root`] below `root_fd` (the container's root): `false` with `errno` set
/// when it failed.
///
/// # Safety
/// Child only, as for [`child`]: raw system calls on prepared strings and the stack.
unsafe fn root_step(root_fd: RawFd, step: &RootStep) -> bool {
    // SAFETY: raw system calls on strings prepared by the parent and stack data.
    unsafe {
        let ok_or_exists =
            |ret: libc::c_int| ret != -1 || *libc::__errno_location() == libc::EEXIST;
        match step {
            RootStep::Mkdir(path, mode) => in_parent(root_fd, path, |dir| {
                ok_or_exists(libc::mkdirat(dir, path.name.as_ptr(), *mode))
            }),
            RootStep::Mknod(path, mode, dev) => in_parent(root_fd, path, |dir| {
                ok_or_exists(libc::mknodat(dir, path.name.as_ptr(), *mode, *dev))
            }),
            RootStep::Symlink(target, path) => in_parent(root_fd, path, |dir| {
                ok_or_exists(libc::symlinkat(target.as_ptr(), dir, path.name.as_ptr()))
            }),
            RootStep::Mount(m) => {
                let fd = inroot::raw_open(root_fd, &m.target.path, libc::O_PATH);
                if fd == -1 {
                    return false;
                }
                let target = ProcFdPath::new(fd);
                let ok = libc::mount(
                    opt_ptr(&m.src),
                    target.as_ptr(),
                    opt_ptr(&m.fstype),
                    m.flags,
                    opt_ptr(&m.data).cast(),
                ) == 0;
                close_keeping_errno(fd);
                ok
            }
        }
    }
}

/// Runs `f` with a descriptor of `path`'s parent, resolved inside `root_fd`.
///
/// # Safety
/// Child only, as for [`child`].
unsafe fn in_parent(root_fd: RawFd, path: &InRootPath, f: impl FnOnce(RawFd) -> bool) -> bool {
    // SAFETY: raw system calls on a prepared string.
    unsafe {
        let dir = inroot::raw_open(root_fd, &path.parent, libc::O_PATH | libc::O_DIRECTORY);
        if dir == -1 {
            return false;
        }
        let ok = f(dir);
        close_keeping_errno(dir);
        ok
    }
}

/// `close(fd)` without losing the `errno` of the call before.
///
/// # Safety
/// Child only, as for [`child`]; `fd` is the caller's.
unsafe fn close_keeping_errno(fd: RawFd) {
    // SAFETY: errno of this thread, and a descriptor the caller owns.
    unsafe {
        let e = *libc::__errno_location();
        libc::close(fd);
        *libc::__errno_location() = e;
    }
}

/// `errno` is `ENOENT`: a missing path, which runc skips for masked and read-only paths.
///
/// # Safety
/// Child only, as for [`child`].
unsafe fn missing() -> bool {
    // SAFETY: reading errno of this thread.
    unsafe { *libc::__errno_location() == libc::ENOENT }
}

/// runc's `readonlyPath`, after `pivot_root`.
///
/// # Safety
/// Child only, as for [`child`].
unsafe fn readonly_path(path: &CString, err: RawFd) {
    // SAFETY: raw system calls on a string prepared by the parent and a stack buffer.
    unsafe {
        if libc::mount(
            path.as_ptr(),
            path.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND | libc::MS_REC,
            std::ptr::null(),
        ) == -1
        {
            if missing() {
                return;
            }
            fail(err, Step::MaskPaths);
        }
        // nix's statfs on a `CStr` is the bare system call on a stack buffer.
        let Ok(st) = nix::sys::statfs::statfs(path.as_c_str()) else {
            fail(err, Step::MaskPaths)
        };
        // `f_flags` holds ST_* bits, equal to the MS_* ones for these three.
        let keep = st.flags().bits() & (libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC);
        try_sys!(
            libc::mount(
                path.as_ptr(),
                path.as_ptr(),
                std::ptr::null(),
                keep | libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY,
                std::ptr::null()
            ),
            err,
            Step::MaskPaths
        );
    }
}

/// runc's `maskPath`, after `pivot_root`.
///
/// # Safety
/// Child only, as for [`child`].
unsafe fn mask_path(path: &CString, err: RawFd) {
    // SAFETY: raw system calls on strings prepared by the parent or static.
    unsafe {
        if libc::mount(
            c"/dev/null".as_ptr(),
            path.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND,
            std::ptr::null(),
        ) == 0
            || missing()
        {
            return;
        }
        if *libc::__errno_location() != libc::ENOTDIR {
            fail(err, Step::MaskPaths);
        }
        try_sys!(
            libc::mount(
                c"tmpfs".as_ptr(),
                path.as_ptr(),
                c"tmpfs".as_ptr(),
                libc::MS_RDONLY,
                std::ptr::null()
            ),
            err,
            Step::MaskPaths
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::cloexec;
    use std::io::Write;

    #[test]
    fn root_steps_create_inside_the_root_only() {
        use std::os::unix::fs::symlink;
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        // An image's symlinks out of its root: absolute with `..`, and absolute.
        symlink(
            format!("/../../../..{}", outside.path().display()),
            root.path().join("data"),
        )
        .unwrap();
        symlink(outside.path(), root.path().join("etc")).unwrap();
        let inside = root.path().join(outside.path().strip_prefix("/").unwrap());
        std::fs::create_dir_all(&inside).unwrap();
        let p = |s: &str| InRootPath::new(s).unwrap();
        let steps = [
            RootStep::Mkdir(p("/data"), 0o755),
            RootStep::Mkdir(p("/data/x"), 0o755),
            RootStep::Mkdir(p("/data/x"), 0o755),
            RootStep::Mkdir(p("/etc/y"), 0o755),
            RootStep::Mknod(p("/etc/file"), libc::S_IFREG | 0o644, 0),
            RootStep::Symlink(c"x".into(), p("/data/link")),
        ];
        let root_fd = sys::open_ro(root.path()).unwrap();
        for step in &steps {
            // SAFETY: the step's system calls, on this test's own paths.
            let ok = unsafe { root_step(root_fd.as_raw_fd(), step) };
            assert!(ok, "{step:?}: {}", io::Error::last_os_error());
        }
        assert_eq!(
            std::fs::read_dir(outside.path()).unwrap().count(),
            0,
            "escaped"
        );
        let mut names: Vec<String> = std::fs::read_dir(&inside)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["file", "link", "x", "y"]);
        assert!(inside.join("file").is_file());
        // A parent that exists only outside the root fails; nothing is created there.
        symlink(elsewhere.path(), root.path().join("gone")).unwrap();
        for step in [
            RootStep::Mkdir(p("/gone/z"), 0o755),
            RootStep::Mount(MountOp {
                src: Some(c"none".into()),
                target: p("/gone"),
                fstype: Some(c"tmpfs".into()),
                flags: 0,
                data: None,
            }),
        ] {
            // SAFETY: as above; the mount's target does not resolve, so nothing is mounted.
            let ok = unsafe { root_step(root_fd.as_raw_fd(), &step) };
            assert!(!ok, "{step:?}");
            assert_eq!(
                io::Error::last_os_error().raw_os_error(),
                Some(libc::ENOENT)
            );
        }
        assert_eq!(std::fs::read_dir(elsewhere.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_descriptor_crosses_the_socket_close_on_exec() {
        let (ours, theirs) = sys::socketpair().unwrap();
        let (r, w) = sys::pipe().unwrap();
        // SAFETY: send_fd makes one system call on its own stack data; any process may.
        assert_eq!(unsafe { send_fd(theirs.as_raw_fd(), w.as_raw_fd()) }, 0);
        drop(w);
        let got = sys::recv_fd(&ours).unwrap().expect("a descriptor");
        assert!(cloexec(&got));
        std::fs::File::from(got).write_all(b"x").unwrap();
        let mut buf = [0u8; 1];
        std::fs::File::from(r).read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"x");
        drop(theirs);
        assert!(sys::recv_fd(&ours).unwrap().is_none(), "EOF: no descriptor");
    }

    /// The child allocates the terminal from the devpts at `/dev/pts` (here the host's): its
    /// name resolves there, it is the controlling terminal, it has the size asked for.
    /// `sh -c SCRIPT` as root in the VM's (here: the host's) namespaces, with `stdio`.
    fn root_shell(script: &str, stdio: ChildStdio) -> SpawnPlan {
        let c = |s: &str| CString::new(s).unwrap();
        SpawnPlan {
            ns: NsMode::Vm,
            path: c("/bin/sh"),
            argv: vec![c("sh"), c("-c"), c(script)],
            envp: vec![c("PATH=/usr/bin:/bin")],
            cwd: c("/"),
            uid: 0,
            gid: 0,
            groups: vec![0],
            rlimits: vec![],
            cgroup_procs: None,
            stdio,
            caps: None,
            no_new_privs: false,
            seccomp: None,
        }
    }

    #[test]
    fn a_terminal_allocated_by_the_child_is_named_and_controlling() {
        let root = nix::unistd::geteuid().is_root();
        if !root || sys::open_ro(std::path::Path::new("/dev/pts/ptmx")).is_err() {
            msb_test_e2e::require(
                "needs root and /dev/pts/ptmx (setgroups in the child, the devpts)",
            );
            return;
        }
        let plan = root_shell(
            "tty && echo ctty >/dev/tty && stty size",
            ChildStdio::Terminal { rows: 5, cols: 7 },
        );
        let spawned = spawn(plan, |_| {}).unwrap();
        let master = spawned.terminal.expect("the master came back");
        assert!(cloexec(&master));
        let mut out = Vec::new();
        // EIO once the last holder of the slave is gone.
        let _ = std::fs::File::from(master).read_to_end(&mut out);
        let pid = nix::unistd::Pid::from_raw(spawned.pid);
        let waited = nix::sys::wait::waitpid(pid, None);
        let out = String::from_utf8_lossy(&out).into_owned();
        let n = out
            .strip_prefix("/dev/pts/")
            .and_then(|r| r.strip_suffix("\r\nctty\r\n5 7\r\n"))
            .unwrap_or_default();
        assert!(
            !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()),
            "{out:?}"
        );
        assert_eq!(
            waited,
            Ok(nix::sys::wait::WaitStatus::Exited(pid, 0)),
            "{out:?}"
        );
    }

    #[test]
    fn capabilities_and_no_new_privs_reach_the_exec() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            msb_test_e2e::require("needs root (the child drops capabilities root holds)");
            return;
        }
        let (r, w) = sys::pipe().unwrap();
        let null = || sys::open_wo(std::path::Path::new("/dev/null")).unwrap();
        let sets = msb_protocol::types::CapabilitySets {
            bounding: vec!["CAP_CHOWN".into(), "CAP_KILL".into()],
            effective: vec!["CAP_CHOWN".into()],
            inheritable: vec![],
            permitted: vec!["CAP_CHOWN".into(), "CAP_KILL".into()],
            ambient: vec![],
        };
        let mut plan = root_shell(
            "grep -E '^(CapBnd|NoNewPrivs)' /proc/self/status",
            ChildStdio::Fds {
                stdin: null(),
                stdout: w,
                stderr: null(),
                tty: false,
            },
        );
        plan.caps = Some(crate::caps::CapMasks::new(&sets));
        plan.no_new_privs = true;
        let spawned = spawn(plan, |_| {}).unwrap();
        let mut out = String::new();
        std::fs::File::from(r).read_to_string(&mut out).unwrap();
        let mut status = 0;
        // SAFETY: waitpid on our own child writes into a valid local.
        unsafe { libc::waitpid(spawned.pid, &mut status, 0) };
        // The shell runs as root, so exec gives it the bounding set: CHOWN (bit 0) and KILL (5).
        assert_eq!(out, "CapBnd:\t0000000000000021\nNoNewPrivs:\t1\n");
    }

    /// The container's seccomp filter reaches the exec, installed before the capabilities are
    /// dropped (CAP_SYS_ADMIN is gone after) or, with no_new_privs, just before execve.
    #[test]
    fn a_seccomp_filter_confines_the_exec() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            msb_test_e2e::require("needs root (installing a filter without no_new_privs)");
            return;
        }
        let profile: msb_protocol::seccomp::Seccomp = serde_json::from_str(
            r#"{"default_action": "SCMP_ACT_ALLOW",
                "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO"}]}"#,
        )
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("d");
        for nnp in [false, true] {
            let (r, w) = sys::pipe().unwrap();
            let null = || sys::open_wo(std::path::Path::new("/dev/null")).unwrap();
            let mut plan = root_shell(
                &format!(
                    "mkdir {} 2>/dev/null; echo $?; grep -E '^(NoNewPrivs|Seccomp):' /proc/self/status",
                    target.display()
                ),
                ChildStdio::Fds {
                    stdin: null(),
                    stdout: w,
                    stderr: null(),
                    tty: false,
                },
            );
            let chown = msb_protocol::types::CapabilitySets {
                bounding: vec!["CAP_CHOWN".into()],
                effective: vec!["CAP_CHOWN".into()],
                permitted: vec!["CAP_CHOWN".into()],
                ..Default::default()
            };
            plan.caps = Some(crate::caps::CapMasks::new(&chown));
            plan.no_new_privs = nnp;
            plan.seccomp = Some(crate::seccomp::compile(&profile).unwrap());
            let spawned = spawn(plan, |_| {}).unwrap();
            let mut out = String::new();
            std::fs::File::from(r).read_to_string(&mut out).unwrap();
            let mut status = 0;
            // SAFETY: waitpid on our own child writes into a valid local.
            unsafe { libc::waitpid(spawned.pid, &mut status, 0) };
            assert_eq!(
                out,
                format!("1\nNoNewPrivs:\t{}\nSeccomp:\t2\n", u8::from(nnp)),
                "no_new_privs {nnp}"
            );
            assert!(!target.exists());
        }
    }
}
