//! The adapter from [`crate::sandbox`] to the runtime crate (`msb_runtime`): the shim's VMs are
//! real microVMs.
//!
//! Disks cannot be added to a running QEMU `microvm` (no hotplug), so a VM boots when its first
//! container's root is prepared: [`RuntimeFactory::boot`] only records the configuration, and
//! [`Sandbox::prepare_rootfs`] makes the disks and starts the VM with them. Each image layer
//! becomes its own read-only EROFS image, cached in `cache_dir` and reused by every container
//! of the same image; the guest stacks them under the container's fresh ext4 upper with
//! overlayfs, which understands the snapshotter's whiteouts as they are.
//!
//! A pod's VM (bundles naming `io.kubernetes.cri.sandbox-id`) gets its disks differently, because
//! its later containers arrive after boot: one pod upper disk on which each container's upper is
//! a directory, and the runtime share (virtio-fs) of a per-pod directory into which each
//! container's layer images are linked; agentd loop-mounts them from there.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use msb_oci::OciRootfsSource;
use msb_protocol::types::{
    ContainerCreate, ContainerStatsReply, ExecRequest, ExecResize, ExecSignal, Resources,
    RootfsSpec, StorageRef,
};
use msb_protocol::{DISKS_MOUNT_DIR, RUNTIME_FS_TAG, RUNTIME_MOUNT_POINT};
use msb_runtime::vmm::{parse_backend, DiskSpec, ShareSpec};
use msb_runtime::{disks, AgentClient, ExecEvent, GuestAssets};
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::config::SandboxConfig;
use crate::layer_cache;
use crate::output_gate::OutputGate;
use crate::sandbox::{
    ExecSession, Output, PathError, PreparedRootfs, ProcessKey, Sandbox, SandboxError,
    SandboxEvent, SandboxFactory,
};

/// How long a clean guest power-off may take before the VMM is killed (TCG is slow).
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);

/// Serial of a pod's upper disk, which holds one upper directory per container.
const POD_DISK: &str = "pod";

/// The production factory.
#[derive(Debug, Default)]
pub struct RuntimeFactory;

#[async_trait]
impl SandboxFactory for RuntimeFactory {
    async fn boot(
        &self,
        id: &str,
        config: &SandboxConfig,
        state_dir: &Path,
    ) -> Result<Arc<dyn Sandbox>, SandboxError> {
        let backend = parse_backend(&config.backend).map_err(|e| SandboxError::Boot(e.into()))?;
        let assets = GuestAssets {
            kernel: config.kernel.clone(),
            initramfs: config.initramfs.clone(),
        };
        assets.check().map_err(|e| SandboxError::Boot(e.into()))?;
        let (events, _) = broadcast::channel(64);
        Ok(Arc::new(RuntimeSandbox {
            id: id.to_owned(),
            config: config.clone(),
            backend,
            assets,
            dir: state_dir.join("vm"),
            vm: tokio::sync::Mutex::new(None),
            agent: Mutex::new(None),
            vmm_pid: Mutex::new(None),
            processes: Mutex::default(),
            events,
        }))
    }
}

/// One VM of the shim.
#[derive(Debug)]
struct RuntimeSandbox {
    id: String,
    config: SandboxConfig,
    backend: Option<msb_runtime::BackendKind>,
    assets: GuestAssets,
    dir: PathBuf,
    vm: tokio::sync::Mutex<Option<msb_runtime::Sandbox>>,
    agent: Mutex<Option<AgentClient>>,
    vmm_pid: Mutex<Option<u32>>,
    /// Correlation id of each live process, for signals, resizes and stdin.
    processes: Mutex<HashMap<ProcessKey, u32>>,
    events: broadcast::Sender<SandboxEvent>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn agent_err(e: msb_runtime::AgentError) -> SandboxError {
    match e {
        msb_runtime::AgentError::Closed(r) => SandboxError::Gone(r),
        msb_runtime::AgentError::Container { id, message } => {
            SandboxError::Container { id, message }
        }
        other => SandboxError::Other(other.into()),
    }
}

/// The VM's hostname: the sandbox id made a valid name (containers without a hostname of
/// their own see it, as a runc container sees its host's; a VM has no host name to inherit).
fn vm_hostname(id: &str) -> Option<msb_protocol::boot::Hostname> {
    let name: String = id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' {
                c
            } else {
                '-'
            }
        })
        .take(63)
        .collect();
    msb_protocol::boot::Hostname::parse(&name).ok()
}

/// Whether a pod share can be read-only under `kind`. libkrun serves virtio-fs read-write only;
/// a writable share must not hold hard links to the host's image cache (the guest could change
/// every pod's images through them), so krun pods get copies instead.
fn share_can_be_read_only(kind: msb_runtime::BackendKind) -> bool {
    kind == msb_runtime::BackendKind::Qemu
}

/// Creates a directory and its parents; the error names it.
fn mkdir(dir: &Path) -> Result<(), SandboxError> {
    std::fs::create_dir_all(dir)
        .map_err(PathError::cause("create", dir))
        .map_err(SandboxError::Rootfs)
}

/// Copies under a temporary name and renames, so the guest never sees half an image.
fn copy_atomically(from: &Path, to: &Path) -> std::io::Result<()> {
    let tmp = to.with_extension("partial");
    std::fs::copy(from, &tmp)?;
    std::fs::rename(&tmp, to)
}

impl RuntimeSandbox {
    fn agent(&self) -> Result<AgentClient, SandboxError> {
        lock(&self.agent).clone().ok_or_else(|| {
            SandboxError::Other(format!("sandbox {} has not booted", self.id).into())
        })
    }

    /// Boots the VM with these disks and shares and starts forwarding its events.
    async fn boot_vm(
        &self,
        backend: Option<msb_runtime::BackendKind>,
        disks: Vec<DiskSpec>,
        shares: Vec<ShareSpec>,
    ) -> Result<msb_runtime::Sandbox, SandboxError> {
        let mut cfg = msb_runtime::SandboxConfig::new(&self.id);
        cfg.dir = self.dir.clone();
        cfg.backend = backend;
        cfg.vcpus = self.config.vcpus.clamp(1, 255) as u8;
        cfg.memory_mib = self.config.memory_mib;
        cfg.assets = self.assets.clone();
        cfg.disks = disks;
        cfg.shares = shares;
        cfg.boot_env.hostname = vm_hostname(&self.id);
        let sb = msb_runtime::Sandbox::start(cfg)
            .await
            .map_err(|e| SandboxError::Boot(e.into()))?;
        let agent = sb.agent().clone();
        *lock(&self.vmm_pid) = Some(sb.vmm_pid() as u32);
        *lock(&self.agent) = Some(agent.clone());
        let (mut guest_events, events) = (agent.events(), self.events.clone());
        tokio::spawn(async move {
            while let Ok(m) = guest_events.recv().await {
                if let Ok(oom) = m.decode::<msb_protocol::types::ContainerOom>() {
                    let _ = events.send(SandboxEvent::Oom { container: oom.id });
                }
            }
            let _ = events.send(SandboxEvent::Died {
                reason: "the agent connection closed".into(),
            });
        });
        Ok(sb)
    }

    /// A pod's container: the first one boots the VM with the pod's upper disk and the runtime
    /// share (a per-pod directory of hard links to the cached layer images, so a guest sees only
    /// its own pod's images); every container's layers are linked into the share, where the
    /// running guest finds them at once, and its upper is its own directory on the pod disk.
    async fn prepare_pod_rootfs(
        &self,
        vm: &mut Option<msb_runtime::Sandbox>,
        container: &str,
        source: &OciRootfsSource,
        images: &[PathBuf],
        upper_size: u64,
    ) -> Result<PreparedRootfs, SandboxError> {
        let share = self.dir.join("share");
        if vm.is_none() {
            mkdir(&share)?;
            let upper = self.dir.join("pod-upper.ext4");
            tokio::task::block_in_place(|| disks::make_upper(&upper, upper_size))
                .map_err(|e| SandboxError::Rootfs(e.into()))?;
            let disks = vec![DiskSpec {
                serial: POD_DISK.into(),
                path: upper,
                read_only: false,
            }];
            // Resolved here so that the share's mode and the backend booting it agree.
            let (kind, why) = msb_runtime::vmm::select_backend(self.backend);
            tracing::info!(sandbox = %self.id, "pod backend {kind}: {why}");
            let shares = vec![ShareSpec {
                tag: RUNTIME_FS_TAG.into(),
                host_path: share.clone(),
                read_only: share_can_be_read_only(kind),
            }];
            *vm = Some(self.boot_vm(Some(kind), disks, shares).await?);
        }
        let read_only = vm
            .as_ref()
            .is_some_and(|v| share_can_be_read_only(v.backend()));
        let mut lower = Vec::new();
        for image in images {
            let name = image.file_name().expect("cache images have a file name");
            let link = share.join(name);
            if !link.exists() {
                tokio::task::block_in_place(|| {
                    let linked = read_only && std::fs::hard_link(image, &link).is_ok();
                    if linked {
                        Ok(())
                    } else {
                        copy_atomically(image, &link)
                    }
                })
                .map_err(PathError::cause("share a layer image as", &link))
                .map_err(SandboxError::Rootfs)?;
            }
            lower.push(StorageRef::Image(format!(
                "{RUNTIME_MOUNT_POINT}/{}",
                name.to_string_lossy()
            )));
        }
        Ok(PreparedRootfs {
            spec: RootfsSpec {
                lower,
                upper: StorageRef::Dir(format!("{DISKS_MOUNT_DIR}/{POD_DISK}/c/{container}")),
                fstype: "ext4".into(),
                readonly: source.readonly,
            },
            owned_files: Vec::new(),
        })
    }

    fn process_id(&self, key: &ProcessKey) -> Result<u32, SandboxError> {
        lock(&self.processes)
            .get(key)
            .copied()
            .ok_or_else(|| SandboxError::NotFound(format!("{key:?}")))
    }
}

#[async_trait]
impl Sandbox for RuntimeSandbox {
    async fn prepare_rootfs(
        &self,
        container: &str,
        source: &OciRootfsSource,
        upper_size: u64,
        _state_dir: &Path,
    ) -> Result<PreparedRootfs, SandboxError> {
        if source.lowers.is_empty() {
            return Err(SandboxError::Rootfs(
                format!("container {container}: no root file system layers").into(),
            ));
        }
        let images = tokio::task::block_in_place(|| {
            source
                .lowers
                .iter()
                .map(|layer| layer_cache::image_for(&self.config.cache_dir, layer))
                .collect::<Result<Vec<_>, _>>()
        })?;
        let mut vm = self.vm.lock().await;
        if self.config.pod {
            return self
                .prepare_pod_rootfs(&mut vm, container, source, &images, upper_size)
                .await;
        }
        if vm.is_some() {
            return Err(SandboxError::Rootfs(
                format!(
                    "container {container}: VM {} already runs a container; only containers of \
                     one pod (annotation io.kubernetes.cri.sandbox-id) share a VM",
                    self.id
                )
                .into(),
            ));
        }
        mkdir(&self.dir)?;
        let mut disk_specs = Vec::new();
        let mut lower = Vec::new();
        for (i, image) in images.into_iter().enumerate() {
            let serial = format!("l{i}");
            disk_specs.push(DiskSpec {
                serial: serial.clone(),
                path: image,
                read_only: true,
            });
            lower.push(StorageRef::Serial(serial));
        }
        let upper = self.dir.join("upper.ext4");
        tokio::task::block_in_place(|| disks::make_upper(&upper, upper_size))
            .map_err(|e| SandboxError::Rootfs(e.into()))?;
        disk_specs.push(DiskSpec {
            serial: "upper".into(),
            path: upper.clone(),
            read_only: false,
        });
        *vm = Some(self.boot_vm(self.backend, disk_specs, Vec::new()).await?);
        Ok(PreparedRootfs {
            spec: RootfsSpec {
                lower,
                upper: StorageRef::Serial("upper".into()),
                fstype: "ext4".into(),
                readonly: source.readonly,
            },
            owned_files: vec![upper],
        })
    }

    async fn create_container(&self, create: ContainerCreate) -> Result<(), SandboxError> {
        self.agent()?
            .container_create(&create)
            .await
            .map_err(agent_err)
    }

    async fn write_file(
        &self,
        container: &str,
        path: &str,
        data: Vec<u8>,
        mode: u32,
    ) -> Result<(), SandboxError> {
        self.agent()?
            .write_file(Some(container), path, mode, &data)
            .await
            .map_err(|e| match e {
                msb_runtime::AgentError::Fs { path, message } => SandboxError::Container {
                    id: container.to_owned(),
                    message: format!("copy of the host file for {path}: {message}"),
                },
                other => agent_err(other),
            })
    }

    async fn exec(&self, key: &ProcessKey, req: ExecRequest) -> Result<ExecSession, SandboxError> {
        let agent = self.agent()?;
        let has_stdin = req.stdin;
        let mut session = agent.exec(&req).await.map_err(agent_err)?;
        let id = session.id();
        let pid = match session.next().await.map_err(agent_err)? {
            ExecEvent::Started(pid) => pid,
            ExecEvent::Failed(f) => {
                return Err(SandboxError::ExecFailed {
                    kind: f.kind,
                    message: f.message,
                })
            }
            other => {
                return Err(SandboxError::Other(
                    format!("unexpected first exec event {other:?}").into(),
                ))
            }
        };
        lock(&self.processes).insert(key.clone(), id);
        let sender = session.stdin();
        let (out_tx, out_rx) = mpsc::channel(64);
        let (exit_tx, exit_rx) = oneshot::channel();
        let mut gate = OutputGate::new(
            out_tx,
            format!(
                "{}/{}",
                key.container,
                key.exec_id.as_deref().unwrap_or("init")
            ),
        );
        tokio::spawn(async move {
            loop {
                match session.next().await {
                    Ok(ExecEvent::Stdout(d)) => gate.forward(Output::Stdout(d)).await,
                    Ok(ExecEvent::Stderr(d)) => gate.forward(Output::Stderr(d)).await,
                    Ok(ExecEvent::Exited(code)) => {
                        drop(gate);
                        let _ = exit_tx.send(code);
                        return;
                    }
                    Ok(ExecEvent::Started(_)) => {}
                    // A failure after start cannot happen; a lost connection drops `exit_tx`,
                    // which the shim reads as "the VM died".
                    Ok(ExecEvent::Failed(_)) | Err(_) => return,
                }
            }
        });
        let stdin = has_stdin.then(|| {
            // Its own task: a chunk waits here for the guest's window (a process that does not
            // read its stdin holds back only its own stdin), and back-pressures the FIFO copy.
            let (tx, mut rx) = mpsc::channel::<Vec<u8>>(16);
            tokio::spawn(async move {
                while let Some(chunk) = rx.recv().await {
                    let sent = if chunk.is_empty() {
                        sender.close().await
                    } else {
                        sender.write(&chunk).await
                    };
                    if chunk.is_empty() || sent.is_err() {
                        return;
                    }
                }
            });
            tx
        });
        Ok(ExecSession {
            pid,
            stdin,
            output: out_rx,
            exit: exit_rx,
        })
    }

    async fn signal(&self, key: &ProcessKey, signal: i32, all: bool) -> Result<(), SandboxError> {
        let id = self.process_id(key)?;
        self.agent()?
            .send(id, &ExecSignal { signal, all })
            .await
            .map_err(agent_err)
    }

    async fn resize(&self, key: &ProcessKey, rows: u16, cols: u16) -> Result<(), SandboxError> {
        let id = self.process_id(key)?;
        self.agent()?
            .send(id, &ExecResize { rows, cols })
            .await
            .map_err(agent_err)
    }

    async fn pause(&self, container: &str) -> Result<(), SandboxError> {
        self.agent()?
            .container_pause(container)
            .await
            .map_err(agent_err)
    }

    async fn resume(&self, container: &str) -> Result<(), SandboxError> {
        self.agent()?
            .container_resume(container)
            .await
            .map_err(agent_err)
    }

    async fn update(&self, container: &str, resources: Resources) -> Result<(), SandboxError> {
        self.agent()?
            .container_update(container, resources)
            .await
            .map_err(agent_err)
    }

    async fn stats(&self, container: &str) -> Result<ContainerStatsReply, SandboxError> {
        self.agent()?
            .container_stats(container)
            .await
            .map_err(agent_err)
    }

    async fn pids(&self, container: &str) -> Result<Vec<u32>, SandboxError> {
        self.agent()?
            .container_pids(container)
            .await
            .map_err(agent_err)
    }

    async fn delete_container(&self, container: &str) -> Result<(), SandboxError> {
        lock(&self.processes).retain(|k, _| k.container != container);
        match self.agent() {
            Ok(agent) => agent.container_delete(container).await.map_err(agent_err),
            Err(_) => Ok(()),
        }
    }

    async fn shutdown(&self) -> Result<(), SandboxError> {
        lock(&self.agent).take();
        if let Some(sb) = self.vm.lock().await.take() {
            sb.shutdown(SHUTDOWN_TIMEOUT)
                .await
                .map_err(|e| SandboxError::Other(e.into()))?;
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        // Each VM's end is the moment to drop the images of layers containerd has removed
        // since: a few stats per cached image, and no image in use can go (see layer_cache).
        match layer_cache::prune(&self.config.cache_dir) {
            Ok(p) if p.images > 0 => tracing::info!(
                removed = p.images,
                bytes = p.bytes,
                kept = p.kept,
                "layer cache pruned"
            ),
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(dir = %self.config.cache_dir.display(), error = %e, "prune layer cache")
            }
        }
        Ok(())
    }

    fn vmm_pid(&self) -> Option<u32> {
        *lock(&self.vmm_pid)
    }

    fn subscribe(&self) -> broadcast::Receiver<SandboxEvent> {
        self.events.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_hostnames_are_valid() {
        assert_eq!(vm_hostname("demo-1").unwrap().as_str(), "demo-1");
        assert_eq!(vm_hostname("a_b c").unwrap().as_str(), "a-b-c");
        assert_eq!(vm_hostname(&"x".repeat(100)).unwrap().as_str().len(), 63);
        assert!(vm_hostname("").is_none());
    }
}
