//! `Kill`: deliver a signal to a process, or with `all` to every process of the container.
//!
//! A process that never started is stopped on the spot with 128+signal (runc kills its waiting
//! init the same way); a process that already exited answers NOT_FOUND "process already
//! finished", which containerd expects.

use containerd_shim::api::{Empty, KillRequest};

use super::state::{Status, Transition};
use super::TaskService;
use crate::error::ShimError;

impl TaskService {
    /// Handles `Kill`.
    pub async fn kill(&self, req: KillRequest) -> Result<Empty, ShimError> {
        let signal = i32::try_from(req.signal)
            .ok()
            .filter(|s| (0..=64).contains(s))
            .ok_or_else(|| ShimError::InvalidArgument(format!("signal {}", req.signal)))?;
        let (sandbox, key, status, pid) = {
            let tables = self.inner.tables.lock().await;
            let c = tables.container(&req.id)?;
            let p = c.process(&req.exec_id)?;
            (tables.vm_of(&req.id)?, p.key.clone(), p.status, p.pid)
        };
        match status {
            Status::Stopped | Status::Deleted => Err(ShimError::NotFound(format!(
                "process {} of container {} (already finished)",
                if req.exec_id.is_empty() {
                    "init"
                } else {
                    &req.exec_id
                },
                req.id
            ))),
            Status::Created => {
                if signal != 0 {
                    let code = 128 + u32::try_from(signal).unwrap_or(0);
                    self.record_exit(&key, pid, code).await;
                }
                Ok(Empty::default())
            }
            Status::Running | Status::Paused => {
                status.apply(Transition::Signal)?;
                tracing::info!(container = %req.id, exec = %req.exec_id, signal, all = req.all, "kill");
                sandbox.signal(&key, signal, req.all).await?;
                Ok(Empty::default())
            }
        }
    }
}
