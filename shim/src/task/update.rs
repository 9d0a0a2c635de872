//! `Update`: new cgroup limits (`LinuxResources` JSON) for a live container.

use containerd_shim::api::{Empty, UpdateTaskRequest};

use super::state::Status;
use super::TaskService;
use crate::error::ShimError;

impl TaskService {
    /// Handles `Update`.
    pub async fn update(&self, req: UpdateTaskRequest) -> Result<Empty, ShimError> {
        let any = req
            .resources
            .as_ref()
            .ok_or_else(|| ShimError::InvalidArgument("update without resources".into()))?;
        let resources = msb_oci::resources_from_json(&any.value).map_err(|e| {
            ShimError::InvalidArgument(format!("resources of container {}: {e}", req.id))
        })?;
        let sandbox = {
            let tables = self.inner.tables.lock().await;
            let status = tables.container(&req.id)?.init.status;
            if matches!(status, Status::Stopped | Status::Deleted) {
                return Err(crate::task::state::StateError {
                    status,
                    transition: crate::task::state::Transition::Use,
                }
                .into());
            }
            tables.vm_of(&req.id)?
        };
        sandbox.update(&req.id, resources).await?;
        Ok(Empty::default())
    }
}
