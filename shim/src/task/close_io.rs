//! `CloseIO`: stdin EOF for a process (`ctr` sends it when its own stdin ends).

use containerd_shim::api::{CloseIORequest, Empty};

use super::TaskService;
use crate::error::ShimError;

impl TaskService {
    /// Handles `CloseIO`.
    pub async fn close_io(&self, req: CloseIORequest) -> Result<Empty, ShimError> {
        let mut tables = self.inner.tables.lock().await;
        let p = tables.container_mut(&req.id)?.process_mut(&req.exec_id)?;
        if req.stdin {
            p.finish_stdin();
        }
        Ok(Empty::default())
    }
}
