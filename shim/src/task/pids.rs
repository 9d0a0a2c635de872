//! `Pids`: the container's processes, as pids of the VM's PID namespace.

use containerd_shim::api::{PidsRequest, PidsResponse};
use containerd_shim::protos::types::task::ProcessInfo;

use super::TaskService;
use crate::error::ShimError;

impl TaskService {
    /// Handles `Pids`.
    pub async fn pids(&self, req: PidsRequest) -> Result<PidsResponse, ShimError> {
        let sandbox = self.inner.tables.lock().await.sandbox_of(&req.id)?;
        let pids = sandbox.pids(&req.id).await?;
        Ok(PidsResponse {
            processes: pids
                .into_iter()
                .map(|pid| ProcessInfo {
                    pid,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
    }
}
