//! The containerd shim lifecycle (`start`, `delete`, serve) on top of the `containerd-shim`
//! crate, pinned at 0.11.0 whose `start` prints only the socket address (0.12 prints JSON, which
//! containerd 1.6 rejects).
//!
//! - `start`: containers of one pod (CRI annotation `io.kubernetes.cri.sandbox-id`) share one
//!   socket address, hence one shim process and one VM; the crate's `spawn` re-executes us with
//!   stdio detached and a second shim for the same address finds the first one serving.
//! - `delete`: [`crate::cleanup`], from the bundle record.
//! - serve: the crate sets up the `log` FIFO logger; our `tracing` events reach it through
//!   `tracing`'s `log` feature.

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use containerd_shim::api::DeleteResponse;
use containerd_shim::asynchronous::publisher::RemotePublisher;
use containerd_shim::asynchronous::util::write_str_to_file;
use containerd_shim::asynchronous::{spawn, ExitSignal, Shim};
use containerd_shim::{Config, Flags, StartOpts};

use crate::config::SANDBOX_ID_ANNOTATION;
use crate::events::RemoteSink;
use crate::pod_vm::PodVmFactory;
use crate::task::TaskService;

/// The factory `Shim::new` uses; the real runtime unless [`set_factory`] chose another.
static FACTORY: std::sync::OnceLock<Arc<dyn PodVmFactory>> = std::sync::OnceLock::new();

/// Chooses the sandbox factory for this process, before `containerd_shim::asynchronous::run`
/// (the contract-check example uses a scripted fake). Returns false if one was set already.
/// Only in test builds: the shipped shim always runs real VMs.
#[cfg(any(test, feature = "test-utils"))]
pub fn set_factory(factory: Arc<dyn PodVmFactory>) -> bool {
    FACTORY.set(factory).is_ok()
}

/// The runtime id this binary registers as.
pub const RUNTIME_ID: &str = "io.containerd.microsandbox.v1";

/// Our shim.
pub struct MicrosandboxShim {
    namespace: String,
    bundle: PathBuf,
    exit: Arc<ExitSignal>,
    factory: Arc<dyn PodVmFactory>,
}

impl std::fmt::Debug for MicrosandboxShim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MicrosandboxShim")
            .field("namespace", &self.namespace)
            .field("bundle", &self.bundle)
            .field("factory", &self.factory)
            .finish_non_exhaustive()
    }
}

impl MicrosandboxShim {
    /// Shim process options the crate applies before calling us.
    pub fn config() -> Config {
        Config {
            // VMM processes are our children, reaped by the runtime's own waits; a global
            // waitpid(-1) reaper would steal their statuses.
            no_reaper: true,
            no_sub_reaper: true,
            ..Config::default()
        }
    }
}

/// The grouping key of the bundle in `dir`: the pod's sandbox id, or the container's own id.
pub fn grouping(dir: &std::path::Path, id: &str) -> String {
    msb_oci::Bundle::load(dir)
        .ok()
        .and_then(|b| b.annotations().get(SANDBOX_ID_ANNOTATION).cloned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| id.to_owned())
}

#[async_trait]
impl Shim for MicrosandboxShim {
    type T = TaskService;

    async fn new(_runtime_id: &str, args: &Flags, _config: &mut Config) -> Self {
        let bundle = if args.bundle.is_empty() {
            std::env::current_dir().unwrap_or_default()
        } else {
            PathBuf::from(&args.bundle)
        };
        Self {
            namespace: args.namespace.clone(),
            bundle,
            exit: Arc::new(ExitSignal::default()),
            factory: FACTORY
                .get()
                .cloned()
                .unwrap_or_else(|| Arc::new(crate::runtime_adapter::RuntimeFactory)),
        }
    }

    async fn start_shim(&mut self, opts: StartOpts) -> containerd_shim::Result<String> {
        let grouping = grouping(&self.bundle, &opts.id);
        let address = spawn(opts, &grouping, Vec::new()).await?;
        write_str_to_file(self.bundle.join("address"), &address).await?;
        Ok(address)
    }

    async fn delete_shim(&mut self) -> containerd_shim::Result<DeleteResponse> {
        Ok(crate::cleanup::cleanup_bundle(&self.bundle))
    }

    async fn wait(&mut self) {
        self.exit.wait().await;
    }

    async fn create_task_service(&self, publisher: RemotePublisher) -> TaskService {
        TaskService::new(
            self.namespace.clone(),
            self.factory.clone(),
            Arc::new(RemoteSink::new(publisher, self.namespace.clone())),
            self.exit.clone(),
            None,
        )
    }
}
