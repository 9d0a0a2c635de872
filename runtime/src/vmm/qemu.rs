//! The QEMU backend: `qemu-system-x86_64 -M microvm`, virtio-mmio devices, PVH boot of the
//! uncompressed kernel. KVM where it can boot a standard guest, TCG (software) otherwise.
//!
//! Flags, and why (measured on the development hosts, docs/HOSTS.md):
//! - `-M microvm`, `-kernel vmlinux`: PVH boot of the uncompressed kernel, the fastest variant.
//! - `tsc_early_khz=<host> tsc=reliable`: without them TSC calibration under TCG sometimes
//!   hangs the guest forever.
//! - `panic=-1` + `-no-reboot`: a panicking guest makes QEMU exit instead of spinning a core.
//! - `-accel tcg,tb-size=64`: a smaller translation cache, less memory per guest.
//! - `-cpu qemu64,+arat` under TCG: with an always-running APIC timer the guest kernel can stop
//!   its tick when idle (NO_HZ); without it (plain `qemu64`) the local APIC timer may stop in
//!   deep idle, and with no broadcast timer on `microvm` the kernel keeps a periodic 250 Hz
//!   tick forever. Measured: an idle guest's timer interrupts 250/s -> ~9/s, its QEMU's CPU
//!   3.3% -> 0.8% of a core.
//! - every per-VM resource is an inherited descriptor ([`Fds`]), never a path: QEMU runs
//!   jailed and unprivileged (below) and could open none of them. The console log is
//!   `-serial file:/dev/fdset/0`; each disk an fd set (`-add-fd`, `file=/dev/fdset/N`); the
//!   agent channel (`virtserialport name=agent`) a listening socket the runtime binds in the
//!   sandbox directory (`-chardev socket,fd=N,server=on,wait=off`), where the runtime then
//!   connects by path as before ([`crate::socket_path`] for paths beyond `sun_path`).
//! - `-name guest=<sandbox directory>`: only so that `ps` tells which VM a QEMU serves.
//! - one `virtio-blk-device` per disk with `serial=`: the guest finds disks by serial.
//! - `virtio-balloon-device,free-page-reporting=on`: pages the guest frees are handed back to
//!   the host (QEMU discards them), so a sandbox's resident memory shrinks when its guest's does.
//! - shares: one `virtiofsd` per share (a companion process of the VM, `--sandbox namespace`,
//!   `--readonly` when asked, its listening socket as `--fd`; the runtime connects to it at once
//!   and hands QEMU the connected socket) and a `vhost-user-fs-device`; vhost-user needs the
//!   guest memory in a shared memfd (`memory-backend-memfd,share=on`).
//! - the pod network: `-netdev tap,fd=N,vhost=off` with a `virtio-net-device` carrying the pod
//!   interface's `mac=` and `host_mtu=`. The TAP was made in the pod's namespace
//!   ([`crate::net`]); QEMU stays in the host's and inherits the descriptor (close-on-exec
//!   cleared for QEMU only). `vhost=off`: `/dev/vhost-net` may be absent (QEMU 7.2 aborts when
//!   asked for it) and under TCG it cannot help.
//! - confinement (docs/SECURITY.md, "QEMU's confinement"): QEMU joins the sandbox's host cgroup
//!   ([`crate::cgroup`]), then enters its [`Jail`] (a mount namespace whose root holds `/usr`,
//!   the kernel and initramfs and three device nodes) and drops to a uid/gid leased for this VM
//!   alone ([`super::ids`]), with `PR_SET_NO_NEW_PRIVS`, all before it execs; then it runs its
//!   own seccomp filter ([`SANDBOX`]: no fork or exec, no privilege or resource changes).
//!   Each `virtiofsd` joins the cgroup, starts with `PR_SET_NO_NEW_PRIVS`, and sandboxes itself
//!   (mount, pid and network namespaces with the share as root, fewer capabilities, its own
//!   seccomp filter); it stays root to serve files as their guest owners.

mod jail;
pub mod qmp;

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use super::ids::{IdLease, IdRange};
use super::{Backend, BackendKind, VmSpec, VmStart, VmmError, VmmProcess};

pub use jail::{Jail, JailError};

/// The QEMU backend.
#[derive(Debug, Default)]
pub struct Qemu {
    program: String,
}

/// The descriptors QEMU inherits for one VM's resources (their numbers are the same in QEMU as
/// in the runtime). Each is open before QEMU starts, so QEMU, jailed and unprivileged, opens
/// none of them by path.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fds {
    /// The console log, write-only (`-serial file:/dev/fdset/0`).
    pub console: RawFd,
    /// The agent port's listening socket (`-chardev socket,fd=`, `server=on`).
    pub agent: RawFd,
    /// Per share: a socket connected to its `virtiofsd`.
    pub shares: Vec<RawFd>,
    /// Per disk: a read-only descriptor, and for a writable disk a read-write one too (QEMU
    /// probes an image read-only first, then reopens it read-write; an fd set serves each open
    /// with a descriptor of the same access mode). Disk `i` is fd set `i + 1`.
    pub disks: Vec<Vec<RawFd>>,
    /// QEMU's end of the QMP socket pair ([`VmStart::BootTemplate`]).
    pub qmp: Option<RawFd>,
    /// The saved template, read-only ([`VmStart::Restore`]): `-incoming fd:N`.
    pub incoming: Option<RawFd>,
}

impl Qemu {
    /// Uses `qemu-system-x86_64` from PATH (or `$MSB_QEMU`).
    pub fn new() -> Qemu {
        Qemu {
            program: std::env::var("MSB_QEMU").unwrap_or_else(|_| "qemu-system-x86_64".into()),
        }
    }

    /// The program as exec will run it ([`find_program`]), or why there is none.
    pub(crate) fn resolved_program(&self) -> Result<PathBuf, VmmError> {
        find_program(&self.program).ok_or_else(|| VmmError::MissingProgram {
            program: self.program.clone(),
            hint: "install the Debian package qemu-system-x86".into(),
        })
    }

    /// Uses this QEMU program.
    pub fn with_program(mut self, program: impl Into<String>) -> Qemu {
        self.program = program.into();
        self
    }

    /// The full argument list for `spec` (without the program), with its resources on `fds`.
    pub fn args(
        &self,
        spec: &VmSpec,
        accel: &str,
        tsc_khz: Option<u64>,
        fds: &Fds,
    ) -> Result<Vec<String>, VmmError> {
        let p = |path: &Path| path.display().to_string();
        // A value inside a QEMU option list (`key=value,...`): a comma in it is doubled, or
        // the rest would be read as options of ours (`file=/x,format=qcow2` in a path).
        let opt = |value: &str| value.replace(',', ",,");
        let mut cmdline = vec![
            "console=ttyS0".to_owned(),
            "quiet".into(),
            "panic=-1".into(),
        ];
        if let Some(khz) = tsc_khz {
            cmdline.push(format!("tsc_early_khz={khz}"));
            cmdline.push("tsc=reliable".into());
        }
        cmdline.extend(spec.cmdline.iter().cloned());
        if fds.disks.len() != spec.disks.len() || fds.shares.len() != spec.shares.len() {
            return Err(VmmError::Failed(format!(
                "{} disk and {} share descriptors for {} disks and {} shares",
                fds.disks.len(),
                fds.shares.len(),
                spec.disks.len(),
                spec.shares.len()
            )));
        }
        let mut a: Vec<String> = vec![
            "-accel".into(),
            accel.into(),
            "-M".into(),
            if spec.shares.is_empty() {
                "microvm".into()
            } else {
                "microvm,memory-backend=mem".into()
            },
            "-cpu".into(),
            if accel == "kvm" {
                "host".into()
            } else {
                "qemu64,+arat".into()
            },
            "-smp".into(),
            spec.vcpus.max(1).to_string(),
            "-m".into(),
            format!("{}M", spec.memory_mib),
            "-nodefaults".into(),
            "-no-user-config".into(),
            "-nographic".into(),
            "-no-reboot".into(),
            // Only for `ps`: which VM this QEMU serves (its other arguments name descriptors).
            "-name".into(),
            format!("guest={}", opt(&p(&spec.dir))),
            "-sandbox".into(),
            SANDBOX.into(),
            "-kernel".into(),
            p(&spec.kernel),
            "-initrd".into(),
            p(&spec.initramfs),
            "-append".into(),
            cmdline.join(" "),
            "-add-fd".into(),
            format!("fd={},set=0", fds.console),
            "-serial".into(),
            "file:/dev/fdset/0".into(),
            "-device".into(),
            "virtio-serial-device".into(),
            "-chardev".into(),
            format!("socket,id=agent,fd={},server=on,wait=off", fds.agent),
            "-device".into(),
            "virtserialport,chardev=agent,name=agent".into(),
            // Memory the guest frees goes back to the host (free page reporting, built into our
            // guest kernel): an idle sandbox keeps only what its guest holds.
            "-device".into(),
            "virtio-balloon-device,free-page-reporting=on".into(),
        ];
        if !spec.shares.is_empty() {
            a.push("-object".into());
            a.push(format!(
                "memory-backend-memfd,id=mem,size={}M,share=on",
                spec.memory_mib
            ));
        }
        for (i, (share, fd)) in spec.shares.iter().zip(&fds.shares).enumerate() {
            a.push("-chardev".into());
            a.push(format!("socket,id=fs{i},fd={fd}"));
            a.push("-device".into());
            a.push(format!(
                "vhost-user-fs-device,chardev=fs{i},tag={}",
                opt(&share.tag)
            ));
        }
        for (i, (d, set)) in spec.disks.iter().zip(&fds.disks).enumerate() {
            let mode = if d.read_only {
                "readonly=on"
            } else {
                "cache=unsafe,discard=unmap"
            };
            for fd in set {
                a.push("-add-fd".into());
                a.push(format!("fd={fd},set={}", i + 1));
            }
            a.push("-drive".into());
            a.push(format!(
                "file=/dev/fdset/{},if=none,id=disk{i},format=raw,{mode}",
                i + 1
            ));
            a.push("-device".into());
            a.push(format!(
                "virtio-blk-device,drive=disk{i},serial={}",
                opt(&d.serial)
            ));
        }
        if let Some(fd) = fds.qmp {
            a.push("-chardev".into());
            a.push(format!("socket,id=qmp,fd={fd}"));
            a.push("-mon".into());
            a.push("chardev=qmp,mode=control".into());
        }
        if let Some(fd) = fds.incoming {
            a.push("-incoming".into());
            a.push(format!("fd:{fd}"));
        }
        if let Some(net) = &spec.net {
            a.push("-netdev".into());
            a.push(format!("tap,id=net0,fd={},vhost=off", net.fd()));
            a.push("-device".into());
            a.push(format!(
                "virtio-net-device,netdev=net0,mac={},host_mtu={}",
                msb_protocol::net::format_mac(&net.mac),
                net.mtu
            ));
        }
        Ok(a)
    }
}

/// The accelerator QEMU runs with (its `-accel` value): KVM where it can boot a standard guest,
/// else TCG with a smaller translation cache, and then why not KVM. A template's key names it
/// too ([`crate::template`]): a VM saved under one cannot be restored under the other.
pub(crate) fn accel() -> (&'static str, Option<String>) {
    match crate::host::kvm_usable() {
        Ok(()) => ("kvm", None),
        Err(why) => ("tcg,tb-size=64", Some(why)),
    }
}

/// The vhost-user socket of share `i`, in the sandbox directory (root-only, like the
/// directory). virtiofsd serves the one connection the runtime makes there at once.
fn share_socket_name(i: usize) -> String {
    format!("fs{i}.sock")
}

/// `PR_SET_NO_NEW_PRIVS` for a VMM-side process (in its child, before exec): nothing it execs
/// gains privileges through setuid bits or file capabilities. Async-signal-safe.
fn no_new_privs() -> std::io::Result<()> {
    nix::sys::prctl::set_no_new_privs().map_err(Into::into)
}

/// Clears close-on-exec on `fd` in a forked child: this process, and only it, inherits it.
/// Async-signal-safe.
fn inherit(fd: RawFd) -> std::io::Result<()> {
    // SAFETY: fcntl(2) on a descriptor number; async-signal-safe. A closed number fails with
    // EBADF, which is returned.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, 0) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// QEMU's own seccomp filter (`-sandbox`): no obsolete system calls, no privilege changes, no
/// fork or exec, no scheduler or resource-limit changes. A QEMU that a guest took over can then
/// neither spawn a process nor become another user.
pub const SANDBOX: &str = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny";

/// A log file for a VMM-side process's stdout and stderr.
fn log_file(path: &std::path::Path) -> Result<(std::fs::File, std::fs::File), VmmError> {
    let io = |what: &str| {
        let what = format!("{what} {}", path.display());
        move |source| VmmError::Io { what, source }
    };
    let f = crate::private::create_file(path).map_err(io("create"))?;
    let dup = f.try_clone().map_err(io("dup"))?;
    Ok((f, dup))
}

fn io_err(what: &str, path: &Path) -> impl FnOnce(std::io::Error) -> VmmError {
    let what = format!("{what} {}", path.display());
    move |source| VmmError::Io { what, source }
}

/// Opens what QEMU gets as descriptors, except the shares' sockets: the console log, the agent
/// port's listening socket (bound here, in the private sandbox directory), each disk. Returns
/// the owners (close-on-exec; closed here once QEMU has its copies) and their numbers.
fn open_resources(spec: &VmSpec) -> Result<(Vec<OwnedFd>, Fds), VmmError> {
    use std::fs::OpenOptions;
    let mut owned: Vec<OwnedFd> = Vec::new();
    let mut keep = |fd: OwnedFd| {
        let n = fd.as_raw_fd();
        owned.push(fd);
        n
    };
    // Write-only, as QEMU opens it; made (0600) where the caller has not.
    let console = crate::private::create_file(&spec.console_log)
        .map_err(io_err("open", &spec.console_log))?;
    let console = keep(console.into());
    let _ = std::fs::remove_file(&spec.agent_socket);
    let agent = crate::socket_path::bind_std(&spec.agent_socket)
        .map_err(io_err("bind", &spec.agent_socket))?;
    let agent = keep(agent.into());
    let mut disks = Vec::new();
    for d in &spec.disks {
        let mut set = vec![keep(
            std::fs::File::open(&d.path)
                .map_err(io_err("open", &d.path))?
                .into(),
        )];
        if !d.read_only {
            set.push(keep(
                OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&d.path)
                    .map_err(io_err("open", &d.path))?
                    .into(),
            ));
        }
        disks.push(set);
    }
    let incoming = match &spec.start {
        VmStart::Restore(state) => Some(keep(
            std::fs::File::open(state)
                .map_err(io_err("open the template", state))?
                .into(),
        )),
        VmStart::Boot | VmStart::BootTemplate => None,
    };
    Ok((
        owned,
        Fds {
            console,
            agent,
            shares: Vec::new(),
            disks,
            qmp: None,
            incoming,
        },
    ))
}

/// Starts one `virtiofsd` per share, each on a listening socket made here, and returns them
/// with a socket connected to each (for QEMU). On any failure the ones already started are
/// killed.
fn start_virtiofsd(spec: &VmSpec) -> Result<(Vec<std::process::Child>, Vec<OwnedFd>), VmmError> {
    let mut children = Vec::new();
    let mut sockets = Vec::new();
    for (i, share) in spec.shares.iter().enumerate() {
        match start_one_virtiofsd(spec, i, share, &mut children) {
            Ok(s) => sockets.push(s),
            Err(e) => {
                kill_all(&mut children);
                return Err(e);
            }
        }
    }
    Ok((children, sockets))
}

/// One `virtiofsd` in its own sandbox (`--sandbox namespace`: a mount namespace holding only
/// the share as its root, new pid and network namespaces, reduced capabilities, its seccomp
/// filter). It gets its listening socket as `--fd`; the runtime connects at once (the
/// connection waits in the backlog until virtiofsd accepts), so nothing waits for it to start.
fn start_one_virtiofsd(
    spec: &VmSpec,
    i: usize,
    share: &super::ShareSpec,
    children: &mut Vec<std::process::Child>,
) -> Result<OwnedFd, VmmError> {
    let program = std::env::var("MSB_VIRTIOFSD").unwrap_or_else(|_| "virtiofsd".into());
    // Said here: a virtiofsd that exits at once is seen only as QEMU's failed handshake.
    if !share.host_path.is_dir() {
        return Err(VmmError::Failed(format!(
            "share {}: {} is not a directory",
            share.tag,
            share.host_path.display()
        )));
    }
    let sock = spec.dir.join(share_socket_name(i));
    let _ = std::fs::remove_file(&sock);
    let listener = crate::socket_path::bind_std(&sock).map_err(io_err("bind", &sock))?;
    let connected = crate::socket_path::SocketPath::new(&sock)
        .and_then(|a| std::os::unix::net::UnixStream::connect(a.addr()))
        .map_err(io_err("connect to", &sock))?;
    let log_path = spec.dir.join(format!("virtiofsd{i}.log"));
    let (out, err) = log_file(&log_path)?;
    let fd = listener.as_raw_fd();
    let mut cmd = std::process::Command::new(&program);
    cmd.arg(format!("--fd={fd}"))
        .arg("--shared-dir")
        .arg(&share.host_path)
        .args([
            "--sandbox",
            "namespace",
            "--cache",
            "auto",
            "--log-level",
            "warn",
        ]);
    if share.read_only {
        cmd.arg("--readonly");
    }
    // First of its hooks: it runs nothing outside the cgroup.
    if let Some(cg) = &spec.cgroup {
        cg.on_spawn_std(&mut cmd);
    }
    // SAFETY: runs in the forked child before exec and only calls fcntl(2) and prctl(2), which
    // are async-signal-safe; `fd` is the listener's, open in the parent until after the spawn.
    unsafe {
        cmd.pre_exec(move || {
            inherit(fd)?;
            no_new_privs()
        });
    }
    let child = cmd
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .spawn()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => VmmError::MissingProgram {
                program: program.clone(),
                hint: "hack/install-deps installs it (cargo install virtiofsd)".into(),
            },
            _ => VmmError::Io {
                what: super::starting(&program, spec),
                source: e,
            },
        })?;
    drop(listener);
    children.push(child);
    Ok(connected.into())
}

fn kill_all(children: &mut [std::process::Child]) {
    for c in children {
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// `program` as the path exec will run: as it is when it names a path, else the first
/// executable file of that name on `$PATH`. Resolved here because the jail's `$PATH` lookup
/// would see only `/usr`.
fn find_program(program: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.contains('/') {
        let p = std::path::absolute(program).ok()?;
        return executable(&p).then_some(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| p.is_absolute() && executable(p))
}

/// The line a failing jail step wrote to QEMU's log, if any: what the spawn error alone (an
/// errno) does not say.
fn jail_failure(log: &Path) -> Option<String> {
    super::console_tail(log, 5)
        .lines()
        .find(|l| l.starts_with(jail::FAILURE_PREFIX))
        .map(str::to_owned)
}

impl Backend for Qemu {
    fn kind(&self) -> BackendKind {
        BackendKind::Qemu
    }

    fn launch(&self, spec: &VmSpec) -> Result<VmmProcess, VmmError> {
        let (accel, tcg_because) = accel();
        if let Some(why) = tcg_because {
            tracing::info!(sandbox = %spec.id, "qemu uses TCG: {why}");
        }
        let accel = accel.to_owned();
        let program = self.resolved_program()?;
        let confine = |what: &str, e: Box<dyn std::error::Error + Send + Sync>| VmmError::Confine {
            what: what.to_owned(),
            source: e,
        };
        let lease = IdRange::from_env()
            .and_then(IdLease::acquire)
            .map_err(|e| confine("lease a uid and gid for QEMU", e.into()))?;
        // Where the jail's root is mounted, in QEMU's namespace only: an empty directory.
        let mount_point = spec.dir.join("jail");
        crate::private::create_dir(&mount_point).map_err(io_err("create", &mount_point))?;
        let jail = Jail::new(
            &mount_point,
            &program,
            &[&spec.kernel, &spec.initramfs],
            accel == "kvm",
            lease.id(),
        )
        .map_err(|e| confine("prepare QEMU's jail", e.into()))?;
        let log_path = spec.dir.join("qemu.log");
        let (log, log2) = log_file(&log_path)?;
        let (mut owned, mut fds) = open_resources(spec)?;
        let qmp = match spec.start {
            VmStart::BootTemplate => {
                let (ours, theirs) =
                    std::os::unix::net::UnixStream::pair().map_err(|source| VmmError::Io {
                        what: "make QEMU's QMP socket pair".into(),
                        source,
                    })?;
                fds.qmp = Some(theirs.as_raw_fd());
                owned.push(theirs.into());
                Some(ours)
            }
            VmStart::Boot | VmStart::Restore(_) => None,
        };
        // Last before QEMU, which talks to them from its start: nothing after this may fail
        // without killing them.
        let (mut companions, shares) = start_virtiofsd(spec)?;
        fds.shares = shares.iter().map(AsRawFd::as_raw_fd).collect();
        let args = self
            .args(spec, &accel, crate::host::tsc_khz(), &fds)
            .inspect_err(|_| kill_all(&mut companions))?;
        // Every descriptor QEMU inherits; all others stay close-on-exec. The lease's too: the
        // uid stays leased while QEMU runs, whatever becomes of this process.
        let mut inherited: Vec<RawFd> = owned.iter().map(AsRawFd::as_raw_fd).collect();
        inherited.extend(&fds.shares);
        inherited.extend(spec.net.as_ref().map(crate::net::NetDevice::fd));
        inherited.push(lease.fd());
        let mut cmd = tokio::process::Command::new(&program);
        // argv[0] as configured (`ps` shows `qemu-system-x86_64 ...`, not the resolved path).
        cmd.arg0(&self.program);
        // First of its hooks: QEMU runs nothing outside the cgroup (which needs the host's
        // cgroup files: before the jail).
        if let Some(cg) = &spec.cgroup {
            cg.on_spawn(&mut cmd);
        }
        // A template's VM has no sandbox whose clean-up would find it: should this process die
        // while it builds, the kernel kills that QEMU too. Set after the jail, whose change of
        // credentials clears it.
        let die_with_us = spec.start == VmStart::BootTemplate;
        // SAFETY: runs in the forked child before exec and only makes system calls on values
        // prepared here (fcntl(2), the jail's mount/pivot_root/set*id calls, prctl(2)): no
        // allocation, async-signal-safe. The descriptors are open in the parent (`owned`,
        // `shares`, the `NetDevice` in `spec`, `lease`) until after the spawn, so in the child.
        unsafe {
            cmd.pre_exec(move || {
                for &fd in &inherited {
                    inherit(fd)?;
                }
                jail.enter()?;
                if die_with_us {
                    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)?;
                }
                no_new_privs()
            });
        }
        let child = cmd
            .args(&args)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .inspect_err(|_| kill_all(&mut companions))
            .map_err(|e| match (jail_failure(&log_path), e.kind()) {
                (None, std::io::ErrorKind::NotFound) => VmmError::MissingProgram {
                    program: self.program.clone(),
                    hint: "install the Debian package qemu-system-x86".into(),
                },
                (step, _) => VmmError::Io {
                    what: match step {
                        Some(step) => format!("{} ({step})", super::starting(&self.program, spec)),
                        None => super::starting(&self.program, spec),
                    },
                    source: e,
                },
            })?;
        // QEMU has its copies.
        drop(owned);
        drop(shares);
        tracing::debug!(sandbox = %spec.id, uid = lease.id(), "qemu {}", args.join(" "));
        let mut vmm = VmmProcess::new(child, spec.console_log.clone(), log_path, BackendKind::Qemu)
            .inspect_err(|_| kill_all(&mut companions))?;
        if let Some(qmp) = qmp {
            vmm = vmm.with_qmp(qmp);
        }
        Ok(vmm.with_companions(companions).with_id_lease(lease))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Descriptors as a launch would pass them for [`crate::vmm::sample_spec`]'s two disks.
    fn fds() -> Fds {
        Fds {
            console: 10,
            agent: 11,
            shares: vec![],
            disks: vec![vec![12], vec![13, 14]],
            qmp: None,
            incoming: None,
        }
    }

    #[test]
    fn command_line_carries_every_field() {
        let spec = crate::vmm::sample_spec();
        let a = Qemu::new()
            .args(&spec, "tcg,tb-size=64", Some(2_596_146), &fds())
            .unwrap()
            .join(" ");
        assert_eq!(
            a,
            "-accel tcg,tb-size=64 -M microvm -cpu qemu64,+arat -smp 2 -m 512M -nodefaults -no-user-config -nographic -no-reboot \
             -name guest=/d -sandbox on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny \
             -kernel /a/vmlinux -initrd /a/initramfs.cpio \
             -append console=ttyS0 quiet panic=-1 tsc_early_khz=2596146 tsc=reliable MSB_HOSTNAME=h \
             -add-fd fd=10,set=0 -serial file:/dev/fdset/0 -device virtio-serial-device \
             -chardev socket,id=agent,fd=11,server=on,wait=off -device virtserialport,chardev=agent,name=agent \
             -device virtio-balloon-device,free-page-reporting=on \
             -add-fd fd=12,set=1 -drive file=/dev/fdset/1,if=none,id=disk0,format=raw,readonly=on -device virtio-blk-device,drive=disk0,serial=lower \
             -add-fd fd=13,set=2 -add-fd fd=14,set=2 \
             -drive file=/dev/fdset/2,if=none,id=disk1,format=raw,cache=unsafe,discard=unmap -device virtio-blk-device,drive=disk1,serial=upper"
        );
    }

    #[test]
    fn commas_in_option_values_are_doubled() {
        let mut spec = crate::vmm::sample_spec();
        spec.disks[0].serial = "a,format=qcow2".into();
        spec.shares = vec![crate::vmm::ShareSpec {
            tag: "t,x=y".into(),
            host_path: "/cache".into(),
            read_only: true,
        }];
        let fds = Fds {
            shares: vec![15],
            ..fds()
        };
        let a = Qemu::new()
            .args(&spec, "tcg", None, &fds)
            .unwrap()
            .join(" ");
        assert!(
            a.contains("virtio-blk-device,drive=disk0,serial=a,,format=qcow2 "),
            "{a}"
        );
        assert!(
            a.contains("vhost-user-fs-device,chardev=fs0,tag=t,,x=y "),
            "{a}"
        );
    }

    #[test]
    fn descriptors_must_match_the_spec() {
        let spec = crate::vmm::sample_spec();
        let e = Qemu::new()
            .args(&spec, "tcg", None, &Fds::default())
            .unwrap_err()
            .to_string();
        assert_eq!(e, "0 disk and 0 share descriptors for 2 disks and 0 shares");
    }

    #[test]
    fn a_pod_network_adds_a_virtio_net_device_on_the_inherited_tap() {
        let tap = std::fs::File::open("/dev/null").unwrap();
        let net = crate::net::NetDevice {
            tap: std::sync::Arc::new(std::os::fd::OwnedFd::from(tap)),
            mac: [0x02, 0x6d, 0x73, 0x62, 0x00, 0x0a],
            mtu: 1450,
        };
        let spec = VmSpec {
            disks: vec![],
            net: Some(net.clone()),
            ..crate::vmm::sample_spec()
        };
        let fds = Fds {
            disks: vec![],
            ..fds()
        };
        let a = Qemu::new()
            .args(&spec, "tcg", None, &fds)
            .unwrap()
            .join(" ");
        assert!(
            a.ends_with(&format!(
                "-netdev tap,id=net0,fd={},vhost=off \
                 -device virtio-net-device,netdev=net0,mac=02:6d:73:62:00:0a,host_mtu=1450",
                net.fd()
            )),
            "{a}"
        );
    }

    #[test]
    fn shares_add_virtiofs_devices_on_shared_memory() {
        let spec = VmSpec {
            memory_mib: 256,
            disks: vec![],
            shares: vec![crate::vmm::ShareSpec {
                tag: "msb_runtime".into(),
                host_path: "/cache".into(),
                read_only: true,
            }],
            ..crate::vmm::sample_spec()
        };
        let fds = Fds {
            disks: vec![],
            shares: vec![15],
            ..fds()
        };
        let a = Qemu::new()
            .args(&spec, "tcg", None, &fds)
            .unwrap()
            .join(" ");
        assert!(a.contains("-M microvm,memory-backend=mem "), "{a}");
        assert!(
            a.ends_with(
                "-object memory-backend-memfd,id=mem,size=256M,share=on \
                 -chardev socket,id=fs0,fd=15 -device vhost-user-fs-device,chardev=fs0,tag=msb_runtime"
            ),
            "{a}"
        );
    }
}
