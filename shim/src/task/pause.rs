//! `Pause` and `Resume`: freeze and thaw the container's cgroup in the guest.

use containerd_shim::api::{Empty, PauseRequest, ResumeRequest};

use super::state::Transition;
use super::TaskService;
use crate::error::ShimError;
use crate::events::TaskEvent;

impl TaskService {
    /// Handles `Pause`.
    pub async fn pause(&self, req: PauseRequest) -> Result<Empty, ShimError> {
        let sandbox = {
            let tables = self.inner.tables.lock().await;
            tables
                .container(&req.id)?
                .init
                .status
                .apply(Transition::Pause)?;
            tables.vm_of(&req.id)?
        };
        sandbox.pause(&req.id).await?;
        self.inner
            .tables
            .lock()
            .await
            .container_mut(&req.id)?
            .init
            .transition(Transition::Pause)?;
        self.publish(TaskEvent::Paused {
            container_id: req.id,
        })
        .await;
        Ok(Empty::default())
    }

    /// Handles `Resume`.
    pub async fn resume(&self, req: ResumeRequest) -> Result<Empty, ShimError> {
        let sandbox = {
            let tables = self.inner.tables.lock().await;
            tables
                .container(&req.id)?
                .init
                .status
                .apply(Transition::Resume)?;
            tables.vm_of(&req.id)?
        };
        sandbox.resume(&req.id).await?;
        self.inner
            .tables
            .lock()
            .await
            .container_mut(&req.id)?
            .init
            .transition(Transition::Resume)?;
        self.publish(TaskEvent::Resumed {
            container_id: req.id,
        })
        .await;
        Ok(Empty::default())
    }
}
