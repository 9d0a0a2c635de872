//! `ResizePty`: a new terminal size for a process started with a terminal.

use containerd_shim::api::{Empty, ResizePtyRequest};

use super::state::Transition;
use super::TaskService;
use crate::error::ShimError;

impl TaskService {
    /// Handles `ResizePty`.
    pub async fn resize_pty(&self, req: ResizePtyRequest) -> Result<Empty, ShimError> {
        let (sandbox, key) = {
            let tables = self.inner.tables.lock().await;
            let p = tables.container(&req.id)?.process(&req.exec_id)?;
            if !p.io.terminal {
                return Err(ShimError::InvalidArgument(format!(
                    "process {} of container {} has no terminal",
                    req.exec_id, req.id
                )));
            }
            p.status.apply(Transition::Use)?;
            (tables.sandbox_of(&req.id)?, p.key.clone())
        };
        let clamp = |v: u32| u16::try_from(v).unwrap_or(u16::MAX);
        sandbox
            .resize(&key, clamp(req.height), clamp(req.width))
            .await?;
        Ok(Empty::default())
    }
}
