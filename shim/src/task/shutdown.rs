//! `Shutdown`: containerd asks the shim to exit; it does once no container is left (a pod's shim
//! serves every container of the pod).

use containerd_shim::api::{Empty, ShutdownRequest};

use super::TaskService;
use crate::error::ShimError;

impl TaskService {
    /// Handles `Shutdown`.
    pub async fn shutdown(&self, req: ShutdownRequest) -> Result<Empty, ShimError> {
        let tables = self.inner.tables.lock().await;
        if !tables.containers.is_empty() && !req.now {
            tracing::info!(
                left = tables.containers.len(),
                "shutdown requested; containers remain"
            );
            return Ok(Empty::default());
        }
        let pods: Vec<_> = tables.pods.values().map(|p| p.vm.clone()).collect();
        drop(tables);
        for sandbox in pods {
            if let Err(e) = sandbox.shutdown().await {
                tracing::warn!(error = %e, "shut down VM");
            }
        }
        tracing::info!("shim exiting");
        self.inner.exit.signal();
        Ok(Empty::default())
    }
}
