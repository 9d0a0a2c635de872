//! VMM backends behind one trait.
//!
//! A backend turns a [`VmSpec`] into a running VMM **child process** in its own process group
//! ([`VmmProcess`]): QEMU itself for [`qemu`], a small VMM binary around libkrun for `krun`
//! (libkrun's enter call never returns, so it cannot run inside our process). The rest of the
//! runtime never names a backend: it asks [`select_backend`] and talks to the guest through the
//! agent socket the spec names.

pub mod ids;
pub mod krun;
pub mod qemu;

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

/// Which VMM runs the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    /// libkrun (`msb_krun`): hosts whose KVM boots a standard guest.
    Krun,
    /// QEMU `-M microvm`, KVM when usable, TCG otherwise.
    Qemu,
}

impl FromStr for BackendKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "krun" => Ok(BackendKind::Krun),
            "qemu" => Ok(BackendKind::Qemu),
            other => Err(format!("unknown backend {other:?} (auto, krun, qemu)")),
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BackendKind::Krun => "krun",
            BackendKind::Qemu => "qemu",
        })
    }
}

impl BackendKind {
    /// Whether the backend can serve a virtio-fs share read-only, so that the host directory
    /// behind it is safe from the guest. QEMU's `virtiofsd --readonly` can; libkrun serves
    /// virtio-fs read-write only.
    pub fn serves_read_only_shares(self) -> bool {
        match self {
            BackendKind::Qemu => true,
            BackendKind::Krun => false,
        }
    }
}

impl BackendKind {
    /// Whether the backend can serve a pod network (the TAP made in the pod's namespace, as a
    /// descriptor the VMM inherits). Both can: QEMU as `-netdev tap,fd=N`, krun through
    /// `msb-krun-vmm`'s own fd-backed network backend (`msb_krun`'s TAP backend opens a TAP by
    /// name, which the VMM, in the host's namespace, could not find). krun carries an MTU of at
    /// most [`krun::MAX_NET_MTU`].
    pub fn serves_pod_network(self) -> bool {
        match self {
            BackendKind::Qemu | BackendKind::Krun => true,
        }
    }
}

/// Parses `auto|krun|qemu`; `auto` is `None`.
pub fn parse_backend(s: &str) -> Result<Option<BackendKind>, String> {
    match s {
        "auto" => Ok(None),
        other => other.parse().map(Some),
    }
}

/// The backend to use and why: the requested one, or for `auto` krun only where KVM can boot
/// a standard guest, else qemu.
pub fn select_backend(requested: Option<BackendKind>) -> (BackendKind, String) {
    match requested {
        Some(kind) => (kind, format!("{kind} requested")),
        None => match crate::host::kvm_usable() {
            Ok(()) => (
                BackendKind::Krun,
                "auto: KVM can boot a standard guest".into(),
            ),
            Err(why) => (BackendKind::Qemu, format!("auto: qemu, because {why}")),
        },
    }
}

/// A virtio-blk disk of the VM. The guest finds it by `serial`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskSpec {
    /// Serial the guest sees in `/sys/block/vd*/serial`.
    pub serial: String,
    /// The image on the host.
    pub path: PathBuf,
    /// Attach read-only.
    pub read_only: bool,
}

/// A virtio-fs share of a host directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShareSpec {
    /// The tag the guest mounts.
    pub tag: String,
    /// The host directory.
    pub host_path: PathBuf,
    /// Read-only.
    pub read_only: bool,
}

/// Everything a backend needs to boot one VM.
#[derive(Debug, Clone)]
pub struct VmSpec {
    /// Sandbox id (for logs).
    pub id: String,
    /// The sandbox directory: sockets, logs and disks live there.
    pub dir: PathBuf,
    /// Virtual CPUs.
    pub vcpus: u8,
    /// Memory in MiB.
    pub memory_mib: u32,
    /// Guest kernel (QEMU: `vmlinux`; krun uses libkrunfw's).
    pub kernel: PathBuf,
    /// The initramfs with agentd.
    pub initramfs: PathBuf,
    /// Extra kernel command line words: the `MSB_*` settings. Never secrets.
    pub cmdline: Vec<String>,
    /// Disks, in order.
    pub disks: Vec<DiskSpec>,
    /// Shares.
    pub shares: Vec<ShareSpec>,
    /// The pod network's TAP, served as a virtio-net device ([`crate::net`]).
    pub net: Option<crate::net::NetDevice>,
    /// Host side of the `agent` port.
    pub agent_socket: PathBuf,
    /// The guest console's log file.
    pub console_log: PathBuf,
    /// The host cgroup every VMM-side process (the VMM, each companion) joins before it execs;
    /// `None`: they stay in the caller's.
    pub cgroup: Option<crate::cgroup::Join>,
    /// Boot, or restore a saved template ([`crate::template`]).
    pub start: VmStart,
}

/// How the VMM starts the guest.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum VmStart {
    /// Boot the kernel.
    #[default]
    Boot,
    /// Boot the kernel with a QMP channel for the runtime ([`VmmProcess::take_qmp`]), which
    /// saves the VM as a template once it is ready. QEMU only.
    BootTemplate,
    /// Restore the template saved in this file instead of booting: the VMM's devices must be
    /// those the template had (the same number of disks, no shares, no network). QEMU only.
    Restore(PathBuf),
}

/// What a failed spawn of `program` for `spec` was doing, naming the cgroup the child was to
/// join first (a failure to join surfaces as the spawn's error).
pub(crate) fn starting(program: &str, spec: &VmSpec) -> String {
    match &spec.cgroup {
        Some(cg) => format!("start {program} in cgroup {}", cg.path()),
        None => format!("start {program}"),
    }
}

/// Why a VMM could not be started or died.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    /// The VMM program is missing.
    #[error("{program} not found: {hint}")]
    MissingProgram {
        /// The program.
        program: String,
        /// How to get it.
        hint: String,
    },
    /// The spec asks for something this backend cannot do.
    #[error("the {backend} backend does not support {what}")]
    Unsupported {
        /// Backend.
        backend: BackendKind,
        /// The feature.
        what: String,
    },
    /// Spawning or talking to the VMM process failed.
    #[error("{what}")]
    Io {
        /// What was done.
        what: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The VMM's confinement could not be prepared (its uid lease, its jail).
    #[error("{what}")]
    Confine {
        /// What was being prepared.
        what: String,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The VMM exited or the guest never came up.
    #[error("{0}")]
    Failed(String),
}

/// How a VMM process ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmExit {
    /// Exit status of the VMM process (`None` when killed by a signal).
    pub code: Option<i32>,
    /// Whether the guest kernel panicked (from its console).
    pub guest_panicked: bool,
}

impl fmt::Display for VmExit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.code {
            Some(code) => write!(f, "exit status {code}")?,
            None => f.write_str("killed by a signal")?,
        }
        if self.guest_panicked {
            f.write_str(", the guest kernel panicked")?;
        }
        Ok(())
    }
}

/// A running VMM child process, in its own process group. Killed and reaped on drop.
#[derive(Debug)]
pub struct VmmProcess {
    child: tokio::process::Child,
    pgid: i32,
    console_log: PathBuf,
    /// The VMM's own stdout and stderr (`qemu.log`, `krun.log`): why a VMM refused to start.
    vmm_log: PathBuf,
    kind: BackendKind,
    /// Helper processes that serve this VM only (virtiofsd), in their own process groups:
    /// killed and reaped with it.
    companions: Vec<std::process::Child>,
    /// The VMM's uid/gid lease ([`ids`]), released with this value (and the VMM's own copy).
    _ids: Option<ids::IdLease>,
    /// Keeps the logs of the VM's directory bounded while it runs.
    _log_cap: crate::log_cap::LogCapper,
    /// The runtime's end of the VMM's QMP channel ([`VmStart::BootTemplate`]).
    qmp: Option<std::os::unix::net::UnixStream>,
}

impl VmmProcess {
    /// Wraps a spawned child started with `process_group(0)`.
    pub fn new(
        child: tokio::process::Child,
        console_log: PathBuf,
        vmm_log: PathBuf,
        kind: BackendKind,
    ) -> Result<Self, VmmError> {
        let pgid = child
            .id()
            .and_then(|pid| i32::try_from(pid).ok())
            .ok_or_else(|| VmmError::Failed("the VMM exited at once".into()))?;
        let log_cap = crate::log_cap::LogCapper::start(
            console_log
                .parent()
                .map(std::path::Path::to_path_buf)
                .unwrap_or_default(),
        );
        Ok(VmmProcess {
            _log_cap: log_cap,
            child,
            pgid,
            console_log,
            vmm_log,
            kind,
            companions: Vec::new(),
            _ids: None,
            qmp: None,
        })
    }

    /// Keeps the runtime's end of the VMM's QMP channel for [`VmmProcess::take_qmp`].
    pub fn with_qmp(mut self, qmp: std::os::unix::net::UnixStream) -> Self {
        self.qmp = Some(qmp);
        self
    }

    /// The runtime's end of the VMM's QMP channel, once ([`VmStart::BootTemplate`]).
    pub fn take_qmp(&mut self) -> Option<std::os::unix::net::UnixStream> {
        self.qmp.take()
    }

    /// Holds the VMM's uid/gid lease as long as this value lives.
    pub fn with_id_lease(mut self, lease: ids::IdLease) -> Self {
        self._ids = Some(lease);
        self
    }

    /// Adds helper processes (started with `process_group(0)`) that live and die with the VM.
    pub fn with_companions(mut self, companions: Vec<std::process::Child>) -> Self {
        self.companions = companions;
        self
    }

    fn stop_companions(&mut self) {
        for c in &mut self.companions {
            if matches!(c.try_wait(), Ok(None)) {
                if let Ok(pgid) = i32::try_from(c.id()) {
                    // The process group of our own, not yet reaped, child.
                    let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
                }
                let _ = c.wait();
            }
        }
        self.companions.clear();
    }

    /// The VMM's pid (also its process group).
    pub fn pid(&self) -> i32 {
        self.pgid
    }

    /// Which backend runs it.
    pub fn kind(&self) -> BackendKind {
        self.kind
    }

    /// The last `lines` lines of the guest console, for error messages.
    pub fn console_tail(&self, lines: usize) -> String {
        console_tail(&self.console_log, lines)
    }

    /// The last `lines` lines of the VMM's own log, for error messages.
    pub fn vmm_log_tail(&self, lines: usize) -> String {
        console_tail(&self.vmm_log, lines)
    }

    /// Whether it has exited, without waiting.
    pub fn try_exit(&mut self) -> Option<VmExit> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some(self.exit_of(status)),
            _ => None,
        }
    }

    fn exit_of(&self, status: std::process::ExitStatus) -> VmExit {
        // A panic is the last thing the console shows.
        let console = crate::log_cap::read_tail(&self.console_log, TAIL_BYTES);
        VmExit {
            code: status.code(),
            guest_panicked: String::from_utf8_lossy(&console).contains("Kernel panic"),
        }
    }

    /// Waits for the VMM to exit.
    pub async fn wait(&mut self) -> Result<VmExit, VmmError> {
        let status = self.child.wait().await.map_err(|source| VmmError::Io {
            what: "wait for the VMM".into(),
            source,
        })?;
        self.stop_companions();
        Ok(self.exit_of(status))
    }

    /// Waits up to `timeout`, then kills the whole process group.
    pub async fn wait_or_kill(&mut self, timeout: Duration) -> Result<VmExit, VmmError> {
        match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(r) => {
                let status = r.map_err(|source| VmmError::Io {
                    what: "wait for the VMM".into(),
                    source,
                })?;
                self.stop_companions();
                Ok(self.exit_of(status))
            }
            Err(_) => {
                self.kill();
                self.wait().await
            }
        }
    }

    /// Kills the VMM's process group, unless it was already reaped (its pid could be reused).
    pub fn kill(&mut self) {
        self.stop_companions();
        if !matches!(self.child.try_wait(), Ok(None)) {
            return;
        }
        // Our own child's process group.
        let _ = killpg(Pid::from_raw(self.pgid), Signal::SIGKILL);
        let _ = self.child.start_kill();
    }
}

impl Drop for VmmProcess {
    fn drop(&mut self) {
        self.stop_companions();
        if matches!(self.child.try_wait(), Ok(None)) {
            self.kill();
            // Reap synchronously: a dropped sandbox must not leave a zombie or a running VMM.
            let _ = nix::sys::wait::waitpid(Pid::from_raw(self.pgid), None);
        }
    }
}

/// Bytes of a log read for its tail (a log may be large; see [`crate::log_cap`]).
const TAIL_BYTES: u64 = 64 << 10;

/// The last `lines` lines of a log file (within its last [`TAIL_BYTES`]).
pub fn console_tail(path: &std::path::Path, lines: usize) -> String {
    let text = String::from_utf8_lossy(&crate::log_cap::read_tail(path, TAIL_BYTES)).into_owned();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A way to start VMs.
pub trait Backend: fmt::Debug + Send + Sync {
    /// Which one.
    fn kind(&self) -> BackendKind;
    /// Starts the VMM process for `spec`. Returns once the process runs; the caller connects to
    /// `spec.agent_socket` and waits for `core.ready`.
    fn launch(&self, spec: &VmSpec) -> Result<VmmProcess, VmmError>;
}

/// The backend implementation for `kind`.
pub fn backend(kind: BackendKind) -> Result<Box<dyn Backend>, VmmError> {
    match kind {
        BackendKind::Qemu => Ok(Box::new(qemu::Qemu::new())),
        BackendKind::Krun => Ok(Box::new(krun::Krun::new())),
    }
}

/// The spec the backends' command-line tests translate: 2 vCPUs, 512 MiB, one `MSB_*` word,
/// a read-only lower and a writable upper disk, no share.
#[cfg(test)]
pub(crate) fn sample_spec() -> VmSpec {
    VmSpec {
        id: "s".into(),
        dir: "/d".into(),
        vcpus: 2,
        memory_mib: 512,
        kernel: "/a/vmlinux".into(),
        initramfs: "/a/initramfs.cpio".into(),
        cmdline: vec!["MSB_HOSTNAME=h".into()],
        disks: vec![
            DiskSpec {
                serial: "lower".into(),
                path: "/d/lower.img".into(),
                read_only: true,
            },
            DiskSpec {
                serial: "upper".into(),
                path: "/d/upper.img".into(),
                read_only: false,
            },
        ],
        shares: vec![],
        net: None,
        agent_socket: "/d/agent.sock".into(),
        console_log: "/d/console.log".into(),
        cgroup: None,
        start: VmStart::Boot,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_names_parse() {
        assert_eq!(parse_backend("auto"), Ok(None));
        assert_eq!(parse_backend("qemu"), Ok(Some(BackendKind::Qemu)));
        assert_eq!(parse_backend("krun"), Ok(Some(BackendKind::Krun)));
        assert_eq!(
            parse_backend("kvm"),
            Err("unknown backend \"kvm\" (auto, krun, qemu)".into())
        );
        let (kind, why) = select_backend(Some(BackendKind::Qemu));
        assert_eq!((kind, why.as_str()), (BackendKind::Qemu, "qemu requested"));
    }
}
