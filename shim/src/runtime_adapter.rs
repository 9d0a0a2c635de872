//! The adapter from [`crate::pod_vm`] to the runtime crate (`msb_runtime`): the shim's VMs are
//! real microVMs.
//!
//! Disks cannot be added to a running QEMU `microvm` (no hotplug), so a VM boots with its first
//! container's root: [`RuntimeFactory::boot`] lays out the disks ([`msb_runtime::rootfs`]: a
//! single container's, or a pod's, whose later containers arrive after boot and get their roots
//! through [`PodVm::add_rootfs`]) and starts the VM with them. Which backend runs the VM is the
//! runtime's business; this file never names one.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use msb_protocol::types::{
    ContainerCreate, ContainerStatsReply, ExecRequest, ExecResize, ExecSignal, Resources,
};
use msb_runtime::net::forward::PortForwarder;
use msb_runtime::net::PodNetwork;
use msb_runtime::rootfs::{self, layer_cache, PodRootfs};
use msb_runtime::vmm::{parse_backend, DiskSpec, ShareSpec};
use msb_runtime::volumes::VolumeShare;
use msb_runtime::{AgentClient, ExecEvent, GuestAssets};
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::config::VmSettings;
use crate::output_gate::OutputGate;
use crate::pod_vm::{
    ContainerRoot, GuestProcess, HostVolume, Output, PodVm, PodVmError, PodVmEvent, PodVmFactory,
    PreparedRootfs, ProcessKey, SharedVolume,
};

/// The VM's own directory (`msb_runtime::Vm`'s) inside the sandbox directory the task service
/// made.
pub const VM_DIR: &str = "vm";

/// The production factory.
#[derive(Debug, Default)]
pub struct RuntimeFactory;

#[async_trait]
impl PodVmFactory for RuntimeFactory {
    async fn boot(
        &self,
        id: &str,
        settings: &VmSettings,
        dir: &Path,
        first: &ContainerRoot<'_>,
    ) -> Result<(Arc<dyn PodVm>, PreparedRootfs), PodVmError> {
        let backend = parse_backend(&settings.backend).map_err(|e| PodVmError::Boot(e.into()))?;
        let assets = GuestAssets {
            kernel: settings.kernel.clone(),
            initramfs: settings.initramfs.clone(),
        };
        assets.check().map_err(|e| PodVmError::Boot(e.into()))?;
        let (events, _) = broadcast::channel(64);
        let vm = Arc::new(RuntimePodVm {
            id: id.to_owned(),
            config: settings.clone(),
            backend,
            assets,
            dir: dir.join(VM_DIR),
            vm: tokio::sync::Mutex::new(None),
            agent: Mutex::new(None),
            vmm_pid: Mutex::new(None),
            processes: Mutex::default(),
            events,
            catch_up: Mutex::new(None),
        });
        // On failure `vm` is dropped here, and with it a VM that did start (its VMM killed).
        let prepared = vm.boot_with(first).await?;
        Ok((vm, prepared))
    }
}

/// One VM of the shim.
#[derive(Debug)]
struct RuntimePodVm {
    id: String,
    config: VmSettings,
    backend: Option<msb_runtime::BackendKind>,
    assets: GuestAssets,
    dir: PathBuf,
    vm: tokio::sync::Mutex<Option<Booted>>,
    agent: Mutex<Option<AgentClient>>,
    vmm_pid: Mutex<Option<u32>>,
    /// Correlation id of each live process, for signals, resizes and stdin.
    processes: Mutex<HashMap<ProcessKey, u32>>,
    events: broadcast::Sender<PodVmEvent>,
    /// Asks the task that turns the guest's events into [`PodVmEvent`]s to forward every event
    /// the guest sent so far, and answers when it has (see [`CatchUp`]).
    catch_up: Mutex<Option<mpsc::UnboundedSender<CatchUp>>>,
}

/// A request to the event-forwarding task: forward what is already received, then answer.
///
/// agentd sends an OOM kill's `core.container.oom` before the killed process's exit, and the
/// agent client hands both on in that order, but on two paths: the exit to the process's
/// session, the event to every event subscriber, among them the task that forwards it here.
/// That task can run late, so the exit could reach the shim first, and containerd publish
/// `TaskExit` before `TaskOOM` (a CRI client then misses `OOMKilled`). So a process's exit waits
/// until the forwarding task has caught up with what the guest sent before it.
type CatchUp = oneshot::Sender<()>;

/// How long an exit waits for the event forwarding to catch up at most (it is a few task
/// switches; the bound only keeps an exit from hanging on a forwarding task that is gone).
const CATCH_UP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn agent_err(e: msb_runtime::AgentError) -> PodVmError {
    match e {
        msb_runtime::AgentError::Closed(r) => PodVmError::Gone(r),
        msb_runtime::AgentError::Container { id, message } => PodVmError::Container { id, message },
        other => PodVmError::Other(other.into()),
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

/// A booted VM, for a pod where its later containers' layer images go, and its volume share.
#[derive(Debug)]
struct Booted {
    vm: msb_runtime::Vm,
    pod: Option<PodRootfs>,
    /// Dropped after `vm` (fields drop in order): the volumes are unbound once the VMM is gone.
    volumes: Option<VolumeShare>,
    /// The pod network when the sandbox names a network namespace; dropped (torn down) after
    /// `vm`, whose VMM holds the TAP's other descriptor.
    net: Option<PodNet>,
}

/// A pod network and the forwarding of its namespace's loopback ports into the VM.
#[derive(Debug)]
struct PodNet {
    /// Stops forwarding when dropped, before the network goes.
    forwarder: PortForwarder,
    /// `None`: a namespace without an interface for the VM, or the host's.
    network: Option<PodNetwork>,
}

/// A pod container's root in the running VM: its layer images into the share, its upper a
/// directory on the pod disk (nothing for the shim to remove: the pod's VM owns it all).
fn pod_root(
    pod: &PodRootfs,
    root: &ContainerRoot<'_>,
    images: &[PathBuf],
) -> Result<PreparedRootfs, PodVmError> {
    let mut spec = tokio::task::block_in_place(|| pod.add_container(root.container, images))
        .map_err(rootfs_err)?;
    spec.readonly = root.source.readonly;
    Ok(PreparedRootfs {
        spec,
        owned_files: Vec::new(),
    })
}

fn rootfs_err(e: rootfs::RootfsError) -> PodVmError {
    PodVmError::Rootfs(e.into())
}

impl RuntimePodVm {
    fn agent(&self) -> Result<AgentClient, PodVmError> {
        lock(&self.agent)
            .clone()
            .ok_or_else(|| PodVmError::Other(format!("sandbox {} has not booted", self.id).into()))
    }

    /// The pod network of the sandbox's namespace, when it names one and `backend` can serve it
    /// (else the VM keeps loopback only, as a container without a namespace path does).
    fn pod_network(
        &self,
        backend: Option<msb_runtime::BackendKind>,
    ) -> Result<Option<PodNetwork>, PodVmError> {
        let Some(netns) = &self.config.netns else {
            return Ok(None);
        };
        let (kind, _) = msb_runtime::vmm::select_backend(backend);
        if !kind.serves_pod_network() {
            tracing::warn!(sandbox = %self.id, netns = %netns.display(),
                "the {kind} backend cannot serve a pod network yet: the VM has loopback only");
            return Ok(None);
        }
        match tokio::task::block_in_place(|| PodNetwork::setup(netns)) {
            Ok(net) => Ok(Some(net)),
            // A namespace with `lo` only (a CNI network that makes no interface): so has the VM.
            Err(msb_runtime::net::NetError::NoInterface(_)) => {
                tracing::info!(sandbox = %self.id, netns = %netns.display(),
                    "no pod interface in the network namespace: the VM has loopback only");
                Ok(None)
            }
            Err(e) => Err(PodVmError::Boot(e.into())),
        }
    }

    /// Boots the VM with these disks and shares, and the pod network when the sandbox has one,
    /// and starts forwarding its events.
    async fn boot_vm(
        &self,
        backend: Option<msb_runtime::BackendKind>,
        disks: Vec<DiskSpec>,
        shares: Vec<ShareSpec>,
    ) -> Result<(msb_runtime::Vm, Option<PodNet>), PodVmError> {
        let net = self.pod_network(backend)?;
        let mut cfg = msb_runtime::VmConfig::new(&self.id);
        cfg.net = net.as_ref().map(PodNetwork::device);
        cfg.dir = self.dir.clone();
        cfg.backend = backend;
        cfg.vcpus = self.config.vcpus.clamp(1, 255) as u8;
        cfg.memory_mib = self.config.memory_mib;
        cfg.assets = self.assets.clone();
        cfg.disks = disks;
        cfg.shares = shares;
        cfg.boot_env.hostname = vm_hostname(&self.id);
        cfg.cgroup = self.config.cgroup.clone();
        cfg.templates &= self.config.templates;
        let sb = msb_runtime::Vm::start(cfg)
            .await
            .map_err(|e| PodVmError::Boot(e.into()))?;
        let mut pod_net = None;
        // A pod's network: its namespace (with or without an interface for the VM), or the
        // host's for `hostNetwork`; ports are forwarded from that namespace's loopback.
        let forward_from = match &self.config.netns {
            Some(ns) => Some(Some(ns.clone())),
            None => self.config.host_network.then_some(None),
        };
        if let Some(from) = forward_from {
            // Subscribed first: agentd reports its listening ports as soon as the network is up.
            let events = sb.agent().events();
            // Before any container: they all share the VM's network namespace.
            let config = net
                .as_ref()
                .map(PodNetwork::guest_config)
                .unwrap_or_default();
            sb.agent()
                .net_configure(&config)
                .await
                .map_err(|e| PodVmError::Boot(e.into()))?;
            pod_net = Some(PodNet {
                forwarder: PortForwarder::start(from.as_deref(), sb.agent().clone(), events),
                network: net,
            });
        }
        let agent = sb.agent().clone();
        *lock(&self.vmm_pid) = u32::try_from(sb.vmm_pid()).ok();
        *lock(&self.agent) = Some(agent.clone());
        let (mut guest_events, events) = (agent.events(), self.events.clone());
        let (catch_up, mut catch_ups) = mpsc::unbounded_channel::<CatchUp>();
        *lock(&self.catch_up) = Some(catch_up);
        tokio::spawn(async move {
            let forward = |m: &msb_protocol::Message| {
                if let Ok(oom) = m.decode::<msb_protocol::types::ContainerOom>() {
                    let _ = events.send(PodVmEvent::Oom { container: oom.id });
                }
            };
            loop {
                tokio::select! {
                    m = guest_events.recv() => match m {
                        Ok(m) => forward(&m),
                        Err(_) => break,
                    },
                    Some(done) = catch_ups.recv() => {
                        while let Ok(m) = guest_events.try_recv() {
                            forward(&m);
                        }
                        let _ = done.send(());
                    }
                }
            }
            let _ = events.send(PodVmEvent::Died {
                reason: "the agent connection closed".into(),
            });
        });
        Ok((sb, pod_net))
    }

    /// The cached layer images of a container's root (built on first use).
    fn layer_images(&self, root: &ContainerRoot<'_>) -> Result<Vec<PathBuf>, PodVmError> {
        tokio::task::block_in_place(|| {
            root.source
                .lowers
                .iter()
                .map(|layer| layer_cache::image_for(&self.config.cache_dir, layer))
                .collect::<Result<Vec<_>, _>>()
        })
        .map_err(rootfs_err)
    }

    /// Boots the VM with its first container's root: a pod's VM with the pod disk and the
    /// runtime share (the first container's images then go into the share, as every later
    /// one's), a single container's with its layers and upper as disks.
    async fn boot_with(&self, first: &ContainerRoot<'_>) -> Result<PreparedRootfs, PodVmError> {
        let images = self.layer_images(first)?;
        let mut booted = self.vm.lock().await;
        if self.config.pod {
            // Resolved here so that the share's mode and the backend booting it agree.
            let (kind, why) = msb_runtime::vmm::select_backend(self.backend);
            tracing::info!(sandbox = %self.id, "pod backend {kind}: {why}");
            let (pod, boot) = tokio::task::block_in_place(|| {
                PodRootfs::prepare(&self.dir, kind, first.upper_size)
            })
            .map_err(rootfs_err)?;
            let (volumes, volume_shares) = self.volume_share(true)?;
            let mut shares = boot.shares;
            shares.extend(volume_shares);
            let (vm, net) = self.boot_vm(Some(kind), boot.disks, shares).await?;
            let prepared = pod_root(&pod, first, &images);
            *booted = Some(Booted {
                vm,
                pod: Some(pod),
                volumes,
                net,
            });
            return prepared;
        }
        let mut single = tokio::task::block_in_place(|| {
            rootfs::single(
                first.container,
                &images,
                &self.dir.join("upper.ext4"),
                first.upper_size,
            )
        })
        .map_err(rootfs_err)?;
        let (volumes, shares) = self.volume_share(first.has_volumes)?;
        let (vm, net) = self.boot_vm(self.backend, single.disks, shares).await?;
        *booted = Some(Booted {
            vm,
            pod: None,
            volumes,
            net,
        });
        single.spec.readonly = first.source.readonly;
        Ok(PreparedRootfs {
            spec: single.spec,
            owned_files: vec![single.upper],
        })
    }

    /// The volume share to boot with, if `wanted`, and its share spec.
    fn volume_share(
        &self,
        wanted: bool,
    ) -> Result<(Option<VolumeShare>, Vec<ShareSpec>), PodVmError> {
        if !wanted {
            return Ok((None, Vec::new()));
        }
        let (share, spec) = tokio::task::block_in_place(|| VolumeShare::prepare(&self.dir))
            .map_err(|e| PodVmError::Boot(e.into()))?;
        Ok((Some(share), vec![spec]))
    }

    fn process_id(&self, key: &ProcessKey) -> Result<u32, PodVmError> {
        lock(&self.processes)
            .get(key)
            .copied()
            .ok_or_else(|| PodVmError::NotFound(format!("{key:?}")))
    }
}

#[async_trait]
impl PodVm for RuntimePodVm {
    async fn add_rootfs(&self, root: &ContainerRoot<'_>) -> Result<PreparedRootfs, PodVmError> {
        let images = self.layer_images(root)?;
        let booted = self.vm.lock().await;
        let Some(pod) = booted.as_ref().and_then(|b| b.pod.as_ref()) else {
            return Err(PodVmError::Rootfs(
                format!(
                    "container {}: VM {} already runs a container; only containers of one pod \
                     (annotation io.kubernetes.cri.sandbox-id) share a VM",
                    root.container, self.id
                )
                .into(),
            ));
        };
        pod_root(pod, root, &images)
    }

    async fn create_container(&self, create: ContainerCreate) -> Result<(), PodVmError> {
        self.agent()?
            .container_create(&create)
            .await
            .map_err(agent_err)
    }

    async fn add_volume(
        &self,
        container: &str,
        index: usize,
        volume: &HostVolume,
    ) -> Result<SharedVolume, PodVmError> {
        let booted = self.vm.lock().await;
        let what = || format!("{} of container {container}", volume.source.display());
        let share = booted
            .as_ref()
            .and_then(|b| b.volumes.as_ref())
            .ok_or_else(|| {
                PodVmError::Volume(
                    what(),
                    format!(
                        "VM {} was booted without a volume share (its first container bound                          no host path)",
                        self.id
                    )
                    .into(),
                )
            })?;
        tokio::task::block_in_place(|| share.add(container, index, volume))
            .map_err(|e| PodVmError::Volume(what(), e.into()))
    }

    async fn exec(&self, key: &ProcessKey, req: ExecRequest) -> Result<GuestProcess, PodVmError> {
        let agent = self.agent()?;
        let has_stdin = req.stdin;
        let mut session = agent.exec(&req).await.map_err(agent_err)?;
        let id = session.id();
        let pid = match session.next().await.map_err(agent_err)? {
            ExecEvent::Started(pid) => pid,
            ExecEvent::Failed(f) => {
                return Err(PodVmError::ExecFailed {
                    kind: f.kind,
                    message: f.message,
                })
            }
            other => {
                return Err(PodVmError::Other(
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
        let catch_up = lock(&self.catch_up).clone();
        tokio::spawn(async move {
            loop {
                match session.next().await {
                    Ok(ExecEvent::Stdout(d)) => gate.forward(Output::Stdout(d)).await,
                    Ok(ExecEvent::Stderr(d)) => gate.forward(Output::Stderr(d)).await,
                    Ok(ExecEvent::Exited(code)) => {
                        drop(gate);
                        // An OOM kill the guest reported before this exit goes first.
                        if let Some(catch_up) = &catch_up {
                            let (done, caught_up) = oneshot::channel();
                            if catch_up.send(done).is_ok() {
                                let _ = tokio::time::timeout(CATCH_UP_TIMEOUT, caught_up).await;
                            }
                        }
                        let _ = exit_tx.send(code);
                        return;
                    }
                    Ok(ExecEvent::Started(_)) => {}
                    // A failure after start is a guest that lies; a lost connection drops
                    // `exit_tx`, which the shim reads as "the VM died". Either way the process
                    // ends as killed (137); the cause is said here.
                    Ok(ExecEvent::Failed(f)) => {
                        tracing::warn!("the guest failed a running process: {}", f.message);
                        return;
                    }
                    Err(e) => {
                        tracing::warn!("a process's session ended without its exit: {e}");
                        return;
                    }
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
        Ok(GuestProcess {
            pid,
            stdin,
            output: out_rx,
            exit: exit_rx,
        })
    }

    async fn signal(&self, key: &ProcessKey, signal: i32, all: bool) -> Result<(), PodVmError> {
        let id = self.process_id(key)?;
        self.agent()?
            .send(id, &ExecSignal { signal, all })
            .await
            .map_err(agent_err)
    }

    async fn resize(&self, key: &ProcessKey, rows: u16, cols: u16) -> Result<(), PodVmError> {
        let id = self.process_id(key)?;
        self.agent()?
            .send(id, &ExecResize { rows, cols })
            .await
            .map_err(agent_err)
    }

    async fn pause(&self, container: &str) -> Result<(), PodVmError> {
        self.agent()?
            .container_pause(container)
            .await
            .map_err(agent_err)
    }

    async fn resume(&self, container: &str) -> Result<(), PodVmError> {
        self.agent()?
            .container_resume(container)
            .await
            .map_err(agent_err)
    }

    async fn update(&self, container: &str, resources: Resources) -> Result<(), PodVmError> {
        self.agent()?
            .container_update(container, resources)
            .await
            .map_err(agent_err)
    }

    async fn stats(&self, container: &str) -> Result<ContainerStatsReply, PodVmError> {
        self.agent()?
            .container_stats(container)
            .await
            .map_err(agent_err)
    }

    async fn pids(&self, container: &str) -> Result<Vec<u32>, PodVmError> {
        self.agent()?
            .container_pids(container)
            .await
            .map_err(agent_err)
    }

    async fn delete_container(&self, container: &str) -> Result<(), PodVmError> {
        lock(&self.processes).retain(|k, _| k.container != container);
        let res = match self.agent() {
            Ok(agent) => agent.container_delete(container).await.map_err(agent_err),
            Err(_) => Ok(()),
        };
        // Unbound once the guest has let go of them (or is gone).
        if let Some(share) = self
            .vm
            .lock()
            .await
            .as_ref()
            .and_then(|b| b.volumes.as_ref())
        {
            if let Err(e) = tokio::task::block_in_place(|| share.remove(container)) {
                tracing::warn!(sandbox = %self.id, container, error = %crate::error::chain(&e),
                    "remove volumes");
            }
        }
        res
    }

    async fn shutdown(&self) -> Result<(), PodVmError> {
        lock(&self.agent).take();
        let mut stop_failed = None;
        if let Some(Booted { vm: sb, net, .. }) = self.vm.lock().await.take() {
            let stopped = sb.shutdown(msb_protocol::SHUTDOWN_HOST_TIMEOUT).await;
            // After the VMM is gone (the TAP's other descriptor with it), also when the stop
            // failed: the pod interface's redirect is removed, the TAP closed.
            if let Some(PodNet { forwarder, network }) = net {
                drop(forwarder);
                if let Some(mut network) = network {
                    if let Err(e) = tokio::task::block_in_place(|| network.teardown()) {
                        tracing::warn!(sandbox = %self.id, error = %e, "pod network teardown");
                    }
                }
            }
            // The VMM is gone either way (a failed stop kills it): its directory goes too, a
            // VMM killed on a hung guest's account included; the error is reported after.
            stop_failed = stopped.err();
        }
        if let Err(e) = msb_runtime::volumes::remove_tree(&self.dir) {
            tracing::warn!(sandbox = %self.id, dir = %self.dir.display(), error = %e, "remove VM directory");
        }
        // Each VM's end is the moment to drop the images of layers containerd has removed
        // since: a few stats per cached image, and no image in use can go (see
        // msb_runtime::rootfs::layer_cache).
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
        match stop_failed {
            Some(e) => Err(PodVmError::Other(e.into())),
            None => Ok(()),
        }
    }

    async fn kill_vmm(&self) {
        if let Some(booted) = self.vm.lock().await.as_mut() {
            booted.vm.kill();
        }
    }

    fn vmm_pid(&self) -> Option<u32> {
        *lock(&self.vmm_pid)
    }

    fn subscribe(&self) -> broadcast::Receiver<PodVmEvent> {
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
