//! The VMM's seccomp filter (rust-vmm's `seccompiler`, as Firecracker uses): a deny-list.
//!
//! Installed on every thread (`SECCOMP_FILTER_FLAG_TSYNC`) after the pivot into the new root
//! ([`crate::jail`]) and before the vCPUs run; threads libkrun starts later (virtio workers)
//! inherit it. Denied with `EPERM`, because a VMM never needs them and an attacker who takes
//! the VMM over would:
//!
//! - change what the process sees or where it is: `mount`, `umount2`, `pivot_root`, `chroot`,
//!   the new mount API (`open_tree`, `move_mount`, `fsopen`, `fsconfig`, `fsmount`, `fspick`,
//!   `mount_setattr`), `unshare`, `setns`;
//! - leave the jail through a file handle, which ignores mounts (the "shocker" escape):
//!   `open_by_handle_at` (libkrun's Linux passthrough file system uses no file handles);
//! - reach other processes: `ptrace`, `process_vm_readv`, `process_vm_writev`, `pidfd_getfd`;
//! - start programs or processes: `execve`, `execveat`, `fork`, `vfork` (x86_64), and `clone`
//!   without `CLONE_THREAD` (threads stay allowed); `clone3` gets `ENOSYS` instead, because its
//!   flags are in memory a filter cannot read, and glibc then falls back to `clone`;
//! - change the kernel or the machine: `kexec_load`, `kexec_file_load`, `init_module`,
//!   `finit_module`, `delete_module`, `bpf`, `perf_event_open`, `reboot`, `swapon`, `swapoff`,
//!   `acct`, `settimeofday`, `clock_settime`, `clock_adjtime`, `adjtimex`, `sethostname`,
//!   `setdomainname`, `syslog`, `quotactl`, and on x86_64 `iopl`, `ioperm` (host port I/O);
//! - use the kernel keyring: `keyctl`, `add_key`, `request_key`;
//! - change identity: `setuid`, `setgid`, `setreuid`, `setregid`, `setgroups`, `setfsuid`,
//!   `setfsgid`, and `setresuid`/`setresgid` unless they change the effective id only:
//!   libkrun's virtio-fs takes the guest caller's uid and gid per thread with
//!   `setresuid(-1, uid, -1)` and `setresgid(-1, gid, -1)`, so those stay allowed;
//! - `personality` (e.g. `READ_IMPLIES_EXEC`), `userfaultfd` (stalls kernel accesses at will).
//!
//! Each was checked against what libkrun (`msb_krun*` 0.1.42) and its dependencies call: only
//! the `setresuid`/`setresgid` above and `clone` with `CLONE_THREAD` (threads) are used.
//!
//! On x86_64 a third filter answers `ENOSYS` to x32 system calls (numbers with bit 30 set):
//! they share the x86_64 audit architecture, so without it a deny-list by number could be
//! bypassed where the kernel has x32 enabled. Other architectures' calls (`int 0x80`) kill the
//! process (seccompiler's architecture check).
//!
//! Why a deny-list and not Firecracker's allow-list: an allow-list must hold every call the VMM
//! makes in every device path, recorded from real boots; the krun backend cannot boot a guest
//! on the development and CI hosts (PVM, docs/HOSTS.md), so an allow-list could not be
//! exercised here, and a call it missed would kill the VMM on real KVM hosts. Building one
//! needs a boot under real KVM with the virtio-fs, block, net and console paths exercised
//! (e.g. `strace -f -c`, or `SECCOMP_RET_LOG` while running the e2e suite) to record the set.

use seccompiler::{
    sock_filter, BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition,
    SeccompFilter, SeccompRule, TargetArch,
};
use std::collections::BTreeMap;

/// Building or installing the filters failed.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// seccompiler refused the filter (a bug here) or the architecture.
    #[error("compile the VMM's seccomp filter")]
    Compile(#[source] seccompiler::BackendError),
    /// This architecture has no seccompiler target.
    #[error("no seccomp filter for the architecture {0}")]
    Arch(&'static str),
    /// The kernel refused a filter.
    #[error("install the VMM's seccomp filter on every thread")]
    Install(#[source] seccompiler::Error),
}

/// The compiled filters, installed together by [`Filters::install`].
#[derive(Debug, Clone)]
pub struct Filters(Vec<BpfProgram>);

/// The calls denied with `EPERM` whatever their arguments.
fn denied() -> Vec<i64> {
    #[allow(unused_mut)] // extended per architecture below
    let mut v = vec![
        libc::SYS_mount,
        libc::SYS_umount2,
        libc::SYS_pivot_root,
        libc::SYS_chroot,
        libc::SYS_open_tree,
        libc::SYS_move_mount,
        libc::SYS_fsopen,
        libc::SYS_fsconfig,
        libc::SYS_fsmount,
        libc::SYS_fspick,
        libc::SYS_mount_setattr,
        libc::SYS_unshare,
        libc::SYS_setns,
        libc::SYS_open_by_handle_at,
        libc::SYS_ptrace,
        libc::SYS_process_vm_readv,
        libc::SYS_process_vm_writev,
        libc::SYS_pidfd_getfd,
        libc::SYS_execve,
        libc::SYS_execveat,
        libc::SYS_kexec_load,
        libc::SYS_kexec_file_load,
        libc::SYS_init_module,
        libc::SYS_finit_module,
        libc::SYS_delete_module,
        libc::SYS_bpf,
        libc::SYS_perf_event_open,
        libc::SYS_reboot,
        libc::SYS_swapon,
        libc::SYS_swapoff,
        libc::SYS_acct,
        libc::SYS_settimeofday,
        libc::SYS_clock_settime,
        libc::SYS_clock_adjtime,
        libc::SYS_adjtimex,
        libc::SYS_sethostname,
        libc::SYS_setdomainname,
        libc::SYS_syslog,
        libc::SYS_quotactl,
        libc::SYS_keyctl,
        libc::SYS_add_key,
        libc::SYS_request_key,
        libc::SYS_setuid,
        libc::SYS_setgid,
        libc::SYS_setreuid,
        libc::SYS_setregid,
        libc::SYS_setgroups,
        libc::SYS_setfsuid,
        libc::SYS_setfsgid,
        libc::SYS_personality,
        libc::SYS_userfaultfd,
    ];
    #[cfg(target_arch = "x86_64")]
    v.extend([
        libc::SYS_fork,
        libc::SYS_vfork,
        libc::SYS_iopl,
        libc::SYS_ioperm,
    ]);
    v
}

fn cond(arg: u8, len: SeccompCmpArgLen, op: SeccompCmpOp, value: u64) -> SeccompCondition {
    SeccompCondition::new(arg, len, op, value).expect("argument index below 6")
}

/// `-1` as a 32-bit id argument: "leave this id unchanged".
const UNCHANGED_ID: u64 = 0xffff_ffff;

fn arch() -> Result<TargetArch, SeccompError> {
    TargetArch::try_from(std::env::consts::ARCH)
        .map_err(|_| SeccompError::Arch(std::env::consts::ARCH))
}

/// The EPERM deny-list.
fn deny_list() -> Result<BpfProgram, SeccompError> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> =
        denied().into_iter().map(|nr| (nr, Vec::new())).collect();
    // A new process: `clone` without CLONE_THREAD (flags are the first argument on every
    // architecture Linux builds us for).
    let thread = u64::try_from(libc::CLONE_THREAD).expect("a positive flag");
    rules.insert(
        libc::SYS_clone,
        vec![SeccompRule::new(vec![cond(
            0,
            SeccompCmpArgLen::Qword,
            SeccompCmpOp::MaskedEq(thread),
            0,
        )])
        .map_err(SeccompError::Compile)?],
    );
    // Real or saved id changed: denied; the effective id alone (virtio-fs): allowed.
    for nr in [libc::SYS_setresuid, libc::SYS_setresgid] {
        let changes = |arg| {
            SeccompRule::new(vec![cond(
                arg,
                SeccompCmpArgLen::Dword,
                SeccompCmpOp::Ne,
                UNCHANGED_ID,
            )])
            .map_err(SeccompError::Compile)
        };
        rules.insert(nr, vec![changes(0)?, changes(2)?]);
    }
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(errno(libc::EPERM)),
        arch()?,
    )
    .map_err(SeccompError::Compile)?;
    BpfProgram::try_from(filter).map_err(SeccompError::Compile)
}

/// `clone3` -> ENOSYS (libc falls back to `clone`, whose flags the deny-list can read).
fn clone3_enosys() -> Result<BpfProgram, SeccompError> {
    let filter = SeccompFilter::new(
        [(libc::SYS_clone3, Vec::new())].into_iter().collect(),
        SeccompAction::Allow,
        SeccompAction::Errno(errno(libc::ENOSYS)),
        arch()?,
    )
    .map_err(SeccompError::Compile)?;
    BpfProgram::try_from(filter).map_err(SeccompError::Compile)
}

fn errno(e: i32) -> u32 {
    u32::try_from(e).expect("errno values are positive")
}

/// x32 system calls -> ENOSYS. Hand-written: seccompiler matches numbers, not a bit.
#[cfg(target_arch = "x86_64")]
fn x32_enosys() -> BpfProgram {
    const LD_W_ABS: u16 = 0x20; // BPF_LD (0) | BPF_W (0) | BPF_ABS
    const JEQ_K: u16 = 0x05 | 0x10; // BPF_JMP | BPF_JEQ | BPF_K
    const JSET_K: u16 = 0x05 | 0x40; // BPF_JMP | BPF_JSET | BPF_K
    const RET_K: u16 = 0x06; // BPF_RET | BPF_K
    const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
    const X32_SYSCALL_BIT: u32 = 0x4000_0000;
    let i = |code, jt, jf, k| sock_filter { code, jt, jf, k };
    vec![
        i(LD_W_ABS, 0, 0, 4), // seccomp_data.arch
        i(JEQ_K, 0, 3, AUDIT_ARCH_X86_64),
        i(LD_W_ABS, 0, 0, 0), // seccomp_data.nr
        i(JSET_K, 0, 1, X32_SYSCALL_BIT),
        i(RET_K, 0, 0, libc::SECCOMP_RET_ERRNO | errno(libc::ENOSYS)),
        i(RET_K, 0, 0, libc::SECCOMP_RET_ALLOW),
    ]
}

impl Filters {
    /// Compiles the filters (nothing is installed yet).
    pub fn compile() -> Result<Filters, SeccompError> {
        #[allow(unused_mut)] // extended per architecture below
        let mut v = vec![deny_list()?, clone3_enosys()?];
        #[cfg(target_arch = "x86_64")]
        v.push(x32_enosys());
        Ok(Filters(v))
    }

    /// How many filters [`Filters::install`] installs (`Seccomp_filters` in
    /// `/proc/<pid>/status` counts them).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there is no filter (never: [`Filters::compile`] makes at least two).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Installs every filter on every thread of the process (and sets `no_new_privs`, which
    /// the runtime's spawner already set).
    pub fn install(&self) -> Result<(), SeccompError> {
        for prog in &self.0 {
            seccompiler::apply_filter_all_threads(prog).map_err(SeccompError::Install)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A mount namespace whose mounts do not propagate back to the host's.
    fn own_mount_namespace() -> nix::Result<()> {
        use nix::mount::MsFlags;
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)?;
        let flags = MsFlags::MS_REC | MsFlags::MS_SLAVE;
        nix::mount::mount(None::<&str>, "/", None::<&str>, flags, None::<&str>)
    }

    fn errno_of(ret: libc::c_long) -> Result<libc::c_long, i32> {
        if ret < 0 {
            Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
        } else {
            Ok(ret)
        }
    }

    /// In a forked child (its own mount namespace, so that a call the filter failed to deny
    /// changes nothing of the host's): installs the filters, then runs `checks`.
    fn in_filtered_child(checks: fn(&mut Vec<String>)) -> Vec<String> {
        let filters = Filters::compile().unwrap();
        crate::forked::in_child(|f| {
            if let Err(e) = own_mount_namespace() {
                f.push(format!("a mount namespace before the filter: {e}"));
            } else if let Err(e) = filters.install() {
                f.push(format!("install: {e:?}"));
            } else {
                checks(f);
            }
        })
    }

    fn expect(failures: &mut Vec<String>, what: &str, got: Result<libc::c_long, i32>, want: i32) {
        if got != Err(want) {
            failures.push(format!("{what}: got {got:?}, want errno {want}"));
        }
    }

    #[test]
    fn the_filter_denies_mounts_namespaces_and_processes_but_not_threads() {
        if !nix::unistd::geteuid().is_root() {
            msb_test_e2e::skip("mount and unshare would fail with EPERM without the filter too: needs root to tell");
            return;
        }
        let failures = in_filtered_child(|f| {
            let dir = tempfile::tempdir().unwrap();
            let target = std::ffi::CString::new(dir.path().to_str().unwrap()).unwrap();
            // SAFETY: valid NUL-terminated strings; a tmpfs mount in the child's own namespace.
            let r = unsafe {
                libc::mount(
                    c"tmpfs".as_ptr(),
                    target.as_ptr(),
                    c"tmpfs".as_ptr(),
                    0,
                    std::ptr::null(),
                )
            };
            expect(f, "mount", errno_of(r.into()), libc::EPERM);
            // SAFETY: plain system call, no memory passed.
            let r = unsafe { libc::unshare(libc::CLONE_NEWNS) };
            expect(f, "unshare(CLONE_NEWNS)", errno_of(r.into()), libc::EPERM);
            // SAFETY: if the filter let it through, the new child leaves at once.
            let r = unsafe { libc::fork() };
            if r == 0 {
                // SAFETY: leaves the grandchild at once.
                unsafe { libc::_exit(0) }
            }
            expect(f, "fork", errno_of(r.into()), libc::EPERM);
            // SAFETY: null arguments; refused before the kernel reads them.
            let r = unsafe { libc::syscall(libc::SYS_clone3, std::ptr::null::<u8>(), 0) };
            expect(f, "clone3", errno_of(r), libc::ENOSYS);
            // A program that does not exist: ENOENT if the call got through (and never
            // replacing this checker), EPERM from the filter.
            // SAFETY: valid NUL-terminated strings and a null-terminated argv.
            let r = unsafe {
                libc::execv(
                    c"/nonexistent/msb-krun-vmm-test".as_ptr(),
                    [c"test".as_ptr(), std::ptr::null()].as_ptr(),
                )
            };
            expect(f, "execv", errno_of(r.into()), libc::EPERM);
            if std::process::Command::new("/bin/true").status().is_ok() {
                f.push("a Command started a process".into());
            }
            // The effective uid alone may change (virtio-fs); the real one may not.
            // SAFETY: plain system calls with integer arguments.
            let r = unsafe { libc::syscall(libc::SYS_setresuid, -1, 0, -1) };
            if r != 0 {
                f.push(format!("setresuid(-1, 0, -1): {r}"));
            }
            // SAFETY: as above.
            let r = unsafe { libc::syscall(libc::SYS_setresuid, 0, -1, -1) };
            expect(f, "setresuid(0, -1, -1)", errno_of(r), libc::EPERM);
            // SAFETY: as above.
            let r = unsafe { libc::syscall(libc::SYS_setresgid, -1, -1, 0) };
            expect(f, "setresgid(-1, -1, 0)", errno_of(r), libc::EPERM);
            #[cfg(target_arch = "x86_64")]
            {
                // x32 getpid: ENOSYS from the filter (or the kernel, where x32 is off).
                // SAFETY: getpid takes no argument.
                let r = unsafe { libc::syscall(0x4000_0000 | libc::SYS_getpid) };
                expect(f, "x32 getpid", errno_of(r), libc::ENOSYS);
            }
            // Threads still start (clone3 -> ENOSYS -> clone with CLONE_THREAD).
            match std::thread::Builder::new().spawn(|| 42) {
                Ok(h) => {
                    if h.join().ok() != Some(42) {
                        f.push("the thread did not return 42".into());
                    }
                }
                Err(e) => f.push(format!("spawn a thread: {e}")),
            }
            // SAFETY: plain system call.
            if unsafe { libc::getpid() } <= 0 {
                f.push("getpid".into());
            }
        });
        assert!(failures.is_empty(), "{failures:#?}");
    }

    #[test]
    fn every_denied_call_is_in_the_compiled_list_once() {
        let d = denied();
        let mut sorted = d.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), d.len(), "a call listed twice");
        // What libkrun needs is never denied outright.
        for needed in [
            libc::SYS_clone,
            libc::SYS_clone3,
            libc::SYS_setresuid,
            libc::SYS_setresgid,
            libc::SYS_capset,
            libc::SYS_ioctl,
            libc::SYS_openat,
            libc::SYS_mknodat,
        ] {
            assert!(!d.contains(&needed), "{needed} denied");
        }
        let f = Filters::compile().unwrap();
        assert_eq!(f.len(), if cfg!(target_arch = "x86_64") { 3 } else { 2 });
    }
}
