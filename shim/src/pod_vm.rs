//! The shim's view of a VM, a [`PodVm`]: the narrow trait the task service is written against.
//!
//! Vocabulary: a *sandbox* is the pod (CRI's word; `sandbox_id` names it), a [`PodVm`] is the
//! one VM that runs a sandbox's containers, as the shim sees it, and `msb_runtime::Vm` is that
//! VM in the runtime. The shim depends on this trait only, so the whole task service is testable
//! with `fake::FakePodVm` (feature `test-utils`) and the real runtime plugs in through one thin
//! adapter ([`crate::runtime_adapter`]).
//!
//! A [`PodVmFactory`] boots one VM per pod (or per container when there is no pod); a
//! [`PodVm`] runs containers and processes in it. Each process comes back as a
//! [`GuestProcess`]: its pid, a stdin sender, an output receiver and a one-shot exit status, so
//! the shim can drain the output before it reports the exit. OOM kills and the death of the VM
//! arrive on the VM's event stream ([`PodVm::subscribe`]).
//!
//! Every call that goes to the guest returns within a deadline (the runtime's agent client has
//! one for each request, and for sending at all); where the shim must not wait even that long
//! (the SIGKILL of a sandbox's init, the Delete that ends a VM) it gives up after
//! [`PodVm::kill_grace`] and kills the VMM with [`PodVm::kill_vmm`].

use std::fmt::Debug;
use std::path::PathBuf;

use async_trait::async_trait;
use msb_oci::OciRootfsSource;
use msb_protocol::types::{
    ContainerCreate, ContainerStatsReply, ExecFailureKind, ExecRequest, Resources,
};
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::config::VmSettings;

#[cfg(any(test, feature = "test-utils"))]
pub mod fake;

/// The cause of a [`PodVmError`]: the runtime's typed error, whose own causes follow it, or a
/// message where the shim itself found the problem. Kept whole so that containerd's log and
/// `ctr`, `crictl` and `docker` show the root cause ([`crate::error::chain`] prints the chain).
pub type Cause = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why an operation on a pod's VM failed.
#[derive(Debug, thiserror::Error)]
pub enum PodVmError {
    /// The VM could not be started.
    #[error("boot sandbox")]
    Boot(#[source] Cause),
    /// The root file system could not be prepared (images, disks).
    #[error("prepare rootfs")]
    Rootfs(#[source] Cause),
    /// The guest refused or failed a container request.
    #[error("container {id}: {message}")]
    Container {
        /// Container id.
        id: String,
        /// The guest's message.
        message: String,
    },
    /// A process could not start.
    #[error("exec failed ({kind:?}): {message}")]
    ExecFailed {
        /// Category from the guest.
        kind: ExecFailureKind,
        /// The guest's message.
        message: String,
    },
    /// The guest knows no such container or process.
    #[error("not found in sandbox: {0}")]
    NotFound(String),
    /// The VM or its agent connection is gone.
    #[error("sandbox is gone: {0}")]
    Gone(String),
    /// A host volume could not be shared with the VM.
    #[error("share host volume {0}")]
    Volume(String, #[source] Cause),
    /// Anything else on the way to the guest.
    #[error("sandbox")]
    Other(#[source] Cause),
}

/// Identifies a process in the shim: its container and its exec id (`None` for the init).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ProcessKey {
    /// Container id.
    pub container: String,
    /// Exec id; `None` is the container's init process.
    pub exec_id: Option<String>,
}

/// A chunk of process output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// From stdout (or the terminal).
    Stdout(Vec<u8>),
    /// From stderr.
    Stderr(Vec<u8>),
}

/// A running process in the guest.
#[derive(Debug)]
pub struct GuestProcess {
    /// Its pid in the VM.
    pub pid: u32,
    /// Bytes for its stdin; an empty chunk is EOF. `None` when it has no stdin.
    pub stdin: Option<mpsc::Sender<Vec<u8>>>,
    /// Its output; closed once the process's output ended.
    pub output: mpsc::Receiver<Output>,
    /// Its exit status (exact code, or 128+signal). Dropped without a value when the VM died.
    pub exit: oneshot::Receiver<i32>,
}

/// Something the VM reports on its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodVmEvent {
    /// A container's memory cgroup recorded an OOM kill.
    Oom {
        /// Container id.
        container: String,
    },
    /// The VM stopped (crash, poweroff); every process is gone.
    Died {
        /// Why, as far as known.
        reason: String,
    },
}

/// Host-side disks prepared for a container's root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreparedRootfs {
    /// What the guest mounts.
    pub spec: msb_protocol::types::RootfsSpec,
    /// Files the shim must remove at Delete (the container's upper image, ...).
    pub owned_files: Vec<PathBuf>,
}

/// A container's root, to be prepared in its VM.
#[derive(Debug, Clone, Copy)]
pub struct ContainerRoot<'a> {
    /// The container's id.
    pub container: &'a str,
    /// Its layers (and whether the mounts asked for a read-only root).
    pub source: &'a OciRootfsSource,
    /// Size of its writable upper, bytes (sparse).
    pub upper_size: u64,
    /// Whether it binds host paths: a VM booted for it then gets a volume share (a pod's VM
    /// always does, for its later containers).
    pub has_volumes: bool,
}

pub use msb_runtime::volumes::{HostVolume, Propagation, SharedVolume};

/// One VM.
#[async_trait]
pub trait PodVm: Send + Sync + Debug {
    /// Prepares the root of a further container of this pod in the running VM (the first
    /// container's root comes with [`PodVmFactory::boot`]).
    async fn add_rootfs(&self, root: &ContainerRoot<'_>) -> Result<PreparedRootfs, PodVmError>;
    /// Prepares the container's root and namespaces.
    async fn create_container(&self, create: ContainerCreate) -> Result<(), PodVmError>;
    /// Binds host path `source` (a directory or regular file) as volume `index` of
    /// `container` into the VM's volume share, before the container is created; returns where
    /// the guest finds it. The volumes of a container go at [`PodVm::delete_container`].
    async fn add_volume(
        &self,
        container: &str,
        index: usize,
        volume: &HostVolume,
    ) -> Result<SharedVolume, PodVmError>;
    /// Starts a process (the init when `key.exec_id` is `None`).
    async fn exec(&self, key: &ProcessKey, req: ExecRequest) -> Result<GuestProcess, PodVmError>;
    /// Delivers a signal to a process, or with `all` to every process of its container.
    async fn signal(&self, key: &ProcessKey, signal: i32, all: bool) -> Result<(), PodVmError>;
    /// Resizes a process's terminal.
    async fn resize(&self, key: &ProcessKey, rows: u16, cols: u16) -> Result<(), PodVmError>;
    /// Freezes a container.
    async fn pause(&self, container: &str) -> Result<(), PodVmError>;
    /// Thaws a container.
    async fn resume(&self, container: &str) -> Result<(), PodVmError>;
    /// Changes a container's limits.
    async fn update(&self, container: &str, resources: Resources) -> Result<(), PodVmError>;
    /// Reads a container's cgroup figures.
    async fn stats(&self, container: &str) -> Result<ContainerStatsReply, PodVmError>;
    /// Lists a container's pids.
    async fn pids(&self, container: &str) -> Result<Vec<u32>, PodVmError>;
    /// Kills what is left of a container and forgets it.
    async fn delete_container(&self, container: &str) -> Result<(), PodVmError>;
    /// Stops the VM (clean guest shutdown, then the VMM, killed if the guest does not power
    /// off in time).
    async fn shutdown(&self) -> Result<(), PodVmError>;
    /// Kills the VMM now, without asking the guest (which did not answer in time): every
    /// process in the VM is gone, its exit status dropped (the shim reports 137), and every call
    /// still waiting on the guest fails. [`PodVm::shutdown`] still cleans up after it.
    async fn kill_vmm(&self);
    /// How long the guest may take to answer a SIGKILL of the sandbox's init, and to report its
    /// exit, before the shim kills the VMM.
    fn kill_grace(&self) -> std::time::Duration {
        msb_protocol::KILL_EXIT_TIMEOUT
    }
    /// The pid of the VMM process on the host (recorded for cleanup after a shim crash).
    fn vmm_pid(&self) -> Option<u32>;
    /// OOM kills and VM death.
    fn subscribe(&self) -> broadcast::Receiver<PodVmEvent>;
}

/// Boots sandboxes' VMs.
#[async_trait]
pub trait PodVmFactory: Send + Sync + Debug {
    /// Boots the VM of sandbox `id` with `settings`, its files under `dir`, with the root of its
    /// first container (a VM takes no disk after boot). When it returns the VM runs and that
    /// root is prepared.
    async fn boot(
        &self,
        id: &str,
        settings: &VmSettings,
        dir: &std::path::Path,
        first: &ContainerRoot<'_>,
    ) -> Result<(std::sync::Arc<dyn PodVm>, PreparedRootfs), PodVmError>;
}
