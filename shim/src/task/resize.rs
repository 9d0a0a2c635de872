//! `ResizePty`: a new terminal size for a process started with a terminal.
//!
//! `ctr` resizes right after Start, so a short-lived process may already be gone: resizing a
//! stopped process (or one the guest just forgot) is a no-op, not an error.

use containerd_shim::api::{Empty, ResizePtyRequest};

use super::state::Status;
use super::TaskService;
use crate::error::ShimError;
use crate::pod_vm::PodVmError;

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
            match p.status {
                Status::Running | Status::Paused => {}
                Status::Stopped | Status::Deleted => return Ok(Empty::default()),
                Status::Created => {
                    return Err(crate::task::state::StateError {
                        status: p.status,
                        transition: crate::task::state::Transition::Use,
                    }
                    .into())
                }
            }
            (tables.vm_of(&req.id)?, p.key.clone())
        };
        let clamp = |v: u32| u16::try_from(v).unwrap_or(u16::MAX);
        match sandbox
            .resize(&key, clamp(req.height), clamp(req.width))
            .await
        {
            Ok(()) | Err(PodVmError::NotFound(_)) => Ok(Empty::default()),
            Err(e) => Err(e.into()),
        }
    }
}
