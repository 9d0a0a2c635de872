//! `Create`: read the bundle, prepare the root's disks, boot or join the pod's VM, and prepare the
//! container in it. The init process is only described here; `Start` runs it.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use containerd_shim::api::{CreateTaskRequest, CreateTaskResponse};
use msb_oci::{Bundle, OciRootfsSource, RootfsMount};
use msb_protocol::types::ContainerMount;

use super::{Container, Pod, Process, TaskService};
use crate::config::{check_id, runtime_options_config_path, ShimConfig, SANDBOX_ID_ANNOTATION};
use crate::error::ShimError;
use crate::events::{EventMount, TaskEvent, TaskIo};
use crate::pod_vm::{ContainerRoot, HostVolume, PodVm, PreparedRootfs, ProcessKey, Propagation};
use crate::record::BundleRecord;

impl TaskService {
    /// Handles `Create`.
    pub async fn create(&self, req: CreateTaskRequest) -> Result<CreateTaskResponse, ShimError> {
        let started = Instant::now();
        let id = req.id.clone();
        check_id("container id", &id).map_err(ShimError::InvalidArgument)?;
        if !req.checkpoint.is_empty() {
            return Err(ShimError::Unimplemented("restoring from a checkpoint"));
        }
        if self.inner.tables.lock().await.containers.contains_key(&id) {
            return Err(ShimError::AlreadyExists(format!("container {id}")));
        }
        let bundle = Bundle::load(&req.bundle)?;
        for setting in bundle.ignored_settings() {
            tracing::debug!(container = %id, "ignored in the VM: {setting}");
        }
        let annotations = bundle.annotations();
        let sandbox_id = annotations
            .get(SANDBOX_ID_ANNOTATION)
            .filter(|s| !s.is_empty())
            .cloned()
            .unwrap_or_else(|| id.clone());
        // It names the VM's directory: untrusted, like every annotation.
        check_id(&format!("annotation {SANDBOX_ID_ANNOTATION}"), &sandbox_id)
            .map_err(ShimError::InvalidArgument)?;
        let config = match &self.inner.config_override {
            Some(c) => c.clone(),
            None => {
                let path = match req.options.as_ref() {
                    Some(any) => runtime_options_config_path(&any.type_url, &any.value)?,
                    None => None,
                };
                ShimConfig::discover(path.as_deref())?
            }
        };
        let mut cconfig = config.for_container(&annotations)?;
        cconfig.vm.netns = bundle.network_namespace();
        cconfig.vm.host_network = cconfig.vm.pod && bundle.joins_host_network();
        // Untrusted, like the annotations: checked before anything is made.
        cconfig.vm.cgroup = bundle
            .cgroups_path()
            .map(|p| {
                let p = p.to_str().ok_or_else(|| {
                    ShimError::InvalidArgument(format!("linux.cgroupsPath {p:?} is not UTF-8"))
                })?;
                msb_runtime::cgroup::CgroupPath::parse(p)
                    .map_err(|e| ShimError::InvalidArgument(format!("linux.cgroupsPath: {e}")))
            })
            .transpose()?;
        let mounts: Vec<RootfsMount> = req
            .rootfs
            .iter()
            .map(|m| RootfsMount {
                typ: m.type_.clone(),
                source: m.source.clone(),
                options: m.options.clone(),
            })
            .collect();
        let source = OciRootfsSource::from_mounts(bundle.dir(), &mounts, &bundle.root_path())?;
        let mut cspec = bundle.container_spec(&id, Some(&sandbox_id))?;
        let binds = volumes_to_share(&id, std::mem::take(&mut cspec.host_binds));
        let mut init = bundle.init_exec(&id)?;
        init.tty = req.terminal;
        init.stdin = !req.stdin.is_empty();

        let root = ContainerRoot {
            container: &id,
            source: &source,
            upper_size: cconfig.upper_size,
            has_volumes: !binds.is_empty(),
        };
        let before_vm = started.elapsed();
        let (sandbox, first_root) = self
            .vm_for(&sandbox_id, &cconfig.vm, &config.state_dir, &root)
            .await?;
        let booted = first_root.is_some();
        // The VM's own breakdown (host until the VMM runs, the guest's clock) is the runtime's
        // "ready in" line; these two place it in the request (`msb-bench ctr` reads both).
        let boot_ms = booted.then(|| (started.elapsed() - before_vm).as_millis());
        let mut prepared = match first_root {
            Some(prepared) => prepared,
            None => match sandbox.add_rootfs(&root).await {
                Ok(prepared) => prepared,
                Err(e) => {
                    self.abandon(&id, &sandbox_id, &sandbox, false, &[]).await;
                    return Err(e.into());
                }
            },
        };
        prepared.spec.readonly |= bundle.root_readonly() || source.readonly;
        let result = async {
            // In reverse, so that each goes back where the spec had it.
            for (index, bind) in binds.iter().enumerate().rev() {
                let volume = HostVolume {
                    source: PathBuf::from(&bind.source),
                    recursive: bind.recursive(),
                    read_only: bind.readonly(),
                    propagation: Propagation::from_options(&bind.options),
                };
                let shared = sandbox.add_volume(&id, index, &volume).await?;
                cspec.mounts.insert(
                    bind.position,
                    ContainerMount {
                        destination: bind.destination.clone(),
                        kind: "bind".into(),
                        source: shared.guest_path,
                        options: bind.options.clone(),
                    },
                );
            }
            let mut create = cspec.into_create(&id, prepared.spec.clone());
            create.handoff_init = cconfig.handoff_init.clone();
            sandbox.create_container(create).await?;
            Ok::<_, ShimError>(())
        }
        .await;
        if let Err(e) = result {
            self.abandon(&id, &sandbox_id, &sandbox, booted, &prepared.owned_files)
                .await;
            return Err(e);
        }

        let record = BundleRecord {
            namespace: self.inner.namespace.clone(),
            container_id: id.clone(),
            sandbox_id: sandbox_id.clone(),
            vm_dir: self.vm_dir(&config.state_dir, &sandbox_id),
            owned_files: prepared.owned_files.clone(),
            vmm: sandbox.vmm_pid().and_then(crate::record::VmmRecord::of_pid),
        };
        if let Err(e) = record.write(bundle.dir()) {
            tracing::warn!(container = %id, error = %crate::error::chain(&e), "write cleanup record");
        }

        let io = TaskIo {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        let key = ProcessKey {
            container: id.clone(),
            exec_id: None,
        };
        {
            let mut tables = self.inner.tables.lock().await;
            if let Some(pod) = tables.pods.get_mut(&sandbox_id) {
                pod.containers.insert(id.clone());
            }
            tables.containers.insert(
                id.clone(),
                Container {
                    id: id.clone(),
                    bundle: req.bundle.clone(),
                    sandbox_id,
                    init: Process::new(key, io.clone(), init),
                    execs: Default::default(),
                    owned_files: prepared.owned_files,
                },
            );
        }
        tracing::info!(container = %id, bundle = %req.bundle, took_ms = started.elapsed().as_millis(),
            before_vm_ms = before_vm.as_millis(), boot_ms, "created");
        self.publish(TaskEvent::Create {
            container_id: id,
            bundle: req.bundle,
            rootfs: req
                .rootfs
                .iter()
                .map(|m| EventMount {
                    typ: m.type_.clone(),
                    source: m.source.clone(),
                    options: m.options.clone(),
                })
                .collect(),
            io,
            pid: 0,
        })
        .await;
        Ok(CreateTaskResponse {
            pid: 0,
            ..Default::default()
        })
    }

    /// The directory of sandbox `sandbox_id`'s VM: `<state_root>/<namespace>/sandboxes/<id>`.
    fn vm_dir(&self, state_root: &Path, sandbox_id: &str) -> PathBuf {
        state_root
            .join(&self.inner.namespace)
            .join("sandboxes")
            .join(sandbox_id)
    }

    /// The pod's VM, booted with `root` when this is its first container (then `root` comes
    /// back prepared; a later container's is prepared by the caller, in the running VM).
    async fn vm_for(
        &self,
        sandbox_id: &str,
        config: &crate::config::VmSettings,
        state_root: &Path,
        root: &ContainerRoot<'_>,
    ) -> Result<(Arc<dyn PodVm>, Option<PreparedRootfs>), ShimError> {
        // Boots are serialized (so two containers of one pod cannot boot two VMs) without
        // holding the tables, so requests for running containers go on during a boot.
        let _boot = self.inner.boot_lock.lock().await;
        if let Some(pod) = self.inner.tables.lock().await.pods.get(sandbox_id) {
            return Ok((pod.vm.clone(), None));
        }
        let dir = self.vm_dir(state_root, sandbox_id);
        msb_runtime::private::create_dir(&dir).map_err(|source| ShimError::Io {
            context: format!("create sandbox directory {}", dir.display()),
            source,
        })?;
        tracing::info!(sandbox = %sandbox_id, backend = %config.backend, vcpus = config.vcpus,
            memory_mib = config.memory_mib, "booting VM");
        let (sandbox, prepared) = match self
            .inner
            .factory
            .boot(sandbox_id, config, &dir, root)
            .await
        {
            Ok(s) => s,
            Err(e) => {
                let _ = msb_runtime::volumes::remove_tree(&dir);
                return Err(e.into());
            }
        };
        let (watcher, exits) = self.watch_vm(sandbox_id, &sandbox);
        self.inner.tables.lock().await.pods.insert(
            sandbox_id.to_owned(),
            Pod {
                vm: sandbox.clone(),
                dir,
                containers: HashSet::new(),
                watcher,
                exits,
            },
        );
        Ok((sandbox, Some(prepared)))
    }

    /// Undoes a half-done create: the container in the VM, the files its root owns, and the VM
    /// itself if this create booted it.
    async fn abandon(
        &self,
        id: &str,
        sandbox_id: &str,
        sandbox: &Arc<dyn PodVm>,
        booted: bool,
        owned_files: &[PathBuf],
    ) {
        let _ = sandbox.delete_container(id).await;
        for f in owned_files {
            let _ = std::fs::remove_file(f);
        }
        if booted {
            let pod = self.inner.tables.lock().await.pods.remove(sandbox_id);
            if let Err(e) = sandbox.shutdown().await {
                tracing::warn!(sandbox = %sandbox_id, error = %e, "shut down VM after failed create");
            }
            if let Some(pod) = pod {
                pod.watcher.abort();
                let _ = msb_runtime::volumes::remove_tree(&pod.dir);
            }
        }
    }
}

/// The host binds of container `id` that go through the VM's volume share: all but the
/// spec's `/dev/shm`, which the guest provides itself (each container's own tmpfs, or the one of
/// the container whose IPC namespace it shares, as CRI's pod `/dev/shm`).
fn volumes_to_share(id: &str, binds: Vec<msb_oci::HostBindMount>) -> Vec<msb_oci::HostBindMount> {
    binds
        .into_iter()
        .filter(|b| {
            let shm = b.destination.trim_end_matches('/') == "/dev/shm";
            if shm {
                tracing::debug!(container = %id, source = %b.source,
                    "/dev/shm bind left to the guest (the pod's shm is the VM's)");
            }
            !shm
        })
        .collect()
}
